//! What the caller asks for: [`MkfsOptions`], with the defaults and limits of
//! mkfs.gfs2 3.5, and their validation.
//!
//! Validation happens in two steps, like mkfs.gfs2: [`MkfsOptions::validate`]
//! checks what needs no device; the planner checks what depends on its size.

use rgfs::format::superblock::{check_block_size, validate_locktable};

use crate::error::{Error, Result};

/// mkfs.gfs2's defaults and limits (`libgfs2.h`, `LGFS2_*`).
pub const DEFAULT_BLOCK_SIZE: u32 = 4096;
pub const DEFAULT_RGRP_SIZE_MB: u32 = 256;
pub const MIN_RGRP_SIZE_MB: u32 = 32;
pub const MAX_RGRP_SIZE_MB: u32 = 2048;
pub const MIN_JOURNAL_SIZE_MB: u32 = 8;
pub const MAX_JOURNAL_SIZE_MB: u32 = 1024;
pub const DEFAULT_QUOTA_CHANGE_SIZE_MB: u32 = 1;
pub const MAX_QUOTA_CHANGE_SIZE_MB: u32 = 64;

/// The lock protocol recorded in the superblock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockProto {
    /// Cluster locking through the DLM; needs a lock table.
    Dlm,
    /// Single-node locking.
    Nolock,
}

impl LockProto {
    /// The name stored in `sb_lockproto`.
    pub fn name(self) -> &'static str {
        match self {
            LockProto::Dlm => "lock_dlm",
            LockProto::Nolock => "lock_nolock",
        }
    }

    /// Parses a protocol name as typed after `-p`.
    pub fn parse(name: &str) -> Result<LockProto> {
        match name {
            "lock_dlm" => Ok(LockProto::Dlm),
            "lock_nolock" => Ok(LockProto::Nolock),
            other => Err(Error::invalid(format!(
                "invalid lock protocol {other:?}: use lock_dlm or lock_nolock"
            ))),
        }
    }
}

/// Everything that decides the filesystem `make_filesystem` writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MkfsOptions {
    /// Filesystem block size in bytes: a power of two in 512..=4096.
    pub block_size: u32,
    /// Number of journals (one per node that may mount), at least 1.
    pub journals: u32,
    /// Size of each journal; `None` picks mkfs.gfs2's default for the
    /// device size.
    pub journal_size_mb: Option<u32>,
    /// Target resource group size.
    pub rgrp_size_mb: u32,
    /// Size of each node's quota_change file.
    pub quota_change_size_mb: u32,
    pub lock_proto: LockProto,
    /// `cluster:fsname`; required with lock_dlm.
    pub lock_table: Option<String>,
    /// Filesystem UUID; `None` makes a random one.
    pub uuid: Option<[u8; 16]>,
    /// Use only the first `block_count` blocks of the device.
    pub block_count: Option<u64>,
    /// Creation time (seconds since the epoch) written into every inode;
    /// `None` means now.
    pub time_sec: Option<i64>,
}

impl Default for MkfsOptions {
    fn default() -> Self {
        MkfsOptions {
            block_size: DEFAULT_BLOCK_SIZE,
            journals: 1,
            journal_size_mb: None,
            rgrp_size_mb: DEFAULT_RGRP_SIZE_MB,
            quota_change_size_mb: DEFAULT_QUOTA_CHANGE_SIZE_MB,
            lock_proto: LockProto::Dlm,
            lock_table: None,
            uuid: None,
            block_count: None,
            time_sec: None,
        }
    }
}

impl MkfsOptions {
    /// Options for a single-node filesystem (lock_nolock), otherwise the
    /// defaults: handy for tests.
    pub fn nolock() -> Self {
        MkfsOptions {
            lock_proto: LockProto::Nolock,
            ..Default::default()
        }
    }

    /// The lock table as stored in the superblock ("" when none).
    pub fn lock_table_str(&self) -> &str {
        self.lock_table.as_deref().unwrap_or("")
    }

