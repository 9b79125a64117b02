//! Linux network namespaces for real-process partition tests.
//!
//! Owns: the capability check (root, `ip`, `bash`, an `iptables` that can add rules inside a
//! namespace; a test without them prints `SKIPPED: ...` and passes, or fails when `CI` is
//! set), one private bridge and /24 test subnet per cluster, one namespace and veth pair per
//! node, iptables DROP rules that cut links or make them lossy (a random share of packets
//! dropped, each direction) and their packet counters, TCP probes that show what is cut,
//! `sdht serve` processes started inside the namespaces (as [`NodeProc`]s, so the ring checks
//! of `common` apply), and removing all of it in `Drop`, also when a test panics (the nodes'
//! log tails are printed then).
//!
//! Leaves out: workloads, ring checks and assertions (`tests/partition.rs`, `common/mod.rs`).
//!
//! Traffic never leaves the machine: the subnet exists only on the test's bridge, which has
//! no other port than the nodes' veths; namespaces get no default route; nothing is forwarded
//! or NATed. The test process (the clients) reaches every node through the bridge's address
//! in the root namespace, and cuts and losses only drop traffic between nodes, never from the
//! clients.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::NodeProc;

/// First two octets of every test subnet (10.213.X.0/24): private, and unusual enough not to
/// collide with anything configured on a CI machine. The third octet is picked per cluster.
const SUBNET_PREFIX: &str = "10.213";
/// Third octets a cluster may use; one not yet assigned on this machine is taken.
const OCTETS: std::ops::RangeInclusive<u16> = 20..=249;
/// Host part of node 0's address; node i is .(NODE_HOST_BASE + i), the bridge is .1.
const NODE_HOST_BASE: usize = 10;
/// Port every node listens on, in its own namespace.
pub const NODE_PORT: u16 = 7000;
/// Interface names hold one digit for the node index (and must fit IFNAMSIZ, 15 chars).
const MAX_NODES: usize = 10;
/// Longest Linux interface name (IFNAMSIZ minus the terminating NUL).
const IFNAMSIZ_CHARS: usize = 15;
/// A TCP probe that has not connected by then calls the peer unreachable: one bridge hop
/// answers in well under a millisecond, a loaded 2-core machine in far less than a second.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// A node prints its listening line within this (a joiner must reach its bootstrap first).
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for killed node processes to exit before their namespaces are removed.
const REAP_TIMEOUT: Duration = Duration::from_secs(5);
/// Poll interval while reaping killed processes in `Drop` (which cannot await).
const REAP_POLL: Duration = Duration::from_millis(10);
/// Lines of each node's log printed when a test fails.
const LOG_TAIL_LINES: usize = 40;
/// When this environment variable is set, a failed test keeps its temporary directory (data
/// and logs) instead of removing it.
pub const KEEP_ENV: &str = "SDHT_TEST_KEEP";
/// Random bytes of the cluster key (written hex-encoded; sdht needs at least 32 bytes).
const CLUSTER_KEY_BYTES: usize = 32;

/// Numbers each network built by this process, so names are unique per run.
static RUN_COUNTER: AtomicU32 = AtomicU32::new(0);

/// What the machine offers the partition tests, found by [`preflight`].
#[derive(Clone, Copy, Debug)]
pub struct Tools {
    /// `iptables` or `iptables-legacy`: whichever can add rules inside a namespace.
    pub iptables: &'static str,
}

/// The tools, or `None` after printing `SKIPPED: <why>` when the machine cannot run
/// partition tests. With `CI` set a missing capability fails the test instead.
pub fn tools_or_skip(test: &str) -> Option<Tools> {
    match preflight() {
        Ok(tools) => Some(tools),
        Err(why) if std::env::var_os("CI").is_some() => {
            panic!("{test}: CI is set, but this machine cannot run partition tests: {why}")
        }
        Err(why) => {
            println!("SKIPPED: {test}: {why}");
            None
        }
    }
}

