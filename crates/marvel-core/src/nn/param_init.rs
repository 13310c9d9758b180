//! How each parameter starts: declared by the layer that asks for it (`vb.get_with_hints`), recorded by the
//! model builder's backend, and drawn from a seeded generator by `crate::init`, so a fresh model and a
//! checkpointed one are built by the same code and nothing guesses from parameter names.
//!
//! The reference's choices (bytedance/1d-tokenizer): `TiTok._init_weights` gives every `nn.Linear`/`nn.Conv2d`
//! of the encoder and decoder `trunc_normal_(std=0.02)` and a zero bias, and every `nn.LayerNorm` weight 1 and
//! bias 0; the learned embeddings and tokens are `width ** -0.5 * torch.randn`. `TiTok.apply(_init_weights)` runs
//! before the quantizer and the pixel stage are built, so those keep their own: the codebooks
//! `uniform_(-1/K, 1/K)`, the MaskGIT convolutions and group norms torch's defaults. `nn.MultiheadAttention`'s
//! packed `in_proj_weight` is not a module `_init_weights` matches, so it keeps torch's xavier-uniform.

use candle_core::{Result, Shape, Tensor};
use candle_nn::{Init, Linear, VarBuilder};

/// A parameter's initial distribution.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ParamInit {
    Zeros,
    Ones,
    /// N(0, std²). Also torch's `trunc_normal_(std=0.02)`: its default cut-off a=-2, b=2 is in absolute units,
    /// 100 standard deviations out, so no draw is ever truncated.
    Normal {
        std: f64,
    },
    /// U(-bound, bound).
    Uniform {
        bound: f64,
    },
}

/// The reference's linear and conv weights (`_init_weights`).
pub const TRUNC_NORMAL_002: ParamInit = ParamInit::Normal { std: 0.02 };

impl ParamInit {
    /// `width ** -0.5 * randn`: the reference's class/positional embeddings, latent and mask tokens.
    pub fn scaled_normal(width: usize) -> Self {
        ParamInit::Normal { std: (width as f64).powf(-0.5) }
    }

    /// torch's default for `nn.Conv2d`/`nn.Linear` weights, `kaiming_uniform_(a=sqrt(5))`, and their biases:
    /// both U(-1/sqrt(fan_in), 1/sqrt(fan_in)), with fan_in = in_channels · kernel area.
    pub fn torch_default(fan_in: usize) -> Self {
        ParamInit::Uniform { bound: 1.0 / (fan_in.max(1) as f64).sqrt() }
    }

    /// torch's `xavier_uniform_` for a (fan_out, fan_in) matrix.
    pub fn xavier_uniform(fan_in: usize, fan_out: usize) -> Self {
        ParamInit::Uniform { bound: (6.0 / (fan_in + fan_out).max(1) as f64).sqrt() }
    }

    /// The hint handed to candle's `VarBuilder`. candle's `get` passes `Const(0.)` when a layer declares
    /// nothing, so a declared zero travels as N(0, 0) (which candle's `VarMap` also fills with zeros) and
    /// `Const(0.)` keeps meaning "undeclared" ([`ParamInit::from_hint`]).
    pub fn hint(self) -> Init {
        match self {
            ParamInit::Zeros => Init::Randn { mean: 0.0, stdev: 0.0 },
            ParamInit::Ones => Init::Const(1.0),
            ParamInit::Normal { std } => Init::Randn { mean: 0.0, stdev: std },
            ParamInit::Uniform { bound } => Init::Uniform { lo: -bound, up: bound },
        }
    }

    /// The declaration behind a hint made by [`ParamInit::hint`]; `None` for anything else (candle's default
    /// `Const(0.)` from a plain `get`, or one of candle's own layer inits).
    pub fn from_hint(hint: Init) -> Option<Self> {
        match hint {
            Init::Randn { mean, stdev } if mean == 0.0 && stdev == 0.0 => Some(ParamInit::Zeros),
            Init::Const(c) if c == 1.0 => Some(ParamInit::Ones),
            Init::Randn { mean, stdev } if mean == 0.0 && stdev > 0.0 => Some(ParamInit::Normal { std: stdev }),
            Init::Uniform { lo, up } if up > 0.0 && lo == -up => Some(ParamInit::Uniform { bound: up }),
            _ => None,
        }
    }
}

/// A parameter of `shape` under `name`, declared with `init`.
pub fn param(vb: &VarBuilder, shape: impl Into<Shape>, name: &str, init: ParamInit) -> Result<Tensor> {
    vb.get_with_hints(shape, name, init.hint())
}

/// A `(out, in)` linear layer as the reference's `nn.Linear` under `_init_weights`.
pub fn linear(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Linear> {
    let weight = param(&vb, (out_dim, in_dim), "weight", TRUNC_NORMAL_002)?;
    let bias = param(&vb, out_dim, "bias", ParamInit::Zeros)?;
    Ok(Linear::new(weight, Some(bias)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_declaration_survives_the_hint_and_candle_defaults_do_not() {
        let inits = [
            ParamInit::Zeros,
            ParamInit::Ones,
            TRUNC_NORMAL_002,
            ParamInit::scaled_normal(64),
            ParamInit::torch_default(9 * 128),
            ParamInit::xavier_uniform(32, 96),
        ];
        for init in inits {
            assert_eq!(ParamInit::from_hint(init.hint()), Some(init));
        }
        assert_eq!(ParamInit::from_hint(Init::Const(0.0)), None);
        assert_eq!(ParamInit::from_hint(candle_nn::init::DEFAULT_KAIMING_NORMAL), None);
    }
}
