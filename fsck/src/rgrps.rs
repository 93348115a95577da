//! Pass "rgrps": the resource group index (the rindex file) and every
//! group's header and bitmap blocks.
//!
//! The rindex is trusted entry by entry when it verifies (lengths minimal,
//! `data0 = addr + length`, `bitbytes * 4 = data`, sorted, inside the
//! device). A bad entry is rebuilt from the group headers, found by
//! following `rg_skip` from the first group. Header fields that copy the
//! rindex (`rg_data0`, `rg_data`, `rg_bitbytes`), `rg_skip`, unknown flags
//! and a stale `rg_crc` are repaired here; the free and dinode counts are
//! pass 5's business (they follow the bitmaps, which follow the inodes).

use rgfs::format::consts::{rgf, MetaType};
use rgfs::format::meta::RawMetaHeader;
use rgfs::format::rgrp::{RawRgrp, RINDEX_SIZE};
use rgfs::format::{OnDisk, RgrpHeader, Rindex};
use zerocopy::FromBytes;

use crate::check::Fsck;
use crate::file::{read_file, write_file_prefix};
use crate::report::Fix;
use crate::volume::{fatal, read_rgrp_raw, Result, Rgrp, Volume};

/// The groups found by following `rg_skip` from the first header.
fn header_chain(vol: &Volume) -> Vec<Rindex> {
    let mut out = Vec::new();
    let mut addr = vol.geom.sb_addr() + 1;
    while out.len() < 1 << 20 {
        let Ok(block) = vol.read(addr) else { break };
        let Ok(raw) = RgrpHeader::raw(&block) else {
            break;
        };
        if raw.rg_header.check(MetaType::Rgrp).is_err() {
            break;
        }
        let bitbytes = raw.rg_bitbytes.get();
        let length = vol.geom.rgrp_meta_blocks(bitbytes);
        let ri = Rindex {
            addr,
            length,
            data0: addr + length as u64,
            data: bitbytes.saturating_mul(4),
            bitbytes,
        };
        if raw.rg_data0.get() != ri.data0
            || raw.rg_data.get() != ri.data
            || ri.data_end() > vol.dev_blocks
        {
            break;
        }
        out.push(ri);
        let skip = raw.rg_skip.get() as u64;
        if skip == 0 || skip < length as u64 {
            break;
        }
        addr += skip;
    }
    out
}

/// Verifies one rindex entry against the geometry, the device and the
/// previous entry.
fn check_entry(vol: &Volume, raw: &[u8], prev: Option<&Rindex>) -> Result<Rindex, String> {
    let ri = Rindex::decode(raw).map_err(|e| e.to_string())?;
    ri.check_geometry(&vol.geom).map_err(|e| e.to_string())?;
    if ri.data_end() > vol.dev_blocks {
        return Err(format!(
            "group at {} ends at block {}, beyond the device ({} blocks)",
            ri.addr,
            ri.data_end(),
            vol.dev_blocks
        ));
    }
    if ri.addr <= vol.geom.sb_addr() {
        return Err(format!("group at {} overlaps the superblock", ri.addr));
    }
    if let Some(p) = prev {
        if ri.addr < p.data_end() {
            return Err(format!(
                "group at {} overlaps the previous group (ends at {})",
                ri.addr,
                p.data_end()
            ));
        }
    }
    Ok(ri)
}

