//! f32 linear-layer product for AVX-512 CPUs: C (m×n, row-major) = A·Wᵀ [+ C], with the weight W read in place
//! as nn.Linear stores it, (n, k) row-major. For a stride-1 convolution's windows, read in place from its padded
//! input (`nn::ops::conv_shifted`), an operand's rows may instead be given by a table of where each starts: A's
//! ([`sgemm_wt_arows`]), or B's for C = A·B with B (k, n) ([`sgemm_ab_rows`]).
//!
//! The `gemm` crate packs and splits work in a way that pays off on tall matrices; on the block's b = 1 shapes
//! (m = 385 rows; k, n of 512..2048) this plain BLIS-style kernel measured 5-30% faster, best of 8 runs on two
//! threads of an AVX-512 Xeon, while from ~1500 rows on the `gemm` crate was ahead by 0-10%. `fused::gemm_wt`
//! picks accordingly, at the AVX-512 level of `kernels::level()` only. The kernel:
//! - a 12×32 register tile: 24 zmm accumulators; per k step two vector loads of B and 12 broadcasts of A;
//! - A's 12-row tile copied into rows one cache line longer than KC (12·KC floats per tile, against NC/32 panels
//!   of 24·KC FMAs each: well under 1%). Read in place, A's rows are k floats apart, and at k = 1024, 2048 or 4096
//!   (L-32's every product, S-128's MLP down-projection) all 12 land in one L1 set: more than the 8 ways of Zen 4's
//!   L1d, so A's lines kept being evicted. The copy took L-32's products from 63 to 85-92 GFLOP per CPU-second on
//!   the EPYC (one thread; S-128's down-projection from 57-88 to 85-90; the rest unchanged). A kk-major copy
//!   (the 12 broadcasts of a k step from one 48-byte run) measured no faster;
//! - while a tile runs against its panels, the next tile's rows of A are asked for (into L2), a share per panel,
//!   and each register tile asks for its rows of C before its k loop. A's KC-deep strip (m·KC floats) and C fall
//!   out of L2 between visits, and the copy and the final loads of C then waited on L3: with both prefetches an
//!   S-128 encode at batch 1 took ~5% less CPU time (0.27-0.30 s against 0.29-0.32 s, alternating runs on a
//!   loaded 2-core EPYC), the decoder ViT ~6% (0.29-0.31 against 0.33);
//! - Wᵀ packed per KC×NC block into 32-column panels (16×16 register transposes) that stay in L2; the block
//!   sizes and why in `blocks` (KC 256, NC 512 on both the Xeon and the EPYC). A loaded model's ViT weights are
//!   packed once instead, whole (`packed`, [`PackedWt`]): the tiles then read the same panels from memory;
//! - threads split the columns, so each packs only its own part of W and nothing is shared or synchronised.
//!
//! `bench` (an ignored test) times the ViTs' batch-1 products per block-size variant; `bench/README.md` has its
//! figures next to onnxruntime's and torch's on the same shapes.

// The AVX-512 intrinsics are stable since Rust 1.89, above the workspace's declared 1.88; the `gemm` crate's
// `x86-v4` feature that Cargo.toml enables already needs 1.89 on x86-64 (`#[target_feature(enable = "avx512f")]`).
#![allow(clippy::incompatible_msrv)]

use std::arch::x86_64::*;
use std::cell::RefCell;

use rayon::prelude::*;

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod bench;
mod blocks;
mod in_place;
mod packed;

pub(crate) use blocks::Blocks;
pub(crate) use in_place::{in_place_blocks, sgemm_ab_rows};
pub(crate) use packed::sgemm_packed;
pub use packed::PackedWt;

const MR: usize = 12;
/// Columns of a panel and of a register tile.
pub(crate) const NR: usize = 32;

/// C ← A·Wᵀ (+ C when `accumulate`): A (m, k) with row stride `lda`, W (n, k) with row stride `ldw`, C (m, n)
/// with row stride `ldc`; on up to `threads` threads of the current rayon pool.
///
/// # Safety
/// The CPU must support AVX-512F (`kernels::Level::Avx512`); A, W and C must hold the elements their strides
/// address; C must not overlap A or W, and nothing else may access C during the call.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn sgemm_wt(
    m: usize,
    n: usize,
    k: usize,
    a: *const f32,
    lda: usize,
    w: *const f32,
    ldw: usize,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
    threads: usize,
) {
    sgemm_wt_in(Blocks::for_this_cpu(), m, n, k, a, lda, w, ldw, c, ldc, accumulate, threads)
}

