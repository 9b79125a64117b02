//! What successor-only routing costs as the ring grows.
//!
//! For rings of N = 1..64 real nodes: hops per lookup as the nodes report them
//! (`x-sdht-hops`), reported through criterion with a custom "hops" measurement; wall time per
//! lookup; and the per-hop cost (slope of latency against mean hops across N), against a bare
//! hyper server's round trip measured in the same run through the same client.
//!
//! `cargo bench --bench hops` (full, a few minutes); `SDHT_BENCH_QUICK=1` for N <= 8.
//! The summary table is printed and written to target/sdht-bench/hops.md, the plot to
//! target/sdht-bench/hops.svg.

mod common;

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use criterion::measurement::{Measurement, ValueFormatter};
use criterion::{BenchmarkId, Criterion, Throughput};
use rand::seq::IndexedRandom;
use rand::SeedableRng;
use sdht::client::NodeClient as Client;

/// Criterion measurement in hops: the value of a batch of lookups is the sum of their
/// `x-sdht-hops` headers, so criterion's estimates are hops per lookup.
struct Hops;

struct HopsFormatter;

impl ValueFormatter for HopsFormatter {
    fn scale_values(&self, _typical: f64, _values: &mut [f64]) -> &'static str {
        "hops"
    }
    fn scale_throughputs(&self, _typical: f64, _t: &Throughput, _values: &mut [f64]) -> &'static str {
        "hops"
    }
    fn scale_for_machines(&self, _values: &mut [f64]) -> &'static str {
        "hops"
    }
}

impl Measurement for Hops {
    type Intermediate = ();
    type Value = u64;
    fn start(&self) {}
    fn end(&self, _: ()) -> u64 {
        0
    }
    fn add(&self, a: &u64, b: &u64) -> u64 {
        a + b
    }
    fn zero(&self) -> u64 {
        0
    }
    fn to_f64(&self, v: &u64) -> f64 {
        *v as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        &HopsFormatter
    }
}

/// Keys stored in each ring; lookups pick among them uniformly.
const KEYS: usize = 2000;

struct Lookups {
    client: Client,
    addrs: Vec<String>,
    keys: Vec<String>,
    rng: rand::rngs::StdRng,
}

impl Lookups {
    /// One GET of a uniformly random key through a uniformly random node: (hops, latency).
    async fn one(&mut self) -> (u32, Duration) {
        let node = self.addrs.choose(&mut self.rng).unwrap().clone();
        let key = self.keys.choose(&mut self.rng).unwrap().clone();
        let start = Instant::now();
        let a = self.client.get(&node, &key).await.unwrap();
        let took = start.elapsed();
        assert_eq!(a.status, 200);
        (a.hops.expect("x-sdht-hops"), took)
    }
}

struct Row {
    n: usize,
    mean: f64,
    p50: u32,
    p99: u32,
    max: u32,
    latency_us: f64,
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let quick = common::quick();
    let sizes: &[usize] = if quick { &[1, 2, 4, 8] } else { &[1, 2, 4, 8, 16, 32, 64] };
    let samples = if quick { 500 } else { 4000 };
    let (warm, measure) = if quick {
        (Duration::from_millis(200), Duration::from_millis(600))
    } else {
        (Duration::from_secs(1), Duration::from_secs(3))
    };
    let mut wall = Criterion::default()
        .warm_up_time(warm)
        .measurement_time(measure)
        .sample_size(10)
        .configure_from_args();
    let mut hops_c = Criterion::default()
        .with_measurement(Hops)
        .warm_up_time(warm)
        .measurement_time(measure)
        .sample_size(10)
        .configure_from_args();

