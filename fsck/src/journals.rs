//! Pass "journals": every journal listed in jindex. A dirty journal (its
//! head lacks UNMOUNT) is replayed when repairs are allowed and reported
//! otherwise; a journal whose log headers are damaged or out of order is
//! rewritten as a fresh, clean log once nothing in it is needed.
//!
//! Replay uses the filesystem's own journal code (`rgfs::journal`), so
//! fsck and mount recover journals identically.
//!
//! The order rule: one writer fills the circular log block after block
//! with rising sequence numbers, so going once round the journal the
//! sequence of the valid headers rises at every step but one, where the
//! newest header (the head) is followed by the oldest. Any other step where
//! it does not rise (a fall, or the same number twice) means the log holds
//! blocks of more than one history: two nodes writing one journal (a double
//! mount), or headers of an older log left among the new one. Such a log
//! has no trustworthy head, so it is never replayed (a region of it could
//! write stale copies over newer home blocks); it is rewritten, and the
//! later passes check what the home blocks hold.

use rgfs::format::consts::{lh, MetaType};
use rgfs::format::meta::block_type;
use rgfs::format::{LogHeader, OnDisk};
use rgfs::journal::head::{for_each_block, header_at};
use rgfs::journal::{apply_replay, find_head, plan_replay, JournalMap};
use zerocopy::FromBytes;

use crate::check::Fsck;
use crate::report::Fix;
use crate::volume::Result;

/// A valid log header: where it is and what matters for the order rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Seen {
    lblock: u32,
    sequence: u64,
    unmount: bool,
}

/// What a scan of every block of a journal found.
#[derive(Default)]
struct Scan {
    /// Valid log headers, in journal order.
    headers: Vec<Seen>,
    /// Blocks typed as log headers that do not verify (or sit at the
    /// wrong position).
    damaged: Vec<u32>,
}

fn scan(fs: &Fsck, map: &JournalMap) -> Result<Scan> {
    let mut s = Scan::default();
    for_each_block(fs.vol.dev, &fs.vol.geom, map, |at, block| {
        match header_at(block, at) {
            Some(h) => s.headers.push(Seen {
                lblock: at,
                sequence: h.sequence,
                unmount: h.is_unmount(),
            }),
            None if block_type(block) == Some(MetaType::LogHeader) || looks_like_header(block) => {
                s.damaged.push(at)
            }
            None => {}
        }
        true
    })
    .map_err(|e| crate::volume::FsckError::Fatal(format!("journal inode {}: {e}", map.dinode)))?;
    Ok(s)
}

/// Where a journal's sequence numbers break the order rule.
#[derive(Debug, PartialEq, Eq)]
struct Disorder {
    /// Steps where the sequence does not rise, besides the wrap.
    count: usize,
    /// The first of them in journal order: (header before, header after).
    first: (Seen, Seen),
    /// Every header after which the sequence does not rise is an unmount
    /// header: whichever history's head the log ends, nothing in it is
    /// left to replay.
    heads_clean: bool,
}

/// Applies the order rule to the valid headers of a journal (in journal
/// order). The wrap is the step into the lowest sequence number (its first
/// occurrence); every other step that does not rise is out of order.
fn disorder(headers: &[Seen]) -> Option<Disorder> {
    let n = headers.len();
    if n < 2 {
        return None;
    }
    let lowest = headers.iter().map(|h| h.sequence).min()?;
    // Steps (i → i+1, round the circle) where the sequence does not rise.
    let falls: Vec<usize> = (0..n)
        .filter(|&i| headers[(i + 1) % n].sequence <= headers[i].sequence)
        .collect();
    // There is always a step into the lowest number (from its predecessor).
    let wrap = *falls
        .iter()
        .find(|&&i| headers[(i + 1) % n].sequence == lowest)?;
    let others: Vec<usize> = falls.iter().copied().filter(|&i| i != wrap).collect();
    let &first = others.first()?;
    Some(Disorder {
        count: others.len(),
        first: (headers[first], headers[(first + 1) % n]),
        heads_clean: falls.iter().all(|&i| headers[i].unmount),
    })
}

