//! Puts a prepared filesystem on a device.
//!
//! Order, chosen so that an interrupted mkfs never leaves a device that
//! looks like a valid filesystem:
//! 1. zero everything up to and including the superblock block (an old
//!    superblock, GFS2 or other, stops being recognised);
//! 2. each resource group in address order: header and bitmap blocks, the
//!    journal it holds if any (written in large sequential chunks), and the
//!    unused blocks up to the next group, zeroed;
//! 3. the system file blocks, contiguous runs in one write each;
//! 4. flush; then the superblock; then flush again.
//!
//! After step 4 the filesystem is complete and durable (the `BlockDevice`
//! contract: a successful flush makes every earlier write durable).

use rgfs::format::meta::init_block;
use rgfs::format::superblock::Superblock;
use rgfs::format::{MetaType, OnDisk};
use rgfs_block::BlockDevice;

use crate::error::Result;
use crate::journal::{fill_log_headers, journal_meta_blocks};
use crate::metafs::RgrpState;
use crate::Prepared;

/// Log blocks written per `write_at` call (about 4 MiB).
const JOURNAL_CHUNK_BYTES: usize = 4 << 20;

/// How far the journals are written, for a progress display.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JournalProgress {
    pub blocks_written: u64,
    pub blocks_total: u64,
}

/// The header and bitmap blocks of a group.
fn rgrp_blocks(p: &Prepared, rg: &RgrpState) -> Vec<u8> {
    let g = &p.layout.geometry;
    let bsize = g.bsize as usize;
    let length = g.rgrp_meta_blocks(rg.header.bitbytes);
    let mut out = vec![0u8; length as usize * bsize];
    for i in 0..length {
        let block = &mut out[i as usize * bsize..(i as usize + 1) * bsize];
        if i == 0 {
            rg.header.encode_into(block);
        } else {
            init_block(block, MetaType::RgrpBitmap);
        }
        if let Some(bitmap) = &rg.bitmap {
            let (at, span) = g.bitmap_block_span(i, rg.header.bitbytes);
            let len = span.len();
            block[at..at + len].copy_from_slice(&bitmap[span.start as usize..span.end as usize]);
        }
    }
    out
}

/// Writes `p` to `dev`, reporting journal progress.
pub fn write(
    dev: &dyn BlockDevice,
    p: &Prepared,
    progress: &mut dyn FnMut(JournalProgress),
) -> Result<()> {
    let g = &p.layout.geometry;
    let bsize = g.bsize as u64;
    let sb_addr = g.sb_addr();
    dev.write_at(0, &vec![0u8; ((sb_addr + 1) * bsize) as usize])?;

    let journal_total: u64 = p.layout.journals.iter().map(|j| j.data_blocks).sum();
    let mut journal_done = 0u64;
    progress(JournalProgress {
        blocks_written: 0,
        blocks_total: journal_total,
    });
    let rgrps = &p.system.alloc.rgrps;
    for (i, rg) in rgrps.iter().enumerate() {
        let plan = &p.layout.rgrps[i];
        dev.write_at(g.byte_offset(plan.ri.addr), &rgrp_blocks(p, rg))?;
        for (j, jp) in p
            .layout
            .journals
            .iter()
            .enumerate()
            .filter(|(_, jp)| jp.rgrp == i)
        {
            let size_bytes = p.layout.journal_size_mb as u64 * (1 << 20);
            let meta = journal_meta_blocks(g, jp, size_bytes, p.time_sec);
            dev.write_at(g.byte_offset(jp.inum.addr), &meta)?;
            let chunk_blocks = (JOURNAL_CHUNK_BYTES as u64 / bsize).min(jp.data_blocks);
            let mut buf = vec![0u8; (chunk_blocks * bsize) as usize];
            let mut first = 0;
            while first < jp.data_blocks {
                let n = chunk_blocks.min(jp.data_blocks - first);
                let chunk = &mut buf[..(n * bsize) as usize];
                fill_log_headers(g, jp, p.journal_start_sequences[j], first, chunk);
                dev.write_at(g.byte_offset(jp.data_start() + first), chunk)?;
                first += n;
                journal_done += n;
                progress(JournalProgress {
                    blocks_written: journal_done,
                    blocks_total: journal_total,
                });
            }
        }
        // The blocks between this group's data and the next group (at most
        // 3, from rounding the data to whole bitmap bytes) are zeroed.
        if let Some(next) = p.layout.rgrps.get(i + 1) {
            let gap = next.ri.addr - plan.ri.data_end();
            if gap > 0 {
                dev.write_at(
                    g.byte_offset(plan.ri.data_end()),
                    &vec![0u8; (gap * bsize) as usize],
                )?;
            }
        }
    }

    // System file blocks, coalescing runs of consecutive addresses.
    let mut run_start = 0u64;
    let mut run: Vec<u8> = Vec::new();
    for (addr, block) in p.system.store.iter() {
        if !run.is_empty() && addr != run_start + run.len() as u64 / bsize {
            dev.write_at(g.byte_offset(run_start), &run)?;
            run.clear();
        }
        if run.is_empty() {
            run_start = addr;
        }
        run.extend_from_slice(block);
    }
    if !run.is_empty() {
        dev.write_at(g.byte_offset(run_start), &run)?;
    }
    dev.flush()?;

    let mut sb_block = vec![0u8; bsize as usize];
    p.superblock.encode_into(&mut sb_block);
    debug_assert_eq!(Superblock::decode(&sb_block).as_ref(), Ok(&p.superblock));
    dev.write_at(g.byte_offset(sb_addr), &sb_block)?;
    dev.flush()?;
    Ok(())
}
