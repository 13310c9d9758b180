//! NCCL data parallelism, present in every addon so the API is one: without the `nccl` feature each call is a
//! `MARVEL_CUDA_UNAVAILABLE` error naming what is missing.

use marvel_core::train::{GradientReducer, Trainer};
use napi::Env;
use napi_derive::napi;

/// This trainer's seat in the NCCL group `id`.
#[cfg(feature = "nccl")]
pub fn join(t: &Trainer, id: &str, rank: usize, world: usize) -> marvel_core::Result<Box<dyn GradientReducer + Send>> {
    Ok(Box::new(marvel_core::train::nccl::NcclReducer::join(t.candle_device(), id, rank, world)?))
}

#[cfg(not(feature = "nccl"))]
pub fn join(
    _t: &Trainer,
    _id: &str,
    _rank: usize,
    _world: usize,
) -> marvel_core::Result<Box<dyn GradientReducer + Send>> {
    Err(unavailable())
}

#[cfg(not(feature = "nccl"))]
fn unavailable() -> marvel_core::MarvelError {
    marvel_core::MarvelError::CudaUnavailable(
        "NCCL data parallelism requested, but this marvel binary was built without NCCL (the `nccl` cargo feature; \
         `npm run build:cuda` builds one)"
            .into(),
    )
}

/// Whether this addon can average gradients across GPUs with NCCL.
#[napi]
pub fn nccl_built() -> bool {
    cfg!(feature = "nccl")
}

/// A fresh NCCL id as hex text, made on rank 0 and handed to every rank's `joinNccl`.
#[napi]
pub fn nccl_unique_id(env: Env) -> napi::Result<String> {
    #[cfg(feature = "nccl")]
    let id = marvel_core::train::nccl::unique_id();
    #[cfg(not(feature = "nccl"))]
    let id = Err(unavailable());
    crate::task::sync(&env, id)
}
