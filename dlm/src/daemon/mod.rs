//! The daemon `rgfs-dlmd`: client sessions, peer links, mastering, and the lock
//! engines of the resources this node masters. Thin adapters around the engine:
//! every decision about locks is the engine's.
//!
//! Data flow of one operation (docs/dlm.md, "Protocol"):
//! client --Session--> local daemon (holder copy) --Peer, if the master is remote-->
//! master daemon (engine) --events--> holder daemon --Session--> client.
//!
//! Invariants:
//! - Every peer message carries the membership epoch; a different epoch is refused.
//! - A lockspace's mutex is held only for engine steps and routing, never across await.
//! - A daemon starts as a new incarnation that may master resources some peers' clients
//!   still hold (it restarted): until every peer has re-sent its locks mastered here
//!   (`Rebuild`) or is known not to run, operations on resources mastered here are
//!   deferred, then applied in arrival order (docs/dlm.md, "Restarted daemons").
//! - Lock order: a lockspace's mutex before `recovery`.

mod framed;
mod lockspace;
mod peer;
mod query;
mod responder;
mod service;
mod session;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use tokio::sync::mpsc::UnboundedSender;

use crate::cluster::auth::ClusterKey;
use crate::cluster::config::Config;
use crate::cluster::mastering::{Member, Membership};
use crate::engine::{lvb_action, Flags, Input, Limits, LockId, Lvb, LvbAction, LvbRead, Mode, ResourceName};
use crate::proto::{self as pb, codes, failed_event, op_error_code, WireError};

pub use lockspace::{Counters, Holder, LsState};
pub use service::{serve, ServeHandle};

/// One lockspace on this daemon.
#[derive(Debug)]
pub struct Lockspace {
    /// Its name.
    pub name: String,
    /// Its LVB length (8..=32, multiple of 8), the same on every node.
    pub lvb_len: u32,
    /// Engine, holder copies, sessions, counters.
    pub state: Mutex<LsState>,
}

/// Connection state of the links with one peer.
#[derive(Clone, Copy, Debug, Default)]
pub struct LinkState {
    /// Our link to the peer (as master of resources) is up.
    pub outgoing: bool,
    /// The peer's link to us is up.
    pub incoming: bool,
    /// Our link to the peer was up and went down: operations for resources it
    /// masters fail as `unreachable` until it is back (the recovery issue remasters).
    pub lost: bool,
}

/// A lock operation of a local client, already checked, on its way to the master.
#[derive(Clone, Copy, Debug)]
pub enum HolderOp {
    /// New lock.
    Request { mode: Mode, flags: Flags },
    /// Conversion.
    Convert { mode: Mode, flags: Flags, lvb: Option<Lvb> },
    /// Unlock.
    Unlock { flags: Flags, lvb: Option<Lvb> },
    /// Cancel.
    Cancel,
    /// The client is gone.
    Purge,
}

impl HolderOp {
    fn kind(&self) -> pb::OpKind {
        match self {
            HolderOp::Request { .. } => pb::OpKind::OpRequest,
            HolderOp::Convert { .. } => pb::OpKind::OpConvert,
            HolderOp::Unlock { .. } => pb::OpKind::OpUnlock,
            HolderOp::Cancel => pb::OpKind::OpCancel,
            HolderOp::Purge => pb::OpKind::OpPurge,
        }
    }

    fn noqueue(&self) -> bool {
        matches!(self, HolderOp::Request { flags, .. } | HolderOp::Convert { flags, .. } if flags.contains(Flags::NOQUEUE))
    }

    fn input(&self, lock: LockId, name: ResourceName) -> Input {
        match *self {
            HolderOp::Request { mode, flags } => Input::Request { lock, name, mode, flags },
            HolderOp::Convert { mode, flags, lvb } => Input::Convert { lock, mode, flags, lvb },
            HolderOp::Unlock { flags, lvb } => Input::Unlock { lock, flags, lvb },
            HolderOp::Cancel => Input::Cancel { lock },
            HolderOp::Purge => Input::Purge { lock },
        }
    }

