//! Transformer building blocks shared by the TiTok encoder and decoder, loaded from PyTorch state-dict names.
//!
//! Inference and training share these layers. The fast kernels record no backward pass: our own (`fused`, for a
//! stack of transformer blocks, layer norm and softmax on f32 CPU data, built on the `kernels` layer) and candle's
//! (`layer_norm`, `softmax_last_dim`) elsewhere. So each layer checks whether the computation is being tracked
//! for gradients (`kernels::tracked`) and falls back to composed, differentiable ops then.

mod attention;
mod block;
mod conv2d;
mod fused;
pub mod kernels;
mod layer_norm;
mod mlp;
pub(crate) mod ops;
pub mod param_init;

pub use attention::MultiheadAttention;
pub use block::ResidualAttentionBlock;
pub use conv2d::{
    conv2d, conv2d_fast_grad, conv2d_im2col, upsample2x_conv2d, upsample2x_conv2d_fast_grad, upsample2x_conv2d_im2col,
};
pub use fused::BlockScratch;
pub(crate) use fused::F32Data;
pub use layer_norm::{LayerNorm, LAYER_NORM_EPS};
pub use mlp::Mlp;
pub use param_init::{linear, param, ParamInit, TRUNC_NORMAL_002};

pub(crate) use ops::scratch;
pub(crate) use ops::Activation as NormActivation;

use candle_core::{Result, Tensor, D};

/// Frees the working buffers the CPU training ops keep between calls (see `ops/scratch.rs`): for when training
/// stops.
pub(crate) fn release_training_buffers() {
    ops::release_scratch();
}

/// Every (B, C) map of `x` (B, C, H, W) filtered by the same `kernel` (1, 1, k, k) at `stride` after zero padding
/// `pad` (top, bottom, left, right), when training on the CPU: one node whose backward is the input's gradient
/// only (the filter is a constant; see `ops/filter.rs`). None where that op does not serve: the caller composes
/// the filter from differentiable ops then.
pub(crate) fn shared_filter2d(x: &Tensor, kernel: &Tensor, stride: usize, pad: [usize; 4]) -> Result<Option<Tensor>> {
    if trains_on_cpu(&[x]) && ops::serve(&[kernel]) && !kernels::tracked(&[kernel]) {
        let taps = kernel.flatten_all()?.to_vec1::<f32>()?;
        return Ok(Some(ops::shared_filter2d(x, &taps, stride, pad)?));
    }
    Ok(None)
}

/// torch's `GroupNorm` of `x` (B, C, ...) over `groups` groups with a per-channel affine, then `act`, when
/// training on the CPU: one node, its backward computing only the gradients asked for (see `ops/group_norm.rs`).
/// None where that op does not serve: the caller composes it from differentiable ops then.
pub(crate) fn group_norm(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    groups: usize,
    eps: f64,
    act: NormActivation,
) -> Result<Option<Tensor>> {
    if trains_on_cpu(&[x, weight, bias]) {
        return Ok(Some(ops::group_norm(x, weight, bias, groups, eps, act)?));
    }
    Ok(None)
}

/// True when the CPU training ops take this computation: something in it is tracked for gradients, and every
/// tensor is f32 on the CPU.
fn trains_on_cpu(tensors: &[&Tensor]) -> bool {
    kernels::tracked(tensors) && ops::serve(tensors)
}

/// A linear layer on `xs` (..., in): one product over all rows, with a gemm-only backward, when training on the
/// CPU; at inference on contiguous f32 CPU data the fused path's product (`fused::linear`); candle's `Linear`
/// otherwise.
pub fn linear_forward(layer: &candle_nn::Linear, xs: &Tensor) -> Result<Tensor> {
    if let Some(bias) = layer.bias() {
        if trains_on_cpu(&[xs, layer.weight(), bias]) {
            return ops::linear(xs, layer.weight(), bias);
        }
        if let Some(ys) = fused::linear(xs, layer.weight(), bias, fused::Then::Nothing)? {
            return Ok(ys);
        }
    }
    candle_core::Module::forward(layer, xs)
}

/// `tanh(layer(xs))`, TiTok's legacy head between its two 1x1 convolutions: at inference on the CPU the tanh runs
/// vectorised (`kernels::math::tanh`, within 2 ulp) in one parallel pass over the product, else candle's.
pub fn linear_tanh_forward(layer: &candle_nn::Linear, xs: &Tensor) -> Result<Tensor> {
    if let Some(bias) = layer.bias() {
        if !trains_on_cpu(&[xs, layer.weight(), bias]) {
            if let Some(ys) = fused::linear(xs, layer.weight(), bias, fused::Then::Tanh)? {
                return Ok(ys);
            }
        }
    }
    linear_forward(layer, xs)?.tanh()
}

