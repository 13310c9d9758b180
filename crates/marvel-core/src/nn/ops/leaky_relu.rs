//! LeakyReLU as one node: `max(x, slope·x)` one pass forward, one pass backward.
//!
//! Composed as `x.maximum(&(x * slope))`, candle runs two passes forward and, backward, two comparisons, two
//! casts, two products, two divisions, the affine's scaling and two `zeros_like + add` accumulations into the
//! gradient store, each a fresh full-size tensor (the discriminator's first activation is 32·256² values an
//! image). The values here are bit for bit the composed form's, ties (x = 0) included (see [`backward_one`]).

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{cpu_tensor, values, with_values, zeros};

/// Elements per task: large enough that a task outweighs its scheduling.
const CHUNK: usize = 1 << 14;

/// `max(x, slope·x)` elementwise; `x` f32 on the CPU.
pub(crate) fn leaky_relu(x: &Tensor, slope: f64) -> Result<Tensor> {
    x.contiguous()?.apply_op1(LeakyRelu { slope: slope as f32 })
}

struct LeakyRelu {
    slope: f32,
}

/// candle's `x * slope` (an affine: `x·mul + add`, add 0) and `maximum` (`if a < b { b } else { a }`): the output
/// and the scaled operand.
#[inline(always)]
pub(super) fn forward_one(slope: f32, x: f32) -> (f32, f32) {
    let scaled = x * slope + 0.0;
    (if x < scaled { scaled } else { x }, scaled)
}

/// The composed form's gradient, its arithmetic step for step: `maximum` sends dy to the operand(s) equal to its
/// output, divided by 1 + the other's mask (halved on ties, x = 0); the scaled operand's share goes through the
/// affine's `·slope + 0`; the store adds both to x's zeroed gradient, the `maximum`'s first.
#[inline(always)]
pub(super) fn backward_one(slope: f32, x: f32, dy: f32) -> f32 {
    let (y, scaled) = forward_one(slope, x);
    let (mask_x, mask_scaled) = (f32::from(u8::from(y == x)), f32::from(u8::from(y == scaled)));
    let through_x = mask_x * dy / (mask_scaled + 1.0);
    let through_scaled = (mask_scaled * dy / (mask_x + 1.0)) * slope + 0.0;
    0.0 + through_x + through_scaled
}

impl CustomOp1 for LeakyRelu {
    fn name(&self) -> &'static str {
        "marvel-leaky-relu"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = values(storage, layout, "leaky_relu")?;
        let mut y = zeros(x.len());
        y.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).for_each(|(y, x)| {
            y.iter_mut().zip(x).for_each(|(y, &x)| *y = forward_one(self.slope, x).0);
        });
        Ok((CpuStorage::F32(y), layout.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let dx = with_values([x, grad], |[x, dy]| {
            let mut dx = zeros(x.len());
            dx.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK).zip(dy.par_chunks(CHUNK))).for_each(|(dx, (x, dy))| {
                dx.iter_mut().zip(x.iter().zip(dy)).for_each(|(d, (&x, &g))| *d = backward_one(self.slope, x, g));
            });
            dx
        })?;
        Ok(Some(cpu_tensor(dx, x.dims())?))
    }
}
