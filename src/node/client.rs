//! A client of the public HTTP API, for the CLI, the demo, tests and benchmarks. It speaks
//! the same HTTP a curl user does; nothing here is internal.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::error::{Error, PeerError, Result};

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
        let unavailable = |source| Error::Unavailable { addr: node.to_string(), source };
        let mut builder = hyper::Request::builder().method(method).uri(format!("http://{node}{path}"));
        if let Some(token) = &self.token {
            builder = builder.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let req = builder.body(Full::new(body)).map_err(|_| unavailable(PeerError::BadAddress))?;
        let fut = async {
            let resp = self.http.request(req).await.map_err(|e| unavailable(e.into()))?;
            let (parts, body) = resp.into_parts();
            let bytes = body.collect().await.map_err(|e| unavailable(PeerError::Body(e.into())))?.to_bytes();
            Ok(hyper::Response::from_parts(parts, bytes))
        };
        tokio::time::timeout(CALL_TIMEOUT, fut).await.map_err(|_| unavailable(PeerError::Timeout))?
    }

    async fn kv(&self, node: &str, method: Method, key: &str, body: Bytes) -> Result<KvAnswer> {
        let resp = self.call(node, method, &format!("/kv/{}", encode_key(key)), body).await?;
        let header = |name| resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
        Ok(KvAnswer {
            status: resp.status(),
            hops: header("x-sdht-hops").and_then(|h| h.parse().ok()),
            owner: header("x-sdht-owner"),
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
            return Err(Error::Unavailable { addr: node.into(), source: PeerError::Status(resp.status()) });
        }
        serde_json::from_slice(resp.body())
            .map_err(|e| Error::Unavailable { addr: node.into(), source: PeerError::Body(e.into()) })
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
