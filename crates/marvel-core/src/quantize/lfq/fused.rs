//! The LFQ as fused ops: every depth of a token in one pass (residuals, signs, scales, cum, LSB-first ids), and
//! the entropy regulariser of a bit group without its rows x 2^w probability matrix. On a CUDA device these run the
//! kernels of `kernels/lfq_*.cu`; on the CPU they run the same algorithm here, which is what the GPU check
//! (`bench/gpu`) compares the kernels against and what the tests below check against the composite CPU path.
//!
//! The entropy uses the exact per-code softmax, factorised only in its normaliser:
//! log p_c = sum_k (c_k a_k - |a_k|) - sum_k log1p(exp(-2|a_k|)), a_k = 2 r_k / tau. Memory is O(rows x w + 2^w)
//! instead of ~12 tensors of rows x 2^w; time is still rows x 2^w x w, so wide groups stay slow, and above
//! [`MAX_FUSED_WIDTH`] bits a group goes through the composite path (and its memory limit).

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Shape, Tensor};

use super::codes::depth_scale;
use crate::error::Result;

/// Widest bit group the fused entropy takes: 2^16 codes per row is ~1M f64 operations a row.
pub const MAX_FUSED_WIDTH: usize = 16;

/// MDQ's clamp of p inside the log.
const LOG_CLAMP: f64 = 1e-5;

fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else { candle_core::bail!("{op}: f32 input expected") };
    let Some((a, b)) = l.contiguous_offsets() else { candle_core::bail!("{op}: input must be contiguous") };
    Ok(&v[a..b])
}

/// `-sum_k (|a_k| + log1p(exp(-2|a_k|)))`: log p_c of a code minus its sum_k c_k a_k.
fn row_base(a: &[f64]) -> f64 {
    a.iter().map(|&x| -(x.abs() + (-2.0 * x.abs()).exp().ln_1p())).sum()
}

fn log_p(a: &[f64], base: f64, c: usize) -> f64 {
    a.iter().enumerate().fold(base, |acc, (k, &x)| if (c >> k) & 1 == 1 { acc + x } else { acc - x })
}

fn scaled_row(r: &[f32], inv_tau: f64) -> Vec<f64> {
    r.iter().map(|&v| 2.0 * f64::from(v) * inv_tau).collect()
}

/// Per-sample entropy S, average entropy A (before gamma) of one group (rows x `width` residuals), and
/// h_c = d(m log max(m, eps))/dm at each code's mean probability m_c (what the backward pass needs).
pub fn entropy_forward_host(r: &[f32], width: usize, inv_tau: f64) -> (f64, f64, Vec<f64>) {
    let rows = r.len() / width;
    let codes = 1usize << width;
    let (mut col, mut plogp) = (vec![0f64; codes], 0f64);
    for row in r.chunks_exact(width) {
        let a = scaled_row(row, inv_tau);
        let base = row_base(&a);
        for (c, m) in col.iter_mut().enumerate() {
            let p = log_p(&a, base, c).exp();
            *m += p;
            plogp += p * p.max(LOG_CLAMP).ln();
        }
    }
    let mut avg = 0f64;
    for m in col.iter_mut() {
        let mean = *m / rows as f64;
        avg += mean * mean.max(LOG_CLAMP).ln();
        *m = if mean > LOG_CLAMP { mean.ln() + 1.0 } else { LOG_CLAMP.ln() };
    }
    (-plogp / rows as f64, -avg, col)
}

