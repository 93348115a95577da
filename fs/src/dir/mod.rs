//! Directories: linear (dirents stuffed in the dinode block) and exhash
//! (a hash table of leaf pointers, stuffed or in JD blocks, and leaves with
//! splits, table doubling and chains), as GFS2 lays them out (docs/disk-format.md §6).
//!
//! Invariants:
//! - `di.entries` counts the used dirents including "." and "..";
//!   every leaf's `lf_entries` counts its own used dirents;
//! - exhash: `di.size == 8 << di.depth`; a leaf of depth d is referenced by
//!   exactly `2^(di.depth - d)` consecutive, aligned table pointers, and
//!   holds only names whose hash prefix selects those pointers;
//! - chains (`lf_next`) only exist at the maximum depth (17);
//! - `dir_list` returns entries sorted by (hash, name); readdir offsets
//!   are derived from that order and the hash (`fuse::dir_stream`).

use crate::core::FsCore;
use crate::error::{corrupt, AtBlock, Result};
use crate::format::bitmap::BlockState;
use crate::format::checksum::disk_hash;
use crate::format::consts::{dif, MetaType, DIR_MAX_DEPTH};
use crate::format::dirent::{self, dirent_size};
use crate::format::meta::init_block;
use crate::format::{Inum, Leaf, OnDisk, Timestamp, DINODE_SIZE, LEAF_HEADER_SIZE, META_HEADER_SIZE};

/// One directory entry, as readdir reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    pub name: Vec<u8>,
    pub inum: Inum,
    pub de_type: u16,
    pub hash: u32,
}

/// Bound on insert retries (split/double each make progress).
const MAX_INSERT_ROUNDS: usize = 64;

impl FsCore {
    /// Initialises a new directory's payload with "." and "..".
    pub fn dir_init(&mut self, dir: u64, parent: Inum) -> Result<()> {
        let this = self.inode(dir)?.di.num;
        self.read_meta(dir, &[MetaType::Dinode], dir)?;
        let b = self.cache.modify(dir);
        dirent::init_dir(&mut b[DINODE_SIZE..], this, parent, crate::format::consts::dt::DIR);
        let size = (self.geom.bsize as usize - DINODE_SIZE) as u64;
        self.update_dinode(dir, |d| {
            d.size = size;
            d.entries = 2;
        })
    }

    fn leaf_read(&mut self, dir: u64, block: u64) -> Result<(Leaf, std::sync::Arc<Vec<u8>>)> {
        let buf = self.read_meta(block, &[MetaType::Leaf], dir)?;
        let leaf = Leaf::decode(&buf).at_block(block)?;
        Ok((leaf, buf))
    }

    fn leaf_write_header(&mut self, block: u64, leaf: &Leaf) {
        leaf.encode_into(&mut self.cache.modify(block)[..LEAF_HEADER_SIZE]);
    }

    /// Pointer `idx` of the hash table.
    fn ht_get(&mut self, dir: u64, idx: u64) -> Result<u64> {
        let di = self.inode(dir)?.di.clone();
        if idx >= 1u64 << di.depth {
            return corrupt(format!("directory {dir}"), format!("hash index {idx} beyond depth {}", di.depth));
        }
        let o = idx * 8;
        let p = if di.height == 0 {
            let buf = self.read_meta(dir, &[MetaType::Dinode], dir)?;
            let at = DINODE_SIZE + o as usize;
            u64::from_be_bytes(buf[at..at + 8].try_into().expect("8 bytes"))
        } else {
            let jb = self.geom.jbsize as u64;
            let Some(b) = self.bmap(dir, o / jb)? else {
                return corrupt(format!("directory {dir}"), "hole in the hash table");
            };
            let buf = self.read_meta(b, &[MetaType::Jdata], dir)?;
            let at = META_HEADER_SIZE + (o % jb) as usize;
            u64::from_be_bytes(buf[at..at + 8].try_into().expect("8 bytes"))
        };
        if p == 0 || p >= self.fs_blocks {
            return corrupt(format!("directory {dir}"), format!("hash table pointer {idx} is {p}"));
        }
        Ok(p)
    }

