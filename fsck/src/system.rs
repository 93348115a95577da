//! Pass "system": the master directory and the system files in it
//! (jindex, per_node, inum, statfs, rindex, quota), and the per-node files
//! of each journal.
//!
//! [`locate`] runs first (the resource group and journal passes need the
//! rindex and jindex); [`check_layout`] checks types and sizes once the
//! journals are replayed.

use rgfs::format::consts::{dif, s_if};
use rgfs::format::{Dinode, OnDisk};

use crate::check::Fsck;
use crate::dir;
use crate::report::Fix;
use crate::volume::Result;

/// Finds the system inodes by name. Missing ones stay `None`; the passes
/// that need them report it.
pub fn locate(fs: &mut Fsck) -> Result<()> {
    let master = fs.sys.master;
    let entries = match dir::entries(&fs.vol, master) {
        Ok(e) => e,
        Err(e) => {
            fs.problem(
                "master directory",
                format!("cannot be read: {e}"),
                Fix::None,
            );
            return Ok(());
        }
    };
    let find = |name: &str| {
        entries
            .iter()
            .find(|e| e.name == name.as_bytes())
            .map(|e| e.inum.addr)
    };
    fs.sys.jindex = find("jindex");
    fs.sys.per_node = find("per_node");
    fs.sys.inum = find("inum");
    fs.sys.statfs = find("statfs");
    fs.sys.rindex = find("rindex");
    fs.sys.quota = find("quota");
    if let Some(jindex) = fs.sys.jindex {
        if let Ok(list) = dir::entries(&fs.vol, jindex) {
            for e in list {
                let Some(jid) = std::str::from_utf8(&e.name)
                    .ok()
                    .and_then(|n| n.strip_prefix("journal"))
                    .and_then(|n| n.parse::<u32>().ok())
                else {
                    continue;
                };
                fs.sys.journals.push((jid, e.inum.addr));
            }
        }
        fs.sys.journals.sort();
    }
    if let Some(per_node) = fs.sys.per_node {
        if let Ok(list) = dir::entries(&fs.vol, per_node) {
            for e in list {
                let name = std::str::from_utf8(&e.name).unwrap_or("");
                let jid = |prefix: &str| {
                    name.strip_prefix(prefix)
                        .and_then(|n| n.parse::<u32>().ok())
                };
                if let Some(j) = jid("statfs_change") {
                    fs.sys.statfs_changes.push((j, e.inum.addr));
                } else if let Some(j) = jid("quota_change") {
                    fs.sys.quota_changes.push((j, e.inum.addr));
                }
            }
        }
        fs.sys.statfs_changes.sort();
        fs.sys.quota_changes.sort();
    }
    Ok(())
}

/// What a system file must be.
struct Expect {
    name: String,
    /// The directory holding it and its name there.
    parent: Option<u64>,
    entry: String,
    addr: Option<u64>,
    dir: bool,
    /// Exact size, or a unit the size must be a multiple of.
    size: Option<u64>,
    unit: Option<u64>,
}

