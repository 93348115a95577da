//! Data transfers that run without the core lock (`glock::Fs::read`,
//! `glock::Fs::write`) racing with operations that free blocks: a device
//! gate holds one transfer in the middle while the other thread goes on.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use rgfs::format::consts::s_if;
use rgfs::glock::{Fs, GlockState, NoLock};
use rgfs::ops::SetAttr;
use rgfs_block::{BlockDevice, MemDevice};

/// A device whose reads of one byte offset (or whose flushes) wait for the
/// gate to open once armed, so a test can stop a thread in its transfer.
struct GateDevice {
    inner: MemDevice,
    armed_at: AtomicU64,
    flush_armed: AtomicBool,
    reader_waiting: AtomicBool,
    open: Mutex<bool>,
    opened: Condvar,
}

impl GateDevice {
    fn new(image: Vec<u8>) -> GateDevice {
        GateDevice {
            inner: MemDevice::from_bytes(image),
            armed_at: AtomicU64::new(u64::MAX),
            flush_armed: AtomicBool::new(false),
            reader_waiting: AtomicBool::new(false),
            open: Mutex::new(false),
            opened: Condvar::new(),
        }
    }

    fn wait_for_gate(&self) {
        self.reader_waiting.store(true, Ordering::SeqCst);
        let mut open = self.open.lock().unwrap();
        while !*open {
            open = self.opened.wait(open).unwrap();
        }
    }

    fn open_gate(&self) {
        *self.open.lock().unwrap() = true;
        self.opened.notify_all();
    }
}

impl BlockDevice for GateDevice {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> rgfs_block::Result<()> {
        let at = self.armed_at.load(Ordering::SeqCst);
        if (offset..offset + buf.len() as u64).contains(&at) {
            self.wait_for_gate();
        }
        self.inner.read_at(offset, buf)
    }
    fn write_at(&self, offset: u64, buf: &[u8]) -> rgfs_block::Result<()> {
        self.inner.write_at(offset, buf)
    }
    fn flush(&self) -> rgfs_block::Result<()> {
        if self.flush_armed.load(Ordering::SeqCst) {
            self.wait_for_gate();
        }
        self.inner.flush()
    }
}

const EX: GlockState = GlockState::Exclusive;

/// A mounted volume on a gate device.
fn gated_fs() -> (Arc<GateDevice>, Arc<Fs>) {
    let dev = Arc::new(GateDevice::new(common::mkfs_image(24, 4096, 1)));
    let fs = Fs::new(common::mount_dev(dev.clone()), Arc::new(NoLock)).unwrap();
    (dev, fs)
}

/// Creates a regular file in the root directory.
fn create(fs: &Fs, name: &str) -> u64 {
    let root = fs.root();
    fs.with_inodes(&[root], EX, |c| c.create(root, name.as_bytes(), s_if::REG | 0o644, 0, Default::default(), None))
        .unwrap()
        .ino
}

