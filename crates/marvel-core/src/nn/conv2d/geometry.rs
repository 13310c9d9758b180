//! The geometry of one convolution and the column layout of its im2col form: which input value each column entry
//! reads (with a nearest upsampling folded in), the copy into columns and the fold back (col2im), whole or by bands
//! of output rows.

use std::ops::Range;

use rayon::prelude::*;

/// The geometry of one convolution (square kernel, same stride and zero padding on both axes, no dilation),
/// reading its input through a nearest upsampling by `up` (1: none).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Geometry {
    pub(crate) channels: usize,
    /// The stored input's sides; the convolution sees `up` times them.
    pub(crate) h: usize,
    pub(crate) w: usize,
    pub(super) up: usize,
    pub(crate) kernel: usize,
    pub(super) stride: usize,
    pub(super) padding: usize,
}

impl Geometry {
    /// The geometry of a convolution of `channels` (h, w) maps, for tests of the ops that take one.
    #[cfg(test)]
    pub(crate) fn new(
        channels: usize,
        (h, w): (usize, usize),
        up: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Self {
        Self { channels, h, w, up, kernel, stride, padding }
    }

    pub(crate) fn stride(&self) -> usize {
        self.stride
    }

    pub(crate) fn padding(&self) -> usize {
        self.padding
    }

    /// The nearest upsampling factor applied to the stored input before the convolution.
    pub(crate) fn up(&self) -> usize {
        self.up
    }

    pub(crate) fn out_hw(&self) -> (usize, usize) {
        let out = |n: usize| (n * self.up + 2 * self.padding - self.kernel) / self.stride + 1;
        (out(self.h), out(self.w))
    }

    /// For output row (or column) `o` and kernel offset `k`: the stored input's index, if inside the image.
    #[inline(always)]
    fn source(&self, o: usize, k: usize, n: usize) -> Option<usize> {
        (o * self.stride + k).checked_sub(self.padding).filter(|&i| i < n * self.up).map(|i| i / self.up)
    }

    /// The output columns `lo..hi` whose window column `kj` lies inside the (upsampled) image of width `n`:
    /// 0 <= ox·stride + kj - padding < n·up.
    #[inline(always)]
    fn valid_cols(&self, kj: usize, n: usize, out: usize) -> (usize, usize) {
        let lo = self.padding.saturating_sub(kj).div_ceil(self.stride).min(out);
        let hi = (n * self.up + self.padding).saturating_sub(kj).div_ceil(self.stride).min(out);
        (lo, hi.max(lo))
    }

    /// Walks one channel's k·k column rows by spans, for the output rows `rows` (the columns of that band only,
    /// each column row `rows.len()·Wo` long): for each (column row, output row, kernel column) it gives the
    /// column row's offset of that output row, the input row's offset (None where the window row lies in the
    /// padding), and the valid output columns `lo..hi` (see [`Geometry::input_col`]); positions outside are
    /// padding.
    #[inline(always)]
    fn for_each_row(&self, rows: Range<usize>, mut f: impl FnMut(usize, Option<usize>, usize, usize, usize)) {
        let (_, ow) = self.out_hw();
        let l = rows.len() * ow;
        for ki in 0..self.kernel {
            for kj in 0..self.kernel {
                let row = (ki * self.kernel + kj) * l;
                let (lo, hi) = self.valid_cols(kj, self.w, ow);
                for (r, oy) in rows.clone().enumerate() {
                    f(row + r * ow, self.source(oy, ki, self.h).map(|iy| iy * self.w), kj, lo, hi);
                }
            }
        }
    }

    /// [`Geometry::for_each_row`] without the rows that lie wholly in the padding.
    #[inline(always)]
    fn for_each_span(&self, rows: Range<usize>, mut f: impl FnMut(usize, usize, usize, usize, usize)) {
        self.for_each_row(rows, |d, src, kj, lo, hi| {
            if let Some(src) = src {
                f(d, src, kj, lo, hi)
            }
        });
    }

    /// The stored input column read by output column `ox` at kernel column `kj` (a valid one).
    #[inline(always)]
    fn input_col(&self, ox: usize, kj: usize) -> usize {
        (ox * self.stride + kj - self.padding) / self.up
    }

    /// Whether input columns follow output columns one to one (stride 1, no upsampling): spans are slices.
    fn unit_step(&self) -> bool {
        self.stride == 1 && self.up == 1
    }

    /// (B, C, H, W) values -> (B, C·k·k, Ho·Wo) columns: each column holds the input window of one output
    /// position, in the weight's (C, ki, kj) order; zeros where the window reaches into the padding.
    pub(crate) fn im2col(&self, x: &[f32]) -> Vec<f32> {
        let (oh, ow) = self.out_hw();
        let mut cols = vec![0f32; x.len() / (self.h * self.w) * self.kernel * self.kernel * oh * ow];
        self.im2col_into(x, &mut cols);
        cols
    }

    /// [`Geometry::im2col`] into `cols`, every value written (the padding's zeros too), so a reused buffer
    /// with stale values serves.
    pub(crate) fn im2col_into(&self, x: &[f32], cols: &mut [f32]) {
        self.im2col_rows_into(x, 0..self.out_hw().0, cols)
    }

    /// [`Geometry::im2col_into`] for the output rows `rows` only: (B, C·k·k, rows.len()·Wo) columns.
    pub(crate) fn im2col_rows_into(&self, x: &[f32], rows: Range<usize>, cols: &mut [f32]) {
        let (kk, l) = (self.kernel * self.kernel, rows.len() * self.out_hw().1);
        cols.par_chunks_mut(kk * l)
            .zip(x.par_chunks(self.h * self.w))
            .for_each(|(dst, plane)| self.im2col_plane(plane, rows.clone(), dst));
    }

    /// [`Geometry::im2col_rows_into`] on the calling thread, for callers that split the work across threads in
    /// larger pieces than a plane (`nn::ops`' bands).
    pub(crate) fn im2col_band(&self, x: &[f32], rows: Range<usize>, cols: &mut [f32]) {
        let (kk, l) = (self.kernel * self.kernel, rows.len() * self.out_hw().1);
        for (dst, plane) in cols.chunks_mut(kk * l).zip(x.chunks(self.h * self.w)) {
            self.im2col_plane(plane, rows.clone(), dst);
        }
    }

    /// One channel's k·k column rows of the output rows `rows`, from its `plane`.
    fn im2col_plane(&self, plane: &[f32], rows: Range<usize>, dst: &mut [f32]) {
        let g = *self;
        let (_, ow) = g.out_hw();
        g.for_each_row(rows, |d, src, kj, lo, hi| {
            let row = &mut dst[d..d + ow];
            let Some(src) = src else {
                row.fill(0.0);
                return;
            };
            row[..lo].fill(0.0);
            row[hi..].fill(0.0);
            let d = &mut row[lo..hi];
            if g.unit_step() {
                let s = src + lo + kj - g.padding;
                d.copy_from_slice(&plane[s..s + d.len()]);
            } else {
                (lo..hi).zip(d).for_each(|(ox, v)| *v = plane[src + g.input_col(ox, kj)]);
            }
        });
    }

    /// The adjoint of [`Geometry::im2col`]: adds each column value of `cols` (any number of images) back onto
    /// the position of `x` (those images' planes) it was read from.
    pub(crate) fn col2im_add(&self, cols: &[f32], x: &mut [f32]) {
        self.col2im_rows_add(cols, 0..self.out_hw().0, x)
    }

    /// [`Geometry::col2im_add`] of the columns of the output rows `rows` only ([`Geometry::im2col_rows_into`]'s
    /// layout).
    pub(crate) fn col2im_rows_add(&self, cols: &[f32], rows: Range<usize>, x: &mut [f32]) {
        let (kk, l) = (self.kernel * self.kernel, rows.len() * self.out_hw().1);
        // One task per (image, channel) plane: each writes only its own plane.
        x.par_chunks_mut(self.h * self.w)
            .zip(cols.par_chunks(kk * l))
            .for_each(|(plane, cols)| self.col2im_plane_add(cols, rows.clone(), plane, 0));
    }

    /// The stored input rows that the output rows `rows` read (all that their col2im writes).
    pub(crate) fn input_rows(&self, rows: Range<usize>) -> Range<usize> {
        if rows.is_empty() {
            return 0..0;
        }
        let top = (rows.start * self.stride).saturating_sub(self.padding) / self.up;
        let end = ((rows.end - 1) * self.stride + self.kernel).saturating_sub(self.padding).div_ceil(self.up);
        let end = end.min(self.h);
        top.min(end)..end
    }

    /// Output rows a group of consecutive ones needs so that group s and group s + 2 read disjoint input rows
    /// ([`Geometry::input_rows`]): rows·stride >= kernel + up puts a gap of at least `up` upsampled rows, one
    /// stored row, between them.
    pub(crate) fn rows_for_disjoint_groups(&self) -> usize {
        (self.kernel + self.up).div_ceil(self.stride)
    }

    /// One channel's column rows of the output rows `rows` added onto `plane`, which holds that channel's stored
    /// rows from `first_row` on (at least [`Geometry::input_rows`] of `rows`), so that tasks writing disjoint
    /// row ranges of one plane each hold only their own.
    pub(crate) fn col2im_plane_add(&self, cols: &[f32], rows: Range<usize>, plane: &mut [f32], first_row: usize) {
        let g = *self;
        let base = first_row * g.w;
        g.for_each_span(rows, |c, dst, kj, lo, hi| {
            let (c, dst) = (&cols[c + lo..c + hi], dst - base);
            if g.unit_step() {
                let d = dst + lo + kj - g.padding;
                plane[d..d + c.len()].iter_mut().zip(c).for_each(|(p, v)| *p += v);
            } else {
                (lo..hi).zip(c).for_each(|(ox, v)| plane[dst + g.input_col(ox, kj)] += v);
            }
        });
    }
}
