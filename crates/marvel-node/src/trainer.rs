//! Bindings for `marvel_core::train::Trainer`: create or resume, one training step per call, checkpoints,
//! export, reconstructions. Every call is an async task holding its own reference to the trainer, so the main
//! thread never waits on a step and `dispose()` during a call frees the trainer when the call ends.

use std::path::Path;
use std::sync::{Arc, Mutex};

use marvel_core::invalid;
use marvel_core::train::{GradientReducer, SingleRank, Trainer as CoreTrainer};
use napi::bindgen_prelude::*;
use napi::Env;
use napi_derive::napi;

use crate::task::Job;

type Shared = Arc<Mutex<CoreTrainer>>;

/// The device collective of a data-parallel run (NCCL), once joined; steps then average on the GPU.
type Reducer = Arc<Mutex<Option<Box<dyn GradientReducer + Send>>>>;

/// One named loss component.
#[napi(object)]
pub struct LossComponent {
    pub name: String,
    pub value: f64,
}

/// What one step did; mirrors `marvel_core::train::StepOutput`.
#[napi(object)]
pub struct StepResult {
    pub step: f64,
    pub lr: f64,
    pub loss: f64,
    pub components: Vec<LossComponent>,
    /// Null when the call only accumulated gradients.
    pub grad_norm: Option<f64>,
}

/// One micro-batch's loss and, when it completed the accumulation, the accumulated flat gradients (every
/// trainable parameter in parameter order).
#[napi(object)]
pub struct GradientsResult {
    /// Optimizer steps taken so far.
    pub step: f64,
    /// The learning rate of the update this micro-batch contributes to.
    pub lr: f64,
    pub loss: f64,
    pub components: Vec<LossComponent>,
    /// Null until the `gradient_accumulation_steps`-th micro-batch.
    pub gradients: Option<Float32Array>,
}

/// What applying gradients did; mirrors `marvel_core::train::UpdateOutput`.
#[napi(object)]
pub struct UpdateResult {
    pub step: f64,
    pub lr: f64,
    /// Null when the gradients were only accumulated.
    pub grad_norm: Option<f64>,
    pub components: Vec<LossComponent>,
}

fn components(list: Vec<(String, f32)>) -> Vec<LossComponent> {
    list.into_iter().map(|(name, v)| LossComponent { name, value: f64::from(v) }).collect()
}

/// What a trainer trains, fixed at creation (read without waiting for a step in flight).
#[napi(object)]
#[derive(Clone)]
pub struct TrainerInfo {
    pub recipe: String,
    pub image_size: u32,
    pub depth: u32,
    /// Values in a flat gradient vector: every trainable parameter's size.
    pub gradient_length: f64,
    /// Optimizer steps taken when the trainer was created or resumed.
    pub start_step: f64,
    /// The `dataPosition` JSON text a resumed trainer was saved with; null for a new trainer.
    pub data_position: Option<String>,
    /// `"cpu"` or `"cuda:N"`.
    pub device: String,
}

#[napi(js_name = "NativeTrainer")]
pub struct NativeTrainer {
    inner: Option<Shared>,
    info: TrainerInfo,
    reducer: Reducer,
}

fn lock(t: &Shared) -> marvel_core::Result<std::sync::MutexGuard<'_, CoreTrainer>> {
    t.lock().map_err(|_| invalid!("a previous call on this trainer failed inside the native code; create or resume it again"))
}

fn wrap(trainer: CoreTrainer, data_position: Option<String>) -> NativeTrainer {
    let depth = match &trainer.model_config().quantizer {
        marvel_core::config::QuantizerConfig::Lfq(l) => l.num_depths,
        marvel_core::config::QuantizerConfig::Vq(_) => 1,
    };
    let info = TrainerInfo {
        recipe: trainer.recipe().name().to_string(),
        image_size: trainer.model_config().image_size as u32,
        depth: depth as u32,
        gradient_length: trainer.gradient_len() as f64,
        start_step: trainer.steps() as f64,
        data_position,
        device: trainer.device().to_string(),
    };
    NativeTrainer { inner: Some(Arc::new(Mutex::new(trainer))), info, reducer: Arc::new(Mutex::new(None)) }
}

