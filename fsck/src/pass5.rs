//! Pass 5: bitmaps and resource group counts. The state of every data
//! block follows from the block map (a kept inode's dinode is DINODE, any
//! other block it uses is USED, anything else is FREE); bits beyond
//! `ri_data` must be clear; `rg_free` and `rg_dinodes` must count the
//! bitmap.

use rgfs::format::bitmap;
use rgfs::format::BlockState;

use crate::check::Fsck;
use crate::report::{Fix, MAX_LINES_PER_KIND};
use crate::volume::Result;

pub fn run(fs: &mut Fsck) -> Result<()> {
    fs.progress.start("pass5", fs.vol.rgrps.len() as u64);
    for i in 0..fs.vol.rgrps.len() {
        fs.progress.inc();
        let ri = fs.vol.rgrps[i].ri;
        let object = format!("resource group {i} (block {})", ri.addr);
        // The bitmap the block map implies.
        let mut want = vec![0u8; ri.bitbytes as usize];
        for (start, len, usage) in fs.map.runs_in(ri.data0, ri.data_end()) {
            let state = usage.bitmap_state();
            for b in start..start + len {
                bitmap::set(&mut want, (b - ri.data0) as u32, state);
            }
        }
        let mut differ = 0u64;
        // Differences past the reported ones (at most one group's blocks).
        let mut more = Vec::new();
        let have = fs.vol.rgrps[i].bitmap.clone();
        for byte in 0..ri.bitbytes as usize {
            if have[byte] == want[byte] {
                continue;
            }
            for k in 0..4u32 {
                let idx = byte as u32 * 4 + k;
                let (h, w) = (bitmap::get(&have, idx), bitmap::get(&want, idx));
                if h == w {
                    continue;
                }
                if idx >= ri.data {
                    continue;
                }
                differ += 1;
                let block = ri.data0 + idx as u64;
                if differ as usize <= MAX_LINES_PER_KIND {
                    let msg = format!("bitmap says {}, fsck found {}", h.name(), w.name());
                    if fs.problem(format!("block {block}"), msg, Fix::Safe) {
                        fs.vol.set_state(block, w);
                    }
                } else {
                    more.push((block, w));
                }
            }
        }
        // The rest in one line (and one question).
        if !more.is_empty()
            && fs.problem(
                &object,
                format!("{} more blocks with a wrong bitmap state", more.len()),
                Fix::Safe,
            )
        {
            for (block, w) in more.drain(..) {
                fs.vol.set_state(block, w);
            }
        }
        // Bits beyond the last block must be clear.
        let rg = &fs.vol.rgrps[i];
        if bitmap::check_tail(&rg.bitmap, ri.data).is_err()
            && fs.problem(
                &object,
                "bitmap bits beyond the last block are set",
                Fix::Safe,
            )
        {
            let rg = &mut fs.vol.rgrps[i];
            for idx in ri.data..ri.bitbytes * 4 {
                bitmap::set(&mut rg.bitmap, idx, BlockState::Free);
            }
            rg.dirty = true;
        }
        let rg = &fs.vol.rgrps[i];
        let (free, dinodes) = rg.counted();
        let (hfree, hdinodes) = (rg.header.free, rg.header.dinodes);
        if hfree != free
            && fs.problem(
                &object,
                format!("rg_free is {hfree}, the bitmap has {free} free blocks"),
                Fix::Safe,
            )
        {
            fs.vol.rgrps[i].header.free = free;
            fs.vol.rgrps[i].dirty = true;
        }
        if hdinodes != dinodes
            && fs.problem(
                &object,
                format!("rg_dinodes is {hdinodes}, the bitmap has {dinodes} dinodes"),
                Fix::Safe,
            )
        {
            fs.vol.rgrps[i].header.dinodes = dinodes;
            fs.vol.rgrps[i].dirty = true;
        }
    }
    fs.progress.finish();
    if fs.vol.writable {
        fs.vol.write_dirty_rgrps()?;
    }
    Ok(())
}
