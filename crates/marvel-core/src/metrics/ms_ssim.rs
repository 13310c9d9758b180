//! Multi-scale SSIM (Wang, Simoncelli & Bovik, "Multiscale structural similarity for image quality assessment",
//! Asilomar 2003) of two 8-bit RGB images, with the conventions of pytorch-msssim's `ms_ssim(data_range=255)`, the
//! implementation tokenizer papers evaluate with:
//! - five scales with the paper's weights [0.0448, 0.2856, 0.3001, 0.2363, 0.1333];
//! - at each scale the 11-tap Gaussian window (σ = 1.5, the SSIM module's) applied without padding (valid region),
//!   population statistics, K1 = 0.01, K2 = 0.03, L = 255;
//! - the contrast-structure term `cs` of scales 1..4 and the full SSIM of scale 5, each averaged over its valid
//!   region and clamped at 0 (`relu`) before the power, so a negative mean cannot make the product undefined;
//! - between scales a 2x2 average pool; an odd side is zero-padded by one on both ends and the pool still divides
//!   by 4 (`avg_pool2d(padding=side % 2)`, `count_include_pad=True`);
//! - per channel, in float64, and the channel values averaged.
//!
//! The four halvings must leave at least one window: each side must exceed (11 − 1) · 2⁴ = 160 pixels.

use super::ssim::{K1, K2, RADIUS, SIGMA, WINDOW};

/// Per-scale exponents, finest scale first (Wang et al. 2003, table of β = γ).
pub const WEIGHTS: [f64; 5] = [0.0448, 0.2856, 0.3001, 0.2363, 0.1333];
/// The smallest side MS-SSIM is defined for: more than (WINDOW − 1) · 2^(scales − 1).
pub const MIN_SIDE: usize = (WINDOW - 1) * (1 << (WEIGHTS.len() - 1)) + 1;
const DATA_RANGE: f64 = 255.0;

fn window() -> [f64; WINDOW] {
    let mut w = [0.0; WINDOW];
    for (i, wi) in w.iter_mut().enumerate() {
        let d = i as f64 - RADIUS as f64;
        *wi = (-0.5 * d * d / (SIGMA * SIGMA)).exp();
    }
    let sum: f64 = w.iter().sum();
    w.map(|v| v / sum)
}

/// One channel at one scale.
#[derive(Clone)]
struct Plane {
    h: usize,
    w: usize,
    data: Vec<f64>,
}

impl Plane {
    fn channel(rgb: &[u8], h: usize, w: usize, c: usize) -> Self {
        Plane { h, w, data: rgb.iter().skip(c).step_by(3).map(|&v| v as f64).collect() }
    }

    /// 2x2 mean with pytorch-msssim's padding of odd sides.
    fn halve(&self) -> Self {
        let (ph, pw) = (self.h % 2, self.w % 2);
        let (oh, ow) = ((self.h + 2 * ph - 2) / 2 + 1, (self.w + 2 * pw - 2) / 2 + 1);
        let mut data = vec![0.0; oh * ow];
        for oy in 0..oh {
            for ox in 0..ow {
                let mut s = 0.0;
                for dy in 0..2 {
                    for dx in 0..2 {
                        let (y, x) = ((2 * oy + dy).wrapping_sub(ph), (2 * ox + dx).wrapping_sub(pw));
                        if y < self.h && x < self.w {
                            s += self.data[y * self.w + x];
                        }
                    }
                }
                data[oy * ow + ox] = s / 4.0;
            }
        }
        Plane { h: oh, w: ow, data }
    }
}

/// Mean SSIM and mean contrast-structure term of one channel pair over the valid region.
fn ssim_and_cs(a: &Plane, b: &Plane) -> (f64, f64) {
    let g = window();
    let (vh, vw) = (a.h - (WINDOW - 1), a.w - (WINDOW - 1));
    // Horizontal pass: the five moments for every row, valid columns only.
    let mut rows = vec![[0.0f64; 5]; a.h * vw];
    for y in 0..a.h {
        for ox in 0..vw {
            let mut m = [0.0; 5];
            for (k, &gk) in g.iter().enumerate() {
                let i = y * a.w + ox + k;
                let (x, v) = (a.data[i], b.data[i]);
                m[0] += gk * x;
                m[1] += gk * v;
                m[2] += gk * x * x;
                m[3] += gk * v * v;
                m[4] += gk * x * v;
            }
            rows[y * vw + ox] = m;
        }
    }
    let c1 = (K1 * DATA_RANGE).powi(2);
    let c2 = (K2 * DATA_RANGE).powi(2);
    let (mut ssim_sum, mut cs_sum) = (0.0, 0.0);
    for oy in 0..vh {
        for ox in 0..vw {
            let mut m = [0.0; 5];
            for (k, &gk) in g.iter().enumerate() {
                let r = &rows[(oy + k) * vw + ox];
                for j in 0..5 {
                    m[j] += gk * r[j];
                }
            }
            let [ux, uy, uxx, uyy, uxy] = m;
            let cs = (2.0 * (uxy - ux * uy) + c2) / ((uxx - ux * ux) + (uyy - uy * uy) + c2);
            cs_sum += cs;
            ssim_sum += (2.0 * ux * uy + c1) / (ux * ux + uy * uy + c1) * cs;
        }
    }
    let count = (vh * vw) as f64;
    (ssim_sum / count, cs_sum / count)
}

