//! Nearest-neighbour vector quantization (VQ-VAE), as in the reference `VectorQuantizer`
//! (`modeling/quantizer/quantizer.py`): key `embedding.weight` (codebook_size, token_size).

use candle_core::{DType, Result, Tensor, D};
use candle_nn::VarBuilder;

use crate::config::VqConfig;
use crate::nn::{param, ParamInit};

/// What one quantization step returns: the codes, the straight-through latent, and the two training losses.
#[derive(Debug, Clone)]
pub struct VqOutput {
    /// (B, C, H, W): z + (e - z), so that gradients reach the encoder unchanged.
    pub z_q: Tensor,
    /// (B, H, W), u32: index of the nearest codebook row.
    pub tokens: Tensor,
    /// β · mean((sg(e) - z)²).
    pub commitment_loss: Tensor,
    /// mean((e - sg(z))²).
    pub codebook_loss: Tensor,
}

impl VqOutput {
    pub fn quantizer_loss(&self) -> Result<Tensor> {
        &self.commitment_loss + &self.codebook_loss
    }
}

#[derive(Debug, Clone)]
pub struct VectorQuantizer {
    embedding: Tensor,
    use_l2_norm: bool,
    commitment_cost: f64,
}

/// `torch.nn.functional.normalize(x, dim=-1)`: x / max(‖x‖₂, 1e-12), a true division as in torch.
pub fn l2_normalize(xs: &Tensor) -> Result<Tensor> {
    let norm = xs.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?.maximum(1e-12)?;
    xs.broadcast_div(&norm)
}

impl VectorQuantizer {
    pub fn new(cfg: &VqConfig, vb: VarBuilder) -> Result<Self> {
        // The reference's `uniform_(-1/K, 1/K)` (`TiTok._init_weights` runs before the quantizer is built).
        let init = ParamInit::Uniform { bound: 1.0 / cfg.codebook_size as f64 };
        let embedding = param(&vb.pp("embedding"), (cfg.codebook_size, cfg.token_size), "weight", init)?;
        Ok(Self { embedding, use_l2_norm: cfg.use_l2_norm, commitment_cost: cfg.commitment_cost })
    }

    pub fn codebook_size(&self) -> usize {
        self.embedding.dim(0).unwrap_or(0)
    }

    pub fn token_size(&self) -> usize {
        self.embedding.dim(1).unwrap_or(0)
    }

    /// The raw codebook parameter (before any normalisation).
    pub fn embedding(&self) -> &Tensor {
        &self.embedding
    }

    /// `z`: (B, C, H, W) float. Distances d = ‖z‖² + ‖e‖² − 2 z·e in float32, argmin with the lowest index on
    /// ties (candle's argmin keeps the first minimum, like torch's).
    pub fn forward(&self, z: &Tensor) -> Result<VqOutput> {
        let (b, c, h, w) = z.dims4()?;
        let z = z.to_dtype(DType::F32)?;
        let z_flat = z.permute((0, 2, 3, 1))?.reshape((b * h * w, c))?;
        let (z_flat, codebook) = if self.use_l2_norm {
            (l2_normalize(&z_flat)?, l2_normalize(&self.embedding)?)
        } else {
            (z_flat, self.embedding.clone())
        };
        let d = z_flat
            .sqr()?
            .sum_keepdim(1)?
            .broadcast_add(&codebook.sqr()?.sum(1)?.unsqueeze(0)?)?
            .broadcast_sub(&(z_flat.matmul(&codebook.t()?)? * 2.0)?)?;
        let indices = d.argmin(1)?;

        let mut e = self.lookup(&indices)?;
        if self.use_l2_norm {
            // The reference normalises the looked-up rows a second time here (on top of the lookup's own
            // normalisation); the repeat can move the last bit, so it is kept.
            e = l2_normalize(&e)?;
        }
        let commitment_loss = ((e.detach() - &z_flat)?.sqr()?.mean_all()? * self.commitment_cost)?;
        let codebook_loss = (&e - z_flat.detach())?.sqr()?.mean_all()?;
        let z_q = (&z_flat + (&e - &z_flat)?.detach())?;
        let z_q = z_q.reshape((b, h, w, c))?.permute((0, 3, 1, 2))?.contiguous()?;
        Ok(VqOutput { z_q, tokens: indices.reshape((b, h, w))?, commitment_loss, codebook_loss })
    }

