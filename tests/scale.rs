//! Balanced ids and mass joins: a restarted node keeps the id it chose, and nodes joining at
//! once through one seed split its keys evenly.

mod common;

use std::time::{Duration, Instant};

use common::*;
use sdht::client::NodeClient as Client;
use sdht::node::{serve, Config, Node};
use sdht::ring::{key_id, owner_of, Id};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const BALANCED: &[&str] = &["--balanced-id"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_keeps_its_balanced_id() {
    let seed = spawn_with(None, BALANCED).await;
    let joiner = spawn_with(Some(&seed.addr), BALANCED).await;
    let mut nodes = vec![seed, joiner];
    wait_for_ring(&nodes).await;
    let mut joiner = nodes.pop().unwrap();
    let (addr, id, data) = (joiner.addr.clone(), joiner.id, joiner.data.clone());
    assert_ne!(id, sdht::ring::node_id(&addr), "a balanced id, not the address's hash");
    joiner.child.kill().await.unwrap();
    let again = spawn_at(&addr, &data, None, BALANCED).await;
    assert_eq!(again.id, id, "the restarted node must keep its place on the ring");
}

/// Starts an in-process node on a free port.
async fn start(dir: &std::path::Path, bootstrap: Option<String>) -> (String, Node, CancellationToken) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let mut config = Config::new(addr.clone(), dir.join(addr.replace(':', "_")));
    config.bootstrap = bootstrap;
    config.stabilize_every = Duration::from_millis(STABILIZE_MS);
    config.max_conns_per_client = 1024;
    let node = Node::start(config).await.unwrap();
    let token = CancellationToken::new();
    tokio::spawn(serve(listener, node.clone(), token.clone()));
    (addr, node, token)
}

/// Every node's published successor and predecessor are its neighbours in id order.
fn one_ring(nodes: &[Node]) -> bool {
    let mut views: Vec<_> = nodes.iter().map(Node::ring_view).collect();
    views.sort_by_key(|v| v.me.id);
    let n = views.len();
    (0..n).all(|i| {
        views[i].succ().id == views[(i + 1) % n].me.id
            && views[i].pred.as_ref().map(|p| p.id) == Some(views[(i + n - 1) % n].me.id)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_joining_at_once_split_the_keys_evenly() {
    const N: usize = 16;
    const KEYS: usize = 1600;
    let dir = tempfile::tempdir().unwrap();
    let (seed, seed_node, _t) = start(dir.path(), None).await;
    let client = Client::new();
    let keys: Vec<String> = (0..KEYS).map(|i| format!("key-{i}")).collect();
    let mut writers = tokio::task::JoinSet::new();
    for chunk in keys.chunks(KEYS / 16) {
        let (client, seed, chunk) = (client.clone(), seed.clone(), chunk.to_vec());
        writers.spawn(async move {
            for k in chunk {
                assert_eq!(client.put(&seed, &k, b"v".to_vec()).await.unwrap().status, 204);
            }
        });
    }
    while let Some(w) = writers.join_next().await {
        w.unwrap();
    }
    let mut joining = tokio::task::JoinSet::new();
    for _ in 1..N {
        let (dir, seed) = (dir.path().to_path_buf(), seed.clone());
        joining.spawn(async move { start(&dir, Some(seed)).await });
    }
    let (mut nodes, mut tokens) = (vec![seed_node], Vec::new());
    while let Some(j) = joining.join_next().await {
        let (_, node, token) = j.unwrap();
        nodes.push(node);
        tokens.push(token);
    }
    let start = Instant::now();
    while !one_ring(&nodes) {
        assert!(start.elapsed() < DEADLINE, "{N} nodes joining at once did not form one ring");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut ids: Vec<Id> = nodes.iter().map(|n| n.me().id).collect();
    ids.sort();
    let mut owned = std::collections::BTreeMap::<Id, usize>::new();
    for k in &keys {
        *owned.entry(owner_of(&ids, key_id(k.as_bytes())).unwrap()).or_default() += 1;
    }
    let max = *owned.values().max().unwrap() as f64;
    let ratio = max / (KEYS as f64 / N as f64);
    println!("{N} balanced nodes: max/mean keys {ratio:.2}; ids and keys owned: {owned:?}");
    assert!(ratio <= 1.5, "max/mean keys per node {ratio:.2} > 1.5");
}
