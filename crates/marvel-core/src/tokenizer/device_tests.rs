//! The path a GPU tokenizer takes, run on the CPU: half-precision parameters leave the CPU kernels (f32 only) for
//! candle's composite ops, the ops the GPU runs, while the quantizer converts its input to f32 and codes in f32.
//! The CPU has no bf16 matmul, so f16 (the same composite path, 3 more mantissa bits) stands in for the GPU's
//! bf16; the GPU's own bf16 numbers come from bench/gpu.

use candle_core::{DType, Device};

use super::*;
use crate::testutil::{Fixture, NO_PARITY};

fn rel_l2(a: &Tensor, b: &Tensor) -> f64 {
    let a = a.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let b = b.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let num: f64 = a.iter().zip(&b).map(|(x, y)| (x - y).powi(2)).sum();
    (num / b.iter().map(|y| y * y).sum::<f64>()).sqrt()
}

#[test]
#[cfg_attr(not(marvel_parity), ignore = "parity fixtures not found at ../shared/parity or $MARVEL_PARITY_DIR")]
fn half_precision_parameters_take_the_composite_path_and_stay_close_to_f32() {
    let _ = NO_PARITY;
    let f = Fixture::load("marvel_lfq");
    let tok = Tokenizer::load_as(&f.dir, &Device::Cpu, DType::F16).unwrap();
    let nchw = f.input("images_u8");
    let b = nchw.dim(0).unwrap();
    let rgb = nchw.permute((0, 2, 3, 1)).unwrap().flatten_all().unwrap().to_vec1::<u8>().unwrap();
    let tokens = tok.encode_rgb(&rgb, b, 256, 256).unwrap();
    assert_eq!((tokens.depth, tokens.batch, tokens.num_tokens), (4, 3, 8));
    let expected = f.expected("tokens").to_dtype(DType::U32).unwrap().squeeze(1).unwrap().permute((2, 0, 1)).unwrap();
    let ids = expected.flatten_all().unwrap().to_vec1::<u32>().unwrap();
    // A bit flips where a residual lies within rounding of 0, more often at finer depths (smaller residuals): only
    // the first depth is held to near-agreement.
    let per_depth = b * 8;
    let agree: Vec<f64> = (0..4)
        .map(|d| {
            let r = d * per_depth..(d + 1) * per_depth;
            ids[r.clone()].iter().zip(&tokens.ids[r]).filter(|(x, y)| x == y).count() as f64 / per_depth as f64
        })
        .collect();
    eprintln!("f16 tokenizer: share of ids equal to the f32 reference's, by depth: {agree:?}");
    assert!(agree[0] >= 0.9, "{agree:?}");
    // Decoding the reference ids isolates the decoder from those flips.
    let reference = TokenBatch { ids, ..tokens.clone() };
    let recon = tok.decode_float(&reference, None).unwrap();
    assert_eq!(recon.dtype(), DType::F16, "the decoder ran in half precision");
    let err = rel_l2(&recon, f.expected("recon_depth4"));
    eprintln!("f16 tokenizer: decode rel-L2 {err:.2e} against the f32 reference");
    assert!(err < 2e-2, "{err}");
}
