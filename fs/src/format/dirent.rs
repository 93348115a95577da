//! Directory entries (`struct gfs2_dirent`, a 40-byte header followed by the
//! name) and the dirent areas they tile: the stuffed payload of a linear
//! directory's dinode, and each leaf block after its header.
//!
//! Invariants of a well-formed dirent area:
//! - dirents tile the area exactly: each starts 8-aligned where the previous
//!   one's `rec_len` ends, and the last one ends at the end of the area;
//! - `rec_len >= 40`, `rec_len % 8 == 0`, `40 + name_len <= rec_len`;
//! - only the first dirent of an area may be unused (a zero inode number);
//! - a used dirent has `1 <= name_len <= 255` and `hash == CRC-32(name)`.
//!
//! The editing functions ([`insert`], [`remove`]) keep these invariants and
//! place entries as the kernel and mkfs.gfs2 do (first fit, in order).

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::checksum::disk_hash;
use super::consts::FNAMESIZE;
use super::error::{bad_field, FormatError, Result};
use super::meta::{Inum, RawInum};
use super::ondisk::{assert_size, Be16, Be32, OnDisk};

pub const DIRENT_HEADER_SIZE: usize = 40;

/// Bytes a dirent with a name of `name_len` bytes occupies (8-aligned).
pub const fn dirent_size(name_len: usize) -> usize {
    (DIRENT_HEADER_SIZE + name_len + 7) & !7
}

#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct RawDirent {
    pub de_inum: RawInum,
    pub de_hash: Be32,
    pub de_rec_len: Be16,
    pub de_name_len: Be16,
    pub de_type: Be16,
    pub de_rahead: Be16,
    pub pad: [u8; 12],
}
assert_size!(RawDirent, DIRENT_HEADER_SIZE);

/// The fixed part of a directory entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirentHeader {
    /// Zero (in either half) for an unused slot.
    pub inum: Inum,
    pub hash: u32,
    pub rec_len: u16,
    pub name_len: u16,
    /// DT_* type of the target.
    pub de_type: u16,
    /// 1 when the target's xattr block follows its dinode (readahead hint).
    pub rahead: u16,
}

const WHAT: &str = "directory entry";

impl OnDisk for DirentHeader {
    type Raw = RawDirent;
    const NAME: &'static str = WHAT;

    /// Checks lengths only; the name and hash are checked by [`Dirents`],
    /// which sees the name bytes.
    fn verify(raw: &RawDirent) -> Result<Self> {
        let h = DirentHeader {
            inum: Inum::from(&raw.de_inum),
            hash: raw.de_hash.get(),
            rec_len: raw.de_rec_len.get(),
            name_len: raw.de_name_len.get(),
            de_type: raw.de_type.get(),
            rahead: raw.de_rahead.get(),
        };
        if (h.rec_len as usize) < DIRENT_HEADER_SIZE || !h.rec_len.is_multiple_of(8) {
            return bad_field(WHAT, "de_rec_len", h.rec_len, "below 40 or not 8-aligned");
        }
        if h.name_len as usize > FNAMESIZE {
            return bad_field(WHAT, "de_name_len", h.name_len, "above 255");
        }
        if DIRENT_HEADER_SIZE + h.name_len as usize > h.rec_len as usize {
            return bad_field(WHAT, "de_name_len", h.name_len, "name does not fit in de_rec_len");
        }
        Ok(h)
    }

    fn to_raw(&self) -> RawDirent {
        RawDirent {
            de_inum: self.inum.into(),
            de_hash: self.hash.into(),
            de_rec_len: self.rec_len.into(),
            de_name_len: self.name_len.into(),
            de_type: self.de_type.into(),
            de_rahead: self.rahead.into(),
            pad: [0; 12],
        }
    }
}

impl DirentHeader {
    pub fn is_used(&self) -> bool {
        !self.inum.is_zero()
    }
}

/// A verified directory entry inside an area.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dirent<'a> {
    /// Offset of the entry within the area.
    pub offset: usize,
    pub header: DirentHeader,
    pub name: &'a [u8],
}

impl Dirent<'_> {
    pub fn is_used(&self) -> bool {
        self.header.is_used()
    }

    /// Free bytes after this entry's own name (what a new entry could take).
    fn spare(&self) -> usize {
        let own = if self.is_used() {
            dirent_size(self.header.name_len as usize)
        } else {
            0
        };
        self.header.rec_len as usize - own
    }
}

/// Iterates over the dirents of an area, verifying each. After the first
/// error it yields nothing more.
pub struct Dirents<'a> {
    area: &'a [u8],
    offset: usize,
    failed: bool,
}

/// The dirents of `area`.
pub fn dirents(area: &[u8]) -> Dirents<'_> {
    Dirents {
        area,
        offset: 0,
        failed: false,
    }
}

