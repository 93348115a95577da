//! Block allocation: resource groups, their bitmaps, rgrp choice and goal
//! blocks. This is a pure core: it works on in-memory copies of the rgrp
//! headers and bitmaps and reports which on-disk blocks changed; the
//! filesystem copies those into its (journaled) buffers. No I/O here.
//!
//! Invariants (checked by [`Allocator::check`] and the property test):
//! - for every rgrp, `header.free` equals the FREE bits of `bitmap` and
//!   `header.dinodes` equals its DINODE plus UNLINKED bits (GFS2 counts an
//!   unlinked dinode until it is freed);
//! - a block freed since the last durable commit is never handed out again
//!   before [`Allocator::release_frees`] (the "clone" bitmap keeps it USED):
//!   otherwise a crash could leave the old owner pointing at new contents;
//! - an allocated extent lies inside one rgrp's data blocks and was FREE in
//!   both the bitmap and the clone.

use std::collections::BTreeSet;

use crate::format::bitmap::{self, BlockState};
use crate::format::{Geometry, RgrpHeader, Rindex};

/// One resource group in memory.
#[derive(Clone, Debug)]
pub struct Rgrp {
    pub ri: Rindex,
    pub header: RgrpHeader,
    /// The whole bitmap (`ri.bitbytes` bytes).
    pub bitmap: Vec<u8>,
    /// Bitmap as of the last durable commit for blocks freed since: allocation
    /// searches this one while it exists.
    clone: Option<Vec<u8>>,
    /// Bitmap blocks (0 = header block) changed since the last `take_dirty`.
    dirty_blocks: BTreeSet<u32>,
    /// No block below this index is free in the search map: searches skip
    /// the full prefix instead of rescanning it (0 is always valid).
    first_free_hint: u32,
    header_dirty: bool,
}

impl Rgrp {
    pub fn new(ri: Rindex, header: RgrpHeader, bitmap: Vec<u8>) -> Rgrp {
        assert_eq!(bitmap.len(), ri.bitbytes as usize);
        Rgrp { ri, header, bitmap, clone: None, dirty_blocks: BTreeSet::new(), header_dirty: false, first_free_hint: 0 }
    }

    /// Free, dinode+unlinked counts computed from the bitmap.
    pub fn counted(&self) -> (u32, u32) {
        let c = bitmap::count(&self.bitmap, self.ri.data);
        (c[BlockState::Free as usize], c[BlockState::Dinode as usize] + c[BlockState::Unlinked as usize])
    }

    fn touch(&mut self, geom: &Geometry, index: u32) {
        let byte = index / bitmap::BLOCKS_PER_BYTE;
        let hdr = geom.header_bitmap_bytes();
        let blk = if byte < hdr { 0 } else { 1 + (byte - hdr) / geom.rb_bitmap_bytes() };
        self.dirty_blocks.insert(blk);
        self.header_dirty = true;
    }

    fn set(&mut self, geom: &Geometry, index: u32, state: BlockState) {
        let old = bitmap::get(&self.bitmap, index);
        let counts = |s: BlockState| -> (i64, i64) {
            match s {
                BlockState::Free => (1, 0),
                BlockState::Used => (0, 0),
                BlockState::Unlinked | BlockState::Dinode => (0, 1),
            }
        };
        let (f0, d0) = counts(old);
        let (f1, d1) = counts(state);
        self.header.free = (self.header.free as i64 - f0 + f1) as u32;
        self.header.dinodes = (self.header.dinodes as i64 - d0 + d1) as u32;
        bitmap::set(&mut self.bitmap, index, state);
        if let Some(c) = &mut self.clone {
            // The clone keeps freed blocks USED; anything else mirrors.
            if state != BlockState::Free {
                bitmap::set(c, index, state);
            }
        }
        self.touch(geom, index);
    }

    fn search_map(&self) -> &[u8] {
        self.clone.as_deref().unwrap_or(&self.bitmap)
    }
}

/// A change to copy into the on-disk buffers.
#[derive(Debug, PartialEq, Eq)]
pub struct DirtyRgrp {
    pub rgrp: usize,
    /// Bitmap blocks changed: 0 is the header block.
    pub blocks: Vec<u32>,
}

/// Counts delta for statfs: (free, dinodes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Delta {
    pub free: i64,
    pub dinodes: i64,
}

