//! How many parameters a configuration describes, counted from its sizes alone: nothing is built or allocated,
//! so a config whose model would not fit in memory is refused before the first weight exists. The count is exact
//! (the tests compare it with the weights the model constructors request), and u64 cannot overflow for sizes
//! within [`super::bounds`].

use super::{QuantizerConfig, TitokConfig, VitConfig, LEGACY_LOGITS};

/// Weights of one pre-norm transformer block of width d with a 4d MLP: two LayerNorms (2d each), the fused
/// q/k/v projection (3d² + 3d), the output projection (d² + d), and the MLP (4d² + 4d, then 4d² + d).
fn block(d: u64) -> u64 {
    12 * d * d + 13 * d
}

/// What the encoder and decoder ViTs share: class embedding, positional embeddings of the patch grid and of the
/// latent tokens, ln_pre and ln_post, and the blocks.
fn vit_trunk(vit: &VitConfig, grid: u64, latent_tokens: u64) -> u64 {
    let d = vit.width as u64;
    d + (grid * grid + 1) * d + latent_tokens * d + 4 * d + vit.num_layers as u64 * block(d)
}

impl TitokConfig {
    /// The number of parameters (every weight tensor's elements) of the model this config describes.
    pub fn parameter_count(&self) -> u64 {
        let (n, t) = (self.num_latent_tokens as u64, self.token_size as u64);
        let (enc, dec) = (&self.encoder, &self.decoder);
        let (de, dd) = (enc.width as u64, dec.width as u64);

        let patch = enc.patch_size as u64;
        let encoder = de * 3 * patch * patch + de // patch_embed
            + vit_trunk(enc, self.encoder_grid() as u64, n)
            + t * de + t; // conv_out, 1x1
        let p = dec.patch_size as u64;
        let head = if self.is_legacy {
            let logits = LEGACY_LOGITS as u64;
            2 * dd * dd + 2 * dd + logits * 2 * dd + logits // ffn.0, ffn.2
        } else {
            p * p * 3 * dd + p * p * 3 + 3 * 3 * 9 + 3 // ffn.0, 3x3 conv_out
        };
        let decoder = dd * t + dd // decoder_embed
            + vit_trunk(dec, self.decoder_grid() as u64, n)
            + dd // mask_token
            + head;
        let quantizer = match &self.quantizer {
            QuantizerConfig::Vq(vq) => vq.codebook_size as u64 * t,
            // The LFQ codebook is implicit (the sign patterns of the token bits).
            QuantizerConfig::Lfq(_) => 0,
        };
        let pixel = self.pixel_decoder.as_ref().map_or(0, |pd| {
            (pd.codebook_size * pd.z_channels) as u64 + pd.decoder_parameter_count()
        });
        n * de // latent_tokens
            + encoder + decoder + quantizer + pixel
    }
}
