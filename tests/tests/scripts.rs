//! The scripts a user runs first: scripts/install.sh and
//! scripts/quickstart.sh. They take the binaries from $CARGO_TARGET_DIR,
//! install stripped binaries and uninstall them, and quickstart destroys
//! nothing without asking (here there is no terminal, so it never asks).
//!
//! Building is cargo's job and is not retested here: a stub `cargo` on
//! PATH stands in, and $CARGO_TARGET_DIR/release holds links to the
//! binaries this test run built.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use rgfs_tests::{fsck, fuse_available, make_image, scratch, workspace_bin, Mkfs};

const BINARIES: [(&str, &str, &str); 6] = [
    ("rgfs", "mount-rgfs", "mount.rgfs"),
    ("rgfs-mkfs", "mkfs-rgfs", "mkfs.rgfs"),
    ("rgfs-fsck", "fsck-rgfs", "fsck.rgfs"),
    ("rgfs", "umount-fuse-rgfs", "umount.fuse.rgfs"),
    ("rgfs-dlm", "rgfs-dlmd", "rgfs-dlmd"),
    ("rgfs-dlm", "rgfs-dlm", "rgfs-dlm"),
];

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("scripts").join(name)
}

/// A target dir whose release/ links to the built binaries, and a PATH
/// whose `cargo` does nothing.
struct Fake {
    target: PathBuf,
    path: String,
}

