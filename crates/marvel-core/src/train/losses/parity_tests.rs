//! The `titok_stage2_losses` fixture: one stage-2 step of the reference (generator loss, then discriminator loss
//! with LeCam), with the fixture's tiny ConvNeXt and discriminator. Tolerances are TRAINING.md's: losses relative
//! 1e-4; the 224 input 2e-6; logits absolute 2e-3; LeCam EMAs relative 1e-5; gradients per tensor
//! max |diff| <= 1e-2 * max |expected| + 1e-9. Each test prints its worst errors (`--nocapture`).
//!
//! The fixture stores the reconstruction of image 0 only; the batch's reconstructions come from the frozen
//! TiTok's inference path (encoder, VQ, decoder, pixel decoder), checked against image 0 first. The gradient
//! w.r.t. the reconstruction is checked through `grad.pixel_decoder.conv_out.bias`: recon = conv_out(...) + bias,
//! so that bias's gradient is the per-channel sum of d loss / d recon. Every `grad.*` tensor, through the
//! trainable TiTok, is checked in `train/stage2_tests.rs`.

use std::sync::OnceLock;

use candle_core::{Device, Tensor, Var};
use serde_json::Value;

use super::*;
use crate::model::titok::Titok;
use crate::testutil::{max_abs_diff, Fixture};

const CASE: &str = "titok_stage2_losses";
const GRAD_REL: f64 = 1e-2;

struct Case {
    fx: Fixture,
    x: Tensor,
    recon: Tensor,
    cfg: Stage2LossConfig,
    global_step: u64,
}

fn case() -> &'static Case {
    static CASE_DATA: OnceLock<Case> = OnceLock::new();
    CASE_DATA.get_or_init(|| {
        let fx = Fixture::load(CASE);
        let x = fx.images_f32();
        let titok = Titok::from_pretrained(&fx.dir, &Device::Cpu).unwrap();
        let (z_q, _) = titok.encode(&x).unwrap();
        let recon = titok.decode(&z_q).unwrap();
        let err = max_abs_diff(&recon, fx.expected("recon"));
        println!("recon (image 0, inference TiTok): max |diff| {err:e}");
        assert!(err <= 1e-4, "recon: {err:e}");
        let text = std::fs::read_to_string(fx.dir.join("config.json")).unwrap();
        let config: Value = serde_json::from_str(&text).unwrap();
        let cfg: Stage2LossConfig = serde_json::from_value(config["losses"].clone()).unwrap();
        let global_step = fx.input("global_step").to_vec1::<i64>().unwrap()[0] as u64;
        Case { fx, x, recon, cfg, global_step }
    })
}

fn loss_module(c: &Case) -> Stage2Loss {
    let dir = &c.fx.dir;
    Stage2Loss::load(c.cfg.clone(), dir.join("perceptual.safetensors"), dir.join("discriminator.safetensors"), &Device::Cpu)
        .unwrap()
}

fn scalar(t: &Tensor) -> f64 {
    f64::from(t.flatten_all().unwrap().to_vec1::<f32>().unwrap()[0])
}

/// Relative error of a loss value; asserts 1e-4.
fn check_loss(label: &str, actual: f64, expected: &Tensor) -> f64 {
    let e = scalar(expected);
    let rel = (actual - e).abs() / e.abs().max(1e-30);
    let ok = if e == 0.0 { actual == 0.0 } else { rel <= 1e-4 };
    assert!(ok, "{label}: {actual} vs {e} (relative {rel:e})");
    println!("{label}: {actual} vs {e}, relative {rel:.2e}");
    rel
}

fn check_abs(label: &str, actual: &Tensor, expected: &Tensor, tol: f32) {
    let err = max_abs_diff(actual, expected);
    println!("{label}: max |diff| {err:e}");
    assert!(err <= tol, "{label}: max |diff| {err:e} > {tol:e}");
}

/// Per-tensor gradient check; returns max|diff| / max|expected|.
fn check_grad(label: &str, actual: &Tensor, expected: &Tensor) -> f64 {
    assert_eq!(actual.dims(), expected.dims(), "{label}: shape");
    let err = f64::from(max_abs_diff(actual, expected));
    let scale = f64::from(expected.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap());
    if err > GRAD_REL * scale + 1e-9 {
        println!("FAIL {label}: max |diff| {err:e} > {GRAD_REL} * {scale:e}");
        return f64::INFINITY;
    }
    err / scale.max(1e-30)
}

