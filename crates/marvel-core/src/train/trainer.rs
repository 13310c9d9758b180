//! The trainer: one [`Trainer::step`] per micro-batch runs the reference loop's body (utils/train_utils.py
//! `train_one_epoch`): forward and loss (the [`Recipe`]), backward, accumulation over
//! `training.gradient_accumulation_steps` micro-batches, global-norm clipping to `training.max_grad_norm`, AdamW
//! at the cosine schedule's rate, then the EMA of the weights. [`Trainer::gradients`] and [`Trainer::apply`] are
//! its two halves, for data-parallel ranks: between them a caller may average gradients across processes, and
//! `apply` averages through a [`GradientReducer`] itself when given one of more than one rank. Parameters live
//! in [`Var`]s that the model is built on, so an update is visible to the next forward without rebuilding
//! anything; frozen parameters are built as plain tensors, so backward computes no gradient for them.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarBuilder;
use serde_json::Value;

use crate::config::{QuantizerConfig, TitokConfig};
use crate::error::{MarvelError, Result};
use crate::image::{images_from_u8_nhwc, images_to_u8_nhwc};
use crate::memory::KeepFreedMemory;
use crate::model::titok::{weights_file, Titok};
use crate::quantize::lfq::SplitMix64;
use crate::train::recipe::{build_recipe, Batch, Recipe, RecipeKind};
use crate::train::reduce::{GradientLayout, GradientReducer, SingleRank};
use crate::train::settings::TrainConfig;
use crate::train::{clip_grad_norm, global_norm, AdamW, CosineSchedule, Ema, GradAccumulator, Gradients};
use crate::weights::{build_shape_only, Checkpoint, Requested};
use crate::{invalid, shape_mismatch};

/// Separates the training draws (depth dropout) from the initialisation's stream of the same seed.
const TRAIN_STREAM: u64 = 0x7261_696e_6d61_7276;

/// What one call of [`Trainer::step`] did.
#[derive(Debug, Clone)]
pub struct StepOutput {
    /// Optimizer steps taken so far (unchanged by a micro-batch that only accumulates).
    pub step: u64,
    /// The learning rate of the update this micro-batch contributes to.
    pub lr: f64,
    /// The total loss of this micro-batch's forward pass, whose gradients this call accumulated.
    pub loss: f32,
    pub components: Vec<(String, f32)>,
    /// Global gradient norm before clipping, when this call completed an optimizer step.
    pub grad_norm: Option<f32>,
}

/// What one call of [`Trainer::apply`] did.
#[derive(Debug, Clone)]
pub struct UpdateOutput {
    /// Optimizer steps taken so far (unchanged when the gradients were only accumulated).
    pub step: u64,
    /// The learning rate of the update these gradients contribute to.
    pub lr: f64,
    /// Global norm of the (rank-averaged) gradients before clipping, when an optimizer step was taken.
    pub grad_norm: Option<f32>,
    /// What the recipe reports after the update (stage 2's discriminator), empty when only accumulating.
    pub components: Vec<(String, f32)>,
}

/// One micro-batch's gradients (trainable parameters only), its loss and the loss's components.
pub type MicroBatch = (Gradients, f32, Vec<(String, f32)>);

pub struct Trainer {
    pub(crate) cfg: TrainConfig,
    pub(crate) seed: u64,
    /// Every model parameter in the model's request order (the checkpoint's key order).
    pub(crate) params: Vec<(String, Var)>,
    pub(crate) trainable: Vec<(String, Var)>,
    pub(crate) model: Titok,
    pub(crate) recipe: Box<dyn Recipe>,
    pub(crate) optimizer: AdamW,
    pub(crate) schedule: CosineSchedule,
    pub(crate) accumulator: GradAccumulator,
    pub(crate) layout: GradientLayout,
    pub(crate) ema: Option<Ema>,
    pub(crate) rng: SplitMix64,
    pub(crate) step: u64,
    /// Last, so that it hands the free memory back after everything above has dropped.
    _memory: KeepFreedMemory,
}

