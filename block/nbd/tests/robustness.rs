//! Bad peers and failures: malformed handshakes, oversize and out-of-range
//! requests (errors, nothing changed, the server lives on), SIGTERM after
//! acknowledged writes, and the client across a server restart.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rgfs_block::{Access, BlockDevice};
use rgfs_nbd::proto::*;
use rgfs_nbd::{ClientOptions, NbdDevice};
use support::*;

const MIB: usize = 1 << 20;

/// A hand-driven NBD client that can send anything.
struct Raw(TcpStream);

impl Raw {
    /// Connects and reads the greeting.
    fn connect(port: u16) -> Raw {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut r = Raw(s);
        let mut g = [0u8; 18];
        r.0.read_exact(&mut g).unwrap();
        assert_eq!(be64(&g[0..8]), NBDMAGIC);
        assert_eq!(be64(&g[8..16]), IHAVEOPT);
        assert_eq!(be16(&g[16..18]) & FLAG_FIXED_NEWSTYLE, FLAG_FIXED_NEWSTYLE);
        r
    }

    /// Connects, sends fixed-newstyle + no-zeroes client flags.
    fn hello(port: u16) -> Raw {
        let mut r = Raw::connect(port);
        r.send(&3u32.to_be_bytes());
        r
    }

    fn send(&mut self, b: &[u8]) {
        self.0.write_all(b).unwrap();
    }

    /// Sends an option and collects replies up to ACK or an error.
    fn option(&mut self, opt: u32, data: &[u8]) -> Vec<(u32, Vec<u8>)> {
        self.send(&option_request(opt, data));
        let mut replies = Vec::new();
        loop {
            let mut h = [0u8; 20];
            self.0.read_exact(&mut h).unwrap();
            assert_eq!(be64(&h[0..8]), OPT_REPLY_MAGIC);
            assert_eq!(be32(&h[8..12]), opt);
            let kind = be32(&h[12..16]);
            let mut d = vec![0u8; be32(&h[16..20]) as usize];
            self.0.read_exact(&mut d).unwrap();
            replies.push((kind, d));
            if kind == REP_ACK || kind & (1 << 31) != 0 {
                return replies;
            }
        }
    }

    fn go(port: u16, name: &str) -> Raw {
        let mut r = Raw::hello(port);
        let replies = r.option(OPT_GO, &encode_info_request(name, &[]));
        assert_eq!(replies.last().unwrap().0, REP_ACK, "{replies:?}");
        r
    }

    /// Sends a request; returns the reply's error and a READ's data.
    fn request(&mut self, kind: u16, flags: u16, offset: u64, len: u32, payload: &[u8]) -> (u32, Vec<u8>) {
        let mut m = Vec::new();
        Request { flags, kind, cookie: 0xc0ffee, offset, len }.encode(&mut m);
        m.extend_from_slice(payload);
        self.send(&m);
        let mut r = [0u8; REPLY_LEN];
        self.0.read_exact(&mut r).unwrap();
        assert_eq!(be32(&r[0..4]), SIMPLE_REPLY_MAGIC);
        assert_eq!(be64(&r[8..16]), 0xc0ffee);
        let err = be32(&r[4..8]);
        let mut data = Vec::new();
        if err == 0 && kind == CMD_READ {
            data.resize(len as usize, 0);
            self.0.read_exact(&mut data).unwrap();
        }
        (err, data)
    }

    /// Whether the server closed the connection (EOF or reset).
    fn closed(mut self) -> bool {
        let mut b = [0u8; 64];
        loop {
            match self.0.read(&mut b) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) => return e.kind() != std::io::ErrorKind::WouldBlock && e.kind() != std::io::ErrorKind::TimedOut,
            }
        }
    }
}

fn served_file(dir: &std::path::Path, len: usize, byte: u8, extra: &[&str]) -> (Served, std::path::PathBuf, Vec<u8>) {
    let file = dir.join("disk.img");
    let model = image(&file, len, byte);
    let export = format!("disk={}", file.display());
    let mut args = vec!["--export", &export];
    args.extend_from_slice(extra);
    (Served::start(&args, None), file, model)
}

