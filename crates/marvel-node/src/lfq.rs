//! Bindings for the multi-depth LFQ quantizer on its own (`marvel_core::quantize::lfq`): latents to tokens and
//! codes, and the training losses.

use candle_core::{DType, Device};
use marvel_core::quantize::lfq::{LfqConfig, ResidualLfq};
use marvel_core::tensor::HostTensor;
use napi::bindgen_prelude::*;
use napi_derive::napi;

use crate::task::Job;
use crate::tensor::{f32_tensor, Float32Tensor};

/// LFQ settings; omitted fields take MARVEL's stage-1 values (β 0.25, w 0.02, τ 0.01, γ 1, full entropy).
#[napi(object)]
pub struct LfqOptions {
    pub depths: u32,
    pub commitment_cost: Option<f64>,
    pub entropy_loss_weight: Option<f64>,
    pub entropy_loss_temperature: Option<f64>,
    pub entropy_gamma: Option<f64>,
    pub entropy_groups: Option<u32>,
}

fn quantizer(bits: usize, o: &LfqOptions) -> marvel_core::Result<ResidualLfq> {
    let mut cfg = LfqConfig::mdq(bits, o.depths as usize);
    cfg.commitment_cost = o.commitment_cost.unwrap_or(cfg.commitment_cost);
    cfg.entropy_loss_weight = o.entropy_loss_weight.unwrap_or(cfg.entropy_loss_weight);
    cfg.entropy_loss_temperature = o.entropy_loss_temperature.unwrap_or(cfg.entropy_loss_temperature);
    cfg.entropy_gamma = o.entropy_gamma.unwrap_or(cfg.entropy_gamma);
    cfg.entropy_groups = o.entropy_groups.map(|g| g as usize);
    ResidualLfq::from_config(cfg)
}

fn bits_of(shape: &[u32]) -> usize {
    shape.last().copied().unwrap_or(0) as usize
}

#[napi(object)]
pub struct LfqQuantized {
    /// (B, N, depths) token ids, depth fastest.
    pub tokens: Uint32Array,
    /// Σ of the depth vectors, the decoder input: same shape as z.
    pub codes: Float32Tensor,
}

/// Quantize channels-last latents z `[B, N, bits]` over `depths` depths.
#[napi(ts_return_type = "Promise<LfqQuantized>")]
pub fn lfq_quantize(z: Float32Array, shape: Vec<u32>, options: LfqOptions) -> AsyncTask<Job<(Float32Array, Vec<u32>, LfqOptions), LfqQuantized>> {
    AsyncTask::new(Job::new((z, shape, options), |(z, shape, o)| {
        let q = quantizer(bits_of(shape), o)?;
        let codes = q.quantize(&f32_tensor("z", z, shape)?, o.depths as usize)?;
        Ok(LfqQuantized {
            tokens: Uint32Array::new(codes.tokens.to_dtype(DType::U32)?.flatten_all()?.to_vec1::<u32>()?),
            codes: Float32Tensor::from(HostTensor::<f32>::from_tensor(&codes.cum)?),
        })
    }))
}

#[napi(object)]
pub struct LfqLossValues {
    pub commitment: f64,
    pub entropy: f64,
    pub per_sample_entropy: f64,
    pub avg_entropy: f64,
    pub total: f64,
}

/// The training losses of latents z `[B, N, bits]` over `depths` depths.
#[napi(ts_return_type = "Promise<LfqLossValues>")]
pub fn lfq_losses(z: Float32Array, shape: Vec<u32>, options: LfqOptions) -> AsyncTask<Job<(Float32Array, Vec<u32>, LfqOptions), LfqLossValues>> {
    AsyncTask::new(Job::new((z, shape, options), |(z, shape, o)| {
        let q = quantizer(bits_of(shape), o)?;
        let l = q.losses(&f32_tensor("z", z, shape)?.to_device(&Device::Cpu)?, o.depths as usize)?;
        let v = |t: &candle_core::Tensor| -> marvel_core::Result<f64> { Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?) };
        Ok(LfqLossValues {
            commitment: v(&l.commitment)?,
            entropy: v(&l.entropy)?,
            per_sample_entropy: v(&l.per_sample_entropy)?,
            avg_entropy: v(&l.avg_entropy)?,
            total: v(&l.total)?,
        })
    }))
}
