use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use super::*;
use crate::config::TitokConfig;
use crate::image::images_to_u8_nhwc;
use crate::testutil::{max_abs_diff, Fixture};
use crate::weights::{build_shape_only, LoadOptions};

fn load_case(case: &str) -> (Fixture, Titok) {
    let fx = Fixture::load(case);
    let cfg = TitokConfig::from_path(fx.dir.join("config.json")).unwrap();
    let (model, report) =
        Titok::load(&cfg, fx.dir.join("model.safetensors"), &Device::Cpu, &LoadOptions::default()).unwrap();
    assert!(report.unexpected.is_empty());
    (fx, model)
}

/// Compares a float output, prints its error for the log, and enforces `tol`.
fn check(case: &str, name: &str, actual: &Tensor, expected: &Tensor, tol: f32) {
    let err = max_abs_diff(actual, expected);
    eprintln!("{case}: {name} max abs error {err:.3e}");
    assert!(err <= tol, "{case}: {name} max abs error {err} > {tol}");
}

/// Token ids must match exactly (the fixture stores them as (B, 1, N[, depths]) int64).
fn check_tokens(case: &str, actual: &Tensor, expected: &Tensor) {
    let a = actual.to_dtype(DType::I64).unwrap().flatten_all().unwrap().to_vec1::<i64>().unwrap();
    let e = expected.flatten_all().unwrap().to_vec1::<i64>().unwrap();
    assert_eq!(a, e, "{case}: tokens differ");
    eprintln!("{case}: tokens identical ({} ids)", a.len());
}

/// recon_u8: truncation can flip values lying within float error of a multiple of 1/255, by one, rarely.
fn check_u8(case: &str, recon: &Tensor, expected: &Tensor) {
    let got = images_to_u8_nhwc(recon).unwrap();
    let want = expected.flatten_all().unwrap().to_vec1::<u8>().unwrap();
    assert_eq!(got.len(), want.len());
    let diffs: Vec<i32> = got.iter().zip(&want).map(|(&a, &b)| a as i32 - b as i32).filter(|d| *d != 0).collect();
    let max = diffs.iter().map(|d| d.abs()).max().unwrap_or(0);
    eprintln!("{case}: recon_u8 {} of {} values differ, by at most {max}", diffs.len(), want.len());
    assert!(max <= 1, "{case}: recon_u8 off by {max}");
    assert!(diffs.len() * 1000 <= want.len(), "{case}: {} recon_u8 values differ", diffs.len());
}

#[test]
#[cfg_attr(not(marvel_parity), ignore = "parity fixtures not found at ../shared/parity or $MARVEL_PARITY_DIR")]
fn parity_titok_vq_legacy() {
    let case = "titok_vq_legacy";
    let (fx, model) = load_case(case);
    let x = fx.images_f32();
    let latent = model.encode_latent(&x).unwrap();
    check(case, "enc_latent", &latent, fx.expected("enc_latent"), 1e-4);
    let (z_q, tokens) = model.encode(&x).unwrap();
    assert_eq!(tokens.dims(), &[3, 8]);
    assert_eq!(tokens.dtype(), DType::U32);
    check_tokens(case, &tokens, fx.expected("tokens"));
    check(case, "z_q", &z_q, fx.expected("z_q"), 1e-4);
    check(case, "dec_logits", &model.decoder().forward(&z_q).unwrap(), fx.expected("dec_logits"), 1e-4);
    let recon = model.decode_tokens(&tokens).unwrap();
    assert_eq!(recon.dims(), &[3, 3, 256, 256]);
    check(case, "recon", &recon, fx.expected("recon"), 1e-4);
    check_u8(case, &recon, fx.expected("recon_u8"));
    // decode(z_q) sees the straight-through value, which differs from the codebook row in the last bits only.
    let via_zq = model.decode(&z_q).unwrap();
    let err = max_abs_diff(&via_zq, &recon);
    eprintln!("{case}: decode(z_q) vs decode_tokens max abs difference {err:.3e}");
    assert!(err < 1e-3);
}