    fn to_wire(self, name: &ResourceName, lvb_len: u32) -> pb::Op {
        let lvb_bytes = |lvb: Option<Lvb>| lvb.map(|l| l.0[..lvb_len as usize].to_vec()).unwrap_or_default();
        let kind = match self {
            HolderOp::Request { mode, flags } => pb::op::Kind::Request(pb::LockRequest {
                client_lock_id: 0,
                name: name.as_bytes().to_vec(),
                mode: mode as i32,
                flags: flags.0,
                lvb: Vec::new(),
            }),
            HolderOp::Convert { mode, flags, lvb } => {
                pb::op::Kind::Convert(pb::ConvertRequest { client_lock_id: 0, mode: mode as i32, flags: flags.0, lvb: lvb_bytes(lvb) })
            }
            HolderOp::Unlock { flags, lvb } => pb::op::Kind::Unlock(pb::UnlockRequest { client_lock_id: 0, flags: flags.0, lvb: lvb_bytes(lvb) }),
            HolderOp::Cancel => pb::op::Kind::Cancel(pb::CancelRequest { client_lock_id: 0 }),
            HolderOp::Purge => pb::op::Kind::Purge(pb::PurgeRequest { client_lock_id: 0 }),
        };
        pb::Op { kind: Some(kind) }
    }
}

/// An operation on a resource mastered here, held back while this daemon recovers.
#[derive(Debug)]
enum Deferred {
    /// A local client's operation, resolved to its engine input.
    Local { lockspace: String, local: u64, kind: pb::OpKind, input: Input },
    /// An operation forwarded by holder node `from`.
    Peer { from: u32, op: pb::PeerOp },
}

/// What this incarnation waits for before it masters anything.
#[derive(Debug, Default)]
struct Recovery {
    /// Peers that have not yet sent their rebuild nor been found not running.
    awaiting: std::collections::BTreeSet<u32>,
    /// Operations held back meanwhile, in arrival order.
    deferred: Vec<Deferred>,
    /// One caller at a time applies the deferred operations (keeps their order).
    replaying: bool,
}

/// The receiving end of the operations for one remote master, with its node id.
pub type MasterQueue = (u32, tokio::sync::mpsc::UnboundedReceiver<pb::PeerOp>);

/// The daemon's shared state.
#[derive(Debug)]
pub struct Daemon {
    /// This node.
    pub node_id: u32,
    /// The configuration.
    pub config: Config,
    /// The cluster key.
    pub key: ClusterKey,
    /// Members and epoch.
    pub membership: Membership,
    lockspaces: RwLock<HashMap<String, Arc<Lockspace>>>,
    /// Operations for each remote master (drained by the outgoing link task).
    to_master: HashMap<u32, UnboundedSender<pb::PeerOp>>,
    /// Events for each remote holder node (drained by that node's incoming stream).
    to_holder: Mutex<HashMap<u32, UnboundedSender<pb::PeerEvent>>>,
    links: Mutex<HashMap<u32, LinkState>>,
    next_lock: AtomicU64,
    next_session: AtomicU64,
    sessions: AtomicUsize,
    refused: AtomicU64,
    /// This start of the daemon: random, told to peers in the welcome.
    pub incarnation: u64,
    /// True until recovery is over (read without a lock on every local-master operation).
    recovering: AtomicBool,
    recovery: Mutex<Recovery>,
}

impl Daemon {
    /// The daemon of node `node_id`, with receivers for the outgoing link of each peer.
    pub fn new(
        config: Config,
        node_id: u32,
        key: ClusterKey,
    ) -> Result<(Arc<Daemon>, Vec<MasterQueue>), String> {
        if config.node(node_id).is_none() {
            return Err(format!("node id {node_id} is not in the configuration"));
        }
        let members = config.nodes.iter().map(|n| Member { id: n.id, weight: n.weight }).collect();
        let membership = Membership::new(config.epoch, members).ok_or("no node has a weight above 0")?;
        let mut to_master = HashMap::new();
        let mut receivers = Vec::new();
        for node in config.nodes.iter().filter(|n| n.id != node_id) {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            to_master.insert(node.id, tx);
            receivers.push((node.id, rx));
        }
        let awaiting: std::collections::BTreeSet<u32> = to_master.keys().copied().collect();
        let daemon = Daemon {
            incarnation: rand::random::<u64>() | 1,
            recovering: AtomicBool::new(!awaiting.is_empty()),
            recovery: Mutex::new(Recovery { awaiting, ..Recovery::default() }),
            node_id,
            config,
            key,
            membership,
            lockspaces: RwLock::new(HashMap::new()),
            to_master,
            to_holder: Mutex::new(HashMap::new()),
            links: Mutex::new(HashMap::new()),
            next_lock: AtomicU64::new(1),
            next_session: AtomicU64::new(1),
            sessions: AtomicUsize::new(0),
            refused: AtomicU64::new(0),
        };
        Ok((Arc::new(daemon), receivers))
    }

