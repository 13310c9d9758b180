//! Compact byte format for token grids (VQ ids are the one-depth case), for storage and for passing tokens across
//! the Node boundary.
//!
//! Layout (all integers little-endian), 20 header bytes then the payload:
//!
//! | offset | bytes | field |
//! |---|---|---|
//! | 0 | 4 | magic `MLFQ` |
//! | 4 | 1 | format version, 1 |
//! | 5 | 1 | bits per token, 1..=32 |
//! | 6 | 2 | reserved, 0 |
//! | 8 | 4 | batch (images) |
//! | 12 | 4 | tokens per image |
//! | 16 | 4 | depths per token |
//! | 20 | ceil(count * bits / 8) | the count = batch * tokens * depths indices, row-major (depth fastest), each in `bits` bits |
//!
//! The payload is one little-endian bit stream: token i occupies stream bits [i*bits, (i+1)*bits), its least
//! significant bit first; the unused high bits of the last byte are zero. There is no checksum: a truncated buffer,
//! a wrong magic, version, reserved field or padding, or a length that disagrees with the header is rejected, but a
//! flipped payload bit decodes to another valid token.

use crate::error::{MarvelError, Result};
use crate::invalid;

pub const TOKEN_BYTES_MAGIC: [u8; 4] = *b"MLFQ";
pub const TOKEN_BYTES_VERSION: u8 = 1;
pub const TOKEN_BYTES_HEADER_LEN: usize = 20;

/// A token grid read back from bytes: `tokens` is `batch x num_tokens x depths`, depth fastest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenGrid {
    pub batch: usize,
    pub num_tokens: usize,
    pub depth: usize,
    pub bits: usize,
    pub tokens: Vec<u32>,
}

fn check_bits(bits: usize) -> Result<()> {
    if !(1..=32).contains(&bits) {
        return Err(invalid!("token bits must be in 1..=32, got {bits}"));
    }
    Ok(())
}

fn payload_len(count: usize, bits: usize) -> Option<usize> {
    count.checked_mul(bits).map(|b| b.div_ceil(8))
}

/// Packs each token into `bits` bits of a little-endian bit stream (see the module docs). Errors if a token does
/// not fit in `bits` bits.
pub fn pack_tokens(tokens: &[u32], bits: usize) -> Result<Vec<u8>> {
    check_bits(bits)?;
    let limit = 1u64 << bits;
    let mut out = Vec::with_capacity(payload_len(tokens.len(), bits).unwrap_or(0));
    // At most 7 pending bits plus 32 new ones: a u64 accumulator never overflows.
    let (mut acc, mut pending) = (0u64, 0usize);
    for (i, &t) in tokens.iter().enumerate() {
        if u64::from(t) >= limit {
            return Err(invalid!("token {t} at position {i} does not fit in {bits} bits"));
        }
        acc |= u64::from(t) << pending;
        pending += bits;
        while pending >= 8 {
            out.push(acc as u8);
            acc >>= 8;
            pending -= 8;
        }
    }
    if pending > 0 {
        out.push(acc as u8);
    }
    Ok(out)
}

/// Reads `count` tokens of `bits` bits from the front of `bytes` (the inverse of [`pack_tokens`]).
pub fn unpack_tokens(bytes: &[u8], bits: usize, count: usize) -> Result<Vec<u32>> {
    check_bits(bits)?;
    let need = payload_len(count, bits).ok_or_else(|| invalid!("{count} tokens of {bits} bits overflow"))?;
    if bytes.len() < need {
        return Err(invalid!(
            "token payload truncated: {count} tokens of {bits} bits need {need} bytes, got {}",
            bytes.len()
        ));
    }
    let mask = (1u64 << bits) - 1;
    let mut out = Vec::with_capacity(count);
    let mut bytes_iter = bytes.iter();
    let (mut acc, mut available) = (0u64, 0usize);
    for _ in 0..count {
        while available < bits {
            // Cannot run dry: `need` bytes were checked above.
            acc |= u64::from(*bytes_iter.next().unwrap()) << available;
            available += 8;
        }
        out.push((acc & mask) as u32);
        acc >>= bits;
        available -= bits;
    }
    Ok(out)
}

