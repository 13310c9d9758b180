//! Raw float32 access to the storage of training tensors (parameters, gradients, moments, EMA shadows), for the
//! update loops of the optimizer, the EMA, the clipping and the accumulation: they rewrite every trainable value
//! each step, and through candle's tensor ops each line of them allocated and filled a whole new tensor.
//!
//! Writes go through candle's in-place custom ops (`Tensor::inplace_op1/2`), which hold the storage's write lock
//! for the duration of the closure and refuse a source that shares the destination's storage; reads hold the
//! read lock. A tensor written here is changed for every tensor that shares its storage (its clones, `detach`,
//! a model built on a `Var`): that is the point for parameters, and the callers own the other tensors they write.
//! The loops over the values run on the current rayon pool (marvel's compute pool inside `runtime::install`) in
//! chunks of a fixed size, so that any reduction over them can combine per-chunk results in a fixed order.

use std::cell::RefCell;

use candle_core::{CpuStorage, InplaceOp1, InplaceOp2, Layout, Storage, Tensor};

use crate::error::{MarvelError, Result};

/// Elements per parallel task: large enough that rayon's overhead vanishes, small enough to split the larger
/// parameters (a 512x2048 weight is 32 chunks) over the threads.
pub(crate) const CHUNK: usize = 1 << 15;

fn values<'a>(name: &str, storage: &'a CpuStorage, layout: &Layout) -> candle_core::Result<&'a [f32]> {
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("{name}: the tensor is not contiguous")
    };
    Ok(&storage.as_slice::<f32>()?[start..end])
}

fn values_mut<'a>(name: &str, storage: &'a mut CpuStorage, layout: &Layout) -> candle_core::Result<&'a mut [f32]> {
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("{name}: the tensor is not contiguous")
    };
    match storage {
        CpuStorage::F32(v) => Ok(&mut v[start..end]),
        _ => candle_core::bail!("{name}: float32 storage expected"),
    }
}

/// An in-place op that hands the destination's values to a closure once and keeps what it returns.
struct WithMut<F, R> {
    name: &'static str,
    f: RefCell<Option<F>>,
    out: RefCell<Option<R>>,
}

impl<F, R> WithMut<F, R> {
    fn new(name: &'static str, f: F) -> Self {
        Self { name, f: RefCell::new(Some(f)), out: RefCell::new(None) }
    }

    fn take_f(&self) -> F {
        self.f.borrow_mut().take().expect("an in-place op runs once")
    }

    fn result(self) -> R {
        self.out.into_inner().expect("candle ran the in-place op")
    }
}

impl<F: FnOnce(&mut [f32]) -> R, R> InplaceOp1 for WithMut<F, R> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        let f = self.take_f();
        *self.out.borrow_mut() = Some(f(values_mut(self.name, storage, layout)?));
        Ok(())
    }
}

impl<F: FnOnce(&mut [f32], &[f32]) -> R, R> InplaceOp2 for WithMut<F, R> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn cpu_fwd(&self, s1: &mut CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<()> {
        let f = self.take_f();
        let src = values(self.name, s2, l2)?;
        let dst = values_mut(self.name, s1, l1)?;
        if src.len() != dst.len() {
            candle_core::bail!("{}: {} values to update from {}", self.name, dst.len(), src.len())
        }
        *self.out.borrow_mut() = Some(f(dst, src));
        Ok(())
    }
}

/// Runs `f` on the values of `dst` (contiguous float32 on the CPU), which it may change in place.
pub(crate) fn with_mut<R>(what: &'static str, dst: &Tensor, f: impl FnOnce(&mut [f32]) -> R) -> Result<R> {
    let op = WithMut::new(what, f);
    dst.inplace_op1(&op).map_err(|e| update_error(what, e))?;
    Ok(op.result())
}

/// Runs `f` on the values of `dst` (changeable) and of `src` (same number of elements, its own storage).
pub(crate) fn with_mut_src<R>(
    what: &'static str,
    dst: &Tensor,
    src: &Tensor,
    f: impl FnOnce(&mut [f32], &[f32]) -> R,
) -> Result<R> {
    let op = WithMut::new(what, f);
    dst.inplace_op2(src, &op).map_err(|e| update_error(what, e))?;
    Ok(op.result())
}

/// Runs `f` on the values of `t` (contiguous float32 on the CPU).
pub(crate) fn with_values<R>(what: &'static str, t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        return Err(MarvelError::InvalidArgument(format!("{what}: training updates run on the CPU")));
    };
    Ok(f(values(what, cpu, layout).map_err(|e| update_error(what, e))?))
}

fn update_error(what: &str, e: candle_core::Error) -> MarvelError {
    MarvelError::InvalidArgument(format!("{what}: {e}"))
}

/// A float32 tensor of its own (contiguous, no graph, storage shared with nothing) holding `t`'s values.
pub(crate) fn owned_copy(t: &Tensor) -> Result<Tensor> {
    Ok(t.detach().contiguous()?.copy()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn writes_reach_every_tensor_sharing_the_storage() {
        let var = Var::new(&[1f32, 2.0, 3.0], &Device::Cpu).unwrap();
        let seen_by_model = var.as_tensor().detach();
        let g = Tensor::new(&[10f32, 20.0, 30.0], &Device::Cpu).unwrap();
        with_mut_src("test", var.as_tensor(), &g, |p, g| p.iter_mut().zip(g).for_each(|(p, g)| *p += g)).unwrap();
        assert_eq!(seen_by_model.to_vec1::<f32>().unwrap(), [11.0, 22.0, 33.0]);
        with_mut("test", &seen_by_model, |v| v[0] = -1.0).unwrap();
        assert_eq!(var.as_tensor().to_vec1::<f32>().unwrap(), [-1.0, 22.0, 33.0]);
        assert_eq!(with_values("test", &g, |g| g.iter().sum::<f32>()).unwrap(), 60.0);
    }

    #[test]
    fn a_source_sharing_the_destination_is_refused() {
        let t = Tensor::new(&[1f32, 2.0], &Device::Cpu).unwrap();
        let err = with_mut_src("test", &t, &t.clone(), |_, _| unreachable!()).unwrap_err();
        assert_eq!(err.code(), "MARVEL_INVALID_ARGUMENT");
    }

    #[test]
    fn other_dtypes_and_strided_views_are_refused_with_their_name() {
        let t = Tensor::new(&[1f64, 2.0], &Device::Cpu).unwrap();
        assert!(with_mut("exp_avg", &t, |_| unreachable!()).unwrap_err().to_string().contains("exp_avg"));
        let m = Tensor::new(&[[1f32, 2.0], [3.0, 4.0]], &Device::Cpu).unwrap().t().unwrap();
        assert!(with_values("grad", &m, |_| ()).unwrap_err().to_string().contains("not contiguous"));
    }
}
