//! The reference's `PerceptualLoss("convnext_s")` (modeling/modules/perceptual_loss.py): both images resized to
//! 224x224 (bilinear, antialiased), ImageNet-normalised, run through the frozen ConvNeXt, and the loss is the
//! mean squared difference of the 1000 logits (divided by the number of networks used, 1). The gradient reaches
//! the images only: the network's weights are constants.

use std::path::Path;

use candle_core::{Device, Tensor};

use super::resize::resize_bilinear_antialias;
use crate::error::Result;
use crate::model::convnext::{ConvNext, ConvNextConfig};
use crate::shape_mismatch;
use crate::weights::{load_strict, LoadOptions};

/// torchvision's ImageNet statistics, as the reference's float32 buffers.
const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];
/// The ConvNeXt input side.
pub const PERCEPTUAL_SIZE: usize = 224;

#[derive(Debug, Clone)]
pub struct PerceptualLoss {
    convnext: ConvNext,
}

/// The loss and what it compared.
#[derive(Debug, Clone)]
pub struct PerceptualOutput {
    /// mean((logits_input - logits_target)^2), a scalar (0-d) tensor on the autograd graph of the images.
    pub loss: Tensor,
    pub logits_input: Tensor,
    pub logits_target: Tensor,
}

impl PerceptualLoss {
    pub fn new(convnext: ConvNext) -> Self {
        Self { convnext }
    }

    /// Loads the ConvNeXt strictly from torchvision-keyed weights (`features.*`, `classifier.*`).
    pub fn load(cfg: &ConvNextConfig, path: impl AsRef<Path>, device: &Device) -> Result<Self> {
        let (convnext, _) = load_strict(path, device, &LoadOptions::default(), |vb| ConvNext::new(cfg, vb))?;
        Ok(Self::new(convnext))
    }

    /// The ConvNeXt input for an NCHW batch in [0, 1]: resize to 224, then (x - mean) / std per channel.
    pub fn preprocess(&self, x: &Tensor) -> Result<Tensor> {
        if x.rank() != 4 || x.dim(1)? != 3 {
            return Err(shape_mismatch!("perceptual loss expects (B, 3, H, W) images, got {:?}", x.dims()));
        }
        let resized = resize_bilinear_antialias(x, PERCEPTUAL_SIZE, PERCEPTUAL_SIZE)?;
        let mean = Tensor::new(&IMAGENET_MEAN, x.device())?.to_dtype(x.dtype())?.reshape((1, 3, 1, 1))?;
        let std = Tensor::new(&IMAGENET_STD, x.device())?.to_dtype(x.dtype())?.reshape((1, 3, 1, 1))?;
        Ok(resized.broadcast_sub(&mean)?.broadcast_div(&std)?)
    }

    pub fn logits(&self, x: &Tensor) -> Result<Tensor> {
        self.convnext.forward(&self.preprocess(x)?)
    }

    /// `PerceptualLoss(input, target)`; the reference calls it with (images, reconstructions).
    pub fn forward(&self, input: &Tensor, target: &Tensor) -> Result<PerceptualOutput> {
        if input.dims() != target.dims() {
            return Err(shape_mismatch!("perceptual loss of {:?} against {:?}", input.dims(), target.dims()));
        }
        let logits_input = self.logits(input)?;
        let logits_target = self.logits(target)?;
        let loss = (&logits_input - &logits_target)?.sqr()?.mean_all()?;
        Ok(PerceptualOutput { loss, logits_input, logits_target })
    }
}
