//! The running node: HTTP server and client, the public API, the internal RPC, and the
//! background tasks (stabilize, handoff, leave, tombstone purge), all stopped by one
//! cancellation token.
//!
//! Owns: turning `ring` decisions into network calls, running `lmdb` off the async threads,
//! and every timeout, limit and task of a live node.
//!
//! Must not touch: routing rules or membership logic (they live in `ring`, as pure steps this
//! module performs), the byte format of messages (`wire`), the record layout (`lmdb`).
//!
//! Left out on purpose: TLS (tags authenticate calls, they do not hide them), quorum reads
//! (the owner answers alone), and garbage collection of copies beyond a range's R replicas.

pub mod auth;
mod body;
pub mod client;
pub mod demo;
mod error;
mod http;
mod limits;
mod membership;
mod metrics;
mod peer;
mod storage;

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use body::DEFAULT_MAX_INFLIGHT_BYTES;
pub use error::{BadInput, Error, PeerError, Result};
pub use http::parse_key;
pub use limits::DEFAULT_MAX_CONNS_PER_CLIENT;

use crate::lmdb::{Applied, Record, Write};
use crate::ring::{key_id, Peer, RingState, Route};
use crate::wire::{self, KvOp, KvOutcome, KvReply, KvRequest, NodeInfo, Request, Response};
use peer::Peers;
use storage::{now_micros, Storage};

/// The longest key, in bytes after percent-decoding.
pub const MAX_KEY_BYTES: usize = 256;
/// Default cap on a value (`--max-value-bytes`).
pub const DEFAULT_MAX_VALUE_BYTES: usize = 8 << 20;
/// Default hop limit: more forwards than any sane ring has nodes means a routing loop.
pub const DEFAULT_HOP_LIMIT: u32 = 512;
/// Default successor-list length: survives r-1 adjacent crashes between two stabilize rounds.
pub const DEFAULT_SUCCESSORS: u64 = 4;
/// Default copies of each key.
pub const DEFAULT_REPLICAS: u64 = 3;
/// Wait for a replica's acknowledgement of one write (a durable commit on the replica).
const REPLICATE_TIMEOUT: Duration = Duration::from_secs(5);
/// Default stabilize period (Chord's repair round).
pub const DEFAULT_STABILIZE: Duration = Duration::from_millis(200);
/// Default wait for a peer's answer to a control message (stabilize, notify, status). On
/// loopback or a LAN an answer takes well under a millisecond; 500 ms tolerates a busy peer
/// without stalling the stabilize loop for long.
pub const DEFAULT_PEER_TIMEOUT: Duration = Duration::from_millis(500);
/// Wait for a forwarded client request, which may cross many nodes and carry a large value.
const KV_TIMEOUT: Duration = Duration::from_secs(30);
/// Wait for one handoff batch: a durable commit of up to `wire::BATCH_BYTES` (or one
/// maximal value) on the receiver.
const BATCH_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Debug)]
pub struct Config {
    /// The address peers and clients use for this node; its hash is the node's id.
    pub advertise: String,
    pub data_dir: PathBuf,
    /// A ring member to join through; None starts a new ring.
    pub bootstrap: Option<String>,
    pub stabilize_every: Duration,
    pub peer_timeout: Duration,
    pub max_value_bytes: usize,
    pub hop_limit: u32,
    /// Most records in one handoff batch (at most `wire::BATCH_RECORDS`).
    pub handoff_batch: usize,
    /// Length r of the successor list (repair after crashes).
    pub successors: usize,
    /// Copies of each key: on its owner and the owner's next R-1 successors (R <= r).
    pub replicas: usize,
    /// The ring's shared secret: node-to-node calls are signed with it and unsigned ones
    /// refused. None: calls are not authenticated (only allowed on loopback).
    pub cluster_key: Option<Vec<u8>>,
    /// If set, `/kv` and `/leave` need `Authorization: Bearer <token>`.
    pub client_token: Option<String>,
    /// With a client token: `/status` and `/ring` need it too.
    pub private_status: bool,
    /// Most client connections from one IP address (node-to-node calls do not count).
    pub max_conns_per_client: usize,
    /// Most request-body bytes received or held at once, over all connections.
    pub max_inflight_bytes: usize,
}

