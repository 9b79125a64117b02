//! What the ring costs as it grows to hundreds of nodes.
//!
//! In process (real HTTP on loopback, one LMDB directory per node, one two-worker runtime):
//! for N = 64, 256 and 1024, one seed starts alone and the N-1 others join through it at once
//! (`--stabilize-ms 200`). Reported per N and id mode (balanced ids, and `--id-from-address`):
//! the time until one correct ring (every node's published successor and predecessor are its
//! neighbours in id order), idle calls per node per second and idle CPU per node (over 5 s,
//! after 2 s of quiet), memory per node (the process's RSS growth / N), hops and latency per
//! lookup (GETs of random keys through random nodes), and the balance: max/mean keys per node
//! for a uniform key set (100 keys per node, counted by owner from the ring's ids) and
//! max/mean range size.
//!
//! With `SDHT_SCALE_PROCS=64`: the same join as real `sdht serve` processes (the release
//! binary) instead: time to one correct ring, then idle CPU % and RSS per process from /proc.
//!
//! `cargo bench --bench scale` (a few minutes); `SDHT_BENCH_QUICK=1` for N = 16 and 64;
//! `SDHT_SCALE_N=256,1024` picks the sizes. The table goes to stdout and
//! target/sdht-bench/scale.md, the plot (join time and memory against N) to docs/scale.svg.

mod common;

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use rand::seq::IndexedRandom;
use rand::SeedableRng;
use sdht::client::NodeClient as Client;
use sdht::node::{serve, Config, Node};
use sdht::ring::{key_id, owner_of, Id};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The stabilize period of every run, as in the issue's measurements.
const STABILIZE: Duration = Duration::from_millis(200);
/// Longest wait for one correct ring before the run is reported as failed.
const FORM_DEADLINE: Duration = Duration::from_secs(180);
/// Quiet time after forming (replication pushes and back-off end) before idle is measured.
const QUIET: Duration = Duration::from_secs(2);
const IDLE_WINDOW: Duration = Duration::from_secs(5);
/// Uniform keys per node for the balance figures.
const KEYS_PER_NODE: usize = 100;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Ids {
    Balanced,
    FromAddress,
}

impl Ids {
    fn name(self) -> &'static str {
        match self {
            Ids::Balanced => "balanced",
            Ids::FromAddress => "from address",
        }
    }
}

#[derive(Clone, Debug, Default)]
struct Row {
    n: usize,
    ids: &'static str,
    join_s: f64,
    calls_per_node_s: f64,
    cpu_pct_per_node: f64,
    rss_mib_per_node: f64,
    hops: f64,
    latency_ms: f64,
    keys_max_mean: f64,
    range_max_mean: f64,
}

/// VmRSS of process `pid` ("self" for this one), in KiB.
fn rss_kib(pid: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// utime + stime of process `pid`, in clock ticks (100 a second on Linux).
fn cpu_ticks(pid: &str) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    num(11) + num(12)
}

const TICKS_PER_S: f64 = 100.0;

/// max/mean of keys owned per node (a uniform key set) and of range sizes, from sorted ids.
fn balance(ids: &[Id]) -> (f64, f64) {
    let n = ids.len();
    let mut owned = std::collections::HashMap::<Id, usize>::new();
    for i in 0..n * KEYS_PER_NODE {
        let k = key_id(format!("uniform-{i}").as_bytes());
        *owned.entry(owner_of(ids, k).unwrap()).or_default() += 1;
    }
    let keys_max = owned.values().copied().max().unwrap_or(0) as f64;
    let ranges = (0..n).map(|i| ids[(i + n - 1) % n].distance_to(ids[i]));
    let range_max = ranges.max().unwrap_or(0) as f64;
    let range_mean = if n == 1 { u64::MAX as f64 } else { 2f64.powi(64) / n as f64 };
    (keys_max / KEYS_PER_NODE as f64, range_max / range_mean)
}

struct InProcess {
    nodes: Vec<(String, Node)>,
    tokens: Vec<CancellationToken>,
    _dir: tempfile::TempDir,
}

fn config(addr: &str, dir: &std::path::Path, ids: Ids, bootstrap: Option<String>) -> Config {
    let mut config = Config::new(addr.to_string(), dir.join(addr.replace(':', "_")));
    config.bootstrap = bootstrap;
    config.stabilize_every = STABILIZE;
    // Successor-only routing takes N/2 hops on average: let lookups cross a ring of 1024.
    config.hop_limit = 4096;
    // Every node of the bench shares 127.0.0.1: the per-address connection cap is meant for
    // one client, not for a thousand peers behind one address.
    config.max_conns_per_client = 1024;
    config.id_from_address = ids == Ids::FromAddress;
    config
}

