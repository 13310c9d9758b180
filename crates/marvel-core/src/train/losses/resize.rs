//! `F.interpolate(x, size, mode="bilinear", align_corners=False, antialias=True)` as PyTorch computes it on the
//! CPU: separable, width then height, each output pixel a normalised triangle-filter average of the input pixels
//! under its support (PIL-style). The 1-D weights are computed in float32 exactly as torch does: they differ from
//! the exact ones by up to 1.5e-5, which alone would move the resized image by about 1.4e-5.
//!
//! Applied as two matmuls with banded (out, in) matrices, so the resize is differentiable: the perceptual loss
//! backpropagates through it into the reconstruction.

use candle_core::{Device, Tensor};

use crate::error::Result;
use crate::shape_mismatch;

/// The (out_size, in_size) weight matrix of one axis; row i holds output pixel i's weights.
pub fn antialias_bilinear_weights(in_size: usize, out_size: usize) -> Vec<f32> {
    let scale = in_size as f32 / out_size as f32;
    // Downsampling widens the triangle to the input step (the antialiasing); upsampling keeps it at one pixel.
    let (support, inv_scale) = if scale >= 1.0 { (scale, 1.0 / scale) } else { (1.0, 1.0) };
    let mut m = vec![0f32; out_size * in_size];
    for i in 0..out_size {
        let center = scale * (i as f32 + 0.5);
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let row = &mut m[i * in_size..(i + 1) * in_size];
        let mut total = 0f32;
        for (j, w) in row.iter_mut().enumerate().take(xmax).skip(xmin) {
            let t = ((j as f32 - center) + 0.5) * inv_scale;
            *w = (1.0 - t.abs()).max(0.0);
            total += *w;
        }
        if total != 0.0 {
            for w in &mut row[xmin..xmax] {
                *w /= total;
            }
        }
    }
    m
}

/// Resizes an NCHW batch to (out_h, out_w).
pub fn resize_bilinear_antialias(x: &Tensor, out_h: usize, out_w: usize) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    if h == 0 || w == 0 || out_h == 0 || out_w == 0 {
        return Err(shape_mismatch!("cannot resize {:?} to {out_h}x{out_w}", x.dims()));
    }
    let dev: &Device = x.device();
    let rows = Tensor::from_vec(antialias_bilinear_weights(h, out_h), (out_h, h), dev)?.to_dtype(x.dtype())?;
    let cols = Tensor::from_vec(antialias_bilinear_weights(w, out_w), (out_w, w), dev)?.to_dtype(x.dtype())?;
    let wide = x.reshape((b * c * h, w))?.matmul(&cols.t()?)?; // width first, as torch
    let out = rows.broadcast_left(b * c)?.matmul(&wide.reshape((b * c, h, out_w))?)?;
    Ok(out.reshape((b, c, out_h, out_w))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows sum to 1; at scale 1 the resize is the identity; 256 -> 224 weights follow the triangle of width
    /// 2 * 256/224 (checked in f64 against the formula) to float32 accuracy.
    #[test]
    fn weights_are_normalised_triangles() {
        let m = antialias_bilinear_weights(256, 224);
        let s = 256.0f64 / 224.0;
        for i in 0..224 {
            let row = &m[i * 256..(i + 1) * 256];
            let sum: f64 = row.iter().map(|&v| f64::from(v)).sum();
            assert!((sum - 1.0).abs() < 1e-6, "row {i} sums to {sum}");
            let c = (i as f64 + 0.5) * s;
            let exact: Vec<f64> = (0..256).map(|j| (1.0 - ((j as f64 + 0.5 - c) / s).abs()).max(0.0)).collect();
            let total: f64 = exact.iter().sum();
            for j in 0..256 {
                assert!((f64::from(row[j]) - exact[j] / total).abs() < 2e-5, "row {i} col {j}");
            }
        }
        let id = antialias_bilinear_weights(5, 5);
        for i in 0..5 {
            for j in 0..5 {
                assert_eq!(id[i * 5 + j], if i == j { 1.0 } else { 0.0 });
            }
        }
        let x = Tensor::arange(0f32, 24.0, &Device::Cpu).unwrap().reshape((1, 2, 3, 4)).unwrap();
        let y = resize_bilinear_antialias(&x, 3, 4).unwrap();
        assert_eq!(y.flatten_all().unwrap().to_vec1::<f32>().unwrap(), x.flatten_all().unwrap().to_vec1::<f32>().unwrap());
    }
}
