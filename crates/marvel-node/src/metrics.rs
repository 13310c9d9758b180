//! Bindings for `marvel_core::metrics`: PSNR and SSIM of batches of RGB image pairs.

use marvel_core::metrics::{compare, ImagePairs};
use napi::bindgen_prelude::*;
use napi_derive::napi;

use crate::task::Job;

/// Per-image scores: `psnr` in dB (`Infinity` for identical images) and `ssim`.
#[napi(object)]
pub struct ImageScores {
    pub psnr: Float64Array,
    pub ssim: Float64Array,
}

/// PSNR and SSIM of each pair of images in two batches of interleaved RGB bytes `[batch, height, width, 3]`,
/// off the main thread. A buffer that does not fill the shape rejects with `MARVEL_SHAPE_MISMATCH`.
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
        Ok(ImageScores { psnr: Float64Array::new(scores.psnr), ssim: Float64Array::new(scores.ssim) })
    }))
}
