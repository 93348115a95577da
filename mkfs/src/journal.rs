//! The journal files: the dinode and indirect blocks of a journal laid out
//! as one extent, and its log blocks, every one a clean log header.
//!
//! A fresh journal holds a valid log header in every block, as mkfs.gfs2
//! writes it: flags UNMOUNT|USERSPACE, tail 0, `lh_blkno` = position, and
//! sequence numbers rising by one from a random start and wrapping to 0
//! once, so the head (highest sequence) is clean wherever the log starts.

use rgfs::format::consts::{dif, lh, s_if, MetaType};
use rgfs::format::dinode::{Dinode, Timestamp, DINODE_SIZE};
use rgfs::format::geometry::Geometry;
use rgfs::format::meta::{init_block, set_pointer, META_HEADER_SIZE};
use rgfs::format::{LogHeader, OnDisk};

use crate::plan::JournalPlan;

/// Pointers at each level of a tree of `height` mapping `data_blocks`
/// contiguous blocks: level 0 is the dinode, the last level points to data.
fn pointers_per_level(geom: &Geometry, height: u16, data_blocks: u64) -> Vec<u64> {
    (0..height as u32)
        .map(|level| data_blocks.div_ceil((geom.inptrs as u64).pow(height as u32 - 1 - level)))
        .collect()
}

/// The dinode and indirect blocks of journal `jp`, which precede its log
/// blocks in the extent: every level's pointers are consecutive blocks.
pub fn journal_meta_blocks(
    geom: &Geometry,
    jp: &JournalPlan,
    size_bytes: u64,
    time_sec: i64,
) -> Vec<u8> {
    let bsize = geom.bsize as usize;
    let meta_blocks = (jp.file_blocks - jp.data_blocks) as usize;
    let mut out = vec![0u8; meta_blocks * bsize];
    let t = Timestamp::new(time_sec, 0);
    let goal_data = jp.inum.addr + jp.file_blocks - 1;
    let dinode = Dinode {
        num: jp.inum,
        mode: s_if::REG | 0o600,
        uid: 0,
        gid: 0,
        nlink: 1,
        size: size_bytes,
        blocks: jp.file_blocks,
        atime: t,
        mtime: t,
        ctime: t,
        major: 0,
        minor: 0,
        goal_meta: goal_data - jp.data_blocks,
        goal_data,
        generation: 0,
        flags: dif::SYSTEM,
        payload_format: 0,
        height: jp.height,
        depth: 0,
        entries: 0,
        eattr: 0,
    };
    dinode.encode_into(&mut out[..bsize]);

    let levels = pointers_per_level(geom, jp.height, jp.data_blocks);
    // Block index (within `out`) where each level's blocks start.
    let mut level_start = 0usize;
    let mut level_blocks = 1usize;
    let mut target = jp.inum.addr + 1;
    for &pointers in &levels {
        for p in 0..pointers as usize {
            let (block, area, index) = if level_start == 0 {
                (0, DINODE_SIZE, p)
            } else {
                let per = geom.inptrs as usize;
                (level_start + p / per, META_HEADER_SIZE, p % per)
            };
            let b = &mut out[block * bsize..(block + 1) * bsize];
            if level_start != 0 && index == 0 {
                init_block(b, MetaType::Indirect);
            }
            set_pointer(&mut b[area..], index, target + p as u64);
        }
        level_start += level_blocks;
        level_blocks = pointers as usize;
        target += pointers;
    }
    assert_eq!(
        level_start, meta_blocks,
        "journal tree does not fill its metadata blocks"
    );
    out
}

/// Fills `buf` (whole blocks) with the log headers of log blocks
/// `first..` of journal `jp`, whose block 0 has sequence `start_sequence`.
pub fn fill_log_headers(
    geom: &Geometry,
    jp: &JournalPlan,
    start_sequence: u64,
    first: u64,
    buf: &mut [u8],
) {
    let bsize = geom.bsize as usize;
    for (i, block) in buf.chunks_exact_mut(bsize).enumerate() {
        let lblock = first + i as u64;
        let header = LogHeader {
            jid: 0,
            sequence: (start_sequence + lblock) % jp.data_blocks,
            flags: lh::UNMOUNT | lh::USERSPACE,
            tail: 0,
            blkno: lblock as u32,
            addr: jp.data_start() + lblock,
            jinode: jp.inum.addr,
            ..Default::default()
        };
        header.encode_into(block);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rgfs::format::meta::pointers;
    use rgfs::format::Inum;

    fn journal(geom: &Geometry, size: u64) -> JournalPlan {
        let data_blocks = size / geom.bsize as u64;
        JournalPlan {
            rgrp: 0,
            inum: Inum::new(1, 18),
            height: geom.height_for_size(size, false).unwrap(),
            file_blocks: crate::plan::file_blocks_for_size(geom, size),
            data_blocks,
        }
    }

    /// The observed 16 MiB journal: height 2, 9 indirect blocks 19–27,
    /// data 28–4123, goal_meta 27, goal_data 4123.
    #[test]
    fn tree_matches_the_reference_journal() {
        let g = Geometry::new(4096).unwrap();
        let jp = journal(&g, 16 << 20);
        let meta = journal_meta_blocks(&g, &jp, 16 << 20, 0);
        assert_eq!(meta.len(), 10 * 4096);
        let di = Dinode::decode(&meta[..4096]).unwrap();
        assert_eq!(
            (di.height, di.blocks, di.goal_meta, di.goal_data),
            (2, 4106, 27, 4123)
        );
        let top: Vec<u64> = pointers(&meta[DINODE_SIZE..4096])
            .take_while(|&p| p != 0)
            .collect();
        assert_eq!(top, (19..28).collect::<Vec<_>>());
        let first: Vec<u64> = pointers(&meta[4096 + 24..8192]).collect();
        assert_eq!(first[0], 28);
        assert_eq!(first[508], 28 + 508);
        let last: Vec<u64> = pointers(&meta[9 * 4096 + 24..])
            .take_while(|&p| p != 0)
            .collect();
        assert_eq!(*last.last().unwrap(), 4123);
    }

    #[test]
    fn log_headers_wrap_once_and_verify() {
        let g = Geometry::new(512).unwrap();
        let jp = journal(&g, 8 << 20);
        let mut buf = vec![0u8; 4 * 512];
        fill_log_headers(&g, &jp, jp.data_blocks - 2, 0, &mut buf);
        let seqs: Vec<u64> = buf
            .chunks(512)
            .map(|b| LogHeader::decode(b).unwrap().sequence)
            .collect();
        assert_eq!(seqs, [jp.data_blocks - 2, jp.data_blocks - 1, 0, 1]);
        let h = LogHeader::decode(&buf[512..1024]).unwrap();
        assert_eq!((h.blkno, h.addr, h.jinode), (1, jp.data_start() + 1, 18));
        assert!(h.is_unmount());
    }
}
