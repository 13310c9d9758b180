//! The MaskGIT-VQGAN on the boundary's types: RGB bytes (B, size, size, 3) to codes (B, grid²) and back, in chunks.
//! Bindings call these and move buffers; the u8 <-> f32 conversion and the model calls stay here.

use candle_core::{DType, Device, Tensor};

use super::MaskgitVqgan;
use crate::error::Result;
use crate::image::{images_from_u8_nhwc, images_to_u8_nhwc};
use crate::invalid;
use crate::tensor::{check_shape, HostTensor};

/// Images per forward pass: the 256x256 encoder holds ~0.3 GB of activations per 8 images, so long lists stay
/// bounded while each pass still keeps every core busy.
const MAX_CHUNK: usize = 8;

impl MaskgitVqgan {
    /// [`MaskgitVqgan::from_pretrained`] onto the CPU, where the host buffers live.
    pub fn from_pretrained_on_cpu(path: impl AsRef<std::path::Path>) -> Result<Self> {
        Self::from_pretrained(path, &Device::Cpu)
    }

    /// Side of the square images the model takes.
    pub fn image_size(&self) -> usize {
        self.config().resolution
    }

    /// Side of the code grid (16 for 256x256 images).
    pub fn grid(&self) -> usize {
        self.config().latent_side()
    }

    pub fn codebook_size(&self) -> usize {
        self.config().codebook_size
    }

    /// `batch` images of interleaved RGB bytes (B, size, size, 3) to codes (B, grid²), row-major over each grid.
    pub fn encode_rgb(&self, rgb: &[u8], batch: usize) -> Result<Vec<u32>> {
        if batch == 0 {
            return Err(invalid!("encode needs at least one image"));
        }
        let s = self.image_size();
        check_shape("images", rgb.len(), &[batch, s, s, 3])?;
        let mut codes = Vec::with_capacity(batch * self.grid() * self.grid());
        for chunk in rgb.chunks(MAX_CHUNK * s * s * 3) {
            let x = images_from_u8_nhwc(chunk, (chunk.len() / (s * s * 3), s, s), &Device::Cpu)?;
            codes.extend(self.encode(&x)?.to_dtype(DType::U32)?.flatten_all()?.to_vec1::<u32>()?);
        }
        Ok(codes)
    }

    /// Codes (B, grid²) to images, one chunk at a time; `each` receives every decoded chunk (b, 3, size, size) in
    /// [0, 1], in order. The batch is the number of whole grids in `codes`.
    fn decode_chunks(&self, codes: &[u32], mut each: impl FnMut(Tensor) -> Result<()>) -> Result<()> {
        let per_image = self.grid() * self.grid();
        if codes.is_empty() {
            return Err(invalid!("decode needs at least one image's codes"));
        }
        if codes.len() % per_image != 0 {
            return Err(crate::shape_mismatch!(
                "codes: {} values are not whole {g}x{g} grids ({per_image} codes per image)",
                codes.len(),
                g = self.grid()
            ));
        }
        for chunk in codes.chunks(MAX_CHUNK * per_image) {
            let t = Tensor::from_slice(chunk, (chunk.len() / per_image, per_image), &Device::Cpu)?;
            each(self.decode_codes(&t)?)?;
        }
        Ok(())
    }

    /// Codes (B, grid²) to interleaved RGB bytes (B, size, size, 3): clamp, x255, truncate as the reference does.
    pub fn decode_rgb(&self, codes: &[u32]) -> Result<Vec<u8>> {
        let s = self.image_size();
        let mut out = Vec::with_capacity(codes.len() / (self.grid() * self.grid()) * s * s * 3);
        self.decode_chunks(codes, |images| {
            out.extend(images_to_u8_nhwc(&images)?);
            Ok(())
        })?;
        Ok(out)
    }

