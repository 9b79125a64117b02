//! A client's get, put or delete: stamped where it enters the ring (version and deadline),
//! routed by the published `View`, forwarded clockwise, and at the owner read, or written
//! with a quorum of durable copies.
//!
//! Must not touch: ring state (it reads the published view and reports unreachable peers to
//! the membership task as events), HTTP statuses.

use std::time::Duration;

use tokio::sync::mpsc;

use super::clock::wall_millis;
use super::error::{PeerError, Result};
use super::Node;
use crate::lmdb::{Applied, Write};
use crate::ring::{key_id, Event, Peer, Route, Standing, View};
use crate::wire::{self, Fault, KvOp, KvOutcome, KvReply, KvRequest, MergeKind};

/// How long a client request may take from the node first asked to its owner and back. A
/// forward left hanging on a cut link must not land much later and overwrite newer writes:
/// after this the request is dropped wherever it is.
const KV_DEADLINE: Duration = Duration::from_secs(5);
/// A forward not answered after this is sent again on another connection (see `hedged_kv`):
/// above the 200 ms a lost packet waits for TCP's resend, far above a forward's usual few
/// milliseconds, so a hedge is sent only when a packet was probably lost.
const HEDGE_AFTER: Duration = Duration::from_millis(250);

fn reply(outcome: KvOutcome, hops: u32, owner: &Peer, version: u64) -> KvReply {
    KvReply { outcome, hops, owner: owner.addr.clone(), owner_id: owner.id.0, version }
}

fn failed(fault: Fault, hops: u32) -> KvReply {
    KvReply { outcome: KvOutcome::Failed(fault), hops, owner: String::new(), owner_id: 0, version: 0 }
}

/// When a request entering the ring now must be done by.
fn deadline_ms() -> u64 {
    wall_millis() + KV_DEADLINE.as_millis() as u64
}

impl Node {
    /// Sends records this node holds but does not own to their owner, each as a write of its
    /// own version. They came with a handoff from our successor's side, so the request starts
    /// out addressed and steps back along predecessors (see `View::route`).
    pub(super) async fn restore(&self, records: Vec<wire::Record>) {
        for r in records {
            let (op, version) = (KvOp::Restore(r.value), r.version);
            let req =
                KvRequest { key: r.key, op, hops: 0, addressed: true, version, deadline_ms: deadline_ms() };
            let reply = self.serve_kv(req).await;
            if let KvOutcome::Failed(f) = reply.outcome {
                tracing::debug!(error = %f, "could not send a stray record to its owner");
            }
        }
    }

    /// A request from a client of this node: stamps a write's version and the deadline.
    pub(super) async fn client_kv(&self, key: String, op: KvOp) -> KvReply {
        let version = if op == KvOp::Get { 0 } else { self.inner.clock.stamp() };
        self.serve_kv(KvRequest { key, op, hops: 0, addressed: false, version, deadline_ms: deadline_ms() })
            .await
    }

    /// A request here or one node on. A next hop that refuses connections is reported dead
    /// and the request routed again once the view changes; a retried write carries the same
    /// version, so applying it twice changes nothing.
    pub(super) async fn serve_kv(&self, req: KvRequest) -> KvReply {
        if req.version != 0 {
            if let Err(e) = self.check_version(req.version) {
                return failed(e.into(), req.hops);
            }
        }
        let id = key_id(req.key.as_bytes());
        let mut last = Fault::NotServing;
        for _ in 0..=self.inner.config.successors + 1 {
            if wall_millis() > req.deadline_ms {
                self.inner.metrics.late_requests.inc();
                return failed(Fault::DeadlinePassed, req.hops);
            }
            let view = self.view();
            if view.standing == Standing::Joining {
                return failed(Fault::NotServing, req.hops);
            }
            let (to, addressed) = match view.route(id, req.addressed) {
                Route::Local => return self.local_kv(id.0, &req).await,
                Route::Forward { to, addressed } => (to, addressed),
                Route::Back { to } => (to, true),
            };
            match self.forward(&view, &to, addressed, &req).await {
                Ok(reply) => return reply,
                Err(fault) => last = fault,
            }
        }
        failed(last, req.hops)
    }