/// C ← A·Wᵀ (+ C when `accumulate`), A (m, k) given by where each of its m rows starts, `rows[i]` floats from
/// `a` (k values each: a convolution's shifted windows again, for its weight's gradient); otherwise as
/// [`sgemm_wt`].
///
/// # Safety
/// As for [`sgemm_wt`]; `rows` holds m offsets, and each row of A holds k readable values from `a + rows[i]`.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn sgemm_wt_arows(
    blocks: Blocks,
    m: usize,
    n: usize,
    k: usize,
    a: *const f32,
    rows: &[usize],
    w: *const f32,
    ldw: usize,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
    threads: usize,
) {
    assert_eq!(rows.len(), m, "sgemm_wt_arows: one offset per row of A");
    let (a_rows, right) = (Rows::At(rows.as_ptr()), Right::Transposed(ldw));
    let job = Job { blocks, m, k, a, a_rows, w, right, c, ldc, accumulate };
    job.run(n, threads)
}

/// [`sgemm_wt`] with the given block sizes (tests and benchmarks compare them).
///
/// # Safety
/// As for [`sgemm_wt`].
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn sgemm_wt_in(
    blocks: Blocks,
    m: usize,
    n: usize,
    k: usize,
    a: *const f32,
    lda: usize,
    w: *const f32,
    ldw: usize,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
    threads: usize,
) {
    let (a_rows, right) = (Rows::Strided(lda), Right::Transposed(ldw));
    let job = Job { blocks, m, k, a, a_rows, w, right, c, ldc, accumulate };
    job.run(n, threads)
}

/// How the right operand is stored.
#[derive(Clone, Copy)]
enum Right {
    /// W (n, k), rows `ldw` apart: the product is A·Wᵀ, W packed per block.
    Transposed(usize),
    /// B (k, n), row kk at the table's kk-th offset: the product is A·B, B read in place (see `Tile::b_rows`).
    Plain(*const usize),
    /// Wᵀ packed once ([`PackedWt`], its columns padded to this many): the product is A·Wᵀ, no pack per call.
    Packed(usize),
}

/// Where the left operand's rows start, in floats from its pointer.
#[derive(Clone, Copy)]
enum Rows {
    /// `ld` apart.
    Strided(usize),
    /// At the listed offsets, one per row (the caller's table, alive for the call).
    At(*const usize),
}

impl Rows {
    /// The start of row `r` of the operand at `base`.
    #[inline(always)]
    unsafe fn start(self, base: *const f32, r: usize) -> *const f32 {
        match self {
            Rows::Strided(ld) => base.add(r * ld),
            Rows::At(table) => base.add(*table.add(r)),
        }
    }
}

/// The arguments of one call, shared by its threads.
struct Job {
    blocks: Blocks,
    m: usize,
    k: usize,
    a: *const f32,
    a_rows: Rows,
    w: *const f32,
    right: Right,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
}
// SAFETY: threads only read A and W, and write disjoint column ranges of C (`sgemm_wt`'s contract).
unsafe impl Send for Job {}
unsafe impl Sync for Job {}

/// The padding, in floats, after each row of the copied A tile: one cache line, so that its 12 rows fall in 12
/// different L1 sets whatever A's row stride.
const A_PAD: usize = 16;

/// This thread's buffers, kept between calls: the packed KC×NC block of Wᵀ and the copied 12×KC tile of A.
#[derive(Default)]
struct Buffers {
    wt: Vec<f32>,
    a: Vec<f32>,
}

thread_local! {
    static BUFFERS: RefCell<Buffers> = RefCell::new(Buffers::default());
}

impl Job {
    /// All n columns of C, on up to `threads` threads.
    fn run(&self, n: usize, threads: usize) {
        if self.m == 0 || n == 0 {
            return;
        }
        let panels = n.div_ceil(NR);
        let parts = threads.clamp(1, panels);
        if parts == 1 {
            self.columns(0, n);
            return;
        }
        // Whole panels per thread, as even as they divide.
        (0..parts).into_par_iter().for_each(|t| {
            let (p0, p1) = (panels * t / parts, panels * (t + 1) / parts);
            self.columns(p0 * NR, (p1 * NR).min(n));
        });
    }

