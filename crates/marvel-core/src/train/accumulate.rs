//! Gradient accumulation over micro-batches, as accelerate runs it for the reference.
//!
//! With `gradient_accumulation_steps = N`, accelerate divides each micro-batch's loss by N before `backward()`
//! and PyTorch adds the resulting gradients into `.grad` (the first one is stored as is, each later one added:
//! ((g1 + g2) + g3) ...); the optimizer, the clipping and the schedule only act on the N-th micro-batch
//! (`sync_gradients`). Here each micro-batch's gradient is multiplied by the float32 value of 1/N, the seed that
//! backward of loss / N would start from, and summed in the same order. With N a power of two this equals
//! accelerate exactly; otherwise it differs in the last bits, where the 1/N enters the rounding.
//! A parameter that only some micro-batches reach gets the sum of the gradients it has, as in PyTorch.

use crate::error::{MarvelError, Result};
use crate::train::grads::Gradients;

#[derive(Debug)]
pub struct GradAccumulator {
    micro_batches: usize,
    seen: usize,
    sum: Gradients,
}

impl GradAccumulator {
    /// An accumulator for `micro_batches` micro-batches per optimizer step (1: every batch is a step).
    pub fn new(micro_batches: usize) -> Result<Self> {
        if micro_batches == 0 {
            return Err(MarvelError::InvalidArgument(
                "gradient accumulation steps must be at least 1, got 0".into(),
            ));
        }
        Ok(Self { micro_batches, seen: 0, sum: Gradients::new() })
    }

    pub fn micro_batches(&self) -> usize {
        self.micro_batches
    }

    /// Micro-batches added since the last completed step.
    pub fn pending(&self) -> usize {
        self.seen
    }

    /// Adds one micro-batch's gradients (taken over: they become, or are added into, the running sum in place).
    /// Returns the accumulated gradients when this was the N-th micro-batch (the optimizer step should follow),
    /// `None` before that.
    pub fn add(&mut self, grads: Gradients) -> Result<Option<Gradients>> {
        let scale = (1.0 / self.micro_batches as f64) as f32;
        self.sum.add_scaled(grads, scale).map_err(|e| match e {
            MarvelError::ShapeMismatch(m) => MarvelError::ShapeMismatch(format!("micro-batch {}: {m}", self.seen + 1)),
            other => other,
        })?;
        self.seen += 1;
        if self.seen < self.micro_batches {
            return Ok(None);
        }
        self.seen = 0;
        Ok(Some(std::mem::take(&mut self.sum)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grads(entries: &[(&str, &[f32])]) -> Gradients {
        Gradients::from_values(entries)
    }

    fn values(g: &Gradients, name: &str) -> Vec<f32> {
        g.get(name).unwrap().to_vec1().unwrap()
    }

    #[test]
    fn the_nth_micro_batch_returns_the_mean_and_starts_over() {
        let mut acc = GradAccumulator::new(4).unwrap();
        let batches = [[1f32, -8.0], [3.0, 0.5], [-2.0, 4.0], [6.0, 1.5]];
        for b in &batches[..3] {
            assert!(acc.add(grads(&[("w", b)])).unwrap().is_none());
        }
        assert_eq!(acc.pending(), 3);
        let mean = acc.add(grads(&[("w", &batches[3])])).unwrap().expect("4th micro-batch completes the step");
        // 1/4 is exact in float32, so the result equals accelerate's ((g1/4 + g2/4) + g3/4) + g4/4 bit for bit.
        assert_eq!(values(&mean, "w"), [2.0, -0.5]);
        assert_eq!(acc.pending(), 0);
        assert!(acc.add(grads(&[("w", &[1.0, 1.0])])).unwrap().is_none(), "a new accumulation starts empty");
    }

    #[test]
    fn scales_each_micro_batch_before_summing_in_order() {
        let mut acc = GradAccumulator::new(3).unwrap();
        let g = [0.1f32, 1e-3, 7.0];
        acc.add(grads(&[("w", &g)])).unwrap();
        acc.add(grads(&[("w", &g)])).unwrap();
        let out = acc.add(grads(&[("w", &g)])).unwrap().unwrap();
        let third = (1.0f64 / 3.0) as f32;
        let expect: Vec<f32> = g.iter().map(|&x| (x * third + x * third) + x * third).collect();
        assert_eq!(values(&out, "w"), expect);
    }

    #[test]
    fn a_parameter_reached_by_some_micro_batches_keeps_the_sum_it_has() {
        let mut acc = GradAccumulator::new(2).unwrap();
        acc.add(grads(&[("a", &[2.0])])).unwrap();
        let out = acc.add(grads(&[("b", &[4.0]), ("a", &[6.0])])).unwrap().unwrap();
        let names: Vec<_> = out.iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(values(&out, "a"), [4.0]);
        assert_eq!(values(&out, "b"), [2.0]);
    }

    #[test]
    fn one_micro_batch_passes_gradients_through_unchanged() {
        let mut acc = GradAccumulator::new(1).unwrap();
        let out = acc.add(grads(&[("w", &[0.1, 3.0])])).unwrap().unwrap();
        assert_eq!(values(&out, "w"), [0.1, 3.0]);
    }

    #[test]
    fn bad_input_is_refused_with_a_code() {
        assert_eq!(GradAccumulator::new(0).unwrap_err().code(), "MARVEL_INVALID_ARGUMENT");
        let mut acc = GradAccumulator::new(2).unwrap();
        acc.add(grads(&[("w", &[1.0, 2.0])])).unwrap();
        let err = acc.add(grads(&[("w", &[1.0])])).unwrap_err();
        assert_eq!(err.code(), "MARVEL_SHAPE_MISMATCH");
        assert!(err.to_string().contains("`w`"), "{err}");
        assert_eq!(acc.pending(), 1, "a refused micro-batch is not counted");
    }
}
