//! Reaching the local daemon: addresses, transports (framed, the default, or gRPC:
//! the channel and the outbound batching stream), and the authentication handshake
//! shared by lockspace and admin sessions over either transport.
//!
//! Every wait here is bounded: connecting by `connect_timeout`, everything from
//! then until the welcome by `handshake_timeout` (docs/dlm.md, "Timeouts"). The
//! operations of a session are not: a lock may wait as long as its holder keeps it.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use tokio_stream::Stream;
use tonic::transport::{Channel, Endpoint};
use tonic::Streaming;

use super::framed::{FramedReader, FramedWriter};
use super::ClientError;
use crate::cluster::auth::{nonce, ClusterKey, Role};
use crate::cluster::config::{ClientConfig, Config, TuningConfig};
use crate::error_line::error_chain;
use crate::proto::framing::FrameError;
use crate::proto::{self as pb, dlm_client::DlmClient};

const BATCH_MAX: usize = 1024;

/// Where the local daemon listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DaemonAddress {
    /// TCP, e.g. `127.0.0.1:21064`.
    Tcp(std::net::SocketAddr),
    /// A unix socket, written `unix:/path` or `/path`.
    Unix(PathBuf),
}

impl FromStr for DaemonAddress {
    type Err = String;
    fn from_str(text: &str) -> Result<DaemonAddress, String> {
        if let Some(path) = text.strip_prefix("unix:") {
            return Ok(DaemonAddress::Unix(path.into()));
        }
        if text.starts_with('/') {
            return Ok(DaemonAddress::Unix(text.into()));
        }
        text.parse().map(DaemonAddress::Tcp).map_err(|e| format!("{text:?} is neither host:port nor unix:/path ({e})"))
    }
}

impl std::fmt::Display for DaemonAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DaemonAddress::Tcp(a) => write!(f, "{a}"),
            DaemonAddress::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// How a client talks to its daemon (docs/dlm.md, "Transports"). Both carry the
/// same messages and the same session; the daemon takes both on every listener.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Transport {
    /// Length-delimited protobuf frames on the bare socket: the lowest latency.
    #[default]
    Framed,
    /// The `Dlm.Session` gRPC stream (HTTP/2).
    Grpc,
}

impl FromStr for Transport {
    type Err = String;
    fn from_str(text: &str) -> Result<Transport, String> {
        match text {
            "framed" => Ok(Transport::Framed),
            "grpc" => Ok(Transport::Grpc),
            _ => Err(format!("{text:?} is not a transport (framed, grpc)")),
        }
    }
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Transport::Framed => "framed",
            Transport::Grpc => "grpc",
        })
    }
}

/// How to reach and authenticate to the local daemon.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    /// The daemon.
    pub address: DaemonAddress,
    /// The cluster key.
    pub key: ClusterKey,
    /// Shown in the daemon's logs and dumps.
    pub client_name: String,
    /// Framed (the default) or gRPC.
    pub transport: Transport,
    /// Framed transport: how long the reader polls the socket before it sleeps
    /// (the configuration's `[tuning] poll_us`; zero: never).
    pub poll: Duration,
    /// Longest time to connect (the configuration's `[client] connect_timeout_ms`).
    pub connect_timeout: Duration,
    /// Longest time the daemon may take to answer once connected: its challenge and
    /// welcome, and the answer to a query (`[client] handshake_timeout_ms`).
    pub handshake_timeout: Duration,
}

impl ConnectOptions {
    /// Options with the defaults of a configuration file that sets none.
    pub fn new(address: DaemonAddress, key: ClusterKey, client_name: &str) -> ConnectOptions {
        let client = ClientConfig::default();
        ConnectOptions {
            address,
            key,
            client_name: client_name.to_string(),
            transport: Transport::default(),
            poll: TuningConfig::default().poll(),
            connect_timeout: client.connect_timeout(),
            handshake_timeout: client.handshake_timeout(),
        }
    }

