//! The transformer's training path on the CPU: candle custom ops whose forward and backward are each a few
//! multi-threaded passes, for f32 CPU tensors (any target: `gemm` and `nn::kernels` are portable).
//!
//! Composed from candle ops, a block's forward and backward are ~100 passes over memory, most of them
//! single-threaded or spin-synchronised elementwise maps, plus copies: the weight broadcast to every image by
//! `Linear` on 3-D input and summed back in the backward, the q/k/v permutes, the transposes of matmul
//! gradients. Here each layer is one op: a linear layer's backward is two gemm calls and a column sum; layer
//! norm is one fused pass each way; attention reads q, k and v in place from the packed projection and
//! recomputes the probabilities in its backward instead of keeping them (B·H·L² values a block); the attention
//! core and the MLP's GELU ride on the linear layer before each.
//!
//! Determinism: every reduction has a fixed order (rows split into fixed-size chunks whose partial sums are
//! added in chunk order; column sums by bands of columns; the `gemm` crate splits the output across threads, not
//! the dot products), so the same inputs give the same bits however rayon schedules the tasks, as the
//! exact-resume guarantee of training needs (the tests check 1 against 3 threads).

mod attention;
mod conv;
mod conv_bands;
mod conv_direct;
#[cfg(target_arch = "x86_64")]
mod conv_shifted;
mod filter;
mod group_norm;
mod layer_norm;
mod leaky_relu;
mod linear;
mod norm_activation;
mod padded;
mod scratch;
#[cfg(test)]
mod tests;

pub(crate) use conv::conv2d;
#[cfg(test)]
pub(crate) use conv::conv2d_in_bands;
#[cfg(all(test, target_arch = "x86_64"))]
pub(crate) use conv::conv2d_shifted;
pub(crate) use conv_direct::{applies as direct_conv_applies, forward as direct_conv_forward};
#[cfg(all(test, target_arch = "x86_64"))]
pub(crate) use conv_shifted::applies as shifted_conv_applies;
pub(crate) use filter::shared_filter2d;
pub(crate) use group_norm::group_norm;
pub(crate) use layer_norm::layer_norm;
pub(crate) use leaky_relu::leaky_relu;
pub(crate) use linear::{linear, linear_attention, linear_gelu};
pub(crate) use norm_activation::Activation;
pub(crate) use scratch::release as release_scratch;
pub(crate) use scratch::scratch;

use candle_core::{bail, CpuStorage, DType, Device, Layout, Result, Storage, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

/// True when the ops here can take these tensors: f32 and on the CPU.
pub(crate) fn serve(tensors: &[&Tensor]) -> bool {
    tensors.iter().all(|t| t.dtype() == DType::F32 && t.device().is_cpu())
}

/// The f32 values a custom op's forward gets, refused with the op's name unless f32 and contiguous (the training
/// ops' wrappers pass contiguous tensors; the inference ops take what their callers give).
pub(crate) fn values<'a>(storage: &'a CpuStorage, layout: &Layout, op: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = storage else { bail!("{op}: f32 tensors only") };
    let Some((start, end)) = layout.contiguous_offsets() else { bail!("{op}: the input is not contiguous") };
    Ok(&v[start..end])
}

/// Runs `f` on the f32 values of `tensors` (contiguous copies where needed): the backward passes read tracked
/// tensors, which the inference kernels' `F32Data` refuses.
fn with_values<const N: usize, R>(tensors: [&Tensor; N], f: impl FnOnce([&[f32]; N]) -> R) -> Result<R> {
    let owned = tensors.map(|t| t.detach().contiguous());
    let mut ts = Vec::with_capacity(N);
    for t in owned {
        ts.push(t?);
    }
    let guards: Vec<_> = ts.iter().map(|t| t.storage_and_layout()).collect();
    let mut slices = [&[][..]; N];
    for (slot, (storage, layout)) in slices.iter_mut().zip(&guards) {
        let Storage::Cpu(s) = &**storage else { bail!("the training ops run on the CPU only") };
        *slot = values(s, layout, "training op")?;
    }
    Ok(f(slices))
}

