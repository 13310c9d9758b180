//! Bindings for `marvel_core::model::inception::FidInception`: pytorch-fid's InceptionV3, images to the 2048
//! pool3 features rFID is computed on.

use std::sync::Arc;

use marvel_core::invalid;
use marvel_core::model::inception::{FidInception, FEATURES};
use napi::bindgen_prelude::*;
use napi::Env;
use napi_derive::napi;

use crate::task::{CodedError, Job};

/// A loaded network; calls hold their own reference, so `dispose()` while calls are in flight is safe.
#[napi(js_name = "NativeInception")]
pub struct NativeInception {
    inner: Option<Arc<FidInception>>,
}

/// Load pytorch-fid's weights (`pt_inception-2015-12-05-6726825d.pth` or the same state dict as safetensors),
/// strictly: a file of another layout rejects with `MARVEL_CHECKPOINT` naming the keys.
#[napi(ts_return_type = "Promise<NativeInception>")]
pub fn load_inception(path: String) -> AsyncTask<Job<String, NativeInception>> {
    AsyncTask::new(Job::new(path, |p| {
        Ok(NativeInception { inner: Some(Arc::new(FidInception::load_on_cpu(p)?)) })
    }))
}

type Model = Arc<FidInception>;

#[napi]
impl NativeInception {
    fn model(&self, env: &Env) -> napi::Result<Model> {
        self.inner.clone().ok_or_else(|| CodedError::from(invalid!("this Inception network was disposed")).into_napi(env))
    }

    /// Length of one feature vector (2048).
    #[napi(getter)]
    pub fn dim(&self) -> u32 {
        FEATURES as u32
    }

    /// RGB bytes `[batch, height, width, 3]` (any size; resized to 299 as pytorch-fid does) to features
    /// `[batch, 2048]`.
    #[napi(ts_return_type = "Promise<Float32Array>")]
    pub fn features(&self, env: Env, rgb: Uint8Array, batch: u32, height: u32, width: u32) -> napi::Result<AsyncTask<Job<(Model, Uint8Array), Float32Array>>> {
        let model = self.model(&env)?;
        Ok(AsyncTask::new(Job::new((model, rgb), move |(model, rgb)| {
            Ok(Float32Array::new(model.features(rgb, (batch as usize, height as usize, width as usize))?))
        })))
    }

    /// Release the network's memory once calls in flight have finished.
    #[napi]
    pub fn dispose(&mut self) {
        self.inner = None;
    }
}