/// Checks root, `ip`, `bash` and iptables inside a scratch namespace; removes leftovers of
/// earlier runs that were killed before their `Drop` ran.
pub fn preflight() -> Result<Tools, String> {
    if !is_root() {
        return Err("not running as root (namespaces and iptables need CAP_NET_ADMIN)".into());
    }
    for (tool, arg) in [("ip", "-V"), ("bash", "--version")] {
        run_sync(&[tool, arg]).map_err(|e| format!("`{tool}` is not usable: {e}"))?;
    }
    sweep_stale();
    let ns = format!("sdht-{}-pre", run_tag());
    run_sync(&["ip", "netns", "add", &ns]).map_err(|e| format!("cannot create a namespace: {e}"))?;
    let found = ["iptables", "iptables-legacy"].into_iter().find(|bin| iptables_works(&ns, bin));
    let _ = run_sync(&["ip", "netns", "del", &ns]);
    found
        .map(|iptables| Tools { iptables })
        .ok_or_else(|| "neither iptables nor iptables-legacy can add DROP rules in a namespace".into())
}

fn iptables_works(ns: &str, bin: &str) -> bool {
    let rules: [&[&str]; 2] = [
        &["-A", "INPUT", "-s", "10.213.0.2", "-j", "DROP"],
        &["-A", "INPUT", "-m", "statistic", "--mode", "random", "--probability", "0.2", "-j", "DROP"],
    ];
    rules.iter().all(|rule| {
        let mut args = vec!["ip", "netns", "exec", ns, bin, "-w"];
        args.extend_from_slice(rule);
        run_sync(&args).is_ok()
    })
}

fn is_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    // "Uid:\treal\teffective\tsaved\tfs"
    status.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|l| l.split_whitespace().nth(1)) == Some("0")
}

/// `<pid>x<counter>` in hex: at most 9 characters, unique per network built by this process.
fn run_tag() -> String {
    format!("{:x}x{:x}", std::process::id(), RUN_COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// Removes namespaces and bridges named by this harness whose process no longer exists.
fn sweep_stale() {
    let dead = |tag: &str| {
        let pid = tag.split('x').next().and_then(|p| u32::from_str_radix(p, 16).ok());
        pid.is_some_and(|p| !Path::new(&format!("/proc/{p}")).exists())
    };
    let namespaces = run_sync(&["ip", "netns", "list"]).unwrap_or_default();
    for ns in namespaces.lines().filter_map(|l| l.split_whitespace().next()) {
        if ns.strip_prefix("sdht-").and_then(|t| t.split('-').next()).is_some_and(dead) {
            let _ = run_sync(&["ip", "netns", "del", ns]);
        }
    }
    let links = run_sync(&["ip", "-o", "link", "show", "type", "bridge"]).unwrap_or_default();
    for name in links.lines().filter_map(|l| l.split(": ").nth(1)) {
        if name.strip_prefix("sdb").is_some_and(dead) {
            let _ = run_sync(&["ip", "link", "del", name]);
        }
    }
}

/// Runs a command to completion; its stdout, or why it failed.
fn run_sync(args: &[&str]) -> Result<String, String> {
    let out = std::process::Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("`{}`: {e}", args.join(" ")))?;
    finish(args, out)
}

/// [`run_sync`] without blocking the runtime (used while a workload runs).
async fn run(args: &[&str]) -> Result<String, String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| format!("`{}`: {e}", args.join(" ")))?;
    finish(args, out)
}

fn finish(args: &[&str], out: std::process::Output) -> Result<String, String> {
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        Err(format!("`{}` failed ({}): {}", args.join(" "), out.status, err.trim()))
    }
}

/// A bridge in the root namespace with the test subnet, and one namespace per node wired to
/// it by a veth pair. Everything is removed on drop.
pub struct Net {
    tag: String,
    octet: u16,
    bridge: String,
    namespaces: Vec<String>,
    host_veths: Vec<String>,
    iptables: &'static str,
}

