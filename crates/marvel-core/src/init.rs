//! Fresh random weights for any configuration, written as a model folder (`config.json` + `model.safetensors`)
//! that loads like a released checkpoint. Used to start training from scratch and by tests and benchmarks that
//! need a real model of a given size without downloading one.

use std::collections::HashMap;
use std::path::Path;


use candle_core::{DType, Device, Tensor};

use crate::config::TitokConfig;
use crate::error::{MarvelError, Result};
use crate::model::titok::Titok;
use crate::quantize::lfq::SplitMix64;
use crate::invalid;
use crate::weights::{build_shape_only, write_safetensors, Requested, TensorSpec};

/// Initial value of one parameter, chosen from its name and shape: norms start at identity (weight 1, bias 0),
/// biases at 0, everything else uniform with variance 1/fan_in (fan_in = product of all but the first dim),
/// which keeps activations at unit scale through the ViT and conv stacks; codebooks get unit-variance rows.
fn init_one(r: &Requested, rng: &mut SplitMix64) -> Result<Tensor> {
    let n: usize = r.shape.iter().product();
    let name = r.name.as_str();
    let leaf = name.rsplit('.').next().unwrap_or(name);
    let is_norm = name.contains("norm") || name.contains(".ln") || name.starts_with("ln");
    let values: Vec<f32> = if is_norm && leaf == "weight" {
        vec![1.0; n]
    } else if leaf.ends_with("bias") {
        vec![0.0; n]
    } else {
        let fan_in: usize = if r.shape.len() > 1 { r.shape[1..].iter().product() } else { r.shape[0] };
        let bound = (3.0 / fan_in.max(1) as f64).sqrt();
        (0..n).map(|_| ((rng.next_f64() * 2.0 - 1.0) * bound) as f32).collect()
    };
    Ok(Tensor::from_vec(values, r.shape.as_slice(), &Device::Cpu)?.to_dtype(r.dtype)?)
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
