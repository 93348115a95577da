//! POSIX semantics on top of the core, independent of FUSE: name rules,
//! link counts, the ctime/mtime/atime rules, set-group-ID directories,
//! rename variants, unlink of open files. Each public function is one
//! operation (one transaction): it ends with `end_op`, which may commit.
//!
//! Permission checks are the kernel's (the FUSE mount uses
//! `default_permissions`); this layer enforces what the kernel leaves to
//! the filesystem: existence, types, emptiness, loops, limits.
//!
//! Invariants:
//! - a directory's `nlink` is 2 + its subdirectories; a file's is its names;
//! - an inode whose `nlink` drops to 0 is freed at once if nobody holds it,
//!   else marked UNLINKED in the bitmap and freed when the last reference
//!   goes (`release_ref`), or at the next mount after a crash.

use crate::core::FsCore;
use crate::dir::DirEntry;
use crate::error::{corrupt, errno, Error, Result};
use crate::format::consts::{dif, dt, s_if, FNAMESIZE};
use crate::format::{Dinode, Inum, Timestamp};
use crate::xattr::acl;

/// Who performs an operation.
#[derive(Clone, Copy, Debug, Default)]
pub struct Creds {
    pub uid: u32,
    pub gid: u32,
    /// The caller's umask, applied here when the parent has no default ACL
    /// (with a default ACL, POSIX ignores the umask).
    pub umask: u32,
}

/// Attributes of an inode, as stat reports them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub size: u64,
    /// 512-byte units.
    pub blocks: u64,
    pub atime: Timestamp,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
    pub mode: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
    pub blksize: u32,
    pub generation: u64,
}

/// What setattr changes.
#[derive(Clone, Copy, Debug, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<Timestamp>,
    pub mtime: Option<Timestamp>,
    pub ctime: Option<Timestamp>,
}

/// statfs results.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Statfs {
    pub blocks: u64,
    pub bfree: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
}

/// Rename flags (Linux values).
pub const RENAME_NOREPLACE: u32 = 1;
pub const RENAME_EXCHANGE: u32 = 2;

fn check_name(name: &[u8]) -> Result<()> {
    if name.is_empty() {
        return errno(libc::ENOENT);
    }
    if name.len() > FNAMESIZE {
        return errno(libc::ENAMETOOLONG);
    }
    if name.contains(&b'/') || name.contains(&0) {
        return errno(libc::EINVAL);
    }
    Ok(())
}

fn is_dot(name: &[u8]) -> bool {
    name == b"." || name == b".."
}

impl Dinode {
    pub fn rdev(&self) -> u32 {
        (self.major << 8) | (self.minor & 0xff) | ((self.minor & !0xff) << 12)
    }
}

impl FsCore {
    /// Attributes of an inode.
    pub fn getattr(&mut self, addr: u64) -> Result<Attr> {
        let bsize = self.geom.bsize;
        let di = &self.inode(addr)?.di;
        Ok(Attr {
            ino: addr,
            size: di.size,
            blocks: di.blocks * (bsize as u64 / 512),
            atime: di.atime,
            mtime: di.mtime,
            ctime: di.ctime,
            mode: di.mode,
            nlink: di.nlink,
            uid: di.uid,
            gid: di.gid,
            rdev: di.rdev(),
            blksize: bsize,
            generation: di.generation,
        })
    }

    /// Runs a modifying operation as one transaction: refused when read-only
    /// or withdrawn; a fatal error withdraws.
    fn op<T>(&mut self, f: impl FnOnce(&mut FsCore) -> Result<T>) -> Result<T> {
        self.check_writable()?;
        let r = f(self);
        let r = self.guard(r);
        if r.is_ok() || matches!(r, Err(Error::Errno(_))) {
            // Even a failed operation may have dirtied buffers (e.g. ENOSPC
            // after a partial write); they are consistent and get committed.
            let e = self.end_op();
            self.guard(e)?;
        }
        r
    }

    /// A read-only operation: a fatal error withdraws.
    fn rop<T>(&mut self, f: impl FnOnce(&mut FsCore) -> Result<T>) -> Result<T> {
        if let Some(w) = &self.withdrawn {
            return Err(Error::Withdrawn(w.clone()));
        }
        let r = f(self);
        self.guard(r)
    }

