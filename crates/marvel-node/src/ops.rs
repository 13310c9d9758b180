//! Bindings for `marvel_core::ops`: standalone tensor operations (internal: tests and `bench/` use them).

use marvel_core::ops::matmul_host;
use napi::bindgen_prelude::*;
use napi_derive::napi;

use crate::task::Job;
use crate::tensor::{dims, Float32Tensor};

/// Matrix product `(..., m, k) x (..., k, n)` of two float32 tensors, computed off the main thread.
#[napi(ts_return_type = "Promise<Float32Tensor>")]
pub fn matmul(
    a: Float32Array,
    a_shape: Vec<u32>,
    b: Float32Array,
    b_shape: Vec<u32>,
) -> AsyncTask<Job<(Float32Array, Vec<u32>, Float32Array, Vec<u32>), Float32Tensor>> {
    AsyncTask::new(Job::new((a, a_shape, b, b_shape), |(a, sa, b, sb)| {
        Ok(Float32Tensor::from(matmul_host(a, &dims(sa), b, &dims(sb))?))
    }))
}

/// Test hook for the panic barrier: panics inside an async task. Exercised by the test suite to prove a
/// Rust panic becomes a rejected promise and the process survives; not part of the public TypeScript API.
#[napi(js_name = "_panicInTask", ts_return_type = "Promise<number>")]
pub fn panic_in_task(message: String) -> AsyncTask<Job<String, u32>> {
    AsyncTask::new(Job::new(message, |m| -> marvel_core::Result<u32> { panic!("{m}") }))
}
