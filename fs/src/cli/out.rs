//! Standard output for the tools, through [`outln!`](crate::outln) and
//! [`out!`](crate::out) in place of `println!`/`print!`.
//!
//! `println!` panics when stdout is a closed pipe (`fsck.rgfs -v IMG |
//! head -1`); these stop printing instead and let the tool finish its work
//! and keep its exit code: a repair half done because nobody reads the
//! report any more would be worse than a lost report.

use std::fmt::Arguments;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

/// Set after the first failed write; later output is dropped.
static CLOSED: AtomicBool = AtomicBool::new(false);

/// Writes `args` (and a newline if `newline`) to stdout, flushed; after a
/// write failed (EPIPE, or any other error) it writes nothing more.
pub fn write(args: Arguments, newline: bool) {
    if CLOSED.load(Ordering::Relaxed) {
        return;
    }
    let mut out = std::io::stdout().lock();
    let end: &[u8] = if newline { b"\n" } else { b"" };
    let r = out.write_fmt(args).and_then(|()| out.write_all(end)).and_then(|()| out.flush());
    if r.is_err() {
        CLOSED.store(true, Ordering::Relaxed);
    }
}

/// Whether stdout stopped taking output.
pub fn closed() -> bool {
    CLOSED.load(Ordering::Relaxed)
}

/// `println!` that never panics: see [`crate::cli::out`].
#[macro_export]
macro_rules! outln {
    () => { $crate::cli::out::write(format_args!(""), true) };
    ($($arg:tt)*) => { $crate::cli::out::write(format_args!($($arg)*), true) };
}

/// `print!` that never panics (flushed): see [`crate::cli::out`].
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => { $crate::cli::out::write(format_args!($($arg)*), false) };
}
