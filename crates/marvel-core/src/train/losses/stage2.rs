//! `ReconstructionLoss_Stage2` (bytedance/1d-tokenizer modeling/modules/losses.py) with the stage-2 yaml's
//! `losses` block. Two calls per training step, on the same reconstructions:
//! - generator: w_rec * mse(x, recon) + w_perc * perceptual(x, recon) + w_q * quantizer_loss plus
//!   d_weight * factor * (-mean(D(recon))), summed in this order; D is frozen here (its parameters get no
//!   gradient), and is not run at all before `discriminator_start` (factor 0).
//! - discriminator: factor * hinge(D(x), D(recon.detach())) + w_lecam * lecam, then the LeCam EMAs move.

use candle_core::{Device, Tensor, Var};
use serde::Deserialize;

use super::gan::{hinge_discriminator_loss, hinge_generator_loss, lecam_loss, LecamEma};
use super::perceptual::PerceptualLoss;
use crate::error::Result;
use crate::model::convnext::ConvNextConfig;
use crate::model::discriminator::{DiscriminatorConfig, NLayerDiscriminator};
use crate::{invalid, shape_mismatch};

/// The `losses` block of a stage-2 training config; defaults are configs/training/TiTok/stage2/titok_l32.yaml's
/// values and the loss module's own defaults (`lecam_ema_decay`, the network sizes).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Stage2LossConfig {
    #[serde(default = "c_discriminator_start")]
    pub discriminator_start: u64,
    #[serde(default)]
    pub quantizer_weight: f64,
    #[serde(default = "c_one")]
    pub discriminator_factor: f64,
    #[serde(default = "c_discriminator_weight")]
    pub discriminator_weight: f64,
    #[serde(default = "c_perceptual_loss")]
    pub perceptual_loss: String,
    #[serde(default = "c_perceptual_weight")]
    pub perceptual_weight: f64,
    #[serde(default = "c_reconstruction_loss")]
    pub reconstruction_loss: String,
    #[serde(default = "c_one")]
    pub reconstruction_weight: f64,
    #[serde(default = "c_lecam_weight")]
    pub lecam_regularization_weight: f64,
    #[serde(default = "c_lecam_decay")]
    pub lecam_ema_decay: f64,
    /// Extension key: the perceptual network's sizes (absent: torchvision `convnext_small`).
    #[serde(default = "ConvNextConfig::small")]
    pub perceptual_convnext: ConvNextConfig,
    /// Extension key: the discriminator's sizes (absent: the reference's hard-coded ones).
    #[serde(default)]
    pub discriminator: DiscriminatorConfig,
}

fn c_discriminator_start() -> u64 {
    20_000
}
fn c_one() -> f64 {
    1.0
}
fn c_discriminator_weight() -> f64 {
    0.01
}
fn c_perceptual_loss() -> String {
    "convnext_s".into()
}
fn c_perceptual_weight() -> f64 {
    0.1
}
fn c_reconstruction_loss() -> String {
    "l2".into()
}
fn c_lecam_weight() -> f64 {
    0.001
}
fn c_lecam_decay() -> f64 {
    0.999
}

impl Default for Stage2LossConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("every field has a default")
    }
}

impl Stage2LossConfig {
    pub fn validate(&self) -> Result<()> {
        if self.perceptual_loss != "convnext_s" {
            return Err(invalid!(
                "losses.perceptual_loss: only \"convnext_s\" is implemented, got {:?}",
                self.perceptual_loss
            ));
        }
        if !matches!(self.reconstruction_loss.as_str(), "l1" | "l2") {
            return Err(invalid!("losses.reconstruction_loss must be \"l1\" or \"l2\", got {:?}", self.reconstruction_loss));
        }
        for (name, v) in [
            ("quantizer_weight", self.quantizer_weight),
            ("discriminator_factor", self.discriminator_factor),
            ("discriminator_weight", self.discriminator_weight),
            ("perceptual_weight", self.perceptual_weight),
            ("reconstruction_weight", self.reconstruction_weight),
            ("lecam_regularization_weight", self.lecam_regularization_weight),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(invalid!("losses.{name} must be a finite number >= 0, got {v}"));
            }
        }
        if !(0.0..=1.0).contains(&self.lecam_ema_decay) {
            return Err(invalid!("losses.lecam_ema_decay must be in [0, 1], got {}", self.lecam_ema_decay));
        }
        Ok(())
    }
}

