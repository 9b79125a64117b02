//! `sdht demo`: a local ring of four nodes in one process, a few keys written and read
//! through different nodes, one key through the client library (straight to its owner), and
//! the commands to try; on Ctrl-C every node leaves in turn.
//! Not part of the node: it runs nodes and talks to them like any client. Left out: its own
//! logging (the CLI sets node logs to `warn` for the demo, so this output reads cleanly).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::client::{self, Client, Op};
use crate::node::{serve, Config, Node, StartError};

/// Why the demo stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Start(#[from] StartError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Client(#[from] client::Error),
    #[error("a node of the demo ended abnormally")]
    TaskFailed,
}

pub type Result<T> = std::result::Result<T, Error>;

/// How long the demo waits for its ring to settle before showing it anyway.
const SETTLE_DEADLINE: Duration = Duration::from_secs(15);

const WORDS: [&str; 8] = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"];

pub async fn run(
    data: Option<PathBuf>,
    host: &str,
    base_port: u16,
    count: u16,
    shutdown: CancellationToken,
) -> Result<()> {
    let temp = data.is_none();
    let root = data.unwrap_or_else(|| std::env::temp_dir().join(format!("sdht-demo-{}", std::process::id())));
    let addrs: Vec<String> = (0..count).map(|i| format!("{host}:{}", base_port + i)).collect();
    let mut running = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        let listener = TcpListener::bind(addr).await?;
        let mut config = Config::new(addr.clone(), root.join(format!("node{i}")));
        config.bootstrap = (i > 0).then(|| addrs[0].clone());
        let node = Node::start(config).await?;
        println!("started {addr} id={}", node.me().id);
        let token = CancellationToken::new();
        running.push((token.clone(), tokio::spawn(serve(listener, node, token))));
    }

    let client = Client::new(addrs.iter().cloned())?;
    settle(&client, addrs.len()).await?;
    through_each_node(&client, &addrs).await?;
    through_the_library(&client).await?;
    println!("\nthe ring, clockwise:\n{}", client.ring().await?);
    let a = &addrs[0];
    let b = addrs.last().unwrap_or(a);
    println!("try:");
    println!("  curl -X PUT --data-binary 'hello' http://{a}/kv/greeting");
    println!("  curl -i http://{b}/kv/greeting");
    println!("  curl -X DELETE http://{b}/kv/greeting");
    println!("  curl http://{a}/ring");
    println!("  curl http://{a}/status");
    println!("  sdht get --node {b} greeting");
    println!("  cargo run --example client -- {a}");
    println!("data under {}; Ctrl-C makes every node leave in turn.", root.display());

    shutdown.cancelled().await;
    // Leave one at a time, so each hands its keys to a successor that is still there; the
    // first node is last and keeps everything on disk.
    for (token, handle) in running.into_iter().rev() {
        token.cancel();
        handle.await.map_err(|_| Error::TaskFailed)?;
    }
    if temp {
        let _ = std::fs::remove_dir_all(&root);
    }
    Ok(())
}

/// "1 hop", "2 hops".
fn hops(n: u32) -> String {
    if n == 1 {
        "1 hop".to_string()
    } else {
        format!("{n} hops")
    }
}

/// Waits (up to `SETTLE_DEADLINE`, then goes on anyway) until a `/ring` walk lists `count`
/// nodes. A complete walk also fills the client's owner cache.
async fn settle(client: &Client, count: usize) -> Result<()> {
    let deadline = Instant::now() + SETTLE_DEADLINE;
    while client.ring().await?.nodes.len() < count && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Each word written through one node and read through the next, as curl would: the ring
/// forwards each request to the key's owner.
async fn through_each_node(client: &Client, addrs: &[String]) -> Result<()> {
    println!("\nwriting through one node, reading through the next (the ring forwards to the owner):");
    let nodes = client.nodes();
    for (i, word) in WORDS.iter().enumerate() {
        let (w, r) = (&addrs[i % addrs.len()], &addrs[(i + 1) % addrs.len()]);
        let put = nodes.put(w, word, format!("value of {word}")).await?;
        let got = nodes.get(r, word).await?;
        println!(
            "  {word:<8} PUT via {w} -> {} {:<9}  GET via {r} -> {:?} from {} ({})",
            put.status.as_u16(),
            format!("({})", hops(put.hops.unwrap_or(0))),
            String::from_utf8_lossy(&got.body),
            got.owner.as_deref().unwrap_or("?"),
            hops(got.hops.unwrap_or(0)),
        );
    }
    Ok(())
}

/// One key through the client library, which sends it straight to the owner it learnt.
async fn through_the_library(client: &Client) -> Result<()> {
    println!("\nthe same through the client library (sdht::Client sends each request to the key's owner):");
    let put = client.request("greeting", Op::Put("hello".into())).await?;
    println!(
        "  sdht.put(\"greeting\", \"hello\") -> stored on {} ({})",
        put.owner.as_deref().unwrap_or("?"),
        hops(put.hops)
    );
    let got = client.request("greeting", Op::Get).await?;
    println!(
        "  sdht.get(\"greeting\")          -> {:?} from {} ({})",
        String::from_utf8_lossy(got.value.as_deref().unwrap_or_default()),
        got.owner.as_deref().unwrap_or("?"),
        hops(got.hops)
    );
    Ok(())
}
