//! Resource names: 1 to 64 arbitrary bytes, stored inline so that creating a lock
//! or a resource needs no allocation for the name.
//!
//! Invariants: `1 <= len <= 64`; bytes past `len` are zero and never compared or hashed.

use std::fmt;
use std::hash::{Hash, Hasher};

/// Longest resource name in bytes (DLM_RESNAME_MAXLEN).
pub const RESOURCE_NAME_MAX_BYTES: usize = 64;

/// A resource name.
#[derive(Clone, Copy)]
pub struct ResourceName {
    len: u8,
    bytes: [u8; RESOURCE_NAME_MAX_BYTES],
}

/// The name was empty or longer than 64 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("resource name must be 1 to {RESOURCE_NAME_MAX_BYTES} bytes, got {0}")]
pub struct BadNameLength(pub usize);

impl ResourceName {
    /// Checks the length and copies the name.
    pub fn new(name: &[u8]) -> Result<ResourceName, BadNameLength> {
        if name.is_empty() || name.len() > RESOURCE_NAME_MAX_BYTES {
            return Err(BadNameLength(name.len()));
        }
        let mut bytes = [0u8; RESOURCE_NAME_MAX_BYTES];
        bytes[..name.len()].copy_from_slice(name);
        Ok(ResourceName { len: name.len() as u8, bytes })
    }

    /// The name's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

impl PartialEq for ResourceName {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}
impl Eq for ResourceName {}

impl Hash for ResourceName {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state);
    }
}

impl PartialOrd for ResourceName {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for ResourceName {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}

impl fmt::Debug for ResourceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

/// Printable ASCII as is, other bytes as `\xNN`.
impl fmt::Display for ResourceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for &b in self.as_bytes() {
            if b.is_ascii_graphic() || b == b' ' {
                write!(f, "{}", b as char)?;
            } else {
                write!(f, "\\x{b:02x}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_limits() {
        assert!(ResourceName::new(b"").is_err());
        assert!(ResourceName::new(&[7; 64]).is_ok());
        assert_eq!(ResourceName::new(&[7; 65]).unwrap_err(), BadNameLength(65));
        assert_eq!(ResourceName::new(b"a\x01").unwrap().to_string(), "a\\x01");
    }
}
