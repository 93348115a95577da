//! An open directory's listing: a snapshot of its entries with the readdir
//! offsets ("cookies") the kernel resumes from.
//!
//! A cookie is `((hash >> 1) << 32 | rank) + 1`, where `rank` orders the
//! names sharing `hash >> 1` (by hash, then name). It depends only on the
//! name and on the names that collide with it, so it stays stable while the
//! directory changes (except for the rare colliding names coming or going),
//! and — unlike the hash alone — it is unique within a snapshot: the kernel
//! may stop consuming a reply after any entry (a small getdents buffer) and
//! resume at that entry's cookie without skipping the rest of a collision
//! run. Cookies stay below 2^63 (the kernel's offsets are signed) and are
//! never 0 (which means "from the start").
//!
//! Invariant: `entries` is sorted by strictly increasing cookie.

use std::sync::Arc;

use crate::dir::DirEntry;

/// The largest rank inside one collision run (keeps cookies below 2^63).
const MAX_RANK: u64 = u32::MAX as u64 - 1;

#[derive(Clone, Debug)]
pub struct DirStream {
    entries: Arc<Vec<(u64, DirEntry)>>,
}

impl DirStream {
    /// Assigns cookies to a directory's entries (in any order).
    pub fn new(mut list: Vec<DirEntry>) -> DirStream {
        list.sort_by(|a, b| (a.hash, &a.name).cmp(&(b.hash, &b.name)));
        let mut entries: Vec<(u64, DirEntry)> = Vec::with_capacity(list.len());
        let (mut prev_run, mut rank) = (None, 0u64);
        for e in list {
            let run = (e.hash >> 1) as u64;
            rank = if prev_run == Some(run) { (rank + 1).min(MAX_RANK) } else { 0 };
            prev_run = Some(run);
            entries.push(((run << 32 | rank) + 1, e));
        }
        debug_assert!(entries.windows(2).all(|w| w[0].0 < w[1].0), "cookies strictly increase");
        DirStream { entries: Arc::new(entries) }
    }

    /// The entries after `offset` (0 = from the start), with their cookies.
    pub fn after(&self, offset: u64) -> &[(u64, DirEntry)] {
        let start = self.entries.partition_point(|(c, _)| *c <= offset);
        &self.entries[start..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::Inum;
    use proptest::prelude::*;

    fn entry(name: &str, hash: u32) -> DirEntry {
        DirEntry { name: name.as_bytes().to_vec(), inum: Inum { formal_ino: 1, addr: 1 }, de_type: 0, hash }
    }

    /// Lists the whole stream as the kernel does: it consumes at most
    /// `room[k]` entries of each reply, then asks again at the cookie of
    /// the last entry it consumed.
    fn list(stream: &DirStream, room: &[usize]) -> Vec<Vec<u8>> {
        let mut got = Vec::new();
        let mut offset = 0;
        for k in 0.. {
            let batch = stream.after(offset);
            let take = batch.len().min(room[k % room.len()]);
            if take == 0 {
                break;
            }
            offset = batch[take - 1].0;
            got.extend(batch[..take].iter().map(|(_, e)| e.name.clone()));
        }
        got
    }

    #[test]
    fn a_listing_that_stops_inside_a_collision_run_loses_nothing() {
        // Hashes 10 and 11 share hash >> 1, and two names share hash 10.
        let s = DirStream::new(vec![entry("d", 30), entry("a", 10), entry("c", 11), entry("b", 10), entry("z", 4)]);
        for cap in 1..=3 {
            assert_eq!(list(&s, &[cap]), [&b"z"[..], b"a", b"b", b"c", b"d"], "replies of {cap}");
        }
    }

    #[test]
    fn cookies_depend_on_the_name_not_on_the_other_entries() {
        let one = DirStream::new(vec![entry("x", 7), entry("y", 500)]);
        let two = DirStream::new(vec![entry("x", 7), entry("q", 90), entry("y", 500), entry("r", 1 << 31)]);
        let cookie = |s: &DirStream, n: &str| s.after(0).iter().find(|(_, e)| e.name == n.as_bytes()).unwrap().0;
        assert_eq!(cookie(&one, "x"), cookie(&two, "x"));
        assert_eq!(cookie(&one, "y"), cookie(&two, "y"));
        assert!(cookie(&two, "r") < 1 << 63);
        assert_eq!(list(&two, &[1]).len(), 4);
    }

    proptest! {
        /// Any hashes (many collisions), any amounts consumed: every entry
        /// is listed exactly once, in cookie order.
        #[test]
        fn every_entry_is_listed_once(hashes in proptest::collection::vec(prop_oneof![0u32..8, any::<u32>()], 0..40),
                                      room in proptest::collection::vec(1usize..5, 1..4)) {
            let list_in: Vec<DirEntry> = hashes.iter().enumerate().map(|(i, &h)| entry(&format!("n{i}"), h)).collect();
            let s = DirStream::new(list_in.clone());
            let mut want: Vec<Vec<u8>> = list_in.iter().map(|e| e.name.clone()).collect();
            let mut got = list(&s, &room);
            prop_assert_eq!(got.len(), want.len());
            got.sort();
            want.sort();
            prop_assert_eq!(got, want);
        }
    }
}
