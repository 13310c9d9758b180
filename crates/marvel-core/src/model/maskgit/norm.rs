//! GroupNorm (eps 1e-6, affine) followed by SiLU: every GroupNorm of the VQGAN feeds a SiLU, so on the CPU the
//! two run as one pass over memory (candle's ops make several passes: 5x slower at the decoder's last level), two
//! kernels of the `nn::kernels` layer. Other devices, and tensors that take part in autograd, use candle's ops.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};
use candle_nn::VarBuilder;
use rayon::prelude::*;

use crate::error::Result;
use crate::nn::kernels::{self, math::exp};
use crate::nn::{param, NormActivation, ParamInit};

/// The reference's GroupNorm epsilon (`nn.GroupNorm(..., eps=1e-6)`), not torch's default 1e-5.
const EPS: f64 = 1e-6;

#[derive(Debug, Clone)]
pub struct GroupNorm {
    weight: Tensor,
    bias: Tensor,
    groups: usize,
    channels: usize,
}

impl GroupNorm {
    pub fn new(channels: usize, groups: usize, vb: VarBuilder) -> Result<Self> {
        let weight = param(&vb, channels, "weight", ParamInit::Ones)?;
        let bias = param(&vb, channels, "bias", ParamInit::Zeros)?;
        Ok(Self { weight, bias, groups, channels })
    }

    /// GroupNorm then SiLU.
    pub fn forward_silu(&self, x: &Tensor) -> Result<Tensor> {
        self.run(x, true)
    }

    /// Whether [`Self::silu_into`] serves: f32 weights on the CPU, outside autograd.
    pub(super) fn plain(&self) -> bool {
        self.weight.device().is_cpu()
            && self.weight.dtype() == DType::F32
            && self.bias.dtype() == DType::F32
            && !kernels::tracked(&[&self.weight, &self.bias])
    }

    /// `out` <- SiLU(GroupNorm(x)) for `x` (batch, channels, spatial...) contiguous, of `spatial` values per
    /// channel: the fused CPU path on plain slices (see [`Self::plain`]).
    pub(super) fn silu_into(&self, x: &[f32], spatial: usize, out: &mut [f32]) -> Result<()> {
        if !x.len().is_multiple_of(self.channels * spatial.max(1)) || out.len() != x.len() {
            return Err(crate::shape_mismatch!(
                "GroupNorm over {} channels of {spatial} values got {} values into {}",
                self.channels,
                x.len(),
                out.len()
            ));
        }
        let (weight, bias) = (self.weight.to_vec1::<f32>()?, self.bias.to_vec1::<f32>()?);
        group_norm_cpu(x, out, &weight, &bias, self.groups, self.channels, spatial, true);
        Ok(())
    }

    fn run(&self, x: &Tensor, silu: bool) -> Result<Tensor> {
        let dims = x.dims();
        if dims.len() < 3 || dims[1] != self.channels {
            return Err(crate::shape_mismatch!(
                "GroupNorm over {} channels got a tensor of shape {dims:?}",
                self.channels
            ));
        }
        let fast = x.device().is_cpu()
            && x.dtype() == DType::F32
            && self.weight.dtype() == DType::F32
            && !kernels::tracked(&[x, &self.weight, &self.bias]);
        if fast {
            let op = GroupNormSiluCpu {
                weight: self.weight.to_vec1::<f32>()?,
                bias: self.bias.to_vec1::<f32>()?,
                groups: self.groups,
                silu,
            };
            return Ok(x.contiguous()?.apply_op1_no_bwd(&op)?);
        }
        // Training on the CPU: one node, the SiLU in it, instead of candle's composed forms.
        let act = if silu { NormActivation::Silu } else { NormActivation::None };
        if let Some(y) = crate::nn::group_norm(x, &self.weight, &self.bias, self.groups, EPS, act)? {
            return Ok(y);
        }
        let gn = candle_nn::GroupNorm::new(self.weight.clone(), self.bias.clone(), self.channels, self.groups, EPS)?;
        let y = candle_core::Module::forward(&gn, x)?;
        Ok(if silu { candle_nn::ops::silu(&y)? } else { y })
    }
}

struct GroupNormSiluCpu {
    weight: Vec<f32>,
    bias: Vec<f32>,
    groups: usize,
    silu: bool,
}

