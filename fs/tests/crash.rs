//! Crash consistency: a seeded workload runs on a RecordingDevice; crash
//! images are taken at every flush (durable state) and at random points
//! inside the unflushed tail (writes lost, reordered, torn at 512-byte
//! sectors). Each image is mounted (the journal replays), checked — every
//! file and directory fsynced and not touched since must be exactly as at
//! its fsync — unmounted cleanly, and given to fsck.gfs2 -n, which must be
//! silent.
//!
//! RGFS_CRASH_CASES=N checks N crash states (default 160); RGFS_SEED fixes
//! the seed (printed on every run).

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use rgfs::core::FsCore;
use rgfs::format::consts::s_if;
use rgfs::ops::{Creds, SetAttr};
use rgfs_block::{BlockDevice, MemDevice, RecordingDevice, Rng};

#[derive(Clone, Debug)]
enum Expect {
    File { path: String, content: Vec<u8> },
    Dir { path: String, names: Vec<String> },
}

/// An fsync and what it promised.
#[derive(Clone, Debug)]
struct Promise {
    expect: Expect,
    /// Workload step of the fsync.
    step: usize,
    /// Device operations done when the fsync returned.
    ops_done: usize,
}

struct Trace {
    promises: Vec<Promise>,
    /// Device operations done at the end of each step.
    step_end: Vec<usize>,
    /// For each path: the steps that modified it.
    modified: BTreeMap<String, Vec<usize>>,
}

const DIRS: [&str; 2] = ["d0", "d1"];

fn names_of(fs: &mut FsCore, dir: &str) -> Vec<String> {
    let a = fs.resolve(dir).unwrap();
    let mut v: Vec<String> = fs
        .readdir(a)
        .unwrap()
        .into_iter()
        .map(|e| String::from_utf8(e.name).unwrap())
        .filter(|n| n != "." && n != "..")
        .collect();
    v.sort();
    v
}

fn workload(fs: &mut FsCore, dev: &RecordingDevice, rng: &mut Rng, steps: usize) -> Trace {
    let creds = Creds::default();
    let mut t = Trace { promises: vec![], step_end: vec![], modified: BTreeMap::new() };
    let root = fs.sys.root;
    for d in DIRS {
        fs.create(root, d.as_bytes(), s_if::DIR | 0o755, 0, creds, None).unwrap();
    }
    fs.sync().unwrap();
    t.step_end.push(dev.ops());
    let touch = |t: &mut Trace, p: &str, step: usize| t.modified.entry(p.to_string()).or_default().push(step);
    for step in 1..steps {
        let d = DIRS[rng.below(2) as usize];
        let f = format!("{d}/f{}", rng.below(6));
        let fname = f.rsplit('/').next().unwrap().to_string();
        let da = fs.resolve(d).unwrap();
        let exists = fs.resolve(&f).ok();
        match rng.below(10) {
            0 | 1 => {
                if exists.is_none() {
                    fs.create(da, fname.as_bytes(), s_if::REG | 0o644, 0, creds, None).unwrap();
                    touch(&mut t, &f, step);
                    touch(&mut t, d, step);
                }
            }
            2..=4 => {
                if let Some(a) = exists {
                    let off = [0, 100, 4000, 70_000, 2_000_000][rng.below(5) as usize] + rng.below(5000);
                    let len = [10, 3000, 5000, 40_000][rng.below(4) as usize] as usize;
                    let byte = rng.below(255) as u8 + 1;
                    fs.write(a, off, &vec![byte; len], false, false).unwrap();
                    touch(&mut t, &f, step);
                }
            }
            5 => {
                if let Some(a) = exists {
                    let size = [0, 10, 3864, 5000, 100_000][rng.below(5) as usize];
                    fs.setattr(a, SetAttr { size: Some(size), ..Default::default() }).unwrap();
                    touch(&mut t, &f, step);
                }
            }
            6 => {
                if exists.is_some() {
                    let to = format!("f{}", rng.below(6));
                    let _ = fs.rename(da, fname.as_bytes(), da, to.as_bytes(), 0);
                    touch(&mut t, &f, step);
                    touch(&mut t, &format!("{d}/{to}"), step);
                    touch(&mut t, d, step);
                }
            }
            7 => {
                if exists.is_some() {
                    fs.remove(da, fname.as_bytes(), false).unwrap();
                    touch(&mut t, &f, step);
                    touch(&mut t, d, step);
                }
            }
            8 => {
                if let Some(a) = exists {
                    fs.sync().unwrap();
                    let size = fs.getattr(a).unwrap().size as usize;
                    let content = fs.read(a, 0, size).unwrap();
                    t.promises.push(Promise { expect: Expect::File { path: f.clone(), content }, step, ops_done: dev.ops() });
                }
            }
            _ => {
                fs.sync().unwrap();
                let names = names_of(fs, d);
                t.promises.push(Promise { expect: Expect::Dir { path: d.to_string(), names }, step, ops_done: dev.ops() });
            }
        }
        t.step_end.push(dev.ops());
    }
    t
}

