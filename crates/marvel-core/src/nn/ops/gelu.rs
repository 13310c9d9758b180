//! torch.nn.GELU() (the exact erf form) as one parallel pass each way; candle's `gelu_erf` goes through libm
//! one element at a time, and its backward is several more elementwise ops.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

use super::{cpu_tensor, values, with_values};
use crate::nn::{fused, kernels};

/// gelu(xs), differentiable.
pub(crate) fn gelu(xs: &Tensor) -> Result<Tensor> {
    xs.contiguous()?.apply_op1(GeluOp)
}

struct GeluOp;

impl CustomOp1 for GeluOp {
    fn name(&self) -> &'static str {
        "marvel-gelu"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = values(xs, xl, "gelu")?;
        let mut out = vec![0f32; x.len()];
        fused::par_rows2(&mut out, x, 1, kernels::gelu_into);
        Ok((CpuStorage::F32(out), xl.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let dx = with_values([x, grad], |[xv, dy]| {
            let mut dx = dy.to_vec();
            fused::par_rows2(&mut dx, xv, 1, kernels::gelu_backward);
            dx
        })?;
        Ok(Some(cpu_tensor(dx, x.dims())?))
    }
}
