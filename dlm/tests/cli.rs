//! The real binaries `rgfs-dlm` and `rgfs-dlmd` as a user runs them: a closed
//! standard output, numbers out of range, addresses where no daemon answers (an HTTP
//! responder, a silent listener, a daemon with another key, a peer that refuses the
//! key), their names, their logs. Every command runs under a bound, so a command
//! that hangs fails the test instead of hanging it.

#[allow(dead_code)]
#[path = "cluster/harness.rs"]
mod harness;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use harness::{Cluster, KillOnDrop, CLI, DAEMON, EVENT_TIMEOUT};
use rgfs_dlm::client::Transport;
use rgfs_dlm::cluster::mastering::{Member, Membership};

/// Runs `command` to its end, or kills it and fails once [`EVENT_TIMEOUT`] has passed.
fn run(command: &mut Command) -> Output {
    let mut child = command.stdin(Stdio::null()).spawn().expect("spawn");
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let readers = (
        std::thread::spawn(move || read_all(stdout.as_mut())),
        std::thread::spawn(move || read_all(stderr.as_mut())),
    );
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > EVENT_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{command:?} still runs after {EVENT_TIMEOUT:?}: it hangs");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output { status, stdout: readers.0.join().unwrap(), stderr: readers.1.join().unwrap() }
}

fn read_all(source: Option<&mut impl Read>) -> Vec<u8> {
    let mut bytes = Vec::new();
    if let Some(source) = source {
        let _ = source.read_to_end(&mut bytes);
    }
    bytes
}

fn cli() -> Command {
    let mut command = Command::new(CLI);
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    command
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The write end of a pipe whose read end is already closed: every write fails
/// with EPIPE, as under `| head -0` once head has exited.
fn closed_pipe() -> std::io::PipeWriter {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    writer
}

fn assert_quiet_success(output: &Output, what: &str) {
    assert_eq!(output.status.code(), Some(0), "{what}: {output:?}");
    assert_eq!(stderr(output), "", "{what}: nothing on stderr");
}

/// A key file of 32 random bytes in `dir`.
fn write_key(dir: &Path, name: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, (0..32).map(|_| rand::random::<u8>()).collect::<Vec<u8>>()).unwrap();
    path
}