impl CustomOp1 for GroupNormSiluCpu {
    fn name(&self) -> &'static str {
        "group-norm-silu"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = crate::nn::ops::values(storage, layout, "group-norm-silu")?;
        let dims = layout.dims();
        let spatial: usize = dims[2..].iter().product();
        let mut out = vec![0f32; x.len()];
        group_norm_cpu(x, &mut out, &self.weight, &self.bias, self.groups, dims[1], spatial, self.silu);
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

/// out <- GroupNorm(x) (then SiLU) for x (batch, channels, spatial) contiguous; groups in parallel.
#[allow(clippy::too_many_arguments)]
fn group_norm_cpu(
    x: &[f32],
    out: &mut [f32],
    weight: &[f32],
    bias: &[f32],
    groups: usize,
    channels: usize,
    spatial: usize,
    silu: bool,
) {
    let per_group = channels / groups;
    let group_len = per_group * spatial;
    if group_len == 0 {
        return;
    }
    out.par_chunks_mut(group_len).zip(x.par_chunks(group_len)).enumerate().for_each(|(i, (dst, src))| {
        let (mean, var) = moments(src);
        let rstd = 1.0 / (var + EPS).sqrt();
        let first = (i % groups) * per_group;
        for (c, (d, s)) in dst.chunks_mut(spatial).zip(src.chunks(spatial)).enumerate() {
            let scale = weight[first + c] as f64 * rstd;
            let shift = bias[first + c] as f64 - mean * scale;
            affine(s, d, scale as f32, shift as f32, silu);
        }
    });
}

kernels::dispatch! {
    /// Mean and (biased) variance in one pass, accumulated in f64: with 16 significant digits, E[x^2] - mean^2
    /// still keeps 8 when the mean is 1e4 times the spread, more than the f32 result needs, so this matches
    /// torch's float statistics to about an ulp. Eight independent accumulators let the loop vectorise.
    fn moments(src: &[f32]) -> (f64, f64) {
        let (mut sum, mut sq) = ([0f64; 8], [0f64; 8]);
        let mut chunks = src.chunks_exact(8);
        for c in &mut chunks {
            for l in 0..8 {
                let v = c[l] as f64;
                sum[l] += v;
                sq[l] += v * v;
            }
        }
        for (l, &v) in chunks.remainder().iter().enumerate() {
            sum[l] += v as f64;
            sq[l] += v as f64 * v as f64;
        }
        let n = src.len() as f64;
        let mean = sum.iter().sum::<f64>() / n;
        let var = (sq.iter().sum::<f64>() / n - mean * mean).max(0.0);
        (mean, var)
    }
}

kernels::dispatch! {
    /// d = s * scale + shift, then SiLU when asked: per level, since the exp in SiLU dominates the norm's cost.
    fn affine(s: &[f32], d: &mut [f32], scale: f32, shift: f32, silu: bool) {
        if silu {
            for (d, &s) in d.iter_mut().zip(s) {
                let y = s * scale + shift;
                // torch's vectorised silu: x / (1 + exp(-x)).
                *d = y / (1.0 + exp(-y));
            }
        } else {
            for (d, &s) in d.iter_mut().zip(s) {
                *d = s * scale + shift;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Module};

    #[test]
    fn fused_cpu_path_matches_candle_ops() {
        let dev = Device::Cpu;
        let x = (Tensor::randn(0f32, 3., (2, 8, 5, 7), &dev).unwrap() + 1.5).unwrap();
        let w = Tensor::randn(1f32, 0.2, 8, &dev).unwrap();
        let b = Tensor::randn(0f32, 0.2, 8, &dev).unwrap();
        let gn = GroupNorm { weight: w.clone(), bias: b.clone(), groups: 4, channels: 8 };
        let reference = candle_nn::GroupNorm::new(w, b, 8, 4, EPS).unwrap().forward(&x).unwrap();
        let diff = |a: &Tensor, b: &Tensor| {
            (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
        };
        assert!(diff(&gn.run(&x, false).unwrap(), &reference) < 1e-5);
        let silu = candle_nn::ops::silu(&reference).unwrap();
        assert!(diff(&gn.forward_silu(&x).unwrap(), &silu) < 1e-5);
        // A strided view goes through the same path after one copy.
        let xt = x.transpose(2, 3).unwrap();
        let want = candle_nn::GroupNorm::new(gn.weight.clone(), gn.bias.clone(), 8, 4, EPS).unwrap().forward(&xt);
        assert!(diff(&gn.run(&xt, false).unwrap(), &want.unwrap()) < 1e-5);
        assert!(gn.forward_silu(&x.narrow(1, 0, 4).unwrap()).is_err());
    }

    // The two kernels at each level against the baseline, bit for bit: a group long enough for every vector
    // width and a tail, values with a large mean (the f64 moments), SiLU over both signs.
    kernels::at_every_level!(kernels_match_the_baseline_at_every_level, |level| {
        use crate::nn::kernels::{assert_same_bits, at_baseline_and};
        let src: Vec<f32> = (0..1003).map(|i| ((i * 7919) % 1201) as f32 * 0.02 - 12.0 + 300.0).collect();
        let (want, got) = at_baseline_and(level, || moments(&src));
        assert_eq!((want.0.to_bits(), want.1.to_bits()), (got.0.to_bits(), got.1.to_bits()), "moments at {level:?}");
        for silu in [false, true] {
            let (want, got) = at_baseline_and(level, || {
                let mut d = vec![0f32; src.len()];
                affine(&src, &mut d, 0.37, -111.0, silu);
                d
            });
            assert_same_bits(level, &want, &got, "affine");
        }
    });
}
