//! The CPU side of the fused LFQ ops, against the paths they replace on a GPU: the pass is bit-identical to
//! `codes::quantize_in_place`, the streaming entropy matches the composite estimate and its gradient.

use candle_core::{Device, Tensor, Var};

use super::super::{codes, entropy, LfqConfig, ResidualLfq, SplitMix64};
use super::*;

fn latents(rng: &mut SplitMix64, n: usize, spread: f64) -> Vec<f32> {
    (0..n).map(|_| ((rng.next_f64() * 2.0 - 1.0) * spread) as f32).collect()
}

#[test]
fn the_pass_is_bit_identical_to_the_cpu_loop_including_zero_and_nan() {
    let mut rng = SplitMix64::new(7);
    for (bits, depths) in [(12, 4), (1, 3), (5, 23), (32, 2), (16, 1)] {
        let mut z = latents(&mut rng, 37 * bits, 1.5);
        z[0] = 0.0;
        z[bits + 1] = f32::NAN;
        z[2 * bits] = -0.0;
        let (r, q, tokens, cum) = residuals_host(&z, bits, depths);
        let mut want_cum = z.clone();
        let mut want_tokens = vec![0u32; 37 * depths];
        let mut want_q = vec![0f32; depths * z.len()];
        codes::quantize_in_place(&mut want_cum, bits, depths, &mut want_tokens, Some(&mut want_q));
        assert_eq!(tokens, want_tokens, "bits {bits} depths {depths}");
        let same = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
        assert!(same(&cum, &want_cum) && same(&q, &want_q), "bits {bits} depths {depths}");
        // r_s = z - (q_0 + ... + q_{s-1}), the CPU path's residual.
        let plane = z.len();
        let mut before = vec![0f32; plane];
        for s in 0..depths {
            for i in 0..plane {
                let want = z[i] - before[i];
                assert!(want.to_bits() == r[s * plane + i].to_bits() || (want.is_nan() && r[s * plane + i].is_nan()));
                before[i] += q[s * plane + i];
            }
        }
    }
}

#[test]
fn residuals_pass_the_gradient_straight_through_every_depth() {
    let mut rng = SplitMix64::new(3);
    let z = Var::from_tensor(&Tensor::from_vec(latents(&mut rng, 6 * 4, 1.0), (6, 4), &Device::Cpu).unwrap()).unwrap();
    let (r, pass) = residuals(z.as_tensor(), 4, 3).unwrap();
    assert_eq!(r.dims(), [3, 6, 4]);
    assert_eq!(pass.tokens.dims(), [6, 3]);
    let w = Tensor::new(&[1f32, 10.0, 100.0], &Device::Cpu).unwrap().reshape((3, 1, 1)).unwrap();
    let grads = r.broadcast_mul(&w).unwrap().sum_all().unwrap().backward().unwrap();
    let g = grads.get(z.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert!(g.iter().all(|&v| v == 111.0), "{g:?}");
}

fn composite_and_fused(r: &[f32], rows: usize, bits: usize, groups: usize, tau: f64) -> [(f32, Vec<f32>); 2] {
    let run = |fused: bool| {
        let v = Var::from_tensor(&Tensor::from_vec(r.to_vec(), (rows, bits), &Device::Cpu).unwrap()).unwrap();
        let t = if fused {
            entropy_terms_fused(v.as_tensor(), groups, tau, 1.0).unwrap()
        } else {
            entropy::entropy_terms(v.as_tensor(), groups, tau, 1.0).unwrap()
        };
        // Unequal weights, so a swapped or mis-signed term shows in the gradient.
        let loss = ((&t.per_sample * 0.7).unwrap() - (&t.avg * 1.3).unwrap()).unwrap();
        let g = loss.backward().unwrap().get(v.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        (loss.to_scalar::<f32>().unwrap(), g)
    };
    [run(false), run(true)]
}

fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2)).sum();
    let den: f64 = b.iter().map(|&y| f64::from(y).powi(2)).sum();
    (num / den.max(1e-300)).sqrt()
}

#[test]
fn fused_entropy_matches_the_composite_estimate_and_its_gradient() {
    let mut rng = SplitMix64::new(11);
    // MDQ's tau 0.01 with residual sizes of the first and a later depth, then a soft temperature where every code
    // carries probability (the clamp inactive) and the gradient is dense.
    for (bits, groups, tau, spread) in [(8, 1, 0.01, 1.0), (10, 2, 0.01, 0.05), (6, 3, 1.0, 1.0), (12, 1, 0.01, 0.01)] {
        let rows = 48;
        let r = latents(&mut rng, rows * bits, spread);
        let [(want, want_g), (got, got_g)] = composite_and_fused(&r, rows, bits, groups, tau);
        let scale = want.abs().max(1e-3);
        assert!(((got - want) / scale).abs() < 1e-4, "bits {bits} tau {tau}: fused {got} composite {want}");
        let e = rel_l2(&got_g, &want_g);
        assert!(e < 1e-3, "bits {bits} tau {tau}: gradient rel-L2 {e}");
    }
}

#[test]
fn fused_entropy_gradient_matches_finite_differences() {
    let mut rng = SplitMix64::new(5);
    let (rows, width, inv_tau) = (5, 4, 2.0);
    let r = latents(&mut rng, rows * width, 0.8);
    let (gs, ga) = (0.6, -1.7);
    let f = |r: &[f32]| {
        let (s, a, _) = entropy_forward_host(r, width, inv_tau);
        gs * s + ga * a
    };
    let (_, _, h) = entropy_forward_host(&r, width, inv_tau);
    let g = entropy_backward_host(&r, width, inv_tau, &h, gs, ga);
    // Steps of 2^-10 are exact in f32 at these magnitudes, so the difference quotient sees only the function.
    let step = 1.0 / 1024.0;
    for i in 0..r.len() {
        let (mut up, mut down) = (r.clone(), r.clone());
        up[i] += step;
        down[i] -= step;
        let fd = (f(&up) - f(&down)) / (2.0 * f64::from(step));
        assert!((fd - f64::from(g[i])).abs() < 1e-4 * fd.abs().max(1.0), "element {i}: fd {fd} analytic {}", g[i]);
    }
}

#[test]
fn the_gpu_wiring_of_the_quantizer_gives_the_cpu_results_on_the_cpu() {
    let mut rng = SplitMix64::new(19);
    let mut cfg = LfqConfig::mdq(12, 4);
    cfg.entropy_groups = Some(2);
    let lfq = ResidualLfq::from_config(cfg).unwrap();
    let z = Tensor::from_vec(latents(&mut rng, 3 * 8 * 12, 1.0), (3, 8, 12), &Device::Cpu).unwrap();
    let (want, want_l) = lfq.run(&z, 3, true).unwrap();
    let (got, got_l) = lfq.run_fused(&z, super::super::Layout::ChannelsLast, 3, true).unwrap();
    let v = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let ids = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<u32>().unwrap();
    assert_eq!(ids(&got.tokens), ids(&want.tokens));
    assert_eq!(v(&got.cum), v(&want.cum));
    assert_eq!(v(&got.z_q), v(&want.z_q));
    let (a, b) = (want_l.unwrap(), got_l.unwrap());
    for (x, y) in [(&a.total, &b.total), (&a.commitment, &b.commitment), (&a.entropy, &b.entropy)] {
        assert_eq!(x.to_scalar::<f32>().unwrap(), y.to_scalar::<f32>().unwrap());
    }
}
