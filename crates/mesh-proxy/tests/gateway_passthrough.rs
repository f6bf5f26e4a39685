//! TLS routed by SNI without being opened. A Gateway's TLS PASSTHROUGH
//! server: the client's TLS reaches the
//! backend unopened (the backend's certificate is the one the client
//! verifies; the gateway has none), routed by SNI through a VirtualService
//! `tls` route, over mesh mTLS to the backend's sidecar. A connection with
//! an SNI nothing routes, without SNI, or denied by the gateway's policy is
//! closed and never reaches the backend.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use mesh_tower::server::ServerSettings;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls_pki_types::ServerName;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const APP_HOST: &str = "tls.example.test";
const BLOCKED_HOST: &str = "blocked.example.test";

/// The backend's own PKI: a CA and a leaf for `APP_HOST` and
/// `BLOCKED_HOST`. Only the client and the backend have them.
struct Backend {
    ca: CertifiedIssuer<'static, KeyPair>,
    port: u16,
    handshakes: Arc<AtomicUsize>,
}

impl Backend {
    /// A TLS server for the gateway's hosts that answers every line with
    /// `backend: <line>`.
    async fn start() -> Self {
        Self::named("backend", &[APP_HOST, BLOCKED_HOST]).await
    }

    /// A TLS server for `hosts` that answers every line with
    /// `<name>: <line>`.
    async fn named(name: &'static str, hosts: &[&str]) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, "app CA");
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let leaf =
            CertificateParams::new(hosts.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>())
                .unwrap()
                .signed_by(&key, &ca)
                .unwrap();
        let config = rustls::ServerConfig::builder_with_provider(mesh_ca::tls::crypto_provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone()],
                rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let handshakes = Arc::new(AtomicUsize::new(0));
        let h = handshakes.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let (acceptor, h) = (acceptor.clone(), h.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    h.fetch_add(1, Ordering::SeqCst);
                    let mut buf = vec![0u8; 4096];
                    while let Ok(n) = tls.read(&mut buf).await {
                        if n == 0 {
                            return;
                        }
                        let mut out = format!("{name}: ").into_bytes();
                        out.extend_from_slice(&buf[..n]);
                        if tls.write_all(&out).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Self {
            ca,
            port,
            handshakes,
        }
    }

    /// A client trusting the backend's CA (and nothing else).
    fn client(&self, sni: bool) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        let mut config =
            rustls::ClientConfig::builder_with_provider(mesh_ca::tls::crypto_provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        config.enable_sni = sni;
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }
}

/// The mesh: `web` (the backend, behind its sidecar, port 443 TLS), the
/// Gateway `edge` with a PASSTHROUGH server for both hosts on `edge_port`,
/// its VirtualService's `tls` route, and a DENY of `BLOCKED_HOST` by SNI
/// on the gateway workload.
fn mesh(inbound: u16, edge_port: u16) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: web}}\n\
         spec: {{hosts: [web], ports: [{{number: 443, name: tls, protocol: TLS}}], workloadSelector: {{labels: {{app: web}}}}}}\n---\n\
         apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: web}}\n\
         spec: {{address: 127.0.0.1, ports: {{tls: {inbound}}}, labels: {{app: web}}, serviceAccount: web}}\n---\n\
         apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: edge}}\n\
         spec: {{address: 127.0.0.1, labels: {{istio: ingressgateway}}, serviceAccount: edge}}\n---\n\
         apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: strict}}\n\
         spec: {{mtls: {{mode: STRICT}}}}\n---\n\
         apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: edge}}\n\
         spec:\n  selector: {{istio: ingressgateway}}\n  servers:\n\
         \x20 - port: {{number: {edge_port}, name: tls-app, protocol: TLS}}\n    tls: {{mode: PASSTHROUGH}}\n    hosts: [{APP_HOST}, {BLOCKED_HOST}]\n---\n\
         apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: edge}}\n\
         spec:\n  hosts: [{APP_HOST}, {BLOCKED_HOST}]\n  gateways: [edge]\n  tls:\n\
         \x20 - match: [{{port: {edge_port}, sniHosts: [{APP_HOST}, {BLOCKED_HOST}]}}]\n    route: [{{destination: {{host: web, port: {{number: 443}}}}}}]\n---\n\
         apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: no-blocked}}\n\
         spec:\n  selector: {{matchLabels: {{istio: ingressgateway}}}}\n  action: DENY\n  rules: [{{when: [{{key: connection.sni, values: [{BLOCKED_HOST}]}}]}}]\n"
    )
}

