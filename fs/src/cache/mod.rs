//! The metadata buffer cache: filesystem blocks held in memory, keyed by
//! block number, verified when read, tracked when dirtied.
//!
//! Only metadata lives here (dinodes, indirect blocks, leaves, hash-table
//! blocks, EA blocks, rgrp headers and bitmaps, system-file blocks). File
//! data goes straight to the device (the kernel's page cache caches it).
//!
//! Invariants:
//! - a block is in `dirty` iff its buffer was modified since the last log
//!   commit; dirty buffers are never evicted and never written home (the
//!   journal writes them first, write-ahead);
//! - a buffer's content is always the newest version of the block: newer
//!   than (or equal to) the journal's copy, which is newer than (or equal to)
//!   the device's home copy;
//! - `bufs.len()` stays below `capacity` except for buffers that may not be
//!   evicted (dirty, or pinned by the journal's AIL); eviction is clean-only.
//! - every buffer read from the device was checked to start with a metadata
//!   header of the type the caller expected (verify-on-read).

use std::collections::HashMap;
use std::sync::Arc;

use rgfs_block::BlockDevice;

use crate::error::{corrupt, Result};
use crate::format::meta::block_type;
use crate::format::MetaType;

/// One cached block.
#[derive(Clone, Debug)]
pub struct Buffer {
    /// The block's bytes. Shared with the journal's AIL snapshot until the
    /// next modification copies it (copy-on-write).
    pub data: Arc<Vec<u8>>,
    /// The glock number whose object this block belongs to (an inode's or
    /// rgrp's block number), for write-back and invalidation on demote.
    pub owner: u64,
    /// Used for eviction: a tick of the last access.
    last_use: u64,
}

/// The cache. Not thread-safe by itself: the filesystem core owns it.
#[derive(Debug)]
pub struct Cache {
    bsize: usize,
    bufs: HashMap<u64, Buffer>,
    /// Blocks modified since the last log commit, in first-modified order.
    dirty: Vec<u64>,
    dirty_set: std::collections::HashSet<u64>,
    pinned: std::collections::HashSet<u64>,
    capacity: usize,
    tick: u64,
    /// Statistics: reads served from memory / from the device.
    pub hits: u64,
    pub misses: u64,
}

impl Cache {
    pub fn new(bsize: u32, capacity: usize) -> Cache {
        assert!(capacity >= 64, "a cache of {capacity} buffers cannot hold one operation");
        Cache {
            bsize: bsize as usize,
            bufs: HashMap::new(),
            dirty: Vec::new(),
            dirty_set: Default::default(),
            pinned: Default::default(),
            capacity,
            tick: 0,
            hits: 0,
            misses: 0,
        }
    }

    pub fn bsize(&self) -> usize {
        self.bsize
    }

    /// Whether `block` is cached.
    pub fn contains(&self, block: u64) -> bool {
        self.bufs.contains_key(&block)
    }

    /// Reads `block` (from memory if cached) and checks that it carries a
    /// metadata header of type `ty` (any of `ty` if several are allowed).
    /// A mismatch is corruption: the caller withdraws.
    pub fn read(&mut self, dev: &dyn BlockDevice, block: u64, ty: &[MetaType], owner: u64) -> Result<&Buffer> {
        self.tick += 1;
        let tick = self.tick;
        if let Some(b) = self.bufs.get_mut(&block) {
            self.hits += 1;
            b.last_use = tick;
            let found = block_type(&b.data);
            if !ty.is_empty() && !found.is_some_and(|t| ty.contains(&t)) {
                return corrupt(format!("block {block}"), format!("cached block is {found:?}, expected {ty:?}"));
            }
            return Ok(self.bufs.get(&block).expect("present"));
        }
        self.misses += 1;
        let mut data = vec![0u8; self.bsize];
        let offset = block
            .checked_mul(self.bsize as u64)
            .filter(|o| o + self.bsize as u64 <= dev.size());
        let Some(offset) = offset else {
            return corrupt(format!("block {block}"), "metadata pointer beyond the end of the device");
        };
        dev.read_at(offset, &mut data)?;
        let found = block_type(&data);
        if !ty.is_empty() && !found.is_some_and(|t| ty.contains(&t)) {
            return corrupt(
                format!("block {block}"),
                format!("expected metadata of type {ty:?}, found {found:?}"),
            );
        }
        self.evict_if_needed();
        self.bufs.insert(block, Buffer { data: Arc::new(data), owner, last_use: tick });
        Ok(self.bufs.get(&block).expect("inserted"))
    }

    /// The cached buffer, if any (no device access, no verification).
    pub fn peek(&self, block: u64) -> Option<&Buffer> {
        self.bufs.get(&block)
    }

    /// Installs a new block (freshly allocated metadata), dirty.
    pub fn create(&mut self, block: u64, data: Vec<u8>, owner: u64) -> &mut Vec<u8> {
        assert_eq!(data.len(), self.bsize);
        self.tick += 1;
        self.evict_if_needed();
        self.bufs.insert(block, Buffer { data: Arc::new(data), owner, last_use: self.tick });
        self.mark_dirty(block);
        Arc::make_mut(&mut self.bufs.get_mut(&block).expect("inserted").data)
    }

