//! The metadata blocks mkfs builds in memory before writing anything.

use std::collections::BTreeMap;

/// Blocks by address. A block not yet written reads as zeros: mkfs only
/// reads blocks it wrote itself (a freshly allocated block is always
/// initialised before use).
#[derive(Clone, Debug, Default)]
pub struct BlockStore {
    bsize: usize,
    blocks: BTreeMap<u64, Box<[u8]>>,
}

impl BlockStore {
    pub fn new(bsize: u32) -> Self {
        BlockStore {
            bsize: bsize as usize,
            blocks: BTreeMap::new(),
        }
    }

    /// The block at `addr`, zero-filled when new.
    pub fn get_mut(&mut self, addr: u64) -> &mut [u8] {
        let bsize = self.bsize;
        self.blocks
            .entry(addr)
            .or_insert_with(|| vec![0; bsize].into_boxed_slice())
    }

    /// The block at `addr` reset to zeros (a newly allocated block).
    pub fn fresh(&mut self, addr: u64) -> &mut [u8] {
        let block = self.get_mut(addr);
        block.fill(0);
        block
    }

    /// A copy of the block at `addr` (zeros if never written).
    pub fn read(&self, addr: u64) -> Vec<u8> {
        self.blocks
            .get(&addr)
            .map_or_else(|| vec![0; self.bsize], |b| b.to_vec())
    }

    /// All blocks, by increasing address.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &[u8])> {
        self.blocks.iter().map(|(&a, b)| (a, &b[..]))
    }

    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }
}
