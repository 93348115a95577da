//! Pass 2: directory entries. For every directory: the hash table of an
//! exhash directory (pointers to valid leaves, leaf depths matching the
//! pointer runs, leaf chains), then every dirent area (the stuffed payload
//! of a linear directory, or each leaf): the tiling of `rec_len`s, name
//! lengths and hashes, entries in the wrong leaf, "." and "..", duplicate
//! names, the target (a kept inode with the same formal number and a
//! matching DT_* type), and the entry counts `lf_entries` and `di_entries`.
//!
//! Damaged tiling is salvaged: an entry whose name and hash still agree
//! keeps its place with a corrected `rec_len`; unreadable bytes are given
//! to the previous entry (or become the unused first entry). Entries are
//! only deleted when their target cannot be trusted; the inode they named
//! then reaches lost+found in pass 3 or 4, so no file is lost.

use std::collections::{BTreeSet, HashMap, HashSet};

use rgfs::format::checksum::disk_hash;
use rgfs::format::consts::{dt, FNAMESIZE};
use rgfs::format::dirent::{dirent_size, RawDirent, DIRENT_HEADER_SIZE};
use rgfs::format::leaf::RawLeaf;
use rgfs::format::meta::Inum;
use rgfs::format::{Leaf, OnDisk, DINODE_SIZE, LEAF_HEADER_SIZE};
use zerocopy::FromBytes;

use crate::blockmap::Use;
use crate::check::{Fsck, Link};
use crate::dir::{self, dinode_mut, hash_index, leaf_mut, write_hash_table, HashTable};
use crate::pass1;
use crate::report::Fix;
use crate::volume::Result;

pub fn run(fs: &mut Fsck) -> Result<()> {
    let mut done: HashSet<u64> = HashSet::new();
    let total = fs.inodes.values().filter(|i| i.is_dir()).count() as u64;
    fs.progress.start("pass2", total);
    // Pass 2 may find more directories (inodes the bitmap hid); loop until
    // none is left.
    loop {
        let todo: Vec<u64> = fs
            .inodes
            .iter()
            .filter(|(a, i)| i.is_dir() && !done.contains(a))
            .map(|(&a, _)| a)
            .collect();
        if todo.is_empty() {
            break;
        }
        for dir in todo {
            done.insert(dir);
            if fs.inodes.contains_key(&dir) {
                check_dir(fs, dir)?;
            }
            fs.progress.inc();
        }
    }
    fs.progress.finish();
    Ok(())
}

/// What one directory's entries add up to.
#[derive(Default)]
struct DirState {
    names: HashSet<Vec<u8>>,
    dot: bool,
    dotdot: Option<u64>,
    entries: u32,
    /// Entries taken out of the wrong leaf, to insert again.
    moved: Vec<(Vec<u8>, Inum, u16)>,
}

fn object(dir: u64) -> String {
    format!("directory {dir}")
}

fn entry_object(dir: u64, name: &[u8]) -> String {
    format!("directory {dir} entry {:?}", String::from_utf8_lossy(name))
}

