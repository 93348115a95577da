//! The block layer of rgfs.
//!
//! [`BlockDevice`] is the only way rgfs touches storage: `mkfs.rgfs`,
//! `fsck.rgfs` and `mount.rgfs` all read and write through it. This crate
//! holds the trait and its implementations. It knows nothing of filesystem
//! structures: it moves bytes at byte offsets.
//!
//! - [`FileDevice`]: a regular file (an image) or a block device node.
//! - [`MemDevice`]: a device in memory, for tests.
//!
//! Later issues add an NBD client, the replicated device and a
//! crash-simulating device here.

mod device;
mod file;
mod mem;

pub use device::{check_range, BlockDevice, Error, Result, SECTOR_SIZE};
pub use file::{Access, FileDevice};
pub use mem::MemDevice;
