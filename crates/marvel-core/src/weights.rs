//! Checkpoint loading with strict key and shape checks.
//!
//! A model is built through a `VarBuilder` whose backend records every tensor the model asks for. Against a
//! checkpoint, each request is checked (present, same shape, a compatible dtype); problems are collected rather
//! than raised one at a time, and once the model is built the file's keys that nobody asked for are listed. The
//! same recording backend without a file ([`build_shape_only`]) builds a model from zero-sized broadcast
//! placeholders, which gives its parameter list and count without allocating the weights.
//!
//! Formats: `model.safetensors` (read tensor by tensor straight into each tensor's storage, see
//! [`safetensors`]) and PyTorch's zip `pytorch_model.bin` / `.pt` / `.pth`, read by candle's pickle reader, which
//! interprets the data only and never runs code from the file, after [`pickle`] has bounded its nesting.
//!
//! Every float tensor is checked finite as it is read: NaN or infinite weights would load and silently decode
//! every image to black.
//!
//! A config that disagrees with the checkpoint must fail before it allocates anything: a mismatched or missing
//! tensor gets a placeholder only when it is no larger than the largest stored tensor (so whatever the model
//! computes from it costs no more than reading that tensor), and the build stops after [`MAX_PROBLEMS`]
//! problems, so `num_layers: 1e9` stops at the first layers the file lacks.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};

use crate::error::Result;
use crate::nn::ParamInit;

mod checkpoint;
mod pickle;
mod safetensors;

use checkpoint::ckpt_err;
pub use checkpoint::{first_non_finite, Checkpoint, StoredTensor};
pub use pickle::{MAX_NESTING, MAX_OBJECTS};
pub use safetensors::{write_safetensors, TensorSpec};

/// Problems collected before a load gives up: a screenful, and the bound on the work a wrong config can cause.
pub const MAX_PROBLEMS: usize = 20;

/// One tensor a model asked for while it was built.
#[derive(Debug, Clone, PartialEq)]
pub struct Requested {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: DType,
    /// How the layer that asked for it initialises it; `None` when it declared nothing (a plain `vb.get`) and
    /// for optional buffers read as stored.
    pub init: Option<ParamInit>,
}

#[derive(Default)]
struct Recorder {
    requested: Mutex<Vec<Requested>>,
    problems: Mutex<Vec<String>>,
}

impl Recorder {
    fn request(&self, name: &str, shape: &Shape, dtype: DType, hint: Option<Init>) {
        let init = hint.and_then(ParamInit::from_hint);
        let r = Requested { name: name.to_string(), shape: shape.dims().to_vec(), dtype, init };
        self.requested.lock().unwrap_or_else(|p| p.into_inner()).push(r);
    }

    /// Records a problem; `false` once [`MAX_PROBLEMS`] are recorded and the build should stop.
    fn problem(&self, msg: String) -> bool {
        let mut problems = self.problems.lock().unwrap_or_else(|p| p.into_inner());
        problems.push(msg);
        problems.len() < MAX_PROBLEMS
    }

    fn take(&self) -> (Vec<Requested>, Vec<String>) {
        let r = std::mem::take(&mut *self.requested.lock().unwrap_or_else(|p| p.into_inner()));
        let p = std::mem::take(&mut *self.problems.lock().unwrap_or_else(|p| p.into_inner()));
        (r, p)
    }
}

/// A zero scalar broadcast to `shape`: a tensor of the right shape that owns one element.
fn placeholder(shape: &Shape, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
    Tensor::zeros((), dtype, device)?.broadcast_as(shape.clone())
}

/// Float parameters may come from any float dtype (converted), integer buffers from any integer dtype; mixing the
/// two kinds means the file and the model disagree.
fn compatible(stored: DType, wanted: DType) -> bool {
    (stored.is_float() && wanted.is_float()) || (stored.is_int() && wanted.is_int())
}

struct CheckpointBackend {
    ckpt: Arc<Checkpoint>,
    rec: Arc<Recorder>,
    /// Element count of the largest stored tensor: the bound on a placeholder.
    largest: usize,
    /// `false` checks names, shapes and dtypes only and reads no data ([`check_strict`]).
    read_data: bool,
}