    /// Codes (B, grid²) to float images (B, 3, size, size) in [0, 1], at full precision.
    pub fn decode_float(&self, codes: &[u32]) -> Result<HostTensor<f32>> {
        let mut parts = Vec::new();
        self.decode_chunks(codes, |images| {
            parts.push(images);
            Ok(())
        })?;
        HostTensor::from_tensor(&Tensor::cat(&parts, 0)?)
    }
}

#[cfg(test)]
mod tests {
    use candle_nn::{VarBuilder, VarMap};

    use super::*;
    use crate::model::maskgit::MaskgitConfig;

    /// A random 8x8-pixel, 4x4-code model: small enough to run many images through, deep enough to have both
    /// levels of the real layout.
    fn tiny() -> MaskgitVqgan {
        let cfg = MaskgitConfig::tiny_for_tests();
        let vars = VarMap::new();
        let model = MaskgitVqgan::load(&cfg, VarBuilder::from_varmap(&vars, DType::F32, &Device::Cpu)).unwrap();
        // Some weights start constant; random values everywhere make every code and pixel depend on the input.
        // Seeded, so a near-tie between two codes (which batched and one-image sums may round apart) cannot come and
        // go from run to run: the weights, and so the outcome, are the same every time.
        let mut rng = crate::quantize::lfq::SplitMix64::new(17);
        let mut vars_by_name: Vec<_> = vars.data().lock().unwrap().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        vars_by_name.sort_by(|a, b| a.0.cmp(&b.0));
        for (_, var) in vars_by_name {
            let values: Vec<f32> = (0..var.elem_count()).map(|_| (rng.next_f64() as f32 - 0.5) * 1.7).collect();
            var.set(&Tensor::from_vec(values, var.shape(), &Device::Cpu).unwrap()).unwrap();
        }
        model
    }

    /// One call over 10 images (a full chunk and a partial one) gives what 10 one-image calls give.
    #[test]
    fn chunked_calls_equal_image_by_image_calls() {
        let model = tiny();
        let (s, g) = (model.image_size(), model.grid());
        assert_eq!((s, g, model.codebook_size()), (8, 4, 16));
        let rgb: Vec<u8> = (0..10 * s * s * 3).map(|i| (i * 7919 % 256) as u8).collect();
        let codes = model.encode_rgb(&rgb, 10).unwrap();
        let one_by_one: Vec<u32> =
            rgb.chunks(s * s * 3).flat_map(|image| model.encode_rgb(image, 1).unwrap()).collect();
        assert_eq!(codes, one_by_one);
        assert!(codes.iter().any(|&c| c != codes[0]), "random weights should not map every patch to one code");

        let images = model.decode_rgb(&codes).unwrap();
        let one_by_one: Vec<u8> = codes.chunks(g * g).flat_map(|c| model.decode_rgb(c).unwrap()).collect();
        assert_eq!(images, one_by_one);
        let float = model.decode_float(&codes).unwrap();
        assert_eq!(float.shape, vec![10, 3, s, s]);
        let as_bytes = images_to_u8_nhwc(&float.to_tensor(&Device::Cpu).unwrap()).unwrap();
        assert_eq!(as_bytes, images);
    }

    #[test]
    fn bad_buffers_are_named() {
        let model = tiny();
        assert_eq!(model.encode_rgb(&[], 0).unwrap_err().code(), "MARVEL_INVALID_ARGUMENT");
        assert_eq!(model.encode_rgb(&[0; 10], 1).unwrap_err().code(), "MARVEL_SHAPE_MISMATCH");
        let err = model.decode_rgb(&[0; 17]).unwrap_err();
        assert_eq!(err.code(), "MARVEL_SHAPE_MISMATCH");
        assert!(err.to_string().contains("17 values are not whole 4x4 grids"), "{err}");
        assert_eq!(model.decode_rgb(&[]).unwrap_err().code(), "MARVEL_INVALID_ARGUMENT");
        let mut codes = vec![0u32; 16];
        codes[3] = 16;
        assert_eq!(model.decode_float(&codes).unwrap_err().code(), "MARVEL_INVALID_ARGUMENT");
    }
}
