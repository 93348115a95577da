//! A test-only image populator: adds directories, files, symlinks, hard
//! links, device nodes and extended attributes to a freshly made GFS2
//! image, keeping bitmaps, resource group counts, statfs, `di_blocks` and
//! link counts exact. `mount.rgfs` will write images for real; until then
//! this is how the catalog tests and the benchmark get content.
//!
//! It trusts the image (it was just made by mkfs) and panics on nothing
//! from disk: errors come back as [`FsckError`]. Every image it writes is
//! checked with `fsck.gfs2 -n` by the tests.

use rgfs::format::consts::{dif, dt, eatype, s_if, EAFLAG_LAST};
use rgfs::format::ea::{ea_data_blocks, ea_is_stuffed, ea_record_size, EaHeader};
use rgfs::format::meta::{init_block, set_pointer, Inum, META_HEADER_SIZE};
use rgfs::format::{
    BlockState, Dinode, MetaType, OnDisk, Rindex, StatfsChange, Superblock, DINODE_SIZE,
};
use rgfs_block::BlockDevice;

use crate::dir::{self, dinode_mut};
use crate::file::{read_file, write_file_prefix};
use crate::volume::{fatal, load_rgrps_trusting, FsckError, Result, Volume};

/// Timestamps of everything the populator makes (deterministic images).
const NOW: i64 = 1_700_000_000;

pub struct Populator<'a> {
    pub vol: Volume<'a>,
    pub sb: Superblock,
    statfs: u64,
    inum_file: u64,
    next_formal: u64,
}

fn fmt_err(addr: u64) -> impl Fn(rgfs::format::FormatError) -> FsckError {
    move |e| FsckError::Fatal(format!("block {addr}: {e}"))
}

/// What to put in a new regular file.
pub struct FileSpec<'b> {
    pub data: &'b [u8],
    /// Leave all-zero blocks as holes.
    pub sparse: bool,
    pub mode: u32,
}

impl<'a> Populator<'a> {
    /// Opens an image made by mkfs.
    pub fn open(dev: &'a dyn BlockDevice) -> Result<Self> {
        let mut sb_buf = vec![0u8; 4096];
        dev.read_at(rgfs::format::consts::SB_OFFSET_BYTES, &mut sb_buf)?;
        let sb = Superblock::decode(&sb_buf).map_err(fmt_err(0))?;
        let geom = rgfs::format::Geometry::new(sb.bsize).map_err(fmt_err(0))?;
        let mut vol = Volume::new(dev, geom, true);
        let master = sb.master_dir.addr;
        let find = |vol: &Volume, name: &str| -> Result<u64> {
            match dir::lookup(vol, master, name.as_bytes())? {
                Some(e) => Ok(e.inum.addr),
                None => fatal(format!("master directory has no {name}")),
            }
        };
        let rindex_addr = find(&vol, "rindex")?;
        let statfs = find(&vol, "statfs")?;
        let inum_file = find(&vol, "inum")?;
        let bytes = read_file(&vol, rindex_addr)?;
        let mut rindex = Vec::new();
        for chunk in bytes.chunks_exact(rgfs::format::rgrp::RINDEX_SIZE) {
            rindex.push(Rindex::decode(chunk).map_err(fmt_err(rindex_addr))?);
        }
        load_rgrps_trusting(&mut vol, &rindex)?;
        let inum = read_file(&vol, inum_file)?;
        let next_formal =
            u64::from_be_bytes(inum[..8].try_into().expect("inum file holds 8 bytes"));
        Ok(Populator {
            vol,
            sb,
            statfs,
            inum_file,
            next_formal,
        })
    }

    pub fn root(&self) -> u64 {
        self.sb.root_dir.addr
    }

