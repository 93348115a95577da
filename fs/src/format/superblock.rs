//! The superblock (`struct gfs2_sb`, 272 bytes at byte 65536).
//!
//! Invariants of a verified [`Superblock`]:
//! - `bsize` is a power of two in `MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE` and
//!   `bsize_shift == log2(bsize)`;
//! - `fs_format` is 1801 or 1802, `multihost_format` is 1900;
//! - lock names are ASCII without NUL and at most 63 bytes long;
//! - the master and root directories have non-zero block addresses.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::consts::*;
use super::error::{bad_field, Result};
use super::meta::{Inum, RawInum, RawMetaHeader};
use super::ondisk::{assert_size, Be32, OnDisk};

#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct RawSuperblock {
    pub sb_header: RawMetaHeader,
    pub sb_fs_format: Be32,
    pub sb_multihost_format: Be32,
    pub pad0: [u8; 4],
    pub sb_bsize: Be32,
    pub sb_bsize_shift: Be32,
    pub pad1: [u8; 4],
    pub sb_master_dir: RawInum,
    pub pad2: RawInum,
    pub sb_root_dir: RawInum,
    pub sb_lockproto: [u8; LOCKNAME_LEN],
    pub sb_locktable: [u8; LOCKNAME_LEN],
    pub pad3: RawInum,
    pub pad4: RawInum,
    pub sb_uuid: [u8; 16],
}
assert_size!(RawSuperblock, 272);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Superblock {
    pub fs_format: u32,
    pub multihost_format: u32,
    pub bsize: u32,
    pub bsize_shift: u32,
    pub master_dir: Inum,
    pub root_dir: Inum,
    /// "lock_dlm" or "lock_nolock" (or "fsck_dlm"/"fsck_nolock" while an
    /// fsck runs).
    pub lockproto: String,
    /// "cluster:fsname".
    pub locktable: String,
    pub uuid: [u8; 16],
}

const WHAT: &str = "superblock";

/// Reads a NUL-terminated lock name field.
fn lock_name(field: &'static str, bytes: &[u8; LOCKNAME_LEN]) -> Result<String> {
    let Some(len) = bytes.iter().position(|&b| b == 0) else {
        return bad_field(WHAT, field, LOCKNAME_LEN as u64, "not NUL-terminated");
    };
    let name = &bytes[..len];
    if let Some(&b) = name.iter().find(|b| !b.is_ascii() || b.is_ascii_control()) {
        return bad_field(WHAT, field, b, "not printable ASCII");
    }
    Ok(String::from_utf8_lossy(name).into_owned())
}

fn lock_name_bytes(name: &str) -> [u8; LOCKNAME_LEN] {
    let mut out = [0u8; LOCKNAME_LEN];
    let bytes = name.as_bytes();
    assert!(bytes.len() < LOCKNAME_LEN, "lock name {name:?} too long");
    out[..bytes.len()].copy_from_slice(bytes);
    out
}

/// Checks a block size: a power of two rgfs supports.
pub fn check_block_size(bsize: u32) -> Result<u32> {
    if !bsize.is_power_of_two() || !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&bsize) {
        return bad_field(WHAT, "sb_bsize", bsize, "not a power of two in 512..=4096");
    }
    Ok(bsize.trailing_zeros())
}

impl OnDisk for Superblock {
    type Raw = RawSuperblock;
    const NAME: &'static str = WHAT;

    fn verify(raw: &RawSuperblock) -> Result<Self> {
        raw.sb_header.check(MetaType::Superblock)?;
        let fs_format = raw.sb_fs_format.get();
        if !(FS_FORMAT_MIN..=FS_FORMAT).contains(&fs_format) {
            return bad_field(WHAT, "sb_fs_format", fs_format, "not 1801 or 1802");
        }
        let multihost_format = raw.sb_multihost_format.get();
        if multihost_format != MULTIHOST_FORMAT {
            return bad_field(WHAT, "sb_multihost_format", multihost_format, "not 1900");
        }
        let bsize = raw.sb_bsize.get();
        let shift = check_block_size(bsize)?;
        if raw.sb_bsize_shift.get() != shift {
            return bad_field(
                WHAT,
                "sb_bsize_shift",
                raw.sb_bsize_shift.get(),
                "does not match sb_bsize",
            );
        }
        let master_dir = Inum::from(&raw.sb_master_dir);
        if master_dir.addr == 0 {
            return bad_field(WHAT, "sb_master_dir", 0u64, "zero block address");
        }
        let root_dir = Inum::from(&raw.sb_root_dir);
        if root_dir.addr == 0 {
            return bad_field(WHAT, "sb_root_dir", 0u64, "zero block address");
        }
        Ok(Superblock {
            fs_format,
            multihost_format,
            bsize,
            bsize_shift: shift,
            master_dir,
            root_dir,
            lockproto: lock_name("sb_lockproto", &raw.sb_lockproto)?,
            locktable: lock_name("sb_locktable", &raw.sb_locktable)?,
            uuid: raw.sb_uuid,
        })
    }

