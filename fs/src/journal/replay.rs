//! Journal replay: which logged blocks go home, and writing them there.
//!
//! Planning reads the active region `[head.lh_tail, head)` in two passes,
//! as GFS2 recovery does: pass 0 records, for every revoked block, the
//! position of its latest revoke; pass 1 lists every logged copy (metadata
//! or journaled data) that is not cancelled by a revoke later in the log.
//! Applying writes those copies home in log order (so the newest copy of a
//! block wins), flushes, and only then writes a clean header after the old
//! head, so a crash at any point leaves a journal that replays again to the
//! same result.
//!
//! Invariants checked while planning (any violation makes the journal
//! corrupt, and nothing is written):
//! - every block of the region is a valid log header or a valid descriptor
//!   whose chunk lies inside the region;
//! - revoke continuation blocks carry the LB header;
//! - every target block lies inside the filesystem and outside the journal's
//!   own region of the device;
//! - every logged metadata copy starts with the GFS2 magic.

use std::collections::HashMap;

use rgfs_block::BlockDevice;

use crate::error::{corrupt, AtBlock, Result};
use crate::format::consts::{lh, MetaType, GFS2_MAGIC};
use crate::format::log::{read_be64s, revokes_per_block, LOG_DESCRIPTOR_SIZE};
use crate::format::meta::{payload_of, META_HEADER_SIZE};
use crate::format::{DescriptorKind, Geometry, LogDescriptor, LogHeader, OnDisk};

use super::head::{header_at, Head};
use super::map::JournalMap;

/// One logged block to copy home.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplayWrite {
    /// Home location of the block.
    pub target: u64,
    /// Journal block holding the copy.
    pub lblock: u32,
    /// Journaled data whose leading magic was zeroed when logged.
    pub escaped: bool,
    /// Metadata copies must carry the GFS2 magic.
    pub metadata: bool,
}

/// What a replay will do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplayPlan {
    pub head: Head,
    /// Copies to write home, in log order.
    pub writes: Vec<ReplayWrite>,
    /// Logged copies cancelled by a later revoke.
    pub revoked: usize,
    /// Revokes found in the region.
    pub revokes: usize,
}

fn bad(map: &JournalMap, lblock: u32, why: impl Into<String>) -> crate::error::Error {
    crate::error::Error::Corrupt {
        what: format!("journal inode {} block {}", map.dinode, lblock),
        why: why.into(),
    }
}

/// A descriptor and the journal block it sits at.
struct Chunk {
    lblock: u32,
    desc: LogDescriptor,
    /// Metadata/jdata: home addresses (and escape flags). Revoke: the
    /// revoked blocks with the journal block holding each revoke.
    entries: Vec<(u64, u32, bool)>,
}

/// Reads the active region and plans the replay. A clean journal yields an
/// empty plan. `fs_blocks` bounds target addresses.
pub fn plan_replay(
    dev: &dyn BlockDevice,
    geom: &Geometry,
    map: &JournalMap,
    head: Head,
    fs_blocks: u64,
) -> Result<ReplayPlan> {
    let mut plan = ReplayPlan {
        head,
        writes: Vec::new(),
        revoked: 0,
        revokes: 0,
    };
    if head.is_clean() {
        return Ok(plan);
    }
    let tail = head.header.tail;
    if tail >= map.jd_blocks() {
        return Err(bad(map, head.lblock, format!("lh_tail {tail} beyond the journal")));
    }
    let chunks = read_region(dev, geom, map, tail, head.lblock, fs_blocks)?;

    // Pass 0: the latest revoke of each block, as a distance from the tail.
    let mut revoked_at: HashMap<u64, u32> = HashMap::new();
    for chunk in chunks.iter().filter(|c| c.desc.kind == DescriptorKind::Revoke) {
        for &(block, lblock, _) in &chunk.entries {
            revoked_at.insert(block, map.distance(tail, lblock));
            plan.revokes += 1;
        }
    }
    // Pass 1: logged copies not revoked later in the log.
    for chunk in chunks.iter().filter(|c| c.desc.kind != DescriptorKind::Revoke) {
        for (i, &(target, _, escaped)) in chunk.entries.iter().enumerate() {
            let lblock = (chunk.lblock + 1 + i as u32) % map.jd_blocks();
            let pos = map.distance(tail, lblock);
            if revoked_at.get(&target).is_some_and(|&r| pos < r) {
                plan.revoked += 1;
                continue;
            }
            plan.writes.push(ReplayWrite {
                target,
                lblock,
                escaped,
                metadata: chunk.desc.kind == DescriptorKind::Metadata,
            });
        }
    }
    Ok(plan)
}

