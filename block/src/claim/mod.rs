//! Device claims: which program may write a volume on this machine.
//!
//! Every program that writes a volume holds a claim on it for as long as it
//! may write, and a mount.rgfs server holds its claim until its last write
//! is flushed and the process exits, so a volume whose server is still
//! writing back after `umount` stays claimed. Two kinds:
//!
//! - [`Kind::Exclusive`]: one writer alone: mkfs.rgfs, fsck.rgfs repairing,
//!   and every mount that is not a cluster member (today every mount). An
//!   OFD write lock over the whole device; on a block device also an
//!   `O_EXCL` open, which the kernel refuses while it has the device
//!   mounted or another program holds it exclusively.
//! - [`Kind::Shared`]: cluster mounts (lock_dlm) on one machine, each with
//!   its own journal, which may coexist with one another but with no
//!   exclusive claim. An OFD read lock.
//!
//! A claim on a loop device also locks its backing file: the loop device
//! and the image are one volume. Locks cannot see a volume mounted by a
//! program that takes none (the kernel, an older mount.rgfs), so a claim is
//! also refused while mountinfo shows the volume mounted ([`mounts_of`]);
//! a shared claim tolerates `fuse.rgfs` mounts, which are its peers or
//! hold locks of their own.
//!
//! OFD locks belong to the open file, not to a process: they survive
//! `fork` in both processes and are released when the last descriptor of
//! the file closes, at the latest when the holder exits (a crash included).

mod holders;
mod mountinfo;

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

pub use holders::Holder;
pub use mountinfo::{find_mounts, mount_at, mount_point, mounts_of, Mount};

/// How long mount.rgfs, mkfs.rgfs and fsck.rgfs wait for a claim held by a
/// program that has not mounted the volume (a server still writing back
/// after `umount`, a running mkfs or fsck) before they give up.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// The kind of a claim; see the module documentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Exclusive,
    Shared,
}

/// A claim held: released when dropped (or when the process exits).
#[derive(Debug)]
pub struct Claim {
    /// The device and, for a loop device, its backing file; each locked.
    _files: Vec<File>,
    kind: Kind,
}

impl Claim {
    pub fn kind(&self) -> Kind {
        self.kind
    }
}

/// Why a claim was not granted. Each renders as one line naming the device.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    /// The device cannot be opened or inspected.
    #[error("{path}: {source}")]
    Open {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The volume is mounted on this machine.
    #[error("{path} is mounted at {point}{}", by(holders))]
    Mounted { path: String, point: String, holders: Vec<Holder> },
    /// Another program holds a claim but has not mounted the volume.
    #[error("{path} is {}{}", busy(holders), waited.map(|w| format!("; gave up after {} s", w.as_secs())).unwrap_or_default())]
    Busy { path: String, holders: Vec<Holder>, waited: Option<Duration> },
}

fn by(holders: &[Holder]) -> String {
    match holders.first() {
        Some(h) => format!(" by {h}"),
        None => String::new(),
    }
}

fn busy(holders: &[Holder]) -> String {
    match holders.iter().find(|h| h.is_mount_server()).or(holders.first()) {
        Some(h) if h.is_mount_server() => {
            format!("still being written by the server of a previous mount (pid {})", h.pid)
        }
        Some(h) => format!("in use by {h}"),
        None => "in use by another program".into(),
    }
}

impl ClaimError {
    /// The processes holding the claim, when known.
    pub fn holders(&self) -> &[Holder] {
        match self {
            ClaimError::Open { .. } => &[],
            ClaimError::Mounted { holders, .. } | ClaimError::Busy { holders, .. } => holders,
        }
    }
}

/// Opens `file` (`first`: the device itself) and locks it for `kind`.
/// Ok(None): someone else holds a conflicting claim.
fn lock_one(file: &Path, kind: Kind, first: bool) -> std::io::Result<Option<File>> {
    let is_bdev = std::fs::metadata(file)?.file_type().is_block_device();
    let exclusive = kind == Kind::Exclusive;
    let open = |write: bool| {
        let mut o = OpenOptions::new();
        o.read(true).write(write);
        if exclusive && first && is_bdev {
            o.custom_flags(libc::O_EXCL);
        }
        o.open(file)
    };
    // A write lock needs a descriptor open for writing; a device this user
    // may only read (a read-only mount of it) gets a read lock, which still
    // conflicts with every writer's.
    let (f, write) = match open(exclusive) {
        Ok(f) => (f, exclusive),
        Err(e) if exclusive && matches!(e.raw_os_error(), Some(libc::EACCES | libc::EROFS | libc::EPERM)) => {
            (open(false)?, false)
        }
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => return Ok(None),
        Err(e) => return Err(e),
    };
    // SAFETY: flock is plain data; zeroed is a valid value.
    let mut lk: libc::flock = unsafe { std::mem::zeroed() };
    lk.l_type = if write { libc::F_WRLCK } else { libc::F_RDLCK } as libc::c_short;
    lk.l_whence = libc::SEEK_SET as libc::c_short;
    // l_start = l_len = 0: the whole file, however it grows.
    // SAFETY: a valid descriptor and a valid flock for F_OFD_SETLK.
    if unsafe { libc::fcntl(f.as_raw_fd(), libc::F_OFD_SETLK, &lk) } != 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EAGAIN | libc::EACCES) => Ok(None),
            _ => Err(e),
        };
    }
    Ok(Some(f))
}

