//! Extended attributes: records (`struct gfs2_ea_header`, 16 bytes, then the
//! name, then the value or pointers to EA data blocks) tiling EA blocks.
//!
//! Invariants of a well-formed EA block (checked by [`ea_records`]):
//! - records tile the area after the 24-byte block header; each `rec_len`
//!   is 8-aligned and at least 16; the record ending at the block end, and
//!   only that one, carries `EAFLAG_LAST`;
//! - a used record (type 1..=4) has a name of 1..=255 bytes and a value of
//!   at most 65536 bytes; a stuffed value (`num_ptrs == 0`) lies inside the
//!   record; otherwise `num_ptrs == ceil(data_len / (bsize - 24))` pointers
//!   follow the 8-aligned name, each non-zero.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::consts::{eatype, EAFLAG_LAST, EA_MAX_DATA_LEN, EA_MAX_NAME_LEN};
use super::error::{bad_field, Result};
use super::meta::META_HEADER_SIZE;
use super::ondisk::{assert_size, Be32, OnDisk};

pub const EA_HEADER_SIZE: usize = 16;

#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct RawEaHeader {
    pub ea_rec_len: Be32,
    pub ea_data_len: Be32,
    pub ea_name_len: u8,
    pub ea_type: u8,
    pub ea_flags: u8,
    pub ea_num_ptrs: u8,
    pub pad: [u8; 4],
}
assert_size!(RawEaHeader, EA_HEADER_SIZE);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EaHeader {
    pub rec_len: u32,
    pub data_len: u32,
    pub name_len: u8,
    /// Namespace: `eatype::*`; 0 for an unused record.
    pub ea_type: u8,
    pub flags: u8,
    /// 0 for a value stored in the record, else the number of EA data blocks.
    pub num_ptrs: u8,
}

const WHAT: &str = "extended attribute record";

impl OnDisk for EaHeader {
    type Raw = RawEaHeader;
    const NAME: &'static str = WHAT;

    fn verify(raw: &RawEaHeader) -> Result<Self> {
        let h = EaHeader {
            rec_len: raw.ea_rec_len.get(),
            data_len: raw.ea_data_len.get(),
            name_len: raw.ea_name_len,
            ea_type: raw.ea_type,
            flags: raw.ea_flags,
            num_ptrs: raw.ea_num_ptrs,
        };
        if (h.rec_len as usize) < EA_HEADER_SIZE || !h.rec_len.is_multiple_of(8) {
            return bad_field(WHAT, "ea_rec_len", h.rec_len, "below 16 or not 8-aligned");
        }
        if h.ea_type > eatype::LAST {
            return bad_field(WHAT, "ea_type", h.ea_type, "unknown namespace");
        }
        if h.flags & !EAFLAG_LAST != 0 {
            return bad_field(WHAT, "ea_flags", h.flags, "unknown flags");
        }
        if h.ea_type != eatype::UNUSED {
            if h.name_len == 0 {
                return bad_field(WHAT, "ea_name_len", 0u8, "empty name");
            }
            if h.data_len as usize > EA_MAX_DATA_LEN {
                return bad_field(WHAT, "ea_data_len", h.data_len, "above 65536");
            }
            if h.used_size() > h.rec_len as usize {
                return bad_field(WHAT, "ea_rec_len", h.rec_len, "smaller than the record's contents");
            }
        }
        Ok(h)
    }

    fn to_raw(&self) -> RawEaHeader {
        RawEaHeader {
            ea_rec_len: self.rec_len.into(),
            ea_data_len: self.data_len.into(),
            ea_name_len: self.name_len,
            ea_type: self.ea_type,
            ea_flags: self.flags,
            ea_num_ptrs: self.num_ptrs,
            pad: [0; 4],
        }
    }
}

impl EaHeader {
    pub fn is_stuffed(&self) -> bool {
        self.num_ptrs == 0
    }

