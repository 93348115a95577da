//! The framed client transport (docs/dlm.md, "Transports"): after an 8-byte preface
//! from the client, each direction carries the session's prost messages
//! (`ClientMessage` up, `ServerMessage` down), each in one frame of tokio-util's
//! `LengthDelimitedCodec`: a 4-byte big-endian length, then the message.
//!
//! The daemon tells a framed connection from an HTTP/2 one (gRPC) by its first 8
//! bytes: HTTP/2 starts with `PRI * HT`, the framed transport with [`PREFACE`].

use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncRead;
use tokio_stream::Stream;
use tokio_util::codec::length_delimited::LengthDelimitedCodecError;
use tokio_util::codec::{Encoder, FramedRead, LengthDelimitedCodec};

/// What a framed client sends first: `RGFSDLM` and the protocol version.
pub const PREFACE: &[u8; PREFACE_LEN] = b"RGFSDLM\x01";
/// Length of the preface, and of what the daemon reads to tell the transports apart.
pub const PREFACE_LEN: usize = 8;
/// The first bytes of a framed preface of any version.
pub const PREFACE_FAMILY: &[u8] = b"RGFSDLM";
/// Initial read buffer of a connection (it grows for larger frames).
const READ_CAPACITY: usize = 16 << 10;

/// The frame codec, bounded to [`crate::MESSAGE_MAX_BYTES`] per message (the gRPC bound).
pub fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder().max_frame_length(crate::MESSAGE_MAX_BYTES).new_codec()
}

/// Appends `message` as one frame to `out`; refused (and nothing appended) above the bound.
pub fn encode_frame(codec: &mut LengthDelimitedCodec, message: &impl prost::Message, out: &mut BytesMut) -> std::io::Result<()> {
    codec.encode(Bytes::from(message.encode_to_vec()), out)
}

/// Why the next message could not be read.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The length prefix announces more than the bound.
    #[error("frame larger than {} bytes", crate::MESSAGE_MAX_BYTES)]
    TooLarge,
    /// The connection ended in the middle of a frame.
    #[error("the connection ended in the middle of a frame")]
    Truncated,
    /// The frame's content is not a message of the expected type.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// The connection failed.
    #[error("connection error: {0}")]
    Io(String),
}

impl FrameError {
    /// Whether the other side sent something wrong (as opposed to the connection failing).
    pub fn is_malformed(&self) -> bool {
        !matches!(self, FrameError::Io(_))
    }
}

/// Reads framed messages of type `M` from `R`.
pub struct FrameReader<R, M> {
    frames: FramedRead<R, LengthDelimitedCodec>,
    message: PhantomData<fn() -> M>,
}

impl<R: AsyncRead + Unpin, M: prost::Message + Default> FrameReader<R, M> {
    /// A reader of `io`.
    pub fn new(io: R) -> Self {
        FrameReader { frames: FramedRead::with_capacity(io, codec(), READ_CAPACITY), message: PhantomData }
    }

    /// The connection, e.g. to write on it.
    pub fn get_mut(&mut self) -> &mut R {
        self.frames.get_mut()
    }

    /// What was read and not yet taken as a message: after an error, the bytes that
    /// caused it (to tell people what the other end sent).
    pub fn buffered(&self) -> &[u8] {
        self.frames.read_buffer()
    }

    /// The next message; `None` when the connection ended cleanly between frames.
    pub fn poll_message(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<M, FrameError>>> {
        Pin::new(&mut self.frames).poll_next(cx).map(|frame| {
            frame.map(|frame| match frame {
                Ok(bytes) => M::decode(bytes).map_err(|e| FrameError::Malformed(e.to_string())),
                Err(e) if e.get_ref().is_some_and(|inner| inner.is::<LengthDelimitedCodecError>()) => Err(FrameError::TooLarge),
                // FramedRead's error for an end of stream with a partial frame buffered.
                Err(e) if e.kind() == std::io::ErrorKind::Other && e.to_string() == "bytes remaining on stream" => Err(FrameError::Truncated),
                Err(e) => Err(FrameError::Io(e.to_string())),
            })
        })
    }

    /// Awaits the next message.
    pub async fn next_message(&mut self) -> Option<Result<M, FrameError>> {
        std::future::poll_fn(|cx| self.poll_message(cx)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto as pb;

    fn read_all(bytes: &[u8]) -> Vec<Result<pb::ClientMessage, FrameError>> {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        runtime.block_on(async {
            let mut reader = FrameReader::<_, pb::ClientMessage>::new(bytes);
            let mut all = Vec::new();
            while let Some(next) = reader.next_message().await {
                let failed = next.is_err();
                all.push(next);
                if failed {
                    break;
                }
            }
            all
        })
    }

    #[test]
    fn frames_round_trip() {
        let message = pb::ClientMessage { kind: Some(pb::client_message::Kind::Query(pb::Query { kind: Some(pb::query::Kind::Status(pb::StatusQuery {})) })) };
        let mut out = BytesMut::new();
        encode_frame(&mut codec(), &message, &mut out).unwrap();
        encode_frame(&mut codec(), &message, &mut out).unwrap();
        assert_eq!(read_all(&out), vec![Ok(message.clone()), Ok(message)]);
    }

    #[test]
    fn oversize_truncated_and_garbage_frames_are_errors() {
        let huge = (crate::MESSAGE_MAX_BYTES as u32 + 1).to_be_bytes();
        assert_eq!(read_all(&huge), vec![Err(FrameError::TooLarge)]);
        assert_eq!(read_all(&[0, 0, 0, 9, 1, 2]), vec![Err(FrameError::Truncated)]);
        assert!(matches!(read_all(&[0, 0, 0, 3, 0xff, 0xff, 0xff])[..], [Err(FrameError::Malformed(_))]));
    }

    #[test]
    fn an_oversize_frame_stays_buffered_to_be_shown() {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let answer: &[u8] = b"HTTP/1.1 400 Bad Request\r\n\r\n";
        let mut reader = FrameReader::<_, pb::ServerMessage>::new(answer);
        assert_eq!(runtime.block_on(reader.next_message()), Some(Err(FrameError::TooLarge)));
        assert!(reader.buffered().starts_with(b"HTTP/1.1"));
    }
}
