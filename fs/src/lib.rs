//! rgfs: a clustered filesystem on the GFS2 on-disk format.
//!
//! - [`format`]: the on-disk format library (pure encode/decode, no I/O).
//! - [`meta_tree`]: walking an inode's metadata tree.
//! - [`journal`]: reading journals: block map, head, replay.
//!
//! Later issues add the buffer cache, journal, allocator, inodes,
//! directories, glocks and the FUSE adapter (`mount.rgfs`) to this crate.

pub mod error;
pub mod format;
pub mod journal;
pub mod meta_tree;

pub use error::{Error, Result};
