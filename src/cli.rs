//! The command line's definition (clap derive), in one place: `main` parses it, and the
//! shell completions and man pages are generated from it (`sdht completions`, `sdht man`).
//! Must not touch: what the commands do (that is `main`'s).

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use sdht::node;

#[derive(Parser)]
#[command(
    name = "sdht",
    version,
    about = "A peer-to-peer distributed hash table: every node stores and routes clockwise"
)]
pub struct Cli {
    /// Client token file for nodes started with --client-token-file (or env SDHT_CLIENT_TOKEN).
    #[arg(long, global = true, value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run a node: start a new ring, or join one with --bootstrap.
    Serve(ServeArgs),
    /// Store VALUE under KEY ("-" reads the value from stdin).
    Put {
        #[command(flatten)]
        seeds: Seeds,
        key: String,
        value: String,
    },
    /// Print the value of KEY (exit status 1 when absent).
    Get {
        #[command(flatten)]
        seeds: Seeds,
        key: String,
    },
    /// Delete KEY (exit status 1 when absent).
    Delete {
        #[command(flatten)]
        seeds: Seeds,
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
    /// Print shell completions for SHELL to stdout (the Debian package installs them).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages (sdht.1 and one per subcommand) into DIR.
    #[command(hide = true)]
    Man {
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
}

/// Where a key command enters the ring; the client library sends the request on to the key's
/// owner itself.
#[derive(clap::Args)]
pub struct Seeds {
    /// A node of the ring (repeat for more: the next is tried if one is down).
    #[arg(long = "node", value_name = "HOST:PORT", required = true)]
    pub nodes: Vec<String>,
}

/// Prints the completion script for `shell`.
pub fn completions(shell: clap_complete::Shell, out: &mut dyn std::io::Write) {
    let mut cmd = <Cli as clap::CommandFactory>::command();
    clap_complete::generate(shell, &mut cmd, "sdht", out);
}

/// Writes `sdht.1` and a page per visible subcommand (`sdht-serve.1`, ...) into `dir`.
pub fn man_pages(dir: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let cmd = <Cli as clap::CommandFactory>::command();
    clap_mangen::generate_to(cmd, dir)
}

/// `sdht serve`'s flags.
#[derive(clap::Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, value_name = "HOST:PORT")]
    pub listen: String,
    /// Directory of this node's LMDB store.
    #[arg(long, value_name = "DIR")]
    pub data: PathBuf,
    /// A node of the ring to join; without it the node starts a new ring of one.
    #[arg(long, value_name = "HOST:PORT")]
    pub bootstrap: Option<String>,
    /// Address peers and clients use for this node (default: the listening address).
    #[arg(long, value_name = "HOST:PORT")]
    pub advertise: Option<String>,
    /// Period of the stabilize rounds that repair successor and predecessor pointers.
    #[arg(long, default_value_t = 200, value_name = "MS")]
    pub stabilize_ms: u64,
    /// How long to wait for a peer's answer to a control message.
    #[arg(long, default_value_t = 500, value_name = "MS")]
    pub peer_timeout_ms: u64,
    /// Largest value accepted, in bytes.
    #[arg(long, default_value_t = node::DEFAULT_MAX_VALUE_BYTES)]
    pub max_value_bytes: usize,
    /// Forwards after which a request is refused with 508 (a routing loop).
    #[arg(long, default_value_t = node::DEFAULT_HOP_LIMIT)]
    pub hop_limit: u32,
    /// Length of the successor list, for repair after crashes.
    #[arg(long, default_value_t = node::DEFAULT_SUCCESSORS, value_parser = clap::value_parser!(u64).range(1..=32))]
    pub successors: u64,
    /// Copies of each key: the owner and its next R-1 successors (at most --successors).
    #[arg(long, default_value_t = node::DEFAULT_REPLICAS, value_parser = clap::value_parser!(u64).range(1..=32))]
    pub replicas: u64,
    /// Shared secret of the ring, at least 32 bytes (or env SDHT_CLUSTER_KEY): node-to-node
    /// calls are signed with it and unsigned ones refused.
    #[arg(long, value_name = "PATH")]
    pub cluster_key_file: Option<PathBuf>,
    /// Require `Authorization: Bearer TOKEN` (the file's content) on /kv and /leave. Needs
    /// a cluster key: without one, node-to-node calls would bypass the token.
    #[arg(long, value_name = "PATH")]
    pub client_token_file: Option<PathBuf>,
    /// With a client token, require it on /status and /ring too.
    #[arg(long)]
    pub private_status: bool,
    /// Allow a node without a cluster key to listen on a non-loopback address.
    #[arg(long)]
    pub insecure: bool,
    /// Most client connections from one IP address; node-to-node calls do not count.
    #[arg(long, default_value_t = node::DEFAULT_MAX_CONNS_PER_CLIENT as u64, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub max_conns_per_client: u64,
    /// Most request-body bytes received or held at once; an upload that does not fit
    /// waits briefly, then gets 503.
    #[arg(long, default_value_t = node::DEFAULT_MAX_INFLIGHT_BYTES, value_name = "BYTES")]
    pub max_inflight_bytes: usize,
    /// Most keys in one handoff batch (smaller batches: more, shorter requests).
    #[arg(long, default_value_t = sdht::wire::BATCH_RECORDS as u64, value_parser = clap::value_parser!(u64).range(1..=sdht::wire::BATCH_RECORDS as u64))]
    pub handoff_batch_keys: u64,
    /// Take the hash of the advertised address as the node's id (deterministic, checked
    /// by peers) instead of a balanced id chosen at the first join and kept in --data.
    /// Every node of a ring must use the same kind of id.
    #[arg(long, conflicts_with = "balanced_id")]
    pub id_from_address: bool,
    /// A balanced id (the default; spelled out for scripts that want to say so).
    #[arg(long)]
    pub balanced_id: bool,
}
