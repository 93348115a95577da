//! mkfs.rgfs: makes a GFS2 filesystem (superblock format 1802) on a
//! [`BlockDevice`], laid out exactly as mkfs.gfs2 3.5 lays it out.
//!
//! The work is split so that everything is decided before the first byte is
//! written, and bad input loses nothing:
//! - [`options`]: what the caller asks for and its validation;
//! - [`plan`]: the pure layout planner (resource groups, journals);
//! - [`metafs`]: the system files built in memory (master directory tree,
//!   root), allocated first-fit like mkfs.gfs2;
//! - [`journal`]: journal trees and clean log headers;
//! - [`write`]: the only module that touches the device;
//! - [`probe`]: recognises an existing filesystem before it is overwritten.
//!
//! Other crates make test images with [`make_filesystem`]:
//!
//! ```
//! use rgfs_block::MemDevice;
//! use rgfs_mkfs::{make_filesystem, MkfsOptions};
//! let dev = MemDevice::new(64 << 20);
//! let summary = make_filesystem(&dev, &MkfsOptions::nolock()).unwrap();
//! assert_eq!(summary.journals, 1);
//! ```

pub mod error;
pub mod journal;
pub mod metafs;
pub mod options;
pub mod plan;
pub mod probe;
pub mod write;

use rgfs::format::consts::{FS_FORMAT, MULTIHOST_FORMAT};
use rgfs::format::superblock::Superblock;
use rgfs::format::Inum;
use rgfs_block::BlockDevice;

pub use error::{Error, Result};
pub use metafs::SystemFiles;
pub use options::{LockProto, MkfsOptions};
pub use plan::Layout;
pub use write::JournalProgress;

/// A filesystem fully decided and built in memory, ready to be written.
#[derive(Debug)]
pub struct Prepared {
    pub options: MkfsOptions,
    pub layout: Layout,
    pub system: SystemFiles,
    pub superblock: Superblock,
    /// Creation time of every inode.
    pub time_sec: i64,
    /// Sequence number of each journal's first log block.
    pub journal_start_sequences: Vec<u64>,
}

/// What was made, for the summary mkfs prints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    pub block_size: u32,
    /// Blocks of the whole device.
    pub device_blocks: u64,
    /// Blocks of the filesystem: one past its last data block.
    pub fs_blocks: u64,
    pub journals: u32,
    pub journal_size_mb: u32,
    pub rgrps: usize,
    pub lock_proto: LockProto,
    pub lock_table: String,
    pub uuid: [u8; 16],
    pub master: Inum,
    pub root: Inum,
}

impl Prepared {
    pub fn summary(&self) -> Summary {
        Summary {
            block_size: self.layout.geometry.bsize,
            device_blocks: self.layout.device_blocks,
            fs_blocks: self.layout.fs_size_blocks(),
            journals: self.layout.journals.len() as u32,
            journal_size_mb: self.layout.journal_size_mb,
            rgrps: self.layout.rgrps.len(),
            lock_proto: self.options.lock_proto,
            lock_table: self.options.lock_table_str().to_string(),
            uuid: self.superblock.uuid,
            master: self.system.master,
            root: self.system.root,
        }
    }
}

/// Validates the options, plans the layout and builds every system file in
/// memory for a device of `device_bytes`. Does no I/O.
pub fn prepare(device_bytes: u64, options: &MkfsOptions) -> Result<Prepared> {
    let layout = plan::plan(device_bytes, options)?;
    let time_sec = options.time_sec.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64)
    });
    let system = metafs::build(&layout, options.quota_change_size_mb, time_sec)?;
    let superblock = Superblock {
        fs_format: FS_FORMAT,
        multihost_format: MULTIHOST_FORMAT,
        bsize: layout.geometry.bsize,
        bsize_shift: layout.geometry.bsize_shift,
        master_dir: system.master,
        root_dir: system.root,
        lockproto: options.lock_proto.name().to_string(),
        locktable: options.lock_table_str().to_string(),
        uuid: options
            .uuid
            .unwrap_or_else(|| *uuid::Uuid::new_v4().as_bytes()),
    };
    // Each journal starts its sequence at a random point, as mkfs.gfs2 does.
    let journal_start_sequences = layout
        .journals
        .iter()
        .map(|j| rand::random_range(0..j.data_blocks))
        .collect();
    Ok(Prepared {
        options: options.clone(),
        layout,
        system,
        superblock,
        time_sec,
        journal_start_sequences,
    })
}

