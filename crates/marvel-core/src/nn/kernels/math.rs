//! Scalar math written to vectorise: every function is `#[inline(always)]` and branch-free (both sides of a
//! choice computed, one selected), so a kernel that calls it in a loop gets it compiled for its level's vector
//! width. One copy for every kernel: the ViT's softmax and GELU, the legacy head's tanh, the VQGAN's SiLU.

/// Lanes of the partial sums in `sum` / `max`: 16 f32 fill one AVX-512 register (two AVX2 ones).
pub const LANES: usize = 16;

/// Σ xs, in `LANES` partial sums (a fixed order, so every level gives the same bits).
#[inline(always)]
pub fn sum(xs: &[f32]) -> f32 {
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

/// max xs (-inf when empty), lane-wise like `sum`.
#[inline(always)]
pub fn max(xs: &[f32]) -> f32 {
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

/// tanh for f32, within ~2 ulp (the sweep in the tests): near 0 an odd polynomial, x·P(x²) of degree 11 fitted
/// to tanh(x)/x on |x| < 0.625 (relative error ~1e-8 before rounding); beyond, 1 - 2/(e^(2|x|) + 1), where the
/// term subtracted is at most 0.45 (at 0.625: 0.8 of the result, so its error is not amplified). The sign is
/// copied from x (tanh(-0) = -0). Past |x| = 10 tanh is 1 in f32: the exponent is capped there, so the quotient
/// never goes subnormal. libm's `tanhf` per value (candle's `tanh`) spent ~1.5% of an S-128 decoder ViT at 2
/// threads (`__tanhf` and its `__expm1f`).
#[inline(always)]
#[allow(clippy::excessive_precision)]
pub fn tanh(x: f32) -> f32 {
    let a = x.abs();
    let u = a * a;
    let mut p = -5.659_984e-3_f32;
    p = p.mul_add(u, 2.059_098_3e-2);
    p = p.mul_add(u, -5.372_106_7e-2);
    p = p.mul_add(u, 1.333_112_7e-1);
    p = p.mul_add(u, -3.333_326e-1);
    let near_zero = (a * u).mul_add(p, a);
    // `clamp` keeps NaN, where `min` would turn it into 10.
    let far = 1.0 - 2.0 / (exp(2.0 * a.clamp(0.0, 10.0)) + 1.0);
    let y = if a < 0.625 { near_zero } else { far };
    y.copysign(x)
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
        crate::nn::kernels::bias_gelu(&mut got, &[0.0; 1]);
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

    /// Every 1e-4 over [-12, 12] (beyond, both forms give ±1 exactly) through the dispatch path this CPU takes,
    /// against f64 tanh, and the same bits as the scalar form.
    #[test]
    fn tanh_is_within_two_ulp() {
        let xs: Vec<f32> = (-120_000..=120_000).map(|i| i as f32 * 1e-4).collect();
        let mut got = xs.clone();
        crate::nn::kernels::tanh_rows(&mut got);
        let mut worst = 0f64;
        for (x, g) in xs.iter().zip(&got) {
            let want = (*x as f64).tanh();
            if want != 0.0 {
                let ulp = 2f64.powi(want.abs().log2().floor() as i32 - 23);
                worst = worst.max((*g as f64 - want).abs() / ulp);
            }
            assert_eq!(g.to_bits(), tanh(*x).to_bits(), "dispatched and scalar forms differ at {x}");
        }
        eprintln!("tanh: max error {worst:.2} ulp");
        assert!(worst < 2.0, "tanh max error {worst} ulp");
        assert_eq!((tanh(0.0).to_bits(), tanh(-0.0).to_bits()), (0f32.to_bits(), (-0f32).to_bits()));
        assert_eq!((tanh(30.0), tanh(-30.0), tanh(1e30), tanh(f32::NEG_INFINITY)), (1.0, -1.0, 1.0, -1.0));
        assert!(tanh(f32::NAN).is_nan());
    }

    /// Softmax feeds exp values in [-80, 0] (after the row max), GELU's tail -z² + P(t) in [-80, 0], SiLU anything
    /// up to the clamp: the sweep covers all of [-80, 88.3].
    #[test]
    fn exp_is_within_two_ulp_wherever_it_is_used() {
        let mut worst = 0f64;
        for i in 0..=400_000 {
            let x = -80.0 + i as f64 * (80.0 + 88.3) / 400_000.0;
            let want = (x as f32 as f64).exp();
            let rel = ((exp(x as f32) as f64) - want).abs() / want;
            worst = worst.max(rel);
        }
        eprintln!("exp: max rel error {worst:.3e}");
        assert!(worst < 2.0 * f32::EPSILON as f64, "exp max rel error {worst}");
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(-1e4) < 2e-35 && exp(-1e4) > 0.0);
        assert!(exp(1e4).is_finite());
    }
}
