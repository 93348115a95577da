//! `rgfs-dlmd --config FILE [--node-id N]`: the lock daemon of one node.
//! Prints `rgfs-dlmd ready node=N address=A` on stdout once it listens; logs go to
//! stderr (RUST_LOG, default info). Stops on SIGINT or SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use rgfs_dlm::cluster::auth::ClusterKey;
use rgfs_dlm::cluster::config::Config;
use rgfs_dlm::daemon::{serve, Daemon, ServeHandle};

#[derive(Parser)]
#[command(version, about = "rgfs distributed lock manager daemon")]
struct Args {
    /// Cluster configuration file (TOML, see docs/dlm.md).
    #[arg(long, default_value = "/etc/rgfs/dlm.toml")]
    config: PathBuf,
    /// This node's id; by default the node whose name is the host name.
    #[arg(long)]
    node_id: Option<u32>,
    /// Worker threads: 1 = a single-threaded runtime (the default: lowest latency,
    /// measured in docs/BENCHMARKS.md); 0 = one per core; N = N workers.
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            tracing::error!("{message}");
            eprintln!("rgfs-dlmd: {message}");
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
        println!("rgfs-dlmd ready node={node_id} address={}", node.address);
        use std::io::Write;
        let _ = std::io::stdout().flush();
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
