//! Loading a checkpoint for training with part of it frozen by name: the trainable parameters become [`Var`]s,
//! the frozen ones stay plain tensors. A frozen tensor then never takes part in autograd, so the layers that own
//! it keep their fused inference kernels (which refuse tracked tensors), and no gradient can reach it.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};

use crate::error::Result;
use crate::weights::{load_strict, LoadOptions};

/// The trainable parameters handed out so far, in the order the model asked for them (the reference's
/// `named_parameters()` order for models built in that order). A name asked for twice shares one [`Var`].
#[derive(Default)]
struct Handed {
    order: Vec<(String, Var)>,
    by_name: HashMap<String, Var>,
}

/// Reads through `inner` (the strict checkpoint backend, at the root) and wraps what `trainable` selects.
struct TrainableBackend<'a, F> {
    inner: VarBuilder<'a>,
    trainable: F,
    handed: Arc<Mutex<Handed>>,
}

impl<F: Fn(&str) -> bool + Send + Sync> SimpleBackend for TrainableBackend<'_, F> {
    fn get(&self, s: Shape, name: &str, h: Init, dtype: DType, _: &Device) -> candle_core::Result<Tensor> {
        let t = self.inner.get_with_hints_dtype(s, name, h, dtype)?;
        if !(self.trainable)(name) {
            return Ok(t);
        }
        let mut handed = self.handed.lock().expect("no panic while holding the lock");
        if let Some(v) = handed.by_name.get(name) {
            return Ok(v.as_tensor().clone());
        }
        let var = Var::from_tensor(&t)?;
        handed.by_name.insert(name.to_string(), var.clone());
        handed.order.push((name.to_string(), var.clone()));
        Ok(var.as_tensor().clone())
    }

    /// Optional buffers the model checks itself (the LFQ's code tables): constants, never trained.
    fn get_unchecked(&self, name: &str, dtype: DType, _: &Device) -> candle_core::Result<Tensor> {
        self.inner.get_unchecked_dtype(name, dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.inner.contains_tensor(name)
    }
}

/// Builds a model with `build` from the checkpoint at `weights`, as strictly as [`load_strict`], and returns it
/// with its trainable parameters: those whose name `trainable` accepts, each a [`Var`] the model computes with
/// (an optimizer updating it updates the model). The others are plain tensors.
pub fn load_trainable<M>(
    weights: impl AsRef<Path>,
    device: &Device,
    opts: &LoadOptions,
    trainable: impl Fn(&str) -> bool + Send + Sync,
    build: impl FnOnce(VarBuilder) -> Result<M>,
) -> Result<(M, Vec<(String, Var)>)> {
    let handed = Arc::new(Mutex::new(Handed::default()));
    let shared = handed.clone();
    let (model, _) = load_strict(weights, device, opts, move |vb| {
        let (dtype, device) = (vb.dtype(), vb.device().clone());
        let backend = TrainableBackend { inner: vb.root(), trainable, handed: shared };
        build(VarBuilder::from_backend(Box::new(backend), dtype, device))
    })?;
    let handed = std::mem::take(&mut *handed.lock().expect("no panic while holding the lock"));
    Ok((model, handed.order))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A toy model: `frozen.w` (2), `train.w` (2, 2) asked for twice (a tied weight).
    #[derive(Debug)]
    struct Toy {
        frozen: Tensor,
        tied: [Tensor; 2],
    }

    fn build(vb: VarBuilder) -> Result<Toy> {
        let frozen = vb.pp("frozen").get(2, "w")?;
        let tied = [vb.pp("train").get((2, 2), "w")?, vb.get((2, 2), "train.w")?];
        Ok(Toy { frozen, tied })
    }

    fn checkpoint(name: &str, tensors: &[(&str, Tensor)]) -> std::path::PathBuf {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("marvel-params-{}-{name}-{n}.safetensors", std::process::id()));
        let map: HashMap<String, Tensor> = tensors.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        candle_core::safetensors::save(&map, &path).unwrap();
        path
    }

    /// Selected parameters become one shared variable each, holding the stored values; the others stay outside
    /// autograd; the load is as strict as the inference loader's.
    #[test]
    fn selected_parameters_become_variables_and_the_load_stays_strict() {
        let dev = Device::Cpu;
        let w = Tensor::new(&[[1f32, 2.], [3., 4.]], &dev).unwrap();
        let f = Tensor::new(&[5f32, 6.], &dev).unwrap();
        let path = checkpoint("good", &[("train.w", w.clone()), ("frozen.w", f.clone())]);
        let trainable = |n: &str| n.starts_with("train.");
        let (toy, vars) = load_trainable(&path, &dev, &LoadOptions::default(), trainable, build).unwrap();
        assert_eq!(vars.len(), 1);
        assert_eq!(vars[0].0, "train.w");
        assert!(!toy.frozen.track_op() && toy.tied.iter().all(Tensor::track_op));
        assert_eq!(toy.frozen.to_vec1::<f32>().unwrap(), [5., 6.]);
        // An update of the variable is what the model computes with, through both uses.
        vars[0].1.set(&(&w * 2.0).unwrap()).unwrap();
        for t in &toy.tied {
            assert_eq!(t.to_vec2::<f32>().unwrap(), [[2., 4.], [6., 8.]]);
        }
        std::fs::remove_file(&path).ok();

        let missing = checkpoint("missing", &[("train.w", w.clone())]);
        let err = load_trainable(&missing, &dev, &LoadOptions::default(), trainable, build).unwrap_err();
        assert_eq!(err.code(), "MARVEL_CHECKPOINT");
        assert!(err.to_string().contains("frozen.w"), "{err}");
        std::fs::remove_file(&missing).ok();

        let extra = checkpoint("extra", &[("train.w", w), ("frozen.w", f.clone()), ("unused", f)]);
        let err = load_trainable(&extra, &dev, &LoadOptions::default(), trainable, build).unwrap_err();
        assert!(err.to_string().contains("unused"), "{err}");
        std::fs::remove_file(&extra).ok();
    }
}
