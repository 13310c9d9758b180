//! Typed-array tensors at the boundary: data + shape, validated before any work starts.

use candle_core::{Device, Tensor};
use marvel_core::tensor::{tensor_from_slice, HostTensor};
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

/// A JS float32 buffer as a CPU tensor, after checking it fills `shape` (one copy: candle tensors own their
/// storage).
pub fn f32_tensor(what: &str, data: &Float32Array, shape: &[u32]) -> marvel_core::Result<Tensor> {
    tensor_from_slice(what, data, &dims(shape), &Device::Cpu)
}
