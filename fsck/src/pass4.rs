//! Pass 4: link counts and unlinked inodes. Each inode's `di_nlink` must
//! equal the entries naming it (for a directory: its own ".", its
//! parent's entry and each subdirectory's ".."). An inode no entry names
//! is freed when it was already deleted (unlinked, or a link count of 0)
//! or is an empty file; any other goes to lost+found.

use rgfs::format::consts::s_if;

use crate::check::Fsck;
use crate::report::Fix;
use crate::volume::Result;

pub fn run(fs: &mut Fsck) -> Result<()> {
    let (root, master) = (fs.sys.root, fs.sys.master);
    let addrs: Vec<u64> = fs.inodes.keys().copied().collect();
    fs.progress.start("pass4", addrs.len() as u64);
    for addr in addrs {
        fs.progress.inc();
        let Some(info) = fs.inodes.get(&addr).cloned() else {
            continue;
        };
        let object = format!("inode {addr}");
        if info.refs == 0 && addr != root && addr != master {
            let empty = info.mode & s_if::FMT == s_if::REG
                && info.size == 0
                && info.eattr == 0
                && fs.map.blocks_of(addr).len() == 1;
            if info.unlinked || info.nlink == 0 {
                if fs.problem(
                    &object,
                    "is unlinked and not named by any directory: freed",
                    Fix::Safe,
                ) {
                    fs.free_inode(addr);
                }
                continue;
            }
            if empty {
                if fs.problem(
                    &object,
                    "is an empty file not named by any directory: freed",
                    Fix::Risky,
                ) {
                    fs.free_inode(addr);
                }
                continue;
            }
            if fs.problem(
                &object,
                "is not named by any directory: moved to lost+found",
                Fix::Risky,
            ) && !fs.move_to_lost_found(addr)?
            {
                fs.report
                    .note(&object, "lost+found could not be made; left as it is");
            }
        }
        let Some(info) = fs.inodes.get(&addr).cloned() else {
            continue;
        };
        if info.refs != info.nlink && info.refs > 0 {
            let msg = format!(
                "link count is {}, but {} entries name it",
                info.nlink, info.refs
            );
            if fs.problem(&object, msg, Fix::Safe) {
                let n = info.refs;
                fs.edit_dinode(addr, |raw| raw.di_nlink = n.into())?;
                fs.inodes.get_mut(&addr).expect("kept").nlink = n;
            }
        }
    }
    fs.progress.finish();
    Ok(())
}
