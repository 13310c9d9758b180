//! Bindings for the standalone MaskGIT-VQGAN (`marvel_core::model::maskgit::MaskgitVqgan`): images to the
//! 16x16 code grids that TiTok's stage-1 training predicts, and back.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use marvel_core::model::maskgit::MaskgitVqgan;
use marvel_core::model::titok::{images_from_u8_nhwc, images_to_u8_nhwc};
use marvel_core::tensor::{check_shape, HostTensor};
use marvel_core::invalid;
use napi::bindgen_prelude::*;
use napi::Env;
use napi_derive::napi;

use crate::task::{CodedError, Job};
use crate::tensor::Float32Tensor;

#[napi(js_name = "NativeMaskgit")]
pub struct NativeMaskgit {
    inner: Option<Arc<MaskgitVqgan>>,
}

/// Load a MaskGIT-VQGAN checkpoint (a weights file, or a folder with one and an optional config.json).
#[napi(ts_return_type = "Promise<NativeMaskgit>")]
pub fn load_maskgit(path: String) -> AsyncTask<Job<String, NativeMaskgit>> {
    AsyncTask::new(Job::new(path, |p| {
        Ok(NativeMaskgit { inner: Some(Arc::new(MaskgitVqgan::from_pretrained(p, &Device::Cpu)?)) })
    }))
}

fn codes_tensor(codes: &Uint32Array, batch: u32, grid: usize) -> marvel_core::Result<Tensor> {
    let b = batch as usize;
    if b == 0 {
        return Err(invalid!("no codes given"));
    }
    check_shape("codes", codes.len(), &[b, grid * grid])?;
    Ok(Tensor::from_slice(codes, (b, grid * grid), &Device::Cpu)?)
}

#[napi]
impl NativeMaskgit {
    fn model(&self, env: &Env) -> napi::Result<Arc<MaskgitVqgan>> {
        self.inner.clone().ok_or_else(|| CodedError::from(invalid!("this model was disposed")).into_napi(env))
    }

    /// Side of the code grid (16 for 256x256 images).
    #[napi(getter)]
    pub fn grid(&self, env: Env) -> napi::Result<u32> {
        Ok(self.model(&env)?.config().latent_side() as u32)
    }

    #[napi(getter)]
    pub fn image_size(&self, env: Env) -> napi::Result<u32> {
        Ok(self.model(&env)?.config().resolution as u32)
    }

    /// RGB bytes `[batch, size, size, 3]` to codes `[batch, grid * grid]` (row-major over the grid).
    #[napi(ts_return_type = "Promise<Uint32Array>")]
    pub fn encode(&self, env: Env, rgb: Uint8Array, batch: u32) -> napi::Result<AsyncTask<Job<(Arc<MaskgitVqgan>, Uint8Array), Uint32Array>>> {
        let model = self.model(&env)?;
        Ok(AsyncTask::new(Job::new((model, rgb), move |(model, rgb)| {
            let s = model.config().resolution;
            if batch == 0 {
                return Err(invalid!("no images given"));
            }
            let x = images_from_u8_nhwc(rgb, (batch as usize, s, s), &Device::Cpu)?;
            let codes = model.encode(&x)?;
            Ok(Uint32Array::new(codes.to_dtype(DType::U32)?.flatten_all()?.to_vec1::<u32>()?))
        })))
    }

    /// Codes to RGB bytes `[batch, size, size, 3]`.
    #[napi(ts_return_type = "Promise<Uint8Array>")]
    pub fn decode(&self, env: Env, codes: Uint32Array, batch: u32) -> napi::Result<AsyncTask<Job<(Arc<MaskgitVqgan>, Uint32Array), Uint8Array>>> {
        let model = self.model(&env)?;
        Ok(AsyncTask::new(Job::new((model, codes), move |(model, codes)| {
            let t = codes_tensor(codes, batch, model.config().latent_side())?;
            Ok(Uint8Array::new(images_to_u8_nhwc(&model.decode_codes(&t)?)?))
        })))
    }

    /// Codes to float images `[batch, 3, size, size]` in [0, 1] (full precision).
    #[napi(ts_return_type = "Promise<Float32Tensor>")]
    pub fn decode_float(&self, env: Env, codes: Uint32Array, batch: u32) -> napi::Result<AsyncTask<Job<(Arc<MaskgitVqgan>, Uint32Array), Float32Tensor>>> {
        let model = self.model(&env)?;
        Ok(AsyncTask::new(Job::new((model, codes), move |(model, codes)| {
            let t = codes_tensor(codes, batch, model.config().latent_side())?;
            Ok(Float32Tensor::from(HostTensor::<f32>::from_tensor(&model.decode_codes(&t)?)?))
        })))
    }

    #[napi]
    pub fn dispose(&mut self) {
        self.inner = None;
    }
}