/// The generator step's loss (`total`, on the autograd graph of the reconstruction) and its loss-dict values.
#[derive(Debug, Clone)]
pub struct GeneratorLoss {
    pub total: Tensor,
    /// reconstruction_weight * mse (or l1)
    pub reconstruction: Tensor,
    /// perceptual_weight * perceptual
    pub perceptual: Tensor,
    pub perceptual_unweighted: Tensor,
    /// quantizer_weight * quantizer_loss
    pub quantizer: Tensor,
    /// -mean(D(recon)); 0 while the discriminator is off
    pub gan: Tensor,
    /// d_weight * discriminator_factor * gan
    pub weighted_gan: Tensor,
    pub discriminator_factor: f64,
    pub d_weight: f64,
    pub perceptual_logits_input: Tensor,
    pub perceptual_logits_recon: Tensor,
    /// D(recon), (B, 1, 16, 16), when the discriminator ran.
    pub disc_logits_fake: Option<Tensor>,
}

/// The discriminator step's loss (`total`, on the graph of the discriminator's parameters) and its parts.
#[derive(Debug, Clone)]
pub struct DiscriminatorLoss {
    pub total: Tensor,
    /// discriminator_factor * hinge
    pub hinge: Tensor,
    pub lecam: Tensor,
    pub lecam_unweighted: Tensor,
    pub logits_real: Tensor,
    pub logits_fake: Tensor,
    pub mean_real: f32,
    pub mean_fake: f32,
}

#[derive(Debug)]
pub struct Stage2Loss {
    cfg: Stage2LossConfig,
    perceptual: PerceptualLoss,
    discriminator: NLayerDiscriminator,
    discriminator_params: Vec<(String, Var)>,
    lecam: LecamEma,
}

impl Stage2Loss {
    /// `discriminator_params` are the trainable discriminator's parameters (see
    /// [`NLayerDiscriminator::new_trainable`]); the LeCam EMAs start at 0, as the reference's buffers.
    pub fn new(
        cfg: Stage2LossConfig,
        perceptual: PerceptualLoss,
        discriminator: NLayerDiscriminator,
        discriminator_params: Vec<(String, Var)>,
    ) -> Result<Self> {
        cfg.validate()?;
        Ok(Self { cfg, perceptual, discriminator, discriminator_params, lecam: LecamEma::default() })
    }

    /// Loads the perceptual ConvNeXt (torchvision keys) and the discriminator (reference keys) strictly.
    pub fn load(
        cfg: Stage2LossConfig,
        perceptual_weights: impl AsRef<std::path::Path>,
        discriminator_weights: impl AsRef<std::path::Path>,
        device: &Device,
    ) -> Result<Self> {
        cfg.validate()?;
        let perceptual = PerceptualLoss::load(&cfg.perceptual_convnext, perceptual_weights, device)?;
        let (d, params) = NLayerDiscriminator::load_trainable(&cfg.discriminator, discriminator_weights, device)?;
        Self::new(cfg, perceptual, d, params)
    }

    pub fn config(&self) -> &Stage2LossConfig {
        &self.cfg
    }

    pub fn perceptual(&self) -> &PerceptualLoss {
        &self.perceptual
    }

    pub fn discriminator(&self) -> &NLayerDiscriminator {
        &self.discriminator
    }

    /// The discriminator optimizer's parameters, in the reference's `named_parameters()` order.
    pub fn discriminator_params(&self) -> &[(String, Var)] {
        &self.discriminator_params
    }

    pub fn lecam(&self) -> LecamEma {
        self.lecam
    }

    /// Restores the LeCam EMAs (from a checkpoint, see [`LecamEma::from_state`]).
    pub fn set_lecam(&mut self, ema: LecamEma) {
        self.lecam = ema;
    }

    /// `discriminator_factor` from `discriminator_start` on, 0 before.
    pub fn discriminator_factor(&self, global_step: u64) -> f64 {
        if global_step >= self.cfg.discriminator_start {
            self.cfg.discriminator_factor
        } else {
            0.0
        }
    }

    fn check_pair(x: &Tensor, recon: &Tensor) -> Result<()> {
        if x.dims() != recon.dims() || x.rank() != 4 {
            return Err(shape_mismatch!(
                "stage-2 loss needs images and reconstructions of one (B, 3, H, W) shape, got {:?} and {:?}",
                x.dims(),
                recon.dims()
            ));
        }
        Ok(())
    }

