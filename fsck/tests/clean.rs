//! fsck.rgfs calls fresh and populated volumes clean, and leaves a clean
//! volume byte for byte as it was even in repair mode (the `fsck_` lock
//! protocol guard is undone). The populator's images pass `fsck.gfs2 -n`.
//! Also: preen makes only safe repairs, and the binary's exit codes.

mod support;

use std::process::Command;

use rgfs_block::{Access, FileDevice};
use rgfs_fsck::populate::{pattern, standard_content, FileSpec, Populator};
use rgfs_fsck::{ExitCode, Mode};
use support::*;

fn assert_clean_everywhere(path: &std::path::Path, what: &str) {
    let (code, out) = fsck_gfs2(path, "-n");
    assert_eq!(code, 0, "{what}: fsck.gfs2 -n exits {code}:\n{out}");
    let run = fsck_rgfs(path, Mode::No);
    assert_eq!(
        run.exit,
        ExitCode::Clean,
        "{what}: fsck.rgfs -n:\n{}",
        run.report
    );
    assert_eq!(
        run.report, "fsck.rgfs: 0 problems found, 0 fixed, 0 left\n",
        "{what}"
    );
    let before = std::fs::read(path).unwrap();
    let run = fsck_rgfs(path, Mode::Yes);
    assert_eq!(
        run.exit,
        ExitCode::Clean,
        "{what}: fsck.rgfs -y:\n{}",
        run.report
    );
    assert!(
        std::fs::read(path).unwrap() == before,
        "{what}: fsck.rgfs -y changed a clean volume"
    );
}

#[test]
fn fresh_mkfs_gfs2_volumes_are_clean() {
    if !have_gfs2_utils() {
        return;
    }
    let variants: &[(&str, &[&str])] = &[
        ("4k", &[]),
        ("2k", &["-b", "2048"]),
        ("1k", &["-b", "1024"]),
        ("512", &["-b", "512"]),
        ("nolock-3-journals", &["-p", "lock_nolock", "-j", "3"]),
        ("format-1801", &["-o", "format=1801"]),
        ("big-rgrps", &["-r", "256"]),
    ];
    for (name, extra) in variants {
        let path = case_path(&format!("fresh-{name}"));
        // Later options win with mkfs.gfs2's getopt, so extras override.
        mkfs_gfs2(&path, 300 << 20, extra);
        assert_clean_everywhere(&path, name);
        let _ = std::fs::remove_file(&path);
    }
}

#[test]
fn populated_volumes_are_clean() {
    if !have_gfs2_utils() {
        return;
    }
    for (name, extra) in [("4k", &[][..]), ("1k", &["-b", "1024"][..])] {
        let path = case_path(&format!("populated-{name}"));
        mkfs_gfs2(&path, 300 << 20, extra);
        {
            let dev = FileDevice::open(&path, Access::ReadWrite).unwrap();
            let mut p = Populator::open(&dev).unwrap();
            standard_content(&mut p).unwrap();
            p.finish().unwrap();
        }
        assert_clean_everywhere(&path, &format!("standard content, {name}"));
        let _ = std::fs::remove_file(&path);
    }
}

/// With 1 KiB blocks the hash table outgrows the dinode after a few
/// hundred entries: the table moves into directory data blocks (height 1)
/// and doubles, as the kernel does it.
#[test]
fn a_directory_whose_hash_table_lives_in_data_blocks() {
    if !have_gfs2_utils() {
        return;
    }
    let path = case_path("big-directory-1k");
    mkfs_gfs2(&path, 300 << 20, &["-b", "1024"]);
    let dir;
    {
        let dev = FileDevice::open(&path, Access::ReadWrite).unwrap();
        let mut p = Populator::open(&dev).unwrap();
        dir = p.mkdir(p.root(), "many").unwrap();
        for i in 0..3000u64 {
            let data = pattern(i, (i as usize * 7) % 900);
            p.create_file(
                dir,
                &format!("entry-with-a-longer-name-{i:05}"),
                &FileSpec {
                    data: &data,
                    sparse: false,
                    mode: 0o644,
                },
            )
            .unwrap();
        }
        p.finish().unwrap();
        let block = p_read(&dev, dir);
        let d = <rgfs::format::Dinode as rgfs::format::OnDisk>::decode(&block).unwrap();
        assert!(
            d.height >= 1 && d.depth > 7,
            "table not in data blocks: height {}, depth {}",
            d.height,
            d.depth
        );
    }
    assert_clean_everywhere(&path, "3000 entries, 1k blocks");
    let _ = std::fs::remove_file(&path);
}

fn p_read(dev: &FileDevice, block: u64) -> Vec<u8> {
    use rgfs_block::BlockDevice;
    let mut buf = vec![0u8; 1024];
    dev.read_at(block * 1024, &mut buf).unwrap();
    buf
}

