//! The implicit LFQ codebook, on plain f32 buffers. A code is a sign vector, so quantizing is a comparison and a
//! bit-sum per channel: O(bits) per token and depth, with no 2^bits table anywhere. These loops are the hot path of
//! `ResidualLfq::quantize`; tensors are built around them once, not per depth.

/// Scale of depth `s`: 2^-s. Powers of two keep every partial sum of the depth vectors exact in f32 (for fewer
/// than 24 depths), which is why the fixtures can say "exact dyadic values".
#[inline]
pub fn depth_scale(s: usize) -> f32 {
    0.5f32.powi(s as i32)
}

/// Residual sign quantization over `depth` depths, in place: `values` holds rows of `bits` channels of z on
/// entry and the final cum on return (reusing the buffer saves an allocation that costs more than the loop).
///
/// For each row: cum = 0; at depth s, r = z - cum, q = +2^-s where r > 0 and -2^-s elsewhere (sign(0) = -1, as
/// MDQ's `z > 0` mask), token = sum_k [q_k > 0] 2^k, cum += q. Writes the tokens (`rows x depths`, depth fastest)
/// and, when asked, every depth's q (`depth x rows x bits`, depth slowest: the order MDQ stacks its per-depth
/// affinities in).
pub fn quantize_in_place(
    values: &mut [f32],
    bits: usize,
    depth: usize,
    tokens: &mut [u32],
    mut per_depth_q: Option<&mut [f32]>,
) {
    assert!((1..=32).contains(&bits) && values.len() % bits == 0);
    let rows = values.len() / bits;
    assert_eq!(tokens.len(), rows * depth);
    if let Some(q) = per_depth_q.as_deref() {
        assert_eq!(q.len(), depth * values.len());
    }
    let mut z = [0f32; 32];
    for (row, (vr, tr)) in values.chunks_exact_mut(bits).zip(tokens.chunks_exact_mut(depth)).enumerate() {
        let z = &mut z[..bits];
        z.copy_from_slice(vr);
        vr.fill(0.0);
        for (s, token) in tr.iter_mut().enumerate() {
            let scale = depth_scale(s).to_bits();
            let mut index = 0u32;
            for (k, (&zk, ck)) in z.iter().zip(vr.iter_mut()).enumerate() {
                // r = 0 and NaN count as negative, as in MDQ.
                let positive = (zk - *ck > 0.0) as u32;
                index |= positive << k;
                *ck += signed(scale, positive);
            }
            *token = index;
            if let Some(q) = per_depth_q.as_deref_mut() {
                let base = (s * rows + row) * bits;
                fill_code(&mut q[base..base + bits], index, depth_scale(s));
            }
        }
    }
}

/// +|scale| when `bit` is 1, -|scale| when it is 0, without a branch: the bits of real tokens are coin flips, and
/// a mispredicted branch per channel costs more than the rest of these loops.
#[inline(always)]
fn signed(scale_bits: u32, bit: u32) -> f32 {
    f32::from_bits((scale_bits & 0x7fff_ffff) | ((bit ^ 1) << 31))
}

/// Writes code `index` scaled by `scale`: channel k is +scale iff bit k of `index` is set.
#[inline]
pub fn fill_code(out: &mut [f32], index: u32, scale: f32) {
    let scale = scale.to_bits();
    for (k, o) in out.iter_mut().enumerate() {
        *o = signed(scale, (index >> k) & 1);
    }
}

/// Token index of a sign vector: bit k set iff channel k is positive (channel 0 is the least significant bit).
pub fn index_of_signs(code: &[f32]) -> u32 {
    code.iter().enumerate().fold(0u32, |acc, (k, &v)| acc | (((v > 0.0) as u32) << k))
}

/// The first `depth` depth vectors of each token summed: cum_d = sum_{s<d} code(token_s) 2^-s. `tokens` holds
/// `rows x stride` indices (depth fastest; `stride >= depths`), already checked to be below 2^bits.
pub fn cum_from_tokens(tokens: &[u32], stride: usize, depth: usize, bits: usize, cum: &mut [f32]) {
    debug_assert!(depth <= stride && tokens.len() % stride == 0);
    debug_assert_eq!(cum.len(), tokens.len() / stride * bits);
    cum.fill(0.0);
    for (row, cr) in tokens.chunks_exact(stride).zip(cum.chunks_exact_mut(bits)) {
        // Same order of additions as `quantize_in_place` (0 + q_0 + q_1 + ...), so both give bit-identical sums.
        for (s, &index) in row[..depth].iter().enumerate() {
            let scale = depth_scale(s).to_bits();
            for (k, ck) in cr.iter_mut().enumerate() {
                *ck += signed(scale, (index >> k) & 1);
            }
        }
    }
}

/// The whole implicit codebook of a `bits`-bit group as +-1 rows (2^bits x bits, row-major), in index order. Only
/// the entropy estimate materialises it, and only per group.
pub fn codebook_signs(bits: usize) -> Vec<f32> {
    let n = 1usize << bits;
    let mut out = vec![0f32; n * bits];
    for (i, row) in out.chunks_exact_mut(bits).enumerate() {
        fill_code(row, i as u32, 1.0);
    }
    out
}
