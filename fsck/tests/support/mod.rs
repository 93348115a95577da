//! Shared by the fsck integration tests: making populated images with the
//! real mkfs.gfs2, running the oracles, the corruption language of the
//! catalog, and listing the files that survive a repair.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use rgfs::format::checksum::disk_hash;
use rgfs::format::consts::{lh, s_if, SB_OFFSET_BYTES};
use rgfs::format::dirent::{RawDirent, DIRENT_HEADER_SIZE};
use rgfs::format::log::{log_header_crc, RawLogHeader, LOG_DESCRIPTOR_SIZE};
use rgfs::format::meta::{pointer_at, set_pointer, META_HEADER_SIZE};
use rgfs::format::rgrp::{RawRgrp, RINDEX_SIZE};
use rgfs::format::{
    DescriptorKind, Dinode, LogDescriptor, LogHeader, OnDisk, StatfsChange, DINODE_SIZE,
    LEAF_HEADER_SIZE,
};
use rgfs::journal::{find_head, JournalMap};
use rgfs_block::{Access, BlockDevice, FileDevice};
use rgfs_fsck::dir;
use rgfs_fsck::file::{read_file, write_file_prefix};
use rgfs_fsck::populate::{standard_content, Populator};
use rgfs_fsck::volume::Volume;
use rgfs_fsck::{check, ExitCode, Mode, Options};
use zerocopy::FromBytes;

#[path = "../../../tests/src/oracle.rs"]
#[allow(dead_code)]
mod oracle;
#[allow(unused_imports)] // not every test file needs it
pub use oracle::missing;

pub const IMAGE_BYTES: u64 = 160 << 20;

/// Whether gfs2-utils are installed; prints a notice once when not.
pub fn have_gfs2_utils() -> bool {
    static HAVE: OnceLock<bool> = OnceLock::new();
    *HAVE.get_or_init(|| {
        let ok = Command::new("mkfs.gfs2").arg("-V").output().is_ok() && Command::new("fsck.gfs2").arg("-V").output().is_ok();
        if !ok {
            oracle::missing("gfs2-utils (mkfs.gfs2, fsck.gfs2)");
        }
        ok
    })
}

pub fn tmpdir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("temp dir"))
        .path()
}

/// Makes an empty image with mkfs.gfs2.
pub fn mkfs_gfs2(path: &Path, bytes: u64, extra: &[&str]) {
    let f = std::fs::File::create(path).expect("create image");
    f.set_len(bytes).expect("size image");
    let out = Command::new("mkfs.gfs2")
        .args([
            "-O",
            "-q",
            "-j",
            "2",
            "-J",
            "8",
            "-r",
            "128",
            "-p",
            "lock_dlm",
            "-t",
            "rgfs:test",
        ])
        .args(extra)
        .arg(path)
        .output()
        .expect("run mkfs.gfs2");
    assert!(
        out.status.success(),
        "mkfs.gfs2 failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The populated base image every catalog case starts from, as bytes.
pub fn base_image() -> &'static Vec<u8> {
    static BASE: OnceLock<Vec<u8>> = OnceLock::new();
    BASE.get_or_init(|| {
        let path = tmpdir().join("base.img");
        mkfs_gfs2(&path, IMAGE_BYTES, &[]);
        let dev = FileDevice::open(&path, Access::ReadWrite).expect("open base");
        let mut p = Populator::open(&dev).expect("open populator");
        standard_content(&mut p).expect("populate");
        p.finish().expect("finish populating");
        drop(dev);
        std::fs::read(&path).expect("read base")
    })
}

/// Writes `bytes` to `path`, leaving all-zero 4 KiB blocks as holes.
pub fn write_sparse(path: &Path, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::create(path).expect("create");
    f.set_len(bytes.len() as u64).expect("size");
    for (i, chunk) in bytes.chunks(4096).enumerate() {
        if chunk.iter().any(|&b| b != 0) {
            f.write_all_at(chunk, (i * 4096) as u64).expect("write");
        }
    }
}

/// Result of one fsck.rgfs run in process.
pub struct Run {
    pub exit: ExitCode,
    pub report: String,
}

pub fn fsck_rgfs(path: &Path, mode: Mode) -> Run {
    let access = if mode.writes() {
        Access::ReadWrite
    } else {
        Access::ReadOnly
    };
    let dev = FileDevice::open(path, access).expect("open image");
    fsck_dev(&dev, mode)
}

pub fn fsck_dev(dev: &dyn BlockDevice, mode: Mode) -> Run {
    let out = check(dev, &Options::new(mode), None);
    Run {
        exit: out.exit,
        report: out.report,
    }
}

/// Applies catalog commands to an image file.
pub fn corrupt_file(path: &Path, command: &str) {
    let dev = FileDevice::open(path, Access::ReadWrite).expect("open image");
    corrupt(&dev, command);
}

/// fsck.gfs2 with one flag; returns (exit code, output). Exit codes of 128
/// and above mean fsck.gfs2 itself failed (crashed).
///
/// fsck.gfs2 3.5.0 can loop, eating memory, on images it half-repaired;
/// it gets 30 s (it needs well under one on these images) and is killed
/// after that (exit 137, an oracle failure).
pub fn fsck_gfs2(path: &Path, flag: &str) -> (i32, String) {
    let out = Command::new("timeout")
        .args(["-s", "KILL", "30", "fsck.gfs2", flag])
        .arg(path)
        .output()
        .expect("run fsck.gfs2");
    let code = out.status.code().unwrap_or_else(|| {
        use std::os::unix::process::ExitStatusExt;
        128 + out.status.signal().unwrap_or(0)
    });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (code, text)
}

// ---------------------------------------------------------------------
// Opening an image to look around or corrupt it.

pub struct Image<'d> {
    pub dev: &'d dyn BlockDevice,
}

