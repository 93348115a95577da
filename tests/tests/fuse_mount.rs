//! Real mounts: the real `mount.rgfs` binary serving real FUSE mounts of
//! images made by mkfs.gfs2 and mkfs.rgfs; after every workload the volume
//! is unmounted and `fsck.gfs2 -n` must be silent.

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::Path;

use rgfs_tests::{fsck, fuse_available, make_image, scratch, Mkfs, Mounted};

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn errno_of<T>(r: std::io::Result<T>) -> i32 {
    r.err().and_then(|e| e.raw_os_error()).unwrap_or(0)
}

fn renameat2(from: &Path, to: &Path, flags: u32) -> i32 {
    let (a, b) = (cstr(from), cstr(to));
    let r = unsafe { libc::syscall(libc::SYS_renameat2, libc::AT_FDCWD, a.as_ptr(), libc::AT_FDCWD, b.as_ptr(), flags) };
    if r == 0 {
        0
    } else {
        std::io::Error::last_os_error().raw_os_error().unwrap()
    }
}

fn statvfs(p: &Path) -> libc::statvfs {
    let c = cstr(p);
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut s) }, 0);
    s
}

/// The POSIX workload: every feature the issue lists, checked through the
/// kernel.
fn posix_workload(m: &Mounted) {
    let p = |s: &str| m.path(s);
    // Regular files: stuffed, unstuffed, sparse, truncate, append.
    fs::write(p("small"), b"hello").unwrap();
    assert_eq!(fs::read(p("small")).unwrap(), b"hello");
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 31 % 251) as u8).collect();
    fs::write(p("big"), &big).unwrap();
    assert_eq!(fs::read(p("big")).unwrap(), big);
    let f = OpenOptions::new().write(true).create(true).truncate(true).open(p("sparse")).unwrap();
    f.write_all_at(b"end", 5 << 30).unwrap();
    drop(f);
    let md = fs::metadata(p("sparse")).unwrap();
    assert_eq!(md.len(), (5 << 30) + 3);
    assert!(md.blocks() < 64, "sparse file allocated {} sectors", md.blocks());
    let mut f = File::open(p("sparse")).unwrap();
    let mut buf = [1u8; 4];
    f.seek(SeekFrom::Start(1 << 30)).unwrap();
    f.read_exact(&mut buf).unwrap();
    assert_eq!(buf, [0; 4], "a hole reads as zeros");
    f.seek(SeekFrom::Start(5 << 30)).unwrap();
    let mut e = [0u8; 3];
    f.read_exact(&mut e).unwrap();
    assert_eq!(&e, b"end");
    let f = OpenOptions::new().write(true).open(p("big")).unwrap();
    f.set_len(10_000).unwrap();
    f.set_len(20_000).unwrap();
    drop(f);
    let b = fs::read(p("big")).unwrap();
    assert_eq!(&b[..10_000], &big[..10_000]);
    assert!(b[10_000..].iter().all(|&x| x == 0), "truncate down then up must read zeros");
    let mut a = OpenOptions::new().append(true).open(p("small")).unwrap();
    a.write_all(b" world").unwrap();
    drop(a);
    assert_eq!(fs::read(p("small")).unwrap(), b"hello world");
    // fallocate
    let f = OpenOptions::new().write(true).create(true).truncate(true).open(p("falloc")).unwrap();
    let r = unsafe { libc::fallocate(std::os::fd::AsRawFd::as_raw_fd(&f), 0, 0, 1 << 20) };
    assert_eq!(r, 0, "fallocate: {}", std::io::Error::last_os_error());
    assert_eq!(f.metadata().unwrap().len(), 1 << 20);
    assert!(f.metadata().unwrap().blocks() >= 2048);
    drop(f);
    // mmap through the page cache
    {
        let f = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(p("mapped")).unwrap();
        f.set_len(8192).unwrap();
        let mut map = unsafe { memmap2::MmapMut::map_mut(&f).unwrap() };
        map[..5].copy_from_slice(b"mmap!");
        map[8000] = 7;
        map.flush().unwrap();
    }
    let mm = fs::read(p("mapped")).unwrap();
    assert_eq!(&mm[..5], b"mmap!");
    assert_eq!(mm[8000], 7);

    // Directories: many entries (exhash, splits, doubling), readdir.
    fs::create_dir(p("many")).unwrap();
    for i in 0..3000 {
        File::create(p(&format!("many/entry-number-{i:06}"))).unwrap();
    }
    let names: std::collections::BTreeSet<String> =
        fs::read_dir(p("many")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert_eq!(names.len(), 3000);
    for i in (0..3000).step_by(3) {
        fs::remove_file(p(&format!("many/entry-number-{i:06}"))).unwrap();
    }
    assert_eq!(fs::read_dir(p("many")).unwrap().count(), 2000);
    assert_eq!(errno_of(fs::remove_dir(p("many"))), libc::ENOTEMPTY);

    // Links, symlinks, renames.
    fs::hard_link(p("small"), p("small2")).unwrap();
    assert_eq!(fs::metadata(p("small")).unwrap().nlink(), 2);
    std::os::unix::fs::symlink("small", p("sym")).unwrap();
    assert_eq!(fs::read_link(p("sym")).unwrap().to_str().unwrap(), "small");
    assert_eq!(fs::read(p("sym")).unwrap(), b"hello world");
    fs::create_dir_all(p("d1/sub")).unwrap();
    fs::create_dir(p("d2")).unwrap();
    fs::rename(p("small2"), p("d1/moved")).unwrap();
    assert_eq!(fs::read(p("d1/moved")).unwrap(), b"hello world");
    fs::rename(p("d1/sub"), p("d2/sub")).unwrap();
    assert_eq!(fs::metadata(p("d1")).unwrap().nlink(), 2);
    assert_eq!(fs::metadata(p("d2")).unwrap().nlink(), 3);
    assert_eq!(renameat2(&p("d2"), &p("d2/sub/loop"), 0), libc::EINVAL, "a directory cannot move into itself");
    fs::write(p("x"), b"x").unwrap();
    fs::write(p("y"), b"y").unwrap();
    assert_eq!(renameat2(&p("x"), &p("y"), 1 /* NOREPLACE */), libc::EEXIST);
    assert_eq!(renameat2(&p("x"), &p("y"), 2 /* EXCHANGE */), 0);
    assert_eq!(fs::read(p("x")).unwrap(), b"y");
    assert_eq!(fs::read(p("y")).unwrap(), b"x");
    fs::rename(p("x"), p("y")).unwrap();
    assert_eq!(fs::read(p("y")).unwrap(), b"y");
    assert!(!p("x").exists());
    assert_eq!(renameat2(&p("d1"), &p("d2"), 0), libc::ENOTEMPTY);

    // Unlink of an open file: still readable and writable until closed.
    let mut f = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(p("open-unlinked")).unwrap();
    f.write_all(&vec![9u8; 100_000]).unwrap();
    fs::remove_file(p("open-unlinked")).unwrap();
    f.write_all(b"more").unwrap();
    f.seek(SeekFrom::Start(0)).unwrap();
    let mut v = Vec::new();
    f.read_to_end(&mut v).unwrap();
    assert_eq!(v.len(), 100_004);
    drop(f);

    // mknod, FIFO, chmod, chown, utimens, set-group-ID directories.
    let fifo = cstr(&p("fifo"));
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o640) }, 0);
    assert!(fs::metadata(p("fifo")).unwrap().file_type().is_fifo_like());
    let node = cstr(&p("chr"));
    assert_eq!(unsafe { libc::mknod(node.as_ptr(), libc::S_IFCHR | 0o600, libc::makedev(1, 3)) }, 0);
    assert_eq!(fs::metadata(p("chr")).unwrap().rdev(), libc::makedev(1, 3));
    fs::set_permissions(p("small"), fs::Permissions::from_mode(0o4755)).unwrap();
    assert_eq!(fs::metadata(p("small")).unwrap().mode() & 0o7777, 0o4755);
    std::os::unix::fs::chown(p("small"), Some(1234), Some(5678)).unwrap();
    let md = fs::metadata(p("small")).unwrap();
    assert_eq!((md.uid(), md.gid()), (1234, 5678));
    assert_eq!(md.mode() & 0o4000, 0, "chown clears set-user-ID");
    let t = [libc::timespec { tv_sec: 1_000_000, tv_nsec: 5 }, libc::timespec { tv_sec: 2_000_000, tv_nsec: 7 }];
    let c = cstr(&p("small"));
    assert_eq!(unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), t.as_ptr(), 0) }, 0);
    let md = fs::metadata(p("small")).unwrap();
    assert_eq!((md.atime(), md.atime_nsec(), md.mtime(), md.mtime_nsec()), (1_000_000, 5, 2_000_000, 7));
    fs::create_dir(p("sgid")).unwrap();
    std::os::unix::fs::chown(p("sgid"), Some(0), Some(4242)).unwrap();
    fs::set_permissions(p("sgid"), fs::Permissions::from_mode(0o2775)).unwrap();
    fs::write(p("sgid/f"), b"").unwrap();
    fs::create_dir(p("sgid/d")).unwrap();
    assert_eq!(fs::metadata(p("sgid/f")).unwrap().gid(), 4242, "set-group-ID directory rule");
    assert_ne!(fs::metadata(p("sgid/d")).unwrap().mode() & 0o2000, 0, "subdirectories inherit set-group-ID");

    // Extended attributes and ACLs (stored as GFS2 EAs).
    let setx = |path: &Path, name: &str, v: &[u8]| -> i32 {
        let (pc, nc) = (cstr(path), CString::new(name).unwrap());
        let r = unsafe { libc::setxattr(pc.as_ptr(), nc.as_ptr(), v.as_ptr().cast(), v.len(), 0) };
        if r == 0 { 0 } else { std::io::Error::last_os_error().raw_os_error().unwrap() }
    };
    let getx = |path: &Path, name: &str| -> Result<Vec<u8>, i32> {
        let (pc, nc) = (cstr(path), CString::new(name).unwrap());
        let mut buf = vec![0u8; 70_000];
        let r = unsafe { libc::getxattr(pc.as_ptr(), nc.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if r < 0 { Err(std::io::Error::last_os_error().raw_os_error().unwrap()) } else { buf.truncate(r as usize); Ok(buf) }
    };
    assert_eq!(setx(&p("y"), "user.color", b"blue"), 0);
    assert_eq!(setx(&p("y"), "trusted.t", b"T"), 0);
    assert_eq!(setx(&p("y"), "security.s", &[1, 2, 3]), 0);
    let large: Vec<u8> = (0..20_000u32).map(|i| i as u8).collect();
    assert_eq!(setx(&p("y"), "user.large", &large), 0);
    // ACL: version 2, user::rw-, group::r--, other::---
    let acl: Vec<u8> = [2u32.to_le_bytes().to_vec(), vec![1, 0, 6, 0, 0xff, 0xff, 0xff, 0xff], vec![4, 0, 4, 0, 0xff, 0xff, 0xff, 0xff], vec![0x20, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]].concat();
    assert_eq!(setx(&p("y"), "system.posix_acl_access", &acl), 0);
    assert_eq!(getx(&p("y"), "user.color").unwrap(), b"blue");
    assert_eq!(getx(&p("y"), "user.large").unwrap(), large);
    assert_eq!(getx(&p("y"), "trusted.t").unwrap(), b"T");
    assert_eq!(getx(&p("y"), "user.none"), Err(libc::ENODATA));

    // ENAMETOOLONG
    let long = "n".repeat(256);
    assert_eq!(errno_of(File::create(p(&long))), libc::ENAMETOOLONG);

    // fsync, fdatasync, syncfs
    let f = OpenOptions::new().write(true).open(p("y")).unwrap();
    f.sync_all().unwrap();
    f.sync_data().unwrap();
    assert_eq!(unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&f)) }, 0);
}

