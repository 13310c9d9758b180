//! One fixed k×k filter applied to every channel at a stride (the discriminator's anti-aliasing blur: 4x4,
//! stride 2) as one node, computed directly: forward a k² sum per output, backward (the input's gradient only;
//! the filter is a constant buffer) each output's gradient spread back over its window.
//!
//! As an im2col convolution of B·C single-channel maps it was a product with one output row (C_out = 1, depth
//! k² = 16): B·C gemm calls too small to run near gemm speed, columns 4x the input (64 MB at the discriminator's
//! first stage, batch 2) and, backward, an outer product of the same size folded by col2im. Here it is 16
//! multiply-adds an output, no buffer beyond the result and a map split by phase.

use candle_core::{bail, CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{cpu_tensor, values, with_values, zeros};
use crate::nn::kernels::dispatch;

/// `x` (B, C, H, W) with every (B, C) map filtered by `kernel` (k, k) at `stride`, zero padding `pad` =
/// (top, bottom, left, right) around the map; f32 on the CPU.
pub(crate) fn shared_filter2d(x: &Tensor, kernel: &[f32], stride: usize, pad: [usize; 4]) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let k = (kernel.len() as f64).sqrt() as usize;
    if k == 0 || k * k != kernel.len() || stride == 0 || h + pad[0] + pad[1] < k || w + pad[2] + pad[3] < k {
        bail!("shared_filter2d: {} filter values, stride {stride}, padding {pad:?} on {:?}", kernel.len(), x.dims());
    }
    let g = FilterGeometry {
        h,
        w,
        k,
        stride,
        top: pad[0],
        left: pad[2],
        oh: (h + pad[0] + pad[1] - k) / stride + 1,
        ow: (w + pad[2] + pad[3] - k) / stride + 1,
    };
    x.contiguous()?.apply_op1(SharedFilter { g, kernel: kernel.to_vec() })
}

#[derive(Clone, Copy)]
struct FilterGeometry {
    h: usize,
    w: usize,
    k: usize,
    stride: usize,
    top: usize,
    left: usize,
    oh: usize,
    ow: usize,
}

impl FilterGeometry {
    /// For output row `oy` and kernel row `ki`: the input row, if inside the map.
    #[inline(always)]
    fn row(&self, oy: usize, ki: usize) -> Option<usize> {
        (oy * self.stride + ki).checked_sub(self.top).filter(|&i| i < self.h)
    }

    /// The output columns `lo..hi` whose kernel column `kj` reads inside the map: 0 <= ox·s + kj - left < w.
    #[inline(always)]
    fn cols(&self, kj: usize) -> (usize, usize) {
        let lo = self.left.saturating_sub(kj).div_ceil(self.stride).min(self.ow);
        let hi = (self.w + self.left).saturating_sub(kj).div_ceil(self.stride).min(self.ow);
        (lo, hi.max(lo))
    }

    /// Values a row's phases take ([`FilterGeometry::split`]): `stride` phases of ⌈W / stride⌉.
    fn phases_len(&self) -> usize {
        self.stride * self.w.div_ceil(self.stride)
    }

    /// For kernel row `ki` and column `kj`, output column ox reads input column ox·s + kj - left: the offset in
    /// a split map ([`FilterGeometry::split`]) of that value for output row `oy`, less ox, if the input row is
    /// inside the map; each tap then reads (or writes) a contiguous run.
    #[inline(always)]
    fn tap_offset(&self, oy: usize, ki: usize, kj: usize) -> Option<isize> {
        let d = kj as isize - self.left as isize;
        let s = self.stride as isize;
        let phase = d.rem_euclid(s) as usize * self.w.div_ceil(self.stride);
        self.row(oy, ki).map(|iy| (iy * self.phases_len() + phase) as isize + d.div_euclid(s))
    }

    /// The taps of output row `oy` in (ki, kj) order, the order every sum keeps: each as its index in the kernel,
    /// the start of its run in a split map and the output columns `lo..hi` the run covers.
    #[inline(always)]
    fn for_each_tap(&self, oy: usize, mut f: impl FnMut(usize, usize, usize, usize)) {
        for ki in 0..self.k {
            for kj in 0..self.k {
                let Some(off) = self.tap_offset(oy, ki, kj) else { break };
                let (lo, hi) = self.cols(kj);
                f(ki * self.k + kj, (off + lo as isize) as usize, lo, hi);
            }
        }
    }

    /// A map's rows each into its `stride` phases (phase q: the columns q, q + s, ...): at stride 2 the taps read
    /// every other column, a gather that did not vectorise (the blur was ~10% of the stage-2 step); from the
    /// phases each tap is a contiguous multiply-add.
    #[inline(always)]
    fn split(&self, map: &[f32], phases: &mut [f32]) {
        let (s, pw) = (self.stride, self.w.div_ceil(self.stride));
        for (row, split) in map.chunks_exact(self.w).zip(phases.chunks_exact_mut(self.phases_len())) {
            for q in 0..s.min(self.w) {
                let n = (self.w - q).div_ceil(s);
                split[q * pw..][..n].iter_mut().zip(row[q..].iter().step_by(s)).for_each(|(d, &v)| *d = v);
            }
        }
    }

    /// The inverse of [`FilterGeometry::split`].
    #[inline(always)]
    fn merge(&self, phases: &[f32], map: &mut [f32]) {
        let (s, pw) = (self.stride, self.w.div_ceil(self.stride));
        for (row, split) in map.chunks_exact_mut(self.w).zip(phases.chunks_exact(self.phases_len())) {
            for q in 0..s.min(self.w) {
                let n = (self.w - q).div_ceil(s);
                row[q..].iter_mut().step_by(s).zip(&split[q * pw..][..n]).for_each(|(d, &v)| *d = v);
            }
        }
    }
}