impl Net {
    /// Builds the bridge and `nodes` namespaces. On error what was built is removed again.
    pub fn create(tools: Tools, nodes: usize) -> Result<Net, String> {
        assert!(nodes <= MAX_NODES, "at most {MAX_NODES} nodes");
        let tag = run_tag();
        let octet = free_octet()?;
        let bridge = format!("sdb{tag}");
        let mut net = Net {
            tag,
            octet,
            bridge,
            namespaces: Vec::new(),
            host_veths: Vec::new(),
            iptables: tools.iptables,
        };
        let cidr = format!("{}/24", net.host_ip());
        run_sync(&["ip", "link", "add", &net.bridge, "type", "bridge"])?;
        run_sync(&["ip", "addr", "add", &cidr, "dev", &net.bridge])?;
        run_sync(&["ip", "link", "set", &net.bridge, "up"])?;
        for i in 0..nodes {
            net.add_node(i)?;
        }
        Ok(net)
    }

    fn add_node(&mut self, i: usize) -> Result<(), String> {
        let ns = format!("sdht-{}-{i}", self.tag);
        let host = format!("sdh{}n{i}", self.tag);
        let peer = format!("sdp{}n{i}", self.tag);
        assert!(host.len() <= IFNAMSIZ_CHARS && peer.len() <= IFNAMSIZ_CHARS, "{host}: name too long");
        run_sync(&["ip", "netns", "add", &ns])?;
        self.namespaces.push(ns.clone());
        run_sync(&["ip", "link", "add", &host, "type", "veth", "peer", "name", &peer])?;
        self.host_veths.push(host.clone());
        let cidr = format!("{}/24", self.ip(i));
        let steps: [&[&str]; 5] = [
            &["ip", "link", "set", &peer, "netns", &ns],
            &["ip", "link", "set", &host, "master", &self.bridge, "up"],
            &["ip", "-n", &ns, "link", "set", "lo", "up"],
            &["ip", "-n", &ns, "addr", "add", &cidr, "dev", &peer],
            &["ip", "-n", &ns, "link", "set", &peer, "up"],
        ];
        steps.iter().try_for_each(|args| run_sync(args).map(drop))
    }

    pub fn len(&self) -> usize {
        self.namespaces.len()
    }

    /// The bridge's address: the test process's side of the subnet.
    pub fn host_ip(&self) -> String {
        format!("{SUBNET_PREFIX}.{}.1", self.octet)
    }

    pub fn ip(&self, i: usize) -> String {
        format!("{SUBNET_PREFIX}.{}.{}", self.octet, NODE_HOST_BASE + i)
    }

    /// Node i's listening address, `IP:PORT`.
    pub fn addr(&self, i: usize) -> String {
        format!("{}:{NODE_PORT}", self.ip(i))
    }

    pub fn namespace(&self, i: usize) -> &str {
        &self.namespaces[i]
    }

    /// Cuts the link between nodes a and b, both directions: each drops what the other sends.
    pub async fn cut(&self, a: usize, b: usize) {
        self.iptables(a, &["-I", "INPUT", "-s", &self.ip(b), "-j", "DROP"]).await;
        self.iptables(b, &["-I", "INPUT", "-s", &self.ip(a), "-j", "DROP"]).await;
    }

    /// Makes the link between nodes a and b lose `probability` of its packets, each direction
    /// on its own: each node drops that share of what the other sends (the `statistic` match;
    /// the kernel may have no `sch_netem`), after a rule without target that counts them all.
    /// The clients' traffic (from the bridge's address) is untouched.
    pub async fn lossy(&self, a: usize, b: usize, probability: f64) {
        let p = probability.to_string();
        for (to, from) in [(a, b), (b, a)] {
            let src = self.ip(from);
            self.iptables(to, &["-A", "INPUT", "-s", &src]).await;
            let matches = ["-m", "statistic", "--mode", "random", "--probability", &p];
            let rule = [&["-A", "INPUT", "-s", &src][..], &matches, &["-j", "DROP"]].concat();
            self.iptables(to, &rule).await;
            // Packets that came between the two rules were counted but could not be dropped:
            // start both counters from zero now that both rules are in place.
            self.iptables(to, &["-Z", "INPUT"]).await;
        }
    }

