//! An in-memory network of `RingState`s: joins, graceful leaves, crashes and stabilize rounds
//! with instant message delivery and instant handoffs, so the membership protocol is checked
//! with no sockets and no clock. A call to a crashed node fails, and the caller drops it
//! (`on_peer_dead`), as the node does on a timeout. Each node also holds a set of key ids, to
//! check that handoffs put every key on its owner and lose none but a crashed node's.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::*;

struct Sim {
    nodes: BTreeMap<String, RingState>,
    keys: BTreeMap<String, BTreeSet<u64>>,
    /// Keys that died with a crashed node (one copy each here: no replication in the sim).
    lost: BTreeSet<u64>,
    /// Successor-list length.
    r: usize,
}

impl Sim {
    fn new(first: &str, keys: impl IntoIterator<Item = u64>) -> Sim {
        Sim::with_list_len(first, keys, 1)
    }

    fn with_list_len(first: &str, keys: impl IntoIterator<Item = u64>, r: usize) -> Sim {
        let mut sim = Sim { nodes: BTreeMap::new(), keys: BTreeMap::new(), lost: BTreeSet::new(), r };
        sim.nodes.insert(first.into(), RingState::alone(Peer::new(first)).with_list_len(r));
        sim.keys.insert(first.into(), keys.into_iter().collect());
        sim
    }

    /// Recursive find_successor, starting at `at`; None if it does not end within the hop limit.
    fn find_successor(&self, at: &str, id: Id) -> Option<(Peer, usize)> {
        let mut cur = at.to_string();
        for hops in 0..=self.nodes.len() * 2 {
            match self.nodes.get(&cur)?.find_successor(id) {
                FindStep::Found(p) => return Some((p, hops)),
                FindStep::Forward(p) => cur = p.addr,
            }
        }
        None
    }

    fn join(&mut self, addr: &str, bootstrap: &str) {
        let me = Peer::new(addr);
        let Some((succ, _)) = self.find_successor(bootstrap, me.id) else {
            return;
        };
        if !self.nodes.contains_key(&succ.addr) {
            return;
        }
        self.nodes.insert(addr.into(), RingState::joined(me, succ).with_list_len(self.r));
        self.keys.insert(addr.into(), BTreeSet::new());
    }

    fn move_keys(&mut self, from: &str, range: Interval, to: &str) {
        let moving: Vec<u64> = self.keys[from].iter().copied().filter(|k| range.contains(Id(*k))).collect();
        for k in moving {
            self.keys.get_mut(from).unwrap().remove(&k);
            self.keys.get_mut(to).unwrap().insert(k);
        }
    }

    fn stabilize(&mut self, addr: &str) {
        // A dead predecessor is forgotten (the node pings it each round).
        if let Some(p) = self.nodes[addr].pred().cloned() {
            if !self.nodes.contains_key(&p.addr) {
                self.nodes.get_mut(addr).unwrap().on_peer_dead(&p);
            }
        }
        // Skip dead successors to the next live entry.
        let target = loop {
            let Some(target) = self.nodes.get_mut(addr).unwrap().stabilize_target() else { return };
            if self.nodes.contains_key(&target.addr) {
                break target;
            }
            self.nodes.get_mut(addr).unwrap().on_peer_dead(&target);
        };
        let x = self.nodes[&target.addr].pred().cloned();
        let list = self.nodes[&target.addr].successors().to_vec();
        let actions = self.nodes.get_mut(addr).unwrap().on_successor_reply(&target, x, list);
        for action in actions {
            let Action::Notify(s) = action else { unreachable!() };
            if !self.nodes.contains_key(&s.addr) {
                continue;
            }
            let me = self.nodes[addr].me().clone();
            let Some(Action::StartHandoff { range, to }) =
                self.nodes.get_mut(&s.addr).unwrap().on_notify(&me)
            else {
                continue;
            };
            self.move_keys(&s.addr, range, &to.addr);
            let old = self.nodes.get_mut(&s.addr).unwrap().finish_handoff();
            if let Some(old) = old {
                self.nodes.get_mut(&to.addr).unwrap().on_predecessor_hint(old);
            }
        }
    }