impl<'d> Image<'d> {
    pub fn new(dev: &'d dyn BlockDevice) -> Image<'d> {
        Image { dev }
    }

    /// A volume with its resource groups loaded (trusting the rindex).
    pub fn volume(&self) -> Volume<'d> {
        let mut sb_buf = vec![0u8; 4096];
        self.dev.read_at(SB_OFFSET_BYTES, &mut sb_buf).unwrap();
        let bsize = rgfs::format::superblock::RawSuperblock::ref_from_prefix(&sb_buf)
            .unwrap()
            .0
            .sb_bsize
            .get();
        let geom = rgfs::format::Geometry::new(bsize)
            .unwrap_or_else(|_| rgfs::format::Geometry::new(4096).unwrap());
        let mut vol = Volume::new(self.dev, geom, true);
        let ris = self.rindex_entries(&vol);
        rgfs_fsck::volume::load_rgrps_trusting(&mut vol, &ris).expect("load rgrps");
        vol
    }

    fn sb(&self) -> rgfs::format::Superblock {
        let mut buf = vec![0u8; 4096];
        self.dev.read_at(SB_OFFSET_BYTES, &mut buf).unwrap();
        rgfs::format::Superblock::decode(&buf).expect("superblock")
    }

    fn rindex_entries(&self, vol: &Volume) -> Vec<rgfs::format::Rindex> {
        let sb = self.sb();
        let e = dir::lookup(vol, sb.master_dir.addr, b"rindex")
            .unwrap()
            .expect("rindex");
        let bytes = read_file(vol, e.inum.addr).unwrap();
        bytes
            .chunks_exact(RINDEX_SIZE)
            .filter_map(|c| rgfs::format::Rindex::decode(c).ok())
            .collect()
    }

    pub fn root(&self) -> u64 {
        self.sb().root_dir.addr
    }

    pub fn master(&self) -> u64 {
        self.sb().master_dir.addr
    }

    /// Resolves a path: "/a/b" from the root, "master:/per_node/x" from the
    /// master directory.
    pub fn lookup(&self, vol: &Volume, path: &str) -> u64 {
        let (mut at, rest) = match path.strip_prefix("master:") {
            Some(r) => (self.master(), r),
            None => (self.root(), path),
        };
        for part in rest.split('/').filter(|p| !p.is_empty()) {
            at = dir::lookup(vol, at, part.as_bytes())
                .unwrap()
                .unwrap_or_else(|| panic!("{path}: no {part}"))
                .inum
                .addr;
        }
        at
    }
}

