//! The client library: what the filesystem (and `rgfs-dlm`) uses to lock.
//!
//! ```no_run
//! # async fn example(options: rgfs_dlm::client::ConnectOptions) -> Result<(), rgfs_dlm::client::ClientError> {
//! use rgfs_dlm::client::{JoinOptions, Lockspace};
//! use rgfs_dlm::engine::{Flags, Mode};
//! let (ls, mut blocking) = Lockspace::join(&options, "fs1", JoinOptions::default()).await?;
//! let (lock, granted) = ls.lock(b"inode 42", Mode::PR, Flags::VALBLK).await?;
//! // ... a Blocking { lock, mode } on `blocking` asks us to give way to `mode` ...
//! ls.unlock(lock, Flags::NONE, None)?.await?;
//! # Ok(()) }
//! ```
//!
//! Every operation is sent at once and pipelined on the session's one stream; the
//! returned [`PendingOp`] resolves with the operation's completion. A lock has at most
//! one request/convert/unlock in flight, plus possibly a cancel. Blocking callbacks
//! of all the lockspace's locks arrive on one channel, keyed by [`LockHandle`].
//!
//! Invariants: a slot exists for a lock while it has an operation or a cancel in
//! flight; when the session ends every waiter gets `Disconnected` and the blocking
//! channel closes.

mod admin;
mod connect;
mod framed;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};

pub use admin::AdminClient;
pub use connect::{options_with_key_file, ConnectOptions, DaemonAddress, Transport};

use crate::cluster::mastering::{Member, Membership};
use crate::engine::{Flags, Mode, SbFlags, Status};
use crate::proto::{self as pb, codes, mode_from_wire, status_from_wire};
use connect::{open_session, AbortOnDrop, Sender};

/// Why an operation or session failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The daemon could not be reached.
    #[error("cannot reach the lock daemon: {0}")]
    Connect(String),
    /// Something answered at the daemon's address, but not the lock manager's
    /// protocol.
    #[error("{address} is not an rgfs-dlmd (it answered with {answer})")]
    NotDaemon {
        /// The address.
        address: String,
        /// What came back, for people: "HTTP", or the first bytes.
        answer: String,
    },
    /// Connected, but the other end said nothing within the handshake timeout.
    #[error("no answer from {address} within {after} (is it an rgfs-dlmd?)")]
    NoAnswer {
        /// The address.
        address: String,
        /// The timeout, for people ("5 s").
        after: String,
    },
    /// The daemon refused the session (wrong key, LVB length mismatch, limits).
    #[error("refused by the lock daemon: {0}")]
    Refused(String),
    /// A query the daemon could not answer, e.g. a lock dump of a lockspace it does
    /// not have (its words).
    #[error("{0}")]
    Query(String),
    /// The daemon said something that makes no sense here.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The operation was refused at once; `code` is one of the stable codes of docs/dlm.md.
    #[error("operation refused ({code}): {detail}")]
    Op {
        /// Stable code (invalid, unknown-lock, busy, limit, bad-name, bad-lvb, unreachable, ...).
        code: String,
        /// For people.
        detail: String,
    },
    /// Bad arguments, caught before sending.
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// The session ended.
    #[error("disconnected from the lock daemon")]
    Disconnected,
}

/// A lock of this session (the id the client chose for it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LockHandle(pub u64);

/// The LVB handed back with a completion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LvbValue {
    /// `lvb_len` bytes.
    pub bytes: Vec<u8>,
    /// Number of writes the resource's LVB has seen.
    pub seq: u32,
    /// False when a PW/EX holder went away without writing it, or after IVVALBLK.
    pub valid: bool,
}

/// The completion of one operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completion {
    /// Granted, TryAgain (NOQUEUE refused), Unlocked, Cancelled, Deadlock.
    pub status: Status,
    /// The lock's granted mode afterwards; `None` once the lock no longer exists.
    pub mode: Option<Mode>,
    /// DEMOTED, VALNOTVALID, ALTMODE.
    pub sb_flags: SbFlags,
    /// The resource's LVB, when VALBLK was set and the transition reads it.
    pub lvb: Option<LvbValue>,
}

