#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The `mesh-ca` binary: init, token, issue, and serve to a workload.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use mesh_ca::{CaClient, CertManager, FileSource, ManagerConfig, TrustBundle, TrustBundleSet};
use mesh_core::identity::SpiffeId;

fn mesh_ca(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mesh-ca"))
        .args(args)
        .output()
        .unwrap()
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn init_token_issue() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ca");
    let d = dir.to_str().unwrap();
    ok(mesh_ca(&[
        "init",
        "--dir",
        d,
        "--trust-domain",
        "example.org",
    ]));
    assert_eq!(mode(&dir.join("ca-key.pem")), 0o600);
    let root = std::fs::read(dir.join("root-cert.pem")).unwrap();
    // A second init must not replace the root.
    let again = mesh_ca(&["init", "--dir", d]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("refusing to overwrite"));
    assert_eq!(std::fs::read(dir.join("root-cert.pem")).unwrap(), root);

    let token = ok(mesh_ca(&[
        "token",
        "--dir",
        d,
        "--id",
        "spiffe://example.org/ns/web/sa/nginx",
        "--ttl",
        "10m",
    ]));
    assert_eq!(token.trim().len(), 43);
    let foreign = mesh_ca(&["token", "--dir", d, "--id", "spiffe://other.org/ns/a/sa/b"]);
    assert!(!foreign.status.success());

    let out = tmp.path().join("nginx");
    ok(mesh_ca(&[
        "issue",
        "--dir",
        d,
        "--id",
        "spiffe://example.org/ns/web/sa/nginx",
        "--out",
        out.to_str().unwrap(),
        "--ttl",
        "1h",
    ]));
    assert_eq!(mode(&out.join("key.pem")), 0o600);
    assert_eq!(std::fs::read(out.join("bundle.pem")).unwrap(), root);
    let creds = FileSource::in_dir(&out).load().unwrap();
    assert_eq!(
        creds.id().to_string(),
        "spiffe://example.org/ns/web/sa/nginx"
    );
}

/// Kills the child on drop, so a failed test leaves no server behind.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn serve_gives_a_workload_its_identity() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ca");
    let d = dir.to_str().unwrap();
    ok(mesh_ca(&["init", "--dir", d]));
    let mut child = Child(
        Command::new(env!("CARGO_BIN_EXE_mesh-ca"))
            .args(["serve", "--dir", d, "--listen", "127.0.0.1:0"])
            // Short leaves, as a root rotation done in minutes needs.
            .args(["--default-workload-cert-ttl", "10m"])
            .args(["--max-workload-cert-ttl", "1h"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    BufReader::new(child.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .to_owned();

    let id = SpiffeId::parse("spiffe://cluster.local/ns/default/sa/web").unwrap();
    let token = ok(mesh_ca(&["token", "--dir", d, "--id", &id.to_string()]));
    let root = std::fs::read(dir.join("root-cert.pem")).unwrap();
    let bootstrap = TrustBundleSet::single(
        id.trust_domain().clone(),
        TrustBundle::from_pem(&root).unwrap(),
    );
    let ca_id = SpiffeId::parse("spiffe://cluster.local/ns/mesh-system/sa/mesh-ca").unwrap();
    let client = CaClient::new(addr, ca_id, bootstrap).with_token(token.trim());
    let config = ManagerConfig {
        first_fetch_timeout: Duration::from_secs(5),
        ..ManagerConfig::default()
    };
    let manager = CertManager::start(id.clone(), Arc::new(client), config)
        .await
        .unwrap();
    let creds = manager.store().load();
    assert_eq!(creds.id(), &id);
    // The manager asked for 24 h: the CA's maximum (1 h, plus the 60 s
    // its NotBefore is set back) is what it got.
    let life = creds
        .not_after()
        .duration_since(creds.not_before())
        .unwrap();
    assert_eq!(life, Duration::from_secs(3600 + 60), "{life:?}");
}

#[test]
fn serve_refuses_a_default_lifetime_above_the_maximum() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("ca");
    let d = d.to_str().unwrap();
    ok(mesh_ca(&["init", "--dir", d]));
    let out = mesh_ca(&[
        "serve",
        "--dir",
        d,
        "--listen",
        "127.0.0.1:0",
        "--default-workload-cert-ttl",
        "2h",
        "--max-workload-cert-ttl",
        "1h",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--default-workload-cert-ttl") && err.contains("--max-workload-cert-ttl"),
        "{err}"
    );
}

/// `serve --metrics-addr`: the second line names the metrics endpoint,
/// which answers a scrape; SIGTERM drains the process, which exits 0.
#[test]
fn serve_reports_metrics_and_drains_on_sigterm() {
    use std::io::{Read, Write};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ca");
    let d = dir.to_str().unwrap();
    ok(mesh_ca(&["init", "--dir", d]));
    let mut child = Child(
        Command::new(env!("CARGO_BIN_EXE_mesh-ca"))
            .args(["serve", "--dir", d, "--listen", "127.0.0.1:0"])
            .args(["--metrics-addr", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut out = BufReader::new(child.0.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert!(line.starts_with("listening on 127.0.0.1:"), "{line}");
    line.clear();
    out.read_line(&mut line).unwrap();
    let addr = line.trim().strip_prefix("metrics on ").unwrap().to_owned();

    let mut tcp = std::net::TcpStream::connect(&addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: ca\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut scrape = String::new();
    tcp.read_to_string(&mut scrape).unwrap();
    assert!(scrape.starts_with("HTTP/1.1 200"), "{scrape}");
    assert!(
        scrape.contains("\nmesh_ca_certificates_issued_total 0\n"),
        "{scrape}"
    );
    assert!(scrape.contains("# TYPE mesh_cert_expiry_timestamp_seconds gauge\n"));

    let pid = child.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "mesh-ca did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
}
