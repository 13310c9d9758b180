//! Working buffers the training ops reuse from call to call: a convolution's columns and their gradient; also the
//! per-thread band buffers of the VQGAN's Winograd convolutions (`model::maskgit::winograd`, 1-2 MB each).
//!
//! At stage-2 sizes one image's columns are tens of MB (a 3x3 convolution of 32 channels at 256x256: 75 MB).
//! Freshly allocated for every call, such a buffer is above glibc's mmap threshold, so each call maps it, the
//! kernel zeroes it page by page on first touch and unmaps it on free: a profile of the stage-2 step put ~25% of
//! it in those page faults. Here a buffer goes back to a small pool when dropped and the next call takes it
//! already mapped. The pool is bounded ([`KEEP`] buffers, [`KEEP_BYTES`] in all) and [`release`] empties it
//! (the trainer does when it is dropped), so an idle process does not hold the memory.

use std::ops::{Deref, DerefMut};
use std::sync::Mutex;

/// Buffers the process's pool keeps: a convolution's band task holds at most three at once (columns, their
/// gradient, the output's gradient transposed) and each thread runs one.
const KEEP: usize = 16;
/// Bytes the process's pool keeps at most; a buffer that would pass it is freed when dropped.
const KEEP_BYTES: usize = 512 << 20;

/// The bounded set of buffers waiting for their next user.
pub(crate) struct Pool {
    bufs: Mutex<Vec<Vec<f32>>>,
    keep: usize,
    keep_bytes: usize,
}

static POOL: Pool = Pool::new(KEEP, KEEP_BYTES);

/// A buffer of `len` f32 values whose contents are unspecified (stale values of an earlier user): the caller
/// writes every value before reading it. Back to its pool when dropped.
pub(crate) struct Scratch {
    values: Vec<f32>,
    pool: &'static Pool,
}

/// A buffer of `len` values from the process's pool.
pub(crate) fn scratch(len: usize) -> Scratch {
    POOL.take(len)
}

/// Frees every buffer of the process's pool.
pub(crate) fn release() {
    POOL.clear();
}

impl Pool {
    const fn new(keep: usize, keep_bytes: usize) -> Self {
        Self { bufs: Mutex::new(Vec::new()), keep, keep_bytes }
    }

    fn bufs(&self) -> std::sync::MutexGuard<'_, Vec<Vec<f32>>> {
        self.bufs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The smallest pooled buffer that holds `len` values, else a new one (a smaller pooled one is not grown:
    /// that would copy its stale values).
    fn take(&'static self, len: usize) -> Scratch {
        if len == 0 {
            return Scratch { values: Vec::new(), pool: self };
        }
        let mut bufs = self.bufs();
        let fits = (0..bufs.len()).filter(|&i| bufs[i].capacity() >= len).min_by_key(|&i| bufs[i].capacity());
        let mut values = fits.map(|i| bufs.swap_remove(i)).unwrap_or_default();
        drop(bufs);
        // Only the growth is written (zeros); what a pooled buffer held stays, unspecified to the caller.
        values.resize(len, 0.0);
        Scratch { values, pool: self }
    }

    /// Keeps `values` for the next user, then frees the smallest buffers while the pool is over its bounds: the
    /// large ones are those whose mapping is worth keeping.
    fn give_back(&self, values: Vec<f32>) {
        if values.capacity() == 0 || values.capacity() * 4 > self.keep_bytes {
            return;
        }
        let mut bufs = self.bufs();
        bufs.push(values);
        while bufs.len() > self.keep || bufs.iter().map(|b| b.capacity() * 4).sum::<usize>() > self.keep_bytes {
            let smallest = (0..bufs.len()).min_by_key(|&i| bufs[i].capacity()).expect("the pool is not empty");
            bufs.swap_remove(smallest);
        }
    }

    fn clear(&self) {
        self.bufs().clear();
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        self.pool.give_back(std::mem::take(&mut self.values));
    }
}

impl Deref for Scratch {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.values
    }
}

impl DerefMut for Scratch {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.values
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_bounded_and_released() {
        let pool: &'static Pool = Box::leak(Box::new(Pool::new(3, 8000)));
        let mut a = pool.take(1000);
        a[999] = 7.0;
        let ptr = a.as_ptr();
        drop(a);
        // A smaller request takes the same allocation, its old values still there.
        let b = pool.take(900);
        assert_eq!((b.len(), b.as_ptr()), (900, ptr));
        // Two at once: the second is a new buffer.
        let c = pool.take(10);
        assert_ne!(c.as_ptr(), ptr);
        drop((b, c));
        assert_eq!(pool.bufs().len(), 2);
        // The smallest that fits is picked.
        let d = pool.take(5);
        assert_ne!(d.as_ptr(), ptr);
        // An empty request takes nothing from the pool and gives nothing back.
        drop(pool.take(0));
        assert_eq!(pool.bufs().len(), 1);
        drop(d);
        // A buffer beyond the byte bound (8000 bytes) on its own is freed, the pool unchanged.
        drop(pool.take(2500));
        assert_eq!(pool.bufs().len(), 2);
        // One that fits the bound but not with the others: the smaller ones go.
        drop(pool.take(1500));
        let caps = |pool: &Pool| pool.bufs().iter().map(|b| b.capacity()).collect::<Vec<_>>();
        assert_eq!(caps(pool).len(), 1);
        assert!(caps(pool)[0] >= 1500);
        // Beyond the count bound: the smallest go, the large one stays.
        drop([pool.take(1), pool.take(1), pool.take(1), pool.take(1), pool.take(1)]);
        assert_eq!(caps(pool).len(), 3);
        assert!(caps(pool).iter().any(|&c| c >= 1500));
        pool.clear();
        assert!(pool.bufs().is_empty());
    }
}
