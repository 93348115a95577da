//! Model-based property test: random sequences of create, write, truncate,
//! rename, link, unlink, mkdir, rmdir, setxattr and fsync run against rgfs
//! (in-process, on an image made by mkfs.gfs2) and against an in-memory
//! model; results (values and errnos) are compared step by step, the whole
//! tree is compared every few steps, and fsck.gfs2 -n checks the image at
//! the end of every case.
//!
//! Covers: stuffed/unstuffed files, trees of height 1–2, sparse writes,
//! truncate up/down, linear→exhash directories with leaf splits (Populate),
//! hard links, renames over targets and of directories (loops refused),
//! xattrs in EA blocks (stuffed and ED values), unlink/rmdir errors.
//! Does not cover: crashes (see crash.rs), FUSE (see the tests crate).
//! Cases: RGFS_MODEL_CASES (default 12).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use proptest::prelude::*;
use rgfs::core::FsCore;
use rgfs::format::consts::s_if;
use rgfs::ops::{Creds, SetAttr};
use rgfs_block::MemDevice;

#[derive(Clone, Debug)]
enum Op {
    Create(usize, u8),
    Mkdir(usize, u8),
    Write(usize, u64, usize, u8),
    Truncate(usize, u64),
    Rename(usize, usize, u8),
    Link(usize, usize, u8),
    Unlink(usize),
    Rmdir(usize),
    SetXattr(usize, u8, usize),
    RemoveXattr(usize, u8),
    Fsync,
    Populate(usize, usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (any::<usize>(), 0u8..6).prop_map(|(d, n)| Op::Create(d, n)),
        2 => (any::<usize>(), 0u8..6).prop_map(|(d, n)| Op::Mkdir(d, n)),
        5 => (any::<usize>(), prop_oneof![0u64..5000, 0u64..3_000_000], prop_oneof![1usize..200, 1usize..70_000], any::<u8>())
            .prop_map(|(f, o, l, b)| Op::Write(f, o, l, b)),
        2 => (any::<usize>(), prop_oneof![0u64..5000, 0u64..3_000_000]).prop_map(|(f, s)| Op::Truncate(f, s)),
        3 => (any::<usize>(), any::<usize>(), 0u8..6).prop_map(|(s, d, n)| Op::Rename(s, d, n)),
        1 => (any::<usize>(), any::<usize>(), 0u8..6).prop_map(|(f, d, n)| Op::Link(f, d, n)),
        2 => any::<usize>().prop_map(Op::Unlink),
        1 => any::<usize>().prop_map(Op::Rmdir),
        2 => (any::<usize>(), 0u8..4, prop_oneof![0usize..100, 0usize..9000]).prop_map(|(p, k, l)| Op::SetXattr(p, k, l)),
        1 => (any::<usize>(), 0u8..4).prop_map(|(p, k)| Op::RemoveXattr(p, k)),
        1 => Just(Op::Fsync),
        1 => (any::<usize>(), 60usize..260).prop_map(|(d, n)| Op::Populate(d, n)),
    ]
}

#[derive(Clone, Debug, Default, PartialEq)]
struct Obj {
    dir: bool,
    content: Vec<u8>,
    xattrs: BTreeMap<String, Vec<u8>>,
}

#[derive(Default)]
struct Model {
    paths: BTreeMap<String, usize>,
    objs: HashMap<usize, Obj>,
    next: usize,
}

fn parent_of(p: &str) -> (&str, &str) {
    match p.rfind('/') {
        Some(i) => (&p[..i], &p[i + 1..]),
        None => ("", p),
    }
}

fn join(d: &str, n: &str) -> String {
    if d.is_empty() {
        n.to_string()
    } else {
        format!("{d}/{n}")
    }
}

impl Model {
    fn new() -> Model {
        let mut m = Model::default();
        m.objs.insert(0, Obj { dir: true, ..Default::default() });
        m.paths.insert(String::new(), 0);
        m.next = 1;
        m
    }
    fn pick(&self, i: usize, f: impl Fn(&Obj) -> bool, root: bool) -> Option<String> {
        let c: Vec<&String> = self.paths.iter().filter(|(p, id)| (root || !p.is_empty()) && f(&self.objs[id])).map(|(p, _)| p).collect();
        (!c.is_empty()).then(|| c[i % c.len()].clone())
    }
    fn children(&self, d: &str) -> Vec<String> {
        self.paths.keys().filter(|p| !p.is_empty() && parent_of(p).0 == d).cloned().collect()
    }
    fn add(&mut self, path: String, dir: bool) {
        let id = self.next;
        self.next += 1;
        self.objs.insert(id, Obj { dir, ..Default::default() });
        self.paths.insert(path, id);
    }
    fn remove_path(&mut self, p: &str) {
        let id = self.paths.remove(p).unwrap();
        if !self.paths.values().any(|&v| v == id) {
            self.objs.remove(&id);
        }
    }
}