impl CheckpointBackend {
    fn new(ckpt: Arc<Checkpoint>, rec: Arc<Recorder>, read_data: bool) -> Self {
        let largest = ckpt.tensors().values().map(|t| t.shape.iter().product::<usize>()).max().unwrap_or(0);
        Self { ckpt, rec, largest, read_data }
    }

    /// After a problem: a stand-in so the build can go on and report every problem, unless the stand-in would
    /// be larger than anything in the file (a config asking for absurd sizes) or enough problems are recorded.
    fn after_problem(&self, msg: String, s: &Shape, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let go_on = self.rec.problem(msg);
        if go_on && s.elem_count() <= self.largest {
            placeholder(s, dtype, dev)
        } else {
            Err(candle_core::Error::Msg("the checkpoint does not match the model".into()))
        }
    }
}

impl SimpleBackend for CheckpointBackend {
    fn get(&self, s: Shape, name: &str, hint: Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.rec.request(name, &s, dtype, Some(hint));
        let Some(info) = self.ckpt.tensors().get(name) else {
            return self.after_problem(format!("{name}: missing (the model needs shape {:?})", s.dims()), &s, dtype, dev);
        };
        if info.shape != s.dims() {
            let msg = format!("{name}: shape {:?} in the checkpoint, the model needs {:?}", info.shape, s.dims());
            return self.after_problem(msg, &s, dtype, dev);
        }
        match info.dtype {
            Some(stored) if compatible(stored, dtype) => {}
            _ => {
                let msg = format!("{name}: stored as {}, the model needs {dtype:?}", info.dtype_name);
                return self.after_problem(msg, &s, dtype, dev);
            }
        }
        if !self.read_data {
            return placeholder(&s, dtype, dev);
        }
        match self.ckpt.load(name, dev).and_then(|t| Ok(t.to_dtype(dtype)?)) {
            Ok(t) => Ok(t),
            Err(e) => self.after_problem(e.to_string(), &s, dtype, dev),
        }
    }

    /// For optional buffers that the model checks itself (after `contains_tensor`). They are read even by a
    /// check that reads no weights: the model checks them by value (the LFQ's `codebook` and
    /// `bits_to_indices`), and a zero placeholder would fail that check.
    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let info = self
            .ckpt
            .tensors()
            .get(name)
            .ok_or_else(|| candle_core::Error::CannotFindTensor { path: name.to_string() })?;
        self.rec.request(name, &Shape::from(info.shape.clone()), dtype, None);
        self.ckpt.load(name, dev).map_err(|e| candle_core::Error::Msg(e.to_string()))?.to_dtype(dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.ckpt.tensors().contains_key(name)
    }
}

struct ShapeOnlyBackend {
    rec: Arc<Recorder>,
}

impl SimpleBackend for ShapeOnlyBackend {
    fn get(&self, s: Shape, name: &str, hint: Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.rec.request(name, &s, dtype, Some(hint));
        placeholder(&s, dtype, dev)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        Err(candle_core::Error::CannotFindTensor { path: name.to_string() })
    }

    /// Optional tensors are treated as absent: there is nothing to check them against.
    fn contains_tensor(&self, _: &str) -> bool {
        false
    }
}

/// How strict a load is.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Accept tensors in the file that the model does not use (they are listed in the report).
    pub allow_unexpected: bool,
    /// Dtype of the model's float parameters.
    pub dtype: DType,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self { allow_unexpected: false, dtype: DType::F32 }
    }
}

/// What a successful load found.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    /// Tensors the model read.
    pub used: usize,
    /// Tensors in the file that the model did not ask for (empty unless `allow_unexpected`).
    pub unexpected: Vec<String>,
}

/// Lists at most a screenful of `items`, then how many more there are.
fn summarize(items: &[String], max: usize) -> String {
    let mut out: Vec<String> = items.iter().take(max).map(|s| format!("  {s}")).collect();
    if items.len() > max {
        out.push(format!("  ... and {} more", items.len() - max));
    }
    out.join("\n")
}

