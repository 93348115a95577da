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
        Expect { name: "jindex".into(), parent: Some(master), entry: "jindex".into(), addr: fs.sys.jindex, dir: true, size: None, unit: None },
        Expect { name: "per_node".into(), parent: Some(master), entry: "per_node".into(), addr: fs.sys.per_node, dir: true, size: None, unit: None },
        Expect { name: "inum".into(), parent: Some(master), entry: "inum".into(), addr: fs.sys.inum, dir: false, size: Some(8), unit: None },
        Expect { name: "statfs".into(), parent: Some(master), entry: "statfs".into(), addr: fs.sys.statfs, dir: false, size: Some(24), unit: None },
        Expect { name: "rindex".into(), parent: Some(master), entry: "rindex".into(), addr: fs.sys.rindex, dir: false, size: None, unit: Some(96) },
        Expect { name: "quota".into(), parent: Some(master), entry: "quota".into(), addr: fs.sys.quota, dir: false, size: None, unit: Some(88) },
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
            expect.push(Expect { name: format!("per_node/inum_range{jid}"), parent: Some(per_node), entry: format!("inum_range{jid}"), addr: find(&format!("inum_range{jid}")), dir: false, size: Some(16), unit: None });
            expect.push(Expect { name: format!("per_node/statfs_change{jid}"), parent: Some(per_node), entry: format!("statfs_change{jid}"), addr: find(&format!("statfs_change{jid}")), dir: false, size: Some(24), unit: None });
            expect.push(Expect { name: format!("per_node/quota_change{jid}"), parent: Some(per_node), entry: format!("quota_change{jid}"), addr: find(&format!("quota_change{jid}")), dir: false, size: None, unit: Some(bsize) });
        }
    }
    for e in expect {
        let object = format!("system file {}", e.name);
        // Small fixed-size files can be made again after pass 1.
        let rebuildable = !e.dir && e.size.is_some() && e.parent.is_some();
        let broken = match e.addr {
            None => Some("is missing".to_string()),
            Some(addr) => match fs.vol.read(addr).ok().and_then(|b| Dinode::decode(&b).ok()) {
                None => Some(format!("block {addr} is not a dinode")),
                Some(d) if d.file_type() != if e.dir { s_if::DIR } else { s_if::REG } => Some(format!("inode {addr} has file type {:o}", d.file_type())),
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
                    size: e.size.expect("rebuildable"),
                    old: e.addr,
                });
            } else {
                fs.problem(object, why, Fix::None);
            }
            continue;
        }
        let addr = e.addr.expect("not broken");
        let d = Dinode::decode(&fs.vol.read(addr)?).map_err(|e| crate::volume::FsckError::Fatal(e.to_string()))?;
        if d.flags & dif::SYSTEM == 0 && fs.problem(&object, format!("inode {addr} lacks the SYSTEM flag"), Fix::Safe) {
            fs.edit_dinode(addr, |raw| raw.di_flags = (raw.di_flags.get() | dif::SYSTEM).into())?;
        }
        match (e.size, e.unit) {
            (Some(want), _) if d.size != want => {
                // A stuffed file of known size: the size is the only answer.
                let fix = if d.height == 0 { Fix::Risky } else { Fix::None };
                if fs.problem(&object, format!("inode {addr} has size {}, should be {want}", d.size), fix) {
                    fs.edit_dinode(addr, |raw| raw.di_size = want.into())?;
                }
            }
            (_, Some(u)) if d.size % u != 0 => {
                fs.problem(object, format!("inode {addr} has size {}, not a multiple of {u}", d.size), Fix::None);
            }
            _ => {}
        }
    }
    Ok(())
}

/// A small system file to make again after pass 1 (when every block's
/// owner is known): inum, statfs, per_node/inum_range<j>,
/// per_node/statfs_change<j>.
#[derive(Clone, Debug)]
pub struct Rebuild {
    object: String,
    why: String,
    parent: u64,
    entry: String,
    size: u64,
    /// The inode the entry named, if any.
    old: Option<u64>,
}

/// Makes each system file found broken: a new stuffed file named by its
/// entry in the master or per_node directory, zero-filled (the statfs pass
/// fills in statfs; the others hold nothing the kernel needs) except inum,
/// which gets the next free formal inode number.
pub fn rebuild(fs: &mut Fsck) -> Result<()> {
    for r in std::mem::take(&mut fs.rebuilds) {
        if !fs.problem(&r.object, format!("{}: made again, empty", r.why), Fix::Risky) {
            continue;
        }
        if !fs.inodes.contains_key(&r.parent) {
            fs.report.note(&r.object, format!("its directory {} is gone; not made", r.parent));
            continue;
        }
        let map = &fs.map;
        let Some(addr) = fs.vol.alloc(r.parent, rgfs::format::BlockState::Dinode, &|b| map.get(b).is_none()) else {
            return crate::volume::fatal("no free block left for a system file");
        };
        let formal = fs.new_formal();
        let num = rgfs::format::meta::Inum::new(formal, addr);
        let mode = s_if::REG | 0o600;
        let d = Dinode {
            size: r.size,
            flags: dif::SYSTEM | dif::JDATA,
            ..dir::new_dinode(num, mode, rgfs::format::Timestamp::now().sec)
        };
        let mut block = vec![0u8; fs.vol.bsize()];
        d.encode_into(&mut block);
        if r.entry == "inum" {
            // The next formal inode number, as mkfs leaves it.
            let next = fs.new_formal();
            block[rgfs::format::DINODE_SIZE..rgfs::format::DINODE_SIZE + 8].copy_from_slice(&next.to_be_bytes());
        }
        fs.vol.write(addr, &block)?;
        fs.map.insert(addr, crate::blockmap::Use::Dinode, addr).ok();
        fs.inodes.insert(
            addr,
            crate::check::InodeInfo { formal, mode, flags: d.flags, nlink: 1, size: r.size, ..Default::default() },
        );
        let de_type = rgfs::format::consts::dt::REG;
        if r.old.is_some() && dir::retarget(&fs.vol, r.parent, r.entry.as_bytes(), num, de_type)? {
            // The entry now names the new file.
        } else {
            let map = &fs.map;
            let got = dir::insert(&mut fs.vol, r.parent, r.entry.as_bytes(), num, de_type, &|b| map.get(b).is_none())?;
            for (b, u) in got {
                fs.claim(b, u, r.parent);
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
    }
    Ok(())
}
