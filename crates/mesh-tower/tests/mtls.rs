#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Mesh mTLS end to end: real hyper clients and servers over loopback and
//! in-memory streams; every refusal has its own error.

mod support;

use std::sync::Arc;
use std::time::Duration;

use mesh_ca::{CredentialStore, SvidError};
use mesh_tower::tls::{
    AcceptError, ConnectError, MeshAcceptor, MeshConnector, MeshStream, TlsMode, spawn_server,
};
use rustls_pki_types::ServerName;
use support::{TestPki, dns, get, raw_client, uri, whoami};
use time::OffsetDateTime;
use tokio::io::{AsyncWriteExt, DuplexStream};
use tokio::net::{TcpListener, TcpStream};

async fn strict_server(store: &CredentialStore) -> mesh_tower::tls::ServerHandle {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let acceptor = MeshAcceptor::new(store, TlsMode::Strict).unwrap();
    spawn_server(listener, acceptor, whoami()).unwrap()
}

#[tokio::test]
async fn handler_sees_the_callers_spiffe_id_over_h2_and_http1() {
    let pki = TestPki::new("cluster.local");
    let server_store = pki.store("backend");
    let server = strict_server(&server_store).await;
    let client_store = pki.store("frontend");
    let allowed = [pki.id("backend")];

    // h2 by ALPN.
    let tcp = TcpStream::connect(server.local_addr()).await.unwrap();
    let tls = MeshConnector::new(client_store.clone())
        .connect(tcp, &allowed)
        .await
        .unwrap();
    assert_eq!(tls.peer_id(), &pki.id("backend"));
    assert_eq!(tls.alpn_protocol(), Some(&b"h2"[..]));
    let (status, body) = get(tls, true).await.unwrap();
    assert_eq!(
        (status, body.as_str()),
        (200, "spiffe://cluster.local/ns/default/sa/frontend")
    );

    // HTTP/1.1 when it is all the client offers.
    let tcp = TcpStream::connect(server.local_addr()).await.unwrap();
    let tls = MeshConnector::new(client_store)
        .with_alpn(vec![b"http/1.1".to_vec()])
        .connect(tcp, &allowed)
        .await
        .unwrap();
    assert_eq!(tls.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (status, body) = get(tls, false).await.unwrap();
    assert_eq!(
        (status, body.as_str()),
        (200, "spiffe://cluster.local/ns/default/sa/frontend")
    );
    server.shutdown().await;
}

/// Runs the acceptor on one end of a duplex and a raw rustls client on the
/// other; returns both outcomes.
async fn handshake_raw(
    acceptor: &MeshAcceptor,
    client: Arc<rustls::ClientConfig>,
) -> (
    Result<MeshStream<DuplexStream>, AcceptError>,
    std::io::Result<tokio_rustls::client::TlsStream<DuplexStream>>,
) {
    let (c, s) = tokio::io::duplex(64 * 1024);
    let connector = tokio_rustls::TlsConnector::from(client);
    let name = ServerName::try_from("mesh.test").unwrap();
    tokio::join!(acceptor.accept(s), async move {
        let mut tls = connector.connect(name, c).await?;
        // TLS 1.3: the server's verdict on our certificate arrives after the
        // client's side of the handshake is done; a write+flush surfaces it.
        tls.write_all(b"GET / HTTP/1.1\r\n\r\n").await?;
        tls.flush().await?;
        Ok(tls)
    })
}

fn rejected(result: Result<MeshStream<DuplexStream>, AcceptError>) -> SvidError {
    match result {
        Err(AcceptError::PeerRejected(e)) => e,
        Err(other) => panic!("expected PeerRejected, got {other}"),
        Ok(_) => panic!("expected a refusal, the connection was accepted"),
    }
}

#[tokio::test]
async fn refuses_a_foreign_trust_domain() {
    let pki = TestPki::new("cluster.local");
    let server = pki.store("backend");
    let acceptor = MeshAcceptor::new(&server, TlsMode::Strict).unwrap();
    let evil = TestPki::new("evil.example");
    let cfg = raw_client(&server, Some(evil.raw_svid("intruder")));
    let (accepted, _) = handshake_raw(&acceptor, cfg).await;
    let err = rejected(accepted);
    assert!(
        matches!(&err, SvidError::UnknownTrustDomain(td) if td.as_str() == "evil.example"),
        "{err}"
    );
    assert!(
        err.to_string().contains("no trust bundle for trust domain"),
        "{err}"
    );

    // A CA that is not ours, naming our trust domain: does not chain.
    let impostor = TestPki::new("cluster.local");
    let (chain, key) =
        impostor.raw_leaf(vec![uri("spiffe://cluster.local/ns/default/sa/frontend")]);
    let (accepted, _) = handshake_raw(&acceptor, raw_client(&server, Some((chain, key)))).await;
    let err = rejected(accepted);
    assert!(matches!(err, SvidError::UntrustedChain(_)), "{err}");
}

#[tokio::test]
async fn refuses_an_expired_certificate() {
    let pki = TestPki::new("cluster.local");
    let server = pki.store("backend");
    let acceptor = MeshAcceptor::new(&server, TlsMode::Strict).unwrap();
    let two_days_ago = OffsetDateTime::now_utc() - time::Duration::days(2);
    let old = pki.creds_at("frontend", two_days_ago, Some(Duration::from_secs(3600)));
    let connector = MeshConnector::new(CredentialStore::new(old));
    let (c, s) = tokio::io::duplex(64 * 1024);
    let (accepted, connected) = tokio::join!(acceptor.accept(s), async {
        let mut tls = connector.connect(c, &[pki.id("backend")]).await?;
        tls.write_all(b"x").await.map_err(ConnectError::Io)?;
        tls.flush().await.map_err(ConnectError::Io)?;
        Ok::<_, ConnectError>(tls)
    });
    let err = rejected(accepted);
    assert!(matches!(err, SvidError::Expired { .. }), "{err}");
    assert!(err.to_string().contains("expired"), "{err}");
    drop(connected);
}

#[tokio::test]
async fn refuses_a_client_without_certificate() {
    let pki = TestPki::new("cluster.local");
    let server = pki.store("backend");
    let acceptor = MeshAcceptor::new(&server, TlsMode::Strict).unwrap();
    let (accepted, _) = handshake_raw(&acceptor, raw_client(&server, None)).await;
    assert!(matches!(accepted, Err(AcceptError::NoClientCertificate)));
}

#[tokio::test]
async fn refuses_an_identity_only_in_a_dns_san() {
    let pki = TestPki::new("cluster.local");
    let server = pki.store("backend");
    let acceptor = MeshAcceptor::new(&server, TlsMode::Strict).unwrap();
    let leaf = pki.raw_leaf(vec![dns("frontend.default.svc.cluster.local")]);
    let (accepted, _) = handshake_raw(&acceptor, raw_client(&server, Some(leaf))).await;
    let err = rejected(accepted);
    assert!(
        matches!(&err, SvidError::IdentityOnlyInDnsSan(d) if d == "frontend.default.svc.cluster.local"),
        "{err}"
    );
}

#[tokio::test]
async fn refuses_two_uri_sans() {
    let pki = TestPki::new("cluster.local");
    let server = pki.store("backend");
    let acceptor = MeshAcceptor::new(&server, TlsMode::Strict).unwrap();
    let leaf = pki.raw_leaf(vec![
        uri("spiffe://cluster.local/ns/default/sa/frontend"),
        uri("spiffe://cluster.local/ns/default/sa/admin"),
    ]);
    let (accepted, _) = handshake_raw(&acceptor, raw_client(&server, Some(leaf))).await;
    let err = rejected(accepted);
    assert!(matches!(err, SvidError::MultipleUriSans(2)), "{err}");
}

#[tokio::test]
async fn secure_naming_refuses_the_wrong_service_account() {
    let pki = TestPki::new("cluster.local");
    // A valid SVID of the mesh, but not one allowed for the destination.
    let server = strict_server(&pki.store("impostor")).await;
    let tcp = TcpStream::connect(server.local_addr()).await.unwrap();
    let err = MeshConnector::new(pki.store("frontend"))
        .connect(tcp, &[pki.id("backend"), pki.id("backend-v2")])
        .await
        .unwrap_err();
    match &err {
        ConnectError::ServerRejected(SvidError::NotAllowed { peer, allowed }) => {
            assert_eq!(peer, &pki.id("impostor"));
            assert_eq!(allowed.len(), 2);
        }
        other => panic!("expected a secure naming refusal, got {other}"),
    }
    assert!(
        err.to_string().contains("is not an identity allowed"),
        "{err}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn strict_refuses_plaintext() {
    let pki = TestPki::new("cluster.local");
    let acceptor = MeshAcceptor::new(&pki.store("backend"), TlsMode::Strict).unwrap();
    let (mut c, s) = tokio::io::duplex(1024);
    c.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let err = acceptor.accept(s).await.unwrap_err();
    assert!(matches!(err, AcceptError::PlaintextRefused), "{err}");
    assert!(err.to_string().contains("STRICT"));

    // And over a real socket, a plaintext hyper client gets no answer.
    let server = strict_server(&pki.store("backend")).await;
    let tcp = TcpStream::connect(server.local_addr()).await.unwrap();
    assert!(get(tcp, false).await.is_err());
    server.shutdown().await;
}

#[tokio::test]
async fn permissive_serves_mtls_and_plaintext_on_one_port() {
    let pki = TestPki::new("cluster.local");
    let server_store = pki.store("backend");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let acceptor = MeshAcceptor::new(&server_store, TlsMode::Permissive)
        .unwrap()
        .with_detect_timeout(Duration::from_millis(200));
    let server = spawn_server(listener, acceptor, whoami()).unwrap();

    let tcp = TcpStream::connect(server.local_addr()).await.unwrap();
    let tls = MeshConnector::new(pki.store("frontend"))
        .connect(tcp, &[pki.id("backend")])
        .await
        .unwrap();
    let (_, body) = get(tls, true).await.unwrap();
    assert_eq!(body, "spiffe://cluster.local/ns/default/sa/frontend");

    for h2 in [false, true] {
        let tcp = TcpStream::connect(server.local_addr()).await.unwrap();
        let (status, body) = get(tcp, h2).await.unwrap();
        assert_eq!((status, body.as_str()), (200, "plaintext"));
    }
    server.shutdown().await;
}

#[tokio::test]
async fn permissive_treats_a_silent_client_as_plaintext() {
    // Server-speaks-first protocols (MySQL) send nothing: after the detect
    // timeout the connection is handed over as plaintext.
    let pki = TestPki::new("cluster.local");
    let acceptor = MeshAcceptor::new(&pki.store("backend"), TlsMode::Permissive)
        .unwrap()
        .with_detect_timeout(Duration::from_millis(50));
    let (_c, s) = tokio::io::duplex(1024);
    let stream = acceptor.accept(s).await.unwrap();
    assert!(!stream.peer_identity().is_mtls());
}

#[tokio::test]
async fn disable_serves_plaintext() {
    let pki = TestPki::new("cluster.local");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let acceptor = MeshAcceptor::new(&pki.store("backend"), TlsMode::Disable).unwrap();
    let server = spawn_server(listener, acceptor, whoami()).unwrap();
    let tcp = TcpStream::connect(server.local_addr()).await.unwrap();
    let (_, body) = get(tcp, false).await.unwrap();
    assert_eq!(body, "plaintext");
    server.shutdown().await;
}

#[tokio::test]
async fn client_refuses_a_server_whose_identity_is_only_a_dns_name() {
    let pki = TestPki::new("cluster.local");
    let client_store = pki.store("frontend");
    let (chain, key) = pki.raw_leaf(vec![dns("backend.default.svc")]);
    let config = rustls::ServerConfig::builder_with_provider(mesh_ca::tls::crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let (c, s) = tokio::io::duplex(64 * 1024);
    let (_, connected) = tokio::join!(acceptor.accept(s), async {
        MeshConnector::new(client_store)
            .connect(c, &[pki.id("backend")])
            .await
    });
    match connected {
        Err(ConnectError::ServerRejected(SvidError::IdentityOnlyInDnsSan(_))) => {}
        other => panic!("expected a DNS-only refusal, got {other:?}"),
    }
}

/// One handshake against `acceptor` over an in-memory stream; the server
/// writes two bytes after it so the client reads any session tickets.
async fn handshake_kind<F, Fut>(
    acceptor: &tokio_rustls::TlsAcceptor,
    connect: F,
) -> rustls::HandshakeKind
where
    F: FnOnce(DuplexStream) -> Fut,
    Fut: std::future::Future<Output = tokio_rustls::client::TlsStream<DuplexStream>>,
{
    use tokio::io::AsyncReadExt;
    let (c, s) = tokio::io::duplex(64 * 1024);
    let server = async {
        let mut tls = acceptor.accept(s).await.unwrap();
        tls.write_all(b"ok").await.unwrap();
        tls.flush().await.unwrap();
        tls
    };
    let client = async {
        let mut tls = connect(c).await;
        let mut buf = [0u8; 2];
        tls.read_exact(&mut buf).await.unwrap();
        tls
    };
    let (_server, client) = tokio::join!(server, client);
    client.get_ref().1.handshake_kind().unwrap()
}

#[tokio::test]
async fn the_connector_never_resumes_a_session() {
    // A server that issues tickets and resumes (rustls' defaults, which the
    // mesh's own server config turns off)...
    let pki = TestPki::new("cluster.local");
    let server_store = pki.store("backend");
    let config = rustls::ServerConfig::builder_with_provider(mesh_ca::tls::crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(Arc::new(mesh_tower::tls::SpiffeClientVerifier::new(
            server_store.clone(),
            mesh_ca::tls::ClientAuth::Required,
        )))
        .with_cert_resolver(Arc::new(server_store));
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let client_store = pki.store("frontend");
    let allowed = [pki.id("backend")];
    let name = || ServerName::IpAddress(std::net::IpAddr::from([0, 0, 0, 0]).into());

    // ...resumes for a client config that keeps sessions (the control)...
    let verifier = mesh_ca::tls::SpiffeServerVerifier::new(client_store.clone(), allowed.to_vec());
    let mut resuming = mesh_ca::tls::client_config(&client_store, verifier).unwrap();
    resuming.resumption = rustls::client::Resumption::in_memory_sessions(16);
    let resuming = tokio_rustls::TlsConnector::from(Arc::new(resuming));
    let mut kinds = Vec::new();
    for _ in 0..2 {
        let resuming = resuming.clone();
        kinds.push(
            handshake_kind(&acceptor, |c| async move {
                resuming.connect(name(), c).await.unwrap()
            })
            .await,
        );
    }
    assert_eq!(
        kinds,
        [rustls::HandshakeKind::Full, rustls::HandshakeKind::Resumed]
    );

    // ...but the mesh connector, which keeps one config per allowed set
    // across connections, verifies the server in full every time.
    let connector = MeshConnector::new(client_store);
    for _ in 0..3 {
        let (connector, allowed) = (connector.clone(), allowed.clone());
        let kind = handshake_kind(&acceptor, |c| async move {
            connector.connect(c, &allowed).await.unwrap().into_inner()
        })
        .await;
        assert_eq!(kind, rustls::HandshakeKind::Full);
    }
}
