//! The stage-2 GAN discriminator: the reference's `NLayerDiscriminator` (bytedance/1d-tokenizer
//! `modeling/modules/discriminator.py`, after MaskGIT's). block_in: Conv2dSame(3, H, 5) -> LeakyReLU(0.1); then
//! `num_stages` blocks Conv2dSame(3x3) -> blur (or 2x2 average) downsampling -> GroupNorm -> LeakyReLU, channels
//! H, H, 2H, 4H, ...; AdaptiveMaxPool2d(16); to_logits: Conv2dSame(1x1) -> LeakyReLU -> Conv2dSame(C, 1, 5). A
//! 256x256 image gives a (B, 1, 16, 16) map of logits. Key names are the reference's, without the loss module's
//! `discriminator.` prefix.

mod layers;

pub use layers::{blur_kernel, leaky_relu, same_pad, BlurDownsample, GroupNorm, Params, SameConv};

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarBuilder;
use serde::Deserialize;

use crate::error::Result;
use crate::quantize::lfq::SplitMix64;
use crate::weights::{build_shape_only, load_strict, LoadOptions};
use crate::{invalid, shape_mismatch};

/// Side of the logit map: the reference's `AdaptiveMaxPool2d((16, 16))`.
const LOGIT_GRID: usize = 16;

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct DiscriminatorConfig {
    #[serde(default = "d_num_channels")]
    pub num_channels: usize,
    #[serde(default = "d_hidden_channels")]
    pub hidden_channels: usize,
    #[serde(default = "d_num_stages")]
    pub num_stages: usize,
    #[serde(default = "d_blur_resample")]
    pub blur_resample: bool,
    #[serde(default = "d_blur_kernel_size")]
    pub blur_kernel_size: usize,
    #[serde(default = "d_norm_num_groups")]
    pub norm_num_groups: usize,
}

fn d_num_channels() -> usize {
    3
}
fn d_hidden_channels() -> usize {
    128
}
fn d_num_stages() -> usize {
    3
}
fn d_blur_resample() -> bool {
    true
}
fn d_blur_kernel_size() -> usize {
    4
}
fn d_norm_num_groups() -> usize {
    32
}

impl Default for DiscriminatorConfig {
    /// The reference's (hard-coded) sizes.
    fn default() -> Self {
        Self {
            num_channels: d_num_channels(),
            hidden_channels: d_hidden_channels(),
            num_stages: d_num_stages(),
            blur_resample: d_blur_resample(),
            blur_kernel_size: d_blur_kernel_size(),
            norm_num_groups: d_norm_num_groups(),
        }
    }
}

impl DiscriminatorConfig {
    /// Channels after block i-1 (index 0: block_in): H * (1, 1, 2, 4, 8, ...).
    fn channels(&self, i: usize) -> usize {
        self.hidden_channels * if i == 0 { 1 } else { 1 << (i - 1) }
    }
}

#[derive(Debug, Clone)]
enum Downsample {
    Blur(BlurDownsample),
    Average,
}

#[derive(Debug, Clone)]
struct Block {
    conv: SameConv,
    down: Downsample,
    norm: GroupNorm,
}

#[derive(Debug, Clone)]
pub struct NLayerDiscriminator {
    block_in: SameConv,
    blocks: Vec<Block>,
    logits_hidden: SameConv,
    logits_out: SameConv,
    num_channels: usize,
}

impl NLayerDiscriminator {
    /// Frozen weights (plain tensors).
    pub fn new(cfg: &DiscriminatorConfig, vb: VarBuilder) -> Result<Self> {
        Self::build(cfg, vb, &mut Params::frozen())
    }

    /// Trainable: every parameter becomes a [`Var`] initialised from `vb`; returned with its reference name in
    /// `named_parameters()` order (the blur kernels are buffers and stay constant).
    pub fn new_trainable(cfg: &DiscriminatorConfig, vb: VarBuilder) -> Result<(Self, Vec<(String, Var)>)> {
        let mut params = Params::trainable();
        let model = Self::build(cfg, vb, &mut params)?;
        Ok((model, params.into_vars()))
    }

    /// [`Self::new_trainable`] with fresh weights drawn from `seed` as the layers declare them (torch's default
    /// for the convolutions, ones and zeros for the norms), the fixed blur kernels as the reference builds them.
    pub fn fresh_trainable(cfg: &DiscriminatorConfig, seed: u64) -> Result<(Self, Vec<(String, Var)>)> {
        let device = Device::Cpu;
        let (_, requested) = build_shape_only(DType::F32, &device, |vb| Self::new(cfg, vb))?;
        let mut rng = SplitMix64::new(seed);
        let mut tensors = HashMap::new();
        for r in &requested {
            let t = match r.init {
                None if r.name.ends_with(".kernel") => blur_kernel(cfg.blur_kernel_size, &device)?,
                _ => crate::init::init_one(r, &mut rng)?,
            };
            tensors.insert(r.name.clone(), t);
        }
        Self::new_trainable(cfg, VarBuilder::from_tensors(tensors, DType::F32, &device))
    }

    /// The buffers of a checkpoint (not parameters: nothing trains them), by reference name: the fixed blur
    /// kernels. With the parameters they make the state dict that [`Self::load_trainable`] reads.
    pub fn buffers(cfg: &DiscriminatorConfig) -> Result<Vec<(String, Tensor)>> {
        if !cfg.blur_resample {
            return Ok(Vec::new());
        }
        (0..cfg.num_stages)
            .map(|i| Ok((format!("blocks.{i}.1.kernel"), blur_kernel(cfg.blur_kernel_size, &Device::Cpu)?)))
            .collect()
    }