impl Drop for Trainer {
    /// The training ops' pooled buffers (tens of MB at stage-2 sizes) serve the next step, and so does the memory
    /// the steps freed ([`KeepFreedMemory`]); without a trainer nothing needs them.
    fn drop(&mut self) {
        crate::nn::release_training_buffers();
    }
}

impl std::fmt::Debug for Trainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer").field("recipe", &self.recipe.kind()).field("step", &self.step).finish()
    }
}

/// A fresh model's weights. The one place that decides initialisation, so that moving it into the layers
/// changes nothing here.
pub(crate) fn fresh_weights(cfg: &TitokConfig, seed: u64) -> Result<HashMap<String, Tensor>> {
    crate::init::random_weights(cfg, seed)
}

/// The tensors the model asks for, in order.
pub(crate) fn requested(cfg: &TitokConfig) -> Result<Vec<Requested>> {
    Ok(build_shape_only(DType::F32, &Device::Cpu, |vb| Titok::new(cfg, vb))?.1)
}

/// Every requested tensor from the weight file `path`, strictly: each present with its shape, nothing else
/// stored, except what a TiTok checkpoint carries into a MARVEL config (the VQ codebook, replaced by the
/// parameter-free LFQ as `convert` does) and MDQ's derived LFQ buffers.
/// `pixel` holds the stage-2 pixel weights taken from the MaskGIT-VQGAN: they replace (or supply) those tensors.
fn load_weights(
    path: &Path,
    wanted: &[Requested],
    lfq_target: bool,
    pixel: Option<&HashMap<String, Tensor>>,
) -> Result<HashMap<String, Tensor>> {
    let ckpt = Arc::new(Checkpoint::open(path)?);
    let mut problems = Vec::new();
    let mut out = HashMap::new();
    for r in wanted {
        if let Some(t) = pixel.and_then(|p| p.get(&r.name)) {
            if t.dims() == r.shape.as_slice() {
                out.insert(r.name.clone(), t.clone());
            } else {
                problems.push(format!(
                    "{} (from model.vq_model.pretrained_tokenizer_weight): shape {:?}, the model needs {:?}",
                    r.name,
                    t.dims(),
                    r.shape
                ));
            }
            continue;
        }
        match ckpt.tensors().get(&r.name) {
            None => problems.push(format!("missing {}", r.name)),
            Some(t) if t.shape != r.shape => {
                problems.push(format!("{}: stored shape {:?}, the model needs {:?}", r.name, t.shape, r.shape))
            }
            Some(_) => {
                out.insert(r.name.clone(), ckpt.load(&r.name, &Device::Cpu)?.to_dtype(DType::F32)?);
            }
        }
    }
    for key in ckpt.tensors().keys() {
        let skipped = lfq_target && key.starts_with("quantize.");
        if !skipped && !wanted.iter().any(|r| &r.name == key) {
            problems.push(format!("unexpected {key}"));
        }
    }
    if !problems.is_empty() {
        let shown: Vec<_> = problems.iter().take(20).cloned().collect();
        let more = if problems.len() > 20 { format!(" (and {} more)", problems.len() - 20) } else { String::new() };
        let hint = if pixel.is_none() && problems.iter().all(|p| p.starts_with("missing pixel_")) {
            " (stage 2 starts from a stage-1 model: name the MaskGIT-VQGAN in \
             model.vq_model.pretrained_tokenizer_weight to supply the pixel codebook and pixel decoder)"
        } else {
            ""
        };
        return Err(MarvelError::Checkpoint(format!(
            "{}: the weights do not fit the training config's model: {}{more}{hint}",
            path.display(),
            shown.join("; ")
        )));
    }
    Ok(out)
}

