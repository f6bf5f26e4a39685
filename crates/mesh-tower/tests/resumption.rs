#![allow(clippy::unwrap_used, clippy::expect_used)]
//! TLS session resumption skips the peer's certificate check: a resumed
//! session carries the identity verified when it was made. After a trust
//! change (a root removed, an identity no longer trusted) that identity
//! must not come back through a ticket, so the mesh never resumes: every
//! connection is a full handshake, whatever the client asks for.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;

use mesh_ca::{TrustBundle, TrustBundleSet};
use mesh_tower::tls::{MeshAcceptor, TlsMode, spawn_server};
use rustls::HandshakeKind;
use rustls_pki_types::ServerName;
use support::{TestPki, get, raw_client, whoami};
use tokio::net::{TcpListener, TcpStream};

/// One request over a new connection: the handshake kind and the identity
/// the server saw, or why it failed.
async fn call(
    config: &Arc<rustls::ClientConfig>,
    addr: SocketAddr,
) -> Result<(HandshakeKind, String), String> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(config.clone())
        .connect(ServerName::try_from("mesh.test").unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let kind = tls.get_ref().1.handshake_kind().unwrap();
    // HTTP/1.1: the server's answer (and its session tickets) are read.
    let (status, body) = get(tls, false).await.map_err(|e| e.to_string())?;
    assert_eq!(status, 200);
    Ok((kind, body))
}

#[tokio::test]
async fn a_session_is_never_resumed_so_a_trust_change_cannot_be_skipped() {
    let old = TestPki::new("cluster.local");
    let new = TestPki::new("cluster.local");
    let server_store = old.store("backend");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let acceptor = MeshAcceptor::new(&server_store, TlsMode::Strict).unwrap();
    let server = spawn_server(listener, acceptor, whoami()).unwrap();
    let addr = server.local_addr();

    // A client that asks to resume (rustls' default in-memory cache), with
    // an SVID from the old root, trusting servers of both roots.
    let both = TrustBundleSet::single(
        old.td.clone(),
        TrustBundle::new(vec![old.root(), new.root()]).unwrap(),
    );
    let trust = mesh_ca::CredentialStore::new(old.creds("frontend").with_bundles(both));
    let mut config = raw_client(&trust, Some(old.raw_svid("frontend")));
    Arc::get_mut(&mut config).unwrap().alpn_protocols = vec![b"http/1.1".to_vec()];
    let frontend = "spiffe://cluster.local/ns/default/sa/frontend";

    for i in 0..3 {
        let (kind, who) = call(&config, addr).await.unwrap();
        assert_eq!(who, frontend);
        assert_eq!(
            kind,
            HandshakeKind::Full,
            "connection {i} resumed a session: the client certificate was not checked"
        );
    }

    // The trust change: the server moves to the new root and no longer
    // trusts the old one. The client's old certificate must be refused,
    // ticket or not.
    server_store.publish(new.creds("backend"));
    let after = call(&config, addr).await;
    assert!(
        after.is_err(),
        "a certificate from a root no longer trusted got through: {after:?}"
    );
    // A client of the new root is served.
    let trust_new = mesh_ca::CredentialStore::new(new.creds("frontend"));
    let mut fresh = raw_client(&trust_new, Some(new.raw_svid("frontend")));
    Arc::get_mut(&mut fresh).unwrap().alpn_protocols = vec![b"http/1.1".to_vec()];
    assert_eq!(call(&fresh, addr).await.unwrap().1, frontend);
    server.shutdown().await;
}

#[test]
fn the_mesh_configs_neither_offer_nor_keep_sessions() {
    let pki = TestPki::new("cluster.local");
    let store = pki.store("backend");
    let server = mesh_ca::tls::server_config(&store, mesh_ca::tls::ClientAuth::Required).unwrap();
    assert_eq!(server.send_tls13_tickets, 0);
    assert!(!server.session_storage.can_cache());
    let verifier = mesh_ca::tls::SpiffeServerVerifier::new(store.clone(), vec![pki.id("x")]);
    let client = mesh_ca::tls::client_config(&store, verifier).unwrap();
    assert_eq!(
        format!("{:?}", client.resumption),
        format!("{:?}", rustls::client::Resumption::disabled())
    );
}
