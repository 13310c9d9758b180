//! Launches of the fused LFQ kernels (`kernels/lfq_codes.cu`, `kernels/lfq_entropy.cu`), compiled to PTX for
//! `CUDA_COMPUTE_CAP` by build.rs and loaded once per device through candle's custom-module cache.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::WrapErr;
use candle_core::{CudaDevice, CudaStorage, Layout, Shape, Storage, Tensor};

use super::fused::{PassOutputs, MAX_FUSED_WIDTH};

const CODES_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/lfq_codes.ptx"));
const ENTROPY_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/lfq_entropy.ptx"));

const BLOCK: u32 = 256;

fn input<'a>(
    s: &'a CudaStorage,
    l: &Layout,
) -> candle_core::Result<candle_core::cuda_backend::cudarc::driver::CudaView<'a, f32>> {
    let Some((a, b)) = l.contiguous_offsets() else { candle_core::bail!("fused LFQ: input must be contiguous") };
    Ok(s.as_cuda_slice::<f32>()?.slice(a..b))
}

fn tensor<T: candle_core::cuda_backend::CudaDType>(
    slice: CudaSlice<T>,
    dev: &CudaDevice,
    shape: impl Into<Shape>,
) -> Tensor {
    let storage = Storage::Cuda(CudaStorage::wrap_cuda_slice(slice, dev.clone()));
    Tensor::from_storage(storage, shape, candle_core::op::BackpropOp::none(), false)
}

fn u32_arg(v: usize, what: &str) -> candle_core::Result<u32> {
    u32::try_from(v).map_err(|_| candle_core::Error::Msg(format!("fused LFQ: {what} = {v} exceeds u32")))
}

/// All depths of z (rows x bits) in one launch: cum and ids, and for training also every depth's residual and
/// code (`q` is then `Some`).
pub fn quantize(
    s: &CudaStorage,
    l: &Layout,
    bits: usize,
    depths: usize,
    training: bool,
) -> candle_core::Result<(Option<CudaStorage>, PassOutputs)> {
    let dev = s.device().clone();
    let z = input(s, l)?;
    let rows = l.shape().elem_count() / bits;
    let plane = rows * bits;
    let cum = unsafe { dev.alloc::<f32>(plane)? };
    let tokens = unsafe { dev.alloc::<u32>(rows * depths)? };
    let (r, q) = if training {
        (Some(unsafe { dev.alloc::<f32>(depths * plane)? }), Some(unsafe { dev.alloc::<f32>(depths * plane)? }))
    } else {
        (None, None)
    };
    let per_warp = 32 / bits;
    let warps = rows.div_ceil(per_warp);
    let blocks = u32_arg((warps * 32).div_ceil(BLOCK as usize), "blocks")?;
    let func = dev.get_or_load_custom_func("lfq_quantize_f32", "marvel_lfq_codes", CODES_PTX)?;
    let (rows32, bits32, depths32) = (u32_arg(rows, "rows")?, bits as u32, depths as u32);
    // A null pointer tells the kernel to skip that output.
    let null = 0u64;
    let mut b = func.builder();
    b.arg(&z).arg(&cum).arg(&tokens);
    for out in [&r, &q] {
        match out {
            Some(o) => b.arg(o),
            None => b.arg(&null),
        };
    }
    b.arg(&rows32).arg(&bits32).arg(&depths32);
    let cfg = LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 };
    unsafe { b.launch(cfg) }.w()?;
    let side = PassOutputs {
        cum: tensor(cum, &dev, (rows, bits)),
        tokens: tensor(tokens, &dev, (rows, depths)),
        q: q.map(|q| tensor(q, &dev, (depths, rows, bits))),
    };
    Ok((r.map(|r| CudaStorage::wrap_cuda_slice(r, dev.clone())), side))
}

