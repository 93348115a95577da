//! The glock seam: a test lock module that issues blocking callbacks, and a
//! real in-process FUSE mount, show that a demote flushes and writes back
//! the object, and invalidates both our caches and the kernel's: after
//! another writer (a second node, journal 1) changes the inode on disk, the
//! mounted view shows the change. Without the callback it does not (the
//! kernel keeps serving its cached attributes) — the negative control.

mod common;

use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rgfs::format::consts::s_if;
use rgfs::fuse::{FuseFs, FuseNotifier};
use rgfs::glock::{BlockingCallback, DlmMode, Fs, GlockState, LockError, LockModule, LockName, Lvb};
use rgfs::mount::{mount, MountOptions};
use rgfs_block::{Access, FileDevice};

/// Grants everything, records requests, and lets the test fire callbacks.
#[derive(Default)]
struct TestLock {
    cb: Mutex<Option<BlockingCallback>>,
    requests: Mutex<Vec<(LockName, DlmMode)>>,
    unlocks: Mutex<Vec<LockName>>,
}

impl LockModule for TestLock {
    fn proto_name(&self) -> &str {
        "lock_test"
    }
    fn lock(&self, name: LockName, mode: DlmMode, _lvb: &mut Lvb) -> Result<(), LockError> {
        self.requests.lock().unwrap().push((name, mode));
        Ok(())
    }
    fn unlock(&self, name: LockName, _lvb: Option<&Lvb>) -> Result<(), LockError> {
        self.unlocks.lock().unwrap().push(name);
        Ok(())
    }
    fn set_blocking_callback(&self, cb: BlockingCallback) {
        *self.cb.lock().unwrap() = Some(cb);
    }
}

impl TestLock {
    fn fire(&self, name: LockName, mode: DlmMode) {
        let cb = self.cb.lock().unwrap().clone().expect("callback registered");
        cb(name, mode);
    }
}

#[test]
fn lock_names_and_modes_are_the_kernels() {
    assert_eq!(LockName::inode(0x2238).to_string(), "       2            2238");
    assert_eq!(LockName::rgrp(17).to_string(), "       3              11");
    assert_eq!(LockName::journal(1).to_string(), "       9               1");
    assert_eq!(GlockState::Exclusive.dlm_mode(), DlmMode::Ex);
    assert_eq!(GlockState::Shared.dlm_mode(), DlmMode::Pr);
    assert_eq!(GlockState::Deferred.dlm_mode(), DlmMode::Cw);
    assert_eq!(GlockState::Unlocked.dlm_mode(), DlmMode::Nl);
    assert_eq!(GlockState::demote_target(DlmMode::Ex), GlockState::Unlocked);
    assert_eq!(GlockState::demote_target(DlmMode::Pr), GlockState::Shared);
    assert_eq!(GlockState::demote_target(DlmMode::Cw), GlockState::Deferred);
}

/// Node B: mounts journal 1 of the same image, rewrites `name` (stuffed,
/// so no allocation touches node A's resource groups), unmounts cleanly.
fn other_node_writes(image: &std::path::Path, name: &str, data: &[u8]) {
    let dev = Arc::new(FileDevice::open(image, Access::ReadWrite).unwrap());
    let opts = MountOptions { jid: Some(1), ..Default::default() };
    let (mut b, _) = mount(dev, &opts).expect("node B mounts journal 1");
    let root = b.sys.root;
    let a = b.resolve(name).unwrap();
    b.setattr(a, rgfs::ops::SetAttr { size: Some(0), ..Default::default() }).unwrap();
    b.write(a, 0, data, false, false).unwrap();
    let _ = root;
    b.shutdown().unwrap();
}

