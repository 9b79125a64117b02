//! One node's view of the ring and the membership steps that change it.
//!
//! Handoff rule shared by join and leave: the node that gives a range away keeps owning it
//! while the bulk copy runs (writes to the range are also sent on to the receiver), and only
//! then switches ownership in one step. So at every moment exactly one node answers for a key,
//! and it holds the key's newest value.

use super::{node_id, Id, Interval};

/// A ring member as peers know it: its advertised address and the id derived from it.
#[derive(Clone, PartialEq, Eq, Debug, Hash)]
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

/// What the node must do after a membership step.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Action {
    /// Tell `0` that we think we are its predecessor.
    Notify(Peer),
    /// Copy every key in `range` to `to`; call `finish_handoff` (or `abort_handoff`) after.
    StartHandoff { range: Interval, to: Peer },
}

/// Why a range is moving.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum HandoffKind {
    /// To a node that joined as our new predecessor.
    Join,
    /// To our successor, because we leave.
    Leave,
}

#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Handoff {
    pub kind: HandoffKind,
    pub range: Interval,
    pub to: Peer,
}

/// The outcome of `find_successor` at one node.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum FindStep {
    Found(Peer),
    Forward(Peer),
}

#[derive(Clone, Debug)]
pub struct RingState {
    me: Peer,
    pred: Option<Peer>,
    /// The successor list, nearest first, at most `r` long and never empty: `[me]` when alone.
    /// Routing uses only its head; the rest is for repair (and replica placement).
    succs: Vec<Peer>,
    r: usize,
    handoff: Option<Handoff>,
    departed: bool,
}

impl RingState {
    /// A new ring of one.
    pub fn alone(me: Peer) -> RingState {
        RingState { succs: vec![me.clone()], me, pred: None, r: 1, handoff: None, departed: false }
    }

    /// A node that has just learnt its successor from the ring and knows no predecessor yet.
    pub fn joined(me: Peer, succ: Peer) -> RingState {
        if succ == me {
            return RingState::alone(me);
        }
        RingState { me, pred: None, succs: vec![succ], r: 1, handoff: None, departed: false }
    }

    /// Keep up to `r` successors (Zave's r; at least 1).
    pub fn with_list_len(mut self, r: usize) -> RingState {
        self.r = r.max(1);
        self.succs.truncate(self.r);
        self
    }

    pub fn me(&self) -> &Peer {
        &self.me
    }
    pub fn pred(&self) -> Option<&Peer> {
        self.pred.as_ref()
    }
    pub fn succ(&self) -> &Peer {
        &self.succs[0]
    }