/// Checks that every system file exists, has the right type, the SYSTEM
/// flag, and a plausible size.
pub fn check_layout(fs: &mut Fsck) -> Result<()> {
    let master = fs.sys.master;
    match fs
        .vol
        .read(master)
        .ok()
        .and_then(|b| Dinode::decode(&b).ok())
    {
        Some(d) if d.is_dir() => {
            if d.flags & dif::SYSTEM == 0
                && fs.problem("master directory", "lacks the SYSTEM flag", Fix::Safe)
            {
                fs.edit_dinode(master, |raw| {
                    raw.di_flags = (raw.di_flags.get() | dif::SYSTEM).into()
                })?;
            }
        }
        _ => {
            fs.problem(
                "master directory",
                format!("block {master} is not a directory"),
                Fix::None,
            );
            return Ok(());
        }
    }
    let bsize = fs.vol.bsize() as u64;
    let mut expect = vec![
        Expect {
            name: "jindex".into(),
            parent: Some(master),
            entry: "jindex".into(),
            addr: fs.sys.jindex,
            dir: true,
            size: None,
            unit: None,
        },
        Expect {
            name: "per_node".into(),
            parent: Some(master),
            entry: "per_node".into(),
            addr: fs.sys.per_node,
            dir: true,
            size: None,
            unit: None,
        },
        Expect {
            name: "inum".into(),
            parent: Some(master),
            entry: "inum".into(),
            addr: fs.sys.inum,
            dir: false,
            size: Some(8),
            unit: None,
        },
        Expect {
            name: "statfs".into(),
            parent: Some(master),
            entry: "statfs".into(),
            addr: fs.sys.statfs,
            dir: false,
            size: Some(24),
            unit: None,
        },
        Expect {
            name: "rindex".into(),
            parent: Some(master),
            entry: "rindex".into(),
            addr: fs.sys.rindex,
            dir: false,
            size: None,
            unit: Some(96),
        },
        Expect {
            name: "quota".into(),
            parent: Some(master),
            entry: "quota".into(),
            addr: fs.sys.quota,
            dir: false,
            size: None,
            unit: Some(88),
        },
    ];
    if fs.sys.journals.is_empty() {
        fs.problem("jindex", "lists no journal", Fix::None);
    }
    for (i, &(jid, _)) in fs.sys.journals.iter().enumerate() {
        if jid != i as u32 {
            fs.problem(
                "jindex",
                format!("journal{i} is missing (journals must be numbered without gaps)"),
                Fix::None,
            );
            break;
        }
    }
    if let Some(per_node) = fs.sys.per_node {
        let names: Vec<(Vec<u8>, u64)> = dir::entries(&fs.vol, per_node)
            .unwrap_or_default()
            .into_iter()
            .map(|e| (e.name, e.inum.addr))
            .collect();
        let find = |n: &str| names.iter().find(|e| e.0 == n.as_bytes()).map(|e| e.1);
        for &(jid, _) in &fs.sys.journals {
            // Each node's files: name, exact size or size unit.
            let files = [
                ("inum_range", Some(16), None),
                ("statfs_change", Some(24), None),
                ("quota_change", None, Some(bsize)),
            ];
            for (kind, size, unit) in files {
                let entry = format!("{kind}{jid}");
                expect.push(Expect {
                    name: format!("per_node/{entry}"),
                    parent: Some(per_node),
                    addr: find(&entry),
                    entry,
                    dir: false,
                    size,
                    unit,
                });
            }
        }
    }
    for e in expect {
        let object = format!("system file {}", e.name);
        // Regular system files are put back (an orphaned inode that fits)
        // or, when small and of fixed size, made again, after pass 2.
        let rebuildable = !e.dir && e.parent.is_some();
        let broken = match e.addr {
            None => Some("is missing".to_string()),
            Some(addr) => match fs.vol.read(addr).ok().and_then(|b| Dinode::decode(&b).ok()) {
                None => Some(format!("block {addr} is not a dinode")),
                Some(d) if d.file_type() != if e.dir { s_if::DIR } else { s_if::REG } => {
                    Some(format!("inode {addr} has file type {:o}", d.file_type()))
                }
                Some(_) => None,
            },
        };
        if let Some(why) = broken {
            if rebuildable {
                fs.rebuilds.push(Rebuild {
                    object,
                    why,
                    parent: e.parent.expect("rebuildable"),
                    entry: e.entry.clone(),
                    size: e.size,
                    unit: e.unit,
                });
            } else {
                fs.problem(object, why, Fix::None);
            }
            continue;
        }
        let addr = e.addr.expect("not broken");
        let d = Dinode::decode(&fs.vol.read(addr)?)
            .map_err(|e| crate::volume::FsckError::Fatal(e.to_string()))?;
        if d.flags & dif::SYSTEM == 0
            && fs.problem(
                &object,
                format!("inode {addr} lacks the SYSTEM flag"),
                Fix::Safe,
            )
        {
            fs.edit_dinode(addr, |raw| {
                raw.di_flags = (raw.di_flags.get() | dif::SYSTEM).into()
            })?;
        }
        match (e.size, e.unit) {
            (Some(want), _) if d.size != want => {
                // A stuffed file of known size: the size is the only answer.
                let fix = if d.height == 0 { Fix::Risky } else { Fix::None };
                if fs.problem(
                    &object,
                    format!("inode {addr} has size {}, should be {want}", d.size),
                    fix,
                ) {
                    fs.edit_dinode(addr, |raw| raw.di_size = want.into())?;
                }
            }
            (_, Some(u)) if d.size % u != 0 => {
                fs.problem(
                    object,
                    format!("inode {addr} has size {}, not a multiple of {u}", d.size),
                    Fix::None,
                );
            }
            _ => {}
        }
    }
    Ok(())
}

/// A small system file to make again after pass 2 (when every block's
/// owner is known): inum, statfs, per_node/inum_range<j>,
/// per_node/statfs_change<j>.
#[derive(Clone, Debug)]
pub struct Rebuild {
    object: String,
    why: String,
    parent: u64,
    entry: String,
    /// The exact size (then it can be made again empty), or the unit the
    /// size is a multiple of.
    size: Option<u64>,
    unit: Option<u64>,
}

