//! Peer links between daemons. The holder side opens one `Dlm.Peer` stream to every
//! other node and sends operations of its clients' locks mastered there; the master
//! answers with events on the same stream.
//!
//! Invariants:
//! - Both sides prove the cluster key before anything else; the holder names its
//!   node id and epoch, and a stream of an unknown node or another epoch is refused.
//! - Every batch carries the sender's epoch; a batch of another epoch ends the link.
//! - Operations to one master, and events to one holder, keep their order.
//! - The first messages a holder sends on a new link are its `Rebuild` chunks: its
//!   granted locks mastered there, ending with `last` (docs/dlm.md, "Restarted daemons").

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_stream::Stream;
use tonic::Streaming;

use super::responder::{hello_deadline, hello_overdue, poll_answer, Responder, BATCH_MAX};
use super::Daemon;
use crate::cluster::auth::{nonce, Role};
use crate::proto::{self as pb, dlm_client::DlmClient};

const RECONNECT_MAX_MS: u64 = 1000;
const CONNECT_TIMEOUT_MS: u64 = 2000;
/// Longest wait for a peer's challenge and welcome once connected.
const HANDSHAKE_TIMEOUT_MS: u64 = 5000;

/// Locks per `Rebuild` message (about 100 bytes each, far below the message bound).
const REBUILD_CHUNK: usize = 10_000;

/// Whether connecting failed because nothing listens at the address.
fn connection_refused(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(error);
    while let Some(e) = source {
        if e.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused) {
            return true;
        }
        source = e.source();
    }
    false
}

/// Why a link attempt ended.
#[derive(Debug, PartialEq, Eq)]
enum LinkError {
    /// Connecting or the connection failed: the peer may be starting or gone.
    Unreachable(String),
    /// Nothing listens at the peer's address: its daemon is not running, so none of
    /// its clients hold locks (recovery need not wait for it).
    NotRunning(String),
    /// The peer answered, but refused us or is not what the configuration says
    /// (another key, cluster, epoch): a configuration problem, retrying will not help.
    Refused(String),
}

impl std::fmt::Display for LinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkError::Unreachable(why) | LinkError::NotRunning(why) | LinkError::Refused(why) => f.write_str(why),
        }
    }
}

fn unreachable(status: tonic::Status) -> LinkError {
    LinkError::Unreachable(crate::error_line::status_line(&status))
}

/// A peer message's kind, for logs (its Debug form carries nonces and proofs).
fn kind_name(kind: &pb::peer_message::Kind) -> &'static str {
    match kind {
        pb::peer_message::Kind::Challenge(_) => "challenge",
        pb::peer_message::Kind::Hello(_) => "hello",
        pb::peer_message::Kind::Welcome(_) => "welcome",
        pb::peer_message::Kind::Refused(_) => "refusal",
        pb::peer_message::Kind::Batch(_) => "batch",
        pb::peer_message::Kind::Rebuild(_) => "rebuild",
    }
}

fn peer_message(kind: pb::peer_message::Kind) -> pb::PeerMessage {
    pb::PeerMessage { kind: Some(kind) }
}