/// Takes a claim of `kind` on `path` (an image file or a block device) if
/// it is free now.
pub fn try_claim(path: &Path, kind: Kind) -> Result<Claim, ClaimError> {
    attempt(path, kind, &[])
}

/// [`try_claim`], looking first among `known` for the holders to report:
/// a scan of every process reads their open files' links, and each read
/// pins that file's mount for a moment (an unmount then fails with EBUSY),
/// so a waiter does not rescan the machine every time it retries.
fn attempt(path: &Path, kind: Kind, known: &[u32]) -> Result<Claim, ClaimError> {
    let name = path.display().to_string();
    let open_err = |source| ClaimError::Open { path: name.clone(), source };
    let files = holders::claimed_files(path).map_err(open_err)?;
    let who = || {
        let found = if known.is_empty() { Vec::new() } else { holders::holders(&files, Some(known)) };
        if found.is_empty() {
            holders::holders(&files, None)
        } else {
            found
        }
    };
    let mounted = mounts_of(path).into_iter().find(|m| kind == Kind::Exclusive || m.fstype != "fuse.rgfs");
    if let Some(m) = mounted {
        return Err(ClaimError::Mounted { path: name, point: m.point, holders: who() });
    }
    let mut held = Vec::new();
    for (i, f) in files.iter().enumerate() {
        match lock_one(f, kind, i == 0).map_err(open_err)? {
            Some(file) => held.push(file),
            None => {
                drop(held);
                // Taken between the mountinfo check and the lock: say so.
                if let Some(m) = mounts_of(path).into_iter().next().filter(|_| kind == Kind::Exclusive) {
                    return Err(ClaimError::Mounted { path: name, point: m.point, holders: who() });
                }
                return Err(ClaimError::Busy { path: name, holders: who(), waited: None });
            }
        }
    }
    Ok(Claim { _files: held, kind })
}

/// Takes a claim of `kind` on `path`, waiting up to `patience` while it is
/// held by a program that has not mounted the volume (typically a server
/// still writing back after `umount`); `waiting` is told once, with a line
/// to show the user. A mounted volume, or one held by no process this one
/// can see, is refused at once.
pub fn claim(path: &Path, kind: Kind, patience: Duration, waiting: &mut dyn FnMut(&str)) -> Result<Claim, ClaimError> {
    let start = Instant::now();
    let mut told = false;
    let mut known = Vec::new();
    loop {
        match attempt(path, kind, &known) {
            // Only a holder we can see is waited for: one we cannot (the
            // kernel's O_EXCL user, say) is not about to go away.
            Err(ClaimError::Busy { path, holders, .. }) if !holders.is_empty() => {
                if start.elapsed() >= patience {
                    return Err(ClaimError::Busy { path, holders, waited: Some(patience) });
                }
                if !told {
                    waiting(&format!("waiting for {path}: {}…", busy(&holders)));
                    told = true;
                }
                known = holders.iter().map(|h| h.pid).collect();
                std::thread::sleep(Duration::from_millis(50));
            }
            r => return r,
        }
    }
}

/// The processes holding a claim on `path` (empty when none, or when it
/// cannot be inspected).
pub fn holders_of(path: &Path) -> Vec<Holder> {
    holders::claimed_files(path).map(|f| holders::holders(&f, None)).unwrap_or_default()
}

