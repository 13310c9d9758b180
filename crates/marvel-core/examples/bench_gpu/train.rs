//! A few `single`-recipe training steps on the GPU against the same steps on the CPU (same weights, same batches).

use candle_core::Device;
use marvel_core::quantize::lfq::SplitMix64;
use marvel_core::train::trainer::Trainer;
use marvel_core::Result;

use crate::checks::{rel, Report};
use crate::models::config;

pub fn run(_gpu: &Device, seed: u64, quick: bool, report: &mut Report) {
    let steps = if quick { 2 } else { 3 };
    report.check_result(&format!("single recipe S-128: {steps} steps GPU vs CPU"), compare(seed, steps));
}

fn compare(seed: u64, steps: usize) -> Result<(bool, String)> {
    // Entropy on, so the fused entropy and its backward are in the step.
    let mut cpu = Trainer::create(config("small", 128, 0.02, "cpu"), None, seed)?;
    let mut gpu = Trainer::create(config("small", 128, 0.02, "cuda"), None, seed)?;
    let mut rng = SplitMix64::new(seed ^ 0x747261);
    let batch = 4;
    let mut worst: f64 = 0.0;
    let mut lines = Vec::new();
    for step in 0..steps {
        let images: Vec<u8> = (0..batch * 256 * 256 * 3).map(|_| rng.below(256) as u8).collect();
        let a = cpu.step(&images, batch, None)?;
        let b = gpu.step(&images, batch, None)?;
        let (el, eg) = (
            rel(f64::from(b.loss), f64::from(a.loss), 1e-6),
            rel(f64::from(b.grad_norm.unwrap_or(f32::NAN)), f64::from(a.grad_norm.unwrap_or(f32::NAN)), 1e-6),
        );
        worst = worst.max(el).max(eg);
        if el.is_nan() || eg.is_nan() {
            worst = f64::NAN;
        }
        lines.push(format!("step {}: loss {:.6}/{:.6} grad norm rel {eg:.1e}", step + 1, b.loss, a.loss));
    }
    // Steps compound rounding (cuBLAS vs the CPU gemm, f64 vs f32 entropy), so the bound is looser than one op's.
    Ok((worst < 1e-3, format!("worst rel {worst:.2e}; {}", lines.join("; "))))
}
