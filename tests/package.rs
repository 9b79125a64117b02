//! The Debian packaging: cargo-deb metadata that ships the binary and the systemd template
//! unit, and a unit that `systemd-analyze verify` accepts (where systemd is installed). `.ci/run`
//! also builds the .deb itself. And SIGTERM, which is how systemd stops a unit, is a graceful
//! leave.

mod common;

use std::path::Path;

use common::*;
use sdht::client::NodeClient as Client;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

#[test]
fn cargo_deb_metadata_ships_the_binary_and_the_unit() {
    let toml = std::fs::read_to_string(Path::new(ROOT).join("Cargo.toml")).unwrap();
    let deb = toml.split("[package.metadata.deb]").nth(1).expect("[package.metadata.deb] section");
    let deb = deb.split("\n[").next().unwrap();
    for want in [
        r#"["target/release/sdht", "usr/bin/", "755"]"#,
        r#"["debian/sdht@.service", "lib/systemd/system/", "644"]"#,
        r#"["debian/example.env", "etc/sdht/example.env", "644"]"#,
        r#"maintainer-scripts = "debian/""#,
    ] {
        assert!(deb.contains(want), "missing {want}");
    }
    for file in ["debian/sdht@.service", "debian/example.env", "debian/postinst"] {
        assert!(Path::new(ROOT).join(file).exists(), "{file} missing");
    }
    let postinst = std::fs::read_to_string(Path::new(ROOT).join("debian/postinst")).unwrap();
    assert!(postinst.contains("adduser --system"), "the units run as a dedicated user");
}

#[test]
fn the_unit_is_one_node_per_instance() {
    let unit = std::fs::read_to_string(Path::new(ROOT).join("debian/sdht@.service")).unwrap();
    for want in [
        "EnvironmentFile=/etc/sdht/%i.env",
        "--data /var/lib/sdht/%i",
        "StateDirectory=sdht/%i",
        "User=sdht",
        "KillSignal=SIGTERM",
        "ExecStart=/usr/bin/sdht serve --listen ${SDHT_LISTEN}",
    ] {
        assert!(unit.contains(want), "unit lacks {want}");
    }
    let Ok(analyze) = which("systemd-analyze") else {
        eprintln!("SKIPPED systemd-analyze verify: systemd-analyze not installed");
        return;
    };
    // verify insists that ExecStart's binary exists: point it at the one cargo built.
    let dir = tempfile::tempdir().unwrap();
    let unit = unit.replace("/usr/bin/sdht", env!("CARGO_BIN_EXE_sdht"));
    let path = dir.path().join("sdht@test.service");
    std::fs::write(&path, unit).unwrap();
    let out = std::process::Command::new(analyze).arg("verify").arg(&path).output().unwrap();
    assert!(out.status.success(), "systemd-analyze verify: {}", String::from_utf8_lossy(&out.stderr));
}

fn which(name: &str) -> Result<std::path::PathBuf, ()> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(name))
        .find(|p| p.exists())
        .ok_or(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_is_a_graceful_leave() {
    let mut nodes = ring(2).await;
    let client = Client::new();
    for i in 0..100 {
        assert_eq!(client.put(&nodes[0].addr, &format!("t{i}"), format!("v{i}")).await.unwrap().status, 204);
    }
    let mut leaver = nodes.remove(1);
    let pid = leaver.child.id().unwrap();
    let killed = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(DEADLINE, leaver.child.wait()).await.unwrap().unwrap();
    assert!(status.success(), "exit status {status}");
    wait_for_ring(&nodes).await;
    assert_eq!(keys_on(&client, &nodes[0].addr).await, 100);
    for i in 0..100 {
        assert_eq!(
            &client.get(&nodes[0].addr, &format!("t{i}")).await.unwrap().body[..],
            format!("v{i}").as_bytes()
        );
    }
}
