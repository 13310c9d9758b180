//! The backward of multi-head self-attention's core, softmax(q·kᵀ/√hd)·v per image and head, whose forward is
//! the inference kernel (`fused::attention`, reading q, k and v in place from the packed projection (B, L, 3D),
//! rows [q | k | v], heads side by side in each). It recomputes each head's probabilities (one L×L product)
//! rather than keeping B·H·L² of them per block, and writes dq, dk and dv into their columns of the packed
//! gradient. One (image, head) pair per task, single-threaded gemms inside.

use rayon::prelude::*;

use super::{product, Product, View};
use crate::nn::fused::SharedMut;
use crate::nn::kernels;

/// The gradient of the packed projection `qkv` ((B·L, 3D)) from that of the attention output `dout` ((B·L, D)).
pub(super) fn attention_backward(qkv: &[f32], dout: &[f32], b: usize, l: usize, d: usize, heads: usize) -> Vec<f32> {
    assert!(qkv.len() == b * l * 3 * d && dout.len() == b * l * d && d % heads == 0, "attention: sizes do not match");
    let mut dqkv = vec![0f32; qkv.len()];
    let dst = SharedMut(dqkv.as_mut_ptr());
    (0..b * heads).into_par_iter().for_each_init(
        || (vec![0f32; l * l], vec![0f32; l * l], vec![0f32; l]),
        |(probs, dprobs, inv_sums), task| {
            let (img, head) = (task / heads, task % heads);
            // SAFETY: the task reads rows img·L.. of qkv and dout and writes columns head·hd.. of q, k and v in
            // rows img·L.. of dqkv, a block no other task touches; `dqkv` outlives the loop.
            unsafe { head_backward(qkv, dout, dst, probs, dprobs, inv_sums, (img, head), (l, d, heads)) }
        },
    );
    dqkv
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
    let (q, k, v) = (
        View::rows(qkv[base..].as_ptr(), row),
        View::rows(qkv[base + d..].as_ptr(), row),
        View::rows(qkv[base + 2 * d..].as_ptr(), row),
    );
    let d_out = View::rows(dout[img * l * d + head * hd..].as_ptr(), d);
    let dst = dqkv.get().add(base);
    let (dq, dk, dv) = (dst, dst.add(d), dst.add(2 * d));

    let (one, scaled) = (
        Product { scale: 1.0, accumulate: false, parallel: false },
        Product { scale, accumulate: false, parallel: false },
    );
    product(l, l, hd, probs.as_mut_ptr(), l, q, k.t(), scaled);
    kernels::softmax_exp_rows(probs, l, inv_sums);
    for (r, inv) in probs.chunks_exact_mut(l).zip(inv_sums.iter()) {
        kernels::scale(r, *inv);
    }
    let p = View::rows(probs.as_ptr(), l);
    product(l, hd, l, dv, row, p.t(), d_out, one);
    product(l, l, hd, dprobs.as_mut_ptr(), l, d_out, v.t(), one);
    kernels::softmax_backward_rows(dprobs, probs, l);
    let ds = View::rows(dprobs.as_ptr(), l);
    product(l, hd, l, dq, row, ds, k, scaled);
    product(l, hd, l, dk, row, ds.t(), q, scaled);
}
