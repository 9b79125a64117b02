//! The client library's targets (issue 12): a warm `sdht::Client` on a stable 4-node ring,
//! 64 concurrent tasks sharing it, against the same load sent to random nodes through the
//! per-node layer (the same connection pool, no owner cache). Mean hops from `x-sdht-hops`.
//! Printed, and written to target/sdht-bench/client.md.
//!
//! Owns: this measurement only; called with one line from the throughput bench's `main`.
//! Left out: the corrections after a join or a leave (asserted by tests/client.rs).

#![allow(dead_code)]

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use sdht::client::{NodeClient, Op};
use sdht::Client;

/// Concurrent tasks sharing one client.
const TASKS: usize = 64;
/// Keys preloaded and read.
const KEYS: usize = 10_000;
const VALUE: usize = 100;
/// Targets from the issue.
const MAX_MEAN_HOPS: f64 = 0.05;
const MIN_GET_RATIO: f64 = 2.0;

/// GETs answered per second and mean hops over `secs`.
struct Figures {
    per_sec: f64,
    mean_hops: f64,
}

/// Runs `TASKS` tasks for `secs`, each sending GETs for random keys through `get`, which
/// returns the answer's hops.
async fn load<F, Fut>(secs: Duration, get: F) -> Figures
where
    F: Fn(usize, String) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = u32> + Send,
{
    let (done, hops) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..TASKS {
        let (done, hops, get) = (done.clone(), hops.clone(), get.clone());
        tasks.spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(t as u64);
            while start.elapsed() < secs {
                let key = format!("key-{}", rng.random_range(0..KEYS));
                let h = get(rng.random_range(0..usize::MAX), key).await;
                hops.fetch_add(u64::from(h), Ordering::Relaxed);
                done.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let n = done.load(Ordering::Relaxed) as f64;
    Figures { per_sec: n / start.elapsed().as_secs_f64(), mean_hops: hops.load(Ordering::Relaxed) as f64 / n }
}

/// Measures, prints and writes the figures; panics if a GET fails.
pub fn run(secs: Duration) {
    let rt = super::runtime();
    let (random, cached) = rt.block_on(async {
        let ring = super::start_ring(4).await;
        super::preload(&ring, KEYS, VALUE).await;
        let nodes = NodeClient::new();
        let addrs = Arc::new(ring.addrs.clone());
        let random = load(secs, move |r, key| {
            let (nodes, addrs) = (nodes.clone(), addrs.clone());
            async move {
                let a = nodes.get(&addrs[r % addrs.len()], &key).await.unwrap();
                assert_eq!(a.status, 200);
                a.hops.unwrap_or(0)
            }
        })
        .await;
        let client = Client::new(ring.addrs.clone()).unwrap();
        client.ring().await.unwrap();
        let cached = load(secs, move |_, key| {
            let client = client.clone();
            async move {
                let a = client.request(&key, Op::Get).await.unwrap();
                assert!(a.value.is_some());
                a.hops
            }
        })
        .await;
        drop(ring);
        (random, cached)
    });
    rt.shutdown_timeout(Duration::from_secs(1));
    report(&random, &cached);
}

fn report(random: &Figures, cached: &Figures) {
    let ratio = cached.per_sec / random.per_sec;
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    let mut md = String::new();
    writeln!(md, "| 4-node ring, {TASKS} tasks, GET | req/s | mean hops |").unwrap();
    writeln!(md, "|---|---|---|").unwrap();
    writeln!(md, "| random entry node, no cache | {:.0} | {:.3} |", random.per_sec, random.mean_hops)
        .unwrap();
    writeln!(md, "| warm `sdht::Client` | {:.0} | {:.3} |", cached.per_sec, cached.mean_hops).unwrap();
    writeln!(md).unwrap();
    writeln!(
        md,
        "GET ratio {ratio:.2}x (target >= {MIN_GET_RATIO}x: {}); mean hops {:.3} (target <= {MAX_MEAN_HOPS}: {})",
        verdict(ratio >= MIN_GET_RATIO),
        cached.mean_hops,
        verdict(cached.mean_hops <= MAX_MEAN_HOPS)
    )
    .unwrap();
    println!("\nclient library:\n{md}");
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/sdht-bench");
    let _ = std::fs::create_dir_all(&out);
    let _ = std::fs::write(out.join("client.md"), &md);
}