trait FifoLike {
    fn is_fifo_like(&self) -> bool;
}
impl FifoLike for fs::FileType {
    fn is_fifo_like(&self) -> bool {
        use std::os::unix::fs::FileTypeExt;
        self.is_fifo()
    }
}

fn workload_on(mkfs: Mkfs) {
    if !fuse_available() {
        return;
    }
    let tmp = scratch();
    let img = tmp.path().join("img");
    make_image(&img, 512, mkfs);
    let m = Mounted::new(&img, &tmp.path().join("mnt"), "").expect("mount");
    posix_workload(&m);
    m.unmount().expect("unmount");
    fsck(&img).unwrap_or_else(|e| panic!("{mkfs:?} image after the workload: {e}"));
    // Everything is there after a remount.
    let m = Mounted::new(&img, &tmp.path().join("mnt"), "").expect("remount");
    assert_eq!(fs::read(m.path("y")).unwrap(), b"y");
    assert_eq!(fs::read_dir(m.path("many")).unwrap().count(), 2000);
    assert_eq!(fs::metadata(m.path("sparse")).unwrap().len(), (5 << 30) + 3);
    m.unmount().expect("unmount");
    fsck(&img).unwrap();
}

#[test]
fn posix_workload_on_a_mkfs_gfs2_image() {
    workload_on(Mkfs::Gfs2);
}

