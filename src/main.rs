//! The `sdht` command line: parses flags and calls the library.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use hyper::{Method, StatusCode};
use sdht::client::{format_ring, Client};
use sdht::node::{self, Config, Node};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "sdht",
    version,
    about = "A peer-to-peer distributed hash table: every node stores and routes clockwise"
)]
struct Cli {
    /// Client token file for nodes started with --client-token-file (or env SDHT_CLIENT_TOKEN).
    #[arg(long, global = true, value_name = "PATH")]
    token_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

/// A secret from a file (one trailing newline stripped) or, failing that, an environment
/// variable.
fn secret(file: Option<&PathBuf>, env: Option<&str>) -> anyhow::Result<Option<Vec<u8>>> {
    match file {
        Some(path) => {
            let mut bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
            if bytes.last() == Some(&b'\n') {
                bytes.pop();
            }
            Ok(Some(bytes))
        }
        None => Ok(env.and_then(std::env::var_os).map(|v| v.into_encoded_bytes())),
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run a node: start a new ring, or join one with --bootstrap.
    Serve {
        /// Address to listen on (port 0 picks a free port).
        #[arg(long, value_name = "HOST:PORT")]
        listen: String,
        /// Directory of this node's LMDB store.
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
        /// A node of the ring to join; without it the node starts a new ring of one.
        #[arg(long, value_name = "HOST:PORT")]
        bootstrap: Option<String>,
        /// Address peers and clients use for this node (default: the listening address).
        #[arg(long, value_name = "HOST:PORT")]
        advertise: Option<String>,
        /// Period of the stabilize rounds that repair successor and predecessor pointers.
        #[arg(long, default_value_t = 200, value_name = "MS")]
        stabilize_ms: u64,
        /// How long to wait for a peer's answer to a control message.
        #[arg(long, default_value_t = 500, value_name = "MS")]
        peer_timeout_ms: u64,
        /// Largest value accepted, in bytes.
        #[arg(long, default_value_t = node::DEFAULT_MAX_VALUE_BYTES)]
        max_value_bytes: usize,
        /// Forwards after which a request is refused with 508 (a routing loop).
        #[arg(long, default_value_t = node::DEFAULT_HOP_LIMIT)]
        hop_limit: u32,
        /// Length of the successor list, for repair after crashes.
        #[arg(long, default_value_t = node::DEFAULT_SUCCESSORS, value_parser = clap::value_parser!(u64).range(1..=32))]
        successors: u64,
        /// Copies of each key: the owner and its next R-1 successors (at most --successors).
        #[arg(long, default_value_t = node::DEFAULT_REPLICAS, value_parser = clap::value_parser!(u64).range(1..=32))]
        replicas: u64,
        /// Shared secret of the ring, at least 32 bytes (or env SDHT_CLUSTER_KEY): node-to-node
        /// calls are signed with it and unsigned ones refused.
        #[arg(long, value_name = "PATH")]
        cluster_key_file: Option<PathBuf>,
        /// Require `Authorization: Bearer TOKEN` (the file's content) on /kv and /leave. Needs
        /// a cluster key: without one, node-to-node calls would bypass the token.
        #[arg(long, value_name = "PATH")]
        client_token_file: Option<PathBuf>,
        /// With a client token, require it on /status and /ring too.
        #[arg(long)]
        private_status: bool,
        /// Allow a node without a cluster key to listen on a non-loopback address.
        #[arg(long)]
        insecure: bool,
        /// Most client connections from one IP address; node-to-node calls do not count.
        #[arg(long, default_value_t = node::DEFAULT_MAX_CONNS_PER_CLIENT as u64, value_parser = clap::value_parser!(u64).range(1..=1024))]
        max_conns_per_client: u64,
        /// Most request-body bytes received or held at once; an upload that does not fit
        /// waits briefly, then gets 503.
        #[arg(long, default_value_t = node::DEFAULT_MAX_INFLIGHT_BYTES, value_name = "BYTES")]
        max_inflight_bytes: usize,
        /// Most keys in one handoff batch (smaller batches: more, shorter requests).
        #[arg(long, default_value_t = sdht::wire::BATCH_RECORDS as u64, value_parser = clap::value_parser!(u64).range(1..=sdht::wire::BATCH_RECORDS as u64))]
        handoff_batch_keys: u64,
        /// Take the hash of the advertised address as the node's id (deterministic, checked
        /// by peers) instead of a balanced id chosen at the first join and kept in --data.
        /// Every node of a ring must use the same kind of id.
        #[arg(long, conflicts_with = "balanced_id")]
        id_from_address: bool,
        /// A balanced id (the default; spelled out for scripts that want to say so).
        #[arg(long)]
        balanced_id: bool,
    },
    /// Store VALUE under KEY ("-" reads the value from stdin).
    Put {
        #[arg(long, value_name = "HOST:PORT")]
        node: String,
        key: String,
        value: String,
    },
    /// Print the value of KEY (exit status 1 when absent).
    Get {
        #[arg(long, value_name = "HOST:PORT")]
        node: String,
        key: String,
    },
    /// Delete KEY (exit status 1 when absent).
    Delete {
        #[arg(long, value_name = "HOST:PORT")]
        node: String,
        key: String,
    },
    /// Show the ring clockwise from NODE: address, id and key count of each node.
    Ring {
        #[arg(long, value_name = "HOST:PORT")]
        node: String,
    },
    /// Ask NODE to hand its keys to its successor and leave the ring.
    Leave {
        #[arg(long, value_name = "HOST:PORT")]
        node: String,
    },
    /// Start a local ring of 4 nodes on 127.0.0.1:8000-8003, show it working, serve until Ctrl-C.
    Demo {
        /// Where the nodes keep their data (default: a temporary directory, removed at exit).
        #[arg(long, value_name = "DIR")]
        data: Option<PathBuf>,
        /// Port of the first node; the others follow.
        #[arg(long, default_value_t = 8000)]
        base_port: u16,
        /// Number of nodes.
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
        nodes: u16,
    },
}

/// Cancels the token on SIGINT or SIGTERM.
fn on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut int), Ok(mut term)) =
                (signal(SignalKind::interrupt()), signal(SignalKind::terminate()))
            else {
                return;
            };
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        token.cancel();
    });
}