fn name(n: u8) -> String {
    format!("n{n}")
}

type R = Result<(), i32>;

fn apply(fs: &mut FsCore, m: &mut Model, op: &Op) -> Result<(R, R), String> {
    let creds = Creds::default();
    let res = |r: rgfs::Result<()>| -> Result<R, String> {
        match r {
            Ok(()) => Ok(Ok(())),
            Err(rgfs::Error::Errno(e)) => Ok(Err(e)),
            Err(e) => Err(format!("fatal: {e}")),
        }
    };
    let addr = |fs: &mut FsCore, p: &str| fs.resolve(p).map_err(|e| format!("resolve {p}: {e}"));
    Ok(match op {
        Op::Create(d, n) | Op::Mkdir(d, n) => {
            let dir = matches!(op, Op::Mkdir(..));
            let Some(dp) = m.pick(*d, |o| o.dir, true) else { return Ok((Ok(()), Ok(()))) };
            let path = join(&dp, &name(*n));
            let a = addr(fs, &dp)?;
            let mode = if dir { s_if::DIR | 0o755 } else { s_if::REG | 0o644 };
            let got = res(fs.create(a, name(*n).as_bytes(), mode, 0, creds, None).map(|_| ()))?;
            let want = if m.paths.contains_key(&path) { Err(libc::EEXIST) } else { m.add(path, dir); Ok(()) };
            (got, want)
        }
        Op::Write(f, off, len, b) => {
            let Some(p) = m.pick(*f, |o| !o.dir, false) else { return Ok((Ok(()), Ok(()))) };
            let a = addr(fs, &p)?;
            let data = vec![*b; *len];
            let got = res(fs.write(a, *off, &data, false, false).map(|_| ()))?;
            let o = m.objs.get_mut(&m.paths[&p]).unwrap();
            let end = *off as usize + len;
            if o.content.len() < end {
                o.content.resize(end, 0);
            }
            o.content[*off as usize..end].copy_from_slice(&data);
            (got, Ok(()))
        }
        Op::Truncate(f, s) => {
            let Some(p) = m.pick(*f, |o| !o.dir, false) else { return Ok((Ok(()), Ok(()))) };
            let a = addr(fs, &p)?;
            let got = res(fs.setattr(a, SetAttr { size: Some(*s), ..Default::default() }).map(|_| ()))?;
            m.objs.get_mut(&m.paths[&p]).unwrap().content.resize(*s as usize, 0);
            (got, Ok(()))
        }
        Op::Rename(s, d, n) => {
            let Some(sp) = m.pick(*s, |_| true, false) else { return Ok((Ok(()), Ok(()))) };
            let Some(dd) = m.pick(*d, |o| o.dir, true) else { return Ok((Ok(()), Ok(()))) };
            let dst = join(&dd, &name(*n));
            let (spd, sn) = parent_of(&sp);
            let (sa, da) = (addr(fs, spd)?, addr(fs, &dd)?);
            let got = res(fs.rename(sa, sn.as_bytes(), da, name(*n).as_bytes(), 0))?;
            let sid = m.paths[&sp];
            let sdir = m.objs[&sid].dir;
            let want = if sdir && (dd == sp || dd.starts_with(&format!("{sp}/"))) {
                Err(libc::EINVAL)
            } else if let Some(&did) = m.paths.get(&dst) {
                let ddir = m.objs[&did].dir;
                if did == sid {
                    Ok(())
                } else if sdir && !ddir {
                    Err(libc::ENOTDIR)
                } else if !sdir && ddir {
                    Err(libc::EISDIR)
                } else if ddir && !m.children(&dst).is_empty() {
                    Err(libc::ENOTEMPTY)
                } else {
                    m.remove_path(&dst);
                    Ok(())
                }
            } else {
                Ok(())
            };
            if want.is_ok() && m.paths.get(&dst) != Some(&sid) {
                // Move the subtree.
                let moved: Vec<(String, usize)> = m.paths.iter().filter(|(p, _)| **p == sp || p.starts_with(&format!("{sp}/"))).map(|(p, &i)| (p.clone(), i)).collect();
                for (p, _) in &moved {
                    m.paths.remove(p);
                }
                for (p, i) in moved {
                    m.paths.insert(format!("{dst}{}", &p[sp.len()..]), i);
                }
            }
            (got, want)
        }
        Op::Link(f, d, n) => {
            let Some(fp) = m.pick(*f, |o| !o.dir, false) else { return Ok((Ok(()), Ok(()))) };
            let Some(dd) = m.pick(*d, |o| o.dir, true) else { return Ok((Ok(()), Ok(()))) };
            let dst = join(&dd, &name(*n));
            let (fa, da) = (addr(fs, &fp)?, addr(fs, &dd)?);
            let got = res(fs.link(fa, da, name(*n).as_bytes()).map(|_| ()))?;
            let want = if m.paths.contains_key(&dst) {
                Err(libc::EEXIST)
            } else {
                let id = m.paths[&fp];
                m.paths.insert(dst, id);
                Ok(())
            };
            (got, want)
        }
        Op::Unlink(f) => {
            let Some(p) = m.pick(*f, |o| !o.dir, false) else { return Ok((Ok(()), Ok(()))) };
            let (pd, n) = parent_of(&p);
            let pa = addr(fs, pd)?;
            let got = res(fs.remove(pa, n.as_bytes(), false))?;
            m.remove_path(&p);
            (got, Ok(()))
        }
        Op::Rmdir(d) => {
            let Some(p) = m.pick(*d, |o| o.dir, false) else { return Ok((Ok(()), Ok(()))) };
            let (pd, n) = parent_of(&p);
            let pa = addr(fs, pd)?;
            let got = res(fs.remove(pa, n.as_bytes(), true))?;
            let want = if m.children(&p).is_empty() { m.remove_path(&p); Ok(()) } else { Err(libc::ENOTEMPTY) };
            (got, want)
        }
        Op::SetXattr(p, k, l) => {
            let Some(pp) = m.pick(*p, |_| true, true) else { return Ok((Ok(()), Ok(()))) };
            let a = addr(fs, &pp)?;
            let v: Vec<u8> = (0..*l).map(|i| (i * 7 + *k as usize) as u8).collect();
            let key = format!("user.k{k}");
            let got = res(fs.setxattr(a, &key, Some(&v), 0))?;
            m.objs.get_mut(&m.paths[&pp]).unwrap().xattrs.insert(key, v);
            (got, Ok(()))
        }
        Op::RemoveXattr(p, k) => {
            let Some(pp) = m.pick(*p, |_| true, true) else { return Ok((Ok(()), Ok(()))) };
            let a = addr(fs, &pp)?;
            let key = format!("user.k{k}");
            let got = res(fs.setxattr(a, &key, None, 0))?;
            let o = m.objs.get_mut(&m.paths[&pp]).unwrap();
            let want = if o.xattrs.remove(&key).is_some() { Ok(()) } else { Err(libc::ENODATA) };
            (got, want)
        }
        Op::Fsync => (res(fs.sync())?, Ok(())),
        Op::Populate(d, n) => {
            let Some(dp) = m.pick(*d, |o| o.dir, true) else { return Ok((Ok(()), Ok(()))) };
            let a = addr(fs, &dp)?;
            for i in 0..*n {
                let nm = format!("populated-file-with-a-longer-name-{i:05}");
                let path = join(&dp, &nm);
                let got = res(fs.create(a, nm.as_bytes(), s_if::REG | 0o600, 0, creds, None).map(|_| ()))?;
                let want = if m.paths.contains_key(&path) { Err(libc::EEXIST) } else { m.add(path, false); Ok(()) };
                if got != want {
                    return Ok((got, want));
                }
            }
            (Ok(()), Ok(()))
        }
    })
}