#[test]
#[cfg_attr(not(marvel_parity), ignore = "parity fixtures not found at ../shared/parity or $MARVEL_PARITY_DIR")]
fn parity_titok_vq_nonlegacy() {
    let case = "titok_vq_nonlegacy";
    let (fx, model) = load_case(case);
    let x = fx.images_f32();
    check(case, "enc_latent", &model.encode_latent(&x).unwrap(), fx.expected("enc_latent"), 1e-4);
    let (z_q, tokens) = model.encode(&x).unwrap();
    check_tokens(case, &tokens, fx.expected("tokens"));
    check(case, "z_q", &z_q, fx.expected("z_q"), 1e-4);
    let recon = model.decode_tokens(&tokens).unwrap();
    assert_eq!(recon.dims(), &[3, 3, 256, 256]);
    check(case, "recon", &recon, fx.expected("recon"), 1e-4);
}

#[test]
#[cfg_attr(not(marvel_parity), ignore = "parity fixtures not found at ../shared/parity or $MARVEL_PARITY_DIR")]
fn parity_marvel_lfq_pipeline() {
    let case = "marvel_lfq";
    let (fx, model) = load_case(case);
    let x = fx.images_f32();
    check(case, "enc_latent", &model.encode_latent(&x).unwrap(), fx.expected("enc_latent"), 1e-4);
    let (_, tokens) = model.encode(&x).unwrap();
    assert_eq!(tokens.dims(), &[3, 8, 4]);
    check_tokens(case, &tokens, fx.expected("tokens"));
    for d in 1..=4 {
        let z = model.quantizer().dequantize(&tokens, Some(d)).unwrap();
        check(case, &format!("z_q_depth{d}"), &z, fx.expected(&format!("z_q_depth{d}")), 0.0);
        let recon = model.decode_tokens_to_depth(&tokens, d).unwrap();
        check(case, &format!("recon_depth{d}"), &recon, fx.expected(&format!("recon_depth{d}")), 1e-4);
    }
}

/// A released configuration, as its `config.json` would read.
fn released(size: &str, tokens: usize) -> TitokConfig {
    let json = serde_json::json!({"model": {"vq_model": {
        "codebook_size": 4096, "token_size": 12, "use_l2_norm": true, "commitment_cost": 0.25,
        "vit_enc_model_size": size, "vit_dec_model_size": size,
        "vit_enc_patch_size": 16, "vit_dec_patch_size": 16, "num_latent_tokens": tokens
    }}, "dataset": {"preprocessing": {"crop_size": 256}}});
    TitokConfig::from_json_str(&json.to_string()).unwrap()
}

#[test]
fn released_configs_have_the_reference_parameters() {
    for (size, tokens, params, count) in
        [("large", 32, 641_054_735usize, 692usize), ("base", 64, 204_814_095, 404), ("small", 128, 83_674_639, 308)]
    {
        let cfg = released(size, tokens);
        let (_, requested) = build_shape_only(DType::F32, &Device::Cpu, |vb| Titok::new(&cfg, vb)).unwrap();
        let total: usize = requested.iter().map(|r| r.shape.iter().product::<usize>()).sum();
        let mut names: Vec<&str> = requested.iter().map(|r| r.name.as_str()).collect();
        names.sort();
        names.dedup();
        eprintln!("TiTok {size}-{tokens}: {total} parameters in {} tensors", requested.len());
        assert_eq!((total, requested.len(), names.len()), (params, count, count), "{size}-{tokens}");
        let shape_of = |name: &str| {
            requested.iter().find(|r| r.name == name).unwrap_or_else(|| panic!("{name} not requested")).shape.clone()
        };
        let (d, layers) = match size {
            "large" => (1024, 24),
            "base" => (768, 12),
            _ => (512, 8),
        };
        assert_eq!(shape_of("latent_tokens"), vec![tokens, d]);
        assert_eq!(shape_of("encoder.patch_embed.weight"), vec![d, 3, 16, 16]);
        assert_eq!(shape_of(&format!("encoder.transformer.{}.attn.in_proj_weight", layers - 1)), vec![3 * d, d]);
        assert_eq!(shape_of("encoder.conv_out.weight"), vec![12, d, 1, 1]);
        assert_eq!(shape_of("decoder.mask_token"), vec![1, 1, d]);
        assert_eq!(shape_of("decoder.ffn.2.weight"), vec![1024, 2 * d, 1, 1]);
        assert_eq!(shape_of("quantize.embedding.weight"), vec![4096, 12]);
        assert_eq!(shape_of("pixel_quantize.embedding.weight"), vec![1024, 256]);
        assert_eq!(shape_of("pixel_decoder.conv_in.weight"), vec![512, 256, 3, 3]);
    }
}