#[test]
fn posix_workload_on_a_mkfs_rgfs_image() {
    workload_on(Mkfs::Rgfs);
}

#[test]
fn readdir_offsets_stay_stable_while_the_directory_changes() {
    if !fuse_available() {
        return;
    }
    let tmp = scratch();
    let img = tmp.path().join("img");
    make_image(&img, 128, Mkfs::Gfs2);
    let m = Mounted::new(&img, &tmp.path().join("mnt"), "").expect("mount");
    fs::create_dir(m.path("d")).unwrap();
    for i in 0..1500 {
        File::create(m.path(&format!("d/keep-{i}"))).unwrap();
    }
    let dir = cstr(&m.path("d"));
    let dp = unsafe { libc::opendir(dir.as_ptr()) };
    assert!(!dp.is_null());
    let mut seen = std::collections::BTreeMap::new();
    let mut n = 0;
    loop {
        let e = unsafe { libc::readdir(dp) };
        if e.is_null() {
            break;
        }
        let name = unsafe { std::ffi::CStr::from_ptr((*e).d_name.as_ptr()) }.to_string_lossy().into_owned();
        *seen.entry(name).or_insert(0) += 1;
        n += 1;
        if n % 200 == 0 {
            // Change the directory under the reader.
            for k in 0..50 {
                File::create(m.path(&format!("d/new-{n}-{k}"))).unwrap();
            }
            let _ = fs::remove_file(m.path(&format!("d/keep-{}", 1499 - n / 200)));
        }
    }
    unsafe { libc::closedir(dp) };
    assert!(seen.values().all(|&c| c == 1), "an entry was returned twice");
    // Every entry present for the whole walk was returned.
    for i in 0..1400 {
        assert!(seen.contains_key(&format!("keep-{i}")), "keep-{i} skipped");
    }
    m.unmount().unwrap();
    fsck(&img).unwrap();
}

