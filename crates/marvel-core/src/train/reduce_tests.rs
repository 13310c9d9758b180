//! Data-parallel steps through the trainer's one collective: ranks as threads of this process, each with its own
//! trainer, averaging through a [`GradientReducer`] that sums in rank order.

use std::sync::{Arc, Barrier, Mutex};

use candle_core::Tensor;
use serde_json::{json, Value};

use super::reduce::GradientReducer;
use super::trainer::Trainer;
use super::trainer_tests::{images, tiny_config};
use crate::error::Result;

/// Ranks that are threads: each deposits its vector, then every rank sums the deposits in rank order (so all
/// receive the same bits) and divides once.
struct ThreadGroup {
    rank: usize,
    world: usize,
    slots: Arc<Mutex<Vec<Vec<f32>>>>,
    barrier: Arc<Barrier>,
    /// The last mean this rank received.
    last: Vec<f32>,
}

impl ThreadGroup {
    fn group(world: usize) -> Vec<Self> {
        let slots = Arc::new(Mutex::new(vec![Vec::new(); world]));
        let barrier = Arc::new(Barrier::new(world));
        (0..world)
            .map(|rank| Self { rank, world, slots: slots.clone(), barrier: barrier.clone(), last: Vec::new() })
            .collect()
    }
}

impl GradientReducer for ThreadGroup {
    fn world_size(&self) -> usize {
        self.world
    }

    fn all_reduce_mean(&mut self, flat: &Tensor) -> Result<Tensor> {
        let mine = flat.to_vec1::<f32>()?;
        self.slots.lock().unwrap()[self.rank] = mine;
        self.barrier.wait();
        let mean: Vec<f32> = {
            let slots = self.slots.lock().unwrap();
            (0..slots[0].len())
                .map(|i| slots.iter().skip(1).fold(slots[0][i], |acc, s| acc + s[i]) / self.world as f32)
                .collect()
        };
        // Nobody may overwrite a slot before every rank has read them all.
        self.barrier.wait();
        self.last = mean.clone();
        Ok(Tensor::from_vec(mean, flat.dims(), flat.device())?)
    }
}

/// The tiny `single` config with an update at the first step (no warmup: the warmup's lr(0) is 0, which would
/// leave the weights unchanged whatever the gradients) and no entropy term, whose batch entropy is not linear in
/// the batch, so a mean over ranks' halves is not the whole batch's.
fn config() -> Value {
    let mut cfg = tiny_config(1e-3, json!({"use_ema": true}));
    cfg["lr_scheduler"]["params"]["warmup_steps"] = json!(0);
    cfg["model"]["vq_model"]["depth_dropout"] = json!(0.5);
    assert_eq!(cfg["model"]["vq_model"]["entropy_loss_weight"], json!(0.0));
    cfg
}

/// One trainer per rank, each stepping `steps` times on its slice of `batch`; the ranks' final weights and the
/// mean gradients of their last step.
fn run_ranks(world: usize, all: &[u8], batch: usize, steps: usize) -> Vec<(Vec<Vec<f32>>, Vec<f32>, f32)> {
    let per_rank = all.len() / world;
    let handles: Vec<_> = ThreadGroup::group(world)
        .into_iter()
        .map(|mut group| {
            let mine = all[group.rank * per_rank..(group.rank + 1) * per_rank].to_vec();
            std::thread::spawn(move || {
                let mut t = Trainer::create(config(), None, 5).unwrap();
                let mut loss = 0.0;
                for _ in 0..steps {
                    let (grads, l, _) = t.gradients(&mine, batch / world, None).unwrap();
                    let out = t.apply(grads, &mut group).unwrap();
                    assert!(out.grad_norm.is_some());
                    loss = l;
                }
                (weights(&t), group.last, loss)
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

fn weights(t: &Trainer) -> Vec<Vec<f32>> {
    t.parameters().iter().map(|(_, v)| v.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap()).collect()
}

fn max_abs_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    a.iter().zip(b).flat_map(|(x, y)| x.iter().zip(y).map(|(p, q)| (p - q).abs())).fold(0.0, f32::max)
}

#[test]
fn two_ranks_of_two_images_step_like_one_rank_of_four() {
    let all = images(4);
    let mut single = Trainer::create(config(), None, 5).unwrap();
    let (grads, whole_loss, _) = single.gradients(&all, 4, None).unwrap();
    let whole = single.flatten_gradients(&grads).unwrap();
    single.apply(grads, &mut super::SingleRank).unwrap();

    let ranks = run_ranks(2, &all, 4, 1);
    let (w0, mean0, loss0) = &ranks[0];
    let (w1, mean1, loss1) = &ranks[1];
    assert_eq!(mean0, mean1, "every rank receives the same mean, bit for bit");
    assert_eq!(w0, w1, "so every rank holds the same weights");
    // The mean of the halves' mean losses is the whole batch's mean loss.
    assert!(((loss0 + loss1) / 2.0 - whole_loss).abs() < 1e-6 * whole_loss.abs().max(1.0));
    // Adam's first update hardly depends on the gradients' scale, so check the gradients themselves: a sum in
    // place of the mean would still pass the weight check below.
    let scale = whole.iter().fold(0f32, |m, g| m.max(g.abs()));
    let grad_diff = whole.iter().zip(mean0).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(grad_diff <= 1e-5 * scale, "gradients differ by {grad_diff} (largest {scale})");
    let diff = max_abs_diff(&weights(&single), w0);
    eprintln!("2 ranks x 2 vs 1 x 4: gradients differ by {grad_diff:e} (largest {scale:e}), weights by {diff:e}");
    assert!(diff <= 1e-6, "weights differ by {diff}");
}

#[test]
fn ranks_with_identical_batches_step_bit_for_bit_like_one_rank() {
    // The mean of equal vectors is each of them exactly, so going through the collective (flatten, reduce,
    // unflatten) must change no bit of what step() computes.
    let one = images(2);
    let mut single = Trainer::create(config(), None, 5).unwrap();
    for _ in 0..3 {
        single.step(&one, 2, None).unwrap();
    }
    let both: Vec<u8> = one.iter().chain(one.iter()).copied().collect();
    let ranks = run_ranks(2, &both, 4, 3);
    assert_eq!(weights(&single), ranks[0].0);
    assert_eq!(weights(&single), ranks[1].0);
}

#[test]
fn flat_gradients_round_trip_and_a_wrong_length_is_refused() {
    let mut t = Trainer::create(config(), None, 1).unwrap();
    let (grads, _, _) = t.gradients(&images(1), 1, None).unwrap();
    let flat = t.flatten_gradients(&grads).unwrap();
    let expected: usize =
        t.parameters().iter().map(|(_, v)| v.as_tensor().elem_count()).sum();
    assert_eq!((flat.len(), t.gradient_len()), (expected, expected));
    let back = t.unflatten_gradients(&flat).unwrap();
    for (name, g) in grads.iter() {
        let a = g.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = back.get(name).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(a, b, "{name}");
    }
    assert_eq!(t.unflatten_gradients(&flat[1..]).unwrap_err().code(), "MARVEL_SHAPE_MISMATCH");
}