    fn ht_set_range(&mut self, dir: u64, start: u64, count: u64, value: u64) -> Result<()> {
        let di = self.inode(dir)?.di.clone();
        for idx in start..start + count {
            let o = idx * 8;
            if di.height == 0 {
                self.read_meta(dir, &[MetaType::Dinode], dir)?;
                let at = DINODE_SIZE + o as usize;
                self.cache.modify(dir)[at..at + 8].copy_from_slice(&value.to_be_bytes());
            } else {
                let jb = self.geom.jbsize as u64;
                let (b, _) = self.bmap_alloc(dir, o / jb, true)?;
                self.read_meta(b, &[MetaType::Jdata], dir)?;
                let at = META_HEADER_SIZE + (o % jb) as usize;
                self.cache.modify(b)[at..at + 8].copy_from_slice(&value.to_be_bytes());
            }
        }
        Ok(())
    }

    fn ht_read_all(&mut self, dir: u64) -> Result<Vec<u64>> {
        let depth = self.inode(dir)?.di.depth;
        (0..1u64 << depth).map(|i| self.ht_get(dir, i)).collect()
    }

    /// Doubles the hash table: every pointer duplicated in place.
    fn ht_double(&mut self, dir: u64) -> Result<()> {
        let old = self.ht_read_all(dir)?;
        let new_len = old.len() as u64 * 2;
        let new_size = new_len * 8;
        let di = self.inode(dir)?.di.clone();
        if di.height == 0 && new_size > self.geom.max_stuffed() {
            self.unstuff(dir)?;
        }
        self.update_dinode(dir, |d| {
            d.depth += 1;
            d.size = new_size;
        })?;
        // Write from the end so unread old pointers are not overwritten
        // (the in-place doubling reads the old table from `old`).
        for (i, &p) in old.iter().enumerate() {
            self.ht_set_range(dir, 2 * i as u64, 2, p)?;
        }
        Ok(())
    }

    /// Looks up `name`.
    pub fn dir_lookup(&mut self, dir: u64, name: &[u8]) -> Result<Option<(Inum, u16)>> {
        let di = self.inode(dir)?.di.clone();
        if !di.is_dir() {
            return Err(crate::Error::Errno(libc::ENOTDIR));
        }
        if !di.is_exhash() {
            let buf = self.read_meta(dir, &[MetaType::Dinode], dir)?;
            let area = &buf[DINODE_SIZE..];
            let found = dirent::find(area, name).at_block(dir)?;
            return Ok(found.map(|d| (d.header.inum, d.header.de_type)));
        }
        let hash = disk_hash(name);
        let idx = if di.depth == 0 { 0 } else { (hash >> (32 - di.depth as u32)) as u64 };
        let mut leaf_blk = self.ht_get(dir, idx)?;
        for _ in 0..=u16::MAX {
            let (leaf, buf) = self.leaf_read(dir, leaf_blk)?;
            if let Some(d) = dirent::find(&buf[LEAF_HEADER_SIZE..], name).at_block(leaf_blk)? {
                return Ok(Some((d.header.inum, d.header.de_type)));
            }
            if leaf.next == 0 {
                return Ok(None);
            }
            leaf_blk = leaf.next;
        }
        corrupt(format!("directory {dir}"), "leaf chain does not end")
    }

