//! `rgfs-dlm`: the lock manager's command-line tool, in the style of dlm_tool.
//!
//! Exit codes: 0 success; 1 error; 2 usage; 3 `lock --noqueue` refused because a
//! conflicting lock is held ([`EXIT_NOQUEUE_REFUSED`]).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};
use rgfs_dlm::client::{options_with_key_file, AdminClient, ClientError, ConnectOptions, DaemonAddress, JoinOptions, Lockspace, Transport};
use rgfs_dlm::cluster::config::Config;
use rgfs_dlm::engine::{Flags, Mode, Status};
use rgfs_dlm::proto as pb;

/// Exit code of `lock --noqueue` when the lock is not granted at once.
const EXIT_NOQUEUE_REFUSED: u8 = 3;

#[derive(Parser)]
#[command(version, about = "rgfs lock manager tool")]
struct Cli {
    /// Cluster configuration file: gives the local daemon's address and the key.
    #[arg(long, global = true, default_value = "/etc/rgfs/dlm.toml")]
    config: PathBuf,
    /// The local node's id (default: the node named like the host).
    #[arg(long, global = true)]
    node_id: Option<u32>,
    /// Daemon address (host:port or unix:/path), instead of the configuration's.
    #[arg(long, global = true)]
    address: Option<String>,
    /// Cluster key file, instead of the configuration's.
    #[arg(long, global = true)]
    key_file: Option<PathBuf>,
    /// How to talk to the daemon: framed (length-delimited protobuf, the default) or grpc.
    #[arg(long, global = true, default_value = "framed")]
    transport: Transport,
    /// Framed transport: microseconds the client polls its socket before it sleeps,
    /// instead of the configuration's `[tuning] poll_us` (0 = never, at most 1000000).
    #[arg(long, global = true, value_parser = clap::value_parser!(u64).range(0..=rgfs_dlm::cluster::config::MAX_POLL_US))]
    poll_us: Option<u64>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum MasterChoice {
    /// Resources mastered by the local daemon.
    Local,
    /// Resources mastered by another daemon.
    Remote,
    /// Any resource.
    Any,
}

#[derive(Subcommand)]
enum Command {
    /// Daemon status: peers, lockspaces and their counters.
    Status,
    /// List lockspaces.
    Ls,
    /// Resources of a lockspace mastered on this node, with their queues.
    Lockdump { lockspace: String },
    /// Take a lock, print "granted NAME MODE", hold it, release it; exit 0.
    Lock {
        lockspace: String,
        name: String,
        /// NL, CR, CW, PR, PW or EX.
        mode: String,
        /// Fail at once (exit 3) if the lock cannot be granted now.
        #[arg(long)]
        noqueue: bool,
        /// How long to hold the lock, in milliseconds.
        #[arg(long, default_value_t = 0)]
        hold_ms: u64,
        /// Extra flags, e.g. "HEADQUE|NOORDER".
        #[arg(long, default_value = "")]
        flags: String,
        /// LVB length of the lockspace.
        #[arg(long, default_value_t = 32)]
        lvb_len: u32,
    },
    /// Measure lock/unlock pairs per second and latency on uncontended resources.
    Bench {
        lockspace: String,
        /// Lock+unlock pairs to measure.
        #[arg(long, default_value_t = 20_000)]
        pairs: u64,
        /// Pairs in flight at once (each on its own resource).
        #[arg(long, default_value_t = 1)]
        inflight: usize,
        /// Which resources to use.
        #[arg(long, value_enum, default_value = "local")]
        master: MasterChoice,
        /// Lock mode.
        #[arg(long, default_value = "EX")]
        mode: String,
        /// Pairs run first and not measured.
        #[arg(long, default_value_t = 2000)]
        warmup: u64,
    },
    /// Measure the lock engine alone, in this process (no daemon): lock+unlock pairs
    /// on `--resources` resources in turn.
    EngineBench {
        #[arg(long, default_value_t = 1_000_000)]
        pairs: u64,
        #[arg(long, default_value_t = 64)]
        resources: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("rgfs-dlm: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(message) => {
            eprintln!("rgfs-dlm: {message}");
            ExitCode::FAILURE
        }
    }
}

fn connect_options(cli: &Cli, client_name: &str) -> Result<ConnectOptions, String> {
    let mut options = connect_options_for_daemon(cli, client_name)?;
    options.transport = cli.transport;
    if let Some(us) = cli.poll_us {
        options.poll = std::time::Duration::from_micros(us);
    }
    Ok(options)
}

fn connect_options_for_daemon(cli: &Cli, client_name: &str) -> Result<ConnectOptions, String> {
    if let (Some(address), Some(key_file)) = (&cli.address, &cli.key_file) {
        let address: DaemonAddress = address.parse()?;
        return options_with_key_file(address, key_file, client_name).map_err(|e| e.to_string());
    }
    let config = Config::load(&cli.config).map_err(|e| e.to_string())?;
    let node_id = match cli.node_id {
        Some(id) => id,
        None => {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
            config.node_named(host.trim()).map(|n| n.id).ok_or_else(|| format!("no node named {:?}; use --node-id", host.trim()))?
        }
    };
    let mut options = ConnectOptions::from_config(&config, node_id, client_name).map_err(|e| e.to_string())?;
    if let Some(address) = &cli.address {
        options.address = address.parse()?;
    }
    if let Some(key_file) = &cli.key_file {
        options = options_with_key_file(options.address, key_file, client_name).map_err(|e| e.to_string())?;
    }
    Ok(options)
}

fn parse_mode(text: &str) -> Result<Mode, String> {
    Mode::parse(text).ok_or_else(|| format!("{text:?} is not a mode (NL, CR, CW, PR, PW, EX)"))
}

async fn run(cli: Cli) -> Result<u8, String> {
    let err = |e: ClientError| e.to_string();
    match &cli.command {
        Command::Status => {
            let mut admin = AdminClient::connect(&connect_options(&cli, "rgfs-dlm status")?).await.map_err(err)?;
            print_status(&admin.status().await.map_err(err)?);
        }
        Command::Ls => {
            let mut admin = AdminClient::connect(&connect_options(&cli, "rgfs-dlm ls")?).await.map_err(err)?;
            for ls in admin.status().await.map_err(err)?.lockspaces {
                println!("{} lvb_len={} sessions={} held_locks={} mastered_resources={}", ls.name, ls.lvb_len, ls.sessions, ls.held_locks, ls.mastered_resources);
            }
        }
        Command::Lockdump { lockspace } => {
            let mut admin = AdminClient::connect(&connect_options(&cli, "rgfs-dlm lockdump")?).await.map_err(err)?;
            print_lockdump(&admin.lockdump(lockspace).await.map_err(err)?);
        }
        Command::Lock { lockspace, name, mode, noqueue, hold_ms, flags, lvb_len } => {
            let mode = parse_mode(mode)?;
            let mut flags = Flags::parse(flags).ok_or_else(|| format!("bad flags {flags:?}"))?;
            if *noqueue {
                flags = flags | Flags::NOQUEUE;
            }
            let options = connect_options(&cli, "rgfs-dlm lock")?;
            let join = JoinOptions { lvb_len: *lvb_len, filesystem: false };
            let (ls, mut blocking) = Lockspace::join(&options, lockspace, join).await.map_err(err)?;
            let (lock, completion) = ls.lock(name.as_bytes(), mode, flags).await.map_err(err)?;
            match completion.status {
                Status::Granted => {}
                Status::TryAgain => {
                    eprintln!("rgfs-dlm: {name} not granted: a conflicting lock is held (NOQUEUE)");
                    return Ok(EXIT_NOQUEUE_REFUSED);
                }
                other => return Err(format!("{name}: {other:?}")),
            }
            println!("granted {name} {}", completion.mode.unwrap_or(mode));
            use std::io::Write;
            let _ = std::io::stdout().flush();
            let deadline = tokio::time::sleep(Duration::from_millis(*hold_ms));
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    _ = &mut deadline => break,
                    callback = blocking.recv() => match callback {
                        Some(b) => {
                            println!("blocking {name} {}", b.mode);
                            let _ = std::io::stdout().flush();
                        }
                        None => return Err(format!("{name}: lost the session with the daemon while holding the lock")),
                    },
                }
            }
            ls.unlock(lock, Flags::NONE, None).map_err(err)?.await.map_err(err)?;
            println!("released {name}");
        }
        Command::EngineBench { pairs, resources } => engine_bench(*pairs, *resources)?,
        Command::Bench { lockspace, pairs, inflight, master, mode, warmup } => {
            let options = connect_options(&cli, "rgfs-dlm bench")?;
            bench(&options, lockspace, *pairs, *inflight, *master, parse_mode(mode)?, *warmup).await?;
        }
    }
    Ok(0)
}

