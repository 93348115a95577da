//! The cluster configuration file, in the spirit of corosync.conf, written in TOML:
//!
//! ```toml
//! cluster_name = "alpha"
//! key_file = "authkey"            # relative to this file; at least 16 bytes
//!
//! [[node]]
//! id = 1                          # 1..=u32::MAX, unique
//! name = "n1"                     # unique
//! address = "127.0.0.1:21064"     # peers and clients (TCP)
//! client_socket = "/run/rgfs/dlm-n1.sock"  # optional unix socket for local clients
//! weight = 1                      # share of mastering; 0 = never master (default 1)
//!
//! [limits]                        # optional, defaults shown in docs/dlm.md
//! max_outstanding_per_session = 4096
//!
//! [tuning]                        # optional
//! poll_us = 200                   # polling before sleeping, daemon and clients; 0 = off
//!
//! [client]                        # optional: clients that read this file
//! connect_timeout_ms = 5000       # to connect to the daemon
//! handshake_timeout_ms = 5000     # for the daemon to answer (handshake, queries)
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// A node of the cluster.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Node id, unique, not 0.
    pub id: u32,
    /// Node name, unique.
    pub name: String,
    /// TCP address the node's daemon listens on, for peers and clients.
    pub address: SocketAddr,
    /// Optional unix socket for local clients.
    #[serde(default)]
    pub client_socket: Option<PathBuf>,
    /// Share of resources this node masters; 0 = none.
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

/// Bounds the daemon enforces on clients.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Operations (request, convert, unlock) one client may have in flight.
    pub max_outstanding_per_session: usize,
    /// Locks one client may hold or wait for.
    pub max_locks_per_session: usize,
    /// Locks on one resource (all queues) at its master.
    pub max_locks_per_resource: usize,
    /// Locks per lockspace at one master.
    pub max_locks_per_lockspace: usize,
    /// Resources per lockspace at one master.
    pub max_resources_per_lockspace: usize,
    /// Lockspaces per daemon.
    pub max_lockspaces: usize,
    /// Client sessions per daemon.
    pub max_sessions: usize,
    /// Time a new stream has to authenticate before it is refused, in milliseconds.
    pub hello_timeout_ms: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_outstanding_per_session: 4096,
            max_locks_per_session: 1 << 20,
            max_locks_per_resource: 4096,
            max_locks_per_lockspace: 1 << 21,
            max_resources_per_lockspace: 1 << 21,
            max_lockspaces: 256,
            max_sessions: 4096,
            hello_timeout_ms: 10_000,
        }
    }
}

/// Latency against CPU time.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct TuningConfig {
    /// Longest time a framed connection's reader polls its socket before it sleeps,
    /// in microseconds, on the daemons and on the clients that read this file; 0 =
    /// never poll (docs/dlm.md, "Polling before sleeping").
    pub poll_us: u64,
}

/// The default polling window, as long as Linux's guest halt-polling allows at
/// most: it must exceed a round trip between two *sleeping* processes on a VM
/// (150–200 µs measured), or two peers whose windows closed would never see a gap
/// short enough to open them again but by probing (before probes existed, with 100
/// µs they stayed closed: docs/dlm.md, "Polling before sleeping").
pub const DEFAULT_POLL_US: u64 = 200;
/// The longest polling window accepted: beyond a second, polling is no longer a
/// wait for an answer but a spinning process.
pub const MAX_POLL_US: u64 = 1_000_000;

impl Default for TuningConfig {
    fn default() -> Self {
        TuningConfig { poll_us: DEFAULT_POLL_US }
    }
}

impl TuningConfig {
    /// The polling window.
    pub fn poll(&self) -> std::time::Duration {
        std::time::Duration::from_micros(self.poll_us)
    }
}

