//! Constants of the GFS2 on-disk format (`linux/gfs2_ondisk.h`).

/// Every metadata block starts with this magic number.
pub const GFS2_MAGIC: u32 = 0x0116_1970;

/// The "basic block" (512 bytes) in which the superblock address is counted.
pub const BASIC_BLOCK: u64 = 512;
pub const BASIC_BLOCK_SHIFT: u32 = 9;
/// The superblock lives at basic block 128 = byte 65536 whatever the block size.
pub const SB_ADDR_BASIC: u64 = 128;
pub const SB_OFFSET_BYTES: u64 = SB_ADDR_BASIC * BASIC_BLOCK;

/// `sb_fs_format`: 1801 is the original GFS2 format, 1802 adds the
/// `trusted.` extended attribute namespace.
pub const FS_FORMAT_MIN: u32 = 1801;
pub const FS_FORMAT: u32 = 1802;
/// `sb_multihost_format`.
pub const MULTIHOST_FORMAT: u32 = 1900;

/// Smallest and largest block sizes rgfs accepts (the largest is the x86-64
/// page size, the kernel's limit).
pub const MIN_BLOCK_SIZE: u32 = 512;
pub const MAX_BLOCK_SIZE: u32 = 4096;

/// Length of `sb_lockproto` and `sb_locktable`, including the terminating NUL.
pub const LOCKNAME_LEN: usize = 64;

/// Metadata block types (`mh_type`) and the format each carries (`mh_format`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u32)]
pub enum MetaType {
    Superblock = 1,
    Rgrp = 2,
    RgrpBitmap = 3,
    Dinode = 4,
    Indirect = 5,
    Leaf = 6,
    /// A directory hash-table data block ("journaled data").
    Jdata = 7,
    LogHeader = 8,
    LogDescriptor = 9,
    Ea = 10,
    EaData = 11,
    /// A log continuation block (holds revokes).
    LogBlock = 12,
    QuotaChange = 14,
}

impl MetaType {
    pub const ALL: [MetaType; 13] = [
        MetaType::Superblock,
        MetaType::Rgrp,
        MetaType::RgrpBitmap,
        MetaType::Dinode,
        MetaType::Indirect,
        MetaType::Leaf,
        MetaType::Jdata,
        MetaType::LogHeader,
        MetaType::LogDescriptor,
        MetaType::Ea,
        MetaType::EaData,
        MetaType::LogBlock,
        MetaType::QuotaChange,
    ];

    pub fn from_u32(value: u32) -> Option<MetaType> {
        MetaType::ALL.into_iter().find(|t| *t as u32 == value)
    }

    /// The `mh_format` a block of this type carries.
    pub const fn format(self) -> u32 {
        match self {
            MetaType::Superblock => 100,
            MetaType::Rgrp => 200,
            MetaType::RgrpBitmap => 300,
            MetaType::Dinode => 400,
            MetaType::Indirect => 500,
            MetaType::Leaf => 600,
            MetaType::Jdata => 700,
            MetaType::LogHeader => 800,
            MetaType::LogDescriptor => 900,
            MetaType::LogBlock => 1000,
            MetaType::QuotaChange => 1400,
            MetaType::Ea => 1600,
            MetaType::EaData => 1700,
        }
    }

    /// A short name for messages.
    pub const fn name(self) -> &'static str {
        match self {
            MetaType::Superblock => "superblock",
            MetaType::Rgrp => "resource group header",
            MetaType::RgrpBitmap => "resource group bitmap",
            MetaType::Dinode => "dinode",
            MetaType::Indirect => "indirect block",
            MetaType::Leaf => "directory leaf",
            MetaType::Jdata => "directory data block",
            MetaType::LogHeader => "log header",
            MetaType::LogDescriptor => "log descriptor",
            MetaType::Ea => "extended attribute block",
            MetaType::EaData => "extended attribute data block",
            MetaType::LogBlock => "log continuation block",
            MetaType::QuotaChange => "quota change block",
        }
    }
}

/// Formats of structures stored inside files (`di_payload_format`,
/// `lf_dirent_format`).
pub const FORMAT_RINDEX: u32 = 1100;
pub const FORMAT_DIRENT: u32 = 1200;
pub const FORMAT_QUOTA: u32 = 1500;

/// Resource group flags (`rg_flags`).
pub mod rgf {
    pub const JOURNAL: u32 = 0x01;
    pub const METAONLY: u32 = 0x02;
    pub const DATAONLY: u32 = 0x04;
    pub const NOALLOC: u32 = 0x08;
    pub const TRIMMED: u32 = 0x10;
    pub const ALL: u32 = JOURNAL | METAONLY | DATAONLY | NOALLOC | TRIMMED;
}

