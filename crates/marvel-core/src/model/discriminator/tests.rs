use candle_core::{DType, Device, Tensor};

use super::*;
use crate::testutil::parity_dir;
use crate::weights::build_shape_only;

/// The reference sizes (H 128) ask for the reference's 21 keys, 18 of them parameters, in `named_parameters()`
/// order.
#[test]
fn reference_layout_and_parameter_order() {
    let dev = Device::Cpu;
    let ((_, params), requested) =
        build_shape_only(DType::F32, &dev, |vb| NLayerDiscriminator::new_trainable(&DiscriminatorConfig::default(), vb))
            .unwrap();
    assert_eq!(requested.len(), 21);
    let names: Vec<&str> = params.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.len(), 18);
    assert_eq!(&names[..4], ["block_in.0.weight", "block_in.0.bias", "blocks.0.0.weight", "blocks.0.0.bias"]);
    assert_eq!(names[4], "blocks.0.2.weight");
    assert_eq!(names[17], "to_logits.2.bias");
    assert!(!names.iter().any(|n| n.ends_with("kernel")), "blur kernels are buffers");
    let shape = |n: &str| requested.iter().find(|r| r.name == n).unwrap().shape.clone();
    assert_eq!(shape("blocks.2.0.weight"), [512, 256, 3, 3]);
    assert_eq!(shape("to_logits.2.weight"), [1, 512, 5, 5]);
    assert_eq!(shape("blocks.1.1.kernel"), [1, 1, 4, 4]);
}

#[test]
#[cfg_attr(not(marvel_parity), ignore = "parity fixtures not found at ../shared/parity or $MARVEL_PARITY_DIR")]
fn bad_inputs_and_configs_are_refused() {
    let dev = Device::Cpu;
    let path = parity_dir().join("titok_stage2_losses/discriminator.safetensors");
    let cfg = DiscriminatorConfig { hidden_channels: 32, ..Default::default() };
    let (d, _) = NLayerDiscriminator::load_trainable(&cfg, &path, &dev).unwrap();
    // 200x200 gives 25x25 features: no even 16x16 pooling.
    for dims in [(1, 3, 200, 200), (1, 4, 256, 256)] {
        let err = d.forward(&Tensor::zeros(dims, DType::F32, &dev).unwrap()).unwrap_err();
        assert_eq!(err.code(), "MARVEL_SHAPE_MISMATCH", "{dims:?}");
    }
    // The fixture's weights do not fit the reference's 128 channels; every mismatch is named.
    let err = NLayerDiscriminator::load_trainable(&DiscriminatorConfig::default(), &path, &dev).unwrap_err();
    assert_eq!(err.code(), "MARVEL_CHECKPOINT");
    assert!(err.to_string().contains("block_in.0.weight"), "{err}");
    let bad = DiscriminatorConfig { hidden_channels: 32, norm_num_groups: 5, ..Default::default() };
    let err = build_shape_only(DType::F32, &dev, |vb| NLayerDiscriminator::new(&bad, vb)).unwrap_err();
    assert_eq!(err.code(), "MARVEL_INVALID_ARGUMENT");
}

/// The frozen view computes the same logits, gives its input a gradient and its parameters none.
#[test]
#[cfg_attr(not(marvel_parity), ignore = "parity fixtures not found at ../shared/parity or $MARVEL_PARITY_DIR")]
fn frozen_view_shares_weights_without_gradients() {
    let dev = Device::Cpu;
    let path = parity_dir().join("titok_stage2_losses/discriminator.safetensors");
    let cfg = DiscriminatorConfig { hidden_channels: 32, ..Default::default() };
    let (d, params) = NLayerDiscriminator::load_trainable(&cfg, &path, &dev).unwrap();
    let x = candle_core::Var::from_tensor(&Tensor::rand(0f32, 1., (1, 3, 256, 256), &dev).unwrap()).unwrap();
    let frozen = d.frozen();
    let a = d.forward(x.as_tensor()).unwrap();
    let b = frozen.forward(x.as_tensor()).unwrap();
    assert_eq!(a.dims(), [1, 1, 16, 16]);
    assert_eq!(a.flatten_all().unwrap().to_vec1::<f32>().unwrap(), b.flatten_all().unwrap().to_vec1::<f32>().unwrap());
    let grads = b.sum_all().unwrap().backward().unwrap();
    assert!(grads.get(x.as_tensor()).is_some());
    assert!(params.iter().all(|(_, v)| grads.get(v.as_tensor()).is_none()));
    // An update of a parameter shows in the frozen view.
    let (_, w) = &params[params.len() - 1];
    w.set(&(w.as_tensor() + 1.0).unwrap()).unwrap();
    let c = frozen.forward(x.as_tensor()).unwrap();
    let shift = (c - b).unwrap().mean_all().unwrap().to_scalar::<f32>().unwrap();
    assert!((shift - 1.0).abs() < 1e-5, "{shift}");
}

/// The pooled gradient goes whole to each window's maximum (candle's own max_pool2d backward passes a quarter).
#[test]
fn max_pool_gradient_goes_to_the_maximum() {
    let dev = Device::Cpu;
    let x = candle_core::Var::new(&[[[[1f32, 5.0, 2.0, 0.0], [3.0, 4.0, 9.0, 1.0]]]], &dev).unwrap();
    let y = max_pool(x.as_tensor(), 2, 2).unwrap();
    assert_eq!(y.flatten_all().unwrap().to_vec1::<f32>().unwrap(), [5.0, 9.0]);
    let w = Tensor::new(&[[[[2f32, 3.0]]]], &dev).unwrap();
    let grads = (y * w).unwrap().sum_all().unwrap().backward().unwrap();
    let g = grads.get(x.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(g, [0.0, 2.0, 0.0, 0.0, 0.0, 0.0, 3.0, 0.0]);
}
