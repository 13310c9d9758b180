//! The transformer block's inference path on the CPU: f32, contiguous, no gradient tracked.
//!
//! candle runs a block as ~20 separate ops, and all but the matmuls are single-threaded passes over memory
//! (bias adds, GELU through libm, the q/k/v permute copies, the scaling, the head transpose, the residual adds),
//! while attention's small per-head products each fork the thread pool. Here the block is seven passes:
//! - every linear layer is one product over all B·L rows, reading PyTorch's (out, in) weight in place
//!   (`kernels::sgemm` for up to ~1000 rows at the AVX-512 level, the `gemm` crate otherwise), or the weight
//!   packed once at load for `kernels::sgemm` (a loaded model at the AVX-512 level, `fused::packed`);
//! - the residual and the bias are written first and the product accumulated onto them (gemm's `read_dst`),
//!   so neither costs a pass of its own;
//! - c_fc's bias and the GELU are one parallel pass;
//! - attention runs one (image, head) pair per task, single-threaded products reading q and k in place from the
//!   packed projection through strides (`sgemm` at AVX-512; the gemm crate below),
//!   the 1/√hd scale folded into the softmax or the q·kᵀ product, softmax on the scores while they are in cache,
//!   and each head's output written straight into its columns of the result;
//! - a stack of blocks shares one set of scratch buffers;
//! - with the weights packed (a loaded model at AVX-512) and rows enough, each thread takes a share of the rows
//!   through every step that works row by row, so a block is three parallel passes, the threads meeting only around
//!   attention (`block_forward_by_rows`).

use std::ops::Range;

use candle_core::{CpuStorage, DType, Storage, StorageRef, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

use super::kernels;

mod attention;
mod packed;
mod scratch;
pub(crate) use attention::{attention, Products};
pub use packed::PackedWt;
pub use scratch::BlockScratch;

/// The data of a contiguous f32 tensor in CPU memory, borrowed (a read lock on its storage).
pub(crate) struct F32Data<'a> {
    storage: StorageRef<'a>,
    range: Range<usize>,
}

impl<'a> F32Data<'a> {
    /// `None` unless `t` is f32, on the CPU and contiguous, and untracked: the fused kernels record no backward
    /// pass, so a tensor whose gradient may be asked for never reaches them, whatever the caller checked.
    pub(crate) fn of(t: &'a Tensor) -> Option<Self> {
        if t.dtype() != DType::F32 || kernels::tracked(&[t]) {
            return None;
        }
        let (storage, layout) = t.storage_and_layout();
        let (start, end) = layout.contiguous_offsets()?;
        matches!(&*storage, Storage::Cpu(CpuStorage::F32(_))).then_some(Self { storage, range: start..end })
    }

    pub(crate) fn get(&self) -> &[f32] {
        match &*self.storage {
            Storage::Cpu(CpuStorage::F32(v)) => &v[self.range.clone()],
            _ => unreachable!("checked in F32Data::of"),
        }
    }
}

/// A linear layer's stored parameters: weight (out, in), bias (out).
pub(crate) struct LinearData<'a> {
    pub weight: Weight<'a>,
    pub bias: F32Data<'a>,
}

/// A linear layer's weight as the products read it.
pub(crate) enum Weight<'a> {
    /// (out, in) row-major, as nn.Linear stores it.
    OutIn(F32Data<'a>),
    /// Packed once for `kernels::sgemm` (a loaded model's ViT layers at the AVX-512 level, see `PackedWt`).
    Packed(&'a PackedWt),
}

impl BlockData<'_> {
    /// The four weights, where all are packed and the products read them packed (the AVX-512 level).
    fn packed(&self) -> Option<[&PackedWt; 4]> {
        if kernels::level() != kernels::Level::Avx512 {
            return None;
        }
        fn packed<'a>(l: &LinearData<'a>) -> Option<&'a PackedWt> {
            match l.weight {
                Weight::Packed(w) => Some(w),
                Weight::OutIn(_) => None,
            }
        }
        Some([packed(&self.in_proj)?, packed(&self.out_proj)?, packed(&self.c_fc)?, packed(&self.c_proj)?])
    }
}