/// TLS to the gateway as `name`, one line sent: what came back, or why the
/// handshake or the read failed.
async fn talk(
    connector: &tokio_rustls::TlsConnector,
    edge: SocketAddr,
    name: &str,
) -> Result<String, String> {
    let tcp = TcpStream::connect(edge).await.unwrap();
    let server = ServerName::try_from(name.to_owned()).unwrap();
    let mut tls = tokio::time::timeout(Duration::from_secs(10), connector.connect(server, tcp))
        .await
        .map_err(|_| "handshake timed out".to_owned())?
        .map_err(|e| format!("handshake: {e}"))?;
    tls.write_all(b"hello\n").await.map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf))
        .await
        .map_err(|_| "read timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_routes_the_clients_tls_by_sni_to_the_backend_unopened() {
    let world = World::new();
    let backend = Backend::start().await;
    let inbound = bound();
    let edge = bound();
    let edge_addr = edge.local_addr();
    world.write_config(
        "mesh.yaml",
        &mesh(inbound.local_addr().port(), edge_addr.port()),
    );
    let web = start_sidecar(
        &world,
        inbound,
        backend.port,
        files_identity(&world, "web"),
        ServerSettings::default(),
        TEARDOWN_DRAIN,
    )
    .await;
    web.ready().await;
    let gateway = ready_gateway(&world, vec![edge]).await;

    // The client verifies the backend's own certificate through the
    // gateway, and talks to it.
    let client = backend.client(true);
    for _ in 0..3 {
        assert_eq!(
            talk(&client, edge_addr, APP_HOST).await,
            Ok("backend: hello\n".to_owned())
        );
    }
    assert_eq!(backend.handshakes.load(Ordering::SeqCst), 3);

    // Refused, and never at the backend: an SNI no server names, no SNI,
    // an SNI the gateway's policy denies, and bytes that are no TLS.
    for (what, connector, name) in [
        ("unknown SNI", backend.client(true), "other.example.test"),
        ("no SNI", backend.client(false), APP_HOST),
        ("denied SNI", backend.client(true), BLOCKED_HOST),
    ] {
        let got = talk(&connector, edge_addr, name).await;
        assert!(got.is_err(), "{what}: {got:?}");
    }
    let mut tcp = TcpStream::connect(edge_addr).await.unwrap();
    let answer = exchange(
        &mut tcp,
        b"GET / HTTP/1.1\r\nhost: x\r\n\r\n",
        Duration::from_secs(3),
    )
    .await;
    assert_eq!(answer, "", "plaintext got {answer:?}");
    assert_eq!(backend.handshakes.load(Ordering::SeqCst), 3);

    // The gateway counts the connections it passed on, as the source.
    let (status, metrics) = http_get(&gateway.admin_url("/stats/prometheus"))
        .await
        .unwrap();
    assert_eq!(status, 200);
    let opened = metrics
        .lines()
        .find(|l| {
            l.starts_with("istio_tcp_connections_opened_total{")
                && l.contains("reporter=\"source\"")
                && l.contains("destination_service=\"web.default.svc.cluster.local\"")
                && l.contains("response_flags=\"-\"")
        })
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(opened.ends_with(" 3"), "{opened}");
    // The backend's sidecar took them over mesh mTLS from the gateway.
    let (_, metrics) = http_get(&web.admin_url("/stats/prometheus")).await.unwrap();
    let inbound = metrics
        .lines()
        .find(|l| {
            l.starts_with("istio_tcp_connections_opened_total{")
                && l.contains("reporter=\"destination\"")
                && l.contains("connection_security_policy=\"mutual_tls\"")
                && l.contains("source_principal=\"spiffe://cluster.local/ns/default/sa/edge\"")
        })
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(inbound.ends_with(" 3"), "{inbound}");

    gateway.shutdown().await;
    web.shutdown().await;
}

/// A sidecar routes a TLS port by SNI (a mesh VirtualService's `tls`
/// route): the app's TLS to `egress.example.test:443` naming
/// `b.example.test` goes to that service, any other SNI to the port's own
/// endpoints; the app verifies each backend's own certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_routes_a_tls_port_by_sni() {
    use mesh_proxy::OutboundListener;
    let world = World::new();
    let a = Backend::named("a", &["egress.example.test"]).await;
    let b = Backend::named("b", &["b.example.test"]).await;
    world.write_config(
        "mesh.yaml",
        &format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: egress}}\n\
             spec: {{hosts: [egress.example.test], location: MESH_EXTERNAL, resolution: STATIC, ports: [{{number: 443, name: tls, protocol: TLS}}], endpoints: [{{address: 127.0.0.1, ports: {{tls: {}}}}}]}}\n---\n\
             apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: b}}\n\
             spec: {{hosts: [b.example.test], location: MESH_EXTERNAL, resolution: STATIC, ports: [{{number: 443, name: tls, protocol: TLS}}], endpoints: [{{address: 127.0.0.1, ports: {{tls: {}}}}}]}}\n---\n\
             apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: client}}\n\
             spec: {{address: 127.0.0.1, labels: {{app: client}}, serviceAccount: client}}\n---\n\
             apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: egress}}\n\
             spec:\n  hosts: [egress.example.test, b.example.test]\n  tls:\n\
             \x20 - match: [{{port: 443, sniHosts: [b.example.test]}}]\n    route: [{{destination: {{host: b.example.test, port: {{number: 443}}}}}}]\n",
            a.port, b.port
        ),
    );
    let out = bound();
    let outbound = out.local_addr();
    let client = client_sidecar(
        &world,
        vec![OutboundListener::new("egress.example.test", 443, out)],
    )
    .await;
    client.ready().await;

    for _ in 0..2 {
        assert_eq!(
            talk(&b.client(true), outbound, "b.example.test").await,
            Ok("b: hello\n".to_owned())
        );
        assert_eq!(
            talk(&a.client(true), outbound, "egress.example.test").await,
            Ok("a: hello\n".to_owned())
        );
    }
    assert_eq!(b.handshakes.load(Ordering::SeqCst), 2);
    assert_eq!(a.handshakes.load(Ordering::SeqCst), 2);
    // Plaintext on a port routed by SNI is no ClientHello: closed.
    let mut tcp = TcpStream::connect(outbound).await.unwrap();
    let answer = exchange(&mut tcp, b"hello\n", Duration::from_secs(3)).await;
    assert_eq!(answer, "");
    // Each is counted as the service it went to.
    let (_, metrics) = http_get(&client.admin_url("/stats/prometheus"))
        .await
        .unwrap();
    for host in ["b.example.test", "egress.example.test"] {
        let line = metrics
            .lines()
            .find(|l| {
                l.starts_with("istio_tcp_connections_opened_total{")
                    && l.contains(&format!("destination_service=\"{host}\""))
            })
            .unwrap_or_else(|| panic!("{host}: {metrics}"));
        assert!(line.ends_with(" 2"), "{line}");
    }
    client.shutdown().await;
}
