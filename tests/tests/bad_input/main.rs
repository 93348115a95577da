//! Every binary (mount.rgfs, mkfs.rgfs, fsck.rgfs, rgfs-dlmd, rgfs-dlm) over bad arguments and
//! inputs: a table of known cases (`table.rs`, one row each, expectations on the row) and random
//! argument vectors drawn from each tool's flags and bad values (`grammar.rs`). Every run must end
//! within a bounded time, never panic (exit 101) or die of a signal, say what is wrong in a short
//! message (the first line, no panic or backtrace text, no terminal escapes), and change nothing on
//! disk unless it succeeded at something that writes. Runs use fresh scratch files, listeners on
//! 127.0.0.1 that are not lock daemons, and one real rgfs-dlmd.

mod grammar;
mod harness;
mod table;
mod world;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};

use harness::{general_problems, row_problems, run, shown, summary, Bin, Outcome};
use world::World;

/// Rows run at once: most runs wait (for a peer, or to be declared hung), few use a CPU.
const PARALLEL_ROWS: usize = 8;
/// Random argument vectors per binary.
const RANDOM_CASES: u32 = 128;

/// A run and its problems.
type Checked = (Outcome, Vec<String>);

#[test]
fn every_row_of_the_table() {
    let mut world = World::new(true);
    let rows = table::ROWS;
    let mut names: Vec<&str> = rows.iter().map(|r| r.name).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), rows.len(), "row names must be unique");

    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Checked>>> = Mutex::new((0..rows.len()).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..PARALLEL_ROWS {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(row) = rows.get(i) else { return };
                let args: Vec<String> = row.args.split_whitespace().map(str::to_string).collect();
                let outcome = run(&world, row.bin, &args, row.stdin, row.stdout_closed);
                let problems = row_problems(row, &outcome);
                results.lock().unwrap()[i] = Some((outcome, problems));
            });
        }
    });

    let mut failed = Vec::new();
    for (row, result) in rows.iter().zip(results.into_inner().unwrap()) {
        let (outcome, problems) = result.expect("every row ran");
        if !problems.is_empty() {
            eprintln!(
                "FAIL {}: {} {}\n    problems: {}\n    got: {}",
                row.name,
                row.bin.name(),
                shown(&outcome.argv),
                problems.join("; "),
                summary(&outcome)
            );
            failed.push(row.name);
        }
    }
    // Bad clients never take the daemon down.
    assert!(world.daemons_alive(), "an rgfs-dlmd died during the table:\n{}", world.daemon_logs());
    assert!(!world.daemon_logs().contains("panicked"), "an rgfs-dlmd panicked:\n{}", world.daemon_logs());
    assert!(failed.is_empty(), "{} of {} rows failed (details above): {}", failed.len(), rows.len(), failed.join(" "));
}

/// The problems of a random run: those of every run, a message when it failed, and no change to
/// files it had no business changing.
fn random_problems(bin: Bin, o: &Outcome) -> Vec<String> {
    let mut p = general_problems(o);
    let code = o.status.and_then(|s| s.code());
    // fsck.rgfs reports what it found on stdout (as fsck.gfs2 does), the other tools on stderr.
    let message = if bin == Bin::Fsck { format!("{}{}", o.stdout, o.stderr) } else { o.stderr.clone() };
    if code.is_some_and(|c| c != 0) && message.trim().is_empty() {
        p.push("failed without a message".into());
    }
    for f in &o.changed {
        if grammar::never_written(bin).contains(&f.as_str()) || !grammar::may_write(bin, &o.argv, code) {
            p.push(format!("changed {f}"));
        }
    }
    p
}

fn random_arguments(bin: Bin) {
    let world = World::new(false);
    let config = Config { cases: RANDOM_CASES, max_shrink_iters: 32, failure_persistence: None, ..Config::default() };
    let rng = TestRng::deterministic_rng(RngAlgorithm::ChaCha);
    let mut runner = TestRunner::new_with_rng(config, rng);
    let result = runner.run(&grammar::argv(bin), |args| {
        let o = run(&world, bin, &args, None, false);
        let problems = random_problems(bin, &o);
        if std::env::var_os("BAD_INPUT_TRACE").is_some() {
            eprintln!("{} {}: {}", bin.name(), shown(&o.argv), summary(&o));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(TestCaseError::fail(format!("{}: {}; got {}", shown(&o.argv), problems.join("; "), summary(&o))))
        }
    });
    if let Err(e) = result {
        panic!("{} over random arguments: {e}", bin.name());
    }
}

#[test]
fn mount_over_random_arguments() {
    random_arguments(Bin::Mount);
}

#[test]
fn mkfs_over_random_arguments() {
    random_arguments(Bin::Mkfs);
}

#[test]
fn fsck_over_random_arguments() {
    random_arguments(Bin::Fsck);
}

#[test]
fn dlmd_over_random_arguments() {
    random_arguments(Bin::Dlmd);
}

#[test]
fn dlm_over_random_arguments() {
    random_arguments(Bin::Dlm);
}
