//! The mount's line in libmount's utab (`/run/mount/utab`), so that
//! `umount DIR` runs `umount.fuse.rgfs`.
//!
//! Why: as root with an absolute mount point, umount(8) learns the type of
//! the mount from statfs(2), which says only `fuse`, and then runs no
//! `umount.fuse.rgfs`; it reads mountinfo (and finds `fuse.rgfs`) only when
//! utab has a line for the mount point. The line says `helper=fuse.rgfs`,
//! which names the helper outright. umount(8) removes the line after a
//! successful unmount; the server removes it too when it ends (an unmount
//! by `fusermount3 -u` or by the helper run by hand leaves it otherwise).
//!
//! utab is libmount's file: lines of `KEY=value` fields, values escaped
//! as in mountinfo, guarded by `flock` on `utab.lock`. Best effort: without
//! root or without `/run/mount` nothing is written, and umount(8) behaves as
//! it did.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

const DIR: &str = "/run/mount";
const UTAB: &str = "/run/mount/utab";
const LOCK: &str = "/run/mount/utab.lock";
/// How long to wait for libmount's lock (held for a moment by each mount
/// or umount) before giving up on the line.
const LOCK_WAIT: Duration = Duration::from_secs(5);

/// A line this process added; [`UtabEntry::remove`] takes it out again.
#[derive(Debug)]
pub struct UtabEntry {
    /// `SRC=… TARGET=…` as written (libmount rewrites lines in its own
    /// field order, so the line is found by these two fields).
    src: String,
    target: String,
}

/// Spaces, tabs, newlines and backslashes as octal escapes (`\040`).
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            ' ' | '\t' | '\n' | '\\' => out.push_str(&format!("\\{:03o}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// The mount ID (mountinfo's first field) of the mount on `target`, the
/// one on top when several are stacked there.
fn mount_id(target: &str) -> Option<u32> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let escaped = escape(target);
    info.lines().rfind(|l| l.split(' ').nth(4) == Some(escaped.as_str()))?.split(' ').next()?.parse().ok()
}

/// Runs `edit` on utab's text under libmount's lock and writes the result
/// back atomically (a temporary file renamed over it).
fn update(edit: impl FnOnce(&str) -> String) -> std::io::Result<()> {
    let lock = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(LOCK)?;
    let start = Instant::now();
    // SAFETY: a valid descriptor.
    while unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        if start.elapsed() > LOCK_WAIT {
            return Err(std::io::Error::from(std::io::ErrorKind::TimedOut));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let old = std::fs::read_to_string(UTAB).unwrap_or_default();
    let tmp = format!("{UTAB}.rgfs.{}", std::process::id());
    let mut f = File::create(&tmp)?;
    f.write_all(edit(&old).as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, UTAB)
    // The lock is released when `lock` is dropped.
}

/// `utab` without the lines of rgfs mounts whose mount point is not in
/// `mounted` (mount points as mountinfo escapes them).
fn without_stale(utab: &str, mounted: &[&str]) -> String {
    let stale = |l: &str| {
        l.split(' ').any(|f| f == "OPTS=helper=fuse.rgfs")
            && l.split(' ').filter_map(|f| f.strip_prefix("TARGET=")).any(|t| !mounted.contains(&t))
    };
    utab.lines().filter(|l| !stale(l)).map(|l| format!("{l}\n")).collect()
}

/// Adds the line for the live mount of `source` on `target` (an absolute
/// path); None when it cannot (not root, no /run/mount, no such mount).
pub fn add(source: &Path, target: &Path) -> Option<UtabEntry> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || !Path::new(DIR).is_dir() {
        return None;
    }
    let target = target.to_str()?;
    let id = mount_id(target)?;
    let entry = UtabEntry {
        src: format!("SRC={}", escape(&source.display().to_string())),
        target: format!("TARGET={}", escape(target)),
    };
    let line = format!("ID={id} {} {} ROOT=/ OPTS=helper=fuse.rgfs\n", entry.src, entry.target);
    // Lines of servers that died without removing theirs (kill -9) would
    // pile up: ours are dropped once their mount point is no longer mounted
    // (here: utab serves this mount namespace).
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mounted: Vec<&str> = info.lines().filter_map(|l| l.split(' ').nth(4)).collect();
    update(|old| without_stale(old, &mounted) + &line).ok()?;
    Some(entry)
}

impl UtabEntry {
    /// Takes the line out (if umount(8) has not already).
    pub fn remove(self) {
        let ours = |l: &str| l.split(' ').any(|f| f == self.src) && l.split(' ').any(|f| f == self.target);
        let _ = update(|old| old.lines().filter(|l| !ours(l)).map(|l| format!("{l}\n")).collect());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_only_rgfs_lines_whose_mount_is_gone() {
        let utab = "ID=40 SRC=/a.img TARGET=/m/a ROOT=/ OPTS=helper=fuse.rgfs\n\
                    SRC=/b.img TARGET=/m/b ROOT=/ OPTS=helper=fuse.rgfs\n\
                    ID=42 SRC=/dev/sdc TARGET=/m/c ROOT=/ OPTS=helper=udisks2\n";
        assert_eq!(
            without_stale(utab, &["/", "/m/a"]),
            "ID=40 SRC=/a.img TARGET=/m/a ROOT=/ OPTS=helper=fuse.rgfs\n\
             ID=42 SRC=/dev/sdc TARGET=/m/c ROOT=/ OPTS=helper=udisks2\n"
        );
    }

    #[test]
    fn escapes_as_mountinfo_does() {
        assert_eq!(escape("/mnt/my vol\\x"), "/mnt/my\\040vol\\134x");
        assert_eq!(escape("/plain"), "/plain");
    }
}