    fn engine_limits(&self) -> Limits {
        let l = &self.config.limits;
        Limits { max_locks: l.max_locks_per_lockspace, max_resources: l.max_resources_per_lockspace, max_locks_per_resource: l.max_locks_per_resource }
    }

    /// The lockspace `name`, created with `lvb_len` if new; refused if it exists with
    /// another LVB length or there are too many lockspaces.
    pub fn lockspace(&self, name: &str, lvb_len: u32) -> Result<Arc<Lockspace>, String> {
        if name.is_empty() || name.len() > 64 {
            return Err("lockspace names are 1 to 64 bytes".into());
        }
        if !crate::proto::valid_lvb_len(lvb_len) {
            return Err(format!("LVB length {lvb_len} is not 8, 16, 24 or 32"));
        }
        if let Some(ls) = self.lockspaces.read().get(name) {
            return check_lvb_len(ls, lvb_len);
        }
        let mut all = self.lockspaces.write();
        if let Some(ls) = all.get(name) {
            return check_lvb_len(ls, lvb_len);
        }
        if all.len() >= self.config.limits.max_lockspaces {
            return Err("too many lockspaces".into());
        }
        tracing::info!(lockspace = name, lvb_len, "lockspace created");
        let ls = Arc::new(Lockspace { name: name.to_string(), lvb_len, state: Mutex::new(LsState::new(self.engine_limits())) });
        all.insert(name.to_string(), ls.clone());
        Ok(ls)
    }

    /// The lockspace `name` if it exists.
    pub fn existing_lockspace(&self, name: &str) -> Option<Arc<Lockspace>> {
        self.lockspaces.read().get(name).cloned()
    }

