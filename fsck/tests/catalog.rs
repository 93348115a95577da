//! The corruption catalog: each file in `tests/catalog/` names one
//! corruption of a populated image and the report `fsck.rgfs -y` must give
//! for it. For every case the test checks that
//!
//! 1. `fsck.rgfs -n` on the corrupted image exits 4 and changes nothing;
//! 2. `fsck.rgfs -y` exits 1 with exactly the expected report;
//! 3. a second `fsck.rgfs -n` exits 0;
//! 4. `fsck.gfs2 -n` exits 0 on the repaired image (a crash, exit >= 128,
//!    is an oracle failure, never a pass);
//! 5. `fsck.gfs2 -y` on a copy of the corrupted image keeps no file that
//!    fsck.rgfs's repair lost (when fsck.gfs2 does not crash on it).
//!
//! `RGFS_BLESS=1 cargo test -p rgfs-fsck --release --test catalog` rewrites
//! the expected reports from the actual ones (review the diff!). The case
//! format and the corruption commands are described in
//! `tests/catalog/README.md`.

mod support;

use std::path::Path;

use rgfs_block::{Access, FileDevice, MemDevice};
use rgfs_fsck::{ExitCode, Mode};
use support::*;

struct Case {
    name: String,
    header: String,
    commands: Vec<String>,
}

const SEPARATOR: &str = "--- fsck.rgfs -y";

fn load_cases() -> Vec<(std::path::PathBuf, Case)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/catalog");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap();
            let (head, _expected) = match text.split_once(SEPARATOR) {
                Some((h, e)) => (
                    h.to_string(),
                    e.split_once('\n').map_or("", |x| x.1).to_string(),
                ),
                None => (text.clone(), String::new()),
            };
            let commands = head
                .lines()
                .filter_map(|l| l.strip_prefix("corrupt:"))
                .map(|c| c.trim().to_string())
                .collect();
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            (
                path,
                Case {
                    name,
                    header: head,
                    commands,
                },
            )
        })
        .collect()
}