/// One seed, then N-1 nodes joining through it at once. Returns the nodes and the time from
/// the joins' start to one correct ring.
async fn form(n: usize, ids: Ids) -> (InProcess, Duration) {
    let dir = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let seed = listener.local_addr().unwrap().to_string();
    let node = Node::start(config(&seed, dir.path(), ids, None)).await.unwrap();
    let token = CancellationToken::new();
    tokio::spawn(serve(listener, node.clone(), token.clone()));
    let mut ring = InProcess { nodes: vec![(seed.clone(), node)], tokens: vec![token], _dir: dir };
    let mut joining = tokio::task::JoinSet::new();
    let start = Instant::now();
    for _ in 1..n {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let config = config(&addr, ring._dir.path(), ids, Some(seed.clone()));
        let token = CancellationToken::new();
        ring.tokens.push(token.clone());
        joining.spawn(async move {
            let node = Node::start(config).await.expect("join");
            tokio::spawn(serve(listener, node.clone(), token));
            (addr, node)
        });
    }
    while let Some(joined) = joining.join_next().await {
        ring.nodes.push(joined.unwrap());
    }
    while !ring.correct() {
        assert!(start.elapsed() < FORM_DEADLINE, "{n} nodes did not form one ring");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (ring, start.elapsed())
}

impl InProcess {
    fn sorted_ids(&self) -> Vec<Id> {
        let mut ids: Vec<Id> = self.nodes.iter().map(|(_, n)| n.me().id).collect();
        ids.sort();
        ids
    }

    /// Every node's published successor and predecessor are its neighbours in id order.
    fn correct(&self) -> bool {
        let mut views: Vec<_> = self.nodes.iter().map(|(_, n)| n.ring_view()).collect();
        views.sort_by_key(|v| v.me.id);
        let n = views.len();
        (0..n).all(|i| {
            let (v, next, prev) = (&views[i], &views[(i + 1) % n], &views[(i + n - 1) % n]);
            v.succ().id == next.me.id && (n == 1 || v.pred.as_ref().map(|p| p.id) == Some(prev.me.id))
        })
    }

    fn calls(&self) -> u64 {
        self.nodes.iter().map(|(_, n)| n.peer_calls()).sum()
    }

    /// Mean hops and latency of `count` GETs of random absent keys through random nodes (an
    /// absent key is routed to its owner like a present one).
    async fn lookups(&self, count: usize) -> (f64, f64) {
        let client = Client::new();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let addrs: Vec<&String> = self.nodes.iter().map(|(a, _)| a).collect();
        let (mut hops, mut took) = (0u64, Duration::ZERO);
        for i in 0..count {
            let node = addrs.choose(&mut rng).unwrap();
            let start = Instant::now();
            let a = client.get(node, &format!("absent-{i}")).await.unwrap();
            took += start.elapsed();
            assert_eq!(a.status, 404);
            hops += u64::from(a.hops.expect("x-sdht-hops"));
        }
        (hops as f64 / count as f64, took.as_secs_f64() * 1000.0 / count as f64)
    }
}

async fn measure(n: usize, ids: Ids) -> Row {
    let rss0 = rss_kib("self");
    let (ring, took) = form(n, ids).await;
    let fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count());
    println!(
        "  {n} nodes ({}): one correct ring after {:.2} s ({fds} open files)",
        ids.name(),
        took.as_secs_f64()
    );
    tokio::time::sleep(QUIET).await;
    let (calls0, cpu0) = (ring.calls(), cpu_ticks("self"));
    tokio::time::sleep(IDLE_WINDOW).await;
    let (calls1, cpu1) = (ring.calls(), cpu_ticks("self"));
    let rss = rss_kib("self").saturating_sub(rss0);
    let window = IDLE_WINDOW.as_secs_f64();
    let lookups = (64 * 1024 / n).clamp(50, 500);
    let (hops, latency_ms) = ring.lookups(lookups).await;
    let (keys_max_mean, range_max_mean) = balance(&ring.sorted_ids());
    let row = Row {
        n,
        ids: ids.name(),
        join_s: took.as_secs_f64(),
        calls_per_node_s: (calls1 - calls0) as f64 / n as f64 / window,
        cpu_pct_per_node: (cpu1 - cpu0) as f64 / TICKS_PER_S / window * 100.0 / n as f64,
        rss_mib_per_node: rss as f64 / 1024.0 / n as f64,
        hops,
        latency_ms,
        keys_max_mean,
        range_max_mean,
    };
    // No graceful leaves: the runtime is shut down under the nodes (like a power cut).
    drop(ring);
    println!("  {row:?}");
    row
}