/// Dinode flags (`di_flags`).
pub mod dif {
    pub const JDATA: u32 = 0x0000_0001;
    pub const EXHASH: u32 = 0x0000_0002;
    pub const UNUSED: u32 = 0x0000_0004;
    pub const EA_INDIRECT: u32 = 0x0000_0008;
    pub const DIRECTIO: u32 = 0x0000_0010;
    pub const IMMUTABLE: u32 = 0x0000_0020;
    pub const APPENDONLY: u32 = 0x0000_0040;
    pub const NOATIME: u32 = 0x0000_0080;
    pub const SYNC: u32 = 0x0000_0100;
    pub const SYSTEM: u32 = 0x0000_0200;
    pub const TOPDIR: u32 = 0x0000_0400;
    pub const TRUNC_IN_PROG: u32 = 0x2000_0000;
    pub const INHERIT_DIRECTIO: u32 = 0x4000_0000;
    pub const INHERIT_JDATA: u32 = 0x8000_0000;
}

/// The deepest metadata tree a dinode may have.
pub const MAX_META_HEIGHT: u16 = 10;
/// The deepest an exhash directory's hash table may get (2^17 pointers).
pub const DIR_MAX_DEPTH: u16 = 17;
/// Longest file name.
pub const FNAMESIZE: usize = 255;

/// Extended attribute types (`ea_type`): the namespace of the name.
pub mod eatype {
    pub const UNUSED: u8 = 0;
    pub const USER: u8 = 1;
    /// `system.` — POSIX ACLs.
    pub const SYSTEM: u8 = 2;
    pub const SECURITY: u8 = 3;
    /// `trusted.` — only on sb_fs_format 1802.
    pub const TRUSTED: u8 = 4;
    pub const LAST: u8 = 4;
}
/// `ea_flags`: this is the last record of its block.
pub const EAFLAG_LAST: u8 = 0x01;
pub const EA_MAX_NAME_LEN: usize = 255;
pub const EA_MAX_DATA_LEN: usize = 65536;

/// Log header flags (`lh_flags`).
pub mod lh {
    pub const UNMOUNT: u32 = 0x0000_0001;
    pub const FLUSH_NORMAL: u32 = 0x0000_0002;
    pub const FLUSH_SYNC: u32 = 0x0000_0004;
    pub const FLUSH_SHUTDOWN: u32 = 0x0000_0008;
    pub const FLUSH_FREEZE: u32 = 0x0000_0010;
    pub const RECOVERY: u32 = 0x0000_0020;
    pub const USERSPACE: u32 = 0x8000_0000;
}

/// Log descriptor types (`ld_type`).
pub const LOG_DESC_METADATA: u32 = 300;
pub const LOG_DESC_REVOKE: u32 = 301;
pub const LOG_DESC_JDATA: u32 = 302;

/// `qc_flags`: the change is for a user (otherwise a group).
pub const QCF_USER: u32 = 0x1;

/// Legacy inode-number allocation quantum of the inum_range files.
pub const INUM_QUANTUM: u64 = 1_048_576;

/// Directory entry types (`de_type`), the DT_* values of `dirent.h`.
pub mod dt {
    pub const UNKNOWN: u16 = 0;
    pub const FIFO: u16 = 1;
    pub const CHR: u16 = 2;
    pub const DIR: u16 = 4;
    pub const BLK: u16 = 6;
    pub const REG: u16 = 8;
    pub const LNK: u16 = 10;
    pub const SOCK: u16 = 12;
}

/// File type bits of `di_mode` (S_IF*).
pub mod s_if {
    pub const FMT: u32 = 0o170000;
    pub const SOCK: u32 = 0o140000;
    pub const LNK: u32 = 0o120000;
    pub const REG: u32 = 0o100000;
    pub const BLK: u32 = 0o060000;
    pub const DIR: u32 = 0o040000;
    pub const CHR: u32 = 0o020000;
    pub const FIFO: u32 = 0o010000;
    /// Permission-adjacent mode bits (set-user-ID, set-group-ID, sticky).
    pub const SUID: u32 = 0o4000;
    pub const SGID: u32 = 0o2000;
    pub const SVTX: u32 = 0o1000;
}

/// The DT_* value matching the file type bits of a mode; `None` if the mode
/// has no valid file type.
pub fn dt_from_mode(mode: u32) -> Option<u16> {
    let dt = ((mode & s_if::FMT) >> 12) as u16;
    matches!(
        dt,
        dt::FIFO | dt::CHR | dt::DIR | dt::BLK | dt::REG | dt::LNK | dt::SOCK
    )
    .then_some(dt)
}
