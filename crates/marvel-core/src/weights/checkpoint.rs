//! An opened checkpoint file: its table of contents, read and validated up front, and each tensor read on
//! request, checked finite.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use candle_core::{CpuStorage, DType, Device, Storage, Tensor, WithDType};

use super::{pickle, safetensors};
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
    Safetensors(safetensors::SafetensorsFile),
    Pytorch(candle_core::pickle::PthTensors),
}

/// An opened checkpoint: its table of contents, read and validated up front; tensor data is read on request.
pub struct Checkpoint {
    path: PathBuf,
    source: Source,
    tensors: BTreeMap<String, StoredTensor>,
}

pub(super) fn ckpt_err(path: &Path, msg: impl std::fmt::Display) -> MarvelError {
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
        let storages = pickle::check_archive(path).map_err(|e| ckpt_err(path, e))?;
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
        // candle allocates a tensor from its shape before reading its storage: a shape larger than the storage
        // would ask for memory the file cannot fill.
        let mut short: Vec<String> = pth
            .tensor_infos()
            .iter()
            .filter_map(|(name, ti)| {
                let needed = ti.layout.dims().iter().try_fold(ti.dtype.size_in_bytes() as u64, |a, &d| a.checked_mul(d as u64));
                let needed = needed.and_then(|n| n.checked_add(ti.layout.start_offset() as u64));
                let held = storages.get(&ti.path).copied().unwrap_or(0);
                match needed {
                    Some(n) if n <= held => None,
                    _ => Some(format!(
                        "{name}: shape {:?} of {:?} needs more than the {held} bytes of its storage {}",
                        ti.layout.dims(),
                        ti.dtype,
                        ti.path
                    )),
                }
            })
            .collect();
        if !short.is_empty() {
            short.sort();
            return Err(ckpt_err(path, format!("tensor(s) larger than their data:\n  {}", short.join("\n  "))));
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
