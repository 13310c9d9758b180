//! The VQGAN decoder: (B, z_channels, 16, 16) -> (B, 3, 256, 256), unclamped. Also TiTok's pixel decoder
//! (`pixel_decoder.*` in the two-stage checkpoints), fed the soft mix of the pixel codebook.

use candle_core::Tensor;
use candle_nn::VarBuilder;

use super::config::MaskgitConfig;
use super::conv::SameConv2d;
use super::norm::GroupNorm;
use super::pass::{Act, Pass};
use super::res_block::ResBlock;
use crate::error::Result;

/// One resolution level (`up.{i}`): its residual blocks, then nearest x2 upsampling + 3x3 conv unless it is
/// the shallowest (`up.0`).
#[derive(Debug, Clone)]
struct UpLevel {
    blocks: Vec<ResBlock>,
    upsample_conv: Option<SameConv2d>,
}

#[derive(Debug, Clone)]
pub struct MaskgitDecoder {
    conv_in: SameConv2d,
    mid: Vec<ResBlock>,
    /// Indexed as the checkpoint (`up.0` = full resolution); run from the last to the first.
    up: Vec<UpLevel>,
    norm_out: GroupNorm,
    conv_out: SameConv2d,
    z_channels: usize,
}

impl MaskgitDecoder {
    pub fn new(cfg: &MaskgitConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let groups = cfg.norm_num_groups;
        let levels = cfg.num_levels();
        let c_mid = cfg.deepest_channels();
        let conv_in = SameConv2d::new(cfg.z_channels, c_mid, 3, true, vb.pp("conv_in"))?;
        let mid = (0..cfg.num_res_blocks)
            .map(|j| ResBlock::new(c_mid, c_mid, groups, vb.pp("mid").pp(j)))
            .collect::<Result<Vec<_>>>()?;
        let mut up = Vec::with_capacity(levels);
        for i in 0..levels {
            let vb_level = vb.pp("up").pp(i);
            // Level i receives the output of level i + 1 (the deepest level receives the middle section's).
            let mut c_in = cfg.level_channels((i + 1).min(levels - 1));
            let c_out = cfg.level_channels(i);
            let mut blocks = Vec::with_capacity(cfg.num_res_blocks);
            for j in 0..cfg.num_res_blocks {
                blocks.push(ResBlock::new(c_in, c_out, groups, vb_level.pp("block").pp(j))?);
                c_in = c_out;
            }
            let upsample_conv =
                if i != 0 { Some(SameConv2d::new(c_out, c_out, 3, true, vb_level.pp("upsample_conv"))?) } else { None };
            up.push(UpLevel { blocks, upsample_conv });
        }
        let c_first = cfg.level_channels(0);
        Ok(Self {
            conv_in,
            mid,
            up,
            norm_out: GroupNorm::new(c_first, groups, vb.pp("norm_out"))?,
            conv_out: SameConv2d::new(c_first, cfg.num_channels, 3, true, vb.pp("conv_out"))?,
            z_channels: cfg.z_channels,
        })
    }

    /// `z`: (B, z_channels, h, w) -> (B, num_channels, h * 2^(levels - 1), w * 2^(levels - 1)), unclamped.
    pub fn forward(&self, z: &Tensor) -> Result<Tensor> {
        let dims = z.dims();
        if dims.len() != 4 || dims[1] != self.z_channels {
            return Err(crate::shape_mismatch!(
                "MaskGIT decoder expects latents of shape (B, {}, h, w), got {dims:?}",
                self.z_channels
            ));
        }
        if self.runs_on_buffers(z) {
            return self.forward_on_buffers(z);
        }
        let mut h = self.conv_in.forward(z)?;
        for block in &self.mid {
            h = block.forward(&h)?;
        }
        for level in self.up.iter().rev() {
            for block in &level.blocks {
                h = block.forward(&h)?;
            }
            if let Some(conv) = &level.upsample_conv {
                h = conv.forward_upsampled(&h)?;
            }
        }
        self.conv_out.forward(&self.norm_out.forward_silu(&h)?)
    }

