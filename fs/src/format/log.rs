//! The journal ("log") format: log headers (`gfs2_log_header`), log
//! descriptors (`gfs2_log_descriptor`) and the payload layouts that follow
//! descriptors (metadata and journaled-data block lists, revokes).
//!
//! Invariants of a verified [`LogHeader`] (decoded from a whole block):
//! - magic/type/format match;
//! - `lh_hash` is the CRC-32 of bytes 0..48 with `lh_hash` zeroed;
//! - `lh_crc` is 0 (a "v1" header, as fsck.gfs2 writes) or the raw CRC-32C
//!   of bytes 52..end of the block.
//!
//! Whether `lh_blkno` matches the header's position is checked by the
//! journal reader, which knows the position.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::checksum::{disk_hash, log_crc};
use super::consts::{MetaType, LOG_DESC_JDATA, LOG_DESC_METADATA, LOG_DESC_REVOKE};
use super::error::{bad_field, FormatError, Result};
use super::meta::{RawMetaHeader, META_HEADER_SIZE};
use super::ondisk::{assert_size, Be32, Be64, OnDisk};

pub const LOG_HEADER_SIZE: usize = 120;
pub const LOG_DESCRIPTOR_SIZE: usize = 72;
/// `lh_hash` covers the header up to and including itself (zeroed).
const LH_HASH_END: usize = 48;
/// `lh_crc` covers the block from `lh_nsec` to its end.
const LH_CRC_START: usize = 52;

#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct RawLogHeader {
    pub lh_header: RawMetaHeader,
    pub lh_sequence: Be64,
    pub lh_flags: Be32,
    pub lh_tail: Be32,
    pub lh_blkno: Be32,
    pub lh_hash: Be32,
    pub lh_crc: Be32,
    pub lh_nsec: Be32,
    pub lh_sec: Be64,
    pub lh_addr: Be64,
    pub lh_jinode: Be64,
    pub lh_statfs_addr: Be64,
    pub lh_quota_addr: Be64,
    pub lh_local_total: Be64,
    pub lh_local_free: Be64,
    pub lh_local_dinodes: Be64,
}
assert_size!(RawLogHeader, LOG_HEADER_SIZE);

impl RawLogHeader {
    /// CRC-32 of bytes 0..48 with `lh_hash` zeroed.
    pub fn compute_hash(&self) -> u32 {
        let mut copy = *self;
        copy.lh_hash = 0.into();
        disk_hash(&copy.as_bytes()[..LH_HASH_END])
    }
}

/// The raw CRC-32C `lh_crc` of a log header block.
pub fn log_header_crc(block: &[u8]) -> u32 {
    log_crc(&block[LH_CRC_START..])
}

/// A log header: one commit point of the journal.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogHeader {
    /// The journal id (kept in the metadata header's `mh_jid`).
    pub jid: u32,
    pub sequence: u64,
    pub flags: u32,
    /// Journal block where replay must start.
    pub tail: u32,
    /// Journal block of this header.
    pub blkno: u32,
    pub nsec: u32,
    pub sec: u64,
    /// Absolute block of this header.
    pub addr: u64,
    /// Block of the journal's dinode.
    pub jinode: u64,
    /// The node's statfs_change and quota_change dinodes.
    pub statfs_addr: u64,
    pub quota_addr: u64,
    /// The node's statfs changes not yet folded into the master statfs file.
    pub local_total: i64,
    pub local_free: i64,
    pub local_dinodes: i64,
}

const WHAT: &str = "log header";

impl OnDisk for LogHeader {
    type Raw = RawLogHeader;
    const NAME: &'static str = WHAT;

    /// Checks the header fields and `lh_hash`. `lh_crc` covers the whole
    /// block, so use [`OnDisk::decode`] on the block to check it too.
    fn verify(raw: &RawLogHeader) -> Result<Self> {
        raw.lh_header.check(MetaType::LogHeader)?;
        let stored = raw.lh_hash.get();
        let computed = raw.compute_hash();
        if stored != computed {
            return Err(FormatError::BadChecksum {
                what: WHAT,
                field: "lh_hash",
                stored,
                computed,
            });
        }
        Ok(LogHeader {
            jid: raw.lh_header.mh_jid.get(),
            sequence: raw.lh_sequence.get(),
            flags: raw.lh_flags.get(),
            tail: raw.lh_tail.get(),
            blkno: raw.lh_blkno.get(),
            nsec: raw.lh_nsec.get(),
            sec: raw.lh_sec.get(),
            addr: raw.lh_addr.get(),
            jinode: raw.lh_jinode.get(),
            statfs_addr: raw.lh_statfs_addr.get(),
            quota_addr: raw.lh_quota_addr.get(),
            local_total: raw.lh_local_total.get() as i64,
            local_free: raw.lh_local_free.get() as i64,
            local_dinodes: raw.lh_local_dinodes.get() as i64,
        })
    }

