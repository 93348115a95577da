//! A real three-node cluster for tests: `rgfs-dlmd` processes on 127.0.0.1 with free
//! ports picked at start, a fresh cluster key and configuration in a temporary
//! directory, and every process killed when the `Cluster` is dropped (also when a
//! test panics). Node 1 serves local clients on a unix socket, the others on TCP.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use rgfs_dlm::client::{AdminClient, BlockingEvents, ConnectOptions, JoinOptions, Lockspace};
use rgfs_dlm::cluster::config::Config;

/// Generous bound for waiting on any event on a loaded 2-core machine.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(60);

pub const DAEMON: &str = env!("CARGO_BIN_EXE_rgfs-dlmd");
pub const CLI: &str = env!("CARGO_BIN_EXE_rgfs-dlm");

/// Awaits `future`, failing the test if it takes longer than [`EVENT_TIMEOUT`].
pub async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(EVENT_TIMEOUT, future).await {
        Ok(value) => value,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// A child process killed when dropped, so a failing test leaves nothing behind.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub config: Config,
    daemons: Vec<Child>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in &mut self.daemons {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_ports(count: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..count).map(|_| TcpListener::bind("127.0.0.1:0").expect("bind port 0")).collect();
    listeners.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

impl Cluster {
    /// Starts three daemons and waits until each reports ready.
    pub fn start() -> Cluster {
        Cluster::start_with("")
    }

    /// Like [`Cluster::start`], with `extra` appended to the configuration file.
    pub fn start_with(extra: &str) -> Cluster {
        for attempt in 0..5 {
            match Cluster::try_start(extra) {
                Ok(cluster) => return cluster,
                Err(e) => eprintln!("cluster start attempt {attempt} failed: {e}"),
            }
        }
        panic!("could not start a cluster");
    }

    fn try_start(extra: &str) -> Result<Cluster, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let key: Vec<u8> = (0..32).map(|_| rand::random::<u8>()).collect();
        std::fs::write(dir.path().join("authkey"), key).map_err(|e| e.to_string())?;
        let ports = free_ports(3);
        let mut text = String::from("cluster_name = \"test\"\nkey_file = \"authkey\"\n");
        for (i, port) in ports.iter().enumerate() {
            text += &format!("[[node]]\nid = {}\nname = \"n{}\"\naddress = \"127.0.0.1:{port}\"\n", i + 1, i + 1);
            if i == 0 {
                text += &format!("client_socket = \"{}\"\n", dir.path().join("n1.sock").display());
            }
        }
        text += extra;
        let config_path = dir.path().join("dlm.toml");
        std::fs::write(&config_path, &text).map_err(|e| e.to_string())?;
        let config = Config::load(&config_path).map_err(|e| e.to_string())?;
        let mut cluster = Cluster { dir, config_path, config, daemons: Vec::new() };
        let (ready_tx, ready_rx) = mpsc::channel();
        for node in 1..=3u32 {
            let log = std::fs::File::create(cluster.dir.path().join(format!("n{node}.log"))).map_err(|e| e.to_string())?;
            let mut child = Command::new(DAEMON)
                .arg("--config")
                .arg(&cluster.config_path)
                .arg("--node-id")
                .arg(node.to_string())
                .env("RUST_LOG", "info")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::from(log))
                .spawn()
                .map_err(|e| e.to_string())?;
            let stdout = child.stdout.take().expect("piped");
            let tx = ready_tx.clone();
            std::thread::spawn(move || {
                let mut line = String::new();
                let ok = BufReader::new(stdout).read_line(&mut line).is_ok() && line.starts_with("rgfs-dlmd ready");
                let _ = tx.send((node, ok));
            });
            cluster.daemons.push(child);
        }
        for _ in 0..3 {
            match ready_rx.recv_timeout(EVENT_TIMEOUT) {
                Ok((_, true)) => {}
                Ok((node, false)) => {
                    let log = std::fs::read_to_string(cluster.dir.path().join(format!("n{node}.log"))).unwrap_or_default();
                    return Err(format!("node {node} did not start: {log}"));
                }
                Err(_) => return Err("a daemon did not report ready".into()),
            }
        }
        Ok(cluster)
    }

    /// Kills the daemon of `node` (SIGKILL).
    pub fn kill_node(&mut self, node: u32) {
        let child = &mut self.daemons[node as usize - 1];
        child.kill().expect("kill daemon");
        child.wait().expect("reap daemon");
    }

    /// Connection options for a client of `node`.
    pub fn options(&self, node: u32) -> ConnectOptions {
        ConnectOptions::from_config(&self.config, node, &format!("test client of n{node}")).expect("options")
    }

    /// A client of `node` joined to `lockspace`.
    pub async fn join(&self, node: u32, lockspace: &str) -> (Lockspace, BlockingEvents) {
        within("join", Lockspace::join(&self.options(node), lockspace, JoinOptions::default())).await.expect("join")
    }

    /// An admin session on `node`.
    pub async fn admin(&self, node: u32) -> AdminClient {
        within("admin connect", AdminClient::connect(&self.options(node))).await.expect("admin")
    }

    /// `rgfs-dlm` aimed at `node`.
    pub fn cli(&self, node: u32) -> Command {
        let mut command = Command::new(CLI);
        command.arg("--config").arg(&self.config_path).arg("--node-id").arg(node.to_string());
        command
    }

    /// Waits until `check` holds for the lock dump of `lockspace` on `node`
    /// (polling: a dump has no change notification). Bounded by [`EVENT_TIMEOUT`].
    pub async fn wait_for_dump(&self, node: u32, lockspace: &str, what: &str, check: impl Fn(&rgfs_dlm::proto::LockdumpReply) -> bool) {
        let mut admin = self.admin(node).await;
        within(what, async {
            loop {
                if let Ok(dump) = admin.lockdump(lockspace).await {
                    if check(&dump) {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
    }
}