    /// kill -9: gone without a word, its keys with it.
    fn crash(&mut self, addr: &str) {
        self.nodes.remove(addr);
        self.lost.extend(self.keys.remove(addr).unwrap());
    }

    fn leave(&mut self, addr: &str) {
        let Some(Action::StartHandoff { range, to }) = self.nodes.get_mut(addr).unwrap().begin_leave() else {
            return;
        };
        self.move_keys(addr, range, &to.addr);
        let st = self.nodes.get_mut(addr).unwrap();
        st.finish_handoff();
        let (me, pred, succ) = (st.me().clone(), st.pred().cloned(), st.succ().clone());
        for n in pred.iter().chain([&succ]) {
            if let Some(ns) = self.nodes.get_mut(&n.addr) {
                ns.on_neighbor_leaving(&me, pred.clone(), succ.clone());
            }
        }
        self.nodes.remove(addr);
        assert!(self.keys.remove(addr).unwrap().is_empty(), "leaver kept keys");
    }

    fn round(&mut self) {
        let addrs: Vec<String> = self.nodes.keys().cloned().collect();
        for a in addrs {
            self.stabilize(&a);
        }
    }

    fn sorted_ids(&self) -> Vec<Id> {
        let mut ids: Vec<Id> = self.nodes.values().map(|s| s.me().id).collect();
        ids.sort();
        ids
    }

    /// Zave's "one ordered ring": every node's successor list is the next min(r, n-1) ids
    /// clockwise and its predecessor the previous one; a ring of one points at itself with no
    /// predecessor.
    fn is_correct(&self) -> bool {
        let ids = self.sorted_ids();
        let n = ids.len();
        self.nodes.values().all(|s| {
            let i = ids.binary_search(&s.me().id).unwrap();
            if n == 1 {
                return s.succ() == s.me() && s.pred().is_none();
            }
            let want: Vec<Id> = (1..=self.r.min(n - 1)).map(|k| ids[(i + k) % n]).collect();
            let list: Vec<Id> = s.successors().iter().map(|p| p.id).collect();
            list == want && s.pred().map(|p| p.id) == Some(ids[(i + n - 1) % n])
        })
    }

    fn converge(&mut self) -> usize {
        for rounds in 0..4 * self.nodes.len() + 8 {
            if self.is_correct() {
                return rounds;
            }
            self.round();
        }
        panic!("did not converge: {:#?}", self.nodes);
    }

    fn check_keys(&self, all: &BTreeSet<u64>) {
        let ids = self.sorted_ids();
        let held: usize = self.keys.values().map(|k| k.len()).sum();
        assert_eq!(held, all.difference(&self.lost).count(), "a key was lost or duplicated");
        for (addr, keys) in &self.keys {
            let me = self.nodes[addr].me().id;
            for k in keys {
                assert_eq!(owner_of(&ids, Id(*k)), Some(me), "key {k:x} on the wrong node");
            }
        }
    }

    fn check_routing(&self) {
        let ids = self.sorted_ids();
        let n = self.nodes.len();
        for start in self.nodes.keys() {
            for probe in ids.iter().map(|i| Id(i.0.wrapping_add(1))).chain([Id(0), Id(u64::MAX)]) {
                let (mut cur, mut addressed, mut forwards) = (start.clone(), false, 0);
                loop {
                    match self.nodes[&cur].route(probe, addressed) {
                        Route::Local => break,
                        Route::Forward { to, addressed: a } => {
                            (cur, addressed) = (to.addr, a);
                            forwards += 1;
                        }
                        Route::Back { .. } => panic!("step back in a settled ring"),
                    }
                    assert!(forwards < n, "more than N-1 forwards");
                }
                assert_eq!(Some(self.nodes[&cur].me().id), owner_of(&ids, probe));
            }
        }
    }
}

