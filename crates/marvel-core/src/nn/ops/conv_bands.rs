//! The convolution op's not-exact path (`nn::conv2d_fast_grad`: the discriminator, the pixel decoder) where
//! neither the direct nor the shifted-window path takes the layer (see `conv.rs`), band by band of output rows,
//! the bands shared out across threads whole.
//!
//! A band's columns are small enough to stay in cache between the im2col, the products and col2im, and so are
//! its products (32 x 288 x ~800 for the discriminator's 3x3 convolutions at 256x256): split across threads,
//! each was ~0.1 ms of work a parallel region, and the step scaled 1.34x from one thread to two. Here each
//! thread takes whole bands, each with its own pooled columns and a product on that thread.
//!
//! Nothing depends on the number of threads: the bands and their groups ([`Bands::slabs`]) are fixed by the
//! geometry, the weight's gradient is a partial sum a slab added in slab order, and the input's gradient, where
//! the slabs' windows overlap, gets the even slabs' adds before the odd slabs' (two passes, each over slabs that
//! write disjoint rows), so the bits are the same on any pool, as exact resume needs.

use std::ops::Range;

use rayon::prelude::*;

use super::scratch::scratch;
use super::{product, product_into, zeros, View};
use super::{Product, PARALLEL};
use crate::nn::conv2d::Geometry;
use crate::nn::fused::SharedMut;

/// A product on the calling thread, overwriting dst.
const SERIAL: Product = Product { parallel: false, ..PARALLEL };

/// Bands a slab of the backward holds at least: two, so that a slab's weight-gradient partial sum (C_out·C_in·k·k
/// values, kept until all are added) serves several bands' products.
const SLAB_BANDS: usize = 2;

/// The not-exact path's split of one convolution of geometry `g` into bands of `rows` output rows.
pub(super) struct Bands {
    g: Geometry,
    rows: usize,
}

impl Bands {
    /// Bands of as many output rows as keep their columns within `band_values`, at least one.
    pub(super) fn new(g: Geometry, band_values: usize) -> Self {
        let (oh, ow) = g.out_hw();
        let k = g.channels * g.kernel * g.kernel;
        Self { g, rows: (band_values / (k * ow).max(1)).clamp(1, oh.max(1)) }
    }

    /// Column rows: C_in·k·k.
    fn k(&self) -> usize {
        self.g.channels * self.g.kernel * self.g.kernel
    }

    /// The largest band's columns.
    fn band_len(&self) -> usize {
        self.k() * self.rows * self.g.out_hw().1
    }

    /// The bands of output rows, in order.
    fn list(&self) -> Vec<Range<usize>> {
        let oh = self.g.out_hw().0;
        (0..oh).step_by(self.rows).map(|r| r..(r + self.rows).min(oh)).collect()
    }

    /// The backward's groups of whole bands: at least [`SLAB_BANDS`], and enough rows that slab s and slab s + 2
    /// read disjoint input rows ([`Geometry::rows_for_disjoint_groups`]), so that the even slabs can fold their
    /// columns' gradient onto the input side by side, and then the odd ones.
    fn slabs(&self) -> Vec<Range<usize>> {
        let g = self.g;
        let oh = g.out_hw().0;
        let min_rows = g.rows_for_disjoint_groups();
        let rows = self.rows * SLAB_BANDS.max(min_rows.div_ceil(self.rows));
        (0..oh).step_by(rows).map(|r| r..(r + rows).min(oh)).collect()
    }

    /// y = W · im2col(x) + bias into `out` (B, C_out, Ho·Wo), one task a (image, band).
    pub(super) fn forward(&self, x: &[f32], wv: &[f32], bias: &[f32], b: usize, out: &mut [f32]) {
        let g = self.g;
        let (oh, ow) = g.out_hw();
        let (k, l, c_out) = (self.k(), oh * ow, bias.len());
        let plane = g.channels * g.h * g.w;
        let bands = self.list();
        let dst = SharedMut(out.as_mut_ptr());
        assert_eq!(out.len(), b * c_out * l);
        (0..b * bands.len()).into_par_iter().for_each_init(
            || scratch(self.band_len()),
            |cols, t| {
                let (i, rows) = (t / bands.len(), bands[t % bands.len()].clone());
                let n = rows.len() * ow;
                g.im2col_band(&x[i * plane..(i + 1) * plane], rows.clone(), &mut cols[..k * n]);
                // SAFETY: W holds c_out·k values, the band's columns k·n; the band's output, its n positions of
                // each of the image's c_out rows of `out`, is written by this task only.
                unsafe {
                    let o = dst.get().add(i * c_out * l + rows.start * ow);
                    product(c_out, n, k, o, l, View::rows(wv.as_ptr(), k), View::rows(cols.as_ptr(), n), SERIAL);
                    // The bias added after the product, as the exact path does (see `conv.rs`).
                    for (c, &bias) in bias.iter().enumerate() {
                        std::slice::from_raw_parts_mut(o.add(c * l), n).iter_mut().for_each(|v| *v += bias);
                    }
                }
            },
        );
    }

