//! Linear weights packed once for `kernels::sgemm` (x86-64 with AVX-512), and their product over any number of
//! rows. Off x86-64 there is no such kernel: `PackedWt` has no values there, so no layer is ever packed.

#[cfg(target_arch = "x86_64")]
pub use crate::nn::kernels::sgemm::PackedWt;

/// Off x86-64 nothing is packed: a type without values, so that code naming it needs no gate of its own.
#[cfg(not(target_arch = "x86_64"))]
#[derive(Debug)]
pub enum PackedWt {}

#[cfg(not(target_arch = "x86_64"))]
impl PackedWt {
    pub fn new(_w: &[f32], _n: usize, _k: usize) -> Self {
        unreachable!("no product reads packed weights off x86-64: nothing packs them")
    }

    pub fn in_place(_w: Vec<f32>, _n: usize, _k: usize, _scratch: &mut Vec<f32>) -> Self {
        unreachable!("no product reads packed weights off x86-64: nothing packs them")
    }

    pub fn n(&self) -> usize {
        match *self {}
    }

    pub fn k(&self) -> usize {
        match *self {}
    }

    pub fn unpacked(&self) -> Vec<f32> {
        match *self {}
    }
}

#[cfg(target_arch = "x86_64")]
/// Rows per call of the packed product: at more, A's depth strip (rows·KC floats) outgrows L2 and the `gemm`
/// crate's blocking was ahead (see `fused::SGEMM_MAX_ROWS`); a batch's rows go through in even slices under it,
/// each reading the packed weights once more (from L3 or DRAM, as the one pack per call did).
const ROWS_PER_CALL: usize = 1024;

/// dst (m, n) = [dst +] a (m, k) · wᵀ on up to `threads` threads of the compute pool, m = a.len() / k. Through
/// `kernels::sgemm` at the AVX-512 level; at a level forced lower (tests, `MARVEL_SIMD`), through the whole weight
/// unpacked again on every call, on the whole pool: correct, and slow.
pub(super) fn gemm_packed(dst: &mut [f32], accumulate: bool, a: &[f32], w: &PackedWt, threads: usize) {
    let (n, k) = (w.n(), w.k());
    let m = a.len() / k;
    assert!(dst.len() == m * n && a.len() == m * k, "gemm_packed: sizes do not match");
    if m == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if crate::nn::kernels::level() == crate::nn::kernels::Level::Avx512 {
        let calls = m.div_ceil(ROWS_PER_CALL);
        let rows = m.div_ceil(calls);
        for (a, dst) in a.chunks(rows * k).zip(dst.chunks_mut(rows * n)) {
            // SAFETY: the level is one the CPU supports; a holds dst.len() / n rows of k values, dst is borrowed
            // mutably and a shared.
            unsafe {
                crate::nn::kernels::sgemm::sgemm_packed(
                    dst.len() / n,
                    a.as_ptr(),
                    k,
                    w,
                    dst.as_mut_ptr(),
                    n,
                    accumulate,
                    threads,
                )
            };
        }
        return;
    }
    let _ = threads; // the gemm crate below takes the whole pool
    super::gemm_wt(dst, accumulate, a, &w.unpacked(), m, k, n);
}
