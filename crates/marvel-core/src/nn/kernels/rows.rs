//! Row kernels on contiguous f32 data for the inference path: exact (erf) GELU, tanh, exp for softmax, layer norm.
//!
//! candle evaluates `gelu_erf` and `exp` one element at a time through libm, on one thread. These loops call the
//! branch-free forms of `math` and are compiled per SIMD level (`dispatch!`), so a binary built for baseline
//! x86-64 still runs AVX-512 where the CPU has it.
//!
//! Each function works on one block of rows; callers split the rows across threads.

use super::dispatch;
use super::math::{exp, gelu, max, normal_cdf, sum, tanh, LANES};

dispatch! {
    /// dst ← gelu(src).
    pub fn gelu_into(dst: &mut [f32], src: &[f32]) {
        for (o, x) in dst.iter_mut().zip(src) {
            *o = gelu(*x);
        }
    }
}

dispatch! {
    /// dx ← dy · gelu'(x), gelu'(x) = Φ(x) + x·φ(x).
    pub fn gelu_backward(dx: &mut [f32], dy: &[f32], x: &[f32]) {
        // 1/√(2π)
        const INV_SQRT_2PI: f32 = 0.398_942_3;
        for ((o, g), x) in dx.iter_mut().zip(dy).zip(x) {
            let density = INV_SQRT_2PI * exp(-0.5 * x * x);
            *o = g * x.mul_add(density, normal_cdf(*x));
        }
    }
}

dispatch! {
    /// In place, row by row: x ← gelu(x + bias) (`bias.len()` columns per row).
    pub fn bias_gelu(xs: &mut [f32], bias: &[f32]) {
        for row in xs.chunks_exact_mut(bias.len()) {
            for (v, b) in row.iter_mut().zip(bias) {
                *v = gelu(*v + b);
            }
        }
    }
}

dispatch! {
    /// In place: x ← tanh(x).
    pub fn tanh_rows(xs: &mut [f32]) {
        for v in xs.iter_mut() {
            *v = tanh(*v);
        }
    }
}

dispatch! {
    /// dst ← src + bias, row by row (`bias.len()` columns per row): the residual plus the bias of the linear layer
    /// whose product is then accumulated onto it.
    pub fn add_bias(dst: &mut [f32], src: &[f32], bias: &[f32]) {
        let d = bias.len();
        for (o, x) in dst.chunks_exact_mut(d).zip(src.chunks_exact(d)) {
            for ((o, x), b) in o.iter_mut().zip(x).zip(bias) {
                *o = x + b;
            }
        }
    }
}

dispatch! {
    /// Rows of `xs` (`cols` wide) ← exp(x - row max), unnormalised; `inv_sums[i]` ← 1 / Σ of row i.
    pub fn softmax_exp_rows(xs: &mut [f32], cols: usize, inv_sums: &mut [f32]) {
        for (row, inv) in xs.chunks_exact_mut(cols).zip(inv_sums.iter_mut()) {
            // s = 1 multiplies exactly: the same bits as without the scale.
            *inv = softmax_exp_row(row, 1.0);
        }
    }
}

dispatch! {
    /// [`softmax_exp_rows`] of s·x (s > 0): attention's 1/√hd applied here, where it costs one multiply per score
    /// already in a register, rather than in a product that has no scale of its own (`sgemm`).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // its one caller runs sgemm, x86-only
    pub fn softmax_exp_scaled_rows(xs: &mut [f32], cols: usize, s: f32, inv_sums: &mut [f32]) {
        for (row, inv) in xs.chunks_exact_mut(cols).zip(inv_sums.iter_mut()) {
            *inv = softmax_exp_row(row, s);
        }
    }
}

/// row ← exp((x - max)·s), s > 0 (so max(s·x) = s·max(x)); returns 1 / Σ row.
#[inline(always)]
fn softmax_exp_row(row: &mut [f32], s: f32) -> f32 {
    let m = max(row);
    for v in row.iter_mut() {
        *v = exp((*v - m) * s);
    }
    1.0 / sum(row)
}

dispatch! {
    /// xs ← xs · s.
    pub fn scale(xs: &mut [f32], s: f32) {
        for v in xs.iter_mut() {
            *v *= s;
        }
    }
}

dispatch! {
    /// Softmax of each row (`cols` wide), in place.
    pub fn softmax_rows(xs: &mut [f32], cols: usize) {
        for row in xs.chunks_exact_mut(cols) {
            let m = max(row);
            for v in row.iter_mut() {
                *v = exp(*v - m);
            }
            let inv = 1.0 / sum(row);
            for v in row.iter_mut() {
                *v *= inv;
            }
        }
    }
}

