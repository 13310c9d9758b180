//! The not-exact convolution's forward and input gradient for narrow layers (few channels, stride 1), computed
//! directly from a zero-padded copy of the input instead of im2col + gemm + col2im.
//!
//! The pixel decoder's convolutions have 8-32 channels at up to 256x256: as products they are (C_out = 8..32) x
//! (C_in·9 = 72..288) x (65536 positions), a poor fit for the gemm crate (its microkernel is 64 rows tall, the
//! inner dimension is short), and the columns are 9 times the input, copied out (im2col) for the forward and the
//! weight's gradient and scattered back (col2im) for the input's: in a 1-thread profile of the stage-2 decoder's
//! forward + backward, im2col, col2im and their copies were ~40% of the time, the gemm ~25%. Here an output value is
//! `bias + Σ_ci Σ_ky Σ_kx w · x_padded`, the products accumulated in registers for a block of [`CO`] output
//! channels by [`XS`] adjacent positions, reading the padded input (about 1x the input, not 9x) in place.
//!
//! The input's gradient of a stride-1 convolution is itself one: dy, padded by k - 1 - padding, convolved with the
//! kernel flipped in both axes and with its channel axes swapped; an upsampled (x2 nearest) input's gradient is
//! then the sum over each 2x2 block. The weight's gradient is a sum over positions of dy times the padded input
//! shifted by each tap, read in place too ([`weight_grad`]): through the bands (im2col, then the gemm crate's
//! 16-row kernel on 8-16 output channels) it was a third of the stage-2 decoder's forward + backward on one thread.
//!
//! Each output value is one fixed-order sum and each task writes its own outputs, so the bits do not depend on
//! the threads.

use rayon::prelude::*;

use super::padded::padded_maps;
use super::scratch::{scratch, Scratch};
use crate::nn::conv2d::Geometry;
use crate::nn::fused::SharedMut;
use crate::nn::kernels::dispatch;

/// Output channels a task's accumulators hold.
const CO: usize = 8;
/// Adjacent output positions of a row an output channel's accumulators hold: 4 AVX-512 registers.
const XS: usize = 64;
/// Widest layer taken: C_in·k² (the sum per output value) and C_out at most these. Measured on the stage-2 step
/// at 1 thread: the pixel decoder's 8- and 16-channel layers go faster here (its decoder forward + backward 0.33
/// -> 0.27 CPU s), the discriminator's 32-channel ones at 256x256 slower (its step 0.6 -> 0.7 s with 32 here): their
/// products are tall enough for the gemm crate.
const MAX_TAPS: usize = 16 * 9;
const MAX_OUT: usize = 16;
/// Output rows a forward task makes: enough work per task to outweigh its scheduling.
const TASK_ROWS: usize = 8;

/// Whether the direct path takes a convolution of geometry `g` with `c_out` output channels.
pub(crate) fn applies(g: &Geometry, c_out: usize) -> bool {
    g.stride() == 1
        && g.padding() < g.kernel
        && g.channels * g.kernel * g.kernel <= MAX_TAPS
        && c_out <= MAX_OUT
        && g.up() <= 2
}

/// out (B, C_out, Ho, Wo) ← conv(x) + bias for `x` (B, C_in, H, W) of geometry `g` (stride 1; upsampled by
/// `g.up()`), `weight` (C_out, C_in, k, k).
pub(crate) fn forward(g: Geometry, x: &[f32], weight: &[f32], bias: &[f32], b: usize, out: &mut [f32]) {
    let c_out = bias.len();
    let padded = Padded::new(g.channels, (g.h, g.w), g.up(), g.padding(), g.kernel, g.out_hw());
    let src = padded.fill(x, b);
    let w = pack(weight, c_out, g.channels, g.kernel, false);
    run(&padded, &src, &w, bias, b, c_out, out);
}

