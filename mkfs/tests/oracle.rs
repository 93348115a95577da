//! mkfs.rgfs against the real gfs2-utils, over the matrix of sizes
//! {300 MiB, 1 GiB, 10 GiB, 100 GiB} × journals {1, 2, 8} × block sizes
//! {512, 1024, 4096} × {lock_dlm pacemaker:pcmk, lock_nolock}:
//!
//! - mkfs.gfs2 and mkfs.rgfs, given the same -U, write the same image
//!   block for block, except dinode timestamps, log header sequence numbers
//!   (with the lh_hash/lh_crc they change) and the rindex padding mkfs.gfs2
//!   3.5.0 leaves uninitialised;
//! - `fsck.gfs2 -n` finds nothing wrong with the mkfs.rgfs image;
//! - `tunegfs2 -l` and `gfs2_edit -p sb|journals` show what was asked for.
//!
//! Where mkfs.gfs2 refuses a combination, mkfs.rgfs must refuse it too.
//! Images are sparse, compared only where either tool wrote (SEEK_DATA),
//! and deleted as soon as a combination is done. One test per device size
//! so the sizes run in parallel.

mod common;

use std::path::Path;
use std::time::Instant;

use common::*;
use rgfs::format::geometry::Geometry;
use rgfs_mkfs::{LockProto, MkfsOptions};

const UUID: &str = "01234567-89ab-cdef-0123-456789abcdef";

#[derive(Clone, Copy, Debug)]
struct Case {
    size_bytes: u64,
    journals: u32,
    block_size: u32,
    dlm: bool,
}

impl Case {
    fn args(&self) -> Vec<String> {
        let mut a = vec![
            "-O".into(),
            "-q".into(),
            "-U".into(),
            UUID.into(),
            "-b".into(),
            self.block_size.to_string(),
            "-j".into(),
            self.journals.to_string(),
        ];
        if self.dlm {
            a.extend([
                "-p".into(),
                "lock_dlm".into(),
                "-t".into(),
                "pacemaker:pcmk".into(),
            ]);
        } else {
            a.extend(["-p".into(), "lock_nolock".into()]);
        }
        a
    }

    fn options(&self) -> MkfsOptions {
        MkfsOptions {
            block_size: self.block_size,
            journals: self.journals,
            lock_proto: if self.dlm {
                LockProto::Dlm
            } else {
                LockProto::Nolock
            },
            lock_table: self.dlm.then(|| "pacemaker:pcmk".to_string()),
            ..Default::default()
        }
    }
}

fn mkfs(tool: &str, case: &Case, image: &Path) -> std::process::Output {
    let mut args = case.args();
    args.push(image.to_str().unwrap().to_string());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run(tool, &args)
}

