//! The discriminator's layers: TF-"same" convolutions, the anti-aliasing blur that downsamples, GroupNorm and
//! LeakyReLU, all from candle's differentiable ops (the discriminator is trained).

use candle_core::{Tensor, Var};
use candle_nn::VarBuilder;

use crate::error::Result;
use crate::nn::{param, NormActivation, ParamInit};
use crate::shape_mismatch;

/// Hands out the layers' parameters: as the checkpoint's tensors, or as fresh [`Var`]s holding them (listed in
/// construction order, which is the reference's `named_parameters()` order) when the model is to be trained.
#[derive(Debug, Default)]
pub struct Params {
    trainable: bool,
    vars: Vec<(String, Var)>,
}

impl Params {
    pub fn frozen() -> Self {
        Self::default()
    }

    pub fn trainable() -> Self {
        Self { trainable: true, vars: Vec::new() }
    }

    pub fn into_vars(self) -> Vec<(String, Var)> {
        self.vars
    }

    /// The parameter `name`, declaring `init` (what a fresh discriminator starts from).
    fn get(&mut self, vb: &VarBuilder, shape: &[usize], name: &str, init: ParamInit) -> Result<Tensor> {
        let t = param(vb, shape, name, init)?;
        if !self.trainable {
            return Ok(t);
        }
        let var = Var::from_tensor(&t)?;
        let t = var.as_tensor().clone();
        let prefix = vb.prefix();
        let full = if prefix.is_empty() { name.to_string() } else { format!("{prefix}.{name}") };
        self.vars.push((full, var));
        Ok(t)
    }
}

/// TensorFlow "same" padding as the reference's `calc_same_pad`: total = max((ceil(i / s) - 1) s + k - i, 0),
/// the smaller half before, the rest after.
pub fn same_pad(i: usize, k: usize, s: usize) -> (usize, usize) {
    let total = ((i.div_ceil(s) - 1) * s + k).saturating_sub(i);
    (total / 2, total - total / 2)
}

fn pad_same(x: &Tensor, k: usize, s: usize) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let (top, bottom) = same_pad(h, k, s);
    let (left, right) = same_pad(w, k, s);
    Ok(x.pad_with_zeros(2, top, bottom)?.pad_with_zeros(3, left, right)?)
}

/// The reference's `Conv2dSame(c_in, c_out, k)`: stride 1, bias, TF-"same" padding.
#[derive(Debug, Clone)]
pub struct SameConv {
    weight: Tensor,
    bias: Tensor,
    kernel: usize,
}

impl SameConv {
    pub fn new(c_in: usize, c_out: usize, kernel: usize, vb: VarBuilder, params: &mut Params) -> Result<Self> {
        // torch's default init: the reference never re-initialises its discriminator.
        let init = ParamInit::torch_default(c_in * kernel * kernel);
        let weight = params.get(&vb, &[c_out, c_in, kernel, kernel], "weight", init)?;
        let bias = params.get(&vb, &[c_out], "bias", init)?;
        Ok(Self { weight, bias, kernel })
    }

    /// The same weights outside autograd (they share storage, so later updates of the parameters show).
    pub fn detached(&self) -> Self {
        Self { weight: self.weight.detach(), bias: self.bias.detach(), kernel: self.kernel }
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // A gemm backward when training (candle's CPU conv backward is a naive transposed conv), its weight
        // gradient free to round differently from the composed form (no bit-for-bit run covers the discriminator).
        Ok(if self.kernel % 2 == 1 {
            // Odd kernels at stride 1 pad (k - 1) / 2 on every side: the conv's own padding.
            crate::nn::conv2d_fast_grad(x, &self.weight, Some(&self.bias), 1, (self.kernel - 1) / 2)?
        } else {
            crate::nn::conv2d_fast_grad(&pad_same(x, self.kernel, 1)?, &self.weight, Some(&self.bias), 1, 0)?
        })
    }
}

/// The reference's `BlurBlock`: each channel filtered by the fixed normalised binomial kernel (buffer
/// `kernel`, (1, 1, k, k)) at stride 2 after TF-"same" padding (1 pixel each side for k = 4 and even sizes).
#[derive(Debug, Clone)]
pub struct BlurDownsample {
    kernel: Tensor,
    size: usize,
}

/// The blur's buffer for a `size`-tap filter: the outer product of the binomial row (1, 3, 3, 1 for 4 taps, the
/// reference's `BLUR_KERNEL_MAP`) with itself, normalised to sum 1, as (1, 1, size, size). A fresh discriminator
/// takes it from here; a checkpoint stores it.
pub fn blur_kernel(size: usize, device: &candle_core::Device) -> Result<Tensor> {
    let mut row = vec![1f64];
    for _ in 1..size {
        let mut next = vec![1f64; row.len() + 1];
        for i in 1..row.len() {
            next[i] = row[i - 1] + row[i];
        }
        row = next;
    }
    let total: f64 = row.iter().sum::<f64>().powi(2);
    let values: Vec<f32> = row.iter().flat_map(|a| row.iter().map(move |b| (a * b / total) as f32)).collect();
    Ok(Tensor::from_vec(values, (1, 1, size, size), device)?)
}

