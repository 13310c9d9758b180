//! The `stage2` recipe behind the [`Trainer`](crate::train::Trainer): the generator loss
//! ([`Stage2Loss::generator`] of [`stage2_forward`]'s reconstruction) trains `decoder.*`, `pixel_quantize.*` and
//! `pixel_decoder.*`; after each generator update, from `losses.discriminator_start` on, the discriminator takes
//! its own step on the same images and (detached) reconstructions, as the reference's loop does
//! (utils/train_utils.py `train_one_epoch`): hinge + LeCam loss, clipping to `training.max_grad_norm`, its own
//! AdamW at `optimizer.params.discriminator_learning_rate` (the generator's rate when absent) and its own cosine
//! schedule (`create_lr_scheduler`: the same warmup and end rate over `max_train_steps - discriminator_start`
//! steps, counted in discriminator steps).
//!
//! Networks: `losses.perceptual_weights` (required) names the ConvNeXt weights of the perceptual loss;
//! `losses.discriminator_weights` (optional) a discriminator to start from, otherwise a fresh one is drawn from
//! the trainer's seed. Both are loaded when the recipe is built, so a missing file is refused before any step.
//! A checkpoint adds the discriminator's weights, its optimizer state and the LeCam EMAs (three files); its
//! schedule position follows from the step.

use std::collections::HashMap;
use std::path::Path;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor};

use crate::error::{MarvelError, Result};
use crate::invalid;
use crate::model::discriminator::NLayerDiscriminator;
use crate::model::titok::Titok;
use crate::quantize::lfq::SplitMix64;
use crate::train::checkpoint::read_tensors;
use crate::train::losses::{LecamEma, PerceptualLoss, Stage2Loss, Stage2LossConfig};
use crate::train::recipe::{Batch, Recipe, RecipeKind, RecipeLoss, StateFile};
use crate::train::settings::{network_file, TrainConfig};
use crate::train::stage2::{is_stage2_trainable, stage2_forward};
use crate::train::{clip_grad_norm, global_norm, AdamW, AdamWConfig, CosineSchedule, GradAccumulator, Gradients};

/// Separates a fresh discriminator's draws from the model initialisation's stream of the same seed.
const DISCRIMINATOR_STREAM: u64 = 0x6469_7363_7269_6d73;

pub const DISCRIMINATOR_FILE: &str = "discriminator.safetensors";
pub const DISCRIMINATOR_OPTIMIZER_FILE: &str = "discriminator_optimizer.safetensors";
pub const LECAM_FILE: &str = "discriminator_lecam.safetensors";

/// The pixel codebook and pixel decoder a stage-2 model starts from: the MaskGIT-VQGAN's quantizer and decoder
/// named by `model.vq_model.pretrained_tokenizer_weight` (a weights file, or a folder holding one), under the
/// model's `pixel_` keys, as the reference's `create_model_and_loss_module` adds them (every key without
/// `encoder.`, prefixed `pixel_`) to the stage-1 weights it starts from.
pub fn maskgit_pixel_weights(cfg: &TrainConfig) -> Result<Option<HashMap<String, Tensor>>> {
    use crate::model::maskgit::RELEASED_WEIGHTS_FILE;
    use crate::train::stage1_recipe::MASKGIT_KEY;
    let Some(value) = cfg.json.pointer("/model/vq_model/pretrained_tokenizer_weight") else { return Ok(None) };
    let Some(text) = value.as_str() else {
        return Err(MarvelError::Config(format!("{MASKGIT_KEY} must be a path string, got {value}")));
    };
    let path = network_file(MASKGIT_KEY, text)?;
    let file = if path.is_dir() {
        let names = || crate::model::WEIGHT_FILES.iter().chain([&RELEASED_WEIGHTS_FILE]);
        names().map(|f| path.join(f)).find(|p| p.is_file()).ok_or_else(|| {
            let names: Vec<&str> = names().copied().collect();
            MarvelError::Checkpoint(format!("{MASKGIT_KEY}: {}: no {} found", path.display(), names.join(" or ")))
        })?
    } else {
        path
    };
    let ckpt = crate::weights::Checkpoint::open(&file)?;
    let mut out = HashMap::new();
    for key in ckpt.tensors().keys().filter(|k| !k.contains("encoder.")) {
        out.insert(format!("pixel_{key}"), ckpt.load(key, &Device::Cpu)?.to_dtype(DType::F32)?);
    }
    Ok(Some(out))
}