/// Names whose directory hashes collide (same `hash >> 1`), found by search.
fn colliding_pairs(pairs: usize) -> Vec<(String, String)> {
    let mut seen = std::collections::HashMap::new();
    let mut out = Vec::new();
    for i in 0u64.. {
        let name = format!("c{i}");
        let key = rgfs::format::checksum::disk_hash(name.as_bytes()) >> 1;
        if let Some(other) = seen.insert(key, name.clone()) {
            out.push((other, name));
            if out.len() == pairs {
                break;
            }
        }
    }
    out
}

/// getdents64 with a buffer that holds one entry: the kernel resumes at
/// the offset of every entry, also between two names whose hashes collide.
#[test]
fn a_listing_one_entry_at_a_time_returns_every_colliding_name() {
    if !fuse_available() {
        return;
    }
    let tmp = scratch();
    let img = tmp.path().join("img");
    make_image(&img, 128, Mkfs::Rgfs);
    let m = Mounted::new(&img, &tmp.path().join("mnt"), "").expect("mount");
    fs::create_dir(m.path("d")).unwrap();
    let mut want = std::collections::BTreeSet::new();
    for (a, b) in colliding_pairs(4) {
        for n in [a, b] {
            File::create(m.path(&format!("d/{n}"))).unwrap();
            want.insert(n);
        }
    }
    for i in 0..20 {
        let n = format!("plain-{i}");
        File::create(m.path(&format!("d/{n}"))).unwrap();
        want.insert(n);
    }
    let dir = File::open(m.path("d")).unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&dir);
    let mut got = Vec::new();
    let mut buf = [0u8; 40]; // one linux_dirent64 with a name of up to 20 bytes
    loop {
        let n = unsafe { libc::syscall(libc::SYS_getdents64, fd, buf.as_mut_ptr(), buf.len()) };
        assert!(n >= 0, "getdents64: {}", std::io::Error::last_os_error());
        if n == 0 {
            break;
        }
        let reclen = u16::from_ne_bytes([buf[16], buf[17]]) as usize;
        assert_eq!(reclen, n as usize, "one entry per call");
        let name = std::ffi::CStr::from_bytes_until_nul(&buf[19..reclen]).unwrap().to_string_lossy().into_owned();
        if name != "." && name != ".." {
            got.push(name);
        }
    }
    let listed: std::collections::BTreeSet<String> = got.iter().cloned().collect();
    assert_eq!(got.len(), listed.len(), "a name was listed twice: {got:?}");
    assert_eq!(listed, want);
    drop(dir);
    m.unmount().unwrap();
    fsck(&img).unwrap();
}

