//! Is the volume mounted on this machine? A block device is mounted when
//! `/proc/self/mountinfo` lists its major:minor (for a filesystem the
//! kernel mounts); an image file when a mount names it as its source
//! (`mount.rgfs IMAGE DIR` gives a `fuse.rgfs` mount whose source is the
//! image). A loop device and its backing file are one volume: each is found
//! through the other.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// One mount of the volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// "major:minor" (anonymous for FUSE mounts, but the one their
    /// backing-device info in /sys/class/bdi is named after).
    pub dev: String,
    pub point: String,
    pub fstype: String,
    pub source: String,
}

/// One line of mountinfo: (major:minor, mount point, fs type, source).
fn parse_line(line: &str) -> Option<(&str, &str, &str, &str)> {
    let fields: Vec<&str> = line.split(' ').collect();
    let sep = fields.iter().position(|&f| f == "-")?;
    Some((fields.get(2)?, fields.get(4)?, fields.get(sep + 1)?, fields.get(sep + 2)?))
}

/// Octal escapes (`\040` for a space) as mountinfo writes them.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mounts, in the text of a mountinfo file, of a device numbered one of
/// `devnums` ("major:minor"; FUSE mounts have anonymous numbers and never
/// match) or naming one of `sources` as their source.
pub fn find_mounts(mountinfo: &str, devnums: &[String], sources: &[String]) -> Vec<Mount> {
    let mut found = Vec::new();
    for line in mountinfo.lines() {
        let Some((dev, point, fstype, source)) = parse_line(line) else {
            continue;
        };
        let by_dev = devnums.iter().any(|d| d == dev) && !fstype.starts_with("fuse");
        let source = unescape(source);
        // mount.rgfs names the device by its absolute path; an older or
        // foreign mount may name it relatively, resolved from here.
        let by_source = sources.contains(&source)
            || (!source.starts_with('/')
                && std::fs::canonicalize(&source).is_ok_and(|p| sources.iter().any(|s| Path::new(s) == p)));
        if by_dev || by_source {
            found.push(Mount { dev: dev.to_string(), point: unescape(point), fstype: fstype.to_string(), source });
        }
    }
    found
}

/// "major:minor" of a device number.
fn devnum(rdev: u64) -> String {
    format!("{}:{}", libc::major(rdev), libc::minor(rdev))
}

/// The backing file of a loop device, if `rdev` is one.
pub(crate) fn loop_backing_file(rdev: u64) -> Option<PathBuf> {
    let b = std::fs::read_to_string(format!("/sys/dev/block/{}/loop/backing_file", devnum(rdev))).ok()?;
    Some(PathBuf::from(b.trim_end()))
}

/// Loop devices backed by the image `file`: (device path, "major:minor").
fn loops_backed_by(file: &Path) -> Vec<(String, String)> {
    let mut loops = Vec::new();
    let Ok(dir) = std::fs::read_dir("/sys/block") else { return loops };
    for e in dir.flatten() {
        let backing = std::fs::read_to_string(e.path().join("loop/backing_file"));
        if backing.is_ok_and(|b| Path::new(b.trim_end()) == file) {
            if let Ok(dev) = std::fs::read_to_string(e.path().join("dev")) {
                loops.push((format!("/dev/{}", e.file_name().to_string_lossy()), dev.trim().to_string()));
            }
        }
    }
    loops
}

/// Every mount of the volume at `path` (an image file or a block device),
/// found by its own name, by its device number, through the loop devices
/// backed by it, or through the backing file of the loop device it is.
pub fn mounts_of(path: &Path) -> Vec<Mount> {
    let (Ok(mountinfo), Ok(meta), Ok(canonical)) =
        (std::fs::read_to_string("/proc/self/mountinfo"), std::fs::metadata(path), std::fs::canonicalize(path))
    else {
        return Vec::new();
    };
    let mut sources = vec![canonical.display().to_string()];
    let mut devnums = Vec::new();
    let mut image = Some(canonical);
    if meta.file_type().is_block_device() {
        devnums.push(devnum(meta.rdev()));
        image = loop_backing_file(meta.rdev());
    }
    if let Some(image) = image {
        sources.push(image.display().to_string());
        for (dev, num) in loops_backed_by(&image) {
            sources.push(dev);
            devnums.push(num);
        }
    }
    sources.dedup();
    devnums.dedup();
    find_mounts(&mountinfo, &devnums, &sources)
}

/// Where `path` (an image file or a block device) is mounted, if it is.
pub fn mount_point(path: &Path) -> Option<String> {
    mounts_of(path).into_iter().next().map(|m| m.point)
}

/// The mount on `point` (the one on top when several are stacked there).
pub fn mount_at(point: &Path) -> Option<Mount> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let point = point.display().to_string();
    mountinfo.lines().filter_map(parse_line).rfind(|(_, p, _, _)| unescape(p) == point).map(
        |(dev, p, fstype, source)| Mount {
            dev: dev.to_string(),
            point: unescape(p),
            fstype: fstype.to_string(),
            source: unescape(source),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "\
22 1 253:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
40 22 0:45 / /mnt/my\\040vol rw,nosuid - fuse.rgfs /srv/images/vol.img rw,user_id=0
41 22 8:16 / /data rw - gfs2 /dev/sdb rw
42 22 0:46 / /data rw - fuse.rgfs /srv/images/top.img rw,user_id=0
";

    fn points(m: Vec<Mount>) -> Vec<String> {
        m.into_iter().map(|m| m.point).collect()
    }

    #[test]
    fn finds_block_devices_and_fuse_images() {
        assert_eq!(points(find_mounts(INFO, &["8:16".into()], &[])), ["/data"]);
        assert!(find_mounts(INFO, &["8:17".into()], &[]).is_empty());
        let m = find_mounts(INFO, &[], &["/srv/images/vol.img".into()]);
        let vol = Mount {
            dev: "0:45".into(),
            point: "/mnt/my vol".into(),
            fstype: "fuse.rgfs".into(),
            source: "/srv/images/vol.img".into(),
        };
        assert_eq!(m, [vol]);
        assert!(find_mounts(INFO, &[], &["/srv/images/other.img".into()]).is_empty());
        // A FUSE mount's anonymous device number is not the image's.
        assert!(find_mounts(INFO, &["0:45".into()], &[]).is_empty());
    }
}
