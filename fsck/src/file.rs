//! Reading and rewriting the contents of small regular files (the system
//! files: rindex, statfs, inum, statfs_change, inum_range).

use rgfs::format::{Dinode, OnDisk, DINODE_SIZE};
use rgfs::meta_tree::data_blocks;

use crate::volume::{fatal, FsckError, Result, Volume};

/// Largest file this module reads (the rindex of a 16 TiB volume of
/// 256 MiB groups is 6 MiB).
pub const MAX_READ_BYTES: u64 = 64 << 20;

/// The contents of regular file `addr` (holes read as zeros).
pub fn read_file(vol: &Volume, addr: u64) -> Result<Vec<u8>> {
    let block = vol.read(addr)?;
    let d = Dinode::decode(&block).map_err(|e| FsckError::Fatal(format!("inode {addr}: {e}")))?;
    if d.size > MAX_READ_BYTES {
        return fatal(format!(
            "inode {addr}: size {} too large for a system file",
            d.size
        ));
    }
    if d.height == 0 {
        let end = DINODE_SIZE + (d.size.min(vol.geom.max_stuffed()) as usize);
        return Ok(block[DINODE_SIZE..end].to_vec());
    }
    let bsize = vol.bsize() as u64;
    let n = d.size.div_ceil(bsize);
    let reader = (vol.dev, &vol.geom);
    let blocks = data_blocks(&vol.geom, &block, n, vol.dev_blocks, &reader)
        .map_err(|e| FsckError::Fatal(format!("inode {addr}: {e}")))?;
    let mut out = vec![0u8; d.size as usize];
    for (i, b) in blocks.into_iter().enumerate() {
        let Some(b) = b else { continue };
        let buf = vol.read(b)?;
        let start = i * bsize as usize;
        let len = (out.len() - start).min(bsize as usize);
        out[start..start + len].copy_from_slice(&buf[..len]);
    }
    Ok(out)
}

/// Overwrites the first `bytes.len()` bytes of file `addr` in place (the
/// file keeps its size and blocks).
pub fn write_file_prefix(vol: &Volume, addr: u64, bytes: &[u8]) -> Result<()> {
    let mut block = vol.read(addr)?;
    let d = Dinode::decode(&block).map_err(|e| FsckError::Fatal(format!("inode {addr}: {e}")))?;
    if (bytes.len() as u64) > d.size {
        return fatal(format!(
            "inode {addr}: writing {} bytes into a file of {}",
            bytes.len(),
            d.size
        ));
    }
    if d.height == 0 {
        block[DINODE_SIZE..DINODE_SIZE + bytes.len()].copy_from_slice(bytes);
        return vol.write(addr, &block);
    }
    let bsize = vol.bsize();
    let n = (bytes.len() as u64).div_ceil(bsize as u64);
    let reader = (vol.dev, &vol.geom);
    let blocks = data_blocks(&vol.geom, &block, n, vol.dev_blocks, &reader)
        .map_err(|e| FsckError::Fatal(format!("inode {addr}: {e}")))?;
    for (i, b) in blocks.into_iter().enumerate() {
        let Some(b) = b else {
            return fatal(format!("inode {addr}: hole at block {i}"));
        };
        let mut buf = vol.read(b)?;
        let start = i * bsize;
        let len = (bytes.len() - start).min(bsize);
        buf[..len].copy_from_slice(&bytes[start..start + len]);
        vol.write(b, &buf)?;
    }
    Ok(())
}