#[test]
fn preen_makes_only_safe_repairs() {
    if !have_gfs2_utils() {
        return;
    }
    // A count is safe to fix: preen fixes it.
    let path = case_path("preen-safe");
    write_sparse(&path, base_image());
    corrupt_file(&path, "rgrp 2 rg_free 1234 +crc");
    let run = fsck_rgfs(&path, Mode::Preen);
    assert_eq!(run.exit, ExitCode::Corrected, "{}", run.report);
    assert_eq!(fsck_rgfs(&path, Mode::No).exit, ExitCode::Clean);
    // Removing an entry is not: preen leaves it, fixes the rest, exits 4.
    write_sparse(&path, base_image());
    corrupt_file(&path, "dirent /a/b/c deep.txt target 40000");
    corrupt_file(&path, "statfs free 12");
    let run = fsck_rgfs(&path, Mode::Preen);
    assert_eq!(run.exit, ExitCode::Uncorrected, "{}", run.report);
    assert!(
        run.report.contains("entry removed: not fixed"),
        "{}",
        run.report
    );
    assert!(run.report.contains("statfs: totals are"), "{}", run.report);
    let run = fsck_rgfs(&path, Mode::No);
    assert!(
        !run.report.contains("statfs"),
        "preen did not fix statfs:\n{}",
        run.report
    );
    let _ = std::fs::remove_file(&path);
}

#[test]
fn binary_exit_codes() {
    let bin = env!("CARGO_BIN_EXE_fsck-rgfs");
    let code = |args: &[&str]| {
        Command::new(bin)
            .args(args)
            .output()
            .unwrap()
            .status
            .code()
            .unwrap()
    };
    assert_eq!(code(&[]), 16, "no device");
    assert_eq!(code(&["-n", "-y", "/dev/null"]), 16, "-n and -y");
    assert_eq!(code(&["-x", "img"]), 16, "unknown flag");
    assert_eq!(code(&["--help"]), 0);
    assert_eq!(code(&["-n", "/nonexistent/image"]), 8, "missing device");
    let tiny = case_path("tiny");
    std::fs::write(&tiny, vec![0u8; 10_000]).unwrap();
    assert_eq!(
        code(&["-n", tiny.to_str().unwrap()]),
        8,
        "too small for a superblock"
    );
    let zeros = case_path("zeros");
    std::fs::File::create(&zeros)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    assert_eq!(
        code(&["-y", zeros.to_str().unwrap()]),
        8,
        "no superblock and no resource group"
    );
    if have_gfs2_utils() {
        let img = case_path("binary-clean");
        write_sparse(&img, base_image());
        let out = Command::new(bin)
            .args(["-n", img.to_str().unwrap()])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "fsck.rgfs: 0 problems found, 0 fixed, 0 left\n"
        );
        corrupt_file(&img, "inode /h1 di_nlink 7");
        assert_eq!(code(&["-n", img.to_str().unwrap()]), 4);
        assert_eq!(code(&["-y", img.to_str().unwrap()]), 1);
        assert_eq!(code(&["-p", img.to_str().unwrap()]), 0);
        let _ = std::fs::remove_file(&img);
    }
}