/// `pixel` over `weights` (fresh ones), each checked against the model's request.
fn with_pixel_weights(
    mut weights: HashMap<String, Tensor>,
    wanted: &[Requested],
    pixel: &HashMap<String, Tensor>,
) -> Result<HashMap<String, Tensor>> {
    for r in wanted {
        if let Some(t) = pixel.get(&r.name) {
            if t.dims() != r.shape.as_slice() {
                return Err(MarvelError::Checkpoint(format!(
                    "model.vq_model.pretrained_tokenizer_weight: {} has shape {:?}, the model's pixel decoder needs {:?}",
                    r.name,
                    t.dims(),
                    r.shape
                )));
            }
            weights.insert(r.name.clone(), t.clone());
        }
    }
    Ok(weights)
}

/// Stage 2 steps its discriminator on each rank's own batch after the update, and nothing averages those
/// gradients: the ranks' discriminators would drift apart, so data-parallel stage 2 is refused.
pub fn stage2_ranks_error(world_size: usize) -> MarvelError {
    invalid!(
        "the stage-2 recipe trains on one rank only: its discriminator's gradients are not averaged across ranks, \
         so {world_size} ranks would train {world_size} different discriminators; run it with one rank"
    )
}

/// `text` parsed as JSON, or an argument error naming `what`.
pub fn json_arg(what: &str, text: &str) -> Result<Value> {
    serde_json::from_str(text).map_err(|e| invalid!("{what} is not valid JSON: {e}"))
}

impl Trainer {
    /// A trainer for the training config `config` (the object a reference-style yaml parses to), starting from
    /// the model folder `init` (TiTok or MARVEL, loaded strictly) or from fresh weights drawn from `seed`.
    pub fn create(config: Value, init: Option<&Path>, seed: u64) -> Result<Self> {
        let cfg = TrainConfig::from_value(config)?;
        let wanted = requested(&cfg.model)?;
        // Stage 2's pixel codebook and decoder come from the MaskGIT-VQGAN when the config names one.
        let pixel = if RecipeKind::select(&cfg)? == RecipeKind::Stage2 {
            crate::train::stage2_recipe::maskgit_pixel_weights(&cfg)?
        } else {
            None
        };
        let weights = match init {
            None => match &pixel {
                None => fresh_weights(&cfg.model, seed)?,
                Some(p) => with_pixel_weights(fresh_weights(&cfg.model, seed)?, &wanted, p)?,
            },
            Some(dir) => {
                if !dir.is_dir() {
                    return Err(MarvelError::io(
                        dir,
                        std::io::Error::new(std::io::ErrorKind::NotFound, "init model folder not found"),
                    ));
                }
                let lfq = matches!(cfg.model.quantizer, QuantizerConfig::Lfq(_));
                load_weights(&weights_file(dir)?, &wanted, lfq, pixel.as_ref())?
            }
        };
        Self::build(cfg, seed, &wanted, weights, SplitMix64::new(seed ^ TRAIN_STREAM))
    }

    /// [`Trainer::create`] for a config given as JSON text (what the Node binding passes).
    pub fn create_from_json(config_json: &str, init: Option<&Path>, seed: u64) -> Result<Self> {
        Self::create(json_arg("the training config", config_json)?, init, seed)
    }

    pub(crate) fn build(
        cfg: TrainConfig,
        seed: u64,
        wanted: &[Requested],
        weights: HashMap<String, Tensor>,
        rng: SplitMix64,
    ) -> Result<Self> {
        let kind = RecipeKind::select(&cfg)?;
        if cfg.device()?.is_cuda() && kind != RecipeKind::Single {
            // Stage 1's MaskGIT-VQGAN and stage 2's perceptual network and discriminator load on the CPU.
            return Err(invalid!("training.device {}: only the single recipe trains on a GPU so far", cfg.device()?));
        }
        let recipe = build_recipe(kind, &cfg, seed)?;
        Self::build_with(cfg, seed, wanted, weights, rng, recipe)
    }

