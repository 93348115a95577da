//! The fsck.rgfs command line as a user meets it: its name in --help and
//! --version, one-line usage errors, and a closed stdout (`fsck.rgfs -v
//! IMG | head -1`) that neither panics nor stops a repair midway.

mod support;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use support::{base_image, case_path, corrupt_file, fsck_rgfs, have_gfs2_utils, write_sparse};
use rgfs_fsck::{ExitCode, Mode};

const BIN: &str = env!("CARGO_BIN_EXE_fsck-rgfs");

/// Runs fsck.rgfs with a stdout whose reader has already gone.
fn run_into_closed_pipe(args: &[&str], image: &Path) -> Output {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    Command::new(BIN)
        .args(args)
        .arg(image)
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap()
}

#[test]
fn help_and_version_name_fsck_rgfs() {
    let help = Command::new(BIN).arg("--help").output().unwrap();
    assert_eq!(help.status.code(), Some(0));
    let h = String::from_utf8_lossy(&help.stdout);
    assert!(h.contains("Usage: fsck.rgfs "), "{h}");
    let version = Command::new(BIN).arg("--version").output().unwrap();
    assert_eq!(version.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("fsck.rgfs "));
}

#[test]
fn usage_errors_are_one_line_naming_what_is_wrong() {
    for (args, word) in [(&[][..], "<DEVICE>"), (&["-x", "img"][..], "'-x'")] {
        let out = Command::new(BIN).args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(ExitCode::Usage as i32), "{args:?}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("fsck.rgfs: ") && stderr.contains(word), "{args:?}: {stderr}");
    }
}

#[test]
fn a_closed_stdout_is_no_panic_and_a_repair_still_finishes() {
    if !have_gfs2_utils() {
        return;
    }
    let img = case_path("closed-pipe");
    write_sparse(&img, base_image());
    let out = run_into_closed_pipe(&["-n", "-v"], &img);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
    // -y: every repair is made and the exit status says so.
    corrupt_file(&img, "inode /h1 di_nlink 7");
    let out = run_into_closed_pipe(&["-y", "-v"], &img);
    assert_eq!(out.status.code(), Some(ExitCode::Corrected as i32), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
    let after = fsck_rgfs(&img, Mode::No);
    assert_eq!(after.exit, ExitCode::Clean, "{}", after.report);
    let (code, text) = support::fsck_gfs2(&img, "-n");
    assert_eq!(code, 0, "{text}");
    let _ = std::fs::remove_file(&img);
}
