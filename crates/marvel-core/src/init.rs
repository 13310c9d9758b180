//! Fresh random weights for any configuration, written as a model folder (`config.json` + `model.safetensors`)
//! that loads like a released checkpoint. Used to start training from scratch and by tests and benchmarks that
//! need a real model of a given size without downloading one.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::config::TitokConfig;
use crate::error::{MarvelError, Result};
use crate::invalid;
use crate::model::titok::Titok;
use crate::nn::ParamInit;
use crate::quantize::lfq::SplitMix64;
use crate::weights::{build_shape_only, write_safetensors, Requested, TensorSpec};

/// `n` values of `init` drawn from `rng`, in order (Box-Muller for the normal: two uniforms per pair of values).
fn sample(init: ParamInit, n: usize, rng: &mut SplitMix64) -> Vec<f32> {
    match init {
        ParamInit::Zeros => vec![0.0; n],
        ParamInit::Ones => vec![1.0; n],
        ParamInit::Uniform { bound } => (0..n).map(|_| ((rng.next_f64() * 2.0 - 1.0) * bound) as f32).collect(),
        ParamInit::Normal { std } => {
            let mut out = Vec::with_capacity(n + 1);
            while out.len() < n {
                // 1 - u is in (0, 1], so the log is finite.
                let r = (-2.0 * (1.0 - rng.next_f64()).ln()).sqrt();
                let theta = std::f64::consts::TAU * rng.next_f64();
                out.push((std * r * theta.cos()) as f32);
                out.push((std * r * theta.sin()) as f32);
            }
            out.truncate(n);
            out
        }
    }
}

/// Initial value of one parameter, as the layer that asked for it declared (`crate::nn::ParamInit`). A tensor
/// without a declaration is an error: a guess would silently train from a different start than the reference.
pub(crate) fn init_one(r: &Requested, rng: &mut SplitMix64) -> Result<Tensor> {
    let Some(init) = r.init else {
        return Err(MarvelError::Config(format!(
            "{}: the model requests it without declaring its initialisation, so it cannot be made from a seed",
            r.name
        )));
    };
    let n: usize = r.shape.iter().product();
    Ok(Tensor::from_vec(sample(init, n, rng), r.shape.as_slice(), &Device::Cpu)?.to_dtype(r.dtype)?)
}

/// The most parameters a random model may have: 2e9 (8 GB as f32, all of it held in memory while the file is
/// written), three times TiTok-L-32 with its pixel decoder. Sizes past it are refused before anything is
/// allocated instead of running the machine out of memory.
pub const MAX_RANDOM_MODEL_PARAMETERS: u64 = 2_000_000_000;

/// Refuses a config whose model has more than [`MAX_RANDOM_MODEL_PARAMETERS`], counted from its sizes alone.
pub fn check_random_model_size(cfg: &TitokConfig) -> Result<()> {
    let n = cfg.parameter_count();
    if n > MAX_RANDOM_MODEL_PARAMETERS {
        let gb = |params: u64| params as f64 * 4.0 / 1e9;
        return Err(MarvelError::Config(format!(
            "this config has {:.1e} parameters ({:.1} GB as f32), above the limit of {:.1e} parameters ({:.1} GB) \
             for a random model",
            n as f64,
            gb(n),
            MAX_RANDOM_MODEL_PARAMETERS as f64,
            gb(MAX_RANDOM_MODEL_PARAMETERS)
        )));
    }
    Ok(())
}

/// Every parameter `cfg` needs, freshly initialised from `seed`.
pub fn random_weights(cfg: &TitokConfig, seed: u64) -> Result<HashMap<String, Tensor>> {
    check_random_model_size(cfg)?;
    let (_, requested) = build_shape_only(DType::F32, &Device::Cpu, |vb| Titok::new(cfg, vb))?;
    let mut rng = SplitMix64::new(seed);
    requested.iter().map(|r| Ok((r.name.clone(), init_one(r, &mut rng)?))).collect()
}

