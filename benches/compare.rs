//! Replicated writes against consensus, in one run, with one load generator: a bare hyper
//! server (the floor), sdht as real processes (1 node, and a 3-node ring with R = 3) and, when
//! Debian's `etcd` binary is installed, etcd (1 node and a 3-node cluster, which also waits
//! for durable commits on a majority). 64 keep-alive connections, 100-byte values, 10,000
//! keys; one table of requests/s, p50, p99 and errors for GET and PUT.
//!
//! Then one client writing in sequence (1 connection) on 1 node and on the 3-node ring, and the
//! single node's physical limit: connections divided by the latency of one durable LMDB commit
//! measured here.
//!
//! `cargo bench --bench compare`; `SDHT_BENCH_QUICK=1` for 1-second runs. The table is printed
//! and written to target/sdht-bench/compare.md. Left out: anything but loopback.

mod common;

use std::fmt::Write as _;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper::Method;
use hyper_util::rt::TokioIo;
use rand::{Rng, SeedableRng};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// Concurrent keep-alive connections of the load generator.
const CONNECTIONS: usize = 64;
/// Keys preloaded for GETs, and the key space PUTs write into.
const KEYS: usize = 10_000;
const VALUE: usize = 100;
/// The longest a server may take to start and form its cluster.
const START_DEADLINE: Duration = Duration::from_secs(60);

/// What a target speaks.
#[derive(Clone, Copy, PartialEq)]
enum Api {
    Bare,
    Sdht,
    Etcd,
}

/// Servers under test: their client addresses, and the processes and directories that end
/// with them.
struct Target {
    name: String,
    api: Api,
    addrs: Vec<String>,
    _procs: Vec<Child>,
    _dir: Option<tempfile::TempDir>,
}

/// The request for key `k`: (method, path, body).
fn request(api: Api, method: &Method, k: usize) -> (Method, String, Bytes) {
    let key = format!("key-{k}");
    let value = vec![b'v'; VALUE];
    match (api, method == Method::PUT) {
        (Api::Etcd, true) => {
            let body = format!(r#"{{"key":"{}","value":"{}"}}"#, b64(key.as_bytes()), b64(&value));
            (Method::POST, "/v3/kv/put".into(), Bytes::from(body))
        }
        (Api::Etcd, false) => {
            let body = format!(r#"{{"key":"{}"}}"#, b64(key.as_bytes()));
            (Method::POST, "/v3/kv/range".into(), Bytes::from(body))
        }
        (_, true) => (Method::PUT, format!("/kv/{key}"), Bytes::from(value)),
        (_, false) => (Method::GET, format!("/kv/{key}"), Bytes::new()),
    }
}

/// Standard base64 with padding (etcd's JSON gateway takes keys and values so).
fn b64(data: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = (c[0] as u32) << 16 | (*c.get(1).unwrap_or(&0) as u32) << 8 | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// One load run's results.
#[derive(Default)]
struct Run {
    per_sec: f64,
    p50: Duration,
    p99: Duration,
    errors: u64,
}

impl Run {
    /// From the latencies of the requests answered in `elapsed`.
    fn new(mut lat: Vec<Duration>, elapsed: Duration, errors: u64) -> Run {
        lat.sort();
        let at =
            |q: f64| lat.get(((lat.len() as f64 * q) as usize).min(lat.len().saturating_sub(1))).copied();
        Run {
            per_sec: lat.len() as f64 / elapsed.as_secs_f64(),
            p50: at(0.50).unwrap_or_default(),
            p99: at(0.99).unwrap_or_default(),
            errors,
        }
    }
}

/// Which keys a connection asks for: random, or (to preload) its own share in order.
#[derive(Clone, Copy)]
enum Keys {
    Random,
    Preload,
}

/// Runs `conns` keep-alive connections against the target (connection i to addrs[i % len])
/// for `secs` (or, preloading, until every key is written once), each sending requests back
/// to back.
async fn load(t: &Target, method: Method, conns: usize, secs: Duration, keys: Keys) -> Run {
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..conns {
        let (addr, api, method, errors) =
            (t.addrs[c % t.addrs.len()].clone(), t.api, method.clone(), errors.clone());
        tasks.spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(c as u64);
            let mut next = c;
            let mut lat = Vec::new();
            let mut conn = connect(&addr).await;
            while start.elapsed() < secs {
                let k = match keys {
                    Keys::Random => rng.random_range(0..KEYS),
                    Keys::Preload if next < KEYS => {
                        next += conns;
                        next - conns
                    }
                    Keys::Preload => break,
                };
                let sent = Instant::now();
                match send(&mut conn, &addr, request(api, &method, k)).await {
                    Ok(true) => lat.push(sent.elapsed()),
                    Ok(false) => _ = errors.fetch_add(1, Ordering::Relaxed),
                    Err(()) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        conn = connect(&addr).await;
                    }
                }
            }
            lat
        });
    }
    let mut lat: Vec<Duration> = Vec::new();
    while let Some(r) = tasks.join_next().await {
        lat.extend(r.unwrap());
    }
    Run::new(lat, start.elapsed(), errors.load(Ordering::Relaxed))
}