    /// Node i's packet counters so far: (seen, dropped) — what the counting rules of its lossy
    /// links saw, and what its DROP rules (cut and lossy links alike) dropped.
    pub async fn link_counters(&self, i: usize) -> (u64, u64) {
        let table = self.iptables(i, &["-L", "INPUT", "-v", "-x", "-n"]).await;
        let (mut seen, mut dropped) = (0, 0);
        // "pkts bytes target prot opt in out source destination [match]"; no target: counting
        for words in table.lines().map(|l| l.split_whitespace().collect::<Vec<_>>()) {
            let Some(pkts) = words.first().and_then(|w| w.parse::<u64>().ok()) else { continue };
            match words.get(2) {
                Some(&"DROP") => dropped += pkts,
                _ => seen += pkts,
            }
        }
        (seen, dropped)
    }

    /// Removes every rule: all links are whole again.
    pub async fn heal(&self) {
        for i in 0..self.len() {
            self.iptables(i, &["-F", "INPUT"]).await;
        }
    }

    async fn iptables(&self, i: usize, rule: &[&str]) -> String {
        let mut args = vec!["ip", "netns", "exec", &self.namespaces[i], self.iptables, "-w"];
        args.extend_from_slice(rule);
        run(&args).await.unwrap_or_else(|e| panic!("harness: iptables in node {i}'s namespace: {e}"))
    }

