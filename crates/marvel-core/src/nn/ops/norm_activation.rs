//! The activation a GroupNorm node may carry (`group_norm.rs`), and the per-channel passes of that node as
//! kernels of the `nn::kernels` layer.
//!
//! Every GroupNorm of the VQGAN's pixel decoder feeds a SiLU and every one of the discriminator a LeakyReLU. As
//! separate nodes, the norm's output was a fresh full-size tensor kept for the activation's backward, and
//! candle's SiLU made its forward with libm's `expf` one value at a time and its backward with ~8 full-size
//! tensor ops (σ, 1 - σ, products, the gradient store's adds), each freshly allocated: in a 1-thread profile of
//! the stage-2 decoder's forward + backward that was ~15% (`expf`, `unary_map` and their page faults). Here the
//! activation is applied where the norm's output is made and differentiated where the norm's backward reads its
//! output gradient, recomputing the norm's output from the input (the same `mul_add`, so the same bits).
//!
//! The affine pass was also a scalar `mul_add` outside any dispatched kernel, which on the x86-64 baseline is a
//! call to libm's `fmaf` per value (~2% of the step); compiled per level it is one FMA instruction, same bits.

use crate::nn::kernels::{dispatch, math::exp};

/// What follows the norm inside the node.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Activation {
    None,
    /// `z / (1 + exp(-z))`, torch's (vectorised) SiLU.
    Silu,
    /// `max(z, slope·z)`, the discriminator's LeakyReLU, with the standalone node's arithmetic
    /// (`leaky_relu.rs`), so the same bits as the two nodes composed.
    LeakyRelu(f32),
}

/// σ(z) = 1 / (1 + e^-z).
#[inline(always)]
fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + exp(-z))
}

/// The activation's value at z.
#[inline(always)]
fn apply(act: Activation, z: f32) -> f32 {
    match act {
        Activation::None => z,
        Activation::Silu => z / (1.0 + exp(-z)),
        Activation::LeakyRelu(slope) => super::leaky_relu::forward_one(slope, z).0,
    }
}

/// dy times the activation's derivative at z. SiLU: σ(z)·(1 + z·(1 - σ(z))).
#[inline(always)]
fn grad(act: Activation, z: f32, dy: f32) -> f32 {
    match act {
        Activation::None => dy,
        Activation::Silu => {
            let s = sigmoid(z);
            dy * (s * z.mul_add(1.0 - s, 1.0))
        }
        Activation::LeakyRelu(slope) => super::leaky_relu::backward_one(slope, z, dy),
    }
}

dispatch! {
    /// y ← act(x·scale + shift), the product and sum rounded once (`mul_add`).
    pub(super) fn affine_activation(y: &mut [f32], x: &[f32], scale: f32, shift: f32, act: Activation) {
        // One loop per activation, so that each is a branch-free loop the compiler vectorises.
        match act {
            Activation::None => y.iter_mut().zip(x).for_each(|(y, &x)| *y = x.mul_add(scale, shift)),
            Activation::Silu => {
                y.iter_mut().zip(x).for_each(|(y, &x)| *y = apply(Activation::Silu, x.mul_add(scale, shift)))
            }
            Activation::LeakyRelu(_) => y.iter_mut().zip(x).for_each(|(y, &x)| *y = apply(act, x.mul_add(scale, shift))),
        }
    }
}

dispatch! {
    /// dz ← dy · act'(z) with z = x·scale + shift as [`affine_activation`] makes it: the gradient at the norm's
    /// output.
    pub(super) fn activation_grad(dz: &mut [f32], x: &[f32], dy: &[f32], scale: f32, shift: f32, act: Activation) {
        match act {
            Activation::None => dz.copy_from_slice(dy),
            Activation::Silu => dz.iter_mut().zip(x.iter().zip(dy)).for_each(|(d, (&x, &dy))| {
                *d = grad(Activation::Silu, x.mul_add(scale, shift), dy)
            }),
            Activation::LeakyRelu(_) => dz.iter_mut().zip(x.iter().zip(dy)).for_each(|(d, (&x, &dy))| {
                *d = grad(act, x.mul_add(scale, shift), dy)
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values over both signs and SiLU's curved part, 0 included (LeakyReLU's tie), in rows not a multiple of any
    /// vector width.
    fn inputs(n: usize, seed: usize) -> Vec<f32> {
        (0..n).map(|i| ((i * 7919 + seed * 104_729) % 1801) as f32 * 0.01 - 9.0).collect()
    }

    const ACTIVATIONS: [Activation; 3] = [Activation::None, Activation::Silu, Activation::LeakyRelu(0.1)];

    /// Against f64: SiLU and its derivative to within 1e-6 (relative above 1); the identity and LeakyReLU exactly as the
    /// plain expressions (LeakyReLU's tie at 0 halves the gradient between its two operands, as candle's maximum).
    #[test]
    fn kernels_match_f64() {
        let (x, dy) = (inputs(1003, 1), inputs(1003, 2));
        let (scale, shift) = (0.9f32, 0.05f32);
        for act in ACTIVATIONS {
            let mut y = vec![0f32; x.len()];
            let mut dz = vec![0f32; x.len()];
            affine_activation(&mut y, &x, scale, shift, act);
            activation_grad(&mut dz, &x, &dy, scale, shift, act);
            for i in 0..x.len() {
                let z = x[i].mul_add(scale, shift);
                let zf = f64::from(z);
                let s = 1.0 / (1.0 + (-zf).exp());
                let (want_y, want_d) = match act {
                    Activation::None => (zf, f64::from(dy[i])),
                    Activation::Silu => (zf * s, f64::from(dy[i]) * s * (1.0 + zf * (1.0 - s))),
                    Activation::LeakyRelu(a) => {
                        let a = f64::from(a);
                        let d = if z > 0.0 {
                            1.0
                        } else if z < 0.0 {
                            a
                        } else {
                            0.5 + 0.5 * a
                        };
                        (zf.max(a * zf), f64::from(dy[i]) * d)
                    }
                };
                // SiLU's derivative as torch writes it, σ·(1 + z·(1 - σ)): 1 - σ cancels for large z, ~1e-4 relative
                // at z = 7, scaled down by z·(1 - σ) to a few 1e-7 of the result.
                let tol = |w: f64| if act == Activation::Silu { 1e-6 * w.abs().max(1.0) } else { 1e-7 * w.abs() };
                assert!((f64::from(y[i]) - want_y).abs() <= tol(want_y), "{act:?} y at {z}: {} vs {want_y}", y[i]);
                assert!((f64::from(dz[i]) - want_d).abs() <= tol(want_d), "{act:?} dz at {z}: {} vs {want_d}", dz[i]);
            }
        }
    }

    // Each kernel at each level against the baseline, bit for bit.
    crate::nn::kernels::at_every_level!(kernels_match_the_baseline_at_every_level, |level| {
        use crate::nn::kernels::{assert_same_bits, at_baseline_and};
        let (x, dy) = (inputs(1003, 3), inputs(1003, 4));
        for act in ACTIVATIONS {
            let (want, got) = at_baseline_and(level, || {
                let mut y = vec![0f32; x.len()];
                affine_activation(&mut y, &x, 0.37, -1.5, act);
                y
            });
            assert_same_bits(level, &want, &got, &format!("affine_activation {act:?}"));
            let (want, got) = at_baseline_and(level, || {
                let mut dz = vec![0f32; x.len()];
                activation_grad(&mut dz, &x, &dy, 0.37, -1.5, act);
                dz
            });
            assert_same_bits(level, &want, &got, &format!("activation_grad {act:?}"));
        }
    });
}