    /// Adds an entry (the caller checked it does not exist).
    pub fn dir_add(&mut self, dir: u64, name: &[u8], inum: Inum, de_type: u16) -> Result<()> {
        for _ in 0..MAX_INSERT_ROUNDS {
            let di = self.inode(dir)?.di.clone();
            if !di.is_exhash() {
                self.read_meta(dir, &[MetaType::Dinode], dir)?;
                let mut area = self.cache.peek(dir).expect("read").data[DINODE_SIZE..].to_vec();
                if dirent::insert(&mut area, inum, name, de_type).at_block(dir)?.is_some() {
                    self.cache.modify(dir)[DINODE_SIZE..].copy_from_slice(&area);
                    return self.update_dinode(dir, |d| d.entries += 1);
                }
                self.dir_to_exhash(dir)?;
                continue;
            }
            let hash = disk_hash(name);
            let idx = (hash >> (32 - di.depth as u32)) as u64;
            let first = self.ht_get(dir, idx)?;
            // Try every leaf of the chain.
            let mut blk = first;
            let mut last;
            let mut chain_len = 0u32;
            loop {
                let (mut leaf, buf) = self.leaf_read(dir, blk)?;
                let mut area = buf[LEAF_HEADER_SIZE..].to_vec();
                if dirent::insert(&mut area, inum, name, de_type).at_block(blk)?.is_some() {
                    let now = Timestamp::now();
                    leaf.entries = leaf.entries.saturating_add(1);
                    leaf.sec = now.sec as u64;
                    leaf.nsec = now.nsec;
                    let b = self.cache.modify(blk);
                    b[LEAF_HEADER_SIZE..].copy_from_slice(&area);
                    leaf.encode_into(&mut b[..LEAF_HEADER_SIZE]);
                    return self.update_dinode(dir, |d| d.entries += 1);
                }
                chain_len += 1;
                last = blk;
                if leaf.next == 0 || chain_len > u16::MAX as u32 {
                    break;
                }
                blk = leaf.next;
            }
            let (leaf, _) = self.leaf_read(dir, first)?;
            if leaf.depth < di.depth {
                self.leaf_split(dir, idx, first, leaf)?;
            } else if di.depth < DIR_MAX_DEPTH {
                self.ht_double(dir)?;
            } else {
                // Chain a new leaf at the end.
                let nb = self.new_leaf(dir, leaf.depth, chain_len + 1)?;
                let (mut lastleaf, _) = self.leaf_read(dir, last)?;
                lastleaf.next = nb;
                self.leaf_write_header(last, &lastleaf);
            }
        }
        corrupt(format!("directory {dir}"), "no room for a new entry after splitting")
    }

    fn new_leaf(&mut self, dir: u64, depth: u16, dist: u32) -> Result<u64> {
        let goal = self.inode(dir)?.di.goal_meta.max(dir);
        let nb = self.alloc_block(goal + 1, BlockState::Used)?;
        let mut b = vec![0u8; self.geom.bsize as usize];
        init_block(&mut b, MetaType::Leaf);
        let now = Timestamp::now();
        Leaf { depth, entries: 0, next: 0, inode: dir, dist, nsec: now.nsec, sec: now.sec as u64 }
            .encode_into(&mut b[..LEAF_HEADER_SIZE]);
        dirent::init_empty(&mut b[LEAF_HEADER_SIZE..]);
        self.cache.create(nb, b, dir);
        self.update_dinode(dir, |d| {
            d.blocks += 1;
            d.goal_meta = nb;
        })?;
        Ok(nb)
    }

    /// Splits the leaf at table index `idx`: the lower half of its pointer
    /// range and of its hash range go to a new leaf.
    fn leaf_split(&mut self, dir: u64, idx: u64, blk: u64, mut leaf: Leaf) -> Result<()> {
        let depth = self.inode(dir)?.di.depth as u32;
        let len = 1u64 << (depth - leaf.depth as u32);
        let start = idx & !(len - 1);
        let half = len / 2;
        let nb = self.new_leaf(dir, leaf.depth + 1, 1)?;
        self.ht_set_range(dir, start, half, nb)?;
        let divider = (start + half) << (32 - depth);
        let buf = self.read_meta(blk, &[MetaType::Leaf], dir)?;
        let mut old_area = buf[LEAF_HEADER_SIZE..].to_vec();
        let movers: Vec<(Vec<u8>, Inum, u16)> = dirent::used_entries(&old_area)
            .at_block(blk)?
            .into_iter()
            .filter(|d| (d.header.hash as u64) < divider)
            .map(|d| (d.name.to_vec(), d.header.inum, d.header.de_type))
            .collect();
        let nbuf = self.read_meta(nb, &[MetaType::Leaf], dir)?;
        let mut new_area = nbuf[LEAF_HEADER_SIZE..].to_vec();
        for (name, inum, t) in &movers {
            dirent::remove(&mut old_area, name).at_block(blk)?;
            if dirent::insert(&mut new_area, *inum, name, *t).at_block(nb)?.is_none() {
                return corrupt(format!("directory {dir}"), "split leaf overflowed");
            }
        }
        let (mut nleaf, _) = self.leaf_read(dir, nb)?;
        nleaf.entries = movers.len() as u16;
        leaf.entries = leaf.entries.saturating_sub(movers.len() as u16);
        leaf.depth += 1;
        let b = self.cache.modify(blk);
        b[LEAF_HEADER_SIZE..].copy_from_slice(&old_area);
        leaf.encode_into(&mut b[..LEAF_HEADER_SIZE]);
        let b = self.cache.modify(nb);
        b[LEAF_HEADER_SIZE..].copy_from_slice(&new_area);
        nleaf.encode_into(&mut b[..LEAF_HEADER_SIZE]);
        Ok(())
    }

