//! The VQGAN residual block: GN -> SiLU -> conv3x3 -> GN -> SiLU -> conv3x3, convs without bias.

use candle_core::Tensor;
use candle_nn::VarBuilder;

use super::conv::SameConv2d;
use super::norm::GroupNorm;
use super::pass::{Act, Pass};
use crate::error::Result;

#[derive(Debug, Clone)]
pub struct ResBlock {
    norm1: GroupNorm,
    conv1: SameConv2d,
    norm2: GroupNorm,
    conv2: SameConv2d,
    /// Present when the block changes the channel count. Unlike the usual VQGAN block, the reference applies
    /// it to the block's *output* (`residual = nin_shortcut(hidden_states)`), so the input is then dropped.
    nin_shortcut: Option<SameConv2d>,
}

impl ResBlock {
    pub fn new(c_in: usize, c_out: usize, groups: usize, vb: VarBuilder) -> Result<Self> {
        let nin_shortcut =
            if c_in != c_out { Some(SameConv2d::new(c_out, c_out, 1, false, vb.pp("nin_shortcut"))?) } else { None };
        Ok(Self {
            norm1: GroupNorm::new(c_in, groups, vb.pp("norm1"))?,
            conv1: SameConv2d::new(c_in, c_out, 3, false, vb.pp("conv1"))?,
            norm2: GroupNorm::new(c_out, groups, vb.pp("norm2"))?,
            conv2: SameConv2d::new(c_out, c_out, 3, false, vb.pp("conv2"))?,
            nin_shortcut,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.conv1.forward(&self.norm1.forward_silu(x)?)?;
        let h = self.conv2.forward(&self.norm2.forward_silu(&h)?)?;
        let residual = match &self.nin_shortcut {
            Some(nin) => nin.forward(&h)?,
            None => x.clone(),
        };
        Ok((h + residual)?)
    }

    /// (c_in, c_out).
    pub(super) fn channels(&self) -> (usize, usize) {
        (self.conv1.channels().0, self.conv1.channels().1)
    }

    /// Whether [`Self::forward_pass`] serves (every layer on plain CPU f32 weights).
    pub(super) fn plain(&self) -> bool {
        self.norm1.plain()
            && self.conv1.plain()
            && self.norm2.plain()
            && self.conv2.plain()
            && self.nin_shortcut.as_ref().is_none_or(SameConv2d::plain)
    }

    /// [`Self::forward`] on the buffers of an inference pass; `x`'s buffer goes back to the pass.
    pub(super) fn forward_pass(&self, x: Act, pass: &mut Pass) -> Result<Act> {
        let (batch, _, h, w) = x.dims;
        let c_out = self.conv1.channels().1;
        let out_dims = (batch, c_out, h, w);
        let mut n1 = pass.alloc(x.dims);
        self.norm1.silu_into(x.values(), h * w, n1.values_mut())?;
        let mut h1 = pass.alloc(out_dims);
        self.conv1.run_into(&n1, false, None, &mut h1)?;
        pass.recycle(n1);
        let mut n2 = pass.alloc(out_dims);
        self.norm2.silu_into(h1.values(), h * w, n2.values_mut())?;
        pass.recycle(h1);
        let mut h2 = pass.alloc(out_dims);
        let y = match &self.nin_shortcut {
            None => {
                self.conv2.run_into(&n2, false, Some(x.values()), &mut h2)?;
                h2
            }
            Some(nin) => {
                self.conv2.run_into(&n2, false, None, &mut h2)?;
                let mut y = pass.alloc(out_dims);
                nin.run_into(&h2, false, Some(h2.values()), &mut y)?;
                pass.recycle(h2);
                y
            }
        };
        pass.recycle(n2);
        pass.recycle(x);
        Ok(y)
    }
}
