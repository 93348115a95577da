//! Mounting: option parsing (GFS2 style), superblock and system-file
//! loading, journal selection and replay, resource groups, orphan cleanup.
//!
//! Order (each step only reads what earlier steps made trustworthy):
//! 1. the superblock (verified; lock protocol checked against the options);
//! 2. master directory → jindex → `journal<jid>`; the journal is replayed
//!    if dirty (before anything it may change is read: the first core is
//!    dropped, its cache could hold pre-replay blocks);
//! 3. a fresh core: rindex → every rgrp header and bitmap, counters checked
//!    against the bitmaps; per_node files; the log writer after the head;
//! 4. read-write: fold the node's statfs deltas into the master statfs, free
//!    UNLINKED inodes (orphans of a crash), commit.

pub mod utab;

use std::collections::HashMap;
use std::sync::Arc;

use rgfs_block::BlockDevice;

use crate::alloc::{Allocator, Rgrp};
use crate::cache::Cache;
use crate::core::{CoreOptions, FsCore, SystemFiles};
use crate::error::{corrupt, AtBlock, Error, Result};
use crate::format::consts::{MetaType, SB_OFFSET_BYTES};
use crate::format::rgrp::RINDEX_SIZE;
use crate::format::{Geometry, OnDisk, RgrpHeader, Rindex, StatfsChange, Superblock, DINODE_SIZE};
use crate::journal::{apply_replay, find_head, plan_replay, JournalMap, LogWriter};

/// Mount options.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MountOptions {
    /// Overrides the superblock's lock protocol.
    pub lockproto: Option<String>,
    pub locktable: Option<String>,
    /// `hostdata=jid=N`.
    pub jid: Option<u32>,
    pub read_only: bool,
    pub noatime: bool,
    pub errors_panic: bool,
    pub allow_other: bool,
    /// Use the kernel's writeback cache (off by default: with it the kernel
    /// owns regular files' size and mtime, which breaks coherence once
    /// other nodes write; see `fuse::FuseFs`).
    pub writeback_cache: bool,
    /// Options passed to FUSE unchanged (nosuid, nodev, noexec, ...).
    pub fuse_flags: Vec<String>,
}

impl MountOptions {
    /// Parses a comma-separated `-o` string.
    pub fn parse(s: &str) -> std::result::Result<MountOptions, String> {
        let mut o = MountOptions::default();
        o.merge(s)?;
        Ok(o)
    }

    /// Adds options from another `-o` string (later ones win).
    pub fn merge(&mut self, s: &str) -> std::result::Result<(), String> {
        for opt in s.split(',').map(str::trim).filter(|x| !x.is_empty()) {
            let (key, value) = match opt.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (opt, None),
            };
            fn need<'a>(key: &str, v: Option<&'a str>) -> std::result::Result<&'a str, String> {
                v.filter(|v| !v.is_empty()).ok_or_else(|| format!("option {key} needs a value"))
            }
            match key {
                "lockproto" => {
                    let v = need(key, value)?;
                    if v != "lock_nolock" && v != "lock_dlm" {
                        return Err(format!("unknown lock protocol {v:?} (lock_nolock or lock_dlm)"));
                    }
                    self.lockproto = Some(v.to_string());
                }
                "locktable" => {
                    let v = need(key, value)?;
                    crate::format::superblock::validate_locktable(v).map_err(|why| format!("locktable={v}: {why}"))?;
                    self.locktable = Some(v.to_string());
                }
                "hostdata" => {
                    for part in need(key, value)?.split(':') {
                        if let Some(j) = part.strip_prefix("jid=") {
                            self.jid = Some(j.parse().map_err(|_| format!("bad journal id in hostdata: {j:?}"))?);
                        }
                    }
                }
                "ro" => self.read_only = true,
                "rw" => self.read_only = false,
                "noatime" => self.noatime = true,
                "relatime" | "atime" | "strictatime" | "nodiratime" => self.noatime = false,
                "errors" => match need(key, value)? {
                    "withdraw" => self.errors_panic = false,
                    "panic" => self.errors_panic = true,
                    v => return Err(format!("errors={v}: expected withdraw or panic")),
                },
                "allow_other" => self.allow_other = true,
                "writeback_cache" => self.writeback_cache = true,
                "nowriteback_cache" => self.writeback_cache = false,
                "default_permissions" | "defaults" | "auto" | "noauto" | "_netdev" | "user" | "nouser" | "nofail" => {}
                "suid" | "nosuid" | "dev" | "nodev" | "exec" | "noexec" | "sync" | "async" | "dirsync" => {
                    self.fuse_flags.push(key.to_string())
                }
                "quota" => match value {
                    Some("off") => {}
                    Some("on") | Some("account") | None => {
                        return Err(format!(
                            "{opt}: quotas are not supported yet (neither enforced nor accounted); \
                             mount with quota=off, the default"
                        ))
                    }
                    Some(v) => return Err(format!("quota={v}: expected off, on or account")),
                },
                "spectator" | "localflocks" | "localcaching" | "noquota" | "acl" | "noacl" | "data" | "commit"
                | "statfs_quantum" | "statfs_percent" | "quota_quantum" | "discard" | "nodiscard" | "barrier"
                | "nobarrier" | "rgrplvb" | "norgrplvb" | "loccookie" | "noloccookie" | "upgrade" | "debug"
                | "nodebug" | "suiddir" | "nosuiddir" => {
                    // Accepted GFS2 options without effect here: ACLs are
                    // always on, data is always ordered.
                    if key == "spectator" {
                        return Err("spectator mounts are not supported".into());
                    }
                }
                _ => return Err(format!("unknown mount option {opt:?}")),
            }
        }
        Ok(())
    }
}

