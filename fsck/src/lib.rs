//! fsck.rgfs — checks and repairs GFS2 volumes.
//!
//! The check is a sequence of named passes over one [`volume::Volume`];
//! each reports what it finds with the object's identity into a
//! [`report::Report`], which decides from the mode (`-n`, `-y`, preen)
//! whether a repair is made. See `docs/fsck.md`.

pub mod blockmap;
pub mod dir;
pub mod file;
pub mod options;
pub mod report;
pub mod volume;

#[cfg(feature = "populate")]
pub mod populate;
