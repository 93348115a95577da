//! Helpers for tests that run the gfs2-utils oracles against images.

#![allow(dead_code)]

use std::collections::HashMap;
use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::process::{Command, Output};

use rgfs::format::consts::{MetaType, GFS2_MAGIC};
use rgfs::format::dinode::{Dinode, DINODE_SIZE};
use rgfs::format::geometry::Geometry;
use rgfs::format::meta::{pointer_at, META_HEADER_SIZE};
use rgfs::format::rgrp::RINDEX_SIZE;
use rgfs::format::OnDisk;

#[path = "../../../tests/src/oracle.rs"]
#[allow(dead_code)]
mod oracle;

pub const MKFS_RGFS: &str = env!("CARGO_BIN_EXE_mkfs-rgfs");

/// Whether the gfs2-utils oracles are installed; prints a notice if not.
pub fn have_gfs2_utils(test: &str) -> bool {
    let ok = ["mkfs.gfs2", "fsck.gfs2", "tunegfs2", "gfs2_edit"]
        .iter()
        .all(|tool| Command::new(tool).arg("-V").output().is_ok());
    if !ok {
        oracle::missing(&format!("gfs2-utils (mkfs.gfs2, fsck.gfs2, tunegfs2, gfs2_edit), needed by {test},"));
    }
    ok
}

pub fn run(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"))
}

/// A sparse file of `bytes`.
pub fn sparse_image(path: &Path, bytes: u64) {
    let f = File::create(path).unwrap();
    f.set_len(bytes).unwrap();
}

/// The byte ranges of `file` that hold data (not holes), from
/// SEEK_DATA/SEEK_HOLE.
pub fn data_extents(file: &File) -> Vec<Range<u64>> {
    let fd = file.as_raw_fd();
    let size = file.metadata().unwrap().len() as i64;
    let mut out = Vec::new();
    let mut off = 0i64;
    while off < size {
        // SAFETY: lseek on a file descriptor we own; no memory is passed.
        let data = unsafe { libc::lseek(fd, off, libc::SEEK_DATA) };
        if data < 0 {
            break; // ENXIO: no data after `off`
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        assert!(hole > data, "SEEK_HOLE failed");
        out.push(data as u64..hole as u64);
        off = hole;
    }
    out
}

/// Merges two extent lists into sorted, disjoint ranges aligned to `align`.
pub fn union_extents(a: Vec<Range<u64>>, b: Vec<Range<u64>>, align: u64) -> Vec<Range<u64>> {
    let mut all: Vec<Range<u64>> = a
        .into_iter()
        .chain(b)
        .map(|r| (r.start / align * align)..r.end.div_ceil(align) * align)
        .collect();
    all.sort_by_key(|r| r.start);
    let mut out: Vec<Range<u64>> = Vec::new();
    for r in all {
        match out.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => out.push(r),
        }
    }
    out
}

/// Byte ranges to ignore, per block.
pub type Masks = HashMap<u64, Vec<Range<usize>>>;

/// Zeroes what legitimately differs between two mkfs runs with the same
/// UUID: dinode timestamps, log header sequence/hash/crc, and the given
/// extra masks.
fn mask_block(block: &mut [u8], extra: Option<&Vec<Range<usize>>>) {
    if block[..4] == GFS2_MAGIC.to_be_bytes() {
        let ty = u32::from_be_bytes(block[4..8].try_into().unwrap());
        if ty == MetaType::Dinode as u32 {
            block[72..96].fill(0); // di_atime, di_mtime, di_ctime
        } else if ty == MetaType::LogHeader as u32 {
            block[24..32].fill(0); // lh_sequence
            block[44..52].fill(0); // lh_hash, lh_crc
        }
    }
    for r in extra.into_iter().flatten() {
        block[r.clone()].fill(0);
    }
}

