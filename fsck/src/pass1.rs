//! Pass 1: every inode. Visits each block the bitmaps mark as a dinode
//! (or unlinked dinode), plus the root and master directories, and checks
//! the dinode's fields, its metadata tree (pointers inside the filesystem,
//! indirect and directory data blocks of the right type), an exhash
//! directory's hash table and leaves, its extended attribute blocks, and
//! `di_blocks`. Every block found is claimed in the block map; a block
//! claimed twice is left to pass 1b.
//!
//! Pass 2 calls [`check_inode`] for inodes named by a directory entry but
//! missed here (the bitmap lied).

use std::collections::HashSet;

use rgfs::format::consts::{dif, s_if, MetaType, DIR_MAX_DEPTH};
use rgfs::format::dinode::RawDinode;
use rgfs::format::ea::ea_records;
use rgfs::format::meta::{
    block_type, payload_of, pointer_at, pointers, set_pointer, Inum, META_HEADER_SIZE,
};
use rgfs::format::{BlockState, Leaf, OnDisk, DINODE_SIZE};
use zerocopy::FromBytes;

use crate::blockmap::Use;
use crate::check::{Fsck, InodeInfo};
use crate::dir::{dinode_mut, HashTable};
use crate::report::Fix;
use crate::volume::Result;

pub fn run(fs: &mut Fsck) -> Result<()> {
    fs.progress.start("pass1", fs.vol.rgrps.len() as u64);
    let mut todo: Vec<(u64, bool)> = Vec::new();
    for i in 0..fs.vol.rgrps.len() {
        todo.clear();
        let rg = &fs.vol.rgrps[i];
        for idx in 0..rg.ri.data {
            match rgfs::format::bitmap::get(&rg.bitmap, idx) {
                BlockState::Dinode => todo.push((rg.ri.data0 + idx as u64, false)),
                BlockState::Unlinked => todo.push((rg.ri.data0 + idx as u64, true)),
                _ => {}
            }
        }
        for &(addr, unlinked) in &todo {
            if fs.map.get(addr).is_none() {
                check_inode(fs, addr, unlinked)?;
            }
        }
        fs.progress.inc();
    }
    fs.progress.finish();
    for addr in [fs.sys.master, fs.sys.root] {
        if !fs.inodes.contains_key(&addr) && fs.map.get(addr).is_none() {
            check_inode(fs, addr, false)?;
        }
    }
    Ok(())
}

/// Whether `block` holds a dinode for itself (for blocks the bitmap did
/// not mark).
pub fn is_dinode_for(fs: &Fsck, block: u64) -> bool {
    fs.vol.is_data_block(block)
        && fs.vol.read(block).ok().is_some_and(|b| {
            block_type(&b) == Some(MetaType::Dinode)
                && RawDinode::ref_from_prefix(&b)
                    .is_ok_and(|(r, _)| r.di_num.no_addr.get() == block)
        })
}

/// Checks the dinode at `addr`. Returns whether it is kept as an inode.
pub fn check_inode(fs: &mut Fsck, addr: u64, unlinked: bool) -> Result<bool> {
    if fs.rejected.contains(&addr) {
        return Ok(false);
    }
    let kept = check_dinode(fs, addr, unlinked)?;
    if !kept {
        fs.rejected.insert(addr);
    }
    Ok(kept)
}

