//! Running one binary over one argument vector, and the checks every run
//! must pass: it ends (within [`HANG`]), neither panics (exit 101) nor dies
//! of a signal, says what is wrong in a short message without panic or
//! backtrace text, and changes no file it was not allowed to.

use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rgfs_tests::workspace_bin;

use crate::world::{fingerprints, mounts_under, unmount_all, World};

/// How long a run may take before it counts as hung (and is killed). Generous: every tool should end
/// far sooner, and a peer that never answers must be given up on well before.
pub const HANG: Duration = Duration::from_secs(30);

/// A first line longer than this is not a short message.
const MAX_LINE: usize = 240;
/// Stderr longer than this is not a short message.
const MAX_STDERR: usize = 2048;
/// Usage text may follow the first line up to this many lines in all (clap's usage errors take about 6).
const MAX_USAGE_LINES: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bin {
    Mount,
    Mkfs,
    Fsck,
    Dlmd,
    Dlm,
}

impl Bin {
    pub fn path(self) -> PathBuf {
        match self {
            Bin::Mount => workspace_bin("rgfs", "mount-rgfs"),
            Bin::Mkfs => workspace_bin("rgfs-mkfs", "mkfs-rgfs"),
            Bin::Fsck => workspace_bin("rgfs-fsck", "fsck-rgfs"),
            Bin::Dlmd => workspace_bin("rgfs-dlm", "rgfs-dlmd"),
            Bin::Dlm => workspace_bin("rgfs-dlm", "rgfs-dlm"),
        }
    }

    /// The installed name.
    pub fn name(self) -> &'static str {
        match self {
            Bin::Mount => "mount.rgfs",
            Bin::Mkfs => "mkfs.rgfs",
            Bin::Fsck => "fsck.rgfs",
            Bin::Dlmd => "rgfs-dlmd",
            Bin::Dlm => "rgfs-dlm",
        }
    }
}

/// The exit a row expects (exit 101 and signals are refused whatever this says).
#[derive(Clone, Copy, Debug)]
pub enum Exit {
    Ok,
    Code(i32),
    /// Any non-zero code.
    Fail,
    /// Any code.
    Any,
}

/// What stderr may hold.
#[derive(Clone, Copy, Debug)]
pub enum Msg {
    /// Exactly one non-empty line.
    Line,
    /// A first line that says what is wrong (not just "usage"), then usage text.
    Usage,
    /// Nothing at all.
    Quiet,
    /// A report of any length (fsck's findings); only the checks every run gets.
    Report,
}

/// One row of the table: a binary, its arguments (split on spaces; placeholders from
/// [`crate::world`]), its input and output, and everything expected of the run.
#[derive(Clone, Debug)]
pub struct Row {
    pub name: &'static str,
    pub bin: Bin,
    pub args: &'static str,
    pub stdin: Option<&'static [u8]>,
    /// Stdout is a pipe whose reader has already closed it (`| head -0`, `| true`).
    pub stdout_closed: bool,
    /// Run files (names from [`crate::world::RUN_FILES`]) the row may change.
    pub may_change: &'static [&'static str],
    pub exit: Exit,
    pub msg: Msg,
    /// Text stderr must contain.
    pub says: Option<&'static str>,
    /// Text stdout must contain.
    pub prints: Option<&'static str>,
    /// Text neither stdout nor stderr may contain.
    pub lacks: Option<&'static str>,
}

pub const fn row(name: &'static str, bin: Bin, args: &'static str, exit: Exit, msg: Msg) -> Row {
    Row {
        name,
        bin,
        args,
        stdin: None,
        stdout_closed: false,
        may_change: &[],
        exit,
        msg,
        says: None,
        prints: None,
        lacks: None,
    }
}

impl Row {
    pub const fn stdin(mut self, input: &'static [u8]) -> Row {
        self.stdin = Some(input);
        self
    }
    pub const fn closed_stdout(mut self) -> Row {
        self.stdout_closed = true;
        self
    }
    pub const fn may_change(mut self, files: &'static [&'static str]) -> Row {
        self.may_change = files;
        self
    }
    pub const fn says(mut self, text: &'static str) -> Row {
        self.says = Some(text);
        self
    }
    pub const fn prints(mut self, text: &'static str) -> Row {
        self.prints = Some(text);
        self
    }
    pub const fn lacks(mut self, text: &'static str) -> Row {
        self.lacks = Some(text);
        self
    }
}

/// What a run did.
#[derive(Debug)]
pub struct Outcome {
    pub argv: Vec<String>,
    /// None when killed after [`HANG`].
    pub status: Option<std::process::ExitStatus>,
    pub stdout: String,
    pub stderr: String,
    /// Files whose content changed, by run-file name.
    pub changed: Vec<String>,
    /// Mount points the run left behind (unmounted since).
    pub left_mounted: Vec<String>,
}