async fn kv_result(answer: sdht::client::KvAnswer, key: &str) -> anyhow::Result<ExitCode> {
    match answer.status {
        StatusCode::OK => {
            std::io::stdout().write_all(&answer.body)?;
            Ok(ExitCode::SUCCESS)
        }
        StatusCode::NO_CONTENT => Ok(ExitCode::SUCCESS),
        StatusCode::NOT_FOUND => {
            eprintln!("{key}: not found");
            Ok(ExitCode::from(1))
        }
        s => bail!("{}: {}", s, String::from_utf8_lossy(&answer.body).trim()),
    }
}

fn main() -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sdht: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sdht: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run() -> anyhow::Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let cli = Cli::parse();
    let token = secret(cli.token_file.as_ref(), Some("SDHT_CLIENT_TOKEN"))?
        .map(|t| String::from_utf8(t).context("the client token must be UTF-8"))
        .transpose()?;
    let client = Client::new().with_token(token);
    match cli.command {
        Command::Serve {
            listen,
            data,
            bootstrap,
            advertise,
            stabilize_ms,
            peer_timeout_ms,
            max_value_bytes,
            hop_limit,
            handoff_batch_keys,
            successors,
            replicas,
            cluster_key_file,
            client_token_file,
            private_status,
            insecure,
            max_conns_per_client,
            max_inflight_bytes,
            id_from_address,
            balanced_id: _,
        } => {
            let cluster_key = secret(cluster_key_file.as_ref(), Some("SDHT_CLUSTER_KEY"))?;
            let client_token = secret(client_token_file.as_ref(), None)?
                .map(|t| String::from_utf8(t).context("the client token must be UTF-8"))
                .transpose()?;
            node::auth::check_token_needs_key(client_token.is_some(), cluster_key.is_some())?;
            // Checked before binding: an unauthenticated node never opens a public port.
            let wanted: Vec<_> = tokio::net::lookup_host(&listen)
                .await
                .with_context(|| format!("cannot resolve --listen {listen}"))?
                .collect();
            if let Some(exposed) =
                wanted.iter().find(|a| !node::auth::exposure_allowed(**a, cluster_key.is_some(), insecure))
            {
                bail!(
                    "refusing to listen on {exposed} without a cluster key: anyone who reaches the port could join the ring \
                     and rewrite data. Give --cluster-key-file (or SDHT_CLUSTER_KEY), listen on loopback, or pass --insecure."
                );
            }
            let listener =
                TcpListener::bind(&wanted[..]).await.with_context(|| format!("cannot listen on {listen}"))?;
            let local_addr = listener.local_addr()?;
            let local = local_addr.to_string();
            let mut config = Config::new(advertise.unwrap_or(local), data);
            config.bootstrap = bootstrap;
            config.stabilize_every = Duration::from_millis(stabilize_ms.max(1));
            config.peer_timeout = Duration::from_millis(peer_timeout_ms.max(1));
            config.max_value_bytes = max_value_bytes;
            config.hop_limit = hop_limit;
            config.handoff_batch = handoff_batch_keys as usize;
            config.successors = successors as usize;
            config.replicas = replicas as usize;
            config.cluster_key = cluster_key;
            config.client_token = client_token;
            config.private_status = private_status;
            config.max_conns_per_client = max_conns_per_client as usize;
            config.max_inflight_bytes = max_inflight_bytes;
            config.id_from_address = id_from_address;
            let node = Node::start(config).await?;
            println!("sdht listening on {} id={}", node.me().addr, node.me().id);
            std::io::stdout().flush()?;
            let shutdown = CancellationToken::new();
            on_signal(shutdown.clone());
            node::serve(listener, node, shutdown).await;
            Ok(ExitCode::SUCCESS)
        }
        Command::Put { node, key, value } => {
            let value = if value == "-" {
                let mut buf = Vec::new();
                std::io::stdin().read_to_end(&mut buf)?;
                buf
            } else {
                value.into_bytes()
            };
            kv_result(client.put(&node, &key, value).await?, &key).await
        }
        Command::Get { node, key } => kv_result(client.get(&node, &key).await?, &key).await,
        Command::Delete { node, key } => kv_result(client.delete(&node, &key).await?, &key).await,
        Command::Ring { node } => {
            print!("{}", format_ring(&client.json(&node, "/ring").await?));
            Ok(ExitCode::SUCCESS)
        }
        Command::Leave { node } => {
            let resp = client.call(&node, Method::POST, "/leave", Default::default()).await?;
            if resp.status() != StatusCode::ACCEPTED {
                bail!("{}: {}", resp.status(), String::from_utf8_lossy(resp.body()).trim());
            }
            // The node answers until it has handed its keys over; draw its progress until it
            // is gone (indicatif draws only on a terminal).
            let bar = indicatif::ProgressBar::new(100);
            bar.set_style(
                indicatif::ProgressStyle::with_template("{spinner} leaving [{bar:40}] {pos:>3}% {msg}")
                    .expect("a valid template")
                    .progress_chars("=> "),
            );
            bar.enable_steady_tick(Duration::from_millis(100));
            while let Ok(status) = client.json(&node, "/status").await {
                let h = &status["handoff"];
                if h["leaving"] == true {
                    bar.set_position(h["percent"].as_f64().unwrap_or(0.0) as u64);
                    bar.set_message(format!(
                        "{} keys, {} bytes to {}",
                        h["keys"],
                        h["bytes"],
                        h["to"].as_str().unwrap_or("?")
                    ));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            bar.set_position(100);
            bar.finish_with_message("done");
            println!("{node} left the ring");
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo { data, base_port, nodes } => {
            let shutdown = CancellationToken::new();
            on_signal(shutdown.clone());
            sdht::demo::run(data, "127.0.0.1", base_port, nodes, shutdown).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
