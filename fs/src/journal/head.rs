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

/// Reads the journal's blocks in journal order, in runs of consecutive
/// device blocks, and calls `visit(lblock, block)` for each until it returns
/// false. The one walker over a whole journal: head finding and fsck's
/// checks share it.
pub fn for_each_block(
    dev: &dyn BlockDevice,
    geom: &Geometry,
    map: &JournalMap,
    mut visit: impl FnMut(u32, &[u8]) -> bool,
) -> Result<()> {
    let bsize = geom.bsize as usize;
    let mut buf = vec![0u8; bsize * SCAN_CHUNK_BLOCKS as usize];
    let mut lblock = 0u32;
    while lblock < map.jd_blocks() {
        let (first, len) = map.run(lblock, SCAN_CHUNK_BLOCKS);
        let chunk = &mut buf[..len as usize * bsize];
        dev.read_at(geom.byte_offset(first), chunk)?;
        for (i, block) in chunk.chunks_exact(bsize).enumerate() {
            if !visit(lblock + i as u32, block) {
                return Ok(());
            }
        }
        lblock += len;
    }
    Ok(())
}

/// Scans the journal from block 0 and returns its head: the last valid log
/// header before the first valid one whose sequence number goes down.
/// Blocks that are not valid headers (descriptors, logged blocks, torn
/// writes) are skipped. A journal without any valid header is corrupt.
pub fn find_head(dev: &dyn BlockDevice, geom: &Geometry, map: &JournalMap) -> Result<Head> {
    let mut best: Option<Head> = None;
    for_each_block(dev, geom, map, |at, block| {
        let Some(header) = header_at(block, at) else {
            return true;
        };
        if best.is_some_and(|b| header.sequence < b.header.sequence) {
            return false;
        }
        best = Some(Head { lblock: at, header });
        true
    })?;
    match best {
        Some(head) => Ok(head),
        None => corrupt(
            format!("journal inode {}", map.dinode),
            "no valid log header in the journal",
        ),
    }
}
