//! `MemDevice`: a device held in memory, for tests and tools.

use std::sync::Mutex;

use crate::device::{check_range, BlockDevice, Result};

/// A device whose bytes live in memory. Every write is immediately "durable"
/// (there is nothing to lose); `flush` only counts calls.
#[derive(Debug)]
pub struct MemDevice {
    bytes: Mutex<Vec<u8>>,
    flushes: Mutex<u64>,
}

impl MemDevice {
    /// A zero-filled device of `size` bytes.
    pub fn new(size: usize) -> Self {
        Self::from_bytes(vec![0; size])
    }

    /// A device holding `bytes`.
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        MemDevice {
            bytes: Mutex::new(bytes),
            flushes: Mutex::new(0),
        }
    }

    /// A copy of the current contents.
    pub fn snapshot(&self) -> Vec<u8> {
        self.bytes.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// How many times `flush` was called.
    pub fn flush_count(&self) -> u64 {
        *self.flushes.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl BlockDevice for MemDevice {
    fn size(&self) -> u64 {
        self.bytes.lock().unwrap_or_else(|e| e.into_inner()).len() as u64
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let bytes = self.bytes.lock().unwrap_or_else(|e| e.into_inner());
        check_range("read", offset, buf.len(), bytes.len() as u64)?;
        let start = offset as usize;
        buf.copy_from_slice(&bytes[start..start + buf.len()]);
        Ok(())
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<()> {
        let mut bytes = self.bytes.lock().unwrap_or_else(|e| e.into_inner());
        check_range("write", offset, buf.len(), bytes.len() as u64)?;
        let start = offset as usize;
        bytes[start..start + buf.len()].copy_from_slice(buf);
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        *self.flushes.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// A sequence of writes reads back like the same writes applied to a
        /// plain vector; out-of-range writes are refused and change nothing.
        #[test]
        fn behaves_like_a_vector(writes in proptest::collection::vec((0u64..5000, proptest::collection::vec(any::<u8>(), 0..200)), 0..50)) {
            let dev = MemDevice::new(4096);
            let mut model = vec![0u8; 4096];
            for (off, data) in writes {
                let fits = off as usize + data.len() <= model.len();
                prop_assert_eq!(dev.write_at(off, &data).is_ok(), fits);
                if fits {
                    model[off as usize..off as usize + data.len()].copy_from_slice(&data);
                }
            }
            prop_assert_eq!(dev.snapshot(), model);
        }
    }
}
