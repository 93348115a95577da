//! Pass "journals": every journal listed in jindex. A dirty journal (its
//! head lacks UNMOUNT) is replayed when repairs are allowed and reported
//! otherwise; a journal whose log headers are damaged or out of order is
//! rewritten as a fresh, clean log once nothing in it is needed.
//!
//! Replay uses the filesystem's own journal code (`rgfs::journal`), so
//! fsck and mount recover journals identically.

use rgfs::format::consts::{lh, MetaType};
use rgfs::format::meta::block_type;
use rgfs::format::{LogHeader, OnDisk};
use rgfs::journal::head::header_at;
use rgfs::journal::{apply_replay, find_head, plan_replay, JournalMap};
use zerocopy::FromBytes;

use crate::check::Fsck;
use crate::report::Fix;
use crate::volume::Result;

/// What a scan of every block of a journal found.
#[derive(Default)]
struct Scan {
    /// Valid log headers.
    headers: u32,
    /// Blocks typed as log headers that do not verify (or sit at the
    /// wrong position).
    damaged: Vec<u32>,
    /// Times the sequence number goes down between consecutive headers
    /// (one is the wrap of the circular log).
    decreases: u32,
    max_sequence: u64,
}

fn scan(fs: &Fsck, map: &JournalMap) -> Result<Scan> {
    let bsize = fs.vol.bsize();
    let mut s = Scan::default();
    let mut last: Option<u64> = None;
    let mut lblock = 0;
    let mut buf = vec![0u8; bsize * 256];
    while lblock < map.jd_blocks() {
        let (first, len) = map.run(lblock, 256);
        let chunk = &mut buf[..len as usize * bsize];
        fs.vol.dev.read_at(fs.vol.geom.byte_offset(first), chunk)?;
        for (i, block) in chunk.chunks_exact(bsize).enumerate() {
            let at = lblock + i as u32;
            match header_at(block, at) {
                Some(h) => {
                    s.headers += 1;
                    if last.is_some_and(|l| h.sequence < l) {
                        s.decreases += 1;
                    }
                    last = Some(h.sequence);
                    s.max_sequence = s.max_sequence.max(h.sequence);
                }
                None if block_type(block) == Some(MetaType::LogHeader)
                    || looks_like_header(block) =>
                {
                    s.damaged.push(at)
                }
                None => {}
            }
        }
        lblock += len;
    }
    // The wrap from the last block back to block 0 also counts.
    Ok(s)
}

/// A block that starts with the magic and the log header type, whatever
/// its format field says.
fn looks_like_header(block: &[u8]) -> bool {
    block.len() >= 8
        && block[..4] == rgfs::format::consts::GFS2_MAGIC.to_be_bytes()
        && block[4..8] == (MetaType::LogHeader as u32).to_be_bytes()
}

/// Rewrites every block of the journal as a clean log header with
/// increasing sequence numbers from `first_sequence`: the state mkfs
/// leaves, which loses nothing once the journal is clean.
fn reinitialize(fs: &Fsck, jid: u32, map: &JournalMap, first_sequence: u64) -> Result<()> {
    let bsize = fs.vol.bsize();
    let mut block = vec![0u8; bsize];
    for n in 0..map.jd_blocks() {
        let h = LogHeader {
            jid,
            sequence: first_sequence + n as u64,
            flags: lh::UNMOUNT | lh::USERSPACE,
            tail: n,
            blkno: n,
            addr: map.block(n),
            jinode: map.dinode,
            ..LogHeader::default()
        };
        h.encode_into(&mut block);
        fs.vol.write(map.block(n), &block)?;
    }
    Ok(())
}

