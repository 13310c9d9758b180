//! Exponential moving average of the weights: the reference's `EMAModel` (modeling/modules/ema_model.py),
//! stepped once per optimizer step after the update (`ema_model.step(model.parameters())`).
//!
//! Decay at optimization step t (counted by the EMA itself, 1 at the first call):
//! s = max(0, t - update_after_step - 1); decay = 0 when s <= 0, else (1 + s) / (10 + s), or with
//! use_ema_warmup 1 - (1 + s / inv_gamma)^-power; then min(decay, `decay`) and max(., min_decay). With the
//! reference's settings (decay 0.999, nothing else set) that is 0, 2/11, 3/12, ..., reaching 0.999 at step 8991.
//! The update is float32: shadow = shadow - (1 - decay) * (shadow - p), 1 - decay computed in double and rounded
//! to float32 (a python float times a tensor); the first step (decay 0) makes shadow = p up to the last bit.
//! Parameters that do not train (requires_grad false) are copied instead. The shadows are the EMA's own tensors,
//! updated in place (one fused loop per parameter, no tensor allocated per step); [`Ema::shadow`] and
//! [`Ema::state`] hand out tensors sharing their storage, to be `copy()`d if kept past the next update. With update_every k the update (and the
//! decay's computation) happens only at t = 1, 1 + k, 1 + 2k, ..., while t counts every call.

use std::collections::HashMap;

use candle_core::{DType, Tensor, Var};

use rayon::prelude::*;

use crate::error::{MarvelError, Result};
use crate::train::raw::{self, owned_copy, CHUNK};

/// `EMAModel`'s constructor arguments, with the reference's defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EmaConfig {
    pub decay: f64,
    pub min_decay: f64,
    pub update_after_step: u64,
    pub update_every: u64,
    pub use_ema_warmup: bool,
    pub inv_gamma: f64,
    pub power: f64,
}

impl Default for EmaConfig {
    fn default() -> Self {
        Self {
            decay: 0.9999,
            min_decay: 0.0,
            update_after_step: 0,
            update_every: 1,
            use_ema_warmup: false,
            inv_gamma: 1.0,
            power: 2.0 / 3.0,
        }
    }
}

impl EmaConfig {
    /// The reference training setup: `EMAModel(model.parameters(), decay=0.999)`.
    pub fn reference() -> Self {
        Self { decay: 0.999, ..Self::default() }
    }

    /// `get_decay(optimization_step)`.
    pub fn decay_at(&self, optimization_step: u64) -> f64 {
        let s = optimization_step.saturating_sub(self.update_after_step).saturating_sub(1);
        if s == 0 {
            return 0.0;
        }
        let s = s as f64;
        let decay = if self.use_ema_warmup {
            1.0 - (1.0 + s / self.inv_gamma).powf(-self.power)
        } else {
            (1.0 + s) / (10.0 + s)
        };
        decay.min(self.decay).max(self.min_decay)
    }

    fn validate(&self) -> Result<()> {
        let unit = |x: f64| (0.0..=1.0).contains(&x);
        if !unit(self.decay) || !unit(self.min_decay) {
            return Err(MarvelError::InvalidArgument(format!(
                "EMA decay and min_decay must lie in [0, 1], got {} and {}",
                self.decay, self.min_decay
            )));
        }
        if self.update_every == 0 {
            return Err(MarvelError::InvalidArgument("EMA update_every must be at least 1, got 0".into()));
        }
        if self.use_ema_warmup && !(self.inv_gamma > 0.0 && self.power.is_finite()) {
            return Err(MarvelError::InvalidArgument(format!(
                "EMA warm-up needs inv_gamma > 0 and a finite power, got {} and {}",
                self.inv_gamma, self.power
            )));
        }
        Ok(())
    }
}

#[derive(Debug)]
struct Shadow {
    name: String,
    value: Tensor,
    trainable: bool,
}

#[derive(Debug)]
pub struct Ema {
    config: EmaConfig,
    optimization_step: u64,
    shadows: Vec<Shadow>,
    index: HashMap<String, usize>,
}


impl Ema {
    /// Shadows start as copies of `params` (all of the model's parameters, in order); `trainable(name)` says
    /// which of them train (the others are copied at each step).
    pub fn new(config: EmaConfig, params: &[(String, Var)], trainable: impl Fn(&str) -> bool) -> Result<Self> {
        config.validate()?;
        let mut shadows = Vec::with_capacity(params.len());
        let mut index = HashMap::new();
        for (name, var) in params {
            if var.dtype() != DType::F32 {
                return Err(MarvelError::InvalidArgument(format!(
                    "EMA of `{name}`: float32 parameters only, got {:?}",
                    var.dtype()
                )));
            }
            if index.insert(name.clone(), shadows.len()).is_some() {
                return Err(MarvelError::InvalidArgument(format!("parameter `{name}` given twice")));
            }
            shadows.push(Shadow { name: name.clone(), value: owned_copy(var.as_tensor())?, trainable: trainable(name) });
        }
        Ok(Self { config, optimization_step: 0, shadows, index })
    }

    pub fn config(&self) -> &EmaConfig {
        &self.config
    }

    /// Calls to [`Ema::update`] so far.
    pub fn optimization_step(&self) -> u64 {
        self.optimization_step
    }

    pub fn shadow(&self, name: &str) -> Option<&Tensor> {
        self.index.get(name).map(|&i| &self.shadows[i].value)
    }

