//! A GFS2 volume as fsck (and the test populator) sees it: the device, the
//! block size, and the resource groups with their bitmaps held in memory.
//!
//! Every block read goes through [`Volume::read`], which refuses addresses
//! beyond the device instead of failing later; callers verify what they
//! read through the format library before using it.
//!
//! Invariants:
//! - `rgrps` is sorted by address and the groups do not overlap;
//! - each `Rgrp::bitmap` holds exactly `ri.bitbytes` bytes;
//! - a group whose header or bitmap was changed in memory has `dirty` set
//!   until [`Volume::write_rgrp`] writes it.

use rgfs::format::bitmap;
use rgfs::format::meta::{RawMetaHeader, META_HEADER_SIZE};
use rgfs::format::rgrp::RGRP_HEADER_SIZE;
use rgfs::format::{BlockState, Geometry, MetaType, OnDisk, RgrpHeader, Rindex, StatfsChange};
use rgfs_block::BlockDevice;
use zerocopy::IntoBytes;

/// An operational failure: the check cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum FsckError {
    #[error("{0}")]
    Device(#[from] rgfs_block::Error),
    #[error("{0}")]
    Fatal(String),
}

pub type Result<T, E = FsckError> = std::result::Result<T, E>;

pub fn fatal<T>(why: impl Into<String>) -> Result<T> {
    Err(FsckError::Fatal(why.into()))
}

/// One resource group: where it is, its header and its bitmap.
#[derive(Clone, Debug)]
pub struct Rgrp {
    pub ri: Rindex,
    pub header: RgrpHeader,
    /// The whole bitmap (`ri.bitbytes` bytes), gathered from the header
    /// block and the bitmap blocks.
    pub bitmap: Vec<u8>,
    /// Header or bitmap changed in memory and not yet written.
    pub dirty: bool,
}

impl Rgrp {
    pub fn state(&self, block: u64) -> BlockState {
        debug_assert!(self.ri.contains(block));
        bitmap::get(&self.bitmap, (block - self.ri.data0) as u32)
    }

    pub fn set_state(&mut self, block: u64, state: BlockState) {
        debug_assert!(self.ri.contains(block));
        bitmap::set(&mut self.bitmap, (block - self.ri.data0) as u32, state);
        self.dirty = true;
    }

    /// Free blocks and dinodes according to the bitmap.
    pub fn counted(&self) -> (u32, u32) {
        let c = bitmap::count(&self.bitmap, self.ri.data);
        (
            c[BlockState::Free as usize],
            c[BlockState::Dinode as usize] + c[BlockState::Unlinked as usize],
        )
    }
}

pub struct Volume<'a> {
    pub dev: &'a dyn BlockDevice,
    pub geom: Geometry,
    /// Blocks on the device.
    pub dev_blocks: u64,
    pub rgrps: Vec<Rgrp>,
    /// Changes fsck itself made to the free and dinode counts (by
    /// allocating and freeing), to be folded into the statfs file.
    pub statfs_delta: StatfsChange,
    /// Whether writes are allowed at all (false with `-n`).
    pub writable: bool,
}

impl<'a> Volume<'a> {
    pub fn new(dev: &'a dyn BlockDevice, geom: Geometry, writable: bool) -> Self {
        let dev_blocks = dev.size() >> geom.bsize_shift;
        Volume {
            dev,
            geom,
            dev_blocks,
            rgrps: Vec::new(),
            statfs_delta: StatfsChange::default(),
            writable,
        }
    }

    pub fn bsize(&self) -> usize {
        self.geom.bsize as usize
    }

