//! The transformer MLP of open_clip / TiTok: `c_fc` -> GELU -> `c_proj`, hidden width 4·D.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};

#[derive(Debug, Clone)]
pub struct Mlp {
    c_fc: Linear,
    c_proj: Linear,
}

impl Mlp {
    pub fn new(width: usize, hidden: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            c_fc: super::linear(width, hidden, vb.pp("c_fc"))?,
            c_proj: super::linear(hidden, width, vb.pp("c_proj"))?,
        })
    }

    /// The same layer with other weights for c_fc and c_proj (their biases kept).
    pub(super) fn with_weights(&self, c_fc: Tensor, c_proj: Tensor) -> Self {
        let (fc_bias, proj_bias) = (self.c_fc.bias().cloned(), self.c_proj.bias().cloned());
        Self { c_fc: Linear::new(c_fc, fc_bias), c_proj: Linear::new(c_proj, proj_bias) }
    }

    /// (c_fc weight, bias), (c_proj weight, bias).
    pub(super) fn parts(&self) -> ((&Tensor, &Tensor), (&Tensor, &Tensor)) {
        (super::attention::linear_parts(&self.c_fc), super::attention::linear_parts(&self.c_proj))
    }
}

impl Module for Mlp {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        // torch.nn.GELU() defaults to the exact erf form, not the tanh approximation.
        let (w, b) = super::attention::linear_parts(&self.c_fc);
        if super::trains_on_cpu(&[xs, w, b]) {
            return super::linear_forward(&self.c_proj, &super::ops::linear_gelu(xs, w, b)?);
        }
        super::linear_forward(&self.c_proj, &super::linear_forward(&self.c_fc, xs)?.gelu_erf()?)
    }
}