fn sizes() -> Vec<usize> {
    if let Ok(list) = std::env::var("SDHT_SCALE_N") {
        return list.split(',').filter_map(|s| s.trim().parse().ok()).collect();
    }
    if common::quick() {
        vec![16, 64]
    } else {
        vec![64, 256, 1000]
    }
}

fn table(rows: &[Row]) -> String {
    let mut t = String::from(
        "| N | ids | one correct ring | idle calls/node/s | idle CPU/node | memory/node | hops/lookup | latency/lookup | max/mean keys | max/mean range |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let _ = writeln!(
            t,
            "| {} | {} | {:.2} s | {:.1} | {:.3} % | {:.2} MiB | {:.1} | {:.2} ms | {:.2} | {:.2} |",
            r.n,
            r.ids,
            r.join_s,
            r.calls_per_node_s,
            r.cpu_pct_per_node,
            r.rss_mib_per_node,
            r.hops,
            r.latency_ms,
            r.keys_max_mean,
            r.range_max_mean
        );
    }
    t
}

fn main() {
    if let Some(n) = std::env::var("SDHT_SCALE_PROCS").ok().and_then(|v| v.parse().ok()) {
        return procs::run(n);
    }
    let mut rows = Vec::new();
    for n in sizes() {
        for ids in [Ids::Balanced, Ids::FromAddress] {
            // A fresh runtime per run: nothing of one ring's tasks is left in the next.
            let rt = common::runtime();
            rows.push(rt.block_on(measure(n, ids)));
            rt.shutdown_timeout(Duration::from_secs(10));
        }
    }
    let t = table(&rows);
    println!("\n{t}");
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/sdht-bench");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("scale.md"), &t).unwrap();
    let balanced: Vec<&Row> = rows.iter().filter(|r| r.ids == Ids::Balanced.name()).collect();
    let svg = plot::svg(&balanced);
    std::fs::write(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/scale.svg"), svg).unwrap();
}

/// The plot: join time and memory per node against N, two panels, hand-drawn SVG.
mod plot {
    use super::Row;
    use std::fmt::Write as _;

    const W: f64 = 360.0;
    const H: f64 = 240.0;
    const PAD: f64 = 50.0;

    fn panel(out: &mut String, x0: f64, title: &str, unit: &str, points: &[(f64, f64)]) {
        let xmax = points.iter().map(|p| p.0.log2()).fold(1.0, f64::max);
        let xmin = points.iter().map(|p| p.0.log2()).fold(xmax, f64::min) - 0.5;
        let ymax = points.iter().map(|p| p.1).fold(0.0, f64::max) * 1.2 + 1e-9;
        let sx = |x: f64| x0 + PAD + (x.log2() - xmin) / (xmax + 0.5 - xmin) * (W - 1.5 * PAD);
        let sy = |y: f64| H - PAD + 10.0 - y / ymax * (H - 1.5 * PAD);
        let _ = write!(
            out,
            r#"<text x="{}" y="20" font-size="13" text-anchor="middle">{title}</text>"#,
            x0 + W / 2.0
        );
        let (bx, by) = (x0 + PAD, H - PAD + 10.0);
        let _ = write!(
            out,
            r#"<line x1="{bx}" y1="{by}" x2="{}" y2="{by}" stroke="black"/><line x1="{bx}" y1="{by}" x2="{bx}" y2="30" stroke="black"/>"#,
            x0 + W - PAD / 2.0
        );
        for k in 0..=4 {
            let y = ymax / 1.2 * k as f64 / 4.0;
            let _ = write!(
                out,
                r#"<text x="{}" y="{:.1}" font-size="10" text-anchor="end">{y:.1}</text>"#,
                bx - 4.0,
                sy(y) + 3.0
            );
        }
        let _ = write!(
            out,
            r#"<text x="{}" y="{}" font-size="10" text-anchor="middle">N (nodes, log scale); y: {unit}</text>"#,
            x0 + W / 2.0,
            H - 12.0
        );
        let path: Vec<String> = points.iter().map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y))).collect();
        let _ = write!(
            out,
            r#"<polyline fill="none" stroke="steelblue" stroke-width="2" points="{}"/>"#,
            path.join(" ")
        );
        for (x, y) in points {
            let _ = write!(
                out,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="steelblue"/><text x="{:.1}" y="{}" font-size="10" text-anchor="middle">{x}</text>"#,
                sx(*x),
                sy(*y),
                sx(*x),
                by + 14.0
            );
        }
    }

    pub fn svg(rows: &[&Row]) -> String {
        let mut out = format!(
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{H}" font-family="sans-serif">"#,
            2.0 * W
        );
        let join: Vec<(f64, f64)> = rows.iter().map(|r| (r.n as f64, r.join_s)).collect();
        let mem: Vec<(f64, f64)> = rows.iter().map(|r| (r.n as f64, r.rss_mib_per_node)).collect();
        panel(&mut out, 0.0, "time to one correct ring (all join at once)", "seconds", &join);
        panel(&mut out, W, "memory per node (RSS growth / N)", "MiB", &mem);
        out.push_str("</svg>\n");
        out
    }
}