/// A layer norm's stored parameters.
pub(crate) struct NormData<'a> {
    pub weight: F32Data<'a>,
    pub bias: F32Data<'a>,
    pub eps: f32,
}

/// The parameters of a pre-LN residual attention block, as the fused path reads them.
pub(crate) struct BlockData<'a> {
    pub ln_1: NormData<'a>,
    pub in_proj: LinearData<'a>,
    pub out_proj: LinearData<'a>,
    pub ln_2: NormData<'a>,
    pub c_fc: LinearData<'a>,
    pub c_proj: LinearData<'a>,
    pub num_heads: usize,
}

/// The blocks in sequence on `x` ((B·L, D) row-major); returns rows `keep` of each image of the last one's output
/// ((B·keep.len(), D) row-major).
///
/// Only the last block's attention needs every row (as keys and values): its queries, output projection and MLP run
/// on the kept rows alone. Each of those rows goes through the same products and row kernels as when every row is
/// computed, so the values are those of the whole output cut afterwards; TiTok's encoder keeps 32 of 289 rows
/// (the single layout), which spares ~3/4 of its last block.
pub(crate) fn blocks_forward(
    x: &[f32],
    (b, l, d): (usize, usize, usize),
    keep: Range<usize>,
    blocks: &[BlockData],
    scratch: &BlockScratch,
) -> Vec<f32> {
    assert!(keep.end <= l, "blocks_forward: rows {keep:?} of {l}");
    let rows = b * l;
    let hidden = blocks.iter().map(|p| p.c_fc.bias.get().len()).max().unwrap_or(0);
    let (last, rest) = blocks.split_last().expect("blocks_forward: no blocks (the caller passes x through)");
    let mut out = vec![0f32; b * keep.len() * d];
    scratch.with(rows * (3 * d + (3 * d).max(hidden)), |buffer| {
        let (stream, buffer) = buffer.split_at_mut(rows * d);
        let (h, buffer) = buffer.split_at_mut(rows * d);
        let (x1, qkv_f) = buffer.split_at_mut(rows * d);
        let mut s = Scratch { h, x1, qkv_f };
        for (i, p) in rest.iter().enumerate() {
            let io = if i == 0 { Io::Apart(x, &mut *stream) } else { Io::InPlace(&mut *stream) };
            block_forward(io, (b, l, d), 0..l, p, &mut s);
        }
        let input = if rest.is_empty() { x } else { &*stream };
        block_forward(Io::Apart(input, &mut out), (b, l, d), keep, last, &mut s);
    });
    out
}

/// Where a block reads its input and writes its output: the output may overwrite the input, which is spent by the
/// time the MLP's residual sum is written.
enum Io<'a> {
    Apart(&'a [f32], &'a mut [f32]),
    InPlace(&'a mut [f32]),
}

/// Buffers a block needs besides its input and output, cut from one [`BlockScratch`]: `h` holds ln_1's output,
/// then the heads' outputs, then ln_2's; `qkv_f` the q/k/v projection, then the MLP's hidden layer.
struct Scratch<'a> {
    h: &'a mut [f32],
    x1: &'a mut [f32],
    qkv_f: &'a mut [f32],
}