fn check_dinode(fs: &mut Fsck, addr: u64, unlinked: bool) -> Result<bool> {
    let object = format!("inode {addr}");
    let mut block = fs.vol.read(addr)?;
    let raw = *RawDinode::ref_from_prefix(&block)
        .expect("a block holds a dinode")
        .0;
    if raw.di_header.check(MetaType::Dinode).is_err() {
        // Not a dinode: pass 5 corrects the bitmap, pass 2 the entries.
        return Ok(false);
    }
    let mut dirty = false;
    if raw.di_num.no_addr.get() != addr {
        if fs.problem(
            &object,
            format!(
                "di_num.no_addr is {}, should be its block",
                raw.di_num.no_addr.get()
            ),
            Fix::Safe,
        ) {
            dirty = true;
        }
        dinode_mut(&mut block).di_num.no_addr = addr.into();
    }
    let mode = raw.di_mode.get();
    if rgfs::format::consts::dt_from_mode(mode).is_none() {
        if fs.problem(
            &object,
            format!("di_mode {mode:o} has no valid file type: inode cleared"),
            Fix::Risky,
        ) {
            fs.vol.set_state(addr, BlockState::Free);
        }
        return Ok(false);
    }
    let is_dir = mode & s_if::FMT == s_if::DIR;
    let mut flags = raw.di_flags.get();
    if flags & dif::EXHASH != 0 && !is_dir {
        if fs.problem(&object, "EXHASH flag on a non-directory", Fix::Safe) {
            dirty = true;
        }
        flags &= !dif::EXHASH;
        dinode_mut(&mut block).di_flags = flags.into();
    }
    // A directory flagged EXHASH whose payload is a linear directory's
    // (the linear size and a "." entry naming itself first) lost nothing
    // but a flag bit: clearing it keeps every entry.
    if flags & dif::EXHASH != 0
        && is_dir
        && raw.di_height.get() == 0
        && raw.di_size.get() == fs.vol.geom.max_stuffed()
        && starts_with_dot(&block, addr)
    {
        if fs.problem(&object, "EXHASH flag on a linear directory", Fix::Safe) {
            dirty = true;
        }
        flags &= !dif::EXHASH;
        let d = dinode_mut(&mut block);
        d.di_flags = flags.into();
        d.di_depth = 0.into();
    }
    let exhash = flags & dif::EXHASH != 0;
    if !exhash && raw.di_depth.get() != 0 {
        if fs.problem(
            &object,
            format!(
                "di_depth {} on an inode that is not a hashed directory; set to 0",
                raw.di_depth.get()
            ),
            Fix::Safe,
        ) {
            dirty = true;
        }
        dinode_mut(&mut block).di_depth = 0.into();
    }
    let height = raw.di_height.get();
    let max_height = if is_dir {
        fs.vol.geom.max_jheight
    } else {
        fs.vol.geom.max_height
    };
    if height >= max_height || (is_dir && !exhash && height != 0) {
        if fs.problem(
            &object,
            format!("di_height {height} is impossible: inode cleared"),
            Fix::Risky,
        ) {
            fs.vol.set_state(addr, BlockState::Free);
        }
        return Ok(false);
    }
    for (name, nsec) in [
        ("di_atime_nsec", raw.di_atime_nsec.get()),
        ("di_mtime_nsec", raw.di_mtime_nsec.get()),
        ("di_ctime_nsec", raw.di_ctime_nsec.get()),
    ] {
        if nsec >= 1_000_000_000 {
            if fs.problem(
                &object,
                format!("{name} is {nsec}, not below 10^9"),
                Fix::Safe,
            ) {
                dirty = true;
            }
            let d = dinode_mut(&mut block);
            match name {
                "di_atime_nsec" => d.di_atime_nsec = 0.into(),
                "di_mtime_nsec" => d.di_mtime_nsec = 0.into(),
                _ => d.di_ctime_nsec = 0.into(),
            }
        }
    }
    // The allocation goal of an ordinary inode must lie inside the
    // filesystem (fsck.gfs2 checks the same; system inodes are exempt).
    let goal = raw.di_goal_meta.get();
    if flags & dif::SYSTEM == 0 && (goal <= fs.vol.geom.sb_addr() || goal > fs.vol.fs_blocks()) {
        if fs.problem(
            &object,
            format!("di_goal_meta {goal} is outside the filesystem; set to the inode's block"),
            Fix::Safe,
        ) {
            dirty = true;
        }
        dinode_mut(&mut block).di_goal_meta = addr.into();
    }
    let size = raw.di_size.get();
    let max_stuffed = fs.vol.geom.max_stuffed();
    if exhash {
        let depth = raw.di_depth.get();
        let want = if depth <= DIR_MAX_DEPTH {
            8u64 << depth
        } else {
            0
        };
        if size != want {
            // The depth is right if the table fits it; otherwise the size is.
            let depth_from_size = (size >= 8
                && (size / 8).is_power_of_two()
                && (size / 8).trailing_zeros() <= DIR_MAX_DEPTH as u32)
                .then(|| (size / 8).trailing_zeros() as u16);
            if want != 0 && (height > 0 || want <= max_stuffed) {
                if fs.problem(
                    &object,
                    format!("di_size {size} does not match di_depth {depth} (should be {want})"),
                    Fix::Safe,
                ) {
                    dirty = true;
                }
                dinode_mut(&mut block).di_size = want.into();
            } else if let Some(d) = depth_from_size {
                if fs.problem(
                    &object,
                    format!("di_depth {depth} does not match di_size {size} (should be {d})"),
                    Fix::Safe,
                ) {
                    dirty = true;
                }
                dinode_mut(&mut block).di_depth = d.into();
            } else {
                if fs.problem(&object, format!("hash table size {size} and depth {depth} are both impossible: inode cleared"), Fix::Risky) {
                    fs.vol.set_state(addr, BlockState::Free);
                }
                return Ok(false);
            }
        }
        if height == 0 && dinode_mut(&mut block).di_size.get() > max_stuffed {
            if fs.problem(
                &object,
                "stuffed hash table larger than the dinode: inode cleared",
                Fix::Risky,
            ) {
                fs.vol.set_state(addr, BlockState::Free);
            }
            return Ok(false);
        }
    } else if height == 0 && size > max_stuffed && !is_dir {
        if fs.problem(
            &object,
            format!("di_size {size} is larger than a stuffed inode holds; set to {max_stuffed}"),
            Fix::Risky,
        ) {
            dirty = true;
        }
        dinode_mut(&mut block).di_size = max_stuffed.into();
    } else if is_dir && !exhash && size != max_stuffed {
        if fs.problem(
            &object,
            format!("di_size {size} of a linear directory should be {max_stuffed}"),
            Fix::Safe,
        ) {
            dirty = true;
        }
        dinode_mut(&mut block).di_size = max_stuffed.into();
    }

    // The inode is kept from here on: claim its blocks.
    fs.claim(addr, Use::Dinode, addr);
    let mut counted: u64 = 1;
    let mut dir_data: Vec<u64> = Vec::new();
    if height > 0 {
        let mut top = block[DINODE_SIZE..].to_vec();
        let changed = walk(
            fs,
            addr,
            &mut top,
            0,
            height,
            is_dir,
            &mut counted,
            &mut dir_data,
        )?;
        if changed {
            block[DINODE_SIZE..].copy_from_slice(&top);
            dirty = true;
        }
    }
    if exhash {
        let table = read_table(fs, &block, &dir_data);
        claim_leaves(fs, addr, &table, &mut counted)?;
        fs.tables.insert(addr, table);
    }
    let eattr = raw.di_eattr.get();
    if eattr != 0 && !check_xattrs(fs, addr, eattr, flags & dif::EA_INDIRECT != 0, &mut counted)? {
        dirty = true;
        let d = dinode_mut(&mut block);
        d.di_eattr = 0.into();
        d.di_flags = (d.di_flags.get() & !dif::EA_INDIRECT).into();
    }
    let stored = raw.di_blocks.get();
    if stored != counted {
        if fs.problem(
            &object,
            format!("di_blocks is {stored}, but the inode uses {counted} blocks"),
            Fix::Safe,
        ) {
            dirty = true;
        }
        dinode_mut(&mut block).di_blocks = counted.into();
    }
    if dirty && fs.vol.writable {
        fs.vol.write(addr, &block)?;
    }
    let d = dinode_mut(&mut block);
    fs.inodes.insert(
        addr,
        InodeInfo {
            formal: d.di_num.no_formal_ino.get(),
            mode,
            flags: d.di_flags.get(),
            nlink: d.di_nlink.get(),
            size: d.di_size.get(),
            eattr: d.di_eattr.get(),
            refs: 0,
            dotdot: None,
            unlinked,
        },
    );
    Ok(true)
}

