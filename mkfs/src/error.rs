//! Why mkfs.rgfs refused or failed. Every message is one line that says what
//! is wrong and, where it helps, what to do.

/// Errors of [`make_filesystem`](crate::make_filesystem).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An option is invalid on its own.
    #[error("{0}")]
    Invalid(String),
    /// The device cannot hold the filesystem asked for.
    #[error("{0}")]
    TooSmall(String),
    /// Reading or writing the device failed; the device may be partly written.
    #[error("{0}")]
    Device(#[from] rgfs_block::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn invalid(msg: impl Into<String>) -> Self {
        Error::Invalid(msg.into())
    }

    pub(crate) fn too_small(msg: impl Into<String>) -> Self {
        Error::TooSmall(msg.into())
    }
}
