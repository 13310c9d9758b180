//! Times TiTok's three inference stages on CPU through the marvel-core API and prints one JSON object.
//! Used by `bench/titok.sh`; see bench/README.md.
//!
//! ```text
//! cargo run --release -p marvel-core --example bench_titok -- MODEL_DIR [--threads 2] [--batches 1,8]
//!     [--warmup 1] [--runs 5] [--check CHECK.safetensors]
//! ```
//!
//! Stages (the same three graphs the onnxruntime and PyTorch baselines run):
//! - `encode`: images (B, 3, 256, 256) -> tokens + z_q (ViT encoder + VQ).
//! - `decoder`: z_q -> logits (B, 1024, 16, 16) (decoder ViT + legacy head).
//! - `pixel`: logits -> softmax mix of the pixel codebook -> MaskGIT pixel decoder -> image.
//!
//! The model is loaded strictly from MODEL_DIR's config.json + model.safetensors, once, with one copy of
//! every weight: the TiTok part is `Titok::new` itself; the pixel stage is built from the same
//! `pixel_decoder.*` / `pixel_quantize.*` tensors and runs the same operations as `Titok::decode` (which
//! offers no logits-only entry point).
//! `--check` compares marvel's outputs with the PyTorch outputs saved by bench/python/prepare.py.

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use marvel_core::config::TitokConfig;
use marvel_core::model::maskgit::MaskgitDecoder;
use marvel_core::model::titok::Titok;
use marvel_core::weights::{load_strict, LoadOptions};
use marvel_core::{runtime, Result};
#[path = "common/mod.rs"]
mod common;
use common::{run_bench, status_mib};

struct Args {
    model: PathBuf,
    threads: usize,
    batches: Vec<usize>,
    warmup: usize,
    runs: usize,
    check: Option<PathBuf>,
}

fn parse_args() -> Args {
    let mut it = std::env::args().skip(1);
    let mut a = Args { model: PathBuf::new(), threads: 2, batches: vec![1, 8], warmup: 1, runs: 5, check: None };
    let mut model = None;
    while let Some(arg) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| panic!("{arg} needs a value"));
        match arg.as_str() {
            "--threads" => a.threads = val().parse().expect("--threads N"),
            "--batches" => a.batches = val().split(',').map(|s| s.trim().parse().expect("--batches 1,8")).collect(),
            "--warmup" => a.warmup = val().parse().expect("--warmup N"),
            "--runs" => a.runs = val().parse().expect("--runs N"),
            "--check" => a.check = Some(PathBuf::from(val())),
            _ if !arg.starts_with("--") && model.is_none() => model = Some(PathBuf::from(arg)),
            _ => panic!("unknown argument {arg}"),
        }
    }
    a.model = model.expect("usage: bench_titok MODEL_DIR [--threads N] [--batches 1,8] [--warmup N] [--runs N]");
    a
}

/// The two-stage model as three separately callable stages, one copy of the weights.
struct Stages {
    titok: Titok,
    /// `pixel_quantize.embedding.weight` (1024, z_channels).
    codebook: Tensor,
    pixel_decoder: MaskgitDecoder,
    grid: usize,
}

impl Stages {
    fn load(dir: &PathBuf) -> Result<Self> {
        let cfg = TitokConfig::from_path(dir.join("config.json"))?;
        let pd = cfg.pixel_decoder.clone().expect("benchmark needs a two-stage (finetune_decoder) model");
        // TiTok without its pixel stage, plus the pixel stage from the same checkpoint, strictly: every stored
        // tensor must be used exactly as by `Titok::from_pretrained`.
        let mut titok_cfg = cfg.clone();
        titok_cfg.pixel_decoder = None;
        let (stages, _) = load_strict(dir.join("model.safetensors"), &Device::Cpu, &LoadOptions::default(), |vb| {
            let titok = Titok::new(&titok_cfg, vb.clone())?;
            let codebook = vb.pp("pixel_quantize").pp("embedding").get((pd.codebook_size, pd.z_channels), "weight")?;
            let pixel_decoder = MaskgitDecoder::new(&pd, vb.pp("pixel_decoder"))?;
            Ok(Stages { titok, codebook, pixel_decoder, grid: cfg.decoder_grid() })
        })?;
        Ok(stages)
    }

    fn encode(&self, images: &Tensor) -> Result<(Tensor, Tensor)> {
        self.titok.encode(images)
    }

    /// z_q -> logits (B, 1024, g, g), the layout the ONNX graph returns.
    fn decoder(&self, z_q: &Tensor) -> Result<Tensor> {
        Ok(self.titok.decoder().forward(z_q)?)
    }

