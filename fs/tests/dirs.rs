//! Directories at scale: 100,000 entries in one exhash directory (leaf
//! splits, hash-table doubling into JD blocks), and hash collisions forced
//! with CRC-32 forging so the table doubles to the maximum depth (17) and
//! leaves chain. fsck.gfs2 -n checks each image.

mod common;

use std::sync::Arc;

use rgfs::format::checksum::disk_hash;
use rgfs::format::consts::s_if;
use rgfs_block::MemDevice;

#[test]
fn a_directory_with_100000_entries() {
    require_gfs2_utils!();
    let dev = Arc::new(MemDevice::from_bytes(common::mkfs_image(640, 4096, 1)));
    let mut fs = common::mount_dev(dev.clone());
    let root = fs.sys.root;
    let d = fs.create(root, b"big", s_if::DIR | 0o755, 0, Default::default(), None).unwrap().ino;
    let n = 100_000;
    for i in 0..n {
        fs.create(d, format!("f{i}").as_bytes(), s_if::REG | 0o644, 0, Default::default(), None).unwrap();
    }
    let di = fs.inode(d).unwrap().di.clone();
    assert!(di.is_exhash());
    assert_eq!(di.entries, n + 2);
    assert!(di.height > 0, "a table this big lives in JD blocks (depth {})", di.depth);
    assert_eq!(fs.readdir(d).unwrap().len(), n as usize + 2);
    for i in (0..n).step_by(7) {
        assert!(fs.lookup(d, format!("f{i}").as_bytes()).is_ok(), "f{i} not found");
    }
    for i in (0..n).step_by(2) {
        fs.remove(d, format!("f{i}").as_bytes(), false).unwrap();
    }
    assert_eq!(fs.readdir(d).unwrap().len(), n as usize / 2 + 2);
    assert_eq!(fs.lookup(d, b"f0").unwrap_err().errno(), libc::ENOENT);
    fs.shutdown().unwrap();
    drop(fs);
    common::fsck(&dev.snapshot()).unwrap();
}

/// Four bytes that, appended to `prefix`, make the CRC-32 of the whole
/// equal `target` (the standard CRC forging by inverting the table).
fn forge(prefix: &[u8], target: u32) -> [u8; 4] {
    const POLY: u32 = 0xEDB8_8320;
    let mut table = [0u32; 256];
    let mut inv = [0u8; 256];
    for i in 0..256u32 {
        let mut c = i;
        for _ in 0..8 {
            c = if c & 1 != 0 { (c >> 1) ^ POLY } else { c >> 1 };
        }
        table[i as usize] = c;
        inv[(c >> 24) as usize] = i as u8;
    }
    let mut r = !target;
    let mut idx = [0u8; 4];
    for k in (0..4).rev() {
        let i = inv[(r >> 24) as usize];
        idx[k] = i;
        r = (r ^ table[i as usize]) << 8;
    }
    let mut p = !disk_hash(prefix);
    let mut out = [0u8; 4];
    for k in 0..4 {
        out[k] = ((p ^ idx[k] as u32) & 0xff) as u8;
        p = (p >> 8) ^ table[idx[k] as usize];
    }
    out
}

#[test]
fn colliding_hashes_double_to_the_maximum_depth_and_chain_leaves() {
    require_gfs2_utils!();
    // 512-byte blocks: 7 entries per leaf, a 32-pointer table to start.
    let dev = Arc::new(MemDevice::from_bytes(common::mkfs_image(48, 512, 1)));
    let mut fs = common::mount_dev(dev.clone());
    let root = fs.sys.root;
    let d = fs.create(root, b"collide", s_if::DIR | 0o755, 0, Default::default(), None).unwrap().ino;
    let target = 0x1234_5678;
    let mut names = Vec::new();
    let mut k = 0u32;
    while names.len() < 40 {
        let prefix = format!("c{k:06}-");
        k += 1;
        let tail = forge(prefix.as_bytes(), target);
        if tail.iter().any(|&b| b == 0 || b == b'/') {
            continue;
        }
        let mut name = prefix.into_bytes();
        name.extend_from_slice(&tail);
        assert_eq!(disk_hash(&name), target, "forging failed");
        names.push(name);
    }
    for name in &names {
        fs.create(d, name, s_if::REG | 0o644, 0, Default::default(), None).unwrap();
    }
    let di = fs.inode(d).unwrap().di.clone();
    assert_eq!(di.depth, 17, "the table doubles to the maximum depth");
    let leaves = fs.dir_leaves(d).unwrap();
    assert!(leaves.len() >= 2 + names.len() / 7, "leaves chain: {} leaves", leaves.len());
    for name in &names {
        assert!(fs.lookup(d, name).is_ok());
    }
    // Remove some from the middle of the chain and look the rest up again.
    for name in names.iter().step_by(3) {
        fs.remove(d, name, false).unwrap();
    }
    for (i, name) in names.iter().enumerate() {
        assert_eq!(fs.lookup(d, name).is_ok(), i % 3 != 0);
    }
    fs.shutdown().unwrap();
    drop(fs);
    common::fsck(&dev.snapshot()).unwrap();
}
