//! One fixed k×k filter applied to every channel at a stride (the discriminator's anti-aliasing blur: 4x4,
//! stride 2) as one node, computed directly: forward a k² sum per output, backward (the input's gradient only;
//! the filter is a constant buffer) each output's gradient spread back over its window.
//!
//! As an im2col convolution of B·C single-channel maps it was a product with one output row (C_out = 1, depth
//! k² = 16): B·C gemm calls too small to run near gemm speed, columns 4x the input (64 MB at the discriminator's
//! first stage, batch 2) and, backward, an outer product of the same size folded by col2im. Here it is 16
//! multiply-adds an output, no buffer beyond the result and one input row split by phase.

use candle_core::{bail, CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{cpu_tensor, values, with_values};

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

    /// For kernel column `kj`: the phase that output column ox reads (input column ox·s + kj - left) and its
    /// index there less ox, so that a tap reads (or writes) a contiguous run of its phase.
    #[inline(always)]
    fn phase(&self, kj: usize) -> (usize, isize) {
        let d = kj as isize - self.left as isize;
        let s = self.stride as isize;
        (d.rem_euclid(s) as usize * self.w.div_ceil(self.stride), d.div_euclid(s))
    }

    /// An input row into its `stride` phases (phase q: the columns q, q + s, ...): at stride 2 the taps read
    /// every other column, a gather that did not vectorise (the blur was ~10% of the stage-2 step); from the
    /// phases each tap is a contiguous multiply-add.
    #[inline(always)]
    fn split(&self, row: &[f32], phases: &mut [f32]) {
        let pw = self.w.div_ceil(self.stride);
        for (j, group) in row.chunks(self.stride).enumerate() {
            group.iter().enumerate().for_each(|(q, &v)| phases[q * pw + j] = v);
        }
    }

    /// The inverse of [`FilterGeometry::split`].
    #[inline(always)]
    fn merge(&self, phases: &[f32], row: &mut [f32]) {
        let pw = self.w.div_ceil(self.stride);
        for (j, group) in row.chunks_mut(self.stride).enumerate() {
            group.iter_mut().enumerate().for_each(|(q, v)| *v = phases[q * pw + j]);
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
        let mut y = vec![0f32; b * c * g.oh * g.ow];
        if g.oh * g.ow > 0 {
            let maps = y.par_chunks_mut(g.oh * g.ow).zip(x.par_chunks(g.h * g.w));
            maps.for_each_init(
                || vec![0f32; g.phases_len()],
                |phases, (y, x)| {
                    // Each output's sum in (ki, kj) order, as the gather took it: the same bits.
                    for (oy, out) in y.chunks_mut(g.ow).enumerate() {
                        for ki in 0..g.k {
                            let Some(iy) = g.row(oy, ki) else { continue };
                            g.split(&x[iy * g.w..(iy + 1) * g.w], phases);
                            for kj in 0..g.k {
                                let ((lo, hi), (base, off)) = (g.cols(kj), g.phase(kj));
                                let weight = self.kernel[ki * g.k + kj];
                                let src = &phases[(base as isize + lo as isize + off) as usize..][..hi - lo];
                                out[lo..hi].iter_mut().zip(src).for_each(|(v, &x)| *v += weight * x);
                            }
                        }
                    }
                },
            );
        }
        Ok((CpuStorage::F32(y), Shape::from((b, c, g.oh, g.ow))))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let g = self.g;
        let dx = with_values([grad], |[dy]| {
            let mut dx = vec![0f32; x.elem_count()];
            if g.oh * g.ow > 0 {
                // One task per map: each writes only its own map's gradient, every value's adds in (oy, ki, kj)
                // order, as the scatter made them: the same bits.
                let maps = dx.par_chunks_mut(g.h * g.w).zip(dy.par_chunks(g.oh * g.ow));
                maps.for_each_init(
                    || vec![0f32; g.phases_len()],
                    |phases, (dx, dy)| {
                        for (oy, grad) in dy.chunks(g.ow).enumerate() {
                            for ki in 0..g.k {
                                let Some(iy) = g.row(oy, ki) else { continue };
                                let row = &mut dx[iy * g.w..(iy + 1) * g.w];
                                g.split(row, phases);
                                for kj in 0..g.k {
                                    let ((lo, hi), (base, off)) = (g.cols(kj), g.phase(kj));
                                    let weight = self.kernel[ki * g.k + kj];
                                    let dst = &mut phases[(base as isize + lo as isize + off) as usize..][..hi - lo];
                                    dst.iter_mut().zip(&grad[lo..hi]).for_each(|(p, &d)| *p += weight * d);
                                }
                                g.merge(phases, row);
                            }
                        }
                    },
                );
            }
            dx
        })?;
        Ok(Some(cpu_tensor(dx, x.dims())?))
    }
}