    /// Reads block `block`; an address beyond the device is an error.
    pub fn read(&self, block: u64) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; self.bsize()];
        self.read_into(block, &mut buf)?;
        Ok(buf)
    }

    pub fn read_into(&self, block: u64, buf: &mut [u8]) -> Result<()> {
        if block >= self.dev_blocks {
            return fatal(format!(
                "block {block} is beyond the end of the device ({} blocks)",
                self.dev_blocks
            ));
        }
        self.dev.read_at(self.geom.byte_offset(block), buf)?;
        Ok(())
    }

    pub fn write(&self, block: u64, buf: &[u8]) -> Result<()> {
        assert!(self.writable, "write to block {block} in a read-only check");
        assert_eq!(buf.len(), self.bsize());
        if block >= self.dev_blocks {
            return fatal(format!("write beyond the end of the device: block {block}"));
        }
        self.dev.write_at(self.geom.byte_offset(block), buf)?;
        Ok(())
    }

    /// One past the last block any resource group maps.
    pub fn fs_blocks(&self) -> u64 {
        self.rgrps.last().map_or(0, |r| r.ri.data_end())
    }

    /// The group whose data blocks include `block`.
    pub fn rgrp_of(&self, block: u64) -> Option<usize> {
        let i = self.rgrps.partition_point(|r| r.ri.data0 <= block);
        let i = i.checked_sub(1)?;
        self.rgrps[i].ri.contains(block).then_some(i)
    }

    /// Whether `block` is a data block of some group (anything an inode may
    /// point to: not a header, bitmap, superblock or gap). Before the
    /// groups are loaded (reading the master directory to find the rindex),
    /// any block after the superblock and inside the device.
    pub fn is_data_block(&self, block: u64) -> bool {
        if self.rgrps.is_empty() {
            return block > self.geom.sb_addr() && block < self.dev_blocks;
        }
        self.rgrp_of(block).is_some()
    }

    /// The bound for block pointers: the end of the last group, or of the
    /// device before the groups are loaded.
    pub fn block_limit(&self) -> u64 {
        if self.rgrps.is_empty() {
            self.dev_blocks
        } else {
            self.fs_blocks()
        }
    }

    /// The bitmap state of a data block.
    pub fn state(&self, block: u64) -> Option<BlockState> {
        self.rgrp_of(block).map(|i| self.rgrps[i].state(block))
    }

    /// Changes a block's bitmap state and keeps the group's counts and the
    /// statfs delta in step. The group is written later by
    /// [`Volume::write_dirty_rgrps`].
    pub fn set_state(&mut self, block: u64, state: BlockState) {
        let Some(i) = self.rgrp_of(block) else { return };
        let rg = &mut self.rgrps[i];
        let old = rg.state(block);
        if old == state {
            return;
        }
        rg.set_state(block, state);
        let is_inode = |s: BlockState| matches!(s, BlockState::Dinode | BlockState::Unlinked);
        let (mut dfree, mut ddinodes) = (0i64, 0i64);
        if old == BlockState::Free {
            dfree -= 1;
        }
        if state == BlockState::Free {
            dfree += 1;
        }
        if is_inode(old) {
            ddinodes -= 1;
        }
        if is_inode(state) {
            ddinodes += 1;
        }
        rg.header.free = (rg.header.free as i64 + dfree).clamp(0, u32::MAX as i64) as u32;
        rg.header.dinodes = (rg.header.dinodes as i64 + ddinodes).clamp(0, u32::MAX as i64) as u32;
        self.statfs_delta.free += dfree;
        self.statfs_delta.dinodes += ddinodes;
    }

    /// Finds a free block (bitmap FREE and accepted by `usable`), marks it
    /// with `state` and returns it. Searches from the group of `near`.
    pub fn alloc(
        &mut self,
        near: u64,
        state: BlockState,
        usable: &dyn Fn(u64) -> bool,
    ) -> Option<u64> {
        let n = self.rgrps.len();
        let first = self.rgrp_of(near).unwrap_or(0);
        for k in 0..n {
            let i = (first + k) % n;
            let rg = &self.rgrps[i];
            let mut start = 0;
            while let Some(idx) = bitmap::find(&rg.bitmap, rg.ri.data, start, BlockState::Free) {
                let block = rg.ri.data0 + idx as u64;
                if usable(block) {
                    self.set_state(block, state);
                    return Some(block);
                }
                start = idx + 1;
                if start >= rg.ri.data {
                    break;
                }
            }
        }
        None
    }

    /// The header block and bitmap blocks of group `i`, as they must be on
    /// disk for the in-memory header and bitmap.
    pub fn rgrp_blocks(&self, i: usize) -> Vec<(u64, Vec<u8>)> {
        let rg = &self.rgrps[i];
        let mut out = Vec::with_capacity(rg.ri.length as usize);
        for b in 0..rg.ri.length {
            let mut block = vec![0u8; self.bsize()];
            let (offset, span) = self.geom.bitmap_block_span(b, rg.ri.bitbytes);
            if b == 0 {
                rg.header.encode_into(&mut block);
            } else {
                block[..META_HEADER_SIZE]
                    .copy_from_slice(RawMetaHeader::new(MetaType::RgrpBitmap).as_bytes());
            }
            let bytes = &rg.bitmap[span.start as usize..span.end as usize];
            block[offset..offset + bytes.len()].copy_from_slice(bytes);
            out.push((rg.ri.addr + b as u64, block));
        }
        debug_assert!(RGRP_HEADER_SIZE <= self.bsize());
        out
    }

    /// Writes group `i`'s header and bitmap blocks.
    pub fn write_rgrp(&mut self, i: usize) -> Result<()> {
        for (addr, block) in self.rgrp_blocks(i) {
            self.write(addr, &block)?;
        }
        self.rgrps[i].dirty = false;
        Ok(())
    }

    pub fn write_dirty_rgrps(&mut self) -> Result<()> {
        for i in 0..self.rgrps.len() {
            if self.rgrps[i].dirty {
                self.write_rgrp(i)?;
            }
        }
        Ok(())
    }
}

/// Reads the header and bitmap of a group without judging them: the header
/// fields as stored (checksum not verified) and the bitmap bytes from
/// wherever the layout puts them. Used by the resource group pass, which
/// reports what is wrong, and by the populator.
pub fn read_rgrp_raw(vol: &Volume, ri: &Rindex) -> Result<(Vec<u8>, Vec<Vec<u8>>)> {
    let mut blocks = Vec::with_capacity(ri.length as usize);
    for b in 0..ri.length {
        blocks.push(vol.read(ri.addr + b as u64)?);
    }
    let mut bitmap = vec![0u8; ri.bitbytes as usize];
    for (b, block) in blocks.iter().enumerate() {
        let (offset, span) = vol.geom.bitmap_block_span(b as u32, ri.bitbytes);
        let len = (span.end - span.start) as usize;
        bitmap[span.start as usize..span.end as usize]
            .copy_from_slice(&block[offset..offset + len]);
    }
    Ok((bitmap, blocks))
}

/// Loads every group of `rindex` trusting what is on disk (the populator
/// uses this on images it just made; fsck uses the resource group pass).
pub fn load_rgrps_trusting(vol: &mut Volume, rindex: &[Rindex]) -> Result<()> {
    vol.rgrps.clear();
    for ri in rindex {
        let (bitmap, blocks) = read_rgrp_raw(vol, ri)?;
        let raw = RgrpHeader::raw(&blocks[0]).map_err(|e| FsckError::Fatal(e.to_string()))?;
        vol.rgrps.push(Rgrp {
            ri: *ri,
            header: raw.fields(),
            bitmap,
            dirty: false,
        });
    }
    Ok(())
}
