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
            fs.problem("master directory", format!("cannot be read: {e}"), Fix::None);
            return Ok(());
        }
    };
    let find = |name: &str| entries.iter().find(|e| e.name == name.as_bytes()).map(|e| e.inum.addr);
    fs.sys.jindex = find("jindex");
    fs.sys.per_node = find("per_node");
    fs.sys.inum = find("inum");
    fs.sys.statfs = find("statfs");
    fs.sys.rindex = find("rindex");
    fs.sys.quota = find("quota");
    if let Some(jindex) = fs.sys.jindex {
        if let Ok(list) = dir::entries(&fs.vol, jindex) {
            for e in list {
                let Some(jid) = std::str::from_utf8(&e.name).ok().and_then(|n| n.strip_prefix("journal")).and_then(|n| n.parse::<u32>().ok()) else {
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
                let jid = |prefix: &str| name.strip_prefix(prefix).and_then(|n| n.parse::<u32>().ok());
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
    match fs.vol.read(master).ok().and_then(|b| Dinode::decode(&b).ok()) {
        Some(d) if d.is_dir() => {
            if d.flags & dif::SYSTEM == 0 && fs.problem("master directory", "lacks the SYSTEM flag", Fix::Safe) {
                fs.edit_dinode(master, |raw| raw.di_flags = (raw.di_flags.get() | dif::SYSTEM).into())?;
            }
        }
        _ => {
            fs.problem("master directory", format!("block {master} is not a directory"), Fix::None);
            return Ok(());
        }
    }
    let bsize = fs.vol.bsize() as u64;
    let mut expect = vec![
        Expect { name: "jindex".into(), addr: fs.sys.jindex, dir: true, size: None, unit: None },
        Expect { name: "per_node".into(), addr: fs.sys.per_node, dir: true, size: None, unit: None },
        Expect { name: "inum".into(), addr: fs.sys.inum, dir: false, size: Some(8), unit: None },
        Expect { name: "statfs".into(), addr: fs.sys.statfs, dir: false, size: Some(24), unit: None },
        Expect { name: "rindex".into(), addr: fs.sys.rindex, dir: false, size: None, unit: Some(96) },
        Expect { name: "quota".into(), addr: fs.sys.quota, dir: false, size: None, unit: Some(88) },
    ];
    if fs.sys.journals.is_empty() {
        fs.problem("jindex", "lists no journal", Fix::None);
    }
    for (i, &(jid, _)) in fs.sys.journals.iter().enumerate() {
        if jid != i as u32 {
            fs.problem("jindex", format!("journal{i} is missing (journals must be numbered without gaps)"), Fix::None);
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
            expect.push(Expect { name: format!("per_node/inum_range{jid}"), addr: find(&format!("inum_range{jid}")), dir: false, size: Some(16), unit: None });
            expect.push(Expect { name: format!("per_node/statfs_change{jid}"), addr: find(&format!("statfs_change{jid}")), dir: false, size: Some(24), unit: None });
            expect.push(Expect { name: format!("per_node/quota_change{jid}"), addr: find(&format!("quota_change{jid}")), dir: false, size: None, unit: Some(bsize) });
        }
    }
    for e in expect {
        let object = format!("system file {}", e.name);
        let Some(addr) = e.addr else {
            fs.problem(object, "is missing", Fix::None);
            continue;
        };
        let Some(d) = fs.vol.read(addr).ok().and_then(|b| Dinode::decode(&b).ok()) else {
            fs.problem(object, format!("block {addr} is not a dinode"), Fix::None);
            continue;
        };
        let want = if e.dir { s_if::DIR } else { s_if::REG };
        if d.file_type() != want {
            fs.problem(object, format!("inode {addr} has file type {:o}, should be {want:o}", d.file_type()), Fix::None);
            continue;
        }
        if d.flags & dif::SYSTEM == 0 && fs.problem(&object, format!("inode {addr} lacks the SYSTEM flag"), Fix::Safe) {
            fs.edit_dinode(addr, |raw| raw.di_flags = (raw.di_flags.get() | dif::SYSTEM).into())?;
        }
        let bad_size = match (e.size, e.unit) {
            (Some(s), _) => d.size != s,
            (_, Some(u)) => d.size % u != 0,
            _ => false,
        };
        if bad_size {
            fs.problem(object, format!("inode {addr} has size {}, which is impossible for this file", d.size), Fix::None);
        }
    }
    Ok(())
}
