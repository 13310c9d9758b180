//! One error type for the whole core. Every variant maps to a stable code string that the Node binding
//! exposes as `err.code`, so callers can branch on the kind of failure without parsing messages.

use std::path::PathBuf;

pub type Result<T> = std::result::Result<T, MarvelError>;

#[derive(Debug, thiserror::Error)]
pub enum MarvelError {
    /// A caller-supplied value is outside what the operation accepts.
    #[error("{0}")]
    InvalidArgument(String),
    /// Data and shape disagree, or two tensors do not fit together.
    #[error("{0}")]
    ShapeMismatch(String),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// A `config.json` (or a config object) is malformed or inconsistent.
    #[error("{0}")]
    Config(String),
    /// A checkpoint is truncated, corrupt, or does not match the model it is loaded into.
    #[error("{0}")]
    Checkpoint(String),
    /// A GPU was asked for, but this binary has no CUDA or the machine has no usable driver or device.
    #[error("{0}")]
    CudaUnavailable(String),
    /// Data-parallel training: a collective with the other ranks failed (one of them died or left).
    #[error("{0}")]
    Rank(String),
    /// A numeric failure inside candle that is not the caller's fault.
    #[error("tensor operation failed: {0}")]
    Tensor(#[from] candle_core::Error),
}

impl MarvelError {
    /// The stable, documented code for this kind of error (`MARVEL_*`).
    pub fn code(&self) -> &'static str {
        match self {
            MarvelError::InvalidArgument(_) => "MARVEL_INVALID_ARGUMENT",
            MarvelError::ShapeMismatch(_) => "MARVEL_SHAPE_MISMATCH",
            MarvelError::Io { .. } => "MARVEL_IO",
            MarvelError::Config(_) => "MARVEL_CONFIG",
            MarvelError::Checkpoint(_) => "MARVEL_CHECKPOINT",
            MarvelError::CudaUnavailable(_) => "MARVEL_CUDA_UNAVAILABLE",
            MarvelError::Rank(_) => "MARVEL_RANK",
            MarvelError::Tensor(_) => "MARVEL_TENSOR",
        }
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        MarvelError::Io { path: path.into(), source }
    }
}

/// Shorthand constructors that read like the check they report: `bail_invalid!("depth {d} > {max}")`.
#[macro_export]
macro_rules! invalid {
    ($($arg:tt)*) => { $crate::error::MarvelError::InvalidArgument(format!($($arg)*)) };
}

#[macro_export]
macro_rules! shape_mismatch {
    ($($arg:tt)*) => { $crate::error::MarvelError::ShapeMismatch(format!($($arg)*)) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_stable_and_distinct() {
        let errs = [
            MarvelError::InvalidArgument("a".into()),
            MarvelError::ShapeMismatch("b".into()),
            MarvelError::io("/x", std::io::Error::other("c")),
            MarvelError::Config("d".into()),
            MarvelError::Checkpoint("e".into()),
            MarvelError::CudaUnavailable("g".into()),
            MarvelError::Rank("h".into()),
            MarvelError::Tensor(candle_core::Error::Msg("f".into())),
        ];
        let codes: Vec<_> = errs.iter().map(|e| e.code()).collect();
        assert_eq!(
            codes,
            [
                "MARVEL_INVALID_ARGUMENT",
                "MARVEL_SHAPE_MISMATCH",
                "MARVEL_IO",
                "MARVEL_CONFIG",
                "MARVEL_CHECKPOINT",
                "MARVEL_CUDA_UNAVAILABLE",
                "MARVEL_RANK",
                "MARVEL_TENSOR"
            ]
        );
        assert_eq!(errs[2].to_string(), "/x: c");
    }
}
