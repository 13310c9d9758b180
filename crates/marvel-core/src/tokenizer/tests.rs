use candle_core::{DType, Tensor};

use super::*;
use crate::testutil::{max_abs_diff, Fixture, NO_PARITY};

/// The fixture's NCHW u8 images as the interleaved RGB bytes the tokenizer takes.
fn fixture_rgb(f: &Fixture) -> (Vec<u8>, usize) {
    let nchw = f.input("images_u8");
    let b = nchw.dim(0).unwrap();
    let nhwc = nchw.permute((0, 2, 3, 1)).unwrap().flatten_all().unwrap().to_vec1::<u8>().unwrap();
    (nhwc, b)
}

/// Expected tokens (B, 1, N[, D]) as a depth-major id list.
fn depth_major(expected: &Tensor) -> Vec<u32> {
    let t = expected.to_dtype(DType::U32).unwrap().squeeze(1).unwrap();
    let t = if t.rank() == 2 { t.unsqueeze(0).unwrap() } else { t.permute((2, 0, 1)).unwrap() };
    t.flatten_all().unwrap().to_vec1::<u32>().unwrap()
}

fn load(case: &str) -> (Fixture, Tokenizer) {
    let f = Fixture::load(case);
    let t = Tokenizer::from_pretrained(&f.dir).unwrap();
    (f, t)
}

/// Count of bytes off by one and the largest difference.
fn u8_diff(a: &[u8], b: &[u8]) -> (usize, u8) {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).fold((0, 0), |(n, m), (x, y)| {
        let d = x.abs_diff(*y);
        (n + (d > 0) as usize, m.max(d))
    })
}

#[test]
#[cfg_attr(not(marvel_parity), ignore = "parity fixtures not found at ../shared/parity or $MARVEL_PARITY_DIR")]
fn titok_vq_legacy_bytes_in_tokens_out_and_back() {
    let _ = NO_PARITY;
    let (f, tok) = load("titok_vq_legacy");
    let (rgb, b) = fixture_rgb(&f);
    let tokens = tok.encode_rgb(&rgb, b, 256, 256).unwrap();
    assert_eq!((tokens.depth, tokens.batch, tokens.num_tokens), (1, 3, 8));
    assert_eq!(tokens.ids, depth_major(f.expected("tokens")));

    let recon = tok.decode_float(&tokens, None).unwrap();
    let err = max_abs_diff(&recon, f.expected("recon"));
    eprintln!("tokenizer titok_vq_legacy recon max abs error {err:.3e}");
    assert!(err <= 1e-4);

    let bytes = tok.decode_rgb(&tokens, None).unwrap();
    let expected = f.expected("recon_u8").flatten_all().unwrap().to_vec1::<u8>().unwrap();
    let (off, max) = u8_diff(&bytes, &expected);
    eprintln!("tokenizer titok_vq_legacy recon_u8: {off} of {} values off, max {max}", bytes.len());
    assert!(max <= 1 && off * 1000 <= bytes.len());
}

#[test]
#[cfg_attr(not(marvel_parity), ignore = "parity fixtures not found at ../shared/parity or $MARVEL_PARITY_DIR")]
fn marvel_lfq_every_depth_prefix_decodes() {
    let (f, tok) = load("marvel_lfq");
    assert_eq!((tok.info().architecture, tok.info().depth, tok.info().bits_per_token), ("marvel", 4, 12));
    let (rgb, b) = fixture_rgb(&f);
    let tokens = tok.encode_rgb(&rgb, b, 256, 256).unwrap();
    assert_eq!((tokens.depth, tokens.batch, tokens.num_tokens), (4, 3, 8));
    assert_eq!(tokens.ids, depth_major(f.expected("tokens")));
    for d in 1..=4 {
        // Only the first d depth blocks are kept: the prefix of a depth-major buffer.
        let prefix = TokenBatch { ids: tokens.ids[..d * 3 * 8].to_vec(), depth: d, ..tokens.clone() };
        let recon = tok.decode_float(&prefix, None).unwrap();
        let err = max_abs_diff(&recon, f.expected(&format!("recon_depth{d}")));
        eprintln!("tokenizer marvel_lfq recon_depth{d} max abs error {err:.3e}");
        assert!(err <= 1e-4, "depth {d}: {err}");
        let same = tok.decode_float(&tokens, Some(d)).unwrap();
        assert_eq!(max_abs_diff(&same, &recon), 0.0);
    }
}

#[test]
#[cfg_attr(not(marvel_parity), ignore = "parity fixtures not found at ../shared/parity or $MARVEL_PARITY_DIR")]
fn batches_larger_than_a_chunk_match_single_image_runs() {
    let (f, tok) = load("titok_vq_nonlegacy");
    let (rgb, b) = fixture_rgb(&f);
    let n = 256 * 256 * 3;
    // 10 images (cycling the 3 fixture images) cross the 8-image chunk boundary.
    let many: Vec<u8> = (0..10).flat_map(|i| rgb[(i % b) * n..(i % b + 1) * n].to_vec()).collect();
    let tokens = tok.encode_rgb(&many, 10, 256, 256).unwrap();
    let expected = depth_major(f.expected("tokens"));
    for i in 0..10 {
        assert_eq!(tokens.ids[i * 8..(i + 1) * 8], expected[(i % b) * 8..(i % b + 1) * 8], "image {i}");
    }
    let bytes = tok.decode_rgb(&tokens, None).unwrap();
    assert_eq!(bytes.len(), 10 * n);
    assert_eq!(bytes[9 * n..], bytes[0..n], "image 9 repeats image 0");
}