#[test]
#[cfg_attr(not(marvel_parity), ignore = "parity fixtures not found at ../shared/parity or $MARVEL_PARITY_DIR")]
fn perceptual_input_and_logits_match() {
    let c = case();
    let loss = loss_module(c);
    let p = loss.perceptual();
    let input = p.preprocess(&c.x).unwrap();
    let first = input.narrow(0, 0, 1).unwrap().narrow(1, 0, 1).unwrap();
    check_abs("g_perceptual_input_224", &first, c.fx.expected("g_perceptual_input_224"), 2e-6);
    check_abs("g_perceptual_logits_input", &p.logits(&c.x).unwrap(), c.fx.expected("g_perceptual_logits_input"), 2e-3);
    check_abs("g_perceptual_logits_recon", &p.logits(&c.recon).unwrap(), c.fx.expected("g_perceptual_logits_recon"), 2e-3);
}

#[test]
#[cfg_attr(not(marvel_parity), ignore = "parity fixtures not found at ../shared/parity or $MARVEL_PARITY_DIR")]
fn discriminator_logits_match() {
    let c = case();
    let loss = loss_module(c);
    let d = loss.discriminator();
    check_abs("d_logits_real_map", &d.forward(&c.x).unwrap(), c.fx.expected("d_logits_real_map"), 2e-3);
    let fake = d.forward(&c.recon).unwrap();
    check_abs("d_logits_fake_map", &fake, c.fx.expected("d_logits_fake_map"), 2e-3);
    check_abs("g_disc_logits_fake", &fake, c.fx.expected("g_disc_logits_fake"), 2e-3);
}

#[test]
#[cfg_attr(not(marvel_parity), ignore = "parity fixtures not found at ../shared/parity or $MARVEL_PARITY_DIR")]
fn generator_step_losses_and_reconstruction_gradient_match() {
    let c = case();
    let loss = loss_module(c);
    let recon = Var::from_tensor(&c.recon).unwrap();
    // The stage-2 TiTok's quantizer loss is zeroed by its frozen encode.
    let q = Tensor::new(0f32, &Device::Cpu).unwrap();
    let g = loss.generator(&c.x, recon.as_tensor(), c.global_step, &q).unwrap();
    let e = |n: &str| c.fx.expected(n);
    check_loss("g_reconstruction_loss", scalar(&g.reconstruction), e("g_reconstruction_loss"));
    check_loss("g_perceptual_loss_unweighted", scalar(&g.perceptual_unweighted), e("g_perceptual_loss_unweighted"));
    check_loss("g_perceptual_loss", scalar(&g.perceptual), e("g_perceptual_loss"));
    check_loss("g_quantizer_loss", scalar(&g.quantizer), e("g_quantizer_loss"));
    check_loss("g_gan_loss", scalar(&g.gan), e("g_gan_loss"));
    check_loss("g_weighted_gan_loss", scalar(&g.weighted_gan), e("g_weighted_gan_loss"));
    check_loss("g_total_loss", scalar(&g.total), e("g_total_loss"));
    check_loss("g_discriminator_factor", g.discriminator_factor, e("g_discriminator_factor"));
    check_loss("g_d_weight", g.d_weight, e("g_d_weight"));
    check_abs("g_disc_logits_fake", g.disc_logits_fake.as_ref().unwrap(), e("g_disc_logits_fake"), 2e-3);

    let grads = g.total.backward().unwrap();
    let d_recon = grads.get(recon.as_tensor()).expect("the loss reaches the reconstruction");
    let bias_grad = d_recon.sum_keepdim((0, 2, 3)).unwrap().flatten_all().unwrap();
    let rel = check_grad("grad.pixel_decoder.conv_out.bias", &bias_grad, e("grad.pixel_decoder.conv_out.bias"));
    println!("grad.pixel_decoder.conv_out.bias (sum of d loss / d recon): {rel:.2e} of max |expected|");
    assert!(rel.is_finite());
    // The discriminator is frozen in this step.
    assert!(loss.discriminator_params().iter().all(|(_, v)| grads.get(v.as_tensor()).is_none()));

    // Before discriminator_start: no GAN term, the rest unchanged.
    let early = loss.generator(&c.x, recon.as_tensor(), c.global_step - 1, &q).unwrap();
    assert!(early.disc_logits_fake.is_none() && scalar(&early.weighted_gan) == 0.0 && early.discriminator_factor == 0.0);
    let without_gan = scalar(e("g_total_loss")) - scalar(e("g_weighted_gan_loss"));
    assert!((scalar(&early.total) - without_gan).abs() <= 1e-4 * without_gan.abs());
}

