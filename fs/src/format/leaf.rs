//! Directory leaf blocks (`struct gfs2_leaf`, a 104-byte header followed by
//! a dirent area) of exhash directories.
//!
//! Invariants of a verified [`Leaf`]:
//! - magic/type/format match; `depth <= DIR_MAX_DEPTH`;
//! - `dirent_format` is 1200 (GFS2_FORMAT_DE).

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::consts::{MetaType, DIR_MAX_DEPTH, FORMAT_DIRENT};
use super::error::{bad_field, Result};
use super::meta::RawMetaHeader;
use super::ondisk::{assert_size, Be16, Be32, Be64, OnDisk};

pub const LEAF_HEADER_SIZE: usize = 104;

#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct RawLeaf {
    pub lf_header: RawMetaHeader,
    pub lf_depth: Be16,
    pub lf_entries: Be16,
    pub lf_dirent_format: Be32,
    pub lf_next: Be64,
    pub lf_inode: Be64,
    pub lf_dist: Be32,
    pub lf_nsec: Be32,
    pub lf_sec: Be64,
    pub lf_reserved2: [u8; 40],
}
assert_size!(RawLeaf, LEAF_HEADER_SIZE);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leaf {
    /// The leaf covers `2^(di_depth - depth)` hash table pointers.
    pub depth: u16,
    /// Used dirents in this leaf.
    pub entries: u16,
    /// Next leaf of the chain (only at maximum depth), 0 if none.
    pub next: u64,
    /// The directory's dinode block.
    pub inode: u64,
    /// Position in the chain: 1 for the leaf the hash table points to.
    pub dist: u32,
    pub nsec: u32,
    pub sec: u64,
}

const WHAT: &str = "directory leaf";

impl OnDisk for Leaf {
    type Raw = RawLeaf;
    const NAME: &'static str = WHAT;

    fn verify(raw: &RawLeaf) -> Result<Self> {
        raw.lf_header.check(MetaType::Leaf)?;
        let depth = raw.lf_depth.get();
        if depth > DIR_MAX_DEPTH {
            return bad_field(WHAT, "lf_depth", depth, "above GFS2_DIR_MAX_DEPTH");
        }
        let format = raw.lf_dirent_format.get();
        if format != FORMAT_DIRENT {
            return bad_field(WHAT, "lf_dirent_format", format, "not 1200");
        }
        Ok(Leaf {
            depth,
            entries: raw.lf_entries.get(),
            next: raw.lf_next.get(),
            inode: raw.lf_inode.get(),
            dist: raw.lf_dist.get(),
            nsec: raw.lf_nsec.get(),
            sec: raw.lf_sec.get(),
        })
    }

    fn to_raw(&self) -> RawLeaf {
        RawLeaf {
            lf_header: RawMetaHeader::new(MetaType::Leaf),
            lf_depth: self.depth.into(),
            lf_entries: self.entries.into(),
            lf_dirent_format: FORMAT_DIRENT.into(),
            lf_next: self.next.into(),
            lf_inode: self.inode.into(),
            lf_dist: self.dist.into(),
            lf_nsec: self.nsec.into(),
            lf_sec: self.sec.into(),
            lf_reserved2: [0; 40],
        }
    }
}
