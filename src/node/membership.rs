//! Join, stabilize, handoff, leave and tombstone purging: the ring's maintenance, performed
//! by calling the pure steps of `RingState` and sending what they ask for.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::error::{Error, PeerError, Result};
use super::peer::Peers;
use super::storage::{now_micros, Storage};
use super::Progress;
use super::{locked, Node, BATCH_TIMEOUT, KV_TIMEOUT};
use crate::lmdb::Write;
use crate::ring::{Action, HandoffKind, Id, Interval, Peer, RingState};
use crate::wire::{self, Request, Response};

/// How long a new node keeps asking its bootstrap before giving up: long enough for the
/// bootstrap node to be started alongside it.
const JOIN_DEADLINE: Duration = Duration::from_secs(30);
/// Pause between join attempts.
const JOIN_RETRY: Duration = Duration::from_millis(200);
/// How long a leaving node keeps trying to hand its keys over before it stops anyway,
/// keeping them on disk.
const LEAVE_DEADLINE: Duration = Duration::from_secs(60);
/// How often a departed node retries telling its predecessor, which otherwise points at a
/// stopped node until crash repair exists.
const TELL_PRED_TRIES: u32 = 5;
/// A tombstone outlives every handoff that could carry an older copy of its key; handoffs
/// take seconds, so ten minutes is ample.
const TOMBSTONE_TTL: Duration = Duration::from_secs(600);
/// How often old tombstones are purged, and how many per commit.
const PURGE_EVERY: Duration = Duration::from_secs(60);
const PURGE_BATCH: usize = 10_000;

const SUCC_META: &str = "successor";
/// Timeouts in a row after which a peer that still accepts connections is declared dead.
const STRIKES: u32 = 2;

/// Finds this node's successor through `bootstrap` and returns the state of a new member.
pub async fn join(me: &Peer, peers: &Peers, storage: &Storage, bootstrap: &str) -> Result<RingState> {
    if bootstrap == me.addr {
        return Err(Error::BootstrapIsSelf);
    }
    let deadline = Instant::now() + JOIN_DEADLINE;
    let req = Request::FindSuccessor { id: me.id.0, hops: 0 };
    loop {
        let source = match peers.call(bootstrap, &req, KV_TIMEOUT).await {
            Ok(Response::Successor { node, .. }) => {
                let succ = Node::peer_from(&node)?;
                if succ != *me {
                    return Ok(RingState::joined(me.clone(), succ));
                }
                // The ring still links this address: we are restarting in place before anyone
                // noticed. Our successor from before is still right.
                return match storage.meta_get(SUCC_META).await? {
                    Some(s) if s != me.addr.as_bytes() => {
                        let succ = Peer::new(String::from_utf8_lossy(&s).into_owned());
                        Ok(RingState::joined(me.clone(), succ))
                    }
                    _ => Err(Error::StillMember(me.addr.clone())),
                };
            }
            Ok(_) => PeerError::Unexpected,
            // Refused our cluster key (or lack of one): retrying cannot help.
            Err(e @ PeerError::Status(hyper::StatusCode::UNAUTHORIZED)) => {
                return Err(Error::Join { bootstrap: bootstrap.to_string(), source: e });
            }
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(Error::Join { bootstrap: bootstrap.to_string(), source });
        }
        tracing::debug!(bootstrap, error = %source, "join attempt failed; retrying");
        tokio::time::sleep(JOIN_RETRY).await;
    }
}

pub async fn stabilize_loop(node: Node, halt: CancellationToken) {
    let mut tick = tokio::time::interval(node.inner.config.stabilize_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = halt.cancelled() => return,
            _ = tick.tick() => {}
        }
        node.inner.metrics.stabilize_rounds.inc();
        match stabilize_once(&node).await {
            Ok(()) => failing = false,
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(node = %node.inner.me.addr, error = %e, "stabilize failed");
            }
            Err(_) => {}
        }
    }
}

