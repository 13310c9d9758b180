//! The pre-LayerNorm residual transformer block of open_clip, as TiTok uses it:
//! x + attn(ln_1(x)), then + mlp(ln_2(x)).

use std::borrow::Cow;
use std::sync::Arc;

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::fused::{BlockScratch, F32Data, LinearData, NormData, PackedWt, Weight};
use super::LAYER_NORM_EPS;
use super::{LayerNorm, Mlp, MultiheadAttention};

#[derive(Debug, Clone)]
pub struct ResidualAttentionBlock {
    ln_1: LayerNorm,
    attn: MultiheadAttention,
    ln_2: LayerNorm,
    mlp: Mlp,
    /// The linear layers' weights packed once for `kernels::sgemm` ([`Self::pack_weights`]); their (out, in)
    /// tensors are then placeholders without values.
    packed: Option<Arc<PackedLinears>>,
}

/// A block's four linear weights, packed.
#[derive(Debug)]
struct PackedLinears {
    in_proj: PackedWt,
    out_proj: PackedWt,
    c_fc: PackedWt,
    c_proj: PackedWt,
}

impl ResidualAttentionBlock {
    /// A block over `width` channels with `num_heads` attention heads and an MLP of `mlp_width` hidden units.
    pub fn new(width: usize, num_heads: usize, mlp_width: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            ln_1: LayerNorm::new(width, LAYER_NORM_EPS, vb.pp("ln_1"))?,
            attn: MultiheadAttention::new(width, num_heads, vb.pp("attn"))?,
            ln_2: LayerNorm::new(width, LAYER_NORM_EPS, vb.pp("ln_2"))?,
            mlp: Mlp::new(width, mlp_width, vb.pp("mlp"))?,
            packed: None,
        })
    }

    /// Packs the linear layers' weights once for the AVX-512 product (why: `kernels::sgemm::PackedWt`) and drops
    /// their (out, in) copies, so that the model holds its weights once. Only for a model that owns its weights: a
    /// model sharing a trainer's variables would keep the values of the moment it was packed. Does nothing below
    /// the AVX-512 level, or when a weight is not an untracked contiguous f32 CPU tensor; the composed path
    /// (autograd, other devices) unpacks them again per call.
    pub fn pack_weights(&mut self, scratch: &mut Vec<f32>) -> Result<()> {
        if self.packed.is_some() || super::kernels::level() != super::kernels::Level::Avx512 {
            return Ok(());
        }
        let ((in_proj, _), (out_proj, _), _) = self.attn.parts();
        let ((c_fc, _), (c_proj, _)) = self.mlp.parts();
        let weights = [in_proj, out_proj, c_fc, c_proj];
        // Everything that can refuse is checked before the layers change (`F32Data::of` refuses tracked tensors too).
        let packable = |w: &&Tensor| F32Data::of(w).is_some() && matches!(w.dims2(), Ok((n, k)) if n > 0 && k > 0);
        if !weights.iter().all(packable) {
            return Ok(());
        }
        let [in_proj, out_proj, c_fc, c_proj] = weights.map(Tensor::clone);
        // One zero broadcast to the weight's shape: the layers keep their shapes, not their values. Once the layers
        // hold these, the clones above are the weights' only holders, and the pack can take their memory.
        let placeholder = |w: &Tensor| Tensor::zeros((), DType::F32, w.device())?.broadcast_as(w.shape());
        let attn = self.attn.with_weights(placeholder(&in_proj)?, placeholder(&out_proj)?);
        let mlp = self.mlp.with_weights(placeholder(&c_fc)?, placeholder(&c_proj)?);
        (self.attn, self.mlp) = (attn, mlp);
        let mut pack = |w: Tensor| -> Result<PackedWt> {
            let (n, k) = w.dims2()?;
            Ok(match w.into_f32_vec() {
                Ok(values) => PackedWt::in_place(values, n, k, scratch),
                Err(w) => PackedWt::new(F32Data::of(&w).expect("checked above").get(), n, k),
            })
        };
        let packed = PackedLinears {
            in_proj: pack(in_proj)?,
            out_proj: pack(out_proj)?,
            c_fc: pack(c_fc)?,
            c_proj: pack(c_proj)?,
        };
        self.packed = Some(Arc::new(packed));
        Ok(())
    }

    /// This block with its weights as (out, in) tensors again, for the composed path: itself unless packed.
    fn unpacked(&self) -> Result<Cow<'_, Self>> {
        let Some(p) = &self.packed else {
            return Ok(Cow::Borrowed(self));
        };
        let dev = self.ln_1.parts().0.device();
        let tensor = |w: &PackedWt| Tensor::from_vec(w.unpacked(), (w.n(), w.k()), dev);
        Ok(Cow::Owned(Self {
            attn: self.attn.with_weights(tensor(&p.in_proj)?, tensor(&p.out_proj)?),
            mlp: self.mlp.with_weights(tensor(&p.c_fc)?, tensor(&p.c_proj)?),
            packed: None,
            ..self.clone()
        }))
    }
}

