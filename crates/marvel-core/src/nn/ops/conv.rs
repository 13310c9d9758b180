//! The im2col convolution (`nn::conv2d_im2col`, see `nn/conv2d/geometry.rs` for the layout) as one training node:
//! columns, product and bias in the forward; in the backward only the gradients something asks for.
//!
//! Composed as `Im2Col` -> candle matmul -> broadcast add, the backward computed the weight's gradient of every
//! convolution, frozen or not (candle's matmul backward takes both operands' gradients unconditionally): the
//! perceptual ConvNeXt's and the frozen discriminator's in the generator's step, the constant blur kernel's in
//! every discriminator pass, each a gemm as large as the forward. It also went through a (B, C·k·k, Ho·Wo)
//! gradient of the columns, allocated zeroed and added to by the gradient store before col2im read it. Here the
//! columns' gradient is made and folded back one image at a time. The arithmetic is the composed form's, in
//! its order (the same gemm calls, the bias added after the product, the sums over images in image order), so
//! the values are too.
//!
//! The columns are one image's at a time in a pooled buffer ([`super::scratch`]), made again in the backward
//! instead of kept: kept, they were k² times the input for every convolution of the graph (151 MB for the
//! discriminator's first 3x3 convolution at batch 2), each freshly mapped and page-faulted; remade, they cost a
//! copy of the input k² times into memory that is already mapped. The not-exact path (`nn::conv2d_fast_grad`:
//! the discriminator, the pixel decoder) makes no columns where it can: narrow layers are computed directly
//! (`conv_direct.rs`), and other stride-1 layers on AVX-512 CPUs as sgemm products over shifted windows of the
//! padded input (`conv_shifted.rs`). The rest (strided or upsampled wide layers; every wide layer below
//! AVX-512) makes the columns for a band of output rows at a time ([`BAND_VALUES`]), so that im2col, the
//! products and col2im meet them in cache: an image's whole columns (75 MB for a 256x256 32-channel 3x3
//! convolution) went out to memory and back in the forward and again in the backward. Its bands go to the
//! threads whole (`conv_bands.rs`).

use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::conv_bands::Bands;
use super::conv_direct;
#[cfg(target_arch = "x86_64")]
use super::conv_shifted;
use super::scratch::scratch;
use super::{cpu_tensor, product, values, with_values, zeros, View, PARALLEL};
use crate::nn::conv2d::Geometry;

/// `conv2d(x, weight) + bias` of geometry `g`: `x` (B, C_in, H, W), `weight` (C_out, C_in, k, k), `bias`
/// (C_out), all f32 on the CPU.
/// `exact`: the forward and gradients as the composed form computes them, bit for bit; else by the not-exact
/// paths (direct, shifted windows or bands, see the module notes), all within rounding of the exact values. Which
/// path a layer takes, and so its bits, depends on the kernel level (`MARVEL_SIMD` included): exact resume holds
/// on one machine and level, not across them.
pub(crate) fn conv2d(x: &Tensor, weight: &Tensor, bias: &Tensor, g: Geometry, exact: bool) -> Result<Tensor> {
    apply(x, weight, bias, ConvOp { g, exact, band_values: BAND_VALUES, path: Path::Auto })
}

/// [`conv2d`]'s not-exact path with bands of `band_values` column values, small enough to split a test's images;
/// bands for every layer, narrow ones included (which [`conv2d`] computes directly, `conv_direct.rs`).
#[cfg(test)]
pub(crate) fn conv2d_in_bands(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    g: Geometry,
    band_values: usize,
) -> Result<Tensor> {
    apply(x, weight, bias, ConvOp { g, exact: false, band_values, path: Path::Bands })
}

/// [`conv2d`]'s not-exact path through the shifted windows (`conv_shifted.rs`) whatever the layer's width; None
/// where that path does not apply (not stride 1, or a CPU without AVX-512).
#[cfg(all(test, target_arch = "x86_64"))]
pub(crate) fn conv2d_shifted(x: &Tensor, weight: &Tensor, bias: &Tensor, g: Geometry) -> Option<Result<Tensor>> {
    conv_shifted::applies(&g)
        .then(|| apply(x, weight, bias, ConvOp { g, exact: false, band_values: BAND_VALUES, path: Path::Shifted }))
}