#[test]
fn bad_handshakes_get_errors_or_a_closed_connection_and_change_nothing() {
    let dir = scratch();
    let (served, file, model) = served_file(dir.path(), MIB, 0x33, &[]);
    let port = served.port.unwrap();
    // Unknown client flags; a client that is not fixed-newstyle.
    for flags in [0x80u32, 0] {
        let mut r = Raw::connect(port);
        r.send(&flags.to_be_bytes());
        assert!(r.closed(), "client flags {flags:#x}");
    }
    // Not an NBD client at all.
    let mut r = Raw::connect(port);
    r.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(r.closed());
    // A bad option magic; an option announcing 1 GiB of data.
    let mut r = Raw::hello(port);
    r.send(&[0xee; 16]);
    assert!(r.closed());
    let mut r = Raw::hello(port);
    r.send(&IHAVEOPT.to_be_bytes());
    r.send(&OPT_GO.to_be_bytes());
    r.send(&(1u32 << 30).to_be_bytes());
    assert!(r.closed());
    // EXPORT_NAME of an unknown export can only be answered by closing.
    let mut r = Raw::hello(port);
    r.send(&option_request(OPT_EXPORT_NAME, b"nosuch"));
    assert!(r.closed());
    // Errors that keep the handshake going, then a GO that works.
    let mut r = Raw::hello(port);
    assert_eq!(r.option(99, b"junk")[0].0, REP_ERR_UNSUP);
    assert_eq!(r.option(OPT_STRUCTURED_REPLY, &[])[0].0, REP_ERR_UNSUP);
    assert_eq!(r.option(OPT_STARTTLS, &[])[0].0, REP_ERR_UNSUP);
    assert_eq!(r.option(OPT_GO, &[0, 0, 0, 9, b'd'])[0].0, REP_ERR_INVALID);
    assert_eq!(r.option(OPT_LIST, b"x")[0].0, REP_ERR_INVALID);
    let unknown = r.option(OPT_GO, &encode_info_request("nosuch", &[]));
    assert_eq!(unknown[0].0, REP_ERR_UNKNOWN);
    assert!(String::from_utf8_lossy(&unknown[0].1).contains("no export named \"nosuch\""));
    let info = r.option(OPT_INFO, &encode_info_request("disk", &[INFO_NAME]));
    assert_eq!(info.last().unwrap().0, REP_ACK);
    assert!(info.iter().any(|(k, d)| *k == REP_INFO && be16(d) == INFO_EXPORT && be64(&d[2..]) == MIB as u64));
    assert_eq!(r.option(OPT_GO, &encode_info_request("disk", &[])).last().unwrap().0, REP_ACK);
    assert_eq!(r.request(CMD_READ, 0, 0, 4, &[]), (0, vec![0x33; 4]));
    // ABORT is acknowledged, then the connection ends.
    let mut r = Raw::hello(port);
    assert_eq!(r.option(OPT_ABORT, &[])[0].0, REP_ACK);
    assert!(r.closed());
    // Our client reports an unknown export clearly.
    let err = NbdDevice::open(&served.url("nosuch"), Access::ReadWrite).unwrap_err();
    assert!(err.to_string().contains("unknown export"), "{err}");
    assert_file(&file, &model);
    // The server is still serving.
    let dev = NbdDevice::open(&served.url("disk"), Access::ReadWrite).unwrap();
    dev.write_at(0, b"alive").unwrap();
}

