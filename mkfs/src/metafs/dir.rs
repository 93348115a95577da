//! Adding entries to directories the way mkfs.gfs2 does, so that entries,
//! leaves and hash tables land in the same places and bytes:
//!
//! - a linear (stuffed) directory takes the first dirent with room: an
//!   unused one, or the spare tail of a used one;
//! - when the dinode block is full the directory becomes hashed: its
//!   dirents move to one leaf, and a stuffed hash table of `bsize / 16`
//!   pointers (all to that leaf) replaces them;
//! - when a leaf is full it is split (entries hashing below the middle of
//!   its pointer range move to the new leaf) while its depth is below the
//!   table's, else the table is doubled, else (at depth 17) a leaf is
//!   chained.
//!
//! Byte-level details are kept because they show on disk: moved dirents
//! leave their old bytes behind, a reused dirent keeps stale name bytes
//! past its new name, and a new leaf has no time stamp or `lf_dist`.

use rgfs::format::checksum::disk_hash;
use rgfs::format::consts::{MetaType, DIR_MAX_DEPTH, FORMAT_DIRENT};
use rgfs::format::dinode::DINODE_SIZE;
use rgfs::format::dirent::{dirent_size, DIRENT_HEADER_SIZE};
use rgfs::format::leaf::LEAF_HEADER_SIZE;
use rgfs::format::meta::{init_block, RawMetaHeader};
use rgfs::format::Inum;
use zerocopy::FromBytes;

use super::inode::Inode;
use super::Builder;
use crate::error::{Error, Result};

// Byte offsets inside a dirent header and a leaf header (gfs2_ondisk.h).
const DE_FORMAL: usize = 0;
const DE_ADDR: usize = 8;
const DE_HASH: usize = 16;
const DE_REC_LEN: usize = 20;
const DE_NAME_LEN: usize = 22;
const DE_TYPE: usize = 24;
const LF_DEPTH: usize = 24;
const LF_ENTRIES: usize = 26;
const LF_DIRENT_FORMAT: usize = 28;
const LF_NEXT: usize = 32;
const LF_INODE: usize = 40;

fn get16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}
fn set16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}
fn get32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn set32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}
fn get64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}
fn set64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_be_bytes());
}

fn is_leaf(block: &[u8]) -> bool {
    RawMetaHeader::ref_from_prefix(block).is_ok_and(|(h, _)| h.meta_type() == Some(MetaType::Leaf))
}

/// Offset of the dirent after the one at `at`, if any.
fn next_dirent(block: &[u8], at: usize) -> Option<usize> {
    let rec_len = get16(block, at + DE_REC_LEN) as usize;
    (rec_len != 0 && at + rec_len < block.len()).then_some(at + rec_len)
}

/// Fills in a dirent's identity and name (its lengths are already set).
fn fill_dirent(block: &mut [u8], at: usize, inum: Inum, hash: u32, de_type: u16, name: &[u8]) {
    set64(block, at + DE_FORMAL, inum.formal_ino);
    set64(block, at + DE_ADDR, inum.addr);
    set32(block, at + DE_HASH, hash);
    set16(block, at + DE_TYPE, de_type);
    block[at + DIRENT_HEADER_SIZE..at + DIRENT_HEADER_SIZE + name.len()].copy_from_slice(name);
}

impl Builder {
    /// Reserves room for a dirent with a `name_len`-byte name in `addr` (the
    /// directory's dinode block or one of its leaves) and counts it in the
    /// directory. Returns the dirent's offset, or `None` if full.
    fn dirent_alloc(&mut self, dip: &mut Inode, addr: u64, name_len: usize) -> Option<usize> {
        let bsize = self.geom.bsize as usize;
        let block = self.store.get_mut(addr);
        let (start, entries) = if is_leaf(block) {
            (LEAF_HEADER_SIZE, get16(block, LF_ENTRIES) as u32)
        } else {
            (DINODE_SIZE, dip.entries)
        };
        let need = dirent_size(name_len);
        if entries == 0 {
            set16(block, start + DE_REC_LEN, (bsize - start) as u16);
            set16(block, start + DE_NAME_LEN, name_len as u16);
            dip.entries += 1;
            return Some(start);
        }
        let mut at = start;
        loop {
            let rec_len = get16(block, at + DE_REC_LEN) as usize;
            let own = dirent_size(get16(block, at + DE_NAME_LEN) as usize);
            let used = get64(block, at + DE_FORMAL) != 0;
            if used && rec_len >= own + need {
                // Split the spare tail off the used entry.
                let new = at + own;
                block[new..new + DIRENT_HEADER_SIZE].fill(0);
                set16(block, new + DE_REC_LEN, (rec_len - own) as u16);
                set16(block, new + DE_NAME_LEN, name_len as u16);
                set16(block, at + DE_REC_LEN, own as u16);
                dip.entries += 1;
                return Some(new);
            }
            if !used && rec_len >= need {
                set16(block, at + DE_NAME_LEN, name_len as u16);
                dip.entries += 1;
                return Some(at);
            }
            at = next_dirent(block, at)?;
        }
    }