    /// Unused records (type 0) hold free space.
    pub fn is_used(&self) -> bool {
        self.ea_type != eatype::UNUSED
    }

    pub fn is_last(&self) -> bool {
        self.flags & EAFLAG_LAST != 0
    }

    /// Bytes the record's contents need (8-aligned).
    pub fn used_size(&self) -> usize {
        ea_record_size(
            self.name_len as usize,
            if self.is_stuffed() { self.data_len as usize } else { 0 },
            self.num_ptrs as usize,
        )
    }

    /// Offset of the value (stuffed) or of the pointer array within the record.
    pub fn value_offset(&self) -> usize {
        if self.is_stuffed() {
            EA_HEADER_SIZE + self.name_len as usize
        } else {
            EA_HEADER_SIZE + (self.name_len as usize).next_multiple_of(8)
        }
    }
}

/// Size of a record with a name, a stuffed value of `data_len` bytes (0 if
/// unstuffed), and `num_ptrs` data block pointers.
pub fn ea_record_size(name_len: usize, data_len: usize, num_ptrs: usize) -> usize {
    (EA_HEADER_SIZE + name_len + data_len + 8 * num_ptrs).next_multiple_of(8)
}

/// Whether a value of `data_len` bytes is stored in the record itself: the
/// record must fit in an EA block's payload.
pub fn ea_is_stuffed(bsize: u32, name_len: usize, data_len: usize) -> bool {
    ea_record_size(name_len, data_len, 0) <= bsize as usize - META_HEADER_SIZE
}

/// EA data blocks needed for an unstuffed value.
pub fn ea_data_blocks(bsize: u32, data_len: usize) -> usize {
    data_len.div_ceil(bsize as usize - META_HEADER_SIZE)
}

/// The value of a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EaValue<'a> {
    /// Stored in the record.
    Stuffed(&'a [u8]),
    /// Stored in EA data blocks; the raw big-endian pointer array.
    Blocks(&'a [u8]),
}

impl EaValue<'_> {
    /// The data block pointers of an unstuffed value.
    pub fn pointers(&self) -> impl Iterator<Item = u64> + '_ {
        let bytes: &[u8] = match self {
            EaValue::Stuffed(_) => &[],
            EaValue::Blocks(b) => b,
        };
        bytes
            .chunks_exact(8)
            .map(|c| u64::from_be_bytes(c.try_into().expect("8-byte chunk")))
    }
}

/// A verified record of an EA block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EaRecord<'a> {
    /// Offset of the record within the block.
    pub offset: usize,
    pub header: EaHeader,
    pub name: &'a [u8],
    pub value: EaValue<'a>,
}

impl EaRecord<'_> {
    pub fn is_used(&self) -> bool {
        self.header.is_used()
    }
}

/// Verifies every record of an EA block (header already checked by the
/// caller) and returns them in order.
pub fn ea_records(block: &[u8], bsize: u32) -> Result<Vec<EaRecord<'_>>> {
    let mut out = Vec::new();
    let mut offset = META_HEADER_SIZE;
    while offset < block.len() {
        let rest = &block[offset..];
        let header = EaHeader::decode(rest)?;
        let rec_len = header.rec_len as usize;
        if rec_len > rest.len() {
            return bad_field(WHAT, "ea_rec_len", header.rec_len, "runs past the end of the block");
        }
        let ends_block = rec_len == rest.len();
        if header.is_last() != ends_block {
            return bad_field(WHAT, "ea_flags", header.flags, "LAST flag not on the final record");
        }
        let name = &rest[EA_HEADER_SIZE..EA_HEADER_SIZE + header.name_len as usize];
        let value = if header.is_stuffed() {
            let at = header.value_offset();
            EaValue::Stuffed(&rest[at..at + header.data_len as usize])
        } else {
            if header.is_used()
                && header.num_ptrs as usize != ea_data_blocks(bsize, header.data_len as usize)
            {
                return bad_field(WHAT, "ea_num_ptrs", header.num_ptrs, "does not match ea_data_len");
            }
            let at = header.value_offset();
            let ptrs = &rest[at..at + 8 * header.num_ptrs as usize];
            if header.is_used() && ptrs.chunks_exact(8).any(|c| c.iter().all(|&b| b == 0)) {
                return bad_field(WHAT, "ea data pointer", 0u64, "zero");
            }
            EaValue::Blocks(ptrs)
        };
        out.push(EaRecord {
            offset,
            header,
            name,
            value,
        });
        offset += rec_len;
    }
    Ok(out)
}