#[test]
fn oversize_and_out_of_range_requests_get_errors_and_change_nothing() {
    let dir = scratch();
    let (served, file, model) = served_file(dir.path(), MIB, 0x33, &["--max-request", "65536"]);
    let port = served.port.unwrap();
    let mut r = Raw::go(port, "disk");
    let size = MIB as u64;
    let big = vec![0xffu8; 65537];
    assert_eq!(r.request(CMD_WRITE, 0, 0, 65537, &big).0, EINVAL, "oversize write");
    assert_eq!(r.request(CMD_READ, 0, 0, 65537, &[]).0, EINVAL, "oversize read");
    assert_eq!(r.request(CMD_WRITE, 0, size - 2, 4, &[0xff; 4]).0, ENOSPC, "write past the end");
    assert_eq!(r.request(CMD_READ, 0, size, 1, &[]).0, EINVAL, "read past the end");
    assert_eq!(r.request(CMD_READ, 0, u64::MAX - 1, 4, &[]).0, EINVAL, "offset overflow");
    assert_eq!(r.request(CMD_WRITE_ZEROES, 0, size - 4096, 8192, &[]).0, ENOSPC, "zeroes past the end");
    assert_eq!(r.request(CMD_TRIM, 0, size, 4096, &[]).0, EINVAL, "trim past the end");
    assert_eq!(r.request(42, 0, 0, 0, &[]).0, EINVAL, "unknown command");
    assert_eq!(r.request(CMD_WRITE, 0x8000, 0, 4, &[0xff; 4]).0, EINVAL, "unknown flag");
    // The connection is still in step: a good read and flush work.
    assert_eq!(r.request(CMD_READ, 0, 0, 8, &[]), (0, vec![0x33; 8]));
    assert_eq!(r.request(CMD_FLUSH, 0, 0, 0, &[]).0, 0);
    assert_file(&file, &model);
    // A bad request magic cannot be skipped: the connection closes.
    r.send(&[0u8; REQUEST_LEN]);
    assert!(r.closed());
    assert_file(&file, &model);
    // Our client splits requests to the advertised maximum.
    let dev = NbdDevice::open(&served.url("disk"), Access::ReadWrite).unwrap();
    dev.write_at(1, &pattern(200_000, 9)).unwrap();
    let mut m = model.clone();
    m[1..200_001].copy_from_slice(&pattern(200_000, 9));
    assert_file(&file, &m);
}

#[test]
fn a_read_only_export_refuses_every_write() {
    let dir = scratch();
    let (served, file, model) = served_file(dir.path(), MIB, 0x33, &["--read-only"]);
    let mut r = Raw::go(served.port.unwrap(), "disk");
    assert_eq!(r.request(CMD_WRITE, 0, 0, 4, &[0xff; 4]).0, EPERM);
    assert_eq!(r.request(CMD_WRITE_ZEROES, 0, 0, 4096, &[]).0, EPERM);
    assert_eq!(r.request(CMD_TRIM, 0, 0, 4096, &[]).0, EPERM);
    let err = NbdDevice::open(&served.url("disk"), Access::ReadWrite).unwrap_err();
    assert!(err.to_string().contains("read-only"), "{err}");
    let dev = NbdDevice::open(&served.url("disk"), Access::ReadOnly).unwrap();
    assert!(dev.write_at(0, b"x").is_err());
    assert_file(&file, &model);
}

fn quick(attempts: u32) -> ClientOptions {
    ClientOptions { attempts, first_backoff: Duration::from_millis(20), io_timeout: Duration::from_secs(20) }
}

