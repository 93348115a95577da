//! fsck.rgfs — checks and repairs GFS2 volumes.
//!
//! The check is a sequence of named passes over one [`volume::Volume`],
//! driven by [`check::check`]; each reports what it finds with the
//! object's identity into a [`report::Report`], which decides from the
//! mode (`-n`, `-y`, preen) whether a repair is made. See `docs/fsck.md`.
//!
//! Modules, in the order the passes run: [`superblock`], [`system`],
//! [`journals`], [`rgrps`], [`pass1`] (inodes), [`pass1b`] (blocks claimed
//! twice), [`pass2`] (directory entries), [`remake`] (system files put
//! back or made again), [`pass3`] (connectivity),
//! [`pass4`] (link counts), [`pass5`] (bitmaps and counts), [`statfs`].
//! Shared pieces: [`blockmap`] (who uses each block), [`dir`] and [`file`]
//! (reading and editing directories and small files), [`volume`] (the
//! device and the resource groups), [`progress`], [`written`] (counting
//! writes).

pub mod blockmap;
pub mod check;
pub mod dir;
pub mod file;
pub mod journals;
pub mod options;
pub mod pass1;
pub mod pass1b;
pub mod pass2;
pub mod pass3;
pub mod pass4;
pub mod pass5;
pub mod progress;
pub mod remake;
pub mod report;
pub mod rgrps;
pub mod statfs;
pub mod superblock;
pub mod system;
pub mod volume;
pub mod written;

#[cfg(feature = "populate")]
pub mod populate;

pub use check::{check, check_asking, Outcome};
pub use options::{Answer, Asker, Mode, Options};
pub use report::ExitCode;
