//! The journal WRITE side: log commits in the GFS2 log format, the AIL
//! (active items list: committed blocks not yet written home), write-back
//! and tail advance. `docs/journal.md` gives the numbered write path and
//! the argument for each crash point.
//!
//! A commit ([`LogWriter::commit`]) is:
//! 1. revoke descriptor (+ continuation blocks) for blocks freed or given up;
//! 2. metadata descriptors, each followed by the copies it lists;
//! 3. device flush — the data written in place by the operations of this
//!    batch (ordered mode) and the log blocks above become durable;
//! 4. the log header (sequence + 1, tail = oldest log position still needed);
//! 5. device flush if the caller needs durability now (fsync), else the
//!    header becomes durable with the next flush.
//!
//! Invariants:
//! - `sequence` strictly increases with every header written;
//! - log blocks are only written in `[next, durable_tail)`: space before the
//!   tail of the last *durable* header is never overwritten, so a crash
//!   always finds an intact region `[tail, head)` to replay;
//! - at most one header is not yet durable (every commit flushes before its
//!   header, which makes the previous header durable);
//! - a block is in the AIL iff its newest committed copy is in the log and
//!   may not yet be at home; the AIL holds that copy (a snapshot), so the
//!   home write-back never writes uncommitted bytes;
//! - the tail written in a header is never past the commit position of an
//!   AIL entry.

use std::collections::HashMap;
use std::sync::Arc;

use rgfs_block::BlockDevice;

use crate::error::Result;
use crate::format::consts::{lh, MetaType, GFS2_MAGIC};
use crate::format::log::{metadata_per_descriptor, revoke_blocks, revokes_per_block, write_be64s, LOG_DESCRIPTOR_SIZE};
use crate::format::meta::init_block;
use crate::format::{DescriptorKind, Geometry, LogDescriptor, LogHeader, OnDisk, StatfsChange, Timestamp};

use super::{Head, JournalMap};

/// A committed block whose home copy may be stale.
#[derive(Clone, Debug)]
pub struct AilEntry {
    /// Journal block where the commit that logged it starts.
    pub commit_start: u32,
    /// The committed bytes.
    pub data: Arc<Vec<u8>>,
}

/// What the caller hands to a commit.
#[derive(Default)]
pub struct Batch {
    /// Metadata blocks to log: (home block, content).
    pub blocks: Vec<(u64, Arc<Vec<u8>>)>,
    /// Blocks to revoke (freed, or given up with their glock).
    pub revokes: Vec<u64>,
}

/// Counters for tests and the benchmark log.
#[derive(Clone, Copy, Debug, Default)]
pub struct LogStats {
    pub commits: u64,
    pub logged_blocks: u64,
    pub checkpoints: u64,
    pub flushes: u64,
}

/// The log writer of one journal.
pub struct LogWriter {
    geom: Geometry,
    map: JournalMap,
    jid: u32,
    /// Next journal block to write.
    next: u32,
    /// Sequence of the next header.
    sequence: u64,
    /// Tail in the last header written (may not be durable yet).
    written_tail: u32,
    /// Tail of the last durable header: log space before it is reusable.
    durable_tail: u32,
    /// Whether the last header written is durable.
    header_durable: bool,
    /// Sequence of the last durable header.
    durable_sequence: u64,
    ail: HashMap<u64, AilEntry>,
    /// Blocks revoked whose revoke may still be needed (the revoke lies in
    /// the active region); kept so the AIL stays exact.
    pub statfs_addr: u64,
    pub quota_addr: u64,
    pub stats: LogStats,
}

impl LogWriter {
    /// Starts writing after `head`, which must be clean (replayed).
    pub fn new(geom: Geometry, map: JournalMap, jid: u32, head: Head, statfs_addr: u64, quota_addr: u64) -> LogWriter {
        assert!(head.is_clean(), "the journal must be replayed before writing");
        let next = map.next(head.lblock);
        LogWriter {
            geom,
            jid,
            next,
            sequence: head.header.sequence + 1,
            written_tail: next,
            durable_tail: next,
            header_durable: true,
            durable_sequence: head.header.sequence,
            map,
            ail: HashMap::new(),
            statfs_addr,
            quota_addr,
            stats: LogStats::default(),
        }
    }

