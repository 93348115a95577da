//! Property tests over every on-disk structure.
//!
//! Covers: (1) encode → decode is the identity for every valid value;
//! (2) random bytes never make a decoder panic, and are refused by every
//! decoder that has something to check (a magic number, a checksum, length
//! rules) — the record types with no checkable content (quota, quota
//! change, statfs change, inum range, inode number) accept any bytes by
//! design and are only required not to panic; (3) a valid encoding with one
//! byte changed never makes a decoder panic, and is refused when the byte
//! lies in the magic/type/format or in a checksummed range; (4) truncated
//! input is a `TooShort` error. Does not cover semantic cross-structure
//! checks (those belong to fsck).
//!
//! Seeds: proptest prints the failing input and persists it; set
//! `PROPTEST_CASES` to run more cases.

use proptest::prelude::*;

use super::consts::*;
use super::dirent::{dirent_size, dirents};
use super::ea::ea_records;
use super::error::FormatError;
use super::*;

fn inum() -> impl Strategy<Value = Inum> {
    (any::<u64>(), any::<u64>()).prop_map(|(f, a)| Inum::new(f, a))
}

fn lock_name() -> impl Strategy<Value = String> {
    "[a-z0-9_:-]{0,63}"
}

fn superblock() -> impl Strategy<Value = Superblock> {
    (
        FS_FORMAT_MIN..=FS_FORMAT,
        9u32..=12,
        inum(),
        inum(),
        lock_name(),
        lock_name(),
        any::<[u8; 16]>(),
    )
        .prop_map(|(fs_format, shift, mut master, mut root, proto, table, uuid)| {
            master.addr = master.addr.max(1);
            root.addr = root.addr.max(1);
            Superblock {
                fs_format,
                multihost_format: MULTIHOST_FORMAT,
                bsize: 1 << shift,
                bsize_shift: shift,
                master_dir: master,
                root_dir: root,
                lockproto: proto,
                locktable: table,
                uuid,
            }
        })
}

fn rindex() -> impl Strategy<Value = Rindex> {
    (0u64..1 << 48, 1u32..100, 0u32..1 << 28).prop_map(|(addr, length, quarter)| Rindex {
        addr,
        length,
        data0: addr + length as u64,
        data: quarter * 4,
        bitbytes: quarter,
    })
}

fn rgrp_header() -> impl Strategy<Value = RgrpHeader> {
    (0u32..=rgf::ALL, any::<u32>(), any::<u32>(), any::<u32>(), any::<u64>(), any::<u64>(), any::<u32>())
        .prop_map(|(flags, data, a, b, igen, data0, skip)| {
            let free = if data == 0 { a } else { a % (data + 1) };
            let dinodes = if data == 0 { b } else { b % (data - free + 1) };
            RgrpHeader { flags, free, dinodes, skip, igeneration: igen, data0, data, bitbytes: data / 4 }
        })
}

fn timestamp() -> impl Strategy<Value = Timestamp> {
    (any::<i64>(), 0u32..1_000_000_000).prop_map(|(s, n)| Timestamp::new(s, n))
}

fn dinode() -> impl Strategy<Value = Dinode> {
    let types = prop::sample::select(vec![s_if::REG, s_if::DIR, s_if::LNK, s_if::CHR, s_if::BLK, s_if::FIFO, s_if::SOCK]);
    (
        (inum(), types, 0u32..0o7777, any::<u32>(), any::<u32>(), any::<u32>(), any::<u64>(), any::<u64>()),
        (timestamp(), timestamp(), timestamp(), any::<u32>(), any::<u32>(), any::<u64>(), any::<u64>(), any::<u64>()),
        (any::<u32>(), any::<u32>(), 0u16..=MAX_META_HEIGHT, 0u16..=DIR_MAX_DEPTH, any::<u32>(), any::<u64>()),
    )
        .prop_map(|(a, b, c)| {
            let (num, ty, perm, uid, gid, nlink, size, blocks) = a;
            let (atime, mtime, ctime, major, minor, goal_meta, goal_data, generation) = b;
            let (mut flags, payload_format, height, depth, entries, eattr) = c;
            if ty != s_if::DIR {
                flags &= !dif::EXHASH;
            }
            Dinode {
                num, mode: ty | perm, uid, gid, nlink, size, blocks, atime, mtime, ctime, major, minor,
                goal_meta, goal_data, generation, flags, payload_format, height, depth, entries, eattr,
            }
        })
}

