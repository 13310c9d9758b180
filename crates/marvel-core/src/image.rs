//! Images at the boundary: interleaved RGB bytes (B, H, W, 3), the form callers hold, to and from the models'
//! float input (B, 3, H, W) in [0, 1]. One module, so every model converts bytes the same way.

use candle_core::{DType, Device, Tensor};

use crate::error::Result;
use crate::shape_mismatch;

/// The model input for each byte value, f32(v) / 255 with IEEE division as the reference computes it
/// (multiplying by a rounded 1/255 differs in the last bit for about half the values).
pub fn u8_to_unit_table() -> [f32; 256] {
    std::array::from_fn(|v| v as f32 / 255.0)
}

/// Interleaved RGB bytes (B, H, W, 3) -> the model input (B, 3, H, W) f32 in [0, 1].
pub fn images_from_u8_nhwc(data: &[u8], shape: (usize, usize, usize), device: &Device) -> Result<Tensor> {
    let (b, h, w) = shape;
    crate::tensor::check_shape("images", data.len(), &[b, h, w, 3])?;
    let table = u8_to_unit_table();
    let plane = h * w;
    let mut out = vec![0f32; data.len()];
    for (img_in, img_out) in data.chunks_exact(3 * plane).zip(out.chunks_exact_mut(3 * plane)) {
        for (i, px) in img_in.chunks_exact(3).enumerate() {
            for c in 0..3 {
                img_out[c * plane + i] = table[px[c] as usize];
            }
        }
    }
    Ok(Tensor::from_vec(out, (b, 3, h, w), device)?)
}

/// A reconstruction (B, 3, H, W) -> bytes (B, H, W, 3) as the reference's demo and evaluation do:
/// clamp to [0, 1], times 255 in f32, then truncation (not rounding).
pub fn images_to_u8_nhwc(images: &Tensor) -> Result<Vec<u8>> {
    let (_, c, _, _) = images.dims4()?;
    if c != 3 {
        return Err(shape_mismatch!("images must be (B, 3, H, W), got {:?}", images.dims()));
    }
    let nhwc = images.to_dtype(DType::F32)?.permute((0, 2, 3, 1))?.flatten_all()?.to_vec1::<f32>()?;
    // `as u8` truncates toward zero (and maps NaN to 0).
    Ok(nhwc.into_iter().map(|v| (v.clamp(0.0, 1.0) * 255.0) as u8).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_images_round_trip() {
        let table = u8_to_unit_table();
        // IEEE division, not a multiply by a rounded reciprocal.
        assert_eq!(table[3], 3.0f32 / 255.0);
        assert_eq!(table[255], 1.0);
        let (h, w) = (2, 3);
        let bytes: Vec<u8> = (0..2 * h * w * 3).map(|i| (i * 13 % 256) as u8).collect();
        let x = images_from_u8_nhwc(&bytes, (2, h, w), &Device::Cpu).unwrap();
        assert_eq!(x.dims(), &[2, 3, h, w]);
        // Pixel (b=1, y=1, x=2), channel 1 sits at NHWC offset ((1*h + 1)*w + 2)*3 + 1.
        let v = x.get(1).unwrap().get(1).unwrap().get(1).unwrap().get(2).unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(v, table[bytes[((h + 1) * w + 2) * 3 + 1] as usize]);
        // Back to bytes: f32(v / 255) * 255 can land one ulp below v and truncate to v - 1, as in the reference.
        let back = images_to_u8_nhwc(&x).unwrap();
        assert!(back.iter().zip(&bytes).all(|(&a, &b)| a == b || a + 1 == b), "{back:?} vs {bytes:?}");
        assert!(images_from_u8_nhwc(&bytes[1..], (2, h, w), &Device::Cpu).is_err());
        // Clamping and truncation: 0.999 * 255 = 254.7 -> 254.
        let t = Tensor::new(&[-0.5f32, 0.999, 2.0], &Device::Cpu).unwrap().reshape((1, 3, 1, 1)).unwrap();
        assert_eq!(images_to_u8_nhwc(&t).unwrap(), vec![0, 254, 255]);
    }
}