    /// Takes the polling window and the timeouts of a configuration.
    pub fn tuned_by(mut self, config: &Config) -> ConnectOptions {
        self.poll = config.tuning.poll();
        self.connect_timeout = config.client.connect_timeout();
        self.handshake_timeout = config.client.handshake_timeout();
        self
    }

    /// Options for node `node_id` of a configuration: its unix socket if it has one,
    /// else its TCP address, and the cluster key file.
    pub fn from_config(config: &Config, node_id: u32, client_name: &str) -> Result<ConnectOptions, ClientError> {
        let node = config.node(node_id).ok_or_else(|| ClientError::Connect(format!("node {node_id} is not in the configuration")))?;
        let address = match &node.client_socket {
            Some(path) => DaemonAddress::Unix(path.clone()),
            None => DaemonAddress::Tcp(node.address),
        };
        let key = ClusterKey::load(&config.key_file).map_err(|e| ClientError::Connect(e.to_string()))?;
        Ok(ConnectOptions::new(address, key, client_name).tuned_by(config))
    }
}

/// A duration for people: "5 s", "0.25 s".
pub(crate) fn seconds(duration: Duration) -> String {
    format!("{} s", duration.as_secs_f64())
}

async fn channel(address: &DaemonAddress, timeout: Duration) -> Result<Channel, ClientError> {
    let failed = |e: tonic::transport::Error| ClientError::Connect(format!("connecting to {address}: {}", error_chain(&e)));
    match address {
        DaemonAddress::Tcp(addr) => Endpoint::from_shared(format!("http://{addr}"))
            .map_err(failed)?
            .tcp_nodelay(true)
            .connect_timeout(timeout)
            .connect()
            .await
            .map_err(failed),
        DaemonAddress::Unix(path) => {
            let path: PathBuf = path.clone();
            Endpoint::from_static("http://localhost")
                .connect_timeout(timeout)
                .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
                    let path = path.clone();
                    async move { Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tokio::net::UnixStream::connect(&path).await?)) }
                }))
                .await
                .map_err(failed)
        }
    }
}

/// What the client sends: whole messages, or single operations that the stream
/// packs into batches.
pub(crate) enum Outbound {
    Message(pb::ClientMessage),
    Op(pb::Op),
}

/// The request stream of a session: packs every operation that is ready into one batch.
pub(crate) struct OutboundStream {
    rx: UnboundedReceiver<Outbound>,
    held: VecDeque<pb::ClientMessage>,
}

impl Stream for OutboundStream {
    type Item = pb::ClientMessage;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<pb::ClientMessage>> {
        let this = self.get_mut();
        if let Some(message) = this.held.pop_front() {
            return Poll::Ready(Some(message));
        }
        let mut ops = Vec::new();
        while ops.len() < BATCH_MAX {
            match this.rx.poll_recv(cx) {
                Poll::Ready(Some(Outbound::Op(op))) => ops.push(op),
                Poll::Ready(Some(Outbound::Message(message))) => {
                    if ops.is_empty() {
                        return Poll::Ready(Some(message));
                    }
                    this.held.push_back(message);
                    break;
                }
                Poll::Ready(None) if ops.is_empty() => return Poll::Ready(None),
                Poll::Ready(None) | Poll::Pending => break,
            }
        }
        if ops.is_empty() {
            return Poll::Pending;
        }
        Poll::Ready(Some(pb::ClientMessage { kind: Some(pb::client_message::Kind::Ops(pb::OpBatch { ops })) }))
    }
}

/// The sending side of a session.
pub(crate) enum Sender {
    Grpc(UnboundedSender<Outbound>),
    Framed(Arc<FramedWriter>),
}

impl Sender {
    /// Sends a whole message.
    pub fn message(&self, message: pb::ClientMessage) -> Result<(), ClientError> {
        match self {
            Sender::Grpc(tx) => tx.send(Outbound::Message(message)).map_err(|_| ClientError::Disconnected),
            Sender::Framed(writer) => writer.send(Outbound::Message(message), true),
        }
    }

