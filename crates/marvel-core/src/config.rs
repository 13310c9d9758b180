//! TiTok's `config.json`, as published with the released checkpoints:
//! `{"model": {"vq_model": {...}}, "dataset": {"preprocessing": {"crop_size": 256}}}`.
//!
//! [`ConfigFile`] mirrors the JSON (serde; training sections such as `experiment` or `losses` pass through, but
//! a key marvel does not know in a section it reads is refused: [`keys`]). [`TitokConfig`] is the checked,
//! resolved form the model is built from: size names are turned into widths, the reference defaults are applied
//! to absent keys, sizes are held to sanity bounds ([`bounds`]), and every inconsistency is reported up front as a
//! `MarvelError::Config` that names the key and its value. [`TitokConfig::parameter_count`] sizes the model
//! from the config alone ([`size`]).

pub mod bounds;
pub(crate) mod keys;
mod size;

pub use keys::check_known_keys;

use std::path::Path;

use serde::Deserialize;

use crate::error::{MarvelError, Result};
use crate::model::maskgit::MaskgitConfig;
use crate::quantize::lfq::LfqConfig;

/// The whole file. Only the sections the tokenizer reads are declared.
#[derive(Debug, Clone, Deserialize)]
pub struct ConfigFile {
    pub model: ModelSection,
    #[serde(default)]
    pub dataset: DatasetSection,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ModelSection {
    pub vq_model: VqModelSection,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct DatasetSection {
    #[serde(default)]
    pub preprocessing: PreprocessingSection,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PreprocessingSection {
    #[serde(default = "default_crop_size")]
    pub crop_size: usize,
}

impl Default for PreprocessingSection {
    fn default() -> Self {
        Self { crop_size: default_crop_size() }
    }
}

/// `model.vq_model`. Keys the reference reads, with its defaults (`finetune_decoder` true, `is_legacy` true,
/// `quantize_mode` "vq"), plus the extension keys of the parity README (custom ViT sizes, `pixel_decoder`) and
/// MARVEL's LFQ keys.
#[derive(Debug, Clone, Deserialize)]
pub struct VqModelSection {
    /// Required for "vq"; for "lfq" the codebook is implicit (2^token_size codes per depth).
    pub codebook_size: Option<usize>,
    pub token_size: usize,
    #[serde(default)]
    pub use_l2_norm: bool,
    #[serde(default = "default_commitment_cost")]
    pub commitment_cost: f64,
    pub vit_enc_model_size: String,
    pub vit_dec_model_size: String,
    pub vit_enc_patch_size: usize,
    pub vit_dec_patch_size: usize,
    pub num_latent_tokens: usize,
    pub vit_enc_width: Option<usize>,
    pub vit_enc_num_layers: Option<usize>,
    pub vit_enc_num_heads: Option<usize>,
    pub vit_dec_width: Option<usize>,
    pub vit_dec_num_layers: Option<usize>,
    pub vit_dec_num_heads: Option<usize>,
    #[serde(default = "default_true")]
    pub finetune_decoder: bool,
    #[serde(default = "default_true")]
    pub is_legacy: bool,
    #[serde(default = "default_quantize_mode")]
    pub quantize_mode: String,
    /// Absent in the released configs: the reference hard-codes the released MaskGIT sizes.
    pub pixel_decoder: Option<MaskgitConfig>,
    pub num_depths: Option<usize>,
    pub entropy_loss_weight: Option<f64>,
    pub entropy_loss_temperature: Option<f64>,
    pub entropy_gamma: Option<f64>,
    /// Probability of a training step on a random shorter prefix of depths (MARVEL); 0 when absent.
    pub depth_dropout: Option<f64>,
    /// Bit groups of the entropy estimate (see `quantize::lfq::entropy`); one group, the exact estimate, when absent.
    pub entropy_groups: Option<usize>,
}

fn default_crop_size() -> usize {
    256
}
fn default_commitment_cost() -> f64 {
    0.25
}
fn default_true() -> bool {
    true
}
fn default_quantize_mode() -> String {
    "vq".to_string()
}

/// Width, depth and head count of one ViT (encoder or decoder), plus its patch size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VitConfig {
    pub width: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub patch_size: usize,
}

impl VitConfig {
    /// The size table of the reference (`modeling/modules/blocks.py`).
    pub fn named(name: &str, patch_size: usize) -> Option<Self> {
        let (width, num_layers, num_heads) = match name {
            "small" => (512, 8, 8),
            "base" => (768, 12, 12),
            "large" => (1024, 24, 16),
            _ => return None,
        };
        Some(Self { width, num_layers, num_heads, patch_size })
    }

    /// MLP hidden width: the reference's `mlp_ratio` is 4.
    pub fn mlp_width(&self) -> usize {
        4 * self.width
    }
}

/// Plain vector quantization against a learned codebook.
#[derive(Debug, Clone, PartialEq)]
pub struct VqConfig {
    pub codebook_size: usize,
    pub token_size: usize,
    pub use_l2_norm: bool,
    pub commitment_cost: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum QuantizerConfig {
    Vq(VqConfig),
    Lfq(LfqConfig),
}

/// A checked TiTok configuration: everything the model constructors need, nothing left to default.
#[derive(Debug, Clone)]
pub struct TitokConfig {
    pub image_size: usize,
    pub encoder: VitConfig,
    pub decoder: VitConfig,
    pub num_latent_tokens: usize,
    pub token_size: usize,
    pub quantizer: QuantizerConfig,
    /// The released two-stage models reshape the encoder output instead of transposing it, and predict
    /// 1024 MaskGIT logits per patch instead of pixels.
    pub is_legacy: bool,
    /// Two-stage ("paper") layout: the decoder's logits mix the pixel codebook, decoded by `pixel_decoder`.
    pub finetune_decoder: bool,
    /// Present exactly when `finetune_decoder` is true.
    pub pixel_decoder: Option<MaskgitConfig>,
}

/// The legacy head predicts this many MaskGIT classes per patch (hard-coded in the reference).
pub const LEGACY_LOGITS: usize = 1024;

fn config_err(msg: String) -> MarvelError {
    MarvelError::Config(msg)
}

impl TitokConfig {
    pub fn from_path(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = read_text(path)?;
        Self::from_json_str(&text).map_err(|e| match e {
            MarvelError::Config(msg) => config_err(format!("{}: {msg}", path.display())),
            other => other,
        })
    }

    pub fn from_json_str(text: &str) -> Result<Self> {
        // Keys are checked on the plain JSON first, so that a misspelled key is reported as such rather than as
        // the missing key it was meant to be. Syntax errors fall through to the typed parse, which reports them.
        if let Ok(value) = serde_json::from_str::<serde_json::Value>(text) {
            check_known_keys(&value)?;
        }
        let file: ConfigFile = serde_json::from_str(text).map_err(|e| {
            // serde_json reports where a value has the wrong type but not which key it belongs to.
            // A missing field is reported at the end of its object, where the key before is unrelated.
            let near = if e.to_string().starts_with("missing field") {
                String::new()
            } else {
                key_before(text, e.line(), e.column()).map(|k| format!(" (at key \"{k}\")")).unwrap_or_default()
            };
            config_err(format!("invalid TiTok config.json{near}: {e}"))
        })?;
        Self::from_file(&file)
    }

    pub fn from_file(file: &ConfigFile) -> Result<Self> {
        let m = &file.model.vq_model;
        let image_size = file.dataset.preprocessing.crop_size;
        if image_size == 0 {
            return Err(config_err("dataset.preprocessing.crop_size must be at least 1, got 0".into()));
        }
        bounds::check(m, image_size)?;
        let encoder = resolve_vit(
            "vit_enc",
            &m.vit_enc_model_size,
            m.vit_enc_patch_size,
            [m.vit_enc_width, m.vit_enc_num_layers, m.vit_enc_num_heads],
        )?;
        let decoder = resolve_vit(
            "vit_dec",
            &m.vit_dec_model_size,
            m.vit_dec_patch_size,
            [m.vit_dec_width, m.vit_dec_num_layers, m.vit_dec_num_heads],
        )?;
        for (prefix, vit) in [("vit_enc", &encoder), ("vit_dec", &decoder)] {
            if image_size % vit.patch_size != 0 {
                return Err(config_err(format!(
                    "{prefix}_patch_size = {} does not divide dataset.preprocessing.crop_size = {image_size}",
                    vit.patch_size
                )));
            }
        }
        if m.num_latent_tokens == 0 {
            return Err(config_err("num_latent_tokens must be at least 1, got 0".into()));
        }
        if m.token_size == 0 {
            return Err(config_err("token_size must be at least 1, got 0".into()));
        }
        let quantizer = resolve_quantizer(m)?;

        let pixel_decoder = if m.finetune_decoder {
            if !m.is_legacy {
                // The non-legacy head already predicts RGB; there are no logits to mix a pixel codebook with.
                return Err(config_err(
                    "finetune_decoder = true needs is_legacy = true (the non-legacy head predicts pixels, not \
                     MaskGIT logits)"
                        .into(),
                ));
            }
            let pd = m.pixel_decoder.clone().unwrap_or_default();
            check_pixel_decoder(&pd, image_size, &decoder)?;
            Some(pd)
        } else {
            None
        };

        Ok(Self {
            image_size,
            encoder,
            decoder,
            num_latent_tokens: m.num_latent_tokens,
            token_size: m.token_size,
            quantizer,
            is_legacy: m.is_legacy,
            finetune_decoder: m.finetune_decoder,
            pixel_decoder,
        })
    }

    /// Patches per side of the decoder's grid (16 for every released model).
    pub fn decoder_grid(&self) -> usize {
        self.image_size / self.decoder.patch_size
    }

    pub fn encoder_grid(&self) -> usize {
        self.image_size / self.encoder.patch_size
    }
}

/// A config file's text. Bytes that are not UTF-8 are a bad config (`MarvelError::Config`), not a failed read.
pub fn read_text(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| MarvelError::io(path, e))?;
    String::from_utf8(bytes).map_err(|e| {
        config_err(format!(
            "{}: not UTF-8 text (invalid byte at offset {}); config.json must be JSON",
            path.display(),
            e.utf8_error().valid_up_to()
        ))
    })
}

/// The object key whose value ends at (line, column) (1-based, as serde_json reports): the nearest `"key":`
/// before that point.
fn key_before(text: &str, line: usize, column: usize) -> Option<String> {
    if line == 0 {
        return None;
    }
    let line_start: usize = text.split_inclusive('\n').take(line - 1).map(str::len).sum();
    let end = text.len().min(line_start + column);
    let before = text.get(..end)?;
    let colon = before.rfind(|c| c == ':')?;
    let key_end = before[..colon].trim_end().strip_suffix('"')?;
    let key_start = key_end.rfind('"')?;
    Some(key_end[key_start + 1..].to_string())
}

fn resolve_vit(prefix: &str, size: &str, patch_size: usize, custom: [Option<usize>; 3]) -> Result<VitConfig> {
    const KEYS: [&str; 3] = ["width", "num_layers", "num_heads"];
    if patch_size == 0 {
        return Err(config_err(format!("{prefix}_patch_size must be at least 1, got 0")));
    }
    let vit = if size == "custom" {
        let mut v = [0usize; 3];
        for (i, key) in KEYS.iter().enumerate() {
            v[i] = custom[i].ok_or_else(|| {
                config_err(format!("{prefix}_model_size = \"custom\" needs {prefix}_{key}, which is missing"))
            })?;
            if v[i] == 0 {
                return Err(config_err(format!("{prefix}_{key} must be at least 1, got 0")));
            }
        }
        VitConfig { width: v[0], num_layers: v[1], num_heads: v[2], patch_size }
    } else {
        let vit = VitConfig::named(size, patch_size).ok_or_else(|| {
            config_err(format!(
                "{prefix}_model_size = {size:?} is not a known size (expected \"small\", \"base\", \"large\" or \
                 \"custom\")"
            ))
        })?;
        // A named size with explicit numbers that contradict it is ambiguous; equal numbers are harmless.
        let table = [vit.width, vit.num_layers, vit.num_heads];
        for (i, key) in KEYS.iter().enumerate() {
            if let Some(v) = custom[i] {
                if v != table[i] {
                    return Err(config_err(format!(
                        "{prefix}_{key} = {v} contradicts {prefix}_model_size = {size:?} ({key} {}); use \
                         \"custom\" for other sizes",
                        table[i]
                    )));
                }
            }
        }
        vit
    };
    if vit.width % vit.num_heads != 0 {
        return Err(config_err(format!(
            "{prefix}_num_heads = {} does not divide {prefix}_width = {}",
            vit.num_heads, vit.width
        )));
    }
    Ok(vit)
}

fn resolve_quantizer(m: &VqModelSection) -> Result<QuantizerConfig> {
    let lfq_keys = [
        ("num_depths", m.num_depths.is_some()),
        ("entropy_loss_weight", m.entropy_loss_weight.is_some()),
        ("entropy_loss_temperature", m.entropy_loss_temperature.is_some()),
        ("entropy_gamma", m.entropy_gamma.is_some()),
        ("depth_dropout", m.depth_dropout.is_some()),
        ("entropy_groups", m.entropy_groups.is_some()),
    ];
    match m.quantize_mode.as_str() {
        "vq" => {
            let codebook_size = m
                .codebook_size
                .ok_or_else(|| config_err("quantize_mode = \"vq\" needs codebook_size, which is missing".into()))?;
            if codebook_size == 0 {
                return Err(config_err("codebook_size must be at least 1, got 0".into()));
            }
            // Token ids travel as u32.
            if codebook_size > u32::MAX as usize {
                return Err(config_err(format!("codebook_size = {codebook_size} does not fit 32-bit token ids")));
            }
            if let Some((key, _)) = lfq_keys.iter().find(|(_, present)| *present) {
                return Err(config_err(format!("{key} only applies to quantize_mode = \"lfq\", not \"vq\"")));
            }
            Ok(QuantizerConfig::Vq(VqConfig {
                codebook_size,
                token_size: m.token_size,
                use_l2_norm: m.use_l2_norm,
                commitment_cost: m.commitment_cost,
            }))
        }
        "lfq" => {
            if m.token_size > 32 {
                return Err(config_err(format!(
                    "token_size = {} is too large for quantize_mode = \"lfq\" (at most 32 bits per token)",
                    m.token_size
                )));
            }
            if let Some(cs) = m.codebook_size {
                if cs as u64 != 1u64 << m.token_size {
                    return Err(config_err(format!(
                        "codebook_size = {cs} contradicts quantize_mode = \"lfq\" with token_size = {} (2^{} codes \
                         per depth)",
                        m.token_size, m.token_size
                    )));
                }
            }
            if m.use_l2_norm {
                return Err(config_err("use_l2_norm = true is not supported with quantize_mode = \"lfq\"".into()));
            }
            // MARVEL's stage-1 values where the file is silent (MDQ: β 0.25, w 0.02, τ 0.01, γ 1).
            let cfg = LfqConfig {
                token_bits: m.token_size,
                num_depths: m.num_depths.unwrap_or(1),
                commitment_cost: m.commitment_cost,
                entropy_loss_weight: m.entropy_loss_weight.unwrap_or(0.02),
                entropy_loss_temperature: m.entropy_loss_temperature.unwrap_or(0.01),
                entropy_gamma: m.entropy_gamma.unwrap_or(1.0),
                entropy_groups: m.entropy_groups,
                depth_dropout: m.depth_dropout.unwrap_or(0.0),
            };
            cfg.validate()?;
            Ok(QuantizerConfig::Lfq(cfg))
        }
        other => Err(config_err(format!("quantize_mode = {other:?} is not supported (expected \"vq\" or \"lfq\")"))),
    }
}

fn check_pixel_decoder(pd: &MaskgitConfig, image_size: usize, decoder: &VitConfig) -> Result<()> {
    // The pixel decoder's output is the decoded image, which marvel returns as RGB.
    if pd.num_channels != 3 {
        return Err(config_err(format!("pixel_decoder.num_channels = {} must be 3 (RGB)", pd.num_channels)));
    }
    if pd.codebook_size != LEGACY_LOGITS {
        return Err(config_err(format!(
            "pixel_decoder.codebook_size = {} must be {LEGACY_LOGITS}: the legacy head predicts {LEGACY_LOGITS} \
             logits",
            pd.codebook_size
        )));
    }
    pd.validate().map_err(|e| match e {
        MarvelError::Config(msg) => {
            config_err(format!("pixel_decoder: {}", msg.strip_prefix("maskgit_vqgan: ").unwrap_or(&msg)))
        }
        other => other,
    })?;
    // The pixel decoder upsamples x2 between levels; it must bring the decoder's patch grid back to the image.
    let grid = image_size / decoder.patch_size;
    let upsample = 1usize.checked_shl(pd.channel_mult.len() as u32 - 1).unwrap_or(0);
    if grid * upsample != image_size {
        return Err(config_err(format!(
            "pixel_decoder.channel_mult has {} levels (x{upsample} upsampling), which does not turn the decoder's \
             {grid}x{grid} grid into crop_size = {image_size}",
            pd.channel_mult.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
