//! Zero-padded copies of a batch of maps: what the convolutions that read their input in place (`conv_direct.rs`,
//! `conv_shifted.rs`) read from, so that every window lies inside a map and no read needs a bounds test.

use rayon::prelude::*;

use super::scratch::{scratch, Scratch};

/// `maps` maps of (h, w) values from `src`, each upsampled `up`x (nearest) and placed at (top, left) of a zeroed
/// plane of `rows` x `stride` floats; then `tail` zeros after the last plane (for reads that run past it).
pub(super) fn padded_maps(
    src: &[f32],
    maps: usize,
    (h, w): (usize, usize),
    up: usize,
    (top, left): (usize, usize),
    (rows, stride): (usize, usize),
    tail: usize,
) -> Scratch {
    let plane = rows * stride;
    assert!(src.len() == maps * h * w && top + h * up <= rows && left + w * up <= stride, "padded_maps: sizes");
    let mut dst = scratch(maps * plane + tail);
    dst[maps * plane..].fill(0.0);
    if h * w == 0 {
        dst[..maps * plane].fill(0.0);
        return dst;
    }
    dst[..maps * plane].par_chunks_mut(plane).zip(src.par_chunks(h * w)).for_each(|(d, map)| {
        d[..top * stride].fill(0.0);
        for (y, row) in map.chunks_exact(w).enumerate() {
            for a in 0..up {
                let out = &mut d[(top + y * up + a) * stride..][..stride];
                out[..left].fill(0.0);
                if up == 1 {
                    out[left..left + w].copy_from_slice(row);
                } else {
                    out[left..left + w * up].iter_mut().enumerate().for_each(|(i, v)| *v = row[i / up]);
                }
                out[left + w * up..].fill(0.0);
            }
        }
        d[(top + h * up) * stride..].fill(0.0);
    });
    dst
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every value lands where the placement says, upsampled, and everything else (the border, the tail) is zero,
    /// also over stale pooled memory; empty maps give zeroed planes.
    #[test]
    fn places_maps_in_zeroed_planes() {
        // Leave stale values in the pool first.
        drop({
            let mut s = scratch(4096);
            s.fill(7.0);
            s
        });
        let src: Vec<f32> = (1..=12).map(|v| v as f32).collect();
        let (rows, stride) = (7, 8);
        let got = padded_maps(&src, 2, (2, 3), 2, (1, 2), (rows, stride), 3);
        assert_eq!(got.len(), 2 * rows * stride + 3);
        for m in 0..2 {
            for r in 0..rows {
                for c in 0..stride {
                    let (y, x) = (r as isize - 1, c as isize - 2);
                    let want = if (0..4).contains(&y) && (0..6).contains(&x) {
                        src[m * 6 + (y / 2) as usize * 3 + (x / 2) as usize]
                    } else {
                        0.0
                    };
                    assert_eq!(got[m * rows * stride + r * stride + c], want, "map {m} ({r}, {c})");
                }
            }
        }
        assert!(got[2 * rows * stride..].iter().all(|&v| v == 0.0), "tail");
        let empty = padded_maps(&[], 3, (0, 4), 1, (1, 1), (3, 6), 2);
        assert!(empty.iter().all(|&v| v == 0.0) && empty.len() == 3 * 18 + 2);
    }
}