    /// Columns j0..j1 of C, on this thread.
    fn columns(&self, j0: usize, j1: usize) {
        BUFFERS.with(|buffers| {
            let Buffers { wt: bp, a: at } = &mut *buffers.borrow_mut();
            let Blocks { kc: kc_max, nc: nc_max } = self.blocks;
            // Packed W; with B read in place, none, and all of A's rows copied per block (see `block_in_place`).
            let (w_len, a_rows) = match self.right {
                Right::Transposed(_) => (kc_max * nc_max, MR),
                Right::Packed(_) => (0, MR),
                Right::Plain(_) => (0, self.m),
            };
            bp.resize(bp.len().max(w_len), 0.0);
            at.resize(at.len().max(a_rows * (kc_max + A_PAD)), 0.0);
            for k0 in (0..self.k).step_by(kc_max) {
                let kc = kc_max.min(self.k - k0);
                // Later depth blocks add onto the earlier ones.
                let accumulate = self.accumulate || k0 > 0;
                for nb in (j0..j1).step_by(nc_max) {
                    let nc = nc_max.min(j1 - nb);
                    // SAFETY: AVX-512F was checked by the caller of the entry point, which vouches for the pointers.
                    unsafe {
                        match self.right {
                            Right::Transposed(ldw) => {
                                pack_wt(self.w.add(nb * ldw + k0), ldw, kc, nc, bp);
                                self.block(k0, kc, nb, nc, bp.as_ptr(), at, accumulate);
                            }
                            Right::Packed(n_pad) => {
                                // Block k0's panels follow the k0 rows of every earlier block; nb is a whole panel.
                                let block = self.w.add(k0 * n_pad + nb * kc);
                                self.block(k0, kc, nb, nc, block, at, accumulate);
                            }
                            Right::Plain(table) => self.block_in_place(table, k0, kc, nb, nc, at, accumulate),
                        }
                    }
                }
            }
        });
    }

    /// C[.., nb..nb+nc] (+)= A[.., k0..k0+kc] · (packed block): every 12-row tile of A (L1) against every panel.
    /// Each tile is first copied to `at`, rows kc + A_PAD apart: read in place, rows a multiple of 4 KiB apart
    /// (k = 1024, 2048, 4096) all map to one L1 set, and 12 of them overflow an 8-way L1 (Zen 4) on every k step.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn block(
        &self,
        k0: usize,
        kc: usize,
        nb: usize,
        nc: usize,
        bp: *const f32,
        at: &mut [f32],
        accumulate: bool,
    ) {
        let ats = kc + A_PAD;
        let panels = nc.div_ceil(NR);
        // A row's kc floats span at most this many cache lines, whatever its alignment.
        let row_lines = kc.div_ceil(16) + 1;
        for i in (0..self.m).step_by(MR) {
            let rows = MR.min(self.m - i);
            for r in 0..rows {
                std::ptr::copy_nonoverlapping(
                    self.a_rows.start(self.a, i + r).add(k0),
                    at.as_mut_ptr().add(r * ats),
                    kc,
                );
            }
            let next = i + MR;
            let ahead = MR.min(self.m.saturating_sub(next)) * row_lines;
            for p in 0..panels {
                for line in (p * ahead / panels)..((p + 1) * ahead / panels) {
                    let (r, c) = (line / row_lines, (line % row_lines * 16).min(kc - 1));
                    _mm_prefetch::<_MM_HINT_T1>(self.a_rows.start(self.a, next + r).add(k0 + c) as *const i8);
                }
                let tile = Tile {
                    kc,
                    a: at.as_ptr(),
                    lda: ats,
                    bp: bp.add(p * kc * NR),
                    b_rows: std::ptr::null(),
                    c: self.c.add(i * self.ldc + nb + p * NR),
                    ldc: self.ldc,
                    cols: NR.min(nc - p * NR),
                    accumulate,
                };
                tile.run_rows::<false>(rows);
            }
        }
    }
}

/// How far ahead (in floats: four cache lines) `pack_wt` asks for each weight row it reads. The pack is the one
/// place the weights come from DRAM (~100 MB per S-128 forward), and each row is read in short runs (kc floats, 16
/// rows at a 2-8 KiB stride at a time): too short and too many streams for the hardware prefetcher to follow. So
/// each load asks for the same row four lines on (into L1) and for the row 16 on, the next group's, at the same
/// depth (into L2: that load is a group's transpose away). perf's share of `pack_wt` in an S-128 encode at batch 1
/// (1 thread, AMD EPYC with AVX-512, loaded machine), pairs of runs: 7.7/7.1% with neither, 6.7/6.6% with the row
/// ahead alone, 6.4/5.9% with the next group's alone, 5.4/5.2% with both; 256 floats ahead was no better than none.
const PREFETCH_AHEAD: usize = 64;

