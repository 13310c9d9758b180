//! Sizes of the MaskGIT-VQGAN. The reference hard-codes them in `PretrainedTokenizer` (and, for TiTok's pixel
//! decoder, in `modeling/titok.py`); our fixtures and configs carry them as a `maskgit_vqgan` / `pixel_decoder`
//! object, and a missing key means the released value.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{MarvelError, Result};

/// Sanity bounds of [`MaskgitConfig::validate`]: channels of any level, z_channels and hidden_channels.
pub const MAX_CHANNELS: usize = 16384;
pub const MAX_RES_BLOCKS: usize = 64;
pub const MAX_CODEBOOK_SIZE: usize = 1 << 20;
pub const MAX_IMAGE_CHANNELS: usize = 64;
pub const MAX_RESOLUTION: usize = 4096;
/// Resolution levels (the image is halved between consecutive ones).
pub const MAX_LEVELS: usize = 8;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MaskgitConfig {
    /// Channels of the first (full-resolution) level; level i has `hidden_channels * channel_mult[i]`.
    pub hidden_channels: usize,
    /// One entry per resolution level, shallowest first; the image is halved between consecutive levels.
    pub channel_mult: Vec<usize>,
    /// Residual blocks per level, and in the middle section.
    pub num_res_blocks: usize,
    /// Channels of the latent grid, equal to the codebook's vector size.
    pub z_channels: usize,
    pub codebook_size: usize,
    /// GroupNorm group count (32 in the released model; the reference hard-codes it).
    pub norm_num_groups: usize,
    /// Image channels (RGB).
    pub num_channels: usize,
    /// Image side in pixels.
    pub resolution: usize,
    /// Redundant with `channel_mult.len()`; accepted so a reference config parses, and checked against it
    /// when present (no default, so a shorter `channel_mult` alone stays valid).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub num_resolutions: Option<usize>,
    /// Training-only settings of the reference; inference ignores them.
    pub dropout: f64,
    pub commitment_cost: f64,
}

impl Default for MaskgitConfig {
    /// The released `maskgit-vqgan-imagenet-f16-256` sizes.
    fn default() -> Self {
        Self {
            hidden_channels: 128,
            channel_mult: vec![1, 1, 2, 2, 4],
            num_res_blocks: 2,
            z_channels: 256,
            codebook_size: 1024,
            norm_num_groups: 32,
            num_channels: 3,
            resolution: 256,
            num_resolutions: None,
            dropout: 0.0,
            commitment_cost: 0.25,
        }
    }
}

impl MaskgitConfig {
    /// An 8x8-pixel, 4x4-code model with both levels of the released layout: small enough for tests to run many
    /// images through, deep enough to exercise every block kind.
    #[cfg(test)]
    pub(crate) fn tiny_for_tests() -> Self {
        MaskgitConfig {
            hidden_channels: 8,
            channel_mult: vec![1, 2],
            num_res_blocks: 1,
            z_channels: 4,
            codebook_size: 16,
            norm_num_groups: 4,
            resolution: 8,
            ..MaskgitConfig::default()
        }
    }

