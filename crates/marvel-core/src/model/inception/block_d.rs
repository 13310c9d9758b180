//! torchvision's `InceptionD` (Mixed_7a, unchanged by pytorch-fid): the 17→8 grid reduction.

use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;

use super::basic_conv::{BasicConv2d, ConvShape};
use super::block_a::chain;
use super::pool::max_pool3;
use crate::error::Result;

#[derive(Debug, Clone)]
pub struct InceptionD {
    branch3x3: [BasicConv2d; 2],
    branch7x7x3: [BasicConv2d; 4],
}

impl InceptionD {
    /// Outputs 320 + 192 + `in_channels` channels.
    pub fn new(in_channels: usize, vb: VarBuilder) -> Result<Self> {
        let c = |i, o, s, name: &str| BasicConv2d::new(i, o, s, vb.pp(name));
        Ok(InceptionD {
            branch3x3: [c(in_channels, 192, ConvShape::pointwise(), "branch3x3_1")?, c(192, 320, ConvShape::square(3, 2, 0), "branch3x3_2")?],
            branch7x7x3: [
                c(in_channels, 192, ConvShape::pointwise(), "branch7x7x3_1")?,
                c(192, 192, ConvShape::line(7, true), "branch7x7x3_2")?,
                c(192, 192, ConvShape::line(7, false), "branch7x7x3_3")?,
                c(192, 192, ConvShape::square(3, 2, 0), "branch7x7x3_4")?,
            ],
        })
    }
}

impl Module for InceptionD {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        Tensor::cat(&[chain(&self.branch3x3, x)?, chain(&self.branch7x7x3, x)?, max_pool3(x, 2, 0)?], 1)
    }
}
