//! Glocks: the lock layer every access to an inode, a resource group or the
//! journal goes through (`docs/glocks.md` has the tables and lock order).
//!
//! - [`LockModule`]: what a lock manager offers (request/convert/unlock in
//!   DLM modes, blocking callbacks with the requested mode, 32-byte LVBs).
//!   [`NoLock`] is lock_nolock: every request is granted at once and no
//!   callback ever comes. The cluster issue adds a DLM-backed module.
//! - [`GlockTable`]: per lock name, the state this node holds, cached until
//!   a blocking callback asks for it back.
//! - [`Fs`]: the mounted filesystem: the core behind a mutex plus the
//!   glocks; its `demote` does what GFS2 does before giving a glock up (log
//!   flush, write back, revoke, invalidate our caches and the kernel's).
//!
//! Invariants:
//! - resource names are the kernel's: `"%8x%16x"` of type and number;
//! - a glock is held in a mode at least as strong as every access made
//!   under it; EX for any change;
//! - locks are taken in the global order: inodes by ascending number, then
//!   rgrps, then the journal (the core takes rgrps and journal itself);
//! - on demote from EX nothing of the object stays dirty or unrevoked in
//!   this node's journal; on demote to UN nothing of it stays cached here
//!   or in the kernel.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::core::FsCore;
use crate::error::{Error, Result};

/// Glock types (LM_TYPE_*).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u32)]
pub enum LockType {
    NonDisk = 1,
    Inode = 2,
    Rgrp = 3,
    Meta = 4,
    Iopen = 5,
    Flock = 6,
    Plock = 7,
    Quota = 8,
    Journal = 9,
}

/// Numbers of the NONDISK locks.
pub mod nondisk {
    pub const MOUNT: u64 = 0;
    pub const LIVE: u64 = 1;
    pub const FREEZE: u64 = 2;
    pub const RENAME: u64 = 3;
}

/// A lock resource: type and number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LockName {
    pub ty: LockType,
    pub number: u64,
}

impl LockName {
    pub fn inode(addr: u64) -> Self {
        LockName { ty: LockType::Inode, number: addr }
    }
    pub fn rgrp(addr: u64) -> Self {
        LockName { ty: LockType::Rgrp, number: addr }
    }
    pub fn journal(jid: u32) -> Self {
        LockName { ty: LockType::Journal, number: jid as u64 }
    }
}

impl fmt::Display for LockName {
    /// The DLM resource name, exactly as kernel GFS2 spells it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:8x}{:16x}", self.ty as u32, self.number)
    }
}

/// Glock states.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum GlockState {
    Unlocked,
    /// Deferred: shared among DF holders (direct I/O), incompatible with SH.
    Deferred,
    Shared,
    Exclusive,
}

/// DLM lock modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DlmMode {
    Nl,
    Cr,
    Cw,
    Pr,
    Pw,
    Ex,
}

impl GlockState {
    /// UN/SH/DF/EX → NL/PR/CW/EX, as lock_dlm maps them.
    pub fn dlm_mode(self) -> DlmMode {
        match self {
            GlockState::Unlocked => DlmMode::Nl,
            GlockState::Shared => DlmMode::Pr,
            GlockState::Deferred => DlmMode::Cw,
            GlockState::Exclusive => DlmMode::Ex,
        }
    }

    /// What a holder must demote to when another node requests `wanted`:
    /// EX → UN, CW → DF, PR → SH.
    pub fn demote_target(wanted: DlmMode) -> GlockState {
        match wanted {
            DlmMode::Ex | DlmMode::Pw => GlockState::Unlocked,
            DlmMode::Cw => GlockState::Deferred,
            DlmMode::Pr | DlmMode::Cr | DlmMode::Nl => GlockState::Shared,
        }
    }