async fn stabilize_once(node: &Node) -> Result<()> {
    node.check_predecessor().await;
    let timeout = node.inner.config.peer_timeout;
    // Zave: a dead successor is dropped for the next live entry of the list, and not taken
    // back from a successor that still names it.
    let mut dead: Vec<Peer> = Vec::new();
    for _ in 0..=node.inner.config.successors {
        let Some(target) = node.ring().stabilize_target() else {
            return Ok(());
        };
        let (pred, succs) = match node.inner.peers.call(&target.addr, &Request::Neighbors, timeout).await {
            Ok(Response::Neighbors { pred, succs }) => (pred, succs),
            Ok(_) => return Err(Error::Unavailable { addr: target.addr, source: PeerError::Unexpected }),
            Err(e) => {
                if !node.peer_failed(&target, &e).await {
                    return Err(Error::Unavailable { addr: target.addr, source: e });
                }
                dead.push(target);
                continue;
            }
        };
        node.peer_answered(&target);
        // Peers whose id is not their address's hash are ignored, not adopted.
        let alive = |p: &Peer| !dead.contains(p);
        let pred = pred.and_then(|p| Node::peer_from(&p).ok()).filter(alive);
        let succs = succs.iter().filter_map(|p| Node::peer_from(p).ok()).filter(alive).collect();
        let actions = node.ring().on_successor_reply(&target, pred, succs);
        let succ = node.ring().succ().clone();
        if succ != target {
            tracing::info!(node = %node.inner.me.addr, old = %target.addr, new = %succ.addr, "successor changed");
            node.save_successor().await;
        }
        for action in actions {
            if let Action::Notify(s) = action {
                let req = Request::Notify { from: Node::info(&node.inner.me) };
                node.inner
                    .peers
                    .call(&s.addr, &req, timeout)
                    .await
                    .map_err(|source| Error::Unavailable { addr: s.addr, source })?;
            }
        }
        node.maybe_rereplicate();
        return Ok(());
    }
    Err(Error::NotServing)
}

impl Node {
    /// A call to `peer` failed. A refused connection means the process is gone: dead at
    /// once. A timeout may be a busy peer: dead after `STRIKES` in a row (the next success
    /// clears them), so one slow answer does not reshape the ring. Returns true if dead.
    pub(super) async fn peer_failed(&self, peer: &Peer, error: &PeerError) -> bool {
        let refused = error.is_refused();
        let dead = {
            let mut strikes = locked(&self.inner.strikes);
            let n = strikes.entry(peer.addr.clone()).or_insert(0);
            *n += 1;
            let dead = refused || *n >= STRIKES;
            if dead {
                strikes.remove(&peer.addr);
            }
            dead
        };
        if dead {
            self.peer_dead(peer, error).await;
        }
        dead
    }

    pub(super) fn peer_answered(&self, peer: &Peer) {
        locked(&self.inner.strikes).remove(&peer.addr);
    }

    /// `peer` is dead: drop it from the successor list and as predecessor.
    pub(super) async fn peer_dead(&self, peer: &Peer, error: &PeerError) {
        if self.ring().on_peer_dead(peer) {
            tracing::warn!(node = %self.inner.me.addr, peer = %peer.addr, %error, "peer dead");
            self.save_successor().await;
        }
    }

    /// Zave's rectify needs to know when the predecessor is dead: ask it each round.
    async fn check_predecessor(&self) {
        let Some(pred) = self.ring().pred().cloned() else { return };
        let timeout = self.inner.config.peer_timeout;
        match self.inner.peers.call(&pred.addr, &Request::Neighbors, timeout).await {
            Ok(_) => self.peer_answered(&pred),
            Err(e) => {
                self.peer_failed(&pred, &e).await;
            }
        }
    }

