//! The framed transport on the client side (docs/dlm.md, "Transports").
//!
//! Writing: the caller encodes its message into the connection's buffer under a
//! mutex. When nothing else is in flight it also writes the buffer itself (a
//! non-blocking write, no task hop on the latency path); otherwise, or if the
//! socket is full, the flusher task writes it, after every other ready caller has
//! queued its message, so pipelined operations share one write.
//!
//! Invariants: bytes go out in the order they were queued; only one of the caller
//! and the flusher writes at a time (both write under the mutex); once the
//! flusher is busy, callers only queue.

use std::io;
use std::sync::Arc;

use bytes::{Buf, BytesMut};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWriteExt};
use tokio::sync::Notify;
use tokio_util::codec::LengthDelimitedCodec;

use super::connect::DaemonAddress;
use super::ClientError;
use crate::proto::framing::{self, FrameReader};
use crate::proto as pb;

/// The read side of a framed connection.
pub(crate) type FramedReader = FrameReader<Box<dyn AsyncRead + Send + Unpin>, pb::ServerMessage>;

enum WriteHalf {
    Tcp(tokio::net::tcp::OwnedWriteHalf),
    Unix(tokio::net::unix::OwnedWriteHalf),
}

impl WriteHalf {
    fn try_write(&self, bytes: &[u8]) -> io::Result<usize> {
        match self {
            WriteHalf::Tcp(w) => w.try_write(bytes),
            WriteHalf::Unix(w) => w.try_write(bytes),
        }
    }

    async fn writable(&self) -> io::Result<()> {
        match self {
            WriteHalf::Tcp(w) => w.writable().await,
            WriteHalf::Unix(w) => w.writable().await,
        }
    }
}

struct WriteState {
    buffer: BytesMut,
    codec: LengthDelimitedCodec,
    /// The flusher owns the buffer's writing until it is empty.
    flusher_busy: bool,
    closed: bool,
}

/// The write side of a framed connection.
pub(crate) struct FramedWriter {
    io: WriteHalf,
    state: Mutex<WriteState>,
    flush: Notify,
}

/// Connects, sends the preface, and starts the flusher task; returns the two sides
/// and the flusher's handle (abort it to close the connection).
pub(crate) async fn connect(address: &DaemonAddress) -> Result<(Arc<FramedWriter>, FramedReader, tokio::task::JoinHandle<()>), ClientError> {
    let failed = |e: io::Error| ClientError::Connect(format!("connecting to {address}: {e}"));
    let connecting = async {
        let (reader, mut writer): (Box<dyn AsyncRead + Send + Unpin>, WriteHalf) = match address {
            DaemonAddress::Tcp(addr) => {
                let stream = tokio::net::TcpStream::connect(addr).await?;
                stream.set_nodelay(true)?;
                let (r, w) = stream.into_split();
                (Box::new(r), WriteHalf::Tcp(w))
            }
            DaemonAddress::Unix(path) => {
                let (r, w) = tokio::net::UnixStream::connect(path).await?.into_split();
                (Box::new(r), WriteHalf::Unix(w))
            }
        };
        match &mut writer {
            WriteHalf::Tcp(w) => w.write_all(framing::PREFACE).await?,
            WriteHalf::Unix(w) => w.write_all(framing::PREFACE).await?,
        }
        Ok::<_, io::Error>((reader, writer))
    };
    let (reader, writer) = tokio::time::timeout(std::time::Duration::from_millis(super::connect::CONNECT_TIMEOUT_MS), connecting)
        .await
        .map_err(|_| ClientError::Connect(format!("connecting to {address}: timed out")))?
        .map_err(failed)?;
    let state = WriteState { buffer: BytesMut::with_capacity(4096), codec: framing::codec(), flusher_busy: false, closed: false };
    let writer = Arc::new(FramedWriter { io: writer, state: Mutex::new(state), flush: Notify::new() });
    let flusher = tokio::spawn(writer.clone().run_flusher());
    Ok((writer, FramedReader::new(reader), flusher))
}

impl FramedWriter {
    /// Queues `message`; with `now`, also writes it from this thread if the flusher
    /// is idle.
    pub(crate) fn send(&self, message: &pb::ClientMessage, now: bool) -> Result<(), ClientError> {
        let mut state = self.state.lock();
        if state.closed {
            return Err(ClientError::Disconnected);
        }
        let WriteState { codec, buffer, .. } = &mut *state;
        framing::encode_frame(codec, message, buffer).map_err(|e| ClientError::Invalid(e.to_string()))?;
        if state.flusher_busy {
            return Ok(());
        }
        if now {
            self.write_some(&mut state)?;
            if state.buffer.is_empty() {
                return Ok(());
            }
        }
        state.flusher_busy = true;
        drop(state);
        self.flush.notify_one();
        Ok(())
    }

    /// Writes what the socket takes without waiting.
    fn write_some(&self, state: &mut WriteState) -> Result<(), ClientError> {
        while !state.buffer.is_empty() {
            match self.io.try_write(&state.buffer) {
                Ok(n) => state.buffer.advance(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    state.closed = true;
                    return Err(ClientError::Disconnected);
                }
            }
        }
        Ok(())
    }

    /// Refuses further messages (the connection ended).
    pub(crate) fn close(&self) {
        self.state.lock().closed = true;
    }

    async fn run_flusher(self: Arc<Self>) {
        loop {
            self.flush.notified().await;
            loop {
                {
                    let mut state = self.state.lock();
                    if self.write_some(&mut state).is_err() {
                        return;
                    }
                    if state.buffer.is_empty() {
                        state.flusher_busy = false;
                        break;
                    }
                }
                if self.io.writable().await.is_err() {
                    self.close();
                    return;
                }
            }
        }
    }
}
