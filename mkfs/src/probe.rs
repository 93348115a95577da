//! Recognises what a device already holds, so that an existing filesystem
//! is never overwritten without the user's say.
//!
//! A short table of on-disk signatures (magic bytes at fixed offsets) for
//! the formats a shared disk is likely to hold. It does not aim to be
//! blkid: a device with a signature not listed here is treated as empty.

use rgfs::format::consts::{GFS2_MAGIC, SB_OFFSET_BYTES};
use rgfs_block::BlockDevice;

use crate::error::Result;

/// One signature: `magic` at byte `offset` means `name`.
struct Signature {
    name: &'static str,
    offset: u64,
    magic: &'static [u8],
}

/// GFS2 is checked separately (magic and superblock type).
const SIGNATURES: &[Signature] = &[
    Signature {
        name: "ext2/ext3/ext4",
        offset: 1080,
        magic: &[0x53, 0xEF],
    },
    Signature {
        name: "xfs",
        offset: 0,
        magic: b"XFSB",
    },
    Signature {
        name: "btrfs",
        offset: 65536 + 64,
        magic: b"_BHRfS_M",
    },
    Signature {
        name: "swap",
        offset: 4096 - 10,
        magic: b"SWAPSPACE2",
    },
    Signature {
        name: "swap",
        offset: 4096 - 10,
        magic: b"SWAP-SPACE",
    },
    Signature {
        name: "LUKS",
        offset: 0,
        magic: b"LUKS\xba\xbe",
    },
    Signature {
        name: "LVM2 physical volume",
        offset: 512 + 24,
        magic: b"LVM2 001",
    },
    Signature {
        name: "ocfs2",
        offset: 8192,
        magic: b"OCFSV2",
    },
    Signature {
        name: "vfat",
        offset: 82,
        magic: b"FAT32   ",
    },
    Signature {
        name: "vfat",
        offset: 54,
        magic: b"FAT16   ",
    },
    Signature {
        name: "ntfs",
        offset: 3,
        magic: b"NTFS    ",
    },
    Signature {
        name: "iso9660",
        offset: 32769,
        magic: b"CD001",
    },
    Signature {
        name: "bcache",
        offset: 4096 + 24,
        magic: &[
            0xc6, 0x85, 0x73, 0xf6, 0x4e, 0x1a, 0x45, 0xca, 0x82, 0x65, 0xf5, 0x7f, 0x48, 0xba,
            0x6d, 0x81,
        ],
    },
    Signature {
        name: "GPT partition table",
        offset: 512,
        magic: b"EFI PART",
    },
];

/// Bytes read from the start of the device: enough for every signature.
const PROBE_BYTES: u64 = 72 * 1024;

/// The name of what `dev` appears to contain, if anything recognised.
pub fn existing_content(dev: &dyn BlockDevice) -> Result<Option<&'static str>> {
    let len = PROBE_BYTES.min(dev.size());
    let mut head = vec![0u8; len as usize];
    dev.read_at(0, &mut head)?;
    let at = |offset: u64, n: usize| head.get(offset as usize..offset as usize + n);

    if let Some(sb) = at(SB_OFFSET_BYTES, 8) {
        let magic = u32::from_be_bytes(sb[..4].try_into().expect("4 bytes"));
        let ty = u32::from_be_bytes(sb[4..8].try_into().expect("4 bytes"));
        if magic == GFS2_MAGIC && ty == 1 {
            return Ok(Some("gfs2"));
        }
    }
    for sig in SIGNATURES {
        if at(sig.offset, sig.magic.len()) == Some(sig.magic) {
            return Ok(Some(sig.name));
        }
    }
    // An MBR partition table: boot signature and at least one partition
    // entry with a type.
    if at(510, 2) == Some(&[0x55, 0xAA]) && (0..4).any(|i| head[446 + 16 * i + 4] != 0) {
        return Ok(Some("MBR partition table"));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rgfs_block::MemDevice;

    #[test]
    fn recognises_each_signature_and_nothing_on_zeros() {
        let dev = MemDevice::new(1 << 20);
        assert_eq!(existing_content(&dev).unwrap(), None);
        for sig in SIGNATURES {
            let dev = MemDevice::new(1 << 20);
            dev.write_at(sig.offset, sig.magic).unwrap();
            assert_eq!(
                existing_content(&dev).unwrap(),
                Some(sig.name),
                "{}",
                sig.name
            );
        }
        let dev = MemDevice::new(1 << 20);
        dev.write_at(SB_OFFSET_BYTES, &[0x01, 0x16, 0x19, 0x70, 0, 0, 0, 1])
            .unwrap();
        assert_eq!(existing_content(&dev).unwrap(), Some("gfs2"));
        let tiny = MemDevice::new(1000);
        assert_eq!(existing_content(&tiny).unwrap(), None);
    }

    #[test]
    fn a_filesystem_made_by_rgfs_is_recognised() {
        let dev = MemDevice::new(64 << 20);
        crate::make_filesystem(&dev, &crate::MkfsOptions::nolock()).unwrap();
        assert_eq!(existing_content(&dev).unwrap(), Some("gfs2"));
    }
}
