//! Global-norm gradient clipping: `torch.nn.utils.clip_grad_norm_(params, max_norm)` (norm_type 2), which the
//! reference loop applies after `backward()` and before `optimizer.step()` (training.max_grad_norm = 1.0).
//!
//! PyTorch, float32: total = || (||g_1||, ..., ||g_n||) ||, each norm a float32 value; coef = max_norm /
//! (total + 1e-6), evaluated as `reciprocal(total + 1e-6) * max_norm` (Tensor.__rtruediv__) and clamped to at most
//! 1; every gradient is multiplied by coef, also when coef is 1. The sums of squares are accumulated here in
//! float64 and rounded once: PyTorch's float32 sums depend on its SIMD width, so no float32 order would match
//! every machine, and the float64 sum is within one rounding of each of them.
//! As in PyTorch (error_if_nonfinite false), a non-finite total is returned and spreads into the gradients; the
//! caller decides whether to skip the step.

use candle_core::Tensor;
use rayon::prelude::*;

use crate::error::{MarvelError, Result};
use crate::train::grads::Gradients;
use crate::train::raw::{self, CHUNK};

/// The result of one clipping: the norm before clipping (what clip_grad_norm_ returns) and the factor applied.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClipOutcome {
    pub total_norm: f32,
    pub coef: f32,
}

/// Independent partial sums per chunk, so that the loop vectorises; folded in a fixed order.
const LANES: usize = 8;

/// The float64 sum of squares of one chunk, in a fixed order: lane i sums the values at i, i + 8, ...; then the
/// lanes, then the tail.
fn chunk_sum_sq(values: &[f32]) -> f64 {
    let mut lanes = [0f64; LANES];
    let mut blocks = values.chunks_exact(LANES);
    for block in &mut blocks {
        for (acc, &x) in lanes.iter_mut().zip(block) {
            let x = f64::from(x);
            *acc += x * x;
        }
    }
    let tail: f64 = blocks.remainder().iter().map(|&x| f64::from(x) * f64::from(x)).sum();
    lanes.iter().sum::<f64>() + tail
}

/// The float32 L2 norm of one gradient, accumulated in float64 over fixed chunks of [`CHUNK`] values summed in
/// chunk order: the same bits whatever the number of threads and their timing.
fn norm(g: &Tensor) -> Result<f32> {
    let chunk_sums: Vec<f64> =
        raw::with_values("gradient", &g.contiguous()?, |v| v.par_chunks(CHUNK).map(chunk_sum_sq).collect())?;
    Ok(chunk_sums.into_iter().sum::<f64>().sqrt() as f32)
}

/// The float32 global L2 norm of `grads` (0 when there are none).
pub fn global_norm(grads: &Gradients) -> Result<f32> {
    let mut sum_sq = 0f64;
    for (_, g) in grads.iter() {
        let n = f64::from(norm(g)?);
        sum_sq += n * n;
    }
    Ok(sum_sq.sqrt() as f32)
}

/// Scales `grads` in place (their storage: see [`Gradients`]) so that their global norm is at most about
/// `max_norm`; returns the pre-clip norm and the factor used.
pub fn clip_grad_norm(grads: &mut Gradients, max_norm: f64) -> Result<ClipOutcome> {
    if !(max_norm.is_finite() && max_norm > 0.0) {
        return Err(MarvelError::InvalidArgument(format!("max_grad_norm must be a positive number, got {max_norm}")));
    }
    let total_norm = global_norm(grads)?;
    let coef = ((1.0f32 / (total_norm + 1e-6f32)) * max_norm as f32).min(1.0);
    // x * 1 is x: PyTorch's multiplication by a coefficient of 1 changes nothing, so it is skipped.
    if coef != 1.0 {
        grads.scale_in_place(coef)?;
    }
    Ok(ClipOutcome { total_norm, coef })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn grads(entries: &[(&str, &[f32])]) -> Gradients {
        Gradients::from_values(entries)
    }

    #[test]
    fn scales_down_to_max_norm_and_returns_the_norm_before() {
        let mut g = grads(&[("a", &[3.0, 0.0]), ("b", &[0.0, 4.0])]);
        let out = clip_grad_norm(&mut g, 1.0).unwrap();
        assert_eq!(out.total_norm, 5.0);
        assert_eq!(out.coef, 1.0f32 / (5.0f32 + 1e-6));
        let a: Vec<f32> = g.get("a").unwrap().to_vec1().unwrap();
        let b: Vec<f32> = g.get("b").unwrap().to_vec1().unwrap();
        assert_eq!(a, [3.0 * out.coef, 0.0]);
        assert_eq!(b, [0.0, 4.0 * out.coef]);
        assert!((global_norm(&g).unwrap() - 1.0).abs() < 1e-6);
    }

    #[test]
    fn leaves_small_gradients_unchanged() {
        let mut g = grads(&[("a", &[0.3, -0.4])]);
        let out = clip_grad_norm(&mut g, 1.0).unwrap();
        assert_eq!(out.coef, 1.0);
        assert_eq!(g.get("a").unwrap().to_vec1::<f32>().unwrap(), [0.3, -0.4]);
        let mut none = Gradients::new();
        assert_eq!(clip_grad_norm(&mut none, 1.0).unwrap(), ClipOutcome { total_norm: 0.0, coef: 1.0 });
    }

    #[test]
    fn the_norm_is_the_float64_sum_rounded_once() {
        // 4096^2 = 2^24 followed by 2^20 ones: a float32 running sum of squares sticks at 2^24 (norm 4096); the
        // exact norm is sqrt(2^24 + 2^20) = 4222.0...
        let mut values = vec![1f32; (1 << 20) + 1];
        values[0] = 4096.0;
        let mut g = Gradients::new();
        g.insert("w", Tensor::from_vec(values, (1 << 20) + 1, &Device::Cpu).unwrap()).unwrap();
        assert_eq!(global_norm(&g).unwrap(), ((1u64 << 24) as f64 + (1u64 << 20) as f64).sqrt() as f32);
    }

    /// The norm of a gradient of many chunks is the same bits on 1 and 3 threads (fixed chunks, summed in order).
    #[test]
    fn the_norm_does_not_depend_on_the_thread_count() {
        let n = 5 * CHUNK + 3;
        let values: Vec<f32> = (0..n).map(|i| ((i as f32) * 0.731).sin() * (1.0 + (i % 97) as f32)).collect();
        let norm_on = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                let mut g = Gradients::new();
                g.insert("w", Tensor::from_vec(values.clone(), n, &Device::Cpu).unwrap()).unwrap();
                g.insert("b", Tensor::new(&[3f32, -4.0], &Device::Cpu).unwrap()).unwrap();
                global_norm(&g).unwrap().to_bits()
            })
        };
        let one = norm_on(1);
        assert_eq!(norm_on(3), one);
        let exact = values.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>().sqrt() as f32;
        let want = (f64::from(exact) * f64::from(exact) + 25.0).sqrt() as f32;
        assert!((f32::from_bits(one) - want).abs() <= want * 1e-6, "{} vs {want}", f32::from_bits(one));
    }

    #[test]
    fn a_bad_max_norm_is_refused() {
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let err = clip_grad_norm(&mut grads(&[("a", &[1.0])]), bad).unwrap_err();
            assert_eq!(err.code(), "MARVEL_INVALID_ARGUMENT");
        }
    }
}
