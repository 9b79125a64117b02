//! The HTTP server: accept loop with the connection budget (`limits`) and graceful drain, the
//! public API (`/kv`, `/status`, `/ring`, `/leave`) and the internal RPC endpoint.
//!
//! Owns: routing requests to handlers, HTTP conformance (methods and `Allow`, `HEAD`, `Host`,
//! content types), turning errors into answers, and the order of checks on a request: its
//! connection's class, then authentication (a node-to-node call's tag from its headers, or
//! the client token), then the body (under the size limit and the `body` budget).
//!
//! Must not touch: ring logic and storage (it calls `Node`), tag arithmetic (`auth`).
//!
//! Left out on purpose: HTTP/2, TLS, compression, ranges and conditional requests.

use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, AUTHORIZATION, CONNECTION, CONTENT_TYPE, HOST, WWW_AUTHENTICATE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, StatusCode, Version};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::auth::{AuthError, BodyDigest, Signature, DIGEST_HEADER, NONCE_HEADER, TAG_HEADER, TIME_HEADER};
use super::body::{read_body, BodyBudget};
use super::error::{BadInput, Error, Result};
use super::keys::parse_key;
use super::limits::{ConnLimits, Slot};
use super::peer::{RPC_PATH, WIRE_TYPE};
use super::{auth, Node};
use crate::wire::{Fault, KvOp, KvOutcome, Message, Request, Status};

/// A request after the first on a connection (or an idle keep-alive connection) must send its
/// headers within this time; the first request has `limits::FIRST_REQUEST_TIMEOUT`.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long open connections may take to finish their requests at shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Most nodes one `/ring` walk visits, so a looping successor chain cannot keep it going.
const MAX_RING_WALK: usize = 4096;
/// Pause after a failed accept (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// Forwards from the node asked to the key's owner, on every `/kv` answer.
const HOPS_HEADER: &str = "x-sdht-hops";
/// The owner's ring id (16 hex digits), next to `x-sdht-owner` on every `/kv` answer that
/// reached an owner.
const OWNER_ID_HEADER: &str = "x-sdht-owner-id";

type Resp = hyper::Response<Full<Bytes>>;

/// What a request's handlers need: the node, the body budget and the connection's slot.
#[derive(Clone)]
struct Ctx {
    node: Node,
    bodies: Arc<BodyBudget>,
    slot: Arc<Slot>,
}

