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

use candle_core::{DType, Device, Tensor, Var};

use crate::error::Result;
use crate::shape_mismatch;
use crate::train::grads::Gradients;

/// Averages a flat gradient vector across the ranks of a data-parallel run.
pub trait GradientReducer {
    /// Ranks taking part; 1 means there is nothing to average and the trainer skips the call.
    fn world_size(&self) -> usize;

    /// The element-wise mean over the ranks of `flat` (1-d float32, on the device the gradients live on), on the
    /// same device. Every rank must receive the same bits (sum in a fixed order, divide once), or the ranks'
    /// weights drift apart.
    fn all_reduce_mean(&mut self, flat: &Tensor) -> Result<Tensor>;
}

/// One process, no collective.
#[derive(Debug, Clone, Copy, Default)]
pub struct SingleRank;

impl GradientReducer for SingleRank {
    fn world_size(&self) -> usize {
        1
    }

    fn all_reduce_mean(&mut self, flat: &Tensor) -> Result<Tensor> {
        Ok(flat.clone())
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

    /// `grads` as one 1-d tensor on their device. A parameter without a gradient (the loss did not reach it on
    /// this rank) contributes zeros, as DDP's all-reduce does for it, since another rank may have reached it.
    pub fn flatten(&self, grads: &Gradients) -> Result<Tensor> {
        let device = grads.iter().next().map_or(Device::Cpu, |(_, g)| g.device().clone());
        let mut parts = Vec::with_capacity(self.slots.len());
        for slot in &self.slots {
            let numel: usize = slot.shape.iter().product();
            parts.push(match grads.get(&slot.name) {
                None => Tensor::zeros(numel, DType::F32, &device)?,
                Some(g) if g.dims() != slot.shape.as_slice() => {
                    return Err(shape_mismatch!(
                        "gradient of `{}` has shape {:?}, the parameter has {:?}",
                        slot.name,
                        g.dims(),
                        slot.shape
                    ))
                }
                Some(g) => g.flatten_all()?.to_dtype(DType::F32)?,
            });
        }
        if parts.is_empty() {
            return Ok(Tensor::zeros(0, DType::F32, &device)?);
        }
        Ok(Tensor::cat(&parts, 0)?)
    }

    /// Gradients for every trainable parameter from a flat tensor of this layout, on its device.
    pub fn unflatten(&self, flat: &Tensor) -> Result<Gradients> {
        if flat.dims() != [self.len] {
            return Err(shape_mismatch!(
                "flat gradients must be {} values (every trainable parameter), got shape {:?}",
                self.len,
                flat.dims()
            ));
        }
        let mut grads = Gradients::new();
        for slot in &self.slots {
            let numel: usize = slot.shape.iter().product();
            grads.insert(&slot.name, flat.narrow(0, slot.offset, numel)?.reshape(slot.shape.as_slice())?)?;
        }
        Ok(grads)
    }

    /// [`GradientLayout::flatten`] as host values (what a collective outside the core exchanges).
    pub fn flatten_values(&self, grads: &Gradients) -> Result<Vec<f32>> {
        Ok(self.flatten(grads)?.to_vec1::<f32>()?)
    }

    /// [`GradientLayout::unflatten`] from host values (averaged by a collective outside the core). A length that
    /// does not match or a value that is not finite (a rank's overflow) is refused before it reaches the optimizer.
    pub fn unflatten_values(&self, flat: &[f32]) -> Result<Gradients> {
        self.unflatten_values_on(flat, &Device::Cpu)
    }

    /// [`GradientLayout::unflatten_values`] onto `device` (the parameters' device).
    pub fn unflatten_values_on(&self, flat: &[f32], device: &Device) -> Result<Gradients> {
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
        self.unflatten(&Tensor::from_slice(flat, self.len, device)?)
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
        let flat = layout.flatten_values(&g).unwrap();
        assert_eq!(flat, [1.0, 2.0, 3.0, 4.0, 0.0, 0.5, -1.0, 2.0]);
        let back = layout.unflatten_values(&flat).unwrap();
        let names: Vec<_> = back.iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["b", "a", "c"]);
        assert_eq!(back.get("b").unwrap().to_vec2::<f32>().unwrap(), [[1.0, 2.0], [3.0, 4.0]]);
        assert_eq!(back.get("a").unwrap().to_vec1::<f32>().unwrap(), [0.0]);
    }

    #[test]
    fn a_wrong_length_a_wrong_shape_or_a_non_finite_value_is_refused() {
        let layout = GradientLayout::new(&params());
        let err = layout.unflatten_values(&[0.0; 7]).unwrap_err();
        assert_eq!(err.code(), "MARVEL_SHAPE_MISMATCH");
        assert!(err.to_string().contains("must hold 8 values"), "{err}");
        let mut flat = [0f32; 8];
        flat[5] = f32::NAN;
        let err = layout.unflatten_values(&flat).unwrap_err();
        assert_eq!(err.code(), "MARVEL_INVALID_ARGUMENT");
        assert!(err.to_string().contains("index 5 (parameter `c`)"), "{err}");
        let mut g = Gradients::new();
        g.insert("a", Tensor::new(&[1f32, 2.0], &Device::Cpu).unwrap()).unwrap();
        assert_eq!(layout.flatten(&g).unwrap_err().code(), "MARVEL_SHAPE_MISMATCH");
        let two_d = Tensor::zeros((2, 4), DType::F32, &Device::Cpu).unwrap();
        assert_eq!(layout.unflatten(&two_d).unwrap_err().code(), "MARVEL_SHAPE_MISMATCH");
    }
}
