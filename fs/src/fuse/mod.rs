//! The FUSE adapter (fuser 0.18): translates kernel requests into glock-
//! protected core operations and replies. No filesystem logic here.
//!
//! Kernel inode numbers are dinode block numbers, except the root, which
//! the kernel calls 1. Attribute and entry replies carry long TTLs: the
//! glock layer invalidates them with notifications when a glock is given
//! up. Directory handles keep a snapshot of the entries taken at offset 0
//! (`dir_stream`), whose offsets are hash-based cookies, unique within it.
//!
//! Invariants:
//! - every handler replies exactly once;
//! - every successful lookup-type reply (lookup, create, mkdir, mknod,
//!   symlink, link, readdirplus entries) adds one kernel reference, which
//!   forget returns.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, Notifier, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow,
    WriteFlags,
};
use parking_lot::Mutex;

mod dir_stream;
use dir_stream::DirStream;

use crate::error::Error;
use crate::format::consts::{dt, s_if};
use crate::format::Timestamp;
use crate::glock::{Fs, GlockState, KernelCache};
use crate::ops::{Attr, Creds, SetAttr};

/// How long the kernel may cache attributes and entries: until the glock
/// layer invalidates them.
const TTL: Duration = Duration::from_secs(3600);
/// Largest request: 1 MiB (max_pages 256).
pub const MAX_WRITE: u32 = 1 << 20;

/// Requests served, per kind (printed at unmount with RGFS_FUSE_STATS=1;
/// every round trip counts, so the benchmark work starts here).
#[derive(Default)]
pub struct RequestCounts {
    counts: [AtomicU64; 24],
}

const OP_NAMES: [&str; 24] = [
    "lookup", "forget", "getattr", "setattr", "readlink", "mknod", "mkdir", "unlink", "rmdir", "symlink", "rename",
    "link", "open", "read", "write", "flush", "release", "fsync", "opendir", "readdir", "readdirplus", "statfs",
    "xattr", "create",
];

impl RequestCounts {
    fn hit(&self, op: usize) {
        self.counts[op].fetch_add(1, Ordering::Relaxed);
    }

