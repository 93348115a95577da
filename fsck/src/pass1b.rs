//! Pass 1b: blocks claimed by more than one reference.
//!
//! The block's content decides which claim is right: a block that is a
//! dinode for itself belongs to that inode; a block carrying a metadata
//! header belongs to a reference that expects that type; otherwise any
//! data reference fits. The first fitting claim keeps the block. Every
//! other data or tree reference gets its own copy of the block (nothing is
//! lost); a reference that cannot fit (it expects another type) is removed
//! from its inode, as are extended attribute blocks claimed twice.

use std::collections::BTreeMap;

use rgfs::format::consts::{dif, MetaType};
use rgfs::format::meta::{block_type, payload_of, pointer_at, set_pointer, META_HEADER_SIZE};
use rgfs::format::{BlockState, DINODE_SIZE};

use crate::blockmap::{Claim, Use};
use crate::check::Fsck;
use crate::dir::dinode_mut;
use crate::report::Fix;
use crate::volume::Result;

pub fn run(fs: &mut Fsck) -> Result<()> {
    if fs.dups.is_empty() {
        return Ok(());
    }
    let mut by_block: BTreeMap<u64, Vec<Claim>> = BTreeMap::new();
    for (b, c) in std::mem::take(&mut fs.dups) {
        by_block.entry(b).or_default().push(c);
    }
    fs.progress.start("pass1b", by_block.len() as u64);
    for (block, extra) in by_block {
        fs.progress.inc();
        let Some(first) = fs.map.get(block) else {
            continue;
        };
        let mut claims = vec![first];
        claims.extend(extra);
        let content = fs.vol.read(block)?;
        let ty = block_type(&content);
        let fits = |c: &Claim| match c.usage.meta_type() {
            Some(MetaType::Dinode) => ty == Some(MetaType::Dinode) && c.owner == block,
            Some(t) => ty == Some(t),
            None => ty != Some(MetaType::Dinode),
        };
        let keeper = claims.iter().position(fits).unwrap_or(0);
        let owners: Vec<String> = claims
            .iter()
            .map(|c| format!("inode {} ({})", c.owner, c.usage.name()))
            .collect();
        let object = format!("block {block}");
        let keep = claims[keeper];
        for (i, c) in claims.iter().enumerate() {
            if i == keeper {
                continue;
            }
            let copyable = matches!(c.usage, Use::Data | Use::Indirect | Use::DirData) && fits(c);
            if copyable {
                let msg = format!(
                    "claimed by {}: inode {} keeps it, inode {} gets a copy",
                    owners.join(" and "),
                    keep.owner,
                    c.owner
                );
                if fs.problem(&object, msg, Fix::Risky) {
                    copy_for(fs, block, *c, &content)?;
                }
            } else {
                let msg = format!(
                    "claimed by {}: inode {} keeps it, the reference from inode {} is removed",
                    owners.join(" and "),
                    keep.owner,
                    c.owner
                );
                if fs.problem(&object, msg, Fix::Risky) {
                    drop_reference(fs, block, *c)?;
                }
            }
        }
        if keeper != 0 {
            // The map named the first claimant; the keeper owns it now.
            fs.map.remove(block);
            fs.map.insert(block, keep.usage, keep.owner).ok();
        }
    }
    fs.progress.finish();
    Ok(())
}

/// Replaces pointer `old` by `new` wherever it appears in the metadata
/// tree of `owner` (dinode pointers and indirect blocks). Returns whether
/// it was found.
fn repoint(fs: &mut Fsck, owner: u64, old: u64, new: u64) -> Result<bool> {
    let mut block = fs.vol.read(owner)?;
    let height = dinode_mut(&mut block).di_height.get();
    if height == 0 {
        return Ok(false);
    }
    let mut found = false;
    let mut top = block[DINODE_SIZE..].to_vec();
    let mut visited = std::collections::HashSet::new();
    if repoint_level(fs, &mut top, 0, height, old, new, &mut found, &mut visited)? {
        block[DINODE_SIZE..].copy_from_slice(&top);
        fs.vol.write(owner, &block)?;
    }
    Ok(found)
}