fn fake(dir: &Path, which: &[(&str, &str, &str)]) -> Fake {
    let release = dir.join("target/release");
    fs::create_dir_all(&release).unwrap();
    for (package, built, _) in which {
        std::os::unix::fs::symlink(workspace_bin(package, built), release.join(built)).unwrap();
    }
    let stub = dir.join("stub");
    fs::create_dir_all(&stub).unwrap();
    fs::write(stub.join("cargo"), "#!/bin/sh\nexit 0\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(stub.join("cargo"), fs::Permissions::from_mode(0o755)).unwrap();
    Fake { target: dir.join("target"), path: format!("{}:{}", stub.display(), std::env::var("PATH").unwrap()) }
}

fn run(fake: &Fake, script_name: &str, args: &[&Path]) -> Output {
    Command::new("bash")
        .arg(script(script_name))
        .args(args)
        .env("CARGO_TARGET_DIR", &fake.target)
        .env("PATH", &fake.path)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn install_takes_the_binaries_from_cargo_target_dir_strips_them_and_uninstalls() {
    let tmp = scratch();
    // A target dir lacking a binary: the error names the file it looked
    // for, under CARGO_TARGET_DIR.
    let partial = fake(&tmp.path().join("partial"), &BINARIES[..3]);
    let sbin = tmp.path().join("sbin");
    let out = run(&partial, "install.sh", &[&sbin]);
    assert!(!out.status.success(), "{}", text(&out));
    let missing = partial.target.join("release/umount-fuse-rgfs");
    assert!(text(&out).contains(&format!("{} was not built", missing.display())), "{}", text(&out));

    let full = fake(&tmp.path().join("full"), &BINARIES);
    fs::create_dir_all(&sbin).unwrap();
    fs::write(sbin.join("someone-elses"), b"keep me").unwrap();
    let out = run(&full, "install.sh", &[&sbin]);
    assert!(out.status.success(), "{}", text(&out));
    for (package, built, name) in BINARIES {
        let installed = fs::read(sbin.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        let original = fs::read(workspace_bin(package, built)).unwrap();
        assert!(installed.len() < original.len(), "{name} was not stripped");
        if rgfs_tests::have("readelf") {
            let sections = Command::new("readelf").args(["-S", "-W"]).arg(sbin.join(name)).output().unwrap();
            let sections = String::from_utf8_lossy(&sections.stdout);
            assert!(sections.contains(".text") && !sections.contains(".debug_info"), "{name} keeps its debug info");
        }
    }
    // Each runs under its installed name; mount.fuse.rgfs is mount.rgfs.
    for name in ["mount.rgfs", "mkfs.rgfs", "fsck.rgfs", "mount.fuse.rgfs"] {
        let v = Command::new(sbin.join(name)).arg("--version").output().unwrap();
        assert!(v.status.success(), "{name}");
        let want = if name == "mount.fuse.rgfs" { "mount.rgfs" } else { name };
        assert!(String::from_utf8_lossy(&v.stdout).starts_with(want), "{name}: {}", String::from_utf8_lossy(&v.stdout));
    }
    assert_eq!(fs::read_link(sbin.join("mount.fuse.rgfs")).unwrap(), Path::new("mount.rgfs"));

    let out = Command::new("bash")
        .arg(script("install.sh"))
        .arg("--uninstall")
        .arg(&sbin)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let left: Vec<String> =
        fs::read_dir(&sbin).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert_eq!(left, ["someone-elses"], "uninstall removes exactly what install put there");
}

/// quickstart without a terminal: a non-empty mount point and an image
/// that is not a clean volume are refused; a clean volume is reused, not
/// reformatted.
#[test]
fn quickstart_destroys_nothing_without_asking() {
    if !fuse_available() {
        return;
    }
    let tmp = scratch();
    let fake = fake(&tmp.path().join("fake"), &BINARIES[..3]);
    let img = tmp.path().join("demo.img");
    let mnt = tmp.path().join("mnt");
    let _guard = rgfs_tests::Unmount(mnt.clone());
    let size = Path::new("64M");

    // A non-empty mount point: refused, nothing made.
    fs::create_dir(&mnt).unwrap();
    fs::write(mnt.join("mine"), b"x").unwrap();
    let out = run(&fake, "quickstart.sh", &[&img, size, &mnt]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("not empty"), "{}", text(&out));
    assert!(!img.exists(), "nothing is made when the mount point is refused");
    fs::remove_file(mnt.join("mine")).unwrap();

    // An image holding something else: refused, untouched.
    fs::write(&img, vec![0x5au8; 1 << 20]).unwrap();
    let out = run(&fake, "quickstart.sh", &[&img, size, &mnt]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("not touching it"), "{}", text(&out));
    assert_eq!(fs::read(&img).unwrap(), vec![0x5au8; 1 << 20]);
    fs::remove_file(&img).unwrap();

    // A clean volume with a file on it: mounted as it is.
    make_image(&img, 64, Mkfs::Rgfs);
    let m = rgfs_tests::Mounted::new(&img, &mnt, "").unwrap();
    fs::write(m.path("kept"), b"still here").unwrap();
    m.unmount().unwrap();
    let out = run(&fake, "quickstart.sh", &[&img, size, &mnt]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("reusing"), "{}", text(&out));
    let kept = fs::read(mnt.join("kept"));
    assert!(rgfs_tests::umount(&mnt));
    assert_eq!(kept.unwrap(), b"still here");
    let start = Instant::now();
    while let Err(e) = fsck(&img) {
        assert!(start.elapsed() < Duration::from_secs(60), "{e}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The documented types, through the real mount(8), umount(8) and
/// findmnt, with the helpers install.sh put in place: an fstab entry of
/// type rgfs and one of type fuse.rgfs both mount (`mount -a`, twice: no
/// second mount); `findmnt -t fuse.rgfs` lists them; `umount -a -t
/// fuse.rgfs` unmounts them. It runs in a private mount namespace whose
/// /sbin is the install directory, so the machine's own /sbin and mounts
/// are left alone.
#[test]
fn fstab_types_mount_find_and_unmount_as_documented() {
    if !fuse_available() || !rgfs_tests::require("unshare") || !rgfs_tests::require("findmnt") {
        return;
    }
    let tmp = scratch();
    let fake = fake(&tmp.path().join("fake"), &BINARIES);
    let sbin = tmp.path().join("sbin");
    let out = run(&fake, "install.sh", &[&sbin]);
    assert!(out.status.success(), "{}", text(&out));
    let (a, b) = (tmp.path().join("a.img"), tmp.path().join("b.img"));
    make_image(&a, 64, Mkfs::Rgfs);
    make_image(&b, 64, Mkfs::Rgfs);
    let (m1, m2) = (tmp.path().join("m1"), tmp.path().join("m2"));
    fs::create_dir(&m1).unwrap();
    fs::create_dir(&m2).unwrap();
    let fstab = tmp.path().join("fstab");
    fs::write(
        &fstab,
        format!(
            "{} {} rgfs noatime 0 2\n{} {} fuse.rgfs defaults 0 2\n",
            a.display(),
            m1.display(),
            b.display(),
            m2.display()
        ),
    )
    .unwrap();
    // /sbin is /usr/sbin on merged-/usr systems: cover whichever is real.
    let real_sbin = fs::canonicalize("/sbin").unwrap();
    let sh = format!(
        "set -e
         trap 'umount -l {m1} {m2} 2>/dev/null || true' EXIT
         mount --bind {sbin} {real_sbin}
         mount -T {fstab} -a
         mount -T {fstab} -a
         echo listed: $(findmnt -n -t fuse.rgfs -o TARGET | grep -c -e '^{m1}$' -e '^{m2}$')
         # No file was opened, so no FUSE release can keep them busy.
         umount -a -t fuse.rgfs
         echo left: $(findmnt -n -t fuse.rgfs -o TARGET | grep -c -e '^{m1}$' -e '^{m2}$' || true)",
        sbin = sbin.display(),
        real_sbin = real_sbin.display(),
        fstab = fstab.display(),
        m1 = m1.display(),
        m2 = m2.display(),
    );
    let out = Command::new("timeout")
        .args(["120", "unshare", "-m", "--propagation", "private", "sh", "-c", &sh])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("listed: 2\n"), "both mounted once, both found by findmnt -t fuse.rgfs: {t}");
    assert!(t.contains("left: 0\n"), "umount -a -t fuse.rgfs unmounts both: {t}");
    for img in [&a, &b] {
        let start = Instant::now();
        while let Err(e) = fsck(img) {
            assert!(start.elapsed() < Duration::from_secs(60), "{e}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}
