//! Resource groups: the rindex entry (`gfs2_rindex`, 96 bytes, an array in
//! the "rindex" file), the header at the start of each group (`gfs2_rgrp`,
//! 128 bytes, followed by bitmap bytes) and the group's lock value block.
//!
//! Invariants of a verified rindex entry:
//! - `length >= 1` (the header block) and `data0 == addr + length`;
//! - `bitbytes * 4 == data` (2 bits per block, no partial bytes).
//!
//! Invariants of a verified header:
//! - magic/type/format match; `rg_crc` is 0 or the CRC-32 of the 128 bytes
//!   with `rg_crc` zeroed;
//! - `free + dinodes <= data` when the copies of the rindex fields are set.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::checksum::disk_hash;
use super::consts::{rgf, MetaType, GFS2_MAGIC};
use super::error::{bad_field, FormatError, Result};
use super::geometry::Geometry;
use super::meta::RawMetaHeader;
use super::ondisk::{assert_size, Be32, Be64, OnDisk};

pub const RINDEX_SIZE: usize = 96;
pub const RGRP_HEADER_SIZE: usize = 128;

#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct RawRindex {
    pub ri_addr: Be64,
    pub ri_length: Be32,
    pub pad: [u8; 4],
    pub ri_data0: Be64,
    pub ri_data: Be32,
    pub ri_bitbytes: Be32,
    pub ri_reserved: [u8; 64],
}
assert_size!(RawRindex, RINDEX_SIZE);

/// One entry of the rindex file: where a resource group is and what it maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Rindex {
    /// Block of the rgrp header (also the rgrp's lock number).
    pub addr: u64,
    /// Header plus bitmap blocks.
    pub length: u32,
    /// First data block.
    pub data0: u64,
    /// Data blocks covered by the bitmap.
    pub data: u32,
    /// Bitmap bytes (`data / 4`).
    pub bitbytes: u32,
}

impl OnDisk for Rindex {
    type Raw = RawRindex;
    const NAME: &'static str = "rindex entry";

    fn verify(raw: &RawRindex) -> Result<Self> {
        let ri = Rindex {
            addr: raw.ri_addr.get(),
            length: raw.ri_length.get(),
            data0: raw.ri_data0.get(),
            data: raw.ri_data.get(),
            bitbytes: raw.ri_bitbytes.get(),
        };
        if ri.length == 0 {
            return bad_field(Self::NAME, "ri_length", 0u32, "zero");
        }
        if ri.addr.checked_add(ri.length as u64) != Some(ri.data0) {
            return bad_field(Self::NAME, "ri_data0", ri.data0, "not ri_addr + ri_length");
        }
        if ri.bitbytes as u64 * 4 != ri.data as u64 {
            return bad_field(Self::NAME, "ri_bitbytes", ri.bitbytes, "not ri_data / 4");
        }
        if ri.data0.checked_add(ri.data as u64).is_none() {
            return bad_field(Self::NAME, "ri_data", ri.data, "group ends beyond 2^64");
        }
        Ok(ri)
    }

    fn to_raw(&self) -> RawRindex {
        RawRindex {
            ri_addr: self.addr.into(),
            ri_length: self.length.into(),
            pad: [0; 4],
            ri_data0: self.data0.into(),
            ri_data: self.data.into(),
            ri_bitbytes: self.bitbytes.into(),
            ri_reserved: [0; 64],
        }
    }
}

impl Rindex {
    /// The entry for a group at `addr` with `data` data blocks, with the
    /// minimal header+bitmap length for the block size.
    pub fn new(geom: &Geometry, addr: u64, data: u32) -> Rindex {
        assert!(data.is_multiple_of(4), "rgrp data blocks must be a multiple of 4");
        let bitbytes = data / 4;
        let length = geom.rgrp_meta_blocks(bitbytes);
        Rindex {
            addr,
            length,
            data0: addr + length as u64,
            data,
            bitbytes,
        }
    }

    /// One past the last data block.
    pub fn data_end(&self) -> u64 {
        self.data0 + self.data as u64
    }

    /// Whether `block` is one of this group's data blocks.
    pub fn contains(&self, block: u64) -> bool {
        (self.data0..self.data_end()).contains(&block)
    }

