//! System files put back or made again, after pass 2 (when every block's
//! owner is known and the directories they go into are repaired).
//!
//! For each system file the layout check found missing or broken, in the
//! order the master directory lists them (jindex and per_node before the
//! files inside them):
//!
//! 1. an inode no directory names that has the shape of that file is
//!    linked back under the file's name (a journal, an rindex listing the
//!    groups, a SYSTEM directory holding per-node files, ...);
//! 2. otherwise the file is made again with the contents a fresh mkfs
//!    gives it: empty per-node files, the rindex of the groups in use, the
//!    quota file's records for user 0 and group 0, an inum file holding the
//!    next formal inode number, empty jindex and per_node directories.
//!
//! A remade jindex gets every journal no directory names (they keep their
//! blocks and logs); a remade per_node gets the files of every journal.
//! Journals themselves are never made here (`journals::rebuild_broken`
//! rebuilds a damaged one in place); a missing master directory is not
//! made (its address is in the superblock).

use std::collections::VecDeque;

use rgfs::format::consts::{dif, dt, s_if, MetaType, FORMAT_QUOTA, FORMAT_RINDEX};
use rgfs::format::files::Quota;
use rgfs::format::meta::{block_type, Inum};
use rgfs::format::rgrp::RINDEX_SIZE;
use rgfs::format::{Dinode, OnDisk, Rindex};

use crate::blockmap::Use;
use crate::check::Fsck;
use crate::dir;
use crate::file::{create_file, read_file, write_file_prefix, NewFile};
use crate::report::Fix;
use crate::volume::Result;

/// Size of a quota_change file made again when no other node's file shows
/// the size mkfs chose (mkfs's default).
const DEFAULT_QUOTA_CHANGE_BYTES: u64 = 1 << 20;

/// What a system file holds, which decides how it is recognised among the
/// orphans and how it is made again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A small file of this exact size: inum, statfs, inum_range<j>,
    /// statfs_change<j>.
    Fixed(u64),
    Rindex,
    Quota,
    /// per_node/quota_change<j>: blocks carrying quota change headers.
    QuotaChange,
    Jindex,
    PerNode,
}

impl Kind {
    /// The kind of the system file named `entry` (`size` for the small
    /// files of fixed size).
    pub fn of(entry: &str, is_dir: bool, size: Option<u64>) -> Kind {
        match entry {
            "rindex" => Kind::Rindex,
            "quota" => Kind::Quota,
            "jindex" => Kind::Jindex,
            "per_node" => Kind::PerNode,
            e if e.starts_with("quota_change") => Kind::QuotaChange,
            _ => {
                debug_assert!(!is_dir, "no other system directory");
                Kind::Fixed(size.unwrap_or(0))
            }
        }
    }

    fn is_dir(&self) -> bool {
        matches!(self, Kind::Jindex | Kind::PerNode)
    }
}

/// A system file to put back or make again.
#[derive(Clone, Debug)]
pub struct Rebuild {
    pub object: String,
    pub why: String,
    /// The directory holding it, and its name there.
    pub parent: u64,
    pub entry: String,
    pub kind: Kind,
}

/// Puts back or makes every system file in `fs.rebuilds`.
pub fn run(fs: &mut Fsck) -> Result<()> {
    let mut queue: VecDeque<Rebuild> = std::mem::take(&mut fs.rebuilds).into();
    let mut taken = Vec::new();
    while let Some(r) = queue.pop_front() {
        if !fs.inodes.get(&r.parent).is_some_and(|p| p.is_dir()) {
            fs.problem(
                &r.object,
                format!(
                    "{}; its directory {} is gone, so it is not made",
                    r.why, r.parent
                ),
                Fix::None,
            );
            continue;
        }
        if let Some(orphan) = orphan_for(fs, &r, &taken) {
            taken.push(orphan);
            if fs.problem(
                &r.object,
                format!(
                    "{}: inode {orphan}, which no directory names, put back",
                    r.why
                ),
                Fix::Risky,
            ) {
                let formal = fs.inodes[&orphan].formal;
                link_system_file(fs, &r, Inum::new(formal, orphan))?;
                after_link(fs, &r, orphan, &mut queue, &mut taken)?;
            }
            continue;
        }
        if !fs.problem(&r.object, format!("{}: made again", r.why), Fix::Risky) {
            continue;
        }
        let addr = if r.kind.is_dir() {
            unlink_old_entry(fs, &r)?;
            fs.make_dir(r.parent, r.entry.as_bytes(), s_if::DIR | 0o700, dif::SYSTEM)?
        } else {
            let new = new_file(fs, &r);
            let made = create_file(fs, r.parent, &new)?;
            if let Some(num) = made {
                if r.entry == "inum" && new.contents.len() == 8 {
                    // The next formal inode number, as mkfs leaves it.
                    let next = fs.new_formal();
                    write_file_prefix(&fs.vol, num.addr, &next.to_be_bytes())?;
                }
                link_system_file(fs, &r, num)?;
            }
            made.map(|n| n.addr)
        };
        match addr {
            Some(addr) => after_link(fs, &r, addr, &mut queue, &mut taken)?,
            None => {
                return crate::volume::fatal(format!(
                    "no free block left to make {} again",
                    r.object
                ))
            }
        }
    }
    Ok(())
}

