//! How a quantizer spends its codebook: the share of entries used and the empirical entropy of the ids, per
//! depth. An entropy near `bits` means every entry is used about equally often (the ids are incompressible);
//! far below it, the tokens carry fewer bits than they cost.

use crate::error::Result;
use crate::{invalid, shape_mismatch};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CodebookUsage {
    /// Distinct ids seen.
    pub distinct: usize,
    /// Shannon entropy of the id frequencies, in bits: −Σ p log₂ p.
    pub entropy_bits: f64,
}

/// Usage of each depth of depth-major ids (`ids[d * per_depth..(d + 1) * per_depth]` are depth d's ids), every id
/// checked to lie below `2^bits`.
pub fn codebook_usage(ids: &[u32], depth: usize, bits: u32) -> Result<Vec<CodebookUsage>> {
    if depth == 0 || ids.is_empty() || !ids.len().is_multiple_of(depth) {
        return Err(shape_mismatch!("codebook usage: {} ids do not split into {depth} depth(s)", ids.len()));
    }
    if !(1..=32).contains(&bits) {
        return Err(invalid!("codebook usage: bits must be in 1..=32, got {bits}"));
    }
    let per_depth = ids.len() / depth;
    ids.chunks_exact(per_depth)
        .enumerate()
        .map(|(d, level)| {
            if let Some(bad) = level.iter().find(|&&id| bits < 32 && id >> bits != 0) {
                return Err(invalid!("codebook usage: id {bad} at depth {} is outside a {bits}-bit codebook", d + 1));
            }
            // Sorting counts the ids without a 2^bits histogram (LFQ codebooks reach 2^23 entries).
            let mut sorted = level.to_vec();
            sorted.sort_unstable();
            let n = sorted.len() as f64;
            let (mut distinct, mut entropy) = (0, 0.0);
            for run in sorted.chunk_by(|a, b| a == b) {
                let p = run.len() as f64 / n;
                distinct += 1;
                entropy -= p * p.log2();
            }
            Ok(CodebookUsage { distinct, entropy_bits: entropy })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_entropy_per_depth() {
        // Depth 1: four ids each once → 2 bits; depth 2: one id four times → 0 bits; depth 3: {1, 1, 2, 3} →
        // -(½ log₂ ½ + 2 · ¼ log₂ ¼) = 1.5 bits.
        let ids = [0, 1, 2, 3, 7, 7, 7, 7, 1, 2, 1, 3];
        let u = codebook_usage(&ids, 3, 3).unwrap();
        assert_eq!(u.iter().map(|x| x.distinct).collect::<Vec<_>>(), [4, 1, 3]);
        assert_eq!(u.iter().map(|x| x.entropy_bits).collect::<Vec<_>>(), [2.0, 0.0, 1.5]);
    }

    #[test]
    fn bad_ids_and_shapes_are_refused() {
        let err = codebook_usage(&[0, 8], 1, 3).unwrap_err();
        assert!(err.to_string().contains("id 8 at depth 1"), "{err}");
        assert_eq!(codebook_usage(&[0, 1, 2], 2, 3).unwrap_err().code(), "MARVEL_SHAPE_MISMATCH");
        assert!(codebook_usage(&[], 1, 3).is_err());
        assert!(codebook_usage(&[u32::MAX], 1, 32).is_ok());
    }
}
