//! The reference learning-rate schedule: `get_scheduler("cosine", ...)` (utils/lr_schedulers.py), a LambdaLR
//! with linear warm-up from 0 to `base_lr` over W steps, then a half cosine from `base_lr` down to `end_lr` at
//! step N:
//!
//! lr_lambda(k) = k / max(1, W)                                                    for k < W
//!              = (end_lr + (base_lr - end_lr) * max(0, 0.5 * (1 + cos(pi * 0.5 * 2 * progress)))) / base_lr
//!                with progress = (k - W) / max(1, N - W)                          otherwise
//! lr(k) = base_lr * lr_lambda(k), in doubles, k = scheduler steps taken.
//!
//! The reference loop calls `lr_scheduler.step()` after each `optimizer.step()`, so optimizer step k + 1 runs
//! with lr(k) and the very first update with lr(0) = 0. Its caller multiplies W and N by the number of processes
//! (accelerate steps the scheduler once per process), and the discriminator's schedule uses
//! N = max_train_steps - discriminator_start because it only steps on discriminator steps; both are the caller's
//! choice of W and N. Past N the reference's formula turns back up (the cosine passes its minimum and
//! `max(0, .)` does not clamp it); it is kept as is rather than silently "fixed".

use crate::error::{MarvelError, Result};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CosineSchedule {
    base_lr: f64,
    end_lr: f64,
    warmup_steps: u64,
    training_steps: u64,
}

impl CosineSchedule {
    /// `base_lr` (optimizer.params.learning_rate) must be positive (the reference divides by it); `end_lr`
    /// (lr_scheduler.params.end_lr) non-negative.
    pub fn new(base_lr: f64, end_lr: f64, warmup_steps: u64, training_steps: u64) -> Result<Self> {
        if !(base_lr.is_finite() && base_lr > 0.0) {
            return Err(MarvelError::InvalidArgument(format!("learning_rate must be a positive number, got {base_lr}")));
        }
        if !(end_lr.is_finite() && end_lr >= 0.0) {
            return Err(MarvelError::InvalidArgument(format!("end_lr must be a number >= 0, got {end_lr}")));
        }
        Ok(Self { base_lr, end_lr, warmup_steps, training_steps })
    }

    /// The learning rate after `k` scheduler steps.
    pub fn lr(&self, k: u64) -> f64 {
        self.base_lr * self.lr_lambda(k)
    }

    /// The reference's multiplier; the expression order is the reference's, for the last bit of the double.
    fn lr_lambda(&self, k: u64) -> f64 {
        let (w, n) = (self.warmup_steps, self.training_steps);
        if k < w {
            return k as f64 / w.max(1) as f64;
        }
        // N < W is allowed by the reference and gives max(1, N - W) = 1.
        let progress = (k - w) as f64 / (n.saturating_sub(w)).max(1) as f64;
        let num_cycles = 0.5;
        let ratio = (0.5 * (1.0 + (std::f64::consts::PI * num_cycles * 2.0 * progress).cos())).max(0.0);
        (self.end_lr + (self.base_lr - self.end_lr) * ratio) / self.base_lr
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warms_up_linearly_then_decays_to_end_lr() {
        let s = CosineSchedule::new(1e-4, 1e-5, 10, 110).unwrap();
        assert_eq!(s.lr(0), 0.0);
        assert_eq!(s.lr(5), 1e-4 * 0.5);
        assert_eq!(s.lr(10), 1e-4);
        let mid = s.lr(60);
        assert!((mid - 5.5e-5).abs() < 1e-18, "half way the cosine is at the mean of base and end: {mid}");
        assert!((s.lr(110) - 1e-5).abs() < 1e-18);
        let mut last = f64::INFINITY;
        for k in 10..=110 {
            assert!(s.lr(k) <= last, "decreasing at {k}");
            last = s.lr(k);
        }
    }

    #[test]
    fn past_the_end_the_reference_curve_turns_back_up() {
        let s = CosineSchedule::new(1e-4, 0.0, 0, 100).unwrap();
        assert!(s.lr(150) > s.lr(100));
        assert!((s.lr(200) - 1e-4).abs() < 1e-18);
    }

    #[test]
    fn no_warmup_and_short_runs_divide_by_at_least_one() {
        let s = CosineSchedule::new(2e-4, 1e-5, 0, 0).unwrap();
        assert_eq!(s.lr(0), 2e-4);
        assert!(s.lr(1).is_finite());
    }

    #[test]
    fn bad_rates_are_refused() {
        for (base, end) in [(0.0, 0.0), (-1e-4, 0.0), (f64::NAN, 0.0), (1e-4, -1e-5), (1e-4, f64::INFINITY)] {
            let err = CosineSchedule::new(base, end, 10, 100).unwrap_err();
            assert_eq!(err.code(), "MARVEL_INVALID_ARGUMENT", "{base} {end}");
        }
    }
}
