//! `mount.rgfs DEVICE MOUNTPOINT [-o options] [-f]`: mounts an rgfs (GFS2
//! format) volume through FUSE. mount(8) runs it for `mount -t rgfs`.
//!
//! Without `-f` it validates and mounts, then returns once the mount is
//! live, leaving a daemon serving it; `-f` stays in the foreground with
//! logs on stderr. `umount MOUNTPOINT` (or SIGTERM/SIGINT to the daemon)
//! writes everything back and leaves the journal clean.

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use rgfs::fuse::{FuseFs, FuseNotifier};
use rgfs::glock::{Fs, NoLock};
use rgfs::mount::{mount, MountOptions};
use rgfs_block::Access;

const USAGE: &str = "usage: mount.rgfs DEVICE MOUNTPOINT [-o OPTIONS] [-f] [-n] [-v] [-s]\n\
  options: lockproto=lock_nolock|lock_dlm, locktable=C:F, hostdata=jid=N, ro, rw,\n\
  noatime, relatime, errors=withdraw|panic, allow_other, nosuid, nodev, noexec,\n\
  quota=off (default; quotas are not supported yet),\n\
  writeback_cache, nowriteback_cache (default)";

struct Args {
    device: PathBuf,
    mountpoint: PathBuf,
    opts: MountOptions,
    foreground: bool,
    threads: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut pos = Vec::new();
    let mut opts = MountOptions::default();
    let mut foreground = false;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "-o" => opts.merge(&it.next().ok_or("-o needs an argument")?)?,
            s if s.starts_with("-o") => opts.merge(&s[2..])?,
            "-f" => foreground = true,
            // mount(8) passes these: no mtab, verbose, sloppy.
            "-n" | "-v" | "-s" => {}
            "-h" | "--help" => return Err(USAGE.to_string()),
            s if s.starts_with('-') => return Err(format!("unknown flag {s}\n{USAGE}")),
            _ => pos.push(a),
        }
    }
    if pos.len() != 2 {
        return Err(USAGE.to_string());
    }
    let threads = std::env::var("RGFS_FUSE_THREADS").ok().and_then(|v| v.parse().ok()).unwrap_or(4);
    // The absolute path, symlinks resolved: mountinfo shows it as the
    // source, and fsck.rgfs finds the mount by it whatever the directory.
    // An NBD URL is kept as written.
    let device = if rgfs_nbd::is_nbd_url(&pos[0]) {
        pos[0].clone().into()
    } else {
        std::fs::canonicalize(&pos[0]).map_err(|e| format!("{}: {e}", pos[0]))?
    };
    Ok(Args { device, mountpoint: pos[1].clone().into(), opts, foreground, threads })
}

/// Mounts and serves; calls `ready` once the mount is live (or failed).
fn serve(args: &Args, ready: &mut dyn FnMut(Result<(), String>)) -> Result<(), String> {
    if !args.mountpoint.is_dir() {
        return Err(format!("{}: mount point is not a directory", args.mountpoint.display()));
    }
    // A read-only mount still opens the device for writing when it can, so
    // a dirty journal can be replayed (as the kernel does); the mount
    // itself never writes otherwise.
    let dev = match rgfs_nbd::open_device(&args.device, Access::ReadWrite) {
        Ok(d) => d,
        Err(_) if args.opts.read_only => rgfs_nbd::open_device(&args.device, Access::ReadOnly).map_err(|e| e.to_string())?,
        Err(e) => return Err(e.to_string()),
    };
    let (core, report) = mount(Arc::new(dev), &args.opts).map_err(|e| format!("{}: {e}", args.device.display()))?;
    if report.was_dirty {
        let orphans = if args.opts.read_only {
            "inodes unlinked while open are freed at the next read-write mount".to_string()
        } else {
            format!("freed {} orphaned inodes", report.orphans_freed)
        };
        eprintln!(
            "rgfs: {}: journal was dirty: replayed {} blocks; {orphans}",
            args.device.display(),
            report.replayed_blocks,
        );
    }
    let fs = Fs::new(core, Arc::new(NoLock)).map_err(|e| e.to_string())?;
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName(args.device.display().to_string()),
        // As root fuser calls mount(2) itself with type "fuse" and leaves
        // Subtype out; the kernel takes the subtype from the data string
        // too, so mountinfo and mount(8) show type fuse.rgfs either way.
        if running_as_root() {
            fuser::MountOption::CUSTOM("subtype=rgfs".into())
        } else {
            fuser::MountOption::Subtype("rgfs".into())
        },
        fuser::MountOption::DefaultPermissions,
        if args.opts.read_only { fuser::MountOption::RO } else { fuser::MountOption::RW },
    ];
    for f in &args.opts.fuse_flags {
        config.mount_options.push(match f.as_str() {
            "nosuid" => fuser::MountOption::NoSuid,
            "suid" => fuser::MountOption::Suid,
            "nodev" => fuser::MountOption::NoDev,
            "dev" => fuser::MountOption::Dev,
            "noexec" => fuser::MountOption::NoExec,
            "exec" => fuser::MountOption::Exec,
            "sync" => fuser::MountOption::Sync,
            "dirsync" => fuser::MountOption::DirSync,
            _ => fuser::MountOption::Async,
        });
    }
    if args.opts.allow_other {
        config.acl = fuser::SessionACL::All;
    }
    config.n_threads = Some(args.threads.max(1));
    config.clone_fd = true;
    let session = fuser::Session::new(FuseFs::with_writeback_cache(fs.clone(), args.opts.writeback_cache), &args.mountpoint, &config)
        .map_err(|e| format!("{}: FUSE mount failed: {e}", args.mountpoint.display()))?;
    *fs.kernel.lock() = Some(Arc::new(FuseNotifier(session.notifier())));
    // The stat inside needs the session running: do it from a thread.
    let mp = args.mountpoint.clone();
    std::thread::spawn(move || raise_readahead(&mp));
    ready(Ok(()));
    spawn_signal_thread(args.mountpoint.clone());
    spawn_flusher(Arc::downgrade(&fs));
    session.run().map_err(|e| format!("FUSE session: {e}"))?;
    if fs.core.lock().is_withdrawn() {
        return Err("the filesystem withdrew; its journal will be replayed at the next mount".into());
    }
    Ok(())
}

