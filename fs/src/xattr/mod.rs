//! Extended attributes stored as GFS2 EAs (docs/disk-format.md §7): records in EA
//! blocks reached from `di_eattr` (directly, or through an EA_INDIRECT
//! block of pointers), large values in ED blocks. POSIX ACLs are the
//! `system.posix_acl_access` / `system.posix_acl_default` attributes (type
//! SYSTEM) holding the Linux xattr ACL encoding, which the kernel produces
//! and interprets; rgfs stores them verbatim.
//!
//! Invariants:
//! - every EA/ED/indirect block of an inode is counted in `di.blocks`;
//! - a change rewrites the inode's whole EA set into freshly allocated
//!   blocks and frees the old ones in the same transaction (simple and
//!   always consistent; attribute sets are small);
//! - an inode without attributes has `di_eattr == 0`, so the lookups `ls -l`
//!   makes (security.*, system.posix_acl_*) are answered without I/O.

pub mod acl;

use crate::core::FsCore;
use crate::error::{corrupt, errno, AtBlock, Result};
use crate::format::bitmap::BlockState;
use crate::format::consts::{dif, eatype, MetaType, EAFLAG_LAST, EA_MAX_DATA_LEN};
use crate::format::ea::{ea_data_blocks, ea_is_stuffed, ea_record_size, ea_records, namespace_prefix, split_xattr_name, EaValue, EA_HEADER_SIZE};
use crate::format::meta::{init_block, pointer_at, set_pointer};
use crate::format::{EaHeader, OnDisk, META_HEADER_SIZE};

/// One attribute: (type, name without prefix, value).
pub type Xattr = (u8, Vec<u8>, Vec<u8>);

/// setxattr flags.
pub const XATTR_CREATE: i32 = 1;
pub const XATTR_REPLACE: i32 = 2;

impl FsCore {
    /// The EA blocks of an inode (the blocks holding records) and every
    /// block owned by its EA tree (records, indirect, data).
    fn ea_blocks(&mut self, addr: u64) -> Result<(Vec<u64>, Vec<u64>)> {
        let di = self.inode(addr)?.di.clone();
        if di.eattr == 0 {
            return Ok((vec![], vec![]));
        }
        let mut records = Vec::new();
        let mut all = vec![di.eattr];
        if di.flags & dif::EA_INDIRECT != 0 {
            let buf = self.read_meta(di.eattr, &[MetaType::Indirect], addr)?;
            for i in 0..self.geom.inptrs as usize {
                let p = pointer_at(&buf[META_HEADER_SIZE..], i);
                if p != 0 {
                    records.push(p);
                    all.push(p);
                }
            }
        } else {
            records.push(di.eattr);
        }
        for &b in &records {
            let buf = self.read_meta(b, &[MetaType::Ea], addr)?;
            for r in ea_records(&buf, self.geom.bsize).at_block(b)? {
                if r.is_used() {
                    all.extend(r.value.pointers());
                }
            }
        }
        Ok((records, all))
    }

    /// All attributes of an inode.
    pub fn xattr_list_all(&mut self, addr: u64) -> Result<Vec<Xattr>> {
        let (records, _) = self.ea_blocks(addr)?;
        let mut out = Vec::new();
        for b in records {
            let buf = self.read_meta(b, &[MetaType::Ea], addr)?;
            for r in ea_records(&buf, self.geom.bsize).at_block(b)? {
                if !r.is_used() {
                    continue;
                }
                let value = match r.value {
                    EaValue::Stuffed(v) => v.to_vec(),
                    EaValue::Blocks(_) => {
                        let mut v = Vec::with_capacity(r.header.data_len as usize);
                        for p in r.value.pointers() {
                            let d = self.read_meta(p, &[MetaType::EaData], addr)?;
                            let n = (r.header.data_len as usize - v.len()).min(d.len() - META_HEADER_SIZE);
                            v.extend_from_slice(&d[META_HEADER_SIZE..META_HEADER_SIZE + n]);
                        }
                        v
                    }
                };
                out.push((r.header.ea_type, r.name.to_vec(), value));
            }
        }
        Ok(out)
    }

    /// The value of `name` (a full Linux xattr name).
    pub fn xattr_get(&mut self, addr: u64, name: &str) -> Result<Vec<u8>> {
        let (ty, short) = split_xattr_name(name).ok_or(crate::Error::Errno(libc::EOPNOTSUPP))?;
        if self.inode(addr)?.di.eattr == 0 {
            return errno(libc::ENODATA);
        }
        self.xattr_list_all(addr)?
            .into_iter()
            .find(|(t, n, _)| *t == ty && n == short.as_bytes())
            .map(|(_, _, v)| v)
            .ok_or(crate::Error::Errno(libc::ENODATA))
    }

