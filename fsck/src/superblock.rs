//! Pass "superblock": reads the superblock at byte 65536 and checks it
//! field by field. A damaged superblock is rebuilt from what the rest of
//! the volume says: the block size from where the first resource group
//! header sits, the master and root directories by looking for them.
//!
//! Also owns the lock-protocol guard: while fsck may write, `lock_*`
//! reads `fsck_*` so a mount attempt is refused (as fsck.gfs2 does).

use rgfs::format::consts::{
    dif, MetaType, FS_FORMAT, FS_FORMAT_MIN, GFS2_MAGIC, LOCKNAME_LEN, MULTIHOST_FORMAT,
    SB_OFFSET_BYTES,
};
use rgfs::format::meta::{block_type, Inum};
use rgfs::format::superblock::{check_block_size, RawSuperblock};
use rgfs::format::{Dinode, Geometry, OnDisk, RgrpHeader, Rindex, Superblock};
use rgfs_block::BlockDevice;
use zerocopy::FromBytes;

use crate::check::Fsck;
use crate::dir;
use crate::report::{Fix, Report};
use crate::volume::{fatal, read_rgrp_raw, Result, Volume};

const OBJ: &str = "superblock";

/// Reads a lock name field: NUL-terminated printable ASCII.
fn lock_name(bytes: &[u8; LOCKNAME_LEN]) -> Option<String> {
    let len = bytes.iter().position(|&b| b == 0)?;
    let name = &bytes[..len];
    name.iter()
        .all(|b| b.is_ascii() && !b.is_ascii_control())
        .then(|| String::from_utf8_lossy(name).into_owned())
}

/// Finds the block size from the position of the first resource group
/// header (right after the superblock's block).
fn probe_block_size(dev: &dyn BlockDevice) -> Option<u32> {
    for bsize in [4096u32, 2048, 1024, 512] {
        let addr = SB_OFFSET_BYTES / bsize as u64 + 1;
        let mut buf = vec![0u8; bsize as usize];
        if dev.read_at(addr * bsize as u64, &mut buf).is_err() {
            continue;
        }
        if block_type(&buf) == Some(MetaType::Rgrp) {
            return Some(bsize);
        }
    }
    None
}

/// Whether `addr` holds a directory dinode for itself.
fn dir_at(vol: &Volume, addr: u64) -> Option<Dinode> {
    let block = vol.read(addr).ok()?;
    let d = Dinode::decode(&block).ok()?;
    (d.is_dir() && d.num.addr == addr).then_some(d)
}

/// Looks for the master and root directories among the dinodes the
/// resource groups (found by following rg_skip from the first header)
/// mark in use.
fn search_system_dirs(vol: &Volume) -> (Option<Inum>, Option<Inum>) {
    let (mut master, mut root) = (None, None);
    let mut addr = vol.geom.sb_addr() + 1;
    for _ in 0..100_000 {
        let Ok(block) = vol.read(addr) else { break };
        let Ok(raw) = RgrpHeader::raw(&block) else {
            break;
        };
        if raw.rg_header.check(MetaType::Rgrp).is_err() {
            break;
        }
        let bitbytes = raw.rg_bitbytes.get();
        let ri = Rindex {
            addr,
            length: vol.geom.rgrp_meta_blocks(bitbytes),
            data0: addr + vol.geom.rgrp_meta_blocks(bitbytes) as u64,
            data: bitbytes.saturating_mul(4),
            bitbytes,
        };
        if ri.data_end() > vol.dev_blocks {
            break;
        }
        if let Ok((bitmap, _)) = read_rgrp_raw(vol, &ri) {
            for i in 0..ri.data {
                if rgfs::format::bitmap::get(&bitmap, i) != rgfs::format::BlockState::Dinode {
                    continue;
                }
                let b = ri.data0 + i as u64;
                let Some(d) = dir_at(vol, b) else { continue };
                let system = d.flags & dif::SYSTEM != 0;
                if master.is_none()
                    && system
                    && dir::lookup(vol, b, b"jindex").ok().flatten().is_some()
                {
                    master = Some(d.num);
                } else if root.is_none() && !system {
                    let dotdot = dir::lookup(vol, b, b"..").ok().flatten();
                    if dotdot.is_some_and(|e| e.inum.addr == b) {
                        root = Some(d.num);
                    }
                }
                if master.is_some() && root.is_some() {
                    return (master, root);
                }
            }
        }
        let skip = raw.rg_skip.get();
        if skip == 0 {
            break;
        }
        addr += skip as u64;
    }
    (master, root)
}

