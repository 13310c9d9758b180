//! The training sections of a reference-style config (bytedance/1d-tokenizer `configs/training/TiTok/**/*.yaml`
//! as parsed to JSON): `losses`, `optimizer`, `lr_scheduler` and `training`, typed, with the reference's
//! defaults. `model.*` and `dataset.*` stay with [`TitokConfig`]; `experiment` belongs to the training loop
//! around the trainer and passes through. A key marvel does not know in a section parsed here is refused with
//! the nearest known key, as `config.json` keys are, because a misspelled `max_grad_norm` would otherwise train
//! silently with the default.

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

use crate::config::keys::{fields_of, nearest};
use crate::config::TitokConfig;
use crate::error::{MarvelError, Result};
use crate::model::convnext::ConvNextConfig;
use crate::model::discriminator::DiscriminatorConfig;
use crate::train::{AdamWConfig, CosineSchedule, EmaConfig};

/// `losses`. Stage 2 and the optional terms of `single` read the perceptual and GAN keys; a recipe that does
/// not implement a term refuses a config that turns it on.
#[derive(Debug, Clone, Deserialize)]
pub struct LossSettings {
    #[serde(default = "one")]
    pub quantizer_weight: f64,
    #[serde(default = "default_reconstruction")]
    pub reconstruction_loss: String,
    #[serde(default = "one")]
    pub reconstruction_weight: f64,
    pub perceptual_loss: Option<String>,
    #[serde(default)]
    pub perceptual_weight: f64,
    #[serde(default)]
    pub discriminator_start: u64,
    #[serde(default = "one")]
    pub discriminator_factor: f64,
    #[serde(default)]
    pub discriminator_weight: f64,
    #[serde(default)]
    pub lecam_regularization_weight: f64,
    #[serde(default = "default_lecam_ema_decay")]
    pub lecam_ema_decay: f64,
    /// marvel's extension: the perceptual network's weights (torchvision `convnext_small` keys, safetensors or
    /// PyTorch `.bin`). Stage 2 needs it; the reference downloads torchvision's file instead.
    pub perceptual_weights: Option<String>,
    /// marvel's extension: the perceptual ConvNeXt's sizes (absent: torchvision `convnext_small`).
    pub perceptual_convnext: Option<ConvNextConfig>,
    /// marvel's extension: a discriminator to start stage 2 from (the reference's keys without the loss
    /// module's `discriminator.` prefix); absent: a fresh one from its declared initialisation and the seed.
    pub discriminator_weights: Option<String>,
    /// marvel's extension: the discriminator's sizes (absent: the reference's hard-coded ones).
    pub discriminator: Option<DiscriminatorConfig>,
}

/// `optimizer`: `name` (only "adamw") and `params`.
#[derive(Debug, Clone, Deserialize)]
pub struct OptimizerSettings {
    #[serde(default = "default_optimizer")]
    pub name: String,
    pub params: OptimizerParams,
}

#[derive(Debug, Clone, Deserialize)]
pub struct OptimizerParams {
    pub learning_rate: f64,
    /// Stage 2's discriminator optimizer; the generator's learning_rate when absent.
    pub discriminator_learning_rate: Option<f64>,
    #[serde(default = "default_beta1")]
    pub beta1: f64,
    #[serde(default = "default_beta2")]
    pub beta2: f64,
    #[serde(default = "default_weight_decay")]
    pub weight_decay: f64,
    /// torch's AdamW default; the reference yaml does not pass it.
    #[serde(default = "default_epsilon")]
    pub epsilon: f64,
}