fn free_address() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// Every output path of both binaries ends quietly (exit 0, nothing on stderr) when
/// standard output is closed; the daemon keeps serving when no one reads its ready line.
#[test]
fn a_closed_stdout_ends_every_command_quietly() {
    for (binary, args) in [
        (CLI, &["engine-bench", "--pairs", "1000"][..]),
        (CLI, &["--version"]),
        (CLI, &["--help"]),
        (DAEMON, &["--version"]),
        (DAEMON, &["--help"]),
    ] {
        let output = run(Command::new(binary).args(args).stdout(closed_pipe()).stderr(Stdio::piped()));
        assert_quiet_success(&output, &format!("{binary} {args:?}"));
    }
    let cluster = Cluster::start(Transport::Framed);
    let held = run(cluster.cli(1).args(["lock", "closed", "made", "EX"]).stdout(Stdio::null()).stderr(Stdio::piped()));
    assert_eq!(held.status.code(), Some(0), "{held:?}");
    for args in [
        &["status"][..],
        &["ls"],
        &["lockdump", "closed"],
        &["lock", "closed", "file", "EX", "--hold-ms", "60000"],
        &["bench", "closed", "--pairs", "10", "--warmup", "0"],
    ] {
        let output = run(cluster.cli(1).args(args).stdout(closed_pipe()).stderr(Stdio::piped()));
        assert_quiet_success(&output, &format!("rgfs-dlm {args:?}"));
    }
    // The lock whose "granted" line could not be written was released with its session.
    let free = run(cluster.cli(2).args(["lock", "closed", "file", "EX", "--noqueue"]).stdout(Stdio::null()).stderr(Stdio::piped()));
    assert_eq!(free.status.code(), Some(0), "{free:?}");

    let dir = tempfile::tempdir().unwrap();
    write_key(dir.path(), "authkey");
    let config = dir.path().join("dlm.toml");
    let address = free_address();
    std::fs::write(&config, format!("cluster_name = \"lone\"\nkey_file = \"authkey\"\n[[node]]\nid = 1\nname = \"lone\"\naddress = \"{address}\"\n")).unwrap();
    let daemon = Command::new(DAEMON).arg("--config").arg(&config).args(["--node-id", "1"]).stdout(closed_pipe()).stderr(Stdio::null()).spawn().unwrap();
    let mut daemon = KillOnDrop(daemon);
    let started = Instant::now();
    loop {
        assert!(daemon.0.try_wait().unwrap().is_none(), "rgfs-dlmd ended when its ready line could not be written");
        let status = run(cli().arg("--config").arg(&config).args(["--node-id", "1", "status"]));
        if status.status.success() {
            break;
        }
        assert!(started.elapsed() < EVENT_TIMEOUT, "rgfs-dlmd never served: {status:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Numbers out of range (and modes, flags, LVB lengths that are no such thing) are
/// usage errors, exit 2, before anything is connected or run.
#[test]
fn out_of_range_numbers_are_usage_errors() {
    let no_config = ["--config", "/nonexistent/rgfs-dlm-test.toml"];
    let cases: &[(&str, &[&str], &str)] = &[
        (CLI, &["bench", "ls", "--pairs", "0"], "--pairs"),
        (CLI, &["bench", "ls", "--pairs", "10000001"], "--pairs"),
        (CLI, &["bench", "ls", "--inflight", "0"], "--inflight"),
        (CLI, &["bench", "ls", "--inflight", "4097"], "--inflight"),
        (CLI, &["bench", "ls", "--warmup", "10000001"], "--warmup"),
        (CLI, &["bench", "ls", "--mode", "XX"], "--mode"),
        (CLI, &["engine-bench", "--resources", "0"], "--resources"),
        (CLI, &["engine-bench", "--resources", "1000001"], "--resources"),
        (CLI, &["engine-bench", "--pairs", "0"], "--pairs"),
        (CLI, &["--node-id", "0", "status"], "--node-id"),
        (CLI, &["--poll-us", "1000001", "status"], "--poll-us"),
        (CLI, &["lock", "ls", "name", "XX"], "<MODE>"),
        (CLI, &["lock", "ls", "name", "EX", "--lvb-len", "12"], "--lvb-len"),
        (CLI, &["lock", "ls", "name", "EX", "--flags", "BOGUS"], "--flags"),
        (CLI, &["lock", "ls", "name", "EX", "--timeout", "0"], "--timeout"),
        (CLI, &["lock", "ls", "name", "EX", "--timeout=-1"], "--timeout"),
        (CLI, &["lock", "ls", "name", "EX", "--timeout", "NaN"], "--timeout"),
        (CLI, &["lock", "ls", "name", "EX", "--timeout", "1e300"], "--timeout"),
        (DAEMON, &["--node-id", "0"], "--node-id"),
        (DAEMON, &["--threads", "1025"], "--threads"),
        (DAEMON, &["--threads=-1"], "--threads"),
    ];
    for (binary, args, option) in cases {
        let output = run(Command::new(binary).args(no_config).args(*args).stdout(Stdio::piped()).stderr(Stdio::piped()));
        let message = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{binary} {args:?}: {output:?}");
        let tool = Path::new(binary).file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            message.starts_with(&format!("{tool}: ")) && message.contains(option) && message.trim_end().lines().count() == 1,
            "{binary} {args:?}: {message}"
        );
    }
}

/// Accepts connections and answers each, whatever it sends, like a web server.
fn http_responder() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut connection in listener.incoming().flatten() {
            let mut request = [0u8; 64];
            let _ = connection.read(&mut request);
            let _ = connection.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    address
}

/// Accepts connections and never says a word (a blackholed service).
fn silent_listener() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for connection in listener.incoming().flatten() {
            held.push(connection);
        }
    });
    address
}

#[test]
fn an_http_server_is_named_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let key = write_key(dir.path(), "authkey");
    let address = http_responder();
    for args in [&["status"][..], &["lock", "ls", "name", "EX"]] {
        let output = run(cli().args(["--address", &address.to_string()]).arg("--key-file").arg(&key).args(args));
        assert_eq!(output.status.code(), Some(1), "{output:?}");
        assert_eq!(stderr(&output), format!("rgfs-dlm: {address} is not an rgfs-dlmd (it answered with HTTP)\n"));
    }
}

