//! Reading and editing directories on a [`Volume`]: linear (stuffed)
//! directories and exhash directories (hash table, leaves, chains).
//!
//! Reading is forgiving: a damaged dirent area yields the entries before the
//! damage (pass 2 reports and repairs damage; other passes only need the
//! names). Editing follows the kernel's rules (docs/disk-format.md §6): a full
//! linear directory becomes exhash with a stuffed table of `bsize / 16`
//! pointers; a full leaf splits while its depth is below the table's, the
//! table doubles (moving into JD blocks when it outgrows the dinode) up to
//! depth 17, and only then leaves are chained.
//!
//! Invariants kept by every edit: `di_entries` counts the used dirents,
//! `lf_entries` those of its leaf, `di_blocks` every block the directory
//! owns, and a leaf of depth `d` is referenced by `2^(di_depth - d)`
//! aligned, consecutive table pointers.

use rgfs::format::checksum::disk_hash;
use rgfs::format::consts::{dif, DIR_MAX_DEPTH, FORMAT_DIRENT};
use rgfs::format::dinode::RawDinode;
use rgfs::format::dirent::{self, dirent_size, RawDirent, DIRENT_HEADER_SIZE};
use rgfs::format::leaf::RawLeaf;
use rgfs::format::meta::{init_block, payload_of, Inum, META_HEADER_SIZE};
use rgfs::format::{BlockState, Dinode, Leaf, MetaType, OnDisk, DINODE_SIZE, LEAF_HEADER_SIZE};
use rgfs::meta_tree::data_blocks;
use zerocopy::FromBytes;

use crate::blockmap::Use;
use crate::volume::{fatal, Result, Volume};

/// One used directory entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub name: Vec<u8>,
    pub inum: Inum,
    pub de_type: u16,
}

/// A mutable view of the dinode at the start of `block`.
pub fn dinode_mut(block: &mut [u8]) -> &mut RawDinode {
    RawDinode::mut_from_prefix(block)
        .expect("a block holds a dinode")
        .0
}

pub fn leaf_mut(block: &mut [u8]) -> &mut RawLeaf {
    RawLeaf::mut_from_prefix(block)
        .expect("a block holds a leaf header")
        .0
}

/// Index of the hash table pointer for `hash` in a table of depth `depth`.
pub fn hash_index(hash: u32, depth: u16) -> usize {
    if depth == 0 {
        0
    } else {
        (hash >> (32 - depth as u32)) as usize
    }
}

/// An exhash directory's hash table and where it is stored.
#[derive(Clone, Debug, Default)]
pub struct HashTable {
    pub ptrs: Vec<u64>,
    /// The JD blocks holding it, in order; empty when stuffed in the dinode.
    pub blocks: Vec<u64>,
}

/// Reads the hash table of an exhash directory whose dinode is `block`.
pub fn read_hash_table(vol: &Volume, block: &[u8]) -> Result<HashTable> {
    let d = Dinode::decode(block).map_err(|e| crate::volume::FsckError::Fatal(e.to_string()))?;
    let size = 8u64 << d.depth;
    if d.size != size {
        return fatal(format!(
            "directory {}: di_size {} is not 8 * 2^di_depth",
            d.num.addr, d.size
        ));
    }
    let mut bytes = Vec::with_capacity(size as usize);
    let mut blocks = Vec::new();
    if d.height == 0 {
        if size > vol.geom.max_stuffed() {
            return fatal(format!(
                "directory {}: stuffed hash table larger than the block",
                d.num.addr
            ));
        }
        bytes.extend_from_slice(&block[DINODE_SIZE..DINODE_SIZE + size as usize]);
    } else {
        let jb = vol.geom.jbsize as u64;
        let n = size.div_ceil(jb);
        let reader = (vol.dev, &vol.geom);
        let list = data_blocks(&vol.geom, block, n, vol.block_limit(), &reader)
            .map_err(|e| crate::volume::FsckError::Fatal(e.to_string()))?;
        for (i, b) in list.into_iter().enumerate() {
            let Some(b) = b else {
                return fatal(format!(
                    "directory {}: hole in the hash table at block {i}",
                    d.num.addr
                ));
            };
            let buf = vol.read(b)?;
            let payload = payload_of(&buf, MetaType::Jdata)
                .map_err(|e| crate::volume::FsckError::Fatal(format!("block {b}: {e}")))?;
            let want = (size - bytes.len() as u64).min(jb) as usize;
            bytes.extend_from_slice(&payload[..want]);
            blocks.push(b);
        }
    }
    let ptrs = rgfs::format::meta::pointers(&bytes).collect();
    Ok(HashTable { ptrs, blocks })
}