impl Config {
    pub fn new(advertise: impl Into<String>, data_dir: impl Into<PathBuf>) -> Config {
        Config {
            advertise: advertise.into(),
            data_dir: data_dir.into(),
            bootstrap: None,
            stabilize_every: DEFAULT_STABILIZE,
            peer_timeout: DEFAULT_PEER_TIMEOUT,
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
            hop_limit: DEFAULT_HOP_LIMIT,
            handoff_batch: wire::BATCH_RECORDS,
            successors: DEFAULT_SUCCESSORS as usize,
            replicas: DEFAULT_REPLICAS as usize,
            cluster_key: None,
            client_token: None,
            private_status: false,
            max_conns_per_client: DEFAULT_MAX_CONNS_PER_CLIENT,
            max_inflight_bytes: DEFAULT_MAX_INFLIGHT_BYTES,
        }
    }

    /// The largest node-to-node message: one maximal value plus its envelope, or one batch.
    fn max_message(&self) -> usize {
        self.max_value_bytes.max(wire::BATCH_BYTES) + 64 * 1024
    }
}

/// How far a running handoff has got: records and bytes sent, and the share of its id range
/// scanned so far.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Progress {
    pub to: String,
    pub leaving: bool,
    pub keys: u64,
    pub bytes: u64,
    pub percent: f64,
}

/// A failure as the client sees it: the HTTP status and the one-line reason.
impl From<Error> for KvOutcome {
    fn from(e: Error) -> KvOutcome {
        KvOutcome::Failed { status: e.status().as_u16(), reason: e.to_string() }
    }
}

/// Locks one of the node's small mutexes. They guard plain data changed in single steps, so
/// a panic in another holder (a bug) leaves it usable: poisoning is ignored, not propagated.
fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A node that has joined its ring (or started a new one). Cheap to clone.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    me: Peer,
    ring: Mutex<RingState>,
    /// Held shared by every local read and write, exclusively while ownership switches at
    /// the end of a handoff: no request sees the old owner's answer after the switch.
    gate: tokio::sync::RwLock<()>,
    /// Set when a write-through to a handoff's receiver failed: the handoff must not switch.
    write_through_failed: AtomicBool,
    /// Consecutive timeouts per peer address (see `peer_failed`).
    strikes: Mutex<std::collections::HashMap<String, u32>>,
    /// A re-replication push is running.
    rereplicating: AtomicBool,
    /// (range start, replica ids) the last complete re-replication was for.
    replicated_for: Mutex<Vec<u64>>,
    storage: Storage,
    peers: Peers,
    metrics: metrics::Metrics,
    /// The running handoff's progress, shown in `/status` (`sdht leave` draws it).
    progress: Mutex<Option<Progress>>,
    /// Checks incoming node-to-node calls; None when the ring runs without a key.
    key: Option<Arc<auth::ClusterKey>>,
    /// Cancelled by `POST /leave`: the node leaves and `serve` returns.
    leave: CancellationToken,
    tasks: TaskTracker,
}

