//! A device wrapper that counts writes, so that a run which stops on an
//! operational error can say whether it changed the volume (a fact, not a
//! guess from which pass it reached).

use std::sync::atomic::{AtomicU64, Ordering};

use rgfs_block::{BlockDevice, Result};

pub struct Counted<'a> {
    dev: &'a dyn BlockDevice,
    writes: AtomicU64,
}

impl<'a> Counted<'a> {
    pub fn new(dev: &'a dyn BlockDevice) -> Self {
        Counted {
            dev,
            writes: AtomicU64::new(0),
        }
    }

    /// Writes made through this wrapper so far (failed ones included: they
    /// may have changed the device too).
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }
}

impl BlockDevice for Counted<'_> {
    fn size(&self) -> u64 {
        self.dev.size()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.dev.read_at(offset, buf)
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<()> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.dev.write_at(offset, buf)
    }

    fn flush(&self) -> Result<()> {
        self.dev.flush()
    }
}
