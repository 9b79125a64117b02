//! The membership executor: the one task that owns the node's `ring::Membership`. It feeds it
//! events (ticks, peers' answers, incoming notifies, finished copies), performs the actions it
//! returns (calls, copies, drains, persistence, log lines) and publishes the resulting `View`.
//!
//! Must not touch: membership decisions (all in `ring::membership`); requests (they only read
//! the published view and report unreachable peers).
//!
//! Every action that waits on the network or the disk runs in its own tracked task and comes
//! back as an event, so the state machine is never blocked and never locked.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch};

use super::error::{PeerError, StartError};
use super::Node;
use crate::ring::{
    Action, Change, Event, Failure, Membership, Msg, Peer, Reply, Saved, Standing, Ticket, View,
};
use crate::wire::{Fault, Request};

pub(super) const SUCC_META: &str = "successor";
const LOST_META: &str = "lost";
/// Wait for a forwarded find_successor, which may cross many nodes.
pub(super) const FORWARD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// An event for the membership task; `answer` gets its verdict where the sender waits for one.
pub(super) struct Input {
    pub event: Event,
    pub answer: Option<oneshot::Sender<bool>>,
}

/// Reads what a previous run saved: the last successor and the peers to probe, one
/// `ADDR ID` a line (a line without an id, as written before ids were chosen, means the hash
/// of the address).
pub(super) async fn load_saved(storage: &super::storage::Storage) -> Saved {
    let text = |v: Option<Vec<u8>>| v.map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
    let peers = |s: String| -> Vec<Peer> { s.lines().filter_map(parse_peer).collect() };
    let successor = peers(text(storage.meta_get(SUCC_META).await.ok().flatten())).into_iter().next();
    let lost = peers(text(storage.meta_get(LOST_META).await.ok().flatten()));
    Saved { successor, lost }
}

fn parse_peer(line: &str) -> Option<Peer> {
    let mut words = line.split_whitespace();
    let addr = words.next()?.to_string();
    match words.next().and_then(crate::ring::Id::from_hex) {
        Some(id) => Some(Peer { id, addr }),
        None => Some(Peer::new(addr)),
    }
}

fn peer_line(p: &Peer) -> String {
    format!("{} {}", p.addr, p.id)
}

/// A node whose last contact with a whole ring is older than `ring::FORGET_AFTER` has been
/// forgotten by its peers, which may have purged tombstones of keys it still holds: it
/// discards its records before joining, so a deleted key cannot come back through it.
pub(super) async fn discard_if_stale(storage: &super::storage::Storage) -> Result<(), StartError> {
    let meta = storage.meta_get(super::storage::MEMBER_AT_META).await.ok().flatten();
    let Some(at) = meta.and_then(|b| String::from_utf8(b).ok()?.parse::<u64>().ok()) else { return Ok(()) };
    let away = super::clock::wall_millis().saturating_sub(at);
    if away > crate::ring::FORGET_AFTER {
        tracing::warn!(away_s = away / 1000, "away longer than the purge horizon: discarding old records");
        storage.clear().await.map_err(|e| StartError::Io(std::io::Error::other(e.to_string())))?;
    }
    Ok(())
}

struct Executor {
    node: Node,
    tickets: HashMap<Ticket, oneshot::Sender<bool>>,
    next_ticket: Ticket,
    joined: Option<oneshot::Sender<Result<(), StartError>>>,
}

/// Runs the membership state machine until the node halts (or its join fails).
pub(super) async fn run(
    node: Node,
    mut machine: Membership,
    mut inbox: mpsc::Receiver<Input>,
    publish: watch::Sender<Arc<View>>,
    joined: oneshot::Sender<Result<(), StartError>>,
) {
    let mut ex =
        Executor { node: node.clone(), tickets: HashMap::new(), next_ticket: 0, joined: Some(joined) };
    // One timer, moved only when the machine's next round moves: a new timer for every input
    // (several a round) is registered with the time driver each time, which woke the idle
    // runtime more often.
    let timer = tokio::time::sleep_until(node.inner.started.into());
    tokio::pin!(timer);
    loop {
        // The machine says when its next round is due: soon after a change, the steady period
        // when nothing changes.
        let due = (node.inner.started + std::time::Duration::from_millis(machine.next_tick())).into();
        if timer.deadline() != due {
            timer.as_mut().reset(due);
        }
        let input = tokio::select! {
            _ = node.inner.halt.cancelled() => return,
            _ = &mut timer => Input { event: Event::Tick, answer: None },
            Some(input) = inbox.recv() => input,
        };
        if matches!(input.event, Event::Tick) {
            node.inner.metrics.stabilize_rounds.inc();
        }
        let event = ex.ticketed(input);
        let actions = machine.step(node.now(), event);
        let view = machine.view();
        if **publish.borrow() != view {
            publish.send_replace(Arc::new(view));
        }
        for action in actions {
            if !ex.perform(action).await {
                return;
            }
        }
        ex.report_joined(&publish.borrow());
    }
}

