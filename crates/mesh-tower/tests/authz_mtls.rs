#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `serviceAccounts`, `trustDomains` and `connection.sni` end to end: real
//! mTLS handshakes on `127.0.0.1:0`, the mesh acceptor recording the peer
//! and the SNI, and the real authorization layer deciding on them, for
//! HTTP requests and for TCP connections.

mod support;

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use mesh_ca::{CredentialStore, TrustBundleSet};
use mesh_core::store::Store;
use mesh_tower::authz::{AuthorizeLayer, LocalWorkload};
use mesh_tower::body::{BoxBody, full};
use mesh_tower::tls::{MeshAcceptor, MeshConnector, PeerIdentity, TlsMode, spawn_server};
use rustls_pki_types::ServerName;
use support::TestPki;
use tokio::net::{TcpListener, TcpStream};
use tower::Layer;

/// Policies of the `default` namespace: `/sa*` for the mesh's own
/// `default/frontend` only, `/sni*` for connections that asked for
/// `api.mesh.test`, `/td*` for the mesh's trust domain; nothing on a
/// connection that asked for `blocked.mesh.test`.
const POLICIES: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow, namespace: default}
spec:
  rules:
  - from: [{source: {serviceAccounts: [frontend]}}]
    to: [{operation: {paths: ["/sa*"]}}]
  - when: [{key: connection.sni, values: [api.mesh.test]}]
    to: [{operation: {paths: ["/sni*"]}}]
  - from: [{source: {trustDomains: [cluster.local]}}]
    to: [{operation: {paths: ["/td*"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny, namespace: default}
spec:
  action: DENY
  rules:
  - when: [{key: connection.sni, values: [blocked.mesh.test]}]
"#;

fn layer() -> AuthorizeLayer {
    let store = Arc::new(Store::new());
    store
        .apply(mesh_core::load::load_str(Path::new("p.yaml"), POLICIES))
        .unwrap();
    AuthorizeLayer::new(store, LocalWorkload::labels("default", Default::default()))
}

/// A PERMISSIVE server behind the authorization layer whose app answers
/// with the SNI the acceptor recorded.
async fn server(store: &CredentialStore) -> mesh_tower::tls::ServerHandle {
    let app = tower::service_fn(|req: http::Request<BoxBody>| async move {
        let sni = req
            .extensions()
            .get::<PeerIdentity>()
            .and_then(|p| p.sni().map(str::to_owned))
            .unwrap_or_else(|| "none".to_owned());
        Ok::<_, std::convert::Infallible>(http::Response::new(full(sni)))
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let acceptor = MeshAcceptor::new(store, TlsMode::Permissive).unwrap();
    spawn_server(listener, acceptor, layer().layer(app)).unwrap()
}

/// `GET path` over HTTP/1.1 on `io`: the status and the body.
async fn get<IO>(io: IO, path: &str) -> (u16, String)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header("host", "backend")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

struct Mesh {
    pki: TestPki,
    server: mesh_tower::tls::ServerHandle,
}

impl Mesh {
    async fn new() -> Self {
        let pki = TestPki::new("cluster.local");
        let server = server(&pki.store("backend")).await;
        Self { pki, server }
    }

    /// `GET path` as `sa` (`None`: plaintext), sending `sni` if any.
    async fn get(&self, sa: Option<&str>, sni: Option<&str>, path: &str) -> (u16, String) {
        let tcp = TcpStream::connect(self.server.local_addr()).await.unwrap();
        let Some(sa) = sa else {
            return get(tcp, path).await;
        };
        let connector =
            MeshConnector::new(self.pki.store(sa)).with_alpn(vec![b"http/1.1".to_vec()]);
        let allowed = [self.pki.id("backend")];
        let tls = match sni {
            Some(name) => connector
                .connect_with_sni(
                    tcp,
                    &allowed,
                    ServerName::try_from(name.to_owned()).unwrap(),
                )
                .await
                .unwrap(),
            None => connector.connect(tcp, &allowed).await.unwrap(),
        };
        get(tls, path).await
    }
}

#[tokio::test]
async fn service_accounts_over_real_mtls() {
    let mesh = Mesh::new().await;
    // A bare `frontend` is default/frontend, the policy's namespace's.
    assert_eq!(mesh.get(Some("frontend"), None, "/sa").await.0, 200);
    assert_eq!(mesh.get(Some("intruder"), None, "/sa").await.0, 403);
    assert_eq!(mesh.get(None, None, "/sa").await.0, 403, "plaintext");
    // trustDomains: any verified peer of ours, never plaintext.
    assert_eq!(mesh.get(Some("intruder"), None, "/td").await.0, 200);
    assert_eq!(mesh.get(None, None, "/td").await.0, 403);
    mesh.server.shutdown().await;
}

#[tokio::test]
async fn a_namesake_from_a_federated_trust_domain_is_not_the_meshs_account() {
    let ours = TestPki::new("cluster.local");
    let partner = TestPki::new("partner.example");
    let mut both = TrustBundleSet::new();
    for pki in [&ours, &partner] {
        let set = pki.bundles();
        both.insert(pki.td.clone(), set.get(&pki.td).unwrap().clone());
    }
    let server = server(&CredentialStore::new(
        ours.creds("backend").with_bundles(both.clone()),
    ))
    .await;
    let call = |pki: &TestPki, path: &'static str| {
        let store = CredentialStore::new(pki.creds("frontend").with_bundles(both.clone()));
        let allowed = [ours.id("backend")];
        let addr = server.local_addr();
        async move {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let tls = MeshConnector::new(store)
                .with_alpn(vec![b"http/1.1".to_vec()])
                .connect(tcp, &allowed)
                .await
                .unwrap();
            get(tls, path).await.0
        }
    };
    assert_eq!(call(&ours, "/sa").await, 200);
    // spiffe://partner.example/ns/default/sa/frontend: verified, but not
    // the mesh's default/frontend; nor of the trust domain /td names.
    assert_eq!(call(&partner, "/sa").await, 403);
    assert_eq!(call(&partner, "/td").await, 403);
    server.shutdown().await;
}

#[tokio::test]
async fn connection_sni_over_real_mtls() {
    let mesh = Mesh::new().await;
    let fe = Some("frontend");
    assert_eq!(
        mesh.get(fe, Some("api.mesh.test"), "/sni").await,
        (200, "api.mesh.test".to_owned())
    );
    // Recorded lowercase, compared as the DNS name it is.
    assert_eq!(
        mesh.get(fe, Some("API.Mesh.Test"), "/sni").await,
        (200, "api.mesh.test".to_owned())
    );
    assert_eq!(mesh.get(fe, Some("www.mesh.test"), "/sni").await.0, 403);
    // No SNI (the mesh's own clients send none), or no TLS at all.
    assert_eq!(mesh.get(fe, None, "/sni").await.0, 403);
    assert_eq!(mesh.get(None, None, "/sni").await.0, 403);
    // DENY on the SNI, before any ALLOW.
    assert_eq!(mesh.get(fe, Some("blocked.mesh.test"), "/sa").await.0, 403);
    assert_eq!(mesh.get(fe, Some("other.mesh.test"), "/sa").await.0, 200);
    mesh.server.shutdown().await;
}

#[tokio::test]
async fn tcp_connections_are_decided_on_the_accepted_peer_and_sni() {
    let pki = TestPki::new("cluster.local");
    let acceptor = MeshAcceptor::new(&pki.store("backend"), TlsMode::Strict).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accept = || async {
        let (tcp, remote) = listener.accept().await.unwrap();
        let local = tcp.local_addr().unwrap();
        let stream = acceptor.accept(tcp).await.unwrap();
        layer().check_connection_from(stream.peer_identity(), Some(remote), Some(local))
    };
    let connect = |sa: &'static str, sni: Option<&'static str>| {
        let store = pki.store(sa);
        let allowed = [pki.id("backend")];
        async move {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let c = MeshConnector::new(store);
            match sni {
                Some(n) => c
                    .connect_with_sni(tcp, &allowed, ServerName::try_from(n).unwrap())
                    .await
                    .map(drop),
                None => c.connect(tcp, &allowed).await.map(drop),
            }
        }
    };
    // The ALLOW rules have HTTP paths: never matched at L4. Only the DENY
    // on the SNI can decide, and it does on the real SNI.
    let (d, _) = tokio::join!(accept(), connect("frontend", Some("blocked.mesh.test")));
    assert!(!d.allowed, "{d:?}");
    assert_eq!(
        d.reason,
        "denied by AuthorizationPolicy default/deny rule 0"
    );
    let (d, _) = tokio::join!(accept(), connect("frontend", Some("api.mesh.test")));
    assert_eq!(d.reason, "no ALLOW policy matched", "{d:?}");
    // Without the accepted connection, the SNI is unknown: the DENY holds.
    let d = layer().check_connection(Some(&pki.id("frontend")), None, None);
    assert_eq!(
        d.reason,
        "denied by AuthorizationPolicy default/deny rule 0"
    );
}
