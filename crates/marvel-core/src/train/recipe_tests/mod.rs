//! The stage-1 and stage-2 recipes through the [`Trainer`], on tiny 64x64 models with fresh weights: the loss
//! falls over a few steps; every trainable tensor gets a non-zero gradient and the frozen ones none and stay
//! unchanged (issue 9, proof point 4); the networks a config names are loaded in `create`, and a missing file is
//! refused there; stage 2 saved and resumed in a fresh process continues bit for bit. This module holds what
//! both recipes' tests share.

mod stage1;
mod stage2;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use serde_json::{json, Value};

use super::trainer::Trainer;
use crate::model::maskgit::{MaskgitConfig, MaskgitVqgan};
use crate::quantize::lfq::SplitMix64;

pub(super) const SIDE: usize = 64;

pub(super) fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("marvel-recipes-{name}-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `n` distinct smooth 64x64 images, (n, 64, 64, 3) bytes.
pub(super) fn images(n: usize, phase: f32) -> Vec<u8> {
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

pub(super) fn common(model: Value, losses: Value, lr: f64) -> Value {
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
pub(super) fn legacy_model(quantizer: Value, finetune_decoder: bool) -> Value {
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

pub(super) fn vq() -> Value {
    json!({"quantize_mode": "vq", "codebook_size": 64, "use_l2_norm": true, "commitment_cost": 0.25})
}

pub(super) fn lfq() -> Value {
    json!({"quantize_mode": "lfq", "num_depths": 3, "depth_dropout": 0.5})
}

pub(super) fn max_abs(t: &Tensor) -> f32 {
    t.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

pub(super) fn snapshot(t: &Trainer) -> HashMap<String, Tensor> {
    t.parameters().iter().map(|(n, v)| (n.clone(), v.as_tensor().copy().unwrap())).collect()
}

pub(super) use crate::testutil::f32_bits as bits;

/// Proof point 4 through the trainer: one micro-batch's gradients cover exactly the trainable parameters, each
/// non-zero; returns how many.
pub(super) fn check_gradients(t: &mut Trainer, imgs: &[u8], n: usize, proxy: Option<&[i32]>) -> usize {
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
pub(super) fn train(t: &mut Trainer, steps: usize, proxy: bool) -> Vec<f32> {
    let batches = [images(2, 0.0), images(2, 0.5)];
    let proxies = [codes(2), codes(2).iter().map(|c| (c + 5) % 1024).collect::<Vec<_>>()];
    (0..steps)
        .map(|i| {
            let p = proxy.then(|| proxies[i % 2].as_slice());
            t.step(&batches[i % 2], 2, p).unwrap().loss
        })
        .collect()
}

/// Fixed proxy codes for `n` images: a pattern the head can learn, different per image.
pub(super) fn codes(n: usize) -> Vec<i32> {
    (0..n * 16).map(|i| ((i * 37 + i / 16 * 11) % 1024) as i32).collect()
}

/// A MaskGIT-VQGAN for 64x64 images with random weights, written as a model folder.
pub(super) fn write_maskgit(dir: &Path) -> MaskgitVqgan {
    // The sizes of the stage-2 tests' pixel decoder, so that it can start from this network.
    let cfg = MaskgitConfig {
        hidden_channels: 8,
        num_res_blocks: 1,
        z_channels: 8,
        norm_num_groups: 4,
        resolution: SIDE,
        ..MaskgitConfig::default()
    };
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
