//! A real three-node cluster for tests: `rgfs-dlmd` processes on 127.0.0.1 with free
//! ports picked at start, a fresh cluster key and configuration in a temporary
//! directory, and every process killed when the `Cluster` is dropped (also when a
//! test panics). Node 1 serves local clients on a unix socket, the others on TCP.
//! A cluster's clients (library, CLI, raw sessions) use the transport it was
//! started with, so each test runs over both (`over_both_transports!`).

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rgfs_dlm::client::{AdminClient, BlockingEvents, ConnectOptions, DaemonAddress, JoinOptions, Lockspace, Transport};
use rgfs_dlm::cluster::config::Config;
use rgfs_dlm::proto::framing::{self, FrameReader};
use rgfs_dlm::proto as pb;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

/// Runs each named `async fn(Transport)` as two tests, `framed::NAME` and `grpc::NAME`.
#[macro_export]
macro_rules! over_both_transports {
    ($($name:ident),* $(,)?) => {
        mod framed {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(rgfs_dlm::client::Transport::Framed).await
                }
            )*
        }
        mod grpc {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(rgfs_dlm::client::Transport::Grpc).await
                }
            )*
        }
    };
}

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
    /// What the cluster's clients use.
    pub transport: Transport,
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
    pub fn start(transport: Transport) -> Cluster {
        Cluster::start_with(transport, "")
    }

    /// Like [`Cluster::start`], with `extra` appended to the configuration file.
    pub fn start_with(transport: Transport, extra: &str) -> Cluster {
        for attempt in 0..5 {
            match Cluster::try_start(transport, extra) {
                Ok(cluster) => return cluster,
                Err(e) => eprintln!("cluster start attempt {attempt} failed: {e}"),
            }
        }
        panic!("could not start a cluster");
    }

    fn try_start(transport: Transport, extra: &str) -> Result<Cluster, String> {
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
        let mut cluster = Cluster { dir, config_path, config, transport, daemons: Vec::new() };
        let (ready_tx, ready_rx) = mpsc::channel();
        for node in 1..=3u32 {
            let child = cluster.spawn_daemon(node, ready_tx.clone())?;
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
        cluster.wait_for_links()?;
        Ok(cluster)
    }

    /// Starts the daemon of `node`, logging to `nN.log` (appended: a restart keeps the
    /// first run's log), and reports on `ready` whether it printed its ready line.
    fn spawn_daemon(&self, node: u32, ready: mpsc::Sender<(u32, bool)>) -> Result<Child, String> {
        let log_path = self.dir.path().join(format!("n{node}.log"));
        let log = std::fs::OpenOptions::new().create(true).append(true).open(log_path).map_err(|e| e.to_string())?;
        let mut child = Command::new(DAEMON)
            .arg("--config")
            .arg(&self.config_path)
            .arg("--node-id")
            .arg(node.to_string())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .map_err(|e| e.to_string())?;
        let stdout = child.stdout.take().expect("piped");
        std::thread::spawn(move || {
            let mut line = String::new();
            let ok = BufReader::new(stdout).read_line(&mut line).is_ok() && line.starts_with("rgfs-dlmd ready");
            let _ = ready.send((node, ok));
        });
        Ok(child)
    }

    /// Starts the daemon of `node` again after [`Cluster::kill_node`] and waits for its
    /// ready line (not for its links).
    pub fn restart_node(&mut self, node: u32) {
        let (ready_tx, ready_rx) = mpsc::channel();
        let child = self.spawn_daemon(node, ready_tx).expect("restart daemon");
        self.daemons[node as usize - 1] = child;
        let ready = ready_rx.recv_timeout(EVENT_TIMEOUT);
        assert!(matches!(ready, Ok((_, true))), "node {node} did not restart: {}", self.log(node));
    }

    /// The daemon log of `node`.
    pub fn log(&self, node: u32) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("n{node}.log"))).unwrap_or_default()
    }

    /// Waits until every daemon's links to the others are up: a daemon reports ready
    /// before its links connect, and a NOQUEUE operation fails at once without its
    /// link (`rgfs-dlm status` is the probe: this runs outside any runtime).
    fn wait_for_links(&self) -> Result<(), String> {
        let deadline = Instant::now() + EVENT_TIMEOUT;
        for node in 1..=3u32 {
            loop {
                let out = Command::new(CLI)
                    .arg("--config")
                    .arg(&self.config_path)
                    .args(["--node-id", &node.to_string(), "status"])
                    .output()
                    .map_err(|e| e.to_string())?;
                let text = String::from_utf8_lossy(&out.stdout);
                let peers: Vec<&str> = text.lines().filter(|l| l.starts_with("peer node")).collect();
                if out.status.success() && peers.len() == 2 && peers.iter().all(|l| l.contains("outgoing up")) {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(format!("the peer links of node {node} did not come up: {text}"));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }

    /// CPU time (user + system) the daemon of `node` has used so far.
    pub fn daemon_cpu(&self, node: u32) -> Duration {
        let pid = self.daemons[node as usize - 1].id();
        rgfs_dlm::procfs::cpu_time(&pid.to_string()).expect("the daemon's /proc stat")
    }

    /// Kills the daemon of `node` (SIGKILL).
    pub fn kill_node(&mut self, node: u32) {
        let child = &mut self.daemons[node as usize - 1];
        child.kill().expect("kill daemon");
        child.wait().expect("reap daemon");
    }

    /// Connection options for a client of `node`.
    pub fn options(&self, node: u32) -> ConnectOptions {
        let mut options = ConnectOptions::from_config(&self.config, node, &format!("test client of n{node}")).expect("options");
        options.transport = self.transport;
        options
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
        command.arg("--transport").arg(self.transport.to_string());
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

type BoxedRead = Box<dyn AsyncRead + Send + Unpin>;
type BoxedWrite = Box<dyn AsyncWrite + Send + Unpin>;

/// A hand-driven client session, to send what the library never would.
pub enum RawSession {
    Grpc { tx: tokio::sync::mpsc::UnboundedSender<pb::ClientMessage>, inbound: tonic::Streaming<pb::ServerMessage> },
    Framed { reader: FrameReader<BoxedRead, pb::ServerMessage>, writer: BoxedWrite },
}

impl RawSession {
    /// A new session with the daemon of `node` (its client address) over the cluster's
    /// transport; gRPC sessions go to its TCP address.
    pub async fn open(cluster: &Cluster, node: u32) -> RawSession {
        match cluster.transport {
            Transport::Grpc => {
                let address = cluster.config.node(node).unwrap().address;
                let mut raw = pb::dlm_client::DlmClient::connect(format!("http://{address}")).await.unwrap();
                let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                let inbound = raw.session(tokio_stream::wrappers::UnboundedReceiverStream::new(rx)).await.unwrap().into_inner();
                RawSession::Grpc { tx, inbound }
            }
            Transport::Framed => {
                let mut session = RawSession::connect_framed(&cluster.options(node).address).await;
                session.write_bytes(framing::PREFACE).await.expect("preface");
                session
            }
        }
    }

    /// A framed connection to `address` that has sent nothing yet.
    pub async fn connect_framed(address: &DaemonAddress) -> RawSession {
        let (reader, writer): (BoxedRead, BoxedWrite) = match address {
            DaemonAddress::Tcp(a) => {
                let (r, w) = tokio::net::TcpStream::connect(a).await.unwrap().into_split();
                (Box::new(r), Box::new(w))
            }
            DaemonAddress::Unix(p) => {
                let (r, w) = tokio::net::UnixStream::connect(p).await.unwrap().into_split();
                (Box::new(r), Box::new(w))
            }
        };
        RawSession::Framed { reader: FrameReader::new(reader), writer }
    }

    /// Sends a message (errors: the daemon closed the connection).
    pub async fn send(&mut self, message: pb::ClientMessage) -> Result<(), String> {
        match self {
            RawSession::Grpc { tx, .. } => tx.send(message).map_err(|e| e.to_string()),
            RawSession::Framed { .. } => {
                let mut frame = bytes::BytesMut::new();
                framing::encode_frame(&mut framing::codec(), &message, &mut frame).unwrap();
                self.write_bytes(&frame).await
            }
        }
    }

    /// Writes raw bytes on a framed connection.
    pub async fn write_bytes(&mut self, bytes: &[u8]) -> Result<(), String> {
        let RawSession::Framed { writer, .. } = self else { panic!("raw bytes on a gRPC session") };
        writer.write_all(bytes).await.map_err(|e| e.to_string())
    }

    /// Ends our side of a framed connection (the daemon sees the end of input).
    pub async fn shutdown(&mut self) {
        let RawSession::Framed { writer, .. } = self else { panic!("not framed") };
        let _ = writer.shutdown().await;
    }

    /// The next message, or `None` once the daemon ended the session (bounded by
    /// [`EVENT_TIMEOUT`]).
    pub async fn recv(&mut self) -> Option<pb::ServerMessage> {
        within("a message from the daemon", async {
            match self {
                RawSession::Grpc { inbound, .. } => inbound.message().await.ok().flatten(),
                RawSession::Framed { reader, .. } => reader.next_message().await.and_then(Result::ok),
            }
        })
        .await
    }

    /// The next message's content (panics at the end of the session).
    pub async fn recv_kind(&mut self) -> pb::server_message::Kind {
        self.recv().await.and_then(|m| m.kind).expect("a message")
    }
}

/// A raw session with `node` that has joined `lockspace` with the cluster key.
pub async fn authenticated(cluster: &Cluster, node: u32, lockspace: &str) -> RawSession {
    let key = rgfs_dlm::cluster::auth::ClusterKey::load(&cluster.config.key_file).unwrap();
    let mut raw = RawSession::open(cluster, node).await;
    let pb::server_message::Kind::Challenge(challenge) = raw.recv_kind().await else { panic!("no challenge") };
    let client_nonce = rgfs_dlm::cluster::auth::nonce();
    let hello = pb::Hello {
        proof: key.prove(rgfs_dlm::cluster::auth::Role::Client, &challenge.cluster_name, &challenge.server_nonce, &client_nonce),
        client_nonce,
        lockspace: lockspace.into(),
        lvb_len: 32,
        ..Default::default()
    };
    raw.send(pb::ClientMessage { kind: Some(pb::client_message::Kind::Hello(hello)) }).await.unwrap();
    let welcome = raw.recv_kind().await;
    assert!(matches!(welcome, pb::server_message::Kind::Welcome(_)), "{welcome:?}");
    raw
}
