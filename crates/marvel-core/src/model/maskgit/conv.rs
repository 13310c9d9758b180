//! The VQGAN's convolutions: stride 1 with TF-"same" padding ((k - 1) / 2 zeros each side for the odd kernels
//! used here), optionally reading the input through a nearest x2 upsampling.
//!
//! On the CPU the 3x3 ones, nearly all of the model's work, run as Winograd F(2x2, 3x3) (see `winograd.rs`):
//! candle's conv2d (tiled im2col + gemm) reaches about 40% of the speed of a bare gemm of the same size here,
//! and Winograd also needs 2.25x fewer multiplies. Its transformed weights are kept between calls (16/9 of the
//! 3x3 weights' size) and recomputed whenever the weights' values change (`winograd_cache.rs`). Other devices and
//! dtypes use candle's conv2d, and tensors under autograd the convolution whose backward is matmuls.

use std::sync::Arc;

use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;

use super::pass::Act;
use super::winograd::{Conv3x3, Winograd3x3, BAND_VALUES};
use super::winograd_cache::WinogradCache;
use crate::error::Result;
use crate::nn::{param, ParamInit};

#[derive(Debug, Clone)]
pub struct SameConv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    kernel: usize,
    /// Winograd-transformed weights, shared by clones.
    winograd: Arc<WinogradCache>,
}

impl SameConv2d {
    pub fn new(c_in: usize, c_out: usize, kernel: usize, with_bias: bool, vb: VarBuilder) -> Result<Self> {
        // torch's default init: the reference never re-initialises the MaskGIT networks.
        let init = ParamInit::torch_default(c_in * kernel * kernel);
        let weight = param(&vb, (c_out, c_in, kernel, kernel), "weight", init)?;
        let bias = if with_bias { Some(param(&vb, c_out, "bias", init)?) } else { None };
        Ok(Self::from_weight(weight, bias))
    }

    /// From a `[c_out, c_in, k, k]` weight (k odd) already at hand.
    pub fn from_weight(weight: Tensor, bias: Option<Tensor>) -> Self {
        let kernel = weight.dims().last().copied().unwrap_or(1);
        debug_assert!(kernel % 2 == 1, "TF-same padding is symmetric only for odd kernels at stride 1");
        Self { weight, bias, kernel, winograd: Arc::default() }
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.run(x, false)
    }

    /// conv(nearest_upsample_x2(x)), as the decoder's `upsample_conv` after `F.interpolate(scale_factor=2)`.
    pub fn forward_upsampled(&self, x: &Tensor) -> Result<Tensor> {
        self.run(x, true)
    }

    /// (c_in, c_out).
    pub(super) fn channels(&self) -> (usize, usize) {
        let dims = self.weight.dims();
        (dims[1], dims[0])
    }

    /// Whether [`Self::run_into`] serves: a 3x3 or 1x1 kernel, f32 weights on the CPU, outside autograd.
    pub(super) fn plain(&self) -> bool {
        let f32_cpu = |t: &Tensor| t.device().is_cpu() && t.dtype() == DType::F32;
        (self.kernel == 3 || self.kernel == 1)
            && f32_cpu(&self.weight)
            && self.bias.as_ref().is_none_or(f32_cpu)
            && !crate::nn::kernels::tracked(&[&self.weight])
            && !self.bias.as_ref().is_some_and(|b| crate::nn::kernels::tracked(&[b]))
    }

