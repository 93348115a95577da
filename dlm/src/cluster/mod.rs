//! What daemons and clients share about the cluster: the configuration file, the
//! cluster key and its challenge–response proofs, and the mastering function.

pub mod auth;
pub mod config;
pub mod mastering;
