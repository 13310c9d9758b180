//! Times TiTok's inference stages on CPU through the marvel-core API and prints one JSON object.
//! Used by `bench/titok.sh`; see bench/README.md.
//!
//! ```text
//! cargo run --release -p marvel-core --example bench_titok -- MODEL_DIR [--threads 2] [--batches 1,8]
//!     [--warmup 1] [--runs 5] [--check CHECK.safetensors] [--no-pixel]
//! ```
//!
//! `--no-pixel` skips the two-stage layouts' pixel stage, which otherwise dominates a profile of the ViTs.
//!
//! Stages (the same graphs the onnxruntime and PyTorch baselines run):
//! - `encode`: images (B, 3, 256, 256) -> tokens + z_q (ViT encoder + quantizer).
//! - two-stage layouts: `decoder`: z_q -> logits (B, 1024, 16, 16) (decoder ViT + legacy head), then `pixel`:
//!   logits -> softmax mix of the pixel codebook -> MaskGIT pixel decoder -> image.
//! - the single layout: `decode`: z_q -> image (decoder ViT + pixel head).
//!
//! The model is loaded strictly from MODEL_DIR's config.json + model.safetensors, once, with one copy of
//! every weight: the TiTok part is `Titok::new` itself; the pixel stage of a two-stage model is built from the same
//! `pixel_decoder.*` / `pixel_quantize.*` tensors and runs the same operations as `Titok::decode` (which
//! offers no logits-only entry point).
//! `--check` compares marvel's outputs with the PyTorch outputs saved by bench/python/prepare.py *before* timing
//! anything, and exits non-zero (nothing timed) when a token differs or a float is off by more than 1e-3 of the
//! output's scale: the benchmark never times a computation other than the reference's.

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use marvel_core::config::TitokConfig;
use marvel_core::model::maskgit::MaskgitDecoder;
use marvel_core::model::titok::Titok;
use marvel_core::weights::{load_strict, LoadOptions};
use marvel_core::{invalid, runtime, Result};
#[path = "common/mod.rs"]
mod common;
use common::{cpu_seconds, run_bench, status_mib};

/// The check's float tolerance, relative to max(1, max |reference|): prepare.py holds onnxruntime to the same.
const TOL: f32 = 1e-3;

struct Args {
    model: PathBuf,
    threads: usize,
    batches: Vec<usize>,
    warmup: usize,
    runs: usize,
    check: Option<PathBuf>,
    no_pixel: bool,
}

fn parse_args() -> Args {
    let mut it = std::env::args().skip(1);
    let mut a = Args {
        model: PathBuf::new(),
        threads: 2,
        batches: vec![1, 8],
        warmup: 1,
        runs: 5,
        check: None,
        no_pixel: false,
    };
    let mut model = None;
    while let Some(arg) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| panic!("{arg} needs a value"));
        match arg.as_str() {
            "--threads" => a.threads = val().parse().expect("--threads N"),
            "--batches" => a.batches = val().split(',').map(|s| s.trim().parse().expect("--batches 1,8")).collect(),
            "--warmup" => a.warmup = val().parse().expect("--warmup N"),
            "--runs" => a.runs = val().parse().expect("--runs N"),
            "--check" => a.check = Some(PathBuf::from(val())),
            "--no-pixel" => a.no_pixel = true,
            _ if !arg.starts_with("--") && model.is_none() => model = Some(PathBuf::from(arg)),
            _ => panic!("unknown argument {arg}"),
        }
    }
    a.model = model.expect("usage: bench_titok MODEL_DIR [--threads N] [--batches 1,8] [--warmup N] [--runs N]");
    a
}

/// The model as separately callable stages, one copy of the weights.
struct Stages {
    titok: Titok,
    /// Two-stage layouts only: the pixel stage after the logits.
    pixel: Option<PixelStage>,
}

struct PixelStage {
    /// `pixel_quantize.embedding.weight` (1024, z_channels).
    codebook: Tensor,
    decoder: MaskgitDecoder,
    grid: usize,
}

