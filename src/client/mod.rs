//! The sdht client library: [`Client`] sends each request straight to the node it believes
//! owns the key, learning who owns what from the answers, the way token-aware database
//! drivers do. The ring does not depend on it: every node still routes by its own view, so a
//! request sent to the wrong node is forwarded and answered correctly, only later.
//!
//! ```no_run
//! # async fn demo() -> Result<(), sdht::client::Error> {
//! let sdht = sdht::Client::new(["127.0.0.1:8000", "127.0.0.1:8001"])?;
//! sdht.put("greeting", "hello").await?;
//! assert_eq!(sdht.get("greeting").await?.as_deref(), Some(&b"hello"[..]));
//! assert!(sdht.delete("greeting").await?);
//! # Ok(()) }
//! ```
//!
//! Owns: the owner cache ([`cache`], bounded), the choice of node for each attempt, the retry
//! rules, and the typed error. The HTTP calls themselves are [`NodeClient`]'s. Must not touch:
//! node internals; this speaks the public HTTP API a curl user does. Left out: scans and
//! batches (sdht has none), connections to more than one ring, reading from replicas.
//!
//! # Routing
//! Every `/kv` answer names the key's owner (`x-sdht-owner`) and its ring id
//! (`x-sdht-owner-id`). The client keeps a map of ring id -> address for the nodes it has heard
//! of, and a key goes to the first cached node at or clockwise after the key's id, the ring's
//! own rule. An answer that contradicts the map corrects it at once: the owner is (re)inserted
//! and cached nodes between the key and the owner, which cannot exist, are dropped. So after a
//! join or a leave, one request per moved range pays the extra hops. [`Client::ring`] loads
//! the whole map from one `/ring` walk.
//!
//! # Retries
//! A call makes at most [`Builder::attempts`] attempts (default 3), each to a different node
//! where one is left: first the believed owner, then any other cached node (the ring forwards
//! from there), then the seeds in the order given (a cold client starts with the first). A
//! node that refuses the connection, times out or breaks it is dropped from the cache until an
//! answer names it again. Which failures are retried:
//! - a refused connection (nothing was sent): every operation;
//! - a timeout, a broken connection, or a 5xx answer (the request may or may not have been
//!   applied): GET always; PUT too, because re-sending the same value is harmless: the retry
//!   gets a newer version and last-writer-wins keeps the same value, and the call had not
//!   returned, so a concurrent write may be ordered either side of it; DELETE only on 504 and
//!   508, which say it was not applied, because a retried delete that finds the key already
//!   deleted would answer "absent" for a key this very call deleted;
//! - 4xx answers (bad key, token, size): never, another node would say the same.

#![warn(missing_docs)]

pub mod cache;
mod info;
mod node;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use bytes::Bytes;
use hyper::{Method, StatusCode};

use crate::ring::{key_id, Id};
use cache::OwnerCache;
pub use info::{Handoff, Ring, RingNode, Status};
pub use node::{encode_key, KvAnswer, NodeClient, DEFAULT_CALL_TIMEOUT};

/// Why a client call failed. An absent key is not an error (`get` gives `None`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The client was given no seed address.
    #[error("no seed node given")]
    NoSeeds,
    /// An address is not `host:port`.
    #[error("{0} is not a valid host:port")]
    BadAddress(String),
    /// No connection could be made: nothing was sent.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The node.
        addr: String,
        /// The underlying failure.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The connection broke after the request was sent: it may have been applied.
    #[error("connection to {addr} broken: {source}")]
    Connection {
        /// The node.
        addr: String,
        /// The underlying failure.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// No answer in time: the request may have been applied.
    #[error("{addr} did not answer within {after:?}")]
    Timeout {
        /// The node.
        addr: String,
        /// The timeout that passed.
        after: Duration,
    },
    /// The node refused the request itself (a 4xx: bad key, value too large, missing or wrong
    /// token); asking again would not help.
    #[error("{addr} refused the request: {status}: {message}")]
    Rejected {
        /// The node.
        addr: String,
        /// The HTTP status.
        status: StatusCode,
        /// The node's one-line reason.
        message: String,
    },
    /// The ring could not serve the request now (a 5xx: no quorum, deadline passed, a routing
    /// loop while the ring settles, overload); a retry later may succeed.
    #[error("{addr} could not serve the request: {status}: {message}")]
    Unavailable {
        /// The node.
        addr: String,
        /// The HTTP status.
        status: StatusCode,
        /// The node's one-line reason.
        message: String,
    },
    /// The answer was not what the API promises.
    #[error("{addr}: unexpected answer: {reason}")]
    BadAnswer {
        /// The node.
        addr: String,
        /// What was wrong with it.
        reason: String,
    },
}

