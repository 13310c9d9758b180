//! LayerNorm over the last dimension with a fused backward: the forward is the inference kernel (two-pass
//! statistics, as PyTorch); the backward recomputes each row's mean and variance instead of keeping them, and
//! gives dx, dweight and dbias in one pass over the rows.

use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{cpu_tensor, values, with_values, REDUCE_ROWS};
use crate::nn::{fused, kernels};

/// LayerNorm of `xs` over its last dimension with `weight` and `bias`, differentiable in all three.
pub(crate) fn layer_norm(xs: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    xs.contiguous()?.apply_op3(&weight.contiguous()?, &bias.contiguous()?, LayerNormOp { eps: eps as f32 })
}

struct LayerNormOp {
    eps: f32,
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "marvel-layer-norm"
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
        let d = wl.shape().elem_count();
        if xl.dims().last() != Some(&d) || wl.dims() != [d] || bl.dims() != [d] {
            bail!(
                "layer_norm: input {:?} does not end in the weight's {:?} / bias's {:?}",
                xl.dims(),
                wl.dims(),
                bl.dims()
            );
        }
        let (x, w, b) = (values(xs, xl, "layer_norm")?, values(ws, wl, "layer_norm")?, values(bs, bl, "layer_norm")?);
        let mut out = vec![0f32; x.len()];
        fused::layer_norm_rows(&mut out, x, w, b, self.eps);
        Ok((CpuStorage::F32(out), xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let d = w.elem_count();
        let (dx, dw, db) = with_values([x, w, grad], |[xv, wv, dy]| {
            let mut dx = vec![0f32; xv.len()];
            let chunk = REDUCE_ROWS * d;
            // Partial sums per fixed chunk of rows, collected in chunk order and added in that order.
            let partials: Vec<(Vec<f32>, Vec<f32>)> = dx
                .par_chunks_mut(chunk)
                .zip(xv.par_chunks(chunk))
                .zip(dy.par_chunks(chunk))
                .map(|((dx, x), dy)| {
                    let (mut dw, mut db) = (vec![0f32; d], vec![0f32; d]);
                    kernels::layer_norm_backward_rows(dx, &mut dw, &mut db, x, dy, wv, self.eps);
                    (dw, db)
                })
                .collect();
            let (mut dw, mut db) = (vec![0f32; d], vec![0f32; d]);
            for (pw, pb) in &partials {
                dw.iter_mut().zip(pw).for_each(|(s, v)| *s += v);
                db.iter_mut().zip(pb).for_each(|(s, v)| *s += v);
            }
            (dx, dw, db)
        })?;
        Ok((Some(cpu_tensor(dx, x.dims())?), Some(cpu_tensor(dw, &[d])?), Some(cpu_tensor(db, &[d])?)))
    }
}
