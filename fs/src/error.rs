//! Errors of the rgfs library above the format layer.

use crate::format::FormatError;

/// What went wrong, with the identity of the object involved.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The device failed. Writes after this are refused (fail-stop).
    #[error("I/O error: {0}")]
    Io(#[from] rgfs_block::Error),
    /// A structure read from disk failed verification.
    #[error("block {block}: {source}")]
    Format {
        block: u64,
        #[source]
        source: FormatError,
    },
    /// The structures are individually valid but inconsistent with each
    /// other (a pointer out of range, a journal with holes, ...).
    #[error("{what}: {why}")]
    Corrupt { what: String, why: String },
    /// A POSIX error for the caller (ENOENT, ENOSPC, ...); nothing is wrong
    /// with the filesystem.
    #[error("{}", std::io::Error::from_raw_os_error(*.0))]
    Errno(i32),
    /// The lock layer failed: the lock manager refused or is unreachable,
    /// a glock wait timed out, or a lock-order rule would have been broken.
    /// Nothing on disk is wrong.
    #[error("lock: {0}")]
    Lock(String),
    /// The node withdrew earlier (inconsistency or I/O error) and refuses
    /// to write; the reason was logged when it happened.
    #[error("filesystem withdrawn: {0}")]
    Withdrawn(String),
}

impl Error {
    /// The errno a system call should return for this error: the POSIX
    /// error itself, or EIO for anything that made (or makes) the node
    /// withdraw.
    pub fn errno(&self) -> i32 {
        match self {
            Error::Errno(e) => *e,
            _ => libc::EIO,
        }
    }

    /// Whether this error means the filesystem must stop writing.
    pub fn is_fatal(&self) -> bool {
        !matches!(self, Error::Errno(_))
    }
}

/// Shorthand for a POSIX error result.
pub fn errno<T>(e: i32) -> Result<T> {
    Err(Error::Errno(e))
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Attaches a block number to a format error.
pub trait AtBlock<T> {
    fn at_block(self, block: u64) -> Result<T>;
}

impl<T> AtBlock<T> for std::result::Result<T, FormatError> {
    fn at_block(self, block: u64) -> Result<T> {
        self.map_err(|source| Error::Format { block, source })
    }
}

/// Shorthand for an [`Error::Corrupt`].
pub fn corrupt<T>(what: impl Into<String>, why: impl Into<String>) -> Result<T> {
    Err(Error::Corrupt {
        what: what.into(),
        why: why.into(),
    })
}
