//! mount.rgfs as a user and mount(8) meet it: its name, --help and
//! --version, one-line errors that say what is wrong (before anything is
//! mounted or written), `noatime` visible in mountinfo, logs on stderr
//! with `-f`, and a detached server's messages in syslog.

use std::fs;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use rgfs_tests::{fsck, fuse_available, make_image, mount_bin, scratch, Mkfs};

fn mount_rgfs(args: &[&str]) -> Output {
    Command::new(mount_bin()).args(args).stdin(Stdio::null()).output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The mountinfo line of the mount on `dir`.
fn mountinfo_line(dir: &Path) -> Option<String> {
    let d = dir.to_string_lossy().into_owned();
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    mountinfo.lines().find(|l| l.split(' ').nth(4) == Some(&d)).map(String::from)
}

#[test]
fn help_and_version_exit_0_and_name_mount_rgfs() {
    let help = mount_rgfs(&["--help"]);
    assert_eq!(help.status.code(), Some(0), "{}", text(&help.stderr));
    let h = text(&help.stdout);
    assert!(h.contains("Usage: mount.rgfs ") && h.contains("lockproto="), "{h}");
    let version = mount_rgfs(&["--version"]);
    assert_eq!(version.status.code(), Some(0));
    assert!(text(&version.stdout).starts_with("mount.rgfs "), "{}", text(&version.stdout));
}

#[test]
fn usage_errors_are_one_line() {
    let cases: [(&[&str], &str); 3] =
        [(&[], "<DEVICE>"), (&["img"], "<MOUNTPOINT>"), (&["a", "b", "--bogus"], "--bogus")];
    for (args, word) in cases {
        let out = mount_rgfs(args);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("mount.rgfs: ") && err.contains(word), "{args:?}: {err}");
    }
}

/// Each refusal names what is wrong, and nothing is mounted or written.
#[test]
fn refusals_say_what_is_wrong() {
    if !fuse_available() {
        return;
    }
    let tmp = scratch();
    let img = tmp.path().join("img");
    make_image(&img, 64, Mkfs::Rgfs);
    let before = fs::read(&img).unwrap();
    let mnt = tmp.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let img_s = img.to_str().unwrap();
    let mnt_s = mnt.to_str().unwrap();
    let missing = tmp.path().join("missing");
    let cases: [(&[&str], &str); 5] = [
        // A lock_nolock volume asked to mount with lock_dlm.
        (&[img_s, mnt_s, "-o", "lockproto=lock_dlm"], "lockproto=lock_dlm asked, but the volume uses lock_nolock"),
        (&[img_s, missing.to_str().unwrap()], "mount point does not exist"),
        (&[img_s, mnt_s, "-o", "locktable=nocolon"], "cluster:fsname"),
        (&[img_s, mnt_s, "-t", "ext4"], "ext4"),
        (&[img_s, mnt_s, "-N", "/nonexistent-ns"], "-N /nonexistent-ns"),
    ];
    for (args, want) in cases {
        let out = mount_rgfs(args);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err:?} lacks {want:?}");
        assert!(mountinfo_line(&mnt).is_none(), "{args:?} mounted");
    }
    assert!(!missing.exists());
    assert!(fs::read(&img).unwrap() == before, "a refused mount changed the image");
}

