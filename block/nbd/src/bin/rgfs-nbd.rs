//! `rgfs-nbd`: the NBD server of rgfs, and a small write benchmark for any
//! device (a path or an NBD URL). See docs/block.md.

use std::net::TcpListener;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rgfs_block::{claim, Access, BlockDevice};
use rgfs_nbd::server::{Listener, Server};
use rgfs_nbd::session::{Export, Limits};

const USAGE: &str = "usage: rgfs-nbd serve --export NAME=DEVICE [--export ...] [--listen ADDR:PORT]... [--unix PATH]...\n\
  \x20                     [--read-only] [--max-clients N] [--max-request BYTES]\n\
  \x20      rgfs-nbd bench DEVICE [--mib N] [--random N]\n\
  DEVICE is a file, a block device or an NBD URL (nbd://HOST[:PORT]/EXPORT, nbd+unix:///EXPORT?socket=PATH)";

/// How long shutdown waits for connections to finish their request.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("serve") => serve(&args[1..]),
        Some("bench") => bench(&args[1..]),
        Some("-h" | "--help") => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        _ => Err(USAGE.to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rgfs-nbd: {e}");
            ExitCode::from(1)
        }
    }
}

fn log(msg: &str) {
    eprintln!("rgfs-nbd: {msg}");
}

fn value<'a>(it: &mut impl Iterator<Item = &'a String>, flag: &str) -> Result<&'a String, String> {
    it.next().ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))
}

fn number<T: std::str::FromStr>(s: &str, flag: &str) -> Result<T, String> {
    s.parse().map_err(|_| format!("{flag}: not a number: {s:?}"))
}

fn serve(args: &[String]) -> Result<(), String> {
    let (mut exports, mut tcp, mut unix) = (Vec::<(String, String)>::new(), Vec::new(), Vec::new());
    let (mut read_only, mut max_clients, mut limits) = (false, 64usize, Limits::default());
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--export" => {
                let v = value(&mut it, a)?;
                let (name, path) = v.split_once('=').ok_or_else(|| format!("--export {v}: expected NAME=DEVICE"))?;
                if exports.iter().any(|(n, _)| n == name) {
                    return Err(format!("--export: export {name:?} given twice"));
                }
                if name.len() > rgfs_nbd::proto::MAX_STRING || path.is_empty() {
                    return Err(format!("--export {v}: bad name or empty device"));
                }
                exports.push((name.to_string(), path.to_string()));
            }
            "--listen" => tcp.push(value(&mut it, a)?.clone()),
            "--unix" => unix.push(PathBuf::from(value(&mut it, a)?)),
            "--read-only" => read_only = true,
            "--max-clients" => max_clients = number(value(&mut it, a)?, a)?,
            "--max-request" => limits.max_request = number(value(&mut it, a)?, a)?,
            _ => return Err(format!("unknown argument {a}\n{USAGE}")),
        }
    }
    if exports.is_empty() || (tcp.is_empty() && unix.is_empty()) {
        return Err(format!("need at least one --export and one --listen or --unix\n{USAGE}"));
    }
    if max_clients == 0 || limits.max_request < 4096 {
        return Err("--max-clients must be at least 1 and --max-request at least 4096".into());
    }
    let access = if read_only { Access::ReadOnly } else { Access::ReadWrite };
    let mut opened = Vec::new();
    // The server is the one writer of what it exports on this machine: a
    // local mount, mkfs or fsck of the same file is refused while it runs
    // (a read-only export is a shared claim). Held until the process exits.
    let mut claims = Vec::new();
    for (name, path) in exports {
        let device: Arc<dyn BlockDevice> = rgfs_nbd::open_device(&path, access).map_err(|e| e.to_string())?.into();
        let kind = if read_only { claim::Kind::Shared } else { claim::Kind::Exclusive };
        claims.push(rgfs_nbd::claim_device(&path, kind, claim::PATIENCE, &mut |m| log(m)).map_err(|e| e.to_string())?);
        log(&format!("export {name:?}: {path} ({} bytes{})", device.size(), if read_only { ", read-only" } else { "" }));
        opened.push(Export { name, device, read_only });
    }
    // Signals go to the thread waiting for them below, never to a worker:
    // the mask is set before any thread starts and inherited by all.
    let signals = block_signals();
    let server = Server::new(opened, limits, max_clients, Box::new(log));
    for addr in &tcp {
        let l = TcpListener::bind(addr).map_err(|e| format!("--listen {addr}: {e}"))?;
        let local = l.local_addr().map_err(|e| e.to_string())?;
        announce(&format!("listening on {local}"));
        server.spawn_listener(Listener::Tcp(l)).map_err(|e| e.to_string())?;
    }
    for path in &unix {
        // A socket left by an earlier run is replaced; any other file is not.
        if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
            let _ = std::fs::remove_file(path);
        }
        let l = UnixListener::bind(path).map_err(|e| format!("--unix {}: {e}", path.display()))?;
        announce(&format!("listening on unix:{}", path.display()));
        server.spawn_listener(Listener::Unix(l)).map_err(|e| e.to_string())?;
    }
    let sig = wait_signal(&signals);
    log(&format!("signal {sig}: finishing requests in progress, flushing, exiting"));
    let flushed = server.shutdown(SHUTDOWN_GRACE);
    for path in &unix {
        let _ = std::fs::remove_file(path);
    }
    if !flushed {
        return Err("a flush failed at shutdown: acknowledged writes may not be durable".into());
    }
    log("all exports flushed");
    Ok(())
}

