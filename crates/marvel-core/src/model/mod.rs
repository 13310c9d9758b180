//! Model architectures, one folder per model: TiTok (the 1-D tokenizer) and MaskGIT-VQGAN (its stage-1 target
//! tokenizer and two-stage pixel decoder).

pub mod convnext;
pub mod discriminator;
pub mod inception;
pub mod maskgit;
pub mod titok;

/// Weight files looked for in a model folder, in order of preference. The one list: the bindings hand it to
/// TypeScript (`weightFiles()`), where the hub download and the CLI use it too.
pub const WEIGHT_FILES: [&str; 2] = ["model.safetensors", "pytorch_model.bin"];