/// Walks one level of a metadata tree (`ptrs` is the dinode's or an
/// indirect block's pointer array) and claims what it finds. Bad pointers
/// are zeroed in `ptrs`; returns whether `ptrs` changed.
#[allow(clippy::too_many_arguments)]
fn walk(
    fs: &mut Fsck,
    owner: u64,
    ptrs: &mut [u8],
    level: usize,
    height: u16,
    is_dir: bool,
    counted: &mut u64,
    dir_data: &mut Vec<u64>,
) -> Result<bool> {
    let object = format!("inode {owner}");
    let n = ptrs.len() / 8;
    let mut changed = false;
    let leaf_level = level + 1 == height as usize;
    for i in 0..n {
        let p = pointer_at(ptrs, i);
        if p == 0 {
            continue;
        }
        let mut drop = |fs: &mut Fsck, why: String| -> bool {
            let allowed = fs.problem(&object, why, Fix::Risky);
            if allowed {
                set_pointer(ptrs, i, 0);
            }
            allowed
        };
        if !fs.vol.is_data_block(p) {
            changed |= drop(fs, format!("pointer {i} at height {level} is {p}, outside the filesystem's data blocks: removed"));
            continue;
        }
        if leaf_level && !is_dir {
            if fs.sys.quota_changes.iter().any(|&(_, q)| q == owner) {
                check_quota_change_block(fs, owner, p)?;
            }
            fs.claim(p, Use::Data, owner);
            *counted += 1;
            continue;
        }
        let mut child = fs.vol.read(p)?;
        let want = if leaf_level {
            MetaType::Jdata
        } else {
            MetaType::Indirect
        };
        if let Err(e) = payload_of(&child, want) {
            changed |= drop(
                fs,
                format!(
                    "block {p} (pointer {i} at height {level}) should be a {}: {e}: removed",
                    want.name()
                ),
            );
            continue;
        }
        *counted += 1;
        if leaf_level {
            fs.claim(p, Use::DirData, owner);
            dir_data.push(p);
            continue;
        }
        // An indirect block already claimed is not walked again: a tree
        // whose pointers loop or repeat would otherwise cost inptrs^height.
        let first_claim = fs.map.get(p).is_none();
        fs.claim(p, Use::Indirect, owner);
        if !first_claim {
            continue;
        }
        let child_changed = walk(
            fs,
            owner,
            &mut child[META_HEADER_SIZE..],
            level + 1,
            height,
            is_dir,
            counted,
            dir_data,
        )?;
        if child_changed && fs.vol.writable {
            fs.vol.write(p, &child)?;
        }
    }
    Ok(changed)
}

