//! One HTTP call to one named node: the layer under [`Client`](super::Client), public for
//! tools that must talk to a particular node (the CLI's `leave`, tests, benchmarks).
//!
//! Owns: the keep-alive connection pool (one pool, connections kept per node), the bearer
//! token, key encoding, the call timeout, and the parsing of the `x-sdht-*` headers. Must not
//! touch: routing decisions (which node to ask is the caller's) and node internals. Left out:
//! retries; a call is made once.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::{Error, Result};

/// Default longest wait for one call, from sending it to the end of the answer: above a
/// node's 5 s request deadline (after which it answers 504 itself), so a slow ring is told
/// apart from a node that does not answer.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for a TCP connection: on a LAN a connection takes well under a millisecond, a
/// refused one fails at once; only an unreachable host waits this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long an idle keep-alive connection stays in the pool.
const POOL_IDLE: Duration = Duration::from_secs(60);
/// Most idle connections kept per node: enough for many concurrent tasks sharing a client, a
/// bound on the sockets a client holds to one node.
const POOL_IDLE_PER_NODE: usize = 256;

/// The answer to a `/kv` call, whatever its status.
#[derive(Debug, Clone)]
pub struct KvAnswer {
    /// The HTTP status: 200 (value), 204 (written), 404 (absent) or an error.
    pub status: StatusCode,
    /// The body: the value on 200, a one-line reason on an error.
    pub body: Bytes,
    /// `x-sdht-hops`: forwards from the node asked to the owner.
    pub hops: Option<u32>,
    /// `x-sdht-owner`: the owner's address.
    pub owner: Option<String>,
    /// `x-sdht-owner-id`: the owner's ring id.
    pub owner_id: Option<crate::ring::Id>,
    /// `x-sdht-version`: the version read or written.
    pub version: Option<u64>,
}

/// Calls to named nodes over one keep-alive pool. Cheap to clone: clones share the pool.
#[derive(Clone)]
pub struct NodeClient {
    http: hyper_util::client::legacy::Client<HttpConnector, Full<Bytes>>,
    /// Sent as `Authorization: Bearer ...` when the nodes require a client token.
    token: Option<String>,
    timeout: Duration,
}

impl Default for NodeClient {
    fn default() -> Self {
        NodeClient::new()
    }
}

impl std::fmt::Debug for NodeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeClient")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Percent-encodes a key as one path segment (everything but RFC 3986 unreserved bytes).
///
/// ```
/// assert_eq!(sdht::client::encode_key("a b/c"), "a%20b%2Fc");
/// ```
pub fn encode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl NodeClient {
    /// A client without a token, with the default call timeout.
    pub fn new() -> NodeClient {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let http = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE)
            .pool_max_idle_per_host(POOL_IDLE_PER_NODE)
            .build(http);
        NodeClient { http, token: None, timeout: DEFAULT_CALL_TIMEOUT }
    }

    /// The same client, presenting `token` to every node.
    pub fn with_token(mut self, token: Option<String>) -> NodeClient {
        self.token = token;
        self
    }

    /// The same client, giving up on a call after `timeout`.
    pub fn with_timeout(mut self, timeout: Duration) -> NodeClient {
        self.timeout = timeout;
        self
    }

    /// One HTTP call to `node` (`host:port`); returns status, headers and the whole body. Any
    /// HTTP status is an answer, not an error.
    pub async fn call(
        &self,
        node: &str,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<hyper::Response<Bytes>> {
        let mut builder = hyper::Request::builder().method(method).uri(format!("http://{node}{path}"));
        if let Some(token) = &self.token {
            builder = builder.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let req = builder.body(Full::new(body)).map_err(|_| Error::BadAddress(node.to_string()))?;
        let addr = || node.to_string();
        let fut = async {
            let resp = self.http.request(req).await.map_err(|e| {
                if e.is_connect() {
                    Error::Connect { addr: addr(), source: e.into() }
                } else {
                    Error::Connection { addr: addr(), source: e.into() }
                }
            })?;
            let (parts, body) = resp.into_parts();
            let bytes = body
                .collect()
                .await
                .map_err(|e| Error::Connection { addr: addr(), source: e.into() })?
                .to_bytes();
            Ok(hyper::Response::from_parts(parts, bytes))
        };
        tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| Error::Timeout { addr: addr(), after: self.timeout })?
    }

    /// A `/kv/{key}` call to `node`.
    pub async fn kv(&self, node: &str, method: Method, key: &str, body: Bytes) -> Result<KvAnswer> {
        let resp = self.call(node, method, &format!("/kv/{}", encode_key(key)), body).await?;
        let header = |name| resp.headers().get(name).and_then(|v| v.to_str().ok());
        Ok(KvAnswer {
            status: resp.status(),
            hops: header("x-sdht-hops").and_then(|h| h.parse().ok()),
            owner: header("x-sdht-owner").map(str::to_string),
            owner_id: header("x-sdht-owner-id").and_then(crate::ring::Id::from_hex),
            version: header("x-sdht-version").and_then(|h| h.parse().ok()),
            body: resp.body().clone(),
        })
    }

    /// `GET /kv/{key}` at `node`.
    pub async fn get(&self, node: &str, key: &str) -> Result<KvAnswer> {
        self.kv(node, Method::GET, key, Bytes::new()).await
    }

    /// `PUT /kv/{key}` at `node`.
    pub async fn put(&self, node: &str, key: &str, value: impl Into<Bytes>) -> Result<KvAnswer> {
        self.kv(node, Method::PUT, key, value.into()).await
    }

    /// `DELETE /kv/{key}` at `node`.
    pub async fn delete(&self, node: &str, key: &str) -> Result<KvAnswer> {
        self.kv(node, Method::DELETE, key, Bytes::new()).await
    }

    /// GET a JSON endpoint (`/status`, `/ring`) of `node`; a status other than 200 is an
    /// error.
    pub async fn json(&self, node: &str, path: &str) -> Result<serde_json::Value> {
        let resp = self.call(node, Method::GET, path, Bytes::new()).await?;
        if resp.status() != StatusCode::OK {
            return Err(Error::from_status(node, resp.status(), resp.body()));
        }
        serde_json::from_slice(resp.body())
            .map_err(|e| Error::BadAnswer { addr: node.into(), reason: e.to_string() })
    }
}
