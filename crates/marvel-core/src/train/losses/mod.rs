//! Training losses. Stage 2 of the two-stage TiTok (the reference's `ReconstructionLoss_Stage2`): pixel
//! reconstruction + ConvNeXt perceptual + hinge GAN for the generator, hinge + LeCam for the discriminator.

pub mod gan;
pub mod perceptual;
pub mod resize;
pub mod stage2;

pub use gan::{hinge_discriminator_loss, hinge_generator_loss, lecam_loss, LecamEma};
pub use perceptual::{PerceptualLoss, PerceptualOutput};
pub use resize::{antialias_bilinear_weights, resize_bilinear_antialias};
pub use stage2::{DiscriminatorLoss, GeneratorLoss, Stage2Loss, Stage2LossConfig};

#[cfg(test)]
mod parity_tests;
