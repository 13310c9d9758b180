//! Gradients keyed by parameter name, in parameter order.
//!
//! candle's `GradStore` is keyed by tensor id and cannot be built outside a backward pass; the optimizer, the
//! clipping and the accumulation work on names instead, so that a gradient can come from a backward pass, a sum
//! over micro-batches, another rank or a test fixture alike. The order is the parameter order, which fixes the
//! order of every sum over parameters (clip_grad_norm_'s total norm) as PyTorch's `model.parameters()` does.
//!
//! Like PyTorch's `.grad`, the gradients are changed in place (clipping scales them, accumulation adds into the
//! first micro-batch's): a `Gradients` owns the storage of its tensors, so a tensor inserted here should not be
//! one the caller still reads (a backward pass's gradients are fresh tensors; [`Gradients::from_store`] takes
//! them from a store the caller then drops).

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use rayon::prelude::*;

use crate::error::{MarvelError, Result};
use crate::train::raw::{self, CHUNK};

#[derive(Debug, Clone, Default)]
pub struct Gradients {
    entries: Vec<(String, Tensor)>,
    index: HashMap<String, usize>,
}

impl Gradients {
    pub fn new() -> Self {
        Self::default()
    }

    /// Named 1-d CPU gradients from plain values, in the given order (for tests).
    #[cfg(test)]
    pub(crate) fn from_values(entries: &[(&str, &[f32])]) -> Self {
        let mut g = Self::new();
        for (name, values) in entries {
            g.insert(name, Tensor::new(*values, &candle_core::Device::Cpu).unwrap()).unwrap();
        }
        g
    }

    /// The gradient of each parameter in `params` that has one in `store`, in `params` order. A parameter the
    /// loss does not reach has no entry, as PyTorch leaves its `grad` at None (AdamW and clipping skip it).
    /// The gradients are detached so that nothing computed from them keeps the backward graph alive.
    pub fn from_store(params: &[(String, Var)], store: &GradStore) -> Result<Self> {
        let mut grads = Self::new();
        for (name, var) in params {
            if let Some(g) = store.get(var.as_tensor()) {
                grads.insert(name, g.detach())?;
            }
        }
        Ok(grads)
    }