/// Runs one case; returns the actual `-y` section and a list of failures.
fn run_case(case: &Case) -> (String, Vec<String>) {
    let mut failures = Vec::new();
    // fsck.rgfs works on the image in memory; files are written for
    // fsck.gfs2 only.
    let dev = MemDevice::from_bytes(base_image().clone());
    for c in &case.commands {
        corrupt(&dev, c);
    }
    let corrupted = dev.snapshot();
    let gfs2_copy = case_path(&format!("{}-gfs2", case.name));
    write_sparse(&gfs2_copy, &corrupted);

    // What fsck.gfs2 says of the damage (for the record: some damage it
    // does not notice, see docs/fsck.md).
    let (seen, seen_out) = fsck_gfs2(&gfs2_copy, "-n");
    eprintln!("{}: fsck.gfs2 -n on the damage: exit {seen}", case.name);
    if std::env::var_os("RGFS_SHOW_GFS2").is_some() {
        eprintln!("{}", tail(&seen_out));
    }
    let before = fsck_dev(&dev, Mode::No);
    if before.exit != ExitCode::Uncorrected {
        failures.push(format!(
            "fsck.rgfs -n before repair exited {:?}, expected 4:\n{}",
            before.exit, before.report
        ));
    }
    if dev.snapshot() != corrupted {
        failures.push("fsck.rgfs -n changed the image".into());
    }
    drop(corrupted);
    let repair = fsck_dev(&dev, Mode::Yes);
    let actual = format!(
        "{SEPARATOR} (exit {})\n{}",
        repair.exit as i32, repair.report
    );
    if repair.exit != ExitCode::Corrected {
        failures.push(format!("fsck.rgfs -y exited {:?}, expected 1", repair.exit));
    }
    let after = fsck_dev(&dev, Mode::No);
    if after.exit != ExitCode::Clean {
        failures.push(format!(
            "second fsck.rgfs -n exited {:?}:\n{}",
            after.exit, after.report
        ));
    }
    let img = case_path(&case.name);
    write_sparse(&img, &dev.snapshot());
    let (code, out) = fsck_gfs2(&img, "-n");
    if code != 0 {
        let what = if code >= 128 {
            "crashed (oracle failed)"
        } else {
            "complains"
        };
        failures.push(format!(
            "fsck.gfs2 -n after repair {what}: exit {code}\n{}",
            tail(&out)
        ));
    }
    // Compare with fsck.gfs2's own repair of the same damage.
    let (gcode, gout) = fsck_gfs2(&gfs2_copy, "-y");
    if gcode == 0 || gcode == 1 {
        let (recheck, _) = fsck_gfs2(&gfs2_copy, "-n");
        if recheck == 0 {
            let ours = survivors(&dev);
            let theirs = survivors(&FileDevice::open(&gfs2_copy, Access::ReadOnly).unwrap());
            // What fsck.gfs2 kept of the files of the uncorrupted image (not
            // what it made) must be in ours too, unchanged.
            let before = base_survivors();
            let lost: Vec<_> = theirs
                .iter()
                .filter(|(k, v)| before.contains_key(*k) && ours.get(*k) != Some(v))
                .collect();
            if !lost.is_empty() {
                failures.push(format!(
                    "fsck.gfs2 -y keeps inodes that fsck.rgfs -y lost or changed: {lost:?}"
                ));
            }
            eprintln!(
                "{}: fsck.gfs2 -y exit {gcode}, keeps {} inodes; fsck.rgfs keeps {}",
                case.name,
                theirs.len(),
                ours.len()
            );
        } else {
            eprintln!("{}: fsck.gfs2 -y exit {gcode} did not repair it (recheck exit {recheck}); no comparison", case.name);
        }
    } else if gcode < 128 {
        eprintln!(
            "{}: fsck.gfs2 -y gave up (exit {gcode}); no comparison",
            case.name
        );
    } else {
        eprintln!(
            "{}: fsck.gfs2 -y crashed (exit {gcode}) on the corrupted image; no comparison\n{}",
            case.name,
            tail(&gout)
        );
    }
    let _ = std::fs::remove_file(&img);
    let _ = std::fs::remove_file(&gfs2_copy);
    (actual, failures)
}

/// The files of the uncorrupted base image.
fn base_survivors() -> &'static std::collections::BTreeMap<String, (u32, u32, u64)> {
    static BASE: std::sync::OnceLock<std::collections::BTreeMap<String, (u32, u32, u64)>> =
        std::sync::OnceLock::new();
    BASE.get_or_init(|| survivors(&MemDevice::from_bytes(base_image().clone())))
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

#[test]
fn corruption_catalog() {
    if !have_gfs2_utils() {
        return;
    }
    let bless = std::env::var_os("RGFS_BLESS").is_some();
    let cases = load_cases();
    assert!(
        cases.len() >= 40,
        "the catalog must hold at least 40 cases, has {}",
        cases.len()
    );
    let only = std::env::var("RGFS_CASE").ok();
    let mut failed = Vec::new();
    for (path, case) in &cases {
        if only
            .as_ref()
            .is_some_and(|o| !case.name.contains(o.as_str()))
        {
            continue;
        }
        let (actual, mut failures) = match std::panic::catch_unwind(|| run_case(case)) {
            Ok(r) => r,
            Err(e) => {
                let msg = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                failed.push(format!("case {}: panicked: {msg}", case.name));
                continue;
            }
        };
        let want = std::fs::read_to_string(path).unwrap();
        let want_section = want
            .split_once(SEPARATOR)
            .map(|(_, s)| format!("{SEPARATOR}{s}"))
            .unwrap_or_default();
        if want_section != actual {
            if bless {
                std::fs::write(path, format!("{}{actual}", case.header)).unwrap();
            } else {
                failures.push(format!("report differs from the snapshot\n--- expected\n{want_section}\n--- actual\n{actual}"));
            }
        }
        if !failures.is_empty() {
            failed.push(format!("case {}:\n{}", case.name, failures.join("\n")));
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} cases failed:\n\n{}",
        failed.len(),
        cases.len(),
        failed.join("\n\n")
    );
}
