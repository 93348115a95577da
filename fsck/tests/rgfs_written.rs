//! Images written by the filesystem itself (`rgfs::mount`, the code behind
//! mount.rgfs, driven in process without FUSE): after a clean unmount
//! fsck.rgfs calls them clean; after a "crash" (the filesystem dropped
//! without unmounting) fsck.rgfs replays the journal, frees the inode that
//! was unlinked while open, and the result is clean for both fsck.rgfs and
//! fsck.gfs2.

mod support;

use std::sync::Arc;

use rgfs::format::consts::s_if;
use rgfs::mount::{mount, MountOptions};
use rgfs_block::MemDevice;
use rgfs_fsck::populate::pattern;
use rgfs_fsck::{ExitCode, Mode};
use support::*;

/// A workload touching every kind of object fsck checks. Returns the
/// address of a file left unlinked but open.
fn workload(fs: &mut rgfs::core::FsCore) -> u64 {
    let root = fs.sys.root;
    let c = Default::default();
    let docs = fs
        .create(root, b"docs", s_if::DIR | 0o755, 0, c, None)
        .unwrap()
        .ino;
    let small = fs
        .create(docs, b"small", s_if::REG | 0o644, 0, c, None)
        .unwrap()
        .ino;
    fs.write(small, 0, b"hello", false, false).unwrap();
    let big = fs
        .create(root, b"big", s_if::REG | 0o644, 0, c, None)
        .unwrap()
        .ino;
    fs.write(big, 0, &pattern(7, 3 << 20), false, false)
        .unwrap();
    let sparse = fs
        .create(root, b"sparse", s_if::REG | 0o644, 0, c, None)
        .unwrap()
        .ino;
    fs.write(sparse, 50 << 20, b"tail", false, false).unwrap();
    fs.create(root, b"link", s_if::LNK | 0o777, 0, c, Some(b"docs/small"))
        .unwrap();
    fs.create(docs, b"null", s_if::CHR | 0o666, (1 << 8) | 3, c, None)
        .unwrap();
    fs.link(small, root, b"hard").unwrap();
    fs.setxattr(small, "user.a", Some(b"value"), 0).unwrap();
    fs.setxattr(big, "user.big", Some(&pattern(8, 9000)), 0)
        .unwrap();
    for i in 0..60 {
        fs.setxattr(sparse, &format!("user.x{i}"), Some(&pattern(i, 150)), 0)
            .unwrap();
    }
    let many = fs
        .create(root, b"many", s_if::DIR | 0o755, 0, c, None)
        .unwrap()
        .ino;
    for i in 0..600 {
        let f = fs
            .create(
                many,
                format!("file-{i}").as_bytes(),
                s_if::REG | 0o644,
                0,
                c,
                None,
            )
            .unwrap()
            .ino;
        fs.write(
            f,
            0,
            &pattern(100 + i, (i as usize * 53) % 5000),
            false,
            false,
        )
        .unwrap();
    }
    for i in (0..600).step_by(3) {
        fs.remove(many, format!("file-{i}").as_bytes(), false)
            .unwrap();
    }
    fs.rename(root, b"big", docs, b"big-moved", 0).unwrap();
    fs.setattr(
        sparse,
        rgfs::ops::SetAttr {
            size: Some(10 << 20),
            ..Default::default()
        },
    )
    .unwrap();
    // A file unlinked while still open: its inode stays (UNLINKED).
    let open = fs
        .create(root, b"open", s_if::REG | 0o644, 0, c, None)
        .unwrap()
        .ino;
    fs.write(open, 0, &pattern(9, 20000), false, false).unwrap();
    fs.add_ref(open, 1, 1).unwrap();
    fs.remove(root, b"open", false).unwrap();
    open
}

#[test]
fn cleanly_unmounted_images_are_clean() {
    if !have_gfs2_utils() {
        return;
    }
    for (name, bsize) in [("4k", "4096"), ("1k", "1024")] {
        let path = case_path(&format!("rgfs-written-{name}"));
        mkfs_gfs2(&path, 200 << 20, &["-p", "lock_nolock", "-b", bsize]);
        let dev = Arc::new(MemDevice::from_bytes(std::fs::read(&path).unwrap()));
        let (mut fs, _) = mount(dev.clone(), &MountOptions::default()).expect("mount");
        let open = workload(&mut fs);
        fs.release_ref(open, 1, 1).unwrap();
        fs.shutdown().unwrap();
        drop(fs);
        let run = fsck_dev(&*dev, Mode::No);
        assert_eq!(
            run.exit,
            ExitCode::Clean,
            "{name}: image written by rgfs:\n{}",
            run.report
        );
        write_sparse(&path, &dev.snapshot());
        let (code, out) = fsck_gfs2(&path, "-n");
        assert_eq!(code, 0, "{name}: fsck.gfs2 -n:\n{out}");
        let _ = std::fs::remove_file(&path);
    }
}

#[test]
fn a_crashed_image_is_replayed_and_repaired() {
    if !have_gfs2_utils() {
        return;
    }
    let path = case_path("rgfs-crashed");
    mkfs_gfs2(&path, 200 << 20, &["-p", "lock_nolock"]);
    let dev = Arc::new(MemDevice::from_bytes(std::fs::read(&path).unwrap()));
    let (mut fs, _) = mount(dev.clone(), &MountOptions::default()).expect("mount");
    let open = workload(&mut fs);
    fs.sync().unwrap();
    // The node dies: nothing more reaches the disk.
    std::mem::forget(fs);
    let crashed = MemDevice::from_bytes(dev.snapshot());
    let before = fsck_dev(&crashed, Mode::No);
    assert_eq!(
        before.exit,
        ExitCode::Uncorrected,
        "a crashed image is not clean:\n{}",
        before.report
    );
    let repair = fsck_dev(&crashed, Mode::Yes);
    assert_eq!(repair.exit, ExitCode::Corrected, "{}", repair.report);
    assert!(
        repair.report.contains(&format!(
            "inode {open}: is unlinked and not named by any directory: freed"
        )),
        "the inode unlinked while open must be freed:\n{}",
        repair.report
    );
    let after = fsck_dev(&crashed, Mode::No);
    assert_eq!(after.exit, ExitCode::Clean, "{}", after.report);
    write_sparse(&path, &crashed.snapshot());
    let (code, out) = fsck_gfs2(&path, "-n");
    assert_eq!(code, 0, "fsck.gfs2 -n after the repair:\n{out}");
    eprintln!("crashed image, fsck.rgfs -y report:\n{}", repair.report);
    let _ = std::fs::remove_file(&path);
}
