//! The stage-2 recipe through the trainer: the discriminator's step, its state in checkpoints, exact resume
//! across processes, and the network files checked in `create`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde_json::{json, Value};

use super::*;
use crate::model::convnext::{ConvNext, ConvNextConfig};
use crate::nn::ParamInit;
use crate::quantize::lfq::SplitMix64;
use crate::train::recipe::RecipeKind;
use crate::train::stage2::is_stage2_trainable;
use crate::weights::{build_shape_only, Checkpoint};

fn convnext_config() -> ConvNextConfig {
    serde_json::from_value(
        json!({"block_setting": [[8, 16, 1], [16, 32, 1], [32, 64, 1], [64, null, 1]], "num_classes": 16}),
    )
    .unwrap()
}

/// A small ConvNeXt of the torchvision layout with random weights, written as safetensors.
fn write_convnext(path: &Path) {
    let (_, requested) =
        build_shape_only(DType::F32, &Device::Cpu, |vb| ConvNext::new(&convnext_config(), vb)).unwrap();
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
        assert_eq!(
            moved,
            is_stage2_trainable(name),
            "{name}: trainable {} but moved {moved}",
            is_stage2_trainable(name)
        );
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
                    ta.flatten_all().unwrap().to_vec1::<i64>().unwrap()
                        == tb.flatten_all().unwrap().to_vec1::<i64>().unwrap()
                }
                _ => bits(&ta) == bits(&tb),
            };
            assert!(same, "{f}: {k} differs");
        }
    }
    let state = |d: &Path| -> Value {
        let mut v: Value =
            serde_json::from_str(&std::fs::read_to_string(d.join("trainer_state.json")).unwrap()).unwrap();
        v["data_position"] = Value::Null;
        v
    };
    assert_eq!(state(a), state(b));
}