/// Checks one crash image; Err describes what broke.
fn check(image: Vec<u8>, trace: &Trace, at: usize) -> Result<usize, String> {
    let dev = Arc::new(MemDevice::from_bytes(image));
    let (mut fs, _) = rgfs::mount::mount(dev.clone(), &Default::default()).map_err(|e| format!("mount: {e}"))?;
    // The step during which the crash happened.
    let crash_step = trace.step_end.partition_point(|&e| e < at);
    let mut checked = 0;
    for p in trace.promises.iter().filter(|p| p.ops_done <= at) {
        let path = match &p.expect {
            Expect::File { path, .. } | Expect::Dir { path, .. } => path,
        };
        let later = trace.modified.get(path).is_some_and(|m| m.iter().any(|&s| s > p.step && s <= crash_step));
        // Only the latest promise for a path counts.
        let newer = trace.promises.iter().any(|q| {
            q.ops_done <= at && q.step > p.step && matches!((&q.expect, &p.expect), (Expect::File { path: a, .. }, Expect::File { path: b, .. }) | (Expect::Dir { path: a, .. }, Expect::Dir { path: b, .. }) if a == b)
        });
        if later || newer {
            continue;
        }
        match &p.expect {
            Expect::File { path, content } => {
                let a = fs.resolve(path).map_err(|e| format!("fsynced {path} missing: {e}"))?;
                let size = fs.getattr(a).map_err(|e| e.to_string())?.size as usize;
                let got = fs.read(a, 0, size).map_err(|e| e.to_string())?;
                if &got != content {
                    return Err(format!("fsynced {path}: {} bytes, expected {} (fsync at step {}, crash in step {crash_step})", got.len(), content.len(), p.step));
                }
            }
            Expect::Dir { path, names } => {
                let got = names_of(&mut fs, path);
                if &got != names {
                    return Err(format!("fsynced dir {path}: {got:?}, expected {names:?}"));
                }
            }
        }
        checked += 1;
    }
    fs.shutdown().map_err(|e| format!("unmount: {e}"))?;
    drop(fs);
    common::fsck(&dev.snapshot())?;
    Ok(checked)
}