/// The hash table of an exhash directory from its stuffed payload or its
/// directory data blocks (missing parts read as zero pointers, which pass 2
/// repairs).
fn read_table(fs: &Fsck, block: &[u8], dir_data: &[u64]) -> HashTable {
    let raw = RawDinode::ref_from_prefix(block).expect("dinode").0;
    let size = raw.di_size.get() as usize;
    let mut bytes = Vec::with_capacity(size);
    if raw.di_height.get() == 0 {
        bytes.extend_from_slice(
            &block[DINODE_SIZE..DINODE_SIZE + size.min(block.len() - DINODE_SIZE)],
        );
    } else {
        for &b in dir_data {
            if let Ok(buf) = fs.vol.read(b) {
                bytes.extend_from_slice(&buf[META_HEADER_SIZE..]);
            }
        }
    }
    bytes.resize(size, 0);
    HashTable {
        ptrs: pointers(&bytes).collect(),
        blocks: if raw.di_height.get() == 0 {
            Vec::new()
        } else {
            dir_data.to_vec()
        },
    }
}

/// Claims the leaves (and their chains) of a hash table. Pointers to
/// anything that is not a leaf are left for pass 2 to repair.
fn claim_leaves(fs: &mut Fsck, dir: u64, table: &HashTable, counted: &mut u64) -> Result<()> {
    let mut seen = HashSet::new();
    for &p in &table.ptrs {
        let mut next = p;
        while next != 0 && seen.insert(next) && fs.vol.is_data_block(next) {
            let Ok(buf) = fs.vol.read(next) else { break };
            let Ok(leaf) = Leaf::decode(&buf) else { break };
            fs.claim(next, Use::Leaf, dir);
            *counted += 1;
            next = leaf.next;
        }
    }
    Ok(())
}

