//! `umount.fuse.rgfs MOUNTPOINT [-n] [-l] [-f] [-v] [-r] [-t TYPE] [-N NS]`:
//! the helper umount(8) runs for a `fuse.rgfs` mount (installed as
//! /sbin/umount.fuse.rgfs; the flags are those libmount passes to helpers).
//!
//! The kernel ends a FUSE mount without waiting for its server, which then
//! still writes the volume back; this helper unmounts and then waits
//! (bounded) until the server has released its claim on the device, i.e.
//! has flushed its last write and exited, so the volume is clean when
//! `umount` returns. A lazy unmount (`-l`) does not wait: the server writes
//! back only once the last user of the mount has gone, and meanwhile its
//! claim makes mount.rgfs, mkfs.rgfs and fsck.rgfs wait or refuse.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use rgfs_block::claim;

const NAME: &str = "umount.fuse.rgfs";
const USAGE: &str = "usage: umount.fuse.rgfs MOUNTPOINT [-n] [-l] [-f] [-v] [-r] [-t TYPE] [-N NAMESPACE]";
/// How long to wait for the server to write back before giving up (the
/// unmount itself has happened by then).
const WRITE_BACK_LIMIT: Duration = Duration::from_secs(300);
/// Silence for short write-backs: the wait is announced only after this.
const QUIET: Duration = Duration::from_secs(1);
/// umount(8)'s exit codes: bad usage; the unmount failed.
const EX_USAGE: u8 = 1;
const EX_FAIL: u8 = 32;

struct Args {
    target: PathBuf,
    lazy: bool,
    force: bool,
    verbose: bool,
    namespace: Option<String>,
}

/// Ok(None): help was asked for.
fn parse_args(args: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
    let mut a = Args { target: PathBuf::new(), lazy: false, force: false, verbose: false, namespace: None };
    let mut targets = Vec::new();
    let mut it = args;
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "-l" => a.lazy = true,
            "-f" => a.force = true,
            "-v" => a.verbose = true,
            // No mtab to write; "remount read-only if busy" has no FUSE
            // equivalent, so a busy mount stays mounted, as without -r.
            "-n" | "-r" => {}
            "-t" => drop(it.next().ok_or("-t needs a type")?),
            "-N" => a.namespace = Some(it.next().ok_or("-N needs a namespace")?),
            "-h" | "--help" => return Ok(None),
            s if s.starts_with('-') => return Err(format!("unknown flag {s}\n{USAGE}")),
            _ => targets.push(arg),
        }
    }
    let [target] = <[String; 1]>::try_from(targets).map_err(|_| USAGE.to_string())?;
    a.target = std::path::absolute(&target).map_err(|e| format!("{target}: {e}"))?;
    Ok(Some(a))
}

/// umount2(2) as root; `fusermount3 -u` (set-user-ID) otherwise.
fn unmount(a: &Args) -> Result<(), String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        let c = CString::new(a.target.as_os_str().as_bytes()).map_err(|_| "mount point contains a NUL byte")?;
        let flags = if a.lazy { libc::MNT_DETACH } else { 0 } | if a.force { libc::MNT_FORCE } else { 0 };
        // SAFETY: a valid C string.
        if unsafe { libc::umount2(c.as_ptr(), flags) } != 0 {
            return Err(format!("{}: {}", a.target.display(), std::io::Error::last_os_error()));
        }
        return Ok(());
    }
    let mut cmd = Command::new("fusermount3");
    cmd.arg("-u");
    if a.lazy {
        cmd.arg("-z");
    }
    let st = cmd.arg(&a.target).status().map_err(|e| format!("fusermount3: {e}"))?;
    if !st.success() {
        return Err(format!("{}: fusermount3 -u failed", a.target.display()));
    }
    Ok(())
}

/// Waits until none of `pids` holds a claim on `device`; Err after
/// [`WRITE_BACK_LIMIT`].
fn wait_released(device: &Path, pids: &[u32]) -> Result<(), String> {
    let start = Instant::now();
    let mut told = false;
    loop {
        let left = claim::still_held_by(device, pids);
        let Some(server) = left.first() else { return Ok(()) };
        if start.elapsed() >= WRITE_BACK_LIMIT {
            return Err(format!(
                "{}: the server ({server}) is still writing it back after {} s; it goes on in the background, \
                 and mount.rgfs, mkfs.rgfs and fsck.rgfs wait for it",
                device.display(),
                WRITE_BACK_LIMIT.as_secs()
            ));
        }
        if !told && start.elapsed() >= QUIET {
            eprintln!("{NAME}: waiting for the server ({server}) to finish writing {} back…", device.display());
            told = true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn run(a: &Args) -> Result<(), String> {
    if let Some(ns) = &a.namespace {
        rgfs::cli::enter_mount_namespace(ns)?;
    }
    let mount = claim::mount_at(&a.target).ok_or_else(|| format!("{}: not mounted", a.target.display()))?;
    if mount.fstype != "fuse.rgfs" {
        return Err(format!("{}: not an rgfs mount (type {})", a.target.display(), mount.fstype));
    }
    // Found before the unmount: afterwards mountinfo no longer says which
    // device it was, and the server is what there is to wait for.
    let device = PathBuf::from(&mount.source);
    let servers: Vec<u32> = claim::holders_of(&device).iter().map(|h| h.pid).collect();
    unmount(a)?;
    if a.lazy {
        if a.verbose {
            eprintln!(
                "{NAME}: {} detached; its server writes {} back once the last user has gone",
                a.target.display(),
                device.display()
            );
        }
        return Ok(());
    }
    wait_released(&device, &servers)?;
    if a.verbose {
        eprintln!("{NAME}: {} unmounted; {} written back", a.target.display(), device.display());
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(Some(a)) => a,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("{NAME}: {e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{NAME}: {e}");
            ExitCode::from(EX_FAIL)
        }
    }
}
