//! First-fit block allocation over the planned resource groups, as
//! mkfs.gfs2 allocates system files: the lowest free block of the first
//! group that has one. Nothing is ever freed while mkfs runs.
//!
//! Invariants:
//! - for every group, `free` equals the FREE bits of its bitmap and
//!   `dinodes` its DINODE bits (bitmaps absent = all free);
//! - `search_from` of a group never passes a free block (no frees, and
//!   allocation moves it forward);
//! - `blocks_allocated`/`dinodes_allocated` are the sums over all groups.

use rgfs::format::bitmap::{self, BlockState};
use rgfs::format::rgrp::RgrpHeader;

use crate::error::{Error, Result};
use crate::plan::Layout;

/// Allocation state of one resource group.
#[derive(Clone, Debug)]
pub struct RgrpState {
    pub header: RgrpHeader,
    /// The bitmap bytes; `None` while the group is entirely free.
    pub bitmap: Option<Vec<u8>>,
    /// Bitmap index where the search for a free block starts.
    search_from: u32,
}

impl RgrpState {
    fn bitmap_mut(&mut self) -> &mut Vec<u8> {
        let bytes = self.header.bitbytes as usize;
        self.bitmap.get_or_insert_with(|| vec![0; bytes])
    }

    /// Marks `count` blocks from bitmap index `first` (all free) as `state`.
    fn take(&mut self, first: u32, count: u32, state: BlockState) {
        let bm = self.bitmap_mut();
        for i in first..first + count {
            debug_assert_eq!(bitmap::get(bm, i), BlockState::Free);
            bitmap::set(bm, i, state);
        }
        self.header.free -= count;
        if state == BlockState::Dinode {
            self.header.dinodes += 1;
        }
    }
}

#[derive(Clone, Debug)]
pub struct Allocator {
    pub rgrps: Vec<RgrpState>,
    pub blocks_allocated: u64,
    pub dinodes_allocated: u64,
}

impl Allocator {
    /// The groups of `layout`, with each journal already allocated in its
    /// group: the dinode block DINODE, the rest of its extent USED.
    pub fn new(layout: &Layout) -> Allocator {
        let mut rgrps: Vec<RgrpState> = layout
            .rgrps
            .iter()
            .map(|r| RgrpState {
                header: RgrpHeader::empty(&r.ri, r.skip_blocks),
                bitmap: None,
                search_from: 0,
            })
            .collect();
        let mut alloc = Allocator {
            rgrps: Vec::new(),
            blocks_allocated: 0,
            dinodes_allocated: 0,
        };
        for jp in &layout.journals {
            let rg = &mut rgrps[jp.rgrp];
            let first = (jp.inum.addr - rg.header.data0) as u32;
            let count = jp.file_blocks as u32;
            rg.take(first, 1, BlockState::Dinode);
            rg.take(first + 1, count - 1, BlockState::Used);
            rg.search_from = first + count;
            alloc.blocks_allocated += jp.file_blocks;
            alloc.dinodes_allocated += 1;
        }
        alloc.rgrps = rgrps;
        alloc
    }

    /// Allocates one block in `state` (DINODE or USED): the lowest free
    /// block of the first group with a free block.
    pub fn alloc(&mut self, state: BlockState) -> Result<u64> {
        let Some(rg) = self.rgrps.iter_mut().find(|r| r.header.free > 0) else {
            return Err(Error::too_small(
                "device too small: no free block left for the system files",
            ));
        };
        let data = rg.header.data;
        let start = rg.search_from;
        let index = bitmap::find(rg.bitmap_mut(), data, start, BlockState::Free)
            .expect("a group with free blocks has a FREE bit");
        rg.take(index, 1, state);
        rg.search_from = index + 1;
        self.blocks_allocated += 1;
        if state == BlockState::Dinode {
            self.dinodes_allocated += 1;
        }
        Ok(rg.header.data0 + index as u64)
    }

    /// Sum of the groups' data blocks.
    pub fn total_blocks(&self) -> u64 {
        self.rgrps.iter().map(|r| r.header.data as u64).sum()
    }

    /// Checks the invariants listed in the module documentation.
    pub fn check(&self) {
        let (mut used, mut dinodes) = (0u64, 0u64);
        for (i, rg) in self.rgrps.iter().enumerate() {
            let h = &rg.header;
            let counts = match &rg.bitmap {
                Some(bm) => bitmap::count(bm, h.data),
                None => [h.data, 0, 0, 0],
            };
            assert_eq!(counts[BlockState::Free as usize], h.free, "group {i}: free");
            assert_eq!(
                counts[BlockState::Dinode as usize],
                h.dinodes,
                "group {i}: dinodes"
            );
            used += (h.data - h.free) as u64;
            dinodes += h.dinodes as u64;
        }
        assert_eq!(used, self.blocks_allocated);
        assert_eq!(dinodes, self.dinodes_allocated);
    }
}
