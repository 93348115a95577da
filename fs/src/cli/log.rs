//! Logging for mount.rgfs: `tracing` events from the library and the
//! server, to stderr in the foreground and to syslog once the server has
//! detached (its fds 0–2 are /dev/null then).
//!
//! The level is info, raised to debug by one `-v` and to trace by two;
//! `RUST_LOG` (an `EnvFilter` directive such as `rgfs=debug`), when set,
//! decides instead. Syslog messages go to the datagram socket `/dev/log`
//! (journald and every syslog daemon listen there), or to the socket named
//! by `RGFS_SYSLOG_SOCKET`, with facility daemon and the tool's name as
//! ident. The socket is connected at the first message and again after a
//! failed send, so a syslog daemon restarted meanwhile is found again; with
//! no listener the messages are dropped (nothing else can take them).

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use syslog::{Facility, Formatter3164, Logger, LoggerBackend};
use tracing::Level;
use tracing_subscriber::fmt::writer::MakeWriterExt;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::prelude::*;
use tracing_subscriber::EnvFilter;

/// The environment variable naming another syslog socket than /dev/log.
pub const SYSLOG_SOCKET_ENV: &str = "RGFS_SYSLOG_SOCKET";

/// Set once a daemon has detached: stderr output stops.
static DETACHED: AtomicBool = AtomicBool::new(false);

/// Where events go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// Stderr only (`mount.rgfs -f`).
    Stderr,
    /// Syslog, and until [`detached`] is called also stderr, where only
    /// warnings and errors go unless `-v` was given: a mount helper says
    /// nothing on success.
    Daemon,
}

/// Installs the global subscriber. `verbosity` counts `-v` flags.
pub fn init(ident: &str, verbosity: u8, target: Target) {
    // fuser's own messages are request traces and a warning at every
    // unmount (its unmount comes after umount(8)'s): its errors only,
    // until -vv.
    let directives = match verbosity {
        0 => "info,fuser=error",
        1 => "debug,fuser=error",
        _ => "trace",
    };
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => EnvFilter::new(v),
        _ => EnvFilter::new(directives),
    };
    let quiet = target == Target::Daemon && verbosity == 0;
    let to_stderr = move |meta: &tracing::Metadata<'_>| {
        !DETACHED.load(Ordering::Relaxed) && (!quiet || *meta.level() <= Level::WARN)
    };
    let stderr = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .with_writer(std::io::stderr.with_filter(to_stderr));
    // Syslog adds the time, ident and pid itself.
    let syslog = (target == Target::Daemon).then(|| {
        tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .without_time()
            .with_target(false)
            .with_level(false)
            .with_writer(Syslog::new(ident))
    });
    let _ = tracing_subscriber::registry().with(filter).with(stderr).with(syslog).try_init();
}

/// The daemon's stderr is gone from now on: log to syslog only.
pub fn detached() {
    DETACHED.store(true, Ordering::Relaxed);
}

/// The syslog connection, made lazily (after the daemon's fork, so the pid
/// in each message is the server's).
struct Syslog {
    ident: String,
    socket: PathBuf,
    conn: Mutex<Option<Logger<LoggerBackend, Formatter3164>>>,
}

impl Syslog {
    fn new(ident: &str) -> Syslog {
        let socket = std::env::var_os(SYSLOG_SOCKET_ENV).map_or_else(|| PathBuf::from("/dev/log"), PathBuf::from);
        Syslog { ident: ident.to_string(), socket, conn: Mutex::new(None) }
    }

    fn send(&self, level: Level, msg: &str) {
        let mut conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        // One retry on a fresh connection: the listener may have restarted.
        for _ in 0..2 {
            if conn.is_none() {
                let formatter = Formatter3164 {
                    facility: Facility::LOG_DAEMON,
                    hostname: None,
                    process: self.ident.clone(),
                    pid: std::process::id(),
                };
                *conn = syslog::unix_custom(formatter, &self.socket).ok();
            }
            let Some(logger) = conn.as_mut() else { return };
            let sent = match level {
                Level::ERROR => logger.err(msg),
                Level::WARN => logger.warning(msg),
                Level::INFO => logger.info(msg),
                _ => logger.debug(msg),
            };
            if sent.is_ok() {
                return;
            }
            *conn = None;
        }
    }
}

/// One formatted event (the fmt layer writes each in one piece).
struct SyslogLine<'a> {
    sink: &'a Syslog,
    level: Level,
}

impl Write for SyslogLine<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        self.sink.send(self.level, text.trim_end());
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Syslog {
    type Writer = SyslogLine<'a>;

    fn make_writer(&'a self) -> SyslogLine<'a> {
        SyslogLine { sink: self, level: Level::INFO }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> SyslogLine<'a> {
        SyslogLine { sink: self, level: *meta.level() }
    }
}
