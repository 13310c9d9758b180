//! The stage-1 recipe against `titok_stage1_grads` (VQ) and `marvel_stage1_grads` (LFQ, 2 depths): the loss
//! components, the tokens and the gradient of every parameter, per the fixtures' tolerances (losses relative 1e-5,
//! entropy terms 1e-4; gradients per tensor max |diff| <= r * max |expected| + 1e-9 with r = 1e-4 for VQ
//! (README.md) and 1e-3 for LFQ (TRAINING.md)). Each case prints its worst tensor (`--nocapture`). Also: what is
//! trainable gets a non-zero gradient and the frozen MaskGIT-VQGAN none.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};

use super::stage1::*;
use crate::config::TitokConfig;
use crate::model::maskgit::{MaskgitConfig, MaskgitVqgan};
use crate::model::titok::Titok;
use crate::quantize::lfq::SplitMix64;
use crate::quantize::ResidualLfq;
use crate::testutil::{max_abs_diff, Fixture};
use crate::weights::{build_shape_only, LoadOptions};

/// A model whose parameters are the variables of a `VarMap`, with their names in the model's order.
struct Trainable {
    model: Titok,
    varmap: VarMap,
    names: Vec<String>,
}

impl Trainable {
    /// From stored tensors: every parameter the model asks for is taken from `stored`, which must hold it with
    /// the requested shape.
    fn from_tensors(cfg: &TitokConfig, stored: &std::collections::HashMap<String, Tensor>) -> Trainable {
        let (_, params) = build_shape_only(DType::F32, &Device::Cpu, |vb| Titok::new(cfg, vb)).unwrap();
        let varmap = VarMap::new();
        for p in &params {
            let t = stored.get(&p.name).unwrap_or_else(|| panic!("{}: not stored", p.name));
            assert_eq!(t.dims(), p.shape.as_slice(), "{}: stored shape differs", p.name);
            varmap.data().lock().unwrap().insert(p.name.clone(), Var::from_tensor(t).unwrap());
        }
        let model = Titok::new(cfg, VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu)).unwrap();
        // Nothing was created on the way (VarMap would have initialised a missing name).
        assert_eq!(varmap.all_vars().len(), params.len());
        Trainable { model, varmap, names: params.into_iter().map(|p| p.name).collect() }
    }

    fn var(&self, name: &str) -> Var {
        self.varmap.data().lock().unwrap().get(name).unwrap_or_else(|| panic!("no variable {name}")).clone()
    }
}

/// The fixture's model, loaded strictly: the checkpoint must hold exactly the tensors the model uses (LFQ buffers
/// included, which are checked but are not parameters), each with its shape.
fn load_case(case: &str) -> (Fixture, Trainable) {
    let fx = Fixture::load(case);
    let cfg = TitokConfig::from_path(fx.dir.join("config.json")).unwrap();
    let path = fx.dir.join("model.safetensors");
    // The inference loader's strict checks (it reads the data: the LFQ buffers are checked by value).
    Titok::load(&cfg, &path, &Device::Cpu, &LoadOptions::default()).unwrap();
    let stored = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    (fx, Trainable::from_tensors(&cfg, &stored))
}