/// Builds a model with `build` from the checkpoint at `path`, strictly: every tensor the model asks for must be
/// stored with the same shape and a compatible dtype, and (unless allowed) every stored tensor must be used.
pub fn load_strict<M>(
    path: impl AsRef<Path>,
    device: &Device,
    opts: &LoadOptions,
    build: impl FnOnce(VarBuilder) -> Result<M>,
) -> Result<(M, LoadReport)> {
    let ckpt = Arc::new(Checkpoint::open(path)?);
    load_strict_from(ckpt, device, opts, build)
}

/// [`load_strict`] for an already opened checkpoint.
pub fn load_strict_from<M>(
    ckpt: Arc<Checkpoint>,
    device: &Device,
    opts: &LoadOptions,
    build: impl FnOnce(VarBuilder) -> Result<M>,
) -> Result<(M, LoadReport)> {
    let (model, requested) = build_checked(&ckpt, device, opts, true, build)?;
    Ok((model, report_unused(&ckpt, &requested, opts)?))
}

/// The checks of [`load_strict_from`] against the checkpoint's table of contents alone: builds the model from
/// placeholders where every tensor is stored with the right shape and dtype, reading no data. Returns the
/// tensors the model asked for (for its parameter count) and the usage report.
pub fn check_strict<M>(
    ckpt: Arc<Checkpoint>,
    opts: &LoadOptions,
    build: impl FnOnce(VarBuilder) -> Result<M>,
) -> Result<(Vec<Requested>, LoadReport)> {
    let (_, requested) = build_checked(&ckpt, &Device::Cpu, opts, false, build)?;
    let report = report_unused(&ckpt, &requested, opts)?;
    Ok((requested, report))
}

fn build_checked<M>(
    ckpt: &Arc<Checkpoint>,
    device: &Device,
    opts: &LoadOptions,
    read_data: bool,
    build: impl FnOnce(VarBuilder) -> Result<M>,
) -> Result<(M, Vec<Requested>)> {
    let rec = Arc::new(Recorder::default());
    let backend = CheckpointBackend::new(ckpt.clone(), rec.clone(), read_data);
    let vb = VarBuilder::from_backend(Box::new(backend), opts.dtype, device.clone());
    let built = build(vb);
    let (requested, problems) = rec.take();
    if !problems.is_empty() {
        // A placeholder may also have made the build fail; the recorded problems are the cause to report.
        let more = if problems.len() >= MAX_PROBLEMS { " (stopped there)" } else { "" };
        return Err(ckpt_err(
            ckpt.path(),
            format!("{} tensor(s) do not match the model{more}:\n{}", problems.len(), summarize(&problems, MAX_PROBLEMS)),
        ));
    }
    Ok((built?, requested))
}

/// The stored tensors nobody asked for: an error unless `opts` allows them.
fn report_unused(ckpt: &Checkpoint, requested: &[Requested], opts: &LoadOptions) -> Result<LoadReport> {
    let path = ckpt.path();
    let used: BTreeSet<&str> = requested.iter().map(|r| r.name.as_str()).collect();
    let unexpected: Vec<String> = ckpt.tensors().keys().filter(|k| !used.contains(k.as_str())).cloned().collect();
    if !unexpected.is_empty() && !opts.allow_unexpected {
        return Err(ckpt_err(
            path,
            format!(
                "{} tensor(s) in the checkpoint are not used by the model:\n{}",
                unexpected.len(),
                summarize(&unexpected, 20)
            ),
        ));
    }
    Ok(LoadReport { used: used.len(), unexpected })
}

/// Builds a model without weights: every parameter is a zero broadcast from a single element, so even the
/// largest configuration costs almost no memory. Returns the model and the tensors it asked for, in order.
pub fn build_shape_only<M>(
    dtype: DType,
    device: &Device,
    build: impl FnOnce(VarBuilder) -> Result<M>,
) -> Result<(M, Vec<Requested>)> {
    let rec = Arc::new(Recorder::default());
    let vb = VarBuilder::from_backend(Box::new(ShapeOnlyBackend { rec: rec.clone() }), dtype, device.clone());
    let model = build(vb)?;
    Ok((model, rec.take().0))
}

#[cfg(test)]
mod tests;
