//! The 24-byte metadata header that starts every metadata block, and the
//! inode number pair `gfs2_inum`.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::consts::{MetaType, GFS2_MAGIC};
use super::error::{FormatError, Result};
use super::ondisk::{assert_size, Be32, Be64, OnDisk};

/// `struct gfs2_meta_header`.
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct RawMetaHeader {
    pub mh_magic: Be32,
    pub mh_type: Be32,
    pub pad0: Be64,
    pub mh_format: Be32,
    /// The journal id in log headers; zero elsewhere.
    pub mh_jid: Be32,
}
assert_size!(RawMetaHeader, 24);

impl RawMetaHeader {
    /// A header for a block of type `ty` (journal id 0).
    pub fn new(ty: MetaType) -> Self {
        Self::with_jid(ty, 0)
    }

    pub fn with_jid(ty: MetaType, jid: u32) -> Self {
        RawMetaHeader {
            mh_magic: GFS2_MAGIC.into(),
            mh_type: (ty as u32).into(),
            pad0: 0.into(),
            mh_format: ty.format().into(),
            mh_jid: jid.into(),
        }
    }

    /// Checks magic, type and format against the expected block type.
    pub fn check(&self, expected: MetaType) -> Result<()> {
        let what = expected.name();
        if self.mh_magic.get() != GFS2_MAGIC {
            return Err(FormatError::BadMagic {
                what,
                found: self.mh_magic.get(),
            });
        }
        if self.mh_type.get() != expected as u32 {
            return Err(FormatError::WrongType {
                what,
                expected,
                found: self.mh_type.get(),
            });
        }
        if self.mh_format.get() != expected.format() {
            return Err(FormatError::WrongFormat {
                what,
                expected: expected.format(),
                found: self.mh_format.get(),
            });
        }
        Ok(())
    }

    /// The block type named by a header with a valid magic, if any.
    pub fn meta_type(&self) -> Option<MetaType> {
        if self.mh_magic.get() != GFS2_MAGIC {
            return None;
        }
        MetaType::from_u32(self.mh_type.get())
    }
}

/// Size of the metadata header.
pub const META_HEADER_SIZE: usize = 24;

/// Verifies that `block` starts with a header of type `ty` and returns the
/// payload after the header. Used for blocks that are "header + array":
/// bitmap, indirect, directory data, EA data, log continuation and quota
/// change blocks.
pub fn payload_of(block: &[u8], ty: MetaType) -> Result<&[u8]> {
    let (header, payload) =
        RawMetaHeader::ref_from_prefix(block).map_err(|_| FormatError::TooShort {
            what: ty.name(),
            need: META_HEADER_SIZE,
            have: block.len(),
        })?;
    header.check(ty)?;
    Ok(payload)
}

/// The type of a metadata block, if `block` starts with a valid header.
pub fn block_type(block: &[u8]) -> Option<MetaType> {
    let (header, _) = RawMetaHeader::ref_from_prefix(block).ok()?;
    let ty = header.meta_type()?;
    (header.mh_format.get() == ty.format()).then_some(ty)
}

/// Writes a fresh header of type `ty` at the start of `block` and zeroes the
/// rest of the block.
pub fn init_block(block: &mut [u8], ty: MetaType) {
    block.fill(0);
    block[..META_HEADER_SIZE].copy_from_slice(RawMetaHeader::new(ty).as_bytes());
}

/// `struct gfs2_inum`: an inode's identity. `no_addr` is the dinode's block
/// number (and `st_ino`); `no_formal_ino` is a generation-like number that
/// directory entries must repeat.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Inum {
    pub formal_ino: u64,
    pub addr: u64,
}

#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct RawInum {
    pub no_formal_ino: Be64,
    pub no_addr: Be64,
}
assert_size!(RawInum, 16);

impl From<&RawInum> for Inum {
    fn from(raw: &RawInum) -> Self {
        Inum {
            formal_ino: raw.no_formal_ino.get(),
            addr: raw.no_addr.get(),
        }
    }
}

impl From<Inum> for RawInum {
    fn from(inum: Inum) -> Self {
        RawInum {
            no_formal_ino: inum.formal_ino.into(),
            no_addr: inum.addr.into(),
        }
    }
}

impl OnDisk for Inum {
    type Raw = RawInum;
    const NAME: &'static str = "inode number";

    fn verify(raw: &RawInum) -> Result<Self> {
        Ok(raw.into())
    }

    fn to_raw(&self) -> RawInum {
        (*self).into()
    }
}

impl Inum {
    pub fn new(formal_ino: u64, addr: u64) -> Self {
        Inum { formal_ino, addr }
    }

    /// Directory entries with a zero in either half are unused slots.
    pub fn is_zero(&self) -> bool {
        self.formal_ino == 0 || self.addr == 0
    }
}

/// The big-endian block pointers of a pointer array (the dinode's payload
/// of a tree, or an indirect block's payload). Trailing bytes that do not
/// form a whole pointer are ignored.
pub fn pointers(payload: &[u8]) -> impl Iterator<Item = u64> + '_ {
    payload
        .chunks_exact(8)
        .map(|c| u64::from_be_bytes(c.try_into().expect("8-byte chunk")))
}

/// Reads pointer `index` of a pointer array.
pub fn pointer_at(payload: &[u8], index: usize) -> u64 {
    u64::from_be_bytes(payload[8 * index..8 * index + 8].try_into().expect("8 bytes"))
}

/// Writes pointer `index` of a pointer array.
pub fn set_pointer(payload: &mut [u8], index: usize, value: u64) {
    payload[8 * index..8 * index + 8].copy_from_slice(&value.to_be_bytes());
}
