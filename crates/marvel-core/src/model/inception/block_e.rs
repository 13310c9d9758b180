//! pytorch-fid's `FIDInceptionE_1` (Mixed_7b) and `FIDInceptionE_2` (Mixed_7c): 3x3 convolutions split into
//! parallel 1x3 and 3x1 halves. They differ in the pool branch only — E_1 averages without the padding, E_2 takes
//! the max, a quirk of the TensorFlow graph the FID weights were trained in that pytorch-fid reproduces.

use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;

use super::basic_conv::{BasicConv2d, ConvShape};
use super::pool::{avg_pool3_same, max_pool3};
use crate::error::Result;

/// The pool of the pool branch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PoolKind {
    /// `FIDInceptionE_1`: 3x3 average, padding excluded.
    Average,
    /// `FIDInceptionE_2`: 3x3 max, stride 1, padding 1.
    Max,
}

#[derive(Debug, Clone)]
pub struct InceptionE {
    branch1x1: BasicConv2d,
    branch3x3_1: BasicConv2d,
    branch3x3_2: [BasicConv2d; 2],
    branch3x3dbl_1: [BasicConv2d; 2],
    branch3x3dbl_3: [BasicConv2d; 2],
    branch_pool: BasicConv2d,
    pool: PoolKind,
}

impl InceptionE {
    /// Outputs 320 + 768 + 768 + 192 = 2048 channels.
    pub fn new(in_channels: usize, pool: PoolKind, vb: VarBuilder) -> Result<Self> {
        let c = |i, o, s, name: &str| BasicConv2d::new(i, o, s, vb.pp(name));
        let (row, col) = (ConvShape::line(3, true), ConvShape::line(3, false));
        Ok(InceptionE {
            branch1x1: c(in_channels, 320, ConvShape::pointwise(), "branch1x1")?,
            branch3x3_1: c(in_channels, 384, ConvShape::pointwise(), "branch3x3_1")?,
            branch3x3_2: [c(384, 384, row, "branch3x3_2a")?, c(384, 384, col, "branch3x3_2b")?],
            branch3x3dbl_1: [c(in_channels, 448, ConvShape::pointwise(), "branch3x3dbl_1")?, c(448, 384, ConvShape::square(3, 1, 1), "branch3x3dbl_2")?],
            branch3x3dbl_3: [c(384, 384, row, "branch3x3dbl_3a")?, c(384, 384, col, "branch3x3dbl_3b")?],
            branch_pool: c(in_channels, 192, ConvShape::pointwise(), "branch_pool")?,
            pool,
        })
    }
}

/// Both halves of a split 3x3 applied to `x`, concatenated.
fn split(halves: &[BasicConv2d; 2], x: &Tensor) -> candle_core::Result<Tensor> {
    Tensor::cat(&[halves[0].forward(x)?, halves[1].forward(x)?], 1)
}

impl Module for InceptionE {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let b3 = self.branch3x3_1.forward(x)?;
        let dbl = self.branch3x3dbl_1[1].forward(&self.branch3x3dbl_1[0].forward(x)?)?;
        let pooled = match self.pool {
            PoolKind::Average => avg_pool3_same(x)?,
            PoolKind::Max => max_pool3(x, 1, 1)?,
        };
        let branches = [self.branch1x1.forward(x)?, split(&self.branch3x3_2, &b3)?, split(&self.branch3x3dbl_3, &dbl)?, self.branch_pool.forward(&pooled)?];
        Tensor::cat(&branches, 1)
    }
}