    /// Sends one operation; `idle`: nothing else is in flight, so nothing is to be
    /// gained by waiting for other operations to share its write.
    pub fn op(&self, op: pb::Op, idle: bool) -> Result<(), ClientError> {
        match self {
            Sender::Grpc(tx) => tx.send(Outbound::Op(op)).map_err(|_| ClientError::Disconnected),
            Sender::Framed(writer) => writer.send(Outbound::Op(op), idle),
        }
    }
}

/// The receiving side of a session.
pub(crate) enum Receiver {
    Grpc(Streaming<pb::ServerMessage>),
    /// With the writer, closed when the connection ends.
    Framed(FramedReader, Arc<FramedWriter>),
}

impl Receiver {
    /// The next message; `None` when the daemon ended the session.
    pub async fn message(&mut self) -> Result<Option<pb::ServerMessage>, ClientError> {
        match self {
            Receiver::Grpc(inbound) => inbound.message().await.map_err(|status| ClientError::Connect(status.message().to_string())),
            Receiver::Framed(reader, writer) => {
                let next = reader.next_message().await.transpose().map_err(|e| ClientError::Protocol(e.to_string()));
                if !matches!(next, Ok(Some(_))) {
                    writer.close();
                }
                next
            }
        }
    }
}

/// A task that ends when this handle is dropped.
pub(crate) struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// An authenticated session.
pub(crate) struct Session {
    pub sender: Sender,
    pub receiver: Receiver,
    pub welcome: pb::Welcome,
    /// The framed transport's flusher task.
    pub flusher: Option<AbortOnDrop>,
}

/// Opens a session over the chosen transport: challenge, hello with our proof,
/// welcome with the daemon's proof. Connecting is bounded by the connect timeout,
/// the rest by the handshake timeout.
pub(crate) async fn open_session(options: &ConnectOptions, lockspace: &str, lvb_len: u32, filesystem: bool) -> Result<Session, ClientError> {
    let mut session = match options.transport {
        Transport::Grpc => {
            let channel = channel(&options.address, options.connect_timeout).await?;
            let mut client = DlmClient::new(channel).max_decoding_message_size(crate::MESSAGE_MAX_BYTES);
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            let outbound = OutboundStream { rx, held: VecDeque::new() };
            // Only this step waits for the daemon: the channel is connected.
            let inbound = within_handshake(options, client.session(outbound))
                .await?
                .map_err(|s| ClientError::Connect(format!("{}: {}", options.address, s.message())))?
                .into_inner();
            Session { sender: Sender::Grpc(tx), receiver: Receiver::Grpc(inbound), welcome: pb::Welcome::default(), flusher: None }
        }
        Transport::Framed => {
            let (writer, reader, flusher) =
                super::framed::connect(&options.address, options.poll, options.connect_timeout).await?;
            // Made at once so that a failed handshake stops the flusher.
            let (sender, receiver) = (Sender::Framed(writer.clone()), Receiver::Framed(reader, writer));
            Session { sender, receiver, welcome: pb::Welcome::default(), flusher: Some(AbortOnDrop(flusher)) }
        }
    };
    within_handshake(options, authenticate(&mut session, options, lockspace, lvb_len, filesystem)).await??;
    Ok(session)
}

/// Awaits `step`, a wait for the daemon to answer, bounded by the handshake timeout.
pub(crate) async fn within_handshake<T>(options: &ConnectOptions, step: impl std::future::Future<Output = T>) -> Result<T, ClientError> {
    tokio::time::timeout(options.handshake_timeout, step)
        .await
        .map_err(|_| ClientError::NoAnswer { address: options.address.to_string(), after: seconds(options.handshake_timeout) })
}

