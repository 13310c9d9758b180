//! TiTok's ViT decoder (`TiTokDecoder` in the reference `modeling/modules/blocks.py`): a grid of mask tokens
//! attends to the embedded latent tokens; the grid's outputs become either 1024 MaskGIT logits per patch
//! (legacy head) or RGB pixels (pixel head).

use candle_core::{Result, Tensor};
use candle_nn::{Linear, VarBuilder};

use crate::config::{TitokConfig, LEGACY_LOGITS};
use crate::nn::TRUNC_NORMAL_002;
use crate::nn::{
    conv1x1_as_linear, linear, linear_forward, linear_tanh_forward, param, BlockScratch, LayerNorm, ParamInit,
    ResidualAttentionBlock, LAYER_NORM_EPS,
};

/// The output head (`ffn`, and `conv_out` for pixels).
#[derive(Debug, Clone)]
enum Head {
    /// `ffn.0` 1x1 conv D -> 2D, tanh, `ffn.2` 1x1 conv 2D -> 1024.
    Logits { ffn0: Linear, ffn2: Linear },
    /// `ffn.0` 1x1 conv D -> p·p·3, depth-to-space, `conv_out` 3x3 conv.
    Pixels { ffn0: Linear, conv_out: (Tensor, Tensor) },
}

#[derive(Debug, Clone)]
pub struct TitokDecoder {
    decoder_embed: Linear,
    class_embedding: Tensor,
    positional_embedding: Tensor,
    mask_token: Tensor,
    latent_token_positional_embedding: Tensor,
    ln_pre: LayerNorm,
    transformer: Vec<ResidualAttentionBlock>,
    /// What the transformer's inference path computes in, kept between calls.
    scratch: BlockScratch,
    ln_post: LayerNorm,
    head: Head,
    grid: usize,
    patch_size: usize,
    width: usize,
    num_latent_tokens: usize,
}

impl TitokDecoder {
    pub fn new(cfg: &TitokConfig, vb: VarBuilder) -> Result<Self> {
        let vit = &cfg.decoder;
        let (d, p) = (vit.width, vit.patch_size);
        let grid = cfg.decoder_grid();
        let n = cfg.num_latent_tokens;
        let transformer = (0..vit.num_layers)
            .map(|i| ResidualAttentionBlock::new(d, vit.num_heads, vit.mlp_width(), vb.pp("transformer").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        let ffn = vb.pp("ffn");
        let head = if cfg.is_legacy {
            Head::Logits {
                ffn0: conv1x1_as_linear(2 * d, d, ffn.pp(0))?,
                ffn2: conv1x1_as_linear(LEGACY_LOGITS, 2 * d, ffn.pp(2))?,
            }
        } else {
            let co = vb.pp("conv_out");
            let weight = param(&co, (3, 3, 3, 3), "weight", TRUNC_NORMAL_002)?;
            let bias = param(&co, 3, "bias", ParamInit::Zeros)?;
            Head::Pixels { ffn0: conv1x1_as_linear(p * p * 3, d, ffn.pp(0))?, conv_out: (weight, bias) }
        };
        let embedding = ParamInit::scaled_normal(d);
        Ok(Self {
            decoder_embed: linear(cfg.token_size, d, vb.pp("decoder_embed"))?,
            class_embedding: param(&vb, (1, d), "class_embedding", embedding)?,
            positional_embedding: param(&vb, (grid * grid + 1, d), "positional_embedding", embedding)?,
            mask_token: param(&vb, (1, 1, d), "mask_token", embedding)?,
            latent_token_positional_embedding: param(&vb, (n, d), "latent_token_positional_embedding", embedding)?,
            ln_pre: LayerNorm::new(d, LAYER_NORM_EPS, vb.pp("ln_pre"))?,
            transformer,
            scratch: BlockScratch::default(),
            ln_post: LayerNorm::new(d, LAYER_NORM_EPS, vb.pp("ln_post"))?,
            head,
            grid,
            patch_size: p,
            width: d,
            num_latent_tokens: n,
        })
    }

    /// Packs the transformer's linear weights for inference (`ResidualAttentionBlock::pack_weights`).
    pub fn pack_weights(&mut self, scratch: &mut Vec<f32>) -> Result<()> {
        self.transformer.iter_mut().try_for_each(|block| block.pack_weights(scratch))
    }

    /// True for the legacy head (1024 MaskGIT logits per patch).
    pub fn predicts_logits(&self) -> bool {
        matches!(self.head, Head::Logits { .. })
    }

    /// The transformer's grid outputs after `ln_post`: (B, grid², D), row-major over the grid.
    fn grid_features(&self, z_q: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = z_q.dims4()?;
        if h != 1 || w != self.num_latent_tokens {
            candle_core::bail!(
                "decoder input must be (B, token_size, 1, {}), got {:?}",
                self.num_latent_tokens,
                z_q.dims()
            );
        }
        let (g, d, n) = (self.grid, self.width, self.num_latent_tokens);
        let latents = linear_forward(&self.decoder_embed, &z_q.reshape((b, c, n))?.transpose(1, 2)?.contiguous()?)?;
        let latents = latents.broadcast_add(&self.latent_token_positional_embedding)?;

        // The class token and the mask-token grid do not depend on the input.
        let queries = Tensor::cat(&[self.class_embedding.clone(), self.mask_token.squeeze(0)?.repeat((g * g, 1))?], 0)?;
        let queries = (queries + &self.positional_embedding)?.unsqueeze(0)?.broadcast_as((b, g * g + 1, d))?;

        let mut xs = Tensor::cat(&[&queries, &latents], 1)?;
        xs = self.ln_pre.forward(&xs)?;
        xs = ResidualAttentionBlock::forward_all_rows(&self.transformer, &xs, 1, g * g, &self.scratch)?;
        self.ln_post.forward(&xs)
    }

    /// Legacy head only: the logits channels-last, (B, grid², 1024), the layout the pixel-codebook mix wants.
    pub fn logits_channels_last(&self, z_q: &Tensor) -> Result<Tensor> {
        let Head::Logits { ffn0, ffn2 } = &self.head else {
            candle_core::bail!("this decoder has a pixel head; it predicts no logits")
        };
        linear_forward(ffn2, &linear_tanh_forward(ffn0, &self.grid_features(z_q)?)?)
    }

    /// `z_q`: (B, token_size, 1, N). Legacy head: logits (B, 1024, grid, grid); pixel head: (B, 3, H, W),
    /// unclamped.
    pub fn forward(&self, z_q: &Tensor) -> Result<Tensor> {
        let b = z_q.dim(0)?;
        let g = self.grid;
        match &self.head {
            Head::Logits { .. } => {
                let logits = self.logits_channels_last(z_q)?;
                logits.transpose(1, 2)?.reshape((b, LEGACY_LOGITS, g, g))
            }
            Head::Pixels { ffn0, conv_out } => {
                let p = self.patch_size;
                let patches = linear_forward(ffn0, &self.grid_features(z_q)?)?;
                // einops 'b (p1 p2 c) h w -> b c (h p1) (w p2)': channel (p1·p + p2)·3 + c of patch (h, w).
                let pixels =
                    patches.reshape((b, g, g, p, p, 3))?.permute((0, 5, 1, 3, 2, 4))?.reshape((b, 3, g * p, g * p))?;
                // candle's conv2d for inference, one whose backward is matmuls under autograd.
                crate::nn::conv2d(&pixels, &conv_out.0, Some(&conv_out.1), 1, 1)
            }
        }
    }
}