pub struct Stage2Recipe {
    loss: Stage2Loss,
    optimizer: AdamW,
    /// The reference's discriminator schedule, built on the generator's base rate (as `get_scheduler` is given
    /// `lr_scheduler.params.learning_rate`); the rate used is this times `lr_ratio`.
    schedule: CosineSchedule,
    /// discriminator_learning_rate / learning_rate: the schedule's LambdaLR multiplies the discriminator
    /// optimizer's own initial rate.
    lr_ratio: f64,
    max_grad_norm: Option<f64>,
    micro_batches: usize,
    /// The micro-batches since the last update, for the discriminator.
    pending: Vec<Pending>,
    /// Whether the discriminator's pass runs alongside the generator's backward: always, but in the tests that
    /// turn it off to compare.
    alongside: bool,
    #[cfg(test)]
    taken: usize,
}

/// A micro-batch the discriminator steps on after the update: its images and detached reconstructions, the global
/// step its losses were computed at, and the discriminator's pass over it when the generator's backward ran that
/// alongside ([`Recipe::backward`]).
struct Pending {
    x: Tensor,
    recon: Tensor,
    step: u64,
    pass: Option<DiscriminatorPass>,
}

/// The discriminator's forward and backward on one micro-batch: its gradients, its losses, and the LeCam EMAs it
/// started from and left.
struct DiscriminatorPass {
    grads: Gradients,
    total: f32,
    hinge: f32,
    lecam: f32,
    real: f32,
    fake: f32,
    lecam_before: LecamEma,
    lecam_after: LecamEma,
}

/// Whether two LeCam states hold the same values, bit for bit (-0 and 0 differ, a NaN equals itself).
fn same_bits(a: LecamEma, b: LecamEma) -> bool {
    (a.real.to_bits(), a.fake.to_bits()) == (b.real.to_bits(), b.fake.to_bits())
}

/// The discriminator's pass over (x, recon) at `global` step, from the LeCam EMAs `loss` holds (which it leaves
/// updated).
fn discriminator_pass(loss: &mut Stage2Loss, x: &Tensor, recon: &Tensor, global: u64) -> Result<DiscriminatorPass> {
    let lecam_before = loss.lecam();
    let d = loss.discriminator_step(x, recon, global)?;
    let grads = Gradients::from_store(loss.discriminator_params(), &d.total.backward()?)?;
    Ok(DiscriminatorPass {
        grads,
        total: scalar(&d.total)?,
        hinge: scalar(&d.hinge)?,
        lecam: scalar(&d.lecam)?,
        real: d.mean_real,
        fake: d.mean_fake,
        lecam_before,
        lecam_after: loss.lecam(),
    })
}

impl std::fmt::Debug for Stage2Recipe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stage2Recipe").field("losses", self.loss.config()).finish()
    }
}

fn config_error(e: MarvelError) -> MarvelError {
    match e {
        MarvelError::InvalidArgument(m) => MarvelError::Config(format!("recipe stage2: {m}")),
        other => other,
    }
}

