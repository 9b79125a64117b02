//! The client's belief of who owns what: ring ids of the nodes it has heard of, each with its
//! address. A key belongs to the first cached node at or clockwise after the key's id, which is
//! the ring's own rule, so a cache holding every node answers exactly as the ring does.
//!
//! Owns: learning from answers (`learn`), forgetting unreachable nodes (`forget`) and taking a
//! whole `/ring` walk (`replace`). Must not touch: the network; it is a plain map, and a wrong
//! belief costs hops, never a wrong answer (the node asked routes by its own view). Left out:
//! ages and expiry (an entry is corrected by the next answer that contradicts it).

use std::collections::BTreeMap;
use std::ops::Bound::{Excluded, Included, Unbounded};

/// Most nodes remembered. A larger ring still works: a forgotten node's range falls to the
/// next cached node, which forwards (hops, not errors). 4096 addresses are a few hundred KiB,
/// and as many nodes as one `/ring` walk lists.
pub const MAX_CACHED_NODES: usize = 4096;

/// Ring id -> node address, for the nodes this client has heard of.
#[derive(Debug, Default, Clone)]
pub struct OwnerCache {
    by_id: BTreeMap<u64, String>,
}

impl OwnerCache {
    /// The node believed to own `key`: the first cached id at or after it, wrapping around.
    pub fn owner_of(&self, key: u64) -> Option<(u64, &str)> {
        self.by_id.range(key..).next().or_else(|| self.by_id.iter().next()).map(|(id, a)| (*id, a.as_str()))
    }

    /// True if learning (`key`, `owner_id`, `owner`) would change nothing: the cheap check made
    /// under a read lock before taking the write lock.
    pub fn agrees(&self, key: u64, owner_id: u64, owner: &str) -> bool {
        self.owner_of(key) == Some((owner_id, owner))
    }

    /// An answer said: `owner`, whose id is `owner_id`, owns `key`. So no node sits in
    /// [key, owner_id) clockwise (it would own the key instead): cached ones there have left or
    /// never were; and the address now has this id only.
    pub fn learn(&mut self, key: u64, owner_id: u64, owner: &str) {
        let gone: Vec<u64> = if key <= owner_id {
            self.by_id.range((Included(key), Excluded(owner_id))).map(|(id, _)| *id).collect()
        } else {
            let after = self.by_id.range((Included(key), Unbounded));
            after.chain(self.by_id.range(..owner_id)).map(|(id, _)| *id).collect()
        };
        for id in gone {
            self.by_id.remove(&id);
        }
        self.by_id.retain(|id, a| *id == owner_id || a != owner);
        self.by_id.insert(owner_id, owner.to_string());
        self.bound(owner_id);
    }

    /// `addr` did not answer: believe nothing of it until an answer names it again.
    pub fn forget(&mut self, addr: &str) {
        self.by_id.retain(|_, a| a != addr);
    }

    /// Replaces everything with a complete `/ring` walk.
    pub fn replace(&mut self, nodes: impl IntoIterator<Item = (u64, String)>) {
        self.by_id = nodes.into_iter().take(MAX_CACHED_NODES).collect();
    }

    /// Every cached address, in id order.
    pub fn addrs(&self) -> impl Iterator<Item = &str> {
        self.by_id.values().map(String::as_str)
    }

    /// Number of cached nodes.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// True if no node is cached.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Keeps the cache within `MAX_CACHED_NODES` by dropping the node clockwise after `keep`
    /// (any choice is correct: forgetting a node costs hops only).
    fn bound(&mut self, keep: u64) {
        while self.by_id.len() > MAX_CACHED_NODES {
            let next =
                self.by_id.range((Excluded(keep), Unbounded)).next().or_else(|| self.by_id.iter().next());
            let Some((&id, _)) = next else { return };
            self.by_id.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(nodes: &[(u64, &str)]) -> OwnerCache {
        let mut c = OwnerCache::default();
        c.replace(nodes.iter().map(|(id, a)| (*id, a.to_string())));
        c
    }

    #[test]
    fn a_key_belongs_to_the_first_node_at_or_after_it_wrapping() {
        let c = cache(&[(100, "a"), (200, "b"), (300, "c")]);
        assert_eq!(c.owner_of(100), Some((100, "a")));
        assert_eq!(c.owner_of(101), Some((200, "b")));
        assert_eq!(c.owner_of(300), Some((300, "c")));
        assert_eq!(c.owner_of(301), Some((100, "a")));
        assert_eq!(c.owner_of(5), Some((100, "a")));
        assert_eq!(OwnerCache::default().owner_of(5), None);
    }

    #[test]
    fn a_join_is_learnt_from_one_answer() {
        let mut c = cache(&[(100, "a"), (200, "b"), (300, "c")]);
        // "n" joined at 150: keys in (100, 150] are its own now.
        c.learn(120, 150, "n");
        assert_eq!(c.owner_of(101), Some((150, "n")));
        assert_eq!(c.owner_of(150), Some((150, "n")));
        assert_eq!(c.owner_of(151), Some((200, "b")));
        assert_eq!(c.len(), 4);
    }

    #[test]
    fn a_leave_is_learnt_from_one_answer_even_across_zero() {
        let mut c = cache(&[(100, "a"), (200, "b"), (u64::MAX - 5, "c")]);
        // "c" left: a key just before it is now owned by "a", across the top of the id space.
        c.learn(u64::MAX - 10, 100, "a");
        assert_eq!(c.owner_of(u64::MAX - 5), Some((100, "a")));
        assert_eq!(c.owner_of(0), Some((100, "a")));
        assert_eq!(c.owner_of(150), Some((200, "b")));
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn an_address_that_moved_keeps_only_its_new_id() {
        let mut c = cache(&[(100, "a"), (200, "b")]);
        c.learn(250, 260, "a");
        assert_eq!(c.addrs().collect::<Vec<_>>(), ["b", "a"]);
        assert!(c.agrees(250, 260, "a"));
        assert!(!c.agrees(50, 100, "a"));
    }

    #[test]
    fn forgetting_a_node_hands_its_range_to_the_next() {
        let mut c = cache(&[(100, "a"), (200, "b")]);
        c.forget("b");
        assert_eq!(c.owner_of(150), Some((100, "a")));
    }

    #[test]
    fn the_cache_stays_bounded() {
        let mut c = OwnerCache::default();
        for i in 0..(MAX_CACHED_NODES as u64 + 10) {
            c.learn(i * 1000, i * 1000 + 1, &format!("n{i}"));
        }
        assert_eq!(c.len(), MAX_CACHED_NODES);
        let last = MAX_CACHED_NODES as u64 + 9;
        assert_eq!(c.owner_of(last * 1000), Some((last * 1000 + 1, format!("n{last}").as_str())));
    }
}
