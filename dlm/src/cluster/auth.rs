//! The cluster key and the challenge–response that proves it is held, both ways,
//! before anything else is exchanged (docs/dlm.md, "Authentication").
//!
//! proof = HMAC-SHA256(key, role || cluster name || 0 || server nonce || client nonce)
//! where role is `client`, `peer` (the side that connected) or `server`.

use std::path::Path;

use hmac::{Hmac, KeyInit, Mac};
use rand::RngCore;
use sha2::Sha256;

/// Length of nonces in bytes.
pub const NONCE_BYTES: usize = 32;
/// Smallest accepted key in bytes.
pub const KEY_MIN_BYTES: usize = 16;
/// Largest accepted key in bytes.
pub const KEY_MAX_BYTES: usize = 4096;

/// Who produces a proof.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// A client on a session stream.
    Client,
    /// A daemon that opened a peer stream.
    Peer,
    /// The daemon that accepted the stream.
    Server,
}

impl Role {
    fn label(self) -> &'static [u8] {
        match self {
            Role::Client => b"rgfs-dlm client",
            Role::Peer => b"rgfs-dlm peer",
            Role::Server => b"rgfs-dlm server",
        }
    }
}

/// The shared secret of the cluster.
#[derive(Clone)]
pub struct ClusterKey(Vec<u8>);

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClusterKey({} bytes)", self.0.len())
    }
}

/// The key file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Not readable.
    #[error("reading key file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Too short or too long.
    #[error("key must be {KEY_MIN_BYTES} to {KEY_MAX_BYTES} bytes, got {0}")]
    Length(usize),
}

impl ClusterKey {
    /// A key from bytes.
    pub fn new(bytes: Vec<u8>) -> Result<ClusterKey, KeyError> {
        if !(KEY_MIN_BYTES..=KEY_MAX_BYTES).contains(&bytes.len()) {
            return Err(KeyError::Length(bytes.len()));
        }
        Ok(ClusterKey(bytes))
    }

    /// Reads a key file (its bytes as they are).
    pub fn load(path: &Path) -> Result<ClusterKey, KeyError> {
        let bytes = std::fs::read(path).map_err(|source| KeyError::Read { path: path.display().to_string(), source })?;
        ClusterKey::new(bytes)
    }

    fn mac(&self, role: Role, cluster: &str, first: &[u8], second: &[u8]) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0).expect("HMAC takes keys of any length");
        mac.update(role.label());
        mac.update(cluster.as_bytes());
        mac.update(&[0]);
        mac.update(first);
        mac.update(second);
        mac
    }

    /// The proof `role` sends. Clients and peers sign (server nonce, client nonce);
    /// the server signs (client nonce, server nonce).
    pub fn prove(&self, role: Role, cluster: &str, server_nonce: &[u8], client_nonce: &[u8]) -> Vec<u8> {
        let mac = match role {
            Role::Server => self.mac(role, cluster, client_nonce, server_nonce),
            _ => self.mac(role, cluster, server_nonce, client_nonce),
        };
        mac.finalize().into_bytes().to_vec()
    }

    /// Checks a proof in constant time.
    pub fn verify(&self, role: Role, cluster: &str, server_nonce: &[u8], client_nonce: &[u8], proof: &[u8]) -> bool {
        if server_nonce.len() != NONCE_BYTES || client_nonce.len() != NONCE_BYTES {
            return false;
        }
        let mac = match role {
            Role::Server => self.mac(role, cluster, client_nonce, server_nonce),
            _ => self.mac(role, cluster, server_nonce, client_nonce),
        };
        mac.verify_slice(proof).is_ok()
    }
}

/// A fresh random nonce.
pub fn nonce() -> Vec<u8> {
    let mut bytes = vec![0u8; NONCE_BYTES];
    rand::rng().fill_bytes(&mut bytes);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_verify_only_with_the_same_key_role_and_nonces() {
        let key = ClusterKey::new(vec![7; 32]).unwrap();
        let other = ClusterKey::new(vec![8; 32]).unwrap();
        let (s, c) = (nonce(), nonce());
        let proof = key.prove(Role::Client, "alpha", &s, &c);
        assert!(key.verify(Role::Client, "alpha", &s, &c, &proof));
        assert!(!other.verify(Role::Client, "alpha", &s, &c, &proof));
        assert!(!key.verify(Role::Peer, "alpha", &s, &c, &proof));
        assert!(!key.verify(Role::Client, "beta", &s, &c, &proof));
        assert!(!key.verify(Role::Client, "alpha", &c, &s, &proof));
        assert!(!key.verify(Role::Client, "alpha", &s, &c, &proof[..31]));
        let server = key.prove(Role::Server, "alpha", &s, &c);
        assert_ne!(server, proof);
        assert!(key.verify(Role::Server, "alpha", &s, &c, &server));
    }

    #[test]
    fn key_length_is_bounded() {
        assert!(ClusterKey::new(vec![0; 15]).is_err());
        assert!(ClusterKey::new(vec![0; 16]).is_ok());
    }
}
