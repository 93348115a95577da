//! `FileDevice`: a regular file (an image) or a block device node.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};

use crate::device::{check_range, BlockDevice, Error, Result};

/// How a [`FileDevice`] is opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Reads only; `write_at` fails with [`Error::ReadOnly`].
    ReadOnly,
    /// Reads and writes. Exclusive use is not the device's business: a
    /// writer first takes a [`crate::claim`] on it.
    ReadWrite,
}

/// A device backed by a file descriptor: a regular file or a block device.
#[derive(Debug)]
pub struct FileDevice {
    file: File,
    path: PathBuf,
    size: u64,
    writable: bool,
    is_block_device: bool,
}

impl FileDevice {
    /// Opens `path`. The size of a regular file is its length; the size of a
    /// block device is what the kernel reports for it.
    pub fn open(path: impl AsRef<Path>, access: Access) -> Result<Self> {
        let path = path.as_ref();
        let open_err = |what, source| Error::Open {
            path: path.display().to_string(),
            what,
            source,
        };
        let meta = std::fs::metadata(path).map_err(|e| open_err("cannot access", e))?;
        let is_block_device = meta.file_type().is_block_device();
        if !is_block_device && !meta.is_file() {
            return Err(open_err(
                "not a regular file or block device",
                std::io::Error::from(std::io::ErrorKind::InvalidInput),
            ));
        }
        let mut options = OpenOptions::new();
        options.read(true);
        if access != Access::ReadOnly {
            options.write(true);
        }
        let mut file = options.open(path).map_err(|e| open_err("cannot open", e))?;
        let size = if is_block_device {
            file.seek(SeekFrom::End(0))
                .map_err(|e| open_err("cannot determine size", e))?
        } else {
            meta.len()
        };
        Ok(FileDevice {
            file,
            path: path.to_path_buf(),
            size,
            writable: access != Access::ReadOnly,
            is_block_device,
        })
    }

    /// The path this device was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the path names a block device (rather than a regular file).
    pub fn is_block_device(&self) -> bool {
        self.is_block_device
    }
}

impl BlockDevice for FileDevice {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        check_range("read", offset, buf.len(), self.size)?;
        self.file
            .read_exact_at(buf, offset)
            .map_err(|source| Error::Io {
                op: "read",
                offset,
                source,
            })
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<()> {
        if !self.writable {
            return Err(Error::ReadOnly);
        }
        check_range("write", offset, buf.len(), self.size)?;
        self.file
            .write_all_at(buf, offset)
            .map_err(|source| Error::Io {
                op: "write",
                offset,
                source,
            })
    }

    fn flush(&self) -> Result<()> {
        if !self.writable {
            return Ok(());
        }
        self.file.sync_data().map_err(|source| Error::Io {
            op: "flush",
            offset: 0,
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(len: u64) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(len).unwrap();
        f
    }

    #[test]
    fn reads_back_what_was_written_and_survives_reopen() {
        let img = image(1 << 20);
        let dev = FileDevice::open(img.path(), Access::ReadWrite).unwrap();
        assert_eq!(dev.size(), 1 << 20);
        dev.write_at(4096, b"hello").unwrap();
        dev.flush().unwrap();
        drop(dev);
        let dev = FileDevice::open(img.path(), Access::ReadOnly).unwrap();
        let mut buf = [0u8; 7];
        dev.read_at(4095, &mut buf).unwrap();
        assert_eq!(&buf, b"\0hello\0");
    }

    #[test]
    fn out_of_range_is_an_error_and_writes_nothing() {
        let img = image(8192);
        let dev = FileDevice::open(img.path(), Access::ReadWrite).unwrap();
        let err = dev.write_at(8190, b"abc").unwrap_err();
        assert!(matches!(err, Error::OutOfRange { offset: 8190, len: 3, size: 8192, .. }), "{err}");
        assert!(matches!(dev.read_at(u64::MAX, &mut [0u8; 2]), Err(Error::OutOfRange { .. })));
        assert_eq!(std::fs::metadata(img.path()).unwrap().len(), 8192);
    }

    #[test]
    fn read_only_refuses_writes() {
        let img = image(4096);
        let dev = FileDevice::open(img.path(), Access::ReadOnly).unwrap();
        assert!(matches!(dev.write_at(0, b"x"), Err(Error::ReadOnly)));
    }

    #[test]
    fn missing_path_and_directory_are_clear_errors() {
        let err = FileDevice::open("/nonexistent/rgfs.img", Access::ReadOnly).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/rgfs.img: cannot access"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let err = FileDevice::open(dir.path(), Access::ReadOnly).unwrap_err();
        assert!(err.to_string().contains("not a regular file or block device"), "{err}");
    }
}