/// The namespace prefix of an EA type as the Linux xattr API spells it.
pub fn namespace_prefix(ea_type: u8) -> Option<&'static str> {
    match ea_type {
        eatype::USER => Some("user."),
        eatype::SYSTEM => Some("system."),
        eatype::SECURITY => Some("security."),
        eatype::TRUSTED => Some("trusted."),
        _ => None,
    }
}

/// Splits a Linux xattr name into its GFS2 type and the stored name.
pub fn split_xattr_name(full: &str) -> Option<(u8, &str)> {
    [eatype::USER, eatype::SYSTEM, eatype::SECURITY, eatype::TRUSTED]
        .into_iter()
        .find_map(|t| {
            let prefix = namespace_prefix(t)?;
            let rest = full.strip_prefix(prefix)?;
            (!rest.is_empty() && rest.len() <= EA_MAX_NAME_LEN).then_some((t, rest))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::consts::MetaType;
    use crate::format::meta::init_block;

    fn put(block: &mut [u8], offset: usize, h: EaHeader, name: &[u8], value: &[u8]) {
        h.encode_into(&mut block[offset..]);
        block[offset + 16..offset + 16 + name.len()].copy_from_slice(name);
        let at = offset + h.value_offset();
        block[at..at + value.len()].copy_from_slice(value);
    }

    #[test]
    fn records_tile_the_block() {
        let mut block = vec![0u8; 4096];
        init_block(&mut block, MetaType::Ea);
        let first = EaHeader { rec_len: 32, data_len: 5, name_len: 3, ea_type: eatype::USER, flags: 0, num_ptrs: 0 };
        put(&mut block, 24, first, b"abc", b"hello");
        let rest = 4096 - 24 - 32;
        let second = EaHeader { rec_len: rest as u32, data_len: 5000, name_len: 1, ea_type: eatype::TRUSTED, flags: EAFLAG_LAST, num_ptrs: 2 };
        let mut ptrs = Vec::new();
        ptrs.extend_from_slice(&77u64.to_be_bytes());
        ptrs.extend_from_slice(&78u64.to_be_bytes());
        put(&mut block, 56, second, b"x", &ptrs);
        let recs = ea_records(&block, 4096).unwrap();
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[0].value, EaValue::Stuffed(b"hello"));
        assert_eq!(recs[1].value.pointers().collect::<Vec<_>>(), vec![77, 78]);
        // Removing LAST from the final record is refused.
        block[56 + 10] = 0;
        assert!(ea_records(&block, 4096).is_err());
    }

    #[test]
    fn xattr_names_map_to_namespaces() {
        assert_eq!(split_xattr_name("user.foo"), Some((eatype::USER, "foo")));
        assert_eq!(split_xattr_name("system.posix_acl_access"), Some((eatype::SYSTEM, "posix_acl_access")));
        assert_eq!(split_xattr_name("trusted.x"), Some((eatype::TRUSTED, "x")));
        assert_eq!(split_xattr_name("user."), None);
        assert_eq!(split_xattr_name("other.x"), None);
        assert!(ea_is_stuffed(4096, 10, 4000));
        assert!(!ea_is_stuffed(4096, 10, 4072));
        assert_eq!(ea_data_blocks(4096, 65536), 17);
    }
}
