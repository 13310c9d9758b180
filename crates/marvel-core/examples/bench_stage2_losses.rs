//! Stage-2 loss cost at the released sizes on the CPU: the perceptual loss (torchvision ConvNeXt-S, 224x224)
//! forward and backward into the reconstruction, and the discriminator (H 128, 256x256) in both steps: the
//! generator's D(recon) with its backward into recon, and the discriminator's D(x), D(recon) with the backward
//! into its parameters. Weights are random (the cost does not depend on them). Prints JSON: median seconds per
//! call over RUNS calls (default 3) after one warm-up, at batch BATCH (default 1).
//!
//!     BATCH=1 RUNS=3 cargo run --release -p marvel-core --example bench_stage2_losses


use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use marvel_core::model::convnext::{ConvNext, ConvNextConfig};
use marvel_core::model::discriminator::{DiscriminatorConfig, NLayerDiscriminator};
use marvel_core::train::losses::{hinge_discriminator_loss, hinge_generator_loss, PerceptualLoss};
#[path = "common/mod.rs"]
mod common;
use common::try_median_secs;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}


/// Random weights of the right shapes: N(0, 0.02) for every tensor (norm weights included; the cost is the same).
fn random_builder(dev: &Device) -> (VarMap, VarBuilder<'static>) {
    let map = VarMap::new();
    let vb = VarBuilder::from_varmap(&map, DType::F32, dev);
    (map, vb)
}

fn main() -> marvel_core::Result<()> {
    let dev = Device::Cpu;
    let (b, runs) = (env_usize("BATCH", 1), env_usize("RUNS", 3));
    let x = Tensor::rand(0f32, 1., (b, 3, 256, 256), &dev)?;
    let recon = Var::from_tensor(&Tensor::rand(0f32, 1., (b, 3, 256, 256), &dev)?)?;

    let (map, vb) = random_builder(&dev);
    let convnext = ConvNext::new(&ConvNextConfig::small(), vb)?;
    randomize(&map)?;
    // Plain tensors, as a loaded checkpoint gives: the weights get no gradient.
    let perceptual = PerceptualLoss::new(convnext);
    let perceptual_fwd = try_median_secs(runs, || perceptual.forward(&x, recon.as_tensor()).map(|_| ()))?;
    let perceptual_fwd_bwd = try_median_secs(runs, || {
        let p = perceptual.forward(&x, recon.as_tensor())?;
        p.loss.backward()?;
        Ok(())
    })?;

    let (map, vb) = random_builder(&dev);
    let (d, params) = NLayerDiscriminator::new_trainable(&DiscriminatorConfig::default(), vb)?;
    randomize(&map)?;
    let frozen = d.frozen();
    let generator_d = try_median_secs(runs, || {
        hinge_generator_loss(&frozen.forward(recon.as_tensor())?)?.backward()?;
        Ok(())
    })?;
    let discriminator_step = try_median_secs(runs, || {
        let loss = hinge_discriminator_loss(&d.forward(&x)?, &d.forward(&recon.as_tensor().detach())?)?;
        let grads = loss.backward()?;
        assert!(params.iter().all(|(_, v)| grads.get(v.as_tensor()).is_some()));
        Ok(())
    })?;
    println!(
        "{{\"batch\": {b}, \"runs\": {runs}, \"threads\": {}, \"seconds\": {{\"perceptual_forward\": {perceptual_fwd:.3}, \
         \"perceptual_forward_backward\": {perceptual_fwd_bwd:.3}, \"generator_discriminator_forward_backward\": \
         {generator_d:.3}, \"discriminator_step_forward_backward\": {discriminator_step:.3}}}}}",
        rayon::current_num_threads()
    );
    Ok(())
}

fn randomize(map: &VarMap) -> marvel_core::Result<()> {
    for var in map.all_vars() {
        var.set(&Tensor::randn(0f32, 0.02, var.dims(), var.device())?)?;
    }
    Ok(())
}