/// Makes a filesystem on `dev`. Everything is validated and built before
/// the first write; on an error before writing, the device is untouched.
pub fn make_filesystem(dev: &dyn BlockDevice, options: &MkfsOptions) -> Result<Summary> {
    make_filesystem_with_progress(dev, options, &mut |_| {})
}

/// [`make_filesystem`], calling `progress` as the journals are written.
pub fn make_filesystem_with_progress(
    dev: &dyn BlockDevice,
    options: &MkfsOptions,
    progress: &mut dyn FnMut(JournalProgress),
) -> Result<Summary> {
    let prepared = prepare(dev.size(), options)?;
    write::write(dev, &prepared, progress)?;
    Ok(prepared.summary())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rgfs::format::rgrp::RgrpHeader;
    use rgfs::format::{LogHeader, OnDisk};
    use rgfs_block::MemDevice;

    /// What `make_filesystem` writes reads back through the format
    /// library: the superblock, every group header (with its CRC), and a
    /// clean head in every journal.
    #[test]
    fn written_structures_decode() {
        let dev = MemDevice::new(128 << 20);
        let opts = MkfsOptions {
            journals: 2,
            block_size: 1024,
            uuid: Some([9; 16]),
            ..MkfsOptions::nolock()
        };
        let summary = make_filesystem(&dev, &opts).unwrap();
        let image = dev.snapshot();
        assert!(dev.flush_count() >= 2);
        let bsize = 1024usize;
        let block = |addr: u64| &image[addr as usize * bsize..(addr as usize + 1) * bsize];

        assert!(image[..65536].iter().all(|&b| b == 0));
        let sb = Superblock::decode(&image[65536..]).unwrap();
        assert_eq!(
            (sb.bsize, sb.lockproto.as_str(), sb.uuid),
            (1024, "lock_nolock", [9; 16])
        );
        assert_eq!((sb.master_dir, sb.root_dir), (summary.master, summary.root));

        let layout = plan::plan(128 << 20, &opts).unwrap();
        assert_eq!(summary.rgrps, layout.rgrps.len());
        for r in &layout.rgrps {
            let h = RgrpHeader::decode(block(r.ri.addr)).unwrap();
            h.check_against(&r.ri).unwrap();
            assert_eq!(h.skip, r.skip_blocks);
        }
        for jp in &layout.journals {
            let first = LogHeader::decode(block(jp.data_start())).unwrap();
            let last = LogHeader::decode(block(jp.data_start() + jp.data_blocks - 1)).unwrap();
            assert!(first.is_unmount() && last.is_unmount());
            assert_eq!((first.blkno, first.jinode), (0, jp.inum.addr));
            // Sequences rise by one, wrapping once.
            assert_eq!(
                (first.sequence + jp.data_blocks - 1) % jp.data_blocks,
                last.sequence
            );
        }
    }

    #[test]
    fn refusal_writes_nothing() {
        let dev = MemDevice::from_bytes(vec![0xA5; 4 << 20]);
        let err = make_filesystem(&dev, &MkfsOptions::nolock()).unwrap_err();
        assert!(matches!(err, Error::TooSmall(_)), "{err}");
        assert!(dev.snapshot().iter().all(|&b| b == 0xA5));
        assert_eq!(dev.flush_count(), 0);
    }
}