/// Real processes: the release binary, one seed, every other node joining through it at once.
mod procs {
    use std::time::{Duration, Instant};

    use sdht::client::NodeClient as Client;
    use tokio::process::Child;

    struct Proc {
        child: Child,
        addr: String,
    }

    async fn spawn(dir: &std::path::Path, i: usize, bootstrap: Option<&str>) -> Proc {
        let data = dir.join(format!("n{i}"));
        let (child, addr) = super::common::spawn_sdht(&data, bootstrap, &["--stabilize-ms", "200"]).await;
        Proc { child, addr }
    }

    /// Every node's /status names its neighbours in id order as successor and predecessor.
    async fn correct(client: &Client, procs: &[Proc]) -> bool {
        let mut nodes = Vec::new();
        for p in procs {
            let Ok(s) = client.json(&p.addr, "/status").await else { return false };
            let id = s["id"].as_str().unwrap_or_default().to_string();
            let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
            nodes.push((id, p.addr.clone(), text(&s["successor"]), text(&s["predecessor"])));
        }
        nodes.sort();
        let n = nodes.len();
        (0..n).all(|i| nodes[i].2 == nodes[(i + 1) % n].1 && nodes[i].3 == nodes[(i + n - 1) % n].1)
    }

    pub fn run(n: usize) {
        common_rt().block_on(async move {
            let dir = tempfile::tempdir().unwrap();
            let seed = spawn(dir.path(), 0, None).await;
            let seed_addr = seed.addr.clone();
            let start = Instant::now();
            let joins = (1..n).map(|i| {
                let (dir, b) = (dir.path().to_path_buf(), seed_addr.clone());
                tokio::spawn(async move { spawn(&dir, i, Some(&b)).await })
            });
            let mut procs = vec![seed];
            for j in joins.collect::<Vec<_>>() {
                procs.push(j.await.unwrap());
            }
            let client = Client::new();
            while !correct(&client, &procs).await {
                assert!(start.elapsed() < super::FORM_DEADLINE, "no ring of {n} processes");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let took = start.elapsed().as_secs_f64();
            println!("{n} processes: one correct ring after {took:.2} s");
            idle(&procs).await;
            for p in &mut procs {
                let _ = p.child.start_kill();
                let _ = p.child.wait().await;
            }
        });
    }

    async fn idle(procs: &[Proc]) {
        tokio::time::sleep(super::QUIET).await;
        let pids: Vec<String> = procs.iter().map(|p| p.child.id().unwrap().to_string()).collect();
        let t0: u64 = pids.iter().map(|p| super::cpu_ticks(p)).sum();
        let window = Duration::from_secs(10);
        tokio::time::sleep(window).await;
        let t1: u64 = pids.iter().map(|p| super::cpu_ticks(p)).sum();
        let rss: Vec<u64> = pids.iter().map(|p| super::rss_kib(p)).collect();
        let cpu = (t1 - t0) as f64 / super::TICKS_PER_S / window.as_secs_f64() * 100.0 / pids.len() as f64;
        let mean = rss.iter().sum::<u64>() as f64 / rss.len() as f64 / 1024.0;
        let max = *rss.iter().max().unwrap() as f64 / 1024.0;
        println!("idle: CPU {cpu:.3} % per process; RSS mean {mean:.1} MiB, max {max:.1} MiB per process");
    }

    fn common_rt() -> tokio::runtime::Runtime {
        super::common::runtime()
    }
}
