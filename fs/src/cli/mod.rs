//! What the command-line tools (mount.rgfs, mkfs.rgfs, fsck.rgfs) share:
//! standard output that survives a closed pipe ([`out`]) and mount.rgfs's
//! logging set-up, to stderr or syslog ([`log`]).

pub mod log;
pub mod out;

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
