//! y = x·Wᵀ + b over every row of x at once (x of any rank, flattened to (M, K); W (N, K) as nn.Linear keeps it),
//! and the MLP's first layer with its GELU, gelu(x·Wᵀ + b), as one node. candle's `Linear` broadcasts W to each
//! image of a 3-D input and sums the gradient back; here the backward is dx = dy·W and dW = dyᵀ·x, one gemm each
//! reading the operands in place, and db the column sums of dy. Folding the GELU in saves a node, and with it
//! candle's zero-filled gradient buffer and the pass that adds into it for the MLP's widest activation.

use std::sync::Mutex;

use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{cpu_tensor, product, values, with_values, View};
use crate::nn::{fused, kernels};

/// x (..., K) · Wᵀ + b, differentiable in all three.
pub(crate) fn linear(xs: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    xs.contiguous()?.apply_op3(&weight.contiguous()?, &bias.contiguous()?, LinearOp { gelu: None })
}

/// gelu(x·Wᵀ + b) with torch's exact (erf) GELU, differentiable in all three.
pub(crate) fn linear_gelu(xs: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let op = LinearOp { gelu: Some(Mutex::new(Vec::new())) };
    xs.contiguous()?.apply_op3(&weight.contiguous()?, &bias.contiguous()?, op)
}

struct LinearOp {
    /// With a GELU: the pre-activations the forward computed, which its backward needs (the op keeps them in
    /// place of the tensor a separate GELU node would keep).
    gelu: Option<Mutex<Vec<f32>>>,
}

impl CustomOp3 for LinearOp {
    fn name(&self) -> &'static str {
        if self.gelu.is_some() {
            "marvel-linear-gelu"
        } else {
            "marvel-linear"
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
        let mut out = vec![0f32; x.len() / k.max(1) * n];
        if k > 0 {
            fused::linear_rows(&mut out, None, x, w, b);
        }
        if let Some(kept) = &self.gelu {
            let mut activated = vec![0f32; out.len()];
            fused::par_rows2(&mut activated, &out, 1, kernels::gelu_into);
            *kept.lock().unwrap_or_else(|p| p.into_inner()) = out;
            out = activated;
        }
        let mut dims = xl.dims().to_vec();
        *dims.last_mut().expect("checked above") = n;
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
        let (dx, dw, db) = with_values([x, w, grad], |[xv, wv, dy]| {
            let through_gelu;
            let dy = match &self.gelu {
                None => dy,
                Some(kept) => {
                    let pre = kept.lock().unwrap_or_else(|p| p.into_inner());
                    through_gelu = gelu_backward(dy, &pre);
                    &through_gelu[..]
                }
            };
            let mut dx = vec![0f32; if want_dx { m * k } else { 0 }];
            let mut dw = vec![0f32; if want_dw { n * k } else { 0 }];
            // SAFETY: dy holds m·n values, W n·k, x m·k; dx and dw are sized for their products.
            unsafe {
                if want_dx && n > 0 {
                    product(m, k, n, dx.as_mut_ptr(), k, View::rows(dy.as_ptr(), n), View::rows(wv.as_ptr(), k), 1.0, true);
                }
                if want_dw && m > 0 {
                    product(n, k, m, dw.as_mut_ptr(), k, View::rows(dy.as_ptr(), n).t(), View::rows(xv.as_ptr(), k), 1.0, true);
                }
            }
            (dx, dw, column_sums(dy, n))
        })?;
        let dx = if want_dx { Some(cpu_tensor(dx, x.dims())?) } else { None };
        let dw = if want_dw { Some(cpu_tensor(dw, &[n, k])?) } else { None };
        Ok((dx, dw, Some(cpu_tensor(db, &[n])?)))
    }
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