    // Baseline: the bare hyper round trip through the same client.
    let rt = common::runtime();
    let (base_addr, client) = rt.block_on(async { (common::bare_server().await, Client::new()) });
    let base_rt_us = rt.block_on(async {
        for _ in 0..200 {
            client.call(&base_addr, hyper::Method::GET, "/", Default::default()).await.unwrap();
        }
        let start = Instant::now();
        for _ in 0..samples {
            client.call(&base_addr, hyper::Method::GET, "/", Default::default()).await.unwrap();
        }
        start.elapsed().as_secs_f64() * 1e6 / samples as f64
    });
    wall.bench_function("baseline/bare_hyper_get", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    client.call(&base_addr, hyper::Method::GET, "/", Default::default()).await.unwrap();
                }
                start.elapsed()
            })
        })
    });
    drop(rt);

    let mut rows = Vec::new();
    for &n in sizes {
        let rt = common::runtime();
        let (ring, keys) = rt.block_on(async {
            let ring = common::start_ring(n).await;
            let keys = common::preload(&ring, KEYS, 100).await;
            (ring, keys)
        });
        let mut lk = Lookups {
            client: Client::new(),
            addrs: ring.addrs.clone(),
            keys,
            rng: rand::rngs::StdRng::seed_from_u64(n as u64),
        };

        // Our own sample, for the percentiles and the per-hop fit.
        let (mut hops, mut total) = (Vec::with_capacity(samples), Duration::ZERO);
        rt.block_on(async {
            for _ in 0..samples {
                let (h, t) = lk.one().await;
                hops.push(h);
                total += t;
            }
        });
        hops.sort_unstable();
        let row = Row {
            n,
            mean: hops.iter().map(|&h| h as f64).sum::<f64>() / hops.len() as f64,
            p50: percentile(&hops, 0.5),
            p99: percentile(&hops, 0.99),
            max: *hops.last().unwrap(),
            latency_us: total.as_secs_f64() * 1e6 / samples as f64,
        };
        println!(
            "N={n:>2}: mean hops {:.3} (expected {:.1}), p50 {}, p99 {}, max {}, {:.1} us per lookup",
            row.mean,
            (n as f64 - 1.0) / 2.0,
            row.p50,
            row.p99,
            row.max,
            row.latency_us
        );
        rows.push(row);

        // A ring of one answers every lookup in 0 hops, which criterion cannot analyse.
        if n > 1 {
            hops_c.benchmark_group("hops_per_lookup").bench_function(BenchmarkId::from_parameter(n), |b| {
                b.iter_custom(|iters| {
                    rt.block_on(async {
                        let mut sum = 0u64;
                        for _ in 0..iters {
                            sum += u64::from(lk.one().await.0);
                        }
                        sum
                    })
                })
            });
        }
        wall.benchmark_group("lookup_latency").bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let mut sum = Duration::ZERO;
                    for _ in 0..iters {
                        sum += lk.one().await.1;
                    }
                    sum
                })
            })
        });
        rt.shutdown_timeout(Duration::from_secs(1));
        drop(ring);
    }

    report(&rows, base_rt_us);
    hops_c.final_summary();
    wall.final_summary();
}

/// Least-squares slope and intercept of latency (us) against mean hops.
fn fit(rows: &[Row]) -> (f64, f64) {
    let n = rows.len() as f64;
    let (sx, sy) = rows.iter().fold((0.0, 0.0), |(x, y), r| (x + r.mean, y + r.latency_us));
    let (mx, my) = (sx / n, sy / n);
    let sxy: f64 = rows.iter().map(|r| (r.mean - mx) * (r.latency_us - my)).sum();
    let sxx: f64 = rows.iter().map(|r| (r.mean - mx).powi(2)).sum();
    let slope = if sxx > 0.0 { sxy / sxx } else { 0.0 };
    (slope, my - slope * mx)
}

