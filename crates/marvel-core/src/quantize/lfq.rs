//! MARVEL's multi-depth residual lookup-free quantizer (MDQ's `LookupFreeQuantizer`, extended to any depth).
//!
//! Each latent token z (token_bits channels, not normalised) is coded coarse to fine: at depth s the residual
//! r_s = z - cum_s is replaced by its signs scaled by 2^-s, and the sign pattern is the depth's token (channel k =
//! bit k). Decoding the first d tokens gives cum_d, a prefix-decodable approximation whose error halves per depth.
//! The codebook (all 2^bits sign vectors) stays implicit: encoding is a comparison and a bit-sum per channel. Only
//! the training entropy regulariser looks at every code (see `entropy`).

pub mod codes;
#[cfg(feature = "cuda")]
mod cuda;
pub mod entropy;
pub mod fused;
mod host;

#[cfg(test)]
mod tests;

use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;

use crate::error::{MarvelError, Result};
use crate::{invalid, shape_mismatch};

pub use host::LfqLossValues;

/// Settings of [`ResidualLfq`]; `LfqConfig::mdq` gives MDQ's stage-1 values.
#[derive(Debug, Clone, PartialEq)]
pub struct LfqConfig {
    /// Channels per latent token = bits per depth token (MDQ's `token_bits` = TiTok's `token_size`), 1..=32.
    pub token_bits: usize,
    /// Depths D; tokens of every depth d <= D decode. 1..=23 (the sums of 2^-s stay exact in f32).
    pub num_depths: usize,
    /// beta in beta * mean_s mean((q_s - r_s)^2).
    pub commitment_cost: f64,
    /// w in w * (per-sample entropy - gamma * average entropy); 0 skips the entropy estimate.
    pub entropy_loss_weight: f64,
    /// tau in the logits 2 r.C^T / tau.
    pub entropy_loss_temperature: f64,
    pub entropy_gamma: f64,
    /// Split the entropy estimate over this many bit groups (see `entropy`); `None` is one group, MDQ's exact
    /// estimate, whose memory grows as 2^token_bits.
    pub entropy_groups: Option<usize>,
    /// Probability of training a step on a random shorter prefix of depths (see [`ResidualLfq::sample_train_depths`]).
    pub depth_dropout: f64,
}

impl LfqConfig {
    /// MDQ stage-1 defaults: beta 0.25, w 0.02, tau 0.01, gamma 1, full entropy, no depth dropout.
    pub fn mdq(token_bits: usize, num_depths: usize) -> Self {
        LfqConfig {
            token_bits,
            num_depths,
            commitment_cost: 0.25,
            entropy_loss_weight: 0.02,
            entropy_loss_temperature: 0.01,
            entropy_gamma: 1.0,
            entropy_groups: None,
            depth_dropout: 0.0,
        }
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(MarvelError::Config(format!("LFQ config: {msg}")));
        if !(1..=32).contains(&self.token_bits) {
            return bad(format!("token_bits must be in 1..=32, got {}", self.token_bits));
        }
        if !(1..=23).contains(&self.num_depths) {
            return bad(format!("num_depths must be in 1..=23, got {}", self.num_depths));
        }
        for (name, v) in [
            ("commitment_cost", self.commitment_cost),
            ("entropy_loss_weight", self.entropy_loss_weight),
            ("entropy_gamma", self.entropy_gamma),
        ] {
            if !v.is_finite() {
                return bad(format!("{name} must be finite, got {v}"));
            }
        }
        if !(self.entropy_loss_temperature > 0.0 && self.entropy_loss_temperature.is_finite()) {
            return bad(format!("entropy_loss_temperature must be > 0, got {}", self.entropy_loss_temperature));
        }
        if let Some(g) = self.entropy_groups {
            if !(1..=self.token_bits).contains(&g) {
                return bad(format!("entropy_groups must be in 1..={}, got {g}", self.token_bits));
            }
        }
        if !(0.0..=1.0).contains(&self.depth_dropout) {
            return bad(format!("depth_dropout must be a probability in [0, 1], got {}", self.depth_dropout));
        }
        Ok(())
    }
}

/// Quantizer outputs, in the layout of the input z (channels-last (B, N, bits) or channels-first (B, bits, 1, N)).
#[derive(Debug, Clone)]
pub struct LfqCodes {
    /// z + stop_grad(cum - z): cum's value, the identity's gradient. What the decoder sees during training.
    pub z_q: Tensor,
    /// Sum of the depth vectors (no gradient): the decoder input at inference.
    pub cum: Tensor,
    /// (B, N, depths) U32 token indices, depth fastest, whatever the input layout.
    pub tokens: Tensor,
}