    /// logits (B, 1024, g, g) -> image; the operations of `Titok::decode` after the decoder ViT.
    fn pixel(&self, logits: &Tensor) -> Result<Tensor> {
        let (b, k, _, _) = logits.dims4()?;
        let g = self.grid;
        let logits = logits.reshape((b, k, g * g))?.transpose(1, 2)?; // (B, g², 1024)
        let probs = marvel_core::nn::softmax_last_dim(&logits)?;
        let mixed = probs.broadcast_matmul(&self.codebook)?;
        let z = self.codebook.dim(1)?;
        let mixed = mixed.transpose(1, 2)?.reshape((b, z, g, g))?;
        self.pixel_decoder.forward(&mixed)
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

/// Runs `f` `warmup` times untimed, then `runs` times timed; returns the times in seconds.
fn time<T>(warmup: usize, runs: usize, mut f: impl FnMut() -> Result<T>) -> Result<(Vec<f64>, T)> {
    let mut last = None;
    for _ in 0..warmup {
        last = Some(f()?);
    }
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        let t0 = Instant::now();
        let out = f()?;
        times.push(t0.elapsed().as_secs_f64());
        last = Some(out);
    }
    Ok((times, last.expect("at least one run")))
}


fn max_abs(a: &Tensor, b: &Tensor) -> Result<f32> {
    Ok((a.to_dtype(DType::F32)? - b.to_dtype(DType::F32)?)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?)
}

/// Compares with the PyTorch outputs for the same weights and inputs (bench/.work/check.safetensors).
fn check(stages: &Stages, path: &PathBuf) -> Result<String> {
    let t = candle_core::safetensors::load(path, &Device::Cpu)?;
    let (z_q, tokens) = stages.encode(&t["images"])?;
    let want: Vec<i64> = t["tokens"].flatten_all()?.to_vec1()?;
    let got: Vec<i64> = tokens.to_dtype(DType::I64)?.flatten_all()?.to_vec1()?;
    let same = got.iter().zip(&want).filter(|(a, b)| a == b).count();
    // Each stage is fed the reference's own input, so the errors do not compound.
    let logits = stages.decoder(&t["z_q"])?;
    let image = stages.pixel(&t["logits"])?;
    Ok(format!(
        "{{\"tokens_identical\":{},\"tokens_equal\":{same},\"tokens\":{},\"z_q_err\":{:.3e},\"logits_err\":{:.3e},\"image_err\":{:.3e}}}",
        same == want.len() && got.len() == want.len(),
        want.len(),
        max_abs(&z_q, &t["z_q"])?,
        max_abs(&logits, &t["logits"])?,
        max_abs(&image, &t["image"])?,
    ))
}

fn run(args: &Args) -> Result<String> {
    let base_rss = status_mib("VmRSS");
    let t0 = Instant::now();
    let stages = Stages::load(&args.model)?;
    let load_s = t0.elapsed().as_secs_f64();
    let loaded_rss = status_mib("VmRSS");
    let size = stages.titok.config().image_size;
    let mut results = Vec::new();
    for &b in &args.batches {
        let images = random_images(b, size, 7 + b as u64)?;
        let (t_enc, (z_q, _tokens)) = time(args.warmup, args.runs, || stages.encode(&images))?;
        let (t_dec, logits) = time(args.warmup, args.runs, || stages.decoder(&z_q))?;
        let (t_pix, _image) = time(args.warmup, args.runs, || stages.pixel(&logits))?;
        for (stage, times) in [("encode", t_enc), ("decoder", t_dec), ("pixel", t_pix)] {
            let med = median(&times);
            results.push(format!(
                "{{\"stage\":\"{stage}\",\"batch\":{b},\"median_s\":{med:.6},\"images_per_s\":{:.4},\"runs\":[{}]}}",
                b as f64 / med,
                times.iter().map(|t| format!("{t:.6}")).collect::<Vec<_>>().join(",")
            ));
        }
    }
    let peak_rss = status_mib("VmHWM");
    // After the timings, so that the check's batch does not count in the peak RSS.
    let check_json = match &args.check {
        Some(p) if p.is_file() => Some(check(&stages, p)?),
        _ => None,
    };
    Ok(format!(
        "{{\"engine\":\"marvel\",\"version\":\"marvel-core {} (candle, Rust example)\",\"threads\":{},\"load_s\":{load_s:.3},\"base_rss_mib\":{base_rss:.1},\"loaded_rss_mib\":{loaded_rss:.1},\"peak_rss_mib\":{:.1},\"check\":{},\"results\":[{}]}}",
        env!("CARGO_PKG_VERSION"),
        runtime::num_threads()?,
        peak_rss,
        check_json.unwrap_or_else(|| "null".into()),
        results.join(",")
    ))
}

fn main() {
    let args = parse_args();
    run_bench("bench_titok", args.threads, || run(&args));
}
