//! The NBD server: listeners, one thread per connection, shutdown.
//!
//! Threads rather than an async runtime: the exports are `BlockDevice`s,
//! whose calls block (pread/pwrite/fsync) anyway, and each connection runs
//! one request at a time, so a thread per connection (at most
//! `max_clients`) is the simplest design with bounded resources; it also
//! keeps the crate free of a runtime that mkfs/fsck/mount would then link.

use std::collections::HashMap;
use std::io;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::session::{self, Conn, Export, Limits};

/// How long a reply may wait for the client to read it.
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);

/// A listening socket.
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// An accepted connection, kept so shutdown can stop its reads.
enum Accepted {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Accepted {
    fn shutdown_read(&self) {
        // Ends a blocked read; the request being executed still gets its reply.
        let _ = match self {
            Accepted::Tcp(s) => s.shutdown(Shutdown::Read),
            Accepted::Unix(s) => s.shutdown(Shutdown::Read),
        };
    }
}

/// The server: its exports and the connections it serves.
pub struct Server {
    exports: Arc<Vec<Export>>,
    limits: Limits,
    max_clients: usize,
    stopping: AtomicBool,
    next_id: AtomicU64,
    clients: Mutex<HashMap<u64, Accepted>>,
    gone: Condvar,
    log: Box<dyn Fn(&str) + Send + Sync>,
}

impl Server {
    pub fn new(exports: Vec<Export>, limits: Limits, max_clients: usize, log: Box<dyn Fn(&str) + Send + Sync>) -> Arc<Server> {
        Arc::new(Server {
            exports: Arc::new(exports),
            limits,
            max_clients,
            stopping: AtomicBool::new(false),
            next_id: AtomicU64::new(0),
            clients: Mutex::new(HashMap::new()),
            gone: Condvar::new(),
            log,
        })
    }

    /// Accepts connections on `listener` from a new thread until shutdown.
    pub fn spawn_listener(self: &Arc<Self>, listener: Listener) -> io::Result<std::thread::JoinHandle<()>> {
        let server = Arc::clone(self);
        std::thread::Builder::new().name("nbd-accept".into()).spawn(move || loop {
            let accepted = match &listener {
                Listener::Tcp(l) => l.accept().map(|(s, _)| {
                    // Requests and replies are small and latency-bound.
                    let _ = s.set_nodelay(true);
                    Accepted::Tcp(s)
                }),
                Listener::Unix(l) => l.accept().map(|(s, _)| Accepted::Unix(s)),
            };
            match accepted {
                Ok(conn) => server.admit(conn),
                Err(e) => {
                    (server.log)(&format!("accept failed: {e}"));
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        })
    }

    fn admit(self: &Arc<Self>, conn: Accepted) {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if self.stopping.load(Ordering::SeqCst) {
            return;
        }
        if clients.len() >= self.max_clients {
            (self.log)(&format!("refused a connection: already {} clients (--max-clients)", clients.len()));
            return;
        }
        // A client that stops reading its replies is dropped, not waited for.
        let _ = match &conn {
            Accepted::Tcp(s) => s.set_write_timeout(Some(WRITE_TIMEOUT)),
            Accepted::Unix(s) => s.set_write_timeout(Some(WRITE_TIMEOUT)),
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let clone = match &conn {
            Accepted::Tcp(s) => s.try_clone().map(Accepted::Tcp),
            Accepted::Unix(s) => s.try_clone().map(Accepted::Unix),
        };
        let Ok(clone) = clone else { return };
        clients.insert(id, clone);
        drop(clients);
        let server = Arc::clone(self);
        let spawned = std::thread::Builder::new().name(format!("nbd-client-{id}")).spawn(move || {
            let end = match conn {
                Accepted::Tcp(mut s) => run(&mut s, &server),
                Accepted::Unix(mut s) => run(&mut s, &server),
            };
            (server.log)(&format!("client {id}: {end}"));
            server.clients.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
            server.gone.notify_all();
        });
        if spawned.is_err() {
            self.clients.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        }
    }

    /// Stops taking connections, lets every connection finish the request
    /// it is executing (waiting at most `timeout`), then flushes every
    /// export. Returns false if a flush failed: acknowledged writes may then
    /// not be durable.
    pub fn shutdown(&self, timeout: Duration) -> bool {
        self.stopping.store(true, Ordering::SeqCst);
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        for c in clients.values() {
            c.shutdown_read();
        }
        let deadline = Instant::now() + timeout;
        while !clients.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                (self.log)(&format!("{} connections still busy after {timeout:?}; flushing anyway", clients.len()));
                break;
            }
            clients = self.gone.wait_timeout(clients, left).unwrap_or_else(|p| p.into_inner()).0;
        }
        drop(clients);
        let mut ok = true;
        for e in self.exports.iter().filter(|e| !e.read_only) {
            if let Err(err) = e.device.flush() {
                (self.log)(&format!("export {:?}: flush failed: {err}", e.name));
                ok = false;
            }
        }
        ok
    }
}

fn run<C: Conn>(conn: &mut C, server: &Server) -> String {
    match session::serve(conn, &server.exports, &server.limits) {
        Ok(Some(name)) => format!("left export {name:?}"),
        Ok(None) => "left during the handshake".into(),
        Err(e) => format!("closed: {e}"),
    }
}
