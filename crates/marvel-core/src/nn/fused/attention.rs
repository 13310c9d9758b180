//! The block's attention on the CPU: one (image, head) pair per task, q, k and v read in place from the packed
//! projection, each head's output written straight into its columns of the result (see `fused`).

use std::cell::RefCell;
use std::ops::Range;

use gemm::Parallelism;
use rayon::prelude::*;

use super::SharedMut;
use crate::nn::kernels;

/// softmax(q·kᵀ/√hd)·v for every image and head, from the packed projection `qkv` ((B·L, 3D) rows of
/// [q | k | v], heads side by side within each) into `out` ((B·Q, D), heads side by side, as torch concatenates
/// them), for the Q query rows `queries` of each image (every row is a key and a value). A query row's output does
/// not depend on which other rows are queried.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention(
    qkv: &[f32],
    out: &mut [f32],
    b: usize,
    l: usize,
    d: usize,
    heads: usize,
    queries: Range<usize>,
    products: Products,
) {
    let hd = d / heads;
    assert!(
        qkv.len() == b * l * 3 * d && out.len() == b * queries.len() * d && hd * heads == d && queries.end <= l,
        "attention: sizes do not match"
    );
    let out_ptr = SharedMut(out.as_mut_ptr());
    (0..b * heads).into_par_iter().for_each(|task| {
        HEAD_SCRATCH.with(|kept| {
            // A task never runs another on its thread while it holds the buffers (its products are
            // single-threaded), so they are free; a fresh set stands in should that ever change.
            let mut fresh = None;
            let mut kept = kept.try_borrow_mut();
            let scratch = match kept.as_deref_mut() {
                Ok(kept) => kept.fit(l),
                Err(_) => fresh.insert(HeadScratch::default()).fit(l),
            };
            // SAFETY: the sizes were asserted above; task (img, head) alone writes its block of `out`, which
            // outlives the parallel loop.
            unsafe {
                head_attention(qkv, out_ptr, (task / heads, task % heads), (l, d, heads), &queries, products, scratch)
            }
        })
    });
}

/// Which kernel runs attention's two products.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Products {
    /// `sgemm` at the AVX-512 level, the gemm crate below it. Inference, at every batch size.
    Fastest,
    /// The gemm crate's at every level: the training ops' forward, whose backward (`ops::attention`) recomputes
    /// the probabilities with the gemm crate. Other bits in the forward would change the training trajectory, to
    /// which the overfitting test is sensitive (`train::trainer_tests`).
    Gemm,
}

/// One task's buffers: the L×L scores, their rows' 1/Σ, and (for `sgemm`) where v's L rows start.
#[derive(Default)]
struct HeadScratch {
    scores: Vec<f32>,
    inv_sums: Vec<f32>,
    v_rows: Vec<usize>,
}

impl HeadScratch {
    /// Grown to hold the buffers of a head of L rows (their values are left as they were).
    fn fit(&mut self, l: usize) -> &mut Self {
        for (v, n) in [(&mut self.scores, l * l), (&mut self.inv_sums, l)] {
            if v.len() < n {
                v.resize(n, 0.0);
            }
        }
        if self.v_rows.len() < l {
            self.v_rows.resize(l, 0);
        }
        self
    }
}

thread_local! {
    /// Each thread's head buffers, kept between tasks and calls, as `sgemm` keeps its own: the scores (L² floats,
    /// 0.6 MiB at S-128's L = 385) are above glibc's mmap threshold, and a fresh map per task and call costs a page
    /// fault per 4 KiB on first touch (~10% of a one-image decode's faults on the single layout, once the blocks'
    /// scratch stopped being freed; see `BlockScratch`).
    static HEAD_SCRATCH: RefCell<HeadScratch> = RefCell::new(HeadScratch::default());
}