pub async fn accept_loop(listener: TcpListener, node: Node, halt: CancellationToken) {
    let graceful = GracefulShutdown::new();
    let limits = ConnLimits::new(node.inner.config.max_conns_per_client);
    let bodies = Arc::new(BodyBudget::new(node.inner.config.max_inflight_bytes));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .keep_alive(true)
        // A client that shuts its write side after the request still gets its answer.
        .half_close(true);
    loop {
        let (stream, from) = tokio::select! {
            _ = halt.cancelled() => break,
            r = listener.accept() => match r {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let Some(slot) = limits.admit(from.ip()) else {
            tracing::debug!(client = %from, "every connection slot is busy; closing a new connection");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let ctx = Ctx { node: node.clone(), bodies: bodies.clone(), slot: Arc::new(slot) };
        let slot = ctx.slot.clone();
        let service = service_fn(move |req| {
            let ctx = ctx.clone();
            async move { Ok::<_, Infallible>(handle(ctx, req).await) }
        });
        let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        node.inner.tasks.spawn(async move {
            tokio::select! {
                _ = conn => {}
                _ = slot.shed() => {}
                _ = slot.first_request_late() => {}
            }
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(DRAIN_TIMEOUT) => tracing::warn!("connections still open after the drain timeout"),
    }
}

fn text(status: StatusCode, body: impl Into<String>) -> Resp {
    let mut body = body.into();
    body.push('\n');
    let mut r = hyper::Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

fn json(value: serde_json::Value) -> Resp {
    let mut r = hyper::Response::new(Full::new(Bytes::from(value.to_string())));
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// The status of a failure in the ring.
fn fault_status(f: &Fault) -> StatusCode {
    match f {
        Fault::HopLimit(_) => StatusCode::LOOP_DETECTED,
        Fault::Unavailable { .. }
        | Fault::NotServing
        | Fault::CutOff
        | Fault::NoQuorum { .. }
        | Fault::HandoffFailed(_)
        | Fault::Busy => StatusCode::SERVICE_UNAVAILABLE,
        Fault::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        Fault::BadInput(_) | Fault::VersionAhead(_) => StatusCode::BAD_REQUEST,
        Fault::DeadlinePassed => StatusCode::GATEWAY_TIMEOUT,
        Fault::Storage(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The status of a failure at this node.
fn status_of(e: &Error) -> StatusCode {
    match e {
        Error::InvalidInput(_) | Error::Wire(_) | Error::ForgedId(_) => StatusCode::BAD_REQUEST,
        Error::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        Error::NotFound => StatusCode::NOT_FOUND,
        Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
        Error::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
        Error::Overloaded | Error::Crowded(_) => StatusCode::SERVICE_UNAVAILABLE,
        Error::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
        Error::Fault(f) => fault_status(f),
        Error::Store(_) | Error::CommitFailed(_) | Error::StoreGone => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn error_response(e: &Error) -> Resp {
    let mut r = text(status_of(e), e.to_string());
    match e {
        Error::MethodNotAllowed { allow } => {
            r.headers_mut().insert(ALLOW, HeaderValue::from_static(allow));
        }
        Error::Unauthorized(AuthError::BadToken) => {
            r.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        Error::Crowded(_) => {
            r.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
        }
        _ => {}
    }
    r
}

/// Checks the bearer token where the node has one.
fn authorize(node: &Node, req: &hyper::Request<Incoming>) -> Result<()> {
    match &node.inner.config.client_token {
        None => Ok(()),
        Some(token) => {
            let header = req.headers().get(AUTHORIZATION).and_then(|v| v.to_str().ok());
            if auth::token_matches(header, token) {
                Ok(())
            } else {
                Err(AuthError::BadToken.into())
            }
        }
    }
}

/// Checks a node-to-node call's tag from its headers alone, before its body is read. Ok(None):
/// the node has no cluster key, and calls are not authenticated.
fn authenticate_call(node: &Node, req: &hyper::Request<Incoming>) -> Result<Option<BodyDigest>> {
    let Some(key) = &node.inner.key else {
        return Ok(None);
    };
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    let sig = Signature {
        time: header(TIME_HEADER),
        nonce: header(NONCE_HEADER),
        digest: header(DIGEST_HEADER),
        tag: header(TAG_HEADER),
    };
    Ok(Some(key.verify("POST", RPC_PATH, sig)?))
}

/// The route label of a request, for metrics.
fn route_of(method: &Method, path: &str) -> &'static str {
    match (method, path) {
        (&Method::GET, p) if p.starts_with("/kv/") => "kv_get",
        (&Method::HEAD, p) if p.starts_with("/kv/") => "kv_head",
        (&Method::PUT, p) if p.starts_with("/kv/") => "kv_put",
        (&Method::DELETE, p) if p.starts_with("/kv/") => "kv_delete",
        (_, p) if p.starts_with("/kv/") => "kv_other",
        (_, "/status") => "status",
        (_, "/ring") => "ring",
        (_, "/leave") => "leave",
        (_, "/metrics") => "metrics",
        (_, "/") => "page",
        (_, RPC_PATH) => "internal",
        _ => "other",
    }
}

async fn handle(ctx: Ctx, req: hyper::Request<Incoming>) -> Resp {
    let started = std::time::Instant::now();
    let route = route_of(req.method(), req.uri().path());
    let kv = req.uri().path().starts_with("/kv/");
    let mut resp = admit_request(&ctx, req).await;
    if kv && !resp.headers().contains_key(HOPS_HEADER) {
        // Refused before it was routed: no forward was made, no version is known.
        resp.headers_mut().insert(HOPS_HEADER, HeaderValue::from(0));
        resp.headers_mut().insert("x-sdht-version", HeaderValue::from(0));
    }
    ctx.node.inner.metrics.observe_request(route, resp.status().as_u16(), started.elapsed());
    resp
}

/// Settles the connection's class (its first request decides), checks `Host`, and routes. A
/// node-to-node call is authenticated here, from its headers alone.
async fn admit_request(ctx: &Ctx, req: hyper::Request<Incoming>) -> Resp {
    let is_call = req.uri().path() == RPC_PATH && req.method() == Method::POST;
    let call = is_call.then(|| authenticate_call(&ctx.node, &req));
    let _busy = match ctx.slot.begin(matches!(call, Some(Ok(_)))) {
        Ok(busy) => busy,
        Err(crowded) => return error_response(&crowded.into()),
    };
    if let Err(e) = check_host(&req) {
        return error_response(&e);
    }
    route_request(ctx, req, call).await
}

/// An HTTP/1.1 request carries exactly one Host header (RFC 9112, 3.2).
fn check_host(req: &hyper::Request<Incoming>) -> Result<()> {
    if req.version() == Version::HTTP_11 && req.headers().get_all(HOST).iter().count() != 1 {
        return Err(BadInput::BadHost.into());
    }
    Ok(())
}

/// The methods each route answers, as its `Allow` header lists them (HEAD wherever GET is).
fn allowed_methods(path: &str) -> Option<&'static str> {
    match path {
        p if p.starts_with("/kv/") => Some("GET, HEAD, PUT, DELETE"),
        "/status" | "/ring" | "/metrics" | "/" => Some("GET, HEAD"),
        "/leave" | RPC_PATH => Some("POST"),
        _ => None,
    }
}

fn check_method(method: &Method, allow: &'static str) -> Result<()> {
    if allow.split(", ").any(|m| m == method.as_str()) {
        Ok(())
    } else {
        Err(Error::MethodNotAllowed { allow })
    }
}

fn metrics(node: &Node) -> Resp {
    let m = &node.inner.metrics;
    m.keys.set(node.inner.storage.live_keys() as i64);
    m.bytes.set(node.inner.storage.live_bytes() as i64);
    let view = node.view();
    m.successors.set(view.succs.iter().filter(|p| **p != view.me).count() as i64);
    let mut r = hyper::Response::new(Full::new(Bytes::from(m.encode())));
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    r
}

/// The live ring page: one self-contained HTML file (inline CSS, SVG and script, no external
/// assets) that redraws itself from `/ring` every 2 s.
fn page() -> Resp {
    let mut r = hyper::Response::new(Full::new(Bytes::from_static(include_bytes!("page.html"))));
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    r
}

/// `call`: for `POST /internal/rpc`, the outcome of `authenticate_call`.
async fn route_request(
    ctx: &Ctx,
    req: hyper::Request<Incoming>,
    call: Option<Result<Option<BodyDigest>>>,
) -> Resp {
    let node = &ctx.node;
    let path = req.uri().path().to_string();
    let public =
        matches!(path.as_str(), "/status" | "/ring" | "/metrics" | "/") && !node.inner.config.private_status;
    if path != RPC_PATH && !public {
        if let Err(e) = authorize(node, &req) {
            return error_response(&e);
        }
    }
    let allowed = match allowed_methods(&path) {
        None => Err(Error::NotFound),
        Some(allow) => check_method(req.method(), allow),
    };
    if let Err(e) = allowed {
        return error_response(&e);
    }
    let result = match path.as_str() {
        p if p.starts_with("/kv/") => kv(ctx, &p[4..], req).await,
        "/status" => Ok(json(status_json(node))),
        "/metrics" => Ok(metrics(node)),
        "/" => Ok(page()),
        "/ring" => Ok(ring_walk(node).await),
        "/leave" => {
            node.inner.leave.cancel();
            Ok(text(StatusCode::ACCEPTED, "leaving"))
        }
        _ => match call {
            Some(Ok(digest)) => internal(ctx, req, digest).await,
            Some(Err(e)) => Err(e),
            None => Err(Error::NotFound),
        },
    };
    result.unwrap_or_else(|e| error_response(&e))
}

async fn kv(ctx: &Ctx, segment: &str, req: hyper::Request<Incoming>) -> Result<Resp> {
    let node = &ctx.node;
    let key = parse_key(segment)?;
    // Held until the request is done with the value.
    let mut _reserved = None;
    let op = match *req.method() {
        Method::GET | Method::HEAD => KvOp::Get,
        Method::DELETE => KvOp::Delete,
        _ => {
            let (value, reserved) =
                read_body(req, node.inner.config.max_value_bytes, &ctx.bodies, false).await?;
            _reserved = Some(reserved);
            KvOp::Put(value)
        }
    };
    let reply = node.client_kv(key, op).await;
    node.inner.metrics.hops.observe(f64::from(reply.hops));
    let mut resp = match reply.outcome {
        KvOutcome::Value(v) => {
            let mut r = hyper::Response::new(Full::new(Bytes::from(v)));
            r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
            r
        }
        KvOutcome::Done => {
            let mut r = hyper::Response::new(Full::new(Bytes::new()));
            *r.status_mut() = StatusCode::NO_CONTENT;
            r
        }
        KvOutcome::NotFound => text(StatusCode::NOT_FOUND, "not found"),
        KvOutcome::Failed(fault) => text(fault_status(&fault), fault.to_string()),
    };
    let headers = resp.headers_mut();
    headers.insert(HOPS_HEADER, HeaderValue::from(reply.hops));
    headers.insert("x-sdht-version", HeaderValue::from(reply.version));
    if let Ok(owner) = HeaderValue::from_str(&reply.owner) {
        if !reply.owner.is_empty() {
            headers.insert("x-sdht-owner", owner);
            // The owner's place on the ring: with it a client can map id ranges to owners.
            let id = crate::ring::Id(reply.owner_id).to_string();
            headers.insert(OWNER_ID_HEADER, HeaderValue::from_str(&id).expect("16 hex digits"));
        }
    }
    Ok(resp)
}

/// A node-to-node call whose headers passed `authenticate_call`: its body is read (size
/// checked from Content-Length first), checked against the signed digest, then decoded.
async fn internal(ctx: &Ctx, req: hyper::Request<Incoming>, digest: Option<BodyDigest>) -> Result<Resp> {
    let node = &ctx.node;
    let (body, _reserved) = read_body(req, node.inner.config.max_message(), &ctx.bodies, true).await?;
    if let Some(digest) = digest {
        digest.check(&body)?;
    }
    let request = Request::decode(&body)?;
    let response = node.rpc(request).await;
    let mut r = hyper::Response::new(Full::new(Bytes::from(response.encode())));
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(WIRE_TYPE));
    Ok(r)
}

fn status_json(node: &Node) -> serde_json::Value {
    let s: Status = node.status();
    let view = node.view();
    let successors: Vec<String> = view.succs.iter().map(|p| p.addr.clone()).collect();
    serde_json::json!({
        "handoff": node.progress(),
        "successors": successors,
        "addr": s.me.addr,
        "id": crate::ring::Id(s.me.id).to_string(),
        "successor": s.succ.addr,
        "predecessor": s.pred.as_ref().map(|p| p.addr.clone()),
        "keys": s.keys,
        "cut_off": view.cut_off,
        "epoch": view.epoch,
    })
}

/// Walks the ring clockwise along successor pointers from this node, each node once.
async fn ring_walk(node: &Node) -> Resp {
    let first = node.status();
    let mut seen = HashSet::from([first.me.addr.clone()]);
    let mut next = first.succ.addr.clone();
    let mut nodes = vec![first];
    let mut complete = true;
    while seen.insert(next.clone()) {
        if nodes.len() >= MAX_RING_WALK {
            complete = false;
            break;
        }
        match node.inner.peers.status(&next, node.inner.config.peer_timeout).await {
            Ok(s) => {
                next = s.succ.addr.clone();
                nodes.push(s);
            }
            Err(_) => {
                complete = false;
                break;
            }
        }
    }
    let list: Vec<_> = nodes
        .iter()
        .map(|s| {
            serde_json::json!({
                "addr": s.me.addr,
                "id": crate::ring::Id(s.me.id).to_string(),
                "keys": s.keys,
                "successor": s.succ.addr,
                "predecessor": s.pred.as_ref().map(|p| p.addr.clone()),
            })
        })
        .collect();
    json(serde_json::json!({ "nodes": list, "complete": complete }))
}