/// The master side of a peer stream.
pub struct PeerInbound {
    daemon: Arc<Daemon>,
    inbound: Streaming<pb::PeerMessage>,
    server_nonce: Vec<u8>,
    node: Option<(u32, UnboundedReceiver<pb::PeerEvent>, UnboundedSender<pb::PeerEvent>)>,
    outbox: VecDeque<pb::PeerMessage>,
    events: Vec<pb::PeerEvent>,
    done: bool,
    peer: String,
    /// Until the hello arrives.
    hello_deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl PeerInbound {
    /// A new incoming peer stream; its first message is the challenge.
    pub fn new(daemon: Arc<Daemon>, inbound: Streaming<pb::PeerMessage>, peer: String) -> PeerInbound {
        let server_nonce = nonce();
        let timeout_ms = daemon.config.limits.hello_timeout_ms;
        let challenge = pb::Challenge { server_nonce: server_nonce.clone(), cluster_name: daemon.config.cluster_name.clone(), node_id: daemon.node_id };
        PeerInbound {
            daemon,
            inbound,
            server_nonce,
            node: None,
            outbox: VecDeque::from([peer_message(pb::peer_message::Kind::Challenge(challenge))]),
            events: Vec::new(),
            done: false,
            peer,
            hello_deadline: Some(hello_deadline(timeout_ms)),
        }
    }

    fn refuse(&mut self, reason: String) {
        tracing::warn!(peer = %self.peer, %reason, "peer refused");
        self.daemon.count_refused();
        self.outbox.push_back(peer_message(pb::peer_message::Kind::Refused(pb::Refused { reason })));
        self.done = true;
    }

    fn handle(&mut self, message: pb::PeerMessage) {
        match (&self.node, message.kind) {
            (None, Some(pb::peer_message::Kind::Hello(hello))) => {
                self.hello_deadline = None;
                let daemon = self.daemon.clone();
                let cluster = &daemon.config.cluster_name;
                if !daemon.key.verify(Role::Peer, cluster, &self.server_nonce, &hello.client_nonce, &hello.proof) {
                    return self.refuse("authentication refused: wrong cluster key".into());
                }
                if hello.node_id == daemon.node_id || !daemon.membership.contains(hello.node_id) {
                    return self.refuse(format!("node {} is not a peer", hello.node_id));
                }
                if hello.epoch != daemon.membership.epoch {
                    return self.refuse(format!("epoch {} is not ours ({})", hello.epoch, daemon.membership.epoch));
                }
                let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                daemon.to_holder.lock().insert(hello.node_id, tx.clone());
                daemon.set_link(hello.node_id, |l| l.incoming = true);
                tracing::info!(node = hello.node_id, peer = %self.peer, "incoming peer link up");
                self.node = Some((hello.node_id, rx, tx));
                let proof = daemon.key.prove(Role::Server, cluster, &self.server_nonce, &hello.client_nonce);
                let epoch = daemon.membership.epoch;
                let welcome = pb::Welcome { proof, node_id: daemon.node_id, epoch, members: vec![], session_id: 0, incarnation: daemon.incarnation };
                self.outbox.push_back(peer_message(pb::peer_message::Kind::Welcome(welcome)));
            }
            (None, _) => self.refuse("the first message must be a hello with the cluster key's proof".into()),
            (Some((node, _, _)), Some(pb::peer_message::Kind::Batch(batch))) => {
                let node = *node;
                if batch.epoch != self.daemon.membership.epoch {
                    return self.refuse(format!("batch of epoch {} from node {node}", batch.epoch));
                }
                for op in batch.ops {
                    self.daemon.apply_peer_op(node, op);
                }
            }
            (Some((node, _, _)), Some(pb::peer_message::Kind::Rebuild(rebuild))) => {
                let node = *node;
                if rebuild.epoch != self.daemon.membership.epoch {
                    return self.refuse(format!("rebuild of epoch {} from node {node}", rebuild.epoch));
                }
                self.daemon.apply_rebuild(node, rebuild);
            }
            (Some((node, _, _)), _) => {
                let node = *node;
                self.refuse(format!("unexpected message from node {node}"));
            }
        }
    }
}

impl Responder for PeerInbound {
    type Inbound = pb::PeerMessage;
    type Outbound = pb::PeerMessage;

