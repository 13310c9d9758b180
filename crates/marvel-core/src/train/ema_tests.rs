use std::collections::HashMap;

use candle_core::{Device, Tensor, Var};

use super::*;

fn var(values: &[f32]) -> Var {
    Var::new(values, &Device::Cpu).unwrap()
}

fn values(t: &Tensor) -> Vec<f32> {
    t.to_vec1().unwrap()
}

#[test]
fn the_reference_decay_warms_up_as_one_plus_s_over_ten_plus_s() {
    let c = EmaConfig::reference();
    let decays: Vec<f64> = (1..=5).map(|t| c.decay_at(t)).collect();
    assert_eq!(decays, [0.0, 2.0 / 11.0, 3.0 / 12.0, 4.0 / 13.0, 5.0 / 14.0]);
    assert!(c.decay_at(8990) < 0.999 && c.decay_at(8991) == 0.999, "capped at decay");
    let later = EmaConfig { update_after_step: 3, ..c };
    assert_eq!(later.decay_at(4), 0.0);
    assert_eq!(later.decay_at(5), 2.0 / 11.0);
    let warm = EmaConfig { use_ema_warmup: true, inv_gamma: 1.0, power: 0.75, decay: 0.9999, ..c };
    assert_eq!(warm.decay_at(11), 1.0 - 11f64.powf(-0.75));
    let floor = EmaConfig { min_decay: 0.5, ..c };
    assert_eq!(floor.decay_at(2), 0.5);
}

#[test]
fn trainable_shadows_move_by_one_minus_decay_and_frozen_ones_copy() {
    let params = vec![("w".to_string(), var(&[1.0, -2.0])), ("frozen".to_string(), var(&[3.0]))];
    let mut ema = Ema::new(EmaConfig::reference(), &params, |n| n != "frozen").unwrap();
    params[0].1.set(&Tensor::new(&[2f32, 0.0], &Device::Cpu).unwrap()).unwrap();
    params[1].1.set(&Tensor::new(&[7f32], &Device::Cpu).unwrap()).unwrap();
    assert_eq!(ema.update(&params).unwrap(), Some(0.0));
    assert_eq!(values(ema.shadow("w").unwrap()), [2.0, 0.0]);
    params[0].1.set(&Tensor::new(&[13f32, 11.0], &Device::Cpu).unwrap()).unwrap();
    assert_eq!(ema.update(&params).unwrap(), Some(2.0 / 11.0));
    let k = (1.0 - 2.0 / 11.0f64) as f32;
    assert_eq!(values(ema.shadow("w").unwrap()), [2.0 - k * (2.0 - 13.0), 0.0 - k * (0.0 - 11.0)]);
    assert_eq!(values(ema.shadow("frozen").unwrap()), [7.0]);
    assert_eq!(ema.optimization_step(), 2);
}

#[test]
fn the_shadow_is_a_copy_not_a_view_of_the_parameter() {
    let params = vec![("w".to_string(), var(&[1.0]))];
    let ema = Ema::new(EmaConfig::reference(), &params, |_| true).unwrap();
    params[0].1.set(&Tensor::new(&[5f32], &Device::Cpu).unwrap()).unwrap();
    assert_eq!(values(ema.shadow("w").unwrap()), [1.0]);
}

#[test]
fn update_every_skips_steps_but_counts_them() {
    let params = vec![("w".to_string(), var(&[0.0]))];
    let mut ema = Ema::new(EmaConfig { update_every: 3, ..EmaConfig::reference() }, &params, |_| true).unwrap();
    let used: Vec<Option<f64>> = (0..7).map(|_| ema.update(&params).unwrap()).collect();
    let c = EmaConfig::reference();
    assert_eq!(used, [Some(0.0), None, None, Some(c.decay_at(4)), None, None, Some(c.decay_at(7))]);
}