struct SharedFilter {
    g: FilterGeometry,
    kernel: Vec<f32>,
}

impl CustomOp1 for SharedFilter {
    fn name(&self) -> &'static str {
        "marvel-shared-filter2d"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = values(storage, layout, "shared_filter2d")?;
        let (b, c, _, _) = layout.shape().dims4()?;
        let g = self.g;
        let mut y = zeros(b * c * g.oh * g.ow);
        if g.oh * g.ow > 0 {
            let maps = y.par_chunks_mut(g.oh * g.ow).zip(x.par_chunks(g.h * g.w));
            maps.for_each_init(
                || vec![0f32; g.h * g.phases_len()],
                |phases, (y, x)| filter_map(y, x, phases, &g, &self.kernel),
            );
        }
        Ok((CpuStorage::F32(y), Shape::from((b, c, g.oh, g.ow))))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let g = self.g;
        let dx = with_values([grad], |[dy]| {
            let mut dx = zeros(x.elem_count());
            if g.oh * g.ow > 0 {
                // One task per map: each writes only its own map's gradient, every value's adds in (oy, ki, kj)
                // order, as the scatter made them: the same bits.
                let maps = dx.par_chunks_mut(g.h * g.w).zip(dy.par_chunks(g.oh * g.ow));
                maps.for_each_init(
                    || vec![0f32; g.h * g.phases_len()],
                    |phases, (dx, dy)| filter_map_grad(dx, dy, phases, &g, &self.kernel),
                );
            }
            dx
        })?;
        Ok(Some(cpu_tensor(dx, x.dims())?))
    }
}

dispatch! {
    /// One map's filtered output `y` from its input `x`, through its phases (`phases`: room for them).
    fn filter_map(y: &mut [f32], x: &[f32], phases: &mut [f32], g: &FilterGeometry, kernel: &[f32]) {
        g.split(x, phases);
        // Each output's sum in (ki, kj) order, as the gather took it: the same bits (a multiply, then an add:
        // never fused, at any level).
        for (oy, out) in y.chunks_mut(g.ow).enumerate() {
            g.for_each_tap(oy, |tap, start, lo, hi| {
                let (weight, src) = (kernel[tap], &phases[start..][..hi - lo]);
                out[lo..hi].iter_mut().zip(src).for_each(|(v, &x)| *v += weight * x);
            });
        }
    }
}

dispatch! {
    /// One map's input gradient `dx` from its output gradient `dy`, through its phases (`phases`: room for them).
    fn filter_map_grad(dx: &mut [f32], dy: &[f32], phases: &mut [f32], g: &FilterGeometry, kernel: &[f32]) {
        phases.fill(0.0);
        for (oy, grad) in dy.chunks(g.ow).enumerate() {
            g.for_each_tap(oy, |tap, start, lo, hi| {
                let (weight, dst) = (kernel[tap], &mut phases[start..][..hi - lo]);
                dst.iter_mut().zip(&grad[lo..hi]).for_each(|(p, &d)| *p += weight * d);
            });
        }
        g.merge(phases, dx);
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor, Var};

    /// The split-by-phase loops equal the plain gather (forward) and scatter (backward) bit for bit: every value's
    /// adds in the same order, which the stage-2 runs' bits rely on. Stride 2 and 3, odd and even sides, padding
    /// on some sides only.
    #[test]
    fn phases_give_the_bits_of_the_plain_gather_and_scatter() {
        for (h, w, k, stride, pad) in
            [(9, 8, 4, 2, [1, 1, 1, 1]), (7, 9, 4, 2, [1, 2, 1, 2]), (8, 7, 3, 3, [0, 1, 2, 0])]
        {
            let n = 2 * h * w;
            let xv: Vec<f32> = (0..n).map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0).collect();
            let taps: Vec<f32> = (0..k * k).map(|i| ((i * 13 % 17) as f32 + 1.0) / 29.0).collect();
            let x = Var::from_tensor(&Tensor::from_vec(xv.clone(), (1, 2, h, w), &Device::Cpu).unwrap()).unwrap();
            let y = super::shared_filter2d(&x, &taps, stride, pad).unwrap();
            let (_, _, oh, ow) = y.dims4().unwrap();
            let dy: Vec<f32> = (0..2 * oh * ow).map(|i| ((i * 7 % 23) as f32 - 11.0) / 3.0).collect();
            let r = Tensor::from_vec(dy.clone(), y.dims(), &Device::Cpu).unwrap();
            let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let (mut want_y, mut want_dx) = (vec![0f32; 2 * oh * ow], vec![0f32; n]);
            for m in 0..2 {
                for (oy, ox, ki, kj) in (0..oh).flat_map(|oy| {
                    (0..k).flat_map(move |ki| (0..k).flat_map(move |kj| (0..ow).map(move |ox| (oy, ox, ki, kj))))
                }) {
                    let (iy, ix) =
                        ((oy * stride + ki) as isize - pad[0] as isize, (ox * stride + kj) as isize - pad[2] as isize);
                    if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                        continue;
                    }
                    let (o, i, t) =
                        (m * oh * ow + oy * ow + ox, m * h * w + iy as usize * w + ix as usize, ki * k + kj);
                    want_y[o] += taps[t] * xv[i];
                    want_dx[i] += taps[t] * dy[o];
                }
            }
            let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            let got_dx = grads.get(&x).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(bits(&y.flatten_all().unwrap().to_vec1::<f32>().unwrap()), bits(&want_y), "{h}x{w} s{stride}");
            assert_eq!(bits(&got_dx), bits(&want_dx), "{h}x{w} s{stride}: gradient");
        }
    }
}