/// dx (B, C_in, H, W) ← the input's gradient of [`forward`] from dy (B, C_out, Ho, Wo).
pub(super) fn input_grad(g: Geometry, weight: &[f32], dy: &[f32], b: usize, c_out: usize, dx: &mut [f32]) {
    let (oh, ow) = g.out_hw();
    let (k, up) = (g.kernel, g.up());
    let (uh, uw) = (g.h * up, g.w * up);
    let padded = Padded::new(c_out, (oh, ow), 1, k - 1 - g.padding(), k, (uh, uw));
    let src = padded.fill(dy, b);
    let w = pack(weight, c_out, g.channels, k, true);
    let zero = vec![0f32; g.channels];
    if up == 1 {
        return run(&padded, &src, &w, &zero, b, g.channels, dx);
    }
    let mut dx_up = scratch(b * g.channels * uh * uw);
    run(&padded, &src, &w, &zero, b, g.channels, &mut dx_up[..b * g.channels * uh * uw]);
    // Each stored input value was read by the up x up block it was copied to.
    dx.par_chunks_mut(g.h * g.w).zip(dx_up.par_chunks(uh * uw)).for_each(|(d, u)| {
        for (i, d) in d.iter_mut().enumerate() {
            let (y, x) = (i / g.w * up, i % g.w * up);
            *d = (0..up).flat_map(|a| (0..up).map(move |c| (a, c))).fold(0f32, |s, (a, c)| s + u[(y + a) * uw + x + c]);
        }
    });
}

/// dW (C_out, C_in, k, k) ← the weight's gradient of [`forward`] from dy (B, C_out, Ho, Wo): Σ over images and
/// positions of dy times the padded input shifted by each tap, read in place like the forward reads it. One task
/// per (image, band of [`TASK_ROWS`] output rows), each a partial sum, added in task order.
pub(super) fn weight_grad(g: Geometry, x: &[f32], dy: &[f32], b: usize, c_out: usize) -> Vec<f32> {
    let (oh, ow) = g.out_hw();
    let k = g.kernel;
    let padded = Padded::new(g.channels, (g.h, g.w), g.up(), g.padding(), k, (oh, ow));
    let src = padded.fill(x, b);
    // dy's rows on the padded maps' width with zeros past Wo, so the positions there add nothing.
    let width = padded.stride + 1 - k;
    let dy_w = padded_maps(dy, b * c_out, (oh, ow), 1, (0, 0), (oh, width), 0);
    let taps = g.channels * k * k;
    let bands = oh.div_ceil(TASK_ROWS);
    let plane = padded.plane();
    let partials: Vec<Vec<f32>> = (0..b * bands)
        .into_par_iter()
        .map(|t| {
            let (i, band) = (t / bands, t % bands);
            let rows = band * TASK_ROWS..oh.min(band * TASK_ROWS + TASK_ROWS);
            let img = &src[i * g.channels * plane..][..g.channels * plane];
            let dy_i = &dy_w[i * c_out * oh * width..][..c_out * oh * width];
            let mut part = vec![0f32; c_out * taps];
            grad_rows(&mut part, img, dy_i, (plane, padded.stride, width, oh), (rows.start, rows.end), k);
            part
        })
        .collect();
    let mut dw = vec![0f32; c_out * taps];
    for part in &partials {
        dw.iter_mut().zip(part).for_each(|(d, v)| *d += v);
    }
    dw
}

/// Output channels and kernel columns whose weight-gradient sums [`grad_rows`] keeps at once: 4 x 3 accumulators
/// of [`LANES`] positions, sharing each load of dy (4) and of the input (3).
const GO: usize = 4;
const GX: usize = 3;
const LANES: usize = 16;

