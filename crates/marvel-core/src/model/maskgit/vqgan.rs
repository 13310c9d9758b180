//! The standalone MaskGIT-VQGAN (the reference's `PretrainedTokenizer`, checkpoint
//! `maskgit-vqgan-imagenet-f16-256`): images <-> 16x16 grids of codes. TiTok's stage-1 training targets are
//! its codes.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use super::config::MaskgitConfig;
use super::decoder::MaskgitDecoder;
use super::encoder::MaskgitEncoder;
use super::quantizer::MaskgitQuantizer;
use crate::error::{MarvelError, Result};
use crate::model::WEIGHT_FILES;
use crate::weights::{load_strict, LoadOptions};

/// The released checkpoint's file name, looked for after the model-folder names of [`WEIGHT_FILES`].
pub const RELEASED_WEIGHTS_FILE: &str = "maskgit-vqgan-imagenet-f16-256.bin";

#[derive(Debug, Clone)]
pub struct MaskgitVqgan {
    config: MaskgitConfig,
    encoder: MaskgitEncoder,
    quantize: MaskgitQuantizer,
    decoder: MaskgitDecoder,
}

impl MaskgitVqgan {
    /// Builds the model from `encoder.*`, `quantize.embedding.weight` and `decoder.*` under `vb`.
    pub fn load(config: &MaskgitConfig, vb: VarBuilder) -> Result<Self> {
        config.validate()?;
        Ok(Self {
            config: config.clone(),
            encoder: MaskgitEncoder::new(config, vb.pp("encoder"))?,
            quantize: MaskgitQuantizer::new(config, vb.pp("quantize"))?,
            decoder: MaskgitDecoder::new(config, vb.pp("decoder"))?,
        })
    }

    /// Loads a checkpoint strictly: `path` is a weights file (released sizes) or a folder with one of
    /// [`WEIGHT_FILES`] or [`RELEASED_WEIGHTS_FILE`] and an optional `config.json` holding a `maskgit_vqgan` object.
    pub fn from_pretrained(path: impl AsRef<Path>, device: &Device) -> Result<Self> {
        let path = path.as_ref();
        let (config, weights) = if path.is_dir() {
            let cfg_path = path.join("config.json");
            let config = if cfg_path.is_file() { MaskgitConfig::from_file(&cfg_path)? } else { MaskgitConfig::default() };
            let names = || WEIGHT_FILES.iter().chain([&RELEASED_WEIGHTS_FILE]);
            let weights = names().map(|f| path.join(f)).find(|p| p.is_file()).ok_or_else(|| {
                let names: Vec<&str> = names().copied().collect();
                MarvelError::Checkpoint(format!("{}: no {} found", path.display(), names.join(" or ")))
            })?;
            (config, weights)
        } else if path.is_file() {
            (MaskgitConfig::default(), path.to_path_buf())
        } else {
            return Err(MarvelError::io(path, not_a_checkpoint(path)));
        };
        Ok(load_strict(weights, device, &LoadOptions::default(), |vb| Self::load(&config, vb))?.0)
    }

    pub fn config(&self) -> &MaskgitConfig {
        &self.config
    }

    pub fn encoder(&self) -> &MaskgitEncoder {
        &self.encoder
    }

    pub fn quantizer(&self) -> &MaskgitQuantizer {
        &self.quantize
    }

    pub fn decoder(&self) -> &MaskgitDecoder {
        &self.decoder
    }

    /// Encoder output before quantization: (B, z_channels, 16, 16) for images `x` (B, 3, 256, 256) in [0, 1].
    pub fn encode_latent(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims();
        let (c, r) = (self.config.num_channels, self.config.resolution);
        if dims.len() != 4 || dims[1..] != [c, r, r] {
            return Err(crate::shape_mismatch!("MaskGIT-VQGAN expects images of shape (B, {c}, {r}, {r}), got {dims:?}"));
        }
        self.encoder.forward(&x.to_dtype(DType::F32)?)
    }

    /// Codes (B, 256) U32, row-major over the 16x16 grid.
    pub fn encode(&self, x: &Tensor) -> Result<Tensor> {
        self.quantize.codes(&self.encode_latent(x)?)
    }

    /// Images (B, 3, 256, 256) clamped to [0, 1] from codes (B, 256) or (B, 16, 16), any integer dtype.
    pub fn decode_codes(&self, codes: &Tensor) -> Result<Tensor> {
        self.decode_latent(&self.quantize.lookup(codes)?)
    }