/// dst ← x - mean(x); returns 1/√(var + eps) with the biased variance of the centred values (two passes, not
/// E[x²] - E[x]², which cancels badly when the mean is large).
#[inline(always)]
fn centre(dst: &mut [f32], x: &[f32], eps: f32) -> f32 {
    let d = x.len() as f32;
    let mean = sum(x) / d;
    for (o, x) in dst.iter_mut().zip(x) {
        *o = x - mean;
    }
    let mut acc = [0f32; LANES];
    let chunks = dst.chunks_exact(LANES);
    let tail = chunks.remainder().iter().map(|c| c * c).sum::<f32>();
    for c in chunks {
        for i in 0..LANES {
            acc[i] += c[i] * c[i];
        }
    }
    let var = (acc.iter().sum::<f32>() + tail) / d;
    1.0 / (var + eps).sqrt()
}

dispatch! {
    /// LayerNorm of each row (`weight.len()` wide) as PyTorch computes it: mean, then the biased variance of the
    /// centred values (two passes, not E[x²] - E[x]², which cancels badly when the mean is large).
    pub fn layer_norm_rows(dst: &mut [f32], src: &[f32], weight: &[f32], bias: &[f32], eps: f32) {
        let d = weight.len();
        for (o, x) in dst.chunks_exact_mut(d).zip(src.chunks_exact(d)) {
            let inv_std = centre(o, x, eps);
            for ((o, w), b) in o.iter_mut().zip(weight).zip(bias) {
                *o = *o * inv_std * w + b;
            }
        }
    }
}

dispatch! {
    /// The backward of `softmax_rows`, in place: for each row of probabilities p and incoming gradient g (`cols`
    /// wide), g ← p ⊙ (g - ⟨g, p⟩).
    pub fn softmax_backward_rows(grad: &mut [f32], probs: &[f32], cols: usize) {
        for (g, p) in grad.chunks_exact_mut(cols).zip(probs.chunks_exact(cols)) {
            let mut acc = [0f32; LANES];
            let chunks = g.chunks_exact(LANES).zip(p.chunks_exact(LANES));
            for (gc, pc) in chunks {
                for i in 0..LANES {
                    acc[i] = gc[i].mul_add(pc[i], acc[i]);
                }
            }
            let tail = cols / LANES * LANES;
            let dot = acc.iter().sum::<f32>() + g[tail..].iter().zip(&p[tail..]).map(|(a, b)| a * b).sum::<f32>();
            for (g, p) in g.iter_mut().zip(p) {
                *g = p * (*g - dot);
            }
        }
    }
}

