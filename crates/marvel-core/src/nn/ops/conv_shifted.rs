//! The not-exact convolution (`nn::conv2d_fast_grad`: the discriminator, the pixel decoder's wider layers) at
//! stride 1 on AVX-512 CPUs, as products over shifted windows of a zero-padded copy of the input: no columns.
//!
//! Output (y, x) of a stride-1 k×k convolution reads x_padded[c, y + ky, x + kx]. With the positions laid out on
//! the padded row stride S (= Wo + k - 1), j = y·S + x, tap (c, ky, kx) reads x_padded at j + c·plane + ky·S + kx
//! for every j: its row of the columns over a run of positions is a slice of the padded input. `kernels::sgemm`
//! reads those slices in place through a table of the C·k·k offsets (`sgemm_ab_rows`), so y = W · cols is made
//! without im2col; the k - 1 positions past Wo of each row are computed and dropped (~1% more work at 256x256).
//! - The input's gradient of a stride-1 convolution is one too (as in `conv_direct.rs`): dy padded by
//!   k - 1 - padding, convolved with the kernel flipped in both axes and its channel axes swapped. The same
//!   forward, so no col2im either.
//! - The weight's gradient dWᵀ = cols · dyᵀ is sgemm's A·Wᵀ form with the columns' rows again read in place
//!   (`sgemm_wt_arows`), dy laid out on the padded stride with zeros past Wo, so the dropped positions add nothing.
//!
//! The bands (`conv_bands.rs`) made the columns in cache and multiplied them with the gemm crate; in a 1-thread
//! profile of the discriminator's step their im2col, col2im and dy's transposed copy were ~21%, work this path
//! does not do (sgemm's packing reads the windows instead of the columns).
//!
//! Tasks are (image, run of [`RUN`] positions); the weight's gradient is a partial sum per (image, [`GROUP`] runs)
//! added in order, and every output value one task's, so the bits do not depend on the threads.

use rayon::prelude::*;

use super::padded::padded_maps;
use super::scratch::{scratch, Scratch};
use super::zeros;
use crate::nn::conv2d::Geometry;
use crate::nn::fused::SharedMut;
use crate::nn::kernels::sgemm::{in_place_blocks, sgemm_ab_rows, sgemm_wt_arows, Blocks, NR};
use crate::nn::kernels::{level, Level};

/// Positions a task multiplies at once: one of sgemm's column blocks.
const RUN: usize = 512;
/// Runs whose weight-gradient products add into one partial sum.
const GROUP: usize = 8;
/// The weight gradient's depth blocks (positions): sgemm's usual depth.
const GRAD_DEPTH: usize = 256;

/// Whether this path takes a convolution of geometry `g`: stride 1, not upsampled, padding under the kernel (so
/// that the input gradient's padding k - 1 - padding exists), a non-empty input, on a CPU that runs sgemm.
pub(crate) fn applies(g: &Geometry) -> bool {
    g.stride() == 1 && g.up() == 1 && g.padding() < g.kernel && g.h * g.w > 0 && level() == Level::Avx512
}

/// `b` images of `maps` maps each, every map zero-padded into a plane of `rows` × `stride` floats, followed by
/// `kernel` zeros: the dropped positions of the last map's last run read up to k - 2 floats past its plane.
struct Planes {
    data: Scratch,
    rows: usize,
    stride: usize,
}

impl Planes {
    /// `maps` maps of (h, w) from `src` placed at (top, left) of zeroed planes.
    fn new(
        src: &[f32],
        maps: usize,
        hw: (usize, usize),
        at: (usize, usize),
        (rows, stride): (usize, usize),
        kernel: usize,
    ) -> Self {
        Self { data: padded_maps(src, maps, hw, 1, at, (rows, stride), kernel), rows, stride }
    }

    fn plane(&self) -> usize {
        self.rows * self.stride
    }

    /// Where tap (c, ky, kx) of a k×k window over `maps` maps starts, from its output position: the shifted
    /// rows of the columns.
    fn taps(&self, maps: usize, k: usize) -> Vec<usize> {
        let plane = self.plane();
        (0..maps * k * k).map(|t| (t / (k * k)) * plane + (t % (k * k) / k) * self.stride + t % k).collect()
    }
}

