//! fsck.rgfs: check and repair a GFS2 volume (installed as /sbin/fsck.rgfs).
//!
//! Exit codes as fsck(8): 0 clean, 1 errors corrected, 4 errors left,
//! 8 operational error, 16 usage error.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use clap::Parser;
use rgfs_block::claim::{self, Claim, ClaimError, Kind};
use rgfs_block::Access;
use rgfs_fsck::{check_asking, Answer, Asker, ExitCode, Mode, Options};

#[derive(Parser, Debug)]
#[command(name = "fsck.rgfs", bin_name = "fsck.rgfs", version, about = "Check and repair a GFS2 volume")]
struct Cli {
    /// Change nothing; report what is wrong (the device is opened read-only).
    #[arg(short = 'n')]
    no: bool,
    /// Repair everything fsck.rgfs can repair.
    #[arg(short = 'y')]
    yes: bool,
    /// Preen: make only repairs that lose nothing.
    ///
    /// Without -n, -y or -p, fsck.rgfs asks before each repair when its
    /// input is a terminal, and only checks otherwise.
    #[arg(short = 'p')]
    preen: bool,
    /// Same as -p.
    #[arg(short = 'a')]
    auto: bool,
    /// Force a check (fsck.rgfs always checks everything; accepted for fsck(8)).
    #[arg(short = 'f')]
    _force: bool,
    /// Say what each pass does.
    #[arg(short = 'v')]
    verbose: bool,
    /// Print only problems.
    #[arg(short = 'q')]
    quiet: bool,
    /// The device or image file.
    device: PathBuf,
}

fn main() {
    let cli: Cli = rgfs::cli::parse_or_exit("fsck.rgfs", ExitCode::Usage as i32, "try --help");
    let modes = [cli.no, cli.yes, cli.preen || cli.auto]
        .iter()
        .filter(|&&m| m)
        .count();
    if modes > 1 {
        eprintln!("fsck.rgfs: -n, -y and -p/-a are mutually exclusive");
        std::process::exit(ExitCode::Usage as i32);
    }
    let mode = if cli.yes {
        Mode::Yes
    } else if cli.preen || cli.auto {
        Mode::Preen
    } else if !cli.no && std::io::stdin().is_terminal() {
        // fsck(8)'s default: ask before each repair.
        Mode::Ask
    } else {
        if !cli.no && !cli.quiet {
            eprintln!("fsck.rgfs: no -n, -y or -p given and no terminal to ask on: checking only, as with -n");
        }
        Mode::No
    };
    let _claim = claim_for(&cli.device, mode);
    let access = if mode.writes() { Access::ReadWrite } else { Access::ReadOnly };
    let dev = match rgfs_nbd::open_device(&cli.device, access) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("fsck.rgfs: {e}");
            std::process::exit(ExitCode::Operational as i32);
        }
    };
    let opts = Options {
        mode,
        verbose: cli.verbose,
        quiet: cli.quiet,
        // Not while asking: the bar would overwrite the questions.
        progress: std::io::stderr().is_terminal() && mode != Mode::Ask,
    };
    let quiet = cli.quiet;
    let echo: rgfs_fsck::report::Echo = Box::new(move |line: &str| {
        if !(quiet && line.starts_with("fsck.rgfs: 0 problems")) {
            rgfs::outln!("{line}");
        }
    });
    let ask = (mode == Mode::Ask).then(|| Box::new(ask_on_terminal) as Asker);
    let outcome = check_asking(&dev, &opts, Some(echo), ask);
    std::process::exit(outcome.exit as i32);
}

/// A repair takes the exclusive claim, held until fsck exits: refused while
/// the volume is mounted or claimed, after waiting for a server still
/// writing back. A check only warns when the volume is mounted, and
/// otherwise waits in the same way under a shared claim, so that it does
/// not see a half-written volume. None: nothing to hold (an NBD export,
/// claimed by its server; a device that cannot be opened is reported when
/// it is opened).
fn claim_for(device: &Path, mode: Mode) -> Option<Claim> {
    let name = device.display();
    let mut waiting = |m: &str| eprintln!("fsck.rgfs: {m}");
    if mode.writes() {
        return match rgfs_nbd::claim_device(device, Kind::Exclusive, claim::PATIENCE, &mut waiting) {
            Ok(c) => c,
            Err(ClaimError::Open { .. }) => None,
            Err(e) => {
                let hint = if matches!(e, ClaimError::Mounted { .. }) { " (unmount it, or check with -n)" } else { "" };
                eprintln!("fsck.rgfs: {e}; refusing to change it{hint}");
                std::process::exit(ExitCode::Operational as i32);
            }
        };
    }
    if let Some(point) = claim::mount_point(device) {
        eprintln!("fsck.rgfs: warning: {name} is mounted at {point}; the check may see it changing");
        return None;
    }
    match rgfs_nbd::claim_device(device, Kind::Shared, claim::PATIENCE, &mut waiting) {
        Ok(c) => c,
        Err(ClaimError::Open { .. }) => None,
        Err(e) => {
            eprintln!("fsck.rgfs: warning: {e}; the check may see it changing");
            None
        }
    }
}

/// Asks on stderr, reads the answer from stdin: y(es), n(o), a(ll: yes to
/// the rest), q (no to the rest). End of input answers no to the rest.
fn ask_on_terminal(question: &str) -> Answer {
    use std::io::{BufRead, Write};
    loop {
        eprint!("{question}. Fix? [y/n/a/q] ");
        let _ = std::io::stderr().flush();
        let mut line = String::new();
        match std::io::stdin().lock().read_line(&mut line) {
            Ok(0) | Err(_) => return Answer::Never,
            Ok(_) => {}
        }
        match line.trim() {
            "y" | "Y" | "yes" => return Answer::Yes,
            "n" | "N" | "no" => return Answer::No,
            "a" | "A" | "all" => return Answer::All,
            "q" | "Q" | "quit" => return Answer::Never,
            _ => eprintln!("answer y (fix), n (leave), a (fix this and all the rest) or q (leave this and all the rest)"),
        }
    }
}