/// Serialises a `shape = (batch, num_tokens, depths)` grid of `bits`-bit tokens with the header above.
pub fn tokens_to_bytes(tokens: &[u32], shape: (usize, usize, usize), bits: usize) -> Result<Vec<u8>> {
    check_bits(bits)?;
    let (b, n, d) = shape;
    let count = b.checked_mul(n).and_then(|x| x.checked_mul(d));
    if count != Some(tokens.len()) {
        return Err(crate::shape_mismatch!("token grid {b}x{n}x{d} does not match the {} tokens given", tokens.len()));
    }
    let dims: Vec<u32> = [b, n, d]
        .iter()
        .map(|&v| u32::try_from(v).map_err(|_| invalid!("token grid dimension {v} exceeds u32")))
        .collect::<Result<_>>()?;
    let payload = pack_tokens(tokens, bits)?;
    let mut out = Vec::with_capacity(TOKEN_BYTES_HEADER_LEN + payload.len());
    out.extend_from_slice(&TOKEN_BYTES_MAGIC);
    out.push(TOKEN_BYTES_VERSION);
    out.push(bits as u8);
    out.extend_from_slice(&[0, 0]);
    for v in dims {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(&payload);
    Ok(out)
}

fn corrupt(msg: String) -> MarvelError {
    MarvelError::InvalidArgument(format!("token bytes: {msg}"))
}

/// Parses bytes written by [`tokens_to_bytes`], validating the header, the exact length and the padding bits.
pub fn tokens_from_bytes(bytes: &[u8]) -> Result<TokenGrid> {
    if bytes.len() < TOKEN_BYTES_HEADER_LEN {
        return Err(corrupt(format!(
            "truncated header: {} bytes, need at least {TOKEN_BYTES_HEADER_LEN}",
            bytes.len()
        )));
    }
    if bytes[..4] != TOKEN_BYTES_MAGIC {
        return Err(corrupt(format!("bad magic {:?}, expected \"MLFQ\"", &bytes[..4])));
    }
    if bytes[4] != TOKEN_BYTES_VERSION {
        return Err(corrupt(format!("unsupported version {}, this build reads {TOKEN_BYTES_VERSION}", bytes[4])));
    }
    let bits = usize::from(bytes[5]);
    if !(1..=32).contains(&bits) {
        return Err(corrupt(format!("bits per token {bits} outside 1..=32")));
    }
    if bytes[6..8] != [0, 0] {
        return Err(corrupt(format!("reserved bytes {:?} are not zero", &bytes[6..8])));
    }
    let word = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    let (batch, num_tokens, depth) = (word(8), word(12), word(16));
    let count = batch
        .checked_mul(num_tokens)
        .and_then(|x| x.checked_mul(depth))
        .ok_or_else(|| corrupt(format!("grid {batch}x{num_tokens}x{depth} overflows")))?;
    let need = payload_len(count, bits).ok_or_else(|| corrupt(format!("{count} tokens of {bits} bits overflow")))?;
    let payload = &bytes[TOKEN_BYTES_HEADER_LEN..];
    if payload.len() != need {
        let what = if payload.len() < need { "truncated" } else { "trailing bytes" };
        return Err(corrupt(format!(
            "{what}: header says {batch}x{num_tokens}x{depth} tokens of {bits} bits = {need} payload bytes, \
             got {}",
            payload.len()
        )));
    }
    let used_bits = count * bits % 8;
    if used_bits != 0 && payload[need - 1] >> used_bits != 0 {
        return Err(corrupt("non-zero padding bits in the last byte".into()));
    }
    let tokens = unpack_tokens(payload, bits, count)?;
    Ok(TokenGrid { batch, num_tokens, depth, bits, tokens })
}
