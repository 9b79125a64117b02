//! The running node: wires the parts together and starts and stops them.
//!
//! - `membership.rs`: the one task that owns the ring's state machine (`ring::Membership`),
//!   performs its actions and publishes the `View` every request routes by.
//! - `request.rs`: a client's get/put/delete: routing, forwarding, quorum writes;
//!   `replicate.rs`: the replication streams that carry an owner's writes to its replicas.
//! - `rpc.rs`: what this node answers to other nodes; `peer.rs`: what it asks them (one typed
//!   function per message).
//! - `transfer.rs`: copying and dropping ranges; `storage.rs`: the store off the async threads.
//! - `http.rs`: the HTTP server and the only mapping of errors to statuses; `limits.rs` and
//!   `body.rs`: its connection and request-body budgets; `auth.rs`: tags and tokens.
//! - `clock.rs`: versions (a hybrid logical clock) and per-epoch write counts.
//!
//! Must not touch: routing and membership rules (`ring`), byte formats (`wire`), the record
//! layout (`lmdb`).
//!
//! Left out on purpose: TLS (tags authenticate calls, they do not hide them), quorum reads
//! (the owner answers alone), and garbage collection of copies beyond a range's R replicas.

pub mod auth;
mod balance;
mod body;
mod clock;
mod config;
mod error;
mod http;
mod keys;
mod limits;
mod membership;
mod metrics;
mod peer;
mod replicate;
mod request;
mod rpc;
mod storage;
mod transfer;

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use body::DEFAULT_MAX_INFLIGHT_BYTES;
pub use config::{
    Config, DEFAULT_HOP_LIMIT, DEFAULT_MAX_VALUE_BYTES, DEFAULT_PEER_TIMEOUT, DEFAULT_REPLICAS,
    DEFAULT_STABILIZE, DEFAULT_SUCCESSORS,
};
pub use error::{BadInput, Error, PeerError, Result, StartError};
pub use keys::{parse_key, MAX_KEY_BYTES};
pub use limits::DEFAULT_MAX_CONNS_PER_CLIENT;

use crate::ring::{Membership, Peer, View};
use crate::wire::NodeInfo;
use clock::{EpochWrites, Hlc};
use membership::Input;
use peer::Peers;
use storage::Storage;

/// Events waiting for the membership task. Peers re-send what is dropped when it is full
/// (notifies every round), so a flood of calls cannot grow memory.
const INBOX: usize = 1024;

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

/// Locks one of the node's small mutexes. They guard plain data changed in single steps, so
/// a panic in another holder (a bug) leaves it usable: poisoning is ignored, not propagated.
fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A node that has joined its ring (or started a new one). Cheap to clone.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Shared>,
}

/// Everything the node's tasks share. The ring state itself is not here: the membership task
/// owns it and publishes `view`.
struct Shared {
    config: Config,
    me: Peer,
    view: watch::Receiver<Arc<View>>,
    inbox: mpsc::Sender<Input>,
    storage: Storage,
    peers: Peers,
    metrics: metrics::Metrics,
    /// The running handoff's progress, shown in `/status` (`sdht leave` draws it).
    progress: Mutex<Option<Progress>>,
    /// Checks incoming node-to-node calls; None when the ring runs without a key.
    key: Option<Arc<auth::ClusterKey>>,
    writes: EpochWrites,
    /// The replication streams, one per replica peer.
    streams: replicate::Streams,
    clock: Hlc,
    /// The points this node offered joiners lately (`ring::balance`): a small bounded list,
    /// locked only to compute an offer, never across a call.
    offers: Mutex<crate::ring::balance::Offers>,
    started: Instant,
    /// Cancelled by `POST /leave`: the node leaves and `serve` returns.
    leave: CancellationToken,
    /// Cancelled when the membership protocol says the node may stop.
    exited: CancellationToken,
    /// Stops every background task.
    halt: CancellationToken,
    tasks: TaskTracker,
}

