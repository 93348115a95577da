//! `rgfs-dlm`: the lock manager's command-line tool, in the style of dlm_tool.
//!
//! Exit codes: 0 success, also when standard output is closed early (`| head -1`:
//! the command stops quietly); 1 error; 2 usage; 3 `lock --noqueue` refused because
//! a conflicting lock is held ([`EXIT_NOQUEUE_REFUSED`]); 4 `lock --timeout` expired
//! ([`EXIT_TIMED_OUT`]).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::builder::RangedU64ValueParser;
use clap::{Parser, Subcommand, ValueEnum};
use rgfs_dlm::client::{options_with_key_file, AdminClient, ClientError, ConnectOptions, DaemonAddress, JoinOptions, Lockspace, Transport};
use rgfs_dlm::cluster::auth::ClusterKey;
use rgfs_dlm::cluster::config::Config;
use rgfs_dlm::engine::{Flags, Mode, Status};
use rgfs_dlm::proto as pb;

/// Exit code of `lock --noqueue` when the lock is not granted at once.
const EXIT_NOQUEUE_REFUSED: u8 = 3;
/// Exit code of `lock --timeout` when the lock is not granted in time.
const EXIT_TIMED_OUT: u8 = 4;
/// Most pairs `bench` measures or warms up with: it keeps every latency in memory
/// (16 bytes a pair).
const MAX_BENCH_PAIRS: u64 = 10_000_000;
/// Most pairs `bench` keeps in flight (each on its own resource and task).
const MAX_INFLIGHT: u64 = 4096;
/// Most resources `engine-bench` cycles through (their names are made up front).
const MAX_ENGINE_RESOURCES: u64 = 1_000_000;

/// Why a command stopped before its end.
enum Failure {
    /// For people, on stderr; exit 1.
    Error(String),
    /// Standard output was closed (the reader went away): stop quietly, exit 0.
    OutputClosed,
}

impl From<String> for Failure {
    fn from(message: String) -> Failure {
        Failure::Error(message)
    }
}

impl From<ClientError> for Failure {
    fn from(error: ClientError) -> Failure {
        Failure::Error(error.to_string())
    }
}

/// Writes one line on stdout; a closed stdout becomes [`Failure::OutputClosed`].
fn emit(line: std::fmt::Arguments) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{line}").and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(Failure::OutputClosed),
        Err(e) => Err(Failure::Error(format!("writing to standard output: {e}"))),
    }
}

/// `println!` that stops the command quietly when stdout is closed.
macro_rules! say {
    ($($arg:tt)*) => {
        emit(format_args!($($arg)*))?
    };
}

/// A message on stderr; if stderr is gone too there is no one left to tell.
fn complain(message: &str) {
    let _ = writeln!(std::io::stderr(), "rgfs-dlm: {message}");
}

#[derive(Parser)]
#[command(name = env!("CARGO_BIN_NAME"), version, about = "rgfs lock manager tool")]
struct Cli {
    /// Cluster configuration file: gives the local daemon's address and the key.
    #[arg(long, global = true, default_value = "/etc/rgfs/dlm.toml")]
    config: PathBuf,
    /// The local node's id (default: the node named like the host).
    #[arg(long, global = true, value_parser = clap::value_parser!(u32).range(1..))]
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
        #[arg(value_parser = parse_mode)]
        mode: Mode,
        /// Fail at once (exit 3) if the lock cannot be granted now.
        #[arg(long)]
        noqueue: bool,
        /// Give up (exit 4) if the lock is not granted within this many seconds
        /// (decimals allowed), connecting included.
        #[arg(long, value_parser = parse_timeout)]
        timeout: Option<Duration>,
        /// How long to hold the lock, in milliseconds.
        #[arg(long, default_value_t = 0)]
        hold_ms: u64,
        /// Extra flags, e.g. "HEADQUE|NOORDER".
        #[arg(long, default_value = "", value_parser = parse_flags)]
        flags: Flags,
        /// LVB length of the lockspace: 8, 16, 24 or 32.
        #[arg(long, default_value = "32", value_parser = parse_lvb_len)]
        lvb_len: u32,
    },
    /// Measure lock/unlock pairs per second and latency on uncontended resources.
    Bench {
        lockspace: String,
        /// Lock+unlock pairs to measure (1 to 10000000).
        #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..=MAX_BENCH_PAIRS))]
        pairs: u64,
        /// Pairs in flight at once, each on its own resource (1 to 4096).
        #[arg(long, default_value_t = 1, value_parser = RangedU64ValueParser::<usize>::new().range(1..=MAX_INFLIGHT))]
        inflight: usize,
        /// Which resources to use.
        #[arg(long, value_enum, default_value = "local")]
        master: MasterChoice,
        /// Lock mode.
        #[arg(long, default_value = "EX", value_parser = parse_mode)]
        mode: Mode,
        /// Pairs run first and not measured (at most 10000000; at least one per slot in flight is run).
        #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(0..=MAX_BENCH_PAIRS))]
        warmup: u64,
    },
    /// Measure the lock engine alone, in this process (no daemon): lock+unlock pairs
    /// on `--resources` resources in turn.
    EngineBench {
        /// Lock+unlock pairs (at least 1).
        #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..))]
        pairs: u64,
        /// Resources used in turn (1 to 1000000).
        #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=MAX_ENGINE_RESOURCES))]
        resources: u64,
    },
}

