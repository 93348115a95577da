//! Inodes: the dinode in memory, the block map (metadata tree) with
//! allocation, stuffing and unstuffing, file data I/O, truncate, and the
//! unlink → UNLINKED → free life cycle.
//!
//! Invariants:
//! - `Inode::di` is the decoded content of the dinode buffer; every change
//!   goes through `write_dinode`, which re-encodes it into the (journaled)
//!   buffer; the payload after byte 232 is edited in the buffer directly;
//! - `di.blocks` counts the dinode, every indirect block, every data block
//!   (hash-table JD blocks and leaves for directories) and EA blocks;
//! - a tree of height h maps logical blocks `0 .. diptrs * inptrs^(h-1)`;
//!   height 0 means the content is stuffed in the dinode block;
//! - data blocks of regular files are written to the device directly
//!   (ordered mode: before the commit of the metadata pointing to them).
//!   Directory data (hash-table) blocks are metadata (JD header, journaled).

use crate::core::FsCore;
use crate::error::{corrupt, errno, AtBlock, Result};
use crate::format::bitmap::BlockState;
use crate::format::consts::{dif, s_if, MetaType};
use crate::format::meta::{init_block, pointer_at, set_pointer};
use crate::format::{Dinode, OnDisk, Timestamp, DINODE_SIZE, META_HEADER_SIZE};

/// An inode in memory.
#[derive(Clone, Debug)]
pub struct Inode {
    pub di: Dinode,
    /// References the kernel holds (FUSE lookup count).
    pub nlookup: u64,
    /// Open file handles.
    pub open: u32,
    /// The glock was given up: `di` must be re-read before use.
    pub stale: bool,
}

/// A read resolved to device ranges.
#[derive(Debug)]
pub struct ReadPlan {
    pub len: usize,
    /// Content of a stuffed inode.
    pub stuffed: Option<Vec<u8>>,
    /// (offset in the result, device byte offset, length); gaps are holes.
    pub runs: Vec<(usize, u64, usize)>,
}

impl ReadPlan {
    pub fn execute(self, dev: &dyn rgfs_block::BlockDevice) -> Result<Vec<u8>> {
        if let Some(s) = self.stuffed {
            return Ok(s);
        }
        let mut out = vec![0u8; self.len];
        for (at, dev_off, n) in self.runs {
            dev.read_at(dev_off, &mut out[at..at + n])?;
        }
        Ok(out)
    }
}

/// A write's deferred data transfers: (device byte offset, range of the
/// caller's buffer), each one contiguous device write.
pub type DataRuns = Vec<(u64, std::ops::Range<usize>)>;

/// Writes deferred data runs; the first failure, as text (the caller ends
/// the in-flight section with it).
pub fn write_runs(dev: &dyn rgfs_block::BlockDevice, data: &[u8], runs: &[(u64, std::ops::Range<usize>)]) -> Option<String> {
    runs.iter().find_map(|(off, range)| dev.write_at(*off, &data[range.clone()]).err()).map(|e| e.to_string())
}

/// Data writes running without the core lock. A commit waits for them
/// (ordered mode: data reaches the device before the metadata pointing to
/// it is committed); a failed one makes the next commit withdraw.
#[derive(Debug, Default)]
pub struct Inflight {
    count: parking_lot::Mutex<usize>,
    idle: parking_lot::Condvar,
    failed: parking_lot::Mutex<Option<String>>,
}

impl Inflight {
    pub fn begin(&self) {
        *self.count.lock() += 1;
    }

    pub fn end(&self, error: Option<String>) {
        if let Some(e) = error {
            self.failed.lock().get_or_insert(e);
        }
        let mut c = self.count.lock();
        *c -= 1;
        if *c == 0 {
            self.idle.notify_all();
        }
    }

    /// Waits until no data write is in flight (bounded: writers never wait
    /// for the core lock while counted).
    pub fn wait_idle(&self) {
        let mut c = self.count.lock();
        while *c > 0 {
            self.idle.wait(&mut c);
        }
    }

    pub fn failure(&self) -> Option<String> {
        self.failed.lock().clone()
    }
}

/// Steps of a long truncate: blocks freed per step, so one step's
/// transaction stays small whatever the file size.
const TRUNCATE_STEP_BLOCKS: u64 = 16 * 1024;