#[test]
fn restoring_the_state_continues_bit_for_bit() {
    let p = vec![("w".to_string(), var(&[0.25, -1.5, 3.0]))];
    let q = vec![("w".to_string(), var(&[0.25, -1.5, 3.0]))];
    let mut straight = Ema::new(EmaConfig::reference(), &p, |_| true).unwrap();
    let mut first = Ema::new(EmaConfig::reference(), &q, |_| true).unwrap();
    let mut state = None;
    for k in 1..=6 {
        let next = Tensor::new(&[0.1f32 * k as f32, 1.0 / k as f32, -0.3 * k as f32], &Device::Cpu).unwrap();
        p[0].1.set(&next).unwrap();
        q[0].1.set(&next).unwrap();
        straight.update(&p).unwrap();
        if k <= 3 {
            first.update(&q).unwrap();
        } else {
            let resumed = state.get_or_insert_with(|| {
                let saved: HashMap<String, Tensor> = first.state().unwrap().into_iter().collect();
                let mut fresh = Ema::new(EmaConfig::reference(), &q, |_| true).unwrap();
                fresh.load_state(&saved).unwrap();
                fresh
            });
            resumed.update(&q).unwrap();
        }
    }
    let resumed = state.unwrap();
    assert_eq!(resumed.optimization_step(), 6);
    let bits = |t: &Tensor| values(t).iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(resumed.shadow("w").unwrap()), bits(straight.shadow("w").unwrap()));
}

#[test]
fn mismatched_parameters_and_states_are_refused() {
    let params = vec![("w".to_string(), var(&[1.0, 2.0])), ("b".to_string(), var(&[0.0]))];
    let mut ema = Ema::new(EmaConfig::reference(), &params, |_| true).unwrap();
    let wrong = vec![("w".to_string(), var(&[1.0])), ("x".to_string(), var(&[0.0]))];
    let err = ema.update(&wrong).unwrap_err();
    assert_eq!(err.code(), "MARVEL_SHAPE_MISMATCH");
    let msg = err.to_string();
    for part in ["`w` has shape [1], its shadow [2]", "`x` is not a shadowed parameter", "`b` is missing"] {
        assert!(msg.contains(part), "{part} missing from: {msg}");
    }
    assert_eq!(ema.optimization_step(), 0, "a refused update does not count");

    let mut state: HashMap<String, Tensor> = ema.state().unwrap().into_iter().collect();
    state.remove("shadow.b");
    state.insert("optimization_step".into(), Tensor::new(&[-1i64], &Device::Cpu).unwrap());
    let err = ema.load_state(&state).unwrap_err();
    assert_eq!(err.code(), "MARVEL_CHECKPOINT");
    assert!(err.to_string().contains("`shadow.b` is missing"), "{err}");
    assert!(err.to_string().contains("`optimization_step` must be"), "{err}");

    let reference = EmaConfig::reference();
    for bad in [EmaConfig { decay: 1.5, ..reference }, EmaConfig { update_every: 0, ..reference }] {
        assert_eq!(Ema::new(bad, &params, |_| true).unwrap_err().code(), "MARVEL_INVALID_ARGUMENT");
    }
}

/// Shadows of several parallel chunks move exactly as the one-value rule, on any number of threads.
#[test]
fn a_shadow_spanning_many_chunks_follows_the_rule_on_any_thread_count() {
    let n = 2 * crate::train::raw::CHUNK + 5;
    let start: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
    let next: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            let params = vec![("w".to_string(), var(&start)), ("frozen".to_string(), var(&start))];
            let mut ema = Ema::new(EmaConfig::reference(), &params, |n| n != "frozen").unwrap();
            ema.update(&params).unwrap();
            for (_, p) in &params {
                p.set(&Tensor::new(next.as_slice(), &Device::Cpu).unwrap()).unwrap();
            }
            ema.update(&params).unwrap();
            (values(ema.shadow("w").unwrap()), values(ema.shadow("frozen").unwrap()))
        })
    };
    let k = (1.0 - 2.0 / 11.0f64) as f32;
    let want: Vec<f32> = start.iter().zip(&next).map(|(&s, &p)| s - (s - p) * k).collect();
    let one = run(1);
    assert_eq!(one, (want, next.clone()));
    assert_eq!(run(3), one);
}
