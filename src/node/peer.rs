//! Calls to other nodes: one pooled HTTP/1.1 keep-alive client shared by all tasks, so a
//! forwarded request reuses an open connection to the successor instead of paying a TCP
//! handshake per hop. Every call has a timeout and a cap on the answer's size.
//!
//! One typed function per message kind: callers get the answer they asked for or a
//! `PeerError`, never a `Response` to match by hand. Must not touch: what the answers mean
//! (the membership state machine and the request path decide that).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;

use super::auth::ClusterKey;
use super::error::PeerError;
use crate::wire::{KvReply, KvRequest, MergeKind, Message, NodeInfo, Record, Request, Response, Status};

/// How long an idle pooled connection to a peer stays open: below the server's 10 s header
/// timeout, so the client drops an idle connection before the server closes it under a
/// request in flight. Successors are called every stabilize period and stay connected.
const POOL_IDLE: Duration = Duration::from_secs(5);
/// Longest wait for a TCP connection to a peer. On a LAN it takes well under a millisecond; a
/// lost SYN is only resent by the kernel after a full second, so giving up early and trying a
/// fresh connection (forwards are retried, see `request.rs`) keeps lossy links from adding a
/// second to a request.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(300);

pub const RPC_PATH: &str = "/internal/rpc";
pub const WIRE_TYPE: &str = "application/x-sdht";

#[derive(Clone)]
pub struct Peers {
    client: Client<HttpConnector, Full<Bytes>>,
    max_message: usize,
    key: Option<Arc<ClusterKey>>,
    /// Counts failed calls (the `peer_call_failures` metric).
    failures: Counter,
    /// Counts every call (the `peer_calls` metric).
    calls: Counter,
}

impl Peers {
    /// `max_message`: the largest answer accepted, in bytes; `key` signs every call.
    pub fn new(max_message: usize, key: Option<Arc<ClusterKey>>, failures: Counter, calls: Counter) -> Peers {
        let mut http = HttpConnector::new();
        // Forwarded requests are small and latency-bound: never wait for Nagle.
        http.set_nodelay(true);
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let client = Client::builder(TokioExecutor::new()).pool_idle_timeout(POOL_IDLE).build(http);
        Peers { client, max_message, key, failures, calls }
    }

    /// Sends `req` to the node at `addr` and waits at most `timeout` for its answer; a
    /// `Response::Fault` becomes `PeerError::Fault`.
    async fn call(&self, addr: &str, req: &Request, timeout: Duration) -> Result<Response, PeerError> {
        self.calls.inc();
        let result = tokio::time::timeout(timeout, self.call_inner(addr, req.encode()))
            .await
            .map_err(|_| PeerError::Timeout)
            .and_then(|r| r);
        if result.is_err() {
            self.failures.inc();
        }
        match result? {
            Response::Fault(f) => Err(PeerError::Fault(f)),
            r => Ok(r),
        }
    }

    /// A client request, forwarded one node on.
    pub async fn kv(&self, addr: &str, req: KvRequest, timeout: Duration) -> Result<KvReply, PeerError> {
        match self.call(addr, &Request::Kv(req), timeout).await? {
            Response::Kv(reply) => Ok(reply),
            _ => Err(PeerError::Unexpected),
        }
    }

    /// Chord's find_successor(id), answered by the node that knows the owner.
    pub async fn find_successor(
        &self,
        addr: &str,
        id: u64,
        hops: u32,
        timeout: Duration,
    ) -> Result<NodeInfo, PeerError> {
        match self.call(addr, &Request::FindSuccessor { id, hops }, timeout).await? {
            Response::Successor { node, .. } => Ok(node),
            _ => Err(PeerError::Unexpected),
        }
    }

    /// The peer's predecessor and successor list.
    pub async fn neighbors(
        &self,
        addr: &str,
        timeout: Duration,
    ) -> Result<(Option<NodeInfo>, Vec<NodeInfo>), PeerError> {
        match self.call(addr, &Request::Neighbors, timeout).await? {
            Response::Neighbors { pred, succs } => Ok((pred, succs)),
            _ => Err(PeerError::Unexpected),
        }
    }

    /// The peer's status, for ring walks.
    pub async fn status(&self, addr: &str, timeout: Duration) -> Result<Status, PeerError> {
        match self.call(addr, &Request::Status, timeout).await? {
            Response::Status(s) => Ok(s),
            _ => Err(PeerError::Unexpected),
        }
    }

    /// Where a joiner should sit, as the peer offers it: (id, keys, width).
    pub async fn offer(
        &self,
        addr: &str,
        take: bool,
        timeout: Duration,
    ) -> Result<(u64, u64, u64), PeerError> {
        match self.call(addr, &Request::Offer { take }, timeout).await? {
            Response::Offer { id, keys, width } => Ok((id, keys, width)),
            _ => Err(PeerError::Unexpected),
        }
    }

    /// A message answered with a plain acknowledgement (notify, merge, handoff done, leaving).
    pub async fn tell(&self, addr: &str, req: &Request, timeout: Duration) -> Result<(), PeerError> {
        match self.call(addr, req, timeout).await? {
            Response::Ack => Ok(()),
            _ => Err(PeerError::Unexpected),
        }
    }

    /// Records for the peer to keep where newer.
    pub async fn merge(
        &self,
        addr: &str,
        from: NodeInfo,
        records: Vec<Record>,
        kind: MergeKind,
        timeout: Duration,
    ) -> Result<(), PeerError> {
        self.tell(addr, &Request::Merge { from, records, kind }, timeout).await
    }

    /// A replication batch over ids (after, upto]; returns what the peer holds there that is
    /// newer, and whether that is all of it.
    pub async fn sync(
        &self,
        addr: &str,
        req: Request,
        timeout: Duration,
    ) -> Result<(Vec<Record>, bool), PeerError> {
        match self.call(addr, &req, timeout).await? {
            Response::Records { records, complete } => Ok((records, complete)),
            _ => Err(PeerError::Unexpected),
        }
    }

    async fn call_inner(&self, addr: &str, body: Vec<u8>) -> Result<Response, PeerError> {
        let mut builder =
            hyper::Request::post(format!("http://{addr}{RPC_PATH}")).header(CONTENT_TYPE, WIRE_TYPE);
        if let Some(key) = &self.key {
            for (name, value) in key.sign("POST", RPC_PATH, &body).headers() {
                builder = builder.header(name, value);
            }
        }
        let http_req = builder.body(Full::new(Bytes::from(body))).map_err(|_| PeerError::BadAddress)?;
        let resp = self.client.request(http_req).await?;
        if resp.status() != hyper::StatusCode::OK {
            return Err(PeerError::Refused(resp.status().as_u16()));
        }
        let too_long = resp
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
            .is_some_and(|n| n > self.max_message);
        if too_long {
            return Err(PeerError::TooLarge);
        }
        let bytes = Limited::new(resp.into_body(), self.max_message)
            .collect()
            .await
            .map_err(PeerError::Body)?
            .to_bytes();
        Ok(Response::decode(&bytes)?)
    }
}
