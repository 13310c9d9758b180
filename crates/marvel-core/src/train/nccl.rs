//! Data-parallel training across GPUs: one process per GPU, and the trainer's one collective (the mean of the flat
//! gradients before clipping and AdamW) as an NCCL all-reduce on the device, through cudarc's bindings.
//!
//! Rank 0 makes the run's NCCL id ([`unique_id`]); the launcher hands its text to every rank, and each joins with
//! [`NcclReducer::join`] on its own GPU. NCCL's all-reduce gives every rank the same result bits (each chunk is
//! reduced once and then copied to all ranks), which keeps the ranks' weights identical as [`GradientReducer`]
//! requires.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::nccl::{Comm, Id, ReduceOp};
use candle_core::op::BackpropOp;
use candle_core::{CudaStorage, Device, Storage, Tensor};

use crate::error::{MarvelError, Result};
use crate::invalid;
use crate::train::reduce::GradientReducer;

/// Characters of an id's text: 128 bytes as hex.
pub const ID_HEX_LEN: usize = 256;

fn nccl_err(what: &str, e: impl std::fmt::Debug) -> MarvelError {
    MarvelError::CudaUnavailable(format!("NCCL {what} failed: {e:?}"))
}

/// A fresh NCCL id as hex text (made on rank 0, passed to the others by the launcher).
pub fn unique_id() -> Result<String> {
    let id = Id::new().map_err(|e| nccl_err("id creation", e))?;
    Ok(id.internal().iter().map(|&c| format!("{:02x}", c as u8)).collect())
}

fn parse_id(hex: &str) -> Result<Id> {
    if hex.len() != ID_HEX_LEN || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(invalid!("an NCCL id is {ID_HEX_LEN} hex digits, got {} characters", hex.len()));
    }
    let mut raw = [0 as std::ffi::c_char; 128];
    for (i, slot) in raw.iter_mut().enumerate() {
        *slot = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("checked hex") as std::ffi::c_char;
    }
    Ok(Id::uninit(raw))
}

/// The communicator is a handle NCCL lets any thread use, one call at a time; the trainer that owns this reducer
/// is behind a mutex, so calls never overlap.
struct SendComm(Comm);
unsafe impl Send for SendComm {}

/// This process's seat in an NCCL all-reduce.
pub struct NcclReducer {
    comm: SendComm,
}

impl NcclReducer {
    /// Joins rank `rank` of `world` on `device` (a CUDA device, the trainer's); blocks until every rank has joined.
    pub fn join(device: &Device, id_hex: &str, rank: usize, world: usize) -> Result<Self> {
        let Device::Cuda(dev) = device else {
            return Err(invalid!("NCCL data parallelism needs a CUDA device, the trainer is on {device:?}"));
        };
        if world == 0 || rank >= world {
            return Err(invalid!("rank {rank} is not in a world of {world}"));
        }
        let id = parse_id(id_hex)?;
        let comm =
            Comm::from_rank(dev.cuda_stream(), rank, world, id).map_err(|e| nccl_err("communicator setup", e))?;
        Ok(NcclReducer { comm: SendComm(comm) })
    }

    pub fn rank(&self) -> usize {
        self.comm.0.rank()
    }
}

impl GradientReducer for NcclReducer {
    fn world_size(&self) -> usize {
        self.comm.0.world_size()
    }

    fn all_reduce_mean(&mut self, flat: &Tensor) -> Result<Tensor> {
        let flat = flat.contiguous()?;
        let (storage, layout) = flat.storage_and_layout();
        let Storage::Cuda(s) = &*storage else {
            return Err(invalid!("NCCL all-reduce: the gradients are not on a GPU"));
        };
        let (a, b) = layout.contiguous_offsets().expect("made contiguous above");
        let src = s.as_cuda_slice::<f32>()?.slice(a..b);
        let dev = s.device().clone();
        let mut out = dev.alloc_zeros::<f32>(b - a)?;
        // ncclAvg: summed, then divided by the world size once.
        // Setup failures mean no usable NCCL; a failing all-reduce means a rank died or left mid-run.
        self.comm
            .0
            .all_reduce(&src, &mut out, &ReduceOp::Avg)
            .map_err(|e| MarvelError::Rank(format!("NCCL all-reduce failed (did another rank stop?): {e:?}")))?;
        drop(storage);
        let out = Storage::Cuda(CudaStorage::wrap_cuda_slice(out, dev));
        Ok(Tensor::from_storage(out, b - a, BackpropOp::none(), false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_their_text_and_bad_text_is_refused() {
        let raw: [std::ffi::c_char; 128] = std::array::from_fn(|i| (i as u8).wrapping_mul(37) as std::ffi::c_char);
        let hex: String = raw.iter().map(|&c| format!("{:02x}", c as u8)).collect();
        assert_eq!(parse_id(&hex).unwrap().internal(), &raw);
        assert!(parse_id(&hex[2..]).is_err());
        assert!(parse_id(&format!("zz{}", &hex[2..])).is_err());
    }
}
