//! The GFS2 on-disk format: the one place rgfs defines on-disk structures.
//!
//! Everything here is pure: bytes in, values out, and back. No I/O, no
//! locking, no allocation policy. `mkfs.rgfs`, `fsck.rgfs` and the
//! filesystem all read and write the disk through these types.
//!
//! Layouts follow `linux/gfs2_ondisk.h` byte for byte; all integers are
//! big-endian. Each structure has a `Raw*` type (the C layout, checked for
//! size at compile time) and a native type implementing [`OnDisk`], whose
//! `decode` verifies magic, type, format, lengths and checksums before a
//! value exists. `docs/disk-format.md` describes the format in prose.
//!
//! Map of the modules:
//! - [`consts`]: magic, metadata types and formats, flags.
//! - [`checksum`]: the CRC-32 "disk hash" and the log header CRC-32C.
//! - [`meta`]: the metadata header every metadata block starts with; inode
//!   numbers; pointer arrays.
//! - [`geometry`]: sizes derived from the block size (tree capacities,
//!   bitmap capacities).
//! - [`superblock`], [`rgrp`] (rindex, rgrp header, rgrp LVB), [`bitmap`],
//!   [`dinode`], [`dirent`] and [`leaf`] (directories), [`ea`] (extended
//!   attributes), [`log`] (journal), [`files`] (quota, statfs, inum range
//!   records and the other lock value blocks).

pub mod bitmap;
pub mod checksum;
pub mod consts;
pub mod dinode;
pub mod dirent;
pub mod ea;
pub mod error;
pub mod files;
pub mod geometry;
pub mod leaf;
pub mod log;
pub mod meta;
pub mod ondisk;
pub mod rgrp;
pub mod superblock;

#[cfg(test)]
mod proptests;

pub use bitmap::BlockState;
pub use consts::MetaType;
pub use dinode::{Dinode, Timestamp, DINODE_SIZE};
pub use dirent::{Dirent, DirentHeader};
pub use ea::{EaHeader, EaRecord, EaValue};
pub use error::{FormatError, Result};
pub use files::{InodeLvb, InumRange, Quota, QuotaChange, QuotaLvb, StatfsChange};
pub use geometry::Geometry;
pub use leaf::{Leaf, LEAF_HEADER_SIZE};
pub use log::{DescriptorKind, LogDescriptor, LogHeader};
pub use meta::{Inum, RawMetaHeader, META_HEADER_SIZE};
pub use ondisk::OnDisk;
pub use rgrp::{RgrpHeader, RgrpLvb, Rindex};
pub use superblock::Superblock;