fn quantizer_weight(fx: &Fixture) -> f64 {
    let text = std::fs::read_to_string(fx.dir.join("config.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["losses"]["quantizer_weight"].as_f64().unwrap()
}

/// Runs the case and compares the components in `losses` (name in the output, name in the fixture, relative
/// tolerance), the tokens and every `grad.*` of the fixture with relative tolerance `grad_rel`.
fn run_case(case: &str, losses: &[(&str, &str, f64)], grad_rel: f64) {
    let (fx, t) = load_case(case);
    let cfg = Stage1Config { quantizer_weight: quantizer_weight(&fx) };
    let codes = fx.input("proxy_codes");
    let out = stage1_loss(&t.model, &fx.images_f32(), codes, &cfg, &mut SplitMix64::new(0)).unwrap();

    let want_tokens = fx.expected("tokens").flatten_all().unwrap().to_vec1::<i64>().unwrap();
    let got_tokens = out.tokens.to_dtype(DType::I64).unwrap().flatten_all().unwrap().to_vec1::<i64>().unwrap();
    assert_eq!(got_tokens, want_tokens, "{case}: tokens differ");

    for &(ours, theirs, rel) in losses {
        let got = out.components[ours] as f64;
        let want = fx.expected(theirs).flatten_all().unwrap().to_vec1::<f32>().unwrap()[0] as f64;
        let err = (got - want).abs() / want.abs().max(1e-30);
        eprintln!("{case}: {ours} {got:.7e} vs {want:.7e} (relative {err:.2e})");
        assert!(err <= rel, "{case}: {ours} = {got}, expected {want} (relative error {err:.3e} > {rel})");
    }
    let loss = out.loss.to_scalar::<f32>().unwrap();
    assert_eq!(loss, out.components["total_loss"]);

    let grads = out.loss.backward().unwrap();
    let expected: Vec<&String> = fx.expected.keys().filter(|k| k.starts_with("grad.")).collect();
    assert_eq!(expected.len(), t.names.len(), "{case}: the fixture has a gradient for every parameter");
    let mut worst = (String::new(), 0f64);
    for name in &t.names {
        let want = fx.expected(&format!("grad.{name}"));
        let got = grads.get(t.var(name).as_tensor()).unwrap_or_else(|| panic!("{case}: {name} got no gradient"));
        assert_eq!(got.dims(), want.dims(), "{case}: grad.{name} shape");
        let scale = want.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap() as f64;
        let err = max_abs_diff(got, want) as f64;
        let ratio = err / scale.max(1e-30);
        assert!(
            err <= grad_rel * scale + 1e-9,
            "{case}: grad.{name} max |diff| {err:.3e} > {grad_rel} x max |expected| {scale:.3e}"
        );
        if ratio > worst.1 {
            worst = (name.clone(), ratio);
        }
    }
    eprintln!(
        "{case}: {} gradients within {grad_rel} of their max; worst grad.{} at {:.2e} of its max",
        t.names.len(),
        worst.0,
        worst.1
    );
}

#[test]
#[cfg_attr(not(marvel_parity), ignore = "parity fixtures not found at ../shared/parity or $MARVEL_PARITY_DIR")]
fn parity_titok_stage1_grads() {
    let losses = [
        ("total_loss", "loss", 1e-5),
        ("reconstruction_loss", "reconstruction_loss", 1e-5),
        ("quantizer_loss", "quantizer_loss", 1e-5),
        ("commitment_loss", "commitment_loss", 1e-5),
        ("codebook_loss", "codebook_loss", 1e-5),
    ];
    run_case("titok_stage1_grads", &losses, 1e-4);
}

#[test]
#[cfg_attr(not(marvel_parity), ignore = "parity fixtures not found at ../shared/parity or $MARVEL_PARITY_DIR")]
fn parity_marvel_stage1_grads() {
    let losses = [
        ("total_loss", "loss", 1e-5),
        ("reconstruction_loss", "reconstruction_loss", 1e-5),
        ("quantizer_loss", "quantizer_loss", 1e-4),
        ("commitment_loss", "commitment_loss", 1e-5),
        ("codebook_loss", "codebook_loss", 1e-4),
        ("entropy_loss", "entropy_loss", 1e-4),
        ("per_sample_entropy", "per_sample_entropy", 1e-4),
        ("avg_entropy", "avg_entropy", 1e-4),
    ];
    run_case("marvel_stage1_grads", &losses, 1e-3);
}

#[test]
#[cfg_attr(not(marvel_parity), ignore = "parity fixtures not found at ../shared/parity or $MARVEL_PARITY_DIR")]
fn proxy_codes_are_the_maskgit_codes() {
    let fx = Fixture::load("maskgit_vqgan");
    let vqgan = MaskgitVqgan::from_pretrained(&fx.dir, &Device::Cpu).unwrap();
    let codes = proxy_codes(&vqgan, &fx.images_f32()).unwrap();
    assert_eq!(codes.dims(), &[3, 256]);
    let got = codes.to_dtype(DType::I64).unwrap().flatten_all().unwrap().to_vec1::<i64>().unwrap();
    assert_eq!(got, fx.expected("codes").flatten_all().unwrap().to_vec1::<i64>().unwrap());
}

/// A tiny model on 64x64 images (a 4x4 decoder grid), with random trainable weights.
fn tiny(quantizer: &str) -> Trainable {
    let quantizer = match quantizer {
        "vq" => r#""quantize_mode": "vq", "codebook_size": 64, "use_l2_norm": true"#,
        _ => r#""quantize_mode": "lfq", "num_depths": 3"#,
    };
    let cfg = TitokConfig::from_json_str(&format!(
        r#"{{"model": {{"vq_model": {{{quantizer}, "token_size": 6, "num_latent_tokens": 4,
        "vit_enc_model_size": "custom", "vit_enc_width": 32, "vit_enc_num_layers": 1, "vit_enc_num_heads": 2,
        "vit_dec_model_size": "custom", "vit_dec_width": 32, "vit_dec_num_layers": 1, "vit_dec_num_heads": 2,
        "vit_enc_patch_size": 16, "vit_dec_patch_size": 16, "is_legacy": true, "finetune_decoder": false}}}},
        "dataset": {{"preprocessing": {{"crop_size": 64}}}}}}"#
    ))
    .unwrap();
    Trainable::from_tensors(&cfg, &crate::init::random_weights(&cfg, 7).unwrap().into_iter().collect())
}

