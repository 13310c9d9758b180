//! The memory a stack of blocks computes in, kept by its owner between calls.
//!
//! A fresh buffer for every call cost a page fault per 4 KiB page: glibc maps blocks this size afresh (or trims
//! them off the heap's top when freed) and the kernel zeroes each page on first touch. On the single layout a
//! one-image encode faulted ~810 times (~7% of its CPU time in the faults and the zeroing, by perf), ~36 times
//! with the buffer kept.

use std::sync::Mutex;

/// Above this many floats (32 MiB) a call's buffer is not kept: batch 8 of the wider ViTs (S-128 ~70 MiB, L-32 ~95
/// MiB), where the faults weigh little against the products (compute grows with width², memory with width) and
/// the memory would stay resident beside the weights for as long as the model lives.
const KEEP_MAX: usize = 8 << 20;

/// Scratch memory for the fused inference path of one stack of blocks (`ResidualAttentionBlock::forward_all_rows`),
/// owned by the model that runs the stack and freed with it. Not shared between calls that overlap: a call that
/// finds it in use computes in a buffer of its own.
#[derive(Default)]
pub struct BlockScratch {
    kept: Mutex<Vec<f32>>,
}

impl BlockScratch {
    /// Runs `f` on `n` floats of unspecified values: the kept buffer (grown to `n` if needed) when it is free and
    /// `n` is within [`KEEP_MAX`], else a fresh one that is dropped afterwards.
    pub(crate) fn with<R>(&self, n: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
        if n <= KEEP_MAX {
            if let Ok(mut kept) = self.kept.try_lock() {
                if kept.len() < n {
                    // Dropped first, so that the old and new buffers are never resident together.
                    *kept = Vec::new();
                    kept.resize(n, 0.0);
                }
                return f(&mut kept[..n]);
            }
        }
        f(&mut vec![0f32; n])
    }
}

/// A clone (of the model that owns it) starts with nothing kept.
impl Clone for BlockScratch {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl std::fmt::Debug for BlockScratch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kept = self.kept.try_lock().map(|v| v.len());
        f.debug_struct("BlockScratch").field("kept_floats", &kept.ok()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The buffer is kept and reused up to the bound, and a call that overlaps another gets one of its own.
    #[test]
    fn keeps_one_buffer_within_the_bound() {
        let scratch = BlockScratch::default();
        let first = scratch.with(1000, |buf| buf.as_ptr() as usize);
        let again = scratch.with(500, |buf| {
            assert_eq!(buf.len(), 500);
            let nested = scratch.with(500, |inner| inner.as_ptr() as usize);
            assert_ne!(nested, buf.as_ptr() as usize, "an overlapping call got the buffer in use");
            buf.as_ptr() as usize
        });
        assert_eq!(first, again, "a smaller call did not reuse the kept buffer");
        scratch.with(KEEP_MAX + 1, |buf| assert_eq!(buf.len(), KEEP_MAX + 1));
        assert_eq!(scratch.kept.lock().unwrap().len(), 1000, "a call above the bound replaced the kept buffer");
        assert_eq!(scratch.clone().kept.lock().unwrap().len(), 0, "a clone shares or copies the kept buffer");
    }
}
