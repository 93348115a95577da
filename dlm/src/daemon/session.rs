//! A client session: the server side of one client connection, whatever its
//! transport. [`Session`] is the state machine (handshake, operations, events);
//! [`SessionStream`] drives it over a transport's source of client messages:
//! the `Dlm.Session` gRPC stream, or a framed connection (`framed.rs`).
//!
//! The work happens when the answer stream is polled (see `responder.rs`).
//!
//! Invariants:
//! - Nothing but a Hello with a valid proof is accepted before Welcome.
//! - `client_locks` maps every lock id the client may use to its local lock id;
//!   entries leave when the lock's end is delivered to the client.
//! - `outstanding` counts requests, conversions and unlocks in flight, at most
//!   `max_outstanding_per_session`.
//! - Dropping the session (client gone) purges all its locks.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::mpsc::UnboundedReceiver;
use tokio_stream::Stream;
use tonic::Streaming;

use super::responder::{hello_deadline, hello_overdue, poll_answer, Responder, BATCH_MAX};
use super::{query, Daemon, Holder, HolderOp, Lockspace};
use crate::cluster::auth::{nonce, Role};
use crate::engine::{Flags, ResourceName};
use crate::proto::framing::FrameError;
use crate::proto::{self as pb, check_lvb, check_mode, check_name, codes, failed_event, op_lock_id, set_event_lock_id, WireError};

struct Joined {
    ls: Arc<Lockspace>,
    session_id: u64,
    client_name: String,
    client_locks: HashMap<u64, u64>,
    outstanding: usize,
    events: UnboundedReceiver<pb::Event>,
}

enum Phase {
    Hello,
    Admin,
    Joined(Box<Joined>),
}

/// The state of one client session.
pub struct Session {
    daemon: Arc<Daemon>,
    server_nonce: Vec<u8>,
    phase: Phase,
    outbox: VecDeque<pb::ServerMessage>,
    events: Vec<pb::Event>,
    done: bool,
    peer: String,
    /// Until the hello arrives.
    hello_deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// Where a session's client messages come from: a transport.
pub trait ClientSource {
    /// The next message, `None` at the end; `Err` when the input is malformed
    /// ([`FrameError::is_malformed`]: answered with a refusal) or the connection failed.
    fn poll_message(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<pb::ClientMessage, FrameError>>>;

    /// Whether the session has operations in flight: its client then waits for
    /// answers that come from elsewhere (a remote master, another client's unlock),
    /// so nothing is expected from it soon (a framed socket does not poll).
    fn set_waiting_elsewhere(&mut self, _waiting: bool) {}
}

impl ClientSource for Streaming<pb::ClientMessage> {
    fn poll_message(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<pb::ClientMessage, FrameError>>> {
        // gRPC ends the stream on bad input itself: every error is the connection's.
        Pin::new(self).poll_next(cx).map(|next| next.map(|r| r.map_err(|status| FrameError::Io(status.to_string()))))
    }
}

/// A session driven over the transport `I`; its answers are polled as a stream.
pub struct SessionStream<I> {
    session: Session,
    inbound: I,
}

fn server_message(kind: pb::server_message::Kind) -> pb::ServerMessage {
    pb::ServerMessage { kind: Some(kind) }
}

impl<I: ClientSource> SessionStream<I> {
    /// A new session reading from `inbound`; its first answer is the challenge.
    pub fn new(daemon: Arc<Daemon>, inbound: I, peer: String) -> SessionStream<I> {
        SessionStream { session: Session::new(daemon, peer), inbound }
    }

    /// The transport.
    pub fn inbound_mut(&mut self) -> &mut I {
        &mut self.inbound
    }
}

impl Session {
    /// A new session; its first message is the challenge.
    fn new(daemon: Arc<Daemon>, peer: String) -> Session {
        let server_nonce = nonce();
        let timeout_ms = daemon.config.limits.hello_timeout_ms;
        let challenge = pb::Challenge { server_nonce: server_nonce.clone(), cluster_name: daemon.config.cluster_name.clone(), node_id: daemon.node_id };
        Session {
            daemon,
            server_nonce,
            phase: Phase::Hello,
            outbox: VecDeque::from([server_message(pb::server_message::Kind::Challenge(challenge))]),
            events: Vec::new(),
            done: false,
            peer,
            hello_deadline: Some(hello_deadline(timeout_ms)),
        }
    }

