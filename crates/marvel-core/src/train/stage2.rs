//! The stage-2 recipe of two-stage TiTok / MARVEL: the tokens are fixed, and the decoder learns to turn them into
//! pixels. Reference: bytedance/1d-tokenizer `TiTok.__init__` with `finetune_decoder` true sets requires_grad false
//! on `latent_tokens`, `encoder.*` and `quantize.*`, and `TiTok.encode` runs encoder + quantizer under
//! `torch.no_grad()` and multiplies the quantizer's losses by 0. What trains: `decoder.*` (the ViT decoder and its
//! 1024-logit head), `pixel_quantize.*` (the pixel codebook, which the reference never freezes) and
//! `pixel_decoder.*`, through `decode`'s soft codebook mix (softmax of the logits times the pixel codebook). The
//! loss is [`Stage2Loss::generator`](super::losses::Stage2Loss::generator) of the reconstruction.

use std::path::Path;

use candle_core::{Device, Tensor, Var};

use super::params::load_trainable;
use crate::config::TitokConfig;
use crate::error::{MarvelError, Result};
use crate::model::titok::Titok;
use crate::weights::LoadOptions;

/// Parameter-name prefixes that train in stage 2; every other parameter is frozen.
const TRAINABLE: [&str; 3] = ["decoder.", "pixel_quantize.", "pixel_decoder."];

/// The parameter-name prefixes (reference state-dict keys) that stage 2 trains; everything else (`encoder.*`,
/// `quantize.*`, `latent_tokens`) is frozen: in no optimizer, no gradient, copied by the EMA.
pub fn stage2_trainable_prefixes() -> &'static [&'static str] {
    &TRAINABLE
}

/// Whether the parameter `name` trains in stage 2.
pub fn is_stage2_trainable(name: &str) -> bool {
    TRAINABLE.iter().any(|p| name.starts_with(p))
}

/// Refuses models that stage 2 cannot train: it needs the pixel stage (`finetune_decoder` with the legacy head).
pub fn check_stage2_model(model: &Titok) -> Result<()> {
    let cfg = model.config();
    if !cfg.is_legacy || !cfg.finetune_decoder || cfg.pixel_decoder.is_none() {
        return Err(MarvelError::Config(format!(
            "the stage-2 recipe trains the pixel decoder of the two-stage layout: it needs is_legacy = true, \
             finetune_decoder = true and a pixel_decoder, got is_legacy = {}, finetune_decoder = {}, pixel_decoder \
             {}",
            cfg.is_legacy,
            cfg.finetune_decoder,
            if cfg.pixel_decoder.is_some() { "present" } else { "absent" }
        )));
    }
    Ok(())
}

/// A stage-2 model whose trainable parameters are [`Var`]s (in the reference's `named_parameters()` order) and
/// whose frozen ones are plain tensors, so the frozen encoder keeps the fused inference kernels. Loaded strictly
/// from one weight file.
pub fn load_stage2_model(
    cfg: &TitokConfig,
    weights: impl AsRef<Path>,
    device: &Device,
) -> Result<(Titok, Vec<(String, Var)>)> {
    let (model, vars) = load_trainable(weights, device, &LoadOptions::default(), is_stage2_trainable, |vb| {
        Titok::new(cfg, vb)
    })?;
    check_stage2_model(&model)?;
    Ok((model, vars))
}

/// One stage-2 forward pass.
#[derive(Debug, Clone)]
pub struct Stage2Forward {
    /// (B, 3, H, W), unclamped, on the graph of the trainable parameters.
    pub recon: Tensor,
    /// The frozen quantizer's token ids, as [`Titok::encode`] returns them.
    pub tokens: Tensor,
    /// The model's quantizer loss as stage 2 reports it: 0 (the reference multiplies it by 0), an f32 scalar.
    pub quantizer_loss: Tensor,
}

/// Encodes `images` (B, 3, H, W) in [0, 1] with the frozen encoder and quantizer, outside autograd whatever the
/// parameters are (the reference's `torch.no_grad()`), and decodes them through the differentiable soft codebook
/// mix and pixel decoder.
pub fn stage2_forward(model: &Titok, images: &Tensor) -> Result<Stage2Forward> {
    check_stage2_model(model)?;
    let (z_q, tokens) = model.encode(&images.detach())?;
    let recon = model.decode(&z_q.detach())?;
    let quantizer_loss = Tensor::new(0f32, model.device())?.to_dtype(recon.dtype())?;
    Ok(Stage2Forward { recon, tokens, quantizer_loss })
}
