#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Interop with peers we did not write: `curl` with a certificate from
//! `mesh-ca issue` reaches a STRICT mesh server; `openssl s_client` without a
//! client certificate is refused. Needs the Debian packages `curl` and
//! `openssl`.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use bytes::Bytes;
use mesh_ca::{CredentialStore, FileSource};
use mesh_tower::tls::{MeshAcceptor, PeerIdentity, TlsMode, spawn_server};
use tokio::io::AsyncWriteExt;

fn mesh_ca(args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_mesh-ca"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mesh-ca {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn require(tool: &str) {
    let found = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let found = found
        || Command::new(tool)
            .arg("version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    assert!(found, "{tool} is required: apt-get install -y curl openssl");
}

/// Runs a command with stdin, killed after 20 s.
async fn run(cmd: &str, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = tokio::process::Command::new(cmd)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin).await.unwrap();
    // Keep stdin open briefly: s_client ends the session at EOF.
    let keep = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(2)).await;
        drop(input);
    });
    let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("command timed out")
        .unwrap();
    keep.abort();
    out
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[tokio::test]
async fn curl_and_openssl_against_a_strict_server() {
    require("curl");
    require("openssl");
    let tmp = tempfile::tempdir().unwrap();
    let (ca, server_dir, client_dir) = (
        tmp.path().join("ca"),
        tmp.path().join("server"),
        tmp.path().join("client"),
    );
    mesh_ca(&["init", "--dir", p(&ca)]);
    mesh_ca(&[
        "issue",
        "--dir",
        p(&ca),
        "--id",
        "spiffe://cluster.local/ns/default/sa/backend",
        "--out",
        p(&server_dir),
        "--dns",
        "backend.mesh.test",
    ]);
    mesh_ca(&[
        "issue",
        "--dir",
        p(&ca),
        "--id",
        "spiffe://cluster.local/ns/default/sa/curl",
        "--out",
        p(&client_dir),
    ]);

    let store = CredentialStore::new(FileSource::in_dir(&server_dir).load().unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let acceptor = MeshAcceptor::new(&store, TlsMode::Strict).unwrap();
    let service = tower::service_fn(|req: http::Request<mesh_tower::body::BoxBody>| async move {
        let caller = req
            .extensions()
            .get::<PeerIdentity>()
            .and_then(|p| p.spiffe_id())
            .map(ToString::to_string)
            .unwrap_or_default();
        Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
            Bytes::from(caller),
        )))
    });
    let server = spawn_server(listener, acceptor, service).unwrap();
    let url = format!("https://backend.mesh.test:{port}/");
    let resolve = format!("backend.mesh.test:{port}:127.0.0.1");
    let client = |f: &str| client_dir.join(f).to_str().unwrap().to_owned();

    // curl verifies the server by host name against the mesh root, and
    // presents its SVID; the handler sees curl's SPIFFE ID. h2 and HTTP/1.1.
    for proto in ["--http2", "--http1.1"] {
        let out = run(
            "curl",
            &[
                "-sS",
                "--max-time",
                "10",
                proto,
                "--resolve",
                &resolve,
                "--cacert",
                &client("bundle.pem"),
                "--cert",
                &client("cert.pem"),
                "--key",
                &client("key.pem"),
                &url,
            ],
            b"",
        )
        .await;
        assert!(
            out.status.success(),
            "curl {proto}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "spiffe://cluster.local/ns/default/sa/curl"
        );
    }

    // curl without a client certificate: refused.
    let out = run(
        "curl",
        &[
            "-sS",
            "--max-time",
            "10",
            "--resolve",
            &resolve,
            "--cacert",
            &client("bundle.pem"),
            &url,
        ],
        b"",
    )
    .await;
    assert!(
        !out.status.success(),
        "curl without a certificate got through"
    );

    // openssl s_client without a client certificate: the server ends the
    // handshake with an alert and never answers the request.
    let connect = format!("127.0.0.1:{port}");
    let request = b"GET / HTTP/1.1\r\nHost: backend.mesh.test\r\nConnection: close\r\n\r\n";
    let out = run(
        "openssl",
        &[
            "s_client",
            "-connect",
            &connect,
            "-servername",
            "backend.mesh.test",
            "-CAfile",
            &client("bundle.pem"),
            "-ign_eof",
        ],
        request,
    )
    .await;
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !all.contains("200 OK"),
        "s_client without a certificate was served:\n{all}"
    );
    assert!(
        all.to_lowercase().contains("alert"),
        "expected a TLS alert:\n{all}"
    );

    // The same with the certificate: served (the invocation above is sound).
    let out = run(
        "openssl",
        &[
            "s_client",
            "-connect",
            &connect,
            "-servername",
            "backend.mesh.test",
            "-CAfile",
            &client("bundle.pem"),
            "-cert",
            &client("cert.pem"),
            "-key",
            &client("key.pem"),
            "-ign_eof",
        ],
        request,
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("200 OK"),
        "s_client with a certificate:\n{stdout}"
    );
    assert!(stdout.contains("spiffe://cluster.local/ns/default/sa/curl"));
    server.shutdown().await;
}