    fn refuse(&mut self, reason: &str) {
        tracing::warn!(peer = %self.peer, reason, "client refused");
        self.daemon.count_refused();
        self.outbox.push_back(server_message(pb::server_message::Kind::Refused(pb::Refused { reason: reason.to_string() })));
        self.done = true;
    }

    fn handle(&mut self, message: pb::ClientMessage) {
        match (&mut self.phase, message.kind) {
            (Phase::Hello, Some(pb::client_message::Kind::Hello(hello))) => self.hello(hello),
            (Phase::Hello, _) => self.refuse("the first message must be a hello with the cluster key's proof"),
            (_, Some(pb::client_message::Kind::Query(q))) => {
                let reply = query::answer(&self.daemon, q);
                self.outbox.push_back(server_message(pb::server_message::Kind::Reply(reply)));
            }
            (Phase::Joined(joined), Some(pb::client_message::Kind::Ops(batch))) => {
                for op in batch.ops {
                    if let Err((id, kind, error)) = handle_op(&self.daemon, joined, op) {
                        let mut event = failed_event(kind, &error);
                        set_event_lock_id(&mut event, id);
                        self.events.push(event);
                    }
                }
            }
            (Phase::Admin, Some(pb::client_message::Kind::Ops(batch))) => {
                for op in batch.ops {
                    let (id, kind) = op_lock_id(&op).unwrap_or((0, pb::OpKind::OpRequest));
                    let mut event = failed_event(kind, &WireError::new(codes::PROTOCOL, "join a lockspace before locking"));
                    set_event_lock_id(&mut event, id);
                    self.events.push(event);
                }
            }
            (_, _) => {
                let reply = pb::QueryReply { kind: Some(pb::query_reply::Kind::Error("unexpected message".into())) };
                self.outbox.push_back(server_message(pb::server_message::Kind::Reply(reply)));
            }
        }
    }

