use std::collections::HashMap;

use candle_core::{Device, Tensor, Var};

use super::*;
use crate::quantize::lfq::SplitMix64;

const CONFIG: AdamWConfig =
    AdamWConfig { learning_rate: 1e-2, beta1: 0.9, beta2: 0.99, weight_decay: 0.1, epsilon: 1e-8 };

fn normal_ish(rng: &mut SplitMix64, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| ((rng.next_f64() * 2.0 - 1.0) as f32) * scale).collect()
}

/// Two parameters, one per group: a 2-D weight (decayed) and a bias (not).
fn params(seed: u64) -> Vec<(String, Var)> {
    let mut rng = SplitMix64::new(seed);
    let w = Tensor::from_vec(normal_ish(&mut rng, 24, 0.05), (4, 6), &Device::Cpu).unwrap();
    let b = Tensor::from_vec(normal_ish(&mut rng, 6, 0.05), 6, &Device::Cpu).unwrap();
    vec![("proj.weight".into(), Var::from_tensor(&w).unwrap()), ("proj.bias".into(), Var::from_tensor(&b).unwrap())]
}

/// Gradients of step `k`, with a scale per parameter down at eps so that the denominator's eps matters.
fn grads(seed: u64, k: u64) -> Gradients {
    let mut rng = SplitMix64::new(seed * 1000 + k);
    let mut g = Gradients::new();
    g.insert("proj.weight", Tensor::from_vec(normal_ish(&mut rng, 24, 0.3), (4, 6), &Device::Cpu).unwrap()).unwrap();
    g.insert("proj.bias", Tensor::from_vec(normal_ish(&mut rng, 6, 1e-8), 6, &Device::Cpu).unwrap()).unwrap();
    g
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

fn bits(t: &Tensor) -> Vec<u32> {
    values(t).iter().map(|x| x.to_bits()).collect()
}

#[test]
fn the_no_decay_rule_is_the_reference_substring_rule() {
    let cases: [(&str, &[usize], bool); 9] = [
        ("encoder.transformer.0.mlp.c_fc.weight", &[256, 64], false),
        ("encoder.transformer.0.attn.in_proj_weight", &[192, 64], false),
        ("encoder.conv_out.weight", &[12, 64, 1, 1], false),
        ("encoder.transformer.0.mlp.c_fc.bias", &[256], true),
        ("encoder.class_embedding", &[64], true),
        ("decoder.decoder_embed.weight", &[64, 12], true),
        ("encoder.patch_embed.weight", &[64, 3, 16, 16], true),
        ("encoder.ln_pre.weight", &[64], true),
        ("pixel_decoder.conv_in.kernel_ln", &[8, 8], true),
    ];
    for (name, shape, excluded) in cases {
        assert_eq!(excluded_from_weight_decay(name, shape), excluded, "{name}");
    }
    let opt = AdamW::new(CONFIG, params(1)).unwrap();
    assert_eq!(opt.weight_decay_of("proj.weight"), Some(0.1));
    assert_eq!(opt.weight_decay_of("proj.bias"), Some(0.0));
    assert_eq!(opt.weight_decay_of("other"), None);
}

/// torch's AdamW step written out element by element in float32 with double scalars and true FMAs.
fn reference_step(p: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32], t: u64, wd: f64, c: &AdamWConfig) {
    let lr = c.learning_rate;
    let decay = (1.0 - lr * wd) as f32;
    let (w1, b2, w2) = ((1.0 - c.beta1) as f32, c.beta2 as f32, (1.0 - c.beta2) as f32);
    let bc2_sqrt = (1.0 - c.beta2.powf(t as f64)).sqrt() as f32;
    let neg_step = (-lr / (1.0 - c.beta1.powf(t as f64))) as f32;
    for i in 0..p.len() {
        if wd != 0.0 {
            p[i] *= decay;
        }
        m[i] = w1.mul_add(g[i] - m[i], m[i]);
        v[i] = (w2 * g[i]).mul_add(g[i], v[i] * b2);
        let denom = v[i].sqrt() / bc2_sqrt + c.epsilon as f32;
        p[i] += neg_step * m[i] / denom;
    }
}