/// d(gs S + ga A)/dr for one group, given h from [`entropy_forward_host`].
pub fn entropy_backward_host(r: &[f32], width: usize, inv_tau: f64, h: &[f64], gs: f64, ga: f64) -> Vec<f32> {
    let rows = r.len() / width;
    let scale = -2.0 * inv_tau / rows as f64;
    let f = |p: f64| p.max(LOG_CLAMP).ln() + if p > LOG_CLAMP { 1.0 } else { 0.0 };
    let mut out = Vec::with_capacity(r.len());
    for row in r.chunks_exact(width) {
        let a = scaled_row(row, inv_tau);
        let base = row_base(&a);
        let p: Vec<f64> = (0..h.len()).map(|c| log_p(&a, base, c).exp()).collect();
        let pf: f64 = p.iter().map(|&p| p * f(p)).sum();
        let ph: f64 = p.iter().zip(h).map(|(&p, &h)| p * h).sum();
        let mut g = vec![0f64; width];
        for (c, (&p, &h)) in p.iter().zip(h).enumerate() {
            let dl = p * (gs * (f(p) - pf) + ga * (h - ph));
            for (k, gk) in g.iter_mut().enumerate() {
                *gk += if (c >> k) & 1 == 1 { dl } else { -dl };
            }
        }
        out.extend(g.into_iter().map(|v| (v * scale) as f32));
    }
    out
}

/// (S, A) of one bit group as a (2,) f32 tensor, differentiable in r (rows x width).
pub(crate) struct GroupEntropy {
    pub width: usize,
    pub inv_tau: f64,
}