impl Stage2Recipe {
    /// `seed` draws a fresh discriminator when `losses.discriminator_weights` is absent.
    pub fn new(cfg: &TrainConfig, seed: u64) -> Result<Self> {
        let m = &cfg.model;
        if !m.is_legacy || !m.finetune_decoder || m.pixel_decoder.is_none() {
            return Err(MarvelError::Config(format!(
                "recipe stage2 trains the pixel decoder of the two-stage layout: it needs model.vq_model.is_legacy \
                 true, finetune_decoder true and a pixel_decoder, got {}, {} and {}",
                m.is_legacy,
                m.finetune_decoder,
                if m.pixel_decoder.is_some() { "one" } else { "none" }
            )));
        }
        // The stage-2 yaml's values are the defaults of the keys it sets (the loss module reads them all).
        let mut losses = cfg.json.get("losses").cloned().unwrap_or_else(|| serde_json::json!({}));
        if let Some(obj) = losses.as_object_mut() {
            obj.remove("perceptual_weights");
            obj.remove("discriminator_weights");
        }
        let loss_cfg: Stage2LossConfig =
            serde_json::from_value(losses).map_err(|e| MarvelError::Config(format!("losses: {e}")))?;
        loss_cfg.validate().map_err(config_error)?;

        let Some(perceptual_path) = &cfg.losses.perceptual_weights else {
            return Err(MarvelError::Config(
                "recipe stage2 needs the perceptual network: set losses.perceptual_weights to the ConvNeXt weights \
                 (torchvision convnext_small keys, safetensors or .bin)"
                    .into(),
            ));
        };
        let path = network_file("losses.perceptual_weights", perceptual_path)?;
        let perceptual = PerceptualLoss::load(&loss_cfg.perceptual_convnext, &path, &Device::Cpu)
            .map_err(|e| MarvelError::Checkpoint(format!("losses.perceptual_weights ({}): {e}", path.display())))?;
        let (discriminator, params) = match &cfg.losses.discriminator_weights {
            Some(p) => {
                let path = network_file("losses.discriminator_weights", p)?;
                NLayerDiscriminator::load_trainable(&loss_cfg.discriminator, &path, &Device::Cpu).map_err(|e| {
                    MarvelError::Checkpoint(format!("losses.discriminator_weights ({}): {e}", path.display()))
                })?
            }
            None => NLayerDiscriminator::fresh_trainable(&loss_cfg.discriminator, seed ^ DISCRIMINATOR_STREAM)?,
        };

        let p = &cfg.optimizer.params;
        let d_lr = p.discriminator_learning_rate.unwrap_or(p.learning_rate);
        let optimizer =
            AdamW::new(AdamWConfig { learning_rate: d_lr, ..cfg.adamw() }, params.clone()).map_err(config_error)?;
        let s = &cfg.lr_scheduler.params;
        let d_steps = cfg.training.max_train_steps.saturating_sub(loss_cfg.discriminator_start);
        let schedule = CosineSchedule::new(p.learning_rate, s.end_lr, s.warmup_steps, d_steps).map_err(config_error)?;
        Ok(Self {
            loss: Stage2Loss::new(loss_cfg, perceptual, discriminator, params)?,
            optimizer,
            schedule,
            lr_ratio: d_lr / p.learning_rate,
            max_grad_norm: cfg.training.max_grad_norm,
            micro_batches: cfg.training.gradient_accumulation_steps,
            pending: Vec::new(),
            alongside: true,
            #[cfg(test)]
            taken: 0,
        })
    }

    pub fn loss_module(&self) -> &Stage2Loss {
        &self.loss
    }

    pub fn discriminator_optimizer(&self) -> &AdamW {
        &self.optimizer
    }

    fn trains_discriminator(&self, global_step: u64) -> bool {
        global_step >= self.loss.config().discriminator_start
    }
}

fn scalar(t: &Tensor) -> Result<f32> {
    Ok(t.to_dtype(DType::F32)?.to_scalar::<f32>()?)
}

impl Recipe for Stage2Recipe {
    fn kind(&self) -> RecipeKind {
        RecipeKind::Stage2
    }

    fn trainable(&self, name: &str) -> bool {
        is_stage2_trainable(name)
    }