    /// The successor list, nearest first (`[me]` when alone).
    pub fn successors(&self) -> &[Peer] {
        &self.succs
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
    pub fn handoff(&self) -> Option<&Handoff> {
        self.handoff.as_ref()
    }
    pub fn departed(&self) -> bool {
        self.departed
    }
    fn is_alone(&self) -> bool {
        self.succs[0] == self.me
    }

    /// The range this node answers for, if it knows it: (pred, me], or the whole ring when alone.
    pub fn owned(&self) -> Option<Interval> {
        if self.departed {
            return None;
        }
        match &self.pred {
            Some(p) => Some(Interval::new(p.id, self.me.id)),
            None if self.is_alone() => Some(Interval::new(self.me.id, self.me.id)),
            None => None,
        }
    }

    /// The routing decision for a key. `addressed`: the sender believed this node owns it.
    pub fn route(&self, key: Id, addressed: bool) -> Route {
        if self.departed {
            return Route::Forward { to: self.succs[0].clone(), addressed: true };
        }
        match self.owned() {
            Some(range) if range.contains(key) => return Route::Local,
            // A newcomer whose predecessor has not introduced itself yet: trust the sender,
            // whose successor pointer says the key is ours.
            None if addressed => return Route::Local,
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
        if !self.departed {
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

    /// The peer to ask for its predecessor in a stabilize round, or None when alone. Alone with
    /// a predecessor (someone joined a ring of one), that predecessor is also our successor.
    pub fn stabilize_target(&mut self) -> Option<Peer> {
        if self.departed {
            return None;
        }
        if self.is_alone() {
            if let Some(p) = self.pred.clone() {
                self.succs = vec![p];
            } else {
                return None;
            }
        }
        Some(self.succs[0].clone())
    }

    /// Stabilize (Zave's rule), after the successor `from` answered with its predecessor `x`
    /// and its own successor list: our list becomes `[from] + its list`, trimmed to r (and
    /// cut where it comes back round to us); if x lies strictly between us and `from`, x
    /// becomes the head. Then notify whoever is our successor now.
    pub fn on_successor_reply(&mut self, from: &Peer, x: Option<Peer>, list: Vec<Peer>) -> Vec<Action> {
        if self.departed || *from != self.succs[0] {
            // The answer is stale: our successor changed while the question was out.
            return Vec::new();
        }
        let mut succs = vec![from.clone()];
        for p in list.into_iter().take_while(|p| *p != self.me) {
            if !succs.contains(&p) {
                succs.push(p);
            }
        }
        if let Some(x) = x {
            if x.id.strictly_between(self.me.id, from.id) && x != self.me {
                succs.retain(|p| *p != x);
                succs.insert(0, x);
            }
        }
        succs.truncate(self.r);
        self.succs = succs;
        if self.is_alone() {
            Vec::new()
        } else {
            vec![Action::Notify(self.succs[0].clone())]
        }
    }

    /// notify(cand): `cand` thinks it is our predecessor. If it lies strictly between the
    /// current predecessor and us (or we have none), start handing it the keys it will own.
    /// The predecessor changes only when that handoff finishes.
    pub fn on_notify(&mut self, cand: &Peer) -> Option<Action> {
        if self.departed || self.handoff.is_some() || *cand == self.me {
            return None;
        }
        let after = match &self.pred {
            Some(p) if !cand.id.strictly_between(p.id, self.me.id) => return None,
            Some(p) => p.id,
            // No predecessor known: everything we hold outside (cand, me] belongs to cand's side.
            None => self.me.id,
        };
        let range = Interval::new(after, cand.id);
        self.handoff = Some(Handoff { kind: HandoffKind::Join, range, to: cand.clone() });
        Some(Action::StartHandoff { range, to: cand.clone() })
    }

    /// Begin a graceful leave: hand everything to the successor. None when alone (the last
    /// node just stops and keeps its data) or when a handoff is already running.
    pub fn begin_leave(&mut self) -> Option<Action> {
        if self.departed || self.handoff.is_some() || self.is_alone() {
            return None;
        }
        // The whole ring, not just (pred, me]: a node may hold strays from before a restart.
        let range = Interval::new(self.me.id, self.me.id);
        self.handoff = Some(Handoff { kind: HandoffKind::Leave, range, to: self.succs[0].clone() });
        Some(Action::StartHandoff { range, to: self.succs[0].clone() })
    }

    /// The copy is complete: switch ownership. For a join the receiver becomes our
    /// predecessor, and we return our old predecessor for it to adopt. For a leave we are
    /// departed from now on and forward everything to the successor.
    pub fn finish_handoff(&mut self) -> Option<Peer> {
        let h = self.handoff.take()?;
        match h.kind {
            HandoffKind::Join => {
                let old = self.pred.replace(h.to.clone());
                if self.is_alone() {
                    self.succs = vec![h.to];
                }
                old
            }
            HandoffKind::Leave => {
                self.departed = true;
                None
            }
        }
    }

    pub fn abort_handoff(&mut self) {
        self.handoff = None;
    }

    /// The node that handed us our range says who precedes us.
    pub fn on_predecessor_hint(&mut self, p: Peer) {
        if self.departed || p == self.me {
            return;
        }
        let adopt = match &self.pred {
            None => true,
            Some(cur) => p.id.strictly_between(cur.id, self.me.id),
        };
        if adopt {
            self.pred = Some(p);
        }
    }

    /// A neighbour leaves: it was linked between `its_pred` and `its_succ`. Whichever of our
    /// pointers named it now skips over it.
    pub fn on_neighbor_leaving(&mut self, leaving: &Peer, its_pred: Option<Peer>, its_succ: Peer) {
        if self.pred.as_ref() == Some(leaving) {
            self.pred = its_pred.filter(|p| *p != self.me);
        }
        if let Some(i) = self.succs.iter().position(|p| p == leaving) {
            self.succs.remove(i);
            if i == 0 && its_succ != self.me && !self.succs.contains(&its_succ) {
                self.succs.insert(0, its_succ);
            }
        }
        if self.succs.is_empty() {
            self.succs.push(self.me.clone());
        }
    }

    /// A peer did not answer within the timeout: drop it from the successor list (the next
    /// live entry takes over) and forget it as predecessor (a notify will rectify). Returns
    /// true if it was known.
    pub fn on_peer_dead(&mut self, dead: &Peer) -> bool {
        let known = self.succs.contains(dead) || self.pred.as_ref() == Some(dead);
        self.succs.retain(|p| p != dead);
        if self.succs.is_empty() {
            self.succs.push(self.me.clone());
        }
        if self.pred.as_ref() == Some(dead) {
            self.pred = None;
        }
        known
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(id: u64) -> Peer {
        Peer { id: Id(id), addr: format!("n{id}") }
    }

    #[test]
    fn ring_of_one_owns_and_finds_everything() {
        let s = RingState::alone(peer(10));
        for k in [0, 10, 11, u64::MAX] {
            assert_eq!(s.route(Id(k), false), Route::Local);
            assert_eq!(s.find_successor(Id(k)), FindStep::Found(peer(10)));
        }
    }

    #[test]
    fn newcomer_without_predecessor_forwards_unless_addressed() {
        let s = RingState::joined(peer(10), peer(20));
        assert_eq!(s.route(Id(5), false), Route::Forward { to: peer(20), addressed: false });
        assert_eq!(s.route(Id(5), true), Route::Local);
        assert_eq!(s.route(Id(15), false), Route::Forward { to: peer(20), addressed: true });
    }

    #[test]
    fn addressed_request_for_a_newcomers_range_steps_back() {
        // 30 handed (10, 20] to 20; 10 still points at 30 and addresses it.
        let mut s = RingState::joined(peer(30), peer(10));
        s.pred = Some(peer(10));
        assert!(s.on_notify(&peer(20)).is_some());
        assert_eq!(s.route(Id(15), true), Route::Local, "30 owns until the copy is done");
        assert_eq!(s.finish_handoff(), Some(peer(10)));
        assert_eq!(s.route(Id(15), true), Route::Back { to: peer(20) });
        assert_eq!(s.route(Id(25), true), Route::Local);
    }

    #[test]
    fn notify_only_accepts_a_closer_predecessor_and_one_handoff_at_a_time() {
        let mut s = RingState::joined(peer(100), peer(10));
        s.pred = Some(peer(50));
        assert_eq!(s.on_notify(&peer(40)), None);
        assert_eq!(
            s.on_notify(&peer(60)),
            Some(Action::StartHandoff { range: Interval::new(Id(50), Id(60)), to: peer(60) })
        );
        assert_eq!(s.on_notify(&peer(70)), None, "busy");
        s.abort_handoff();
        assert_eq!(s.pred(), Some(&peer(50)), "an aborted handoff changes nothing");
    }

    #[test]
    fn the_first_joiner_of_a_ring_of_one_becomes_both_neighbours() {
        let mut a = RingState::alone(peer(10));
        let Some(Action::StartHandoff { range, .. }) = a.on_notify(&peer(20)) else { panic!() };
        assert_eq!(range, Interval::new(Id(10), Id(20)));
        a.finish_handoff();
        assert_eq!(a.pred(), Some(&peer(20)));
        assert_eq!(a.succ(), &peer(20));
    }

    #[test]
    fn leaving_links_the_neighbours() {
        let mut p = RingState::joined(peer(10), peer(20));
        let mut s = RingState::joined(peer(30), peer(10));
        s.pred = Some(peer(20));
        p.on_neighbor_leaving(&peer(20), Some(peer(10)), peer(30));
        s.on_neighbor_leaving(&peer(20), Some(peer(10)), peer(30));
        assert_eq!(p.succ(), &peer(30));
        assert_eq!(s.pred(), Some(&peer(10)));
    }

    #[test]
    fn leaving_a_ring_of_two_leaves_one_alone() {
        let mut a = RingState::joined(peer(10), peer(20));
        a.pred = Some(peer(20));
        a.on_neighbor_leaving(&peer(20), Some(peer(10)), peer(10));
        assert_eq!(a.pred(), None);
        assert_eq!(a.succ(), &peer(10));
        assert_eq!(a.route(Id(15), false), Route::Local);
    }

    #[test]
    fn departed_node_forwards_everything() {
        let mut s = RingState::joined(peer(10), peer(20));
        s.pred = Some(peer(5));
        assert!(s.begin_leave().is_some());
        assert_eq!(s.route(Id(7), false), Route::Local, "still owner while copying");
        s.finish_handoff();
        assert_eq!(s.route(Id(7), false), Route::Forward { to: peer(20), addressed: true });
    }
}