    fn hello(&mut self, hello: pb::Hello) {
        self.hello_deadline = None;
        let daemon = self.daemon.clone();
        let cluster = &daemon.config.cluster_name;
        if !daemon.key.verify(Role::Client, cluster, &self.server_nonce, &hello.client_nonce, &hello.proof) {
            return self.refuse("authentication refused: wrong cluster key");
        }
        let sessions = daemon.sessions.fetch_add(1, Ordering::Relaxed);
        if sessions >= daemon.config.limits.max_sessions {
            daemon.sessions.fetch_sub(1, Ordering::Relaxed);
            return self.refuse("too many sessions");
        }
        let session_id = daemon.next_session.fetch_add(1, Ordering::Relaxed);
        let client_name: String = hello.client_name.chars().take(64).collect();
        if hello.lockspace.is_empty() {
            self.phase = Phase::Admin;
        } else {
            let ls = match daemon.lockspace(&hello.lockspace, hello.lvb_len) {
                Ok(ls) => ls,
                Err(reason) => {
                    daemon.sessions.fetch_sub(1, Ordering::Relaxed);
                    self.outbox.push_back(server_message(pb::server_message::Kind::Refused(pb::Refused { reason })));
                    self.done = true;
                    return;
                }
            };
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            ls.state.lock().sessions.insert(
                session_id,
                super::lockspace::SessionLink { events: tx, client_name: client_name.clone(), filesystem: hello.filesystem },
            );
            tracing::info!(lockspace = %ls.name, session = session_id, client = %client_name, peer = %self.peer, "client joined");
            self.phase = Phase::Joined(Box::new(Joined {
                ls,
                session_id,
                client_name,
                client_locks: HashMap::new(),
                outstanding: 0,
                events: rx,
            }));
        }
        let welcome = pb::Welcome {
            proof: daemon.key.prove(Role::Server, cluster, &self.server_nonce, &hello.client_nonce),
            node_id: daemon.node_id,
            epoch: daemon.membership.epoch,
            members: daemon
                .config
                .nodes
                .iter()
                .map(|n| pb::Member { node_id: n.id, name: n.name.clone(), weight: n.weight })
                .collect(),
            session_id,
            incarnation: daemon.incarnation,
        };
        self.outbox.push_back(server_message(pb::server_message::Kind::Welcome(welcome)));
    }
}

type OpFailure = (u64, pb::OpKind, WireError);

/// Checks one operation of a joined client and hands it to the lockspace.
fn handle_op(daemon: &Daemon, joined: &mut Joined, op: pb::Op) -> Result<(), OpFailure> {
    let (id, kind) = op_lock_id(&op).ok_or((0, pb::OpKind::OpRequest, WireError::new(codes::PROTOCOL, "empty op")))?;
    let fail = |code: &'static str, detail: &str| (id, kind, WireError::new(code, detail));
    let limits = &daemon.config.limits;
    let tracked = !matches!(kind, pb::OpKind::OpCancel);
    if tracked && joined.outstanding >= limits.max_outstanding_per_session {
        return Err(fail(codes::LIMIT, "too many operations in flight"));
    }
    let ls = joined.ls.clone();
    let (local, op) = match op.kind.expect("op_lock_id checked") {
        pb::op::Kind::Request(r) => {
            if joined.client_locks.contains_key(&id) {
                return Err(fail(codes::DUPLICATE_LOCK, "lock id in use"));
            }
            if joined.client_locks.len() >= limits.max_locks_per_session {
                return Err(fail(codes::LIMIT, "too many locks in this session"));
            }
            let name: ResourceName = check_name(&r.name).map_err(|e| (id, kind, e))?;
            let mode = check_mode(r.mode).map_err(|e| (id, kind, e))?;
            let local = daemon.next_lock_id();
            let holder = Holder {
                session: joined.session_id,
                client_lock_id: id,
                name,
                master: daemon.membership.master_of(name.as_bytes()),
                granted: None,
                pending: Some(pb::OpKind::OpRequest),
                lvb: None,
                writing: None,
            };
            let mut state = ls.state.lock();
            state.counters.requests += 1;
            state.holders.insert(local, holder);
            joined.client_locks.insert(id, local);
            joined.outstanding += 1;
            daemon.submit(&ls, &mut state, local, HolderOp::Request { mode, flags: Flags(r.flags) });
            return Ok(());
        }
        pb::op::Kind::Convert(c) => {
            let local = *joined.client_locks.get(&id).ok_or_else(|| fail(codes::UNKNOWN_LOCK, "no such lock"))?;
            let mode = check_mode(c.mode).map_err(|e| (id, kind, e))?;
            let lvb = check_lvb(&c.lvb, ls.lvb_len).map_err(|e| (id, kind, e))?;
            (local, HolderOp::Convert { mode, flags: Flags(c.flags), lvb })
        }
        pb::op::Kind::Unlock(u) => {
            let local = *joined.client_locks.get(&id).ok_or_else(|| fail(codes::UNKNOWN_LOCK, "no such lock"))?;
            let lvb = check_lvb(&u.lvb, ls.lvb_len).map_err(|e| (id, kind, e))?;
            (local, HolderOp::Unlock { flags: Flags(u.flags), lvb })
        }
        pb::op::Kind::Cancel(_) => {
            let local = *joined.client_locks.get(&id).ok_or_else(|| fail(codes::UNKNOWN_LOCK, "no such lock"))?;
            (local, HolderOp::Cancel)
        }
        pb::op::Kind::Purge(_) => return Err(fail(codes::PROTOCOL, "purge is for peer links")),
    };
    let mut state = ls.state.lock();
    let holder = state.holders.get_mut(&local).ok_or_else(|| fail(codes::UNKNOWN_LOCK, "the lock has ended"))?;
    if tracked {
        if holder.pending.is_some() {
            return Err(fail(codes::BUSY, "an operation is in flight on this lock"));
        }
        holder.pending = Some(kind);
        joined.outstanding += 1;
    }
    match op {
        HolderOp::Convert { .. } => state.counters.converts += 1,
        HolderOp::Unlock { .. } => state.counters.unlocks += 1,
        _ => state.counters.cancels += 1,
    }
    daemon.submit(&ls, &mut state, local, op);
    Ok(())
}

impl Joined {
    /// Keeps the session's books as an event passes to the client.
    fn observe(&mut self, event: &pb::Event) {
        let (id, ends_op, gone) = match event.kind.as_ref() {
            Some(pb::event::Kind::Completion(c)) => (c.client_lock_id, true, c.lock_gone),
            Some(pb::event::Kind::Failed(f)) => {
                let cancel = f.op == pb::OpKind::OpCancel as i32;
                (f.client_lock_id, !cancel, f.op == pb::OpKind::OpRequest as i32)
            }
            _ => return,
        };
        if ends_op {
            self.outstanding = self.outstanding.saturating_sub(1);
        }
        if gone {
            self.client_locks.remove(&id);
        }
    }
}

impl<I: ClientSource> Responder for SessionStream<I> {
    type Inbound = pb::ClientMessage;
    type Outbound = pb::ServerMessage;

