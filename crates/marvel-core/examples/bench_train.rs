//! Training-step cost on the CPU through the core's `Trainer` (forward, backward, gradient clipping, AdamW, EMA;
//! for stage 2 also the discriminator's step): the benchmark side of bench/train.sh, whose PyTorch twins are
//! bench/python/train_torch.py (`single`: TiTok-S ViTs, 256x256, LFQ) and train_stage2_torch.py (`stage2`, tiny).
//! Both sides read the config their `--print-config` writes, so the two cannot drift apart; with `--init DIR` the
//! trainer starts from the model in DIR (the weights the PyTorch side loads too) instead of fresh weights.
//! Prints one JSON line: median seconds (wall and CPU) per step over RUNS steps after WARMUP steps, and the peak RSS.
//!
//!     bench_train CONFIG_JSON [--init DIR] [--threads 2] [--batch 2] [--warmup 2] [--runs 5] [--split]
//!
//! `--split` adds `gradients_s`, the median of RUNS forward + backward passes without the update (clipping, AdamW,
//! EMA), and `update_s`, the median of RUNS updates alone (clipping, AdamW and EMA over the same parameters with the
//! last pass's gradients, by an optimizer and EMA of the bench's own built from the same config), measured after
//! the steps (so not in the peak RSS), to see where a step's time goes. For stage 2 the pass includes the
//! discriminator's forward and backward, which the recipe runs alongside the generator's backward.

use std::time::Instant;

use marvel_core::runtime;
use marvel_core::train::trainer::Trainer;
use marvel_core::train::{clip_grad_norm, AdamW, Ema, Gradients, TrainConfig};
use marvel_core::Result;
#[path = "common/mod.rs"]
mod common;
use common::{run_bench, status_mib};

/// The process CPU seconds, NaN where they cannot be read.
fn cpu_seconds() -> f64 {
    common::cpu_seconds().unwrap_or(f64::NAN)
}

struct Args {
    config: String,
    init: Option<std::path::PathBuf>,
    threads: usize,
    batch: usize,
    warmup: usize,
    runs: usize,
    /// Also time RUNS calls of `Trainer::gradients` alone (forward + backward, no update) after the steps.
    split: bool,
}

fn parse_args() -> Args {
    let mut a = Args { config: String::new(), init: None, threads: 2, batch: 2, warmup: 2, runs: 5, split: false };
    let mut it = std::env::args().skip(1);
    let usage =
        "usage: bench_train CONFIG_JSON [--init DIR] [--threads N] [--batch N] [--warmup N] [--runs N] [--split]";
    while let Some(arg) = it.next() {
        if arg == "--init" {
            a.init = Some(it.next().expect("--init DIR").into());
            continue;
        }
        let mut val =
            |what: &str| it.next().and_then(|v| v.parse::<usize>().ok()).unwrap_or_else(|| panic!("{what} N"));
        match arg.as_str() {
            "--threads" => a.threads = val("--threads"),
            "--batch" => a.batch = val("--batch"),
            "--warmup" => a.warmup = val("--warmup"),
            "--runs" => a.runs = val("--runs"),
            "--split" => a.split = true,
            path if a.config.is_empty() => {
                a.config = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"))
            }
            other => panic!("unexpected argument {other:?}; {usage}"),
        }
    }
    assert!(!a.config.is_empty() && a.runs > 0, "{usage}");
    a
}

/// Deterministic pseudo-random bytes (xorshift; no rand dependency): the step's cost does not depend on them.
fn random_images(len: usize, seed: u64) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 56) as u8
        })
        .collect()
}

fn run(a: &Args) -> Result<String> {
    let mut trainer = Trainer::create_from_json(&a.config, a.init.as_deref(), 0)?;
    let size = trainer.model_config().image_size;
    let params: usize = trainer.parameters().iter().map(|(_, v)| v.as_tensor().elem_count()).sum();
    let images = random_images(a.batch * size * size * 3, 1);
    let mut losses = Vec::new();
    for _ in 0..a.warmup {
        losses.push(trainer.step(&images, a.batch, None)?.loss);
    }
    let (mut times, mut cpu) = (Vec::with_capacity(a.runs), Vec::with_capacity(a.runs));
    for _ in 0..a.runs {
        let (t, c) = (Instant::now(), cpu_seconds());
        let out = trainer.step(&images, a.batch, None)?;
        times.push(t.elapsed().as_secs_f64());
        cpu.push(cpu_seconds() - c);
        losses.push(out.loss);
    }
    let median_of = median;
    let median = median_of(&times);
    let peak_rss = status_mib("VmHWM");
    let split = if a.split {
        let mut g = Vec::with_capacity(a.runs);
        let mut grads = None;
        for _ in 0..a.runs {
            let t = Instant::now();
            grads = Some(trainer.gradients(&images, a.batch, None)?.0);
            g.push(t.elapsed().as_secs_f64());
        }
        let (update_s, update_cpu_s) = time_update(a, &trainer, &mut grads.expect("runs > 0"))?;
        format!(",\"gradients_s\":{:.4},\"update_s\":{update_s:.4},\"update_cpu_s\":{update_cpu_s:.4}", median_of(&g))
    } else {
        String::new()
    };
    let fmt = |v: &[f64]| v.iter().map(|t| format!("{t:.4}")).collect::<Vec<_>>().join(",");
    Ok(format!(
        "{{\"engine\":\"marvel\",\"params\":{params},\"threads\":{},\"batch\":{},\"median_s\":{median:.4},\"steps_per_s\":{:.4},\
         \"cpu_s\":{:.2},\"runs\":[{}],\"losses\":[{}],\"peak_rss_mib\":{peak_rss:.1}{split}}}",
        runtime::num_threads()?,
        a.batch,
        1.0 / median,
        median_of(&cpu),
        fmt(&times),
        losses.iter().map(|l| format!("{l:.5}")).collect::<Vec<_>>().join(","),
    ))
}

/// Median wall and CPU seconds of RUNS updates (clipping to the config's max_grad_norm, AdamW, EMA) of the
/// trainer's trainable parameters with `grads`, as `Trainer::step` runs them after backward (after one untimed
/// update, which creates the moments).
fn time_update(a: &Args, trainer: &Trainer, grads: &mut Gradients) -> Result<(f64, f64)> {
    let cfg = TrainConfig::from_value(serde_json::from_str(&a.config).expect("the config parsed once already"))?;
    let params = trainer.parameters();
    let trainable: Vec<_> = params.iter().filter(|(n, _)| trainer.is_trainable(n)).cloned().collect();
    let mut opt = AdamW::new(cfg.adamw(), trainable)?;
    let mut ema = cfg.ema().map(|c| Ema::new(c, params, |n| trainer.is_trainable(n))).transpose()?;
    let mut update = || -> Result<()> {
        if let Some(max) = cfg.training.max_grad_norm {
            clip_grad_norm(grads, max)?;
        }
        opt.step(grads)?;
        if let Some(e) = &mut ema {
            e.update(params)?;
        }
        Ok(())
    };
    update()?;
    let (mut wall, mut cpu) = (Vec::with_capacity(a.runs), Vec::with_capacity(a.runs));
    for _ in 0..a.runs {
        let (t, c) = (Instant::now(), cpu_seconds());
        update()?;
        wall.push(t.elapsed().as_secs_f64());
        cpu.push(cpu_seconds() - c);
    }
    Ok((median(&wall), median(&cpu)))
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|x, y| x.partial_cmp(y).expect("finite times"));
    s[s.len() / 2]
}

fn main() {
    let args = parse_args();
    run_bench("bench_train", args.threads, || run(&args));
}