/// x + attn(ln_1(x)), then + mlp(ln_2(·)), for `x` (B·L, D) row-major: rows `keep` of each image
/// ((B·keep.len(), D)). ln_1 and the q/k/v projection cover every row, since attention reads every row's k and v
/// (and q, computed with them in one product, for all). In place only with every row kept.
fn block_forward(io: Io, (b, l, d): (usize, usize, usize), keep: Range<usize>, p: &BlockData, s: &mut Scratch) {
    if let Some(w) = p.packed().filter(|_| by_rows(b * l)) {
        return block_forward_by_rows(io, (b, l, d), keep, p, w, s);
    }
    let (rows, kept) = (b * l, b * keep.len());
    let hidden = p.c_fc.bias.get().len();
    let x: &[f32] = match &io {
        Io::Apart(x, _) => x,
        Io::InPlace(x) => {
            assert_eq!(kept, rows, "block_forward: in place with rows dropped");
            x
        }
    };
    let (h, x1, qkv) = (&mut s.h[..rows * d], &mut s.x1[..kept * d], &mut s.qkv_f[..rows * 3 * d]);
    layer_norm(h, x, &p.ln_1);
    fill_bias(qkv, p.in_proj.bias.get());
    product(qkv, true, h, &p.in_proj);
    // ln_1's output is spent: the heads' outputs take its place.
    let attn = &mut h[..kept * d];
    // One path at every batch size (a head's products have the same shape whatever the batch), so an image's
    // output does not depend on how many others share its call; at batch 8 of S-128 the gemm crate's products
    // measured within noise of sgemm's (1-2% less CPU, medians of 8 alternating runs on a shared machine).
    attention(qkv, attn, b, l, d, p.num_heads, keep.clone(), Products::Fastest);
    add_bias_kept(x1, x, (l, d), keep, p.out_proj.bias.get());
    product(x1, true, attn, &p.out_proj);

    let h2 = attn;
    layer_norm(h2, x1, &p.ln_2);
    let f = &mut s.qkv_f[..kept * hidden]; // q, k and v are spent
    product(f, false, h2, &p.c_fc);
    let bias = p.c_fc.bias.get();
    par_rows(f, hidden, |rows| kernels::bias_gelu(rows, bias));
    let out = match io {
        Io::Apart(_, out) | Io::InPlace(out) => out,
    };
    par_rows2(out, x1, d, |o, x| kernels::add_bias(o, x, p.c_proj.bias.get()));
    product(out, true, f, &p.c_proj);
}

