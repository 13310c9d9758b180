//! Bindings for `marvel_core::tokenizer::Tokenizer`: load, encode bytes to ids, decode ids to bytes.

use std::sync::Arc;

use marvel_core::invalid;
use marvel_core::tensor::HostTensor;
use marvel_core::tokenizer::{Tokenizer as CoreTokenizer, TokenizerInfo};
use marvel_core::tokens::TokenBatch;
use napi::bindgen_prelude::*;
use napi::Env;
use napi_derive::napi;

use crate::task::{sync, Job};
use crate::tensor::{token_batch, Float32Tensor, TokenIds};

/// What a loaded model is; mirrors `marvel_core::tokenizer::TokenizerInfo`.
#[napi(object)]
pub struct ModelInfo {
    pub architecture: String,
    pub quantizer: String,
    pub image_size: u32,
    pub num_tokens: u32,
    pub depth: u32,
    pub codebook_size: f64,
    pub bits_per_token: u32,
    /// Bits per image at full depth.
    pub bits_per_image: f64,
    /// Bits per image when the first d depths are kept, d = 1..=depth (the core's `bits_per_image_at`).
    pub bits_per_image_by_depth: Vec<f64>,
    pub parameters: f64,
    pub encoder_width: u32,
    pub encoder_layers: u32,
    pub decoder_width: u32,
    pub decoder_layers: u32,
    pub two_stage: bool,
}

impl From<&TokenizerInfo> for ModelInfo {
    fn from(i: &TokenizerInfo) -> Self {
        ModelInfo {
            architecture: i.architecture.into(),
            quantizer: i.quantizer.into(),
            image_size: i.image_size as u32,
            num_tokens: i.num_tokens as u32,
            depth: i.depth as u32,
            codebook_size: i.codebook_size as f64,
            bits_per_token: i.bits_per_token,
            bits_per_image: i.bits_per_image as f64,
            bits_per_image_by_depth: (1..=i.depth).map(|d| i.bits_per_image_at(d) as f64).collect(),
            parameters: i.parameters as f64,
            encoder_width: i.encoder_width as u32,
            encoder_layers: i.encoder_layers as u32,
            decoder_width: i.decoder_width as u32,
            decoder_layers: i.decoder_layers as u32,
            two_stage: i.two_stage,
        }
    }
}

/// A loaded model. Calls run as async tasks and hold their own reference to the model, so `dispose()` while
/// calls are in flight is safe: the memory goes when the last call ends.
#[napi(js_name = "NativeTokenizer")]
pub struct NativeTokenizer {
    inner: Option<Arc<CoreTokenizer>>,
}

impl NativeTokenizer {
    fn model(&self, env: &Env) -> napi::Result<Arc<CoreTokenizer>> {
        self.inner
            .clone()
            .ok_or_else(|| crate::task::CodedError::from(invalid!("this tokenizer was disposed")).into_napi(env))
    }
}

fn depth_arg(depth: Option<u32>) -> Option<usize> {
    depth.map(|d| d as usize)
}

/// Load a model folder (`config.json` + `model.safetensors` or `pytorch_model.bin`), off the main thread.
/// `device`: `"cpu"` (default), `"cuda"` or `"cuda:N"`.
#[napi(ts_return_type = "Promise<NativeTokenizer>")]
pub fn load_tokenizer(
    env: Env,
    dir: String,
    device: Option<String>,
) -> napi::Result<AsyncTask<Job<String, NativeTokenizer>>> {
    let device = sync(&env, crate::device::parse(device.as_deref()))?;
    Ok(AsyncTask::new(Job::new(dir, move |dir| {
        Ok(NativeTokenizer { inner: Some(Arc::new(CoreTokenizer::from_pretrained_on(dir, device)?)) })
    })))
}

/// What a model folder holds, checked like a load from `config.json` and the weights file's header alone (no
/// weight is read), off the main thread.
#[napi(ts_return_type = "Promise<ModelInfo>")]
pub fn inspect_model(dir: String) -> AsyncTask<Job<String, ModelInfo>> {
    AsyncTask::new(Job::new(dir, |dir| Ok(ModelInfo::from(&CoreTokenizer::inspect(dir)?))))
}

#[napi]
impl NativeTokenizer {
    #[napi(getter)]
    pub fn info(&self, env: Env) -> napi::Result<ModelInfo> {
        Ok(ModelInfo::from(self.model(&env)?.info()))
    }

