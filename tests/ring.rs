//! The ring end to end: real `sdht` processes on loopback, joined through `--bootstrap`.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use common::*;
use sdht::client::NodeClient as Client;
use sdht::ring::{key_id, Id, Interval};

const SLOW_HANDOFF: &[&str] = &["--handoff-batch-keys", "1"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_nodes_serve_every_key_through_every_node() {
    let nodes = ring(4).await;
    let client = Client::new();
    let addrs: Vec<String> = live(&nodes);
    let acked = write_keys(&client, &addrs, 1000, "k").await;
    let refs: Vec<&str> = addrs.iter().map(String::as_str).collect();
    check_all(&client, &refs, &acked, 3).await;
    // Each key sits on exactly its owner and the owner's next two successors (the default
    // three replicas): every node holds exactly the keys of its own range and of its two
    // predecessors' ranges.
    for n in &nodes {
        assert_eq!(
            keys_on(&client, &n.addr).await,
            replicated_here(&nodes, n, 3, &acked),
            "keys on {}",
            n.addr
        );
    }
}

/// How many live keys of `acked` `node` must hold with `r` replicas: those in the ranges of
/// the node and of its r-1 predecessors, i.e. in (r-th predecessor, node].
fn replicated_here(
    nodes: &[NodeProc],
    node: &NodeProc,
    r: usize,
    acked: &BTreeMap<String, Option<Vec<u8>>>,
) -> u64 {
    let mut ids: Vec<Id> = nodes.iter().map(|n| n.id).collect();
    ids.sort();
    let n = ids.len();
    let i = ids.iter().position(|x| *x == node.id).unwrap();
    let range =
        if r >= n { Interval::new(node.id, node.id) } else { Interval::new(ids[(i + n - r) % n], node.id) };
    acked.iter().filter(|(k, v)| v.is_some() && range.contains(key_id(k.as_bytes()))).count() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifth_node_joins_under_load_and_takes_exactly_its_range() {
    // One key per handoff batch stretches the handoff over many requests, so the writer's
    // writes land while it runs.
    let mut nodes = ring_with(4, SLOW_HANDOFF).await;
    let client = Client::new();
    let addrs: Vec<String> = live(&nodes);
    let acked: Acked = Arc::new(Mutex::new(write_keys(&client, &addrs, 1000, "pre").await));
    let writer = start_writer("w", addrs.clone(), acked.clone(), 1);
    let fifth = spawn_with(Some(&addrs[1]), SLOW_HANDOFF).await;
    nodes.push(fifth);
    wait_for_ring(&nodes).await;
    let (ok, failed) = writer.finish().await;
    assert!(ok > 0);
    assert_eq!(failed, 0, "no write may fail while a node joins");
    let acked = acked.lock().unwrap().clone();
    let all: Vec<String> = live(&nodes);
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    check_all(&client, &refs, &acked, 4).await;
    // The newcomer took exactly its range from its successor and, as the next replica of
    // its two predecessors, their ranges (their re-replication runs in the background).
    let new = &nodes[4];
    let expect = replicated_here(&nodes, new, 3, &acked);
    eventually("the newcomer to hold its range and its replicas", || async {
        keys_on(&client, &new.addr).await == expect
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_leave_under_load_loses_nothing() {
    let mut nodes = ring_with(5, SLOW_HANDOFF).await;
    let client = Client::new();
    let addrs: Vec<String> = live(&nodes);
    let acked: Acked = Arc::new(Mutex::new(write_keys(&client, &addrs, 1000, "pre").await));
    // The writer never asks the leaving node directly once it is gone; requests that reach
    // it while it leaves are forwarded.
    let writer = start_writer("w", addrs[..4].to_vec(), acked.clone(), 2);
    let mut leaver = nodes.remove(4);
    leave(&client, &mut leaver).await;
    wait_for_ring(&nodes).await;
    let (ok, failed) = writer.finish().await;
    assert!(ok > 0);
    assert_eq!(failed, 0, "no write may fail while a node leaves");
    let acked = acked.lock().unwrap().clone();
    let refs: Vec<&str> = addrs[..4].iter().map(String::as_str).collect();
    check_all(&client, &refs, &acked, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaving_down_to_one_puts_every_key_on_it() {
    let mut nodes = ring(4).await;
    let client = Client::new();
    let addrs: Vec<String> = live(&nodes);
    let acked = write_keys(&client, &addrs, 300, "k").await;
    while nodes.len() > 1 {
        let mut n = nodes.remove(0);
        leave(&client, &mut n).await;
        wait_for_ring(&nodes).await;
    }
    let last = &nodes[0];
    assert_eq!(keys_on(&client, &last.addr).await, 300);
    check_all(&client, &[&last.addr], &acked, 0).await;
    let status = client.json(&last.addr, "/status").await.unwrap();
    assert_eq!(status["successor"], last.addr.as_str());
    assert!(status["predecessor"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_joining_at_once_through_one_bootstrap_converge() {
    let first = spawn(None).await;
    let boot = first.addr.clone();
    let joins = (0..4).map(|_| {
        let boot = boot.clone();
        async move { spawn(Some(&boot)).await }
    });
    let mut nodes = futures_join_all(joins).await;
    nodes.insert(0, first);
    wait_for_ring(&nodes).await;
    let client = Client::new();
    let addrs: Vec<String> = live(&nodes);
    let acked = write_keys(&client, &addrs, 200, "c").await;
    let refs: Vec<&str> = addrs.iter().map(String::as_str).collect();
    check_all(&client, &refs, &acked, 4).await;
}

/// Runs the futures concurrently (each spawns a process and waits for its line).
async fn futures_join_all<F: std::future::Future<Output = NodeProc> + Send + 'static>(
    futs: impl Iterator<Item = F>,
) -> Vec<NodeProc> {
    let handles: Vec<_> = futs.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_single_node_serves_its_keys_again() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let node = spawn_at("127.0.0.1:0", &data, None, &[]).await;
    let client = Client::new();
    let acked = write_keys(&client, std::slice::from_ref(&node.addr), 100, "r").await;
    let addr = node.addr.clone();
    let mut node = node;
    // SIGTERM: the last node of a ring just stops, keeping its data.
    leave(&client, &mut node).await;
    drop(node);
    let again = spawn_at(&addr, &data, None, &[]).await;
    assert_eq!(keys_on(&client, &again.addr).await, 100);
    check_all(&client, &[&again.addr], &acked, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_member_restarted_at_its_address_serves_its_keys_again() {
    let mut nodes = ring(3).await;
    let client = Client::new();
    let addrs: Vec<String> = live(&nodes);
    let acked = write_keys(&client, &addrs, 300, "k").await;
    let victim = nodes.remove(2);
    let (addr, data) = (victim.addr.clone(), victim.data.clone());
    let held = keys_on(&client, &addr).await;
    assert!(held > 0);
    let mut victim = victim;
    victim.child.kill().await.unwrap();
    let again = spawn_at(&addr, &data, Some(&addrs[0]), &[]).await;
    nodes.push(again);
    wait_for_ring(&nodes).await;
    assert_eq!(keys_on(&client, &addr).await, held);
    let refs: Vec<&str> = addrs.iter().map(String::as_str).collect();
    check_all(&client, &refs, &acked, 2).await;
    drop(victim);
}

/// The sum over `nodes` of one counter from `/metrics`.
async fn counter_sum(client: &Client, nodes: &[NodeProc], name: &str) -> u64 {
    let mut sum = 0;
    for n in nodes {
        let resp = client.call(&n.addr, hyper::Method::GET, "/metrics", Default::default()).await.unwrap();
        let text = String::from_utf8_lossy(resp.body()).into_owned();
        let line = text.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("no {name}"));
        sum += line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap();
    }
    sum
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_reach_both_replicas_in_shared_messages() {
    let nodes = ring(3).await;
    let client = Client::new();
    let addrs = live(&nodes);
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..32 {
        let (client, addr) = (client.clone(), addrs[w % addrs.len()].clone());
        writers.spawn(async move {
            for i in 0..40 {
                let a = client.put(&addr, &format!("w{w}-{i}"), "v").await.unwrap();
                assert_eq!(a.status, 204);
            }
        });
    }
    while let Some(r) = writers.join_next().await {
        r.unwrap();
    }
    // With R = 3 on three nodes every write goes to both other nodes: 2 x 1280 replica writes.
    // Sent one message a write, batches would equal writes.
    let writes = counter_sum(&client, &nodes, "sdht_replica_writes_total").await;
    let batches = counter_sum(&client, &nodes, "sdht_replica_batches_total").await;
    assert_eq!(writes, 2 * 32 * 40, "replica writes sent");
    assert!(batches * 3 < writes * 2, "{batches} messages carried {writes} replica writes");
}