/// What a client that reads this file waits for its daemon: every wait of a
/// client but the wait for a grant is bounded by one of these.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ClientConfig {
    /// Longest time to connect to the daemon, in milliseconds.
    pub connect_timeout_ms: u64,
    /// Longest time the daemon may take to answer once connected (its challenge,
    /// its welcome, the answer to a query), in milliseconds.
    pub handshake_timeout_ms: u64,
}

/// The default of both client timeouts: a daemon answers in well under a
/// millisecond, so five seconds only ever expire on something that is not one.
pub const DEFAULT_CLIENT_TIMEOUT_MS: u64 = 5000;
/// The longest client timeout accepted (one hour): longer is no longer a bound.
pub const MAX_CLIENT_TIMEOUT_MS: u64 = 3_600_000;

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig { connect_timeout_ms: DEFAULT_CLIENT_TIMEOUT_MS, handshake_timeout_ms: DEFAULT_CLIENT_TIMEOUT_MS }
    }
}

impl ClientConfig {
    /// The connect timeout.
    pub fn connect_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.connect_timeout_ms)
    }

    /// The handshake (and query) timeout.
    pub fn handshake_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.handshake_timeout_ms)
    }
}

/// The whole configuration file.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Cluster name; peers with another name are refused.
    pub cluster_name: String,
    /// Path of the cluster key (relative paths are relative to the config file).
    pub key_file: PathBuf,
    /// Membership epoch (static membership for now; the recovery issue makes it move).
    #[serde(default = "default_epoch")]
    pub epoch: u64,
    /// The nodes.
    #[serde(rename = "node")]
    pub nodes: Vec<NodeConfig>,
    /// Limits.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Latency against CPU time.
    #[serde(default)]
    pub tuning: TuningConfig,
    /// Client timeouts.
    #[serde(default)]
    pub client: ClientConfig,
}

