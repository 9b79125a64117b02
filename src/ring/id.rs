//! Ids on the 64-bit ring and clockwise intervals between them.

use std::fmt;

use xxhash_rust::xxh3::xxh3_64;

/// A point on the ring: 0 ..= u64::MAX, where u64::MAX is followed by 0.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Id(pub u64);

/// The id of a key: xxh3-64 of its bytes.
pub fn key_id(key: &[u8]) -> Id {
    Id(xxh3_64(key))
}

/// The id of a node: xxh3-64 of its advertised address, so a node restarted at the same
/// address lands at the same place and finds its data still in its range.
pub fn node_id(addr: &str) -> Id {
    Id(xxh3_64(addr.as_bytes()))
}

impl Id {
    /// Parses the 16-hex-digit form that `Display` writes.
    pub fn from_hex(s: &str) -> Option<Id> {
        if s.len() != 16 {
            return None;
        }
        u64::from_str_radix(s, 16).ok().map(Id)
    }

    /// Clockwise distance from `self` to `other`: how far one walks from self to reach other.
    /// The modulus is the size of the id space (2^64), never the largest node id.
    pub fn distance_to(self, other: Id) -> u64 {
        other.0.wrapping_sub(self.0)
    }

    /// True if `self` lies strictly between `a` and `b` going clockwise. With a == b the open
    /// interval is the whole ring except that one point (a ring of one "sees" every other id
    /// between itself and itself).
    pub fn strictly_between(self, a: Id, b: Id) -> bool {
        let d = a.distance_to(self);
        d != 0 && (a == b || d < a.distance_to(b))
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Id({:016x})", self.0)
    }
}

/// The clockwise half-open interval (after, upto]: what a node owns is
/// (predecessor, itself]. With after == upto it is the whole ring (a ring of one owns all).
///
/// ```
/// use sdht::ring::{Id, Interval};
/// // An interval that wraps past the top of the id space.
/// let owned = Interval::new(Id(u64::MAX - 1), Id(2));
/// assert!(owned.contains(Id(u64::MAX)) && owned.contains(Id(0)) && owned.contains(Id(2)));
/// assert!(!owned.contains(Id(u64::MAX - 1)) && !owned.contains(Id(3)));
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Interval {
    pub after: Id,
    pub upto: Id,
}

impl Interval {
    pub fn new(after: Id, upto: Id) -> Interval {
        Interval { after, upto }
    }

    pub fn contains(&self, x: Id) -> bool {
        let d = self.after.distance_to(x);
        self.after == self.upto || (d != 0 && d <= self.after.distance_to(self.upto))
    }
}

/// The owner of `key` among `ids` (sorted ascending, no duplicates): the first id clockwise
/// at or after the key. The global view, used to check what the distributed protocol computes.
///
/// ```
/// use sdht::ring::{owner_of, Id};
/// let ids = [Id(10), Id(20), Id(30)];
/// assert_eq!(owner_of(&ids, Id(15)), Some(Id(20)));
/// assert_eq!(owner_of(&ids, Id(20)), Some(Id(20)));
/// assert_eq!(owner_of(&ids, Id(31)), Some(Id(10)), "past the last node: wraps to the first");
/// ```
pub fn owner_of(ids: &[Id], key: Id) -> Option<Id> {
    let i = ids.partition_point(|id| *id < key);
    ids.get(i).or_else(|| ids.first()).copied()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn interval_wraps_around_zero() {
        let i = Interval::new(Id(u64::MAX - 5), Id(3));
        assert!(i.contains(Id(u64::MAX)));
        assert!(i.contains(Id(0)));
        assert!(i.contains(Id(3)));
        assert!(!i.contains(Id(4)));
        assert!(!i.contains(Id(u64::MAX - 5)));
        assert!(i.contains(Id(u64::MAX - 4)));
    }

    #[test]
    fn ring_of_one_owns_everything() {
        let i = Interval::new(Id(42), Id(42));
        for x in [0, 41, 42, 43, u64::MAX] {
            assert!(i.contains(Id(x)));
        }
        assert!(Id(7).strictly_between(Id(42), Id(42)));
        assert!(!Id(42).strictly_between(Id(42), Id(42)));
    }

    #[test]
    fn distance_uses_the_whole_id_space() {
        // The original project measured wrap-around with the last node's id; the distance from
        // near the top to near zero must be small, not huge.
        assert_eq!(Id(u64::MAX - 1).distance_to(Id(1)), 3);
        assert_eq!(Id(5).distance_to(Id(5)), 0);
    }

    #[test]
    fn hex_round_trip() {
        let id = node_id("127.0.0.1:8000");
        assert_eq!(Id::from_hex(&id.to_string()), Some(id));
        assert_eq!(id.to_string().len(), 16);
        assert_eq!(Id::from_hex("xyz"), None);
    }

    proptest! {
        #[test]
        fn contains_matches_a_clockwise_walk(a: u64, b: u64, x: u64) {
            // (a, b] holds x iff walking clockwise from a reaches x no later than b.
            let i = Interval::new(Id(a), Id(b));
            let expect = if a == b { true } else {
                let dx = x.wrapping_sub(a);
                dx != 0 && dx <= b.wrapping_sub(a)
            };
            prop_assert_eq!(i.contains(Id(x)), expect);
        }

        #[test]
        fn interval_and_its_complement_partition_the_ring(a: u64, b: u64, x: u64) {
            prop_assume!(a != b);
            let i = Interval::new(Id(a), Id(b));
            let rest = Interval::new(Id(b), Id(a));
            prop_assert!(i.contains(Id(x)) != rest.contains(Id(x)));
        }

        #[test]
        fn every_key_has_exactly_one_owner(ids in proptest::collection::btree_set(any::<u64>(), 1..40), key: u64) {
            // Intervals (pred, n] of all nodes partition the ring: exactly one contains the key,
            // and it is the one owner_of names (first and last node, wrap-around included).
            let ids: Vec<Id> = ids.into_iter().map(Id).collect();
            let owners: Vec<Id> = (0..ids.len())
                .filter(|&i| {
                    let pred = ids[(i + ids.len() - 1) % ids.len()];
                    Interval::new(pred, ids[i]).contains(Id(key))
                })
                .map(|i| ids[i])
                .collect();
            prop_assert_eq!(owners.len(), 1);
            prop_assert_eq!(Some(owners[0]), owner_of(&ids, Id(key)));
        }

        #[test]
        fn strictly_between_is_the_interval_less_its_end(a: u64, b: u64, x: u64) {
            let open = Id(x).strictly_between(Id(a), Id(b));
            let closed = Interval::new(Id(a), Id(b)).contains(Id(x));
            prop_assert_eq!(open, closed && (x != b || a == b) && x != a);
        }
    }
}
