//! The stage-1 recipe of two-stage TiTok / MARVEL: the legacy head learns to predict, for each 16x16 patch, the
//! MaskGIT-VQGAN code of that patch ("proxy codes"), while the quantizer's own loss shapes the latent tokens.
//!
//! Reference: bytedance/1d-tokenizer `ReconstructionLoss_Stage1` (`modeling/modules/losses.py`) and the MDQ fork's
//! version of it. loss = CE(logits viewed as (B, 1024, grid²), proxy codes) [mean over B·grid²] +
//! quantizer_weight · quantizer_loss, where quantizer_loss is, for VQ, commitment + codebook loss on the
//! L2-normalised latent, and for LFQ, commitment + entropy loss over the depths of the step (depth dropout may
//! shorten them; see [`ResidualLfq::sample_train_depths`]). The MaskGIT-VQGAN that makes the targets is frozen:
//! its codes are discrete, so no gradient reaches it.
//!
//! Trainable in stage 1 (the reference constructor with `finetune_decoder` false freezes nothing): `latent_tokens`,
//! `encoder.*`, `quantize.embedding.weight` (VQ; LFQ has no parameters) and `decoder.*` up to the 1024-logit head.

use std::collections::BTreeMap;

use candle_core::{DType, Tensor, D};

use crate::config::LEGACY_LOGITS;
use crate::error::{MarvelError, Result};
use crate::model::maskgit::MaskgitVqgan;
use crate::model::titok::Titok;
use crate::quantize::lfq::SplitMix64;
use crate::quantize::{Quantizer, ResidualLfq};
use crate::{invalid, shape_mismatch};

/// The recipe's keys of the training config (`losses.quantizer_weight`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stage1Config {
    pub quantizer_weight: f64,
}

impl Default for Stage1Config {
    /// The stage-1 yamls of the reference and of MDQ use 1.0.
    fn default() -> Self {
        Self { quantizer_weight: 1.0 }
    }
}

/// One stage-1 forward pass.
#[derive(Debug, Clone)]
pub struct Stage1Output {
    /// The total loss, an f32 scalar; its backward gives the step's gradients.
    pub loss: Tensor,
    /// The scalars the reference logs, by its names: `total_loss`, `reconstruction_loss`, `quantizer_loss`
    /// (weighted), `commitment_loss`, `codebook_loss` (for LFQ this holds the entropy loss, as MDQ reports it),
    /// and for LFQ also `entropy_loss`, `per_sample_entropy`, `avg_entropy`.
    pub components: BTreeMap<String, f32>,
    /// The latent tokens' ids: (B, N) for VQ, (B, N, depth) for LFQ.
    pub tokens: Tensor,
    /// LFQ depths the step trained on (1 for VQ).
    pub depth: usize,
}

/// Refuses models that stage 1 cannot train: it needs the legacy 1024-logit head and no pixel stage (that is the
/// stage-2 layout).
pub fn check_stage1_model(model: &Titok) -> Result<()> {
    let cfg = model.config();
    if !cfg.is_legacy || cfg.finetune_decoder {
        return Err(MarvelError::Config(format!(
            "the stage-1 recipe trains the legacy 1024-logit head: it needs is_legacy = true and finetune_decoder = \
             false, got is_legacy = {} and finetune_decoder = {}",
            cfg.is_legacy, cfg.finetune_decoder
        )));
    }
    Ok(())
}

/// The proxy codes of `images` (B, 3, H, W) in [0, 1]: the frozen MaskGIT-VQGAN's nearest codes, (B, 256) U32
/// row-major over its 16x16 grid. Computed from detached images, so the MaskGIT weights never enter a gradient.
pub fn proxy_codes(vqgan: &MaskgitVqgan, images: &Tensor) -> Result<Tensor> {
    let codebook = vqgan.config().codebook_size;
    if codebook != LEGACY_LOGITS {
        return Err(MarvelError::Config(format!(
            "the MaskGIT-VQGAN has {codebook} codes; the legacy head predicts {LEGACY_LOGITS}"
        )));
    }
    vqgan.encode(&images.detach())
}

