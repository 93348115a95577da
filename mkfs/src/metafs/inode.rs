//! In-memory inodes and file content: mapping logical blocks through the
//! metadata tree, growing the tree, unstuffing, reading and writing bytes.
//!
//! The policy is mkfs.gfs2's, because it decides which block each piece of
//! metadata lands in: a tree grows one level at a time by moving the
//! dinode's pointers into a new indirect block; blocks are allocated
//! on first write, top level first; every new metadata block becomes the
//! inode's `goal_meta`.
//!
//! Directory content is addressed in `jbsize` units (its data blocks carry a
//! 24-byte header); regular file content in whole blocks.

use rgfs::format::bitmap::BlockState;
use rgfs::format::consts::{s_if, MetaType};
use rgfs::format::dinode::{Dinode, Timestamp, DINODE_SIZE};
use rgfs::format::meta::{init_block, pointer_at, set_pointer, META_HEADER_SIZE};
use rgfs::format::{Inum, OnDisk};

use super::Builder;
use crate::error::Result;

/// The fields of a dinode that mkfs changes while building.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inode {
    pub num: Inum,
    pub mode: u32,
    pub flags: u32,
    pub nlink: u32,
    pub size: u64,
    pub blocks: u64,
    pub height: u16,
    pub depth: u16,
    pub entries: u32,
    pub goal_meta: u64,
    pub goal_data: u64,
    pub payload_format: u32,
}

impl Inode {
    pub fn is_dir(&self) -> bool {
        self.mode & s_if::FMT == s_if::DIR
    }

    /// The dinode as written, with all three timestamps at `time_sec`.
    pub fn to_dinode(&self, time_sec: i64) -> Dinode {
        let t = Timestamp::new(time_sec, 0);
        Dinode {
            num: self.num,
            mode: self.mode,
            uid: 0,
            gid: 0,
            nlink: self.nlink,
            size: self.size,
            blocks: self.blocks,
            atime: t,
            mtime: t,
            ctime: t,
            major: 0,
            minor: 0,
            goal_meta: self.goal_meta,
            goal_data: self.goal_data,
            generation: 0,
            flags: self.flags,
            payload_format: self.payload_format,
            height: self.height,
            depth: self.depth,
            entries: self.entries,
            eattr: 0,
        }
    }
}

/// Where the pointer array of a tree block starts: after the dinode in the
/// inode's own block, after the metadata header in an indirect block.
fn pointer_area(is_dinode: bool) -> usize {
    if is_dinode {
        DINODE_SIZE
    } else {
        META_HEADER_SIZE
    }
}

impl Builder {
    /// Allocates a metadata or data block for `ip` (state USED).
    pub(super) fn alloc_meta(&mut self, ip: &mut Inode) -> Result<u64> {
        let block = self.alloc.alloc(BlockState::Used)?;
        ip.goal_meta = block;
        Ok(block)
    }

    /// Writes the dinode fields of `ip` into its block (the payload after
    /// the dinode is left as built).
    pub(super) fn put(&mut self, ip: &Inode) {
        let time = self.time_sec;
        ip.to_dinode(time)
            .encode_into(self.store.get_mut(ip.num.addr));
    }

    /// The smallest tree height that maps `size` bytes (or the current size
    /// if larger).
    pub(super) fn height_for(&self, ip: &Inode, size: u64) -> u16 {
        let size = size.max(ip.size);
        let g = &self.geom;
        let (table, max) = if ip.is_dir() {
            (&g.jheightsize, g.max_jheight)
        } else {
            (&g.heightsize, g.max_height)
        };
        (0..max).find(|&h| table[h as usize] >= size).unwrap_or(max)
    }

    /// Grows the tree of `ip` to `height`: each step moves the dinode's
    /// pointers (if any) into a new indirect block that the dinode then
    /// points to.
    pub(super) fn build_height(&mut self, ip: &mut Inode, height: u16) -> Result<()> {
        let bsize = self.geom.bsize as usize;
        while ip.height < height {
            let dinode = self.store.read(ip.num.addr);
            let has_pointers = dinode[DINODE_SIZE..].iter().any(|&b| b != 0);
            let indirect = if has_pointers {
                let block = self.alloc_meta(ip)?;
                let ind = self.store.fresh(block);
                init_block(ind, MetaType::Indirect);
                let n = bsize - DINODE_SIZE;
                ind[META_HEADER_SIZE..META_HEADER_SIZE + n].copy_from_slice(&dinode[DINODE_SIZE..]);
                Some(block)
            } else {
                None
            };
            let di = self.store.get_mut(ip.num.addr);
            di[DINODE_SIZE..].fill(0);
            if let Some(block) = indirect {
                set_pointer(&mut di[DINODE_SIZE..], 0, block);
                ip.blocks += 1;
            }
            ip.height += 1;
        }
        Ok(())
    }

