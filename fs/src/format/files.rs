//! Small structures stored inside system files: quota records, quota
//! changes, statfs changes, inode number ranges, and the quota and inode
//! lock value blocks.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::consts::{GFS2_MAGIC, QCF_USER};
use super::error::{bad_field, FormatError, Result};
use super::ondisk::{assert_size, Be32, Be64, OnDisk};

/// `gfs2_quota`: one record of the quota file (index 2·id for a user,
/// 2·id + 1 for a group).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Quota {
    pub limit: u64,
    pub warn: u64,
    /// Blocks in use (signed in practice, stored as two's complement).
    pub value: i64,
}

#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct RawQuota {
    pub qu_limit: Be64,
    pub qu_warn: Be64,
    pub qu_value: Be64,
    pub qu_reserved: [u8; 64],
}
assert_size!(RawQuota, 88);

impl OnDisk for Quota {
    type Raw = RawQuota;
    const NAME: &'static str = "quota record";

    fn verify(raw: &RawQuota) -> Result<Self> {
        Ok(Quota {
            limit: raw.qu_limit.get(),
            warn: raw.qu_warn.get(),
            value: raw.qu_value.get() as i64,
        })
    }

    fn to_raw(&self) -> RawQuota {
        RawQuota {
            qu_limit: self.limit.into(),
            qu_warn: self.warn.into(),
            qu_value: (self.value as u64).into(),
            qu_reserved: [0; 64],
        }
    }
}

/// `gfs2_quota_change`: a slot of a node's quota_change file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QuotaChange {
    pub change: i64,
    /// The id is a user (else a group).
    pub user: bool,
    pub id: u32,
}

#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct RawQuotaChange {
    pub qc_change: Be64,
    pub qc_flags: Be32,
    pub qc_id: Be32,
}
assert_size!(RawQuotaChange, 16);

impl OnDisk for QuotaChange {
    type Raw = RawQuotaChange;
    const NAME: &'static str = "quota change";

    fn verify(raw: &RawQuotaChange) -> Result<Self> {
        let flags = raw.qc_flags.get();
        if flags & !QCF_USER != 0 {
            return bad_field(Self::NAME, "qc_flags", flags, "unknown flags");
        }
        Ok(QuotaChange {
            change: raw.qc_change.get() as i64,
            user: flags & QCF_USER != 0,
            id: raw.qc_id.get(),
        })
    }

    fn to_raw(&self) -> RawQuotaChange {
        RawQuotaChange {
            qc_change: (self.change as u64).into(),
            qc_flags: (if self.user { QCF_USER } else { 0 }).into(),
            qc_id: self.id.into(),
        }
    }
}

/// `gfs2_statfs_change`: the master statfs totals, or a node's deltas.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatfsChange {
    pub total: i64,
    pub free: i64,
    pub dinodes: i64,
}

#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct RawStatfsChange {
    pub sc_total: Be64,
    pub sc_free: Be64,
    pub sc_dinodes: Be64,
}
assert_size!(RawStatfsChange, 24);

impl OnDisk for StatfsChange {
    type Raw = RawStatfsChange;
    const NAME: &'static str = "statfs change";

    fn verify(raw: &RawStatfsChange) -> Result<Self> {
        Ok(StatfsChange {
            total: raw.sc_total.get() as i64,
            free: raw.sc_free.get() as i64,
            dinodes: raw.sc_dinodes.get() as i64,
        })
    }

    fn to_raw(&self) -> RawStatfsChange {
        RawStatfsChange {
            sc_total: (self.total as u64).into(),
            sc_free: (self.free as u64).into(),
            sc_dinodes: (self.dinodes as u64).into(),
        }
    }
}

/// `gfs2_inum_range`: a legacy per-node range of formal inode numbers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InumRange {
    pub start: u64,
    pub length: u64,
}

#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct RawInumRange {
    pub ir_start: Be64,
    pub ir_length: Be64,
}
assert_size!(RawInumRange, 16);

impl OnDisk for InumRange {
    type Raw = RawInumRange;
    const NAME: &'static str = "inum range";

    fn verify(raw: &RawInumRange) -> Result<Self> {
        let r = InumRange {
            start: raw.ir_start.get(),
            length: raw.ir_length.get(),
        };
        if r.start.checked_add(r.length).is_none() {
            return bad_field(Self::NAME, "ir_length", r.length, "range ends beyond 2^64");
        }
        Ok(r)
    }

    fn to_raw(&self) -> RawInumRange {
        RawInumRange {
            ir_start: self.start.into(),
            ir_length: self.length.into(),
        }
    }
}

/// `gfs2_quota_lvb`: a quota record in its lock's value block.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QuotaLvb {
    pub limit: u64,
    pub warn: u64,
    pub value: i64,
}

#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct RawQuotaLvb {
    pub qb_magic: Be32,
    pub pad: [u8; 4],
    pub qb_limit: Be64,
    pub qb_warn: Be64,
    pub qb_value: Be64,
}
assert_size!(RawQuotaLvb, 32);

impl OnDisk for QuotaLvb {
    type Raw = RawQuotaLvb;
    const NAME: &'static str = "quota lock value block";

    fn verify(raw: &RawQuotaLvb) -> Result<Self> {
        if raw.qb_magic.get() != GFS2_MAGIC {
            return Err(FormatError::BadMagic {
                what: Self::NAME,
                found: raw.qb_magic.get(),
            });
        }
        Ok(QuotaLvb {
            limit: raw.qb_limit.get(),
            warn: raw.qb_warn.get(),
            value: raw.qb_value.get() as i64,
        })
    }

    fn to_raw(&self) -> RawQuotaLvb {
        RawQuotaLvb {
            qb_magic: GFS2_MAGIC.into(),
            pad: [0; 4],
            qb_limit: self.limit.into(),
            qb_warn: self.warn.into(),
            qb_value: (self.value as u64).into(),
        }
    }
}

/// `gfs2_inode_lvb`: the generation of the last deleted inode at this
/// address, so other nodes can tell a reused block from a live inode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InodeLvb {
    pub generation_deleted: u64,
}

#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct RawInodeLvb {
    pub ri_magic: Be32,
    pub pad: [u8; 4],
    pub ri_generation_deleted: Be64,
}
assert_size!(RawInodeLvb, 16);

impl OnDisk for InodeLvb {
    type Raw = RawInodeLvb;
    const NAME: &'static str = "inode lock value block";

    fn verify(raw: &RawInodeLvb) -> Result<Self> {
        if raw.ri_magic.get() != GFS2_MAGIC {
            return Err(FormatError::BadMagic {
                what: Self::NAME,
                found: raw.ri_magic.get(),
            });
        }
        Ok(InodeLvb {
            generation_deleted: raw.ri_generation_deleted.get(),
        })
    }

    fn to_raw(&self) -> RawInodeLvb {
        RawInodeLvb {
            ri_magic: GFS2_MAGIC.into(),
            pad: [0; 4],
            ri_generation_deleted: self.generation_deleted.into(),
        }
    }
}