/// Training losses, each an f32 scalar differentiable w.r.t. z. `total` = `entropy` + `commitment`.
#[derive(Debug, Clone)]
pub struct LfqLosses {
    pub commitment: Tensor,
    /// w * (per_sample_entropy - avg_entropy).
    pub entropy: Tensor,
    pub per_sample_entropy: Tensor,
    /// Includes gamma, as MDQ reports it.
    pub avg_entropy: Tensor,
    pub total: Tensor,
}

/// One training forward: the codes, the losses, and how many depths the step used.
#[derive(Debug, Clone)]
pub struct LfqTrainOutput {
    pub codes: LfqCodes,
    pub losses: LfqLosses,
    pub depth: usize,
}

/// SplitMix64 (Steele, Lea & Flood 2014): a seedable generator so that depth dropout is reproducible in tests and
/// across platforms without a dependency.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    /// The whole state, for a checkpoint: `SplitMix64::new(g.state())` continues exactly where `g` stands.
    pub fn state(&self) -> u64 {
        self.state
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut x = self.state;
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        x ^ (x >> 31)
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in 0..n (multiply-shift; the bias, below n / 2^64, is irrelevant here).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Layout {
    ChannelsLast,
    ChannelsFirst,
}

/// The encoder's channels-first latent (B, C, 1, N) as channels-last tokens (B, N, C).
pub fn to_channels_last(z: &Tensor) -> Result<Tensor> {
    let (_, _, h, _) = z.dims4()?;
    if h != 1 {
        return Err(shape_mismatch!("channels-first latent must be (B, C, 1, N), got {:?}", z.dims()));
    }
    Ok(z.squeeze(2)?.transpose(1, 2)?.contiguous()?)
}

/// Channels-last tokens (B, N, C) in the decoder's channels-first layout (B, C, 1, N).
pub fn to_channels_first(z: &Tensor) -> Result<Tensor> {
    Ok(z.transpose(1, 2)?.unsqueeze(2)?.contiguous()?)
}

/// Multi-depth residual LFQ; holds no weights, only its configuration.
#[derive(Debug, Clone)]
pub struct ResidualLfq {
    cfg: LfqConfig,
}

impl ResidualLfq {
    /// Builds the quantizer under `vb` (the checkpoint's `quantize` prefix). MDQ checkpoints carry the buffers
    /// `codebook` (2^bits x bits, +-1) and `bits_to_indices` (I32, 2^k): they are derived data, so they are
    /// checked against `token_bits` when present (a mismatch means the config and checkpoint disagree) and never
    /// required.
    pub fn new(cfg: LfqConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let bits = cfg.token_bits;
        // Some backends (VarBuilder::zeros) claim every name but cannot produce a tensor without a shape: a
        // buffer that cannot be read is treated as absent.
        let buffer = |name: &str| {
            if vb.contains_tensor(name) {
                vb.get_unchecked_dtype(name, DType::F32).ok()
            } else {
                None
            }
        };
        let key =
            |name: &str| if vb.prefix().is_empty() { name.to_string() } else { format!("{}.{name}", vb.prefix()) };
        if let Some(t) = buffer("codebook") {
            if t.dims() != [1usize << bits, bits] {
                return Err(MarvelError::Checkpoint(format!(
                    "{}: shape {:?} does not fit token_bits {bits} (expected [2^{bits}, {bits}])",
                    key("codebook"),
                    t.dims()
                )));
            }
            let got = t.flatten_all()?.to_vec1::<f32>()?;
            if got != codes::codebook_signs(bits) {
                return Err(MarvelError::Checkpoint(format!(
                    "{}: rows are not the +-1 sign codes of their indices (bit k = channel k)",
                    key("codebook")
                )));
            }
        }
        if let Some(t) = buffer("bits_to_indices") {
            let want: Vec<f32> = (0..bits).map(|k| (1u64 << k) as f32).collect();
            if t.dims() != [bits] || t.to_vec1::<f32>()? != want {
                return Err(MarvelError::Checkpoint(format!(
                    "{}: expected [1, 2, 4, ..., 2^{}] ({bits} values) for token_bits {bits}, got shape {:?}",
                    key("bits_to_indices"),
                    bits - 1,
                    t.dims()
                )));
            }
        }
        Ok(ResidualLfq { cfg })
    }

    /// The quantizer without a checkpoint (it has no weights).
    pub fn from_config(cfg: LfqConfig) -> Result<Self> {
        cfg.validate()?;
        Ok(ResidualLfq { cfg })
    }

    pub fn config(&self) -> &LfqConfig {
        &self.cfg
    }

    fn check_depth(&self, depth: usize) -> Result<()> {
        if depth == 0 || depth > self.cfg.num_depths {
            return Err(invalid!("depth must be in 1..={}, got {depth}", self.cfg.num_depths));
        }
        Ok(())
    }

    /// z as channels-last f32 (B, N, bits), still connected to z's graph, plus the layout to answer in.
    fn channels_last(&self, z: &Tensor) -> Result<(Tensor, Layout)> {
        let bits = self.cfg.token_bits;
        let (z3, layout) = match z.rank() {
            3 => (z.contiguous()?, Layout::ChannelsLast),
            4 => (to_channels_last(z)?, Layout::ChannelsFirst),
            _ => {
                return Err(shape_mismatch!(
                    "LFQ input must be (B, N, {bits}) or (B, {bits}, 1, N), got {:?}",
                    z.dims()
                ))
            }
        };
        if z3.dim(2)? != bits {
            return Err(shape_mismatch!("LFQ input {:?} does not have token_bits = {bits} channels", z.dims()));
        }
        Ok((z3.to_dtype(DType::F32)?, layout))
    }

    /// Quantizes z over the first `depth` depths: straight-through z_q, cum and the (B, N, depths) tokens.
    pub fn quantize(&self, z: &Tensor, depth: usize) -> Result<LfqCodes> {
        Ok(self.run(z, depth, false)?.0)
    }

    /// The training losses of z over `depth` depths (MDQ uses 2).
    pub fn losses(&self, z: &Tensor, depth: usize) -> Result<LfqLosses> {
        Ok(self.run(z, depth, true)?.1.expect("losses were requested"))
    }

    /// A training forward: draws the depth count (depth dropout), then quantizes and computes the losses in one
    /// pass.
    pub fn forward_train(&self, z: &Tensor, rng: &mut SplitMix64) -> Result<LfqTrainOutput> {
        let depth = self.sample_train_depths(rng);
        let (codes, losses) = self.run(z, depth, true)?;
        Ok(LfqTrainOutput { codes, losses: losses.expect("losses were requested"), depth })
    }

    /// Depth dropout: with probability `depth_dropout` a step trains on a prefix of 1..D-1 depths (uniform),
    /// otherwise on all D, so the decoder learns to reconstruct from any prefix. Draws nothing when the dropout is
    /// 0 or D = 1.
    pub fn sample_train_depths(&self, rng: &mut SplitMix64) -> usize {
        let d = self.cfg.num_depths;
        if d > 1 && self.cfg.depth_dropout > 0.0 && rng.next_f64() < self.cfg.depth_dropout {
            1 + rng.below(d as u64 - 1) as usize
        } else {
            d
        }
    }

    fn run(&self, z: &Tensor, depth: usize, with_losses: bool) -> Result<(LfqCodes, Option<LfqLosses>)> {
        self.check_depth(depth)?;
        let bits = self.cfg.token_bits;
        let (z3, layout) = self.channels_last(z)?;
        let (b, n, _) = z3.dims3()?;
        if z3.device().is_cuda() {
            return self.run_fused(&z3, layout, depth, with_losses);
        }
        let device = z3.device();
        let mut cum = z3.flatten_all()?.to_vec1::<f32>()?;
        let mut tokens = vec![0u32; b * n * depth];
        let mut q = if with_losses { vec![0f32; depth * cum.len()] } else { Vec::new() };
        codes::quantize_in_place(&mut cum, bits, depth, &mut tokens, with_losses.then_some(&mut q[..]));

        let cum = Tensor::from_vec(cum, (b, n, bits), device)?;
        let z_q = (&z3 + (&cum - &z3)?.detach())?;
        let tokens = Tensor::from_vec(tokens, (b, n, depth), device)?;
        let losses = if with_losses { Some(self.losses_from_q(&z3, q, depth)?) } else { None };
        let (z_q, cum) = match layout {
            Layout::ChannelsLast => (z_q, cum),
            Layout::ChannelsFirst => (to_channels_first(&z_q)?, to_channels_first(&cum)?),
        };
        Ok((LfqCodes { z_q, cum, tokens }, losses))
    }

    /// `run` on a GPU: one fused pass gives every depth's codes, ids and (for the losses) residuals, bit-identical
    /// to the CPU loop.
    fn run_fused(
        &self,
        z3: &Tensor,
        layout: Layout,
        depth: usize,
        with_losses: bool,
    ) -> Result<(LfqCodes, Option<LfqLosses>)> {
        let bits = self.cfg.token_bits;
        let (b, n, _) = z3.dims3()?;
        let rows = b * n;
        let flat = z3.reshape((rows, bits))?;
        let (pass, losses) = if with_losses {
            let (r, pass) = fused::residuals(&flat, bits, depth)?;
            let q = pass.q.as_ref().expect("a training pass keeps q");
            let losses = self.losses_from_residuals(&r, q, depth)?;
            (pass, Some(losses))
        } else {
            (self.inference_pass(&flat, depth)?, None)
        };
        let cum = pass.cum.reshape((b, n, bits))?;
        let z_q = (z3 + (&cum - z3)?.detach())?;
        let tokens = pass.tokens.reshape((b, n, depth))?;
        let (z_q, cum) = match layout {
            Layout::ChannelsLast => (z_q, cum),
            Layout::ChannelsFirst => (to_channels_first(&z_q)?, to_channels_first(&cum)?),
        };
        Ok((LfqCodes { z_q, cum, tokens }, losses))
    }

    /// Losses from the per-depth codes q (depth x rows x bits, constants): r_s = z - sum_{t<s} q_t carries the
    /// gradient to z.
    fn losses_from_q(&self, z3: &Tensor, q: Vec<f32>, depth: usize) -> Result<LfqLosses> {
        let cfg = &self.cfg;
        let bits = cfg.token_bits;
        let rows = z3.elem_count() / bits;
        let per_depth = rows * bits;
        let mut cum_before = vec![0f32; q.len()];
        for s in 1..depth {
            let (done, next) = cum_before.split_at_mut(s * per_depth);
            let (prev_cum, prev_q) = (&done[(s - 1) * per_depth..], &q[(s - 1) * per_depth..s * per_depth]);
            for ((c, &pc), &pq) in next[..per_depth].iter_mut().zip(prev_cum).zip(prev_q) {
                *c = pc + pq;
            }
        }
        let device = z3.device();
        let q = Tensor::from_vec(q, (depth, rows, bits), device)?;
        let cum_before = Tensor::from_vec(cum_before, (depth, rows, bits), device)?;
        let r = z3.reshape((1, rows, bits))?.broadcast_sub(&cum_before)?;
        self.losses_from_residuals(&r, &q, depth)
    }

    /// Losses from every depth's residual r (depth x rows x bits, carrying the gradient to z) and code q.
    fn losses_from_residuals(&self, r: &Tensor, q: &Tensor, depth: usize) -> Result<LfqLosses> {
        let cfg = &self.cfg;
        let (_, rows, bits) = r.dims3()?;
        let per_depth = rows * bits;
        let device = r.device();

        // MDQ: beta * mean((q_s - r_s)^2) per depth, averaged over depths.
        let per_depth_mse = (q - r)?.sqr()?.reshape((depth, per_depth))?.mean(1)?;
        let commitment = (per_depth_mse * cfg.commitment_cost)?.mean(0)?;

        let (entropy, per_sample_entropy, avg_entropy) = if cfg.entropy_loss_weight != 0.0 {
            let groups = cfg.entropy_groups.unwrap_or(1);
            let rows_all = r.reshape((depth * rows, bits))?;
            let terms = entropy::entropy_terms(&rows_all, groups, cfg.entropy_loss_temperature, cfg.entropy_gamma)?;
            let entropy = ((&terms.per_sample - &terms.avg)? * cfg.entropy_loss_weight)?;
            (entropy, terms.per_sample, terms.avg)
        } else {
            let zero = Tensor::zeros((), DType::F32, device)?;
            (zero.clone(), zero.clone(), zero)
        };
        let total = (&entropy + &commitment)?;
        Ok(LfqLosses { commitment, entropy, per_sample_entropy, avg_entropy, total })
    }

    /// cum_d for the first `depth` depths of `tokens` (B, N, >= depth), channels-last (B, N, bits) f32: the
    /// decoder input for a prefix of the tokens. Accepts U8, U32, I32 and I64 indices.
    pub fn codes_from_tokens(&self, tokens: &Tensor, depth: usize) -> Result<Tensor> {
        self.check_depth(depth)?;
        let bits = self.cfg.token_bits;
        let (b, n, stride) =
            tokens.dims3().map_err(|_| shape_mismatch!("tokens must be (B, N, depths), got {:?}", tokens.dims()))?;
        if stride < depth {
            return Err(shape_mismatch!("tokens {:?} hold {stride} depth(s), {depth} requested", tokens.dims()));
        }
        if !matches!(tokens.dtype(), DType::U8 | DType::U32 | DType::I32 | DType::I64) {
            return Err(invalid!("tokens must be integers, got {:?}", tokens.dtype()));
        }
        if tokens.device().is_cuda() {
            return self.codes_from_tokens_fused(tokens, depth);
        }
        let limit = 1u64 << bits;
        // Only the depths that will be decoded need to be valid.
        let out_of_range = |i: usize, t: i64| {
            let (row, s) = (i / stride, i % stride);
            invalid!("token {t} at (batch {}, position {}, depth {s}) is outside 0..2^{bits}", row / n, row % n)
        };
        // U32 (what `quantize` returns) is read as is; the other integer types go through i64 to catch negatives.
        let host: Vec<u32> = if tokens.dtype() == DType::U32 {
            let host = tokens.flatten_all()?.to_vec1::<u32>()?;
            if let Some(i) = (0..host.len()).find(|&i| i % stride < depth && u64::from(host[i]) >= limit) {
                return Err(out_of_range(i, i64::from(host[i])));
            }
            host
        } else {
            let wide = tokens.to_dtype(DType::I64)?.flatten_all()?.to_vec1::<i64>()?;
            if let Some(i) = (0..wide.len()).find(|&i| i % stride < depth && !(0..limit as i64).contains(&wide[i])) {
                return Err(out_of_range(i, wide[i]));
            }
            wide.into_iter().map(|t| t as u32).collect()
        };
        let mut cum = vec![0f32; b * n * bits];
        codes::cum_from_tokens(&host, stride, depth, bits, &mut cum);
        Ok(Tensor::from_vec(cum, (b, n, bits), tokens.device())?)
    }

    #[cfg(feature = "cuda")]
    fn inference_pass(&self, z: &Tensor, depth: usize) -> Result<fused::PassOutputs> {
        fused::quantize_pass(z, self.cfg.token_bits, depth)
    }

    /// Without CUDA (the CPU tests of the GPU wiring) the training pass stands in: same cum and ids.
    #[cfg(not(feature = "cuda"))]
    fn inference_pass(&self, z: &Tensor, depth: usize) -> Result<fused::PassOutputs> {
        Ok(fused::residuals(z, self.cfg.token_bits, depth)?.1)
    }

    /// `codes_from_tokens` on a GPU: ids are range-checked by the decode kernel itself, and only the first bad
    /// position (if any) comes back to the host.
    #[cfg(feature = "cuda")]
    fn codes_from_tokens_fused(&self, tokens: &Tensor, depth: usize) -> Result<Tensor> {
        let bits = self.cfg.token_bits;
        let (b, n, stride) = tokens.dims3()?;
        // The cast to u32 would wrap negative ids and 64-bit ids of 2^32 and more into range: check them first.
        if tokens.dtype() != DType::U32 && tokens.dtype() != DType::U8 {
            let used = tokens.narrow(2, 0, depth)?.to_dtype(DType::I64)?;
            let (min, max) = (used.min_all()?.to_scalar::<i64>()?, used.max_all()?.to_scalar::<i64>()?);
            let bad = if min < 0 { Some(min) } else { (max >> bits != 0).then_some(max) };
            if let Some(t) = bad {
                return Err(invalid!("token {t} is outside 0..2^{bits}"));
            }
        }
        let ids = tokens.to_dtype(DType::U32)?.contiguous()?;
        let (cum, bad) = cuda::decode(&ids, stride, depth, bits)?;
        if let Some(i) = bad {
            let t = ids.flatten_all()?.get(i)?.to_scalar::<u32>()?;
            let (row, s) = (i / stride, i % stride);
            return Err(invalid!(
                "token {t} at (batch {}, position {}, depth {s}) is outside 0..2^{bits}",
                row / n,
                row % n
            ));
        }
        Ok(cum.reshape((b, n, bits))?)
    }

    #[cfg(not(feature = "cuda"))]
    fn codes_from_tokens_fused(&self, _tokens: &Tensor, _depth: usize) -> Result<Tensor> {
        unreachable!("a CUDA tensor exists only in a CUDA build")
    }
}
