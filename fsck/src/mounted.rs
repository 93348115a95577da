//! Is the volume mounted on this machine? fsck.rgfs refuses to change a
//! mounted volume. A block device is mounted when `/proc/self/mountinfo`
//! lists its major:minor; an image file when a mount names it as its
//! source (`mount.rgfs IMAGE DIR` gives a `fuse.rgfs` mount whose source
//! is the image) or when a loop device backed by it is mounted.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

/// One line of mountinfo: (major:minor, mount point, fs type, source).
fn parse_line(line: &str) -> Option<(&str, &str, &str, &str)> {
    let fields: Vec<&str> = line.split(' ').collect();
    let sep = fields.iter().position(|&f| f == "-")?;
    Some((
        fields.get(2)?,
        fields.get(4)?,
        fields.get(sep + 1)?,
        fields.get(sep + 2)?,
    ))
}

/// Octal escapes (`\040` for a space) as mountinfo writes them.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mount point of a mount using device `devnum` ("major:minor") or
/// naming `source` as its source, in the text of a mountinfo file.
pub fn find_mount(mountinfo: &str, devnum: Option<&str>, sources: &[String]) -> Option<String> {
    for line in mountinfo.lines() {
        let Some((dev, point, fstype, source)) = parse_line(line) else {
            continue;
        };
        let by_dev = devnum.is_some_and(|d| d == dev) && !fstype.starts_with("fuse");
        let source = unescape(source);
        // mount.rgfs names the image as given; a relative name is resolved
        // from here (which matches when fsck runs where mount did).
        let resolved = std::fs::canonicalize(&source)
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let by_source = sources.iter().any(|s| *s == source || *s == resolved);
        if by_dev || by_source {
            return Some(unescape(point));
        }
    }
    None
}

/// Where `path` (an image file or a block device) is mounted, if it is.
pub fn mount_point(path: &Path) -> Option<String> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let meta = std::fs::metadata(path).ok()?;
    let canonical = std::fs::canonicalize(path).ok()?.display().to_string();
    let mut sources = vec![canonical.clone()];
    if meta.file_type().is_block_device() {
        let rdev = meta.rdev();
        let devnum = format!("{}:{}", libc::major(rdev), libc::minor(rdev));
        return find_mount(&mountinfo, Some(&devnum), &sources);
    }
    // Loop devices backed by this image.
    let mut devnums = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/sys/block") {
        for e in dir.flatten() {
            let backing = e.path().join("loop/backing_file");
            if std::fs::read_to_string(&backing).is_ok_and(|b| b.trim_end() == canonical) {
                if let Ok(dev) = std::fs::read_to_string(e.path().join("dev")) {
                    devnums.push(dev.trim().to_string());
                }
                sources.push(format!("/dev/{}", e.file_name().to_string_lossy()));
            }
        }
    }
    for d in &devnums {
        if let Some(p) = find_mount(&mountinfo, Some(d), &sources) {
            return Some(p);
        }
    }
    find_mount(&mountinfo, None, &sources)
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "\
22 1 253:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
40 22 0:45 / /mnt/my\\040vol rw,nosuid - fuse.rgfs /srv/images/vol.img rw,user_id=0
41 22 8:16 / /data rw - gfs2 /dev/sdb rw
";

    #[test]
    fn finds_block_devices_and_fuse_images() {
        assert_eq!(find_mount(INFO, Some("8:16"), &[]), Some("/data".into()));
        assert_eq!(find_mount(INFO, Some("8:17"), &[]), None);
        assert_eq!(
            find_mount(INFO, None, &["/srv/images/vol.img".into()]),
            Some("/mnt/my vol".into())
        );
        assert_eq!(
            find_mount(INFO, None, &["/srv/images/other.img".into()]),
            None
        );
        // A FUSE mount's anonymous device number is not the image's.
        assert_eq!(find_mount(INFO, Some("0:45"), &[]), None);
    }
}
