//! Data-parallel training's one collective: every rank computes the gradients of its own share of the batch, and
//! before the optimizer step they are replaced by their mean over the ranks, so every rank applies the same update
//! to the same weights (PyTorch DDP's all-reduce of `.grad`, which accelerate runs for the reference).
//!
//! The trainer calls a [`GradientReducer`] once per optimizer step, after accumulation, with the accumulated
//! gradients flattened by a [`GradientLayout`]: every trainable parameter in parameter order, so the k-th value
//! means the same number on every rank. [`SingleRank`] is the one-process case (nothing to average); a multi-GPU
//! engine (NCCL) implements the trait for device tensors, and callers outside the core (a Node process group)
//! average the flat gradients between [`Trainer::gradients`] and [`Trainer::apply`] instead.
//!
//! [`Trainer::gradients`]: crate::train::Trainer::gradients
//! [`Trainer::apply`]: crate::train::Trainer::apply

use candle_core::{Device, Tensor, Var};

use crate::error::Result;
use crate::shape_mismatch;
use crate::train::grads::Gradients;

/// Averages a flat gradient vector across the ranks of a data-parallel run.
pub trait GradientReducer {
    /// Ranks taking part; 1 means there is nothing to average and the trainer skips the call.
    fn world_size(&self) -> usize;

    /// Replaces `flat` by its element-wise mean over the ranks. Every rank must receive the same bits (sum in a
    /// fixed order, divide once), or the ranks' weights drift apart.
    fn all_reduce_mean(&mut self, flat: &mut [f32]) -> Result<()>;
}

/// One process, no collective.
#[derive(Debug, Clone, Copy, Default)]
pub struct SingleRank;

impl GradientReducer for SingleRank {
    fn world_size(&self) -> usize {
        1
    }

    fn all_reduce_mean(&mut self, _flat: &mut [f32]) -> Result<()> {
        Ok(())
    }
}

#[derive(Debug, Clone)]
struct Slot {
    name: String,
    shape: Vec<usize>,
    offset: usize,
}

/// Where each trainable parameter's gradient lies in the flat vector.
#[derive(Debug, Clone)]
pub struct GradientLayout {
    slots: Vec<Slot>,
    len: usize,
}

impl GradientLayout {
    /// The layout of `trainable`, in that order.
    pub fn new(trainable: &[(String, Var)]) -> Self {
        let mut slots = Vec::with_capacity(trainable.len());
        let mut offset = 0;
        for (name, var) in trainable {
            let shape = var.as_tensor().dims().to_vec();
            let numel: usize = shape.iter().product();
            slots.push(Slot { name: name.clone(), shape, offset });
            offset += numel;
        }
        Self { slots, len: offset }
    }

    /// Values in the flat vector.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// `grads` as one vector. A parameter without a gradient (the loss did not reach it on this rank) contributes
    /// zeros, as DDP's all-reduce does for it, since another rank may have reached it.
    pub fn flatten(&self, grads: &Gradients) -> Result<Vec<f32>> {
        let mut flat = vec![0f32; self.len];
        for slot in &self.slots {
            let Some(g) = grads.get(&slot.name) else { continue };
            if g.dims() != slot.shape.as_slice() {
                return Err(shape_mismatch!(
                    "gradient of `{}` has shape {:?}, the parameter has {:?}",
                    slot.name,
                    g.dims(),
                    slot.shape
                ));
            }
            let values = g.flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?;
            flat[slot.offset..slot.offset + values.len()].copy_from_slice(&values);
        }
        Ok(flat)
    }

    /// Gradients for every trainable parameter from a flat vector of this layout. A length that does not match
    /// or a value that is not finite (a rank's overflow) is refused before it reaches the optimizer.
    pub fn unflatten(&self, flat: &[f32]) -> Result<Gradients> {
        if flat.len() != self.len {
            return Err(shape_mismatch!(
                "flat gradients must hold {} values (every trainable parameter), got {}",
                self.len,
                flat.len()
            ));
        }
        if let Some(i) = flat.iter().position(|v| !v.is_finite()) {
            let slot = self.slots.iter().rev().find(|s| s.offset <= i).expect("index inside the layout");
            return Err(crate::invalid!(
                "flat gradients hold {} at index {i} (parameter `{}`); the weights were not updated",
                flat[i],
                slot.name
            ));
        }
        let mut grads = Gradients::new();
        for slot in &self.slots {
            let numel: usize = slot.shape.iter().product();
            let values = &flat[slot.offset..slot.offset + numel];
            grads.insert(&slot.name, Tensor::from_slice(values, slot.shape.as_slice(), &Device::Cpu)?)?;
        }
        Ok(grads)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> Vec<(String, Var)> {
        let dev = Device::Cpu;
        vec![
            ("b".to_string(), Var::new(&[[1f32, 2.0], [3.0, 4.0]], &dev).unwrap()),
            ("a".to_string(), Var::new(&[5f32], &dev).unwrap()),
            ("c".to_string(), Var::new(&[6f32, 7.0, 8.0], &dev).unwrap()),
        ]
    }

    #[test]
    fn flattens_in_parameter_order_with_zeros_for_unreached_parameters_and_back() {
        let layout = GradientLayout::new(&params());
        assert_eq!(layout.len(), 8);
        let mut g = Gradients::new();
        g.insert("c", Tensor::new(&[0.5f32, -1.0, 2.0], &Device::Cpu).unwrap()).unwrap();
        g.insert("b", Tensor::new(&[[1f32, 2.0], [3.0, 4.0]], &Device::Cpu).unwrap()).unwrap();
        let flat = layout.flatten(&g).unwrap();
        assert_eq!(flat, [1.0, 2.0, 3.0, 4.0, 0.0, 0.5, -1.0, 2.0]);
        let back = layout.unflatten(&flat).unwrap();
        let names: Vec<_> = back.iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["b", "a", "c"]);
        assert_eq!(back.get("b").unwrap().to_vec2::<f32>().unwrap(), [[1.0, 2.0], [3.0, 4.0]]);
        assert_eq!(back.get("a").unwrap().to_vec1::<f32>().unwrap(), [0.0]);
    }

    #[test]
    fn a_wrong_length_a_wrong_shape_or_a_non_finite_value_is_refused() {
        let layout = GradientLayout::new(&params());
        let err = layout.unflatten(&[0.0; 7]).unwrap_err();
        assert_eq!(err.code(), "MARVEL_SHAPE_MISMATCH");
        assert!(err.to_string().contains("must hold 8 values"), "{err}");
        let mut flat = [0f32; 8];
        flat[5] = f32::NAN;
        let err = layout.unflatten(&flat).unwrap_err();
        assert_eq!(err.code(), "MARVEL_INVALID_ARGUMENT");
        assert!(err.to_string().contains("index 5 (parameter `c`)"), "{err}");
        let mut g = Gradients::new();
        g.insert("a", Tensor::new(&[1f32, 2.0], &Device::Cpu).unwrap()).unwrap();
        assert_eq!(layout.flatten(&g).unwrap_err().code(), "MARVEL_SHAPE_MISMATCH");
    }
}