impl<'a> Dirents<'a> {
    fn next_dirent(&mut self) -> Result<Dirent<'a>> {
        let offset = self.offset;
        let rest = &self.area[offset..];
        let header = DirentHeader::decode(rest)?;
        if header.rec_len as usize > rest.len() {
            return bad_field(WHAT, "de_rec_len", header.rec_len, "runs past the end of the block");
        }
        let name = &rest[DIRENT_HEADER_SIZE..DIRENT_HEADER_SIZE + header.name_len as usize];
        if header.is_used() {
            if name.is_empty() {
                return bad_field(WHAT, "de_name_len", 0u16, "zero in a used entry");
            }
            let computed = disk_hash(name);
            if computed != header.hash {
                return Err(FormatError::BadChecksum {
                    what: WHAT,
                    field: "de_hash",
                    stored: header.hash,
                    computed,
                });
            }
        } else if offset != 0 {
            return bad_field(WHAT, "de_inum", offset as u64, "unused entry not first in its block");
        }
        self.offset += header.rec_len as usize;
        Ok(Dirent {
            offset,
            header,
            name,
        })
    }
}

impl<'a> Iterator for Dirents<'a> {
    type Item = Result<Dirent<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.offset >= self.area.len() {
            return None;
        }
        let item = self.next_dirent();
        self.failed = item.is_err();
        Some(item)
    }
}

/// Checks a whole area and returns its used entries.
pub fn used_entries(area: &[u8]) -> Result<Vec<Dirent<'_>>> {
    let mut out = Vec::new();
    for d in dirents(area) {
        let d = d?;
        if d.is_used() {
            out.push(d);
        }
    }
    Ok(out)
}

/// Looks up `name` in an area.
pub fn find<'a>(area: &'a [u8], name: &[u8]) -> Result<Option<Dirent<'a>>> {
    let hash = disk_hash(name);
    for d in dirents(area) {
        let d = d?;
        if d.is_used() && d.header.hash == hash && d.name == name {
            return Ok(Some(d));
        }
    }
    Ok(None)
}

/// Writes one dirent at the start of `out` (which must hold `rec_len`
/// bytes): header, name, and zeroed padding up to `dirent_size(name)`.
pub fn write_dirent(out: &mut [u8], inum: Inum, name: &[u8], de_type: u16, rec_len: usize) {
    assert!(!name.is_empty() && name.len() <= FNAMESIZE, "bad name length {}", name.len());
    assert!(rec_len >= dirent_size(name.len()) && rec_len.is_multiple_of(8) && rec_len <= u16::MAX as usize);
    let header = DirentHeader {
        inum,
        hash: disk_hash(name),
        rec_len: rec_len as u16,
        name_len: name.len() as u16,
        de_type,
        rahead: 0,
    };
    header.encode_into(out);
    let size = dirent_size(name.len());
    out[DIRENT_HEADER_SIZE..DIRENT_HEADER_SIZE + name.len()].copy_from_slice(name);
    out[DIRENT_HEADER_SIZE + name.len()..size].fill(0);
}

/// Makes `area` one unused entry spanning it all (a fresh leaf).
pub fn init_empty(area: &mut [u8]) {
    area.fill(0);
    let header = DirentHeader {
        inum: Inum::default(),
        hash: 0,
        rec_len: area.len() as u16,
        name_len: 0,
        de_type: 0,
        rahead: 0,
    };
    header.encode_into(area);
}

/// Makes `area` the contents of a new directory: "." and "..".
pub fn init_dir(area: &mut [u8], this: Inum, parent: Inum, dir_type: u16) {
    area.fill(0);
    let dot = dirent_size(1);
    write_dirent(area, this, b".", dir_type, dot);
    let rest = area.len() - dot;
    write_dirent(&mut area[dot..], parent, b"..", dir_type, rest);
}

/// An entry's position and header, detached from the area's borrow so the
/// area can be edited.
#[derive(Clone, Copy)]
struct Slot {
    offset: usize,
    header: DirentHeader,
}

/// Where [`insert`] put an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Inserted {
    pub offset: usize,
}

/// Adds an entry in the first place with room, as the kernel does: an unused
/// first slot large enough, or the spare tail of an entry. Returns `None` if
/// the area has no room (the area is unchanged).
pub fn insert(area: &mut [u8], inum: Inum, name: &[u8], de_type: u16) -> Result<Option<Inserted>> {
    assert!(!inum.is_zero(), "inserting a zero inode number");
    let size = dirent_size(name.len());
    let found = dirents(area)
        .find(|d| match d {
            Ok(d) => d.spare() >= size,
            Err(_) => true,
        })
        .transpose()?
        .map(|d| (d.offset, d.header));
    let Some((d_offset, d_header)) = found else {
        return Ok(None);
    };
    let d = Slot { offset: d_offset, header: d_header };
    let rec_len = d.header.rec_len as usize;
    let offset = if d.header.is_used() {
        // Split: the old entry keeps its own size, the new one the rest.
        let own = dirent_size(d.header.name_len as usize);
        let mut h = d.header;
        h.rec_len = own as u16;
        h.encode_into(&mut area[d.offset..]);
        write_dirent(&mut area[d.offset + own..], inum, name, de_type, rec_len - own);
        d.offset + own
    } else {
        write_dirent(&mut area[d.offset..], inum, name, de_type, rec_len);
        d.offset
    };
    Ok(Some(Inserted { offset }))
}