/// The contents a fresh mkfs gives the file.
fn new_file(fs: &mut Fsck, r: &Rebuild) -> NewFile {
    let bsize = fs.vol.bsize();
    let regular = |flags: u32, format: u32, contents: Vec<u8>| NewFile {
        mode: s_if::REG | 0o600,
        flags: dif::SYSTEM | flags,
        payload_format: format,
        contents,
    };
    match &r.kind {
        Kind::Fixed(size) => {
            // inum gets its number once the file has its own (`run`).
            regular(dif::JDATA, 0, vec![0u8; *size as usize])
        }
        Kind::Rindex => {
            let contents = fs.vol.rgrps.iter().flat_map(|g| g.ri.to_bytes()).collect();
            regular(dif::JDATA, FORMAT_RINDEX, contents)
        }
        Kind::Quota => {
            // Records 0 and 1: user 0 and group 0, as mkfs writes them.
            let record = Quota {
                limit: 0,
                warn: 0,
                value: 1,
            }
            .to_bytes();
            regular(dif::JDATA, FORMAT_QUOTA, [record.clone(), record].concat())
        }
        Kind::QuotaChange => {
            // The size of the other nodes' files, else mkfs's default.
            let size = fs
                .sys
                .quota_changes
                .iter()
                .filter_map(|&(_, a)| fs.inodes.get(&a).map(|i| i.size))
                .find(|&s| s > 0 && s % bsize as u64 == 0)
                .unwrap_or(DEFAULT_QUOTA_CHANGE_BYTES.max(bsize as u64));
            let mut contents = vec![0u8; size as usize];
            for block in contents.chunks_exact_mut(bsize) {
                rgfs::format::meta::init_block(block, MetaType::QuotaChange);
            }
            regular(0, 0, contents)
        }
        Kind::Jindex | Kind::PerNode => unreachable!("directories are made by make_dir"),
    }
}

/// An inode no entry names that can stand for the system file `r`.
fn orphan_for(fs: &Fsck, r: &Rebuild, taken: &[u64]) -> Option<u64> {
    let want_type = if r.kind.is_dir() {
        s_if::DIR
    } else {
        s_if::REG
    };
    let sys = &fs.sys;
    fs.inodes
        .iter()
        .filter(|(&a, i)| {
            i.flags & dif::SYSTEM != 0
                && i.mode & s_if::FMT == want_type
                && !taken.contains(&a)
                && a != sys.master
                && a != sys.root
                && !named(fs, a, i)
        })
        .find(|(&a, i)| fits(fs, r, a, i.size))
        .map(|(&a, _)| a)
}

/// Whether an entry other than the inode's own "." names it.
fn named(fs: &Fsck, addr: u64, i: &crate::check::InodeInfo) -> bool {
    if i.is_dir() {
        fs.links.iter().any(|l| l.target == addr)
    } else {
        i.refs > 0
    }
}

/// Whether orphan `addr` (of `size` bytes) has the shape of the file.
fn fits(fs: &Fsck, r: &Rebuild, addr: u64, size: u64) -> bool {
    let bsize = fs.vol.bsize() as u64;
    match &r.kind {
        Kind::Fixed(s) => size == *s,
        Kind::QuotaChange => {
            size > 0
                && size.is_multiple_of(bsize)
                && first_data_type(fs, addr) == Some(MetaType::QuotaChange)
        }
        Kind::Rindex => {
            // It must list the groups in use.
            size > 0
                && size.is_multiple_of(RINDEX_SIZE as u64)
                && read_file(&fs.vol, addr).is_ok_and(|bytes| {
                    let listed: Vec<Rindex> = bytes
                        .chunks_exact(RINDEX_SIZE)
                        .filter_map(|raw| Rindex::decode(raw).ok())
                        .collect();
                    listed.len() == fs.vol.rgrps.len()
                        && listed.iter().zip(&fs.vol.rgrps).all(|(a, g)| *a == g.ri)
                })
        }
        Kind::Quota => {
            size > 0
                && size.is_multiple_of(Quota::SIZE as u64)
                && payload_format(fs, addr) == Some(FORMAT_QUOTA)
        }
        Kind::Jindex => {
            dir_names(fs, addr).is_some_and(|names| names.iter().all(|n| n.starts_with(b"journal")))
        }
        Kind::PerNode => dir_names(fs, addr)
            .is_some_and(|names| names.iter().any(|n| n.starts_with(b"inum_range"))),
    }
}