dispatch! {
    /// The backward of `layer_norm_rows` for a block of rows: dx ← the input's gradient; `dw` and `db` (one
    /// weight's length each) ← Σ over these rows of dy·x̂ and dy. With x̂ = (x - mean)·r, r = 1/√(var + eps) and
    /// g = dy·w: dx = r·(g - mean(g) - x̂·mean(g·x̂)).
    pub fn layer_norm_backward_rows(
        dx: &mut [f32],
        dw: &mut [f32],
        db: &mut [f32],
        x: &[f32],
        dy: &[f32],
        weight: &[f32],
        eps: f32,
    ) {
        let d = weight.len();
        for ((dx, x), dy) in dx.chunks_exact_mut(d).zip(x.chunks_exact(d)).zip(dy.chunks_exact(d)) {
            // The forward's statistics, recomputed the same way; dx holds x̂ meanwhile.
            let r = centre(dx, x, eps);
            let (mut sum_g, mut sum_gx) = ([0f32; LANES], [0f32; LANES]);
            for (j, ((xh, g), w)) in dx.iter_mut().zip(dy).zip(weight).enumerate() {
                *xh *= r;
                let gw = g * w;
                sum_g[j % LANES] += gw;
                sum_gx[j % LANES] = gw.mul_add(*xh, sum_gx[j % LANES]);
            }
            let mean_g = sum_g.iter().sum::<f32>() / d as f32;
            let mean_gx = sum_gx.iter().sum::<f32>() / d as f32;
            for ((((o, g), w), dw), db) in dx.iter_mut().zip(dy).zip(weight).zip(dw.iter_mut()).zip(db.iter_mut()) {
                let xh = *o;
                *dw = g.mul_add(xh, *dw);
                *db += g;
                *o = r * (g * w - mean_g - xh * mean_gx);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_kernels_match_naive_forms() {
        let cols = 37; // not a multiple of the lane count, to exercise the tails
        let xs: Vec<f32> = (0..3 * cols).map(|i| ((i * 7919) % 101) as f32 * 0.1 - 5.0).collect();
        let mut sm = xs.clone();
        softmax_rows(&mut sm, cols);
        let mut un = xs.clone();
        let mut inv = [0f32; 3];
        softmax_exp_rows(&mut un, cols, &mut inv);
        for (row, s) in un.chunks_mut(cols).zip(inv) {
            scale(row, s);
        }
        // The scaled form on x equals the plain one on s·x (s a power of two, so s·x is exact).
        let (mut scaled, mut prescaled, mut inv2) = (xs.clone(), xs.iter().map(|v| v * 0.25).collect::<Vec<_>>(), inv);
        softmax_exp_scaled_rows(&mut scaled, cols, 0.25, &mut inv2);
        softmax_exp_rows(&mut prescaled, cols, &mut inv);
        assert_eq!(inv2, inv, "softmax_exp_scaled_rows' sums");
        assert_eq!(scaled, prescaled, "softmax_exp_scaled_rows");
        for (r, row) in xs.chunks(cols).enumerate() {
            let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
            let z: f64 = row.iter().map(|v| (*v as f64 - m).exp()).sum();
            for c in 0..cols {
                let want = (row[c] as f64 - m).exp() / z;
                assert!((sm[r * cols + c] as f64 - want).abs() < 1e-7, "softmax row {r} col {c}");
                assert!((un[r * cols + c] as f64 - want).abs() < 1e-7, "split softmax row {r} col {c}");
            }
        }

        let w: Vec<f32> = (0..cols).map(|i| 0.5 + i as f32 * 0.01).collect();
        let b: Vec<f32> = (0..cols).map(|i| i as f32 * -0.02).collect();
        // A large common offset: E[x²] - E[x]² would lose ~1% of the variance here (errors ~5e-3), while the
        // two-pass form only pays for the rounding of x itself.
        let shifted: Vec<f32> = xs.iter().map(|v| v + 1000.0).collect();
        let mut ln = vec![0f32; xs.len()];
        layer_norm_rows(&mut ln, &shifted, &w, &b, 1e-5);
        for (r, row) in shifted.chunks(cols).enumerate() {
            let mean = row.iter().map(|v| *v as f64).sum::<f64>() / cols as f64;
            let var = row.iter().map(|v| (*v as f64 - mean).powi(2)).sum::<f64>() / cols as f64;
            for c in 0..cols {
                let want = (row[c] as f64 - mean) / (var + 1e-5).sqrt() * w[c] as f64 + b[c] as f64;
                assert!((ln[r * cols + c] as f64 - want).abs() < 2e-4, "layer norm row {r} col {c}");
            }
        }
    }

    /// Inputs for the level checks: rows of 37 (not a multiple of any vector width, so the tails run), values
    /// from -9 to 9 (both forms of Φ, exp down to e^-18).
    fn inputs(n: usize, seed: usize) -> Vec<f32> {
        (0..n).map(|i| ((i * 7919 + seed * 104_729) % 1801) as f32 * 0.01 - 9.0).collect()
    }

    // Every row kernel at each level against the baseline, bit for bit.
    crate::nn::kernels::at_every_level!(row_kernels_match_the_baseline_at_every_level, |level| {
        use crate::nn::kernels::{assert_same_bits, at_baseline_and};
        let cols = 37;
        let xs = inputs(5 * cols, 1);
        let (g, w, b) = (inputs(5 * cols, 2), inputs(cols, 3), inputs(cols, 4));
        let check = |what: &str, f: &dyn Fn() -> Vec<f32>| {
            let (want, got) = at_baseline_and(level, f);
            assert_same_bits(level, &want, &got, what);
        };
        check("gelu_into", &|| {
            let mut o = vec![0f32; xs.len()];
            gelu_into(&mut o, &xs);
            o
        });
        check("gelu_backward", &|| {
            let mut o = vec![0f32; xs.len()];
            gelu_backward(&mut o, &g, &xs);
            o
        });
        check("bias_gelu", &|| {
            let mut o = xs.clone();
            bias_gelu(&mut o, &b);
            o
        });
        check("tanh_rows", &|| {
            let mut o = xs.clone();
            tanh_rows(&mut o);
            o
        });
        check("add_bias", &|| {
            let mut o = vec![0f32; xs.len()];
            add_bias(&mut o, &xs, &b);
            o
        });
        check("softmax_exp_rows", &|| {
            let (mut o, mut inv) = (xs.clone(), vec![0f32; 5]);
            softmax_exp_rows(&mut o, cols, &mut inv);
            o.extend(inv);
            o
        });
        check("softmax_exp_scaled_rows", &|| {
            let (mut o, mut inv) = (xs.clone(), vec![0f32; 5]);
            softmax_exp_scaled_rows(&mut o, cols, 0.125, &mut inv);
            o.extend(inv);
            o
        });
        check("scale", &|| {
            let mut o = xs.clone();
            scale(&mut o, 0.3);
            o
        });
        check("softmax_rows", &|| {
            let mut o = xs.clone();
            softmax_rows(&mut o, cols);
            o
        });
        check("layer_norm_rows", &|| {
            let mut o = vec![0f32; xs.len()];
            layer_norm_rows(&mut o, &xs, &w, &b, 1e-5);
            o
        });
        check("softmax_backward_rows", &|| {
            let mut p = xs.clone();
            softmax_rows(&mut p, cols);
            let mut o = g.clone();
            softmax_backward_rows(&mut o, &p, cols);
            o
        });
        check("layer_norm_backward_rows", &|| {
            let (mut dx, mut dw, mut db) = (vec![0f32; xs.len()], vec![0f32; cols], vec![0f32; cols]);
            layer_norm_backward_rows(&mut dx, &mut dw, &mut db, &xs, &g, &w, 1e-5);
            dx.extend(dw);
            dx.extend(db);
            dx
        });
    });
}
