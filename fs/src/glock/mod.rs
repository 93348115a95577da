//! Glocks: the lock layer every access to an inode, a resource group or the
//! journal goes through (`docs/glocks.md` has the tables and lock order).
//!
//! - [`LockModule`] (`module.rs`): what a lock manager offers, shaped for an
//!   asynchronous client: a request returns at once, its completion and the
//!   blocking callbacks come back through [`LockEvents`]. [`NoLock`] is
//!   lock_nolock: every request is granted inline, no callback ever comes.
//! - [`Machine`] (`state.rs`): the pure per-glock state machine (holders,
//!   demotes, minimum hold time, try-locks), tested against a model.
//! - [`GlockTable`] (`table.rs`) drives one machine per lock name; a
//!   [`Holder`] (`holder.rs`) keeps its glock until dropped.
//! - [`Fs`]: the mounted filesystem: the core behind a mutex plus the
//!   glocks; its [`Demoter`] does what GFS2 does before giving a glock up
//!   (log flush, write back, revoke, invalidate our caches and the
//!   kernel's), on the table's worker thread.
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

mod holder;
mod module;
mod order;
#[cfg(test)]
mod proptests;
mod state;
mod table;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Weak};

use parking_lot::{Mutex, MutexGuard};

use crate::core::FsCore;
use crate::error::{Error, Result};

pub use holder::Holder;
pub use module::{Granted, LockError, LockEvents, LockModule, LockRequest, NoLock};
pub use order::{holds_demote_lock, DemoteLockMark};
pub use state::{Action, Busy, HolderFlags, HolderId, Machine, Refusal, Reply};
pub use table::{Demoter, GlockConfig, GlockTable};

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

/// Invalidation of the kernel's caches (the FUSE adapter implements it with
/// fuser notifications; inode numbers here are the kernel's).
pub trait KernelCache: Send + Sync {
    fn inval_inode(&self, ino: u64);
    fn inval_entry(&self, parent: u64, name: &[u8]);
}

/// The core mutex. Holding it marks the thread (`order.rs`): demote work
/// needs it, so a thread holding it must not wait for a glock.
pub struct CoreMutex(Mutex<FsCore>);

/// The core, locked.
pub struct CoreGuard<'a> {
    guard: MutexGuard<'a, FsCore>,
    _mark: DemoteLockMark,
}

impl CoreMutex {
    pub fn lock(&self) -> CoreGuard<'_> {
        let guard = self.0.lock();
        CoreGuard { guard, _mark: DemoteLockMark::new() }
    }
}

impl std::ops::Deref for CoreGuard<'_> {
    type Target = FsCore;
    fn deref(&self) -> &FsCore {
        &self.guard
    }
}

impl std::ops::DerefMut for CoreGuard<'_> {
    fn deref_mut(&mut self) -> &mut FsCore {
        &mut self.guard
    }
}

/// Holders for an operation's glocks; released when dropped.
pub type Holders = Vec<Holder>;

/// How the node's operations hold their glocks: node scope, because the
/// core mutex serialises this node's users (as the kernel does for rgrps).
const OP: HolderFlags = HolderFlags { try_lock: false, any: false, node_scope: true, noexp: false };

/// A mounted filesystem: the core behind its mutex, and the glocks.
pub struct Fs {
    pub core: CoreMutex,
    pub glocks: GlockTable,
    pub kernel: Mutex<Option<Arc<dyn KernelCache>>>,
    root: u64,
    /// Held for the whole mount: MOUNT EX, the journal EX, LIVE SH.
    _mount_holders: Holders,
    /// Directory entry names to invalidate in the kernel once a demote of
    /// the directory is confirmed (collected by the demote's sync step).
    pending_inval: Mutex<HashMap<LockName, Vec<Vec<u8>>>>,
}

impl Fs {
    /// Wraps a mounted core with the default glock tunables.
    pub fn new(core: FsCore, module: Arc<dyn LockModule>) -> Result<Arc<Fs>> {
        Fs::with_config(core, module, GlockConfig::default())
    }

    /// Wraps a mounted core. Holds the node's long-held locks for the
    /// mount (MOUNT EX, the journal EX, LIVE SH) and caches every rgrp EX
    /// (lock_nolock never takes them back; the cluster issue replaces this
    /// by per-rgrp locking in the allocator).
    pub fn with_config(core: FsCore, module: Arc<dyn LockModule>, config: GlockConfig) -> Result<Arc<Fs>> {
        let glocks = GlockTable::new(module, config);
        let plain = HolderFlags::default();
        let mount_holders = vec![
            glocks.acquire(LockName { ty: LockType::NonDisk, number: nondisk::MOUNT }, GlockState::Exclusive, plain)?,
            glocks.acquire(LockName::journal(core.jid), GlockState::Exclusive, plain)?,
            glocks.acquire(LockName { ty: LockType::NonDisk, number: nondisk::LIVE }, GlockState::Shared, plain)?,
        ];
        for r in &core.alloc.rgrps {
            drop(glocks.acquire(LockName::rgrp(r.ri.addr), GlockState::Exclusive, OP)?);
        }
        let root = core.sys.root;
        let fs = Arc::new(Fs {
            core: CoreMutex(Mutex::new(core)),
            glocks,
            kernel: Mutex::new(None),
            root,
            _mount_holders: mount_holders,
            pending_inval: Mutex::new(HashMap::new()),
        });
        fs.glocks.set_demoter(Arc::new(FsDemoter(Arc::downgrade(&fs))));
        Ok(fs)
    }

