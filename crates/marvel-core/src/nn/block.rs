//! The pre-LayerNorm residual transformer block of open_clip, as TiTok uses it:
//! x + attn(ln_1(x)), then + mlp(ln_2(x)).

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::LAYER_NORM_EPS;
use super::{LayerNorm, Mlp, MultiheadAttention};
use crate::config::VitConfig;

#[derive(Debug, Clone)]
pub struct ResidualAttentionBlock {
    ln_1: LayerNorm,
    attn: MultiheadAttention,
    ln_2: LayerNorm,
    mlp: Mlp,
}

impl ResidualAttentionBlock {
    pub fn new(cfg: &VitConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.width;
        Ok(Self {
            ln_1: LayerNorm::new(d, LAYER_NORM_EPS, vb.pp("ln_1"))?,
            attn: MultiheadAttention::new(d, cfg.num_heads, vb.pp("attn"))?,
            ln_2: LayerNorm::new(d, LAYER_NORM_EPS, vb.pp("ln_2"))?,
            mlp: Mlp::new(d, cfg.mlp_width(), vb.pp("mlp"))?,
        })
    }
}

impl Module for ResidualAttentionBlock {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let xs = (xs + self.attn.forward(&self.ln_1.forward(xs)?)?)?;
        &xs + self.mlp.forward(&self.ln_2.forward(&xs)?)?
    }
}