impl ResidualAttentionBlock {
    /// The layers composed from candle ops: differentiable, any dtype and device.
    pub fn forward_composed(&self, xs: &Tensor) -> Result<Tensor> {
        self.unpacked()?.forward_composed_rows(xs, 0, xs.dim(1)?)
    }

    /// Rows `start..start + len` of [`Self::forward_composed`]: everything after the attention is row-wise, so the
    /// rows are cut between `ln_2` and the MLP (`ln_2` sees every row, so its backward's fixed-chunk sums over rows
    /// keep their grouping). The full range is `forward_composed` itself: candle's `narrow` of a whole dimension
    /// is the tensor unchanged.
    fn forward_composed_rows(&self, xs: &Tensor, start: usize, len: usize) -> Result<Tensor> {
        let xs = (xs + self.attn.forward(&self.ln_1.forward(xs)?)?)?;
        let normed = self.ln_2.forward(&xs)?.narrow(1, start, len)?;
        xs.narrow(1, start, len)? + self.mlp.forward(&normed)?
    }

    fn parameters(&self) -> [&Tensor; 12] {
        let (in_proj, out_proj, _) = self.attn.parts();
        let (c_fc, c_proj) = self.mlp.parts();
        let (ln_1, ln_2) = (self.ln_1.parts(), self.ln_2.parts());
        [
            ln_1.0, ln_1.1, in_proj.0, in_proj.1, out_proj.0, out_proj.1, ln_2.0, ln_2.1, c_fc.0, c_fc.1, c_proj.0,
            c_proj.1,
        ]
    }

    /// This block's parameters as the fused kernels read them; `None` unless every one is an f32 CPU tensor
    /// (contiguous) or packed, and none is tracked for gradients.
    fn fused_data(&self) -> Option<super::fused::BlockData<'_>> {
        if super::kernels::tracked(&self.parameters()) {
            return None;
        }
        let packed = self.packed.as_deref();
        let (in_proj, out_proj, num_heads) = self.attn.parts();
        let (c_fc, c_proj) = self.mlp.parts();
        Some(super::fused::BlockData {
            ln_1: norm_data(&self.ln_1)?,
            in_proj: linear_data(in_proj, packed.map(|p| &p.in_proj))?,
            out_proj: linear_data(out_proj, packed.map(|p| &p.out_proj))?,
            ln_2: norm_data(&self.ln_2)?,
            c_fc: linear_data(c_fc, packed.map(|p| &p.c_fc))?,
            c_proj: linear_data(c_proj, packed.map(|p| &p.c_proj))?,
            num_heads,
        })
    }

    /// `blocks` in sequence, the transformer of a ViT: through the fused CPU kernels (`super::fused`) when the
    /// input and every parameter are untracked f32 CPU tensors (one set of scratch buffers then serves every
    /// block), else block by block from candle ops. The scratch buffers are this call's own: a model that runs
    /// its stack repeatedly keeps them in a [`BlockScratch`] and calls [`Self::forward_all_rows`].
    pub fn forward_all(blocks: &[Self], xs: &Tensor) -> Result<Tensor> {
        Self::forward_all_rows(blocks, xs, 0, xs.dim(1)?, &BlockScratch::default())
    }

    /// Rows `start..start + len` (dimension 1) of [`Self::forward_all`]. A model that keeps only some of the
    /// transformer's outputs (TiTok's encoder its latent tokens, the decoder its grid) needs the last block's MLP
    /// on those rows only: in training (the composed path) the MLP's forward and backward run on `len` rows
    /// instead of all (the encoder's last MLP on 128 of 385 rows at S-128, the decoder's on 256; see
    /// `forward_composed_rows`; the dropped rows add exact zeros to `ln_2`'s backward, as their zero gradient did
    /// before); the MLP's weight gradients are the same sums less those zero terms, bit for bit where the gemm does
    /// not split the rows into blocks (up to 512 rows). The fused inference path, in `scratch`, runs the last
    /// block's queries, output projection and MLP on those rows only: the same values as computing every row and
    /// cutting afterwards.
    pub fn forward_all_rows(
        blocks: &[Self],
        xs: &Tensor,
        start: usize,
        len: usize,
        scratch: &BlockScratch,
    ) -> Result<Tensor> {
        if let Some(out) = Self::forward_all_fused(blocks, xs, start, len, scratch)? {
            return Ok(out);
        }
        let Some((last, rest)) = blocks.split_last() else {
            return xs.narrow(1, start, len);
        };
        // Packed blocks are unpacked one at a time, as they run.
        let mut xs = xs.clone();
        for block in rest {
            xs = block.forward_composed(&xs)?;
        }
        last.unpacked()?.forward_composed_rows(&xs, start, len)
    }

    fn forward_all_fused(
        blocks: &[Self],
        xs: &Tensor,
        start: usize,
        len: usize,
        scratch: &BlockScratch,
    ) -> Result<Option<Tensor>> {
        use super::fused::blocks_forward;
        if blocks.is_empty() {
            return Ok(Some(xs.narrow(1, start, len)?));
        }
        if super::kernels::tracked(&[xs]) {
            return Ok(None);
        }
        let (b, l, d) = xs.dims3()?;
        if start + len > l {
            return Ok(None); // the composed path's `narrow` reports it
        }
        if blocks.iter().any(|block| block.ln_1.parts().0.dims() != [d]) {
            return Ok(None); // the composed path reports the mismatch
        }
        let xs = xs.contiguous()?;
        let (Some(x), Some(data)) = (F32Data::of(&xs), blocks.iter().map(Self::fused_data).collect::<Option<Vec<_>>>())
        else {
            return Ok(None);
        };
        let out = blocks_forward(x.get(), (b, l, d), start..start + len, &data, scratch);
        Ok(Some(Tensor::from_vec(out, (b, len, d), xs.device())?))
    }
}