    /// Looks up `name` in `parent`.
    pub fn lookup(&mut self, parent: u64, name: &[u8]) -> Result<Attr> {
        self.rop(|fs| {
            check_name(name)?;
            let Some((inum, _)) = fs.dir_lookup(parent, name)? else {
                return errno(libc::ENOENT);
            };
            let di = fs.inode(inum.addr)?.di.clone();
            if di.num.formal_ino != inum.formal_ino {
                return corrupt(
                    format!("directory {parent}"),
                    format!("entry {:?} names inode {} with formal number {}, dinode has {}", String::from_utf8_lossy(name), inum.addr, inum.formal_ino, di.num.formal_ino),
                );
            }
            fs.getattr(inum.addr)
        })
    }

    fn touch_dir(&mut self, dir: u64, now: Timestamp) -> Result<()> {
        self.update_dinode(dir, |d| {
            d.mtime = now;
            d.ctime = now;
        })
    }

    /// Creates a file, device node, FIFO, socket, directory or symlink.
    pub fn create(&mut self, parent: u64, name: &[u8], mode: u32, rdev: u32, creds: Creds, symlink: Option<&[u8]>) -> Result<Attr> {
        self.op(|fs| {
            check_name(name)?;
            let pdi = fs.inode(parent)?.di.clone();
            if !pdi.is_dir() {
                return errno(libc::ENOTDIR);
            }
            if pdi.nlink == 0 {
                return errno(libc::ENOENT);
            }
            if is_dot(name) || fs.dir_lookup(parent, name)?.is_some() {
                return errno(libc::EEXIST);
            }
            let is_dir = mode & s_if::FMT == s_if::DIR;
            if is_dir && pdi.nlink == u32::MAX {
                return errno(libc::EMLINK);
            }
            if let Some(t) = symlink {
                if t.is_empty() {
                    return errno(libc::ENOENT);
                }
                if t.len() as u64 > fs.geom.max_stuffed() || t.len() > libc::PATH_MAX as usize {
                    return errno(libc::ENAMETOOLONG);
                }
            }
            // The set-group-ID directory rule.
            let mut mode = mode;
            let gid = if pdi.mode & s_if::SGID != 0 {
                if is_dir {
                    mode |= s_if::SGID;
                }
                pdi.gid
            } else {
                creds.gid
            };
            let mut flags = 0;
            if pdi.flags & dif::INHERIT_JDATA != 0 {
                flags |= if is_dir { dif::INHERIT_JDATA | dif::JDATA } else { dif::JDATA };
            }
            if pdi.flags & dif::SYSTEM != 0 {
                flags |= dif::SYSTEM;
            }
            // Default ACL of the parent, or the umask.
            let default_acl = if symlink.is_some() || pdi.eattr == 0 {
                None
            } else {
                match fs.xattr_get(parent, acl::DEFAULT) {
                    Ok(v) => acl::parse(&v),
                    Err(Error::Errno(_)) => None,
                    Err(e) => return Err(e),
                }
            };
            let mut access_acl = None;
            match &default_acl {
                Some(d) => {
                    let (a, m) = acl::inherit(d, mode);
                    mode = m;
                    if !acl::is_minimal(&a) {
                        access_acl = Some(a);
                    }
                }
                None if symlink.is_none() => mode &= !(creds.umask & 0o777),
                None => {}
            }
            let addr = fs.new_inode(parent, mode, creds.uid, gid, rdev, flags)?;
            if let Some(a) = access_acl {
                fs.xattr_set(addr, acl::ACCESS, Some(&acl::encode(&a)), 0)?;
            }
            if let (Some(d), true) = (&default_acl, is_dir) {
                fs.xattr_set(addr, acl::DEFAULT, Some(&acl::encode(d)), 0)?;
            }
            let this = fs.inode(addr)?.di.clone();
            if is_dir {
                fs.dir_init(addr, pdi.num)?;
            } else if let Some(t) = symlink {
                fs.write_data(addr, 0, t)?;
            }
            fs.dir_add(parent, name, this.num, this.dirent_type())?;
            let now = this.ctime;
            fs.update_dinode(parent, |d| {
                d.mtime = now;
                d.ctime = now;
                if is_dir {
                    d.nlink += 1;
                }
            })?;
            fs.write_dinode(addr)?;
            fs.getattr(addr)
        })
    }

