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

/// The bit patterns of a tensor's values as f32, for comparisons that must be exact.
pub fn f32_bits(t: &Tensor) -> Vec<u32> {
    let values = t.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    values.iter().map(|v| v.to_bits()).collect()
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

/// splitmix64 (Steele, Lea & Flood 2014): a tiny seeded generator whose stream is easy to reproduce bit for bit in
/// another language, so Rust tests and the dev-only Python scripts that write reference values draw the same data.
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1): the top 53 bits, exactly representable in f64.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in [lo, hi), computed in f64.
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }
}

/// FNV-1a (64-bit) of a name: the per-tensor seed of generated test weights, so the values of a tensor depend on
/// its key alone, not on the order the model asks for its tensors.
pub fn fnv1a64(name: &str) -> u64 {
    name.bytes().fold(0xCBF2_9CE4_8422_2325, |h, b| (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01B3))
}
