//! TiTok (Yu et al. 2024, "An Image is Worth 32 Tokens for Reconstruction and Generation";
//! bytedance/1d-tokenizer `modeling/titok.py`): a ViT encoder turns a 256x256 image into N latent tokens, a
//! quantizer (VQ, or MARVEL's multi-depth LFQ) makes them discrete, and a ViT decoder maps them back.
//!
//! Two layouts exist. Single-stage models decode to pixels directly. Two-stage ("paper", `finetune_decoder`)
//! models decode to 1024 MaskGIT logits per 16x16 patch; `decode` mixes the MaskGIT pixel codebook with their
//! softmax (a soft, not an argmax, lookup) and runs the MaskGIT pixel decoder on the mix.

mod decoder;
mod encoder;
#[cfg(test)]
mod tests;

pub use decoder::TitokDecoder;
pub use encoder::TitokEncoder;

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use crate::config::TitokConfig;
use crate::error::{MarvelError, Result};
use crate::model::maskgit::{MaskgitDecoder, MaskgitQuantizer};
use crate::model::WEIGHT_FILES;
use crate::nn::{param, ParamInit};
use crate::quantize::Quantizer;
use crate::weights::{check_strict, load_strict, Checkpoint, LoadOptions, LoadReport, Requested};
use crate::{invalid, shape_mismatch};

/// The second stage of two-stage models: the pixel codebook and the MaskGIT decoder.
#[derive(Debug, Clone)]
struct PixelStage {
    /// `pixel_quantize.embedding.weight`: (1024, z_channels).
    codebook: Tensor,
    decoder: MaskgitDecoder,
}

#[derive(Debug, Clone)]
pub struct Titok {
    cfg: TitokConfig,
    latent_tokens: Tensor,
    encoder: TitokEncoder,
    decoder: TitokDecoder,
    quantize: Quantizer,
    pixel: Option<PixelStage>,
    device: Device,
    dtype: DType,
}

fn folder_config(dir: &Path) -> Result<TitokConfig> {
    if !dir.is_dir() {
        return Err(MarvelError::io(dir, std::io::Error::new(std::io::ErrorKind::NotFound, "model folder not found")));
    }
    TitokConfig::from_path(dir.join("config.json"))
}

/// The first of [`WEIGHT_FILES`] present in `dir`.
pub fn weights_file(dir: &Path) -> Result<std::path::PathBuf> {
    WEIGHT_FILES.iter().map(|f| dir.join(f)).find(|p| p.is_file()).ok_or_else(|| {
        MarvelError::Checkpoint(format!("{}: no {} found", dir.display(), WEIGHT_FILES.join(" or ")))
    })
}

impl Titok {
    /// Builds the model under `vb`, whose root holds the reference's keys (`encoder.*`, `decoder.*`,
    /// `latent_tokens`, `quantize.*`, and for two-stage models `pixel_quantize.*`, `pixel_decoder.*`).
    pub fn new(cfg: &TitokConfig, vb: VarBuilder) -> Result<Self> {
        let (n, width) = (cfg.num_latent_tokens, cfg.encoder.width);
        let latent_tokens = param(&vb, (n, width), "latent_tokens", ParamInit::scaled_normal(width))?;
        let encoder = TitokEncoder::new(cfg, vb.pp("encoder"))?;
        let decoder = TitokDecoder::new(cfg, vb.pp("decoder"))?;
        let quantize = Quantizer::new(&cfg.quantizer, vb.pp("quantize"))?;
        let pixel = match &cfg.pixel_decoder {
            Some(pd) => Some(PixelStage {
                codebook: MaskgitQuantizer::codebook(pd.codebook_size, pd.z_channels, vb.pp("pixel_quantize"))?,
                decoder: MaskgitDecoder::new(pd, vb.pp("pixel_decoder"))?,
            }),
            None => None,
        };
        Ok(Self {
            cfg: cfg.clone(),
            latent_tokens,
            encoder,
            decoder,
            quantize,
            pixel,
            device: vb.device().clone(),
            dtype: vb.dtype(),
        })
    }

    /// Loads a model folder: `config.json` plus `model.safetensors` (or `pytorch_model.bin`), strictly.
    pub fn from_pretrained(dir: impl AsRef<Path>, device: &Device) -> Result<Self> {
        let dir = dir.as_ref();
        let cfg = folder_config(dir)?;
        Ok(Self::load(&cfg, weights_file(dir)?, device, &LoadOptions::default())?.0)
    }

    /// The checks of [`Self::from_pretrained`] without reading the weights: the folder's config, and the tensors
    /// the model asks for, each stored with its shape and dtype.
    pub fn check_pretrained(dir: impl AsRef<Path>) -> Result<(TitokConfig, Vec<Requested>)> {
        let dir = dir.as_ref();
        let cfg = folder_config(dir)?;
        let ckpt = std::sync::Arc::new(Checkpoint::open(weights_file(dir)?)?);
        let (requested, _) = check_strict(ckpt, &LoadOptions::default(), |vb| Self::new(&cfg, vb))?;
        Ok((cfg, requested))
    }

