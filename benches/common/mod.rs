//! Shared by the benchmarks: real sdht nodes in this process (real HTTP on loopback, each with
//! its own LMDB directory, joined through the bootstrap path), and the bare hyper baseline.

#![allow(dead_code)]

pub mod client_load;

use std::convert::Infallible;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use sdht::client::NodeClient as Client;
use sdht::node::{serve, Config, Node};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// `SDHT_BENCH_QUICK=1`: small rings and short measurements (under a minute in all).
pub fn quick() -> bool {
    std::env::var("SDHT_BENCH_QUICK").is_ok_and(|v| v != "0" && !v.is_empty())
}

/// The runtime every benchmark runs its nodes, baseline and clients on: two workers, the
/// machine's two cores.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// The baseline: a bare hyper 1.x HTTP/1.1 server on loopback that reads the request body
/// and answers every request with the same 100 bytes.
pub async fn bare_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let body = Bytes::from(vec![b'x'; 100]);
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let body = body.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let body = body.clone();
                    async move {
                        let _ = req.into_body().collect().await;
                        Ok::<_, Infallible>(hyper::Response::new(Full::new(body)))
                    }
                });
                let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    addr
}

pub struct Ring {
    pub addrs: Vec<String>,
    _tokens: Vec<CancellationToken>,
    _dir: tempfile::TempDir,
}

/// Starts `n` nodes, the first alone and the others joining through it, and waits until
/// every node's successor and predecessor are its neighbours in id order.
pub async fn start_ring(n: usize) -> Ring {
    let dir = tempfile::tempdir().unwrap();
    let mut addrs = Vec::new();
    let mut tokens = Vec::new();
    for i in 0..n {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let mut config = Config::new(addr.clone(), dir.path().join(format!("n{i}")));
        config.bootstrap = addrs.first().cloned();
        config.stabilize_every = Duration::from_millis(100);
        // `settled` orders the nodes by the hash of their address.
        config.id_from_address = true;
        let node = Node::start(config).await.unwrap();
        let token = CancellationToken::new();
        tokio::spawn(serve(listener, node, token.clone()));
        addrs.push(addr);
        tokens.push(token);
    }
    let ring = Ring { addrs, _tokens: tokens, _dir: dir };
    let deadline = Instant::now() + Duration::from_secs(300);
    while !ring.settled().await {
        assert!(Instant::now() < deadline, "ring of {n} did not settle");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ring
}

impl Ring {
    async fn settled(&self) -> bool {
        let client = Client::new();
        let mut by_id: Vec<(sdht::ring::Id, &String)> =
            self.addrs.iter().map(|a| (sdht::ring::node_id(a), a)).collect();
        by_id.sort();
        let n = by_id.len();
        for (i, (_, addr)) in by_id.iter().enumerate() {
            let Ok(s) = client.json(addr, "/status").await else {
                return false;
            };
            let succ = by_id[(i + 1) % n].1;
            let pred = by_id[(i + n - 1) % n].1;
            if s["successor"] != succ.as_str() {
                return false;
            }
            if n > 1 && s["predecessor"] != pred.as_str() {
                return false;
            }
        }
        // And the walk the issue asks for: complete from the first node.
        client
            .json(&self.addrs[0], "/ring")
            .await
            .is_ok_and(|r| r["complete"] == true && r["nodes"].as_array().map_or(0, Vec::len) == n)
    }
}

/// Writes `count` keys of `value_len` bytes through the ring's nodes in turn.
pub async fn preload(ring: &Ring, count: usize, value_len: usize) -> Vec<String> {
    let client = Client::new();
    let value = Bytes::from(vec![b'v'; value_len]);
    let keys: Vec<String> = (0..count).map(|i| format!("key-{i}")).collect();
    let mut pending = tokio::task::JoinSet::new();
    for (i, chunk) in keys.chunks(count.div_ceil(32).max(1)).enumerate() {
        let (client, value, chunk) = (client.clone(), value.clone(), chunk.to_vec());
        let addr = ring.addrs[i % ring.addrs.len()].clone();
        pending.spawn(async move {
            for k in chunk {
                let a = client.put(&addr, &k, value.clone()).await.unwrap();
                assert_eq!(a.status, 204);
            }
        });
    }
    while pending.join_next().await.is_some() {}
    keys
}

/// Starts `sdht serve` as a real process (the bench's release binary) on a free loopback port,
/// with its data in `data` and its log beside it, and returns it with the address from its
/// "sdht listening on ADDR id=HEX" line. Every node of a bench shares 127.0.0.1, so the
/// per-address connection cap is lifted. The process is killed when dropped.
pub async fn spawn_sdht(
    data: &std::path::Path,
    bootstrap: Option<&str>,
    extra: &[&str],
) -> (tokio::process::Child, String) {
    use tokio::io::AsyncBufReadExt;
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_sdht"));
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--max-conns-per-client", "1024", "--data"])
        .arg(data)
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(data.with_extension("log")).unwrap())
        .kill_on_drop(true);
    if let Some(b) = bootstrap {
        cmd.args(["--bootstrap", b]);
    }
    let mut child = cmd.spawn().expect("start sdht");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("no listening line in time")
        .unwrap()
        .expect("node exited");
    let addr = line.split_whitespace().nth(3).expect("a listening line").to_string();
    (child, addr)
}
