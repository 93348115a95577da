//! One lockspace on one daemon: the engine for the resources this node masters, the
//! holder copies of the locks of this node's clients, the client sessions, counters.
//!
//! Invariants:
//! - `holders` has an entry for every lock of a local client that its master has not
//!   ended (unlocked, refused or cancelled as a new request); it is the soft state the
//!   recovery issue will re-send to a new master.
//! - Every event for a local lock goes through its session's channel, sent while the
//!   lockspace mutex is held, so a session sees the events of a lock in the order the
//!   master produced them.
//! - `pending` counts at most one request/convert/unlock per lock.

use std::collections::HashMap;

use tokio::sync::mpsc::UnboundedSender;

use crate::engine::{Engine, Limits, LockId, Lvb, LvbRead, Mode, Output, ResourceName, SbFlags};
use crate::proto::{self as pb, completion_event, blocking_event, set_event_lock_id};

/// Per-lockspace counters shown by `rgfs-dlm status`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counters {
    /// Requests from local clients.
    pub requests: u64,
    /// Conversions from local clients.
    pub converts: u64,
    /// Unlocks from local clients.
    pub unlocks: u64,
    /// Cancels from local clients.
    pub cancels: u64,
    /// Grants delivered to local clients.
    pub grants: u64,
    /// Blocking callbacks delivered to local clients.
    pub blocking_callbacks: u64,
    /// NOQUEUE refusals delivered to local clients.
    pub try_again: u64,
    /// Conversion deadlocks delivered to local clients.
    pub deadlocks: u64,
    /// Operations refused (OpFailed) to local clients.
    pub op_failures: u64,
    /// Operations forwarded to remote masters.
    pub forwarded: u64,
    /// Operations applied here for remote holders.
    pub remote_ops: u64,
    /// Locks released because their client went away.
    pub purged: u64,
}

impl Counters {
    /// Name and value of every counter.
    pub fn named(&self) -> [(&'static str, u64); 12] {
        [
            ("requests", self.requests),
            ("converts", self.converts),
            ("unlocks", self.unlocks),
            ("cancels", self.cancels),
            ("grants", self.grants),
            ("blocking_callbacks", self.blocking_callbacks),
            ("try_again", self.try_again),
            ("deadlocks", self.deadlocks),
            ("op_failures", self.op_failures),
            ("forwarded", self.forwarded),
            ("remote_ops", self.remote_ops),
            ("purged", self.purged),
        ]
    }
}

/// The holder copy of a local client's lock.
#[derive(Clone, Copy, Debug)]
pub struct Holder {
    /// The client session.
    pub session: u64,
    /// The id the client chose.
    pub client_lock_id: u64,
    /// The resource.
    pub name: ResourceName,
    /// The resource's master.
    pub master: u32,
    /// Granted mode as last reported by the master.
    pub granted: Option<Mode>,
    /// The request/convert/unlock in flight.
    pub pending: Option<pb::OpKind>,
    /// The resource's LVB as this lock last read or wrote it, kept only while the lock
    /// stays above CR (nobody can write it meanwhile): what a rebuild vouches for.
    pub lvb: Option<LvbRead>,
    /// What the conversion in flight writes to the LVB when granted: a value, or `None`
    /// inside for IVVALBLK (invalidates).
    pub writing: Option<Option<Lvb>>,
}

impl Holder {
    /// Updates the LVB copy after a completion of `status` that left the lock in `mode`,
    /// carrying `read` if the master returned the LVB.
    fn track_lvb(&mut self, status: Option<pb::Status>, mode: Option<Mode>, read: Option<LvbRead>) {
        let writing = self.writing.take();
        let above_cr = |m: Option<Mode>| m.is_some_and(|m| m > Mode::CR);
        self.lvb = match (read, writing) {
            (Some(read), _) => Some(read),
            (None, Some(write)) if status == Some(pb::Status::Granted) => self.lvb.map(|old| match write {
                Some(value) => LvbRead { value, seq: old.seq.wrapping_add(1), valid: true },
                None => LvbRead { valid: false, ..old },
            }),
            _ if above_cr(self.granted) => self.lvb,
            _ => None,
        };
        if !above_cr(mode) {
            self.lvb = None;
        }
    }
}

/// A client session as the lockspace sees it.
#[derive(Debug)]
pub struct SessionLink {
    /// Events for the session's locks.
    pub events: UnboundedSender<pb::Event>,
    /// The client's name, for dumps and logs.
    pub client_name: String,
    /// A filesystem client (recovery will hold its locks until fencing).
    pub filesystem: bool,
}

/// Mutable state of a lockspace, behind its mutex.
#[derive(Debug)]
pub struct LsState {
    /// Resources mastered here.
    pub engine: Engine,
    /// Locks of local clients, by local lock id.
    pub holders: HashMap<u64, Holder>,
    /// Local client sessions, by session id.
    pub sessions: HashMap<u64, SessionLink>,
    /// Counters.
    pub counters: Counters,
}

impl LsState {
    /// An empty lockspace state.
    pub fn new(limits: Limits) -> LsState {
        LsState { engine: Engine::new(limits), holders: HashMap::new(), sessions: HashMap::new(), counters: Counters::default() }
    }