/// Runs `bin` with `args` (placeholders not yet replaced) in a fresh run directory.
pub fn run(world: &World, bin: Bin, args: &[String], stdin: Option<&[u8]>, stdout_closed: bool) -> Outcome {
    let run_dir = rgfs_tests::scratch();
    let argv = world.prepare(run_dir.path(), args);
    let before = fingerprints(run_dir.path());
    let mut cmd = Command::new(bin.path());
    cmd.args(&argv).current_dir(run_dir.path()).stderr(Stdio::piped()).process_group(0);
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    if stdout_closed {
        cmd.stdout(closed_pipe());
    } else {
        cmd.stdout(Stdio::piped());
    }
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {}: {e}", bin.name()));
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        let input = input.to_vec();
        std::thread::spawn(move || {
            use std::io::Write;
            let _ = pipe.write_all(&input);
        });
    }
    let stdout = child.stdout.take().map(drain);
    let stderr = drain(child.stderr.take().unwrap());
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break Some(st);
        }
        if start.elapsed() > HANG {
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    // A daemon the binary forked may keep the pipes open: read what came, without waiting for EOF.
    let collect = |rx: mpsc::Receiver<Vec<u8>>| {
        String::from_utf8_lossy(&rx.recv_timeout(Duration::from_secs(2)).unwrap_or_default()).into_owned()
    };
    let stdout = stdout.map(collect).unwrap_or_default();
    let stderr = collect(stderr);
    let left_mounted = mounts_under(run_dir.path());
    unmount_all(run_dir.path());
    let after = fingerprints(run_dir.path());
    let changed = before
        .iter()
        .filter(|b| !after.contains(b))
        .map(|(p, ..)| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    Outcome { argv, status, stdout, stderr, changed, left_mounted }
}

/// Reads a pipe to its end on a thread; the bytes arrive on the channel.
fn drain<R: Read + Send + 'static>(mut pipe: R) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        let _ = tx.send(buf);
    });
    rx
}

/// The write end of a pipe whose read end is already closed: every write fails with EPIPE.
fn closed_pipe() -> Stdio {
    let mut fds = [0; 2];
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(read);
    Stdio::from(write)
}

/// The problems every run is checked for, whatever it was asked.
pub fn general_problems(o: &Outcome) -> Vec<String> {
    let mut p = Vec::new();
    match o.status {
        None => p.push(format!("hung: still running after {} s (killed)", HANG.as_secs())),
        Some(st) if st.signal().is_some() => p.push(format!("killed by signal {}", st.signal().unwrap())),
        Some(st) if st.code() == Some(101) => p.push("exit 101 (a panic)".into()),
        Some(_) => {}
    }
    let both = format!("{}{}", o.stdout, o.stderr);
    for bad in ["panicked at", "RUST_BACKTRACE", "stack backtrace"] {
        if both.contains(bad) {
            p.push(format!("panic text ({bad:?})"));
        }
    }
    if o.stderr.contains('\x1b') {
        p.push("terminal escape codes on stderr, which is not a terminal".into());
    }
    if o.stderr.len() > MAX_STDERR {
        p.push(format!("stderr is {} bytes, not a short message", o.stderr.len()));
    }
    if !o.left_mounted.is_empty() {
        p.push(format!("left a mount behind: {}", o.left_mounted.join(", ")));
    }
    p
}

/// The problems of a message that must say what is wrong on its first line.
fn first_line_problems(stderr: &str) -> Vec<String> {
    let first = stderr.lines().next().unwrap_or("");
    let mut p = Vec::new();
    if first.trim().is_empty() {
        p.push("no message: the first line of stderr is empty".into());
    } else if first.len() > MAX_LINE {
        p.push(format!("first line is {} characters long", first.len()));
    }
    // "tool: usage: ..." says how to call the tool, not what was wrong.
    let text = first.split_once(": ").filter(|(head, _)| !head.contains(' ')).map_or(first, |(_, rest)| rest);
    if text.trim_start().to_lowercase().starts_with("usage") {
        p.push("the first line is usage text, not what is wrong".into());
    }
    p
}

/// Every problem of a table row's run.
pub fn row_problems(row: &Row, o: &Outcome) -> Vec<String> {
    let mut p = general_problems(o);
    let code = o.status.and_then(|s| s.code());
    if let Some(code) = code {
        let ok = match row.exit {
            Exit::Ok => code == 0,
            Exit::Code(c) => code == c,
            Exit::Fail => code != 0,
            Exit::Any => true,
        };
        if !ok {
            p.push(format!("exit {code}, expected {:?}", row.exit));
        }
    }
    let lines: Vec<&str> = o.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    match row.msg {
        Msg::Line => {
            p.extend(first_line_problems(&o.stderr));
            if lines.len() > 1 {
                p.push(format!("{} lines on stderr, expected one", lines.len()));
            }
        }
        Msg::Usage => {
            p.extend(first_line_problems(&o.stderr));
            if lines.len() > MAX_USAGE_LINES {
                p.push(format!("{} lines on stderr", lines.len()));
            }
        }
        Msg::Quiet => {
            if !o.stderr.is_empty() {
                p.push("expected nothing on stderr".into());
            }
        }
        Msg::Report => {}
    }
    if let Some(s) = row.says.filter(|s| !o.stderr.contains(s)) {
        p.push(format!("stderr does not say {s:?}"));
    }
    if let Some(s) = row.prints.filter(|s| !o.stdout.contains(s)) {
        p.push(format!("stdout does not say {s:?}"));
    }
    if let Some(s) = row.lacks.filter(|s| o.stdout.contains(s) || o.stderr.contains(s)) {
        p.push(format!("output says {s:?}"));
    }
    let changed: Vec<&String> = o.changed.iter().filter(|f| !row.may_change.contains(&f.as_str())).collect();
    if !changed.is_empty() {
        p.push(format!("changed {changed:?}"));
    }
    p
}

/// The first line of each output, for reports.
pub fn summary(o: &Outcome) -> String {
    let first = |s: &str| s.lines().find(|l| !l.trim().is_empty()).unwrap_or("").chars().take(200).collect::<String>();
    let status = match o.status {
        None => "hung".to_string(),
        Some(st) => st.code().map_or_else(|| format!("signal {}", st.signal().unwrap_or(0)), |c| format!("exit {c}")),
    };
    format!("{status}; stderr: {:?}; stdout: {:?}", first(&o.stderr), first(&o.stdout))
}

/// The arguments as a shell would show them.
pub fn shown(argv: &[String]) -> String {
    argv.iter().map(|a| if a.is_empty() { "''".into() } else { a.clone() }).collect::<Vec<_>>().join(" ")
}