    /// Encode `batch` images of interleaved RGB bytes (`[batch, height, width, 3]`) to depth-major ids.
    #[napi(ts_return_type = "Promise<TokenIds>")]
    pub fn encode(
        &self,
        env: Env,
        rgb: Uint8Array,
        batch: u32,
        height: u32,
        width: u32,
    ) -> napi::Result<AsyncTask<Job<(Arc<CoreTokenizer>, Uint8Array), TokenIds>>> {
        let model = self.model(&env)?;
        Ok(AsyncTask::new(Job::new((model, rgb), move |(model, rgb)| {
            Ok(model.encode_rgb(rgb, batch as usize, height as usize, width as usize)?.into())
        })))
    }

    /// Decode depth-major ids (first `depth` depths; all when omitted) to RGB bytes `[batch, H, W, 3]`.
    #[napi(ts_return_type = "Promise<Uint8Array>")]
    pub fn decode(
        &self,
        env: Env,
        ids: Uint32Array,
        shape: Vec<u32>,
        depth: Option<u32>,
    ) -> napi::Result<AsyncTask<Job<(Arc<CoreTokenizer>, Uint32Array, Vec<u32>), Uint8Array>>> {
        let model = self.model(&env)?;
        Ok(AsyncTask::new(Job::new((model, ids, shape), move |(model, ids, shape)| {
            let tokens = token_batch(ids, shape)?;
            Ok(Uint8Array::new(model.decode_rgb(&tokens, depth_arg(depth))?))
        })))
    }

    /// Decode to unclamped float images `[batch, 3, H, W]` (full precision, for comparisons).
    #[napi(ts_return_type = "Promise<Float32Tensor>")]
    pub fn decode_float(
        &self,
        env: Env,
        ids: Uint32Array,
        shape: Vec<u32>,
        depth: Option<u32>,
    ) -> napi::Result<AsyncTask<Job<(Arc<CoreTokenizer>, Uint32Array, Vec<u32>), Float32Tensor>>> {
        let model = self.model(&env)?;
        Ok(AsyncTask::new(Job::new((model, ids, shape), move |(model, ids, shape)| {
            let tokens = token_batch(ids, shape)?;
            let images = model.decode_float(&tokens, depth_arg(depth))?;
            Ok(Float32Tensor::from(HostTensor::<f32>::from_tensor(&images)?))
        })))
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

/// Pack depth-major ids (`[depth, batch, numTokens]`) into the compact byte format, `bits` bits per id.
#[napi]
pub fn tokens_to_bytes(env: Env, ids: Uint32Array, shape: Vec<u32>, bits: u32) -> napi::Result<Buffer> {
    sync(&env, token_batch(&ids, &shape).and_then(|t| t.to_bytes(bits as usize))).map(Buffer::from)
}

/// Ids (depth-major) and bits per id read back from the compact byte format.
#[napi(object)]
pub struct PackedTokens {
    pub ids: TokenIds,
    pub bits: u32,
}

/// Unpack the compact byte format; a truncated or corrupt buffer is an error.
#[napi]
pub fn tokens_from_bytes(env: Env, bytes: Uint8Array) -> napi::Result<PackedTokens> {
    let (t, bits) = sync(&env, TokenBatch::from_bytes(&bytes))?;
    Ok(PackedTokens { ids: t.into(), bits: bits as u32 })
}

/// Write a model folder with fresh random weights for `config_json` (a TiTok/MARVEL `config.json`).
#[napi(ts_return_type = "Promise<void>")]
pub fn create_random_model(dir: String, config_json: String, seed: u32) -> AsyncTask<Job<(String, String), ()>> {
    AsyncTask::new(Job::new((dir, config_json), move |(dir, json)| {
        marvel_core::init::write_random_model(dir, json, seed as u64).map(|_| ())
    }))
}

/// Write a MARVEL model folder from a TiTok one: every tensor but the quantizer copied, LFQ with `depth` depths.
#[napi(ts_return_type = "Promise<void>")]
pub fn marvel_from_titok(src: String, dst: String, depth: u32) -> AsyncTask<Job<(String, String), ()>> {
    AsyncTask::new(Job::new((src, dst), move |(src, dst)| {
        marvel_core::convert::marvel_from_titok(src, dst, depth as usize).map(|_| ())
    }))
}