#[test]
#[cfg_attr(not(marvel_parity), ignore = "parity fixtures not found at ../shared/parity or $MARVEL_PARITY_DIR")]
fn info_describes_the_model() {
    let (_, tok) = load("titok_vq_legacy");
    let info = tok.info();
    assert_eq!((info.architecture, info.quantizer, info.num_tokens, info.depth), ("titok", "vq", 8, 1));
    assert_eq!((info.codebook_size, info.bits_per_token, info.two_stage), (4096, 12, true));
    assert_eq!(info.parameters, 675_087, "the fixture README counts 675087 values in 164 tensors");
    assert_eq!((info.bits_per_image_at(1), info.bits_per_image), (96, 96));
    let (_, nonlegacy) = load("titok_vq_nonlegacy");
    assert_eq!((nonlegacy.info().bits_per_token, nonlegacy.info().parameters), (8, 340_516));
    // Full depth: 8 tokens x 4 depths x 12 bits.
    let (_, lfq) = load("marvel_lfq");
    assert_eq!((lfq.info().bits_per_image, lfq.info().bits_per_image_at(2)), (384, 192));
}

#[test]
#[cfg_attr(not(marvel_parity), ignore = "parity fixtures not found at ../shared/parity or $MARVEL_PARITY_DIR")]
fn bad_inputs_are_named() {
    let (_, tok) = load("marvel_lfq");
    let err = tok.encode_rgb(&[0; 64 * 64 * 3], 1, 64, 64).unwrap_err();
    assert!(err.to_string().contains("must be 256x256"), "{err}");
    let err = tok.encode_rgb(&[0; 10], 1, 256, 256).unwrap_err();
    assert_eq!(err.code(), "MARVEL_SHAPE_MISMATCH");

    let good = TokenBatch { ids: vec![0; 4 * 8], depth: 4, batch: 1, num_tokens: 8 };
    let err = tok.decode_rgb(&good, Some(5)).unwrap_err();
    assert!(err.to_string().contains("between 1 and the model's 4 depth(s), got 5"), "{err}");
    let err = tok.decode_rgb(&good, Some(0)).unwrap_err();
    assert_eq!(err.code(), "MARVEL_INVALID_ARGUMENT");
    let two = TokenBatch { ids: vec![0; 2 * 8], depth: 2, ..good.clone() };
    let err = tok.decode_rgb(&two, Some(3)).unwrap_err();
    assert!(err.to_string().contains("the tokens hold only 2"), "{err}");

    let mut bad = good.clone();
    bad.ids[8 + 5] = 4096;
    let err = tok.decode_rgb(&bad, None).unwrap_err();
    assert!(err.to_string().contains("token 4096 at (depth 1, image 0, position 5) is outside 0..4096"), "{err}");
    // Depths beyond the one decoded are not read, so a bad id there does not matter.
    assert!(tok.decode_rgb(&bad, Some(1)).is_ok());

    let short = TokenBatch { ids: vec![0; 4 * 7], depth: 4, batch: 1, num_tokens: 7 };
    assert!(tok.decode_rgb(&short, None).unwrap_err().to_string().contains("takes 8 tokens per image, got 7"));
}

#[test]
fn bits_cover_the_codebook() {
    assert_eq!([bits_for(2), bits_for(256), bits_for(257), bits_for(4096), bits_for(8192)], [1, 8, 9, 12, 13]);
}

#[test]
fn inspect_checks_a_folder_like_a_load_without_reading_weights() {
    let dir = std::env::temp_dir().join(format!("marvel-inspect-{}", std::process::id()));
    let json = r#"{"model": {"vq_model": {
        "quantize_mode": "lfq", "token_size": 6, "num_depths": 3, "num_latent_tokens": 4,
        "vit_enc_model_size": "custom", "vit_enc_width": 32, "vit_enc_num_layers": 1, "vit_enc_num_heads": 2,
        "vit_dec_model_size": "custom", "vit_dec_width": 32, "vit_dec_num_layers": 1, "vit_dec_num_heads": 2,
        "vit_enc_patch_size": 16, "vit_dec_patch_size": 16, "is_legacy": false, "finetune_decoder": false}},
        "dataset": {"preprocessing": {"crop_size": 256}}}"#;
    crate::init::write_random_model(&dir, json, 3).unwrap();
    let loaded = Tokenizer::from_pretrained(&dir).unwrap().info().clone();
    assert_eq!(Tokenizer::inspect(&dir).unwrap(), loaded);
    // Every weight byte set to 0xff (a NaN): a load refuses it, inspect never reads it.
    let path = dir.join("model.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    let data_start = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    bytes[data_start..].fill(0xff);
    std::fs::write(&path, &bytes).unwrap();
    assert_eq!(Tokenizer::from_pretrained(&dir).err().unwrap().code(), "MARVEL_CHECKPOINT");
    assert_eq!(Tokenizer::inspect(&dir).unwrap(), loaded);
    // A config the weights do not fit is refused as a load refuses it.
    std::fs::write(dir.join("config.json"), json.replace(r#""vit_enc_width": 32"#, r#""vit_enc_width": 64"#)).unwrap();
    let err = Tokenizer::inspect(&dir).unwrap_err();
    assert!(err.code() == "MARVEL_CHECKPOINT" && err.to_string().contains("latent_tokens: shape [4, 32]"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
