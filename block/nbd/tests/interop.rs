//! Interoperability both ways with independent NBD peers: our client
//! (`NbdDevice`) against qemu-nbd, and qemu-io / nbdinfo against our server.
//! Every pattern is checked byte for byte against the backing file.

mod support;


use std::sync::Arc;

use rgfs_block::{Access, BlockDevice};
use rgfs_nbd::{open_device, NbdDevice};
use support::*;

const MIB: usize = 1 << 20;

/// Writes, flushes and reads through `dev`, keeping `model` in step; then
/// the file behind the server must equal the model.
fn exercise(dev: &dyn BlockDevice, model: &mut [u8], file: &std::path::Path) {
    assert_eq!(dev.size(), model.len() as u64);
    // Unaligned, sector-aligned, and larger than one request (33 MiB is
    // split at the 32 MiB maximum payload).
    for (offset, len, seed) in [(1000, 5000, 1), (4096, 4096, 2), (3 * MIB, MIB, 3), (8 * MIB, 33 * MIB, 4), (model.len() - 512, 512, 5)] {
        let data = pattern(len, seed);
        dev.write_at(offset as u64, &data).unwrap();
        model[offset..offset + len].copy_from_slice(&data);
    }
    dev.flush().unwrap();
    let mut back = vec![0u8; model.len()];
    dev.read_at(0, &mut back).unwrap();
    assert!(back == model, "read back through NBD differs from what was written");
    assert_file(file, model);
    // Out of range: refused before anything is sent, nothing changes.
    assert!(dev.write_at(model.len() as u64 - 1, b"xy").is_err());
    assert!(dev.read_at(u64::MAX, &mut [0u8; 1]).is_err());
    assert_file(file, model);
}

#[test]
fn our_client_against_qemu_nbd_on_a_unix_socket_and_tcp() {
    if !have("qemu-nbd") {
        return;
    }
    let dir = scratch();
    let file = dir.path().join("disk.img");
    let mut model = image(&file, 48 * MIB, 0x5a);
    {
        let sock = dir.path().join("q.sock");
        let _q = QemuNbd::unix(&file, "disk", &sock);
        let dev = open_device(format!("nbd+unix:///disk?socket={}", sock.display()), Access::ReadWrite).unwrap();
        exercise(&*dev, &mut model, &file);
        let err = NbdDevice::open(&format!("nbd+unix:///nosuch?socket={}", sock.display()), Access::ReadOnly).unwrap_err();
        assert!(err.to_string().contains("refused export \"nosuch\""), "{err}");
    }
    let (_q, port) = QemuNbd::tcp(&file, "disk");
    let dev = NbdDevice::open(&format!("nbd://127.0.0.1:{port}/disk"), Access::ReadWrite).unwrap();
    exercise(&dev, &mut model, &file);
}

#[test]
fn qemu_io_against_our_server() {
    if !have("qemu-io") {
        return;
    }
    let dir = scratch();
    let file = dir.path().join("disk.img");
    let mut model = image(&file, 16 * MIB, 0x11);
    let served = Served::start(&["--export", &format!("disk={}", file.display())], None);
    let url = served.url("disk");
    let (ok, out) = qemu_io(
        &url,
        &[
            "write -P 0xab 0 1M",
            "write -z 1M 64k",  // WRITE_ZEROES over 0x11 bytes
            "discard 3M 64k",   // TRIM: a hint, the data stays
            "write -f -P 0xcd 4M 4k", // FUA
            "aio_write -P 0xee 5M 8k",
            "aio_flush",
            "flush",
            "read -P 0xab 0 1M",
            "read -P 0 1M 64k",
            "read -P 0xcd 4M 4k",
            "read -P 0xee 5M 8k",
            "read -P 0x11 3M 64k",
        ],
    );
    assert!(ok, "qemu-io against rgfs-nbd:\n{out}");
    model[..MIB].fill(0xab);
    model[MIB..MIB + 65536].fill(0);
    model[4 * MIB..4 * MIB + 4096].fill(0xcd);
    model[5 * MIB..5 * MIB + 8192].fill(0xee);
    assert_file(&file, &model);
    // The same through a Unix socket.
    drop(served);
    let sock = dir.path().join("s.sock");
    let served = Served::start(&["--export", &format!("disk={}", file.display())], Some(&sock));
    let (ok, out) = qemu_io(&served.url("disk"), &["write -P 0x77 6M 512", "flush", "read -P 0x77 6M 512"]);
    assert!(ok, "qemu-io over the Unix socket:\n{out}");
    model[6 * MIB..6 * MIB + 512].fill(0x77);
    assert_file(&file, &model);
}