fn check_dir(fs: &mut Fsck, dir: u64) -> Result<()> {
    // Pass 1 read (and sized) the hash table of every exhash directory it
    // kept; the depth follows from it, not from a possibly bad di_depth.
    let exhash = fs.tables.get(&dir).map(|t| t.ptrs.len());
    let mut state = DirState::default();
    if let Some(nptrs) = exhash {
        let depth = nptrs.max(1).trailing_zeros() as u16;
        let table = repair_table(fs, dir, depth)?;
        // Each chain head with the table indices that point to it.
        let mut heads: Vec<(u64, usize, usize)> = Vec::new();
        for (i, &p) in table.ptrs.iter().enumerate() {
            match heads.last_mut() {
                Some((h, _, end)) if *h == p && *end == i => *end = i + 1,
                _ => heads.push((p, i, i + 1)),
            }
        }
        let mut seen = HashSet::new();
        for (head, start, end) in heads {
            let mut leaf = head;
            while leaf != 0
                && seen.insert(leaf)
                && fs
                    .map
                    .get(leaf)
                    .is_some_and(|c| c.owner == dir && c.usage == Use::Leaf)
            {
                let next = check_area(
                    fs,
                    dir,
                    leaf,
                    LEAF_HEADER_SIZE,
                    Some((start, end, depth)),
                    &mut state,
                )?;
                leaf = next;
            }
        }
    } else {
        check_area(fs, dir, dir, DINODE_SIZE, None, &mut state)?;
    }
    let obj = object(dir);
    if !state.dot {
        if fs.problem(&obj, "has no \".\" entry: added", Fix::Safe) {
            let inum = Inum::new(fs.inodes[&dir].formal, dir);
            let map = &fs.map;
            let got = dir::insert(&mut fs.vol, dir, b".", inum, dt::DIR, &|b| {
                map.get(b).is_none()
            })?;
            for (b, u) in got {
                fs.claim(b, u, dir);
            }
            state.entries += 1;
        }
        if let Some(i) = fs.inodes.get_mut(&dir) {
            i.refs += 1;
        }
    }
    for (name, inum, de_type) in std::mem::take(&mut state.moved) {
        let map = &fs.map;
        let got = dir::insert(&mut fs.vol, dir, &name, inum, de_type, &|b| {
            map.get(b).is_none()
        })?;
        for (b, u) in got {
            fs.claim(b, u, dir);
        }
        state.entries += 1;
        count_ref(fs, dir, &name, inum.addr);
    }
    let block = fs.vol.read(dir)?;
    let stored = rgfs::format::dinode::RawDinode::ref_from_prefix(&block)
        .expect("dinode")
        .0
        .di_entries
        .get();
    if stored != state.entries
        && fs.problem(
            &obj,
            format!(
                "di_entries is {stored}, the directory has {} entries",
                state.entries
            ),
            Fix::Safe,
        )
    {
        let n = state.entries;
        fs.edit_dinode(dir, |raw| raw.di_entries = n.into())?;
    }
    if let Some(i) = fs.inodes.get_mut(&dir) {
        i.dotdot = state.dotdot;
    }
    Ok(())
}

fn count_ref(fs: &mut Fsck, dir: u64, name: &[u8], target: u64) {
    if let Some(t) = fs.inodes.get_mut(&target) {
        t.refs += 1;
        if t.is_dir() && name != b"." && name != b".." {
            fs.links.push(Link {
                dir,
                name: name.to_vec(),
                target,
            });
        }
    }
}

