//! A deterministic simulator of many nodes running the real [`Membership`] state machine over
//! a simulated network: message delays, loss, reordering, duplication, full and asymmetric
//! partitions and bridges, crashes, restarts with saved state, graceful leaves and joins, all
//! on a simulated clock and all drawn from one seed.
//!
//! It plays the executor's part with simple stand-ins: calls become packets with timeouts,
//! `Copy` becomes one batch packet, find_successor walks the views of the nodes it reaches,
//! and client writes follow `View::route` to the owner, which acknowledges them once a quorum
//! of replicas (`View::write_quorum`) holds them. After every quiescent period (faults healed,
//! no load) it checks Zave's invariants, single ownership of every id, and that every
//! acknowledged write is on every replica of its key (or superseded).
//!
//! `cargo test` runs a few seeds; `SDHT_SIM_SEEDS=N cargo test --release sim` runs N. A failure
//! prints its seed and the end of its event trace; `SDHT_SIM_SEED=S` replays one seed.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;

const TICK: Millis = 200;
const PEER_TIMEOUT: Millis = 500;
const COPY_TIMEOUT: Millis = 2_000;
const HOP_LIMIT: usize = 64;
/// Simulated time a healed ring gets to settle before the invariants are checked.
const SETTLE: Millis = 20_000;
/// Lines of trace kept for a failure report (written whole to a file, the end printed).
const TRACE_LINES: usize = 100_000;
/// Lines of the trace printed with a failure.
const TRACE_PRINTED: usize = 60;

/// One stored version of a key: (version, value).
type Rec = (u64, Option<u64>);

fn settings() -> Settings {
    Settings {
        successors: 4,
        replicas: 3,
        strikes: 2,
        join_deadline: 30_000,
        leave_deadline: 60_000,
        period: TICK,
    }
}

#[derive(Clone, Debug)]
enum Payload {
    Call {
        call: CallId,
        msg: Msg,
    },
    Reply {
        call: CallId,
        reply: Result<Reply, Failure>,
    },
    Batch {
        job: JobId,
        range: Interval,
        sync: bool,
        records: Vec<(u64, Rec)>,
    },
    BatchAck {
        job: JobId,
        ok: bool,
        newer: Vec<(u64, Rec)>,
    },
    /// A write's copy: to a replica, or (`handoff`) through to a range's new owner.
    Replica {
        write: u64,
        key: u64,
        rec: Rec,
        handoff: bool,
    },
    ReplicaAck {
        write: u64,
    },
}

#[derive(Clone, Debug)]
enum Sched {
    Deliver {
        from: String,
        to: String,
        inc: u64,
        payload: Payload,
    },
    /// A round the machine asked for; void if a later request re-armed the timer (`armed`).
    Tick {
        node: String,
        inc: u64,
        armed: u64,
    },
    CallTimeout {
        node: String,
        inc: u64,
        call: CallId,
    },
    CopyTimeout {
        node: String,
        inc: u64,
        job: JobId,
    },
    WriteTimeout {
        node: String,
        inc: u64,
        write: u64,
    },
    ReplicaTimeout {
        node: String,
        inc: u64,
        write: u64,
        replica: String,
    },
}

struct PendingWrite {
    key: u64,
    rec: Rec,
    acks: usize,
    needed: usize,
    through: bool,
    epoch: u64,
    client: bool,
}

struct SimNode {
    m: Membership,
    store: BTreeMap<u64, Rec>,
    saved: Saved,
    alive: bool,
    /// Bumped at every restart: packets and timers of an earlier life are void.
    inc: u64,
    calls: BTreeSet<CallId>,
    copies: BTreeSet<JobId>,
    writes: BTreeMap<u64, PendingWrite>,
    /// (write, replica) not acknowledged yet.
    unacked: BTreeSet<(u64, String)>,
    drains: Vec<u64>,
    hlc: u64,
    /// When the pending tick fires, and its number (earlier requests re-arm it).
    tick_at: Millis,
    armed: u64,
}

#[derive(Default, Debug, Clone, Copy)]
struct Counts {
    events: u64,
    partitions: u64,
    crashes: u64,
    restarts: u64,
    leaves: u64,
    joins: u64,
    writes_acked: u64,
    writes_refused: u64,
}

struct Sim {
    rng: StdRng,
    now: Millis,
    seq: u64,
    queue: BinaryHeap<Reverse<(Millis, u64, usize)>>,
    events: Vec<Option<Sched>>,
    nodes: BTreeMap<String, SimNode>,
    blocked: BTreeSet<(String, String)>,
    loss: f64,
    dup: f64,
    /// Newest acknowledged version of each key.
    acked: BTreeMap<u64, u64>,
    next_write: u64,
    counts: Counts,
    trace: std::collections::VecDeque<String>,
    /// Break one rule on purpose (to show the checks catch it).
    sabotage: bool,
    /// New nodes take balanced ids offered by their seed (else the hash of their address).
    balanced: bool,
    /// Each address's id, kept across restarts (as the node keeps it in its store).
    ids: BTreeMap<String, Id>,
    /// The offers each node made recently (`balance::Offers`).
    offers: BTreeMap<String, balance::Offers>,
}

