//! The pools of the FID Inception blocks. candle's pools take no padding, so it is added here: `-inf` for the
//! max pool (padding never wins), and for pytorch-fid's `avg_pool2d(3, stride=1, padding=1,
//! count_include_pad=False)` a sum over the zero-padded input divided by the number of real pixels under each
//! window (4 in a corner, 6 on an edge, 9 inside) — the change pytorch-fid makes to torchvision's blocks to match
//! the TensorFlow graph the FID weights come from.

use candle_core::{Result, Tensor};

/// `F.max_pool2d(x, 3, stride)` with `padding` on every side.
pub fn max_pool3(x: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    let x = if padding == 0 { x.clone() } else { pad_value(x, padding, f32::NEG_INFINITY)? };
    x.max_pool2d_with_stride(3, stride)
}

fn pad_value(x: &Tensor, p: usize, value: f32) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let rows = Tensor::full(value, (b, c, p, w), x.device())?.to_dtype(x.dtype())?;
    let x = Tensor::cat(&[&rows, x, &rows], 2)?;
    let cols = Tensor::full(value, (b, c, h + 2 * p, p), x.device())?.to_dtype(x.dtype())?;
    Tensor::cat(&[&cols, &x, &cols], 3)
}

/// `F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)`.
pub fn avg_pool3_same(x: &Tensor) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let sums = (x.pad_with_zeros(2, 1, 1)?.pad_with_zeros(3, 1, 1)?.avg_pool2d_with_stride(3, 1)? * 9.0)?;
    // Pixels of the window inside the image, per axis: 2 at either end, 3 inside (a 1-pixel side: 1).
    let inside = |n: usize, i: usize| (i + 2).min(n) - i.saturating_sub(1);
    let counts: Vec<f32> = (0..h).flat_map(|y| (0..w).map(move |x| (inside(h, y) * inside(w, x)) as f32)).collect();
    let counts = Tensor::from_vec(counts, (1, 1, h, w), x.device())?.to_dtype(x.dtype())?;
    sums.broadcast_div(&counts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn average_excludes_the_padding() {
        // 3x3 of 1..9: the corner averages its 2x2 neighbourhood, the centre all nine.
        let x = Tensor::from_vec((1..=9).map(|v| v as f32).collect::<Vec<_>>(), (1, 1, 3, 3), &Device::Cpu).unwrap();
        let y = avg_pool3_same(&x).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(y[0], (1.0 + 2.0 + 4.0 + 5.0) / 4.0);
        assert_eq!(y[1], (1.0 + 2.0 + 3.0 + 4.0 + 5.0 + 6.0) / 6.0);
        assert_eq!(y[4], 5.0);
    }

    #[test]
    fn max_padding_never_wins() {
        let x = Tensor::from_vec(vec![-5f32, -4.0, -3.0, -2.0], (1, 1, 2, 2), &Device::Cpu).unwrap();
        let y = max_pool3(&x, 1, 1).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(y, [-2.0; 4]);
    }
}
