//! POSIX ACLs in the Linux xattr encoding (`system.posix_acl_access` and
//! `system.posix_acl_default`, stored verbatim as GFS2 EAs of type SYSTEM):
//! a little-endian u32 version (2), then 8-byte entries {u16 tag, u16 perm,
//! u32 id}. With FUSE_POSIX_ACL the kernel enforces ACLs; the filesystem
//! keeps the mode in sync with the access ACL (both directions) and applies
//! default ACLs to new inodes, as POSIX.1e draft 17 / acl(5) describe.
//!
//! Invariants: a parsed ACL has exactly one USER_OBJ, GROUP_OBJ and OTHER
//! entry, at most one MASK, and a MASK whenever it has named entries.

pub const ACCESS: &str = "system.posix_acl_access";
pub const DEFAULT: &str = "system.posix_acl_default";

const VERSION: u32 = 2;
pub const USER_OBJ: u16 = 0x01;
pub const USER: u16 = 0x02;
pub const GROUP_OBJ: u16 = 0x04;
pub const GROUP: u16 = 0x08;
pub const MASK: u16 = 0x10;
pub const OTHER: u16 = 0x20;

/// One entry: (tag, perm, id).
pub type Entry = (u16, u16, u32);

/// Parses an ACL; `None` if malformed.
pub fn parse(bytes: &[u8]) -> Option<Vec<Entry>> {
    if bytes.len() < 4 || !(bytes.len() - 4).is_multiple_of(8) {
        return None;
    }
    if u32::from_le_bytes(bytes[..4].try_into().ok()?) != VERSION {
        return None;
    }
    let entries: Vec<Entry> = bytes[4..]
        .chunks_exact(8)
        .map(|c| {
            (
                u16::from_le_bytes([c[0], c[1]]),
                u16::from_le_bytes([c[2], c[3]]) & 7,
                u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
            )
        })
        .collect();
    let count = |t: u16| entries.iter().filter(|e| e.0 == t).count();
    let named = count(USER) + count(GROUP);
    let valid_tags = entries.iter().all(|e| matches!(e.0, USER_OBJ | USER | GROUP_OBJ | GROUP | MASK | OTHER));
    if !valid_tags || count(USER_OBJ) != 1 || count(GROUP_OBJ) != 1 || count(OTHER) != 1 || count(MASK) > 1 {
        return None;
    }
    if named > 0 && count(MASK) == 0 {
        return None;
    }
    Some(entries)
}

pub fn encode(entries: &[Entry]) -> Vec<u8> {
    let mut out = VERSION.to_le_bytes().to_vec();
    for &(tag, perm, id) in entries {
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&perm.to_le_bytes());
        out.extend_from_slice(&id.to_le_bytes());
    }
    out
}

fn perm_of(entries: &[Entry], tag: u16) -> Option<u16> {
    entries.iter().find(|e| e.0 == tag).map(|e| e.1)
}

/// The permission bits (0o777) an access ACL implies: owner from USER_OBJ,
/// group class from MASK (or GROUP_OBJ without one), other from OTHER.
pub fn mode_bits(entries: &[Entry]) -> u32 {
    let u = perm_of(entries, USER_OBJ).unwrap_or(0) as u32;
    let g = perm_of(entries, MASK).or_else(|| perm_of(entries, GROUP_OBJ)).unwrap_or(0) as u32;
    let o = perm_of(entries, OTHER).unwrap_or(0) as u32;
    (u << 6) | (g << 3) | o
}

/// Whether the ACL says no more than the mode (only the three base entries).
pub fn is_minimal(entries: &[Entry]) -> bool {
    entries.len() == 3
}

/// chmod on an inode with an access ACL: the base entries follow the mode.
pub fn chmod(entries: &mut [Entry], mode: u32) {
    let has_mask = entries.iter().any(|e| e.0 == MASK);
    for e in entries.iter_mut() {
        match e.0 {
            USER_OBJ => e.1 = ((mode >> 6) & 7) as u16,
            MASK => e.1 = ((mode >> 3) & 7) as u16,
            GROUP_OBJ if !has_mask => e.1 = ((mode >> 3) & 7) as u16,
            OTHER => e.1 = (mode & 7) as u16,
            _ => {}
        }
    }
}

/// A new inode in a directory with default ACL `default`, created with
/// `mode`: the access ACL it gets (masked by the mode) and its new mode
/// (POSIX: the umask is not applied when a default ACL exists).
pub fn inherit(default: &[Entry], mode: u32) -> (Vec<Entry>, u32) {
    let mut acl = default.to_vec();
    let has_mask = acl.iter().any(|e| e.0 == MASK);
    for e in acl.iter_mut() {
        match e.0 {
            USER_OBJ => e.1 &= ((mode >> 6) & 7) as u16,
            MASK => e.1 &= ((mode >> 3) & 7) as u16,
            GROUP_OBJ if !has_mask => e.1 &= ((mode >> 3) & 7) as u16,
            OTHER => e.1 &= (mode & 7) as u16,
            _ => {}
        }
    }
    let new_mode = (mode & !0o777) | mode_bits(&acl);
    (acl, new_mode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_encode_and_mode_sync() {
        let acl = vec![(USER_OBJ, 7, u32::MAX), (USER, 5, 1000), (GROUP_OBJ, 5, u32::MAX), (MASK, 5, u32::MAX), (OTHER, 0, u32::MAX)];
        let bytes = encode(&acl);
        assert_eq!(parse(&bytes).unwrap(), acl);
        assert_eq!(mode_bits(&acl), 0o750);
        let mut a = acl.clone();
        chmod(&mut a, 0o640);
        assert_eq!(mode_bits(&a), 0o640);
        assert_eq!(a[1], (USER, 5, 1000), "named entries keep their permissions");
        let (child, mode) = inherit(&acl, 0o100666);
        assert_eq!(mode, 0o100640);
        assert_eq!(child[1], (USER, 5, 1000));
        // Named entries without a mask, or a second USER_OBJ, are refused.
        assert!(parse(&encode(&[(USER_OBJ, 7, 0), (USER, 5, 1), (GROUP_OBJ, 5, 0), (OTHER, 0, 0)])).is_none());
        assert!(parse(&encode(&[(USER_OBJ, 7, 0), (USER_OBJ, 5, 1), (GROUP_OBJ, 5, 0), (OTHER, 0, 0)])).is_none());
        assert!(parse(&[1, 0, 0, 0]).is_none());
    }
}