impl Executor {
    /// Gives an event that waits for a verdict its ticket.
    fn ticketed(&mut self, input: Input) -> Event {
        let mut event = input.event;
        if let (Event::NeighborLeaving { ticket, .. }, Some(answer)) = (&mut event, input.answer) {
            self.next_ticket += 1;
            *ticket = self.next_ticket;
            self.tickets.insert(self.next_ticket, answer);
        }
        event
    }

    fn report_joined(&mut self, view: &View) {
        if view.standing != Standing::Joining {
            if let Some(j) = self.joined.take() {
                let _ = j.send(Ok(()));
            }
        }
    }

    /// Performs one action; false when the task must end.
    async fn perform(&mut self, action: Action) -> bool {
        let node = self.node.clone();
        match action {
            Action::Call { call, to, msg } => {
                self.spawn(async move {
                    match call_peer(&node, &to, msg).await {
                        Ok(reply) => Event::Answer { call, reply },
                        Err(failure) => Event::Failed { call, failure },
                    }
                });
            }
            Action::Copy { job, range, to, kind } => {
                self.spawn(async move {
                    Event::CopyDone { job, ok: node.copy_range(range, &to, kind).await.is_ok() }
                });
            }
            Action::AwaitDrain { epoch } => {
                self.spawn(async move {
                    node.inner.writes.drained(epoch).await;
                    Event::Drained { epoch }
                });
            }
            Action::DropRange(range) => {
                let tasks = node.inner.tasks.clone();
                tasks.spawn(async move {
                    if let Err(e) = node.drop_range(range).await {
                        tracing::warn!(error = %e, "dropping a handed-over range failed");
                    }
                });
            }
            Action::Persist(saved) => persist(&node, saved).await,
            Action::Respond { ticket, accepted } => {
                if let Some(t) = self.tickets.remove(&ticket) {
                    let _ = t.send(accepted);
                }
            }
            Action::Log(change) => log(&node, change),
            Action::JoinFailed { still_member, refused } => {
                let me = node.inner.me.addr.clone();
                let seed = node.inner.config.bootstrap.clone().unwrap_or_default();
                let e = match (still_member, refused) {
                    (true, _) => StartError::StillMember(me),
                    (_, true) => StartError::JoinRefused(seed),
                    _ => StartError::Join(seed),
                };
                if let Some(j) = self.joined.take() {
                    let _ = j.send(Err(e));
                }
                return false;
            }
            Action::Exit => node.inner.exited.cancel(),
        }
        true
    }

    /// Runs `work` in a tracked task and feeds the event it ends with back to the machine.
    fn spawn(&self, work: impl std::future::Future<Output = Event> + Send + 'static) {
        let inbox = self.node.inner.inbox.clone();
        let halt = self.node.inner.halt.clone();
        self.node.inner.tasks.spawn(async move {
            tokio::select! {
                _ = halt.cancelled() => {}
                event = work => { let _ = inbox.send(Input { event, answer: None }).await; }
            }
        });
    }
}

