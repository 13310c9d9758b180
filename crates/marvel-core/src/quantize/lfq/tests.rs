//! Tests of the residual LFQ: parity with MDQ (fixture `marvel_lfq`), properties over random inputs, gradients,
//! and an ignored throughput probe for `bench/`.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarBuilder;

use super::codes::{fill_code, index_of_signs};
use super::entropy::MAX_ENTROPY_ELEMENTS;
use super::*;
use crate::testutil::{max_abs_diff, Fixture};
use crate::tokens::bytes::{tokens_from_bytes, tokens_to_bytes};

const CPU: Device = Device::Cpu;

/// Standard normal draws (Box-Muller) from the quantizer's own seeded generator.
fn normals(rng: &mut SplitMix64, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let (u, v) = (1.0 - rng.next_f64(), rng.next_f64());
            ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32 * scale
        })
        .collect()
}

fn lfq(bits: usize, depth: usize) -> ResidualLfq {
    ResidualLfq::from_config(LfqConfig::mdq(bits, depth)).unwrap()
}

fn scalar(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap()[0]
}

fn host(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn host_u32(t: &Tensor) -> Vec<u32> {
    t.flatten_all().unwrap().to_vec1::<u32>().unwrap()
}

// ---------------------------------------------------------------------------------------------- parity

#[test]
#[cfg_attr(not(marvel_parity), ignore = "parity fixtures not found at ../shared/parity or $MARVEL_PARITY_DIR")]
fn parity_tokens_and_depth_codes() {
    let fx = Fixture::load("marvel_lfq");
    let z = fx.expected("enc_latent"); // (3, 12, 1, 8), channels-first
    let q = lfq(12, 4);
    let out = q.quantize(z, 4).unwrap();
    let want: Vec<i64> = fx.expected("tokens").flatten_all().unwrap().to_vec1().unwrap(); // (3, 1, 8, 4)
    let got: Vec<i64> = out.tokens.to_dtype(DType::I64).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(out.tokens.dims(), [3, 8, 4]);
    assert_eq!(got, want, "tokens for 4 depths");
    for d in 1..=4 {
        let expected = fx.expected(&format!("z_q_depth{d}"));
        let cum = q.quantize(z, d).unwrap().cum;
        let decoded = to_channels_first(&q.codes_from_tokens(&out.tokens, d).unwrap()).unwrap();
        let (e_cum, e_dec) = (max_abs_diff(&cum, expected), max_abs_diff(&decoded, expected));
        eprintln!("marvel_lfq z_q_depth{d}: max abs err quantize {e_cum:e}, codes_from_tokens {e_dec:e}");
        assert!(e_cum <= 1e-5 && e_dec <= 1e-5);
    }
}

#[test]
#[cfg_attr(not(marvel_parity), ignore = "parity fixtures not found at ../shared/parity or $MARVEL_PARITY_DIR")]
fn parity_mdq_two_depth_forward() {
    let fx = Fixture::load("marvel_lfq");
    let out = lfq(12, 4).quantize(fx.expected("enc_latent"), 2).unwrap();
    let want: Vec<i64> = fx.expected("lfq2_tokens").flatten_all().unwrap().to_vec1().unwrap();
    let got: Vec<i64> = out.tokens.to_dtype(DType::I64).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(got, want);
    let err = max_abs_diff(&out.z_q, fx.expected("lfq2_z_q"));
    eprintln!("marvel_lfq lfq2_z_q: max abs err {err:e}");
    assert!(err <= 1e-5);
}

#[test]
#[cfg_attr(not(marvel_parity), ignore = "parity fixtures not found at ../shared/parity or $MARVEL_PARITY_DIR")]
fn parity_mdq_two_depth_losses() {
    let fx = Fixture::load("marvel_lfq");
    let losses = lfq(12, 4).losses(fx.expected("enc_latent"), 2).unwrap();
    for (name, got) in [
        ("lfq2_commitment_loss", &losses.commitment),
        ("lfq2_entropy_loss", &losses.entropy),
        ("lfq2_per_sample_entropy", &losses.per_sample_entropy),
        ("lfq2_avg_entropy", &losses.avg_entropy),
        ("lfq2_quantizer_loss", &losses.total),
    ] {
        let (got, want) = (scalar(got), scalar(fx.expected(name)));
        let rel = (got - want).abs() / want.abs();
        eprintln!("marvel_lfq {name}: got {got:.9e} want {want:.9e} rel err {rel:.3e}");
        assert!(rel <= 1e-5, "{name}");
    }
}

#[test]
#[cfg_attr(not(marvel_parity), ignore = "parity fixtures not found at ../shared/parity or $MARVEL_PARITY_DIR")]
fn parity_checkpoint_buffers_are_checked() {
    let fx = Fixture::load("marvel_lfq");
    let weights = candle_core::safetensors::load(fx.dir.join("model.safetensors"), &CPU).unwrap();
    assert_eq!(weights["quantize.bits_to_indices"].dtype(), DType::I32);
    let vb = VarBuilder::from_tensors(weights, DType::F32, &CPU);
    ResidualLfq::new(LfqConfig::mdq(12, 4), vb.pp("quantize")).unwrap();
    let err = ResidualLfq::new(LfqConfig::mdq(10, 4), vb.pp("quantize")).unwrap_err();
    assert_eq!(err.code(), "MARVEL_CHECKPOINT");
    assert!(err.to_string().contains("quantize.codebook"), "{err}");
}

// ---------------------------------------------------------------------------------------------- properties

/// Random (B, N, bits) inputs of assorted sizes and magnitudes, with some exact zeros (sign(0) = -1).
fn random_case(seed: u64) -> (usize, usize, Tensor) {
    let mut rng = SplitMix64::new(seed);
    let bits = 1 + rng.below(16) as usize;
    let depth = 1 + rng.below(6) as usize;
    let (b, n) = (1 + rng.below(3) as usize, 1 + rng.below(9) as usize);
    let scale = [0.05f32, 0.5, 1.0, 3.0][rng.below(4) as usize];
    let mut z = normals(&mut rng, b * n * bits, scale);
    for v in z.iter_mut() {
        if rng.below(10) == 0 {
            *v = 0.0;
        }
    }
    (bits, depth, Tensor::from_vec(z, (b, n, bits), &CPU).unwrap())
}

#[test]
fn each_depth_adds_signed_powers_of_two_matching_its_token() {
    for seed in 0..200 {
        let (bits, depth, z) = random_case(seed);
        let q = lfq(bits, depth);
        let zh = host(&z);
        let all = q.quantize(&z, depth).unwrap();
        let tokens = host_u32(&all.tokens);
        let mut prev = vec![0f32; zh.len()];
        for d in 1..=depth {
            let cum = host(&q.quantize(&z, d).unwrap().cum);
            let scale = 0.5f32.powi(d as i32 - 1);
            for (i, ((&c, &p), &zi)) in cum.iter().zip(&prev).zip(&zh).enumerate() {
                let step = c - p;
                assert!(step == scale || step == -scale, "seed {seed} depth {d}: step {step}");
                assert_eq!(step > 0.0, zi - p > 0.0, "seed {seed}: sign of the residual");
                let token = tokens[(i / bits) * depth + d - 1];
                assert_eq!((token >> (i % bits)) & 1 == 1, step > 0.0, "seed {seed}: token bit");
            }
            prev = cum;
        }
    }
}

#[test]
fn indices_round_trip_through_sign_codes() {
    let mut rng = SplitMix64::new(7);
    for bits in 1..=32usize {
        for _ in 0..100 {
            let index = (rng.next_u64() & ((1u64 << bits) - 1)) as u32;
            let mut code = vec![0f32; bits];
            fill_code(&mut code, index, 0.25);
            assert_eq!(index_of_signs(&code), index, "{bits} bits");
        }
    }
    for seed in 0..100 {
        let (bits, depth, z) = random_case(seed);
        let q = lfq(bits, depth);
        let tokens = q.quantize(&z, depth).unwrap().tokens;
        for d in 1..=depth {
            let cum = q.quantize(&z, d).unwrap().cum;
            assert_eq!(host(&q.codes_from_tokens(&tokens, d).unwrap()), host(&cum), "seed {seed} depth {d}");
        }
    }
}

#[test]
fn residual_bound_halves_with_each_depth() {
    // Per element, |z - cum_d| is *not* monotone (a residual of 0.1 becomes 0.4 after the +-0.5 step); what holds
    // for |z| <= 2 is the bound |z - cum_d| <= 2^(1-d), halving per depth, and a shrinking mean error.
    for seed in 0..50 {
        let mut rng = SplitMix64::new(1000 + seed);
        let bits = 1 + rng.below(16) as usize;
        let z: Vec<f32> = (0..64 * bits).map(|_| (rng.next_f64() * 4.0 - 2.0) as f32).collect();
        let zt = Tensor::from_vec(z.clone(), (4, 16, bits), &CPU).unwrap();
        let q = lfq(bits, 8);
        let mut last_mean = f64::INFINITY;
        for d in 1..=8 {
            let cum = host(&q.quantize(&zt, d).unwrap().cum);
            let bound = 2f32.powi(1 - d as i32);
            let err: Vec<f32> = z.iter().zip(&cum).map(|(a, b)| (a - b).abs()).collect();
            assert!(err.iter().all(|&e| e <= bound), "seed {seed} depth {d}");
            let mean = err.iter().map(|&e| e as f64).sum::<f64>() / err.len() as f64;
            assert!(mean < last_mean, "seed {seed} depth {d}: mean error {mean} after {last_mean}");
            last_mean = mean;
        }
    }
}

#[test]
fn channels_first_input_matches_channels_last() {
    for seed in 0..20 {
        let (bits, depth, z) = random_case(seed);
        let q = lfq(bits, depth);
        let last = q.quantize(&z, depth).unwrap();
        let first = q.quantize(&to_channels_first(&z).unwrap(), depth).unwrap();
        assert_eq!(first.z_q.dims()[1..], [bits, 1, z.dim(1).unwrap()]);
        assert_eq!(host_u32(&first.tokens), host_u32(&last.tokens));
        assert_eq!(host(&to_channels_last(&first.z_q).unwrap()), host(&last.z_q));
    }
}

#[test]
fn straight_through_gradient_is_the_identity() {
    for seed in 0..20 {
        let (bits, depth, z) = random_case(seed);
        let q = lfq(bits, depth);
        let w =
            Tensor::from_vec(normals(&mut SplitMix64::new(seed + 99), z.elem_count(), 1.0), z.shape(), &CPU).unwrap();
        for channels_first in [false, true] {
            let var = Var::from_tensor(&z).unwrap();
            let input =
                if channels_first { to_channels_first(var.as_tensor()).unwrap() } else { var.as_tensor().clone() };
            let mut z_q = q.quantize(&input, depth).unwrap().z_q;
            if channels_first {
                z_q = to_channels_last(&z_q).unwrap();
            }
            let grads = (z_q * &w).unwrap().sum_all().unwrap().backward().unwrap();
            assert_eq!(host(grads.get(&var).unwrap()), host(&w), "seed {seed}");
        }
    }
}

/// MDQ's losses recomputed in f64 straight from the formulas, for a small number of bits.
fn hand_losses(z: &[f32], bits: usize, depth: usize, cfg: &LfqConfig) -> [f64; 4] {
    let rows = z.len() / bits;
    let n_codes = 1usize << bits;
    let (mut commit, mut probs) = (0.0, Vec::new());
    for s in 0..depth {
        let mut mse = 0.0;
        for row in z.chunks(bits) {
            // cum before depth s, from the definition.
            let mut cum = vec![0f64; bits];
            for t in 0..s {
                for k in 0..bits {
                    let r = row[k] as f64 - cum[k];
                    cum[k] += if r > 0.0 { 1.0 } else { -1.0 } * 0.5f64.powi(t as i32);
                }
            }
            let r: Vec<f64> = (0..bits).map(|k| row[k] as f64 - cum[k]).collect();
            for &rk in &r {
                let qk = if rk > 0.0 { 1.0 } else { -1.0 } * 0.5f64.powi(s as i32);
                mse += (qk - rk).powi(2);
            }
            let logits: Vec<f64> = (0..n_codes)
                .map(|c| {
                    let dot: f64 = (0..bits).map(|k| r[k] * if (c >> k) & 1 == 1 { 1.0 } else { -1.0 }).sum();
                    2.0 * dot / cfg.entropy_loss_temperature
                })
                .collect();
            let m = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = logits.iter().map(|l| (l - m).exp()).collect();
            let sum: f64 = e.iter().sum();
            probs.push(e.iter().map(|v| v / sum).collect::<Vec<f64>>());
        }
        commit += cfg.commitment_cost * mse / (rows * bits) as f64;
    }
    commit /= depth as f64;
    let clog = |p: f64| p.max(1e-5).ln();
    let per_sample =
        -probs.iter().map(|p| p.iter().map(|&v| v * clog(v)).sum::<f64>()).sum::<f64>() / probs.len() as f64;
    let mean: Vec<f64> = (0..n_codes).map(|j| probs.iter().map(|p| p[j]).sum::<f64>() / probs.len() as f64).collect();
    let avg = -mean.iter().map(|&v| v * clog(v)).sum::<f64>() * cfg.entropy_gamma;
    [commit, per_sample, avg, cfg.entropy_loss_weight * (per_sample - avg)]
}

#[test]
fn losses_match_hand_computation_on_two_bits() {
    let z = [0.3f32, -0.7, 0.004, 0.02, -1.2, 0.9, 0.0, -0.05, 0.6, 0.25, -0.33, 0.11];
    for (tau, depth) in [(0.01, 2), (0.5, 1), (0.5, 3), (2.0, 2)] {
        let cfg = LfqConfig { entropy_loss_temperature: tau, entropy_gamma: 0.7, ..LfqConfig::mdq(2, 3) };
        let q = ResidualLfq::from_config(cfg.clone()).unwrap();
        let zt = Tensor::from_slice(&z, (2, 3, 2), &CPU).unwrap();
        let l = q.losses(&zt, depth).unwrap();
        let want = hand_losses(&z, 2, depth, &cfg);
        let got = [scalar(&l.commitment), scalar(&l.per_sample_entropy), scalar(&l.avg_entropy), scalar(&l.entropy)];
        for (name, (g, w)) in ["commitment", "per_sample", "avg", "entropy"].iter().zip(got.iter().zip(want)) {
            assert!((g - w).abs() <= 1e-5 * w.abs().max(1e-3), "tau {tau} depths {depth} {name}: {g} vs {w}");
        }
        assert!((scalar(&l.total) - want[0] - want[3]).abs() <= 1e-6);
    }
}

#[test]
fn one_entropy_group_is_the_full_estimate_and_groups_factorise() {
    for seed in 0..10 {
        let mut rng = SplitMix64::new(500 + seed);
        let z = Tensor::from_vec(normals(&mut rng, 4 * 6 * 12, 0.5), (4, 6, 12), &CPU).unwrap();
        let with = |groups, tau| {
            let cfg = LfqConfig { entropy_groups: groups, entropy_loss_temperature: tau, ..LfqConfig::mdq(12, 3) };
            let l = ResidualLfq::from_config(cfg).unwrap().losses(&z, 3).unwrap();
            (scalar(&l.per_sample_entropy), scalar(&l.avg_entropy))
        };
        assert_eq!(with(None, 0.01), with(Some(1), 0.01));
        // At a high temperature no probability reaches the 1e-5 clamp, so the per-sample entropy of the product
        // distribution is exactly the sum over bit groups; the grouped average entropy is an upper bound.
        let (full, grouped) = (with(None, 50.0), with(Some(3), 50.0));
        assert!((full.0 - grouped.0).abs() <= 1e-4 * full.0, "seed {seed}: {full:?} vs {grouped:?}");
        assert!(grouped.1 >= full.1 - 1e-4 * full.1, "seed {seed}: {full:?} vs {grouped:?}");
    }
}

#[test]
fn entropy_refuses_oversized_codebooks_unless_grouped() {
    let z = Tensor::zeros((1, 512, 20), DType::F32, &CPU).unwrap();
    assert!(512 << 20 > MAX_ENTROPY_ELEMENTS);
    let err = lfq(20, 1).losses(&z, 1).unwrap_err();
    assert!(err.to_string().contains("entropy_groups"), "{err}");
    let cfg = LfqConfig { entropy_groups: Some(2), ..LfqConfig::mdq(20, 1) };
    let l = ResidualLfq::from_config(cfg).unwrap().losses(&z, 1).unwrap();
    assert!(scalar(&l.total).is_finite());
}

#[test]
fn losses_pass_gradient_upstream() {
    // z = x W with W a trainable Var: the quantizer losses alone must move W.
    let mut rng = SplitMix64::new(3);
    let x = Tensor::from_vec(normals(&mut rng, 2 * 5 * 7, 1.0), (2 * 5, 7), &CPU).unwrap();
    let w = Var::from_tensor(&Tensor::from_vec(normals(&mut rng, 7 * 12, 0.3), (7, 12), &CPU).unwrap()).unwrap();
    let z = x.matmul(w.as_tensor()).unwrap().reshape((2, 5, 12)).unwrap();
    let cfg = LfqConfig { depth_dropout: 0.5, ..LfqConfig::mdq(12, 4) };
    let out = ResidualLfq::from_config(cfg).unwrap().forward_train(&z, &mut SplitMix64::new(11)).unwrap();
    let loss = (&out.losses.entropy + &out.losses.commitment).unwrap();
    let g = loss.backward().unwrap();
    let gw = host(g.get(&w).expect("W has a gradient"));
    assert!(gw.iter().all(|v| v.is_finite()) && gw.iter().any(|&v| v != 0.0));
    // The entropy term on its own also reaches W (it is not masked by the straight-through estimator).
    let ge = out.losses.entropy.backward().unwrap();
    assert!(host(ge.get(&w).unwrap()).iter().any(|&v| v != 0.0));
}

#[test]
fn depth_dropout_is_seeded_and_takes_strict_prefixes() {
    let sample = |p, d, seed| {
        let cfg = LfqConfig { depth_dropout: p, ..LfqConfig::mdq(12, d) };
        let q = ResidualLfq::from_config(cfg).unwrap();
        let mut rng = SplitMix64::new(seed);
        (0..4000).map(|_| q.sample_train_depths(&mut rng)).collect::<Vec<_>>()
    };
    assert!(sample(0.0, 4, 1).iter().all(|&d| d == 4));
    assert!(sample(1.0, 1, 1).iter().all(|&d| d == 1));
    let always = sample(1.0, 4, 1);
    for d in 1..=3 {
        assert!(always.iter().filter(|&&x| x == d).count() > 1000, "prefix {d} drawn too rarely");
    }
    assert!(always.iter().all(|&d| (1..4).contains(&d)));
    let some = sample(0.3, 4, 2);
    assert_eq!(some, sample(0.3, 4, 2), "same seed, same draws");
    assert_ne!(some, sample(0.3, 4, 3));
    let dropped = some.iter().filter(|&&d| d < 4).count() as f64 / some.len() as f64;
    assert!((dropped - 0.3).abs() < 0.03, "dropped {dropped}");
}

#[test]
fn codes_from_tokens_rejects_bad_requests() {
    let q = lfq(4, 3);
    let tokens = Tensor::from_vec(vec![1u32, 15, 2, 3, 0, 9], (1, 2, 3), &CPU).unwrap();
    assert_eq!(q.codes_from_tokens(&tokens, 3).unwrap().dims(), [1, 2, 4]);
    assert!(q.codes_from_tokens(&tokens, 0).unwrap_err().to_string().contains("1..=3"));
    assert!(q.codes_from_tokens(&tokens, 4).is_err());
    let bad = Tensor::from_vec(vec![1i64, 16, 2, 3, 0, -1], (1, 2, 3), &CPU).unwrap();
    let err = q.codes_from_tokens(&bad, 2).unwrap_err();
    assert!(err.to_string().contains("token 16 at (batch 0, position 0, depth 1)"), "{err}");
    // Depths beyond the requested prefix are not decoded, so they are not checked.
    let short = Tensor::from_vec(vec![1i64, 2, 99, 3, 0, 99], (1, 2, 3), &CPU).unwrap();
    assert!(q.codes_from_tokens(&short, 2).is_ok());
    let two = Tensor::from_vec(vec![1u32, 2], (1, 1, 2), &CPU).unwrap();
    assert!(q.codes_from_tokens(&two, 3).is_err());
    assert!(q.codes_from_tokens(&tokens.to_dtype(DType::F32).unwrap(), 1).is_err());
    // With 32 bits every u32 is a token, but a negative i64 still is not.
    let wide = lfq(32, 1);
    let neg = Tensor::from_vec(vec![-1i64], (1, 1, 1), &CPU).unwrap();
    assert!(wide.codes_from_tokens(&neg, 1).unwrap_err().to_string().contains("token -1"));
    let max = Tensor::from_vec(vec![u32::MAX], (1, 1, 1), &CPU).unwrap();
    assert_eq!(host(&wide.codes_from_tokens(&max, 1).unwrap()), vec![1f32; 32]);
}

#[test]
fn zero_and_nan_residuals_count_as_negative() {
    // MDQ's mask is `r > 0`: 0 and NaN both take the -2^-s branch and leave their bit clear.
    let z = Tensor::from_vec(vec![0f32, f32::NAN, 1e-30, -0.0], (1, 1, 4), &CPU).unwrap();
    let out = lfq(4, 1).quantize(&z, 1).unwrap();
    assert_eq!(host_u32(&out.tokens), vec![0b0100]);
    assert_eq!(host(&out.cum), vec![-1.0, -1.0, 1.0, -1.0]);
}

#[test]
fn bad_configs_and_inputs_are_rejected() {
    for cfg in [
        LfqConfig::mdq(0, 2),
        LfqConfig::mdq(33, 2),
        LfqConfig::mdq(12, 0),
        LfqConfig { entropy_loss_temperature: 0.0, ..LfqConfig::mdq(12, 2) },
        LfqConfig { entropy_groups: Some(13), ..LfqConfig::mdq(12, 2) },
        LfqConfig { depth_dropout: 1.5, ..LfqConfig::mdq(12, 2) },
        LfqConfig { commitment_cost: f64::NAN, ..LfqConfig::mdq(12, 2) },
    ] {
        assert_eq!(ResidualLfq::from_config(cfg).unwrap_err().code(), "MARVEL_CONFIG");
    }
    let q = lfq(12, 2);
    let z = Tensor::zeros((2, 3, 12), DType::F32, &CPU).unwrap();
    assert!(q.quantize(&z, 3).is_err());
    assert_eq!(
        q.quantize(&Tensor::zeros((2, 3, 11), DType::F32, &CPU).unwrap(), 1).unwrap_err().code(),
        "MARVEL_SHAPE_MISMATCH"
    );
    assert!(q.quantize(&Tensor::zeros((2, 12, 2, 3), DType::F32, &CPU).unwrap(), 1).is_err());
}

#[test]
fn checkpoint_buffers_are_optional_but_checked() {
    let buffers = |bits: usize| {
        let codebook = Tensor::from_vec(codes::codebook_signs(bits), (1 << bits, bits), &CPU).unwrap();
        let powers: Vec<i32> = (0..bits).map(|k| 1 << k).collect();
        HashMap::from([
            ("quantize.codebook".to_string(), codebook),
            ("quantize.bits_to_indices".to_string(), Tensor::new(powers, &CPU).unwrap()),
        ])
    };
    let build = |map: HashMap<String, Tensor>, bits| {
        ResidualLfq::new(LfqConfig::mdq(bits, 2), VarBuilder::from_tensors(map, DType::F32, &CPU).pp("quantize"))
    };
    build(buffers(6), 6).unwrap();
    build(HashMap::new(), 6).unwrap();
    ResidualLfq::new(LfqConfig::mdq(6, 2), VarBuilder::zeros(DType::F32, &CPU).pp("quantize")).unwrap();
    assert_eq!(build(buffers(5), 6).unwrap_err().code(), "MARVEL_CHECKPOINT");
    let mut flipped = buffers(6);
    let cb = flipped["quantize.codebook"].neg().unwrap();
    flipped.insert("quantize.codebook".into(), cb);
    assert!(build(flipped, 6).unwrap_err().to_string().contains("sign codes"));
    let mut powers = buffers(6);
    powers.insert("quantize.bits_to_indices".into(), Tensor::new(&[1i32, 2, 4, 8, 16, 33], &CPU).unwrap());
    assert!(build(powers, 6).unwrap_err().to_string().contains("quantize.bits_to_indices"));
}

// ---------------------------------------------------------------------------------------------- throughput

/// Prints time per call and tokens/s of one of the quantizer's hot paths (`n_tokens` tokens per call). Reports
/// the best of 10 batches of `reps` calls: on a shared machine the mean mostly measures the neighbours.
fn time(label: &str, reps: usize, n_tokens: usize, mut f: impl FnMut()) {
    f();
    let best = (0..10)
        .map(|_| {
            let t0 = std::time::Instant::now();
            for _ in 0..reps {
                f();
            }
            t0.elapsed().as_secs_f64() / reps as f64
        })
        .fold(f64::INFINITY, f64::min);
    eprintln!("{label}: {:.1} us/call, {:.3e} tokens/s", best * 1e6, n_tokens as f64 / best);
}

/// `cargo test --release -p marvel-core lfq_throughput -- --ignored --nocapture`
#[test]
#[ignore = "throughput probe for bench/; run explicitly"]
fn lfq_throughput() {
    let (b, n, d, bits) = (64, 32, 4, 12);
    let count = b * n * d;
    eprintln!("B={b} N={n} D={d} bits={bits}: {count} tokens per call");
    let q = lfq(bits, d);
    let z = Tensor::from_vec(normals(&mut SplitMix64::new(1), b * n * bits, 1.0), (b, n, bits), &CPU).unwrap();
    time("quantize (tensor in, tensors out)", 50, count, || {
        let _ = q.quantize(&z, d).unwrap();
    });
    let zh = host(&z);
    let (mut values, mut tok) = (zh.clone(), vec![0u32; count]);
    time("quantize kernel (f32 slice, in place)", 50, count, || {
        values.copy_from_slice(&zh);
        codes::quantize_in_place(&mut values, std::hint::black_box(bits), d, &mut tok, None)
    });
    let tt = q.quantize(&z, d).unwrap().tokens;
    let tokens = host_u32(&tt);
    time("tokens_to_bytes", 200, count, || {
        let _ = tokens_to_bytes(&tokens, (b, n, d), bits).unwrap();
    });
    let bytes = tokens_to_bytes(&tokens, (b, n, d), bits).unwrap();
    time("tokens_from_bytes", 200, count, || {
        let _ = tokens_from_bytes(&bytes).unwrap();
    });
    time("codes_from_tokens", 50, count, || {
        let _ = q.codes_from_tokens(&tt, d).unwrap();
    });
    time("losses (2 depths, full 4096-code entropy)", 1, b * n * 2, || {
        let _ = q.losses(&z, 2).unwrap();
    });
}