    /// Whether holding `self` allows an access needing `want`.
    pub fn covers(self, want: GlockState) -> bool {
        match want {
            GlockState::Unlocked => true,
            GlockState::Shared => matches!(self, GlockState::Shared | GlockState::Exclusive),
            GlockState::Deferred => matches!(self, GlockState::Deferred | GlockState::Exclusive),
            GlockState::Exclusive => self == GlockState::Exclusive,
        }
    }
}

/// A lock value block.
pub type Lvb = [u8; 32];

/// Why a lock module refused.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("lock {0}: {1}")]
    Failed(String, String),
}

/// A blocking callback: another node wants `name` in `mode`.
pub type BlockingCallback = Arc<dyn Fn(LockName, DlmMode) + Send + Sync>;

/// What a lock manager must offer the filesystem.
pub trait LockModule: Send + Sync {
    /// "lock_nolock", "lock_dlm", ...
    fn proto_name(&self) -> &str;
    /// Requests `name` in `mode`, or converts a held lock to `mode`; waits
    /// until granted. With `lvb`, the value block is read on grant (and
    /// written on a down-conversion from EX).
    fn lock(&self, name: LockName, mode: DlmMode, lvb: &mut Lvb) -> std::result::Result<(), LockError>;
    /// Releases `name`, writing `lvb` back if given (when leaving EX).
    fn unlock(&self, name: LockName, lvb: Option<&Lvb>) -> std::result::Result<(), LockError>;
    /// Registers where blocking callbacks go.
    fn set_blocking_callback(&self, cb: BlockingCallback);
}

/// lock_nolock: a single node; everything is granted, nothing calls back.
#[derive(Debug, Default)]
pub struct NoLock;

impl LockModule for NoLock {
    fn proto_name(&self) -> &str {
        "lock_nolock"
    }
    fn lock(&self, _: LockName, _: DlmMode, _: &mut Lvb) -> std::result::Result<(), LockError> {
        Ok(())
    }
    fn unlock(&self, _: LockName, _: Option<&Lvb>) -> std::result::Result<(), LockError> {
        Ok(())
    }
    fn set_blocking_callback(&self, _: BlockingCallback) {}
}

/// One cached glock.
#[derive(Clone, Debug)]
pub struct Glock {
    pub state: GlockState,
    pub lvb: Lvb,
    /// Demotes done (statistics, tests).
    pub demotes: u64,
}

/// The glocks this node holds.
pub struct GlockTable {
    module: Arc<dyn LockModule>,
    held: Mutex<HashMap<LockName, Glock>>,
}

impl GlockTable {
    pub fn new(module: Arc<dyn LockModule>) -> Self {
        GlockTable { module, held: Mutex::new(HashMap::new()) }
    }

    pub fn module(&self) -> &Arc<dyn LockModule> {
        &self.module
    }

    /// Makes sure `name` is held at least in `want` (cached glocks are
    /// reused without asking the lock manager).
    pub fn acquire(&self, name: LockName, want: GlockState) -> Result<()> {
        let mut held = self.held.lock();
        let cur = held.get(&name).map(|g| g.state).unwrap_or(GlockState::Unlocked);
        if cur.covers(want) {
            return Ok(());
        }
        let mut lvb = held.get(&name).map(|g| g.lvb).unwrap_or([0; 32]);
        self.module
            .lock(name, want.dlm_mode(), &mut lvb)
            .map_err(|e| Error::Corrupt { what: format!("glock {name}"), why: e.to_string() })?;
        let g = held.entry(name).or_insert(Glock { state: want, lvb, demotes: 0 });
        g.state = want;
        g.lvb = lvb;
        Ok(())
    }

    pub fn state(&self, name: LockName) -> GlockState {
        self.held.lock().get(&name).map(|g| g.state).unwrap_or(GlockState::Unlocked)
    }

    pub fn demotes(&self, name: LockName) -> u64 {
        self.held.lock().get(&name).map(|g| g.demotes).unwrap_or(0)
    }

