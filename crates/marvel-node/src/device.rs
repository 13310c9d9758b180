//! The `device` argument of the loaders, and what this addon was built with.

use marvel_core::device::{DeviceSpec, CUDA_BUILT};
use napi_derive::napi;

/// `None` (the option left out) is the CPU.
pub fn parse(device: Option<&str>) -> marvel_core::Result<DeviceSpec> {
    device.map_or(Ok(DeviceSpec::Cpu), DeviceSpec::parse)
}

/// Whether this addon was compiled with CUDA (`npm run build:cuda`); says nothing of a driver or a GPU.
#[napi]
pub fn cuda_built() -> bool {
    CUDA_BUILT
}