    /// Inference on the CPU: f32 latents and weights, none under autograd.
    fn runs_on_buffers(&self, z: &Tensor) -> bool {
        z.device().is_cpu()
            && z.dtype() == candle_core::DType::F32
            && !crate::nn::kernels::tracked(&[z])
            && self.conv_in.plain()
            && self.mid.iter().all(ResBlock::plain)
            && self
                .up
                .iter()
                .all(|l| l.blocks.iter().all(ResBlock::plain) && l.upsample_conv.iter().all(SameConv2d::plain))
            && self.norm_out.plain()
            && self.conv_out.plain()
    }

    /// Values of the largest activation of a pass from an (h, w) latent grid, per image.
    fn largest_activation(&self, h: usize, w: usize) -> usize {
        let (mut side, mut largest) = ((h, w), self.conv_in.channels().1 * h * w);
        for level in self.up.iter().rev() {
            for block in &level.blocks {
                let (c_in, c_out) = block.channels();
                largest = largest.max(c_in.max(c_out) * side.0 * side.1);
            }
            if let Some(conv) = &level.upsample_conv {
                side = (2 * side.0, 2 * side.1);
                largest = largest.max(conv.channels().1 * side.0 * side.1);
            }
        }
        largest.max(self.conv_out.channels().1 * side.0 * side.1)
    }

    /// [`Self::forward`] on activation buffers reused from layer to layer (see `pass.rs`); the same operations.
    fn forward_on_buffers(&self, z: &Tensor) -> Result<Tensor> {
        let (batch, c, h, w) = z.dims4()?;
        let mut pass = Pass::new(batch * self.largest_activation(h, w));
        let z = Act::new(z.contiguous()?.flatten_all()?.to_vec1::<f32>()?, (batch, c, h, w));
        let mut a = pass.alloc((batch, self.conv_in.channels().1, h, w));
        self.conv_in.run_into(&z, false, None, &mut a)?;
        for block in &self.mid {
            a = block.forward_pass(a, &mut pass)?;
        }
        for level in self.up.iter().rev() {
            for block in &level.blocks {
                a = block.forward_pass(a, &mut pass)?;
            }
            if let Some(conv) = &level.upsample_conv {
                let (b, c, h, w) = a.dims;
                let mut up = pass.alloc((b, c, 2 * h, 2 * w));
                conv.run_into(&a, true, None, &mut up)?;
                pass.recycle(a);
                a = up;
            }
        }
        let (b, _, h, w) = a.dims;
        let mut n = pass.alloc(a.dims);
        self.norm_out.silu_into(a.values(), h * w, n.values_mut())?;
        pass.recycle(a);
        let dims = (b, self.conv_out.channels().1, h, w);
        let mut out = Act::new(vec![0f32; dims.0 * dims.1 * dims.2 * dims.3], dims);
        self.conv_out.run_into(&n, false, None, &mut out)?;
        Ok(Tensor::from_vec(out.into_values(), dims, &candle_core::Device::Cpu)?)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use candle_core::{DType, Device, Shape};
    use candle_nn::var_builder::SimpleBackend;

    use super::*;

    /// Random weights at a sane scale (std 1/sqrt(fan_in), unit norms): timings on zeros or on overflowing
    /// activations would not be representative.
    struct RandomWeights;

    impl SimpleBackend for RandomWeights {
        fn get(
            &self,
            s: Shape,
            name: &str,
            _: candle_nn::Init,
            dtype: DType,
            dev: &Device,
        ) -> candle_core::Result<Tensor> {
            let dims = s.dims();
            if name.ends_with("weight") && dims.len() > 1 {
                let fan_in: usize = dims[1..].iter().product();
                Tensor::randn(0f32, 1.0 / (fan_in as f32).sqrt(), s, dev)?.to_dtype(dtype)
            } else if name.contains("norm") && name.ends_with("weight") {
                Tensor::ones(s, dtype, dev)
            } else {
                Tensor::zeros(s, dtype, dev)
            }
        }
        fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
            candle_core::bail!("unexpected unchecked get of {name}")
        }
        fn contains_tensor(&self, _: &str) -> bool {
            true
        }
    }

