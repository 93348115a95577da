//! The state the passes share, and the driver that runs them in order.
//!
//! Order: superblock, system file lookup, resource groups, journals
//! (replayed before anything trusts the metadata), system files, pass 1
//! (inodes and their blocks), 1b (blocks claimed twice), 2 (directory
//! entries), 3 (connectivity), 4 (link counts), 5 (bitmaps and counts),
//! statfs. While repairing, the superblock's lock protocol reads
//! `fsck_*` instead of `lock_*` so no node mounts the volume meanwhile.
//!
//! Invariants between passes:
//! - after pass 1, `map` holds every block a kept inode uses and `inodes`
//!   every kept inode; extra claims of a block are in `dups`;
//! - after pass 1b, `dups` is empty (each block has one owner);
//! - after pass 2, `refs` counts every entry naming each inode (including
//!   "." and ".."), and `links` lists the entries naming directories;
//! - passes 3 and 4 keep `refs` equal to the entries on disk (in memory
//!   when repairs are not allowed).

use std::collections::{BTreeMap, HashMap};

use rgfs::format::consts::{dif, dt, s_if};
use rgfs::format::meta::Inum;
use rgfs::format::{BlockState, Geometry, Superblock};
use rgfs_block::BlockDevice;

use crate::blockmap::{BlockMap, Claim, Use};
use crate::dir::{self, dinode_mut, HashTable};
use crate::options::{Mode, Options};
use crate::progress::Progress;
use crate::report::{Echo, ExitCode, Fix, Pass, Report};
use crate::volume::{FsckError, Result, Volume};
use crate::{
    journals, pass1, pass1b, pass2, pass3, pass4, pass5, remake, rgrps, statfs, superblock, system,
};

/// What pass 1 learnt about an inode it keeps.
#[derive(Clone, Debug, Default)]
pub struct InodeInfo {
    pub formal: u64,
    pub mode: u32,
    pub flags: u32,
    /// `di_nlink` on disk.
    pub nlink: u32,
    pub size: u64,
    pub eattr: u64,
    /// Entries naming this inode (pass 2 on).
    pub refs: u32,
    /// Directories: the target of "..", if the directory has one.
    pub dotdot: Option<u64>,
    /// The bitmap said UNLINKED.
    pub unlinked: bool,
}

impl InodeInfo {
    pub fn is_dir(&self) -> bool {
        self.mode & s_if::FMT == s_if::DIR
    }

    pub fn dirent_type(&self) -> u16 {
        rgfs::format::consts::dt_from_mode(self.mode).unwrap_or(dt::UNKNOWN)
    }
}

/// An entry naming a directory (not "." or ".."): pass 2 → pass 3.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub dir: u64,
    pub name: Vec<u8>,
    pub target: u64,
}

/// The system inodes found from the superblock and the master directory.
#[derive(Clone, Debug, Default)]
pub struct System {
    pub master: u64,
    pub root: u64,
    pub jindex: Option<u64>,
    pub per_node: Option<u64>,
    pub inum: Option<u64>,
    pub statfs: Option<u64>,
    pub rindex: Option<u64>,
    pub quota: Option<u64>,
    /// (journal id, dinode) in id order.
    pub journals: Vec<(u32, u64)>,
    /// per_node/statfs_change<jid> files.
    pub statfs_changes: Vec<(u32, u64)>,
    /// per_node/quota_change<jid> files (their data blocks carry QC headers).
    pub quota_changes: Vec<(u32, u64)>,
}

pub struct Fsck<'a> {
    pub vol: Volume<'a>,
    pub report: Report,
    pub sb: Superblock,
    pub sys: System,
    pub map: BlockMap,
    pub inodes: BTreeMap<u64, InodeInfo>,
    /// Claims of blocks already in `map` (pass 1 → pass 1b).
    pub dups: Vec<(u64, Claim)>,
    /// Exhash directories' hash tables as pass 1 read them (→ pass 2).
    pub tables: HashMap<u64, HashTable>,
    pub links: Vec<Link>,
    pub lost_found: Option<u64>,
    pub next_formal: u64,
    /// The groups in use when the rindex could not be read before pass 1.
    pub unread_rindex: Option<Vec<rgfs::format::Rindex>>,
    /// Small system files to make again after pass 2.
    pub rebuilds: Vec<remake::Rebuild>,
    /// Journals that could not be mapped before pass 1 (jid, inode).
    pub broken_journals: Vec<(u32, u64)>,
    /// Blocks pass 1 looked at and refused as inodes (reported once).
    pub rejected: std::collections::HashSet<u64>,
    pub progress: Progress,
}