    fn to_raw(&self) -> RawSuperblock {
        RawSuperblock {
            sb_header: RawMetaHeader::new(MetaType::Superblock),
            sb_fs_format: self.fs_format.into(),
            sb_multihost_format: self.multihost_format.into(),
            pad0: [0; 4],
            sb_bsize: self.bsize.into(),
            sb_bsize_shift: self.bsize_shift.into(),
            pad1: [0; 4],
            sb_master_dir: self.master_dir.into(),
            pad2: RawInum::default(),
            sb_root_dir: self.root_dir.into(),
            sb_lockproto: lock_name_bytes(&self.lockproto),
            sb_locktable: lock_name_bytes(&self.locktable),
            pad3: RawInum::default(),
            pad4: RawInum::default(),
            sb_uuid: self.uuid,
        }
    }
}

impl Superblock {
    /// The filesystem block holding the superblock.
    pub fn block_addr(&self) -> u64 {
        SB_OFFSET_BYTES >> self.bsize_shift
    }

    /// The lockspace name: the part of the lock table after ':' (or the
    /// whole table if it has no ':').
    pub fn fsname(&self) -> &str {
        self.locktable
            .split_once(':')
            .map_or(self.locktable.as_str(), |(_, fs)| fs)
    }
}

/// Validates a lock table the way mkfs.gfs2 does: `cluster:fsname`, the
/// cluster at most 32 characters, the fsname 1..=30, both of
/// `[A-Za-z0-9_-]`. Returns a message saying what is wrong.
pub fn validate_locktable(table: &str) -> Result<(), String> {
    let Some((cluster, fsname)) = table.split_once(':') else {
        return Err(format!(
            "lock table {table:?} is not of the form cluster:fsname"
        ));
    };
    let valid = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    };
    if cluster.is_empty() || cluster.len() > 32 {
        return Err(format!(
            "cluster name {cluster:?} must be 1 to 32 characters"
        ));
    }
    if fsname.is_empty() || fsname.len() > 30 {
        return Err(format!(
            "filesystem name {fsname:?} must be 1 to 30 characters"
        ));
    }
    if !valid(cluster) {
        return Err(format!(
            "cluster name {cluster:?} may only contain letters, digits, '_' and '-'"
        ));
    }
    if !valid(fsname) {
        return Err(format!(
            "filesystem name {fsname:?} may only contain letters, digits, '_' and '-'"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locktable_validation_follows_mkfs_gfs2() {
        assert!(validate_locktable("pacemaker:pcmk").is_ok());
        assert!(validate_locktable("a:b").is_ok());
        assert!(validate_locktable(&format!("{}:{}", "c".repeat(32), "f".repeat(30))).is_ok());
        for bad in [
            "nocolon",
            ":fs",
            "cluster:",
            "clu ster:fs",
            "cluster:f/s",
            &format!("{}:fs", "c".repeat(33)),
            &format!("c:{}", "f".repeat(31)),
        ] {
            assert!(validate_locktable(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn block_address_depends_on_block_size() {
        let mut sb = Superblock {
            fs_format: FS_FORMAT,
            multihost_format: MULTIHOST_FORMAT,
            bsize: 4096,
            bsize_shift: 12,
            master_dir: Inum::new(3, 4124),
            root_dir: Inum::new(16, 8760),
            lockproto: "lock_dlm".into(),
            locktable: "pacemaker:pcmk".into(),
            uuid: [7; 16],
        };
        assert_eq!(sb.block_addr(), 16);
        assert_eq!(sb.fsname(), "pcmk");
        sb.bsize = 512;
        sb.bsize_shift = 9;
        assert_eq!(sb.block_addr(), 128);
    }
}