fn mode_name(value: i32) -> String {
    pb::mode_from_wire(value).map(|m| m.to_string()).unwrap_or_else(|| format!("?{value}"))
}

fn print_status(s: &pb::StatusReply) {
    println!("cluster {} node {} epoch {}", s.cluster_name, s.node_id, s.epoch);
    println!("refused_connections {}", s.refused_connections);
    for p in &s.peers {
        let up = |b: bool| if b { "up" } else { "down" };
        println!("peer node {} {} {} outgoing {} incoming {}", p.node_id, p.name, p.address, up(p.outgoing_connected), up(p.incoming_connected));
    }
    for ls in &s.lockspaces {
        println!(
            "lockspace {} lvb_len {} sessions {} held_locks {} mastered_resources {} mastered_locks {}",
            ls.name, ls.lvb_len, ls.sessions, ls.held_locks, ls.mastered_resources, ls.mastered_locks
        );
        let counters: Vec<String> = ls.counters.iter().map(|c| format!("{} {}", c.name, c.value)).collect();
        println!("  {}", counters.join(" "));
    }
}

fn print_lockdump(d: &pb::LockdumpReply) {
    println!("lockspace {} node {} resources {}{}", d.lockspace, d.node_id, d.resources.len(), if d.truncated { " (truncated)" } else { "" });
    for r in &d.resources {
        let name = String::from_utf8_lossy(&r.name);
        let lvb: String = r.lvb.iter().map(|b| format!("{b:02x}")).collect();
        println!("resource {name:?} lvb_seq {} lvb_valid {} lvb {lvb}", r.lvb_seq, r.lvb_valid);
        for (queue, locks) in [("granted", &r.granted), ("convert", &r.converting), ("waiting", &r.waiting)] {
            for l in locks {
                let granted = if l.has_granted { mode_name(l.granted_mode) } else { "--".into() };
                let requested = if l.has_requested { format!(" -> {}", mode_name(l.requested_mode)) } else { String::new() };
                println!("  {queue:<8} node {} lock {} {granted}{requested} flags {}", l.node_id, l.lock_id, Flags(l.flags));
            }
        }
    }
}

