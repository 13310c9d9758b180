//! The `optim_schedule_ema` fixture: AdamW runs, EMA, clipping, schedules and parameter groups of the reference
//! training code. Optimizer, EMA and clipped values: per tensor, max |difference| <= 1e-6 * max |expected|;
//! learning rates relative 1e-12; groups exact. Each test prints its worst errors (`--nocapture`).

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use serde_json::Value;

use super::*;
use crate::testutil::{max_abs_diff, parity_dir, Fixture};

const CASE: &str = "optim_schedule_ema";
const REL: f64 = 1e-6;

struct Case {
    fx: Fixture,
    config: Value,
    p0: HashMap<String, Tensor>,
    names: Vec<String>,
}

impl Case {
    fn load() -> Case {
        let fx = Fixture::load(CASE);
        let text = std::fs::read_to_string(fx.dir.join("config.json")).unwrap();
        let config: Value = serde_json::from_str(&text).unwrap();
        let p0 = candle_core::safetensors::load(fx.dir.join("model.safetensors"), &Device::Cpu).unwrap();
        let names = config["params"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
        Case { fx, config, p0, names }
    }

    fn params(&self) -> Vec<(String, Var)> {
        self.names.iter().map(|n| (n.clone(), Var::from_tensor(&self.p0[n]).unwrap())).collect()
    }

    fn grads(&self, step: usize) -> Gradients {
        let mut g = Gradients::new();
        for n in &self.names {
            g.insert(n, self.fx.input(&format!("grad_step{step}.{n}")).clone()).unwrap();
        }
        g
    }

    fn adamw_config(&self, key: &str) -> AdamWConfig {
        let p = &self.config[key]["params"];
        let f = |k: &str| p[k].as_f64().unwrap();
        AdamWConfig {
            learning_rate: f("learning_rate"),
            beta1: f("beta1"),
            beta2: f("beta2"),
            weight_decay: f("weight_decay"),
            epsilon: f("epsilon"),
        }
    }

    fn ema_config(&self) -> EmaConfig {
        let e = &self.config["ema"];
        let f = |k: &str| e[k].as_f64().unwrap();
        EmaConfig {
            decay: f("decay"),
            min_decay: f("min_decay"),
            update_after_step: e["update_after_step"].as_u64().unwrap(),
            update_every: e["update_every"].as_u64().unwrap(),
            use_ema_warmup: e["use_ema_warmup"].as_bool().unwrap(),
            inv_gamma: f("inv_gamma"),
            power: f("power"),
        }
    }
}

/// How many values of `actual` equal `expected` bit for bit.
fn identical(actual: &Tensor, expected: &Tensor) -> usize {
    let a = actual.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let e = expected.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    a.iter().zip(&e).filter(|(x, y)| x.to_bits() == y.to_bits()).count()
}

/// Compares `actual` with `expected` at the per-tensor relative tolerance; returns max|diff| / max|expected|.
fn check(label: &str, actual: &Tensor, expected: &Tensor) -> f64 {
    assert_eq!(actual.dims(), expected.dims(), "{label}: shape");
    let err = f64::from(max_abs_diff(actual, expected));
    let scale = f64::from(expected.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap());
    let rel = if scale > 0.0 { err / scale } else { err };
    assert!(err <= REL * scale, "{label}: max |diff| {err:e} > {REL:e} * max |expected| {scale:e}");
    rel
}

/// One AdamW run of the fixture with its EMA; prints the worst relative error per tensor kind.
fn adamw_run(run: &str, config_key: &str) {
    let case = Case::load();
    let params = case.params();
    let mut opt = AdamW::new(case.adamw_config(config_key), params.clone()).unwrap();
    let mut ema = Ema::new(case.ema_config(), &params, |_| true).unwrap();
    let expected_decays = case.fx.expected("ema_decay").to_vec1::<f64>().unwrap();
    // kind -> (worst relative error, its tensor, bit-identical values, values)
    let mut worst: HashMap<String, (f64, String, usize, usize)> = HashMap::new();
    let mut note = |kind: String, name: &str, actual: &Tensor, expected: &Tensor| {
        let rel = check(&format!("{kind}.{name}"), actual, expected);
        let w = worst.entry(kind).or_insert((0.0, String::new(), 0, 0));
        if rel >= w.0 {
            (w.0, w.1) = (rel, name.to_string());
        }
        w.2 += identical(actual, expected);
        w.3 += expected.elem_count();
    };
    for step in 1..=5 {
        opt.step(&case.grads(step)).unwrap();
        let decay = ema.update(&params).unwrap().unwrap();
        assert_eq!(decay, expected_decays[step - 1], "EMA decay at step {step}");
        if step % 2 == 1 {
            for (name, var) in &params {
                let kind = format!("adamw_{run}_step{step}");
                note(kind.clone(), name, var.as_tensor(), case.fx.expected(&format!("{kind}.{name}")));
                let kind = format!("ema_{run}_step{step}");
                note(kind.clone(), name, ema.shadow(name).unwrap(), case.fx.expected(&format!("{kind}.{name}")));
            }
        }
    }
    for name in &case.names {
        let (m, v, t) = opt.moments(name).unwrap();
        assert_eq!(t, 5);
        let kind = format!("adamw_{run}_exp_avg");
        note(kind.clone(), name, m, case.fx.expected(&format!("{kind}.{name}")));
        let kind = format!("adamw_{run}_exp_avg_sq");
        note(kind.clone(), name, v, case.fx.expected(&format!("{kind}.{name}")));
    }
    let mut kinds: Vec<_> = worst.into_iter().collect();
    kinds.sort_by(|a, b| a.0.cmp(&b.0));
    for (kind, (rel, name, same, total)) in kinds {
        println!("{kind}: worst max|diff|/max|expected| {rel:.3e} ({name}); {same} of {total} values bit-identical");
    }
}

#[test]
#[cfg_attr(not(marvel_parity), ignore = "parity fixtures not found at ../shared/parity or $MARVEL_PARITY_DIR")]
fn adamw_and_ema_match_the_reference_with_the_stage1_yaml() {
    adamw_run("yaml", "optimizer");
}

#[test]
#[cfg_attr(not(marvel_parity), ignore = "parity fixtures not found at ../shared/parity or $MARVEL_PARITY_DIR")]
fn adamw_and_ema_match_the_reference_with_a_large_rate_and_decay() {
    adamw_run("large", "optimizer_large_lr");
}

#[test]
#[cfg_attr(not(marvel_parity), ignore = "parity fixtures not found at ../shared/parity or $MARVEL_PARITY_DIR")]
fn clipping_matches_clip_grad_norm() {
    let case = Case::load();
    let mut grads = case.grads(1);
    let max_norm = case.config["training"]["max_grad_norm"].as_f64().unwrap();
    let out = clip_grad_norm(&mut grads, max_norm).unwrap();
    let total = case.fx.expected("clip_total_norm").to_vec1::<f32>().unwrap()[0];
    let coef = case.fx.expected("clip_coef").to_vec1::<f32>().unwrap()[0];
    println!("clip_total_norm {} (expected {total}), clip_coef {:e} (expected {coef:e})", out.total_norm, out.coef);
    assert!(f64::from((out.total_norm - total).abs()) <= REL * f64::from(total), "total norm");
    assert!(f64::from((out.coef - coef).abs()) <= REL * f64::from(coef), "coef");
    assert!(out.coef < 1.0, "the fixture's step-1 gradients are meant to be clipped");
    let mut worst = (0.0, String::new());
    for name in &case.names {
        let key = format!("clip_grad.{name}");
        let rel = check(&key, grads.get(name).unwrap(), case.fx.expected(&key));
        if rel >= worst.0 {
            worst = (rel, name.clone());
        }
    }
    println!("clip_grad: worst max|diff|/max|expected| {:.3e} ({})", worst.0, worst.1);
}

#[test]
#[cfg_attr(not(marvel_parity), ignore = "parity fixtures not found at ../shared/parity or $MARVEL_PARITY_DIR")]
fn schedules_match_the_reference_cosine_with_warmup() {
    let case = Case::load();
    let evaluated = &case.config["lr_scheduler"]["evaluated"];
    let blocks = &case.config["lr_scheduler"];
    for (name, end_lr) in [
        ("stage1", &blocks["stage1"]["params"]["end_lr"]),
        ("stage2_generator", &blocks["stage2"]["params"]["end_lr"]),
        ("stage2_discriminator", &blocks["stage2"]["params"]["end_lr"]),
        ("small", &blocks["small"]["end_lr"]),
    ] {
        let e = &evaluated[name];
        let end_lr = end_lr.as_f64().unwrap();
        let schedule = CosineSchedule::new(
            e["base_lr"].as_f64().unwrap(),
            end_lr,
            e["num_warmup_steps"].as_u64().unwrap(),
            e["num_training_steps"].as_u64().unwrap(),
        )
        .unwrap();
        let steps = case.fx.input(&format!("lr_steps.{name}")).to_vec1::<i64>().unwrap();
        let lrs = case.fx.expected(&format!("lr.{name}")).to_vec1::<f64>().unwrap();
        let mut worst = 0f64;
        for (&k, &want) in steps.iter().zip(&lrs) {
            let got = schedule.lr(k as u64);
            let rel = if want == 0.0 { got.abs() } else { ((got - want) / want).abs() };
            assert!(rel <= 1e-12, "lr.{name} at step {k}: {got:e} vs {want:e}");
            worst = worst.max(rel);
        }
        println!("lr.{name}: {} steps, worst relative error {worst:.3e}", steps.len());
    }
}

/// Name -> shape of every tensor in a safetensors file's header, names prefixed.
fn shapes(path: &std::path::Path, prefix: &str, out: &mut HashMap<String, Vec<usize>>) {
    let ckpt = crate::weights::Checkpoint::open(path).unwrap();
    for (name, info) in ckpt.tensors() {
        out.insert(format!("{prefix}{name}"), info.shape.clone());
    }
}

#[test]
#[cfg_attr(not(marvel_parity), ignore = "parity fixtures not found at ../shared/parity or $MARVEL_PARITY_DIR")]
fn weight_decay_groups_match_create_optimizer() {
    let case = Case::load();
    let root = parity_dir();
    let mut s1 = HashMap::new();
    shapes(&root.join("titok_stage1_grads/model.safetensors"), "", &mut s1);
    let mut s2 = HashMap::new();
    shapes(&root.join("titok_stage2_losses/model.safetensors"), "", &mut s2);
    shapes(&root.join("titok_stage2_losses/discriminator.safetensors"), "discriminator.", &mut s2);
    shapes(&root.join("titok_stage2_losses/perceptual.safetensors"), "perceptual_loss.convnext.", &mut s2);
    let mut counts = [0usize; 2];
    for (setting, shapes) in [("group_s1.", &s1), ("group_s2.", &s2)] {
        let mut checked = 0;
        for (key, t) in &case.fx.expected {
            let Some(name) = key.strip_prefix(setting) else { continue };
            let group = t.to_dtype(DType::I64).unwrap().to_vec1::<i64>().unwrap()[0];
            if group < 0 {
                continue; // frozen: in no optimizer, which is the trainer's freezing, not the decay rule
            }
            let shape = shapes.get(name).unwrap_or_else(|| panic!("no shape for {name}"));
            let decayed = !excluded_from_weight_decay(name, shape);
            assert_eq!(decayed, group == 1, "{setting}{name} {shape:?}");
            counts[usize::from(decayed)] += 1;
            checked += 1;
        }
        assert!(checked > 50, "{setting}: only {checked} names checked");
    }
    println!("groups: {} no-decay and {} decay parameters agree", counts[0], counts[1]);
}
