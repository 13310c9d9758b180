//! Helpers shared by the parity tests: locating `../shared/parity` and comparing tensors.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};

/// Reason shown for parity tests compiled as ignored (see build.rs).
pub const NO_PARITY: &str = "parity fixtures not found at ../shared/parity or $MARVEL_PARITY_DIR";

pub fn parity_dir() -> PathBuf {
    std::env::var_os("MARVEL_PARITY_DIR").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/parity")
    })
}

/// One fixture case: its folder plus the `inputs` and `expected` tensors.
pub struct Fixture {
    pub dir: PathBuf,
    pub inputs: HashMap<String, Tensor>,
    pub expected: HashMap<String, Tensor>,
}

impl Fixture {
    pub fn load(case: &str) -> Fixture {
        let dir = parity_dir().join(case);
        let load = |f: &str| candle_core::safetensors::load(dir.join(f), &Device::Cpu).unwrap();
        Fixture { inputs: load("inputs.safetensors"), expected: load("expected.safetensors"), dir }
    }

    pub fn input(&self, name: &str) -> &Tensor {
        self.inputs.get(name).unwrap_or_else(|| panic!("fixture input {name} missing"))
    }

    pub fn expected(&self, name: &str) -> &Tensor {
        self.expected.get(name).unwrap_or_else(|| panic!("fixture expected {name} missing"))
    }

    /// The batch of images as the model input: NCHW float32, x = f32(v) / 255 (IEEE division).
    pub fn images_f32(&self) -> Tensor {
        let u8s = self.input("images_u8");
        let table = self.input("u8_to_f32");
        let idx = u8s.flatten_all().unwrap().to_dtype(DType::U32).unwrap();
        table.index_select(&idx, 0).unwrap().reshape(u8s.dims()).unwrap()
    }
}

/// Max |a - b| over the leading slice of `actual` that `expected` covers (fixtures may keep only the first
/// images of a batch). Panics if the trailing shapes differ.
pub fn max_abs_diff(actual: &Tensor, expected: &Tensor) -> f32 {
    let e = expected.to_dtype(DType::F32).unwrap();
    let mut a = actual.to_dtype(DType::F32).unwrap();
    if a.dims() != e.dims() {
        assert_eq!(&a.dims()[1..], &e.dims()[1..], "shapes differ beyond the batch dimension");
        a = a.narrow(0, 0, e.dims()[0]).unwrap();
    }
    (a - e).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}