/// Checks the extended attributes of `owner`. Returns `false` when the
/// whole attribute tree is dropped (the caller clears `di_eattr`).
fn check_xattrs(
    fs: &mut Fsck,
    owner: u64,
    eattr: u64,
    indirect: bool,
    counted: &mut u64,
) -> Result<bool> {
    let object = format!("inode {owner}");
    if !fs.vol.is_data_block(eattr) {
        return Ok(!fs.problem(
            &object,
            format!("xattr block pointer {eattr} is outside the filesystem: xattrs removed"),
            Fix::Risky,
        ));
    }
    if !indirect {
        return match ea_block_ok(fs, eattr) {
            Ok(data) => {
                claim_ea(fs, owner, eattr, &data, counted);
                Ok(true)
            }
            Err(why) => Ok(!fs.problem(
                &object,
                format!("xattr block {eattr}: {why}: xattrs removed"),
                Fix::Risky,
            )),
        };
    }
    let mut ind = fs.vol.read(eattr)?;
    if let Err(e) = payload_of(&ind, MetaType::Indirect) {
        return Ok(!fs.problem(
            &object,
            format!("xattr indirect block {eattr}: {e}: xattrs removed"),
            Fix::Risky,
        ));
    }
    // The list of EA blocks ends at the first zero pointer (the kernel
    // stops there); a bad pointer is taken out and the rest moved up.
    let n = (ind.len() - META_HEADER_SIZE) / 8;
    let mut kept: Vec<(u64, Vec<u64>)> = Vec::new();
    let mut changed = false;
    for i in 0..n {
        let p = pointer_at(&ind[META_HEADER_SIZE..], i);
        if p == 0 {
            break;
        }
        let verdict = if fs.vol.is_data_block(p) {
            ea_block_ok(fs, p)
        } else {
            Err("outside the filesystem".to_string())
        };
        match verdict {
            Ok(data) => kept.push((p, data)),
            Err(why) => {
                if fs.problem(&object, format!("xattr block {p} (pointer {i} of indirect block {eattr}): {why}: its xattrs removed"), Fix::Risky) {
                    changed = true;
                } else {
                    // Not repaired: count it as the inode's, as it stands.
                    kept.push((p, Vec::new()));
                }
            }
        }
    }
    if kept.is_empty() && changed {
        return Ok(false);
    }
    fs.claim(eattr, Use::EaIndirect, owner);
    *counted += 1;
    for (p, data) in &kept {
        claim_ea(fs, owner, *p, data, counted);
    }
    if changed && fs.vol.writable {
        ind[META_HEADER_SIZE..].fill(0);
        for (i, (p, _)) in kept.iter().enumerate() {
            set_pointer(&mut ind[META_HEADER_SIZE..], i, *p);
        }
        fs.vol.write(eattr, &ind)?;
    }
    Ok(true)
}

/// Verifies an EA block and its records; returns the EA data blocks the
/// records point to.
fn ea_block_ok(fs: &Fsck, block: u64) -> Result<Vec<u64>, String> {
    let buf = fs.vol.read(block).map_err(|e| e.to_string())?;
    payload_of(&buf, MetaType::Ea).map_err(|e| e.to_string())?;
    let records = ea_records(&buf, fs.vol.geom.bsize).map_err(|e| e.to_string())?;
    let mut data = Vec::new();
    for r in records.iter().filter(|r| r.is_used()) {
        for p in r.value.pointers() {
            if !fs.vol.is_data_block(p) {
                return Err(format!("xattr data pointer {p} is outside the filesystem"));
            }
            let ed = fs.vol.read(p).map_err(|e| e.to_string())?;
            payload_of(&ed, MetaType::EaData).map_err(|e| format!("xattr data block {p}: {e}"))?;
            data.push(p);
        }
    }
    Ok(data)
}

fn claim_ea(fs: &mut Fsck, owner: u64, block: u64, data: &[u64], counted: &mut u64) {
    fs.claim(block, Use::Ea, owner);
    *counted += 1;
    for &d in data {
        fs.claim(d, Use::EaData, owner);
        *counted += 1;
    }
}

/// The inode number stored in a dinode block.
pub fn inum_of(block: &[u8]) -> Inum {
    let raw = RawDinode::ref_from_prefix(block).expect("dinode").0;
    Inum::from(&raw.di_num)
}

/// A data block of a quota_change file must carry the QC header; one that
/// does not is made an empty quota change block (its pending changes are
/// unreadable anyway; quota values are recounted by quotacheck).
fn check_quota_change_block(fs: &mut Fsck, owner: u64, block: u64) -> Result<()> {
    let buf = fs.vol.read(block)?;
    if block_type(&buf) == Some(MetaType::QuotaChange) {
        return Ok(());
    }
    if fs.problem(
        format!("inode {owner}"),
        format!("quota change block {block} has no quota change header: emptied"),
        Fix::Risky,
    ) {
        let mut fresh = vec![0u8; fs.vol.bsize()];
        rgfs::format::meta::init_block(&mut fresh, MetaType::QuotaChange);
        fs.vol.write(block, &fresh)?;
    }
    Ok(())
}

/// Whether the payload of dinode block `block` starts with a "." entry
/// naming `addr` (the first entry of a linear directory).
fn starts_with_dot(block: &[u8], addr: u64) -> bool {
    use rgfs::format::dirent::{RawDirent, DIRENT_HEADER_SIZE};
    let area = &block[DINODE_SIZE..];
    let Ok((h, _)) = RawDirent::ref_from_prefix(area) else {
        return false;
    };
    h.de_name_len.get() == 1 && area[DIRENT_HEADER_SIZE] == b'.' && h.de_inum.no_addr.get() == addr
}
