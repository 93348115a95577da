//! Corrupted images never make rgfs panic: random bytes of random metadata
//! blocks of a populated image are flipped; mounting, walking the tree,
//! reading every file and writing must either work or fail with an error
//! (withdraw / EIO / a clear mount error). RGFS_CORRUPT_CASES=N for more.

mod common;

use std::sync::Arc;

use rgfs::format::consts::s_if;
use rgfs::format::meta::block_type;
use rgfs_block::{MemDevice, Rng};

fn populated() -> Vec<u8> {
    let dev = Arc::new(MemDevice::from_bytes(common::mkfs_image(24, 1024, 1)));
    let mut fs = common::mount_dev(dev.clone());
    let root = fs.sys.root;
    let d = fs.create(root, b"dir", s_if::DIR | 0o755, 0, Default::default(), None).unwrap().ino;
    for i in 0..150 {
        let a = fs.create(d, format!("file-{i}").as_bytes(), s_if::REG | 0o644, 0, Default::default(), None).unwrap().ino;
        fs.write(a, (i * 997) as u64, &vec![i as u8; 300 + i * 50], false, false).unwrap();
        if i % 10 == 0 {
            fs.setxattr(a, "user.x", Some(&vec![1u8; 100 + i * 40]), 0).unwrap();
        }
    }
    let big = fs.create(root, b"big", s_if::REG | 0o644, 0, Default::default(), None).unwrap().ino;
    fs.write(big, 0, &vec![7u8; 600_000], false, false).unwrap();
    fs.shutdown().unwrap();
    dev.snapshot()
}

/// Walks everything, reads everything, then tries to write.
fn exercise(img: Vec<u8>) {
    let dev = Arc::new(MemDevice::from_bytes(img));
    let Ok((mut fs, _)) = rgfs::mount::mount(dev, &Default::default()) else { return };
    let mut stack = vec![fs.sys.root];
    let mut seen = 0;
    while let Some(a) = stack.pop() {
        seen += 1;
        if seen > 2000 {
            break;
        }
        let Ok(attr) = fs.getattr(a) else { continue };
        if attr.mode & s_if::FMT == s_if::DIR {
            if let Ok(list) = fs.readdir(a) {
                for e in list {
                    if e.name != b"." && e.name != b".." && fs.lookup(a, &e.name).is_ok() {
                        stack.push(e.inum.addr);
                    }
                }
            }
        } else {
            let _ = fs.read(a, 0, attr.size.min(1 << 20) as usize);
            let _ = fs.listxattr(a);
            let _ = fs.getxattr(a, "user.x");
        }
    }
    let root = fs.sys.root;
    if let Ok(a) = fs.create(root, b"new", s_if::REG | 0o644, 0, Default::default(), None) {
        let _ = fs.write(a.ino, 0, &[1u8; 5000], false, false);
    }
    if let Ok(a) = fs.resolve("dir") {
        let _ = fs.remove(a, b"file-3", false);
        let _ = fs.rename(a, b"file-4", root, b"moved", 0);
    }
    let _ = fs.resolve("big").and_then(|b| fs.setattr(b, rgfs::ops::SetAttr { size: Some(10), ..Default::default() }));
    let _ = fs.sync();
    let _ = fs.shutdown();
}

#[test]
fn corrupted_metadata_never_panics() {
    require_gfs2_utils!();
    let seed = common::seed("corruption");
    let cases: usize = std::env::var("RGFS_CORRUPT_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(60);
    let base = populated();
    let bsize = 1024;
    let meta: Vec<usize> = (0..base.len() / bsize).filter(|&b| block_type(&base[b * bsize..(b + 1) * bsize]).is_some()).collect();
    let mut rng = Rng::new(seed);
    for case in 0..cases {
        let mut img = base.clone();
        for _ in 0..1 + rng.below(4) {
            let b = meta[rng.below(meta.len() as u64) as usize];
            // Mostly inside the structure headers, where the fields are.
            let off = if rng.below(2) == 0 { rng.below(240) } else { rng.below(bsize as u64) } as usize;
            img[b * bsize + off] ^= 1 << rng.below(8);
        }
        let r = std::panic::catch_unwind(move || exercise(img));
        assert!(r.is_ok(), "seed {seed} case {case}: rgfs panicked on a corrupted image");
    }
}
