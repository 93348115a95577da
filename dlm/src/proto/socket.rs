//! The socket under a framed connection, on both sides: registered with the
//! runtime for reading only.
//!
//! Why: tokio registers its TCP and unix streams for reading and writing, edge
//! triggered, and the kernel signals "writable" each time the other side reads what
//! we sent. On a request/response connection that is one useless wake-up of the
//! process per round trip (measured: about 0.6 extra context switches per
//! operation, docs/BENCHMARKS.md). Here writes go straight to the socket; only when
//! it is full (the other side does not read) is a duplicate of the descriptor
//! registered for writing, until it drains.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};

/// Registers `file` with the runtime for `interest`.
fn register(file: File, interest: Interest) -> io::Result<AsyncFd<File>> {
    // SAFETY: the `File` owns its descriptor and is owned by the `AsyncFd`, so the
    // descriptor stays open and the same until the `AsyncFd` deregisters it on drop.
    unsafe { AsyncFd::register_with_interest(file, interest) }.map_err(|e| e.into_parts().1)
}

/// A connected, non-blocking stream socket (TCP or unix).
pub struct QuietSocket {
    read: AsyncFd<File>,
    write: File,
    /// While the socket is full: a duplicate registered for writing.
    write_wait: Option<AsyncFd<File>>,
}

impl QuietSocket {
    /// Takes over a tokio stream (its descriptor, non-blocking).
    pub fn from_tcp(stream: tokio::net::TcpStream) -> io::Result<QuietSocket> {
        QuietSocket::new(OwnedFd::from(stream.into_std()?))
    }

    /// Takes over a tokio unix stream.
    pub fn from_unix(stream: tokio::net::UnixStream) -> io::Result<QuietSocket> {
        QuietSocket::new(OwnedFd::from(stream.into_std()?))
    }

    fn new(fd: OwnedFd) -> io::Result<QuietSocket> {
        let file = File::from(fd);
        let write = file.try_clone()?;
        Ok(QuietSocket { read: register(file, Interest::READABLE)?, write, write_wait: None })
    }

    /// Reads what is there, waiting for something if nothing is.
    pub fn poll_read_some(&self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.read.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            let room = unfilled.len();
            match guard.try_io(|fd| fd.get_ref().read(unfilled)) {
                Ok(Ok(n)) => {
                    if n > 0 && n < room {
                        // A short read emptied the socket: wait for the next edge
                        // instead of reading again only to learn it is empty (as
                        // tokio's own streams do).
                        guard.clear_ready();
                    }
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }

    /// Writes what the socket takes now (`WouldBlock` when it is full).
    pub fn try_write(&self, bytes: &[u8]) -> io::Result<usize> {
        (&self.write).write(bytes)
    }

    /// Waits until the socket takes more (after `try_write` said `WouldBlock`).
    pub async fn writable(&self) -> io::Result<()> {
        let probe = register(self.write.try_clone()?, Interest::WRITABLE)?;
        probe.writable().await?.retain_ready();
        Ok(())
    }
}

impl AsyncRead for QuietSocket {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        self.poll_read_some(cx, buf)
    }
}

impl AsyncWrite for QuietSocket {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, bytes: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        loop {
            match this.try_write(bytes) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                done => {
                    this.write_wait = None;
                    return Poll::Ready(done);
                }
            }
            if this.write_wait.is_none() {
                this.write_wait = Some(register(this.write.try_clone()?, Interest::WRITABLE)?);
            }
            let wait = this.write_wait.as_ref().expect("set above");
            ready!(wait.poll_write_ready(cx))?.clear_ready();
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Closing the descriptors (dropping) ends the connection; nothing is buffered.
        Poll::Ready(Ok(()))
    }
}

/// The read side of a shared socket.
pub struct SharedReader(pub std::sync::Arc<QuietSocket>);

impl AsyncRead for SharedReader {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        self.0.poll_read_some(cx, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// More than a socket buffer holds: the writer waits for the reader (the
    /// registration for writing while full), and every byte arrives in order.
    #[tokio::test]
    async fn a_full_socket_waits_for_the_reader() {
        let (a, mut b) = tokio::net::UnixStream::pair().unwrap();
        let mut quiet = QuietSocket::from_unix(a).unwrap();
        let data: Vec<u8> = (0..4 << 20).map(|i: u32| (i % 251) as u8).collect();
        let expected = data.clone();
        let reader = tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            let mut got = vec![0; expected.len()];
            b.read_exact(&mut got).await.unwrap();
            assert!(got == expected);
            b.write_all(b"done").await.unwrap();
        });
        quiet.write_all(&data).await.unwrap();
        let mut answer = [0u8; 4];
        quiet.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"done");
        reader.await.unwrap();
        assert_eq!(SharedReader(std::sync::Arc::new(quiet)).read(&mut answer).await.unwrap(), 0, "end of stream");
        let (fresh, _other) = tokio::net::UnixStream::pair().unwrap();
        QuietSocket::from_unix(fresh).unwrap().writable().await.unwrap();
    }
}