#[test]
fn sigterm_keeps_every_acknowledged_write() {
    let dir = scratch();
    let sock = dir.path().join("s.sock");
    let file = dir.path().join("disk.img");
    let mut model = image(&file, 4 * MIB, 0);
    let served = Served::start(&["--export", &format!("disk={}", file.display())], Some(&sock));
    let url = served.url("disk");
    // A writer records each write the server acknowledged, until it fails.
    let acked = Arc::new(Mutex::new(Vec::new()));
    let started = Arc::new(AtomicBool::new(false));
    let writer = {
        let (acked, started) = (Arc::clone(&acked), Arc::clone(&started));
        std::thread::spawn(move || {
            let dev = NbdDevice::open_with(&url, Access::ReadWrite, quick(2)).unwrap();
            for i in 0..1024usize {
                if dev.write_at((i * 4096) as u64, &pattern(4096, i as u8 | 1)).is_err() {
                    return;
                }
                acked.lock().unwrap().push(i);
                if i == 64 {
                    started.store(true, Ordering::SeqCst);
                }
            }
        })
    };
    while !started.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let (status, log) = served.signal_and_wait(libc::SIGTERM);
    assert!(status.success(), "rgfs-nbd after SIGTERM: {status}\n{log}");
    assert!(log.contains("all exports flushed"), "{log}");
    writer.join().unwrap();
    let acked = acked.lock().unwrap();
    assert!(acked.len() > 64);
    for &i in acked.iter() {
        model[i * 4096..(i + 1) * 4096].copy_from_slice(&pattern(4096, i as u8 | 1));
    }
    // Writes sent but not acknowledged may or may not be there; everything
    // acknowledged must be.
    let got = std::fs::read(&file).unwrap();
    for &i in acked.iter() {
        assert!(got[i * 4096..(i + 1) * 4096] == model[i * 4096..(i + 1) * 4096], "acknowledged block {i} lost");
    }
    assert!(!sock.exists(), "the socket is removed at exit");
}

#[test]
fn the_client_reconnects_after_the_server_restarts() {
    let dir = scratch();
    let sock = dir.path().join("s.sock");
    let file = dir.path().join("disk.img");
    let mut model = image(&file, 4 * MIB, 0);
    let export = format!("disk={}", file.display());
    let served = Served::start(&["--export", &export], Some(&sock));
    let dev = NbdDevice::open(&served.url("disk"), Access::ReadWrite).unwrap();
    dev.write_at(0, &pattern(8192, 1)).unwrap();
    model[..8192].copy_from_slice(&pattern(8192, 1));
    // A crash: SIGKILL, no flush. The next server comes up a little later;
    // meanwhile the client's write is retried.
    let (status, _) = served.signal_and_wait(libc::SIGKILL);
    assert!(!status.success());
    let restarter = {
        let (export, sock) = (export.clone(), sock.clone());
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            Served::start(&["--export", &export], Some(&sock))
        })
    };
    dev.write_at(MIB as u64, &pattern(4096, 2)).unwrap();
    model[MIB..MIB + 4096].copy_from_slice(&pattern(4096, 2));
    dev.flush().unwrap();
    let mut back = vec![0u8; 8192];
    dev.read_at(0, &mut back).unwrap();
    assert_eq!(back, pattern(8192, 1));
    assert_file(&file, &model);
    // The server goes away for good: a bounded number of tries, then a
    // clear error.
    let second = restarter.join().unwrap();
    let dev = NbdDevice::open_with(&second.url("disk"), Access::ReadWrite, quick(3)).unwrap();
    let (status, _) = second.signal_and_wait(libc::SIGTERM);
    assert!(status.success());
    let err = dev.write_at(0, b"lost").unwrap_err().to_string();
    assert!(err.contains("connection lost and 3 attempts to reconnect and retry failed"), "{err}");
    assert_file(&file, &model);
}

#[test]
fn the_client_fails_stop_when_the_export_changed_size() {
    let dir = scratch();
    let sock = dir.path().join("s.sock");
    let (a, b) = (dir.path().join("a.img"), dir.path().join("b.img"));
    image(&a, MIB, 0);
    image(&b, 2 * MIB, 0);
    let served = Served::start(&["--export", &format!("disk={}", a.display())], Some(&sock));
    let dev = NbdDevice::open_with(&served.url("disk"), Access::ReadWrite, quick(20)).unwrap();
    drop(served);
    let _other = Served::start(&["--export", &format!("disk={}", b.display())], Some(&sock));
    let err = dev.write_at(0, b"x").unwrap_err().to_string();
    assert!(err.contains("not the same disk"), "{err}");
    assert_file(&b, &[0; 2 * MIB]);
}

