//! Gradients keyed by parameter name, in parameter order.
//!
//! candle's `GradStore` is keyed by tensor id and cannot be built outside a backward pass; the optimizer, the
//! clipping and the accumulation work on names instead, so that a gradient can come from a backward pass, a sum
//! over micro-batches, another rank or a test fixture alike. The order is the parameter order, which fixes the
//! order of every sum over parameters (clip_grad_norm_'s total norm) as PyTorch's `model.parameters()` does.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

use crate::error::{MarvelError, Result};

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

    /// Replaces every gradient with `f(name, gradient)`, keeping the order.
    pub(crate) fn try_map(&mut self, mut f: impl FnMut(&str, &Tensor) -> Result<Tensor>) -> Result<()> {
        for (name, g) in &mut self.entries {
            *g = f(name, g)?;
        }
        Ok(())
    }
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
        let loss = ((a.as_tensor().sum_all().unwrap() * 2.0).unwrap() + b.as_tensor().sqr().unwrap().sum_all().unwrap())
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
}
