//! The filesystem core: the state one mounted node keeps, and the services
//! every layer above uses — verified metadata reads, block allocation,
//! transactions and log flushes, withdraw.
//!
//! The layers add their operations as `impl FsCore` blocks in their own
//! modules: `inode/` (dinodes, block maps, truncate), `dir/` (directories),
//! `xattr/` (extended attributes), `ops/` (POSIX semantics). `glock/` wraps
//! the core for locking and `fuse/` adapts it to the kernel.
//!
//! Invariants:
//! - the core is used by one thread at a time (the caller holds its mutex);
//!   an operation is a transaction: it runs `begin_op` ... `end_op` and the
//!   log commits only between operations, so every commit holds whole
//!   operations;
//! - every metadata block is read through `read_meta` (cache, then the
//!   journal's AIL copy, then the device with verification);
//! - once withdrawn (`withdrawn.is_some()`), nothing is written to the
//!   device again; every later operation fails with EIO;
//! - `local` holds this node's statfs deltas not yet folded into the master
//!   statfs file; the per-node statfs_change file and each log header carry
//!   the same values.

use std::collections::HashMap;
use std::sync::Arc;

use rgfs_block::BlockDevice;

use crate::alloc::Allocator;
use crate::cache::Cache;
use crate::error::{Error, Result};
use crate::format::bitmap::BlockState;
use crate::format::{Dinode, Geometry, MetaType, OnDisk, StatfsChange, Superblock, DINODE_SIZE};
use crate::inode::Inode;
use crate::journal::{Batch, LogWriter};

/// Options that change how the core behaves (parsed by `mount/`).
#[derive(Clone, Debug)]
pub struct CoreOptions {
    pub read_only: bool,
    /// Do not update atime at all.
    pub noatime: bool,
    /// `errors=panic`: abort the process instead of withdrawing.
    pub errors_panic: bool,
    /// Metadata buffers kept in memory.
    pub cache_buffers: usize,
}

impl Default for CoreOptions {
    fn default() -> Self {
        CoreOptions { read_only: false, noatime: false, errors_panic: false, cache_buffers: 65536 }
    }
}

/// System files this node uses.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemFiles {
    pub master: u64,
    pub root: u64,
    pub jindex: u64,
    pub rindex: u64,
    pub statfs: u64,
    pub per_node: u64,
    pub statfs_change: u64,
    pub quota_change: u64,
    pub journal: u64,
}

/// The state of one mounted filesystem on this node.
pub struct FsCore {
    pub dev: Arc<dyn BlockDevice>,
    pub geom: Geometry,
    pub sb: Superblock,
    /// One past the last block the filesystem uses (end of the last rgrp).
    pub fs_blocks: u64,
    pub cache: Cache,
    /// `None` when mounted read-only (the journal is not written).
    pub log: Option<LogWriter>,
    pub alloc: Allocator,
    pub inodes: HashMap<u64, Inode>,
    pub sys: SystemFiles,
    pub jid: u32,
    pub opts: CoreOptions,
    /// Revokes for the next commit.
    pub(crate) revokes: Vec<u64>,
    /// Statfs deltas not yet in the master statfs file.
    pub(crate) local: StatfsChange,
    pub(crate) withdrawn: Option<String>,
    /// Operations since the last log commit.
    pub(crate) ops_since_commit: u64,
    /// Set while an operation's data writes are deferred: no commit may
    /// happen until they are in flight (and then done).
    pub(crate) hold_commits: bool,
    /// Data writes in flight outside the core lock.
    pub inflight: Arc<crate::inode::Inflight>,
    /// Data reads in flight outside the core lock: blocks freed meanwhile
    /// (a concurrent truncate) are not handed out again until they are
    /// done, so a read never returns another file's new data.
    pub reads: Arc<crate::inode::Inflight>,
}

impl FsCore {
    pub fn bsize(&self) -> u64 {
        self.geom.bsize as u64
    }

    /// Stops all writing and records why. The kernel's GFS2 "withdraw":
    /// the node stops so that others (or the next mount) recover its
    /// journal, instead of writing more damage.
    pub fn withdraw(&mut self, why: &str) {
        if self.withdrawn.is_none() {
            tracing::error!("{}: jid={}: withdrawing: {why}", self.sb.locktable, self.jid);
            if self.opts.errors_panic {
                tracing::error!("errors=panic: aborting");
                std::process::abort();
            }
            self.withdrawn = Some(why.to_string());
        }
    }

    pub fn is_withdrawn(&self) -> bool {
        self.withdrawn.is_some()
    }

    /// Refuses to start a modifying operation on a withdrawn or read-only
    /// filesystem.
    pub fn check_writable(&self) -> Result<()> {
        if let Some(w) = &self.withdrawn {
            return Err(Error::Withdrawn(w.clone()));
        }
        if self.opts.read_only || self.log.is_none() {
            return Err(Error::Errno(libc::EROFS));
        }
        Ok(())
    }

