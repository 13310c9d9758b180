//! Structural similarity (Wang, Bovik, Sheikh & Simoncelli, "Image quality assessment: from error visibility to
//! structural similarity", IEEE TIP 2004) of two 8-bit RGB images.
//!
//! Convention — the same numbers as scikit-image's
//! `structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255,
//! channel_axis=-1)`:
//! - local statistics under an 11x11 Gaussian window, σ = 1.5 (truncated at 3.5σ → radius 5, weights normalised);
//! - population (biased) variances and covariance, as in the paper (`use_sample_covariance=False`);
//! - K1 = 0.01, K2 = 0.03, L = 255, so C1 = (K1·L)², C2 = (K2·L)²;
//! - the SSIM map is averaged over the *valid* region only — pixels whose whole window lies inside the image,
//!   i.e. a 5-pixel border is dropped (skimage filters with reflection padding, then crops that border, so the
//!   padding never reaches the mean);
//! - computed per channel in float64 and the three channel means averaged.
//!
//! The window is separable: a horizontal 11-tap pass over the rows, then a vertical pass that accumulates the
//! SSIM of one output row at a time. Scratch buffers are allocated once per image, never per pixel.

/// Gaussian window σ, as in the paper.
pub const SIGMA: f64 = 1.5;
/// Window radius: `int(3.5 · σ + 0.5)` (scipy's truncation at 3.5σ, which skimage picks for an 11-tap window).
pub const RADIUS: usize = 5;
/// Window side (11): also the smallest image side SSIM is defined for here.
pub const WINDOW: usize = 2 * RADIUS + 1;
pub const K1: f64 = 0.01;
pub const K2: f64 = 0.03;
/// Dynamic range of 8-bit samples.
pub const DATA_RANGE: f64 = 255.0;

/// The five windowed moments SSIM needs: E[x], E[y], E[x²], E[y²], E[xy].
type Moments = [f64; 5];

fn gaussian_window() -> [f64; WINDOW] {
    let mut w = [0.0; WINDOW];
    for (i, wi) in w.iter_mut().enumerate() {
        let d = i as f64 - RADIUS as f64;
        *wi = (-0.5 * d * d / (SIGMA * SIGMA)).exp();
    }
    let sum: f64 = w.iter().sum();
    w.iter_mut().for_each(|wi| *wi /= sum);
    w
}

/// Reusable scratch for one image: the horizontally filtered moments of every row (valid columns only) and one
/// output row of fully filtered moments.
pub struct SsimScratch {
    rows: Vec<Moments>,
    acc: Vec<Moments>,
}

impl SsimScratch {
    pub fn new(height: usize, width: usize) -> Self {
        let valid_w = width.saturating_sub(WINDOW - 1);
        SsimScratch { rows: vec![[0.0; 5]; height * valid_w], acc: vec![[0.0; 5]; valid_w] }
    }
}

/// Mean SSIM of one channel (`channel` of `channels` interleaved samples per pixel) over the valid region.
fn channel_ssim(a: &[u8], b: &[u8], height: usize, width: usize, channels: usize, channel: usize, s: &mut SsimScratch) -> f64 {
    let w = gaussian_window();
    let (valid_h, valid_w) = (height - (WINDOW - 1), width - (WINDOW - 1));
    let c1 = (K1 * DATA_RANGE).powi(2);
    let c2 = (K2 * DATA_RANGE).powi(2);

    for y in 0..height {
        let row = y * width;
        for ox in 0..valid_w {
            let mut m = [0.0; 5];
            for (k, &wk) in w.iter().enumerate() {
                let i = (row + ox + k) * channels + channel;
                let (x, v) = (a[i] as f64, b[i] as f64);
                m[0] += wk * x;
                m[1] += wk * v;
                m[2] += wk * x * x;
                m[3] += wk * v * v;
                m[4] += wk * x * v;
            }
            s.rows[y * valid_w + ox] = m;
        }
    }

    let mut total = 0.0;
    for oy in 0..valid_h {
        s.acc.iter_mut().for_each(|m| *m = [0.0; 5]);
        for (k, &wk) in w.iter().enumerate() {
            let src = &s.rows[(oy + k) * valid_w..(oy + k + 1) * valid_w];
            for (acc, m) in s.acc.iter_mut().zip(src) {
                for j in 0..5 {
                    acc[j] += wk * m[j];
                }
            }
        }
        let mut row_sum = 0.0;
        for &[ux, uy, uxx, uyy, uxy] in &s.acc {
            let (vx, vy, vxy) = (uxx - ux * ux, uyy - uy * uy, uxy - ux * uy);
            row_sum += ((2.0 * ux * uy + c1) * (2.0 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2));
        }
        total += row_sum;
    }
    total / (valid_h * valid_w) as f64
}

