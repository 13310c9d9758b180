//! AdamW as the reference sets it up: `create_optimizer` (utils/train_utils.py) splits the parameters into a
//! weight-decay group and a no-decay group and hands both to `torch.optim.AdamW` (betas and lr from the yaml,
//! eps left at torch's 1e-8). candle's own AdamW keeps its moments private, so a checkpoint could not hold them.
//!
//! One step of torch's single-tensor AdamW (the CPU default), per parameter with a gradient, float32 tensors and
//! python-double scalars (a scalar meets a float32 tensor as its float32 value):
//! 1. t += 1
//! 2. p = p * (1 - lr * wd)                                  decoupled decay, before the Adam update; wd of the group
//! 3. m = fma(1 - beta1, g - m, m)                           `lerp_`
//! 4. v = fma((1 - beta2) * g, g, v * beta2)                 `mul_` then `addcmul_`
//! 5. denom = sqrt(v) / sqrt(1 - beta2^t) + eps              a true division by the float32 scalar
//! 6. p = p + ((-lr / (1 - beta1^t)) * m) / denom            `addcdiv_`
//!
//! Each line is computed here in the same float32 order. torch's SIMD kernels round steps 3 and 4 once (lerp
//! calls fmadd; GCC contracts addcmul's multiply-add), and so does `f32::mul_add` here: with two roundings m and
//! v would differ from the reference fixture in the last bit at about half and a quarter of the values. Against
//! the fixture the moments agree bit for bit; about 0.2% of the parameters still differ by an ulp, where sqrt(v)
//! lies within 0.03 ulp of a rounding midpoint and the reference machine's SIMD sqrt rounded the other way
//! (Rust's is correctly rounded). The step count is exact here up to 2^64; torch keeps it in a float32 tensor,
//! exact up to 2^24 steps.
//!
//! The update is one fused loop over each parameter's storage, its moments and its gradient, in place (the
//! parameter's `Var` storage, which the model shares), in parallel over fixed chunks: no tensor is allocated per
//! step. The moment tensors are the optimizer's own; [`AdamW::moments`] and [`AdamW::state`] hand out tensors
//! that share their storage, so a copy taken for later must be `copy()`d before the next step.
//!
//! Parameters without a gradient in a step are skipped, their moments and step count untouched, as PyTorch
//! skips `grad is None`. The state exports as named tensors (`exp_avg.<name>`, `exp_avg_sq.<name>`, `step.<name>`)
//! for `optimizer.safetensors`; loading it into an optimizer over the same parameters continues bit for bit.

use std::collections::HashMap;

use candle_core::{DType, Tensor, Var};
use rayon::prelude::*;

use crate::error::{MarvelError, Result};
use crate::train::ema::read_count;
use crate::train::grads::Gradients;
use crate::train::raw::{self, CHUNK};

/// create_optimizer's no-decay rule: `p.ndim < 2` or any of these substrings in the full parameter name. The
/// tests are substring tests, so e.g. `decoder.decoder_embed.weight` (a 2-D Linear weight) and
/// `encoder.patch_embed.weight` (a 4-D conv weight) get no decay, and so does anything containing "ln".
pub const NO_DECAY_SUBSTRINGS: [&str; 8] =
    ["ln", "bias", "latent_tokens", "mask_token", "embedding", "norm", "gamma", "embed"];

/// Whether the reference puts the parameter `name` of this shape in the no-decay group (weight_decay 0).
pub fn excluded_from_weight_decay(name: &str, shape: &[usize]) -> bool {
    shape.len() < 2 || NO_DECAY_SUBSTRINGS.iter().any(|s| name.contains(s))
}

/// The yaml's `optimizer.params` (learning_rate, beta1, beta2, weight_decay, epsilon).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    pub learning_rate: f64,
    pub beta1: f64,
    pub beta2: f64,
    /// The decay group's weight decay; the no-decay group always has 0.
    pub weight_decay: f64,
    pub epsilon: f64,
}

impl AdamWConfig {
    /// torch.optim.AdamW's argument checks, with the value named.
    fn validate(&self) -> Result<()> {
        let check = |ok: bool, what: &str, v: f64| {
            if ok {
                Ok(())
            } else {
                Err(MarvelError::InvalidArgument(format!("AdamW {what}, got {v}")))
            }
        };
        check(valid_lr(self.learning_rate), "learning_rate must be a number >= 0", self.learning_rate)?;
        check((0.0..1.0).contains(&self.beta1), "beta1 must lie in [0, 1)", self.beta1)?;
        check((0.0..1.0).contains(&self.beta2), "beta2 must lie in [0, 1)", self.beta2)?;
        let wd = self.weight_decay;
        check(wd.is_finite() && wd >= 0.0, "weight_decay must be a number >= 0", wd)?;
        check(self.epsilon.is_finite() && self.epsilon >= 0.0, "epsilon must be a number >= 0", self.epsilon)
    }
}

fn valid_lr(lr: f64) -> bool {
    lr.is_finite() && lr >= 0.0
}

#[derive(Debug)]
struct Moments {
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    step: u64,
}

