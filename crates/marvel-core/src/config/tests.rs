use super::*;

/// The released TiTok-L-32 `config.json` (abridged to the sections we read plus one we ignore): it omits
/// `finetune_decoder`, `is_legacy` and `quantize_mode`.
const L32: &str = r#"{
    "experiment": {"project": "titok"},
    "model": {"vq_model": {
        "codebook_size": 4096, "token_size": 12, "use_l2_norm": true, "commitment_cost": 0.25,
        "vit_enc_model_size": "large", "vit_dec_model_size": "large",
        "vit_enc_patch_size": 16, "vit_dec_patch_size": 16, "num_latent_tokens": 32
    }, "generator": {"hidden_size": 768}},
    "losses": {"quantizer_weight": 1.0},
    "dataset": {"preprocessing": {"crop_size": 256}}
}"#;

fn with(edit: impl FnOnce(&mut serde_json::Value)) -> Result<TitokConfig> {
    let mut v: serde_json::Value = serde_json::from_str(L32).unwrap();
    edit(&mut v);
    TitokConfig::from_json_str(&v.to_string())
}

fn vq(v: &mut serde_json::Value) -> &mut serde_json::Map<String, serde_json::Value> {
    v["model"]["vq_model"].as_object_mut().unwrap()
}

fn config_message(r: Result<TitokConfig>) -> String {
    match r {
        Err(MarvelError::Config(msg)) => msg,
        other => panic!("expected a config error, got {other:?}"),
    }
}

#[test]
fn released_config_gets_reference_defaults() {
    let c = TitokConfig::from_json_str(L32).unwrap();
    assert!(c.finetune_decoder && c.is_legacy);
    assert_eq!(c.encoder, VitConfig { width: 1024, num_layers: 24, num_heads: 16, patch_size: 16 });
    assert_eq!(c.decoder, c.encoder);
    assert_eq!(
        c.quantizer,
        QuantizerConfig::Vq(VqConfig {
            codebook_size: 4096,
            token_size: 12,
            use_l2_norm: true,
            commitment_cost: 0.25
        })
    );
    let pd = c.pixel_decoder.as_ref().unwrap();
    assert_eq!((pd.hidden_channels, pd.z_channels, pd.codebook_size), (128, 256, 1024));
    assert_eq!(c.decoder_grid(), 16);
    assert_eq!(c.image_size, 256);
}

#[test]
fn dataset_section_defaults_to_256() {
    let c = with(|v| {
        v.as_object_mut().unwrap().remove("dataset");
    })
    .unwrap();
    assert_eq!(c.image_size, 256);
}

#[test]
fn lfq_keys_get_marvel_defaults() {
    let c = with(|v| {
        let m = vq(v);
        m.insert("quantize_mode".into(), "lfq".into());
        m.remove("codebook_size");
        m.insert("use_l2_norm".into(), false.into());
    })
    .unwrap();
    assert_eq!(c.quantizer, QuantizerConfig::Lfq(LfqConfig::mdq(12, 1)));
}

#[test]
fn custom_sizes_and_pixel_decoder_are_read() {
    let c = with(|v| {
        let m = vq(v);
        m.insert("vit_enc_model_size".into(), "custom".into());
        m.insert("vit_enc_width".into(), 64.into());
        m.insert("vit_enc_num_layers".into(), 2.into());
        m.insert("vit_enc_num_heads".into(), 4.into());
        m.insert(
            "pixel_decoder".into(),
            serde_json::json!({"hidden_channels": 8, "channel_mult": [1, 1, 2, 2, 4], "num_res_blocks": 2,
                               "z_channels": 64, "codebook_size": 1024, "norm_num_groups": 8}),
        );
    })
    .unwrap();
    assert_eq!(c.encoder, VitConfig { width: 64, num_layers: 2, num_heads: 4, patch_size: 16 });
    assert_eq!(c.pixel_decoder.unwrap().z_channels, 64);
}

