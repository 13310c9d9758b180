//! Multi-depth LFQ throughput (issue 4's benchmark): B=64 images x N=32 tokens x D=4 depths x 12 bits.
//! Times marvel's quantizer, token packing and unpacking, and as the in-process baseline the same algorithm
//! written as whole-tensor ops (how the reference MDQ code does it in PyTorch), on 1 thread. Prints JSON.
//!
//!     cargo run --release -p marvel-core --example bench_lfq


use candle_core::{DType, Device, Tensor};
use marvel_core::quantize::lfq::{LfqConfig, ResidualLfq, SplitMix64};
use marvel_core::tokens::bytes::{tokens_from_bytes, tokens_to_bytes};
#[path = "common/mod.rs"]
mod common;
use common::median_secs;

const B: usize = 64;
const N: usize = 32;
const D: usize = 4;
const BITS: usize = 12;


/// The reference algorithm with whole-tensor ops: per depth a subtraction, a sign, a scale, a bit-weighted sum.
fn quantize_tensor_ops(z: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
    let powers = Tensor::from_vec((0..BITS).map(|k| (1u32 << k) as f32).collect::<Vec<_>>(), BITS, z.device())?;
    let mut cum = z.zeros_like()?;
    let mut tokens = Vec::with_capacity(D);
    for s in 0..D {
        let r = (z - &cum)?;
        let pos = r.gt(0f64)?.to_dtype(DType::F32)?;
        let q = ((&pos * 2.0)? - 1.0)?.affine(0.5f64.powi(s as i32), 0.0)?;
        tokens.push(pos.broadcast_mul(&powers)?.sum(2)?.to_dtype(DType::U32)?);
        cum = (cum + q)?;
    }
    Ok((cum, Tensor::stack(&tokens, 2)?))
}

fn main() -> marvel_core::Result<()> {
    marvel_core::runtime::set_num_threads(1)?;
    marvel_core::runtime::install(run)?
}

fn run() -> marvel_core::Result<()> {
    let count = (B * N * D) as f64;
    let mut rng = SplitMix64::new(1);
    let z: Vec<f32> = (0..B * N * BITS).map(|_| (rng.next_f64() * 2.0 - 1.0) as f32).collect();
    let z = Tensor::from_vec(z, (B, N, BITS), &Device::Cpu)?;
    let lfq = ResidualLfq::from_config(LfqConfig::mdq(BITS, D))?;

    let ours = lfq.quantize(&z, D)?;
    let (base_cum, base_tokens) = quantize_tensor_ops(&z)?;
    // Same computation, so the comparison is fair: identical tokens and codes.
    assert_eq!(ours.tokens.flatten_all()?.to_vec1::<u32>()?, base_tokens.flatten_all()?.to_vec1::<u32>()?);
    assert_eq!(ours.cum.flatten_all()?.to_vec1::<f32>()?, base_cum.flatten_all()?.to_vec1::<f32>()?);

    let quantize = median_secs(50, || drop(lfq.quantize(&z, D).unwrap()));
    let baseline = median_secs(20, || drop(quantize_tensor_ops(&z).unwrap()));
    let ids = ours.tokens.flatten_all()?.to_vec1::<u32>()?;
    let pack = median_secs(200, || drop(tokens_to_bytes(&ids, (B, N, D), BITS).unwrap()));
    let bytes = tokens_to_bytes(&ids, (B, N, D), BITS)?;
    let unpack = median_secs(200, || drop(tokens_from_bytes(&bytes).unwrap()));
    let decode = median_secs(50, || drop(lfq.codes_from_tokens(&ours.tokens, D).unwrap()));
    println!(
        "{{\"shape\": [{B}, {N}, {D}], \"bits\": {BITS}, \"threads\": 1, \"bytes\": {}, \
         \"tokens_per_s\": {{\"quantize\": {:.4e}, \"baseline_tensor_ops\": {:.4e}, \"pack\": {:.4e}, \
         \"unpack\": {:.4e}, \"codes_from_tokens\": {:.4e}}}, \"quantize_vs_baseline\": {:.2}}}",
        bytes.len(),
        count / quantize,
        count / baseline,
        count / pack,
        count / unpack,
        count / decode,
        baseline / quantize
    );
    Ok(())
}