    /// After a membership change, re-establish R copies of this node's range: push it to the
    /// first R-1 successors in the background (one push at a time; retried next round if it
    /// fails). This is also how a node that took over a dead predecessor's range makes new
    /// replicas of it.
    fn maybe_rereplicate(&self) {
        let wanted = self.inner.config.replicas.saturating_sub(1);
        if wanted == 0 || self.inner.rereplicating.swap(true, Ordering::SeqCst) {
            return;
        }
        let (range, targets) = {
            let ring = self.ring();
            (ring.owned(), ring.replica_peers(wanted))
        };
        let sig: Vec<u64> = range.iter().map(|r| r.after.0).chain(targets.iter().map(|p| p.id.0)).collect();
        let done = locked(&self.inner.replicated_for).clone();
        let Some(range) = range.filter(|_| !targets.is_empty() && done != sig) else {
            self.inner.rereplicating.store(false, Ordering::SeqCst);
            return;
        };
        let node = self.clone();
        self.inner.tasks.spawn(async move {
            let mut ok = true;
            for t in &targets {
                tracing::info!(node = %node.inner.me.addr, to = %t.addr, "re-replicating range");
                if let Err(e) = node.copy_range(range, t, false).await {
                    tracing::warn!(node = %node.inner.me.addr, to = %t.addr, error = %e, "re-replication failed");
                    ok = false;
                }
            }
            node.set_progress(None);
            if ok {
                *locked(&node.inner.replicated_for) = sig;
            }
            node.inner.rereplicating.store(false, Ordering::SeqCst);
        });
    }

    pub(super) async fn save_successor(&self) {
        let succ = self.ring().succ().addr.clone();
        if let Err(e) = self.inner.storage.meta_put(SUCC_META, succ.into_bytes()).await {
            tracing::warn!(error = %e, "could not save the successor");
        }
    }

    /// notify from `from`: if it is our new predecessor, hand it its keys in the background.
    pub(super) fn on_notify(&self, from: Peer) {
        let action = self.ring().on_notify(&from);
        if let Some(Action::StartHandoff { range, to }) = action {
            tracing::info!(node = %self.inner.me.addr, to = %to.addr, "new predecessor; handing over its range");
            let node = self.clone();
            self.inner.tasks.spawn(async move {
                if let Err(e) = node.run_handoff(range, to.clone()).await {
                    tracing::warn!(node = %node.inner.me.addr, to = %to.addr, error = %e, "handoff aborted");
                }
            });
        }
    }

