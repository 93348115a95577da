//! Why a structure read from disk was refused.

use super::consts::MetaType;

/// A structure failed verification. Each variant names the structure
/// (`what`) so the message identifies the object without more context; the
/// caller adds the block number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("{what}: need {need} bytes, have {have}")]
    TooShort {
        what: &'static str,
        need: usize,
        have: usize,
    },
    #[error("{what}: bad magic {found:#010x}")]
    BadMagic { what: &'static str, found: u32 },
    #[error("{what}: metadata type {found}, expected {expected:?}")]
    WrongType {
        what: &'static str,
        expected: MetaType,
        found: u32,
    },
    #[error("{what}: format {found}, expected {expected}")]
    WrongFormat {
        what: &'static str,
        expected: u32,
        found: u32,
    },
    #[error("{what}: bad {field}: stored {stored:#010x}, computed {computed:#010x}")]
    BadChecksum {
        what: &'static str,
        field: &'static str,
        stored: u32,
        computed: u32,
    },
    #[error("{what}: bad {field} = {value}: {why}")]
    BadField {
        what: &'static str,
        field: &'static str,
        value: u64,
        why: &'static str,
    },
}

pub type Result<T, E = FormatError> = std::result::Result<T, E>;

/// Shorthand for a [`FormatError::BadField`].
pub(crate) fn bad_field<T>(
    what: &'static str,
    field: &'static str,
    value: impl Into<u64>,
    why: &'static str,
) -> Result<T> {
    Err(FormatError::BadField {
        what,
        field,
        value: value.into(),
        why,
    })
}