    /// Converts a full linear directory to exhash (docs/disk-format.md §6.2).
    fn dir_to_exhash(&mut self, dir: u64) -> Result<()> {
        let bsize = self.geom.bsize as usize;
        let entries = self.inode(dir)?.di.entries;
        let dbuf = self.read_meta(dir, &[MetaType::Dinode], dir)?;
        let area = dbuf[DINODE_SIZE..].to_vec();
        let nb = self.new_leaf(dir, 0, 1)?;
        let mut lb = self.cache.peek(nb).expect("created").data.to_vec();
        lb[LEAF_HEADER_SIZE..LEAF_HEADER_SIZE + area.len()].copy_from_slice(&area);
        lb[LEAF_HEADER_SIZE + area.len()..].fill(0);
        // The last dirent absorbs the extra room of the leaf.
        let last = dirent::dirents(&area).last().transpose().at_block(dir)?.map(|d| (d.offset, d.header));
        let Some((off, mut h)) = last else {
            return corrupt(format!("directory {dir}"), "empty dirent area");
        };
        h.rec_len += (DINODE_SIZE - LEAF_HEADER_SIZE) as u16;
        h.encode_into(&mut lb[LEAF_HEADER_SIZE + off..]);
        let mut leaf = Leaf::decode(&lb).at_block(nb)?;
        leaf.entries = entries as u16;
        leaf.encode_into(&mut lb[..LEAF_HEADER_SIZE]);
        self.cache.modify(nb).copy_from_slice(&lb);
        let hash_ptrs = bsize / 16;
        let d = self.cache.modify(dir);
        d[DINODE_SIZE..].fill(0);
        for i in 0..hash_ptrs {
            d[DINODE_SIZE + 8 * i..DINODE_SIZE + 8 * i + 8].copy_from_slice(&nb.to_be_bytes());
        }
        self.update_dinode(dir, |d| {
            d.flags |= dif::EXHASH;
            d.size = (bsize / 2) as u64;
            d.depth = hash_ptrs.trailing_zeros() as u16;
            d.payload_format = 0;
        })
    }

    /// Removes `name`; returns what it pointed to.
    pub fn dir_remove(&mut self, dir: u64, name: &[u8]) -> Result<Option<(Inum, u16)>> {
        let di = self.inode(dir)?.di.clone();
        if !di.is_exhash() {
            self.read_meta(dir, &[MetaType::Dinode], dir)?;
            let mut area = self.cache.peek(dir).expect("read").data[DINODE_SIZE..].to_vec();
            let gone = dirent::remove(&mut area, name).at_block(dir)?;
            if gone.is_some() {
                self.cache.modify(dir)[DINODE_SIZE..].copy_from_slice(&area);
                self.update_dinode(dir, |d| d.entries = d.entries.saturating_sub(1))?;
            }
            return Ok(gone);
        }
        let hash = disk_hash(name);
        let idx = (hash >> (32 - di.depth as u32)) as u64;
        let mut blk = self.ht_get(dir, idx)?;
        for _ in 0..=u16::MAX {
            let (mut leaf, buf) = self.leaf_read(dir, blk)?;
            let mut area = buf[LEAF_HEADER_SIZE..].to_vec();
            if let Some(gone) = dirent::remove(&mut area, name).at_block(blk)? {
                let now = Timestamp::now();
                leaf.entries = leaf.entries.saturating_sub(1);
                leaf.sec = now.sec as u64;
                leaf.nsec = now.nsec;
                let b = self.cache.modify(blk);
                b[LEAF_HEADER_SIZE..].copy_from_slice(&area);
                leaf.encode_into(&mut b[..LEAF_HEADER_SIZE]);
                self.update_dinode(dir, |d| d.entries = d.entries.saturating_sub(1))?;
                return Ok(Some(gone));
            }
            if leaf.next == 0 {
                return Ok(None);
            }
            blk = leaf.next;
        }
        corrupt(format!("directory {dir}"), "leaf chain does not end")
    }