/// Writes a hash table back where it lives (stuffed in `dinode_block`,
/// which the caller writes, or in its JD blocks).
pub fn write_hash_table(vol: &Volume, dinode_block: &mut [u8], table: &HashTable) -> Result<()> {
    let bytes: Vec<u8> = table.ptrs.iter().flat_map(|p| p.to_be_bytes()).collect();
    if table.blocks.is_empty() {
        let end = DINODE_SIZE + bytes.len();
        dinode_block[DINODE_SIZE..end].copy_from_slice(&bytes);
        dinode_block[end..].fill(0);
        return Ok(());
    }
    let jb = vol.geom.jbsize as usize;
    for (i, &b) in table.blocks.iter().enumerate() {
        let mut buf = vec![0u8; vol.bsize()];
        init_block(&mut buf, MetaType::Jdata);
        let part = &bytes[(i * jb).min(bytes.len())..((i + 1) * jb).min(bytes.len())];
        buf[META_HEADER_SIZE..META_HEADER_SIZE + part.len()].copy_from_slice(part);
        vol.write(b, &buf)?;
    }
    Ok(())
}

/// The leaves of a hash table in table order, each once, followed along
/// their chains. Stops a chain at a block that is not a leaf or repeats.
pub fn leaves(vol: &Volume, table: &HashTable) -> Vec<u64> {
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for &p in &table.ptrs {
        let mut next = p;
        while next != 0 && vol.is_data_block(next) && seen.insert(next) {
            out.push(next);
            let Ok(buf) = vol.read(next) else { break };
            let Ok(leaf) = Leaf::decode(&buf) else { break };
            next = leaf.next;
        }
    }
    out
}

/// The used entries of a dirent area, walked by `rec_len` alone: names
/// with a bad hash are still found (pass 2 repairs them; lookups of system
/// files must not fail before it runs). Stops where the tiling breaks.
fn collect(area: &[u8], out: &mut Vec<Entry>) {
    let mut off = 0;
    while off + DIRENT_HEADER_SIZE <= area.len() {
        let raw = RawDirent::ref_from_prefix(&area[off..])
            .expect("40 bytes")
            .0;
        let rec_len = raw.de_rec_len.get() as usize;
        let name_len = raw.de_name_len.get() as usize;
        if rec_len < DIRENT_HEADER_SIZE || !rec_len.is_multiple_of(8) || off + rec_len > area.len()
        {
            break;
        }
        let inum = Inum::from(&raw.de_inum);
        if !inum.is_zero() && name_len > 0 && DIRENT_HEADER_SIZE + name_len <= rec_len {
            out.push(Entry {
                name: area[off + DIRENT_HEADER_SIZE..off + DIRENT_HEADER_SIZE + name_len].to_vec(),
                inum,
                de_type: raw.de_type.get(),
            });
        }
        off += rec_len;
    }
}

/// The used entries of directory `addr`, best effort (see module doc).
pub fn entries(vol: &Volume, addr: u64) -> Result<Vec<Entry>> {
    let block = vol.read(addr)?;
    let Ok(d) = Dinode::decode(&block) else {
        return fatal(format!("block {addr} is not a dinode"));
    };
    if !d.is_dir() {
        return fatal(format!("inode {addr} is not a directory"));
    }
    let mut out = Vec::new();
    if !d.is_exhash() {
        collect(&block[DINODE_SIZE..], &mut out);
        return Ok(out);
    }
    let table = read_hash_table(vol, &block)?;
    for leaf in leaves(vol, &table) {
        let buf = vol.read(leaf)?;
        if Leaf::decode(&buf).is_ok() {
            collect(&buf[LEAF_HEADER_SIZE..], &mut out);
        }
    }
    Ok(out)
}

