//! One node's view of the ring at one moment, as the membership state machine publishes it,
//! and every decision a request makes from it: where a key goes next, what this node owns,
//! where a key's replicas live, whether a write may be acknowledged.
//!
//! A `View` is immutable: the membership task builds a new one after each step and the request
//! path reads whichever is current, so no request ever waits for membership work.

use super::{node_id, Id, Interval};

/// A ring member as peers know it: its advertised address and the id derived from it.
#[derive(Clone, PartialEq, Eq, Debug, Hash, PartialOrd, Ord)]
pub struct Peer {
    pub id: Id,
    pub addr: String,
}

impl Peer {
    pub fn new(addr: impl Into<String>) -> Peer {
        let addr = addr.into();
        Peer { id: node_id(&addr), addr }
    }

    /// True if `id` is the id this address hashes to: a peer claiming another id is lying.
    pub fn is_consistent(&self) -> bool {
        node_id(&self.addr) == self.id
    }
}

/// Where a request for a key goes next.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Route {
    /// This node owns the key.
    Local,
    /// Clockwise to the successor. `addressed` says the successor owns the key as far as this
    /// node can tell (the key lies in (self, successor]).
    Forward { to: Peer, addressed: bool },
    /// One step back to the predecessor: the sender addressed this node, but a node that joined
    /// in between (and is now this node's predecessor) owns the key. Happens only until the
    /// sender's stabilize learns of the newcomer.
    Back { to: Peer },
}

/// The outcome of `find_successor` at one node.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum FindStep {
    Found(Peer),
    Forward(Peer),
}

/// Where this node stands in the ring.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Standing {
    /// Still looking for its place: owns nothing, forwards nothing.
    Joining,
    /// A ring member.
    Member,
    /// Handed everything to its successor: forwards every request there until it exits.
    Departed,
}

/// A range being copied to another node: writes to it are also sent there ("write-through")
/// until ownership switches.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct WriteThrough {
    /// The copy job; a failed write-through is reported against it.
    pub job: u64,
    pub range: Interval,
    pub to: Peer,
}

/// An immutable snapshot of one node's ring state.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct View {
    pub me: Peer,
    pub pred: Option<Peer>,
    /// The successor list, nearest first, never empty: `[me]` when alone.
    pub succs: Vec<Peer>,
    pub standing: Standing,
    /// Bumped at every ownership switch; writes are counted per epoch so a switch can wait for
    /// the writes begun under the old owner without blocking anything new.
    pub epoch: u64,
    pub write_through: Option<WriteThrough>,
    /// Copies of each key (R).
    pub replicas: usize,
    /// Alone after having had peers that were lost, not left: cut off by a partition or by
    /// their crash. Such a node refuses writes (it cannot make a quorum).
    pub cut_off: bool,
    /// Peers this node lost and has not heard from since: while there are any, the ring may
    /// be split, and tombstones are kept (a side that purged a delete could otherwise meet a
    /// side still holding the value).
    pub unreachable: usize,
}

impl View {
    /// A view of a node that is not (yet) serving.
    pub fn joining(me: Peer, replicas: usize) -> View {
        View {
            succs: vec![me.clone()],
            me,
            pred: None,
            standing: Standing::Joining,
            epoch: 0,
            write_through: None,
            replicas,
            cut_off: false,
            unreachable: 0,
        }
    }

    pub fn succ(&self) -> &Peer {
        &self.succs[0]
    }

    pub fn is_alone(&self) -> bool {
        self.succs[0] == self.me
    }

    /// The range this node answers for, if it knows it: (pred, me], or the whole ring when alone.
    pub fn owned(&self) -> Option<Interval> {
        if self.standing != Standing::Member {
            return None;
        }
        match &self.pred {
            Some(p) => Some(Interval::new(p.id, self.me.id)),
            None if self.is_alone() => Some(Interval::new(self.me.id, self.me.id)),
            None => None,
        }
    }

    /// Up to `n` distinct other nodes that follow this one: where its keys' replicas live.
    pub fn replica_peers(&self, n: usize) -> Vec<Peer> {
        let mut out: Vec<Peer> = Vec::new();
        for p in &self.succs {
            if *p != self.me && !out.contains(p) && out.len() < n {
                out.push(p.clone());
            }
        }
        out
    }

    /// Durable copies a write needs before it is acknowledged: a majority of R, W =
    /// floor(R/2)+1, but never more than the ring has nodes as far as this node knows, so a
    /// ring started alone accepts writes until others join. None: refuse writes (cut off).
    pub fn write_quorum(&self) -> Option<usize> {
        if self.cut_off {
            return None;
        }
        let w = self.replicas / 2 + 1;
        Some(w.min(1 + self.replica_peers(self.replicas.saturating_sub(1)).len()))
    }

