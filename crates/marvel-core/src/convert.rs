//! MARVEL models start from a TiTok checkpoint (the MARVEL recipe initialises from TiTok-L-32): the encoder,
//! decoder, latent tokens and pixel decoder are taken over unchanged, the vector quantizer is replaced by the
//! multi-depth LFQ (which has no parameters: its codes are sign patterns), and the result is written as a model
//! folder that loads like any other.

use std::path::Path;
use std::sync::Arc;

use candle_core::Device;
use serde_json::Value;

use crate::config::TitokConfig;
use crate::error::{MarvelError, Result};
use crate::invalid;
use crate::model::titok::{weights_file, Titok};
use crate::model::WEIGHT_FILES;
use crate::weights::{check_strict, write_safetensors, Checkpoint, LoadOptions, TensorSpec};

/// The TiTok `config.json` turned into its MARVEL counterpart: `quantize_mode` "lfq" with `num_depths`, the
/// VQ-only keys removed, the MARVEL stage-1 loss settings written out.
pub fn marvel_config_json(titok_config: &str, num_depths: usize) -> Result<String> {
    let mut root: Value = serde_json::from_str(titok_config)
        .map_err(|e| MarvelError::Config(format!("invalid TiTok config.json: {e}")))?;
    let vq = root
        .pointer_mut("/model/vq_model")
        .and_then(Value::as_object_mut)
        .ok_or_else(|| MarvelError::Config("config.json has no model.vq_model section".into()))?;
    if vq.get("quantize_mode").and_then(Value::as_str).unwrap_or("vq") != "vq" {
        return Err(MarvelError::Config("the source model is not a TiTok VQ model (quantize_mode is not \"vq\")".into()));
    }
    for key in ["codebook_size", "use_l2_norm"] {
        vq.remove(key);
    }
    vq.insert("quantize_mode".into(), "lfq".into());
    vq.insert("num_depths".into(), num_depths.into());
    vq.entry("entropy_loss_weight").or_insert(0.02.into());
    vq.entry("entropy_loss_temperature").or_insert(0.01.into());
    vq.entry("entropy_gamma").or_insert(1.0.into());
    let text = serde_json::to_string_pretty(&root).expect("a JSON value serialises");
    TitokConfig::from_json_str(&text)?;
    Ok(text)
}

/// Whether `a` and `b` name the same existing file or folder (through links, `..` or hard links).
fn same_entry(a: &Path, b: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let (Ok(a), Ok(b)) = (std::fs::metadata(a), std::fs::metadata(b)) {
            return (a.dev(), a.ino()) == (b.dev(), b.ino());
        }
        false
    }
    #[cfg(not(unix))]
    {
        matches!((a.canonicalize(), b.canonicalize()), (Ok(a), Ok(b)) if a == b)
    }
}

/// `dst` must be a folder other than `src` that does not hold `src`'s weights or config: writing there would
/// truncate the checkpoint while it is being read.
fn check_destination(src: &Path, dst: &Path) -> Result<()> {
    if src.as_os_str().is_empty() || dst.as_os_str().is_empty() {
        return Err(invalid!("marvelFromTitok needs a source and a destination folder, got an empty path"));
    }
    if same_entry(src, dst) {
        return Err(invalid!("the destination {} is the source folder {}; choose a new folder", dst.display(), src.display()));
    }
    let read = WEIGHT_FILES.iter().chain(&["config.json"]).map(|f| src.join(f));
    for source_file in read {
        for written in ["model.safetensors", "config.json"] {
            if same_entry(&dst.join(written), &source_file) {
                return Err(invalid!(
                    "{} is the source's {} (a link to it); choose a new destination folder",
                    dst.join(written).display(),
                    source_file.display()
                ));
            }
        }
    }
    Ok(())
}