    /// [`Trainer::build`] with a given recipe (tests and recipes under development).
    pub(crate) fn build_with(
        cfg: TrainConfig,
        seed: u64,
        wanted: &[Requested],
        mut weights: HashMap<String, Tensor>,
        rng: SplitMix64,
        recipe: Box<dyn Recipe>,
    ) -> Result<Self> {
        let memory = KeepFreedMemory::new();
        let device = cfg.device()?.open()?;
        let mut params = Vec::with_capacity(wanted.len());
        let mut built = HashMap::new();
        for r in wanted {
            let t = weights.remove(&r.name).ok_or_else(|| invalid!("no initial value for {}", r.name))?;
            let var = Var::from_tensor(&t.to_dtype(DType::F32)?.to_device(&device)?.contiguous()?)?;
            let seen = if recipe.trainable(&r.name) { var.as_tensor().clone() } else { var.as_tensor().detach() };
            built.insert(r.name.clone(), seen);
            params.push((r.name.clone(), var));
        }
        let model = Titok::new(&cfg.model, VarBuilder::from_tensors(built, DType::F32, &device))?;
        let trainable: Vec<(String, Var)> = params.iter().filter(|(n, _)| recipe.trainable(n)).cloned().collect();
        let optimizer = AdamW::new(cfg.adamw(), trainable.clone())?;
        let ema = match cfg.ema() {
            Some(ec) => Some(Ema::new(ec, &params, |n| recipe.trainable(n))?),
            None => None,
        };
        Ok(Self {
            layout: GradientLayout::new(&trainable),
            schedule: cfg.schedule()?,
            accumulator: GradAccumulator::new(cfg.training.gradient_accumulation_steps)?,
            cfg,
            seed,
            params,
            trainable,
            model,
            recipe,
            optimizer,
            ema,
            rng,
            step: 0,
            _memory: memory,
        })
    }

    pub fn recipe(&self) -> RecipeKind {
        self.recipe.kind()
    }

    /// Optimizer steps taken.
    pub fn steps(&self) -> u64 {
        self.step
    }

    pub fn model_config(&self) -> &TitokConfig {
        &self.cfg.model
    }

    /// Where this trainer's weights and steps live (`training.device`).
    pub fn device(&self) -> crate::device::DeviceSpec {
        self.cfg.device().expect("checked when the config was read")
    }

    /// The candle device of the weights (a data-parallel reducer joins on it).
    pub fn candle_device(&self) -> &Device {
        self.model.device()
    }

    /// Every model parameter, in checkpoint order.
    pub fn parameters(&self) -> &[(String, Var)] {
        &self.params
    }

    pub fn is_trainable(&self, name: &str) -> bool {
        self.recipe.trainable(name)
    }

    pub fn optimizer(&self) -> &AdamW {
        &self.optimizer
    }

    pub fn ema(&self) -> Option<&Ema> {
        self.ema.as_ref()
    }

    /// Interleaved RGB bytes (B, S, S, 3), S the config's crop_size -> the model input.
    fn images(&self, images: &[u8], batch: usize) -> Result<Tensor> {
        let s = self.cfg.model.image_size;
        if batch == 0 {
            return Err(invalid!("a training batch needs at least one image"));
        }
        if images.len() != batch * s * s * 3 {
            return Err(shape_mismatch!(
                "images must be (B, {s}, {s}, 3) bytes: {batch} image(s) are {} bytes, got {}",
                batch * s * s * 3,
                images.len()
            ));
        }
        images_from_u8_nhwc(images, (batch, s, s), self.model.device())
    }

    /// `proxy_codes` (B * L values, L codes per image) as a (B, L) I64 tensor.
    fn proxy_codes(&self, codes: Option<&[i32]>, batch: usize) -> Result<Option<Tensor>> {
        let Some(codes) = codes else { return Ok(None) };
        if codes.is_empty() || codes.len() % batch != 0 {
            return Err(shape_mismatch!(
                "proxy codes must hold the same number of codes for each of the {batch} image(s), got {} values",
                codes.len()
            ));
        }
        let values: Vec<i64> = codes.iter().map(|&c| i64::from(c)).collect();
        Ok(Some(Tensor::from_vec(values, (batch, codes.len() / batch), self.model.device())?))
    }

