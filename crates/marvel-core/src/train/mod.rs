//! Training building blocks that follow the reference training code (bytedance/1d-tokenizer
//! `utils/train_utils.py`, `utils/lr_schedulers.py`, `modeling/modules/ema_model.py`) number for number, checked
//! against the `optim_schedule_ema` fixture. Per optimizer step the reference loop runs: backward (accumulated
//! over micro-batches), [`clip_grad_norm`], [`AdamW::step`] with the [`CosineSchedule`]'s rate, then
//! [`Ema::update`]. [`Trainer`] runs that loop over a [`Recipe`]'s loss and writes checkpoints. The stage-1
//! recipe's loss ([`stage1_loss`]) draws only the LFQ depth dropout, from the caller's seeded generator.

pub mod accumulate;
pub mod checkpoint;
pub mod clip;
pub mod ema;
pub mod grads;
pub mod losses;
#[cfg(feature = "nccl")]
pub mod nccl;
pub mod optim;
pub mod params;
mod raw;
pub mod recipe;
pub mod reduce;
pub mod schedule;
pub mod settings;
pub mod single;
pub mod stage1;
pub mod stage1_recipe;
pub mod stage2;
pub mod stage2_recipe;
pub mod trainer;

pub use accumulate::GradAccumulator;
pub use clip::{clip_grad_norm, global_norm, ClipOutcome};
pub use ema::{Ema, EmaConfig};
pub use grads::Gradients;
pub use optim::{excluded_from_weight_decay, AdamW, AdamWConfig};
pub use recipe::{Recipe, RecipeKind};
pub use reduce::{GradientLayout, GradientReducer, SingleRank};
pub use schedule::CosineSchedule;
pub use params::load_trainable;
pub use settings::TrainConfig;
pub use stage1::{proxy_codes, stage1_loss, Stage1Config, Stage1Output};
pub use stage2::{
    check_stage2_model, is_stage2_trainable, load_stage2_model, stage2_forward, stage2_trainable_prefixes, Stage2Forward,
};
pub use trainer::{StepOutput, Trainer, UpdateOutput};

#[cfg(test)]
mod parity_tests;
#[cfg(test)]
mod stage1_tests;
#[cfg(test)]
mod recipe_tests;
#[cfg(test)]
mod stage2_tests;
#[cfg(test)]
mod trainer_tests;
#[cfg(test)]
mod reduce_tests;
