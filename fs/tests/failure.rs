//! Graded failure handling: a corrupt metadata block makes the node
//! withdraw (EIO, says which object, writes nothing more); an I/O error
//! from the device is fail-stop for writes; bad superblocks and
//! inconsistent resource groups are refused at mount.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rgfs::format::consts::s_if;
use rgfs::mount::{mount, MountOptions};
use rgfs_block::{BlockDevice, MemDevice};

/// A device that fails every write after a budget, and counts attempts.
struct FailingDevice {
    inner: MemDevice,
    budget: AtomicUsize,
    attempts_after_failure: AtomicUsize,
}

impl BlockDevice for FailingDevice {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> rgfs_block::Result<()> {
        self.inner.read_at(offset, buf)
    }
    fn write_at(&self, offset: u64, buf: &[u8]) -> rgfs_block::Result<()> {
        if self.budget.load(Ordering::SeqCst) == 0 {
            self.attempts_after_failure.fetch_add(1, Ordering::SeqCst);
            return Err(rgfs_block::Error::Io { op: "write", offset, source: std::io::Error::from_raw_os_error(libc::EIO) });
        }
        self.budget.fetch_sub(1, Ordering::SeqCst);
        self.inner.write_at(offset, buf)
    }
    fn flush(&self) -> rgfs_block::Result<()> {
        if self.budget.load(Ordering::SeqCst) == 0 {
            self.attempts_after_failure.fetch_add(1, Ordering::SeqCst);
            return Err(rgfs_block::Error::Io { op: "flush", offset: 0, source: std::io::Error::from_raw_os_error(libc::EIO) });
        }
        self.inner.flush()
    }
}

fn image_with_file() -> (Vec<u8>, u64) {
    let dev = Arc::new(MemDevice::from_bytes(common::mkfs_image(32, 4096, 1)));
    let mut fs = common::mount_dev(dev.clone());
    let root = fs.sys.root;
    let a = fs.create(root, b"victim", s_if::REG | 0o644, 0, Default::default(), None).unwrap();
    fs.write(a.ino, 0, &vec![3u8; 100_000], false, false).unwrap();
    fs.shutdown().unwrap();
    (dev.snapshot(), a.ino)
}

#[test]
fn corrupt_metadata_withdraws_and_stops_writing() {
    require_gfs2_utils!();
    let (mut img, victim) = image_with_file();
    // Zero the magic of the victim's dinode.
    let off = (victim * 4096) as usize;
    img[off..off + 4].fill(0);
    let dev = Arc::new(MemDevice::from_bytes(img));
    let (mut fs, _) = mount(dev.clone(), &MountOptions::default()).unwrap();
    let root = fs.sys.root;
    let err = fs.lookup(root, b"victim").unwrap_err();
    assert_eq!(err.errno(), libc::EIO);
    assert!(err.to_string().contains(&victim.to_string()), "the error names the block: {err}");
    assert!(fs.is_withdrawn());
    let before = dev.snapshot();
    // Everything after is EIO and nothing reaches the device.
    let e = fs.create(root, b"new", s_if::REG | 0o644, 0, Default::default(), None).unwrap_err();
    assert_eq!(e.errno(), libc::EIO);
    assert!(fs.sync().is_err());
    assert!(fs.shutdown().is_ok(), "unmount of a withdrawn node writes nothing and succeeds");
    assert!(dev.snapshot() == before, "a withdrawn node wrote to the device");
}

#[test]
fn io_errors_are_fail_stop() {
    require_gfs2_utils!();
    let (img, victim) = image_with_file();
    let dev = Arc::new(FailingDevice { inner: MemDevice::from_bytes(img), budget: AtomicUsize::new(usize::MAX), attempts_after_failure: AtomicUsize::new(0) });
    let (mut fs, _) = mount(dev.clone(), &MountOptions::default()).unwrap();
    dev.budget.store(0, Ordering::SeqCst);
    let r = fs.write(victim, 0, &vec![1u8; 50_000], false, false).and_then(|_| fs.sync());
    assert_eq!(r.unwrap_err().errno(), libc::EIO);
    assert!(fs.is_withdrawn());
    let attempts = dev.attempts_after_failure.load(Ordering::SeqCst);
    let root = fs.sys.root;
    assert!(fs.create(root, b"x", s_if::REG | 0o644, 0, Default::default(), None).is_err());
    let _ = fs.sync();
    let _ = fs.shutdown();
    assert_eq!(dev.attempts_after_failure.load(Ordering::SeqCst), attempts, "writes were retried after an I/O error");
}

