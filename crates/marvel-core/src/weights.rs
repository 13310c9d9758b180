//! Checkpoint loading with strict key and shape checks.
//!
//! A model is built through a `VarBuilder` whose backend records every tensor the model asks for. Against a
//! checkpoint, each request is checked (present, same shape, a compatible dtype); problems are collected rather
//! than raised one at a time, and once the model is built the file's keys that nobody asked for are listed. The
//! same recording backend without a file ([`build_shape_only`]) builds a model from zero-sized broadcast
//! placeholders, which gives its parameter list and count without allocating the weights.
//!
//! Formats: `model.safetensors` (memory-mapped) and PyTorch's zip `pytorch_model.bin` / `.pt` / `.pth`, read by
//! candle's pickle reader, which interprets the data only and never runs code from the file.

use std::collections::{BTreeMap, BTreeSet};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};

use crate::error::{MarvelError, Result};

/// Name, shape and dtype of one stored tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredTensor {
    pub shape: Vec<usize>,
    /// `None` for a dtype candle cannot represent (e.g. safetensors `BOOL`); loading it is an error.
    pub dtype: Option<DType>,
    /// The dtype as the file names it, for messages.
    pub dtype_name: String,
}

enum Source {
    Safetensors(MmapedSafetensors),
    Pytorch(candle_core::pickle::PthTensors),
}

/// An opened checkpoint: its table of contents, read and validated up front; tensor data is read on request.
pub struct Checkpoint {
    path: PathBuf,
    source: Source,
    tensors: BTreeMap<String, StoredTensor>,
}

fn ckpt_err(path: &Path, msg: impl std::fmt::Display) -> MarvelError {
    MarvelError::Checkpoint(format!("{}: {msg}", path.display()))
}

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

impl Checkpoint {
    /// Opens `path`: `.bin`, `.pt` and `.pth` as PyTorch zip checkpoints, anything else as safetensors.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let meta = std::fs::metadata(path).map_err(|e| MarvelError::io(path, e))?;
        if !meta.is_file() {
            return Err(ckpt_err(path, "not a file"));
        }
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
        match ext.as_str() {
            "bin" | "pt" | "pth" => Self::open_pytorch(path),
            _ => Self::open_safetensors(path),
        }
    }

    fn open_safetensors(path: &Path) -> Result<Self> {
        // SAFETY: the map is read-only; as with any mmap, the file must not be truncated while it is in use.
        let st = unsafe { MmapedSafetensors::new(path) }
            .map_err(|e| ckpt_err(path, format!("not a valid safetensors file: {}", root_cause(&e))))?;
        let mut tensors = BTreeMap::new();
        for (name, view) in st.tensors() {
            let dtype = DType::try_from(view.dtype()).ok();
            let info = StoredTensor { shape: view.shape().to_vec(), dtype, dtype_name: format!("{:?}", view.dtype()) };
            tensors.insert(name, info);
        }
        Ok(Self { path: path.to_path_buf(), source: Source::Safetensors(st), tensors })
    }

    fn open_pytorch(path: &Path) -> Result<Self> {
        let open = |key: Option<&str>| {
            catch_unwind(AssertUnwindSafe(|| candle_core::pickle::PthTensors::new(path, key)))
                .map_err(|p| ckpt_err(path, format!("unreadable PyTorch checkpoint ({})", panic_message(p))))?
                .map_err(|e| {
                    ckpt_err(path, format!("not a PyTorch zip checkpoint (torch.save format): {}", root_cause(&e)))
                })
        };
        let mut pth = open(None)?;
        // Training checkpoints often nest the weights one level down.
        for key in ["state_dict", "model"] {
            if pth.tensor_infos().is_empty() {
                if let Ok(nested) = open(Some(key)) {
                    pth = nested;
                }
            }
        }
        if pth.tensor_infos().is_empty() {
            return Err(ckpt_err(path, "no tensors found (expected a state dict of name -> tensor)"));
        }
        let tensors = pth
            .tensor_infos()
            .iter()
            .map(|(name, ti)| {
                let info = StoredTensor {
                    shape: ti.layout.dims().to_vec(),
                    dtype: Some(ti.dtype),
                    dtype_name: format!("{:?}", ti.dtype),
                };
                (name.clone(), info)
            })
            .collect();
        Ok(Self { path: path.to_path_buf(), source: Source::Pytorch(pth), tensors })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every stored tensor, sorted by name.
    pub fn tensors(&self) -> &BTreeMap<String, StoredTensor> {
        &self.tensors
    }

    /// Reads one tensor as stored (no dtype conversion).
    pub fn load(&self, name: &str, device: &Device) -> Result<Tensor> {
        let loaded = catch_unwind(AssertUnwindSafe(|| match &self.source {
            Source::Safetensors(st) => st.load(name, device),
            Source::Pytorch(pth) => pth
                .get(name)
                .and_then(|t| t.ok_or_else(|| candle_core::Error::CannotFindTensor { path: name.to_string() })),
        }));
        match loaded {
            Ok(Ok(t)) => Ok(t),
            Ok(Err(e)) => Err(ckpt_err(&self.path, format!("{name}: cannot read the data: {}", root_cause(&e)))),
            Err(p) => Err(ckpt_err(&self.path, format!("{name}: cannot read the data ({})", panic_message(p)))),
        }
    }
}