/// Reads and verifies the superblock of a device.
pub fn read_superblock(dev: &dyn BlockDevice) -> Result<Superblock> {
    if dev.size() < SB_OFFSET_BYTES + 4096 {
        return corrupt("device", format!("too small for a GFS2 filesystem ({} bytes)", dev.size()));
    }
    let mut buf = vec![0u8; 512];
    dev.read_at(SB_OFFSET_BYTES, &mut buf)?;
    let sb = Superblock::decode(&buf).map_err(|e| Error::Corrupt {
        what: "superblock".into(),
        why: format!("not a GFS2 filesystem or damaged: {e}"),
    })?;
    Ok(sb)
}

fn bare_core(dev: Arc<dyn BlockDevice>, sb: Superblock, opts: &CoreOptions) -> Result<FsCore> {
    let geom = Geometry::new(sb.bsize).at_block(0)?;
    let fs_blocks = dev.size() / sb.bsize as u64;
    Ok(FsCore {
        cache: Cache::new(sb.bsize, opts.cache_buffers),
        alloc: Allocator::new(geom.clone(), Vec::new()),
        geom,
        fs_blocks,
        dev,
        log: None,
        inodes: HashMap::new(),
        sys: SystemFiles { master: sb.master_dir.addr, root: sb.root_dir.addr, ..Default::default() },
        sb,
        jid: 0,
        opts: opts.clone(),
        revokes: Vec::new(),
        local: StatfsChange::default(),
        withdrawn: None,
        ops_since_commit: 0,
        inflight: Default::default(),
        reads: Default::default(),
        hold_commits: false,
    })
}

fn lookup_sys(fs: &mut FsCore, dir: u64, name: &str) -> Result<u64> {
    match fs.dir_lookup(dir, name.as_bytes())? {
        Some((inum, _)) => Ok(inum.addr),
        None => corrupt(format!("directory {dir}"), format!("system file {name:?} missing")),
    }
}

/// What mounting found and did, for logs and tests.
#[derive(Clone, Debug, Default)]
pub struct MountReport {
    pub replayed_blocks: usize,
    pub was_dirty: bool,
    pub orphans_freed: usize,
}