/// Wᵀ's rows 0..kc, columns 0..nc (W from `w`, row stride ld) as 32-column panels: panel p holds (kk, jj) at
/// p·kc·32 + kk·32 + jj, zero past nc. Panel column jj is row jj of W: 16×16 blocks are transposed in registers.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn pack_wt(w: *const f32, ld: usize, kc: usize, nc: usize, bp: &mut [f32]) {
    for p in 0..nc.div_ceil(NR) {
        let panel = bp.as_mut_ptr().add(p * kc * NR);
        for half in 0..2 {
            let j0 = p * NR + half * 16;
            let rows = nc.saturating_sub(j0).min(16);
            for kk in (0..kc).step_by(16) {
                let depth = (kc - kk).min(16);
                let m = lanes(depth, 0);
                let mut r = [_mm512_setzero_ps(); 16];
                for (i, r) in r.iter_mut().enumerate().take(rows) {
                    let row = w.add((j0 + i) * ld + kk);
                    // A prefetch never faults, so the addresses may pass the row's or the matrix's end:
                    // `wrapping_add` keeps the pointer arithmetic defined there.
                    _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(PREFETCH_AHEAD) as *const i8);
                    _mm_prefetch::<_MM_HINT_T1>(row.wrapping_add(16 * ld) as *const i8);
                    *r = _mm512_maskz_loadu_ps(m, row);
                }
                let t = transpose16(r);
                for (c, t) in t.iter().enumerate().take(depth) {
                    _mm512_storeu_ps(panel.add((kk + c) * NR + half * 16), *t);
                }
            }
        }
    }
}

/// out[c][i] = r[i][c] for a 16×16 block: pairs, then quads within 128-bit lanes, then lanes across registers.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn transpose16(r: [__m512; 16]) -> [__m512; 16] {
    let mut t = [_mm512_setzero_ps(); 16];
    for i in 0..8 {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    // u[4g + q]: rows 4g..4g+4 of columns q, q + 4, q + 8, q + 12 (one per 128-bit lane).
    let mut u = [_mm512_setzero_ps(); 16];
    for g in 0..4 {
        let (a, b, c, d) = (t[4 * g], t[4 * g + 1], t[4 * g + 2], t[4 * g + 3]);
        u[4 * g] = _mm512_shuffle_ps::<0x44>(a, c);
        u[4 * g + 1] = _mm512_shuffle_ps::<0xEE>(a, c);
        u[4 * g + 2] = _mm512_shuffle_ps::<0x44>(b, d);
        u[4 * g + 3] = _mm512_shuffle_ps::<0xEE>(b, d);
    }
    let mut out = [_mm512_setzero_ps(); 16];
    for q in 0..4 {
        let v0 = _mm512_shuffle_f32x4::<0x88>(u[q], u[4 + q]);
        let v1 = _mm512_shuffle_f32x4::<0xDD>(u[q], u[4 + q]);
        let v2 = _mm512_shuffle_f32x4::<0x88>(u[8 + q], u[12 + q]);
        let v3 = _mm512_shuffle_f32x4::<0xDD>(u[8 + q], u[12 + q]);
        out[q] = _mm512_shuffle_f32x4::<0x88>(v0, v2);
        out[q + 8] = _mm512_shuffle_f32x4::<0xDD>(v0, v2);
        out[q + 4] = _mm512_shuffle_f32x4::<0x88>(v1, v3);
        out[q + 12] = _mm512_shuffle_f32x4::<0xDD>(v1, v3);
    }
    out
}

/// Which of lanes lo..lo+16 exist in a row of `cols` values.
#[inline(always)]
fn lanes(cols: usize, lo: usize) -> __mmask16 {
    ((1u32 << cols.saturating_sub(lo).min(16)) - 1) as __mmask16
}

