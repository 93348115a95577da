//! Pass 3: directory connectivity. Every directory but the root and the
//! master directory must be named by exactly one entry in another
//! directory, be reachable from the root or the master directory, and
//! have ".." pointing at that parent.
//!
//! A directory named twice keeps the entry its ".." agrees with. A
//! directory that cannot be reached (no entry names it, or it hangs in a
//! loop of directories) is moved to lost+found, which is made on demand.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use rgfs::format::consts::dt;
use rgfs::format::meta::Inum;

use crate::check::{Fsck, Link};
use crate::dir;
use crate::report::Fix;
use crate::volume::Result;

pub fn run(fs: &mut Fsck) -> Result<()> {
    let (root, master) = (fs.sys.root, fs.sys.master);
    let dirs: Vec<u64> = fs
        .inodes
        .iter()
        .filter(|(_, i)| i.is_dir())
        .map(|(&a, _)| a)
        .collect();
    fs.progress.start("pass3", dirs.len() as u64);
    let mut named_by: BTreeMap<u64, Vec<Link>> = BTreeMap::new();
    for l in &fs.links {
        named_by.entry(l.target).or_default().push(l.clone());
    }
    // One parent per directory.
    let mut parent: HashMap<u64, Link> = HashMap::new();
    for (&d, links) in &named_by {
        if d == root || d == master {
            for l in links {
                let msg = format!(
                    "names the {} directory: entry removed",
                    if d == root { "root" } else { "master" }
                );
                remove_link(fs, l, msg)?;
            }
            continue;
        }
        let dotdot = fs.inodes.get(&d).and_then(|i| i.dotdot);
        let keep = links
            .iter()
            .position(|l| Some(l.dir) == dotdot)
            .unwrap_or(0);
        for (i, l) in links.iter().enumerate() {
            if i == keep {
                continue;
            }
            let msg = format!(
                "also names directory {d}, which belongs in directory {}: entry removed",
                links[keep].dir
            );
            remove_link(fs, l, msg)?;
        }
        parent.insert(d, links[keep].clone());
    }
    // Reachability from the two roots.
    let mut children: HashMap<u64, Vec<u64>> = HashMap::new();
    for (&d, l) in &parent {
        children.entry(l.dir).or_default().push(d);
    }
    let mut reachable: HashSet<u64> = HashSet::new();
    mark(&children, root, &mut reachable);
    mark(&children, master, &mut reachable);
    for &d in &dirs {
        fs.progress.inc();
        if reachable.contains(&d) || !fs.inodes.contains_key(&d) {
            continue;
        }
        // The top of the unreachable tree (or a member of a loop).
        let mut top = d;
        let mut seen = HashSet::from([d]);
        while let Some(l) = parent.get(&top) {
            if reachable.contains(&l.dir) || !seen.insert(l.dir) {
                break;
            }
            top = l.dir;
        }
        let object = format!("directory {top}");
        let moved = match parent.get(&top).cloned() {
            Some(l) => {
                let msg = format!(
                    "is in a loop of directories (named {:?} in directory {}): moved to lost+found",
                    String::from_utf8_lossy(&l.name),
                    l.dir
                );
                if fs.problem(&object, msg, Fix::Risky) {
                    dir::remove(&fs.vol, l.dir, &l.name)?;
                    dec_ref(fs, top);
                    true
                } else {
                    false
                }
            }
            None => fs.problem(
                &object,
                "is not named by any directory: moved to lost+found",
                Fix::Risky,
            ),
        };
        if moved && fs.move_to_lost_found(top)? {
            let lf = fs.lost_found.expect("made by move_to_lost_found");
            parent.insert(
                top,
                Link {
                    dir: lf,
                    name: format!("#{top}").into_bytes(),
                    target: top,
                },
            );
            children.entry(lf).or_default().push(top);
            reachable.insert(lf);
        }
        // Whether moved or not, do not report its subtree again.
        mark(&children, top, &mut reachable);
    }
    // ".." of every directory.
    for &d in &dirs {
        let Some(info) = fs.inodes.get(&d).cloned() else {
            continue;
        };
        let want = if d == root || d == master {
            Some(d)
        } else {
            parent.get(&d).map(|l| l.dir)
        };
        let Some(want) = want else { continue };
        if info.dotdot == Some(want) {
            continue;
        }
        let object = format!("directory {d}");
        let want_inum = Inum::new(fs.inodes.get(&want).map_or(0, |i| i.formal), want);
        match info.dotdot {
            Some(old) => {
                if fs.problem(
                    &object,
                    format!("\"..\" points to directory {old}, should be {want}"),
                    Fix::Safe,
                ) {
                    dir::retarget(&fs.vol, d, b"..", want_inum, dt::DIR)?;
                    dec_ref(fs, old);
                    inc_ref(fs, want);
                    fs.inodes.get_mut(&d).expect("kept").dotdot = Some(want);
                }
            }
            None => {
                if fs.problem(
                    &object,
                    format!("has no \"..\" entry: added, pointing to {want}"),
                    Fix::Safe,
                ) {
                    let map = &fs.map;
                    let got = dir::insert(&mut fs.vol, d, b"..", want_inum, dt::DIR, &|b| {
                        map.get(b).is_none()
                    })?;
                    for (b, u) in got {
                        fs.claim(b, u, d);
                    }
                    inc_ref(fs, want);
                    fs.inodes.get_mut(&d).expect("kept").dotdot = Some(want);
                }
            }
        }
    }
    fs.progress.finish();
    Ok(())
}

/// Reports entry `l` (naming directory `l.target`) and removes it when
/// allowed.
fn remove_link(fs: &mut Fsck, l: &Link, msg: String) -> Result<()> {
    let object = format!(
        "directory {} entry {:?}",
        l.dir,
        String::from_utf8_lossy(&l.name)
    );
    if fs.problem(object, msg, Fix::Risky) {
        dir::remove(&fs.vol, l.dir, &l.name)?;
        dec_ref(fs, l.target);
    }
    Ok(())
}

fn mark(children: &HashMap<u64, Vec<u64>>, from: u64, reachable: &mut HashSet<u64>) {
    let mut queue = VecDeque::from([from]);
    while let Some(d) = queue.pop_front() {
        if !reachable.insert(d) {
            continue;
        }
        if let Some(c) = children.get(&d) {
            queue.extend(c.iter().copied());
        }
    }
}

fn dec_ref(fs: &mut Fsck, addr: u64) {
    if let Some(i) = fs.inodes.get_mut(&addr) {
        i.refs = i.refs.saturating_sub(1);
    }
}

fn inc_ref(fs: &mut Fsck, addr: u64) {
    if let Some(i) = fs.inodes.get_mut(&addr) {
        i.refs += 1;
    }
}