/// An inode no entry names (after pass 2) that can stand for the system
/// file `r`: a SYSTEM regular file of its size; for quota_change files,
/// whose size is only a multiple of the block size, the first data block
/// must carry the quota change header (journals have the same shape).
fn orphan_for(fs: &Fsck, r: &Rebuild, taken: &[u64]) -> Option<u64> {
    fs.inodes
        .iter()
        .filter(|(a, i)| {
            i.refs == 0
                && i.flags & dif::SYSTEM != 0
                && i.mode & s_if::FMT == s_if::REG
                && !taken.contains(a)
        })
        .find(|(&a, i)| match (r.size, r.unit) {
            (Some(s), _) => i.size == s,
            (None, Some(u)) => {
                i.size > 0
                    && i.size % u == 0
                    && fs
                        .map
                        .blocks_of(a)
                        .iter()
                        .find(|(_, u)| *u == crate::blockmap::Use::Data)
                        .is_some_and(|&(b, _)| {
                            fs.vol.read(b).is_ok_and(|buf| {
                                rgfs::format::meta::block_type(&buf)
                                    == Some(rgfs::format::MetaType::QuotaChange)
                            })
                        })
            }
            _ => false,
        })
        .map(|(&a, _)| a)
}

/// Makes each system file found broken: a new stuffed file named by its
/// entry in the master or per_node directory, zero-filled (the statfs pass
/// fills in statfs; the others hold nothing the kernel needs) except inum,
/// which gets the next free formal inode number.
pub fn rebuild(fs: &mut Fsck) -> Result<()> {
    let mut taken = Vec::new();
    for r in std::mem::take(&mut fs.rebuilds) {
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
                let inum = rgfs::format::meta::Inum::new(fs.inodes[&orphan].formal, orphan);
                link_system_file(fs, &r, inum)?;
            }
            continue;
        }
        let Some(size) = r.size else {
            fs.problem(&r.object, r.why, Fix::None);
            continue;
        };
        if !fs.problem(
            &r.object,
            format!("{}: made again, empty", r.why),
            Fix::Risky,
        ) {
            continue;
        }
        if !fs.inodes.contains_key(&r.parent) {
            fs.report.note(
                &r.object,
                format!("its directory {} is gone; not made", r.parent),
            );
            continue;
        }
        let map = &fs.map;
        let Some(addr) = fs
            .vol
            .alloc(r.parent, rgfs::format::BlockState::Dinode, &|b| {
                map.get(b).is_none()
            })
        else {
            return crate::volume::fatal("no free block left for a system file");
        };
        let formal = fs.new_formal();
        let num = rgfs::format::meta::Inum::new(formal, addr);
        let mode = s_if::REG | 0o600;
        let d = Dinode {
            size,
            flags: dif::SYSTEM | dif::JDATA,
            ..dir::new_dinode(num, mode, rgfs::format::Timestamp::now().sec)
        };
        let mut block = vec![0u8; fs.vol.bsize()];
        d.encode_into(&mut block);
        if r.entry == "inum" {
            // The next formal inode number, as mkfs leaves it.
            let next = fs.new_formal();
            block[rgfs::format::DINODE_SIZE..rgfs::format::DINODE_SIZE + 8]
                .copy_from_slice(&next.to_be_bytes());
        }
        fs.vol.write(addr, &block)?;
        fs.map.insert(addr, crate::blockmap::Use::Dinode, addr).ok();
        fs.inodes.insert(
            addr,
            crate::check::InodeInfo {
                formal,
                mode,
                flags: d.flags,
                nlink: 1,
                size,
                ..Default::default()
            },
        );
        link_system_file(fs, &r, num)?;
    }
    Ok(())
}

/// Names `inum` by the system file's entry (replacing an entry that names
/// something else) and counts the reference.
fn link_system_file(fs: &mut Fsck, r: &Rebuild, num: rgfs::format::meta::Inum) -> Result<()> {
    let addr = num.addr;
    {
        // Pass 2 has removed an entry that named no inode; one that still
        // names an inode is pointed at the new file.
        let de_type = rgfs::format::consts::dt::REG;
        let old = dir::lookup(&fs.vol, r.parent, r.entry.as_bytes())?.map(|e| e.inum.addr);
        let linked = match old {
            Some(o) => {
                dir::retarget(&fs.vol, r.parent, r.entry.as_bytes(), num, de_type).map(|done| {
                    if done {
                        if let Some(i) = fs.inodes.get_mut(&o) {
                            i.refs = i.refs.saturating_sub(1);
                        }
                    }
                    done
                })
            }
            None => {
                let map = &fs.map;
                dir::insert(
                    &mut fs.vol,
                    r.parent,
                    r.entry.as_bytes(),
                    num,
                    de_type,
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
    }
    match r.entry.as_str() {
        "statfs" => fs.sys.statfs = Some(addr),
        "inum" => fs.sys.inum = Some(addr),
        e => {
            if let Some(j) = e.strip_prefix("statfs_change").and_then(|j| j.parse().ok()) {
                fs.sys.statfs_changes.retain(|&(jid, _)| jid != j);
                fs.sys.statfs_changes.push((j, addr));
            }
        }
    }
    Ok(())
}