/// cum of the first `depths` ids of each row of `tokens` (rows x stride U32, contiguous), and the flat index of
/// the first id >= 2^bits among them, checked on the device.
pub fn decode(tokens: &Tensor, stride: usize, depths: usize, bits: usize) -> crate::Result<(Tensor, Option<usize>)> {
    let (storage, layout) = tokens.storage_and_layout();
    let Storage::Cuda(s) = &*storage else { return Err(crate::invalid!("fused LFQ decode: tokens are not on a GPU")) };
    let Some((a, e)) = layout.contiguous_offsets() else {
        return Err(crate::invalid!("fused LFQ decode: tokens must be contiguous"));
    };
    let ids = s.as_cuda_slice::<u32>()?.slice(a..e);
    let dev = s.device().clone();
    let rows = (e - a) / stride;
    u32_arg(e - a, "token count")?;
    let cum = unsafe { dev.alloc::<f32>(rows * bits)? };
    let mut bad = dev.alloc_zeros::<u32>(1)?;
    dev.memcpy_htod(&[u32::MAX][..], &mut bad)?;
    let func = dev.get_or_load_custom_func("lfq_decode_u32", "marvel_lfq_codes", CODES_PTX)?;
    let (rows32, bits32, stride32, depths32) = (rows as u32, bits as u32, stride as u32, depths as u32);
    let mut b = func.builder();
    b.arg(&ids).arg(&cum).arg(&bad).arg(&rows32).arg(&bits32).arg(&stride32).arg(&depths32);
    let blocks = u32_arg((rows * bits).div_ceil(BLOCK as usize), "blocks")?;
    let cfg = LaunchConfig { grid_dim: (blocks.max(1), 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 };
    unsafe { b.launch(cfg) }.w()?;
    let bad = dev.clone_dtoh(&bad)?[0];
    drop(storage);
    Ok((tensor(cum, &dev, (rows, bits)), (bad != u32::MAX).then_some(bad as usize)))
}

/// Column sums of p (then h, see the kernel) and the sum of p log p, for one group.
fn entropy_sums(
    dev: &CudaDevice,
    r: &candle_core::cuda_backend::cudarc::driver::CudaView<'_, f32>,
    rows: usize,
    width: usize,
    inv_tau: f64,
) -> candle_core::Result<(CudaSlice<f64>, CudaSlice<f64>)> {
    assert!(width <= MAX_FUSED_WIDTH);
    let codes = 1usize << width;
    let col = dev.alloc_zeros::<f64>(codes)?;
    let plogp = dev.alloc_zeros::<f64>(1)?;
    // Enough row chunks to fill the GPU (~4 blocks per SM of a 132-SM H100/H200) without making the per-code
    // atomics (one per code and chunk) dominate.
    let code_blocks = codes.div_ceil(BLOCK as usize);
    let chunks = (528usize.div_ceil(code_blocks)).clamp(1, rows.div_ceil(32).max(1));
    let rows_per_chunk = rows.div_ceil(chunks);
    let func = dev.get_or_load_custom_func("lfq_entropy_forward", "marvel_lfq_entropy", ENTROPY_PTX)?;
    let (rows32, width32, rpc32) = (u32_arg(rows, "rows")?, width as u32, rows_per_chunk as u32);
    let mut b = func.builder();
    b.arg(r).arg(&col).arg(&plogp).arg(&rows32).arg(&width32).arg(&rpc32).arg(&inv_tau);
    let cfg = LaunchConfig {
        grid_dim: (code_blocks as u32, rows.div_ceil(rows_per_chunk).max(1) as u32, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    };
    unsafe { b.launch(cfg) }.w()?;
    Ok((col, plogp))
}

fn entropy_finish(
    dev: &CudaDevice,
    col: &CudaSlice<f64>,
    plogp: &CudaSlice<f64>,
    out: &CudaSlice<f32>,
    rows: usize,
    width: usize,
) -> candle_core::Result<()> {
    let func = dev.get_or_load_custom_func("lfq_entropy_finish", "marvel_lfq_entropy", ENTROPY_PTX)?;
    let (rows32, width32) = (rows as u32, width as u32);
    let mut b = func.builder();
    b.arg(col).arg(plogp).arg(out).arg(&rows32).arg(&width32);
    let cfg = LaunchConfig { grid_dim: (1, 1, 1), block_dim: (1024, 1, 1), shared_mem_bytes: 0 };
    unsafe { b.launch(cfg) }.w()?;
    Ok(())
}

/// (per-sample, average) entropy of one group as a (2,) f32 storage.
pub fn entropy_forward(
    s: &CudaStorage,
    l: &Layout,
    width: usize,
    inv_tau: f64,
) -> candle_core::Result<(CudaStorage, Shape)> {
    let dev = s.device().clone();
    let r = input(s, l)?;
    let rows = l.shape().elem_count() / width;
    let (col, plogp) = entropy_sums(&dev, &r, rows, width, inv_tau)?;
    let out = unsafe { dev.alloc::<f32>(2)? };
    entropy_finish(&dev, &col, &plogp, &out, rows, width)?;
    Ok((CudaStorage::wrap_cuda_slice(out, dev), Shape::from(2)))
}

/// dL/dr of one group given the (2,) incoming gradient; recomputes the column means (cheaper than keeping them
/// across the graph, and stateless).
pub fn entropy_backward(
    s1: &CudaStorage,
    l1: &Layout,
    s2: &CudaStorage,
    l2: &Layout,
    width: usize,
    inv_tau: f64,
) -> candle_core::Result<(CudaStorage, Shape)> {
    let dev = s1.device().clone();
    let r = input(s1, l1)?;
    let grad = input(s2, l2)?;
    let rows = l1.shape().elem_count() / width;
    let (col, plogp) = entropy_sums(&dev, &r, rows, width, inv_tau)?;
    let scratch = unsafe { dev.alloc::<f32>(2)? };
    entropy_finish(&dev, &col, &plogp, &scratch, rows, width)?;
    let dr = unsafe { dev.alloc::<f32>(rows * width)? };
    let func = dev.get_or_load_custom_func("lfq_entropy_backward", "marvel_lfq_entropy", ENTROPY_PTX)?;
    let (rows32, width32) = (u32_arg(rows, "rows")?, width as u32);
    let mut b = func.builder();
    b.arg(&r).arg(&col).arg(&grad).arg(&dr).arg(&rows32).arg(&width32).arg(&inv_tau);
    let blocks = u32_arg((rows * 32).div_ceil(BLOCK as usize), "blocks")?;
    let cfg = LaunchConfig { grid_dim: (blocks.max(1), 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 };
    unsafe { b.launch(cfg) }.w()?;
    Ok((CudaStorage::wrap_cuda_slice(dr, dev), l1.shape().clone()))
}