fn main() -> ExitCode {
    let cli: Cli = rgfs_dlm::usage::parse_or_exit("rgfs-dlm");
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            complain(&e.to_string());
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(Failure::OutputClosed) => ExitCode::SUCCESS,
        Err(Failure::Error(message)) => {
            complain(&message);
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

/// The daemon and the key. `--address` with `--key-file` needs no configuration
/// file; `--address` alone takes the key, tuning and timeouts of the configuration
/// but none of its nodes; otherwise the node (`--node-id`, or the host's name)
/// gives the address.
fn connect_options_for_daemon(cli: &Cli, client_name: &str) -> Result<ConnectOptions, String> {
    let address = cli.address.as_deref().map(str::parse::<DaemonAddress>).transpose()?;
    if let (Some(address), Some(key_file)) = (&address, &cli.key_file) {
        return options_with_key_file(address.clone(), key_file, client_name).map_err(|e| e.to_string());
    }
    let config = Config::load(&cli.config).map_err(|e| e.to_string())?;
    let load_key = |path: &Path| ClusterKey::load(path).map_err(|e| e.to_string());
    if let Some(address) = address {
        return Ok(ConnectOptions::new(address, load_key(&config.key_file)?, client_name).tuned_by(&config));
    }
    let node_id = match cli.node_id {
        Some(id) => id,
        None => {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
            let found = config.node_named(host.trim()).map(|n| n.id);
            found.ok_or_else(|| format!("no node named {:?} in {}; use --node-id or --address", host.trim(), cli.config.display()))?
        }
    };
    let mut options = ConnectOptions::from_config(&config, node_id, client_name).map_err(|e| e.to_string())?;
    if let Some(key_file) = &cli.key_file {
        options.key = load_key(key_file)?;
    }
    Ok(options)
}

fn parse_mode(text: &str) -> Result<Mode, String> {
    Mode::parse(text).ok_or_else(|| format!("{text:?} is not a mode (NL, CR, CW, PR, PW, EX)"))
}

fn parse_flags(text: &str) -> Result<Flags, String> {
    Flags::parse(text).ok_or_else(|| format!("{text:?} is not a set of flags such as \"HEADQUE|NOORDER\""))
}

fn parse_lvb_len(text: &str) -> Result<u32, String> {
    text.parse().ok().filter(|&len| pb::valid_lvb_len(len)).ok_or_else(|| format!("{text:?} is not 8, 16, 24 or 32"))
}

/// Seconds, above 0 (a lock that must not wait is `--noqueue`).
fn parse_timeout(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text.parse().map_err(|_| format!("{text:?} is not a number of seconds"))?;
    match Duration::try_from_secs_f64(seconds) {
        Ok(timeout) if !timeout.is_zero() => Ok(timeout),
        _ => Err(format!("{text:?}: the timeout must be above 0 seconds (use --noqueue not to wait)")),
    }
}

async fn run(cli: Cli) -> Result<u8, Failure> {
    match &cli.command {
        Command::Status => {
            let mut admin = AdminClient::connect(&connect_options(&cli, "rgfs-dlm status")?).await?;
            print_status(&admin.status().await?)?;
        }
        Command::Ls => {
            let mut admin = AdminClient::connect(&connect_options(&cli, "rgfs-dlm ls")?).await?;
            for ls in admin.status().await?.lockspaces {
                say!("{} lvb_len={} sessions={} held_locks={} mastered_resources={}", ls.name, ls.lvb_len, ls.sessions, ls.held_locks, ls.mastered_resources);
            }
        }
        Command::Lockdump { lockspace } => {
            let mut admin = AdminClient::connect(&connect_options(&cli, "rgfs-dlm lockdump")?).await?;
            print_lockdump(&admin.lockdump(lockspace).await?)?;
        }
        Command::Lock { lockspace, name, mode, noqueue, timeout, hold_ms, flags, lvb_len } => {
            let flags = if *noqueue { *flags | Flags::NOQUEUE } else { *flags };
            let options = connect_options(&cli, "rgfs-dlm lock")?;
            let acquire = async {
                let (ls, blocking) = Lockspace::join(&options, lockspace, JoinOptions { lvb_len: *lvb_len, filesystem: false }).await?;
                let (lock, completion) = ls.lock(name.as_bytes(), *mode, flags).await?;
                Ok::<_, ClientError>((ls, blocking, lock, completion))
            };
            let acquired = match timeout {
                Some(timeout) => match tokio::time::timeout(*timeout, acquire).await {
                    Ok(acquired) => acquired,
                    Err(_) => {
                        complain(&format!("{name} not granted within {} s", timeout.as_secs_f64()));
                        return Ok(EXIT_TIMED_OUT);
                    }
                },
                None => acquire.await,
            };
            let (ls, mut blocking, lock, completion) = acquired?;
            match completion.status {
                Status::Granted => {}
                Status::TryAgain => {
                    complain(&format!("{name} not granted: a conflicting lock is held (NOQUEUE)"));
                    return Ok(EXIT_NOQUEUE_REFUSED);
                }
                other => return Err(format!("{name}: {other:?}").into()),
            }
            say!("granted {name} {}", completion.mode.unwrap_or(*mode));
            let deadline = tokio::time::sleep(Duration::from_millis(*hold_ms));
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    _ = &mut deadline => break,
                    callback = blocking.recv() => match callback {
                        Some(b) => say!("blocking {name} {}", b.mode),
                        None => return Err(format!("{name}: lost the session with the daemon while holding the lock").into()),
                    },
                }
            }
            ls.unlock(lock, Flags::NONE, None)?.await?;
            say!("released {name}");
        }
        Command::EngineBench { pairs, resources } => engine_bench(*pairs, *resources)?,
        Command::Bench { lockspace, pairs, inflight, master, mode, warmup } => {
            let options = connect_options(&cli, "rgfs-dlm bench")?;
            bench(&options, lockspace, *pairs, *inflight, *master, *mode, *warmup).await?;
        }
    }
    Ok(0)
}