    /// `out` <- conv(x) (of the x2 upsampled `x` when `upsample`; 3x3 kernels only) + `residual`: the CPU path on
    /// the decoder pass's buffers (see [`Self::plain`]).
    pub(super) fn run_into(&self, x: &Act, upsample: bool, residual: Option<&[f32]>, out: &mut Act) -> Result<()> {
        let (batch, c, h, w) = x.dims;
        let (c_in, c_out) = self.channels();
        let up = if upsample { 2 } else { 1 };
        if c != c_in || out.dims != (batch, c_out, h * up, w * up) || (upsample && self.kernel != 3) {
            return Err(crate::shape_mismatch!(
                "conv [{c_out}, {c_in}, {k}, {k}] (upsample {upsample}) from {:?} into {:?}",
                x.dims,
                out.dims,
                k = self.kernel
            ));
        }
        let bias = match &self.bias {
            Some(b) => Some(b.to_vec1::<f32>()?),
            None => None,
        };
        if self.kernel == 3 {
            let u = self.winograd.transformed(&self.weight)?;
            let (guard, layout) = u.storage_and_layout();
            let (candle_core::Storage::Cpu(storage), Some((start, end))) = (&*guard, layout.contiguous_offsets())
            else {
                return Err(crate::invalid!("conv: transformed weights not contiguous on the CPU"));
            };
            let conv = Conv3x3 {
                u: &storage.as_slice::<f32>()?[start..end],
                c_out,
                c_in,
                bias: bias.as_deref(),
                upsample,
                band_values: BAND_VALUES,
            };
            conv.run(x.values(), batch, h, w, residual, out.values_mut());
        } else {
            let weight = self.weight.flatten_all()?.to_vec1::<f32>()?;
            pointwise(&weight, bias.as_deref(), x.values(), residual, out.values_mut(), c_in, c_out, h * w);
        }
        Ok(())
    }

    fn run(&self, x: &Tensor, upsample: bool) -> Result<Tensor> {
        let (_, c_in, _, _) = x.dims4()?;
        let want = self.weight.dim(1)?;
        if c_in != want {
            return Err(crate::shape_mismatch!(
                "conv expects {want} input channels, got a tensor of shape {:?}",
                x.dims()
            ));
        }
        let fast = self.kernel == 3
            && x.device().is_cpu()
            && x.dtype() == DType::F32
            && self.weight.dtype() == DType::F32
            && !crate::nn::kernels::tracked(&[x, &self.weight])
            && !self.bias.as_ref().is_some_and(|b| crate::nn::kernels::tracked(&[b]));
        if fast {
            let u = self.winograd.transformed(&self.weight)?;
            let bias = match &self.bias {
                Some(b) => Some(b.to_vec1::<f32>()?),
                None => None,
            };
            return Ok(x.contiguous()?.apply_op1_no_bwd(&Winograd3x3::new(&u, bias, upsample))?);
        }
        let padding = (self.kernel - 1) / 2;
        // Training (stage 2's pixel decoder): no bit-for-bit run covers it, so the faster weight gradient.
        Ok(if upsample {
            crate::nn::upsample2x_conv2d_fast_grad(x, &self.weight, self.bias.as_ref(), padding)?
        } else {
            crate::nn::conv2d_fast_grad(x, &self.weight, self.bias.as_ref(), 1, padding)?
        })
    }
}