    /// Delivers an event for the local lock `local` to its session, updating the
    /// holder copy first. Events for locks no longer held (a purged client) are dropped.
    pub fn deliver_local(&mut self, local: u64, mut event: pb::Event) {
        let Some(holder) = self.holders.get_mut(&local) else {
            tracing::debug!(lock = local, "event for a lock no longer held; dropped");
            return;
        };
        let mut gone = false;
        match event.kind.as_ref() {
            Some(pb::event::Kind::Completion(c)) => {
                holder.pending = None;
                gone = c.lock_gone;
                let mode = if gone { None } else { crate::proto::mode_from_wire(c.granted_mode) };
                let read = c.has_lvb.then(|| LvbRead {
                    value: Lvb::from_slice(&c.lvb).unwrap_or_default(),
                    seq: c.lvb_seq,
                    valid: c.sb_flags & SbFlags::VALNOTVALID.0 == 0,
                });
                holder.track_lvb(pb::Status::try_from(c.status).ok(), mode, read);
                holder.granted = mode;
                match pb::Status::try_from(c.status) {
                    Ok(pb::Status::Granted) => self.counters.grants += 1,
                    Ok(pb::Status::TryAgain) => self.counters.try_again += 1,
                    Ok(pb::Status::Deadlock) => self.counters.deadlocks += 1,
                    _ => {}
                }
            }
            Some(pb::event::Kind::Blocking(_)) => self.counters.blocking_callbacks += 1,
            Some(pb::event::Kind::Failed(f)) => {
                self.counters.op_failures += 1;
                if f.op != pb::OpKind::OpCancel as i32 {
                    holder.pending = None;
                    holder.writing = None;
                    gone = f.op == pb::OpKind::OpRequest as i32;
                }
            }
            None => return,
        }
        let (session, client_lock_id) = (holder.session, holder.client_lock_id);
        if gone {
            self.holders.remove(&local);
        }
        set_event_lock_id(&mut event, client_lock_id);
        if let Some(link) = self.sessions.get(&session) {
            // A closed receiver means the session is being torn down; it purges its locks.
            let _ = link.events.send(event);
        }
    }

    /// Routes engine outputs: local locks to their sessions, remote ones to `remote`.
    pub fn route(&mut self, node_id: u32, lvb_len: u32, outputs: &mut Vec<Output>, mut remote: impl FnMut(LockId, pb::Event)) {
        for output in outputs.drain(..) {
            let (lock, event) = match output {
                Output::Completion(c) => (c.lock, completion_event(&c, lvb_len)),
                Output::Blocking { lock, mode } => (lock, blocking_event(mode)),
            };
            if lock.node == node_id {
                self.deliver_local(lock.lock, event);
            } else {
                remote(lock, event);
            }
        }
    }
}