/// All resource groups of a filesystem.
#[derive(Debug)]
pub struct Allocator {
    pub geom: Geometry,
    pub rgrps: Vec<Rgrp>,
    /// Rgrps with a clone (blocks freed since the last durable commit).
    cloned: BTreeSet<usize>,
    /// Free calls so far (tells a caller whether frees happened meanwhile).
    frees_made: u64,
}

impl Allocator {
    /// `rgrps` must be sorted by address and not overlap.
    pub fn new(geom: Geometry, rgrps: Vec<Rgrp>) -> Allocator {
        assert!(rgrps.windows(2).all(|w| w[0].ri.data_end() <= w[1].ri.addr), "rgrps overlap or unsorted");
        Allocator { geom, rgrps, cloned: BTreeSet::new(), frees_made: 0 }
    }

    /// The rgrp holding data block `block`.
    pub fn rgrp_of(&self, block: u64) -> Option<usize> {
        let i = self.rgrps.partition_point(|r| r.ri.data_end() <= block);
        (i < self.rgrps.len() && self.rgrps[i].ri.contains(block)).then_some(i)
    }

    pub fn state(&self, block: u64) -> Option<BlockState> {
        let r = &self.rgrps[self.rgrp_of(block)?];
        Some(bitmap::get(&r.bitmap, (block - r.ri.data0) as u32))
    }

    pub fn total_free(&self) -> u64 {
        self.rgrps.iter().map(|r| r.header.free as u64).sum()
    }

    pub fn total_data(&self) -> u64 {
        self.rgrps.iter().map(|r| r.ri.data as u64).sum()
    }

    pub fn total_dinodes(&self) -> u64 {
        self.rgrps.iter().map(|r| r.header.dinodes as u64).sum()
    }

    /// Allocates up to `max_len` contiguous blocks (at least one), starting
    /// the search at `goal` and moving through the rgrps from the goal's.
    /// `state` is USED for data and non-dinode metadata, DINODE for an inode
    /// (then `max_len` must be 1). Returns (first block, length) or `None`
    /// when no block is free outside pending frees.
    pub fn alloc(&mut self, goal: u64, max_len: u32, state: BlockState) -> Option<(u64, u32)> {
        assert!(max_len >= 1 && state != BlockState::Free);
        assert!(state != BlockState::Dinode || max_len == 1);
        let n = self.rgrps.len();
        if n == 0 {
            return None;
        }
        let first = self.rgrp_of(goal).unwrap_or_else(|| {
            // A goal outside data blocks (e.g. an rgrp header): the next rgrp.
            self.rgrps.partition_point(|r| r.ri.data_end() <= goal) % n
        });
        for k in 0..n {
            let i = (first + k) % n;
            let r = &self.rgrps[i];
            if r.header.free == 0 {
                continue;
            }
            let start = if k == 0 && r.ri.contains(goal) { (goal - r.ri.data0) as u32 } else { 0 };
            let start = start.max(r.first_free_hint);
            if start >= r.ri.data {
                continue;
            }
            let map = r.search_map();
            let Some(idx) = bitmap::find(map, r.ri.data, start, BlockState::Free) else {
                continue;
            };
            // Extend while free (in both maps) and inside the group.
            let mut len = 1;
            while len < max_len
                && idx + len < r.ri.data
                && bitmap::get(map, idx + len) == BlockState::Free
            {
                len += 1;
            }
            let geom = self.geom.clone();
            let r = &mut self.rgrps[i];
            for j in idx..idx + len {
                debug_assert_eq!(bitmap::get(&r.bitmap, j), BlockState::Free);
                r.set(&geom, j, state);
            }
            if state == BlockState::Dinode {
                r.header.igeneration = r.header.igeneration.wrapping_add(1);
            }
            if idx == r.first_free_hint {
                r.first_free_hint = idx + len;
            }
            return Some((r.ri.data0 + idx as u64, len));
        }
        None
    }

    /// A new formal inode number for a dinode allocated in `block`'s rgrp:
    /// the rgrp's generation counter (never 0), as the kernel does.
    pub fn next_generation(&mut self, block: u64) -> u64 {
        let i = self.rgrp_of(block).expect("dinode inside an rgrp");
        let r = &mut self.rgrps[i];
        if r.header.igeneration == 0 {
            r.header.igeneration = 1;
        }
        r.header_dirty = true;
        r.header.igeneration
    }

