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
//!
//! The reader also polls the socket for a while before it sleeps
//! ([`PollWindow`](super::poll_window::PollWindow)): while the window is open, an
//! empty socket is read again directly, the task yielding to the others in between,
//! so the process (and its vCPU) stays awake for the answer it expects.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};

use super::poll_window::PollWindow;
use crate::procfs;

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
    /// Polling before sleeping; only the reader uses it.
    poll: Mutex<PollWindow>,
    /// The origin of the times given to `poll`.
    clock: Instant,
    /// Empty reads while polling, to give the CPU away every [`YIELD_EVERY`].
    spins: AtomicU32,
}

/// Polling gives the CPU away once in this many empty reads: polling happens only
/// when no more tasks are runnable than there are CPUs, but the scheduler may still
/// have put the task we wait for on our CPU (measured: yielding on every read cost
/// a quarter of the throughput in `rgfs-dlm bench` runs on an idle 2-vCPU VM).
const YIELD_EVERY: u32 = 8;

impl QuietSocket {
    /// Takes over a tokio stream (its descriptor, non-blocking); the reader polls
    /// for up to `poll` before it sleeps (zero: never).
    pub fn from_tcp(stream: tokio::net::TcpStream, poll: Duration) -> io::Result<QuietSocket> {
        QuietSocket::new(OwnedFd::from(stream.into_std()?), poll)
    }

    /// Takes over a tokio unix stream.
    pub fn from_unix(stream: tokio::net::UnixStream, poll: Duration) -> io::Result<QuietSocket> {
        QuietSocket::new(OwnedFd::from(stream.into_std()?), poll)
    }

    fn new(fd: OwnedFd, poll: Duration) -> io::Result<QuietSocket> {
        QuietSocket::for_cpus(fd, poll, procfs::usable_cpus())
    }

    /// A socket whose reader decides on polling as if the process ran on `cpus` CPUs.
    fn for_cpus(fd: OwnedFd, poll: Duration, cpus: usize) -> io::Result<QuietSocket> {
        let file = File::from(fd);
        let write = file.try_clone()?;
        let poll = Mutex::new(PollWindow::new(u64::try_from(poll.as_nanos()).unwrap_or(u64::MAX), cpus));
        Ok(QuietSocket { read: register(file, Interest::READABLE)?, write, write_wait: None, poll, clock: Instant::now(), spins: AtomicU32::new(0) })
    }

    /// While `waiting`, nothing is expected on the socket soon (the other side
    /// waits for answers that come from elsewhere): the reader does not poll.
    pub fn set_waiting_elsewhere(&self, waiting: bool) {
        self.poll.lock().set_waiting_elsewhere(waiting);
    }