    /// The raw header with `lh_hash` set and `lh_crc` 0; [`encode_into`]
    /// fills in `lh_crc` for the block.
    ///
    /// [`encode_into`]: OnDisk::encode_into
    fn to_raw(&self) -> RawLogHeader {
        let mut raw = RawLogHeader {
            lh_header: RawMetaHeader::with_jid(MetaType::LogHeader, self.jid),
            lh_sequence: self.sequence.into(),
            lh_flags: self.flags.into(),
            lh_tail: self.tail.into(),
            lh_blkno: self.blkno.into(),
            lh_hash: 0.into(),
            lh_crc: 0.into(),
            lh_nsec: self.nsec.into(),
            lh_sec: self.sec.into(),
            lh_addr: self.addr.into(),
            lh_jinode: self.jinode.into(),
            lh_statfs_addr: self.statfs_addr.into(),
            lh_quota_addr: self.quota_addr.into(),
            lh_local_total: (self.local_total as u64).into(),
            lh_local_free: (self.local_free as u64).into(),
            lh_local_dinodes: (self.local_dinodes as u64).into(),
        };
        raw.lh_hash = raw.compute_hash().into();
        raw
    }

    /// Decodes a log header from its whole block, checking `lh_crc` too.
    fn decode(block: &[u8]) -> Result<Self> {
        let raw = Self::raw(block)?;
        let header = Self::verify(raw)?;
        let stored = raw.lh_crc.get();
        if stored != 0 {
            let computed = log_header_crc(block);
            if stored != computed {
                return Err(FormatError::BadChecksum {
                    what: WHAT,
                    field: "lh_crc",
                    stored,
                    computed,
                });
            }
        }
        Ok(header)
    }

    /// Encodes into a whole block: the header, zeros to the end of `block`,
    /// and `lh_crc` over the block.
    fn encode_into(&self, block: &mut [u8]) {
        assert!(block.len() >= LOG_HEADER_SIZE, "log header block too small");
        block[..LOG_HEADER_SIZE].copy_from_slice(self.to_raw().as_bytes());
        block[LOG_HEADER_SIZE..].fill(0);
        let crc = log_header_crc(block);
        block[48..52].copy_from_slice(&crc.to_be_bytes());
    }
}

impl LogHeader {
    pub fn is_unmount(&self) -> bool {
        self.flags & super::consts::lh::UNMOUNT != 0
    }
}

#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct RawLogDescriptor {
    pub ld_header: RawMetaHeader,
    pub ld_type: Be32,
    pub ld_length: Be32,
    pub ld_data1: Be32,
    pub ld_data2: Be32,
    pub ld_reserved: [u8; 32],
}
assert_size!(RawLogDescriptor, LOG_DESCRIPTOR_SIZE);

/// What a log descriptor introduces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DescriptorKind {
    /// `data1` metadata blocks follow, their home addresses in the payload.
    Metadata,
    /// Revoked block numbers fill the payload and continuation blocks.
    Revoke,
    /// `data1` journaled-data blocks follow; the payload holds
    /// (address, escaped) pairs.
    Jdata,
}

impl DescriptorKind {
    pub fn code(self) -> u32 {
        match self {
            DescriptorKind::Metadata => LOG_DESC_METADATA,
            DescriptorKind::Revoke => LOG_DESC_REVOKE,
            DescriptorKind::Jdata => LOG_DESC_JDATA,
        }
    }

    pub fn from_code(code: u32) -> Option<Self> {
        match code {
            LOG_DESC_METADATA => Some(DescriptorKind::Metadata),
            LOG_DESC_REVOKE => Some(DescriptorKind::Revoke),
            LOG_DESC_JDATA => Some(DescriptorKind::Jdata),
            _ => None,
        }
    }
}

/// A log descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogDescriptor {
    pub kind: DescriptorKind,
    /// Journal blocks of this chunk, the descriptor included.
    pub length: u32,
    /// Metadata/jdata: blocks that follow. Revoke: revoked block numbers.
    pub data1: u32,
    pub data2: u32,
}

impl OnDisk for LogDescriptor {
    type Raw = RawLogDescriptor;
    const NAME: &'static str = "log descriptor";

    fn verify(raw: &RawLogDescriptor) -> Result<Self> {
        raw.ld_header.check(MetaType::LogDescriptor)?;
        let code = raw.ld_type.get();
        let Some(kind) = DescriptorKind::from_code(code) else {
            return bad_field(Self::NAME, "ld_type", code, "unknown descriptor type");
        };
        let length = raw.ld_length.get();
        if length == 0 {
            return bad_field(Self::NAME, "ld_length", 0u32, "zero");
        }
        Ok(LogDescriptor {
            kind,
            length,
            data1: raw.ld_data1.get(),
            data2: raw.ld_data2.get(),
        })
    }