#[test]
fn enospc_then_works_again_after_deletes() {
    if !fuse_available() {
        return;
    }
    let tmp = scratch();
    let img = tmp.path().join("img");
    make_image(&img, 100, Mkfs::Gfs2);
    let m = Mounted::new(&img, &tmp.path().join("mnt"), "").expect("mount");
    let before = statvfs(&m.dir);
    let chunk = vec![0xABu8; 1 << 20];
    let mut written = 0u64;
    let mut err = 0;
    for i in 0..200 {
        let mut f = File::create(m.path(&format!("fill{i}"))).unwrap();
        let mut full = false;
        for _ in 0..8 {
            match f.write_all(&chunk).and_then(|_| f.sync_all()) {
                Ok(()) => written += chunk.len() as u64,
                Err(e) => {
                    err = e.raw_os_error().unwrap_or(0);
                    full = true;
                    break;
                }
            }
        }
        drop(f);
        if full {
            break;
        }
    }
    assert_eq!(err, libc::ENOSPC, "the disk never filled (wrote {written} bytes)");
    for i in 0..200 {
        let _ = fs::remove_file(m.path(&format!("fill{i}")));
    }
    // Works again.
    fs::write(m.path("after"), vec![1u8; 4 << 20]).unwrap();
    fs::remove_file(m.path("after")).unwrap();
    let f = File::open(&m.dir).unwrap();
    f.sync_all().unwrap();
    drop(f);
    let after = statvfs(&m.dir);
    assert_eq!(after.f_bfree, before.f_bfree, "every block came back");
    m.unmount().unwrap();
    fsck(&img).unwrap();
}

