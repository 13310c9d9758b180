//! The CNBlock's depthwise 7x7 convolution (stride 1, padding 3) for constant weights on the CPU.
//!
//! candle runs a grouped conv as one small conv per channel (768 at ConvNeXt-S's last stage) and differentiates
//! it through its naive transposed conv, plus a weight gradient nobody needs for the frozen perceptual network.
//! Here each (image, channel) plane is filtered directly, and the input gradient is the same filter with the
//! kernel flipped (for stride 1 and symmetric padding, the transposed conv is a correlation with the flipped
//! kernel), so the backward pass is this op again and stays differentiable.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::error::Result;

#[derive(Debug, Clone)]
pub struct DepthwiseConv {
    /// (C, k, k), row-major.
    weight: Arc<Vec<f32>>,
    channels: usize,
    kernel: usize,
}

impl DepthwiseConv {
    /// From a (C, 1, k, k) weight with k odd.
    pub fn new(weight: &Tensor) -> Result<Self> {
        let (channels, one, k, k2) = weight.dims4()?;
        if one != 1 || k != k2 || k % 2 == 0 {
            return Err(crate::shape_mismatch!("depthwise weight must be (C, 1, k, k), k odd, got {:?}", weight.dims()));
        }
        let w = weight.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        Ok(Self { weight: Arc::new(w), channels, kernel: k })
    }

    /// Whether `x` with these weights can take this path: f32 on the CPU, weights outside autograd.
    pub fn applies(x: &Tensor, weight: &Tensor) -> bool {
        x.device().is_cpu() && x.dtype() == DType::F32 && !crate::nn::kernels::tracked(&[weight])
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.contiguous()?.apply_op1(self.clone())?)
    }

    fn flipped(&self) -> Self {
        let kk = self.kernel * self.kernel;
        let w = self.weight.chunks(kk).flat_map(|c| c.iter().rev().copied()).collect();
        Self { weight: Arc::new(w), ..self.clone() }
    }
}

impl CustomOp1 for DepthwiseConv {
    fn name(&self) -> &'static str {
        "depthwise-conv"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = crate::nn::ops::values(storage, layout, "depthwise-conv")?;
        let dims = layout.dims();
        if dims.len() != 4 || dims[1] != self.channels {
            candle_core::bail!("depthwise-conv of {} channels got {dims:?}", self.channels)
        }
        let (h, w) = (dims[2], dims[3]);
        let (k, pad) = (self.kernel, self.kernel / 2);
        let mut out = vec![0f32; x.len()];
        if h * w > 0 {
            out.par_chunks_mut(h * w).zip(x.par_chunks(h * w)).enumerate().for_each(|(p, (dst, src))| {
                let taps = &self.weight[(p % self.channels) * k * k..][..k * k];
                for ky in 0..k {
                    // Output rows oy read input row oy + ky - pad.
                    let oy0 = pad.saturating_sub(ky);
                    let oy1 = (h + pad).saturating_sub(ky).min(h);
                    for kx in 0..k {
                        let tap = taps[ky * k + kx];
                        let ox0 = pad.saturating_sub(kx);
                        let ox1 = (w + pad).saturating_sub(kx).min(w);
                        if ox0 >= ox1 {
                            continue;
                        }
                        for oy in oy0..oy1 {
                            let iy = oy + ky - pad;
                            let ix0 = ox0 + kx - pad;
                            let d = &mut dst[oy * w + ox0..oy * w + ox1];
                            let s = &src[iy * w + ix0..iy * w + ix0 + (ox1 - ox0)];
                            for (o, i) in d.iter_mut().zip(s) {
                                *o += tap * i;
                            }
                        }
                    }
                }
            });
        }
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad_res.contiguous()?.apply_op1(self.flipped())?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    /// Forward and input gradient agree with candle's grouped conv (padding 3), on planes narrower than the
    /// kernel too.
    #[test]
    fn matches_candle_grouped_conv_forward_and_backward() {
        let dev = Device::Cpu;
        for (h, w) in [(9, 11), (3, 2), (7, 7)] {
            let weight = Tensor::randn(0f32, 1., (4, 1, 7, 7), &dev).unwrap();
            let x = Var::from_tensor(&Tensor::randn(0f32, 1., (2, 4, h, w), &dev).unwrap()).unwrap();
            let r = Tensor::randn(0f32, 1., (2, 4, h, w), &dev).unwrap();
            let op = DepthwiseConv::new(&weight).unwrap();
            let ours = op.forward(x.as_tensor()).unwrap();
            let want = x.as_tensor().conv2d(&weight, 3, 1, 1, 4).unwrap();
            assert!(max_diff(&ours, &want) < 1e-4, "{h}x{w} forward");
            let g_ours = (ours * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let g_want = (want * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let (a, b) = (g_ours.get(x.as_tensor()).unwrap(), g_want.get(x.as_tensor()).unwrap());
            assert!(max_diff(a, b) < 1e-4, "{h}x{w} backward");
        }
        let err = DepthwiseConv::new(&Tensor::zeros((4, 2, 7, 7), DType::F32, &dev).unwrap()).unwrap_err();
        assert_eq!(err.code(), "MARVEL_SHAPE_MISMATCH");
    }
}