    /// Frees `len` blocks from `block` (all in one rgrp). They cannot be
    /// allocated again until [`release_frees`](Self::release_frees).
    /// Returns false (changing nothing) if any block is outside the rgrps or
    /// already free: the caller treats that as corruption.
    pub fn free(&mut self, block: u64, len: u32) -> bool {
        let Some(i) = self.rgrp_of(block) else { return false };
        let r = &self.rgrps[i];
        let idx = (block - r.ri.data0) as u32;
        if idx as u64 + len as u64 > r.ri.data as u64 {
            return false;
        }
        if (idx..idx + len).any(|j| bitmap::get(&r.bitmap, j) == BlockState::Free) {
            return false;
        }
        let geom = self.geom.clone();
        let r = &mut self.rgrps[i];
        if r.clone.is_none() {
            r.clone = Some(r.bitmap.clone());
            self.cloned.insert(i);
        }
        for j in idx..idx + len {
            r.set(&geom, j, BlockState::Free);
        }
        self.frees_made += 1;
        true
    }

    /// How many frees were made so far.
    pub fn frees_made(&self) -> u64 {
        self.frees_made
    }

    /// Changes the state of an allocated block (DINODE <-> UNLINKED).
    pub fn set_state(&mut self, block: u64, state: BlockState) -> bool {
        let Some(i) = self.rgrp_of(block) else { return false };
        let geom = self.geom.clone();
        let r = &mut self.rgrps[i];
        let idx = (block - r.ri.data0) as u32;
        if bitmap::get(&r.bitmap, idx) == BlockState::Free || state == BlockState::Free {
            return false;
        }
        r.set(&geom, idx, state);
        true
    }

    /// Frees made so far are durable: their blocks may be reused.
    pub fn release_frees(&mut self) {
        for i in std::mem::take(&mut self.cloned) {
            self.rgrps[i].clone = None;
            // Freed blocks are now free in the search map.
            self.rgrps[i].first_free_hint = 0;
        }
    }

    pub fn has_pending_frees(&self) -> bool {
        !self.cloned.is_empty()
    }

    /// Rgrps whose header or bitmap changed since the last call.
    pub fn take_dirty(&mut self) -> Vec<DirtyRgrp> {
        let mut out = Vec::new();
        for (i, r) in self.rgrps.iter_mut().enumerate() {
            if r.header_dirty || !r.dirty_blocks.is_empty() {
                let mut blocks: BTreeSet<u32> = std::mem::take(&mut r.dirty_blocks);
                blocks.insert(0);
                r.header_dirty = false;
                out.push(DirtyRgrp { rgrp: i, blocks: blocks.into_iter().collect() });
            }
        }
        out
    }

    /// Blocks in UNLINKED state (dinodes to free at mount).
    pub fn unlinked(&self) -> Vec<u64> {
        let mut out = Vec::new();
        for r in &self.rgrps {
            let mut start = 0;
            while start < r.ri.data {
                match bitmap::find(&r.bitmap, r.ri.data, start, BlockState::Unlinked) {
                    Some(i) if i >= start => {
                        out.push(r.ri.data0 + i as u64);
                        start = i + 1;
                    }
                    _ => break,
                }
            }
        }
        out
    }