#[test]
fn read_only_mounts_refuse_writes() {
    if !fuse_available() {
        return;
    }
    let tmp = scratch();
    let img = tmp.path().join("img");
    make_image(&img, 64, Mkfs::Gfs2);
    let m = Mounted::new(&img, &tmp.path().join("mnt"), "").unwrap();
    fs::write(m.path("f"), b"data").unwrap();
    m.unmount().unwrap();
    let m = Mounted::new(&img, &tmp.path().join("mnt"), "ro,noatime").unwrap();
    assert_eq!(fs::read(m.path("f")).unwrap(), b"data");
    assert_eq!(errno_of(File::create(m.path("g"))), libc::EROFS);
    m.unmount().unwrap();
    fsck(&img).unwrap();
}

#[test]
fn bad_devices_and_options_are_clear_errors() {
    if !fuse_available() {
        return;
    }
    let tmp = scratch();
    let mnt = tmp.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let junk = tmp.path().join("junk");
    fs::write(&junk, vec![0x5Au8; 1 << 20]).unwrap();
    let out = std::process::Command::new(rgfs_tests::mount_bin()).arg(&junk).arg(&mnt).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a GFS2 filesystem"), "{}", String::from_utf8_lossy(&out.stderr));
    let img = tmp.path().join("img");
    make_image(&img, 64, Mkfs::Gfs2);
    let out = std::process::Command::new(rgfs_tests::mount_bin()).arg(&img).arg(&mnt).args(["-o", "bogus"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown mount option"));
    // A truncated device (rgrps past its end) is refused.
    let short = tmp.path().join("short");
    fs::copy(&img, &short).unwrap();
    OpenOptions::new().write(true).open(&short).unwrap().set_len(40 << 20).unwrap();
    let out = std::process::Command::new(rgfs_tests::mount_bin()).arg(&short).arg(&mnt).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("device"), "{}", String::from_utf8_lossy(&out.stderr));
    // Nothing was mounted, and the image is untouched.
    fsck(&img).unwrap();
}

#[test]
fn daemon_mode_returns_once_mounted_and_umount_leaves_a_clean_journal() {
    if !fuse_available() {
        return;
    }
    let tmp = scratch();
    let img = tmp.path().join("img");
    make_image(&img, 64, Mkfs::Rgfs);
    let mnt = tmp.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let st = std::process::Command::new(rgfs_tests::mount_bin()).arg(&img).arg(&mnt).args(["-o", "relatime,errors=withdraw"]).status().unwrap();
    assert!(st.success());
    // Live as soon as the helper returned.
    fs::write(mnt.join("f"), b"daemon").unwrap();
    assert_eq!(fs::read(mnt.join("f")).unwrap(), b"daemon");
    let st = std::process::Command::new("umount").arg(&mnt).status().unwrap();
    assert!(st.success());
    // The daemon writes back after the kernel unmount; wait for fsck to see
    // a clean journal (bounded).
    let start = std::time::Instant::now();
    loop {
        match fsck(&img) {
            Ok(()) => break,
            Err(e) if start.elapsed() > std::time::Duration::from_secs(30) => panic!("{e}"),
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(200)),
        }
    }
}

