//! Bad input against a live 3-node ring with a cluster key, sent over raw TCP: every case
//! gets a clear 4xx (or a closed connection), and afterwards the node still answers and a
//! checksum of all stored data, read through /kv, is unchanged.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use sdht::client::NodeClient as Client;
use sdht::node::auth::{body_digest, ClusterKey, DIGEST_HEADER, NONCE_HEADER, TAG_HEADER, TIME_HEADER};
use sdht::wire::{KvOp, KvRequest, Message, NodeInfo, Record, Request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use xxhash_rust::xxh3::xxh3_64;

const KEY: &[u8] = b"0123456789abcdef0123456789abcdef-test";
const MAX_VALUE: usize = 4096;

struct Ring {
    nodes: Vec<NodeProc>,
    keys: Vec<String>,
    _dir: tempfile::TempDir,
}

async fn start() -> Ring {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("cluster.key");
    std::fs::write(&key_file, KEY).unwrap();
    let key_arg = key_file.to_str().unwrap().to_string();
    let max = MAX_VALUE.to_string();
    let extra = ["--cluster-key-file", &key_arg, "--max-value-bytes", &max];
    let mut nodes = vec![spawn_with(None, &extra).await];
    for _ in 0..2 {
        let b = nodes[0].addr.clone();
        nodes.push(spawn_with(Some(&b), &extra).await);
    }
    wait_for_ring(&nodes).await;
    let client = Client::new();
    let mut keys = Vec::new();
    for i in 0..60 {
        let k = format!("key-{i}");
        let a = client.put(&nodes[i % 3].addr, &k, format!("value {i}")).await.unwrap();
        assert_eq!(a.status, 204);
        keys.push(k);
    }
    Ring { nodes, keys, _dir: dir }
}

impl Ring {
    /// xxh3 over every key and its value (or absence), read through the first node.
    async fn checksum(&self) -> u64 {
        let client = Client::new();
        let mut all = Vec::new();
        for k in &self.keys {
            let a = client.get(&self.nodes[0].addr, k).await.unwrap();
            all.extend_from_slice(k.as_bytes());
            all.extend_from_slice(&a.status.as_u16().to_be_bytes());
            all.extend_from_slice(&a.body);
        }
        xxh3_64(&all)
    }

    async fn all_answer(&self) {
        let client = Client::new();
        for n in &self.nodes {
            let s = client.json(&n.addr, "/status").await.expect("node stopped answering");
            assert_eq!(s["addr"], n.addr.as_str());
        }
    }
}

/// Sends raw bytes, half-closes, and returns what came back (empty if the node closed).
async fn raw(addr: &str, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let _ = s.shutdown().await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn status_of(resp: &str) -> u16 {
    resp.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// The authentication headers of a call with `body`, signed with `key`, as header lines.
fn signature(key: &ClusterKey, body: &[u8]) -> String {
    key.sign("POST", "/internal/rpc", body)
        .headers()
        .iter()
        .map(|(name, value)| format!("{name}: {value}\r\n"))
        .collect()
}

fn signed(key: &ClusterKey, addr: &str, body: &[u8]) -> Vec<u8> {
    let mut req = format!(
        "POST /internal/rpc HTTP/1.1\r\nhost: {addr}\r\ncontent-length: {}\r\n{}connection: close\r\n\r\n",
        body.len(),
        signature(key, body)
    )
    .into_bytes();
    req.extend_from_slice(body);
    req
}

fn unsigned(addr: &str, body: &[u8], extra_headers: &str) -> Vec<u8> {
    let mut req = format!(
        "POST /internal/rpc HTTP/1.1\r\nhost: {addr}\r\ncontent-length: {}\r\n{extra_headers}connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    req
}

fn http(method: &str, path: &str, addr: &str, headers: &str, body: &[u8]) -> Vec<u8> {
    let mut req = format!("{method} {path} HTTP/1.1\r\nhost: {addr}\r\n{headers}connection: close\r\n\r\n")
        .into_bytes();
    req.extend_from_slice(body);
    req
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_errors_and_change_nothing() {
    let ring = start().await;
    let before = ring.checksum().await;
    let a = ring.nodes[1].addr.clone();
    let cluster = ClusterKey::new(KEY.to_vec()).unwrap();
    let long_key = "k".repeat(257);
    let evil_put = Request::Kv(KvRequest {
        key: "key-1".into(),
        op: KvOp::Put(b"evil".to_vec()),
        hops: 0,
        addressed: false,
        version: now_micros(),
        deadline_ms: now_micros() / 1000 + 10_000,
    })
    .encode();
    let evil_merge = Request::Merge {
        from: NodeInfo { addr: a.clone(), id: sdht::ring::node_id(&a).0 },
        records: vec![Record { key: "key-2".into(), version: u64::MAX, value: Some(b"evil".to_vec()) }],
        kind: sdht::wire::MergeKind::Replica,
    }
    .encode();
    let forged_from = Request::Notify { from: NodeInfo { addr: "127.0.0.1:1".into(), id: 42 } }.encode();
    let oversized_batch = Request::Merge {
        from: NodeInfo { addr: a.clone(), id: sdht::ring::node_id(&a).0 },
        records: (0..=sdht::wire::BATCH_RECORDS)
            .map(|i| Record { key: format!("key-{i}"), version: u64::MAX, value: Some(b"evil".to_vec()) })
            .collect(),
        kind: sdht::wire::MergeKind::Replica,
    }
    .encode();
    let mut wrong_version = Request::Neighbors.encode();
    wrong_version[0] = 99;

    // (what, request bytes, expected status; 0: the node may close without answering;
    // 1000 + status: that status from hyper's own parser, which sends no body; 2000: a
    // protocol fault inside a 200 answer)
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("empty key", http("GET", "/kv/", &a, "", b""), 400),
        ("key over 256 bytes", http("GET", &format!("/kv/{long_key}"), &a, "", b""), 400),
        ("bad percent-encoding", http("GET", "/kv/%zz", &a, "", b""), 400),
        ("key not UTF-8", http("GET", "/kv/%FF%FE", &a, "", b""), 400),
        ("two segments", http("PUT", "/kv/a/b", &a, "content-length: 1\r\n", b"x"), 400),
        (
            "value over the limit, by Content-Length",
            http("PUT", "/kv/key-3", &a, "content-length: 5000\r\n", b""),
            413,
        ),
        (
            "value over the limit, chunked",
            http("PUT", "/kv/key-3", &a, "transfer-encoding: chunked\r\n", b"1388\r\n")
                .into_iter()
                .chain(vec![b'x'; 5000])
                .chain(b"\r\n0\r\n\r\n".iter().copied())
                .collect(),
            413,
        ),
        // hyper's parser refuses these itself, with a bare 400 (no body).
        (
            "absurd Content-Length",
            http("PUT", "/kv/key-3", &a, "content-length: 99999999999999999999999\r\n", b""),
            1400,
        ),
        ("negative Content-Length", http("PUT", "/kv/key-3", &a, "content-length: -5\r\n", b""), 1400),
        ("truncated body", http("PUT", "/kv/key-4", &a, "content-length: 100\r\n", b"only ten.."), 0),
        ("wrong method on /kv", http("POST", "/kv/key-1", &a, "content-length: 0\r\n", b""), 405),
        ("wrong method on /status", http("DELETE", "/status", &a, "", b""), 405),
        ("wrong method on /leave", http("GET", "/leave", &a, "", b""), 405),
        ("unknown path", http("GET", "/nope", &a, "", b""), 404),
        ("garbage instead of HTTP", b"\x00\x01\x02 hello there \xff\xfe\r\n\r\n".to_vec(), 1400),
        ("header without end", b"GET /kv/key-1 HTTP/1.1\r\nhost: x\r\nfoo: ".to_vec(), 0),
        ("internal call without a tag", unsigned(&a, &evil_put, ""), 401),
        (
            "internal call with a forged tag",
            unsigned(
                &a,
                &evil_merge,
                &format!(
                    "{TIME_HEADER}: {}\r\n{NONCE_HEADER}: 1\r\n{DIGEST_HEADER}: {}\r\n{TAG_HEADER}: {}\r\n",
                    1,
                    body_digest(&evil_merge),
                    "ab".repeat(32)
                ),
            ),
            401,
        ),
        (
            "signed call carrying another body than the one signed",
            unsigned(&a, &evil_put, &signature(&cluster, &Request::Neighbors.encode())),
            401,
        ),
        (
            "signed call announcing more than any message",
            http(
                "POST",
                "/internal/rpc",
                &a,
                &format!("content-length: 99999999\r\n{}", signature(&cluster, b"")),
                b"",
            ),
            413,
        ),
        ("percent-encoding with a sign", http("GET", "/kv/%+1", &a, "", b""), 400),
        ("HTTP/1.1 without Host", b"GET /kv/key-1 HTTP/1.1\r\nconnection: close\r\n\r\n".to_vec(), 400),
        ("HTTP/1.1 with two Host headers", http("GET", "/kv/key-1", &a, &format!("host: {a}\r\n"), b""), 400),
        ("signed garbage", signed(&cluster, &a, b"\x01\xff\xff\xff"), 400),
        ("signed wrong version", signed(&cluster, &a, &wrong_version), 400),
        // Well-formed, authenticated calls that the protocol refuses: the refusal travels in
        // the wire message (a `Fault`), not as an HTTP status.
        ("signed message with a forged node id", signed(&cluster, &a, &forged_from), 2000),
        ("signed handoff batch over the cap", signed(&cluster, &a, &oversized_batch), 2000),
    ];
    for (what, bytes, want) in cases {
        let resp = raw(&a, &bytes).await;
        let got = status_of(&resp);
        if want == 0 {
            assert!(got == 0 || (400..500).contains(&got), "{what}: {resp:?}");
        } else if want == 2000 {
            assert_eq!(got, 200, "{what}: {resp:?}");
            assert!(resp.contains("claims an id") || resp.contains("more records"), "{what}: {resp:?}");
        } else if want > 1000 {
            assert_eq!(got, want - 1000, "{what}: {resp:?}");
        } else {
            assert_eq!(got, want, "{what}: {resp:?}");
            let body = resp.split("\r\n\r\n").nth(1).unwrap_or("");
            assert!(!body.trim().is_empty() && body.trim().lines().count() == 1, "{what}: body {body:?}");
        }
        ring.all_answer().await;
        assert_eq!(ring.checksum().await, before, "{what} changed stored data");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_internal_calls_are_refused() {
    let ring = start().await;
    let a = ring.nodes[0].addr.clone();
    let cluster = ClusterKey::new(KEY.to_vec()).unwrap();
    // A valid signed write, as a node would send it: accepted once.
    let put = Request::Kv(KvRequest {
        key: "key-5".into(),
        op: KvOp::Put(b"first".to_vec()),
        hops: 0,
        addressed: false,
        version: now_micros(),
        deadline_ms: now_micros() / 1000 + 10_000,
    })
    .encode();
    let call = signed(&cluster, &a, &put);
    assert_eq!(status_of(&raw(&a, &call).await), 200);
    let client = Client::new();
    assert_eq!(&client.get(&a, "key-5").await.unwrap().body[..], b"first");
    // The value changes; a replay of the captured call must not roll it back.
    assert_eq!(client.put(&a, "key-5", "second").await.unwrap().status, 204);
    let before = ring.checksum().await;
    let resp = raw(&a, &call).await;
    assert_eq!(status_of(&resp), 401, "{resp}");
    assert!(resp.contains("replayed"), "{resp}");
    assert_eq!(&client.get(&a, "key-5").await.unwrap().body[..], b"second");
    assert_eq!(ring.checksum().await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_costs_one_connection_and_a_notify_storm_does_not_stop_kv() {
    let ring = start().await;
    let a = ring.nodes[2].addr.clone();
    let before = ring.checksum().await;
    // Slowloris: connections that send half a header and stall.
    let mut stalled = Vec::new();
    for _ in 0..50 {
        let mut s = TcpStream::connect(&a).await.unwrap();
        s.write_all(b"GET /kv/key-1 HTTP/1.1\r\nhost: x\r\nx-slow: ").await.unwrap();
        stalled.push(s);
    }
    // A storm of signed notifies and joins from nodes that do not exist, four senders at once.
    let cluster = std::sync::Arc::new(ClusterKey::new(KEY.to_vec()).unwrap());
    let started = std::time::Instant::now();
    let mut senders = tokio::task::JoinSet::new();
    for s in 0..4u32 {
        let (a, cluster) = (a.clone(), cluster.clone());
        senders.spawn(async move {
            let mut sent = 0u32;
            for i in 0..1500u32 {
                let fake = format!("127.0.0.1:{}", 20000 + (s * 1500 + i) % 20000);
                let msg = if i % 2 == 0 {
                    Request::Notify { from: NodeInfo { id: sdht::ring::node_id(&fake).0, addr: fake } }
                } else {
                    Request::FindSuccessor { id: sdht::ring::node_id(&fake).0, hops: 0 }
                };
                let _ = raw(&a, &signed(&cluster, &a, &msg.encode())).await;
                sent += 1;
            }
            sent
        });
    }
    let storm = tokio::spawn(async move {
        let mut sent = 0;
        while let Some(n) = senders.join_next().await {
            sent += n.unwrap();
        }
        sent
    });
    let client = Client::new();
    let mut served = 0;
    while !storm.is_finished() {
        let got = client.get(&a, "key-7").await.unwrap();
        assert_eq!(got.status, 200, "{:?}", got.body);
        assert_eq!(&got.body[..], b"value 7");
        served += 1;
    }
    assert_eq!(storm.await.unwrap(), 6000);
    let rate = 6000.0 / started.elapsed().as_secs_f64();
    eprintln!("storm: {rate:.0} signed notify/join calls per second; {served} GETs served meanwhile");
    assert!(served > 0);
    drop(stalled);
    ring.all_answer().await;
    assert_eq!(ring.checksum().await, before);
    wait_for_ring(&ring.nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_with_different_keys_cannot_form_a_ring() {
    let ring = start().await;
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("other.key");
    std::fs::write(&other, b"another key, also long enough: 0123456789").unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_sdht"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(dir.path().join("data"))
        .args(["--cluster-key-file", other.to_str().unwrap(), "--bootstrap", &ring.nodes[0].addr])
        .output();
    let out = tokio::time::timeout(DEADLINE, out).await.unwrap().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stdout.is_empty(), "it must not claim to be listening");
    let ids = ring_ids(&Client::new(), &ring.nodes[0].addr).await.unwrap();
    assert_eq!(ids.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unauthenticated_node_refuses_a_public_address() {
    let dir = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_sdht"))
        .args(["serve", "--listen", "0.0.0.0:0", "--data"])
        .arg(dir.path().join("data"))
        .env_remove("SDHT_CLUSTER_KEY")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("without a cluster key"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_token_guards_kv_and_optionally_status() {
    let dir = tempfile::tempdir().unwrap();
    let (token, key) = token_and_key(dir.path());
    let guarded = ["--client-token-file", &token, "--cluster-key-file", &key];
    let open = spawn_at("127.0.0.1:0", &dir.path().join("a"), None, &guarded).await;
    let private =
        spawn_at("127.0.0.1:0", &dir.path().join("b"), None, &[&guarded[..], &["--private-status"]].concat())
            .await;
    let anonymous = Client::new();
    let holder = Client::new().with_token(Some("t0ken".into()));
    for n in [&open, &private] {
        assert_eq!(anonymous.put(&n.addr, "k", "v").await.unwrap().status, 401);
        assert_eq!(anonymous.get(&n.addr, "k").await.unwrap().status, 401);
        assert_eq!(
            Client::new().with_token(Some("wrong".into())).get(&n.addr, "k").await.unwrap().status,
            401
        );
        assert_eq!(holder.put(&n.addr, "k", "v").await.unwrap().status, 204);
        assert_eq!(&holder.get(&n.addr, "k").await.unwrap().body[..], b"v");
        let leave = anonymous.call(&n.addr, hyper::Method::POST, "/leave", Default::default()).await.unwrap();
        assert_eq!(leave.status(), 401);
    }
    assert!(anonymous.json(&open.addr, "/status").await.is_ok());
    assert!(anonymous.json(&private.addr, "/status").await.is_err());
    assert!(anonymous.json(&private.addr, "/ring").await.is_err());
    assert!(holder.json(&private.addr, "/ring").await.is_ok());
}

fn now_micros() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as u64
}

/// Writes a client token file ("t0ken") and a cluster key file into `dir`; returns their paths.
fn token_and_key(dir: &std::path::Path) -> (String, String) {
    let (token, key) = (dir.join("token"), dir.join("cluster.key"));
    std::fs::write(&token, "t0ken\n").unwrap();
    std::fs::write(&key, KEY).unwrap();
    (token.to_str().unwrap().to_string(), key.to_str().unwrap().to_string())
}

/// Sends `bytes` without closing the write side and reads until the end of the answer's
/// head, for at most `within`. None if no head came in time.
async fn head_within(addr: &str, bytes: &[u8], within: Duration) -> Option<String> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    read_head(&mut s, within).await
}

async fn read_head<R: AsyncReadExt + Unpin>(s: &mut R, within: Duration) -> Option<String> {
    let mut out = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        while !out.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
        true
    };
    match tokio::time::timeout(within, read).await {
        Ok(true) => Some(String::from_utf8_lossy(&out).into_owned()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_token_without_a_cluster_key_is_refused_at_startup() {
    let dir = tempfile::tempdir().unwrap();
    let (token, _) = token_and_key(dir.path());
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_sdht"))
        .args(["serve", "--listen", "127.0.0.1:0", "--client-token-file", &token, "--data"])
        .arg(dir.path().join("data"))
        .env_remove("SDHT_CLUSTER_KEY")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(DEADLINE, out).await.unwrap().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("--client-token-file needs a cluster key"), "{stderr}");
    assert!(stderr.contains("bypassing the token"), "{stderr}");
    assert!(out.stdout.is_empty(), "it must not claim to be listening");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_calls_are_authenticated_before_their_body_is_read() {
    let ring = start().await;
    let a = ring.nodes[1].addr.clone();
    let cluster = ClusterKey::new(KEY.to_vec()).unwrap();
    // Headers announcing a large body (under the message cap), and no body at all: the tag
    // is checked from the headers, so the refusal comes at once, not after the body timeout.
    let big = 1_000_000;
    let forged = format!(
        "{TIME_HEADER}: 1\r\n{NONCE_HEADER}: 1\r\n{DIGEST_HEADER}: {}\r\n{TAG_HEADER}: {}\r\n",
        "00".repeat(32),
        "ab".repeat(32)
    );
    let started = std::time::Instant::now();
    for extra in [forged.as_str(), ""] {
        let req = http("POST", "/internal/rpc", &a, &format!("content-length: {big}\r\n{extra}"), b"");
        let resp = head_within(&a, &req, Duration::from_secs(2)).await;
        let resp = resp.expect("no answer before the body was sent");
        assert_eq!(status_of(&resp), 401, "{resp}");
    }
    // A signed call announcing more than any message: 413 from Content-Length alone.
    let too_big = http(
        "POST",
        "/internal/rpc",
        &a,
        &format!("content-length: 99999999\r\n{}", signature(&cluster, b"")),
        b"",
    );
    let resp = head_within(&a, &too_big, Duration::from_secs(2)).await.expect("no answer");
    assert_eq!(status_of(&resp), 413, "{resp}");
    eprintln!("refusals before the body took {:?} in all", started.elapsed());
    ring.all_answer().await;
}

/// The value of header `name` in a raw answer (names compared case-insensitively).
fn header_of<'a>(resp: &'a str, name: &str) -> Option<&'a str> {
    let head = resp.split("\r\n\r\n").next()?;
    head.lines().skip(1).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_conformance() {
    let ring = start().await;
    let a = ring.nodes[0].addr.clone();
    // A correct Allow on each route.
    for (method, path, allow) in [
        ("POST", "/kv/key-1", "GET, HEAD, PUT, DELETE"),
        ("DELETE", "/status", "GET, HEAD"),
        ("PUT", "/ring", "GET, HEAD"),
        ("GET", "/leave", "POST"),
        ("GET", "/internal/rpc", "POST"),
    ] {
        let resp = raw(&a, &http(method, path, &a, "content-length: 0\r\n", b"")).await;
        assert_eq!(status_of(&resp), 405, "{method} {path}: {resp}");
        assert_eq!(header_of(&resp, "allow"), Some(allow), "{method} {path}: {resp}");
    }
    // A value is application/octet-stream; HEAD gets GET's head and no body.
    let get = raw(&a, &http("GET", "/kv/key-1", &a, "", b"")).await;
    assert_eq!(status_of(&get), 200, "{get}");
    assert_eq!(header_of(&get, "content-type"), Some("application/octet-stream"), "{get}");
    let head = raw(&a, &http("HEAD", "/kv/key-1", &a, "", b"")).await;
    assert_eq!(status_of(&head), 200, "{head}");
    for name in ["content-type", "content-length", "x-sdht-hops", "x-sdht-owner"] {
        assert_eq!(header_of(&head, name), header_of(&get, name), "{name}: {head}");
    }
    assert!(head.ends_with("\r\n\r\n"), "HEAD answered with a body: {head:?}");
    let head_status = raw(&a, &http("HEAD", "/status", &a, "", b"")).await;
    assert_eq!(status_of(&head_status), 200, "{head_status}");
    assert!(head_status.ends_with("\r\n\r\n"), "{head_status:?}");
    assert_eq!(status_of(&raw(&a, &http("HEAD", "/kv/absent", &a, "", b"")).await), 404);
    // HTTP/1.0 may leave Host out.
    let old = raw(&a, b"GET /kv/key-1 HTTP/1.0\r\n\r\n").await;
    assert_eq!(status_of(&old), 200, "{old}");
    // Every /kv answer carries x-sdht-hops, refusals too.
    for (what, req) in [
        ("bad key", http("GET", "/kv/%zz", &a, "", b"")),
        ("wrong method", http("POST", "/kv/key-1", &a, "content-length: 0\r\n", b"")),
        ("too large", http("PUT", "/kv/key-1", &a, "content-length: 999999\r\n", b"")),
        ("no Host", b"GET /kv/key-1 HTTP/1.1\r\n\r\n".to_vec()),
        ("absent", http("GET", "/kv/absent", &a, "", b"")),
    ] {
        let resp = raw(&a, &req).await;
        assert!((400..500).contains(&status_of(&resp)), "{what}: {resp}");
        assert!(header_of(&resp, "x-sdht-hops").is_some(), "{what}: {resp}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bearer_scheme_is_case_insensitive_and_refusals_carry_hops() {
    let dir = tempfile::tempdir().unwrap();
    let (token, key) = token_and_key(dir.path());
    let n = spawn_at(
        "127.0.0.1:0",
        &dir.path().join("a"),
        None,
        &["--client-token-file", &token, "--cluster-key-file", &key],
    )
    .await;
    let a = n.addr.clone();
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let put = http(
            "PUT",
            "/kv/k",
            &a,
            &format!("authorization: {scheme} t0ken\r\ncontent-length: 1\r\n"),
            b"v",
        );
        let resp = raw(&a, &put).await;
        assert_eq!(status_of(&resp), 204, "{scheme}: {resp}");
    }
    let refused = raw(&a, &http("GET", "/kv/k", &a, "authorization: Basic t0ken\r\n", b"")).await;
    assert_eq!(status_of(&refused), 401, "{refused}");
    assert_eq!(header_of(&refused, "www-authenticate"), Some("Bearer"), "{refused}");
    assert_eq!(header_of(&refused, "x-sdht-hops"), Some("0"), "{refused}");
}

/// Connections in one flood: more than the node's whole connection cap (1024).
const FLOOD_CONNECTIONS: usize = 1100;
/// A flooding connection sends one more header line this often, never ending its headers.
const FLOOD_LINE_EVERY: Duration = Duration::from_secs(1);
/// A flooding connection the node closed is reopened after this pause (bounds the churn).
const FLOOD_REOPEN_AFTER: Duration = Duration::from_millis(200);
/// Each request of the client that is not flooding must be answered within this time.
const FAIR_ANSWER: Duration = Duration::from_secs(3);

/// Slow-header connections from `source` to `addr`, reopened when closed, until stopped.
struct Flood {
    stop: Arc<AtomicBool>,
    opened: Arc<AtomicU64>,
    tasks: tokio::task::JoinSet<()>,
}

fn flood(addr: &str, source: std::net::IpAddr, n: usize) -> Flood {
    let stop = Arc::new(AtomicBool::new(false));
    let opened = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    let to: std::net::SocketAddr = addr.parse().unwrap();
    for _ in 0..n {
        let (stop, opened) = (stop.clone(), opened.clone());
        tasks.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let socket = tokio::net::TcpSocket::new_v4().unwrap();
                socket.bind((source, 0).into()).unwrap();
                if let Ok(Ok(mut s)) = tokio::time::timeout(FLOOD_LINE_EVERY, socket.connect(to)).await {
                    opened.fetch_add(1, Ordering::Relaxed);
                    hold_open(&mut s, &stop).await;
                }
                tokio::time::sleep(FLOOD_REOPEN_AFTER).await;
            }
        });
    }
    Flood { stop, opened, tasks }
}

/// Dribbles header lines on `s` until the node closes it or the flood stops.
async fn hold_open(s: &mut TcpStream, stop: &AtomicBool) {
    if s.write_all(b"GET /kv/key-1 HTTP/1.1\r\nhost: x\r\n").await.is_err() {
        return;
    }
    let mut buf = [0u8; 512];
    while !stop.load(Ordering::Relaxed) {
        tokio::select! {
            r = s.read(&mut buf) => if matches!(r, Ok(0) | Err(_)) { return },
            _ = tokio::time::sleep(FLOOD_LINE_EVERY) => {
                if s.write_all(b"x-slow: 1\r\n").await.is_err() {
                    return;
                }
            }
        }
    }
}

impl Flood {
    /// Waits until the flood has opened `n` connections.
    async fn opened(&self, n: u64) {
        eventually("the flood to open its connections", || async {
            self.opened.load(Ordering::Relaxed) >= n
        })
        .await;
    }

    /// Stops the flood; returns how many connections it opened.
    async fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        while self.tasks.join_next().await.is_some() {}
        self.opened.load(Ordering::Relaxed)
    }
}

/// Runs `count` GETs of a stored key through `addr`, each on a new connection; returns the
/// number answered 200 within `FAIR_ANSWER` and the slowest answer.
async fn fair_gets(addr: &str, count: usize) -> (usize, Duration) {
    let (mut ok, mut slowest) = (0, Duration::ZERO);
    for _ in 0..count {
        let started = std::time::Instant::now();
        let got = tokio::time::timeout(FAIR_ANSWER, Client::new().get(addr, "key-7")).await;
        slowest = slowest.max(started.elapsed());
        if matches!(got, Ok(Ok(ref a)) if a.status == 200 && &a.body[..] == b"value 7") {
            ok += 1;
        }
    }
    (ok, slowest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_flooding_connections_does_not_lock_out_another() {
    let ring = start().await;
    let a = ring.nodes[0].addr.clone();
    // The flood comes from 127.0.0.2; the other client (and the peers) from 127.0.0.1.
    let flood = flood(&a, [127, 0, 0, 2].into(), FLOOD_CONNECTIONS);
    flood.opened(FLOOD_CONNECTIONS as u64).await;
    // Run past the first-request timeout, so that closed flood connections come back.
    let started = std::time::Instant::now();
    let (mut ok, mut asked, mut slowest) = (0, 0, Duration::ZERO);
    while started.elapsed() < Duration::from_secs(6) {
        let (n, slow) = fair_gets(&a, 1).await;
        (ok, asked, slowest) = (ok + n, asked + 1, slowest.max(slow));
    }
    let opened = flood.stop().await;
    eprintln!("flood of {FLOOD_CONNECTIONS} (opened {opened}): other client {ok}/{asked} answered, slowest {slowest:?}");
    assert_eq!(ok, asked, "the other client was locked out: {ok}/{asked}, slowest {slowest:?}");
    ring.all_answer().await;
}

/// A connection from `source` to `addr`.
async fn connect_from(source: [u8; 4], addr: &str) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind((std::net::IpAddr::from(source), 0).into()).unwrap();
    socket.connect(addr.parse().unwrap()).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_whose_connections_are_all_busy_gets_503_for_more() {
    let n = spawn_with(None, &["--max-conns-per-client", "8"]).await;
    let a = n.addr.clone();
    // Eight uploads from 127.0.0.2 that stall mid-body. "100 Continue" says the node is
    // reading the body, so the connection is busy and cannot be shed.
    let mut busy = Vec::new();
    for i in 0..8 {
        let mut s = connect_from([127, 0, 0, 2], &a).await;
        let put = format!(
            "PUT /kv/busy-{i} HTTP/1.1\r\nhost: {a}\r\ncontent-length: 10\r\nexpect: 100-continue\r\n\r\n"
        );
        s.write_all(put.as_bytes()).await.unwrap();
        let head = read_head(&mut s, DEADLINE).await.expect("no 100 Continue");
        assert_eq!(status_of(&head), 100, "{head}");
        s.write_all(b"12345").await.unwrap();
        busy.push(s);
    }
    // A ninth connection from that address: 503 with the reason, and closed.
    let mut ninth = connect_from([127, 0, 0, 2], &a).await;
    ninth.write_all(&http("GET", "/kv/k", &a, "", b"")).await.unwrap();
    let mut resp = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, ninth.read_to_end(&mut resp)).await;
    let resp = String::from_utf8_lossy(&resp);
    assert_eq!(status_of(&resp), 503, "{resp}");
    assert!(resp.contains("too many connections from your address (limit 8)"), "{resp}");
    // Another address is served.
    assert_eq!(Client::new().get(&a, "k").await.unwrap().status, 404);
    drop(busy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_from_the_peers_address_does_not_starve_the_ring() {
    let ring = start().await;
    let (a, b) = (ring.nodes[0].addr.clone(), ring.nodes[1].addr.clone());
    // Same address as the peers: the per-client cap cannot tell them apart; the reserve must.
    let flood = flood(&a, [127, 0, 0, 1].into(), FLOOD_CONNECTIONS);
    flood.opened(FLOOD_CONNECTIONS as u64).await;
    let client = Client::new();
    let started = std::time::Instant::now();
    let mut writes = 0;
    while started.elapsed() < Duration::from_secs(6) {
        // With three nodes and three replicas, every write lands on `a` too, through a peer call.
        let put = tokio::time::timeout(FAIR_ANSWER, client.put(&b, &format!("flood-{writes}"), "v")).await;
        assert!(matches!(put, Ok(Ok(ref r)) if r.status == 204), "write {writes} through {b}: {put:?}");
        writes += 1;
    }
    let walk = ring_ids(&client, &b).await;
    let opened = flood.stop().await;
    eprintln!("flood from the peers' address (opened {opened}): {writes} writes acknowledged");
    assert_eq!(walk.map(|w| w.len()), Some(3), "the walk from {b} through {a} broke");
    wait_for_ring(&ring.nodes).await;
    for i in 0..writes {
        assert_eq!(client.get(&a, &format!("flood-{i}")).await.unwrap().status, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_first_headers_are_cut_off() {
    let n = spawn(None).await;
    let started = std::time::Instant::now();
    let stop = AtomicBool::new(false);
    // One connection dribbling header lines, one silent.
    let mut dribbling = TcpStream::connect(&n.addr).await.unwrap();
    let mut silent = TcpStream::connect(&n.addr).await.unwrap();
    let bound = Duration::from_secs(6);
    let silent_closed = async {
        let mut buf = [0u8; 64];
        let r = tokio::time::timeout(bound, silent.read(&mut buf)).await;
        assert!(matches!(r, Ok(Ok(0)) | Ok(Err(_))), "silent connection still open after {bound:?}");
        started.elapsed()
    };
    let (dribble, silent_after) =
        tokio::join!(tokio::time::timeout(bound, hold_open(&mut dribbling, &stop)), silent_closed);
    assert!(dribble.is_ok(), "dribbling connection still open after {bound:?}");
    eprintln!("slow first headers closed after {:?} (silent: {silent_after:?})", started.elapsed());
    // A prompt client is still served.
    assert_eq!(Client::new().get(&n.addr, "k").await.unwrap().status, 404);
}

/// A kernel figure of process `pid` from /proc/PID/status, in bytes (e.g. "VmRSS", "VmHWM").
fn vm_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(&format!("{field}:"))).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

/// Uploads announcing `announce` bytes that send `send` bytes and stall. Returns each one's
/// status (0: none within `wait`) and the open connections, which the caller keeps.
async fn stalled_uploads(
    addr: &str,
    n: usize,
    announce: usize,
    send: usize,
    wait: Duration,
) -> (Vec<u16>, Vec<TcpStream>) {
    let mut uploads = tokio::task::JoinSet::new();
    for i in 0..n {
        let addr = addr.to_string();
        uploads.spawn(async move {
            let s = TcpStream::connect(&addr).await.unwrap();
            let (mut rx, mut tx) = s.into_split();
            let head =
                format!("PUT /kv/upload-{i} HTTP/1.1\r\nhost: {addr}\r\ncontent-length: {announce}\r\n\r\n");
            let write = async move {
                tx.write_all(head.as_bytes()).await?;
                for _ in 0..send / 65536 {
                    tx.write_all(&[b'x'; 65536]).await?;
                }
                Ok::<_, std::io::Error>(tx)
            };
            // A write the node does not read blocks; the answer may come meanwhile.
            let (head, tx) = tokio::join!(read_head(&mut rx, wait), tokio::time::timeout(wait, write));
            let status = head.as_deref().map_or(0, status_of);
            let stream = match tx {
                Ok(Ok(tx)) => rx.reunite(tx).ok(),
                _ => None,
            };
            (status, stream)
        });
    }
    let (mut statuses, mut streams) = (Vec::new(), Vec::new());
    while let Some(done) = uploads.join_next().await {
        let (status, stream) = done.unwrap();
        statuses.push(status);
        streams.extend(stream);
    }
    (statuses, streams)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_uploads_beyond_the_body_budget_get_503_and_memory_stays_bounded() {
    // 32 MiB of bodies in flight, 24 of them for clients: three 8 MiB uploads.
    let n = spawn_with(None, &["--max-inflight-bytes", &(32 << 20).to_string()]).await;
    let pid = n.child.id().unwrap();
    let before = vm_bytes(pid, "VmRSS");
    let (uploads, announce, send) = (24, 8 << 20, 6 << 20);
    let (statuses, _open) = stalled_uploads(&n.addr, uploads, announce, send, Duration::from_secs(10)).await;
    let refused = statuses.iter().filter(|s| **s == 503).count();
    let peak = vm_bytes(pid, "VmHWM") - before;
    eprintln!("{uploads} stalled uploads of {send} of {announce} bytes: {refused} got 503, others {:?}; RSS peak +{} MiB", statuses.iter().filter(|s| **s != 503).collect::<Vec<_>>(), peak >> 20);
    assert!(refused >= uploads - 3, "only {refused} of {uploads} refused: {statuses:?}");
    assert!(statuses.iter().all(|s| *s == 503 || *s == 0), "{statuses:?}");
    // 3 x 6 MiB held, plus buffers; without the budget it is 24 x 6 MiB.
    assert!(peak < 64 << 20, "RSS grew by {} MiB", peak >> 20);
    let resp = raw(&n.addr, &http("PUT", "/kv/after", &n.addr, "content-length: 1\r\n", b"v")).await;
    assert_eq!(status_of(&resp), 503, "the budget is still held by the stalled uploads: {resp}");
    assert!(resp.contains("too many request bodies in flight"), "{resp}");
}

/// The finding's attack with default flags, for the record (`-- --ignored --nocapture`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn measure_stalled_uploads_with_defaults() {
    let n = spawn(None).await;
    let pid = n.child.id().unwrap();
    let before = vm_bytes(pid, "VmRSS");
    let (statuses, _open) = stalled_uploads(&n.addr, 128, 8 << 20, 6 << 20, Duration::from_secs(20)).await;
    let peak = vm_bytes(pid, "VmHWM") - before;
    let refused = statuses.iter().filter(|s| **s == 503).count();
    eprintln!("128 stalled uploads of 6 of 8 MiB: {refused} got 503; RSS peak +{} MiB", peak >> 20);
}
