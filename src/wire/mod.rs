//! Node-to-node messages and their byte format: postcard after a one-byte format version.
//!
//! Owns: every message a node sends another over `POST /internal/rpc`, the version byte, and
//! the limits a receiver checks before it trusts a message. This is the only module that knows
//! how messages look as bytes; golden vectors in the tests notice any change of format.
//!
//! Must not touch: sockets, storage, routing decisions. Addresses and ids travel as plain
//! strings and integers; `src/node` turns them into ring peers and checks that each id is the
//! hash of its address.
//!
//! Left out on purpose: compatibility with other versions. A message whose first byte is not
//! `VERSION` is refused, not guessed at; a mixed-version ring is not supported.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Format version, the first byte of every message. Bump it on any incompatible change.
pub const VERSION: u8 = 5;

/// Most records one handoff batch carries, so a million-key handoff is many small requests.
pub const BATCH_RECORDS: usize = 1024;
/// Bytes one handoff batch aims at (a single larger value still travels alone).
pub const BATCH_BYTES: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The message is empty.
    #[error("empty message")]
    Empty,
    /// Written by another format version; the sender must run the same sdht version.
    #[error("unsupported message format version {0} (this node speaks {VERSION})")]
    Version(u8),
    /// The bytes do not decode as this message (truncated, garbage, trailing bytes).
    #[error("malformed message: {0}")]
    Malformed(#[from] postcard::Error),
}

/// Encoding and decoding of one message type.
pub trait Message: Serialize + DeserializeOwned {
    fn encode(&self) -> Vec<u8> {
        let mut out = vec![VERSION];
        // Writing into a Vec cannot fail for these types (no maps with non-string keys, no
        // unsized sequences), so an error here is a bug in a message definition.
        postcard::to_io(self, &mut out).expect("message types serialise infallibly");
        out
    }

    fn decode(bytes: &[u8]) -> Result<Self, Error> {
        match bytes.split_first() {
            Some((&VERSION, body)) => {
                let (msg, rest) = postcard::take_from_bytes(body)?;
                if rest.is_empty() {
                    Ok(msg)
                } else {
                    Err(Error::Malformed(postcard::Error::DeserializeBadEncoding))
                }
            }
            Some((&v, _)) => Err(Error::Version(v)),
            None => Err(Error::Empty),
        }
    }
}

/// A ring member as it travels: its advertised address and its id (the receiver checks that
/// the id is the hash of the address).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct NodeInfo {
    pub addr: String,
    pub id: u64,
}