    fn poll_inbound(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<pb::PeerMessage, tonic::Status>>> {
        if self.node.is_none() && hello_overdue(&mut self.hello_deadline, cx) {
            self.refuse("no hello in time".into());
            return Poll::Pending;
        }
        Pin::new(&mut self.inbound).poll_next(cx)
    }

    fn handle(&mut self, message: pb::PeerMessage) {
        PeerInbound::handle(self, message);
    }

    fn drain_events(&mut self, cx: &mut Context<'_>) -> usize {
        if let Some((_, rx, _)) = &mut self.node {
            while self.events.len() < BATCH_MAX {
                match rx.poll_recv(cx) {
                    Poll::Ready(Some(event)) => self.events.push(event),
                    _ => break,
                }
            }
        }
        self.events.len()
    }

    fn next_single(&mut self) -> Option<pb::PeerMessage> {
        self.outbox.pop_front()
    }

    fn take_batch(&mut self) -> Option<pb::PeerMessage> {
        if self.events.is_empty() {
            return None;
        }
        let events = std::mem::take(&mut self.events);
        let batch = pb::PeerBatch { epoch: self.daemon.membership.epoch, ops: vec![], events };
        Some(peer_message(pb::peer_message::Kind::Batch(batch)))
    }

    fn done(&self) -> bool {
        self.done
    }

    fn finish(&mut self, why: Option<tonic::Status>) {
        if let Some(status) = why {
            tracing::debug!(peer = %self.peer, status = %crate::error_line::status_line(&status), "peer stream error");
        }
        self.done = true;
    }
}

impl Stream for PeerInbound {
    type Item = Result<pb::PeerMessage, tonic::Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        poll_answer(self.get_mut(), cx)
    }
}

impl Drop for PeerInbound {
    fn drop(&mut self) {
        let Some((node, _, tx)) = &self.node else { return };
        let mut links = self.daemon.to_holder.lock();
        if links.get(node).is_some_and(|current| current.same_channel(tx)) {
            links.remove(node);
            drop(links);
            self.daemon.set_link(*node, |l| l.incoming = false);
            // The recovery issue will purge the node's locks here, after fencing.
            tracing::warn!(node, "incoming peer link down; its locks stay until recovery");
        }
    }
}

/// Keeps the link to master `node` up: connects, authenticates, forwards operations,
/// delivers events, and reconnects with backoff. Ends when the daemon drops `ops`.
pub async fn run_outgoing(daemon: Arc<Daemon>, node: u32, mut ops: UnboundedReceiver<pb::PeerOp>) {
    let Some(address) = daemon.config.node(node).map(|n| n.address) else { return };
    let mut backoff_ms = 20;
    // Purges that were waiting when the link went down: sent first on the next link.
    let mut carried: Vec<pb::PeerOp> = Vec::new();
    // The last failure logged as a warning: each problem is told once, not per retry.
    let mut told: Option<LinkError> = None;
    // The master's incarnation on the last link, to tell a restart in the logs.
    let mut seen: Option<u64> = None;
    loop {
        let mut connected = false;
        match link_once(&daemon, node, address, &mut ops, &mut carried, &mut connected, &mut seen).await {
            Ok(()) => return,
            Err(reason) => {
                if connected {
                    told = None;
                    tracing::warn!(node, %reason, "outgoing peer link down");
                    daemon.set_link(node, |l| {
                        l.outgoing = false;
                        l.lost = true;
                    });
                    // Unsent operations fail with their peers below; unsent purges must
                    // still reach the master, or it would keep a departed client's locks.
                    while let Ok(op) = ops.try_recv() {
                        if matches!(op.op.as_ref().and_then(|o| o.kind.as_ref()), Some(pb::op::Kind::Purge(_))) {
                            carried.push(op);
                        }
                    }
                    daemon.fail_pending_on(node);
                    backoff_ms = 20;
                } else {
                    // A peer that refuses us (another key, cluster or epoch) or does not run
                    // cannot hold locks mastered here: our recovery need not wait for it.
                    if matches!(reason, LinkError::Refused(_) | LinkError::NotRunning(_)) {
                        daemon.peer_recovered(node, false);
                    }
                    if matches!(reason, LinkError::Refused(_)) && told.as_ref() != Some(&reason) {
                        tracing::warn!(node, %address, %reason, "outgoing peer link refused; retrying");
                        told = Some(reason);
                    } else {
                        tracing::debug!(node, %reason, "peer not reachable yet");
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(backoff_ms)).await;
        backoff_ms = (backoff_ms * 2).min(RECONNECT_MAX_MS);
    }
}

async fn link_once(
    daemon: &Daemon,
    node: u32,
    address: std::net::SocketAddr,
    ops: &mut UnboundedReceiver<pb::PeerOp>,
    carried: &mut Vec<pb::PeerOp>,
    connected: &mut bool,
    seen: &mut Option<u64>,
) -> Result<(), LinkError> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .map_err(|e| LinkError::Refused(e.to_string()))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS));
    let channel = endpoint.connect().await.map_err(|e| {
        let why = format!("connecting: {}", crate::error_line::error_chain(&e));
        if connection_refused(&e) {
            LinkError::NotRunning(why)
        } else {
            LinkError::Unreachable(why)
        }
    })?;
    let mut client = DlmClient::new(channel).max_decoding_message_size(crate::MESSAGE_MAX_BYTES);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let cluster = &daemon.config.cluster_name;
    let epoch = daemon.membership.epoch;
    let handshake = async {
        let mut inbound = client.peer(UnboundedReceiverStream::new(rx)).await.map_err(unreachable)?.into_inner();
        let server_nonce = match inbound.message().await.map_err(unreachable)?.and_then(|m| m.kind) {
            Some(pb::peer_message::Kind::Challenge(c)) if c.cluster_name == *cluster && c.node_id == node => c.server_nonce,
            Some(pb::peer_message::Kind::Challenge(c)) => {
                return Err(LinkError::Refused(format!("node {} of cluster {:?} answered, not node {node} of {cluster:?}", c.node_id, c.cluster_name)));
            }
            None => return Err(LinkError::Unreachable("closed before the challenge".into())),
            Some(other) => return Err(LinkError::Refused(format!("expected a challenge, got {}", kind_name(&other)))),
        };
        let client_nonce = nonce();
        let hello = pb::Hello {
            proof: daemon.key.prove(Role::Peer, cluster, &server_nonce, &client_nonce),
            client_nonce: client_nonce.clone(),
            node_id: daemon.node_id,
            epoch,
            ..Default::default()
        };
        tx.send(peer_message(pb::peer_message::Kind::Hello(hello))).map_err(|_| LinkError::Unreachable("stream closed".into()))?;
        let incarnation = match inbound.message().await.map_err(unreachable)?.and_then(|m| m.kind) {
            Some(pb::peer_message::Kind::Welcome(w)) if daemon.key.verify(Role::Server, cluster, &server_nonce, &client_nonce, &w.proof) => {
                w.incarnation
            }
            Some(pb::peer_message::Kind::Refused(r)) => return Err(LinkError::Refused(format!("refused by node {node}: {}", r.reason))),
            None => return Err(LinkError::Unreachable("closed during the handshake".into())),
            Some(_) => return Err(LinkError::Refused(format!("node {node} did not prove the cluster key"))),
        };
        Ok((inbound, incarnation))
    };
    let (mut inbound, incarnation) = tokio::time::timeout(Duration::from_millis(HANDSHAKE_TIMEOUT_MS), handshake)
        .await
        .map_err(|_| LinkError::Unreachable(format!("no handshake within {HANDSHAKE_TIMEOUT_MS} ms")))??;
    *connected = true;
    if seen.is_some_and(|old| old != incarnation) {
        tracing::warn!(node, "node restarted (new incarnation); re-sending our locks mastered there");
    }
    *seen = Some(incarnation);
    // Sent on every new link, before any operation: a restarted master needs it, one
    // that kept its state ignores it. No operation reaches this master meanwhile (they
    // fail as unreachable while the link is down), so the copies are current.
    let locks = daemon.rebuild_for(node);
    let mut chunks = locks.chunks(REBUILD_CHUNK).peekable();
    loop {
        let locks = chunks.next().map(<[pb::RebuildLock]>::to_vec).unwrap_or_default();
        let rebuild = pb::Rebuild { epoch, locks, last: chunks.peek().is_none() };
        tx.send(peer_message(pb::peer_message::Kind::Rebuild(rebuild))).map_err(|_| LinkError::Unreachable("stream closed".into()))?;
        if chunks.peek().is_none() {
            break;
        }
    }
    daemon.set_link(node, |l| {
        l.outgoing = true;
        l.lost = false;
    });
    tracing::info!(node, %address, "outgoing peer link up");
    if !carried.is_empty() {
        let batch = pb::PeerBatch { epoch, ops: std::mem::take(carried), events: vec![] };
        tx.send(peer_message(pb::peer_message::Kind::Batch(batch))).map_err(|_| LinkError::Unreachable("stream closed".into()))?;
    }
    loop {
        tokio::select! {
            op = ops.recv() => {
                let Some(op) = op else { return Ok(()) };
                let mut batch = vec![op];
                while batch.len() < BATCH_MAX {
                    match ops.try_recv() {
                        Ok(op) => batch.push(op),
                        Err(_) => break,
                    }
                }
                let message = peer_message(pb::peer_message::Kind::Batch(pb::PeerBatch { epoch, ops: batch, events: vec![] }));
                tx.send(message).map_err(|_| LinkError::Unreachable("stream closed".into()))?;
            }
            message = inbound.message() => match message.map_err(unreachable)?.and_then(|m| m.kind) {
                Some(pb::peer_message::Kind::Batch(batch)) if batch.epoch == epoch => {
                    for event in batch.events {
                        daemon.apply_peer_event(event);
                    }
                }
                Some(pb::peer_message::Kind::Refused(r)) => return Err(LinkError::Refused(format!("refused by node {node}: {}", r.reason))),
                None => return Err(LinkError::Unreachable("closed by the peer".into())),
                Some(pb::peer_message::Kind::Batch(batch)) => {
                    return Err(LinkError::Refused(format!("batch of epoch {} (ours is {epoch})", batch.epoch)));
                }
                Some(other) => return Err(LinkError::Refused(format!("unexpected {}", kind_name(&other)))),
            },
        }
    }
}