#[test]
fn clients_beyond_max_clients_are_refused_with_a_clear_error() {
    let dir = scratch();
    let (served, file, model) = served_file(dir.path(), MIB, 0x33, &["--max-clients", "1"]);
    let first = NbdDevice::open(&served.url("disk"), Access::ReadWrite).unwrap();
    let err = NbdDevice::open(&served.url("disk"), Access::ReadWrite).unwrap_err().to_string();
    assert!(err.contains("too many clients"), "{err}");
    // The slot frees when the first client leaves.
    drop(first);
    let start = std::time::Instant::now();
    let second = loop {
        match NbdDevice::open(&served.url("disk"), Access::ReadOnly) {
            Ok(d) => break d,
            Err(e) => assert!(start.elapsed() < Duration::from_secs(20), "{e}"),
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut b = [0u8; 4];
    second.read_at(0, &mut b).unwrap();
    assert_eq!(b, [0x33; 4]);
    assert_file(&file, &model);
}

#[test]
fn a_write_payload_that_stalls_ends_the_connection() {
    use rgfs_nbd::session::{serve, Export, Limits};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let dev = Arc::new(rgfs_block::MemDevice::new(MIB));
    let device: Arc<dyn BlockDevice> = dev.clone();
    std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let exports = [Export { name: "disk".into(), device, read_only: false }];
        let limits = Limits { payload_timeout: Duration::from_millis(200), ..Limits::default() };
        let _ = done_tx.send(serve(&mut conn, &exports, &limits).map_err(|e| e.to_string()));
    });
    let mut r = Raw::go(port, "disk");
    let mut m = Vec::new();
    Request { flags: 0, kind: CMD_WRITE, cookie: 1, offset: 0, len: 4096 }.encode(&mut m);
    m.extend_from_slice(&[0xff; 10]);
    r.send(&m);
    // The client stays connected but sends no more: the server gives up.
    let end = done_rx.recv_timeout(Duration::from_secs(20)).expect("the session ended");
    assert!(end.is_err(), "{end:?}");
    assert!(dev.snapshot().iter().all(|&b| b == 0), "nothing of the partial write landed");
    drop(r);
}

#[test]
fn a_device_makes_do_when_the_server_gives_no_extra_connection() {
    let dir = scratch();
    let (served, file, mut model) = served_file(dir.path(), MIB, 0, &["--max-clients", "1"]);
    let dev = Arc::new(NbdDevice::open(&served.url("disk"), Access::ReadWrite).unwrap());
    let wrote = write_from_threads(&dev, 4, 32, 4096, 128 * 1024);
    dev.flush().unwrap();
    for (off, data) in wrote {
        model[off..off + data.len()].copy_from_slice(&data);
    }
    assert_file(&file, &model);
}

#[test]
fn bad_command_lines_get_one_clear_line_and_exit_1() {
    let bin = env!("CARGO_BIN_EXE_rgfs-nbd");
    let dir = scratch();
    let img = dir.path().join("d.img");
    image(&img, 4096, 0);
    let d = format!("d={}", img.display());
    for (args, want) in [
        (&["serve"][..], "need at least one --export"),
        (&["serve", "--export", "disk", "--listen", "127.0.0.1:0"], "expected NAME=DEVICE"),
        (&["serve", "--export", "d=/nonexistent/x.img", "--listen", "127.0.0.1:0"], "/nonexistent/x.img: cannot access"),
        (&["serve", "--export", &d, "--export", &d, "--listen", "127.0.0.1:0"], "given twice"),
        (&["serve", "--export", &d, "--listen", "nowhere"], "--listen nowhere"),
        (&["serve", "--export", &d, "--listen", "127.0.0.1:0", "--max-request", "10"], "at least 4096"),
        (&["serve", "--bogus"], "unknown argument --bogus"),
        (&["bench", "nbds://h/e"], "TLS"),
    ] {
        let out = std::process::Command::new(bin).args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.starts_with("rgfs-nbd: ") && err.contains(want), "{args:?}: {err}");
    }
}
