//! The system files, built in memory: the master directory (jindex,
//! per_node and its per-journal files, inum, statfs, rindex, quota) and the
//! root directory, with every block they need allocated in the planned
//! resource groups.
//!
//! Creation order and allocation follow mkfs.gfs2 3.5 exactly, so both
//! tools put every system inode at the same address (brief §5):
//! master → jindex (+ an entry per journal) → per_node → for each journal
//! inum_range, statfs_change, quota_change → inum → statfs → rindex →
//! quota → root. Formal inode numbers count up from 1 in creation order
//! (the journals, made by the planner, are 1..=J).
//!
//! Nothing here does I/O; the writer puts the result on the device.

mod alloc;
mod dir;
mod inode;
mod store;

pub use alloc::{Allocator, RgrpState};
pub use inode::Inode;
pub use store::BlockStore;

use rgfs::format::bitmap::BlockState;
use rgfs::format::consts::{dif, dt, dt_from_mode, s_if, MetaType, FORMAT_DIRENT, FORMAT_QUOTA, FORMAT_RINDEX};
use rgfs::format::dinode::DINODE_SIZE;
use rgfs::format::dirent::{dirent_size, write_dirent};
use rgfs::format::files::{Quota, StatfsChange};
use rgfs::format::geometry::Geometry;
use rgfs::format::meta::init_block;
use rgfs::format::rgrp::RINDEX_SIZE;
use rgfs::format::{Inum, OnDisk};

use crate::error::Result;
use crate::plan::Layout;

/// The built system files.
#[derive(Debug)]
pub struct SystemFiles {
    /// Every block of the system files (journals excepted).
    pub store: BlockStore,
    /// The groups with their final allocation state.
    pub alloc: Allocator,
    pub master: Inum,
    pub root: Inum,
    /// Where each system inode went, by path (e.g. "per_node/inum_range0").
    pub inodes: Vec<(String, Inum)>,
}

/// State shared by the building steps.
pub(crate) struct Builder {
    geom: Geometry,
    store: BlockStore,
    alloc: Allocator,
    next_formal: u64,
    time_sec: i64,
    inodes: Vec<(String, Inum)>,
}

impl Builder {
    /// A new dinode in its own (freshly allocated) block; directories get
    /// "." and "..".
    fn init_dinode(&mut self, num: Inum, mode: u32, flags: u32, parent: Inum) -> Inode {
        let bsize = self.geom.bsize as usize;
        let block = self.store.fresh(num.addr);
        let mut ip = Inode {
            num,
            mode,
            flags,
            nlink: 1,
            size: 0,
            blocks: 1,
            height: 0,
            depth: 0,
            entries: 0,
            goal_meta: num.addr,
            goal_data: num.addr,
            payload_format: 0,
        };
        if ip.is_dir() {
            let dot = dirent_size(1);
            write_dirent(&mut block[DINODE_SIZE..], num, b".", dt::DIR, dot);
            write_dirent(&mut block[DINODE_SIZE + dot..], parent, b"..", dt::DIR, bsize - DINODE_SIZE - dot);
            ip.nlink = 2;
            ip.size = (bsize - DINODE_SIZE) as u64;
            ip.flags |= dif::JDATA;
            ip.payload_format = FORMAT_DIRENT;
            ip.entries = 2;
        }
        ip
    }

    fn next_inum(&mut self, addr: u64) -> Inum {
        let inum = Inum::new(self.next_formal, addr);
        self.next_formal += 1;
        inum
    }

    /// A directory that is its own parent (master, root).
    fn create_top_dir(&mut self, path: &str, flags: u32) -> Result<Inode> {
        let addr = self.alloc.alloc(BlockState::Dinode)?;
        let num = self.next_inum(addr);
        self.inodes.push((path.to_string(), num));
        Ok(self.init_dinode(num, s_if::DIR | 0o755, flags, num))
    }

    /// A new inode linked into `dip` under `name`.
    fn create(&mut self, dip: &mut Inode, path: &str, name: &str, mode: u32, flags: u32) -> Result<Inode> {
        let addr = self.alloc.alloc(BlockState::Dinode)?;
        let num = self.next_inum(addr);
        self.inodes.push((format!("{path}{name}"), num));
        self.dir_add(dip, name, num, dt_from_mode(mode).expect("valid mode"))?;
        if mode & s_if::FMT == s_if::DIR {
            dip.nlink += 1;
        }
        Ok(self.init_dinode(num, mode, flags, dip.num))
    }