    /// Adds a hard link.
    pub fn link(&mut self, addr: u64, newparent: u64, newname: &[u8]) -> Result<Attr> {
        self.op(|fs| {
            check_name(newname)?;
            let di = fs.inode(addr)?.di.clone();
            if di.is_dir() {
                return errno(libc::EPERM);
            }
            if di.nlink == 0 {
                return errno(libc::ENOENT);
            }
            if di.nlink == u32::MAX {
                return errno(libc::EMLINK);
            }
            let pdi = fs.inode(newparent)?.di.clone();
            if !pdi.is_dir() {
                return errno(libc::ENOTDIR);
            }
            if pdi.nlink == 0 {
                return errno(libc::ENOENT);
            }
            if is_dot(newname) || fs.dir_lookup(newparent, newname)?.is_some() {
                return errno(libc::EEXIST);
            }
            fs.dir_add(newparent, newname, di.num, di.dirent_type())?;
            let now = Timestamp::now();
            fs.touch_dir(newparent, now)?;
            fs.update_dinode(addr, |d| {
                d.nlink += 1;
                d.ctime = now;
            })?;
            fs.getattr(addr)
        })
    }

    /// One name of `addr` went away: drop the link count and free or mark
    /// unlinked when it reaches 0.
    fn drop_link(&mut self, addr: u64, now: Timestamp) -> Result<()> {
        let is_dir = self.inode(addr)?.di.is_dir();
        self.update_dinode(addr, |d| {
            d.nlink = if is_dir { 0 } else { d.nlink.saturating_sub(1) };
            d.ctime = now;
        })?;
        let ino = self.inode(addr)?;
        if ino.di.nlink == 0 {
            if ino.nlookup > 0 || ino.open > 0 {
                self.mark_unlinked(addr)?;
            } else {
                self.free_inode(addr)?;
            }
        }
        Ok(())
    }

    /// unlink(2) (`dir == false`) and rmdir(2).
    pub fn remove(&mut self, parent: u64, name: &[u8], dir: bool) -> Result<()> {
        self.op(|fs| {
            check_name(name)?;
            if name == b"." {
                return errno(libc::EINVAL);
            }
            if name == b".." {
                return errno(libc::ENOTEMPTY);
            }
            let Some((inum, _)) = fs.dir_lookup(parent, name)? else {
                return errno(libc::ENOENT);
            };
            let di = fs.inode(inum.addr)?.di.clone();
            if dir {
                if !di.is_dir() {
                    return errno(libc::ENOTDIR);
                }
                if !fs.dir_is_empty(inum.addr)? {
                    return errno(libc::ENOTEMPTY);
                }
            } else if di.is_dir() {
                return errno(libc::EISDIR);
            }
            fs.dir_remove(parent, name)?;
            let now = Timestamp::now();
            fs.update_dinode(parent, |d| {
                d.mtime = now;
                d.ctime = now;
                if dir {
                    d.nlink = d.nlink.saturating_sub(1);
                }
            })?;
            fs.drop_link(inum.addr, now)
        })
    }

    /// Whether `dir` is `ancestor` or lies below it.
    fn is_under(&mut self, mut dir: u64, ancestor: u64) -> Result<bool> {
        for _ in 0..100_000 {
            if dir == ancestor {
                return Ok(true);
            }
            if dir == self.sys.root {
                return Ok(false);
            }
            let Some((up, _)) = self.dir_lookup(dir, b"..")? else {
                return corrupt(format!("directory {dir}"), "no '..' entry");
            };
            if up.addr == dir {
                return Ok(false);
            }
            dir = up.addr;
        }
        corrupt(format!("directory {dir}"), "'..' chain does not reach the root")
    }