// ---------------------------------------------------------------------
// Field tables: (name, offset, width in bytes).

const SB_FIELDS: &[(&str, usize, usize)] = &[
    ("mh_magic", 0, 4),
    ("mh_type", 4, 4),
    ("mh_format", 16, 4),
    ("sb_fs_format", 24, 4),
    ("sb_multihost_format", 28, 4),
    ("sb_bsize", 36, 4),
    ("sb_bsize_shift", 40, 4),
    ("sb_master_dir.no_addr", 56, 8),
    ("sb_root_dir.no_formal_ino", 80, 8),
    ("sb_root_dir.no_addr", 88, 8),
    ("sb_lockproto", 96, 8),
];
const RGRP_FIELDS: &[(&str, usize, usize)] = &[
    ("mh_magic", 0, 4),
    ("mh_type", 4, 4),
    ("rg_flags", 24, 4),
    ("rg_free", 28, 4),
    ("rg_dinodes", 32, 4),
    ("rg_skip", 36, 4),
    ("rg_igeneration", 40, 8),
    ("rg_data0", 48, 8),
    ("rg_data", 56, 4),
    ("rg_bitbytes", 60, 4),
    ("rg_crc", 64, 4),
];
const RINDEX_FIELDS: &[(&str, usize, usize)] = &[
    ("ri_addr", 0, 8),
    ("ri_length", 8, 4),
    ("ri_data0", 16, 8),
    ("ri_data", 24, 4),
    ("ri_bitbytes", 28, 4),
];
const DINODE_FIELDS: &[(&str, usize, usize)] = &[
    ("mh_magic", 0, 4),
    ("mh_type", 4, 4),
    ("no_formal_ino", 24, 8),
    ("no_addr", 32, 8),
    ("di_mode", 40, 4),
    ("di_nlink", 52, 4),
    ("di_size", 56, 8),
    ("di_blocks", 64, 8),
    ("di_flags", 128, 4),
    ("di_height", 138, 2),
    ("di_depth", 146, 2),
    ("di_entries", 148, 4),
    ("di_eattr", 168, 8),
    ("di_mtime_nsec", 180, 4),
];
const LEAF_FIELDS: &[(&str, usize, usize)] = &[
    ("mh_magic", 0, 4),
    ("lf_depth", 24, 2),
    ("lf_entries", 26, 2),
    ("lf_next", 32, 8),
];
const DIRENT_FIELDS: &[(&str, usize, usize)] = &[
    ("no_formal_ino", 0, 8),
    ("no_addr", 8, 8),
    ("de_hash", 16, 4),
    ("de_rec_len", 20, 2),
    ("de_name_len", 22, 2),
    ("de_type", 24, 2),
];
const EA_FIELDS: &[(&str, usize, usize)] = &[
    ("mh_magic", 0, 4),
    ("ea_rec_len", 24, 4),
    ("ea_data_len", 28, 4),
    ("ea_type", 33, 1),
    ("ea_flags", 34, 1),
];
const LH_FIELDS: &[(&str, usize, usize)] = &[
    ("mh_magic", 0, 4),
    ("lh_sequence", 24, 8),
    ("lh_flags", 32, 4),
    ("lh_blkno", 40, 4),
    ("lh_hash", 44, 4),
];

fn field(table: &[(&str, usize, usize)], name: &str) -> (usize, usize) {
    table
        .iter()
        .find(|f| f.0 == name)
        .map(|f| (f.1, f.2))
        .unwrap_or_else(|| panic!("unknown field {name}"))
}

fn put(buf: &mut [u8], at: usize, width: usize, value: u64) {
    let bytes = value.to_be_bytes();
    buf[at..at + width].copy_from_slice(&bytes[8 - width..]);
}

fn parse_value(s: &str) -> u64 {
    if let Some(neg) = s.strip_prefix('-') {
        return (parse_value(neg) as i64).wrapping_neg() as u64;
    }
    if let Some(h) = s.strip_prefix("0x") {
        u64::from_str_radix(h, 16).unwrap()
    } else if let Some(o) = s.strip_prefix("0o") {
        u64::from_str_radix(o, 8).unwrap()
    } else {
        s.parse().unwrap_or_else(|_| panic!("bad value {s}"))
    }
}

