//! The node's errors: what can go wrong serving a request ([`Error`]), calling a peer
//! ([`PeerError`]) and starting ([`StartError`]). None of them knows HTTP: `http.rs` is the
//! one place that turns them into statuses.

use crate::lmdb;
use crate::wire::{self, Fault};

/// What is wrong with a client's request. Each says what to fix.
#[derive(Debug, thiserror::Error, Clone, Copy, PartialEq, Eq)]
pub enum BadInput {
    #[error("key is empty")]
    EmptyKey,
    #[error("key is longer than 256 bytes")]
    KeyTooLong,
    #[error("key is not valid percent-encoding")]
    BadPercentEncoding,
    #[error("key is not valid UTF-8")]
    KeyNotUtf8,
    #[error("key must be one path segment (encode '/' as %2F)")]
    KeyHasSlash,
    #[error("Content-Length is not a number")]
    BadContentLength,
    #[error("the request body was cut short")]
    TruncatedBody,
    #[error("a handoff batch holds more records than a node sends")]
    BatchTooLarge,
    #[error("an HTTP/1.1 request needs exactly one Host header")]
    BadHost,
}

/// Why a client's connection may not carry its request (503; the connection is closed).
#[derive(Debug, thiserror::Error, Clone, Copy, PartialEq, Eq)]
pub enum Crowded {
    #[error("too many connections from your address (limit {0}); reuse fewer connections")]
    Address(usize),
    #[error("too many client connections to this node; retry shortly")]
    Node,
}

/// Why a call to a peer failed.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("no connection: {0}")]
    Connect(#[from] hyper_util::client::legacy::Error),
    #[error("reading the answer failed: {0}")]
    Body(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("the address is not a valid host:port")]
    BadAddress,
    #[error("no answer in time")]
    Timeout,
    /// Refused at the HTTP level: bad credentials (401) or a message it could not decode.
    #[error("refused the call (HTTP {0})")]
    Refused(u16),
    #[error("answer does not decode: {0}")]
    Decode(#[from] wire::Error),
    #[error("answered with the wrong message")]
    Unexpected,
    #[error("the answer is larger than any message may be")]
    TooLarge,
    /// The peer took the call and reports a failure.
    #[error("{0}")]
    Fault(Fault),
}

impl PeerError {
    /// The peer's address refused the connection: its process is gone (not merely slow, and
    /// not a connection attempt that timed out on a lossy link).
    pub fn is_refused(&self) -> bool {
        let PeerError::Connect(e) = self else { return false };
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(err) = source {
            if let Some(io) = err.downcast_ref::<std::io::Error>() {
                return io.kind() == std::io::ErrorKind::ConnectionRefused;
            }
            source = err.source();
        }
        false
    }

    /// What the membership protocol learns from this failure about the peer.
    pub fn failure(&self) -> crate::ring::Failure {
        use crate::ring::Failure;
        match self {
            e if e.is_refused() => Failure::Gone,
            PeerError::Refused(_) | PeerError::Fault(_) | PeerError::Decode(_) | PeerError::Unexpected => {
                Failure::Rejected
            }
            _ => Failure::Silent,
        }
    }
}

/// Why a request failed at this node.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed: fix it, do not retry as is.
    #[error("{0}")]
    InvalidInput(#[from] BadInput),
    /// The value exceeds `--max-value-bytes`.
    #[error("value is larger than the limit of {limit} bytes")]
    TooLarge { limit: usize },
    #[error("not found")]
    NotFound,
    /// A route exists but not for this method; `allow` goes in the `Allow` header.
    #[error("method not allowed (allowed: {allow})")]
    MethodNotAllowed { allow: &'static str },
    /// The node's budget of request bodies in flight is spent; retry shortly.
    #[error("too many request bodies in flight on this node; retry shortly")]
    Overloaded,
    /// The connection's address or the node has too many client connections.
    #[error("{0}")]
    Crowded(#[from] Crowded),
    /// The client sent the body too slowly.
    #[error("timed out reading the request body")]
    BodyTimeout,
    /// No valid credentials (cluster tag or bearer token); nothing changed.
    #[error("{0}")]
    Unauthorized(#[from] super::auth::AuthError),
    /// A node-to-node message did not decode.
    #[error("bad message: {0}")]
    Wire(#[from] wire::Error),
    /// A message names a node whose id is not the hash of its address.
    #[error("node {0} claims an id that is not the hash of its address")]
    ForgedId(String),
    /// The request failed in the ring (here or further on).
    #[error(transparent)]
    Fault(#[from] Fault),
    /// Local storage failed.
    #[error(transparent)]
    Store(#[from] lmdb::Error),
    /// A group commit failed; none of its writes took effect.
    #[error("storage commit failed: {0}")]
    CommitFailed(std::sync::Arc<lmdb::Error>),
    /// A blocking storage task or the writer thread went away.
    #[error("storage task failed")]
    StoreGone,
}

impl Error {
    /// Turns a failed call to `to` into this node's error.
    pub fn from_peer(to: &crate::ring::Peer) -> impl FnOnce(PeerError) -> Error + '_ {
        move |e| match e {
            PeerError::Fault(f) => Error::Fault(f),
            e => Error::Fault(Fault::Unavailable { addr: to.addr.clone(), reason: e.to_string() }),
        }
    }
}

impl From<Error> for Fault {
    fn from(e: Error) -> Fault {
        match e {
            Error::Fault(f) => f,
            Error::TooLarge { limit } => Fault::TooLarge { limit: limit as u64 },
            Error::InvalidInput(_) | Error::Wire(_) | Error::ForgedId(_) => Fault::BadInput(e.to_string()),
            Error::Store(_) | Error::CommitFailed(_) | Error::StoreGone => Fault::Storage(e.to_string()),
            other => Fault::BadInput(other.to_string()),
        }
    }
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// `--replicas` must be between 1 and `--successors`.
    #[error("--replicas {replicas} must be between 1 and --successors ({successors})")]
    BadReplicas { replicas: usize, successors: usize },
    /// `--bootstrap` names this node itself.
    #[error("--bootstrap names this node itself; omit it to start a new ring")]
    BootstrapIsSelf,
    /// No seed answered before the join deadline.
    #[error("could not join the ring through {0}: no seed answered in time")]
    Join(String),
    /// A seed refused our credentials.
    #[error("could not join the ring through {0}: it refused this node's calls (HTTP 401: is the cluster key the same on every node?)")]
    JoinRefused(String),
    /// The ring still links this address and no saved successor says where it sat.
    #[error("the ring still lists {0} as a member and no saved successor is in the data directory")]
    StillMember(String),
    /// The configured cluster key is unusable.
    #[error(transparent)]
    ClusterKey(#[from] super::auth::KeyTooShort),
    /// A client token was configured without a cluster key.
    #[error(transparent)]
    TokenWithoutKey(#[from] super::auth::TokenWithoutKey),
    #[error(transparent)]
    Store(#[from] lmdb::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

pub type Result<T> = std::result::Result<T, Error>;
