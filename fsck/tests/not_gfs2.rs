//! fsck.rgfs on devices that hold no GFS2 filesystem at all (zeros, random
//! bytes, an ext4 image, a GFS2 image whose superblock and first resource
//! group header were zeroed), through the real binary in every mode: it says what
//! it found and that nothing was changed, exits 8 (operational error: there
//! is no filesystem to check, as fsck.gfs2 exits when it can neither read
//! nor rebuild a superblock), reports nothing as "fixed", and the image is
//! byte for byte as before.

mod support;

use std::path::Path;
use std::process::Command;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use support::*;

const BYTES: usize = 64 << 20;

fn check_untouched(path: &Path, what: &str) {
    let bin = env!("CARGO_BIN_EXE_fsck-rgfs");
    let before = std::fs::read(path).unwrap();
    for flags in [&["-y"][..], &["-p"], &["-n"], &["-y", "-v"], &[]] {
        let out = Command::new(bin).args(flags).arg(path).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let all = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.status.code(), Some(8), "{what} {flags:?}: {all}");
        assert!(
            stdout.contains("superblock: error: no GFS2 superblock at byte 65536 (")
                && stdout.contains("and no resource group header after it: not a GFS2 filesystem"),
            "{what} {flags:?}: {all}"
        );
        assert!(
            stdout.ends_with("fsck.rgfs: stopped; nothing was changed\n"),
            "{what} {flags:?}: {all}"
        );
        assert!(!all.contains("fixed"), "{what} {flags:?}: {all}");
        assert!(
            std::fs::read(path).unwrap() == before,
            "{what} {flags:?}: the image changed"
        );
    }
}

#[test]
fn zeros_and_random_bytes() {
    let path = case_path("not-gfs2-zeros");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(BYTES as u64)
        .unwrap();
    check_untouched(&path, "zeros");
    let mut bytes = vec![0u8; BYTES];
    StdRng::seed_from_u64(11).fill(&mut bytes[..]);
    std::fs::write(&path, &bytes).unwrap();
    check_untouched(&path, "random bytes");
    let _ = std::fs::remove_file(&path);
}

#[test]
fn an_ext4_image() {
    let path = case_path("not-gfs2-ext4");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(BYTES as u64)
        .unwrap();
    match Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(&path)
        .output()
    {
        Ok(out) if out.status.success() => check_untouched(&path, "ext4"),
        _ => missing("mkfs.ext4 (e2fsprogs), for the ext4 case"),
    }
    let _ = std::fs::remove_file(&path);
}

/// The populated base image with `bytes` written at each offset.
fn base_with(name: &str, writes: &[(u64, &[u8])]) -> std::path::PathBuf {
    use std::os::unix::fs::FileExt;
    let path = case_path(name);
    write_sparse(&path, base_image());
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    for (offset, bytes) in writes {
        f.write_all_at(bytes, *offset).unwrap();
    }
    path
}

/// A GFS2 image whose superblock block and first resource group header
/// were zeroed: nothing is left to tell it is GFS2.
#[test]
fn a_gfs2_image_without_superblock_and_first_group() {
    if !have_gfs2_utils() {
        return;
    }
    // The superblock (block 16 of 4 KiB) and the first group (block 17).
    let path = base_with("not-gfs2-wiped", &[(16 * 4096, &[0u8; 2 * 4096])]);
    check_untouched(&path, "wiped GFS2");
    let _ = std::fs::remove_file(&path);
}

/// A damaged superblock of a real volume is still rebuilt: only its header
/// type is wrong, and the first resource group header is gone too (the
/// block size comes from the superblock's own fields).
#[test]
fn a_damaged_gfs2_superblock_is_still_repaired() {
    if !have_gfs2_utils() {
        return;
    }
    let path = base_with(
        "damaged-sb-header",
        &[(65536 + 4, &4u32.to_be_bytes()), (17 * 4096, &[0u8; 4096])],
    );
    let bin = env!("CARGO_BIN_EXE_fsck-rgfs");
    let out = Command::new(bin).arg("-y").arg(&path).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("superblock: bad metadata header"),
        "{stdout}"
    );
    let out = Command::new(bin).arg("-n").arg(&path).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let (code, text) = fsck_gfs2(&path, "-n");
    assert_eq!(code, 0, "{text}");
    let _ = std::fs::remove_file(&path);
}