    /// Removes the dirent at `at` of leaf `addr`: the first dirent of a
    /// block is marked unused, any other gives its space to `prev`.
    fn dirent_del(&mut self, dip: &mut Inode, addr: u64, prev: Option<usize>, at: usize) {
        let block = self.store.get_mut(addr);
        let entries = get16(block, LF_ENTRIES);
        set16(block, LF_ENTRIES, entries - 1);
        dip.entries = dip.entries.saturating_sub(1);
        match prev {
            None => {
                set64(block, at + DE_FORMAL, 0);
                set64(block, at + DE_ADDR, 0);
            }
            Some(p) => {
                let merged = get16(block, p + DE_REC_LEN) + get16(block, at + DE_REC_LEN);
                set16(block, p + DE_REC_LEN, merged);
            }
        }
    }

    /// Links `name` to `inum` in directory `dip`.
    pub(super) fn dir_add(
        &mut self,
        dip: &mut Inode,
        name: &str,
        inum: Inum,
        de_type: u16,
    ) -> Result<()> {
        let name = name.as_bytes();
        if dip.is_exhash() {
            return self.hashed_add(dip, name, inum, de_type);
        }
        match self.dirent_alloc(dip, dip.num.addr, name.len()) {
            Some(at) => {
                let block = self.store.get_mut(dip.num.addr);
                fill_dirent(block, at, inum, disk_hash(name), de_type, name);
                Ok(())
            }
            None => {
                self.make_hashed(dip)?;
                self.hashed_add(dip, name, inum, de_type)
            }
        }
    }

    /// Turns a full linear directory into a hashed one with a single leaf.
    fn make_hashed(&mut self, dip: &mut Inode) -> Result<()> {
        let bsize = self.geom.bsize as usize;
        let leaf_addr = self.alloc_meta(dip)?;
        let dirents = self.store.read(dip.num.addr)[DINODE_SIZE..].to_vec();
        let leaf = self.store.fresh(leaf_addr);
        init_block(leaf, MetaType::Leaf);
        set32(leaf, LF_DIRENT_FORMAT, FORMAT_DIRENT);
        set16(leaf, LF_ENTRIES, dip.entries as u16);
        set64(leaf, LF_INODE, dip.num.addr);
        leaf[LEAF_HEADER_SIZE..LEAF_HEADER_SIZE + dirents.len()].copy_from_slice(&dirents);
        // The last live dirent takes the extra room of the bigger area.
        let mut at = LEAF_HEADER_SIZE;
        let mut seen = 0;
        loop {
            if get64(leaf, at + DE_FORMAL) != 0 {
                seen += 1;
                if seen == dip.entries {
                    break;
                }
            }
            match next_dirent(leaf, at) {
                Some(next) => at = next,
                None => break,
            }
        }
        let grown = get16(leaf, at + DE_REC_LEN) as usize + DINODE_SIZE - LEAF_HEADER_SIZE;
        set16(leaf, at + DE_REC_LEN, grown as u16);

        let hash_pointers = bsize / 16;
        let di = self.store.get_mut(dip.num.addr);
        di[DINODE_SIZE..].fill(0);
        for i in 0..hash_pointers {
            set64(di, DINODE_SIZE + 8 * i, leaf_addr);
        }
        dip.size = (bsize / 2) as u64;
        dip.blocks += 1;
        dip.flags |= rgfs::format::consts::dif::EXHASH;
        dip.payload_format = 0;
        dip.depth = hash_pointers.trailing_zeros() as u16;
        Ok(())
    }

    /// Hash table pointer `index` of a hashed directory.
    fn leaf_pointer(&mut self, dip: &mut Inode, index: u32) -> Result<u64> {
        let bytes = self.read(dip, index as u64 * 8, 8)?;
        Ok(get64(&bytes, 0))
    }