/// Repairs an exhash directory's hash table: pointers to anything but one
/// of its leaves get a new empty leaf; leaf depths must match the runs of
/// pointers; chains must lead to leaves. Returns the table as repaired.
fn repair_table(fs: &mut Fsck, dir: u64, depth: u16) -> Result<HashTable> {
    let obj = object(dir);
    let mut table = fs.tables.get(&dir).cloned().unwrap_or_default();
    let n = 1usize << depth;
    table.ptrs.resize(n, 0);
    let good = |fs: &Fsck, p: u64| {
        p != 0
            && fs
                .map
                .get(p)
                .is_some_and(|c| c.owner == dir && c.usage == Use::Leaf)
    };
    let mut changed = false;
    let mut new_blocks = 0u64;
    // A bad pointer inside the aligned run of a good leaf (the leaf's depth
    // says which run) points back to that leaf: nothing is lost.
    for i in 0..n {
        if good(fs, table.ptrs[i]) {
            continue;
        }
        let neighbours = [i.checked_sub(1), (i + 1 < n).then_some(i + 1)];
        let restore = neighbours
            .into_iter()
            .flatten()
            .filter(|&j| good(fs, table.ptrs[j]))
            .map(|j| (j, table.ptrs[j]))
            .find(|&(j, p)| {
                let Ok(buf) = fs.vol.read(p) else {
                    return false;
                };
                let d = RawLeaf::ref_from_prefix(&buf)
                    .expect("leaf")
                    .0
                    .lf_depth
                    .get();
                if d > depth {
                    return false;
                }
                // The aligned run the leaf's depth gives it, around the good
                // neighbour, must include the bad pointer.
                let len = 1usize << (depth - d);
                let start = j & !(len - 1);
                (start..start + len).contains(&i)
                    && table.ptrs[start..start + len]
                        .iter()
                        .all(|&q| q == p || !good(fs, q))
            })
            .map(|(_, p)| p);
        if let Some(p) = restore {
            if fs.problem(
                &obj,
                format!(
                    "hash table pointer {i} is {}, inside the run of leaf {p}: restored",
                    table.ptrs[i]
                ),
                Fix::Safe,
            ) {
                changed = true;
            }
            table.ptrs[i] = p;
        }
    }
    let mut i = 0;
    while i < n {
        if good(fs, table.ptrs[i]) {
            i += 1;
            continue;
        }
        let mut j = i;
        while j < n && !good(fs, table.ptrs[j]) {
            j += 1;
        }
        let mut k = i;
        while k < j {
            let mut len = 1usize;
            while k % (len * 2) == 0 && k + len * 2 <= j {
                len *= 2;
            }
            let leaf_depth = depth - len.trailing_zeros() as u16;
            let msg = format!("hash table pointers {k}..{} lead to block {}, not a leaf of this directory: new empty leaf", k + len, table.ptrs[k]);
            if fs.problem(&obj, msg, Fix::Risky) {
                let map = &fs.map;
                let Some(b) = fs.vol.alloc(dir, rgfs::format::BlockState::Used, &|b| {
                    map.get(b).is_none()
                }) else {
                    fs.report.note(&obj, "no free block for a new leaf");
                    k += len;
                    continue;
                };
                let mut buf = vec![0u8; fs.vol.bsize()];
                Leaf {
                    depth: leaf_depth,
                    entries: 0,
                    next: 0,
                    inode: dir,
                    dist: 1,
                    nsec: 0,
                    sec: 0,
                }
                .encode_into(&mut buf);
                rgfs::format::dirent::init_empty(&mut buf[LEAF_HEADER_SIZE..]);
                fs.vol.write(b, &buf)?;
                fs.map.insert(b, Use::Leaf, dir).ok();
                for p in &mut table.ptrs[k..k + len] {
                    *p = b;
                }
                new_blocks += 1;
                changed = true;
            }
            k += len;
        }
        i = j;
    }
    if changed {
        let mut block = fs.vol.read(dir)?;
        write_hash_table(&fs.vol, &mut block, &table)?;
        let raw = dinode_mut(&mut block);
        raw.di_blocks = (raw.di_blocks.get() + new_blocks).into();
        fs.vol.write(dir, &block)?;
    }
    // Leaf depths against the pointer runs.
    let mut runs: HashMap<u64, (usize, usize, usize)> = HashMap::new();
    for (i, &p) in table.ptrs.iter().enumerate() {
        let e = runs.entry(p).or_insert((i, i, 0));
        e.1 = i;
        e.2 += 1;
    }
    let leaves: BTreeSet<u64> = table
        .ptrs
        .iter()
        .copied()
        .filter(|&p| good(fs, p))
        .collect();
    for p in leaves {
        let (first, last, count) = runs[&p];
        let contiguous = last + 1 - first == count;
        if !contiguous || !count.is_power_of_two() || first % count != 0 {
            fs.problem(&obj, format!("leaf {p} is referenced by pointers {first}..={last} ({count} of them), not one aligned run"), Fix::None);
            continue;
        }
        let want = depth - count.trailing_zeros() as u16;
        let mut buf = fs.vol.read(p)?;
        let have = RawLeaf::ref_from_prefix(&buf)
            .expect("leaf")
            .0
            .lf_depth
            .get();
        if have != want
            && fs.problem(
                &obj,
                format!("leaf {p} has lf_depth {have}, its {count} pointers make it {want}"),
                Fix::Safe,
            )
        {
            leaf_mut(&mut buf).lf_depth = want.into();
            fs.vol.write(p, &buf)?;
        }
        // The chain after it must consist of this directory's leaves.
        let mut at = p;
        let mut hops = 0;
        loop {
            let mut buf = fs.vol.read(at)?;
            let next = RawLeaf::ref_from_prefix(&buf)
                .expect("leaf")
                .0
                .lf_next
                .get();
            if next == 0 {
                break;
            }
            if !good(fs, next) || hops > 1 << 16 {
                if fs.problem(
                    &obj,
                    format!(
                        "leaf {at} chains to block {next}, not a leaf of this directory: chain cut"
                    ),
                    Fix::Risky,
                ) {
                    leaf_mut(&mut buf).lf_next = 0.into();
                    fs.vol.write(at, &buf)?;
                }
                break;
            }
            at = next;
            hops += 1;
        }
    }
    fs.tables.insert(dir, table.clone());
    Ok(table)
}