    /// Appends the gradient of `name`; a second gradient for the same name is an error.
    pub fn insert(&mut self, name: &str, grad: Tensor) -> Result<()> {
        if self.index.contains_key(name) {
            return Err(MarvelError::InvalidArgument(format!("gradient of `{name}` given twice")));
        }
        self.index.insert(name.to_string(), self.entries.len());
        self.entries.push((name.to_string(), grad));
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.index.get(name).map(|&i| &self.entries[i].1)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.entries.iter().map(|(n, g)| (n.as_str(), g))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Multiplies every gradient by `factor` in place (one rounding per value, as `g * factor` in float32).
    pub(crate) fn scale_in_place(&mut self, factor: f32) -> Result<()> {
        for (name, g) in &mut self.entries {
            scale(g, factor).map_err(|e| MarvelError::InvalidArgument(format!("gradient of `{name}`: {e}")))?;
        }
        Ok(())
    }

    /// Adds `factor * other[name]` into each gradient of `other` held here, in place; the others of `other` are
    /// appended, multiplied by `factor`, after the ones held here (in `other`'s order). Shapes are checked first.
    pub(crate) fn add_scaled(&mut self, other: Gradients, factor: f32) -> Result<()> {
        for (name, g) in other.iter() {
            if let Some(sum) = self.get(name) {
                if sum.dims() != g.dims() {
                    return Err(MarvelError::ShapeMismatch(format!(
                        "gradient of `{name}` has shape {:?}, {:?} in the sum it is added to",
                        g.dims(),
                        sum.dims()
                    )));
                }
            }
        }
        let mut fresh = Gradients::new();
        for (name, mut g) in other.entries {
            match self.index.get(&name) {
                Some(&i) => {
                    let sum = &mut self.entries[i].1;
                    own_contiguous(sum)?;
                    let g = g.contiguous()?;
                    raw::with_mut_src("gradient sum", sum, &g, |sum, g| {
                        sum.par_chunks_mut(CHUNK).zip(g.par_chunks(CHUNK)).for_each(|(sum, g)| {
                            sum.iter_mut().zip(g).for_each(|(s, &g)| *s += g * factor);
                        })
                    })?;
                }
                None => {
                    if factor != 1.0 {
                        scale(&mut g, factor)?;
                    }
                    fresh.insert(&name, g)?;
                }
            }
        }
        for (name, g) in fresh.entries {
            self.insert(&name, g)?;
        }
        Ok(())
    }
}

/// Makes `g` a contiguous tensor (a copy when it is a strided view), so it can be written in place.
fn own_contiguous(g: &mut Tensor) -> Result<()> {
    if !g.is_contiguous() {
        *g = g.contiguous()?;
    }
    Ok(())
}

/// `g *= factor` in place.
fn scale(g: &mut Tensor, factor: f32) -> Result<()> {
    own_contiguous(g)?;
    raw::with_mut("gradient scaling", g, |g| {
        g.par_chunks_mut(CHUNK).for_each(|c| c.iter_mut().for_each(|x| *x *= factor))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn from_store_keeps_parameter_order_and_skips_unreached_parameters() {
        let dev = Device::Cpu;
        let a = Var::new(&[1f32, 2.0], &dev).unwrap();
        let b = Var::new(&[3f32], &dev).unwrap();
        let unused = Var::new(&[5f32], &dev).unwrap();
        let loss = ((a.as_tensor().sum_all().unwrap() * 2.0).unwrap()
            + b.as_tensor().sqr().unwrap().sum_all().unwrap())
        .unwrap();
        let store = loss.backward().unwrap();
        let params = vec![("b".to_string(), b), ("unused".to_string(), unused), ("a".to_string(), a)];
        let grads = Gradients::from_store(&params, &store).unwrap();
        let names: Vec<_> = grads.iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["b", "a"]);
        assert_eq!(grads.get("a").unwrap().to_vec1::<f32>().unwrap(), [2.0, 2.0]);
        assert_eq!(grads.get("b").unwrap().to_vec1::<f32>().unwrap(), [6.0]);
        assert!(grads.get("unused").is_none());
    }

    #[test]
    fn a_name_given_twice_is_refused() {
        let mut grads = Gradients::new();
        grads.insert("w", Tensor::new(&[1f32], &Device::Cpu).unwrap()).unwrap();
        let err = grads.insert("w", Tensor::new(&[2f32], &Device::Cpu).unwrap()).unwrap_err();
        assert_eq!(err.code(), "MARVEL_INVALID_ARGUMENT");
        assert!(err.to_string().contains("`w`"), "{err}");
    }

    /// Our candle-core (vendor/candle-core/PATCH.md) stores the first gradient a custom op hands back as it is,
    /// not as the sum of it and a new tensor of zeros; a gradient passed on to two inputs (an add of two
    /// parameters) is stored once per input, each on its own storage, so that scaling one in place (clipping)
    /// leaves the other alone.
    #[test]
    fn the_store_keeps_a_fresh_gradient_and_copies_a_shared_one() {
        use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Storage};
        use std::sync::atomic::{AtomicUsize, Ordering};

        fn data_ptr(t: &Tensor) -> usize {
            let (storage, _) = t.storage_and_layout();
            match &*storage {
                Storage::Cpu(CpuStorage::F32(v)) => v.as_ptr() as usize,
                _ => unreachable!("f32 on the CPU"),
            }
        }
        /// Where the backward of [`Triple`] put its gradient's values.
        static SEEN: AtomicUsize = AtomicUsize::new(0);
        /// y = 3x.
        struct Triple;
        impl CustomOp1 for Triple {
            fn name(&self) -> &'static str {
                "triple"
            }
            fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
                let v: Vec<f32> = s.as_slice::<f32>()?[l.start_offset()..][..l.shape().elem_count()]
                    .iter()
                    .map(|x| 3.0 * x)
                    .collect();
                Ok((CpuStorage::F32(v), l.shape().clone()))
            }
            fn bwd(&self, _: &Tensor, _: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
                let g = (grad * 3.0)?;
                SEEN.store(data_ptr(&g), Ordering::SeqCst);
                Ok(Some(g))
            }
        }

        let dev = Device::Cpu;
        let x = Var::new(&[1f32, -2.0, 0.5], &dev).unwrap();
        let y = x.as_tensor().apply_op1(Triple).unwrap();
        let store = y.sum_all().unwrap().backward().unwrap();
        let gx = store.get(x.as_tensor()).unwrap();
        assert_eq!(gx.to_vec1::<f32>().unwrap(), [3.0, 3.0, 3.0]);
        assert_eq!(data_ptr(gx), SEEN.load(Ordering::SeqCst), "the op's gradient was copied into the store");

        let a = Var::new(&[1f32, 2.0], &dev).unwrap();
        let b = Var::new(&[3f32, 4.0], &dev).unwrap();
        let store = (a.as_tensor() + b.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap();
        let (ga, gb) = (store.get(a.as_tensor()).unwrap(), store.get(b.as_tensor()).unwrap());
        assert_eq!((ga.to_vec1::<f32>().unwrap(), gb.to_vec1::<f32>().unwrap()), (vec![1.0; 2], vec![1.0; 2]));
        assert_ne!(data_ptr(ga), data_ptr(gb), "two parameters' gradients share storage");
    }
}
