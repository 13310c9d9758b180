//! MaskGIT-VQGAN (bytedance/1d-tokenizer `modeling/modules/maskgit_vqgan.py`): the convolutional VQ tokenizer
//! whose 16x16 codes are TiTok's stage-1 targets, and whose decoder is TiTok's two-stage pixel decoder.
//!
//! Numerics follow the reference: GroupNorm eps 1e-6, SiLU, bias-free residual-block convs, the 1x1
//! `nin_shortcut` applied to the block *output*, 2x2 average pooling down, nearest x2 + 3x3 conv up, TF-"same"
//! padding. Weight names follow its checkpoint (`encoder.*`, `decoder.*`, `quantize.embedding.weight`).

mod config;
mod conv;
mod decoder;
mod encoder;
mod norm;
mod pass;
mod quantizer;
mod res_block;
mod rgb;
mod vqgan;
mod winograd;
mod winograd_cache;

pub use config::MaskgitConfig;
pub use decoder::MaskgitDecoder;
pub use encoder::MaskgitEncoder;
pub use quantizer::MaskgitQuantizer;
pub use vqgan::{MaskgitVqgan, RELEASED_WEIGHTS_FILE};
