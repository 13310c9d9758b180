//! `torch.nn.LayerNorm` over the last dimension (affine, eps 1e-5 by default).

use candle_core::{DType, Result, Tensor, D};
use candle_nn::VarBuilder;

use super::fused::{layer_norm_rows, F32Data};
use super::param_init::{param, ParamInit};

/// PyTorch's default `nn.LayerNorm` epsilon, used by every TiTok layer norm.
pub const LAYER_NORM_EPS: f64 = 1e-5;

#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    pub fn new(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let weight = param(&vb, dim, "weight", ParamInit::Ones)?;
        Ok(Self { weight, bias: param(&vb, dim, "bias", ParamInit::Zeros)?, eps })
    }

    /// weight, bias, eps.
    pub(super) fn parts(&self) -> (&Tensor, &Tensor, f64) {
        (&self.weight, &self.bias, self.eps)
    }

    /// The fused kernels (ours on f32 CPU data, candle's elsewhere) record no backward pass, so they only serve
    /// untracked (inference) inputs; tracked ones take the training op (f32 CPU data) or the composed form.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        if super::kernels::tracked(&[xs, &self.weight, &self.bias]) {
            if super::ops::serve(&[xs, &self.weight, &self.bias]) {
                return super::ops::layer_norm(xs, &self.weight, &self.bias, self.eps);
            }
            return self.forward_composed(xs);
        }
        let xs = xs.contiguous()?;
        let views = (F32Data::of(&xs), F32Data::of(&self.weight), F32Data::of(&self.bias));
        if let (Some(x), Some(w), Some(b)) = views {
            if xs.dim(D::Minus1)? != w.get().len() || b.get().len() != w.get().len() {
                candle_core::bail!("layer_norm: input {:?} does not end in the weight's {}", xs.dims(), w.get().len());
            }
            // Two-pass variance like PyTorch; candle's kernel uses E[x²] - E[x]².
            let mut out = vec![0f32; x.get().len()];
            layer_norm_rows(&mut out, x.get(), w.get(), b.get(), self.eps as f32);
            return Tensor::from_vec(out, xs.shape(), xs.device());
        }
        candle_nn::ops::layer_norm(&xs, &self.weight, &self.bias, self.eps as f32)
    }

    /// The same normalisation from elementary, differentiable ops (two passes: mean, then centred variance,
    /// as PyTorch does; biased variance).
    pub fn forward_composed(&self, xs: &Tensor) -> Result<Tensor> {
        let dtype = xs.dtype();
        let x = match dtype {
            DType::F16 | DType::BF16 => xs.to_dtype(DType::F32)?,
            _ => xs.clone(),
        };
        let mean = x.mean_keepdim(D::Minus1)?;
        let centred = x.broadcast_sub(&mean)?;
        let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centred.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        normed.to_dtype(dtype)?.broadcast_mul(&self.weight)?.broadcast_add(&self.bias)
    }
}

impl candle_core::Module for LayerNorm {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        LayerNorm::forward(self, xs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn layer(dev: &Device) -> LayerNorm {
        let weight = Tensor::new(&[1.5f32, -0.5, 2.0, 1.0], dev).unwrap();
        let bias = Tensor::new(&[0.1f32, 0.2, -0.3, 0.0], dev).unwrap();
        LayerNorm { weight, bias, eps: LAYER_NORM_EPS }
    }

    #[test]
    fn fused_and_composed_agree_with_hand_computation() {
        let dev = Device::Cpu;
        let ln = layer(&dev);
        let x = Tensor::new(&[[1f32, 2., 3., 6.], [-1., 0., 0., 5.]], &dev).unwrap();
        let fused = ln.forward(&x).unwrap().to_vec2::<f32>().unwrap();
        let composed = ln.forward_composed(&x).unwrap().to_vec2::<f32>().unwrap();
        // Row 0: mean 3, biased variance 3.5.
        let s = (3.5f32 + 1e-5).sqrt();
        let row0 = [-2. / s * 1.5 + 0.1, -1. / s * -0.5 + 0.2, 0.0 * 2.0 - 0.3, 3. / s];
        for (i, want) in row0.iter().enumerate() {
            assert!((fused[0][i] - want).abs() < 1e-5, "{fused:?}");
        }
        for (a, b) in fused.iter().flatten().zip(composed.iter().flatten()) {
            assert!((a - b).abs() < 1e-5, "{fused:?} vs {composed:?}");
        }
    }

    #[test]
    fn tracked_inputs_get_a_gradient() {
        let dev = Device::Cpu;
        let ln = layer(&dev);
        let x = Var::new(&[[1f32, 2., 3., 6.]], &dev).unwrap();
        let y = ln.forward(x.as_tensor()).unwrap();
        // sum(LN(x) * w') has a non-zero gradient unless the layer were constant.
        let loss = (y * Tensor::new(&[[1f32, 0., 0., 0.]], &dev).unwrap()).unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        let g = grads.get(&x).expect("gradient recorded").to_vec2::<f32>().unwrap();
        assert!(g[0].iter().any(|v| v.abs() > 1e-3), "{g:?}");
        // Normalisation is shift-invariant, so the gradient sums to zero.
        assert!(g[0].iter().sum::<f32>().abs() < 1e-5, "{g:?}");
    }
}