/// Waits until `done()` holds or about `max_ms` have passed, whichever
/// comes first (the caller then opens the gate either way).
fn wait_until(done: impl Fn() -> bool, max_ms: u32) {
    for _ in 0..max_ms {
        if done() {
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Waits until a thread stopped at the gate.
fn wait_for_the_gate(dev: &GateDevice) {
    while !dev.reader_waiting.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Unmounts cleanly and checks the image with fsck.gfs2.
fn unmount_and_check(dev: Arc<GateDevice>, fs: Arc<Fs>) {
    fs.core.lock().shutdown().unwrap();
    drop(fs);
    common::fsck(&dev.inner.snapshot()).unwrap();
}

/// A read that planned its blocks, then lost the race to a truncate: the
/// freed blocks must not be handed to another file and overwritten before
/// the read's transfer is done, or the read returns that file's data.
#[test]
fn a_read_racing_a_truncate_never_returns_another_files_data() {
    require_gfs2_utils!();
    let (dev, fs) = gated_fs();
    let victim = create(&fs, "victim");
    let other = create(&fs, "other");
    fs.write(victim, 0, &vec![0x11; 1 << 20], false, false).unwrap();
    // Fill the volume: the only blocks the next allocation can get are the
    // victim's, once its truncate is durable.
    let filler = create(&fs, "filler");
    let chunk = vec![0x33; 1 << 20];
    let mut off = 0;
    while fs.write(filler, off, &chunk, false, false).is_ok() {
        off += chunk.len() as u64;
    }
    let mut off = 0;
    while fs.write(filler, off, &chunk[..4096], false, false).is_ok() {
        off += 4096;
    }
    fs.with_inodes(&[], EX, |c| c.sync()).unwrap();
    let first = fs.with_inodes(&[victim], EX, |c| c.read_planned(victim, 0, 4096)).unwrap();
    dev.armed_at.store(first.runs[0].1, Ordering::SeqCst);

    std::thread::scope(|s| {
        let reader = s.spawn(|| fs.read(victim, 0, 1 << 20).unwrap());
        wait_for_the_gate(&dev);
        let writer = s.spawn(|| {
            fs.with_inodes(&[victim], EX, |c| {
                c.setattr(victim, SetAttr { size: Some(0), ..Default::default() })?;
                c.sync()
            })
            .unwrap();
            let n = fs.write(other, 0, &vec![0x22; 1 << 20], false, false).unwrap();
            fs.with_inodes(&[], EX, |c| c.sync()).unwrap();
            n
        });
        // The writer either finishes (it reused the blocks while the read was
        // held: the bug) or waits for the read; open the gate either way.
        wait_until(|| writer.is_finished(), 2000);
        dev.open_gate();
        let got = reader.join().unwrap();
        assert_eq!(writer.join().unwrap(), 1 << 20, "the other file got the freed blocks");
        if let Some(i) = got.iter().position(|&b| b != 0x11) {
            panic!("the read returned byte {:#x} at {i}: another file's data in blocks freed under it", got[i]);
        }
    });
    unmount_and_check(dev, fs);
}

/// fsync flushes the device without the core lock: while one thread waits
/// for a slow flush, another reads and stats files; the fsync returns once
/// the flush is done, with the header durable.
#[test]
fn other_operations_go_on_while_an_fsync_waits_for_the_device() {
    require_gfs2_utils!();
    let (dev, fs) = gated_fs();
    let a = create(&fs, "f");
    fs.write(a, 0, &vec![7u8; 100_000], false, false).unwrap();
    // Commit without the final flush: what the fsync has left to do is the
    // flush that makes the header durable.
    fs.with_inodes(&[], EX, |c| c.commit(false)).unwrap();
    let durable_before = fs.core.lock().log.as_ref().unwrap().durable_sequence();
    dev.flush_armed.store(true, Ordering::SeqCst);
    std::thread::scope(|s| {
        let syncer = s.spawn(|| fs.sync(&[a]));
        wait_for_the_gate(&dev);
        let other = s.spawn(|| {
            let size = fs.with_inodes(&[a], EX, |c| c.getattr(a)).unwrap().size;
            (size, fs.read(a, 0, 10).unwrap())
        });
        // The other thread either finishes while the flush is held (the
        // fsync let the core lock go) or waits for it; open the gate after
        // a while either way.
        wait_until(|| other.is_finished(), 5000);
        let finished_during_flush = other.is_finished();
        assert!(!syncer.is_finished(), "fsync returned before its flush completed");
        dev.open_gate();
        assert_eq!(other.join().unwrap(), (100_000, vec![7u8; 10]));
        syncer.join().unwrap().unwrap();
        assert!(finished_during_flush, "getattr and read waited for the fsync's device flush");
    });
    let durable_after = fs.core.lock().log.as_ref().unwrap().durable_sequence();
    assert!(durable_after > durable_before, "the fsync made the last header durable");
    unmount_and_check(dev, fs);
}