    pub fn report(&self) -> String {
        OP_NAMES
            .iter()
            .zip(&self.counts)
            .filter(|(_, c)| c.load(Ordering::Relaxed) > 0)
            .map(|(n, c)| format!("{n}={}", c.load(Ordering::Relaxed)))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// The adapter.
pub struct FuseFs {
    pub counts: RequestCounts,
    fs: Arc<Fs>,
    /// Negotiate the kernel's writeback cache. Single-node mounts use it
    /// for speed; with it the kernel owns i_size and mtime of regular
    /// files and ignores the server's, so a cluster mount must turn it off
    /// for glock invalidation to show other nodes' size changes.
    writeback_cache: bool,
    dirs: Mutex<HashMap<u64, DirStream>>,
    next_fh: AtomicU64,
}

impl FuseFs {
    pub fn new(fs: Arc<Fs>) -> Self {
        Self::with_writeback_cache(fs, false)
    }

    pub fn with_writeback_cache(fs: Arc<Fs>, writeback_cache: bool) -> Self {
        FuseFs { fs, writeback_cache, counts: RequestCounts::default(), dirs: Mutex::new(HashMap::new()), next_fh: AtomicU64::new(1) }
    }

    fn addr(&self, ino: INodeNo) -> u64 {
        if ino.0 == 1 {
            self.fs.root()
        } else {
            ino.0
        }
    }

    fn ino(&self, addr: u64) -> INodeNo {
        if addr == self.fs.root() {
            INodeNo(1)
        } else {
            INodeNo(addr)
        }
    }

    fn attr(&self, a: &Attr) -> FileAttr {
        let t = |ts: Timestamp| {
            if ts.sec >= 0 {
                UNIX_EPOCH + Duration::new(ts.sec as u64, ts.nsec)
            } else {
                UNIX_EPOCH - Duration::from_secs(ts.sec.unsigned_abs())
            }
        };
        FileAttr {
            ino: self.ino(a.ino),
            size: a.size,
            blocks: a.blocks,
            atime: t(a.atime),
            mtime: t(a.mtime),
            ctime: t(a.ctime),
            crtime: t(a.ctime),
            kind: kind(a.mode),
            perm: (a.mode & 0o7777) as u16,
            nlink: a.nlink,
            uid: a.uid,
            gid: a.gid,
            rdev: a.rdev,
            blksize: a.blksize,
            flags: 0,
        }
    }
}

fn kind(mode: u32) -> FileType {
    match mode & s_if::FMT {
        s_if::DIR => FileType::Directory,
        s_if::LNK => FileType::Symlink,
        s_if::CHR => FileType::CharDevice,
        s_if::BLK => FileType::BlockDevice,
        s_if::FIFO => FileType::NamedPipe,
        s_if::SOCK => FileType::Socket,
        _ => FileType::RegularFile,
    }
}

fn dt_kind(t: u16) -> FileType {
    match t {
        dt::DIR => FileType::Directory,
        dt::LNK => FileType::Symlink,
        dt::CHR => FileType::CharDevice,
        dt::BLK => FileType::BlockDevice,
        dt::FIFO => FileType::NamedPipe,
        dt::SOCK => FileType::Socket,
        _ => FileType::RegularFile,
    }
}

fn errno(e: &Error) -> Errno {
    Errno::from_i32(e.errno())
}

fn ts(t: SystemTime) -> Timestamp {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => Timestamp::new(d.as_secs() as i64, d.subsec_nanos()),
        Err(e) => {
            let d = e.duration();
            Timestamp::new(-(d.as_secs() as i64), 0)
        }
    }
}

fn time_or_now(t: TimeOrNow) -> Timestamp {
    match t {
        TimeOrNow::Now => Timestamp::now(),
        TimeOrNow::SpecificTime(t) => ts(t),
    }
}

/// Kernel cache invalidation through fuser's notifier.
pub struct FuseNotifier(pub Notifier);

impl KernelCache for FuseNotifier {
    fn inval_inode(&self, ino: u64) {
        let _ = self.0.inval_inode(INodeNo(ino), 0, 0);
    }
    fn inval_entry(&self, parent: u64, name: &[u8]) {
        let _ = self.0.inval_entry(INodeNo(parent), OsStr::from_bytes(name));
    }
}

const EX: GlockState = GlockState::Exclusive;

impl FuseFs {
    /// Replies with a new entry and counts the kernel's reference.
    fn entry(&self, r: crate::Result<Attr>, reply: ReplyEntry) {
        match r.and_then(|a| {
            self.fs.with_inodes(&[a.ino], EX, |c| c.add_ref(a.ino, 1, 0))?;
            Ok(a)
        }) {
            Ok(a) => reply.entry(&TTL, &self.attr(&a), Generation(a.generation)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn creds(req: &Request, umask: u32) -> Creds {
        Creds { uid: req.uid(), gid: req.gid(), umask }
    }
}

impl Filesystem for FuseFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let want = InitFlags::FUSE_WRITEBACK_CACHE
            | InitFlags::FUSE_HANDLE_KILLPRIV_V2
            | InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_READDIRPLUS_AUTO
            | InitFlags::FUSE_ASYNC_DIO
            | InitFlags::FUSE_CACHE_SYMLINKS
            | InitFlags::FUSE_BIG_WRITES
            | InitFlags::FUSE_MAX_PAGES
            // The kernel enforces ACLs (we store them and keep mode and
            // default ACLs in step) and leaves the umask to us.
            | InitFlags::FUSE_POSIX_ACL
            | InitFlags::FUSE_DONT_MASK;
        let want = if self.writeback_cache { want } else { want - InitFlags::FUSE_WRITEBACK_CACHE };
        let have = config.capabilities();
        let _ = config.add_capabilities(want & have);
        let _ = config.set_max_write(MAX_WRITE);
        let _ = config.set_max_readahead(MAX_WRITE);
        let _ = config.set_max_background(64);
        let _ = config.set_time_granularity(Duration::from_nanos(1));
        Ok(())
    }

    fn destroy(&mut self) {
        if std::env::var_os("RGFS_FUSE_STATS").is_some() {
            tracing::info!("FUSE requests: {}", self.counts.report());
        }
        let mut core = self.fs.core.lock();
        if let Err(e) = core.shutdown() {
            tracing::error!("unmount: {e}");
        }
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.counts.hit(0);
        let p = self.addr(parent);
        let r = self.fs.with_inodes(&[p], EX, |c| c.lookup(p, name.as_bytes()));
        self.entry(r, reply);
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.counts.hit(1);
        let a = self.addr(ino);
        let _ = self.fs.with_inodes(&[a], EX, |c| c.release_ref(a, nlookup, 0));
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.counts.hit(2);
        let a = self.addr(ino);
        match self.fs.with_inodes(&[a], EX, |c| c.getattr(a)) {
            Ok(at) => reply.attr(&TTL, &self.attr(&at)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        self.counts.hit(3);
        let a = self.addr(ino);
        let s = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: atime.map(time_or_now),
            mtime: mtime.map(time_or_now),
            ctime: ctime.map(ts),
        };
        match self.fs.with_inodes(&[a], EX, |c| c.setattr(a, s)) {
            Ok(at) => reply.attr(&TTL, &self.attr(&at)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.counts.hit(4);
        let a = self.addr(ino);
        match self.fs.with_inodes(&[a], EX, |c| c.readlink(a)) {
            Ok(d) => reply.data(&d),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn mknod(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, rdev: u32, reply: ReplyEntry) {
        self.counts.hit(5);
        let p = self.addr(parent);
        let r = self.fs.with_inodes(&[p], EX, |c| c.create(p, name.as_bytes(), mode, rdev, Self::creds(req, umask), None));
        self.entry(r, reply);
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        self.counts.hit(6);
        let p = self.addr(parent);
        let mode = s_if::DIR | (mode & 0o7777);
        let r = self.fs.with_inodes(&[p], EX, |c| c.create(p, name.as_bytes(), mode, 0, Self::creds(req, umask), None));
        self.entry(r, reply);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.counts.hit(7);
        let p = self.addr(parent);
        match self.fs.with_inodes(&[p], EX, |c| c.remove(p, name.as_bytes(), false)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.counts.hit(8);
        let p = self.addr(parent);
        match self.fs.with_inodes(&[p], EX, |c| c.remove(p, name.as_bytes(), true)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn symlink(&self, req: &Request, parent: INodeNo, link_name: &OsStr, target: &std::path::Path, reply: ReplyEntry) {
        self.counts.hit(9);
        let p = self.addr(parent);
        let t = target.as_os_str().as_bytes();
        let r = self.fs.with_inodes(&[p], EX, |c| c.create(p, link_name.as_bytes(), s_if::LNK | 0o777, 0, Self::creds(req, 0), Some(t)));
        self.entry(r, reply);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        self.counts.hit(10);
        let (p, np) = (self.addr(parent), self.addr(newparent));
        let r = self.fs.with_inodes(&[p, np], EX, |c| c.rename(p, name.as_bytes(), np, newname.as_bytes(), flags.bits()));
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn link(&self, _req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        self.counts.hit(11);
        let (a, np) = (self.addr(ino), self.addr(newparent));
        let r = self.fs.with_inodes(&[a, np], EX, |c| c.link(a, np, newname.as_bytes()));
        self.entry(r, reply);
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.counts.hit(12);
        let a = self.addr(ino);
        match self.fs.with_inodes(&[a], EX, |c| c.add_ref(a, 0, 1)) {
            Ok(()) => reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.counts.hit(13);
        let a = self.addr(ino);
        match self.fs.read(a, offset, size as usize) {
            Ok(d) => reply.data(&d),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        self.counts.hit(14);
        let a = self.addr(ino);
        let kill = write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID);
        // With the writeback cache the kernel resolves O_APPEND offsets.
        let append = flags.0 & libc::O_APPEND != 0 && !write_flags.contains(WriteFlags::FUSE_WRITE_CACHE);
        match self.fs.write(a, offset, data, append, kill) {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        self.counts.hit(15);
        // Nothing to do at close (data is written through, or by the
        // kernel's writeback before FLUSH); ENOSYS stops further FLUSHes.
        reply.error(Errno::ENOSYS);
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.counts.hit(16);
        let a = self.addr(ino);
        match self.fs.with_inodes(&[a], EX, |c| c.release_ref(a, 0, 1)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        self.counts.hit(17);
        let a = self.addr(ino);
        match self.fs.sync(&[a]) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.counts.hit(18);
        let a = self.addr(ino);
        match self.fs.with_inodes(&[a], EX, |c| c.readdir(a)) {
            Ok(list) => {
                let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
                self.dirs.lock().insert(fh, DirStream::new(list));
                reply.opened(FileHandle(fh), FopenFlags::empty());
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        self.counts.hit(19);
        let Some(list) = self.snapshot(ino, fh, offset) else {
            return reply.error(Errno::EIO);
        };
        for (cookie, e) in list.after(offset) {
            let ino = self.ino(e.inum.addr);
            if reply.add(ino, *cookie, dt_kind(e.de_type), OsStr::from_bytes(&e.name)) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(&self, _req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectoryPlus) {
        self.counts.hit(20);
        let Some(list) = self.snapshot(ino, fh, offset) else {
            return reply.error(Errno::EIO);
        };
        let dir = self.addr(ino);
        for (cookie, e) in list.after(offset) {
            let cookie = *cookie;
            let name = OsStr::from_bytes(&e.name);
            let is_dot = e.name == b"." || e.name == b"..";
            let a = e.inum.addr;
            // "." and ".." carry no attributes (the kernel takes no reference).
            let attr = if is_dot {
                None
            } else {
                self.fs.with_inodes(&[dir, a], EX, |c| c.getattr(a)).ok()
            };
            let full = match &attr {
                Some(at) => reply.add(self.ino(a), cookie, name, &TTL, &self.attr(at), Generation(at.generation)),
                None => {
                    let zero = FileAttr {
                        ino: self.ino(a),
                        size: 0,
                        blocks: 0,
                        atime: UNIX_EPOCH,
                        mtime: UNIX_EPOCH,
                        ctime: UNIX_EPOCH,
                        crtime: UNIX_EPOCH,
                        kind: dt_kind(e.de_type),
                        perm: 0,
                        nlink: 0,
                        uid: 0,
                        gid: 0,
                        rdev: 0,
                        blksize: 0,
                        flags: 0,
                    };
                    reply.add(INodeNo(0), cookie, name, &Duration::ZERO, &zero, Generation(0))
                }
            };
            if full {
                break;
            }
            if attr.is_some() {
                let _ = self.fs.with_inodes(&[a], EX, |c| c.add_ref(a, 1, 0));
            }
        }
        reply.ok();
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        self.dirs.lock().remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        let a = self.addr(ino);
        match self.fs.sync(&[a]) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        self.counts.hit(21);
        let s = self.fs.core.lock().statfs();
        reply.statfs(s.blocks, s.bfree, s.bfree, s.files, s.ffree, s.bsize, s.namelen, s.bsize);
    }

    fn setxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, value: &[u8], flags: i32, _position: u32, reply: ReplyEmpty) {
        self.counts.hit(22);
        let a = self.addr(ino);
        let Some(n) = name.to_str() else { return reply.error(Errno::EOPNOTSUPP) };
        match self.fs.with_inodes(&[a], EX, |c| c.setxattr(a, n, Some(value), flags)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        self.counts.hit(22);
        let a = self.addr(ino);
        let Some(n) = name.to_str() else { return reply.error(Errno::ENODATA) };
        match self.fs.with_inodes(&[a], EX, |c| c.getxattr(a, n)) {
            Ok(v) if size == 0 => reply.size(v.len() as u32),
            Ok(v) if v.len() > size as usize => reply.error(Errno::ERANGE),
            Ok(v) => reply.data(&v),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        self.counts.hit(22);
        let a = self.addr(ino);
        match self.fs.with_inodes(&[a], EX, |c| c.listxattr(a)) {
            Ok(v) if size == 0 => reply.size(v.len() as u32),
            Ok(v) if v.len() > size as usize => reply.error(Errno::ERANGE),
            Ok(v) => reply.data(&v),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.counts.hit(22);
        let a = self.addr(ino);
        let Some(n) = name.to_str() else { return reply.error(Errno::ENODATA) };
        match self.fs.with_inodes(&[a], EX, |c| c.setxattr(a, n, None, 0)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        // default_permissions: the kernel checks.
        reply.ok();
    }

    fn create(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, _flags: i32, reply: ReplyCreate) {
        self.counts.hit(23);
        let p = self.addr(parent);
        let mode = if mode & s_if::FMT == 0 { mode | s_if::REG } else { mode };
        let r = self.fs.with_inodes(&[p], EX, |c| {
            let a = c.create(p, name.as_bytes(), mode, 0, Self::creds(req, umask), None)?;
            c.add_ref(a.ino, 1, 1)?;
            Ok(a)
        });
        match r {
            Ok(a) => reply.created(&TTL, &self.attr(&a), Generation(a.generation), FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn fallocate(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, length: u64, mode: i32, reply: ReplyEmpty) {
        let a = self.addr(ino);
        if mode & !libc::FALLOC_FL_KEEP_SIZE != 0 {
            return reply.error(Errno::EOPNOTSUPP);
        }
        let keep = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        match self.fs.with_inodes(&[a], EX, |c| c.allocate(a, offset, length, keep)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }
}

impl FuseFs {
    /// The directory snapshot of a handle (re-taken at offset 0).
    fn snapshot(&self, ino: INodeNo, fh: FileHandle, offset: u64) -> Option<DirStream> {
        let a = self.addr(ino);
        if offset == 0 || !self.dirs.lock().contains_key(&fh.0) {
            let list = self.fs.with_inodes(&[a], EX, |c| c.readdir(a)).ok()?;
            self.dirs.lock().insert(fh.0, DirStream::new(list));
        }
        self.dirs.lock().get(&fh.0).cloned()
    }
}
