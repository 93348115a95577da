//! The two checksums of the GFS2 format.
//!
//! * The **disk hash** is the standard CRC-32 (IEEE, reflected, init and final
//!   xor `0xFFFFFFFF`, as zlib computes it). GFS2 uses it for directory entry
//!   hashes, `rg_crc` and `lh_hash`.
//! * **`lh_crc`** is CRC-32C (Castagnoli) with init `0xFFFFFFFF` but *without*
//!   the final xor, i.e. the bitwise NOT of the standard CRC-32C.

/// The GFS2 "disk hash": standard CRC-32 of `bytes`.
pub fn disk_hash(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

/// The log header CRC: CRC-32C of `bytes` without the final inversion.
pub fn log_crc(bytes: &[u8]) -> u32 {
    !crc32c::crc32c(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_hash_check_values() {
        // The standard CRC-32 check value, and the hashes of "." and ".."
        // observed in directories made by mkfs.gfs2.
        assert_eq!(disk_hash(b"123456789"), 0xCBF4_3926);
        assert_eq!(disk_hash(b"."), 0x0ED4_E242);
        assert_eq!(disk_hash(b".."), 0x9608_161C);
        assert_eq!(disk_hash(b"jindex"), 0x5EFC_1D83);
        assert_eq!(disk_hash(b"inum_range1"), 0x96FA_B746);
    }

    #[test]
    fn log_crc_check_value() {
        // Standard CRC-32C of "123456789" is 0xE3069283; GFS2 stores its NOT.
        assert_eq!(log_crc(b"123456789"), 0x1CF9_6D7C);
    }
}