impl Disorder {
    fn message(&self) -> String {
        let (before, after) = self.first;
        let more = match self.count {
            1 => String::new(),
            2 => ", and at 1 more place".to_string(),
            n => format!(", and at {} more places", n - 1),
        };
        format!(
            "log sequence numbers out of order: journal block {} has sequence {} after {} at block {}{more} \
             (two writers, or headers of an older log)",
            after.lblock, after.sequence, before.sequence, before.lblock
        )
    }
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
            Ok(h) => h,
            Err(e) => {
                if fs.problem(&object, format!("{e}"), Fix::Risky) {
                    reinitialize(fs, jid, &map, 1)?;
                }
                continue;
            }
        };
        let s = scan(fs, &map)?;
        let disorder = disorder(&s.headers);
        // Whether the log holds nothing left to replay.
        let clean = match &disorder {
            Some(d) => d.heads_clean,
            None => head.is_clean(),
        };
        let fix = if clean { Fix::Safe } else { Fix::Risky };
        let mut rewrite = false;
        if let Some(d) = &disorder {
            // Checked before any replay: a log out of order is not replayed.
            if fs.problem(&object, d.message(), fix) {
                rewrite = true;
                if !head.is_clean() {
                    fs.report.note(
                        &object,
                        format!(
                            "not replayed: a log out of order has no trustworthy head (the one found, at journal \
                             block {}, is not an unmount header)",
                            head.lblock
                        ),
                    );
                }
            }
        } else if !head.is_clean() {
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
        if let Some(&first) = s.damaged.first() {
            let msg = format!(
                "{} damaged log headers (the first at journal block {first})",
                s.damaged.len()
            );
            if fs.problem(&object, msg, fix) {
                rewrite = true;
            }
        }
        fs.report.info(format!(
            "{object}: {} valid log headers, head at journal block {}",
            s.headers.len(),
            head.lblock
        ));
        if rewrite && fs.vol.writable {
            let highest = s.headers.iter().map(|h| h.sequence).max().unwrap_or(0);
            // Above every number the log held, unless that would overflow:
            // only the order inside this journal matters.
            let first = highest
                .checked_add(2 + map.jd_blocks() as u64)
                .map_or(1, |_| highest + 2);
            reinitialize(fs, jid, &map, first)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Headers at consecutive blocks with these sequences; `u` marks the
    /// unmount headers by index.
    fn log(seqs: &[u64], u: &[usize]) -> Vec<Seen> {
        seqs.iter()
            .enumerate()
            .map(|(i, &sequence)| Seen {
                lblock: i as u32 * 3,
                sequence,
                unmount: u.contains(&i),
            })
            .collect()
    }

    #[test]
    fn one_wrap_anywhere_is_in_order() {
        assert_eq!(disorder(&log(&[], &[])), None);
        assert_eq!(disorder(&log(&[7], &[])), None);
        assert_eq!(disorder(&log(&[1, 2, 3, 4], &[])), None);
        assert_eq!(disorder(&log(&[13, 14, 10, 11, 12], &[])), None);
        assert_eq!(disorder(&log(&[4, 1], &[])), None);
    }

    #[test]
    fn other_falls_and_repeats_are_out_of_order() {
        // A header of an older log in the middle.
        let d = disorder(&log(&[10, 11, 7, 13, 14, 5], &[4, 5])).unwrap();
        assert_eq!(d.count, 1);
        assert_eq!(
            (d.first.0.sequence, d.first.1.sequence, d.first.1.lblock),
            (11, 7, 6)
        );
        assert!(
            !d.heads_clean,
            "the sequence falls after 11, not an unmount header"
        );
        // The step into the lowest number is taken for the wrap, even when
        // that header is the stray one.
        let d = disorder(&log(&[10, 11, 5, 13, 14], &[])).unwrap();
        assert_eq!(
            (
                d.count,
                d.first.0.sequence,
                d.first.1.sequence,
                d.first.1.lblock
            ),
            (1, 14, 10, 0)
        );
        // The same number twice.
        let d = disorder(&log(&[1, 2, 2, 3], &[1, 3])).unwrap();
        assert_eq!((d.count, d.first.1.lblock), (1, 6));
        assert!(d.heads_clean);
        // Two wraps: the step into the lowest is the wrap, the other is not.
        let d = disorder(&log(&[5, 6, 7, 1, 2, 3, 8], &[])).unwrap();
        assert_eq!((d.count, d.first.0.sequence, d.first.1.sequence), (1, 8, 5));
        // Every step down but the wrap counts once.
        let d = disorder(&log(&[9, 8, 7, 6], &[0, 1, 2, 3])).unwrap();
        assert_eq!(d.count, 2);
        assert!(d.heads_clean);
    }
}
