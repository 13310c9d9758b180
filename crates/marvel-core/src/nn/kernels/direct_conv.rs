//! A direct 2-D convolution at stride 1 for few channels, on the inference path: the single-stage decoder's
//! `conv_out` (3 -> 3 channels, 3×3, 256×256). candle's CPU conv2d runs it as im2col (a scalar strided copy) and a
//! gemm whose n is the 3 output channels, with the bias added by a baseline-SIMD broadcast: ~9 ms on the EPYC, a
//! fifth of that decoder's time, where the 10.6 MFLOP take well under a millisecond as row sweeps.

use super::dispatch;

/// The geometry of a stride-1 convolution over one image: `c_in` planes of `h`×`w`, a square `k`×`k` kernel,
/// `pad` zeros on every side; the output planes are (h + 2·pad - k + 1) × (w + 2·pad - k + 1).
#[derive(Debug, Clone, Copy)]
pub(crate) struct DirectConv {
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    pub k: usize,
    pub pad: usize,
}

impl DirectConv {
    pub fn out_hw(&self) -> (usize, usize) {
        (self.h + 2 * self.pad + 1 - self.k, self.w + 2 * self.pad + 1 - self.k)
    }
}

dispatch! {
    /// Output rows y0.. (as many as `out` holds) of one output channel: bias, then + weight·input for each input
    /// channel, kernel row and kernel column in that order (one `mul_add` each), a whole output row at a time.
    /// `x`: the image's c_in planes; `weight`: this output channel's (c_in, k, k).
    pub fn direct_conv_rows(out: &mut [f32], y0: usize, x: &[f32], weight: &[f32], bias: f32, g: DirectConv) {
        let (_, ow) = g.out_hw();
        for (r, row) in out.chunks_exact_mut(ow).enumerate() {
            row.fill(bias);
            let y = y0 + r;
            for ci in 0..g.c_in {
                for dy in 0..g.k {
                    // Input row y + dy - pad, when inside the image.
                    let Some(iy) = (y + dy).checked_sub(g.pad).filter(|&iy| iy < g.h) else { continue };
                    let src = &x[(ci * g.h + iy) * g.w..][..g.w];
                    for dx in 0..g.k {
                        let wv = weight[(ci * g.k + dy) * g.k + dx];
                        // Output column o reads input column o + dx - pad: the o for which that is inside.
                        let o0 = g.pad.saturating_sub(dx);
                        let o1 = ow.min((g.w + g.pad).saturating_sub(dx));
                        if o0 >= o1 {
                            continue;
                        }
                        let s0 = o0 + dx - g.pad;
                        for (o, s) in row[o0..o1].iter_mut().zip(&src[s0..s0 + (o1 - o0)]) {
                            *o = wv.mul_add(*s, *o);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(n: usize, seed: usize) -> Vec<f32> {
        (0..n).map(|i| (((i * 37 + seed * 11) % 101) as f32 - 50.0) * 0.02).collect()
    }

    // Against an f64 sum over the zero-padded input, for kernels 1, 3 and 5 with and without padding, on odd
    // sizes; and at each level the same bits as the baseline.
    crate::nn::kernels::at_every_level!(direct_conv_matches_f64_and_the_baseline, |level| {
        use crate::nn::kernels::{assert_same_bits, at_baseline_and};
        for (c_in, h, w, k, pad) in [(3, 11, 13, 3, 1), (2, 9, 20, 5, 2), (3, 7, 5, 3, 0), (1, 6, 33, 1, 0)] {
            let g = DirectConv { c_in, h, w, k, pad };
            let (oh, ow) = g.out_hw();
            let (x, weight) = (inputs(c_in * h * w, 1), inputs(c_in * k * k, 2));
            let bias = 0.25;
            let run = || {
                let mut out = vec![0f32; oh * ow];
                // Two calls of unequal bands, as the caller splits rows across threads.
                let (a, b) = out.split_at_mut(ow * (oh / 3));
                direct_conv_rows(a, 0, &x, &weight, bias, g);
                direct_conv_rows(b, oh / 3, &x, &weight, bias, g);
                out
            };
            let (want, got) = at_baseline_and(level, run);
            assert_same_bits(level, &want, &got, "direct_conv_rows");
            for y in 0..oh {
                for o in 0..ow {
                    let mut sum = bias as f64;
                    for ci in 0..c_in {
                        for dy in 0..k {
                            for dx in 0..k {
                                let (iy, ix) = ((y + dy) as isize - pad as isize, (o + dx) as isize - pad as isize);
                                if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                                    let v = x[(ci * h + iy as usize) * w + ix as usize] as f64;
                                    sum += weight[(ci * k + dy) * k + dx] as f64 * v;
                                }
                            }
                        }
                    }
                    let gotv = got[y * ow + o] as f64;
                    assert!((gotv - sum).abs() < 1e-5, "{g:?} at ({y}, {o}): {gotv} vs {sum}");
                }
            }
        }
    });
}
