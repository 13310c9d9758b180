//! The stage-2 recipe against `titok_stage2_losses`: the frozen encoder's tokens, the reconstruction, the generator
//! losses and the gradient of every trainable model parameter (decoder, pixel codebook, pixel decoder), per
//! TRAINING.md's tolerances (losses relative 1e-4, recon absolute 1e-4, gradients per tensor max |diff| <= 1e-2 *
//! max |expected| + 1e-9, the listed float-noise tensors absolute 1e-6). Each test prints its worst tensor
//! (`--nocapture`). Also: what stage 2 trains gets a non-zero gradient and the frozen parameters none, even when
//! they are variables too; and a few generator + discriminator AdamW steps lower the reconstruction loss.

use std::collections::BTreeSet;

use candle_core::{DType, Device, Tensor};

use super::losses::{LecamEma, Stage2Loss, Stage2LossConfig};
use super::stage2::*;
use super::{clip_grad_norm, load_trainable, AdamW, AdamWConfig, Gradients};
use crate::config::TitokConfig;
use crate::model::titok::Titok;
use crate::testutil::{max_abs_diff, Fixture};
use crate::weights::LoadOptions;

const CASE: &str = "titok_stage2_losses";
const GRAD_REL: f64 = 1e-2;
/// TRAINING.md's float-noise gradients of this case: zero in exact arithmetic, compared absolutely.
const NOISE: [&str; 1] = ["pixel_decoder.up.1.upsample_conv.bias"];
const NOISE_ABS: f64 = 1e-6;

fn config(fx: &Fixture) -> TitokConfig {
    TitokConfig::from_path(fx.dir.join("config.json")).unwrap()
}

fn loss_module(fx: &Fixture) -> Stage2Loss {
    let text = std::fs::read_to_string(fx.dir.join("config.json")).unwrap();
    let config: serde_json::Value = serde_json::from_str(&text).unwrap();
    let cfg: Stage2LossConfig = serde_json::from_value(config["losses"].clone()).unwrap();
    let dir = &fx.dir;
    Stage2Loss::load(cfg, dir.join("perceptual.safetensors"), dir.join("discriminator.safetensors"), &Device::Cpu)
        .unwrap()
}

fn global_step(fx: &Fixture) -> u64 {
    fx.input("global_step").to_vec1::<i64>().unwrap()[0] as u64
}

fn scalar(t: &Tensor) -> f64 {
    f64::from(t.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()[0])
}

fn max_abs(t: &Tensor) -> f64 {
    f64::from(t.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap())
}

#[test]
#[cfg_attr(not(marvel_parity), ignore = "parity fixtures not found at ../shared/parity or $MARVEL_PARITY_DIR")]
fn parity_titok_stage2_generator_gradients() {
    let fx = Fixture::load(CASE);
    let (model, vars) = load_stage2_model(&config(&fx), fx.dir.join("model.safetensors"), &Device::Cpu).unwrap();
    // Exactly the parameters the reference trains (requires_grad), the set the fixture has gradients for.
    let ours: BTreeSet<&str> = vars.iter().map(|(n, _)| n.as_str()).collect();
    let theirs: BTreeSet<&str> = fx.expected.keys().filter_map(|k| k.strip_prefix("grad.")).collect();
    assert_eq!(ours, theirs, "trainable parameters differ from the fixture's gradients");

    let x = fx.images_f32();
    let out = stage2_forward(&model, &x).unwrap();
    let want_tokens = fx.expected("tokens").flatten_all().unwrap().to_vec1::<i64>().unwrap();
    let got_tokens = out.tokens.to_dtype(DType::I64).unwrap().flatten_all().unwrap().to_vec1::<i64>().unwrap();
    assert_eq!(got_tokens, want_tokens, "tokens of the frozen encoder");
    let recon_err = max_abs_diff(&out.recon, fx.expected("recon"));
    println!("recon (image 0, trainable path): max |diff| {recon_err:e}");
    assert!(recon_err <= 1e-4, "recon: {recon_err:e}");

    let loss = loss_module(&fx);
    let g = loss.generator(&x, &out.recon, global_step(&fx), &out.quantizer_loss).unwrap();
    for (label, ours) in [
        ("g_total_loss", &g.total),
        ("g_reconstruction_loss", &g.reconstruction),
        ("g_perceptual_loss", &g.perceptual),
        ("g_gan_loss", &g.gan),
        ("g_quantizer_loss", &g.quantizer),
    ] {
        let (got, want) = (scalar(ours), scalar(fx.expected(label)));
        let rel = (got - want).abs() / want.abs().max(1e-30);
        println!("{label}: {got} vs {want}, relative {rel:.2e}");
        assert!(if want == 0.0 { got == 0.0 } else { rel <= 1e-4 }, "{label}: {got} vs {want}");
    }

    let store = g.total.backward().unwrap();
    let grads = Gradients::from_store(&vars, &store).unwrap();
    assert_eq!(grads.len(), vars.len(), "every trainable parameter gets a gradient");
    let mut ratios = Vec::new();
    let mut worst_noise = (String::new(), 0f64);
    let mut failures = Vec::new();
    for (name, got) in grads.iter() {
        let want = fx.expected(&format!("grad.{name}"));
        assert_eq!(got.dims(), want.dims(), "grad.{name}: shape");
        let err = f64::from(max_abs_diff(got, want));
        if NOISE.contains(&name) {
            println!("grad.{name} (float noise): max |diff| {err:.2e}");
            if err > NOISE_ABS {
                failures.push(format!("grad.{name}: max |diff| {err:.3e} > {NOISE_ABS:e}"));
            }
            if err >= worst_noise.1 {
                worst_noise = (name.to_string(), err);
            }
            continue;
        }
        let scale = max_abs(want);
        let ratio = err / scale.max(1e-30);
        if err > GRAD_REL * scale + 1e-9 {
            failures.push(format!("grad.{name}: max |diff| {err:.3e} > {GRAD_REL} x max |expected| {scale:.3e}"));
        }
        ratios.push((ratio, name.to_string()));
    }
    ratios.sort_by(|a, b| b.0.total_cmp(&a.0));
    let top: Vec<String> = ratios.iter().take(5).map(|(r, n)| format!("grad.{n} {r:.2e}")).collect();
    println!(
        "{CASE}: {} generator gradients; worst (max |diff| / max |expected|): {}; noise tensor grad.{} off by {:.2e}",
        grads.len(),
        top.join(", "),
        worst_noise.0,
        worst_noise.1
    );
    assert!(failures.is_empty(), "gradients outside the tolerance:\n{}", failures.join("\n"));
}