fn read(dev: &dyn BlockDevice, bsize: usize, block: u64) -> Vec<u8> {
    let mut buf = vec![0u8; bsize];
    dev.read_at(block * bsize as u64, &mut buf).unwrap();
    buf
}

fn write(dev: &dyn BlockDevice, bsize: usize, block: u64, buf: &[u8]) {
    dev.write_at(block * bsize as u64, buf).unwrap();
}

/// The area holding entry `name` of directory `dir`: (block, area start,
/// offset of the entry in the area).
fn find_dirent(vol: &Volume, dir_addr: u64, name: &[u8]) -> (u64, usize, usize) {
    let block = vol.read(dir_addr).unwrap();
    let d = Dinode::decode(&block).unwrap();
    let areas: Vec<(u64, usize)> = if d.is_exhash() {
        let t = dir::read_hash_table(vol, &block).unwrap();
        dir::leaves(vol, &t)
            .into_iter()
            .map(|l| (l, LEAF_HEADER_SIZE))
            .collect()
    } else {
        vec![(dir_addr, DINODE_SIZE)]
    };
    for (b, start) in areas {
        let buf = vol.read(b).unwrap();
        let mut off = 0;
        while off + DIRENT_HEADER_SIZE <= buf.len() - start {
            let h = RawDirent::ref_from_prefix(&buf[start + off..]).unwrap().0;
            let nl = h.de_name_len.get() as usize;
            if &buf[start + off + 40..start + off + 40 + nl] == name {
                return (b, start, off);
            }
            off += h.de_rec_len.get() as usize;
        }
    }
    panic!(
        "no entry {:?} in directory {dir_addr}",
        String::from_utf8_lossy(name)
    )
}