/// `lr_scheduler`: `scheduler` (only "cosine") and `params`.
#[derive(Debug, Clone, Deserialize)]
pub struct SchedulerSettings {
    #[serde(default = "default_scheduler")]
    pub scheduler: String,
    pub params: SchedulerParams,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SchedulerParams {
    /// The reference repeats optimizer.params.learning_rate here; the optimizer's value is the one used, and a
    /// different value is refused rather than silently ignored.
    pub learning_rate: Option<f64>,
    #[serde(default)]
    pub warmup_steps: u64,
    #[serde(default)]
    pub end_lr: f64,
}

/// `training`. Keys the reference's loop reads for its own purposes (batch size, precision, logging) are
/// accepted and left to that loop.
#[derive(Debug, Clone, Deserialize)]
pub struct TrainingSettings {
    /// marvel's extension: "single", "stage1" or "stage2"; otherwise chosen from the model layout.
    pub recipe: Option<String>,
    #[serde(default = "default_accumulation")]
    pub gradient_accumulation_steps: usize,
    /// No clipping when absent.
    pub max_grad_norm: Option<f64>,
    #[serde(default)]
    pub use_ema: bool,
    /// The cosine schedule's length N.
    pub max_train_steps: u64,
    pub per_gpu_batch_size: Option<usize>,
    pub mixed_precision: Option<Value>,
    pub enable_tf32: Option<bool>,
    pub enable_wandb: Option<bool>,
    pub seed: Option<u64>,
    pub num_generated_images: Option<usize>,
    /// marvel's extension: "cpu" (default), "cuda" or "cuda:N"; the Node API's `device` option sets it.
    pub device: Option<String>,
}

/// Everything the trainer reads from a training config, checked.
#[derive(Debug, Clone)]
pub struct TrainConfig {
    /// The whole config as given: written as the checkpoint's `config.json`.
    pub json: Value,
    pub model: TitokConfig,
    pub losses: LossSettings,
    pub optimizer: OptimizerSettings,
    pub lr_scheduler: SchedulerSettings,
    pub training: TrainingSettings,
}

fn one() -> f64 {
    1.0
}
fn default_reconstruction() -> String {
    "l2".into()
}
fn default_lecam_ema_decay() -> f64 {
    0.999
}
fn default_optimizer() -> String {
    "adamw".into()
}
fn default_beta1() -> f64 {
    0.9
}
fn default_beta2() -> f64 {
    0.999
}
fn default_weight_decay() -> f64 {
    1e-4
}
fn default_epsilon() -> f64 {
    1e-8
}
fn default_scheduler() -> String {
    "cosine".into()
}
fn default_accumulation() -> usize {
    1
}

/// The object at `path` (dotted) of `root`, parsed strictly into `T`: unknown keys are refused with the nearest
/// known one, type errors name the section.
fn section<T: DeserializeOwned>(root: &Value, path: &str, required: bool) -> Result<T> {
    let pointer = format!("/{}", path.replace('.', "/"));
    let value = match root.pointer(&pointer) {
        Some(v) => v.clone(),
        None if required => return Err(MarvelError::Config(format!("the training config has no `{path}` section"))),
        None => Value::Object(Default::default()),
    };
    let Value::Object(object) = &value else {
        return Err(MarvelError::Config(format!("`{path}` must be an object, got {value}")));
    };
    let known = fields_of::<T>();
    let problems: Vec<String> = object
        .keys()
        .filter(|k| !known.contains(&k.as_str()))
        .map(|k| match nearest(k, known) {
            Some(near) => format!("unknown key {path}.{k}; did you mean {near}?"),
            None => format!("unknown key {path}.{k} (known keys here: {})", known.join(", ")),
        })
        .collect();
    if !problems.is_empty() {
        return Err(MarvelError::Config(problems.join("; ")));
    }
    serde_json::from_value(value).map_err(|e| MarvelError::Config(format!("{path}: {e}")))
}

fn config_err(msg: String) -> MarvelError {
    MarvelError::Config(msg)
}

impl TrainConfig {
    pub fn from_value(json: Value) -> Result<Self> {
        if !json.is_object() {
            return Err(config_err(format!("a training config must be an object, got {json}")));
        }
        let text = serde_json::to_string(&json).expect("a JSON value serialises");
        let model = TitokConfig::from_json_str(&text)?;
        let losses: LossSettings = section(&json, "losses", false)?;
        // The nested extension objects are checked like their sections.
        if json.pointer("/losses/perceptual_convnext").is_some() {
            section::<ConvNextConfig>(&json, "losses.perceptual_convnext", true)?;
        }
        if json.pointer("/losses/discriminator").is_some() {
            section::<DiscriminatorConfig>(&json, "losses.discriminator", true)?;
        }
        let optimizer: OptimizerSettings = section(&json, "optimizer", true)?;
        // The nested params objects are checked like their sections.
        let opt_params: OptimizerParams = section(&json, "optimizer.params", true)?;
        let sched: SchedulerSettings = section(&json, "lr_scheduler", true)?;
        let sched_params: SchedulerParams = section(&json, "lr_scheduler.params", true)?;
        let training: TrainingSettings = section(&json, "training", true)?;
        let cfg = TrainConfig {
            json,
            model,
            losses,
            optimizer: OptimizerSettings { params: opt_params, ..optimizer },
            lr_scheduler: SchedulerSettings { params: sched_params, ..sched },
            training,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Where this run trains (`training.device`).
    pub fn device(&self) -> Result<crate::device::DeviceSpec> {
        match &self.training.device {
            None => Ok(crate::device::DeviceSpec::Cpu),
            Some(name) => {
                crate::device::DeviceSpec::parse(name).map_err(|e| config_err(format!("training.device: {e}")))
            }
        }
    }

    fn validate(&self) -> Result<()> {
        self.device()?;
        if self.optimizer.name.to_lowercase() != "adamw" {
            return Err(config_err(format!("optimizer.name: only \"adamw\" is supported, got {:?}", self.optimizer.name)));
        }
        if self.lr_scheduler.scheduler != "cosine" {
            return Err(config_err(format!(
                "lr_scheduler.scheduler: only \"cosine\" is supported, got {:?}",
                self.lr_scheduler.scheduler
            )));
        }
        let lr = self.optimizer.params.learning_rate;
        if let Some(s) = self.lr_scheduler.params.learning_rate {
            if s != lr {
                return Err(config_err(format!(
                    "lr_scheduler.params.learning_rate = {s} differs from optimizer.params.learning_rate = {lr}"
                )));
            }
        }
        if self.training.gradient_accumulation_steps == 0 {
            return Err(config_err("training.gradient_accumulation_steps must be at least 1, got 0".into()));
        }
        if let Some(n) = self.training.max_grad_norm {
            if !(n.is_finite() && n > 0.0) {
                return Err(config_err(format!("training.max_grad_norm must be a positive number, got {n}")));
            }
        }
        if self.training.max_train_steps == 0 {
            return Err(config_err("training.max_train_steps must be at least 1, got 0".into()));
        }
        let to_config = |e: MarvelError| config_err(e.to_string());
        self.schedule().map_err(to_config)?;
        crate::train::AdamW::new(self.adamw(), Vec::new()).map_err(to_config)?;
        Ok(())
    }

    pub fn adamw(&self) -> AdamWConfig {
        let p = &self.optimizer.params;
        AdamWConfig {
            learning_rate: p.learning_rate,
            beta1: p.beta1,
            beta2: p.beta2,
            weight_decay: p.weight_decay,
            epsilon: p.epsilon,
        }
    }

    pub fn schedule(&self) -> Result<CosineSchedule> {
        let p = &self.lr_scheduler.params;
        CosineSchedule::new(self.optimizer.params.learning_rate, p.end_lr, p.warmup_steps, self.training.max_train_steps)
    }

    /// The reference's `EMAModel(model.parameters(), decay=0.999)` when `training.use_ema`.
    pub fn ema(&self) -> Option<EmaConfig> {
        self.training.use_ema.then(EmaConfig::reference)
    }
}

/// The file a config key names, which must exist: a missing network is refused before any step, with the key and
/// the path in the error (MARVEL_IO). Relative paths are taken from the working directory, as the reference does.
pub fn network_file(key: &str, value: &str) -> Result<std::path::PathBuf> {
    let path = std::path::PathBuf::from(value);
    if value.is_empty() || !path.exists() {
        let why = format!("{key} names a file that does not exist");
        return Err(MarvelError::io(path, std::io::Error::new(std::io::ErrorKind::NotFound, why)));
    }
    Ok(path)
}
