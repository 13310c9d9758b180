//! Sizes of the MaskGIT-VQGAN. The reference hard-codes them in `PretrainedTokenizer` (and, for TiTok's pixel
//! decoder, in `modeling/titok.py`); our fixtures and configs carry them as a `maskgit_vqgan` / `pixel_decoder`
//! object, and a missing key means the released value.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{MarvelError, Result};

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
    /// Reads the `maskgit_vqgan` object of a config.json value; released sizes when the object is absent.
    pub fn from_config_json(value: &serde_json::Value) -> Result<Self> {
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
        let text = std::fs::read_to_string(path).map_err(|e| MarvelError::io(path, e))?;
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
