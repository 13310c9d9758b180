//! The safetensors format (an 8-byte little-endian header length, a JSON table of contents, then the raw
//! little-endian data), read and written here rather than through candle for the sake of memory:
//!
//! - Reading: each tensor is read with `pread` straight into the buffer that becomes its storage. A memory map
//!   (candle's `MmapedSafetensors`) would be copied into that buffer anyway, and the file pages it touched stay
//!   counted in the process's resident memory, so a loaded model cost twice its weights.
//! - Writing: the table of contents is computed from names, shapes and dtypes alone and each tensor's bytes are
//!   written as it is produced, so a converted or freshly initialised model never needs all its tensors in memory
//!   at once. The file is created with `File::create` (mode 0666 less the umask, like every other file the
//!   library writes); the `safetensors` crate behind `candle_core::safetensors::save` writes a 0600 temporary file
//!   and renames it.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use candle_core::{CpuStorage, DType, Device, Storage, Tensor};
use serde_json::{Map, Value};

use crate::error::{MarvelError, Result};

/// The safetensors crate's own bound on the header: a larger one is not a checkpoint.
const MAX_HEADER_BYTES: u64 = 100_000_000;

/// One entry of the table of contents.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub shape: Vec<usize>,
    /// `None` for a dtype candle cannot represent (e.g. `BOOL`).
    pub dtype: Option<DType>,
    pub dtype_name: String,
    /// Byte range within the data section.
    pub begin: u64,
    pub end: u64,
}

/// An open safetensors file: its validated table of contents; data is read on request.
pub(crate) struct SafetensorsFile {
    file: File,
    data_start: u64,
    pub entries: BTreeMap<String, Entry>,
}

fn dtype_from_name(name: &str) -> Option<DType> {
    Some(match name {
        "U8" => DType::U8,
        "U32" => DType::U32,
        "I16" => DType::I16,
        "I32" => DType::I32,
        "I64" => DType::I64,
        "BF16" => DType::BF16,
        "F16" => DType::F16,
        "F32" => DType::F32,
        "F64" => DType::F64,
        _ => return None,
    })
}

fn dtype_name(dtype: DType) -> Result<&'static str> {
    Ok(match dtype {
        DType::U8 => "U8",
        DType::U32 => "U32",
        DType::I16 => "I16",
        DType::I32 => "I32",
        DType::I64 => "I64",
        DType::BF16 => "BF16",
        DType::F16 => "F16",
        DType::F32 => "F32",
        DType::F64 => "F64",
        other => return Err(MarvelError::InvalidArgument(format!("cannot write {other:?} tensors to safetensors"))),
    })
}

/// Bytes per element of every dtype the format defines, so sizes are checked even for dtypes candle lacks.
fn element_bytes(name: &str) -> Option<u64> {
    Some(match name {
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" | "F8_E8M0" => 1,
        "I16" | "U16" | "F16" | "BF16" => 2,
        "I32" | "U32" | "F32" => 4,
        "I64" | "U64" | "F64" | "C64" => 8,
        _ => return None,
    })
}

fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
    }
    #[cfg(windows)]
    {
        let (mut done, mut buf) = (0u64, buf);
        while !buf.is_empty() {
            match std::os::windows::fs::FileExt::seek_read(file, buf, offset + done)? {
                0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                n => {
                    buf = &mut buf[n..];
                    done += n as u64;
                }
            }
        }
        Ok(())
    }
}