fn payload_format(fs: &Fsck, addr: u64) -> Option<u32> {
    let block = fs.vol.read(addr).ok()?;
    Dinode::decode(&block).ok().map(|d| d.payload_format)
}

/// The metadata type of the file's first data block (by address).
fn first_data_type(fs: &Fsck, addr: u64) -> Option<MetaType> {
    let (b, _) = fs
        .map
        .blocks_of(addr)
        .into_iter()
        .find(|&(_, u)| u == Use::Data)?;
    block_type(&fs.vol.read(b).ok()?)
}

/// The names in directory `addr` besides "." and "..", if it has any.
fn dir_names(fs: &Fsck, addr: u64) -> Option<Vec<Vec<u8>>> {
    let names: Vec<Vec<u8>> = dir::entries(&fs.vol, addr)
        .ok()?
        .into_iter()
        .map(|e| e.name)
        .filter(|n| n != b"." && n != b"..")
        .collect();
    (!names.is_empty()).then_some(names)
}

/// Removes an entry for the file that still names something else (an
/// inode of the wrong type), so the new directory can take the name.
fn unlink_old_entry(fs: &mut Fsck, r: &Rebuild) -> Result<()> {
    if let Some(old) = dir::remove(&fs.vol, r.parent, r.entry.as_bytes())? {
        if let Some(i) = fs.inodes.get_mut(&old.inum.addr) {
            i.refs = i.refs.saturating_sub(1);
        }
        fs.links
            .retain(|l| !(l.dir == r.parent && l.name == r.entry.as_bytes()));
    }
    Ok(())
}

/// Names `num` by the system file's entry (replacing an entry that names
/// something else) and counts the reference. A directory put back gets
/// ".." and its parent's link through `link_into`.
fn link_system_file(fs: &mut Fsck, r: &Rebuild, num: Inum) -> Result<()> {
    let addr = num.addr;
    if r.kind.is_dir() {
        unlink_old_entry(fs, r)?;
        fs.link_into(r.parent, r.entry.as_bytes(), addr)?;
        fs.links.push(crate::check::Link {
            dir: r.parent,
            name: r.entry.as_bytes().to_vec(),
            target: addr,
        });
        return Ok(());
    }
    let old = dir::lookup(&fs.vol, r.parent, r.entry.as_bytes())?.map(|e| e.inum.addr);
    let linked = match old {
        // Pass 2 has removed an entry that named no inode; one that still
        // names an inode is pointed at the new file.
        Some(o) => {
            let done = dir::retarget(&fs.vol, r.parent, r.entry.as_bytes(), num, dt::REG);
            if matches!(done, Ok(true)) {
                release_replaced(fs, r, o);
            }
            done
        }
        None => {
            let map = &fs.map;
            dir::insert(
                &mut fs.vol,
                r.parent,
                r.entry.as_bytes(),
                num,
                dt::REG,
                &|b| map.get(b).is_none(),
            )
            .map(|got| {
                for (b, u) in got {
                    fs.claim(b, u, r.parent);
                }
                true
            })
        }
    };
    match linked {
        Ok(true) => {
            if let Some(i) = fs.inodes.get_mut(&addr) {
                i.refs += 1;
            }
        }
        Ok(false) => fs.report.note(
            &r.object,
            "its entry could not be rewritten; the file goes to lost+found",
        ),
        Err(e) => fs.report.note(
            &r.object,
            format!("could not be linked ({e}); the file goes to lost+found"),
        ),
    }
    Ok(())
}

/// The inode an entry named before it was pointed at the new file loses
/// that reference; a regular system file nothing names any more (the old
/// rindex of the wrong size, say) is freed rather than sent to lost+found.
fn release_replaced(fs: &mut Fsck, r: &Rebuild, old: u64) {
    let Some(i) = fs.inodes.get_mut(&old) else {
        return;
    };
    i.refs = i.refs.saturating_sub(1);
    if i.refs == 0 && i.flags & dif::SYSTEM != 0 && i.mode & s_if::FMT == s_if::REG {
        fs.free_inode(old);
        fs.report
            .note(&r.object, format!("the inode it replaces, {old}, freed"));
    }
}

