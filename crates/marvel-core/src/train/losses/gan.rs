//! The GAN terms of the reference's stage-2 loss (modeling/modules/losses.py): the hinge losses and LeCam
//! regularisation (Tseng et al. 2021) with its EMA of the mean logits, which is training state.

use std::collections::HashMap;

use candle_core::{Device, Tensor};

use crate::error::{MarvelError, Result};

/// `hinge_d_loss`: 0.5 (mean(relu(1 - real)) + mean(relu(1 + fake))).
pub fn hinge_discriminator_loss(logits_real: &Tensor, logits_fake: &Tensor) -> Result<Tensor> {
    let real = logits_real.affine(-1.0, 1.0)?.relu()?.mean_all()?;
    let fake = logits_fake.affine(1.0, 1.0)?.relu()?.mean_all()?;
    Ok(((real + fake)? * 0.5)?)
}

/// The generator's hinge term: -mean(D(recon)).
pub fn hinge_generator_loss(logits_fake: &Tensor) -> Result<Tensor> {
    Ok(logits_fake.mean_all()?.neg()?)
}

/// `compute_lecam_loss(mean real, mean fake, ema_real, ema_fake)`:
/// relu(mean real - ema_fake)^2 + relu(ema_real - mean fake)^2, the EMAs constants.
pub fn lecam_loss(mean_real: &Tensor, mean_fake: &Tensor, ema: &LecamEma) -> Result<Tensor> {
    let real_term = mean_real.affine(1.0, -f64::from(ema.fake))?.relu()?.sqr()?;
    let fake_term = mean_fake.affine(-1.0, f64::from(ema.real))?.relu()?.sqr()?;
    Ok((real_term + fake_term)?)
}

/// The loss module's buffers `ema_real_logits_mean` / `ema_fake_logits_mean` (both start at 0).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LecamEma {
    pub real: f32,
    pub fake: f32,
}

const REAL_KEY: &str = "ema_real_logits_mean";
const FAKE_KEY: &str = "ema_fake_logits_mean";

impl Default for LecamEma {
    fn default() -> Self {
        Self { real: 0.0, fake: 0.0 }
    }
}

impl LecamEma {
    /// ema = ema * decay + mean * (1 - decay), in float32 as the reference's tensor ops (1 - decay is taken in
    /// double, then rounded: 1 - 0.999 = 0.0010000000000000009).
    pub fn update(&mut self, mean_real: f32, mean_fake: f32, decay: f64) {
        let (keep, take) = (decay as f32, (1.0 - decay) as f32);
        self.real = self.real * keep + mean_real * take;
        self.fake = self.fake * keep + mean_fake * take;
    }

    /// The state to checkpoint, under the reference's buffer names (F32, shape [1] as in its state dict).
    pub fn state(&self, device: &Device) -> Result<Vec<(String, Tensor)>> {
        Ok(vec![
            (REAL_KEY.to_string(), Tensor::new(&[self.real], device)?),
            (FAKE_KEY.to_string(), Tensor::new(&[self.fake], device)?),
        ])
    }

    /// Restores a state written by [`LecamEma::state`]; both values must be present, single F32 values.
    pub fn from_state(state: &HashMap<String, Tensor>) -> Result<Self> {
        let read = |key: &str| -> Result<f32> {
            let t = state
                .get(key)
                .ok_or_else(|| MarvelError::Checkpoint(format!("LeCam state: `{key}` is missing")))?;
            if t.elem_count() != 1 || t.dtype() != candle_core::DType::F32 {
                return Err(MarvelError::Checkpoint(format!(
                    "LeCam state: `{key}` must be one F32 value, got {:?} {:?}",
                    t.dtype(),
                    t.dims()
                )));
            }
            Ok(t.flatten_all()?.to_vec1::<f32>()?[0])
        };
        Ok(Self { real: read(REAL_KEY)?, fake: read(FAKE_KEY)? })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scalar(t: &Tensor) -> f32 {
        t.to_scalar::<f32>().unwrap()
    }

    /// Hand-computed values: the hinge's relu cuts each side at -1 / +1; LeCam's terms are one-sided.
    #[test]
    fn hinge_and_lecam_match_hand_values() {
        let dev = Device::Cpu;
        let real = Tensor::new(&[2f32, 0.5, -1.0, 0.0], &dev).unwrap();
        let fake = Tensor::new(&[-2f32, -0.5, 1.0, 0.0], &dev).unwrap();
        // relu(1 - real) = 0, 0.5, 2, 1 -> mean 0.875; relu(1 + fake) = 0, 0.5, 2, 1 -> 0.875.
        assert_eq!(scalar(&hinge_discriminator_loss(&real, &fake).unwrap()), 0.875);
        assert_eq!(scalar(&hinge_generator_loss(&fake).unwrap()), 0.375);
        let ema = LecamEma { real: 1.0, fake: 0.25 };
        let (mr, mf) = (Tensor::new(0.5f32, &dev).unwrap(), Tensor::new(-0.5f32, &dev).unwrap());
        // relu(0.5 - 0.25)^2 + relu(1 - (-0.5))^2 = 0.0625 + 2.25
        assert_eq!(scalar(&lecam_loss(&mr, &mf, &ema).unwrap()), 2.3125);
        let inactive = LecamEma { real: -1.0, fake: 1.0 };
        assert_eq!(scalar(&lecam_loss(&mr, &mf, &inactive).unwrap()), 0.0);
    }

    #[test]
    fn ema_state_round_trips_and_rejects_bad_tensors() {
        let mut ema = LecamEma::default();
        ema.update(2.0, -1.0, 0.999);
        assert_eq!(ema, LecamEma { real: 2.0 * 0.001f32, fake: -0.001f32 });
        let state: HashMap<_, _> = ema.state(&Device::Cpu).unwrap().into_iter().collect();
        assert_eq!(LecamEma::from_state(&state).unwrap(), ema);
        let mut broken = state.clone();
        broken.insert(FAKE_KEY.into(), Tensor::new(&[1f32, 2.0], &Device::Cpu).unwrap());
        let err = LecamEma::from_state(&broken).unwrap_err();
        assert!(err.to_string().contains(FAKE_KEY), "{err}");
        broken.remove(REAL_KEY);
        assert!(LecamEma::from_state(&broken).unwrap_err().to_string().contains("missing"));
    }
}