/// A MaskGIT-VQGAN for 64x64 images (4x4 codes) whose weights are tracked variables with random values, so that
/// a gradient reaching them would show.
fn tiny_maskgit() -> (MaskgitVqgan, VarMap) {
    let cfg = MaskgitConfig {
        hidden_channels: 8,
        z_channels: 8,
        norm_num_groups: 4,
        resolution: 64,
        ..MaskgitConfig::default()
    };
    let varmap = VarMap::new();
    let vb = || VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    // A first build creates the variables; the second builds the layers (and any kernel cache derived from
    // the weights) from the random values.
    MaskgitVqgan::load(&cfg, vb()).unwrap();
    for var in varmap.all_vars() {
        let t = (Tensor::randn(0f32, 1f32, var.shape(), &Device::Cpu).unwrap() * 0.3).unwrap();
        var.set(&t).unwrap();
    }
    (MaskgitVqgan::load(&cfg, vb()).unwrap(), varmap)
}

/// Proof point 4 for stage 1: every parameter of the model (the recipe freezes none of them) gets a non-zero
/// gradient, and the frozen MaskGIT-VQGAN that makes the targets gets none.
#[test]
fn every_parameter_learns_and_the_maskgit_gets_no_gradient() {
    let (vqgan, maskgit_vars) = tiny_maskgit();
    let images = Tensor::rand(0f32, 1f32, (2, 3, 64, 64), &Device::Cpu).unwrap();
    let codes = proxy_codes(&vqgan, &images).unwrap();
    assert_eq!(codes.dims(), &[2, 16]);
    let distinct: std::collections::BTreeSet<u32> =
        codes.flatten_all().unwrap().to_vec1::<u32>().unwrap().into_iter().collect();
    assert!(distinct.len() > 1, "the targets are not all one code");
    for quantizer in ["vq", "lfq"] {
        let t = tiny(quantizer);
        let out = stage1_loss(&t.model, &images, &codes, &Stage1Config::default(), &mut SplitMix64::new(1)).unwrap();
        let grads = out.loss.backward().unwrap();
        for name in &t.names {
            let g = grads.get(t.var(name).as_tensor()).unwrap_or_else(|| panic!("{quantizer}: {name} got no gradient"));
            let norm = g.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(norm > 0.0, "{quantizer}: {name} has a zero gradient");
        }
        for var in maskgit_vars.all_vars() {
            assert!(grads.get(var.as_tensor()).is_none(), "{quantizer}: a MaskGIT-VQGAN weight got a gradient");
        }
        eprintln!("{quantizer}: {} parameters with non-zero gradients, MaskGIT untouched", t.names.len());
    }
}

/// Depth dropout draws from the caller's generator only: the same state gives the same depth and loss, the
/// tokens and losses cover exactly the drawn depths, and a generator restored from its saved state continues
/// the same sequence.
#[test]
fn depth_dropout_is_seeded_and_restorable() {
    let mut t = tiny("lfq");
    let mut cfg = t.model.config().clone();
    let crate::config::QuantizerConfig::Lfq(lfq) = &mut cfg.quantizer else { unreachable!() };
    lfq.depth_dropout = 0.5;
    let dropout = ResidualLfq::from_config(lfq.clone()).unwrap();
    t.model = Titok::new(&cfg, VarBuilder::from_varmap(&t.varmap, DType::F32, &Device::Cpu)).unwrap();

    let images = Tensor::rand(0f32, 1f32, (2, 3, 64, 64), &Device::Cpu).unwrap();
    let codes = Tensor::arange(0u32, 32, &Device::Cpu).unwrap().reshape((2, 4, 4)).unwrap();
    let mut rng = SplitMix64::new(42);
    let mut depths = Vec::new();
    for _ in 0..12 {
        let saved = rng.state();
        let want_depth = dropout.sample_train_depths(&mut SplitMix64::new(saved));
        let out = stage1_loss(&t.model, &images, &codes, &Stage1Config::default(), &mut rng).unwrap();
        assert_eq!(out.depth, want_depth);
        assert_eq!(out.tokens.dims(), &[2, 4, want_depth]);
        let again =
            stage1_loss(&t.model, &images, &codes, &Stage1Config::default(), &mut SplitMix64::new(saved)).unwrap();
        assert_eq!(again.components, out.components, "same generator state, same step");
        depths.push(out.depth);
    }
    assert!(depths.contains(&3) && depths.iter().any(|&d| d < 3), "depths drawn: {depths:?}");
    eprintln!("depths drawn with dropout 0.5: {depths:?}");
}

