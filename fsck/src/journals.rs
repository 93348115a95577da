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

use crate::check::Fsck;
use crate::report::Fix;
use crate::volume::Result;

/// What a scan of every block of a journal found.
#[derive(Default)]
struct Scan {
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
                None if block_type(block) == Some(MetaType::LogHeader) || looks_like_header(block) => s.damaged.push(at),
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
    block.len() >= 8 && block[..4] == rgfs::format::consts::GFS2_MAGIC.to_be_bytes() && block[4..8] == (MetaType::LogHeader as u32).to_be_bytes()
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
        fs.problem("jindex", "not found in the master directory", Fix::None);
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
                fs.problem(object, format!("cannot be mapped: {e}"), Fix::None);
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
                    let msg = format!("is dirty: {} blocks to replay ({} revoked)", plan.writes.len(), plan.revoked);
                    if fs.problem(&object, msg, fix) {
                        apply_replay(fs.vol.dev, &fs.vol.geom, &map, &plan, jid).map_err(|e| crate::volume::FsckError::Fatal(format!("{object}: replay failed: {e}")))?;
                        fs.report.note(&object, "replayed");
                    }
                }
                Err(e) => {
                    // The log cannot be replayed; its contents are lost
                    // either way, but the journal must become usable.
                    if fs.problem(&object, format!("is dirty and its log is damaged ({e})"), Fix::Risky) {
                        rewrite = true;
                    }
                }
            }
        }
        let s = scan(fs, &map)?;
        if !s.damaged.is_empty() {
            let first = s.damaged[0];
            let msg = format!("{} damaged log headers (the first at journal block {first})", s.damaged.len());
            let fix = if head.is_clean() { Fix::Safe } else { Fix::Risky };
            if fs.problem(&object, msg, fix) {
                rewrite = true;
            }
        }
        if s.decreases > 1 {
            let fix = if head.is_clean() { Fix::Safe } else { Fix::Risky };
            fs.report.info(format!("{object}: sequence numbers go down {} times", s.decreases));
            if fs.problem(&object, "log sequence numbers go backwards besides the one wrap of the log", fix) {
                rewrite = true;
            }
        }
        if rewrite && fs.vol.writable {
            reinitialize(fs, jid, &map, s.max_sequence + 2)?;
            fs.report.note(&object, "rewritten as a clean, empty log");
        }
        let _ = s.headers;
    }
    fs.progress.finish();
    Ok(())
}