impl SafetensorsFile {
    /// Reads and checks the table of contents: every entry has a known dtype size, a shape whose byte size
    /// matches its range, and a range inside the file that overlaps no other.
    pub fn open(path: &Path) -> Result<Self> {
        let bad = |msg: String| MarvelError::Checkpoint(format!("{}: not a valid safetensors file: {msg}", path.display()));
        let file = File::open(path).map_err(|e| MarvelError::io(path, e))?;
        let file_len = file.metadata().map_err(|e| MarvelError::io(path, e))?.len();
        let mut len_bytes = [0u8; 8];
        read_exact_at(&file, &mut len_bytes, 0).map_err(|_| bad("shorter than the 8-byte header length".into()))?;
        let header_len = u64::from_le_bytes(len_bytes);
        if header_len > MAX_HEADER_BYTES || 8 + header_len > file_len {
            return Err(bad(format!("header length {header_len} does not fit a {file_len}-byte file")));
        }
        let mut header = vec![0u8; header_len as usize];
        read_exact_at(&file, &mut header, 8).map_err(|e| MarvelError::io(path, e))?;
        let toc: Map<String, Value> =
            serde_json::from_slice(&header).map_err(|e| bad(format!("header is not a JSON object: {e}")))?;
        let data_len = file_len - 8 - header_len;
        let mut entries = BTreeMap::new();
        for (name, info) in toc {
            if name == "__metadata__" {
                continue;
            }
            let entry = parse_entry(&info).map_err(|msg| bad(format!("{name}: {msg}")))?;
            if entry.end > data_len {
                return Err(bad(format!("{name}: data ends at byte {} of a {data_len}-byte data section", entry.end)));
            }
            entries.insert(name, entry);
        }
        let mut ranges: Vec<(&String, &Entry)> = entries.iter().collect();
        ranges.sort_by_key(|(_, e)| (e.begin, e.end));
        for pair in ranges.windows(2) {
            let ((a, ea), (b, eb)) = (pair[0], pair[1]);
            if eb.begin < ea.end {
                return Err(bad(format!("the data of {a} and {b} overlap")));
            }
        }
        Ok(Self { file, data_start: 8 + header_len, entries })
    }

    /// Reads one tensor as stored, into CPU memory. f32 data is read directly into the tensor's storage; other
    /// dtypes pass through one byte buffer of the tensor's size.
    pub fn read(&self, name: &str) -> std::result::Result<Tensor, String> {
        let e = self.entries.get(name).ok_or_else(|| "not in the file".to_string())?;
        let dtype = e.dtype.ok_or_else(|| format!("dtype {} is not supported", e.dtype_name))?;
        let offset = self.data_start + e.begin;
        let len = (e.end - e.begin) as usize;
        let io = |err: std::io::Error| format!("cannot read the data: {err}");
        let tensor = if dtype == DType::F32 {
            let mut values = vec![0f32; len / 4];
            // SAFETY: every bit pattern is a valid f32, and the byte view covers exactly the vector's elements.
            let bytes = unsafe { std::slice::from_raw_parts_mut(values.as_mut_ptr().cast::<u8>(), len) };
            read_exact_at(&self.file, bytes, offset).map_err(io)?;
            Tensor::from_vec(values, e.shape.as_slice(), &Device::Cpu)
        } else {
            let mut bytes = vec![0u8; len];
            read_exact_at(&self.file, &mut bytes, offset).map_err(io)?;
            Tensor::from_raw_buffer(&bytes, dtype, &e.shape, &Device::Cpu)
        };
        tensor.map_err(|err| err.to_string())
    }
}

fn parse_entry(info: &Value) -> std::result::Result<Entry, String> {
    let dtype_name = info.get("dtype").and_then(Value::as_str).ok_or("no dtype")?.to_string();
    let size = element_bytes(&dtype_name).ok_or_else(|| format!("unknown dtype {dtype_name}"))?;
    let shape: Vec<usize> = info
        .get("shape")
        .and_then(Value::as_array)
        .ok_or("no shape")?
        .iter()
        .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()).ok_or("a dimension is not a size"))
        .collect::<std::result::Result<_, _>>()?;
    let offsets: Option<Vec<u64>> =
        info.get("data_offsets").and_then(Value::as_array).map(|v| v.iter().map(Value::as_u64).collect::<Option<_>>())
            .ok_or("no data_offsets")?;
    let Some([begin, end]) = offsets.as_deref().and_then(|o| <[u64; 2]>::try_from(o).ok()) else {
        return Err("data_offsets is not two byte offsets".into());
    };
    let bytes = shape.iter().try_fold(size, |acc, &d| acc.checked_mul(d as u64)).ok_or("its size overflows")?;
    if end < begin || end - begin != bytes {
        return Err(format!("shape {shape:?} of {dtype_name} is {bytes} bytes, data_offsets [{begin}, {end}] hold {}",
            end.saturating_sub(begin)));
    }
    Ok(Entry { shape, dtype: dtype_from_name(&dtype_name), dtype_name, begin, end })
}

