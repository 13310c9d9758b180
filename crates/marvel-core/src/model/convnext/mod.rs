//! torchvision's ConvNeXt (Liu et al. 2022, `torchvision/models/convnext.py`), the network of the stage-2
//! perceptual loss (the reference uses `convnext_small` with its ImageNet weights and compares logits). The
//! weight names are torchvision's state-dict keys, so its released checkpoint loads as it is:
//! `features.0` stem (4x4 stride-4 conv + LayerNorm2d), `features.{2s+1}.{j}` the CNBlocks of stage s,
//! `features.{2s+2}` the downsampling between stages (LayerNorm2d + 2x2 stride-2 conv), `classifier` (LayerNorm2d,
//! flatten, Linear). Inference only (eval mode: no stochastic depth); the forward pass is built from
//! differentiable ops so that a loss on the logits backpropagates into the input image.

mod block;
mod depthwise;
mod norm;

pub use block::CnBlock;
pub use depthwise::DepthwiseConv;
pub use norm::ChannelNorm;

use candle_core::{Module, Tensor};
use candle_nn::{Linear, VarBuilder};
use serde::Deserialize;

use crate::error::Result;
use crate::{invalid, shape_mismatch};

/// One stage: torchvision's `CNBlockConfig(input_channels, out_channels, num_layers)`; `out_channels` is `None`
/// for the last stage (no downsampling after it). Deserializes from `[input_channels, out_channels, num_layers]`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
pub struct StageConfig(pub usize, pub Option<usize>, pub usize);

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ConvNextConfig {
    pub block_setting: Vec<StageConfig>,
    #[serde(default = "default_num_classes")]
    pub num_classes: usize,
    #[serde(default = "default_norm_eps")]
    pub norm_eps: f64,
    /// Training-time regularisation only; eval mode, the only mode used here, ignores it.
    #[serde(default)]
    pub stochastic_depth_prob: f64,
}

fn default_num_classes() -> usize {
    1000
}

fn default_norm_eps() -> f64 {
    1e-6
}

impl ConvNextConfig {
    /// torchvision `convnext_small`, the reference's perceptual network.
    pub fn small() -> Self {
        Self {
            block_setting: vec![
                StageConfig(96, Some(192), 3),
                StageConfig(192, Some(384), 3),
                StageConfig(384, Some(768), 27),
                StageConfig(768, None, 3),
            ],
            num_classes: 1000,
            norm_eps: 1e-6,
            stochastic_depth_prob: 0.4,
        }
    }

    fn validate(&self) -> Result<()> {
        let stages = &self.block_setting;
        if stages.is_empty() || self.num_classes == 0 {
            return Err(invalid!("ConvNeXt needs at least one stage and one class"));
        }
        for (s, pair) in stages.windows(2).enumerate() {
            if pair[0].1 != Some(pair[1].0) {
                return Err(invalid!(
                    "ConvNeXt stage {s} outputs {:?} channels but stage {} takes {}",
                    pair[0].1,
                    s + 1,
                    pair[1].0
                ));
            }
        }
        if let Some(last) = stages.last().and_then(|s| s.1) {
            return Err(invalid!("the last ConvNeXt stage must have out_channels null, got {last}"));
        }
        if stages.iter().any(|s| s.0 == 0 || s.2 == 0) {
            return Err(invalid!("every ConvNeXt stage needs channels and at least one block: {stages:?}"));
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
struct Downsample {
    norm: ChannelNorm,
    weight: Tensor,
    bias: Tensor,
}

#[derive(Debug, Clone)]
pub struct ConvNext {
    stem_weight: Tensor,
    stem_bias: Tensor,
    stem_norm: ChannelNorm,
    /// Per stage: its blocks, then the downsampling layer unless it is the last stage.
    stages: Vec<(Vec<CnBlock>, Option<Downsample>)>,
    head_norm: ChannelNorm,
    head: Linear,
    in_channels: usize,
}

impl ConvNext {
    pub fn new(cfg: &ConvNextConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let eps = cfg.norm_eps;
        let f = vb.pp("features");
        let c0 = cfg.block_setting[0].0;
        let stem_weight = f.pp("0.0").get((c0, 3, 4, 4), "weight")?;
        let stem_bias = f.pp("0.0").get(c0, "bias")?;
        let stem_norm = ChannelNorm::new(c0, eps, f.pp("0.1"))?;
        let mut stages = Vec::with_capacity(cfg.block_setting.len());
        for (s, &StageConfig(c, out, layers)) in cfg.block_setting.iter().enumerate() {
            let blocks = (0..layers)
                .map(|j| CnBlock::new(c, eps, f.pp(2 * s + 1).pp(j)))
                .collect::<Result<Vec<_>>>()?;
            let down = match out {
                Some(c_out) => {
                    let d = f.pp(2 * s + 2);
                    Some(Downsample {
                        norm: ChannelNorm::new(c, eps, d.pp("0"))?,
                        weight: d.pp("1").get((c_out, c, 2, 2), "weight")?,
                        bias: d.pp("1").get(c_out, "bias")?,
                    })
                }
                None => None,
            };
            stages.push((blocks, down));
        }
        let last = cfg.block_setting.last().map(|s| s.0).unwrap_or(c0);
        let head_norm = ChannelNorm::new(last, eps, vb.pp("classifier.0"))?;
        let head = candle_nn::linear(last, cfg.num_classes, vb.pp("classifier.2"))?;
        Ok(Self { stem_weight, stem_bias, stem_norm, stages, head_norm, head, in_channels: 3 })
    }

    /// Logits (B, num_classes) of an NCHW image batch (normalised as the weights expect: ImageNet mean/std for
    /// torchvision's). Height and width must be multiples of 4 * 2^(stages - 1) (224 for the perceptual loss).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (_, c, h, w) = x.dims4()?;
        let multiple = 4 << (self.stages.len() - 1);
        if c != self.in_channels || h % multiple != 0 || w % multiple != 0 || h == 0 || w == 0 {
            return Err(shape_mismatch!(
                "ConvNeXt expects (B, 3, H, W) with H and W multiples of {multiple}, got {:?}",
                x.dims()
            ));
        }
        // nn::conv2d: a gemm backward when training (candle's CPU conv backward is a naive transposed conv).
        let x = crate::nn::conv2d(x, &self.stem_weight, Some(&self.stem_bias), 4, 0)?;
        let mut x = self.stem_norm.forward_nchw(&x)?;
        for (blocks, down) in &self.stages {
            for block in blocks {
                x = block.forward(&x)?;
            }
            if let Some(d) = down {
                x = crate::nn::conv2d(&d.norm.forward_nchw(&x)?, &d.weight, Some(&d.bias), 2, 0)?;
            }
        }
        let pooled = x.flatten_from(2)?.mean_keepdim(2)?.unsqueeze(3)?;
        let pooled = self.head_norm.forward_nchw(&pooled)?.flatten_from(1)?;
        Ok(self.head.forward(&pooled)?)
    }
}

#[cfg(test)]
mod tests;