/// The result of a run.
#[derive(Debug)]
pub struct Outcome {
    pub exit: ExitCode,
    /// The report, one line per finding, and the summary.
    pub report: String,
}

/// Checks (and, as the mode allows, repairs) the volume on `dev`. `dev`
/// must be writable unless the mode is [`Mode::No`].
pub fn check(dev: &dyn BlockDevice, opts: &Options, echo: Option<Echo>) -> Outcome {
    check_asking(dev, opts, echo, None)
}

/// [`check`] in [`Mode::Ask`]: `ask` answers each question (without it
/// every answer is no).
pub fn check_asking(
    dev: &dyn BlockDevice,
    opts: &Options,
    echo: Option<Echo>,
    ask: Option<crate::options::Asker>,
) -> Outcome {
    let mut report = Report::new(opts.mode, opts.verbose, echo);
    report.set_asker(ask);
    let progress = Progress::new(opts.progress && !opts.quiet);
    let counted = crate::written::Counted::new(dev);
    let exit = match run(&counted, opts, &mut report, progress) {
        Ok(()) => {
            report.summary();
            report.exit_code()
        }
        Err(e) => {
            report.fatal(e);
            report.stopped(counted.writes());
            ExitCode::Operational
        }
    };
    Outcome {
        exit,
        report: report.text(),
    }
}

fn run(
    dev: &dyn BlockDevice,
    opts: &Options,
    report: &mut Report,
    progress: Progress,
) -> Result<()> {
    report.set_pass(Pass::Superblock);
    let sb = superblock::run(dev, report)?;
    let geom = Geometry::new(sb.bsize).map_err(|e| FsckError::Fatal(e.to_string()))?;
    let vol = Volume::new(dev, geom, opts.mode.writes());
    let placeholder = Report::new(opts.mode, false, None);
    let mut fs = Fsck {
        vol,
        report: std::mem::replace(report, placeholder),
        sys: System {
            master: sb.master_dir.addr,
            root: sb.root_dir.addr,
            ..System::default()
        },
        sb,
        map: BlockMap::new(),
        inodes: BTreeMap::new(),
        dups: Vec::new(),
        tables: HashMap::new(),
        links: Vec::new(),
        lost_found: None,
        next_formal: 1,
        rejected: Default::default(),
        broken_journals: Vec::new(),
        rebuilds: Vec::new(),
        unread_rindex: None,
        progress,
    };
    let result = fs.run_passes();
    *report = std::mem::replace(&mut fs.report, Report::new(opts.mode, false, None));
    result
}

impl<'a> Fsck<'a> {
    fn run_passes(&mut self) -> Result<()> {
        let guard = self.vol.writable;
        if guard {
            superblock::set_lock_guard(self, true)?;
        }
        let result = self.passes();
        if guard {
            // Restore the lock protocol even after a failure, so a failed
            // repair does not leave the volume unmountable.
            let restored = superblock::set_lock_guard(self, false);
            self.vol.dev.flush()?;
            result?;
            restored?;
            return Ok(());
        }
        result
    }

    fn passes(&mut self) -> Result<()> {
        self.report.set_pass(Pass::SystemFiles);
        system::locate(self)?;
        self.report.set_pass(Pass::Journals);
        journals::run(self)?;
        self.report.set_pass(Pass::ResourceGroups);
        rgrps::run(self)?;
        self.report.set_pass(Pass::Pass1);
        pass1::run(self)?;
        // After pass 1 has repaired the system inodes' fields.
        self.report.set_pass(Pass::SystemFiles);
        system::check_layout(self)?;
        rgrps::recheck_rindex(self)?;
        self.report.set_pass(Pass::Pass1b);
        pass1b::run(self)?;
        if !self.broken_journals.is_empty() {
            self.report.set_pass(Pass::Journals);
            journals::rebuild_broken(self)?;
        }
        self.report.set_pass(Pass::Pass2);
        pass2::run(self)?;
        if !self.rebuilds.is_empty() {
            // After pass 2 has repaired the directories they go into.
            self.report.set_pass(Pass::SystemFiles);
            remake::run(self)?;
        }
        self.report.set_pass(Pass::Pass3);
        pass3::run(self)?;
        self.report.set_pass(Pass::Pass4);
        pass4::run(self)?;
        self.report.set_pass(Pass::Pass5);
        pass5::run(self)?;
        self.report.set_pass(Pass::Statfs);
        statfs::run(self)?;
        if self.vol.writable {
            self.vol.write_dirty_rgrps()?;
        }
        Ok(())
    }

