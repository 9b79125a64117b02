//! The node's errors, and the one place where they become HTTP statuses.

use hyper::StatusCode;

use crate::{lmdb, wire};

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

/// Why a peer call failed.
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
    #[error("answered HTTP {0}")]
    Status(StatusCode),
    #[error("answer does not decode: {0}")]
    Decode(#[from] wire::Error),
    #[error("answered with the wrong message")]
    Unexpected,
    #[error("the answer is larger than any message may be")]
    TooLarge,
}

impl PeerError {
    /// The peer's address refused the connection: its process is gone (not merely slow).
    pub fn is_refused(&self) -> bool {
        matches!(self, PeerError::Connect(e) if e.is_connect())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed: 400; fix it, do not retry as is.
    #[error("{0}")]
    InvalidInput(#[from] BadInput),
    /// The value exceeds `--max-value-bytes`: 413.
    #[error("value is larger than the limit of {limit} bytes")]
    TooLarge { limit: usize },
    /// 404.
    #[error("not found")]
    NotFound,
    /// A route exists but not for this method: 405, with `allow` as the `Allow` header.
    #[error("method not allowed (allowed: {allow})")]
    MethodNotAllowed { allow: &'static str },
    /// The node's budget of request bodies in flight is spent: 503, retry shortly.
    #[error("too many request bodies in flight on this node; retry shortly")]
    Overloaded,
    /// The connection's address or the node has too many client connections: 503.
    #[error("{0}")]
    Crowded(#[from] Crowded),
    /// The client sent the body too slowly: 408.
    #[error("timed out reading the request body")]
    BodyTimeout,
    /// The request was forwarded `hop_limit` times without reaching its owner: the ring is
    /// inconsistent for the moment (508); retry shortly.
    #[error("hop limit of {0} reached before the key's owner; the ring is settling, retry shortly")]
    HopLimit(u32),
    /// A peer on the way did not answer: 503, retry later.
    #[error("peer {addr} unavailable: {source}")]
    Unavailable {
        addr: String,
        #[source]
        source: PeerError,
    },
    /// This node is not a ring member (still joining, or refusing the call): 503, retry.
    #[error("this node is not serving the ring right now")]
    NotServing,
    /// No valid credentials (cluster tag or bearer token): 401, and nothing changed.
    #[error("{0}")]
    Unauthorized(#[from] super::auth::AuthError),
    /// The configured cluster key is unusable: fix the key file.
    #[error(transparent)]
    ClusterKey(#[from] super::auth::KeyTooShort),
    /// A client token was configured without a cluster key: give one (startup only).
    #[error(transparent)]
    TokenWithoutKey(#[from] super::auth::TokenWithoutKey),
    /// A node-to-node message did not decode: 400.
    #[error("bad message: {0}")]
    Wire(#[from] wire::Error),
    /// A message names a node whose id is not the hash of its address: 400.
    #[error("node {0} claims an id that is not the hash of its address")]
    ForgedId(String),
    /// Local storage failed: 500.
    #[error(transparent)]
    Store(#[from] lmdb::Error),
    /// A group commit failed; none of its writes took effect: 500.
    #[error("storage commit failed: {0}")]
    CommitFailed(std::sync::Arc<lmdb::Error>),
    /// A blocking storage task or the writer thread went away: 500.
    #[error("storage task failed")]
    StoreGone,
    /// A node's task panicked or was cancelled: 500; a bug.
    #[error("a node task ended abnormally")]
    TaskFailed,
    /// Socket-level failure at startup: fix the address or permissions.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The bootstrap node did not answer in time: start it first, or check the address.
    #[error("could not join the ring through {bootstrap}: {source}")]
    Join {
        bootstrap: String,
        #[source]
        source: PeerError,
    },
    /// `--replicas` must be between 1 and `--successors`.
    #[error("--replicas {replicas} must be between 1 and --successors ({successors})")]
    BadReplicas { replicas: usize, successors: usize },
    /// A write is durable on its owner but no successor acknowledged its replica: 503, and
    /// the write is not acknowledged; retry.
    #[error("no replica acknowledged the write in time; it is not acknowledged, retry")]
    NotReplicated,
    /// `--bootstrap` names this node itself.
    #[error("--bootstrap names this node itself; omit it to start a new ring")]
    BootstrapIsSelf,
    /// The ring still links this address and no saved successor says where it sat: wait
    /// until the ring has let go of it, or start with its old data directory.
    #[error("the ring still lists {0} as a member and no saved successor is in the data directory")]
    StillMember(String),
}

impl Error {
    pub fn status(&self) -> StatusCode {
        match self {
            Error::InvalidInput(_) | Error::Wire(_) | Error::ForgedId(_) => StatusCode::BAD_REQUEST,
            Error::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Error::NotFound => StatusCode::NOT_FOUND,
            Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Error::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Error::Overloaded | Error::Crowded(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Error::HopLimit(_) => StatusCode::LOOP_DETECTED,
            Error::Unavailable { .. } | Error::NotServing | Error::Join { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Error::BootstrapIsSelf | Error::StillMember(_) | Error::BadReplicas { .. } => {
                StatusCode::CONFLICT
            }
            Error::NotReplicated => StatusCode::SERVICE_UNAVAILABLE,
            Error::ClusterKey(_) | Error::TokenWithoutKey(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Error::Store(_)
            | Error::CommitFailed(_)
            | Error::StoreGone
            | Error::TaskFailed
            | Error::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