impl FsCore {
    /// The inode at `addr`, loaded and verified on first use.
    pub fn inode(&mut self, addr: u64) -> Result<&mut Inode> {
        let stale = self.inodes.get(&addr).map(|i| i.stale);
        if stale != Some(false) {
            let buf = self.read_meta(addr, &[MetaType::Dinode], addr)?;
            let di = Dinode::decode(&buf).at_block(addr)?;
            di.check_addr(addr).at_block(addr)?;
            di.check_geometry(&self.geom).at_block(addr)?;
            if !self.alloc.rgrps.is_empty()
                && self.alloc.state(addr).is_none_or(|s| s != BlockState::Dinode && s != BlockState::Unlinked)
            {
                return corrupt(format!("inode {addr}"), "bitmap does not mark the block as a dinode");
            }
            // A stale inode (its glock was given up) keeps the kernel's references.
            let (nlookup, open) = self.inodes.get(&addr).map_or((0, 0), |i| (i.nlookup, i.open));
            self.inodes.insert(addr, Inode { di, nlookup, open, stale: false });
        }
        Ok(self.inodes.get_mut(&addr).expect("loaded"))
    }

    /// Writes the in-memory dinode into its buffer (journaled).
    pub fn write_dinode(&mut self, addr: u64) -> Result<()> {
        self.read_meta(addr, &[MetaType::Dinode], addr)?;
        let di = self.inodes.get(&addr).expect("inode loaded").di.clone();
        di.encode_into(&mut self.cache.modify(addr)[..DINODE_SIZE]);
        Ok(())
    }

    /// Applies `f` to the dinode and writes it back.
    pub fn update_dinode(&mut self, addr: u64, f: impl FnOnce(&mut Dinode)) -> Result<()> {
        f(&mut self.inode(addr)?.di);
        self.write_dinode(addr)
    }

    /// Logical blocks a tree of `height` can map.
    fn tree_capacity(&self, height: u16) -> u64 {
        if height == 0 {
            return 0;
        }
        (self.geom.diptrs as u64).saturating_mul((self.geom.inptrs as u64).saturating_pow(height as u32 - 1))
    }

    /// Smallest height mapping logical block `lblock`.
    fn height_for_lblock(&self, lblock: u64) -> u16 {
        let mut h = 1;
        while self.tree_capacity(h) <= lblock {
            h += 1;
        }
        h
    }

    /// The block holding logical block `lblock` of a non-stuffed inode, or
    /// `None` for a hole.
    pub fn bmap(&mut self, addr: u64, lblock: u64) -> Result<Option<u64>> {
        let height = self.inode(addr)?.di.height;
        if height == 0 || lblock >= self.tree_capacity(height) {
            return Ok(None);
        }
        let path = self.geom.tree_path(lblock, height).expect("inside capacity");
        let mut node = addr;
        let mut off = DINODE_SIZE;
        for (level, &idx) in path.levels().iter().enumerate() {
            let buf = self.read_meta(node, &[if node == addr { MetaType::Dinode } else { MetaType::Indirect }], addr)?;
            let p = pointer_at(&buf[off..], idx as usize);
            if p == 0 {
                return Ok(None);
            }
            if level + 1 == path.levels().len() {
                if p >= self.fs_blocks {
                    return corrupt(format!("inode {addr}"), format!("data pointer {p} beyond the filesystem"));
                }
                return Ok(Some(p));
            }
            node = p;
            off = META_HEADER_SIZE;
        }
        unreachable!("height >= 1")
    }

