//! The journal file's block map: journal block (lblock) → device block.

use crate::error::{corrupt, AtBlock, Result};
use crate::format::{Dinode, Geometry, OnDisk};
use crate::meta_tree::{data_blocks, ReadBlock};

/// Smallest and largest journal the kernel accepts.
pub const MIN_JOURNAL_BYTES: u64 = 8 << 20;
pub const MAX_JOURNAL_BYTES: u64 = 1 << 30;

/// The blocks of a journal, as extents of consecutive device blocks.
///
/// Invariants: extents are in journal order, non-empty, and cover exactly
/// `0..jd_blocks` without holes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalMap {
    /// Block of the journal's dinode.
    pub dinode: u64,
    /// (first device block, length) in journal order.
    extents: Vec<(u64, u32)>,
    jd_blocks: u32,
}

impl JournalMap {
    /// A journal made of one contiguous extent (as mkfs lays them out).
    pub fn contiguous(dinode: u64, first: u64, jd_blocks: u32) -> Self {
        assert!(jd_blocks > 0);
        JournalMap {
            dinode,
            extents: vec![(first, jd_blocks)],
            jd_blocks,
        }
    }

    /// Reads the journal's map from its dinode. Refuses journals with
    /// holes, sizes that are not whole blocks or outside 8 MiB..1 GiB.
    pub fn load(geom: &Geometry, dinode_addr: u64, fs_blocks: u64, reader: &dyn ReadBlock) -> Result<Self> {
        let mut block = vec![0u8; geom.bsize as usize];
        reader.read_block(dinode_addr, &mut block)?;
        let dinode = Dinode::decode(&block).at_block(dinode_addr)?;
        dinode.check_addr(dinode_addr).at_block(dinode_addr)?;
        let what = || format!("journal inode {dinode_addr}");
        if !dinode.is_reg() {
            return corrupt(what(), "not a regular file");
        }
        if dinode.size % geom.bsize as u64 != 0 {
            return corrupt(what(), format!("size {} is not a whole number of blocks", dinode.size));
        }
        if !(MIN_JOURNAL_BYTES..=MAX_JOURNAL_BYTES).contains(&dinode.size) {
            return corrupt(what(), format!("size {} is outside 8 MiB..1 GiB", dinode.size));
        }
        let jd_blocks = (dinode.size / geom.bsize as u64) as u32;
        let blocks = data_blocks(geom, &block, jd_blocks as u64, fs_blocks, reader)?;
        let mut extents: Vec<(u64, u32)> = Vec::new();
        for (lblock, b) in blocks.into_iter().enumerate() {
            let Some(b) = b else {
                return corrupt(what(), format!("hole at journal block {lblock}"));
            };
            match extents.last_mut() {
                Some((first, len)) if *first + *len as u64 == b => *len += 1,
                _ => extents.push((b, 1)),
            }
        }
        Ok(JournalMap {
            dinode: dinode_addr,
            extents,
            jd_blocks,
        })
    }

    /// Number of blocks in the journal.
    pub fn jd_blocks(&self) -> u32 {
        self.jd_blocks
    }

    /// The device block of journal block `lblock`.
    pub fn block(&self, lblock: u32) -> u64 {
        assert!(lblock < self.jd_blocks, "journal block {lblock} of {}", self.jd_blocks);
        let mut rest = lblock;
        for &(first, len) in &self.extents {
            if rest < len {
                return first + rest as u64;
            }
            rest -= len;
        }
        unreachable!("extents cover 0..jd_blocks")
    }

    /// The longest run of consecutive device blocks starting at `lblock`,
    /// capped at `max`: (device block, length).
    pub fn run(&self, lblock: u32, max: u32) -> (u64, u32) {
        assert!(lblock < self.jd_blocks);
        let mut rest = lblock;
        for &(first, len) in &self.extents {
            if rest < len {
                return (first + rest as u64, (len - rest).min(max));
            }
            rest -= len;
        }
        unreachable!("extents cover 0..jd_blocks")
    }

    /// Whether device block `block` belongs to the journal.
    pub fn contains_device_block(&self, block: u64) -> bool {
        self.extents
            .iter()
            .any(|&(first, len)| (first..first + len as u64).contains(&block))
    }

    /// Journal block after `lblock`, wrapping.
    pub fn next(&self, lblock: u32) -> u32 {
        if lblock + 1 == self.jd_blocks {
            0
        } else {
            lblock + 1
        }
    }

    /// Distance from `from` forward to `to`, wrapping.
    pub fn distance(&self, from: u32, to: u32) -> u32 {
        if to >= from {
            to - from
        } else {
            self.jd_blocks - from + to
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_and_blocks_follow_extents() {
        let map = JournalMap {
            dinode: 1,
            extents: vec![(100, 3), (200, 2)],
            jd_blocks: 5,
        };
        assert_eq!((0..5).map(|l| map.block(l)).collect::<Vec<_>>(), vec![100, 101, 102, 200, 201]);
        assert_eq!(map.run(1, 10), (101, 2));
        assert_eq!(map.run(3, 1), (200, 1));
        assert_eq!(map.next(4), 0);
        assert_eq!(map.distance(3, 1), 3);
        assert_eq!(map.distance(1, 3), 2);
    }
}