/// Walks `[tail, head)` and decodes every descriptor in it.
fn read_region(
    dev: &dyn BlockDevice,
    geom: &Geometry,
    map: &JournalMap,
    tail: u32,
    head: u32,
    fs_blocks: u64,
) -> Result<Vec<Chunk>> {
    let bsize = geom.bsize as usize;
    let mut block = vec![0u8; bsize];
    let read = |lblock: u32, buf: &mut [u8]| -> Result<()> {
        Ok(dev.read_at(geom.byte_offset(map.block(lblock)), buf)?)
    };
    let mut chunks = Vec::new();
    let mut at = tail;
    while at != head {
        read(at, &mut block)?;
        if header_at(&block, at).is_some() {
            at = map.next(at);
            continue;
        }
        let desc = LogDescriptor::decode(&block)
            .at_block(map.block(at))
            .and_then(|d| d.check_geometry(geom.bsize).at_block(map.block(at)).map(|_| d))
            .map_err(|e| bad(map, at, format!("neither a log header nor a descriptor: {e}")))?;
        if desc.length > map.distance(at, head) {
            return Err(bad(map, at, format!("descriptor of {} blocks runs past the head", desc.length)));
        }
        let n = desc.data1 as usize;
        let mut entries = Vec::with_capacity(n);
        match desc.kind {
            DescriptorKind::Metadata => {
                for target in read_be64s(&block, LOG_DESCRIPTOR_SIZE, n).at_block(map.block(at))? {
                    entries.push((target, at, false));
                }
            }
            DescriptorKind::Jdata => {
                let pairs = read_be64s(&block, LOG_DESCRIPTOR_SIZE, 2 * n).at_block(map.block(at))?;
                for pair in pairs.chunks_exact(2) {
                    entries.push((pair[0], at, pair[1] != 0));
                }
            }
            DescriptorKind::Revoke => {
                let (first, per_block) = revokes_per_block(geom.bsize);
                let in_first = n.min(first as usize);
                for b in read_be64s(&block, LOG_DESCRIPTOR_SIZE, in_first).at_block(map.block(at))? {
                    entries.push((b, at, false));
                }
                let mut lb = at;
                let mut cont = vec![0u8; bsize];
                while entries.len() < n {
                    lb = map.next(lb);
                    read(lb, &mut cont)?;
                    payload_of(&cont, MetaType::LogBlock)
                        .map_err(|e| bad(map, lb, format!("revoke continuation: {e}")))?;
                    let take = (n - entries.len()).min(per_block as usize);
                    for b in read_be64s(&cont, META_HEADER_SIZE, take).at_block(map.block(lb))? {
                        entries.push((b, lb, false));
                    }
                }
            }
        }
        for &(target, _, _) in &entries {
            if target >= fs_blocks || target == 0 {
                return Err(bad(map, at, format!("logged block {target} outside the filesystem")));
            }
            if desc.kind != DescriptorKind::Revoke && map.contains_device_block(target) {
                return Err(bad(map, at, format!("logged block {target} lies inside the journal")));
            }
        }
        chunks.push(Chunk {
            lblock: at,
            desc,
            entries,
        });
        for _ in 0..desc.length {
            at = map.next(at);
        }
    }
    Ok(chunks)
}