impl Stages {
    fn load(dir: &PathBuf) -> Result<Self> {
        let cfg = TitokConfig::from_path(dir.join("config.json"))?;
        // TiTok without its pixel stage, plus the pixel stage from the same checkpoint, strictly: every stored
        // tensor must be used exactly as by `Titok::from_pretrained`.
        let mut titok_cfg = cfg.clone();
        let pd = titok_cfg.pixel_decoder.take();
        let (mut stages, _): (Stages, _) =
            load_strict(dir.join("model.safetensors"), &Device::Cpu, &LoadOptions::default(), |vb| {
                let titok = Titok::new(&titok_cfg, vb.clone())?;
                let pixel = match &pd {
                    Some(pd) => Some(PixelStage {
                        codebook: vb
                            .pp("pixel_quantize")
                            .pp("embedding")
                            .get((pd.codebook_size, pd.z_channels), "weight")?,
                        decoder: MaskgitDecoder::new(pd, vb.pp("pixel_decoder"))?,
                        grid: cfg.decoder_grid(),
                    }),
                    None => None,
                };
                Ok(Stages { titok, pixel })
            })?;
        // As `Tokenizer::from_pretrained` does: the ViTs' weights packed once at load.
        stages.titok.pack_weights()?;
        Ok(stages)
    }

    fn encode(&self, images: &Tensor) -> Result<(Tensor, Tensor)> {
        self.titok.encode(images)
    }

    /// Two-stage: z_q -> logits (B, 1024, g, g), the layout the ONNX graph returns. Single: z_q -> image.
    fn decoder(&self, z_q: &Tensor) -> Result<Tensor> {
        match self.pixel {
            Some(_) => Ok(self.titok.decoder().forward(z_q)?),
            None => self.titok.decode(z_q),
        }
    }

    /// logits (B, 1024, g, g) -> image; the operations of `Titok::decode` after the decoder ViT.
    fn pixel(&self, pixel: &PixelStage, logits: &Tensor) -> Result<Tensor> {
        let (b, k, _, _) = logits.dims4()?;
        let g = pixel.grid;
        let logits = logits.reshape((b, k, g * g))?.transpose(1, 2)?; // (B, g², 1024)
        let probs = marvel_core::nn::softmax_last_dim(&logits)?;
        let mixed = probs.broadcast_matmul(&pixel.codebook)?;
        let z = pixel.codebook.dim(1)?;
        let mixed = mixed.transpose(1, 2)?.reshape((b, z, g, g))?;
        pixel.decoder.forward(&mixed)
    }
}

/// Deterministic pseudo-random images in [0, 1] (xorshift; no rand dependency).
fn random_images(batch: usize, size: usize, seed: u64) -> Result<Tensor> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let n = batch * 3 * size * size;
    let data: Vec<f32> = (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32
        })
        .collect();
    Ok(Tensor::from_vec(data, (batch, 3, size, size), &Device::Cpu)?)
}

fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Wall and CPU times of a stage's runs, in seconds.
struct Times {
    wall: Vec<f64>,
    /// The process's CPU time (all threads) per run: what a neighbour's load on the machine does not inflate.
    /// Empty where it cannot be read.
    cpu: Vec<f64>,
}

/// Runs `f` `warmup` times untimed, then `runs` times timed.
fn time<T>(warmup: usize, runs: usize, mut f: impl FnMut() -> Result<T>) -> Result<(Times, T)> {
    let mut last = None;
    for _ in 0..warmup {
        last = Some(f()?);
    }
    let mut times = Times { wall: Vec::with_capacity(runs), cpu: Vec::with_capacity(runs) };
    for _ in 0..runs.max(1) {
        let (t0, c0) = (Instant::now(), cpu_seconds());
        let out = f()?;
        times.wall.push(t0.elapsed().as_secs_f64());
        if let (Some(c0), Some(c1)) = (c0, cpu_seconds()) {
            times.cpu.push(c1 - c0);
        }
        last = Some(out);
    }
    Ok((times, last.expect("at least one run")))
}

/// max |a - b| / max(1, max |b|): the error on the scale of the reference's output; NaN when either side holds a
/// NaN or the shapes differ (candle's `max` skips NaNs, so the maximum is taken here).
fn rel_err(a: &Tensor, b: &Tensor) -> Result<f32> {
    if a.dims() != b.dims() {
        return Ok(f32::NAN);
    }
    let a: Vec<f32> = a.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let b: Vec<f32> = b.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let (mut err, mut scale) = (0f32, 1f32);
    for (x, y) in a.iter().zip(&b) {
        let d = (x - y).abs();
        if d.is_nan() {
            return Ok(f32::NAN);
        }
        err = err.max(d);
        scale = scale.max(y.abs());
    }
    Ok(err / scale)
}

