//! The VQGAN encoder: (B, 3, 256, 256) in [0, 1] -> (B, z_channels, 16, 16) latent, before quantization.

use candle_core::Tensor;
use candle_nn::VarBuilder;

use super::config::MaskgitConfig;
use super::conv::SameConv2d;
use super::norm::GroupNorm;
use super::res_block::ResBlock;
use crate::error::Result;

/// One resolution level (`down.{i}`): its residual blocks, then a 2x2 average pool unless it is the deepest.
#[derive(Debug, Clone)]
struct DownLevel {
    blocks: Vec<ResBlock>,
    downsample: bool,
}

#[derive(Debug, Clone)]
pub struct MaskgitEncoder {
    conv_in: SameConv2d,
    down: Vec<DownLevel>,
    mid: Vec<ResBlock>,
    norm_out: GroupNorm,
    conv_out: SameConv2d,
    num_channels: usize,
}

impl MaskgitEncoder {
    pub fn new(cfg: &MaskgitConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let groups = cfg.norm_num_groups;
        let levels = cfg.num_levels();
        // The reference's stem conv has no bias (unlike the decoder's).
        let conv_in = SameConv2d::new(cfg.num_channels, cfg.hidden_channels, 3, false, vb.pp("conv_in"))?;
        let mut down = Vec::with_capacity(levels);
        let mut c_in = cfg.hidden_channels;
        for i in 0..levels {
            let vb_level = vb.pp("down").pp(i);
            let c_out = cfg.level_channels(i);
            let mut blocks = Vec::with_capacity(cfg.num_res_blocks);
            for j in 0..cfg.num_res_blocks {
                blocks.push(ResBlock::new(c_in, c_out, groups, vb_level.pp("block").pp(j))?);
                c_in = c_out;
            }
            down.push(DownLevel { blocks, downsample: i + 1 != levels });
        }
        let c_mid = cfg.deepest_channels();
        let mid = (0..cfg.num_res_blocks)
            .map(|j| ResBlock::new(c_mid, c_mid, groups, vb.pp("mid").pp(j)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            conv_in,
            down,
            mid,
            norm_out: GroupNorm::new(c_mid, groups, vb.pp("norm_out"))?,
            conv_out: SameConv2d::new(c_mid, cfg.z_channels, 1, true, vb.pp("conv_out"))?,
            num_channels: cfg.num_channels,
        })
    }

    /// `x`: (B, num_channels, H, W) with H and W divisible by 2^(levels - 1).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims();
        if dims.len() != 4 || dims[1] != self.num_channels {
            return Err(crate::shape_mismatch!(
                "MaskGIT encoder expects images of shape (B, {}, H, W), got {dims:?}",
                self.num_channels
            ));
        }
        let mut h = self.conv_in.forward(x)?;
        for level in &self.down {
            for block in &level.blocks {
                h = block.forward(&h)?;
            }
            if level.downsample {
                h = h.avg_pool2d(2)?;
            }
        }
        for block in &self.mid {
            h = block.forward(&h)?;
        }
        self.conv_out.forward(&self.norm_out.forward_silu(&h)?)
    }
}