fn mode_name(value: i32) -> String {
    pb::mode_from_wire(value).map(|m| m.to_string()).unwrap_or_else(|| format!("?{value}"))
}

fn print_status(s: &pb::StatusReply) -> Result<(), Failure> {
    say!("cluster {} node {} epoch {}", s.cluster_name, s.node_id, s.epoch);
    say!("refused_connections {}", s.refused_connections);
    if s.recovering {
        let nodes: Vec<String> = s.awaiting_rebuild.iter().map(u32::to_string).collect();
        say!("incarnation {:016x} recovering: waiting for the locks of nodes [{}]", s.incarnation, nodes.join(", "));
    } else {
        say!("incarnation {:016x} recovery done", s.incarnation);
    }
    for p in &s.peers {
        let up = |b: bool| if b { "up" } else { "down" };
        say!("peer node {} {} {} outgoing {} incoming {}", p.node_id, p.name, p.address, up(p.outgoing_connected), up(p.incoming_connected));
    }
    for ls in &s.lockspaces {
        say!(
            "lockspace {} lvb_len {} sessions {} held_locks {} mastered_resources {} mastered_locks {}",
            ls.name, ls.lvb_len, ls.sessions, ls.held_locks, ls.mastered_resources, ls.mastered_locks
        );
        let counters: Vec<String> = ls.counters.iter().map(|c| format!("{} {}", c.name, c.value)).collect();
        say!("  {}", counters.join(" "));
    }
    Ok(())
}

fn print_lockdump(d: &pb::LockdumpReply) -> Result<(), Failure> {
    say!("lockspace {} node {} resources {}{}", d.lockspace, d.node_id, d.resources.len(), if d.truncated { " (truncated)" } else { "" });
    for r in &d.resources {
        let name = String::from_utf8_lossy(&r.name);
        let lvb: String = r.lvb.iter().map(|b| format!("{b:02x}")).collect();
        say!("resource {name:?} lvb_seq {} lvb_valid {} lvb {lvb}", r.lvb_seq, r.lvb_valid);
        for (queue, locks) in [("granted", &r.granted), ("convert", &r.converting), ("waiting", &r.waiting)] {
            for l in locks {
                let granted = if l.has_granted { mode_name(l.granted_mode) } else { "--".into() };
                let requested = if l.has_requested { format!(" -> {}", mode_name(l.requested_mode)) } else { String::new() };
                say!("  {queue:<8} node {} lock {} {granted}{requested} flags {}", l.node_id, l.lock_id, Flags(l.flags));
            }
        }
    }
    Ok(())
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

/// `pairs` and `inflight` are at least 1 (checked by the argument parser).
async fn bench(options: &ConnectOptions, lockspace: &str, pairs: u64, inflight: usize, master: MasterChoice, mode: Mode, warmup: u64) -> Result<(), Failure> {
    let (ls, _blocking) = Lockspace::join(options, lockspace, JoinOptions::default()).await?;
    if matches!(master, MasterChoice::Remote) && ls.membership().members().iter().all(|m| m.id == ls.node_id() || m.weight == 0) {
        return Err("no other node masters resources".to_string().into());
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
    say!(
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
/// without any I/O. `pairs` and `resources` are at least 1 (checked by the argument parser).
fn engine_bench(pairs: u64, resources: u64) -> Result<(), Failure> {
    use rgfs_dlm::engine::{Engine, Input, Limits, LockId, ResourceName};
    let names: Vec<ResourceName> =
        (0..resources).map(|i| ResourceName::new(format!("resource {i}").as_bytes()).expect("short name")).collect();
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
    say!(
        "engine-bench pairs={pairs} resources={resources} elapsed_s={elapsed:.3} pairs_per_s={:.0} ns_per_op={:.0}",
        pairs as f64 / elapsed,
        elapsed * 1e9 / (2.0 * pairs as f64)
    );
    Ok(())
}