/// A trainer for the training config `config_json`, from the model folder `init` or fresh weights from `seed`.
#[napi(ts_return_type = "Promise<NativeTrainer>")]
pub fn create_trainer(config_json: String, init: Option<String>, seed: u32) -> AsyncTask<Job<(String, Option<String>), NativeTrainer>> {
    AsyncTask::new(Job::new((config_json, init), move |(json, init)| {
        Ok(wrap(CoreTrainer::create_from_json(json, init.as_deref().map(Path::new), seed as u64)?, None))
    }))
}

/// A trainer continuing from a checkpoint folder.
#[napi(ts_return_type = "Promise<NativeTrainer>")]
pub fn resume_trainer(dir: String) -> AsyncTask<Job<String, NativeTrainer>> {
    AsyncTask::new(Job::new(dir, |dir| {
        let (trainer, position) = CoreTrainer::resume(Path::new(dir))?;
        Ok(wrap(trainer, Some(position.to_string())))
    }))
}

#[napi]
impl NativeTrainer {
    fn shared(&self, env: &Env) -> napi::Result<Shared> {
        self.inner
            .clone()
            .ok_or_else(|| crate::task::CodedError::from(invalid!("this trainer was disposed")).into_napi(env))
    }

    #[napi(getter)]
    pub fn info(&self) -> TrainerInfo {
        self.info.clone()
    }

    /// One micro-batch of `batch` images (`[batch, S, S, 3]` bytes) and, for stage 1, their MaskGIT codes.
    #[napi(ts_return_type = "Promise<StepResult>")]
    pub fn step(
        &self,
        env: Env,
        images: Uint8Array,
        batch: u32,
        proxy_codes: Option<Int32Array>,
    ) -> napi::Result<AsyncTask<Job<(Shared, Uint8Array, Option<Int32Array>), StepResult>>> {
        let t = self.shared(&env)?;
        let reducer = self.reducer.clone();
        Ok(AsyncTask::new(Job::new((t, images, proxy_codes), move |(t, images, codes)| {
            let mut joined = reducer.lock().map_err(|_| invalid!("a previous collective on this trainer failed"))?;
            let out = match joined.as_mut() {
                Some(r) => lock(t)?.step_with(images, batch as usize, codes.as_deref(), r.as_mut())?,
                None => lock(t)?.step(images, batch as usize, codes.as_deref())?,
            };
            Ok(StepResult {
                step: out.step as f64,
                lr: out.lr,
                loss: f64::from(out.loss),
                components: components(out.components),
                grad_norm: out.grad_norm.map(f64::from),
            })
        })))
    }

    /// The first half of `step`: one micro-batch's loss, its gradients added to the accumulation, and the
    /// accumulated flat gradients at the accumulation boundary; the weights untouched.
    #[napi(ts_return_type = "Promise<GradientsResult>")]
    pub fn gradients(
        &self,
        env: Env,
        images: Uint8Array,
        batch: u32,
        proxy_codes: Option<Int32Array>,
    ) -> napi::Result<AsyncTask<Job<(Shared, Uint8Array, Option<Int32Array>), GradientsResult>>> {
        let t = self.shared(&env)?;
        Ok(AsyncTask::new(Job::new((t, images, proxy_codes), move |(t, images, codes)| {
            let mut t = lock(t)?;
            let lr = t.learning_rate();
            let (accumulated, loss, parts) = t.accumulate(images, batch as usize, codes.as_deref())?;
            let gradients = match accumulated {
                Some(grads) => Some(Float32Array::new(t.flatten_gradients(&grads)?)),
                None => None,
            };
            Ok(GradientsResult { step: t.steps() as f64, lr, loss: f64::from(loss), components: components(parts), gradients })
        })))
    }