#[test]
fn steps_match_torch_adamw_written_out_in_float32() {
    let ps = params(2);
    // per parameter: value, m, v, weight decay
    let mut want: Vec<_> = ps
        .iter()
        .map(|(n, v)| {
            let p = values(v.as_tensor());
            let wd = if n == "proj.weight" { CONFIG.weight_decay } else { 0.0 };
            (p.clone(), vec![0.0; p.len()], vec![0.0; p.len()], wd)
        })
        .collect();
    let mut opt = AdamW::new(CONFIG, ps.clone()).unwrap();
    for k in 1..=4 {
        let g = grads(2, k);
        opt.step(&g).unwrap();
        for ((name, _), (p, m, v, wd)) in ps.iter().zip(&mut want) {
            reference_step(p, m, v, &values(g.get(name).unwrap()), k, *wd, &CONFIG);
        }
    }
    for ((name, var), (p, m, v, _)) in ps.iter().zip(&want) {
        let (exp_avg, exp_avg_sq, step) = opt.moments(name).unwrap();
        assert_eq!(step, 4);
        assert_eq!(&values(var.as_tensor()), p, "{name}");
        assert_eq!(&values(exp_avg), m, "{name}");
        assert_eq!(&values(exp_avg_sq), v, "{name}");
    }
}

#[test]
fn a_parameter_without_a_gradient_is_left_alone() {
    let ps = params(3);
    let bias_before = bits(ps[1].1.as_tensor());
    let mut opt = AdamW::new(CONFIG, ps.clone()).unwrap();
    let mut only_weight = Gradients::new();
    only_weight.insert("proj.weight", grads(3, 1).get("proj.weight").unwrap().clone()).unwrap();
    opt.step(&only_weight).unwrap();
    assert_eq!(bits(ps[1].1.as_tensor()), bias_before, "no gradient: not even weight decay");
    assert!(opt.moments("proj.bias").is_none());
    opt.step(&grads(3, 2)).unwrap();
    assert_eq!(opt.moments("proj.weight").unwrap().2, 2);
    assert_eq!(opt.moments("proj.bias").unwrap().2, 1, "each parameter counts its own steps, as torch does");
}