/// Applies one corruption command of the catalog language to an image.
/// See `tests/catalog/README.md` for the commands.
pub fn corrupt(dev: &dyn BlockDevice, command: &str) {
    let img = Image::new(dev);
    let vol = img.volume();
    let bsize = vol.bsize();
    let w: Vec<&str> = command.split_whitespace().collect();
    match w.as_slice() {
        ["sb", f, v] => {
            let mut buf = vec![0u8; 4096];
            dev.read_at(SB_OFFSET_BYTES, &mut buf).unwrap();
            let (at, width) = field(SB_FIELDS, f);
            put(&mut buf, at, width, parse_value(v));
            dev.write_at(SB_OFFSET_BYTES, &buf).unwrap();
        }
        ["sb", "lockproto", "string", s] => {
            let mut buf = vec![0u8; 4096];
            dev.read_at(SB_OFFSET_BYTES, &mut buf).unwrap();
            buf[96..160].fill(0);
            buf[96..96 + s.len()].copy_from_slice(s.as_bytes());
            dev.write_at(SB_OFFSET_BYTES, &buf).unwrap();
        }
        ["rgrp", i, f, v, rest @ ..] => {
            let ri = vol.rgrps[i.parse::<usize>().unwrap()].ri;
            let mut buf = read(dev, bsize, ri.addr);
            let (at, width) = field(RGRP_FIELDS, f);
            put(&mut buf, at, width, parse_value(v));
            if rest.contains(&"+crc") {
                let raw = RawRgrp::mut_from_prefix(&mut buf).unwrap().0;
                raw.rg_crc = raw.compute_crc().into();
            }
            write(dev, bsize, ri.addr, &buf);
        }
        ["rgrp-bitmap-block", i, k, "zero"] => {
            let ri = vol.rgrps[i.parse::<usize>().unwrap()].ri;
            write(
                dev,
                bsize,
                ri.addr + k.parse::<u64>().unwrap(),
                &vec![0u8; bsize],
            );
        }
        ["rindex", i, f, v] => {
            let sb = img.sb();
            let e = dir::lookup(&vol, sb.master_dir.addr, b"rindex")
                .unwrap()
                .unwrap();
            let mut bytes = read_file(&vol, e.inum.addr).unwrap();
            let (at, width) = field(RINDEX_FIELDS, f);
            put(
                &mut bytes[i.parse::<usize>().unwrap() * RINDEX_SIZE..],
                at,
                width,
                parse_value(v),
            );
            write_file_prefix(&vol, e.inum.addr, &bytes).unwrap();
        }
        ["bitmap", target, state] => {
            let block = block_spec(&img, &vol, target);
            let st = match *state {
                "free" => rgfs::format::BlockState::Free,
                "used" => rgfs::format::BlockState::Used,
                "unlinked" => rgfs::format::BlockState::Unlinked,
                "dinode" => rgfs::format::BlockState::Dinode,
                _ => panic!("state {state}"),
            };
            let i = vol.rgrp_of(block).unwrap();
            let mut vol = vol;
            let rg = &mut vol.rgrps[i];
            rgfs::format::bitmap::set(&mut rg.bitmap, (block - rg.ri.data0) as u32, st);
            // Bits only: the header counts stay as they were.
            let blocks = vol.rgrp_blocks(i);
            for (b, content) in blocks.into_iter().skip(1) {
                write(dev, bsize, b, &content);
            }
            let ri = vol.rgrps[i].ri;
            let mut hdr = read(dev, bsize, ri.addr);
            let (off, span) = vol.geom.bitmap_block_span(0, ri.bitbytes);
            hdr[off..off + span.len()].copy_from_slice(&vol.rgrps[i].bitmap[..span.len()]);
            write(dev, bsize, ri.addr, &hdr);
        }
        ["inode", p, f, v] => {
            let addr = img.lookup(&vol, p);
            let mut buf = read(dev, bsize, addr);
            let (at, width) = field(DINODE_FIELDS, f);
            put(&mut buf, at, width, parse_value(v));
            write(dev, bsize, addr, &buf);
        }
        ["leaf", p, n, f, v] => {
            let addr = img.lookup(&vol, p);
            let block = vol.read(addr).unwrap();
            let t = dir::read_hash_table(&vol, &block).unwrap();
            let leaf = dir::leaves(&vol, &t)[n.parse::<usize>().unwrap()];
            let mut buf = read(dev, bsize, leaf);
            let (at, width) = field(LEAF_FIELDS, f);
            put(&mut buf, at, width, parse_value(v));
            write(dev, bsize, leaf, &buf);
        }
        ["hashtable", p, idx, v] => {
            let addr = img.lookup(&vol, p);
            let mut buf = read(dev, bsize, addr);
            set_pointer(
                &mut buf[DINODE_SIZE..],
                idx.parse().unwrap(),
                parse_value(v),
            );
            write(dev, bsize, addr, &buf);
        }
        ["dirent", d, name, "target", p] => {
            let addr = img.lookup(&vol, d);
            let target = block_spec(&img, &vol, p);
            let (b, start, off) = find_dirent(&vol, addr, name.as_bytes());
            let mut buf = read(dev, bsize, b);
            put(&mut buf[start + off..], 8, 8, target);
            write(dev, bsize, b, &buf);
        }
        ["dirent", d, name, f, v] => {
            let addr = img.lookup(&vol, d);
            let (b, start, off) = find_dirent(&vol, addr, name.as_bytes());
            let mut buf = read(dev, bsize, b);
            let (at, width) = field(DIRENT_FIELDS, f);
            put(&mut buf[start + off..], at, width, parse_value(v));
            write(dev, bsize, b, &buf);
        }
        ["unlink", d, name] => {
            let addr = img.lookup(&vol, d);
            dir::remove(&vol, addr, name.as_bytes())
                .unwrap()
                .expect("entry");
        }
        ["link", d, name, p] => {
            let addr = img.lookup(&vol, d);
            let target = img.lookup(&vol, p);
            let tb = vol.read(target).unwrap();
            let td = Dinode::decode(&tb).unwrap();
            let mut vol = vol;
            dir::insert(
                &mut vol,
                addr,
                name.as_bytes(),
                td.num,
                td.dirent_type(),
                &|_| true,
            )
            .unwrap();
            vol.write_dirty_rgrps().unwrap();
        }
        ["ea", p, f, v] => {
            let addr = img.lookup(&vol, p);
            let ino = Dinode::decode(&vol.read(addr).unwrap()).unwrap();
            let mut ea = ino.eattr;
            if ino.flags & rgfs::format::consts::dif::EA_INDIRECT != 0 {
                ea = pointer_at(&vol.read(ea).unwrap()[META_HEADER_SIZE..], 0);
            }
            let mut buf = read(dev, bsize, ea);
            let (at, width) = field(EA_FIELDS, f);
            put(&mut buf, at, width, parse_value(v));
            write(dev, bsize, ea, &buf);
        }
        ["pointer", p, level, idx, v] => {
            // level 0: the dinode's pointers; level 1: its first indirect block.
            let addr = img.lookup(&vol, p);
            let mut b = addr;
            let mut start = DINODE_SIZE;
            if *level == "1" {
                b = pointer_at(&vol.read(addr).unwrap()[DINODE_SIZE..], 0);
                start = META_HEADER_SIZE;
            }
            let mut buf = read(dev, bsize, b);
            let value = if let Some(other) = v.strip_prefix("data-of:") {
                first_data_block(&vol, img.lookup(&vol, other))
            } else {
                parse_value(v)
            };
            set_pointer(&mut buf[start..], idx.parse().unwrap(), value);
            write(dev, bsize, b, &buf);
        }
        ["zero", target] => {
            let block = block_spec(&img, &vol, target);
            write(dev, bsize, block, &vec![0u8; bsize]);
        }
        ["statfs", f, v] => {
            let sb = img.sb();
            let e = dir::lookup(&vol, sb.master_dir.addr, b"statfs")
                .unwrap()
                .unwrap();
            let bytes = read_file(&vol, e.inum.addr).unwrap();
            let mut st = StatfsChange::decode(&bytes).unwrap();
            let v = parse_value(v) as i64;
            match *f {
                "free" => st.free = v,
                "dinodes" => st.dinodes = v,
                "total" => st.total = v,
                _ => panic!("statfs field {f}"),
            }
            write_file_prefix(&vol, e.inum.addr, &st.to_bytes()).unwrap();
        }
        ["statfs-change", jid, f, v] => {
            let addr = img.lookup(&vol, &format!("master:/per_node/statfs_change{jid}"));
            let bytes = read_file(&vol, addr).unwrap();
            let mut st = StatfsChange::decode(&bytes).unwrap();
            let v = parse_value(v) as i64;
            match *f {
                "free" => st.free = v,
                "dinodes" => st.dinodes = v,
                _ => panic!("statfs_change field {f}"),
            }
            write_file_prefix(&vol, addr, &st.to_bytes()).unwrap();
        }
        ["journal", jid, "header", which, f, v, rest @ ..] => {
            let (map, head) = journal(&img, &vol, jid);
            let lblock = match *which {
                "head" => head,
                n => n.parse().unwrap(),
            };
            let b = map.block(lblock);
            let mut buf = read(dev, bsize, b);
            let (at, width) = field(LH_FIELDS, f);
            put(&mut buf, at, width, parse_value(v));
            if rest.contains(&"+hash") {
                let raw = RawLogHeader::mut_from_prefix(&mut buf).unwrap().0;
                raw.lh_hash = raw.compute_hash().into();
                let crc = log_header_crc(&buf);
                buf[48..52].copy_from_slice(&crc.to_be_bytes());
            }
            write(dev, bsize, b, &buf);
        }
        ["journal", jid, "dirty", target] => {
            // A committed transaction logging one metadata block, after
            // the head, without UNMOUNT: replay writes it home.
            let (map, head) = journal(&img, &vol, jid);
            let home = block_spec(&img, &vol, target);
            let old = LogHeader::decode(&read(dev, bsize, map.block(head))).unwrap();
            write_commit(dev, bsize, &map, map.next(head), old.sequence + 1, home);
        }
        ["journal", jid, "renumber", first] => {
            // A clean log as mkfs leaves it, with known numbers: block N
            // holds an unmount header of sequence FIRST + N.
            let (map, _) = journal(&img, &vol, jid);
            let first: u64 = parse_value(first);
            for l in 0..map.jd_blocks() {
                write_log_header(dev, bsize, &map, l, first + l as u64, lh::UNMOUNT, l);
            }
        }
        ["journal", jid, "commit", at, seq, target] => {
            let (map, _) = journal(&img, &vol, jid);
            let home = block_spec(&img, &vol, target);
            write_commit(
                dev,
                bsize,
                &map,
                at.parse().unwrap(),
                parse_value(seq),
                home,
            );
        }
        ["journal", jid, kind @ ("unmount" | "flush"), at, seq] => {
            let (map, _) = journal(&img, &vol, jid);
            let flags = if *kind == "unmount" {
                lh::UNMOUNT
            } else {
                lh::FLUSH_NORMAL
            };
            let at = at.parse().unwrap();
            write_log_header(dev, bsize, &map, at, parse_value(seq), flags, at);
        }
        ["journal", jid, "garbage", n] => {
            let (map, _) = journal(&img, &vol, jid);
            for l in 0..map.jd_blocks().min(n.parse().unwrap()) {
                write(dev, bsize, map.block(l), &vec![0xA5u8; bsize]);
            }
        }
        _ => panic!("unknown corruption command: {command}"),
    }
    dev.flush().unwrap();
}