#[derive(Debug)]
struct Param {
    name: String,
    var: Var,
    weight_decay: f64,
    /// None until the parameter's first gradient (torch creates the state lazily too).
    moments: Option<Moments>,
}

#[derive(Debug)]
pub struct AdamW {
    config: AdamWConfig,
    params: Vec<Param>,
    index: HashMap<String, usize>,
}

impl AdamW {
    /// An optimizer over the trainable parameters `params` (float32), each put in its group by
    /// [`excluded_from_weight_decay`].
    pub fn new(config: AdamWConfig, params: Vec<(String, Var)>) -> Result<Self> {
        config.validate()?;
        let mut index = HashMap::new();
        let mut out = Vec::with_capacity(params.len());
        for (name, var) in params {
            if var.dtype() != DType::F32 {
                return Err(MarvelError::InvalidArgument(format!(
                    "AdamW parameter `{name}`: float32 parameters only, got {:?}",
                    var.dtype()
                )));
            }
            if !var.is_contiguous() {
                return Err(MarvelError::InvalidArgument(format!(
                    "AdamW parameter `{name}`: the optimizer updates contiguous parameters in place, this one is strided"
                )));
            }
            if index.insert(name.clone(), out.len()).is_some() {
                return Err(MarvelError::InvalidArgument(format!("parameter `{name}` given twice")));
            }
            let weight_decay = if excluded_from_weight_decay(&name, var.dims()) { 0.0 } else { config.weight_decay };
            out.push(Param { name, var, weight_decay, moments: None });
        }
        Ok(Self { config, params: out, index })
    }

    pub fn learning_rate(&self) -> f64 {
        self.config.learning_rate
    }

    /// Sets the learning rate of both groups, as the scheduler does before each step.
    pub fn set_learning_rate(&mut self, lr: f64) -> Result<()> {
        if !valid_lr(lr) {
            return Err(MarvelError::InvalidArgument(format!("learning rate must be a number >= 0, got {lr}")));
        }
        self.config.learning_rate = lr;
        Ok(())
    }

    /// The weight decay of `name`'s group, or None if the optimizer does not hold `name`.
    pub fn weight_decay_of(&self, name: &str) -> Option<f64> {
        self.index.get(name).map(|&i| self.params[i].weight_decay)
    }

    /// `exp_avg`, `exp_avg_sq` and the step count of `name`, once it has had a gradient.
    pub fn moments(&self, name: &str) -> Option<(&Tensor, &Tensor, u64)> {
        let m = self.params[*self.index.get(name)?].moments.as_ref()?;
        Some((&m.exp_avg, &m.exp_avg_sq, m.step))
    }

    /// One update of every parameter that has a gradient in `grads`. All gradients are checked (known name,
    /// shape, float32) before any parameter changes.
    pub fn step(&mut self, grads: &Gradients) -> Result<()> {
        let mut problems = Vec::new();
        for (name, g) in grads.iter() {
            match self.index.get(name) {
                None => problems.push(format!("`{name}` is not a parameter of this optimizer")),
                Some(&i) if g.dims() != self.params[i].var.dims() || g.dtype() != DType::F32 => {
                    let p = &self.params[i].var;
                    problems.push(format!(
                        "gradient of `{name}` is {:?} {:?}, the parameter F32 {:?}",
                        g.dtype(),
                        g.dims(),
                        p.dims()
                    ))
                }
                Some(_) => {}
            }
        }
        if !problems.is_empty() {
            return Err(MarvelError::ShapeMismatch(format!("AdamW step: {}", problems.join("; "))));
        }
        for (name, g) in grads.iter() {
            let i = self.index[name];
            update(&mut self.params[i], &g.contiguous()?, &self.config)?;
        }
        Ok(())
    }

    /// The state to checkpoint, in parameter order; parameters that have not had a gradient yet have none.
    pub fn state(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::new();
        for p in &self.params {
            if let Some(m) = &p.moments {
                out.push((format!("exp_avg.{}", p.name), m.exp_avg.clone()));
                out.push((format!("exp_avg_sq.{}", p.name), m.exp_avg_sq.clone()));
                out.push((format!("step.{}", p.name), Tensor::new(&[m.step as i64], m.exp_avg.device())?));
            }
        }
        Ok(out)
    }

