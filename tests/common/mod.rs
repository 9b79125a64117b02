//! Test harness: real `sdht serve` processes on ephemeral loopback ports, each with its own
//! temporary data directory, killed and removed when dropped.

#![allow(dead_code)]

pub mod netns;
use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use sdht::client::NodeClient as Client;
use sdht::ring::Id;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Stabilize period for test rings: short, so tests settle fast.
pub const STABILIZE_MS: u64 = 50;
/// The longest any test waits for a condition before failing.
pub const DEADLINE: Duration = Duration::from_secs(30);

pub struct NodeProc {
    pub addr: String,
    pub id: Id,
    pub child: Child,
    pub data: PathBuf,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// The addresses of `nodes`, in order.
pub fn live(nodes: &[NodeProc]) -> Vec<String> {
    nodes.iter().map(|n| n.addr.clone()).collect()
}

/// Starts `sdht serve` and waits for its "listening" line. `listen` may be "127.0.0.1:0".
pub async fn spawn_at(listen: &str, data: &Path, bootstrap: Option<&str>, extra: &[&str]) -> NodeProc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sdht"));
    cmd.args(["serve", "--listen", listen, "--data"])
        .arg(data)
        .args(extra)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::options().create(true).append(true).open(data.with_extension("log")).unwrap())
        .kill_on_drop(true);
    if let Some(b) = bootstrap {
        cmd.args(["--bootstrap", b]);
    }
    // Tests rely on ids being the hash of the address unless they ask for balanced ids.
    let balanced = extra.contains(&"--balanced-id");
    if !balanced {
        cmd.arg("--id-from-address");
    }
    if !extra.contains(&"--stabilize-ms") {
        cmd.args(["--stabilize-ms", &STABILIZE_MS.to_string()]);
    }
    let mut child = cmd.spawn().expect("start sdht");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(DEADLINE, lines.next_line())
        .await
        .expect("node did not print its listening line in time")
        .unwrap()
        .unwrap_or_else(|| panic!("node exited; see {}", data.with_extension("log").display()));
    // "sdht listening on ADDR id=HEX"
    let mut words = line.split_whitespace().skip(3);
    let addr = words.next().unwrap().to_string();
    let id = Id::from_hex(words.next().unwrap().trim_start_matches("id=")).unwrap();
    assert!(balanced || id == sdht::ring::node_id(&addr));
    NodeProc { addr, id, child, data: data.to_path_buf(), _dir: None }
}

/// Starts a node on a free port with a fresh temporary data directory.
pub async fn spawn(bootstrap: Option<&str>) -> NodeProc {
    spawn_with(bootstrap, &[]).await
}

pub async fn spawn_with(bootstrap: Option<&str>, extra: &[&str]) -> NodeProc {
    let dir = tempfile::tempdir().unwrap();
    let mut node = spawn_at("127.0.0.1:0", &dir.path().join("data"), bootstrap, extra).await;
    node._dir = Some(dir);
    node
}

/// Starts a ring of `n` nodes, all joining through the first, and waits until it settles.
pub async fn ring(n: usize) -> Vec<NodeProc> {
    ring_with(n, &[]).await
}

pub async fn ring_with(n: usize, extra: &[&str]) -> Vec<NodeProc> {
    let mut nodes = vec![spawn_with(None, extra).await];
    for _ in 1..n {
        let b = nodes[0].addr.clone();
        nodes.push(spawn_with(Some(&b), extra).await);
    }
    wait_for_ring(&nodes).await;
    nodes
}

/// Polls `check` until it returns true; panics with `what` after `DEADLINE`.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The ids of `/ring` as walked from `addr`, if the walk is complete.
pub async fn ring_ids(client: &Client, addr: &str) -> Option<Vec<Id>> {
    let ring = client.json(addr, "/ring").await.ok()?;
    if ring["complete"] != serde_json::Value::Bool(true) {
        return None;
    }
    ring["nodes"].as_array()?.iter().map(|n| Id::from_hex(n["id"].as_str()?)).collect()
}

/// True if every node's `/ring` walk lists exactly `nodes`, clockwise in id order from itself,
/// and every node's predecessor is the previous one (not unknown, not a node that died).
pub async fn ring_is_whole(client: &Client, nodes: &[&NodeProc]) -> bool {
    let mut ids: Vec<Id> = nodes.iter().map(|n| n.id).collect();
    ids.sort();
    for n in nodes {
        let Some(walk) = ring_ids(client, &n.addr).await else {
            return false;
        };
        let start = ids.iter().position(|i| *i == n.id).unwrap();
        let expect: Vec<Id> = ids[start..].iter().chain(&ids[..start]).copied().collect();
        if walk != expect {
            return false;
        }
        if nodes.len() > 1 {
            let Ok(status) = client.json(&n.addr, "/status").await else {
                return false;
            };
            let prev = nodes.iter().find(|m| m.id == ids[(start + ids.len() - 1) % ids.len()]).unwrap();
            if status["predecessor"] != prev.addr.as_str() {
                return false;
            }
        }
    }
    true
}

