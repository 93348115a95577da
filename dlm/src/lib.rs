//! The rgfs distributed lock manager: a pure lock engine ([`engine`]), its protocol
//! ([`proto`]), the daemon `rgfs-dlmd` ([`daemon`]), the client library ([`client`])
//! and the CLI `rgfs-dlm`. See docs/dlm.md.
pub mod cluster;

pub mod engine;
pub mod error_line;
pub mod usage;
pub mod proto;
pub mod procfs;
pub mod client;
pub mod daemon;

/// Largest gRPC message either side accepts, in bytes.
pub const MESSAGE_MAX_BYTES: usize = 4 << 20;
