//! Image quality metrics. Full-reference, on batches of 8-bit RGB images `(B, H, W, 3)`: PSNR ([`psnr`]) and SSIM
//! ([`ssim`]) with scikit-image's conventions, MS-SSIM ([`ms_ssim`]) with pytorch-msssim's, so figures compare
//! with the literature's evaluation scripts. Distribution-level: the Fréchet distance of feature statistics
//! ([`fid`], on the eigen-solver of [`eigen`]). Of the tokens: codebook usage and entropy ([`codebook`]). Each
//! module documents its conventions.

pub mod codebook;
pub mod eigen;
pub mod fid;
pub mod ms_ssim;
pub mod psnr;
pub mod ssim;

use rayon::prelude::*;

use crate::error::Result;
use crate::{invalid, shape_mismatch};

pub use codebook::{codebook_usage, CodebookUsage};
pub use fid::{frechet_distance, FeatureStats, FrechetReference};
pub use ms_ssim::ms_ssim;
pub use psnr::psnr;
pub use ssim::{ssim, SsimScratch};

/// Per-image scores of a batch of image pairs.
#[derive(Debug, Clone, PartialEq)]
pub struct Scores {
    /// dB; `f64::INFINITY` for identical images.
    pub psnr: Vec<f64>,
    /// In [-1, 1]; 1 for identical images.
    pub ssim: Vec<f64>,
    /// In [0, 1]; NaN where a side is below [`ms_ssim::MIN_SIDE`] (the five scales do not fit).
    pub ms_ssim: Vec<f64>,
}

/// Two batches of interleaved RGB images, pair `i` being image `i` of `a` and of `b`, checked to fill
/// `(batch, height, width, 3)`.
#[derive(Debug, Clone, Copy)]
pub struct ImagePairs<'a> {
    a: &'a [u8],
    b: &'a [u8],
    batch: usize,
    height: usize,
    width: usize,
}

impl<'a> ImagePairs<'a> {
    pub fn new(a: &'a [u8], b: &'a [u8], batch: usize, height: usize, width: usize) -> Result<Self> {
        if batch == 0 {
            return Err(invalid!("image metrics: batch must be at least 1, got 0"));
        }
        if height < ssim::WINDOW || width < ssim::WINDOW {
            return Err(invalid!(
                "image metrics: images must be at least {w}x{w} pixels (the SSIM window), got {width}x{height}",
                w = ssim::WINDOW
            ));
        }
        let need = batch
            .checked_mul(height)
            .and_then(|n| n.checked_mul(width))
            .and_then(|n| n.checked_mul(3))
            .ok_or_else(|| invalid!("image metrics: {batch} x {width}x{height} images overflow memory"))?;
        for (name, buf) in [("a", a), ("b", b)] {
            if buf.len() != need {
                return Err(shape_mismatch!(
                    "image metrics: {name} holds {} bytes; {batch} RGB images of {width}x{height} need {need}",
                    buf.len()
                ));
            }
        }
        Ok(ImagePairs { a, b, batch, height, width })
    }

    pub fn len(&self) -> usize {
        self.batch
    }

    pub fn is_empty(&self) -> bool {
        self.batch == 0
    }

    /// The bytes of pair `i`.
    pub fn pair(&self, i: usize) -> (&'a [u8], &'a [u8]) {
        let frame = self.height * self.width * 3;
        (&self.a[i * frame..(i + 1) * frame], &self.b[i * frame..(i + 1) * frame])
    }
}

/// PSNR, SSIM and MS-SSIM of every pair, images in parallel on the current rayon pool.
pub fn compare(pairs: &ImagePairs) -> Scores {
    let (h, w) = (pairs.height, pairs.width);
    let multi_scale = h >= ms_ssim::MIN_SIDE && w >= ms_ssim::MIN_SIDE;
    let scores: Vec<(f64, f64, f64)> = (0..pairs.len())
        .into_par_iter()
        .map_init(
            || SsimScratch::new(h, w),
            |scratch, i| {
                let (a, b) = pairs.pair(i);
                let ms = if multi_scale { ms_ssim(a, b, h, w) } else { f64::NAN };
                (psnr(a, b), ssim(a, b, h, w, scratch), ms)
            },
        )
        .collect();
    let mut out = Scores { psnr: Vec::with_capacity(scores.len()), ssim: Vec::with_capacity(scores.len()), ms_ssim: Vec::with_capacity(scores.len()) };
    for (p, s, m) in scores {
        out.psnr.push(p);
        out.ssim.push(s);
        out.ms_ssim.push(m);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MarvelError;

    fn image(h: usize, w: usize, seed: usize) -> Vec<u8> {
        (0..h * w * 3).map(|i| ((i * 31 + seed * 17) % 251) as u8).collect()
    }

    #[test]
    fn batch_scores_equal_one_pair_at_a_time() {
        let (h, w) = (16, 12);
        let a: Vec<u8> = (0..3).flat_map(|s| image(h, w, s)).collect();
        let mut b = a.clone();
        b[h * w * 3 + 5] ^= 0x40; // pair 1 differs in one sample
        b[2 * h * w * 3..].iter_mut().for_each(|v| *v = v.saturating_add(3)); // pair 2: small offset
        let scores = compare(&ImagePairs::new(&a, &b, 3, h, w).unwrap());
        assert_eq!(scores.psnr[0], f64::INFINITY);
        assert!((scores.ssim[0] - 1.0).abs() < 1e-12);
        for i in 1..3 {
            let one = compare(&ImagePairs::new(&a[i * h * w * 3..(i + 1) * h * w * 3], &b[i * h * w * 3..(i + 1) * h * w * 3], 1, h, w).unwrap());
            assert_eq!(one.psnr[0], scores.psnr[i]);
            assert_eq!(one.ssim[0], scores.ssim[i]);
            assert!(scores.psnr[i].is_finite() && scores.ssim[i] < 1.0);
        }
    }

    #[test]
    fn ms_ssim_is_scored_where_the_five_scales_fit() {
        let side = ms_ssim::MIN_SIDE;
        let a = image(side, side, 1);
        let b: Vec<u8> = a.iter().map(|v| v.wrapping_add(9)).collect();
        let scores = compare(&ImagePairs::new(&a, &b, 1, side, side).unwrap());
        assert_eq!(scores.ms_ssim[0], ms_ssim(&a, &b, side, side));
        assert!(scores.ms_ssim[0] < 1.0);
        let small = compare(&ImagePairs::new(&a[..(side - 1) * side * 3], &b[..(side - 1) * side * 3], 1, side - 1, side).unwrap());
        assert!(small.ms_ssim[0].is_nan() && small.ssim[0].is_finite());
    }

    #[test]
    fn bad_shapes_name_the_value() {
        let a = vec![0u8; 2 * 16 * 16 * 3];
        let err = ImagePairs::new(&a, &a[1..], 2, 16, 16).unwrap_err();
        assert!(matches!(err, MarvelError::ShapeMismatch(_)));
        assert!(err.to_string().contains("b holds 1535 bytes"), "{err}");
        let err = ImagePairs::new(&a[..300], &a[..300], 1, 10, 10).unwrap_err();
        assert!(matches!(err, MarvelError::InvalidArgument(_)));
        assert!(err.to_string().contains("got 10x10"), "{err}");
        assert!(ImagePairs::new(&[], &[], 0, 16, 16).is_err());
    }
}
