//! A linear layer's Wᵀ packed once, at load, into the panels `Job::block` reads: no pack per call.
//!
//! Packed per call, every product read its weights from DRAM in short runs (kc floats of 16 rows at a time, the
//! rows 2-16 KiB apart), transposed them and wrote the panels to L2 before any tile ran: 6-7% of an S-128 encode at
//! batch 1, with the cores' FMA units idle meanwhile. Packed once, the first tile of each block reads its panels
//! as one sequential run (kc·128 bytes a panel), which the hardware prefetcher streams under the tile's FMAs.

use rayon::prelude::*;

use super::{pack_wt, Blocks, Job, Right, Rows, NR};

/// Wᵀ of a (n, k) weight as the kernel reads it: depth blocks of `kc` rows (the last may be shorter), each the
/// 32-column panels of all n columns (zero past n): (kk, j) of block k0 at k0·n_pad + (j / 32)·kc_b·32 + (kk - k0)·32
/// + j % 32, where kc_b is that block's depth and n_pad is n rounded up to whole panels.
pub struct PackedWt {
    n: usize,
    k: usize,
    kc: usize,
    data: Vec<f32>,
}

impl PackedWt {
    /// Packs `w`, (n, k) row-major as nn.Linear stores it, for this CPU's blocks.
    ///
    /// # Panics
    /// When `w` does not hold n·k values, n or k is 0, or the CPU lacks AVX-512.
    pub fn new(w: &[f32], n: usize, k: usize) -> Self {
        Self::with_depth(w, n, k, Blocks::for_this_cpu().kc)
    }

    /// [`Self::new`] in `w`'s own memory where n is a whole number of panels (then the packed form has W's size):
    /// W is copied to `scratch` (kept by the caller across weights) and packed back over itself, so no fresh memory
    /// is faulted in. Fresh memory otherwise.
    pub fn in_place(mut w: Vec<f32>, n: usize, k: usize, scratch: &mut Vec<f32>) -> Self {
        if !n.is_multiple_of(NR) {
            return Self::new(&w, n, k);
        }
        let kc = Blocks::for_this_cpu().kc;
        scratch.clear();
        scratch.extend_from_slice(&w);
        Self::pack_into(scratch, n, k, kc, &mut w);
        Self { n, k, kc, data: w }
    }

    fn with_depth(w: &[f32], n: usize, k: usize, kc: usize) -> Self {
        let mut data = vec![0f32; k * n.div_ceil(NR) * NR];
        Self::pack_into(w, n, k, kc, &mut data);
        Self { n, k, kc, data }
    }

    /// `data` (k·n_pad floats) ← W packed.
    fn pack_into(w: &[f32], n: usize, k: usize, kc: usize, data: &mut [f32]) {
        assert!(n > 0 && k > 0 && w.len() == n * k, "PackedWt: {} values for a ({n}, {k}) weight", w.len());
        assert!(crate::nn::kernels::Level::Avx512.supported(), "PackedWt: the packed product needs AVX-512");
        let n_pad = n.div_ceil(NR) * NR;
        assert_eq!(data.len(), k * n_pad, "PackedWt: room for the packed weight");
        data.par_chunks_mut(kc * n_pad).enumerate().for_each(|(b, block)| {
            let k0 = b * kc;
            // SAFETY: AVX-512F is supported (asserted above); w holds n rows of k values, the block n_pad·(its depth).
            unsafe { pack_wt(w.as_ptr().add(k0), k, kc.min(k - k0), n, block) };
        });
    }

    /// Where the packed values are (tests: whether a pack reused the weight's memory).
    #[cfg(test)]
    pub(crate) fn data_ptr(&self) -> *const f32 {
        self.data.as_ptr()
    }

    /// Output features (W's rows).
    pub fn n(&self) -> usize {
        self.n
    }

    /// Input features (W's columns).
    pub fn k(&self) -> usize {
        self.k
    }

    /// W as (n, k) row-major again, for the paths that need that layout.
    pub fn unpacked(&self) -> Vec<f32> {
        let n_pad = self.n.div_ceil(NR) * NR;
        let mut w = vec![0f32; self.n * self.k];
        for (j, row) in w.chunks_exact_mut(self.k).enumerate() {
            for (kk, v) in row.iter_mut().enumerate() {
                let (k0, kc_b) = (kk / self.kc * self.kc, self.kc.min(self.k - kk / self.kc * self.kc));
                *v = self.data[k0 * n_pad + j / NR * kc_b * NR + (kk - k0) * NR + j % NR];
            }
        }
        w
    }
}

/// Shapes only: the values are a model's weights.
impl std::fmt::Debug for PackedWt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedWt").field("n", &self.n).field("k", &self.k).field("kc", &self.kc).finish()
    }
}

/// C ← A·Wᵀ (+ C when `accumulate`) with W packed: A (m, k) with row stride `lda`, C (m, n) with row stride `ldc`;
/// on up to `threads` threads of the current rayon pool.
///
/// # Safety
/// The CPU must support AVX-512F; A and C must hold the elements their strides address (k = `w.k()`, n = `w.n()`),
/// C must not overlap A, and nothing else may access C during the call.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn sgemm_packed(
    m: usize,
    a: *const f32,
    lda: usize,
    w: &PackedWt,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
    threads: usize,
) {
    let blocks = Blocks { kc: w.kc, nc: Blocks::for_this_cpu().nc };
    let right = Right::Packed(w.n.div_ceil(NR) * NR);
    let job = Job { blocks, m, k: w.k, a, a_rows: Rows::Strided(lda), w: w.data.as_ptr(), right, c, ldc, accumulate };
    job.run(w.n, threads)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Packed and unpacked again, any shape gives back W; the product from the packed form is the per-call pack's
    /// bit for bit (the same panels, the same order of sums), with tails in m, n and k and several depth blocks.
    #[test]
    #[cfg_attr(not(marvel_host_avx512), ignore = "AVX-512: the build host lacks it, or this is a cross build")]
    fn packed_once_gives_the_per_call_products() {
        assert!(crate::nn::kernels::Level::Avx512.supported());
        let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
        for (m, n, k, kc) in [(29, 75, 600, 256), (12, 32, 256, 256), (5, 1, 17, 16), (40, 100, 64, 32)] {
            let w: Vec<f32> = (0..n * k).map(|i| ((i * 53 % 97) as f32 - 48.0) * 0.01).collect();
            let a: Vec<f32> = (0..m * k).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.01).collect();
            let packed = PackedWt::with_depth(&w, n, k, kc);
            assert_eq!(packed.unpacked(), w, "({n}, {k}) depth {kc}");
            for (threads, accumulate) in [(1, false), (2, true), (3, false)] {
                let c0: Vec<f32> = (0..m * n).map(|i| (i % 7) as f32).collect();
                let (mut want, mut got) = (c0.clone(), c0.clone());
                let blocks = Blocks { kc, nc: Blocks::for_this_cpu().nc };
                pool.install(|| unsafe {
                    super::super::sgemm_wt_in(
                        blocks,
                        m,
                        n,
                        k,
                        a.as_ptr(),
                        k,
                        w.as_ptr(),
                        k,
                        want.as_mut_ptr(),
                        n,
                        accumulate,
                        threads,
                    );
                    sgemm_packed(m, a.as_ptr(), k, &packed, got.as_mut_ptr(), n, accumulate, threads);
                });
                assert_eq!(got, want, "({m}, {n}, {k}) depth {kc}, {threads} threads, accumulate {accumulate}");
            }
        }
    }
}
