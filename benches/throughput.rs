//! Requests per second with 64 concurrent keep-alive connections, 100-byte values: one node
//! (GET, PUT) and a 4-node ring (load spread over all entry nodes), each against the bare
//! hyper baseline measured in the same run with the same load generator.
//!
//! `cargo bench --bench throughput`; `SDHT_BENCH_QUICK=1` for 1-second runs. A plain harness:
//! throughput under concurrency is not what criterion's per-iteration timing measures. The
//! table is printed and written to target/sdht-bench/throughput.md.

mod common;

use std::fmt::Write as _;
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

/// Concurrent keep-alive connections of the load generator.
const CONNECTIONS: usize = 64;
/// Keys preloaded for GETs, and the key space PUTs write into.
const KEYS: usize = 10_000;
const VALUE: usize = 100;

/// Runs `CONNECTIONS` connections against `addrs` (connection i to addrs[i % len]) for
/// `secs`, each sending `method` requests on random keys back to back; returns requests/s
/// answered with `want` status.
async fn load(addrs: &[String], method: Method, want: u16, secs: Duration) -> f64 {
    let ok = Arc::new(AtomicU64::new(0));
    let bad = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + secs;
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..CONNECTIONS {
        let addr = addrs[c % addrs.len()].clone();
        let (ok, bad, method) = (ok.clone(), bad.clone(), method.clone());
        tasks.spawn(async move {
            let stream = TcpStream::connect(&addr).await.unwrap();
            stream.set_nodelay(true).unwrap();
            let (mut send, conn) = http1::handshake(TokioIo::new(stream)).await.unwrap();
            tokio::spawn(conn);
            let mut rng = rand::rngs::StdRng::seed_from_u64(c as u64);
            let value = Bytes::from(vec![b'v'; VALUE]);
            while Instant::now() < deadline {
                let key = rng.random_range(0..KEYS);
                let body = if method == Method::PUT { value.clone() } else { Bytes::new() };
                let req = hyper::Request::builder()
                    .method(method.clone())
                    .uri(format!("/kv/key-{key}"))
                    .header("host", &addr)
                    .body(Full::new(body))
                    .unwrap();
                let resp = send.send_request(req).await.unwrap();
                let status = resp.status().as_u16();
                let _ = resp.into_body().collect().await;
                if status == want {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    bad.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    assert_eq!(bad.load(Ordering::Relaxed), 0, "requests failed");
    ok.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let secs = if common::quick() { Duration::from_secs(1) } else { Duration::from_secs(5) };
    let mut md = String::new();
    writeln!(md, "| target | GET req/s | GET / baseline | PUT req/s | PUT / baseline |").unwrap();
    writeln!(md, "|---|---|---|---|---|").unwrap();

    let rt = common::runtime();
    let base = rt.block_on(async {
        let addr = common::bare_server().await;
        let addrs = vec![addr];
        let get = load(&addrs, Method::GET, 200, secs).await;
        let put = load(&addrs, Method::PUT, 200, secs).await;
        (get, put)
    });
    writeln!(md, "| bare hyper (baseline) | {:.0} | 1.00 | {:.0} | 1.00 |", base.0, base.1).unwrap();
    println!("baseline: GET {:.0}/s PUT {:.0}/s", base.0, base.1);
    drop(rt);

    for n in [1usize, 4] {
        let rt = common::runtime();
        let (ring, get, put) = rt.block_on(async {
            let ring = common::start_ring(n).await;
            common::preload(&ring, KEYS, VALUE).await;
            let get = load(&ring.addrs, Method::GET, 200, secs).await;
            let put = load(&ring.addrs, Method::PUT, 204, secs).await;
            (ring, get, put)
        });
        let name = if n == 1 { "sdht, 1 node".to_string() } else { format!("sdht, {n}-node ring") };
        println!("{name}: GET {get:.0}/s PUT {put:.0}/s");
        writeln!(md, "| {name} | {get:.0} | {:.2} | {put:.0} | {:.2} |", get / base.0, put / base.1).unwrap();
        rt.shutdown_timeout(Duration::from_secs(1));
        drop(ring);
    }
    println!("\n{md}");
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/sdht-bench");
    let _ = std::fs::create_dir_all(&out);
    let _ = std::fs::write(out.join("throughput.md"), &md);
    common::client_load::run(secs);
}
