//! Pass "statfs": the master statfs file plus every node's unsynced
//! statfs_change deltas must add up to the resource groups' totals
//! (Σ ri_data, Σ rg_free, Σ rg_dinodes). A repair writes the totals to the
//! master file and zeroes the deltas.
//!
//! Changes fsck itself made (allocating lost+found, freeing inodes) are
//! folded in silently: they are consequences of reported repairs. Node
//! deltas left by a node that did not unmount cleanly are folded into the
//! master file (the kernel does so at unmount; fsck.gfs2 reads the master
//! file alone).

use rgfs::format::{OnDisk, StatfsChange};

use crate::check::Fsck;
use crate::file::{read_file, write_file_prefix};
use crate::report::Fix;
use crate::volume::Result;

fn read_statfs(fs: &Fsck, addr: u64) -> Option<StatfsChange> {
    let bytes = read_file(&fs.vol, addr).ok()?;
    StatfsChange::decode(&bytes).ok()
}

pub fn run(fs: &mut Fsck) -> Result<()> {
    let Some(master) = fs.sys.statfs else {
        return Ok(());
    };
    let Some(stored) = read_statfs(fs, master) else {
        fs.problem("statfs", "the master statfs file cannot be read", Fix::None);
        return Ok(());
    };
    let mut want = StatfsChange::default();
    for rg in &fs.vol.rgrps {
        want.total += rg.ri.data as i64;
        want.free += rg.header.free as i64;
        want.dinodes += rg.header.dinodes as i64;
    }
    let mut sum = stored;
    let mut deltas = Vec::new();
    for &(jid, addr) in &fs.sys.statfs_changes.clone() {
        if let Some(d) = read_statfs(fs, addr) {
            sum.total += d.total;
            sum.free += d.free;
            sum.dinodes += d.dinodes;
            if d != StatfsChange::default() {
                deltas.push((jid, addr));
            }
        }
    }
    let ours = fs.vol.statfs_delta;
    let before_ours = StatfsChange {
        total: want.total,
        free: want.free - ours.free,
        dinodes: want.dinodes - ours.dinodes,
    };
    let write = if sum == want && deltas.is_empty() {
        false
    } else if sum == want || sum == before_ours && !deltas.is_empty() {
        // Consistent, but a node's changes were never folded into the
        // master file (it did not unmount cleanly): the kernel folds them
        // at unmount, and fsck.gfs2 reads the master file alone.
        let jids: Vec<String> = deltas
            .iter()
            .map(|(j, _)| format!("statfs_change{j}"))
            .collect();
        let msg = format!(
            "{} hold changes not folded into the master statfs file",
            jids.join(", ")
        );
        fs.problem("statfs", msg, Fix::Safe)
    } else if sum == before_ours {
        // Only fsck's own changes are missing: no problem to report.
        fs.vol.writable
    } else {
        let msg = format!(
            "totals are {}/{}/{} (blocks/free/dinodes, with node deltas), the resource groups say {}/{}/{}",
            sum.total, sum.free, sum.dinodes, want.total, want.free, want.dinodes
        );
        fs.problem("statfs", msg, Fix::Safe)
    };
    if write {
        write_file_prefix(&fs.vol, master, &want.to_bytes())?;
        for (_, addr) in deltas {
            write_file_prefix(&fs.vol, addr, &StatfsChange::default().to_bytes())?;
        }
        fs.vol.statfs_delta = StatfsChange::default();
    }
    Ok(())
}