    /// Names of all attributes, NUL-terminated, as listxattr returns them.
    pub fn xattr_names(&mut self, addr: u64) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        if self.inode(addr)?.di.eattr == 0 {
            return Ok(out);
        }
        for (t, n, _) in self.xattr_list_all(addr)? {
            if let Some(p) = namespace_prefix(t) {
                out.extend_from_slice(p.as_bytes());
                out.extend_from_slice(&n);
                out.push(0);
            }
        }
        Ok(out)
    }

    /// Sets (`Some`) or removes (`None`) an attribute.
    pub fn xattr_set(&mut self, addr: u64, name: &str, value: Option<&[u8]>, flags: i32) -> Result<()> {
        let (ty, short) = split_xattr_name(name).ok_or(crate::Error::Errno(libc::EOPNOTSUPP))?;
        if ty == eatype::TRUSTED && self.sb.fs_format < crate::format::consts::FS_FORMAT {
            return errno(libc::EOPNOTSUPP);
        }
        if value.is_some_and(|v| v.len() > EA_MAX_DATA_LEN) {
            return errno(libc::E2BIG);
        }
        let mut all = self.xattr_list_all(addr)?;
        let pos = all.iter().position(|(t, n, _)| *t == ty && n == short.as_bytes());
        match (value, pos) {
            (None, None) => return errno(libc::ENODATA),
            (None, Some(i)) => {
                all.remove(i);
            }
            (Some(_), Some(_)) if flags & XATTR_CREATE != 0 => return errno(libc::EEXIST),
            (Some(_), None) if flags & XATTR_REPLACE != 0 => return errno(libc::ENODATA),
            (Some(v), Some(i)) => all[i].2 = v.to_vec(),
            (Some(v), None) => all.push((ty, short.as_bytes().to_vec(), v.to_vec())),
        }
        self.xattr_write_all(addr, &all)
    }

    /// Frees every EA block of an inode.
    pub fn free_xattrs(&mut self, addr: u64) -> Result<()> {
        let (_, all) = self.ea_blocks(addr)?;
        for &b in &all {
            self.free_blocks(b, 1, false)?;
        }
        if !all.is_empty() {
            let n = all.len() as u64;
            self.update_dinode(addr, |d| {
                d.eattr = 0;
                d.flags &= !dif::EA_INDIRECT;
                d.blocks = d.blocks.saturating_sub(n);
            })?;
        }
        Ok(())
    }

    /// Replaces the inode's EA set with `attrs`.
    fn xattr_write_all(&mut self, addr: u64, attrs: &[Xattr]) -> Result<()> {
        self.free_xattrs(addr)?;
        if attrs.is_empty() {
            return Ok(());
        }
        let bsize = self.geom.bsize as usize;
        let payload = bsize - META_HEADER_SIZE;
        // Plan records into blocks (first fit in order).
        let mut blocks: Vec<Vec<(usize, &Xattr)>> = vec![vec![]];
        let mut used = 0usize;
        for a in attrs {
            let stuffed = ea_is_stuffed(self.geom.bsize, a.1.len(), a.2.len());
            let size = if stuffed {
                ea_record_size(a.1.len(), a.2.len(), 0)
            } else {
                ea_record_size(a.1.len(), 0, ea_data_blocks(self.geom.bsize, a.2.len()))
            };
            if used + size > payload {
                blocks.push(vec![]);
                used = 0;
            }
            blocks.last_mut().expect("non-empty").push((size, a));
            used += size;
        }
        if blocks.len() > self.geom.inptrs as usize {
            return errno(libc::ENOSPC);
        }
        let mut nblocks = 0u64;
        let goal = addr;
        let mut record_blocks = Vec::new();
        for recs in &blocks {
            let eb = self.alloc_block(goal + 1, BlockState::Used)?;
            nblocks += 1;
            let mut b = vec![0u8; bsize];
            init_block(&mut b, MetaType::Ea);
            let mut off = META_HEADER_SIZE;
            for (k, (size, (ty, name, value))) in recs.iter().enumerate() {
                let last = k + 1 == recs.len();
                let rec_len = if last { bsize - off } else { *size };
                let stuffed = ea_is_stuffed(self.geom.bsize, name.len(), value.len());
                let num_ptrs = if stuffed { 0 } else { ea_data_blocks(self.geom.bsize, value.len()) };
                let h = EaHeader {
                    rec_len: rec_len as u32,
                    data_len: value.len() as u32,
                    name_len: name.len() as u8,
                    ea_type: *ty,
                    flags: if last { EAFLAG_LAST } else { 0 },
                    num_ptrs: num_ptrs as u8,
                };
                h.encode_into(&mut b[off..]);
                b[off + EA_HEADER_SIZE..off + EA_HEADER_SIZE + name.len()].copy_from_slice(name);
                let at = off + h.value_offset();
                if stuffed {
                    b[at..at + value.len()].copy_from_slice(value);
                } else {
                    for (i, chunk) in value.chunks(payload).enumerate() {
                        let db = self.alloc_block(eb + 1, BlockState::Used)?;
                        nblocks += 1;
                        let mut d = vec![0u8; bsize];
                        init_block(&mut d, MetaType::EaData);
                        d[META_HEADER_SIZE..META_HEADER_SIZE + chunk.len()].copy_from_slice(chunk);
                        self.cache.forget(db);
                        self.cache.create(db, d, addr);
                        b[at + 8 * i..at + 8 * i + 8].copy_from_slice(&db.to_be_bytes());
                    }
                }
                off += rec_len;
            }
            if ea_records(&b, self.geom.bsize).is_err() {
                return corrupt(format!("inode {addr}"), "built an invalid EA block");
            }
            self.cache.forget(eb);
            self.cache.create(eb, b, addr);
            record_blocks.push(eb);
        }
        let (eattr, indirect) = if record_blocks.len() == 1 {
            (record_blocks[0], false)
        } else {
            let ib = self.alloc_block(goal + 1, BlockState::Used)?;
            nblocks += 1;
            let mut b = vec![0u8; bsize];
            init_block(&mut b, MetaType::Indirect);
            for (i, &eb) in record_blocks.iter().enumerate() {
                set_pointer(&mut b[META_HEADER_SIZE..], i, eb);
            }
            self.cache.forget(ib);
            self.cache.create(ib, b, addr);
            (ib, true)
        };
        self.update_dinode(addr, |d| {
            d.eattr = eattr;
            if indirect {
                d.flags |= dif::EA_INDIRECT;
            }
            d.blocks += nblocks;
        })
    }
}