/// Findings about the superblock, reported only once the superblock is
/// known to be usable: a run that stops on a device it cannot use must not
/// have said "fixed" before (nothing is written until the end of [`run`]).
#[derive(Default)]
struct Findings(Vec<(String, Fix)>);

impl Findings {
    fn add(&mut self, message: impl Into<String>, fix: Fix) {
        self.0.push((message.into(), fix));
    }

    /// Reports them; returns whether any repair was accepted.
    fn report(self, report: &mut Report) -> bool {
        let mut accepted = false;
        for (message, fix) in self.0 {
            accepted |= report.problem(OBJ, message, fix);
        }
        accepted
    }
}

/// Whether the device holds a GFS2 volume, however damaged: the superblock
/// has the GFS2 magic, or its format fields still hold together (a block
/// size with its shift, the two format numbers), or a resource group header
/// follows it. Zeros, random bytes and other filesystems fail all three.
fn looks_like_gfs2(dev: &dyn BlockDevice, raw: &RawSuperblock) -> bool {
    let fields_hold = check_block_size(raw.sb_bsize.get())
        .is_ok_and(|shift| shift == raw.sb_bsize_shift.get())
        && (FS_FORMAT_MIN..=FS_FORMAT).contains(&raw.sb_fs_format.get())
        && raw.sb_multihost_format.get() == MULTIHOST_FORMAT;
    raw.sb_header.mh_magic.get() == GFS2_MAGIC || fields_hold || probe_block_size(dev).is_some()
}

/// Checks the superblock; returns it (repaired in memory if it had to be).
/// A device that does not look like GFS2 at all ([`looks_like_gfs2`]) is
/// an operational error, and nothing is written.
pub fn run(dev: &dyn BlockDevice, report: &mut Report) -> Result<Superblock> {
    let mut buf = vec![0u8; 4096];
    if dev.size() < SB_OFFSET_BYTES + buf.len() as u64 {
        return fatal(format!(
            "the device ({} bytes) is too small to hold a GFS2 superblock",
            dev.size()
        ));
    }
    dev.read_at(SB_OFFSET_BYTES, &mut buf)?;
    let raw = *RawSuperblock::ref_from_prefix(&buf).expect("4096 bytes").0;
    if !looks_like_gfs2(dev, &raw) {
        return fatal(format!(
            "no GFS2 superblock at byte {SB_OFFSET_BYTES} (magic {:#010x}, not {GFS2_MAGIC:#010x}) and no resource \
             group header after it: not a GFS2 filesystem",
            raw.sb_header.mh_magic.get()
        ));
    }
    let mut findings = Findings::default();
    let mut sb = match Superblock::decode(&buf) {
        Ok(sb) => sb,
        Err(e) => {
            report.note(
                OBJ,
                format!("cannot be read as it is ({e}); rebuilding it from the volume"),
            );
            rebuild(dev, &raw, &mut findings)?
        }
    };
    // A lock protocol left as fsck_* by an interrupted fsck.
    if let Some(rest) = sb.lockproto.strip_prefix("fsck_") {
        let fixed = format!("lock_{rest}");
        findings.add(
            format!(
                "lock protocol is {:?} (left by an interrupted fsck), should be {fixed:?}",
                sb.lockproto
            ),
            Fix::Safe,
        );
        sb.lockproto = fixed;
    }
    let geom =
        Geometry::new(sb.bsize).map_err(|e| crate::volume::FsckError::Fatal(e.to_string()))?;
    let vol = Volume::new(dev, geom, false);
    let (mut found_master, mut found_root) = (None, None);
    let mut searched = false;
    for (field, which) in [("sb_master_dir", 0), ("sb_root_dir", 1)] {
        let inum = if which == 0 {
            sb.master_dir
        } else {
            sb.root_dir
        };
        match dir_at(&vol, inum.addr) {
            Some(d) if d.num.formal_ino == inum.formal_ino => continue,
            Some(d) => {
                findings.add(
                    format!(
                        "{field} formal inode number is {}, the directory's is {}",
                        inum.formal_ino, d.num.formal_ino
                    ),
                    Fix::Safe,
                );
                if which == 0 {
                    sb.master_dir = d.num;
                } else {
                    sb.root_dir = d.num;
                }
                continue;
            }
            None => {}
        }
        if !searched {
            (found_master, found_root) = search_system_dirs(&vol);
            searched = true;
        }
        let found = if which == 0 { found_master } else { found_root };
        match found {
            Some(num) => {
                findings.add(format!("{field} points to block {}, which is not the directory; found it at block {}", inum.addr, num.addr), Fix::Risky);
                if which == 0 {
                    sb.master_dir = num;
                } else {
                    sb.root_dir = num;
                }
            }
            None => {
                return fatal(format!("{field} points to block {}, which is not a directory, and no replacement was found", inum.addr));
            }
        }
    }
    if findings.report(report) {
        write_superblock(dev, &sb)?;
    }
    Ok(sb)
}

