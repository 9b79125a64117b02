//! The live ring page in a real headless browser: Debian's chromium loads `GET /` from a live
//! 4-node ring, runs its script, and the rendered page must draw 4 nodes and list them in its
//! table. The screenshot is kept in target/tmp/ring-page.png.
//!
//! `.ci/run` installs chromium. Elsewhere, without chromium, the test says so and passes only
//! outside CI (`CI` unset), so `cargo test` still works on a machine without a browser.

mod common;

use std::path::PathBuf;

use common::*;
use sdht::client::NodeClient as Client;

fn chromium() -> Option<PathBuf> {
    let from_env = std::env::var_os("CHROMIUM").map(PathBuf::from);
    let candidates =
        from_env.into_iter().chain(["/usr/bin/chromium", "/usr/bin/chromium-browser"].map(PathBuf::from));
    candidates.into_iter().find(|p| p.exists())
}

/// The flags the workplace's probe uses: no sandbox as root, no GPU, no background traffic.
fn browser(bin: &PathBuf, profile: &std::path::Path) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(bin);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1100,800",
        // Let the page's script fetch /ring and draw before the DOM is read.
        "--virtual-time-budget=5000",
    ]);
    cmd.arg(format!("--user-data-dir={}", profile.display()));
    cmd.kill_on_drop(true);
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ring_page_draws_every_node() {
    let Some(bin) = chromium() else {
        assert!(std::env::var_os("CI").is_none(), "CI must have chromium: .ci/run installs it");
        eprintln!("SKIPPED: no chromium here (apt-get install chromium, or run .ci/run)");
        return;
    };
    let nodes = ring(4).await;
    let client = Client::new();
    for i in 0..40 {
        assert_eq!(client.put(&nodes[i % 4].addr, &format!("k{i}"), "v").await.unwrap().status, 204);
    }
    let url = format!("http://{}/", nodes[0].addr);

    let profile = tempfile::tempdir().unwrap();
    let out = browser(&bin, profile.path()).arg("--dump-dom").arg(&url).output();
    let out = tokio::time::timeout(DEADLINE, out).await.expect("chromium hung").unwrap();
    let dom = String::from_utf8_lossy(&out.stdout);
    assert_eq!(dom.matches(r#"class="node""#).count(), 4, "nodes drawn:\n{dom}");
    assert_eq!(dom.matches(r#"class="node-row""#).count(), 4, "table rows:\n{dom}");
    for n in &nodes {
        assert!(dom.contains(&format!(r#"data-addr="{}""#, n.addr)), "{} not drawn", n.addr);
    }
    // 40 keys, at least three copies each (the default replicas; copies left behind by the
    // joins may add a few).
    let stored: u64 = dom
        .split("4 nodes, ")
        .nth(1)
        .and_then(|rest| rest.split(" records stored").next()?.parse().ok())
        .unwrap_or_else(|| panic!("status line:\n{dom}"));
    assert!(stored >= 120, "{stored} records stored");

    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ring-page.png");
    let _ = std::fs::remove_file(&shot);
    let profile = tempfile::tempdir().unwrap();
    let out =
        browser(&bin, profile.path()).arg(format!("--screenshot={}", shot.display())).arg(&url).output();
    tokio::time::timeout(DEADLINE, out).await.expect("chromium hung").unwrap();
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "screenshot is a real picture");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_prometheus_text() {
    let nodes = ring(2).await;
    let client = Client::new();
    for i in 0..10 {
        client.put(&nodes[0].addr, &format!("m{i}"), "value").await.unwrap();
        client.get(&nodes[1].addr, &format!("m{i}")).await.unwrap();
    }
    let resp = client.call(&nodes[0].addr, hyper::Method::GET, "/metrics", Default::default()).await.unwrap();
    assert_eq!(resp.status(), 200);
    let text = String::from_utf8_lossy(resp.body()).into_owned();
    assert!(text.ends_with("# EOF\n"), "OpenMetrics text ends with # EOF");
    let value = |name: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(name) && !l.starts_with('#'))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing in\n{text}"))
    };
    assert_eq!(value(r#"sdht_http_requests_total{route="kv_put",status="204"}"#), 10.0);
    assert_eq!(value("sdht_request_hops_count"), 10.0);
    let keys0 = value("sdht_stored_keys");
    assert!(value("sdht_stored_bytes") >= keys0 * 7.0);
    assert!(value("sdht_stabilize_rounds_total") > 0.0);
    // Two nodes: the list holds the one other node.
    assert_eq!(value("sdht_successor_list_length"), 1.0);
    for name in [
        "sdht_http_request_duration_seconds_bucket",
        "sdht_forwarded_requests_total",
        "sdht_handoff_keys_total",
        "sdht_handoff_bytes_total",
        "sdht_peer_call_failures_total",
    ] {
        assert!(text.contains(name), "{name} missing");
    }
}