    /// rename(2) and renameat2(2) with RENAME_NOREPLACE / RENAME_EXCHANGE.
    pub fn rename(&mut self, sp: u64, sname: &[u8], dp: u64, dname: &[u8], flags: u32) -> Result<()> {
        self.op(|fs| {
            check_name(sname)?;
            check_name(dname)?;
            if flags & !(RENAME_NOREPLACE | RENAME_EXCHANGE) != 0
                || flags == RENAME_NOREPLACE | RENAME_EXCHANGE
            {
                return errno(libc::EINVAL);
            }
            if is_dot(sname) || is_dot(dname) {
                return errno(libc::EBUSY);
            }
            if !fs.inode(dp)?.di.is_dir() || !fs.inode(sp)?.di.is_dir() {
                return errno(libc::ENOTDIR);
            }
            let Some((src, _)) = fs.dir_lookup(sp, sname)? else {
                return errno(libc::ENOENT);
            };
            let dst = fs.dir_lookup(dp, dname)?;
            if flags & RENAME_NOREPLACE != 0 && dst.is_some() {
                return errno(libc::EEXIST);
            }
            let sdi = fs.inode(src.addr)?.di.clone();
            let now = Timestamp::now();
            if flags & RENAME_EXCHANGE != 0 {
                let Some((dst, _)) = dst else { return errno(libc::ENOENT) };
                if dst.addr == src.addr {
                    return Ok(());
                }
                let ddi = fs.inode(dst.addr)?.di.clone();
                if sp != dp {
                    if sdi.is_dir() && fs.is_under(dp, src.addr)? {
                        return errno(libc::EINVAL);
                    }
                    if ddi.is_dir() && fs.is_under(sp, dst.addr)? {
                        return errno(libc::EINVAL);
                    }
                }
                fs.dir_retarget(sp, sname, ddi.num, ddi.dirent_type())?;
                fs.dir_retarget(dp, dname, sdi.num, sdi.dirent_type())?;
                if sp != dp {
                    if sdi.is_dir() {
                        let n = fs.inode(dp)?.di.num;
                        fs.dir_retarget(src.addr, b"..", n, dt::DIR)?;
                    }
                    if ddi.is_dir() {
                        let n = fs.inode(sp)?.di.num;
                        fs.dir_retarget(dst.addr, b"..", n, dt::DIR)?;
                    }
                    let delta = sdi.is_dir() as i64 - ddi.is_dir() as i64;
                    fs.update_dinode(sp, |d| d.nlink = (d.nlink as i64 - delta) as u32)?;
                    fs.update_dinode(dp, |d| d.nlink = (d.nlink as i64 + delta) as u32)?;
                }
                fs.touch_dir(sp, now)?;
                fs.touch_dir(dp, now)?;
                fs.update_dinode(src.addr, |d| d.ctime = now)?;
                fs.update_dinode(dst.addr, |d| d.ctime = now)?;
                return Ok(());
            }
            if sdi.is_dir() && sp != dp && fs.is_under(dp, src.addr)? {
                return errno(libc::EINVAL);
            }
            let mut replaced_dir = false;
            if let Some((dst, _)) = dst {
                if dst.addr == src.addr {
                    return Ok(());
                }
                let ddi = fs.inode(dst.addr)?.di.clone();
                if sdi.is_dir() {
                    if !ddi.is_dir() {
                        return errno(libc::ENOTDIR);
                    }
                    if !fs.dir_is_empty(dst.addr)? {
                        return errno(libc::ENOTEMPTY);
                    }
                    replaced_dir = true;
                } else if ddi.is_dir() {
                    return errno(libc::EISDIR);
                }
                fs.dir_retarget(dp, dname, sdi.num, sdi.dirent_type())?;
                fs.drop_link(dst.addr, now)?;
            } else {
                if sdi.is_dir() && sp != dp && fs.inode(dp)?.di.nlink == u32::MAX {
                    return errno(libc::EMLINK);
                }
                fs.dir_add(dp, dname, sdi.num, sdi.dirent_type())?;
            }
            fs.dir_remove(sp, sname)?;
            if sdi.is_dir() && sp != dp {
                let dnum = fs.inode(dp)?.di.num;
                fs.dir_retarget(src.addr, b"..", dnum, dt::DIR)?;
                fs.update_dinode(sp, |d| d.nlink = d.nlink.saturating_sub(1))?;
                if !replaced_dir {
                    fs.update_dinode(dp, |d| d.nlink += 1)?;
                }
            } else if replaced_dir {
                fs.update_dinode(dp, |d| d.nlink = d.nlink.saturating_sub(1))?;
            }
            fs.touch_dir(sp, now)?;
            fs.touch_dir(dp, now)?;
            fs.update_dinode(src.addr, |d| d.ctime = now)
        })
    }

