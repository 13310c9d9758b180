//! GroupNorm (torch's `nn.GroupNorm`: biased variance, per-channel affine) as one node: one pass for the
//! statistics and one for the output forward; backward one pass for the group sums and one for the input's
//! gradient, and the weight's and bias's only when asked for (the frozen discriminator's are not).
//!
//! Composed from candle ops (candle-nn's `GroupNorm`) it is ~10 passes forward and ~20 backward, each a fresh
//! full-size tensor, most with candle's spin-synchronised elementwise maps, plus a `zeros_like + add` in the
//! gradient store per node: at the discriminator's first stage (32 channels at 128x128) and the pixel decoder's
//! last (8 channels at 256x256) that was a visible share of the stage-2 step.
//!
//! The statistics are summed in f64 (the composed form sums in f32), so the values differ from it in the last
//! bits; the tests bound the difference. Every sum has a fixed order (one task per (image, group), the
//! weight's and bias's sums over images in image order), so the bits do not depend on the threads.
//!
//! The node may end in the activation that follows the norm (`norm_activation.rs`): SiLU in the pixel decoder,
//! LeakyReLU in the discriminator.

use std::sync::Mutex;

use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::norm_activation::{activation_grad, affine_activation, Activation};
use super::scratch::scratch;
use super::{cpu_tensor, values, with_values, zeros};

/// `x` (B, C, ...) normalised over each of `groups` groups of C / groups channels, then `· weight[c] + bias[c]`,
/// then `act`; f32 on the CPU.
pub(crate) fn group_norm(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    groups: usize,
    eps: f64,
    act: Activation,
) -> Result<Tensor> {
    let dims = x.dims();
    if dims.len() < 2
        || groups == 0
        || !dims[1].is_multiple_of(groups)
        || weight.dims() != [dims[1]]
        || bias.dims() != [dims[1]]
    {
        bail!("group_norm: input {dims:?}, weight {:?}, bias {:?}, {groups} groups", weight.dims(), bias.dims());
    }
    let op = GroupNormOp { groups, eps, act, stats: Mutex::new(Vec::new()) };
    x.contiguous()?.apply_op3(&weight.contiguous()?, &bias.contiguous()?, op)
}

struct GroupNormOp {
    groups: usize,
    eps: f64,
    act: Activation,
    /// (mean, 1 / sqrt(var + eps)) of every (image, group), from the forward for the backward.
    stats: Mutex<Vec<(f64, f64)>>,
}

/// The norm with channel c's affine folded in, `x·scale + shift`: the forward's and, to recompute the norm's
/// output for the activation's gradient, the backward's (the same f64 steps, so the same f32 pair).
fn channel_affine((mean, rstd): (f64, f64), weight: f32, bias: f32) -> (f32, f32) {
    let scale = rstd * f64::from(weight);
    let shift = f64::from(bias) - mean * scale;
    (scale as f32, shift as f32)
}

/// Sizes of a (B, C, ...) input: (images, channels, values per channel).
fn sizes(dims: &[usize]) -> (usize, usize, usize) {
    (dims[0], dims[1], dims[2..].iter().product())
}

