//! Bindings for the multi-depth LFQ quantizer on its own (`marvel_core::quantize::lfq`): latents to tokens and
//! codes, and the training losses.

use marvel_core::quantize::lfq::{LfqConfig, LfqLossValues, ResidualLfq};
use napi::bindgen_prelude::*;
use napi_derive::napi;

use crate::task::Job;
use crate::tensor::{dims, Float32Tensor, TokenIds};

/// LFQ settings; omitted fields take MARVEL's stage-1 values (β 0.25, w 0.02, τ 0.01, γ 1, full entropy).
#[napi(object)]
pub struct LfqOptions {
    pub depth: u32,
    pub commitment_cost: Option<f64>,
    pub entropy_loss_weight: Option<f64>,
    pub entropy_loss_temperature: Option<f64>,
    pub entropy_gamma: Option<f64>,
    pub entropy_groups: Option<u32>,
}

/// The quantizer for latents of `shape` (bits = its last dimension) and `o`.
fn quantizer(shape: &[usize], o: &LfqOptions) -> marvel_core::Result<ResidualLfq> {
    let mut cfg = LfqConfig::mdq(shape.last().copied().unwrap_or(0), o.depth as usize);
    cfg.commitment_cost = o.commitment_cost.unwrap_or(cfg.commitment_cost);
    cfg.entropy_loss_weight = o.entropy_loss_weight.unwrap_or(cfg.entropy_loss_weight);
    cfg.entropy_loss_temperature = o.entropy_loss_temperature.unwrap_or(cfg.entropy_loss_temperature);
    cfg.entropy_gamma = o.entropy_gamma.unwrap_or(cfg.entropy_gamma);
    cfg.entropy_groups = o.entropy_groups.map(|g| g as usize);
    ResidualLfq::from_config(cfg)
}

#[napi(object)]
pub struct LfqQuantized {
    /// Token ids, depth-major `[depth, batch, numTokens]` (the layout of `Tokens`).
    pub tokens: TokenIds,
    /// Σ of the depth vectors, the decoder input: same shape as z.
    pub codes: Float32Tensor,
}

/// Quantize channels-last latents z `[B, N, bits]` over `depth` depths.
#[napi(ts_return_type = "Promise<LfqQuantized>")]
pub fn lfq_quantize(z: Float32Array, shape: Vec<u32>, options: LfqOptions) -> AsyncTask<Job<(Float32Array, Vec<u32>, LfqOptions), LfqQuantized>> {
    AsyncTask::new(Job::new((z, shape, options), |(z, shape, o)| {
        let shape = dims(shape);
        let (tokens, codes) = quantizer(&shape, o)?.quantize_host(z, &shape, o.depth as usize)?;
        Ok(LfqQuantized { tokens: tokens.into(), codes: codes.into() })
    }))
}

#[napi(object)]
pub struct LfqLosses {
    pub commitment: f64,
    pub entropy: f64,
    pub per_sample_entropy: f64,
    pub avg_entropy: f64,
    pub total: f64,
}

impl From<LfqLossValues> for LfqLosses {
    fn from(l: LfqLossValues) -> Self {
        LfqLosses {
            commitment: l.commitment,
            entropy: l.entropy,
            per_sample_entropy: l.per_sample_entropy,
            avg_entropy: l.avg_entropy,
            total: l.total,
        }
    }
}

/// The training losses of latents z `[B, N, bits]` over `depth` depths.
#[napi(ts_return_type = "Promise<LfqLosses>")]
pub fn lfq_losses(z: Float32Array, shape: Vec<u32>, options: LfqOptions) -> AsyncTask<Job<(Float32Array, Vec<u32>, LfqOptions), LfqLosses>> {
    AsyncTask::new(Job::new((z, shape, options), |(z, shape, o)| {
        let shape = dims(shape);
        Ok(quantizer(&shape, o)?.loss_values(z, &shape, o.depth as usize)?.into())
    }))
}