    /// A quota_change file: `blocks` blocks, each a quota change block
    /// with no changes, allocated one by one after the tree is grown.
    fn create_quota_change(&mut self, per_node: &mut Inode, j: u32, size_mb: u32) -> Result<Inode> {
        let mut ip = self.create(per_node, "per_node/", &format!("quota_change{j}"), s_if::REG | 0o600, dif::SYSTEM)?;
        let shift = self.geom.bsize_shift;
        let blocks = (size_mb as u64) << (20 - shift);
        let height = self.height_for(&ip, (blocks + 1) * self.geom.bsize as u64);
        self.build_height(&mut ip, height)?;
        for lblock in 0..blocks {
            let (addr, new) = self.block_map(&mut ip, lblock, true)?;
            if new {
                ip.size = ip.size.max((lblock + 1) << shift);
            }
            init_block(self.store.fresh(addr), MetaType::QuotaChange);
        }
        Ok(ip)
    }
}

/// Builds the system files for `layout`.
pub fn build(layout: &Layout, quota_change_size_mb: u32, time_sec: i64) -> Result<SystemFiles> {
    let mut b = Builder {
        geom: layout.geometry.clone(),
        store: BlockStore::new(layout.geometry.bsize),
        alloc: Allocator::new(layout),
        next_formal: layout.journals.len() as u64 + 1,
        time_sec,
        inodes: Vec::new(),
    };
    let sys = dif::SYSTEM;
    let sys_jdata = dif::SYSTEM | dif::JDATA;
    let file = s_if::REG | 0o600;

    let mut master = b.create_top_dir("master", sys)?;
    let mut jindex = b.create(&mut master, "master/", "jindex", s_if::DIR | 0o700, sys)?;
    for (j, jp) in layout.journals.iter().enumerate() {
        b.dir_add(&mut jindex, &format!("journal{j}"), jp.inum, dt::REG)?;
    }
    b.put(&jindex);

    let mut per_node = b.create(&mut master, "master/", "per_node", s_if::DIR | 0o700, sys)?;
    for j in 0..layout.journals.len() as u32 {
        let mut ir = b.create(&mut per_node, "per_node/", &format!("inum_range{j}"), file, sys_jdata)?;
        ir.size = rgfs::format::files::InumRange::SIZE as u64;
        b.put(&ir);
        let mut sc = b.create(&mut per_node, "per_node/", &format!("statfs_change{j}"), file, sys_jdata)?;
        sc.size = StatfsChange::SIZE as u64;
        b.put(&sc);
        let qc = b.create_quota_change(&mut per_node, j, quota_change_size_mb)?;
        b.put(&qc);
    }
    b.put(&per_node);

    let mut inum = b.create(&mut master, "master/", "inum", file, sys_jdata)?;
    let mut statfs = b.create(&mut master, "master/", "statfs", file, sys_jdata)?;

    let mut rindex = b.create(&mut master, "master/", "rindex", file, sys_jdata)?;
    rindex.payload_format = FORMAT_RINDEX;
    for r in &layout.rgrps {
        let at = rindex.size;
        b.write(&mut rindex, at, &r.ri.to_bytes(), true)?;
    }
    // mkfs.gfs2 writes one more, zeroed entry past the end without
    // counting it in the size; it can allocate or unstuff, so do the same.
    let at = rindex.size;
    b.write(&mut rindex, at, &[0u8; RINDEX_SIZE], false)?;
    b.put(&rindex);

    let mut quota = b.create(&mut master, "master/", "quota", file, sys_jdata)?;
    quota.payload_format = FORMAT_QUOTA;
    // Records for user 0 and group 0, each charged one block.
    let record = Quota { limit: 0, warn: 0, value: 1 }.to_bytes();
    for _ in 0..2 {
        let at = quota.size;
        b.write(&mut quota, at, &record, true)?;
    }
    b.put(&quota);

    let root = b.create_top_dir("root", 0)?;
    b.put(&root);

    let next_formal = b.next_formal.to_be_bytes();
    b.write(&mut inum, 0, &next_formal, true)?;
    b.put(&inum);
    let total = b.alloc.total_blocks();
    let totals = StatfsChange {
        total: total as i64,
        free: (total - b.alloc.blocks_allocated) as i64,
        dinodes: b.alloc.dinodes_allocated as i64,
    };
    b.write(&mut statfs, 0, &totals.to_bytes(), true)?;
    b.put(&statfs);
    b.put(&master);

    b.alloc.check();
    Ok(SystemFiles {
        store: b.store,
        alloc: b.alloc,
        master: master.num,
        root: root.num,
        inodes: b.inodes,
    })
}