    /// The gradients of one micro-batch and its loss, without touching the weights. Stage 2 also runs the
    /// discriminator's forward and backward for the micro-batch alongside the backward pass (`Recipe::backward`);
    /// called outside a step, that pass is dropped unused, and an error in it is this call's.
    pub fn gradients(&mut self, images: &[u8], batch: usize, proxy_codes: Option<&[i32]>) -> Result<MicroBatch> {
        let x = self.images(images, batch)?;
        let codes = self.proxy_codes(proxy_codes, batch)?;
        let out = self.recipe.loss(
            &self.model,
            &Batch { images: &x, proxy_codes: codes.as_ref(), step: self.step },
            &mut self.rng,
        )?;
        let loss = out.total.to_dtype(DType::F32)?.to_scalar::<f32>()?;
        if !loss.is_finite() {
            return Err(invalid!("the loss is {loss} at step {}; the weights were not updated", self.step + 1));
        }
        let store = self.recipe.backward(&out.total)?;
        Ok((Gradients::from_store(&self.trainable, &store)?, loss, out.components))
    }

    /// One micro-batch: `images` (B, S, S, 3) bytes, and for stage 1 optionally the images' MaskGIT codes
    /// (B * 256 values). Completes an optimizer step every
    /// `gradient_accumulation_steps` calls.
    pub fn step(&mut self, images: &[u8], batch: usize, proxy_codes: Option<&[i32]>) -> Result<StepOutput> {
        self.step_with(images, batch, proxy_codes, &mut SingleRank)
    }

    /// [`Trainer::step`] as one rank of a data-parallel run whose gradients `reducer` averages on the device
    /// (NCCL), so they never leave the GPU.
    pub fn step_with(
        &mut self,
        images: &[u8],
        batch: usize,
        proxy_codes: Option<&[i32]>,
        reducer: &mut dyn GradientReducer,
    ) -> Result<StepOutput> {
        let (grads, loss, mut components) = self.gradients(images, batch, proxy_codes)?;
        let update = self.apply(grads, reducer)?;
        components.extend(update.components);
        Ok(StepOutput { step: update.step, lr: update.lr, loss, components, grad_norm: update.grad_norm })
    }

    /// The second half of [`Trainer::step`]: adds one micro-batch's gradients to the accumulation and, on the
    /// `gradient_accumulation_steps`-th, averages the accumulated gradients across ranks through `reducer` (the
    /// one collective of data-parallel training; skipped for one rank), clips them, and runs AdamW, the EMA and
    /// the recipe's after-update. A reducer that fails leaves this optimizer step's gradients spent: a rank that
    /// cannot reach the others cannot continue the run anyway.
    pub fn apply(&mut self, grads: Gradients, reducer: &mut dyn GradientReducer) -> Result<UpdateOutput> {
        let lr = self.schedule.lr(self.step);
        let Some(grads) = self.accumulator.add(grads)? else {
            return Ok(UpdateOutput { step: self.step, lr, grad_norm: None, components: Vec::new() });
        };
        self.update(grads, reducer)
    }

    /// [`Trainer::gradients`] added to this trainer's accumulation: the accumulated gradients once this micro-batch
    /// completes `gradient_accumulation_steps` (scaled as [`Trainer::apply`] scales them), `None` before. A rank
    /// that exchanges its gradients itself exchanges only these, once per optimizer step, then hands the mean to
    /// [`Trainer::update`].
    pub fn accumulate(
        &mut self,
        images: &[u8],
        batch: usize,
        proxy_codes: Option<&[i32]>,
    ) -> Result<(Option<Gradients>, f32, Vec<(String, f32)>)> {
        let (grads, loss, components) = self.gradients(images, batch, proxy_codes)?;
        Ok((self.accumulator.add(grads)?, loss, components))
    }

    /// The learning rate of the optimizer step the next micro-batch contributes to.
    pub fn learning_rate(&self) -> f64 {
        self.schedule.lr(self.step)
    }