    /// Sends the request to `to`; an error means it may be retried along a new route.
    async fn forward(
        &self,
        view: &View,
        to: &Peer,
        addressed: bool,
        req: &KvRequest,
    ) -> std::result::Result<KvReply, Fault> {
        let hop_limit = self.inner.config.hop_limit;
        if req.hops >= hop_limit {
            return Ok(failed(Fault::HopLimit(hop_limit), req.hops));
        }
        self.inner.metrics.forwarded.inc();
        let left = Duration::from_millis(req.deadline_ms.saturating_sub(wall_millis()));
        let fwd = KvRequest { hops: req.hops + 1, addressed, ..req.clone() };
        let unavailable = |e: &PeerError| Fault::Unavailable { addr: to.addr.clone(), reason: e.to_string() };
        match self.hedged_kv(&to.addr, fwd, left).await {
            Ok(reply) => Ok(reply),
            Err(e) if e.is_refused() => {
                self.membership_hint(Event::Unreachable { peer: to.clone(), failure: e.failure() });
                self.view_changed(view).await;
                Err(unavailable(&e))
            }
            // A pooled connection that died under the request: try again on a new one.
            Err(e @ PeerError::Connect(_)) => Err(unavailable(&e)),
            Err(e) => {
                self.membership_hint(Event::Unreachable { peer: to.clone(), failure: e.failure() });
                Ok(failed(unavailable(&e), req.hops))
            }
        }
    }

    /// Sends a forward, and if it has not been answered after `HEDGE_AFTER` (a lost packet
    /// waits at least 200 ms for TCP to resend it), the same request again on another
    /// connection; the first success wins. Safe because a request carries its version:
    /// applying a write twice changes nothing.
    async fn hedged_kv(
        &self,
        addr: &str,
        req: KvRequest,
        left: Duration,
    ) -> std::result::Result<KvReply, PeerError> {
        let peers = &self.inner.peers;
        let first = peers.kv(addr, req.clone(), left);
        let second = async {
            tokio::time::sleep(HEDGE_AFTER).await;
            peers.kv(addr, req, left.saturating_sub(HEDGE_AFTER)).await
        };
        tokio::pin!(first, second);
        tokio::select! {
            r = &mut first => match r {
                // An answer, or a peer that is gone: no use asking again.
                Ok(reply) => Ok(reply),
                Err(e) if e.is_refused() || e.failure() == crate::ring::Failure::Rejected => Err(e),
                Err(_) => second.await,
            },
            r = &mut second => match r {
                Ok(reply) => Ok(reply),
                Err(_) => first.await,
            },
        }
    }

    /// Waits (briefly) for the membership task to publish a view other than `seen`.
    async fn view_changed(&self, seen: &View) {
        let mut rx = self.inner.view.clone();
        let changed = rx.wait_for(|v| **v != *seen);
        let _ = tokio::time::timeout(self.inner.config.peer_timeout, changed).await;
    }

    /// Executes a request this node owns.
    async fn local_kv(&self, id: u64, req: &KvRequest) -> KvReply {
        let me = &self.inner.me;
        let value = match &req.op {
            KvOp::Get => {
                return match self.inner.storage.get(id, req.key.as_bytes()) {
                    Ok(Some(r)) if r.value.is_some() => {
                        reply(KvOutcome::Value(r.value.unwrap()), req.hops, me, r.version)
                    }
                    // A tombstone's version says when the key was deleted.
                    Ok(r) => reply(KvOutcome::NotFound, req.hops, me, r.map_or(0, |r| r.version)),
                    Err(e) => failed(e.into(), req.hops),
                };
            }
            KvOp::Put(v) => Some(v.clone()),
            KvOp::Delete => None,
            KvOp::Restore(v) => v.clone(),
        };
        let rec = wire::Record { key: req.key.clone(), version: req.version, value };
        match self.write_local(id, req, rec).await {
            Ok(outcome) => reply(outcome, req.hops, me, req.version),
            Err(e) => failed(e.into(), req.hops),
        }
    }