    /// The second half of `step`: the optimizer step with accumulated gradients of `gradients`' layout (averaged
    /// across ranks by the caller).
    #[napi(ts_return_type = "Promise<UpdateResult>")]
    pub fn apply_gradients(
        &self,
        env: Env,
        flat: Float32Array,
    ) -> napi::Result<AsyncTask<Job<(Shared, Float32Array), UpdateResult>>> {
        let t = self.shared(&env)?;
        Ok(AsyncTask::new(Job::new((t, flat), |(t, flat)| {
            let mut t = lock(t)?;
            let grads = t.unflatten_gradients(flat)?;
            let out = t.update(grads, &mut SingleRank)?;
            Ok(UpdateResult {
                step: out.step as f64,
                lr: out.lr,
                grad_norm: out.grad_norm.map(f64::from),
                components: components(out.components),
            })
        })))
    }

    /// Write a checkpoint folder; `data_position_json` is kept verbatim.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn save(&self, env: Env, dir: String, data_position_json: String) -> napi::Result<AsyncTask<Job<(Shared, String, String), ()>>> {
        let t = self.shared(&env)?;
        Ok(AsyncTask::new(Job::new((t, dir, data_position_json), |(t, dir, pos)| {
            let pos = marvel_core::train::trainer::json_arg("dataPosition", pos)?;
            lock(t)?.save(Path::new(dir), pos)
        })))
    }

    /// Write a model folder of the weights, or of their EMA.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn export_model(&self, env: Env, dir: String, ema: bool) -> napi::Result<AsyncTask<Job<(Shared, String), ()>>> {
        let t = self.shared(&env)?;
        Ok(AsyncTask::new(Job::new((t, dir), move |(t, dir)| lock(t)?.export_model(Path::new(dir), ema))))
    }

    /// Reconstructions (`[batch, S, S, 3]` bytes) through the current weights (or their EMA), from the first
    /// `depth` depths.
    #[napi(ts_return_type = "Promise<Uint8Array>")]
    pub fn reconstruct(
        &self,
        env: Env,
        images: Uint8Array,
        batch: u32,
        depth: Option<u32>,
        ema: Option<bool>,
    ) -> napi::Result<AsyncTask<Job<(Shared, Uint8Array), Uint8Array>>> {
        let t = self.shared(&env)?;
        Ok(AsyncTask::new(Job::new((t, images), move |(t, images)| {
            let t = lock(t)?;
            let depth = depth.map(|d| d as usize);
            let out = if ema.unwrap_or(false) { t.reconstruct_ema(images, batch as usize, depth)? } else { t.reconstruct(images, batch as usize, depth)? };
            Ok(Uint8Array::new(out))
        })))
    }

    /// Join rank `rank` of a `world`-rank NCCL group made from rank 0's `nccl_unique_id()`; resolves once every rank
    /// has joined. Later `step` calls average the gradients on the GPUs.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn join_nccl(
        &self,
        env: Env,
        id: String,
        rank: u32,
        world: u32,
    ) -> napi::Result<AsyncTask<Job<(Shared, String), ()>>> {
        let t = self.shared(&env)?;
        let reducer = self.reducer.clone();
        Ok(AsyncTask::new(Job::new((t, id), move |(t, id)| {
            // The trainer's lock is released before the reducer's is taken: `step` takes them in the other order.
            let joined = crate::nccl::join(&*lock(t)?, id, rank as usize, world as usize)?;
            *reducer.lock().map_err(|_| invalid!("a previous collective on this trainer failed"))? = Some(joined);
            Ok(())
        })))
    }

    /// Release the trainer once calls in flight have finished. Later calls fail with a clear error.
    #[napi]
    pub fn dispose(&mut self) {
        self.inner = None;
    }
}
