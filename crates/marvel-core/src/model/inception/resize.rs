//! pytorch-fid's input path: 8-bit images → `x / 255` (torchvision's `ToTensor`) → `F.interpolate(size=(299, 299),
//! mode='bilinear', align_corners=False)` → `2x − 1`. The resize follows PyTorch's CPU kernel in f32: source
//! coordinate `(o + ½) · in/out − ½` clamped at 0, the neighbour on the far side clamped to the last pixel, no
//! antialiasing (PyTorch's default), so the features match pytorch-fid's when sizes differ from 299.

use candle_core::{Device, Tensor};

use crate::error::Result;
use crate::image::u8_to_unit_table;
use crate::tensor::check_shape;

/// For each output index along one axis: (first source index, second source index, weight of the second).
fn taps(input: usize, output: usize) -> Vec<(usize, usize, f32)> {
    let scale = input as f32 / output as f32;
    (0..output)
        .map(|o| {
            let src = (scale * (o as f32 + 0.5) - 0.5).max(0.0);
            let i0 = (src as usize).min(input - 1);
            let i1 = if i0 < input - 1 { i0 + 1 } else { i0 };
            (i0, i1, src - i0 as f32)
        })
        .collect()
}

/// Interleaved RGB bytes (B, H, W, 3) → the network input (B, 3, side, side) in [-1, 1].
pub fn prepare_input(data: &[u8], (b, h, w): (usize, usize, usize), side: usize, device: &Device) -> Result<Tensor> {
    check_shape("images", data.len(), &[b, h, w, 3])?;
    let table = u8_to_unit_table();
    let (ty, tx) = (taps(h, side), taps(w, side));
    let mut out = vec![0f32; b * 3 * side * side];
    for (img, dst) in data.chunks_exact(h * w * 3).zip(out.chunks_exact_mut(3 * side * side)) {
        for c in 0..3 {
            let px = |y: usize, x: usize| table[img[(y * w + x) * 3 + c] as usize];
            let plane = &mut dst[c * side * side..(c + 1) * side * side];
            for (oy, &(y0, y1, ly)) in ty.iter().enumerate() {
                for (ox, &(x0, x1, lx)) in tx.iter().enumerate() {
                    let top = (1.0 - lx) * px(y0, x0) + lx * px(y0, x1);
                    let bottom = (1.0 - lx) * px(y1, x0) + lx * px(y1, x1);
                    let v = (1.0 - ly) * top + ly * bottom;
                    plane[oy * side + ox] = 2.0 * v - 1.0;
                }
            }
        }
    }
    Ok(Tensor::from_vec(out, (b, 3, side, side), device)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_size_is_the_identity_and_upsampling_interpolates() {
        let bytes: Vec<u8> = (0..4 * 4 * 3).map(|i| (i * 5) as u8).collect();
        let x = prepare_input(&bytes, (1, 4, 4), 4, &Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        // Channel 0 of pixel (1, 2): byte 5 * ((1*4 + 2) * 3).
        assert_eq!(x[6], 2.0 * (90.0f32 / 255.0) - 1.0);
        // 1 → 2 pixels wide: both taps on the single source pixel; 2 → 4: sources at -0.25 (clamped to 0), 0.25, 0.75, 1.25.
        assert_eq!(taps(1, 2), [(0, 0, 0.0), (0, 0, 0.25)]);
        assert_eq!(taps(2, 4), [(0, 1, 0.0), (0, 1, 0.25), (0, 1, 0.75), (1, 1, 0.25)]);
    }
}