    /// Tells the lock manager this node now holds `name` in `to`.
    fn set_state(&self, name: LockName, to: GlockState) -> Result<()> {
        let mut held = self.held.lock();
        let Some(g) = held.get_mut(&name) else { return Ok(()) };
        let r = if to == GlockState::Unlocked {
            self.module.unlock(name, (g.state == GlockState::Exclusive).then_some(&g.lvb))
        } else {
            let mut lvb = g.lvb;
            self.module.lock(name, to.dlm_mode(), &mut lvb)
        };
        r.map_err(|e| Error::Corrupt { what: format!("glock {name}"), why: e.to_string() })?;
        g.state = to;
        g.demotes += 1;
        Ok(())
    }
}

/// Invalidation of the kernel's caches (the FUSE adapter implements it with
/// fuser notifications; inode numbers here are the kernel's).
pub trait KernelCache: Send + Sync {
    fn inval_inode(&self, ino: u64);
    fn inval_entry(&self, parent: u64, name: &[u8]);
}

/// A mounted filesystem: the core behind its mutex, and the glocks.
pub struct Fs {
    pub core: Mutex<FsCore>,
    pub glocks: GlockTable,
    pub kernel: Mutex<Option<Arc<dyn KernelCache>>>,
    root: u64,
}

impl Fs {
    /// Wraps a mounted core. Takes the node's long-held locks: the journal
    /// (EX for the whole mount) and every rgrp (EX, cached: lock_nolock
    /// never takes them back; the cluster issue replaces this by per-rgrp
    /// locking in the allocator).
    pub fn new(core: FsCore, module: Arc<dyn LockModule>) -> Result<Arc<Fs>> {
        let glocks = GlockTable::new(module.clone());
        glocks.acquire(LockName { ty: LockType::NonDisk, number: nondisk::MOUNT }, GlockState::Exclusive)?;
        glocks.acquire(LockName::journal(core.jid), GlockState::Exclusive)?;
        glocks.acquire(LockName { ty: LockType::NonDisk, number: nondisk::LIVE }, GlockState::Shared)?;
        for r in &core.alloc.rgrps {
            glocks.acquire(LockName::rgrp(r.ri.addr), GlockState::Exclusive)?;
        }
        let root = core.sys.root;
        let fs = Arc::new(Fs { core: Mutex::new(core), glocks, kernel: Mutex::new(None), root });
        let weak = Arc::downgrade(&fs);
        module.set_blocking_callback(Arc::new(move |name, mode| {
            if let Some(fs) = weak.upgrade() {
                if let Err(e) = fs.demote(name, GlockState::demote_target(mode)) {
                    tracing::error!("demote of glock {name} failed: {e}");
                }
            }
        }));
        Ok(fs)
    }

    pub fn root(&self) -> u64 {
        self.root
    }

    /// Locks the inodes an operation touches (ascending numbers: the lock
    /// order), then runs `f` on the core.
    pub fn with_inodes<T>(&self, inodes: &[u64], mode: GlockState, f: impl FnOnce(&mut FsCore) -> Result<T>) -> Result<T> {
        let mut sorted: Vec<u64> = inodes.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        for &i in &sorted {
            self.glocks.acquire(LockName::inode(i), mode)?;
        }
        let mut core = self.core.lock();
        f(&mut core)
    }

    /// Reads file data: the block map under the glock and core lock, the
    /// device transfers outside the core lock (reads run in parallel).
    pub fn read(&self, addr: u64, offset: u64, size: usize) -> Result<Vec<u8>> {
        // The transfers run without the core lock, inside a read section:
        // blocks a concurrent truncate frees stay unallocated until it ends.
        let (plan, dev, reads) = self.with_inodes(&[addr], GlockState::Exclusive, |c| {
            let plan = c.read_planned(addr, offset, size)?;
            c.reads.begin();
            Ok((plan, c.dev.clone(), c.reads.clone()))
        })?;
        let r = plan.execute(&*dev);
        // End the section before taking the core lock again (a committer
        // may be waiting for it while holding that lock).
        reads.end(None);
        r.inspect_err(|e| self.core.lock().withdraw(&e.to_string()))
    }