/// One key's state as it moves between nodes. The id is not sent: the receiver hashes the key.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Record {
    pub key: String,
    pub version: u64,
    /// None is a tombstone.
    #[serde(with = "serde_bytes")]
    pub value: Option<Vec<u8>>,
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum KvOp {
    Get,
    Put(#[serde(with = "serde_bytes")] Vec<u8>),
    Delete,
    /// A record found on a node that does not own it, sent on to its owner with its own
    /// version (None: a tombstone). Kept where newer, like a handoff.
    Restore(#[serde(with = "serde_bytes")] Option<Vec<u8>>),
}

/// A client's get/put/delete on its way to the owner.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct KvRequest {
    pub key: String,
    pub op: KvOp,
    /// Forwards so far, counted from the node the client asked.
    pub hops: u32,
    /// The sender's successor pointer says the receiver owns the key.
    pub addressed: bool,
    /// A write's version, stamped once by the node the client asked (a hybrid logical clock
    /// in microseconds); 0 for a read.
    pub version: u64,
    /// Unix time in milliseconds after which no node forwards or applies the request.
    pub deadline_ms: u64,
}

/// Why a request or a call failed, as one node tells another. Only the HTTP layer turns these
/// into status codes.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize, thiserror::Error)]
pub enum Fault {
    #[error("hop limit of {0} reached before the key's owner; the ring is settling, retry shortly")]
    HopLimit(u32),
    #[error("peer {addr} unavailable: {reason}")]
    Unavailable { addr: String, reason: String },
    #[error("this node is not serving the ring right now")]
    NotServing,
    #[error("this node is cut off from the ring and cannot make a quorum; the write is refused, retry")]
    CutOff,
    #[error("only {acked} of the {needed} copies a write needs are durable; it is not acknowledged, retry")]
    NoQuorum { acked: u32, needed: u32 },
    #[error("a range handoff to {0} failed under the write; it is not acknowledged, retry")]
    HandoffFailed(String),
    #[error("value is larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("{0}")]
    BadInput(String),
    #[error("version {0} is too far ahead of this node's clock")]
    VersionAhead(u64),
    #[error("the request's deadline passed before it reached its owner; it was not applied")]
    DeadlinePassed,
    #[error("storage failed: {0}")]
    Storage(String),
    #[error("busy; retry later")]
    Busy,
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum KvOutcome {
    Value(#[serde(with = "serde_bytes")] Vec<u8>),
    NotFound,
    Done,
    /// The request failed along the way.
    Failed(Fault),
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct KvReply {
    pub outcome: KvOutcome,
    /// Forwards it took to reach the owner.
    pub hops: u32,
    /// The owner's advertised address (empty when the request failed before reaching one).
    pub owner: String,
    /// The version of the value read, or of the write applied (0 when there is none).
    pub version: u64,
    /// The owner's ring id (0 when `owner` is empty): lets a client learn where the owner
    /// sits on the ring, not only its address.
    pub owner_id: u64,
}

/// Why records are sent.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum MergeKind {
    /// A replica's copy of a write.
    Replica,
    /// A handoff batch: the receiver routes records it does not own on to their owners, and
    /// copies those it does own to its replicas, where they were new to it.
    Handoff,
    /// A write made while its range is handed to the receiver: settled like a handoff record,
    /// whether or not it was new (a replica copy of it may have come first).
    WriteThrough,
}

/// Everything one node asks another.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum Request {
    Kv(KvRequest),
    /// Chord's find_successor(id), forwarded clockwise; `hops` bounds it like a Kv request.
    FindSuccessor {
        id: u64,
        hops: u32,
    },
    /// Stabilize: who is your predecessor (and successor)?
    Neighbors,
    /// `from` believes it is the receiver's predecessor.
    Notify {
        from: NodeInfo,
    },
    /// Records to keep if newer.
    Merge {
        from: NodeInfo,
        records: Vec<Record>,
        kind: MergeKind,
    },
    /// A replication batch covering ids (after, upto]: keep what is newer, and answer with
    /// what you hold there that is newer than what was sent (or was not sent at all).
    Sync {
        from: NodeInfo,
        after: u64,
        upto: u64,
        records: Vec<Record>,
    },
    /// A handoff to the receiver is complete; `pred` precedes the receiver now.
    HandoffDone {
        from: NodeInfo,
        pred: Option<NodeInfo>,
    },
    /// `node` leaves; it sat between `pred` and `succ`.
    Leaving {
        node: NodeInfo,
        pred: Option<NodeInfo>,
        succ: NodeInfo,
    },
    /// This node's status, for ring walks.
    Status,
    /// A joiner asks where it should sit: the receiver offers a point of its own range (the
    /// median key of its most loaded piece; see `ring::balance`). `take`: the joiner will join
    /// there (the receiver remembers the point); without it the offer is only compared.
    Offer {
        take: bool,
    },
}

/// The node's status, as `GET /status` shows it.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Status {
    pub me: NodeInfo,
    pub pred: Option<NodeInfo>,
    pub succ: NodeInfo,
    pub keys: u64,
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum Response {
    Kv(KvReply),
    Successor {
        node: NodeInfo,
        hops: u32,
    },
    /// Stabilize's answer: the predecessor and the successor list, nearest first.
    Neighbors {
        pred: Option<NodeInfo>,
        succs: Vec<NodeInfo>,
    },
    Status(Status),
    /// The request was accepted (or, for Notify and HandoffDone, considered).
    Ack,
    /// A `Sync`'s answer; `complete` is false when there was more than one batch holds.
    Records {
        records: Vec<Record>,
        complete: bool,
    },
    /// The call failed at the receiver.
    Fault(Fault),
    /// An id to join at, and the keys and width of the piece of the receiver's range it splits.
    Offer {
        id: u64,
        keys: u64,
        width: u64,
    },
}

impl Message for Request {}
impl Message for Response {}

#[cfg(test)]
mod tests;
