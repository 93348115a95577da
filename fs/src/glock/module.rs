//! The interface a lock manager implements ([`LockModule`]) and the events
//! it reports back ([`LockEvents`]). It is shaped for an asynchronous client
//! (the lock manager's client is tokio-based and handle-based): a request
//! returns at once and its completion is reported later, from any thread,
//! through [`LockEvents::completed`]. A module that knows the answer at
//! once (such as [`NoLock`], lock_nolock) returns it from `request` instead:
//! no thread hop and no re-entry.
//!
//! Contract:
//! - the glock table has at most one request in flight per lock name, and
//!   every request is eventually completed exactly once (granted, try
//!   failed, or an error);
//! - `completed` and `blocking` may be called from any thread, even from
//!   inside `request`: the table holds no lock of its own while calling it;
//! - `blocking` must not wait for the demote it asks for (the table runs
//!   demotes on its own worker thread);
//! - `recovery_needed`/`recovery_done` are the journal recovery seam
//!   (the kernel's recover_slot / recovery_result): the module says which
//!   journal (of a failed node) needs replaying, the filesystem says when
//!   it has been replayed.

use std::sync::Arc;

use super::{GlockState, HolderFlags, LockName, Lvb};

/// One request to the lock manager.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockRequest {
    pub name: LockName,
    /// The state this node holds now (UN: a new lock).
    pub from: GlockState,
    /// The state wanted; UN releases the lock.
    pub to: GlockState,
    /// TRY → no-queue; ANY → either shared mode; NOEXP → proceed during
    /// journal recovery.
    pub flags: HolderFlags,
    /// The value block to write back (when leaving EX).
    pub lvb: Option<Lvb>,
}

/// Why a lock module refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LockError {
    /// A no-queue request met a conflicting lock on another node.
    #[error("lock {0}: held elsewhere (try lock)")]
    TryFailed(LockName),
    #[error("lock {0}: {1}")]
    Failed(LockName, String),
}

/// A granted request: the state granted (with ANY, SH may come back as DF)
/// and the value block read on grant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Granted {
    pub state: GlockState,
    pub lvb: Option<Lvb>,
}

/// What the lock manager reports to the filesystem.
pub trait LockEvents: Send + Sync {
    /// The request in flight for `name` completed.
    fn completed(&self, name: LockName, result: Result<Granted, LockError>);
    /// Another node wants `name` in a mode that conflicts with ours; ours
    /// must drop to `GlockState::demote_target(mode)`.
    fn blocking(&self, name: LockName, mode: super::DlmMode);
    /// Journal `jid` belongs to a failed node and must be replayed before
    /// the locks it protected are used.
    fn recovery_needed(&self, jid: u32);
}

/// What a lock manager must offer the filesystem.
pub trait LockModule: Send + Sync {
    /// "lock_nolock", "lock_dlm", ...
    fn proto_name(&self) -> &str;
    /// Starts a request; returns at once. A module that can answer at once
    /// returns the completion (`Some`); otherwise (`None`) it reports it
    /// later, once, through [`LockEvents::completed`].
    fn request(&self, req: LockRequest) -> Option<Result<Granted, LockError>>;
    /// Registers where completions and callbacks go (once, before the
    /// first request).
    fn set_events(&self, events: Arc<dyn LockEvents>);
    /// The filesystem has replayed journal `jid` (the kernel's
    /// recovery_result). Nothing to do for a single node.
    fn recovery_done(&self, jid: u32) {
        let _ = jid;
    }
}

/// lock_nolock: a single node; everything is granted at once, inline, and
/// nothing ever calls back.
#[derive(Debug, Default)]
pub struct NoLock;

impl LockModule for NoLock {
    fn proto_name(&self) -> &str {
        "lock_nolock"
    }
    fn request(&self, req: LockRequest) -> Option<Result<Granted, LockError>> {
        Some(Ok(Granted { state: req.to, lvb: None }))
    }
    fn set_events(&self, _: Arc<dyn LockEvents>) {}
}