/// Decides the list of groups and repairs the rindex file.
fn index(fs: &mut Fsck) -> Result<Vec<Rindex>> {
    let chain = header_chain(&fs.vol);
    let Some(rindex_addr) = fs.sys.rindex else {
        if chain.is_empty() {
            return fatal("no rindex and no resource group headers: cannot go on");
        }
        // The system files check reports it and makes it again from these.
        fs.report.note(
            "rindex",
            format!(
                "missing; using the {} groups found from their headers",
                chain.len()
            ),
        );
        return Ok(chain);
    };
    let bytes = match read_file(&fs.vol, rindex_addr) {
        Ok(b) => b,
        Err(e) => {
            if chain.is_empty() {
                return fatal(format!(
                    "rindex cannot be read ({e}) and no resource group headers were found"
                ));
            }
            // Pass 1 may repair the rindex inode; its contents are checked
            // against these groups after it.
            fs.report.note(
                "rindex",
                format!(
                    "cannot be read ({e}); using the {} groups found from their headers",
                    chain.len()
                ),
            );
            fs.unread_rindex = Some(chain.clone());
            return Ok(chain);
        }
    };
    // Why the rindex file must be made again with another size (after
    // pass 2, by `remake`); entries are otherwise rewritten in place.
    let mut remake = None;
    if bytes.len() % RINDEX_SIZE != 0 || bytes.is_empty() {
        remake = Some(format!(
            "size {} is not a positive multiple of {RINDEX_SIZE}",
            bytes.len()
        ));
    }
    let mut list: Vec<Rindex> = Vec::new();
    let mut rewrite = false;
    for (i, raw) in bytes.chunks_exact(RINDEX_SIZE).enumerate() {
        match check_entry(&fs.vol, raw, list.last()) {
            Ok(ri) => list.push(ri),
            Err(why) if i == chain.len() && list == chain => {
                // Every group is listed already: the rest is excess.
                remake = Some(format!(
                    "entry {i} and on name no resource group (entry {i}: {why})"
                ));
                break;
            }
            Err(why) => {
                let replacement = chain
                    .get(i)
                    .copied()
                    .filter(|c| list.last().is_none_or(|p| c.addr >= p.data_end()));
                let Some(c) = replacement else {
                    fs.problem(
                        format!("rindex entry {i}"),
                        format!("{why}, and no resource group header to rebuild it from"),
                        Fix::None,
                    );
                    return fatal("cannot proceed without a valid rindex");
                };
                if fs.problem(
                    format!("rindex entry {i}"),
                    format!("{why}; rebuilt from the header at block {}", c.addr),
                    Fix::Safe,
                ) {
                    rewrite = true;
                }
                list.push(c);
            }
        }
    }
    if list.is_empty() {
        return fatal("the rindex lists no resource group");
    }
    if chain.len() > list.len() && chain[..list.len()] == list[..] {
        // A group header chains past the last entry (as after a cut
        // short rindex, or a grow that did not finish): the groups are
        // the chain's.
        remake = Some(format!(
            "lists {} resource groups, their headers chain {}",
            list.len(),
            chain.len()
        ));
        list = chain;
    }
    if let Some(why) = remake {
        fs.rebuilds.push(crate::remake::Rebuild {
            object: "system file rindex".into(),
            why,
            parent: fs.sys.master,
            entry: "rindex".into(),
            kind: crate::remake::Kind::Rindex,
        });
        return Ok(list);
    }
    if rewrite {
        let mut out = Vec::with_capacity(list.len() * RINDEX_SIZE);
        for ri in &list {
            out.extend_from_slice(&ri.to_bytes());
        }
        write_file_prefix(&fs.vol, rindex_addr, &out)?;
    }
    Ok(list)
}

