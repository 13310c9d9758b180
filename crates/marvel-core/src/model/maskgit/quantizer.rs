//! The VQGAN's vector quantizer (`quantize.embedding.weight`, codebook_size x z_channels): nearest codebook
//! row by squared distance, and the lookup back from codes to a latent grid.

use candle_core::{DType, Tensor, D};
use candle_nn::VarBuilder;

use super::config::MaskgitConfig;
use crate::error::Result;
use crate::nn::{param, ParamInit};

#[derive(Debug, Clone)]
pub struct MaskgitQuantizer {
    embedding: Tensor,
}

impl MaskgitQuantizer {
    pub fn new(cfg: &MaskgitConfig, vb: VarBuilder) -> Result<Self> {
        let embedding = Self::codebook(cfg.codebook_size, cfg.z_channels, vb)?;
        Ok(Self { embedding })
    }

    /// `embedding.weight` under `vb`, (codebook_size, z_channels), declared as the reference's
    /// `uniform_(-1/K, 1/K)` (maskgit_vqgan.py `VectorQuantizer`, also TiTok's `pixel_quantize`).
    pub fn codebook(codebook_size: usize, z_channels: usize, vb: VarBuilder) -> Result<Tensor> {
        let init = ParamInit::Uniform { bound: 1.0 / codebook_size as f64 };
        Ok(param(&vb.pp("embedding"), (codebook_size, z_channels), "weight", init)?)
    }

    /// The codebook, (codebook_size, z_channels).
    pub fn embedding(&self) -> &Tensor {
        &self.embedding
    }

    /// Squared distances (B * h * w, codebook_size) from each latent vector of `z` (B, D, h, w), in the
    /// reference's form |z|^2 + |e|^2 - 2 z.e (not |z - e|^2, which rounds differently near ties).
    pub fn distances(&self, z: &Tensor) -> Result<Tensor> {
        let (_, d, _, _) = z.dims4()?;
        let (_, dim) = self.embedding.dims2()?;
        if d != dim {
            return Err(crate::shape_mismatch!(
                "quantizer codebook has {dim}-dim rows but the latent has shape {:?}",
                z.dims()
            ));
        }
        let flat = z.permute((0, 2, 3, 1))?.reshape(((), d))?;
        let z_sq = flat.sqr()?.sum_keepdim(1)?;
        let e_sq = self.embedding.sqr()?.sum_keepdim(1)?.t()?;
        let dot = flat.matmul(&self.embedding.t()?)?;
        Ok((z_sq.broadcast_add(&e_sq)? - (dot * 2.0)?)?)
    }

    /// Code of each latent position: (B, h * w) U32, row-major over the grid; the lowest index wins a tie.
    pub fn codes(&self, z: &Tensor) -> Result<Tensor> {
        let (b, _, h, w) = z.dims4()?;
        Ok(self.distances(z)?.argmin(D::Minus1)?.reshape((b, h * w))?)
    }

    /// Codebook rows for `codes` as a latent grid (B, D, h, w). `codes`: (B, h, w), or (B, N) with N a square,
    /// any integer dtype.
    pub fn lookup(&self, codes: &Tensor) -> Result<Tensor> {
        let (b, h, w) = match *codes.dims() {
            [b, h, w] => (b, h, w),
            [b, n] => {
                let side = (n as f64).sqrt().round() as usize;
                if side * side != n {
                    return Err(crate::shape_mismatch!("{n} codes per image do not form a square grid"));
                }
                (b, side, side)
            }
            _ => return Err(crate::shape_mismatch!("codes must be (B, N) or (B, h, w), got {:?}", codes.dims())),
        };
        let ids = match codes.dtype() {
            DType::U32 | DType::I64 | DType::U8 => codes.flatten_all()?,
            DType::F32 | DType::F64 | DType::F16 | DType::BF16 => {
                return Err(crate::invalid!("codes must be integers, got {:?}", codes.dtype()))
            }
            _ => codes.flatten_all()?.to_dtype(DType::I64)?,
        };
        let (k, d) = self.embedding.dims2()?;
        check_range(&ids, k)?;
        let rows = self.embedding.index_select(&ids, 0)?;
        Ok(rows.reshape((b, h, w, d))?.permute((0, 3, 1, 2))?.contiguous()?)
    }
}

/// index_select does not check its indices on every device; a bad code must be an error, not garbage.
fn check_range(ids: &Tensor, k: usize) -> Result<()> {
    if ids.elem_count() == 0 {
        return Ok(());
    }
    let ids64 = ids.to_dtype(DType::I64)?;
    let lo = ids64.min(0)?.to_scalar::<i64>()?;
    let hi = ids64.max(0)?.to_scalar::<i64>()?;
    if lo < 0 || hi >= k as i64 {
        let bad = if lo < 0 { lo } else { hi };
        return Err(crate::invalid!("code {bad} is outside the codebook [0, {k})"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn quantizer(rows: &[[f32; 2]]) -> MaskgitQuantizer {
        let flat: Vec<f32> = rows.iter().flatten().copied().collect();
        MaskgitQuantizer { embedding: Tensor::from_vec(flat, (rows.len(), 2), &Device::Cpu).unwrap() }
    }

    #[test]
    fn nearest_row_with_lowest_index_on_ties() {
        // Rows 1 and 3 are equally close to (1, 0); row 2 is a duplicate of row 1.
        let q = quantizer(&[[-5., 0.], [1., 1.], [1., 1.], [1., -1.]]);
        // z: B=1, D=2, 1 x 3 grid: (1, 0), (-4, 0.5), (1, -0.9).
        let z = Tensor::from_vec(vec![1f32, -4., 1., 0., 0.5, -0.9], (1, 2, 1, 3), &Device::Cpu).unwrap();
        let codes = q.codes(&z).unwrap();
        assert_eq!(codes.to_vec2::<u32>().unwrap(), vec![vec![1, 0, 3]]);
        let back = q.lookup(&codes.reshape((1, 1, 3)).unwrap()).unwrap();
        assert_eq!(back.dims(), &[1, 2, 1, 3]);
        assert_eq!(back.flatten_all().unwrap().to_vec1::<f32>().unwrap(), vec![1., -5., 1., 1., 0., -1.]);
    }

    #[test]
    fn lookup_checks_its_codes() {
        let q = quantizer(&[[0., 0.], [1., 1.]]);
        let square = Tensor::new(&[[1i64, 0, 0, 1]], &Device::Cpu).unwrap();
        assert_eq!(q.lookup(&square).unwrap().dims(), &[1, 2, 2, 2]);
        let out_of_range = Tensor::new(&[[2i64, 0, 0, 1]], &Device::Cpu).unwrap();
        assert!(q.lookup(&out_of_range).unwrap_err().to_string().contains("code 2 is outside"));
        let negative = Tensor::new(&[[-1i64, 0, 0, 1]], &Device::Cpu).unwrap();
        assert_eq!(q.lookup(&negative).unwrap_err().code(), "MARVEL_INVALID_ARGUMENT");
        let not_square = Tensor::new(&[[1u32, 0, 0]], &Device::Cpu).unwrap();
        assert_eq!(q.lookup(&not_square).unwrap_err().code(), "MARVEL_SHAPE_MISMATCH");
    }
}
