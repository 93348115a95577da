//! Real processes for the NBD tests: our server (`rgfs-nbd serve`), qemu-nbd,
//! and helpers to compare a backing file with what was written.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

#[path = "../../../../tests/src/oracle.rs"]
#[allow(dead_code)]
mod oracle;

/// Whether a program is on PATH; skips (or, in CI, fails) when it is not.
#[allow(unused_imports)] // not every test file needs it
pub use oracle::require as have;

pub fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("rgfs-nbd-test").tempdir().expect("temp dir")
}

/// A file of `len` bytes filled with `byte`.
pub fn image(path: &Path, len: usize, byte: u8) -> Vec<u8> {
    let content = vec![byte; len];
    std::fs::write(path, &content).unwrap();
    content
}

/// A deterministic pattern unlike its neighbours.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u32).wrapping_mul(2_654_435_761).rotate_left(seed as u32 % 32) as u8 ^ seed).collect()
}

/// Asserts the file equals `model`, naming the first differing byte.
pub fn assert_file(path: &Path, model: &[u8]) {
    let got = std::fs::read(path).unwrap();
    assert_eq!(got.len(), model.len(), "file length");
    if let Some(i) = got.iter().zip(model).position(|(a, b)| a != b) {
        panic!("{}: byte {i} is {:#x}, expected {:#x}", path.display(), got[i], model[i]);
    }
}

/// A running `rgfs-nbd serve`.
pub struct Served {
    child: Option<Child>,
    /// `nbd://127.0.0.1:PORT` or `nbd+unix://` with the socket; add `/NAME`.
    pub port: Option<u16>,
    pub socket: Option<PathBuf>,
}

impl Served {
    /// Starts the server with `args` after `serve`, on 127.0.0.1 with a free
    /// port, or on the Unix socket `unix`; waits until it listens.
    pub fn start(args: &[&str], unix: Option<&Path>) -> Served {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_rgfs-nbd"));
        cmd.arg("serve").args(args);
        match unix {
            Some(p) => cmd.arg("--unix").arg(p),
            None => cmd.args(["--listen", "127.0.0.1:0"]),
        };
        let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        if !line.starts_with("listening on ") {
            let mut err = String::new();
            child.stderr.take().unwrap().read_to_string(&mut err).ok();
            let _ = child.kill();
            panic!("rgfs-nbd did not start: {line}{err}");
        }
        let port = line.trim().rsplit_once(':').and_then(|(_, p)| p.parse().ok()).filter(|_| unix.is_none());
        Served { child: Some(child), port, socket: unix.map(Path::to_path_buf) }
    }

    pub fn url(&self, export: &str) -> String {
        match (&self.socket, self.port) {
            (Some(s), _) => format!("nbd+unix:///{export}?socket={}", s.display()),
            (None, Some(p)) => format!("nbd://127.0.0.1:{p}/{export}"),
            _ => unreachable!(),
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    /// Sends `sig`, waits (at most 60 s) for the exit; returns the status
    /// and everything the server wrote on stderr.
    pub fn signal_and_wait(mut self, sig: i32) -> (ExitStatus, String) {
        let mut child = self.child.take().unwrap();
        // SAFETY: a signal to our own child, by pid.
        unsafe { libc::kill(child.id() as i32, sig) };
        let status = wait_timeout(&mut child, Duration::from_secs(60)).expect("server exits after the signal");
        let mut err = String::new();
        child.stderr.take().unwrap().read_to_string(&mut err).ok();
        (status, err)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn wait_timeout(child: &mut Child, t: Duration) -> Option<ExitStatus> {
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        if start.elapsed() > t {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A running `qemu-nbd` serving `file` as export `name` to up to 4 clients.
pub struct QemuNbd(Child);

impl QemuNbd {
    /// Starts qemu-nbd with `listen` (its listening options) and waits until
    /// `ready` can connect.
    fn spawn(file: &Path, name: &str, listen: &[String], ready: impl Fn() -> bool) -> QemuNbd {
        let child = Command::new("qemu-nbd")
            .args(["-f", "raw", "--persistent", "--shared=4", "-x", name])
            .args(listen)
            .arg(file)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let q = QemuNbd(child);
        let start = Instant::now();
        while !ready() {
            assert!(start.elapsed() < Duration::from_secs(20), "qemu-nbd did not start listening ({listen:?})");
            std::thread::sleep(Duration::from_millis(20));
        }
        q
    }

    /// On the Unix socket `sock`.
    pub fn unix(file: &Path, name: &str, sock: &Path) -> QemuNbd {
        let listen = ["-k".to_string(), sock.display().to_string()];
        Self::spawn(file, name, &listen, || std::os::unix::net::UnixStream::connect(sock).is_ok())
    }

    /// On 127.0.0.1 with a port that was free a moment ago; returns it.
    pub fn tcp(file: &Path, name: &str) -> (QemuNbd, u16) {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let listen = ["-b".to_string(), "127.0.0.1".into(), "-p".into(), port.to_string()];
        (Self::spawn(file, name, &listen, || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()), port)
    }
}

impl Drop for QemuNbd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `qemu-io -f raw URL -c CMD...`; returns (success, output).
pub fn qemu_io(url: &str, cmds: &[&str]) -> (bool, String) {
    let mut cmd = Command::new("timeout");
    cmd.args(["60", "qemu-io", "-f", "raw", url]);
    for c in cmds {
        cmd.args(["-c", c]);
    }
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let ok = out.status.success() && !text.contains("failed") && !text.contains("error");
    (ok, text)
}

/// `threads` threads, started together, each write `rounds` blocks of `len`
/// bytes through one device (thread i in its own `region`-byte area) and
/// read each back; returns every (offset, bytes) written, for the model.
pub fn write_from_threads<D: rgfs_block::BlockDevice + 'static>(
    dev: &Arc<D>,
    threads: usize,
    rounds: usize,
    len: usize,
    region: usize,
) -> Vec<(usize, Vec<u8>)> {
    let start = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|i| {
            let (dev, start) = (Arc::clone(dev), Arc::clone(&start));
            std::thread::spawn(move || {
                start.wait();
                let mut wrote = Vec::new();
                for round in 0..rounds {
                    let (off, data) = (i * region + round * len, pattern(len, (i * rounds + round) as u8));
                    dev.write_at(off as u64, &data).unwrap();
                    let mut back = vec![0u8; len];
                    dev.read_at(off as u64, &mut back).unwrap();
                    assert!(back == data, "thread {i} read back other bytes at {off}");
                    wrote.push((off, data));
                }
                wrote
            })
        })
        .collect();
    handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
}
