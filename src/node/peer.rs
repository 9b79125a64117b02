//! Calls to other nodes: one pooled HTTP/1.1 keep-alive client shared by all tasks, so a
//! forwarded request reuses an open connection to the successor instead of paying a TCP
//! handshake per hop. Every call has a timeout and a cap on the answer's size.

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
use crate::wire::{Message, Request, Response};

/// How long an idle pooled connection to a peer stays open: below the server's 10 s header
/// timeout, so the client drops an idle connection before the server closes it under a
/// request in flight. Successors are called every stabilize period and stay connected.
const POOL_IDLE: Duration = Duration::from_secs(5);

pub const RPC_PATH: &str = "/internal/rpc";
pub const WIRE_TYPE: &str = "application/x-sdht";

#[derive(Clone)]
pub struct Peers {
    client: Client<HttpConnector, Full<Bytes>>,
    max_message: usize,
    key: Option<Arc<ClusterKey>>,
    /// Counts failed calls (the `peer_call_failures` metric).
    failures: Counter,
}

impl Peers {
    /// `max_message`: the largest answer accepted, in bytes; `key` signs every call.
    pub fn new(max_message: usize, key: Option<Arc<ClusterKey>>, failures: Counter) -> Peers {
        let mut http = HttpConnector::new();
        // Forwarded requests are small and latency-bound: never wait for Nagle.
        http.set_nodelay(true);
        http.set_connect_timeout(Some(Duration::from_secs(2)));
        let client = Client::builder(TokioExecutor::new()).pool_idle_timeout(POOL_IDLE).build(http);
        Peers { client, max_message, key, failures }
    }

    /// Sends `req` to the node at `addr` and waits at most `timeout` for its answer.
    pub async fn call(&self, addr: &str, req: &Request, timeout: Duration) -> Result<Response, PeerError> {
        let result = tokio::time::timeout(timeout, self.call_inner(addr, req.encode()))
            .await
            .map_err(|_| PeerError::Timeout)
            .and_then(|r| r);
        if result.is_err() {
            self.failures.inc();
        }
        result
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
            return Err(PeerError::Status(resp.status()));
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
