//! `mkfs.rgfs`: the command line of mkfs.gfs2, on the rgfs_mkfs library.
//!
//! Exit codes: 0 done; 255 bad input or refusal (nothing written, as
//! mkfs.gfs2 exits 255 on invalid options); 1 the device failed while
//! being written.

use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use rgfs_block::{claim, Access, BlockDevice};
use rgfs_mkfs::options::{parse_uuid, LockProto, MkfsOptions};
use rgfs_mkfs::{prepare, probe, write, Error, Summary};

const NAME: &str = "mkfs.rgfs";

/// Make a GFS2 filesystem for rgfs (options as mkfs.gfs2).
#[derive(Parser, Debug)]
#[command(name = NAME, bin_name = NAME, version, about, override_usage = "mkfs.rgfs [OPTIONS] <DEVICE> [BLOCK-COUNT]")]
struct Cli {
    /// Filesystem block size in bytes (power of two, 512 to 4096)
    #[arg(short = 'b', value_name = "BYTES", default_value_t = 4096)]
    block_size: u32,
    /// Size of each quota change file, in MB
    #[arg(short = 'c', value_name = "MB", default_value_t = 1)]
    quota_change_size_mb: u32,
    /// Size of each journal, in MB (default: chosen by device size)
    #[arg(short = 'J', value_name = "MB")]
    journal_size_mb: Option<u32>,
    /// Number of journals (one per node that mounts the filesystem)
    #[arg(short = 'j', value_name = "NUMBER", default_value_t = 1)]
    journals: u32,
    /// Accepted for compatibility; rgfs never discards
    #[arg(short = 'K')]
    no_discard: bool,
    /// Don't ask for confirmation before overwriting an existing filesystem
    #[arg(short = 'O')]
    no_confirm: bool,
    /// Locking protocol: lock_dlm or lock_nolock
    #[arg(short = 'p', value_name = "PROTOCOL", default_value = "lock_dlm")]
    lock_proto: String,
    /// Don't print anything
    #[arg(short = 'q')]
    quiet: bool,
    /// Target resource group size, in MB (32 to 2048)
    #[arg(short = 'r', value_name = "MB", default_value_t = 256)]
    rgrp_size_mb: u32,
    /// Lock table: cluster:fsname (required with lock_dlm)
    #[arg(short = 't', value_name = "CLUSTER:FSNAME")]
    lock_table: Option<String>,
    /// Filesystem UUID (default: random)
    #[arg(short = 'U', value_name = "UUID")]
    uuid: Option<String>,
    /// Device or image file to format
    device: PathBuf,
    /// Use only this many blocks of the device
    block_count: Option<u64>,
}

/// A failure to report: one line, and the exit code.
struct Failure {
    message: String,
    code: u8,
}

impl Failure {
    fn refused(message: impl Into<String>) -> Self {
        Failure {
            message: message.into(),
            code: 255,
        }
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        let code = if matches!(e, Error::Device(_)) {
            1
        } else {
            255
        };
        Failure {
            message: e.to_string(),
            code,
        }
    }
}

fn options(cli: &Cli) -> Result<MkfsOptions, Failure> {
    let uuid = cli.uuid.as_deref().map(parse_uuid).transpose()?;
    let opts = MkfsOptions {
        block_size: cli.block_size,
        journals: cli.journals,
        journal_size_mb: cli.journal_size_mb,
        rgrp_size_mb: cli.rgrp_size_mb,
        quota_change_size_mb: cli.quota_change_size_mb,
        lock_proto: LockProto::parse(&cli.lock_proto)?,
        lock_table: cli.lock_table.clone(),
        uuid,
        block_count: cli.block_count,
        time_sec: None,
    };
    opts.validate()?;
    Ok(opts)
}

/// Asks on the terminal; anything but yes is no.
fn confirm() -> bool {
    loop {
        rgfs::out!("Are you sure you want to proceed? [y/n] ");
        let mut line = String::new();
        match std::io::stdin().lock().read_line(&mut line) {
            Ok(0) | Err(_) => return false,
            Ok(_) => match line.trim() {
                "y" | "Y" | "yes" => return true,
                "n" | "N" | "no" => return false,
                _ => continue,
            },
        }
    }
}

fn print_summary(path: &std::path::Path, device_bytes: u64, s: &Summary) {
    let gib = |bytes: f64| bytes / (1u64 << 30) as f64;
    let row = |label: &str, value: String| rgfs::outln!("{label:<27}{value}");
    row("Device:", path.display().to_string());
    row("Block size:", s.block_size.to_string());
    row(
        "Device size:",
        format!(
            "{:.2} GB ({} blocks)",
            gib(device_bytes as f64),
            s.device_blocks
        ),
    );
    row(
        "Filesystem size:",
        format!(
            "{:.2} GB ({} blocks)",
            gib((s.fs_blocks * s.block_size as u64) as f64),
            s.fs_blocks
        ),
    );
    row("Journals:", s.journals.to_string());
    row("Journal size:", format!("{}MB", s.journal_size_mb));
    row("Resource groups:", s.rgrps.to_string());
    row("Locking protocol:", format!("\"{}\"", s.lock_proto.name()));
    row("Lock table:", format!("\"{}\"", s.lock_table));
    row(
        "UUID:",
        uuid::Uuid::from_bytes(s.uuid).hyphenated().to_string(),
    );
}

fn run(cli: Cli) -> Result<(), Failure> {
    let opts = options(&cli)?;
    let path = &cli.device;
    let dev = rgfs_nbd::open_device(path, Access::ReadWrite).map_err(Error::from)?;
    // Refused while the volume is mounted or claimed, -O or not; waits for
    // a server still writing back after an unmount. Held until mkfs exits.
    // An NBD export is claimed by its server (rgfs-nbd), not here.
    let _claim = rgfs_nbd::claim_device(path, claim::Kind::Exclusive, claim::PATIENCE, &mut |m| eprintln!("{NAME}: {m}"))
        .map_err(|e| Failure::refused(e.to_string()))?;
    let prepared = prepare(dev.size(), &opts)?;

    let existing = probe::existing_content(&dev)?;
    // Refuse before announcing anything: no "This will destroy" followed
    // by "refused".
    let ask = existing.filter(|_| !cli.no_confirm);
    if let Some(what) = &ask {
        if !std::io::stdin().is_terminal() {
            return Err(Failure::refused(format!(
                "{} appears to contain an existing filesystem ({what}); use -O to overwrite it",
                path.display()
            )));
        }
    }
    if !cli.quiet {
        rgfs::outln!("This will destroy any data on {}", path.display());
    }
    if let Some(what) = ask {
        rgfs::outln!("It appears to contain an existing filesystem ({what})");
        if !confirm() {
            return Err(Failure::refused("aborted: nothing was written"));
        }
    }

    let show_bar = !cli.quiet && std::io::stderr().is_terminal() && std::io::stdout().is_terminal();
    let bar = show_bar.then(|| {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template("Writing journals {bar:40} {percent}% ({eta})")
                .expect("valid template"),
        );
        bar
    });
    write::write(&dev, &prepared, &mut |p| {
        if let Some(bar) = &bar {
            bar.set_length(p.blocks_total);
            bar.set_position(p.blocks_written);
        }
    })?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    if !cli.quiet {
        print_summary(path, dev.size(), &prepared.summary());
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli: Cli = rgfs::cli::parse_or_exit(NAME, 255, "try -h for help");
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("{NAME}: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}