    /// Codebook rows for `indices` (any shape, u32/i64 already range-checked): shape `indices.shape + (C,)`,
    /// L2-normalised when the quantizer normalises (the reference's `get_codebook_entry`).
    pub fn lookup(&self, indices: &Tensor) -> Result<Tensor> {
        let mut dims = indices.dims().to_vec();
        let rows = self.embedding.index_select(&indices.flatten_all()?, 0)?;
        let rows = if self.use_l2_norm { l2_normalize(&rows)? } else { rows };
        dims.push(rows.dim(1)?);
        rows.reshape(dims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use std::collections::HashMap;

    fn quantizer(rows: &[[f32; 2]], use_l2_norm: bool) -> VectorQuantizer {
        let dev = Device::Cpu;
        let flat: Vec<f32> = rows.iter().flatten().copied().collect();
        let cb = Tensor::from_vec(flat, (rows.len(), 2), &dev).unwrap();
        let vb = VarBuilder::from_tensors(HashMap::from([("embedding.weight".to_string(), cb)]), DType::F32, &dev);
        let cfg = VqConfig { codebook_size: rows.len(), token_size: 2, use_l2_norm, commitment_cost: 0.25 };
        VectorQuantizer::new(&cfg, vb).unwrap()
    }

    #[test]
    fn picks_nearest_row_and_lowest_index_on_ties() {
        let q = quantizer(&[[1., 0.], [0., 1.], [1., 0.], [-1., -1.]], false);
        // (B=1, C=2, H=1, W=3): tokens near row 0 (tied with row 2), row 1, row 3.
        let z = Tensor::new(&[[[[0.9f32, 0.1, -2.0]], [[0.0, 2.0, -0.5]]]], &Device::Cpu).unwrap();
        let out = q.forward(&z).unwrap();
        assert_eq!(out.tokens.to_vec3::<u32>().unwrap(), vec![vec![vec![0, 1, 3]]]);
        let zq = out.z_q.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(zq, vec![1., 0., -1., 0., 1., -1.]);
        // mean((e - z)^2) over the six values.
        let want = (0.01 + 0.01 + 1.0 + 0.0 + 1.0 + 0.25) / 6.0;
        let cb = out.codebook_loss.to_scalar::<f32>().unwrap();
        assert!((cb - want).abs() < 1e-6, "{cb} vs {want}");
        let cm = out.commitment_loss.to_scalar::<f32>().unwrap();
        assert!((cm - 0.25 * want).abs() < 1e-6);
    }

    #[test]
    fn l2_norm_compares_directions() {
        // Row 0 is long but points the wrong way; row 1 is short and points the right way.
        let q = quantizer(&[[10., 1.], [0.01, 0.1]], true);
        let z = Tensor::new(&[[[[0.2f32]], [[3.0]]]], &Device::Cpu).unwrap();
        let out = q.forward(&z).unwrap();
        assert_eq!(out.tokens.flatten_all().unwrap().to_vec1::<u32>().unwrap(), vec![1]);
        let zq = out.z_q.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let n = (0.01f32 * 0.01 + 0.01).sqrt();
        assert!((zq[0] - 0.01 / n).abs() < 1e-6 && (zq[1] - 0.1 / n).abs() < 1e-6, "{zq:?}");
        let rows = q.lookup(&Tensor::new(&[[1u32, 0]], &Device::Cpu).unwrap()).unwrap();
        assert_eq!(rows.dims(), &[1, 2, 2]);
    }
}
