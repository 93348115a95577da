//! `mount.rgfs DEVICE MOUNTPOINT [-o options] [-f]`: mounts an rgfs (GFS2
//! format) volume through FUSE. mount(8) runs it for `mount -t rgfs`.
//!
//! Without `-f` it validates and mounts, then returns once the mount is
//! live, leaving a daemon serving it that logs to syslog; `-f` stays in
//! the foreground with logs on stderr (`rgfs::cli::log`). `umount
//! MOUNTPOINT` (or SIGTERM/SIGINT to the daemon) writes everything back
//! and leaves the journal clean.

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use rgfs::cli::log::{self, Target};
use rgfs::fuse::{FuseFs, FuseNotifier};
use rgfs::glock::{Fs, NoLock};
use rgfs::mount::{mount, utab, MountOptions};
use rgfs_block::{claim, Access};

const NAME: &str = "mount.rgfs";

const OPTIONS_HELP: &str = "Mount options (-o, comma-separated):
  lockproto=lock_nolock|lock_dlm, locktable=CLUSTER:FSNAME, hostdata=jid=N, ro, rw,
  noatime, relatime, errors=withdraw|panic, allow_other, nosuid, nodev, noexec,
  quota=off (default; quotas are not supported yet),
  writeback_cache, nowriteback_cache (default)

Logs go to stderr with -f, to syslog (facility daemon) once the server has detached;
RUST_LOG (e.g. RUST_LOG=debug) overrides the level -v sets.";

/// Mount a GFS2-format volume through FUSE (mount(8) runs it for `mount -t rgfs`).
///
/// mount(8) calls helpers as `mount.rgfs DEVICE DIR [-sfnv] [-N NS] [-o OPTIONS] [-t TYPE]`.
#[derive(Parser, Debug)]
#[command(name = NAME, bin_name = NAME, version, after_help = OPTIONS_HELP)]
struct Cli {
    /// The device or image file holding the volume
    device: PathBuf,
    /// The mount point: an existing directory
    mountpoint: PathBuf,
    /// Mount options, comma-separated (may be given more than once)
    #[arg(short = 'o', value_name = "OPTIONS")]
    options: Vec<String>,
    /// Stay in the foreground and log to stderr (mount(8)'s fake mount, -f, is not supported)
    #[arg(short = 'f', long = "foreground")]
    foreground: bool,
    /// Log more: -v debug, -vv trace
    #[arg(short = 'v', action = clap::ArgAction::Count)]
    verbose: u8,
    /// Accepted from mount(8): there is no /etc/mtab to skip
    #[arg(short = 'n')]
    _no_mtab: bool,
    /// Accepted from mount(8): unknown mount options are still refused
    #[arg(short = 's')]
    _sloppy: bool,
    /// The type mount(8) was given: rgfs or fuse.rgfs
    #[arg(short = 't', value_name = "TYPE")]
    fstype: Option<String>,
    /// Mount in this mount namespace: a PID, or a namespace file such as /proc/PID/ns/mnt
    #[arg(short = 'N', value_name = "NS")]
    namespace: Option<String>,
}

struct Args {
    device: PathBuf,
    mountpoint: PathBuf,
    opts: MountOptions,
    foreground: bool,
    threads: usize,
}

fn parse_args(cli: &Cli) -> Result<Args, String> {
    let mut opts = MountOptions::default();
    for o in &cli.options {
        opts.merge(o)?;
    }
    if let Some(t) = cli.fstype.as_deref().filter(|t| !matches!(*t, "rgfs" | "fuse.rgfs")) {
        return Err(format!("filesystem type {t:?}: this helper mounts rgfs (or fuse.rgfs)"));
    }
    let mut mountpoint = cli.mountpoint.clone();
    let mut device = cli.device.clone();
    if let Some(ns) = &cli.namespace {
        // Entering a mount namespace moves the working directory to its
        // root: relative paths are made absolute first.
        let absolute = |p: &PathBuf| std::path::absolute(p).map_err(|e| format!("{}: {e}", p.display()));
        (device, mountpoint) = (absolute(&device)?, absolute(&mountpoint)?);
        rgfs::cli::enter_mount_namespace(ns).map_err(|e| format!("-N {e}"))?;
    }
    let threads = std::env::var("RGFS_FUSE_THREADS").ok().and_then(|v| v.parse().ok()).unwrap_or(4);
    // The absolute path, symlinks resolved: mountinfo shows it as the
    // source, and fsck.rgfs finds the mount by it whatever the directory.
    // An NBD URL is kept as written.
    let device = if device.to_str().is_some_and(rgfs_nbd::is_nbd_url) {
        device
    } else {
        std::fs::canonicalize(&device).map_err(|e| format!("{}: {e}", device.display()))?
    };
    Ok(Args { device, mountpoint, opts, foreground: cli.foreground, threads })
}

