//! The client library against real rings: a warm client goes straight to the owners; after a
//! join or a leave its cache corrects itself within one request per moved range; a refused
//! connection or a silent node makes it fall back to another node, within the retry rules.

mod common;

use std::time::Duration;

use common::*;
use sdht::client::{Error, NodeClient, Op};
use sdht::Client;
use tokio::net::TcpListener;

const KEYS: usize = 300;

/// Writes `KEYS` keys through the client; every one must go straight to its owner.
async fn write_all(client: &Client, prefix: &str) -> Vec<String> {
    let keys: Vec<String> = (0..KEYS).map(|i| format!("{prefix}{i}")).collect();
    for k in &keys {
        let a = client.request(k, Op::Put(format!("v-{k}").into())).await.unwrap();
        assert_eq!(a.hops, 0, "a warm client's put of {k} went to {} instead of {:?}", a.node, a.owner);
    }
    keys
}

/// Reads every key through the client, checking its value; returns how many answers took hops
/// and how many needed more than one attempt.
async fn read_all(client: &Client, keys: &[String]) -> (usize, usize) {
    let (mut hopped, mut retried) = (0, 0);
    for k in keys {
        let a = client.request(k, Op::Get).await.unwrap();
        assert_eq!(a.value.as_deref(), Some(format!("v-{k}").as_bytes()), "{k}");
        hopped += usize::from(a.hops > 0);
        retried += usize::from(a.attempts > 1);
    }
    (hopped, retried)
}

/// The address of the node that owns `key` in a settled ring of `nodes`: the first node id
/// at or after the key's id, wrapping.
fn owner_of(nodes: &[NodeProc], key: &str) -> String {
    let id = sdht::ring::key_id(key.as_bytes());
    let mut by_id: Vec<&NodeProc> = nodes.iter().collect();
    by_id.sort_by_key(|n| n.id);
    by_id.iter().find(|n| n.id >= id).unwrap_or(&by_id[0]).addr.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_join_one_request_pays_hops_then_none() {
    let mut nodes = ring(3).await;
    let client = Client::new([nodes[0].addr.clone()]).unwrap();
    client.ring().await.unwrap();
    assert_eq!(client.cached_nodes(), 3);
    let keys = write_all(&client, "j").await;

    let newcomer = spawn(Some(&nodes[0].addr)).await;
    nodes.push(newcomer);
    wait_for_ring(&nodes).await;

    // The newcomer took one range from its successor: the first request for it is sent to the
    // old owner, which forwards it; the answer teaches the client the new owner. (Its range may
    // hold none of the keys: then no request pays hops and the client never hears of it.)
    let moved = keys.iter().any(|k| owner_of(&nodes, k) == nodes[3].addr);
    let (hopped, retried) = read_all(&client, &keys).await;
    assert_eq!(hopped, usize::from(moved), "requests that took hops after one join (one moved range)");
    assert_eq!(retried, 0);
    assert_eq!(client.cached_nodes(), 3 + usize::from(moved), "the newcomer was learnt from an answer");
    assert_eq!(read_all(&client, &keys).await, (0, 0), "a corrected cache goes straight to owners");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_leave_the_refused_owner_is_skipped_then_forgotten() {
    let mut nodes = ring(4).await;
    let client = Client::new([nodes[0].addr.clone()]).unwrap();
    client.ring().await.unwrap();
    let keys = write_all(&client, "l").await;

    // The node (not the seed) that owns the most keys leaves.
    let owned_by = |addr: &String| -> Vec<&String> {
        keys.iter().filter(|k| client.owner_of(k).as_ref() == Some(addr)).collect()
    };
    let leaver = (1..nodes.len()).max_by_key(|i| owned_by(&nodes[*i].addr).len()).unwrap();
    let mut gone = nodes.remove(leaver);
    let owned = owned_by(&gone.addr);
    assert!(!owned.is_empty(), "the leaving node owned some of the keys");
    leave(&NodeClient::new(), &mut gone).await;
    wait_for_ring(&nodes).await;

    // The first request for the departed node's range is refused, falls back to the next node
    // in the cache (now the owner), and the departed node is forgotten.
    let (hopped, retried) = read_all(&client, &keys).await;
    assert!(hopped <= 1, "{hopped} requests took hops after one leave");
    assert_eq!(retried, 1, "one refused connection, then the departed node is not asked again");
    assert_eq!(client.cached_nodes(), 3);
    assert!(owned.iter().all(|k| client.owner_of(k).as_ref() != Some(&gone.addr)));
    assert_eq!(read_all(&client, &keys).await, (0, 0));
}

/// A listener that accepts connections (the kernel completes the handshake) and never
/// answers: a node that hangs.
async fn silent_node() -> (TcpListener, String) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    (l, addr)
}

/// An address nothing listens on: connections are refused.
async fn closed_port() -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_or_silent_node_falls_back_within_the_retry_rules() {
    let nodes = ring(1).await;
    let live = nodes[0].addr.clone();

    // Refused: nothing was sent, so even a delete is sent again elsewhere.
    let refused = Client::new([closed_port().await, live.clone()]).unwrap();
    let put = refused.request("r", Op::Put("1".into())).await.unwrap();
    assert_eq!((put.attempts, put.node.as_str()), (2, live.as_str()));
    let del = Client::new([closed_port().await, live.clone()]).unwrap();
    assert_eq!(del.request("r", Op::Delete).await.unwrap().attempts, 2);

    // Silent: a get and a put (re-sending the same value is harmless) go on to the next node;
    // a delete does not, since it may have been applied.
    let (_hold, hung) = silent_node().await;
    let timeout = Duration::from_millis(300);
    let client =
        |seeds: [&String; 2]| Client::builder(seeds.map(String::clone)).timeout(timeout).build().unwrap();
    let put = client([&hung, &live]).request("s", Op::Put("2".into())).await.unwrap();
    assert_eq!((put.attempts, put.node.as_str()), (2, live.as_str()));
    let get = client([&hung, &live]).request("s", Op::Get).await.unwrap();
    assert_eq!(get.value.as_deref(), Some(&b"2"[..]));
    assert_eq!(get.attempts, 2);
    let del = client([&hung, &live]).delete("s").await;
    assert!(matches!(del, Err(Error::Timeout { ref addr, .. }) if *addr == hung), "{del:?}");

    // A warm client does not ask the silent node again: the answer named the live owner.
    let warm = client([&hung, &live]);
    warm.get("s").await.unwrap();
    assert_eq!(warm.owner_of("anything"), Some(live.clone()));
    assert!(warm.delete("s").await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_typed_errors_not_retried() {
    assert!(matches!(Client::new(Vec::<String>::new()), Err(Error::NoSeeds)));
    assert!(matches!(Client::new(["no-port"]), Err(Error::BadAddress(_))));
    let nodes = ring(1).await;
    let client = Client::new([nodes[0].addr.clone()]).unwrap();
    assert_eq!(client.get("absent").await.unwrap(), None);
    assert!(!client.delete("absent").await.unwrap());
    let too_long = "k".repeat(300);
    match client.request(&too_long, Op::Get).await {
        Err(Error::Rejected { status, .. }) => assert_eq!(status, 400),
        other => panic!("a key over 256 bytes: {other:?}"),
    }
    let status = client.status(&nodes[0].addr).await.unwrap();
    assert_eq!((status.addr.as_str(), status.id), (nodes[0].addr.as_str(), nodes[0].id));
}