#[test]
fn kill_9_mid_workload_then_remount_replays_and_keeps_fsynced_data() {
    if !fuse_available() {
        return;
    }
    let tmp = scratch();
    let img = tmp.path().join("img");
    make_image(&img, 256, Mkfs::Gfs2);
    let mnt = tmp.path().join("mnt");
    let m = Mounted::new(&img, &mnt, "").unwrap();
    let mut synced = Vec::new();
    for i in 0..40 {
        let name = format!("synced-{i}");
        let data: Vec<u8> = (0..(i * 5000 + 10)).map(|k| (k * 7 + i) as u8).collect();
        let mut f = File::create(m.path(&name)).unwrap();
        f.write_all(&data).unwrap();
        f.sync_all().unwrap();
        synced.push((name, data));
    }
    fs::create_dir(m.path("dir")).unwrap();
    File::open(&m.dir).unwrap().sync_all().unwrap();
    // Unsynced churn in another thread while the daemon dies.
    let churn_dir = m.path("dir");
    let churn = std::thread::spawn(move || {
        for i in 0..100_000 {
            let p = churn_dir.join(format!("c{}", i % 500));
            if fs::write(&p, vec![i as u8; 3000 + i % 9000]).is_err() {
                break;
            }
            let _ = fs::remove_file(churn_dir.join(format!("c{}", (i + 250) % 500)));
        }
    });
    std::thread::sleep(std::time::Duration::from_millis(1500));
    m.kill9();
    let _ = churn.join();
    // The journal is dirty now, and fsck says so.
    let dirty = std::process::Command::new("fsck.gfs2").arg("-n").arg(&img).output().unwrap();
    let text = String::from_utf8_lossy(&dirty.stdout).to_string() + &String::from_utf8_lossy(&dirty.stderr);
    assert!(text.contains("dirty"), "expected a dirty journal after kill -9:\n{text}");
    let m = Mounted::new(&img, &mnt, "").expect("remount replays");
    for (name, data) in &synced {
        assert_eq!(&fs::read(m.path(name)).unwrap(), data, "{name} lost");
    }
    assert!(m.path("dir").is_dir());
    m.unmount().unwrap();
    fsck(&img).unwrap();
}

#[test]
fn files_get_the_callers_uid_and_gid_and_the_kernel_checks_permissions() {
    if !fuse_available() || !rgfs_tests::require("setpriv") {
        return;
    }
    let tmp = scratch();
    let img = tmp.path().join("img");
    make_image(&img, 64, Mkfs::Gfs2);
    let m = Mounted::new(&img, &tmp.path().join("mnt"), "allow_other").unwrap();
    // Other users must be able to reach the mount point itself.
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::create_dir(m.path("pub")).unwrap();
    fs::set_permissions(m.path("pub"), fs::Permissions::from_mode(0o1777)).unwrap();
    fs::write(m.path("pub/roots"), b"root's").unwrap();
    fs::set_permissions(m.path("pub/roots"), fs::Permissions::from_mode(0o644)).unwrap();
    let as_user = |script: &str| {
        std::process::Command::new("setpriv")
            .args(["--reuid", "4321", "--regid", "8765", "--clear-groups", "sh", "-c", script])
            .status()
            .unwrap()
            .success()
    };
    assert!(as_user(&format!("echo mine > {}", m.path("pub/users").display())));
    let md = fs::metadata(m.path("pub/users")).unwrap();
    assert_eq!((md.uid(), md.gid()), (4321, 8765), "created with the caller's ids");
    assert!(!as_user(&format!("echo x >> {}", m.path("pub/roots").display())), "write to a 0644 root file allowed");
    assert!(!as_user(&format!("rm -f {}", m.path("pub/roots").display())), "sticky directory let a user delete root's file");
    assert!(m.path("pub/roots").exists());
    assert!(!as_user(&format!("touch {}", m.path("newfile").display())), "user created a file in root's 0755 dir");
    m.unmount().unwrap();
    fsck(&img).unwrap();
}