/// [`block_forward`] for a block whose four weights are packed, at the AVX-512 level, over enough rows (see
/// [`by_rows`]): the same kernels on the same rows (so the same values, bit for bit), but each thread takes a share
/// of the rows through every step that works row by row, its products single-threaded on them, so that a block is
/// three parallel passes instead of one a step: ln_1 and the q/k/v projection; attention; then the output
/// projection, ln_2 and the MLP. Each thread's rows stay in its own L2 from one step to the next, and each copies
/// only its own tiles of A, where split by columns every thread copied every tile (the products whose n is the
/// width had only 4-16 panels a thread to spread each copy over at batch 1). A packed weight costs a thread
/// nothing to read whole. The single layout's decode at batch 1 went ~42 -> ~46.5 img/s at 2 threads (figures in
/// bench/README.md, "Rows per thread through the block").
fn block_forward_by_rows(
    io: Io,
    (b, l, d): (usize, usize, usize),
    keep: Range<usize>,
    p: &BlockData,
    [w_in, w_out, w_fc, w_proj]: [&PackedWt; 4],
    s: &mut Scratch,
) {
    let (rows, kept) = (b * l, b * keep.len());
    let hidden = p.c_fc.bias.get().len();
    // In place, a task reads its rows' residual from its own part of `out` before it writes them.
    let (x, out) = match io {
        Io::Apart(x, out) => (Some(x), out),
        Io::InPlace(out) => {
            assert_eq!(kept, rows, "block_forward: in place with rows dropped");
            (None, out)
        }
    };
    let (h, x1, qkv) = (&mut s.h[..rows * d], &mut s.x1[..kept * d], &mut s.qkv_f[..rows * 3 * d]);
    let parts = row_parts(rows);
    let input: &[f32] = x.unwrap_or(out);
    let tasks: Vec<_> = split_rows(h, &parts, d).into_iter().zip(split_rows(qkv, &parts, 3 * d)).collect();
    tasks.into_par_iter().zip(&parts).for_each(|((h, qkv), r)| {
        let ln = &p.ln_1;
        kernels::layer_norm_rows(h, &input[r.start * d..r.end * d], ln.weight.get(), ln.bias.get(), ln.eps);
        fill_rows(qkv, p.in_proj.bias.get());
        packed::gemm_packed(qkv, true, h, w_in, 1);
    });

    let attn = &mut h[..kept * d];
    attention(qkv, attn, b, l, d, p.num_heads, keep.clone(), Products::Fastest);

    // q, k and v are spent: the MLP's hidden layer takes their place.
    let f = &mut s.qkv_f[..kept * hidden];
    let parts = row_parts(kept);
    let tasks: Vec<_> = split_rows(x1, &parts, d)
        .into_iter()
        .zip(split_rows(attn, &parts, d))
        .zip(split_rows(f, &parts, hidden))
        .zip(split_rows(out, &parts, d))
        .collect();
    tasks.into_par_iter().zip(&parts).for_each(|((((x1, h), f), out), r)| {
        // The residual: rows `keep` of each image of x, or (in place, every row kept) this part of `out`.
        for (i, x1) in x1.chunks_exact_mut(d).enumerate() {
            let residual = match x {
                Some(x) => &x[kept_row(r.start + i, l, &keep) * d..][..d],
                None => &out[i * d..(i + 1) * d],
            };
            kernels::add_bias(x1, residual, p.out_proj.bias.get());
        }
        packed::gemm_packed(x1, true, h, w_out, 1);
        // The heads' outputs are spent: ln_2's output takes their place.
        kernels::layer_norm_rows(h, x1, p.ln_2.weight.get(), p.ln_2.bias.get(), p.ln_2.eps);
        packed::gemm_packed(f, false, h, w_fc, 1);
        kernels::bias_gelu(f, p.c_fc.bias.get());
        kernels::add_bias(out, x1, p.c_proj.bias.get());
        packed::gemm_packed(out, true, f, w_proj, 1);
    });
}

/// Rows of `sgemm`'s register tile (`kernels::sgemm`'s MR, in a module that exists on x86-64 only).
const TILE: usize = 12;
/// Tiles a thread takes at least in [`block_forward_by_rows`]: with fewer, each thread would read every weight for
/// a tile or two of work (batch 1 on 16 threads: 25 tiles), so the block goes step by step, splitting columns.
/// Measured at 2 threads only (12 tiles a thread at batch 1).
const MIN_TILES_PER_THREAD: usize = 4;

/// Whether a block over `rows` rows goes by rows on this pool.
fn by_rows(rows: usize) -> bool {
    rows.div_ceil(TILE) >= MIN_TILES_PER_THREAD * rayon::current_num_threads()
}

/// The threads' shares of `rows` rows: one range per thread, in whole register tiles of `sgemm` as even as they
/// divide, so that no share has a partial tile but the last.
fn row_parts(rows: usize) -> Vec<Range<usize>> {
    let tiles = rows.div_ceil(TILE);
    let parts = rayon::current_num_threads().clamp(1, tiles.max(1));
    (0..parts).map(|t| (tiles * t / parts * TILE).min(rows)..(tiles * (t + 1) / parts * TILE).min(rows)).collect()
}

/// `buf`'s rows (`width` values each) cut at `parts` (consecutive ranges from row 0).
fn split_rows<'a>(mut buf: &'a mut [f32], parts: &[Range<usize>], width: usize) -> Vec<&'a mut [f32]> {
    parts
        .iter()
        .map(|r| {
            let (part, rest) = std::mem::take(&mut buf).split_at_mut(r.len() * width);
            buf = rest;
            part
        })
        .collect()
}