fn key_of(k: u64) -> Id {
    Id(k.wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

impl Sim {
    fn new(seed: u64) -> Sim {
        Sim {
            rng: StdRng::seed_from_u64(seed),
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            events: Vec::new(),
            nodes: BTreeMap::new(),
            blocked: BTreeSet::new(),
            loss: 0.0,
            dup: 0.0,
            acked: BTreeMap::new(),
            next_write: 0,
            counts: Counts::default(),
            trace: Default::default(),
            sabotage: false,
            balanced: false,
            ids: BTreeMap::new(),
            offers: BTreeMap::new(),
        }
    }

    /// The peer at `addr`, with the id it has (or will have).
    fn peer(&self, addr: &str) -> Peer {
        Peer { id: self.ids.get(addr).copied().unwrap_or_else(|| node_id(addr)), addr: addr.into() }
    }

    /// The id a new node takes: its old one after a restart; with balanced ids, the point its
    /// first seed offers (the median key of the most loaded piece of the seed's range).
    fn choose_id(&mut self, addr: &str, seeds: &[String]) -> Id {
        if let Some(id) = self.ids.get(addr) {
            return *id;
        }
        let offered = seeds.first().filter(|_| self.balanced).and_then(|s| {
            let n = self.nodes.get(s).filter(|n| n.alive)?;
            let owned = n.m.view().owned()?;
            let mut keys: Vec<Id> =
                n.store.keys().map(|k| key_of(*k)).filter(|k| owned.contains(*k)).collect();
            keys.sort_by_key(|k| owned.after.distance_to(*k));
            let now = self.now;
            let offer = self.offers.entry(s.clone()).or_default().offer(now, owned, &keys, true)?;
            Some(balance::personal(offer.id, node_id(addr)))
        });
        let id = offered.unwrap_or_else(|| node_id(addr));
        self.ids.insert(addr.into(), id);
        id
    }

    fn log(&mut self, line: String) {
        if self.trace.len() >= TRACE_LINES {
            self.trace.pop_front();
        }
        self.trace.push_back(format!("{:>7} {line}", self.now));
    }

    fn at(&mut self, t: Millis, ev: Sched) {
        self.seq += 1;
        self.events.push(Some(ev));
        self.queue.push(Reverse((t, self.seq, self.events.len() - 1)));
    }

    fn link_ok(&self, from: &str, to: &str) -> bool {
        !self.blocked.contains(&(from.to_string(), to.to_string()))
    }

    fn inc(&self, addr: &str) -> u64 {
        self.nodes.get(addr).map_or(0, |n| n.inc)
    }

    /// Sends a packet: dropped on a cut link or by loss, else delivered after a delay (and
    /// now and then twice).
    fn send(&mut self, from: &str, to: &str, payload: Payload) {
        if !self.link_ok(from, to) || self.rng.random_bool(self.loss) {
            return;
        }
        let copies = if self.rng.random_bool(self.dup) { 2 } else { 1 };
        for _ in 0..copies {
            let delay = self.rng.random_range(1..=20);
            let inc = self.inc(to);
            let ev = Sched::Deliver { from: from.into(), to: to.into(), inc, payload: payload.clone() };
            self.at(self.now + delay, ev);
        }
    }

    // ---- node lifecycle ----

    fn add(&mut self, addr: &str, seeds: Vec<String>, saved: Saved) {
        let me = Peer { id: self.choose_id(addr, &seeds), addr: addr.into() };
        let m = Membership::start(me, settings(), seeds, saved.clone(), self.now);
        let inc = self.nodes.get(addr).map_or(1, |n| n.inc + 1);
        let store = self.nodes.remove(addr).map(|n| n.store).unwrap_or_default();
        let node = SimNode {
            m,
            store,
            saved,
            alive: true,
            inc,
            calls: BTreeSet::new(),
            copies: BTreeSet::new(),
            writes: BTreeMap::new(),
            unacked: BTreeSet::new(),
            drains: Vec::new(),
            hlc: 0,
            tick_at: Millis::MAX,
            armed: 0,
        };
        self.nodes.insert(addr.into(), node);
        let first = self.now + self.rng.random_range(0..TICK);
        self.arm(addr, first);
    }

    /// (Re-)arms `addr`'s tick timer at `t` if that is earlier than the pending one.
    fn arm(&mut self, addr: &str, t: Millis) {
        let Some(n) = self.nodes.get_mut(addr) else { return };
        if t >= n.tick_at {
            return;
        }
        n.tick_at = t;
        n.armed += 1;
        let ev = Sched::Tick { node: addr.into(), inc: n.inc, armed: n.armed };
        self.at(t.max(self.now), ev);
    }

    fn crash(&mut self, addr: &str) {
        if let Some(n) = self.nodes.get_mut(addr) {
            n.alive = false;
            n.inc += 1;
            n.calls.clear();
            n.copies.clear();
            n.writes.clear();
            n.unacked.clear();
            n.drains.clear();
        }
        self.counts.crashes += 1;
        self.log(format!("CRASH {addr}"));
    }

    fn restart(&mut self, addr: &str) {
        let saved = self.nodes[addr].saved.clone();
        self.counts.restarts += 1;
        self.log(format!("RESTART {addr} saved={saved:?}"));
        self.add(addr, Vec::new(), saved);
    }

    fn live(&self) -> Vec<String> {
        self.nodes.iter().filter(|(_, n)| n.alive).map(|(a, _)| a.clone()).collect()
    }

    fn members(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.alive && n.m.view().standing == Standing::Member)
            .map(|(a, _)| a.clone())
            .collect()
    }

    // ---- the executor's part ----

    fn step(&mut self, addr: &str, event: Event) {
        let Some(n) = self.nodes.get_mut(addr).filter(|n| n.alive) else { return };
        let actions = n.m.step(self.now, event.clone());
        self.counts.events += 1;
        let line = format!("{addr} <- {event:?}");
        self.log(line);
        for a in actions {
            self.perform(addr, a);
        }
        if let Some(t) = self.nodes.get(addr).filter(|n| n.alive).map(|n| n.m.next_tick()) {
            self.arm(addr, t);
        }
        self.check_drains(addr);
    }

    fn perform(&mut self, addr: &str, action: Action) {
        let inc = self.inc(addr);
        match action {
            Action::Call { call, to, msg } => {
                self.nodes.get_mut(addr).unwrap().calls.insert(call);
                if !self.nodes.get(&to.addr).is_some_and(|n| n.alive) && self.link_ok(addr, &to.addr) {
                    let reply = Payload::Reply { call, reply: Err(Failure::Gone) };
                    let ev = Sched::Deliver { from: to.addr.clone(), to: addr.into(), inc, payload: reply };
                    self.at(self.now + 1, ev);
                } else {
                    self.send(addr, &to.addr, Payload::Call { call, msg });
                }
                self.at(self.now + PEER_TIMEOUT, Sched::CallTimeout { node: addr.into(), inc, call });
            }
            Action::Copy { job, range, to, kind } => {
                self.log(format!("{addr} COPY {kind:?} job={job} {range:?} to {}", to.addr));
                let records: Vec<(u64, Rec)> = self.nodes[addr]
                    .store
                    .iter()
                    .filter(|(k, _)| range.contains(key_of(**k)))
                    .map(|(k, r)| (*k, *r))
                    .collect();
                self.nodes.get_mut(addr).unwrap().copies.insert(job);
                let sync = kind == CopyKind::Replicate;
                self.send(addr, &to.addr, Payload::Batch { job, range, sync, records });
                self.at(self.now + COPY_TIMEOUT, Sched::CopyTimeout { node: addr.into(), inc, job });
            }
            Action::AwaitDrain { epoch } => self.nodes.get_mut(addr).unwrap().drains.push(epoch),
            Action::DropRange(range) => {
                self.nodes.get_mut(addr).unwrap().store.retain(|k, _| !range.contains(key_of(*k)));
            }
            Action::Persist(saved) => self.nodes.get_mut(addr).unwrap().saved = saved,
            Action::Respond { .. } => {} // answered by `answer` below
            Action::Log(c) => self.log(format!("{addr} {c:?}")),
            Action::JoinFailed { .. } => {
                self.log(format!("{addr} JOIN FAILED"));
                self.nodes.remove(addr);
            }
            Action::Exit => {
                self.log(format!("{addr} EXIT"));
                self.nodes.remove(addr);
            }
        }
    }

    fn check_drains(&mut self, addr: &str) {
        let Some(n) = self.nodes.get_mut(addr) else { return };
        let oldest = n.writes.values().map(|w| w.epoch).min();
        let (ready, waiting): (Vec<u64>, Vec<u64>) =
            n.drains.iter().partition(|e| oldest.is_none_or(|o| o >= **e));
        n.drains = waiting;
        for epoch in ready {
            self.step(addr, Event::Drained { epoch });
        }
    }

    /// A peer's answer to a membership call.
    fn answer(&mut self, at: &str, msg: &Msg, from: &str) -> Option<Result<Reply, Failure>> {
        let view = self.nodes[at].m.view();
        let me = self.peer(from);
        Some(Ok(match msg {
            Msg::FindSuccessor(id) => return Some(self.find(at, *id)),
            Msg::Neighbors => Reply::Neighbors { pred: view.pred.clone(), succs: view.succs.clone() },
            Msg::Notify => {
                self.step(at, Event::Notified { from: me });
                Reply::Ack
            }
            Msg::HandoffDone { pred } => {
                self.step(at, Event::HandoffDone { from: me, pred: pred.clone() });
                Reply::Ack
            }
            Msg::Leaving { pred, succ } => {
                let n = self.nodes.get_mut(at)?;
                let actions = n.m.step(
                    self.now,
                    Event::NeighborLeaving { ticket: 1, node: me, pred: pred.clone(), succ: succ.clone() },
                );
                let mut accepted = false;
                for a in actions {
                    if let Action::Respond { accepted: ok, .. } = a {
                        accepted = ok;
                    } else {
                        self.perform(at, a);
                    }
                }
                if accepted {
                    Reply::Ack
                } else {
                    Reply::Busy
                }
            }
        }))
    }

    /// find_successor, walked through the views of the nodes it reaches.
    fn find(&self, at: &str, id: Id) -> Result<Reply, Failure> {
        let mut cur = at.to_string();
        for _ in 0..HOP_LIMIT {
            let view = self.nodes[&cur].m.view();
            if view.standing == Standing::Joining {
                return Ok(Reply::Busy);
            }
            match view.find_successor(id) {
                FindStep::Found(p) => return Ok(Reply::Successor(p)),
                FindStep::Forward(p) => {
                    let up = self.nodes.get(&p.addr).is_some_and(|n| n.alive);
                    if !up || !self.link_ok(&cur, &p.addr) || !self.link_ok(&p.addr, &cur) {
                        return Err(Failure::Silent);
                    }
                    cur = p.addr;
                }
            }
        }
        Err(Failure::Rejected)
    }

    fn deliver(&mut self, from: String, to: String, payload: Payload) {
        match payload {
            Payload::Call { call, msg } => {
                if let Some(reply) = self.answer(&to, &msg, &from) {
                    self.send(&to, &from, Payload::Reply { call, reply });
                }
            }
            Payload::Reply { call, reply } => {
                if self.nodes.get_mut(&to).is_some_and(|n| n.calls.remove(&call)) {
                    let ev = match reply {
                        Ok(reply) => Event::Answer { call, reply },
                        Err(failure) => Event::Failed { call, failure },
                    };
                    self.step(&to, ev);
                }
            }
            Payload::Batch { job, range, sync, records } => {
                let n = self.nodes.get_mut(&to).unwrap();
                let ok = n.m.view().standing != Standing::Departed;
                let sent: BTreeMap<u64, Rec> = records.iter().copied().collect();
                let newer: Vec<(u64, Rec)> = n
                    .store
                    .iter()
                    .filter(|(k, r)| {
                        sync && range.contains(key_of(**k)) && sent.get(k).is_none_or(|s| *r > s)
                    })
                    .map(|(k, r)| (*k, *r))
                    .collect();
                let mut changed = Vec::new();
                if ok {
                    for (k, r) in records {
                        if n.store.get(&k).is_none_or(|old| r > *old) {
                            changed.push((k, r));
                        }
                        merge(&mut n.store, k, r);
                    }
                }
                self.send(&to, &from, Payload::BatchAck { job, ok, newer });
                if !sync {
                    self.settle_handoff(&to, changed);
                }
            }
            Payload::BatchAck { job, ok, newer } => {
                if self.nodes.get_mut(&to).is_some_and(|n| n.copies.remove(&job)) {
                    // A push that pulled newer records back must run again, so that the other
                    // replicas get them too.
                    let ok = ok && newer.is_empty();
                    let n = self.nodes.get_mut(&to).unwrap();
                    for (k, r) in newer {
                        merge(&mut n.store, k, r);
                    }
                    self.log(format!("{to} COPYDONE job={job} ok={ok}"));
                    self.step(&to, Event::CopyDone { job, ok });
                }
            }
            Payload::Replica { write, key, rec, handoff } => {
                let n = self.nodes.get_mut(&to).unwrap();
                let view = n.m.view();
                if view.standing != Standing::Departed {
                    merge(&mut n.store, key, rec);
                    self.send(&to, &from, Payload::ReplicaAck { write });
                    // A write-through settles whether new or not: the replica copy of the same
                    // write may have come first.
                    if handoff {
                        self.settle_handoff(&to, vec![(key, rec)]);
                    }
                }
            }
            Payload::ReplicaAck { write } => {
                if self.nodes.get_mut(&to).is_some_and(|n| n.unacked.remove(&(write, from.clone()))) {
                    self.replica_acked(&to, write);
                }
            }
        }
    }

    /// Records a handoff brought that were new here: those this node does not own go on to
    /// their owner (as writes of their own version); those it owns go to its replicas (it may
    /// have taken the range over already and pushed it before they came).
    fn settle_handoff(&mut self, at: &str, changed: Vec<(u64, Rec)>) {
        let owned = self.nodes[at].m.view().owned();
        for (k, r) in changed {
            if owned.is_some_and(|o| o.contains(key_of(k))) {
                self.owner_write(at, k, r, false);
            } else {
                self.route_write(at, k, r, false);
            }
        }
    }

    fn run_one(&mut self) -> bool {
        let Some(Reverse((t, _, i))) = self.queue.pop() else { return false };
        self.now = t;
        let Some(ev) = self.events[i].take() else { return true };
        match ev {
            Sched::Deliver { from, to, inc, payload } => {
                if self.nodes.get(&to).is_some_and(|n| n.alive && n.inc == inc) {
                    self.deliver(from, to, payload);
                }
            }
            Sched::Tick { node, inc, armed } => {
                if let Some(n) =
                    self.nodes.get_mut(&node).filter(|n| n.alive && n.inc == inc && n.armed == armed)
                {
                    n.tick_at = Millis::MAX;
                    self.step(&node, Event::Tick);
                }
            }
            Sched::CallTimeout { node, inc, call } => {
                if self.nodes.get_mut(&node).is_some_and(|n| n.inc == inc && n.calls.remove(&call)) {
                    self.step(&node, Event::Failed { call, failure: Failure::Silent });
                }
            }
            Sched::CopyTimeout { node, inc, job } => {
                if self.nodes.get_mut(&node).is_some_and(|n| n.inc == inc && n.copies.remove(&job)) {
                    self.step(&node, Event::CopyDone { job, ok: false });
                }
            }
            Sched::ReplicaTimeout { node, inc, write, replica } => {
                if self
                    .nodes
                    .get_mut(&node)
                    .is_some_and(|n| n.inc == inc && n.unacked.remove(&(write, replica)))
                {
                    self.step(&node, Event::ReplicaMissed);
                }
            }
            Sched::WriteTimeout { node, inc, write } => {
                let w =
                    self.nodes.get_mut(&node).filter(|n| n.inc == inc).and_then(|n| n.writes.remove(&write));
                if w.is_some() {
                    self.counts.writes_refused += 1;
                    self.check_drains(&node);
                }
            }
        }
        true
    }

    fn run_for(&mut self, dt: Millis) {
        let end = self.now + dt;
        while self.queue.peek().is_some_and(|Reverse((t, _, _))| *t <= end) {
            self.run_one();
        }
        self.now = end;
    }

    // ---- client writes ----

    /// A client writes key `k` through node `entry`: the version is stamped there, the request
    /// follows the views to the owner (every hop must be reachable), and the owner answers once
    /// a quorum holds it.
    fn client_write(&mut self, entry: &str, k: u64) {
        let Some(n) = self.nodes.get_mut(entry).filter(|n| n.alive) else { return };
        n.hlc = (self.now * 1000).max(n.hlc + 1);
        let version = n.hlc;
        self.route_write(entry, k, (version, Some(version)), true);
    }

    /// Routes a write from `entry` to the key's owner. `client`: a client's write (counted
    /// in the model once acknowledged), else a repair of a record found outside its range.
    fn route_write(&mut self, entry: &str, k: u64, rec: Rec, client: bool) {
        let id = key_of(k);
        // A repair starts "addressed": the key came from a successor's side, so its owner lies
        // behind; `View::route` then steps back along predecessors.
        let (mut cur, mut addressed) = (entry.to_string(), !client);
        for _ in 0..HOP_LIMIT {
            let view = self.nodes[&cur].m.view();
            if view.standing == Standing::Joining {
                return;
            }
            let (next, a) = match view.route(id, addressed) {
                Route::Local => return self.owner_write(&cur, k, rec, client),
                Route::Forward { to, addressed } => (to, addressed),
                Route::Back { to } => (to, true),
            };
            let up = self.nodes.get(&next.addr).is_some_and(|n| n.alive);
            if !up || !self.link_ok(&cur, &next.addr) || !self.link_ok(&next.addr, &cur) {
                return;
            }
            (cur, addressed) = (next.addr, a);
        }
    }

    fn owner_write(&mut self, owner: &str, key: u64, rec: Rec, client: bool) {
        let view = self.nodes[owner].m.view();
        let Some(needed) = view.write_quorum() else {
            self.counts.writes_refused += 1;
            return;
        };
        let needed = if self.sabotage { 1 } else { needed };
        self.next_write += 1;
        let write = self.next_write;
        // A repair is not written through: it may have come from that receiver (see request.rs).
        let through = view.write_through_for(key_of(key)).cloned().filter(|_| client);
        let targets = addrs(&view.replica_peers(view.replicas - 1)).join(",");
        self.log(format!(
            "WRITE k={key} v={} at {owner} needed={needed} replicas={targets} through={:?}",
            rec.0,
            through.as_ref().map(|t| &t.to.addr)
        ));
        let n = self.nodes.get_mut(owner).unwrap();
        merge(&mut n.store, key, rec);
        let w =
            PendingWrite { key, rec, acks: 1, needed, through: through.is_some(), epoch: view.epoch, client };
        n.writes.insert(write, w);
        let inc = self.inc(owner);
        let replicas = view.replica_peers(view.replicas - 1);
        let targets = replicas.iter().map(|p| (p, false)).chain(through.as_ref().map(|t| (&t.to, true)));
        for (p, handoff) in targets {
            self.nodes.get_mut(owner).unwrap().unacked.insert((write, p.addr.clone()));
            self.send(owner, &p.addr, Payload::Replica { write, key, rec, handoff });
            let ev = Sched::ReplicaTimeout { node: owner.into(), inc, write, replica: p.addr.clone() };
            self.at(self.now + PEER_TIMEOUT, ev);
        }
        self.at(self.now + PEER_TIMEOUT, Sched::WriteTimeout { node: owner.into(), inc, write });
        self.replica_acked(owner, 0);
    }

    /// Counts a replica's acknowledgement (`write` 0: just check); acknowledges the write
    /// once it holds a quorum. A write-through counts as one more copy that must answer.
    fn replica_acked(&mut self, owner: &str, write: u64) {
        let Some(n) = self.nodes.get_mut(owner) else { return };
        if let Some(w) = n.writes.get_mut(&write) {
            w.acks += 1;
        }
        let done: Vec<u64> = n
            .writes
            .iter()
            .filter(|(_, w)| w.acks >= w.needed + usize::from(w.through))
            .map(|(id, _)| *id)
            .collect();
        for id in done {
            let w = n.writes.remove(&id).unwrap();
            if !w.client {
                continue;
            }
            self.trace.push_back(format!("{:>7} ACKED k={} v={} at {owner}", self.now, w.key, w.rec.0));
            let best = self.acked.entry(w.key).or_insert(0);
            *best = (*best).max(w.rec.0);
            self.counts.writes_acked += 1;
        }
        self.check_drains(owner);
    }

    // ---- invariants ----

    fn sorted_members(&self) -> Vec<Peer> {
        let mut v: Vec<Peer> = self.members().iter().map(|a| self.peer(a)).collect();
        v.sort();
        v
    }

    /// Zave's invariants: one ordered ring whose successor lists are the next r live members
    /// and whose predecessors are right; every live node is a member.
    fn check_ring(&self) -> Result<(), String> {
        let ring = self.sorted_members();
        let n = ring.len();
        if n != self.live().len() {
            return Err(format!("{} live nodes but {n} members", self.live().len()));
        }
        for (i, p) in ring.iter().enumerate() {
            let v = self.nodes[&p.addr].m.view();
            let want: Vec<Peer> = (1..=4.min(n - 1)).map(|k| ring[(i + k) % n].clone()).collect();
            let want = if want.is_empty() { vec![p.clone()] } else { want };
            if v.succs != want {
                return Err(format!(
                    "{} has successors {:?}, want {:?}",
                    p.addr,
                    addrs(&v.succs),
                    addrs(&want)
                ));
            }
            let pred = (n > 1).then(|| ring[(i + n - 1) % n].clone());
            if v.pred != pred {
                return Err(format!("{} has predecessor {:?}, want {:?}", p.addr, v.pred, pred));
            }
            if v.cut_off {
                return Err(format!("{} still thinks it is cut off", p.addr));
            }
        }
        Ok(())
    }

    /// Every id has exactly one owner.
    fn check_ownership(&mut self) -> Result<(), String> {
        let views: Vec<View> = self.members().iter().map(|a| self.nodes[a].m.view()).collect();
        for _ in 0..64 {
            let id = Id(self.rng.random());
            let owners = views.iter().filter(|v| v.owned().is_some_and(|r| r.contains(id))).count();
            if owners != 1 {
                return Err(format!("id {id} has {owners} owners"));
            }
        }
        Ok(())
    }

    /// Every acknowledged write is on every replica of its key, or superseded by a newer one.
    fn check_data(&self) -> Result<(), String> {
        let ring = self.sorted_members();
        let ids: Vec<Id> = ring.iter().map(|p| p.id).collect();
        for (&k, &version) in &self.acked {
            let Some(owner) = owner_of(&ids, key_of(k)) else { continue };
            let i = ids.iter().position(|x| *x == owner).unwrap();
            for j in 0..3.min(ring.len()) {
                let p = &ring[(i + j) % ring.len()];
                let held = self.nodes[&p.addr].store.get(&k).map_or(0, |r| r.0);
                if held < version {
                    let all: Vec<String> = self
                        .nodes
                        .iter()
                        .map(|(a, n)| format!("{a}:{}", n.store.get(&k).map_or(0, |r| r.0)))
                        .collect();
                    return Err(format!(
                        "key {k}: replica {} holds version {held} < acknowledged {version} (held: {})",
                        p.addr,
                        all.join(" ")
                    ));
                }
            }
        }
        Ok(())
    }

    fn check(&mut self) -> Result<(), String> {
        let r = self.check_ring().and_then(|()| self.check_ownership()).and_then(|()| self.check_data());
        if r.is_err() {
            for (a, n) in &self.nodes {
                let v = n.m.view();
                let line = format!(
                    "VIEW {a} alive={} pred={:?} succs={:?} {:?}",
                    n.alive,
                    v.pred.map(|p| p.addr),
                    addrs(&v.succs),
                    v.standing
                );
                self.trace.push_back(line);
            }
        }
        r
    }
}

fn addrs(ps: &[Peer]) -> Vec<&str> {
    ps.iter().map(|p| p.addr.as_str()).collect()
}

/// Last writer wins, as the store does.
fn merge(store: &mut BTreeMap<u64, Rec>, k: u64, r: Rec) {
    let e = store.entry(k).or_insert((0, None));
    if r > *e {
        *e = r;
    }
}

// ---- scenarios ----

/// One fault the scenario injects, then heals.
#[derive(Clone, Copy, Debug)]
enum Fault {
    Isolate,
    Split,
    Asymmetric,
    Bridge,
    Crash,
    CrashRestart,
    Leave,
    Join,
    Loss,
}

const FAULTS: [Fault; 9] = [
    Fault::Isolate,
    Fault::Split,
    Fault::Asymmetric,
    Fault::Bridge,
    Fault::Crash,
    Fault::CrashRestart,
    Fault::Leave,
    Fault::Join,
    Fault::Loss,
];

fn cut(sim: &mut Sim, a: &str, b: &str) {
    sim.blocked.insert((a.into(), b.into()));
    sim.blocked.insert((b.into(), a.into()));
}

impl Sim {
    fn load(&mut self, dt: Millis) {
        let end = self.now + dt;
        while self.now < end {
            self.run_for(50);
            let live = self.live();
            if live.is_empty() {
                return;
            }
            let entry = live[self.rng.random_range(0..live.len())].clone();
            let k = self.rng.random_range(0..40);
            self.client_write(&entry, k);
        }
    }

    fn inject(&mut self, fault: Fault, next_port: &mut u32) {
        let live = self.live();
        let pick = |rng: &mut StdRng| live[rng.random_range(0..live.len())].clone();
        let a = pick(&mut self.rng);
        self.log(format!("FAULT {fault:?} at {a}"));
        match fault {
            Fault::Isolate | Fault::Split | Fault::Asymmetric | Fault::Bridge => {
                self.counts.partitions += 1;
                match fault {
                    Fault::Isolate => live.iter().filter(|b| **b != a).for_each(|b| cut(self, &a, b)),
                    Fault::Split => {
                        let side: Vec<&String> = live.iter().filter(|_| self.rng.random_bool(0.5)).collect();
                        for x in &side {
                            for y in live.iter().filter(|y| !side.contains(y)) {
                                cut(self, x, y);
                            }
                        }
                    }
                    Fault::Asymmetric => {
                        let b = pick(&mut self.rng);
                        self.blocked.insert((b, a.clone()));
                    }
                    _ => {
                        let c = pick(&mut self.rng);
                        if c != a {
                            cut(self, &a, &c);
                        }
                    }
                }
                let dt = self.rng.random_range(1_000..8_000);
                self.load(dt);
                self.blocked.clear();
            }
            Fault::Crash | Fault::CrashRestart => {
                self.crash(&a);
                let dt = self.rng.random_range(500..5_000);
                self.load(dt);
                // A node alone after its only peer died for good stays cut off (it cannot tell a
                // crash from a partition): permanent crashes only where two nodes remain.
                if matches!(fault, Fault::CrashRestart) || live.len() < 3 {
                    self.restart(&a);
                } else {
                    // A node gone for good takes its copies with it: forget what only it held.
                    self.nodes.remove(&a);
                }
            }
            Fault::Leave if live.len() > 2 => {
                self.counts.leaves += 1;
                self.step(&a, Event::Leave);
            }
            Fault::Join | Fault::Leave => {
                self.counts.joins += 1;
                *next_port += 1;
                let addr = format!("n{next_port}");
                self.add(&addr, vec![a], Saved::default());
            }
            Fault::Loss => {
                self.loss = 0.2;
                let dt = self.rng.random_range(1_000..4_000);
                self.load(dt);
                self.loss = 0.0;
            }
        }
        let dt = self.rng.random_range(0..1_000);
        self.load(dt);
    }

    /// Heals everything, lets the ring settle without load, and checks the invariants.
    fn quiesce(&mut self) -> Result<(), String> {
        self.blocked.clear();
        self.loss = 0.0;
        self.dup = 0.0;
        self.run_for(SETTLE);
        self.check()
    }
}

/// One seeded run: a ring forms, then faults come one after another under load, each followed
/// by a quiescent check.
fn run_seed(seed: u64, sabotage: bool) -> Result<Counts, (String, Vec<String>)> {
    let mut sim = Sim::new(seed);
    sim.sabotage = sabotage;
    sim.balanced = seed % 2 == 1;
    let n = sim.rng.random_range(3..=7);
    sim.add("n0", Vec::new(), Saved::default());
    for i in 1..n {
        let seed_node = format!("n{}", sim.rng.random_range(0..i));
        sim.add(&format!("n{i}"), vec![seed_node], Saved::default());
    }
    sim.dup = 0.02;
    let mut port = n;
    let fail = |sim: &Sim, e: String| (e, sim.trace.iter().cloned().collect());
    sim.load(3_000);
    sim.quiesce().map_err(|e| fail(&sim, format!("after forming: {e}")))?;
    for _ in 0..4 {
        let fault = FAULTS[sim.rng.random_range(0..FAULTS.len())];
        sim.dup = 0.02;
        sim.inject(fault, &mut port);
        sim.quiesce().map_err(|e| fail(&sim, format!("after {fault:?}: {e}")))?;
    }
    Ok(sim.counts)
}

fn seeds_from_env() -> (u64, u64) {
    if let Some(s) = std::env::var("SDHT_SIM_SEED").ok().and_then(|s| s.parse().ok()) {
        return (s, 1);
    }
    let n = std::env::var("SDHT_SIM_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(24);
    (0, n)
}

#[test]
fn sim() {
    let (first, n) = seeds_from_env();
    let mut total = Counts::default();
    for seed in first..first + n {
        match run_seed(seed, false) {
            Ok(c) => {
                total.events += c.events;
                total.partitions += c.partitions;
                total.crashes += c.crashes;
                total.restarts += c.restarts;
                total.leaves += c.leaves;
                total.joins += c.joins;
                total.writes_acked += c.writes_acked;
                total.writes_refused += c.writes_refused;
            }
            Err((e, trace)) => {
                let path = std::env::temp_dir().join(format!("sdht-sim-{seed}.trace"));
                let _ = std::fs::write(&path, trace.join("\n"));
                for line in &trace[trace.len().saturating_sub(TRACE_PRINTED)..] {
                    eprintln!("{line}");
                }
                panic!(
                    "sim: seed {seed} violated an invariant: {e}\nwhole trace: {}\nreplay: SDHT_SIM_SEED={seed} cargo test --release sim",
                    path.display()
                );
            }
        }
    }
    println!(
        "sim: {n} seeds, {} events ({} partitions, {} crashes, {} restarts, {} leaves, {} joins, {} writes acknowledged, {} refused), 0 violations",
        total.events, total.partitions, total.crashes, total.restarts, total.leaves, total.joins, total.writes_acked, total.writes_refused
    );
}

#[test]
fn ring_of_one_two_and_three_settle() {
    for n in 1..=3 {
        let mut sim = Sim::new(n);
        sim.add("n0", Vec::new(), Saved::default());
        for i in 1..n {
            sim.add(&format!("n{i}"), vec!["n0".into()], Saved::default());
        }
        sim.quiesce().unwrap_or_else(|e| panic!("{n} nodes: {e}"));
    }
}

#[test]
fn a_ring_of_one_accepts_writes_and_a_cut_off_node_refuses_them() {
    let mut sim = Sim::new(1);
    sim.add("n0", Vec::new(), Saved::default());
    sim.run_for(1_000);
    sim.client_write("n0", 1);
    assert_eq!(sim.counts.writes_acked, 1, "a new ring of one writes alone");
    sim.add("n1", vec!["n0".into()], Saved::default());
    sim.add("n2", vec!["n0".into()], Saved::default());
    sim.quiesce().unwrap();
    for b in ["n1", "n2"] {
        cut(&mut sim, "n0", b);
    }
    sim.run_for(5_000);
    assert!(sim.nodes["n0"].m.view().cut_off);
    let refused = sim.counts.writes_refused;
    for k in 0..20 {
        sim.client_write("n0", k);
    }
    assert_eq!(sim.counts.writes_refused, refused + 20, "the cut-off node refuses every write");
    sim.quiesce().unwrap();
}

/// `n` nodes join through one seed at once (their first rounds spread over one period), the
/// seed holding 20 keys per node. Returns the simulated time until every node's successor list
/// and predecessor are right, and the max/mean of keys owned per node and of range widths.
fn mass_join(n: usize, seed: u64, balanced: bool) -> (Millis, f64, f64) {
    let mut sim = Sim::new(seed);
    sim.balanced = balanced;
    sim.add("n0", Vec::new(), Saved::default());
    sim.run_for(1_000);
    for k in 0..20 * n as u64 {
        sim.client_write("n0", k);
    }
    for i in 1..n {
        sim.add(&format!("n{i}"), vec!["n0".into()], Saved::default());
    }
    let start = sim.now;
    while let Err(e) = sim.check_ring() {
        assert!(sim.now - start < 300_000, "{n} joins at once: no ring after 300 s: {e}");
        sim.run_for(20);
    }
    let took = sim.now - start;
    let ids: Vec<Id> = sim.sorted_members().iter().map(|p| p.id).collect();
    let mut owned = BTreeMap::<Id, usize>::new();
    for k in sim.acked.keys() {
        *owned.entry(owner_of(&ids, key_of(*k)).unwrap()).or_default() += 1;
    }
    let keys = *owned.values().max().unwrap() as f64 / (sim.acked.len() as f64 / n as f64);
    let widest = (0..n).map(|i| ids[(i + n - 1) % n].distance_to(ids[i])).max().unwrap();
    (took, keys, widest as f64 / (2f64.powi(64) / n as f64))
}

#[test]
fn mass_joins_converge_in_a_few_periods() {
    for (n, limit) in [(64, 2_000), (256, 2_500)] {
        for seed in 0..2 {
            for balanced in [false, true] {
                let (took, keys, width) = mass_join(n, seed, balanced);
                println!(
                    "sim: {n} simultaneous joins, seed {seed}, balanced {balanced}: one ring after {took} ms, max/mean keys {keys:.2}, range {width:.2}"
                );
                assert!(took <= limit, "{n} joins took {took} ms (limit {limit})");
                if balanced {
                    assert!(keys <= 1.5 && width <= 2.0, "unbalanced: keys {keys:.2}, range {width:.2}");
                }
            }
        }
    }
}