    /// Checks with TCP probes that, among `nodes`, node a reaches node b exactly when the pair
    /// is not in `cut` (in either order), and that the test process reaches every one of them.
    pub async fn check_links(&self, nodes: &[usize], cut: &[(usize, usize)]) -> Result<(), String> {
        let mut probes = tokio::task::JoinSet::new();
        for &b in nodes {
            let addr = self.addr(b);
            probes.spawn(async move { (None, b, host_reaches(&addr).await) });
            for &a in nodes.iter().filter(|&&a| a != b) {
                let (ns, ip) = (self.namespaces[a].clone(), self.ip(b));
                probes.spawn(async move { (Some(a), b, ns_reaches(&ns, &ip).await) });
            }
        }
        let is_cut = |a, b| cut.iter().any(|&(x, y)| (x, y) == (a, b) || (y, x) == (a, b));
        let mut wrong = Vec::new();
        while let Some(probe) = probes.join_next().await {
            let (from, to, reached) = probe.expect("probe task");
            let want = match from {
                None => true,
                Some(a) => !is_cut(a, to),
            };
            if reached != want {
                let from = from.map_or("the test process".to_string(), |a| format!("node {a}"));
                wrong.push(format!(
                    "{from} {} node {to}",
                    if reached { "reaches cut" } else { "cannot reach" }
                ));
            }
        }
        wrong.sort();
        if wrong.is_empty() {
            Ok(())
        } else {
            Err(wrong.join("; "))
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Deleting one end of a veth pair deletes both; namespaces go after their links.
        for veth in &self.host_veths {
            let _ = run_sync(&["ip", "link", "del", veth]);
        }
        for ns in &self.namespaces {
            let _ = run_sync(&["ip", "netns", "del", ns]);
        }
        let _ = run_sync(&["ip", "link", "del", &self.bridge]);
    }
}

/// A third octet whose 10.213.X.0/24 no interface on this machine uses yet.
fn free_octet() -> Result<u16, String> {
    let used = run_sync(&["ip", "-o", "-4", "addr", "show"])?;
    let span = OCTETS.end() - OCTETS.start() + 1;
    let first = (std::process::id() as u16).wrapping_add(RUN_COUNTER.load(Ordering::Relaxed) as u16);
    (0..span)
        .map(|k| OCTETS.start() + (first.wrapping_add(k)) % span)
        .find(|x| !used.contains(&format!(" {SUBNET_PREFIX}.{x}.")))
        .ok_or_else(|| format!("every {SUBNET_PREFIX}.X.0/24 subnet is in use"))
}

/// What may drop traffic between two ports of the test bridge: with br_netfilter loaded and
/// `bridge-nf-call-iptables` on, bridged packets cross the root namespace's FORWARD chain
/// (Docker, for one, sets its policy to DROP).
fn bridge_filter() -> String {
    let sysctl = std::fs::read_to_string("/proc/sys/net/bridge/bridge-nf-call-iptables");
    let sysctl = sysctl
        .map_or("br_netfilter not loaded".into(), |v| format!("bridge-nf-call-iptables = {}", v.trim()));
    let forward = run_sync(&["iptables", "-S", "FORWARD"]).unwrap_or_else(|e| e);
    let policy = forward.lines().next().unwrap_or("unknown FORWARD policy");
    format!("{sysctl}, root namespace: {policy} (bridged packets must be accepted there)")
}

/// True if a TCP connection from namespace `ns` to `ip:NODE_PORT` opens in time.
async fn ns_reaches(ns: &str, ip: &str) -> bool {
    let script = format!("exec 3<>/dev/tcp/{ip}/{NODE_PORT}");
    let child = Command::new("ip")
        .args(["netns", "exec", ns, "bash", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn();
    let Ok(mut child) = child else { return false };
    matches!(tokio::time::timeout(PROBE_TIMEOUT, child.wait()).await, Ok(Ok(s)) if s.success())
}

/// True if the test process can open a TCP connection to `addr` in time.
async fn host_reaches(addr: &str) -> bool {
    matches!(tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(addr)).await, Ok(Ok(_)))
}

/// `sdht serve` processes, node i in namespace i of `net`, sharing one cluster key; their data
/// and logs live in one temporary directory. Dropping it kills the nodes, then removes the
/// network and the directory.
pub struct Cluster {
    /// Node i listens on `net.addr(i)`.
    pub nodes: Vec<NodeProc>,
    pub net: Net,
    dir: Option<tempfile::TempDir>,
    key_file: PathBuf,
    extra: Vec<String>,
}

impl Cluster {
    /// Builds the network and starts `n` nodes (`extra`: more `serve` flags), node 0 first,
    /// the others joining through it. Does not wait for the ring to settle.
    pub async fn start(tools: Tools, n: usize, extra: &[&str]) -> Cluster {
        let net = Net::create(tools, n).unwrap_or_else(|e| panic!("harness: building the test network: {e}"));
        let dir = tempfile::Builder::new().prefix("sdht-partition-").tempdir().expect("temporary directory");
        let key_file = dir.path().join("cluster.key");
        write_cluster_key(&key_file);
        let extra = extra.iter().map(|s| s.to_string()).collect();
        let mut cluster = Cluster { nodes: Vec::new(), net, dir: Some(dir), key_file, extra };
        for i in 0..n {
            let node = cluster.spawn(i, (i > 0).then_some(0)).await;
            cluster.nodes.push(node);
            if i == 0 && n > 1 && !ns_reaches(cluster.net.namespace(1), &cluster.net.ip(0)).await {
                panic!(
                    "harness: node 1's namespace cannot reach node 0 over the bridge; {}",
                    bridge_filter()
                );
            }
        }
        cluster
    }

    pub fn addrs(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.addr.clone()).collect()
    }

    fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.as_ref().expect("temporary directory").path().join(format!("node{i}"))
    }

    pub fn log_path(&self, i: usize) -> PathBuf {
        self.data_dir(i).with_extension("log")
    }

