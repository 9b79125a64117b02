//! The membership protocol as a deterministic state machine: `step(now, Event) -> Vec<Action>`.
//!
//! Everything a node learns arrives as an [`Event`] (a peer's answer or its failure, a tick,
//! a notify, a finished copy, a leave request); everything it must do leaves as an [`Action`]
//! (call this peer with this message, copy this range there, wait for old writes to drain,
//! drop a range, persist, exit). The node's executor (`src/node/membership.rs`) and the
//! simulator (`sim.rs`) both drive this same code; neither decides anything about the ring.
//!
//! Rules (Chord with Zave's corrections, plus ring merging after partitions):
//! - join: find successor(own id) through a seed; successor list = [succ], no predecessor.
//! - stabilize (each tick): ask the successor for its predecessor and list; adopt
//!   `[succ] + list` trimmed to r, and the successor's predecessor if it lies strictly between
//!   (unless this node found it unreachable and it has not answered since); notify the
//!   successor. A dead successor is dropped for the next entry at once.
//! - rectify (notify's receiver): a candidate strictly between the predecessor and us (or any,
//!   with no predecessor) is checked (it must answer and name us as its successor), handed
//!   its range (copy, write-through, then an ownership switch at a new epoch), then adopted. An
//!   established member that rectifies a node whose predecessor died already holds its keys:
//!   it is adopted without a copy.
//! - failure: a refused connection is death at once; a silent peer dies after `strikes`
//!   silences in a row. The dead go to a bounded *lost* list and are probed with back-off;
//!   one that answers again is merged back (a lookup of our id in its ring, adopting a closer
//!   successor there), which is how rings split by a partition become one again.
//! - leave: copy everything to the successor, tell it (it takes the range over), switch to
//!   departed, tell the predecessor, exit.
//! - replication: after any change of the owned range or of the next R-1 successors, push the
//!   range to them once (`Copy` with `CopyKind::Replicate`).
//!
//! Must not touch: I/O, clocks, randomness, storage. Time comes in as `now` (milliseconds on
//! any monotonic scale) and the node's saved state as [`Saved`].

use std::collections::BTreeMap;

use super::view::{Peer, Standing, View, WriteThrough};
use super::{Id, Interval};

/// Milliseconds on the caller's monotonic clock.
pub type Millis = u64;

/// Most peers remembered as lost (probed for a merge): a ring rarely loses more at once, and
/// each costs a probe now and then.
pub const MAX_LOST: usize = 64;
/// First wait before probing a lost peer again; doubles up to `PROBE_MAX`.
pub const PROBE_FIRST: Millis = 200;
/// Longest wait between two probes of a lost peer: a healed partition is noticed within this.
pub const PROBE_MAX: Millis = 2_000;
/// A lost peer unreachable for this long is forgotten: it is treated as gone for good (it
/// discards its data if it ever restarts, see `Saved`), and tombstones may be purged again.
pub const FORGET_AFTER: Millis = 24 * 3600 * 1000;
/// Tries to tell the predecessor that we left before exiting anyway.
const TELL_PRED_TRIES: u32 = 5;
/// Wait before the next round after something changed (a new successor or predecessor, a
/// handoff step, a failed call): the wait then doubles at every round in which nothing changes,
/// up to the steady period, so a joining ring repairs itself at once and an idle one costs what
/// it did with a fixed period (a handful of extra rounds after each change).
pub const HURRY: Millis = 10;

/// Fixed parameters of the protocol.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Successor-list length r.
    pub successors: usize,
    /// Copies of each key R (at most r).
    pub replicas: usize,
    /// Silences in a row after which a peer that accepts connections is dead.
    pub strikes: u32,
    /// How long a join keeps trying its seeds.
    pub join_deadline: Millis,
    /// How long a leave keeps trying to hand its keys over before exiting with them.
    pub leave_deadline: Millis,
    /// The steady stabilize period: the longest wait between two rounds (see [`HURRY`]).
    pub period: Millis,
}

/// Identifies one outgoing call, so its answer finds the question.
pub type CallId = u64;
/// Identifies one copy job (handoff or replication), so its end finds its purpose.
pub type JobId = u64;
/// Identifies an incoming message that waits for the state machine's verdict.
pub type Ticket = u64;

/// What this node asks another.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Msg {
    FindSuccessor(Id),
    /// Predecessor and successor list (stabilize, pings, probes, the joiner check).
    Neighbors,
    /// We think we are the receiver's predecessor.
    Notify,
    /// The handoff to the receiver is complete; `pred` precedes it now.
    HandoffDone {
        pred: Option<Peer>,
    },
    /// We leave; we sat between `pred` and `succ`.
    Leaving {
        pred: Option<Peer>,
        succ: Peer,
    },
}

/// A peer's answer.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Reply {
    Successor(Peer),
    Neighbors {
        pred: Option<Peer>,
        succs: Vec<Peer>,
    },
    Ack,
    /// It cannot take this now (joining, leaving, busy); ask again later.
    Busy,
}

/// How a call failed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Failure {
    /// The connection was refused: the process is gone.
    Gone,
    /// No answer in time, or the connection died: maybe slow, maybe cut off.
    Silent,
    /// The peer answered with an error (for example it refused our credentials).
    Rejected,
}

