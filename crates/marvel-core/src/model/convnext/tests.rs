use candle_core::{DType, Device, Tensor, Var};

use super::*;
use crate::testutil::parity_dir;
use crate::weights::{build_shape_only, load_strict, LoadOptions};

fn fixture_config() -> ConvNextConfig {
    ConvNextConfig {
        block_setting: vec![
            StageConfig(8, Some(16), 1),
            StageConfig(16, Some(32), 1),
            StageConfig(32, Some(64), 2),
            StageConfig(64, None, 1),
        ],
        num_classes: 1000,
        norm_eps: 1e-6,
        stochastic_depth_prob: 0.0,
    }
}

/// convnext_small asks for torchvision's keys and has torchvision's parameter count (50,223,688), so the
/// released ImageNet weights load strictly.
#[test]
fn convnext_small_has_the_torchvision_layout() {
    let (_, requested) =
        build_shape_only(DType::F32, &Device::Cpu, |vb| ConvNext::new(&ConvNextConfig::small(), vb)).unwrap();
    let count: usize = requested.iter().map(|r| r.shape.iter().product::<usize>()).sum();
    assert_eq!(count, 50_223_688);
    let names: Vec<&str> = requested.iter().map(|r| r.name.as_str()).collect();
    for key in [
        "features.0.0.weight",
        "features.0.1.bias",
        "features.5.26.block.0.weight",
        "features.5.26.layer_scale",
        "features.6.1.weight",
        "features.7.2.block.5.weight",
        "classifier.0.weight",
        "classifier.2.bias",
    ] {
        assert!(names.contains(&key), "{key} not requested");
    }
    assert!(!names.contains(&"features.8.0.weight"), "no downsampling after the last stage");
}

#[test]
fn inconsistent_stage_settings_are_refused() {
    let mut cfg = fixture_config();
    cfg.block_setting[1].0 = 24;
    let err = build_shape_only(DType::F32, &Device::Cpu, |vb| ConvNext::new(&cfg, vb)).unwrap_err();
    assert_eq!(err.code(), "MARVEL_INVALID_ARGUMENT");
    assert!(err.to_string().contains("stage 0"), "{err}");
    let mut cfg = fixture_config();
    cfg.block_setting[3].1 = Some(128);
    let err = build_shape_only(DType::F32, &Device::Cpu, |vb| ConvNext::new(&cfg, vb)).unwrap_err();
    assert!(err.to_string().contains("out_channels null"), "{err}");
    let cfg: ConvNextConfig = serde_json::from_str(r#"{"block_setting": [[8, 16, 1], [16, null, 2]]}"#).unwrap();
    assert_eq!((cfg.num_classes, cfg.norm_eps), (1000, 1e-6));
    assert_eq!(cfg.block_setting[1], StageConfig(16, None, 2));
}

#[test]
#[cfg_attr(not(marvel_parity), ignore = "parity fixtures not found at ../shared/parity or $MARVEL_PARITY_DIR")]
fn wrong_input_sizes_are_refused() {
    let path = parity_dir().join("titok_stage2_losses/perceptual.safetensors");
    let (net, _) = load_strict(&path, &Device::Cpu, &LoadOptions::default(), |vb| ConvNext::new(&fixture_config(), vb))
        .unwrap();
    for dims in [(1, 3, 40, 32), (1, 1, 32, 32)] {
        let err = net.forward(&Tensor::zeros(dims, DType::F32, &Device::Cpu).unwrap()).unwrap_err();
        assert_eq!(err.code(), "MARVEL_SHAPE_MISMATCH", "{dims:?}");
    }
}

/// The backward pass reaches the input and is right: in float64, d(sum(logits * r))/dx matches central
/// differences at a spread of pixels (the strided stem, the depthwise and downsampling convs, both norms, GELU).
#[test]
#[cfg_attr(not(marvel_parity), ignore = "parity fixtures not found at ../shared/parity or $MARVEL_PARITY_DIR")]
fn input_gradient_matches_finite_differences() {
    let dev = Device::Cpu;
    let path = parity_dir().join("titok_stage2_losses/perceptual.safetensors");
    let opts = LoadOptions { dtype: DType::F64, ..Default::default() };
    let (net, _) = load_strict(&path, &dev, &opts, |vb| ConvNext::new(&fixture_config(), vb)).unwrap();
    let x0 = Tensor::randn(0f64, 1., (2, 3, 32, 32), &dev).unwrap();
    let r = Tensor::randn(0f64, 1., (2, 1000), &dev).unwrap();
    let objective = |x: &Tensor| (net.forward(x).unwrap() * &r).unwrap().sum_all().unwrap();
    let x = Var::from_tensor(&x0).unwrap();
    let grads = objective(x.as_tensor()).backward().unwrap();
    let g = grads.get(x.as_tensor()).expect("gradient reaches the input").flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let flat = x0.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let h = 1e-5;
    for idx in (0..flat.len()).step_by(397) {
        let mut plus = flat.clone();
        plus[idx] += h;
        let mut minus = flat.clone();
        minus[idx] -= h;
        let f = |v: Vec<f64>| objective(&Tensor::from_vec(v, x0.dims(), &dev).unwrap()).to_scalar::<f64>().unwrap();
        let numeric = (f(plus) - f(minus)) / (2.0 * h);
        assert!((numeric - g[idx]).abs() <= 1e-6 * (1.0 + numeric.abs()), "x[{idx}]: {numeric} vs {}", g[idx]);
    }
}