/// Compares the whole tree with the model.
fn compare(fs: &mut FsCore, m: &Model) -> Result<(), String> {
    let mut seen: BTreeMap<String, (Obj, u32)> = BTreeMap::new();
    let mut stack = vec![(String::new(), fs.sys.root)];
    while let Some((p, a)) = stack.pop() {
        let attr = fs.getattr(a).map_err(|e| e.to_string())?;
        let dir = attr.mode & s_if::FMT == s_if::DIR;
        let content = if dir { vec![] } else { fs.read(a, 0, attr.size as usize).map_err(|e| e.to_string())? };
        if !dir && content.len() as u64 != attr.size {
            return Err(format!("{p}: read {} bytes of {}", content.len(), attr.size));
        }
        let mut xattrs = BTreeMap::new();
        let names = fs.listxattr(a).map_err(|e| e.to_string())?;
        for n in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
            let n = String::from_utf8(n.to_vec()).unwrap();
            let v = fs.getxattr(a, &n).map_err(|e| e.to_string())?;
            xattrs.insert(n, v);
        }
        seen.insert(p.clone(), (Obj { dir, content, xattrs }, attr.nlink));
        if dir {
            let mut subdirs = 0;
            for e in fs.readdir(a).map_err(|e| e.to_string())? {
                if e.name == b"." || e.name == b".." {
                    continue;
                }
                if e.de_type == rgfs::format::consts::dt::DIR {
                    subdirs += 1;
                }
                stack.push((join(&p, std::str::from_utf8(&e.name).unwrap()), e.inum.addr));
            }
            if attr.nlink != 2 + subdirs {
                return Err(format!("{p}: nlink {} with {subdirs} subdirectories", attr.nlink));
            }
        }
    }
    let want: BTreeMap<String, (Obj, u32)> = m
        .paths
        .iter()
        .map(|(p, id)| {
            let o = m.objs[id].clone();
            let links = if o.dir { seen.get(p).map_or(0, |s| s.1) } else { m.paths.values().filter(|&&v| v == *id).count() as u32 };
            (p.clone(), (o, links))
        })
        .collect();
    if seen.keys().collect::<Vec<_>>() != want.keys().collect::<Vec<_>>() {
        return Err(format!("paths differ:\n rgfs  {:?}\n model {:?}", seen.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>()));
    }
    for (p, (o, links)) in &want {
        let (g, gl) = &seen[p];
        if g != o || gl != links {
            return Err(format!("{p}: differs (size rgfs {} model {}, nlink {gl} vs {links}, xattrs {:?} vs {:?})", g.content.len(), o.content.len(), g.xattrs.keys(), o.xattrs.keys()));
        }
    }
    Ok(())
}