/// Performs one membership call and turns the answer into what the state machine reads.
async fn call_peer(node: &Node, to: &Peer, msg: Msg) -> Result<Reply, Failure> {
    let inner = &node.inner;
    let (peers, t, me) = (&inner.peers, inner.config.peer_timeout, Node::info(&inner.me));
    let result = match msg {
        Msg::FindSuccessor(id) => peers
            .find_successor(&to.addr, id.0, 0, FORWARD_TIMEOUT)
            .await
            .and_then(|n| node.peer_from(&n).map_err(|_| PeerError::Unexpected))
            .map(Reply::Successor),
        Msg::Neighbors => peers.neighbors(&to.addr, t).await.map(|(pred, succs)| Reply::Neighbors {
            pred: pred.and_then(|p| node.peer_from(&p).ok()),
            succs: succs.iter().filter_map(|p| node.peer_from(p).ok()).collect(),
        }),
        Msg::Notify => peers.tell(&to.addr, &Request::Notify { from: me }, t).await.map(|()| Reply::Ack),
        Msg::HandoffDone { pred } => {
            let req = Request::HandoffDone { from: me, pred: pred.as_ref().map(Node::info) };
            peers.tell(&to.addr, &req, t).await.map(|()| Reply::Ack)
        }
        Msg::Leaving { pred, succ } => {
            let req =
                Request::Leaving { node: me, pred: pred.as_ref().map(Node::info), succ: Node::info(&succ) };
            peers.tell(&to.addr, &req, t).await.map(|()| Reply::Ack)
        }
    };
    match result {
        Ok(reply) => Ok(reply),
        // Busy, or a failure further along a forwarded lookup, or a full connection budget
        // (503): nothing is wrong with this peer, and a joiner asks again (a refusal would end
        // its join for good, and many joining at once fill the seed's budget).
        Err(PeerError::Fault(
            Fault::Busy
            | Fault::NotServing
            | Fault::Unavailable { .. }
            | Fault::HopLimit(_)
            | Fault::DeadlinePassed,
        ))
        | Err(PeerError::Refused(503)) => Ok(Reply::Busy),
        Err(e) => Err(e.failure()),
    }
}

async fn persist(node: &Node, saved: Saved) {
    let storage = &node.inner.storage;
    let succ = saved.successor.as_ref().map(peer_line).unwrap_or_default().into_bytes();
    let lost = saved.lost.iter().map(peer_line).collect::<Vec<_>>().join("\n").into_bytes();
    let result = async {
        storage.meta_put(SUCC_META, succ).await?;
        storage.meta_put(LOST_META, lost).await
    };
    if let Err(e) = result.await {
        tracing::warn!(error = %e, "could not save the ring state");
    }
}

fn log(node: &Node, change: Change) {
    let me = &node.inner.me.addr;
    match change {
        Change::Joined { succ } => {
            tracing::info!(node = %me, succ = %succ.addr, "found its place in the ring")
        }
        Change::SuccessorChanged { old, new } => {
            tracing::info!(node = %me, old = %old.addr, new = %new.addr, "successor changed")
        }
        Change::PredecessorChanged { new, copied: true } => {
            tracing::info!(node = %me, pred = %new.addr, "predecessor changed; range handed over")
        }
        Change::PredecessorChanged { new, copied: false } => {
            tracing::info!(node = %me, pred = %new.addr, "predecessor changed (rectified after a crash)")
        }
        Change::HandoffStarted { to, kind } => {
            tracing::info!(node = %me, to = %to.addr, ?kind, "handing a range over")
        }
        Change::HandoffAborted { to } => tracing::warn!(node = %me, to = %to.addr, "handoff aborted"),
        Change::PeerDead { peer } => {
            node.inner.metrics.peers_lost.inc();
            tracing::warn!(node = %me, peer = %peer.addr, "peer unreachable; dropped from the ring")
        }
        Change::PeerBack { peer } => tracing::info!(node = %me, peer = %peer.addr, "lost peer answers again"),
        Change::NeighborLeft { node: left } => {
            tracing::info!(node = %me, left = %left.addr, "neighbour left")
        }
        Change::Left => tracing::info!(node = %me, "left the ring"),
    }
}

impl Node {
    /// Hands an event to the membership task, waiting while its inbox is full.
    pub(super) async fn membership_event(&self, event: Event) {
        let _ = self.inner.inbox.send(Input { event, answer: None }).await;
    }

    /// Hands an event to the membership task unless its inbox is full (the event is a hint
    /// that will come again).
    pub(super) fn membership_hint(&self, event: Event) {
        let _ = self.inner.inbox.try_send(Input { event, answer: None });
    }

    /// Hands an event to the membership task and waits for its verdict.
    pub(super) async fn membership_verdict(&self, event: Event) -> bool {
        let (tx, rx) = oneshot::channel();
        if self.inner.inbox.send(Input { event, answer: Some(tx) }).await.is_err() {
            return false;
        }
        rx.await.unwrap_or(false)
    }
}