    /// Starts node i in its namespace (on its data dir, which may hold an earlier run's data)
    /// and waits for its listening line.
    pub async fn spawn(&self, i: usize, bootstrap: Option<usize>) -> NodeProc {
        let (data, log) = (self.data_dir(i), self.log_path(i));
        let log_file = std::fs::File::options().create(true).append(true).open(&log).expect("log file");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.net.namespace(i), env!("CARGO_BIN_EXE_sdht"), "serve"])
            .args(["--listen", &self.net.addr(i), "--data"])
            .arg(&data)
            .arg("--cluster-key-file")
            .arg(&self.key_file)
            .arg("--id-from-address")
            .args(&self.extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .kill_on_drop(true);
        if let Some(b) = bootstrap {
            cmd.args(["--bootstrap", &self.net.addr(b)]);
        }
        let mut child = cmd.spawn().expect("start sdht in its namespace");
        let line = listening_line(&mut child, &log).await;
        // "sdht listening on ADDR id=HEX"
        let mut words = line.split_whitespace().skip(3);
        let addr = words.next().unwrap_or_default().to_string();
        assert_eq!(addr, self.net.addr(i), "node {i} listens on another address: {line}");
        let id = words.next().and_then(|w| sdht::ring::Id::from_hex(w.trim_start_matches("id=")));
        let id = id.unwrap_or_else(|| panic!("node {i}: no id in {line:?}"));
        NodeProc { addr, id, child, data, _dir: None }
    }

    /// SIGKILLs node i and waits until it has exited; its data dir stays.
    pub async fn kill(&mut self, i: usize) {
        let child = &mut self.nodes[i].child;
        child.start_kill().expect("SIGKILL");
        tokio::time::timeout(REAP_TIMEOUT, child.wait()).await.expect("killed node exits").expect("wait");
    }

    /// Starts node i again on the same address and data, joining through `bootstrap`.
    pub async fn restart(&mut self, i: usize, bootstrap: usize) {
        self.nodes[i] = self.spawn(i, Some(bootstrap)).await;
    }

    fn print_logs(&self) {
        for i in 0..self.net.len() {
            let path = self.log_path(i);
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
            eprintln!(
                "---- node {i} ({}) log {} (last {} lines)",
                self.net.addr(i),
                path.display(),
                tail.len()
            );
            for line in tail {
                eprintln!("  {line}");
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let failed = std::thread::panicking();
        for node in &mut self.nodes {
            let _ = node.child.start_kill();
        }
        let deadline = Instant::now() + REAP_TIMEOUT;
        while self.nodes.iter_mut().any(|n| matches!(n.child.try_wait(), Ok(None)))
            && Instant::now() < deadline
        {
            std::thread::sleep(REAP_POLL);
        }
        if failed {
            self.print_logs();
            if std::env::var_os(KEEP_ENV).is_some() {
                let kept = self.dir.take().map(|d| d.keep());
                eprintln!("kept data and logs in {kept:?} ({KEEP_ENV} is set)");
            } else {
                eprintln!("(set {KEEP_ENV}=1 to keep the nodes' data and logs)");
            }
        }
    }
}

/// Reads a node's first stdout line, `sdht listening on ADDR id=HEX`; panics with the log
/// path if the node exits or stays silent.
async fn listening_line(child: &mut Child, log: &Path) -> String {
    let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
    let line = tokio::time::timeout(START_TIMEOUT, lines.next_line()).await;
    let line = line.unwrap_or_else(|_| {
        panic!("node printed no listening line in {START_TIMEOUT:?}; see {}", log.display())
    });
    line.ok().flatten().unwrap_or_else(|| panic!("node exited before listening; see {}", log.display()))
}

fn write_cluster_key(path: &Path) {
    let mut rng = rand::rng();
    let key: String = (0..CLUSTER_KEY_BYTES).map(|_| format!("{:02x}", rng.random::<u8>())).collect();
    std::fs::write(path, key).expect("write the cluster key");
}

/// Namespaces and interfaces named by this process that still exist: none once every
/// [`Net`] is dropped.
pub fn leftovers() -> Vec<String> {
    let tag = format!("{:x}x", std::process::id());
    let namespaces = run_sync(&["ip", "netns", "list"]).unwrap_or_default();
    let links = run_sync(&["ip", "-o", "link", "show"]).unwrap_or_default();
    let ns_names = namespaces.lines().filter_map(|l| l.split_whitespace().next());
    let link_names = links.lines().filter_map(|l| l.split(": ").nth(1)).filter_map(|n| n.split('@').next());
    let ours = |name: &&str| {
        name.starts_with(&format!("sdht-{tag}"))
            || ["sdb", "sdh", "sdp"].iter().any(|p| name.starts_with(&format!("{p}{tag}")))
    };
    ns_names.chain(link_names).filter(ours).map(str::to_string).collect()
}