    fn poll_inbound(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<pb::ClientMessage, tonic::Status>>> {
        let session = &mut self.session;
        if matches!(session.phase, Phase::Hello) && hello_overdue(&mut session.hello_deadline, cx) {
            session.refuse("no hello in time");
            return Poll::Pending;
        }
        self.inbound.set_waiting_elsewhere(matches!(&session.phase, Phase::Joined(joined) if joined.outstanding > 0));
        match self.inbound.poll_message(cx) {
            Poll::Ready(Some(Err(error))) if error.is_malformed() => {
                session.refuse(&error.to_string());
                Poll::Pending
            }
            other => other.map(|next| next.map(|r| r.map_err(|e| tonic::Status::unavailable(e.to_string())))),
        }
    }

    fn handle(&mut self, message: pb::ClientMessage) {
        self.session.handle(message);
    }

    fn drain_events(&mut self, cx: &mut Context<'_>) -> usize {
        let session = &mut self.session;
        if let Phase::Joined(joined) = &mut session.phase {
            while session.events.len() < BATCH_MAX {
                match joined.events.poll_recv(cx) {
                    Poll::Ready(Some(event)) => {
                        joined.observe(&event);
                        session.events.push(event);
                    }
                    _ => break,
                }
            }
        }
        session.events.len()
    }

    fn next_single(&mut self) -> Option<pb::ServerMessage> {
        self.session.outbox.pop_front()
    }

    fn take_batch(&mut self) -> Option<pb::ServerMessage> {
        if self.session.events.is_empty() {
            return None;
        }
        let events = std::mem::take(&mut self.session.events);
        Some(server_message(pb::server_message::Kind::Events(pb::EventBatch { events })))
    }

    fn done(&self) -> bool {
        self.session.done
    }

    fn finish(&mut self, why: Option<tonic::Status>) {
        if let Some(status) = why {
            tracing::debug!(peer = %self.session.peer, status = %crate::error_line::status_line(&status), "session connection error");
        }
        self.session.done = true;
    }
}

impl<I: ClientSource + Unpin> Stream for SessionStream<I> {
    type Item = Result<pb::ServerMessage, tonic::Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        poll_answer(self.get_mut(), cx)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let phase = std::mem::replace(&mut self.phase, Phase::Hello);
        match phase {
            Phase::Hello => return,
            Phase::Admin => {}
            Phase::Joined(joined) => {
                let ls = &joined.ls;
                let mut state = ls.state.lock();
                state.sessions.remove(&joined.session_id);
                let mut purged = 0u64;
                for local in joined.client_locks.values() {
                    if state.holders.contains_key(local) {
                        self.daemon.submit(ls, &mut state, *local, HolderOp::Purge);
                        state.holders.remove(local);
                        purged += 1;
                    }
                }
                state.counters.purged += purged;
                tracing::info!(lockspace = %ls.name, session = joined.session_id, client = %joined.client_name, purged, "client left; its locks were released");
            }
        }
        self.daemon.sessions.fetch_sub(1, Ordering::Relaxed);
    }
}