#[test]
#[cfg_attr(not(marvel_parity), ignore = "parity fixtures not found at ../shared/parity or $MARVEL_PARITY_DIR")]
fn discriminator_step_losses_gradients_and_lecam_match() {
    let c = case();
    let mut loss = loss_module(c);
    let ema = LecamEma {
        real: scalar(c.fx.input("lecam_ema_real_before")) as f32,
        fake: scalar(c.fx.input("lecam_ema_fake_before")) as f32,
    };
    loss.set_lecam(ema);
    let d = loss.discriminator_step(&c.x, &c.recon, c.global_step).unwrap();
    let e = |n: &str| c.fx.expected(n);
    check_loss("d_hinge_loss", scalar(&d.hinge), e("d_hinge_loss"));
    check_loss("d_lecam_loss_unweighted", scalar(&d.lecam_unweighted), e("d_lecam_loss_unweighted"));
    check_loss("d_lecam_loss", scalar(&d.lecam), e("d_lecam_loss"));
    check_loss("d_discriminator_loss", scalar(&d.total), e("d_discriminator_loss"));
    check_loss("d_logits_real", f64::from(d.mean_real), e("d_logits_real"));
    check_loss("d_logits_fake", f64::from(d.mean_fake), e("d_logits_fake"));
    check_abs("d_logits_real_map", &d.logits_real, e("d_logits_real_map"), 2e-3);
    check_abs("d_logits_fake_map", &d.logits_fake, e("d_logits_fake_map"), 2e-3);
    // Positions where the hinge's relu switches differently from the reference's evaluation (its two
    // evaluations of D(recon) differ by up to 7e-4): each such position moves the gradients by a step.
    let flips = |ours: &Tensor, theirs: &Tensor, sign: f64| {
        let a = ours.affine(sign, 1.0).unwrap().gt(0f64).unwrap();
        let b = theirs.affine(sign, 1.0).unwrap().gt(0f64).unwrap();
        a.ne(&b).unwrap().to_dtype(candle_core::DType::U32).unwrap().sum_all().unwrap().to_scalar::<u32>().unwrap()
    };
    println!(
        "hinge relu masks differing from the reference: real {}, fake {}",
        flips(&d.logits_real, e("d_logits_real_map"), -1.0),
        flips(&d.logits_fake, e("d_logits_fake_map"), 1.0)
    );
    let after = loss.lecam();
    for (label, actual) in [("lecam_ema_real_after", after.real), ("lecam_ema_fake_after", after.fake)] {
        let want = scalar(e(label));
        let rel = (f64::from(actual) - want).abs() / want.abs();
        println!("{label}: {actual} vs {want}, relative {rel:.2e}");
        assert!(rel <= 1e-5, "{label}: {actual} vs {want}");
    }

    let store = d.total.backward().unwrap();
    let grads = crate::train::Gradients::from_store(loss.discriminator_params(), &store).unwrap();
    assert_eq!(grads.len(), 18, "every discriminator parameter gets a gradient");
    let mut worst = (0.0, String::new());
    for (name, g) in grads.iter() {
        let rel = check_grad(&format!("dgrad.{name}"), g, e(&format!("dgrad.{name}")));
        println!("dgrad.{name}: {rel:.2e} of max |expected|");
        if rel >= worst.0 {
            worst = (rel, name.to_string());
        }
    }
    println!("dgrad: worst {} at {:.2e} of max |expected|", worst.1, worst.0);
    assert!(worst.0.is_finite(), "some gradients differ (FAIL lines above)");
}
