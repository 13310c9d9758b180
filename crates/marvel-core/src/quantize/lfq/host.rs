//! The quantizer on host buffers, the form the bindings hold: channels-last latents (B, N, bits) in, and out the
//! tokens in the public depth-major layout, the codes, or the loss values as plain numbers.

use candle_core::{DType, Device, Tensor};

use super::ResidualLfq;
use crate::error::Result;
use crate::shape_mismatch;
use crate::tensor::{tensor_from_slice, HostTensor};
use crate::tokens::TokenBatch;

/// The training losses of [`super::LfqLosses`] as numbers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LfqLossValues {
    pub commitment: f64,
    pub entropy: f64,
    pub per_sample_entropy: f64,
    pub avg_entropy: f64,
    pub total: f64,
}

/// `z` (B, N, bits) as a tensor, after checking the buffer fills the shape and the shape has rank 3.
fn latents(z: &[f32], shape: &[usize]) -> Result<Tensor> {
    if shape.len() != 3 {
        return Err(shape_mismatch!("z must be (batch, tokens, bits), got {shape:?}"));
    }
    tensor_from_slice("z", z, shape, &Device::Cpu)
}

fn value(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?)
}

impl ResidualLfq {
    /// Quantizes latents `z` (B, N, bits) over the first `depth` depths: the tokens (depth-major, as the public
    /// API holds them) and the codes Σ q_s (B, N, bits), the decoder's input.
    pub fn quantize_host(&self, z: &[f32], shape: &[usize], depth: usize) -> Result<(TokenBatch, HostTensor<f32>)> {
        let codes = self.quantize(&latents(z, shape)?, depth)?;
        let grid = codes.tokens.to_dtype(DType::U32)?.flatten_all()?.to_vec1::<u32>()?;
        let tokens = TokenBatch::from_depth_last(&grid, shape[0], shape[1], depth)?;
        Ok((tokens, HostTensor::from_tensor(&codes.cum)?))
    }

    /// The training losses of latents `z` (B, N, bits) over `depth` depths.
    pub fn loss_values(&self, z: &[f32], shape: &[usize], depth: usize) -> Result<LfqLossValues> {
        let l = self.losses(&latents(z, shape)?, depth)?;
        Ok(LfqLossValues {
            commitment: value(&l.commitment)?,
            entropy: value(&l.entropy)?,
            per_sample_entropy: value(&l.per_sample_entropy)?,
            avg_entropy: value(&l.avg_entropy)?,
            total: value(&l.total)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::LfqConfig;
    use super::*;

    /// z = 0: depth 0 sees r = 0, sign(0) = -1 gives token 0 (cum = -1); the residuals after it, +1 then +1/2, are
    /// positive, so every bit is set. Depth-major: all depth-0 ids first, then depth 1, then depth 2.
    #[test]
    fn tokens_come_back_depth_major() {
        let q = ResidualLfq::from_config(LfqConfig::mdq(4, 3)).unwrap();
        let (tokens, codes) = q.quantize_host(&[0.0; 2 * 3 * 4], &[2, 3, 4], 3).unwrap();
        assert_eq!((tokens.depth, tokens.batch, tokens.num_tokens), (3, 2, 3));
        assert_eq!(tokens.ids, [[0; 6], [15; 6], [15; 6]].concat());
        assert_eq!(codes.shape, vec![2, 3, 4]);
        // -1 + 1/2 + 1/4 on every channel.
        assert!(codes.data.iter().all(|&v| v == -0.25), "{:?}", codes.data);
        let (two, _) = q.quantize_host(&[0.0; 2 * 3 * 4], &[2, 3, 4], 2).unwrap();
        assert_eq!(two.ids, tokens.ids[..12], "fewer depths are a prefix");
    }

    #[test]
    fn shapes_are_checked_before_any_work() {
        let q = ResidualLfq::from_config(LfqConfig::mdq(4, 2)).unwrap();
        assert_eq!(q.quantize_host(&[0.0; 5], &[2, 3, 4], 1).unwrap_err().code(), "MARVEL_SHAPE_MISMATCH");
        let err = q.loss_values(&[0.0; 24], &[24], 1).unwrap_err();
        assert!(err.to_string().contains("(batch, tokens, bits), got [24]"), "{err}");
        let l = q.loss_values(&[0.5; 24], &[2, 3, 4], 2).unwrap();
        assert!(l.total.is_finite() && (l.total - (l.commitment + l.entropy)).abs() < 1e-6, "{l:?}");
    }
}