/// Values from which [`zeros`] has the pool's threads write them: 64K (256 KiB), several pages a task.
const ZEROS_CHUNK: usize = 1 << 16;

/// `len` zeros, an op's output or gradient before its passes fill or add to it, written by the pool's threads
/// when there are more than [`ZEROS_CHUNK`]. `vec![0f32; len]` zeroes (or, freshly mapped, page-faults) the whole
/// buffer on the op's calling thread while the other threads wait: at 2 threads ~10% of the discriminator step's
/// wall time was such serial memset and page faults (a `perf` profile split by thread).
fn zeros(len: usize) -> Vec<f32> {
    if len <= ZEROS_CHUNK {
        return vec![0f32; len];
    }
    let mut v = Vec::with_capacity(len);
    v.spare_capacity_mut().par_chunks_mut(ZEROS_CHUNK).for_each(|c| c.fill(std::mem::MaybeUninit::new(0f32)));
    // SAFETY: the loop above wrote all `len` values of the capacity.
    unsafe { v.set_len(len) };
    v
}

fn cpu_tensor(values: Vec<f32>, shape: &[usize]) -> Result<Tensor> {
    Tensor::from_vec(values, shape, &Device::Cpu)
}

/// A matrix in memory: element (i, j) at `ptr + i·rs + j·cs`.
#[derive(Clone, Copy)]
struct View {
    ptr: *const f32,
    rs: isize,
    cs: isize,
}

impl View {
    /// Rows `stride` apart, columns adjacent.
    fn rows(ptr: *const f32, stride: usize) -> Self {
        Self { ptr, rs: stride as isize, cs: 1 }
    }

    fn t(self) -> Self {
        Self { ptr: self.ptr, rs: self.cs, cs: self.rs }
    }
}

/// How a product is run and stored.
#[derive(Clone, Copy)]
struct Product {
    /// Multiplies the product.
    scale: f32,
    /// Adds the product to what dst holds instead of overwriting it.
    accumulate: bool,
    /// Runs on the whole pool (else on the calling thread).
    parallel: bool,
}

/// dst (m, n, rows `dst_stride` apart) ← [dst +] scale · lhs (m, k) · rhs (k, n), by the `gemm` crate: on the
/// training shapes (~800 rows) it measured 10-40% faster on one thread than `super::sgemm`, which the inference
/// path picks for up to 1024 rows from its single-image measurements.
///
/// # Safety
/// The views must address m·k and k·n readable values, dst m·n writable ones that nothing else reads or writes
/// during the call.
#[allow(clippy::too_many_arguments)]
unsafe fn product(m: usize, n: usize, k: usize, dst: *mut f32, dst_stride: usize, lhs: View, rhs: View, how: Product) {
    product_into(m, n, k, dst, View::rows(dst, dst_stride), lhs, rhs, how)
}

/// [`product`] into dst laid out as `layout` (its pointer unused: `dst` is the writable one).
///
/// # Safety
/// As [`product`].
#[allow(clippy::too_many_arguments)]
unsafe fn product_into(m: usize, n: usize, k: usize, dst: *mut f32, layout: View, lhs: View, rhs: View, how: Product) {
    let threads = rayon::current_num_threads();
    let parallelism = if how.parallel && threads > 1 { Parallelism::Rayon(threads) } else { Parallelism::None };
    let keep = if how.accumulate { 1.0 } else { 0.0 };
    gemm::gemm(
        m,
        n,
        k,
        dst,
        layout.cs,
        layout.rs,
        how.accumulate,
        lhs.ptr,
        lhs.cs,
        lhs.rs,
        rhs.ptr,
        rhs.cs,
        rhs.rs,
        keep,
        how.scale,
        false,
        false,
        false,
        parallelism,
    )
}

/// A product on the whole pool, overwriting dst.
const PARALLEL: Product = Product { scale: 1.0, accumulate: false, parallel: true };

/// Rows per chunk of the row-wise reductions (a weight's gradient summed over rows): fixed, so that the partial
/// sums, and the bits of their total, do not depend on the number of threads.
const REDUCE_ROWS: usize = 32;