    pub fn jd_blocks(&self) -> u32 {
        self.map.jd_blocks()
    }

    pub fn map(&self) -> &JournalMap {
        &self.map
    }

    /// The newest committed copy of `block` if it is in the AIL.
    pub fn ail_copy(&self, block: u64) -> Option<Arc<Vec<u8>>> {
        self.ail.get(&block).map(|e| e.data.clone())
    }

    pub fn ail_len(&self) -> usize {
        self.ail.len()
    }

    pub fn in_ail(&self, block: u64) -> bool {
        self.ail.contains_key(&block)
    }

    /// Sequence of the last durable header.
    pub fn durable_sequence(&self) -> u64 {
        self.durable_sequence
    }

    /// Sequence the next commit will get.
    pub fn next_sequence(&self) -> u64 {
        self.sequence
    }

    /// Journal blocks that may be written without overwriting the region a
    /// durable header still needs (one block is kept spare so `next` never
    /// catches up with the tail).
    fn free_blocks(&self) -> u32 {
        self.map.jd_blocks() - self.map.distance(self.durable_tail, self.next) - 1
    }

    /// Journal blocks a batch needs, header included.
    pub fn blocks_needed(&self, nblocks: usize, nrevokes: usize) -> u32 {
        let per = metadata_per_descriptor(self.geom.bsize) as usize;
        let meta = nblocks + nblocks.div_ceil(per);
        let rev = if nrevokes == 0 { 0 } else { revoke_blocks(self.geom.bsize, nrevokes as u32) as usize };
        (meta + rev + 1) as u32
    }

    /// The largest batch (in blocks) the caller should build: a quarter of
    /// the journal, so a checkpoint always makes room for it.
    pub fn max_batch_blocks(&self) -> usize {
        (self.map.jd_blocks() / 4) as usize
    }

    fn write_log_block(&mut self, dev: &dyn BlockDevice, block: &[u8]) -> Result<u32> {
        let at = self.next;
        dev.write_at(self.geom.byte_offset(self.map.block(at)), block)?;
        self.next = self.map.next(at);
        Ok(at)
    }

    fn flush(&mut self, dev: &dyn BlockDevice) -> Result<()> {
        dev.flush()?;
        self.mark_durable();
        Ok(())
    }

    /// A device flush issued after header `sequence` was written has
    /// completed (fsync flushes without the core lock): that header is
    /// durable if it is still the last one written.
    pub fn flushed_after(&mut self, sequence: u64) {
        if self.sequence.checked_sub(1) == Some(sequence) {
            self.mark_durable();
        }
    }

    /// Sequence of the last header written (durable or not).
    pub fn last_header(&self) -> u64 {
        self.sequence.saturating_sub(1)
    }

    fn mark_durable(&mut self) {
        self.stats.flushes += 1;
        if !self.header_durable {
            self.header_durable = true;
            self.durable_tail = self.written_tail;
            self.durable_sequence = self.sequence - 1;
        }
    }

    /// The tail for a header written now: the oldest commit start among
    /// AIL entries, or `at` (the header's own position) if the AIL is empty.
    fn current_tail(&self, at: u32) -> u32 {
        let base = self.written_tail;
        self.ail
            .values()
            .map(|e| e.commit_start)
            .min_by_key(|&p| self.map.distance(base, p))
            .unwrap_or(at)
    }

