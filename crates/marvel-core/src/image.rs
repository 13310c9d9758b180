//! Images at the boundary: interleaved RGB bytes (B, H, W, 3), the form callers hold, to and from the models'
//! float input (B, 3, H, W) in [0, 1]. One module, so every model converts bytes the same way.

use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

use crate::error::Result;
use crate::shape_mismatch;

/// The model input for each byte value, f32(v) / 255 with IEEE division as the reference computes it
/// (multiplying by a rounded 1/255 differs in the last bit for about half the values).
pub fn u8_to_unit_table() -> [f32; 256] {
    std::array::from_fn(|v| v as f32 / 255.0)
}

/// Pixels a parallel task converts: a few tasks a thread at batch 1 (256x256: 16 a image), each long enough to be
/// worth its hand-off. Conversion runs on the compute pool, which would otherwise idle while the caller's thread
/// converted alone (the decode's went through a permuted copy in candle, a copy out and a clamp pass: measured at
/// ~2% of the single layout's Node decode at batch 8, 2 threads, at best, within the host's noise).
const PIXELS_PER_TASK: usize = 4096;

/// Interleaved RGB bytes (B, H, W, 3) -> the model input (B, 3, H, W) f32 in [0, 1].
pub fn images_from_u8_nhwc(data: &[u8], shape: (usize, usize, usize), device: &Device) -> Result<Tensor> {
    let (b, h, w) = shape;
    crate::tensor::check_shape("images", data.len(), &[b, h, w, 3])?;
    let table = u8_to_unit_table();
    let plane = h * w;
    let mut out = vec![0f32; data.len()];
    if plane > 0 {
        out.par_chunks_mut(3 * plane).zip(data.par_chunks(3 * plane)).for_each(|(img, bytes)| {
            let (r, gb) = img.split_at_mut(plane);
            let (g, bl) = gb.split_at_mut(plane);
            (r.par_chunks_mut(PIXELS_PER_TASK), g.par_chunks_mut(PIXELS_PER_TASK), bl.par_chunks_mut(PIXELS_PER_TASK))
                .into_par_iter()
                .zip(bytes.par_chunks(3 * PIXELS_PER_TASK))
                .for_each(|((r, g, bl), px)| {
                    for (((r, g), bl), px) in r.iter_mut().zip(g).zip(bl).zip(px.chunks_exact(3)) {
                        (*r, *g, *bl) = (table[px[0] as usize], table[px[1] as usize], table[px[2] as usize]);
                    }
                });
        });
    }
    Ok(Tensor::from_vec(out, (b, 3, h, w), device)?)
}

/// A reconstruction (B, 3, H, W) -> bytes (B, H, W, 3) as the reference's demo and evaluation do:
/// clamp to [0, 1], times 255 in f32, then truncation (not rounding).
pub fn images_to_u8_nhwc(images: &Tensor) -> Result<Vec<u8>> {
    let mut out = vec![0u8; images.elem_count()];
    images_to_u8_nhwc_into(images, &mut out)?;
    Ok(out)
}

/// [`images_to_u8_nhwc`] into `out`, which holds exactly B·H·W·3 bytes.
pub fn images_to_u8_nhwc_into(images: &Tensor, out: &mut [u8]) -> Result<()> {
    let (_, c, h, w) = images.dims4()?;
    if c != 3 {
        return Err(shape_mismatch!("images must be (B, 3, H, W), got {:?}", images.dims()));
    }
    crate::tensor::check_shape("decoded images", out.len(), images.dims())?;
    // Contiguous (a copy only for a view), then read in place where it is untracked in CPU memory, as a decode
    // leaves it; else copied out (on a GPU, or under autograd).
    let images = images.to_dtype(DType::F32)?.contiguous()?;
    let owned;
    let borrowed = crate::nn::F32Data::of(&images);
    let src = match &borrowed {
        Some(data) => data.get(),
        None => {
            owned = images.flatten_all()?.to_vec1::<f32>()?;
            &owned
        }
    };
    // `as u8` truncates toward zero (and maps NaN to 0).
    let byte = |v: f32| (v.clamp(0.0, 1.0) * 255.0) as u8;
    let plane = h * w;
    if plane > 0 {
        out.par_chunks_mut(3 * plane).zip(src.par_chunks(3 * plane)).for_each(|(img, planes)| {
            let (r, gb) = planes.split_at(plane);
            let (g, bl) = gb.split_at(plane);
            (r.par_chunks(PIXELS_PER_TASK), g.par_chunks(PIXELS_PER_TASK), bl.par_chunks(PIXELS_PER_TASK))
                .into_par_iter()
                .zip(img.par_chunks_mut(3 * PIXELS_PER_TASK))
                .for_each(|((r, g, bl), px)| {
                    for (((px, &r), &g), &bl) in px.chunks_exact_mut(3).zip(r).zip(g).zip(bl) {
                        px.copy_from_slice(&[byte(r), byte(g), byte(bl)]);
                    }
                });
        });
    }
    Ok(())
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

    /// Both conversions against the per-value definitions, on images of several tasks each (the last one partial),
    /// a batch of them, and values out of range and NaN; the float side also from a view that is not contiguous.
    #[test]
    fn conversions_match_the_plain_loops_across_tasks() {
        let (b, h, w) = (2, 70, 61);
        let plane = h * w;
        assert!(plane > PIXELS_PER_TASK && plane % PIXELS_PER_TASK != 0);
        let bytes: Vec<u8> = (0..b * plane * 3).map(|i| (i * 7919 % 251) as u8).collect();
        let x = images_from_u8_nhwc(&bytes, (b, h, w), &Device::Cpu).unwrap().flatten_all().unwrap();
        let x = x.to_vec1::<f32>().unwrap();
        for (i, &v) in bytes.iter().enumerate() {
            let (img, p, c) = (i / (3 * plane), i / 3 % plane, i % 3);
            assert_eq!(x[(img * 3 + c) * plane + p], v as f32 / 255.0, "byte {i}");
        }

        let mut values: Vec<f32> = (0..b * 3 * plane).map(|i| (i * 104_729 % 1000) as f32 / 800.0 - 0.1).collect();
        values[5] = f32::NAN;
        values[plane + 9] = f32::INFINITY;
        values[2 * plane] = f32::NEG_INFINITY;
        let t = Tensor::from_vec(values.clone(), (b, 3, h, w), &Device::Cpu).unwrap();
        let want: Vec<u8> = (0..b * plane * 3)
            .map(|i| {
                let v = values[(i / (3 * plane) * 3 + i % 3) * plane + i / 3 % plane];
                if v.is_nan() {
                    0
                } else {
                    (v.clamp(0.0, 1.0) * 255.0) as u8
                }
            })
            .collect();
        assert_eq!(images_to_u8_nhwc(&t).unwrap(), want);
        // (B, 3, W, H) transposed: not contiguous, so the values are copied out first.
        let transposed = Tensor::from_vec(values, (b, 3, h, w), &Device::Cpu).unwrap().transpose(2, 3).unwrap();
        let via_copy = images_to_u8_nhwc(&transposed.contiguous().unwrap()).unwrap();
        assert_eq!(images_to_u8_nhwc(&transposed).unwrap(), via_copy);
        let mut short = vec![0u8; want.len() - 1];
        assert!(images_to_u8_nhwc_into(&t, &mut short).is_err());
    }
}
