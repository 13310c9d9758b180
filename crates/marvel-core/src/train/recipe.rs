//! What differs between the reference's three training recipes, behind one trait, so that the [`Trainer`]
//! (forward, backward, accumulation, clipping, AdamW, schedule, EMA, checkpoints) is written once:
//! - which model parameters train (the others are frozen: built as constants, so no gradient is even computed);
//! - how a batch becomes a loss and its named components;
//! - which extra networks it needs (loaded when the recipe is built, so a missing file is refused before any
//!   step) and what state they add to a checkpoint (their own files in the checkpoint folder).
//!
//! The recipe follows from the config as the reference decides it (`is_legacy`, `finetune_decoder`) unless
//! `training.recipe` names one.
//!
//! [`Trainer`]: crate::train::Trainer

use std::path::Path;

use candle_core::backprop::GradStore;
use candle_core::Tensor;

use crate::error::{MarvelError, Result};
use crate::model::titok::Titok;
use crate::quantize::lfq::SplitMix64;
use crate::train::settings::TrainConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecipeKind {
    /// Legacy layout, `finetune_decoder` false: cross-entropy against MaskGIT-VQGAN proxy codes.
    Stage1,
    /// Legacy layout, `finetune_decoder` true: decoder and pixel decoder on pixels, perceptual and GAN.
    Stage2,
    /// Non-legacy layout: pixels directly, L2 + quantizer loss.
    Single,
}

impl RecipeKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Stage1 => "stage1",
            Self::Stage2 => "stage2",
            Self::Single => "single",
        }
    }

    /// `training.recipe` when given, otherwise the reference's choice from the model layout.
    pub fn select(cfg: &TrainConfig) -> Result<Self> {
        match cfg.training.recipe.as_deref() {
            Some("stage1") => Ok(Self::Stage1),
            Some("stage2") => Ok(Self::Stage2),
            Some("single") => Ok(Self::Single),
            Some(other) => Err(MarvelError::Config(format!(
                "training.recipe must be \"stage1\", \"stage2\" or \"single\", got {other:?}"
            ))),
            None => Ok(match (cfg.model.is_legacy, cfg.model.finetune_decoder) {
                (false, _) => Self::Single,
                (true, false) => Self::Stage1,
                (true, true) => Self::Stage2,
            }),
        }
    }
}

/// One micro-batch as the recipe sees it.
#[derive(Debug)]
pub struct Batch<'a> {
    /// (B, 3, S, S) float32 in [0, 1].
    pub images: &'a Tensor,
    /// (B, L) I64 MaskGIT codes of the images (stage 1), when the caller has them.
    pub proxy_codes: Option<&'a Tensor>,
    /// Optimizer steps taken before this micro-batch (stage 2 turns the GAN term on at `discriminator_start`).
    pub step: u64,
}

/// The differentiable total and the values to report, each already weighted as it enters the total.
#[derive(Debug)]
pub struct RecipeLoss {
    pub total: Tensor,
    pub components: Vec<(String, f32)>,
}

/// Named tensors to be written as one safetensors file of a checkpoint folder.
pub type StateFile = (String, Vec<(String, Tensor)>);

pub trait Recipe: Send + Sync {
    fn kind(&self) -> RecipeKind;

    /// Whether the model parameter `name` trains.
    fn trainable(&self, name: &str) -> bool;

    /// The loss of one micro-batch. Every random draw comes from `rng`, whose state the checkpoint keeps.
    fn loss(&mut self, model: &Titok, batch: &Batch, rng: &mut SplitMix64) -> Result<RecipeLoss>;

    /// The gradients of a micro-batch's loss (its `total`, just returned by [`Recipe::loss`]). A recipe may run
    /// work of its own alongside the backward pass, on the same pool (stage 2: the discriminator's forward and
    /// backward for this micro-batch, which its step after the update then takes).
    fn backward(&mut self, total: &Tensor) -> Result<GradStore> {
        Ok(total.backward()?)
    }

    /// Tests: whether [`Recipe::backward`] runs the recipe's own work alongside (else it is left to where it would
    /// run without), so that the two can be compared.
    #[cfg(test)]
    fn set_alongside(&mut self, _on: bool) {}

    /// Tests: how many passes run alongside [`Recipe::backward`] were taken as they were.
    #[cfg(test)]
    fn taken_alongside(&self) -> usize {
        0
    }

    /// Called once per optimizer step, after the model's update, with the step count and the learning rate of
    /// the update (stage 2 steps its discriminator here). Returns components to add to the step's report.
    fn after_update(&mut self, _step: u64, _lr: f64) -> Result<Vec<(String, f32)>> {
        Ok(Vec::new())
    }

    /// Extra state for a checkpoint: (file name in the checkpoint folder, named tensors), e.g. the
    /// discriminator's weights and its optimizer's moments.
    fn state(&self) -> Result<Vec<StateFile>> {
        Ok(Vec::new())
    }

    /// Restores what [`Recipe::state`] wrote into `dir`.
    fn load_state(&mut self, _dir: &Path) -> Result<()> {
        Ok(())
    }
}

/// Whether `name` lies under one of `prefixes` (`"encoder."`, or a whole key such as `"latent_tokens"`): the
/// usual body of [`Recipe::trainable`] for a recipe that freezes parts of the model.
pub fn under_any(name: &str, prefixes: &[&str]) -> bool {
    prefixes.iter().any(|p| name.starts_with(p))
}

/// Builds the recipe `kind` for `cfg`, loading any network it needs (so a missing file is refused here, before
/// any step). `seed` draws what a recipe starts fresh (stage 2's discriminator without a weights file).
pub fn build_recipe(kind: RecipeKind, cfg: &TrainConfig, seed: u64) -> Result<Box<dyn Recipe>> {
    Ok(match kind {
        RecipeKind::Single => Box::new(crate::train::single::SingleRecipe::new(cfg)?),
        RecipeKind::Stage1 => Box::new(crate::train::stage1_recipe::Stage1Recipe::new(cfg)?),
        RecipeKind::Stage2 => Box::new(crate::train::stage2_recipe::Stage2Recipe::new(cfg, seed)?),
    })
}
