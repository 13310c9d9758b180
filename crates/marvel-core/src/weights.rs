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

use std::collections::{BTreeMap, BTreeSet};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, DType, Device, Shape, Storage, Tensor, WithDType};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};

use crate::error::{MarvelError, Result};

mod pickle;
mod safetensors;

pub use pickle::{MAX_NESTING, MAX_OBJECTS};
pub use safetensors::{write_safetensors, TensorSpec};

/// Problems collected before a load gives up: a screenful, and the bound on the work a wrong config can cause.
pub const MAX_PROBLEMS: usize = 20;

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
    Safetensors(safetensors::SafetensorsFile),
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
        let st = safetensors::SafetensorsFile::open(path)?;
        let tensors = st
            .entries
            .iter()
            .map(|(name, e)| {
                let info = StoredTensor { shape: e.shape.clone(), dtype: e.dtype, dtype_name: e.dtype_name.clone() };
                (name.clone(), info)
            })
            .collect();
        Ok(Self { path: path.to_path_buf(), source: Source::Safetensors(st), tensors })
    }

    fn open_pytorch(path: &Path) -> Result<Self> {
        // Before candle builds any value: it recurses over them, and a stack overflow cannot be caught.
        pickle::check_pickles(path).map_err(|e| ckpt_err(path, e))?;
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

    /// Reads one tensor as stored (no dtype conversion); a float tensor must hold finite values only.
    pub fn load(&self, name: &str, device: &Device) -> Result<Tensor> {
        let loaded = catch_unwind(AssertUnwindSafe(|| match &self.source {
            Source::Safetensors(st) => st.read(name),
            Source::Pytorch(pth) => pth
                .get(name)
                .and_then(|t| t.ok_or_else(|| candle_core::Error::CannotFindTensor { path: name.to_string() }))
                .map_err(|e| root_cause(&e)),
        }));
        let t = match loaded {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => return Err(ckpt_err(&self.path, format!("{name}: cannot read the data: {e}"))),
            Err(p) => return Err(ckpt_err(&self.path, format!("{name}: cannot read the data ({})", panic_message(p)))),
        };
        if let Some((i, v)) = first_non_finite(&t) {
            return Err(ckpt_err(&self.path, format!("{name}: holds {v} (element {i}); the weights are corrupt")));
        }
        Ok(if device.is_cpu() { t } else { t.to_device(device)? })
    }
}

/// The first NaN or infinite element of a float CPU tensor, with its value; `None` for integer tensors.
pub fn first_non_finite(t: &Tensor) -> Option<(usize, f64)> {
    fn scan<T: WithDType>(v: &[T]) -> Option<(usize, f64)> {
        // Blocks with a branch-free test each, so the common all-finite case runs vectorised.
        const BLOCK: usize = 4096;
        v.chunks(BLOCK).enumerate().find_map(|(b, block)| {
            if block.iter().fold(true, |ok, x| ok & x.to_f64().is_finite()) {
                return None;
            }
            let i = block.iter().position(|x| !x.to_f64().is_finite())?;
            Some((b * BLOCK + i, block[i].to_f64()))
        })
    }
    let (storage, layout) = t.storage_and_layout();
    // A strided view (a column-major PyTorch tensor) owns exactly its elements: scan the whole storage.
    let contiguous = layout.contiguous_offsets().map(|(start, end)| start..end);
    let range = |len: usize| contiguous.clone().unwrap_or(0..len);
    match &*storage {
        Storage::Cpu(CpuStorage::F32(v)) => scan(&v[range(v.len())]),
        Storage::Cpu(CpuStorage::F16(v)) => scan(&v[range(v.len())]),
        Storage::Cpu(CpuStorage::BF16(v)) => scan(&v[range(v.len())]),
        Storage::Cpu(CpuStorage::F64(v)) => scan(&v[range(v.len())]),
        _ => None,
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
        let largest = ckpt.tensors.values().map(|t| t.shape.iter().product::<usize>()).max().unwrap_or(0);
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
    fn get(&self, s: Shape, name: &str, _: Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.rec.request(name, &s, dtype);
        let Some(info) = self.ckpt.tensors.get(name) else {
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

    /// For optional buffers whose shape the model checks itself (after `contains_tensor`).
    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let info = self
            .ckpt
            .tensors
            .get(name)
            .ok_or_else(|| candle_core::Error::CannotFindTensor { path: name.to_string() })?;
        self.rec.request(name, &Shape::from(info.shape.clone()), dtype);
        if !self.read_data {
            return placeholder(&Shape::from(info.shape.clone()), dtype, dev);
        }
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

/// Held by whatever owns a loaded model, after the model: when it drops, the memory the model's tensors freed is
/// handed back to the operating system.
///
/// glibc serves allocations above its mmap threshold with their own mappings, but raises that threshold to the
/// size of each such block freed (up to 32 MiB), so from a model's second load on its tensors come from the heap
/// arenas, and freeing them leaves a whole model resident in the process. `malloc_trim(0)` returns the free
/// pages of every arena. Other allocators (musl, macOS, Windows) return large blocks themselves.
#[derive(Debug, Default)]
pub struct ReturnMemoryOnDrop;

impl Drop for ReturnMemoryOnDrop {
    fn drop(&mut self) {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: malloc_trim only releases free memory; it is thread-safe in glibc.
        unsafe {
            libc::malloc_trim(0);
        }
    }
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