/// Which of `pids` still hold a claim on `path`.
pub fn still_held_by(path: &Path, pids: &[u32]) -> Vec<Holder> {
    holders::claimed_files(path).map(|f| holders::holders(&f, Some(pids))).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(1 << 20).unwrap();
        f
    }

    fn is_busy(r: Result<Claim, ClaimError>) -> bool {
        matches!(r, Err(ClaimError::Busy { waited: None, .. }))
    }

    #[test]
    fn exclusive_excludes_everyone_until_dropped() {
        let img = image();
        let first = try_claim(img.path(), Kind::Exclusive).unwrap();
        assert_eq!(first.kind(), Kind::Exclusive);
        assert!(is_busy(try_claim(img.path(), Kind::Exclusive)));
        assert!(is_busy(try_claim(img.path(), Kind::Shared)));
        drop(first);
        try_claim(img.path(), Kind::Exclusive).unwrap();
    }

    #[test]
    fn shared_claims_coexist_and_exclude_exclusive() {
        let img = image();
        let a = try_claim(img.path(), Kind::Shared).unwrap();
        let b = try_claim(img.path(), Kind::Shared).unwrap();
        assert!(is_busy(try_claim(img.path(), Kind::Exclusive)));
        drop(a);
        assert!(is_busy(try_claim(img.path(), Kind::Exclusive)));
        drop(b);
        try_claim(img.path(), Kind::Exclusive).unwrap();
    }

    #[test]
    fn a_symlink_names_the_same_volume() {
        let img = image();
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("link.img");
        std::os::unix::fs::symlink(img.path(), &link).unwrap();
        let _c = try_claim(img.path(), Kind::Exclusive).unwrap();
        assert!(is_busy(try_claim(&link, Kind::Exclusive)));
    }

    /// A child process sharing `claim`'s locked file (OFD locks survive
    /// fork), which keeps the claim for `ms` milliseconds after the parent
    /// drops its copy, then exits.
    fn held_by_child(claim: Claim, ms: u32) -> i32 {
        let keep = claim._files[0].as_raw_fd();
        // SAFETY: the child only closes, sleeps and exits (all
        // async-signal-safe).
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            unsafe {
                // Not the claims other tests' threads hold meanwhile.
                for fd in (3..4096).filter(|&fd| fd != keep) {
                    libc::close(fd);
                }
                libc::usleep(ms * 1000);
                libc::_exit(0);
            }
        }
        drop(claim);
        pid
    }

    fn reap(pid: i32) {
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
    }

    #[test]
    fn waiting_is_told_once_and_bounded() {
        let img = image();
        let child = held_by_child(try_claim(img.path(), Kind::Exclusive).unwrap(), 20_000);
        let mut told = Vec::new();
        let r = claim(img.path(), Kind::Exclusive, Duration::from_millis(300), &mut |m| told.push(m.to_string()));
        reap(child);
        let err = r.unwrap_err();
        assert_eq!(told.len(), 1, "{told:?}");
        let waiting = format!("waiting for {}: in use by ", img.path().display());
        assert!(told[0].starts_with(&waiting) && told[0].contains(&format!("(pid {child})")), "{told:?}");
        let msg = err.to_string();
        assert!(matches!(err, ClaimError::Busy { waited: Some(_), .. }), "{msg}");
        assert!(msg.contains("gave up after"), "{msg}");
    }

    #[test]
    fn the_claim_is_granted_when_its_holder_exits() {
        let img = image();
        let child = held_by_child(try_claim(img.path(), Kind::Exclusive).unwrap(), 300);
        let mut told = 0;
        let r = claim(img.path(), Kind::Shared, PATIENCE, &mut |_| told += 1);
        reap(child);
        assert_eq!(r.unwrap().kind(), Kind::Shared);
        assert_eq!(told, 1);
    }

    #[test]
    fn a_holder_this_process_cannot_see_is_not_waited_for() {
        let img = image();
        // Held by this process: not a holder it reports (nor one that will
        // go away while it waits).
        let _held = try_claim(img.path(), Kind::Exclusive).unwrap();
        let err = claim(img.path(), Kind::Exclusive, PATIENCE, &mut |m| panic!("waited: {m}")).unwrap_err();
        assert!(matches!(err, ClaimError::Busy { waited: None, .. }), "{err}");
        assert!(err.to_string().ends_with("is in use by another program"), "{err}");
    }

    #[test]
    fn a_free_device_is_claimed_without_waiting_and_a_missing_one_is_an_error() {
        let img = image();
        let mut told = 0;
        claim(img.path(), Kind::Exclusive, PATIENCE, &mut |_| told += 1).unwrap();
        assert_eq!(told, 0);
        let err = try_claim(Path::new("/nonexistent/rgfs.img"), Kind::Exclusive).unwrap_err();
        assert!(err.to_string().starts_with("/nonexistent/rgfs.img: "), "{err}");
    }
}