    /// The write-through target for a key, while its range is being copied away.
    pub fn write_through_for(&self, key: Id) -> Option<&WriteThrough> {
        self.write_through.as_ref().filter(|w| w.range.contains(key))
    }

    /// The routing decision for a key. `addressed`: the sender believed this node owns it.
    pub fn route(&self, key: Id, addressed: bool) -> Route {
        if self.standing == Standing::Departed {
            return Route::Forward { to: self.succs[0].clone(), addressed: true };
        }
        match self.owned() {
            Some(range) if range.contains(key) => return Route::Local,
            // A newcomer whose predecessor has not introduced itself yet: trust the sender,
            // whose successor pointer says the key is ours.
            None if addressed && self.standing == Standing::Member => return Route::Local,
            _ => {}
        }
        if Interval::new(self.me.id, self.succs[0].id).contains(key) {
            return Route::Forward { to: self.succs[0].clone(), addressed: true };
        }
        match (&self.pred, addressed) {
            (Some(p), true) => Route::Back { to: p.clone() },
            _ => Route::Forward { to: self.succs[0].clone(), addressed: false },
        }
    }

    /// Chord's find_successor(id) at this node: the node that owns `id`, or where to ask next.
    pub fn find_successor(&self, id: Id) -> FindStep {
        if self.standing == Standing::Member {
            if let Some(range) = self.owned() {
                if range.contains(id) {
                    return FindStep::Found(self.me.clone());
                }
            }
            if Interval::new(self.me.id, self.succs[0].id).contains(id) {
                return FindStep::Found(self.succs[0].clone());
            }
        }
        FindStep::Forward(self.succs[0].clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(id: u64) -> Peer {
        Peer { id: Id(id), addr: format!("n{id}") }
    }

    fn member(me: u64, pred: Option<u64>, succs: &[u64]) -> View {
        View {
            standing: Standing::Member,
            pred: pred.map(peer),
            succs: succs.iter().map(|s| peer(*s)).collect(),
            ..View::joining(peer(me), 3)
        }
    }

    #[test]
    fn ring_of_one_owns_and_finds_everything() {
        let v = member(10, None, &[10]);
        for k in [0, 10, 11, u64::MAX] {
            assert_eq!(v.route(Id(k), false), Route::Local);
            assert_eq!(v.find_successor(Id(k)), FindStep::Found(peer(10)));
        }
        assert_eq!(v.write_quorum(), Some(1), "a ring started alone accepts writes");
    }

    #[test]
    fn newcomer_without_predecessor_forwards_unless_addressed() {
        let v = member(10, None, &[20]);
        assert_eq!(v.route(Id(5), false), Route::Forward { to: peer(20), addressed: false });
        assert_eq!(v.route(Id(5), true), Route::Local);
        assert_eq!(v.route(Id(15), false), Route::Forward { to: peer(20), addressed: true });
    }

    #[test]
    fn addressed_request_for_a_newcomers_range_steps_back() {
        // 30 handed (10, 20] to 20; 10 still points at 30 and addresses it.
        let v = member(30, Some(20), &[10]);
        assert_eq!(v.route(Id(15), true), Route::Back { to: peer(20) });
        assert_eq!(v.route(Id(25), true), Route::Local);
    }

    #[test]
    fn departed_and_joining_nodes_own_nothing() {
        let mut v = member(10, Some(5), &[20]);
        v.standing = Standing::Departed;
        assert_eq!(v.route(Id(7), false), Route::Forward { to: peer(20), addressed: true });
        v.standing = Standing::Joining;
        assert_eq!(v.owned(), None);
        assert_eq!(v.find_successor(Id(7)), FindStep::Forward(peer(20)));
    }

    #[test]
    fn quorum_is_a_majority_of_the_copies_the_ring_can_hold() {
        assert_eq!(member(10, Some(30), &[20, 30]).write_quorum(), Some(2));
        assert_eq!(member(10, Some(20), &[20]).write_quorum(), Some(2));
        let mut cut = member(10, None, &[10]);
        cut.cut_off = true;
        assert_eq!(cut.write_quorum(), None);
        let mut one = member(10, Some(20), &[20, 30]);
        one.replicas = 1;
        assert_eq!(one.write_quorum(), Some(1));
        one.replicas = 5;
        assert_eq!(one.write_quorum(), Some(3));
    }
}