    fn loss(&mut self, model: &Titok, batch: &Batch, _rng: &mut SplitMix64) -> Result<RecipeLoss> {
        if batch.proxy_codes.is_some() {
            return Err(invalid!("the stage2 recipe trains on pixels and takes no proxy codes"));
        }
        let out = stage2_forward(model, batch.images)?;
        let g = self.loss.generator(batch.images, &out.recon, batch.step, &out.quantizer_loss)?;
        if self.trains_discriminator(batch.step) {
            let (x, recon) = (batch.images.clone(), out.recon.detach());
            self.pending.push(Pending { x, recon, step: batch.step, pass: None });
            // Only the micro-batches of the coming update count: a loss computed outside a step (the trainer's
            // `gradients`) must not reach the discriminator.
            if self.pending.len() > self.micro_batches {
                self.pending.remove(0);
            }
        }
        let components = vec![
            ("reconstruction_loss".to_string(), scalar(&g.reconstruction)?),
            ("perceptual_loss".to_string(), scalar(&g.perceptual)?),
            ("quantizer_loss".to_string(), scalar(&g.quantizer)?),
            ("weighted_gan_loss".to_string(), scalar(&g.weighted_gan)?),
            ("gan_loss".to_string(), scalar(&g.gan)?),
            ("discriminator_factor".to_string(), g.discriminator_factor as f32),
            ("d_weight".to_string(), g.d_weight as f32),
        ];
        Ok(RecipeLoss { total: g.total, components })
    }

    /// The generator's backward pass, and alongside it, on the same pool, the discriminator's forward and backward
    /// for the micro-batch whose loss this is: the two only read the discriminator's weights (it steps after the
    /// generator's update), and each fills the other's waits. At 2 threads, ~22% of the calling thread's samples
    /// in a stage-2 step had the other thread idle (candle's small ops, the gradient store's copies, the last
    /// tasks of a convolution), ~0.1 s of a ~0.5 s step. The pass starts from the LeCam EMAs the previous
    /// micro-batch's pass left (the current ones for the first) and `after_update` takes it only where those are
    /// the EMAs it then holds: the same values, bit for bit, as computing it there.
    fn backward(&mut self, total: &Tensor) -> Result<GradStore> {
        let Some(last) = self.pending.last().filter(|p| p.pass.is_none() && self.alongside) else {
            return Ok(total.backward()?);
        };
        let (x, recon, step) = (last.x.clone(), last.recon.clone(), last.step);
        let previous = self.pending.len().checked_sub(2).and_then(|i| self.pending[i].pass.as_ref());
        let start = previous.map_or(self.loss.lecam(), |p| p.lecam_after);
        let (current, loss) = (self.loss.lecam(), &mut self.loss);
        let (store, pass) = rayon::join(
            || total.backward(),
            || {
                loss.set_lecam(start);
                let pass = discriminator_pass(loss, &x, &recon, step);
                loss.set_lecam(current);
                pass
            },
        );
        let store = store?;
        if let Some(last) = self.pending.last_mut() {
            last.pass = Some(pass?);
        }
        Ok(store)
    }

    #[cfg(test)]
    fn set_alongside(&mut self, on: bool) {
        self.alongside = on;
    }

    #[cfg(test)]
    fn taken_alongside(&self) -> usize {
        self.taken
    }

