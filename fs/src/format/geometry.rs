//! Sizes derived from the block size: pointers per block, the capacity of a
//! metadata tree of each height, bitmap capacities and the superblock address.
//!
//! Invariants:
//! - `heightsize[h]` is the largest file (in bytes) a tree of height `h` can
//!   map; it strictly increases with `h` up to `max_height`, after which it
//!   is `u64::MAX` (no overflow is ever computed).
//! - `jheightsize` is the same for directories, whose data blocks carry a
//!   24-byte header and so hold `jbsize` bytes each.

use super::consts::{MAX_META_HEIGHT, SB_OFFSET_BYTES};
use super::dinode::DINODE_SIZE;
use super::error::Result;
use super::meta::META_HEADER_SIZE;
use super::rgrp::RGRP_HEADER_SIZE;
use super::superblock::check_block_size;

/// Block-size-derived constants of one filesystem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub bsize: u32,
    pub bsize_shift: u32,
    /// Block pointers held in a dinode (`(bsize - 232) / 8`).
    pub diptrs: u32,
    /// Block pointers held in an indirect block (`(bsize - 24) / 8`).
    pub inptrs: u32,
    /// Payload bytes of a directory data (JD) block (`bsize - 24`).
    pub jbsize: u32,
    /// Largest regular-file size mapped by a tree of each height.
    pub heightsize: [u64; MAX_META_HEIGHT as usize + 1],
    /// Largest directory-file size mapped by a tree of each height.
    pub jheightsize: [u64; MAX_META_HEIGHT as usize + 1],
    /// Heights `0..max_height` are usable for regular files.
    pub max_height: u16,
    pub max_jheight: u16,
}

/// Capacity table of a tree: level 0 is stuffed data in the dinode, level 1
/// the pointers in the dinode, each further level multiplies by `inptrs`.
fn height_table(bsize: u64, data_per_block: u64, diptrs: u64, inptrs: u64) -> ([u64; 11], u16) {
    let mut table = [u64::MAX; MAX_META_HEIGHT as usize + 1];
    table[0] = bsize - DINODE_SIZE as u64;
    table[1] = data_per_block * diptrs;
    let mut h = 2;
    while h <= MAX_META_HEIGHT as usize {
        match table[h - 1].checked_mul(inptrs) {
            Some(space) => table[h] = space,
            None => break,
        }
        h += 1;
    }
    // Heights from `h` on cannot be represented; keep them u64::MAX.
    (table, h as u16)
}

impl Geometry {
    /// The geometry for a block size, which must be valid.
    pub fn new(bsize: u32) -> Result<Geometry> {
        let bsize_shift = check_block_size(bsize)?;
        let b = bsize as u64;
        let diptrs = (bsize - DINODE_SIZE as u32) / 8;
        let inptrs = (bsize - META_HEADER_SIZE as u32) / 8;
        let jbsize = bsize - META_HEADER_SIZE as u32;
        let (heightsize, max_height) = height_table(b, b, diptrs as u64, inptrs as u64);
        let (jheightsize, max_jheight) =
            height_table(b, jbsize as u64, diptrs as u64, inptrs as u64);
        Ok(Geometry {
            bsize,
            bsize_shift,
            diptrs,
            inptrs,
            jbsize,
            heightsize,
            jheightsize,
            max_height,
            max_jheight,
        })
    }

    /// The filesystem block holding the superblock.
    pub fn sb_addr(&self) -> u64 {
        SB_OFFSET_BYTES >> self.bsize_shift
    }

    /// Byte offset of a block on the device.
    pub fn byte_offset(&self, block: u64) -> u64 {
        block << self.bsize_shift
    }

    /// The largest content that fits stuffed in a dinode block.
    pub fn max_stuffed(&self) -> u64 {
        self.heightsize[0]
    }

    /// The smallest tree height that maps `size` bytes of a regular file
    /// (`jdata = false`) or a directory (`jdata = true`); `None` if no height
    /// can.
    pub fn height_for_size(&self, size: u64, jdata: bool) -> Option<u16> {
        let (table, max) = if jdata {
            (&self.jheightsize, self.max_jheight)
        } else {
            (&self.heightsize, self.max_height)
        };
        (0..max).find(|&h| table[h as usize] >= size)
    }

    /// Bitmap bytes in a resource group header block.
    pub fn header_bitmap_bytes(&self) -> u32 {
        self.bsize - RGRP_HEADER_SIZE as u32
    }

    /// Bitmap bytes in each further bitmap (RB) block.
    pub fn rb_bitmap_bytes(&self) -> u32 {
        self.bsize - META_HEADER_SIZE as u32
    }

    /// Header plus bitmap blocks needed to map `bitbytes` bitmap bytes:
    /// the minimal `ri_length`, which the kernel insists on.
    pub fn rgrp_meta_blocks(&self, bitbytes: u32) -> u32 {
        let beyond_header = bitbytes.saturating_sub(self.header_bitmap_bytes());
        1 + beyond_header.div_ceil(self.rb_bitmap_bytes())
    }