/// A listener that never answers: the handshake timeout (5 s by default,
/// `[client] handshake_timeout_ms` in the configuration) ends the wait.
#[test]
fn a_silent_listener_ends_in_a_handshake_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let key = write_key(dir.path(), "authkey");
    let address = silent_listener();
    let output = run(cli().args(["--address", &address.to_string()]).arg("--key-file").arg(&key).arg("status"));
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert_eq!(stderr(&output), format!("rgfs-dlm: no answer from {address} within 5 s (is it an rgfs-dlmd?)\n"));

    let config = dir.path().join("dlm.toml");
    let text = format!(
        "cluster_name = \"c\"\nkey_file = \"authkey\"\n[[node]]\nid = 1\nname = \"n1\"\naddress = \"{address}\"\n[client]\nhandshake_timeout_ms = 300\n"
    );
    std::fs::write(&config, text).unwrap();
    for transport in ["framed", "grpc"] {
        let output = run(cli().arg("--config").arg(&config).args(["--node-id", "1", "--transport", transport, "lock", "ls", "name", "EX"]));
        assert_eq!(output.status.code(), Some(1), "{transport}: {output:?}");
        assert_eq!(stderr(&output), format!("rgfs-dlm: no answer from {address} within 0.3 s (is it an rgfs-dlmd?)\n"), "{transport}");
    }
}

#[test]
fn a_daemon_with_another_key_refuses_authentication() {
    let cluster = Cluster::start(Transport::Framed);
    let other_key = write_key(cluster.dir.path(), "other");
    let address = cluster.config.node(2).unwrap().address.to_string();
    for transport in ["framed", "grpc"] {
        let output = run(cli().args(["--address", &address, "--transport", transport]).arg("--key-file").arg(&other_key).arg("status"));
        assert_eq!(output.status.code(), Some(1), "{output:?}");
        assert_eq!(stderr(&output), "rgfs-dlm: refused by the lock daemon: authentication refused: wrong cluster key\n", "{transport}");
    }
}

/// `--address` alone takes the key from the configuration and needs no node in it
/// named like the host.
#[test]
fn address_alone_needs_no_node_of_the_configuration() {
    let cluster = Cluster::start(Transport::Framed);
    let address = cluster.config.node(2).unwrap().address.to_string();
    let output = run(cli().arg("--config").arg(&cluster.config_path).args(["--address", &address, "status"]));
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("cluster test node 2 "), "{output:?}");
}

#[test]
fn a_missing_lockspace_is_reported_as_such() {
    let cluster = Cluster::start(Transport::Framed);
    let output = run(cluster.cli(1).args(["lockdump", "nosuch"]).stdout(Stdio::piped()).stderr(Stdio::piped()));
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert_eq!(stderr(&output), "rgfs-dlm: no lockspace \"nosuch\" on node 1\n");
}