    /// The input's and the weight's gradients (each empty unless wanted), one task a (image, slab): the slab's
    /// bands' columns made, multiplied into the slab's dW partial sum and folded back onto dx while in cache.
    pub(super) fn backward(
        &self,
        xv: &[f32],
        wv: &[f32],
        dy: &[f32],
        b: usize,
        want: (bool, bool),
    ) -> (Vec<f32>, Vec<f32>) {
        let g = self.g;
        let (want_dx, want_dw) = want;
        let (oh, ow) = g.out_hw();
        let (k, l) = (self.k(), oh * ow);
        let c_out = wv.len().checked_div(k).unwrap_or(0);
        let mut dx = zeros(if want_dx { xv.len() } else { 0 });
        if l == 0 || c_out == 0 || b == 0 {
            return (dx, vec![0f32; if want_dw { c_out * k } else { 0 }]);
        }
        let slabs = self.slabs();
        let tasks: Vec<(usize, usize)> = (0..b).flat_map(|i| (0..slabs.len()).map(move |s| (i, s))).collect();
        // Overlapping windows: the even slabs' folds, then the odd ones'; else all at once.
        let passes: Vec<Vec<(usize, usize)>> = if want_dx {
            (0..2).map(|p| tasks.iter().copied().filter(|&(_, s)| s % 2 == p).collect()).collect()
        } else {
            vec![tasks.clone()]
        };
        let dx_ptr = SharedMut(dx.as_mut_ptr());
        let mut partials: Vec<(usize, Vec<f32>)> = Vec::with_capacity(tasks.len());
        for pass in passes {
            let done: Vec<(usize, Vec<f32>)> = pass
                .into_par_iter()
                .map(|(i, s)| {
                    let dx_i = want_dx.then_some(dx_ptr);
                    (
                        i * slabs.len() + s,
                        self.slab_backward(xv, wv, dy, (i, slabs[s].clone()), (c_out, l), dx_i, want_dw),
                    )
                })
                .collect();
            partials.extend(done);
        }
        // dW: the slabs' partial sums (column-major, see slab_backward) added in (image, slab) order.
        partials.sort_by_key(|&(t, _)| t);
        let mut dw_t = vec![0f32; if want_dw { c_out * k } else { 0 }];
        for (_, p) in &partials {
            dw_t.iter_mut().zip(p).for_each(|(d, v)| *d += v);
        }
        let dw = (0..dw_t.len()).map(|j| dw_t[(j % k) * c_out + j / k]).collect();
        (dx, dw)
    }

    /// One (image i, slab) task of [`Bands::backward`]: returns its dW partial sum (empty unless `want_dw`) and,
    /// given `dx`, adds its columns' gradient onto the slab's input rows of image i.
    #[allow(clippy::too_many_arguments)]
    fn slab_backward(
        &self,
        xv: &[f32],
        wv: &[f32],
        dy: &[f32],
        (i, slab): (usize, Range<usize>),
        (c_out, l): (usize, usize),
        dx: Option<SharedMut>,
        want_dw: bool,
    ) -> Vec<f32> {
        let g = self.g;
        let (k, ow) = (self.k(), g.out_hw().1);
        let (hw, plane) = (g.h * g.w, g.channels * g.h * g.w);
        let dy_i = &dy[i * c_out * l..(i + 1) * c_out * l];
        let x_i = &xv[i * plane..(i + 1) * plane];
        let (p0, slab_n) = (slab.start * ow, slab.len() * ow);
        // The gemm crate turns a row-major product around (dWᵀ = cols · dyᵀ), which makes the row-major columns
        // the operand it packs with reads n apart (~20% of the stage-2 step in a profile); into a column-major dW,
        // dy column-major too, it multiplies as laid out.
        let mut dw_t = vec![0f32; if want_dw { c_out * k } else { 0 }];
        let mut dy_t = scratch(if want_dw { slab_n * c_out } else { 0 });
        if want_dw {
            for (c, row) in dy_i.chunks_exact(l).enumerate() {
                row[p0..p0 + slab_n].iter().enumerate().for_each(|(j, &v)| dy_t[j * c_out + c] = v);
            }
        }
        let mut cols = scratch(if want_dw { self.band_len() } else { 0 });
        let mut dcols = scratch(if dx.is_some() { self.band_len() } else { 0 });
        let input_rows = g.input_rows(slab.clone());
        let first = slab.start;
        let bands = (slab.start..slab.end).step_by(self.rows).map(|r| r..(r + self.rows).min(slab.end));
        for rows in bands {
            let (r0, n) = (rows.start * ow, rows.len() * ow);
            // SAFETY: dy_t holds the slab's slab_n·c_out values (the band's n rows from r0 - p0 on), dy_i c_out·l
            // (the band's n columns from r0 on), W c_out·k, the band's columns k·n; dw_t and dcols are sized for
            // their products.
            unsafe {
                if want_dw {
                    g.im2col_band(x_i, rows.clone(), &mut cols[..k * n]);
                    let lhs = View::rows(dy_t[(r0 - p0) * c_out..].as_ptr(), c_out).t();
                    let layout = View::rows(dw_t.as_ptr(), c_out).t();
                    let rhs = View::rows(cols.as_ptr(), n).t();
                    let how = Product { accumulate: rows.start != first, ..SERIAL };
                    product_into(c_out, k, n, dw_t.as_mut_ptr(), layout, lhs, rhs, how);
                }
                if let Some(dx) = dx {
                    let wt = View::rows(wv.as_ptr(), k).t();
                    product(k, n, c_out, dcols.as_mut_ptr(), n, wt, View::rows(dy_i[r0..].as_ptr(), l), SERIAL);
                    let kk = g.kernel * g.kernel;
                    for (c, cols_c) in dcols[..k * n].chunks_exact(kk * n).enumerate() {
                        // SAFETY: the slab's input rows of this image's channel c: within dx (input_rows lies in
                        // 0..H), and written in this pass by this task only (see `Bands::slabs`).
                        let rows_c = std::slice::from_raw_parts_mut(
                            dx.get().add(i * plane + c * hw + input_rows.start * g.w),
                            input_rows.len() * g.w,
                        );
                        g.col2im_plane_add(cols_c, rows.clone(), rows_c, input_rows.start);
                    }
                }
            }
        }
        dw_t
    }
}
