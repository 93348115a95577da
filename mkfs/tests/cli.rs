//! The mkfs.rgfs command line: each bad input gets a one-line message on
//! stderr, exit status 255, and leaves the target's bytes as they were; a
//! good run prints mkfs.gfs2's summary and makes a filesystem.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::MKFS_RGFS;

/// An image of `bytes` whose first MiB holds a recognisable pattern.
fn patterned_image(dir: &Path, name: &str, bytes: u64) -> PathBuf {
    let path = dir.join(name);
    let mut head: Vec<u8> = (0..1u32 << 20).map(|i| (i * 7 + 3) as u8).collect();
    head.truncate(bytes.min(1 << 20) as usize);
    std::fs::write(&path, &head).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(bytes)
        .unwrap();
    path
}

fn mkfs(args: &[&str], image: &Path) -> Output {
    Command::new(MKFS_RGFS)
        .args(args)
        .arg(image)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Runs mkfs.rgfs with `args` on `image` and checks the refusal: status
/// 255, one line on stderr containing `word`, bytes unchanged.
fn assert_refused(args: &[&str], image: &Path, word: &str) {
    let before = std::fs::read(image).ok();
    let out = mkfs(args, image);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(255), "{args:?}: stderr {stderr}");
    assert_eq!(
        stderr.lines().count(),
        1,
        "{args:?}: not one line: {stderr}"
    );
    assert!(stderr.starts_with("mkfs.rgfs: "), "{stderr}");
    assert!(
        stderr.to_lowercase().contains(word),
        "{args:?}: {stderr:?} lacks {word:?}"
    );
    assert_eq!(
        std::fs::read(image).ok(),
        before,
        "{args:?}: the image changed"
    );
}

#[test]
fn bad_options_are_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let img = patterned_image(dir.path(), "img", 64 << 20);
    let nolock = ["-O", "-p", "lock_nolock"];
    let with = |extra: &[&'static str]| -> Vec<&'static str> {
        nolock.iter().chain(extra).copied().collect()
    };
    assert_refused(&with(&["-j", "0"]), &img, "journals");
    assert_refused(&with(&["-b", "1000"]), &img, "block size");
    assert_refused(&with(&["-b", "8192"]), &img, "block size");
    assert_refused(&with(&["-b", "256"]), &img, "block size");
    assert_refused(&with(&["-J", "4"]), &img, "journal size");
    assert_refused(&with(&["-r", "16"]), &img, "resource group size");
    assert_refused(&with(&["-U", "not-a-uuid"]), &img, "uuid");
    assert_refused(&with(&["-j", "x"]), &img, "invalid value");
    assert_refused(
        &["-O", "-p", "lock_gulm", "-t", "a:b"],
        &img,
        "lock protocol",
    );
    // lock_dlm (the default) needs a lock table.
    assert_refused(&["-O"], &img, "lock table");
    assert_refused(&["-O", "-p", "lock_dlm"], &img, "lock table");
    for table in [
        "nocolon",
        "a:b:c",
        ":fs",
        "cluster:",
        "clu ster:fs",
        "c/d:fs",
    ] {
        assert_refused(&["-O", "-t", table], &img, "lock table");
    }
    let long_cluster = format!("{}:fs", "c".repeat(33));
    let long_cluster: &'static str = Box::leak(long_cluster.into_boxed_str());
    assert_refused(&["-O", "-t", long_cluster], &img, "lock table");
    let long_fs = format!("c:{}", "f".repeat(31));
    let long_fs: &'static str = Box::leak(long_fs.into_boxed_str());
    assert_refused(&["-O", "-t", long_fs], &img, "lock table");
}

#[test]
fn devices_too_small_are_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = patterned_image(dir.path(), "tiny", 12 << 20);
    assert_refused(&["-O", "-p", "lock_nolock"], &tiny, "too small");
    let small = patterned_image(dir.path(), "small", 300 << 20);
    // 8 journals of 64 MiB take more than half of 300 MiB.
    assert_refused(
        &["-O", "-p", "lock_nolock", "-j", "8", "-J", "64"],
        &small,
        "too small",
    );
    assert_refused(
        &["-O", "-p", "lock_nolock", "-j", "40"],
        &small,
        "too small",
    );
    // A block count beyond the device.
    let out = mkfs(&["-O", "-p", "lock_nolock"], &small);
    assert!(out.status.success());
    let before = std::fs::read(&small).unwrap();
    let out = Command::new(MKFS_RGFS)
        .args(["-O", "-p", "lock_nolock"])
        .arg(&small)
        .arg("100000000")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(255));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bigger than the device"));
    assert_eq!(std::fs::read(&small).unwrap(), before);
}