    /// Checks the counters against the bitmaps. Returns the first
    /// inconsistent rgrp's description.
    pub fn check(&self) -> Result<(), String> {
        for r in &self.rgrps {
            let (free, dinodes) = r.counted();
            if free != r.header.free || dinodes != r.header.dinodes {
                return Err(format!(
                    "rgrp {}: header says free {} dinodes {}, bitmap has {} and {}",
                    r.ri.addr, r.header.free, r.header.dinodes, free, dinodes
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn allocator(ngroups: u32, data: u32) -> Allocator {
        let geom = Geometry::new(512).unwrap();
        let mut addr = 20u64;
        let mut rgrps = Vec::new();
        for _ in 0..ngroups {
            let ri = Rindex::new(&geom, addr, data);
            let header = RgrpHeader::empty(&ri, 0);
            rgrps.push(Rgrp::new(ri, header, vec![0; ri.bitbytes as usize]));
            addr = ri.data_end() + 3;
        }
        Allocator::new(geom, rgrps)
    }

    #[derive(Clone, Debug)]
    enum Op {
        Alloc { goal: u64, len: u32, dinode: bool },
        Free { pick: usize, len: u32 },
        Unlink { pick: usize },
        Commit,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u64..2000, 1u32..40, any::<bool>()).prop_map(|(goal, len, dinode)| Op::Alloc { goal, len, dinode }),
            3 => (any::<usize>(), 1u32..8).prop_map(|(pick, len)| Op::Free { pick, len }),
            1 => any::<usize>().prop_map(|pick| Op::Unlink { pick }),
            1 => Just(Op::Commit),
        ]
    }

    proptest! {
        /// Against a model (block -> state): allocations never overlap
        /// allocated or pending-free blocks, counts stay exact, extents stay
        /// inside one group, ENOSPC only when nothing usable is free.
        #[test]
        fn allocator_matches_model(ops in prop::collection::vec(op(), 1..200)) {
            let mut a = allocator(3, 256);
            let mut model: HashMap<u64, BlockState> = HashMap::new();
            let mut pending: std::collections::HashSet<u64> = Default::default();
            for op in ops {
                match op {
                    Op::Alloc { goal, len, dinode } => {
                        let (state, len) = if dinode { (BlockState::Dinode, 1) } else { (BlockState::Used, len) };
                        match a.alloc(goal, len, state) {
                            Some((b, n)) => {
                                prop_assert!(n >= 1 && n <= len);
                                let g = a.rgrp_of(b).unwrap();
                                prop_assert_eq!(a.rgrp_of(b + n as u64 - 1), Some(g));
                                for x in b..b + n as u64 {
                                    prop_assert!(!model.contains_key(&x), "block {} allocated twice", x);
                                    prop_assert!(!pending.contains(&x), "pending-free block {} reused", x);
                                    model.insert(x, state);
                                }
                            }
                            None => {
                                let usable: u64 = a.rgrps.iter().map(|r| r.ri.data as u64).sum::<u64>()
                                    - model.len() as u64 - pending.len() as u64;
                                prop_assert_eq!(usable, 0, "ENOSPC with usable blocks");
                            }
                        }
                    }
                    Op::Free { pick, len } => {
                        let mut keys: Vec<u64> = model.keys().copied().collect();
                        keys.sort();
                        if keys.is_empty() { continue; }
                        let b = keys[pick % keys.len()];
                        let run = (0..len as u64).take_while(|k| model.contains_key(&(b + k))
                            && a.rgrp_of(b + k) == a.rgrp_of(b)).count() as u32;
                        prop_assert!(a.free(b, run));
                        for x in b..b + run as u64 {
                            model.remove(&x);
                            pending.insert(x);
                        }
                        prop_assert!(!a.free(b, 1), "double free accepted");
                    }
                    Op::Unlink { pick } => {
                        let dinodes: Vec<u64> = model.iter().filter(|(_, s)| **s == BlockState::Dinode).map(|(b, _)| *b).collect();
                        if dinodes.is_empty() { continue; }
                        let b = dinodes[pick % dinodes.len()];
                        prop_assert!(a.set_state(b, BlockState::Unlinked));
                        model.insert(b, BlockState::Unlinked);
                    }
                    Op::Commit => {
                        a.release_frees();
                        pending.clear();
                    }
                }
                prop_assert_eq!(a.check(), Ok(()));
            }
            let mut unlinked: Vec<u64> = model.iter().filter(|(_, s)| **s == BlockState::Unlinked).map(|(b, _)| *b).collect();
            unlinked.sort();
            prop_assert_eq!(a.unlinked(), unlinked);
        }
    }

    #[test]
    fn goal_blocks_keep_files_contiguous() {
        let mut a = allocator(2, 256);
        let (b1, n1) = a.alloc(0, 10, BlockState::Used).unwrap();
        let (b2, _) = a.alloc(b1 + n1 as u64, 10, BlockState::Used).unwrap();
        assert_eq!(b2, b1 + n1 as u64);
        // A goal in the second group starts there.
        let second = a.rgrps[1].ri.data0 + 5;
        assert_eq!(a.alloc(second, 1, BlockState::Used).unwrap().0, second);
        let dirty = a.take_dirty();
        assert_eq!(dirty.iter().map(|d| d.rgrp).collect::<Vec<_>>(), vec![0, 1]);
        assert!(a.take_dirty().is_empty());
    }
}