/// Issue 9, proof point 4 for stage 2: with every parameter a variable (as a trainer that freezes by leaving
/// parameters out of the optimizer would hold them), the stage-2 forward and loss give each trainable parameter a
/// non-zero gradient and each frozen one none; the prefix loader makes only the trainable ones variables.
#[test]
#[cfg_attr(not(marvel_parity), ignore = "parity fixtures not found at ../shared/parity or $MARVEL_PARITY_DIR")]
fn stage2_trains_exactly_decoder_pixel_codebook_and_pixel_decoder() {
    assert_eq!(stage2_trainable_prefixes(), ["decoder.", "pixel_quantize.", "pixel_decoder."]);
    let fx = Fixture::load(CASE);
    let cfg = config(&fx);
    let weights = fx.dir.join("model.safetensors");
    let (model, all) =
        load_trainable(&weights, &Device::Cpu, &LoadOptions::default(), |_| true, |vb| Titok::new(&cfg, vb)).unwrap();
    // One image keeps the backward pass short; the recipe's whole generator loss.
    let x = fx.images_f32().narrow(0, 0, 1).unwrap();
    let out = stage2_forward(&model, &x).unwrap();
    let g = loss_module(&fx).generator(&x, &out.recon, global_step(&fx), &out.quantizer_loss).unwrap();
    let store = g.total.backward().unwrap();

    let (mut trained, mut frozen) = (0, 0);
    for (name, var) in &all {
        let grad = store.get(var.as_tensor());
        if is_stage2_trainable(name) {
            let grad = grad.unwrap_or_else(|| panic!("{name}: trainable but no gradient"));
            assert!(max_abs(grad) > 0.0, "{name}: zero gradient");
            trained += 1;
        } else {
            assert!(grad.is_none(), "{name}: frozen but got a gradient");
            frozen += 1;
        }
    }
    println!("stage 2: {trained} trainable parameters with non-zero gradients, {frozen} frozen without");
    assert_eq!((trained, frozen), (127, 37));
    assert!(["latent_tokens", "quantize.embedding.weight", "encoder.conv1.weight"].iter().all(|n| !is_stage2_trainable(n)));

    // The stage-2 loader: the same trainable set as variables, in the model's order, the rest plain tensors.
    let (_, vars) = load_stage2_model(&cfg, &weights, &Device::Cpu).unwrap();
    let want: Vec<&str> = all.iter().map(|(n, _)| n.as_str()).filter(|n| is_stage2_trainable(n)).collect();
    assert_eq!(vars.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), want);
}

