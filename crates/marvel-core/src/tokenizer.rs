//! The user-facing tokenizer: bytes in, token ids out, and back. It owns the layout conventions of the public
//! API so bindings only move buffers: images are interleaved RGB bytes (B, H, W, 3); token ids are *depth-major*
//! (D, B, N), so the first d depths of a batch are a prefix of the buffer (progressive transmission).

use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::config::{QuantizerConfig, TitokConfig};
use crate::device::DeviceSpec;
use crate::error::Result;
use crate::image::{images_from_u8_nhwc, images_to_u8_nhwc_into};
use crate::memory::ReturnMemoryOnDrop;
use crate::model::titok::{weights_file, Titok};
use crate::tokens::TokenBatch;
use crate::weights::{build_shape_only, LoadOptions, Requested};
use crate::{invalid, shape_mismatch};

/// Images per forward pass: bounds activation memory for large batches (the L-32 encoder holds ~0.5 GB of
/// activations per 8 images) while keeping the matmuls big enough to use every core.
pub const MAX_CHUNK: usize = 8;

/// Images per forward pass on a GPU: 64 images of L-32 activations fit easily in a GPU's memory, and smaller
/// launches would leave most of its cores idle.
pub const GPU_CHUNK: usize = 64;

/// What a model is, for display and for callers sizing buffers.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenizerInfo {
    /// `"titok"` (VQ) or `"marvel"` (multi-depth LFQ).
    pub architecture: &'static str,
    /// `"vq"` or `"lfq"`.
    pub quantizer: &'static str,
    pub image_size: usize,
    pub num_tokens: usize,
    /// Depths per token (1 for VQ).
    pub depth: usize,
    /// Ids per depth: tokens lie in `0..codebook_size`.
    pub codebook_size: u64,
    /// Bits to store one id: ceil(log2(codebook_size)).
    pub bits_per_token: u32,
    /// Bits one image costs at full depth: num_tokens x depth x bits_per_token.
    pub bits_per_image: u64,
    pub parameters: u64,
    pub encoder_width: usize,
    pub encoder_layers: usize,
    pub decoder_width: usize,
    pub decoder_layers: usize,
    /// Decodes through the MaskGIT pixel decoder (the two-stage "paper" layout).
    pub two_stage: bool,
}

impl TokenizerInfo {
    /// Bits a whole image costs at `depth` depths.
    pub fn bits_per_image_at(&self, depth: usize) -> u64 {
        bits_per_image(self.num_tokens, depth, self.bits_per_token)
    }
}

pub struct Tokenizer {
    model: Titok,
    info: TokenizerInfo,
    /// Last, so it drops after the model.
    _memory: ReturnMemoryOnDrop,
}

fn bits_per_image(num_tokens: usize, depth: usize, bits_per_token: u32) -> u64 {
    num_tokens as u64 * depth as u64 * bits_per_token as u64
}

fn bits_for(codebook_size: u64) -> u32 {
    64 - (codebook_size.max(2) - 1).leading_zeros()
}

impl Tokenizer {
    /// Loads a model folder (`config.json` + `model.safetensors` or `pytorch_model.bin`), strictly.
    pub fn from_pretrained(dir: impl AsRef<Path>) -> Result<Self> {
        Self::from_pretrained_on(dir, DeviceSpec::Cpu)
    }

    /// [`Self::from_pretrained`] with the weights on `device`; a GPU that cannot be opened is refused before any
    /// weight is read. On a GPU the transformers run in bf16 (tensor cores; about 3 significant digits, far below
    /// what 8-bit output pixels resolve) while the quantizer converts its input to f32 and codes in f32.
    pub fn from_pretrained_on(dir: impl AsRef<Path>, device: DeviceSpec) -> Result<Self> {
        let candle = device.open()?;
        if !device.is_cuda() {
            // The model owns its weights and only infers: its ViTs' weights are packed once, here.
            let mut model = Titok::from_pretrained(dir, &candle)?;
            model.pack_weights()?;
            return Self::new(model);
        }
        Self::load_as(dir.as_ref(), &candle, DType::BF16)
    }

    /// The model folder `dir` with parameters of `dtype` on `device`.
    pub fn load_as(dir: &Path, device: &Device, dtype: DType) -> Result<Self> {
        let cfg = TitokConfig::from_path(dir.join("config.json"))?;
        let opts = LoadOptions { dtype, ..LoadOptions::default() };
        Self::new(Titok::load(&cfg, weights_file(dir)?, device, &opts)?.0)
    }