    pub fn root(&self) -> u64 {
        self.root
    }

    /// Takes holders on the inodes an operation touches, in the lock order
    /// (ascending numbers). Must not be called with the core mutex held.
    pub fn hold_inodes(&self, inodes: &[u64], mode: GlockState) -> Result<Holders> {
        let mut sorted: Vec<u64> = inodes.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        sorted.into_iter().map(|i| self.glocks.acquire(LockName::inode(i), mode, OP)).collect()
    }

    /// Holds the inodes an operation touches, then runs `f` on the core;
    /// the holders drop when it returns.
    pub fn with_inodes<T>(&self, inodes: &[u64], mode: GlockState, f: impl FnOnce(&mut FsCore) -> Result<T>) -> Result<T> {
        let _held = self.hold_inodes(inodes, mode)?;
        let mut core = self.core.lock();
        f(&mut core)
    }

    /// Reads file data: the block map under the glock and core lock, the
    /// device transfers outside the core lock (reads run in parallel) but
    /// still under the glock holder.
    pub fn read(&self, addr: u64, offset: u64, size: usize) -> Result<Vec<u8>> {
        let _held = self.hold_inodes(&[addr], GlockState::Exclusive)?;
        // The transfers run without the core lock, inside a read section:
        // blocks a concurrent truncate frees stay unallocated until it ends.
        let (plan, dev, reads) = {
            let mut c = self.core.lock();
            let plan = c.read_planned(addr, offset, size)?;
            c.reads.begin();
            (plan, c.dev.clone(), c.reads.clone())
        };
        let r = plan.execute(&*dev);
        // End the section before taking the core lock again (a committer
        // may be waiting for it while holding that lock).
        reads.end(None);
        r.inspect_err(|e| self.core.lock().withdraw(&e.to_string()))
    }

    /// fsync/fsyncdir: commits under the locks, then flushes the device
    /// without the core lock (other operations go on meanwhile).
    pub fn sync(&self, inodes: &[u64]) -> Result<()> {
        let _held = self.hold_inodes(inodes, GlockState::Exclusive)?;
        let Some(ticket) = self.core.lock().sync_start()? else {
            return Ok(());
        };
        let flushed = ticket.dev.flush().map_err(Error::from);
        self.core.lock().sync_finish(ticket, flushed)
    }

    /// Writes file data: allocation and metadata under the locks, whole-
    /// block data transfers outside the core lock inside an in-flight
    /// section that every commit waits for (ordered mode).
    pub fn write(&self, addr: u64, offset: u64, data: &[u8], append: bool, kill_priv: bool) -> Result<usize> {
        let _held = self.hold_inodes(&[addr], GlockState::Exclusive)?;
        let (n, runs, dev, inflight) = {
            let mut c = self.core.lock();
            let (n, runs) = c.write_deferred(addr, offset, data, append, kill_priv)?;
            (n, runs, c.dev.clone(), c.inflight.clone())
        };
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

    /// The kernel's inode number of a glock's inode.
    fn kernel_ino(&self, name: LockName) -> u64 {
        if name.number == self.root {
            1
        } else {
            name.number
        }
    }

    /// The sync step of a demote, as GFS2 does on a blocking callback: log
    /// flush, write-back of the object's blocks, revokes, and for UN our
    /// caches. Runs on the glock worker with no holder of the glock granted.
    fn demote_sync(&self, name: LockName, from: GlockState, to: GlockState) -> Result<()> {
        if !(from.covers(GlockState::Exclusive) || to == GlockState::Unlocked) {
            return Ok(());
        }
        if name.ty == LockType::Inode {
            let names = self.core.lock().demote_inode(name.number, to == GlockState::Unlocked)?;
            self.pending_inval.lock().insert(name, names);
        } else {
            self.core.lock().commit(true)?;
        }
        Ok(())
    }

    /// After the lock manager confirmed a demote: the kernel drops what it
    /// caches of the inode (attributes, pages, a directory's entries). Sent
    /// without any glock gated, because the kernel may answer with requests
    /// of its own that FUSE threads must be able to serve.
    fn demote_kernel(&self, name: LockName) {
        let names = self.pending_inval.lock().remove(&name).unwrap_or_default();
        if name.ty != LockType::Inode {
            return;
        }
        let kernel = self.kernel.lock().clone();
        if let Some(k) = &kernel {
            let ino = self.kernel_ino(name);
            k.inval_inode(ino);
            for n in names {
                k.inval_entry(ino, &n);
            }
        }
    }
}

/// The table's demote work, for a mounted filesystem while it exists.
struct FsDemoter(Weak<Fs>);

impl Demoter for FsDemoter {
    fn sync(&self, name: LockName, from: GlockState, to: GlockState) -> Result<()> {
        match self.0.upgrade() {
            Some(fs) => fs.demote_sync(name, from, to),
            None => Ok(()),
        }
    }
    fn demoted(&self, name: LockName, _to: GlockState) {
        if let Some(fs) = self.0.upgrade() {
            fs.demote_kernel(name);
        }
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
