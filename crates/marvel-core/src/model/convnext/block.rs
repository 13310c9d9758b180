//! torchvision's `CNBlock`: depthwise 7x7 conv -> channels-last LayerNorm -> Linear(C, 4C) -> GELU (exact, erf)
//! -> Linear(4C, C) -> times `layer_scale` -> plus the block input. Stochastic depth is the identity in eval mode,
//! the only mode the perceptual loss runs the network in.

use candle_core::Tensor;
use candle_nn::{Linear, VarBuilder};

use super::depthwise::DepthwiseConv;
use super::norm::ChannelNorm;
use crate::error::Result;

#[derive(Debug, Clone)]
pub struct CnBlock {
    dw_weight: Tensor,
    dw_bias: Tensor,
    /// The CPU path for constant weights (see `depthwise.rs`).
    dw_cpu: DepthwiseConv,
    norm: ChannelNorm,
    fc1: Linear,
    fc2: Linear,
    /// (C, 1, 1)
    layer_scale: Tensor,
    channels: usize,
}

impl CnBlock {
    /// `vb` at `features.{i}.{j}`; torchvision's `block` Sequential numbers the layers 0 (conv), 2 (norm),
    /// 3 and 5 (linears); 1 and 6 are the permutes, 4 the GELU.
    pub fn new(channels: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let b = vb.pp("block");
        let dw_weight = b.pp("0").get((channels, 1, 7, 7), "weight")?;
        Ok(Self {
            dw_cpu: DepthwiseConv::new(&dw_weight)?,
            dw_weight,
            dw_bias: b.pp("0").get(channels, "bias")?,
            norm: ChannelNorm::new(channels, eps, b.pp("2"))?,
            fc1: candle_nn::linear(channels, 4 * channels, b.pp("3"))?,
            fc2: candle_nn::linear(4 * channels, channels, b.pp("5"))?,
            layer_scale: vb.get((channels, 1, 1), "layer_scale")?,
            channels,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let c = self.channels;
        let h = if DepthwiseConv::applies(x, &self.dw_weight) {
            self.dw_cpu.forward(x)?
        } else {
            x.conv2d(&self.dw_weight, 3, 1, 1, c)?
        };
        let h = h.broadcast_add(&self.dw_bias.reshape((1, c, 1, 1))?)?;
        let h = h.permute((0, 2, 3, 1))?.contiguous()?;
        let h = self.norm.forward_last(&h)?;
        // Under autograd (the perceptual loss's backward into the reconstruction) the training ops' nodes.
        let h = crate::nn::linear_forward(&self.fc2, &crate::nn::linear_gelu_forward(&self.fc1, &h)?)?;
        let h = h.permute((0, 3, 1, 2))?.broadcast_mul(&self.layer_scale)?;
        Ok((x + h)?)
    }
}
