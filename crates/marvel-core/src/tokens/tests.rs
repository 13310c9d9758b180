//! The byte format over random grids and damaged buffers, and the depth-major layout around it.

use super::bytes::{pack_tokens, tokens_from_bytes, tokens_to_bytes, unpack_tokens};
use super::*;
use crate::quantize::lfq::SplitMix64;

#[test]
fn token_bytes_round_trip() {
    for seed in 0..300 {
        let mut rng = SplitMix64::new(seed);
        let bits = 1 + rng.below(32) as usize;
        let shape = (rng.below(4) as usize, rng.below(40) as usize, 1 + rng.below(5) as usize);
        let count = shape.0 * shape.1 * shape.2;
        let mask = if bits == 32 { u32::MAX } else { (1u32 << bits) - 1 };
        let mut tokens: Vec<u32> = (0..count).map(|_| rng.next_u64() as u32 & mask).collect();
        if let Some(t) = tokens.first_mut() {
            *t = mask; // the largest value must survive
        }
        let packed = pack_tokens(&tokens, bits).unwrap();
        assert_eq!(packed.len(), (count * bits).div_ceil(8));
        assert_eq!(unpack_tokens(&packed, bits, count).unwrap(), tokens);
        let bytes = tokens_to_bytes(&tokens, shape, bits).unwrap();
        let grid = tokens_from_bytes(&bytes).unwrap();
        assert_eq!((grid.batch, grid.num_tokens, grid.depth, grid.bits), (shape.0, shape.1, shape.2, bits));
        assert_eq!(grid.tokens, tokens);
    }
}

#[test]
fn token_bytes_reject_damaged_buffers() {
    let tokens: Vec<u32> = (0..3 * 8 * 4).map(|i| (i * 37 % 4096) as u32).collect();
    let good = tokens_to_bytes(&tokens, (3, 8, 4), 12).unwrap();
    assert_eq!(good.len(), 20 + 96 * 12 / 8);
    let reject = |bytes: &[u8], needle: &str| {
        let err = tokens_from_bytes(bytes).unwrap_err();
        assert_eq!(err.code(), "MARVEL_INVALID_ARGUMENT");
        assert!(err.to_string().contains(needle), "{err} (wanted {needle:?})");
    };
    reject(&good[..good.len() - 1], "truncated");
    reject(&good[..10], "truncated header");
    reject(&[good.as_slice(), &[0]].concat(), "trailing bytes");
    let mut bad = good.clone();
    bad[0] = b'X';
    reject(&bad, "bad magic");
    let mut bad = good.clone();
    bad[4] = 2;
    reject(&bad, "version 2");
    let mut bad = good.clone();
    bad[5] = 0;
    reject(&bad, "bits per token 0");
    let mut bad = good.clone();
    bad[12] = 9; // 3 x 9 x 4 tokens promised, 3 x 8 x 4 present
    reject(&bad, "truncated");
    // 5 tokens of 3 bits leave 1 padding bit.
    let mut odd = tokens_to_bytes(&[1, 2, 3, 4, 5], (1, 5, 1), 3).unwrap();
    *odd.last_mut().unwrap() |= 0x80;
    reject(&odd, "padding");
    assert!(pack_tokens(&[4096], 12).unwrap_err().to_string().contains("does not fit in 12 bits"));
    assert!(tokens_to_bytes(&tokens, (3, 8, 3), 12).is_err());
    assert!(unpack_tokens(&good[20..50], 12, 96).is_err());
}

#[test]
fn token_bytes_round_trip_in_depth_major_order() {
    let ids: Vec<u32> = (0..2 * 3 * 5).map(|i| (i * 37 % 4096) as u32).collect();
    let t = TokenBatch::new(ids, 2, 3, 5).unwrap();
    let bytes = t.to_bytes(12).unwrap();
    assert_eq!(bytes.len(), 20 + (30 * 12usize).div_ceil(8));
    let (back, bits) = TokenBatch::from_bytes(&bytes).unwrap();
    assert_eq!((back, bits), (t.clone(), 12));
    assert!(TokenBatch::from_bytes(&bytes[..bytes.len() - 1]).is_err());
    assert!(t.to_bytes(10).is_err(), "id 1073 does not fit in 10 bits");
}

#[test]
fn depth_last_grids_become_depth_major() {
    // (B=2, N=3, D=2): id = 100 b + 10 n + d.
    let grid: Vec<u32> = (0..2).flat_map(|b| (0..3).flat_map(move |n| (0..2).map(move |d| 100 * b + 10 * n + d))).collect();
    let t = TokenBatch::from_depth_last(&grid, 2, 3, 2).unwrap();
    assert_eq!(t.ids, vec![0, 10, 20, 100, 110, 120, 1, 11, 21, 101, 111, 121]);
    assert_eq!(TokenBatch::from_depth_last(&grid[1..], 2, 3, 2).unwrap_err().code(), "MARVEL_SHAPE_MISMATCH");
}
