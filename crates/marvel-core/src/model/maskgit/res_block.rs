//! The VQGAN residual block: GN -> SiLU -> conv3x3 -> GN -> SiLU -> conv3x3, convs without bias.

use candle_core::Tensor;
use candle_nn::VarBuilder;

use super::conv::SameConv2d;
use super::norm::GroupNorm;
use crate::error::Result;

#[derive(Debug, Clone)]
pub struct ResBlock {
    norm1: GroupNorm,
    conv1: SameConv2d,
    norm2: GroupNorm,
    conv2: SameConv2d,
    /// Present when the block changes the channel count. Unlike the usual VQGAN block, the reference applies
    /// it to the block's *output* (`residual = nin_shortcut(hidden_states)`), so the input is then dropped.
    nin_shortcut: Option<SameConv2d>,
}

impl ResBlock {
    pub fn new(c_in: usize, c_out: usize, groups: usize, vb: VarBuilder) -> Result<Self> {
        let nin_shortcut =
            if c_in != c_out { Some(SameConv2d::new(c_out, c_out, 1, false, vb.pp("nin_shortcut"))?) } else { None };
        Ok(Self {
            norm1: GroupNorm::new(c_in, groups, vb.pp("norm1"))?,
            conv1: SameConv2d::new(c_in, c_out, 3, false, vb.pp("conv1"))?,
            norm2: GroupNorm::new(c_out, groups, vb.pp("norm2"))?,
            conv2: SameConv2d::new(c_out, c_out, 3, false, vb.pp("conv2"))?,
            nin_shortcut,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.conv1.forward(&self.norm1.forward_silu(x)?)?;
        let h = self.conv2.forward(&self.norm2.forward_silu(&h)?)?;
        let residual = match &self.nin_shortcut {
            Some(nin) => nin.forward(&h)?,
            None => x.clone(),
        };
        Ok((h + residual)?)
    }
}