#[test]
fn bad_keys_are_named() {
    let cases: Vec<(Box<dyn FnOnce(&mut serde_json::Value)>, &str)> = vec![
        (Box::new(|v| drop(vq(v).insert("quantize_mode".into(), "vae".into()))), "quantize_mode = \"vae\""),
        (
            Box::new(|v| drop(vq(v).insert("vit_enc_model_size".into(), "huge".into()))),
            "vit_enc_model_size = \"huge\"",
        ),
        (
            Box::new(|v| {
                let m = vq(v);
                m.insert("vit_dec_model_size".into(), "custom".into());
                m.insert("vit_dec_width".into(), 64.into());
                m.insert("vit_dec_num_layers".into(), 2.into());
            }),
            "needs vit_dec_num_heads",
        ),
        (
            Box::new(|v| {
                let m = vq(v);
                m.insert("vit_enc_model_size".into(), "custom".into());
                m.insert("vit_enc_width".into(), 64.into());
                m.insert("vit_enc_num_layers".into(), 2.into());
                m.insert("vit_enc_num_heads".into(), 5.into());
            }),
            "vit_enc_num_heads = 5 does not divide vit_enc_width = 64",
        ),
        (Box::new(|v| drop(vq(v).insert("vit_enc_width".into(), 640.into()))), "vit_enc_width = 640 contradicts"),
        (Box::new(|v| drop(vq(v).remove("codebook_size"))), "needs codebook_size"),
        (Box::new(|v| drop(vq(v).insert("num_depths".into(), 2.into()))), "num_depths only applies"),
        (
            Box::new(|v| {
                let m = vq(v);
                m.insert("finetune_decoder".into(), true.into());
                m.insert("is_legacy".into(), false.into());
            }),
            "finetune_decoder = true needs is_legacy = true",
        ),
        (
            Box::new(|v| {
                let m = vq(v);
                m.insert("quantize_mode".into(), "lfq".into());
                m.insert("use_l2_norm".into(), false.into());
                m.insert("codebook_size".into(), 1024.into());
            }),
            "codebook_size = 1024 contradicts",
        ),
        (
            Box::new(|v| {
                let m = vq(v);
                m.insert("quantize_mode".into(), "lfq".into());
                m.remove("codebook_size");
                m.insert("use_l2_norm".into(), false.into());
                m.insert("num_depths".into(), 0.into());
            }),
            "num_depths must be in 1..=23, got 0",
        ),
        (Box::new(|v| drop(vq(v).insert("vit_enc_patch_size".into(), 24.into()))), "vit_enc_patch_size = 24"),
        (
            Box::new(|v| drop(vq(v).insert("pixel_decoder".into(), serde_json::json!({"codebook_size": 512})))),
            "pixel_decoder.codebook_size = 512",
        ),
        (
            Box::new(|v| drop(vq(v).insert("pixel_decoder".into(), serde_json::json!({"channel_mult": [1, 2]})))),
            "pixel_decoder.channel_mult has 2 levels",
        ),
        (Box::new(|v| drop(vq(v).remove("num_latent_tokens"))), "num_latent_tokens"),
        (Box::new(|v| drop(vq(v).insert("token_size".into(), "twelve".into()))), "at key \"token_size\""),
    ];
    for (edit, needle) in cases {
        let msg = config_message(with(edit));
        assert!(msg.contains(needle), "{msg:?} does not mention {needle:?}");
    }
}

#[test]
fn from_path_names_the_file() {
    let dir = std::env::temp_dir().join(format!("marvel-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("config.json");
    std::fs::write(&good, L32).unwrap();
    assert_eq!(TitokConfig::from_path(&good).unwrap().num_latent_tokens, 32);
    let bad = dir.join("bad.json");
    std::fs::write(&bad, "{\"model\": ").unwrap();
    let msg = config_message(TitokConfig::from_path(&bad));
    assert!(msg.contains("bad.json"), "{msg}");
    let err = TitokConfig::from_path(dir.join("absent.json")).unwrap_err();
    assert_eq!(err.code(), "MARVEL_IO");
    std::fs::remove_dir_all(&dir).ok();
}