fn dirent_header() -> impl Strategy<Value = DirentHeader> {
    (inum(), any::<u32>(), 0u16..=255, 0usize..100, any::<u16>(), any::<u16>()).prop_map(
        |(inum, hash, name_len, extra, de_type, rahead)| DirentHeader {
            inum,
            hash,
            rec_len: (dirent_size(name_len as usize) + 8 * extra) as u16,
            name_len,
            de_type,
            rahead,
        },
    )
}

fn leaf() -> impl Strategy<Value = Leaf> {
    (0u16..=DIR_MAX_DEPTH, any::<u16>(), any::<u64>(), any::<u64>(), any::<u32>(), any::<u32>(), any::<u64>())
        .prop_map(|(depth, entries, next, inode, dist, nsec, sec)| Leaf { depth, entries, next, inode, dist, nsec, sec })
}

fn ea_header() -> impl Strategy<Value = EaHeader> {
    (0u8..=eatype::LAST, 1u8..=255, 0u32..=EA_MAX_DATA_LEN as u32, 0u8..=17, any::<bool>(), 0u32..64)
        .prop_map(|(ea_type, name_len, data_len, num_ptrs, last, extra)| {
            let mut h = EaHeader { rec_len: 0, data_len, name_len, ea_type, flags: if last { EAFLAG_LAST } else { 0 }, num_ptrs };
            h.rec_len = (h.used_size() as u32).max(16) + 8 * extra;
            h
        })
}

fn log_header() -> impl Strategy<Value = LogHeader> {
    (
        (any::<u32>(), any::<u64>(), any::<u32>(), any::<u32>(), any::<u32>(), any::<u32>(), any::<u64>()),
        (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>(), any::<i64>(), any::<i64>(), any::<i64>()),
    )
        .prop_map(|(a, b)| LogHeader {
            jid: a.0, sequence: a.1, flags: a.2, tail: a.3, blkno: a.4, nsec: a.5, sec: a.6,
            addr: b.0, jinode: b.1, statfs_addr: b.2, quota_addr: b.3,
            local_total: b.4, local_free: b.5, local_dinodes: b.6,
        })
}

fn log_descriptor() -> impl Strategy<Value = LogDescriptor> {
    let kinds = prop::sample::select(vec![DescriptorKind::Metadata, DescriptorKind::Revoke, DescriptorKind::Jdata]);
    (kinds, 1u32.., any::<u32>(), any::<u32>()).prop_map(|(kind, length, data1, data2)| LogDescriptor { kind, length, data1, data2 })
}

fn rgrp_lvb() -> impl Strategy<Value = RgrpLvb> {
    (any::<u32>(), any::<u32>(), any::<u32>(), any::<u64>(), any::<u32>())
        .prop_map(|(flags, free, dinodes, igeneration, unlinked)| RgrpLvb { flags, free, dinodes, igeneration, unlinked })
}

fn quota() -> impl Strategy<Value = Quota> {
    (any::<u64>(), any::<u64>(), any::<i64>()).prop_map(|(limit, warn, value)| Quota { limit, warn, value })
}

fn quota_change() -> impl Strategy<Value = QuotaChange> {
    (any::<i64>(), any::<bool>(), any::<u32>()).prop_map(|(change, user, id)| QuotaChange { change, user, id })
}

fn statfs_change() -> impl Strategy<Value = StatfsChange> {
    (any::<i64>(), any::<i64>(), any::<i64>()).prop_map(|(total, free, dinodes)| StatfsChange { total, free, dinodes })
}

fn inum_range() -> impl Strategy<Value = InumRange> {
    (any::<u64>(), any::<u64>()).prop_map(|(start, len)| InumRange { start, length: len.min(u64::MAX - start) })
}