#[test]
fn missing_and_read_only_paths_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("does-not-exist");
    let out = mkfs(&["-O", "-p", "lock_nolock"], &missing);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0));
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("does-not-exist") && stderr.contains("cannot access"),
        "{stderr}"
    );
    assert!(!missing.exists(), "mkfs created the missing path");

    // An immutable file cannot be opened for writing, even by root.
    let ro = patterned_image(dir.path(), "ro", 64 << 20);
    let immutable = Command::new("chattr")
        .arg("+i")
        .arg(&ro)
        .status()
        .is_ok_and(|s| s.success());
    if !immutable {
        // Not root, or no chattr: permissions do the same job.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o444)).unwrap();
    }
    let before = std::fs::read(&ro).unwrap();
    let out = mkfs(&["-O", "-p", "lock_nolock"], &ro);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    if immutable {
        Command::new("chattr").arg("-i").arg(&ro).status().unwrap();
    }
    assert_ne!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("cannot open"), "{stderr}");
    assert_eq!(std::fs::read(&ro).unwrap(), before);
}

#[test]
fn existing_filesystems_are_not_overwritten_without_o() {
    let dir = tempfile::tempdir().unwrap();
    // An ext4 superblock magic.
    let ext4 = patterned_image(dir.path(), "ext4", 64 << 20);
    let mut bytes = std::fs::read(&ext4).unwrap();
    bytes[1080..1082].copy_from_slice(&[0x53, 0xEF]);
    std::fs::write(&ext4, &bytes).unwrap();
    assert_refused(&["-p", "lock_nolock"], &ext4, "ext2/ext3/ext4");

    // A GFS2 filesystem made by mkfs.rgfs itself.
    let gfs2 = patterned_image(dir.path(), "gfs2", 64 << 20);
    assert!(mkfs(&["-O", "-q", "-p", "lock_nolock"], &gfs2)
        .status
        .success());
    assert_refused(&["-p", "lock_nolock"], &gfs2, "gfs2");
    // With -O it is overwritten.
    assert!(mkfs(&["-O", "-q", "-p", "lock_nolock", "-j", "2"], &gfs2)
        .status
        .success());

    // Nothing recognisable: made without asking.
    let blank = patterned_image(dir.path(), "blank", 64 << 20);
    assert!(mkfs(&["-q", "-p", "lock_nolock"], &blank).status.success());
}

#[test]
fn a_good_run_prints_the_summary() {
    let dir = tempfile::tempdir().unwrap();
    let img = patterned_image(dir.path(), "img", 1 << 30);
    let out = mkfs(
        &[
            "-O",
            "-t",
            "pacemaker:pcmk",
            "-j",
            "2",
            "-U",
            "01234567-89ab-cdef-0123-456789abcdef",
        ],
        &img,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    for line in [
        "Block size:                4096",
        "Device size:               1.00 GB (262144 blocks)",
        "Filesystem size:           1.00 GB (262142 blocks)",
        "Journals:                  2",
        "Journal size:              16MB",
        "Resource groups:           6",
        "Locking protocol:          \"lock_dlm\"",
        "Lock table:                \"pacemaker:pcmk\"",
        "UUID:                      01234567-89ab-cdef-0123-456789abcdef",
    ] {
        assert!(
            stdout.lines().any(|l| l == line),
            "missing {line:?} in\n{stdout}"
        );
    }
    let quiet = mkfs(&["-O", "-q", "-p", "lock_nolock"], &img);
    assert!(quiet.status.success());
    assert!(quiet.stdout.is_empty() && quiet.stderr.is_empty());
}

#[test]
fn help_and_version_name_the_tool() {
    for flag in ["-h", "-V"] {
        let out = Command::new(MKFS_RGFS).arg(flag).output().unwrap();
        assert!(out.status.success(), "{flag}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("mkfs.rgfs"),
            "{flag}"
        );
    }
}

#[test]
fn no_arguments_name_the_missing_device() {
    let out = Command::new(MKFS_RGFS).stdin(Stdio::null()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(255), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("mkfs.rgfs: ") && stderr.contains("<DEVICE>"), "{stderr}");
}

/// Without -O and without a terminal to ask on, an existing filesystem is
/// refused before anything is announced: no "This will destroy any data".
#[test]
fn a_refusal_is_not_preceded_by_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let img = patterned_image(dir.path(), "gfs2", 64 << 20);
    assert!(mkfs(&["-O", "-q", "-p", "lock_nolock"], &img).status.success());
    let out = mkfs(&["-p", "lock_nolock"], &img);
    assert_eq!(out.status.code(), Some(255));
    assert!(out.stdout.is_empty(), "{}", String::from_utf8_lossy(&out.stdout));
}

/// `mkfs.rgfs ... | head -1`: a closed stdout is no panic; the filesystem
/// is made and the exit status is 0.
#[test]
fn a_closed_stdout_still_makes_the_filesystem() {
    let dir = tempfile::tempdir().unwrap();
    let img = patterned_image(dir.path(), "img", 64 << 20);
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(MKFS_RGFS)
        .args(["-O", "-p", "lock_nolock"])
        .arg(&img)
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
    // Made: a second run without -O finds it.
    assert_refused(&["-p", "lock_nolock"], &img, "gfs2");
    if common::have_gfs2_utils("a_closed_stdout_still_makes_the_filesystem") {
        let st = Command::new("fsck.gfs2").arg("-n").arg(&img).output().unwrap();
        assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stdout));
    }
}
