//! The gRPC service and the listeners (TCP for peers and clients, an optional unix
//! socket for local clients). Every listener takes both transports: each new
//! connection is sorted by its first bytes (`framed.rs`); HTTP/2 ones go to tonic.

use std::sync::Arc;

use tokio::net::{TcpListener, UnixListener};
use tokio_stream::wrappers::{TcpListenerStream, UnboundedReceiverStream, UnixListenerStream};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::framed::{sort_connection, Rewind, Socket};
use super::peer::{run_outgoing, PeerInbound};
use super::session::SessionStream;
use super::Daemon;
use crate::proto::{self as pb, dlm_server::DlmServer};

#[derive(Clone)]
struct DlmService {
    daemon: Arc<Daemon>,
}

fn peer_of<T>(request: &Request<T>) -> String {
    request.remote_addr().map(|a| a.to_string()).unwrap_or_else(|| "local socket".into())
}

#[tonic::async_trait]
impl pb::dlm_server::Dlm for DlmService {
    type SessionStream = SessionStream<Streaming<pb::ClientMessage>>;
    type PeerStream = PeerInbound;

    async fn session(&self, request: Request<Streaming<pb::ClientMessage>>) -> Result<Response<Self::SessionStream>, Status> {
        let peer = peer_of(&request);
        Ok(Response::new(SessionStream::new(self.daemon.clone(), request.into_inner(), peer)))
    }

    async fn peer(&self, request: Request<Streaming<pb::PeerMessage>>) -> Result<Response<PeerInbound>, Status> {
        let peer = peer_of(&request);
        Ok(Response::new(PeerInbound::new(self.daemon.clone(), request.into_inner(), peer)))
    }
}

/// Listening sockets of a daemon, bound before it reports ready.
pub struct ServeHandle {
    tcp: TcpListener,
    unix: Option<(UnixListener, std::path::PathBuf)>,
}

impl ServeHandle {
    /// Binds the node's TCP address and, if configured, its unix socket (replacing a
    /// stale socket file).
    pub async fn bind(daemon: &Daemon) -> Result<ServeHandle, String> {
        let node = daemon.config.node(daemon.node_id).ok_or("unknown node")?;
        let tcp = TcpListener::bind(node.address).await.map_err(|e| format!("binding {}: {e}", node.address))?;
        let unix = match &node.client_socket {
            Some(path) => {
                let _ = std::fs::remove_file(path);
                let listener = UnixListener::bind(path).map_err(|e| format!("binding {}: {e}", path.display()))?;
                Some((listener, path.clone()))
            }
            None => None,
        };
        Ok(ServeHandle { tcp, unix })
    }
}

/// Accepts connections from `incoming` and sorts each on its own task: framed ones
/// are served there, gRPC ones sent to `grpc` (tonic's incoming stream).
async fn accept<S>(
    daemon: Arc<Daemon>,
    mut incoming: impl Stream<Item = std::io::Result<S>> + Unpin,
    peer_of: impl Fn(&S) -> String,
    grpc: tokio::sync::mpsc::UnboundedSender<std::io::Result<Rewind<S>>>,
) -> Result<(), String>
where
    S: Socket,
{
    while let Some(connection) = incoming.next().await {
        match connection {
            Ok(io) => {
                let peer = peer_of(&io);
                tokio::spawn(sort_connection(daemon.clone(), io, peer, grpc.clone()));
            }
            Err(error) => {
                // E.g. out of file descriptors: keep serving the connections we have.
                tracing::warn!(%error, "accepting a connection failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
    Err("listener closed".into())
}

/// Serves until `shutdown` resolves (or a listener fails): both client transports
/// and the gRPC service on every listener, and the outgoing peer links.
pub async fn serve(
    daemon: Arc<Daemon>,
    receivers: Vec<super::MasterQueue>,
    handle: ServeHandle,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let links: Vec<_> = receivers.into_iter().map(|(node, rx)| tokio::spawn(run_outgoing(daemon.clone(), node, rx))).collect();
    let service = DlmServer::new(DlmService { daemon: daemon.clone() })
        .max_decoding_message_size(crate::MESSAGE_MAX_BYTES)
        .max_encoding_message_size(crate::MESSAGE_MAX_BYTES);
    let tcp_incoming = TcpListenerStream::new(handle.tcp).map(|stream| {
        let stream = stream?;
        stream.set_nodelay(true)?;
        Ok::<_, std::io::Error>(stream)
    });
    let (tcp_grpc, tcp_grpc_rx) = tokio::sync::mpsc::unbounded_channel();
    let tcp_accept = accept(daemon.clone(), tcp_incoming, |s| s.peer_addr().map(|a| a.to_string()).unwrap_or_default(), tcp_grpc);
    let tcp_server =
        tonic::transport::Server::builder().add_service(service.clone()).serve_with_incoming(UnboundedReceiverStream::new(tcp_grpc_rx));
    let unix_path = handle.unix.as_ref().map(|(_, p)| p.clone());
    let unix_server = async {
        match handle.unix {
            Some((listener, _)) => {
                let (grpc, grpc_rx) = tokio::sync::mpsc::unbounded_channel();
                let accepting = accept(daemon.clone(), UnixListenerStream::new(listener), |_| "local socket".to_string(), grpc);
                let server = tonic::transport::Server::builder().add_service(service).serve_with_incoming(UnboundedReceiverStream::new(grpc_rx));
                tokio::select! {
                    r = accepting => r,
                    r = server => r.map_err(|e| e.to_string()),
                }
            }
            None => std::future::pending().await,
        }
    };
    // No graceful drain: peer links never end by themselves, so stopping means
    // dropping every connection; clients see a disconnect (and peers a link loss).
    let result = tokio::select! {
        r = tcp_accept => r.map_err(|e| format!("serving TCP: {e}")),
        r = tcp_server => r.map_err(|e| format!("serving: {e}")),
        r = unix_server => r.map_err(|e| format!("serving the unix socket: {e}")),
        _ = shutdown => Ok(()),
    };
    for link in links {
        link.abort();
    }
    if let Some(path) = unix_path {
        let _ = std::fs::remove_file(path);
    }
    result
}