/// Rebuilds a superblock that does not decode, field by field.
fn rebuild(
    dev: &dyn BlockDevice,
    raw: &RawSuperblock,
    findings: &mut Findings,
) -> Result<Superblock> {
    if let Err(e) = raw.sb_header.check(MetaType::Superblock) {
        findings.add(format!("bad metadata header: {e}"), Fix::Safe);
    }
    let bsize = raw.sb_bsize.get();
    let bsize = match check_block_size(bsize) {
        Ok(shift)
            if shift == raw.sb_bsize_shift.get()
                && probe_block_size(dev).is_none_or(|b| b == bsize) =>
        {
            bsize
        }
        _ => match probe_block_size(dev) {
            Some(found) => {
                findings.add(
                    format!(
                        "block size {bsize} (shift {}) is wrong; the resource groups say {found}",
                        raw.sb_bsize_shift.get()
                    ),
                    Fix::Safe,
                );
                found
            }
            None => {
                return fatal(format!(
                    "the superblock's block size {bsize} (shift {}) is impossible, and no resource group \
                     header tells the right one",
                    raw.sb_bsize_shift.get()
                ))
            }
        },
    };
    let fs_format = raw.sb_fs_format.get();
    let fs_format = if (FS_FORMAT_MIN..=FS_FORMAT).contains(&fs_format) {
        fs_format
    } else {
        findings.add(
            format!("sb_fs_format is {fs_format}, should be {FS_FORMAT}"),
            Fix::Safe,
        );
        FS_FORMAT
    };
    if raw.sb_multihost_format.get() != MULTIHOST_FORMAT {
        findings.add(
            format!(
                "sb_multihost_format is {}, should be {MULTIHOST_FORMAT}",
                raw.sb_multihost_format.get()
            ),
            Fix::Safe,
        );
    }
    let locktable = lock_name(&raw.sb_locktable).unwrap_or_else(|| {
        findings.add(
            "sb_locktable is not a NUL-terminated name; cleared",
            Fix::Risky,
        );
        String::new()
    });
    let lockproto = lock_name(&raw.sb_lockproto).unwrap_or_else(|| {
        let guess = if locktable.contains(':') {
            "lock_dlm"
        } else {
            "lock_nolock"
        };
        findings.add(
            format!("sb_lockproto is not a NUL-terminated name; set to {guess}"),
            Fix::Risky,
        );
        guess.to_string()
    });
    Ok(Superblock {
        fs_format,
        multihost_format: MULTIHOST_FORMAT,
        bsize,
        bsize_shift: bsize.trailing_zeros(),
        master_dir: Inum::from(&raw.sb_master_dir),
        root_dir: Inum::from(&raw.sb_root_dir),
        lockproto,
        locktable,
        uuid: raw.sb_uuid,
    })
}

/// Writes the superblock (its whole block, zero after the structure).
pub fn write_superblock(dev: &dyn BlockDevice, sb: &Superblock) -> Result<()> {
    let mut block = vec![0u8; sb.bsize as usize];
    sb.encode_into(&mut block);
    dev.write_at(SB_OFFSET_BYTES, &block)?;
    Ok(())
}

/// Switches the lock protocol between `lock_*` (off) and `fsck_*` (on) on
/// disk; the in-memory superblock keeps `lock_*`.
pub fn set_lock_guard(fs: &mut Fsck, on: bool) -> Result<()> {
    let Some(rest) = fs.sb.lockproto.strip_prefix("lock_") else {
        return Ok(());
    };
    let mut sb = fs.sb.clone();
    if on {
        sb.lockproto = format!("fsck_{rest}");
    }
    write_superblock(fs.vol.dev, &sb)?;
    fs.vol.dev.flush()?;
    Ok(())
}
