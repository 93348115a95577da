//! Finding a journal's head: the last log header written.

use rgfs_block::BlockDevice;

use crate::error::{corrupt, Result};
use crate::format::{Geometry, LogHeader, OnDisk};

use super::map::JournalMap;

/// Blocks read per device request while scanning a journal.
const SCAN_CHUNK_BLOCKS: u32 = 256;

/// The head of a journal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    /// Journal block holding the header.
    pub lblock: u32,
    pub header: LogHeader,
}

impl Head {
    pub fn is_clean(&self) -> bool {
        self.header.is_unmount()
    }
}

/// Decodes a log header and checks that it belongs at `lblock`.
pub fn header_at(block: &[u8], lblock: u32) -> Option<LogHeader> {
    LogHeader::decode(block).ok().filter(|h| h.blkno == lblock)
}

/// Scans the journal from block 0 and returns its head: the last valid log
/// header before the first valid one whose sequence number goes down.
/// Blocks that are not valid headers (descriptors, logged blocks, torn
/// writes) are skipped. A journal without any valid header is corrupt.
pub fn find_head(dev: &dyn BlockDevice, geom: &Geometry, map: &JournalMap) -> Result<Head> {
    let bsize = geom.bsize as usize;
    let mut buf = vec![0u8; bsize * SCAN_CHUNK_BLOCKS as usize];
    let mut best: Option<Head> = None;
    let mut lblock = 0u32;
    'scan: while lblock < map.jd_blocks() {
        let (first, len) = map.run(lblock, SCAN_CHUNK_BLOCKS);
        let chunk = &mut buf[..len as usize * bsize];
        dev.read_at(geom.byte_offset(first), chunk)?;
        for (i, block) in chunk.chunks_exact(bsize).enumerate() {
            let at = lblock + i as u32;
            let Some(header) = header_at(block, at) else {
                continue;
            };
            if let Some(b) = best {
                if header.sequence < b.header.sequence {
                    break 'scan;
                }
            }
            best = Some(Head { lblock: at, header });
        }
        lblock += len;
    }
    match best {
        Some(head) => Ok(head),
        None => corrupt(
            format!("journal inode {}", map.dinode),
            "no valid log header in the journal",
        ),
    }
}
