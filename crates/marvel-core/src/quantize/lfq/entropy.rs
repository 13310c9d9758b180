//! The LFQ entropy regulariser (MaskBit / MDQ): make each token's code distribution confident (low per-sample
//! entropy) while keeping the batch's mean distribution spread over the codebook (high average entropy).
//!
//! Logits against the implicit codebook C (all +-1 vectors) are 2 r.C^T / tau. MDQ feeds the residual r of every
//! depth unscaled, stacks the depths as extra rows, and clamps log p at 1e-5.
//!
//! Memory: the full estimate materialises `rows x 2^bits` floats per intermediate (logits, exp, p, log p,
//! p log p, and as much again for the backward pass: about 12 such tensors in all). With rows = S*B*N = 4*64*32 =
//! 8192 and 12 bits that is 134 MB each (~1.6 GB for a training step); at 16 bits it would be 2 GB each. The
//! grouped estimate splits the bits into G contiguous groups of w_g bits, each with its own 2^w_g codebook, and
//! sums the groups' entropies: `rows x sum_g 2^w_g` floats (two 8-bit groups of 16 bits: 512 columns, 16 MB
//! each). Per-sample entropy factorises exactly over groups (the softmax over sign codes is a product of
//! independent per-bit factors) up to the 1e-5 log clamp; the grouped average entropy is the sum of the groups'
//! marginal entropies, an upper bound on the joint one. With one group the estimate is the full one, op for op.

use candle_core::{Tensor, D};

use crate::error::Result;
use crate::invalid;

use super::codes::codebook_signs;

/// MDQ clamps probabilities at 1e-5 before the log (`clamp_log`).
const LOG_CLAMP: f64 = 1e-5;

/// Above this many elements per intermediate (1 GiB of f32) the entropy estimate refuses to run rather than
/// exhaust memory; `entropy_groups` is the way out.
pub const MAX_ENTROPY_ELEMENTS: usize = 1 << 28;

/// Scalars of the entropy regulariser, before weighting: `avg` already includes gamma.
pub struct EntropyTerms {
    pub per_sample: Tensor,
    pub avg: Tensor,
}

/// Contiguous bit ranges `(first_bit, width)` of `groups` groups, as equal as possible (wider groups first).
pub fn group_ranges(bits: usize, groups: usize) -> Vec<(usize, usize)> {
    let (base, extra) = (bits / groups, bits % groups);
    let mut start = 0;
    (0..groups)
        .map(|g| {
            let width = base + usize::from(g < extra);
            let range = (start, width);
            start += width;
            range
        })
        .collect()
}

/// Floats in one probability tensor of the estimate for `rows` residual rows.
pub fn entropy_elements(rows: usize, bits: usize, groups: usize) -> usize {
    group_ranges(bits, groups)
        .iter()
        .map(|&(_, w)| rows.saturating_mul(1usize.checked_shl(w as u32).unwrap_or(usize::MAX)))
        .fold(0usize, usize::saturating_add)
}

/// Entropy terms of the residual rows `r` (rows x bits, f32), summed over the bit groups. Differentiable in `r`:
/// the softmax is composed from elementary ops because candle's fused softmax records no backward.
pub fn entropy_terms(r: &Tensor, groups: usize, temperature: f64, gamma: f64) -> Result<EntropyTerms> {
    let (rows, bits) = r.dims2()?;
    // On a GPU the fused op avoids the rows x 2^w intermediates (and their memory limit); the CPU keeps the
    // composite, which is the reference.
    if r.device().is_cuda() && group_ranges(bits, groups).iter().all(|&(_, w)| w <= super::fused::MAX_FUSED_WIDTH) {
        return super::fused::entropy_terms_fused(r, groups, temperature, gamma);
    }
    let elements = entropy_elements(rows, bits, groups);
    if elements > MAX_ENTROPY_ELEMENTS {
        return Err(invalid!(
            "LFQ entropy over {groups} group(s) of {bits} bits needs {rows} x {} probabilities per intermediate \
             (limit {MAX_ENTROPY_ELEMENTS}); set entropy_groups higher or use a smaller batch",
            elements / rows.max(1)
        ));
    }
    let device = r.device();
    // Divided (not multiplied by 1/tau) as MDQ does: 0.01 is not a power of two, and the logits reach hundreds.
    let tau = Tensor::new(temperature as f32, device)?;
    let mut per_sample = Tensor::zeros((), r.dtype(), device)?;
    let mut avg = Tensor::zeros((), r.dtype(), device)?;
    for (start, width) in group_ranges(bits, groups) {
        // 2 r.C^T as r.(2C)^T: scaling the +-1 codes by 2 is exact, so this equals MDQ's affinity bit for bit and
        // saves a pass over the rows x 2^w logits.
        let codes: Vec<f32> = codebook_signs(width).into_iter().map(|v| 2.0 * v).collect();
        let codes_t = Tensor::from_vec(codes, (1usize << width, width), device)?.t()?;
        let r_g = r.narrow(1, start, width)?.contiguous()?;
        let logits = r_g.matmul(&codes_t)?.broadcast_div(&tau)?;
        // The max only shifts the logits for stability; detaching it leaves the softmax's gradient unchanged.
        let shifted = logits.broadcast_sub(&logits.max_keepdim(D::Minus1)?.detach())?;
        let num = shifted.exp()?;
        let p = num.broadcast_div(&num.sum_keepdim(D::Minus1)?)?;
        let sample_entropy = (&p * p.maximum(LOG_CLAMP)?.log()?)?.sum(D::Minus1)?.mean(0)?.neg()?;
        let p_mean = p.mean(0)?;
        let mean_entropy = (&p_mean * p_mean.maximum(LOG_CLAMP)?.log()?)?.sum_all()?.neg()?;
        per_sample = (per_sample + sample_entropy)?;
        avg = (avg + mean_entropy)?;
    }
    Ok(EntropyTerms { per_sample, avg: (avg * gamma)? })
}