type Sender = http1::SendRequest<Full<Bytes>>;

async fn connect(addr: &str) -> Sender {
    let stream = TcpStream::connect(addr).await.expect("connect");
    stream.set_nodelay(true).unwrap();
    let (send, conn) = http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    send
}

/// One request; Ok(true) for a 2xx answer, Err when the connection broke.
async fn send(
    conn: &mut Sender,
    addr: &str,
    (method, path, body): (Method, String, Bytes),
) -> Result<bool, ()> {
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr)
        .header("content-type", "application/json")
        .body(Full::new(body))
        .unwrap();
    let resp = conn.send_request(req).await.map_err(|_| ())?;
    let ok = resp.status().is_success();
    resp.into_body().collect().await.map_err(|_| ())?;
    Ok(ok)
}

/// Starts `n` sdht processes, the first alone and the others joining through it (R = 3), and
/// waits until the ring is whole.
async fn sdht(n: usize) -> Target {
    let dir = tempfile::tempdir().unwrap();
    let mut procs = Vec::new();
    let mut addrs: Vec<String> = Vec::new();
    for i in 0..n {
        let data = dir.path().join(format!("n{i}"));
        let (child, addr) = common::spawn_sdht(&data, addrs.first().map(String::as_str), &[]).await;
        addrs.push(addr);
        procs.push(child);
    }
    let client = sdht::client::NodeClient::new();
    let deadline = Instant::now() + START_DEADLINE;
    loop {
        let ring = client.json(&addrs[0], "/ring").await;
        if ring.is_ok_and(|r| r["complete"] == true && r["nodes"].as_array().map_or(0, Vec::len) == n) {
            break;
        }
        assert!(Instant::now() < deadline, "sdht ring of {n} did not form");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let name = if n == 1 { "sdht, 1 node".into() } else { format!("sdht, {n}-node ring, R = 3") };
    Target { name, api: Api::Sdht, addrs, _procs: procs, _dir: Some(dir) }
}

/// A port free now (etcd takes ports, not port 0).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Starts an etcd cluster of `n` members on loopback, or None when etcd is not installed.
async fn etcd(n: usize) -> Option<Target> {
    let bin = std::env::var("SDHT_ETCD").unwrap_or_else(|_| "etcd".into());
    if std::process::Command::new(&bin).arg("--version").output().is_err() {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
    let cluster: Vec<String> =
        ports.iter().enumerate().map(|(i, p)| format!("e{i}=http://127.0.0.1:{}", p.1)).collect();
    let mut procs = Vec::new();
    for (i, (client, peer)) in ports.iter().enumerate() {
        let mut cmd = Command::new(&bin);
        cmd.arg(format!("--name=e{i}"))
            .arg(format!("--data-dir={}", dir.path().join(format!("e{i}")).display()))
            .arg(format!("--listen-client-urls=http://127.0.0.1:{client}"))
            .arg(format!("--advertise-client-urls=http://127.0.0.1:{client}"))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"))
            .arg(format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"))
            .arg(format!("--initial-cluster={}", cluster.join(",")))
            .args(["--initial-cluster-state=new", "--log-level=error"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join(format!("e{i}.log"))).unwrap())
            .kill_on_drop(true);
        procs.push(cmd.spawn().expect("start etcd"));
    }
    let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{}", p.0)).collect();
    let client = sdht::client::NodeClient::new();
    let deadline = Instant::now() + START_DEADLINE;
    for a in &addrs {
        while !client.json(a, "/health").await.is_ok_and(|h| h["health"] == "true") {
            assert!(Instant::now() < deadline, "etcd cluster of {n} did not become healthy");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let name = if n == 1 { "etcd, 1 node".into() } else { format!("etcd, {n}-node cluster") };
    Some(Target { name, api: Api::Etcd, addrs, _procs: procs, _dir: Some(dir) })
}

/// The mean latency of one durable LMDB commit of one 100-byte record into a store of
/// `KEYS` records, on the file system the nodes use, with `stores` stores committing at once
/// (3: the ring's three nodes, whose commits share this machine's one disk).
fn commit_latency(stores: usize) -> Duration {
    let n = if common::quick() { 200 } else { 1000 };
    let dirs: Vec<_> = (0..stores).map(|_| tempfile::tempdir().unwrap()).collect();
    let timings: Vec<Duration> = std::thread::scope(|s| {
        let threads: Vec<_> = dirs
            .iter()
            .map(|dir| {
                s.spawn(move || {
                    let store = sdht::lmdb::Store::open(dir.path()).unwrap();
                    let put = |i: usize, v: u64| sdht::lmdb::Write::Put {
                        id: sdht::ring::key_id(format!("key-{i}").as_bytes()).0,
                        key: format!("key-{i}").into_bytes(),
                        value: vec![b'v'; VALUE],
                        version: v,
                    };
                    store.apply(&(0..KEYS).map(|i| put(i, 1)).collect::<Vec<_>>()).unwrap();
                    let start = Instant::now();
                    for i in 0..n {
                        store.apply(&[put(i * 7919 % KEYS, 2 + i as u64)]).unwrap();
                    }
                    start.elapsed() / n as u32
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    timings.iter().sum::<Duration>() / stores as u32
}

fn row(md: &mut String, name: &str, get: &Run, put: &Run) {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let line = format!(
        "| {name} | {:.0} | {:.2} / {:.2} | {} | {:.0} | {:.2} / {:.2} | {} |",
        get.per_sec,
        ms(get.p50),
        ms(get.p99),
        get.errors,
        put.per_sec,
        ms(put.p50),
        ms(put.p99),
        put.errors
    );
    println!("{line}");
    writeln!(md, "{line}").unwrap();
}

/// GET and PUT runs against one target (after writing every key once, for the GETs).
async fn measure(t: &Target, secs: Duration) -> (Run, Run) {
    load(t, Method::PUT, CONNECTIONS, START_DEADLINE, Keys::Preload).await;
    let get = load(t, Method::GET, CONNECTIONS, secs, Keys::Random).await;
    let put = load(t, Method::PUT, CONNECTIONS, secs, Keys::Random).await;
    (get, put)
}

/// A measured target's name and runs; `one` is the single sequential client (sdht only).
struct Measured {
    name: String,
    get: Run,
    put: Run,
    one: Option<Run>,
    /// The single sequential client again, through `sdht::Client` (straight to the owner).
    owner: Option<Run>,
}

fn main() {
    let secs = if common::quick() { Duration::from_secs(1) } else { Duration::from_secs(5) };
    let rt = common::runtime();
    let md = rt.block_on(async {
        let mut md = String::new();
        writeln!(
            md,
            "| target | GET/s | GET p50 / p99 ms | GET errors | PUT/s | PUT p50 / p99 ms | PUT errors |"
        )
        .unwrap();
        writeln!(md, "|---|---|---|---|---|---|---|").unwrap();
        let bare = Target {
            name: "bare hyper (floor)".into(),
            api: Api::Bare,
            addrs: vec![common::bare_server().await],
            _procs: vec![],
            _dir: None,
        };
        let mut all = vec![run_target(&mut md, &bare, secs, false).await];
        for n in [1, 3] {
            all.push(run_target(&mut md, &sdht(n).await, secs, true).await);
        }
        for n in [1, 3] {
            match etcd(n).await {
                Some(t) => all.push(run_target(&mut md, &t, secs, false).await),
                None => {
                    println!("etcd, {n}: skipped, no etcd binary (apt-get install etcd-server)");
                    writeln!(md, "| etcd, {n} | skipped: no etcd binary | | | | | |").unwrap();
                }
            }
        }
        summary(&mut md, &all);
        md
    });
    rt.shutdown_timeout(Duration::from_secs(1));
    println!("\n{md}");
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/sdht-bench");
    let _ = std::fs::create_dir_all(&out);
    let _ = std::fs::write(out.join("compare.md"), &md);
}

/// Measures one target, prints and records its row; with `one`, also a single sequential client.
async fn run_target(md: &mut String, t: &Target, secs: Duration, one: bool) -> Measured {
    let (get, put) = measure(t, secs).await;
    row(md, &t.name, &get, &put);
    let (one, owner) = if one {
        (Some(load(t, Method::PUT, 1, secs, Keys::Random).await), Some(sequential_client(t, secs).await))
    } else {
        (None, None)
    };
    Measured { name: t.name.clone(), get, put, one, owner }
}

/// One `sdht::Client` writing in sequence, warmed by a `/ring` walk so it goes straight to
/// each key's owner.
async fn sequential_client(t: &Target, secs: Duration) -> Run {
    let client = sdht::Client::new(t.addrs.clone()).unwrap();
    client.ring().await.unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let (start, mut lat, mut errors, mut hops) = (Instant::now(), Vec::new(), 0, 0u64);
    while start.elapsed() < secs {
        let sent = Instant::now();
        let op = sdht::client::Op::Put(vec![b'v'; VALUE].into());
        match client.request(&format!("key-{}", rng.random_range(0..KEYS)), op).await {
            Ok(a) => {
                lat.push(sent.elapsed());
                hops += a.hops as u64;
            }
            Err(_) => errors += 1,
        }
    }
    println!(
        "{}: sdht::Client sequential PUT, mean hops {:.3}",
        t.name,
        hops as f64 / lat.len().max(1) as f64
    );
    Run::new(lat, start.elapsed(), errors)
}

/// The targets of the issue, as ratios measured in this run, and the 1-node physical limit.
fn summary(md: &mut String, all: &[Measured]) {
    let find = |prefix: &str| all.iter().find(|m| m.name.starts_with(prefix));
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    writeln!(md).unwrap();
    for m in all.iter().filter(|m| m.one.is_some()) {
        let one = m.one.as_ref().unwrap();
        writeln!(
            md,
            "- one client, sequential PUT, {}: mean {:.3} ms, p50 {:.3} ms",
            m.name,
            1e3 / one.per_sec,
            ms(one.p50)
        )
        .unwrap();
    }
    let (one_node, ring) = (find("sdht, 1"), find("sdht, 3"));
    if let (Some(a), Some(b)) = (one_node, ring) {
        let ratio = |f: fn(&Measured) -> &Option<Run>| {
            f(a).as_ref().unwrap().per_sec / f(b).as_ref().unwrap().per_sec
        };
        writeln!(
            md,
            "- sequential PUT latency, ring / 1 node: {:.2}x to any node, {:.2}x with sdht::Client (target at most 1.5x)",
            ratio(|m| &m.one),
            ratio(|m| &m.owner)
        )
        .unwrap();
    }
    if let (Some(r), Some(e)) = (ring, find("etcd, 3")) {
        writeln!(md, "- ring / 3-node etcd: PUT/s {:.2}x (target at least 2x), GET/s {:.2}x (target at least 3x), PUT p99 {:.2} vs {:.2} ms (target below)",
            r.put.per_sec / e.put.per_sec, r.get.per_sec / e.get.per_sec, ms(r.put.p99), ms(e.put.p99)).unwrap();
    }
    let (commit, three) = (commit_latency(1), commit_latency(3));
    let limit = CONNECTIONS as f64 / commit.as_secs_f64();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    writeln!(
        md,
        "- one durable LMDB commit: {:.0} µs alone, {:.0} µs with three stores committing at once on this disk; 1-node physical limit {CONNECTIONS} / commit = {limit:.0} PUT/s",
        us(commit),
        us(three)
    )
    .unwrap();
    if let Some(a) = one_node {
        writeln!(md, "- 1 node PUT: {:.0}/s = {:.2} of that limit", a.put.per_sec, a.put.per_sec / limit)
            .unwrap();
    }
}
