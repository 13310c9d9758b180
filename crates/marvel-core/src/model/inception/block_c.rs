//! pytorch-fid's `FIDInceptionC` (Mixed_6b..6e): 7x7 convolutions factorised into 1x7 and 7x1, and the average
//! pool that leaves the padding out of the mean.

use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;

use super::basic_conv::{BasicConv2d, ConvShape};
use super::block_a::chain;
use super::pool::avg_pool3_same;
use crate::error::Result;

#[derive(Debug, Clone)]
pub struct InceptionC {
    branch1x1: BasicConv2d,
    branch7x7: [BasicConv2d; 3],
    branch7x7dbl: [BasicConv2d; 5],
    branch_pool: BasicConv2d,
}

impl InceptionC {
    /// Outputs 4 x 192 channels; `channels_7x7` is the width inside the factorised branches.
    pub fn new(in_channels: usize, channels_7x7: usize, vb: VarBuilder) -> Result<Self> {
        let c = |i, o, s, name: &str| BasicConv2d::new(i, o, s, vb.pp(name));
        let c7 = channels_7x7;
        let (row, col) = (ConvShape::line(7, true), ConvShape::line(7, false));
        Ok(InceptionC {
            branch1x1: c(in_channels, 192, ConvShape::pointwise(), "branch1x1")?,
            branch7x7: [
                c(in_channels, c7, ConvShape::pointwise(), "branch7x7_1")?,
                c(c7, c7, row, "branch7x7_2")?,
                c(c7, 192, col, "branch7x7_3")?,
            ],
            branch7x7dbl: [
                c(in_channels, c7, ConvShape::pointwise(), "branch7x7dbl_1")?,
                c(c7, c7, col, "branch7x7dbl_2")?,
                c(c7, c7, row, "branch7x7dbl_3")?,
                c(c7, c7, col, "branch7x7dbl_4")?,
                c(c7, 192, row, "branch7x7dbl_5")?,
            ],
            branch_pool: c(in_channels, 192, ConvShape::pointwise(), "branch_pool")?,
        })
    }
}

impl Module for InceptionC {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let branches = [
            self.branch1x1.forward(x)?,
            chain(&self.branch7x7, x)?,
            chain(&self.branch7x7dbl, x)?,
            self.branch_pool.forward(&avg_pool3_same(x)?)?,
        ];
        Tensor::cat(&branches, 1)
    }
}