/// Compares two images of the same size block by block over every extent
/// either one wrote. Returns a description of the first differing blocks.
pub fn compare_images(a: &Path, b: &Path, bsize: u64, masks: &Masks) -> Result<u64, String> {
    let fa = File::open(a).unwrap();
    let fb = File::open(b).unwrap();
    assert_eq!(fa.metadata().unwrap().len(), fb.metadata().unwrap().len());
    let extents = union_extents(data_extents(&fa), data_extents(&fb), bsize);
    const CHUNK: u64 = 8 << 20;
    let mut ba = vec![0u8; CHUNK as usize];
    let mut bb = vec![0u8; CHUNK as usize];
    let mut compared = 0u64;
    let mut diffs = Vec::new();
    for ext in extents {
        let mut off = ext.start;
        while off < ext.end {
            let n = (ext.end - off).min(CHUNK) as usize;
            fa.read_exact_at(&mut ba[..n], off).unwrap();
            fb.read_exact_at(&mut bb[..n], off).unwrap();
            compared += n as u64;
            if ba[..n] != bb[..n] {
                for (i, (x, y)) in ba[..n]
                    .chunks_mut(bsize as usize)
                    .zip(bb[..n].chunks_mut(bsize as usize))
                    .enumerate()
                {
                    if x == y {
                        continue;
                    }
                    let block = off / bsize + i as u64;
                    mask_block(x, masks.get(&block));
                    mask_block(y, masks.get(&block));
                    if x != y && diffs.len() < 8 {
                        let at = x.iter().zip(y.iter()).position(|(p, q)| p != q).unwrap();
                        diffs.push(format!(
                            "block {block} byte {at}: mkfs.gfs2 {:02x?} mkfs.rgfs {:02x?}",
                            &x[at..(at + 8).min(x.len())],
                            &y[at..(at + 8).min(y.len())]
                        ));
                    }
                }
            }
            off += n as u64;
        }
    }
    if diffs.is_empty() {
        Ok(compared)
    } else {
        Err(diffs.join("\n"))
    }
}

fn read_block(f: &File, g: &Geometry, addr: u64) -> Vec<u8> {
    let mut b = vec![0u8; g.bsize as usize];
    f.read_exact_at(&mut b, g.byte_offset(addr)).unwrap();
    b
}

/// Where byte `offset` of a regular file's content lies: block and offset
/// inside it.
fn content_location(f: &File, g: &Geometry, dinode_addr: u64, offset: u64) -> Option<(u64, usize)> {
    let block = read_block(f, g, dinode_addr);
    let di = Dinode::decode(&block).unwrap();
    if di.height == 0 {
        let at = DINODE_SIZE + offset as usize;
        return (at < g.bsize as usize).then_some((dinode_addr, at));
    }
    let path = g.tree_path(offset / g.bsize as u64, di.height)?;
    let mut cur = block;
    let mut addr = 0;
    for (level, &index) in path.levels().iter().enumerate() {
        let area = if level == 0 {
            DINODE_SIZE
        } else {
            META_HEADER_SIZE
        };
        addr = pointer_at(&cur[area..], index as usize);
        if addr == 0 {
            return None;
        }
        cur = read_block(f, g, addr);
    }
    Some((addr, (offset % g.bsize as u64) as usize))
}

/// Masks for the bytes mkfs.gfs2 3.5.0 leaves uninitialised in each rindex
/// entry (`__pad` and `ri_reserved`), in the rindex file at `rindex_addr`
/// of image `path`, for `entries` entries plus the extra one past the end.
pub fn rindex_masks(path: &Path, g: &Geometry, rindex_addr: u64, entries: usize) -> Masks {
    let f = File::open(path).unwrap();
    let mut masks = Masks::new();
    for i in 0..=entries {
        for field in [12..16usize, 32..RINDEX_SIZE] {
            for byte in field {
                let offset = (i * RINDEX_SIZE + byte) as u64;
                if let Some((block, at)) = content_location(&f, g, rindex_addr, offset) {
                    masks.entry(block).or_default().push(at..at + 1);
                }
            }
        }
    }
    masks
}