pub fn run(fs: &mut Fsck) -> Result<()> {
    let journals = fs.sys.journals.clone();
    if fs.sys.jindex.is_none() {
        // The system files check reports it, and puts it back or makes it
        // again after pass 2; its journals are checked by the next run.
        fs.report.note(
            "jindex",
            "not found in the master directory; the journals are not checked",
        );
        return Ok(());
    }
    fs.progress.start("journals", journals.len() as u64);
    let nolock = fs.sb.lockproto.ends_with("_nolock");
    for (jid, addr) in journals {
        fs.progress.inc();
        let object = format!("journal{jid} (inode {addr})");
        let reader = (fs.vol.dev, &fs.vol.geom);
        let map = match JournalMap::load(&fs.vol.geom, addr, fs.vol.dev_blocks, &reader) {
            Ok(m) => m,
            Err(e) => {
                // Rebuilt after pass 1, once every block's owner is known.
                fs.report.note(&object, format!("cannot be mapped ({e}); its block tree is checked in pass1 and rebuilt after it"));
                fs.broken_journals.push((jid, addr));
                continue;
            }
        };
        let head = match find_head(fs.vol.dev, &fs.vol.geom, &map) {
            Ok(h) => Some(h),
            Err(e) => {
                if fs.problem(&object, format!("{e}"), Fix::Risky) {
                    reinitialize(fs, jid, &map, 1)?;
                }
                None
            }
        };
        let Some(head) = head else { continue };
        let mut rewrite = false;
        if !head.is_clean() {
            match plan_replay(fs.vol.dev, &fs.vol.geom, &map, head, fs.vol.dev_blocks) {
                Ok(plan) => {
                    let fix = if nolock { Fix::Safe } else { Fix::Risky };
                    let msg = format!(
                        "is dirty: {} blocks to replay ({} revoked)",
                        plan.writes.len(),
                        plan.revoked
                    );
                    if fs.problem(&object, msg, fix) {
                        apply_replay(fs.vol.dev, &fs.vol.geom, &map, &plan, jid).map_err(|e| {
                            crate::volume::FsckError::Fatal(format!("{object}: replay failed: {e}"))
                        })?;
                        fs.report.note(&object, "replayed");
                    }
                }
                Err(e) => {
                    // The log cannot be replayed; its contents are lost
                    // either way, but the journal must become usable.
                    if fs.problem(
                        &object,
                        format!("is dirty and its log is damaged ({e})"),
                        Fix::Risky,
                    ) {
                        rewrite = true;
                    }
                }
            }
        }
        let s = scan(fs, &map)?;
        if !s.damaged.is_empty() {
            let first = s.damaged[0];
            let msg = format!(
                "{} damaged log headers (the first at journal block {first})",
                s.damaged.len()
            );
            let fix = if head.is_clean() {
                Fix::Safe
            } else {
                Fix::Risky
            };
            if fs.problem(&object, msg, fix) {
                rewrite = true;
            }
        }
        if s.decreases > 1 {
            let fix = if head.is_clean() {
                Fix::Safe
            } else {
                Fix::Risky
            };
            fs.report.info(format!(
                "{object}: sequence numbers go down {} times",
                s.decreases
            ));
            if fs.problem(
                &object,
                "log sequence numbers go backwards besides the one wrap of the log",
                fix,
            ) {
                rewrite = true;
            }
        }
        fs.report.info(format!(
            "{object}: {} valid log headers, head at journal block {}",
            s.headers, head.lblock
        ));
        if rewrite && fs.vol.writable {
            reinitialize(fs, jid, &map, s.max_sequence + 2)?;
            fs.report.note(&object, "rewritten as a clean, empty log");
        }
    }
    fs.progress.finish();
    Ok(())
}