    /// Checks every option that does not depend on the device, in the order
    /// mkfs.gfs2 checks them.
    pub fn validate(&self) -> Result<()> {
        match (&self.lock_table, self.lock_proto) {
            (None, LockProto::Dlm) => {
                return Err(Error::invalid(
                    "lock_dlm needs a lock table: give -t cluster:fsname (or -p lock_nolock)",
                ))
            }
            (None, LockProto::Nolock) => {}
            (Some(table), _) => {
                if table.is_empty() {
                    return Err(Error::invalid("the lock table is empty"));
                }
                validate_locktable(table)
                    .map_err(|why| Error::invalid(format!("invalid lock table: {why}")))?;
            }
        }
        if !(MIN_RGRP_SIZE_MB..=MAX_RGRP_SIZE_MB).contains(&self.rgrp_size_mb) {
            return Err(Error::invalid(format!(
                "bad resource group size {} MB: must be {MIN_RGRP_SIZE_MB} to {MAX_RGRP_SIZE_MB}",
                self.rgrp_size_mb
            )));
        }
        if self.journals == 0 {
            return Err(Error::invalid(
                "no journals specified: -j must be at least 1",
            ));
        }
        if let Some(mb) = self.journal_size_mb {
            if !(MIN_JOURNAL_SIZE_MB..=MAX_JOURNAL_SIZE_MB).contains(&mb) {
                return Err(Error::invalid(format!(
                    "bad journal size {mb} MB: must be {MIN_JOURNAL_SIZE_MB} to {MAX_JOURNAL_SIZE_MB}"
                )));
            }
        }
        if !(1..=MAX_QUOTA_CHANGE_SIZE_MB).contains(&self.quota_change_size_mb) {
            return Err(Error::invalid(format!(
                "bad quota change file size {} MB: must be 1 to {MAX_QUOTA_CHANGE_SIZE_MB}",
                self.quota_change_size_mb
            )));
        }
        check_block_size(self.block_size).map_err(|_| {
            Error::invalid(format!(
                "bad block size {}: must be a power of two from 512 to 4096",
                self.block_size
            ))
        })?;
        Ok(())
    }
}

/// Parses a UUID in its usual text form.
pub fn parse_uuid(text: &str) -> Result<[u8; 16]> {
    uuid::Uuid::parse_str(text)
        .map(|u| *u.as_bytes())
        .map_err(|_| Error::invalid(format!("invalid UUID {text:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dlm(table: &str) -> MkfsOptions {
        MkfsOptions {
            lock_table: Some(table.into()),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_validate_only_with_a_lock_table_for_dlm() {
        assert!(MkfsOptions::default().validate().is_err());
        dlm("pacemaker:pcmk").validate().unwrap();
        MkfsOptions::nolock().validate().unwrap();
    }

    #[test]
    fn each_bad_option_is_refused_with_a_message() {
        let cases: Vec<(MkfsOptions, &str)> = vec![
            (dlm(""), "empty"),
            (dlm("nocolon"), "lock table"),
            (dlm("a:b:c"), "lock table"),
            (
                MkfsOptions {
                    journals: 0,
                    ..dlm("a:b")
                },
                "journals",
            ),
            (
                MkfsOptions {
                    journal_size_mb: Some(7),
                    ..dlm("a:b")
                },
                "journal size",
            ),
            (
                MkfsOptions {
                    journal_size_mb: Some(1025),
                    ..dlm("a:b")
                },
                "journal size",
            ),
            (
                MkfsOptions {
                    rgrp_size_mb: 31,
                    ..dlm("a:b")
                },
                "resource group",
            ),
            (
                MkfsOptions {
                    block_size: 8192,
                    ..dlm("a:b")
                },
                "block size",
            ),
            (
                MkfsOptions {
                    block_size: 1000,
                    ..dlm("a:b")
                },
                "block size",
            ),
            (
                MkfsOptions {
                    quota_change_size_mb: 0,
                    ..dlm("a:b")
                },
                "quota",
            ),
        ];
        for (opts, word) in cases {
            let err = opts.validate().unwrap_err().to_string();
            assert!(err.contains(word), "{opts:?}: {err}");
            assert!(!err.contains('\n'), "{err}");
        }
    }

    #[test]
    fn uuid_and_lock_proto_parse() {
        let u = parse_uuid("01234567-89ab-cdef-0123-456789abcdef").unwrap();
        assert_eq!(u[0], 0x01);
        assert_eq!(u[15], 0xef);
        assert!(parse_uuid("xyz").is_err());
        assert_eq!(LockProto::parse("lock_nolock").unwrap(), LockProto::Nolock);
        assert!(LockProto::parse("lock_gulm").is_err());
    }
}