    /// Checks what needs the block size: `length` is exactly the number of
    /// blocks the bitmap needs (the kernel refuses anything else).
    pub fn check_geometry(&self, geom: &Geometry) -> Result<()> {
        let need = geom.rgrp_meta_blocks(self.bitbytes);
        if self.length != need {
            return bad_field(
                Self::NAME,
                "ri_length",
                self.length,
                "not the number of blocks the bitmap needs",
            );
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct RawRgrp {
    pub rg_header: RawMetaHeader,
    pub rg_flags: Be32,
    pub rg_free: Be32,
    pub rg_dinodes: Be32,
    pub rg_skip: Be32,
    pub rg_igeneration: Be64,
    pub rg_data0: Be64,
    pub rg_data: Be32,
    pub rg_bitbytes: Be32,
    pub rg_crc: Be32,
    pub rg_reserved: [u8; 60],
}
assert_size!(RawRgrp, RGRP_HEADER_SIZE);

impl RawRgrp {
    /// The header's fields as stored, with nothing verified: for tools
    /// that report on damaged headers field by field (fsck). Everything
    /// else uses [`OnDisk::decode`].
    pub fn fields(&self) -> RgrpHeader {
        RgrpHeader {
            flags: self.rg_flags.get(),
            free: self.rg_free.get(),
            dinodes: self.rg_dinodes.get(),
            skip: self.rg_skip.get(),
            igeneration: self.rg_igeneration.get(),
            data0: self.rg_data0.get(),
            data: self.rg_data.get(),
            bitbytes: self.rg_bitbytes.get(),
        }
    }

    /// The CRC-32 of the header with `rg_crc` zeroed.
    pub fn compute_crc(&self) -> u32 {
        let mut copy = *self;
        copy.rg_crc = 0.into();
        disk_hash(copy.as_bytes())
    }
}

/// A resource group header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RgrpHeader {
    pub flags: u32,
    /// Free data blocks.
    pub free: u32,
    /// Allocated dinodes (including unlinked ones not yet freed).
    pub dinodes: u32,
    /// Blocks to the next group's header; 0 in the last group.
    pub skip: u32,
    /// The group's generation counter, source of new inodes' formal numbers.
    pub igeneration: u64,
    /// Copies of the rindex entry's fields.
    pub data0: u64,
    pub data: u32,
    pub bitbytes: u32,
}

impl OnDisk for RgrpHeader {
    type Raw = RawRgrp;
    const NAME: &'static str = "resource group header";

    fn verify(raw: &RawRgrp) -> Result<Self> {
        raw.rg_header.check(MetaType::Rgrp)?;
        let stored = raw.rg_crc.get();
        if stored != 0 {
            let computed = raw.compute_crc();
            if computed != stored {
                return Err(FormatError::BadChecksum {
                    what: Self::NAME,
                    field: "rg_crc",
                    stored,
                    computed,
                });
            }
        }
        let rg = raw.fields();
        if rg.flags & !rgf::ALL != 0 {
            return bad_field(Self::NAME, "rg_flags", rg.flags, "unknown flags");
        }
        if rg.data != 0 && rg.free as u64 + rg.dinodes as u64 > rg.data as u64 {
            return bad_field(Self::NAME, "rg_free", rg.free, "free + dinodes exceed rg_data");
        }
        Ok(rg)
    }

    /// Encodes with `rg_crc` computed, as the kernel writes it.
    fn to_raw(&self) -> RawRgrp {
        let mut raw = RawRgrp {
            rg_header: RawMetaHeader::new(MetaType::Rgrp),
            rg_flags: self.flags.into(),
            rg_free: self.free.into(),
            rg_dinodes: self.dinodes.into(),
            rg_skip: self.skip.into(),
            rg_igeneration: self.igeneration.into(),
            rg_data0: self.data0.into(),
            rg_data: self.data.into(),
            rg_bitbytes: self.bitbytes.into(),
            rg_crc: 0.into(),
            rg_reserved: [0; 60],
        };
        raw.rg_crc = raw.compute_crc().into();
        raw
    }
}

impl RgrpHeader {
    /// A header for an empty group described by `ri`.
    pub fn empty(ri: &Rindex, skip: u32) -> RgrpHeader {
        RgrpHeader {
            flags: 0,
            free: ri.data,
            dinodes: 0,
            skip,
            igeneration: 0,
            data0: ri.data0,
            data: ri.data,
            bitbytes: ri.bitbytes,
        }
    }

    /// Checks the copies of the rindex fields against the entry.
    pub fn check_against(&self, ri: &Rindex) -> Result<()> {
        if self.data0 != ri.data0 {
            return bad_field(Self::NAME, "rg_data0", self.data0, "differs from rindex");
        }
        if self.data != ri.data {
            return bad_field(Self::NAME, "rg_data", self.data, "differs from rindex");
        }
        if self.bitbytes != ri.bitbytes {
            return bad_field(Self::NAME, "rg_bitbytes", self.bitbytes, "differs from rindex");
        }
        Ok(())
    }
}

/// `gfs2_rgrp_lvb`: a summary of a group kept in its lock's value block so
/// other nodes need not read the bitmaps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RgrpLvb {
    pub flags: u32,
    pub free: u32,
    pub dinodes: u32,
    pub igeneration: u64,
    /// Blocks in the UNLINKED state.
    pub unlinked: u32,
}

#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct RawRgrpLvb {
    pub rl_magic: Be32,
    pub rl_flags: Be32,
    pub rl_free: Be32,
    pub rl_dinodes: Be32,
    pub rl_igeneration: Be64,
    pub rl_unlinked: Be32,
    pub pad: [u8; 4],
}
assert_size!(RawRgrpLvb, 32);

