//! The two LayerNorms of torchvision's ConvNeXt: `nn.LayerNorm` on channels-last tensors (inside a CNBlock) and
//! `LayerNorm2d`, which normalises an NCHW tensor over its channels at each position (torchvision permutes to
//! NHWC, calls `F.layer_norm` and permutes back; normalising dim 1 in place is the same arithmetic).
//!
//! Built from candle's elementary ops so that the backward pass reaches the input: the perceptual loss
//! differentiates through the frozen network into the reconstruction.

use candle_core::{Tensor, D};
use candle_nn::VarBuilder;

use crate::error::Result;

#[derive(Debug, Clone)]
pub struct ChannelNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl ChannelNorm {
    pub fn new(channels: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self { weight: vb.get(channels, "weight")?, bias: vb.get(channels, "bias")?, eps })
    }

    /// `nn.LayerNorm(C)` on a channels-last tensor (..., C). Biased variance, as torch.
    pub fn forward_last(&self, x: &Tensor) -> Result<Tensor> {
        let normed = normalize(x, D::Minus1, self.eps)?;
        Ok(normed.broadcast_mul(&self.weight)?.broadcast_add(&self.bias)?)
    }

    /// `LayerNorm2d` on an NCHW tensor: over the channels at each position.
    pub fn forward_nchw(&self, x: &Tensor) -> Result<Tensor> {
        let normed = normalize(x, D::Minus(x.rank() - 1), self.eps)?;
        let c = self.weight.dim(0)?;
        Ok(normed.broadcast_mul(&self.weight.reshape((1, c, 1, 1))?)?.broadcast_add(&self.bias.reshape((1, c, 1, 1))?)?)
    }
}

fn normalize(x: &Tensor, dim: D, eps: f64) -> Result<Tensor> {
    let centered = x.broadcast_sub(&x.mean_keepdim(dim)?)?;
    let var = centered.sqr()?.mean_keepdim(dim)?;
    Ok(centered.broadcast_div(&(var + eps)?.sqrt()?)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use std::collections::HashMap;

    /// Both layouts give what an f64 hand computation gives, and normalising dim 1 of NCHW equals normalising
    /// the last dim of the NHWC permutation (torchvision's LayerNorm2d).
    #[test]
    fn both_layouts_match_a_hand_computation() {
        let dev = Device::Cpu;
        // Fixed values: a random draw can put three channels nearly equal, where f32 and f64 part by more than 1e-5.
        let values: Vec<f32> = (0..120).map(|i| 0.5 + 2.0 * (i as f32 * 0.737).sin()).collect();
        let x = Tensor::from_vec(values, (2, 3, 4, 5), &dev).unwrap();
        let mut w = HashMap::new();
        w.insert("weight".to_string(), Tensor::new(&[1.5f32, -0.5, 2.0], &dev).unwrap());
        w.insert("bias".to_string(), Tensor::new(&[0.1f32, 0.2, -0.3], &dev).unwrap());
        let norm = ChannelNorm::new(3, 1e-6, VarBuilder::from_tensors(w, DType::F32, &dev)).unwrap();
        let nchw = norm.forward_nchw(&x).unwrap();
        let nhwc = norm.forward_last(&x.permute((0, 2, 3, 1)).unwrap()).unwrap().permute((0, 3, 1, 2)).unwrap();
        let v = x.permute((0, 2, 3, 1)).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let got = nchw.permute((0, 2, 3, 1)).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let (gamma, beta) = ([1.5f64, -0.5, 2.0], [0.1f64, 0.2, -0.3]);
        for (i, px) in v.chunks(3).enumerate() {
            let mean = px.iter().map(|&a| f64::from(a)).sum::<f64>() / 3.0;
            let var = px.iter().map(|&a| (f64::from(a) - mean).powi(2)).sum::<f64>() / 3.0;
            for c in 0..3 {
                let want = (f64::from(px[c]) - mean) / (var + 1e-6).sqrt() * gamma[c] + beta[c];
                assert!((f64::from(got[3 * i + c]) - want).abs() < 1e-5, "position {i} channel {c}");
            }
        }
        let d = (nchw - nhwc).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap();
        assert!(d.to_scalar::<f32>().unwrap() < 1e-6);
    }
}