/// Every row of `dst` ← `bias`, on this thread.
fn fill_rows(dst: &mut [f32], bias: &[f32]) {
    for row in dst.chunks_exact_mut(bias.len()) {
        row.copy_from_slice(bias)
    }
}

fn layer_norm(dst: &mut [f32], src: &[f32], ln: &NormData) {
    layer_norm_rows(dst, src, ln.weight.get(), ln.bias.get(), ln.eps)
}

/// LayerNorm of each row, in parallel over blocks of rows.
pub(crate) fn layer_norm_rows(dst: &mut [f32], src: &[f32], weight: &[f32], bias: &[f32], eps: f32) {
    let d = weight.len();
    if d == 0 || dst.is_empty() {
        return;
    }
    let per_task = rows_per_task(dst.len() / d);
    dst.par_chunks_mut(per_task * d)
        .zip(src.par_chunks(per_task * d))
        .for_each(|(o, x)| kernels::layer_norm_rows(o, x, weight, bias, eps));
}

/// x (..., K) · Wᵀ + b for an untracked contiguous f32 input and parameters on the CPU, W (N, K) as nn.Linear
/// keeps it: the blocks' product (`gemm_wt`, so `sgemm` below 1024 rows at AVX-512) onto the bias, in one buffer.
/// candle's `Linear` runs the gemm crate at every size, with a bias pass of its own: the single layout's pixel head
/// (`ffn`, 256 rows at batch 1) spent ~5% of a one-image decode there. `None` where it does not apply (the caller
/// runs candle's). `then` runs on the output's rows, in parallel, before they become a tensor.
pub(crate) fn linear(xs: &Tensor, weight: &Tensor, bias: &Tensor, then: Then) -> candle_core::Result<Option<Tensor>> {
    let (Some(w), Some(b)) = (F32Data::of(weight), F32Data::of(bias)) else {
        return Ok(None);
    };
    let (n, k) = weight.dims2()?;
    if xs.dims().last() != Some(&k) || bias.dims() != [n] || !xs.device().is_cpu() {
        return Ok(None);
    }
    let Some(x) = F32Data::of(xs) else {
        return Ok(None);
    };
    let x = x.get();
    let mut out = vec![0f32; x.len() / k.max(1) * n];
    fill_bias(&mut out, b.get());
    if k > 0 {
        gemm_wt(&mut out, true, x, w.get(), x.len() / k, k, n);
    }
    match then {
        Then::Nothing => {}
        Then::Tanh => par_rows(&mut out, n, kernels::tanh_rows),
    }
    let mut dims = xs.dims().to_vec();
    *dims.last_mut().expect("xs has its last dimension k") = n;
    Ok(Some(Tensor::from_vec(out, dims, xs.device())?))
}

/// What [`linear`] applies to its output.
pub(crate) enum Then {
    Nothing,
    Tanh,
}

/// Every row of `dst` ← `bias`, for a product to be accumulated onto.
fn fill_bias(dst: &mut [f32], bias: &[f32]) {
    par_rows(dst, bias.len(), |o| fill_rows(o, bias))
}

/// dst ← rows `keep` of each image of x ((B·L, D), images L rows apart) + bias: the residual and the bias of the
/// linear layer whose product is then accumulated onto it.
fn add_bias_kept(dst: &mut [f32], x: &[f32], (l, d): (usize, usize), keep: Range<usize>, bias: &[f32]) {
    let per_task = rows_per_task(dst.len() / d);
    dst.par_chunks_mut(per_task * d).enumerate().for_each(|(t, o)| {
        for (i, o) in o.chunks_exact_mut(d).enumerate() {
            let src = kept_row(t * per_task + i, l, &keep) * d;
            kernels::add_bias(o, &x[src..src + d], bias);
        }
    });
}

/// The row of x ((B·L) rows, images L rows apart) that kept row `r` is: rows `keep` of each image, in order.
fn kept_row(r: usize, l: usize, keep: &Range<usize>) -> usize {
    r / keep.len() * l + keep.start + r % keep.len()
}

