//! Balanced ids: where a joining node should sit so that it takes half of the most loaded
//! piece of a range, without virtual nodes (one ring position per node).
//!
//! A node asked for an offer splits its own range (predecessor, itself] at the points it
//! offered recently, picks the piece holding the most keys (the widest among equals) and
//! offers that piece's median key id, or its midpoint when it holds fewer than two keys. The
//! remembered offers break ties between joiners asking at once: each gets a different point,
//! the median of what is left (so a seed alone with 63 joiners asking together hands out 63
//! points that cut the ring into 64 even pieces). A joiner asks a few nodes and keeps the
//! offer with the most keys, then the widest piece ([`better`]).
//!
//! Must not touch: I/O, clocks, randomness, storage. The keys of the range come in as a sorted
//! list, time as `now`. Left out: moving nodes after they joined (no re-balancing of a ring
//! whose load shifts later).

use std::collections::VecDeque;

use super::{Id, Interval, Millis};

/// Most offers a node remembers: enough for a thousand nodes joining through it at once; each
/// entry is 16 bytes.
pub const MAX_OFFERS: usize = 1024;
/// How long an offer is remembered: a joiner that took it has joined well before.
pub const OFFER_TTL: Millis = 30_000;

/// What a node offers a joiner: an id and the load of the piece it splits.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Offer {
    pub id: Id,
    /// Keys in the piece the id splits (about twice what the joiner takes).
    pub keys: u64,
    /// Width of that piece on the ring.
    pub width: u64,
}

/// The id a joiner takes at an offered point: the point with its low 32 bits replaced by those
/// of the joiner's own hash (`mine`). Two nodes whose views of their ranges overlap for a
/// moment may offer the same point to two joiners; this keeps their ids apart (they collide
/// with odds of 2^-32), and moves the point by less than 2^32 of the ring's 2^64.
pub fn personal(point: Id, mine: Id) -> Id {
    Id((point.0 & !0xFFFF_FFFF) | (mine.0 & 0xFFFF_FFFF))
}

/// True if `a` splits a more loaded piece than `b`: more keys, then wider.
pub fn better(a: &Offer, b: &Offer) -> bool {
    (a.keys, a.width) > (b.keys, b.width)
}

/// The offers a node made recently, oldest first.
#[derive(Clone, Debug, Default)]
pub struct Offers {
    recent: VecDeque<(Id, Millis)>,
}

/// Clockwise width of (after, upto]; the whole ring (after == upto) is 2^64, saturated.
fn width(i: Interval) -> u64 {
    match i.after.distance_to(i.upto) {
        0 => u64::MAX,
        d => d,
    }
}

/// The middle of (after, upto].
fn midpoint(i: Interval) -> Id {
    Id(i.after.0.wrapping_add(width(i) / 2))
}

impl Offers {
    /// Offers a point of `owned` (this node's range) to a joiner. `keys`: the ids of the keys
    /// stored in `owned`, in clockwise order from `owned.after`. `take`: the joiner takes it,
    /// remember it (a joiner first compares offers from several nodes without taking any, so
    /// that points it did not take do not cut the ranges of the nodes it asked). None when the
    /// range has no room left (every piece is a single id).
    pub fn offer(&mut self, now: Millis, owned: Interval, keys: &[Id], take: bool) -> Option<Offer> {
        self.recent.retain(|(_, at)| now.saturating_sub(*at) < OFFER_TTL);
        let mut cuts: Vec<Id> =
            self.recent.iter().map(|(id, _)| *id).filter(|id| owned.contains(*id)).collect();
        cuts.retain(|c| *c != owned.upto);
        cuts.sort_by_key(|c| owned.after.distance_to(*c));
        cuts.dedup();
        let mut pieces = Vec::with_capacity(cuts.len() + 1);
        let mut after = owned.after;
        for c in cuts.into_iter().chain(std::iter::once(owned.upto)) {
            pieces.push(Interval::new(after, c));
            after = c;
        }
        let best = pieces
            .iter()
            .map(|p| {
                let inside: Vec<Id> =
                    keys.iter().copied().filter(|k| p.contains(*k) && *k != p.upto).collect();
                let id = match inside.len() {
                    0 | 1 => midpoint(*p),
                    n => inside[(n - 1) / 2],
                };
                (Offer { id, keys: inside.len() as u64, width: width(*p) }, *p)
            })
            // A piece one id wide has no room for a node.
            .filter(|(o, p)| o.id.strictly_between(p.after, p.upto))
            .map(|(o, _)| o)
            .reduce(|a, b| if better(&b, &a) { b } else { a })?;
        if !take {
            return Some(best);
        }
        if self.recent.len() >= MAX_OFFERS {
            self.recent.pop_front();
        }
        self.recent.push_back((best.id, now));
        Some(best)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_alone_cuts_the_ring_evenly_for_joiners_asking_at_once() {
        let me = Id(12345);
        let mut offers = Offers::default();
        let mut ids = vec![me];
        for _ in 0..63 {
            ids.push(offers.offer(0, Interval::new(me, me), &[], true).unwrap().id);
        }
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 64, "every joiner got its own point");
        let widths: Vec<u64> = (0..64).map(|i| ids[(i + 63) % 64].distance_to(ids[i])).collect();
        let (max, min) = (*widths.iter().max().unwrap(), *widths.iter().min().unwrap());
        assert!(max as f64 / (min as f64) < 1.01, "64 even pieces: {max} vs {min}");
    }

    #[test]
    fn the_median_key_splits_a_skewed_range() {
        let owned = Interval::new(Id(0), Id(1000));
        // Keys crowd the start of the range: the offer follows them, not the midpoint.
        let keys: Vec<Id> = (1..=100).map(Id).collect();
        let o = Offers::default().offer(0, owned, &keys, true).unwrap();
        assert_eq!(o.id, Id(50));
        assert_eq!(o.keys, 100);
    }

    #[test]
    fn an_offer_not_taken_is_not_remembered() {
        let owned = Interval::new(Id(0), Id(1 << 40));
        let mut offers = Offers::default();
        let peek = offers.offer(0, owned, &[], false).unwrap();
        assert_eq!(offers.offer(1, owned, &[], true).unwrap(), peek);
        assert_ne!(offers.offer(2, owned, &[], true).unwrap(), peek);
    }

    #[test]
    fn offers_expire_and_are_bounded() {
        let owned = Interval::new(Id(0), Id(1 << 40));
        let mut offers = Offers::default();
        let first = offers.offer(0, owned, &[], true).unwrap().id;
        assert_ne!(
            offers.offer(1, owned, &[], true).unwrap().id,
            first,
            "a second joiner gets another point"
        );
        assert_eq!(
            offers.offer(OFFER_TTL + 2, owned, &[], true).unwrap().id,
            first,
            "expired offers are forgotten"
        );
        for t in 0..2 * MAX_OFFERS as u64 {
            offers.offer(OFFER_TTL + 3 + t, owned, &[], true);
        }
        assert!(offers.recent.len() <= MAX_OFFERS);
    }
}
