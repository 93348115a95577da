//! The framed client transport on the daemon side (docs/dlm.md, "Transports"), and
//! the sorting of new connections: the first 8 bytes of a connection say whether it
//! is framed ([`framing::PREFACE`]) or HTTP/2 (gRPC: clients that chose it, and
//! peers), which then goes to tonic with those bytes put back.
//!
//! A framed connection is one task: it reads whatever frames arrived, applies them
//! to the session (a locally mastered operation reaches the engine and its
//! completion comes back without leaving the task), and writes every answer that
//! is ready with one write. The session is the gRPC transport's (`session.rs`).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::codec::LengthDelimitedCodec;

use super::responder::poll_answer;
use super::session::{ClientSource, SessionStream};
use super::Daemon;
use crate::proto::framing::{self, FrameError, FrameReader};
use crate::proto::socket::QuietSocket;
use crate::proto as pb;

/// Answers gathered before one write (more waits for the next write).
const WRITE_GATHER_BYTES: usize = 256 << 10;

impl ClientSource for FrameReader<QuietSocket, pb::ClientMessage> {
    fn poll_message(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<pb::ClientMessage, FrameError>>> {
        FrameReader::poll_message(self, cx)
    }

    fn set_waiting_elsewhere(&mut self, waiting: bool) {
        self.get_mut().set_waiting_elsewhere(waiting);
    }
}

/// A stream socket the daemon listens for: TCP or unix.
pub trait Socket: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// The socket for the framed transport, polling for up to `poll` before it sleeps.
    fn into_quiet(self, poll: Duration) -> io::Result<QuietSocket>;
}

impl Socket for tokio::net::TcpStream {
    fn into_quiet(self, poll: Duration) -> io::Result<QuietSocket> {
        QuietSocket::from_tcp(self, poll)
    }
}

impl Socket for tokio::net::UnixStream {
    fn into_quiet(self, poll: Duration) -> io::Result<QuietSocket> {
        QuietSocket::from_unix(self, poll)
    }
}

/// Reads a new connection's first bytes and hands it to the framed transport or to
/// gRPC (`grpc`). A connection that sends nothing within `hello_timeout_ms` is
/// refused and counted like a stream without hello.
pub async fn sort_connection<S: Socket>(daemon: Arc<Daemon>, mut io: S, peer: String, grpc: UnboundedSender<io::Result<Rewind<S>>>) {
    let mut first = [0u8; framing::PREFACE_LEN];
    let timeout = Duration::from_millis(daemon.config.limits.hello_timeout_ms);
    match tokio::time::timeout(timeout, io.read_exact(&mut first)).await {
        Ok(Ok(_)) if &first == framing::PREFACE => match io.into_quiet(daemon.config.tuning.poll()) {
            Ok(socket) => serve_framed(daemon, socket, format!("{peer} (framed)")).await,
            Err(error) => tracing::warn!(%peer, %error, "framed connection lost"),
        },
        Ok(Ok(_)) if first.starts_with(framing::PREFACE_FAMILY) => {
            tracing::warn!(%peer, version = first[framing::PREFACE_LEN - 1], "client refused: unknown framed protocol version");
            daemon.count_refused();
        }
        Ok(Ok(_)) => {
            let _ = grpc.send(Ok(Rewind { first, used: 0, io }));
        }
        Ok(Err(error)) => tracing::debug!(%peer, %error, "connection closed before its first bytes"),
        Err(_) => {
            tracing::warn!(%peer, "connection refused: nothing received in time");
            daemon.count_refused();
        }
    }
}

/// Serves one framed connection (its preface read) until either side ends it.
async fn serve_framed(daemon: Arc<Daemon>, io: QuietSocket, peer: String) {
    let mut stream = SessionStream::new(daemon, FrameReader::<QuietSocket, pb::ClientMessage>::new(io), peer.clone());
    let mut codec = framing::codec();
    let mut out = BytesMut::with_capacity(4096);
    loop {
        let ended = std::future::poll_fn(|cx| gather_answers(&mut stream, &mut codec, &mut out, cx)).await;
        if !out.is_empty() {
            if let Err(error) = stream.inbound_mut().get_mut().write_all(&out).await {
                tracing::debug!(%peer, %error, "framed connection write failed");
                break;
            }
            out.clear();
        }
        if ended {
            let _ = stream.inbound_mut().get_mut().shutdown().await;
            break;
        }
    }
    // Dropping the session purges the client's locks.
}

/// Polls the session's answers into `out` until none is ready (or `out` is full);
/// `Ready(true)` once the session is over.
fn gather_answers<I: ClientSource>(
    stream: &mut SessionStream<I>,
    codec: &mut LengthDelimitedCodec,
    out: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<bool> {
    while out.len() < WRITE_GATHER_BYTES {
        match poll_answer(stream, cx) {
            Poll::Ready(Some(Ok(message))) => {
                if let Err(error) = framing::encode_frame(codec, &message, out) {
                    tracing::warn!(%error, "answer too large for a frame; closing the session");
                    return Poll::Ready(true);
                }
            }
            Poll::Ready(Some(Err(_)) | None) => return Poll::Ready(true),
            Poll::Pending if out.is_empty() => return Poll::Pending,
            Poll::Pending => break,
        }
    }
    Poll::Ready(false)
}

/// A connection whose first bytes were read to sort it, reading them again first.
pub struct Rewind<S> {
    first: [u8; framing::PREFACE_LEN],
    used: usize,
    io: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.used < this.first.len() {
            let n = buf.remaining().min(this.first.len() - this.used);
            buf.put_slice(&this.first[this.used..this.used + n]);
            this.used += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected for Rewind<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}