impl Node {
    /// Opens the store and joins the ring through `config.bootstrap` or the peers saved in
    /// the data directory (or starts a new ring).
    pub async fn start(config: Config) -> std::result::Result<Node, StartError> {
        if config.replicas == 0 || config.replicas > config.successors {
            return Err(StartError::BadReplicas { replicas: config.replicas, successors: config.successors });
        }
        auth::check_token_needs_key(config.client_token.is_some(), config.cluster_key.is_some())?;
        if config.bootstrap.as_deref() == Some(config.advertise.as_str()) {
            return Err(StartError::BootstrapIsSelf);
        }
        let storage = Storage::open(&config.data_dir)?;
        let key = config.cluster_key.clone().map(auth::ClusterKey::new).transpose()?.map(Arc::new);
        let metrics = metrics::Metrics::new();
        let peers = Peers::new(
            config.max_message(),
            key.clone(),
            metrics.peer_failures.clone(),
            metrics.peer_calls.clone(),
        );
        let me =
            Peer { id: balance::choose_id(&config, &storage, &peers).await, addr: config.advertise.clone() };
        if key.is_none() {
            tracing::warn!(node = %config.advertise, "no cluster key: node-to-node calls are not authenticated");
        }
        membership::discard_if_stale(&storage).await?;
        let saved = membership::load_saved(&storage).await;
        let seeds: Vec<String> = config.bootstrap.iter().cloned().collect();
        let machine = Membership::start(me.clone(), config.settings(), seeds, saved, 0);
        let (publish, view) = watch::channel(Arc::new(machine.view()));
        let (inbox, rx) = mpsc::channel(INBOX);
        let node = Node {
            inner: Arc::new(Shared {
                me,
                view,
                inbox,
                storage,
                peers,
                metrics,
                progress: Mutex::new(None),
                key,
                writes: EpochWrites::default(),
                streams: Default::default(),
                clock: Hlc::default(),
                offers: Mutex::new(Default::default()),
                started: Instant::now(),
                leave: CancellationToken::new(),
                exited: CancellationToken::new(),
                halt: CancellationToken::new(),
                tasks: TaskTracker::new(),
                config,
            }),
        };
        let (joined, started) = oneshot::channel();
        node.inner.tasks.spawn(membership::run(node.clone(), machine, rx, publish, joined));
        let outcome = started.await.unwrap_or(Err(StartError::Join(String::new())));
        if let Err(e) = outcome {
            node.inner.halt.cancel();
            node.inner.tasks.close();
            node.inner.tasks.wait().await;
            return Err(e);
        }
        let view = node.view();
        tracing::info!(node = %view.me.addr, id = %view.me.id, succ = %view.succ().addr, "joined");
        Ok(node)
    }

    pub fn me(&self) -> &Peer {
        &self.inner.me
    }

    /// The ring as the membership task last published it.
    fn view(&self) -> Arc<View> {
        self.inner.view.borrow().clone()
    }

    /// The ring as this node sees it now (for tests and benchmarks running nodes in process).
    pub fn ring_view(&self) -> Arc<View> {
        self.view()
    }

    /// Calls this node has made to peers so far (the `sdht_peer_calls` metric).
    pub fn peer_calls(&self) -> u64 {
        self.inner.metrics.peer_calls.get()
    }

    /// Milliseconds since this node started: the membership state machine's clock.
    fn now(&self) -> u64 {
        self.inner.started.elapsed().as_millis() as u64
    }

    fn info(p: &Peer) -> NodeInfo {
        NodeInfo { addr: p.addr.clone(), id: p.id.0 }
    }

    /// Checks that a peer named in a message is who it claims to be. With ids from addresses
    /// the id must be its address's hash; a balanced id cannot be checked this way (it was
    /// chosen, not derived), so with balanced ids any id is taken as given.
    fn peer_from(&self, info: &NodeInfo) -> Result<Peer> {
        let p = Peer { addr: info.addr.clone(), id: crate::ring::Id(info.id) };
        if !self.inner.config.id_from_address || p.is_consistent() {
            Ok(p)
        } else {
            Err(Error::ForgedId(info.addr.clone()))
        }
    }

    fn progress(&self) -> Option<Progress> {
        locked(&self.inner.progress).clone()
    }

    fn set_progress(&self, p: Option<Progress>) {
        *locked(&self.inner.progress) = p;
    }
}

/// Serves `node` on `listener` until `shutdown` is cancelled or a client asks the node to
/// leave; then the node hands its keys to its successor, stops accepting, drains open
/// connections and joins every task before returning.
pub async fn serve(listener: TcpListener, node: Node, shutdown: CancellationToken) {
    let inner = &node.inner;
    inner.tasks.spawn(http::accept_loop(listener, node.clone(), inner.halt.clone()));
    inner.tasks.spawn(storage::purge_loop(inner.storage.clone(), inner.view.clone(), inner.halt.clone()));
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = inner.leave.cancelled() => {}
        _ = inner.exited.cancelled() => {}
    }
    node.membership_event(crate::ring::Event::Leave).await;
    inner.exited.cancelled().await;
    inner.halt.cancel();
    inner.tasks.close();
    inner.tasks.wait().await;
    tracing::info!(node = %inner.me.addr, "stopped");
}
