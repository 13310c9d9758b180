//! Where the math runs: `"cpu"`, `"cuda"` (GPU 0) or `"cuda:N"`. The name is parsed and checked here, once, so
//! every caller (tokenizer, trainer, bindings) reports a missing GPU the same way: a `MARVEL_CUDA_UNAVAILABLE`
//! error that says whether the binary lacks CUDA or the machine lacks a driver or device.

use candle_core::Device;

use crate::error::{MarvelError, Result};
use crate::invalid;

/// A parsed device name; [`DeviceSpec::open`] turns it into a candle device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    #[default]
    Cpu,
    Cuda(usize),
}

impl DeviceSpec {
    /// `"cpu"`, `"cuda"` or `"cuda:N"` (N a decimal ordinal); anything else is an argument error naming it.
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            _ => match name.strip_prefix("cuda:") {
                // Digits only: `usize::from_str` would also take "+1".
                Some(n) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => n
                    .parse()
                    .map(DeviceSpec::Cuda)
                    .map_err(|_| invalid!("device {name:?}: GPU ordinal {n} is out of range")),
                _ => Err(invalid!("device must be \"cpu\", \"cuda\" or \"cuda:N\", got {name:?}")),
            },
        }
    }

    pub fn is_cuda(self) -> bool {
        matches!(self, DeviceSpec::Cuda(_))
    }

    /// The candle device. CUDA is refused with `MARVEL_CUDA_UNAVAILABLE` when this binary was built without the
    /// `cuda` feature, or when the driver, the device or the ordinal is missing.
    pub fn open(self) -> Result<Device> {
        match self {
            DeviceSpec::Cpu => Ok(Device::Cpu),
            DeviceSpec::Cuda(ordinal) => open_cuda(ordinal),
        }
    }
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// Whether this binary was compiled with the `cuda` feature (not whether a GPU is present).
pub const CUDA_BUILT: bool = cfg!(feature = "cuda");

#[cfg(not(feature = "cuda"))]
fn open_cuda(ordinal: usize) -> Result<Device> {
    Err(MarvelError::CudaUnavailable(format!(
        "device \"cuda:{ordinal}\" requested, but this marvel binary was built without CUDA (the `cuda` cargo \
         feature; `npm run build:cuda` builds one)"
    )))
}

#[cfg(feature = "cuda")]
fn open_cuda(ordinal: usize) -> Result<Device> {
    // candle's error here is cudarc's driver error (no libcuda.so.1, no device, bad ordinal): kept in the message
    // so the user sees which of those it was.
    Device::new_cuda(ordinal).map_err(|e| {
        MarvelError::CudaUnavailable(format!(
            "device \"cuda:{ordinal}\" requested, but CUDA could not start it (is an NVIDIA driver for CUDA 13.0 \
             installed and is GPU {ordinal} visible?): {e}"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_forms_and_names_bad_ones() {
        assert_eq!(DeviceSpec::parse("cpu").unwrap(), DeviceSpec::Cpu);
        assert_eq!(DeviceSpec::parse("cuda").unwrap(), DeviceSpec::Cuda(0));
        assert_eq!(DeviceSpec::parse("cuda:3").unwrap(), DeviceSpec::Cuda(3));
        for bad in
            ["", "CPU", "gpu", "cuda:", "cuda:-1", "cuda:+1", "cuda:1.0", "cuda: 1", "cuda:99999999999999999999999"]
        {
            let e = DeviceSpec::parse(bad).unwrap_err();
            assert_eq!(e.code(), "MARVEL_INVALID_ARGUMENT", "{bad:?}");
            assert!(e.to_string().contains(&format!("{bad:?}")) || bad.starts_with("cuda:9"), "{e}");
        }
        assert_eq!(DeviceSpec::Cuda(2).to_string(), "cuda:2");
        assert_eq!(DeviceSpec::parse(&DeviceSpec::Cuda(7).to_string()).unwrap(), DeviceSpec::Cuda(7));
    }

    #[test]
    fn cpu_opens() {
        assert!(DeviceSpec::Cpu.open().unwrap().is_cpu());
        assert!(!DeviceSpec::Cpu.is_cuda() && DeviceSpec::Cuda(0).is_cuda());
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_is_a_coded_error_naming_the_build() {
        let e = DeviceSpec::Cuda(1).open().unwrap_err();
        assert_eq!(e.code(), "MARVEL_CUDA_UNAVAILABLE");
        assert!(e.to_string().contains("built without CUDA") && e.to_string().contains("cuda:1"), "{e}");
    }
}
