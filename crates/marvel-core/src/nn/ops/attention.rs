//! The core of multi-head self-attention, softmax(q·kᵀ/√hd)·v per image and head, from the packed projection
//! (B, L, 3D) (rows [q | k | v], heads side by side in each) to (B, L, D): the forward is the inference kernel,
//! reading q, k and v in place; the backward recomputes each head's probabilities (one L×L product) rather than
//! keeping B·H·L² of them per block, and writes dq, dk and dv into their columns of the packed gradient.
//! One (image, head) pair per task, single-threaded gemms inside.

use candle_core::{bail, CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{cpu_tensor, product, values, with_values, View};
use crate::nn::fused::{self, SharedMut};
use crate::nn::kernels;

/// `qkv` (B, L, 3D) → (B, L, D) for `heads` heads, differentiable.
pub(crate) fn attention(qkv: &Tensor, heads: usize) -> Result<Tensor> {
    qkv.contiguous()?.apply_op1(AttentionOp { heads })
}

struct AttentionOp {
    heads: usize,
}

impl AttentionOp {
    /// (B, L, D) of a packed (B, L, 3D) input, checked.
    fn sizes(&self, dims: &[usize]) -> Result<(usize, usize, usize)> {
        let &[b, l, d3] = dims else { bail!("attention: the packed projection must be (B, L, 3D), got {dims:?}") };
        if d3 % 3 != 0 || self.heads == 0 || (d3 / 3) % self.heads != 0 {
            bail!("attention: {} heads do not split a packed width of {d3} into q, k, v", self.heads);
        }
        Ok((b, l, d3 / 3))
    }
}

impl CustomOp1 for AttentionOp {
    fn name(&self) -> &'static str {
        "marvel-attention"
    }

    fn cpu_fwd(&self, s: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, l, d) = self.sizes(layout.dims())?;
        let qkv = values(s, layout, "attention")?;
        let mut out = vec![0f32; b * l * d];
        fused::attention(qkv, &mut out, b, l, d, self.heads);
        Ok((CpuStorage::F32(out), Shape::from((b, l, d))))
    }

    fn bwd(&self, qkv: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (b, l, d) = self.sizes(qkv.dims())?;
        let heads = self.heads;
        let dqkv = with_values([qkv, grad], |[qkv, dout]| {
            let mut dqkv = vec![0f32; qkv.len()];
            let dst = SharedMut(dqkv.as_mut_ptr());
            (0..b * heads).into_par_iter().for_each_init(
                || (vec![0f32; l * l], vec![0f32; l * l], vec![0f32; l]),
                |(probs, dprobs, inv_sums), task| {
                    let (img, head) = (task / heads, task % heads);
                    // SAFETY: the task reads rows img·L.. of qkv and dout and writes columns head·hd.. of q, k and
                    // v in rows img·L.. of dqkv, a block no other task touches; `dqkv` outlives the loop.
                    unsafe { head_backward(qkv, dout, dst, probs, dprobs, inv_sums, (img, head), (l, d, heads)) }
                },
            );
            dqkv
        })?;
        Ok(Some(cpu_tensor(dqkv, qkv.dims())?))
    }
}

/// dq, dk, dv of one (image, head) pair. With P = softmax(S), S = q·kᵀ·s (s = 1/√hd) and O = P·v:
/// dv = Pᵀ·dO, dP = dO·vᵀ, dS = P ⊙ (dP - rowsum(dP ⊙ P)), dq = s·dS·k, dk = s·dSᵀ·q.
///
/// # Safety
/// `dqkv` points to B·L·3D values; only this pair's block is written.
#[allow(clippy::too_many_arguments)]
unsafe fn head_backward(
    qkv: &[f32],
    dout: &[f32],
    dqkv: SharedMut,
    probs: &mut [f32],
    dprobs: &mut [f32],
    inv_sums: &mut [f32],
    (img, head): (usize, usize),
    (l, d, heads): (usize, usize, usize),
) {
    let hd = d / heads;
    let scale = 1.0 / (hd as f32).sqrt();
    let row = 3 * d;
    let base = img * l * row + head * hd;
    let (q, k, v) = (View::rows(qkv[base..].as_ptr(), row), View::rows(qkv[base + d..].as_ptr(), row), View::rows(qkv[base + 2 * d..].as_ptr(), row));
    let d_out = View::rows(dout[img * l * d + head * hd..].as_ptr(), d);
    let dst = dqkv.get().add(base);
    let (dq, dk, dv) = (dst, dst.add(d), dst.add(2 * d));

    product(l, l, hd, probs.as_mut_ptr(), l, q, k.t(), scale, false);
    kernels::softmax_exp_rows(probs, l, inv_sums);
    for (r, inv) in probs.chunks_exact_mut(l).zip(inv_sums.iter()) {
        kernels::scale(r, *inv);
    }
    let p = View::rows(probs.as_ptr(), l);
    product(l, hd, l, dv, row, p.t(), d_out, 1.0, false);
    product(l, l, hd, dprobs.as_mut_ptr(), l, d_out, v.t(), 1.0, false);
    kernels::softmax_backward_rows(dprobs, probs, l);
    let ds = View::rows(dprobs.as_ptr(), l);
    product(l, hd, l, dq, row, ds, k, scale, false);
    product(l, hd, l, dk, row, ds.t(), q, scale, false);
}