/// MS-SSIM of two interleaved RGB images of `height` x `width`, each side at least [`MIN_SIDE`] (checked by the
/// caller). In [0, 1]; 1 for identical images.
pub fn ms_ssim(a: &[u8], b: &[u8], height: usize, width: usize) -> f64 {
    debug_assert!(height >= MIN_SIDE && width >= MIN_SIDE);
    debug_assert_eq!(a.len(), height * width * 3);
    debug_assert_eq!(b.len(), a.len());
    let mut total = 0.0;
    for c in 0..3 {
        let (mut pa, mut pb) = (Plane::channel(a, height, width, c), Plane::channel(b, height, width, c));
        let mut value = 1.0;
        for (scale, &weight) in WEIGHTS.iter().enumerate() {
            let (s, cs) = ssim_and_cs(&pa, &pb);
            if scale + 1 < WEIGHTS.len() {
                value *= cs.max(0.0).powf(weight);
                pa = pa.halve();
                pb = pb.halve();
            } else {
                value *= s.max(0.0).powf(weight);
            }
        }
        total += value;
    }
    total / 3.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::SplitMix64;

    /// The pair `bench/python/ms_ssim_reference.py` builds for (height, width, noise, seed): a pattern of stripes and
    /// checks, and the same pattern plus uniform noise in [-noise, noise], clamped. Integer arithmetic only, so
    /// both languages draw the same bytes.
    fn pair(h: usize, w: usize, noise: u64, seed: u64) -> (Vec<u8>, Vec<u8>) {
        let mut rng = SplitMix64::new(seed);
        let mut a = Vec::with_capacity(h * w * 3);
        let mut b = Vec::with_capacity(h * w * 3);
        for y in 0..h {
            for x in 0..w {
                for c in 0..3 {
                    let v = ((x * 7 + y * 3) / 2 + c * 60 + ((x / 16 + y / 16) % 2) * 50) % 256;
                    let n = (rng.next_u64() % (2 * noise + 1)) as i64 - noise as i64;
                    a.push(v as u8);
                    b.push((v as i64 + n).clamp(0, 255) as u8);
                }
            }
        }
        (a, b)
    }

    /// pytorch-msssim's `ms_ssim(a, b, data_range=255, size_average=False)` on these pairs, in float64, written by
    /// `bench/python/ms_ssim_reference.py` into the fixture.
    #[test]
    fn matches_the_reference_implementation() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/ms_ssim_reference.json");
        let text = std::fs::read_to_string(path).unwrap();
        let cases: serde_json::Value = serde_json::from_str(&text).unwrap();
        let cases = cases["cases"].as_array().unwrap();
        assert!(cases.len() >= 3);
        for case in cases {
            let get = |k: &str| case[k].as_u64().unwrap();
            let (h, w) = (get("height") as usize, get("width") as usize);
            let (a, b) = pair(h, w, get("noise"), get("seed"));
            let expected = case["ms_ssim"].as_f64().unwrap();
            let got = ms_ssim(&a, &b, h, w);
            assert!((got - expected).abs() < 1e-9, "{h}x{w}: {got} vs {expected}");
        }
    }

    #[test]
    fn identical_images_score_one_and_noise_lowers_it() {
        let (a, b) = pair(MIN_SIDE, MIN_SIDE + 3, 30, 9);
        assert!((ms_ssim(&a, &a, MIN_SIDE, MIN_SIDE + 3) - 1.0).abs() < 1e-12);
        let (_, c) = pair(MIN_SIDE, MIN_SIDE + 3, 90, 9);
        let (light, heavy) = (ms_ssim(&a, &b, MIN_SIDE, MIN_SIDE + 3), ms_ssim(&a, &c, MIN_SIDE, MIN_SIDE + 3));
        assert!(0.0 < heavy && heavy < light && light < 1.0, "{heavy} {light}");
        assert!((ms_ssim(&a, &b, MIN_SIDE, MIN_SIDE + 3) - ms_ssim(&b, &a, MIN_SIDE, MIN_SIDE + 3)).abs() < 1e-12);
    }

    #[test]
    fn odd_sides_pool_with_zero_padding() {
        // 3x3 → 2x2: output (0,0) sees only input (0,0) (the rest is padding), divided by 4.
        let p = Plane { h: 3, w: 3, data: (1..=9).map(|v| v as f64).collect() };
        let half = p.halve();
        assert_eq!((half.h, half.w), (2, 2));
        assert_eq!(half.data, [1.0 / 4.0, (2.0 + 3.0) / 4.0, (4.0 + 7.0) / 4.0, (5.0 + 6.0 + 8.0 + 9.0) / 4.0]);
        assert_eq!(MIN_SIDE, 161);
    }
}