#[derive(Clone, Debug)]
enum Op {
    /// A new node joins through an existing one (index modulo the member count).
    Join(usize),
    /// A member leaves gracefully.
    Leave(usize),
    /// A member crashes.
    Crash(usize),
    /// One stabilize round of every member.
    Round,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => any::<usize>().prop_map(Op::Join),
        1 => any::<usize>().prop_map(Op::Leave),
        1 => any::<usize>().prop_map(Op::Crash),
        2 => Just(Op::Round),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Any mix of joins (several at once, before any stabilize), graceful leaves, crashes and
    /// rounds settles into one ordered ring (Zave's invariants: every live node reachable,
    /// successor lists the next r nodes, no loops), with every key on its owner, only crashed
    /// nodes' keys lost, and routing within N-1 forwards.
    #[test]
    fn membership_converges_and_keeps_every_key(
        ops in proptest::collection::vec(op(), 1..40),
        keys in proptest::collection::btree_set(any::<u64>(), 0..200),
        r in 1usize..5,
    ) {
        let mut sim = Sim::with_list_len("10.0.0.0:1", keys.iter().copied(), r);
        let mut next = 2;
        for op in ops {
            let members: Vec<String> = sim.nodes.keys().cloned().collect();
            match op {
                Op::Join(i) => {
                    sim.join(&format!("10.0.0.0:{next}"), &members[i % members.len()]);
                    next += 1;
                }
                Op::Leave(i) if members.len() > 1 => {
                    // A graceful leave needs settled neighbours, as `sdht` waits for them.
                    sim.converge();
                    sim.leave(&members[i % members.len()]);
                }
                Op::Leave(_) => {}
                // A crash needs a settled ring with more members than r (Zave's stable base
                // of r+1); with a single successor pointer a crash breaks the ring for good.
                Op::Crash(i) if r > 1 && members.len() > r + 1 => {
                    sim.converge();
                    sim.crash(&members[i % members.len()]);
                }
                Op::Crash(_) => {}
                Op::Round => sim.round(),
            }
        }
        sim.converge();
        sim.check_keys(&keys);
        sim.check_routing();
    }
}

#[test]
fn ring_of_one_two_and_three_settle() {
    for n in 1..=3 {
        let mut sim = Sim::new("a:1", [0, 1, u64::MAX, 1 << 63]);
        for i in 1..n {
            sim.join(&format!("a:{}", i + 1), "a:1");
        }
        sim.converge();
        sim.check_keys(&[0, 1, u64::MAX, 1 << 63].into());
        sim.check_routing();
    }
}

#[test]
fn joins_through_one_bootstrap_at_once_converge() {
    let mut sim = Sim::new("b:0", (0..1000).map(|i| 0x0123_4567_89ab_cdef_u64.wrapping_mul(i)));
    for i in 1..=8 {
        sim.join(&format!("b:{i}"), "b:0");
    }
    let rounds = sim.converge();
    assert!(rounds > 0);
    sim.check_keys(&(0..1000).map(|i| 0x0123_4567_89ab_cdef_u64.wrapping_mul(i)).collect());
    sim.check_routing();
}

#[test]
fn leaving_down_to_one_puts_every_key_on_it() {
    let keys: BTreeSet<u64> = (0..500).map(|i| 0x9e37_79b9_7f4a_7c15_u64.wrapping_mul(i)).collect();
    let mut sim = Sim::new("c:0", keys.iter().copied());
    for i in 1..5 {
        sim.join(&format!("c:{i}"), "c:0");
    }
    sim.converge();
    for i in 0..4 {
        sim.leave(&format!("c:{i}"));
        sim.converge();
        sim.check_keys(&keys);
    }
    assert_eq!(sim.keys["c:4"].len(), keys.len());
}
