//! `NbdDevice`: a `BlockDevice` served by an NBD server, over blocking std
//! sockets (TCP or Unix), one request at a time per connection. Concurrent
//! callers get connections of their own (up to [`MAX_CONNECTIONS`]) when the
//! server advertises `CAN_MULTI_CONN`, i.e. a FLUSH on one connection
//! covers the writes completed on all; otherwise they share one.
//!
//! Failure behaviour: when the connection drops (or a reply does not come
//! within the I/O timeout), the request that was not answered is sent again
//! on a new connection, a bounded number of times. This is safe because
//! every request rgfs sends is idempotent (READ, WRITE of the same bytes,
//! FLUSH), and it loses no acknowledged write: the server answered those
//! after `write_at` on its device, so a restarted server on the same
//! backing store has them, and the next FLUSH makes them durable. When the
//! attempts are used up, or the server answers with an error, the call
//! fails and, as the `BlockDevice` contract says, the caller stops.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rgfs_block::{check_range, Access, BlockDevice, Error, Result};

use crate::proto::*;
use crate::url::{Address, NbdUrl};

/// Connections one device opens at most (lazily, as callers overlap).
pub const MAX_CONNECTIONS: usize = 4;
/// How long opening an extra connection may take before the device makes
/// do with the ones it has (qemu-nbd holds connections past `--shared`
/// unanswered rather than refusing them).
const EXTRA_TIMEOUT: Duration = Duration::from_secs(5);

/// Tunables of the client. The defaults retry for about eight seconds.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Tries per request, the first included, before failing stop.
    pub attempts: u32,
    /// The pause after the first failure; doubled after each (up to 2 s).
    pub first_backoff: Duration,
    /// A connect, a request or a reply that takes longer counts as a
    /// dropped connection.
    pub io_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions { attempts: 8, first_backoff: Duration::from_millis(50), io_timeout: Duration::from_secs(60) }
    }
}

enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn set_timeouts(&self, t: Duration) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_read_timeout(Some(t)).and_then(|()| s.set_write_timeout(Some(t))),
            Stream::Unix(s) => s.set_read_timeout(Some(t)).and_then(|()| s.set_write_timeout(Some(t))),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(b),
            Stream::Unix(s) => s.read(b),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(b),
            Stream::Unix(s) => s.write(b),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A handshake that failed: `Io` may be retried, `Refused` may not.
enum HsError {
    Io(io::Error),
    Refused(String),
}

impl From<io::Error> for HsError {
    fn from(e: io::Error) -> Self {
        HsError::Io(e)
    }
}

/// What the handshake learned about the export.
struct Negotiated {
    size: u64,
    flags: u16,
    max_payload: u32,
}

struct Conn {
    stream: Stream,
    cookie: u64,
}

/// A block device on an NBD server. See the module documentation.
pub struct NbdDevice {
    spec: String,
    url: NbdUrl,
    opts: ClientOptions,
    writable: bool,
    size: u64,
    flags: u16,
    /// The largest payload of one request (reads and writes are split).
    chunk: usize,
    /// The connections; `None` until first used or after one was lost.
    conns: Vec<Mutex<Option<Conn>>>,
    /// Which connection a caller waits for when all are busy (spreads them).
    next: AtomicUsize,
    /// How many of `conns` are used: lowered when the server would not
    /// give an extra connection.
    usable: AtomicUsize,
}

impl std::fmt::Debug for NbdDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NbdDevice({}, {} bytes)", self.spec, self.size)
    }
}

fn open_error(spec: &str, what: &'static str, msg: impl Into<String>) -> Error {
    Error::Open { path: spec.to_string(), what, source: io::Error::other(msg.into()) }
}

impl NbdDevice {
    /// Connects to the export `spec` names (an NBD URL) with the default
    /// options. An NBD export is a shared disk: exclusion is the server's
    /// business (rgfs-nbd claims what it exports).
    pub fn open(spec: &str, access: Access) -> Result<NbdDevice> {
        Self::open_with(spec, access, ClientOptions::default())
    }

