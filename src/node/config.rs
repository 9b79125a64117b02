//! A node's settings, with the defaults the CLI shows. Must not touch: anything running.

use std::path::PathBuf;
use std::time::Duration;

use crate::ring::Settings;
use crate::wire;

/// Default cap on a value (`--max-value-bytes`).
pub const DEFAULT_MAX_VALUE_BYTES: usize = 8 << 20;
/// Default hop limit: more forwards than any sane ring has nodes means a routing loop.
pub const DEFAULT_HOP_LIMIT: u32 = 512;
/// Default successor-list length: survives r-1 adjacent crashes between two stabilize rounds.
pub const DEFAULT_SUCCESSORS: u64 = 4;
/// Default copies of each key.
pub const DEFAULT_REPLICAS: u64 = 3;
/// Default stabilize period (Chord's repair round).
pub const DEFAULT_STABILIZE: Duration = Duration::from_millis(200);
/// Default wait for a peer's answer to a control message (stabilize, notify, status). On
/// loopback or a LAN an answer takes well under a millisecond; 500 ms tolerates a busy peer
/// without stalling the stabilize loop for long.
pub const DEFAULT_PEER_TIMEOUT: Duration = Duration::from_millis(500);
/// Timeouts in a row after which a peer that still accepts connections is declared dead: one
/// slow answer does not reshape the ring.
const STRIKES: u32 = 2;
/// How long a new node keeps asking its seeds before giving up: long enough for the
/// bootstrap node to be started alongside it.
const JOIN_DEADLINE: Duration = Duration::from_secs(30);
/// How long a leaving node keeps trying to hand its keys over before it stops anyway,
/// keeping them on disk.
const LEAVE_DEADLINE: Duration = Duration::from_secs(60);

#[derive(Clone, Debug)]
pub struct Config {
    /// The address peers and clients use for this node (with `id_from_address`, its hash is
    /// the node's id).
    pub advertise: String,
    pub data_dir: PathBuf,
    /// A ring member to join through; None starts a new ring (or rejoins the peers saved in
    /// the data directory).
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
    /// The node's id is the hash of its address (deterministic, and checked on every peer a
    /// message names) instead of a balanced id chosen at the first join and kept in the store.
    pub id_from_address: bool,
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
            max_conns_per_client: super::DEFAULT_MAX_CONNS_PER_CLIENT,
            max_inflight_bytes: super::DEFAULT_MAX_INFLIGHT_BYTES,
            id_from_address: false,
        }
    }

    /// The largest node-to-node message: one maximal value plus its envelope, or one batch.
    pub(super) fn max_message(&self) -> usize {
        self.max_value_bytes.max(wire::BATCH_BYTES) + 64 * 1024
    }

    /// The membership protocol's parameters.
    pub(super) fn settings(&self) -> Settings {
        Settings {
            successors: self.successors,
            replicas: self.replicas,
            strikes: STRIKES,
            join_deadline: JOIN_DEADLINE.as_millis() as u64,
            leave_deadline: LEAVE_DEADLINE.as_millis() as u64,
            period: self.stabilize_every.as_millis() as u64,
        }
    }
}
