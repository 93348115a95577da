//! The dinode (`struct gfs2_dinode`, 232 bytes at the start of an inode's
//! block; the rest of the block is stuffed data or the top pointer array).
//!
//! Invariants of a verified [`Dinode`]:
//! - the mode has a valid file type;
//! - `height <= MAX_META_HEIGHT`; `depth <= DIR_MAX_DEPTH`;
//! - nanosecond fields are below 10^9.
//!
//! Checks that need context (the block number, the block size) are
//! [`Dinode::check_addr`] and [`Dinode::check_geometry`].

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::consts::{dif, dt_from_mode, s_if, MetaType, DIR_MAX_DEPTH, MAX_META_HEIGHT};
use super::error::{bad_field, Result};
use super::geometry::Geometry;
use super::meta::{Inum, RawInum, RawMetaHeader};
use super::ondisk::{assert_size, Be16, Be32, Be64, OnDisk};

pub const DINODE_SIZE: usize = 232;

#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct RawDinode {
    pub di_header: RawMetaHeader,
    pub di_num: RawInum,
    pub di_mode: Be32,
    pub di_uid: Be32,
    pub di_gid: Be32,
    pub di_nlink: Be32,
    pub di_size: Be64,
    pub di_blocks: Be64,
    pub di_atime: Be64,
    pub di_mtime: Be64,
    pub di_ctime: Be64,
    pub di_major: Be32,
    pub di_minor: Be32,
    pub di_goal_meta: Be64,
    pub di_goal_data: Be64,
    pub di_generation: Be64,
    pub di_flags: Be32,
    pub di_payload_format: Be32,
    pub pad1: [u8; 2],
    pub di_height: Be16,
    pub pad2: [u8; 4],
    pub pad3: [u8; 2],
    pub di_depth: Be16,
    pub di_entries: Be32,
    pub pad4: RawInum,
    pub di_eattr: Be64,
    pub di_atime_nsec: Be32,
    pub di_mtime_nsec: Be32,
    pub di_ctime_nsec: Be32,
    pub di_reserved: [u8; 44],
}
assert_size!(RawDinode, DINODE_SIZE);

/// A timestamp as GFS2 stores it: seconds and nanoseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp {
    pub sec: i64,
    pub nsec: u32,
}

impl Timestamp {
    pub fn new(sec: i64, nsec: u32) -> Self {
        Timestamp { sec, nsec }
    }

