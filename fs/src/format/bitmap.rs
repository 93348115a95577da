//! Resource group bitmaps: 2 bits per block, 4 blocks per byte, the block
//! with the lowest number in the least significant pair.

use super::error::{bad_field, Result};

/// The allocation state of a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum BlockState {
    Free = 0,
    /// Data, or metadata that is not a dinode.
    Used = 1,
    /// A dinode whose link count reached zero but which is not yet freed.
    Unlinked = 2,
    Dinode = 3,
}

impl BlockState {
    pub const ALL: [BlockState; 4] = [
        BlockState::Free,
        BlockState::Used,
        BlockState::Unlinked,
        BlockState::Dinode,
    ];

    pub fn from_bits(bits: u8) -> BlockState {
        BlockState::ALL[(bits & 3) as usize]
    }

    pub fn name(self) -> &'static str {
        match self {
            BlockState::Free => "free",
            BlockState::Used => "data",
            BlockState::Unlinked => "unlinked",
            BlockState::Dinode => "inode",
        }
    }
}

/// Blocks mapped per bitmap byte.
pub const BLOCKS_PER_BYTE: u32 = 4;

/// The state of block `index` (relative to the group's first data block).
///
/// Panics if `index` is outside the bitmap: callers index by block numbers
/// they checked against the rindex entry.
pub fn get(bitmap: &[u8], index: u32) -> BlockState {
    let byte = bitmap[(index / BLOCKS_PER_BYTE) as usize];
    BlockState::from_bits(byte >> (2 * (index % BLOCKS_PER_BYTE)))
}

/// Sets the state of block `index`.
pub fn set(bitmap: &mut [u8], index: u32, state: BlockState) {
    let byte = &mut bitmap[(index / BLOCKS_PER_BYTE) as usize];
    let shift = 2 * (index % BLOCKS_PER_BYTE);
    *byte = (*byte & !(3 << shift)) | ((state as u8) << shift);
}

/// Counts the blocks in each state among the first `blocks` of the bitmap.
pub fn count(bitmap: &[u8], blocks: u32) -> [u32; 4] {
    let mut counts = [0u32; 4];
    for i in 0..blocks {
        counts[get(bitmap, i) as usize] += 1;
    }
    counts
}

/// The first block at or after `start` (wrapping once to 0) in `state`,
/// among the first `blocks`.
pub fn find(bitmap: &[u8], blocks: u32, start: u32, state: BlockState) -> Option<u32> {
    let start = if start >= blocks { 0 } else { start };
    // Whole bytes whose four pairs all differ from `state` are skipped fast.
    let pattern = (state as u8) * 0b0101_0101;
    let scan = |from: u32, to: u32| -> Option<u32> {
        let mut i = from;
        while i < to {
            if i.is_multiple_of(BLOCKS_PER_BYTE) && i + BLOCKS_PER_BYTE <= to {
                let byte = bitmap[(i / BLOCKS_PER_BYTE) as usize];
                // A pair equals `state` iff the xor pair is 00.
                let x = byte ^ pattern;
                let any_match = (0..4).any(|k| (x >> (2 * k)) & 3 == 0);
                if !any_match {
                    i += BLOCKS_PER_BYTE;
                    continue;
                }
            }
            if get(bitmap, i) == state {
                return Some(i);
            }
            i += 1;
        }
        None
    };
    scan(start, blocks).or_else(|| scan(0, start))
}

/// Checks that no bit beyond the first `blocks` blocks is set, as the format
/// requires for the tail of the last bitmap byte.
pub fn check_tail(bitmap: &[u8], blocks: u32) -> Result<()> {
    for i in blocks..(bitmap.len() as u32 * BLOCKS_PER_BYTE) {
        if get(bitmap, i) != BlockState::Free {
            return bad_field("resource group bitmap", "bit beyond ri_data", i, "set");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn least_significant_pair_first() {
        // Observed in a mkfs.gfs2 image: 0x57 = block 0 DINODE, 1..3 USED.
        let bitmap = [0x57u8];
        assert_eq!(get(&bitmap, 0), BlockState::Dinode);
        assert_eq!(get(&bitmap, 1), BlockState::Used);
        assert_eq!(get(&bitmap, 3), BlockState::Used);
        let mut b = [0u8];
        set(&mut b, 0, BlockState::Dinode);
        for i in 1..4 {
            set(&mut b, i, BlockState::Used);
        }
        assert_eq!(b, bitmap);
    }

    proptest! {
        /// set/get/find/count agree with a plain vector of states.
        #[test]
        fn behaves_like_a_state_vector(
            ops in proptest::collection::vec((0u32..64, 0u8..4), 0..100),
            start in 0u32..70,
            want in 0u8..4,
        ) {
            let mut bitmap = [0u8; 16];
            let mut model = [BlockState::Free; 64];
            for (i, s) in ops {
                let s = BlockState::from_bits(s);
                set(&mut bitmap, i, s);
                model[i as usize] = s;
            }
            for i in 0..64 {
                prop_assert_eq!(get(&bitmap, i), model[i as usize]);
            }
            let want = BlockState::from_bits(want);
            let blocks = 61;
            let first = if start >= blocks { 0 } else { start };
            let expect = (0..blocks)
                .map(|k| (first + k) % blocks)
                .find(|&k| model[k as usize] == want);
            prop_assert_eq!(find(&bitmap, blocks, start, want), expect);
            let c = count(&bitmap, blocks);
            prop_assert_eq!(c[want as usize] as usize, model[..blocks as usize].iter().filter(|&&s| s == want).count());
        }
    }
}