    /// The generator loss of `recon` (the decoder output, unclamped) against the images `x` in [0, 1];
    /// `quantizer_loss` is the model's (0 at stage 2, where the frozen quantizer's losses are zeroed).
    pub fn generator(&self, x: &Tensor, recon: &Tensor, global_step: u64, quantizer_loss: &Tensor) -> Result<GeneratorLoss> {
        Self::check_pair(x, recon)?;
        let x = x.detach();
        let diff = (&x - recon)?;
        let reconstruction = match self.cfg.reconstruction_loss.as_str() {
            "l1" => diff.abs()?.mean_all()?,
            _ => diff.sqr()?.mean_all()?,
        };
        let reconstruction = (reconstruction * self.cfg.reconstruction_weight)?;
        let p = self.perceptual.forward(&x, recon)?;
        let perceptual = (&p.loss * self.cfg.perceptual_weight)?;
        let quantizer = (quantizer_loss * self.cfg.quantizer_weight)?;
        let factor = self.discriminator_factor(global_step);
        let d_weight = self.cfg.discriminator_weight;
        let (gan, disc_logits_fake) = if factor > 0.0 && d_weight > 0.0 {
            let logits = self.discriminator.frozen().forward(recon)?;
            (hinge_generator_loss(&logits)?, Some(logits))
        } else {
            (Tensor::new(0f32, recon.device())?.to_dtype(recon.dtype())?, None)
        };
        // The reference's python doubles: d_weight * factor is one double, then one float32 multiply.
        let weighted_gan = (&gan * (d_weight * factor))?;
        let total = (((&reconstruction + &perceptual)? + &quantizer)? + &weighted_gan)?;
        Ok(GeneratorLoss {
            total,
            reconstruction,
            perceptual,
            perceptual_unweighted: p.loss,
            quantizer,
            gan,
            weighted_gan,
            discriminator_factor: factor,
            d_weight,
            perceptual_logits_input: p.logits_input,
            perceptual_logits_recon: p.logits_target,
            disc_logits_fake,
        })
    }

    /// The discriminator loss on `x` (real) and `recon` (fake, detached: nothing reaches the generator), then the
    /// LeCam EMA update (with the EMAs from before the step in the loss, as the reference).
    pub fn discriminator_step(&mut self, x: &Tensor, recon: &Tensor, global_step: u64) -> Result<DiscriminatorLoss> {
        Self::check_pair(x, recon)?;
        let logits_real = self.discriminator.forward(&x.detach())?;
        let logits_fake = self.discriminator.forward(&recon.detach())?;
        let factor = self.discriminator_factor(global_step);
        let hinge = (hinge_discriminator_loss(&logits_real, &logits_fake)? * factor)?;
        let mean_real_t = logits_real.mean_all()?;
        let mean_fake_t = logits_fake.mean_all()?;
        let (lecam, lecam_unweighted) = if self.cfg.lecam_regularization_weight > 0.0 {
            let unweighted = lecam_loss(&mean_real_t, &mean_fake_t, &self.lecam)?;
            ((&unweighted * self.cfg.lecam_regularization_weight)?, unweighted)
        } else {
            let zero = mean_real_t.zeros_like()?.detach();
            (zero.clone(), zero)
        };
        let total = (&hinge + &lecam)?;
        let mean_real = mean_real_t.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()?;
        let mean_fake = mean_fake_t.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()?;
        if self.cfg.lecam_regularization_weight > 0.0 {
            self.lecam.update(mean_real, mean_fake, self.cfg.lecam_ema_decay);
        }
        Ok(DiscriminatorLoss { total, hinge, lecam, lecam_unweighted, logits_real, logits_fake, mean_real, mean_fake })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An empty `losses` block gives the stage-2 yaml's values; unsupported or negative settings are refused
    /// with a message naming the key.
    #[test]
    fn config_defaults_and_validation() {
        let cfg = Stage2LossConfig::default();
        assert_eq!((cfg.discriminator_start, cfg.discriminator_weight, cfg.perceptual_weight), (20_000, 0.01, 0.1));
        assert_eq!((cfg.lecam_regularization_weight, cfg.lecam_ema_decay), (0.001, 0.999));
        assert_eq!(cfg.perceptual_convnext, ConvNextConfig::small());
        assert_eq!(cfg.discriminator.hidden_channels, 128);
        cfg.validate().unwrap();
        for (json, key) in [
            (r#"{"perceptual_loss": "lpips-convnext_s-1.0-0.1"}"#, "perceptual_loss"),
            (r#"{"reconstruction_loss": "l3"}"#, "reconstruction_loss"),
            (r#"{"discriminator_weight": -0.01}"#, "discriminator_weight"),
            (r#"{"lecam_ema_decay": 1.5}"#, "lecam_ema_decay"),
        ] {
            let bad: Stage2LossConfig = serde_json::from_str(json).unwrap();
            let err = bad.validate().unwrap_err();
            assert_eq!(err.code(), "MARVEL_INVALID_ARGUMENT");
            assert!(err.to_string().contains(key), "{err}");
        }
    }
}