/// out (batch, c_out, n) <- W x (+ bias) (+ residual) for x (batch, c_in, n), W (c_out, c_in): a 1x1 convolution.
#[allow(clippy::too_many_arguments)]
fn pointwise(
    weight: &[f32],
    bias: Option<&[f32]>,
    x: &[f32],
    residual: Option<&[f32]>,
    out: &mut [f32],
    c_in: usize,
    c_out: usize,
    n: usize,
) {
    assert!(weight.len() == c_out * c_in && x.len().is_multiple_of((c_in * n).max(1)), "pointwise: sizes");
    assert!(out.len() == x.len() / c_in.max(1) * c_out && residual.is_none_or(|r| r.len() == out.len()));
    let threads = rayon::current_num_threads();
    let parallelism = if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
    for (b, y) in out.chunks_mut(c_out * n).enumerate() {
        // The residual first, then the product accumulated onto it: one rounding, as a separate add would make.
        if let Some(r) = residual {
            y.copy_from_slice(&r[b * c_out * n..(b + 1) * c_out * n]);
        }
        // SAFETY: W is (c_out, c_in) row-major, x's image b (c_in, n) and y (c_out, n), as asserted above; y is
        // borrowed mutably and does not overlap x or W.
        unsafe {
            gemm::gemm(
                c_out,
                n,
                c_in,
                y.as_mut_ptr(),
                1,
                n as isize,
                residual.is_some(),
                weight.as_ptr(),
                1,
                c_in as isize,
                x.as_ptr().add(b * c_in * n),
                1,
                n as isize,
                if residual.is_some() { 1.0 } else { 0.0 },
                1.0,
                false,
                false,
                false,
                parallelism,
            )
        }
        if let Some(bias) = bias {
            for (row, &b) in y.chunks_mut(n).zip(bias) {
                row.iter_mut().for_each(|v| *v += b);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    /// A model built from a training run's detached variables shares their storage: when the optimizer
    /// overwrites a weight, the next forward uses the new values, not the transform kept from the old ones.
    #[test]
    fn the_kept_transform_follows_the_weights() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1., (1, 5, 6, 7), &dev).unwrap();
        let var = candle_core::Var::from_tensor(&Tensor::randn(0f32, 1., (4, 5, 3, 3), &dev).unwrap()).unwrap();
        let conv = SameConv2d::from_weight(var.as_detached_tensor(), None);
        let before = conv.forward(&x).unwrap();
        assert!(diff(&before, &x.conv2d(var.as_tensor(), 1, 1, 1, 1).unwrap()) < 2e-5);
        var.set(&Tensor::randn(0f32, 1., (4, 5, 3, 3), &dev).unwrap()).unwrap();
        let after = conv.forward(&x).unwrap();
        assert!(diff(&after, &x.conv2d(var.as_tensor(), 1, 1, 1, 1).unwrap()) < 2e-5);
        assert!(diff(&after, &before) > 0.1);
        // The upsampled entry shares the cache and sees the same values.
        let up = x.upsample_nearest2d(12, 14).unwrap();
        assert!(diff(&conv.forward_upsampled(&x).unwrap(), &up.conv2d(var.as_tensor(), 1, 1, 1, 1).unwrap()) < 2e-5);
    }

    /// Weights that are variables (training) take the differentiable path, so the weight gets its gradient.
    #[test]
    fn variable_weights_take_the_differentiable_path() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1., (1, 3, 5, 5), &dev).unwrap();
        let var = candle_core::Var::from_tensor(&Tensor::randn(0f32, 1., (2, 3, 3, 3), &dev).unwrap()).unwrap();
        let conv = SameConv2d::from_weight(var.as_tensor().clone(), None);
        let grads = conv.forward(&x).unwrap().sum_all().unwrap().backward().unwrap();
        let g = grads.get(var.as_tensor()).expect("a gradient for the weight");
        // d(sum y)/dw[o, c, i, j] is the sum of the input window (i, j) shifted: the same for every output o.
        let want = x.pad_with_zeros(2, 1, 1).unwrap().pad_with_zeros(3, 1, 1).unwrap();
        for (i, j) in [(0, 0), (1, 2), (2, 1)] {
            let s = want.narrow(2, i, 5).unwrap().narrow(3, j, 5).unwrap().sum((0, 2, 3)).unwrap();
            let got = g.narrow(2, i, 1).unwrap().narrow(3, j, 1).unwrap().squeeze(3).unwrap().squeeze(2).unwrap();
            for o in 0..2 {
                assert!(diff(&got.get(o).unwrap(), &s) < 1e-4);
            }
        }
    }

    /// The decoder pass's entry: 3x3 (plain and upsampled) and 1x1, with bias and residual, on buffers longer
    /// than the activations.
    #[test]
    fn run_into_matches_candle_conv2d_plus_residual() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1., (2, 5, 7, 6), &dev).unwrap();
        let act = |t: &Tensor, spare: usize| {
            let mut v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            v.resize(v.len() + spare, f32::NAN);
            Act::new(v, t.dims4().unwrap())
        };
        let to_tensor = |a: Act| {
            let dims = a.dims;
            Tensor::from_vec(a.into_values(), dims, &Device::Cpu).unwrap()
        };
        for (k, upsample) in [(3, false), (3, true), (1, false)] {
            let weight = Tensor::randn(0f32, 1., (4, 5, k, k), &dev).unwrap();
            let bias = Tensor::randn(0f32, 1., 4, &dev).unwrap();
            let conv = SameConv2d::from_weight(weight.clone(), Some(bias.clone()));
            assert!(conv.plain());
            let xin = if upsample { x.upsample_nearest2d(14, 12).unwrap() } else { x.clone() };
            let pad = (k - 1) / 2;
            let want = xin.conv2d(&weight, pad, 1, 1, 1).unwrap().broadcast_add(&bias.reshape((1, 4, 1, 1)).unwrap());
            let want = want.unwrap();
            let residual = Tensor::randn(0f32, 1., want.dims(), &dev).unwrap();
            let res = residual.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let mut out = act(&Tensor::zeros(want.dims(), DType::F32, &dev).unwrap(), 7);
            conv.run_into(&act(&x, 3), upsample, Some(&res), &mut out).unwrap();
            let err = diff(&to_tensor(out), &(&want + &residual).unwrap());
            assert!(err < 2e-5, "{k}x{k} upsample {upsample}: {err}");
        }
        let conv = SameConv2d::from_weight(Tensor::randn(0f32, 1., (4, 5, 1, 1), &dev).unwrap(), None);
        let mut out = act(&Tensor::zeros((2, 4, 14, 12), DType::F32, &dev).unwrap(), 0);
        assert!(conv.run_into(&act(&x, 0), true, None, &mut out).is_err(), "no upsampled 1x1");
        let mut out = act(&Tensor::zeros((2, 3, 7, 6), DType::F32, &dev).unwrap(), 0);
        assert_eq!(conv.run_into(&act(&x, 0), false, None, &mut out).unwrap_err().code(), "MARVEL_SHAPE_MISMATCH");
    }

    #[test]
    fn cpu_path_matches_candle_conv2d() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1., (2, 5, 7, 6), &dev).unwrap();
        let weight = Tensor::randn(0f32, 1., (4, 5, 3, 3), &dev).unwrap();
        let bias = Tensor::randn(0f32, 1., 4, &dev).unwrap();
        let b4 = bias.reshape((1, 4, 1, 1)).unwrap();
        let conv = SameConv2d::from_weight(weight.clone(), Some(bias.clone()));
        let want = x.conv2d(&weight, 1, 1, 1, 1).unwrap().broadcast_add(&b4).unwrap();
        assert!(diff(&conv.forward(&x).unwrap(), &want) < 2e-5);
        // Twice: the second call uses the kept transformed weights.
        assert!(diff(&conv.forward(&x).unwrap(), &want) < 2e-5);

        let up = x.upsample_nearest2d(14, 12).unwrap();
        let want = up.conv2d(&weight, 1, 1, 1, 1).unwrap().broadcast_add(&b4).unwrap();
        let got = conv.forward_upsampled(&x).unwrap();
        assert_eq!(got.dims(), &[2, 4, 14, 12]);
        assert!(diff(&got, &want) < 2e-5);

        // A 1x1 conv and a strided input take candle's path or a copy, with the same result.
        let nin = SameConv2d::from_weight(Tensor::randn(0f32, 1., (3, 5, 1, 1), &dev).unwrap(), None);
        let xt = x.transpose(2, 3).unwrap();
        let want = xt.contiguous().unwrap().conv2d(&nin.weight, 0, 1, 1, 1).unwrap();
        assert!(diff(&nin.forward(&xt).unwrap(), &want) < 1e-5);
        let no_bias = SameConv2d::from_weight(weight.clone(), None);
        let want = xt.contiguous().unwrap().conv2d(&weight, 1, 1, 1, 1).unwrap();
        assert!(diff(&no_bias.forward(&xt).unwrap(), &want) < 2e-5);
        assert_eq!(no_bias.forward(&x.narrow(1, 0, 3).unwrap()).unwrap_err().code(), "MARVEL_SHAPE_MISMATCH");
    }
}