    /// Builds the model for `cfg` from one weight file; see [`crate::weights::load_strict`] for the checks.
    pub fn load(
        cfg: &TitokConfig,
        weights: impl AsRef<Path>,
        device: &Device,
        opts: &LoadOptions,
    ) -> Result<(Self, LoadReport)> {
        load_strict(weights, device, opts, |vb| Self::new(cfg, vb))
    }

    /// Packs the encoder's and decoder's linear weights once for the CPU's product and drops their (out, in)
    /// copies (`ResidualAttentionBlock::pack_weights`, which leaves weights on other devices or dtypes as they are):
    /// for a model that owns its weights and only infers.
    pub fn pack_weights(&mut self) -> Result<()> {
        // One scratch copy for every weight's pack, as large as the largest.
        let mut scratch = Vec::new();
        self.encoder.pack_weights(&mut scratch)?;
        Ok(self.decoder.pack_weights(&mut scratch)?)
    }

    pub fn config(&self) -> &TitokConfig {
        &self.cfg
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn encoder(&self) -> &TitokEncoder {
        &self.encoder
    }

    pub fn decoder(&self) -> &TitokDecoder {
        &self.decoder
    }

    pub fn quantizer(&self) -> &Quantizer {
        &self.quantize
    }

    /// The learned latent-token queries (N, D).
    pub fn latent_tokens(&self) -> &Tensor {
        &self.latent_tokens
    }

    fn check_images(&self, x: &Tensor) -> Result<Tensor> {
        let s = self.cfg.image_size;
        match x.dims() {
            &[_, 3, h, w] if h == s && w == s => {}
            dims => return Err(shape_mismatch!("images must be (B, 3, {s}, {s}), got {dims:?}")),
        }
        if !x.dtype().is_float() {
            return Err(invalid!("images must be float values in [0, 1], got {:?}", x.dtype()));
        }
        Ok(x.to_device(&self.device)?.to_dtype(self.dtype)?)
    }

    /// The encoder output before quantization: (B, token_size, 1, N).
    pub fn encode_latent(&self, x: &Tensor) -> Result<Tensor> {
        let x = self.check_images(x)?;
        Ok(self.encoder.forward(&x, &self.latent_tokens)?)
    }

    /// `x`: (B, 3, 256, 256) float in [0, 1] (x = u8 / 255). Returns (z_q, tokens): z_q (B, token_size, 1, N) is
    /// the straight-through quantized latent; tokens are u32, (B, N) for VQ and (B, N, depths) for LFQ.
    pub fn encode(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let z = self.encode_latent(x)?;
        self.quantize.quantize(&z)
    }

    /// `z_q`: (B, token_size, 1, N) -> images (B, 3, 256, 256), unclamped. Two-stage models without a pixel
    /// decoder (stage 1, `finetune_decoder` false with the legacy head) return the logits (B, 1024, 16, 16).
    pub fn decode(&self, z_q: &Tensor) -> Result<Tensor> {
        let (t, n) = (self.cfg.token_size, self.cfg.num_latent_tokens);
        match z_q.dims() {
            &[_, c, 1, w] if c == t && w == n => {}
            dims => return Err(shape_mismatch!("latent must be (B, {t}, 1, {n}), got {dims:?}")),
        }
        let z_q = z_q.to_device(&self.device)?.to_dtype(self.dtype)?;
        let Some(pixel) = &self.pixel else {
            return Ok(self.decoder.forward(&z_q)?);
        };
        let logits = self.decoder.logits_channels_last(&z_q)?; // (B, g², 1024)
        let (b, g2, _) = logits.dims3()?;
        let g = self.cfg.decoder_grid();
        debug_assert_eq!(g * g, g2);
        // h[b, :, y, x] = Σ_c softmax(logits)[b, c, y, x] · codebook[c, :]: one matmul, channels-last.
        let probs = crate::nn::softmax_last_dim(&logits)?;
        let (classes, z_channels) = pixel.codebook.dims2()?;
        let mixed = probs.reshape((b * g2, classes))?.matmul(&pixel.codebook)?;
        let mixed = mixed.reshape((b, g2, z_channels))?.transpose(1, 2)?.reshape((b, z_channels, g, g))?;
        pixel.decoder.forward(&mixed)
    }

    /// Token ids (as `encode` returns them, any integer dtype) -> images. VQ decodes codebook rows (not the
    /// straight-through z_q, so it can differ from `decode(z_q)` in the last bits); LFQ decodes every depth
    /// present.
    pub fn decode_tokens(&self, tokens: &Tensor) -> Result<Tensor> {
        let z = self.quantize.dequantize(&tokens.to_device(&self.device)?, None)?;
        self.decode(&z)
    }

    /// LFQ: decode only the first `depth` depths of `tokens` (B, N, >= depth), the coarse-to-fine prefix.
    pub fn decode_tokens_to_depth(&self, tokens: &Tensor, depth: usize) -> Result<Tensor> {
        let z = self.quantize.dequantize(&tokens.to_device(&self.device)?, Some(depth))?;
        self.decode(&z)
    }
}