/// Attention of one (image, head) pair, on this thread: rows img·Q.. (Q = `queries.len()`) and columns head·hd..
/// of `out`.
///
/// At the AVX-512 level both products go through `kernels::sgemm`: q·kᵀ as C = A·Wᵀ with W = k read in place through
/// its row stride; p·v as C = A·B with v's rows read in place through a table of where each starts (no transposed
/// copy of v, no pack of it).
/// On S-128's L = 385, hd = 64 the gemm crate, which has no packed-weight form for this shape, spent ~12% of an
/// encode in these products. sgemm has no scale, so 1/√hd is applied inside the softmax.
///
/// # Safety
/// `qkv` holds B·L·3D values and `out` points to B·Q·D, `queries` within 0..L; no other thread accesses this
/// pair's block of `out`.
unsafe fn head_attention(
    qkv: &[f32],
    out: SharedMut,
    (img, head): (usize, usize),
    (l, d, heads): (usize, usize, usize),
    queries: &Range<usize>,
    products: Products,
    s: &mut HeadScratch,
) {
    let hd = d / heads;
    let scale = 1.0 / (hd as f32).sqrt();
    let row = 3 * d;
    let k = &qkv[img * l * row + d + head * hd..];
    let (q, v) = (&qkv[(img * l + queries.start) * row + head * hd..], &k[d..]);
    let m = queries.len();
    let dst = out.get().add(img * m * d + head * hd);
    let HeadScratch { scores, inv_sums, v_rows } = s;
    let (scores, inv_sums, v_rows) = (&mut scores[..m * l], &mut inv_sums[..m], &mut v_rows[..l]);
    #[cfg(target_arch = "x86_64")]
    if products == Products::Fastest && kernels::level() == kernels::Level::Avx512 {
        use kernels::sgemm::{sgemm_ab_rows, sgemm_wt, Blocks};
        // SAFETY (for the products): the level is supported; q, k, v are read at rows r·3D + c (r < L, c < hd),
        // inside `qkv`; scores hold Q·L values, v_rows L offsets; dst's rows are D apart, hd columns each.
        sgemm_wt(m, l, hd, q.as_ptr(), row, k.as_ptr(), row, scores.as_mut_ptr(), l, false, 1);
        kernels::softmax_exp_scaled_rows(scores, l, scale, inv_sums);
        // p·v with v read in place, row j at j·3D. The blocks' depth must not depend on the queries asked for
        // (`in_place_blocks` fits it to them): a query row's sums are then the same whichever rows are kept.
        for (j, r) in v_rows.iter_mut().enumerate() {
            *r = j * row;
        }
        sgemm_ab_rows(Blocks::for_this_cpu(), m, hd, l, scores.as_ptr(), l, v.as_ptr(), v_rows, dst, d, false, 1);
    } else {
        gemm_heads(q, k, v, row, dst, d, (m, l, hd), scale, scores, inv_sums);
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        // sgemm is x86-only: every level here runs the gemm crate, and v_rows stays unused.
        let _ = (products, v_rows);
        gemm_heads(q, k, v, row, dst, d, (m, l, hd), scale, scores, inv_sums);
    }
    // Normalising the hd-wide output rows is cheaper than the L-wide probability rows.
    for (i, s) in inv_sums.iter().enumerate() {
        kernels::scale(std::slice::from_raw_parts_mut(dst.add(i * d), hd), *s);
    }
}