    fn write_header(&mut self, dev: &dyn BlockDevice, flags: u32, local: StatfsChange) -> Result<()> {
        let at = self.next;
        let tail = if flags & lh::UNMOUNT != 0 { at } else { self.current_tail(at) };
        let now = Timestamp::now();
        let h = LogHeader {
            jid: self.jid,
            sequence: self.sequence,
            flags,
            tail,
            blkno: at,
            nsec: now.nsec,
            sec: now.sec as u64,
            addr: self.map.block(at),
            jinode: self.map.dinode,
            statfs_addr: self.statfs_addr,
            quota_addr: self.quota_addr,
            local_total: local.total,
            local_free: local.free,
            local_dinodes: local.dinodes,
        };
        let mut block = vec![0u8; self.geom.bsize as usize];
        h.encode_into(&mut block);
        debug_assert!(LogHeader::decode(&block).is_ok());
        self.write_log_block(dev, &block)?;
        self.sequence += 1;
        self.written_tail = tail;
        self.header_durable = false;
        Ok(())
    }

    /// Commits a batch (steps 1–5 above). `sync` makes the header durable
    /// before returning. An empty batch with `sync` only flushes.
    pub fn commit(&mut self, dev: &dyn BlockDevice, batch: Batch, local: StatfsChange, sync: bool) -> Result<()> {
        if batch.blocks.is_empty() && batch.revokes.is_empty() {
            if sync {
                self.flush(dev)?;
            }
            return Ok(());
        }
        let need = self.blocks_needed(batch.blocks.len(), batch.revokes.len());
        assert!(need < self.map.jd_blocks() / 2, "batch of {need} blocks is too large for the journal");
        // Revoked blocks are freed: never write their stale copies home.
        for b in &batch.revokes {
            self.ail.remove(b);
        }
        if need > self.free_blocks() {
            self.checkpoint(dev, local)?;
        }
        // One of: still not enough room means the header carrying the new
        // tail is not durable yet; the checkpoint flushed it.
        assert!(need <= self.free_blocks(), "no room after checkpoint");

        let bsize = self.geom.bsize as usize;
        let start = self.next;
        let mut block = vec![0u8; bsize];
        // 1. revokes
        if !batch.revokes.is_empty() {
            let (first, per) = revokes_per_block(self.geom.bsize);
            let n = batch.revokes.len();
            init_block(&mut block, MetaType::LogDescriptor);
            LogDescriptor {
                kind: DescriptorKind::Revoke,
                length: revoke_blocks(self.geom.bsize, n as u32),
                data1: n as u32,
                data2: 0,
            }
            .encode_into(&mut block);
            let in_first = n.min(first as usize);
            write_be64s(&mut block, LOG_DESCRIPTOR_SIZE, &batch.revokes[..in_first]);
            self.write_log_block(dev, &block)?;
            let mut rest = &batch.revokes[in_first..];
            while !rest.is_empty() {
                let k = rest.len().min(per as usize);
                init_block(&mut block, MetaType::LogBlock);
                write_be64s(&mut block, crate::format::META_HEADER_SIZE, &rest[..k]);
                self.write_log_block(dev, &block)?;
                rest = &rest[k..];
            }
        }
        // 2. metadata descriptors and copies
        let per = metadata_per_descriptor(self.geom.bsize) as usize;
        for chunk in batch.blocks.chunks(per) {
            init_block(&mut block, MetaType::LogDescriptor);
            LogDescriptor {
                kind: DescriptorKind::Metadata,
                length: chunk.len() as u32 + 1,
                data1: chunk.len() as u32,
                data2: 0,
            }
            .encode_into(&mut block);
            let targets: Vec<u64> = chunk.iter().map(|(b, _)| *b).collect();
            write_be64s(&mut block, LOG_DESCRIPTOR_SIZE, &targets);
            self.write_log_block(dev, &block)?;
            // Copies go in runs of consecutive journal blocks.
            let mut i = 0;
            while i < chunk.len() {
                let (dev_block, run) = self.map.run(self.next, (chunk.len() - i) as u32);
                let mut buf = Vec::with_capacity(run as usize * bsize);
                for (home, data) in &chunk[i..i + run as usize] {
                    // Replay requires the magic on metadata copies.
                    assert_eq!(&data[..4], &GFS2_MAGIC.to_be_bytes(), "logging non-metadata block {home}");
                    buf.extend_from_slice(data);
                }
                dev.write_at(self.geom.byte_offset(dev_block), &buf)?;
                for _ in 0..run {
                    self.next = self.map.next(self.next);
                }
                i += run as usize;
            }
        }
        // 3. data and log blocks durable before the header
        self.flush(dev)?;
        for (home, data) in batch.blocks {
            self.ail.insert(home, AilEntry { commit_start: start, data });
        }
        self.stats.logged_blocks += need as u64;
        // 4. the header
        self.write_header(dev, lh::FLUSH_NORMAL, local)?;
        self.stats.commits += 1;
        // 5. durable now if asked
        if sync {
            self.flush(dev)?;
        }
        Ok(())
    }