dispatch! {
    /// part (C_out, C_in·k·k) ← Σ over output rows y0..y1 and their `width` positions of dy times the padded maps
    /// `src` at each tap. dims: a padded map's size and row stride, the positions' width (a multiple of
    /// [`LANES`]) and Ho, dy's rows per map.
    fn grad_rows(
        part: &mut [f32],
        src: &[f32],
        dy: &[f32],
        dims: (usize, usize, usize, usize),
        rows: (usize, usize),
        k: usize,
    ) {
        let (plane, stride, width, oh) = dims;
        let (y0, y1) = rows;
        let channels = src.len() / plane;
        let c_out = dy.len() / (oh * width);
        let taps = channels * k * k;
        let zeros = vec![0f32; width];
        for o0 in (0..c_out).step_by(GO) {
            for ci in 0..channels {
                for ky in 0..k {
                    for kx0 in (0..k).step_by(GX) {
                        // GO x GX lane-wise running sums, added up in lane order at the end: a fixed order at every
                        // level. Twelve arrays of their own, each indexed only by the unrolled lane: as one array
                        // indexed by (output, column) below, LLVM kept the sums in memory and stored (or loaded and
                        // stored) every one of them on each step (15 GFLOP/s on the pixel decoder's 8-channel layers).
                        let [mut a0, mut a1, mut a2, mut a3, mut a4, mut a5] = [[0f32; LANES]; 6];
                        let [mut a6, mut a7, mut a8, mut a9, mut a10, mut a11] = [[0f32; LANES]; 6];
                        // Past the kernel's last column, its last (that sum is dropped).
                        let kx = |c: usize| (kx0 + c).min(k - 1);
                        for y in y0..y1 {
                            let line = &src[ci * plane + (y + ky) * stride..][..stride];
                            // Past C_out, zeros.
                            let d = |o: usize| {
                                if o0 + o < c_out {
                                    &dy[((o0 + o) * oh + y) * width..][..width]
                                } else {
                                    &zeros[..]
                                }
                            };
                            let (d0, d1, d2, d3) = (d(0), d(1), d(2), d(3));
                            let (l0, l1, l2) = (&line[kx(0)..], &line[kx(1)..], &line[kx(2)..]);
                            for x in (0..width).step_by(LANES) {
                                let (d0, d1) = (&d0[x..x + LANES], &d1[x..x + LANES]);
                                let (d2, d3) = (&d2[x..x + LANES], &d3[x..x + LANES]);
                                let (x0, x1, x2) = (&l0[x..x + LANES], &l1[x..x + LANES], &l2[x..x + LANES]);
                                for j in 0..LANES {
                                    a0[j] = d0[j].mul_add(x0[j], a0[j]);
                                    a1[j] = d0[j].mul_add(x1[j], a1[j]);
                                    a2[j] = d0[j].mul_add(x2[j], a2[j]);
                                    a3[j] = d1[j].mul_add(x0[j], a3[j]);
                                    a4[j] = d1[j].mul_add(x1[j], a4[j]);
                                    a5[j] = d1[j].mul_add(x2[j], a5[j]);
                                    a6[j] = d2[j].mul_add(x0[j], a6[j]);
                                    a7[j] = d2[j].mul_add(x1[j], a7[j]);
                                    a8[j] = d2[j].mul_add(x2[j], a8[j]);
                                    a9[j] = d3[j].mul_add(x0[j], a9[j]);
                                    a10[j] = d3[j].mul_add(x1[j], a10[j]);
                                    a11[j] = d3[j].mul_add(x2[j], a11[j]);
                                }
                            }
                        }
                        let total = |a: [f32; LANES]| a.iter().fold(0f32, |s, v| s + v);
                        let sums = [a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11].map(total);
                        for o in 0..c_out.saturating_sub(o0).min(GO) {
                            for c in 0..k.saturating_sub(kx0).min(GX) {
                                part[(o0 + o) * taps + (ci * k + ky) * k + kx0 + c] = sums[o * GX + c];
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The zero-padded copy of a batch of (C, H, W) maps, upsampled, with rows wide enough that every block of
/// [`XS`] outputs reads within them.
struct Padded {
    channels: usize,
    hw: (usize, usize),
    up: usize,
    pad: usize,
    kernel: usize,
    out: (usize, usize),
    /// Row stride and rows of a padded map.
    stride: usize,
    rows: usize,
}

impl Padded {
    fn new(channels: usize, hw: (usize, usize), up: usize, pad: usize, kernel: usize, out: (usize, usize)) -> Self {
        let stride = out.1.next_multiple_of(XS) + kernel - 1;
        Self { channels, hw, up, pad, kernel, out, stride, rows: out.0 + kernel - 1 }
    }

    fn plane(&self) -> usize {
        self.rows * self.stride
    }

    /// The padded copy of `b` images of `x`.
    fn fill(&self, x: &[f32], b: usize) -> Scratch {
        let (rows, stride) = (self.rows, self.stride);
        padded_maps(x, b * self.channels, self.hw, self.up, (self.pad, self.pad), (rows, stride), 0)
    }
}

/// The weights in the kernel's order: per block of [`CO`] output channels, per (ci, ky, kx), the block's CO
/// values (zero past C_out). `transposed`: those of the input's gradient, the kernel flipped and its channel axes
/// swapped.
fn pack(weight: &[f32], c_out: usize, c_in: usize, k: usize, transposed: bool) -> Vec<f32> {
    let (outs, ins) = if transposed { (c_in, c_out) } else { (c_out, c_in) };
    let kk = k * k;
    let mut w = vec![0f32; outs.div_ceil(CO) * CO * ins * kk];
    for o in 0..outs {
        for i in 0..ins {
            for t in 0..kk {
                let v =
                    if transposed { weight[(i * c_in + o) * kk + kk - 1 - t] } else { weight[(o * c_in + i) * kk + t] };
                w[((o / CO * ins + i) * kk + t) * CO + o % CO] = v;
            }
        }
    }
    w
}

/// out (B, outs, Ho, Wo) ← bias + the direct convolution of `src` (padded, `p.channels` maps an image) with the
/// packed weights; one task a (image, block of output channels, band of rows).
fn run(p: &Padded, src: &[f32], w: &[f32], bias: &[f32], b: usize, outs: usize, out: &mut [f32]) {
    let (oh, ow) = p.out;
    let blocks = outs.div_ceil(CO);
    let bands = oh.div_ceil(TASK_ROWS);
    let (plane, taps) = (p.plane(), p.channels * p.kernel * p.kernel);
    assert_eq!(out.len(), b * outs * oh * ow);
    let dst = SharedMut(out.as_mut_ptr());
    (0..b * blocks * bands).into_par_iter().for_each_init(
        || vec![0f32; CO * ow.next_multiple_of(XS)],
        |row, t| {
            let (i, blk, band) = (t / (blocks * bands), t / bands % blocks, t % bands);
            let img = &src[i * p.channels * plane..][..p.channels * plane];
            let wb = &w[blk * taps * CO..][..taps * CO];
            let mut bias_b = [0f32; CO];
            let co = (blk * CO..outs.min(blk * CO + CO)).len();
            bias_b[..co].copy_from_slice(&bias[blk * CO..blk * CO + co]);
            for y in band * TASK_ROWS..oh.min(band * TASK_ROWS + TASK_ROWS) {
                conv_row(row, img, wb, &bias_b, (plane, p.stride), y, p.kernel);
                for c in 0..co {
                    // SAFETY: row y of output channel blk·CO + c of image i: inside `out` (asserted above), and
                    // written by this task only.
                    let o = unsafe {
                        std::slice::from_raw_parts_mut(dst.get().add(((i * outs + blk * CO + c) * oh + y) * ow), ow)
                    };
                    let width = row.len() / CO;
                    o.copy_from_slice(&row[c * width..c * width + ow]);
                }
            }
        },
    );
}

dispatch! {
    /// row (CO rows of the padded width) ← bias + Σ over the taps of the packed weights times the padded maps,
    /// for output row y. (plane, stride): a padded map's size and row stride.
    fn conv_row(row: &mut [f32], src: &[f32], w: &[f32], bias: &[f32; CO], dims: (usize, usize), y: usize, k: usize) {
        let (plane, stride) = dims;
        let width = row.len() / CO;
        let channels = src.len() / plane;
        // Two output channels by XS positions at a time: 2·XS/16 independent AVX-512 accumulators sharing each
        // load of the input (written as two plain arrays, which the compiler keeps in registers along x; an
        // array of CO of them it vectorised across the channels, with gathers).
        for c in (0..CO).step_by(2) {
            for x0 in (0..width).step_by(XS) {
                let (mut a0, mut a1) = ([bias[c]; XS], [bias[c + 1]; XS]);
                for ci in 0..channels {
                    for ky in 0..k {
                        let line = &src[ci * plane + (y + ky) * stride + x0..];
                        for kx in 0..k {
                            let xs: &[f32; XS] = line[kx..kx + XS].try_into().expect("XS values");
                            let t = ((ci * k + ky) * k + kx) * CO + c;
                            let (w0, w1) = (w[t], w[t + 1]);
                            for j in 0..XS {
                                a0[j] = xs[j].mul_add(w0, a0[j]);
                                a1[j] = xs[j].mul_add(w1, a1[j]);
                            }
                        }
                    }
                }
                row[c * width + x0..][..XS].copy_from_slice(&a0);
                row[(c + 1) * width + x0..][..XS].copy_from_slice(&a1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in [-1, 1).
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    /// The convolution, its input's and its weight's gradients (for the output gradient `dy`) as plain f64 loops
    /// over the definition: out[o][y][x] = bias[o] + Σ w[o][i][ky][kx] · up(x)[i][y + ky - pad][x + kx - pad].
    fn reference(
        g: &Geometry,
        c_out: usize,
        x: &[f32],
        w: &[f32],
        bias: &[f32],
        dy: &[f32],
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let (k, up, pad) = (g.kernel, g.up(), g.padding() as isize);
        let (oh, ow) = g.out_hw();
        let (c_in, h, wd) = (g.channels, g.h, g.w);
        let mut out = vec![0f64; c_out * oh * ow];
        let mut dx = vec![0f64; x.len()];
        let mut dw = vec![0f64; w.len()];
        for o in 0..c_out {
            for y in 0..oh {
                for xo in 0..ow {
                    let mut s = f64::from(bias[o]);
                    for i in 0..c_in {
                        for ky in 0..k {
                            for kx in 0..k {
                                let (uy, ux) = (y as isize + ky as isize - pad, xo as isize + kx as isize - pad);
                                if uy < 0 || ux < 0 || uy >= (h * up) as isize || ux >= (wd * up) as isize {
                                    continue;
                                }
                                let src = (i * h + uy as usize / up) * wd + ux as usize / up;
                                let wi = ((o * c_in + i) * k + ky) * k + kx;
                                let (wv, d) = (f64::from(w[wi]), f64::from(dy[(o * oh + y) * ow + xo]));
                                s += wv * f64::from(x[src]);
                                dx[src] += wv * d;
                                dw[wi] += d * f64::from(x[src]);
                            }
                        }
                    }
                    out[(o * oh + y) * ow + xo] = s;
                }
            }
        }
        (out, dx, dw)
    }

    fn max_rel_err(got: &[f32], want: &[f64]) -> f64 {
        let scale = want.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-12);
        got.iter().zip(want).fold(0f64, |m, (g, w)| m.max((f64::from(*g) - w).abs())) / scale
    }

    /// Forward, input and weight gradients against the f64 loops, one image: 1x1, 3x3 and 5x5 kernels (the
    /// weight gradient's column blocks of [`GX`] full, short and past the kernel), every padding the path takes,
    /// upsampled or not, output channels not a multiple of [`CO`] or [`GO`], widths not a multiple of [`XS`] and
    /// wider than one block.
    #[test]
    fn matches_the_definition_in_f64() {
        let cases = [(3, 5, 3, 1, 1, 7, 9), (8, 8, 3, 1, 2, 5, 70), (2, 16, 1, 0, 1, 3, 65), (4, 3, 5, 2, 1, 9, 6)];
        for (seed, (c_in, c_out, k, pad, up, h, w)) in cases.into_iter().enumerate() {
            for pad in [pad, 0, k - 1] {
                let g = Geometry::new(c_in, (h, w), up, k, 1, pad);
                assert!(applies(&g, c_out));
                let (oh, ow) = g.out_hw();
                let seed = seed as u64 * 10;
                let (x, wt) = (values(c_in * h * w, seed + 1), values(c_out * c_in * k * k, seed + 2));
                let (bias, dy) = (values(c_out, seed + 3), values(c_out * oh * ow, seed + 4));
                let (want, want_dx, want_dw) = reference(&g, c_out, &x, &wt, &bias, &dy);
                let mut out = vec![0f32; c_out * oh * ow];
                forward(g, &x, &wt, &bias, 1, &mut out);
                let mut dx = vec![0f32; x.len()];
                input_grad(g, &wt, &dy, 1, c_out, &mut dx);
                let what = format!("{c_in}->{c_out} {k}x{k} pad {pad} up {up} {h}x{w}");
                assert!(max_rel_err(&out, &want) < 1e-6, "{what}: forward {}", max_rel_err(&out, &want));
                assert!(max_rel_err(&dx, &want_dx) < 1e-6, "{what}: dx {}", max_rel_err(&dx, &want_dx));
                let dw = weight_grad(g, &x, &dy, 1, c_out);
                assert!(max_rel_err(&dw, &want_dw) < 1e-6, "{what}: dw {}", max_rel_err(&dw, &want_dw));
            }
        }
    }

    /// Two images at once give each image's own result, and 1 and 3 threads the same bits.
    #[test]
    fn batches_and_threads_do_not_change_the_bits() {
        let g = Geometry::new(8, (11, 70), 1, 3, 1, 1);
        let (oh, ow) = g.out_hw();
        let (x, wt, bias) = (values(2 * 8 * 11 * 70, 1), values(16 * 8 * 9, 2), values(16, 3));
        let dy = values(2 * 16 * oh * ow, 4);
        let run = |threads: usize, b: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                let mut out = vec![0f32; b * 16 * oh * ow];
                forward(g, &x[..b * 8 * 11 * 70], &wt, &bias, b, &mut out);
                let mut dx = vec![0f32; b * 8 * 11 * 70];
                input_grad(g, &wt, &dy[..b * 16 * oh * ow], b, 16, &mut dx);
                let dw = weight_grad(g, &x[..b * 8 * 11 * 70], &dy[..b * 16 * oh * ow], b, 16);
                let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                (bits(&out), bits(&dx), bits(&dw))
            })
        };
        let (one, three) = (run(1, 2), run(3, 2));
        assert_eq!(one, three);
        let first = run(1, 1);
        assert_eq!(first.0[..], one.0[..first.0.len()]);
        assert_eq!(first.1[..], one.1[..first.1.len()]);
    }

    // The row kernel at each level against the baseline, bit for bit.
    crate::nn::kernels::at_every_level!(conv_row_matches_the_baseline_at_every_level, |level| {
        use crate::nn::kernels::{assert_same_bits, at_baseline_and};
        let (channels, k, width) = (3, 3, 2 * XS);
        let stride = width + k - 1;
        let plane = (4 + k - 1) * stride;
        let (src, w) = (values(channels * plane, 5), values(channels * k * k * CO, 6));
        let bias: [f32; CO] = values(CO, 7).try_into().unwrap();
        let (want, got) = at_baseline_and(level, || {
            let mut row = vec![0f32; CO * width];
            conv_row(&mut row, &src, &w, &bias, (plane, stride), 2, k);
            row
        });
        assert_same_bits(level, &want, &got, "conv_row");
    });

    // The weight-gradient kernel at each level against the baseline, bit for bit (5 output channels and a 5x5
    // kernel: blocks of GO and GX with tails).
    crate::nn::kernels::at_every_level!(grad_rows_matches_the_baseline_at_every_level, |level| {
        use crate::nn::kernels::{assert_same_bits, at_baseline_and};
        let (channels, c_out, k, width, oh) = (2, 5, 5, 2 * XS, 6);
        let stride = width + k - 1;
        let plane = (oh + k - 1) * stride;
        let (src, dy) = (values(channels * plane, 8), values(c_out * oh * width, 9));
        let (want, got) = at_baseline_and(level, || {
            let mut part = vec![0f32; c_out * channels * k * k];
            grad_rows(&mut part, &src, &dy, (plane, stride, width, oh), (1, 5), k);
            part
        });
        assert_same_bits(level, &want, &got, "grad_rows");
    });
}