/// The handshake on a connected session (see [`open_session`]).
async fn authenticate(session: &mut Session, options: &ConnectOptions, lockspace: &str, lvb_len: u32, filesystem: bool) -> Result<(), ClientError> {
    let challenge = match first_kind(&mut session.receiver, &options.address).await? {
        pb::server_message::Kind::Challenge(c) => c,
        other => return Err(ClientError::Protocol(format!("expected a challenge, got {other:?}"))),
    };
    let client_nonce = nonce();
    let hello = pb::Hello {
        proof: options.key.prove(Role::Client, &challenge.cluster_name, &challenge.server_nonce, &client_nonce),
        client_nonce: client_nonce.clone(),
        lockspace: lockspace.to_string(),
        lvb_len,
        client_name: options.client_name.clone(),
        filesystem,
        ..Default::default()
    };
    session.sender.message(pb::ClientMessage { kind: Some(pb::client_message::Kind::Hello(hello)) })?;
    let welcome = match next_kind(&mut session.receiver).await? {
        pb::server_message::Kind::Welcome(w) => w,
        pb::server_message::Kind::Refused(r) => return Err(ClientError::Refused(r.reason)),
        other => return Err(ClientError::Protocol(format!("expected a welcome, got {other:?}"))),
    };
    if !options.key.verify(Role::Server, &challenge.cluster_name, &challenge.server_nonce, &client_nonce, &welcome.proof) {
        return Err(ClientError::Refused("the daemon did not prove the cluster key".into()));
    }
    session.welcome = welcome;
    Ok(())
}

/// The daemon's first message: what cannot be one says what answered instead.
async fn first_kind(receiver: &mut Receiver, address: &DaemonAddress) -> Result<pb::server_message::Kind, ClientError> {
    let Receiver::Framed(reader, _) = receiver else { return next_kind(receiver).await };
    match reader.next_message().await {
        Some(Ok(pb::ServerMessage { kind: Some(kind) })) => Ok(kind),
        Some(Ok(pb::ServerMessage { kind: None })) => Err(ClientError::NotDaemon { address: address.to_string(), answer: "an empty message".into() }),
        Some(Err(FrameError::Io(e))) => Err(ClientError::Connect(format!("{address}: {e}"))),
        Some(Err(_)) => Err(ClientError::NotDaemon { address: address.to_string(), answer: describe_answer(reader.buffered()) }),
        None => Err(ClientError::Connect(format!("{address} closed the connection without answering (is it an rgfs-dlmd?)"))),
    }
}

/// What the other end sent instead of a challenge, for people: "HTTP", its first
/// line if it is text, else its first bytes in hex.
fn describe_answer(bytes: &[u8]) -> String {
    if bytes.starts_with(b"HTTP/") {
        return "HTTP".into();
    }
    let head = &bytes[..bytes.len().min(32)];
    let line = head.split(|&b| b == b'\r' || b == b'\n').next().unwrap_or_default();
    if !line.is_empty() && line.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
        return format!("the text {:?}", String::from_utf8_lossy(line));
    }
    let hex: Vec<String> = head.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!("the bytes {}", hex.join(" "))
}

/// The next message's content; a closed stream is `Disconnected`.
pub(crate) async fn next_kind(receiver: &mut Receiver) -> Result<pb::server_message::Kind, ClientError> {
    loop {
        match receiver.message().await? {
            Some(pb::ServerMessage { kind: Some(kind) }) => return Ok(kind),
            Some(_) => continue,
            None => return Err(ClientError::Disconnected),
        }
    }
}

/// Reads a key file into options with the default tuning and timeouts (helper for tools).
pub fn options_with_key_file(address: DaemonAddress, key_file: &Path, client_name: &str) -> Result<ConnectOptions, ClientError> {
    let key = ClusterKey::load(key_file).map_err(|e| ClientError::Connect(e.to_string()))?;
    Ok(ConnectOptions::new(address, key, client_name))
}

#[cfg(test)]
mod tests {
    use super::describe_answer;

    #[test]
    fn answers_that_are_not_the_protocol_are_described() {
        assert_eq!(describe_answer(b"HTTP/1.0 400 Bad Request\r\n"), "HTTP");
        assert_eq!(describe_answer(b"SSH-2.0-OpenSSH_9.2\r\n"), "the text \"SSH-2.0-OpenSSH_9.2\"");
        assert_eq!(describe_answer(&[0x16, 0x03, 0x01, 0xff]), "the bytes 16 03 01 ff");
    }
}