impl BlurDownsample {
    pub fn new(size: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self { kernel: vb.get((1, 1, size, size), "kernel")?.detach(), size })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let ((top, bottom), (left, right)) = (same_pad(h, self.size, 2), same_pad(w, self.size, 2));
        // Training: one direct-filter node (a product with one output row per map does not run near gemm speed).
        if let Some(y) = crate::nn::shared_filter2d(x, &self.kernel, 2, [top, bottom, left, right])? {
            return Ok(y);
        }
        // Even sides pad the same on every side, which the conv's own zero padding does without a padded copy
        // (and without its backward); odd ones pad once more after.
        let (maps, padding) = if top == bottom && left == right && top == left {
            (x.reshape((b * c, 1, h, w))?, top)
        } else {
            let padded = pad_same(x, self.size, 2)?;
            let (_, _, hp, wp) = padded.dims4()?;
            (padded.reshape((b * c, 1, hp, wp))?, 0)
        };
        // The same filter for every channel: one single-channel conv over B * C maps instead of a grouped conv.
        let y = crate::nn::conv2d(&maps, &self.kernel, None, 2, padding)?;
        let (_, _, ho, wo) = y.dims4()?;
        Ok(y.reshape((b, c, ho, wo))?)
    }
}

/// `nn.GroupNorm(groups, channels)` with torch's default eps 1e-5 (biased variance).
#[derive(Debug, Clone)]
pub struct GroupNorm {
    weight: Tensor,
    bias: Tensor,
    groups: usize,
}

const GROUP_NORM_EPS: f64 = 1e-5;

impl GroupNorm {
    pub fn new(channels: usize, groups: usize, vb: VarBuilder, params: &mut Params) -> Result<Self> {
        if groups == 0 || !channels.is_multiple_of(groups) {
            return Err(crate::invalid!("GroupNorm: {channels} channels do not split into {groups} groups"));
        }
        let weight = params.get(&vb, &[channels], "weight", ParamInit::Ones)?;
        let bias = params.get(&vb, &[channels], "bias", ParamInit::Zeros)?;
        Ok(Self { weight, bias, groups })
    }

    pub fn detached(&self) -> Self {
        Self { weight: self.weight.detach(), bias: self.bias.detach(), groups: self.groups }
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_then(x, NormActivation::None)
    }

    /// `leaky_relu(self.forward(x))`, as one node when training on the CPU (the same values).
    pub fn forward_leaky_relu(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_then(x, NormActivation::LeakyRelu(LEAKY_SLOPE as f32))
    }

    fn forward_then(&self, x: &Tensor, act: NormActivation) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        if c != self.weight.dim(0)? {
            return Err(shape_mismatch!("GroupNorm of {} channels got {:?}", self.weight.dim(0)?, x.dims()));
        }
        if let Some(y) = crate::nn::group_norm(x, &self.weight, &self.bias, self.groups, GROUP_NORM_EPS, act)? {
            return Ok(y);
        }
        let y = self.composed(x, (b, c, h, w))?;
        match act {
            NormActivation::None => Ok(y),
            _ => leaky_relu(&y),
        }
    }

    /// candle-nn's form, for inference and other devices.
    fn composed(&self, x: &Tensor, (b, c, h, w): (usize, usize, usize, usize)) -> Result<Tensor> {
        let g = x.reshape((b, self.groups, (c / self.groups) * h * w))?;
        let centered = g.broadcast_sub(&g.mean_keepdim(2)?)?;
        let var = centered.sqr()?.mean_keepdim(2)?;
        let normed = centered.broadcast_div(&(var + GROUP_NORM_EPS)?.sqrt()?)?.reshape((b, c, h, w))?;
        Ok(normed
            .broadcast_mul(&self.weight.reshape((1, c, 1, 1))?)?
            .broadcast_add(&self.bias.reshape((1, c, 1, 1))?)?)
    }
}

/// The reference's LeakyReLU slope.
const LEAKY_SLOPE: f64 = 0.1;

/// `LeakyReLU(0.1)`: x where x > 0, else 0.1 x (the larger of the two).
pub fn leaky_relu(x: &Tensor) -> Result<Tensor> {
    Ok(crate::nn::leaky_relu(x, LEAKY_SLOPE)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_padding_follows_the_tensorflow_rule() {
        // Stride 1, odd kernels: (k - 1) / 2 each side; the blur's 4x4 stride 2 on even sizes: one pixel each side.
        assert_eq!(same_pad(256, 5, 1), (2, 2));
        assert_eq!(same_pad(256, 1, 1), (0, 0));
        assert_eq!(same_pad(256, 4, 2), (1, 1));
        assert_eq!(same_pad(33, 4, 2), (1, 2));
        assert_eq!(same_pad(7, 4, 1), (1, 2));
    }
}