/// Writes `tensors` as safetensors and reads them back, as a checkpoint would.
fn through_file(tensors: Vec<(String, Tensor)>, file: &str) -> HashMap<String, Tensor> {
    let dir = std::env::temp_dir().join(format!("marvel-optim-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(file);
    let map: HashMap<String, Tensor> = tensors.into_iter().collect();
    candle_core::safetensors::save(&map, &path).unwrap();
    let back = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    std::fs::remove_file(&path).unwrap();
    back
}

#[test]
fn restoring_the_state_continues_bit_for_bit() {
    let straight = params(4);
    let mut opt = AdamW::new(CONFIG, straight.clone()).unwrap();
    for k in 1..=6 {
        opt.set_learning_rate(CONFIG.learning_rate / k as f64).unwrap();
        opt.step(&grads(4, k)).unwrap();
    }

    let first = params(4);
    let mut opt1 = AdamW::new(CONFIG, first.clone()).unwrap();
    for k in 1..=3 {
        opt1.set_learning_rate(CONFIG.learning_rate / k as f64).unwrap();
        opt1.step(&grads(4, k)).unwrap();
    }
    let state = through_file(opt1.state().unwrap(), "optimizer.safetensors");
    let model = first.iter().map(|(n, v)| (n.clone(), v.as_tensor().clone())).collect();
    let weights = through_file(model, "model.safetensors");
    drop(opt1);
    let resumed: Vec<(String, Var)> =
        first.iter().map(|(n, _)| (n.clone(), Var::from_tensor(&weights[n]).unwrap())).collect();
    let mut opt2 = AdamW::new(CONFIG, resumed.clone()).unwrap();
    opt2.load_state(&state).unwrap();
    for k in 4..=6 {
        opt2.set_learning_rate(CONFIG.learning_rate / k as f64).unwrap();
        opt2.step(&grads(4, k)).unwrap();
    }

    for ((name, a), (_, b)) in straight.iter().zip(&resumed) {
        assert_eq!(bits(a.as_tensor()), bits(b.as_tensor()), "{name}");
        let (m1, v1, s1) = opt.moments(name).unwrap();
        let (m2, v2, s2) = opt2.moments(name).unwrap();
        assert_eq!((bits(m1), bits(v1), s1), (bits(m2), bits(v2), s2), "{name}");
    }
    let names: Vec<_> = opt.state().unwrap().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, [
        "exp_avg.proj.weight",
        "exp_avg_sq.proj.weight",
        "step.proj.weight",
        "exp_avg.proj.bias",
        "exp_avg_sq.proj.bias",
        "step.proj.bias"
    ]);
}

#[test]
fn a_bad_state_is_refused_whole_and_changes_nothing() {
    let ps = params(5);
    let mut opt = AdamW::new(CONFIG, ps).unwrap();
    opt.step(&grads(5, 1)).unwrap();
    let good: HashMap<String, Tensor> = opt.state().unwrap().into_iter().collect();
    let before = bits(opt.moments("proj.weight").unwrap().0);

    let mut bad = good.clone();
    bad.insert("exp_avg.proj.weight".into(), Tensor::zeros((6, 4), DType::F32, &Device::Cpu).unwrap());
    bad.remove("exp_avg_sq.proj.bias");
    bad.insert("step.nothing".into(), Tensor::new(&[1i64], &Device::Cpu).unwrap());
    bad.insert("momentum.proj.weight".into(), Tensor::new(&[1f32], &Device::Cpu).unwrap());
    let err = opt.load_state(&bad).unwrap_err();
    assert_eq!(err.code(), "MARVEL_CHECKPOINT");
    let msg = err.to_string();
    let parts =
        ["`exp_avg.proj.weight` is F32 [6, 4]", "`proj.bias` needs all of", "`step.nothing`", "`momentum.proj.weight`"];
    for part in parts {
        assert!(msg.contains(part), "{part} missing from: {msg}");
    }
    assert_eq!(bits(opt.moments("proj.weight").unwrap().0), before);

    let mut zero_step = good.clone();
    zero_step.insert("step.proj.weight".into(), Tensor::new(&[0i64], &Device::Cpu).unwrap());
    let err = opt.load_state(&zero_step).unwrap_err();
    assert!(err.to_string().contains("`step.proj.weight` must be one I64 value >= 1"), "{err}");
    assert_eq!(opt.moments("proj.weight").unwrap().2, 1);

    let mut opt_empty = AdamW::new(CONFIG, params(5)).unwrap();
    opt_empty.load_state(&HashMap::new()).unwrap();
    assert!(opt_empty.moments("proj.weight").is_none(), "an empty state is a fresh optimizer");
    opt_empty.load_state(&good).unwrap();
    assert_eq!(bits(opt_empty.moments("proj.weight").unwrap().0), before);
}

#[test]
fn bad_gradients_are_refused_before_anything_moves() {
    let ps = params(6);
    let before = bits(ps[0].1.as_tensor());
    let mut opt = AdamW::new(CONFIG, ps.clone()).unwrap();
    let mut g = grads(6, 1);
    g.insert("stranger", Tensor::new(&[1f32], &Device::Cpu).unwrap()).unwrap();
    let err = opt.step(&g).unwrap_err();
    assert_eq!(err.code(), "MARVEL_SHAPE_MISMATCH");
    assert!(err.to_string().contains("`stranger`"), "{err}");
    assert_eq!(bits(ps[0].1.as_tensor()), before);

    let mut wrong = Gradients::new();
    wrong.insert("proj.weight", Tensor::zeros((6, 4), DType::F32, &Device::Cpu).unwrap()).unwrap();
    let err = opt.step(&wrong).unwrap_err();
    assert!(err.to_string().contains("gradient of `proj.weight` is F32 [6, 4], the parameter F32 [4, 6]"), "{err}");
    assert!(opt.moments("proj.weight").is_none());
}

#[test]
fn bad_settings_are_refused() {
    let bad = [
        AdamWConfig { learning_rate: -1e-4, ..CONFIG },
        AdamWConfig { learning_rate: f64::NAN, ..CONFIG },
        AdamWConfig { beta1: 1.0, ..CONFIG },
        AdamWConfig { beta2: -0.1, ..CONFIG },
        AdamWConfig { weight_decay: -0.1, ..CONFIG },
        AdamWConfig { epsilon: f64::INFINITY, ..CONFIG },
    ];
    for c in bad {
        assert_eq!(AdamW::new(c, params(7)).unwrap_err().code(), "MARVEL_INVALID_ARGUMENT", "{c:?}");
    }
    let mut opt = AdamW::new(CONFIG, params(7)).unwrap();
    assert_eq!(opt.set_learning_rate(-1.0).unwrap_err().code(), "MARVEL_INVALID_ARGUMENT");
    assert_eq!(opt.learning_rate(), CONFIG.learning_rate);
    let mut twice = params(7);
    twice.push(twice[0].clone());
    assert!(AdamW::new(CONFIG, twice).unwrap_err().to_string().contains("`proj.weight` given twice"));
    let f64_param = Var::from_tensor(&Tensor::zeros((2, 2), DType::F64, &Device::Cpu).unwrap()).unwrap();
    let err = AdamW::new(CONFIG, vec![("w".into(), f64_param)]).unwrap_err();
    assert!(err.to_string().contains("float32 parameters only"), "{err}");
}

/// A parameter of several of the fused loop's parallel chunks, updated on pools of 1 and 3 threads: both equal
/// the element-by-element reference, bit for bit, so the chunking and the thread count change nothing.
#[test]
fn a_parameter_spanning_many_chunks_updates_as_the_reference_on_any_thread_count() {
    // 3 chunks and a part of a fourth, 17 columns so that the weight is 2-D (the decay group).
    let n = 17 * (3 * crate::train::raw::CHUNK / 17 + 1);
    let mut rng = SplitMix64::new(21);
    let init = normal_ish(&mut rng, n, 0.05);
    let steps: Vec<Vec<f32>> = (0..3).map(|_| normal_ish(&mut rng, n, 0.3)).collect();
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            let var = Var::from_tensor(&Tensor::from_vec(init.clone(), (n / 17, 17), &Device::Cpu).unwrap()).unwrap();
            let mut opt = AdamW::new(CONFIG, vec![("big.weight".into(), var.clone())]).unwrap();
            for g in &steps {
                let mut grads = Gradients::new();
                grads.insert("big.weight", Tensor::from_vec(g.clone(), (n / 17, 17), &Device::Cpu).unwrap()).unwrap();
                opt.step(&grads).unwrap();
            }
            let (m, v, _) = opt.moments("big.weight").unwrap();
            (bits(var.as_tensor()), bits(m), bits(v))
        })
    };
    let (mut p, mut m, mut v) = (init.clone(), vec![0f32; n], vec![0f32; n]);
    for (k, g) in steps.iter().enumerate() {
        reference_step(&mut p, &mut m, &mut v, g, k as u64 + 1, CONFIG.weight_decay, &CONFIG);
    }
    let want = |x: &[f32]| x.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    let one = run(1);
    assert_eq!(one, (want(&p), want(&m), want(&v)));
    assert_eq!(run(3), one);
}

// The AdamW chunk at each SIMD level against the baseline, bit for bit (it moves to the layer's dispatch; the
// exact-resume guarantee needs the same bits whichever level a machine runs).
crate::nn::kernels::at_every_level!(the_step_is_the_same_bits_at_every_level, |level| {
    use crate::nn::kernels::{assert_same_bits, at_baseline_and};
    let mut rng = SplitMix64::new(5);
    let (p, m, g) = (normal_ish(&mut rng, 1003, 1.0), normal_ish(&mut rng, 1003, 0.1), normal_ish(&mut rng, 1003, 0.3));
    let v: Vec<f32> = normal_ish(&mut rng, 1003, 0.01).iter().map(|x| x * x).collect();
    let s = StepScalars::new(&CONFIG, 0.1, 7);
    let (want, got) = at_baseline_and(level, || {
        let (mut p, mut m, mut v) = (p.clone(), m.clone(), v.clone());
        adamw_chunk(&mut p, &mut m, &mut v, &g, &s);
        [p, m, v].concat()
    });
    assert_same_bits(level, &want, &got, "adamw_chunk");
});
