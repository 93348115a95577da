//! `rgfs-dlmd --config FILE [--node-id N]`: the lock daemon of one node.
//! Prints `rgfs-dlmd ready node=N address=A` on stdout once it listens (and keeps
//! serving if no one reads it); logs go to stderr (RUST_LOG, default info; colours
//! only on a terminal). A fatal error is one line on stderr and exit 1. Stops on
//! SIGINT or SIGTERM.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use rgfs_dlm::cluster::auth::ClusterKey;
use rgfs_dlm::cluster::config::Config;
use rgfs_dlm::daemon::{serve, Daemon, ServeHandle};

/// Most worker threads `--threads` accepts.
const MAX_THREADS: u64 = 1024;

#[derive(Parser)]
#[command(name = env!("CARGO_BIN_NAME"), version, about = "rgfs distributed lock manager daemon")]
struct Args {
    /// Cluster configuration file (TOML, see docs/dlm.md).
    #[arg(long, default_value = "/etc/rgfs/dlm.toml")]
    config: PathBuf,
    /// This node's id; by default the node whose name is the host name.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    node_id: Option<u32>,
    /// Worker threads: 1 = a single-threaded runtime (the default: lowest latency,
    /// measured in docs/BENCHMARKS.md); 0 = one per core; N = N workers (at most 1024).
    #[arg(long, default_value_t = 1, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(0..=MAX_THREADS))]
    threads: usize,
}

fn main() -> ExitCode {
    let args: Args = rgfs_dlm::usage::parse_or_exit("rgfs-dlmd");
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            // Once, without the log line's decoration: it is the answer to the command.
            let _ = writeln!(std::io::stderr(), "rgfs-dlmd: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), String> {
    let config = Config::load(&args.config).map_err(|e| e.to_string())?;
    let node_id = match args.node_id {
        Some(id) => id,
        None => {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
            config.node_named(host.trim()).map(|n| n.id).ok_or_else(|| format!("no node named {:?} in the configuration; use --node-id", host.trim()))?
        }
    };
    let key = ClusterKey::load(&config.key_file).map_err(|e| e.to_string())?;
    let runtime = match args.threads {
        1 => tokio::runtime::Builder::new_current_thread().enable_all().build(),
        0 => tokio::runtime::Builder::new_multi_thread().enable_all().build(),
        n => tokio::runtime::Builder::new_multi_thread().worker_threads(n).enable_all().build(),
    }
    .map_err(|e| format!("starting the runtime: {e}"))?;
    runtime.block_on(async move {
        let (daemon, receivers) = Daemon::new(config, node_id, key)?;
        let handle = ServeHandle::bind(&daemon).await?;
        let node = daemon.config.node(node_id).expect("checked by Daemon::new");
        tracing::info!(node = node_id, cluster = %daemon.config.cluster_name, address = %node.address, "rgfs-dlmd ready");
        // Who started us may not read the line (stdout closed, `| true`): serve anyway.
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "rgfs-dlmd ready node={node_id} address={}", node.address).and_then(|()| stdout.flush());
        drop(stdout);
        serve(daemon, receivers, handle, shutdown_signal()).await
    })
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}