/// A blocking callback: a request for `mode` waits behind `lock`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Blocking {
    /// The lock in the way.
    pub lock: LockHandle,
    /// The mode the waiter wants; demote to a mode compatible with it.
    pub mode: Mode,
}

/// Blocking callbacks of a lockspace session.
pub type BlockingEvents = mpsc::UnboundedReceiver<Blocking>;

/// Options of a join.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JoinOptions {
    /// LVB length: 8, 16, 24 or 32; the same for every member of the lockspace.
    pub lvb_len: u32,
    /// A filesystem client: the recovery issue will hold its locks until fencing.
    pub filesystem: bool,
}

impl Default for JoinOptions {
    fn default() -> Self {
        JoinOptions { lvb_len: 32, filesystem: false }
    }
}

type OpResult = Result<Completion, ClientError>;
type CancelResult = Result<bool, ClientError>;

#[derive(Default)]
struct Slot {
    op: Option<oneshot::Sender<OpResult>>,
    cancel: Option<oneshot::Sender<CancelResult>>,
}

struct Inner {
    name: String,
    lvb_len: u32,
    node_id: u32,
    membership: Membership,
    slots: Mutex<HashMap<u64, Slot>>,
    next_id: AtomicU64,
    sender: Sender,
    _reader: AbortOnDrop,
    _flusher: Option<AbortOnDrop>,
}

/// A joined lockspace. Cheap to clone; the session ends when the last clone is dropped.
#[derive(Clone)]
pub struct Lockspace {
    inner: Arc<Inner>,
}

/// An operation in flight; resolves with its completion.
pub struct PendingOp {
    /// The lock it acts on.
    pub lock: LockHandle,
    rx: oneshot::Receiver<OpResult>,
}

impl Future for PendingOp {
    type Output = OpResult;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<OpResult> {
        Pin::new(&mut self.rx).poll(cx).map(|r| r.unwrap_or(Err(ClientError::Disconnected)))
    }
}

/// A cancel in flight; resolves with `true` if a queued request or conversion was
/// cancelled (its own [`PendingOp`] then completes with `Cancelled`), `false` if
/// there was nothing to cancel (it had completed already).
pub struct PendingCancel {
    rx: oneshot::Receiver<CancelResult>,
}

impl Future for PendingCancel {
    type Output = CancelResult;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<CancelResult> {
        Pin::new(&mut self.rx).poll(cx).map(|r| r.unwrap_or(Err(ClientError::Disconnected)))
    }
}

impl Lockspace {
    /// Joins `name` through the local daemon (creating the lockspace if new).
    pub async fn join(options: &ConnectOptions, name: &str, join: JoinOptions) -> Result<(Lockspace, BlockingEvents), ClientError> {
        if name.is_empty() || name.len() > 64 {
            return Err(ClientError::Invalid("lockspace names are 1 to 64 bytes".into()));
        }
        let session = open_session(options, name, join.lvb_len, join.filesystem).await?;
        let members = session.welcome.members.iter().map(|m| Member { id: m.node_id, weight: m.weight }).collect();
        let membership = Membership::new(session.welcome.epoch, members)
            .ok_or_else(|| ClientError::Protocol("the daemon sent a membership without weights".into()))?;
        let (blocking_tx, blocking_rx) = mpsc::unbounded_channel();
        let connect::Session { sender, mut receiver, welcome, flusher } = session;
        let inner = Arc::new_cyclic(|weak: &std::sync::Weak<Inner>| {
            let weak = weak.clone();
            let reader = tokio::spawn(async move {
                loop {
                    let message = receiver.message().await;
                    let Some(inner) = weak.upgrade() else { return };
                    match message {
                        Ok(Some(pb::ServerMessage { kind: Some(pb::server_message::Kind::Events(batch)) })) => {
                            inner.dispatch(batch.events, &blocking_tx);
                        }
                        Ok(Some(_)) => {}
                        Ok(None) | Err(_) => {
                            inner.fail_all();
                            return;
                        }
                    }
                }
            });
            Inner {
                name: name.to_string(),
                lvb_len: join.lvb_len,
                node_id: welcome.node_id,
                membership,
                slots: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(1),
                sender,
                _reader: AbortOnDrop(reader),
                _flusher: flusher,
            }
        });
        Ok((Lockspace { inner }, blocking_rx))
    }

