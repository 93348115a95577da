//! Walking an inode's metadata tree: which block holds each logical block.
//!
//! The tree is read through a caller-supplied block reader so this module
//! works on a raw device (journal replay, fsck) as well as through a cache.

use crate::error::{corrupt, AtBlock, Result};
use crate::format::consts::MetaType;
use crate::format::meta::{payload_of, pointers};
use crate::format::{Dinode, Geometry, OnDisk, DINODE_SIZE};

/// Reads one filesystem block into the buffer (which is one block long).
pub trait ReadBlock {
    fn read_block(&self, block: u64, buf: &mut [u8]) -> Result<()>;
}

impl<D: rgfs_block::BlockDevice + ?Sized> ReadBlock for (&D, &Geometry) {
    fn read_block(&self, block: u64, buf: &mut [u8]) -> Result<()> {
        let (dev, geom) = *self;
        let offset = block.checked_mul(geom.bsize as u64).ok_or_else(|| {
            crate::error::Error::Corrupt {
                what: format!("block {block}"),
                why: "address beyond 2^64 bytes".into(),
            }
        })?;
        Ok(dev.read_at(offset, buf)?)
    }
}

/// The data block of every logical block of a file, in logical order, for
/// the first `nblocks` logical blocks; `None` for holes. The dinode block
/// must already be verified. Every pointer is checked to lie below
/// `fs_blocks`, and every indirect block's header is verified.
pub fn data_blocks(
    geom: &Geometry,
    dinode_block: &[u8],
    nblocks: u64,
    fs_blocks: u64,
    reader: &dyn ReadBlock,
) -> Result<Vec<Option<u64>>> {
    let dinode = Dinode::decode(dinode_block).at_block(0)?;
    let height = dinode.height;
    if height == 0 {
        return corrupt(
            format!("inode {}", dinode.num.addr),
            "stuffed file has no data blocks",
        );
    }
    let mut out = Vec::with_capacity(nblocks.min(1 << 24) as usize);
    let top = &dinode_block[DINODE_SIZE..];
    let mut buf = vec![0u8; geom.bsize as usize];
    walk(geom, top, 0, height, nblocks, fs_blocks, reader, &mut buf, &mut out, dinode.num.addr)?;
    out.resize(nblocks as usize, None);
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
fn walk(
    geom: &Geometry,
    ptrs: &[u8],
    level: usize,
    height: u16,
    nblocks: u64,
    fs_blocks: u64,
    reader: &dyn ReadBlock,
    buf: &mut Vec<u8>,
    out: &mut Vec<Option<u64>>,
    ino: u64,
) -> Result<()> {
    let per_ptr = geom.blocks_per_pointer(level, height);
    for ptr in pointers(ptrs) {
        if out.len() as u64 >= nblocks {
            return Ok(());
        }
        if ptr == 0 {
            let holes = per_ptr.min(nblocks - out.len() as u64);
            out.resize(out.len() + holes as usize, None);
            continue;
        }
        if ptr >= fs_blocks {
            return corrupt(
                format!("inode {ino}"),
                format!("block pointer {ptr} beyond the end of the filesystem ({fs_blocks} blocks)"),
            );
        }
        if level + 1 == height as usize {
            out.push(Some(ptr));
        } else {
            reader.read_block(ptr, buf)?;
            let child = payload_of(buf, MetaType::Indirect).at_block(ptr)?.to_vec();
            walk(geom, &child, level + 1, height, nblocks, fs_blocks, reader, buf, out, ino)?;
        }
    }
    Ok(())
}
