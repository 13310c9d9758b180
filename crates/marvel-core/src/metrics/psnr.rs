//! Peak signal-to-noise ratio of two 8-bit images: `10 · log10(MAX² / MSE)` with MAX = 255 and the MSE taken over
//! every sample (all pixels, all channels), as skimage's `peak_signal_noise_ratio(data_range=255)`.

/// Largest 8-bit sample value: the "peak" of PSNR.
pub const PEAK: f64 = 255.0;

/// PSNR in dB of two equally long sample buffers (any layout: every byte is one sample).
///
/// Identical buffers have MSE 0 and the ratio is unbounded: that case returns `f64::INFINITY` on purpose rather
/// than through a division by zero, so callers can test `is_infinite()` for "lossless".
pub fn psnr(a: &[u8], b: &[u8]) -> f64 {
    debug_assert_eq!(a.len(), b.len());
    debug_assert!(!a.is_empty());
    // Exact in integers: 255² x 2^40 samples still fits a u64, far beyond any image.
    let sse: u64 = a.iter().zip(b).map(|(&x, &y)| (x.abs_diff(y) as u64).pow(2)).sum();
    if sse == 0 {
        return f64::INFINITY;
    }
    let mse = sse as f64 / a.len() as f64;
    10.0 * (PEAK * PEAK / mse).log10()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_images_are_infinitely_good() {
        let a: Vec<u8> = (0..300).map(|i| (i * 7 % 256) as u8).collect();
        assert_eq!(psnr(&a, &a), f64::INFINITY);
    }

    #[test]
    fn constant_offset_k_gives_20_log10_of_255_over_k() {
        let a: Vec<u8> = (0..3 * 64).map(|i| (i % 200) as u8).collect();
        for k in [1u8, 2, 10, 55] {
            let b: Vec<u8> = a.iter().map(|&x| x + k).collect();
            let expected = 20.0 * (255.0 / k as f64).log10();
            assert!((psnr(&a, &b) - expected).abs() < 1e-12, "k={k}: {} vs {expected}", psnr(&a, &b));
            // The sign of the error does not matter.
            assert_eq!(psnr(&a, &b), psnr(&b, &a));
        }
    }

    #[test]
    fn hand_checked_two_pixels() {
        // Two RGB pixels differing by 1..=6: SSE 91, MSE 91/6, PSNR 10·log10(65025·6/91) = 36.32190 dB.
        let a = [10u8, 20, 30, 40, 50, 60];
        let b = [11u8, 22, 33, 44, 55, 66];
        let expected = 10.0 * (65025.0 * 6.0 / 91.0f64).log10();
        assert!((psnr(&a, &b) - expected).abs() < 1e-12);
        assert!((expected - 36.32190).abs() < 1e-5, "{expected}");
        // Worst case: black against white is exactly 0 dB.
        assert_eq!(psnr(&[0, 0, 0], &[255, 255, 255]), 0.0);
    }
}