/// One register tile: C[R rows, cols ≤ 32] (+)= A[R rows, kc] · panel.
struct Tile {
    kc: usize,
    a: *const f32,
    lda: usize,
    /// The packed panel, or with `b_rows` the panel's first column in B.
    bp: *const f32,
    /// Null, or (for `run::<_, true>`) B's rows read in place: row kk of the panel at bp + b_rows[kk]. A B given
    /// by a table of rows is a convolution's shifted windows, tall (C_in·k·k) and multiplied by few rows of A
    /// (C_out), so a pack, one more copy of every value of B, cost as much as the tiles saved by reading a packed
    /// panel (~14% of the discriminator's step on one thread).
    b_rows: *const usize,
    c: *mut f32,
    ldc: usize,
    cols: usize,
    accumulate: bool,
}

impl Tile {
    /// [`Tile::run`] for `rows` (1..=12) rows; `IN_PLACE`: B's rows read through `b_rows`, else the packed panel
    /// (a constant, so that the linear layers' kernel carries no trace of the convolutions').
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn run_rows<const IN_PLACE: bool>(&self, rows: usize) {
        match rows {
            12 => self.run::<12, IN_PLACE>(),
            11 => self.run::<11, IN_PLACE>(),
            10 => self.run::<10, IN_PLACE>(),
            9 => self.run::<9, IN_PLACE>(),
            8 => self.run::<8, IN_PLACE>(),
            7 => self.run::<7, IN_PLACE>(),
            6 => self.run::<6, IN_PLACE>(),
            5 => self.run::<5, IN_PLACE>(),
            4 => self.run::<4, IN_PLACE>(),
            3 => self.run::<3, IN_PLACE>(),
            2 => self.run::<2, IN_PLACE>(),
            _ => self.run::<1, IN_PLACE>(),
        }
    }