    pub fn mode(&self) -> Mode {
        self.report.mode()
    }

    /// Records that `owner` uses `block`; a second claim goes to `dups`.
    pub fn claim(&mut self, block: u64, usage: Use, owner: u64) {
        if self.map.insert(block, usage, owner).is_err() {
            self.dups.push((block, Claim { owner, usage }));
        }
    }

    /// Reads, edits and writes back the dinode at `addr`. Call only when a
    /// repair was allowed.
    pub fn edit_dinode(
        &mut self,
        addr: u64,
        edit: impl FnOnce(&mut rgfs::format::dinode::RawDinode),
    ) -> Result<()> {
        let mut block = self.vol.read(addr)?;
        edit(dinode_mut(&mut block));
        self.vol.write(addr, &block)
    }

    /// Frees inode `addr` and every block it uses (bitmap, counts, map).
    pub fn free_inode(&mut self, addr: u64) {
        for (b, _) in self.map.remove_owner(addr) {
            if self.vol.writable {
                self.vol.set_state(b, BlockState::Free);
            }
        }
        if self.vol.writable {
            self.vol.set_state(addr, BlockState::Free);
        }
        self.inodes.remove(&addr);
        self.tables.remove(&addr);
    }

    /// A formal inode number no inode uses yet.
    pub fn new_formal(&mut self) -> u64 {
        let max = self.inodes.values().map(|i| i.formal).max().unwrap_or(0);
        self.next_formal = self.next_formal.max(max + 1);
        let f = self.next_formal;
        self.next_formal += 1;
        f
    }

    fn inum(&self, addr: u64) -> Inum {
        Inum::new(self.inodes.get(&addr).map_or(0, |i| i.formal), addr)
    }

    /// Adds entry `name` → `target` to directory `dir` and counts the
    /// reference. A directory target gets ".." pointing at `dir` and `dir`
    /// one more link. Call only when repairs are allowed.
    pub fn link_into(&mut self, dir: u64, name: &[u8], target: u64) -> Result<()> {
        let inum = self.inum(target);
        let de_type = self
            .inodes
            .get(&target)
            .map_or(dt::REG, InodeInfo::dirent_type);
        let map = &self.map;
        let got = dir::insert(&mut self.vol, dir, name, inum, de_type, &|b| {
            map.get(b).is_none()
        })?;
        for (b, usage) in got {
            self.claim(b, usage, dir);
        }
        if let Some(t) = self.inodes.get_mut(&target) {
            t.refs += 1;
        }
        let is_dir = self.inodes.get(&target).is_some_and(InodeInfo::is_dir);
        if is_dir && target != dir {
            let parent = self.inum(dir);
            let old = self.inodes.get(&target).and_then(|t| t.dotdot);
            if old.is_some() {
                dir::retarget(&self.vol, target, b"..", parent, dt::DIR)?;
                if let Some(o) = old.and_then(|o| self.inodes.get_mut(&o)) {
                    o.refs = o.refs.saturating_sub(1);
                }
            } else {
                let got = dir::insert(&mut self.vol, target, b"..", parent, dt::DIR, &|b| {
                    map_free(&self.map, b)
                })?;
                for (b, usage) in got {
                    self.claim(b, usage, target);
                }
            }
            if let Some(t) = self.inodes.get_mut(&target) {
                t.dotdot = Some(dir);
            }
            if let Some(d) = self.inodes.get_mut(&dir) {
                d.refs += 1;
                d.nlink += 1;
            }
            self.edit_dinode(dir, |raw| raw.di_nlink = (raw.di_nlink.get() + 1).into())?;
        }
        Ok(())
    }