    /// Tests: a unix socket that polls whatever the other tasks of the system.
    #[cfg(test)]
    fn never_contended(stream: tokio::net::UnixStream, poll: Duration) -> io::Result<QuietSocket> {
        QuietSocket::for_cpus(OwnedFd::from(stream.into_std()?), poll, usize::MAX)
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.clock.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Reads what is there, waiting for something if nothing is.
    pub fn poll_read_some(&self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            let mut guard = match self.read.poll_read_ready(cx) {
                Poll::Ready(guard) => guard?,
                Poll::Pending => return self.poll_before_sleeping(cx, buf),
            };
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
                    self.read_done(n, buf);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }

    /// The runtime does not know the socket readable (and will wake the task when
    /// it is): while the polling window is open, read it directly, and if it is
    /// still empty have the task polled again after the others (`Pending` with
    /// the task woken), now and then giving the CPU away in case the writer we
    /// wait for runs on this one.
    fn poll_before_sleeping(&self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let now = self.now_ns();
        let mut window = self.poll.lock();
        if window.wants_sample(now) {
            window.sample(now, procfs::runnable_tasks());
        }
        if !window.keep_polling(now) {
            return Poll::Pending;
        }
        drop(window);
        match self.read.get_ref().read(buf.initialize_unfilled()) {
            Ok(n) => {
                self.read_done(n, buf);
                Poll::Ready(Ok(()))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if self.spins.fetch_add(1, Ordering::Relaxed) % YIELD_EVERY == YIELD_EVERY - 1 {
                    std::thread::yield_now();
                }
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn read_done(&self, n: usize, buf: &mut ReadBuf<'_>) {
        if n > 0 {
            self.poll.lock().data(self.now_ns());
        }
        buf.advance(n);
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
    /// registration for writing while full), and every byte arrives in order;
    /// with and without polling.
    #[tokio::test]
    async fn a_full_socket_waits_for_the_reader() {
        for poll in [Duration::ZERO, Duration::from_secs(1)] {
            full_socket_round(poll).await;
        }
    }

    async fn full_socket_round(poll: Duration) {
        let (a, mut b) = tokio::net::UnixStream::pair().unwrap();
        let mut quiet = QuietSocket::never_contended(a, poll).unwrap();
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
        QuietSocket::from_unix(fresh, Duration::ZERO).unwrap().writable().await.unwrap();
    }
}

/// Polling, measured by counting the polls of a reading task.
#[cfg(test)]
mod polling_tests {
    use std::future::Future;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;

    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Spawns a task reading `N` bytes from `socket`, counting its polls.
    fn counted_reader<const N: usize>(socket: Arc<QuietSocket>) -> (tokio::task::JoinHandle<[u8; N]>, Arc<AtomicUsize>) {
        let polls = Arc::new(AtomicUsize::new(0));
        let counter = polls.clone();
        let mut read = Box::pin(async move {
            let mut buf = [0u8; N];
            SharedReader(socket).read_exact(&mut buf).await.unwrap();
            buf
        });
        let task = tokio::spawn(std::future::poll_fn(move |cx| {
            counter.fetch_add(1, Ordering::Relaxed);
            read.as_mut().poll(cx)
        }));
        (task, polls)
    }

    /// A polling socket and its other end, a byte already read (so that the next
    /// empty read opens the window, as after an answer).
    async fn after_data(poll: Duration) -> (Arc<QuietSocket>, tokio::net::UnixStream) {
        let (a, mut b) = tokio::net::UnixStream::pair().unwrap();
        let socket = Arc::new(QuietSocket::never_contended(a, poll).unwrap());
        b.write_all(b"x").await.unwrap();
        let (first, _) = counted_reader::<1>(socket.clone());
        assert_eq!(&first.await.unwrap(), b"x");
        (socket, b)
    }

    /// After data, an empty socket is polled again and again for the window, then
    /// the reader sleeps until the runtime wakes it for the next data.
    #[tokio::test]
    async fn an_empty_socket_is_polled_for_the_window_then_the_reader_sleeps() {
        let (socket, mut b) = after_data(Duration::from_millis(50)).await;
        let (reader, polls) = counted_reader::<5>(socket);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let after_window = polls.load(Ordering::Relaxed);
        assert!(after_window > 2, "the reader polled the empty socket: {after_window} polls");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(polls.load(Ordering::Relaxed), after_window, "and slept once the window closed");
        b.write_all(b"hello").await.unwrap();
        assert_eq!(&reader.await.unwrap(), b"hello", "woken by the runtime");
    }

    /// A polling reader yields: on a single-threaded runtime, another task does 100
    /// round trips on another socket while the reader keeps polling (a poll that
    /// held the thread would let nothing else run for its 10 s window).
    #[tokio::test]
    async fn a_polling_reader_lets_the_other_tasks_run() {
        let (socket, mut b) = after_data(Duration::from_secs(10)).await;
        let (reader, polls) = counted_reader::<1>(socket);
        tokio::task::yield_now().await;
        let (mut c, mut d) = tokio::net::UnixStream::pair().unwrap();
        for i in 0..100u8 {
            c.write_all(&[i]).await.unwrap();
            let mut got = [0u8; 1];
            d.read_exact(&mut got).await.unwrap();
            assert_eq!(got[0], i);
        }
        let during = polls.load(Ordering::Relaxed);
        assert!(during > 1, "the reader was polling meanwhile: {during} polls");
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert!(polls.load(Ordering::Relaxed) > during, "and still is");
        b.write_all(b"y").await.unwrap();
        assert_eq!(&reader.await.unwrap(), b"y");
    }
}