impl CustomOp3 for GroupNormOp {
    fn name(&self) -> &'static str {
        "marvel-group-norm"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, w, b) = (values(xs, xl, "group_norm")?, values(ws, wl, "group_norm")?, values(bs, bl, "group_norm")?);
        let (_, c, hw) = sizes(xl.dims());
        let cpg = c / self.groups;
        let n = cpg * hw;
        let mut y = zeros(x.len());
        let mut stats = vec![(0f64, 0f64); x.len().checked_div(n).unwrap_or(0)];
        if n > 0 {
            y.par_chunks_mut(n).zip(x.par_chunks(n)).zip(stats.par_iter_mut()).enumerate().for_each(
                |(bg, ((y, x), stat))| {
                    let mean = x.iter().map(|&v| f64::from(v)).sum::<f64>() / n as f64;
                    let var = x.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / n as f64;
                    let rstd = 1.0 / (var + self.eps).sqrt();
                    *stat = (mean, rstd);
                    let c0 = (bg % self.groups) * cpg;
                    for (j, (y, x)) in y.chunks_mut(hw).zip(x.chunks(hw)).enumerate() {
                        let (scale, shift) = channel_affine((mean, rstd), w[c0 + j], b[c0 + j]);
                        affine_activation(y, x, scale, shift, self.act);
                    }
                },
            );
        }
        *self.stats.lock().unwrap_or_else(|p| p.into_inner()) = stats;
        Ok((CpuStorage::F32(y), xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (want_dx, want_dw, want_db) = (x.track_op(), weight.track_op(), bias.track_op());
        let (images, c, hw) = sizes(x.dims());
        let cpg = c / self.groups;
        let n = cpg * hw;
        let stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        let act = self.act;
        let (dx, dw, db) = with_values([x, weight, bias, grad], |[x, w, b, dy]| {
            let mut dx = zeros(if want_dx { x.len() } else { 0 });
            // Per (image, channel): Σ dy·x̂ and Σ dy, summed over the images afterwards in image order.
            let mut partial = vec![(0f64, 0f64); images * c];
            if n > 0 {
                let tasks = partial.par_chunks_mut(cpg).zip(x.par_chunks(n)).zip(dy.par_chunks(n)).enumerate();
                let per_group =
                    |bg: usize, partial: &mut [(f64, f64)], x: &[f32], dy: &[f32], dx: Option<&mut [f32]>| {
                        let (mean, rstd) = stats[bg];
                        let c0 = (bg % self.groups) * cpg;
                        // The gradient at the norm's output: through the activation, if any.
                        let mut dz_buf = scratch(if act == Activation::None { 0 } else { n });
                        let dy = if act == Activation::None {
                            dy
                        } else {
                            for (j, (dz, (x, dy))) in
                                dz_buf.chunks_mut(hw).zip(x.chunks(hw).zip(dy.chunks(hw))).enumerate()
                            {
                                let (scale, shift) = channel_affine((mean, rstd), w[c0 + j], b[c0 + j]);
                                activation_grad(dz, x, dy, scale, shift, act);
                            }
                            &dz_buf[..n]
                        };
                        // Σ g and Σ g·x̂ with g = dy·w[c], the two sums the input's gradient needs.
                        let (mut sum_g, mut sum_gx) = (0f64, 0f64);
                        for (j, (x, dy)) in x.chunks(hw).zip(dy.chunks(hw)).enumerate() {
                            let (mut s_dy, mut s_dyx) = (0f64, 0f64);
                            for (&x, &dy) in x.iter().zip(dy) {
                                let xhat = (f64::from(x) - mean) * rstd;
                                s_dy += f64::from(dy);
                                s_dyx += f64::from(dy) * xhat;
                            }
                            partial[j] = (s_dyx, s_dy);
                            let wc = f64::from(w[c0 + j]);
                            sum_g += s_dy * wc;
                            sum_gx += s_dyx * wc;
                        }
                        if let Some(dx) = dx {
                            let (mean_g, mean_gx) = (sum_g / n as f64, sum_gx / n as f64);
                            for (j, (dx, (x, dy))) in dx.chunks_mut(hw).zip(x.chunks(hw).zip(dy.chunks(hw))).enumerate()
                            {
                                let wc = f64::from(w[c0 + j]);
                                for (d, (&x, &dy)) in dx.iter_mut().zip(x.iter().zip(dy)) {
                                    let xhat = (f64::from(x) - mean) * rstd;
                                    *d = (rstd * (f64::from(dy) * wc - mean_g - xhat * mean_gx)) as f32;
                                }
                            }
                        }
                    };
                if want_dx {
                    tasks
                        .zip(dx.par_chunks_mut(n))
                        .for_each(|((bg, ((p, x), dy)), dx)| per_group(bg, p, x, dy, Some(dx)));
                } else {
                    tasks.for_each(|(bg, ((p, x), dy))| per_group(bg, p, x, dy, None));
                }
            }
            let channel_sum = |pick: fn(&(f64, f64)) -> f64| -> Vec<f32> {
                (0..c).map(|ch| (0..images).map(|i| pick(&partial[i * c + ch])).sum::<f64>() as f32).collect()
            };
            let dw = if want_dw { channel_sum(|p| p.0) } else { Vec::new() };
            let db = if want_db { channel_sum(|p| p.1) } else { Vec::new() };
            (dx, dw, db)
        })?;
        let dx = if want_dx { Some(cpu_tensor(dx, x.dims())?) } else { None };
        let dw = if want_dw { Some(cpu_tensor(dw, &[c])?) } else { None };
        let db = if want_db { Some(cpu_tensor(db, &[c])?) } else { None };
        Ok((dx, dw, db))
    }
}
