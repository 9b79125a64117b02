//! The Debian packaging: cargo-deb metadata that ships the binary, the systemd template unit,
//! the man pages and the shell completions; a unit that `systemd-analyze verify` accepts (where
//! systemd is installed); man pages and completions in git that match what the binary
//! generates from its clap definitions; and the built .deb holding them all (`.ci/run` builds
//! it before the tests). And SIGTERM, which is how systemd stops a unit, is a graceful leave.

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
        r#"["debian/man/*.1", "usr/share/man/man1/", "644"]"#,
        r#"["debian/completions/sdht.bash", "usr/share/bash-completion/completions/sdht", "644"]"#,
        r#"["debian/completions/_sdht", "usr/share/zsh/vendor-completions/_sdht", "644"]"#,
        r#"["debian/completions/sdht.fish", "usr/share/fish/vendor_completions.d/sdht.fish", "644"]"#,
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

/// The shell completion files in git, with the shell each is generated for.
const COMPLETIONS: [(&str, &str); 3] = [
    ("bash", "debian/completions/sdht.bash"),
    ("zsh", "debian/completions/_sdht"),
    ("fish", "debian/completions/sdht.fish"),
];

/// Runs the built binary with `args`; its stdout.
fn sdht(args: &[&std::ffi::OsStr]) -> Vec<u8> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sdht")).args(args).output().unwrap();
    assert!(out.status.success(), "sdht {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// The man pages and completions the binary generates now, by path under the repository.
fn generated_docs() -> Vec<(String, Vec<u8>)> {
    let dir = tempfile::tempdir().unwrap();
    sdht(&["man".as_ref(), dir.path().as_os_str()]);
    let mut docs: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            (format!("debian/man/{}", p.file_name().unwrap().to_str().unwrap()), std::fs::read(&p).unwrap())
        })
        .collect();
    for (shell, path) in COMPLETIONS {
        docs.push((path.to_string(), sdht(&["completions".as_ref(), shell.as_ref()])));
    }
    docs.sort();
    docs
}

/// `SDHT_REGENERATE=1 cargo test --test package generated` rewrites the files in git.
#[test]
fn man_pages_and_completions_in_git_are_generated_from_the_cli() {
    let docs = generated_docs();
    let names: Vec<&str> = docs.iter().map(|(p, _)| p.as_str()).collect();
    assert!(names.contains(&"debian/man/sdht.1") && names.contains(&"debian/man/sdht-serve.1"), "{names:?}");
    assert!(!names.contains(&"debian/man/sdht-man.1"), "the hidden man command has no page");
    let regenerate = std::env::var_os("SDHT_REGENERATE").is_some();
    if regenerate {
        let _ = std::fs::remove_dir_all(Path::new(ROOT).join("debian/man"));
        std::fs::create_dir_all(Path::new(ROOT).join("debian/man")).unwrap();
    }
    for (path, want) in &docs {
        let file = Path::new(ROOT).join(path);
        if regenerate {
            std::fs::write(&file, want).unwrap();
        }
        let have = std::fs::read(&file).unwrap_or_default();
        assert!(
            have == *want,
            "{path} is not what the CLI generates: run SDHT_REGENERATE=1 cargo test --test package generated"
        );
    }
    let in_git = std::fs::read_dir(Path::new(ROOT).join("debian/man")).unwrap().count();
    assert_eq!(
        in_git,
        names.iter().filter(|n| n.starts_with("debian/man/")).count(),
        "a stale page in debian/man"
    );
    let bash =
        String::from_utf8_lossy(&docs.iter().find(|(p, _)| p.ends_with(".bash")).unwrap().1).to_string();
    assert!(bash.contains("--bootstrap") && bash.contains("--node"), "completions know the flags");
}

/// The .deb that `cargo deb` built (`.ci/run` builds it before the tests) holds the man pages
/// and completions next to the binary and the unit.
#[test]
fn the_built_package_holds_man_pages_and_completions() {
    let debs: Vec<_> = std::fs::read_dir(Path::new(ROOT).join("target/debian"))
        .into_iter()
        .flatten()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .collect();
    let (Some(deb), Ok(dpkg)) =
        (debs.iter().max_by_key(|p| p.metadata().unwrap().modified().unwrap()), which("dpkg-deb"))
    else {
        eprintln!("SKIPPED the .deb's contents: no target/debian/*.deb (run cargo deb) or no dpkg-deb");
        return;
    };
    let out = std::process::Command::new(dpkg).arg("--contents").arg(deb).output().unwrap();
    let contents = String::from_utf8_lossy(&out.stdout);
    for want in [
        "./usr/bin/sdht",
        "./usr/share/man/man1/sdht.1.gz",
        "./usr/share/man/man1/sdht-serve.1.gz",
        "./usr/share/man/man1/sdht-get.1.gz",
        "./usr/share/bash-completion/completions/sdht",
        "./usr/share/zsh/vendor-completions/_sdht",
        "./usr/share/fish/vendor_completions.d/sdht.fish",
    ] {
        assert!(contents.contains(want), "{} lacks {want}:\n{contents}", deb.display());
    }
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