/// Writes a log header at journal block `at`.
fn write_log_header(
    dev: &dyn BlockDevice,
    bsize: usize,
    map: &JournalMap,
    at: u32,
    sequence: u64,
    flags: u32,
    tail: u32,
) {
    let h = LogHeader {
        sequence,
        flags,
        tail,
        blkno: at,
        addr: map.block(at),
        jinode: map.dinode,
        ..LogHeader::default()
    };
    let mut b = vec![0u8; bsize];
    h.encode_into(&mut b);
    write(dev, bsize, map.block(at), &b);
}

/// Writes a commit logging block `home` (its current contents with the
/// mtime changed) at journal blocks `at` (descriptor), `at + 1` (the copy)
/// and `at + 2` (the header, sequence `sequence`, tail `at`).
fn write_commit(
    dev: &dyn BlockDevice,
    bsize: usize,
    map: &JournalMap,
    at: u32,
    sequence: u64,
    home: u64,
) {
    let (copy_at, lh_at) = (map.next(at), map.next(map.next(at)));
    let mut ld = vec![0u8; bsize];
    LogDescriptor {
        kind: DescriptorKind::Metadata,
        length: 2,
        data1: 1,
        data2: 0,
    }
    .encode_into(&mut ld);
    ld[LOG_DESCRIPTOR_SIZE..LOG_DESCRIPTOR_SIZE + 8].copy_from_slice(&home.to_be_bytes());
    write(dev, bsize, map.block(at), &ld);
    let mut copy = read(dev, bsize, home);
    put(&mut copy, 88, 8, 1_234_567);
    write(dev, bsize, map.block(copy_at), &copy);
    write_log_header(dev, bsize, map, lh_at, sequence, lh::FLUSH_NORMAL, at);
}