/// A small single-stage model with all-zero weights: enough to exercise shapes and argument checks.
fn tiny() -> Titok {
    let json = serde_json::json!({"model": {"vq_model": {
        "codebook_size": 16, "token_size": 4, "vit_enc_model_size": "custom", "vit_dec_model_size": "custom",
        "vit_enc_width": 16, "vit_enc_num_layers": 1, "vit_enc_num_heads": 2,
        "vit_dec_width": 16, "vit_dec_num_layers": 1, "vit_dec_num_heads": 2,
        "vit_enc_patch_size": 16, "vit_dec_patch_size": 16, "num_latent_tokens": 5,
        "finetune_decoder": false, "is_legacy": false
    }}});
    let cfg = TitokConfig::from_json_str(&json.to_string()).unwrap();
    Titok::new(&cfg, VarBuilder::zeros(DType::F32, &Device::Cpu)).unwrap()
}

#[test]
fn encode_and_decode_shapes() {
    let model = tiny();
    let x = Tensor::zeros((2, 3, 256, 256), DType::F32, &Device::Cpu).unwrap();
    let (z_q, tokens) = model.encode(&x).unwrap();
    assert_eq!(z_q.dims(), &[2, 4, 1, 5]);
    assert_eq!((tokens.dims(), tokens.dtype()), (&[2usize, 5][..], DType::U32));
    assert_eq!(model.decode_tokens(&tokens).unwrap().dims(), &[2, 3, 256, 256]);
    // The reference's (B, 1, N) int64 ids decode too.
    let i64_tokens = tokens.to_dtype(DType::I64).unwrap().unsqueeze(1).unwrap();
    assert_eq!(model.decode_tokens(&i64_tokens).unwrap().dims(), &[2, 3, 256, 256]);
    fn shareable<T: Send + Sync>(_: &T) {}
    shareable(&model);
}

#[test]
fn bad_arguments_are_named() {
    let model = tiny();
    let dev = Device::Cpu;
    let err = model.encode(&Tensor::zeros((1, 3, 224, 224), DType::F32, &dev).unwrap()).unwrap_err();
    assert_eq!(err.code(), "MARVEL_SHAPE_MISMATCH");
    assert!(err.to_string().contains("(B, 3, 256, 256), got [1, 3, 224, 224]"), "{err}");
    let err = model.encode(&Tensor::zeros((1, 3, 256, 256), DType::U8, &dev).unwrap()).unwrap_err();
    assert_eq!(err.code(), "MARVEL_INVALID_ARGUMENT");

    let tokens = Tensor::new(&[[0u32, 1, 2, 3, 16]], &dev).unwrap();
    let err = model.decode_tokens(&tokens).unwrap_err();
    assert_eq!(err.code(), "MARVEL_INVALID_ARGUMENT");
    assert!(err.to_string().contains("token 16 at (batch 0, position 4) is outside 0..16"), "{err}");
    let negative = Tensor::new(&[[0i64, -1, 2, 3, 4]], &dev).unwrap();
    assert!(model.decode_tokens(&negative).unwrap_err().to_string().contains("token -1"));
    let err = model.decode_tokens(&Tensor::zeros((1, 4), DType::U32, &dev).unwrap()).unwrap_err();
    assert_eq!(err.code(), "MARVEL_SHAPE_MISMATCH");
    let err = model.decode(&Tensor::zeros((1, 4, 1, 6), DType::F32, &dev).unwrap()).unwrap_err();
    assert!(err.to_string().contains("(B, 4, 1, 5), got [1, 4, 1, 6]"), "{err}");
}