fn default_epoch() -> u64 {
    1
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("parsing {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// The values are inconsistent.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// A TOML error on one short line: where, then the first line of what
/// (toml's Display quotes the offending line, which for a binary file can be
/// megabytes).
fn toml_error_line(text: &str, e: &toml::de::Error) -> String {
    const MAX_CHARS: usize = 160;
    let what: String = e.message().lines().next().unwrap_or("invalid TOML").chars().take(MAX_CHARS).collect();
    let Some(before) = e.span().and_then(|s| text.get(..s.start)) else { return what };
    let start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = before.matches('\n').count() + 1;
    let column = before.len() - start + 1;
    // The line itself names the key; shown when it is short printable text.
    let shown = text[start..].lines().next().unwrap_or("").trim();
    if shown.is_empty() || shown.chars().count() > 60 || shown.chars().any(char::is_control) {
        return format!("line {line}, column {column}: {what}");
    }
    format!("line {line}, column {column} ({shown}): {what}")
}

impl Config {
    /// Reads and checks a configuration file; `key_file` comes back absolute.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        let mut config = Config::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse { path: path.into(), message },
            other => other,
        })?;
        if config.key_file.is_relative() {
            let dir = path.parent().unwrap_or(Path::new("."));
            config.key_file = dir.join(&config.key_file);
        }
        Ok(config)
    }

    /// Parses and checks configuration text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let config: Config =
            toml::from_str(text).map_err(|e| ConfigError::Parse { path: PathBuf::new(), message: toml_error_line(text, &e) })?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.cluster_name.is_empty() || self.cluster_name.len() > 64 {
            return invalid("cluster_name must be 1 to 64 bytes".into());
        }
        if self.nodes.is_empty() || self.nodes.len() > 256 {
            return invalid("there must be 1 to 256 nodes".into());
        }
        for (i, node) in self.nodes.iter().enumerate() {
            if node.id == 0 {
                return invalid(format!("node {:?}: id 0 is reserved", node.name));
            }
            if node.name.is_empty() {
                return invalid(format!("node {}: empty name", node.id));
            }
            for other in &self.nodes[i + 1..] {
                if other.id == node.id || other.name == node.name || other.address == node.address {
                    return invalid(format!("nodes {:?} and {:?} share an id, name or address", node.name, other.name));
                }
            }
        }
        if self.nodes.iter().all(|n| n.weight == 0) {
            return invalid("at least one node needs a weight above 0".into());
        }
        let l = &self.limits;
        if [l.max_outstanding_per_session, l.max_locks_per_session, l.max_locks_per_resource, l.max_locks_per_lockspace, l.max_resources_per_lockspace, l.max_lockspaces, l.max_sessions]
            .contains(&0)
            || l.hello_timeout_ms == 0
        {
            return invalid("limits must be above 0".into());
        }
        if self.tuning.poll_us > MAX_POLL_US {
            return invalid(format!("tuning.poll_us is at most {MAX_POLL_US} (one second); 0 turns polling off"));
        }
        for (name, ms) in [("connect_timeout_ms", self.client.connect_timeout_ms), ("handshake_timeout_ms", self.client.handshake_timeout_ms)] {
            if !(1..=MAX_CLIENT_TIMEOUT_MS).contains(&ms) {
                return invalid(format!("client.{name} must be 1 to {MAX_CLIENT_TIMEOUT_MS} (one hour)"));
            }
        }
        Ok(())
    }

    /// The node with this id.
    pub fn node(&self, id: u32) -> Option<&NodeConfig> {
        self.nodes.iter().find(|n| n.id == id)
    }

    /// The node whose name is `name`.
    pub fn node_named(&self, name: &str) -> Option<&NodeConfig> {
        self.nodes.iter().find(|n| n.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
cluster_name = "alpha"
key_file = "authkey"
[[node]]
id = 1
name = "n1"
address = "127.0.0.1:4001"
[[node]]
id = 2
name = "n2"
address = "127.0.0.1:4002"
weight = 0
client_socket = "/tmp/n2.sock"
"#;

    #[test]
    fn parses_a_good_file_with_defaults() {
        let config = Config::parse(GOOD).unwrap();
        assert_eq!(config.nodes[0].weight, 1);
        assert_eq!(config.nodes[1].weight, 0);
        assert_eq!(config.epoch, 1);
        assert_eq!(config.limits, LimitsConfig::default());
        assert_eq!(config.tuning.poll_us, DEFAULT_POLL_US);
        assert_eq!(config.client, ClientConfig::default());
        assert_eq!(config.node(2).unwrap().client_socket.as_deref(), Some(Path::new("/tmp/n2.sock")));
    }

    #[test]
    fn refuses_bad_files_with_a_reason() {
        let cases = [
            (GOOD.replace("id = 2", "id = 1"), "share"),
            (GOOD.replace("id = 1", "id = 0"), "reserved"),
            (GOOD.replace("weight = 0", "weight = 0\n").replace("[[node]]\nid = 1\nname = \"n1\"\naddress = \"127.0.0.1:4001\"", "[[node]]\nid = 1\nname = \"n1\"\naddress = \"127.0.0.1:4001\"\nweight = 0"), "weight"),
            (GOOD.replace("127.0.0.1:4001", "nowhere"), "address"),
            (GOOD.replace("cluster_name", "clustername"), "unknown field"),
            ("garbage [[[".to_string(), ""),
            (format!("{GOOD}[tuning]\npoll_us = 1000001\n"), "poll_us is at most 1000000"),
            (format!("{GOOD}[tuning]\npoll_us = -1\n"), "poll_us"),
            (format!("{GOOD}[tuning]\npoll = 5\n"), "unknown field"),
            (format!("{GOOD}[client]\nconnect_timeout_ms = 0\n"), "client.connect_timeout_ms must be 1 to"),
            (format!("{GOOD}[client]\nhandshake_timeout_ms = 3600001\n"), "client.handshake_timeout_ms must be 1 to"),
        ];
        for (text, needle) in cases {
            let error = Config::parse(&text).unwrap_err().to_string();
            assert!(error.contains(needle), "{error:?} should mention {needle:?}");
        }
    }
}
