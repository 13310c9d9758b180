//! Throughput on the GPU: encode and decode images/s at batch 64 (f32 and bf16 weights), `single`-recipe training
//! steps/s, and the fused LFQ pass against the memory floor. Every timed region ends with a device synchronize.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use marvel_core::quantize::lfq::{fused, SplitMix64};
use marvel_core::train::trainer::Trainer;
use marvel_core::Result;

use crate::checks::Report;
use crate::kernels::normal;
use crate::models::{config, images, pair};

/// Median seconds of `runs` calls after `warmup`, each ended by a synchronize.
fn median(dev: &Device, warmup: usize, runs: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    for _ in 0..warmup {
        f()?;
    }
    dev.synchronize()?;
    let mut t = Vec::with_capacity(runs);
    for _ in 0..runs {
        let s = Instant::now();
        f()?;
        dev.synchronize()?;
        t.push(s.elapsed().as_secs_f64());
    }
    t.sort_by(|a, b| a.total_cmp(b));
    Ok(t[runs / 2])
}

pub fn run(gpu: &Device, seed: u64, quick: bool, report: &mut Report) {
    let runs = if quick { 3 } else { 10 };
    let models: &[(&str, &str, usize)] =
        if quick { &[("S-128", "small", 128)] } else { &[("S-128", "small", 128), ("L-32", "large", 32)] };
    for &(name, size, tokens) in models {
        for dtype in [DType::F32, DType::BF16] {
            if let Err(e) = codec(gpu, seed, name, size, tokens, dtype, runs, report) {
                report.check(format!("{name} {dtype:?} timing"), false, format!("error: {e}"));
            }
        }
    }
    if let Err(e) = training(gpu, seed, runs, report) {
        report.check("single recipe timing", false, format!("error: {e}"));
    }
    if let Err(e) = lfq_floor(gpu, seed, runs, report) {
        report.check("lfq pass timing", false, format!("error: {e}"));
    }
}

#[allow(clippy::too_many_arguments)]
fn codec(
    gpu: &Device,
    seed: u64,
    name: &str,
    size: &str,
    tokens: usize,
    dtype: DType,
    runs: usize,
    report: &mut Report,
) -> Result<()> {
    let batch = 64;
    let (_, model) = pair(config(size, tokens, 0.0, "cpu"), seed, gpu, dtype)?;
    let mut rng = SplitMix64::new(seed ^ 0x74696d);
    let x = images(&mut rng, batch, gpu)?.to_dtype(dtype)?;
    let enc = median(gpu, 2, runs, || model.encode(&x).map(|_| ()))?;
    let (_, ids) = model.encode(&x)?;
    let depth = ids.dim(2)?;
    let dec = median(gpu, 2, runs, || model.decode_tokens_to_depth(&ids, depth).map(|_| ()))?;
    // Worded as the PyTorch twin words it, so bench/gpu/table.py can pair the rows.
    let note = format!("batch {batch}, {} weights", if dtype == DType::F32 { "float32" } else { "bfloat16" });
    report.time(format!("{name} encode"), batch as f64 / enc, "img/s", note.clone());
    report.time(format!("{name} decode"), batch as f64 / dec, "img/s", note);
    Ok(())
}

fn training(gpu: &Device, seed: u64, runs: usize, report: &mut Report) -> Result<()> {
    let _ = gpu;
    let batch = 32;
    // Entropy off: the PyTorch twin (bench/gpu/torch_gpu.py) has no entropy term.
    let mut trainer = Trainer::create(config("small", 128, 0.0, "cuda"), None, seed)?;
    let mut rng = SplitMix64::new(seed ^ 0x737465);
    let images: Vec<u8> = (0..batch * 256 * 256 * 3).map(|_| rng.below(256) as u8).collect();
    // `step` reads the loss back to the host, which synchronizes.
    let dev = trainer.candle_device().clone();
    let s = median(&dev, 2, runs, || trainer.step(&images, batch, None).map(|_| ()))?;
    report.time("S-128 single training step", 1.0 / s, "st/s", format!("batch {batch}, f32, AdamW + EMA + clip"));
    Ok(())
}

/// The inference pass reads z and writes cum and the ids; a device-to-device copy of that many bytes is the floor.
fn lfq_floor(gpu: &Device, seed: u64, runs: usize, report: &mut Report) -> Result<()> {
    let (rows, bits, depths) = (1usize << 22, 12, 4);
    let mut rng = SplitMix64::new(seed ^ 0x6c6671);
    let z = Tensor::from_vec(normal(&mut rng, rows * bits, 1.0), (rows, bits), gpu)?;
    let pass = median(gpu, 3, runs, || fused::quantize_pass(&z, bits, depths).map(|_| ()))?;
    let bytes = (rows * (2 * bits + depths) * 4) as f64;
    let copy_src = Tensor::zeros(rows * (bits + depths / 2), DType::F32, gpu)?;
    // A copy reads and writes its size: (bits + depths/2) floats each way is the pass's traffic.
    let copy = median(gpu, 3, runs, || copy_src.copy().map(|_| ()).map_err(Into::into))?;
    report.time(
        "lfq pass (2^22 rows, 12 bits, 4 depths)",
        bytes / pass / 1e9,
        "GB/s",
        format!("{:.1} us; copy of the same bytes {:.1} us = {:.2}x the floor", pass * 1e6, copy * 1e6, pass / copy),
    );
    let train = median(gpu, 3, runs, || fused::residuals(&z, bits, depths).map(|_| ()))?;
    let train_bytes = bytes + (2 * depths * rows * bits * 4) as f64;
    report.time(
        "lfq training pass (+ residuals, codes)",
        train_bytes / train / 1e9,
        "GB/s",
        format!("{:.1} us", train * 1e6),
    );
    Ok(())
}