/// A client call's result.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// The error for a status that is neither success nor "absent".
    fn from_status(addr: &str, status: StatusCode, body: &[u8]) -> Error {
        let (addr, message) = (addr.to_string(), String::from_utf8_lossy(body).trim().to_string());
        if status.is_client_error() {
            Error::Rejected { addr, status, message }
        } else if status.is_server_error() {
            Error::Unavailable { addr, status, message }
        } else {
            Error::BadAnswer { addr, reason: format!("status {status}") }
        }
    }

    /// True if the node itself failed (no connection, no answer): it may be gone.
    fn node_failed(&self) -> bool {
        matches!(self, Error::Connect { .. } | Error::Connection { .. } | Error::Timeout { .. })
    }

    /// True if `op` may be sent again after this error (see the module's "Retries").
    fn retry_allowed(&self, op: &Op) -> bool {
        let not_applied = |s: &StatusCode| matches!(s.as_u16(), 504 | 508);
        match (self, op) {
            (Error::Connect { .. }, _) => true,
            (
                Error::Timeout { .. } | Error::Connection { .. } | Error::Unavailable { .. },
                Op::Get | Op::Put(_),
            ) => true,
            (Error::Unavailable { status, .. }, Op::Delete) => not_applied(status),
            _ => false,
        }
    }
}

/// One key operation, for [`Client::request`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Read the key.
    Get,
    /// Store the value under the key.
    Put(Bytes),
    /// Delete the key.
    Delete,
}

impl Op {
    fn method(&self) -> Method {
        match self {
            Op::Get => Method::GET,
            Op::Put(_) => Method::PUT,
            Op::Delete => Method::DELETE,
        }
    }
}

/// A key operation's outcome, with where and how it was served.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The value read (a GET of a present key); None otherwise.
    pub value: Option<Bytes>,
    /// False if the key was absent (a GET or DELETE answered 404); true for a stored PUT.
    pub found: bool,
    /// The version read or written (`x-sdht-version`); 0 if none.
    pub version: u64,
    /// Forwards between the node asked and the owner (`x-sdht-hops`): 0 when the client's
    /// guess was right.
    pub hops: u32,
    /// The owner that served it (`x-sdht-owner`).
    pub owner: Option<String>,
    /// The node the answer came from (the one the last attempt was sent to).
    pub node: String,
    /// Attempts made: 1 unless a node failed.
    pub attempts: u32,
}

/// Settings of a [`Client`], from [`Client::builder`].
#[derive(Debug, Clone)]
pub struct Builder {
    seeds: Vec<String>,
    token: Option<String>,
    timeout: Duration,
    attempts: u32,
}

/// Default attempts per call: the believed owner and two other nodes.
const DEFAULT_ATTEMPTS: u32 = 3;

impl Builder {
    /// Presents `token` as `Authorization: Bearer` (nodes started with a client token).
    pub fn token(mut self, token: impl Into<String>) -> Builder {
        self.token = Some(token.into());
        self
    }

    /// Longest wait for one attempt (default [`DEFAULT_CALL_TIMEOUT`]).
    pub fn timeout(mut self, timeout: Duration) -> Builder {
        self.timeout = timeout;
        self
    }

    /// Most attempts per call, at least 1 (default 3).
    pub fn attempts(mut self, attempts: u32) -> Builder {
        self.attempts = attempts.max(1);
        self
    }

