//! Whole models on the GPU against the CPU: S-128 and L-32 with random weights (the same tensors on both devices),
//! encode and decode in f32, and with bf16 weights.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use marvel_core::model::titok::Titok;
use marvel_core::quantize::lfq::SplitMix64;
use marvel_core::train::trainer::Trainer;
use marvel_core::Result;
use serde_json::{json, Value};

use crate::checks::{rel_l2, Report};

/// A `single`-recipe training config (the layout of bench/python/train_torch.py's, which the PyTorch twin builds
/// too): `size` "small" or "large", `tokens` latent tokens, LFQ 12 bits x 4 depths.
pub fn config(size: &str, tokens: usize, entropy_weight: f64, device: &str) -> Value {
    let lr = 1e-4;
    json!({
        "model": {"vq_model": {
            "quantize_mode": "lfq", "token_size": 12, "num_depths": 4, "num_latent_tokens": tokens,
            "commitment_cost": 0.25, "entropy_loss_weight": entropy_weight, "entropy_groups": 2, "depth_dropout": 0.0,
            "vit_enc_model_size": size, "vit_dec_model_size": size,
            "vit_enc_patch_size": 16, "vit_dec_patch_size": 16, "is_legacy": false, "finetune_decoder": false
        }},
        "dataset": {"preprocessing": {"crop_size": 256}},
        "losses": {"quantizer_weight": 1.0, "reconstruction_loss": "l2", "reconstruction_weight": 1.0},
        "optimizer": {"name": "adamw", "params": {"learning_rate": lr, "beta1": 0.9, "beta2": 0.99, "weight_decay": 1e-4}},
        "lr_scheduler": {"scheduler": "cosine", "params": {"learning_rate": lr, "warmup_steps": 5, "end_lr": lr / 10.0}},
        "training": {"gradient_accumulation_steps": 1, "use_ema": true, "max_train_steps": 1000, "max_grad_norm": 1.0,
                     "recipe": "single", "device": device}
    })
}

/// The model of `config` with fresh weights from `seed` on the CPU, and the same weights as a GPU model in `dtype`.
pub fn pair(config: Value, seed: u64, gpu: &Device, dtype: DType) -> Result<(Titok, Titok)> {
    let trainer = Trainer::create(config, None, seed)?;
    let cfg = trainer.model_config().clone();
    let weights: HashMap<String, Tensor> =
        trainer.parameters().iter().map(|(n, v)| (n.clone(), v.as_tensor().detach())).collect();
    let on_gpu = weights
        .iter()
        .map(|(n, t)| Ok((n.clone(), t.to_device(gpu)?.to_dtype(dtype)?)))
        .collect::<candle_core::Result<HashMap<_, _>>>()?;
    let cpu = Titok::new(&cfg, VarBuilder::from_tensors(weights, DType::F32, &Device::Cpu))?;
    let gpu_model = Titok::new(&cfg, VarBuilder::from_tensors(on_gpu, dtype, gpu))?;
    Ok((cpu, gpu_model))
}

pub fn images(rng: &mut SplitMix64, batch: usize, dev: &Device) -> Result<Tensor> {
    let bytes: Vec<u8> = (0..batch * 256 * 256 * 3).map(|_| rng.below(256) as u8).collect();
    marvel_core::image::images_from_u8_nhwc(&bytes, (batch, 256, 256), dev)
}

fn host(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.flatten_all()?.to_dtype(DType::F32)?.to_device(&Device::Cpu)?.to_vec1::<f32>()?)
}

pub fn run(gpu: &Device, seed: u64, quick: bool, report: &mut Report) {
    let models: &[(&str, &str, usize)] =
        if quick { &[("S-128", "small", 128)] } else { &[("S-128", "small", 128), ("L-32", "large", 32)] };
    for &(name, size, tokens) in models {
        for (dtype, tol) in [(DType::F32, 1e-5), (DType::BF16, 1e-2)] {
            let label = format!("{name} {dtype:?} encode/decode vs CPU f32");
            report.check_result(&label, compare(gpu, seed, size, tokens, dtype, tol));
        }
    }
}

fn compare(gpu: &Device, seed: u64, size: &str, tokens: usize, dtype: DType, tol: f64) -> Result<(bool, String)> {
    let (cpu, gpu_model) = pair(config(size, tokens, 0.0, "cpu"), seed, gpu, dtype)?;
    let mut rng = SplitMix64::new(seed ^ 0x6d6f64);
    let x = images(&mut rng, 8, &Device::Cpu)?;
    let z_cpu = cpu.encode_latent(&x)?;
    let z_gpu = gpu_model.encode_latent(&x.to_device(gpu)?.to_dtype(dtype)?)?;
    let ez = rel_l2(&host(&z_gpu)?, &host(&z_cpu)?);
    let (_, t_cpu) = cpu.encode(&x)?;
    let (_, t_gpu) = gpu_model.encode(&x.to_device(gpu)?.to_dtype(dtype)?)?;
    let (a, b) =
        (t_cpu.flatten_all()?.to_vec1::<u32>()?, t_gpu.to_device(&Device::Cpu)?.flatten_all()?.to_vec1::<u32>()?);
    let agree = a.iter().zip(&b).filter(|(x, y)| x == y).count() as f64 / a.len().max(1) as f64;
    // Decoding the CPU's ids on both sides isolates the decoder from sign flips of near-zero residuals.
    let depth = t_cpu.dim(2)?;
    let img_cpu = cpu.decode_tokens_to_depth(&t_cpu, depth)?;
    let img_gpu = gpu_model.decode_tokens_to_depth(&t_cpu.to_device(gpu)?, depth)?;
    let ed = rel_l2(&host(&img_gpu)?, &host(&img_cpu)?);
    Ok((
        ez < tol && ed < tol,
        format!("latent rel-L2 {ez:.2e}, decode rel-L2 {ed:.2e} (bound {tol:.0e}); ids agree {:.4} (flips only where a residual is ~0)", agree),
    ))
}
