//! The stage-2 step's components one by one, in CPU seconds, for comparison with `bench/python/stage2_parts_torch.py`
//! (the same components of `train_stage2_torch.py`'s step): where bench/train.sh's stage-2 ratio is lost.
//!
//! - `decode`: the frozen encoder + quantizer, then the decoder ViT and pixel decoder forward and backward into
//!   the trainable parameters (from `sum(recon · r)`, a fixed random r);
//! - `perceptual`: the perceptual loss forward and backward into the reconstruction;
//! - `gan_generator`: the frozen discriminator's D(recon) and its hinge backward into the reconstruction;
//! - `discriminator_step`: D(x), D(recon) and the hinge backward into the discriminator's weights.
//!
//! Prints one JSON line: per component the median CPU seconds (user + system, all threads: steadier than the
//! wall time on a shared machine) and the median wall seconds of RUNS calls after one warm-up.
//!
//!     bench_stage2_parts CONFIG_JSON INIT_DIR [--threads 1] [--batch 2] [--runs 5] [--only NAME]

use std::path::Path;
use std::time::Instant;

use candle_core::{Device, Tensor, Var};
use marvel_core::train::losses::{hinge_discriminator_loss, hinge_generator_loss};
use marvel_core::train::stage2::{load_stage2_model, stage2_forward};
use marvel_core::train::stage2_recipe::Stage2Recipe;
use marvel_core::train::TrainConfig;
use marvel_core::Result;
#[path = "common/mod.rs"]
mod common;

/// Median (CPU, wall) seconds of `runs` calls of `f` after one warm-up call; zeros for a component `only` leaves
/// out. With several threads, CPU / wall says how many cores the component kept busy.
fn median_cpu(a: &Args, name: &str, mut f: impl FnMut() -> Result<()>) -> Result<(f64, f64)> {
    if a.only.as_ref().is_some_and(|o| o != name) {
        return Ok((0.0, 0.0));
    }
    let runs = a.runs;
    f()?;
    let (mut cpu, mut wall) = (Vec::with_capacity(runs), Vec::with_capacity(runs));
    for _ in 0..runs {
        let (c, t) = (common::cpu_seconds().unwrap_or(f64::NAN), Instant::now());
        f()?;
        wall.push(t.elapsed().as_secs_f64());
        cpu.push(common::cpu_seconds().unwrap_or(f64::NAN) - c);
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[runs / 2]
    };
    Ok((median(cpu), median(wall)))
}

struct Args {
    config: String,
    init: String,
    threads: usize,
    batch: usize,
    runs: usize,
    /// `--only NAME`: time that component alone (for a profiler); the others print 0.
    only: Option<String>,
}

fn parse_args() -> std::result::Result<Args, String> {
    let usage = "usage: bench_stage2_parts CONFIG_JSON INIT_DIR [--threads N] [--batch N] [--runs N] [--only NAME]";
    let mut it = std::env::args().skip(1);
    let (Some(config), Some(init)) = (it.next(), it.next()) else { return Err(usage.into()) };
    let mut a = Args { config, init, threads: 1, batch: 2, runs: 5, only: None };
    while let Some(flag) = it.next() {
        if flag == "--only" {
            a.only = Some(it.next().ok_or(usage)?);
            continue;
        }
        let v: usize = it.next().and_then(|v| v.parse().ok()).ok_or(usage)?;
        match flag.as_str() {
            "--threads" => a.threads = v,
            "--batch" => a.batch = v,
            "--runs" => a.runs = v.max(1),
            _ => return Err(usage.into()),
        }
    }
    Ok(a)
}

fn run(a: &Args) -> Result<String> {
    let bad = |e: String| marvel_core::MarvelError::Config(format!("{}: {e}", a.config));
    let text = std::fs::read_to_string(&a.config).map_err(|e| bad(e.to_string()))?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let cfg = TrainConfig::from_value(json)?;
    let dev = Device::Cpu;
    // As a `Trainer` holds it while it lives.
    let _memory = marvel_core::memory::KeepFreedMemory::new();
    let (model, _) = load_stage2_model(&cfg.model, Path::new(&a.init).join("model.safetensors"), &dev)?;
    let recipe = Stage2Recipe::new(&cfg, 0)?;
    let losses = recipe.loss_module();
    let size = cfg.model.image_size;
    let x = Tensor::rand(0f32, 1., (a.batch, 3, size, size), &dev)?;
    let r = Tensor::rand(0f32, 1., (a.batch, 3, size, size), &dev)?;
    let recon = Var::from_tensor(&Tensor::rand(0f32, 1., (a.batch, 3, size, size), &dev)?)?;

    let decode = median_cpu(a, "decode", || {
        let out = stage2_forward(&model, &x)?;
        (out.recon * &r)?.sum_all()?.backward()?;
        Ok(())
    })?;
    let perceptual = median_cpu(a, "perceptual", || {
        losses.perceptual().forward(&x, recon.as_tensor())?.loss.backward()?;
        Ok(())
    })?;
    let d = losses.discriminator();
    let frozen = d.frozen();
    let gan_generator = median_cpu(a, "gan_generator", || {
        hinge_generator_loss(&frozen.forward(recon.as_tensor())?)?.backward()?;
        Ok(())
    })?;
    let discriminator_step = median_cpu(a, "discriminator_step", || {
        hinge_discriminator_loss(&d.forward(&x)?, &d.forward(&recon.as_tensor().detach())?)?.backward()?;
        Ok(())
    })?;
    let parts = [
        ("decode", decode),
        ("perceptual", perceptual),
        ("gan_generator", gan_generator),
        ("discriminator_step", discriminator_step),
    ];
    let json = |pick: fn(&(f64, f64)) -> f64| {
        parts.iter().map(|(n, v)| format!("\"{n}\":{:.4}", pick(v))).collect::<Vec<_>>().join(",")
    };
    Ok(format!(
        "{{\"engine\":\"marvel\",\"threads\":{},\"batch\":{},\"runs\":{},\"cpu_s\":{{{}}},\"wall_s\":{{{}}}}}",
        a.threads,
        a.batch,
        a.runs,
        json(|v| v.0),
        json(|v| v.1)
    ))
}

fn main() {
    let a = parse_args().unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(2);
    });
    common::run_bench("bench_stage2_parts", a.threads, || run(&a));
}
