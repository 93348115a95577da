//! What the command-line tools (mount.rgfs, mkfs.rgfs, fsck.rgfs) share:
//! standard output that survives a closed pipe ([`out`]) and mount.rgfs's
//! logging set-up, to stderr or syslog ([`log`]).

pub mod log;
pub mod out;

/// Parses the process's arguments for `tool`, or exits: 0 after `--help`
/// or `--version` (printed to stdout, which may be a closed pipe), else
/// `usage_exit` with one line `TOOL: what is wrong (HINT)` on stderr.
pub fn parse_or_exit<T: clap::Parser>(tool: &str, usage_exit: i32, hint: &str) -> T {
    T::try_parse().unwrap_or_else(|e| {
        if !e.use_stderr() {
            let _ = e.print();
            std::process::exit(0);
        }
        eprintln!("{tool}: {} ({hint})", usage_error(&e));
        std::process::exit(usage_exit)
    })
}

/// mount(8)'s and umount(8)'s `-N NS`, which they pass on to helpers: joins
/// the mount namespace of process NS, or the one the file NS names. Must
/// run while the process has one thread (setns refuses a mount namespace
/// change otherwise). The error starts with NS.
pub fn enter_mount_namespace(ns: &str) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    let path = if !ns.is_empty() && ns.bytes().all(|b| b.is_ascii_digit()) { format!("/proc/{ns}/ns/mnt") } else { ns.into() };
    let file = std::fs::File::open(&path).map_err(|e| format!("{ns}: {path}: {e}"))?;
    // SAFETY: a valid open fd; setns has no memory effects.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNS) } != 0 {
        return Err(format!("{ns}: cannot enter the mount namespace: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// A clap usage error as one line, for `TOOL: LINE`: clap's message
/// without its "error: " prefix and usage footer, and with the list that
/// follows "the following required arguments were not provided:" (the
/// missing `<DEVICE>`) kept on the same line.
pub fn usage_error(e: &clap::Error) -> String {
    let text = e.to_string();
    let head: Vec<&str> = text.lines().take_while(|l| !l.trim().is_empty()).map(str::trim).collect();
    let line = head.join(" ");
    let line = line.strip_prefix("error: ").unwrap_or(&line);
    if line.is_empty() {
        "invalid arguments".to_string()
    } else {
        line.to_string()
    }
}