    /// The client; fails if no seed was given or one is not `host:port`.
    pub fn build(self) -> Result<Client> {
        if self.seeds.is_empty() {
            return Err(Error::NoSeeds);
        }
        for s in &self.seeds {
            let uri = format!("http://{s}/").parse::<hyper::Uri>();
            if !uri.is_ok_and(|u| u.port().is_some() && u.host().is_some_and(|h| !h.is_empty())) {
                return Err(Error::BadAddress(s.clone()));
            }
        }
        let node = NodeClient::new().with_token(self.token).with_timeout(self.timeout);
        Ok(Client {
            inner: Arc::new(Inner {
                node,
                seeds: self.seeds,
                cache: RwLock::new(OwnerCache::default()),
                attempts: self.attempts,
                turn: AtomicUsize::new(0),
            }),
        })
    }
}

/// An owner-aware sdht client: keep-alive connections to every node it talks to, a bounded
/// cache of who owns which id range, timeouts and safe retries. Cheap to clone; clones share
/// connections and cache, so one client serves many tasks.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    node: NodeClient,
    seeds: Vec<String>,
    cache: RwLock<OwnerCache>,
    attempts: u32,
    /// Rotates the choice among fallback nodes, so failures and load spread.
    turn: AtomicUsize,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("seeds", &self.inner.seeds)
            .field("cached_nodes", &self.cached_nodes())
            .field("attempts", &self.inner.attempts)
            .field("node", &self.inner.node)
            .finish()
    }
}

impl Client {
    /// A client that starts from `seeds` (`host:port` of one or more ring members), without a
    /// token. It learns the other nodes from the answers.
    pub fn new<S: Into<String>>(seeds: impl IntoIterator<Item = S>) -> Result<Client> {
        Client::builder(seeds).build()
    }

    /// Settings for a client starting from `seeds`.
    pub fn builder<S: Into<String>>(seeds: impl IntoIterator<Item = S>) -> Builder {
        Builder {
            seeds: seeds.into_iter().map(Into::into).collect(),
            token: None,
            timeout: DEFAULT_CALL_TIMEOUT,
            attempts: DEFAULT_ATTEMPTS,
        }
    }