/// The discriminator's pass run alongside the generator's backward gives what it gives run after the update, bit
/// for bit: every step's components, and the checkpoint after (weights, EMA, both optimizers, the LeCam EMAs).
/// With one micro-batch an update, a loss computed outside a step (`gradients`) before each step runs a pass too,
/// which must not reach the discriminator; with two, the second micro-batch's pass starts from the LeCam EMAs the
/// first left.
#[test]
fn stage2_discriminator_pass_alongside_gives_the_sequential_bits() {
    let dir = scratch("stage2-alongside");
    for accumulation in [1, 2] {
        let mut cfg = stage2_config(&dir);
        cfg["training"]["gradient_accumulation_steps"] = json!(accumulation);
        let (mut along, mut after) =
            (Trainer::create(cfg.clone(), None, 5).unwrap(), Trainer::create(cfg, None, 5).unwrap());
        after.recipe.set_alongside(false);
        for i in 0..4 {
            let batch = images(2, i as f32);
            if accumulation == 1 {
                along.gradients(&images(2, 9.0), 2, None).unwrap();
            }
            let (a, b) = (along.step(&batch, 2, None).unwrap(), after.step(&batch, 2, None).unwrap());
            assert_eq!(a.loss.to_bits(), b.loss.to_bits(), "accumulation {accumulation}, step {i}: loss");
            let c: Vec<_> = a.components.iter().map(|(n, v)| (n.clone(), v.to_bits())).collect();
            let d: Vec<_> = b.components.iter().map(|(n, v)| (n.clone(), v.to_bits())).collect();
            assert_eq!(c, d, "accumulation {accumulation}, step {i}: components");
            assert!(a.components.iter().any(|(n, _)| n == "discriminator_loss") || accumulation == 2 && i % 2 == 0);
        }
        assert_eq!((along.recipe.taken_alongside(), after.recipe.taken_alongside()), (4, 0), "passes taken");
        let (da, db) = (dir.join(format!("along-{accumulation}")), dir.join(format!("after-{accumulation}")));
        along.save(&da, Value::Null).unwrap();
        after.save(&db, Value::Null).unwrap();
        assert_same_checkpoint(&da, &db);
    }
    std::fs::remove_dir_all(&dir).ok();
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
    assert_eq!(
        half.iter().map(|l| l.to_bits()).collect::<Vec<_>>(),
        losses[..4].iter().map(|l| l.to_bits()).collect::<Vec<_>>()
    );
    first.save(&dir.join("half"), json!({"batch": 4})).unwrap();
    drop(first);
    for f in ["discriminator.safetensors", "discriminator_optimizer.safetensors", "discriminator_lecam.safetensors"] {
        assert!(dir.join("half").join(f).is_file(), "{f} is written");
    }

    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "train::recipe_tests::stage2::stage2_resume_child_process_only_runs_when_spawned_by_the_resume_test",
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
    assert!(
        msg.contains("losses.perceptual_weights") && msg.contains("/nonexistent/convnext_small.safetensors"),
        "{msg}"
    );

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
    let (a, b) = (
        Checkpoint::open(&file).unwrap(),
        Checkpoint::open(dir.join("ckpt2").join("discriminator.safetensors")).unwrap(),
    );
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

/// Stage 2 starts as the reference's does: a stage-1 model (`init`) with the MaskGIT-VQGAN's quantizer and decoder
/// as the pixel codebook and pixel decoder (`model.vq_model.pretrained_tokenizer_weight`). Without the key the
/// stage-1 folder is refused with a hint; with a missing file `create` fails naming the key.
#[test]
fn stage2_starts_from_a_stage1_model_and_the_maskgit_pixel_decoder() {
    let dir = scratch("stage2-init");
    write_maskgit(&dir.join("maskgit"));
    let stage1 =
        json!({"model": {"vq_model": legacy_model(vq(), false)}, "dataset": {"preprocessing": {"crop_size": SIDE}}});
    crate::init::write_random_model(dir.join("stage1"), &stage1.to_string(), 8).unwrap();
    let mut cfg = stage2_config(&dir);

    let err = Trainer::create(cfg.clone(), Some(&dir.join("stage1")), 0).unwrap_err();
    assert_eq!(err.code(), "MARVEL_CHECKPOINT");
    let msg = err.to_string();
    assert!(msg.contains("missing pixel_decoder.") && msg.contains("pretrained_tokenizer_weight"), "{msg}");

    cfg["model"]["vq_model"]["pretrained_tokenizer_weight"] = json!(dir.join("maskgit").to_str().unwrap());
    let mut t = Trainer::create(cfg.clone(), Some(&dir.join("stage1")), 0).unwrap();
    let weights: HashMap<String, Tensor> = t.weights(false).unwrap().into_iter().collect();
    let (mut from_stage1, mut from_maskgit) = (0, 0);
    let stage1_file = Checkpoint::open(dir.join("stage1").join("model.safetensors")).unwrap();
    for k in stage1_file.tensors().keys() {
        assert_eq!(bits(&stage1_file.load(k, &Device::Cpu).unwrap()), bits(&weights[k]), "{k}");
        from_stage1 += 1;
    }
    let maskgit_file = Checkpoint::open(dir.join("maskgit").join("model.safetensors")).unwrap();
    for k in maskgit_file.tensors().keys().filter(|k| !k.starts_with("encoder.")) {
        assert_eq!(bits(&maskgit_file.load(k, &Device::Cpu).unwrap()), bits(&weights[&format!("pixel_{k}")]), "{k}");
        from_maskgit += 1;
    }
    assert_eq!(from_stage1 + from_maskgit, weights.len(), "every weight comes from one of the two files");
    assert!(t.step(&images(2, 0.0), 2, None).unwrap().loss.is_finite());

    cfg["model"]["vq_model"]["pretrained_tokenizer_weight"] = json!(dir.join("no-maskgit").to_str().unwrap());
    let err = Trainer::create(cfg, Some(&dir.join("stage1")), 0).unwrap_err();
    assert_eq!(err.code(), "MARVEL_IO");
    assert!(err.to_string().contains("model.vq_model.pretrained_tokenizer_weight"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}
