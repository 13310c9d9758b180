//! Bindings for `marvel_core::metrics`: PSNR, SSIM and MS-SSIM of batches of RGB image pairs, codebook usage of
//! token ids, and the Fréchet distance of two feature sets.

use marvel_core::metrics::{codebook_usage, compare, frechet_distance, FeatureStats, ImagePairs};
use napi::bindgen_prelude::*;
use napi_derive::napi;

use crate::task::Job;

/// Per-image scores: `psnr` in dB (`Infinity` for identical images), `ssim`, and `msSsim` (NaN where a side is
/// under 161 pixels, too small for five scales).
#[napi(object)]
pub struct ImageScores {
    pub psnr: Float64Array,
    pub ssim: Float64Array,
    pub ms_ssim: Float64Array,
}

/// PSNR, SSIM and MS-SSIM of each pair of images in two batches of interleaved RGB bytes
/// `[batch, height, width, 3]`, off the main thread. A buffer that does not fill the shape rejects with
/// `MARVEL_SHAPE_MISMATCH`.
#[napi(ts_return_type = "Promise<ImageScores>")]
pub fn image_metrics(
    a: Uint8Array,
    b: Uint8Array,
    batch: u32,
    height: u32,
    width: u32,
) -> AsyncTask<Job<(Uint8Array, Uint8Array), ImageScores>> {
    AsyncTask::new(Job::new((a, b), move |(a, b)| {
        let pairs = ImagePairs::new(a, b, batch as usize, height as usize, width as usize)?;
        let scores = compare(&pairs);
        Ok(ImageScores {
            psnr: Float64Array::new(scores.psnr),
            ssim: Float64Array::new(scores.ssim),
            ms_ssim: Float64Array::new(scores.ms_ssim),
        })
    }))
}

/// Per depth: distinct ids and the entropy of their frequencies in bits.
#[napi(object)]
pub struct CodebookUsage {
    pub distinct: Uint32Array,
    pub entropy: Float64Array,
}

/// Codebook usage of depth-major token ids (`depth` equal parts, ids below `2^bits`).
#[napi(ts_return_type = "Promise<CodebookUsage>")]
pub fn codebook_usage_by_depth(ids: Uint32Array, depth: u32, bits: u32) -> AsyncTask<Job<Uint32Array, CodebookUsage>> {
    AsyncTask::new(Job::new(ids, move |ids| {
        let usage = codebook_usage(ids, depth as usize, bits)?;
        Ok(CodebookUsage {
            distinct: Uint32Array::new(usage.iter().map(|u| u.distinct as u32).collect()),
            entropy: Float64Array::new(usage.iter().map(|u| u.entropy_bits).collect()),
        })
    }))
}

/// The Fréchet distance between the Gaussians of two feature sets (`countA` and `countB` vectors of `dim`
/// values each, at least 2 per set), statistics in float64.
#[napi(ts_return_type = "Promise<number>")]
pub fn frechet_distance_of_features(
    a: Float32Array,
    count_a: u32,
    b: Float32Array,
    count_b: u32,
    dim: u32,
) -> AsyncTask<Job<(Float32Array, Float32Array), f64>> {
    AsyncTask::new(Job::new((a, b), move |(a, b)| {
        let sa = FeatureStats::from_features(a, count_a as usize, dim as usize)?;
        let sb = FeatureStats::from_features(b, count_b as usize, dim as usize)?;
        frechet_distance(&sa, &sb)
    }))
}
