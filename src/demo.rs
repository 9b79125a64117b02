//! `sdht demo`: a local ring of four nodes in one process, a few keys written and read
//! through different nodes, and the commands to try; on Ctrl-C every node leaves in turn.
//! Not part of the node: it runs nodes and talks to them like any client.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::client::{self, format_ring, Client};
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

    let client = Client::new();
    let deadline = Instant::now() + SETTLE_DEADLINE;
    let mut ring = client.json(&addrs[0], "/ring").await?;
    while ring["nodes"].as_array().map_or(0, Vec::len) < addrs.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        ring = client.json(&addrs[0], "/ring").await?;
    }

    println!("\nwriting through one node, reading through the next:");
    for (i, word) in WORDS.iter().enumerate() {
        let (w, r) = (&addrs[i % addrs.len()], &addrs[(i + 1) % addrs.len()]);
        let put = client.put(w, word, format!("value of {word}")).await?;
        let got = client.get(r, word).await?;
        println!(
            "  {word:<8} PUT via {w} -> {} ({} hops)   GET via {r} -> {:?} from {} ({} hops)",
            put.status.as_u16(),
            put.hops.unwrap_or(0),
            String::from_utf8_lossy(&got.body),
            got.owner.as_deref().unwrap_or("?"),
            got.hops.unwrap_or(0),
        );
    }
    let ring = client.json(&addrs[0], "/ring").await?;
    println!("\nthe ring, clockwise:\n{}", format_ring(&ring));
    let a = &addrs[0];
    let b = addrs.last().unwrap_or(a);
    println!("try:");
    println!("  curl -X PUT --data-binary 'hello' http://{a}/kv/greeting");
    println!("  curl -i http://{b}/kv/greeting");
    println!("  curl -X DELETE http://{b}/kv/greeting");
    println!("  curl http://{a}/ring");
    println!("  curl http://{a}/status");
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