    /// Commits a write here while sending it to the replicas (and to a handoff's receiver),
    /// and answers once `W` copies are durable. Replicas that answer later finish in the
    /// background; the write-through must succeed, or the write is not acknowledged.
    async fn write_local(&self, id: u64, req: &KvRequest, rec: wire::Record) -> Result<KvOutcome> {
        let (_guard, view) = self.inner.writes.begin(&self.inner.view);
        let needed = view.write_quorum().ok_or(Fault::CutOff)?;
        let restore = matches!(req.op, KvOp::Restore(_));
        let replicas = view.replica_peers(view.replicas.saturating_sub(1));
        let (tx, mut acks) = mpsc::channel(replicas.len().max(1));
        for to in &replicas {
            self.replicate(to, rec.clone(), tx.clone());
        }
        drop(tx);
        // A restore is not written through: it may have come from that very receiver (a leave's
        // successor sends its strays back to the leaver), and would go round forever.
        let through = view.write_through_for(crate::ring::Id(id)).filter(|_| !restore).cloned().map(|w| {
            let (tx, rx) = mpsc::channel(1);
            self.send_copy(
                w.to.clone(),
                vec![rec.clone()],
                MergeKind::WriteThrough,
                super::transfer::BATCH_TIMEOUT,
                tx,
            );
            (w.job, rx)
        });
        let applied = self.inner.storage.write(local_write(id, &req.op, rec)).await?;
        if let Some((job, mut rx)) = through {
            if !matches!(rx.recv().await, Some(true)) {
                self.membership_hint(Event::WriteThroughFailed { job });
                let to = view.write_through.as_ref().map(|w| w.to.addr.clone()).unwrap_or_default();
                return Err(Fault::HandoffFailed(to).into());
            }
        }
        let mut durable = 1;
        while durable < needed {
            match acks.recv().await {
                Some(true) => durable += 1,
                Some(false) => {}
                None => return Err(Fault::NoQuorum { acked: durable as u32, needed: needed as u32 }.into()),
            }
        }
        Ok(match applied {
            Applied::Unchanged => KvOutcome::NotFound,
            Applied::Stored { .. } | Applied::Superseded { .. } => KvOutcome::Done,
        })
    }

    /// Sends records to `to` in a tracked task and reports whether they are durable there. A
    /// peer that refuses the connection is reported to the membership task.
    pub(super) fn send_copy(
        &self,
        to: Peer,
        records: Vec<wire::Record>,
        kind: MergeKind,
        timeout: Duration,
        done: mpsc::Sender<bool>,
    ) {
        let node = self.clone();
        self.inner.tasks.spawn(async move {
            let me = Node::info(&node.inner.me);
            let result = node.inner.peers.merge(&to.addr, me, records, kind, timeout).await;
            if let Err(e) = &result {
                tracing::debug!(replica = %to.addr, error = %e, "replica write failed");
                node.membership_hint(Event::ReplicaMissed);
                if e.is_refused() {
                    node.membership_hint(Event::Unreachable { peer: to, failure: e.failure() });
                }
            }
            let _ = done.send(result.is_ok()).await;
        });
    }
}

/// The owner's own write for a request's record: a client's put or delete, or a restored
/// record kept where newer.
fn local_write(id: u64, op: &KvOp, rec: wire::Record) -> Write {
    let key = rec.key.into_bytes();
    match (op, rec.value) {
        (KvOp::Restore(_), value) => {
            Write::Merge(crate::lmdb::Record { id, key, version: rec.version, value })
        }
        (_, Some(value)) => Write::Put { id, key, value, version: rec.version },
        (_, None) => Write::Delete { id, key, version: rec.version },
    }
}