    pub fn new(model: Titok) -> Result<Self> {
        let info = describe(model.config())?;
        Ok(Self { model, info, _memory: ReturnMemoryOnDrop })
    }

    /// What the model folder `dir` holds, checked as strictly as [`Self::from_pretrained`] checks it (config,
    /// then every tensor's name, shape and dtype) from `config.json` and the weights file's table of contents
    /// alone: no weight is read, so it costs a few MB whatever the model's size.
    pub fn inspect(dir: impl AsRef<Path>) -> Result<TokenizerInfo> {
        let (cfg, requested) = Titok::check_pretrained(dir)?;
        Ok(describe_requested(&cfg, &requested))
    }

    pub fn info(&self) -> &TokenizerInfo {
        &self.info
    }

    pub fn model(&self) -> &Titok {
        &self.model
    }

    fn chunk(&self) -> usize {
        if self.model.device().is_cuda() {
            GPU_CHUNK
        } else {
            MAX_CHUNK
        }
    }

    /// Encodes `batch` images of `height` x `width` interleaved RGB bytes to depth-major token ids.
    pub fn encode_rgb(&self, rgb: &[u8], batch: usize, height: usize, width: usize) -> Result<TokenBatch> {
        let s = self.info.image_size;
        if height != s || width != s {
            return Err(shape_mismatch!("images must be {s}x{s} (resize or crop first), got {width}x{height}"));
        }
        if batch == 0 {
            return Err(invalid!("encode needs at least one image"));
        }
        crate::tensor::check_shape("images", rgb.len(), &[batch, s, s, 3])?;
        let (n, d) = (self.info.num_tokens, self.info.depth);
        let mut ids = vec![0u32; d * batch * n];
        let image_len = s * s * 3;
        let chunk_size = self.chunk();
        for start in (0..batch).step_by(chunk_size) {
            let b = chunk_size.min(batch - start);
            let x =
                images_from_u8_nhwc(&rgb[start * image_len..(start + b) * image_len], (b, s, s), self.model.device())?;
            let (_, tokens) = self.model.encode(&x)?;
            // (b, N) or (b, N, D) -> (D, b, N), then scatter into the depth-major batch.
            let tokens = match tokens.rank() {
                2 => tokens.unsqueeze(0)?,
                _ => tokens.permute((2, 0, 1))?,
            };
            let chunk = tokens.to_dtype(DType::U32)?.flatten_all()?.to_vec1::<u32>()?;
            for depth in 0..d {
                let src = &chunk[depth * b * n..(depth + 1) * b * n];
                let dst = (depth * batch + start) * n;
                ids[dst..dst + b * n].copy_from_slice(src);
            }
        }
        Ok(TokenBatch { ids, depth: d, batch, num_tokens: n })
    }

    /// Checks a depth-major token buffer against the model and returns the depth to decode.
    fn check_tokens(&self, tokens: &TokenBatch, depth: Option<usize>) -> Result<usize> {
        let info = &self.info;
        if tokens.num_tokens != info.num_tokens {
            return Err(shape_mismatch!(
                "the model takes {} tokens per image, got {}",
                info.num_tokens,
                tokens.num_tokens
            ));
        }
        crate::tensor::check_shape("tokens", tokens.ids.len(), &[tokens.depth, tokens.batch, tokens.num_tokens])?;
        if tokens.batch == 0 {
            return Err(invalid!("decode needs at least one image's tokens"));
        }
        let depth = depth.unwrap_or(tokens.depth);
        if depth == 0 || depth > info.depth {
            return Err(invalid!("depth must be between 1 and the model's {} depth(s), got {depth}", info.depth));
        }
        if depth > tokens.depth {
            return Err(invalid!("depth {depth} requested but the tokens hold only {} depth(s)", tokens.depth));
        }
        let limit = info.codebook_size;
        let used = &tokens.ids[..depth * tokens.batch * tokens.num_tokens];
        if let Some(i) = used.iter().position(|&t| t as u64 >= limit) {
            let (n, b) = (tokens.num_tokens, tokens.batch);
            return Err(invalid!(
                "token {} at (depth {}, image {}, position {}) is outside 0..{limit}",
                used[i],
                i / (b * n),
                (i / n) % b,
                i % n
            ));
        }
        Ok(depth)
    }

