//! fsck.rgfs never panics, whatever the device holds: random bytes, and
//! populated images with metadata blocks scrambled. Every run must end in
//! a report with an fsck(8) exit code. The seeds are printed; a failure
//! names the seed that reproduces it (`RGFS_SEED=...`).
//!
//! Covers: -n, -y and preen on each input, and a second -y after the
//! first. Does not cover: I/O errors from the device (the block layer's
//! tests do).

mod support;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rgfs_block::MemDevice;
use rgfs_fsck::{check, ExitCode, Mode, Options};

const VALID: [ExitCode; 4] = [
    ExitCode::Clean,
    ExitCode::Corrected,
    ExitCode::Uncorrected,
    ExitCode::Operational,
];

fn run_all_modes(bytes: Vec<u8>, what: &str) -> Vec<ExitCode> {
    run_all_modes_on(&MemDevice::from_bytes(bytes), what)
}

fn run_all_modes_on(dev: &MemDevice, what: &str) -> Vec<ExitCode> {
    let mut codes = Vec::new();
    for mode in [Mode::No, Mode::Preen, Mode::Yes, Mode::Yes, Mode::No] {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            check(dev, &Options::new(mode), None)
        }));
        match outcome {
            Ok(o) => {
                assert!(VALID.contains(&o.exit), "{what}: exit {:?}", o.exit);
                assert!(!o.report.is_empty(), "{what}: empty report");
                codes.push(o.exit);
            }
            Err(_) => panic!("{what}: fsck.rgfs panicked in {mode:?} mode"),
        }
    }
    codes
}

fn seeds(default: std::ops::Range<u64>) -> Vec<u64> {
    match std::env::var("RGFS_SEED").ok().and_then(|s| s.parse().ok()) {
        Some(s) => vec![s],
        None => default.collect(),
    }
}

#[test]
fn random_devices_get_a_report() {
    for seed in seeds(0..40) {
        let mut rng = StdRng::seed_from_u64(seed);
        let len = [4096usize, 70_000, 1 << 20, 4 << 20][seed as usize % 4];
        let mut bytes = vec![0u8; len];
        rng.fill(&mut bytes[..]);
        let codes = run_all_modes(bytes, &format!("random device, seed {seed}"));
        // Random bytes are no GFS2 volume: an operational error, not a crash.
        assert_eq!(codes[0], ExitCode::Operational, "seed {seed}");
    }
}

/// Scrambles `count` metadata blocks of the populated image: random
/// bytes over random fields (keeping the header half the time, so the
/// damage reaches the structure's own checks).
fn scramble(base: &[u8], seed: u64, count: usize) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut img = base.to_vec();
    // Log headers outnumber everything else; hit them only sometimes.
    let is_meta = |b: usize| img[b * 4096..b * 4096 + 4] == 0x0116_1970u32.to_be_bytes();
    let is_log = |b: usize| img[b * 4096 + 4..b * 4096 + 8] == 8u32.to_be_bytes();
    let meta: Vec<usize> = (0..img.len() / 4096)
        .filter(|&b| is_meta(b) && !is_log(b))
        .collect();
    let logs: Vec<usize> = (0..img.len() / 4096)
        .filter(|&b| is_meta(b) && is_log(b))
        .collect();
    for _ in 0..count {
        let pool = if rng.random_bool(0.9) { &meta } else { &logs };
        let b = pool[rng.random_range(0..pool.len())];
        let block = &mut img[b * 4096..(b + 1) * 4096];
        let keep_header = rng.random_bool(0.5);
        let from = if keep_header { 24 } else { 0 };
        for _ in 0..rng.random_range(1..16) {
            let at = rng.random_range(from..4096);
            let len = rng.random_range(1..=8).min(4096 - at);
            rng.fill(&mut block[at..at + len]);
        }
    }
    img
}

#[test]
fn scrambled_images_get_a_report() {
    if !support::have_gfs2_utils() {
        return;
    }
    let base = support::base_image();
    let mut repaired_clean = 0;
    let list = seeds(0..24);
    for &seed in &list {
        let count = 1 + (seed as usize % 6) * 4;
        let img = scramble(base, seed, count);
        eprintln!("scrambled image: seed {seed}, {count} blocks");
        let dev = MemDevice::from_bytes(img);
        let codes = run_all_modes_on(&dev, &format!("scrambled image, seed {seed}"));
        if codes[4] == ExitCode::Clean {
            repaired_clean += 1;
            // The oracle must agree with a clean verdict.
            let path = support::case_path(&format!("scrambled-{seed}"));
            support::write_sparse(&path, &dev.snapshot());
            let (code, out) = support::fsck_gfs2(&path, "-n");
            let _ = std::fs::remove_file(&path);
            assert_eq!(
                code, 0,
                "seed {seed}: fsck.rgfs says clean after repair, fsck.gfs2 -n exits {code}:\n{out}"
            );
        } else {
            eprintln!("seed {seed}: not clean after two repairs: {:?}", codes);
        }
    }
    eprintln!(
        "{repaired_clean} of {} scrambled images were clean after two fsck.rgfs -y runs",
        list.len()
    );
}

/// Debug helper: `RGFS_SEED=N cargo test --test robustness show_scrambled -- --ignored --nocapture`
/// prints the reports of one scrambled image.
#[test]
#[ignore]
fn show_scrambled() {
    let seed: u64 = std::env::var("RGFS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let count = 1 + (seed as usize % 6) * 4;
    let img = scramble(support::base_image(), seed, count);
    let dev = MemDevice::from_bytes(img);
    for mode in [Mode::Yes, Mode::Yes, Mode::No] {
        let o = check(&dev, &Options::new(mode), None);
        println!("==== {mode:?}: {:?}\n{}", o.exit, o.report);
    }
}