    /// Copies `range` to `to`, switches ownership under the gate, then drops the local copy.
    /// The ring state holds the handoff (from `on_notify` or `begin_leave`); on any failure
    /// it is aborted and nothing changes hands.
    async fn run_handoff(&self, range: Interval, to: Peer) -> Result<()> {
        let Some(kind) = self.ring().handoff().map(|h| h.kind) else {
            return Ok(());
        };
        if kind == HandoffKind::Join {
            match self.check_joiner(&to).await {
                Err(e) => {
                    self.ring().abort_handoff();
                    return Err(e);
                }
                // Our predecessor died and its own predecessor, a member with a range of its
                // own, rectifies us: it holds its keys already, and the dead node's range is
                // ours now. Nothing to copy.
                Ok(true) if range.after == self.inner.me.id => {
                    let _gate = self.inner.gate.write().await;
                    self.ring().finish_handoff();
                    tracing::info!(node = %self.inner.me.addr, pred = %to.addr, "predecessor changed (rectified after a crash)");
                    return Ok(());
                }
                Ok(_) => {}
            }
        }
        self.inner.write_through_failed.store(false, Ordering::SeqCst);
        let started = Instant::now();
        let copied = self.copy_range(range, &to, kind == HandoffKind::Leave).await;
        self.set_progress(None);
        let gate = self.inner.gate.write().await;
        let (keys, bytes) = match copied {
            Ok(moved) if !self.inner.write_through_failed.load(Ordering::SeqCst) => moved,
            Ok(_) => {
                self.ring().abort_handoff();
                return Err(Error::Unavailable { addr: to.addr.clone(), source: PeerError::Unexpected });
            }
            Err(e) => {
                self.ring().abort_handoff();
                return Err(e);
            }
        };
        match kind {
            HandoffKind::Join => {
                let old = self.ring().finish_handoff();
                drop(gate);
                let req = Request::HandoffDone {
                    from: Node::info(&self.inner.me),
                    pred: old.as_ref().map(Node::info),
                };
                if let Err(e) = self.inner.peers.call(&to.addr, &req, self.inner.config.peer_timeout).await {
                    // It learns its predecessor from that node's notify instead.
                    tracing::debug!(to = %to.addr, error = %e, "handoff-done not delivered");
                }
                tracing::info!(node = %self.inner.me.addr, pred = %to.addr, keys, bytes, ms = started.elapsed().as_millis() as u64, "predecessor changed; range handed over");
                if self.inner.config.replicas > 1 {
                    // We are the new owner's first successor: our copy is its first replica.
                    return Ok(());
                }
            }
            HandoffKind::Leave => {
                let (pred, succ) = {
                    let ring = self.ring();
                    (ring.pred().cloned(), ring.succ().clone())
                };
                let leaving = Request::Leaving {
                    node: Node::info(&self.inner.me),
                    pred: pred.as_ref().map(Node::info),
                    succ: Node::info(&succ),
                };
                // The successor takes over before we stop answering for the range.
                if let Err(source) =
                    self.inner.peers.call(&succ.addr, &leaving, self.inner.config.peer_timeout).await
                {
                    self.ring().abort_handoff();
                    return Err(Error::Unavailable { addr: succ.addr, source });
                }
                self.ring().finish_handoff();
                drop(gate);
                if let Some(p) = pred.filter(|p| *p != succ) {
                    self.tell_with_retries(&p, &leaving).await;
                }
                tracing::info!(node = %self.inner.me.addr, succ = %to.addr, keys, bytes, ms = started.elapsed().as_millis() as u64, "left; keys handed to successor");
            }
        }
        self.drop_range(range).await
    }

