//! The `BlockDevice` trait and its contract.

use std::sync::Arc;

/// The unit below which rgfs assumes writes are atomic (see
/// [`BlockDevice::write_at`]). Sector-aligned 512-byte writes either happen
/// completely or not at all after a crash; anything larger may be torn at
/// sector boundaries.
pub const SECTOR_SIZE: u64 = 512;

/// Errors of the block layer. Each says which operation failed and where.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The range `[offset, offset + len)` is not inside the device.
    #[error("{op} of {len} bytes at offset {offset} is beyond the end of the device ({size} bytes)")]
    OutOfRange {
        op: &'static str,
        offset: u64,
        len: u64,
        size: u64,
    },
    /// The operating system reported an error.
    #[error("{op} at offset {offset}: {source}")]
    Io {
        op: &'static str,
        offset: u64,
        #[source]
        source: std::io::Error,
    },
    /// The device could not be opened or inspected.
    #[error("{path}: {what}: {source}")]
    Open {
        path: String,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The device refused writes (opened read-only, or failed earlier).
    #[error("device is read-only")]
    ReadOnly,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A byte-addressed storage device of fixed size.
///
/// All methods take `&self` and implementations are `Send + Sync`, so one
/// device can serve several threads. Concurrent writes to overlapping ranges
/// land in an unspecified order; rgfs never issues them (a block has one
/// writer: the holder of its lock).
///
/// The contract, which every implementation keeps and every caller may rely
/// on:
///
/// * **Reads see writes.** `read_at` returns the bytes of the most recent
///   completed `write_at` to each byte, durable or not; never-written bytes
///   read as whatever the medium held (zero for a new sparse file).
/// * **Durability only through `flush`.** A completed `write_at` is *not*
///   durable. When `flush` returns `Ok`, every `write_at` that completed
///   before `flush` was called survives a crash or power loss.
/// * **What a crash may leave.** Writes not covered by a successful flush may
///   be lost, reordered with each other, or torn at [`SECTOR_SIZE`]
///   boundaries. A sector-aligned write of one sector is atomic.
/// * **Errors are final.** After `write_at` or `flush` fails, the state of the
///   written ranges is unknown; callers treat the device as failed for
///   writing (fail-stop) and never retry silently.
/// * **Ranges.** Every range must lie inside `[0, size())`; otherwise the
///   call fails with [`Error::OutOfRange`] and touches nothing.
pub trait BlockDevice: Send + Sync {
    /// The size of the device in bytes. Constant for the life of the handle.
    fn size(&self) -> u64;

    /// Fills `buf` with the bytes at `offset..offset + buf.len()`.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()>;

    /// Writes all of `buf` at `offset`. Not durable until [`flush`](Self::flush).
    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<()>;

    /// Makes every write completed before this call durable.
    fn flush(&self) -> Result<()>;
}

/// Checks that `[offset, offset + len)` lies inside a device of `size` bytes.
/// Implementations call this first so every one reports ranges the same way.
pub fn check_range(op: &'static str, offset: u64, len: usize, size: u64) -> Result<()> {
    let len = len as u64;
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(Error::OutOfRange {
            op,
            offset,
            len,
            size,
        }),
    }
}

macro_rules! forward_block_device {
    ($($ty:ty),*) => {$(
        impl<D: BlockDevice + ?Sized> BlockDevice for $ty {
            fn size(&self) -> u64 { (**self).size() }
            fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> { (**self).read_at(offset, buf) }
            fn write_at(&self, offset: u64, buf: &[u8]) -> Result<()> { (**self).write_at(offset, buf) }
            fn flush(&self) -> Result<()> { (**self).flush() }
        }
    )*};
}
forward_block_device!(&D, Box<D>, Arc<D>);
