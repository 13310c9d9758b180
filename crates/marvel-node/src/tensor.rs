//! Typed arrays at the boundary: float tensors (data + shape) and depth-major token ids, converted to and from the
//! core's host types. Shapes are checked by the core before any work starts.

use marvel_core::tensor::HostTensor;
use marvel_core::tokens::TokenBatch;
use marvel_core::MarvelError;
use napi::bindgen_prelude::*;
use napi_derive::napi;

/// A float32 tensor returned to JavaScript. `data` takes over the Rust buffer without a copy.
#[napi(object)]
pub struct Float32Tensor {
    pub data: Float32Array,
    pub shape: Vec<u32>,
}

impl From<HostTensor<f32>> for Float32Tensor {
    fn from(t: HostTensor<f32>) -> Self {
        Float32Tensor { shape: t.shape.iter().map(|&d| d as u32).collect(), data: Float32Array::new(t.data) }
    }
}

pub fn dims(shape: &[u32]) -> Vec<usize> {
    shape.iter().map(|&d| d as usize).collect()
}

/// Token ids, depth-major: `shape` is `[depth, batch, numTokens]`.
#[napi(object)]
pub struct TokenIds {
    pub data: Uint32Array,
    pub shape: Vec<u32>,
}

impl From<TokenBatch> for TokenIds {
    fn from(t: TokenBatch) -> Self {
        TokenIds { shape: vec![t.depth as u32, t.batch as u32, t.num_tokens as u32], data: Uint32Array::new(t.ids) }
    }
}

/// Depth-major ids from JavaScript, checked against their `[depth, batch, numTokens]` shape.
pub fn token_batch(data: &Uint32Array, shape: &[u32]) -> marvel_core::Result<TokenBatch> {
    let &[depth, batch, num_tokens] = shape else {
        return Err(MarvelError::ShapeMismatch(format!(
            "token shape must be [depth, batch, numTokens], got {shape:?}"
        )));
    };
    TokenBatch::new(data.to_vec(), depth as usize, batch as usize, num_tokens as usize)
}
