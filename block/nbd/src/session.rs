//! One client connection on the server: the fixed-newstyle handshake, then
//! the transmission loop. Generic over the stream so the request parser can
//! be driven from memory (the fuzz test does).
//!
//! Invariants: memory per connection is bounded by `max_request` plus a
//! constant (payloads above it are read in small pieces and dropped); one
//! request is in flight per connection (it is executed and answered before
//! the next header is read); a write is answered only after `write_at`
//! returned, and a FUA write or a FLUSH only after `flush` returned.

use std::io::{self, Read, Write};
use std::sync::Arc;
use std::time::Duration;

use rgfs_block::{BlockDevice, Error as BlockError};

use crate::proto::*;

/// One named export.
pub struct Export {
    pub name: String,
    pub device: Arc<dyn BlockDevice>,
    pub read_only: bool,
}

impl Export {
    fn tx_flags(&self) -> u16 {
        // One device shared by every connection: a FLUSH on any connection
        // covers the writes of all, so several connections are safe.
        let mut f = TX_HAS_FLAGS | TX_SEND_FLUSH | TX_SEND_FUA | TX_SEND_TRIM | TX_SEND_WRITE_ZEROES | TX_CAN_MULTI_CONN;
        if self.read_only {
            f |= TX_READ_ONLY;
        }
        f
    }
}

/// Per-connection limits.
#[derive(Clone, Debug)]
pub struct Limits {
    /// The largest READ or WRITE payload accepted (advertised as the
    /// maximum block size); larger requests get EINVAL.
    pub max_request: u32,
    /// How long the client may stay silent during the handshake.
    pub handshake_timeout: Duration,
    /// How long a WRITE's payload may take to arrive once its header has.
    /// (Between requests a client may be idle as long as it likes.)
    pub payload_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request: DEFAULT_MAX_PAYLOAD,
            handshake_timeout: Duration::from_secs(30),
            payload_timeout: Duration::from_secs(60),
        }
    }
}

/// A stream the session can run on.
pub trait Conn: Read + Write {
    /// Sets the read timeout (`None`: wait as long as the client is idle).
    fn set_timeout(&self, t: Option<Duration>) -> io::Result<()>;
}

impl Conn for std::net::TcpStream {
    fn set_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.set_read_timeout(t)
    }
}

impl Conn for std::os::unix::net::UnixStream {
    fn set_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.set_read_timeout(t)
    }
}

/// Why a session ended other than by the client's DISC or close.
#[derive(Debug)]
pub enum End {
    /// The client broke the protocol; the connection was closed.
    Protocol(String),
    Io(io::Error),
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::Protocol(m) => write!(f, "protocol error: {m}"),
            End::Io(e) => write!(f, "{e}"),
        }
    }
}

impl From<io::Error> for End {
    fn from(e: io::Error) -> Self {
        End::Io(e)
    }
}

fn protocol<T>(m: impl Into<String>) -> Result<T, End> {
    Err(End::Protocol(m.into()))
}

/// Options beyond this many in one handshake close the connection: with the
/// handshake timeout it bounds how long a client can hold a slot unused.
const MAX_OPTIONS: usize = 256;
/// Option payloads above this close the connection (names are ≤ 4096 bytes).
const MAX_OPTION_LEN: u32 = 2 * MAX_STRING as u32 + 64;

/// Runs one connection to its end. `Ok(Some(name))`: the client used export
/// `name` and left cleanly; `Ok(None)`: it left during the handshake.
pub fn serve<C: Conn>(conn: &mut C, exports: &[Export], limits: &Limits) -> Result<Option<String>, End> {
    conn.set_timeout(Some(limits.handshake_timeout))?;
    let Some(export) = handshake(conn, exports, limits)? else { return Ok(None) };
    conn.set_timeout(None)?;
    transmission(conn, export, limits)?;
    Ok(Some(export.name.clone()))
}

fn find<'a>(exports: &'a [Export], name: &str) -> Option<&'a Export> {
    // The empty name is the default export: the only one, when there is one.
    match exports {
        [only] if name.is_empty() => Some(only),
        _ => exports.iter().find(|e| e.name == name),
    }
}