    /// Mutable access to a cached block, marking it dirty. The block must
    /// have been read (or created) first.
    pub fn modify(&mut self, block: u64) -> &mut Vec<u8> {
        self.mark_dirty(block);
        let b = self.bufs.get_mut(&block).unwrap_or_else(|| panic!("modifying uncached block {block}"));
        Arc::make_mut(&mut b.data)
    }

    fn mark_dirty(&mut self, block: u64) {
        if self.dirty_set.insert(block) {
            self.dirty.push(block);
        }
    }

    pub fn is_dirty(&self, block: u64) -> bool {
        self.dirty_set.contains(&block)
    }

    /// Number of dirty buffers (the size of the next log commit).
    pub fn dirty_count(&self) -> usize {
        self.dirty.len()
    }

    /// Takes the dirty set for a log commit: (block, snapshot) in the order
    /// first modified. The buffers stay cached and become clean.
    pub fn take_dirty(&mut self) -> Vec<(u64, Arc<Vec<u8>>)> {
        let blocks = std::mem::take(&mut self.dirty);
        self.dirty_set.clear();
        blocks
            .into_iter()
            .filter_map(|b| self.bufs.get(&b).map(|buf| (b, buf.data.clone())))
            .collect()
    }

    /// Drops a buffer (a freed block, or invalidation on demote). A dirty
    /// buffer is dropped from the dirty set too: the caller revokes it.
    pub fn forget(&mut self, block: u64) {
        self.bufs.remove(&block);
        self.pinned.remove(&block);
        if self.dirty_set.remove(&block) {
            self.dirty.retain(|&b| b != block);
        }
    }

    /// Blocks cached for a glock's object.
    pub fn owned_by(&self, owner: u64) -> Vec<u64> {
        self.bufs.iter().filter(|(_, b)| b.owner == owner).map(|(&n, _)| n).collect()
    }

    /// Pins a block: committed to the log but maybe not home yet (in the
    /// journal's AIL); a pinned buffer is never evicted, so the cache knows
    /// every block of an object when its glock is demoted.
    pub fn pin(&mut self, block: u64) {
        self.pinned.insert(block);
    }

    pub fn unpin(&mut self, block: u64) {
        self.pinned.remove(&block);
    }

    /// Keeps only the pins for which `keep` holds.
    pub fn retain_pins(&mut self, keep: impl Fn(u64) -> bool) {
        self.pinned.retain(|&b| keep(b));
    }

    /// Evicts the least recently used clean, unpinned buffers when over
    /// capacity.
    fn evict_if_needed(&mut self) {
        if self.bufs.len() < self.capacity {
            return;
        }
        let mut clean: Vec<(u64, u64)> = self
            .bufs
            .iter()
            .filter(|(n, _)| !self.dirty_set.contains(n) && !self.pinned.contains(n))
            .map(|(&n, b)| (b.last_use, n))
            .collect();
        clean.sort_unstable();
        let drop = (self.capacity / 4).max(1).min(clean.len());
        for &(_, n) in &clean[..drop] {
            self.bufs.remove(&n);
        }
    }

    /// Inserts a clean copy (from the journal's AIL, newer than home).
    pub fn insert_clean(&mut self, block: u64, data: Arc<Vec<u8>>, owner: u64) {
        self.tick += 1;
        self.evict_if_needed();
        self.bufs.insert(block, Buffer { data, owner, last_use: self.tick });
    }

    pub fn len(&self) -> usize {
        self.bufs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bufs.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::meta::init_block;
    use rgfs_block::MemDevice;

    #[test]
    fn verify_on_read_and_dirty_tracking() {
        let dev = MemDevice::new(512 * 100);
        let mut blk = vec![0u8; 512];
        init_block(&mut blk, MetaType::Indirect);
        dev.write_at(512 * 7, &blk).unwrap();
        let mut c = Cache::new(512, 64);
        assert!(c.read(&dev, 7, &[MetaType::Leaf], 0).is_err(), "wrong type must be refused");
        assert!(c.read(&dev, 7, &[MetaType::Indirect], 0).is_ok());
        assert!(c.read(&dev, 8, &[MetaType::Indirect], 0).is_err(), "zero block is not metadata");
        assert!(c.read(&dev, 1000, &[], 0).is_err(), "beyond the device");
        c.modify(7)[100] = 1;
        let snap = c.take_dirty();
        assert_eq!(snap.len(), 1);
        assert_eq!(c.dirty_count(), 0);
        // Copy-on-write: modifying after the snapshot leaves the snapshot alone.
        c.modify(7)[100] = 2;
        assert_eq!(snap[0].1[100], 1);
        assert_eq!(c.peek(7).unwrap().data[100], 2);
    }

    #[test]
    fn eviction_never_drops_dirty_buffers() {
        let dev = MemDevice::new(512 * 400);
        let mut c = Cache::new(512, 64);
        for b in 0..64 {
            let mut blk = vec![0u8; 512];
            init_block(&mut blk, MetaType::Indirect);
            c.create(b, blk, 0);
        }
        for b in 100..300 {
            let mut blk = vec![0u8; 512];
            init_block(&mut blk, MetaType::Indirect);
            dev.write_at(512 * b, &blk).unwrap();
            c.read(&dev, b, &[MetaType::Indirect], 0).unwrap();
        }
        for b in 0..64 {
            assert!(c.contains(b), "dirty block {b} evicted");
        }
    }
}
