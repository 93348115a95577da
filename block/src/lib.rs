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
//! - [`RecordingDevice`]: records every write and flush and produces the
//!   images a crash could leave (crash-consistency tests).
//!
//! - [`claim`]: which program may write a volume on this machine (device
//!   claims, and whether it is mounted), shared by mkfs, fsck and mount.
//!
//! Later issues add an NBD client and the replicated device here.

pub mod claim;
mod crash;
mod device;
mod file;
mod mem;

pub use crash::{Fate, Recorded, RecordingDevice, Rng};
pub use device::{check_range, BlockDevice, Error, Result, SECTOR_SIZE};
pub use file::{Access, FileDevice};
pub use mem::MemDevice;