/// `gelu(layer(xs))` with torch's exact (erf) GELU: one node (`ops::linear_gelu`, a vectorised GELU and only the
/// gradients asked for) when training on the CPU; candle's `Linear` and `gelu_erf` (libm's `erff` per value, the
/// backward composed of ~10 tensor ops) otherwise.
pub fn linear_gelu_forward(layer: &candle_nn::Linear, xs: &Tensor) -> Result<Tensor> {
    if let Some(bias) = layer.bias() {
        if trains_on_cpu(&[xs, layer.weight(), bias]) {
            return ops::linear_gelu(xs, layer.weight(), bias);
        }
    }
    candle_core::Module::forward(layer, xs)?.gelu_erf()
}

/// LeakyReLU, `max(x, slope·x)`: one node with a one-pass backward when training on the CPU (the same values
/// as the composed form, see `ops/leaky_relu.rs`), candle's composed ops otherwise.
pub fn leaky_relu(xs: &Tensor, slope: f64) -> Result<Tensor> {
    if trains_on_cpu(&[xs]) {
        return ops::leaky_relu(xs, slope);
    }
    xs.maximum(&(xs * slope)?)
}

/// Softmax over the last dimension: candle's fused kernel for inference, the composed (differentiable) form
/// when gradients are tracked.
pub fn softmax_last_dim(xs: &Tensor) -> Result<Tensor> {
    if kernels::tracked(&[xs]) {
        return candle_nn::ops::softmax(xs, D::Minus1);
    }
    let xs = xs.contiguous()?;
    if let Some(data) = fused::F32Data::of(&xs) {
        // candle's kernel calls libm's exp per element; this one is vectorised.
        let mut out = data.get().to_vec();
        fused::softmax_rows(&mut out, xs.dim(D::Minus1)?);
        return Tensor::from_vec(out, xs.shape(), xs.device());
    }
    candle_nn::ops::softmax_last_dim(&xs)
}

/// A 1x1 convolution's weight `(out, in, 1, 1)` as a linear layer's `(out, in)`: on channels-last data the two
/// are the same product, and the matmul avoids candle's im2col.
pub fn conv1x1_as_linear(out_ch: usize, in_ch: usize, vb: candle_nn::VarBuilder) -> Result<candle_nn::Linear> {
    let weight = param(&vb, (out_ch, in_ch, 1, 1), "weight", TRUNC_NORMAL_002)?.squeeze(3)?.squeeze(2)?;
    let bias = param(&vb, out_ch, "bias", ParamInit::Zeros)?;
    Ok(candle_nn::Linear::new(weight, Some(bias)))
}

#[cfg(test)]
mod tests {
    /// Lower layers know less: every layer takes plain sizes, so none reaches for a model's configuration.
    #[test]
    fn layers_do_not_import_the_model_config() {
        let needle = concat!("crate::", "config");
        let sources = [
            ("mod.rs", include_str!("mod.rs")),
            ("attention.rs", include_str!("attention.rs")),
            ("block.rs", include_str!("block.rs")),
            ("conv2d/geometry.rs", include_str!("conv2d/geometry.rs")),
            ("conv2d/mod.rs", include_str!("conv2d/mod.rs")),
            ("fused.rs", include_str!("fused.rs")),
            ("ops/conv_direct.rs", include_str!("ops/conv_direct.rs")),
            ("kernels/math.rs", include_str!("kernels/math.rs")),
            ("kernels/mod.rs", include_str!("kernels/mod.rs")),
            ("kernels/rows.rs", include_str!("kernels/rows.rs")),
            ("kernels/sgemm.rs", include_str!("kernels/sgemm.rs")),
            ("layer_norm.rs", include_str!("layer_norm.rs")),
            ("mlp.rs", include_str!("mlp.rs")),
            ("ops/attention.rs", include_str!("ops/attention.rs")),
            ("ops/layer_norm.rs", include_str!("ops/layer_norm.rs")),
            ("ops/linear.rs", include_str!("ops/linear.rs")),
            ("ops/mod.rs", include_str!("ops/mod.rs")),
            ("param_init.rs", include_str!("param_init.rs")),
        ];
        for (file, source) in sources {
            assert!(!source.contains(needle), "nn/{file} uses {needle}");
        }
    }
}