/// Volumes made by mkfs.rgfs (the library behind `mkfs.rgfs`), empty and
/// populated, are clean for fsck.rgfs, and for fsck.gfs2 when installed.
#[test]
fn mkfs_rgfs_volumes_are_clean() {
    use rgfs_block::MemDevice;
    use rgfs_mkfs::{make_filesystem, LockProto, MkfsOptions};
    let variants: Vec<(&str, MkfsOptions)> = vec![
        ("nolock-4k", MkfsOptions::nolock()),
        (
            "dlm-2-journals",
            MkfsOptions {
                journals: 2,
                lock_proto: LockProto::Dlm,
                lock_table: Some("rgfs:test".into()),
                ..Default::default()
            },
        ),
        (
            "nolock-1k-3-journals",
            MkfsOptions {
                block_size: 1024,
                journals: 3,
                ..MkfsOptions::nolock()
            },
        ),
        (
            "nolock-512",
            MkfsOptions {
                block_size: 512,
                ..MkfsOptions::nolock()
            },
        ),
    ];
    for (name, opts) in variants {
        let dev = MemDevice::new(300 << 20);
        make_filesystem(&dev, &opts).unwrap_or_else(|e| panic!("{name}: mkfs.rgfs: {e}"));
        let run = fsck_dev(&dev, Mode::No);
        assert_eq!(
            run.exit,
            ExitCode::Clean,
            "{name}: fresh mkfs.rgfs volume:\n{}",
            run.report
        );
        let mut p = Populator::open(&dev).unwrap();
        standard_content(&mut p).unwrap();
        p.finish().unwrap();
        let run = fsck_dev(&dev, Mode::No);
        assert_eq!(
            run.exit,
            ExitCode::Clean,
            "{name}: populated mkfs.rgfs volume:\n{}",
            run.report
        );
        if have_gfs2_utils() {
            let path = case_path(&format!("mkfs-rgfs-{name}"));
            write_sparse(&path, &dev.snapshot());
            let (code, out) = fsck_gfs2(&path, "-n");
            assert_eq!(
                code, 0,
                "{name}: fsck.gfs2 -n on a populated mkfs.rgfs volume:\n{out}"
            );
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// Interactive mode: each repair is asked; "n" leaves it (exit 4, nothing
/// changed), "y" makes it, "a" makes it and every later one without
/// asking, "q" leaves it and every later one.
#[test]
fn ask_mode_repairs_what_the_user_accepts() {
    use rgfs_fsck::{check_asking, Answer, Options};
    use std::sync::{Arc, Mutex};
    if !have_gfs2_utils() {
        return;
    }
    let path = case_path("ask");
    let damage = |path: &std::path::Path| {
        write_sparse(path, base_image());
        corrupt_file(path, "inode /h1 di_nlink 7");
        corrupt_file(path, "statfs free 12");
    };
    // Runs fsck.rgfs in Ask mode answering from `answers` in turn; returns
    // the exit code and the questions asked.
    let run = |path: &std::path::Path, answers: &[Answer]| {
        let asked = Arc::new(Mutex::new(Vec::<String>::new()));
        #[allow(clippy::unnecessary_to_owned)] // the asker must own its answers
        let mut rest = answers.to_vec().into_iter();
        let log = asked.clone();
        let ask = Box::new(move |q: &str| {
            log.lock().unwrap().push(q.to_string());
            rest.next().expect("asked more questions than scripted")
        });
        let dev = FileDevice::open(path, Access::ReadWrite).unwrap();
        let out = check_asking(&dev, &Options::new(Mode::Ask), None, Some(ask));
        let asked = asked.lock().unwrap().clone();
        (out.exit, out.report, asked)
    };

    damage(&path);
    let before = std::fs::read(&path).unwrap();
    let (exit, report, asked) = run(&path, &[Answer::No, Answer::No]);
    assert_eq!(exit, ExitCode::Uncorrected, "{report}");
    assert_eq!(asked.len(), 2, "{asked:?}");
    assert!(asked[0].contains("link count is 7"), "{asked:?}");
    assert!(asked[1].starts_with("statfs: totals are"), "{asked:?}");
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "'n' changed the image"
    );

    let (exit, report, _) = run(&path, &[Answer::Yes, Answer::No]);
    assert_eq!(exit, ExitCode::Uncorrected, "{report}");
    let left = fsck_rgfs(&path, Mode::No);
    assert!(!left.report.contains("link count"), "{}", left.report);
    assert!(left.report.contains("statfs"), "{}", left.report);

    damage(&path);
    let (exit, report, asked) = run(&path, &[Answer::All]);
    assert_eq!(exit, ExitCode::Corrected, "{report}");
    assert_eq!(asked.len(), 1, "'a' must answer the rest: {asked:?}");
    assert_eq!(fsck_rgfs(&path, Mode::No).exit, ExitCode::Clean);

    damage(&path);
    let (exit, _, asked) = run(&path, &[Answer::Never]);
    assert_eq!(exit, ExitCode::Uncorrected);
    assert_eq!(asked.len(), 1, "'q' must answer the rest: {asked:?}");
    assert_eq!(std::fs::read(&path).unwrap(), before);
    let _ = std::fs::remove_file(&path);
}

/// The binary asks when its input is a terminal (here a pty made by
/// script(1)), and only checks when it is not.
#[test]
fn binary_asks_on_a_terminal() {
    let bin = env!("CARGO_BIN_EXE_fsck-rgfs");
    let have_script = Command::new("script")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !have_gfs2_utils() || !have_script {
        return;
    }
    let img = case_path("binary-ask");
    write_sparse(&img, base_image());
    corrupt_file(&img, "inode /h1 di_nlink 7");
    let img_s = img.to_str().unwrap();
    // No terminal: checks only.
    let out = Command::new(bin)
        .arg(img_s)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&out.stderr).contains("checking only"));
    // On a pty: a wrong answer is asked again, then "y" repairs.
    let out = Command::new("script")
        .args(["-qec", &format!("{bin} {img_s}"), "/dev/null"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(b"maybe\ny\n")?;
            child.wait_with_output()
        })
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Fix? [y/n/a/q]"), "{text}");
    assert!(text.contains("answer y (fix)"), "{text}");
    assert!(
        text.contains("link count is 7, but 2 entries name it: fixed"),
        "{text}"
    );
    assert!(
        !text.contains("pass4 ["),
        "no progress bar while asking: {text}"
    );
    let out = Command::new(bin).args(["-n", img_s]).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let _ = std::fs::remove_file(&img);
}
