//! y = x·Wᵀ + b over every row of x at once (x of any rank, flattened to (M, K); W (N, K) as nn.Linear keeps it),
//! optionally followed in the same node by what the block does next with y: the MLP's GELU after c_fc, the
//! attention core after the packed q/k/v projection. candle's `Linear` broadcasts W to each image of a 3-D input
//! and sums the gradient back; here the backward is dx = dy·W and dW = dyᵀ·x, one gemm each reading the
//! operands in place, and db the column sums of dy. Folding the next step in saves a node, and with it candle's
//! zero-filled gradient buffer and the pass that adds into it, for the block's two widest activations.

use std::sync::Mutex;

use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::attention::attention_backward;
use super::{cpu_tensor, product, values, with_values, Product, View, PARALLEL};
use crate::nn::{fused, kernels};

/// x (..., K) · Wᵀ + b, differentiable in all three.
pub(crate) fn linear(xs: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    apply(xs, weight, bias, Then::Nothing)
}

/// gelu(x·Wᵀ + b) with torch's exact (erf) GELU, differentiable in all three.
pub(crate) fn linear_gelu(xs: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    apply(xs, weight, bias, Then::Gelu)
}

/// Self-attention's core with `heads` heads on the packed projection x·Wᵀ + b of `xs` (B, L, K), W (3D, K):
/// (B, L, D), differentiable in all three.
pub(crate) fn linear_attention(xs: &Tensor, weight: &Tensor, bias: &Tensor, heads: usize) -> Result<Tensor> {
    apply(xs, weight, bias, Then::Attention { heads })
}

fn apply(xs: &Tensor, weight: &Tensor, bias: &Tensor, then: Then) -> Result<Tensor> {
    let op = LinearOp { then, kept: Mutex::new(Vec::new()) };
    xs.contiguous()?.apply_op3(&weight.contiguous()?, &bias.contiguous()?, op)
}

/// What the node does with the product before handing it on.
#[derive(Clone, Copy)]
enum Then {
    Nothing,
    Gelu,
    Attention { heads: usize },
}

struct LinearOp {
    then: Then,
    /// With a second step: the product the forward computed (the GELU's pre-activations, the packed q/k/v),
    /// which that step's backward needs; the op keeps it in place of the tensor a separate node would keep.
    kept: Mutex<Vec<f32>>,
}

