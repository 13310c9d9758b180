//! marvel-core: the MARVEL / TiTok image tokenizer's model math on candle, with no Node dependency.

pub mod config;
pub mod convert;
pub mod device;
pub mod error;
pub mod image;
pub mod init;
pub mod memory;
pub mod metrics;
pub mod model;
pub mod nn;
pub mod ops;
pub mod quantize;
pub mod runtime;
pub mod tensor;
pub mod tokens;
pub mod tokenizer;
pub mod train;
pub mod weights;

pub use error::{MarvelError, Result};

#[cfg(test)]
pub(crate) mod testutil;
