//! The block map: which inode uses each block, and as what.
//!
//! Pass 1 fills it while walking every inode; pass 1b resolves blocks two
//! inodes claim; pass 5 compares it with the bitmaps. It stores runs of
//! consecutive blocks with the same owner and use, so its size follows the
//! number of extents the metadata describes, not the size of the device
//! (a 16 MiB journal is one entry).
//!
//! Invariants: extents do not overlap, have `len >= 1`, and two adjacent
//! extents with the same owner and use are merged.

use std::collections::BTreeMap;

use rgfs::format::{BlockState, MetaType};

/// What a block is used for, as the referring structure expects it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Use {
    Dinode,
    /// A block of the metadata tree (type IN).
    Indirect,
    /// A directory's hash-table block (type JD).
    DirData,
    Leaf,
    /// An extended attribute block (type EA).
    Ea,
    /// The block of EA block pointers of an EA_INDIRECT inode (type IN).
    EaIndirect,
    /// An unstuffed xattr value block (type ED).
    EaData,
    /// File data (no header).
    Data,
}

impl Use {
    /// The bitmap state a block in this use must have.
    pub fn bitmap_state(self) -> BlockState {
        match self {
            Use::Dinode => BlockState::Dinode,
            _ => BlockState::Used,
        }
    }

    /// The metadata type the block must carry, if any.
    pub fn meta_type(self) -> Option<MetaType> {
        match self {
            Use::Dinode => Some(MetaType::Dinode),
            Use::Indirect | Use::EaIndirect => Some(MetaType::Indirect),
            Use::DirData => Some(MetaType::Jdata),
            Use::Leaf => Some(MetaType::Leaf),
            Use::Ea => Some(MetaType::Ea),
            Use::EaData => Some(MetaType::EaData),
            Use::Data => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Use::Dinode => "inode",
            Use::Indirect => "indirect block",
            Use::DirData => "directory data block",
            Use::Leaf => "directory leaf",
            Use::Ea => "xattr block",
            Use::EaIndirect => "xattr indirect block",
            Use::EaData => "xattr data block",
            Use::Data => "data block",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Extent {
    len: u64,
    usage: Use,
    owner: u64,
}

/// Who already holds a block that another reference wants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Claim {
    pub owner: u64,
    pub usage: Use,
}

#[derive(Default, Debug, Clone)]
pub struct BlockMap {
    extents: BTreeMap<u64, Extent>,
    blocks: u64,
}

impl BlockMap {
    pub fn new() -> Self {
        Self::default()
    }

    /// Blocks in the map.
    pub fn len(&self) -> u64 {
        self.blocks
    }

    pub fn is_empty(&self) -> bool {
        self.blocks == 0
    }

    /// Extents stored (a measure of the map's memory).
    pub fn extent_count(&self) -> usize {
        self.extents.len()
    }

    /// Who uses `block`, if anyone.
    pub fn get(&self, block: u64) -> Option<Claim> {
        let (&start, e) = self.extents.range(..=block).next_back()?;
        (block - start < e.len).then_some(Claim {
            owner: e.owner,
            usage: e.usage,
        })
    }

    /// Records that `owner` uses `block` as `usage`. If the block is
    /// already used, nothing changes and the existing claim is returned.
    pub fn insert(&mut self, block: u64, usage: Use, owner: u64) -> Result<(), Claim> {
        if let Some(claim) = self.get(block) {
            return Err(claim);
        }
        self.blocks += 1;
        let mut start = block;
        let mut len = 1;
        // Merge with the extent ending just before.
        if let Some((&s, e)) = self.extents.range(..block).next_back() {
            if s + e.len == block && e.usage == usage && e.owner == owner {
                start = s;
                len += e.len;
            }
        }
        // Merge with the extent starting just after.
        if let Some(e) = self.extents.get(&(block + 1)).copied() {
            if e.usage == usage && e.owner == owner {
                self.extents.remove(&(block + 1));
                len += e.len;
            }
        }
        self.extents.insert(start, Extent { len, usage, owner });
        Ok(())
    }

    /// Forgets `block`; returns its claim if it was used.
    pub fn remove(&mut self, block: u64) -> Option<Claim> {
        let (&start, &e) = self.extents.range(..=block).next_back()?;
        if block - start >= e.len {
            return None;
        }
        self.blocks -= 1;
        self.extents.remove(&start);
        if block > start {
            self.extents.insert(
                start,
                Extent {
                    len: block - start,
                    ..e
                },
            );
        }
        let after = start + e.len - (block + 1);
        if after > 0 {
            self.extents.insert(block + 1, Extent { len: after, ..e });
        }
        Some(Claim {
            owner: e.owner,
            usage: e.usage,
        })
    }

    /// Every block `owner` uses, in order, with its use.
    pub fn blocks_of(&self, owner: u64) -> Vec<(u64, Use)> {
        let mut out = Vec::new();
        for (&s, e) in &self.extents {
            if e.owner == owner {
                out.extend((s..s + e.len).map(|b| (b, e.usage)));
            }
        }
        out
    }

    /// Forgets every block of `owner`; returns them.
    pub fn remove_owner(&mut self, owner: u64) -> Vec<(u64, Use)> {
        let blocks = self.blocks_of(owner);
        for &(b, _) in &blocks {
            self.remove(b);
        }
        blocks
    }

    /// The runs `(first block, length, use)` overlapping `start..end`,
    /// clipped to it, in order.
    pub fn runs_in(&self, start: u64, end: u64) -> Vec<(u64, u64, Use)> {
        let mut out = Vec::new();
        let first = self
            .extents
            .range(..=start)
            .next_back()
            .map_or(start, |(&s, _)| s);
        for (&s, e) in self.extents.range(first..end) {
            let a = s.max(start);
            let b = (s + e.len).min(end);
            if a < b {
                out.push((a, b - a, e.usage));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    proptest! {
        /// Inserts and removes agree with a plain map of blocks; adjacent
        /// equal claims stay merged.
        #[test]
        fn behaves_like_a_hash_map(ops in proptest::collection::vec((0u64..200, 0u8..3, 0u64..3, any::<bool>()), 1..300)) {
            let mut map = BlockMap::new();
            let mut model: HashMap<u64, Claim> = HashMap::new();
            let uses = [Use::Data, Use::Indirect, Use::Dinode];
            for (block, u, owner, add) in ops {
                if add {
                    let claim = Claim { owner, usage: uses[u as usize] };
                    let got = map.insert(block, claim.usage, claim.owner);
                    match model.get(&block) {
                        Some(c) => prop_assert_eq!(got, Err(*c)),
                        None => { prop_assert_eq!(got, Ok(())); model.insert(block, claim); }
                    }
                } else {
                    prop_assert_eq!(map.remove(block), model.remove(&block));
                }
                prop_assert_eq!(map.len(), model.len() as u64);
            }
            for b in 0..210 {
                prop_assert_eq!(map.get(b), model.get(&b).copied());
            }
            let mut prev: Option<(u64, Extent)> = None;
            for (&s, &e) in &map.extents {
                if let Some((ps, pe)) = prev {
                    prop_assert!(ps + pe.len <= s);
                    prop_assert!(!(ps + pe.len == s && pe.owner == e.owner && pe.usage == e.usage), "unmerged");
                }
                prev = Some((s, e));
            }
            let runs: u64 = map.runs_in(50, 150).iter().map(|r| r.1).sum();
            prop_assert_eq!(runs, model.keys().filter(|&&b| (50..150).contains(&b)).count() as u64);
        }
    }

    #[test]
    fn a_contiguous_file_is_one_extent() {
        let mut map = BlockMap::new();
        for b in 1000..5096 {
            map.insert(b, Use::Data, 18).unwrap();
        }
        assert_eq!(map.extent_count(), 1);
        assert_eq!(map.remove_owner(18).len(), 4096);
        assert!(map.is_empty());
    }
}