/// Why a range is copied.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum CopyKind {
    /// To a new predecessor, before it takes the range over.
    Join,
    /// Everything to the successor, before this node leaves.
    Leave,
    /// The owned range to a replica.
    Replicate,
}

/// What the node keeps on disk for a restart.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct Saved {
    pub successor: Option<Peer>,
    /// Peers lost (not left) and the seeds: probed after a restart as after a partition.
    pub lost: Vec<Peer>,
}

/// Everything the node learns.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Event {
    /// The stabilize period elapsed.
    Tick,
    Answer {
        call: CallId,
        reply: Reply,
    },
    Failed {
        call: CallId,
        failure: Failure,
    },
    /// `from` says it is our predecessor.
    Notified {
        from: Peer,
    },
    /// The node that handed us our range says who precedes us.
    HandoffDone {
        from: Peer,
        pred: Option<Peer>,
    },
    /// A neighbour leaves; answer `ticket` once we took its place into account.
    NeighborLeaving {
        ticket: Ticket,
        node: Peer,
        pred: Option<Peer>,
        succ: Peer,
    },
    CopyDone {
        job: JobId,
        ok: bool,
    },
    /// Every write begun before `epoch` has ended.
    Drained {
        epoch: u64,
    },
    /// A write sent through to a handoff's receiver failed.
    WriteThroughFailed {
        job: JobId,
    },
    /// A request (forward, replica write) found this peer unreachable.
    Unreachable {
        peer: Peer,
        failure: Failure,
    },
    /// A replica did not acknowledge a write: push the owned range to the replicas again.
    ReplicaMissed,
    /// Leave the ring gracefully.
    Leave,
}

/// A membership change worth a log line.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Change {
    Joined { succ: Peer },
    SuccessorChanged { old: Peer, new: Peer },
    PredecessorChanged { new: Peer, copied: bool },
    HandoffStarted { to: Peer, kind: CopyKind },
    HandoffAborted { to: Peer },
    PeerDead { peer: Peer },
    PeerBack { peer: Peer },
    NeighborLeft { node: Peer },
    Left,
}

/// Everything the node must do.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Action {
    Call {
        call: CallId,
        to: Peer,
        msg: Msg,
    },
    /// Send every record of `range` to `to`; report `CopyDone`.
    Copy {
        job: JobId,
        range: Interval,
        to: Peer,
        kind: CopyKind,
    },
    /// Report `Drained { epoch }` once no write begun under an older epoch is running.
    AwaitDrain {
        epoch: u64,
    },
    /// Remove the local copy of a range another node owns now.
    DropRange(Interval),
    Persist(Saved),
    /// Answer an incoming message (`Ack` if accepted).
    Respond {
        ticket: Ticket,
        accepted: bool,
    },
    Log(Change),
    /// Joining failed for good: no seed answered before the deadline, a seed refused us
    /// (`refused`), or the ring still links our address (`still_member`).
    JoinFailed {
        still_member: bool,
        refused: bool,
    },
    /// The node may stop now.
    Exit,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Phase {
    Joining { seeds: Vec<String>, next: usize, deadline: Millis, saved_succ: Option<Peer> },
    Member,
    Leaving { deadline: Millis },
    Departed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// Waiting for the candidate to confirm it names us as its successor.
    Checking,
    Copying,
    /// Leave: the successor is being told it takes over.
    Informing,
    /// Ownership switched at this epoch; waiting for older writes to end.
    Draining(u64),
}

#[derive(Clone, Debug)]
struct Handoff {
    job: JobId,
    kind: CopyKind,
    range: Interval,
    to: Peer,
    stage: Stage,
    /// The predecessor before a join handoff switched (told to the new one).
    old_pred: Option<Peer>,
}

/// What an outstanding call was for.
#[derive(Clone, Debug)]
enum Purpose {
    Join(Peer),
    Stabilize(Peer),
    PingPred(Peer),
    Notify(Peer),
    CheckJoiner(JobId),
    HandoffDone,
    LeavingSucc(JobId),
    LeavingPred { tries: u32 },
    Probe(Peer),
    MergeLookup(Peer),
}

/// A peer this node lost (found unreachable), probed with back-off until it is linked to us
/// again or its ring agrees with ours.
#[derive(Clone, Debug)]
struct Lost {
    peer: Peer,
    next_probe: Millis,
    backoff: Millis,
    probing: bool,
    /// It answered us directly since: no longer filtered out of what neighbours tell us.
    reachable: bool,
    /// When it was last found unreachable.
    since: Millis,
}

/// (owned range, replica targets): what a completed replication push was for.
type ReplicaSig = (Interval, Vec<Peer>);

#[derive(Clone, Debug)]
struct Replication {
    sig: ReplicaSig,
    jobs: Vec<JobId>,
    ok: bool,
}