    /// Like [`bmap`](Self::bmap) but allocates what is missing: the tree
    /// grows in height as needed and holes get a new block. `jd` says the
    /// new data block is directory metadata (initialised with a JD header
    /// and journaled); otherwise it is file data the caller writes in full.
    /// Returns (block, newly allocated).
    pub fn bmap_alloc(&mut self, addr: u64, lblock: u64, jd: bool) -> Result<(u64, bool)> {
        let height = self.inode(addr)?.di.height;
        assert!(height > 0, "bmap_alloc on a stuffed inode");
        let need = self.height_for_lblock(lblock);
        if need > height {
            self.grow_height(addr, need)?;
        }
        let height = self.inode(addr)?.di.height;
        let path = self.geom.tree_path(lblock, height).expect("inside capacity");
        let levels = path.levels().to_vec();
        let mut node = addr;
        let mut off = DINODE_SIZE;
        for (level, &idx) in levels.iter().enumerate() {
            let ty = if node == addr { MetaType::Dinode } else { MetaType::Indirect };
            let buf = self.read_meta(node, &[ty], addr)?;
            let p = pointer_at(&buf[off..], idx as usize);
            let last = level + 1 == levels.len();
            if p != 0 {
                if last {
                    return Ok((p, false));
                }
                node = p;
                off = META_HEADER_SIZE;
                continue;
            }
            let goal = self.inode(addr)?.di.goal_data.max(addr);
            let nb = self.alloc_block(goal + 1, BlockState::Used)?;
            set_pointer(&mut self.cache.modify(node)[off..], idx as usize, nb);
            self.inode(addr)?.di.blocks += 1;
            if !last {
                let mut b = vec![0u8; self.geom.bsize as usize];
                init_block(&mut b, MetaType::Indirect);
                self.cache.create(nb, b, addr);
                self.update_dinode(addr, |d| d.goal_meta = nb)?;
                node = nb;
                off = META_HEADER_SIZE;
            } else {
                if jd {
                    let mut b = vec![0u8; self.geom.bsize as usize];
                    init_block(&mut b, MetaType::Jdata);
                    self.cache.create(nb, b, addr);
                }
                self.update_dinode(addr, |d| {
                    d.goal_data = nb;
                    d.goal_meta = nb;
                })?;
                return Ok((nb, true));
            }
        }
        unreachable!("height >= 1")
    }

    /// Grows the tree to `height`: each new level is an indirect block
    /// taking over the dinode's pointers (which all map the low blocks).
    fn grow_height(&mut self, addr: u64, height: u16) -> Result<()> {
        let bsize = self.geom.bsize as usize;
        while self.inode(addr)?.di.height < height {
            let dbuf = self.read_meta(addr, &[MetaType::Dinode], addr)?;
            let top = dbuf[DINODE_SIZE..].to_vec();
            let any = top.chunks_exact(8).any(|c| c != [0u8; 8]);
            if any {
                let nb = self.alloc_block(addr + 1, BlockState::Used)?;
                let mut b = vec![0u8; bsize];
                init_block(&mut b, MetaType::Indirect);
                b[META_HEADER_SIZE..META_HEADER_SIZE + top.len()].copy_from_slice(&top);
                self.cache.create(nb, b, addr);
                let d = self.cache.modify(addr);
                d[DINODE_SIZE..].fill(0);
                set_pointer(&mut d[DINODE_SIZE..], 0, nb);
                self.inode(addr)?.di.blocks += 1;
            }
            self.update_dinode(addr, |d| d.height += 1)?;
        }
        Ok(())
    }

    /// Moves stuffed content to a block: height 0 → 1.
    pub fn unstuff(&mut self, addr: u64) -> Result<()> {
        let di = self.inode(addr)?.di.clone();
        if di.height != 0 {
            return Ok(());
        }
        let bsize = self.geom.bsize as usize;
        let dbuf = self.read_meta(addr, &[MetaType::Dinode], addr)?;
        let is_dir = di.is_dir();
        let content_len = if is_dir { di.size as usize } else { (di.size as usize).min(bsize - DINODE_SIZE) };
        let content = dbuf[DINODE_SIZE..DINODE_SIZE + content_len].to_vec();
        if content_len == 0 && !is_dir {
            // Nothing to move: just switch to a tree.
            self.cache.modify(addr)[DINODE_SIZE..].fill(0);
            return self.update_dinode(addr, |d| d.height = 1);
        }
        let nb = self.alloc_block(addr + 1, BlockState::Used)?;
        if is_dir {
            let mut b = vec![0u8; bsize];
            init_block(&mut b, MetaType::Jdata);
            b[META_HEADER_SIZE..META_HEADER_SIZE + content.len()].copy_from_slice(&content);
            self.cache.create(nb, b, addr);
        } else {
            let mut b = vec![0u8; bsize];
            b[..content.len()].copy_from_slice(&content);
            self.write_data_block(nb, &b)?;
        }
        let d = self.cache.modify(addr);
        d[DINODE_SIZE..].fill(0);
        set_pointer(&mut d[DINODE_SIZE..], 0, nb);
        self.update_dinode(addr, |d| {
            d.height = 1;
            d.blocks += 1;
            d.goal_data = nb;
            d.goal_meta = nb;
        })
    }