fn apply(x: &Tensor, weight: &Tensor, bias: &Tensor, op: ConvOp) -> Result<Tensor> {
    x.contiguous()?.apply_op3(&weight.contiguous()?, &bias.contiguous()?, op)
}

struct ConvOp {
    g: Geometry,
    exact: bool,
    /// [`BAND_VALUES`] but in the tests, which split small images into several bands.
    band_values: usize,
    /// Which not-exact path: chosen by the layer but in tests.
    path: Path,
}

/// The not-exact path's ways.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Path {
    /// Narrow layers' forward and input gradient directly (`conv_direct.rs`), else stride 1 through the shifted
    /// windows on AVX-512 (`conv_shifted.rs`), else the bands.
    Auto,
    /// The bands, for every layer.
    #[cfg(test)]
    Bands,
    /// The shifted windows, for every layer they take.
    #[cfg(all(test, target_arch = "x86_64"))]
    Shifted,
}

impl ConvOp {
    /// Whether the narrow layers' direct path serves this convolution.
    fn direct(&self, c_out: usize) -> bool {
        !self.exact && self.path == Path::Auto && conv_direct::applies(&self.g, c_out)
    }

    /// Whether the shifted windows serve it (forward and both gradients): sgemm's, so x86-64 only.
    fn shifted(&self, c_out: usize) -> bool {
        #[cfg(all(test, target_arch = "x86_64"))]
        if self.path == Path::Shifted {
            return true;
        }
        let auto = !self.exact && self.path == Path::Auto && !self.direct(c_out);
        #[cfg(target_arch = "x86_64")]
        return auto && conv_shifted::applies(&self.g);
        #[cfg(not(target_arch = "x86_64"))]
        return auto && false;
    }

    /// (C_out, C_in·k·k, Ho·Wo): the product's sizes.
    fn sizes(&self, weight_dims: &[usize]) -> (usize, usize, usize) {
        let (oh, ow) = self.g.out_hw();
        (weight_dims[0], self.g.channels * self.g.kernel * self.g.kernel, oh * ow)
    }
}

/// Column values a band of the not-exact path holds at most (bar a single output row wider than that): 1 MiB,
/// half the L2 cache of the machines measured, so a band's columns and their gradient stay there between the
/// im2col, the products and col2im.
const BAND_VALUES: usize = 1 << 18;

