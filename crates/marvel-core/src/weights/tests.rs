use super::*;
use crate::error::MarvelError;
use std::collections::HashMap;
use std::path::PathBuf;

/// A scratch folder unique to this test process and name, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        // Tests run in parallel threads and several may ask for the same name.
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("marvel-weights-{}-{name}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
    fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

/// The toy model: `a` (2, 3) and `b.c` (4), both float.
struct Toy {
    a: Tensor,
}

fn build_toy(vb: VarBuilder) -> Result<Toy> {
    let a = vb.get((2, 3), "a")?;
    vb.pp("b").get(4, "c")?;
    Ok(Toy { a })
}

fn safetensors_bytes(tensors: &[(&str, Tensor)]) -> Vec<u8> {
    let map: HashMap<String, Tensor> = tensors.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    let dir = Scratch::new("serialize");
    let p = dir.0.join("t.safetensors");
    candle_core::safetensors::save(&map, &p).unwrap();
    std::fs::read(&p).unwrap()
}

fn good_tensors() -> Vec<(&'static str, Tensor)> {
    let dev = Device::Cpu;
    vec![
        ("a", Tensor::arange(0f32, 6., &dev).unwrap().reshape((2, 3)).unwrap()),
        ("b.c", Tensor::ones(4, DType::F32, &dev).unwrap()),
    ]
}

fn load_toy(path: &Path, allow_unexpected: bool) -> Result<(Toy, LoadReport)> {
    let opts = LoadOptions { allow_unexpected, ..Default::default() };
    load_strict(path, &Device::Cpu, &opts, build_toy)
}

fn checkpoint_message(r: Result<(Toy, LoadReport)>) -> String {
    match r {
        Err(MarvelError::Checkpoint(msg)) => msg,
        Err(other) => panic!("expected a checkpoint error, got {other:?}"),
        Ok(_) => panic!("expected a checkpoint error, the load succeeded"),
    }
}

#[test]
fn good_file_loads_and_reports_usage() {
    let dir = Scratch::new("good");
    let p = dir.file("model.safetensors", &safetensors_bytes(&good_tensors()));
    let (toy, report) = load_toy(&p, false).unwrap();
    assert_eq!(toy.a.to_vec2::<f32>().unwrap(), vec![vec![0., 1., 2.], vec![3., 4., 5.]]);
    assert_eq!((report.used, report.unexpected.len()), (2, 0));
}

#[test]
fn half_precision_floats_are_converted() {
    let dir = Scratch::new("f16");
    let ts: Vec<_> = good_tensors().into_iter().map(|(k, v)| (k, v.to_dtype(DType::F16).unwrap())).collect();
    let p = dir.file("model.safetensors", &safetensors_bytes(&ts));
    let (toy, _) = load_toy(&p, false).unwrap();
    assert_eq!(toy.a.dtype(), DType::F32);
}

#[test]
fn corrupt_safetensors_are_checkpoint_errors() {
    let dir = Scratch::new("corrupt");
    let good = safetensors_bytes(&good_tensors());

    let truncated = dir.file("truncated.safetensors", &good[..good.len() - 7]);
    let msg = checkpoint_message(load_toy(&truncated, false));
    assert!(msg.contains("truncated.safetensors") && msg.contains("not a valid safetensors file"), "{msg}");

    let empty = dir.file("empty.safetensors", &[]);
    assert!(checkpoint_message(load_toy(&empty, false)).contains("not a valid safetensors file"));

    // A header whose offsets point past the end of the data.
    let header = br#"{"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,4096]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    bytes.extend_from_slice(&[0u8; 24]);
    let offsets = dir.file("offsets.safetensors", &bytes);
    let msg = checkpoint_message(load_toy(&offsets, false));
    assert!(msg.contains("not a valid safetensors file"), "{msg}");

    // A header length larger than the file.
    let mut bytes = u64::MAX.to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{}");
    let huge = dir.file("huge.safetensors", &bytes);
    assert!(checkpoint_message(load_toy(&huge, false)).contains("not a valid safetensors file"));
}

#[test]
fn mismatches_name_key_and_shapes() {
    let dir = Scratch::new("mismatch");
    let dev = Device::Cpu;

    let wrong_dtype = dir.file(
        "dtype.safetensors",
        &safetensors_bytes(&[
            ("a", Tensor::zeros((2, 3), DType::I64, &dev).unwrap()),
            ("b.c", Tensor::ones(4, DType::F32, &dev).unwrap()),
        ]),
    );
    let msg = checkpoint_message(load_toy(&wrong_dtype, false));
    assert!(msg.contains("a: stored as I64, the model needs F32"), "{msg}");

    let missing = dir.file("missing.safetensors", &safetensors_bytes(&good_tensors()[..1]));
    let msg = checkpoint_message(load_toy(&missing, false));
    assert!(msg.contains("b.c: missing (the model needs shape [4])"), "{msg}");

    let wrong_shape = dir.file(
        "shape.safetensors",
        &safetensors_bytes(&[
            ("a", Tensor::zeros((3, 2), DType::F32, &dev).unwrap()),
            ("b.c", Tensor::zeros(5, DType::F32, &dev).unwrap()),
        ]),
    );
    let msg = checkpoint_message(load_toy(&wrong_shape, false));
    assert!(msg.contains("2 tensor(s) do not match"), "{msg}");
    assert!(msg.contains("a: shape [3, 2] in the checkpoint, the model needs [2, 3]"), "{msg}");
    assert!(msg.contains("b.c: shape [5] in the checkpoint, the model needs [4]"), "{msg}");
}

#[test]
fn unexpected_keys_are_listed() {
    let dir = Scratch::new("unexpected");
    let mut ts = good_tensors();
    ts.push(("extra.weight", Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap()));
    let p = dir.file("model.safetensors", &safetensors_bytes(&ts));
    let msg = checkpoint_message(load_toy(&p, false));
    assert!(msg.contains("1 tensor(s) in the checkpoint are not used") && msg.contains("extra.weight"), "{msg}");
    let (_, report) = load_toy(&p, true).unwrap();
    assert_eq!(report.unexpected, vec!["extra.weight".to_string()]);
}

/// `torch.save(OrderedDict(a=arange(6).view(2, 3), **{"b.c": ones(4)}))`'s `data.pkl` (pickle protocol 2,
/// storages by persistent id), written without torch by a stand-in pickler.
const TOY_PICKLE_HEX: &[&str] = &[
    "800263636f6c6c656374696f6e730a4f726465726564446963740a71002952710128580100000061710263746f7263682e5f",
    "7574696c730a5f72656275696c645f74656e736f725f76320a71032828580700000073746f72616765710463746f7263680a",
    "466c6f617453746f726167650a71055801000000307106580300000063707571074b06747108514b004b024b038671094b03",
    "4b0186710a8968002952710b74710c52710d5803000000622e63710e6803282868046805580100000031710f68074b047471",
    "10514b004b048571114b0185711289680029527113747114527115752e",
];

/// CRC-32 (IEEE), which the zip reader verifies.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// A zip archive with uncompressed entries, the layout `torch.save` writes.
fn stored_zip(entries: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let (mut out, mut central) = (Vec::new(), Vec::new());
    for (name, data) in entries {
        let (crc, len, offset) = (crc32(data), data.len() as u32, out.len() as u32);
        let common = |v: &mut Vec<u8>| {
            v.extend_from_slice(&[20, 0, 0, 0, 0, 0, 0, 0, 0, 0]); // version, flags, method 0, time, date
            v.extend_from_slice(&crc.to_le_bytes());
            v.extend_from_slice(&len.to_le_bytes());
            v.extend_from_slice(&len.to_le_bytes());
            v.extend_from_slice(&(name.len() as u16).to_le_bytes());
            v.extend_from_slice(&0u16.to_le_bytes()); // extra field length
        };
        out.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        common(&mut out);
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(data);
        central.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
        central.extend_from_slice(&20u16.to_le_bytes()); // version made by
        common(&mut central);
        central.extend_from_slice(&[0; 6]); // comment length, disk, internal attributes
        central.extend_from_slice(&0u32.to_le_bytes()); // external attributes
        central.extend_from_slice(&offset.to_le_bytes());
        central.extend_from_slice(name.as_bytes());
    }
    let (cd_offset, cd_len, n) = (out.len() as u32, central.len() as u32, entries.len() as u16);
    out.extend_from_slice(&central);
    out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    out.extend_from_slice(&[0; 4]); // disk numbers
    out.extend_from_slice(&n.to_le_bytes());
    out.extend_from_slice(&n.to_le_bytes());
    out.extend_from_slice(&cd_len.to_le_bytes());
    out.extend_from_slice(&cd_offset.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out
}

/// The toy state dict as `torch.save` writes it; `b_values` is the storage behind `b.c` (4 values).
fn toy_pytorch_bytes(b_values: &[f32]) -> Vec<u8> {
    toy_pytorch_bytes_with(b_values, |hex| hex)
}

/// [`toy_pytorch_bytes`] with its pickle (as hex) edited by `edit`.
fn toy_pytorch_bytes_with(b_values: &[f32], edit: impl FnOnce(String) -> String) -> Vec<u8> {
    let hex: String = edit(TOY_PICKLE_HEX.concat());
    let pickle: Vec<u8> =
        (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect();
    let f32s = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    stored_zip(&[
        ("archive/data.pkl", pickle),
        ("archive/data/0", f32s(&[0., 1., 2., 3., 4., 5.])),
        ("archive/data/1", f32s(b_values)),
        ("archive/version", b"3\n".to_vec()),
    ])
}

#[test]
fn pytorch_zip_checkpoints_load() {
    let dir = Scratch::new("pth-good");
    let p = dir.file("pytorch_model.bin", &toy_pytorch_bytes(&[1.; 4]));
    let (toy, report) = load_toy(&p, false).unwrap();
    assert_eq!(toy.a.to_vec2::<f32>().unwrap(), vec![vec![0., 1., 2.], vec![3., 4., 5.]]);
    assert_eq!(report.used, 2);
    // A storage shorter than its tensor is reported with the tensor's name when the file is opened, before
    // anything is allocated for it.
    let p = dir.file("short.bin", &toy_pytorch_bytes(&[1.; 2]));
    let msg = checkpoint_message(Checkpoint::open(&p).map(|_| unreachable!()));
    assert!(msg.contains("b.c: shape [4] of F32 needs more than the 8 bytes of its storage archive/data/1"), "{msg}");
}

#[test]
fn bad_pytorch_files_are_checkpoint_errors() {
    let dir = Scratch::new("pth");
    for (name, bytes) in [
        ("text.bin", b"this is not a torch checkpoint".as_slice()),
        ("empty.bin", b"".as_slice()),
        // The zip local-file magic followed by garbage.
        ("zipish.pth", b"PK\x03\x04garbage garbage garbage".as_slice()),
        // A legacy (pre-1.6) pickle stream: protocol 2 header, not a zip.
        ("legacy.pt", b"\x80\x02\x8a\x0alZ\xfc\x9cF\xf9 j\xa8P\x19.".as_slice()),
    ] {
        let p = dir.file(name, bytes);
        let msg = checkpoint_message(load_toy(&p, false));
        assert!(msg.contains(name) && msg.contains("not a PyTorch zip checkpoint"), "{msg}");
    }
}

#[test]
fn absent_file_is_an_io_error() {
    let dir = Scratch::new("absent");
    let err = load_toy(&dir.0.join("nope.safetensors"), false).err().unwrap();
    assert_eq!(err.code(), "MARVEL_IO");
    assert!(err.to_string().contains("nope.safetensors"));
}

#[test]
fn shape_only_build_records_without_allocating() {
    let (toy, requested) = build_shape_only(DType::F32, &Device::Cpu, build_toy).unwrap();
    assert_eq!(toy.a.dims(), &[2, 3]);
    // A broadcast view: every stride is zero.
    assert_eq!(toy.a.stride(), &[0, 0]);
    let names: Vec<_> = requested.iter().map(|r| (r.name.as_str(), r.shape.clone())).collect();
    assert_eq!(names, vec![("a", vec![2, 3]), ("b.c", vec![4])]);
}

/// Runs the ignored test `name` of this binary in a child process, so that a crash there (a stack overflow, a
/// failed allocation) fails this test instead of killing the whole test run.
fn run_in_child(name: &str) {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--ignored", "--test-threads=1"])
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && text.contains("1 passed"), "{name} in a child process: {}\n{text}", out.status);
}

/// A pickle of `depth` containers nested in one another, as `pickle.dumps` writes `[[[...]]]`, `((( ... )))`
/// or `{None: {None: ...}}`.
fn nested_pickle(kind: char, depth: usize) -> Vec<u8> {
    let mut p = vec![0x80, 2];
    match kind {
        'l' => {
            p.extend(std::iter::repeat_n(b']', depth));
            p.extend(std::iter::repeat_n(b'a', depth - 1));
        }
        't' => {
            p.extend(std::iter::repeat_n(b'(', depth));
            p.extend(std::iter::repeat_n(b't', depth));
        }
        _ => {
            for _ in 0..depth - 1 {
                p.extend([b'}', b'N']);
            }
            p.push(b'}');
            p.extend(std::iter::repeat_n(b's', depth - 1));
        }
    }
    p.push(b'.');
    p
}

#[test]
fn deeply_nested_pickles_fail_cleanly() {
    run_in_child("weights::tests::deeply_nested_pickles_child");
}

#[test]
#[ignore = "run in a child process by deeply_nested_pickles_fail_cleanly"]
fn deeply_nested_pickles_child() {
    let dir = Scratch::new("deep-pickle");
    for (kind, depth) in [('l', 50_000), ('l', 1_000_000), ('t', 50_000), ('d', 50_000), ('l', 101)] {
        let zip = stored_zip(&[("archive/data.pkl", nested_pickle(kind, depth)), ("archive/version", b"3\n".to_vec())]);
        let p = dir.file("pytorch_model.bin", &zip);
        let msg = checkpoint_message(load_toy(&p, false));
        assert!(msg.contains("pytorch_model.bin") && msg.contains("nests deeper than 100 levels"), "{kind} {depth}: {msg}");
    }
    // At the bound the nesting is accepted, and the file is refused for what it is: no state dict.
    let zip = stored_zip(&[("archive/data.pkl", nested_pickle('l', 100)), ("archive/version", b"3\n".to_vec())]);
    let msg = checkpoint_message(load_toy(&dir.file("pytorch_model.bin", &zip), false));
    assert!(msg.contains("no tensors found"), "{msg}");
}

#[test]
fn non_finite_weights_are_refused_naming_the_tensor() {
    let dir = Scratch::new("nan");
    let dev = Device::Cpu;
    for (bad, what) in [(f32::NAN, "NaN"), (f32::INFINITY, "inf"), (f32::NEG_INFINITY, "-inf")] {
        let b = Tensor::new(&[1f32, 1., bad, 1.], &dev).unwrap();
        let p = dir.file("model.safetensors", &safetensors_bytes(&[("a", good_tensors()[0].1.clone()), ("b.c", b.clone())]));
        let msg = checkpoint_message(load_toy(&p, false));
        assert!(msg.contains(&format!("b.c: holds {what} (element 2)")), "{msg}");
        // Also when stored in half precision, and in a PyTorch checkpoint.
        let p = dir.file("half.safetensors", &safetensors_bytes(&[("a", good_tensors()[0].1.clone()), ("b.c", b.to_dtype(DType::F16).unwrap())]));
        assert!(checkpoint_message(load_toy(&p, false)).contains("b.c: holds"));
        let p = dir.file("pytorch_model.bin", &toy_pytorch_bytes(&[1., 1., bad, 1.]));
        let msg = checkpoint_message(load_toy(&p, false));
        assert!(msg.contains(&format!("b.c: holds {what} (element 2)")), "{msg}");
    }
    // Large finite values are fine.
    let b = Tensor::new(&[f32::MAX, f32::MIN, 0., 1e-45], &dev).unwrap();
    let p = dir.file("model.safetensors", &safetensors_bytes(&[("a", good_tensors()[0].1.clone()), ("b.c", b)]));
    load_toy(&p, false).unwrap();
}

#[test]
fn a_config_that_disagrees_with_the_checkpoint_fails_before_allocating() {
    run_in_child("weights::tests::a_config_that_disagrees_child");
}

#[test]
#[ignore = "run in a child process by a_config_that_disagrees_with_the_checkpoint_fails_before_allocating"]
fn a_config_that_disagrees_child() {
    use crate::config::TitokConfig;
    use crate::model::titok::Titok;
    let dir = Scratch::new("absurd");
    let json = r#"{"model": {"vq_model": {
        "quantize_mode": "lfq", "token_size": 6, "num_depths": 2, "num_latent_tokens": 4,
        "vit_enc_model_size": "custom", "vit_enc_width": 32, "vit_enc_num_layers": 1, "vit_enc_num_heads": 2,
        "vit_dec_model_size": "custom", "vit_dec_width": 32, "vit_dec_num_layers": 1, "vit_dec_num_heads": 2,
        "vit_enc_patch_size": 16, "vit_dec_patch_size": 16, "is_legacy": true, "finetune_decoder": true,
        "pixel_decoder": {"hidden_channels": 8, "channel_mult": [1, 1, 2, 2, 4], "num_res_blocks": 1,
            "z_channels": 16, "codebook_size": 1024, "norm_num_groups": 8}}},
        "dataset": {"preprocessing": {"crop_size": 256}}}"#;
    crate::init::write_random_model(&dir.0, json, 1).unwrap();
    let weights = dir.0.join("model.safetensors");
    let good = TitokConfig::from_json_str(json).unwrap();
    Titok::load(&good, &weights, &Device::Cpu, &LoadOptions::default()).unwrap();
    // Sizes no machine can allocate (the model reshapes its patch embedding, which would copy 2^40 x 768
    // floats), and layer counts that would build forever. The ViT sizes reach the loader, which compares them with
    // the checkpoint; the pixel decoder's are refused by its config bounds first (the load validates them again, as
    // a config built in code skips parsing). Either way nothing is allocated.
    type Edit = fn(&mut TitokConfig);
    let edits: [(Edit, &str, &str); 5] = [
        (|c| c.encoder.width = 1 << 40, "MARVEL_CHECKPOINT", "latent_tokens: shape [4, 32] in the checkpoint, the model needs [4, 1099511627776]"),
        (|c| c.encoder.num_layers = 1_000_000_000, "MARVEL_CHECKPOINT", "encoder.transformer.1.ln_1.weight: missing"),
        (|c| c.decoder.num_layers = 1_000_000_000, "MARVEL_CHECKPOINT", "decoder.transformer.1.ln_1.weight: missing"),
        (|c| c.pixel_decoder.as_mut().unwrap().num_res_blocks = 1_000_000_000, "MARVEL_CONFIG", "num_res_blocks = 1000000000 is above the limit"),
        (|c| c.pixel_decoder.as_mut().unwrap().hidden_channels = 1 << 40, "MARVEL_CONFIG", "above the limit"),
    ];
    for (edit, code, expected) in edits {
        let mut cfg = good.clone();
        edit(&mut cfg);
        let err = Titok::load(&cfg, &weights, &Device::Cpu, &LoadOptions::default()).err().unwrap();
        assert_eq!(err.code(), code, "{err}");
        assert!(err.to_string().contains(expected), "expected {expected:?} in: {err}");
    }
    // Within the config bounds but not what the checkpoint holds: the loader's comparison refuses it.
    let mut cfg = good.clone();
    cfg.pixel_decoder.as_mut().unwrap().num_res_blocks = 64;
    let err = Titok::load(&cfg, &weights, &Device::Cpu, &LoadOptions::default()).err().unwrap();
    assert_eq!(err.code(), "MARVEL_CHECKPOINT", "{err}");
    assert!(err.to_string().contains("pixel_decoder.mid.1.norm1.weight: missing"), "{err}");
}