fn quota_lvb() -> impl Strategy<Value = QuotaLvb> {
    (any::<u64>(), any::<u64>(), any::<i64>()).prop_map(|(limit, warn, value)| QuotaLvb { limit, warn, value })
}

fn inode_lvb() -> impl Strategy<Value = InodeLvb> {
    any::<u64>().prop_map(|generation_deleted| InodeLvb { generation_deleted })
}

/// Which bytes of an encoding a decoder must notice when changed.
#[derive(Clone, Copy)]
enum Guarded {
    /// Nothing to check (plain records).
    Nothing,
    /// The first `n` bytes hold a magic number (and for metadata headers,
    /// type at 4..8 and format at 16..20).
    MetaHeader,
    /// A 4-byte magic at offset 0 only.
    Magic,
    /// Every byte is covered by a checksum.
    Everything,
}

fn guarded(g: Guarded, index: usize) -> bool {
    match g {
        Guarded::Nothing => false,
        Guarded::MetaHeader => index < 8 || (16..20).contains(&index),
        Guarded::Magic => index < 4,
        Guarded::Everything => true,
    }
}

/// Runs the round-trip, truncation and mutation properties for one type.
fn check_structure<T: OnDisk + PartialEq + std::fmt::Debug>(value: &T, guard: Guarded, at: usize, xor: u8) -> Result<(), TestCaseError> {
    let bytes = value.to_bytes();
    prop_assert_eq!(bytes.len(), T::SIZE);
    prop_assert_eq!(&T::decode(&bytes).expect("valid encoding decodes"), value);
    let short = &bytes[..at % T::SIZE];
    let is_too_short = matches!(T::decode(short), Err(FormatError::TooShort { .. }));
    prop_assert!(is_too_short);
    let mut mutated = bytes.clone();
    let index = at % T::SIZE;
    mutated[index] ^= xor.max(1);
    let result = T::decode(&mutated);
    if guarded(guard, index) {
        prop_assert!(result.is_err(), "change at byte {} went unnoticed", index);
    }
    Ok(())
}