impl Node {
    /// Opens the store and joins the ring through `config.bootstrap` (or starts a new ring).
    pub async fn start(config: Config) -> Result<Node> {
        if config.replicas == 0 || config.replicas > config.successors {
            return Err(Error::BadReplicas { replicas: config.replicas, successors: config.successors });
        }
        auth::check_token_needs_key(config.client_token.is_some(), config.cluster_key.is_some())?;
        let storage = Storage::open(&config.data_dir)?;
        let me = Peer::new(config.advertise.clone());
        let key = config.cluster_key.clone().map(auth::ClusterKey::new).transpose()?.map(Arc::new);
        if key.is_none() {
            tracing::warn!(node = %config.advertise, "no cluster key: node-to-node calls are not authenticated");
        }
        let metrics = metrics::Metrics::new();
        let peers = Peers::new(config.max_message(), key.clone(), metrics.peer_failures.clone());
        let ring = match &config.bootstrap {
            None => RingState::alone(me.clone()),
            Some(b) => membership::join(&me, &peers, &storage, b).await?,
        }
        .with_list_len(config.successors);
        tracing::info!(node = %me.addr, id = %me.id, succ = %ring.succ().addr, "joined");
        let node = Node {
            inner: Arc::new(Inner {
                me,
                ring: Mutex::new(ring),
                gate: tokio::sync::RwLock::new(()),
                write_through_failed: AtomicBool::new(false),
                rereplicating: AtomicBool::new(false),
                strikes: Mutex::new(std::collections::HashMap::new()),
                replicated_for: Mutex::new(Vec::new()),
                storage,
                peers,
                metrics,
                progress: Mutex::new(None),
                key,
                leave: CancellationToken::new(),
                tasks: TaskTracker::new(),
                config,
            }),
        };
        node.save_successor().await;
        Ok(node)
    }

    pub fn me(&self) -> &Peer {
        &self.inner.me
    }