/// Walks the entries of one area with salvage, checks each, and writes the
/// block back when repairs changed it. `leaf` is `(first, end, depth)` of
/// the table indices a leaf serves. Returns the leaf's `lf_next` (0 for a
/// dinode area).
fn check_area(
    fs: &mut Fsck,
    dir: u64,
    blk: u64,
    start: usize,
    leaf: Option<(usize, usize, u16)>,
    state: &mut DirState,
) -> Result<u64> {
    let mut buf = fs.vol.read(blk)?;
    let obj = if blk == dir {
        object(dir)
    } else {
        format!("directory {dir} leaf {blk}")
    };
    let mut write = false;
    let offsets = salvage(
        &mut |msg, fix| fs.problem(&obj, msg, fix),
        &mut buf[start..],
        &mut write,
    );
    let area_len = buf.len() - start;
    let mut deletes: Vec<usize> = Vec::new();
    let mut used = 0u32;
    for (k, &off) in offsets.iter().enumerate() {
        let area = &mut buf[start..];
        let h = *RawDirent::ref_from_prefix(&area[off..])
            .expect("salvage keeps 40 bytes")
            .0;
        let inum = Inum::from(&h.de_inum);
        if inum.is_zero() {
            continue;
        }
        let rec_len = h.de_rec_len.get() as usize;
        let mut name_len = h.de_name_len.get() as usize;
        let name_at = off + DIRENT_HEADER_SIZE;
        let eobj = |n: &[u8]| entry_object(dir, n);
        if name_len == 0 {
            if fs.problem(
                &obj,
                format!("entry at offset {off} has an empty name: removed"),
                Fix::Risky,
            ) {
                write = true;
            }
            deletes.push(k);
            continue;
        }
        let hash = h.de_hash.get();
        if disk_hash(&area[name_at..name_at + name_len]) != hash {
            let max = (rec_len - DIRENT_HEADER_SIZE).min(FNAMESIZE);
            let shown = area[name_at..name_at + name_len].to_vec();
            if let Some(l) = (1..=max).find(|&l| disk_hash(&area[name_at..name_at + l]) == hash) {
                if fs.problem(
                    eobj(&shown),
                    format!(
                        "de_name_len {name_len} does not match the hash; the name is {l} bytes"
                    ),
                    Fix::Risky,
                ) {
                    write = true;
                }
                name_len = l;
                let raw = RawDirent::mut_from_prefix(&mut area[off..])
                    .expect("dirent")
                    .0;
                raw.de_name_len = (l as u16).into();
            } else {
                let want = disk_hash(&area[name_at..name_at + name_len]);
                if fs.problem(
                    eobj(&shown),
                    format!("de_hash {hash:#010x} does not match the name ({want:#010x})"),
                    Fix::Risky,
                ) {
                    write = true;
                }
                let raw = RawDirent::mut_from_prefix(&mut area[off..])
                    .expect("dirent")
                    .0;
                raw.de_hash = want.into();
            }
        }
        let name = area[name_at..name_at + name_len].to_vec();
        let hash = disk_hash(&name);
        let eo = eobj(&name);
        let delete = |fs: &mut Fsck, why: String, write: &mut bool, deletes: &mut Vec<usize>| {
            if fs.problem(&eo, format!("{why}: entry removed"), Fix::Risky) {
                *write = true;
            }
            deletes.push(k);
        };
        if name.contains(&b'/') || name.contains(&0) {
            delete(
                fs,
                "name contains '/' or NUL".into(),
                &mut write,
                &mut deletes,
            );
            continue;
        }
        let is_dot = name == b".";
        let is_dotdot = name == b"..";
        if is_dot && state.dot
            || is_dotdot && state.dotdot.is_some()
            || !is_dot && !is_dotdot && state.names.contains(&name)
        {
            delete(fs, "duplicate name".into(), &mut write, &mut deletes);
            continue;
        }
        if let Some((first, end, depth)) = leaf {
            let idx = hash_index(hash, depth);
            if !(first..end).contains(&idx)
                && fs.problem(
                    &eo,
                    format!("is in leaf {blk}, but its hash belongs to table index {idx}: moved"),
                    Fix::Risky,
                )
            {
                write = true;
                state.moved.push((name.clone(), inum, h.de_type.get()));
                deletes.push(k);
                state.names.insert(name);
                continue;
            }
        }
        // The target.
        let mut target = inum.addr;
        if is_dot && target != dir {
            if fs.problem(
                &eo,
                format!("points to block {target}, not to its directory: corrected"),
                Fix::Safe,
            ) {
                write = true;
            }
            target = dir;
        }
        if !fs.inodes.contains_key(&target)
            && fs.map.get(target).is_none()
            && pass1::is_dinode_for(fs, target)
        {
            pass1::check_inode(fs, target, false)?;
        }
        let Some(info) = fs.inodes.get(&target).cloned() else {
            delete(
                fs,
                format!("points to block {target}, which is not an inode"),
                &mut write,
                &mut deletes,
            );
            continue;
        };
        if is_dotdot && !info.is_dir() {
            delete(
                fs,
                format!("points to inode {target}, which is not a directory"),
                &mut write,
                &mut deletes,
            );
            continue;
        }
        if !is_dot && !is_dotdot && target == dir {
            delete(
                fs,
                "names its own directory".into(),
                &mut write,
                &mut deletes,
            );
            continue;
        }
        let area = &mut buf[start..];
        let raw = RawDirent::mut_from_prefix(&mut area[off..])
            .expect("dirent")
            .0;
        if raw.de_inum.no_addr.get() != target {
            raw.de_inum.no_addr = target.into();
        }
        if inum.formal_ino != info.formal {
            if fs.problem(
                &eo,
                format!(
                    "formal inode number {} does not match inode {target}'s {}: corrected",
                    inum.formal_ino, info.formal
                ),
                Fix::Risky,
            ) {
                write = true;
            }
            raw.de_inum.no_formal_ino = info.formal.into();
        }
        let want_type = info.dirent_type();
        if raw.de_type.get() != want_type {
            if fs.problem(
                &eo,
                format!(
                    "de_type {} does not match the inode's type {want_type}",
                    raw.de_type.get()
                ),
                Fix::Safe,
            ) {
                write = true;
            }
            raw.de_type = want_type.into();
        }
        if is_dot {
            state.dot = true;
        } else if is_dotdot {
            state.dotdot = Some(target);
        } else {
            state.names.insert(name.clone());
        }
        used += 1;
        count_ref(fs, dir, &name, target);
    }
    // Deletions from the last to the first, so offsets stay valid: the
    // first entry of the area becomes unused, any other gives its space
    // to the entry before it.
    for &k in deletes.iter().rev() {
        let area = &mut buf[start..];
        let off = offsets[k];
        if k == 0 {
            let raw = RawDirent::mut_from_prefix(&mut area[off..])
                .expect("dirent")
                .0;
            raw.de_inum = Default::default();
        } else {
            let prev = offsets[k - 1];
            let len = RawDirent::ref_from_prefix(&area[off..])
                .expect("dirent")
                .0
                .de_rec_len
                .get();
            let raw = RawDirent::mut_from_prefix(&mut area[prev..])
                .expect("dirent")
                .0;
            raw.de_rec_len = (raw.de_rec_len.get() + len).into();
        }
    }
    debug_assert!(area_len >= DIRENT_HEADER_SIZE);
    state.entries += used;
    let mut next = 0;
    if blk != dir {
        let raw = RawLeaf::mut_from_prefix(&mut buf).expect("leaf").0;
        next = raw.lf_next.get();
        let stored = raw.lf_entries.get();
        if stored as u32 != used {
            if fs.problem(
                &obj,
                format!("lf_entries is {stored}, the leaf has {used} entries"),
                Fix::Safe,
            ) {
                write = true;
            }
            let raw = RawLeaf::mut_from_prefix(&mut buf).expect("leaf").0;
            raw.lf_entries = (used as u16).into();
        }
    }
    if write && fs.vol.writable {
        fs.vol.write(blk, &buf)?;
    }
    Ok(next)
}