/// One node's membership state. See the module docs for the rules.
#[derive(Clone, Debug)]
pub struct Membership {
    me: Peer,
    settings: Settings,
    phase: Phase,
    pred: Option<Peer>,
    succs: Vec<Peer>,
    epoch: u64,
    handoff: Option<Handoff>,
    calls: BTreeMap<CallId, Purpose>,
    next_id: u64,
    strikes: BTreeMap<Peer, u32>,
    stabilizing: bool,
    replication: Option<Replication>,
    replicated_for: Option<ReplicaSig>,
    lost: BTreeMap<String, Lost>,
    seeds: Vec<String>,
    /// The predecessor we are telling that we left, after departing.
    leaving_pred: Option<Peer>,
    /// This node has had a predecessor (it is no newcomer: it may hold keys to hand over).
    had_pred: bool,
    /// When the executor delivers the next `Tick` ([`Membership::next_tick`]).
    next_tick: Millis,
    /// The wait after the next round if nothing changes: [`HURRY`] doubling up to the period.
    backoff: Millis,
    /// The successor named us as its predecessor in its last answer.
    confirmed: bool,
    /// A notifier that came while a handoff ran: rectified as soon as that ends, instead of
    /// waiting for its next round (one slot: later ones notify again, and the process
    /// splits a crowd of joiners like a random binary search tree).
    waiting: Option<Peer>,
}

impl Membership {
    /// A new ring of one.
    pub fn alone(me: Peer, settings: Settings) -> Membership {
        Membership {
            succs: vec![me.clone()],
            me,
            settings,
            phase: Phase::Member,
            pred: None,
            epoch: 0,
            handoff: None,
            calls: BTreeMap::new(),
            next_id: 1,
            strikes: BTreeMap::new(),
            stabilizing: false,
            replication: None,
            replicated_for: None,
            lost: BTreeMap::new(),
            seeds: Vec::new(),
            leaving_pred: None,
            had_pred: false,
            next_tick: 0,
            backoff: HURRY,
            confirmed: false,
            waiting: None,
        }
    }

    /// A node that will join through `seeds` (the bootstrap, then whatever `saved` remembers).
    /// Without seeds or saved peers it is a new ring of one. The first `Tick` starts the join.
    pub fn start(me: Peer, settings: Settings, seeds: Vec<String>, saved: Saved, now: Millis) -> Membership {
        let mut m = Membership::alone(me, settings);
        m.next_tick = now;
        let saved_succ = saved.successor.filter(|p| *p != m.me);
        let mut all: Vec<String> = seeds.clone();
        all.extend(saved_succ.iter().map(|p| p.addr.clone()));
        all.extend(saved.lost.iter().map(|p| p.addr.clone()));
        all.retain(|a| *a != m.me.addr);
        all.dedup();
        m.seeds = seeds;
        for p in &saved.lost {
            m.remember_lost(p.clone(), now);
        }
        if !all.is_empty() {
            let deadline = now + m.settings.join_deadline;
            m.phase = Phase::Joining { seeds: all, next: 0, deadline, saved_succ };
        }
        m
    }

    pub fn me(&self) -> &Peer {
        &self.me
    }

    /// The snapshot requests route by.
    pub fn view(&self) -> View {
        let standing = match self.phase {
            Phase::Joining { .. } => Standing::Joining,
            Phase::Member | Phase::Leaving { .. } => Standing::Member,
            Phase::Departed => Standing::Departed,
        };
        let write_through =
            self.handoff.as_ref().filter(|h| h.stage == Stage::Copying || h.stage == Stage::Informing);
        View {
            me: self.me.clone(),
            pred: self.pred.clone(),
            succs: self.succs.clone(),
            standing,
            epoch: self.epoch,
            write_through: write_through.map(|h| WriteThrough {
                job: h.job,
                range: h.range,
                to: h.to.clone(),
            }),
            replicas: self.settings.replicas,
            cut_off: self.is_alone() && !self.lost.is_empty(),
            unreachable: self.lost.values().filter(|l| !l.reachable).count(),
        }
    }

    /// When the executor must deliver the next `Tick` (same clock as `now`). Soon after a
    /// change, then backing off to the steady period while nothing changes; earlier than
    /// the steady period while the successor has not confirmed us as its predecessor.
    pub fn next_tick(&self) -> Millis {
        self.next_tick
    }

    /// What a restart needs.
    pub fn saved(&self) -> Saved {
        let mut lost: Vec<Peer> = self.lost.values().map(|l| l.peer.clone()).collect();
        for s in &self.seeds {
            if !self.lost.contains_key(s) && *s != self.me.addr {
                // A seed is known by its address only; its id is looked up when it answers.
                lost.push(Peer::new(s.clone()));
            }
        }
        let successor = (!self.is_alone()).then(|| self.succs[0].clone());
        Saved { successor, lost }
    }