fn report(rows: &[Row], base_rt_us: f64) {
    let (slope, intercept) = fit(rows);
    let mut md = String::new();
    writeln!(md, "| N | mean hops | (N-1)/2 | mean / expected | p50 | p99 | max | N-1 | ½·log2 N (Chord) | latency µs |").unwrap();
    writeln!(md, "|---|---|---|---|---|---|---|---|---|---|").unwrap();
    for r in rows {
        let expect = (r.n as f64 - 1.0) / 2.0;
        let ratio = if expect > 0.0 { format!("{:.3}", r.mean / expect) } else { "-".into() };
        writeln!(
            md,
            "| {} | {:.2} | {:.1} | {} | {} | {} | {} | {} | {:.1} | {:.0} |",
            r.n,
            r.mean,
            expect,
            ratio,
            r.p50,
            r.p99,
            r.max,
            r.n - 1,
            0.5 * (r.n as f64).log2(),
            r.latency_us
        )
        .unwrap();
    }
    writeln!(md).unwrap();
    writeln!(md, "bare hyper round trip (baseline, same client): {base_rt_us:.1} µs").unwrap();
    writeln!(md, "lookup latency ≈ {intercept:.1} µs + {slope:.1} µs × hops").unwrap();
    writeln!(md, "per-hop cost / baseline round trip: {:.2}", slope / base_rt_us).unwrap();
    println!("\n{md}");
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/sdht-bench");
    let _ = std::fs::create_dir_all(&out);
    let _ = std::fs::write(out.join("hops.md"), &md);
    let _ = std::fs::write(out.join("hops.svg"), svg(rows));
}

/// A small self-contained SVG: measured mean hops against (N-1)/2 and ½·log2 N.
fn svg(rows: &[Row]) -> String {
    let max_n = rows.iter().map(|r| r.n).max().unwrap_or(1) as f64;
    let max_y = ((max_n - 1.0) / 2.0).max(1.0) * 1.1;
    let (w, h, m) = (560.0, 360.0, 50.0);
    let x = |n: f64| m + (n - 1.0).max(0.0) / (max_n - 1.0).max(1.0) * (w - 2.0 * m);
    let y = |v: f64| h - m - v / max_y * (h - 2.0 * m);
    let line = |f: &dyn Fn(f64) -> f64| {
        rows.iter()
            .map(|r| format!("{:.1},{:.1}", x(r.n as f64), y(f(r.n as f64))))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    s += &format!(
        r#"<rect width="{w}" height="{h}" fill="white"/><line x1="{m}" y1="{}" x2="{}" y2="{}" stroke="black"/><line x1="{m}" y1="{m}" x2="{m}" y2="{}" stroke="black"/>"#,
        h - m,
        w - m,
        h - m,
        h - m
    );
    s += &format!(
        r#"<polyline fill="none" stroke="gray" stroke-dasharray="4" points="{}"/>"#,
        line(&|n| (n - 1.0) / 2.0)
    );
    s += &format!(
        r##"<polyline fill="none" stroke="#2a7" stroke-dasharray="2" points="{}"/>"##,
        line(&|n| 0.5 * n.log2())
    );
    let measured =
        rows.iter().map(|r| format!("{:.1},{:.1}", x(r.n as f64), y(r.mean))).collect::<Vec<_>>().join(" ");
    s += &format!(r##"<polyline fill="none" stroke="#c33" stroke-width="2" points="{measured}"/>"##);
    for r in rows {
        s += &format!(
            r##"<circle cx="{:.1}" cy="{:.1}" r="3" fill="#c33"/><text x="{:.1}" y="{}" text-anchor="middle">{}</text>"##,
            x(r.n as f64),
            y(r.mean),
            x(r.n as f64),
            h - m + 16.0,
            r.n
        );
    }
    s += &format!(
        r##"<text x="{}" y="{}" text-anchor="middle">nodes N</text><text x="14" y="{}" transform="rotate(-90 14 {})" text-anchor="middle">hops per lookup</text>"##,
        w / 2.0,
        h - 12.0,
        h / 2.0,
        h / 2.0
    );
    s += &format!(
        r##"<text x="{}" y="{}" fill="#c33">measured mean</text><text x="{}" y="{}" fill="gray">(N-1)/2</text><text x="{}" y="{}" fill="#2a7">½·log2 N (Chord, fingers)</text>"##,
        m + 10.0,
        m,
        m + 10.0,
        m + 16.0,
        m + 10.0,
        m + 32.0
    );
    s += "</svg>\n";
    s
}
