use std::collections::{BTreeMap, BTreeSet};

use candle_core::{DType, Device, Tensor};

use super::*;
use crate::testutil::{fnv1a64, SplitMix64};
use crate::weights::{build_shape_only, write_safetensors, TensorSpec};

/// `tests/fixtures/inception_reference.json`, written by `bench/python/inception_reference.py`: pytorch-fid's
/// state-dict layout and its features for two seeded images under seeded weights.
struct Reference {
    seed: u64,
    image_seed: u64,
    images: usize,
    side: usize,
    layout: BTreeMap<String, Vec<usize>>,
    features: Vec<f32>,
}

fn reference() -> Reference {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/inception_reference.json");
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let layout = v["layout"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, s)| (k.clone(), s.as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect()))
        .collect();
    let features = v["features"].as_array().unwrap().iter().flat_map(|row| row.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32)).collect();
    let n = |k: &str| v[k].as_u64().unwrap();
    Reference { seed: n("seed"), image_seed: n("image_seed"), images: n("images") as usize, side: n("side") as usize, layout, features }
}

/// The value range the script draws each kind of tensor from (`value_range` in inception_reference.py):
/// He-uniform convolutions and BatchNorm statistics near the identity keep activations at scale 1 through the
/// 94 layers, so the comparison tests every layer rather than a vanishing or exploding signal.
fn value_range(key: &str, shape: &[usize]) -> (f64, f64) {
    if key.ends_with("conv.weight") {
        let b = (6.0 / shape[1..].iter().product::<usize>() as f64).sqrt();
        (-b, b)
    } else if key.ends_with("bn.weight") {
        (0.8, 1.2)
    } else if key.ends_with("bn.bias") || key.ends_with("bn.running_mean") {
        (-0.2, 0.2)
    } else if key.ends_with("bn.running_var") {
        (0.5, 1.5)
    } else if key == "fc.weight" || key == "fc.bias" {
        let b = 1.0 / (FEATURES as f64).sqrt();
        (-b, b)
    } else {
        panic!("no rule for {key}")
    }
}

/// The script's weights: tensor `key` filled from splitmix64 seeded with `seed ^ fnv1a64(key)`, row-major.
fn generated(key: &str, shape: &[usize], seed: u64) -> Tensor {
    if key.ends_with("num_batches_tracked") {
        return Tensor::zeros(shape, DType::I64, &Device::Cpu).unwrap();
    }
    let (lo, hi) = value_range(key, shape);
    let mut rng = SplitMix64::new(seed ^ fnv1a64(key));
    let values: Vec<f32> = (0..shape.iter().product::<usize>()).map(|_| rng.uniform(lo, hi) as f32).collect();
    Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
}

/// Writes the generated state dict as safetensors (the test loads it back through the strict loader).
fn write_weights(r: &Reference, path: &std::path::Path) {
    let specs: Vec<TensorSpec> = r
        .layout
        .iter()
        .map(|(k, s)| TensorSpec { name: k.clone(), shape: s.clone(), dtype: if k.ends_with("num_batches_tracked") { DType::I64 } else { DType::F32 } })
        .collect();
    write_safetensors(path, &specs, |s| Ok(generated(&s.name, &s.shape, r.seed))).unwrap();
}

/// The model asks for exactly pytorch-fid's keys and shapes, apart from the two kinds it reads only when present
/// (`num_batches_tracked`, never used in eval mode, and the classifier `fc`, after pool3).
#[test]
fn asks_for_the_pytorch_fid_state_dict() {
    let r = reference();
    let (_, requested) = build_shape_only(DType::F32, &Device::Cpu, FidInception::new).unwrap();
    let asked: BTreeMap<String, Vec<usize>> = requested.into_iter().map(|q| (q.name, q.shape)).collect();
    let expected: BTreeMap<String, Vec<usize>> =
        r.layout.iter().filter(|(k, _)| !k.ends_with("num_batches_tracked") && !k.starts_with("fc.")).map(|(k, s)| (k.clone(), s.clone())).collect();
    let missing: BTreeSet<_> = expected.keys().filter(|k| !asked.contains_key(*k)).collect();
    let extra: BTreeSet<_> = asked.keys().filter(|k| !expected.contains_key(*k)).collect();
    assert!(missing.is_empty() && extra.is_empty(), "missing {missing:?}, extra {extra:?}");
    for (k, s) in &expected {
        assert_eq!(&asked[k], s, "{k}");
    }
    // 94 convolutions, each with its folded BatchNorm.
    assert_eq!(asked.keys().filter(|k| k.ends_with("conv.weight")).count(), 94);
}

/// The forward pass matches pytorch-fid's `InceptionV3([3])` to 1e-4 on the same seeded weights and images
/// (64x64 upsampled to 299, so the resize is part of what is compared).
#[test]
fn features_match_pytorch_fid() {
    let r = reference();
    let dir = std::env::temp_dir().join(format!("marvel-inception-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("inception.safetensors");
    write_weights(&r, &path);
    let net = FidInception::load(&path, &Device::Cpu);
    std::fs::remove_dir_all(&dir).ok();
    let net = net.unwrap();

    let mut rng = SplitMix64::new(r.image_seed);
    let pixels: Vec<u8> = (0..r.images * r.side * r.side * 3).map(|_| (rng.next_u64() >> 56) as u8).collect();
    let got = net.features(&pixels, (r.images, r.side, r.side)).unwrap();
    assert_eq!(got.len(), r.images * FEATURES);
    let worst = got.iter().zip(&r.features).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    let scale = r.features.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(scale > 1.0, "the reference features carry signal: max {scale}");
    eprintln!("inception features: max |rust - pytorch-fid| = {worst:e} (features up to {scale})");
    assert!(worst < 1e-4, "max |rust - pytorch-fid| = {worst}");
}

#[test]
fn a_wrong_file_is_refused_with_the_key() {
    let r = reference();
    let dir = std::env::temp_dir().join(format!("marvel-inception-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.safetensors");
    // One tensor of the wrong shape and one missing.
    let specs: Vec<TensorSpec> = r
        .layout
        .iter()
        .filter(|(k, _)| k.as_str() != "Mixed_7c.branch_pool.bn.running_var")
        .map(|(k, s)| {
            let shape = if k == "Conv2d_1a_3x3.conv.weight" { vec![32, 3, 5, 5] } else { s.clone() };
            TensorSpec { name: k.clone(), shape, dtype: if k.ends_with("num_batches_tracked") { DType::I64 } else { DType::F32 } }
        })
        .collect();
    write_safetensors(&path, &specs, |s| Ok(Tensor::zeros(s.shape.as_slice(), s.dtype, &Device::Cpu)?)).unwrap();
    let err = FidInception::load(&path, &Device::Cpu).unwrap_err();
    std::fs::remove_dir_all(&dir).ok();
    let msg = err.to_string();
    assert_eq!(err.code(), "MARVEL_CHECKPOINT");
    assert!(msg.contains("Conv2d_1a_3x3.conv.weight") && msg.contains("Mixed_7c.branch_pool.bn.running_var: missing"), "{msg}");
}

#[test]
fn small_or_empty_inputs_are_refused() {
    let (net, _) = build_shape_only(DType::F32, &Device::Cpu, FidInception::new).unwrap();
    let err = net.forward(&Tensor::zeros((1, 3, 64, 64), DType::F32, &Device::Cpu).unwrap()).unwrap_err();
    assert_eq!(err.code(), "MARVEL_SHAPE_MISMATCH");
    assert!(net.features(&[], (1, 0, 4)).is_err());
    assert!(net.features(&[0; 10], (1, 2, 2)).is_err());
}
