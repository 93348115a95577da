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
use rgfs::glock::{DlmMode, Fs, GlockState, Granted, LockError, LockEvents, LockModule, LockName, LockRequest};
use rgfs::mount::{mount, MountOptions};
use rgfs_block::{Access, FileDevice};

/// Grants everything at once, records requests, and lets the test fire
/// callbacks.
#[derive(Default)]
struct TestLock {
    events: Mutex<Option<Arc<dyn LockEvents>>>,
    requests: Mutex<Vec<(LockName, DlmMode)>>,
    unlocks: Mutex<Vec<LockName>>,
}

impl LockModule for TestLock {
    fn proto_name(&self) -> &str {
        "lock_test"
    }
    fn request(&self, req: LockRequest) -> Option<Result<Granted, LockError>> {
        if req.to == GlockState::Unlocked {
            self.unlocks.lock().unwrap().push(req.name);
        } else {
            self.requests.lock().unwrap().push((req.name, req.to.dlm_mode()));
        }
        Some(Ok(Granted { state: req.to, lvb: None }))
    }
    fn set_events(&self, events: Arc<dyn LockEvents>) {
        *self.events.lock().unwrap() = Some(events);
    }
}

impl TestLock {
    /// Fires a blocking callback and waits until the demote (run by the
    /// glock worker) is done, kernel invalidation included.
    fn fire(&self, fs: &Fs, name: LockName, mode: DlmMode) {
        let events = self.events.lock().unwrap().clone().expect("events registered");
        let before = fs.glocks.demotes(name);
        events.blocking(name, mode);
        assert!(fs.glocks.wait_settled(name, Duration::from_secs(30)), "demote of {name} did not settle");
        assert!(fs.glocks.demotes(name) > before, "no demote of {name} ran");
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
    if !std::path::Path::new("/dev/fuse").exists() {
        common::missing("/dev/fuse");
        return;
    }
    if !common::require("fusermount3") {
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
    lock.fire(&fs, LockName::inode(f_ino), DlmMode::Ex);
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
    lock.fire(&fs, LockName::inode(root), DlmMode::Ex);
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

/// A lock module shaped like the real client: requests return at once and
/// are completed later, out of order, from the module's own thread, which
/// also fires blocking callbacks with random modes at random moments.
struct AsyncLock {
    events: Mutex<Option<Arc<dyn LockEvents>>>,
    pending: Mutex<Vec<LockRequest>>,
    stop: std::sync::atomic::AtomicBool,
}

/// xorshift64*: enough randomness for a stress test, reproducible by seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) % n
    }
}

impl LockModule for AsyncLock {
    fn proto_name(&self) -> &str {
        "lock_async_test"
    }
    fn request(&self, req: LockRequest) -> Option<Result<Granted, LockError>> {
        self.pending.lock().unwrap().push(req);
        None
    }
    fn set_events(&self, events: Arc<dyn LockEvents>) {
        *self.events.lock().unwrap() = Some(events);
    }
}

impl AsyncLock {
    /// The module's thread: completes pending requests in random order
    /// (try requests sometimes fail) and fires callbacks on `names`.
    fn run(&self, names: &[LockName], seed: u64) {
        let mut rng = Rng(seed);
        let events = self.events.lock().unwrap().clone().expect("events registered");
        while !self.stop.load(std::sync::atomic::Ordering::Relaxed) {
            std::thread::sleep(Duration::from_micros(rng.below(300)));
            let req = {
                let mut p = self.pending.lock().unwrap();
                let n = p.len() as u64;
                (n > 0).then(|| p.swap_remove(rng.below(n) as usize))
            };
            if let Some(r) = req {
                let result = if r.flags.try_lock && rng.below(4) == 0 {
                    Err(LockError::TryFailed(r.name))
                } else {
                    Ok(Granted { state: r.to, lvb: None })
                };
                events.completed(r.name, result);
            }
            if rng.below(8) == 0 {
                let name = names[rng.below(names.len() as u64) as usize];
                let mode = [DlmMode::Ex, DlmMode::Pr, DlmMode::Cw][rng.below(3) as usize];
                events.blocking(name, mode);
            }
        }
    }
}

/// Demote work that needs the "core" mutex, as `Fs`'s does, and checks it
/// runs on the glock worker with no holder of its glock granted.
struct CheckingDemoter {
    table: std::sync::Weak<rgfs::glock::GlockTable>,
    core: Arc<Mutex<()>>,
    violations: Arc<Mutex<Vec<String>>>,
    syncs: std::sync::atomic::AtomicU64,
}

impl rgfs::glock::Demoter for CheckingDemoter {
    fn sync(&self, name: LockName, from: GlockState, to: GlockState) -> rgfs::Result<()> {
        let _core = self.core.lock().unwrap();
        let thread = std::thread::current().name().unwrap_or("").to_string();
        if thread != "rgfs-glock" {
            self.violations.lock().unwrap().push(format!("demote of {name} ran on thread {thread:?}"));
        }
        if let Some(t) = self.table.upgrade() {
            if t.holders(name) != 0 {
                self.violations.lock().unwrap().push(format!("demote {from:?}→{to:?} of {name} with holders granted"));
            }
        }
        self.syncs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
    fn demoted(&self, _: LockName, _: GlockState) {}
}

/// Threads take holders on several glocks in the lock order, then the core
/// mutex, while the lock module completes requests late and out of order
/// and fires callbacks at random: nothing deadlocks (every wait is bounded
/// and a timeout fails the test), holders are always covered, demotes run
/// on the worker with no holder granted, a blocking acquisition under the
/// core mutex is refused (never waits), and every callback is honoured at
/// the end.
#[test]
fn holders_and_racing_callbacks_under_an_async_lock_module() {
    use rgfs::glock::{DemoteLockMark, GlockConfig, GlockTable, HolderFlags};
    let module = Arc::new(AsyncLock { events: Mutex::new(None), pending: Mutex::new(Vec::new()), stop: false.into() });
    let config = GlockConfig { min_hold: Duration::from_millis(2), wait_timeout: Duration::from_secs(30) };
    let table = Arc::new(GlockTable::new(module.clone(), config));
    let core = Arc::new(Mutex::new(()));
    let violations = Arc::new(Mutex::new(Vec::new()));
    let demoter = Arc::new(CheckingDemoter {
        table: Arc::downgrade(&table),
        core: core.clone(),
        violations: violations.clone(),
        syncs: 0.into(),
    });
    table.set_demoter(demoter.clone());
    let names: Vec<LockName> = (0..6).map(|i| LockName::inode(100 + i)).collect();
    let module_thread = {
        let (m, n) = (module.clone(), names.clone());
        std::thread::spawn(move || m.run(&n, 0x9e37_79b9_7f4a_7c15))
    };
    let clients: Vec<_> = (0..4u64)
        .map(|t| {
            let (table, core, names, violations) = (table.clone(), core.clone(), names.clone(), violations.clone());
            std::thread::spawn(move || {
                let mut rng = Rng(t * 7919 + 17);
                for _ in 0..300 {
                    let mut picked: Vec<LockName> = (0..1 + rng.below(3)).map(|_| names[rng.below(6) as usize]).collect();
                    picked.sort();
                    picked.dedup();
                    let (mode, flags) = match rng.below(3) {
                        0 => (GlockState::Exclusive, HolderFlags { node_scope: true, ..Default::default() }),
                        1 => (GlockState::Shared, HolderFlags::default()),
                        _ => (GlockState::Exclusive, HolderFlags::default()),
                    };
                    let mut held = Vec::new();
                    for &n in &picked {
                        if rng.below(5) == 0 {
                            if let Some(h) = table.try_acquire(n, mode, flags).expect("try-lock error") {
                                held.push((n, h));
                            }
                        } else {
                            let h = table.acquire(n, mode, flags).unwrap_or_else(|e| panic!("client {t}: {e}"));
                            held.push((n, h));
                        }
                    }
                    {
                        let _core = core.lock().unwrap();
                        let _mark = DemoteLockMark::new();
                        for (n, _) in &held {
                            if !table.state(*n).covers(mode) {
                                violations.lock().unwrap().push(format!("{n} in {:?} under a {mode:?} holder", table.state(*n)));
                            }
                        }
                        // Under the core mutex: a blocking acquisition is refused
                        // at once; a try-lock is allowed and returns.
                        if rng.below(10) == 0 {
                            let other = names[rng.below(6) as usize];
                            match table.acquire(other, GlockState::Exclusive, HolderFlags::default()) {
                                Err(rgfs::Error::Lock(_)) => {}
                                other => violations.lock().unwrap().push(format!("acquire under the core mutex: {other:?}")),
                            }
                            drop(table.try_acquire(other, GlockState::Shared, HolderFlags::default()).expect("try-lock"));
                        }
                    }
                    drop(held);
                }
            })
        })
        .collect();
    for c in clients {
        c.join().expect("client thread");
    }
    // Every glock is given up on request once its holders are gone.
    let events = module.events.lock().unwrap().clone().unwrap();
    for &n in &names {
        events.blocking(n, DlmMode::Ex);
    }
    for &n in &names {
        assert!(table.wait_settled(n, Duration::from_secs(30)), "{n} never settled");
        assert_eq!(table.state(n), GlockState::Unlocked, "callback on {n} not honoured");
    }
    module.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    module_thread.join().unwrap();
    let v = violations.lock().unwrap();
    assert!(v.is_empty(), "{} violations, first: {:?}", v.len(), v.first());
    assert!(demoter.syncs.load(std::sync::atomic::Ordering::Relaxed) > 0, "no demote ran");
}

/// A request waiting on the lock manager for one glock does not hold up
/// another glock (the old table held one mutex across the module's wait),
/// and a refusal from the lock manager is a lock error, not corruption.
#[test]
fn requests_are_independent_and_refusals_are_lock_errors() {
    use rgfs::glock::{GlockConfig, GlockTable, HolderFlags};
    let module = Arc::new(AsyncLock { events: Mutex::new(None), pending: Mutex::new(Vec::new()), stop: false.into() });
    let config = GlockConfig { min_hold: Duration::ZERO, wait_timeout: Duration::from_secs(30) };
    let table = Arc::new(GlockTable::new(module.clone(), config));
    let (a, b) = (LockName::inode(1), LockName::inode(2));
    let waiter = {
        let t = table.clone();
        std::thread::spawn(move || t.acquire(a, GlockState::Exclusive, HolderFlags::default()).map(|h| h.mode()))
    };
    while module.pending.lock().unwrap().is_empty() {
        std::thread::yield_now();
    }
    // A's request is outstanding; B is requested and granted meanwhile.
    let events = module.events.lock().unwrap().clone().unwrap();
    let b_holder = {
        let t = table.clone();
        let h = std::thread::spawn(move || t.acquire(b, GlockState::Shared, HolderFlags::default()).map(|h| h.mode()));
        loop {
            let req = module.pending.lock().unwrap().iter().position(|r| r.name == b);
            if let Some(i) = req {
                let r = module.pending.lock().unwrap().remove(i);
                events.completed(r.name, Ok(Granted { state: r.to, lvb: None }));
                break;
            }
            std::thread::yield_now();
        }
        h.join().unwrap()
    };
    assert_eq!(b_holder.unwrap(), GlockState::Shared);
    assert!(!waiter.is_finished(), "A was granted without its reply");
    // The lock manager refuses A: the holder fails with Error::Lock.
    let r = module.pending.lock().unwrap().remove(0);
    events.completed(r.name, Err(LockError::Failed(r.name, "no quorum".into())));
    match waiter.join().unwrap() {
        Err(rgfs::Error::Lock(why)) => assert!(why.contains("no quorum"), "{why}"),
        other => panic!("expected a lock error, got {other:?}"),
    }
}