/// One line on stdout for whoever started the server (a script or a test
/// reads the port from it); a closed stdout is not an error.
fn announce(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout();
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}

fn block_signals() -> libc::sigset_t {
    // SAFETY: plain libc calls on a local, initialised signal set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn wait_signal(set: &libc::sigset_t) -> i32 {
    let mut sig = 0;
    // SAFETY: `set` is initialised; sigwait only writes `sig`.
    while unsafe { libc::sigwait(set, &mut sig) } != 0 {}
    sig
}

/// A tiny xorshift generator: the benchmark needs spread offsets, not quality.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn bench(args: &[String]) -> Result<(), String> {
    let (mut spec, mut mib, mut random) = (None, 256u64, 1000usize);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--mib" => mib = number(value(&mut it, a)?, a)?,
            "--random" => random = number(value(&mut it, a)?, a)?,
            s if !s.starts_with('-') && spec.is_none() => spec = Some(s.to_string()),
            _ => return Err(format!("unknown argument {a}\n{USAGE}")),
        }
    }
    let spec = spec.ok_or(USAGE)?;
    let dev = rgfs_nbd::open_device(&spec, Access::ReadWrite).map_err(|e| e.to_string())?;
    if dev.size() < mib << 20 || mib == 0 {
        return Err(format!("{spec}: {} bytes; the benchmark needs {mib} MiB", dev.size()));
    }
    let err = |e: rgfs_block::Error| e.to_string();
    // Sequential: 1 MiB writes, then one flush, timed together.
    let buf: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
    let t = Instant::now();
    for i in 0..mib {
        dev.write_at(i << 20, &buf).map_err(err)?;
    }
    dev.flush().map_err(err)?;
    let secs = t.elapsed().as_secs_f64();
    println!("seq-write-1MiB: {mib} MiB in {secs:.3} s = {:.1} MiB/s (final flush included)", mib as f64 / secs);
    // Random 4 KiB writes: throughput with one final flush, then latency of
    // write + flush (an fsync'd 4 KiB write).
    let blocks = (mib << 20) / 4096;
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let small = &buf[..4096];
    let t = Instant::now();
    for _ in 0..random {
        dev.write_at(rng.next() % blocks * 4096, small).map_err(err)?;
    }
    dev.flush().map_err(err)?;
    let secs = t.elapsed().as_secs_f64();
    println!("rand-write-4KiB: {random} writes in {secs:.3} s = {:.0} IOPS (final flush included)", random as f64 / secs);
    let mut lat = Vec::with_capacity(random);
    for _ in 0..random {
        let t = Instant::now();
        dev.write_at(rng.next() % blocks * 4096, small).map_err(err)?;
        dev.flush().map_err(err)?;
        lat.push(t.elapsed().as_secs_f64() * 1e6);
    }
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1))).copied().unwrap_or(0.0);
    let mean = lat.iter().sum::<f64>() / lat.len().max(1) as f64;
    println!("write-4KiB+flush latency: mean {mean:.0} us, p50 {:.0} us, p99 {:.0} us", pct(0.5), pct(0.99));
    Ok(())
}
