//! One fixed k×k filter applied to every channel at a stride (the discriminator's anti-aliasing blur: 4x4,
//! stride 2) as one node, computed directly: forward a k² sum per output, backward (the input's gradient only;
//! the filter is a constant buffer) each output's gradient spread back over its window.
//!
//! As an im2col convolution of B·C single-channel maps it was a product with one output row (C_out = 1, depth
//! k² = 16): B·C gemm calls too small to run near gemm speed, columns 4x the input (64 MB at the discriminator's
//! first stage, batch 2) and, backward, an outer product of the same size folded by col2im. Here it is 16
//! multiply-adds an output, no buffer beyond the result.

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

    /// Calls `f(output row offset, input row offset, kj, lo, hi, tap)` for every (output row, tap) that reads
    /// inside the map, taps in (ki, kj) order: the order each output's sum is taken in.
    #[inline(always)]
    fn for_each_tap(&self, oy: usize, mut f: impl FnMut(usize, usize, usize, usize, usize)) {
        for ki in 0..self.k {
            let Some(iy) = self.row(oy, ki) else { continue };
            for kj in 0..self.k {
                let (lo, hi) = self.cols(kj);
                f(iy * self.w, kj, lo, hi, ki * self.k + kj);
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
        let mut y = vec![0f32; b * c * g.oh * g.ow];
        if g.oh * g.ow > 0 {
            y.par_chunks_mut(g.oh * g.ow).zip(x.par_chunks(g.h * g.w)).for_each(|(y, x)| {
                for (oy, row) in y.chunks_mut(g.ow).enumerate() {
                    g.for_each_tap(oy, |src, kj, lo, hi, tap| {
                        let weight = self.kernel[tap];
                        for (ox, v) in (lo..hi).zip(&mut row[lo..hi]) {
                            *v += weight * x[src + ox * g.stride + kj - g.left];
                        }
                    });
                }
            });
        }
        Ok((CpuStorage::F32(y), Shape::from((b, c, g.oh, g.ow))))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let g = self.g;
        let dx = with_values([grad], |[dy]| {
            let mut dx = vec![0f32; x.elem_count()];
            if g.oh * g.ow > 0 {
                // One task per map: each writes only its own map's gradient, in a fixed order.
                dx.par_chunks_mut(g.h * g.w).zip(dy.par_chunks(g.oh * g.ow)).for_each(|(dx, dy)| {
                    for (oy, row) in dy.chunks(g.ow).enumerate() {
                        g.for_each_tap(oy, |dst, kj, lo, hi, tap| {
                            let weight = self.kernel[tap];
                            for (ox, d) in (lo..hi).zip(&row[lo..hi]) {
                                dx[dst + ox * g.stride + kj - g.left] += weight * d;
                            }
                        });
                    }
                });
            }
            dx
        })?;
        Ok(Some(cpu_tensor(dx, x.dims())?))
    }
}