/// Waits until the ring is whole and every successor list holds the next min(4, n-1) nodes
/// (the default list length), so writes go to their final replicas.
pub async fn wait_for_ring(nodes: &[NodeProc]) {
    let client = Client::new();
    let refs: Vec<&NodeProc> = nodes.iter().collect();
    eventually("the ring to settle", || async {
        ring_is_whole(&client, &refs).await && lists_settled(&client, nodes).await
    })
    .await;
}

async fn lists_settled(client: &Client, nodes: &[NodeProc]) -> bool {
    let mut order: Vec<&NodeProc> = nodes.iter().collect();
    order.sort_by_key(|n| n.id);
    let n = order.len();
    for (i, node) in order.iter().enumerate() {
        let want: Vec<&str> =
            (1..=4.min(n.saturating_sub(1))).map(|k| order[(i + k) % n].addr.as_str()).collect();
        let Ok(status) = client.json(&node.addr, "/status").await else { return false };
        let got: Vec<&str> =
            status["successors"].as_array().into_iter().flatten().filter_map(|v| v.as_str()).collect();
        if got != want && !(n == 1 && got == [node.addr.as_str()]) {
            return false;
        }
    }
    true
}

pub async fn keys_on(client: &Client, addr: &str) -> u64 {
    client.json(addr, "/status").await.unwrap()["keys"].as_u64().unwrap()
}

/// Asks a node to leave and waits for its process to exit successfully.
pub async fn leave(client: &Client, node: &mut NodeProc) {
    let started = Instant::now();
    let resp = client.call(&node.addr, hyper::Method::POST, "/leave", Default::default()).await.unwrap();
    assert_eq!(resp.status(), 202);
    let Ok(status) = tokio::time::timeout(DEADLINE, node.child.wait()).await else {
        let log = std::fs::read_to_string(node.data.with_extension("log")).unwrap_or_default();
        let _ = std::fs::write(std::env::temp_dir().join("sdht-leaver.log"), &log);
        let tail: Vec<&str> = log.lines().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect();
        panic!(
            "node {} did not exit within {DEADLINE:?}; the end of its log:\n{}",
            node.addr,
            tail.join("\n")
        );
    };
    let status = status.unwrap();
    eprintln!("{} left in {:?}", node.addr, started.elapsed());
    assert!(status.success(), "leaving node exited with {status}");
}

/// Last acknowledged state of each key: Some(value) after a 204 PUT, None after a 204 DELETE.
pub type Acked = Arc<Mutex<BTreeMap<String, Option<Vec<u8>>>>>;

/// Checks every acknowledged key through every node: the newest value, or 404 if deleted.
pub async fn check_all(
    client: &Client,
    nodes: &[&str],
    acked: &BTreeMap<String, Option<Vec<u8>>>,
    max_hops: u32,
) {
    for (key, want) in acked {
        for n in nodes {
            let got = client.get(n, key).await.unwrap();
            match want {
                Some(v) => {
                    assert_eq!(got.status, 200, "{key} via {n}: {:?}", got.body);
                    assert_eq!(&got.body[..], &v[..], "{key} via {n}");
                }
                None => assert_eq!(got.status, 404, "deleted {key} via {n}"),
            }
            let hops = got.hops.expect("x-sdht-hops header");
            assert!(hops <= max_hops, "{key} via {n}: {hops} hops");
            assert!(got.owner.is_some(), "x-sdht-owner header");
        }
    }
}

/// A writer that keeps writing (and now and then deleting) its own keys through random
/// nodes until stopped; only 204s are recorded as acknowledged.
pub struct Writer {
    stop: Arc<AtomicBool>,
    handle: tokio::task::JoinHandle<(u64, u64)>,
}

pub fn start_writer(name: &'static str, addrs: Vec<String>, acked: Acked, seed: u64) -> Writer {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let handle = tokio::spawn(async move {
        let client = Client::new();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let (mut ok, mut failed) = (0u64, 0u64);
        let mut seq = 0u64;
        while !flag.load(Ordering::Relaxed) {
            seq += 1;
            let key = format!("{name}-{}", rng.random_range(0..300));
            let node = addrs.choose(&mut rng).unwrap();
            if rng.random_ratio(1, 10) {
                match client.delete(node, &key).await {
                    Ok(a) if a.status == 204 || a.status == 404 => {
                        acked.lock().unwrap().insert(key, None);
                        ok += 1;
                    }
                    _ => failed += 1,
                }
            } else {
                let value = format!("{key}={seq}").into_bytes();
                match client.put(node, &key, value.clone()).await {
                    Ok(a) if a.status == 204 => {
                        acked.lock().unwrap().insert(key, Some(value));
                        ok += 1;
                    }
                    _ => failed += 1,
                }
            }
        }
        (ok, failed)
    });
    Writer { stop, handle }
}

impl Writer {
    pub async fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.await.unwrap()
    }
}

pub async fn write_keys(
    client: &Client,
    addrs: &[String],
    n: usize,
    prefix: &str,
) -> BTreeMap<String, Option<Vec<u8>>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut acked = BTreeMap::new();
    for i in 0..n {
        let key = format!("{prefix}{i}");
        let value = format!("value {i} of {prefix}").into_bytes();
        let a = client.put(addrs.choose(&mut rng).unwrap(), &key, value.clone()).await.unwrap();
        assert_eq!(a.status, 204, "{key}");
        acked.insert(key, Some(value));
    }
    acked
}