impl CustomOp3 for LinearOp {
    fn name(&self) -> &'static str {
        match self.then {
            Then::Nothing => "marvel-linear",
            Then::Gelu => "marvel-linear-gelu",
            Then::Attention { .. } => "marvel-linear-attention",
        }
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, k) = wl.shape().dims2()?;
        if xl.dims().last() != Some(&k) || bl.dims() != [n] {
            bail!("linear: input {:?}, weight {:?} and bias {:?} do not fit", xl.dims(), wl.dims(), bl.dims());
        }
        let (x, w, b) = (values(xs, xl, "linear")?, values(ws, wl, "linear")?, values(bs, bl, "linear")?);
        let rows = x.len() / k.max(1);
        let mut out = vec![0f32; rows * n];
        // The bias first, the product accumulated onto it: no pass of its own.
        fused::par_rows(&mut out, n, |o| o.chunks_exact_mut(n).for_each(|row| row.copy_from_slice(b)));
        if k > 0 {
            let how = Product { accumulate: true, ..PARALLEL };
            // SAFETY: x holds rows·k values, W n·k, out rows·n.
            unsafe {
                product(rows, n, k, out.as_mut_ptr(), n, View::rows(x.as_ptr(), k), View::rows(w.as_ptr(), k).t(), how)
            };
        }
        let out = match self.then {
            Then::Nothing => out,
            Then::Gelu => {
                let mut activated = vec![0f32; out.len()];
                fused::par_rows2(&mut activated, &out, 1, kernels::gelu_into);
                *self.kept.lock().unwrap_or_else(|p| p.into_inner()) = out;
                activated
            }
            Then::Attention { heads } => {
                let (b, l, d) = attention_sizes(xl.dims(), n, heads)?;
                let mut attended = vec![0f32; rows * d];
                fused::attention(&out, &mut attended, b, l, d, heads, 0..l, fused::Products::Gemm);
                *self.kept.lock().unwrap_or_else(|p| p.into_inner()) = out;
                attended
            }
        };
        let mut dims = xl.dims().to_vec();
        *dims.last_mut().expect("checked above") = if let Then::Attention { .. } = self.then { n / 3 } else { n };
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (n, k) = w.dims2()?;
        let m = x.elem_count() / k.max(1);
        // A frozen input or weight (not a variable, nothing tracked behind it) needs no gradient.
        let (want_dx, want_dw) = (x.track_op(), w.track_op());
        let sizes = match self.then {
            Then::Attention { heads } => Some((attention_sizes(x.dims(), n, heads)?, heads)),
            _ => None,
        };
        let (dx, dw, db) = with_values([x, w, grad], |[xv, wv, dy]| {
            let kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
            let through_next;
            let dy = match self.then {
                Then::Nothing => dy,
                Then::Gelu => {
                    through_next = gelu_backward(dy, &kept);
                    &through_next[..]
                }
                Then::Attention { .. } => {
                    let ((b, l, d), heads) = sizes.expect("set for attention above");
                    through_next = attention_backward(&kept, dy, b, l, d, heads);
                    &through_next[..]
                }
            };
            let mut dx = vec![0f32; if want_dx { m * k } else { 0 }];
            let mut dw = vec![0f32; if want_dw { n * k } else { 0 }];
            // SAFETY: dy holds m·n values, W n·k, x m·k; dx and dw are sized for their products.
            unsafe {
                if want_dx && n > 0 {
                    product(
                        m,
                        k,
                        n,
                        dx.as_mut_ptr(),
                        k,
                        View::rows(dy.as_ptr(), n),
                        View::rows(wv.as_ptr(), k),
                        PARALLEL,
                    );
                }
                if want_dw && m > 0 {
                    product(
                        n,
                        k,
                        m,
                        dw.as_mut_ptr(),
                        k,
                        View::rows(dy.as_ptr(), n).t(),
                        View::rows(xv.as_ptr(), k),
                        PARALLEL,
                    );
                }
            }
            (dx, dw, column_sums(dy, n))
        })?;
        let dx = if want_dx { Some(cpu_tensor(dx, x.dims())?) } else { None };
        let dw = if want_dw { Some(cpu_tensor(dw, &[n, k])?) } else { None };
        Ok((dx, dw, Some(cpu_tensor(db, &[n])?)))
    }
}

/// (B, L, D) of attention on the packed projection (width `n` = 3D) of an input `dims` (B, L, K).
fn attention_sizes(dims: &[usize], n: usize, heads: usize) -> Result<(usize, usize, usize)> {
    let &[b, l, _] = dims else { bail!("attention: the input must be (B, L, D), got {dims:?}") };
    if n % 3 != 0 || heads == 0 || (n / 3) % heads != 0 {
        bail!("attention: {heads} heads do not split a packed projection of width {n} into q, k, v");
    }
    Ok((b, l, n / 3))
}

/// dy · gelu'(pre), in parallel over blocks of elements.
fn gelu_backward(dy: &[f32], pre: &[f32]) -> Vec<f32> {
    let mut dx = vec![0f32; dy.len()];
    let per_task = fused::rows_per_task(dy.len());
    dx.par_chunks_mut(per_task)
        .zip(dy.par_chunks(per_task))
        .zip(pre.par_chunks(per_task))
        .for_each(|((o, g), x)| kernels::gelu_backward(o, g, x));
    dx
}

/// Σ over the rows of `xs` (rows of `cols` values). Each task owns a band of columns and adds the rows in order,
/// so the bits do not depend on the threads.
fn column_sums(xs: &[f32], cols: usize) -> Vec<f32> {
    const BAND: usize = 64;
    let mut out = vec![0f32; cols];
    out.par_chunks_mut(BAND).enumerate().for_each(|(band, sums)| {
        let start = band * BAND;
        for row in xs.chunks_exact(cols) {
            for (s, v) in sums.iter_mut().zip(&row[start..]) {
                *s += v;
            }
        }
    });
    out
}