impl OnDisk for RgrpLvb {
    type Raw = RawRgrpLvb;
    const NAME: &'static str = "resource group lock value block";

    fn verify(raw: &RawRgrpLvb) -> Result<Self> {
        if raw.rl_magic.get() != GFS2_MAGIC {
            return Err(FormatError::BadMagic {
                what: Self::NAME,
                found: raw.rl_magic.get(),
            });
        }
        Ok(RgrpLvb {
            flags: raw.rl_flags.get(),
            free: raw.rl_free.get(),
            dinodes: raw.rl_dinodes.get(),
            igeneration: raw.rl_igeneration.get(),
            unlinked: raw.rl_unlinked.get(),
        })
    }

    fn to_raw(&self) -> RawRgrpLvb {
        RawRgrpLvb {
            rl_magic: GFS2_MAGIC.into(),
            rl_flags: self.flags.into(),
            rl_free: self.free.into(),
            rl_dinodes: self.dinodes.into(),
            rl_igeneration: self.igeneration.into(),
            rl_unlinked: self.unlinked.into(),
            pad: [0; 4],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rgrp 0 of the reference image made by mkfs.gfs2 (docs/disk-format.md §11.1).
    #[test]
    fn rg_crc_matches_mkfs_gfs2() {
        let cases = [
            (17u64, 1u32, 4108u32, 0u32, 3u32, 4109u32, 0xcc98_7893u32),
            (4126, 1, 4108, 0, 3, 4109, 0x2e57_86eb),
            (8235, 4, 63472, 62950, 10, 63477, 0x06ae_a43d),
            (198666, 4, 63472, 63472, 0, 0, 0x07cc_9dc2),
        ];
        for (addr, length, data, free, dinodes, skip, crc) in cases {
            let ri = Rindex {
                addr,
                length,
                data0: addr + length as u64,
                data,
                bitbytes: data / 4,
            };
            let rg = RgrpHeader {
                free,
                dinodes,
                skip,
                ..RgrpHeader::empty(&ri, skip)
            };
            assert_eq!(rg.to_raw().rg_crc.get(), crc, "rgrp at {addr}");
        }
    }

    #[test]
    fn fields_read_a_header_that_does_not_verify() {
        let ri = Rindex::new(&Geometry::new(4096).unwrap(), 17, 4108);
        let rg = RgrpHeader { free: 7, dinodes: 3, ..RgrpHeader::empty(&ri, 4109) };
        let mut raw = rg.to_raw();
        assert_eq!(raw.fields(), rg);
        // A stale checksum and unknown flags: decode refuses, fields reads.
        raw.rg_flags = 0x100.into();
        assert!(RgrpHeader::verify(&raw).is_err());
        assert_eq!(raw.fields(), RgrpHeader { flags: 0x100, ..rg });
    }

    #[test]
    fn stale_crc_is_refused() {
        let ri = Rindex::new(&Geometry::new(4096).unwrap(), 17, 4108);
        let mut raw = RgrpHeader::empty(&ri, 0).to_raw();
        raw.rg_free = 5.into();
        let err = RgrpHeader::verify(&raw).unwrap_err();
        assert!(matches!(err, FormatError::BadChecksum { field: "rg_crc", .. }), "{err}");
        raw.rg_crc = 0.into();
        assert_eq!(RgrpHeader::verify(&raw).unwrap().free, 5);
    }

    #[test]
    fn rindex_length_must_be_minimal() {
        let geom = Geometry::new(4096).unwrap();
        let ri = Rindex::new(&geom, 8235, 63472);
        assert_eq!((ri.length, ri.data0, ri.bitbytes), (4, 8239, 15868));
        ri.check_geometry(&geom).unwrap();
        let padded = Rindex { length: 5, data0: 8240, ..ri };
        assert!(padded.check_geometry(&geom).is_err());
    }
}
