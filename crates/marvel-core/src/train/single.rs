//! The `single` recipe (the reference's `ReconstructionLoss_Single`, modeling/modules/losses.py): the
//! non-legacy layout decodes pixels directly, and the whole model trains on
//! reconstruction_weight * mean((x - recon)²) + quantizer_weight * quantizer loss, where the quantizer loss is
//! commitment + codebook for VQ and commitment + entropy (over the depths depth dropout draws) for LFQ.
//! The reference's optional perceptual and GAN terms are not wired into this recipe yet, so a config that turns
//! them on is refused rather than trained without them.

use candle_core::Tensor;

use crate::error::{MarvelError, Result};
use crate::model::titok::Titok;
use crate::quantize::lfq::SplitMix64;
use crate::quantize::Quantizer;
use crate::train::recipe::{Batch, Recipe, RecipeKind, RecipeLoss};
use crate::train::settings::TrainConfig;

#[derive(Debug)]
pub struct SingleRecipe {
    reconstruction_weight: f64,
    quantizer_weight: f64,
}

fn scalar(t: &Tensor) -> Result<f32> {
    Ok(t.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()?)
}

impl SingleRecipe {
    pub fn new(cfg: &TrainConfig) -> Result<Self> {
        let refuse = |msg: String| Err(MarvelError::Config(format!("recipe single: {msg}")));
        if cfg.model.is_legacy {
            return refuse("it trains the non-legacy layout (pixels from the decoder); model.vq_model.is_legacy is true".into());
        }
        let l = &cfg.losses;
        if l.reconstruction_loss != "l2" {
            return refuse(format!("losses.reconstruction_loss: only \"l2\" is supported, got {:?}", l.reconstruction_loss));
        }
        if l.perceptual_weight != 0.0 {
            return refuse(format!(
                "losses.perceptual_weight = {} asks for the perceptual loss, which this recipe does not include yet; \
                 set it to 0",
                l.perceptual_weight
            ));
        }
        if l.discriminator_weight != 0.0 {
            return refuse(format!(
                "losses.discriminator_weight = {} asks for the GAN loss, which this recipe does not include yet; \
                 set it to 0",
                l.discriminator_weight
            ));
        }
        Ok(Self { reconstruction_weight: l.reconstruction_weight, quantizer_weight: l.quantizer_weight })
    }
}

impl Recipe for SingleRecipe {
    fn kind(&self) -> RecipeKind {
        RecipeKind::Single
    }

    fn trainable(&self, _name: &str) -> bool {
        true
    }

    fn loss(&mut self, model: &Titok, batch: &Batch, rng: &mut SplitMix64) -> Result<RecipeLoss> {
        if batch.proxy_codes.is_some() {
            return Err(crate::invalid!("the single recipe trains on pixels and takes no proxy codes"));
        }
        let x = batch.images;
        let z = model.encode_latent(x)?;
        let mut components = Vec::new();
        let (z_q, quantizer_loss) = match model.quantizer() {
            Quantizer::Lfq(lfq) => {
                let out = lfq.forward_train(&z, rng)?;
                components.push(("commitment_loss".to_string(), scalar(&out.losses.commitment)?));
                components.push(("entropy_loss".to_string(), scalar(&out.losses.entropy)?));
                components.push(("train_depths".to_string(), out.depth as f32));
                (out.codes.z_q, out.losses.total)
            }
            Quantizer::Vq(vq) => {
                let out = vq.forward(&z)?;
                components.push(("commitment_loss".to_string(), scalar(&out.commitment_loss)?));
                components.push(("codebook_loss".to_string(), scalar(&out.codebook_loss)?));
                let loss = out.quantizer_loss()?;
                (out.z_q, loss)
            }
        };
        let recon = model.decode(&z_q)?;
        let reconstruction = ((x - &recon)?.sqr()?.mean_all()? * self.reconstruction_weight)?;
        let quantizer = (quantizer_loss * self.quantizer_weight)?;
        let total = (&reconstruction + &quantizer)?;
        components.insert(0, ("reconstruction_loss".to_string(), scalar(&reconstruction)?));
        components.insert(1, ("quantizer_loss".to_string(), scalar(&quantizer)?));
        Ok(RecipeLoss { total, components })
    }
}