/// Checks one combination; returns the bytes compared.
fn check_case(dir: &Path, case: Case) -> u64 {
    let theirs = dir.join("gfs2.img");
    let ours = dir.join("rgfs.img");
    sparse_image(&theirs, case.size_bytes);
    sparse_image(&ours, case.size_bytes);

    let gfs2 = mkfs("mkfs.gfs2", &case, &theirs);
    let rgfs = mkfs(MKFS_RGFS, &case, &ours);
    if !gfs2.status.success() {
        assert!(
            !rgfs.status.success(),
            "{case:?}: mkfs.gfs2 refused but mkfs.rgfs accepted"
        );
        eprintln!("{case:?}: refused by both");
        return 0;
    }
    assert!(
        rgfs.status.success(),
        "{case:?}: mkfs.rgfs failed: {}",
        String::from_utf8_lossy(&rgfs.stderr)
    );

    // Where rindex lies in our image, to mask mkfs.gfs2's garbage there.
    let prepared = rgfs_mkfs::prepare(case.size_bytes, &case.options()).unwrap();
    let rindex = prepared
        .system
        .inodes
        .iter()
        .find(|(p, _)| p == "master/rindex")
        .unwrap()
        .1;
    let geom = Geometry::new(case.block_size).unwrap();
    let masks = rindex_masks(&ours, &geom, rindex.addr, prepared.layout.rgrps.len());
    let compared = compare_images(&theirs, &ours, case.block_size as u64, &masks)
        .unwrap_or_else(|diffs| panic!("{case:?}: images differ:\n{diffs}"));
    std::fs::remove_file(&theirs).unwrap();

    let path = ours.to_str().unwrap();
    let fsck = run("fsck.gfs2", &["-n", path]);
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&fsck.stdout),
        String::from_utf8_lossy(&fsck.stderr)
    );
    assert_eq!(
        fsck.status.code(),
        Some(0),
        "{case:?}: fsck.gfs2 -n:\n{out}"
    );
    let lower = out.to_lowercase();
    for word in [
        "dirty",
        "error",
        "corrupt",
        "inconsistent",
        "invalid",
        "fixed",
        "missing",
        "does not match",
    ] {
        assert!(
            !lower.contains(word),
            "{case:?}: fsck.gfs2 -n says {word:?}:\n{out}"
        );
    }

    let tune = String::from_utf8(run("tunegfs2", &["-l", path]).stdout).unwrap();
    let (proto, table) = if case.dlm {
        ("lock_dlm", "pacemaker:pcmk")
    } else {
        ("lock_nolock", "")
    };
    for line in [
        format!("Lock protocol: {proto}"),
        format!("Lock table: {table}"),
        format!("Block size: {}", case.block_size),
        format!("File system UUID: {UUID}"),
    ] {
        assert!(
            tune.lines().any(|l| l.trim_end() == line.trim_end()),
            "{case:?}: tunegfs2 -l lacks {line:?}:\n{tune}"
        );
    }
    let sb = String::from_utf8(run("gfs2_edit", &["-p", "sb", path]).stdout).unwrap();
    assert!(
        sb.contains(&format!("sb_lockproto          {proto}")),
        "{case:?}:\n{sb}"
    );
    // `-p jindex` lists every journal; `-p journals` says whether each is
    // clean but (gfs2_edit 3.5.0, on mkfs.gfs2's images too) only shows
    // those in the first leaf of a hashed jindex.
    let jindex = String::from_utf8(run("gfs2_edit", &["-p", "jindex", path]).stdout).unwrap();
    let mut names: Vec<String> = jindex
        .lines()
        .filter(|l| l.contains(": File"))
        .filter_map(|l| l.split_whitespace().last().map(str::to_string))
        .collect();
    names.sort();
    let mut want: Vec<String> = (0..case.journals).map(|j| format!("journal{j}")).collect();
    want.sort();
    assert_eq!(names, want, "{case:?}: gfs2_edit -p jindex:\n{jindex}");
    let journals = String::from_utf8(run("gfs2_edit", &["-p", "journals", path]).stdout).unwrap();
    let listed: Vec<&str> = journals
        .lines()
        .filter(|l| l.starts_with("journal"))
        .collect();
    assert!(
        !listed.is_empty(),
        "{case:?}: gfs2_edit -p journals:\n{journals}"
    );
    assert!(
        listed.iter().all(|l| l.ends_with("clean.")),
        "{case:?}: gfs2_edit -p journals:\n{journals}"
    );
    std::fs::remove_file(&ours).unwrap();
    compared
}

fn check_size(test: &str, size_bytes: u64) {
    if !have_gfs2_utils(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let start = Instant::now();
    let mut cases = 0;
    let mut compared = 0;
    for block_size in [512, 1024, 4096] {
        for journals in [1, 2, 8] {
            for dlm in [true, false] {
                let case = Case {
                    size_bytes,
                    journals,
                    block_size,
                    dlm,
                };
                let t = Instant::now();
                let bytes = check_case(dir.path(), case);
                eprintln!(
                    "{case:?}: {} MiB compared in {:.2?}",
                    bytes >> 20,
                    t.elapsed()
                );
                compared += bytes;
                cases += 1;
            }
        }
    }
    eprintln!(
        "{test}: {cases} combinations, {} MiB compared, {:.1?}",
        compared >> 20,
        start.elapsed()
    );
}

#[test]
fn same_as_mkfs_gfs2_on_300_mib() {
    check_size("same_as_mkfs_gfs2_on_300_mib", 300 << 20);
}

#[test]
fn same_as_mkfs_gfs2_on_1_gib() {
    check_size("same_as_mkfs_gfs2_on_1_gib", 1 << 30);
}

#[test]
fn same_as_mkfs_gfs2_on_10_gib() {
    check_size("same_as_mkfs_gfs2_on_10_gib", 10 << 30);
}

#[test]
fn same_as_mkfs_gfs2_on_100_gib() {
    check_size("same_as_mkfs_gfs2_on_100_gib", 100 << 30);
}
