//! torchvision's `BasicConv2d`: convolution without bias, BatchNorm (eps 0.001) in eval mode, ReLU. The norm is
//! folded into the convolution when the weights are read: `w · γ/√(σ² + ε)` and bias `β − μ · γ/√(σ² + ε)`, one
//! convolution per layer at inference (PyTorch's eval BatchNorm applies the same affine map after the conv).

use candle_core::{DType, Module, Tensor};
use candle_nn::VarBuilder;

use crate::error::Result;

/// torchvision's `nn.BatchNorm2d(out_channels, eps=0.001)` in BasicConv2d.
const BN_EPS: f64 = 1e-3;

/// Kernel, stride and zero padding per axis, (height, width).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConvShape {
    pub kernel: (usize, usize),
    pub stride: usize,
    pub padding: (usize, usize),
}

impl ConvShape {
    pub const fn square(kernel: usize, stride: usize, padding: usize) -> Self {
        ConvShape { kernel: (kernel, kernel), stride, padding: (padding, padding) }
    }

    /// A 1x1 convolution.
    pub const fn pointwise() -> Self {
        Self::square(1, 1, 0)
    }

    /// A 1xk (`horizontal`) or kx1 kernel padded to keep the size, as the factorised 7x7 and 3x3 branches use.
    pub const fn line(k: usize, horizontal: bool) -> Self {
        let (kernel, padding) = if horizontal { ((1, k), (0, k / 2)) } else { ((k, 1), (k / 2, 0)) };
        ConvShape { kernel, stride: 1, padding }
    }
}

#[derive(Debug, Clone)]
pub struct BasicConv2d {
    weight: Tensor,
    bias: Tensor,
    shape: ConvShape,
}

impl BasicConv2d {
    /// Reads `conv.weight` and `bn.{weight,bias,running_mean,running_var}` (and `bn.num_batches_tracked` when the
    /// file holds it: PyTorch writes it, the eval forward never reads it).
    pub fn new(in_channels: usize, out_channels: usize, shape: ConvShape, vb: VarBuilder) -> Result<Self> {
        let (kh, kw) = shape.kernel;
        let weight = vb.pp("conv").get((out_channels, in_channels, kh, kw), "weight")?;
        let bn = vb.pp("bn");
        let gamma = bn.get(out_channels, "weight")?;
        let beta = bn.get(out_channels, "bias")?;
        let mean = bn.get(out_channels, "running_mean")?;
        let var = bn.get(out_channels, "running_var")?;
        if bn.contains_tensor("num_batches_tracked") {
            bn.get_unchecked_dtype("num_batches_tracked", DType::I64)?;
        }
        let scale = (gamma / (var + BN_EPS)?.sqrt()?)?;
        let bias = (beta - (mean * &scale)?)?;
        let weight = weight.broadcast_mul(&scale.reshape((out_channels, 1, 1, 1))?)?;
        Ok(BasicConv2d { weight, bias: bias.reshape((1, out_channels, 1, 1))?, shape })
    }
}

impl Module for BasicConv2d {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (ph, pw) = self.shape.padding;
        // candle pads both axes alike; the factorised kernels pad one axis only, so padding is explicit there.
        let (x, padding) = if ph == pw { (x.clone(), ph) } else { (x.pad_with_zeros(2, ph, ph)?.pad_with_zeros(3, pw, pw)?, 0) };
        x.conv2d(&self.weight, padding, self.shape.stride, 1, 1)?.broadcast_add(&self.bias)?.relu()
    }
}