/// What one tensor of a file to write will be.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: DType,
}

/// Calls `f` with the bytes of a contiguous CPU tensor, without copying them.
fn with_bytes<R>(t: &Tensor, f: impl FnOnce(&[u8]) -> R) -> Result<R> {
    fn bytes<T>(v: &[T]) -> &[u8] {
        // SAFETY: plain numeric data, viewed as the bytes it occupies.
        unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
    }
    let t = t.to_device(&Device::Cpu)?.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let (start, end) = layout.contiguous_offsets().expect("made contiguous above");
    let b = match &*storage {
        Storage::Cpu(CpuStorage::U8(v)) => bytes(&v[start..end]),
        Storage::Cpu(CpuStorage::U32(v)) => bytes(&v[start..end]),
        Storage::Cpu(CpuStorage::I16(v)) => bytes(&v[start..end]),
        Storage::Cpu(CpuStorage::I32(v)) => bytes(&v[start..end]),
        Storage::Cpu(CpuStorage::I64(v)) => bytes(&v[start..end]),
        Storage::Cpu(CpuStorage::BF16(v)) => bytes(&v[start..end]),
        Storage::Cpu(CpuStorage::F16(v)) => bytes(&v[start..end]),
        Storage::Cpu(CpuStorage::F32(v)) => bytes(&v[start..end]),
        Storage::Cpu(CpuStorage::F64(v)) => bytes(&v[start..end]),
        _ => return Err(MarvelError::InvalidArgument(format!("cannot write {:?} tensors to safetensors", t.dtype()))),
    };
    Ok(f(b))
}

/// Writes a safetensors file holding `specs` in order, asking `tensor` for each one's data only when it is
/// written, so at most one tensor is held at a time. The file is first written as `<path>.partial` and renamed
/// into place once complete, so a failure leaves no truncated checkpoint behind.
pub fn write_safetensors(
    path: &Path,
    specs: &[TensorSpec],
    mut tensor: impl FnMut(&TensorSpec) -> Result<Tensor>,
) -> Result<()> {
    let mut toc = Map::new();
    toc.insert("__metadata__".into(), serde_json::json!({ "format": "pt" }));
    let mut offset = 0u64;
    for s in specs {
        let bytes = s.shape.iter().product::<usize>() as u64 * s.dtype.size_in_bytes() as u64;
        let entry = serde_json::json!({ "dtype": dtype_name(s.dtype)?, "shape": s.shape, "data_offsets": [offset, offset + bytes] });
        if toc.insert(s.name.clone(), entry).is_some() {
            return Err(MarvelError::InvalidArgument(format!("tensor {} is listed twice", s.name)));
        }
        offset += bytes;
    }
    let mut header = serde_json::to_vec(&Value::Object(toc)).expect("a JSON map serialises");
    // The format pads the header with spaces so the data starts 8-byte aligned.
    header.resize(header.len().next_multiple_of(8), b' ');

    let partial = path.with_file_name(format!(
        "{}.partial",
        path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    ));
    let io = |e: std::io::Error| MarvelError::io(path, e);
    let written = (|| -> Result<()> {
        let mut out = BufWriter::with_capacity(1 << 20, File::create(&partial).map_err(io)?);
        out.write_all(&(header.len() as u64).to_le_bytes()).map_err(io)?;
        out.write_all(&header).map_err(io)?;
        for s in specs {
            let t = tensor(s)?;
            if t.dims() != s.shape.as_slice() || t.dtype() != s.dtype {
                return Err(MarvelError::InvalidArgument(format!(
                    "{}: got {:?} {:?}, expected {:?} {:?}",
                    s.name,
                    t.dtype(),
                    t.dims(),
                    s.dtype,
                    s.shape
                )));
            }
            with_bytes(&t, |b| out.write_all(b)).and_then(|r| r.map_err(io))?;
        }
        out.into_inner().map_err(|e| io(e.into_error()))?.sync_all().map_err(io)
    })();
    match written {
        Ok(()) => std::fs::rename(&partial, path).map_err(io),
        Err(e) => {
            std::fs::remove_file(&partial).ok();
            Err(e)
        }
    }
}