#[test]
fn nbdinfo_reads_the_exports_and_their_flags() {
    if !have("nbdinfo") {
        return;
    }
    let dir = scratch();
    let (a, b) = (dir.path().join("a.img"), dir.path().join("b.img"));
    image(&a, MIB, 0);
    image(&b, 2 * MIB, 0);
    let served = Served::start(
        &["--export", &format!("alpha={}", a.display()), "--export", &format!("beta={}", b.display())],
        None,
    );
    let out = std::process::Command::new("nbdinfo").arg(served.url("beta")).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "nbdinfo: {text}{}", String::from_utf8_lossy(&out.stderr));
    for want in ["export-size: 2097152", "can_flush: true", "can_fua: true", "can_trim: true", "can_zero: true", "can_multi_conn: true", "is_read_only: false"] {
        assert!(text.contains(want), "nbdinfo lacks {want:?}:\n{text}");
    }
    let out = std::process::Command::new("nbdinfo").arg("--list").arg(served.url("")).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("export=\"alpha\"") && text.contains("export=\"beta\""), "nbdinfo --list:\n{text}");
}

#[test]
fn several_clients_share_one_export() {
    let dir = scratch();
    let file = dir.path().join("disk.img");
    let mut model = image(&file, 16 * MIB, 0);
    let served = Served::start(&["--export", &format!("disk={}", file.display())], None);
    let url = served.url("disk");
    // Four of our clients write disjoint regions at the same time, while
    // qemu-io (when present) writes a fifth.
    let writers: Vec<_> = (0..4u8)
        .map(|i| {
            let url = url.clone();
            std::thread::spawn(move || {
                let dev = NbdDevice::open(&url, Access::ReadWrite).unwrap();
                for round in 0..8 {
                    let off = usize::from(i) * 2 * MIB + round * 128 * 1024;
                    dev.write_at(off as u64, &pattern(128 * 1024, i * 16 + round as u8)).unwrap();
                }
                dev.flush().unwrap();
            })
        })
        .collect();
    let qemu = have("qemu-io").then(|| {
        let url = url.clone();
        std::thread::spawn(move || qemu_io(&url, &["write -P 0x42 12M 1M", "flush"]))
    });
    for w in writers {
        w.join().unwrap();
    }
    for i in 0..4u8 {
        for round in 0..8 {
            let off = usize::from(i) * 2 * MIB + round * 128 * 1024;
            model[off..off + 128 * 1024].copy_from_slice(&pattern(128 * 1024, i * 16 + round as u8));
        }
    }
    if let Some(q) = qemu {
        let (ok, out) = q.join().unwrap();
        assert!(ok, "{out}");
        model[12 * MIB..13 * MIB].fill(0x42);
    }
    assert_file(&file, &model);
    // Coherence: what one client writes, another reads at once.
    let a = NbdDevice::open(&url, Access::ReadWrite).unwrap();
    let b = NbdDevice::open(&url, Access::ReadOnly).unwrap();
    for v in 0..20u8 {
        a.write_at(4096, &[v; 4096]).unwrap();
        let mut got = [0u8; 4096];
        b.read_at(4096, &mut got).unwrap();
        assert_eq!(got, [v; 4096]);
    }
}

#[test]
fn one_device_used_from_several_threads_gets_several_connections() {
    let dir = scratch();
    let file = dir.path().join("disk.img");
    let mut model = image(&file, 4 * MIB, 0);
    let served = Served::start(&["--export", &format!("disk={}", file.display())], None);
    let shared = Arc::new(NbdDevice::open(&served.url("disk"), Access::ReadWrite).unwrap());
    let wrote = write_from_threads(&shared, 4, 64, 16 * 1024, MIB);
    // One flush, on whichever connection, covers the writes of all.
    shared.flush().unwrap();
    drop(shared);
    for (off, data) in wrote {
        model[off..off + data.len()].copy_from_slice(&data);
    }
    assert_file(&file, &model);
    // Four threads each blocked on a reply most of the time overlap, so the
    // device opened more than its first connection.
    let (status, log) = served.signal_and_wait(libc::SIGTERM);
    assert!(status.success());
    let connections = log.matches("left export").count();
    assert!((2..=4).contains(&connections), "{connections} connections:\n{log}");
}
