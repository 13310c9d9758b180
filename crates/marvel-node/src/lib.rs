//! Node bindings for marvel-core. Bindings only: convert and validate arguments, run the work as an async
//! task, map errors. No model math or orchestration lives here, and no candle: the core's facades take and
//! return host buffers.

#![deny(clippy::all)]

mod device;
mod inception;
mod metrics;
mod nccl;
mod lfq;
mod maskgit;
mod ops;
mod task;
mod tensor;
mod tokenizer;
mod trainer;

use napi::Env;
use napi_derive::napi;

/// Number of threads marvel's compute kernels use.
#[napi]
pub fn get_num_threads(env: Env) -> napi::Result<u32> {
    task::sync(&env, marvel_core::runtime::num_threads()).map(|n| n as u32)
}

/// Set the number of compute threads (1..=1024). Calls already running finish on the previous pool.
#[napi]
pub fn set_num_threads(env: Env, threads: u32) -> napi::Result<()> {
    task::sync(&env, marvel_core::runtime::set_num_threads(threads as usize))
}

/// Weight files looked for in a model folder, in order of preference (the core's one list).
#[napi]
pub fn weight_files() -> Vec<String> {
    marvel_core::model::WEIGHT_FILES.iter().map(|f| f.to_string()).collect()
}

/// Version of the native addon (the Rust crate version).
#[napi]
pub fn native_version() -> String {
    env!("CARGO_PKG_VERSION").to_string()
}