impl CustomOp1 for GroupEntropy {
    fn name(&self) -> &'static str {
        "lfq-group-entropy"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let r = contiguous_f32(s, l, self.name())?;
        let (ps, avg, _) = entropy_forward_host(r, self.width, self.inv_tau);
        Ok((CpuStorage::F32(vec![ps as f32, avg as f32]), Shape::from(2)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::entropy_forward(s, l, self.width, self.inv_tau)
    }

    fn bwd(&self, r: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let op = GroupEntropyGrad { width: self.width, inv_tau: self.inv_tau };
        Ok(Some(r.apply_op2_no_bwd(&grad.to_dtype(DType::F32)?.contiguous()?, &op)?))
    }
}

/// dL/dr of [`GroupEntropy`] from r and the (2,) incoming gradient.
struct GroupEntropyGrad {
    width: usize,
    inv_tau: f64,
}

impl CustomOp2 for GroupEntropyGrad {
    fn name(&self) -> &'static str {
        "lfq-group-entropy-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let r = contiguous_f32(s1, l1, self.name())?;
        let g = contiguous_f32(s2, l2, self.name())?;
        let (_, _, h) = entropy_forward_host(r, self.width, self.inv_tau);
        let dr = entropy_backward_host(r, self.width, self.inv_tau, &h, f64::from(g[0]), f64::from(g[1]));
        Ok((CpuStorage::F32(dr), l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::entropy_backward(s1, l1, s2, l2, self.width, self.inv_tau)
    }
}

/// The entropy terms of [`super::entropy::entropy_terms`] through the fused op, for every group (each at most
/// [`MAX_FUSED_WIDTH`] bits wide).
pub fn entropy_terms_fused(
    r: &Tensor,
    groups: usize,
    temperature: f64,
    gamma: f64,
) -> Result<super::entropy::EntropyTerms> {
    let (_, bits) = r.dims2()?;
    let device = r.device();
    let mut per_sample = Tensor::zeros((), DType::F32, device)?;
    let mut avg = Tensor::zeros((), DType::F32, device)?;
    for (start, width) in super::entropy::group_ranges(bits, groups) {
        if width > MAX_FUSED_WIDTH {
            return Err(crate::invalid!(
                "fused LFQ entropy takes groups of at most {MAX_FUSED_WIDTH} bits, got {width}"
            ));
        }
        let r_g = r.narrow(1, start, width)?.to_dtype(DType::F32)?.contiguous()?;
        let out = r_g.apply_op1(GroupEntropy { width, inv_tau: 1.0 / temperature })?;
        per_sample = (per_sample + out.get(0)?)?;
        avg = (avg + out.get(1)?)?;
    }
    Ok(super::entropy::EntropyTerms { per_sample, avg: (avg * gamma)? })
}

/// Outputs of one quantizer pass besides the residuals: no gradient flows through them.
#[derive(Clone)]
pub struct PassOutputs {
    /// rows x bits.
    pub cum: Tensor,
    /// rows x depths U32, depth fastest.
    pub tokens: Tensor,
    /// depths x rows x bits: q_s = +-2^-s (training passes only).
    pub q: Option<Tensor>,
}

/// The residuals r_s = z - cum_s (depths x rows x bits) of z (rows x bits), whose gradient is the identity into z
/// for every depth (cum_s is a constant); the same pass leaves the codes and ids in `side`.
pub(crate) struct Residuals {
    pub bits: usize,
    pub depths: usize,
    pub side: Arc<Mutex<Option<PassOutputs>>>,
}

/// The CPU pass: codes.rs's `quantize_in_place`, keeping every residual.
pub fn residuals_host(z: &[f32], bits: usize, depths: usize) -> (Vec<f32>, Vec<f32>, Vec<u32>, Vec<f32>) {
    let rows = z.len() / bits;
    let plane = rows * bits;
    let (mut r, mut q, mut cum) = (vec![0f32; depths * plane], vec![0f32; depths * plane], vec![0f32; plane]);
    let mut tokens = vec![0u32; rows * depths];
    for row in 0..rows {
        for s in 0..depths {
            let scale = depth_scale(s);
            let mut id = 0u32;
            for k in 0..bits {
                let i = row * bits + k;
                let rv = z[i] - cum[i];
                let bit = rv > 0.0;
                id |= u32::from(bit) << k;
                let code = if bit { scale } else { -scale };
                r[s * plane + i] = rv;
                q[s * plane + i] = code;
                cum[i] += code;
            }
            tokens[row * depths + s] = id;
        }
    }
    (r, q, tokens, cum)
}

impl CustomOp1 for Residuals {
    fn name(&self) -> &'static str {
        "lfq-residuals"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let z = contiguous_f32(s, l, self.name())?;
        let rows = z.len() / self.bits;
        let (r, q, tokens, cum) = residuals_host(z, self.bits, self.depths);
        let dev = candle_core::Device::Cpu;
        *self.side.lock().unwrap() = Some(PassOutputs {
            cum: Tensor::from_vec(cum, (rows, self.bits), &dev)?,
            tokens: Tensor::from_vec(tokens, (rows, self.depths), &dev)?,
            q: Some(Tensor::from_vec(q, (self.depths, rows, self.bits), &dev)?),
        });
        Ok((CpuStorage::F32(r), Shape::from((self.depths, rows, self.bits))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let (r, side) = super::cuda::quantize(s, l, self.bits, self.depths, true)?;
        *self.side.lock().unwrap() = Some(side);
        let rows = l.shape().elem_count() / self.bits;
        Ok((r.expect("residuals were requested"), Shape::from((self.depths, rows, self.bits))))
    }

    fn bwd(&self, _z: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad.sum(0)?))
    }
}

/// One fused training pass over z (rows x bits f32): the differentiable residuals and the pass's constants.
pub fn residuals(z: &Tensor, bits: usize, depths: usize) -> Result<(Tensor, PassOutputs)> {
    let side = Arc::new(Mutex::new(None));
    let r = z.contiguous()?.apply_op1(Residuals { bits, depths, side: side.clone() })?;
    let out = side.lock().unwrap().take().expect("the op's forward fills its side outputs");
    Ok((r, out))
}

#[cfg(test)]
#[path = "fused_tests.rs"]
mod tests;

/// One fused inference pass over z (rows x bits f32, on a GPU): cum and the ids only.
#[cfg(feature = "cuda")]
pub fn quantize_pass(z: &Tensor, bits: usize, depths: usize) -> Result<PassOutputs> {
    let z = z.contiguous()?;
    let (storage, layout) = z.storage_and_layout();
    let candle_core::Storage::Cuda(s) = &*storage else {
        return Err(crate::invalid!("the fused LFQ pass runs on a GPU; the CPU path is codes::quantize_in_place"));
    };
    Ok(super::cuda::quantize(s, layout, bits, depths, false)?.1)
}