/// Timing of the released TiTok-L-32 layout on this machine (zero weights: the same arithmetic as trained ones).
/// `cargo test --release -p marvel-core titok_l32_timing -- --ignored --nocapture`
#[test]
#[ignore = "timing only; allocates the 2.6 GB L-32 model"]
fn titok_l32_timing() {
    let cfg = released("large", 32);
    let model = Titok::new(&cfg, VarBuilder::zeros(DType::F32, &Device::Cpu)).unwrap();
    let x = Tensor::rand(0f32, 1.0, (1, 3, 256, 256), &Device::Cpu).unwrap();
    let time = |f: &mut dyn FnMut()| {
        f(); // warm-up
        let t = std::time::Instant::now();
        f();
        t.elapsed().as_secs_f64()
    };
    let mut tokens = None;
    let enc = time(&mut || tokens = Some(model.encode(&x).unwrap().1));
    let tokens = tokens.unwrap();
    let z = model.quantizer().dequantize(&tokens, None).unwrap();
    let vit = time(&mut || drop(model.decoder().logits_channels_last(&z).unwrap()));
    let dec = time(&mut || drop(model.decode_tokens(&tokens).unwrap()));
    eprintln!("TiTok-L-32, batch 1: encode {enc:.3} s, decoder ViT {vit:.3} s, decode_tokens {dec:.3} s");
    // The encoder's dense work as bare matmuls (24 layers of qkv, out, fc, proj on 289 rows), for comparison.
    let a = Tensor::rand(0f32, 1.0, (289, 1024), &Device::Cpu).unwrap();
    let ws: Vec<Tensor> = [(3072, 1024), (1024, 1024), (4096, 1024), (1024, 4096)]
        .iter()
        .map(|&s| Tensor::rand(0f32, 1.0, s, &Device::Cpu).unwrap())
        .collect();
    let h = Tensor::rand(0f32, 1.0, (289, 4096), &Device::Cpu).unwrap();
    let gemm = time(&mut || {
        for _ in 0..24 {
            drop(a.matmul(&ws[0].t().unwrap()).unwrap());
            drop(a.matmul(&ws[1].t().unwrap()).unwrap());
            drop(a.matmul(&ws[2].t().unwrap()).unwrap());
            drop(h.matmul(&ws[3].t().unwrap()).unwrap());
        }
    });
    eprintln!("bare matmuls of the L-32 encoder: {gemm:.3} s");
}

/// Training path: after one backward of the LFQ losses (entropy + commitment) on the encoder output, every
/// trainable tensor upstream of the quantizer has a non-zero gradient. Guards against ops that record no backward
/// (candle's fused layer norm and softmax) sneaking into the training path.
#[test]
fn lfq_losses_reach_every_encoder_parameter() {
    use candle_nn::{VarBuilder, VarMap};
    let cfg = TitokConfig::from_json_str(
        r#"{"model": {"vq_model": {"quantize_mode": "lfq", "token_size": 6, "num_depths": 2, "num_latent_tokens": 4,
        "vit_enc_model_size": "custom", "vit_enc_width": 32, "vit_enc_num_layers": 2, "vit_enc_num_heads": 2,
        "vit_dec_model_size": "custom", "vit_dec_width": 32, "vit_dec_num_layers": 1, "vit_dec_num_heads": 2,
        "vit_enc_patch_size": 16, "vit_dec_patch_size": 16, "is_legacy": true, "finetune_decoder": false}},
        "dataset": {"preprocessing": {"crop_size": 64}}}"#,
    )
    .unwrap();
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    // Trainable copies of freshly initialised weights (VarMap's own default init leaves some matrices at zero,
    // which would zero the gradients behind them for reasons unrelated to this test).
    for (name, t) in crate::init::random_weights(&cfg, 3).unwrap() {
        varmap.data().lock().unwrap().insert(name, candle_core::Var::from_tensor(&t).unwrap());
    }
    let model = Titok::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, &dev)).unwrap();
    let x = Tensor::rand(0f32, 1f32, (2, 3, 64, 64), &dev).unwrap();
    let z = model.encode_latent(&x).unwrap();
    let Quantizer::Lfq(lfq) = model.quantizer() else { panic!("lfq config builds an LFQ quantizer") };
    let losses = lfq.losses(&z, 2).unwrap();
    let grads = losses.total.backward().unwrap();
    let data = varmap.data().lock().unwrap();
    let mut checked = 0;
    for (name, var) in data.iter() {
        if !(name.starts_with("encoder.") || name == "latent_tokens") {
            continue;
        }
        let g = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("{name}: no gradient recorded"));
        let norm = g.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(norm > 0.0, "{name}: gradient is zero");
        checked += 1;
    }
    // 2 blocks x 12 tensors + patch embed 2 + class/pos/latent pos 3 + ln_pre/ln_post 4 + conv_out 2 + latent tokens.
    assert!(checked >= 30, "only {checked} upstream tensors checked");
    eprintln!("LFQ losses: {checked} upstream tensors, all with non-zero gradients");
}