fn journal(img: &Image, vol: &Volume, jid: &str) -> (JournalMap, u32) {
    let addr = img.lookup(vol, &format!("master:/jindex/journal{jid}"));
    let reader = (vol.dev, &vol.geom);
    let map = JournalMap::load(&vol.geom, addr, vol.dev_blocks, &reader).unwrap();
    let head = find_head(vol.dev, &vol.geom, &map).unwrap();
    (map, head.lblock)
}

fn first_data_block(vol: &Volume, addr: u64) -> u64 {
    let block = vol.read(addr).unwrap();
    let mut p = pointer_at(&block[DINODE_SIZE..], 0);
    let d = Dinode::decode(&block).unwrap();
    for _ in 1..d.height {
        p = pointer_at(&vol.read(p).unwrap()[META_HEADER_SIZE..], 0);
    }
    p
}

/// A block named in the catalog language: a number, `inode:PATH`,
/// `ind:PATH` (its first indirect block), `data:PATH` (its first data
/// block), `leaf:PATH:N`, `ea:PATH`.
pub fn block_spec(img: &Image, vol: &Volume, spec: &str) -> u64 {
    if let Ok(n) = spec.parse() {
        return n;
    }
    let (kind, rest) = spec.split_once(':').expect("kind:path");
    match kind {
        "inode" => img.lookup(vol, rest),
        "ind" => pointer_at(&vol.read(img.lookup(vol, rest)).unwrap()[DINODE_SIZE..], 0),
        "data" => first_data_block(vol, img.lookup(vol, rest)),
        "ea" => {
            Dinode::decode(&vol.read(img.lookup(vol, rest)).unwrap())
                .unwrap()
                .eattr
        }
        "eadata" => {
            let ea = Dinode::decode(&vol.read(img.lookup(vol, rest)).unwrap())
                .unwrap()
                .eattr;
            let buf = vol.read(ea).unwrap();
            let recs = rgfs::format::ea::ea_records(&buf, vol.geom.bsize).unwrap();
            recs.iter()
                .find_map(|r| r.value.pointers().next())
                .expect("an unstuffed xattr")
        }
        "leaf" => {
            let (p, n) = rest.rsplit_once(':').unwrap();
            let block = vol.read(img.lookup(vol, p)).unwrap();
            let t = dir::read_hash_table(vol, &block).unwrap();
            dir::leaves(vol, &t)[n.parse::<usize>().unwrap()]
        }
        _ => panic!("block spec {spec}"),
    }
}