fn acl_bytes(entries: &[(u16, u16, u32)]) -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for &(t, p, id) in entries {
        v.extend_from_slice(&t.to_le_bytes());
        v.extend_from_slice(&p.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}

fn set_xattr(path: &Path, name: &str, v: &[u8]) -> i32 {
    let (pc, nc) = (cstr(path), CString::new(name).unwrap());
    let r = unsafe { libc::setxattr(pc.as_ptr(), nc.as_ptr(), v.as_ptr().cast(), v.len(), 0) };
    if r == 0 { 0 } else { std::io::Error::last_os_error().raw_os_error().unwrap() }
}

#[test]
fn posix_acls_are_enforced_inherited_and_kept_in_step_with_the_mode() {
    if !fuse_available() || !rgfs_tests::require("setpriv") {
        return;
    }
    let tmp = scratch();
    let img = tmp.path().join("img");
    make_image(&img, 64, Mkfs::Gfs2);
    let m = Mounted::new(&img, &tmp.path().join("mnt"), "allow_other").unwrap();
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let run_as = |uid: u32, script: &str| {
        std::process::Command::new("setpriv")
            .args(["--reuid", &uid.to_string(), "--regid", &uid.to_string(), "--clear-groups", "sh", "-c", script])
            .status()
            .unwrap()
            .success()
    };
    const ALL: u32 = u32::MAX;
    // A root file, mode 0600, with an ACL granting user 4321 read-write.
    fs::write(m.path("secret"), b"s").unwrap();
    fs::set_permissions(m.path("secret"), fs::Permissions::from_mode(0o600)).unwrap();
    let acl = acl_bytes(&[(0x01, 6, ALL), (0x02, 6, 4321), (0x04, 0, ALL), (0x10, 6, ALL), (0x20, 0, ALL)]);
    assert_eq!(set_xattr(&m.path("secret"), "system.posix_acl_access", &acl), 0);
    assert_eq!(fs::metadata(m.path("secret")).unwrap().mode() & 0o777, 0o660, "the mode follows the ACL's mask");
    let secret = m.path("secret").display().to_string();
    assert!(run_as(4321, &format!("echo ok >> {secret}")), "the ACL's named user may write");
    assert!(!run_as(4322, &format!("cat {secret}")), "another user may not read");
    // chmod narrows the mask: the named user loses write.
    fs::set_permissions(m.path("secret"), fs::Permissions::from_mode(0o640)).unwrap();
    assert!(!run_as(4321, &format!("echo no >> {secret}")), "chmod g-w must narrow the ACL mask");
    assert!(run_as(4321, &format!("cat {secret} >/dev/null")));
    // Default ACL: inherited by new files (umask ignored) and directories.
    fs::create_dir(m.path("shared")).unwrap();
    fs::set_permissions(m.path("shared"), fs::Permissions::from_mode(0o777)).unwrap();
    let dacl = acl_bytes(&[(0x01, 7, ALL), (0x02, 7, 4321), (0x04, 5, ALL), (0x10, 7, ALL), (0x20, 5, ALL)]);
    assert_eq!(set_xattr(&m.path("shared"), "system.posix_acl_default", &dacl), 0);
    assert_eq!(set_xattr(&m.path("secret"), "system.posix_acl_default", &dacl), libc::EACCES, "default ACL on a file");
    assert!(run_as(4000, &format!("umask 077; echo x > {}/f; mkdir {}/d", m.path("shared").display(), m.path("shared").display())));
    assert_eq!(fs::metadata(m.path("shared/f")).unwrap().mode() & 0o777, 0o664, "umask ignored under a default ACL");
    assert!(run_as(4321, &format!("echo more >> {}/f", m.path("shared").display())), "inherited ACL grants the named user");
    assert!(run_as(4321, &format!("touch {}/d/inside", m.path("shared").display())), "directories inherit the default ACL");
    // Without a default ACL the umask applies.
    fs::create_dir(m.path("nodefault")).unwrap();
    fs::set_permissions(m.path("nodefault"), fs::Permissions::from_mode(0o777)).unwrap();
    assert!(run_as(4000, &format!("umask 027; echo x > {}/plain", m.path("nodefault").display())));
    assert_eq!(fs::metadata(m.path("nodefault/plain")).unwrap().mode() & 0o777, 0o640, "umask applied");
    m.unmount().unwrap();
    fsck(&img).unwrap();
}