/// Mounts and serves; calls `ready` once the mount is live (or failed).
fn serve(args: &Args, ready: &mut dyn FnMut(Result<(), String>)) -> Result<(), String> {
    tracing::debug!("{}: mounting on {} with {:?}", args.device.display(), args.mountpoint.display(), args.opts);
    match std::fs::metadata(&args.mountpoint) {
        Ok(md) if md.is_dir() => {}
        Ok(_) => return Err(format!("{}: mount point is not a directory", args.mountpoint.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!("{}: mount point does not exist", args.mountpoint.display()))
        }
        Err(e) => return Err(format!("{}: mount point: {e}", args.mountpoint.display())),
    }
    // Declared first so it is dropped last: the claim is held until every
    // write is flushed, and in the daemon until the process exits.
    let _claim = claim_device(&args.device)?;
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
        let (dev, blocks) = (args.device.display(), report.replayed_blocks);
        tracing::warn!("{dev}: journal was dirty: replayed {blocks} blocks; {orphans}");
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
    // MS_NOATIME, so mount(8) and mountinfo show it.
    if args.opts.noatime {
        config.mount_options.push(fuser::MountOption::NoAtime);
    }
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
    // Resolved before the mount: a stat of the mount point then would wait
    // for a session not yet running.
    let target = std::fs::canonicalize(&args.mountpoint).ok();
    let session = fuser::Session::new(FuseFs::with_writeback_cache(fs.clone(), args.opts.writeback_cache), &args.mountpoint, &config)
        .map_err(|e| format!("{}: FUSE mount failed: {e}", args.mountpoint.display()))?;
    *fs.kernel.lock() = Some(Arc::new(FuseNotifier(session.notifier())));
    // So that umount(8) runs umount.fuse.rgfs, which waits for the write-back.
    // Before anything of ours waits on the mount: until the session runs,
    // such a wait keeps the mount busy (an early umount would fail).
    let utab = target.as_deref().and_then(|t| utab::add(&args.device, t));
    if let Some(t) = &target {
        raise_readahead(t);
    }
    let (dev, mp) = (args.device.display(), args.mountpoint.display());
    tracing::info!("{dev}: mounted on {mp} (journal {})", args.opts.jid.unwrap_or(0));
    ready(Ok(()));
    spawn_signal_thread(args.mountpoint.clone());
    spawn_flusher(Arc::downgrade(&fs));
    let served = session.run();
    if let Some(u) = utab {
        u.remove();
    }
    served.map_err(|e| format!("FUSE session: {e}"))?;
    if fs.core.lock().is_withdrawn() {
        return Err(format!(
            "{}: the filesystem withdrew; its journal will be replayed at the next mount",
            args.device.display()
        ));
    }
    tracing::info!("{}: unmounted from {}", args.device.display(), args.mountpoint.display());
    Ok(())
}

/// The exclusive claim on the device (see `rgfs_block::claim`): every
/// mount today is exclusive (lock_nolock, or lock_dlm mounted with
/// lockproto=lock_nolock); cluster mounts will take `Kind::Shared`. Waits
/// for a server still writing back after an unmount; refuses a mounted one.
/// An NBD export is claimed by its server (rgfs-nbd), not here: `None`.
fn claim_device(device: &std::path::Path) -> Result<Option<claim::Claim>, String> {
    rgfs_nbd::claim_device(device, claim::Kind::Exclusive, claim::PATIENCE, &mut |m| eprintln!("mount.rgfs: {m}"))
        .map_err(|e| e.to_string())
}

/// The kernel caps a FUSE mount's readahead at 128 KiB whatever
/// max_readahead says; 1 MiB (one maximal request) more than doubles cold
/// sequential reads. Best effort: needs root and sysfs. The device number
/// comes from mountinfo, not from a stat of the mount point: a stat waits
/// for the session and meanwhile keeps the mount busy (an umount racing it
/// fails).
fn raise_readahead(mountpoint: &std::path::Path) {
    if let Some(m) = claim::mount_at(mountpoint) {
        let _ = std::fs::write(format!("/sys/class/bdi/{}/read_ahead_kb", m.dev), "1024");
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
    let cli: Cli = rgfs::cli::parse_or_exit(NAME, 1, "try --help");
    let args = match parse_args(&cli) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{NAME}: {e}");
            return ExitCode::from(1);
        }
    };
    block_signals();
    if args.foreground {
        log::init(NAME, cli.verbose, Target::Stderr);
        return match serve(&args, &mut |_| {}) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("{NAME}: {e}");
                ExitCode::from(1)
            }
        };
    }
    // Daemon: the child mounts and reports through a pipe; the parent
    // returns once the mount is live.
    let mut fds = [0i32; 2];
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        eprintln!("{NAME}: pipe: {}", std::io::Error::last_os_error());
        return ExitCode::from(1);
    }
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    match unsafe { libc::fork() } {
        -1 => {
            eprintln!("{NAME}: fork: {}", std::io::Error::last_os_error());
            ExitCode::from(1)
        }
        0 => {
            drop(rd);
            unsafe { libc::setsid() };
            log::init(NAME, cli.verbose, Target::Daemon);
            let mut pipe = Some(std::fs::File::from(wr));
            let detached = std::cell::Cell::new(false);
            let mut ready = |r: Result<(), String>| {
                if let Some(mut p) = pipe.take() {
                    let msg = match r {
                        Ok(()) => "ok".to_string(),
                        Err(e) => e,
                    };
                    let _ = p.write_all(msg.as_bytes());
                    // Detach from the caller's terminal once mounted: logs
                    // go to syslog from now on.
                    log::detached();
                    detached.set(true);
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
                if detached.get() {
                    // The caller has gone: only syslog can tell.
                    tracing::error!("{e}");
                } else {
                    ready(Err(e.clone()));
                }
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
                eprintln!("{NAME}: {msg}");
                ExitCode::from(1)
            }
        }
    }
}

fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}
