//! The external oracles, shared by every test crate (the other crates'
//! integration tests include this file by path): whether a tool exists, what
//! a test does when one is missing, and `fsck.gfs2 -n` treating any
//! complaint as a failure.

use std::path::Path;
use std::process::Command;

/// Whether a program is on PATH.
pub fn have(prog: &str) -> bool {
    Command::new("sh").arg("-c").arg(format!("command -v {prog}")).output().map(|o| o.status.success()).unwrap_or(false)
}

/// Set (to anything but `0`) by `.ci/run`: a missing oracle or FUSE fails
/// the test instead of skipping it, so a CI machine that lacks one cannot
/// pass by running nothing. `CI=true` (what CI runners set) does the same.
pub const REQUIRE_ORACLES: &str = "RGFS_REQUIRE_ORACLES";

/// Whether a missing oracle fails the test (in CI) rather than skipping it.
pub fn oracles_required() -> bool {
    std::env::var(REQUIRE_ORACLES).is_ok_and(|v| v != "0") || std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Called by a test that cannot run because `what` is missing: skips it
/// with a notice on a developer's machine, panics in CI.
pub fn missing(what: &str) {
    if oracles_required() {
        panic!("{what} missing, and this is CI ({REQUIRE_ORACLES} or CI=true): install it (.ci/run does)");
    }
    eprintln!("SKIPPED: {what} missing");
}

/// Whether `prog` is on PATH; when it is not, [`missing`] decides between
/// skipping and failing. For a test's "can I run?" condition.
pub fn require(prog: &str) -> bool {
    let ok = have(prog);
    if !ok {
        missing(prog);
    }
    ok
}

/// Runs `fsck.gfs2 -n`; Err(output) on a non-zero exit or any line that
/// complains (fsck -n reports a dirty journal with exit 0).
pub fn fsck(path: &Path) -> Result<(), String> {
    let out = Command::new("fsck.gfs2").arg("-n").arg(path).output().expect("run fsck.gfs2");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let complaint = text.lines().any(|l| {
        let l = l.to_lowercase();
        l.contains("error") || l.contains("dirty") || l.contains("inconsistent") || l.contains("not fixed")
            || l.contains("does not match") || l.contains("bad ") || l.contains("invalid")
    });
    if out.status.code() != Some(0) || complaint {
        return Err(format!("fsck.gfs2 -n exit {:?}:\n{text}", out.status.code()));
    }
    Ok(())
}