    /// Writes a file data block in place (ordered mode: the next commit's
    /// flush makes it durable before the metadata pointing to it).
    pub fn write_data_block(&mut self, block: u64, data: &[u8]) -> Result<()> {
        Ok(self.dev.write_at(self.geom.byte_offset(block), data)?)
    }

    /// Reads `len` bytes at `offset` of a regular file or symlink
    /// (clipped to the size).
    pub fn read_data(&mut self, addr: u64, offset: u64, len: usize) -> Result<Vec<u8>> {
        let plan = self.read_plan(addr, offset, len)?;
        plan.execute(&*self.dev)
    }

    /// Where the bytes of a read are: the device transfers can then run
    /// without the core lock (see `glock::Fs::read`).
    pub fn read_plan(&mut self, addr: u64, offset: u64, len: usize) -> Result<ReadPlan> {
        self.inflight.wait_idle();
        let di = self.inode(addr)?.di.clone();
        if offset >= di.size {
            return Ok(ReadPlan { len: 0, stuffed: None, runs: Vec::new() });
        }
        let len = len.min((di.size - offset) as usize);
        if di.height == 0 {
            let buf = self.read_meta(addr, &[MetaType::Dinode], addr)?;
            let start = DINODE_SIZE + offset as usize;
            return Ok(ReadPlan { len, stuffed: Some(buf[start..start + len].to_vec()), runs: Vec::new() });
        }
        let bsize = self.bsize();
        let mut runs = Vec::new();
        let mut done = 0usize;
        while done < len {
            let pos = offset + done as u64;
            let lblock = pos / bsize;
            let in_block = (pos % bsize) as usize;
            // Gather a run of consecutive blocks for one device read.
            let first = self.bmap(addr, lblock)?;
            let mut run_blocks = 1u64;
            let want_blocks = ((in_block + len - done) as u64).div_ceil(bsize);
            if let Some(p) = first {
                while run_blocks < want_blocks && run_blocks < 256 {
                    match self.bmap(addr, lblock + run_blocks)? {
                        Some(q) if q == p + run_blocks => run_blocks += 1,
                        _ => break,
                    }
                }
            }
            let bytes = ((run_blocks * bsize) as usize - in_block).min(len - done);
            if let Some(p) = first {
                runs.push((done, self.geom.byte_offset(p) + in_block as u64, bytes));
            }
            done += bytes;
        }
        Ok(ReadPlan { len, stuffed: None, runs })
    }

    /// Writes `data` at `offset` of a regular file, allocating blocks and
    /// growing the size. The caller updates times and commits.
    pub fn write_data(&mut self, addr: u64, offset: u64, data: &[u8]) -> Result<()> {
        self.write_data_deferred(addr, offset, data, None)
    }