    /// All lockspaces, sorted by name.
    pub fn all_lockspaces(&self) -> Vec<Arc<Lockspace>> {
        let mut all: Vec<_> = self.lockspaces.read().values().cloned().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// A fresh lock id for a local client's lock.
    pub fn next_lock_id(&self) -> u64 {
        self.next_lock.fetch_add(1, Ordering::Relaxed)
    }

    /// Counts a refused connection (bad key, bad hello).
    pub fn count_refused(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    /// Submits an operation of the local lock `local` (whose holder copy exists) to
    /// its master: applied here if we master it, forwarded otherwise. Must be called
    /// with the lockspace state locked.
    pub fn submit(&self, ls: &Lockspace, state: &mut LsState, local: u64, op: HolderOp) {
        let Some(holder) = state.holders.get(&local).copied() else { return };
        let lock = LockId { node: self.node_id, lock: local };
        if let HolderOp::Convert { mode, flags, lvb } = op {
            // Remember what this conversion writes, so the holder's LVB copy stays current.
            if flags.intersects(Flags::VALBLK | Flags::IVVALBLK) && lvb_action(holder.granted, Some(mode)) == LvbAction::Write {
                let write = if flags.contains(Flags::IVVALBLK) { None } else { lvb };
                state.holders.get_mut(&local).expect("just read").writing = Some(write);
            }
        }
        if holder.master == self.node_id {
            let (kind, input) = (op.kind(), op.input(lock, holder.name));
            if self.recovering.load(Ordering::Acquire) {
                let deferred = Deferred::Local { lockspace: ls.name.clone(), local, kind, input };
                let Some(Deferred::Local { .. }) = self.defer(deferred) else { return };
            }
            self.apply_local(ls, state, local, kind, input);
            return;
        }
        if op.kind() != pb::OpKind::OpPurge {
            let link = self.link_state(holder.master);
            // Operations sent before the link's first connection wait for it, but a
            // NOQUEUE one promised not to wait.
            let refused = if link.lost {
                Some(format!("master node {} is unreachable", holder.master))
            } else if !link.outgoing && op.noqueue() {
                Some(format!("master node {} is not connected (NOQUEUE does not wait for it)", holder.master))
            } else {
                None
            };
            if let Some(detail) = refused {
                state.deliver_local(local, failed_event(op.kind(), &WireError::new(codes::UNREACHABLE, detail)));
                return;
            }
        }
        state.counters.forwarded += 1;
        let peer_op = pb::PeerOp { lockspace: ls.name.clone(), lvb_len: ls.lvb_len, lock_id: local, op: Some(op.to_wire(&holder.name, ls.lvb_len)) };
        let sent = self.to_master.get(&holder.master).is_some_and(|tx| tx.send(peer_op).is_ok());
        if !sent && op.kind() != pb::OpKind::OpPurge {
            let wire = WireError::new(codes::UNREACHABLE, format!("no link to node {}", holder.master));
            state.deliver_local(local, failed_event(op.kind(), &wire));
        }
    }

    fn apply_local(&self, ls: &Lockspace, state: &mut LsState, local: u64, kind: pb::OpKind, input: Input) {
        let mut outputs = Vec::new();
        match state.engine.apply(input, &mut outputs) {
            Ok(()) => self.route(ls, state, &mut outputs),
            Err(error) if kind != pb::OpKind::OpPurge => {
                let wire = WireError::new(op_error_code(&error), error.to_string());
                state.deliver_local(local, failed_event(kind, &wire));
            }
            Err(_) => {}
        }
    }

    /// Holds `op` back if recovery is still going on; gives it back otherwise.
    fn defer(&self, op: Deferred) -> Option<Deferred> {
        let mut recovery = self.recovery.lock();
        if !self.recovering.load(Ordering::Acquire) {
            return Some(op);
        }
        recovery.deferred.push(op);
        None
    }

    /// Whether recovery is going on, and the peers it waits for.
    pub fn recovery_state(&self) -> (bool, Vec<u32>) {
        let recovery = self.recovery.lock();
        (self.recovering.load(Ordering::Acquire), recovery.awaiting.iter().copied().collect())
    }

    /// Whether this daemon still waits for peer `node`'s rebuild.
    pub fn awaits_rebuild_from(&self, node: u32) -> bool {
        self.recovering.load(Ordering::Acquire) && self.recovery.lock().awaiting.contains(&node)
    }

    /// Peer `node` has re-sent its locks mastered here (`rebuilt`), or was found not
    /// running (its clients' locks died with it): recovery no longer waits for it.
    pub fn peer_recovered(&self, node: u32, rebuilt: bool) {
        if !self.recovery.lock().awaiting.remove(&node) {
            return;
        }
        if rebuilt {
            tracing::info!(node, "recovery: node re-sent its locks mastered here");
        } else {
            tracing::info!(node, "recovery: node is not running; none of its locks are mastered here");
        }
        self.finish_recovery();
    }

    /// Applies the deferred operations in order once nothing is awaited, then ends recovery.
    fn finish_recovery(&self) {
        let mut replayer = false;
        loop {
            let batch = {
                let mut recovery = self.recovery.lock();
                if !recovery.awaiting.is_empty() || (recovery.replaying && !replayer) {
                    return;
                }
                replayer = true;
                if recovery.deferred.is_empty() {
                    recovery.replaying = false;
                    if self.recovering.swap(false, Ordering::AcqRel) {
                        tracing::info!(incarnation = self.incarnation, "recovery done: mastering resources");
                    }
                    return;
                }
                recovery.replaying = true;
                std::mem::take(&mut recovery.deferred)
            };
            for op in batch {
                match op {
                    Deferred::Peer { from, op } => self.apply_peer_op_now(from, op),
                    Deferred::Local { lockspace, local, kind, input } => {
                        let Some(ls) = self.existing_lockspace(&lockspace) else { continue };
                        let mut state = ls.state.lock();
                        self.apply_local(&ls, &mut state, local, kind, input);
                    }
                }
            }
        }
    }

    /// Routes engine outputs of `ls`: local locks to sessions, remote to their nodes.
    pub fn route(&self, ls: &Lockspace, state: &mut LsState, outputs: &mut Vec<crate::engine::Output>) {
        state.route(self.node_id, ls.lvb_len, outputs, |lock, event| self.send_to_holder(&ls.name, lock, event));
    }

    fn send_to_holder(&self, lockspace: &str, lock: LockId, event: pb::Event) {
        let links = self.to_holder.lock();
        let sent = links
            .get(&lock.node)
            .is_some_and(|tx| tx.send(pb::PeerEvent { lockspace: lockspace.to_string(), lock_id: lock.lock, event: Some(event) }).is_ok());
        if !sent {
            tracing::warn!(lockspace, node = lock.node, lock = lock.lock, "no link to the holder's node; event dropped");
        }
    }

    /// Applies an operation forwarded by the holder node `from` (deferred during recovery).
    pub fn apply_peer_op(&self, from: u32, op: pb::PeerOp) {
        if self.recovering.load(Ordering::Acquire) {
            let Some(Deferred::Peer { from, op }) = self.defer(Deferred::Peer { from, op }) else { return };
            return self.apply_peer_op_now(from, op);
        }
        self.apply_peer_op_now(from, op)
    }

    fn apply_peer_op_now(&self, from: u32, op: pb::PeerOp) {
        let fail = |kind: pb::OpKind, error: WireError| {
            self.send_to_holder(&op.lockspace, LockId { node: from, lock: op.lock_id }, failed_event(kind, &error));
        };
        let Some(inner) = op.op.as_ref() else {
            return fail(pb::OpKind::OpRequest, WireError::new(codes::PROTOCOL, "empty op"));
        };
        let kind = crate::proto::op_lock_id(inner).map(|(_, k)| k).unwrap_or(pb::OpKind::OpRequest);
        let ls = match self.lockspace(&op.lockspace, op.lvb_len) {
            Ok(ls) => ls,
            Err(e) => return fail(kind, WireError::new(codes::INVALID, e)),
        };
        let lock = LockId { node: from, lock: op.lock_id };
        let input = match peer_input(lock, inner, ls.lvb_len) {
            Ok(input) => input,
            Err(e) => return fail(kind, e),
        };
        let mut state = ls.state.lock();
        state.counters.remote_ops += 1;
        let mut outputs = Vec::new();
        match state.engine.apply(input, &mut outputs) {
            Ok(()) => self.route(&ls, &mut state, &mut outputs),
            Err(error) if kind != pb::OpKind::OpPurge => {
                drop(state);
                fail(kind, WireError::new(op_error_code(&error), error.to_string()));
            }
            Err(_) => {}
        }
    }

    /// Installs the locks holder node `from` re-sent for resources mastered here, if this
    /// incarnation still waits for them (otherwise it already has them: the link flapped).
    pub fn apply_rebuild(&self, from: u32, rebuild: pb::Rebuild) {
        if !self.awaits_rebuild_from(from) {
            if !rebuild.locks.is_empty() {
                tracing::warn!(node = from, locks = rebuild.locks.len(), "rebuild from a node not awaited; ignored");
            }
            return;
        }
        for lock in rebuild.locks {
            let installed = self.lockspace(&lock.lockspace, lock.lvb_len).and_then(|ls| {
                let name = crate::proto::check_name(&lock.name).map_err(|e| e.detail)?;
                let mode = crate::proto::check_mode(lock.mode).map_err(|e| e.detail)?;
                let value = crate::proto::check_lvb(&lock.lvb, ls.lvb_len).map_err(|e| e.detail)?;
                let lvb = value.filter(|_| lock.has_lvb).map(|value| LvbRead { value, seq: lock.lvb_seq, valid: lock.lvb_valid });
                let input = Input::Rebuild { lock: LockId { node: from, lock: lock.lock_id }, name, mode, lvb };
                ls.state.lock().engine.apply(input, &mut Vec::new()).map_err(|e| e.to_string())
            });
            if let Err(error) = installed {
                tracing::warn!(node = from, lockspace = %lock.lockspace, lock = lock.lock_id, %error, "rebuilt lock refused");
            }
        }
        if rebuild.last {
            self.peer_recovered(from, true);
        }
    }

    /// Our clients' granted locks on resources `master` masters, for its rebuild.
    pub fn rebuild_for(&self, master: u32) -> Vec<pb::RebuildLock> {
        let mut locks = Vec::new();
        for ls in self.all_lockspaces() {
            let state = ls.state.lock();
            for (local, holder) in state.holders.iter().filter(|(_, h)| h.master == master) {
                let Some(mode) = holder.granted else { continue };
                let (lockspace, lvb_len, name) = (ls.name.clone(), ls.lvb_len, holder.name.as_bytes().to_vec());
                let lvb = holder.lvb.filter(|_| mode > Mode::CR);
                let mut copy = pb::RebuildLock { lockspace, lvb_len, lock_id: *local, name, mode: mode as i32, ..Default::default() };
                if let Some(read) = lvb {
                    (copy.has_lvb, copy.lvb_seq, copy.lvb_valid) = (true, read.seq, read.valid);
                    copy.lvb = read.value.0[..lvb_len as usize].to_vec();
                }
                locks.push(copy);
            }
        }
        locks
    }

    /// Delivers an event from a remote master to the local lock.
    pub fn apply_peer_event(&self, event: pb::PeerEvent) {
        let Some(ls) = self.existing_lockspace(&event.lockspace) else { return };
        let Some(inner) = event.event else { return };
        ls.state.lock().deliver_local(event.lock_id, inner);
    }

    /// The link to `master` went down: operations in flight there fail as unreachable.
    /// (The recovery issue replaces this with remastering.)
    pub fn fail_pending_on(&self, master: u32) {
        for ls in self.all_lockspaces() {
            let mut state = ls.state.lock();
            let stuck: Vec<(u64, pb::OpKind)> =
                state.holders.iter().filter(|(_, h)| h.master == master).filter_map(|(id, h)| h.pending.map(|p| (*id, p))).collect();
            for (local, kind) in stuck {
                let wire = WireError::new(codes::UNREACHABLE, format!("link to master node {master} lost"));
                state.deliver_local(local, failed_event(kind, &wire));
            }
        }
    }

    fn set_link(&self, node: u32, update: impl FnOnce(&mut LinkState)) {
        update(self.links.lock().entry(node).or_default());
    }

    /// Link states by node.
    pub fn link_state(&self, node: u32) -> LinkState {
        self.links.lock().get(&node).copied().unwrap_or_default()
    }
}

fn check_lvb_len(ls: &Arc<Lockspace>, lvb_len: u32) -> Result<Arc<Lockspace>, String> {
    if ls.lvb_len != lvb_len {
        return Err(format!("lockspace {} has LVB length {}, not {lvb_len}", ls.name, ls.lvb_len));
    }
    Ok(ls.clone())
}

/// Checks a forwarded operation and makes the engine input.
fn peer_input(lock: LockId, op: &pb::Op, lvb_len: u32) -> Result<Input, WireError> {
    use crate::proto::{check_lvb, check_mode, check_name};
    Ok(match op.kind.as_ref().ok_or_else(|| WireError::new(codes::PROTOCOL, "empty op"))? {
        pb::op::Kind::Request(r) => Input::Request { lock, name: check_name(&r.name)?, mode: check_mode(r.mode)?, flags: Flags(r.flags) },
        pb::op::Kind::Convert(c) => Input::Convert { lock, mode: check_mode(c.mode)?, flags: Flags(c.flags), lvb: check_lvb(&c.lvb, lvb_len)? },
        pb::op::Kind::Unlock(u) => Input::Unlock { lock, flags: Flags(u.flags), lvb: check_lvb(&u.lvb, lvb_len)? },
        pb::op::Kind::Cancel(_) => Input::Cancel { lock },
        pb::op::Kind::Purge(_) => Input::Purge { lock },
    })
}