    /// Checks the result of an operation: a fatal error withdraws the node.
    pub fn guard<T>(&mut self, r: Result<T>) -> Result<T> {
        if let Err(e) = &r {
            if e.is_fatal() && !matches!(e, Error::Withdrawn(_)) {
                self.withdraw(&e.to_string());
            }
        }
        r
    }

    /// Reads a metadata block of one of the types `ty`, for the glock
    /// object `owner`. Cache first, then the journal's committed copy,
    /// then the device (verified).
    pub fn read_meta(&mut self, block: u64, ty: &[MetaType], owner: u64) -> Result<Arc<Vec<u8>>> {
        if block >= self.fs_blocks || block <= self.geom.sb_addr() {
            return crate::error::corrupt(
                format!("inode {owner}"),
                format!("metadata pointer {block} outside the filesystem (1..{})", self.fs_blocks),
            );
        }
        if !self.cache.contains(block) {
            if let Some(copy) = self.log.as_ref().and_then(|l| l.ail_copy(block)) {
                self.cache.insert_clean(block, copy, owner);
            }
        }
        Ok(self.cache.read(&*self.dev, block, ty, owner)?.data.clone())
    }

    /// Allocates one block near `goal`. On ENOSPC with frees pending a
    /// durable commit, commits and retries once.
    pub fn alloc_block(&mut self, goal: u64, state: BlockState) -> Result<u64> {
        Ok(self.alloc_extent(goal, 1, state)?.0)
    }

    /// Allocates up to `max_len` contiguous blocks near `goal`.
    pub fn alloc_extent(&mut self, goal: u64, max_len: u32, state: BlockState) -> Result<(u64, u32)> {
        if let Some(r) = self.alloc.alloc(goal, max_len, state) {
            self.account_alloc(r.1, state);
            return Ok(r);
        }
        // Under `hold_commits` a commit here would log metadata pointing at
        // blocks whose deferred data is not written yet: the caller
        // (`write_data_deferred`) writes its runs first, then calls
        // `commit_to_reuse_frees` and retries.
        if self.alloc.has_pending_frees() && !self.hold_commits {
            // A synced commit makes the frees durable and releases them.
            self.commit(true)?;
            if let Some(r) = self.alloc.alloc(goal, max_len, state) {
                self.account_alloc(r.1, state);
                return Ok(r);
            }
        }
        Err(Error::Errno(libc::ENOSPC))
    }

    /// Makes pending frees durable and reusable (a synced commit releases
    /// them), also under `hold_commits`. Called with no data write
    /// outstanding that the current batch's metadata points to.
    pub(crate) fn commit_to_reuse_frees(&mut self) -> Result<()> {
        let held = std::mem::replace(&mut self.hold_commits, false);
        let r = self.commit(true);
        self.hold_commits = held;
        r
    }

    /// Lets the frees made durable be reused, once no read that planned
    /// before them is still reading their blocks (reads plan under the core
    /// lock, which the caller holds, so the wait is bounded).
    pub(crate) fn release_frees(&mut self) {
        if self.alloc.has_pending_frees() {
            self.reads.wait_idle();
            self.alloc.release_frees();
        }
    }

    fn account_alloc(&mut self, n: u32, state: BlockState) {
        self.local.free -= n as i64;
        if state == BlockState::Dinode {
            self.local.dinodes += 1;
        }
    }

    /// Frees blocks (data or metadata). Metadata blocks that may have a
    /// copy in the log are revoked and dropped from the cache.
    pub fn free_blocks(&mut self, block: u64, len: u32, was_dinode: bool) -> Result<()> {
        if !self.alloc.free(block, len) {
            return crate::error::corrupt(
                format!("blocks {block}..{}", block + len as u64),
                "freeing blocks that are not allocated",
            );
        }
        self.local.free += len as i64;
        if was_dinode {
            self.local.dinodes -= 1;
        }
        for b in block..block + len as u64 {
            self.forget_meta(b);
        }
        Ok(())
    }

    /// A metadata block leaves the filesystem: revoke its logged copy (so
    /// replay cannot write it over the block's next contents) and drop it.
    pub fn forget_meta(&mut self, block: u64) {
        if self.log.as_ref().is_some_and(|l| l.in_ail(block)) {
            self.revokes.push(block);
        }
        self.cache.forget(block);
    }

    /// Copies the allocator's changes into the rgrp buffers (journaled).
    pub fn sync_rgrps(&mut self) -> Result<()> {
        let geom = self.geom.clone();
        for d in self.alloc.take_dirty() {
            let r = self.alloc.rgrps[d.rgrp].clone();
            for &i in &d.blocks {
                let block = r.ri.addr + i as u64;
                let ty = if i == 0 { MetaType::Rgrp } else { MetaType::RgrpBitmap };
                self.read_meta(block, &[ty], r.ri.addr)?;
                let (off, span) = geom.bitmap_block_span(i, r.ri.bitbytes);
                let buf = self.cache.modify(block);
                if i == 0 {
                    r.header.encode_into(&mut buf[..]);
                }
                let n = (span.end - span.start) as usize;
                buf[off..off + n].copy_from_slice(&r.bitmap[span.start as usize..span.end as usize]);
            }
        }
        Ok(())
    }