#[test]
fn bad_targets_and_models_are_refused_with_a_reason() {
    let t = tiny("vq");
    let images = Tensor::rand(0f32, 1f32, (2, 3, 64, 64), &Device::Cpu).unwrap();
    let run = |codes: &Tensor| {
        stage1_loss(&t.model, &images, codes, &Stage1Config::default(), &mut SplitMix64::new(0)).unwrap_err()
    };
    let mut bad = vec![5i64; 32];
    bad[21] = 1024;
    let err = run(&Tensor::from_vec(bad, (2, 16), &Device::Cpu).unwrap());
    assert_eq!(err.code(), "MARVEL_INVALID_ARGUMENT");
    assert!(err.to_string().contains("1024 at (image 1, position 5)"), "{err}");
    let err = run(&Tensor::from_vec(vec![-1i32; 32], (2, 16), &Device::Cpu).unwrap());
    assert!(err.to_string().contains("-1 at (image 0, position 0)"), "{err}");
    let err = run(&Tensor::zeros((2, 256), DType::U32, &Device::Cpu).unwrap());
    assert_eq!(err.code(), "MARVEL_SHAPE_MISMATCH");
    assert!(err.to_string().contains("(2, 16) or (2, 4, 4)"), "{err}");
    let err = run(&Tensor::zeros((3, 16), DType::U32, &Device::Cpu).unwrap());
    assert_eq!(err.code(), "MARVEL_SHAPE_MISMATCH");
    let err = run(&Tensor::zeros((2, 16), DType::F32, &Device::Cpu).unwrap());
    assert!(err.to_string().contains("must be integers"), "{err}");

    let codes = Tensor::zeros((2, 16), DType::U32, &Device::Cpu).unwrap();
    let bad_weight = Stage1Config { quantizer_weight: f64::NAN };
    let err = stage1_loss(&t.model, &images, &codes, &bad_weight, &mut SplitMix64::new(0)).unwrap_err();
    assert!(err.to_string().contains("quantizer_weight"), "{err}");

    let mut cfg = t.model.config().clone();
    cfg.is_legacy = false;
    let vb = VarBuilder::from_varmap(&VarMap::new(), DType::F32, &Device::Cpu);
    let pixel_head = Titok::new(&cfg, vb).unwrap();
    let err = stage1_loss(&pixel_head, &images, &codes, &Stage1Config::default(), &mut SplitMix64::new(0)).unwrap_err();
    assert_eq!(err.code(), "MARVEL_CONFIG");
    assert!(err.to_string().contains("is_legacy = false"), "{err}");
}

/// The pieces a stage-1 trainer wires together (loss, named gradients, clipping, AdamW) learn: on one fixed batch
/// the loss falls within a few steps.
#[test]
fn a_few_adamw_steps_lower_the_stage1_loss() {
    use crate::train::{clip_grad_norm, AdamW, AdamWConfig, Gradients};
    for quantizer in ["vq", "lfq"] {
        let t = tiny(quantizer);
        let params: Vec<(String, Var)> = t.names.iter().map(|n| (n.clone(), t.var(n))).collect();
        let config = AdamWConfig { learning_rate: 1e-2, beta1: 0.9, beta2: 0.99, weight_decay: 1e-4, epsilon: 1e-8 };
        let mut opt = AdamW::new(config, params.clone()).unwrap();
        let images = Tensor::rand(0f32, 1f32, (2, 3, 64, 64), &Device::Cpu).unwrap();
        let codes = Tensor::arange(0u32, 32, &Device::Cpu).unwrap().reshape((2, 16)).unwrap();
        let mut rng = SplitMix64::new(3);
        let mut losses = Vec::new();
        for _ in 0..20 {
            let out = stage1_loss(&t.model, &images, &codes, &Stage1Config::default(), &mut rng).unwrap();
            losses.push(out.components["total_loss"]);
            let mut grads = Gradients::from_store(&params, &out.loss.backward().unwrap()).unwrap();
            assert_eq!(grads.len(), params.len());
            clip_grad_norm(&mut grads, 1.0).unwrap();
            opt.step(&grads).unwrap();
        }
        let (first, last) = (losses[0], *losses.last().unwrap());
        eprintln!("{quantizer}: stage-1 loss {first:.4} -> {last:.4} in {} steps", losses.len());
        assert!(last < 0.5 * first, "{quantizer}: loss {losses:?}");
    }
}