    /// CPU seconds used by the whole process so far (Linux), which unlike wall time does not grow when other
    /// work shares the cores.
    fn cpu_secs() -> Option<f64> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
        Some(ticks / 100.0) // USER_HZ
    }

    /// (wall, CPU) seconds per run, after one warm-up run.
    fn time<T>(runs: usize, mut f: impl FnMut() -> T) -> (f64, Option<f64>) {
        f();
        let (t, cpu) = (Instant::now(), cpu_secs());
        for _ in 0..runs {
            std::hint::black_box(f());
        }
        let wall = t.elapsed().as_secs_f64() / runs as f64;
        (wall, cpu.zip(cpu_secs()).map(|(a, b)| (b - a) / runs as f64))
    }

    /// Trained (weights are variables): the differentiable path (im2col convolutions, composed group norms)
    /// gives what inference gives from the same values (Winograd, fused group norm), and every parameter gets a
    /// gradient.
    #[test]
    fn the_training_path_matches_inference_and_reaches_every_weight() {
        let dev = Device::Cpu;
        let cfg = MaskgitConfig::tiny_for_tests();
        let vars = candle_nn::VarMap::new();
        let trained = MaskgitDecoder::new(&cfg, VarBuilder::from_varmap(&vars, DType::F32, &dev)).unwrap();
        for var in vars.all_vars() {
            var.set(&Tensor::randn(0f32, 0.3, var.shape(), &dev).unwrap()).unwrap();
        }
        let detached: std::collections::HashMap<String, Tensor> =
            vars.data().lock().unwrap().iter().map(|(k, v)| (k.clone(), v.as_detached_tensor())).collect();
        let inference = MaskgitDecoder::new(&cfg, VarBuilder::from_tensors(detached, DType::F32, &dev)).unwrap();
        let z = Tensor::randn(0f32, 1., (2, 4, 4, 4), &dev).unwrap();
        let (y, want) = (trained.forward(&z).unwrap(), inference.forward(&z).unwrap());
        assert!(y.track_op() && !want.track_op());
        let scale = want.abs().unwrap().max_keepdim(0).unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        let err = (&y - &want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(err <= 1e-4 * scale.max(1.0), "{err} against {scale}");
        let grads = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        for (name, var) in vars.data().lock().unwrap().iter() {
            let g = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("{name}: no gradient"));
            assert!(g.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.0, "{name}: zero gradient");
        }
    }

    /// `cargo test --release -p marvel-core bench_released_decoder -- --ignored --nocapture`; threads from
    /// `RAYON_NUM_THREADS`, timed runs from `MARVEL_BENCH_RUNS` (3).
    #[test]
    #[ignore = "benchmark: released-size decoder, batch 1 (a few seconds)"]
    fn bench_released_decoder() {
        let dev = Device::Cpu;
        let cfg = MaskgitConfig::default();
        let vb = VarBuilder::from_backend(Box::new(RandomWeights), DType::F32, dev.clone());
        let decoder = MaskgitDecoder::new(&cfg, vb).unwrap();
        let z = Tensor::randn(0f32, 1., (1, cfg.z_channels, 16, 16), &dev).unwrap();
        let first = Instant::now();
        let y = decoder.forward(&z).unwrap();
        let first = first.elapsed().as_secs_f64();
        assert_eq!(y.dims(), &[1, 3, 256, 256]);
        let runs = std::env::var("MARVEL_BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
        let (wall, cpu) = time(runs, || decoder.forward(&z).unwrap());
        eprintln!(
            "released MaskGIT decoder, batch 1, {} threads: {wall:.3} s wall, {:.3} CPU-s per image \
             (first call, with the Winograd weight transform: {first:.3} s wall)",
            rayon::current_num_threads(),
            cpu.unwrap_or(f64::NAN)
        );
    }
}