    /// [`Self::new_trainable`] from a checkpoint, loaded strictly (every tensor present, shaped and used).
    pub fn load_trainable(
        cfg: &DiscriminatorConfig,
        path: impl AsRef<Path>,
        device: &Device,
    ) -> Result<(Self, Vec<(String, Var)>)> {
        Ok(load_strict(path, device, &LoadOptions::default(), |vb| Self::new_trainable(cfg, vb))?.0)
    }

    /// The same network with its parameters outside autograd: the generator step's view (the reference sets
    /// `requires_grad` false on the discriminator there), so a backward pass through it reaches only the input.
    /// It shares the parameters' storage and sees their later updates.
    pub fn frozen(&self) -> Self {
        let blocks = self
            .blocks
            .iter()
            .map(|b| Block { conv: b.conv.detached(), down: b.down.clone(), norm: b.norm.detached() })
            .collect();
        Self {
            block_in: self.block_in.detached(),
            blocks,
            logits_hidden: self.logits_hidden.detached(),
            logits_out: self.logits_out.detached(),
            num_channels: self.num_channels,
        }
    }

    fn build(cfg: &DiscriminatorConfig, vb: VarBuilder, params: &mut Params) -> Result<Self> {
        if cfg.num_channels == 0 || cfg.hidden_channels == 0 || cfg.num_stages == 0 {
            return Err(invalid!("discriminator: num_channels, hidden_channels and num_stages must be positive"));
        }
        if cfg.blur_resample && cfg.blur_kernel_size < 2 {
            return Err(invalid!("discriminator: blur_kernel_size must be at least 2, got {}", cfg.blur_kernel_size));
        }
        let h = cfg.hidden_channels;
        let block_in = SameConv::new(cfg.num_channels, h, 5, vb.pp("block_in.0"), params)?;
        let mut blocks = Vec::with_capacity(cfg.num_stages);
        for i in 0..cfg.num_stages {
            let (c_in, c_out) = (cfg.channels(i), cfg.channels(i + 1));
            let b = vb.pp("blocks").pp(i);
            let conv = SameConv::new(c_in, c_out, 3, b.pp("0"), params)?;
            let down = if cfg.blur_resample {
                Downsample::Blur(BlurDownsample::new(cfg.blur_kernel_size, b.pp("1"))?)
            } else {
                Downsample::Average
            };
            let norm = GroupNorm::new(c_out, cfg.norm_num_groups, b.pp("2"), params)?;
            blocks.push(Block { conv, down, norm });
        }
        let c = cfg.channels(cfg.num_stages);
        let logits_hidden = SameConv::new(c, c, 1, vb.pp("to_logits.0"), params)?;
        let logits_out = SameConv::new(c, 1, 5, vb.pp("to_logits.2"), params)?;
        Ok(Self { block_in, blocks, logits_hidden, logits_out, num_channels: cfg.num_channels })
    }

    /// Logit map (B, 1, 16, 16) of an NCHW batch in [0, 1] (the reference feeds images unnormalised). After the
    /// downsampling, the sides must be multiples of 16 (256x256 images give 32x32 and a 2x2 max pool).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (_, c, _, _) = x.dims4()?;
        if c != self.num_channels {
            return Err(shape_mismatch!("discriminator expects {} channels, got {:?}", self.num_channels, x.dims()));
        }
        let mut h = leaky_relu(&self.block_in.forward(x)?)?;
        for block in &self.blocks {
            h = block.conv.forward(&h)?;
            h = match &block.down {
                Downsample::Blur(blur) => blur.forward(&h)?,
                Downsample::Average => h.avg_pool2d(2)?,
            };
            h = block.norm.forward_leaky_relu(&h)?;
        }
        let (_, _, hh, ww) = h.dims4()?;
        if hh % LOGIT_GRID != 0 || ww % LOGIT_GRID != 0 || hh == 0 || ww == 0 {
            // AdaptiveMaxPool2d with unequal windows is not implemented; training crops are 256x256.
            return Err(shape_mismatch!(
                "discriminator features of {hh}x{ww} do not pool evenly to {LOGIT_GRID}x{LOGIT_GRID} (input {:?})",
                x.dims()
            ));
        }
        let h = max_pool(&h, hh / LOGIT_GRID, ww / LOGIT_GRID)?;
        let h = leaky_relu(&self.logits_hidden.forward(&h)?)?;
        self.logits_out.forward(&h)
    }
}

/// Non-overlapping (kh, kw) max pooling as two reductions over a window view. Not candle's `max_pool2d`: its
/// backward (candle-core 0.11) multiplies the gradient by the fraction of maxima in the window, 1/4 for a
/// single maximum in 2x2, instead of passing it whole to the maximum as torch does.
fn max_pool(x: &Tensor, kh: usize, kw: usize) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let (ho, wo) = (h / kh, w / kw);
    let windows = x.reshape((b, c, ho, kh, wo, kw))?;
    Ok(windows.max_keepdim(5)?.max_keepdim(3)?.reshape((b, c, ho, wo))?)
}

#[cfg(test)]
mod tests;
