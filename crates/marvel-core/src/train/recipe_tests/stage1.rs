//! The stage-1 recipe through the trainer: proxy codes from the batch or the MaskGIT-VQGAN file.

use candle_core::{DType, Device};
use serde_json::{json, Value};

use super::*;
use crate::train::recipe::RecipeKind;

fn stage1_config(quantizer: Value) -> Value {
    common(legacy_model(quantizer, false), json!({"quantizer_weight": 1.0}), 1e-2)
}

#[test]
fn stage1_trains_every_tensor_through_the_trainer_vq_and_lfq() {
    for (label, quantizer) in [("vq", vq()), ("lfq", lfq())] {
        let mut t = Trainer::create(stage1_config(quantizer), None, 5).unwrap();
        assert_eq!(t.recipe(), RecipeKind::Stage1);
        let n = check_gradients(&mut t, &images(2, 0.0), 2, Some(&codes(2)));
        assert_eq!(n, t.parameters().len(), "{label}: stage 1 trains the whole TiTok");
        let curve = train(&mut t, 8, true);
        println!("stage1 {label}: {n} trainable tensors, loss over 8 steps {curve:?}");
        let (first, last) = (curve[0] + curve[1], curve[6] + curve[7]);
        assert!(last < 0.8 * first, "{label}: the stage-1 loss does not fall: {curve:?}");
    }
}

/// With `model.vq_model.pretrained_tokenizer_weight` the trainer makes the proxy codes itself: a step without
/// codes equals a step given the MaskGIT's codes, bit for bit. Without the key a step needs codes; with a
/// missing file `create` fails, naming the key and the path.
#[test]
fn stage1_proxy_codes_come_from_the_maskgit_file_or_the_batch() {
    let dir = scratch("maskgit");
    let vqgan = write_maskgit(&dir.join("maskgit"));
    let imgs = images(2, 0.0);
    let x = crate::image::images_from_u8_nhwc(&imgs, (2, SIDE, SIDE), &Device::Cpu).unwrap();
    let want: Vec<i32> = crate::train::stage1::proxy_codes(&vqgan, &x)
        .unwrap()
        .to_dtype(DType::I64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<i64>()
        .unwrap()
        .iter()
        .map(|&c| c as i32)
        .collect();

    let mut with_file = stage1_config(vq());
    with_file["model"]["vq_model"]["pretrained_tokenizer_weight"] = json!(dir.join("maskgit").to_str().unwrap());
    let mut own = Trainer::create(with_file.clone(), None, 3).unwrap();
    let mut given = Trainer::create(stage1_config(vq()), None, 3).unwrap();
    for _ in 0..2 {
        let a = own.step(&imgs, 2, None).unwrap();
        let b = given.step(&imgs, 2, Some(&want)).unwrap();
        assert_eq!(a.loss.to_bits(), b.loss.to_bits(), "the MaskGIT's codes are the targets");
    }
    // Codes given with the batch take precedence over the MaskGIT's (a pre-tokenized cache).
    let other = codes(2);
    let a = own.step(&imgs, 2, Some(&other)).unwrap();
    let b = given.step(&imgs, 2, Some(&other)).unwrap();
    assert_eq!(a.loss.to_bits(), b.loss.to_bits());

    let err = given.step(&imgs, 2, None).unwrap_err();
    assert_eq!(err.code(), "MARVEL_INVALID_ARGUMENT");
    assert!(err.to_string().contains("model.vq_model.pretrained_tokenizer_weight"), "{err}");
    assert!(err.to_string().contains("proxyCodes"), "{err}");

    let missing = dir.join("no-such-maskgit.bin");
    with_file["model"]["vq_model"]["pretrained_tokenizer_weight"] = json!(missing.to_str().unwrap());
    let err = Trainer::create(with_file, None, 3).unwrap_err();
    assert_eq!(err.code(), "MARVEL_IO");
    let msg = err.to_string();
    assert!(msg.contains("model.vq_model.pretrained_tokenizer_weight") && msg.contains("no-such-maskgit.bin"), "{msg}");
    std::fs::remove_dir_all(&dir).ok();
}