    /// A node that notified us must be alive and name us as its successor; otherwise a
    /// notify from a stale or made-up address could take over a range with no keys in it.
    /// Returns true if it is an established member (it knows its own predecessor), false for
    /// a newcomer.
    async fn check_joiner(&self, to: &Peer) -> Result<bool> {
        let unavailable = |source| Error::Unavailable { addr: to.addr.clone(), source };
        let timeout = self.inner.config.peer_timeout;
        match self.inner.peers.call(&to.addr, &Request::Status, timeout).await {
            Ok(Response::Status(s)) if s.succ.addr == self.inner.me.addr => Ok(s.pred.is_some()),
            Ok(_) => Err(unavailable(PeerError::Unexpected)),
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn tell_with_retries(&self, to: &Peer, req: &Request) {
        for attempt in 1..=TELL_PRED_TRIES {
            match self.inner.peers.call(&to.addr, req, self.inner.config.peer_timeout).await {
                Ok(_) => return,
                Err(e) if attempt == TELL_PRED_TRIES => {
                    tracing::warn!(to = %to.addr, error = %e, "could not tell predecessor we left");
                }
                Err(_) => tokio::time::sleep(self.inner.config.stabilize_every).await,
            }
        }
    }

    fn set_progress(&self, p: Option<Progress>) {
        *locked(&self.inner.progress) = p;
    }

    /// Sends every record of `range` to `to` in batches; returns (records, bytes) sent. Logs
    /// progress at most once a second and keeps it current for `/status`.
    async fn copy_range(&self, range: Interval, to: &Peer, leaving: bool) -> Result<(u64, u64)> {
        let (mut keys, mut bytes, mut resume) = (0u64, 0u64, None);
        let (started, mut last_log) = (Instant::now(), Instant::now());
        let span = if range.after == range.upto { u64::MAX } else { range.after.distance_to(range.upto) };
        let mut progress = Progress { to: to.addr.clone(), leaving, ..Progress::default() };
        self.set_progress(Some(progress.clone()));
        loop {
            let scan = self.scan_batch(range, resume).await?;
            if !scan.records.is_empty() {
                let batch_bytes = scan.records.iter().map(|r| r.size() as u64).sum::<u64>();
                keys += scan.records.len() as u64;
                bytes += batch_bytes;
                self.inner.metrics.handoff_keys.inc_by(scan.records.len() as u64);
                self.inner.metrics.handoff_bytes.inc_by(batch_bytes);
                let last = scan.records.last().map_or(range.after, |r| Id(r.id));
                let percent = 100.0 * range.after.distance_to(last) as f64 / span as f64;
                progress = Progress { keys, bytes, percent, ..progress };
                self.set_progress(Some(progress.clone()));
                let records = scan
                    .records
                    .into_iter()
                    .map(|r| wire::Record {
                        key: String::from_utf8_lossy(&r.key).into_owned(),
                        version: r.version,
                        value: r.value,
                    })
                    .collect();
                self.merge_to(to, records, BATCH_TIMEOUT).await?;
            }
            if last_log.elapsed() >= Duration::from_secs(1) {
                let rate = keys as f64 / started.elapsed().as_secs_f64();
                tracing::info!(
                    node = %self.inner.me.addr, to = %to.addr, keys, bytes,
                    percent = format!("{:.1}", progress.percent), keys_per_s = rate as u64,
                    "handoff in progress"
                );
                last_log = Instant::now();
            }
            match scan.next {
                Some(next) => resume = Some(next),
                None => return Ok((keys, bytes)),
            }
        }
    }

    /// One handoff-sized batch of `range`, resuming after `resume`.
    async fn scan_batch(&self, range: Interval, resume: Option<Vec<u8>>) -> Result<crate::lmdb::Scan> {
        self.inner.storage.scan(range.after.0, range.upto.0, resume, self.inner.config.handoff_batch).await
    }

    /// Removes the local copy of a range that now belongs to another node.
    async fn drop_range(&self, range: Interval) -> Result<()> {
        let mut resume = None;
        loop {
            let scan = self.scan_batch(range, resume).await?;
            let removes = scan
                .records
                .into_iter()
                .map(|r| Write::Remove { id: r.id, key: r.key, version: r.version })
                .collect();
            self.inner.storage.write_all(removes).await?;
            match scan.next {
                Some(next) => resume = Some(next),
                None => return Ok(()),
            }
        }
    }
}

/// Leaves the ring gracefully: hands every key to the successor and unlinks. The last node
/// of a ring just stops with its data on disk; so does a node that cannot reach its
/// successor before `LEAVE_DEADLINE`.
pub async fn leave(node: &Node) {
    let deadline = Instant::now() + LEAVE_DEADLINE;
    loop {
        let action = node.ring().begin_leave();
        match action {
            Some(Action::StartHandoff { range, to }) => match node.run_handoff(range, to.clone()).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(node = %node.inner.me.addr, to = %to.addr, error = %e, "leave handoff failed; retrying")
                }
            },
            _ => {
                let ring = node.ring();
                if ring.departed() || ring.succ() == ring.me() {
                    tracing::info!(node = %node.inner.me.addr, "last node of the ring stops; its data stays on disk");
                    return;
                }
                // Busy handing a range to a new predecessor: wait for that to finish.
            }
        }
        if Instant::now() >= deadline {
            tracing::error!(node = %node.inner.me.addr, "could not hand keys over before the deadline; stopping with them on disk");
            return;
        }
        tokio::time::sleep(node.inner.config.stabilize_every).await;
    }
}

pub async fn purge_loop(node: Node, halt: CancellationToken) {
    let mut tick = tokio::time::interval(PURGE_EVERY);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = halt.cancelled() => return,
            _ = tick.tick() => {}
        }
        let before = now_micros().saturating_sub(TOMBSTONE_TTL.as_micros() as u64);
        match node.inner.storage.blocking(move |s| s.purge_tombstones(before, PURGE_BATCH)).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(purged = n, "old tombstones purged"),
            Err(e) => tracing::warn!(error = %e, "tombstone purge failed"),
        }
    }
}