fn norm_data(ln: &LayerNorm) -> Option<NormData<'_>> {
    let (weight, bias, eps) = ln.parts();
    Some(NormData { weight: F32Data::of(weight)?, bias: F32Data::of(bias)?, eps: eps as f32 })
}

/// A linear layer's data: its packed weight where there is one, else its (out, in) tensor.
fn linear_data<'a>((weight, bias): (&'a Tensor, &'a Tensor), packed: Option<&'a PackedWt>) -> Option<LinearData<'a>> {
    let weight = match packed {
        Some(p) => Weight::Packed(p),
        None => Weight::OutIn(F32Data::of(weight)?),
    };
    Some(LinearData { weight, bias: F32Data::of(bias)? })
}

impl Module for ResidualAttentionBlock {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        Self::forward_all(std::slice::from_ref(self), xs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};
    use candle_nn::VarMap;

    fn block(width: usize, heads: usize, dev: &Device) -> (ResidualAttentionBlock, VarMap) {
        let vars = VarMap::new();
        let vb = VarBuilder::from_varmap(&vars, DType::F32, dev);
        let block = ResidualAttentionBlock::new(width, heads, 4 * width, vb).unwrap();
        (block, vars)
    }

    /// Plain tensors with the values of the block's variables, so that nothing is tracked.
    fn untracked(vars: &VarMap, width: usize, heads: usize, dev: &Device) -> ResidualAttentionBlock {
        let ts = vars
            .data()
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| {
                // Biases and norms start at 0/1; give them values, so that a misplaced one shows.
                let t = v.as_tensor().detach();
                let noise = (Tensor::randn(0f32, 0.1, t.shape(), dev).unwrap() + &t).unwrap();
                (k.clone(), noise)
            })
            .collect();
        ResidualAttentionBlock::new(width, heads, 4 * width, VarBuilder::from_tensors(ts, DType::F32, dev)).unwrap()
    }

    /// The fused path against the composed one, for a stack of three blocks (the scratch buffers and the
    /// ping-pong between outputs) and for one, with row counts on both sides of the sgemm / gemm-crate switch.
    #[test]
    fn fused_matches_composed() {
        let dev = Device::Cpu;
        for (b, l, width, heads, depth) in [(2, 13, 32, 4, 3), (3, 350, 16, 2, 1)] {
            let blocks: Vec<_> = (0..depth)
                .map(|_| {
                    let (_, vars) = block(width, heads, &dev);
                    untracked(&vars, width, heads, &dev)
                })
                .collect();
            let x = Tensor::randn(0f32, 1.0, (b, l, width), &dev).unwrap();
            assert!(
                ResidualAttentionBlock::forward_all_fused(&blocks, &x, 0, l, &BlockScratch::default())
                    .unwrap()
                    .is_some(),
                "the fused path was not taken"
            );
            let fused = ResidualAttentionBlock::forward_all(&blocks, &x).unwrap();
            let mut composed = x.clone();
            for block in &blocks {
                composed = block.forward_composed(&composed).unwrap();
            }
            let err = (fused - composed).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(err < 3e-5, "b {b} l {l} depth {depth}: fused vs composed max abs {err}");
        }
    }

    /// Cutting the rows before the last block's MLP gives the rows of the whole stack's output and the same
    /// gradients, on the tracked (training) path and on the fused one.
    #[test]
    fn kept_rows_match_the_full_output() {
        let dev = Device::Cpu;
        let (b, l, width, heads) = (2, 11, 16, 2);
        let (vars, blocks): (Vec<_>, Vec<_>) = (0..3)
            .map(|_| {
                let (block, vars) = block(width, heads, &dev);
                (vars, block)
            })
            .unzip();
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, l, width), &dev).unwrap()).unwrap();
        let (start, len) = (3, 5);
        let scratch = BlockScratch::default();
        let weights = Tensor::randn(0f32, 1.0, (b, len, width), &dev).unwrap();
        let loss = |out: Tensor| (out * &weights).unwrap().sum_all().unwrap();
        let full = ResidualAttentionBlock::forward_all(&blocks, x.as_tensor()).unwrap().narrow(1, start, len).unwrap();
        let kept = ResidualAttentionBlock::forward_all_rows(&blocks, x.as_tensor(), start, len, &scratch).unwrap();
        let err = (&kept - &full).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(err < 1e-5, "kept rows vs full output: max abs {err}");
        let (g_full, g_kept) = (loss(full).backward().unwrap(), loss(kept).backward().unwrap());
        let mut tensors = vec![x.as_tensor().clone()];
        for v in &vars {
            tensors.extend(v.all_vars().iter().map(|v| v.as_tensor().clone()));
        }
        for t in &tensors {
            let (a, b) = (g_full.get(t).unwrap(), g_kept.get(t).unwrap());
            let scale = a.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap().max(1e-6);
            let err = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() / scale;
            assert!(err < 1e-5, "gradient of a {:?} tensor: relative max abs {err}", t.dims());
        }
        let untracked: Vec<_> = vars.iter().map(|v| untracked(v, width, heads, &dev)).collect();
        let x = x.as_tensor().detach();
        let full = ResidualAttentionBlock::forward_all(&untracked, &x).unwrap().narrow(1, start, len).unwrap();
        let kept = ResidualAttentionBlock::forward_all_rows(&untracked, &x, start, len, &scratch).unwrap();
        let err = (kept - full).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(err, 0.0, "untracked: the fused path cuts after computing every row");
    }

    /// Packed weights give the unpacked blocks' outputs bit for bit: on the fused path at the AVX-512 level (the
    /// same panels as the per-call pack, under 1024 rows; the rows shared out by thread, or not), at a level forced
    /// lower (the weights unpacked again for the `gemm` crate) and on the composed path (a tracked input: the
    /// blocks unpacked per call). The (out, in) copies are gone, and below AVX-512 nothing is packed.
    #[test]
    #[cfg_attr(not(marvel_host_avx512), ignore = "AVX-512: the build host lacks it, or this is a cross build")]
    fn packed_weights_give_the_same_outputs() {
        use crate::nn::kernels::{forced, Level};
        let dev = Device::Cpu;
        let (b, l, width, heads) = (2, 100, 32, 4);
        let plain: Vec<_> = (0..3)
            .map(|_| {
                let (_, vars) = block(width, heads, &dev);
                untracked(&vars, width, heads, &dev)
            })
            .collect();
        let mut packed = plain.clone();
        for block in &mut packed {
            block.pack_weights(&mut Vec::new()).unwrap();
            let ((in_proj, _), _, _) = block.attn.parts();
            assert!(block.packed.is_some() && F32Data::of(in_proj).is_none(), "not packed, or the weights kept");
            assert_eq!(in_proj.dims(), [3 * width, width]);
        }
        let x = Tensor::randn(0f32, 1.0, (b, l, width), &dev).unwrap();
        let run = |blocks: &[ResidualAttentionBlock], x: &Tensor| {
            let out = ResidualAttentionBlock::forward_all_rows(blocks, x, 3, 57, &BlockScratch::default()).unwrap();
            out.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        };
        // Packed, each thread takes its rows through the steps that work row by row (`block_forward_by_rows`: 17
        // tiles of rows, so at up to 4 threads; the first two blocks in place, the last on 114 kept rows of 200,
        // its shares starting inside an image at 2 and 3 threads); at 5 threads step by step.
        for threads in 1..=5 {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| assert_eq!(run(&packed, &x), run(&plain, &x), "fused, AVX-512, {threads} threads"));
        }
        for level in [Level::Avx2, Level::Baseline].into_iter().filter(|l| l.supported()) {
            forced(level, || {
                assert_eq!(run(&packed, &x), run(&plain, &x), "fused, {level:?}");
                let mut again = plain[0].clone();
                again.pack_weights(&mut Vec::new()).unwrap();
                assert!(again.packed.is_none(), "packed at {level:?}");
            });
        }
        let tracked = Var::from_tensor(&x).unwrap();
        assert_eq!(run(&packed, tracked.as_tensor()), run(&plain, tracked.as_tensor()), "composed");
        let composed = |blocks: &[ResidualAttentionBlock]| {
            blocks.iter().fold(x.clone(), |x, block| block.forward_composed(&x).unwrap()).flatten_all().unwrap()
        };
        let (got, want) = (composed(&packed).to_vec1::<f32>().unwrap(), composed(&plain).to_vec1::<f32>().unwrap());
        assert_eq!(got, want, "forward_composed");
        // Over 1024 rows (of a call, or of a thread's share) the packed products run in slices of at most 1024, the
        // plain ones through the gemm crate: the same values up to the order of the sums.
        let x = Tensor::randn(0f32, 1.0, (3, 701, width), &dev).unwrap();
        let (got, want) = (run(&packed, &x), run(&plain, &x));
        let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(err < 1e-4, "sliced packed product vs the gemm crate: max abs {err}");
        // No rows.
        let x = Tensor::zeros((0, l, width), DType::F32, &dev).unwrap();
        assert!(run(&packed, &x).is_empty());
    }

    /// A block that alone holds its weights is packed in their own memory (`Tensor::into_f32_vec`: no fresh memory
    /// faulted in at load), with the outputs it had unpacked, bit for bit.
    #[test]
    #[cfg_attr(not(marvel_host_avx512), ignore = "AVX-512: the build host lacks it, or this is a cross build")]
    fn sole_owned_weights_are_packed_in_their_own_memory() {
        let dev = Device::Cpu;
        let (b, l, width, heads) = (2, 13, 64, 4);
        let (_, vars) = block(width, heads, &dev);
        let mut owned = untracked(&vars, width, heads, &dev);
        let x = Tensor::randn(0f32, 1.0, (b, l, width), &dev).unwrap();
        let run = |block: &ResidualAttentionBlock| {
            let out = block.forward(&x).unwrap();
            out.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        };
        let want = run(&owned);
        let ((in_proj, _), _, _) = owned.attn.parts();
        let memory = F32Data::of(in_proj).unwrap().get().as_ptr();
        owned.pack_weights(&mut Vec::new()).unwrap();
        assert_eq!(owned.packed.as_ref().expect("packed").in_proj.data_ptr(), memory, "packed into fresh memory");
        assert_eq!(run(&owned), want);
    }

    /// Training keeps the differentiable path: a loss reaches every parameter and the input.
    #[test]
    fn tracked_block_gets_gradients() {
        let dev = Device::Cpu;
        let (block, vars) = block(16, 2, &dev);
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (1, 5, 16), &dev).unwrap()).unwrap();
        let loss = block.forward(x.as_tensor()).unwrap().sqr().unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        assert!(grads.get(x.as_tensor()).is_some(), "no gradient for the input");
        for (name, v) in vars.data().lock().unwrap().iter() {
            assert!(grads.get(v.as_tensor()).is_some(), "no gradient for {name}");
        }
    }
}
