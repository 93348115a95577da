//! Helpers shared by the filesystem's integration tests: images made by the
//! real mkfs.gfs2 and checked by the real fsck.gfs2 (the external oracles).
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use rgfs::core::FsCore;
use rgfs::mount::{mount, MountOptions};
use rgfs_block::BlockDevice;

#[path = "../../../tests/src/oracle.rs"]
mod oracle;
#[allow(unused_imports)] // each test crate uses some of them
pub use oracle::{have, missing, require};

/// Skips the calling test (with a printed notice) when gfs2-utils are missing.
#[macro_export]
macro_rules! require_gfs2_utils {
    () => {
        if !common::require("mkfs.gfs2") || !common::require("fsck.gfs2") {
            return;
        }
    };
}

/// A scratch directory in memory when possible (fsck runs much faster).
pub fn scratch() -> tempfile::TempDir {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(d) = tempfile::tempdir_in(shm) {
            return d;
        }
    }
    tempfile::tempdir().expect("temp dir")
}

/// Makes an image with mkfs.gfs2 (`-p lock_nolock -j journals -J 8 -r 32`).
pub fn mkfs_image(size_mib: u64, bsize: u32, journals: u32) -> Vec<u8> {
    let dir = scratch();
    let path: PathBuf = dir.path().join("img");
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(size_mib << 20).unwrap();
    drop(f);
    let out = Command::new("mkfs.gfs2")
        .args(["-O", "-q", "-p", "lock_nolock", "-J", "8", "-r", "32"])
        .args(["-j", &journals.to_string(), "-b", &bsize.to_string()])
        .arg(&path)
        .output()
        .expect("run mkfs.gfs2");
    assert!(out.status.success(), "mkfs.gfs2 failed: {}", String::from_utf8_lossy(&out.stderr));
    std::fs::read(&path).unwrap()
}

/// Runs `fsck.gfs2 -n` on an image; Err(output) on any complaint.
pub fn fsck(image: &[u8]) -> Result<(), String> {
    let dir = scratch();
    let path = dir.path().join("img");
    std::fs::write(&path, image).unwrap();
    fsck_path(&path)
}

pub fn fsck_path(path: &std::path::Path) -> Result<(), String> {
    oracle::fsck(path)
}

/// Mounts an image on a device.
pub fn mount_dev(dev: Arc<dyn BlockDevice>) -> FsCore {
    mount(dev, &MountOptions::default()).expect("mount").0
}

/// The test's random seed: `RGFS_SEED` or a fresh one, printed.
pub fn seed(name: &str) -> u64 {
    let s = std::env::var("RGFS_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    eprintln!("{name}: seed {s} (rerun with RGFS_SEED={s})");
    s
}