/// out (b, co, oh, ow) ← [bias +] the valid k×k convolution of `src` (b images of ci planes) with `weight`
/// (co, ci·k·k), where oh, ow = src's rows, stride - (k - 1).
fn convolve(src: &Planes, ci: usize, k: usize, weight: &[f32], bias: Option<&[f32]>, b: usize, out: &mut [f32]) {
    let taps = ci * k * k;
    let co = weight.len() / taps.max(1);
    let (oh, ow, stride) = (src.rows + 1 - k, src.stride + 1 - k, src.stride);
    let (positions, image) = (oh * stride, ci * src.plane());
    assert_eq!(out.len(), b * co * oh * ow);
    if positions == 0 || co == 0 {
        return;
    }
    let table = src.taps(ci, k);
    let runs = positions.div_ceil(RUN);
    let dst = SharedMut(out.as_mut_ptr());
    (0..b * runs).into_par_iter().for_each_init(
        || scratch(co * RUN),
        |buf, t| {
            let (i, j0) = (t / runs, t % runs * RUN);
            let n = RUN.min(positions - j0);
            debug_assert!(i * image + j0 + n + table.last().copied().unwrap_or(0) <= src.data.len());
            // SAFETY: the level is AVX-512 (`applies`); W holds co·taps values, the buffer co·n; each tap's row
            // reads n values from src at image i's offset + j0 + table[tap] ≤ the planes' end + k - 2, inside their
            // k zeros after it.
            unsafe {
                let b_rows = src.data.as_ptr().add(i * image + j0);
                let (a, c) = (weight.as_ptr(), buf.as_mut_ptr());
                sgemm_ab_rows(in_place_blocks(co, RUN), co, n, taps, a, taps, b_rows, &table, c, n, false, 1);
            }
            // The run's positions past Wo are dropped; the others land on their segments of rows y of the output,
            // which only this task writes.
            let (y0, y1) = (j0 / stride, (j0 + n - 1) / stride);
            for y in y0..=y1 {
                let (x0, x1) =
                    (j0.max(y * stride) - y * stride, (j0 + n).min(y * stride + ow).saturating_sub(y * stride));
                if x0 >= x1 {
                    continue;
                }
                let from = y * stride + x0 - j0;
                for c in 0..co {
                    let add = bias.map_or(0.0, |bias| bias[c]);
                    // SAFETY: (i, c, y, x0..x1) lies inside `out`, written by this task only (see above).
                    let row = unsafe {
                        std::slice::from_raw_parts_mut(dst.get().add(((i * co + c) * oh + y) * ow + x0), x1 - x0)
                    };
                    row.iter_mut().zip(&buf[c * n + from..][..x1 - x0]).for_each(|(o, v)| *o = v + add);
                }
            }
        },
    );
}

/// y = conv(x) + bias into `out` (b, c_out, Ho·Wo).
pub(super) fn forward(g: Geometry, x: &[f32], weight: &[f32], bias: &[f32], b: usize, out: &mut [f32]) {
    let (k, p) = (g.kernel, g.padding());
    let src = Planes::new(x, b * g.channels, (g.h, g.w), (p, p), (g.h + 2 * p, g.w + 2 * p), k);
    convolve(&src, g.channels, k, weight, Some(bias), b, out);
}