/// Picks `count` resource names whose master matches `master`.
fn bench_names(ls: &Lockspace, count: usize, master: MasterChoice) -> Vec<Vec<u8>> {
    let me = ls.node_id();
    let pid = std::process::id();
    (0u64..)
        .map(|i| format!("bench-{pid}-{i}").into_bytes())
        .filter(|name| match master {
            MasterChoice::Local => ls.master_of(name) == me,
            MasterChoice::Remote => ls.master_of(name) != me,
            MasterChoice::Any => true,
        })
        .take(count)
        .collect()
}

async fn bench(options: &ConnectOptions, lockspace: &str, pairs: u64, inflight: usize, master: MasterChoice, mode: Mode, warmup: u64) -> Result<(), String> {
    let err = |e: ClientError| e.to_string();
    let inflight = inflight.clamp(1, 4096);
    let (ls, _blocking) = Lockspace::join(options, lockspace, JoinOptions::default()).await.map_err(err)?;
    if matches!(master, MasterChoice::Remote) && ls.membership().members().iter().all(|m| m.id == ls.node_id() || m.weight == 0) {
        return Err("no other node masters resources".into());
    }
    let names = bench_names(&ls, inflight, master);
    let run = |total: u64| {
        let ls = ls.clone();
        let names = names.clone();
        async move {
            let per_worker = total.div_ceil(inflight as u64);
            let mut workers = Vec::new();
            for name in names {
                let ls = ls.clone();
                workers.push(tokio::spawn(async move {
                    let mut lock_ns = Vec::with_capacity(per_worker as usize);
                    let mut unlock_ns = Vec::with_capacity(per_worker as usize);
                    for _ in 0..per_worker {
                        let t0 = Instant::now();
                        let (lock, c) = ls.lock(&name, mode, Flags::NONE).await?;
                        if c.status != Status::Granted {
                            return Err(ClientError::Protocol(format!("not granted: {c:?}")));
                        }
                        let t1 = Instant::now();
                        ls.unlock(lock, Flags::NONE, None)?.await?;
                        let t2 = Instant::now();
                        lock_ns.push((t1 - t0).as_nanos() as u64);
                        unlock_ns.push((t2 - t1).as_nanos() as u64);
                    }
                    Ok::<_, ClientError>((lock_ns, unlock_ns))
                }));
            }
            let mut lock_ns = Vec::new();
            let mut unlock_ns = Vec::new();
            for worker in workers {
                let (l, u) = worker.await.map_err(|e| e.to_string())?.map_err(|e| e.to_string())?;
                lock_ns.extend(l);
                unlock_ns.extend(u);
            }
            Ok::<_, String>((lock_ns, unlock_ns))
        }
    };
    run(warmup.max(inflight as u64)).await?;
    let cpu_before = rgfs_dlm::procfs::cpu_time("self");
    let start = Instant::now();
    let (mut lock_ns, mut unlock_ns) = run(pairs).await?;
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = rgfs_dlm::procfs::cpu_time("self").zip(cpu_before).map(|(after, before)| format!("{:.2}", after.saturating_sub(before).as_secs_f64())).unwrap_or_else(|| "unknown".into());
    let done = lock_ns.len() as f64;
    let mut all_ns: Vec<u64> = lock_ns.iter().chain(unlock_ns.iter()).copied().collect();
    let pct = |v: &mut Vec<u64>, p: f64| {
        v.sort_unstable();
        v[((v.len() as f64 - 1.0) * p).round() as usize] as f64 / 1000.0
    };
    let master_name = match master {
        MasterChoice::Local => "local",
        MasterChoice::Remote => "remote",
        MasterChoice::Any => "any",
    };
    println!(
        "bench transport={} lockspace={lockspace} master={master_name} mode={mode} inflight={inflight} pairs={} elapsed_s={elapsed:.3} pairs_per_s={:.0} ops_per_s={:.0} \
         op_p50_us={:.1} op_p99_us={:.1} lock_p50_us={:.1} lock_p99_us={:.1} unlock_p50_us={:.1} unlock_p99_us={:.1} \
         poll_us={} client_cpu_s={cpu}",
        options.transport,
        lock_ns.len(),
        done / elapsed,
        2.0 * done / elapsed,
        pct(&mut all_ns, 0.5),
        pct(&mut all_ns, 0.99),
        pct(&mut lock_ns, 0.5),
        pct(&mut lock_ns, 0.99),
        pct(&mut unlock_ns, 0.5),
        pct(&mut unlock_ns, 0.99),
        options.poll.as_micros(),
    );
    Ok(())
}