pub fn run(fs: &mut Fsck) -> Result<()> {
    let list = index(fs)?;
    fs.progress.start("resource groups", list.len() as u64);
    fs.vol.rgrps.clear();
    for (i, ri) in list.iter().enumerate() {
        fs.progress.inc();
        let (bitmap, blocks) = read_rgrp_raw(&fs.vol, ri)?;
        let object = format!("resource group {} (block {})", i, ri.addr);
        let raw: RawRgrp = *RawRgrp::ref_from_prefix(&blocks[0])
            .expect("a block holds a header")
            .0;
        let skip = list.get(i + 1).map_or(0, |n| (n.addr - ri.addr) as u32);
        let mut dirty = false;
        let header = match raw.rg_header.check(MetaType::Rgrp) {
            Err(e) => {
                if fs.problem(
                    &object,
                    format!("header is damaged ({e}); rebuilt from the rindex"),
                    Fix::Risky,
                ) {
                    dirty = true;
                }
                RgrpHeader::empty(ri, skip)
            }
            Ok(()) => {
                let mut h = raw.fields();
                let stored = raw.rg_crc.get();
                let computed = raw.compute_crc();
                if stored != 0
                    && stored != computed
                    && fs.problem(
                        &object,
                        format!(
                            "rg_crc is {stored:#010x}, the header's checksum is {computed:#010x}"
                        ),
                        Fix::Safe,
                    )
                {
                    dirty = true;
                }
                let mut field = |fs: &mut Fsck, name: &str, have: u64, want: u64| {
                    if have != want
                        && fs.problem(
                            &object,
                            format!("{name} is {have}, should be {want}"),
                            Fix::Safe,
                        )
                    {
                        dirty = true;
                    }
                };
                field(fs, "rg_data0", h.data0, ri.data0);
                field(fs, "rg_data", h.data as u64, ri.data as u64);
                field(fs, "rg_bitbytes", h.bitbytes as u64, ri.bitbytes as u64);
                field(fs, "rg_skip", h.skip as u64, skip as u64);
                field(fs, "unknown rg_flags", (h.flags & !rgf::ALL) as u64, 0);
                h.data0 = ri.data0;
                h.data = ri.data;
                h.bitbytes = ri.bitbytes;
                h.skip = skip;
                h.flags &= rgf::ALL;
                h
            }
        };
        for (b, block) in blocks.iter().enumerate().skip(1) {
            let raw = RawMetaHeader::ref_from_prefix(block)
                .expect("a block holds a header")
                .0;
            if let Err(e) = raw.check(MetaType::RgrpBitmap) {
                if fs.problem(&object, format!("bitmap block {} is damaged ({e}); its header is rewritten, its bits checked in pass5", ri.addr + b as u64), Fix::Safe) {
                    dirty = true;
                }
            }
        }
        fs.vol.rgrps.push(Rgrp {
            ri: *ri,
            header,
            bitmap,
            dirty: false,
        });
        if dirty {
            fs.vol.write_rgrp(i)?;
        }
    }
    fs.progress.finish();
    Ok(())
}

/// After pass 1: the rindex that could not be read before must now hold
/// exactly the groups in use; entries are rewritten in place when they
/// differ.
pub fn recheck_rindex(fs: &mut Fsck) -> Result<()> {
    let Some(groups) = fs.unread_rindex.take() else {
        return Ok(());
    };
    let Some(addr) = fs.sys.rindex else {
        return Ok(());
    };
    if fs.rebuilds.iter().any(|r| r.entry == "rindex") {
        // Not an rindex at all: it is made again after pass 2.
        return Ok(());
    }
    let want: Vec<u8> = groups.iter().flat_map(|ri| ri.to_bytes()).collect();
    match read_file(&fs.vol, addr) {
        Ok(bytes) if bytes.len() == want.len() => {
            let same = bytes
                .chunks_exact(RINDEX_SIZE)
                .zip(&groups)
                .all(|(raw, ri)| Rindex::decode(raw).is_ok_and(|r| r == *ri));
            if !same
                && fs.problem(
                    "rindex",
                    "entries differ from the resource group headers: rewritten",
                    Fix::Safe,
                )
            {
                write_file_prefix(&fs.vol, addr, &want)?;
            }
        }
        Ok(bytes) => {
            fs.problem(
                "rindex",
                format!(
                    "holds {} bytes for {} resource groups",
                    bytes.len(),
                    groups.len()
                ),
                Fix::None,
            );
        }
        Err(e) => {
            fs.problem("rindex", format!("cannot be read ({e})"), Fix::None);
        }
    }
    Ok(())
}