    /// Restores a state written by [`AdamW::state`] for the same parameters (the parameter values themselves
    /// come from the model checkpoint). On any problem nothing changes and the error lists every problem.
    pub fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        let mut parts: Vec<[Option<&Tensor>; 3]> = vec![[None; 3]; self.params.len()];
        let mut problems = Vec::new();
        for (key, t) in state {
            let Some((slot, name)) = ["exp_avg.", "exp_avg_sq.", "step."]
                .iter()
                .enumerate()
                .find_map(|(slot, prefix)| Some((slot, key.strip_prefix(prefix)?)))
            else {
                problems.push(format!("unexpected tensor `{key}`"));
                continue;
            };
            match self.index.get(name) {
                Some(&i) => parts[i][slot] = Some(t),
                None => problems.push(format!("`{key}` names no parameter of this optimizer")),
            }
        }
        let mut restored = Vec::with_capacity(self.params.len());
        for (p, [m, v, step]) in self.params.iter().zip(parts) {
            restored.push(match (m, v, step) {
                (None, None, None) => None,
                (Some(m), Some(v), Some(step)) => {
                    let dims = p.var.dims();
                    let mut ok = true;
                    for (what, t) in [("exp_avg", m), ("exp_avg_sq", v)] {
                        if t.dims() != dims || t.dtype() != DType::F32 {
                            let (dt, td) = (t.dtype(), t.dims());
                            problems.push(format!("`{what}.{}` is {dt:?} {td:?}, expected F32 {dims:?}", p.name));
                            ok = false;
                        }
                    }
                    let count = read_count(step).filter(|&s| s >= 1);
                    if count.is_none() {
                        let (dt, td) = (step.dtype(), step.dims());
                        problems.push(format!("`step.{}` must be one I64 value >= 1, got {dt:?} {td:?}", p.name));
                    }
                    match (ok, count) {
                        (true, Some(step)) => {
                            let dev = p.var.device();
                            let exp_avg = m.to_device(dev)?.detach().contiguous()?.copy()?;
                            let exp_avg_sq = v.to_device(dev)?.detach().contiguous()?.copy()?;
                            Some(Moments { exp_avg, exp_avg_sq, step })
                        }
                        _ => None,
                    }
                }
                _ => {
                    problems.push(format!("`{}` needs all of exp_avg, exp_avg_sq and step, or none", p.name));
                    None
                }
            });
        }
        if !problems.is_empty() {
            return Err(MarvelError::Checkpoint(format!("AdamW state: {}", problems.join("; "))));
        }
        for (p, moments) in self.params.iter_mut().zip(restored) {
            p.moments = moments;
        }
        Ok(())
    }
}

/// Steps 2-6 of the module comment as float32 scalars, for one parameter at step t.
#[derive(Debug, Clone, Copy)]
struct StepScalars {
    /// 1 - lr * wd (1 in the no-decay group: p * 1 is p).
    decay: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    bias_correction2_sqrt: f32,
    eps: f32,
    /// -lr / (1 - beta1^t)
    neg_step_size: f32,
}

impl StepScalars {
    fn new(c: &AdamWConfig, weight_decay: f64, t: u64) -> Self {
        let (lr, t) = (c.learning_rate, t as f64);
        Self {
            decay: (1.0 - lr * weight_decay) as f32,
            one_minus_beta1: (1.0 - c.beta1) as f32,
            beta2: c.beta2 as f32,
            one_minus_beta2: (1.0 - c.beta2) as f32,
            bias_correction2_sqrt: (1.0 - c.beta2.powf(t)).sqrt() as f32,
            eps: c.epsilon as f32,
            neg_step_size: (-lr / (1.0 - c.beta1.powf(t))) as f32,
        }
    }
}

/// Steps 1-6 of the module comment for one parameter, in place over its storage and its moments.
fn update(p: &mut Param, g: &Tensor, c: &AdamWConfig) -> Result<()> {
    let moments = match &mut p.moments {
        Some(m) => m,
        slot => slot.insert(Moments { exp_avg: g.zeros_like()?, exp_avg_sq: g.zeros_like()?, step: 0 }),
    };
    let s = StepScalars::new(c, p.weight_decay, moments.step + 1);
    let (exp_avg, exp_avg_sq, param) = (&moments.exp_avg, &moments.exp_avg_sq, p.var.as_tensor());
    raw::with_mut("exp_avg", exp_avg, |m| {
        raw::with_mut("exp_avg_sq", exp_avg_sq, |v| {
            raw::with_mut_src("AdamW parameter", param, g, |p, g| adamw(p, m, v, g, &s))
        })
        .and_then(|r| r)
    })
    .and_then(|r| r)
    .map_err(|e| MarvelError::InvalidArgument(format!("AdamW step of `{}`: {e}", p.name)))?;
    moments.step += 1;
    Ok(())
}

fn adamw(p: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32], s: &StepScalars) {
    p.par_chunks_mut(CHUNK)
        .zip(m.par_chunks_mut(CHUNK))
        .zip(v.par_chunks_mut(CHUNK))
        .zip(g.par_chunks(CHUNK))
        .for_each(|(((p, m), v), g)| adamw_chunk(p, m, v, g, s));
}

crate::nn::kernels::dispatch! {
    /// One chunk of the AdamW step. Per SIMD level, so that `mul_add` is one instruction, not a libm call, and the
    /// loop vectorises; the results are the same bits at every level (mul_add, sqrt and division are correctly
    /// rounded either way).
    fn adamw_chunk(p: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32], s: &StepScalars) {
        for (((p, m), v), &g) in p.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()).zip(g) {
            let theta = *p * s.decay;
            *m = s.one_minus_beta1.mul_add(g - *m, *m);
            *v = (g * s.one_minus_beta2).mul_add(g, *v * s.beta2);
            let denom = v.sqrt() / s.bias_correction2_sqrt + s.eps;
            *p = theta + (*m * s.neg_step_size) / denom;
        }
    }
}

#[cfg(test)]
#[path = "optim_tests.rs"]
mod tests;