fn random_bytes_refused<T: OnDisk>(bytes: &[u8], must_refuse: bool) -> Result<(), TestCaseError> {
    let result = T::decode(bytes);
    if must_refuse {
        prop_assert!(result.is_err(), "{} accepted random bytes", T::NAME);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn superblock_properties(v in superblock(), at in any::<usize>(), x in any::<u8>()) {
        check_structure(&v, Guarded::MetaHeader, at, x)?;
    }

    #[test]
    fn rindex_properties(v in rindex(), at in any::<usize>(), x in any::<u8>()) {
        check_structure(&v, Guarded::Nothing, at, x)?;
    }

    #[test]
    fn rgrp_header_properties(v in rgrp_header(), at in any::<usize>(), x in any::<u8>()) {
        // rg_crc is always written, so every byte is covered.
        check_structure(&v, Guarded::Everything, at, x)?;
    }

    #[test]
    fn dinode_properties(v in dinode(), at in any::<usize>(), x in any::<u8>()) {
        check_structure(&v, Guarded::MetaHeader, at, x)?;
    }

    #[test]
    fn dirent_header_properties(v in dirent_header(), at in any::<usize>(), x in any::<u8>()) {
        check_structure(&v, Guarded::Nothing, at, x)?;
    }

    #[test]
    fn leaf_properties(v in leaf(), at in any::<usize>(), x in any::<u8>()) {
        check_structure(&v, Guarded::MetaHeader, at, x)?;
    }

    #[test]
    fn ea_header_properties(v in ea_header(), at in any::<usize>(), x in any::<u8>()) {
        check_structure(&v, Guarded::Nothing, at, x)?;
    }

    #[test]
    fn log_header_properties(v in log_header(), at in 0usize..4096, x in 1u8..) {
        // The 120-byte encoding has lh_crc 0 (v1); the header bytes up to
        // lh_hash are covered by lh_hash.
        check_structure(&v, Guarded::Nothing, at, x)?;
        let mut block = vec![0u8; 4096];
        v.encode_into(&mut block);
        prop_assert_eq!(LogHeader::decode(&block).unwrap(), v);
        block[at] ^= x;
        let still_valid = LogHeader::decode(&block).is_ok();
        // Only a change that zeroes lh_crc itself (turning it into a v1
        // header) may go unnoticed.
        let crc_zeroed = (48..52).contains(&at) && block[48..52] == [0; 4];
        prop_assert!(!still_valid || crc_zeroed, "change at byte {} went unnoticed", at);
    }

    #[test]
    fn log_descriptor_properties(v in log_descriptor(), at in any::<usize>(), x in any::<u8>()) {
        check_structure(&v, Guarded::MetaHeader, at, x)?;
    }

    #[test]
    fn lvb_and_record_properties(
        rl in rgrp_lvb(), q in quota(), qc in quota_change(), sc in statfs_change(),
        ir in inum_range(), ql in quota_lvb(), il in inode_lvb(), n in inum(),
        at in any::<usize>(), x in any::<u8>(),
    ) {
        check_structure(&rl, Guarded::Magic, at, x)?;
        check_structure(&ql, Guarded::Magic, at, x)?;
        check_structure(&il, Guarded::Magic, at, x)?;
        check_structure(&q, Guarded::Nothing, at, x)?;
        check_structure(&qc, Guarded::Nothing, at, x)?;
        check_structure(&sc, Guarded::Nothing, at, x)?;
        check_structure(&ir, Guarded::Nothing, at, x)?;
        check_structure(&n, Guarded::Nothing, at, x)?;
    }

    /// Random bytes: every decoder returns instead of panicking, and the
    /// ones with a magic number or checksum refuse them.
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        // A random 4-byte magic matches with probability 2^-32; treat a
        // match as "not random" rather than as a failure.
        let magic_ok = bytes.len() >= 4 && bytes[..4] == GFS2_MAGIC.to_be_bytes();
        let refuse = !magic_ok;
        random_bytes_refused::<Superblock>(&bytes, refuse)?;
        random_bytes_refused::<RgrpHeader>(&bytes, refuse)?;
        random_bytes_refused::<Dinode>(&bytes, refuse)?;
        random_bytes_refused::<Leaf>(&bytes, refuse)?;
        random_bytes_refused::<LogHeader>(&bytes, refuse)?;
        random_bytes_refused::<LogDescriptor>(&bytes, refuse)?;
        random_bytes_refused::<RgrpLvb>(&bytes, refuse)?;
        random_bytes_refused::<QuotaLvb>(&bytes, refuse)?;
        random_bytes_refused::<InodeLvb>(&bytes, refuse)?;
        random_bytes_refused::<Rindex>(&bytes, false)?;
        random_bytes_refused::<DirentHeader>(&bytes, false)?;
        random_bytes_refused::<EaHeader>(&bytes, false)?;
        random_bytes_refused::<Quota>(&bytes, false)?;
        random_bytes_refused::<QuotaChange>(&bytes, false)?;
        random_bytes_refused::<StatfsChange>(&bytes, false)?;
        random_bytes_refused::<InumRange>(&bytes, false)?;
        random_bytes_refused::<Inum>(&bytes, false)?;
        // Area parsers.
        for d in dirents(&bytes) {
            let _ = d;
        }
        let _ = ea_records(&bytes, 4096);
        let _ = meta::block_type(&bytes);
    }

    /// Random dirent areas and EA blocks: the walkers verify every record
    /// and stop at the first bad one, never reading out of bounds.
    #[test]
    fn dirent_walker_rejects_or_accepts_consistently(area in proptest::collection::vec(any::<u8>(), 0..1024)) {
        let mut total = 0usize;
        let mut ok = true;
        for d in dirents(&area) {
            match d {
                Ok(d) => { prop_assert_eq!(d.offset, total); total += d.header.rec_len as usize; }
                Err(_) => { ok = false; }
            }
        }
        if ok { prop_assert_eq!(total, area.len()); }
    }
}