/// candle wraps errors in context and backtraces; the innermost message is the one that names the problem.
fn root_cause(e: &candle_core::Error) -> String {
    match e {
        candle_core::Error::WithBacktrace { inner, .. } => root_cause(inner),
        candle_core::Error::WithPath { inner, .. } => root_cause(inner),
        candle_core::Error::Context { inner, .. } => root_cause(inner),
        other => other.to_string(),
    }
}

/// One tensor a model asked for while it was built.
#[derive(Debug, Clone, PartialEq)]
pub struct Requested {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: DType,
}

#[derive(Default)]
struct Recorder {
    requested: Mutex<Vec<Requested>>,
    problems: Mutex<Vec<String>>,
}

impl Recorder {
    fn request(&self, name: &str, shape: &Shape, dtype: DType) {
        let r = Requested { name: name.to_string(), shape: shape.dims().to_vec(), dtype };
        self.requested.lock().unwrap_or_else(|p| p.into_inner()).push(r);
    }

    fn problem(&self, msg: String) {
        self.problems.lock().unwrap_or_else(|p| p.into_inner()).push(msg);
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
}

impl SimpleBackend for CheckpointBackend {
    fn get(&self, s: Shape, name: &str, _: Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.rec.request(name, &s, dtype);
        let Some(info) = self.ckpt.tensors.get(name) else {
            self.rec.problem(format!("{name}: missing (the model needs shape {:?})", s.dims()));
            return placeholder(&s, dtype, dev);
        };
        if info.shape != s.dims() {
            self.rec.problem(format!(
                "{name}: shape {:?} in the checkpoint, the model needs {:?}",
                info.shape,
                s.dims()
            ));
            return placeholder(&s, dtype, dev);
        }
        match info.dtype {
            Some(stored) if compatible(stored, dtype) => {}
            _ => {
                self.rec.problem(format!("{name}: stored as {}, the model needs {dtype:?}", info.dtype_name));
                return placeholder(&s, dtype, dev);
            }
        }
        match self.ckpt.load(name, dev).and_then(|t| Ok(t.to_dtype(dtype)?)) {
            Ok(t) => Ok(t),
            Err(e) => {
                self.rec.problem(e.to_string());
                placeholder(&s, dtype, dev)
            }
        }
    }

    /// For optional buffers whose shape the model checks itself (after `contains_tensor`).
    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let info = self
            .ckpt
            .tensors
            .get(name)
            .ok_or_else(|| candle_core::Error::CannotFindTensor { path: name.to_string() })?;
        self.rec.request(name, &Shape::from(info.shape.clone()), dtype);
        self.ckpt.load(name, dev).map_err(|e| candle_core::Error::Msg(e.to_string()))?.to_dtype(dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.ckpt.tensors.contains_key(name)
    }
}

struct ShapeOnlyBackend {
    rec: Arc<Recorder>,
}

impl SimpleBackend for ShapeOnlyBackend {
    fn get(&self, s: Shape, name: &str, _: Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.rec.request(name, &s, dtype);
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
    let rec = Arc::new(Recorder::default());
    let backend = CheckpointBackend { ckpt: ckpt.clone(), rec: rec.clone() };
    let vb = VarBuilder::from_backend(Box::new(backend), opts.dtype, device.clone());
    let built = build(vb);
    let (requested, problems) = rec.take();
    let path = ckpt.path();
    if !problems.is_empty() {
        // A placeholder may also have made the build fail; the recorded problems are the cause to report.
        return Err(ckpt_err(
            path,
            format!("{} tensor(s) do not match the model:\n{}", problems.len(), summarize(&problems, 20)),
        ));
    }
    let model = built?;
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
    Ok((model, LoadReport { used: used.len(), unexpected }))
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