/// Looks `name` up in directory `addr`.
pub fn lookup(vol: &Volume, addr: u64, name: &[u8]) -> Result<Option<Entry>> {
    Ok(entries(vol, addr)?.into_iter().find(|e| e.name == name))
}

/// Blocks a directory edit allocated, with their use, for the caller's
/// block map.
pub type Allocated = Vec<(u64, Use)>;

fn alloc(
    vol: &mut Volume,
    near: u64,
    usable: &dyn Fn(u64) -> bool,
    usage: Use,
    got: &mut Allocated,
) -> Result<u64> {
    match vol.alloc(near, BlockState::Used, usable) {
        Some(b) => {
            got.push((b, usage));
            Ok(b)
        }
        None => fatal("no free block left for a directory block"),
    }
}

fn new_leaf(vol: &Volume, dir: u64, depth: u16, dist: u32) -> Vec<u8> {
    let mut buf = vec![0u8; vol.bsize()];
    let leaf = Leaf {
        depth,
        entries: 0,
        next: 0,
        inode: dir,
        dist,
        nsec: 0,
        sec: 0,
    };
    leaf.encode_into(&mut buf);
    dirent::init_empty(&mut buf[LEAF_HEADER_SIZE..]);
    buf
}

/// Adds `name` → `inum` to directory `dir`. New blocks are taken from
/// the bitmaps among those `usable` accepts and returned. Does not change
/// link counts.
pub fn insert(
    vol: &mut Volume,
    dir: u64,
    name: &[u8],
    inum: Inum,
    de_type: u16,
    usable: &dyn Fn(u64) -> bool,
) -> Result<Allocated> {
    let mut got = Allocated::new();
    let mut block = vol.read(dir)?;
    let d = Dinode::decode(&block)
        .map_err(|e| crate::volume::FsckError::Fatal(format!("directory {dir}: {e}")))?;
    if !d.is_exhash() {
        let area = &mut block[DINODE_SIZE..];
        let placed = dirent::insert(area, inum, name, de_type)
            .map_err(|e| crate::volume::FsckError::Fatal(format!("directory {dir}: {e}")))?;
        if placed.is_some() {
            let raw = dinode_mut(&mut block);
            raw.di_entries = (raw.di_entries.get() + 1).into();
            vol.write(dir, &block)?;
            return Ok(got);
        }
        convert_to_exhash(vol, dir, &mut block, usable, &mut got)?;
    }
    exhash_insert(vol, dir, &mut block, name, inum, de_type, usable, &mut got)?;
    Ok(got)
}