    /// Images clamped to [0, 1] from a latent grid (B, z_channels, 16, 16); `decoder().forward` is unclamped.
    pub fn decode_latent(&self, z: &Tensor) -> Result<Tensor> {
        Ok(self.decoder.forward(z)?.clamp(0f32, 1f32)?)
    }
}

/// Why `path`, neither a folder nor a regular file, cannot be loaded: missing, or present as something else (a FIFO,
/// a socket, a device), which "not found" would misreport.
fn not_a_checkpoint(path: &Path) -> std::io::Error {
    match std::fs::metadata(path) {
        Ok(_) => std::io::Error::new(std::io::ErrorKind::InvalidInput, "it exists but is neither a regular file nor a folder"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or folder"),
        Err(e) => e,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};

    use candle_core::{Device, Shape};
    use candle_nn::var_builder::SimpleBackend;

    use super::*;
    use crate::testutil::{max_abs_diff, Fixture};

    /// Hands out zero tensors without allocating them (a broadcast scalar) and records what was asked for.
    #[derive(Clone, Default)]
    struct ShapeRecorder(Arc<Mutex<BTreeMap<String, Vec<usize>>>>);

    impl SimpleBackend for ShapeRecorder {
        fn get(&self, s: Shape, name: &str, _: candle_nn::Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
            self.0.lock().unwrap().insert(name.to_string(), s.dims().to_vec());
            Tensor::zeros((), dtype, dev)?.broadcast_as(s)
        }
        fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
            candle_core::bail!("unexpected unchecked get of {name}")
        }
        fn contains_tensor(&self, _: &str) -> bool {
            true
        }
    }

    fn released_keys() -> BTreeMap<String, Vec<usize>> {
        let rec = ShapeRecorder::default();
        let vb = VarBuilder::from_backend(Box::new(rec.clone()), DType::F32, Device::Cpu);
        MaskgitVqgan::load(&MaskgitConfig::default(), vb).unwrap();
        let keys = rec.0.lock().unwrap().clone();
        keys
    }

    #[cfg(unix)]
    #[test]
    fn a_fifo_is_reported_as_present_but_not_loadable() {
        let dir = std::env::temp_dir().join(format!("marvel-vqgan-fifo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("weights.bin");
        let _ = std::fs::remove_file(&fifo);
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        let err = MaskgitVqgan::from_pretrained(&fifo, &Device::Cpu).err().unwrap().to_string();
        assert!(err.contains("neither a regular file nor a folder"), "{err}");
        let missing = MaskgitVqgan::from_pretrained(dir.join("nope.bin"), &Device::Cpu).err().unwrap().to_string();
        assert!(missing.contains("no such file or folder"), "{missing}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn released_layout_has_the_reference_key_names() {
        let keys = released_keys();
        assert_eq!(keys.len(), 168);
        let expect = [
            ("encoder.conv_in.weight", vec![128, 3, 3, 3]),
            ("encoder.down.2.block.0.nin_shortcut.weight", vec![256, 256, 1, 1]),
            ("encoder.down.4.block.1.conv2.weight", vec![512, 512, 3, 3]),
            ("encoder.mid.1.norm2.bias", vec![512]),
            ("encoder.conv_out.weight", vec![256, 512, 1, 1]),
            ("quantize.embedding.weight", vec![1024, 256]),
            ("decoder.conv_in.weight", vec![512, 256, 3, 3]),
            ("decoder.up.4.upsample_conv.weight", vec![512, 512, 3, 3]),
            ("decoder.up.3.block.0.conv1.weight", vec![256, 512, 3, 3]),
            ("decoder.up.1.block.0.nin_shortcut.weight", vec![128, 128, 1, 1]),
            ("decoder.up.0.block.1.norm1.weight", vec![128]),
            ("decoder.conv_out.bias", vec![3]),
        ];
        for (name, shape) in expect {
            assert_eq!(keys.get(name), Some(&shape), "{name}");
        }
        for absent in ["encoder.conv_in.bias", "decoder.up.0.upsample_conv.weight", "encoder.down.4.downsample"] {
            assert!(!keys.contains_key(absent), "{absent}");
        }
        let params: usize = keys.values().map(|s| s.iter().product::<usize>()).sum();
        let decoder: usize = keys.iter().filter(|(k, _)| k.starts_with("decoder.")).map(|(_, s)| s.iter().product::<usize>()).sum();
        eprintln!("released MaskGIT-VQGAN: {params} parameters, decoder {decoder}");
    }

    fn fixture_model() -> (Fixture, MaskgitVqgan) {
        let fx = Fixture::load("maskgit_vqgan");
        let cfg = MaskgitConfig::from_file(fx.dir.join("config.json")).unwrap();
        let vb = unsafe {
            VarBuilder::from_mmaped_safetensors(&[fx.dir.join("model.safetensors")], DType::F32, &Device::Cpu).unwrap()
        };
        let model = MaskgitVqgan::load(&cfg, vb).unwrap();
        (fx, model)
    }

    #[test]
    #[cfg_attr(not(marvel_parity), ignore = "parity fixtures not found at ../shared/parity or $MARVEL_PARITY_DIR")]
    fn fixture_has_the_same_key_tree_as_the_released_layout() {
        let fx = Fixture::load("maskgit_vqgan");
        let stored = candle_core::safetensors::load(fx.dir.join("model.safetensors"), &Device::Cpu).unwrap();
        let stored: Vec<&String> = stored.keys().collect::<std::collections::BTreeSet<_>>().into_iter().collect();
        let released = released_keys();
        assert_eq!(stored, released.keys().collect::<Vec<_>>());
    }

    #[test]
    #[cfg_attr(not(marvel_parity), ignore = "parity fixtures not found at ../shared/parity or $MARVEL_PARITY_DIR")]
    fn parity_maskgit_vqgan() {
        let (fx, model) = fixture_model();
        let x = fx.images_f32();
        let latent = model.encode_latent(&x).unwrap();
        let latent_err = max_abs_diff(&latent, fx.expected("enc_latent"));

        let codes = model.quantizer().codes(&latent).unwrap();
        let want_codes = fx.expected("codes").to_dtype(DType::I64).unwrap();
        let got_codes = codes.to_dtype(DType::I64).unwrap();
        let mismatches: Vec<(usize, usize, i64, i64)> = got_codes
            .to_vec2::<i64>()
            .unwrap()
            .iter()
            .zip(want_codes.to_vec2::<i64>().unwrap())
            .enumerate()
            .flat_map(|(b, (g, w))| {
                g.iter().zip(w).enumerate().filter(|(_, (g, w))| g != &w).map(move |(i, (g, w))| (b, i, *g, w)).collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(model.encode(&x).unwrap().to_dtype(DType::I64).unwrap().to_vec2::<i64>().unwrap(), got_codes.to_vec2::<i64>().unwrap());

        // The fixture keeps the first 2 reconstructions of the batch of 3, decoded from the expected codes.
        let recon = model.decode_codes(&want_codes).unwrap();
        assert_eq!(recon.dims(), &[3, 3, 256, 256]);
        let recon_err = max_abs_diff(&recon, fx.expected("recon"));
        let (lo, hi) = (recon.min_all().unwrap().to_scalar::<f32>().unwrap(), recon.max_all().unwrap().to_scalar::<f32>().unwrap());
        eprintln!(
            "maskgit_vqgan parity: enc_latent max abs err {latent_err:.3e}, codes {} mismatches of {}, recon max abs err {recon_err:.3e} (range [{lo}, {hi}])",
            mismatches.len(),
            got_codes.elem_count()
        );
        assert!(latent_err <= 1e-4, "enc_latent error {latent_err}");
        assert!(mismatches.is_empty(), "code mismatches (image, position, got, want): {mismatches:?}");
        assert!(recon_err <= 1e-4, "recon error {recon_err}");
        assert!(lo >= 0.0 && hi <= 1.0);
    }

    #[test]
    #[cfg_attr(not(marvel_parity), ignore = "parity fixtures not found at ../shared/parity or $MARVEL_PARITY_DIR")]
    fn wrong_inputs_are_rejected_with_their_shape() {
        let (_, model) = fixture_model();
        let x = Tensor::zeros((1, 3, 128, 128), DType::F32, &Device::Cpu).unwrap();
        let err = model.encode(&x).unwrap_err();
        assert_eq!(err.code(), "MARVEL_SHAPE_MISMATCH");
        assert!(err.to_string().contains("[1, 3, 128, 128]"), "{err}");
        let z = Tensor::zeros((1, 8, 16, 16), DType::F32, &Device::Cpu).unwrap();
        assert!(model.decode_latent(&z).unwrap_err().to_string().contains("(B, 64, h, w)"));
        let codes = Tensor::new(&[[1024u32; 256]], &Device::Cpu).unwrap();
        assert_eq!(model.decode_codes(&codes).unwrap_err().code(), "MARVEL_INVALID_ARGUMENT");
    }
}
