//! Quantizers that turn TiTok's continuous latent tokens into discrete ids and back.

pub mod lfq;
pub mod vq;

pub use lfq::ResidualLfq;
pub use vq::{VectorQuantizer, VqOutput};

use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;

use crate::config::QuantizerConfig;
use crate::error::Result;
use crate::{invalid, shape_mismatch};

/// The quantizer a TiTok model was trained with, chosen by `quantize_mode`.
#[derive(Debug, Clone)]
pub enum Quantizer {
    /// One id per latent token, from a learned codebook.
    Vq(VectorQuantizer),
    /// MARVEL: one sign-pattern id per latent token and depth, decodable from any prefix of depths.
    Lfq(ResidualLfq),
}

impl Quantizer {
    /// `vb` points at the model's `quantize` prefix.
    pub fn new(cfg: &QuantizerConfig, vb: VarBuilder) -> Result<Self> {
        Ok(match cfg {
            QuantizerConfig::Vq(c) => Self::Vq(VectorQuantizer::new(c, vb)?),
            QuantizerConfig::Lfq(c) => Self::Lfq(ResidualLfq::new(c.clone(), vb)?),
        })
    }

    /// Codes per token (and per depth for LFQ): token ids lie in `0..codebook_size`.
    pub fn codebook_size(&self) -> u64 {
        match self {
            Self::Vq(vq) => vq.codebook_size() as u64,
            Self::Lfq(lfq) => 1u64 << lfq.config().token_bits,
        }
    }

    /// Depths per token: 1 for VQ.
    pub fn num_depths(&self) -> usize {
        match self {
            Self::Vq(_) => 1,
            Self::Lfq(lfq) => lfq.config().num_depths,
        }
    }

    /// z: (B, token_size, 1, N) -> (straight-through z_q of the same shape, u32 token ids): (B, N) for VQ,
    /// (B, N, depths) for LFQ.
    pub fn quantize(&self, z: &Tensor) -> Result<(Tensor, Tensor)> {
        match self {
            Self::Vq(vq) => {
                let out = vq.forward(z)?;
                Ok((out.z_q, out.tokens.squeeze(1)?))
            }
            Self::Lfq(lfq) => {
                let codes = lfq.quantize(z, lfq.config().num_depths)?;
                Ok((codes.z_q, codes.tokens))
            }
        }
    }

    /// Token ids -> the decoder input (B, token_size, 1, N). VQ: ids (B, N) or (B, 1, N). LFQ: ids (B, N, d'), of which the
    /// first `depth` are decoded (all d' when `None`). Any integer dtype; ids are range-checked.
    pub fn dequantize(&self, tokens: &Tensor, depth: Option<usize>) -> Result<Tensor> {
        match self {
            Self::Vq(vq) => {
                if let Some(d) = depth.filter(|&d| d != 1) {
                    return Err(invalid!("a VQ model has one depth, {d} requested"));
                }
                // The reference's own layout (B, 1, N) is accepted too.
                let tokens = match tokens.dims() {
                    &[_, 1, _] => tokens.squeeze(1)?,
                    _ => tokens.clone(),
                };
                let (b, n) =
                    tokens.dims2().map_err(|_| shape_mismatch!("VQ tokens must be (B, N), got {:?}", tokens.dims()))?;
                let ids = checked_ids(&tokens, vq.codebook_size() as u64)?;
                let rows = vq.lookup(&ids)?; // (B, N, C)
                Ok(rows.transpose(1, 2)?.reshape((b, vq.token_size(), 1, n))?)
            }
            Self::Lfq(lfq) => {
                let d = match depth {
                    Some(d) => d,
                    None => tokens.dims3().map(|(_, _, d)| d).unwrap_or(0),
                };
                let cum = lfq.codes_from_tokens(tokens, d)?;
                lfq::to_channels_first(&cum)
            }
        }
    }
}

/// Token ids as u32 after checking they are integers in `0..limit`; the message names the first bad one.
fn checked_ids(tokens: &Tensor, limit: u64) -> Result<Tensor> {
    if !tokens.dtype().is_int() {
        return Err(invalid!("token ids must be integers, got {:?}", tokens.dtype()));
    }
    let flat = tokens.flatten_all()?.to_dtype(DType::I64)?.to_vec1::<i64>()?;
    if let Some((i, &t)) = flat.iter().enumerate().find(|(_, &t)| t < 0 || t as u64 >= limit) {
        let n = tokens.dim(1)?;
        return Err(invalid!("token {t} at (batch {}, position {}) is outside 0..{limit}", i / n, i % n));
    }
    Ok(tokens.to_dtype(DType::U32)?)
}
