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
    // A file that reads fine but is not text is a bad config, not an I/O failure.
    let binary = dir.join("binary.json");
    std::fs::write(&binary, b"{\"model\": \xff}").unwrap();
    let msg = config_message(TitokConfig::from_path(&binary));
    assert!(msg.contains("binary.json: not UTF-8 text (invalid byte at offset 10)"), "{msg}");
    let err = crate::model::maskgit::MaskgitConfig::from_file(&binary).unwrap_err();
    assert_eq!(err.code(), "MARVEL_CONFIG");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn misspelled_keys_are_refused_with_the_nearest_known_key() {
    let msg = config_message(with(|v| drop(vq(v).insert("vit_enc_widht".into(), 64.into()))));
    assert_eq!(msg, "unknown key model.vq_model.vit_enc_widht; did you mean vit_enc_width?");
    // Every checked section, every unknown key at once; far-off names list what the section accepts.
    let msg = config_message(with(|v| {
        v["dataset"]["preprocessing"]["crop_szie"] = 256.into();
        v["model"]["vq_modle"] = serde_json::json!({});
        v["datset"] = serde_json::json!({});
        vq(v).insert("pixel_decoder".into(), serde_json::json!({"z_chanels": 64}));
        vq(v).insert("colour".into(), true.into());
    }));
    for needle in [
        "unknown key dataset.preprocessing.crop_szie; did you mean crop_size?",
        "unknown key model.vq_modle; did you mean vq_model?",
        "unknown key datset; did you mean dataset?",
        "unknown key model.vq_model.pixel_decoder.z_chanels; did you mean z_channels?",
        "unknown key model.vq_model.colour (known keys here: codebook_size, token_size,",
    ] {
        assert!(msg.contains(needle), "{msg:?} does not contain {needle:?}");
    }
    let err = crate::model::maskgit::MaskgitConfig::from_config_json(
        &serde_json::json!({"maskgit_vqgan": {"hiden_channels": 8}}),
    )
    .unwrap_err();
    assert_eq!(err.code(), "MARVEL_CONFIG");
    assert!(err.to_string().contains("unknown key maskgit_vqgan.hiden_channels; did you mean hidden_channels?"));
}

#[test]
fn reference_keys_and_training_sections_pass() {
    // The reference's stage-2 training config for TiTok-L-32 and MDQ's stage-1 keys, as their config.json carry them.
    let c = with(|v| {
        let m = vq(v);
        m.insert("pretrained_tokenizer_weight".into(), "maskgit-vqgan-imagenet-f16-256.bin".into());
        m.insert("clustering_vq".into(), false.into());
        m.insert("finetune_multi_depth".into(), true.into());
        v["dataset"]["params"] = serde_json::json!({"num_workers_per_gpu": 12});
        v["dataset"]["preprocessing"]["random_flip"] = true.into();
        v["dataset"]["preprocessing"]["resize_shorter_edge"] = 256.into();
        for section in ["optimizer", "lr_scheduler", "training"] {
            v[section] = serde_json::json!({"anything": {"goes": 1}});
        }
    });
    assert_eq!(c.unwrap().num_latent_tokens, 32);
}

/// The fixtures' configs come from the reference code (with marvel's documented extension keys): none is refused.
#[test]
#[cfg_attr(not(marvel_parity), ignore = "parity fixtures not found at ../shared/parity or $MARVEL_PARITY_DIR")]
fn parity_fixture_configs_load() {
    let root = crate::testutil::parity_dir();
    for case in ["titok_vq_legacy", "titok_vq_nonlegacy", "marvel_lfq", "titok_stage1_grads", "titok_stage2_losses",
                 "marvel_stage1_grads"] {
        TitokConfig::from_path(root.join(case).join("config.json")).unwrap_or_else(|e| panic!("{case}: {e}"));
    }
    crate::model::maskgit::MaskgitConfig::from_file(root.join("maskgit_vqgan/config.json")).unwrap();
}

#[test]
fn absurd_sizes_are_refused_at_parse_time() {
    let custom_enc = |m: &mut serde_json::Map<String, serde_json::Value>, width: u64, layers: u64| {
        m.insert("vit_enc_model_size".into(), "custom".into());
        m.insert("vit_enc_width".into(), width.into());
        m.insert("vit_enc_num_layers".into(), layers.into());
        m.insert("vit_enc_num_heads".into(), 8.into());
    };
    let set = |key: &'static str, value: serde_json::Value| {
        move |v: &mut serde_json::Value| drop(vq(v).insert(key.into(), value))
    };
    let cases: Vec<(Box<dyn FnOnce(&mut serde_json::Value)>, &str)> = vec![
        (
            Box::new(move |v| custom_enc(vq(v), 1_000_000_000, 2)),
            "vit_enc_width = 1000000000 is above the limit of 8192 (the largest released model uses 1024)",
        ),
        (Box::new(move |v| custom_enc(vq(v), 64, 1_000_000_000)), "vit_enc_num_layers = 1000000000 is above"),
        (Box::new(set("num_latent_tokens", 1_000_000_000.into())), "num_latent_tokens = 1000000000 is above"),
        (Box::new(set("codebook_size", (1u64 << 40).into())), "codebook_size = 1099511627776 is above"),
        (Box::new(set("token_size", 100_000.into())), "token_size = 100000 is above"),
        (Box::new(|v| v["dataset"]["preprocessing"]["crop_size"] = 65536.into()), "crop_size = 65536 is above"),
        (Box::new(|v| v["dataset"]["preprocessing"]["crop_size"] = 0.into()), "crop_size must be at least 1"),
        (
            Box::new(|v| {
                v["dataset"]["preprocessing"]["crop_size"] = 2048.into();
                vq(v).insert("vit_dec_patch_size".into(), 8.into());
            }),
            "vit_dec_patch_size = 8 cuts crop_size = 2048 into a 256x256 grid",
        ),
        (Box::new(set("num_latent_tokens", 1e9.into())), "at key \"num_latent_tokens\""),
        (
            Box::new(set("pixel_decoder", serde_json::json!({"num_res_blocks": 1_000_000_000u64}))),
            "num_res_blocks = 1000000000 is above the limit of 64",
        ),
        (
            Box::new(set("pixel_decoder", serde_json::json!({"channel_mult": [1, 1, 2, 2, 1u64 << 60]}))),
            "level 4 has hidden_channels 128 x channel_mult 1152921504606846976 channels, above the limit",
        ),
        (
            Box::new(set("pixel_decoder", serde_json::json!({"num_channels": 4}))),
            "pixel_decoder.num_channels = 4 must be 3",
        ),
        (
            Box::new(|v| {
                custom_enc(vq(v), 96, 2);
                vq(v).insert("vit_enc_num_heads".into(), 7.into());
            }),
            "vit_enc_num_heads = 7 does not divide vit_enc_width = 96",
        ),
    ];
    for (edit, needle) in cases {
        let msg = config_message(with(edit));
        assert!(msg.contains(needle), "{msg:?} does not mention {needle:?}");
    }
}