/// Writes the planned copies home, flushes, then marks the journal clean
/// with a header after the old head (sequence + 1, UNMOUNT | RECOVERY) and
/// flushes again. `jid` is recorded in the new header. A clean journal is
/// left untouched.
pub fn apply_replay(
    dev: &dyn BlockDevice,
    geom: &Geometry,
    map: &JournalMap,
    plan: &ReplayPlan,
    jid: u32,
) -> Result<()> {
    if plan.head.is_clean() {
        return Ok(());
    }
    let bsize = geom.bsize as usize;
    let mut block = vec![0u8; bsize];
    for w in &plan.writes {
        let from = map.block(w.lblock);
        dev.read_at(geom.byte_offset(from), &mut block)?;
        if w.escaped {
            block[..4].copy_from_slice(&GFS2_MAGIC.to_be_bytes());
        }
        if w.metadata && block[..4] != GFS2_MAGIC.to_be_bytes() {
            return corrupt(
                format!("journal inode {} block {}", map.dinode, w.lblock),
                format!("logged copy of block {} is not metadata", w.target),
            );
        }
        dev.write_at(geom.byte_offset(w.target), &block)?;
    }
    dev.flush()?;
    let lblock = map.next(plan.head.lblock);
    let old = plan.head.header;
    let now = crate::format::Timestamp::now();
    let clean = LogHeader {
        jid,
        sequence: old.sequence + 1,
        flags: lh::UNMOUNT | lh::RECOVERY,
        tail: lblock,
        blkno: lblock,
        nsec: now.nsec,
        sec: now.sec as u64,
        addr: map.block(lblock),
        jinode: map.dinode,
        statfs_addr: old.statfs_addr,
        quota_addr: old.quota_addr,
        local_total: 0,
        local_free: 0,
        local_dinodes: 0,
    };
    clean.encode_into(&mut block);
    dev.write_at(geom.byte_offset(map.block(lblock)), &block)?;
    dev.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    //! A model-based test of head finding and replay.
    //!
    //! Covers: commits of metadata and journaled data (with escaping),
    //! revokes (in the descriptor and in continuation blocks), the tail
    //! moving as committed blocks are written home, the log wrapping around
    //! the journal, uncommitted chunks after the head, and replay being
    //! idempotent when interrupted. Does not cover torn writes (the crash
    //! suite of the filesystem does).

    use super::*;
    use crate::format::log::write_be64s;
    use crate::format::meta::init_block;
    use crate::journal::find_head;
    use proptest::prelude::*;
    use rgfs_block::MemDevice;
    use std::collections::BTreeMap;

    const BSIZE: u32 = 512;
    const JD: u32 = 48;
    const JSTART: u64 = 100;
    const FS_BLOCKS: u64 = 400;
    /// Home blocks the test writes to (outside the journal).
    const TARGETS: std::ops::Range<u64> = 200..216;

    fn geom() -> Geometry {
        Geometry::new(BSIZE).unwrap()
    }

    fn meta_block(tag: u8) -> Vec<u8> {
        let mut b = vec![0u8; BSIZE as usize];
        init_block(&mut b, MetaType::Indirect);
        b[100] = tag;
        b[BSIZE as usize - 1] = tag;
        b
    }

    fn data_block(tag: u8, starts_with_magic: bool) -> Vec<u8> {
        let mut b = vec![tag; BSIZE as usize];
        if starts_with_magic {
            b[..4].copy_from_slice(&GFS2_MAGIC.to_be_bytes());
        }
        b
    }

    /// Home writes of one commit: (block, contents).
    type Writes = Vec<(u64, Vec<u8>)>;

    /// A minimal log writer for the test, independent of the filesystem's.
    struct TestLog {
        map: JournalMap,
        next: u32,
        tail: u32,
        seq: u64,
        /// Commits still in the active region: (first lblock, writes).
        active: Vec<(u32, Writes)>,
    }

    impl TestLog {
        fn write(&self, dev: &MemDevice, lblock: u32, block: &[u8]) {
            dev.write_at(self.map.block(lblock) * BSIZE as u64, block).unwrap();
        }

        fn header(&mut self, dev: &MemDevice, flags: u32) {
            let h = LogHeader {
                sequence: self.seq,
                flags,
                tail: self.tail,
                blkno: self.next,
                addr: self.map.block(self.next),
                jinode: self.map.dinode,
                ..Default::default()
            };
            let mut b = vec![0u8; BSIZE as usize];
            h.encode_into(&mut b);
            self.write(dev, self.next, &b);
            self.seq += 1;
            self.next = self.map.next(self.next);
        }

        /// Writes the oldest active commits home until `need` blocks fit.
        fn make_room(&mut self, dev: &MemDevice, home: &mut BTreeMap<u64, Vec<u8>>, need: u32) {
            while self.map.distance(self.tail, self.next) + need + 1 >= JD {
                let (_, writes) = self.active.remove(0);
                for (target, content) in writes {
                    dev.write_at(target * BSIZE as u64, &content).unwrap();
                    home.insert(target, content);
                }
                self.tail = self.active.first().map_or(self.next, |c| c.0);
            }
        }

        fn commit(&mut self, dev: &MemDevice, home: &mut BTreeMap<u64, Vec<u8>>, c: &Commit, write_header: bool) {
            let (first_cap, per) = revokes_per_block(BSIZE);
            let revoke_len = if c.revokes.is_empty() { 0 } else { crate::format::log::revoke_blocks(BSIZE, c.revokes.len() as u32) };
            let need = revoke_len + 1 + c.meta.len() as u32 + 1 + c.data.len() as u32 + 1;
            if !write_header {
                // Without a header the tail on disk cannot move: an
                // uncommitted chunk only goes where it overwrites nothing
                // the head still needs.
                if self.map.distance(self.tail, self.next) + need + 1 >= JD {
                    return;
                }
            } else {
                self.make_room(dev, home, need);
            }
            let start = self.next;
            let mut b = vec![0u8; BSIZE as usize];
            if !c.revokes.is_empty() {
                let d = LogDescriptor { kind: DescriptorKind::Revoke, length: revoke_len, data1: c.revokes.len() as u32, data2: 0 };
                d.encode_into(&mut b);
                b[LOG_DESCRIPTOR_SIZE..].fill(0);
                let (head, rest) = c.revokes.split_at(c.revokes.len().min(first_cap as usize));
                write_be64s(&mut b, LOG_DESCRIPTOR_SIZE, head);
                self.write(dev, self.next, &b);
                self.next = self.map.next(self.next);
                for part in rest.chunks(per as usize) {
                    init_block(&mut b, MetaType::LogBlock);
                    write_be64s(&mut b, META_HEADER_SIZE, part);
                    self.write(dev, self.next, &b);
                    self.next = self.map.next(self.next);
                }
            }
            let mut writes = Vec::new();
            let d = LogDescriptor { kind: DescriptorKind::Metadata, length: c.meta.len() as u32 + 1, data1: c.meta.len() as u32, data2: 0 };
            d.encode_into(&mut b);
            b[LOG_DESCRIPTOR_SIZE..].fill(0);
            let targets: Vec<u64> = c.meta.iter().map(|m| m.0).collect();
            write_be64s(&mut b, LOG_DESCRIPTOR_SIZE, &targets);
            self.write(dev, self.next, &b);
            self.next = self.map.next(self.next);
            for &(target, tag) in &c.meta {
                let content = meta_block(tag);
                self.write(dev, self.next, &content);
                self.next = self.map.next(self.next);
                writes.push((target, content));
            }
            let d = LogDescriptor { kind: DescriptorKind::Jdata, length: c.data.len() as u32 + 1, data1: c.data.len() as u32, data2: 0 };
            d.encode_into(&mut b);
            b[LOG_DESCRIPTOR_SIZE..].fill(0);
            let pairs: Vec<u64> = c.data.iter().flat_map(|&(t, _, magic)| [t, magic as u64]).collect();
            write_be64s(&mut b, LOG_DESCRIPTOR_SIZE, &pairs);
            self.write(dev, self.next, &b);
            self.next = self.map.next(self.next);
            for &(target, tag, magic) in &c.data {
                let content = data_block(tag, magic);
                let mut logged = content.clone();
                if magic {
                    logged[..4].fill(0);
                }
                self.write(dev, self.next, &logged);
                self.next = self.map.next(self.next);
                writes.push((target, content));
            }
            if write_header {
                self.header(dev, lh::FLUSH_NORMAL);
                self.active.push((start, writes));
            }
        }
    }

    #[derive(Clone, Debug)]
    struct Commit {
        revokes: Vec<u64>,
        meta: Vec<(u64, u8)>,
        data: Vec<(u64, u8, bool)>,
    }

    fn commit() -> impl Strategy<Value = Commit> {
        let target = TARGETS;
        (
            prop::collection::vec(target.clone(), 0..3),
            prop::collection::vec((target.clone(), any::<u8>()), 0..4),
            prop::collection::vec((target, any::<u8>(), any::<bool>()), 0..3),
        )
            .prop_map(|(revokes, meta, data)| Commit { revokes, meta, data })
    }

    /// What replay must leave at home: start from the written-back state;
    /// a logged copy in the active region lands unless a revoke of its block
    /// follows it in the region; later copies win.
    fn model(home: &BTreeMap<u64, Vec<u8>>, active: &[(Commit, Writes)]) -> BTreeMap<u64, Vec<u8>> {
        let mut events: Vec<(u64, Option<Vec<u8>>)> = Vec::new();
        for (c, writes) in active {
            for &r in &c.revokes {
                events.push((r, None));
            }
            for (t, content) in writes {
                events.push((*t, Some(content.clone())));
            }
        }
        let mut out = home.clone();
        for (i, (t, content)) in events.iter().enumerate() {
            let Some(content) = content else { continue };
            let revoked_later = events[i + 1..].iter().any(|(t2, c2)| t2 == t && c2.is_none());
            if !revoked_later {
                out.insert(*t, content.clone());
            }
        }
        out
    }

    fn run(commits: Vec<Commit>, uncommitted: Option<Commit>, interrupt_after: usize) -> Result<(), TestCaseError> {
        let dev = MemDevice::new((FS_BLOCKS * BSIZE as u64) as usize);
        let map = JournalMap::contiguous(99, JSTART, JD);
        // A fresh journal as mkfs writes it: every block a clean header.
        let mut log = TestLog { map: map.clone(), next: 0, tail: 0, seq: 7, active: Vec::new() };
        for _ in 0..JD {
            log.tail = log.next;
            log.header(&dev, lh::UNMOUNT);
        }
        // The head is the last block; the log continues after it.
        log.next = 0;
        log.tail = 0;
        let mut home = BTreeMap::new();
        let mut history: Vec<Commit> = Vec::new();
        for c in &commits {
            log.commit(&dev, &mut home, c, true);
            history.push(c.clone());
        }
        if let Some(c) = &uncommitted {
            log.commit(&dev, &mut home, c, false);
        }
        // Commits still active, paired with their content.
        let active_n = log.active.len();
        let active: Vec<(Commit, Writes)> = history[history.len() - active_n..]
            .iter().cloned().zip(log.active.iter().map(|a| a.1.clone())).collect();
        let expect = model(&home, &active);

        let g = geom();
        let head = find_head(&dev, &g, &map).unwrap();
        if commits.is_empty() {
            prop_assert!(head.is_clean());
        } else {
            prop_assert_eq!(head.header.sequence, log.seq - 1);
        }
        let plan = plan_replay(&dev, &g, &map, head, FS_BLOCKS).unwrap();
        // An interrupted replay: only some copies reach home.
        let partial = ReplayPlan { writes: plan.writes[..interrupt_after.min(plan.writes.len())].to_vec(), ..plan.clone() };
        for w in &partial.writes {
            let mut b = vec![0u8; BSIZE as usize];
            dev.read_at(map.block(w.lblock) * BSIZE as u64, &mut b).unwrap();
            if w.escaped { b[..4].copy_from_slice(&GFS2_MAGIC.to_be_bytes()); }
            dev.write_at(w.target * BSIZE as u64, &b).unwrap();
        }
        // Replaying again from scratch gives the full result.
        let head = find_head(&dev, &g, &map).unwrap();
        let plan = plan_replay(&dev, &g, &map, head, FS_BLOCKS).unwrap();
        apply_replay(&dev, &g, &map, &plan, 0).unwrap();
        for t in TARGETS {
            let mut b = vec![0u8; BSIZE as usize];
            dev.read_at(t * BSIZE as u64, &mut b).unwrap();
            let want = expect.get(&t).cloned().unwrap_or_else(|| vec![0u8; BSIZE as usize]);
            prop_assert!(b == want, "block {} differs after replay", t);
        }
        let head = find_head(&dev, &g, &map).unwrap();
        prop_assert!(head.is_clean());
        let again = plan_replay(&dev, &g, &map, head, FS_BLOCKS).unwrap();
        prop_assert!(again.writes.is_empty());
        Ok(())
    }

    proptest! {
        #[test]
        fn replay_matches_the_model(
            commits in prop::collection::vec(commit(), 0..25),
            uncommitted in prop::option::of(commit()),
            interrupt_after in 0usize..20,
        ) {
            run(commits, uncommitted, interrupt_after)?;
        }
    }

    #[test]
    fn many_revokes_use_continuation_blocks() {
        // 70 revokes need the descriptor (55 at 512 bytes) plus one LB block.
        let revokes: Vec<u64> = (0..70).map(|i| TARGETS.start + i % 16).collect();
        let c1 = Commit { revokes: vec![], meta: vec![(201, 1), (202, 2)], data: vec![] };
        let c2 = Commit { revokes, meta: vec![(203, 3)], data: vec![(204, 4, true)] };
        run(vec![c1, c2], None, 0).unwrap();
    }

    #[test]
    fn garbage_in_the_region_is_corruption_and_writes_nothing() {
        let dev = MemDevice::new((FS_BLOCKS * BSIZE as u64) as usize);
        let map = JournalMap::contiguous(99, JSTART, JD);
        let mut log = TestLog { map: map.clone(), next: 0, tail: 0, seq: 1, active: Vec::new() };
        let mut home = BTreeMap::new();
        log.commit(&dev, &mut home, &Commit { revokes: vec![], meta: vec![(201, 9)], data: vec![] }, true);
        // Overwrite the metadata descriptor with junk.
        dev.write_at(JSTART * BSIZE as u64, &[0xEE; 512]).unwrap();
        let before = dev.snapshot();
        let g = geom();
        let head = find_head(&dev, &g, &map).unwrap();
        assert!(!head.is_clean());
        let err = plan_replay(&dev, &g, &map, head, FS_BLOCKS).unwrap_err();
        assert!(err.to_string().contains("neither a log header nor a descriptor"), "{err}");
        assert_eq!(dev.snapshot(), before);
    }
}
