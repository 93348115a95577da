//! fsck.rgfs on volumes the real mount.rgfs wrote through real FUSE: it
//! refuses to repair a mounted image, checks it read-only with a warning,
//! calls the image clean after a clean unmount, and after kill -9 of the
//! daemon replays the journal and leaves a volume both fscks call clean.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use rgfs_tests::{fsck, fuse_available, make_image, scratch, Mkfs, Mounted, workspace_bin};

/// The fsck.rgfs binary.
fn fsck_bin() -> PathBuf {
    workspace_bin("rgfs-fsck", "fsck-rgfs")
}

fn fsck_rgfs(flag: &str, image: &Path) -> Output {
    Command::new(fsck_bin()).arg(flag).arg(image).output().expect("run fsck.rgfs")
}

fn workload(m: &Mounted) {
    let p = |s: &str| m.path(s);
    std::fs::create_dir_all(p("a/b/c")).unwrap();
    std::fs::write(p("a/small"), b"hello").unwrap();
    let big: Vec<u8> = (0..2_500_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(p("a/b/big"), &big).unwrap();
    for i in 0..300 {
        std::fs::write(p(&format!("a/b/c/f{i}")), format!("file {i}").repeat(i % 50)).unwrap();
    }
    std::os::unix::fs::symlink("a/small", p("link")).unwrap();
    std::fs::hard_link(p("a/small"), p("hard")).unwrap();
    std::fs::rename(p("a/b/big"), p("big")).unwrap();
    for i in (0..300).step_by(4) {
        std::fs::remove_file(p(&format!("a/b/c/f{i}"))).unwrap();
    }
}

#[test]
fn fsck_rgfs_on_images_mount_rgfs_wrote() {
    if !fuse_available() {
        return;
    }
    for mkfs in [Mkfs::Gfs2, Mkfs::Rgfs] {
        let tmp = scratch();
        let image = tmp.path().join("vol.img");
        make_image(&image, 256, mkfs);
        let m = Mounted::new(&image, &tmp.path().join("mnt"), "").expect("mount");
        workload(&m);
        // Mounted: no repair, a read-only check with a warning.
        let out = fsck_rgfs("-y", &image);
        assert_eq!(out.status.code(), Some(8), "{mkfs:?}: -y on a mounted image: {}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stderr).contains("is mounted at"), "{mkfs:?}");
        let out = fsck_rgfs("-n", &image);
        assert!(String::from_utf8_lossy(&out.stderr).contains("warning"), "{mkfs:?}");
        m.unmount().expect("unmount");
        let out = fsck_rgfs("-n", &image);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{mkfs:?}: fsck.rgfs -n after a clean unmount:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        fsck(&image).unwrap_or_else(|e| panic!("{mkfs:?}: {e}"));
    }
}

#[test]
fn fsck_rgfs_after_mount_rgfs_is_killed() {
    if !fuse_available() {
        return;
    }
    let tmp = scratch();
    let image = tmp.path().join("vol.img");
    make_image(&image, 256, Mkfs::Gfs2);
    let m = Mounted::new(&image, &tmp.path().join("mnt"), "").expect("mount");
    workload(&m);
    // Make the work durable in the journal, then the node dies.
    std::fs::File::open(m.path("big")).unwrap().sync_all().unwrap();
    m.kill9();
    let out = fsck_rgfs("-y", &image);
    let code = out.status.code();
    assert!(code == Some(0) || code == Some(1), "fsck.rgfs -y after kill -9: {code:?}\n{}", String::from_utf8_lossy(&out.stdout));
    let out = fsck_rgfs("-n", &image);
    assert_eq!(out.status.code(), Some(0), "second fsck.rgfs -n:\n{}", String::from_utf8_lossy(&out.stdout));
    fsck(&image).unwrap();
}

/// mount.rgfs given a relative image path, from another directory than
/// fsck.rgfs runs in: mountinfo shows the absolute path as the source and
/// type fuse.rgfs, and fsck.rgfs still refuses to repair the image.
#[test]
fn a_mount_by_relative_path_is_recognised() {
    if !fuse_available() {
        return;
    }
    let tmp = scratch();
    let image = tmp.path().join("vol.img");
    make_image(&image, 256, Mkfs::Gfs2);
    let mnt = tmp.path().join("mnt");
    let m = Mounted::new_in(Some(tmp.path()), Path::new("vol.img"), &mnt, "").expect("mount");
    let canonical = std::fs::canonicalize(&image).unwrap();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = mountinfo
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(std::fs::canonicalize(&mnt).unwrap().to_str().unwrap()))
        .expect("the mount is in mountinfo");
    let after = line.split(" - ").nth(1).expect("mountinfo separator");
    let mut fields = after.split(' ');
    assert_eq!(fields.next(), Some("fuse.rgfs"), "{line}");
    assert_eq!(fields.next(), Some(canonical.to_str().unwrap()), "{line}");
    let out = fsck_rgfs("-y", &image);
    assert_eq!(out.status.code(), Some(8), "-y on an image mounted by a relative path: {}", String::from_utf8_lossy(&out.stderr));
    m.unmount().expect("unmount");
    let out = fsck_rgfs("-n", &image);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
}
