//! Model architectures, one folder per model: TiTok (the 1-D tokenizer) and MaskGIT-VQGAN (its stage-1 target
//! tokenizer and two-stage pixel decoder).

pub mod convnext;
pub mod discriminator;
pub mod maskgit;
pub mod titok;