/// Turns a full linear directory into an exhash one with one leaf (the
/// kernel's layout: a stuffed table of `bsize / 16` pointers).
fn convert_to_exhash(
    vol: &mut Volume,
    dir: u64,
    block: &mut [u8],
    usable: &dyn Fn(u64) -> bool,
    got: &mut Allocated,
) -> Result<()> {
    let bsize = vol.bsize();
    let leaf_addr = alloc(vol, dir, usable, Use::Leaf, got)?;
    let mut leaf = new_leaf(vol, dir, 0, 1);
    let entries = dinode_mut(block).di_entries.get();
    leaf_mut(&mut leaf).lf_entries = (entries as u16).into();
    leaf[LEAF_HEADER_SIZE..LEAF_HEADER_SIZE + (bsize - DINODE_SIZE)]
        .copy_from_slice(&block[DINODE_SIZE..]);
    // The last dirent grows by the difference of the two header sizes.
    let area = &mut leaf[LEAF_HEADER_SIZE..];
    let mut last = 0;
    for d in dirent::dirents(area).flatten() {
        last = d.offset;
    }
    let raw = RawDirent::mut_from_prefix(&mut area[last..])
        .expect("dirent")
        .0;
    raw.de_rec_len = (raw.de_rec_len.get() + (DINODE_SIZE - LEAF_HEADER_SIZE) as u16).into();
    vol.write(leaf_addr, &leaf)?;
    let nptrs = bsize / 16;
    let depth = nptrs.trailing_zeros() as u16;
    let table = HashTable {
        ptrs: vec![leaf_addr; nptrs],
        blocks: Vec::new(),
    };
    write_hash_table(vol, block, &table)?;
    let raw = dinode_mut(block);
    raw.di_flags = (raw.di_flags.get() | dif::EXHASH).into();
    raw.di_size = ((nptrs * 8) as u64).into();
    raw.di_depth = depth.into();
    raw.di_blocks = (raw.di_blocks.get() + 1).into();
    raw.di_payload_format = 0.into();
    vol.write(dir, block)?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn exhash_insert(
    vol: &mut Volume,
    dir: u64,
    block: &mut [u8],
    name: &[u8],
    inum: Inum,
    de_type: u16,
    usable: &dyn Fn(u64) -> bool,
    got: &mut Allocated,
) -> Result<()> {
    let hash = disk_hash(name);
    // Each round either places the entry or grows the directory (split,
    // double, chain); the depth bound makes the loop finite.
    for _ in 0..(2 * DIR_MAX_DEPTH as usize + 4) {
        let mut table = read_hash_table(vol, block)?;
        let depth = dinode_mut(block).di_depth.get();
        let index = hash_index(hash, depth);
        let first = table.ptrs[index];
        let mut leaf_addr = first;
        let mut last_in_chain;
        loop {
            let mut leaf = vol.read(leaf_addr)?;
            let lf = Leaf::decode(&leaf)
                .map_err(|e| crate::volume::FsckError::Fatal(format!("leaf {leaf_addr}: {e}")))?;
            let placed = dirent::insert(&mut leaf[LEAF_HEADER_SIZE..], inum, name, de_type)
                .map_err(|e| crate::volume::FsckError::Fatal(format!("leaf {leaf_addr}: {e}")))?;
            if placed.is_some() {
                let raw = leaf_mut(&mut leaf);
                raw.lf_entries = (raw.lf_entries.get() + 1).into();
                vol.write(leaf_addr, &leaf)?;
                let raw = dinode_mut(block);
                raw.di_entries = (raw.di_entries.get() + 1).into();
                vol.write(dir, block)?;
                return Ok(());
            }
            last_in_chain = (leaf_addr, lf);
            if lf.next == 0 {
                break;
            }
            leaf_addr = lf.next;
        }
        let (first_leaf, first_lf) = {
            let buf = vol.read(first)?;
            (
                first,
                Leaf::decode(&buf).map_err(|e| crate::volume::FsckError::Fatal(e.to_string()))?,
            )
        };
        if first_lf.depth < depth && first_lf.next == 0 {
            split_leaf(vol, dir, block, &mut table, index, first_leaf, usable, got)?;
        } else if depth < DIR_MAX_DEPTH && first_lf.next == 0 {
            double_table(vol, dir, block, &mut table, usable, got)?;
        } else {
            // Chain a new leaf after the last one.
            let (last_addr, last_lf) = last_in_chain;
            let new_addr = alloc(vol, dir, usable, Use::Leaf, got)?;
            let leaf = new_leaf(vol, dir, last_lf.depth, last_lf.dist.saturating_add(1));
            vol.write(new_addr, &leaf)?;
            let mut last = vol.read(last_addr)?;
            leaf_mut(&mut last).lf_next = new_addr.into();
            vol.write(last_addr, &last)?;
            let raw = dinode_mut(block);
            raw.di_blocks = (raw.di_blocks.get() + 1).into();
            vol.write(dir, block)?;
        }
    }
    fatal(format!("directory {dir}: no room for a new entry"))
}

/// Splits the leaf at table `index` (depth below the table's): a new leaf
/// takes the lower half of its pointers and the entries hashing there.
#[allow(clippy::too_many_arguments)]
fn split_leaf(
    vol: &mut Volume,
    dir: u64,
    block: &mut [u8],
    table: &mut HashTable,
    index: usize,
    old_addr: u64,
    usable: &dyn Fn(u64) -> bool,
    got: &mut Allocated,
) -> Result<()> {
    let depth = dinode_mut(block).di_depth.get();
    let mut old = vol.read(old_addr)?;
    let old_depth = leaf_mut(&mut old).lf_depth.get();
    let len = 1usize << (depth - old_depth);
    let start = index & !(len - 1);
    let half = len / 2;
    let new_addr = alloc(vol, dir, usable, Use::Leaf, got)?;
    let mut new = new_leaf(vol, dir, old_depth + 1, 1);
    let moving: Vec<Entry> = {
        let mut all = Vec::new();
        collect(&old[LEAF_HEADER_SIZE..], &mut all);
        all.into_iter()
            .filter(|e| hash_index(disk_hash(&e.name), depth) < start + half)
            .collect()
    };
    for e in &moving {
        dirent::insert(&mut new[LEAF_HEADER_SIZE..], e.inum, &e.name, e.de_type)
            .map_err(|e| crate::volume::FsckError::Fatal(e.to_string()))?
            .expect("entries of half a leaf fit in an empty leaf");
        dirent::remove(&mut old[LEAF_HEADER_SIZE..], &e.name)
            .map_err(|e| crate::volume::FsckError::Fatal(e.to_string()))?;
    }
    let n = moving.len() as u16;
    leaf_mut(&mut new).lf_entries = n.into();
    let raw = leaf_mut(&mut old);
    raw.lf_entries = (raw.lf_entries.get() - n).into();
    raw.lf_depth = (old_depth + 1).into();
    vol.write(new_addr, &new)?;
    vol.write(old_addr, &old)?;
    for p in &mut table.ptrs[start..start + half] {
        *p = new_addr;
    }
    write_hash_table(vol, block, table)?;
    let raw = dinode_mut(block);
    raw.di_blocks = (raw.di_blocks.get() + 1).into();
    vol.write(dir, block)?;
    Ok(())
}

/// Doubles the hash table (each pointer duplicated in place), moving it
/// into JD blocks reached from the dinode when it no longer fits there.
fn double_table(
    vol: &mut Volume,
    dir: u64,
    block: &mut [u8],
    table: &mut HashTable,
    usable: &dyn Fn(u64) -> bool,
    got: &mut Allocated,
) -> Result<()> {
    let ptrs: Vec<u64> = table.ptrs.iter().flat_map(|&p| [p, p]).collect();
    let size = (ptrs.len() * 8) as u64;
    let raw = dinode_mut(block);
    let depth = raw.di_depth.get() + 1;
    let mut new_blocks = 0u64;
    if size > vol.geom.max_stuffed() {
        let need = size.div_ceil(vol.geom.jbsize as u64) as usize;
        if need > vol.geom.diptrs as usize {
            return fatal(format!(
                "directory {dir}: hash table too large for a tree of height 1"
            ));
        }
        while table.blocks.len() < need {
            let b = alloc(vol, dir, usable, Use::DirData, got)?;
            table.blocks.push(b);
            new_blocks += 1;
        }
        // Height 1: the JD block pointers live in the dinode.
        let end = DINODE_SIZE + 8 * table.blocks.len();
        for (i, b) in table.blocks.iter().enumerate() {
            block[DINODE_SIZE + 8 * i..DINODE_SIZE + 8 * i + 8].copy_from_slice(&b.to_be_bytes());
        }
        block[end..].fill(0);
        dinode_mut(block).di_height = 1.into();
    }
    table.ptrs = ptrs;
    write_hash_table(vol, block, table)?;
    let raw = dinode_mut(block);
    raw.di_depth = depth.into();
    raw.di_size = size.into();
    raw.di_blocks = (raw.di_blocks.get() + new_blocks).into();
    vol.write(dir, block)?;
    Ok(())
}

/// Where [`edit_entry_area`] found the entry.
enum Area {
    /// In the dinode block (a linear directory).
    Dinode,
    /// In this leaf, whose edited block is returned for writing.
    Leaf(u64, Vec<u8>),
}

/// Applies `edit` to the dirent area of directory `dir` that holds `name`:
/// the dinode's payload of a linear directory, or each leaf of the name's
/// hash chain until `edit` returns `Some`. `block` is the directory's
/// dinode block; nothing is written.
fn edit_entry_area<T>(
    vol: &Volume,
    dir: u64,
    block: &mut [u8],
    name: &[u8],
    mut edit: impl FnMut(&mut [u8]) -> rgfs::format::Result<Option<T>>,
) -> Result<Option<(T, Area)>> {
    let err = |e: rgfs::format::FormatError| {
        crate::volume::FsckError::Fatal(format!("directory {dir}: {e}"))
    };
    let d = Dinode::decode(block).map_err(err)?;
    if !d.is_exhash() {
        return Ok(edit(&mut block[DINODE_SIZE..])
            .map_err(err)?
            .map(|t| (t, Area::Dinode)));
    }
    let table = read_hash_table(vol, block)?;
    let mut leaf_addr = table.ptrs[hash_index(disk_hash(name), d.depth)];
    let mut hops = 0;
    while leaf_addr != 0 && hops < 1 << 16 {
        let mut leaf = vol.read(leaf_addr)?;
        let lf = Leaf::decode(&leaf).map_err(err)?;
        if let Some(t) = edit(&mut leaf[LEAF_HEADER_SIZE..]).map_err(err)? {
            return Ok(Some((t, Area::Leaf(leaf_addr, leaf))));
        }
        leaf_addr = lf.next;
        hops += 1;
    }
    Ok(None)
}

/// Removes the entry `name` from directory `dir`; returns it if present.
/// Does not change link counts.
pub fn remove(vol: &Volume, dir: u64, name: &[u8]) -> Result<Option<Entry>> {
    let mut block = vol.read(dir)?;
    let Some(((inum, de_type), area)) =
        edit_entry_area(vol, dir, &mut block, name, |a| dirent::remove(a, name))?
    else {
        return Ok(None);
    };
    if let Area::Leaf(addr, mut leaf) = area {
        let raw = leaf_mut(&mut leaf);
        raw.lf_entries = raw.lf_entries.get().saturating_sub(1).into();
        vol.write(addr, &leaf)?;
    }
    let raw = dinode_mut(&mut block);
    raw.di_entries = raw.di_entries.get().saturating_sub(1).into();
    vol.write(dir, &block)?;
    Ok(Some(Entry {
        name: name.to_vec(),
        inum,
        de_type,
    }))
}

/// Rewrites the target of entry `name` in directory `dir`.
pub fn retarget(vol: &Volume, dir: u64, name: &[u8], inum: Inum, de_type: u16) -> Result<bool> {
    let mut block = vol.read(dir)?;
    let edit =
        |a: &mut [u8]| dirent::retarget(a, name, inum, de_type).map(|done| done.then_some(()));
    match edit_entry_area(vol, dir, &mut block, name, edit)? {
        None => Ok(false),
        Some(((), Area::Dinode)) => vol.write(dir, &block).map(|_| true),
        Some(((), Area::Leaf(addr, leaf))) => vol.write(addr, &leaf).map(|_| true),
    }
}

/// A fresh dinode: one link, no blocks but itself, every time `now`.
pub fn new_dinode(num: Inum, mode: u32, now: i64) -> Dinode {
    let t = rgfs::format::Timestamp::new(now, 0);
    Dinode {
        num,
        mode,
        uid: 0,
        gid: 0,
        nlink: 1,
        size: 0,
        blocks: 1,
        atime: t,
        mtime: t,
        ctime: t,
        major: 0,
        minor: 0,
        goal_meta: num.addr,
        goal_data: num.addr,
        generation: 0,
        flags: 0,
        payload_format: 0,
        height: 0,
        depth: 0,
        entries: 0,
        eattr: 0,
    }
}

/// The dinode of a new, empty directory: "." and ".." in its block.
pub fn new_dir_block(
    vol: &Volume,
    this: Inum,
    parent: Inum,
    mode: u32,
    flags: u32,
    now: i64,
) -> Vec<u8> {
    let mut block = vec![0u8; vol.bsize()];
    let d = Dinode {
        nlink: 2,
        size: vol.geom.max_stuffed(),
        flags: flags | dif::JDATA,
        payload_format: FORMAT_DIRENT,
        entries: 2,
        ..new_dinode(this, mode, now)
    };
    d.encode_into(&mut block);
    dirent::init_dir(
        &mut block[DINODE_SIZE..],
        this,
        parent,
        rgfs::format::consts::dt::DIR,
    );
    block
}

/// Bytes a new entry for `name` needs.
pub fn entry_size(name: &[u8]) -> usize {
    dirent_size(name.len())
}
