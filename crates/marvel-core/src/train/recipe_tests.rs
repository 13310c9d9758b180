//! The stage-1 and stage-2 recipes through the [`Trainer`], on tiny 64x64 models with fresh weights: the loss
//! falls over a few steps; every trainable tensor gets a non-zero gradient and the frozen ones none and stay
//! unchanged (issue 9, proof point 4); the networks a config names are loaded in `create`, and a missing file is
//! refused there; stage 2 saved and resumed in a fresh process continues bit for bit.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use serde_json::{json, Value};

use super::recipe::RecipeKind;
use super::stage2::is_stage2_trainable;
use super::trainer::Trainer;
use crate::model::convnext::{ConvNext, ConvNextConfig};
use crate::model::maskgit::{MaskgitConfig, MaskgitVqgan};
use crate::nn::ParamInit;
use crate::quantize::lfq::SplitMix64;
use crate::weights::{build_shape_only, Checkpoint};

const SIDE: usize = 64;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("marvel-recipes-{name}-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `n` distinct smooth 64x64 images, (n, 64, 64, 3) bytes.
fn images(n: usize, phase: f32) -> Vec<u8> {
    let mut out = Vec::with_capacity(n * SIDE * SIDE * 3);
    for i in 0..n {
        let a = i as f32 * 1.1 + phase;
        for y in 0..SIDE {
            for x in 0..SIDE {
                for c in 0..3 {
                    let t = (x as f32 * a.cos() + y as f32 * a.sin()) / SIDE as f32 + c as f32 * 0.7 + a;
                    out.push((127.5 + 110.0 * (t * 4.0).sin()) as u8);
                }
            }
        }
    }
    out
}

fn common(model: Value, losses: Value, lr: f64) -> Value {
    json!({
        "model": {"vq_model": model},
        "dataset": {"preprocessing": {"crop_size": SIDE}},
        "losses": losses,
        "optimizer": {"name": "adamw", "params": {"learning_rate": lr, "beta1": 0.9, "beta2": 0.99, "weight_decay": 1e-4}},
        "lr_scheduler": {"scheduler": "cosine", "params": {"learning_rate": lr, "warmup_steps": 0, "end_lr": lr / 10.0}},
        "training": {"gradient_accumulation_steps": 1, "use_ema": true, "max_train_steps": 100, "max_grad_norm": 1.0},
    })
}

/// The legacy layout at 64x64: 16x16 patches (a 4x4 decoder grid, 16 proxy codes per image), 4 latent tokens.
fn legacy_model(quantizer: Value, finetune_decoder: bool) -> Value {
    let mut m = json!({
        "token_size": 6, "num_latent_tokens": 4,
        "vit_enc_model_size": "custom", "vit_enc_width": 32, "vit_enc_num_layers": 1, "vit_enc_num_heads": 2,
        "vit_dec_model_size": "custom", "vit_dec_width": 32, "vit_dec_num_layers": 1, "vit_dec_num_heads": 2,
        "vit_enc_patch_size": 16, "vit_dec_patch_size": 16, "is_legacy": true, "finetune_decoder": finetune_decoder,
    });
    for (k, v) in quantizer.as_object().unwrap() {
        m[k] = v.clone();
    }
    if finetune_decoder {
        m["pixel_decoder"] = json!({"hidden_channels": 8, "channel_mult": [1, 1, 2, 2, 4], "num_res_blocks": 1,
            "z_channels": 8, "codebook_size": 1024, "norm_num_groups": 4, "resolution": SIDE});
    }
    m
}

fn vq() -> Value {
    json!({"quantize_mode": "vq", "codebook_size": 64, "use_l2_norm": true, "commitment_cost": 0.25})
}

fn lfq() -> Value {
    json!({"quantize_mode": "lfq", "num_depths": 3, "depth_dropout": 0.5})
}

fn stage1_config(quantizer: Value) -> Value {
    common(legacy_model(quantizer, false), json!({"quantizer_weight": 1.0}), 1e-2)
}

/// Fixed proxy codes for `n` images: a pattern the head can learn, different per image.
fn codes(n: usize) -> Vec<i32> {
    (0..n * 16).map(|i| ((i * 37 + i / 16 * 11) % 1024) as i32).collect()
}

fn max_abs(t: &Tensor) -> f32 {
    t.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

fn snapshot(t: &Trainer) -> HashMap<String, Tensor> {
    t.parameters().iter().map(|(n, v)| (n.clone(), v.as_tensor().copy().unwrap())).collect()
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|v| v.to_bits()).collect()
}

/// Proof point 4 through the trainer: one micro-batch's gradients cover exactly the trainable parameters, each
/// non-zero; returns how many.
fn check_gradients(t: &mut Trainer, imgs: &[u8], n: usize, proxy: Option<&[i32]>) -> usize {
    let (grads, loss, _) = t.gradients(imgs, n, proxy).unwrap();
    assert!(loss.is_finite());
    let mut trained = 0;
    for (name, _) in t.parameters().to_vec() {
        match grads.get(&name) {
            Some(g) => {
                assert!(t.is_trainable(&name), "{name}: frozen but has a gradient");
                assert!(max_abs(g) > 0.0, "{name}: zero gradient");
                trained += 1;
            }
            None => assert!(!t.is_trainable(&name), "{name}: trainable but no gradient"),
        }
    }
    assert_eq!(trained, grads.len());
    trained
}

/// Steps `t` `steps` times on two alternating batches; the losses.
fn train(t: &mut Trainer, steps: usize, proxy: bool) -> Vec<f32> {
    let batches = [images(2, 0.0), images(2, 0.5)];
    let proxies = [codes(2), codes(2).iter().map(|c| (c + 5) % 1024).collect::<Vec<_>>()];
    (0..steps)
        .map(|i| {
            let p = proxy.then(|| proxies[i % 2].as_slice());
            t.step(&batches[i % 2], 2, p).unwrap().loss
        })
        .collect()
}

#[test]
fn stage1_trains_every_tensor_through_the_trainer_vq_and_lfq() {
    for (label, quantizer) in [("vq", vq()), ("lfq", lfq())] {
        let mut t = Trainer::create(stage1_config(quantizer), None, 5).unwrap();
        assert_eq!(t.recipe(), RecipeKind::Stage1);
        let n = check_gradients(&mut t, &images(2, 0.0), 2, Some(&codes(2)));
        assert_eq!(n, t.parameters().len(), "{label}: stage 1 trains the whole TiTok");
        let curve = train(&mut t, 8, true);
        println!("stage1 {label}: {n} trainable tensors, loss over 8 steps {curve:?}");
        let (first, last) = (curve[0] + curve[1], curve[6] + curve[7]);
        assert!(last < 0.8 * first, "{label}: the stage-1 loss does not fall: {curve:?}");
    }
}

/// A MaskGIT-VQGAN for 64x64 images with random weights, written as a model folder.
fn write_maskgit(dir: &Path) -> MaskgitVqgan {
    let cfg = MaskgitConfig { hidden_channels: 8, z_channels: 8, norm_num_groups: 4, resolution: SIDE, ..MaskgitConfig::default() };
    let varmap = VarMap::new();
    let vb = || VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    MaskgitVqgan::load(&cfg, vb()).unwrap();
    let mut rng = SplitMix64::new(11);
    for var in varmap.all_vars() {
        let n = var.elem_count();
        let values: Vec<f32> = (0..n).map(|_| (rng.next_f64() as f32 - 0.5) * 0.6).collect();
        var.set(&Tensor::from_vec(values, var.shape(), &Device::Cpu).unwrap()).unwrap();
    }
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), json!({"maskgit_vqgan": serde_json::to_value(&cfg).unwrap()}).to_string())
        .unwrap();
    varmap.save(dir.join("model.safetensors")).unwrap();
    MaskgitVqgan::load(&cfg, vb()).unwrap()
}

