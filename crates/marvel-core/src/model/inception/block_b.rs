//! torchvision's `InceptionB` (Mixed_6a, unchanged by pytorch-fid): the 35→17 grid reduction with a strided 3x3
//! branch, a double 3x3 branch and a max pool.

use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;

use super::basic_conv::{BasicConv2d, ConvShape};
use super::block_a::chain;
use super::pool::max_pool3;
use crate::error::Result;

#[derive(Debug, Clone)]
pub struct InceptionB {
    branch3x3: BasicConv2d,
    branch3x3dbl: [BasicConv2d; 3],
}

impl InceptionB {
    /// Outputs 384 + 96 + `in_channels` channels.
    pub fn new(in_channels: usize, vb: VarBuilder) -> Result<Self> {
        let c = |i, o, s, name: &str| BasicConv2d::new(i, o, s, vb.pp(name));
        Ok(InceptionB {
            branch3x3: c(in_channels, 384, ConvShape::square(3, 2, 0), "branch3x3")?,
            branch3x3dbl: [
                c(in_channels, 64, ConvShape::pointwise(), "branch3x3dbl_1")?,
                c(64, 96, ConvShape::square(3, 1, 1), "branch3x3dbl_2")?,
                c(96, 96, ConvShape::square(3, 2, 0), "branch3x3dbl_3")?,
            ],
        })
    }
}

impl Module for InceptionB {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        Tensor::cat(&[self.branch3x3.forward(x)?, chain(&self.branch3x3dbl, x)?, max_pool3(x, 2, 0)?], 1)
    }
}
