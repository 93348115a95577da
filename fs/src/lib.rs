//! rgfs: a clustered filesystem on the GFS2 on-disk format.
//!
//! The folder layout is the architecture, bottom to top:
//! - [`format`]: the on-disk format library (pure encode/decode, no I/O);
//! - [`meta_tree`]: walking an inode's metadata tree on a raw device;
//! - [`cache`]: the metadata buffer cache (verify-on-read, dirty, pinned);
//! - [`journal`]: reading journals (head, replay) and writing them
//!   (transactions, log flush, AIL write-back, tail advance, revokes);
//! - [`alloc`]: resource groups, bitmaps, rgrp choice and goal blocks;
//! - [`core`]: the state of a mounted node and the services the layers
//!   above share (metadata reads, allocation, commits, withdraw);
//! - [`inode`], [`dir`], [`xattr`]: dinodes and block maps, directories,
//!   extended attributes;
//! - [`ops`]: POSIX semantics, independent of FUSE;
//! - [`glock`]: the lock layer (LockModule, the per-glock state machine and
//!   holders, demote);
//! - [`mount`]: options, loading, journal replay at mount;
//! - [`fuse`]: the fuser adapter;
//! - [`cli`]: what the command-line tools share (output, logging).

pub mod alloc;
pub mod cache;
pub mod cli;
pub mod core;
pub mod dir;
pub mod error;
pub mod format;
pub mod fuse;
pub mod glock;
pub mod inode;
pub mod journal;
pub mod meta_tree;
pub mod mount;
pub mod ops;
pub mod xattr;

pub use error::{Error, Result};