/// Node 1's peer (node 2) has another key, so their link never comes up: a NOQUEUE
/// lock mastered on node 2 fails at once, a waiting one gives up at `--timeout`, and
/// node 1 logs the refusal once, on one plain line.
#[test]
fn noqueue_and_timeout_do_not_wait_for_a_peer_that_refuses_the_key() {
    let dir = tempfile::tempdir().unwrap();
    write_key(dir.path(), "key1");
    write_key(dir.path(), "key2");
    let addresses = [free_address(), free_address()];
    let nodes: String =
        addresses.iter().enumerate().map(|(i, a)| format!("[[node]]\nid = {}\nname = \"n{}\"\naddress = \"{a}\"\n", i + 1, i + 1)).collect();
    let mut daemons = Vec::new();
    for node in 1..=2u32 {
        let config = dir.path().join(format!("n{node}.toml"));
        std::fs::write(&config, format!("cluster_name = \"split\"\nkey_file = \"key{node}\"\n{nodes}")).unwrap();
        let log = std::fs::File::create(dir.path().join(format!("n{node}.log"))).unwrap();
        let mut daemon = Command::new(DAEMON);
        daemon.arg("--config").arg(&config).args(["--node-id", &node.to_string()]).env("RUST_LOG", "info");
        let child = daemon.stdout(Stdio::piped()).stderr(log).spawn().unwrap();
        daemons.push(KillOnDrop(child));
    }
    for daemon in &mut daemons {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(daemon.0.stdout.as_mut().unwrap()), &mut line).unwrap();
        assert!(line.starts_with("rgfs-dlmd ready"), "{line:?}");
    }
    let membership = Membership::new(1, vec![Member { id: 1, weight: 1 }, Member { id: 2, weight: 1 }]).unwrap();
    let name = (0..).map(|i| format!("file {i}")).find(|n| membership.master_of(n.as_bytes()) == 2).unwrap();
    let lock = |extra: &[&str]| {
        let mut command = cli();
        command.arg("--config").arg(dir.path().join("n1.toml")).args(["--node-id", "1", "lock", "split", &name, "EX"]).args(extra);
        run(&mut command)
    };
    let refused = lock(&["--noqueue"]);
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    assert!(stderr(&refused).contains("(unreachable): master node 2 is not connected"), "{refused:?}");
    let timed_out = lock(&["--timeout", "0.5"]);
    assert_eq!(timed_out.status.code(), Some(4), "{timed_out:?}");
    assert_eq!(stderr(&timed_out), format!("rgfs-dlm: {name} not granted within 0.5 s\n"));

    let log = std::fs::read_to_string(dir.path().join("n1.log")).unwrap();
    assert!(!log.contains('\x1b'), "colours in a log that is not a terminal:\n{log}");
    let refusals: Vec<&str> = log.lines().filter(|l| l.contains("outgoing peer link refused")).collect();
    assert_eq!(refusals.len(), 1, "{log}");
    assert!(refusals[0].contains("wrong cluster key") && !refusals[0].contains("MetadataMap"), "{log}");
}

/// Each binary presents itself under its own name; a fatal error of the daemon is
/// one line.
#[test]
fn binaries_present_themselves_and_fail_in_one_line() {
    for (binary, name) in [(CLI, "rgfs-dlm"), (DAEMON, "rgfs-dlmd")] {
        let version = run(Command::new(binary).arg("--version").stdout(Stdio::piped()).stderr(Stdio::piped()));
        assert!(String::from_utf8_lossy(&version.stdout).starts_with(&format!("{name} ")), "{version:?}");
        let help = run(Command::new(binary).arg("--help").stdout(Stdio::piped()).stderr(Stdio::piped()));
        assert!(String::from_utf8_lossy(&help.stdout).contains(&format!("Usage: {name} ")), "{help:?}");
    }
    let failed = run(Command::new(DAEMON).args(["--config", "/nonexistent/dlm.toml", "--node-id", "1"]).stdout(Stdio::piped()).stderr(Stdio::piped()));
    assert_eq!(failed.status.code(), Some(1), "{failed:?}");
    let message = stderr(&failed);
    assert_eq!(message.lines().count(), 1, "{message}");
    assert!(message.starts_with("rgfs-dlmd: reading /nonexistent/dlm.toml") && !message.contains('\x1b'), "{message}");
}

/// A peer link that goes down is one plain line in the log of the daemon that lost
/// it: the error and its causes, not a dump of the gRPC status and hyper's error.
#[test]
fn a_lost_peer_link_is_logged_on_one_plain_line() {
    let mut cluster = Cluster::start(Transport::Framed);
    cluster.kill_node(3);
    let log_path = cluster.dir.path().join("n1.log");
    let started = Instant::now();
    let (log, line) = loop {
        let log = std::fs::read_to_string(&log_path).unwrap();
        let line = strip_colours(&log).lines().find(|l| l.contains("outgoing peer link down") && l.contains("node=3")).map(str::to_string);
        if let Some(line) = line {
            break (log, line);
        }
        assert!(started.elapsed() < EVENT_TIMEOUT, "no link-down line:\n{log}");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!line.contains("hyper::Error") && !line.contains("code: '") && !line.contains('{'), "{line}");
    assert!(!log.contains('\x1b'), "colours in a log that is not a terminal:\n{log}");
}

/// `text` without the terminal's colour sequences (ESC [ ... m).
fn strip_colours(text: &str) -> String {
    let mut plain = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            chars.by_ref().find(|&c| c == 'm');
        } else {
            plain.push(c);
        }
    }
    plain
}