#[test]
fn bad_superblocks_and_inconsistent_rgrps_are_refused_at_mount() {
    require_gfs2_utils!();
    let img = common::mkfs_image(32, 4096, 1);
    let mut bad = img.clone();
    bad[65536..65540].fill(0);
    let e = mount(Arc::new(MemDevice::from_bytes(bad)), &MountOptions::default()).err().expect("refused");
    assert!(e.to_string().contains("not a GFS2 filesystem"), "{e}");
    let e = mount(Arc::new(MemDevice::new(1 << 20)), &MountOptions::default()).err().expect("refused");
    assert!(e.to_string().contains("not a GFS2 filesystem") || e.to_string().contains("too small"), "{e}");
    // lock_dlm volumes need lockproto=lock_nolock for a single-node mount.
    let mut dlm = img.clone();
    dlm[65536 + 96..65536 + 160].fill(0);
    dlm[65536 + 96..65536 + 104].copy_from_slice(b"lock_dlm");
    let e = mount(Arc::new(MemDevice::from_bytes(dlm.clone())), &MountOptions::default()).err().expect("refused");
    assert!(e.to_string().contains("lockproto=lock_nolock"), "{e}");
    let opts = MountOptions::parse("lockproto=lock_nolock").unwrap();
    let (fs, _) = mount(Arc::new(MemDevice::from_bytes(dlm)), &opts).expect("lock_dlm volume mounts with lockproto=lock_nolock");
    drop(fs);
    // An rgrp whose free count disagrees with its bitmap.
    let (img2, _) = image_with_file();
    let dev = Arc::new(MemDevice::from_bytes(img2.clone()));
    let fs = common::mount_dev(dev);
    let r = fs.alloc.rgrps.last().unwrap().ri;
    drop(fs);
    let mut bad = img2;
    let hdr = (r.addr * 4096) as usize;
    let free = u32::from_be_bytes(bad[hdr + 28..hdr + 32].try_into().unwrap());
    bad[hdr + 28..hdr + 32].copy_from_slice(&(free - 1).to_be_bytes());
    bad[hdr + 64..hdr + 68].fill(0); // rg_crc 0 = not set
    let e = mount(Arc::new(MemDevice::from_bytes(bad)), &MountOptions::default()).err().expect("refused");
    assert!(e.to_string().contains("resource group"), "{e}");
}

#[test]
fn mount_options_parse_like_gfs2() {
    let o = MountOptions::parse("lockproto=lock_nolock,locktable=c:f,hostdata=jid=3,ro,noatime,errors=panic,allow_other").unwrap();
    assert_eq!(o.jid, Some(3));
    assert!(o.read_only && o.noatime && o.errors_panic && o.allow_other);
    assert_eq!(o.lockproto.as_deref(), Some("lock_nolock"));
    assert!(MountOptions::parse("errors=maybe").is_err());
    assert!(MountOptions::parse("lockproto=lock_foo").is_err());
    assert!(MountOptions::parse("hostdata=jid=x").is_err());
    assert!(MountOptions::parse("frobnicate").unwrap_err().contains("unknown mount option"));
    assert!(!MountOptions::parse("noatime,relatime").unwrap().noatime);
    // Quotas: off is the default and accepted; asking for them is refused
    // clearly rather than silently ignored.
    assert!(MountOptions::parse("quota=off,noquota").is_ok());
    for q in ["quota", "quota=on", "quota=account"] {
        let e = MountOptions::parse(q).unwrap_err();
        assert!(e.contains("quotas are not supported yet"), "{q}: {e}");
    }
    assert!(MountOptions::parse("quota=maybe").unwrap_err().contains("expected off, on or account"));
}

/// A device that refuses every write, as a read-only block device does.
struct ReadOnlyDevice(MemDevice);

impl BlockDevice for ReadOnlyDevice {
    fn size(&self) -> u64 {
        self.0.size()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> rgfs_block::Result<()> {
        self.0.read_at(offset, buf)
    }
    fn write_at(&self, _offset: u64, _buf: &[u8]) -> rgfs_block::Result<()> {
        Err(rgfs_block::Error::ReadOnly)
    }
    fn flush(&self) -> rgfs_block::Result<()> {
        Ok(())
    }
}

/// As the kernel does: a read-only mount of a volume whose journal is
/// dirty replays the journal when the device can be written, and refuses
/// clearly, writing nothing, when it cannot.
#[test]
fn read_only_mount_replays_a_dirty_journal_if_the_device_is_writable() {
    require_gfs2_utils!();
    let dev = Arc::new(MemDevice::from_bytes(common::mkfs_image(32, 4096, 1)));
    let mut fs = common::mount_dev(dev.clone());
    let root = fs.sys.root;
    let a = fs.create(root, b"logged", s_if::REG | 0o644, 0, Default::default(), None).unwrap();
    fs.write(a.ino, 0, &vec![7u8; 50_000], false, false).unwrap();
    fs.sync().unwrap();
    // The node dies: the journal holds the transaction, the home blocks
    // may not.
    let dirty = dev.snapshot();
    drop(fs);
    let ro = MountOptions::parse("ro").unwrap();

    let rodev = Arc::new(ReadOnlyDevice(MemDevice::from_bytes(dirty.clone())));
    let e = mount(rodev.clone(), &ro).err().expect("a dirty journal on a read-only device must refuse");
    assert!(e.to_string().contains("needs recovery and the device is read-only"), "{e}");
    assert_eq!(rodev.0.snapshot(), dirty, "nothing written");

    let wdev = Arc::new(MemDevice::from_bytes(dirty));
    let (mut fs, report) = mount(wdev.clone(), &ro).unwrap();
    assert!(report.was_dirty && report.replayed_blocks > 0, "{report:?}");
    assert_eq!(fs.read(a.ino, 0, 50_000).unwrap(), vec![7u8; 50_000]);
    let e = fs.create(root, b"x", s_if::REG | 0o644, 0, Default::default(), None).unwrap_err();
    assert_eq!(e.errno(), libc::EROFS);
    drop(fs);
    // Replayed for good: the next mount finds a clean journal.
    let (mut fs, report) = mount(wdev.clone(), &MountOptions::default()).unwrap();
    assert!(!report.was_dirty, "{report:?}");
    fs.shutdown().unwrap();
    drop(fs);
    common::fsck(&wdev.snapshot()).unwrap();
}
