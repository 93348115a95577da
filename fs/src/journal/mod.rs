//! Reading a GFS2 journal: where its blocks are, where its head is, and
//! how to replay it.
//!
//! A journal is a regular file used as a circular log of `jd_blocks`
//! blocks. Each commit ends with a log header; the *head* is the last
//! header written, found by scanning for the highest sequence number. A
//! journal is clean when its head has the UNMOUNT flag. Otherwise the blocks
//! from the head's `lh_tail` up to the head hold descriptors and copies of
//! blocks that must be written to their home locations (replayed) unless a
//! later revoke cancels them.
//!
//! - [`map`]: the journal file's block list (must have no holes).
//! - [`head`]: finding the head.
//! - [`replay`]: planning a replay (pure) and applying it.

pub mod head;
pub mod map;
pub mod replay;
pub mod writer;

pub use head::{find_head, Head};
pub use map::JournalMap;
pub use replay::{apply_replay, plan_replay, ReplayPlan, ReplayWrite};
pub use writer::{Batch, LogWriter};
