//! NBD for rgfs (docs/block.md): a client [`NbdDevice`], the server behind
//! the `rgfs-nbd` binary, and [`open_device`] and [`claim_device`], which
//! the tools use to open and claim either a path or an NBD URL.
//!
//! Everything here is blocking std I/O (see [`server`] for why), so the
//! tools that link the client stay free of an async runtime.

mod client;
pub mod proto;
pub mod server;
pub mod session;
mod url;

use std::path::Path;

use std::time::Duration;

use rgfs_block::claim::{self, Claim, ClaimError, Kind};
use rgfs_block::{Access, BlockDevice, FileDevice, Result};

pub use client::{ClientOptions, NbdDevice};
pub use url::{is_nbd_url, Address, NbdUrl, DEFAULT_PORT};

/// Opens `spec` as a device: an NBD URL (`nbd://host[:port]/export`,
/// `nbd+unix:///export?socket=PATH`) through [`NbdDevice`], anything else as
/// a path through [`FileDevice`] with `access` unchanged.
pub fn open_device(spec: impl AsRef<Path>, access: Access) -> Result<Box<dyn BlockDevice>> {
    let spec = spec.as_ref();
    match spec.to_str() {
        Some(s) if is_nbd_url(s) => Ok(Box::new(NbdDevice::open(s, access)?)),
        _ => Ok(Box::new(FileDevice::open(spec, access)?)),
    }
}

/// Claims `spec` for this process ([`claim::claim`]): a path is claimed on
/// this machine; an NBD export is claimed by the server that exports it
/// (rgfs-nbd claims its files), so a URL gives `Ok(None)`.
pub fn claim_device(
    spec: impl AsRef<Path>,
    kind: Kind,
    patience: Duration,
    waiting: &mut dyn FnMut(&str),
) -> std::result::Result<Option<Claim>, ClaimError> {
    let spec = spec.as_ref();
    if spec.to_str().is_some_and(is_nbd_url) {
        return Ok(None);
    }
    claim::claim(spec, kind, patience, waiting).map(Some)
}
