//! The products whose B is a stride-1 convolution's shifted windows, read in place through a table of their
//! rows (`nn::ops::conv_shifted`): no pack of B; A (a convolution's weight, few rows) copied whole per block, and
//! the loops ordered so that a panel of B is read from L2 once per block.

use super::{Blocks, Job, Right, Rows, Tile, A_PAD, MR, NR};

/// Bytes of L1 that `Job::block_in_place` fills with A's rows and a panel of B before it turns its loops around:
/// tuned on the 48 KiB L1d of the Zen 5 EPYC the shifted-window convolutions were measured on. On Zen 4's 32 KiB
/// L1d, 20, 26, 32 and 40 KiB measured alike (the stage-2 parts at 1 thread, alternating runs, within ±5%).
const IN_PLACE_L1: usize = 40 * 1024;

/// Blocks for [`sgemm_ab_rows`] with `m` rows of A and column blocks of `nc`: as deep as keeps A's m rows and one
/// panel of B within [`IN_PLACE_L1`] (144 at m = 32, 96 at m = 64), so that each panel meets all of A's tiles
/// from L1; 256 deep where that would be under 64 (m = 128: 48 deep measured ~14% slower than the gemm crate on
/// im2col's columns), and then each tile meets every panel instead.
pub(crate) fn in_place_blocks(m: usize, nc: usize) -> Blocks {
    let kc = IN_PLACE_L1.saturating_sub(4 * A_PAD * m) / (4 * m + 4 * NR);
    Blocks { kc: if kc < 64 { 256 } else { kc / 16 * 16 }, nc }
}

/// C ← A·B (+ C when `accumulate`): A (m, k) with row stride `lda`; B (k, n) given by where each of its k rows
/// starts, `rows[kk]` floats from `b` (n values each: a stride-1 convolution's shifted windows, read in place
/// from its zero-padded input); C (m, n) with row stride `ldc`; on up to `threads` threads of the current pool.
///
/// # Safety
/// As for [`sgemm_wt`]; `rows` holds k offsets, and each row of B holds n readable values from `b + rows[kk]`.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn sgemm_ab_rows(
    blocks: Blocks,
    m: usize,
    n: usize,
    k: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    rows: &[usize],
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
    threads: usize,
) {
    assert_eq!(rows.len(), k, "sgemm_ab_rows: one offset per row of B");
    let (a_rows, right) = (Rows::Strided(lda), Right::Plain(rows.as_ptr()));
    let job = Job { blocks, m, k, a, a_rows, w: b, right, c, ldc, accumulate };
    job.run(n, threads)
}

impl Job {
    /// C[.., nb..nb+nc] (+)= A[.., k0..k0+kc] · B[k0..k0+kc, nb..nb+nc], B's rows read in place where `table`
    /// says: every panel against every tile, so that a panel's kc rows (kc·128 bytes) come from L2 once and from L1
    /// for the other tiles. All of A's rows are copied per block (a convolution's weight: few rows, and the
    /// blocks shallow enough that they and a panel fit L1, see [`in_place_blocks`]).
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn block_in_place(
        &self,
        table: *const usize,
        k0: usize,
        kc: usize,
        nb: usize,
        nc: usize,
        at: &mut [f32],
        accumulate: bool,
    ) {
        let ats = kc + A_PAD;
        for r in 0..self.m {
            std::ptr::copy_nonoverlapping(self.a_rows.start(self.a, r).add(k0), at.as_mut_ptr().add(r * ats), kc);
        }
        let panels = nc.div_ceil(NR);
        // Panels outer when A's copy and a panel fit L1 together, else (a tall A, which the blocks then make deep)
        // tiles outer, each against every panel.
        let panels_outer = (self.m * ats + kc * NR) * 4 <= IN_PLACE_L1;
        let (outer, inner) = if panels_outer { (panels, self.m.div_ceil(MR)) } else { (self.m.div_ceil(MR), panels) };
        for o in 0..outer {
            for n in 0..inner {
                let (p, i) = if panels_outer { (o, n * MR) } else { (n, o * MR) };
                let tile = Tile {
                    kc,
                    a: at.as_ptr().add(i * ats),
                    lda: ats,
                    bp: self.w.add(nb + p * NR),
                    b_rows: table.add(k0),
                    c: self.c.add(i * self.ldc + nb + p * NR),
                    ldc: self.ldc,
                    cols: NR.min(nc - p * NR),
                    accumulate,
                };
                tile.run_rows::<true>(MR.min(self.m - i));
            }
        }
    }
}