    /// For bitmap block `i` of a resource group (0 = the header), the byte
    /// offset of its bitmap within the block and the range of bitmap bytes
    /// (relative to the whole rgrp bitmap) it holds.
    pub fn bitmap_block_span(&self, i: u32, bitbytes: u32) -> (usize, std::ops::Range<u32>) {
        let hdr = self.header_bitmap_bytes();
        let (in_block_offset, start, cap) = if i == 0 {
            (RGRP_HEADER_SIZE, 0, hdr)
        } else {
            (META_HEADER_SIZE, hdr + (i - 1) * self.rb_bitmap_bytes(), self.rb_bitmap_bytes())
        };
        let start = start.min(bitbytes);
        let end = start.saturating_add(cap).min(bitbytes);
        (in_block_offset, start..end)
    }

    /// The path through a metadata tree of `height` to logical block `lblock`:
    /// the pointer index at each level, from the dinode down. `None` if the
    /// tree cannot map that block (or `height` is 0).
    pub fn tree_path(&self, lblock: u64, height: u16) -> Option<TreePath> {
        if height == 0 || height > MAX_META_HEIGHT {
            return None;
        }
        let mut path = TreePath {
            index: [0; MAX_META_HEIGHT as usize],
            len: height as usize,
        };
        let mut rest = lblock;
        for level in (1..height as usize).rev() {
            path.index[level] = (rest % self.inptrs as u64) as u32;
            rest /= self.inptrs as u64;
        }
        if rest >= self.diptrs as u64 {
            return None;
        }
        path.index[0] = rest as u32;
        Some(path)
    }

    /// Logical blocks mapped by one pointer at `level` of a tree of `height`
    /// (level 0 is the dinode's pointer array).
    pub fn blocks_per_pointer(&self, level: usize, height: u16) -> u64 {
        (self.inptrs as u64).saturating_pow((height as usize - 1 - level) as u32)
    }
}

/// Pointer indexes from the dinode (level 0) down to the data block's parent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TreePath {
    index: [u32; MAX_META_HEIGHT as usize],
    len: usize,
}

impl TreePath {
    pub fn levels(&self) -> &[u32] {
        &self.index[..self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn height_tables_match_the_kernel() {
        // bsize, diptrs, inptrs, h0..h3 (regular files).
        let cases: [(u32, u32, u32, [u64; 4]); 4] = [
            (4096, 483, 509, [3864, 1_978_368, 1_006_989_312, 512_557_559_808]),
            (2048, 227, 253, [1816, 464_896, 117_618_688, 29_757_528_064]),
            (1024, 99, 125, [792, 101_376, 12_672_000, 1_584_000_000]),
            (512, 35, 61, [280, 17_920, 1_093_120, 66_680_320]),
        ];
        for (bsize, diptrs, inptrs, h) in cases {
            let g = Geometry::new(bsize).unwrap();
            assert_eq!((g.diptrs, g.inptrs), (diptrs, inptrs), "bsize {bsize}");
            assert_eq!(&g.heightsize[..4], &h, "bsize {bsize}");
        }
        let g = Geometry::new(4096).unwrap();
        assert_eq!(g.jheightsize[1], 1_966_776);
        assert_eq!(g.max_height, 6);
        assert!(g.heightsize[..g.max_height as usize].windows(2).all(|w| w[0] < w[1]));
        assert_eq!(g.heightsize[g.max_height as usize], u64::MAX);
    }

    #[test]
    fn height_for_size_picks_the_smallest_tree() {
        let g = Geometry::new(4096).unwrap();
        assert_eq!(g.height_for_size(0, false), Some(0));
        assert_eq!(g.height_for_size(3864, false), Some(0));
        assert_eq!(g.height_for_size(3865, false), Some(1));
        // A 16 MiB journal needs height 2 (as mkfs.gfs2 makes it).
        assert_eq!(g.height_for_size(16 << 20, false), Some(2));
        assert_eq!(g.height_for_size(u64::MAX, false), None);
    }

    #[test]
    fn rgrp_meta_blocks_is_minimal() {
        let g = Geometry::new(4096).unwrap();
        // Observed: 63472 data blocks (15868 bitmap bytes) need header + 3 RB.
        assert_eq!(g.rgrp_meta_blocks(15868), 4);
        assert_eq!(g.rgrp_meta_blocks(1027), 1);
        assert_eq!(g.rgrp_meta_blocks(3968), 1);
        assert_eq!(g.rgrp_meta_blocks(3969), 2);
        let (off, span) = g.bitmap_block_span(0, 15868);
        assert_eq!((off, span), (128, 0..3968));
        let (off, span) = g.bitmap_block_span(3, 15868);
        assert_eq!((off, span), (24, 3968 + 2 * 4072..15868));
    }

    #[test]
    fn tree_paths_index_from_the_top() {
        let g = Geometry::new(4096).unwrap();
        assert_eq!(g.tree_path(0, 1).unwrap().levels(), &[0]);
        assert_eq!(g.tree_path(482, 1).unwrap().levels(), &[482]);
        assert_eq!(g.tree_path(483, 1), None);
        assert_eq!(g.tree_path(509, 2).unwrap().levels(), &[1, 0]);
        assert_eq!(g.tree_path(509 * 483 - 1, 2).unwrap().levels(), &[482, 508]);
        assert_eq!(g.tree_path(509 * 483, 2), None);
        assert_eq!(g.blocks_per_pointer(0, 3), 509 * 509);
    }
}