    pub fn open_with(spec: &str, access: Access, opts: ClientOptions) -> Result<NbdDevice> {
        let url = NbdUrl::parse(spec).map_err(|m| open_error(spec, "bad NBD URL", m))?;
        let (stream, n) = match connect(&url, &opts, opts.io_timeout) {
            Ok(s) => s,
            Err(HsError::Io(e)) => {
                return Err(Error::Open { path: spec.into(), what: "cannot reach the NBD server", source: e })
            }
            Err(HsError::Refused(m)) => return Err(open_error(spec, "NBD handshake failed", m)),
        };
        let writable = access != Access::ReadOnly;
        if writable && n.flags & TX_READ_ONLY != 0 {
            return Err(open_error(spec, "cannot open for writing", "the export is read-only"));
        }
        let chunk = n.max_payload.clamp(4096, DEFAULT_MAX_PAYLOAD) as usize;
        Ok(NbdDevice {
            spec: spec.to_string(),
            url,
            opts,
            writable,
            size: n.size,
            flags: n.flags,
            chunk,
            conns: {
                let n = if n.flags & TX_CAN_MULTI_CONN != 0 { MAX_CONNECTIONS } else { 1 };
                let mut conns = vec![Mutex::new(Some(Conn { stream, cookie: 0 }))];
                conns.extend((1..n).map(|_| Mutex::new(None)));
                conns
            },
            next: AtomicUsize::new(0),
            usable: AtomicUsize::new(MAX_CONNECTIONS),
        })
    }

    /// The URL this device was opened from.
    pub fn url(&self) -> &str {
        &self.spec
    }

