//! Helpers for tests with real processes: locating the binaries, making
//! images (mkfs.gfs2 and mkfs.rgfs), mounting with the real `mount.rgfs`
//! through real FUSE, and the fsck.gfs2 oracle. Mounts are guarded: a
//! failing test still unmounts (lazily) and ends the daemon it started.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod oracle;
pub use oracle::{fsck, have, missing, require};

/// Whether real FUSE mounts can run here; prints why not.
pub fn fuse_available() -> bool {
    let ok = Path::new("/dev/fuse").exists() && have("fusermount3") && have("mkfs.gfs2") && have("fsck.gfs2");
    if !ok {
        missing("/dev/fuse, fusermount3 or gfs2-utils (mkfs.gfs2, fsck.gfs2)");
    }
    ok
}

/// The directory holding the workspace's binaries (target/<profile>).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>
    exe.parent().and_then(Path::parent).expect("target dir").to_path_buf()
}

/// The mount.rgfs binary; built if missing.
pub fn mount_bin() -> PathBuf {
    workspace_bin("rgfs", "mount-rgfs")
}

/// A binary of the workspace, built (by `cargo build -p PACKAGE --bin
/// NAME`) if it is missing.
pub fn workspace_bin(package: &str, name: &str) -> PathBuf {
    let bin = bin_dir().join(name);
    if !bin.exists() {
        let release = bin_dir().ends_with("release");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-p", package, "--bin", name]);
        if release {
            cmd.arg("--release");
        }
        let st = cmd.status().expect("run cargo build");
        assert!(st.success() && bin.exists(), "{name} missing at {} and could not be built", bin.display());
    }
    bin
}

/// Which mkfs makes the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mkfs {
    Gfs2,
    Rgfs,
}

/// A scratch directory (in memory when possible).
pub fn scratch() -> tempfile::TempDir {
    if let Ok(d) = tempfile::tempdir_in("/dev/shm") {
        return d;
    }
    tempfile::tempdir().expect("temp dir")
}

/// Makes a lock_nolock image of `size_mib` at `path`.
pub fn make_image(path: &Path, size_mib: u64, mkfs: Mkfs) {
    let f = std::fs::File::create(path).unwrap();
    f.set_len(size_mib << 20).unwrap();
    drop(f);
    match mkfs {
        Mkfs::Gfs2 => {
            let out = Command::new("mkfs.gfs2")
                .args(["-O", "-q", "-p", "lock_nolock", "-j", "1", "-J", "16"])
                .arg(path)
                .output()
                .unwrap();
            assert!(out.status.success(), "mkfs.gfs2: {}", String::from_utf8_lossy(&out.stderr));
        }
        Mkfs::Rgfs => {
            let dev = rgfs_block::FileDevice::open(path, rgfs_block::Access::ReadWrite).unwrap();
            let mut o = rgfs_mkfs::MkfsOptions::nolock();
            o.journal_size_mb = Some(16);
            rgfs_mkfs::make_filesystem(&dev, &o).expect("mkfs.rgfs");
        }
    }
}

fn is_mounted(dir: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let d = dir.to_string_lossy();
    mounts.lines().any(|l| l.split(' ').nth(4) == Some(&d))
}

/// `umount DIR`, retried for a while when the mount is busy: the kernel
/// sends FUSE's RELEASE of a just-closed file asynchronously, and until the
/// server has answered it the mount counts as busy. Returns umount's
/// success.
pub fn umount(dir: &Path) -> bool {
    let start = Instant::now();
    loop {
        let out = Command::new("umount").arg(dir).output().expect("run umount");
        if out.status.success() {
            return true;
        }
        let busy = String::from_utf8_lossy(&out.stderr).contains("busy");
        if !busy || start.elapsed() > Duration::from_secs(20) {
            eprintln!("umount {}: {}", dir.display(), String::from_utf8_lossy(&out.stderr));
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Unmounts (lazily) on drop a mount made by a daemon-mode mount.rgfs
/// (one the test does not own as a child) that a failed test left behind.
pub struct Unmount(pub PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        if is_mounted(&self.0) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).stderr(Stdio::null()).status();
        }
    }
}

/// A live mount of an image by a foreground `mount.rgfs -f` child.
pub struct Mounted {
    pub dir: PathBuf,
    pub image: PathBuf,
    child: Option<Child>,
}

impl Mounted {
    /// Mounts `image` on `dir` with `-o opts`; waits until it is live.
    pub fn new(image: &Path, dir: &Path, opts: &str) -> Result<Mounted, String> {
        Self::new_in(None, image, dir, opts)
    }

    /// [`Mounted::new`] with mount.rgfs started in directory `cwd`, so
    /// `image` may be relative to it (`dir` must be absolute).
    pub fn new_in(cwd: Option<&Path>, image: &Path, dir: &Path, opts: &str) -> Result<Mounted, String> {
        std::fs::create_dir_all(dir).unwrap();
        let mut cmd = Command::new(mount_bin());
        if let Some(cwd) = cwd {
            cmd.current_dir(cwd);
        }
        cmd.arg(image).arg(dir).arg("-f").stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        if !opts.is_empty() {
            cmd.args(["-o", opts]);
        }
        let mut child = cmd.spawn().map_err(|e| e.to_string())?;
        let start = Instant::now();
        while !is_mounted(dir) {
            if let Some(st) = child.try_wait().unwrap() {
                let mut err = String::new();
                use std::io::Read;
                child.stderr.take().unwrap().read_to_string(&mut err).ok();
                return Err(format!("mount.rgfs exited {st}: {err}"));
            }
            if start.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                return Err("mount did not become live in 30 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Mounted { dir: dir.to_path_buf(), image: image.to_path_buf(), child: Some(child) })
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.join(p)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    /// `umount`, then waits for the daemon to write back and exit.
    pub fn unmount(mut self) -> Result<(), String> {
        let st = Command::new("umount").arg(&self.dir).status().map_err(|e| e.to_string())?;
        if !st.success() {
            return Err(format!("umount {} failed", self.dir.display()));
        }
        let mut child = self.child.take().expect("child");
        let start = Instant::now();
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                if !st.success() {
                    let mut err = String::new();
                    use std::io::Read;
                    child.stderr.take().unwrap().read_to_string(&mut err).ok();
                    return Err(format!("mount.rgfs exited {st}: {err}"));
                }
                return Ok(());
            }
            if start.elapsed() > Duration::from_secs(120) {
                let _ = child.kill();
                return Err("mount.rgfs did not exit after umount".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Takes the server out of the guard: the caller ends the mount and
    /// reaps the process.
    pub fn take_server(mut self) -> Child {
        self.child.take().expect("child")
    }

    /// SIGKILL to the daemon (a crash), then a lazy unmount.
    pub fn kill9(mut self) {
        let mut child = self.child.take().expect("child");
        let _ = child.kill();
        let _ = child.wait();
        let _ = Command::new("fusermount3").arg("-u").arg("-z").arg(&self.dir).status();
        let _ = Command::new("umount").arg("-l").arg(&self.dir).stderr(Stdio::null()).status();
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if is_mounted(&self.dir) {
                let _ = Command::new("fusermount3").arg("-u").arg("-z").arg(&self.dir).stderr(Stdio::null()).status();
            }
            let start = Instant::now();
            while child.try_wait().ok().flatten().is_none() && start.elapsed() < Duration::from_secs(20) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