    /// The value of `key`, or None if it is absent.
    pub async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        Ok(self.request(key, Op::Get).await?.value)
    }

    /// Stores `value` under `key`; returns once a quorum of copies is durable.
    pub async fn put(&self, key: &str, value: impl Into<Bytes>) -> Result<()> {
        self.request(key, Op::Put(value.into())).await.map(|_| ())
    }

    /// Deletes `key`; false if it was absent.
    pub async fn delete(&self, key: &str) -> Result<bool> {
        Ok(self.request(key, Op::Delete).await?.found)
    }

    /// Runs `op` on `key` and tells how it was served (hops, owner, version).
    pub async fn request(&self, key: &str, op: Op) -> Result<Answer> {
        let id = key_id(key.as_bytes());
        let body = match &op {
            Op::Put(v) => v.clone(),
            _ => Bytes::new(),
        };
        self.with_fallback(Some(id), &op, |node, attempt| {
            let body = body.clone();
            let method = op.method();
            async move {
                let a = self.inner.node.kv(&node, method, key, body).await?;
                self.answer(id, &node, a, attempt)
            }
        })
        .await
    }

    /// Calls `call` on the node picked for `key` (see `pick`), then on others while the error
    /// allows `op` to be retried, up to the attempt limit. A node that failed is forgotten.
    async fn with_fallback<T, F, Fut>(&self, key: Option<Id>, op: &Op, mut call: F) -> Result<T>
    where
        F: FnMut(String, u32) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let mut tried: Vec<String> = Vec::new();
        loop {
            let node = self.pick(key, &tried);
            match call(node.clone(), tried.len() as u32 + 1).await {
                Ok(t) => return Ok(t),
                Err(e) => {
                    if e.node_failed() {
                        self.forget(&node);
                    }
                    tried.push(node);
                    if !e.retry_allowed(op) || tried.len() as u32 >= self.inner.attempts {
                        return Err(e);
                    }
                }
            }
        }
    }

    /// Learns the owner from a `/kv` answer and turns it into an [`Answer`] or an error.
    fn answer(&self, id: Id, node: &str, a: KvAnswer, attempts: u32) -> Result<Answer> {
        if let (Some(owner), Some(owner_id)) = (&a.owner, a.owner_id) {
            self.learn(id, owner_id, owner);
        }
        let found = match a.status {
            StatusCode::OK | StatusCode::NO_CONTENT => true,
            StatusCode::NOT_FOUND => false,
            s => return Err(Error::from_status(node, s, &a.body)),
        };
        Ok(Answer {
            value: (a.status == StatusCode::OK).then_some(a.body),
            found,
            version: a.version.unwrap_or(0),
            hops: a.hops.unwrap_or(0),
            owner: a.owner,
            node: node.to_string(),
            attempts,
        })
    }

    /// The ring walked clockwise from one node (a seed or a cached node, with the same
    /// fallback as a GET). A complete walk replaces the owner cache: afterwards every key goes
    /// straight to its owner.
    pub async fn ring(&self) -> Result<Ring> {
        let ring: Ring = self
            .with_fallback(None, &Op::Get, |node, _| async move {
                parse(&node, self.inner.node.json(&node, "/ring").await?)
            })
            .await?;
        if ring.complete {
            self.cache().replace(ring.nodes.iter().map(|n| (n.id.0, n.addr.clone())));
        }
        Ok(ring)
    }

    /// The state of the node at `node` (`host:port`); no retry, since it is about that node.
    pub async fn status(&self, node: &str) -> Result<Status> {
        parse(node, self.inner.node.json(node, "/status").await?)
    }

    /// The node the client would send a request for `key` to now, if it knows one.
    pub fn owner_of(&self, key: &str) -> Option<String> {
        let cache = self.inner.cache.read().unwrap_or_else(PoisonError::into_inner);
        cache.owner_of(key_id(key.as_bytes()).0).map(|(_, a)| a.to_string())
    }

    /// How many nodes the owner cache holds (at most [`cache::MAX_CACHED_NODES`]).
    pub fn cached_nodes(&self) -> usize {
        self.inner.cache.read().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// The per-node layer underneath, sharing this client's connections and token: for calls
    /// that must go to one particular node.
    pub fn nodes(&self) -> &NodeClient {
        &self.inner.node
    }

    /// The node for the next attempt: the believed owner of `key` unless already tried; else
    /// another cached node not yet tried (rotating, so load and failures spread); else the
    /// first seed not yet tried, in the order given; else a seed again.
    fn pick(&self, key: Option<Id>, tried: &[String]) -> String {
        let untried = |a: &&str| !tried.iter().any(|t| t == a);
        let cache = self.inner.cache.read().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, owner)) = key.and_then(|k| cache.owner_of(k.0)) {
            if untried(&owner) {
                return owner.to_string();
            }
        }
        let turn = self.inner.turn.fetch_add(1, Ordering::Relaxed);
        let cached: Vec<&str> = cache.addrs().filter(untried).collect();
        if !cached.is_empty() {
            return cached[turn % cached.len()].to_string();
        }
        let seeds = &self.inner.seeds;
        match seeds.iter().map(String::as_str).find(untried) {
            Some(seed) => seed.to_string(),
            None => seeds[turn % seeds.len()].clone(),
        }
    }

    fn cache(&self) -> std::sync::RwLockWriteGuard<'_, OwnerCache> {
        self.inner.cache.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes an answer's owner into the cache; a read lock suffices when nothing changes.
    fn learn(&self, key: Id, owner_id: Id, owner: &str) {
        let agrees =
            self.inner.cache.read().unwrap_or_else(PoisonError::into_inner).agrees(key.0, owner_id.0, owner);
        if !agrees {
            self.cache().learn(key.0, owner_id.0, owner);
        }
    }

    fn forget(&self, node: &str) {
        self.cache().forget(node);
    }
}

/// A JSON answer in its typed form.
fn parse<T: serde::de::DeserializeOwned>(node: &str, v: serde_json::Value) -> Result<T> {
    serde_json::from_value(v).map_err(|e| Error::BadAnswer { addr: node.to_string(), reason: e.to_string() })
}