impl CustomOp3 for ConvOp {
    fn name(&self) -> &'static str {
        "marvel-conv2d"
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
        let g = self.g;
        let (b, c_in, h, w) = xl.shape().dims4()?;
        let (c_out, k_in, kh, kw) = wl.shape().dims4()?;
        if (c_in, h, w) != (g.channels, g.h, g.w)
            || (k_in, kh, kw) != (c_in, g.kernel, g.kernel)
            || bl.dims() != [c_out]
        {
            bail!("conv2d: input {:?}, weight {:?} and bias {:?} do not fit", xl.dims(), wl.dims(), bl.dims());
        }
        let (x, wv, bias) = (values(xs, xl, "conv2d")?, values(ws, wl, "conv2d")?, values(bs, bl, "conv2d")?);
        let (_, k, l) = self.sizes(wl.dims());
        let plane = c_in * h * w;
        let mut out = zeros(b * c_out * l);
        if k > 0 && l > 0 && self.direct(c_out) {
            conv_direct::forward(g, x, wv, bias, b, &mut out);
        } else if k > 0 && l > 0 && self.shifted(c_out) {
            #[cfg(target_arch = "x86_64")]
            conv_shifted::forward(g, x, wv, bias, b, &mut out);
        } else if k > 0 && l > 0 && !self.exact {
            Bands::new(g, self.band_values).forward(x, wv, bias, b, &mut out);
        } else if k > 0 && l > 0 {
            let mut cols = scratch(k * l);
            for i in 0..b {
                g.im2col_into(&x[i * plane..(i + 1) * plane], &mut cols);
                // SAFETY: W holds c_out·k values, the image's columns k·l, its output c_out·l.
                unsafe {
                    let (dst, rhs) = (out[i * c_out * l..].as_mut_ptr(), cols.as_ptr());
                    product(c_out, l, k, dst, l, View::rows(wv.as_ptr(), k), View::rows(rhs, l), PARALLEL);
                }
            }
        }
        if self.exact || k == 0 || l == 0 {
            // The bias added after the product, as the composed form's broadcast add: the same bits
            // (accumulating the product onto the bias would round differently where the gemm splits k into
            // blocks). The bands add it to their own part.
            out.par_chunks_mut(l.max(1)).enumerate().for_each(|(row, o)| {
                let bias = bias[row % c_out];
                o.iter_mut().for_each(|v| *v += bias);
            });
        }
        let (oh, ow) = g.out_hw();
        Ok((CpuStorage::F32(out), Shape::from((b, c_out, oh, ow))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let b = x.dim(0)?;
        let (c_out, _, l) = self.sizes(w.dims());
        // A frozen input, weight or bias (not a variable, nothing tracked behind it) needs no gradient.
        let (want_dx, want_dw, want_db) = (x.track_op(), w.track_op(), bias.track_op());
        let (dx, dw, db) = with_values([x, w, grad], |[xv, wv, dy]| {
            let (dx, dw) = if self.exact {
                self.bwd_exact(xv, wv, dy, b, (want_dx, want_dw))
            } else if let Some(grads) = self.shifted_backward(xv, wv, dy, b, c_out, (want_dx, want_dw)) {
                grads
            } else if self.direct(c_out) && l > 0 {
                // 1x1 kernels keep the bands: the direct kernel's blocks of three kernel columns would do 3x the work.
                let dw = match (want_dw, self.g.kernel) {
                    (false, _) => Vec::new(),
                    (true, 1) => Bands::new(self.g, self.band_values).backward(xv, wv, dy, b, (false, true)).1,
                    (true, _) => conv_direct::weight_grad(self.g, xv, dy, b, c_out),
                };
                let mut dx = zeros(if want_dx { xv.len() } else { 0 });
                if want_dx {
                    conv_direct::input_grad(self.g, wv, dy, b, c_out, &mut dx);
                }
                (dx, dw)
            } else {
                Bands::new(self.g, self.band_values).backward(xv, wv, dy, b, (want_dx, want_dw))
            };
            let db: Vec<f32> = if want_db && self.exact {
                // One running sum per channel over the images and positions in memory order, as candle's sum over
                // (B, H, W) adds them.
                (0..c_out)
                    .into_par_iter()
                    .map(|c| (0..b).fold(0f32, |acc, i| dy[(i * c_out + c) * l..][..l].iter().fold(acc, |a, v| a + v)))
                    .collect()
            } else if want_db {
                (0..c_out).into_par_iter().map(|c| lane_sum((0..b).map(|i| &dy[(i * c_out + c) * l..][..l]))).collect()
            } else {
                Vec::new()
            };
            (dx, dw, db)
        })?;
        let dx = if want_dx { Some(cpu_tensor(dx, x.dims())?) } else { None };
        let dw = if want_dw { Some(cpu_tensor(dw, w.dims())?) } else { None };
        let db = if want_db { Some(cpu_tensor(db, &[c_out])?) } else { None };
        Ok((dx, dw, db))
    }
}

impl ConvOp {
    /// The input's and weight's gradients through the shifted windows, where they serve this convolution.
    fn shifted_backward(
        &self,
        xv: &[f32],
        wv: &[f32],
        dy: &[f32],
        b: usize,
        c_out: usize,
        want: (bool, bool),
    ) -> Option<(Vec<f32>, Vec<f32>)> {
        if !self.shifted(c_out) || self.g.out_hw().0 * self.g.out_hw().1 == 0 {
            return None;
        }
        #[cfg(target_arch = "x86_64")]
        return Some(conv_shifted::backward(self.g, xv, wv, dy, b, want));
        #[cfg(not(target_arch = "x86_64"))]
        return {
            let _ = (xv, wv, dy, b, want);
            None
        };
    }