    /// Writes the node's statfs deltas into its statfs_change file.
    fn sync_local_statfs(&mut self) -> Result<()> {
        let addr = self.sys.statfs_change;
        let cur = self.read_meta(addr, &[MetaType::Dinode], addr)?;
        let old = StatfsChange::decode(&cur[DINODE_SIZE..]).map_err(|e| Error::Format { block: addr, source: e })?;
        if old != self.local {
            let local = self.local;
            local.encode_into(&mut self.cache.modify(addr)[DINODE_SIZE..]);
        }
        Ok(())
    }

    /// Folds the local statfs deltas into the master statfs file (both
    /// journaled in the same commit), as GFS2's statfs sync does.
    pub fn fold_statfs(&mut self) -> Result<()> {
        if self.local == StatfsChange::default() {
            return Ok(());
        }
        let addr = self.sys.statfs;
        let cur = self.read_meta(addr, &[MetaType::Dinode], addr)?;
        let mut master = StatfsChange::decode(&cur[DINODE_SIZE..]).map_err(|e| Error::Format { block: addr, source: e })?;
        master.total += self.local.total;
        master.free += self.local.free;
        master.dinodes += self.local.dinodes;
        master.encode_into(&mut self.cache.modify(addr)[DINODE_SIZE..]);
        self.local = StatfsChange::default();
        self.sync_local_statfs()
    }

    /// Marks the end of an operation; commits if the batch is large.
    pub fn end_op(&mut self) -> Result<()> {
        self.ops_since_commit += 1;
        self.sync_rgrps()?;
        let limit = self.log.as_ref().map_or(usize::MAX, |l| l.max_batch_blocks() / 2);
        if !self.hold_commits && self.cache.dirty_count() + self.revokes.len() >= limit {
            self.commit(false)?;
        }
        Ok(())
    }

    /// Whether the current batch is near the commit limit (long operations
    /// such as truncating a huge file commit between their steps).
    pub fn batch_is_large(&self) -> bool {
        let limit = self.log.as_ref().map_or(usize::MAX, |l| l.max_batch_blocks() / 2);
        self.cache.dirty_count() + self.revokes.len() >= limit
    }

    /// Commits everything dirtied so far to the log. `sync` = durable on
    /// return (fsync). A no-op on a read-only or withdrawn node.
    pub fn commit(&mut self, sync: bool) -> Result<()> {
        if self.withdrawn.is_some() {
            return Err(Error::Withdrawn(self.withdrawn.clone().unwrap_or_default()));
        }
        if self.log.is_none() {
            return Ok(());
        }
        // Ordered mode: data written outside the lock lands first.
        self.inflight.wait_idle();
        if let Some(e) = self.inflight.failure() {
            self.withdraw(&format!("data write failed: {e}"));
            return Err(Error::Withdrawn(e));
        }
        self.sync_rgrps()?;
        if self.cache.dirty_count() > 0 || !self.revokes.is_empty() {
            self.sync_local_statfs()?;
        }
        let blocks = self.cache.take_dirty();
        for (b, _) in &blocks {
            self.cache.pin(*b);
        }
        let revokes = std::mem::take(&mut self.revokes);
        let local = self.local;
        let r = self
            .log
            .as_mut()
            .expect("checked")
            .commit(&*self.dev, Batch { blocks, revokes }, local, sync);
        // Errors from the log writer are I/O errors or invariant breaks.
        let r = self.guard(r);
        r?;
        self.ops_since_commit = 0;
        self.unpin_written();
        // Frees may be reused once every header written is durable: only a
        // synced commit guarantees that (a plain commit's header is not).
        if sync {
            self.release_frees();
        }
        Ok(())
    }

    /// Writes every committed block home and empties the log's active
    /// region (also folds statfs first).
    pub fn checkpoint(&mut self) -> Result<()> {
        if self.log.is_none() || self.withdrawn.is_some() {
            return Ok(());
        }
        self.fold_statfs()?;
        self.commit(false)?;
        let local = self.local;
        let r = self.log.as_mut().expect("checked").checkpoint(&*self.dev, local);
        self.guard(r)?;
        self.unpin_written();
        self.release_frees();
        Ok(())
    }

    /// Clean unmount: statfs folded, everything committed and written home,
    /// an UNMOUNT header written.
    pub fn shutdown(&mut self) -> Result<()> {
        if self.log.is_none() || self.withdrawn.is_some() {
            return Ok(());
        }
        self.free_orphans()?;
        self.fold_statfs()?;
        self.commit(false)?;
        let r = self.log.as_mut().expect("checked").shutdown(&*self.dev);
        self.guard(r)
    }

    /// Unpins buffers the log wrote home (no longer in its AIL).
    fn unpin_written(&mut self) {
        if let Some(log) = &self.log {
            self.cache.retain_pins(|b| log.in_ail(b));
        }
    }

    /// The dinode of `addr` decoded (loading it if needed).
    pub fn dinode(&mut self, addr: u64) -> Result<&Dinode> {
        Ok(&self.inode(addr)?.di)
    }
}

