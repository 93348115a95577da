//! Which processes hold a claim. An OFD lock has no owning process (the
//! kernel shows pid -1 for it in /proc/locks), so holders are found the way
//! lslocks finds them: a process whose open file on the device shows a
//! `lock:` line in its fdinfo. (Every claim takes an OFD lock, on block
//! devices too, because the kernel keeps no trace of an O_EXCL open there.)

use std::path::{Path, PathBuf};

/// A process holding a claim on a device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    pub pid: u32,
    /// Its command name (/proc/PID/comm).
    pub name: String,
}

impl Holder {
    /// Whether it is a mount.rgfs server (the binary may run as
    /// mount.rgfs or, uninstalled, as mount-rgfs).
    pub fn is_mount_server(&self) -> bool {
        self.name.starts_with("mount") && self.name.contains("rgfs")
    }
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (pid {})", self.name, self.pid)
    }
}

/// Whether the open file `fd` of `pid` holds a lock.
fn fd_claims(pid: u32, fd: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).is_ok_and(|i| i.lines().any(|l| l.starts_with("lock:")))
}

/// The processes other than this one that hold a claim on one of `files`
/// (absolute paths, symlinks resolved), restricted to `only` when given.
pub(crate) fn holders(files: &[PathBuf], only: Option<&[u32]>) -> Vec<Holder> {
    let me = std::process::id();
    let mut found = Vec::new();
    let pids: Vec<u32> = match only {
        Some(p) => p.to_vec(),
        None => std::fs::read_dir("/proc")
            .map(|d| d.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect())
            .unwrap_or_default(),
    };
    for pid in pids.into_iter().filter(|&p| p != me) {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { continue };
        let holds = fds.flatten().any(|fd| {
            std::fs::read_link(fd.path()).is_ok_and(|target| files.iter().any(|f| f == &target))
                && fd_claims(pid, &fd.file_name().to_string_lossy())
        });
        if holds {
            let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default().trim().to_string();
            found.push(Holder { pid, name });
        }
    }
    found
}

/// The files a claim on `path` locks: the device itself and, for a loop
/// device, its backing file (so the image and the loop device over it are
/// one volume).
pub(crate) fn claimed_files(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let canonical = std::fs::canonicalize(path)?;
    let meta = std::fs::metadata(&canonical)?;
    let mut files = vec![canonical];
    if meta.file_type().is_block_device() {
        if let Some(backing) = super::mountinfo::loop_backing_file(meta.rdev()) {
            if backing.is_file() {
                files.push(backing);
            }
        }
    }
    Ok(files)
}