/// The input's and the weight's gradients (each empty unless wanted).
pub(super) fn backward(
    g: Geometry,
    x: &[f32],
    weight: &[f32],
    dy: &[f32],
    b: usize,
    (want_dx, want_dw): (bool, bool),
) -> (Vec<f32>, Vec<f32>) {
    let (ci, k, p) = (g.channels, g.kernel, g.padding());
    let taps = ci * k * k;
    let co = weight.len() / taps.max(1);
    let (oh, ow) = g.out_hw();
    if co == 0 || oh * ow == 0 {
        return (zeros(if want_dx { x.len() } else { 0 }), vec![0f32; if want_dw { co * taps } else { 0 }]);
    }
    // dy padded by q = k - 1 - p on every side: the input gradient's source. Its row stride is the padded
    // input's when 2p = k - 1 (the "same" convolutions), and then it also serves the weight's gradient: output
    // (y, x) lies q rows and q columns in, and the k - 1 dropped positions of a row read its padding's zeros.
    let q = k - 1 - p;
    let padded_dy = (want_dx || (want_dw && ow + 2 * q == g.w + 2 * p))
        .then(|| Planes::new(dy, b * co, (oh, ow), (q, q), (oh + 2 * q, ow + 2 * q), k));
    let mut dx = zeros(if want_dx { x.len() } else { 0 });
    if let (true, Some(src)) = (want_dx, &padded_dy) {
        // Convolved with the kernel flipped and its channel axes swapped: (ci, co·k·k).
        let flipped: Vec<f32> = (0..ci * co * k * k)
            .map(|t| {
                let (c, o, tap) = (t / (co * k * k), t / (k * k) % co, t % (k * k));
                weight[(o * ci + c) * k * k + (k * k - 1 - tap)]
            })
            .collect();
        convolve(src, co, k, &flipped, None, b, &mut dx);
    }
    let dw = if want_dw {
        let src = Planes::new(x, b * g.channels, (g.h, g.w), (p, p), (g.h + 2 * p, g.w + 2 * p), k);
        match padded_dy.filter(|d| d.stride == src.stride) {
            Some(d) => weight_grad(&src, ci, k, (&d, q * d.stride + q), co, (oh, b)),
            // dy on the padded input's stride, zeros past Wo.
            None => weight_grad(
                &src,
                ci,
                k,
                (&Planes::new(dy, b * co, (oh, ow), (0, 0), (oh, src.stride), 0), 0),
                co,
                (oh, b),
            ),
        }
    } else {
        Vec::new()
    };
    (dx, dw)
}

/// dW (co, ci·k·k) = Σ over images and positions of dy · colsᵀ, the columns read in place from `src` (the padded
/// input, ci maps an image) and dy from `dy` (co maps an image, output (y, x) at `offset` + y·stride + x of its
/// map, on src's stride, zeros at the dropped positions). Made as dWᵀ = cols · dyᵀ: the columns' rows are then
/// sgemm's A, copied as they are, and dy (co rows) the operand it transposes; as dy · colsᵀ the tall columns were
/// the transposed one (its pack ~7% of the discriminator's step on one thread).
fn weight_grad(
    src: &Planes,
    ci: usize,
    k: usize,
    (dy, offset): (&Planes, usize),
    co: usize,
    (oh, b): (usize, usize),
) -> Vec<f32> {
    let taps = ci * k * k;
    let table = src.taps(ci, k);
    let (positions, image, dy_image) = (oh * src.stride, ci * src.plane(), co * dy.plane());
    let runs = positions.div_ceil(RUN);
    // At most GROUP runs a group, as even as they divide (the threads share the groups out).
    let groups = runs.div_ceil(GROUP);
    let per = runs.div_ceil(groups);
    let partials: Vec<Vec<f32>> = (0..b * groups)
        .into_par_iter()
        .map(|t| {
            let (i, first) = (t / groups, t % groups * per);
            let mut part = vec![0f32; taps * co];
            for r in first..(first + per).min(runs) {
                let (j0, n) = (r * RUN, RUN.min(positions - r * RUN));
                debug_assert!(i * image + j0 + n + table.last().copied().unwrap_or(0) <= src.data.len());
                debug_assert!(i * dy_image + offset + (co - 1) * dy.plane() + j0 + n <= dy.data.len());
                // SAFETY: the level is AVX-512 (`applies`); each tap's row of the columns reads n values inside the
                // padded input and its k zeros after it (see `convolve`); dy's co rows of image i read n values
                // from offset + j0 on, inside its map (the last at offset + oh·stride - 1, within the map's
                // padding); the partial sum holds taps·co values.
                unsafe {
                    let a = src.data.as_ptr().add(i * image + j0);
                    let w = dy.data.as_ptr().add(i * dy_image + offset + j0);
                    // All of C_out in one column block, so that each window row is copied once per depth block.
                    let blocks = Blocks { kc: GRAD_DEPTH, nc: co.next_multiple_of(NR) };
                    let c = part.as_mut_ptr();
                    sgemm_wt_arows(blocks, taps, co, n, a, &table, w, dy.plane(), c, co, r != first, 1);
                }
            }
            part
        })
        .collect();
    let mut dw_t = vec![0f32; taps * co];
    for part in &partials {
        dw_t.iter_mut().zip(part).for_each(|(d, v)| *d += v);
    }
    (0..co * taps).map(|j| dw_t[(j % taps) * co + j / taps]).collect()
}
