//! The `stage1` recipe behind the [`Trainer`](crate::train::Trainer): [`stage1_loss`] with the config's
//! `losses.quantizer_weight`, the whole TiTok trainable (the reference's stage-1 constructor freezes nothing), and
//! the proxy codes either given with the batch (a pre-tokenized cache) or made by the frozen MaskGIT-VQGAN named
//! by `model.vq_model.pretrained_tokenizer_weight`, the reference's key for it. That network is loaded when the
//! recipe is built, so a missing file is refused before any step; without the key, every batch must bring its
//! codes.

use candle_core::{DType, Device};

use crate::error::{MarvelError, Result};
use crate::invalid;
use crate::model::maskgit::MaskgitVqgan;
use crate::model::titok::Titok;
use crate::quantize::lfq::SplitMix64;
use crate::train::recipe::{Batch, Recipe, RecipeKind, RecipeLoss};
use crate::train::settings::{network_file, TrainConfig};
use crate::train::stage1::{proxy_codes, stage1_loss, Stage1Config};

/// The reference's config key of the MaskGIT-VQGAN weights (a weights file, or a folder with a `config.json`
/// holding `maskgit_vqgan` sizes and the weights).
pub const MASKGIT_KEY: &str = "model.vq_model.pretrained_tokenizer_weight";

#[derive(Debug)]
pub struct Stage1Recipe {
    cfg: Stage1Config,
    maskgit: Option<MaskgitVqgan>,
}

impl Stage1Recipe {
    pub fn new(cfg: &TrainConfig) -> Result<Self> {
        let m = &cfg.model;
        if !m.is_legacy || m.finetune_decoder {
            return Err(MarvelError::Config(format!(
                "recipe stage1 trains the legacy 1024-logit head: it needs model.vq_model.is_legacy true and \
                 finetune_decoder false, got {} and {}",
                m.is_legacy, m.finetune_decoder
            )));
        }
        // ReconstructionLoss_Stage1 has no such terms; a config asking for them would silently train without.
        let l = &cfg.losses;
        for (key, v) in [("perceptual_weight", l.perceptual_weight), ("discriminator_weight", l.discriminator_weight)] {
            if v != 0.0 {
                return Err(MarvelError::Config(format!(
                    "recipe stage1: losses.{key} = {v}, but the stage-1 loss is cross-entropy on the proxy codes \
                     plus the quantizer loss only; set it to 0"
                )));
            }
        }
        let maskgit = match cfg.json.pointer("/model/vq_model/pretrained_tokenizer_weight") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(s)) => {
                let path = network_file(MASKGIT_KEY, s)?;
                let vqgan = MaskgitVqgan::from_pretrained(&path, &Device::Cpu)
                    .map_err(|e| MarvelError::Checkpoint(format!("{MASKGIT_KEY} ({}): {e}", path.display())))?;
                Some(vqgan)
            }
            Some(other) => return Err(MarvelError::Config(format!("{MASKGIT_KEY} must be a path string, got {other}"))),
        };
        Ok(Self { cfg: Stage1Config { quantizer_weight: l.quantizer_weight }, maskgit })
    }

    /// Whether the recipe can make the proxy codes itself.
    pub fn has_maskgit(&self) -> bool {
        self.maskgit.is_some()
    }
}

impl Recipe for Stage1Recipe {
    fn kind(&self) -> RecipeKind {
        RecipeKind::Stage1
    }

    fn trainable(&self, _name: &str) -> bool {
        true
    }

    fn loss(&mut self, model: &Titok, batch: &Batch, rng: &mut SplitMix64) -> Result<RecipeLoss> {
        let made;
        let codes = match (batch.proxy_codes, &self.maskgit) {
            (Some(given), _) => given,
            (None, Some(vqgan)) => {
                made = proxy_codes(vqgan, batch.images)?.to_dtype(DType::I64)?;
                &made
            }
            (None, None) => {
                return Err(invalid!(
                    "the stage1 recipe needs the MaskGIT-VQGAN codes of each batch: pass proxyCodes with the step, \
                     or name the MaskGIT-VQGAN weights in {MASKGIT_KEY} so that the trainer computes them"
                ))
            }
        };
        let out = stage1_loss(model, batch.images, codes, &self.cfg, rng)?;
        let mut components: Vec<(String, f32)> =
            out.components.into_iter().filter(|(k, _)| k != "total_loss").collect();
        components.push(("train_depths".to_string(), out.depth as f32));
        Ok(RecipeLoss { total: out.loss, components })
    }
}
