//! Which mode repairs a journal whose sequence numbers are out of order (a
//! double mount): preen rewrites it when every possible head is an unmount
//! header (nothing to replay, nothing lost), and leaves it, exit 4, when one
//! is not. The damage is the catalog's (`lh-06`, `lh-09`); the catalog runs
//! `-n` and `-y` on it.

mod support;

use rgfs_block::MemDevice;
use rgfs_fsck::{ExitCode, Mode};
use support::*;

/// Both writers after head 2047 (sequence 3047) of a renumbered journal0.
const EARLIER_WRITER: &[&str] = &[
    "journal 0 renumber 1000",
    "journal 0 commit 0 3048 inode:/docs/small.txt",
    "journal 0 commit 3 3049 inode:/docs",
];

fn damaged(later_writer: &[&str]) -> MemDevice {
    let dev = MemDevice::from_bytes(base_image().clone());
    for c in EARLIER_WRITER.iter().chain(later_writer) {
        corrupt(&dev, c);
    }
    dev
}

#[test]
fn preen_rewrites_a_double_mounted_journal_only_when_both_unmounted() {
    if !have_gfs2_utils() {
        return;
    }
    // Both unmounted: the earlier writer's unmount header, then the later
    // one's commits and unmount header over the start of them.
    let dev = damaged(&[
        "journal 0 unmount 6 3050",
        "journal 0 flush 0 3048",
        "journal 0 flush 1 3049",
        "journal 0 flush 2 3050",
        "journal 0 unmount 3 3051",
    ]);
    let run = fsck_dev(&dev, Mode::Preen);
    assert_eq!(run.exit, ExitCode::Corrected, "{}", run.report);
    assert!(
        run.report
            .contains("out of order: journal block 5 has sequence 3049 after 3051 at block 3"),
        "{}",
        run.report
    );
    assert_eq!(fsck_dev(&dev, Mode::No).exit, ExitCode::Clean);

    // The later writer did not unmount: its last header may be the head of
    // a history with something to replay. Preen changes nothing.
    let dev = damaged(&[
        "journal 0 unmount 6 3050",
        "journal 0 flush 0 3048",
        "journal 0 flush 1 3049",
        "journal 0 flush 2 3050",
        "journal 0 flush 3 3051",
    ]);
    let before = dev.snapshot();
    let run = fsck_dev(&dev, Mode::Preen);
    assert_eq!(run.exit, ExitCode::Uncorrected, "{}", run.report);
    assert!(
        run.report
            .contains("(two writers, or headers of an older log): not fixed"),
        "{}",
        run.report
    );
    assert!(!run.report.contains("replayed"), "{}", run.report);
    assert!(dev.snapshot() == before, "preen changed the image");
}
