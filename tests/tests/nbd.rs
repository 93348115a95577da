//! rgfs over NBD end to end, with real processes: `rgfs-nbd` serves an image
//! file; `mkfs.rgfs`, `fsck.rgfs` and `mount.rgfs` reach it only through an
//! `nbd+unix://` URL; `fsck.gfs2 -n` checks the backing file after each.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use rgfs_tests::{bin_dir, fsck, fuse_available, scratch, Mounted};

/// A workspace binary; built if missing (running this crate alone does not
/// build other packages' binaries).
fn bin(package: &str, name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    if !path.exists() {
        let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cmd.args(["build", "-p", package, "--bin", name]);
        if bin_dir().ends_with("release") {
            cmd.arg("--release");
        }
        assert!(cmd.status().unwrap().success() && path.exists(), "{name} missing and could not be built");
    }
    path
}

/// `rgfs-nbd serve` on a Unix socket; killed when dropped.
struct Server(std::process::Child);

impl Server {
    fn start(image: &Path, socket: &Path) -> Server {
        let mut child = Command::new(bin("rgfs-nbd", "rgfs-nbd"))
            .arg("serve")
            .arg("--export")
            .arg(format!("fs={}", image.display()))
            .arg("--unix")
            .arg(socket)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert!(line.starts_with("listening on"), "rgfs-nbd did not start: {line:?}");
        Server(child)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{cmd:?} failed: {text}");
    text
}

#[test]
fn mkfs_fsck_and_mount_through_nbd() {
    if !rgfs_tests::require("fsck.gfs2") {
        return;
    }
    let dir = scratch();
    let image = dir.path().join("fs.img");
    std::fs::File::create(&image).unwrap().set_len(512 << 20).unwrap();
    let socket = dir.path().join("nbd.sock");
    let _server = Server::start(&image, &socket);
    let url = format!("nbd+unix:///fs?socket={}", socket.display());

    run(Command::new(bin("rgfs-mkfs", "mkfs-rgfs")).args(["-O", "-q", "-p", "lock_nolock", "-t", "nbd:test", "-j", "2", &url]));
    fsck(&image).expect("fsck.gfs2 -n after mkfs.rgfs through NBD");
    let text = run(Command::new(bin("rgfs-fsck", "fsck-rgfs")).args(["-n", &url]));
    assert!(text.contains("0 problems"), "{text}");

    if !fuse_available() {
        return;
    }
    let mnt = dir.path().join("mnt");
    let m = Mounted::new(Path::new(&url), &mnt, "").expect("mount.rgfs through NBD");
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(mountinfo.lines().any(|l| l.contains(&url)), "the mount's source is the URL");
    let big: Vec<u8> = (0..5_000_000u32).map(|i| (i * 7 % 253) as u8).collect();
    std::fs::create_dir(m.path("d")).unwrap();
    for i in 0..50 {
        std::fs::write(m.path(&format!("d/f{i}")), format!("file {i}")).unwrap();
    }
    std::fs::write(m.path("big"), &big).unwrap();
    std::fs::remove_file(m.path("d/f7")).unwrap();
    m.unmount().unwrap();
    fsck(&image).expect("fsck.gfs2 -n after a mount through NBD");

    // Mounted again: everything is there.
    let m = Mounted::new(Path::new(&url), &mnt, "").expect("second mount");
    assert_eq!(std::fs::read(m.path("big")).unwrap(), big);
    assert_eq!(std::fs::read_to_string(m.path("d/f49")).unwrap(), "file 49");
    assert!(!m.path("d/f7").exists());
    m.unmount().unwrap();
    fsck(&image).expect("fsck.gfs2 -n after the second mount");
}