    /// Moves stuffed content into a new data block; the inode gets height 1.
    pub(super) fn unstuff(&mut self, ip: &mut Inode) -> Result<()> {
        let bsize = self.geom.bsize as usize;
        let mut block = None;
        if ip.size > 0 {
            let b = self.alloc_meta(ip)?;
            let content = self.store.read(ip.num.addr)[DINODE_SIZE..].to_vec();
            let data = self.store.fresh(b);
            let at = if ip.is_dir() {
                init_block(data, MetaType::Jdata);
                META_HEADER_SIZE
            } else {
                0
            };
            data[at..at + content.len()].copy_from_slice(&content);
            debug_assert!(at + content.len() <= bsize);
            block = Some(b);
        }
        let di = self.store.get_mut(ip.num.addr);
        di[DINODE_SIZE..].fill(0);
        if let Some(b) = block {
            set_pointer(&mut di[DINODE_SIZE..], 0, b);
            ip.blocks += 1;
        }
        ip.height = 1;
        Ok(())
    }

    /// The block holding logical block `lblock` of `ip`, allocating the
    /// missing tree blocks and the data block when `create` is set. Returns
    /// 0 for a hole (only without `create`) and whether the data block is
    /// new.
    pub(super) fn block_map(
        &mut self,
        ip: &mut Inode,
        lblock: u64,
        create: bool,
    ) -> Result<(u64, bool)> {
        if ip.height == 0 {
            return Ok((if lblock == 0 { ip.num.addr } else { 0 }, false));
        }
        let unit = if ip.is_dir() {
            self.geom.jbsize
        } else {
            self.geom.bsize
        } as u64;
        let need = self.height_for(ip, (lblock + 1) * unit);
        if ip.height < need {
            if !create {
                return Ok((0, false));
            }
            self.build_height(ip, need)?;
        }
        let path = self
            .geom
            .tree_path(lblock, ip.height)
            .expect("the tree was grown to map this block");
        let levels = path.levels();
        let mut parent = ip.num.addr;
        let mut new = false;
        for (level, &index) in levels.iter().enumerate() {
            let area = pointer_area(level == 0);
            let mut child = pointer_at(&self.store.get_mut(parent)[area..], index as usize);
            if child == 0 {
                if !create {
                    return Ok((0, false));
                }
                child = self.alloc_meta(ip)?;
                set_pointer(
                    &mut self.store.get_mut(parent)[area..],
                    index as usize,
                    child,
                );
                ip.blocks += 1;
                new = true;
                let is_data = level + 1 == levels.len();
                if !is_data {
                    init_block(self.store.fresh(child), MetaType::Indirect);
                }
            }
            parent = child;
        }
        Ok((parent, new))
    }

    /// Where byte `offset` of the content lives: logical block and offset
    /// inside that block.
    fn locate(&self, ip: &Inode, offset: u64) -> (u64, usize) {
        let (lblock, mut within) = if ip.is_dir() {
            let j = self.geom.jbsize as u64;
            (offset / j, (offset % j) as usize)
        } else {
            (
                offset >> self.geom.bsize_shift,
                (offset & (self.geom.bsize as u64 - 1)) as usize,
            )
        };
        within += if ip.height == 0 {
            DINODE_SIZE
        } else if ip.is_dir() {
            META_HEADER_SIZE
        } else {
            0
        };
        (lblock, within)
    }

    /// Writes `data` at byte `offset` of the content of `ip`, unstuffing
    /// and allocating as needed. The size grows only when `resize` is set.
    pub(super) fn write(
        &mut self,
        ip: &mut Inode,
        offset: u64,
        data: &[u8],
        resize: bool,
    ) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let bsize = self.geom.bsize as usize;
        if ip.height == 0 && offset + data.len() as u64 > (bsize - DINODE_SIZE) as u64 {
            self.unstuff(ip)?;
        }
        let (mut lblock, mut within) = self.locate(ip, offset);
        let mut done = 0;
        while done < data.len() {
            let amount = (data.len() - done).min(bsize - within);
            let (dblock, new) = self.block_map(ip, lblock, true)?;
            let block = if new {
                let b = self.store.fresh(dblock);
                if ip.is_dir() {
                    init_block(b, MetaType::Jdata);
                }
                b
            } else {
                self.store.get_mut(dblock)
            };
            block[within..within + amount].copy_from_slice(&data[done..done + amount]);
            done += amount;
            lblock += 1;
            within = if ip.is_dir() { META_HEADER_SIZE } else { 0 };
        }
        if resize {
            ip.size = ip.size.max(offset + data.len() as u64);
        }
        Ok(())
    }

    /// Reads up to `len` bytes of content at `offset` (holes read as zeros).
    pub(super) fn read(&mut self, ip: &mut Inode, offset: u64, len: usize) -> Result<Vec<u8>> {
        let bsize = self.geom.bsize as usize;
        if offset >= ip.size {
            return Ok(Vec::new());
        }
        let len = len.min((ip.size - offset) as usize);
        let (mut lblock, mut within) = self.locate(ip, offset);
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            let amount = (len - out.len()).min(bsize - within);
            let (dblock, _) = self.block_map(ip, lblock, false)?;
            if dblock == 0 {
                out.resize(out.len() + amount, 0);
            } else {
                out.extend_from_slice(&self.store.get_mut(dblock)[within..within + amount]);
            }
            lblock += 1;
            within = if ip.is_dir() { META_HEADER_SIZE } else { 0 };
        }
        Ok(out)
    }
}