    /// Moves the shadows towards `params` (the same names and shapes as at construction, any order). Returns
    /// the decay used, or `None` when update_every skipped this step.
    pub fn update(&mut self, params: &[(String, Var)]) -> Result<Option<f64>> {
        let current = self.check_params(params)?;
        self.optimization_step += 1;
        if !(self.optimization_step - 1).is_multiple_of(self.config.update_every) {
            return Ok(None);
        }
        let decay = self.config.decay_at(self.optimization_step);
        let one_minus_decay = (1.0 - decay) as f32;
        for (shadow, p) in self.shadows.iter().zip(current) {
            let p = p.contiguous()?;
            raw::with_mut_src("EMA shadow", &shadow.value, &p, |s, p| {
                s.par_chunks_mut(CHUNK).zip(p.par_chunks(CHUNK)).for_each(|(s, p)| {
                    if shadow.trainable {
                        // torch: s_param.sub_(one_minus_decay * (s_param - param)), two roundings.
                        s.iter_mut().zip(p).for_each(|(s, &p)| *s -= (*s - p) * one_minus_decay);
                    } else {
                        s.copy_from_slice(p);
                    }
                })
            })
            .map_err(|e| MarvelError::InvalidArgument(format!("EMA update of `{}`: {e}", shadow.name)))?;
        }
        Ok(Some(decay))
    }

    /// The current values of `params` in shadow order, after checking that they are exactly the shadowed ones.
    fn check_params(&self, params: &[(String, Var)]) -> Result<Vec<Tensor>> {
        let mut current: Vec<Option<Tensor>> = vec![None; self.shadows.len()];
        let mut seen = vec![false; self.shadows.len()];
        let mut problems = Vec::new();
        for (name, var) in params {
            let Some(&i) = self.index.get(name) else {
                problems.push(format!("`{name}` is not a shadowed parameter"));
                continue;
            };
            seen[i] = true;
            if var.dims() != self.shadows[i].value.dims() {
                let want = self.shadows[i].value.dims();
                problems.push(format!("`{name}` has shape {:?}, its shadow {want:?}", var.dims()));
                continue;
            }
            current[i] = Some(var.as_tensor().detach());
        }
        for (seen, shadow) in seen.iter().zip(&self.shadows) {
            if !seen {
                problems.push(format!("`{}` is missing", shadow.name));
            }
        }
        if !problems.is_empty() {
            return Err(MarvelError::ShapeMismatch(format!("EMA update: {}", problems.join("; "))));
        }
        Ok(current.into_iter().map(|t| t.expect("every slot checked above")).collect())
    }

    /// The state to checkpoint: `shadow.<name>` per parameter and `optimization_step` (I64, one value).
    pub fn state(&self) -> Result<Vec<(String, Tensor)>> {
        let device = self.shadows.first().map(|s| s.value.device().clone()).unwrap_or(candle_core::Device::Cpu);
        let mut out: Vec<(String, Tensor)> =
            self.shadows.iter().map(|s| (format!("shadow.{}", s.name), s.value.clone())).collect();
        out.push(("optimization_step".into(), Tensor::new(&[self.optimization_step as i64], &device)?));
        Ok(out)
    }

    /// Restores a state written by [`Ema::state`] for the same parameters; on any problem nothing changes and
    /// the error lists every problem found.
    pub fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        let mut problems = Vec::new();
        let mut values: Vec<Option<Tensor>> = vec![None; self.shadows.len()];
        let mut seen = vec![false; self.shadows.len()];
        for (key, t) in state {
            if key == "optimization_step" {
                continue;
            }
            let Some(&i) = key.strip_prefix("shadow.").and_then(|n| self.index.get(n)) else {
                problems.push(format!("unexpected tensor `{key}`"));
                continue;
            };
            seen[i] = true;
            let want = self.shadows[i].value.dims();
            if t.dims() != want || t.dtype() != DType::F32 {
                problems.push(format!("`{key}` is {:?} {:?}, expected F32 {want:?}", t.dtype(), t.dims()));
                continue;
            }
            values[i] = Some(t.to_device(self.shadows[i].value.device())?);
        }
        for (seen, s) in seen.iter().zip(&self.shadows) {
            if !seen {
                problems.push(format!("`shadow.{}` is missing", s.name));
            }
        }
        let step = match state.get("optimization_step") {
            None => {
                problems.push("`optimization_step` is missing".into());
                None
            }
            Some(t) => match read_count(t) {
                Some(step) => Some(step),
                None => {
                    let (dt, td) = (t.dtype(), t.dims());
                    problems.push(format!("`optimization_step` must be one I64 value >= 0, got {dt:?} {td:?}"));
                    None
                }
            },
        };
        if !problems.is_empty() {
            return Err(MarvelError::Checkpoint(format!("EMA state: {}", problems.join("; "))));
        }
        for (shadow, v) in self.shadows.iter_mut().zip(values) {
            shadow.value = owned_copy(&v.expect("every shadow checked above"))?;
        }
        self.optimization_step = step.expect("checked above");
        Ok(())
    }
}

/// A step counter stored as a one-element I64 tensor (any shape with one element), if it is one and >= 0.
pub(crate) fn read_count(t: &Tensor) -> Option<u64> {
    if t.dtype() != DType::I64 || t.elem_count() != 1 {
        return None;
    }
    let v = t.flatten_all().ok()?.to_vec1::<i64>().ok()?[0];
    u64::try_from(v).ok()
}

#[cfg(test)]
#[path = "ema_tests.rs"]
mod tests;