/// SSIM of two interleaved RGB images of `height` x `width` (each side at least [`WINDOW`]; checked by the
/// caller): the mean over the three channels of each channel's mean SSIM.
pub fn ssim(a: &[u8], b: &[u8], height: usize, width: usize, scratch: &mut SsimScratch) -> f64 {
    debug_assert!(height >= WINDOW && width >= WINDOW);
    debug_assert_eq!(a.len(), height * width * 3);
    debug_assert_eq!(b.len(), a.len());
    (0..3).map(|c| channel_ssim(a, b, height, width, 3, c, scratch)).sum::<f64>() / 3.0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator (xorshift32), also written out in the cross-check script below.
    struct Rng(u32);
    impl Rng {
        fn next(&mut self) -> u32 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 17;
            self.0 ^= self.0 << 5;
            self.0
        }
    }

    fn random_image(h: usize, w: usize, seed: u32) -> Vec<u8> {
        let mut r = Rng(seed);
        (0..h * w * 3).map(|_| (r.next() >> 24) as u8).collect()
    }

    /// A smooth structured image (gradients and a ring) so SSIM has structure to lose.
    fn structured(h: usize, w: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(h * w * 3);
        for y in 0..h {
            for x in 0..w {
                let (fy, fx) = (y as f64 / h as f64, x as f64 / w as f64);
                let ring = (((fx - 0.5).powi(2) + (fy - 0.5).powi(2)).sqrt() * 40.0).sin();
                out.push((255.0 * fx) as u8);
                out.push((127.5 + 120.0 * ring) as u8);
                out.push((255.0 * (1.0 - fy)) as u8);
            }
        }
        out
    }

    fn noisy(img: &[u8], amplitude: i32, seed: u32) -> Vec<u8> {
        let mut r = Rng(seed);
        img.iter()
            .map(|&v| {
                let n = (r.next() % (2 * amplitude as u32 + 1)) as i32 - amplitude;
                (v as i32 + n).clamp(0, 255) as u8
            })
            .collect()
    }

    fn ssim_of(a: &[u8], b: &[u8], h: usize, w: usize) -> f64 {
        ssim(a, b, h, w, &mut SsimScratch::new(h, w))
    }

    #[test]
    fn window_is_the_normalised_11_tap_gaussian() {
        let w = gaussian_window();
        assert_eq!(w.len(), 11);
        assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-15);
        assert_eq!(w[0], w[10]);
        // exp(-0.5 · 25 / 2.25) relative to the centre.
        assert!((w[0] / w[5] - (-25.0f64 / 4.5).exp()).abs() < 1e-15);
    }

    #[test]
    fn identical_images_score_one() {
        let a = random_image(20, 31, 7);
        assert!((ssim_of(&a, &a, 20, 31) - 1.0).abs() < 1e-12);
        let s = structured(40, 40);
        assert!((ssim_of(&s, &s, 40, 40) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn hand_checked_constant_images() {
        // 11x11 constants: one valid pixel, zero variances, so SSIM = (2pq + C1) / (p² + q² + C1) per channel.
        let (p, q) = ([100u8, 0, 255], [150u8, 0, 200]);
        let a: Vec<u8> = (0..121).flat_map(|_| p).collect();
        let b: Vec<u8> = (0..121).flat_map(|_| q).collect();
        let c1 = (0.01f64 * 255.0).powi(2);
        let expected = p
            .iter()
            .zip(&q)
            .map(|(&p, &q)| {
                let (p, q) = (p as f64, q as f64);
                (2.0 * p * q + c1) / (p * p + q * q + c1)
            })
            .sum::<f64>()
            / 3.0;
        // Channels: 30006.5025/32506.5025 = 0.923092, 1, 102006.5025/105031.5025 = 0.971198; mean 0.964764.
        assert!((expected - 0.964764).abs() < 1e-6, "{expected}");
        assert!((ssim_of(&a, &b, 11, 11) - expected).abs() < 1e-12);
    }

    #[test]
    fn symmetric_below_one_and_falling_with_noise() {
        let (h, w) = (48, 40);
        let clean = structured(h, w);
        let mut last = 1.0;
        for (amplitude, seed) in [(4, 1), (16, 2), (48, 3), (128, 4)] {
            let dirty = noisy(&clean, amplitude, seed);
            let s = ssim_of(&clean, &dirty, h, w);
            assert!((s - ssim_of(&dirty, &clean, h, w)).abs() < 1e-15, "not symmetric at noise {amplitude}");
            assert!(s < last, "SSIM {s} at noise ±{amplitude} is not below {last}");
            assert!(s > -1.0);
            last = s;
        }
        assert!(last < 0.5, "heavy noise still scores {last}");
    }

    /// The same statistic by brute force: a full 11x11 weighted window per valid pixel.
    fn direct_ssim(a: &[u8], b: &[u8], h: usize, w: usize) -> f64 {
        let g = gaussian_window();
        let (c1, c2) = ((K1 * DATA_RANGE).powi(2), (K2 * DATA_RANGE).powi(2));
        let mut per_channel = 0.0;
        for c in 0..3 {
            let mut sum = 0.0;
            for oy in 0..h - 10 {
                for ox in 0..w - 10 {
                    let mut m = [0.0; 5];
                    for ky in 0..11 {
                        for kx in 0..11 {
                            let i = ((oy + ky) * w + ox + kx) * 3 + c;
                            let (x, y, wt) = (a[i] as f64, b[i] as f64, g[ky] * g[kx]);
                            m[0] += wt * x;
                            m[1] += wt * y;
                            m[2] += wt * x * x;
                            m[3] += wt * y * y;
                            m[4] += wt * x * y;
                        }
                    }
                    let [ux, uy, uxx, uyy, uxy] = m;
                    sum += ((2.0 * ux * uy + c1) * (2.0 * (uxy - ux * uy) + c2))
                        / ((ux * ux + uy * uy + c1) * (uxx - ux * ux + uyy - uy * uy + c2));
                }
            }
            per_channel += sum / ((h - 10) * (w - 10)) as f64;
        }
        per_channel / 3.0
    }

    #[test]
    fn separable_filter_matches_the_direct_2d_window() {
        let (h, w) = (19, 26);
        let a = random_image(h, w, 11);
        let b = noisy(&a, 30, 12);
        assert!((ssim_of(&a, &b, h, w) - direct_ssim(&a, &b, h, w)).abs() < 1e-12);
    }

    #[test]
    fn only_pixels_under_some_valid_window_count() {
        // In a 22x22 image every pixel lies under the window of some valid (5-pixel-inset) pixel, the corners
        // included: changing pixel (0, 0) must change the score.
        let (h, w) = (22, 22);
        let a = structured(h, w);
        let mut b = a.clone();
        b[0] = b[0].wrapping_add(100);
        assert!(ssim_of(&a, &b, h, w) < 1.0);
    }

    /// Figures from scikit-image 0.26.0 / numpy 2.4.6, computed once in a throwaway venv (not a dependency) on the
    /// same xorshift images, regenerated in Python:
    /// ```text
    /// structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
    ///                       data_range=255, channel_axis=-1)
    /// peak_signal_noise_ratio(a, b, data_range=255)
    /// ```
    #[test]
    fn matches_scikit_image() {
        use crate::metrics::psnr;
        // (h, w, seed a, seed b or noise ±amplitude with seed a + 100, skimage SSIM, skimage PSNR)
        let cases: [(usize, usize, u32, Result<u32, i32>, f64, f64); 3] = [
            (32, 32, 1, Ok(2), 0.0023818670885732292, 7.6394787662148325),
            (37, 53, 3, Err(40), 0.9542302523991046, 21.20515643881964),
            (64, 48, 5, Err(8), 0.9977541795371666, 34.37000271585935),
        ];
        for (h, w, seed, other, want_ssim, want_psnr) in cases {
            let a = random_image(h, w, seed);
            let b = match other {
                Ok(seed_b) => random_image(h, w, seed_b),
                Err(amplitude) => noisy(&a, amplitude, seed + 100),
            };
            let (s, p) = (ssim_of(&a, &b, h, w), psnr(&a, &b));
            assert!((s - want_ssim).abs() < 1e-10, "{h}x{w}: SSIM {s} vs skimage {want_ssim}");
            assert!((p - want_psnr).abs() < 1e-10, "{h}x{w}: PSNR {p} vs skimage {want_psnr}");
        }
    }
}