#[allow(clippy::too_many_arguments)]
fn repoint_level(
    fs: &mut Fsck,
    ptrs: &mut [u8],
    level: usize,
    height: u16,
    old: u64,
    new: u64,
    found: &mut bool,
    visited: &mut std::collections::HashSet<u64>,
) -> Result<bool> {
    let mut changed = false;
    for i in 0..ptrs.len() / 8 {
        let p = pointer_at(ptrs, i);
        if p == old && !*found {
            set_pointer(ptrs, i, new);
            changed = true;
            *found = true;
            continue;
        }
        if p == 0
            || level + 1 >= height as usize
            || !fs.vol.is_data_block(p)
            || fs.map.get(p).is_none_or(|c| c.usage != Use::Indirect)
            || !visited.insert(p)
        {
            continue;
        }
        let mut child = fs.vol.read(p)?;
        if payload_of(&child, MetaType::Indirect).is_err() {
            continue;
        }
        if repoint_level(
            fs,
            &mut child[META_HEADER_SIZE..],
            level + 1,
            height,
            old,
            new,
            found,
            visited,
        )? {
            fs.vol.write(p, &child)?;
        }
        if *found {
            break;
        }
    }
    Ok(changed)
}

/// Gives claim `c` its own copy of `block`.
fn copy_for(fs: &mut Fsck, block: u64, c: Claim, content: &[u8]) -> Result<()> {
    let map = &fs.map;
    let Some(new) = fs
        .vol
        .alloc(block, BlockState::Used, &|b| map.get(b).is_none())
    else {
        fs.report.note(
            format!("block {block}"),
            "no free block for the copy; reference removed instead",
        );
        return drop_reference(fs, block, c);
    };
    fs.vol.write(new, content)?;
    fs.map.insert(new, c.usage, c.owner).ok();
    if !repoint(fs, c.owner, block, new)? {
        fs.report.note(
            format!("inode {}", c.owner),
            format!("reference to block {block} not found again"),
        );
    }
    Ok(())
}

/// Removes claim `c`'s reference to `block` and corrects its `di_blocks`.
fn drop_reference(fs: &mut Fsck, block: u64, c: Claim) -> Result<()> {
    match c.usage {
        Use::Ea | Use::EaIndirect | Use::EaData => {
            // The owner loses its extended attributes; its other EA blocks
            // become unclaimed and pass 5 frees them.
            let others: Vec<(u64, Use)> = fs
                .map
                .blocks_of(c.owner)
                .into_iter()
                .filter(|(_, u)| matches!(u, Use::Ea | Use::EaIndirect | Use::EaData))
                .collect();
            for (b, _) in &others {
                fs.map.remove(*b);
            }
            let lost = others.len() as u64 + 1;
            fs.edit_dinode(c.owner, |raw| {
                raw.di_eattr = 0.into();
                raw.di_flags = (raw.di_flags.get() & !dif::EA_INDIRECT).into();
                raw.di_blocks = raw.di_blocks.get().saturating_sub(lost).into();
            })?;
            if let Some(i) = fs.inodes.get_mut(&c.owner) {
                i.eattr = 0;
            }
        }
        Use::Dinode => {}
        _ => {
            if repoint(fs, c.owner, block, 0)? {
                fs.edit_dinode(c.owner, |raw| {
                    raw.di_blocks = raw.di_blocks.get().saturating_sub(1).into()
                })?;
            } else if let Some(t) = fs.tables.get_mut(&c.owner) {
                // A leaf pointer: pass 2 gives the range a new leaf.
                for p in t.ptrs.iter_mut().filter(|p| **p == block) {
                    *p = 0;
                }
            }
        }
    }
    Ok(())
}
