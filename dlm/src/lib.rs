//! The rgfs distributed lock manager: a pure lock engine ([`engine`]), its protocol
//! ([`proto`]), the daemon `rgfs-dlmd` ([`daemon`]), the client library ([`client`])
//! and the CLI `rgfs-dlm`. See docs/dlm.md.
pub mod engine;
pub mod proto;
