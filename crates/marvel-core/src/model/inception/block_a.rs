//! pytorch-fid's `FIDInceptionA` (Mixed_5b/5c/5d): 1x1, 5x5 and double 3x3 branches plus an average-pool branch
//! whose pool leaves the padding out of the mean.

use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;

use super::basic_conv::{BasicConv2d, ConvShape};
use super::pool::avg_pool3_same;
use crate::error::Result;

#[derive(Debug, Clone)]
pub struct InceptionA {
    branch1x1: BasicConv2d,
    branch5x5: [BasicConv2d; 2],
    branch3x3dbl: [BasicConv2d; 3],
    branch_pool: BasicConv2d,
}

impl InceptionA {
    /// Outputs 64 + 64 + 96 + `pool_features` channels.
    pub fn new(in_channels: usize, pool_features: usize, vb: VarBuilder) -> Result<Self> {
        let c = |i, o, s, name: &str| BasicConv2d::new(i, o, s, vb.pp(name));
        Ok(InceptionA {
            branch1x1: c(in_channels, 64, ConvShape::pointwise(), "branch1x1")?,
            branch5x5: [c(in_channels, 48, ConvShape::pointwise(), "branch5x5_1")?, c(48, 64, ConvShape::square(5, 1, 2), "branch5x5_2")?],
            branch3x3dbl: [
                c(in_channels, 64, ConvShape::pointwise(), "branch3x3dbl_1")?,
                c(64, 96, ConvShape::square(3, 1, 1), "branch3x3dbl_2")?,
                c(96, 96, ConvShape::square(3, 1, 1), "branch3x3dbl_3")?,
            ],
            branch_pool: c(in_channels, pool_features, ConvShape::pointwise(), "branch_pool")?,
        })
    }
}

/// Applies convolutions one after the other.
pub(super) fn chain(convs: &[BasicConv2d], x: &Tensor) -> candle_core::Result<Tensor> {
    convs.iter().try_fold(x.clone(), |x, conv| conv.forward(&x))
}

impl Module for InceptionA {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let branches = [
            self.branch1x1.forward(x)?,
            chain(&self.branch5x5, x)?,
            chain(&self.branch3x3dbl, x)?,
            self.branch_pool.forward(&avg_pool3_same(x)?)?,
        ];
        Tensor::cat(&branches, 1)
    }
}
