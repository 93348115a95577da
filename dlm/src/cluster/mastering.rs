//! Which node masters a resource: weighted rendezvous hashing of the resource name
//! over the members (docs/dlm.md, "Mastering").
//!
//! Each member with weight w > 0 scores a name by `-w / ln(u)`, where u in (0, 1) comes
//! from xxh3(name) seeded by the node id; the highest score masters it (ties: lower
//! id). Every node computes the same answer from the same member list, no directory
//! is needed, a node's share is proportional to its weight (one node with all the
//! weight is a lock server), and when a member leaves only the resources it
//! mastered move.
//!
//! Invariants: the result is a member with weight > 0, and depends only on the name
//! and the (id, weight) pairs, not on their order.

use xxhash_rust::xxh3::xxh3_64_with_seed;

/// A member as mastering sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    /// Node id.
    pub id: u32,
    /// Share of resources.
    pub weight: u32,
}

/// The members of one epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Membership {
    /// Increases with every membership change; carried by every peer message.
    pub epoch: u64,
    members: Vec<Member>,
}

impl Membership {
    /// The membership of `epoch`; members are kept sorted by id.
    /// Returns `None` if no member has a weight above 0.
    pub fn new(epoch: u64, mut members: Vec<Member>) -> Option<Membership> {
        members.sort_by_key(|m| m.id);
        members.dedup_by_key(|m| m.id);
        members.iter().any(|m| m.weight > 0).then_some(Membership { epoch, members })
    }

    /// The members, sorted by id.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// Whether `id` is a member.
    pub fn contains(&self, id: u32) -> bool {
        self.members.iter().any(|m| m.id == id)
    }

    /// The master of the resource `name`.
    pub fn master_of(&self, name: &[u8]) -> u32 {
        let mut best: Option<(f64, u32)> = None;
        for member in self.members.iter().filter(|m| m.weight > 0) {
            let hash = xxh3_64_with_seed(name, u64::from(member.id));
            // 53 high bits -> u in (0, 1), never 0 or 1.
            let unit = ((hash >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
            let score = -f64::from(member.weight) / unit.ln();
            if best.is_none_or(|(s, _)| score > s) {
                best = Some((score, member.id));
            }
        }
        best.expect("a membership has a member with weight").1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(weights: &[(u32, u32)]) -> Membership {
        Membership::new(1, weights.iter().map(|&(id, weight)| Member { id, weight }).collect()).unwrap()
    }

    #[test]
    fn equal_weights_spread_the_load() {
        let m = members(&[(1, 1), (2, 1), (3, 1)]);
        let mut counts = [0usize; 4];
        for i in 0..3000 {
            counts[m.master_of(format!("inode {i}").as_bytes()) as usize] += 1;
        }
        for id in 1..=3 {
            assert!((800..1200).contains(&counts[id]), "{counts:?}");
        }
    }

    #[test]
    fn all_the_weight_on_one_node_makes_a_lock_server() {
        let m = members(&[(1, 0), (2, 5), (3, 0)]);
        assert!((0..500).all(|i| m.master_of(format!("r{i}").as_bytes()) == 2));
    }

    #[test]
    fn order_does_not_matter_and_a_departure_moves_only_its_resources() {
        let a = members(&[(3, 1), (1, 1), (2, 1)]);
        let b = members(&[(1, 1), (2, 1), (3, 1)]);
        let without_3 = members(&[(1, 1), (2, 1)]);
        for i in 0..1000 {
            let name = format!("r{i}");
            let master = a.master_of(name.as_bytes());
            assert_eq!(master, b.master_of(name.as_bytes()));
            if master != 3 {
                assert_eq!(without_3.master_of(name.as_bytes()), master);
            }
        }
    }

    #[test]
    fn no_weight_no_membership() {
        assert!(Membership::new(1, vec![Member { id: 1, weight: 0 }]).is_none());
    }
}