/// Whether a dirent that verifies on its own starts at `off`: sane
/// lengths, a used inode number, a name matching its hash.
fn plausible(area: &[u8], off: usize) -> bool {
    if off + DIRENT_HEADER_SIZE > area.len() {
        return false;
    }
    let h = RawDirent::ref_from_prefix(&area[off..])
        .expect("40 bytes")
        .0;
    let rec_len = h.de_rec_len.get() as usize;
    let name_len = h.de_name_len.get() as usize;
    rec_len >= DIRENT_HEADER_SIZE
        && rec_len.is_multiple_of(8)
        && off + rec_len <= area.len()
        && name_len > 0
        && DIRENT_HEADER_SIZE + name_len <= rec_len
        && !Inum::from(&h.de_inum).is_zero()
        && disk_hash(&area[off + DIRENT_HEADER_SIZE..off + DIRENT_HEADER_SIZE + name_len])
            == h.de_hash.get()
}

/// The next plausible dirent at or after `from` (8-aligned), if any.
fn next_plausible(area: &[u8], from: usize) -> Option<usize> {
    (from.next_multiple_of(8)..area.len())
        .step_by(8)
        .find(|&o| plausible(area, o))
}

/// Makes the area's entries tile it, repairing in memory, and returns the
/// offset of every entry (the first may be unused).
///
/// `report(message, fix)` records a problem and says whether to repair it
/// (the area is repaired in memory either way; `write` says whether the
/// block may be written back).
fn salvage(
    report: &mut dyn FnMut(String, Fix) -> bool,
    area: &mut [u8],
    write: &mut bool,
) -> Vec<usize> {
    let len = area.len();
    let mut offsets: Vec<usize> = Vec::new();
    let mut off = 0usize;
    while off < len {
        if len - off < DIRENT_HEADER_SIZE {
            // A tail too short for an entry: the previous entry takes it.
            if let Some(&prev) = offsets.last() {
                if report(format!("{} bytes at offset {off} are too short for an entry: given to the previous entry", len - off), Fix::Safe) {
                    *write = true;
                }
                let raw = RawDirent::mut_from_prefix(&mut area[prev..])
                    .expect("dirent")
                    .0;
                raw.de_rec_len = (raw.de_rec_len.get() + (len - off) as u16).into();
            }
            break;
        }
        let h = *RawDirent::ref_from_prefix(&area[off..])
            .expect("40 bytes")
            .0;
        let rec_len = h.de_rec_len.get() as usize;
        let name_len = h.de_name_len.get() as usize;
        let used = !Inum::from(&h.de_inum).is_zero();
        let tiles = rec_len >= DIRENT_HEADER_SIZE
            && rec_len.is_multiple_of(8)
            && off + rec_len <= len
            && DIRENT_HEADER_SIZE + name_len <= rec_len;
        let rec_ok =
            rec_len >= DIRENT_HEADER_SIZE && rec_len.is_multiple_of(8) && off + rec_len <= len;
        if rec_ok && used && DIRENT_HEADER_SIZE + name_len > rec_len {
            // Only the name length is impossible: the hash tells the real one.
            let name = &area[off + DIRENT_HEADER_SIZE..off + rec_len];
            if let Some(l) =
                (1..=name.len().min(FNAMESIZE)).find(|&l| disk_hash(&name[..l]) == h.de_hash.get())
            {
                if report(format!("entry at offset {off} has de_name_len {name_len}, longer than the entry; its hash says {l}"), Fix::Risky) {
                    *write = true;
                }
                let raw = RawDirent::mut_from_prefix(&mut area[off..])
                    .expect("dirent")
                    .0;
                raw.de_name_len = (l as u16).into();
                continue;
            }
        }
        if !tiles {
            let own_ok = used
                && name_len > 0
                && off + dirent_size(name_len) <= len
                && disk_hash(&area[off + DIRENT_HEADER_SIZE..off + DIRENT_HEADER_SIZE + name_len])
                    == h.de_hash.get();
            if own_ok {
                // Only rec_len is wrong: the entry reaches the next good one.
                let end = next_plausible(area, off + dirent_size(name_len)).unwrap_or(len);
                if report(
                    format!(
                        "entry at offset {off} has de_rec_len {rec_len}; set to {}",
                        end - off
                    ),
                    Fix::Risky,
                ) {
                    *write = true;
                }
                let raw = RawDirent::mut_from_prefix(&mut area[off..])
                    .expect("dirent")
                    .0;
                raw.de_rec_len = ((end - off) as u16).into();
                continue;
            }
            let end = next_plausible(area, off + 8).unwrap_or(len);
            if report(
                format!("bytes {off}..{end} hold no readable entry: dropped"),
                Fix::Risky,
            ) {
                *write = true;
            }
            match offsets.last() {
                Some(&prev) => {
                    let raw = RawDirent::mut_from_prefix(&mut area[prev..])
                        .expect("dirent")
                        .0;
                    raw.de_rec_len = (raw.de_rec_len.get() + (end - off) as u16).into();
                }
                None => {
                    area[off..off + DIRENT_HEADER_SIZE].fill(0);
                    let raw = RawDirent::mut_from_prefix(&mut area[off..])
                        .expect("dirent")
                        .0;
                    raw.de_rec_len = ((end - off) as u16).into();
                    offsets.push(off);
                }
            }
            off = end;
            continue;
        }
        if !used && off != 0 {
            if let Some(&prev) = offsets.last() {
                if report(
                    format!("unused entry at offset {off} is not the first of its block: merged"),
                    Fix::Safe,
                ) {
                    *write = true;
                }
                let raw = RawDirent::mut_from_prefix(&mut area[prev..])
                    .expect("dirent")
                    .0;
                raw.de_rec_len = (raw.de_rec_len.get() + rec_len as u16).into();
                off += rec_len;
                continue;
            }
        }
        offsets.push(off);
        off += rec_len;
    }
    offsets
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rgfs::format::dirent::{init_dir, insert};

    /// The area tiles: rec_lens from 0 reach the end exactly, each sane,
    /// and only the first entry may be unused.
    fn tiles(area: &[u8]) -> Result<(), String> {
        let mut off = 0;
        while off < area.len() {
            let h = RawDirent::ref_from_prefix(&area[off..])
                .map_err(|_| format!("short tail at {off}"))?
                .0;
            let rec = h.de_rec_len.get() as usize;
            if rec < DIRENT_HEADER_SIZE || !rec.is_multiple_of(8) || off + rec > area.len() {
                return Err(format!("bad rec_len {rec} at {off}"));
            }
            if !Inum::from(&h.de_inum).is_zero()
                && DIRENT_HEADER_SIZE + h.de_name_len.get() as usize > rec
            {
                return Err(format!("name does not fit at {off}"));
            }
            if off != 0 && Inum::from(&h.de_inum).is_zero() {
                return Err(format!("unused entry at {off}"));
            }
            off += rec;
        }
        Ok(())
    }

    fn directory(names: &[String]) -> Vec<u8> {
        let mut area = vec![0u8; 3864];
        init_dir(&mut area, Inum::new(1, 100), Inum::new(1, 100), dt::DIR);
        for (i, n) in names.iter().enumerate() {
            insert(
                &mut area,
                Inum::new(10 + i as u64, 1000 + i as u64),
                n.as_bytes(),
                dt::REG,
            )
            .unwrap();
        }
        area
    }

    #[test]
    fn a_sound_area_is_left_alone() {
        let names: Vec<String> = (0..30).map(|i| format!("name-{i}")).collect();
        let mut area = directory(&names);
        let before = area.clone();
        let mut problems = 0;
        let mut write = false;
        let offsets = salvage(
            &mut |_, _| {
                problems += 1;
                true
            },
            &mut area,
            &mut write,
        );
        assert_eq!((problems, write, offsets.len()), (0, false, 32));
        assert_eq!(area, before);
    }

    proptest! {
        /// Whatever bytes are damaged, salvage leaves an area that tiles.
        /// An entry whose header and name were not touched keeps its place
        /// and name; and when no `rec_len` was damaged (a damaged but
        /// plausible `rec_len` can swallow the entries after it, which no
        /// checker can tell), every such entry is still found.
        #[test]
        fn salvage_always_tiles(
            names in proptest::collection::vec("[a-z]{1,30}", 1..60),
            damage in proptest::collection::vec((0usize..3864, any::<u8>()), 1..12),
        ) {
            let mut names = names;
            names.sort();
            names.dedup();
            let mut area = directory(&names);
            let mut rec_len_hit = false;
            let intact: Vec<(usize, Vec<u8>)> = {
                let mut v = Vec::new();
                let mut off = 0;
                while off < area.len() {
                    let h = RawDirent::ref_from_prefix(&area[off..]).unwrap().0;
                    let end = off + DIRENT_HEADER_SIZE + h.de_name_len.get() as usize;
                    rec_len_hit |= damage.iter().any(|&(at, _)| (off + 20..off + 22).contains(&at));
                    if !damage.iter().any(|&(at, _)| (off..end).contains(&at)) {
                        v.push((off, area[off + DIRENT_HEADER_SIZE..end].to_vec()));
                    }
                    off += h.de_rec_len.get() as usize;
                }
                v
            };
            for &(at, byte) in &damage {
                area[at] ^= byte | 1;
            }
            let mut write = false;
            let offsets = salvage(&mut |_, _| true, &mut area, &mut write);
            prop_assert!(tiles(&area).is_ok(), "{:?}", tiles(&area));
            for (off, name) in intact {
                // An untouched entry may only have been merged into by an
                // earlier damaged one; its own header survives in place.
                let h = RawDirent::ref_from_prefix(&area[off..]).unwrap().0;
                let here = &area[off + DIRENT_HEADER_SIZE..off + DIRENT_HEADER_SIZE + h.de_name_len.get() as usize];
                if offsets.contains(&off) {
                    prop_assert_eq!(here, &name[..]);
                } else {
                    prop_assert!(rec_len_hit, "intact entry at {} lost", off);
                }
            }
        }
    }
}
