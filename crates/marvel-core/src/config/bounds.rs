//! Sanity bounds on the size keys of `model.vq_model`, checked when the file is parsed, before anything is built.
//! A size of 1e9 is a typo or a corrupt file, never a model: without the bounds it would reach an allocation
//! that aborts the process or grows memory until the system kills it. The bounds are generous, several times
//! the largest released or published TiTok / MARVEL model (TiTok-L: width 1024, 24 layers; 256 latent tokens in
//! TiTok-S-256 and the vq8k models; token_size 64; 8192 codes; 512 px images), so any real model passes; what
//! they let through is then limited by the parameter estimate ([`super::size`]) when a model is created.

use super::{config_err, VqModelSection};
use crate::error::Result;

/// `dataset.preprocessing.crop_size`: the image side (released 256; TiTok also published 512 px models).
pub const MAX_IMAGE_SIZE: usize = 4096;
/// Patches per side of a ViT's grid, crop_size / patch_size (released 16; 32 at 512 px): the sequence the
/// attention runs over holds the square of it.
pub const MAX_GRID: usize = 128;
/// `vit_*_width` (released at most 1024, "large").
pub const MAX_VIT_WIDTH: usize = 8192;
/// `vit_*_num_layers` (released at most 24).
pub const MAX_VIT_LAYERS: usize = 256;
/// `num_latent_tokens` (released at most 256).
pub const MAX_LATENT_TOKENS: usize = 4096;
/// `token_size` of a VQ model (released at most 64); LFQ has its own limit of 32 bits.
pub const MAX_TOKEN_SIZE: usize = 4096;
/// `codebook_size` (released at most 8192).
pub const MAX_CODEBOOK_SIZE: usize = 1 << 20;

fn at_most(key: &str, value: usize, max: usize, released: usize) -> Result<()> {
    if value > max {
        return Err(config_err(format!(
            "{key} = {value} is above the limit of {max} (the largest released model uses {released})"
        )));
    }
    Ok(())
}

/// Checks every size key present in `model.vq_model` and the image size against its bound.
pub fn check(m: &VqModelSection, image_size: usize) -> Result<()> {
    at_most("dataset.preprocessing.crop_size", image_size, MAX_IMAGE_SIZE, 512)?;
    for (prefix, patch, width, layers) in [
        ("vit_enc", m.vit_enc_patch_size, m.vit_enc_width, m.vit_enc_num_layers),
        ("vit_dec", m.vit_dec_patch_size, m.vit_dec_width, m.vit_dec_num_layers),
    ] {
        if let Some(w) = width {
            at_most(&format!("{prefix}_width"), w, MAX_VIT_WIDTH, 1024)?;
        }
        if let Some(l) = layers {
            at_most(&format!("{prefix}_num_layers"), l, MAX_VIT_LAYERS, 24)?;
        }
        if patch > 0 && image_size / patch > MAX_GRID {
            return Err(config_err(format!(
                "{prefix}_patch_size = {patch} cuts crop_size = {image_size} into a {0}x{0} grid of patches, above \
                 the limit of {MAX_GRID}x{MAX_GRID} (released models use 16x16)",
                image_size / patch
            )));
        }
    }
    at_most("num_latent_tokens", m.num_latent_tokens, MAX_LATENT_TOKENS, 256)?;
    at_most("token_size", m.token_size, MAX_TOKEN_SIZE, 64)?;
    if let Some(cs) = m.codebook_size {
        at_most("codebook_size", cs, MAX_CODEBOOK_SIZE, 8192)?;
    }
    Ok(())
}
