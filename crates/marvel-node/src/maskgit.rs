//! Bindings for the standalone MaskGIT-VQGAN (`marvel_core::model::maskgit::MaskgitVqgan`): images to the
//! code grids that TiTok's stage-1 training predicts, and back.

use std::sync::Arc;

use marvel_core::invalid;
use marvel_core::model::maskgit::MaskgitVqgan;
use napi::bindgen_prelude::*;
use napi::Env;
use napi_derive::napi;

use crate::task::{CodedError, Job};
use crate::tensor::Float32Tensor;

/// What a loaded MaskGIT-VQGAN is.
#[napi(object)]
pub struct MaskgitInfo {
    /// Side of the square images it takes (256).
    pub image_size: u32,
    /// Side of the code grid (16).
    pub grid: u32,
    /// Codes lie in `0..codebookSize` (1024).
    pub codebook_size: u32,
}

/// A loaded model; calls hold their own reference, so `dispose()` while calls are in flight is safe.
#[napi(js_name = "NativeMaskgit")]
pub struct NativeMaskgit {
    inner: Option<Arc<MaskgitVqgan>>,
}

/// Load a MaskGIT-VQGAN checkpoint (a weights file, or a folder with one and an optional config.json).
#[napi(ts_return_type = "Promise<NativeMaskgit>")]
pub fn load_maskgit(path: String) -> AsyncTask<Job<String, NativeMaskgit>> {
    AsyncTask::new(Job::new(path, |p| {
        Ok(NativeMaskgit { inner: Some(Arc::new(MaskgitVqgan::from_pretrained_on_cpu(p)?)) })
    }))
}

type Model = Arc<MaskgitVqgan>;

#[napi]
impl NativeMaskgit {
    fn model(&self, env: &Env) -> napi::Result<Model> {
        self.inner.clone().ok_or_else(|| CodedError::from(invalid!("this model was disposed")).into_napi(env))
    }

    #[napi(getter)]
    pub fn info(&self, env: Env) -> napi::Result<MaskgitInfo> {
        let m = self.model(&env)?;
        Ok(MaskgitInfo { image_size: m.image_size() as u32, grid: m.grid() as u32, codebook_size: m.codebook_size() as u32 })
    }

    /// RGB bytes `[batch, size, size, 3]` to codes `[batch, grid * grid]` (row-major over the grid).
    #[napi(ts_return_type = "Promise<Uint32Array>")]
    pub fn encode(&self, env: Env, rgb: Uint8Array, batch: u32) -> napi::Result<AsyncTask<Job<(Model, Uint8Array), Uint32Array>>> {
        let model = self.model(&env)?;
        Ok(AsyncTask::new(Job::new((model, rgb), move |(model, rgb)| {
            Ok(Uint32Array::new(model.encode_rgb(rgb, batch as usize)?))
        })))
    }

    /// Codes (whole grids) to RGB bytes `[batch, size, size, 3]`.
    #[napi(ts_return_type = "Promise<Uint8Array>")]
    pub fn decode(&self, env: Env, codes: Uint32Array) -> napi::Result<AsyncTask<Job<(Model, Uint32Array), Uint8Array>>> {
        let model = self.model(&env)?;
        Ok(AsyncTask::new(Job::new((model, codes), |(model, codes)| Ok(Uint8Array::new(model.decode_rgb(codes)?)))))
    }

    /// Codes (whole grids) to float images `[batch, 3, size, size]` in [0, 1] (full precision).
    #[napi(ts_return_type = "Promise<Float32Tensor>")]
    pub fn decode_float(&self, env: Env, codes: Uint32Array) -> napi::Result<AsyncTask<Job<(Model, Uint32Array), Float32Tensor>>> {
        let model = self.model(&env)?;
        Ok(AsyncTask::new(Job::new((model, codes), |(model, codes)| Ok(model.decode_float(codes)?.into()))))
    }

    /// Release the model's memory once calls in flight have finished. Later calls fail with a clear error.
    #[napi]
    pub fn dispose(&mut self) {
        self.inner = None;
    }

    #[napi(getter)]
    pub fn disposed(&self) -> bool {
        self.inner.is_none()
    }
}
