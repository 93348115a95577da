//! rgfs: a clustered filesystem on the GFS2 on-disk format.
//!
//! - [`format`]: the on-disk format library (pure encode/decode, no I/O).
//!
//! Later issues add the buffer cache, journal, allocator, inodes,
//! directories, glocks and the FUSE adapter (`mount.rgfs`) to this crate.

pub mod format;