/// Lock+unlock pairs straight into the engine: what one operation costs the master
/// without any I/O.
fn engine_bench(pairs: u64, resources: u64) -> Result<(), String> {
    use rgfs_dlm::engine::{Engine, Input, Limits, LockId, ResourceName};
    let names: Vec<ResourceName> =
        (0..resources.max(1)).map(|i| ResourceName::new(format!("resource {i}").as_bytes()).expect("short name")).collect();
    let mut engine = Engine::new(Limits::default());
    let mut out = Vec::with_capacity(8);
    let start = Instant::now();
    for i in 0..pairs {
        let lock = LockId { node: 1, lock: i };
        let name = names[(i % names.len() as u64) as usize];
        engine.apply(Input::Request { lock, name, mode: Mode::EX, flags: Flags::NONE }, &mut out).map_err(|e| e.to_string())?;
        engine.apply(Input::Unlock { lock, flags: Flags::NONE, lvb: None }, &mut out).map_err(|e| e.to_string())?;
        out.clear();
    }
    let elapsed = start.elapsed().as_secs_f64();
    println!(
        "engine-bench pairs={pairs} resources={resources} elapsed_s={elapsed:.3} pairs_per_s={:.0} ns_per_op={:.0}",
        pairs as f64 / elapsed,
        elapsed * 1e9 / (2.0 * pairs as f64)
    );
    Ok(())
}
