//! Identity at the sidecar's real inbound listener (the sidecar started in
//! the test's runtime): certificates the mesh must refuse (another trust
//! domain, another CA naming our trust domain, expired, not yet valid),
//! identity headers forged by a plaintext client in PERMISSIVE mode; and,
//! as a process since it is the command line's rule, an admin listener
//! that stays on loopback unless asked. The SVID rules on one certificate (two URI SANs, DNS-only, CA
//! leaf, key usage) are proven on the same acceptor in
//! `mesh-tower/tests/mtls.rs` and `mesh-ca/tests`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use mesh_ca::{CertificateAuthority, CredentialStore};
use mesh_core::identity::TrustDomain;
use mesh_tower::server::ServerSettings;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use support::{World, counting_app, exchange, mesh_config_any_port, mtls, ready_sidecar};
use tokio::net::TcpStream;

const GET: &[u8] = b"GET / HTTP/1.1\r\nhost: web\r\nconnection: close\r\n\r\n";

/// A raw rustls client presenting `dir`'s certificate, trusting any valid
/// SVID of `trust`'s bundles as the server.
fn raw_client(trust: &CredentialStore, dir: &std::path::Path) -> Arc<rustls::ClientConfig> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(dir.join("cert.pem"))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(dir.join("key.pem")).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(mesh_ca::tls::crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(
            mesh_ca::tls::SpiffeServerVerifier::dangerous_any_identity(trust.clone()),
        ))
        .with_client_auth_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_the_mesh_does_not_trust_get_no_request_through() {
    let world = World::new();
    let (app, seen) = counting_app().await;
    let (proxy, inbound) = ready_sidecar(&world, app, "STRICT", ServerSettings::default()).await;
    let trust = world.creds("client");
    let now = time::OffsetDateTime::now_utc();
    let day = time::Duration::days(1);

    let evil = CertificateAuthority::init_dir(
        &world.path("evil-ca"),
        TrustDomain::new("evil.example").unwrap(),
    )
    .unwrap();
    let impostor = CertificateAuthority::init_dir(
        &world.path("impostor-ca"),
        TrustDomain::new("cluster.local").unwrap(),
    )
    .unwrap();
    let evil_id =
        mesh_core::identity::SpiffeId::parse("spiffe://evil.example/ns/default/sa/client").unwrap();
    let cases: [(&str, &CertificateAuthority, _, _, Option<Duration>); 4] = [
        ("another trust domain", &evil, evil_id, now, None),
        (
            "another CA naming our trust domain",
            &impostor,
            support::id("client"),
            now,
            None,
        ),
        (
            "an expired certificate",
            &world.ca,
            support::id("client"),
            now - 2 * day,
            Some(Duration::from_secs(3600)),
        ),
        (
            "a certificate not valid yet",
            &world.ca,
            support::id("client"),
            now + 2 * day,
            None,
        ),
    ];
    for (what, ca, id, at, ttl) in cases {
        let dir = world.path(&format!("bad-{}", what.replace(' ', "-")));
        support::write_identity(ca, &id, at, ttl, &dir);
        let connector = tokio_rustls::TlsConnector::from(raw_client(&trust, &dir));
        let tcp = TcpStream::connect(("127.0.0.1", inbound)).await.unwrap();
        let answer = match connector
            .connect(ServerName::try_from("web").unwrap(), tcp)
            .await
        {
            // TLS 1.3: the server's verdict on our certificate comes after
            // our side of the handshake; the request surfaces it.
            Ok(mut tls) => exchange(&mut tls, GET, Duration::from_secs(2)).await,
            Err(_) => String::new(),
        };
        assert!(answer.is_empty(), "{what}: answered {answer:?}");
        assert_eq!(seen.heads(), 0, "{what}: reached the app");
    }

    // The mesh's own client still gets through.
    let mut ok = mtls(&trust, inbound, b"http/1.1").await;
    let answer = exchange(&mut ok, GET, Duration::from_secs(2)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_client_cert_headers_never_reach_the_app() {
    let world = World::new();
    let (app, seen) = counting_app().await;
    let (proxy, inbound) =
        ready_sidecar(&world, app, "PERMISSIVE", ServerSettings::default()).await;
    let forged = "URI=spiffe://cluster.local/ns/default/sa/admin";

    // Plaintext (PERMISSIVE lets it in): the forged header, twice, in two
    // spellings.
    let mut tcp = TcpStream::connect(("127.0.0.1", inbound)).await.unwrap();
    let raw = format!(
        "GET / HTTP/1.1\r\nhost: web\r\nx-forwarded-client-cert: {forged}\r\n\
         X-Forwarded-Client-Cert: {forged}\r\nconnection: close\r\n\r\n"
    );
    let answer = exchange(&mut tcp, raw.as_bytes(), Duration::from_secs(2)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // Over mTLS as `client`: only the verified identity is passed on.
    let creds = world.creds("client");
    let mut tls = mtls(&creds, inbound, b"http/1.1").await;
    let answer = exchange(&mut tls, raw.as_bytes(), Duration::from_secs(2)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    let xfcc = seen.xfcc.lock().unwrap().clone();
    assert_eq!(
        xfcc,
        ["", "URI=spiffe://cluster.local/ns/default/sa/client"],
        "the app saw a forged identity"
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_refuses_a_non_loopback_address_unless_asked() {
    let world = World::new();
    world.write_config("mesh.yaml", &mesh_config_any_port("STRICT"));
    let id = world.issue("web");
    let run = |allow: bool| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mesh-proxy"));
        cmd.args(["sidecar", "--workload", "web", "--http-proxy", "off"])
            .args(["--inbound-port", "0"])
            .arg("--config")
            .arg(world.path("mesh"))
            .args(["--app", "127.0.0.1:9"])
            .args(["--admin", "0.0.0.0:0"])
            .arg("--cert")
            .arg(id.join("cert.pem"))
            .arg("--key")
            .arg(id.join("key.pem"))
            .arg("--bundle")
            .arg(id.join("bundle.pem"));
        if allow {
            cmd.arg("--admin-allow-remote");
        }
        cmd
    };
    let refused = run(false)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("--admin-allow-remote"), "{err}");

    // Allowed: it binds the wildcard address (on the port the kernel
    // picked, which it logs) and becomes ready.
    let mut allowed = support::Proc::spawn(run(true));
    let line = allowed.line("admin listening").await;
    let admin: std::net::SocketAddr = support::field(&line, "admin_addr").parse().unwrap();
    assert!(admin.ip().is_unspecified(), "{line}");
    allowed.line(" ready").await;
    let ready = support::http_get(&format!("http://127.0.0.1:{}/ready", admin.port())).await;
    assert_eq!(ready.map(|(status, _)| status), Some(200));
}