    /// Writes every AIL block home, flushes, and writes a header whose tail
    /// is its own position (nothing left to replay), flushed.
    pub fn checkpoint(&mut self, dev: &dyn BlockDevice, local: StatfsChange) -> Result<()> {
        self.write_back(dev, None)?;
        self.write_header(dev, lh::FLUSH_NORMAL, local)?;
        self.flush(dev)?;
        self.stats.checkpoints += 1;
        Ok(())
    }

    /// Writes AIL blocks home (all, or those for which `select` is true),
    /// flushes, and drops them from the AIL. Returns the blocks written.
    pub fn write_back(&mut self, dev: &dyn BlockDevice, select: Option<&dyn Fn(u64) -> bool>) -> Result<Vec<u64>> {
        let mut blocks: Vec<u64> = self.ail.keys().copied().filter(|&b| select.is_none_or(|f| f(b))).collect();
        if blocks.is_empty() {
            return Ok(blocks);
        }
        blocks.sort_unstable();
        // Coalesce consecutive home blocks into one write.
        let bsize = self.geom.bsize as usize;
        let mut i = 0;
        while i < blocks.len() {
            let mut j = i + 1;
            while j < blocks.len() && blocks[j] == blocks[j - 1] + 1 && j - i < 256 {
                j += 1;
            }
            let mut buf = Vec::with_capacity((j - i) * bsize);
            for b in &blocks[i..j] {
                buf.extend_from_slice(&self.ail[b].data);
            }
            dev.write_at(self.geom.byte_offset(blocks[i]), &buf)?;
            i = j;
        }
        self.flush(dev)?;
        for b in &blocks {
            self.ail.remove(b);
        }
        Ok(blocks)
    }

    /// Clean unmount: everything home, then an UNMOUNT header, flushed.
    pub fn shutdown(&mut self, dev: &dyn BlockDevice) -> Result<()> {
        self.write_back(dev, None)?;
        self.write_header(dev, lh::UNMOUNT | lh::FLUSH_SHUTDOWN, StatfsChange::default())?;
        self.flush(dev)
    }
}

#[cfg(test)]
mod tests {
    //! Round trips through the existing replay code: what the writer logs,
    //! replay puts home; what it revokes, replay leaves alone; crashes after
    //! each step replay to either the old or the new state.
    use super::*;
    use crate::format::consts::lh;
    use crate::journal::{apply_replay, find_head, plan_replay};
    use proptest::prelude::*;
    use rgfs_block::MemDevice;
    use std::collections::BTreeMap;

    const BSIZE: u32 = 512;
    const JD: u32 = 64;
    const JSTART: u64 = 100;
    const FS_BLOCKS: u64 = 400;

    fn geom() -> Geometry {
        Geometry::new(BSIZE).unwrap()
    }