fn handshake<'a, C: Conn>(conn: &mut C, exports: &'a [Export], limits: &Limits) -> Result<Option<&'a Export>, End> {
    let mut hello = Vec::with_capacity(18);
    hello.extend_from_slice(&NBDMAGIC.to_be_bytes());
    hello.extend_from_slice(&IHAVEOPT.to_be_bytes());
    hello.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    send(conn, &hello)?;
    let client_flags = read_u32(conn)?;
    if client_flags & !u32::from(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES) != 0 {
        return protocol(format!("unknown client flags {client_flags:#x}"));
    }
    if client_flags & u32::from(FLAG_FIXED_NEWSTYLE) == 0 {
        return protocol("the client does not speak fixed newstyle");
    }
    let no_zeroes = client_flags & u32::from(FLAG_NO_ZEROES) != 0;
    for _ in 0..MAX_OPTIONS {
        if read_u64(conn)? != IHAVEOPT {
            return protocol("bad option magic");
        }
        let opt = read_u32(conn)?;
        let len = read_u32(conn)?;
        if len > MAX_OPTION_LEN {
            return protocol(format!("option {opt} of {len} bytes is too long"));
        }
        let mut data = vec![0u8; len as usize];
        conn.read_exact(&mut data)?;
        let err = |kind: u32, msg: &str| option_reply(opt, kind, msg.as_bytes());
        match opt {
            OPT_EXPORT_NAME => {
                // No error reply is possible here: an unknown name closes.
                let Some(e) = std::str::from_utf8(&data).ok().and_then(|n| find(exports, n)) else {
                    return protocol(format!("unknown export {:?}", String::from_utf8_lossy(&data)));
                };
                let mut r = Vec::with_capacity(10 + 124);
                r.extend_from_slice(&e.device.size().to_be_bytes());
                r.extend_from_slice(&e.tx_flags().to_be_bytes());
                if !no_zeroes {
                    r.resize(r.len() + 124, 0);
                }
                send(conn, &r)?;
                return Ok(Some(e));
            }
            OPT_ABORT => {
                // The client may already have closed; the reply is a courtesy.
                let _ = send(conn, &option_reply(opt, REP_ACK, &[]));
                return Ok(None);
            }
            OPT_LIST if !data.is_empty() => send(conn, &err(REP_ERR_INVALID, "NBD_OPT_LIST takes no data"))?,
            OPT_LIST => {
                let mut out = Vec::new();
                for e in exports {
                    let mut d = (e.name.len() as u32).to_be_bytes().to_vec();
                    d.extend_from_slice(e.name.as_bytes());
                    out.extend(option_reply(opt, REP_SERVER, &d));
                }
                out.extend(option_reply(opt, REP_ACK, &[]));
                send(conn, &out)?;
            }
            OPT_INFO | OPT_GO => match parse_info_request(&data) {
                Err(m) => send(conn, &err(REP_ERR_INVALID, m))?,
                Ok((name, infos)) => match find(exports, name) {
                    None => send(conn, &err(REP_ERR_UNKNOWN, &format!("no export named {name:?}")))?,
                    Some(e) => {
                        send(conn, &info_replies(opt, e, &infos, limits))?;
                        if opt == OPT_GO {
                            return Ok(Some(e));
                        }
                    }
                },
            },
            OPT_STARTTLS => send(conn, &err(REP_ERR_UNSUP, "TLS is not supported by this server"))?,
            OPT_STRUCTURED_REPLY => send(conn, &err(REP_ERR_UNSUP, "structured replies are not supported"))?,
            _ => send(conn, &err(REP_ERR_UNSUP, "option not supported"))?,
        }
    }
    protocol(format!("more than {MAX_OPTIONS} options in one handshake"))
}

/// Splits an INFO/GO payload into the export name and the info types.
fn parse_info_request(d: &[u8]) -> Result<(&str, Vec<u16>), &'static str> {
    let bad = "malformed NBD_OPT_INFO/GO data";
    let name_len = be32(d.get(0..4).ok_or(bad)?) as usize;
    if name_len > MAX_STRING {
        return Err("export name longer than 4096 bytes");
    }
    let name = d.get(4..4 + name_len).ok_or(bad)?;
    let name = std::str::from_utf8(name).map_err(|_| "export name is not UTF-8")?;
    let rest = &d[4 + name_len..];
    let n = be16(rest.get(0..2).ok_or(bad)?) as usize;
    if rest.len() != 2 + 2 * n {
        return Err(bad);
    }
    Ok((name, rest[2..].chunks_exact(2).map(be16).collect()))
}

fn info_replies(opt: u32, e: &Export, asked: &[u16], limits: &Limits) -> Vec<u8> {
    let mut out = Vec::new();
    let mut export = INFO_EXPORT.to_be_bytes().to_vec();
    export.extend_from_slice(&e.device.size().to_be_bytes());
    export.extend_from_slice(&e.tx_flags().to_be_bytes());
    out.extend(option_reply(opt, REP_INFO, &export));
    // Always sent: any byte offset and length is served (minimum 1).
    let mut bs = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
    for v in [1u32, 4096, limits.max_request] {
        bs.extend_from_slice(&v.to_be_bytes());
    }
    out.extend(option_reply(opt, REP_INFO, &bs));
    if asked.contains(&INFO_NAME) {
        let mut name = INFO_NAME.to_be_bytes().to_vec();
        name.extend_from_slice(e.name.as_bytes());
        out.extend(option_reply(opt, REP_INFO, &name));
    }
    out.extend(option_reply(opt, REP_ACK, &[]));
    out
}