/// Mounts a filesystem on `dev`: the core, ready for operations.
pub fn mount(dev: Arc<dyn BlockDevice>, mopts: &MountOptions) -> Result<(FsCore, MountReport)> {
    let mut report = MountReport::default();
    let sb = read_superblock(&*dev)?;
    let proto = mopts.lockproto.clone().unwrap_or_else(|| sb.lockproto.clone());
    match proto.as_str() {
        "lock_nolock" => {}
        "lock_dlm" => {
            // Say whether lock_dlm came from the volume or from the options.
            let why = if sb.lockproto == "lock_dlm" {
                format!("the volume uses lock_dlm (lock table {:?})", sb.locktable)
            } else {
                format!("lockproto=lock_dlm asked, but the volume uses {}", sb.lockproto)
            };
            return Err(Error::Corrupt {
                what: "mount".into(),
                why: format!(
                    "{why}: lock_dlm needs the cluster lock manager (not available in this version); \
                     mount on one node with -o lockproto=lock_nolock"
                ),
            });
        }
        other => {
            return Err(Error::Corrupt {
                what: "superblock".into(),
                why: format!("unknown lock protocol {other:?} (a crashed fsck leaves fsck_*: run fsck.gfs2)"),
            })
        }
    }
    let copts = CoreOptions {
        read_only: mopts.read_only,
        noatime: mopts.noatime,
        errors_panic: mopts.errors_panic,
        ..Default::default()
    };
    let jid = mopts.jid.unwrap_or(0);

    // Phase 1: find and replay the journal.
    let (map, head) = {
        let mut fs = bare_core(dev.clone(), sb.clone(), &copts)?;
        let jindex = lookup_sys(&mut fs, sb.master_dir.addr, "jindex")?;
        let jaddr = match fs.dir_lookup(jindex, format!("journal{jid}").as_bytes())? {
            Some((i, _)) => i.addr,
            None => return corrupt("mount", format!("journal{jid} does not exist (hostdata=jid={jid})")),
        };
        let fs_blocks = fs.fs_blocks;
        let map = JournalMap::load(&fs.geom, jaddr, fs_blocks, &(&*dev, &fs.geom))?;
        let mut head = find_head(&*dev, &fs.geom, &map)?;
        if !head.is_clean() {
            // As the kernel does, a read-only mount replays the journal
            // too, as long as the device itself can be written.
            report.was_dirty = true;
            let plan = plan_replay(&*dev, &fs.geom, &map, head, fs_blocks)?;
            report.replayed_blocks = plan.writes.len();
            match apply_replay(&*dev, &fs.geom, &map, &plan, jid) {
                Err(Error::Io(rgfs_block::Error::ReadOnly)) => {
                    return corrupt(
                        format!("journal{jid}"),
                        "the journal needs recovery and the device is read-only; \
                         mount it once where the device is writable, or run fsck.rgfs -y",
                    )
                }
                r => r?,
            }
            head = find_head(&*dev, &fs.geom, &map)?;
        }
        (map, head)
    };

    // Phase 2: a fresh core on the replayed device.
    let mut fs = bare_core(dev.clone(), sb.clone(), &copts)?;
    fs.jid = jid;
    let master = sb.master_dir.addr;
    fs.sys.jindex = lookup_sys(&mut fs, master, "jindex")?;
    fs.sys.journal = map.dinode;
    fs.sys.rindex = lookup_sys(&mut fs, master, "rindex")?;
    fs.sys.statfs = lookup_sys(&mut fs, master, "statfs")?;
    fs.sys.per_node = lookup_sys(&mut fs, master, "per_node")?;
    let per_node = fs.sys.per_node;
    fs.sys.statfs_change = lookup_sys(&mut fs, per_node, &format!("statfs_change{jid}"))?;
    fs.sys.quota_change = lookup_sys(&mut fs, per_node, &format!("quota_change{jid}"))?;
    load_rgrps(&mut fs)?;
    // Root must be a directory.
    let root = fs.sys.root;
    if !fs.inode(root)?.di.is_dir() {
        return corrupt(format!("inode {root}"), "the root is not a directory");
    }
    let sc = fs.read_meta(fs.sys.statfs_change, &[MetaType::Dinode], fs.sys.statfs_change)?;
    fs.local = StatfsChange::decode(&sc[DINODE_SIZE..]).at_block(fs.sys.statfs_change)?;
    if !mopts.read_only {
        fs.log = Some(LogWriter::new(
            fs.geom.clone(),
            map,
            jid,
            head,
            fs.sys.statfs_change,
            fs.sys.quota_change,
        ));
        let orphans = fs.alloc.unlinked().len();
        fs.free_orphans()?;
        report.orphans_freed = orphans;
        fs.fold_statfs()?;
        fs.commit(true)?;
    }
    Ok((fs, report))
}

/// Reads rindex and every rgrp; checks counters against bitmaps.
fn load_rgrps(fs: &mut FsCore) -> Result<()> {
    let rindex = fs.sys.rindex;
    let size = fs.inode(rindex)?.di.size;
    if size == 0 || size % RINDEX_SIZE as u64 != 0 {
        return corrupt(format!("rindex inode {rindex}"), format!("size {size} is not a multiple of 96"));
    }
    let raw = fs.read_data(rindex, 0, size as usize)?;
    let mut rgrps = Vec::new();
    let dev_blocks = fs.dev.size() / fs.bsize();
    for (i, chunk) in raw.chunks_exact(RINDEX_SIZE).enumerate() {
        let ri = Rindex::decode(chunk).map_err(|e| Error::Corrupt { what: format!("rindex entry {i}"), why: e.to_string() })?;
        ri.check_geometry(&fs.geom).map_err(|e| Error::Corrupt { what: format!("rindex entry {i}"), why: e.to_string() })?;
        if ri.data_end() > dev_blocks {
            return corrupt(
                format!("rindex entry {i}"),
                format!("resource group ends at block {} but the device has {dev_blocks} blocks (device truncated?)", ri.data_end()),
            );
        }
        rgrps.push(ri);
    }
    rgrps.sort();
    if rgrps.windows(2).any(|w| w[0].data_end() > w[1].addr) {
        return corrupt("rindex", "resource groups overlap");
    }
    fs.fs_blocks = rgrps.last().map(|r| r.data_end()).unwrap_or(0);
    let mut loaded = Vec::with_capacity(rgrps.len());
    for ri in rgrps {
        let hb = fs.read_meta(ri.addr, &[MetaType::Rgrp], ri.addr)?;
        let header = RgrpHeader::decode(&hb).at_block(ri.addr)?;
        header.check_against(&ri).at_block(ri.addr)?;
        let mut bitmap = vec![0u8; ri.bitbytes as usize];
        for i in 0..ri.length {
            let b = ri.addr + i as u64;
            let buf = if i == 0 { hb.clone() } else { fs.read_meta(b, &[MetaType::RgrpBitmap], ri.addr)? };
            let (off, span) = fs.geom.bitmap_block_span(i, ri.bitbytes);
            let n = (span.end - span.start) as usize;
            bitmap[span.start as usize..span.end as usize].copy_from_slice(&buf[off..off + n]);
        }
        loaded.push(Rgrp::new(ri, header, bitmap));
    }
    fs.alloc = Allocator::new(fs.geom.clone(), loaded);
    if let Err(e) = fs.alloc.check() {
        return corrupt("resource groups", e);
    }
    Ok(())
}