/// The stage-1 loss of `model` (built on trainable variables) for `images` (B, 3, H, W) float in [0, 1] and their
/// `proxy_codes` (B, grid²) or (B, grid, grid), any integer dtype, each in 0..1024. `rng` draws the LFQ depth
/// dropout (nothing is drawn for VQ or without dropout).
pub fn stage1_loss(
    model: &Titok,
    images: &Tensor,
    proxy_codes: &Tensor,
    cfg: &Stage1Config,
    rng: &mut SplitMix64,
) -> Result<Stage1Output> {
    check_stage1_model(model)?;
    if !cfg.quantizer_weight.is_finite() {
        return Err(invalid!("losses.quantizer_weight must be finite, got {}", cfg.quantizer_weight));
    }
    let batch = images.dims().first().copied().unwrap_or(0);
    let targets = checked_targets(proxy_codes, batch, model.config().decoder_grid())?.to_device(model.device())?;

    let z = model.encode_latent(images)?;
    let (z_q, tokens, depth, quantizer) = match model.quantizer() {
        Quantizer::Vq(vq) => {
            let out = vq.forward(&z)?;
            let parts = QuantizerParts {
                total: out.quantizer_loss()?,
                commitment: out.commitment_loss,
                codebook: out.codebook_loss,
                entropy: None,
            };
            (out.z_q, out.tokens.squeeze(1)?, 1, parts)
        }
        Quantizer::Lfq(lfq) => lfq_parts(lfq, &z, rng)?,
    };
    let logits = model.decoder().logits_channels_last(&z_q)?; // (B, grid², 1024)
    let reconstruction = cross_entropy(&logits.flatten_to(1)?, &targets.flatten_all()?)?;
    let weighted = (&quantizer.total * cfg.quantizer_weight)?;
    let loss = (&reconstruction + &weighted)?;

    let scalar = |t: &Tensor| -> Result<f32> { Ok(t.to_dtype(DType::F32)?.to_scalar::<f32>()?) };
    let mut components = BTreeMap::new();
    components.insert("total_loss".to_string(), scalar(&loss)?);
    components.insert("reconstruction_loss".to_string(), scalar(&reconstruction)?);
    components.insert("quantizer_loss".to_string(), scalar(&weighted)?);
    components.insert("commitment_loss".to_string(), scalar(&quantizer.commitment)?);
    components.insert("codebook_loss".to_string(), scalar(&quantizer.codebook)?);
    if let Some([entropy, per_sample, avg]) = &quantizer.entropy {
        components.insert("entropy_loss".to_string(), scalar(entropy)?);
        components.insert("per_sample_entropy".to_string(), scalar(per_sample)?);
        components.insert("avg_entropy".to_string(), scalar(avg)?);
    }
    Ok(Stage1Output { loss, components, tokens, depth })
}

/// The quantizer's loss terms, differentiable.
struct QuantizerParts {
    total: Tensor,
    commitment: Tensor,
    /// VQ: mean((e - sg(z))²); LFQ: the entropy loss (MDQ reports it under this name).
    codebook: Tensor,
    /// LFQ: entropy loss, per-sample entropy, average entropy.
    entropy: Option<[Tensor; 3]>,
}

fn lfq_parts(lfq: &ResidualLfq, z: &Tensor, rng: &mut SplitMix64) -> Result<(Tensor, Tensor, usize, QuantizerParts)> {
    let out = lfq.forward_train(z, rng)?;
    let l = out.losses;
    let parts = QuantizerParts {
        total: l.total,
        commitment: l.commitment,
        codebook: l.entropy.clone(),
        entropy: Some([l.entropy, l.per_sample_entropy, l.avg_entropy]),
    };
    Ok((out.codes.z_q, out.codes.tokens, out.depth, parts))
}

/// `torch.nn.CrossEntropyLoss(reduction="mean")` of `logits` (rows, classes) against `targets` (rows) U32: the
/// mean over rows of logsumexp(row) - row[target]. Composed from differentiable ops; the row max only shifts the
/// logits for stability, so it is detached (its exact gradient is zero).
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let shifted = logits.broadcast_sub(&logits.max_keepdim(D::Minus1)?.detach())?;
    let log_sum = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    let picked = shifted.gather(&targets.unsqueeze(1)?, 1)?;
    Ok((log_sum - picked)?.mean_all()?)
}

/// `proxy_codes` as U32 (B, grid²) after checking its shape, dtype and range; the message names the first bad
/// code.
fn checked_targets(codes: &Tensor, batch: usize, grid: usize) -> Result<Tensor> {
    let positions = grid * grid;
    let codes = match codes.dims() {
        &[b, p] if b == batch && p == positions => codes.clone(),
        &[b, h, w] if b == batch && h == grid && w == grid => codes.reshape((b, positions))?,
        dims => {
            return Err(shape_mismatch!(
                "proxy codes must be ({batch}, {positions}) or ({batch}, {grid}, {grid}) for {batch} images and the \
                 decoder's {grid}x{grid} grid, got {dims:?}"
            ))
        }
    };
    if !codes.dtype().is_int() {
        return Err(invalid!("proxy codes must be integers, got {:?}", codes.dtype()));
    }
    let flat = codes.flatten_all()?.to_dtype(DType::I64)?.to_vec1::<i64>()?;
    if let Some((i, &c)) = flat.iter().enumerate().find(|(_, &c)| !(0..LEGACY_LOGITS as i64).contains(&c)) {
        return Err(invalid!(
            "proxy code {c} at (image {}, position {}) is outside 0..{LEGACY_LOGITS}",
            i / positions,
            i % positions
        ));
    }
    Ok(codes.to_dtype(DType::U32)?)
}
