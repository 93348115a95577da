//! What the rows run against: scratch files (fresh for every run, so a row
//! that writes cannot spoil the next), listeners on 127.0.0.1 that are not
//! lock daemons, and one real `rgfs-dlmd`.
//!
//! Placeholders in a row's arguments name them: `{img}` … are files made in
//! the run's own directory (and checked for changes afterwards); `{conf}` …
//! are shared by every run of a test and never written.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use rgfs_block::{Access, FileDevice};
use rgfs_tests::{scratch, workspace_bin};

/// Files made in a run's directory when its arguments name them.
pub const RUN_FILES: &[&str] = &["img", "trunc", "zeros", "random", "tiny", "dir", "mnt", "missing"];

/// Size of `{img}` and `{zeros}`: room for a filesystem with one 8 MiB journal.
const IMAGE_MIB: u64 = 32;

/// Everything a test's runs share.
pub struct World {
    dir: tempfile::TempDir,
    shared: HashMap<&'static str, String>,
    daemons: Vec<Child>,
}

impl World {
    /// Templates and listeners; with `daemons`, also a running rgfs-dlmd at `{daemon}` configured by
    /// `{conf}`, and one configured by `{lonelyconf}` that masters nothing and whose only peer (`{silent}`)
    /// never answers.
    pub fn new(daemons: bool) -> World {
        let dir = scratch();
        let d = dir.path();
        make_gfs2_image(&d.join("img"));
        let img = std::fs::read(d.join("img")).unwrap();
        std::fs::write(d.join("trunc"), &img[..1 << 20]).unwrap();
        std::fs::write(d.join("random"), pseudo_random(1 << 20)).unwrap();
        std::fs::write(d.join("key"), [0x5a; 32]).unwrap();
        std::fs::write(d.join("badconf.toml"), "cluster_name = 7\n[[node]\nid = \"one\"\n").unwrap();

        let silent = listen(|stream| {
            // Accepts and holds the connection; never reads or answers.
            std::thread::sleep(Duration::from_secs(3600));
            drop(stream);
        });
        let http = listen(|mut stream| {
            // A web server: answers once a request's header is complete (so never, to a client that
            // waits for the server to speak first), and holds the connection meanwhile.
            let mut seen = Vec::new();
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = stream.read(&mut buf) {
                seen.extend_from_slice(&buf[..n]);
                if seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    let _ = stream.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
                }
            }
        });
        let http_eager = listen(|mut stream| {
            // A web server that answers whatever arrives first with an error page and hangs up.
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let page = "<html><body>400 Bad Request</body></html>";
            let reply = format!("HTTP/1.1 400 Bad Request\r\nContent-Length: {}\r\n\r\n{page}", page.len());
            let _ = stream.write_all(reply.as_bytes());
        });
        // The daemons' ports are held while the closed one is chosen, so the three differ.
        let ports = [TcpListener::bind("127.0.0.1:0").unwrap(), TcpListener::bind("127.0.0.1:0").unwrap()];
        let refused = free_port();
        let [daemon_addr, lonely_addr] = ports.each_ref().map(|l| l.local_addr().unwrap());
        let conf = |name: &str, address: SocketAddr, key: &str| {
            let text = format!(
                "cluster_name = \"badin\"\nkey_file = \"{key}\"\n\n[[node]]\nid = 1\nname = \"no-such-host-n1\"\n\
                 address = \"{address}\"\n"
            );
            std::fs::write(d.join(name), text).unwrap();
            d.join(name).display().to_string()
        };
        let lonely = conf("lonely.toml", lonely_addr, "key");
        let peer = format!("weight = 0\n\n[[node]]\nid = 2\nname = \"no-such-host-n2\"\naddress = \"{silent}\"\n");
        std::fs::OpenOptions::new().append(true).open(&lonely).unwrap().write_all(peer.as_bytes()).unwrap();
        let mut shared = HashMap::new();
        let path = |name: &str| d.join(name).display().to_string();
        shared.insert("conf", conf("dlm.toml", daemon_addr, "key"));
        shared.insert("lonelyconf", lonely);
        // The silent listener holds this address: a daemon started with it cannot bind.
        shared.insert("busyconf", conf("busy.toml", silent, "key"));
        shared.insert("nokeyconf", conf("nokey.toml", refused, "no-such-key"));
        shared.insert("badconf", path("badconf.toml"));
        shared.insert("key", path("key"));
        shared.insert("daemon", daemon_addr.to_string());
        shared.insert("silent", silent.to_string());
        shared.insert("http", http.to_string());
        shared.insert("http_eager", http_eager.to_string());
        shared.insert("refused", refused.to_string());
        shared.insert("empty", String::new());
        shared.insert("longname", "n".repeat(65));
        drop(ports);
        let mut world = World { dir, shared, daemons: Vec::new() };
        if daemons {
            world.start_daemon("conf", "dlmd.log");
            world.start_daemon("lonelyconf", "lonely.log");
        }
        world
    }

    fn start_daemon(&mut self, conf: &str, log: &str) {
        let log_path = self.dir.path().join(log);
        let mut child = Command::new(workspace_bin("rgfs-dlm", "rgfs-dlmd"))
            .args(["--config", &self.shared[conf], "--node-id", "1"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log_path).unwrap())
            .spawn()
            .expect("start rgfs-dlmd");
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if line.starts_with("rgfs-dlmd ready") {
                    let _ = tx.send(());
                }
            }
        });
        self.daemons.push(child);
        if rx.recv_timeout(Duration::from_secs(30)).is_err() {
            panic!("rgfs-dlmd did not become ready: {}", std::fs::read_to_string(&log_path).unwrap_or_default());
        }
    }

    /// The test daemons' stderr so far.
    pub fn daemon_logs(&self) -> String {
        ["dlmd.log", "lonely.log"]
            .iter()
            .map(|log| std::fs::read_to_string(self.dir.path().join(log)).unwrap_or_default())
            .collect()
    }

    /// Whether every test daemon is still running.
    pub fn daemons_alive(&mut self) -> bool {
        self.daemons.iter_mut().all(|c| c.try_wait().ok().flatten().is_none())
    }

    /// Makes the files `args` name in `run_dir` and returns `args` with every placeholder replaced.
    pub fn prepare(&self, run_dir: &Path, args: &[String]) -> Vec<String> {
        let t = self.dir.path();
        for name in RUN_FILES.iter().filter(|n| args.iter().any(|a| a.contains(&format!("{{{n}}}")))) {
            let p = run_dir.join(name);
            match *name {
                "img" | "trunc" | "random" => {
                    std::fs::copy(t.join(name), &p).unwrap();
                }
                "zeros" => std::fs::File::create(&p).unwrap().set_len(IMAGE_MIB << 20).unwrap(),
                "tiny" => std::fs::write(&p, [0u8; 4096]).unwrap(),
                "dir" | "mnt" => std::fs::create_dir(&p).unwrap(),
                _ => {}
            }
        }
        args.iter()
            .map(|a| {
                let mut a = a.clone();
                for name in RUN_FILES {
                    a = a.replace(&format!("{{{name}}}"), &run_dir.join(name).display().to_string());
                }
                for (name, value) in &self.shared {
                    a = a.replace(&format!("{{{name}}}"), value);
                }
                a
            })
            .collect()
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for child in &mut self.daemons {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A lock_nolock GFS2 filesystem with one 8 MiB journal.
fn make_gfs2_image(path: &Path) {
    std::fs::File::create(path).unwrap().set_len(IMAGE_MIB << 20).unwrap();
    let dev = FileDevice::open(path, Access::ReadWrite).unwrap();
    let mut o = rgfs_mkfs::MkfsOptions::nolock();
    o.journal_size_mb = Some(8);
    rgfs_mkfs::make_filesystem(&dev, &o).expect("mkfs");
}

fn pseudo_random(len: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A listener on 127.0.0.1 serving each connection with `serve` on its own thread, for the test's lifetime.
fn listen(serve: fn(TcpStream)) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in l.incoming().map_while(Result::ok) {
            std::thread::spawn(move || serve(stream));
        }
    });
    addr
}

/// An address on 127.0.0.1 where nothing listens (for now).
fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// Every regular file under `dir` with its length and CRC-32.
pub fn fingerprints(dir: &Path) -> Vec<(PathBuf, u64, u32)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                let bytes = std::fs::read(e.path()).unwrap_or_default();
                out.push((e.path(), bytes.len() as u64, crc32fast::hash(&bytes)));
            }
        }
    }
    out.sort();
    out
}

/// Mount points at or under `dir` (a run's directory), deepest first.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = dir.display().to_string();
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<String> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| p.starts_with(&prefix))
        .map(str::to_string)
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    points
}

/// Unmounts what a run left mounted under its directory.
pub fn unmount_all(dir: &Path) {
    for p in mounts_under(dir) {
        if !Command::new("umount").arg(&p).stderr(Stdio::null()).status().is_ok_and(|s| s.success()) {
            let _ = Command::new("umount").arg("-l").arg(&p).stderr(Stdio::null()).status();
        }
    }
}