/// dst (rows, out) = [dst +] a (rows, in) · wᵀ for the weight of `lin`, stored plain or packed (its bias is the
/// caller's to add).
fn product(dst: &mut [f32], accumulate: bool, a: &[f32], lin: &LinearData) {
    let n = lin.bias.get().len();
    match &lin.weight {
        Weight::OutIn(w) => {
            let w = w.get();
            let k = w.len() / n.max(1);
            gemm_wt(dst, accumulate, a, w, a.len() / k.max(1), k, n);
        }
        Weight::Packed(w) => packed::gemm_packed(dst, accumulate, a, w, rayon::current_num_threads()),
    }
}

/// Below this many rows `kernels::sgemm` beats the `gemm` crate on the block's shapes; from ~1500 on it trails (see
/// there).
#[cfg(target_arch = "x86_64")]
const SGEMM_MAX_ROWS: usize = 1024;

/// dst (m, n) = [dst +] a (m, k) · wᵀ, for a weight `w` stored (n, k) row-major, as nn.Linear keeps it; on the
/// whole compute pool.
fn gemm_wt(dst: &mut [f32], accumulate: bool, a: &[f32], w: &[f32], m: usize, k: usize, n: usize) {
    assert!(dst.len() == m * n && a.len() == m * k && w.len() == n * k, "gemm_wt: sizes do not match");
    let threads = rayon::current_num_threads();
    #[cfg(target_arch = "x86_64")]
    if m < SGEMM_MAX_ROWS && kernels::level() == kernels::Level::Avx512 {
        // SAFETY: the level is one the CPU supports; the sizes were checked above; dst is borrowed mutably, a and
        // w shared.
        unsafe {
            kernels::sgemm::sgemm_wt(m, n, k, a.as_ptr(), k, w.as_ptr(), k, dst.as_mut_ptr(), n, accumulate, threads)
        };
        return;
    }
    // SAFETY: the three buffers hold m·n, m·k and n·k values, and the strides below stay inside them.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            k as isize, // wᵀ[i][j] = w[j][i]: columns k apart,
            1,          // rows adjacent
            1.0,
            1.0,
            false,
            false,
            false,
            if threads > 1 { Parallelism::Rayon(threads) } else { Parallelism::None },
        )
    }
}

/// A pointer that parallel tasks write through, each to its own disjoint part.
#[derive(Clone, Copy)]
pub(crate) struct SharedMut(pub(crate) *mut f32);
// SAFETY: used only where each task writes a region no other task reads or writes (see `attention` here and
// `ops::attention`).
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}
impl SharedMut {
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}

/// Rows per parallel task: a few tasks per thread, for balance, and at least 8 rows, so a task is worth its cost.
pub(crate) fn rows_per_task(rows: usize) -> usize {
    rows.div_ceil(4 * rayon::current_num_threads()).max(8)
}

/// Softmax of each row (`cols` wide), in place, in parallel over blocks of rows.
pub(crate) fn softmax_rows(xs: &mut [f32], cols: usize) {
    par_rows(xs, cols, |rows| kernels::softmax_rows(rows, cols));
}

pub(crate) fn par_rows(xs: &mut [f32], cols: usize, f: impl Fn(&mut [f32]) + Sync) {
    if cols == 0 || xs.is_empty() {
        return;
    }
    let per_task = rows_per_task(xs.len() / cols) * cols;
    xs.par_chunks_mut(per_task).for_each(&f);
}