    fn to_raw(&self) -> RawLogDescriptor {
        RawLogDescriptor {
            ld_header: RawMetaHeader::new(MetaType::LogDescriptor),
            ld_type: self.kind.code().into(),
            ld_length: self.length.into(),
            ld_data1: self.data1.into(),
            ld_data2: self.data2.into(),
            ld_reserved: [0; 32],
        }
    }
}

impl LogDescriptor {
    /// Checks that `data1` and `length` are consistent for the block size.
    pub fn check_geometry(&self, bsize: u32) -> Result<()> {
        let n = self.data1;
        match self.kind {
            DescriptorKind::Metadata | DescriptorKind::Jdata => {
                let cap = if self.kind == DescriptorKind::Metadata {
                    metadata_per_descriptor(bsize)
                } else {
                    jdata_per_descriptor(bsize)
                };
                if n > cap {
                    return bad_field(Self::NAME, "ld_data1", n, "more blocks than the descriptor can list");
                }
                if self.length != n + 1 {
                    return bad_field(Self::NAME, "ld_length", self.length, "not ld_data1 + 1");
                }
            }
            DescriptorKind::Revoke => {
                if self.length != revoke_blocks(bsize, n) {
                    return bad_field(Self::NAME, "ld_length", self.length, "wrong block count for the revokes");
                }
            }
        }
        Ok(())
    }
}

/// Block addresses a metadata descriptor can list.
pub fn metadata_per_descriptor(bsize: u32) -> u32 {
    (bsize - LOG_DESCRIPTOR_SIZE as u32) / 8
}

/// (address, escape) pairs a journaled-data descriptor can list.
pub fn jdata_per_descriptor(bsize: u32) -> u32 {
    (bsize - LOG_DESCRIPTOR_SIZE as u32) / 16
}

/// Revokes held in the descriptor block and in each continuation block.
pub fn revokes_per_block(bsize: u32) -> (u32, u32) {
    (
        (bsize - LOG_DESCRIPTOR_SIZE as u32) / 8,
        (bsize - META_HEADER_SIZE as u32) / 8,
    )
}

/// Journal blocks a revoke chunk of `count` revokes takes.
pub fn revoke_blocks(bsize: u32, count: u32) -> u32 {
    let (first, rest) = revokes_per_block(bsize);
    1 + count.saturating_sub(first).div_ceil(rest)
}

/// Reads `count` big-endian block numbers starting at `offset` of `block`.
pub fn read_be64s(block: &[u8], offset: usize, count: usize) -> Result<Vec<u64>> {
    let end = offset + 8 * count;
    if end > block.len() {
        return bad_field(WHAT, "descriptor payload", count as u64, "does not fit in the block");
    }
    Ok(block[offset..end]
        .chunks_exact(8)
        .map(|c| u64::from_be_bytes(c.try_into().expect("8-byte chunk")))
        .collect())
}

/// Writes big-endian block numbers starting at `offset` of `block`.
pub fn write_be64s(block: &mut [u8], offset: usize, values: &[u64]) {
    for (i, v) in values.iter().enumerate() {
        block[offset + 8 * i..offset + 8 * i + 8].copy_from_slice(&v.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::consts::lh;

    #[test]
    fn header_checksums_cover_the_right_bytes() {
        let h = LogHeader {
            sequence: 706,
            flags: lh::UNMOUNT | lh::USERSPACE,
            blkno: 0,
            addr: 28,
            jinode: 18,
            ..Default::default()
        };
        let mut block = vec![0xAAu8; 4096];
        h.encode_into(&mut block);
        assert_eq!(LogHeader::decode(&block).unwrap(), h);
        assert!(block[LOG_HEADER_SIZE..].iter().all(|&b| b == 0));
        // A byte in the tail changes lh_crc but not lh_hash.
        block[4000] = 1;
        assert!(matches!(LogHeader::decode(&block), Err(FormatError::BadChecksum { field: "lh_crc", .. })));
        // A v1 header (lh_crc 0) is accepted whatever the tail holds.
        block[48..52].fill(0);
        assert_eq!(LogHeader::decode(&block).unwrap(), h);
        // The sequence is covered by lh_hash.
        block[31] ^= 1;
        assert!(matches!(LogHeader::decode(&block), Err(FormatError::BadChecksum { field: "lh_hash", .. })));
    }

    #[test]
    fn descriptor_capacities() {
        assert_eq!(metadata_per_descriptor(4096), 503);
        assert_eq!(jdata_per_descriptor(4096), 251);
        assert_eq!(revoke_blocks(4096, 0), 1);
        assert_eq!(revoke_blocks(4096, 503), 1);
        assert_eq!(revoke_blocks(4096, 504), 2);
        assert_eq!(revoke_blocks(4096, 503 + 509 + 1), 3);
        let d = LogDescriptor { kind: DescriptorKind::Metadata, length: 4, data1: 3, data2: 0 };
        d.check_geometry(4096).unwrap();
        assert!(LogDescriptor { length: 3, ..d }.check_geometry(4096).is_err());
    }
}