// ---------------------------------------------------------------------
// What survives a repair.

/// Every inode reachable from the root or the master directory with a
/// fingerprint of its content: key → (file type, CRC-32 of the content or
/// symlink target, size). The key of an ordinary inode is its block
/// (`#N`): it survives wherever it is linked, lost+found included. A
/// system file is keyed by its path in the master tree (one fsck may make
/// it again at another block) and fingerprinted by existence only (its
/// counters are recomputed differently by each fsck).
pub fn survivors(dev: &dyn BlockDevice) -> BTreeMap<String, (u32, u32, u64)> {
    let img = Image::new(dev);
    let mut out = BTreeMap::new();
    let mut buf = vec![0u8; 4096];
    img.dev.read_at(SB_OFFSET_BYTES, &mut buf).unwrap();
    if rgfs::format::Superblock::decode(&buf).is_err() {
        eprintln!("no valid superblock: no survivors");
        return out;
    }
    let vol = img.volume();
    let root = img.root();
    let mut stack = vec![
        (root, String::from("/")),
        (img.master(), String::from("master:/")),
    ];
    let mut seen = std::collections::HashSet::new();
    while let Some((d, path)) = stack.pop() {
        if !seen.insert(d) {
            continue;
        }
        let Ok(entries) = dir::entries(&vol, d) else {
            continue;
        };
        for e in entries {
            let name = String::from_utf8_lossy(&e.name).into_owned();
            let child_path = format!("{path}{name}/");
            // lost+found itself is made by whichever fsck needs it.
            if name == "." || name == ".." || (d == root && name == "lost+found") {
                if name == "lost+found" {
                    stack.push((e.inum.addr, child_path));
                }
                continue;
            }
            let addr = e.inum.addr;
            let Ok(block) = vol.read(addr) else { continue };
            let Ok(di) = Dinode::decode(&block) else {
                continue;
            };
            let ty = di.mode & s_if::FMT;
            let system = di.flags & rgfs::format::consts::dif::SYSTEM != 0;
            if ty == s_if::DIR {
                stack.push((addr, child_path.clone()));
            }
            if system {
                out.insert(child_path, (ty, 0, 0));
                continue;
            }
            let fingerprint = if ty == s_if::REG || ty == s_if::LNK {
                read_file(&vol, addr).map(|c| disk_hash(&c)).unwrap_or(0)
            } else {
                0
            };
            // A directory's size is layout, not content.
            let size = if ty == s_if::DIR { 0 } else { di.size };
            out.insert(format!("#{addr}"), (ty, fingerprint, size));
        }
    }
    out
}

pub fn case_path(name: &str) -> PathBuf {
    tmpdir().join(format!("{name}.img"))
}