    /// The lockspace's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The LVB length.
    pub fn lvb_len(&self) -> u32 {
        self.inner.lvb_len
    }

    /// The local daemon's node id.
    pub fn node_id(&self) -> u32 {
        self.inner.node_id
    }

    /// The membership the daemon announced.
    pub fn membership(&self) -> &Membership {
        &self.inner.membership
    }

    /// The node that masters `name`.
    pub fn master_of(&self, name: &[u8]) -> u32 {
        self.inner.membership.master_of(name)
    }

    fn send(&self, op: pb::op::Kind, idle: bool) -> Result<(), ClientError> {
        self.inner.sender.op(pb::Op { kind: Some(op) }, idle)
    }

    fn start_op(&self, id: u64, op: pb::op::Kind) -> Result<PendingOp, ClientError> {
        let (tx, rx) = oneshot::channel();
        let idle = {
            let mut slots = self.inner.slots.lock();
            let idle = slots.is_empty();
            let slot = slots.entry(id).or_default();
            if slot.op.is_some() {
                return Err(ClientError::Op { code: codes::BUSY.into(), detail: "an operation is in flight on this lock".into() });
            }
            slot.op = Some(tx);
            idle
        };
        if let Err(e) = self.send(op, idle) {
            self.inner.slots.lock().remove(&id);
            return Err(e);
        }
        Ok(PendingOp { lock: LockHandle(id), rx })
    }

    fn lvb_bytes(&self, lvb: Option<&[u8]>) -> Result<Vec<u8>, ClientError> {
        match lvb {
            None => Ok(Vec::new()),
            Some(bytes) if bytes.len() == self.inner.lvb_len as usize => Ok(bytes.to_vec()),
            Some(bytes) => Err(ClientError::Invalid(format!("LVB of {} bytes in a lockspace of {}", bytes.len(), self.inner.lvb_len))),
        }
    }

    /// Requests a new lock on `name` (1 to 64 bytes) in `mode`.
    pub fn request(&self, name: &[u8], mode: Mode, flags: Flags) -> Result<PendingOp, ClientError> {
        if name.is_empty() || name.len() > crate::engine::RESOURCE_NAME_MAX_BYTES {
            return Err(ClientError::Invalid(format!("resource names are 1 to 64 bytes, got {}", name.len())));
        }
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let request = pb::LockRequest { client_lock_id: id, name: name.to_vec(), mode: mode as i32, flags: flags.0, lvb: Vec::new() };
        self.start_op(id, pb::op::Kind::Request(request))
    }

    /// Requests a lock and waits for its completion. A completion other than
    /// `Granted` (e.g. `TryAgain` with NOQUEUE) is returned as is.
    pub async fn lock(&self, name: &[u8], mode: Mode, flags: Flags) -> Result<(LockHandle, Completion), ClientError> {
        let pending = self.request(name, mode, flags)?;
        let lock = pending.lock;
        Ok((lock, pending.await?))
    }

    /// Converts a granted lock to `mode`. `lvb` is the value written by a VALBLK
    /// down-conversion from PW/EX (exactly `lvb_len` bytes).
    pub fn convert(&self, lock: LockHandle, mode: Mode, flags: Flags, lvb: Option<&[u8]>) -> Result<PendingOp, ClientError> {
        let convert = pb::ConvertRequest { client_lock_id: lock.0, mode: mode as i32, flags: flags.0, lvb: self.lvb_bytes(lvb)? };
        self.start_op(lock.0, pb::op::Kind::Convert(convert))
    }