/// The kernel caps a FUSE mount's readahead at 128 KiB whatever
/// max_readahead says; 1 MiB (one maximal request) more than doubles cold
/// sequential reads. Best effort: needs root and sysfs.
fn raise_readahead(mountpoint: &std::path::Path) {
    use std::os::unix::fs::MetadataExt;
    if let Ok(md) = std::fs::metadata(mountpoint) {
        let dev = md.dev();
        let (major, minor) = (libc::major(dev), libc::minor(dev));
        let _ = std::fs::write(format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb"), "1024");
    }
}

/// Commits the log every few seconds and writes home in the background, so
/// unsynced changes reach the disk within a bounded time.
fn spawn_flusher(fs: std::sync::Weak<Fs>) {
    std::thread::spawn(move || loop {
        std::thread::sleep(std::time::Duration::from_secs(5));
        let Some(fs) = fs.upgrade() else { return };
        let mut core = fs.core.lock();
        if core.is_withdrawn() || core.log.is_none() {
            continue;
        }
        // Synced, so blocks freed meanwhile become reusable.
        let _ = core.commit(true);
        if core.log.as_ref().is_some_and(|l| l.ail_len() > l.jd_blocks() as usize / 4) {
            let _ = core.checkpoint();
        }
    });
}

/// SIGTERM/SIGINT/SIGHUP: unmount (lazily), which ends the session and
/// writes everything back.
fn spawn_signal_thread(mountpoint: PathBuf) {
    std::thread::spawn(move || unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        let mut sig = 0;
        if libc::sigwait(&set, &mut sig) == 0 {
            let c = std::ffi::CString::new(mountpoint.as_os_str().as_encoded_bytes()).unwrap_or_default();
            libc::umount2(c.as_ptr(), libc::MNT_DETACH);
        }
    });
}

fn block_signals() {
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("mount.rgfs: {e}");
            return ExitCode::from(1);
        }
    };
    block_signals();
    if args.foreground {
        return match serve(&args, &mut |_| {}) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("mount.rgfs: {e}");
                ExitCode::from(1)
            }
        };
    }
    // Daemon: the child mounts and reports through a pipe; the parent
    // returns once the mount is live.
    let mut fds = [0i32; 2];
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        eprintln!("mount.rgfs: pipe: {}", std::io::Error::last_os_error());
        return ExitCode::from(1);
    }
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    match unsafe { libc::fork() } {
        -1 => {
            eprintln!("mount.rgfs: fork: {}", std::io::Error::last_os_error());
            ExitCode::from(1)
        }
        0 => {
            drop(rd);
            unsafe { libc::setsid() };
            let mut pipe = Some(std::fs::File::from(wr));
            let mut ready = |r: Result<(), String>| {
                if let Some(mut p) = pipe.take() {
                    let msg = match r {
                        Ok(()) => "ok".to_string(),
                        Err(e) => e,
                    };
                    let _ = p.write_all(msg.as_bytes());
                    // Detach from the caller's terminal once mounted.
                    unsafe {
                        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
                        if null >= 0 {
                            libc::dup2(null, 0);
                            libc::dup2(null, 1);
                            libc::dup2(null, 2);
                        }
                    }
                }
            };
            let r = serve(&args, &mut ready);
            if let Err(e) = &r {
                ready(Err(e.clone()));
            }
            unsafe { libc::_exit(if r.is_ok() { 0 } else { 1 }) }
        }
        _child => {
            drop(wr);
            let mut msg = String::new();
            let _ = std::fs::File::from(rd).read_to_string(&mut msg);
            if msg == "ok" {
                ExitCode::SUCCESS
            } else {
                if msg.is_empty() {
                    msg = "the mount daemon died before the mount was live".into();
                }
                eprintln!("mount.rgfs: {msg}");
                ExitCode::from(1)
            }
        }
    }
}

fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}