    /// R×2 accumulators stay in registers over the kc steps; A's rows are broadcast one element at a time.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn run<const R: usize, const IN_PLACE: bool>(&self) {
        let mut acc = [[_mm512_setzero_ps(); 2]; R];
        // C's rows are read or written only after the kc steps: asked for now, they arrive in time.
        for r in 0..R {
            let row = self.c.wrapping_add(r * self.ldc);
            for c in [0, 16, NR - 1] {
                _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(c) as *const i8);
            }
        }
        // One k step: R broadcasts of A against the panel's two vectors of row kk.
        macro_rules! step {
            ($kk:expr, $b0:expr, $b1:expr) => {
                let (b0, b1) = ($b0, $b1);
                for (r, acc) in acc.iter_mut().enumerate() {
                    let a = _mm512_set1_ps(*self.a.add(r * self.lda + $kk));
                    acc[0] = _mm512_fmadd_ps(a, b0, acc[0]);
                    acc[1] = _mm512_fmadd_ps(a, b1, acc[1]);
                }
            };
        }
        let (m0, m1) = (lanes(self.cols, 0), lanes(self.cols, 16));
        if !IN_PLACE {
            for kk in 0..self.kc {
                step!(kk, _mm512_loadu_ps(self.bp.add(kk * NR)), _mm512_loadu_ps(self.bp.add(kk * NR + 16)));
            }
        } else {
            for kk in 0..self.kc {
                let row = self.bp.add(*self.b_rows.add(kk));
                // The same row's next panel (read next by this tile with tiles outer, by the first tile once the
                // others are done with panels outer): B's rows are too many streams for the hardware prefetcher. A
                // prefetch never faults; `wrapping_add` allows passing B's end.
                _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(NR) as *const i8);
                _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(NR + 16) as *const i8);
                if self.cols == NR {
                    step!(kk, _mm512_loadu_ps(row), _mm512_loadu_ps(row.add(16)));
                } else {
                    // Past the block's last column B may end: masked loads never fault there.
                    step!(kk, _mm512_maskz_loadu_ps(m0, row), _mm512_maskz_loadu_ps(m1, row.wrapping_add(16)));
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            let row = self.c.add(r * self.ldc);
            let (mut v0, mut v1) = (acc[0], acc[1]);
            if self.accumulate {
                v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(m0, row));
                v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(m1, row.add(16)));
            }
            _mm512_mask_storeu_ps(row, m0, v0);
            _mm512_mask_storeu_ps(row.add(16), m1, v1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_avx512() {
        assert!(crate::nn::kernels::Level::Avx512.supported(), "the build host had AVX-512, this CPU lacks it");
    }

    #[test]
    #[cfg_attr(not(marvel_host_avx512), ignore = "AVX-512: the build host lacks it, or this is a cross build")]
    fn transpose16_transposes() {
        assert_avx512();
        let m: Vec<f32> = (0..256).map(|i| i as f32).collect();
        let mut out = [0f32; 256];
        unsafe {
            let r: [__m512; 16] = std::array::from_fn(|i| _mm512_loadu_ps(m.as_ptr().add(16 * i)));
            for (c, v) in transpose16(r).iter().enumerate() {
                _mm512_storeu_ps(out.as_mut_ptr().add(16 * c), *v);
            }
        }
        for i in 0..16 {
            for c in 0..16 {
                assert_eq!(out[16 * c + i], m[16 * i + c], "({i}, {c})");
            }
        }
    }

    /// Tails in every dimension (m, n not multiples of the tile; k over several depth blocks), strided operands,
    /// with and without accumulation, on 1..3 threads, with this CPU's blocks and with small ones (several column
    /// blocks, a depth block of 64 shorter than a copied A row of the previous call), A by its stride or by a table
    /// of its rows, and the right operand as W (n, k) or as B (k, n) by a table of its rows (tables over copies
    /// stored last row first), against an f64 product.
    #[test]
    #[cfg_attr(not(marvel_host_avx512), ignore = "AVX-512: the build host lacks it, or this is a cross build")]
    fn matches_naive_product() {
        assert_avx512();
        let (m, n, k) = (29, 75, 600);
        let (lda, ldw, ldb, ldc) = (k + 3, k + 5, n + 7, n + 2);
        let a: Vec<f32> = (0..m * lda).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.01).collect();
        let w: Vec<f32> = (0..n * ldw).map(|i| ((i * 53 % 97) as f32 - 48.0) * 0.01).collect();
        // A's rows by table: row i at (m - 1 - i)·lda of a reversed copy.
        let mut a_rev = vec![f32::NAN; m * lda];
        for i in 0..m {
            a_rev[(m - 1 - i) * lda..][..lda].copy_from_slice(&a[i * lda..][..lda]);
        }
        let a_rows: Vec<usize> = (0..m).map(|i| (m - 1 - i) * lda).collect();
        // The same right operand as B (k, n), its rows stored in reverse: B[kk][j] = W[j][kk].
        let mut b = vec![f32::NAN; k * ldb];
        for j in 0..n {
            for kk in 0..k {
                b[(k - 1 - kk) * ldb + j] = w[j * ldw + kk];
            }
        }
        let b_rows: Vec<usize> = (0..k).map(|kk| (k - 1 - kk) * ldb).collect();
        let c0: Vec<f32> = (0..m * ldc).map(|i| (i % 7) as f32).collect();
        let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
        let small = Blocks { kc: 64, nc: 64 };
        let layouts = [
            ("A·Wᵀ", a.as_ptr(), Rows::Strided(lda), Right::Transposed(ldw), w.as_ptr()),
            ("A by rows ·Wᵀ", a_rev.as_ptr(), Rows::At(a_rows.as_ptr()), Right::Transposed(ldw), w.as_ptr()),
            ("A·B by rows", a.as_ptr(), Rows::Strided(lda), Right::Plain(b_rows.as_ptr()), b.as_ptr()),
        ];
        for (blocks, threads, accumulate, (layout, ap, a_rows, right, wp)) in [Blocks::for_this_cpu(), small]
            .into_iter()
            .flat_map(|b| [1, 2, 3].map(|t| (b, t)))
            .flat_map(|(b, t)| [(b, t, false), (b, t, true)])
            .flat_map(|(b, t, acc)| layouts.map(|l| (b, t, acc, l)))
        {
            let mut c = c0.clone();
            let job = Job { blocks, m, k, a: ap, a_rows, w: wp, right, c: c.as_mut_ptr(), ldc, accumulate };
            pool.install(|| job.run(n, threads));
            for i in 0..m {
                for j in 0..ldc {
                    let got = c[i * ldc + j] as f64;
                    if j >= n {
                        assert_eq!(got, c0[i * ldc + j] as f64, "padding column {j} of row {i} was written");
                        continue;
                    }
                    let dot: f64 = (0..k).map(|kk| a[i * lda + kk] as f64 * w[j * ldw + kk] as f64).sum();
                    let want = dot + if accumulate { c0[i * ldc + j] as f64 } else { 0.0 };
                    assert!(
                        (got - want).abs() < 1e-4,
                        "{layout} {blocks:?} threads {threads} accumulate {accumulate} at ({i}, {j}): {got} vs {want}"
                    );
                }
            }
        }
    }
}
