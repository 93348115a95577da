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
use crate::remake::{Kind, Rebuild};
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
    // A jindex that is not a directory is made again after pass 2, and
    // the journals no directory names are linked into it then.
    if fs.sys.journals.is_empty() && fs.sys.jindex.is_some_and(|a| is_dir(fs, a)) {
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
    // The per-node files are looked for only in a per_node that is a
    // directory; a per_node made again gets them made (or put back) too.
    if let Some(per_node) = fs.sys.per_node.filter(|&a| is_dir(fs, a)) {
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
        // System files are put back (an orphaned inode that fits) or made
        // again after pass 2 (module `remake`).
        let rebuildable = e.parent.is_some();
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
                    kind: Kind::of(&e.entry, e.dir, e.size),
                    entry: e.entry.clone(),
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

fn is_dir(fs: &Fsck, addr: u64) -> bool {
    fs.vol
        .read(addr)
        .ok()
        .and_then(|b| Dinode::decode(&b).ok())
        .is_some_and(|d| d.is_dir())
}