    /// Sends one request, retrying on a new connection while the
    /// connection fails; `read_into` receives a READ's data.
    fn call(&self, op: &'static str, kind: u16, offset: u64, payload: &[u8], mut read_into: Option<&mut [u8]>) -> Result<()> {
        let len = read_into.as_ref().map_or(payload.len(), |b| b.len()) as u32;
        let (mut slot, mut guard) = self.connection();
        // An extra connection: if the server will not give it, make do with
        // fewer. Ends: each failure lowers `usable` below `slot`.
        while guard.is_none() && slot > 0 {
            match self.reconnect(false, EXTRA_TIMEOUT) {
                Ok(c) => *guard = Some(c),
                Err(e) => {
                    let why = match e {
                        HsError::Io(e) => e.to_string(),
                        HsError::Refused(m) => m,
                    };
                    self.usable.fetch_min(slot, Ordering::Relaxed);
                    eprintln!("rgfs-nbd client: {}: staying with {slot} connection(s): no other one ({why})", self.spec);
                    drop(guard);
                    (slot, guard) = self.connection();
                }
            }
        }
        let mut lost = false;
        let mut backoff = self.opts.first_backoff;
        let mut last = io::Error::other("no attempt made");
        for attempt in 0..self.opts.attempts.max(1) {
            if attempt > 0 {
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
            if guard.is_none() {
                match self.reconnect(lost, self.opts.io_timeout) {
                    Ok(c) => *guard = Some(c),
                    Err(HsError::Refused(m)) => {
                        return Err(Error::Io { op, offset, source: io::Error::other(format!("{}: {m}", self.spec)) })
                    }
                    Err(HsError::Io(e)) => {
                        last = e;
                        continue;
                    }
                }
            }
            let conn = guard.as_mut().expect("connected above");
            conn.cookie = conn.cookie.wrapping_add(1);
            let req = Request { flags: 0, kind, cookie: conn.cookie, offset, len };
            match exchange(&mut conn.stream, req, payload, read_into.as_deref_mut()) {
                Ok(0) => return Ok(()),
                Ok(errno) => {
                    let msg = format!("{}: the server answered {}", self.spec, errno_name(errno));
                    return Err(Error::Io { op, offset, source: io::Error::other(msg) });
                }
                Err(e) => {
                    eprintln!("rgfs-nbd client: {}: {op} at {offset}: connection lost ({e}); reconnecting", self.spec);
                    *guard = None;
                    lost = true;
                    last = e;
                }
            }
        }
        let msg = format!(
            "{}: connection lost and {} attempts to reconnect and retry failed (last error: {last})",
            self.spec, self.opts.attempts
        );
        Err(Error::Io { op, offset, source: io::Error::new(last.kind(), msg) })
    }

    /// A free live connection if there is one, else a free empty slot (a
    /// connection opens only when the live ones are all busy), else waits.
    fn connection(&self) -> (usize, MutexGuard<'_, Option<Conn>>) {
        let n = self.usable.load(Ordering::Relaxed).clamp(1, self.conns.len());
        for want_live in [true, false] {
            for (i, slot) in self.conns[..n].iter().enumerate() {
                if let Ok(g) = slot.try_lock() {
                    if g.is_some() || !want_live {
                        return (i, g);
                    }
                }
            }
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % n;
        (i, self.conns[i].lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// A new connection for an empty slot; `lost`: it replaces one that failed.
    fn reconnect(&self, lost: bool, handshake_timeout: Duration) -> std::result::Result<Conn, HsError> {
        let (stream, n) = connect(&self.url, &self.opts, handshake_timeout)?;
        if n.size != self.size {
            return Err(HsError::Refused(format!("the export is now {} bytes, was {}: not the same disk", n.size, self.size)));
        }
        if self.writable && n.flags & TX_READ_ONLY != 0 {
            return Err(HsError::Refused("the export became read-only".into()));
        }
        if lost {
            eprintln!("rgfs-nbd client: {}: reconnected", self.spec);
        }
        Ok(Conn { stream, cookie: 0 })
    }
}

/// Sends `req` (and its payload), reads the simple reply; returns its error
/// field. An `Err` means the connection is unusable.
fn exchange(s: &mut Stream, req: Request, payload: &[u8], read_into: Option<&mut [u8]>) -> io::Result<u32> {
    let mut msg = Vec::with_capacity(REQUEST_LEN);
    req.encode(&mut msg);
    s.write_all(&msg)?;
    s.write_all(payload)?;
    let mut r = [0u8; REPLY_LEN];
    s.read_exact(&mut r)?;
    if be32(&r[0..4]) != SIMPLE_REPLY_MAGIC || be64(&r[8..16]) != req.cookie {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "unexpected reply from the server"));
    }
    let error = be32(&r[4..8]);
    if error == 0 {
        if let Some(buf) = read_into {
            s.read_exact(buf)?;
        }
    }
    Ok(error)
}

/// Connects and negotiates; the connect and the handshake may each take
/// `handshake_timeout`, requests later `opts.io_timeout`.
fn connect(url: &NbdUrl, opts: &ClientOptions, handshake_timeout: Duration) -> std::result::Result<(Stream, Negotiated), HsError> {
    let mut stream = match &url.address {
        Address::Tcp { host, port } => {
            let mut last = io::Error::new(io::ErrorKind::NotFound, format!("{host}: no address found"));
            let mut found = None;
            for addr in (host.as_str(), *port).to_socket_addrs()? {
                match TcpStream::connect_timeout(&addr, handshake_timeout) {
                    Ok(s) => {
                        found = Some(s);
                        break;
                    }
                    Err(e) => last = e,
                }
            }
            let s = found.ok_or(last)?;
            s.set_nodelay(true)?;
            Stream::Tcp(s)
        }
        Address::Unix(path) => {
            let s = UnixStream::connect(path).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
            Stream::Unix(s)
        }
    };
    stream.set_timeouts(handshake_timeout)?;
    let n = handshake(&mut stream, &url.export).map_err(|e| match e {
        HsError::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof => HsError::Io(io::Error::new(
            e.kind(),
            "the server closed the connection during the handshake (too many clients, or it refused this one)",
        )),
        e => e,
    })?;
    stream.set_timeouts(opts.io_timeout)?;
    Ok((stream, n))
}

/// The client side of the fixed-newstyle handshake: NBD_OPT_GO, or
/// NBD_OPT_EXPORT_NAME for a server that does not know GO.
fn handshake(s: &mut Stream, export: &str) -> std::result::Result<Negotiated, HsError> {
    if read_u64(s)? != NBDMAGIC {
        return Err(HsError::Refused("not an NBD server (bad greeting)".into()));
    }
    if read_u64(s)? != IHAVEOPT {
        return Err(HsError::Refused("old-style NBD server: only fixed newstyle is supported".into()));
    }
    let server_flags = read_u16(s)?;
    if server_flags & FLAG_FIXED_NEWSTYLE == 0 {
        return Err(HsError::Refused("the server does not speak fixed newstyle".into()));
    }
    let no_zeroes = server_flags & FLAG_NO_ZEROES != 0;
    let client_flags = u32::from(FLAG_FIXED_NEWSTYLE | if no_zeroes { FLAG_NO_ZEROES } else { 0 });
    send(s, &client_flags.to_be_bytes())?;
    send(s, &option_request(OPT_GO, &encode_info_request(export, &[INFO_BLOCK_SIZE])))?;
    let mut size_flags = None;
    let mut max_payload = DEFAULT_MAX_PAYLOAD;
    loop {
        if read_u64(s)? != OPT_REPLY_MAGIC {
            return Err(HsError::Refused("bad option reply magic".into()));
        }
        let _opt = read_u32(s)?;
        let kind = read_u32(s)?;
        let len = read_u32(s)?;
        if len as usize > 2 * MAX_STRING + 64 {
            return Err(HsError::Refused(format!("option reply of {len} bytes is too long")));
        }
        let mut d = vec![0u8; len as usize];
        s.read_exact(&mut d)?;
        match kind {
            REP_ACK => break,
            REP_INFO if d.len() == 12 && be16(&d) == INFO_EXPORT => size_flags = Some((be64(&d[2..]), be16(&d[10..]))),
            REP_INFO if d.len() == 14 && be16(&d) == INFO_BLOCK_SIZE => max_payload = be32(&d[10..]),
            REP_ERR_UNSUP => return export_name(s, export, no_zeroes),
            k if k & (1 << 31) != 0 => {
                let why = match k {
                    REP_ERR_UNKNOWN => "unknown export",
                    REP_ERR_POLICY => "refused by policy",
                    REP_ERR_INVALID => "invalid request",
                    REP_ERR_TOO_BIG => "request too big",
                    _ => "error",
                };
                let msg = String::from_utf8_lossy(&d);
                return Err(HsError::Refused(format!("the server refused export {export:?}: {why}: {msg}")));
            }
            _ => {}
        }
    }
    let (size, flags) = size_flags.ok_or_else(|| HsError::Refused("the server sent no export size".into()))?;
    Ok(Negotiated { size, flags, max_payload })
}

fn export_name(s: &mut Stream, export: &str, no_zeroes: bool) -> std::result::Result<Negotiated, HsError> {
    send(s, &option_request(OPT_EXPORT_NAME, export.as_bytes()))?;
    let size = read_u64(s).map_err(|_| HsError::Refused(format!("the server closed on export {export:?} (unknown?)")))?;
    let flags = read_u16(s)?;
    if !no_zeroes {
        discard(s, 124)?;
    }
    Ok(Negotiated { size, flags, max_payload: DEFAULT_MAX_PAYLOAD })
}

impl BlockDevice for NbdDevice {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        check_range("read", offset, buf.len(), self.size)?;
        for (i, piece) in buf.chunks_mut(self.chunk).enumerate() {
            self.call("read", CMD_READ, offset + (i * self.chunk) as u64, &[], Some(piece))?;
        }
        Ok(())
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<()> {
        if !self.writable {
            return Err(Error::ReadOnly);
        }
        check_range("write", offset, buf.len(), self.size)?;
        for (i, piece) in buf.chunks(self.chunk).enumerate() {
            self.call("write", CMD_WRITE, offset + (i * self.chunk) as u64, piece, None)?;
        }
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        if !self.writable {
            return Ok(());
        }
        if self.flags & TX_SEND_FLUSH == 0 {
            let msg = format!("{}: the server does not support FLUSH, so writes cannot be made durable", self.spec);
            return Err(Error::Io { op: "flush", offset: 0, source: io::Error::other(msg) });
        }
        self.call("flush", CMD_FLUSH, 0, &[], None)
    }
}

impl Drop for NbdDevice {
    fn drop(&mut self) {
        // A clean goodbye; the server needs none, so errors are ignored.
        let mut msg = Vec::with_capacity(REQUEST_LEN);
        Request { flags: 0, kind: CMD_DISC, cookie: 0, offset: 0, len: 0 }.encode(&mut msg);
        for slot in &mut self.conns {
            if let Some(conn) = slot.get_mut().unwrap_or_else(|p| p.into_inner()).as_mut() {
                let _ = conn.stream.write_all(&msg);
            }
        }
    }
}
