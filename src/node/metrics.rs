//! The node's Prometheus metrics, served as text at `GET /metrics`.
//!
//! Counters and histograms are updated where things happen; gauges of stored keys and bytes
//! are read from the store when scraped, so nothing is kept twice.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    pub route: &'static str,
}

fn latency_histogram() -> Histogram {
    // 25 µs to about 3.3 s.
    Histogram::new(exponential_buckets(0.000_025, 2.0, 18))
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub latency: Family<RouteLabel, Histogram, fn() -> Histogram>,
    pub forwarded: Counter,
    pub hops: Histogram,
    pub keys: Gauge,
    pub bytes: Gauge,
    pub handoff_keys: Counter,
    pub handoff_bytes: Counter,
    pub stabilize_rounds: Counter,
    pub peer_failures: Counter,
    pub peer_calls: Counter,
    pub successors: Gauge,
    pub peers_lost: Counter,
    pub versions_refused: Counter,
    pub late_requests: Counter,
    pub replica_batches: Counter,
    pub replica_writes: Counter,
    pub replica_queue_full: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("sdht");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register("http_requests", "HTTP requests answered, by route and status", requests.clone());
        let latency = Family::<RouteLabel, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register("http_request_duration_seconds", "Time to answer an HTTP request", latency.clone());
        let hops = Histogram::new([0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0]);
        registry.register(
            "request_hops",
            "Forwards per client request, seen by the node first asked",
            hops.clone(),
        );
        let r = &mut registry;
        Metrics {
            requests,
            latency,
            hops,
            forwarded: counter(r, "forwarded_requests", "Client requests this node forwarded to a peer"),
            keys: gauge(r, "stored_keys", "Live keys in this node's store"),
            bytes: gauge(r, "stored_bytes", "Bytes of live keys and values in this node's store"),
            handoff_keys: counter(
                r,
                "handoff_keys",
                "Records sent to other nodes by handoffs and replication",
            ),
            handoff_bytes: counter(
                r,
                "handoff_bytes",
                "Bytes sent to other nodes by handoffs and replication",
            ),
            stabilize_rounds: counter(r, "stabilize_rounds", "Stabilize rounds run"),
            peer_failures: counter(r, "peer_call_failures", "Calls to peers that failed or timed out"),
            peer_calls: counter(r, "peer_calls", "Calls made to peers (membership, requests, copies)"),
            successors: gauge(r, "successor_list_length", "Entries in this node's successor list"),
            peers_lost: counter(r, "peers_lost", "Peers declared unreachable and dropped from the ring"),
            versions_refused: counter(
                r,
                "versions_refused",
                "Records refused because their version was too far ahead of this node's clock",
            ),
            late_requests: counter(
                r,
                "late_requests",
                "Forwarded requests dropped because their deadline had passed",
            ),
            replica_batches: counter(r, "replica_batches", "Messages sent by the replication streams"),
            replica_writes: counter(r, "replica_writes", "Writes sent by the replication streams"),
            replica_queue_full: counter(
                r,
                "replica_queue_full",
                "Writes not sent to a replica because its stream's queue was full",
            ),
            registry,
        }
    }

    pub fn observe_request(&self, route: &'static str, status: u16, took: Duration) {
        self.requests.get_or_create(&RequestLabels { route, status }).inc();
        self.latency.get_or_create(&RouteLabel { route }).observe(took.as_secs_f64());
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

fn counter(registry: &mut Registry, name: &str, help: &str) -> Counter {
    let c = Counter::default();
    registry.register(name, help, c.clone());
    c
}

fn gauge(registry: &mut Registry, name: &str, help: &str) -> Gauge {
    let g = Gauge::default();
    registry.register(name, help, g.clone());
    g
}