    /// Like [`write_data`](Self::write_data), but whole-block runs are not
    /// written: they are appended to `defer` as (device offset, range of
    /// `data`) for the caller to write without the core lock, inside an
    /// in-flight section (so no commit passes them: ordered mode).
    pub fn write_data_deferred(
        &mut self,
        addr: u64,
        offset: u64,
        data: &[u8],
        mut defer: Option<&mut DataRuns>,
    ) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let end = offset.checked_add(data.len() as u64).ok_or(crate::Error::Errno(libc::EFBIG))?;
        let max = self.geom.heightsize[self.geom.max_height as usize - 1];
        if end > max {
            return errno(libc::EFBIG);
        }
        let di = self.inode(addr)?.di.clone();
        if di.height == 0 && end <= self.geom.max_stuffed() {
            self.read_meta(addr, &[MetaType::Dinode], addr)?;
            let b = self.cache.modify(addr);
            let start = DINODE_SIZE + offset as usize;
            b[start..start + data.len()].copy_from_slice(data);
            if end > di.size {
                self.update_dinode(addr, |d| d.size = end)?;
            }
            return Ok(());
        }
        if di.height == 0 {
            self.alloc_step(data, &mut defer, |fs| fs.unstuff(addr))?;
        }
        let bsize = self.bsize();
        let mut done = 0usize;
        let size = self.inode(addr)?.di.size;
        while done < data.len() {
            let pos = offset + done as u64;
            let lblock = pos / bsize;
            let in_block = (pos % bsize) as usize;
            let n = (bsize as usize - in_block).min(data.len() - done);
            let (blk, new) = self.alloc_step(data, &mut defer, |fs| fs.bmap_alloc(addr, lblock, false))?;
            if in_block == 0 && n == bsize as usize {
                // Whole block: coalesce with following whole blocks that map
                // contiguously (one device write).
                let mut run = vec![(blk, done)];
                let mut d2 = done + n;
                while d2 + bsize as usize <= data.len() && run.len() < 256 {
                    let lb = (offset + d2 as u64) / bsize;
                    // Ends the run at ENOSPC instead of failing: the next
                    // block's own step retries (after writing these runs).
                    let Ok((b2, _)) = self.bmap_alloc(addr, lb, false) else { break };
                    if b2 != run.last().expect("non-empty").0 + 1 {
                        break;
                    }
                    run.push((b2, d2));
                    d2 += bsize as usize;
                }
                let bytes = d2 - done;
                match defer.as_deref_mut() {
                    Some(v) => v.push((self.geom.byte_offset(blk), done..done + bytes)),
                    None => self.dev.write_at(self.geom.byte_offset(blk), &data[done..done + bytes])?,
                }
                done += bytes;
                continue;
            }
            // Partial block: read-modify-write (zeros for a new block or
            // the part beyond the old size).
            let mut b = vec![0u8; bsize as usize];
            let block_start = lblock * bsize;
            if !new && block_start < size {
                self.dev.read_at(self.geom.byte_offset(blk), &mut b)?;
                let valid = (size - block_start).min(bsize) as usize;
                b[valid..].fill(0);
            }
            b[in_block..in_block + n].copy_from_slice(&data[done..done + n]);
            self.write_data_block(blk, &b)?;
            done += n;
        }
        if end > size {
            self.update_dinode(addr, |d| d.size = end)?;
        }
        Ok(())
    }

    /// Runs an allocating step of a write. When the allocator is out of
    /// space but frees wait for a durable commit, the commit must not log
    /// metadata pointing at blocks whose deferred data is unwritten (ordered
    /// mode): the runs deferred so far are written here first, under the
    /// lock, then the commit makes the frees reusable and the step runs
    /// again (bmap_alloc and unstuff resume where they stopped).
    fn alloc_step<T>(
        &mut self,
        data: &[u8],
        defer: &mut Option<&mut DataRuns>,
        mut step: impl FnMut(&mut FsCore) -> Result<T>,
    ) -> Result<T> {
        match step(self) {
            Err(crate::Error::Errno(libc::ENOSPC)) if self.alloc.has_pending_frees() => {
                if let Some(runs) = defer.as_deref_mut() {
                    for (off, range) in runs.drain(..) {
                        self.dev.write_at(off, &data[range])?;
                    }
                }
                self.commit_to_reuse_frees()?;
                step(self)
            }
            r => r,
        }
    }

    /// Allocates the blocks of `[offset, offset+len)` (fallocate without
    /// KEEP_SIZE grows the size). New blocks are zeroed on the device.
    pub fn fallocate(&mut self, addr: u64, offset: u64, len: u64, keep_size: bool) -> Result<()> {
        let end = offset.checked_add(len).ok_or(crate::Error::Errno(libc::EFBIG))?;
        if end > self.geom.heightsize[self.geom.max_height as usize - 1] {
            return errno(libc::EFBIG);
        }
        if self.inode(addr)?.di.height == 0 {
            if end <= self.geom.max_stuffed() {
                if !keep_size && end > self.inode(addr)?.di.size {
                    self.update_dinode(addr, |d| d.size = end)?;
                }
                return Ok(());
            }
            self.unstuff(addr)?;
        }
        let bsize = self.bsize();
        let zero = vec![0u8; bsize as usize];
        for lb in offset / bsize..end.div_ceil(bsize) {
            let (b, new) = self.bmap_alloc(addr, lb, false)?;
            if new {
                self.write_data_block(b, &zero)?;
            }
            if self.batch_is_large() {
                self.end_op()?;
            }
        }
        if !keep_size && end > self.inode(addr)?.di.size {
            self.update_dinode(addr, |d| d.size = end)?;
        }
        Ok(())
    }

    /// Changes the size of a regular file. Shrinking frees blocks in steps
    /// (each step a consistent, smaller file) and zeroes the tail of the new
    /// last block; growing just sets the size (a sparse extension).
    pub fn truncate(&mut self, addr: u64, new_size: u64) -> Result<()> {
        if new_size > self.geom.heightsize[self.geom.max_height as usize - 1] {
            return errno(libc::EFBIG);
        }
        let di = self.inode(addr)?.di.clone();
        let bsize = self.bsize();
        if new_size >= di.size {
            if new_size > di.size {
                if di.height == 0 && new_size > self.geom.max_stuffed() {
                    self.unstuff(addr)?;
                }
                self.update_dinode(addr, |d| d.size = new_size)?;
            }
            return Ok(());
        }
        if di.height == 0 {
            self.read_meta(addr, &[MetaType::Dinode], addr)?;
            self.cache.modify(addr)[DINODE_SIZE + new_size as usize..DINODE_SIZE + di.size as usize].fill(0);
            return self.update_dinode(addr, |d| d.size = new_size);
        }
        // Free from the end in steps.
        let keep = new_size.div_ceil(bsize);
        let end = di.size.div_ceil(bsize).max(keep).min(self.tree_capacity(di.height));
        let mut from = end;
        loop {
            from = from.saturating_sub(TRUNCATE_STEP_BLOCKS).max(keep);
            let step_size = (from * bsize).max(new_size);
            self.update_dinode(addr, |d| d.size = d.size.min(step_size).max(new_size))?;
            self.free_tree_from(addr, from)?;
            if from == keep {
                break;
            }
            if self.batch_is_large() {
                self.end_op()?;
            }
        }
        // Blocks beyond the old size (fallocated, KEEP_SIZE) are freed too.
        self.free_tree_from(addr, keep)?;
        // Zero the tail of the new last block so a later extension reads zeros.
        if !new_size.is_multiple_of(bsize) {
            if let Some(b) = self.bmap(addr, new_size / bsize)? {
                let mut buf = vec![0u8; bsize as usize];
                self.dev.read_at(self.geom.byte_offset(b), &mut buf)?;
                buf[(new_size % bsize) as usize..].fill(0);
                self.write_data_block(b, &buf)?;
            }
        }
        self.update_dinode(addr, |d| d.size = new_size)?;
        if new_size == 0 {
            // Back to a stuffed, empty inode, as the kernel does.
            self.read_meta(addr, &[MetaType::Dinode], addr)?;
            let has = self.cache.modify(addr)[DINODE_SIZE..].chunks_exact(8).any(|c| c != [0u8; 8]);
            if !has {
                self.update_dinode(addr, |d| {
                    d.height = 0;
                    d.goal_data = addr;
                    d.goal_meta = addr;
                })?;
            }
        }
        Ok(())
    }

    /// Frees every block mapping logical blocks `>= from`, and indirect
    /// blocks left empty.
    pub fn free_tree_from(&mut self, addr: u64, from: u64) -> Result<()> {
        let height = self.inode(addr)?.di.height;
        if height == 0 || from >= self.tree_capacity(height) {
            return Ok(());
        }
        let mut freed: Vec<u64> = Vec::new();
        self.trunc_node(addr, addr, DINODE_SIZE, 0, height, 0, from, &mut freed)?;
        // Free data/indirect blocks in runs.
        freed.sort_unstable();
        let n = freed.len() as u64;
        let mut i = 0;
        while i < freed.len() {
            let mut j = i + 1;
            while j < freed.len()
                && freed[j] == freed[j - 1] + 1
                && self.alloc.rgrp_of(freed[j]) == self.alloc.rgrp_of(freed[i])
            {
                j += 1;
            }
            self.free_blocks(freed[i], (j - i) as u32, false)?;
            i = j;
        }
        if n > 0 {
            self.update_dinode(addr, |d| d.blocks = d.blocks.saturating_sub(n))?;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn trunc_node(
        &mut self,
        addr: u64,
        node: u64,
        off: usize,
        level: usize,
        height: u16,
        base: u64,
        from: u64,
        freed: &mut Vec<u64>,
    ) -> Result<bool> {
        let per = self.geom.blocks_per_pointer(level, height);
        let ty = if node == addr { MetaType::Dinode } else { MetaType::Indirect };
        let buf = self.read_meta(node, &[ty], addr)?;
        let nptrs = (buf.len() - off) / 8;
        let last_level = level + 1 == height as usize;
        let mut any_left = false;
        let mut changes: Vec<usize> = Vec::new();
        for i in 0..nptrs {
            let p = pointer_at(&buf[off..], i);
            if p == 0 {
                continue;
            }
            if p >= self.fs_blocks {
                return corrupt(format!("inode {addr}"), format!("pointer {p} beyond the filesystem"));
            }
            let start = base + i as u64 * per;
            let end = start.saturating_add(per);
            if end <= from {
                any_left = true;
                continue;
            }
            if last_level {
                freed.push(p);
                changes.push(i);
                continue;
            }
            let child_from = from.max(start);
            let keeps = self.trunc_node(addr, p, META_HEADER_SIZE, level + 1, height, start, child_from, freed)?;
            if keeps {
                any_left = true;
            } else {
                freed.push(p);
                changes.push(i);
            }
        }
        if !changes.is_empty() && (node == addr || any_left) {
            // Clear the pointers (an indirect block that empties entirely is
            // freed by the caller instead).
            let b = self.cache.modify(node);
            for i in changes {
                set_pointer(&mut b[off..], i, 0);
            }
        }
        Ok(any_left)
    }

    /// Frees an inode whose link count is 0 and that nobody holds: all its
    /// blocks, its EA blocks, then the dinode itself.
    pub fn free_inode(&mut self, addr: u64) -> Result<()> {
        let di = self.inode(addr)?.di.clone();
        if di.is_exhash() {
            self.free_dir_blocks(addr)?;
        } else if di.height > 0 {
            self.truncate_all(addr)?;
        }
        self.free_xattrs(addr)?;
        self.inodes.remove(&addr);
        self.free_blocks(addr, 1, true)?;
        Ok(())
    }

    fn truncate_all(&mut self, addr: u64) -> Result<()> {
        // Keep the dinode's size consistent at every step.
        let size = self.inode(addr)?.di.size;
        if size > 0 && self.inode(addr)?.di.is_reg() {
            self.truncate(addr, 0)?;
        }
        self.free_tree_from(addr, 0)
    }

    /// Marks an inode unlinked (nlink reached 0 while still referenced).
    pub fn mark_unlinked(&mut self, addr: u64) -> Result<()> {
        if !self.alloc.set_state(addr, BlockState::Unlinked) {
            return corrupt(format!("inode {addr}"), "unlinking a block that is not allocated");
        }
        Ok(())
    }

    /// Frees inodes left UNLINKED (by a crash, or open at unmount).
    pub fn free_orphans(&mut self) -> Result<()> {
        let referenced: Vec<u64> = self
            .inodes
            .iter()
            .filter(|(_, i)| i.di.nlink == 0)
            .map(|(&a, _)| a)
            .collect();
        for addr in referenced {
            self.free_inode(addr)?;
            self.end_op()?;
        }
        for addr in self.alloc.unlinked() {
            self.free_inode(addr)?;
            self.end_op()?;
        }
        Ok(())
    }

    /// A new dinode: allocated near `goal`, initialised, counted.
    pub fn new_inode(&mut self, goal: u64, mode: u32, uid: u32, gid: u32, rdev: u32, flags: u32) -> Result<u64> {
        let addr = self.alloc_block(goal, BlockState::Dinode)?;
        let generation = self.alloc.next_generation(addr);
        let now = Timestamp::now();
        let is_dir = mode & s_if::FMT == s_if::DIR;
        let di = Dinode {
            num: crate::format::Inum::new(generation, addr),
            mode,
            uid,
            gid,
            nlink: if is_dir { 2 } else { 1 },
            size: 0,
            blocks: 1,
            atime: now,
            mtime: now,
            ctime: now,
            major: (rdev >> 8) & 0xfff,
            minor: (rdev & 0xff) | ((rdev >> 12) & 0xfff00),
            goal_meta: addr,
            goal_data: addr,
            generation,
            flags: flags | if is_dir { dif::JDATA } else { 0 },
            payload_format: if is_dir { crate::format::consts::FORMAT_DIRENT } else { 0 },
            height: 0,
            depth: 0,
            entries: 0,
            eattr: 0,
        };
        let mut b = vec![0u8; self.geom.bsize as usize];
        di.encode_into(&mut b);
        self.cache.forget(addr);
        self.cache.create(addr, b, addr);
        self.inodes.insert(addr, Inode { di, nlookup: 0, open: 0, stale: false });
        Ok(addr)
    }
}
