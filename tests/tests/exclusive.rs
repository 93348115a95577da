//! One writer per volume, and an unmount that finishes: real mount.rgfs,
//! mkfs.rgfs, fsck.rgfs and umount.fuse.rgfs on real FUSE mounts.
//!
//! - a second mount of a mounted volume is refused, whatever name it is
//!   given (the same path, a relative one, a symlink, a loop device) and
//!   wherever it would go (another directory, the same mount point);
//! - `mkfs.rgfs -O` refuses a mounted volume by any of those names;
//! - after `umount.fuse.rgfs` returns the volume is written back: fsck.gfs2
//!   calls it clean and a new mount works at once;
//! - mount.rgfs, mkfs.rgfs and fsck.rgfs wait for a server that is still
//!   writing back after its mount is gone.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rgfs_tests::{fsck, fuse_available, make_image, mount_bin, scratch, workspace_bin, Mkfs, Mounted};

fn mkfs_bin() -> PathBuf {
    workspace_bin("rgfs-mkfs", "mkfs-rgfs")
}

fn fsck_bin() -> PathBuf {
    workspace_bin("rgfs-fsck", "fsck-rgfs")
}

fn umount_bin() -> PathBuf {
    workspace_bin("rgfs", "umount-fuse-rgfs")
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// How many mounts list `dir` as their mount point.
fn mounts_on(dir: &Path) -> usize {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let d = dir.to_string_lossy();
    info.lines().filter(|l| l.split(' ').nth(4) == Some(&d)).count()
}

/// Runs `mount.rgfs DEVICE DIR` (as a daemon, the way mount(8) runs it) in
/// `cwd`. A mount that should not have happened is undone at once, so a
/// failing test leaves nothing mounted.
fn mount_daemon(cwd: &Path, device: &Path, dir: &Path) -> Output {
    let before = mounts_on(dir);
    let out = Command::new(mount_bin()).current_dir(cwd).arg(device).arg(dir).output().expect("run mount.rgfs");
    if out.status.success() && mounts_on(dir) > before {
        let _ = Command::new("umount").arg("-l").arg(dir).status();
    }
    out
}

/// `mkfs.rgfs -O` of a lock_nolock volume on `device`, run in `cwd`.
fn mkfs_o(cwd: &Path, device: &Path) -> Output {
    Command::new(mkfs_bin())
        .current_dir(cwd)
        .args(["-O", "-q", "-p", "lock_nolock", "-j", "1", "-J", "16"])
        .arg(device)
        .stdin(Stdio::null())
        .output()
        .expect("run mkfs.rgfs")
}

/// Asserts that `out` is a refusal naming the mount at `point` and its
/// server.
fn assert_refused(out: &Output, point: &Path, pid: u32, what: &str) {
    let err = text(out);
    assert!(!out.status.success(), "{what}: accepted\n{err}");
    assert!(err.contains(&format!("is mounted at {}", point.display())), "{what}: {err}");
    assert!(err.contains(&format!("(pid {pid})")), "{what}: the server is not named: {err}");
    assert_eq!(err.lines().count(), 1, "{what}: not one line: {err}");
}

/// A scratch directory holding a fresh lock_nolock volume `vol.img` of
/// `mib` MiB; None (with a notice) when FUSE mounts cannot run here.
fn volume(mib: u64) -> Option<(tempfile::TempDir, PathBuf)> {
    if !fuse_available() {
        return None;
    }
    let tmp = scratch();
    let image = tmp.path().join("vol.img");
    make_image(&image, mib, Mkfs::Rgfs);
    Some((tmp, image))
}

/// Files written through `m`, checked after the refusals.
fn write_marker(m: &Mounted) {
    std::fs::create_dir(m.path("kept")).unwrap();
    for i in 0..50 {
        std::fs::write(m.path(&format!("kept/f{i}")), format!("marker {i}")).unwrap();
    }
}

fn check_marker(image: &Path, dir: &Path) {
    let m = Mounted::new(image, dir, "").expect("mount after the refusals");
    for i in 0..50 {
        assert_eq!(std::fs::read_to_string(m.path(&format!("kept/f{i}"))).unwrap(), format!("marker {i}"));
    }
    m.unmount().expect("unmount");
    fsck(image).unwrap();
}

#[test]
fn a_second_mount_of_a_mounted_volume_is_refused() {
    let Some((tmp, image)) = volume(256) else { return };
    let link = tmp.path().join("link.img");
    std::os::unix::fs::symlink("vol.img", &link).unwrap();
    let (m1, m2) = (tmp.path().join("m1"), tmp.path().join("m2"));
    std::fs::create_dir_all(&m2).unwrap();
    let m = Mounted::new(&image, &m1, "").expect("first mount");
    write_marker(&m);
    let cases: [(&str, &Path, &Path); 5] = [
        ("same path", &image, &m2),
        ("relative path", Path::new("vol.img"), &m2),
        ("symlink", &link, &m2),
        ("relative symlink", Path::new("./link.img"), &m2),
        ("same mount point", &image, &m1),
    ];
    for (what, device, dir) in cases {
        let out = mount_daemon(tmp.path(), device, dir);
        assert_refused(&out, &m1, m.pid(), what);
        assert_eq!(mounts_on(&m1), 1, "{what}");
        assert_eq!(mounts_on(&m2), 0, "{what}");
    }
    m.unmount().expect("unmount");
    fsck(&image).unwrap();
    check_marker(&image, &m1);
}

#[test]
fn mkfs_refuses_a_mounted_volume_even_with_o() {
    let Some((tmp, image)) = volume(256) else { return };
    let link = tmp.path().join("link.img");
    std::os::unix::fs::symlink(&image, &link).unwrap();
    let dir = tmp.path().join("mnt");
    let m = Mounted::new(&image, &dir, "").expect("mount");
    write_marker(&m);
    for (what, device) in
        [("absolute path", image.as_path()), ("relative path", Path::new("vol.img")), ("symlink", &link)]
    {
        let out = mkfs_o(tmp.path(), device);
        assert_eq!(out.status.code(), Some(255), "{what}: {}", text(&out));
        assert_refused(&out, &dir, m.pid(), what);
    }
    m.unmount().expect("unmount");
    check_marker(&image, &dir);
}

/// A loop device over an image, detached when dropped.
struct Loop(String);

impl Loop {
    fn new(image: &Path) -> Option<Loop> {
        let out = Command::new("losetup").args(["-f", "--show"]).arg(image).output().ok()?;
        let dev = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (out.status.success() && !dev.is_empty()).then_some(Loop(dev))
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

#[test]
fn a_loop_device_and_its_image_are_one_volume() {
    let Some((tmp, image)) = volume(256) else { return };
    let Some(lo) = Loop::new(&image) else {
        rgfs_tests::missing("a loop device (losetup -f failed)");
        return;
    };
    let dev = PathBuf::from(&lo.0);
    let (m1, m2) = (tmp.path().join("m1"), tmp.path().join("m2"));
    std::fs::create_dir_all(&m2).unwrap();
    // Mounted through the image: the loop device is the same volume.
    let m = Mounted::new(&image, &m1, "").expect("mount the image");
    write_marker(&m);
    assert_refused(&mount_daemon(tmp.path(), &dev, &m2), &m1, m.pid(), "loop device while the image is mounted");
    assert_refused(&mkfs_o(tmp.path(), &dev), &m1, m.pid(), "mkfs on the loop device");
    m.unmount().expect("unmount");
    // Mounted through the loop device: the image and the device again.
    let m = Mounted::new(&dev, &m1, "").expect("mount the loop device");
    assert_refused(&mount_daemon(tmp.path(), &dev, &m2), &m1, m.pid(), "the loop device twice");
    assert_refused(&mount_daemon(tmp.path(), &image, &m2), &m1, m.pid(), "the image while its loop device is mounted");
    assert_refused(&mkfs_o(tmp.path(), &image), &m1, m.pid(), "mkfs on the image");
    m.unmount().expect("unmount");
    drop(lo);
    check_marker(&image, &m1);
}

/// Files and data enough that the server has a lot to write back when the
/// mount ends.
fn heavy_workload(dir: &Path) {
    std::fs::create_dir(dir.join("many")).unwrap();
    for i in 0..2000 {
        std::fs::write(dir.join(format!("many/f{i}")), format!("{i}").repeat(i % 300)).unwrap();
    }
    let big: Vec<u8> = (0..48u32 << 20).map(|i| (i.wrapping_mul(2654435761) >> 24) as u8).collect();
    std::fs::write(dir.join("big"), &big).unwrap();
}

/// A mount made as mount(8) makes it: `mount.rgfs DEVICE DIR` returns once
/// the mount is live and leaves a daemon. Unmounted lazily if still there
/// when dropped.
struct DaemonMount(PathBuf);

impl Drop for DaemonMount {
    fn drop(&mut self) {
        if mounts_on(&self.0) > 0 {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// The pid of the `mount.rgfs IMAGE DIR` daemon.
fn daemon_pid(image: &Path, dir: &Path) -> Option<u32> {
    let want = [mount_bin().into_os_string(), image.into(), dir.into()];
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).filter(|a| !a.is_empty()).collect();
        let matches = args.len() == want.len() && args.iter().zip(&want).all(|(a, w)| *a == w.as_encoded_bytes());
        matches.then_some(pid)
    })
}

/// Whether process `pid` exists and has not exited (a zombie has).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X'])))
}

#[test]
fn after_the_umount_helper_returns_the_volume_is_written_back() {
    let Some((tmp, image)) = volume(512) else { return };
    let dir = tmp.path().join("mnt");
    std::fs::create_dir_all(&dir).unwrap();
    for round in 0..3 {
        let out = Command::new(mount_bin()).arg(&image).arg(&dir).output().unwrap();
        assert!(out.status.success(), "round {round}: mount: {}", text(&out));
        let guard = DaemonMount(dir.clone());
        if round == 0 {
            heavy_workload(&dir);
        } else {
            assert_eq!(std::fs::read_dir(dir.join("many")).unwrap().count(), 2000 + round - 1, "round {round}");
            std::fs::write(dir.join(format!("many/round{round}")), b"x").unwrap();
            std::fs::remove_file(dir.join("big")).ok();
            std::fs::write(dir.join("big"), vec![round as u8; 32 << 20]).unwrap();
        }
        let server = daemon_pid(&image, &dir).expect("the mount.rgfs daemon");
        // As umount(8) runs it: the mount point, then -n.
        let out = Command::new(umount_bin()).arg(&dir).arg("-n").output().unwrap();
        assert!(out.status.success(), "round {round}: umount.fuse.rgfs: {}", text(&out));
        drop(guard);
        assert!(!alive(server), "round {round}: the server (pid {server}) is still running after umount returned");
        // At once: no wait, no retry.
        fsck(&image).unwrap_or_else(|e| panic!("round {round}, right after umount.fuse.rgfs: {e}"));
    }
}

/// A server that has been stopped and whose mount is gone: it holds its
/// claim with its write-back still to do. Resumed (and reaped) when
/// dropped.
struct StoppedServer {
    child: Child,
    dir: PathBuf,
}

impl StoppedServer {
    /// Mounts `image`, writes through it, stops the server and unmounts
    /// with umount2(2) (which needs nothing from the server, unlike
    /// umount(8), which looks at the mount point first).
    fn new(image: &Path, dir: &Path) -> StoppedServer {
        let m = Mounted::new(image, dir, "").expect("mount");
        for i in 0..200 {
            std::fs::write(m.path(&format!("f{i}")), format!("{i}")).unwrap();
        }
        let child = m.take_server();
        let s = StoppedServer { child, dir: dir.to_path_buf() };
        assert_eq!(unsafe { libc::kill(s.pid() as i32, libc::SIGSTOP) }, 0);
        let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
        assert_eq!(unsafe { libc::umount2(c.as_ptr(), 0) }, 0, "umount2: {}", std::io::Error::last_os_error());
        s
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resumes the server and waits for it to finish writing back.
    fn resume(mut self) {
        unsafe { libc::kill(self.pid() as i32, libc::SIGCONT) };
        let st = self.child.wait().unwrap();
        assert!(st.success(), "the server exited {st}");
    }
}

impl Drop for StoppedServer {
    fn drop(&mut self) {
        unsafe { libc::kill(self.pid() as i32, libc::SIGCONT) };
        if mounts_on(&self.dir) > 0 {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
        let start = Instant::now();
        while self.child.try_wait().ok().flatten().is_none() && start.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `cmd`, waits until it says it is waiting for `server`, then
/// resumes the server; returns the tool's output (its stderr from the
/// start).
fn waits_for(mut cmd: Command, server: StoppedServer, image: &Path, what: &str) -> Output {
    let pid = server.pid();
    let mut tool = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut err = BufReader::new(tool.stderr.take().unwrap());
    let mut first = String::new();
    err.read_line(&mut first).unwrap();
    let expected =
        format!("waiting for {}: still being written by the server of a previous mount (pid {pid})", image.display());
    if !first.contains(&expected) {
        let _ = tool.kill();
        let _ = tool.wait();
        drop(server);
        panic!("{what} did not wait for the server: {first:?}");
    }
    server.resume();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut err, &mut rest).unwrap();
    let mut out = tool.wait_with_output().unwrap();
    out.stderr = format!("{first}{rest}").into_bytes();
    out
}

#[test]
fn tools_wait_for_a_server_still_writing_back() {
    let Some((tmp, image)) = volume(256) else { return };
    let dir = tmp.path().join("mnt");

    // mount.rgfs waits, then mounts what the server wrote.
    let server = StoppedServer::new(&image, &dir);
    let mut cmd = Command::new(mount_bin());
    cmd.arg(&image).arg(&dir);
    let out = waits_for(cmd, server, &image, "mount.rgfs");
    let guard = DaemonMount(dir.clone());
    assert!(out.status.success(), "mount.rgfs: {}", text(&out));
    assert_eq!(std::fs::read_to_string(dir.join("f199")).unwrap(), "199");
    let out = Command::new(umount_bin()).arg(&dir).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    drop(guard);
    fsck(&image).unwrap();

    // fsck.rgfs -y waits, then finds the volume clean.
    let server = StoppedServer::new(&image, &dir);
    let mut cmd = Command::new(fsck_bin());
    cmd.arg("-y").arg(&image);
    let out = waits_for(cmd, server, &image, "fsck.rgfs -y");
    assert_eq!(out.status.code(), Some(0), "fsck.rgfs -y: {}{}", text(&out), String::from_utf8_lossy(&out.stdout));

    // mkfs.rgfs -O waits, then makes a new filesystem.
    let server = StoppedServer::new(&image, &dir);
    let mut cmd = Command::new(mkfs_bin());
    cmd.args(["-O", "-q", "-p", "lock_nolock", "-j", "1", "-J", "16"]).arg(&image);
    let out = waits_for(cmd, server, &image, "mkfs.rgfs -O");
    assert!(out.status.success(), "mkfs.rgfs: {}", text(&out));
    fsck(&image).unwrap();
    let m = Mounted::new(&image, &dir, "").expect("mount the new filesystem");
    assert!(!m.path("f0").exists(), "mkfs made a new filesystem");
    m.unmount().unwrap();
    fsck(&image).unwrap();
}

/// umount(8) itself runs the helper for a fuse.rgfs mount and returns once
/// the volume is written back. Installing into /sbin would change the
/// machine for everyone, so this runs in a private mount namespace where
/// an overlay adds umount.fuse.rgfs to the directory /sbin names, and a
/// tmpfs gives it its own /run/mount (libmount's utab). The mount point is
/// absolute: umount(8) then runs the helper only because mount.rgfs left a
/// line in utab (as root it otherwise takes the type from statfs(2), which
/// says only "fuse").
#[test]
fn umount_runs_the_helper_and_returns_once_written_back() {
    let Some((tmp, image)) = volume(512) else { return };
    if !rgfs_tests::require("unshare") {
        return;
    }
    let sbin_dir = std::fs::canonicalize("/sbin").unwrap();
    let helpers = tmp.path().join("helpers");
    std::fs::create_dir(&helpers).unwrap();
    std::fs::copy(umount_bin(), helpers.join("umount.fuse.rgfs")).unwrap();
    let dir = tmp.path().join("mnt");
    std::fs::create_dir(&dir).unwrap();
    // Exit 77: the overlay cannot be made here.
    let script = format!(
        r#"mount -t overlay overlay -o lowerdir={helpers}:{sbin} {sbin} || exit 77
mount -t tmpfs tmpfs /run/mount || exit 77
set -e
{mount} {image} {dir}
mkdir {dir}/many
for i in $(seq 1 1000); do echo "file $i" > {dir}/many/f$i; done
dd if=/dev/urandom of={dir}/big bs=1M count=40 status=none
umount -v {dir}
"#,
        helpers = helpers.display(),
        sbin = sbin_dir.display(),
        mount = mount_bin().display(),
        image = image.display(),
        dir = dir.display(),
    );
    let out = Command::new("unshare").args(["-m", "--propagation", "private", "sh", "-c", &script]).output().unwrap();
    // A server left behind by a failed script serves a namespace no one
    // else sees: SIGTERM makes it unmount there and exit.
    if let Some(pid) = daemon_pid(&image, &dir) {
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    }
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), text(&out));
    if out.status.code() == Some(77) {
        rgfs_tests::missing(&format!(
            "a private mount namespace where {} and /run/mount can be mounted over ({said})",
            sbin_dir.display()
        ));
        return;
    }
    assert!(out.status.success(), "{said}");
    let expected = format!("umount.fuse.rgfs: {} unmounted; {} written back", dir.display(), image.display());
    assert!(said.contains(&expected), "umount did not run the helper: {said}");
    fsck(&image).unwrap();
}