/// Removes the used entry named `name`. The first entry of an area becomes
/// unused (its inode number zeroed); any other gives its space to the entry
/// before it. Returns the removed entry's inode number, or `None` if absent.
pub fn remove(area: &mut [u8], name: &[u8]) -> Result<Option<(Inum, u16)>> {
    let hash = disk_hash(name);
    let mut prev: Option<Slot> = None;
    let mut hit = None;
    for d in dirents(area) {
        let d = d?;
        let slot = Slot { offset: d.offset, header: d.header };
        if d.is_used() && d.header.hash == hash && d.name == name {
            hit = Some((prev, slot));
            break;
        }
        prev = Some(slot);
    }
    let Some((prev, d)) = hit else {
        return Ok(None);
    };
    let gone = (d.header.inum, d.header.de_type);
    match prev {
        None => {
            let mut h = d.header;
            h.inum = Inum::default();
            h.encode_into(&mut area[d.offset..]);
        }
        Some(p) => {
            let mut h = p.header;
            h.rec_len = (p.header.rec_len as usize + d.header.rec_len as usize) as u16;
            h.encode_into(&mut area[p.offset..]);
        }
    }
    Ok(Some(gone))
}

/// Rewrites the inode number and type of the used entry `name` in place.
pub fn retarget(area: &mut [u8], name: &[u8], inum: Inum, de_type: u16) -> Result<bool> {
    let Some((offset, mut h)) = find(area, name)?.map(|d| (d.offset, d.header)) else {
        return Ok(false);
    };
    h.inum = inum;
    h.de_type = de_type;
    h.encode_into(&mut area[offset..]);
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::consts::dt;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[test]
    fn new_directory_layout_matches_mkfs_gfs2() {
        // A 4K block's stuffed area is 3864 bytes: "." takes 48, ".." the rest.
        let mut area = vec![0u8; 3864];
        init_dir(&mut area, Inum::new(3, 4124), Inum::new(3, 4124), dt::DIR);
        let entries = used_entries(&area).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!((entries[0].header.rec_len, entries[0].header.hash), (48, 0x0ED4_E242));
        assert_eq!((entries[1].header.rec_len, entries[1].header.hash), (3816, 0x9608_161C));
        // Adding entries splits the last one each time, as mkfs.gfs2 does.
        for (i, name) in ["jindex", "per_node", "inum", "statfs", "rindex", "quota"].iter().enumerate() {
            let ins = insert(&mut area, Inum::new(4 + i as u64, 100 + i as u64), name.as_bytes(), dt::DIR).unwrap();
            assert_eq!(ins, Some(Inserted { offset: 96 + 48 * i }));
        }
        let entries = used_entries(&area).unwrap();
        assert_eq!(entries.last().unwrap().header.rec_len, 3528);
    }

    #[test]
    fn corrupt_entries_are_refused() {
        let mut area = vec![0u8; 512];
        init_dir(&mut area, Inum::new(1, 10), Inum::new(1, 10), dt::DIR);
        // A hash that does not match the name.
        let mut bad = area.clone();
        bad[16] ^= 1;
        assert!(matches!(used_entries(&bad), Err(FormatError::BadChecksum { .. })));
        // rec_len past the end of the area.
        let mut bad = area.clone();
        bad[48 + 20..48 + 22].copy_from_slice(&1000u16.to_be_bytes());
        assert!(used_entries(&bad).is_err());
        // An unused entry that is not first.
        let mut bad = area.clone();
        bad[48..64].fill(0);
        assert!(used_entries(&bad).is_err());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(String),
        Remove(String),
    }

    fn op() -> impl Strategy<Value = Op> {
        let name = "[a-z]{1,20}";
        prop_oneof![name.prop_map(Op::Insert), name.prop_map(Op::Remove)]
    }

    proptest! {
        /// Inserting and removing names keeps the area well formed and
        /// holding exactly the names of a model map (while space lasts).
        #[test]
        fn insert_and_remove_follow_a_model(ops in proptest::collection::vec(op(), 1..200)) {
            let mut area = vec![0u8; 1024 - 104];
            init_empty(&mut area);
            let mut model = BTreeMap::new();
            let mut next = 1u64;
            for op in ops {
                match op {
                    Op::Insert(name) => {
                        if model.contains_key(&name) { continue; }
                        let inum = Inum::new(next, next + 1000);
                        next += 1;
                        if insert(&mut area, inum, name.as_bytes(), dt::REG).unwrap().is_some() {
                            model.insert(name, inum);
                        } else {
                            // Full: no entry has room for the new one.
                            let size = dirent_size(name.len());
                            prop_assert!(dirents(&area).all(|d| d.unwrap().spare() < size));
                        }
                    }
                    Op::Remove(name) => {
                        let got = remove(&mut area, name.as_bytes()).unwrap().map(|(i, _)| i);
                        prop_assert_eq!(got, model.remove(&name));
                    }
                }
                let found: BTreeMap<String, Inum> = used_entries(&area).unwrap().iter()
                    .map(|d| (String::from_utf8(d.name.to_vec()).unwrap(), d.header.inum)).collect();
                prop_assert_eq!(&found, &model);
            }
        }
    }
}
