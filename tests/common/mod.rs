//! Test harness: real `sdht serve` processes on ephemeral loopback ports, each with its own
//! temporary data directory, killed and removed when dropped.

#![allow(dead_code)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use sdht::node::client::Client;
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

/// Starts `sdht serve` and waits for its "listening" line. `listen` may be "127.0.0.1:0".
pub async fn spawn_at(listen: &str, data: &Path, bootstrap: Option<&str>, extra: &[&str]) -> NodeProc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sdht"));
    cmd.args(["serve", "--listen", listen, "--data"])
        .arg(data)
        .args(["--stabilize-ms", &STABILIZE_MS.to_string()])
        .args(extra)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::options().create(true).append(true).open(data.with_extension("log")).unwrap())
        .kill_on_drop(true);
    if let Some(b) = bootstrap {
        cmd.args(["--bootstrap", b]);
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
    assert_eq!(id, sdht::ring::node_id(&addr));
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
/// and every predecessor is set.
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
            if status["predecessor"].is_null() {
                return false;
            }
        }
    }
    true
}

pub async fn wait_for_ring(nodes: &[NodeProc]) {
    let client = Client::new();
    let refs: Vec<&NodeProc> = nodes.iter().collect();
    eventually("the ring to settle", || ring_is_whole(&client, &refs)).await;
}

pub async fn keys_on(client: &Client, addr: &str) -> u64 {
    client.json(addr, "/status").await.unwrap()["keys"].as_u64().unwrap()
}

/// Asks a node to leave and waits for its process to exit successfully.
pub async fn leave(client: &Client, node: &mut NodeProc) {
    let resp = client.call(&node.addr, hyper::Method::POST, "/leave", Default::default()).await.unwrap();
    assert_eq!(resp.status(), 202);
    let status = tokio::time::timeout(DEADLINE, node.child.wait()).await.expect("node did not exit").unwrap();
    assert!(status.success(), "leaving node exited with {status}");
}