    /// fsync/fsyncdir: commits under the locks, then flushes the device
    /// without the core lock (other operations go on meanwhile).
    pub fn sync(&self, inodes: &[u64]) -> Result<()> {
        let Some(ticket) = self.with_inodes(inodes, GlockState::Exclusive, |c| c.sync_start())? else {
            return Ok(());
        };
        let flushed = ticket.dev.flush().map_err(Error::from);
        self.core.lock().sync_finish(ticket, flushed)
    }

    /// Writes file data: allocation and metadata under the locks, whole-
    /// block data transfers outside the core lock inside an in-flight
    /// section that every commit waits for (ordered mode).
    pub fn write(&self, addr: u64, offset: u64, data: &[u8], append: bool, kill_priv: bool) -> Result<usize> {
        let (n, runs, dev, inflight) = self.with_inodes(&[addr], GlockState::Exclusive, |c| {
            let (n, runs) = c.write_deferred(addr, offset, data, append, kill_priv)?;
            Ok((n, runs, c.dev.clone(), c.inflight.clone()))
        })?;
        if runs.is_empty() {
            return Ok(n);
        }
        let failed = crate::inode::write_runs(&*dev, data, &runs);
        inflight.end(failed.clone());
        match failed {
            None => Ok(n),
            Some(e) => {
                let mut core = self.core.lock();
                core.withdraw(&format!("data write failed: {e}"));
                Err(Error::Withdrawn(e))
            }
        }
    }

    /// Gives up (part of) a glock as GFS2 does on a blocking callback:
    /// kernel caches first (its dirty pages come back as writes), then log
    /// flush, write-back of the object's blocks, revokes, our caches; then
    /// the lock manager is told.
    pub fn demote(&self, name: LockName, to: GlockState) -> Result<()> {
        let cur = self.glocks.state(name);
        if cur.covers(GlockState::Exclusive) || to == GlockState::Unlocked {
            if name.ty == LockType::Inode {
                let ino = if name.number == self.root { 1 } else { name.number };
                let kernel = self.kernel.lock().clone();
                if let Some(k) = &kernel {
                    k.inval_inode(ino);
                }
                let names = self.core.lock().demote_inode(name.number, to == GlockState::Unlocked)?;
                if let Some(k) = &kernel {
                    k.inval_inode(ino);
                    for n in names {
                        k.inval_entry(ino, &n);
                    }
                }
            } else {
                let mut core = self.core.lock();
                core.commit(true)?;
            }
        }
        self.glocks.set_state(name, to)
    }
}

impl FsCore {
    /// The filesystem side of an inode glock demote. Returns the names of a
    /// directory's entries (for the kernel's dentry invalidation).
    pub fn demote_inode(&mut self, addr: u64, invalidate: bool) -> Result<Vec<Vec<u8>>> {
        let names = if self.inodes.get(&addr).is_some_and(|i| i.di.is_dir()) && !self.is_withdrawn() {
            self.dir_list(addr).map(|l| l.into_iter().map(|e| e.name).collect()).unwrap_or_default()
        } else {
            Vec::new()
        };
        if self.log.is_some() && !self.is_withdrawn() {
            // 1. log flush
            self.commit(false)?;
            // 2. write the object's committed blocks home
            let owned: std::collections::HashSet<u64> = self.cache.owned_by(addr).into_iter().collect();
            let written = {
                let log = self.log.as_mut().expect("checked");
                let dev = self.dev.clone();
                log.write_back(&*dev, Some(&|b| owned.contains(&b)))?
            };
            for b in &written {
                self.cache.unpin(*b);
            }
            // 3. revoke them, durable
            self.revokes.extend(written);
            self.commit(true)?;
        }
        // 4. invalidate
        if invalidate {
            for b in self.cache.owned_by(addr) {
                self.cache.forget(b);
            }
            if let Some(i) = self.inodes.get_mut(&addr) {
                i.stale = true;
            }
        }
        Ok(names)
    }
}