/// Writes a model folder: `config_json` verbatim (after checking it parses) and random weights for it, the same
/// as [`random_weights`] gives for `seed`. Each tensor is made as it is written, so the writer holds one at a time.
pub fn write_random_model(dir: impl AsRef<Path>, config_json: &str, seed: u64) -> Result<TitokConfig> {
    let dir = dir.as_ref();
    // An empty path would resolve to the current directory.
    if dir.as_os_str().is_empty() {
        return Err(invalid!("createRandomModel needs a folder to write to, got an empty path"));
    }
    let cfg = TitokConfig::from_json_str(config_json)?;
    check_random_model_size(&cfg)?;
    let (_, requested) = build_shape_only(DType::F32, &Device::Cpu, |vb| Titok::new(&cfg, vb))?;
    let specs: Vec<TensorSpec> =
        requested.iter().map(|r| TensorSpec { name: r.name.clone(), shape: r.shape.clone(), dtype: r.dtype }).collect();
    std::fs::create_dir_all(dir).map_err(|e| MarvelError::io(dir, e))?;
    let config_path = dir.join("config.json");
    std::fs::write(&config_path, config_json).map_err(|e| MarvelError::io(&config_path, e))?;
    let mut rng = SplitMix64::new(seed);
    let mut next = requested.iter();
    write_safetensors(&dir.join("model.safetensors"), &specs, |_| {
        init_one(next.next().expect("one request per spec"), &mut rng)
    })?;
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::VitConfig;
    use crate::tokenizer::Tokenizer;

    const TINY: &str = r#"{"model": {"vq_model": {
        "quantize_mode": "lfq", "token_size": 6, "num_depths": 3, "num_latent_tokens": 4,
        "vit_enc_model_size": "custom", "vit_enc_width": 32, "vit_enc_num_layers": 1, "vit_enc_num_heads": 2,
        "vit_dec_model_size": "custom", "vit_dec_width": 32, "vit_dec_num_layers": 1, "vit_dec_num_heads": 2,
        "vit_enc_patch_size": 16, "vit_dec_patch_size": 16, "is_legacy": false, "finetune_decoder": false}},
        "dataset": {"preprocessing": {"crop_size": 256}}}"#;

    #[test]
    fn a_random_model_loads_back_strictly_and_runs() {
        let dir = std::env::temp_dir().join(format!("marvel-init-{}", std::process::id()));
        write_random_model(&dir, TINY, 7).unwrap();
        let tok = Tokenizer::from_pretrained(&dir).unwrap();
        assert_eq!((tok.info().architecture, tok.info().depth, tok.info().num_tokens), ("marvel", 3, 4));
        let img: Vec<u8> = (0..256 * 256 * 3).map(|i| (i * 31 % 251) as u8).collect();
        let t = tok.encode_rgb(&img, 1, 256, 256).unwrap();
        assert!(t.ids.iter().all(|&id| id < 64));
        assert_eq!(tok.decode_rgb(&t, Some(2)).unwrap().len(), 256 * 256 * 3);
        // Same seed, same weights; another seed, other weights.
        let a = random_weights(&TitokConfig::from_json_str(TINY).unwrap(), 7).unwrap();
        let b = random_weights(&TitokConfig::from_json_str(TINY).unwrap(), 8).unwrap();
        let key = "encoder.patch_embed.weight";
        let sum = |m: &HashMap<String, Tensor>| m[key].sum_all().unwrap().to_scalar::<f32>().unwrap();
        let loaded = candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
        assert_eq!(sum(&a), sum(&loaded));
        assert_ne!(sum(&a), sum(&b));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The three layouts (VQ + pixel stage, MARVEL LFQ, single-stage VQ with the pixel head) and the stand-alone
    /// MaskGIT-VQGAN: every parameter they ask for comes with a declared initialisation.
    fn layouts() -> Vec<TitokConfig> {
        let two_stage = TINY
            .replace(
                r#""quantize_mode": "lfq", "token_size": 6, "num_depths": 3"#,
                r#""quantize_mode": "vq", "token_size": 6, "codebook_size": 64"#,
            )
            .replace(
                r#""is_legacy": false, "finetune_decoder": false"#,
                r#""is_legacy": true, "finetune_decoder": true, "pixel_decoder": {"hidden_channels": 32,
                "channel_mult": [1, 1, 2, 2, 4], "num_res_blocks": 1, "z_channels": 16, "codebook_size": 1024,
                "norm_num_groups": 8}"#,
            );
        let single_vq = TINY.replace(
            r#""quantize_mode": "lfq", "token_size": 6, "num_depths": 3"#,
            r#""quantize_mode": "vq", "token_size": 6, "codebook_size": 64"#,
        );
        [TINY.to_string(), two_stage, single_vq].iter().map(|j| TitokConfig::from_json_str(j).unwrap()).collect()
    }

    #[test]
    fn every_requested_tensor_declares_its_initialisation() {
        let mut undeclared = Vec::new();
        for cfg in layouts() {
            let (_, requested) = build_shape_only(DType::F32, &Device::Cpu, |vb| Titok::new(&cfg, vb)).unwrap();
            undeclared.extend(requested.iter().filter(|r| r.init.is_none()).map(|r| r.name.clone()));
        }
        let maskgit = crate::model::maskgit::MaskgitConfig::default();
        let (_, requested) =
            build_shape_only(DType::F32, &Device::Cpu, |vb| crate::model::maskgit::MaskgitVqgan::load(&maskgit, vb))
                .unwrap();
        undeclared.extend(requested.iter().filter(|r| r.init.is_none()).map(|r| format!("maskgit {}", r.name)));
        assert!(undeclared.is_empty(), "no declared init: {undeclared:?}");
    }

    #[test]
    fn a_request_without_a_declaration_is_refused() {
        let r = Requested { name: "x.weight".into(), shape: vec![2, 2], dtype: DType::F32, init: None };
        let err = init_one(&r, &mut SplitMix64::new(0)).unwrap_err();
        assert_eq!(err.code(), "MARVEL_CONFIG");
        assert!(err.to_string().starts_with("x.weight: the model requests it without declaring"), "{err}");
    }

    /// Each tensor of a fresh two-stage model has the moments of its declared distribution (within 6 standard
    /// errors), and the declarations are the reference's for a sample of each kind.
    #[test]
    fn a_fresh_model_has_the_declared_statistics() {
        let cfg = &layouts()[1];
        let (_, requested) = build_shape_only(DType::F32, &Device::Cpu, |vb| Titok::new(cfg, vb)).unwrap();
        let weights = random_weights(cfg, 11).unwrap();
        let init_of = |name: &str| requested.iter().find(|r| r.name == name).unwrap().init.unwrap();
        // The reference: trunc_normal 0.02 for linear/conv, ones/zeros for norms, width^-0.5 randn for embeddings
        // and tokens, uniform 1/K codebooks, torch's default for the MaskGIT convs (fan_in 16 · 9 here).
        assert_eq!(init_of("encoder.transformer.0.attn.out_proj.weight"), ParamInit::Normal { std: 0.02 });
        assert_eq!(init_of("decoder.ffn.0.weight"), ParamInit::Normal { std: 0.02 });
        assert_eq!(init_of("encoder.patch_embed.bias"), ParamInit::Zeros);
        assert_eq!(init_of("decoder.ln_post.weight"), ParamInit::Ones);
        assert_eq!(init_of("latent_tokens"), ParamInit::Normal { std: 32f64.powf(-0.5) });
        assert_eq!(init_of("decoder.mask_token"), ParamInit::Normal { std: 32f64.powf(-0.5) });
        assert_eq!(init_of("quantize.embedding.weight"), ParamInit::Uniform { bound: 1.0 / 64.0 });
        assert_eq!(init_of("pixel_quantize.embedding.weight"), ParamInit::Uniform { bound: 1.0 / 1024.0 });
        assert_eq!(init_of("pixel_decoder.conv_in.weight"), ParamInit::Uniform { bound: 1.0 / (16.0 * 9.0f64).sqrt() });
        let mut kinds = std::collections::BTreeSet::new();
        for r in &requested {
            let v = weights[&r.name].flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let n = v.len() as f64;
            let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
            let std = (v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
            let name = &r.name;
            match r.init.unwrap() {
                ParamInit::Zeros => assert!(v.iter().all(|&x| x == 0.0), "{name}"),
                ParamInit::Ones => assert!(v.iter().all(|&x| x == 1.0), "{name}"),
                ParamInit::Normal { std: s } => {
                    kinds.insert("normal");
                    assert!(mean.abs() < 6.0 * s / n.sqrt(), "{name}: mean {mean}");
                    // The sample std's standard error is s / sqrt(2n).
                    assert!((std - s).abs() < 6.0 * s / (2.0 * n).sqrt() + 1e-9, "{name}: std {std} for {s}");
                }
                ParamInit::Uniform { bound } => {
                    kinds.insert("uniform");
                    let s = bound / 3f64.sqrt();
                    assert!(v.iter().all(|&x| (x.abs() as f64) <= bound), "{name}");
                    assert!(mean.abs() < 6.0 * s / n.sqrt(), "{name}: mean {mean}");
                    // Uniform: var(s²) = (μ4 - σ⁴)/n with μ4 = 9σ⁴/5, so se(std) = σ sqrt(0.8 / (4n)).
                    assert!((std - s).abs() < 6.0 * s * (0.2 / n).sqrt() + 1e-9, "{name}: std {std} for {s}");
                }
            }
        }
        assert_eq!(kinds.len(), 2);
    }

    #[test]
    fn the_same_seed_gives_identical_weights() {
        let cfg = &layouts()[0];
        let (a, b, c) =
            (random_weights(cfg, 5).unwrap(), random_weights(cfg, 5).unwrap(), random_weights(cfg, 6).unwrap());
        let bits = |t: &Tensor| {
            t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|x| x.to_bits()).collect::<Vec<_>>()
        };
        assert_eq!(a.len(), b.len());
        for (name, t) in &a {
            assert_eq!(bits(t), bits(&b[name]), "{name}");
        }
        assert_ne!(
            bits(&a["encoder.transformer.0.mlp.c_fc.weight"]),
            bits(&c["encoder.transformer.0.mlp.c_fc.weight"])
        );
    }

    #[test]
    fn samples_have_the_declared_moments() {
        let mut rng = SplitMix64::new(3);
        let n = 200_000;
        let moments = |v: &[f32]| {
            let mean = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
            let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / v.len() as f64;
            (mean, var.sqrt(), v.iter().fold(0f64, |m, &x| m.max((x as f64).abs())))
        };
        let (mean, std, _) = moments(&sample(ParamInit::Normal { std: 0.5 }, n, &mut rng));
        // Standard errors: 0.5/sqrt(n) = 1.1e-3 for the mean, 0.5/sqrt(2n) = 7.9e-4 for the std; 5 of them.
        assert!(mean.abs() < 5.6e-3 && (std - 0.5).abs() < 4e-3, "{mean} {std}");
        let (mean, std, max) = moments(&sample(ParamInit::Uniform { bound: 2.0 }, n, &mut rng));
        assert!(mean.abs() < 0.013 && (std - 2.0 / 3f64.sqrt()).abs() < 8e-3 && max <= 2.0, "{mean} {std} {max}");
        assert_eq!(sample(ParamInit::Normal { std: 1.0 }, 7, &mut rng).len(), 7);
    }

    #[test]
    fn an_empty_path_is_refused_not_the_current_directory() {
        let err = write_random_model("", TINY, 0).unwrap_err();
        assert_eq!(err.code(), "MARVEL_INVALID_ARGUMENT");
        assert!(err.to_string().contains("empty path"), "{err}");
    }

    /// The weights file gets the mode every other file gets (0666 less the umask), as config.json does.
    #[cfg(unix)]
    #[test]
    fn the_weights_file_respects_the_umask() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("marvel-init-mode-{}", std::process::id()));
        write_random_model(&dir, TINY, 1).unwrap();
        let reference = dir.join("reference");
        std::fs::File::create(&reference).unwrap();
        let mode = |f: &str| std::fs::metadata(dir.join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode("model.safetensors"), mode("reference"));
        assert_eq!(mode("config.json"), mode("reference"));
        assert!(!dir.join("model.safetensors.partial").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_oversized_model_is_refused_before_anything_is_allocated() {
        // Width 8192 (the largest accepted) with 64 layers on each side: 2 x 64 x 12 x 8192^2 = 1.0e11 parameters,
        // 412 GB as f32; without the check the first allocation would abort the process.
        let json = ["enc", "dec"].iter().fold(TINY.to_string(), |json, side| {
            json.replace(
                &format!("\"vit_{side}_width\": 32, \"vit_{side}_num_layers\": 1"),
                &format!("\"vit_{side}_width\": 8192, \"vit_{side}_num_layers\": 64"),
            )
        });
        let dir = std::env::temp_dir().join(format!("marvel-init-huge-{}", std::process::id()));
        let err = write_random_model(&dir, &json, 0).unwrap_err();
        assert_eq!(err.code(), "MARVEL_CONFIG");
        assert_eq!(
            err.to_string(),
            "this config has 1.0e11 parameters (412.4 GB as f32), above the limit of 2.0e9 parameters (8.0 GB) for a \
             random model"
        );
        assert!(!dir.exists());
        // The same widths with one layer each fit.
        let cfg = TitokConfig::from_json_str(&json).unwrap();
        let one_layer = |vit: VitConfig| VitConfig { num_layers: 1, ..vit };
        let (encoder, decoder) = (one_layer(cfg.encoder), one_layer(cfg.decoder));
        check_random_model_size(&TitokConfig { encoder, decoder, ..cfg }).unwrap();
    }

    #[test]
    fn a_bad_config_writes_nothing() {
        let dir = std::env::temp_dir().join(format!("marvel-init-bad-{}", std::process::id()));
        let err = write_random_model(&dir, r#"{"model": {"vq_model": {"quantize_mode": "fsq"}}}"#, 0).unwrap_err();
        assert_eq!(err.code(), "MARVEL_CONFIG");
        assert!(!dir.exists());
    }
}
