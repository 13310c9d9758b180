//! Training checkpoints. A checkpoint is a folder:
//! - `config.json`: the training config as given (its model part is what `Tokenizer::from_pretrained` reads);
//! - `model.safetensors`: the weights under the reference's key names, loadable as they are;
//! - `ema.safetensors` (when `training.use_ema`), `optimizer.safetensors` (AdamW moments and step counts);
//! - the recipe's own files (a discriminator and its optimizer);
//! - `trainer_state.json`: step, schedule, the RNG state, and the caller's opaque `data_position`.
//!
//! It is written into a temporary sibling folder that is renamed into place once complete, so a crash leaves
//! either the previous checkpoint or the new one, never a mix. Saving is refused between the micro-batches of an
//! accumulation: their partial gradient sum is not state a checkpoint should have to carry.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::Tensor;
use serde_json::{json, Value};

use crate::error::{MarvelError, Result};
use crate::invalid;
use crate::quantize::lfq::SplitMix64;
use crate::train::settings::TrainConfig;
use crate::train::trainer::Trainer;
use crate::weights::{write_safetensors, Checkpoint, TensorSpec};

const STATE_FORMAT: &str = "marvel-trainer-state";
const STATE_VERSION: u64 = 1;

fn write_tensors(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    let specs: Vec<TensorSpec> = tensors
        .iter()
        .map(|(n, t)| TensorSpec { name: n.clone(), shape: t.dims().to_vec(), dtype: t.dtype() })
        .collect();
    let mut next = tensors.iter();
    write_safetensors(path, &specs, |_| Ok(next.next().expect("one tensor per spec").1.clone()))
}

pub(crate) fn read_tensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    let ckpt = Checkpoint::open(path)?;
    ckpt.tensors().keys().map(|k| Ok((k.clone(), ckpt.load(k, &candle_core::Device::Cpu)?))).collect()
}

fn write_json(path: &Path, value: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).expect("a JSON value serialises");
    std::fs::write(path, text).map_err(|e| MarvelError::io(path, e))
}

/// A sibling of `dir` named after it, for writing before the rename.
fn sibling(dir: &Path, tag: &str) -> Result<PathBuf> {
    let name = dir.file_name().ok_or_else(|| invalid!("{} does not name a folder to write", dir.display()))?;
    Ok(dir.with_file_name(format!(".{}.{tag}-{}", name.to_string_lossy(), std::process::id())))
}

/// Runs `fill` on a fresh temporary sibling of `dir`, then puts it in `dir`'s place (replacing a previous
/// folder there only once the new one is complete).
fn write_folder(dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    if dir.as_os_str().is_empty() {
        return Err(invalid!("a checkpoint needs a folder to write to, got an empty path"));
    }
    if dir.exists() && !dir.is_dir() {
        return Err(invalid!("{} exists and is not a folder", dir.display()));
    }
    let tmp = sibling(dir, "partial")?;
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| MarvelError::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| MarvelError::io(&tmp, e))?;
    if let Err(e) = fill(&tmp) {
        std::fs::remove_dir_all(&tmp).ok();
        return Err(e);
    }
    if dir.exists() {
        let old = sibling(dir, "old")?;
        std::fs::rename(dir, &old).map_err(|e| MarvelError::io(dir, e))?;
        std::fs::rename(&tmp, dir).map_err(|e| MarvelError::io(dir, e))?;
        std::fs::remove_dir_all(&old).map_err(|e| MarvelError::io(&old, e))?;
    } else {
        std::fs::rename(&tmp, dir).map_err(|e| MarvelError::io(dir, e))?;
    }
    Ok(())
}

impl Trainer {
    /// Writes a checkpoint folder `dir`; `data_position` is kept verbatim for the caller's data loader.
    pub fn save(&self, dir: &Path, data_position: Value) -> Result<()> {
        if self.accumulator.pending() != 0 {
            return Err(invalid!(
                "cannot save between micro-batches: {} of {} gradient accumulation steps are pending; save after \
                 an optimizer step",
                self.accumulator.pending(),
                self.accumulator.micro_batches()
            ));
        }
        let extra = self.recipe.state()?;
        write_folder(dir, |tmp| {
            write_json(&tmp.join("config.json"), &self.cfg.json)?;
            write_tensors(&tmp.join("model.safetensors"), &self.weights(false)?)?;
            if let Some(ema) = &self.ema {
                write_tensors(&tmp.join("ema.safetensors"), &ema.state()?)?;
            }
            write_tensors(&tmp.join("optimizer.safetensors"), &self.optimizer.state()?)?;
            for (file, tensors) in &extra {
                write_tensors(&tmp.join(file), tensors)?;
            }
            let state = json!({
                "format": STATE_FORMAT,
                "version": STATE_VERSION,
                "recipe": self.recipe.kind().name(),
                "step": self.step,
                "seed": self.seed.to_string(),
                // u64 as a string: JSON readers (JavaScript's included) keep only 53 bits of a number.
                "rng_state": self.rng.state().to_string(),
                "schedule": {
                    "learning_rate": self.cfg.optimizer.params.learning_rate,
                    "end_lr": self.cfg.lr_scheduler.params.end_lr,
                    "warmup_steps": self.cfg.lr_scheduler.params.warmup_steps,
                    "max_train_steps": self.cfg.training.max_train_steps,
                    "next_lr": self.schedule.lr(self.step),
                },
                "data_position": data_position,
            });
            write_json(&tmp.join("trainer_state.json"), &state)
        })
    }