    /// The optimizer step for accumulated gradients (of [`Trainer::accumulate`], or [`Trainer::apply`]'s): averages
    /// them across ranks through `reducer` (skipped for one rank), clips them, and runs AdamW, the EMA and the
    /// recipe's after-update.
    pub fn update(&mut self, mut grads: Gradients, reducer: &mut dyn GradientReducer) -> Result<UpdateOutput> {
        if reducer.world_size() > 1 && self.recipe.kind() == RecipeKind::Stage2 {
            return Err(stage2_ranks_error(reducer.world_size()));
        }
        let lr = self.schedule.lr(self.step);
        if reducer.world_size() > 1 {
            let mean = reducer.all_reduce_mean(&self.layout.flatten(&grads)?)?;
            grads = self.layout.unflatten(&mean)?;
        }
        let grad_norm = match self.cfg.training.max_grad_norm {
            Some(max) => clip_grad_norm(&mut grads, max)?.total_norm,
            None => global_norm(&grads)?,
        };
        self.optimizer.set_learning_rate(lr)?;
        self.optimizer.step(&grads)?;
        self.step += 1;
        if let Some(ema) = &mut self.ema {
            ema.update(&self.params)?;
        }
        let components = self.recipe.after_update(self.step, lr)?;
        Ok(UpdateOutput { step: self.step, lr, grad_norm: Some(grad_norm), components })
    }

    /// Values in the flat gradient vector of [`Trainer::flatten_gradients`]: every trainable parameter's size.
    pub fn gradient_len(&self) -> usize {
        self.layout.len()
    }

    /// `grads` as one vector, trainable parameters in parameter order (the same order on every rank), zeros for a
    /// parameter the loss did not reach.
    pub fn flatten_gradients(&self, grads: &Gradients) -> Result<Vec<f32>> {
        self.layout.flatten_values(grads)
    }

    /// Gradients from a vector of [`Trainer::flatten_gradients`]'s layout, length and values checked.
    pub fn unflatten_gradients(&self, flat: &[f32]) -> Result<Gradients> {
        self.layout.unflatten_values_on(flat, self.model.device())
    }

    /// Reconstructions (B, S, S, 3) bytes of `images` through the current weights, decoding the first `depth`
    /// depths (all when `None`; VQ models have one).
    pub fn reconstruct(&self, images: &[u8], batch: usize, depth: Option<usize>) -> Result<Vec<u8>> {
        let x = self.images(images, batch)?;
        let (z_q, tokens) = self.model.encode(&x)?;
        let recon = match depth {
            None => self.model.decode(&z_q)?,
            Some(d) => self.model.decode_tokens_to_depth(&tokens, d)?,
        };
        images_to_u8_nhwc(&recon.detach())
    }

    /// [`Trainer::reconstruct`] through the EMA of the weights (what an exported `ema` model decodes with): the
    /// shadows are put into the parameters for the call and the weights put back, bit for bit.
    pub fn reconstruct_ema(&self, images: &[u8], batch: usize, depth: Option<usize>) -> Result<Vec<u8>> {
        let shadows = self.weights(true)?;
        let kept = self.params.iter().map(|(_, v)| v.as_tensor().copy()).collect::<candle_core::Result<Vec<_>>>()?;
        for ((_, v), (_, shadow)) in self.params.iter().zip(&shadows) {
            v.set(shadow)?;
        }
        let out = self.reconstruct(images, batch, depth);
        for ((_, v), weight) in self.params.iter().zip(&kept) {
            v.set(weight)?;
        }
        out
    }

    /// The model's weights (`ema` false) or their EMA, in checkpoint order.
    pub(crate) fn weights(&self, ema: bool) -> Result<Vec<(String, Tensor)>> {
        if !ema {
            return Ok(self.params.iter().map(|(n, v)| (n.clone(), v.as_tensor().detach())).collect());
        }
        let Some(e) = &self.ema else {
            return Err(invalid!("this trainer keeps no EMA of the weights (training.use_ema is false)"));
        };
        self.params
            .iter()
            .map(|(n, _)| Ok((n.clone(), e.shadow(n).expect("the EMA shadows every parameter").clone())))
            .collect()
    }
}