    /// Points the existing entry `name` at another inode (rename over).
    pub fn dir_retarget(&mut self, dir: u64, name: &[u8], inum: Inum, de_type: u16) -> Result<()> {
        let di = self.inode(dir)?.di.clone();
        let blk = if !di.is_exhash() {
            dir
        } else {
            let idx = (disk_hash(name) >> (32 - di.depth as u32)) as u64;
            let mut blk = self.ht_get(dir, idx)?;
            loop {
                let (leaf, buf) = self.leaf_read(dir, blk)?;
                if dirent::find(&buf[LEAF_HEADER_SIZE..], name).at_block(blk)?.is_some() || leaf.next == 0 {
                    break blk;
                }
                blk = leaf.next;
            }
        };
        let off = if blk == dir { DINODE_SIZE } else { LEAF_HEADER_SIZE };
        self.read_meta(blk, &[], dir)?;
        let mut area = self.cache.peek(blk).expect("read").data[off..].to_vec();
        if !dirent::retarget(&mut area, name, inum, de_type).at_block(blk)? {
            return corrupt(format!("directory {dir}"), "entry to retarget vanished");
        }
        self.cache.modify(blk)[off..].copy_from_slice(&area);
        Ok(())
    }

    /// Every entry, sorted by (hash, name), "." and ".." included.
    pub fn dir_list(&mut self, dir: u64) -> Result<Vec<DirEntry>> {
        let di = self.inode(dir)?.di.clone();
        let mut out = Vec::new();
        let mut push = |area: &[u8], blk: u64| -> Result<()> {
            for d in dirent::used_entries(area).at_block(blk)? {
                out.push(DirEntry { name: d.name.to_vec(), inum: d.header.inum, de_type: d.header.de_type, hash: d.header.hash });
            }
            Ok(())
        };
        if !di.is_exhash() {
            let buf = self.read_meta(dir, &[MetaType::Dinode], dir)?;
            push(&buf[DINODE_SIZE..], dir)?;
        } else {
            for blk in self.dir_leaves(dir)? {
                let buf = self.read_meta(blk, &[MetaType::Leaf], dir)?;
                push(&buf[LEAF_HEADER_SIZE..], blk)?;
            }
        }
        out.sort_by(|a, b| (a.hash, &a.name).cmp(&(b.hash, &b.name)));
        Ok(out)
    }

    /// Every leaf block of an exhash directory (chains included), once.
    pub fn dir_leaves(&mut self, dir: u64) -> Result<Vec<u64>> {
        let depth = self.inode(dir)?.di.depth as u32;
        let n = 1u64 << depth;
        let mut out = Vec::new();
        let mut idx = 0;
        while idx < n {
            let blk = self.ht_get(dir, idx)?;
            let (leaf, _) = self.leaf_read(dir, blk)?;
            if leaf.depth as u32 > depth {
                return corrupt(format!("directory {dir}"), format!("leaf {blk} deeper than the table"));
            }
            let len = 1u64 << (depth - leaf.depth as u32);
            if idx % len != 0 {
                return corrupt(format!("directory {dir}"), format!("leaf {blk} pointers misaligned"));
            }
            out.push(blk);
            let mut next = leaf.next;
            let mut guard = 0u32;
            while next != 0 {
                out.push(next);
                let (l, _) = self.leaf_read(dir, next)?;
                next = l.next;
                guard += 1;
                if guard > u16::MAX as u32 {
                    return corrupt(format!("directory {dir}"), "leaf chain does not end");
                }
            }
            idx += len;
        }
        Ok(out)
    }

    /// Whether the directory holds only "." and "..".
    pub fn dir_is_empty(&mut self, dir: u64) -> Result<bool> {
        Ok(self.inode(dir)?.di.entries <= 2)
    }

    /// Frees an exhash directory's leaves and hash-table blocks.
    pub fn free_dir_blocks(&mut self, dir: u64) -> Result<()> {
        let leaves = self.dir_leaves(dir)?;
        for &b in &leaves {
            self.free_blocks(b, 1, false)?;
        }
        self.update_dinode(dir, |d| d.blocks = d.blocks.saturating_sub(leaves.len() as u64))?;
        self.free_tree_from(dir, 0)?;
        Ok(())
    }

    /// Bytes a new entry named `name` needs (for ENOSPC-free checks).
    pub fn dirent_bytes(name: &[u8]) -> usize {
        dirent_size(name.len())
    }
}