    /// The exact backward: the composed form's products, whole image by whole image.
    fn bwd_exact(&self, xv: &[f32], wv: &[f32], dy: &[f32], b: usize, want: (bool, bool)) -> (Vec<f32>, Vec<f32>) {
        let g = self.g;
        let (want_dx, want_dw) = want;
        let (oh, ow) = g.out_hw();
        let (k, l) = (g.channels * g.kernel * g.kernel, oh * ow);
        let c_out = wv.len().checked_div(k).unwrap_or(0);
        let mut dw = vec![0f32; if want_dw { c_out * k } else { 0 }];
        let mut dx = vec![0f32; if want_dx { xv.len() } else { 0 }];
        let mut dw_i = vec![0f32; dw.len()];
        let mut cols = scratch(if want_dw { k * l } else { 0 });
        let mut dcols = scratch(if want_dx { k * l } else { 0 });
        let plane = g.channels * g.h * g.w;
        for i in 0..b {
            let dy_i = dy[i * c_out * l..].as_ptr();
            if want_dw {
                g.im2col_into(&xv[i * plane..(i + 1) * plane], &mut cols);
            }
            // SAFETY: dy holds b·c_out·l values, W c_out·k, the columns k·l; dw_i and dcols are sized for their
            // products.
            unsafe {
                if want_dw && l > 0 {
                    // dW_i = dy_i · cols_iᵀ, then summed over the images in order: the composed form's per-image
                    // product and its broadcast's sum, its operands and dW_i laid out as the composed form has
                    // them (the gemm crate's rounding depends on the layout).
                    let cols_i = View::rows(cols.as_ptr(), l).t();
                    product(c_out, k, l, dw_i.as_mut_ptr(), k, View::rows(dy_i, l), cols_i, PARALLEL);
                    dw.iter_mut().zip(&dw_i).for_each(|(d, v)| *d += v);
                }
                if want_dx && c_out > 0 {
                    // The columns' gradient Wᵀ · dy_i, folded back onto the image at once.
                    let wt = View::rows(wv.as_ptr(), k).t();
                    product(k, l, c_out, dcols.as_mut_ptr(), l, wt, View::rows(dy_i, l), PARALLEL);
                }
            }
            // With no output channel the product above wrote nothing into the pooled (stale) columns, and the
            // input's gradient is zero.
            if want_dx && c_out > 0 {
                g.col2im_add(&dcols, &mut dx[i * plane..(i + 1) * plane]);
            }
        }
        (dx, dw)
    }
}

/// Lanes of [`lane_sum`]'s running sums: one AVX-512 register, or a few narrower ones.
const LANES: usize = 16;

/// The sum of `rows`' values as [`LANES`] running sums (value j of a row to lane j mod LANES, the rows' tails in
/// one more) added up at the end: the not-exact path's bias gradient. One running sum, as the exact path keeps
/// (candle's order), is a chain of dependent adds the compiler may not reorder: ~3% of the discriminator step on
/// one thread for 32-128 sums of 2·65536 values. The order is fixed, so the bits do not depend on the threads.
fn lane_sum<'a>(rows: impl Iterator<Item = &'a [f32]>) -> f32 {
    let (mut lanes, mut tail) = ([0f32; LANES], 0f32);
    for row in rows {
        let chunks = row.chunks_exact(LANES);
        tail = chunks.remainder().iter().fold(tail, |a, v| a + v);
        for chunk in chunks {
            lanes.iter_mut().zip(chunk).for_each(|(a, v)| *a += v);
        }
    }
    lanes.iter().sum::<f32>() + tail
}
