//! The InceptionV3 of pytorch-fid (`InceptionV3([3])`, Heusel et al.'s FID network ported from TensorFlow): the
//! network behind rFID, so figures compare with the reference evaluator's. torchvision's Inception3 with
//! pytorch-fid's changes — `FIDInceptionA` / `FIDInceptionC` / `FIDInceptionE_1` average pools that leave the
//! padding out, `FIDInceptionE_2`'s max pool — read from the `pt_inception-2015-12-05` state dict under its own
//! keys (`Conv2d_1a_3x3.conv.weight`, `Mixed_6b.branch7x7dbl_3.bn.running_var`, ...), which the user supplies:
//! marvel ships no Inception weights.
//!
//! Forward (inference only): the 8-bit images are resized to 299x299 and scaled to [-1, 1] ([`resize`]), then
//! the stem, the eleven mixed blocks and a global average pool give the 2048 "pool3" features FID is computed on.
//! The state dict's 1008-way classifier (`fc`) is accepted so that the file loads strictly, and not used.

mod basic_conv;
mod block_a;
mod block_b;
mod block_c;
mod block_d;
mod block_e;
mod pool;
mod resize;

pub use basic_conv::{BasicConv2d, ConvShape};
pub use block_a::InceptionA;
pub use block_b::InceptionB;
pub use block_c::InceptionC;
pub use block_d::InceptionD;
pub use block_e::{InceptionE, PoolKind};
pub use resize::prepare_input;

use std::path::Path;

use candle_core::{Device, Module, Tensor};
use candle_nn::VarBuilder;

use crate::error::Result;
use crate::shape_mismatch;
use crate::weights::{load_strict, LoadOptions};

/// The side pytorch-fid resizes every image to.
pub const INPUT_SIDE: usize = 299;
/// Length of the pool3 feature vector.
pub const FEATURES: usize = 2048;
/// Classes of the FID network's classifier (TensorFlow's 1008-way Inception graph).
const CLASSES: usize = 1008;
/// Images per forward pass in [`FidInception::features`]: the stem's im2col buffers at 299x299 are about 30 MB
/// per image, so eight keep a pass under a quarter of a gigabyte.
pub const FEATURE_BATCH: usize = 8;

#[derive(Debug, Clone)]
pub struct FidInception {
    stem: [BasicConv2d; 3],
    conv3b: BasicConv2d,
    conv4a: BasicConv2d,
    mixed_5: [InceptionA; 3],
    mixed_6a: InceptionB,
    mixed_6: [InceptionC; 4],
    mixed_7a: InceptionD,
    mixed_7: [InceptionE; 2],
    device: Device,
}

impl FidInception {
    pub fn new(vb: VarBuilder) -> Result<Self> {
        let c = |i, o, s, name: &str| BasicConv2d::new(i, o, s, vb.pp(name));
        let stem = [
            c(3, 32, ConvShape::square(3, 2, 0), "Conv2d_1a_3x3")?,
            c(32, 32, ConvShape::square(3, 1, 0), "Conv2d_2a_3x3")?,
            c(32, 64, ConvShape::square(3, 1, 1), "Conv2d_2b_3x3")?,
        ];
        let conv3b = c(64, 80, ConvShape::pointwise(), "Conv2d_3b_1x1")?;
        let conv4a = c(80, 192, ConvShape::square(3, 1, 0), "Conv2d_4a_3x3")?;
        let mixed_5 = [
            InceptionA::new(192, 32, vb.pp("Mixed_5b"))?,
            InceptionA::new(256, 64, vb.pp("Mixed_5c"))?,
            InceptionA::new(288, 64, vb.pp("Mixed_5d"))?,
        ];
        let mixed_6a = InceptionB::new(288, vb.pp("Mixed_6a"))?;
        let mixed_6 = [
            InceptionC::new(768, 128, vb.pp("Mixed_6b"))?,
            InceptionC::new(768, 160, vb.pp("Mixed_6c"))?,
            InceptionC::new(768, 160, vb.pp("Mixed_6d"))?,
            InceptionC::new(768, 192, vb.pp("Mixed_6e"))?,
        ];
        let mixed_7a = InceptionD::new(768, vb.pp("Mixed_7a"))?;
        let mixed_7 = [InceptionE::new(1280, PoolKind::Average, vb.pp("Mixed_7b"))?, InceptionE::new(2048, PoolKind::Max, vb.pp("Mixed_7c"))?];
        if vb.contains_tensor("fc.weight") || vb.contains_tensor("fc.bias") {
            // Read to check its shape and to count it as used; pool3 comes before it.
            vb.pp("fc").get((CLASSES, FEATURES), "weight")?;
            vb.pp("fc").get(CLASSES, "bias")?;
        }
        Ok(FidInception { stem, conv3b, conv4a, mixed_5, mixed_6a, mixed_6, mixed_7a, mixed_7, device: vb.device().clone() })
    }

    /// Loads pytorch-fid's weights (`pt_inception-2015-12-05-6726825d.pth`, or the same state dict as
    /// safetensors) strictly: every key present with its shape, nothing left over.
    pub fn load(path: impl AsRef<Path>, device: &Device) -> Result<Self> {
        Ok(load_strict(path, device, &LoadOptions::default(), Self::new)?.0)
    }

    /// [`Self::load`] onto the CPU (for callers that hold no candle device, such as the bindings).
    pub fn load_on_cpu(path: impl AsRef<Path>) -> Result<Self> {
        Self::load(path, &Device::Cpu)
    }

    /// Pool3 features (B, 2048) of a prepared batch (B, 3, H, W) in [-1, 1] ([`prepare_input`]; H = W = 299 for
    /// pytorch-fid's numbers, at least 75 for the grid reductions to fit).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (_, c, h, w) = x.dims4()?;
        if c != 3 || h < 75 || w < 75 {
            return Err(shape_mismatch!("FID Inception expects (B, 3, H, W) with H, W >= 75, got {:?}", x.dims()));
        }
        let mut x = x.clone();
        for conv in &self.stem {
            x = conv.forward(&x)?;
        }
        x = pool::max_pool3(&x, 2, 0)?;
        x = self.conv4a.forward(&self.conv3b.forward(&x)?)?;
        x = pool::max_pool3(&x, 2, 0)?;
        for block in &self.mixed_5 {
            x = block.forward(&x)?;
        }
        x = self.mixed_6a.forward(&x)?;
        for block in &self.mixed_6 {
            x = block.forward(&x)?;
        }
        x = self.mixed_7a.forward(&x)?;
        for block in &self.mixed_7 {
            x = block.forward(&x)?;
        }
        Ok(x.mean((2, 3))?)
    }

    /// Pool3 features of interleaved RGB bytes (B, H, W, 3), as pytorch-fid computes them for image files:
    /// `count x 2048` values, image after image, [`FEATURE_BATCH`] images per pass.
    pub fn features(&self, data: &[u8], (b, h, w): (usize, usize, usize)) -> Result<Vec<f32>> {
        crate::tensor::check_shape("images", data.len(), &[b, h, w, 3])?;
        if h == 0 || w == 0 {
            return Err(crate::invalid!("FID Inception: images must be at least 1x1, got {w}x{h}"));
        }
        let frame = h * w * 3;
        let mut out = Vec::with_capacity(b * FEATURES);
        for chunk in data.chunks(FEATURE_BATCH * frame) {
            let n = chunk.len() / frame;
            let x = prepare_input(chunk, (n, h, w), INPUT_SIDE, &self.device)?;
            out.extend(self.forward(&x)?.flatten_all()?.to_vec1::<f32>()?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
