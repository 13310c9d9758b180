//! Bindings for `marvel_core::metrics`: PSNR, SSIM and MS-SSIM of batches of RGB image pairs, codebook usage of
//! token ids, and the Fréchet distance of two feature sets.

use marvel_core::metrics::{codebook_usage, compare, FeatureStats, FrechetReference, ImagePairs};
use marvel_core::shape_mismatch;
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

/// The Fréchet distances from one feature set (`reference`, `referenceCount` vectors of `dim` values) to each of
/// `others` (`counts[i]` vectors each), statistics in float64; the reference's covariance root is computed once.
#[napi(ts_return_type = "Promise<Float64Array>")]
pub fn frechet_distances(
    reference: Float32Array,
    reference_count: u32,
    others: Vec<Float32Array>,
    counts: Vec<u32>,
    dim: u32,
) -> AsyncTask<Job<(Float32Array, Vec<Float32Array>), Float64Array>> {
    AsyncTask::new(Job::new((reference, others), move |(reference, others)| {
        if others.len() != counts.len() {
            return Err(shape_mismatch!("frechetDistances: {} feature sets but {} counts", others.len(), counts.len()));
        }
        let dim = dim as usize;
        let base = FrechetReference::new(FeatureStats::from_features(reference, reference_count as usize, dim)?)?;
        let distances = others
            .iter()
            .zip(&counts)
            .map(|(o, &n)| base.distance(&FeatureStats::from_features(o, n as usize, dim)?))
            .collect::<marvel_core::Result<Vec<f64>>>()?;
        Ok(Float64Array::new(distances))
    }))
}
