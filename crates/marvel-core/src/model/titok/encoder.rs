//! TiTok's ViT encoder (`TiTokEncoder` in the reference `modeling/modules/blocks.py`): image patches and the
//! learned latent tokens go through one transformer; only the latent tokens' outputs are kept, as the 1-D code.

use candle_core::{Result, Tensor};
use candle_nn::{Linear, VarBuilder};

use crate::config::TitokConfig;
use crate::nn::{
    conv1x1_as_linear, linear_forward, param, BlockScratch, LayerNorm, ParamInit, ResidualAttentionBlock,
    LAYER_NORM_EPS, TRUNC_NORMAL_002,
};

#[derive(Debug, Clone)]
pub struct TitokEncoder {
    /// The 16x16 stride-16 patch convolution as a matmul over flattened (C, ph, pw) patches: the same sums
    /// without im2col.
    patch_embed: Linear,
    class_embedding: Tensor,
    positional_embedding: Tensor,
    latent_token_positional_embedding: Tensor,
    ln_pre: LayerNorm,
    transformer: Vec<ResidualAttentionBlock>,
    /// What the transformer's inference path computes in, kept between calls.
    scratch: BlockScratch,
    ln_post: LayerNorm,
    conv_out: Linear,
    patch_size: usize,
    grid: usize,
    width: usize,
    num_latent_tokens: usize,
    token_size: usize,
    is_legacy: bool,
}

impl TitokEncoder {
    pub fn new(cfg: &TitokConfig, vb: VarBuilder) -> Result<Self> {
        let vit = &cfg.encoder;
        let (d, p) = (vit.width, vit.patch_size);
        let grid = cfg.encoder_grid();
        let n = cfg.num_latent_tokens;
        let pe = vb.pp("patch_embed");
        let patch_weight = param(&pe, (d, 3, p, p), "weight", TRUNC_NORMAL_002)?.reshape((d, 3 * p * p))?;
        let patch_embed = Linear::new(patch_weight, Some(param(&pe, d, "bias", ParamInit::Zeros)?));
        let embedding = ParamInit::scaled_normal(d);
        let transformer = (0..vit.num_layers)
            .map(|i| ResidualAttentionBlock::new(d, vit.num_heads, vit.mlp_width(), vb.pp("transformer").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            patch_embed,
            class_embedding: param(&vb, (1, d), "class_embedding", embedding)?,
            positional_embedding: param(&vb, (grid * grid + 1, d), "positional_embedding", embedding)?,
            latent_token_positional_embedding: param(&vb, (n, d), "latent_token_positional_embedding", embedding)?,
            ln_pre: LayerNorm::new(d, LAYER_NORM_EPS, vb.pp("ln_pre"))?,
            transformer,
            scratch: BlockScratch::default(),
            ln_post: LayerNorm::new(d, LAYER_NORM_EPS, vb.pp("ln_post"))?,
            conv_out: conv1x1_as_linear(cfg.token_size, d, vb.pp("conv_out"))?,
            patch_size: p,
            grid,
            width: d,
            num_latent_tokens: n,
            token_size: cfg.token_size,
            is_legacy: cfg.is_legacy,
        })
    }

    /// Packs the transformer's linear weights for inference (`ResidualAttentionBlock::pack_weights`).
    pub fn pack_weights(&mut self, scratch: &mut Vec<f32>) -> Result<()> {
        self.transformer.iter_mut().try_for_each(|block| block.pack_weights(scratch))
    }

    /// `pixel_values`: (B, 3, H, W) in [0, 1]; `latent_tokens`: (N, D), the model's learned queries.
    /// Returns (B, token_size, 1, N), the reference's "fake 2-D" layout.
    pub fn forward(&self, pixel_values: &Tensor, latent_tokens: &Tensor) -> Result<Tensor> {
        let (b, c, _, _) = pixel_values.dims4()?;
        let (g, p, d, n) = (self.grid, self.patch_size, self.width, self.num_latent_tokens);
        // (B, C, gy, py, gx, px) -> (B, gy, gx, C, py, px): one row per patch, in the conv kernel's order.
        let patches = pixel_values
            .reshape((b, c, g, p, g, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((b, g * g, c * p * p))?;
        let patches = linear_forward(&self.patch_embed, &patches)?;

        let pos = &self.positional_embedding;
        let class = (&self.class_embedding + pos.narrow(0, 0, 1)?)?.unsqueeze(0)?.broadcast_as((b, 1, d))?;
        let patches = patches.broadcast_add(&pos.narrow(0, 1, g * g)?)?;
        let latents =
            (latent_tokens + &self.latent_token_positional_embedding)?.unsqueeze(0)?.broadcast_as((b, n, d))?;
        let mut xs = Tensor::cat(&[&class, &patches, &latents], 1)?;

        xs = self.ln_pre.forward(&xs)?;
        let latents = ResidualAttentionBlock::forward_all_rows(&self.transformer, &xs, 1 + g * g, n, &self.scratch)?;
        let latents = self.ln_post.forward(&latents)?;
        // Legacy checkpoints were trained with a reshape where a transpose was meant: the (N, D) matrix of each
        // image is read as (D, N), so the 1x1 conv mixes across tokens. It must be kept to match their weights.
        let latents = if self.is_legacy { latents.reshape((b, d, n))?.transpose(1, 2)? } else { latents };
        let z = linear_forward(&self.conv_out, &latents.contiguous()?)?; // (B, N, token_size)
        z.transpose(1, 2)?.reshape((b, self.token_size, 1, n))
    }
}
