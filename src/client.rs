//! A client of the public HTTP API, for the CLI, the demo, tests and benchmarks. It speaks
//! the same HTTP a curl user does; nothing here is internal.
//!
//! Owns: one keep-alive connection pool, the bearer token, key encoding, and the parsing of
//! the `x-sdht-*` headers. Must not touch: node internals. Left out: owner-aware routing
//! (every call goes to the node named).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Why an API call failed (an HTTP answer of any status is not a failure).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0} is not a valid host:port")]
    BadAddress(String),
    #[error("{addr} unreachable: {source}")]
    Unreachable {
        addr: String,
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    #[error("{addr}: reading the answer failed: {reason}")]
    Body { addr: String, reason: String },
    #[error("{0} did not answer in time")]
    Timeout(String),
    #[error("{addr} answered HTTP {status}")]
    Status { addr: String, status: StatusCode },
}

pub type Result<T> = std::result::Result<T, Error>;

/// Longest wait for one API call: a request may cross many nodes.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// The answer to a `/kv` call.
#[derive(Debug, Clone)]
pub struct KvAnswer {
    pub status: StatusCode,
    pub body: Bytes,
    /// `x-sdht-hops`: forwards from the node asked to the owner.
    pub hops: Option<u32>,
    /// `x-sdht-owner`: the owner's address.
    pub owner: Option<String>,
    /// `x-sdht-version`: the version read or written.
    pub version: Option<u64>,
}

#[derive(Clone)]
pub struct Client {
    http: hyper_util::client::legacy::Client<HttpConnector, Full<Bytes>>,
    /// Sent as `Authorization: Bearer ...` when the nodes require a client token.
    token: Option<String>,
}

impl Default for Client {
    fn default() -> Self {
        Client::new()
    }
}

/// Percent-encodes a key as one path segment (everything but RFC 3986 unreserved bytes).
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

impl Client {
    pub fn new() -> Client {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        Client {
            http: hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build(http),
            token: None,
        }
    }

    /// The same client, presenting `token` to every node.
    pub fn with_token(mut self, token: Option<String>) -> Client {
        self.token = token;
        self
    }

    /// One HTTP call; returns status, headers and the whole body.
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
            let resp =
                self.http.request(req).await.map_err(|source| Error::Unreachable { addr: addr(), source })?;
            let (parts, body) = resp.into_parts();
            let bytes = body
                .collect()
                .await
                .map_err(|e| Error::Body { addr: addr(), reason: e.to_string() })?
                .to_bytes();
            Ok(hyper::Response::from_parts(parts, bytes))
        };
        tokio::time::timeout(CALL_TIMEOUT, fut).await.map_err(|_| Error::Timeout(addr()))?
    }

    async fn kv(&self, node: &str, method: Method, key: &str, body: Bytes) -> Result<KvAnswer> {
        let resp = self.call(node, method, &format!("/kv/{}", encode_key(key)), body).await?;
        let header = |name| resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
        Ok(KvAnswer {
            status: resp.status(),
            hops: header("x-sdht-hops").and_then(|h| h.parse().ok()),
            owner: header("x-sdht-owner"),
            version: header("x-sdht-version").and_then(|h| h.parse().ok()),
            body: resp.body().clone(),
        })
    }

    pub async fn get(&self, node: &str, key: &str) -> Result<KvAnswer> {
        self.kv(node, Method::GET, key, Bytes::new()).await
    }

    pub async fn put(&self, node: &str, key: &str, value: impl Into<Bytes>) -> Result<KvAnswer> {
        self.kv(node, Method::PUT, key, value.into()).await
    }

    pub async fn delete(&self, node: &str, key: &str) -> Result<KvAnswer> {
        self.kv(node, Method::DELETE, key, Bytes::new()).await
    }

    /// GET a JSON endpoint (`/status`, `/ring`).
    pub async fn json(&self, node: &str, path: &str) -> Result<serde_json::Value> {
        let resp = self.call(node, Method::GET, path, Bytes::new()).await?;
        if resp.status() != StatusCode::OK {
            return Err(Error::Status { addr: node.into(), status: resp.status() });
        }
        serde_json::from_slice(resp.body())
            .map_err(|e| Error::Body { addr: node.into(), reason: e.to_string() })
    }
}

/// The `/ring` answer as a table: one node a line, clockwise.
pub fn format_ring(ring: &serde_json::Value) -> String {
    let row = |a: &str, id: &str, keys: &str, pred: &str, succ: &str| {
        format!("{a:<22} {id:<16} {keys:>8}  {pred:<22} {succ}\n")
    };
    let mut out = row("ADDRESS", "ID", "KEYS", "PREDECESSOR", "SUCCESSOR");
    for n in ring["nodes"].as_array().into_iter().flatten() {
        let text = |field: &str| n[field].as_str().unwrap_or("-").to_string();
        out.push_str(&row(
            &text("addr"),
            &text("id"),
            &n["keys"].as_u64().unwrap_or(0).to_string(),
            &text("predecessor"),
            &text("successor"),
        ));
    }
    if ring["complete"] == serde_json::Value::Bool(false) {
        out.push_str("(walk incomplete: a node did not answer)\n");
    }
    out
}