    fn hashed_add(&mut self, dip: &mut Inode, name: &[u8], inum: Inum, de_type: u16) -> Result<()> {
        let hash = disk_hash(name);
        'restart: loop {
            let index = if dip.depth == 0 {
                0
            } else {
                hash >> (32 - dip.depth)
            };
            let mut leaf_addr = self.leaf_pointer(dip, index)?;
            loop {
                if let Some(at) = self.dirent_alloc(dip, leaf_addr, name.len()) {
                    let leaf = self.store.get_mut(leaf_addr);
                    fill_dirent(leaf, at, inum, hash, de_type, name);
                    let entries = get16(leaf, LF_ENTRIES);
                    set16(leaf, LF_ENTRIES, entries + 1);
                    return Ok(());
                }
                let leaf = self.store.read(leaf_addr);
                let leaf_depth = get16(&leaf, LF_DEPTH);
                if leaf_depth < dip.depth {
                    let span = 1u32 << (dip.depth - leaf_depth);
                    self.split_leaf(dip, index & !(span - 1), leaf_addr)?;
                    continue 'restart;
                }
                if dip.depth < DIR_MAX_DEPTH {
                    self.double_table(dip)?;
                    continue 'restart;
                }
                let next = get64(&leaf, LF_NEXT);
                if next != 0 {
                    leaf_addr = next;
                    continue;
                }
                // Chain a new leaf of the same depth.
                let new_addr = self.alloc_meta(dip)?;
                let new = self.store.fresh(new_addr);
                init_block(new, MetaType::Leaf);
                set16(new, LF_DEPTH, leaf_depth);
                set32(new, LF_DIRENT_FORMAT, FORMAT_DIRENT);
                set64(new, LF_INODE, dip.num.addr);
                set64(self.store.get_mut(leaf_addr), LF_NEXT, new_addr);
                dip.blocks += 1;
                // The new leaf is empty: its first dirent takes the name.
                leaf_addr = new_addr;
            }
        }
    }

    /// Splits leaf `old_addr`, referenced by the table pointers from
    /// `start`: the lower half of those pointers go to a new leaf, with the
    /// dirents whose hashes fall in that half.
    fn split_leaf(&mut self, dip: &mut Inode, start: u32, old_addr: u64) -> Result<()> {
        let new_addr = self.alloc_meta(dip)?;
        let new = self.store.fresh(new_addr);
        init_block(new, MetaType::Leaf);
        set32(new, LF_DIRENT_FORMAT, FORMAT_DIRENT);

        let old_depth = get16(&self.store.read(old_addr), LF_DEPTH);
        let half = (1u32 << (dip.depth - old_depth)) >> 1;
        let pointers: Vec<u8> = (0..half).flat_map(|_| new_addr.to_be_bytes()).collect();
        self.write(dip, start as u64 * 8, &pointers, true)?;
        let divider = (start + half) << (32 - dip.depth);

        let mut moved = false;
        let mut prev: Option<usize> = None;
        let mut at = Some(LEAF_HEADER_SIZE);
        while let Some(cur) = at {
            let old = self.store.read(old_addr);
            at = next_dirent(&old, cur);
            let hash = get32(&old, cur + DE_HASH);
            if get64(&old, cur + DE_FORMAL) != 0 && hash < divider {
                let name_len = get16(&old, cur + DE_NAME_LEN) as usize;
                let Some(slot) = self.dirent_alloc(dip, new_addr, name_len) else {
                    return Err(Error::invalid("directory leaf split found no room"));
                };
                let new = self.store.get_mut(new_addr);
                new[slot + DE_FORMAL..slot + DE_HASH + 4]
                    .copy_from_slice(&old[cur + DE_FORMAL..cur + DE_HASH + 4]);
                new[slot + DE_TYPE..slot + DE_TYPE + 2]
                    .copy_from_slice(&old[cur + DE_TYPE..cur + DE_TYPE + 2]);
                let name = &old[cur + DIRENT_HEADER_SIZE..cur + DIRENT_HEADER_SIZE + name_len];
                new[slot + DIRENT_HEADER_SIZE..slot + DIRENT_HEADER_SIZE + name_len]
                    .copy_from_slice(name);
                let entries = get16(new, LF_ENTRIES);
                set16(new, LF_ENTRIES, entries + 1);
                self.dirent_del(dip, old_addr, prev, cur);
                if prev.is_none() {
                    prev = Some(cur);
                }
                moved = true;
            } else {
                prev = Some(cur);
            }
        }
        if !moved {
            // An empty leaf: one unused dirent spanning it, not counted.
            self.dirent_alloc(dip, new_addr, 0);
            dip.entries -= 1;
        }
        let depth = old_depth + 1;
        set16(self.store.get_mut(old_addr), LF_DEPTH, depth);
        let new = self.store.get_mut(new_addr);
        set16(new, LF_DEPTH, depth);
        set64(new, LF_INODE, dip.num.addr);
        dip.blocks += 1;
        Ok(())
    }

    /// Doubles the hash table: every pointer is repeated once in place.
    fn double_table(&mut self, dip: &mut Inode) -> Result<()> {
        let half_block = self.geom.bsize as u64 / 2;
        let chunks = dip.size / half_block;
        for chunk in (0..chunks).rev() {
            let old = self.read(dip, chunk * half_block, half_block as usize)?;
            let doubled: Vec<u8> = old
                .chunks_exact(8)
                .flat_map(|p| [p, p])
                .flatten()
                .copied()
                .collect();
            self.write(dip, chunk * self.geom.bsize as u64, &doubled, true)?;
        }
        dip.depth += 1;
        Ok(())
    }
}

impl Inode {
    pub fn is_exhash(&self) -> bool {
        self.flags & rgfs::format::consts::dif::EXHASH != 0
    }
}
