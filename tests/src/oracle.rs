//! The external oracles, shared by every test crate (the filesystem's own
//! integration tests include this file by path): whether a tool exists, and
//! `fsck.gfs2 -n` treating any complaint as a failure.

use std::path::Path;
use std::process::Command;

/// Whether a program is on PATH.
pub fn have(prog: &str) -> bool {
    Command::new("sh").arg("-c").arg(format!("command -v {prog}")).output().map(|o| o.status.success()).unwrap_or(false)
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