    /// Continues from a checkpoint folder written by [`Trainer::save`]: the same weights, optimizer and EMA
    /// state, RNG and step, so the next steps are those the saving trainer would have taken. Returns the
    /// trainer and the `data_position` it was saved with.
    pub fn resume(dir: &Path) -> Result<(Self, Value)> {
        let state_path = dir.join("trainer_state.json");
        let text = std::fs::read_to_string(&state_path).map_err(|e| MarvelError::io(&state_path, e))?;
        let bad = |what: &str| MarvelError::Checkpoint(format!("{}: {what}", state_path.display()));
        let state: Value = serde_json::from_str(&text).map_err(|e| bad(&format!("not JSON: {e}")))?;
        if state["format"] != STATE_FORMAT || state["version"] != STATE_VERSION {
            return Err(bad(&format!("not a {STATE_FORMAT} version {STATE_VERSION} file")));
        }
        let step = state["step"].as_u64().ok_or_else(|| bad("`step` must be a whole number"))?;
        let parse_u64 = |key: &str| {
            state[key].as_str().and_then(|s| s.parse::<u64>().ok()).ok_or_else(|| bad(&format!("`{key}` must be a decimal string")))
        };
        let (seed, rng_state) = (parse_u64("seed")?, parse_u64("rng_state")?);
        let config_path = dir.join("config.json");
        let config_text = crate::config::read_text(&config_path)?;
        let config: Value = serde_json::from_str(&config_text)
            .map_err(|e| MarvelError::Config(format!("{}: {e}", config_path.display())))?;
        let cfg = TrainConfig::from_value(config)?;
        let wanted = crate::weights::build_shape_only(candle_core::DType::F32, &candle_core::Device::Cpu, |vb| {
            crate::model::titok::Titok::new(&cfg.model, vb)
        })?
        .1;
        let weights = read_tensors(&dir.join("model.safetensors"))?;
        let mut problems: Vec<String> = wanted
            .iter()
            .filter_map(|r| match weights.get(&r.name) {
                None => Some(format!("missing {}", r.name)),
                Some(t) if t.dims() != r.shape.as_slice() => Some(format!("{}: shape {:?}, expected {:?}", r.name, t.dims(), r.shape)),
                _ => None,
            })
            .collect();
        problems.extend(weights.keys().filter(|k| !wanted.iter().any(|r| &r.name == *k)).map(|k| format!("unexpected {k}")));
        if !problems.is_empty() {
            return Err(MarvelError::Checkpoint(format!("{}: {}", dir.join("model.safetensors").display(), problems.join("; "))));
        }
        let mut trainer = Trainer::build(cfg, seed, &wanted, weights, SplitMix64::new(rng_state))?;
        let recipe_name = state["recipe"].as_str().unwrap_or_default();
        if recipe_name != trainer.recipe.kind().name() {
            return Err(bad(&format!("saved by the {recipe_name:?} recipe, the config selects {:?}", trainer.recipe.kind().name())));
        }
        trainer.optimizer.load_state(&read_tensors(&dir.join("optimizer.safetensors"))?)?;
        if let Some(ema) = &mut trainer.ema {
            ema.load_state(&read_tensors(&dir.join("ema.safetensors"))?)?;
        }
        trainer.recipe.load_state(dir)?;
        trainer.step = step;
        Ok((trainer, state["data_position"].clone()))
    }

    /// Writes a model folder (`config.json` + `model.safetensors`, the reference's key names) of the current
    /// weights or, with `ema`, of their moving average.
    pub fn export_model(&self, dir: &Path, ema: bool) -> Result<()> {
        let weights = self.weights(ema)?;
        write_folder(dir, |tmp| {
            write_json(&tmp.join("config.json"), &self.cfg.json)?;
            write_tensors(&tmp.join("model.safetensors"), &weights)
        })
    }
}
