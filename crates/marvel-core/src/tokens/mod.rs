//! Token ids as the public API holds them, and their compact byte format. Every quantizer's ids (VQ rows, LFQ sign
//! patterns) share this layout: *depth-major* (D, B, N), so the first d depths of a batch are a prefix of the buffer
//! (progressive transmission); VQ is the one-depth case.

pub mod bytes;
#[cfg(test)]
mod tests;

use crate::error::Result;
use crate::tensor::check_shape;

/// Token ids of a batch, depth-major: `ids[(s * batch + b) * num_tokens + n]` is token n of image b at depth s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenBatch {
    pub ids: Vec<u32>,
    pub depth: usize,
    pub batch: usize,
    pub num_tokens: usize,
}

impl TokenBatch {
    pub fn new(ids: Vec<u32>, depth: usize, batch: usize, num_tokens: usize) -> Result<Self> {
        check_shape("tokens", ids.len(), &[depth, batch, num_tokens])?;
        Ok(Self { ids, depth, batch, num_tokens })
    }

    /// The compact byte form ([`bytes`]), `bits` bits per id.
    pub fn to_bytes(&self, bits: usize) -> Result<Vec<u8>> {
        let (d, b, n) = (self.depth, self.batch, self.num_tokens);
        // The byte format stores (batch, token, depth) with depth fastest.
        let mut grid = vec![0u32; self.ids.len()];
        for (i, &id) in self.ids.iter().enumerate() {
            let (s, rest) = (i / (b * n), i % (b * n));
            grid[rest * d + s] = id;
        }
        bytes::tokens_to_bytes(&grid, (b, n, d), bits)
    }

    /// Reads the compact byte form back; returns the ids and the bits per id it was written with.
    pub fn from_bytes(bytes: &[u8]) -> Result<(Self, usize)> {
        let g = bytes::tokens_from_bytes(bytes)?;
        Ok((Self::from_depth_last(&g.tokens, g.batch, g.num_tokens, g.depth)?, g.bits))
    }

    /// Ids laid out (B, N, D), depth fastest (as quantizers compute them and the byte format stores them), in the
    /// depth-major layout.
    pub fn from_depth_last(grid: &[u32], batch: usize, num_tokens: usize, depth: usize) -> Result<Self> {
        check_shape("tokens", grid.len(), &[batch, num_tokens, depth])?;
        let mut ids = vec![0u32; grid.len()];
        for (i, &id) in grid.iter().enumerate() {
            let (rest, s) = (i / depth, i % depth);
            ids[s * batch * num_tokens + rest] = id;
        }
        Ok(Self { ids, depth, batch, num_tokens })
    }
}