/// After pass 1 (which removed bad pointers from the journal's tree):
/// gives every hole of a journal that could not be mapped a new block, and
/// writes it as a clean, empty log. Its old contents were unreadable.
pub fn rebuild_broken(fs: &mut Fsck) -> Result<()> {
    for (jid, addr) in std::mem::take(&mut fs.broken_journals) {
        let object = format!("journal{jid} (inode {addr})");
        if !fs.inodes.contains_key(&addr) {
            fs.problem(
                &object,
                "its inode is gone; the journal cannot be rebuilt",
                Fix::None,
            );
            continue;
        }
        let block = fs.vol.read(addr)?;
        let d = rgfs::format::dinode::RawDinode::ref_from_prefix(&block)
            .expect("dinode")
            .0;
        let (size, height) = (d.di_size.get(), d.di_height.get());
        let bsize = fs.vol.bsize() as u64;
        let sane = size % bsize == 0
            && (rgfs::journal::map::MIN_JOURNAL_BYTES..=rgfs::journal::map::MAX_JOURNAL_BYTES)
                .contains(&size);
        if !sane || fs.vol.geom.height_for_size(size, false) != Some(height) {
            fs.problem(
                &object,
                format!(
                    "size {size} or height {height} is impossible for a journal; cannot rebuild it"
                ),
                Fix::None,
            );
            continue;
        }
        if !fs.problem(&object, "has holes or bad blocks: holes filled with new blocks, then rewritten as a clean, empty log", Fix::Risky) {
            continue;
        }
        fill_holes(fs, addr, size / bsize, height)?;
        let reader = (fs.vol.dev, &fs.vol.geom);
        match JournalMap::load(&fs.vol.geom, addr, fs.vol.dev_blocks, &reader) {
            Ok(map) => reinitialize(fs, jid, &map, 1)?,
            Err(e) => fs
                .report
                .note(&object, format!("still cannot be mapped: {e}")),
        }
    }
    Ok(())
}

/// Allocates a block for every missing pointer on the path to each of the
/// first `nblocks` logical blocks of inode `addr`.
fn fill_holes(fs: &mut Fsck, addr: u64, nblocks: u64, height: u16) -> Result<()> {
    use rgfs::format::meta::{init_block, pointer_at, set_pointer, META_HEADER_SIZE};
    use rgfs::format::{BlockState, DINODE_SIZE};
    use std::collections::HashMap;

    use crate::blockmap::Use;
    let mut dinode = fs.vol.read(addr)?;
    let mut cache: HashMap<u64, Vec<u8>> = HashMap::new();
    let mut added = 0u64;
    let mut near = addr;
    for lblock in 0..nblocks {
        let Some(path) = fs.vol.geom.tree_path(lblock, height) else {
            break;
        };
        let mut parent: Option<u64> = None;
        for (level, &index) in path.levels().iter().enumerate() {
            let leaf = level + 1 == height as usize;
            let current = match parent {
                None => pointer_at(&dinode[DINODE_SIZE..], index as usize),
                Some(p) => pointer_at(&cache[&p][META_HEADER_SIZE..], index as usize),
            };
            let child = if current != 0 {
                current
            } else {
                let map = &fs.map;
                let Some(b) = fs
                    .vol
                    .alloc(near, BlockState::Used, &|b| map.get(b).is_none())
                else {
                    return crate::volume::fatal("no free block left to rebuild a journal");
                };
                fs.map
                    .insert(b, if leaf { Use::Data } else { Use::Indirect }, addr)
                    .ok();
                added += 1;
                if !leaf {
                    let mut buf = vec![0u8; fs.vol.bsize()];
                    init_block(&mut buf, MetaType::Indirect);
                    cache.insert(b, buf);
                }
                match parent {
                    None => set_pointer(&mut dinode[DINODE_SIZE..], index as usize, b),
                    Some(p) => set_pointer(
                        &mut cache.get_mut(&p).expect("cached")[META_HEADER_SIZE..],
                        index as usize,
                        b,
                    ),
                }
                b
            };
            if leaf {
                near = child + 1;
            } else {
                if let std::collections::hash_map::Entry::Vacant(e) = cache.entry(child) {
                    e.insert(fs.vol.read(child)?);
                }
                parent = Some(child);
            }
        }
    }
    for (b, buf) in &cache {
        fs.vol.write(*b, buf)?;
    }
    let raw = crate::dir::dinode_mut(&mut dinode);
    raw.di_blocks = (raw.di_blocks.get() + added).into();
    fs.vol.write(addr, &dinode)?;
    Ok(())
}