    /// setattr: chmod, chown, truncate, utimens.
    pub fn setattr(&mut self, addr: u64, s: SetAttr) -> Result<Attr> {
        self.op(|fs| {
            let di = fs.inode(addr)?.di.clone();
            let now = Timestamp::now();
            if let Some(size) = s.size {
                if di.is_dir() {
                    return errno(libc::EISDIR);
                }
                if !di.is_reg() {
                    return errno(libc::EINVAL);
                }
                if size != di.size {
                    fs.truncate(addr, size)?;
                    fs.update_dinode(addr, |d| {
                        d.mtime = now;
                        d.ctime = now;
                    })?;
                }
            }
            if let (Some(m), true) = (s.mode, di.eattr != 0) {
                // chmod keeps an access ACL in step with the mode.
                if let Some(mut a) = fs.xattr_get(addr, acl::ACCESS).ok().and_then(|v| acl::parse(&v)) {
                    acl::chmod(&mut a, m);
                    fs.xattr_set(addr, acl::ACCESS, Some(&acl::encode(&a)), 0)?;
                }
            }
            let chown = s.uid.is_some_and(|u| u != di.uid) || s.gid.is_some_and(|g| g != di.gid);
            fs.update_dinode(addr, |d| {
                if let Some(m) = s.mode {
                    d.mode = (d.mode & s_if::FMT) | (m & 0o7777);
                    d.ctime = now;
                }
                if let Some(u) = s.uid {
                    d.uid = u;
                    d.ctime = now;
                }
                if let Some(g) = s.gid {
                    d.gid = g;
                    d.ctime = now;
                }
                if chown && s.mode.is_none() && !d.is_dir() {
                    // chown clears set-user-ID, and set-group-ID when group-executable.
                    d.mode &= !s_if::SUID;
                    if d.mode & 0o010 != 0 {
                        d.mode &= !s_if::SGID;
                    }
                }
                if let Some(a) = s.atime {
                    d.atime = a;
                    d.ctime = now;
                }
                if let Some(m) = s.mtime {
                    d.mtime = m;
                    d.ctime = now;
                }
                if let Some(c) = s.ctime {
                    d.ctime = c;
                }
            })?;
            fs.getattr(addr)
        })
    }

    /// Reads file data; updates atime per the mount's atime rule (relatime
    /// unless `noatime`).
    pub fn read(&mut self, addr: u64, offset: u64, size: usize) -> Result<Vec<u8>> {
        let data = self.rop(|fs| {
            let di = fs.inode(addr)?.di.clone();
            if di.is_dir() {
                return errno(libc::EISDIR);
            }
            fs.read_data(addr, offset, size)
        })?;
        self.maybe_touch_atime(addr)?;
        Ok(data)
    }

    /// The read side of `glock::Fs::read`: checks and atime under the lock,
    /// returns where the bytes are.
    pub fn read_planned(&mut self, addr: u64, offset: u64, size: usize) -> Result<crate::inode::ReadPlan> {
        let plan = self.rop(|fs| {
            let di = fs.inode(addr)?.di.clone();
            if di.is_dir() {
                return errno(libc::EISDIR);
            }
            fs.read_plan(addr, offset, size)
        })?;
        self.maybe_touch_atime(addr)?;
        Ok(plan)
    }

    fn maybe_touch_atime(&mut self, addr: u64) -> Result<()> {
        if self.opts.noatime || self.check_writable().is_err() {
            return Ok(());
        }
        let di = self.inode(addr)?.di.clone();
        let now = Timestamp::now();
        let stale = di.atime <= di.mtime || di.atime <= di.ctime || now.sec - di.atime.sec >= 24 * 3600;
        if stale && di.flags & dif::NOATIME == 0 {
            self.op(|fs| fs.update_dinode(addr, |d| d.atime = now))?;
        }
        Ok(())
    }

