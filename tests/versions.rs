//! Versions and deadlines on a live ring: a write is versioned where it enters the ring, the
//! owner keeps only the newer version, a request past its deadline is dropped, and a version
//! from too far in the future is refused. Loopback nodes without a cluster key, so the test
//! can send node-to-node messages as a late or lying peer would.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use common::*;
use hyper::Method;
use sdht::client::NodeClient as Client;
use sdht::wire::{
    Fault, KvOp, KvOutcome, KvRequest, MergeKind, Message, NodeInfo, Record, Request, Response,
};

fn now_micros() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as u64
}

/// Sends one node-to-node message and decodes the answer.
async fn rpc(client: &Client, addr: &str, req: Request) -> Response {
    let resp = client.call(addr, Method::POST, "/internal/rpc", Bytes::from(req.encode())).await.unwrap();
    assert_eq!(resp.status(), 200, "{:?}", resp.body());
    Response::decode(resp.body()).unwrap()
}

fn put(key: &str, value: &str, version: u64, deadline_ms: u64) -> Request {
    let op = KvOp::Put(value.as_bytes().to_vec());
    Request::Kv(KvRequest { key: key.into(), op, hops: 0, addressed: false, version, deadline_ms })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_rise_through_any_node_and_every_answer_names_them() {
    let nodes = ring(3).await;
    let client = Client::new();
    let a = client.put(&nodes[0].addr, "v-key", "one").await.unwrap();
    let b = client.put(&nodes[1].addr, "v-key", "two").await.unwrap();
    let (va, vb) = (a.version.unwrap(), b.version.unwrap());
    assert!(va > 0 && vb > va, "a later write through another node has a higher version: {va} {vb}");
    let got = client.get(&nodes[2].addr, "v-key").await.unwrap();
    assert_eq!((&got.body[..], got.version), (&b"two"[..], Some(vb)));
    let del = client.delete(&nodes[0].addr, "v-key").await.unwrap();
    assert_eq!(del.status, 204);
    let gone = client.get(&nodes[1].addr, "v-key").await.unwrap();
    assert_eq!(gone.status, 404);
    assert!(gone.version.unwrap() > vb, "a 404 names the tombstone's version");
    let never = client.get(&nodes[1].addr, "never-written").await.unwrap();
    assert_eq!((never.status.as_u16(), never.version), (404, Some(0)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_and_older_writes_do_not_undo_newer_ones() {
    let nodes = ring(3).await;
    let client = Client::new();
    let newer = client.put(&nodes[0].addr, "late-key", "newer").await.unwrap().version.unwrap();
    let far = now_micros() / 1000 + 10_000;
    // A forward that arrives after its deadline is dropped, wherever it is.
    let late =
        rpc(&client, &nodes[1].addr, put("late-key", "late", now_micros(), now_micros() / 1000 - 1)).await;
    let Response::Kv(reply) = late else { panic!("{late:?}") };
    assert_eq!(reply.outcome, KvOutcome::Failed(Fault::DeadlinePassed));
    // A write stamped before the newer one is ordered before it: it changes nothing.
    let older = rpc(&client, &nodes[2].addr, put("late-key", "older", newer - 1, far)).await;
    assert!(matches!(older, Response::Kv(ref r) if r.outcome == KvOutcome::Done), "{older:?}");
    for n in &nodes {
        let got = client.get(&n.addr, "late-key").await.unwrap();
        assert_eq!((&got.body[..], got.version), (&b"newer"[..], Some(newer)), "via {}", n.addr);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_from_the_far_future_is_refused_and_counted() {
    let nodes = ring(2).await;
    let client = Client::new();
    client.put(&nodes[0].addr, "clock-key", "honest").await.unwrap();
    let hour = 3_600_000_000;
    let ahead = now_micros() + hour;
    let forged =
        rpc(&client, &nodes[0].addr, put("clock-key", "forged", ahead, now_micros() / 1000 + 10_000)).await;
    assert!(
        matches!(forged, Response::Kv(ref r) if r.outcome == KvOutcome::Failed(Fault::VersionAhead(ahead)))
    );
    let from = NodeInfo { addr: nodes[1].addr.clone(), id: nodes[1].id.0 };
    let record = Record { key: "clock-key".into(), version: u64::MAX, value: Some(b"forged".to_vec()) };
    let merge = Request::Merge { from, records: vec![record], kind: MergeKind::Replica };
    assert!(matches!(
        rpc(&client, &nodes[0].addr, merge).await,
        Response::Fault(Fault::VersionAhead(u64::MAX))
    ));
    for n in &nodes {
        assert_eq!(&client.get(&n.addr, "clock-key").await.unwrap().body[..], b"honest");
    }
    let metrics = client.call(&nodes[0].addr, Method::GET, "/metrics", Bytes::new()).await.unwrap();
    let text = String::from_utf8_lossy(metrics.body()).into_owned();
    assert!(text.contains("sdht_versions_refused_total 2"), "{text}");
}