    fn ring(&self) -> MutexGuard<'_, RingState> {
        locked(&self.inner.ring)
    }

    fn info(p: &Peer) -> NodeInfo {
        NodeInfo { addr: p.addr.clone(), id: p.id.0 }
    }

    fn progress(&self) -> Option<Progress> {
        locked(&self.inner.progress).clone()
    }

    fn status(&self) -> wire::Status {
        let ring = self.ring();
        wire::Status {
            me: Self::info(ring.me()),
            pred: ring.pred().map(Self::info),
            succ: Self::info(ring.succ()),
            keys: self.inner.storage.live_keys(),
        }
    }

    /// A client's get/put/delete, here or forwarded one node on.
    pub async fn kv(&self, req: KvRequest) -> KvReply {
        let id = key_id(req.key.as_bytes());
        let failed = |e: Error| KvReply { outcome: e.into(), hops: req.hops, owner: String::new() };
        // A next hop that refuses connections is dead: drop it and route again (to the next
        // live successor, or to ourselves once a dead predecessor is forgotten). A retried
        // write may be applied twice; it carries the same value, so the result is the same.
        let mut last_error = None;
        for _ in 0..=self.inner.config.successors + 1 {
            let gate = self.inner.gate.read().await;
            let route = self.ring().route(id, req.addressed);
            let (to, addressed) = match route {
                Route::Local => {
                    let outcome = self.local_kv(id.0, &req, gate).await.unwrap_or_else(KvOutcome::from);
                    return KvReply { outcome, hops: req.hops, owner: self.inner.me.addr.clone() };
                }
                Route::Forward { to, addressed } => (to, addressed),
                Route::Back { to } => (to, true),
            };
            drop(gate);
            if req.hops >= self.inner.config.hop_limit {
                return failed(Error::HopLimit(self.inner.config.hop_limit));
            }
            self.inner.metrics.forwarded.inc();
            let fwd = Request::Kv(KvRequest { hops: req.hops + 1, addressed, ..req.clone() });
            match self.inner.peers.call(&to.addr, &fwd, KV_TIMEOUT).await {
                Ok(Response::Kv(reply)) => return reply,
                Ok(_) => return failed(Error::Unavailable { addr: to.addr, source: PeerError::Unexpected }),
                // No answer came back on the connection: refused (the peer is gone: drop it),
                // or a pooled connection that died under the request; try again, on a new
                // connection or along the repaired route.
                Err(e @ PeerError::Connect(_)) => {
                    if e.is_refused() {
                        self.peer_dead(&to, &e).await;
                    }
                    last_error = Some(Error::Unavailable { addr: to.addr, source: e });
                }
                Err(source) => return failed(Error::Unavailable { addr: to.addr, source }),
            }
        }
        failed(last_error.unwrap_or(Error::NotServing))
    }

    /// Executes a request this node owns. `_gate` is held until the write (and its
    /// write-through to a handoff receiver) is done.
    async fn local_kv(
        &self,
        id: u64,
        req: &KvRequest,
        _gate: tokio::sync::RwLockReadGuard<'_, ()>,
    ) -> Result<KvOutcome> {
        let storage = &self.inner.storage;
        let key = req.key.as_bytes().to_vec();
        let (write, value) = match &req.op {
            KvOp::Get => {
                return Ok(match storage.get(id, &key)?.and_then(|r| r.value) {
                    Some(v) => KvOutcome::Value(v),
                    None => KvOutcome::NotFound,
                });
            }
            KvOp::Put(v) => (Write::Put { id, key, value: v.clone(), clock: now_micros() }, Some(v)),
            KvOp::Delete => (Write::Delete { id, key, clock: now_micros() }, None),
        };
        let version = match storage.write(write).await? {
            Applied::Stored { version, .. } => version,
            Applied::Unchanged => return Ok(KvOutcome::NotFound),
        };
        let rec = wire::Record { key: req.key.clone(), version, value: value.cloned() };
        self.replicate(&rec).await?;
        let through =
            self.ring().handoff().filter(|h| h.range.contains(crate::ring::Id(id))).map(|h| h.to.clone());
        if let Some(to) = through {
            if let Err(e) = self.merge_to(&to, vec![rec], BATCH_TIMEOUT).await {
                // The write is durable here and this node still owns the key: the handoff
                // is what fails, and it will start over.
                tracing::warn!(to = %to.addr, error = %e, "write-through failed; handoff will abort");
                self.inner.write_through_failed.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        Ok(KvOutcome::Done)
    }

    /// Copies a write made here to the next R-1 successors, in parallel, and waits for them.
    /// It is acknowledged once durable on every replica that answers, and on at least one
    /// when this node has any successor (a ring of one keeps its only copy).
    async fn replicate(&self, rec: &wire::Record) -> Result<()> {
        let targets = self.ring().replica_peers(self.inner.config.replicas.saturating_sub(1));
        if targets.is_empty() {
            return Ok(());
        }
        let mut calls = tokio::task::JoinSet::new();
        for t in targets {
            let (node, rec) = (self.clone(), rec.clone());
            calls.spawn(async move {
                let result = node.merge_to(&t, vec![rec], REPLICATE_TIMEOUT).await;
                (t, result)
            });
        }
        let mut acks = 0;
        while let Some(joined) = calls.join_next().await {
            match joined {
                Ok((_, Ok(()))) => acks += 1,
                Ok((t, Err(Error::Unavailable { source, .. }))) if source.is_refused() => {
                    self.peer_dead(&t, &source).await
                }
                Ok((t, Err(e))) => tracing::debug!(replica = %t.addr, error = %e, "replica write failed"),
                Err(_) => {}
            }
        }
        if acks == 0 {
            return Err(Error::NotReplicated);
        }
        Ok(())
    }

    /// Sends records to `to` to keep where newer.
    async fn merge_to(&self, to: &Peer, records: Vec<wire::Record>, timeout: Duration) -> Result<()> {
        let req = Request::Merge { from: Self::info(&self.inner.me), records };
        match self.inner.peers.call(&to.addr, &req, timeout).await {
            Ok(Response::Ack) => Ok(()),
            Ok(Response::Busy) => Err(Error::NotServing),
            Ok(_) => Err(Error::Unavailable { addr: to.addr.clone(), source: PeerError::Unexpected }),
            Err(source) => Err(Error::Unavailable { addr: to.addr.clone(), source }),
        }
    }

    /// Checks that a peer named in a message is who it claims to be.
    fn peer_from(info: &NodeInfo) -> Result<Peer> {
        let p = Peer { addr: info.addr.clone(), id: crate::ring::Id(info.id) };
        if p.is_consistent() {
            Ok(p)
        } else {
            Err(Error::ForgedId(info.addr.clone()))
        }
    }

    /// A node-to-node call.
    pub async fn rpc(&self, req: Request) -> Result<Response> {
        match req {
            Request::Kv(k) => {
                http::check_key(k.key.as_bytes())?;
                if let KvOp::Put(v) = &k.op {
                    if v.len() > self.inner.config.max_value_bytes {
                        return Err(Error::TooLarge { limit: self.inner.config.max_value_bytes });
                    }
                }
                Ok(Response::Kv(self.kv(k).await))
            }
            Request::FindSuccessor { id, hops } => self.find_successor(id, hops).await,
            Request::Neighbors => {
                let ring = self.ring();
                let succs = ring.successors().iter().map(Self::info).collect();
                Ok(Response::Neighbors { pred: ring.pred().map(Self::info), succs })
            }
            Request::Notify { from } => {
                let from = Self::peer_from(&from)?;
                self.on_notify(from);
                Ok(Response::Ack)
            }
            Request::Merge { from, records } => {
                Self::peer_from(&from)?;
                if records.len() > wire::BATCH_RECORDS {
                    return Err(BadInput::BatchTooLarge.into());
                }
                if self.ring().departed() {
                    // About to exit: what it stored now would be lost with it.
                    return Ok(Response::Busy);
                }
                let mut writes = Vec::with_capacity(records.len());
                for r in records {
                    http::check_key(r.key.as_bytes())?;
                    let id = key_id(r.key.as_bytes()).0;
                    writes.push(Write::Merge(Record {
                        id,
                        key: r.key.into_bytes(),
                        version: r.version,
                        value: r.value,
                    }));
                }
                self.inner.storage.write_all(writes).await?;
                Ok(Response::Ack)
            }
            Request::HandoffDone { from, pred } => {
                let from = Self::peer_from(&from)?;
                if let Some(p) = pred {
                    let p = Self::peer_from(&p)?;
                    self.ring().on_predecessor_hint(p.clone());
                    tracing::info!(node = %self.inner.me.addr, from = %from.addr, pred = %p.addr, "handoff received; predecessor set");
                }
                Ok(Response::Ack)
            }
            Request::Leaving { node, pred, succ } => {
                let node = Self::peer_from(&node)?;
                let pred = pred.as_ref().map(Self::peer_from).transpose()?;
                let succ = Self::peer_from(&succ)?;
                self.ring().on_neighbor_leaving(&node, pred, succ);
                tracing::info!(node = %self.inner.me.addr, left = %node.addr, "neighbour left");
                self.save_successor().await;
                Ok(Response::Ack)
            }
            Request::Status => Ok(Response::Status(self.status())),
        }
    }

    async fn find_successor(&self, id: u64, hops: u32) -> Result<Response> {
        use crate::ring::FindStep;
        let step = self.ring().find_successor(crate::ring::Id(id));
        match step {
            FindStep::Found(p) => Ok(Response::Successor { node: Self::info(&p), hops }),
            FindStep::Forward(_) if hops >= self.inner.config.hop_limit => {
                Err(Error::HopLimit(self.inner.config.hop_limit))
            }
            FindStep::Forward(p) => {
                let req = Request::FindSuccessor { id, hops: hops + 1 };
                self.inner
                    .peers
                    .call(&p.addr, &req, KV_TIMEOUT)
                    .await
                    .map_err(|source| Error::Unavailable { addr: p.addr, source })
            }
        }
    }
}

/// Serves `node` on `listener` until `shutdown` is cancelled or a client asks the node to
/// leave; then the node hands its keys to its successor, stops accepting, drains open
/// connections and joins every task before returning.
pub async fn serve(listener: TcpListener, node: Node, shutdown: CancellationToken) -> Result<()> {
    let halt = CancellationToken::new();
    node.inner.tasks.spawn(http::accept_loop(listener, node.clone(), halt.clone()));
    node.inner.tasks.spawn(membership::stabilize_loop(node.clone(), halt.clone()));
    node.inner.tasks.spawn(membership::purge_loop(node.clone(), halt.clone()));
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = node.inner.leave.cancelled() => {}
    }
    membership::leave(&node).await;
    halt.cancel();
    node.inner.tasks.close();
    node.inner.tasks.wait().await;
    tracing::info!(node = %node.inner.me.addr, "stopped");
    Ok(())
}