/// Writes `dst` (config.json + model.safetensors): the TiTok model in `src` with its quantizer replaced by a
/// `num_depths`-depth LFQ. Every tensor outside `quantize.*` is copied bit for bit, one at a time (a conversion
/// holds one tensor in memory, not the model); the written folder is checked strictly against the new config
/// (names, shapes, dtypes) before returning it.
pub fn marvel_from_titok(src: impl AsRef<Path>, dst: impl AsRef<Path>, num_depths: usize) -> Result<TitokConfig> {
    let (src, dst) = (src.as_ref(), dst.as_ref());
    check_destination(src, dst)?;
    let config_path = src.join("config.json");
    let text = std::fs::read_to_string(&config_path).map_err(|e| MarvelError::io(&config_path, e))?;
    let marvel_json = marvel_config_json(&text, num_depths)?;
    let cfg = TitokConfig::from_json_str(&marvel_json)?;
    let ckpt = Checkpoint::open(weights_file(src)?)?;
    let specs = ckpt
        .tensors()
        .iter()
        .filter(|(k, _)| !k.starts_with("quantize."))
        .map(|(k, t)| {
            let dtype = t.dtype.ok_or_else(|| {
                MarvelError::Checkpoint(format!("{}: {k}: dtype {} is not supported", ckpt.path().display(), t.dtype_name))
            })?;
            Ok(TensorSpec { name: k.clone(), shape: t.shape.clone(), dtype })
        })
        .collect::<Result<Vec<_>>>()?;
    std::fs::create_dir_all(dst).map_err(|e| MarvelError::io(dst, e))?;
    let out_weights = dst.join("model.safetensors");
    write_safetensors(&out_weights, &specs, |s| ckpt.load(&s.name, &Device::Cpu))?;
    let out_config = dst.join("config.json");
    std::fs::write(&out_config, &marvel_json).map_err(|e| MarvelError::io(&out_config, e))?;
    let written = Arc::new(Checkpoint::open(&out_weights)?);
    check_strict(written, &LoadOptions::default(), |vb| Titok::new(&cfg, vb))?;
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{max_abs_diff, Fixture};

    #[test]
    #[cfg_attr(not(marvel_parity), ignore = "parity fixtures not found at ../shared/parity or $MARVEL_PARITY_DIR")]
    fn a_titok_checkpoint_becomes_a_marvel_model_that_keeps_every_other_tensor() {
        let f = Fixture::load("titok_vq_legacy");
        let dst = std::env::temp_dir().join(format!("marvel-convert-{}", std::process::id()));
        marvel_from_titok(&f.dir, &dst, 4).unwrap();
        let marvel = Titok::from_pretrained(&dst, &Device::Cpu).unwrap();
        assert_eq!(marvel.quantizer().num_depths(), 4);
        assert_eq!(marvel.quantizer().codebook_size(), 4096, "2^token_size codes per depth");

        let src = Checkpoint::open(f.dir.join("model.safetensors")).unwrap();
        let out = Checkpoint::open(dst.join("model.safetensors")).unwrap();
        let kept: Vec<_> = src.tensors().keys().filter(|k| !k.starts_with("quantize.")).cloned().collect();
        assert_eq!(out.tensors().keys().cloned().collect::<Vec<_>>(), kept);
        for k in &kept {
            let (a, b) = (src.load(k, &Device::Cpu).unwrap(), out.load(k, &Device::Cpu).unwrap());
            assert_eq!(max_abs_diff(&a, &b), 0.0, "{k}");
        }
        // Same encoder: the latent before quantization is the TiTok one.
        let latent = marvel.encode_latent(&f.images_f32()).unwrap();
        assert!(max_abs_diff(&latent, f.expected("enc_latent")) <= 1e-5);
        // The folder loads back like any model.
        let again = crate::tokenizer::Tokenizer::from_pretrained(&dst).unwrap();
        assert_eq!((again.info().architecture, again.info().depth), ("marvel", 4));
        std::fs::remove_dir_all(&dst).unwrap();
    }

    const TINY_VQ: &str = r#"{"model": {"vq_model": {
        "codebook_size": 16, "token_size": 6, "num_latent_tokens": 4,
        "vit_enc_model_size": "custom", "vit_enc_width": 32, "vit_enc_num_layers": 1, "vit_enc_num_heads": 2,
        "vit_dec_model_size": "custom", "vit_dec_width": 32, "vit_dec_num_layers": 1, "vit_dec_num_heads": 2,
        "vit_enc_patch_size": 16, "vit_dec_patch_size": 16, "is_legacy": false, "finetune_decoder": false}},
        "dataset": {"preprocessing": {"crop_size": 256}}}"#;

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("marvel-convert-{name}-{}", std::process::id()));
        std::fs::remove_dir_all(&dir).ok();
        dir
    }

    #[test]
    fn a_random_titok_converts_tensor_by_tensor_and_loads() {
        let (src, dst) = (scratch("rand-src"), scratch("rand-dst"));
        crate::init::write_random_model(&src, TINY_VQ, 5).unwrap();
        let cfg = marvel_from_titok(&src, &dst, 3).unwrap();
        assert_eq!(cfg.num_latent_tokens, 4);
        let (a, b) = (Checkpoint::open(src.join("model.safetensors")).unwrap(), Checkpoint::open(dst.join("model.safetensors")).unwrap());
        let kept: Vec<_> = a.tensors().keys().filter(|k| !k.starts_with("quantize.")).cloned().collect();
        assert_eq!(b.tensors().keys().cloned().collect::<Vec<_>>(), kept);
        for k in &kept {
            assert_eq!(max_abs_diff(&a.load(k, &Device::Cpu).unwrap(), &b.load(k, &Device::Cpu).unwrap()), 0.0, "{k}");
        }
        let tok = crate::tokenizer::Tokenizer::from_pretrained(&dst).unwrap();
        assert_eq!((tok.info().architecture, tok.info().depth), ("marvel", 3));
        std::fs::remove_dir_all(&src).unwrap();
        std::fs::remove_dir_all(&dst).unwrap();
    }

    #[test]
    fn the_source_folder_is_never_the_destination() {
        let src = scratch("self");
        crate::init::write_random_model(&src, TINY_VQ, 5).unwrap();
        let before = std::fs::read(src.join("model.safetensors")).unwrap();
        let mut same = vec![src.clone(), src.join("."), src.join("..").join(src.file_name().unwrap())];
        #[cfg(unix)]
        {
            // A link to the folder, and a new folder whose weights file is a link to the source's.
            let link = scratch("self-link");
            std::os::unix::fs::symlink(&src, &link).unwrap();
            let holder = scratch("self-holder");
            std::fs::create_dir_all(&holder).unwrap();
            std::os::unix::fs::symlink(src.join("model.safetensors"), holder.join("model.safetensors")).unwrap();
            same.extend([link, holder]);
        }
        for dst in &same {
            let err = marvel_from_titok(&src, dst, 2).unwrap_err();
            assert_eq!(err.code(), "MARVEL_INVALID_ARGUMENT", "{}: {err}", dst.display());
        }
        assert_eq!(std::fs::read(src.join("model.safetensors")).unwrap(), before);
        for empty in [("", src.to_str().unwrap()), (src.to_str().unwrap(), "")] {
            assert_eq!(marvel_from_titok(empty.0, empty.1, 2).unwrap_err().code(), "MARVEL_INVALID_ARGUMENT");
        }
        for p in same.iter().skip(3).chain([&src]) {
            std::fs::remove_file(p).or_else(|_| std::fs::remove_dir_all(p)).unwrap();
        }
    }

    #[test]
    fn config_conversion_rewrites_the_quantizer_only() {
        let titok = r#"{"model": {"vq_model": {"codebook_size": 4096, "token_size": 12, "use_l2_norm": true,
            "vit_enc_model_size": "large", "vit_dec_model_size": "large", "vit_enc_patch_size": 16,
            "vit_dec_patch_size": 16, "num_latent_tokens": 32}}, "dataset": {"preprocessing": {"crop_size": 256}},
            "experiment": {"name": "kept"}}"#;
        let out: Value = serde_json::from_str(&marvel_config_json(titok, 4).unwrap()).unwrap();
        let vq = &out["model"]["vq_model"];
        assert_eq!(vq["quantize_mode"], "lfq");
        assert_eq!(vq["num_depths"], 4);
        assert!(vq.get("codebook_size").is_none() && vq.get("use_l2_norm").is_none());
        assert_eq!(vq["vit_enc_model_size"], "large");
        assert_eq!(out["experiment"]["name"], "kept");
        let err = marvel_config_json(&marvel_config_json(titok, 4).unwrap(), 2).unwrap_err();
        assert!(err.to_string().contains("not a TiTok VQ model"), "{err}");
        assert_eq!(marvel_config_json(titok, 0).unwrap_err().code(), "MARVEL_CONFIG");
    }
}
