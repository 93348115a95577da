//! Reading, rewriting and making the contents of small regular files (the
//! system files: rindex, statfs, inum, statfs_change, inum_range, quota,
//! quota_change).

use rgfs::format::consts::MetaType;
use rgfs::format::meta::{init_block, set_pointer, Inum, META_HEADER_SIZE};
use rgfs::format::{BlockState, Dinode, OnDisk, Timestamp, DINODE_SIZE};
use rgfs::meta_tree::data_blocks;

use crate::blockmap::Use;
use crate::check::{Fsck, InodeInfo};
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

/// A regular file to make: its mode, flags and contents.
pub struct NewFile {
    pub mode: u32,
    pub flags: u32,
    pub payload_format: u32,
    pub contents: Vec<u8>,
}

/// Makes a new regular file holding `file.contents`, its blocks allocated
/// near `near`: stuffed when it fits in the dinode block, else a metadata
/// tree of the smallest height that maps it, every block written. The
/// inode and its blocks are recorded in `fs.inodes` and the block map (no
/// entry names it yet). `None` if the volume has no room left. Call only
/// when a repair was allowed.
pub fn create_file(fs: &mut Fsck, near: u64, file: &NewFile) -> Result<Option<Inum>> {
    let geom = fs.vol.geom.clone();
    let size = file.contents.len() as u64;
    let Some(height) = geom.height_for_size(size, false) else {
        return fatal(format!("a file of {size} bytes cannot be mapped"));
    };
    let mut made = Vec::new();
    let result = build_file(fs, near, file, height, &mut made);
    if !matches!(result, Ok(Some(_))) {
        // Out of room (or failed) part way: give back what was taken.
        for (b, _) in made {
            fs.vol.set_state(b, BlockState::Free);
            fs.map.remove(b);
        }
    }
    result
}

fn build_file(
    fs: &mut Fsck,
    near: u64,
    file: &NewFile,
    height: u16,
    made: &mut Vec<(u64, Use)>,
) -> Result<Option<Inum>> {
    let bsize = fs.vol.bsize();
    let mut take = |fs: &mut Fsck, state: BlockState, usage: Use| -> Option<u64> {
        let map = &fs.map;
        let b = fs.vol.alloc(near, state, &|b| map.get(b).is_none())?;
        made.push((b, usage));
        Some(b)
    };
    let Some(addr) = take(fs, BlockState::Dinode, Use::Dinode) else {
        return Ok(None);
    };
    let mut dinode_block = vec![0u8; bsize];
    let mut blocks = 1u64;
    let mut pointers = Vec::new();
    if height == 0 {
        dinode_block[DINODE_SIZE..DINODE_SIZE + file.contents.len()]
            .copy_from_slice(&file.contents);
    } else {
        for chunk in file.contents.chunks(bsize) {
            let Some(b) = take(fs, BlockState::Used, Use::Data) else {
                return Ok(None);
            };
            let mut buf = vec![0u8; bsize];
            buf[..chunk.len()].copy_from_slice(chunk);
            fs.vol.write(b, &buf)?;
            pointers.push(b);
        }
        blocks += pointers.len() as u64;
        // Indirect levels, bottom up: each groups `inptrs` pointers of the
        // level below; the dinode holds the top level.
        for _ in 1..height {
            let mut upper = Vec::new();
            for group in pointers.chunks(fs.vol.geom.inptrs as usize) {
                let Some(b) = take(fs, BlockState::Used, Use::Indirect) else {
                    return Ok(None);
                };
                let mut buf = vec![0u8; bsize];
                init_block(&mut buf, MetaType::Indirect);
                for (i, &p) in group.iter().enumerate() {
                    set_pointer(&mut buf[META_HEADER_SIZE..], i, p);
                }
                fs.vol.write(b, &buf)?;
                upper.push(b);
            }
            blocks += upper.len() as u64;
            pointers = upper;
        }
        assert!(
            pointers.len() <= fs.vol.geom.diptrs as usize,
            "height_for_size chose a height that maps the file"
        );
    }
    let formal = fs.new_formal();
    let num = Inum::new(formal, addr);
    let d = Dinode {
        size: file.contents.len() as u64,
        blocks,
        height,
        flags: file.flags,
        payload_format: file.payload_format,
        ..crate::dir::new_dinode(num, file.mode, Timestamp::now().sec)
    };
    d.encode_into(&mut dinode_block);
    for (i, &p) in pointers.iter().enumerate() {
        set_pointer(&mut dinode_block[DINODE_SIZE..], i, p);
    }
    fs.vol.write(addr, &dinode_block)?;
    for &(b, usage) in made.iter() {
        fs.map.insert(b, usage, addr).ok();
    }
    fs.inodes.insert(
        addr,
        InodeInfo {
            formal,
            mode: file.mode,
            flags: file.flags,
            nlink: 1,
            size: d.size,
            ..Default::default()
        },
    );
    Ok(Some(num))
}
