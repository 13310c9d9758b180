//! The Winograd-transformed weights of one convolution, kept between calls and tied to the values they came from.
//!
//! A weight tensor's values can change under the model: a model built for inference from a training run's
//! `Var::as_detached_tensor()` shares the variables' storage, which the optimizer overwrites in place each step.
//! So the cache is keyed by the weight tensor's identity (candle's `TensorId`, shared by its clones only) and a
//! fingerprint of its values and shape, checked on every call: one read of the weights, less work than the
//! transform itself (which reads them and writes 16/9 as much). Another tensor, or the same one changed in place,
//! is never served the transform of other values.

use std::sync::Mutex;

use candle_core::{Storage, Tensor, TensorId};
use rayon::prelude::*;

use super::winograd::transform_weights;

#[derive(Debug, Default)]
pub(super) struct WinogradCache {
    /// (identity and fingerprint of the source weights, their transform).
    slot: Mutex<Option<((TensorId, u64), Tensor)>>,
}

impl WinogradCache {
    /// The transform of `weight` (`[c_out, c_in, 3, 3]`, f32 on the CPU), recomputed when its values changed since
    /// the last call.
    pub fn transformed(&self, weight: &Tensor) -> candle_core::Result<Tensor> {
        let key = (weight.id(), fingerprint(weight)?);
        // Holding the lock through the transform spares racing callers from computing it twice.
        let mut slot = self.slot.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((k, u)) = &*slot {
            if *k == key {
                return Ok(u.clone());
            }
        }
        let u = transform_weights(weight)?;
        *slot = Some((key, u.clone()));
        Ok(u)
    }
}

const CHUNK: usize = 1 << 16;
const LANES: usize = 8;

/// SplitMix64's finaliser: every input bit affects every output bit.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A 64-bit fingerprint of an f32 CPU tensor's shape and values (bit patterns, in order). Each of 8 lanes folds
/// its values by `acc = (acc ^ bits) * odd`, a bijection of each value given the rest, so a change to any single
/// value always changes the fingerprint; the 8 independent chains keep the multiplier busy, so the pass runs at
/// memory speed.
pub(super) fn fingerprint(weight: &Tensor) -> candle_core::Result<u64> {
    let weight = weight.contiguous()?;
    let (storage, layout) = weight.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else { candle_core::bail!("fingerprint: weights not on the CPU") };
    let Some((start, end)) = layout.contiguous_offsets() else { candle_core::bail!("fingerprint: not contiguous") };
    let values = &cpu.as_slice::<f32>()?[start..end];
    let chunks: Vec<u64> = values
        .par_chunks(CHUNK)
        .enumerate()
        .map(|(i, chunk)| {
            let mut acc: [u64; LANES] = std::array::from_fn(|l| mix((i * LANES + l) as u64 + 1));
            let mut groups = chunk.chunks_exact(LANES);
            for group in &mut groups {
                for (a, v) in acc.iter_mut().zip(group) {
                    *a = (*a ^ u64::from(v.to_bits())).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                }
            }
            for (a, v) in acc.iter_mut().zip(groups.remainder()) {
                *a = (*a ^ u64::from(v.to_bits())).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            }
            acc.into_iter().fold(0, |h, a| mix(h ^ a))
        })
        .collect();
    let shape = weight.dims().iter().fold(0, |h, &d| mix(h ^ d as u64));
    Ok(chunks.into_iter().fold(shape, |h, c| mix(h ^ c)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn any_single_change_changes_the_fingerprint() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1., (3, 5, 3, 3), &dev).unwrap();
        let base = fingerprint(&w).unwrap();
        assert_eq!(fingerprint(&w.copy().unwrap()).unwrap(), base);
        let v = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for i in 0..v.len() {
            let mut changed = v.clone();
            changed[i] = f32::from_bits(changed[i].to_bits() ^ 1); // one ulp
            let t = Tensor::from_vec(changed, w.shape(), &dev).unwrap();
            assert_ne!(fingerprint(&t).unwrap(), base, "value {i}");
        }
        // The same values in another shape are other weights.
        assert_ne!(fingerprint(&w.reshape((5, 3, 3, 3)).unwrap()).unwrap(), base);
        // Past one chunk, in the last one.
        let big = Tensor::zeros(CHUNK + 3, candle_core::DType::F32, &dev).unwrap();
        let mut last = vec![0f32; CHUNK + 3];
        last[CHUNK + 2] = 1.0;
        let last = Tensor::from_vec(last, CHUNK + 3, &dev).unwrap();
        assert_ne!(fingerprint(&big).unwrap(), fingerprint(&last).unwrap());
    }

    /// Two weight tensors through one cache, alternately: each call gets the transform of the tensor it passed,
    /// including a second tensor with the same values (its own entry, not the first one's).
    #[test]
    fn the_transform_belongs_to_the_tensor_it_came_from() {
        let dev = Device::Cpu;
        let a = Tensor::randn(0f32, 1., (2, 3, 3, 3), &dev).unwrap();
        let b = Tensor::randn(0f32, 1., (2, 3, 3, 3), &dev).unwrap();
        let a_copy = a.copy().unwrap();
        let cache = WinogradCache::default();
        let bits = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let (ua, ub) = (bits(&transform_weights(&a).unwrap()), bits(&transform_weights(&b).unwrap()));
        for (w, want) in [(&a, &ua), (&b, &ub), (&a, &ua), (&a_copy, &ua), (&b, &ub)] {
            assert_eq!(&bits(&cache.transformed(w).unwrap()), want);
        }
        let slot = cache.slot.lock().unwrap();
        assert_eq!(slot.as_ref().unwrap().0 .0, b.id(), "the entry names the tensor it came from");
    }
}