/// A stage-1 model (no pixel decoder) is refused by the stage-2 recipe with a message naming what is missing.
#[test]
#[cfg_attr(not(marvel_parity), ignore = "parity fixtures not found at ../shared/parity or $MARVEL_PARITY_DIR")]
fn stage2_refuses_a_model_without_pixel_decoder() {
    let fx = Fixture::load("titok_stage1_grads");
    let err = load_stage2_model(&config(&fx), fx.dir.join("model.safetensors"), &Device::Cpu).unwrap_err();
    assert_eq!(err.code(), "MARVEL_CONFIG");
    assert!(err.to_string().contains("finetune_decoder"), "{err}");
}

/// A few steps of the reference loop (generator: backward, clip to 1.0, AdamW; discriminator: its loss on the same
/// reconstructions, clip, its own AdamW) lower the reconstruction loss of the image they train on, leave the frozen
/// encoder's tokens as they were, and move the discriminator. Adam's first step moves every parameter by about the
/// learning rate whatever its gradient's size, so the loss need not fall at every step; it must fall overall.
#[test]
#[cfg_attr(not(marvel_parity), ignore = "parity fixtures not found at ../shared/parity or $MARVEL_PARITY_DIR")]
fn stage2_adamw_steps_lower_the_reconstruction_loss() {
    let fx = Fixture::load(CASE);
    let (model, vars) = load_stage2_model(&config(&fx), fx.dir.join("model.safetensors"), &Device::Cpu).unwrap();
    let mut loss = loss_module(&fx);
    loss.set_lecam(LecamEma::default());
    // The stage-2 yaml's betas and weight decay; a larger rate than its 1e-4 so that three steps show.
    let adamw = AdamWConfig { learning_rate: 3e-4, beta1: 0.9, beta2: 0.999, weight_decay: 1e-4, epsilon: 1e-8 };
    let mut g_opt = AdamW::new(adamw, vars.clone()).unwrap();
    let mut d_opt = AdamW::new(adamw, loss.discriminator_params().to_vec()).unwrap();
    let x = fx.images_f32().narrow(0, 0, 1).unwrap();
    let step = global_step(&fx);
    let tokens_before = stage2_forward(&model, &x).unwrap().tokens.to_vec2::<u32>().unwrap();
    let d_before: Vec<Tensor> = loss.discriminator_params().iter().map(|(_, v)| v.as_tensor().copy().unwrap()).collect();

    let (mut curve, mut totals) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        let out = stage2_forward(&model, &x).unwrap();
        let g = loss.generator(&x, &out.recon, step, &out.quantizer_loss).unwrap();
        curve.push(scalar(&g.reconstruction));
        totals.push(scalar(&g.total));
        let mut grads = Gradients::from_store(&vars, &g.total.backward().unwrap()).unwrap();
        clip_grad_norm(&mut grads, 1.0).unwrap();
        g_opt.step(&grads).unwrap();

        let d = loss.discriminator_step(&x, &out.recon, step).unwrap();
        let mut d_grads = Gradients::from_store(loss.discriminator_params(), &d.total.backward().unwrap()).unwrap();
        clip_grad_norm(&mut d_grads, 1.0).unwrap();
        d_opt.step(&d_grads).unwrap();
    }
    let out = stage2_forward(&model, &x).unwrap();
    let last = scalar(&(&x - &out.recon).unwrap().sqr().unwrap().mean_all().unwrap());
    curve.push(last);
    println!("stage 2, 3 AdamW steps at lr 3e-4: reconstruction loss {curve:?}, generator loss {totals:?}");
    assert!(last < 0.99 * curve[0], "the reconstruction loss does not fall by 1%: {curve:?}");

    // The frozen encoder and quantizer still give the same tokens.
    assert_eq!(out.tokens.to_vec2::<u32>().unwrap(), tokens_before);
    let moved = loss.discriminator_params().iter().zip(&d_before);
    assert!(moved.into_iter().all(|((_, v), b)| max_abs_diff(v.as_tensor(), b) > 0.0), "every D parameter moves");
}

#[test]
fn trainable_prefixes_select_by_reference_key() {
    assert!(is_stage2_trainable("decoder.ffn.2.weight"));
    assert!(is_stage2_trainable("pixel_quantize.embedding.weight"));
    assert!(is_stage2_trainable("pixel_decoder.conv_out.bias"));
    // `decoder.` must not match the encoder or other keys that merely contain it.
    for frozen in ["encoder.ln_post.weight", "latent_tokens", "quantize.embedding.weight", "pixel_decoderx.w"] {
        assert!(!is_stage2_trainable(frozen), "{frozen}");
    }
}