fn run_case(image: &[u8], ops: &[Op]) -> Result<(), TestCaseError> {
    let dev = Arc::new(MemDevice::from_bytes(image.to_vec()));
    let mut fs = common::mount_dev(dev.clone());
    let mut m = Model::new();
    for (i, op) in ops.iter().enumerate() {
        let (got, want) = apply(&mut fs, &mut m, op).map_err(TestCaseError::fail)?;
        prop_assert_eq!(got, want, "step {}: {:?}", i, op);
        if i % 8 == 7 {
            compare(&mut fs, &m).map_err(|e| TestCaseError::fail(format!("after step {i} {op:?}: {e}")))?;
        }
        prop_assert!(fs.alloc.check().is_ok(), "{:?}", fs.alloc.check());
    }
    compare(&mut fs, &m).map_err(|e| TestCaseError::fail(format!("at the end: {e}")))?;
    fs.shutdown().map_err(|e| TestCaseError::fail(e.to_string()))?;
    drop(fs);
    common::fsck(&dev.snapshot()).map_err(TestCaseError::fail)?;
    // The image mounts again and still matches.
    let mut fs = common::mount_dev(Arc::new(MemDevice::from_bytes(dev.snapshot())));
    compare(&mut fs, &m).map_err(|e| TestCaseError::fail(format!("after remount: {e}")))?;
    Ok(())
}

#[test]
fn rgfs_matches_the_model() {
    require_gfs2_utils!();
    let image = common::mkfs_image(64, 4096, 1);
    let cases = std::env::var("RGFS_MODEL_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(12);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig { cases, max_shrink_iters: 2000, failure_persistence: None, ..ProptestConfig::default() });
    runner
        .run(&prop::collection::vec(op(), 1..120), |ops| run_case(&image, &ops))
        .unwrap();
}

#[test]
fn small_blocks_match_the_model_too() {
    require_gfs2_utils!();
    // 512-byte blocks: tall trees, tiny leaves, deep hash tables.
    let image = common::mkfs_image(48, 512, 1);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig { cases: 4, max_shrink_iters: 2000, failure_persistence: None, ..ProptestConfig::default() });
    runner
        .run(&prop::collection::vec(op(), 1..80), |ops| run_case(&image, &ops))
        .unwrap();
}