#[test]
fn every_crash_state_replays_to_a_consistent_image() {
    require_gfs2_utils!();
    let seed = common::seed("crash suite");
    let cases: usize = std::env::var("RGFS_CRASH_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(160);
    let image = common::mkfs_image(24, 4096, 1);
    let mut rng = Rng::new(seed);
    let mut total = 0usize;
    let mut promises_checked = 0usize;
    let mut round = 0u64;
    while total < cases {
        let dev = Arc::new(RecordingDevice::new(image.clone()));
        let (mut fs, _) = rgfs::mount::mount(dev.clone() as Arc<dyn BlockDevice>, &Default::default()).expect("mount");
        let t = workload(&mut fs, &dev, &mut rng, 120);
        drop(fs);
        let flushes = dev.flush_points();
        let mut points: Vec<(usize, bool)> = Vec::new();
        // Every flush boundary (durable state only) ...
        let per_round = (cases - total).min(80);
        let stride = (flushes.len() / (per_round / 2).max(1)).max(1);
        for &f in flushes.iter().step_by(stride) {
            points.push((f + 1, false));
        }
        // ... and random points inside unflushed tails.
        while points.len() < per_round {
            points.push((rng.below(dev.ops() as u64) as usize + 1, true));
        }
        for (at, torn) in points {
            let img = if torn { dev.crash_image(at, Some(&mut rng)) } else { dev.crash_image(at, None) };
            match check(img, &t, at) {
                Ok(n) => promises_checked += n,
                Err(e) => panic!("seed {seed} round {round}: crash after op {at} (torn tail: {torn}): {e}"),
            }
            total += 1;
        }
        round += 1;
    }
    eprintln!("crash suite: {total} crash states, {promises_checked} fsync promises verified");
    assert!(promises_checked > 0, "the workload made no verifiable fsync promise");
}

#[test]
fn an_unlinked_open_file_is_freed_at_the_next_mount_after_a_crash() {
    require_gfs2_utils!();
    let dev = Arc::new(RecordingDevice::new(common::mkfs_image(24, 4096, 1)));
    let (mut fs, _) = rgfs::mount::mount(dev.clone() as Arc<dyn BlockDevice>, &Default::default()).unwrap();
    let root = fs.sys.root;
    let free_before = fs.statfs().bfree;
    let a = fs.create(root, b"held", s_if::REG | 0o644, 0, Creds::default(), None).unwrap().ino;
    fs.write(a, 0, &vec![5u8; 300_000], false, false).unwrap();
    fs.add_ref(a, 0, 1).unwrap(); // open
    fs.remove(root, b"held", false).unwrap();
    // Still readable while open; the dinode is UNLINKED, not free.
    assert_eq!(fs.read(a, 0, 10).unwrap(), vec![5u8; 10]);
    assert_eq!(fs.alloc.state(a), Some(rgfs::format::BlockState::Unlinked));
    fs.sync().unwrap();
    // Crash with the file still open.
    let img = dev.crash_image(dev.ops(), None);
    drop(fs);
    let mdev = Arc::new(MemDevice::from_bytes(img));
    let (mut fs, report) = rgfs::mount::mount(mdev.clone(), &Default::default()).unwrap();
    assert_eq!(report.orphans_freed, 1);
    assert_eq!(fs.alloc.state(a), Some(rgfs::format::BlockState::Free));
    assert_eq!(fs.statfs().bfree, free_before, "every block of the orphan came back");
    fs.shutdown().unwrap();
    drop(fs);
    common::fsck(&mdev.snapshot()).unwrap();
}

/// Ordered mode at ENOSPC: a large write that runs out of space while
/// frees wait for a durable commit commits in the middle of the write.
/// That commit must not log pointers to blocks whose (deferred) data is
/// not on the device yet: at every flush, the file's bytes are the new
/// ones or zeros, never a deleted file's old contents.
#[test]
fn a_commit_forced_by_enospc_inside_a_write_never_exposes_stale_blocks() {
    require_gfs2_utils!();
    let dev = Arc::new(RecordingDevice::new(common::mkfs_image(24, 4096, 1)));
    let (mut fs, _) = rgfs::mount::mount(dev.clone() as Arc<dyn BlockDevice>, &Default::default()).unwrap();
    let root = fs.sys.root;
    let creds = Creds::default();
    let mk = |fs: &mut FsCore, name: &str| fs.create(root, name.as_bytes(), s_if::REG | 0o644, 0, creds, None).unwrap().ino;
    // `small` will be truly free space (deleted and synced), `old` the
    // stale contents (deleted, frees not yet durable).
    let target = mk(&mut fs, "target");
    let small = mk(&mut fs, "small");
    fs.write(small, 0, &vec![0x5a; 2 << 20], false, false).unwrap();
    let old = mk(&mut fs, "old");
    let chunk = vec![0xaa; 1 << 20];
    let mut off = 0u64;
    while fs.write(old, off, &chunk, false, false).is_ok() {
        off += chunk.len() as u64;
    }
    let size = 6u64 << 20;
    fs.setattr(target, SetAttr { size: Some(size), ..Default::default() }).unwrap();
    fs.remove(root, b"small", false).unwrap();
    fs.sync().unwrap();
    let synced = dev.ops();
    fs.remove(root, b"old", false).unwrap();
    assert!(fs.alloc.has_pending_frees(), "the test needs frees waiting for a commit");
    let commits_before = dev.flush_points().len();
    fs.write(target, 0, &vec![0xbb; size as usize], false, false).expect("the write reuses the deleted file's blocks");
    assert!(dev.flush_points().len() > commits_before, "the write had to commit to reuse the frees");
    fs.sync().unwrap();
    drop(fs);
    let mut states = 0;
    for at in dev.flush_points().into_iter().filter(|&f| f >= synced).map(|f| f + 1) {
        let mdev = Arc::new(MemDevice::from_bytes(dev.crash_image(at, None)));
        let (mut fs, _) = rgfs::mount::mount(mdev.clone(), &Default::default()).unwrap();
        let a = fs.resolve("target").unwrap();
        let got = fs.read(a, 0, size as usize).unwrap();
        assert_eq!(got.len() as u64, size);
        if let Some(i) = got.iter().position(|&b| b != 0 && b != 0xbb) {
            panic!("crash after op {at}: target byte {i} is {:#x}: a block was committed before its data", got[i]);
        }
        fs.shutdown().unwrap();
        drop(fs);
        common::fsck(&mdev.snapshot()).unwrap();
        states += 1;
    }
    assert!(states >= 2);
}