    /// A write whose whole-block data transfers run later, without the core
    /// lock (`glock::Fs::write`): returns the byte count and the deferred
    /// (device offset, data range) runs, with an in-flight section begun if
    /// there are any (the caller must end it). No commit happens inside.
    pub fn write_deferred(
        &mut self,
        addr: u64,
        offset: u64,
        data: &[u8],
        append: bool,
        kill_priv: bool,
    ) -> Result<(usize, crate::inode::DataRuns)> {
        let mut runs = Vec::new();
        self.hold_commits = true;
        let r = self.op(|fs| {
            let di = fs.inode(addr)?.di.clone();
            if !di.is_reg() {
                return errno(if di.is_dir() { libc::EISDIR } else { libc::EINVAL });
            }
            let offset = if append { di.size } else { offset };
            fs.write_data_deferred(addr, offset, data, Some(&mut runs))?;
            let now = Timestamp::now();
            fs.update_dinode(addr, |d| {
                d.mtime = now;
                d.ctime = now;
                if kill_priv {
                    d.mode &= !s_if::SUID;
                    if d.mode & 0o010 != 0 {
                        d.mode &= !s_if::SGID;
                    }
                }
            })?;
            Ok(data.len())
        });
        self.hold_commits = false;
        // Even after an error, the runs hold the caller's bytes for blocks
        // already mapped: write them.
        if !runs.is_empty() {
            self.inflight.begin();
        }
        match r {
            Ok(n) => Ok((n, runs)),
            Err(e) => {
                if !runs.is_empty() {
                    let failed = crate::inode::write_runs(&*self.dev, data, &runs);
                    self.inflight.end(failed);
                }
                Err(e)
            }
        }
    }

    /// Writes file data. `kill_priv` clears set-user-ID/set-group-ID bits
    /// (FUSE_HANDLE_KILLPRIV_V2: the kernel asks the filesystem to). The
    /// data transfers run here, under the caller's lock (in-process use;
    /// `glock::Fs::write` runs them without the core lock).
    pub fn write(&mut self, addr: u64, offset: u64, data: &[u8], append: bool, kill_priv: bool) -> Result<usize> {
        let (n, runs) = self.write_deferred(addr, offset, data, append, kill_priv)?;
        if !runs.is_empty() {
            let failed = crate::inode::write_runs(&*self.dev, data, &runs);
            self.inflight.end(failed.clone());
            if let Some(e) = failed {
                self.withdraw(&format!("data write failed: {e}"));
                return Err(Error::Withdrawn(e));
            }
        }
        Ok(n)
    }

    /// fallocate(2) mode 0 and FALLOC_FL_KEEP_SIZE.
    pub fn allocate(&mut self, addr: u64, offset: u64, len: u64, keep_size: bool) -> Result<()> {
        self.op(|fs| {
            if !fs.inode(addr)?.di.is_reg() {
                return errno(libc::ENODEV);
            }
            fs.fallocate(addr, offset, len, keep_size)?;
            let now = Timestamp::now();
            fs.update_dinode(addr, |d| d.ctime = now)
        })
    }

    /// readlink(2).
    pub fn readlink(&mut self, addr: u64) -> Result<Vec<u8>> {
        self.rop(|fs| {
            let di = fs.inode(addr)?.di.clone();
            if !di.is_symlink() {
                return errno(libc::EINVAL);
            }
            fs.read_data(addr, 0, di.size as usize)
        })
    }

    /// All entries of a directory, sorted by (hash, name).
    pub fn readdir(&mut self, addr: u64) -> Result<Vec<DirEntry>> {
        self.rop(|fs| {
            if !fs.inode(addr)?.di.is_dir() {
                return errno(libc::ENOTDIR);
            }
            fs.dir_list(addr)
        })
    }

    pub fn statfs(&mut self) -> Statfs {
        let blocks = self.alloc.total_data();
        let bfree = self.alloc.total_free();
        let dinodes = self.alloc.total_dinodes();
        Statfs { blocks, bfree, files: dinodes + bfree, ffree: bfree, bsize: self.geom.bsize, namelen: FNAMESIZE as u32 }
    }

    pub fn getxattr(&mut self, addr: u64, name: &str) -> Result<Vec<u8>> {
        self.rop(|fs| fs.xattr_get(addr, name))
    }

    pub fn listxattr(&mut self, addr: u64) -> Result<Vec<u8>> {
        self.rop(|fs| fs.xattr_names(addr))
    }