    /// Decodes the first `depth` depths (all the tokens hold when `None`) to unclamped float images
    /// (B, 3, H, W), one chunk at a time; `each` receives every decoded chunk in order.
    fn decode_chunks(
        &self,
        tokens: &TokenBatch,
        depth: Option<usize>,
        mut each: impl FnMut(Tensor) -> Result<()>,
    ) -> Result<()> {
        let depth = self.check_tokens(tokens, depth)?;
        let (batch, n) = (tokens.batch, tokens.num_tokens);
        let all = Tensor::from_slice(&tokens.ids[..depth * batch * n], (depth, batch, n), self.model.device())?;
        let chunk_size = self.chunk();
        for start in (0..batch).step_by(chunk_size) {
            let b = chunk_size.min(batch - start);
            let chunk = all.narrow(1, start, b)?;
            // The model takes (b, N) for VQ and (b, N, depth) for LFQ.
            let images = if self.info.quantizer == "vq" {
                self.model.decode_tokens(&chunk.squeeze(0)?)?
            } else {
                self.model.decode_tokens_to_depth(&chunk.permute((1, 2, 0))?.contiguous()?, depth)?
            };
            each(images)?;
        }
        Ok(())
    }

    /// Token ids -> interleaved RGB bytes (B, H, W, 3): clamp to [0, 1], x255, truncate (the reference's
    /// evaluation conversion).
    pub fn decode_rgb(&self, tokens: &TokenBatch, depth: Option<usize>) -> Result<Vec<u8>> {
        let s = self.info.image_size;
        let mut out = vec![0u8; tokens.batch * s * s * 3];
        let mut rest = &mut out[..];
        self.decode_chunks(tokens, depth, |images| {
            // A chunk larger than what is left gets only what is left, and the conversion refuses it.
            let len = images.elem_count().min(rest.len());
            let (chunk, after) = std::mem::take(&mut rest).split_at_mut(len);
            rest = after;
            images_to_u8_nhwc_into(&images, chunk)
        })?;
        if !rest.is_empty() {
            return Err(shape_mismatch!("decode left {} of {} image bytes unwritten", rest.len(), out.len()));
        }
        Ok(out)
    }

    /// Token ids -> unclamped float images (B, 3, H, W), for comparisons at full precision.
    pub fn decode_float(&self, tokens: &TokenBatch, depth: Option<usize>) -> Result<Tensor> {
        let mut parts = Vec::new();
        self.decode_chunks(tokens, depth, |images| {
            parts.push(images);
            Ok(())
        })?;
        Ok(Tensor::cat(&parts, 0)?)
    }
}

fn describe(cfg: &TitokConfig) -> Result<TokenizerInfo> {
    // Count parameters from the model's own tensor requests (no allocation): exactly what a checkpoint holds.
    let (_, requested) = build_shape_only(DType::F32, &Device::Cpu, |vb| Titok::new(cfg, vb))?;
    Ok(describe_requested(cfg, &requested))
}

fn describe_requested(cfg: &TitokConfig, requested: &[Requested]) -> TokenizerInfo {
    let (quantizer, depth, codebook_size) = match &cfg.quantizer {
        QuantizerConfig::Vq(vq) => ("vq", 1, vq.codebook_size as u64),
        QuantizerConfig::Lfq(lfq) => ("lfq", lfq.num_depths, 1u64 << lfq.token_bits),
    };
    let parameters =
        requested.iter().filter(|r| r.dtype.is_float()).map(|r| r.shape.iter().product::<usize>() as u64).sum();
    TokenizerInfo {
        architecture: if quantizer == "lfq" { "marvel" } else { "titok" },
        quantizer,
        image_size: cfg.image_size,
        num_tokens: cfg.num_latent_tokens,
        depth,
        codebook_size,
        bits_per_token: bits_for(codebook_size),
        bits_per_image: bits_per_image(cfg.num_latent_tokens, depth, bits_for(codebook_size)),
        parameters,
        encoder_width: cfg.encoder.width,
        encoder_layers: cfg.encoder.num_layers,
        decoder_width: cfg.decoder.width,
        decoder_layers: cfg.decoder.num_layers,
        two_stage: cfg.pixel_decoder.is_some(),
    }
}

#[cfg(test)]
mod device_tests;
#[cfg(test)]
mod tests;