    /// Unlocks a granted lock; with VALBLK a PW/EX holder writes `lvb`.
    pub fn unlock(&self, lock: LockHandle, flags: Flags, lvb: Option<&[u8]>) -> Result<PendingOp, ClientError> {
        let unlock = pb::UnlockRequest { client_lock_id: lock.0, flags: flags.0, lvb: self.lvb_bytes(lvb)? };
        self.start_op(lock.0, pb::op::Kind::Unlock(unlock))
    }

    /// Cancels the lock's queued request or conversion.
    pub fn cancel(&self, lock: LockHandle) -> Result<PendingCancel, ClientError> {
        let (tx, rx) = oneshot::channel();
        {
            let mut slots = self.inner.slots.lock();
            let slot = slots.entry(lock.0).or_default();
            if slot.cancel.is_some() {
                return Err(ClientError::Op { code: codes::BUSY.into(), detail: "a cancel is in flight on this lock".into() });
            }
            slot.cancel = Some(tx);
        }
        self.send(pb::op::Kind::Cancel(pb::CancelRequest { client_lock_id: lock.0 }), false)?;
        Ok(PendingCancel { rx })
    }
}

impl Inner {
    fn dispatch(&self, events: Vec<pb::Event>, blocking: &mpsc::UnboundedSender<Blocking>) {
        let mut slots = self.slots.lock();
        for event in events {
            match event.kind {
                Some(pb::event::Kind::Completion(c)) => {
                    let completion = completion_from_wire(&c);
                    let Some(slot) = slots.get_mut(&c.client_lock_id) else { continue };
                    if completion.as_ref().is_ok_and(|c| c.status == Status::Cancelled) {
                        if let Some(cancel) = slot.cancel.take() {
                            let _ = cancel.send(Ok(true));
                        }
                    }
                    if let Some(op) = slot.op.take() {
                        let _ = op.send(completion);
                    }
                    if slot.cancel.is_none() {
                        slots.remove(&c.client_lock_id);
                    }
                }
                Some(pb::event::Kind::Blocking(b)) => {
                    if let Some(mode) = mode_from_wire(b.mode) {
                        let _ = blocking.send(Blocking { lock: LockHandle(b.client_lock_id), mode });
                    }
                }
                Some(pb::event::Kind::Failed(f)) => {
                    let Some(slot) = slots.get_mut(&f.client_lock_id) else { continue };
                    if f.op == pb::OpKind::OpCancel as i32 {
                        if let Some(cancel) = slot.cancel.take() {
                            let result = if f.error == codes::BUSY { Ok(false) } else { Err(ClientError::Op { code: f.error, detail: f.detail }) };
                            let _ = cancel.send(result);
                        }
                    } else if let Some(op) = slot.op.take() {
                        let _ = op.send(Err(ClientError::Op { code: f.error, detail: f.detail }));
                    }
                    if slot.op.is_none() && slot.cancel.is_none() {
                        slots.remove(&f.client_lock_id);
                    }
                }
                None => {}
            }
        }
    }

    fn fail_all(&self) {
        for (_, slot) in self.slots.lock().drain() {
            if let Some(op) = slot.op {
                let _ = op.send(Err(ClientError::Disconnected));
            }
            if let Some(cancel) = slot.cancel {
                let _ = cancel.send(Err(ClientError::Disconnected));
            }
        }
    }
}

fn completion_from_wire(c: &pb::Completion) -> Result<Completion, ClientError> {
    let status = status_from_wire(c.status).ok_or_else(|| ClientError::Protocol(format!("unknown status {}", c.status)))?;
    let mode = if c.lock_gone {
        None
    } else {
        Some(mode_from_wire(c.granted_mode).ok_or_else(|| ClientError::Protocol(format!("unknown mode {}", c.granted_mode)))?)
    };
    let sb_flags = SbFlags(c.sb_flags);
    let lvb = c.has_lvb.then(|| LvbValue { bytes: c.lvb.clone(), seq: c.lvb_seq, valid: !sb_flags.contains(SbFlags::VALNOTVALID) });
    Ok(Completion { status, mode, sb_flags, lvb })
}