/// Records where the system file now is; a directory made or put back
/// gets its contents: the journals for jindex, each journal's files for
/// per_node (queued as further rebuilds).
fn after_link(
    fs: &mut Fsck,
    r: &Rebuild,
    addr: u64,
    queue: &mut VecDeque<Rebuild>,
    taken: &mut Vec<u64>,
) -> Result<()> {
    match r.entry.as_str() {
        "statfs" => fs.sys.statfs = Some(addr),
        "inum" => fs.sys.inum = Some(addr),
        "rindex" => fs.sys.rindex = Some(addr),
        "quota" => fs.sys.quota = Some(addr),
        "jindex" => {
            fs.sys.jindex = Some(addr);
            relink_journals(fs, addr, taken)?;
        }
        "per_node" => {
            fs.sys.per_node = Some(addr);
            queue_per_node_files(fs, addr, queue)?;
        }
        e => {
            let jid = |prefix: &str| e.strip_prefix(prefix).and_then(|j| j.parse::<u32>().ok());
            if let Some(j) = jid("statfs_change") {
                fs.sys.statfs_changes.retain(|&(k, _)| k != j);
                fs.sys.statfs_changes.push((j, addr));
                fs.sys.statfs_changes.sort();
            } else if let Some(j) = jid("quota_change") {
                fs.sys.quota_changes.retain(|&(k, _)| k != j);
                fs.sys.quota_changes.push((j, addr));
                fs.sys.quota_changes.sort();
            }
        }
    }
    Ok(())
}

/// Records the journals the jindex lists, then links every journal no
/// directory names into it, in address order (mkfs places journal 0
/// first), after the ones it lists.
fn relink_journals(fs: &mut Fsck, jindex: u64, taken: &mut Vec<u64>) -> Result<()> {
    let bsize = fs.vol.bsize() as u64;
    let orphans: Vec<u64> = fs
        .inodes
        .iter()
        .filter(|(&a, i)| {
            i.flags & dif::SYSTEM != 0
                && i.mode & s_if::FMT == s_if::REG
                && i.refs == 0
                && i.size > 0
                && i.size % bsize == 0
                && !taken.contains(&a)
                && first_data_type(fs, a) == Some(MetaType::LogHeader)
        })
        .map(|(&a, _)| a)
        .collect();
    // The journals a jindex put back still lists.
    for e in dir::entries(&fs.vol, jindex).unwrap_or_default() {
        let jid = std::str::from_utf8(&e.name)
            .ok()
            .and_then(|n| n.strip_prefix("journal")?.parse::<u32>().ok());
        if let Some(j) = jid.filter(|j| !fs.sys.journals.iter().any(|&(k, _)| k == *j)) {
            fs.sys.journals.push((j, e.inum.addr));
        }
    }
    let mut jid = fs
        .sys
        .journals
        .iter()
        .map(|&(j, _)| j + 1)
        .max()
        .unwrap_or(0);
    for addr in orphans {
        taken.push(addr);
        let name = format!("journal{jid}");
        if fs.problem(
            format!("jindex/{name}"),
            format!("inode {addr}, a journal no directory names, linked as {name}"),
            Fix::Risky,
        ) {
            fs.link_into(jindex, name.as_bytes(), addr)?;
            fs.sys.journals.push((jid, addr));
            jid += 1;
        }
    }
    fs.sys.journals.sort();
    if fs.sys.journals.is_empty() {
        fs.problem("jindex", "lists no journal", Fix::None);
    }
    Ok(())
}

/// Queues each journal's inum_range, statfs_change and quota_change file
/// the (new) per_node directory lacks.
fn queue_per_node_files(fs: &mut Fsck, per_node: u64, queue: &mut VecDeque<Rebuild>) -> Result<()> {
    let present: Vec<Vec<u8>> = dir::entries(&fs.vol, per_node)?
        .into_iter()
        .map(|e| e.name)
        .collect();
    let jids: Vec<u32> = fs.sys.journals.iter().map(|&(j, _)| j).collect();
    for j in jids {
        for (name, size) in [
            ("inum_range", Some(16)),
            ("statfs_change", Some(24)),
            ("quota_change", None),
        ] {
            let entry = format!("{name}{j}");
            if present.iter().any(|n| *n == entry.as_bytes()) {
                continue;
            }
            queue.push_back(Rebuild {
                object: format!("system file per_node/{entry}"),
                why: "is missing".into(),
                parent: per_node,
                kind: Kind::of(&entry, false, size),
                entry,
            });
        }
    }
    Ok(())
}