    fn is_alone(&self) -> bool {
        self.succs[0] == self.me
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn call(&mut self, to: Peer, msg: Msg, purpose: Purpose, out: &mut Vec<Action>) {
        let call = self.id();
        self.calls.insert(call, purpose);
        out.push(Action::Call { call, to, msg });
    }

    /// Feeds one event to the state machine and returns what the node must do.
    pub fn step(&mut self, now: Millis, event: Event) -> Vec<Action> {
        let before = self.shape();
        let tick = event == Event::Tick;
        let mut urgent = false;
        let mut out = self.dispatch(now, event, &mut urgent);
        if self.handoff.is_none() {
            if let Some(c) = self.waiting.take() {
                self.on_notify(c, &mut out);
            }
        }
        urgent |= self.shape() != before;
        self.reschedule(now, tick, urgent);
        out
    }

    /// What a step may change that calls for another round soon.
    fn shape(&self) -> (Option<Peer>, Vec<Peer>, Option<Stage>, u64) {
        let stage = self.handoff.as_ref().map(|h| h.stage);
        (self.pred.clone(), self.succs.clone(), stage, self.epoch)
    }

    /// Sets `next_tick`: after a tick, the current back-off (doubled for the next time); after
    /// a change (`urgent`), soon.
    fn reschedule(&mut self, now: Millis, tick: bool, urgent: bool) {
        let period = self.settings.period.max(HURRY);
        if tick {
            let settled = self.confirmed || self.is_alone() || self.phase != Phase::Member;
            let cap = if settled { period } else { (period / 4).max(HURRY) };
            self.next_tick = now + self.backoff.min(cap);
            self.backoff = (self.backoff * 2).min(period);
        }
        if urgent {
            self.backoff = HURRY;
            self.next_tick = self.next_tick.min(now + HURRY);
        }
    }

    fn dispatch(&mut self, now: Millis, event: Event, urgent: &mut bool) -> Vec<Action> {
        let mut out = Vec::new();
        match event {
            Event::Tick => self.on_tick(now, &mut out),
            Event::Answer { call, reply } => {
                if let Some(p) = self.calls.remove(&call) {
                    self.on_answer(p, reply, &mut out);
                }
            }
            Event::Failed { call, failure } => {
                if let Some(p) = self.calls.remove(&call) {
                    *urgent = matches!(p, Purpose::Stabilize(_) | Purpose::PingPred(_) | Purpose::Notify(_));
                    self.on_failed(now, p, failure, &mut out);
                }
            }
            Event::Notified { from } => self.on_notify(from, &mut out),
            Event::HandoffDone { from: _, pred } => self.on_predecessor_hint(pred),
            Event::NeighborLeaving { ticket, node, pred, succ } => {
                let accepted = self.on_neighbor_leaving(&node, pred, succ, &mut out);
                out.push(Action::Respond { ticket, accepted });
            }
            Event::CopyDone { job, ok } => self.on_copy_done(job, ok, &mut out),
            Event::Drained { epoch } => self.on_drained(epoch, &mut out),
            Event::WriteThroughFailed { job } => {
                if self.handoff.as_ref().is_some_and(|h| h.job == job && h.stage == Stage::Copying) {
                    self.abort_handoff(&mut out);
                }
            }
            Event::Unreachable { peer, failure } => self.strike(now, &peer, failure, &mut out),
            Event::ReplicaMissed => {
                // A push running now may have read the range before the missed write: it
                // does not count either.
                self.replicated_for = None;
                if let Some(r) = self.replication.as_mut() {
                    r.ok = false;
                }
            }
            Event::Leave => self.on_leave(now, &mut out),
        }
        out
    }

    // ---- ticks: join attempts, stabilize rounds, probes, leave retries ----

    fn on_tick(&mut self, now: Millis, out: &mut Vec<Action>) {
        match &self.phase {
            Phase::Joining { .. } => return self.try_join(now, out),
            Phase::Departed => return,
            Phase::Leaving { deadline } => {
                if now >= *deadline {
                    out.push(Action::Log(Change::Left));
                    out.push(Action::Exit);
                    return;
                }
                if self.handoff.is_none() {
                    self.begin_leave(out);
                }
            }
            Phase::Member => {}
        }
        self.probe_lost(now, out);
        if self.stabilizing {
            return;
        }
        if let Some(p) = self.pred.clone() {
            if !self.calls.values().any(|c| matches!(c, Purpose::PingPred(_))) {
                self.call(p.clone(), Msg::Neighbors, Purpose::PingPred(p), out);
            }
        }
        self.stabilize(out);
    }

    fn try_join(&mut self, now: Millis, out: &mut Vec<Action>) {
        if self.calls.values().any(|c| matches!(c, Purpose::Join(_))) {
            return;
        }
        let Phase::Joining { seeds, next, deadline, .. } = &mut self.phase else { return };
        if now >= *deadline {
            if self.seeds.is_empty() {
                // Restarted without --bootstrap and no saved peer answers: serve alone, cut off
                // (it remembers them as lost and refuses writes), until one answers a probe.
                self.phase = Phase::Member;
                return;
            }
            out.push(Action::JoinFailed { still_member: false, refused: false });
            return;
        }
        let seed = Peer::new(seeds[*next % seeds.len()].clone());
        *next += 1;
        let me = self.me.id;
        self.call(seed.clone(), Msg::FindSuccessor(me), Purpose::Join(seed), out);
    }

    fn stabilize(&mut self, out: &mut Vec<Action>) {
        if self.is_alone() {
            match self.pred.clone() {
                // Someone joined a ring of one: that predecessor is our successor too.
                Some(p) => self.succs = vec![p],
                None => return,
            }
        }
        self.stabilizing = true;
        let target = self.succs[0].clone();
        self.call(target.clone(), Msg::Neighbors, Purpose::Stabilize(target), out);
    }

    fn probe_lost(&mut self, now: Millis, out: &mut Vec<Action>) {
        let before = self.lost.len();
        self.lost.retain(|_, l| l.reachable || now.saturating_sub(l.since) < FORGET_AFTER);
        if self.lost.len() != before {
            out.push(Action::Persist(self.saved()));
        }
        let due: Vec<Peer> = self
            .lost
            .values_mut()
            .filter(|l| !l.probing && l.next_probe <= now)
            .map(|l| {
                l.probing = true;
                l.next_probe = now + l.backoff;
                l.backoff = (l.backoff * 2).min(PROBE_MAX);
                l.peer.clone()
            })
            .collect();
        for p in due {
            self.call(p.clone(), Msg::Neighbors, Purpose::Probe(p), out);
        }
    }

    // ---- answers ----

    fn on_answer(&mut self, purpose: Purpose, reply: Reply, out: &mut Vec<Action>) {
        if let Some(p) = purpose_peer(&purpose) {
            self.strikes.remove(p);
        }
        match (purpose, reply) {
            (Purpose::Join(_), Reply::Successor(s)) => self.joined(s, out),
            (Purpose::Join(_), _) => {}
            (Purpose::Stabilize(target), Reply::Neighbors { pred, succs }) => {
                self.stabilizing = false;
                self.on_successor_reply(&target, pred, succs, out);
            }
            (Purpose::Stabilize(_), _) => self.stabilizing = false,
            (Purpose::CheckJoiner(job), Reply::Neighbors { succs, .. }) => {
                self.on_joiner_checked(job, succs.first() == Some(&self.me), out)
            }
            (Purpose::CheckJoiner(job), _) => self.on_joiner_checked(job, false, out),
            (Purpose::LeavingSucc(job), Reply::Ack) => self.on_successor_took_over(job, out),
            (Purpose::LeavingSucc(_), _) => self.abort_handoff(out),
            (Purpose::LeavingPred { .. }, _) => out.push(Action::Exit),
            (Purpose::Probe(peer), Reply::Neighbors { .. }) => self.on_probe_answered(peer, out),
            (Purpose::Probe(peer), _) => self.probe_failed(&peer),
            (Purpose::MergeLookup(via), Reply::Successor(s)) => self.on_merge_lookup(via, s, out),
            (
                Purpose::PingPred(_) | Purpose::Notify(_) | Purpose::HandoffDone | Purpose::MergeLookup(_),
                _,
            ) => {}
        }
    }

    fn on_failed(&mut self, now: Millis, purpose: Purpose, failure: Failure, out: &mut Vec<Action>) {
        if let Some(p) = purpose_peer(&purpose).cloned() {
            if !matches!(purpose, Purpose::Join(_) | Purpose::Probe(_)) {
                self.strike(now, &p, failure, out);
            }
        }
        match purpose {
            Purpose::Join(_) if failure == Failure::Rejected => {
                out.push(Action::JoinFailed { still_member: false, refused: true })
            }
            Purpose::Stabilize(target) => {
                self.stabilizing = false;
                // The dead successor was dropped: ask the next one in the same round.
                if self.succs[0] != target && matches!(self.phase, Phase::Member | Phase::Leaving { .. }) {
                    self.stabilize(out);
                }
            }
            Purpose::CheckJoiner(job) => self.on_joiner_checked(job, false, out),
            Purpose::LeavingSucc(_) => self.abort_handoff(out),
            Purpose::LeavingPred { tries } if tries < TELL_PRED_TRIES => {
                if let Some(p) = self.leaving_pred.clone() {
                    let msg = Msg::Leaving { pred: Some(p.clone()), succ: self.succs[0].clone() };
                    self.call(p, msg, Purpose::LeavingPred { tries: tries + 1 }, out);
                }
            }
            Purpose::LeavingPred { .. } => out.push(Action::Exit),
            Purpose::Probe(peer) => self.probe_failed(&peer),
            _ => {}
        }
    }

    fn joined(&mut self, succ: Peer, out: &mut Vec<Action>) {
        let Phase::Joining { saved_succ, .. } = &self.phase else { return };
        let succ = if succ == self.me {
            // The ring still links this address: a restart in place before anyone noticed.
            // The successor from before is still right.
            match saved_succ.clone() {
                Some(s) => s,
                None => return out.push(Action::JoinFailed { still_member: true, refused: false }),
            }
        } else {
            succ
        };
        self.phase = Phase::Member;
        self.lost.remove(&succ.addr);
        self.succs = vec![succ.clone()];
        out.push(Action::Log(Change::Joined { succ }));
        out.push(Action::Persist(self.saved()));
        self.stabilize(out);
    }

    /// Zave's stabilize, after the successor `from` answered with its predecessor `x` and its
    /// own list: ours becomes `[from] + its list` (cut where it comes back round to us and
    /// without peers we found unreachable), trimmed to r; x becomes the head if strictly
    /// between. Then notify whoever is our successor now.
    fn on_successor_reply(&mut self, from: &Peer, x: Option<Peer>, list: Vec<Peer>, out: &mut Vec<Action>) {
        if self.phase == Phase::Departed || *from != self.succs[0] {
            return; // stale: our successor changed while the question was out
        }
        let old = self.succs[0].clone();
        let mut succs = vec![from.clone()];
        for p in list.into_iter().take_while(|p| *p != self.me) {
            if !succs.contains(&p) && !self.unreachable(&p) {
                succs.push(p);
            }
        }
        self.confirmed = x.as_ref() == Some(&self.me);
        let mut closer = false;
        if let Some(x) = x.filter(|x| !self.unreachable(x)) {
            if x.id.strictly_between(self.me.id, from.id) && x != self.me {
                succs.retain(|p| *p != x);
                succs.insert(0, x);
                closer = true;
            }
        }
        succs.truncate(self.settings.successors);
        self.set_successors(succs, &old, out);
        if closer {
            // Redirected to a closer successor: ask it at once (each answer is strictly closer
            // to us, so this walk ends), and notify whoever turns out to be the right one.
            return self.stabilize(out);
        }
        if !self.is_alone() {
            let s = self.succs[0].clone();
            self.call(s.clone(), Msg::Notify, Purpose::Notify(s), out);
        }
        self.maybe_replicate(out);
    }

    /// Adopts a successor list; persists it if it changed. Returns whether it did.
    fn set_successors(&mut self, succs: Vec<Peer>, old: &Peer, out: &mut Vec<Action>) -> bool {
        let changed = succs != self.succs;
        self.succs = succs;
        if self.succs[0] != *old {
            out.push(Action::Log(Change::SuccessorChanged { old: old.clone(), new: self.succs[0].clone() }));
        }
        if changed {
            out.push(Action::Persist(self.saved()));
        }
        changed
    }

    // ---- rectify: a new predecessor ----

    fn on_notify(&mut self, cand: Peer, out: &mut Vec<Action>) {
        if self.phase != Phase::Member || cand == self.me {
            return;
        }
        if self.handoff.is_some() {
            if self.waiting.is_none() {
                self.waiting = Some(cand);
            }
            return;
        }
        let after = match &self.pred {
            Some(p) if !cand.id.strictly_between(p.id, self.me.id) => return,
            Some(p) => p.id,
            // No predecessor known: everything outside (cand, me] belongs to cand's side.
            None => self.me.id,
        };
        let job = self.id();
        let range = Interval::new(after, cand.id);
        self.handoff = Some(Handoff {
            job,
            kind: CopyKind::Join,
            range,
            to: cand.clone(),
            stage: Stage::Checking,
            old_pred: None,
        });
        self.call(cand, Msg::Neighbors, Purpose::CheckJoiner(job), out);
    }

    /// The candidate answered (or not): it must name us as its successor, otherwise a notify
    /// from a stale or made-up address could take a range over with no keys in it. It gets
    /// (our predecessor, cand] copied; with no predecessor known, everything outside (cand, me]:
    /// without a predecessor we may have answered for any of it (after a crash, a merge or a
    /// false suspicion), and the receiver routes what is not its own back to its owners.
    fn on_joiner_checked(&mut self, job: JobId, names_us: bool, out: &mut Vec<Action>) {
        let Some(h) = self.handoff.as_mut().filter(|h| h.job == job && h.stage == Stage::Checking) else {
            return;
        };
        if !names_us {
            self.handoff = None;
            return;
        }
        h.stage = Stage::Copying;
        let (to, range, kind) = (h.to.clone(), h.range, h.kind);
        self.forget_lost(&to, out);
        out.push(Action::Log(Change::HandoffStarted { to: to.clone(), kind }));
        out.push(Action::Copy { job, range, to, kind });
    }

    fn on_copy_done(&mut self, job: JobId, ok: bool, out: &mut Vec<Action>) {
        if self.on_replica_copy_done(job, ok, out) {
            return;
        }
        let Some(h) = self.handoff.as_ref().filter(|h| h.job == job && h.stage == Stage::Copying) else {
            return;
        };
        if !ok {
            return self.abort_handoff(out);
        }
        let (kind, to) = (h.kind, h.to.clone());
        match kind {
            CopyKind::Join => {
                self.epoch += 1;
                let old_pred = self.pred.replace(to.clone());
                self.had_pred = true;
                if self.is_alone() {
                    self.succs = vec![to];
                }
                if let Some(h) = self.handoff.as_mut() {
                    h.stage = Stage::Draining(self.epoch);
                    h.old_pred = old_pred;
                }
                out.push(Action::AwaitDrain { epoch: self.epoch });
            }
            CopyKind::Leave => {
                if let Some(h) = self.handoff.as_mut() {
                    h.stage = Stage::Informing;
                }
                let msg = Msg::Leaving { pred: self.pred.clone(), succ: to.clone() };
                self.call(to, msg, Purpose::LeavingSucc(job), out);
            }
            CopyKind::Replicate => {}
        }
    }

    /// Leave: the successor took our range over; we are departed from now on.
    fn on_successor_took_over(&mut self, job: JobId, out: &mut Vec<Action>) {
        let Some(h) = self.handoff.as_mut().filter(|h| h.job == job && h.stage == Stage::Informing) else {
            return;
        };
        self.epoch += 1;
        h.stage = Stage::Draining(self.epoch);
        self.phase = Phase::Departed;
        out.push(Action::AwaitDrain { epoch: self.epoch });
    }

    fn on_drained(&mut self, epoch: u64, out: &mut Vec<Action>) {
        let Some(h) = self.handoff.take_if(|h| h.stage == Stage::Draining(epoch)) else { return };
        match h.kind {
            CopyKind::Join => {
                let msg = Msg::HandoffDone { pred: h.old_pred.clone() };
                self.call(h.to.clone(), msg, Purpose::HandoffDone, out);
                out.push(Action::Log(Change::PredecessorChanged { new: h.to.clone(), copied: true }));
                if self.settings.replicas == 1 {
                    out.push(Action::DropRange(h.range));
                }
                out.push(Action::Persist(self.saved()));
                self.maybe_replicate(out);
            }
            CopyKind::Leave => {
                out.push(Action::DropRange(h.range));
                out.push(Action::Log(Change::Left));
                match self.pred.clone().filter(|p| *p != h.to) {
                    Some(p) => {
                        self.leaving_pred = Some(p.clone());
                        let msg = Msg::Leaving { pred: Some(p.clone()), succ: h.to.clone() };
                        self.call(p, msg, Purpose::LeavingPred { tries: 1 }, out);
                    }
                    None => out.push(Action::Exit),
                }
            }
            CopyKind::Replicate => {}
        }
    }

    fn abort_handoff(&mut self, out: &mut Vec<Action>) {
        if let Some(h) = self.handoff.take() {
            out.push(Action::Log(Change::HandoffAborted { to: h.to }));
        }
    }

    /// A newcomer learns its predecessor from the node that handed it its range. A node that
    /// has had a predecessor ignores the hint: it may hold keys the new one must get, and
    /// gets them to it through notify and a handoff.
    fn on_predecessor_hint(&mut self, p: Option<Peer>) {
        let Some(p) = p else { return };
        if self.phase != Phase::Member || p == self.me || self.unreachable(&p) || self.had_pred {
            return;
        }
        let adopt = match &self.pred {
            None => true,
            Some(cur) => p.id.strictly_between(cur.id, self.me.id),
        };
        if adopt {
            self.pred = Some(p);
            self.had_pred = true;
        }
    }

    // ---- leave ----

    fn on_leave(&mut self, now: Millis, out: &mut Vec<Action>) {
        match self.phase {
            Phase::Member => {}
            Phase::Joining { .. } => return out.push(Action::Exit),
            _ => return,
        }
        if self.is_alone() && self.pred.is_none() {
            out.push(Action::Log(Change::Left));
            return out.push(Action::Exit);
        }
        self.phase = Phase::Leaving { deadline: now + self.settings.leave_deadline };
        if self.handoff.is_none() {
            self.begin_leave(out);
        }
    }

    fn begin_leave(&mut self, out: &mut Vec<Action>) {
        if self.is_alone() {
            if let Some(p) = self.pred.clone() {
                self.succs = vec![p];
            } else {
                out.push(Action::Log(Change::Left));
                return out.push(Action::Exit);
            }
        }
        let job = self.id();
        // The whole ring, not just (pred, me]: a node may hold strays from before a restart.
        let range = Interval::new(self.me.id, self.me.id);
        let to = self.succs[0].clone();
        self.handoff = Some(Handoff {
            job,
            kind: CopyKind::Leave,
            range,
            to: to.clone(),
            stage: Stage::Copying,
            old_pred: None,
        });
        out.push(Action::Log(Change::HandoffStarted { to: to.clone(), kind: CopyKind::Leave }));
        out.push(Action::Copy { job, range, to, kind: CopyKind::Leave });
    }

    /// A neighbour leaves: it sat between `its_pred` and `its_succ`; whichever of our pointers
    /// named it now skips over it.
    fn on_neighbor_leaving(
        &mut self,
        node: &Peer,
        its_pred: Option<Peer>,
        its_succ: Peer,
        out: &mut Vec<Action>,
    ) -> bool {
        if matches!(self.phase, Phase::Joining { .. } | Phase::Departed) {
            return false;
        }
        let old = self.succs[0].clone();
        if self.pred.as_ref() == Some(node) {
            self.epoch += 1;
            self.pred = its_pred.filter(|p| *p != self.me);
            self.had_pred = true;
        }
        let mut succs = self.succs.clone();
        if let Some(i) = succs.iter().position(|p| p == node) {
            succs.remove(i);
            if i == 0 && its_succ != self.me && !succs.contains(&its_succ) {
                succs.insert(0, its_succ);
            }
        }
        if succs.is_empty() {
            succs.push(self.me.clone());
        }
        self.set_successors(succs, &old, out);
        self.lost.remove(&node.addr);
        out.push(Action::Log(Change::NeighborLeft { node: node.clone() }));
        true
    }

    // ---- failure detection, lost peers and merging ----

    /// A call to `peer` failed: dead at once if gone, after `strikes` silences in a row if
    /// silent. A rejection is an answer, not a failure of the peer.
    fn strike(&mut self, now: Millis, peer: &Peer, failure: Failure, out: &mut Vec<Action>) {
        if failure == Failure::Rejected || *peer == self.me {
            return;
        }
        let n = self.strikes.entry(peer.clone()).or_insert(0);
        *n += 1;
        if failure == Failure::Gone || *n >= self.settings.strikes {
            self.strikes.remove(peer);
            self.declare_dead(now, peer, out);
        }
    }

    fn declare_dead(&mut self, now: Millis, dead: &Peer, out: &mut Vec<Action>) {
        let known = self.succs.contains(dead) || self.pred.as_ref() == Some(dead);
        if !known {
            return;
        }
        let old = self.succs[0].clone();
        let mut succs: Vec<Peer> = self.succs.iter().filter(|p| *p != dead).cloned().collect();
        if succs.is_empty() {
            succs.push(self.me.clone());
        }
        if self.pred.as_ref() == Some(dead) {
            self.pred = None;
        }
        if self
            .handoff
            .as_ref()
            .is_some_and(|h| h.to == *dead && matches!(h.stage, Stage::Checking | Stage::Copying))
        {
            self.abort_handoff(out);
        }
        self.remember_lost(dead.clone(), now);
        // Writes made from now on miss the dead replica: when it is back, push again.
        self.replicated_for = None;
        out.push(Action::Log(Change::PeerDead { peer: dead.clone() }));
        // The lost list changed: persist it, unless the successors' change did already.
        if !self.set_successors(succs, &old, out) {
            out.push(Action::Persist(self.saved()));
        }
    }

    fn remember_lost(&mut self, peer: Peer, now: Millis) {
        if self.lost.len() >= MAX_LOST && !self.lost.contains_key(&peer.addr) {
            return;
        }
        let next_probe = now + PROBE_FIRST;
        let lost = Lost {
            peer: peer.clone(),
            next_probe,
            backoff: PROBE_FIRST,
            probing: false,
            reachable: false,
            since: now,
        };
        self.lost.insert(peer.addr, lost);
    }

    /// Found unreachable and not heard from directly since: not taken back on a neighbour's
    /// word.
    fn unreachable(&self, p: &Peer) -> bool {
        self.lost.get(&p.addr).is_some_and(|l| !l.reachable)
    }

    fn forget_lost(&mut self, peer: &Peer, out: &mut Vec<Action>) {
        if self.lost.remove(&peer.addr).is_some() {
            out.push(Action::Persist(self.saved()));
        }
    }

    fn probe_failed(&mut self, peer: &Peer) {
        if let Some(l) = self.lost.get_mut(&peer.addr) {
            l.probing = false;
        }
    }

    /// A lost peer answered us directly: it is reachable again. Linked to us, it is simply
    /// back. Otherwise its ring and ours may be two: look our own id up in its ring.
    fn on_probe_answered(&mut self, peer: Peer, out: &mut Vec<Action>) {
        let Some(l) = self.lost.get_mut(&peer.addr) else { return };
        l.probing = false;
        if !l.reachable {
            l.reachable = true;
            out.push(Action::Log(Change::PeerBack { peer: peer.clone() }));
        }
        if self.succs.contains(&peer) || self.pred.as_ref() == Some(&peer) {
            return self.forget_lost(&peer, out);
        }
        if self.phase == Phase::Member {
            let me = self.me.id;
            self.call(peer.clone(), Msg::FindSuccessor(me), Purpose::MergeLookup(peer), out);
        }
    }

    /// `s` is the successor of our id in `via`'s ring. If that is us (and we are linked), the
    /// two rings agree and `via` is forgotten; if `s` is closer than our successor, it becomes
    /// our successor (the merge then spreads through stabilize and notify); otherwise `via` is
    /// probed again later, until the rings agree.
    fn on_merge_lookup(&mut self, via: Peer, s: Peer, out: &mut Vec<Action>) {
        if s == self.me && !self.is_alone() {
            return self.forget_lost(&via, out);
        }
        if s == self.me || self.phase != Phase::Member || self.unreachable(&s) {
            return;
        }
        if self.is_alone() || s.id.strictly_between(self.me.id, self.succs[0].id) {
            let old = self.succs[0].clone();
            let mut succs = self.succs.clone();
            succs.retain(|p| *p != self.me && *p != s);
            succs.insert(0, s);
            succs.truncate(self.settings.successors);
            self.set_successors(succs, &old, out);
            if !self.stabilizing {
                self.stabilize(out);
            }
        }
    }

    // ---- replication ----

    /// After a change of the owned range or of the replicas, push the range to them once.
    fn maybe_replicate(&mut self, out: &mut Vec<Action>) {
        let wanted = self.settings.replicas.saturating_sub(1);
        if wanted == 0 || self.replication.is_some() || self.phase != Phase::Member {
            return;
        }
        let view = self.view();
        let targets = view.replica_peers(wanted);
        let Some(range) = view.owned().filter(|_| !targets.is_empty()) else {
            // Writes made now reach fewer replicas than the range will have: push once known.
            self.replicated_for = None;
            return;
        };
        let sig = (range, targets.clone());
        if self.replicated_for.as_ref() == Some(&sig) {
            return;
        }
        // Until this push completes, no earlier one counts: writes made meanwhile went to
        // these targets, not to the old ones, even if the old ones come back.
        self.replicated_for = None;
        let mut jobs = Vec::new();
        for to in targets {
            let job = self.id();
            jobs.push(job);
            out.push(Action::Copy { job, range, to, kind: CopyKind::Replicate });
        }
        self.replication = Some(Replication { sig, jobs, ok: true });
    }

    fn on_replica_copy_done(&mut self, job: JobId, ok: bool, out: &mut Vec<Action>) -> bool {
        let Some(r) = self.replication.as_mut().filter(|r| r.jobs.contains(&job)) else { return false };
        r.jobs.retain(|j| *j != job);
        r.ok &= ok;
        if r.jobs.is_empty() {
            let r = self.replication.take().expect("checked above");
            if r.ok {
                self.replicated_for = Some(r.sig);
            }
            self.maybe_replicate(out);
        }
        true
    }
}

/// The peer an outstanding call went to, where its failure says something about that peer.
fn purpose_peer(p: &Purpose) -> Option<&Peer> {
    match p {
        Purpose::Join(p)
        | Purpose::Stabilize(p)
        | Purpose::PingPred(p)
        | Purpose::Notify(p)
        | Purpose::Probe(p)
        | Purpose::MergeLookup(p) => Some(p),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