    /// The lost+found directory in the root, made if missing. `None` if it
    /// cannot be made (no room, or repairs not allowed).
    pub fn lost_and_found(&mut self) -> Result<Option<u64>> {
        if let Some(lf) = self.lost_found {
            return Ok(Some(lf));
        }
        let root = self.sys.root;
        if let Ok(Some(e)) = dir::lookup(&self.vol, root, b"lost+found") {
            if self.inodes.get(&e.inum.addr).is_some_and(InodeInfo::is_dir) {
                self.lost_found = Some(e.inum.addr);
                return Ok(self.lost_found);
            }
        }
        let made = self.make_dir(root, b"lost+found", s_if::DIR | 0o700, 0)?;
        if let Some(addr) = made {
            self.report
                .note("lost+found", format!("created as inode {addr}"));
        }
        self.lost_found = made;
        Ok(made)
    }

    /// Makes an empty directory (".", ".." only) named `name` in `parent`,
    /// keeping every count exact: the parent gains a link and a reference
    /// from "..". `None` if it cannot be made (no room, repairs not
    /// allowed, or `parent` is not a directory fsck kept).
    pub fn make_dir(
        &mut self,
        parent: u64,
        name: &[u8],
        mode: u32,
        flags: u32,
    ) -> Result<Option<u64>> {
        if !self.vol.writable || !self.inodes.get(&parent).is_some_and(InodeInfo::is_dir) {
            return Ok(None);
        }
        let map = &self.map;
        let Some(addr) = self
            .vol
            .alloc(parent, BlockState::Dinode, &|b| map.get(b).is_none())
        else {
            return Ok(None);
        };
        let formal = self.new_formal();
        let this = Inum::new(formal, addr);
        let block = dir::new_dir_block(&self.vol, this, self.inum(parent), mode, flags, now());
        self.vol.write(addr, &block)?;
        self.map.insert(addr, Use::Dinode, addr).ok();
        self.inodes.insert(
            addr,
            InodeInfo {
                formal,
                mode,
                flags: flags | dif::JDATA,
                nlink: 2,
                size: self.vol.geom.max_stuffed(),
                eattr: 0,
                // Its own ".".
                refs: 1,
                dotdot: Some(parent),
                unlinked: false,
            },
        );
        // The new "..".
        if let Some(p) = self.inodes.get_mut(&parent) {
            p.refs += 1;
        }
        let map = &self.map;
        let got = dir::insert(&mut self.vol, parent, name, this, dt::DIR, &|b| {
            map.get(b).is_none()
        })?;
        for (b, usage) in got {
            self.claim(b, usage, parent);
        }
        self.inodes.get_mut(&addr).expect("just made").refs += 1;
        self.links.push(Link {
            dir: parent,
            name: name.to_vec(),
            target: addr,
        });
        if let Some(p) = self.inodes.get_mut(&parent) {
            p.nlink += 1;
        }
        self.edit_dinode(parent, |raw| raw.di_nlink = (raw.di_nlink.get() + 1).into())?;
        Ok(Some(addr))
    }

    /// Links an unreachable inode into lost+found as "#<addr>". Returns
    /// whether it was linked.
    pub fn move_to_lost_found(&mut self, addr: u64) -> Result<bool> {
        let Some(lf) = self.lost_and_found()? else {
            return Ok(false);
        };
        let name = format!("#{addr}");
        self.link_into(lf, name.as_bytes(), addr)?;
        Ok(true)
    }

    /// Reports a problem; shorthand used by every pass.
    pub fn problem(
        &mut self,
        object: impl std::fmt::Display,
        message: impl std::fmt::Display,
        fix: Fix,
    ) -> bool {
        self.report.problem(object, message, fix)
    }
}

fn map_free(map: &BlockMap, b: u64) -> bool {
    map.get(b).is_none()
}

/// Seconds since the epoch, for timestamps of inodes fsck makes.
fn now() -> i64 {
    rgfs::format::Timestamp::now().sec
}

/// "inode N" for messages.
pub fn inode_name(addr: u64) -> String {
    format!("inode {addr}")
}