    /// Reads the `maskgit_vqgan` object of a config.json value; released sizes when the object is absent.
    pub fn from_config_json(value: &serde_json::Value) -> Result<Self> {
        crate::config::check_known_keys(value)?;
        let cfg = match value.get("maskgit_vqgan") {
            Some(obj) => serde_json::from_value::<Self>(obj.clone()).map_err(|e| {
                // serde_json does not say which field failed; retrying the keys one at a time finds it.
                let key = obj.as_object().and_then(|m| {
                    m.iter().find(|(k, v)| {
                        serde_json::from_value::<Self>(serde_json::json!({ k.as_str(): v })).is_err()
                    })
                });
                match key {
                    Some((k, _)) => MarvelError::Config(format!("config.json: maskgit_vqgan.{k}: {e}")),
                    None => MarvelError::Config(format!("config.json: maskgit_vqgan: {e}")),
                }
            })?,
            None => Self::default(),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads and validates `path` (a config.json), as [`Self::from_config_json`].
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = crate::config::read_text(path)?;
        let value: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| MarvelError::Config(format!("{}: {e}", path.display())))?;
        Self::from_config_json(&value).map_err(|e| match e {
            MarvelError::Config(m) => MarvelError::Config(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    pub fn num_levels(&self) -> usize {
        self.channel_mult.len()
    }

    /// Channels of level `i` (0 = full resolution).
    pub fn level_channels(&self, i: usize) -> usize {
        self.hidden_channels * self.channel_mult[i]
    }

    /// Channels of the deepest level and of the middle section.
    pub fn deepest_channels(&self) -> usize {
        self.level_channels(self.num_levels() - 1)
    }

    /// Side of the latent grid: the image is halved between consecutive levels (16 for 256 px, 5 levels).
    pub fn latent_side(&self) -> usize {
        self.resolution >> (self.num_levels() - 1)
    }

    /// Parameters of the decoder half (what TiTok's two-stage models carry as `pixel_decoder`), counted from the
    /// sizes alone; [`Self::validate`] first.
    pub fn decoder_parameter_count(&self) -> u64 {
        let conv = |c_in: usize, c_out: usize, k: usize, bias: bool| {
            (c_out * c_in * k * k + if bias { c_out } else { 0 }) as u64
        };
        // GroupNorm, 3x3 conv, GroupNorm, 3x3 conv, and a 1x1 shortcut on the output when the width changes.
        let res_block = |c_in: usize, c_out: usize| {
            (2 * c_in + 2 * c_out) as u64
                + conv(c_in, c_out, 3, false)
                + conv(c_out, c_out, 3, false)
                + if c_in != c_out { conv(c_out, c_out, 1, false) } else { 0 }
        };
        let (levels, c_mid, blocks) = (self.num_levels(), self.deepest_channels(), self.num_res_blocks);
        let mut n = conv(self.z_channels, c_mid, 3, true) + blocks as u64 * res_block(c_mid, c_mid);
        for i in 0..levels {
            let (mut c_in, c_out) = (self.level_channels((i + 1).min(levels - 1)), self.level_channels(i));
            for _ in 0..blocks {
                n += res_block(c_in, c_out);
                c_in = c_out;
            }
            if i != 0 {
                n += conv(c_out, c_out, 3, true);
            }
        }
        let c_first = self.level_channels(0);
        n + 2 * c_first as u64 + conv(c_first, self.num_channels, 3, true)
    }

    /// Checks that the sizes describe a buildable model; every message names the offending key.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(MarvelError::Config(format!("maskgit_vqgan: {m}")));
        if self.channel_mult.is_empty() {
            return bad("channel_mult must not be empty".into());
        }
        if let Some(n) = self.num_resolutions {
            if n != self.channel_mult.len() {
                return bad(format!(
                    "num_resolutions = {n} but channel_mult {:?} has {} levels",
                    self.channel_mult,
                    self.channel_mult.len()
                ));
            }
        }
        for (key, v) in [
            ("hidden_channels", self.hidden_channels),
            ("num_res_blocks", self.num_res_blocks),
            ("z_channels", self.z_channels),
            ("codebook_size", self.codebook_size),
            ("norm_num_groups", self.norm_num_groups),
            ("num_channels", self.num_channels),
            ("resolution", self.resolution),
        ] {
            if v == 0 {
                return bad(format!("{key} must be positive"));
            }
        }
        if let Some(i) = self.channel_mult.iter().position(|&m| m == 0) {
            return bad(format!("channel_mult[{i}] must be positive"));
        }
        // Sanity bounds, checked before any size is multiplied or allocated: generous multiples of the released
        // model's values (in parentheses), so that only typos and corrupt files fail.
        for (key, v, max, released) in [
            ("hidden_channels", self.hidden_channels, MAX_CHANNELS, 128),
            ("num_res_blocks", self.num_res_blocks, MAX_RES_BLOCKS, 2),
            ("z_channels", self.z_channels, MAX_CHANNELS, 256),
            ("codebook_size", self.codebook_size, MAX_CODEBOOK_SIZE, 1024),
            ("num_channels", self.num_channels, MAX_IMAGE_CHANNELS, 3),
            ("resolution", self.resolution, MAX_RESOLUTION, 256),
            ("channel_mult length", self.channel_mult.len(), MAX_LEVELS, 5),
        ] {
            if v > max {
                return bad(format!("{key} = {v} is above the limit of {max} (the released model uses {released})"));
            }
        }
        if let Some(i) = self.channel_mult.iter().position(|&m| m > MAX_CHANNELS / self.hidden_channels) {
            return bad(format!(
                "level {i} has hidden_channels {} x channel_mult {} channels, above the limit of {MAX_CHANNELS} (the \
                 released model's deepest level has 512)",
                self.hidden_channels, self.channel_mult[i]
            ));
        }
        // Every level's channel count passes through a GroupNorm.
        for i in 0..self.num_levels() {
            let c = self.level_channels(i);
            if c % self.norm_num_groups != 0 {
                return bad(format!(
                    "level {i} has {c} channels (hidden_channels {} x channel_mult {}), not divisible by norm_num_groups {}",
                    self.hidden_channels, self.channel_mult[i], self.norm_num_groups
                ));
            }
        }
        let down = 1usize.checked_shl(self.num_levels() as u32 - 1).unwrap_or(0);
        if down == 0 || self.resolution % down != 0 {
            return bad(format!(
                "resolution {} is not divisible by 2^{} (one halving between each of the {} levels)",
                self.resolution,
                self.num_levels() - 1,
                self.num_levels()
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!("dropout {} is outside [0, 1)", self.dropout));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_released_sizes() {
        let cfg = MaskgitConfig::default();
        cfg.validate().unwrap();
        assert_eq!(cfg.latent_side(), 16);
        assert_eq!(cfg.deepest_channels(), 512);
        // A config.json without the object falls back to them; a partial object fills the gaps.
        let v = serde_json::json!({"model": {}});
        assert_eq!(MaskgitConfig::from_config_json(&v).unwrap(), cfg);
        let v = serde_json::json!({"maskgit_vqgan": {"hidden_channels": 8, "norm_num_groups": 8}});
        let small = MaskgitConfig::from_config_json(&v).unwrap();
        assert_eq!((small.hidden_channels, small.z_channels), (8, 256));
        let v = serde_json::json!({"maskgit_vqgan": {"channel_mult": [1, 2, 4]}});
        assert_eq!(MaskgitConfig::from_config_json(&v).unwrap().latent_side(), 64);
    }

    #[test]
    fn inconsistent_sizes_are_config_errors() {
        let cases = [
            (serde_json::json!({"hidden_channels": 8}), "not divisible by norm_num_groups 32"),
            (serde_json::json!({"num_resolutions": 4}), "num_resolutions = 4"),
            (serde_json::json!({"resolution": 100}), "resolution 100"),
            (serde_json::json!({"channel_mult": []}), "channel_mult must not be empty"),
            (serde_json::json!({"z_channels": 0}), "z_channels must be positive"),
            (serde_json::json!({"num_res_blocks": 1_000_000_000}), "num_res_blocks = 1000000000 is above the limit"),
            (serde_json::json!({"hidden_channels": 65536}), "hidden_channels = 65536 is above the limit of 16384"),
            (serde_json::json!({"channel_mult": [1, 2, 4096]}), "level 2 has hidden_channels 128 x channel_mult 4096"),
            (serde_json::json!({"channel_mult": [1, 1, 1, 1, 1, 1, 1, 1, 1], "resolution": 512}), "channel_mult length = 9 is above"),
            (serde_json::json!({"resolution": 1 << 20}), "resolution = 1048576 is above the limit of 4096"),
        ];
        for (obj, msg) in cases {
            let err = MaskgitConfig::from_config_json(&serde_json::json!({ "maskgit_vqgan": obj })).unwrap_err();
            assert_eq!(err.code(), "MARVEL_CONFIG");
            assert!(err.to_string().contains(msg), "{err}");
        }
        let err = MaskgitConfig::from_config_json(&serde_json::json!({"maskgit_vqgan": {"z_channels": "x"}}));
        assert!(err.unwrap_err().to_string().contains("z_channels"));
    }
}