    fn fresh(dev: &MemDevice) -> LogWriter {
        let map = JournalMap::contiguous(99, JSTART, JD);
        // A fresh journal as mkfs writes it.
        let mut block = vec![0u8; BSIZE as usize];
        for l in 0..JD {
            LogHeader { sequence: 50 + l as u64, flags: lh::UNMOUNT, blkno: l, tail: l, addr: JSTART + l as u64, jinode: 99, ..Default::default() }
                .encode_into(&mut block);
            dev.write_at((JSTART + l as u64) * BSIZE as u64, &block).unwrap();
        }
        let head = find_head(dev, &geom(), &map).unwrap();
        LogWriter::new(geom(), map, 0, head, 0, 0)
    }

    fn meta(tag: u8) -> Arc<Vec<u8>> {
        let mut b = vec![0u8; BSIZE as usize];
        init_block(&mut b, MetaType::Indirect);
        b[200] = tag;
        Arc::new(b)
    }

    fn replay(dev: &MemDevice) {
        let map = JournalMap::contiguous(99, JSTART, JD);
        let head = find_head(dev, &geom(), &map).unwrap();
        let plan = plan_replay(dev, &geom(), &map, head, FS_BLOCKS).unwrap();
        apply_replay(dev, &geom(), &map, &plan, 0).unwrap();
    }

    fn home(dev: &MemDevice, b: u64) -> u8 {
        let mut buf = vec![0u8; BSIZE as usize];
        dev.read_at(b * BSIZE as u64, &mut buf).unwrap();
        buf[200]
    }

    #[derive(Clone, Debug)]
    enum Step {
        Commit(Vec<(u64, u8)>, Vec<u64>, bool),
        Checkpoint,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            5 => (prop::collection::vec((200u64..210, 1u8..255), 0..12), prop::collection::vec(200u64..210, 0..3), any::<bool>())
                .prop_map(|(b, r, s)| Step::Commit(b, r, s)),
            1 => Just(Step::Checkpoint),
        ]
    }

    proptest! {
        /// After any sequence of commits (wrapping the journal many times),
        /// replaying a copy of the device taken right after a synced commit
        /// yields exactly the committed state of every block.
        #[test]
        fn replay_restores_every_synced_commit(steps in prop::collection::vec(step(), 1..60)) {
            let dev = MemDevice::new((FS_BLOCKS * BSIZE as u64) as usize);
            let mut w = fresh(&dev);
            let mut state: BTreeMap<u64, u8> = BTreeMap::new();
            for s in steps {
                match s {
                    Step::Commit(blocks, revokes, sync) => {
                        let mut batch = Batch::default();
                        let mut seen = std::collections::BTreeSet::new();
                        for &r in &revokes {
                            // A revoked block is freed: its content no longer matters
                            // to the model, except that replay must not restore a copy.
                            state.insert(r, 0);
                            // Freed blocks read back as whatever is home; we
                            // write home zeroes as a data write would.
                            let mut z = vec![0u8; BSIZE as usize];
                            z[200] = 0;
                            dev.write_at(r * BSIZE as u64, &z).unwrap();
                            batch.revokes.push(r);
                            seen.insert(r);
                        }
                        for (b, tag) in blocks {
                            if seen.insert(b) {
                                batch.blocks.push((b, meta(tag)));
                                state.insert(b, tag);
                            }
                        }
                        w.commit(&dev, batch, StatfsChange::default(), sync).unwrap();
                        if !sync {
                            continue;
                        }
                        // Crash now: replay a copy.
                        let copy = MemDevice::from_bytes(dev.snapshot());
                        replay(&copy);
                        for (&b, &tag) in &state {
                            prop_assert_eq!(home(&copy, b), tag, "block {} after replay", b);
                        }
                    }
                    Step::Checkpoint => w.checkpoint(&dev, StatfsChange::default()).unwrap(),
                }
            }
            w.shutdown(&dev).unwrap();
            let map = JournalMap::contiguous(99, JSTART, JD);
            prop_assert!(find_head(&dev, &geom(), &map).unwrap().is_clean());
            for (&b, &tag) in &state {
                prop_assert_eq!(home(&dev, b), tag);
            }
        }
    }
}