/// A safetensors file from a hand-written header and data section.
fn raw_safetensors(header: &str, data: &[u8]) -> Vec<u8> {
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(data);
    bytes
}

#[test]
fn inconsistent_tables_of_contents_are_refused() {
    let dir = Scratch::new("toc");
    let cases = [
        (r#"{"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},"b.c":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}}"#, "overlap"),
        (r#"{"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,20]}}"#, "is 24 bytes"),
        (r#"{"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,"24"]}}"#, "data_offsets is not two byte offsets"),
        (r#"{"a":{"dtype":"F31","shape":[2,3],"data_offsets":[0,24]}}"#, "unknown dtype F31"),
        (r#"{"a":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,24]}}"#, "overflows"),
        (r#"[1, 2]"#, "not a JSON object"),
    ];
    for (header, expected) in cases {
        let p = dir.file("model.safetensors", &raw_safetensors(header, &[0u8; 40]));
        let msg = checkpoint_message(load_toy(&p, false));
        assert!(msg.contains("not a valid safetensors file") && msg.contains(expected), "{expected}: {msg}");
    }
}

#[test]
fn written_files_read_back_in_every_dtype_with_candle_and_here() {
    let dir = Scratch::new("write");
    let dev = Device::Cpu;
    let base = Tensor::arange(0f32, 6., &dev).unwrap().reshape((2, 3)).unwrap();
    let tensors: Vec<(String, Tensor)> = [DType::F32, DType::F16, DType::BF16, DType::F64, DType::U8, DType::U32, DType::I64]
        .iter()
        .map(|&d| (format!("t.{d:?}"), base.to_dtype(d).unwrap()))
        .chain([("strided".to_string(), base.t().unwrap())])
        .collect();
    let specs: Vec<TensorSpec> =
        tensors.iter().map(|(n, t)| TensorSpec { name: n.clone(), shape: t.dims().to_vec(), dtype: t.dtype() }).collect();
    let path = dir.0.join("out.safetensors");
    let mut next = tensors.iter();
    write_safetensors(&path, &specs, |_| Ok(next.next().unwrap().1.clone())).unwrap();
    let by_candle = candle_core::safetensors::load(&path, &dev).unwrap();
    let ours = Checkpoint::open(&path).unwrap();
    for (name, t) in &tensors {
        let want = t.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
        for got in [by_candle[name].clone(), ours.load(name, &dev).unwrap()] {
            assert_eq!((got.dtype(), got.dims()), (t.dtype(), t.dims()), "{name}");
            assert_eq!(got.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap(), want, "{name}");
        }
    }
    // A tensor that is not what its spec says leaves no file behind.
    let bad = dir.0.join("bad.safetensors");
    let err = write_safetensors(&bad, &specs[..1], |_| Ok(base.to_dtype(DType::F16).unwrap())).unwrap_err();
    assert_eq!(err.code(), "MARVEL_INVALID_ARGUMENT");
    assert!(!bad.exists() && !dir.0.join("bad.safetensors.partial").exists());
}

#[test]
fn pytorch_shapes_larger_than_their_storage_fail_before_allocating() {
    run_in_child("weights::tests::pytorch_shapes_larger_than_their_storage_child");
}

#[test]
#[ignore = "run in a child process by pytorch_shapes_larger_than_their_storage_fail_before_allocating"]
fn pytorch_shapes_larger_than_their_storage_child() {
    let dir = Scratch::new("pth-huge");
    // `b.c` declared (2^30, 2^30) with strides (2^30, 1), a C-contiguous 4 EiB tensor over a 16-byte storage:
    // BININT1 4, TUPLE1 becomes BININT 2^30, BININT 2^30, TUPLE2 (and the strides likewise).
    let bytes = toy_pytorch_bytes_with(&[1.; 4], |hex| {
        hex.replacen("4b04857111", "4a000000404a00000040867111", 1).replacen("4b01857112", "4a000000404b01867112", 1)
    });
    let p = dir.file("pytorch_model.bin", &bytes);
    // Opening must refuse it: marvelFromTitok reads every tensor of an opened checkpoint, with no model to check
    // the shapes against.
    let msg = match Checkpoint::open(&p) {
        Err(MarvelError::Checkpoint(msg)) => msg,
        Err(other) => panic!("expected a checkpoint error, got {other:?}"),
        Ok(ckpt) => panic!("opened; reading b.c gives {:?}", ckpt.load("b.c", &Device::Cpu).map(|t| t.dims().to_vec())),
    };
    assert!(msg.contains("b.c: shape [1073741824, 1073741824] of F32 needs more than the 16 bytes"), "{msg}");
    // And a load reports it the same way.
    assert!(checkpoint_message(load_toy(&p, false)).contains("needs more than the 16 bytes"));
}

/// Regression: `check_strict` (what `Tokenizer.inspect` runs) handed zero placeholders for optional buffers, so a
/// model that checks a buffer's values (the MDQ LFQ's `codebook`) refused every checkpoint that carries it.
#[test]
fn a_check_without_data_still_reads_the_buffers_a_model_checks_by_value() {
    let dir = Scratch::new("buffers");
    let mut tensors = good_tensors();
    tensors.push(("buf", Tensor::new(&[1f32, 2., 4.], &Device::Cpu).unwrap()));
    let p = dir.file("model.safetensors", &safetensors_bytes(&tensors));
    let build = |vb: VarBuilder| -> Result<Toy> {
        let toy = build_toy(vb.clone())?;
        if vb.contains_tensor("buf") {
            let buf = vb.get_unchecked_dtype("buf", DType::F32)?.to_vec1::<f32>()?;
            if buf != [1., 2., 4.] {
                return Err(MarvelError::Checkpoint(format!("buf holds {buf:?}")));
            }
        }
        Ok(toy)
    };
    let ckpt = Arc::new(Checkpoint::open(&p).unwrap());
    let (requested, report) = check_strict(ckpt, &LoadOptions::default(), build).unwrap();
    assert_eq!((requested.len(), report.unexpected.len()), (3, 0));
}