/// [`head_attention`]'s products through the gemm crate (levels below AVX-512), unnormalised: dst ← exp-scores·v,
/// for m query rows against l keys.
///
/// # Safety
/// As for [`head_attention`].
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_heads(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    row: usize,
    dst: *mut f32,
    d: usize,
    (m, l, hd): (usize, usize, usize),
    scale: f32,
    scores: &mut [f32],
    inv_sums: &mut [f32],
) {
    let row = row as isize;
    // scores = (q / √hd) · kᵀ: kᵀ[c][j] = k[j][c], columns one row of qkv apart.
    gemm::gemm(
        m,
        l,
        hd,
        scores.as_mut_ptr(),
        1,
        l as isize,
        false,
        q.as_ptr(),
        1,
        row,
        k.as_ptr(),
        row,
        1,
        0.0,
        scale,
        false,
        false,
        false,
        Parallelism::None,
    );
    kernels::softmax_exp_rows(scores, l, inv_sums);
    gemm::gemm(
        m,
        hd,
        l,
        dst,
        1,
        d as isize,
        false,
        scores.as_ptr(),
        1,
        l as isize,
        v.as_ptr(),
        1,
        row,
        0.0,
        1.0,
        false,
        false,
        false,
        Parallelism::None,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Inputs for the attention checks: shapes off every tile size (L = 13, hd = 4), two images.
    const SHAPE: (usize, usize, usize, usize) = (2, 13, 12, 3);

    fn packed_qkv() -> Vec<f32> {
        let (b, l, d, _) = SHAPE;
        (0..b * l * 3 * d).map(|i| ((i * 7919 % 211) as f32 - 105.0) * 0.02).collect()
    }

    /// `out` against a plain per-head loop in f64.
    fn assert_attention_of(qkv: &[f32], out: &[f32]) {
        let (b, l, d, heads) = SHAPE;
        let hd = d / heads;
        for img in 0..b {
            for h in 0..heads {
                let at = |r: usize, part: usize, c: usize| qkv[(img * l + r) * 3 * d + part * d + h * hd + c] as f64;
                for i in 0..l {
                    let s: Vec<f64> = (0..l)
                        .map(|j| (0..hd).map(|c| at(i, 0, c) * at(j, 1, c)).sum::<f64>() / (hd as f64).sqrt())
                        .collect();
                    let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let z: f64 = s.iter().map(|v| (v - m).exp()).sum();
                    for c in 0..hd {
                        let want: f64 = (0..l).map(|j| (s[j] - m).exp() / z * at(j, 2, c)).sum();
                        let got = out[(img * l + i) * d + h * hd + c] as f64;
                        assert!((got - want).abs() < 1e-5, "img {img} head {h} row {i} col {c}: {got} vs {want}");
                    }
                }
            }
        }
    }

    /// The strided, fused attention, in parallel at this CPU's level, with either kernel.
    #[test]
    fn attention_matches_naive_per_head_loop() {
        let (b, l, d, heads) = SHAPE;
        let qkv = packed_qkv();
        let mut out = vec![0f32; b * l * d];
        for products in [Products::Fastest, Products::Gemm] {
            out.fill(0.0);
            attention(&qkv, &mut out, b, l, d, heads, 0..l, products);
            assert_attention_of(&qkv, &out);
        }
    }

    /// Queries 4..9 of each image give those rows of the every-query output, to the bit, with either kernel; and
    /// the last 32 of 300 rows (TiTok's kept latent tokens, over more keys than one depth block of sgemm holds).
    #[test]
    fn some_queries_give_their_rows_of_all() {
        let long = (1, 300, 8, 2);
        let long_qkv: Vec<f32> = (0..300 * 3 * 8).map(|i| ((i * 7919 % 211) as f32 - 105.0) * 0.02).collect();
        for ((b, l, d, heads), qkv, queries, products) in [
            (SHAPE, packed_qkv(), 4..9, Products::Fastest),
            (SHAPE, packed_qkv(), 4..9, Products::Gemm),
            (long, long_qkv.clone(), 268..300, Products::Fastest),
            (long, long_qkv, 268..300, Products::Gemm),
        ] {
            let mut all = vec![0f32; b * l * d];
            attention(&qkv, &mut all, b, l, d, heads, 0..l, products);
            let mut some = vec![0f32; b * queries.len() * d];
            attention(&qkv, &mut some, b, l, d, heads, queries.clone(), products);
            for img in 0..b {
                let want = &all[(img * l + queries.start) * d..(img * l + queries.end) * d];
                let got = &some[img * queries.len() * d..(img + 1) * queries.len() * d];
                let same = want.iter().zip(got).all(|(w, g)| w.to_bits() == g.to_bits());
                assert!(same, "{products:?}, L = {l}: image {img}'s rows differ");
            }
        }
    }

    // Each level's products (sgemm at AVX-512, the gemm crate below it), every head on this thread, since a forced
    // level does not reach the pool's threads.
    kernels::at_every_level!(head_attention_matches_naive_at_every_level, |_level| {
        let (b, l, d, heads) = SHAPE;
        let qkv = packed_qkv();
        let mut out = vec![0f32; b * l * d];
        let mut scratch = HeadScratch::default();
        scratch.fit(l);
        for task in 0..b * heads {
            let pair = (task / heads, task % heads);
            // SAFETY: `qkv` and `out` have the sizes of SHAPE; one pair at a time, on this thread.
            let out = SharedMut(out.as_mut_ptr());
            unsafe { head_attention(&qkv, out, pair, (l, d, heads), &(0..l), Products::Fastest, &mut scratch) };
        }
        assert_attention_of(&qkv, &out);
    });
}