    /// The current time.
    pub fn now() -> Self {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp::new(d.as_secs() as i64, d.subsec_nanos())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dinode {
    pub num: Inum,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub size: u64,
    /// Every block the inode owns: itself, indirect, data, leaf, EA blocks.
    pub blocks: u64,
    pub atime: Timestamp,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
    pub major: u32,
    pub minor: u32,
    pub goal_meta: u64,
    pub goal_data: u64,
    pub generation: u64,
    pub flags: u32,
    pub payload_format: u32,
    /// Height of the metadata tree; 0 = data stuffed in the dinode block.
    pub height: u16,
    /// Exhash directories: log2 of the number of hash table pointers.
    pub depth: u16,
    /// Directories: live entries including "." and "..".
    pub entries: u32,
    /// Block of the extended attribute block (or EA indirect block), 0 if none.
    pub eattr: u64,
}

const WHAT: &str = "dinode";

fn check_nsec(field: &'static str, nsec: u32) -> Result<u32> {
    if nsec >= 1_000_000_000 {
        return bad_field(WHAT, field, nsec, "not below 10^9");
    }
    Ok(nsec)
}

impl OnDisk for Dinode {
    type Raw = RawDinode;
    const NAME: &'static str = WHAT;

    fn verify(raw: &RawDinode) -> Result<Self> {
        raw.di_header.check(MetaType::Dinode)?;
        let mode = raw.di_mode.get();
        if dt_from_mode(mode).is_none() {
            return bad_field(WHAT, "di_mode", mode, "no valid file type");
        }
        let height = raw.di_height.get();
        if height > MAX_META_HEIGHT {
            return bad_field(WHAT, "di_height", height, "above GFS2_MAX_META_HEIGHT");
        }
        let depth = raw.di_depth.get();
        if depth > DIR_MAX_DEPTH {
            return bad_field(WHAT, "di_depth", depth, "above GFS2_DIR_MAX_DEPTH");
        }
        let flags = raw.di_flags.get();
        if flags & dif::EXHASH != 0 && mode & s_if::FMT != s_if::DIR {
            return bad_field(WHAT, "di_flags", flags, "EXHASH on a non-directory");
        }
        Ok(Dinode {
            num: Inum::from(&raw.di_num),
            mode,
            uid: raw.di_uid.get(),
            gid: raw.di_gid.get(),
            nlink: raw.di_nlink.get(),
            size: raw.di_size.get(),
            blocks: raw.di_blocks.get(),
            atime: Timestamp::new(
                raw.di_atime.get() as i64,
                check_nsec("di_atime_nsec", raw.di_atime_nsec.get())?,
            ),
            mtime: Timestamp::new(
                raw.di_mtime.get() as i64,
                check_nsec("di_mtime_nsec", raw.di_mtime_nsec.get())?,
            ),
            ctime: Timestamp::new(
                raw.di_ctime.get() as i64,
                check_nsec("di_ctime_nsec", raw.di_ctime_nsec.get())?,
            ),
            major: raw.di_major.get(),
            minor: raw.di_minor.get(),
            goal_meta: raw.di_goal_meta.get(),
            goal_data: raw.di_goal_data.get(),
            generation: raw.di_generation.get(),
            flags,
            payload_format: raw.di_payload_format.get(),
            height,
            depth,
            entries: raw.di_entries.get(),
            eattr: raw.di_eattr.get(),
        })
    }

    fn to_raw(&self) -> RawDinode {
        RawDinode {
            di_header: RawMetaHeader::new(MetaType::Dinode),
            di_num: self.num.into(),
            di_mode: self.mode.into(),
            di_uid: self.uid.into(),
            di_gid: self.gid.into(),
            di_nlink: self.nlink.into(),
            di_size: self.size.into(),
            di_blocks: self.blocks.into(),
            di_atime: (self.atime.sec as u64).into(),
            di_mtime: (self.mtime.sec as u64).into(),
            di_ctime: (self.ctime.sec as u64).into(),
            di_major: self.major.into(),
            di_minor: self.minor.into(),
            di_goal_meta: self.goal_meta.into(),
            di_goal_data: self.goal_data.into(),
            di_generation: self.generation.into(),
            di_flags: self.flags.into(),
            di_payload_format: self.payload_format.into(),
            pad1: [0; 2],
            di_height: self.height.into(),
            pad2: [0; 4],
            pad3: [0; 2],
            di_depth: self.depth.into(),
            di_entries: self.entries.into(),
            pad4: RawInum::default(),
            di_eattr: self.eattr.into(),
            di_atime_nsec: self.atime.nsec.into(),
            di_mtime_nsec: self.mtime.nsec.into(),
            di_ctime_nsec: self.ctime.nsec.into(),
            di_reserved: [0; 44],
        }
    }
}

impl Dinode {
    /// Checks that the dinode is the one its block should hold.
    pub fn check_addr(&self, block: u64) -> Result<()> {
        if self.num.addr != block {
            return bad_field(WHAT, "di_num.no_addr", self.num.addr, "not the dinode's block");
        }
        Ok(())
    }

    /// Checks the fields whose limits depend on the block size.
    pub fn check_geometry(&self, geom: &Geometry) -> Result<()> {
        let max = if self.is_dir() { geom.max_jheight } else { geom.max_height };
        if self.height >= max {
            return bad_field(WHAT, "di_height", self.height, "too tall for the block size");
        }
        if self.height == 0 && !self.is_exhash() && self.size > geom.max_stuffed() {
            return bad_field(WHAT, "di_size", self.size, "stuffed data larger than the block");
        }
        if self.is_exhash() && self.size != 8u64 << self.depth {
            return bad_field(WHAT, "di_size", self.size, "not 8 * 2^di_depth for a hashed directory");
        }
        Ok(())
    }

    pub fn file_type(&self) -> u32 {
        self.mode & s_if::FMT
    }

    pub fn is_dir(&self) -> bool {
        self.file_type() == s_if::DIR
    }

    pub fn is_reg(&self) -> bool {
        self.file_type() == s_if::REG
    }

    pub fn is_symlink(&self) -> bool {
        self.file_type() == s_if::LNK
    }

    pub fn is_exhash(&self) -> bool {
        self.flags & dif::EXHASH != 0
    }

    /// Whether the file's data blocks carry JD headers (directories only;
    /// journaled regular files store raw data).
    pub fn data_has_headers(&self) -> bool {
        self.is_dir()
    }

    /// The DT_* type for directory entries naming this inode.
    pub fn dirent_type(&self) -> u16 {
        dt_from_mode(self.mode).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_offsets_match_gfs2_ondisk_h() {
        use core::mem::offset_of;
        assert_eq!(offset_of!(RawDinode, di_num), 24);
        assert_eq!(offset_of!(RawDinode, di_mode), 40);
        assert_eq!(offset_of!(RawDinode, di_size), 56);
        assert_eq!(offset_of!(RawDinode, di_atime), 72);
        assert_eq!(offset_of!(RawDinode, di_goal_meta), 104);
        assert_eq!(offset_of!(RawDinode, di_flags), 128);
        assert_eq!(offset_of!(RawDinode, di_height), 138);
        assert_eq!(offset_of!(RawDinode, di_depth), 146);
        assert_eq!(offset_of!(RawDinode, di_entries), 148);
        assert_eq!(offset_of!(RawDinode, di_eattr), 168);
        assert_eq!(offset_of!(RawDinode, di_atime_nsec), 176);
        assert_eq!(offset_of!(RawDinode, di_reserved), 188);
    }
}