/// The NBD error for a failed device call.
fn nbd_errno(e: &BlockError, write: bool) -> u32 {
    match e {
        BlockError::OutOfRange { .. } if write => ENOSPC,
        BlockError::OutOfRange { .. } => EINVAL,
        BlockError::ReadOnly => EPERM,
        BlockError::Io { source, .. } | BlockError::Open { source, .. } => match source.raw_os_error() {
            Some(libc::ENOSPC | libc::EDQUOT | libc::EFBIG) => ENOSPC,
            Some(libc::EPERM | libc::EROFS) => EPERM,
            Some(libc::ENOMEM) => ENOMEM,
            _ => EIO,
        },
    }
}

/// Whether `[offset, offset + len)` lies inside the export.
fn in_range(e: &Export, offset: u64, len: u32) -> bool {
    offset.checked_add(u64::from(len)).is_some_and(|end| end <= e.device.size())
}

/// Zeroes written per device call for WRITE_ZEROES (no payload to bound it).
const ZERO_CHUNK: usize = 1 << 20;

fn transmission<C: Conn>(conn: &mut C, e: &Export, limits: &Limits) -> Result<(), End> {
    // One buffer, reused: reply header then data (a read reply is one write).
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let mut hdr = [0u8; REQUEST_LEN];
        match conn.read_exact(&mut hdr) {
            Ok(()) => {}
            // A client that closes without DISC has simply left.
            Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(err) => return Err(err.into()),
        }
        let Some(req) = Request::decode(&hdr) else { return protocol("bad request magic") };
        let known_flags = CMD_FLAG_FUA | CMD_FLAG_NO_HOLE;
        let flags_ok = req.flags & !known_flags == 0;
        let oversize = req.len > limits.max_request;
        if req.kind == CMD_WRITE {
            conn.set_timeout(Some(limits.payload_timeout))?;
        }
        let error = match req.kind {
            CMD_WRITE if oversize || !flags_ok => {
                discard(conn, u64::from(req.len))?;
                conn.set_timeout(None)?;
                EINVAL
            }
            CMD_WRITE => {
                buf.resize(req.len as usize, 0);
                conn.read_exact(&mut buf)?;
                conn.set_timeout(None)?;
                if e.read_only {
                    EPERM
                } else if !in_range(e, req.offset, req.len) {
                    ENOSPC
                } else {
                    write_then_maybe_flush(e, req, |d| d.write_at(req.offset, &buf))
                }
            }
            _ if !flags_ok => EINVAL,
            CMD_READ if oversize || !in_range(e, req.offset, req.len) => EINVAL,
            CMD_READ => {
                buf.resize(REPLY_LEN + req.len as usize, 0);
                match e.device.read_at(req.offset, &mut buf[REPLY_LEN..]) {
                    Ok(()) => {
                        encode_reply(&mut buf, 0, req.cookie);
                        send(conn, &buf)?;
                        continue;
                    }
                    Err(err) => nbd_errno(&err, false),
                }
            }
            CMD_DISC => return Ok(()),
            CMD_FLUSH => e.device.flush().err().map_or(0, |err| nbd_errno(&err, true)),
            CMD_TRIM | CMD_WRITE_ZEROES if e.read_only => EPERM,
            // TRIM is a hint and the device has no discard: the data stays.
            CMD_TRIM if !in_range(e, req.offset, req.len) => EINVAL,
            CMD_TRIM => write_then_maybe_flush(e, req, |_| Ok(())),
            CMD_WRITE_ZEROES if !in_range(e, req.offset, req.len) => ENOSPC,
            CMD_WRITE_ZEROES => write_then_maybe_flush(e, req, |d| write_zeroes(d, req.offset, req.len)),
            _ => EINVAL,
        };
        let mut reply = [0u8; REPLY_LEN];
        encode_reply(&mut reply, error, req.cookie);
        send(conn, &reply)?;
    }
}

/// Runs a write-like command, then flushes it when the client asked for FUA.
fn write_then_maybe_flush(e: &Export, req: Request, op: impl FnOnce(&dyn BlockDevice) -> rgfs_block::Result<()>) -> u32 {
    let result = op(&*e.device).and_then(|()| if req.flags & CMD_FLAG_FUA != 0 { e.device.flush() } else { Ok(()) });
    result.err().map_or(0, |err| nbd_errno(&err, true))
}

fn write_zeroes(d: &dyn BlockDevice, offset: u64, len: u32) -> rgfs_block::Result<()> {
    static ZEROES: [u8; ZERO_CHUNK] = [0; ZERO_CHUNK];
    let mut done = 0u64;
    while done < u64::from(len) {
        let n = (u64::from(len) - done).min(ZERO_CHUNK as u64) as usize;
        d.write_at(offset + done, &ZEROES[..n])?;
        done += n as u64;
    }
    Ok(())
}
