//! The framed transport on the client side (docs/dlm.md, "Transports").
//!
//! Writing: the caller queues its operation under a mutex. When nothing else is in
//! flight it also encodes and writes it itself (a non-blocking write, no task hop on
//! the latency path); otherwise, or if the socket is full, the flusher task packs
//! the operations every ready caller queued into one `OpBatch` frame and writes it,
//! so pipelined operations share one frame and one write.
//!
//! Invariants: messages go out in the order they were queued (queued operations are
//! encoded before any later whole message); only one of the caller and the flusher
//! writes at a time (both write under the mutex); once the flusher is busy, callers
//! only queue.

use std::io;
use std::sync::Arc;

use bytes::{Buf, BytesMut};
use parking_lot::Mutex;
use tokio::io::AsyncWriteExt;
use tokio::sync::Notify;
use tokio_util::codec::LengthDelimitedCodec;

use super::connect::{DaemonAddress, Outbound};
use super::ClientError;
use crate::proto::framing::{self, FrameReader};
use crate::proto::socket::{QuietSocket, SharedReader};
use crate::proto as pb;

/// The read side of a framed connection.
pub(crate) type FramedReader = FrameReader<SharedReader, pb::ServerMessage>;

/// Most operations packed into one frame (the gRPC transport's batch bound).
const OPS_PER_FRAME: usize = 1024;

struct WriteState {
    /// Operations not encoded yet.
    ops: Vec<pb::Op>,
    buffer: BytesMut,
    codec: LengthDelimitedCodec,
    /// The flusher owns the buffer's writing until it is empty.
    flusher_busy: bool,
    closed: bool,
}

/// The write side of a framed connection.
pub(crate) struct FramedWriter {
    io: Arc<QuietSocket>,
    state: Mutex<WriteState>,
    flush: Notify,
}

/// Connects, sends the preface, and starts the flusher task; returns the two sides
/// and the flusher's handle (abort it to close the connection).
pub(crate) async fn connect(
    address: &DaemonAddress,
    poll: std::time::Duration,
    timeout: std::time::Duration,
) -> Result<(Arc<FramedWriter>, FramedReader, tokio::task::JoinHandle<()>), ClientError> {
    let failed = |e: io::Error| ClientError::Connect(format!("connecting to {address}: {e}"));
    let connecting = async {
        match address {
            DaemonAddress::Tcp(addr) => {
                let mut stream = tokio::net::TcpStream::connect(addr).await?;
                stream.set_nodelay(true)?;
                stream.write_all(framing::PREFACE).await?;
                QuietSocket::from_tcp(stream, poll)
            }
            DaemonAddress::Unix(path) => {
                let mut stream = tokio::net::UnixStream::connect(path).await?;
                stream.write_all(framing::PREFACE).await?;
                QuietSocket::from_unix(stream, poll)
            }
        }
    };
    let socket = tokio::time::timeout(timeout, connecting)
        .await
        .map_err(|_| ClientError::Connect(format!("connecting to {address}: no answer within {}", super::connect::seconds(timeout))))?
        .map_err(failed)?;
    let socket = Arc::new(socket);
    let state = WriteState { ops: Vec::new(), buffer: BytesMut::with_capacity(4096), codec: framing::codec(), flusher_busy: false, closed: false };
    let writer = Arc::new(FramedWriter { io: socket.clone(), state: Mutex::new(state), flush: Notify::new() });
    let flusher = tokio::spawn(writer.clone().run_flusher());
    Ok((writer, FramedReader::new(SharedReader(socket)), flusher))
}

impl FramedWriter {
    /// Queues an operation or a message; with `now`, also writes it from this
    /// thread if the flusher is idle.
    pub(crate) fn send(&self, item: Outbound, now: bool) -> Result<(), ClientError> {
        let mut state = self.state.lock();
        if state.closed {
            return Err(ClientError::Disconnected);
        }
        match item {
            Outbound::Op(op) => state.ops.push(op),
            Outbound::Message(message) => {
                state.pack()?;
                state.encode(&message)?;
            }
        }
        if state.flusher_busy {
            return Ok(());
        }
        if now {
            state.pack()?;
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
                    if state.pack().is_err() || self.write_some(&mut state).is_err() {
                        state.closed = true;
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

impl WriteState {
    /// Encodes the queued operations into the buffer, in frames of up to
    /// [`OPS_PER_FRAME`].
    fn pack(&mut self) -> Result<(), ClientError> {
        while !self.ops.is_empty() {
            let rest = self.ops.split_off(self.ops.len().min(OPS_PER_FRAME));
            let ops = std::mem::replace(&mut self.ops, rest);
            self.encode(&pb::ClientMessage { kind: Some(pb::client_message::Kind::Ops(pb::OpBatch { ops })) })?;
        }
        Ok(())
    }

    /// Appends `message` as one frame to the buffer.
    fn encode(&mut self, message: &pb::ClientMessage) -> Result<(), ClientError> {
        framing::encode_frame(&mut self.codec, message, &mut self.buffer).map_err(|e| ClientError::Invalid(e.to_string()))
    }
}