    /// The discriminator's step for the generator step just taken (`step` counts it, so its global step, the
    /// one its losses were computed at, is `step - 1`), on the micro-batches that step saw, their gradients
    /// averaged as the generator's are.
    fn after_update(&mut self, step: u64, _lr: f64) -> Result<Vec<(String, f32)>> {
        let pending = std::mem::take(&mut self.pending);
        let global = step.saturating_sub(1);
        if pending.is_empty() || !self.trains_discriminator(global) {
            return Ok(Vec::new());
        }
        let mut accumulator = GradAccumulator::new(pending.len())?;
        let (mut total, mut hinge, mut lecam, mut real, mut fake) = (0f32, 0f32, 0f32, 0f32, 0f32);
        let mut summed = None;
        let micro_batches = pending.len();
        for p in pending {
            let pass = match p.pass {
                Some(pass) if p.step == global && same_bits(pass.lecam_before, self.loss.lecam()) => {
                    #[cfg(test)]
                    {
                        self.taken += 1;
                    }
                    self.loss.set_lecam(pass.lecam_after);
                    pass
                }
                _ => discriminator_pass(&mut self.loss, &p.x, &p.recon, global)?,
            };
            total += pass.total;
            hinge += pass.hinge;
            lecam += pass.lecam;
            real += pass.real;
            fake += pass.fake;
            summed = accumulator.add(pass.grads)?;
        }
        let mut grads = summed.expect("the accumulator completes after its last micro-batch");
        let grad_norm = match self.max_grad_norm {
            Some(max) => clip_grad_norm(&mut grads, max)?.total_norm,
            None => global_norm(&grads)?,
        };
        let d_step = global - self.loss.config().discriminator_start;
        let lr = self.lr_ratio * self.schedule.lr(d_step);
        self.optimizer.set_learning_rate(lr)?;
        self.optimizer.step(&grads)?;
        let n = micro_batches as f32;
        Ok(vec![
            ("discriminator_loss".to_string(), total / n),
            ("discriminator_hinge_loss".to_string(), hinge / n),
            ("lecam_loss".to_string(), lecam / n),
            ("logits_real".to_string(), real / n),
            ("logits_fake".to_string(), fake / n),
            ("discriminator_lr".to_string(), lr as f32),
            ("discriminator_grad_norm".to_string(), grad_norm),
        ])
    }

    fn state(&self) -> Result<Vec<StateFile>> {
        // The reference's state dict, buffers included, so that the file also serves as
        // `losses.discriminator_weights`.
        let mut weights: Vec<(String, Tensor)> =
            self.loss.discriminator_params().iter().map(|(n, v)| (n.clone(), v.as_tensor().detach())).collect();
        weights.extend(NLayerDiscriminator::buffers(&self.loss.config().discriminator)?);
        Ok(vec![
            (DISCRIMINATOR_FILE.to_string(), weights),
            (DISCRIMINATOR_OPTIMIZER_FILE.to_string(), self.optimizer.state()?),
            (LECAM_FILE.to_string(), self.loss.lecam().state(&Device::Cpu)?),
        ])
    }

    fn load_state(&mut self, dir: &Path) -> Result<()> {
        let path = dir.join(DISCRIMINATOR_FILE);
        let weights = read_tensors(&path)?;
        let params = self.loss.discriminator_params();
        let mut problems: Vec<String> = params
            .iter()
            .filter_map(|(n, v)| match weights.get(n) {
                None => Some(format!("missing {n}")),
                Some(t) if t.dims() != v.dims() || t.dtype() != DType::F32 => {
                    Some(format!("{n}: {:?} {:?}, expected F32 {:?}", t.dtype(), t.dims(), v.dims()))
                }
                _ => None,
            })
            .collect();
        let buffers = NLayerDiscriminator::buffers(&self.loss.config().discriminator)?;
        for (n, b) in &buffers {
            match weights.get(n) {
                Some(t) if t.dims() == b.dims() => {}
                _ => problems.push(format!("{n}: missing or not shaped {:?}", b.dims())),
            }
        }
        let known = |k: &String| params.iter().any(|(n, _)| n == k) || buffers.iter().any(|(n, _)| n == k);
        problems.extend(weights.keys().filter(|k| !known(k)).map(|k| format!("unexpected {k}")));
        if !problems.is_empty() {
            return Err(MarvelError::Checkpoint(format!("{}: {}", path.display(), problems.join("; "))));
        }
        let lecam: HashMap<String, Tensor> = read_tensors(&dir.join(LECAM_FILE))?;
        let lecam = LecamEma::from_state(&lecam)?;
        self.optimizer.load_state(&read_tensors(&dir.join(DISCRIMINATOR_OPTIMIZER_FILE))?)?;
        for (n, v) in params {
            v.set(&weights[n])?;
        }
        self.loss.set_lecam(lecam);
        self.pending.clear();
        Ok(())
    }
}