/// Compares with the PyTorch outputs for the same weights and inputs (prepare.py's check.safetensors); the JSON
/// figures and whether every one is within bounds.
fn check(stages: &Stages, path: &PathBuf) -> Result<(String, bool)> {
    let t = candle_core::safetensors::load(path, &Device::Cpu)?;
    let (z_q, tokens) = stages.encode(&t["images"])?;
    let want: Vec<i64> = t["tokens"].flatten_all()?.to_vec1()?;
    let got: Vec<i64> = tokens.to_dtype(DType::I64)?.flatten_all()?.to_vec1()?;
    let same = got.iter().zip(&want).filter(|(a, b)| a == b).count();
    let identical = same == want.len() && got.len() == want.len() && tokens.dims() == t["tokens"].dims();
    // Each stage is fed the reference's own input, so the errors do not compound.
    let mut errs = vec![("z_q_err", rel_err(&z_q, &t["z_q"])?)];
    let decoded = stages.decoder(&t["z_q"])?;
    match &stages.pixel {
        Some(pixel) => {
            errs.push(("logits_err", rel_err(&decoded, &t["logits"])?));
            errs.push(("image_err", rel_err(&stages.pixel(pixel, &t["logits"])?, &t["image"])?));
        }
        None => errs.push(("image_err", rel_err(&decoded, &t["image"])?)),
    }
    // NaN compares false, so it never passes.
    let ok = identical && errs.iter().all(|(_, e)| *e <= TOL);
    let floats: String = errs.iter().map(|(k, e)| format!(",\"{k}\":{e:.3e}")).collect();
    Ok((
        format!(
            "{{\"ok\":{ok},\"tol\":{TOL:e},\"tokens_identical\":{identical},\"tokens_equal\":{same},\"tokens\":{}{floats}}}",
            want.len()
        ),
        ok,
    ))
}

fn run(args: &Args) -> Result<String> {
    let base_rss = status_mib("VmRSS");
    let t0 = Instant::now();
    let stages = Stages::load(&args.model)?;
    let load_s = t0.elapsed().as_secs_f64();
    let loaded_rss = status_mib("VmRSS");
    let check_json = match &args.check {
        Some(p) => {
            let (json, ok) = check(&stages, p)?;
            if !ok {
                return Err(invalid!("outputs differ from the reference's, so nothing was timed: {json}"));
            }
            json
        }
        None => "null".into(),
    };
    let size = stages.titok.config().image_size;
    let mut results = Vec::new();
    for &b in &args.batches {
        let images = random_images(b, size, 7 + b as u64)?;
        let (t_enc, (z_q, _tokens)) = time(args.warmup, args.runs, || stages.encode(&images))?;
        let (t_dec, decoded) = time(args.warmup, args.runs, || stages.decoder(&z_q))?;
        let mut timed = vec![("encode", t_enc)];
        match &stages.pixel {
            Some(pixel) => {
                timed.push(("decoder", t_dec));
                if !args.no_pixel {
                    timed.push(("pixel", time(args.warmup, args.runs, || stages.pixel(pixel, &decoded))?.0));
                }
            }
            None => timed.push(("decode", t_dec)),
        }
        for (stage, times) in timed {
            let med = median(&times.wall);
            let list = |v: &[f64]| v.iter().map(|t| format!("{t:.6}")).collect::<Vec<_>>().join(",");
            results.push(format!(
                "{{\"stage\":\"{stage}\",\"batch\":{b},\"median_s\":{med:.6},\"images_per_s\":{:.4},\"runs\":[{}],\"cpu_s\":[{}]}}",
                b as f64 / med,
                list(&times.wall),
                list(&times.cpu)
            ));
        }
    }
    // The check ran on a batch of 2 before the timings, below every timed batch's footprint but 1's: the peak RSS
    // is the process's high-water mark over both.
    let peak_rss = status_mib("VmHWM");
    Ok(format!(
        "{{\"engine\":\"marvel\",\"version\":\"marvel-core {} (candle, Rust example)\",\"threads\":{},\"load_s\":{load_s:.3},\"base_rss_mib\":{base_rss:.1},\"loaded_rss_mib\":{loaded_rss:.1},\"peak_rss_mib\":{:.1},\"check\":{check_json},\"results\":[{}]}}",
        env!("CARGO_PKG_VERSION"),
        runtime::num_threads()?,
        peak_rss,
        results.join(",")
    ))
}

fn main() {
    let args = parse_args();
    run_bench("bench_titok", args.threads, || run(&args));
}