#[test]
fn a_blocking_callback_demotes_and_invalidates_the_kernel_cache() {
    require_gfs2_utils!();
    if !std::path::Path::new("/dev/fuse").exists() || !common::have("fusermount3") {
        eprintln!("SKIPPED: needs /dev/fuse and fusermount3");
        return;
    }
    let tmp = common::scratch();
    let image = tmp.path().join("img");
    std::fs::write(&image, common::mkfs_image(64, 4096, 2)).unwrap();
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();

    let dev = Arc::new(FileDevice::open(&image, Access::ReadWrite).unwrap());
    let (core, _) = mount(dev, &MountOptions::default()).unwrap();
    let lock = Arc::new(TestLock::default());
    let fs = Fs::new(core, lock.clone()).unwrap();
    let mut config = fuser::Config::default();
    config.mount_options = vec![fuser::MountOption::DefaultPermissions, fuser::MountOption::FSName("rgfs-test".into())];
    config.n_threads = Some(2);
    // The cluster configuration: no writeback cache (the kernel would own
    // i_size and ignore other nodes' changes).
    let session = fuser::Session::new(FuseFs::with_writeback_cache(fs.clone(), false), &mnt, &config).expect("FUSE mount");
    *fs.kernel.lock() = Some(Arc::new(FuseNotifier(session.notifier())));
    let bg = session.spawn().unwrap();

    for (name, content) in [("f", b"aaaa".as_slice()), ("g", b"gggg".as_slice())] {
        std::fs::write(mnt.join(name), content).unwrap();
        std::fs::File::open(mnt.join(name)).unwrap().sync_all().unwrap();
        assert_eq!(std::fs::metadata(mnt.join(name)).unwrap().len(), 4);
    }
    let f_ino = std::fs::metadata(mnt.join("f")).unwrap().ino();
    // Everything home (no glock given up, no invalidation): node B can read
    // the files; the kernel still caches their attributes and entries.
    fs.core.lock().checkpoint().unwrap();
    // Another node asks for f: demote to UN (flush, write back, revoke,
    // invalidate ours and the kernel's caches).
    let before = lock.requests.lock().unwrap().len();
    lock.fire(LockName::inode(f_ino), DlmMode::Ex);
    assert_eq!(fs.glocks.state(LockName::inode(f_ino)), GlockState::Unlocked);
    assert!(lock.unlocks.lock().unwrap().contains(&LockName::inode(f_ino)));
    other_node_writes(&image, "f", b"written by node B");
    other_node_writes(&image, "g", b"written by node B too");

    // f: re-acquired and re-read; the kernel asks again (its cache was invalidated).
    assert_eq!(std::fs::metadata(mnt.join("f")).unwrap().len(), 17);
    assert_eq!(std::fs::read(mnt.join("f")).unwrap(), b"written by node B");
    assert!(
        lock.requests.lock().unwrap()[before..].iter().any(|&(n, m)| n == LockName::inode(f_ino) && m == DlmMode::Ex),
        "f's glock was not requested again after the demote"
    );
    // g (no callback): the kernel still serves its cached attributes.
    assert_eq!(std::fs::metadata(mnt.join("g")).unwrap().len(), 4, "negative control: no callback, no invalidation");

    // A directory demote invalidates the kernel's entries: node B renames
    // g, and after the callback on the root the mount shows the new name.
    let root = fs.root();
    lock.fire(LockName::inode(root), DlmMode::Ex);
    {
        let dev = Arc::new(FileDevice::open(&image, Access::ReadWrite).unwrap());
        let (mut b, _) = mount(dev, &MountOptions { jid: Some(1), ..Default::default() }).unwrap();
        let r = b.sys.root;
        b.rename(r, b"g", r, b"from-b", 0).unwrap();
        b.shutdown().unwrap();
    }
    assert!(!mnt.join("g").exists(), "stale entry g still served after the callback");
    assert!(mnt.join("from-b").is_file(), "renamed entry not visible after the callback");
    let _ = s_if::REG;

    bg.umount_and_join().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    common::fsck_path(&image).unwrap_or_else(|e| panic!("{e}"));
}