    /// The inode at `path` (absolute, '/'-separated) below the root.
    pub fn lookup(&self, path: &str) -> Result<u64> {
        let mut at = self.root();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            match dir::lookup(&self.vol, at, part.as_bytes())? {
                Some(e) => at = e.inum.addr,
                None => return fatal(format!("{path}: no {part}")),
            }
        }
        Ok(at)
    }

    fn alloc(&mut self, near: u64, state: BlockState) -> Result<u64> {
        match self.vol.alloc(near, state, &|_| true) {
            Some(b) => Ok(b),
            None => fatal("image full"),
        }
    }

    fn new_inum(&mut self, near: u64) -> Result<Inum> {
        let addr = self.alloc(near, BlockState::Dinode)?;
        let formal = self.next_formal;
        self.next_formal += 1;
        Ok(Inum::new(formal, addr))
    }

    fn blank_dinode(&self, num: Inum, mode: u32) -> Dinode {
        dir::new_dinode(num, mode, NOW)
    }

    fn add_entry(&mut self, parent: u64, name: &str, inum: Inum, de_type: u16) -> Result<()> {
        dir::insert(
            &mut self.vol,
            parent,
            name.as_bytes(),
            inum,
            de_type,
            &|_| true,
        )?;
        Ok(())
    }

    fn bump_nlink(&mut self, addr: u64, by: i64) -> Result<()> {
        let mut block = self.vol.read(addr)?;
        let raw = dinode_mut(&mut block);
        raw.di_nlink = ((raw.di_nlink.get() as i64 + by) as u32).into();
        self.vol.write(addr, &block)
    }

    pub fn mkdir(&mut self, parent: u64, name: &str) -> Result<u64> {
        let parent_num = self.inum_of(parent)?;
        let num = self.new_inum(parent)?;
        let block = dir::new_dir_block(&self.vol, num, parent_num, s_if::DIR | 0o755, 0, NOW);
        self.vol.write(num.addr, &block)?;
        self.add_entry(parent, name, num, dt::DIR)?;
        self.bump_nlink(parent, 1)?;
        Ok(num.addr)
    }

    pub fn inum_of(&self, addr: u64) -> Result<Inum> {
        let block = self.vol.read(addr)?;
        Ok(Dinode::decode(&block).map_err(fmt_err(addr))?.num)
    }

    /// A regular file with `spec.data` as content.
    pub fn create_file(&mut self, parent: u64, name: &str, spec: &FileSpec) -> Result<u64> {
        let num = self.new_inum(parent)?;
        let mut d = self.blank_dinode(num, s_if::REG | spec.mode);
        d.size = spec.data.len() as u64;
        let block = self.write_content(&mut d, spec.data, spec.sparse)?;
        self.vol.write(num.addr, &block)?;
        self.add_entry(parent, name, num, dt::REG)?;
        Ok(num.addr)
    }

    /// Lays out `data` for dinode `d` (stuffed or in a tree), allocating
    /// blocks, and returns the dinode block (`d.height`, `d.blocks` set).
    fn write_content(&mut self, d: &mut Dinode, data: &[u8], sparse: bool) -> Result<Vec<u8>> {
        let geom = self.vol.geom.clone();
        let bsize = geom.bsize as usize;
        let mut block = vec![0u8; bsize];
        let Some(height) = geom.height_for_size(data.len() as u64, false) else {
            return fatal("file too large");
        };
        d.height = height;
        if height == 0 {
            d.encode_into(&mut block);
            block[DINODE_SIZE..DINODE_SIZE + data.len()].copy_from_slice(data);
            return Ok(block);
        }
        // Data blocks first (contiguous where possible), then the tree.
        let nblocks = data.len().div_ceil(bsize);
        let mut lblocks: Vec<Option<u64>> = Vec::with_capacity(nblocks);
        for i in 0..nblocks {
            let chunk = &data[i * bsize..((i + 1) * bsize).min(data.len())];
            if sparse && chunk.iter().all(|&b| b == 0) {
                lblocks.push(None);
                continue;
            }
            let b = self.alloc(d.num.addr, BlockState::Used)?;
            let mut buf = vec![0u8; bsize];
            buf[..chunk.len()].copy_from_slice(chunk);
            self.vol.write(b, &buf)?;
            lblocks.push(Some(b));
            d.blocks += 1;
        }
        let top = self.build_tree(d, 0, height, 0, &lblocks)?;
        d.goal_data = lblocks
            .iter()
            .flatten()
            .last()
            .copied()
            .unwrap_or(d.num.addr);
        d.encode_into(&mut block);
        for (i, p) in top.into_iter().enumerate() {
            set_pointer(&mut block[DINODE_SIZE..], i, p);
        }
        Ok(block)
    }

    /// The pointers of `level` covering logical blocks from `lstart`,
    /// allocating and writing the indirect blocks below.
    fn build_tree(
        &mut self,
        d: &mut Dinode,
        level: usize,
        height: u16,
        lstart: u64,
        lblocks: &[Option<u64>],
    ) -> Result<Vec<u64>> {
        let geom = self.vol.geom.clone();
        let count = if level == 0 { geom.diptrs } else { geom.inptrs } as u64;
        let per = geom.blocks_per_pointer(level, height);
        let mut out = vec![0u64; count as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            let first = lstart + i as u64 * per;
            if first >= lblocks.len() as u64 {
                break;
            }
            let last = (first + per).min(lblocks.len() as u64);
            if lblocks[first as usize..last as usize]
                .iter()
                .all(Option::is_none)
            {
                continue;
            }
            if level + 1 == height as usize {
                *slot = lblocks[first as usize].unwrap_or(0);
                continue;
            }
            let ind = self.alloc(d.num.addr, BlockState::Used)?;
            d.blocks += 1;
            d.goal_meta = ind;
            let ptrs = self.build_tree(d, level + 1, height, first, lblocks)?;
            let mut buf = vec![0u8; geom.bsize as usize];
            init_block(&mut buf, MetaType::Indirect);
            for (k, p) in ptrs.into_iter().enumerate() {
                set_pointer(&mut buf[META_HEADER_SIZE..], k, p);
            }
            self.vol.write(ind, &buf)?;
            *slot = ind;
        }
        Ok(out)
    }

    pub fn symlink(&mut self, parent: u64, name: &str, target: &str) -> Result<u64> {
        let num = self.new_inum(parent)?;
        let mut d = self.blank_dinode(num, s_if::LNK | 0o777);
        d.size = target.len() as u64;
        let block = self.write_content(&mut d, target.as_bytes(), false)?;
        self.vol.write(num.addr, &block)?;
        self.add_entry(parent, name, num, dt::LNK)?;
        Ok(num.addr)
    }

    /// A device node, FIFO or socket (`mode` includes the file type).
    pub fn mknod(
        &mut self,
        parent: u64,
        name: &str,
        mode: u32,
        major: u32,
        minor: u32,
    ) -> Result<u64> {
        let num = self.new_inum(parent)?;
        let mut d = self.blank_dinode(num, mode);
        d.major = major;
        d.minor = minor;
        let mut block = vec![0u8; self.vol.bsize()];
        d.encode_into(&mut block);
        self.vol.write(num.addr, &block)?;
        let de_type = rgfs::format::consts::dt_from_mode(mode).unwrap_or(dt::REG);
        self.add_entry(parent, name, num, de_type)?;
        Ok(num.addr)
    }

    /// A hard link `name` in `parent` to the non-directory `target`.
    pub fn link(&mut self, parent: u64, name: &str, target: u64) -> Result<()> {
        let block = self.vol.read(target)?;
        let d = Dinode::decode(&block).map_err(fmt_err(target))?;
        self.add_entry(parent, name, d.num, d.dirent_type())?;
        self.bump_nlink(target, 1)
    }

    /// Gives inode `addr` these extended attributes (it must have none):
    /// `(type, name, value)`. Values that do not fit in an EA block go to
    /// EA data blocks; more records than one EA block holds make the inode
    /// EA_INDIRECT.
    pub fn set_xattrs(&mut self, addr: u64, attrs: &[(u8, &str, &[u8])]) -> Result<()> {
        let bsize = self.vol.bsize();
        let payload = bsize - META_HEADER_SIZE;
        // Pack records into blocks, first fit in order.
        // Per EA block: (record size, type, name, value) of each record.
        type Record<'r> = (usize, u8, &'r str, &'r [u8]);
        let mut blocks: Vec<Vec<Record>> = vec![Vec::new()];
        let mut used = 0usize;
        for &(ty, name, value) in attrs {
            assert!(ty != eatype::UNUSED && !name.is_empty() && name.len() <= 255);
            let size = if ea_is_stuffed(bsize as u32, name.len(), value.len()) {
                ea_record_size(name.len(), value.len(), 0)
            } else {
                ea_record_size(name.len(), 0, ea_data_blocks(bsize as u32, value.len()))
            };
            if used + size > payload {
                blocks.push(Vec::new());
                used = 0;
            }
            blocks
                .last_mut()
                .expect("one block")
                .push((size, ty, name, value));
            used += size;
        }
        let mut new_blocks = 0u64;
        let mut ea_addrs = Vec::new();
        for recs in &blocks {
            let ea = self.alloc(addr, BlockState::Used)?;
            new_blocks += 1;
            let mut buf = vec![0u8; bsize];
            init_block(&mut buf, MetaType::Ea);
            let mut off = META_HEADER_SIZE;
            for (k, &(size, ty, name, value)) in recs.iter().enumerate() {
                let last = k + 1 == recs.len();
                let rec_len = if last { bsize - off } else { size };
                let stuffed = ea_is_stuffed(bsize as u32, name.len(), value.len());
                let num_ptrs = if stuffed {
                    0
                } else {
                    ea_data_blocks(bsize as u32, value.len())
                };
                let h = EaHeader {
                    rec_len: rec_len as u32,
                    data_len: value.len() as u32,
                    name_len: name.len() as u8,
                    ea_type: ty,
                    flags: if last { EAFLAG_LAST } else { 0 },
                    num_ptrs: num_ptrs as u8,
                };
                h.encode_into(&mut buf[off..]);
                buf[off + 16..off + 16 + name.len()].copy_from_slice(name.as_bytes());
                let at = off + h.value_offset();
                if stuffed {
                    buf[at..at + value.len()].copy_from_slice(value);
                } else {
                    for (i, part) in value.chunks(payload).enumerate() {
                        let ed = self.alloc(addr, BlockState::Used)?;
                        new_blocks += 1;
                        let mut data = vec![0u8; bsize];
                        init_block(&mut data, MetaType::EaData);
                        data[META_HEADER_SIZE..META_HEADER_SIZE + part.len()].copy_from_slice(part);
                        self.vol.write(ed, &data)?;
                        set_pointer(&mut buf[at..], i, ed);
                    }
                }
                off += size;
            }
            self.vol.write(ea, &buf)?;
            ea_addrs.push(ea);
        }
        let mut inode = self.vol.read(addr)?;
        let (eattr, flag) = if ea_addrs.len() == 1 {
            (ea_addrs[0], 0)
        } else {
            let ind = self.alloc(addr, BlockState::Used)?;
            new_blocks += 1;
            let mut buf = vec![0u8; bsize];
            init_block(&mut buf, MetaType::Indirect);
            for (i, &b) in ea_addrs.iter().enumerate() {
                set_pointer(&mut buf[META_HEADER_SIZE..], i, b);
            }
            self.vol.write(ind, &buf)?;
            (ind, dif::EA_INDIRECT)
        };
        let raw = dinode_mut(&mut inode);
        raw.di_eattr = eattr.into();
        raw.di_flags = (raw.di_flags.get() | flag).into();
        raw.di_blocks = (raw.di_blocks.get() + new_blocks).into();
        self.vol.write(addr, &inode)
    }

    /// Writes the resource groups, the statfs totals and the next formal
    /// inode number.
    pub fn finish(mut self) -> Result<()> {
        self.vol.write_dirty_rgrps()?;
        let bytes = read_file(&self.vol, self.statfs)?;
        let mut st = StatfsChange::decode(&bytes).map_err(fmt_err(self.statfs))?;
        st.free += self.vol.statfs_delta.free;
        st.dinodes += self.vol.statfs_delta.dinodes;
        write_file_prefix(&self.vol, self.statfs, &st.to_bytes())?;
        write_file_prefix(&self.vol, self.inum_file, &self.next_formal.to_be_bytes())?;
        self.vol.statfs_delta = StatfsChange::default();
        self.vol.dev.flush()?;
        Ok(())
    }
}