pub(crate) fn par_rows2(xs: &mut [f32], ys: &[f32], cols: usize, f: impl Fn(&mut [f32], &[f32]) + Sync) {
    if cols == 0 || xs.is_empty() {
        return;
    }
    let per_task = rows_per_task(xs.len() / cols) * cols;
    xs.par_chunks_mut(per_task).zip(ys.par_chunks(per_task)).for_each(|(x, y)| f(x, y));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Variables and anything computed from them are refused; a detached view of the same storage is served.
    #[test]
    fn tracked_tensors_never_reach_the_kernels() {
        let var = candle_core::Var::new(&[1f32, 2., 3.], &candle_core::Device::Cpu).unwrap();
        assert!(F32Data::of(var.as_tensor()).is_none());
        let derived = (var.as_tensor() * 2.0).unwrap();
        assert!(F32Data::of(&derived).is_none());
        let detached = var.as_detached_tensor();
        assert_eq!(F32Data::of(&detached).unwrap().get(), &[1., 2., 3.]);
    }

    /// The inference linear layer against candle's, on a 3-D input with rows on both sides of the sgemm / gemm
    /// crate switch; a tracked weight is left to the caller.
    #[test]
    fn linear_matches_candle() {
        use candle_core::{Device, Module};
        let dev = Device::Cpu;
        let (w, b) = (Tensor::randn(0f32, 1.0, (37, 50), &dev).unwrap(), Tensor::randn(0f32, 1.0, 37, &dev).unwrap());
        let reference = candle_nn::Linear::new(w.clone(), Some(b.clone()));
        for rows in [3, 700] {
            let x = Tensor::randn(0f32, 1.0, (2, rows, 50), &dev).unwrap();
            let got = linear(&x, &w, &b, Then::Nothing).unwrap().expect("the fused path was not taken");
            assert_eq!(got.dims(), [2, rows, 37]);
            let want = reference.forward(&x).unwrap();
            let err = (got - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(err < 1e-4, "{rows} rows: max abs {err}");
        }
        let var = candle_core::Var::from_tensor(&w).unwrap();
        assert!(linear(&Tensor::zeros((1, 50), DType::F32, &dev).unwrap(), var.as_tensor(), &b, Then::Nothing)
            .unwrap()
            .is_none());
    }

    /// `nn::linear_tanh_forward` against candle's linear then tanh, on the fused path and, for a tracked weight, on
    /// candle's (whose gradient reaches the weight).
    #[test]
    fn linear_tanh_matches_candle() {
        use candle_core::{Device, Module};
        let dev = Device::Cpu;
        let w = (Tensor::randn(0f32, 1.0, (37, 50), &dev).unwrap() * 0.2).unwrap();
        let b = Tensor::randn(0f32, 1.0, 37, &dev).unwrap();
        let x = Tensor::randn(0f32, 1.0, (2, 300, 50), &dev).unwrap();
        let want = candle_nn::Linear::new(w.clone(), Some(b.clone())).forward(&x).unwrap().tanh().unwrap();
        let max_err =
            |got: &Tensor| (got - &want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        let fused = linear(&x, &w, &b, Then::Tanh).unwrap().expect("the fused path was not taken");
        assert!(max_err(&fused) < 1e-5, "fused: max abs {}", max_err(&fused));
        let layer = crate::nn::linear_tanh_forward(&candle_nn::Linear::new(w.clone(), Some(b.clone())), &x).unwrap();
        let same = |a: &Tensor, b: &Tensor| {
            a.flatten_all().unwrap().to_vec1::<f32>().unwrap() == b.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        };
        assert!(same(&layer, &fused), "linear_tanh_forward did not take the fused path");
        let var = candle_core::Var::from_tensor(&w).unwrap();
        let tracked = crate::nn::linear_tanh_forward(&candle_nn::Linear::new(var.as_tensor().clone(), Some(b)), &x);
        let tracked = tracked.unwrap();
        assert!(max_err(&tracked) < 1e-5, "tracked: max abs {}", max_err(&tracked));
        let grads = tracked.sum_all().unwrap().backward().unwrap();
        assert!(grads.get(var.as_tensor()).is_some(), "no gradient for the tracked weight");
    }
}
