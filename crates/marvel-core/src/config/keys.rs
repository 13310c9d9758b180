//! Which keys a `config.json` may hold. serde ignores a key it does not know, so a misspelled
//! `vit_enc_widht` would silently fall back to a default; every object marvel reads is therefore checked against
//! the keys marvel reads (taken from the serde structs themselves) plus the keys the reference's configs carry
//! that marvel does not need (bytedance/1d-tokenizer and MDQ `configs/**/*.yaml`, which its checkpoints'
//! `config.json` mirror). Sections only a training run reads (`experiment`, `losses`, `optimizer`,
//! `lr_scheduler`, `training`, `dataset.params`, `model.generator`, `model.maskgen`) are passed through unchecked:
//! the trainer validates its own.

use serde::de::{self, DeserializeOwned, Deserializer, Visitor};
use serde_json::Value;

use super::{ConfigFile, DatasetSection, ModelSection, PreprocessingSection, VqModelSection};
use crate::error::{MarvelError, Result};
use crate::model::maskgit::MaskgitConfig;

/// Keys of the reference's configs that marvel does not read, per checked object.
/// (`maskgit_vqgan` is marvel's own: a standalone MaskGIT-VQGAN's sizes.)
const REFERENCE_TOP_LEVEL: &[&str] =
    &["experiment", "losses", "optimizer", "lr_scheduler", "training", "maskgit_vqgan"];
const REFERENCE_MODEL: &[&str] = &["generator", "maskgen"];
/// `pretrained_tokenizer_weight` (stage-2 training), `clustering_vq` (TA-TiTok / MaskGen VQ), `scale_factor`
/// (VAE), `text_embed_dim` / `text_context_length` (MaskGen), `finetune_multi_depth` (MDQ's stage 1).
const REFERENCE_VQ_MODEL: &[&str] = &[
    "pretrained_tokenizer_weight",
    "clustering_vq",
    "scale_factor",
    "text_embed_dim",
    "text_context_length",
    "finetune_multi_depth",
];
const REFERENCE_DATASET: &[&str] = &["params"];
const REFERENCE_PREPROCESSING: &[&str] = &["resize_shorter_edge", "random_crop", "random_flip", "res_ratio_filtering"];

/// The checked objects: where they sit, and the keys they may hold.
fn checked_sections() -> [(&'static str, Vec<&'static str>); 7] {
    let known = |marvel: &'static [&'static str], reference: &[&'static str]| {
        marvel.iter().chain(reference).copied().collect::<Vec<_>>()
    };
    [
        ("", known(fields_of::<ConfigFile>(), REFERENCE_TOP_LEVEL)),
        ("model", known(fields_of::<ModelSection>(), REFERENCE_MODEL)),
        ("model.vq_model", known(fields_of::<VqModelSection>(), REFERENCE_VQ_MODEL)),
        ("model.vq_model.pixel_decoder", known(fields_of::<MaskgitConfig>(), &[])),
        ("dataset", known(fields_of::<DatasetSection>(), REFERENCE_DATASET)),
        ("dataset.preprocessing", known(fields_of::<PreprocessingSection>(), REFERENCE_PREPROCESSING)),
        ("maskgit_vqgan", known(fields_of::<MaskgitConfig>(), &[])),
    ]
}

/// Refuses every key of a checked object that neither marvel nor the reference defines, naming its full path
/// and the nearest known key. All unknown keys are reported at once.
pub fn check_known_keys(config: &Value) -> Result<()> {
    let mut problems = Vec::new();
    for (path, known) in checked_sections() {
        let pointer = if path.is_empty() { String::new() } else { format!("/{}", path.replace('.', "/")) };
        let object = config.pointer(&pointer);
        let Some(Value::Object(object)) = object else { continue };
        for key in object.keys().filter(|k| !known.contains(&k.as_str())) {
            let full = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
            problems.push(match nearest(key, &known) {
                Some(near) => format!("unknown key {full}; did you mean {near}?"),
                None => format!("unknown key {full} (known keys here: {})", known.join(", ")),
            });
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(MarvelError::Config(problems.join("; ")))
    }
}

/// The known key closest to `key` by edit distance (a swap of neighbours counts as one edit), if it is close
/// enough to be a typo: at most 2 edits, or a fifth of the key's length for long keys.
pub fn nearest<'a>(key: &str, known: &[&'a str]) -> Option<&'a str> {
    let limit = 2.max(key.chars().count() / 5);
    let distances = known.iter().map(|k| (edit_distance(key, k), *k));
    distances.filter(|(d, _)| *d <= limit).min_by_key(|(d, _)| *d).map(|(_, k)| k)
}

/// Optimal string alignment distance (Levenshtein plus adjacent transpositions), case-insensitive.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.to_lowercase().chars().collect();
    let b: Vec<char> = b.to_lowercase().chars().collect();
    let w = b.len() + 1;
    let mut d = vec![0usize; (a.len() + 1) * w];
    for i in 0..=a.len() {
        for j in 0..=b.len() {
            d[i * w + j] = if i == 0 || j == 0 {
                i + j
            } else {
                let cost = usize::from(a[i - 1] != b[j - 1]);
                let mut best = (d[(i - 1) * w + j] + 1).min(d[i * w + j - 1] + 1).min(d[(i - 1) * w + j - 1] + cost);
                if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                    best = best.min(d[(i - 2) * w + j - 2] + 1);
                }
                best
            };
        }
    }
    d[a.len() * w + b.len()]
}

/// The field names serde's derive gives a struct: it passes them to `deserialize_struct`, which this
/// deserializer records and then fails. Keeps the list of keys marvel reads in one place, the struct itself.
pub(crate) fn fields_of<T: DeserializeOwned>() -> &'static [&'static str] {
    struct Fields(&'static [&'static str]);
    impl<'de> Deserializer<'de> for &mut Fields {
        type Error = de::value::Error;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> std::result::Result<V::Value, Self::Error> {
            Err(de::Error::custom("not a struct"))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> std::result::Result<V::Value, Self::Error> {
            self.0 = fields;
            Err(de::Error::custom("fields recorded"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option unit
            unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
        }
    }
    let mut fields = Fields(&[]);
    let _ = T::deserialize(&mut fields);
    fields.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_come_from_the_structs() {
        let vq = fields_of::<VqModelSection>();
        assert!(vq.contains(&"vit_enc_width") && vq.contains(&"pixel_decoder") && vq.contains(&"entropy_gamma"));
        let mg = fields_of::<MaskgitConfig>();
        assert!(mg.contains(&"channel_mult") && mg.contains(&"num_resolutions"), "{mg:?}");
        assert_eq!(fields_of::<ConfigFile>(), ["model", "dataset"]);
    }

    #[test]
    fn nearest_finds_typos_only() {
        let known = ["vit_enc_width", "vit_dec_width", "vit_enc_num_heads", "crop_size"];
        assert_eq!(nearest("vit_enc_widht", &known), Some("vit_enc_width"));
        assert_eq!(nearest("vit_enc_wdth", &known), Some("vit_enc_width"));
        assert_eq!(nearest("Crop_Size", &known), Some("crop_size"));
        assert_eq!(nearest("learning_rate", &known), None);
        assert_eq!(edit_distance("ab", "ba"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