    pub fn setxattr(&mut self, addr: u64, name: &str, value: Option<&[u8]>, flags: i32) -> Result<()> {
        self.op(|fs| {
            let now = Timestamp::now();
            if let (acl::ACCESS | acl::DEFAULT, Some(v)) = (name, value) {
                let Some(a) = acl::parse(v) else { return errno(libc::EINVAL) };
                let is_dir = fs.inode(addr)?.di.is_dir();
                if name == acl::DEFAULT && !is_dir {
                    return errno(libc::EACCES);
                }
                if name == acl::ACCESS {
                    // The mode follows the ACL; an ACL the mode expresses
                    // fully is not stored (as the kernel's filesystems do).
                    let bits = acl::mode_bits(&a);
                    fs.update_dinode(addr, |d| d.mode = (d.mode & !0o777) | bits)?;
                    if acl::is_minimal(&a) {
                        match fs.xattr_set(addr, name, None, 0) {
                            Ok(()) | Err(Error::Errno(libc::ENODATA)) => {}
                            Err(e) => return Err(e),
                        }
                        return fs.update_dinode(addr, |d| d.ctime = now);
                    }
                }
            }
            fs.xattr_set(addr, name, value, flags)?;
            fs.update_dinode(addr, |d| d.ctime = now)
        })
    }

    /// fsync/fdatasync/syncfs: everything committed and durable.
    pub fn sync(&mut self) -> Result<()> {
        if self.log.is_none() {
            return Ok(());
        }
        let r = self.commit(true);
        self.guard(r)
    }

    /// fsync without holding the core lock across the final flush: this
    /// half commits (log blocks flushed, header written); the caller
    /// flushes the device without the lock, then calls
    /// [`sync_finish`](Self::sync_finish). `None`: nothing to make durable
    /// (read-only mount).
    pub fn sync_start(&mut self) -> Result<Option<SyncTicket>> {
        let r = self.commit(false);
        self.guard(r)?;
        Ok(self.log.as_ref().map(|l| SyncTicket {
            header: l.last_header(),
            frees_made: self.alloc.frees_made(),
            dev: self.dev.clone(),
        }))
    }

    /// The second half of an fsync: `flushed` is the result of the device
    /// flush the caller issued after `sync_start`.
    pub fn sync_finish(&mut self, ticket: SyncTicket, flushed: Result<()>) -> Result<()> {
        self.guard(flushed)?;
        let Some(log) = self.log.as_mut() else { return Ok(()) };
        log.flushed_after(ticket.header);
        // Frees may be reused once their commit is durable; frees made
        // while the lock was released are in no durable commit yet.
        if self.alloc.frees_made() == ticket.frees_made && log.durable_sequence() >= ticket.header {
            self.release_frees();
        }
        Ok(())
    }

    /// Takes a reference (FUSE lookup or open) on an inode.
    pub fn add_ref(&mut self, addr: u64, lookups: u64, opens: u32) -> Result<()> {
        let i = self.inode(addr)?;
        i.nlookup += lookups;
        i.open += opens;
        Ok(())
    }

    /// Drops references; frees an unlinked inode when the last one goes.
    pub fn release_ref(&mut self, addr: u64, lookups: u64, opens: u32) -> Result<()> {
        let Some(i) = self.inodes.get_mut(&addr) else { return Ok(()) };
        i.nlookup = i.nlookup.saturating_sub(lookups);
        i.open = i.open.saturating_sub(opens);
        if i.nlookup == 0 && i.open == 0 {
            if i.di.nlink == 0 {
                if self.check_writable().is_ok() {
                    self.op(|fs| fs.free_inode(addr))?;
                }
            } else if !self.cache.is_dirty(addr) {
                // Nobody holds it: drop the decoded copy (the buffer stays cached).
                self.inodes.remove(&addr);
            }
        }
        Ok(())
    }

    /// Resolves a path relative to the root (tests and tools).
    pub fn resolve(&mut self, path: &str) -> Result<u64> {
        let mut cur = self.sys.root;
        for comp in path.split('/').filter(|c| !c.is_empty()) {
            let Some((inum, _)) = self.dir_lookup(cur, comp.as_bytes())? else {
                return errno(libc::ENOENT);
            };
            cur = inum.addr;
        }
        Ok(cur)
    }

    /// The inode number the kernel knows for `inum`.
    pub fn inum_of(&mut self, addr: u64) -> Result<Inum> {
        Ok(self.inode(addr)?.di.num)
    }
}

/// What the lock-free half of an fsync needs (see `FsCore::sync_start`).
pub struct SyncTicket {
    /// The last header written when the sync started.
    header: u64,
    /// `Allocator::frees_made` then.
    frees_made: u64,
    /// The device to flush.
    pub dev: std::sync::Arc<dyn rgfs_block::BlockDevice>,
}
