//! The `sdht` command line: parses flags (defined in `cli`) and calls the library: `serve`
//! runs a node, the key commands go through the client library (`sdht::Client`).

mod cli;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use cli::{Cli, Command};
use hyper::{Method, StatusCode};
use sdht::node::{self, Config, Node};
use sdht::Client;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

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

/// Exit status 1 for an absent key, as `grep` does for no match.
fn absent(key: &str) -> ExitCode {
    eprintln!("{key}: not found");
    ExitCode::from(1)
}

/// A client library for the key commands, starting from the `--node` addresses.
fn client(seeds: Vec<String>, token: Option<String>) -> anyhow::Result<Client> {
    let builder = Client::builder(seeds);
    Ok(match token {
        Some(t) => builder.token(t),
        None => builder,
    }
    .build()?)
}

/// Node logs at `info` for `serve`, at `warn` for the others (the demo's own output and a key
/// command's answer read cleanly); `RUST_LOG` overrides both.
fn init_logs(command: &Command) {
    let default = if matches!(command, Command::Serve { .. }) { "info" } else { "warn" };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default.into()),
        )
        .init();
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
    let cli = Cli::parse();
    init_logs(&cli.command);
    let token = secret(cli.token_file.as_ref(), Some("SDHT_CLIENT_TOKEN"))?
        .map(|t| String::from_utf8(t).context("the client token must be UTF-8"))
        .transpose()?;
    match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Put { seeds, key, value } => {
            let value = if value == "-" {
                let mut buf = Vec::new();
                std::io::stdin().read_to_end(&mut buf)?;
                buf
            } else {
                value.into_bytes()
            };
            client(seeds.nodes, token)?.put(&key, value).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Get { seeds, key } => match client(seeds.nodes, token)?.get(&key).await? {
            Some(value) => {
                std::io::stdout().write_all(&value)?;
                Ok(ExitCode::SUCCESS)
            }
            None => Ok(absent(&key)),
        },
        Command::Delete { seeds, key } => match client(seeds.nodes, token)?.delete(&key).await? {
            true => Ok(ExitCode::SUCCESS),
            false => Ok(absent(&key)),
        },
        Command::Ring { node } => {
            print!("{}", client(vec![node], token)?.ring().await?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Leave { node } => leave(client(vec![node.clone()], token)?, &node).await,
        Command::Completions { shell } => {
            cli::completions(shell, &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Man { dir } => {
            cli::man_pages(&dir).with_context(|| format!("cannot write man pages to {}", dir.display()))?;
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

/// Asks `node` to leave and draws its handoff's progress until it is gone.
async fn leave(client: Client, node: &str) -> anyhow::Result<ExitCode> {
    let resp = client.nodes().call(node, Method::POST, "/leave", Default::default()).await?;
    if resp.status() != StatusCode::ACCEPTED {
        bail!("{}: {}", resp.status(), String::from_utf8_lossy(resp.body()).trim());
    }
    // The node answers until it has handed its keys over (indicatif draws only on a terminal).
    let bar = indicatif::ProgressBar::new(100);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} leaving [{bar:40}] {pos:>3}% {msg}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(100));
    while let Ok(status) = client.status(node).await {
        if let Some(h) = status.handoff.filter(|h| h.leaving) {
            bar.set_position(h.percent as u64);
            bar.set_message(format!("{} keys, {} bytes to {}", h.keys, h.bytes, h.to));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bar.set_position(100);
    bar.finish_with_message("done");
    println!("{node} left the ring");
    Ok(ExitCode::SUCCESS)
}

/// Runs one node until a signal or a `/leave`.
async fn serve(args: cli::ServeArgs) -> anyhow::Result<ExitCode> {
    let cluster_key = secret(args.cluster_key_file.as_ref(), Some("SDHT_CLUSTER_KEY"))?;
    let client_token = secret(args.client_token_file.as_ref(), None)?
        .map(|t| String::from_utf8(t).context("the client token must be UTF-8"))
        .transpose()?;
    node::auth::check_token_needs_key(client_token.is_some(), cluster_key.is_some())?;
    let listener = bind(&args.listen, cluster_key.is_some(), args.insecure).await?;
    let local = listener.local_addr()?.to_string();
    let mut config = node_config(args, local);
    config.cluster_key = cluster_key;
    config.client_token = client_token;
    let node = Node::start(config).await?;
    println!("sdht listening on {} id={}", node.me().addr, node.me().id);
    std::io::stdout().flush()?;
    let shutdown = CancellationToken::new();
    on_signal(shutdown.clone());
    node::serve(listener, node, shutdown).await;
    Ok(ExitCode::SUCCESS)
}

/// Binds `listen`, checked first: an unauthenticated node never opens a public port.
async fn bind(listen: &str, keyed: bool, insecure: bool) -> anyhow::Result<TcpListener> {
    let wanted: Vec<_> = tokio::net::lookup_host(listen)
        .await
        .with_context(|| format!("cannot resolve --listen {listen}"))?
        .collect();
    if let Some(exposed) = wanted.iter().find(|a| !node::auth::exposure_allowed(**a, keyed, insecure)) {
        bail!(
            "refusing to listen on {exposed} without a cluster key: anyone who reaches the port could join the ring \
             and rewrite data. Give --cluster-key-file (or SDHT_CLUSTER_KEY), listen on loopback, or pass --insecure."
        );
    }
    TcpListener::bind(&wanted[..]).await.with_context(|| format!("cannot listen on {listen}"))
}

/// The node's settings from its flags (secrets aside); `local` is the address bound.
fn node_config(args: cli::ServeArgs, local: String) -> Config {
    let mut config = Config::new(args.advertise.unwrap_or(local), args.data);
    config.bootstrap = args.bootstrap;
    config.stabilize_every = Duration::from_millis(args.stabilize_ms.max(1));
    config.peer_timeout = Duration::from_millis(args.peer_timeout_ms.max(1));
    config.max_value_bytes = args.max_value_bytes;
    config.hop_limit = args.hop_limit;
    config.handoff_batch = args.handoff_batch_keys as usize;
    config.id_from_address = args.id_from_address;
    config.successors = args.successors as usize;
    config.replicas = args.replicas as usize;
    config.private_status = args.private_status;
    config.max_conns_per_client = args.max_conns_per_client as usize;
    config.max_inflight_bytes = args.max_inflight_bytes;
    config
}