/// The released and published sizes pass the bounds: TiTok-L/B/S, the vq8k models, 512 px, MARVEL's LFQ.
#[test]
fn released_sizes_are_within_the_bounds() {
    for (enc, dec, tokens, token_size, codebook, crop) in [
        ("large", "large", 32, 12, 4096, 256),
        ("base", "base", 64, 12, 4096, 256),
        ("small", "small", 128, 12, 4096, 256),
        ("small", "large", 256, 64, 8192, 256),
        ("large", "large", 64, 12, 4096, 512),
    ] {
        with(|v| {
            let m = vq(v);
            m.insert("vit_enc_model_size".into(), enc.into());
            m.insert("vit_dec_model_size".into(), dec.into());
            m.insert("num_latent_tokens".into(), tokens.into());
            m.insert("token_size".into(), token_size.into());
            m.insert("codebook_size".into(), codebook.into());
            v["dataset"]["preprocessing"]["crop_size"] = crop.into();
        })
        .unwrap_or_else(|e| panic!("{enc}/{dec} {tokens} tokens: {e}"));
    }
}

/// The count from the sizes equals the elements of every weight the constructors request, for each layout.
#[test]
fn parameter_count_matches_the_built_model() {
    use crate::model::titok::Titok;
    use crate::weights::build_shape_only;
    use candle_core::{DType, Device};
    let configs = [
        with(|v| {
            let m = vq(v);
            for (k, val) in [("vit_enc_model_size", "custom".into()), ("vit_enc_width", 48.into()),
                             ("vit_enc_num_layers", 2.into()), ("vit_enc_num_heads", 4.into()),
                             ("vit_dec_model_size", "custom".into()), ("vit_dec_width", 32.into()),
                             ("vit_dec_num_layers", 1.into()), ("vit_dec_num_heads", 2.into()),
                             ("vit_dec_patch_size", 8.into())] {
                m.insert(k.into(), val);
            }
            m.insert(
                "pixel_decoder".into(),
                serde_json::json!({"hidden_channels": 8, "channel_mult": [1, 2, 2, 4], "num_res_blocks": 1,
                                   "z_channels": 16, "norm_num_groups": 4}),
            );
        }),
        with(|v| {
            let m = vq(v);
            for (k, val) in [("vit_enc_model_size", "custom".into()), ("vit_enc_width", 32.into()),
                             ("vit_enc_num_layers", 1.into()), ("vit_enc_num_heads", 2.into()),
                             ("vit_dec_model_size", "custom".into()), ("vit_dec_width", 64.into()),
                             ("vit_dec_num_layers", 3.into()), ("vit_dec_num_heads", 4.into()),
                             ("is_legacy", false.into()), ("finetune_decoder", false.into())] {
                m.insert(k.into(), val);
            }
        }),
        with(|v| {
            let m = vq(v);
            m.insert("quantize_mode".into(), "lfq".into());
            m.insert("use_l2_norm".into(), false.into());
            m.remove("codebook_size");
            m.insert("num_depths".into(), 3.into());
            m.insert("is_legacy".into(), false.into());
            m.insert("finetune_decoder".into(), false.into());
            m.insert("vit_enc_model_size".into(), "small".into());
            m.insert("vit_dec_model_size".into(), "small".into());
        }),
        Ok(TitokConfig::from_json_str(L32).unwrap()),
    ];
    for cfg in configs {
        let cfg = cfg.unwrap();
        let (_, requested) = build_shape_only(DType::F32, &Device::Cpu, |vb| Titok::new(&cfg, vb)).unwrap();
        let built: u64 = requested.iter().map(|r| r.shape.iter().product::<usize>() as u64).sum();
        assert_eq!(cfg.parameter_count(), built, "{cfg:?}");
    }
    // TiTok-L-32 as released: 2 x 24 large blocks, about 0.64e9 parameters with the pixel decoder.
    let n = TitokConfig::from_json_str(L32).unwrap().parameter_count();
    assert!((600_000_000..700_000_000).contains(&n), "{n}");
}
