//! The system files, built in memory: the master directory (jindex,
//! per_node and its per-journal files, inum, statfs, rindex, quota) and the
//! root directory, with every block they need allocated in the planned
//! resource groups.
//!
//! Creation order and allocation follow mkfs.gfs2 3.5 exactly, so both
//! tools put every system inode at the same address (docs/disk-format.md §11):
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
use rgfs::format::consts::{
    dif, dt, dt_from_mode, s_if, MetaType, FORMAT_DIRENT, FORMAT_QUOTA, FORMAT_RINDEX,
};
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
            write_dirent(
                &mut block[DINODE_SIZE + dot..],
                parent,
                b"..",
                dt::DIR,
                bsize - DINODE_SIZE - dot,
            );
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
    fn create(
        &mut self,
        dip: &mut Inode,
        path: &str,
        name: &str,
        mode: u32,
        flags: u32,
    ) -> Result<Inode> {
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
        let mut ip = self.create(
            per_node,
            "per_node/",
            &format!("quota_change{j}"),
            s_if::REG | 0o600,
            dif::SYSTEM,
        )?;
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
        let mut ir = b.create(
            &mut per_node,
            "per_node/",
            &format!("inum_range{j}"),
            file,
            sys_jdata,
        )?;
        ir.size = rgfs::format::files::InumRange::SIZE as u64;
        b.put(&ir);
        let mut sc = b.create(
            &mut per_node,
            "per_node/",
            &format!("statfs_change{j}"),
            file,
            sys_jdata,
        )?;
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
    let record = Quota {
        limit: 0,
        warn: 0,
        value: 1,
    }
    .to_bytes();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::MkfsOptions;
    use rgfs::format::dirent::used_entries;
    use rgfs::format::Dinode;

    fn reference() -> (Layout, SystemFiles) {
        let opts = MkfsOptions {
            journals: 2,
            lock_table: Some("pacemaker:pcmk".into()),
            ..Default::default()
        };
        let layout = crate::plan::plan(1 << 30, &opts).unwrap();
        let sys = build(&layout, 1, 1_700_000_000).unwrap();
        (layout, sys)
    }

    /// Every system inode of the reference image (docs/disk-format.md §11.1), at the same
    /// block with the same formal number.
    #[test]
    fn system_inodes_land_where_mkfs_gfs2_puts_them() {
        let (_, sys) = reference();
        let got: Vec<(&str, u64, u64)> = sys
            .inodes
            .iter()
            .map(|(p, i)| (p.as_str(), i.addr, i.formal_ino))
            .collect();
        assert_eq!(
            got,
            [
                ("master", 4124, 3),
                ("master/jindex", 4125, 4),
                ("master/per_node", 8233, 5),
                ("per_node/inum_range0", 8234, 6),
                ("per_node/statfs_change0", 8239, 7),
                ("per_node/quota_change0", 8240, 8),
                ("per_node/inum_range1", 8497, 9),
                ("per_node/statfs_change1", 8498, 10),
                ("per_node/quota_change1", 8499, 11),
                ("master/inum", 8756, 12),
                ("master/statfs", 8757, 13),
                ("master/rindex", 8758, 14),
                ("master/quota", 8759, 15),
                ("root", 8760, 16),
            ]
        );
        assert_eq!(
            (sys.master, sys.root),
            (Inum::new(3, 4124), Inum::new(16, 8760))
        );
    }

    #[test]
    fn counts_and_contents_match_the_reference_image() {
        let (_, sys) = reference();
        let free_dinodes: Vec<(u32, u32)> = sys
            .alloc
            .rgrps
            .iter()
            .map(|r| (r.header.free, r.header.dinodes))
            .collect();
        assert_eq!(
            free_dinodes,
            [
                (0, 3),
                (0, 3),
                (62950, 10),
                (63472, 0),
                (63472, 0),
                (63472, 0)
            ]
        );
        // rgrp 0's bitmap byte 1026: blocks 4106/4107 (master, jindex) DINODE.
        assert_eq!(sys.alloc.rgrps[0].bitmap.as_ref().unwrap()[1026], 0xF5);

        let dinode = |addr: u64| Dinode::decode(&sys.store.read(addr)).unwrap();
        let statfs = sys.store.read(8757);
        let totals = StatfsChange::decode(&statfs[DINODE_SIZE..]).unwrap();
        assert_eq!(
            (totals.total, totals.free, totals.dinodes),
            (262104, 253366, 16)
        );
        assert_eq!(
            u64::from_be_bytes(
                sys.store.read(8756)[DINODE_SIZE..DINODE_SIZE + 8]
                    .try_into()
                    .unwrap()
            ),
            17
        );
        let qc = dinode(8240);
        assert_eq!(
            (qc.height, qc.blocks, qc.goal_meta, qc.goal_data, qc.size),
            (1, 257, 8496, 8240, 1 << 20)
        );
        assert_eq!(
            (dinode(8758).size, dinode(8758).payload_format),
            (576, FORMAT_RINDEX)
        );
        assert_eq!(dinode(8759).size, 176);
        let master = dinode(4124);
        assert_eq!((master.nlink, master.entries, master.flags), (4, 8, 0x201));
        assert_eq!(dinode(8760).flags, 0x1);

        let block = sys.store.read(4124);
        let names: Vec<(String, u64, u16)> = used_entries(&block[DINODE_SIZE..])
            .unwrap()
            .iter()
            .map(|d| {
                (
                    String::from_utf8_lossy(d.name).into_owned(),
                    d.header.inum.addr,
                    d.header.rec_len,
                )
            })
            .collect();
        let expect = [
            (".", 4124),
            ("..", 4124),
            ("jindex", 4125),
            ("per_node", 8233),
            ("inum", 8756),
            ("statfs", 8757),
            ("rindex", 8758),
            ("quota", 8759),
        ];
        assert_eq!(names.len(), expect.len());
        for ((name, addr, rec_len), (want, want_addr)) in names.iter().zip(expect) {
            assert_eq!((name.as_str(), *addr), (want, want_addr));
            assert_eq!(*rec_len, if want == "quota" { 3528 } else { 48 });
        }
    }

    /// With 512-byte blocks and 8 journals the master, jindex and per_node
    /// directories do not fit in their dinodes: they become hashed, and
    /// every entry stays reachable.
    #[test]
    fn small_blocks_make_hashed_directories() {
        let opts = MkfsOptions {
            block_size: 512,
            journals: 8,
            ..MkfsOptions::nolock()
        };
        let layout = crate::plan::plan(300 << 20, &opts).unwrap();
        let sys = build(&layout, 1, 0).unwrap();
        for path in ["master", "master/jindex", "master/per_node"] {
            let inum = sys.inodes.iter().find(|(p, _)| p == path).unwrap().1;
            let di = Dinode::decode(&sys.store.read(inum.addr)).unwrap();
            assert!(di.is_exhash(), "{path}");
            assert_eq!(di.size, 8 << di.depth, "{path}");
        }
        let per_node = sys
            .inodes
            .iter()
            .find(|(p, _)| p == "master/per_node")
            .unwrap()
            .1;
        let di = Dinode::decode(&sys.store.read(per_node.addr)).unwrap();
        assert_eq!(di.entries, 2 + 3 * 8);
    }
}
