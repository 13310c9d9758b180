//! Row kernels on contiguous f32 data for the inference path: exact (erf) GELU, exp for softmax, layer norm.
//!
//! candle evaluates `gelu_erf` and `exp` one element at a time through libm, on one thread. These are
//! branch-free polynomial forms that the compiler vectorises, compiled once per x86 SIMD level and chosen at run
//! time (`simd_dispatch!`), so a binary built for baseline x86-64 still runs AVX-512 where the CPU has it. The
//! polynomials use `mul_add`: one instruction on the AVX2 and AVX-512 paths; on CPUs without FMA (older than
//! 2013) the baseline path gets libm's `fmaf`, slower but exactly as rounded, so every path gives the same bits.
//!
//! Each function works on one block of rows; callers split the rows across threads.

/// Defines `fn $name(args)` that runs `$body` compiled for AVX-512, AVX2+FMA or the build's baseline, whichever
/// the CPU supports. Helpers it calls must be `#[inline(always)]`, or they run without the target features.
macro_rules! simd_dispatch {
    ($(#[$attr:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$attr])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                unsafe fn v4($($arg: $ty),*) $(-> $ret)? { body($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn v3($($arg: $ty),*) $(-> $ret)? { body($($arg),*) }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU supports the features v4 is compiled for.
                    return unsafe { v4($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                    // SAFETY: as above, for v3.
                    return unsafe { v3($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}

/// Lanes of the partial sums in `sum` / `max`: 16 f32 fill one AVX-512 register (two AVX2 ones).
const LANES: usize = 16;

#[inline(always)]
fn sum(xs: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for i in 0..LANES {
            acc[i] += c[i];
        }
    }
    acc.iter().sum::<f32>() + tail.iter().sum::<f32>()
}

#[inline(always)]
fn max(xs: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for i in 0..LANES {
            acc[i] = acc[i].max(c[i]);
        }
    }
    acc.iter().chain(tail).fold(f32::NEG_INFINITY, |m, &v| m.max(v))
}

/// torch.nn.GELU(), x·Φ(x) = x/2·(1 + erf(x/√2)), accurate to ~1 ulp where it matters: under 1.8 ulp for
/// x > 0 and 4e-7 abs everywhere (the sweep in the tests). Near 0, erf's Taylor series (9 terms reach 1e-9 for
/// |x/√2| < 0.75). Beyond, Φ from erfc rather than erf: Φ(x) = ½·erfc(|x|/√2) for x < 0, 1 - ½·erfc(|x|/√2) for
/// x > 0, so that neither tail cancels the way 1 + erf(x) does (Eigen's rational erf, 4e-7 abs, costs ~3 ulp of
/// GELU near x = 5 that way). erfc is Numerical Recipes' `erfcc`, t·exp(-z² + P(t)) with t = 1/(1 + z/2), a
/// Chebyshev fit with relative error below 1.2e-7 for every z ≥ 0. Both forms are computed and one is selected,
/// which vectorises better than a branch.
#[inline(always)]
pub fn gelu(x: f32) -> f32 {
    // x·(½·y) and (½·x)·y round alike: halving is exact.
    x * normal_cdf(x)
}

/// Φ(x), the standard normal CDF, by the two forms `gelu` describes.
#[inline(always)]
#[allow(clippy::excessive_precision)]
pub fn normal_cdf(x: f32) -> f32 {
    let z = x.abs() * std::f32::consts::FRAC_1_SQRT_2;
    let z2 = z * z;

    // 2/√π · Σ (-1)ⁿ z^(2n+1) / (n!·(2n+1))
    let mut e = 1.646_211_4e-6_f32;
    e = e.mul_add(z2, -1.492_565e-5);
    e = e.mul_add(z2, 1.205_533_3e-4);
    e = e.mul_add(z2, -8.548_327e-4);
    e = e.mul_add(z2, 5.223_977_8e-3);
    e = e.mul_add(z2, -2.686_617_2e-2);
    e = e.mul_add(z2, 1.128_379_2e-1);
    e = e.mul_add(z2, -3.761_263_8e-1);
    e = e.mul_add(z2, std::f32::consts::FRAC_2_SQRT_PI);
    let near_zero = 0.5 * (1.0 + e * (x * std::f32::consts::FRAC_1_SQRT_2));

    let t = 1.0 / (1.0 + 0.5 * z);
    let mut p = 0.170_872_77_f32;
    p = p.mul_add(t, -0.822_152_23);
    p = p.mul_add(t, 1.488_515_87);
    p = p.mul_add(t, -1.135_203_98);
    p = p.mul_add(t, 0.278_868_07);
    p = p.mul_add(t, -0.186_288_06);
    p = p.mul_add(t, 0.096_784_18);
    p = p.mul_add(t, 0.374_091_96);
    p = p.mul_add(t, 1.000_023_68);
    p = p.mul_add(t, -1.265_512_23);
    // ½·erfc(|x|/√2) = Φ(-|x|)
    let tail = 0.5 * t * exp(p - z2);
    let phi = if x < 0.0 { tail } else { 1.0 - tail };

    if z < 0.75 {
        near_zero
    } else {
        phi
    }
}

/// exp for f32 (Cephes `expf`: 2ⁿ·e^r with |r| ≤ ln2/2 and a degree-7 polynomial, ~1 ulp). Inputs are clamped
/// to [-80, 88.3]: anything below e^-80 ≈ 1.8e-35 comes out as that. Its users (softmax weights after the row max
/// is subtracted, GELU's tail) cannot tell, and it keeps subnormals, which are slow on x86, out of the products
/// that follow.
#[inline(always)]
#[allow(clippy::excessive_precision)]
pub fn exp(x: f32) -> f32 {
    // 1.5·2²³: adding it rounds to an integer (to nearest even) and leaves that integer in the low mantissa bits.
    const SHIFT: f32 = 12_582_912.0;
    let x = x.clamp(-80.0, 88.3);
    let t = x * std::f32::consts::LOG2_E + SHIFT;
    let n = t - SHIFT;
    let r = n.mul_add(-0.693_359_4, x);
    let r = n.mul_add(2.121_944_4e-4, r);
    let mut p = 1.987_569_1e-4_f32;
    p = p.mul_add(r, 1.398_199_9e-3);
    p = p.mul_add(r, 8.333_452e-3);
    p = p.mul_add(r, 4.166_579_6e-2);
    p = p.mul_add(r, 1.666_666_5e-1);
    p = p.mul_add(r, 5.000_000_1e-1);
    let y = (p * r).mul_add(r, r) + 1.0;
    // n ∈ [-116, 127] after the clamp, so 2ⁿ is a normal float: its exponent field is n + 127.
    let n = (t.to_bits() as i32).wrapping_sub(SHIFT.to_bits() as i32);
    y * f32::from_bits(((n + 127) as u32) << 23)
}

simd_dispatch! {
    /// dst ← gelu(src).
    pub fn gelu_into(dst: &mut [f32], src: &[f32]) {
        for (o, x) in dst.iter_mut().zip(src) {
            *o = gelu(*x);
        }
    }
}

simd_dispatch! {
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

simd_dispatch! {
    /// In place, row by row: x ← gelu(x + bias) (`bias.len()` columns per row).
    pub fn bias_gelu(xs: &mut [f32], bias: &[f32]) {
        for row in xs.chunks_exact_mut(bias.len()) {
            for (v, b) in row.iter_mut().zip(bias) {
                *v = gelu(*v + b);
            }
        }
    }
}

simd_dispatch! {
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

simd_dispatch! {
    /// Rows of `xs` (`cols` wide) ← exp(x - row max), unnormalised; `inv_sums[i]` ← 1 / Σ of row i.
    pub fn softmax_exp_rows(xs: &mut [f32], cols: usize, inv_sums: &mut [f32]) {
        for (row, inv) in xs.chunks_exact_mut(cols).zip(inv_sums.iter_mut()) {
            let m = max(row);
            for v in row.iter_mut() {
                *v = exp(*v - m);
            }
            *inv = 1.0 / sum(row);
        }
    }
}

simd_dispatch! {
    /// xs ← xs · s.
    pub fn scale(xs: &mut [f32], s: f32) {
        for v in xs.iter_mut() {
            *v *= s;
        }
    }
}

simd_dispatch! {
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

simd_dispatch! {
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

simd_dispatch! {
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

simd_dispatch! {
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
    use candle_core::cpu::erf::erf_f64;

    fn gelu_f64(x: f64) -> f64 {
        0.5 * x * (1.0 + erf_f64(x / std::f64::consts::SQRT_2))
    }

    /// The dense sweep behind the accuracy figure quoted for the fused MLP: every 1e-4 over [-10, 10], through
    /// the dispatch path this CPU takes, against f64 erf.
    #[test]
    fn gelu_matches_f64_erf() {
        let xs: Vec<f32> = (-100_000..=100_000).map(|i| i as f32 * 1e-4).collect();
        let mut got = xs.clone();
        bias_gelu(&mut got, &[0.0; 1]);
        let (mut max_abs, mut max_ulp, mut max_rel) = (0f64, 0f64, 0f64);
        for (x, g) in xs.iter().zip(&got) {
            let want = gelu_f64(*x as f64);
            let err = (*g as f64 - want).abs();
            max_abs = max_abs.max(err);
            if want.abs() > 1e-3 {
                max_rel = max_rel.max(err / want.abs());
            }
            if want > 0.1 {
                // One ulp of an f32 in [2^e, 2^(e+1)) is 2^(e-23).
                let ulp = 2f64.powi(want.abs().log2().floor() as i32 - 23);
                max_ulp = max_ulp.max(err / ulp);
            }
            assert_eq!(g.to_bits(), gelu(*x).to_bits(), "dispatched and scalar forms differ at {x}");
        }
        eprintln!(
            "gelu: max abs error {max_abs:.3e}, {max_ulp:.2} ulp where gelu > 0.1, rel {max_rel:.2e} where > 1e-3"
        );
        assert!(max_abs < 5e-7, "gelu max abs error {max_abs}");
        assert!(max_ulp < 2.0, "gelu max error {max_ulp} ulp");
        assert!(max_rel < 2e-6, "gelu max rel error {max_rel}");
        assert_eq!(gelu(0.0), 0.0);
        assert_eq!(gelu(1e4), 1e4);
        assert!(gelu(-1e4).abs() < 1e-30);
    }

    #[test]
    fn exp_is_within_two_ulp_where_softmax_uses_it() {
        let mut worst = 0f64;
        for i in 0..=200_000 {
            let x = -80.0 + i as f64 * (80.0 + 10.0) / 200_000.0;
            let want = (x as f32 as f64).exp();
            let rel = ((exp(x as f32) as f64) - want).abs() / want;
            worst = worst.max(rel);
        }
        eprintln!("exp: max rel error {worst:.3e}");
        assert!(worst < 2.0 * f32::EPSILON as f64, "exp max rel error {worst}");
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(-1e4) < 2e-35 && exp(-1e4) > 0.0);
    }

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
}