/// The content of test file number `seed` of `len` bytes: deterministic,
/// different for every seed, and never all zero in a block (so nothing
/// becomes a hole unless asked).
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x as u8) | 1
        })
        .collect()
}

/// The standard test content: one of everything the catalog corrupts.
/// Paths are stable; the catalog refers to them.
pub fn standard_content(p: &mut Populator) -> Result<()> {
    let root = p.root();
    let bsize = p.vol.bsize();
    let max_stuffed = p.vol.geom.max_stuffed() as usize;
    let h1 = p.vol.geom.heightsize[1] as usize;
    let docs = p.mkdir(root, "docs")?;
    p.create_file(
        docs,
        "small.txt",
        &FileSpec {
            data: b"hello, rgfs\n",
            sparse: false,
            mode: 0o644,
        },
    )?;
    p.create_file(
        docs,
        "stuffed-full",
        &FileSpec {
            data: &pattern(1, max_stuffed),
            sparse: false,
            mode: 0o644,
        },
    )?;
    p.create_file(
        docs,
        "empty",
        &FileSpec {
            data: b"",
            sparse: false,
            mode: 0o644,
        },
    )?;
    p.create_file(
        root,
        "h1",
        &FileSpec {
            data: &pattern(2, 5 * bsize + 100),
            sparse: false,
            mode: 0o644,
        },
    )?;
    let h2 = p.create_file(
        root,
        "h2",
        &FileSpec {
            data: &pattern(3, h1 + 3 * bsize),
            sparse: false,
            mode: 0o600,
        },
    )?;
    let mut sparse = pattern(4, 40 * bsize);
    sparse[bsize..30 * bsize].fill(0);
    p.create_file(
        root,
        "sparse",
        &FileSpec {
            data: &sparse,
            sparse: true,
            mode: 0o644,
        },
    )?;
    p.symlink(root, "link-to-small", "docs/small.txt")?;
    p.symlink(docs, "dangling", "/nowhere/at/all")?;
    p.link(root, "hardlink-h1", p.lookup("/h1")?)?;
    let dev = p.mkdir(root, "dev")?;
    p.mknod(dev, "null", s_if::CHR | 0o666, 1, 3)?;
    p.mknod(dev, "sda", s_if::BLK | 0o660, 8, 0)?;
    p.mknod(dev, "fifo", s_if::FIFO | 0o644, 0, 0)?;
    p.mknod(dev, "socket", s_if::SOCK | 0o755, 0, 0)?;
    // Extended attributes: stuffed, unstuffed (EA data blocks), indirect.
    let small = p.lookup("/docs/small.txt")?;
    p.set_xattrs(
        small,
        &[
            (eatype::USER, "comment", b"a stuffed value"),
            (eatype::SECURITY, "selinux", b"system_u:object_r:tmp_t:s0"),
        ],
    )?;
    let big_value = pattern(5, 2 * bsize + 17);
    p.set_xattrs(p.lookup("/h1")?, &[(eatype::USER, "big", &big_value)])?;
    let many: Vec<(u8, String, Vec<u8>)> = (0..40)
        .map(|i| (eatype::USER, format!("attr{i:02}"), pattern(100 + i, 200)))
        .collect();
    let many_ref: Vec<(u8, &str, &[u8])> = many
        .iter()
        .map(|(t, n, v)| (*t, n.as_str(), v.as_slice()))
        .collect();
    p.set_xattrs(h2, &many_ref)?;
    // A deep tree and a big exhash directory with several leaves.
    let a = p.mkdir(root, "a")?;
    let b = p.mkdir(a, "b")?;
    let c = p.mkdir(b, "c")?;
    p.create_file(
        c,
        "deep.txt",
        &FileSpec {
            data: b"deep\n",
            sparse: false,
            mode: 0o644,
        },
    )?;
    let big = p.mkdir(root, "bigdir")?;
    for i in 0..400 {
        let name = format!("file-{i:04}");
        let data = pattern(1000 + i, (i as usize * 37) % 300);
        p.create_file(
            big,
            &name,
            &FileSpec {
                data: &data,
                sparse: false,
                mode: 0o644,
            },
        )?;
    }
    let sub = p.mkdir(big, "subdir")?;
    p.create_file(
        sub,
        "inner",
        &FileSpec {
            data: b"inner\n",
            sparse: false,
            mode: 0o644,
        },
    )?;
    Ok(())
}