/// mount(8)'s way of calling the helper: `DEV DIR -o OPTS` after the
/// flags it passes (-n, -s, -v, -t fuse.rgfs); noatime shows in mountinfo.
#[test]
fn mount8_flags_are_accepted_and_noatime_shows_in_mountinfo() {
    if !fuse_available() {
        return;
    }
    let tmp = scratch();
    let img = tmp.path().join("img");
    make_image(&img, 64, Mkfs::Rgfs);
    let mnt = tmp.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let _guard = rgfs_tests::Unmount(mnt.clone());
    let out = Command::new(mount_bin())
        .arg(&img)
        .arg(&mnt)
        .args(["-sn", "-t", "fuse.rgfs", "-o", "rw,noatime"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    // A mount helper says nothing on success.
    assert!(out.stderr.is_empty() && out.stdout.is_empty(), "{}{}", text(&out.stdout), text(&out.stderr));
    let line = mountinfo_line(&mnt).expect("mounted");
    let per_mount = line.split(' ').nth(5).unwrap();
    assert!(per_mount.split(',').any(|o| o == "noatime"), "{line}");
    assert!(line.contains(" - fuse.rgfs "), "{line}");
    fs::write(mnt.join("f"), b"x").unwrap();
    assert!(rgfs_tests::umount(&mnt));
    wait_for_clean(&img);
}

/// fsck.gfs2 -n clean, waiting (bounded) for the daemon's write-back.
fn wait_for_clean(img: &Path) {
    let start = Instant::now();
    loop {
        match fsck(img) {
            Ok(()) => return,
            Err(e) if start.elapsed() > Duration::from_secs(60) => panic!("{e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// `-f` logs to stderr: info by default, debug with -v.
#[test]
fn foreground_logs_go_to_stderr_and_v_adds_debug() {
    if !fuse_available() {
        return;
    }
    let tmp = scratch();
    let img = tmp.path().join("img");
    make_image(&img, 64, Mkfs::Rgfs);
    let mnt = tmp.path().join("mnt");
    let _guard = rgfs_tests::Unmount(mnt.clone());
    for (flags, debug) in [(&["-f"][..], false), (&["-f", "-v"][..], true)] {
        fs::create_dir_all(&mnt).unwrap();
        let log = tmp.path().join("log");
        let mut child = Command::new(mount_bin())
            .arg(&img)
            .arg(&mnt)
            .args(flags)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let start = Instant::now();
        while mountinfo_line(&mnt).is_none() {
            assert!(child.try_wait().unwrap().is_none(), "mount.rgfs exited: {}", fs::read_to_string(&log).unwrap());
            assert!(start.elapsed() < Duration::from_secs(30), "not mounted in 30 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        fs::write(mnt.join("f"), b"x").unwrap();
        assert!(rgfs_tests::umount(&mnt));
        let st = wait_child(&mut child);
        assert!(st.success());
        let l = fs::read_to_string(&log).unwrap();
        assert!(l.contains("INFO") && l.contains("mounted on") && l.contains("unmounted from"), "{flags:?}: {l}");
        assert_eq!(l.contains("DEBUG"), debug, "{flags:?}: {l}");
        assert!(!l.contains('\x1b'), "no colours when stderr is a file: {l}");
    }
    fsck(&img).unwrap();
}

fn wait_child(child: &mut std::process::Child) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("mount.rgfs did not exit after umount");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A detached server logs to syslog: here a datagram socket of the test's
/// own, named by RGFS_SYSLOG_SOCKET. Its unmount message comes long after
/// its stderr went to /dev/null.
#[test]
fn a_detached_server_logs_to_syslog() {
    if !fuse_available() {
        return;
    }
    let tmp = scratch();
    let img = tmp.path().join("img");
    make_image(&img, 64, Mkfs::Rgfs);
    let mnt = tmp.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let _guard = rgfs_tests::Unmount(mnt.clone());
    let sock_path = tmp.path().join("log.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let out = Command::new(mount_bin())
        .arg(&img)
        .arg(&mnt)
        .env("RGFS_SYSLOG_SOCKET", &sock_path)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    fs::write(mnt.join("f"), b"x").unwrap();
    assert!(rgfs_tests::umount(&mnt));
    let mut got = Vec::new();
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    while !got.iter().any(|m: &String| m.contains("unmounted from")) {
        assert!(start.elapsed() < Duration::from_secs(60), "no unmount message in syslog: {got:?}");
        if let Ok(n) = sock.recv(&mut buf) {
            got.push(text(&buf[..n]));
        }
    }
    let img_s = img.display().to_string();
    // Facility daemon (3), severity info (6): <30>.
    let mounted = got.iter().find(|m| m.contains("mounted on")).unwrap_or_else(|| panic!("{got:?}"));
    assert!(mounted.starts_with("<30>") && mounted.contains("mount.rgfs[") && mounted.contains(&img_s), "{mounted}");
    wait_for_clean(&img);
}

/// `-N PID` (mount -N passes it on): the mount is made in that process's
/// mount namespace, not in the caller's.
#[test]
fn dash_n_mounts_in_the_namespace_it_names() {
    if !fuse_available() || !rgfs_tests::require("unshare") || !rgfs_tests::require("nsenter") {
        return;
    }
    let tmp = scratch();
    let img = tmp.path().join("img");
    make_image(&img, 64, Mkfs::Rgfs);
    let mnt = tmp.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    // A process alone in a private mount namespace, ended by dropping it.
    struct Holder(std::process::Child);
    impl Drop for Holder {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let holder = Holder(
        Command::new("unshare").args(["-m", "--propagation", "private", "sleep", "600"]).spawn().unwrap(),
    );
    let pid = holder.0.id().to_string();
    // unshare execs sleep once the namespace is made.
    let start = Instant::now();
    while fs::read_link(format!("/proc/{pid}/ns/mnt")).ok() == fs::read_link("/proc/self/ns/mnt").ok() {
        assert!(start.elapsed() < Duration::from_secs(30), "unshare did not make a namespace");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = Command::new(mount_bin()).arg(&img).arg(&mnt).args(["-N", &pid]).stdin(Stdio::null()).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let theirs = fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let d = mnt.to_string_lossy().into_owned();
    let in_theirs = theirs.lines().any(|l| l.split(' ').nth(4) == Some(&d));
    let in_ours = mountinfo_line(&mnt).is_some();
    let nsenter = |args: &[&str]| Command::new("nsenter").args(["-t", &pid, "-m"]).args(args).status().unwrap();
    // (No file is opened there: a FUSE release in flight would make the
    // mount busy for a moment.)
    let listed = nsenter(&["ls", &d]).success();
    let unmounted = nsenter(&["umount", &d]).success();
    assert!(in_theirs && !in_ours, "mounted in the namespace -N named, not in ours");
    assert!(listed && unmounted);
    wait_for_clean(&img);
    drop(holder);
}