/// With `model.vq_model.pretrained_tokenizer_weight` the trainer makes the proxy codes itself: a step without
/// codes equals a step given the MaskGIT's codes, bit for bit. Without the key a step needs codes; with a
/// missing file `create` fails, naming the key and the path.
#[test]
fn stage1_proxy_codes_come_from_the_maskgit_file_or_the_batch() {
    let dir = scratch("maskgit");
    let vqgan = write_maskgit(&dir.join("maskgit"));
    let imgs = images(2, 0.0);
    let x = crate::image::images_from_u8_nhwc(&imgs, (2, SIDE, SIDE), &Device::Cpu).unwrap();
    let want: Vec<i32> = super::stage1::proxy_codes(&vqgan, &x)
        .unwrap()
        .to_dtype(DType::I64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<i64>()
        .unwrap()
        .iter()
        .map(|&c| c as i32)
        .collect();

    let mut with_file = stage1_config(vq());
    with_file["model"]["vq_model"]["pretrained_tokenizer_weight"] = json!(dir.join("maskgit").to_str().unwrap());
    let mut own = Trainer::create(with_file.clone(), None, 3).unwrap();
    let mut given = Trainer::create(stage1_config(vq()), None, 3).unwrap();
    for _ in 0..2 {
        let a = own.step(&imgs, 2, None).unwrap();
        let b = given.step(&imgs, 2, Some(&want)).unwrap();
        assert_eq!(a.loss.to_bits(), b.loss.to_bits(), "the MaskGIT's codes are the targets");
    }
    // Codes given with the batch take precedence over the MaskGIT's (a pre-tokenized cache).
    let other = codes(2);
    let a = own.step(&imgs, 2, Some(&other)).unwrap();
    let b = given.step(&imgs, 2, Some(&other)).unwrap();
    assert_eq!(a.loss.to_bits(), b.loss.to_bits());

    let err = given.step(&imgs, 2, None).unwrap_err();
    assert_eq!(err.code(), "MARVEL_INVALID_ARGUMENT");
    assert!(err.to_string().contains("model.vq_model.pretrained_tokenizer_weight"), "{err}");
    assert!(err.to_string().contains("proxyCodes"), "{err}");

    let missing = dir.join("no-such-maskgit.bin");
    with_file["model"]["vq_model"]["pretrained_tokenizer_weight"] = json!(missing.to_str().unwrap());
    let err = Trainer::create(with_file, None, 3).unwrap_err();
    assert_eq!(err.code(), "MARVEL_IO");
    let msg = err.to_string();
    assert!(msg.contains("model.vq_model.pretrained_tokenizer_weight") && msg.contains("no-such-maskgit.bin"), "{msg}");
    std::fs::remove_dir_all(&dir).ok();
}

fn convnext_config() -> ConvNextConfig {
    serde_json::from_value(json!({"block_setting": [[8, 16, 1], [16, 32, 1], [32, 64, 1], [64, null, 1]], "num_classes": 16}))
        .unwrap()
}

/// A small ConvNeXt of the torchvision layout with random weights, written as safetensors.
fn write_convnext(path: &Path) {
    let (_, requested) = build_shape_only(DType::F32, &Device::Cpu, |vb| ConvNext::new(&convnext_config(), vb)).unwrap();
    let mut rng = SplitMix64::new(17);
    let tensors: HashMap<String, Tensor> = requested
        .iter()
        .map(|r| {
            let r = crate::weights::Requested { init: Some(ParamInit::Normal { std: 0.2 }), ..r.clone() };
            (r.name.clone(), crate::init::init_one(&r, &mut rng).unwrap())
        })
        .collect();
    candle_core::safetensors::save(&tensors, path).unwrap();
}

/// Stage 2 at 64x64: the discriminator on from step 0 (so that a few steps exercise it), 2 stages (64 -> 16).
fn stage2_config(dir: &Path) -> Value {
    let perceptual = dir.join("convnext.safetensors");
    if !perceptual.exists() {
        write_convnext(&perceptual);
    }
    let losses = json!({
        "discriminator_start": 0, "quantizer_weight": 0.0, "discriminator_factor": 1.0, "discriminator_weight": 0.01,
        "perceptual_loss": "convnext_s", "perceptual_weight": 0.1, "reconstruction_loss": "l2",
        "reconstruction_weight": 1.0, "lecam_regularization_weight": 0.001, "lecam_ema_decay": 0.999,
        "perceptual_weights": perceptual.to_str().unwrap(),
        "perceptual_convnext": {"block_setting": [[8, 16, 1], [16, 32, 1], [32, 64, 1], [64, null, 1]], "num_classes": 16},
        "discriminator": {"hidden_channels": 8, "num_stages": 2, "norm_num_groups": 4},
    });
    let mut cfg = common(legacy_model(vq(), true), losses, 1e-3);
    cfg["optimizer"]["params"]["discriminator_learning_rate"] = json!(5e-4);
    cfg
}

#[test]
fn stage2_trains_the_decoders_through_the_trainer_and_freezes_the_rest() {
    let dir = scratch("stage2-train");
    let mut t = Trainer::create(stage2_config(&dir), None, 9).unwrap();
    assert_eq!(t.recipe(), RecipeKind::Stage2);
    let n = check_gradients(&mut t, &images(2, 0.0), 2, None);
    let want = t.parameters().iter().filter(|(name, _)| is_stage2_trainable(name)).count();
    assert_eq!(n, want);
    assert!(n < t.parameters().len());
    let before = snapshot(&t);

    let mut curve = Vec::new();
    let batch = images(2, 0.0);
    for _ in 0..6 {
        let out = t.step(&batch, 2, None).unwrap();
        let c: HashMap<_, _> = out.components.iter().cloned().collect();
        assert!(c["discriminator_loss"].is_finite() && c["discriminator_lr"] > 0.0, "{c:?}");
        curve.push(c["reconstruction_loss"]);
    }
    println!("stage2: {n} of {} tensors trainable; reconstruction loss over 6 steps {curve:?}", t.parameters().len());
    assert!(curve[5] < 0.9 * curve[0], "the reconstruction loss does not fall: {curve:?}");

    let after = snapshot(&t);
    for (name, b) in &before {
        let moved = bits(b) != bits(&after[name]);
        assert_eq!(moved, is_stage2_trainable(name), "{name}: trainable {} but moved {moved}", is_stage2_trainable(name));
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// Every tensor of every `.safetensors` file of two checkpoint folders, bit for bit, and their trainer state.
fn assert_same_checkpoint(a: &Path, b: &Path) {
    let files = |d: &Path| {
        let mut v: Vec<String> =
            std::fs::read_dir(d).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    };
    assert_eq!(files(a), files(b));
    for f in files(a).iter().filter(|f| f.ends_with(".safetensors")) {
        let (ca, cb) = (Checkpoint::open(a.join(f)).unwrap(), Checkpoint::open(b.join(f)).unwrap());
        let mut keys: Vec<&String> = ca.tensors().keys().collect();
        keys.sort();
        let mut keys_b: Vec<&String> = cb.tensors().keys().collect();
        keys_b.sort();
        assert_eq!(keys, keys_b, "{f}: tensor names");
        for k in keys {
            let (ta, tb) = (ca.load(k, &Device::Cpu).unwrap(), cb.load(k, &Device::Cpu).unwrap());
            assert_eq!(ta.dtype(), tb.dtype(), "{f}: {k}");
            let same = match ta.dtype() {
                DType::I64 => {
                    ta.flatten_all().unwrap().to_vec1::<i64>().unwrap() == tb.flatten_all().unwrap().to_vec1::<i64>().unwrap()
                }
                _ => bits(&ta) == bits(&tb),
            };
            assert!(same, "{f}: {k} differs");
        }
    }
    let state = |d: &Path| -> Value {
        let mut v: Value = serde_json::from_str(&std::fs::read_to_string(d.join("trainer_state.json")).unwrap()).unwrap();
        v["data_position"] = Value::Null;
        v
    };
    assert_eq!(state(a), state(b));
}

const RESUME_ENV: &str = "MARVEL_STAGE2_RESUME_DIR";

/// Stage 2 with gradient accumulation (2 micro-batches per update, so the discriminator averages two) and a
/// warm-up, so that both schedules' positions matter.
fn resume_config(dir: &Path) -> Value {
    let mut cfg = stage2_config(dir);
    cfg["training"]["gradient_accumulation_steps"] = json!(2);
    cfg["lr_scheduler"]["params"]["warmup_steps"] = json!(2);
    cfg
}

/// The child half of the stage-2 resume test: resumes `$MARVEL_STAGE2_RESUME_DIR/half`, runs 4 micro-batches,
/// saves `resumed` and writes their losses. Does nothing when run on its own.
#[test]
fn stage2_resume_child_process_only_runs_when_spawned_by_the_resume_test() {
    let Ok(dir) = std::env::var(RESUME_ENV) else { return };
    let dir = PathBuf::from(dir);
    let (mut t, position) = Trainer::resume(&dir.join("half")).unwrap();
    assert_eq!(position, json!({"batch": 4}));
    let losses = train(&mut t, 4, false);
    t.save(&dir.join("resumed"), json!(null)).unwrap();
    std::fs::write(dir.join("losses.json"), serde_json::to_string(&losses).unwrap()).unwrap();
}

/// Exact resume with the discriminator, across processes: 8 micro-batches (4 updates) straight against 4, save,
/// resume in a fresh process, 4 more: the same losses, and bit-identical model, EMA, optimizer, discriminator, its
/// optimizer and LeCam state, and trainer state.
#[test]
fn stage2_resume_in_a_fresh_process_continues_bit_for_bit() {
    let dir = scratch("stage2-resume");
    let cfg = resume_config(&dir);
    let mut straight = Trainer::create(cfg.clone(), None, 21).unwrap();
    let losses = train(&mut straight, 8, false);
    assert_eq!(straight.steps(), 4);
    straight.save(&dir.join("straight"), json!(null)).unwrap();

    let mut first = Trainer::create(cfg, None, 21).unwrap();
    let half = train(&mut first, 4, false);
    assert_eq!(half.iter().map(|l| l.to_bits()).collect::<Vec<_>>(), losses[..4].iter().map(|l| l.to_bits()).collect::<Vec<_>>());
    first.save(&dir.join("half"), json!({"batch": 4})).unwrap();
    drop(first);
    for f in ["discriminator.safetensors", "discriminator_optimizer.safetensors", "discriminator_lecam.safetensors"] {
        assert!(dir.join("half").join(f).is_file(), "{f} is written");
    }

    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "train::recipe_tests::stage2_resume_child_process_only_runs_when_spawned_by_the_resume_test",
            "--test-threads=1",
        ])
        .env(RESUME_ENV, &dir)
        .status()
        .unwrap();
    assert!(status.success(), "the child process failed");
    let resumed: Vec<f32> = serde_json::from_str(&std::fs::read_to_string(dir.join("losses.json")).unwrap()).unwrap();
    println!("stage2 losses straight {losses:?}, after the resume {resumed:?}");
    assert_eq!(
        resumed.iter().map(|l| l.to_bits()).collect::<Vec<_>>(),
        losses[4..].iter().map(|l| l.to_bits()).collect::<Vec<_>>(),
        "losses after the resume"
    );
    assert_same_checkpoint(&dir.join("straight"), &dir.join("resumed"));
    std::fs::remove_dir_all(&dir).ok();
}

/// The networks stage 2 needs are checked in `create`: an absent perceptual key, a missing perceptual or
/// discriminator file, an unknown key in the discriminator's sizes. A discriminator file that exists is used.
#[test]
fn stage2_network_files_are_checked_in_create() {
    let dir = scratch("stage2-files");
    let cfg = stage2_config(&dir);

    let mut c = cfg.clone();
    c["losses"].as_object_mut().unwrap().remove("perceptual_weights");
    let err = Trainer::create(c, None, 0).unwrap_err();
    assert_eq!(err.code(), "MARVEL_CONFIG");
    assert!(err.to_string().contains("losses.perceptual_weights"), "{err}");

    let mut c = cfg.clone();
    c["losses"]["perceptual_weights"] = json!("/nonexistent/convnext_small.safetensors");
    let err = Trainer::create(c, None, 0).unwrap_err();
    assert_eq!(err.code(), "MARVEL_IO");
    let msg = err.to_string();
    assert!(msg.contains("losses.perceptual_weights") && msg.contains("/nonexistent/convnext_small.safetensors"), "{msg}");

    let mut c = cfg.clone();
    c["losses"]["discriminator_weights"] = json!("/nonexistent/disc.safetensors");
    let err = Trainer::create(c, None, 0).unwrap_err();
    assert_eq!(err.code(), "MARVEL_IO");
    assert!(err.to_string().contains("losses.discriminator_weights"), "{err}");

    let mut c = cfg.clone();
    c["losses"]["discriminator"]["hiden_channels"] = json!(8);
    let err = Trainer::create(c, None, 0).unwrap_err();
    assert_eq!(err.code(), "MARVEL_CONFIG");
    assert!(err.to_string().contains("unknown key losses.discriminator.hiden_channels"), "{err}");

    // A saved discriminator given as the starting point: its weights are the trainer's.
    let t = Trainer::create(cfg.clone(), None, 4).unwrap();
    t.save(&dir.join("ckpt"), json!(null)).unwrap();
    let mut c = cfg;
    let file = dir.join("ckpt").join("discriminator.safetensors");
    c["losses"]["discriminator_weights"] = json!(file.to_str().unwrap());
    let t2 = Trainer::create(c.clone(), None, 99).unwrap();
    t2.save(&dir.join("ckpt2"), json!(null)).unwrap();
    let (a, b) = (Checkpoint::open(&file).unwrap(), Checkpoint::open(dir.join("ckpt2").join("discriminator.safetensors")).unwrap());
    for k in a.tensors().keys() {
        assert_eq!(bits(&a.load(k, &Device::Cpu).unwrap()), bits(&b.load(k, &Device::Cpu).unwrap()), "{k}");
    }
    // Without the file, another seed draws another discriminator.
    c["losses"].as_object_mut().unwrap().remove("discriminator_weights");
    Trainer::create(c, None, 99).unwrap().save(&dir.join("ckpt3"), json!(null)).unwrap();
    let d3 = Checkpoint::open(dir.join("ckpt3").join("discriminator.safetensors")).unwrap();
    let k = a.tensors().keys().find(|k| k.ends_with("block_in.0.weight")).unwrap();
    assert_ne!(bits(&a.load(k, &Device::Cpu).unwrap()), bits(&d3.load(k, &Device::Cpu).unwrap()));
    std::fs::remove_dir_all(&dir).ok();
}
