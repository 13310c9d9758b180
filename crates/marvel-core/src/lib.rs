//! marvel-core: the MARVEL / TiTok image tokenizer's model math on candle, with no Node dependency.

pub mod error;
pub mod ops;
pub mod runtime;
pub mod tensor;

pub use error::{MarvelError, Result};

#[cfg(test)]
pub(crate) mod testutil;
