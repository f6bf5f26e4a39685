//! Hostile clients at the gateway (started in the test's runtime, on
//! sockets the test bound). Behind it is a real mesh workload: `web`'s
//! sidecar (STRICT mTLS) in front of the counting app, reached over mesh mTLS as in production, so "the backend
//! never saw it" is measured at the app. The gateway serves, from one
//! Gateway resource:
//!
//! - HTTPS SIMPLE on one port for two hosts, each with its own certificate
//!   (SNI picks it);
//! - HTTPS MUTUAL on another port, client certificates from `clients-ca`;
//! - HTTP with `httpsRedirect`, and plain HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_proxy::{BoundSocket, Gateway, GatewayListeners};
use mesh_tower::server::ServerSettings;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use support::{
    AppSeen, Proxy, TEARDOWN_DRAIN, World, admin_listener, bound, counting_app, exchange,
    files_identity, mesh_config, start_sidecar,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

const BLOG: &str = "blog.example.test";
const API: &str = "api.example.test";
const SECURE: &str = "secure.example.test";
const WAIT: Duration = Duration::from_secs(3);

/// A CA outside the mesh (the edge's public PKI): writes `<name>.crt`, and
/// signs leaves.
struct Pki {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        Self {
            issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    /// A leaf for `dns` with `usage`, as (certificate PEM, key PEM).
    fn leaf(&self, dns: &str, usage: ExtendedKeyUsagePurpose) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![dns.to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, dns);
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn root(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }
}

/// The configuration folder (mesh, Gateway, certificates) and the ports.
struct Files {
    world: World,
    https: u16,
    mutual: u16,
    redirect: u16,
    http: u16,
    servers: Pki,
    clients: Pki,
}

/// The sockets the test bound for the proxies: `web`'s inbound port and
/// the gateway's four.
struct Sockets {
    inbound: BoundSocket,
    servers: Vec<BoundSocket>,
}

impl Files {
    /// Binds the ports and writes the mesh, the Gateway (through `edit`)
    /// and its certificates.
    fn write(edit: impl Fn(String) -> String) -> (Self, Sockets) {
        let world = World::new();
        let inbound = bound();
        let ports: Vec<BoundSocket> = (0..4).map(|_| bound()).collect();
        let [https, mutual, redirect, http] = [0, 1, 2, 3].map(|i| ports[i].local_addr().port());
        world.write_config(
            "mesh.yaml",
            &mesh_config(inbound.local_addr().port(), "STRICT"),
        );
        world.write_config(
            "edge.yaml",
            &edit(gateway_yaml(https, mutual, redirect, http)),
        );
        let certs = world.path("mesh/certs");
        std::fs::create_dir_all(&certs).unwrap();
        let servers = Pki::new("edge servers");
        for host in [BLOG, API, SECURE] {
            let (cert, key) = servers.leaf(host, ExtendedKeyUsagePurpose::ServerAuth);
            std::fs::write(certs.join(format!("{host}.crt")), cert).unwrap();
            std::fs::write(certs.join(format!("{host}.key")), key).unwrap();
        }
        let clients = Pki::new("edge clients");
        std::fs::write(certs.join("clients-ca.crt"), clients.issuer.pem()).unwrap();
        let files = Self {
            world,
            https,
            mutual,
            redirect,
            http,
            servers,
            clients,
        };
        let servers = ports;
        (files, Sockets { inbound, servers })
    }
}

/// The gateway, its backend and the clients' credentials.
struct Edge {
    files: Files,
    web: Proxy,
    gateway: Proxy,
    seen: Arc<AppSeen>,
}

impl std::ops::Deref for Edge {
    type Target = Files;
    fn deref(&self) -> &Files {
        &self.files
    }
}

fn gateway_yaml(https: u16, mutual: u16, redirect: u16, http: u16) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: edge}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {https}, name: https-blog, protocol: HTTPS}}
    tls: {{mode: SIMPLE, serverCertificate: certs/{BLOG}.crt, privateKey: certs/{BLOG}.key}}
    hosts: [{BLOG}]
  - port: {{number: {https}, name: https-api, protocol: HTTPS}}
    tls: {{mode: SIMPLE, serverCertificate: certs/{API}.crt, privateKey: certs/{API}.key}}
    hosts: [{API}]
  - port: {{number: {mutual}, name: https-mutual, protocol: HTTPS}}
    tls: {{mode: MUTUAL, serverCertificate: certs/{SECURE}.crt, privateKey: certs/{SECURE}.key, caCertificates: certs/clients-ca.crt}}
    hosts: [{SECURE}]
  - port: {{number: {redirect}, name: http-redirect, protocol: HTTP}}
    tls: {{httpsRedirect: true}}
    hosts: [{BLOG}]
  - port: {{number: {http}, name: http, protocol: HTTP}}
    hosts: [{BLOG}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: edge}}
spec:
  hosts: [{BLOG}, {API}, {SECURE}]
  gateways: [edge]
  http:
  - route:
    - destination: {{host: web}}
"
    )
}

impl Edge {
    async fn start(settings: ServerSettings) -> Self {
        Self::start_with(settings, |yaml| yaml).await
    }

    /// The gateway of `edit(gateway_yaml(..))`, held to `settings`, and
    /// the sidecar of `web` behind it, both ready.
    async fn start_with(settings: ServerSettings, edit: impl Fn(String) -> String) -> Self {
        Self::start_prepared(settings, edit, |_| {}).await
    }

    /// [`Edge::start_with`], with `prepare` run on the written folder
    /// before anything starts.
    async fn start_prepared(
        settings: ServerSettings,
        edit: impl Fn(String) -> String,
        prepare: impl FnOnce(&Files),
    ) -> Self {
        let (files, sockets) = Files::write(&edit);
        prepare(&files);
        let (app, seen) = counting_app().await;
        let web = start_sidecar(
            &files.world,
            sockets.inbound,
            app,
            files_identity(&files.world, "web"),
            ServerSettings::default(),
            TEARDOWN_DRAIN,
        )
        .await;
        web.ready().await;
        let gateway = gateway(&files.world, sockets.servers, settings).await;
        gateway.ready().await;
        Self {
            files,
            web,
            gateway,
            seen,
        }
    }

    /// Drains the gateway, then the sidecar.
    async fn shutdown(self) {
        self.gateway.shutdown().await;
        self.web.shutdown().await;
    }

    /// A TLS client of the edge trusting its server CA; `sni` false keeps
    /// the server name out of the ClientHello (and verifies the certificate
    /// against `name` all the same).
    fn tls_client(
        &self,
        client_cert: Option<(String, String)>,
        alpn: &[u8],
        sni: bool,
    ) -> tokio_rustls::TlsConnector {
        self.tls_client_of(client_cert, alpn, sni, rustls::DEFAULT_VERSIONS)
    }

    /// The same, speaking only `versions`.
    fn tls_client_of(
        &self,
        client_cert: Option<(String, String)>,
        alpn: &[u8],
        sni: bool,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.servers.root()).unwrap();
        let builder = rustls::ClientConfig::builder_with_provider(mesh_ca::tls::crypto_provider())
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots);
        let mut config = match client_cert {
            Some((cert, key)) => {
                let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .unwrap();
                let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
                builder.with_client_auth_cert(chain, key).unwrap()
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![alpn.to_vec()];
        config.enable_sni = sni;
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }

    /// One `GET path` with HTTP/1.1 over TLS to `port` as `name`; the raw
    /// answer, or the error of the handshake or of the first read.
    async fn https_get(
        &self,
        connector: &tokio_rustls::TlsConnector,
        port: u16,
        name: &str,
        path: &str,
    ) -> Result<String, String> {
        let req = format!("GET {path} HTTP/1.1\r\nhost: {name}\r\nconnection: close\r\n\r\n");
        self.https_raw(connector, port, name, &req).await
    }

    /// Raw bytes to the plain HTTP port; what came back.
    async fn http_raw(&self, port: u16, raw: &[u8]) -> String {
        let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        exchange(&mut tcp, raw, WAIT).await
    }

    fn paths(&self) -> Vec<String> {
        self.seen.paths()
    }
}

/// Starts the gateway for the Gateway `edge` with a files identity
/// (`spiffe://cluster.local/ns/default/sa/edge`) on `servers`, without
/// waiting for it to be ready.
async fn gateway(world: &World, servers: Vec<BoundSocket>, settings: ServerSettings) -> Proxy {
    let handle = Gateway::builder(world.path("mesh"), "edge")
        .identity(files_identity(world, "edge"))
        .server_settings(settings)
        .drain_timeout(TEARDOWN_DRAIN)
        .build()
        .unwrap()
        .start(GatewayListeners {
            admin: admin_listener().await,
            servers,
        })
        .unwrap();
    Proxy::new(handle)
}

/// Asserts the server refused the handshake with `alert`. After a TLS 1.3
/// client has sent its last flight it considers the handshake done, so a
/// refusal of its certificate may instead surface as a reset of the
/// connection it wrote its request on; never as an HTTP answer.
fn refused(what: &str, answer: &Result<String, String>, alert: &str) {
    eprintln!("{what}: {answer:?}");
    match answer {
        Err(e) if e.contains(&format!("received fatal alert: {alert}")) => {}
        Err(e) if e.starts_with("read:") && e.contains("reset") => {}
        other => panic!("{what}: expected the alert {alert}, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_simple_serves_the_hosts_it_has_certificates_for_and_refuses_other_names() {
    let edge = Edge::start(ServerSettings::default()).await;
    let client = edge.tls_client(None, b"http/1.1", true);

    // Each host gets its own certificate (the client verifies the name) and
    // reaches the backend over mesh mTLS: the sidecar vouches for the
    // gateway's identity in XFCC.
    for host in [BLOG, API] {
        let answer = edge
            .https_get(&client, edge.https, host, &format!("/{host}"))
            .await
            .unwrap_or_else(|e| panic!("{host}: {e}"));
        assert_eq!(support::status_of(&answer), Some(200), "{host}: {answer}");
    }
    assert_eq!(edge.paths(), [format!("/{BLOG}"), format!("/{API}")]);
    let xfcc = edge.seen.xfcc.lock().unwrap().clone();
    assert_eq!(
        xfcc, ["URI=spiffe://cluster.local/ns/default/sa/edge"; 2],
        "the backend was not reached as the gateway's mesh identity"
    );

    // h2 over the same listener.
    let tcp = TcpStream::connect(("127.0.0.1", edge.https)).await.unwrap();
    let tls = edge
        .tls_client(None, b"h2", true)
        .connect(ServerName::try_from(BLOG).unwrap(), tcp)
        .await
        .unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let resp = send
        .send_request(
            http::Request::get(format!("https://{BLOG}/h2"))
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    // A name the port has no certificate for: the handshake is refused by
    // the server (an alert), before any certificate is shown.
    let answer = edge
        .https_get(&client, edge.https, "evil.example.test", "/evil")
        .await;
    refused("an unknown SNI", &answer, "AccessDenied");
    assert!(answer.unwrap_err().starts_with("handshake:"));
    // No SNI on a port with two hosts: no certificate can be chosen.
    let no_sni = edge.tls_client(None, b"http/1.1", false);
    let answer = edge.https_get(&no_sni, edge.https, BLOG, "/no-sni").await;
    refused("no SNI on a two-host port", &answer, "AccessDenied");
    assert!(answer.unwrap_err().starts_with("handshake:"));
    assert_eq!(edge.paths().len(), 3, "{:?}", edge.paths());
    edge.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_mutual_refuses_clients_without_a_certificate_of_its_ca() {
    let edge = Edge::start(ServerSettings::default()).await;
    let good = edge
        .clients
        .leaf("alice", ExtendedKeyUsagePurpose::ClientAuth);
    let foreign = Pki::new("someone else").leaf("mallory", ExtendedKeyUsagePurpose::ClientAuth);

    let none = edge.tls_client(None, b"http/1.1", true);
    let answer = edge.https_get(&none, edge.mutual, SECURE, "/none").await;
    refused(
        "MUTUAL without a client certificate",
        &answer,
        "CertificateRequired",
    );
    let foreign = edge.tls_client(Some(foreign), b"http/1.1", true);
    let answer = edge
        .https_get(&foreign, edge.mutual, SECURE, "/foreign")
        .await;
    refused("MUTUAL with another CA's certificate", &answer, "UnknownCA");
    assert!(edge.paths().is_empty(), "{:?}", edge.paths());

    let good = edge.tls_client(Some(good), b"http/1.1", true);
    let answer = edge
        .https_get(&good, edge.mutual, SECURE, "/alice")
        .await
        .unwrap();
    assert_eq!(support::status_of(&answer), Some(200), "{answer}");
    assert_eq!(edge.paths(), ["/alice"]);
    edge.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_is_redirected_to_https_and_unknown_hosts_get_404() {
    let edge = Edge::start(ServerSettings::default()).await;
    let answer = edge
        .http_raw(
            edge.redirect,
            format!(
                "GET /wp-login.php?x=1 HTTP/1.1\r\nhost: {BLOG}:{}\r\nconnection: close\r\n\r\n",
                edge.redirect
            )
            .as_bytes(),
        )
        .await;
    assert_eq!(support::status_of(&answer), Some(301), "{answer}");
    let location = answer
        .lines()
        .find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case("location"))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| panic!("no Location in {answer}"));
    assert_eq!(
        location,
        format!("https://{BLOG}:{}/wp-login.php?x=1", edge.https)
    );

    let answer = edge
        .http_raw(
            edge.http,
            b"GET /other HTTP/1.1\r\nhost: other.example.test\r\nconnection: close\r\n\r\n",
        )
        .await;
    assert_eq!(support::status_of(&answer), Some(404), "{answer}");
    assert!(edge.paths().is_empty(), "{:?}", edge.paths());
    edge.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_shapes_through_the_gateway_never_reach_the_backend() {
    let edge = Edge::start(ServerSettings::default()).await;
    for (what, raw) in [
        (
            "two different Content-Length headers",
            format!(
                "POST /two-cl HTTP/1.1\r\nhost: {BLOG}\r\ncontent-length: 4\r\ncontent-length: 5\r\n\r\nabcde"
            ),
        ),
        (
            "a Content-Length list",
            format!("POST /cl-list HTTP/1.1\r\nhost: {BLOG}\r\ncontent-length: 4, 5\r\n\r\nabcde"),
        ),
        (
            "Transfer-Encoding not ending in chunked",
            format!(
                "POST /te-gzip HTTP/1.1\r\nhost: {BLOG}\r\ntransfer-encoding: chunked, gzip\r\n\r\n0\r\n\r\n"
            ),
        ),
        (
            "a space before the colon",
            format!(
                "POST /te-space HTTP/1.1\r\nhost: {BLOG}\r\ntransfer-encoding : chunked\r\n\r\n0\r\n\r\n"
            ),
        ),
    ] {
        let answer = edge.http_raw(edge.http, raw.as_bytes()).await;
        assert_eq!(
            support::status_of(&answer),
            Some(400),
            "{what}: expected 400, got {answer:?}"
        );
    }
    assert!(edge.paths().is_empty(), "{:?}", edge.paths());

    // Content-Length with Transfer-Encoding: processed as chunked,
    // Content-Length dropped, the connection closed after one answer (RFC
    // 9112 §6.3); the request hidden behind either length never arrives.
    let smuggled = format!("GET /smuggled HTTP/1.1\r\nhost: {BLOG}\r\n\r\n");
    for raw in [
        format!(
            "POST /cl-te HTTP/1.1\r\nhost: {BLOG}\r\ncontent-length: {}\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}",
            5 + smuggled.len()
        ),
        format!(
            "POST /te-cl HTTP/1.1\r\nhost: {BLOG}\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n0\r\n\r\n{smuggled}"
        ),
        format!(
            "POST /te-hides HTTP/1.1\r\nhost: {BLOG}\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{smuggled}\r\n0\r\n\r\n",
            smuggled.len()
        ),
    ] {
        let answer = edge.http_raw(edge.http, raw.as_bytes()).await;
        assert_eq!(
            answer.matches("HTTP/1.1 ").count(),
            1,
            "one request, one answer, then close: {answer:?}"
        );
    }
    let paths = edge.paths();
    assert!(
        !paths.iter().any(|p| p == "/smuggled"),
        "a smuggled request reached the backend: {paths:?}"
    );
    // The same through TLS.
    let client = edge.tls_client(None, b"http/1.1", true);
    let tcp = TcpStream::connect(("127.0.0.1", edge.https)).await.unwrap();
    let mut tls: TlsStream<TcpStream> = client
        .connect(ServerName::try_from(BLOG).unwrap(), tcp)
        .await
        .unwrap();
    let answer = exchange(
        &mut tls,
        format!(
            "POST /tls-two-cl HTTP/1.1\r\nhost: {BLOG}\r\ncontent-length: 4\r\ncontent-length: 5\r\n\r\nabcde"
        )
        .as_bytes(),
        WAIT,
    )
    .await;
    assert_eq!(support::status_of(&answer), Some(400), "{answer:?}");
    assert!(
        !edge
            .paths()
            .iter()
            .any(|p| p == "/tls-two-cl" || p == "/smuggled"),
        "{:?}",
        edge.paths()
    );
    edge.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_from_the_client_are_replaced_at_the_edge() {
    let edge = Edge::start(ServerSettings::default()).await;
    let forged = "x-forwarded-for: 10.6.6.6\r\nX-Forwarded-For: 203.0.113.9\r\n\
                  x-forwarded-proto: https\r\nforwarded: for=10.6.6.6;proto=https\r\n\
                  x-forwarded-host: admin.internal\r\nx-forwarded-port: 443\r\n\
                  x-real-ip: 10.6.6.6\r\nx-forwarded-client-cert: URI=spiffe://cluster.local/ns/default/sa/admin\r\n";
    let answer = edge
        .http_raw(
            edge.http,
            format!("GET /plain HTTP/1.1\r\nhost: {BLOG}\r\n{forged}connection: close\r\n\r\n")
                .as_bytes(),
        )
        .await;
    assert_eq!(support::status_of(&answer), Some(200), "{answer}");
    let client = edge.tls_client(None, b"http/1.1", true);
    let tcp = TcpStream::connect(("127.0.0.1", edge.https)).await.unwrap();
    let mut tls = client
        .connect(ServerName::try_from(BLOG).unwrap(), tcp)
        .await
        .unwrap();
    let answer = exchange(
        &mut tls,
        format!("GET /tls HTTP/1.1\r\nhost: {BLOG}\r\n{forged}connection: close\r\n\r\n")
            .as_bytes(),
        WAIT,
    )
    .await;
    assert_eq!(support::status_of(&answer), Some(200), "{answer}");

    let seen = edge.seen.headers();
    assert_eq!(edge.paths(), ["/plain", "/tls"]);
    for (headers, proto) in seen.iter().zip(["http", "https"]) {
        let all = |name: &str| {
            headers
                .get_all(name)
                .iter()
                .map(|v| v.to_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(all("x-forwarded-for"), ["127.0.0.1"], "{headers:?}");
        assert_eq!(all("x-forwarded-proto"), [proto], "{headers:?}");
        assert_eq!(
            all("x-forwarded-client-cert"),
            ["URI=spiffe://cluster.local/ns/default/sa/edge"],
            "{headers:?}"
        );
        for gone in [
            "forwarded",
            "x-forwarded-host",
            "x-forwarded-port",
            "x-real-ip",
        ] {
            assert!(
                all(gone).is_empty(),
                "{gone} reached the backend: {headers:?}"
            );
        }
    }
    edge.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_tls_handshakes_are_cut_after_the_handshake_timeout() {
    let edge = Edge::start(ServerSettings {
        handshake_timeout: Duration::from_secs(1),
        ..ServerSettings::default()
    })
    .await;
    // The established client: an h2 connection made before the flood.
    let tcp = TcpStream::connect(("127.0.0.1", edge.https)).await.unwrap();
    let tls = edge
        .tls_client(None, b"h2", true)
        .connect(ServerName::try_from(BLOG).unwrap(), tcp)
        .await
        .unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);

    // 100 connections that never finish: silent, three bytes of a
    // ClientHello, a record header promising 16 KiB that never comes.
    let mut flood = Vec::new();
    for i in 0..100 {
        let mut tcp = TcpStream::connect(("127.0.0.1", edge.https)).await.unwrap();
        match i % 3 {
            0 => {}
            1 => tcp.write_all(&[0x16, 0x03, 0x01]).await.unwrap(),
            _ => tcp
                .write_all(&[0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0x00])
                .await
                .unwrap(),
        }
        flood.push((Instant::now(), tcp));
    }
    // Established traffic is served meanwhile.
    for i in 0..5 {
        let resp = send
            .send_request(
                http::Request::get(format!("https://{BLOG}/during-{i}"))
                    .body(Empty::<Bytes>::new())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.into_body().collect().await.unwrap();
    }
    // Every half-open connection is closed by the gateway after about 1 s
    // (generous bound: well under the 10 s default).
    for (opened, mut tcp) in flood {
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(8), async {
            loop {
                match tcp.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        let took = opened.elapsed();
        assert!(read.is_ok(), "a half-open handshake was held {took:?}");
        assert!(
            took >= Duration::from_millis(900),
            "closed after {took:?}, before the handshake timeout"
        );
    }
    let resp = send
        .send_request(
            http::Request::get(format!("https://{BLOG}/after"))
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(edge.paths().len(), 6);
    edge.shutdown().await;
}

/// `minProtocolVersion: TLSV1_3` on one server of a port: that server
/// refuses TLS 1.2 and serves TLS 1.3; the other server of the port keeps
/// its own minimum (each server has a TLS configuration of its own, chosen
/// by SNI, as Istio gives each its own filter chain).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_protocol_version_tls13_refuses_tls12_clients() {
    let edge = Edge::start_with(ServerSettings::default(), |yaml| {
        yaml.replace(
            &format!("tls: {{mode: SIMPLE, serverCertificate: certs/{API}.crt"),
            &format!("tls: {{mode: SIMPLE, minProtocolVersion: TLSV1_3, serverCertificate: certs/{API}.crt"),
        )
    })
    .await;
    let tls12 = edge.tls_client_of(None, b"http/1.1", true, &[&rustls::version::TLS12]);
    let answer = edge.https_get(&tls12, edge.https, API, "/tls12").await;
    refused(&format!("TLS 1.2 to {API}"), &answer, "ProtocolVersion");
    let tls13 = edge.tls_client_of(None, b"http/1.1", true, &[&rustls::version::TLS13]);
    let answer = edge
        .https_get(&tls13, edge.https, API, "/tls13")
        .await
        .unwrap();
    assert_eq!(support::status_of(&answer), Some(200), "{answer}");
    let answer = edge
        .https_get(&tls12, edge.https, BLOG, "/blog-tls12")
        .await
        .unwrap();
    assert_eq!(support::status_of(&answer), Some(200), "{answer}");
    assert_eq!(edge.paths(), ["/tls13", "/blog-tls12"]);
    edge.shutdown().await;
}

/// `subjectAltNames` on a MUTUAL server would restrict which client
/// certificates of the CA get in; the gateway cannot enforce it yet, so it
/// refuses to start rather than let every certificate of the CA in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_restriction_the_gateway_cannot_enforce_fails_closed() {
    let (files, sockets) = Files::write(|yaml| {
        yaml.replace(
            "caCertificates: certs/clients-ca.crt}",
            "caCertificates: certs/clients-ca.crt, subjectAltNames: [alice]}",
        )
    });
    let gateway = gateway(&files.world, sockets.servers, ServerSettings::default()).await;
    // The start fails (`mesh-proxy gateway` prints this error and exits 1).
    let err = tokio::time::timeout(Duration::from_secs(30), gateway.handle.ready())
        .await
        .expect("the gateway neither started nor failed")
        .expect_err("the gateway started with a subjectAltNames it ignores");
    assert!(err.to_string().contains("subjectAltNames"), "{err}");
    for port in [files.https, files.mutual, files.http] {
        assert!(
            TcpStream::connect(("127.0.0.1", port)).await.is_err(),
            "port {port} is open"
        );
    }
    gateway.shutdown().await;
}

/// Rapid reset (CVE-2023-44487) at the edge, over TLS from the internet's
/// side: the gateway serves h2 with the sidecar's limits (one
/// `runtime::serve_http`), so it answers GOAWAY ENHANCE_YOUR_CALM within
/// the first streams, and few of the cancelled requests cost the backend
/// anything, while an established client is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_rapid_reset_at_the_gateway_is_cut_off_with_goaway() {
    const STREAMS: u32 = 10_000;
    let edge = Edge::start(ServerSettings::default()).await;
    let h2 = edge.tls_client(None, b"h2", true);
    let connect = || async {
        let tcp = TcpStream::connect(("127.0.0.1", edge.https)).await.unwrap();
        h2.connect(ServerName::try_from(BLOG).unwrap(), tcp)
            .await
            .unwrap()
    };
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(connect().await))
            .await
            .unwrap();
    tokio::spawn(conn);
    let get = |path: &str| {
        http::Request::get(format!("https://{BLOG}{path}"))
            .body(Empty::<Bytes>::new())
            .unwrap()
    };

    let attack = tokio::spawn(support::h2::rapid_reset(
        connect().await,
        BLOG,
        "/attack",
        STREAMS,
    ));
    let mut during = 0;
    while !attack.is_finished() || during < 3 {
        let resp = tokio::time::timeout(Duration::from_secs(20), send.send_request(get("/during")))
            .await
            .expect("the established client waited 20 s")
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.into_body().collect().await.unwrap();
        during += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let attack = attack.await.unwrap();
    let goaway = attack.goaway().expect("no GOAWAY for a rapid reset");
    assert_eq!(
        goaway.goaway_code(),
        Some(support::h2::ENHANCE_YOUR_CALM),
        "{goaway:?}"
    );
    assert!(attack.closed, "the attacking connection was left open");
    let last = goaway.goaway_last_stream().unwrap();
    assert!(last < STREAMS / 10, "last stream {last}");
    let reached = edge.paths().iter().filter(|p| *p == "/attack").count();
    eprintln!(
        "gateway rapid reset: {} pairs written, last stream {last}, {reached} reached the backend, {during} served meanwhile",
        attack.sent
    );
    assert!(
        reached <= 100,
        "{reached} reset requests reached the backend"
    );
    edge.shutdown().await;
}

impl Edge {
    /// One raw HTTP/1.1 request over TLS to `port`, the ClientHello naming
    /// `sni` (`None`: no SNI; the certificate is then checked against
    /// `verify_as`); the raw answer, or the handshake's error.
    async fn https_raw(
        &self,
        connector: &tokio_rustls::TlsConnector,
        port: u16,
        verify_as: &str,
        raw: &str,
    ) -> Result<String, String> {
        let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let server_name = ServerName::try_from(verify_as.to_owned()).unwrap();
        let mut tls = connector
            .connect(server_name, tcp)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let _ = tls.write_all(raw.as_bytes()).await;
        let mut out = Vec::new();
        match tokio::time::timeout(WAIT, tls.read_to_end(&mut out)).await {
            Ok(Ok(_)) => Ok(String::from_utf8_lossy(&out).into_owned()),
            Ok(Err(e)) if out.is_empty() => Err(format!("read: {e}")),
            Ok(Err(_)) | Err(_) => Ok(String::from_utf8_lossy(&out).into_owned()),
        }
    }

    /// One h2 request over TLS (SNI `sni`) with `authority`; the status.
    async fn h2_status(
        &self,
        connector: &tokio_rustls::TlsConnector,
        port: u16,
        sni: &str,
        authority: &str,
        headers: &[(&str, &str)],
    ) -> Result<(u16, Option<String>), String> {
        let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let tls = connector
            .connect(ServerName::try_from(sni.to_owned()).unwrap(), tcp)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let mut req = http::Request::get(format!("https://{authority}/h2"));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = send
            .send_request(req.body(Empty::<Bytes>::new()).unwrap())
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let reason = resp
            .headers()
            .get("x-mesh-reason")
            .map(|v| v.to_str().unwrap().to_owned());
        let _ = resp.into_body().collect().await;
        Ok((status, reason))
    }
}

/// The status and `x-mesh-reason` of a raw HTTP/1.1 answer.
fn status_and_reason(answer: &str) -> (Option<u16>, Option<String>) {
    let reason = answer.lines().find_map(|l| {
        l.split_once(':')
            .filter(|(k, _)| k.eq_ignore_ascii_case("x-mesh-reason"))
            .map(|(_, v)| v.trim().to_owned())
    });
    (support::status_of(answer), reason)
}

/// Security round 2, class 1 and 6: a host is reachable only through the
/// servers of the Gateway that name it, with their TLS. `secure` is named
/// only by the MUTUAL server, `api` only by a SIMPLE one, `blog` by the
/// other SIMPLE server and both plain ones. Every other pairing of host and
/// server is refused, in every spelling, over HTTP/1.1 and h2, and the
/// backend never sees it: 421 on a TLS connection opened for another
/// server (SNI), 404 on a plain port, and the handshake refused for an SNI
/// no server of the port names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_is_reachable_only_through_the_servers_that_name_it() {
    let edge = Edge::start(ServerSettings::default()).await;
    let simple = edge.tls_client(None, b"http/1.1", true);
    let no_sni = edge.tls_client(None, b"http/1.1", false);
    let alice = edge
        .clients
        .leaf("alice", ExtendedKeyUsagePurpose::ClientAuth);
    let mutual = edge.tls_client(Some(alice), b"http/1.1", true);
    let spellings = |host: &str| {
        [
            host.to_owned(),
            host.to_ascii_uppercase(),
            format!("{host}."),
            format!("{host}:443"),
            format!("{host}.:8443"),
        ]
    };
    let get = |host: &str| format!("GET /x HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n");

    // The MUTUAL-only host on a SIMPLE connection (SNI blog or api): 421.
    for sni in [BLOG, API] {
        for host in spellings(SECURE) {
            let answer = edge
                .https_raw(&simple, edge.https, sni, &get(&host))
                .await
                .unwrap();
            let (status, reason) = status_and_reason(&answer);
            assert_eq!(status, Some(421), "{host} on SNI {sni}: {answer}");
            assert_eq!(reason.as_deref(), Some("misdirected request"), "{answer}");
        }
        // An absolute URI naming it, with a Host of the server: refused too.
        let raw =
            format!("GET https://{SECURE}/x HTTP/1.1\r\nhost: {sni}\r\nconnection: close\r\n\r\n");
        let answer = edge
            .https_raw(&simple, edge.https, sni, &raw)
            .await
            .unwrap();
        assert_eq!(
            support::status_of(&answer),
            Some(400),
            "absolute URI: {answer}"
        );
        let raw = format!(
            "GET https://{SECURE}/x HTTP/1.1\r\nhost: {SECURE}\r\nconnection: close\r\n\r\n"
        );
        let answer = edge
            .https_raw(&simple, edge.https, sni, &raw)
            .await
            .unwrap();
        assert_eq!(
            support::status_of(&answer),
            Some(421),
            "absolute URI: {answer}"
        );
    }
    // The SNI of the MUTUAL host on the SIMPLE port: no server of the port.
    let answer = edge
        .https_raw(&simple, edge.https, SECURE, &get(SECURE))
        .await;
    assert!(answer.is_err(), "{answer:?}");
    // Two servers on the port and no SNI: which one is not guessed.
    let answer = edge.https_raw(&no_sni, edge.https, BLOG, &get(BLOG)).await;
    assert!(answer.is_err(), "{answer:?}");
    // The other SIMPLE server's host on this one's connection: 421.
    for (sni, host) in [(BLOG, API), (API, BLOG)] {
        let answer = edge
            .https_raw(&simple, edge.https, sni, &get(host))
            .await
            .unwrap();
        assert_eq!(
            support::status_of(&answer),
            Some(421),
            "{host} on {sni}: {answer}"
        );
    }
    // SIMPLE hosts on the MUTUAL connection, even with its certificate: 421.
    for host in [BLOG, API] {
        for spelled in spellings(host) {
            let answer = edge
                .https_raw(&mutual, edge.mutual, SECURE, &get(&spelled))
                .await
                .unwrap();
            assert_eq!(
                support::status_of(&answer),
                Some(421),
                "{spelled} on mutual: {answer}"
            );
        }
    }
    // The HTTPS-only hosts in cleartext, on both plain ports: 404, never a
    // redirect that would confirm them.
    for port in [edge.http, edge.redirect] {
        for host in [SECURE, API] {
            for spelled in spellings(host) {
                let answer = edge.http_raw(port, get(&spelled).as_bytes()).await;
                assert_eq!(
                    support::status_of(&answer),
                    Some(404),
                    "{spelled} on {port}: {answer}"
                );
            }
        }
    }
    // Over h2 the same: :authority of another server is misdirected.
    let h2 = edge.tls_client(None, b"h2", true);
    for authority in [
        SECURE,
        API,
        "SECURE.example.test",
        "secure.example.test.:443",
    ] {
        let (status, _) = edge
            .h2_status(&h2, edge.https, BLOG, authority, &[])
            .await
            .unwrap();
        assert_eq!(status, 421, "h2 {authority} on SNI {BLOG}");
    }
    assert!(
        edge.paths().is_empty(),
        "the backend saw {:?}",
        edge.paths()
    );

    // And each host is served through its own servers.
    let answer = edge
        .https_raw(&simple, edge.https, API, &get(API))
        .await
        .unwrap();
    assert_eq!(support::status_of(&answer), Some(200), "{answer}");
    let answer = edge
        .https_raw(&simple, edge.https, BLOG, &get(&format!("{BLOG}:443")))
        .await
        .unwrap();
    assert_eq!(support::status_of(&answer), Some(200), "{answer}");
    let answer = edge
        .https_raw(&mutual, edge.mutual, SECURE, &get(SECURE))
        .await
        .unwrap();
    assert_eq!(support::status_of(&answer), Some(200), "{answer}");
    let answer = edge.http_raw(edge.http, get(BLOG).as_bytes()).await;
    assert_eq!(support::status_of(&answer), Some(200), "{answer}");
    let (status, _) = edge
        .h2_status(&h2, edge.https, BLOG, BLOG, &[])
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(edge.paths(), ["/x", "/x", "/x", "/x", "/h2"]);
    edge.shutdown().await;
}

/// Security round 2, classes 2, 3 and 5 and the edge's reasons: what the
/// gateway lets through reads one way at the backend, and its refusals say
/// only their class.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_forwards_only_requests_that_read_one_way() {
    let edge = Edge::start(ServerSettings::default()).await;
    let simple = edge.tls_client(None, b"http/1.1", true);
    let raw = |extra: &str| {
        format!("GET /u HTTP/1.1\r\nhost: {BLOG}\r\n{extra}connection: close\r\n\r\n")
    };
    for extra in [
        "x_role: root\r\n",
        "X_Forwarded_Client_Cert: URI=spiffe://cluster.local/ns/default/sa/admin\r\n",
        "x_forwarded_for: 10.0.0.1\r\n",
        "_: x\r\n",
    ] {
        for answer in [
            edge.http_raw(edge.http, raw(extra).as_bytes()).await,
            edge.https_raw(&simple, edge.https, BLOG, &raw(extra))
                .await
                .unwrap(),
        ] {
            let (status, reason) = status_and_reason(&answer);
            assert_eq!(status, Some(400), "{extra:?}: {answer}");
            assert_eq!(reason.as_deref(), Some("bad request"), "{answer}");
        }
    }
    for bad in [
        "GET /u HTTP/1.1\r\nconnection: close\r\n\r\n".to_owned(),
        format!("GET /u HTTP/1.1\r\nhost: user@{BLOG}\r\nconnection: close\r\n\r\n"),
        format!("GET /u HTTP/1.1\r\nhost: {BLOG}..\r\nconnection: close\r\n\r\n"),
        format!("GET http://{API}/u HTTP/1.1\r\nhost: {BLOG}\r\nconnection: close\r\n\r\n"),
    ] {
        let answer = edge.http_raw(edge.http, bad.as_bytes()).await;
        assert_eq!(support::status_of(&answer), Some(400), "{bad:?}: {answer}");
    }
    assert!(
        edge.paths().is_empty(),
        "the backend saw {:?}",
        edge.paths()
    );

    // h2 carries whitespace around values: the backend gets them trimmed.
    let h2 = edge.tls_client(None, b"h2", true);
    let (status, _) = edge
        .h2_status(&h2, edge.https, BLOG, BLOG, &[("x-role", " root\t")])
        .await
        .unwrap();
    assert_eq!(status, 200);
    let seen = edge.seen.headers();
    assert_eq!(seen.last().unwrap()["x-role"], "root");

    // Unknown hosts and dead ends say their class, not the detail.
    let answer = edge
        .http_raw(
            edge.http,
            b"GET / HTTP/1.1\r\nhost: nope.example.test\r\nconnection: close\r\n\r\n",
        )
        .await;
    let (status, reason) = status_and_reason(&answer);
    assert_eq!(status, Some(404), "{answer}");
    assert_eq!(reason.as_deref(), Some("no route"), "{answer}");
    assert!(!answer.contains("Gateway"), "{answer}");
    edge.shutdown().await;
}

/// Writes `files` as the kubelet mounts a Secret volume at `dir`: the data
/// in a timestamped folder, `..data` a symlink to it, each key a symlink
/// through `..data` (so an update is one atomic rename).
fn mount_secret(dir: &std::path::Path, files: &[(&str, &[u8])]) {
    let data = dir.join("..2026_12_03_10_00_00.123456789");
    std::fs::create_dir_all(&data).unwrap();
    for (key, bytes) in files {
        std::fs::write(data.join(key), bytes).unwrap();
    }
    std::os::unix::fs::symlink(data.file_name().unwrap(), dir.join("..data")).unwrap();
    for (key, _) in files {
        std::os::unix::fs::symlink(format!("..data/{key}"), dir.join(key)).unwrap();
    }
}

/// `credentialName`, as Istio's Gateways name their certificates on
/// Kubernetes: read from the Secret mounted under the credentials folder,
/// as a `kubernetes.io/tls` Secret (`tls.crt`, `tls.key`) or Istio's
/// generic one (`cert`, `key`) with the client CA in `NAME-cacert`
/// (`cacert`) for MUTUAL. A Secret that is not there stops the start,
/// naming it; a name that is a path, or given with certificate files, is
/// refused by field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credential_name_reads_the_mounted_secret() {
    let by_name = |yaml: String| {
        yaml.replace(
            &format!("serverCertificate: certs/{BLOG}.crt, privateKey: certs/{BLOG}.key"),
            "credentialName: blog-cert",
        )
        .replace(
            &format!(
                "serverCertificate: certs/{SECURE}.crt, privateKey: certs/{SECURE}.key, caCertificates: certs/clients-ca.crt"
            ),
            "credentialName: secure-cert",
        )
    };
    let edge = Edge::start_prepared(ServerSettings::default(), by_name, |files| {
        let mesh = files.world.path("mesh");
        let read = |f: &str| std::fs::read(mesh.join("certs").join(f)).unwrap();
        mount_secret(
            &mesh.join("blog-cert"),
            &[
                ("tls.crt", &read(&format!("{BLOG}.crt"))),
                ("tls.key", &read(&format!("{BLOG}.key"))),
            ],
        );
        mount_secret(
            &mesh.join("secure-cert"),
            &[
                ("cert", &read(&format!("{SECURE}.crt"))),
                ("key", &read(&format!("{SECURE}.key"))),
            ],
        );
        mount_secret(
            &mesh.join("secure-cert-cacert"),
            &[("cacert", &read("clients-ca.crt"))],
        );
        // The files the Gateway no longer names are gone: nothing is read
        // from them.
        for host in [BLOG, SECURE] {
            std::fs::remove_file(mesh.join("certs").join(format!("{host}.crt"))).unwrap();
            std::fs::remove_file(mesh.join("certs").join(format!("{host}.key"))).unwrap();
        }
        std::fs::remove_file(mesh.join("certs/clients-ca.crt")).unwrap();
    })
    .await;
    let client = edge.tls_client(None, b"http/1.1", true);
    let answer = edge
        .https_get(&client, edge.https, BLOG, "/blog")
        .await
        .unwrap();
    assert_eq!(support::status_of(&answer), Some(200), "{answer}");
    let answer = edge.https_get(&client, edge.mutual, SECURE, "/none").await;
    refused(
        "MUTUAL without a client certificate",
        &answer,
        "CertificateRequired",
    );
    let alice = edge
        .clients
        .leaf("alice", ExtendedKeyUsagePurpose::ClientAuth);
    let alice = edge.tls_client(Some(alice), b"http/1.1", true);
    let answer = edge
        .https_get(&alice, edge.mutual, SECURE, "/alice")
        .await
        .unwrap();
    assert_eq!(support::status_of(&answer), Some(200), "{answer}");
    assert_eq!(edge.paths(), ["/blog", "/alice"]);
    edge.shutdown().await;

    // The Secret is not mounted: the start fails naming it and the folder.
    let (files, sockets) = Files::write(by_name);
    let gateway = gateway(&files.world, sockets.servers, ServerSettings::default()).await;
    let err = tokio::time::timeout(Duration::from_secs(30), gateway.handle.ready())
        .await
        .expect("the gateway neither started nor failed")
        .expect_err("started without its certificate");
    let err = format!("{err:#}");
    assert!(
        (err.contains("credentialName \"blog-cert\"")
            || err.contains("credentialName \"secure-cert\""))
            && err.contains(&format!("{}/", files.world.path("mesh").display()))
            && err.contains("tls.crt and tls.key"),
        "{err}"
    );
    gateway.shutdown().await;

    // Refused by field before anything is read.
    for (tls, why) in [
        (
            "{mode: SIMPLE, credentialName: ../certs}",
            "is not a Secret name",
        ),
        (
            "{mode: SIMPLE, credentialName: a/b}",
            "is not a Secret name",
        ),
        (
            "{mode: SIMPLE, credentialName: blog-cert, serverCertificate: c.pem, privateKey: k.pem}",
            "give one or the other",
        ),
    ] {
        let yaml = [
            "apiVersion: networking.istio.io/v1".to_owned(),
            "kind: Gateway".to_owned(),
            "metadata: {name: edge}".to_owned(),
            "spec:".to_owned(),
            "  selector: {istio: ingressgateway}".to_owned(),
            "  servers:".to_owned(),
            "  - port: {number: 443, name: https, protocol: HTTPS}".to_owned(),
            format!("    tls: {tls}"),
            format!("    hosts: [{BLOG}]"),
        ]
        .join("\n");
        let e = mesh_core::load::load_str(std::path::Path::new("edge.yaml"), &yaml)
            .and_then(|r| mesh_core::snapshot::compile(&r).map(|_| r))
            .expect_err(tls)
            .to_string();
        assert!(
            e.contains("spec.servers[0].tls.credentialName") && e.contains(why),
            "{tls}: {e}"
        );
    }
}

/// Istio's most common JWT setup: RequestAuthentication and
/// AuthorizationPolicy on the ingress gateway (`selector: {istio:
/// ingressgateway}`, the labels its Gateway selects). They decide at the
/// edge: no token on `/admin` is 403, a bad token anywhere is 401, a
/// valid one passes with its token removed; a DENY on the gateway's own
/// port holds. The backend sees only what was let through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_authentication_and_authorization_decide_at_the_gateway() {
    use mesh_core::jwt::{Algorithm, sign_for_test, test_es256_key};
    let (key, jwks) = test_es256_key("edge-1").unwrap();
    let jwks = serde_json::to_string(&jwks).unwrap();
    let edge = Edge::start_with(ServerSettings::default(), move |yaml| {
        // Claim routing (gateway routes only): the ops group gets the
        // mesh's own answer, everyone else the backend.
        let yaml = yaml.replace(
            "  http:\n  - route:",
            "  http:\n  - match: [{headers: {\"@request.auth.claims.groups\": {exact: ops}}}]\n    \
             directResponse: {status: 418, body: {string: ops}}\n  - route:",
        );
        format!(
            "{yaml}---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: edge-jwt}}
spec:
  selector: {{matchLabels: {{istio: ingressgateway}}}}
  jwtRules: [{{issuer: \"https://idp.example\", jwks: {jwks}}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: edge-admin}}
spec:
  selector: {{matchLabels: {{istio: ingressgateway}}}}
  action: DENY
  rules:
  - from: [{{source: {{notRequestPrincipals: [\"*\"]}}}}]
    to: [{{operation: {{paths: [\"/admin*\"]}}}}]
  - to: [{{operation: {{paths: [\"/blocked\"]}}}}]
"
        )
    })
    .await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let sign_with = |exp: u64, groups: &[&str]| {
        let claims = serde_json::json!({"iss": "https://idp.example", "sub": "ops", "exp": exp, "groups": groups});
        sign_for_test(Algorithm::ES256, Some("edge-1"), &key, &claims).unwrap()
    };
    let sign = |exp: u64| sign_with(exp, &["dev"]);
    let (good, expired) = (sign(now + 600), sign(now - 600));
    let get = |path: &str, token: Option<&str>| {
        let auth = token
            .map(|t| format!("authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        format!("GET {path} HTTP/1.1\r\nhost: {BLOG}\r\n{auth}connection: close\r\n\r\n")
    };
    let status = |answer: &str| support::status_of(answer);
    let a = edge
        .http_raw(edge.http, get("/admin", None).as_bytes())
        .await;
    assert_eq!(status(&a), Some(403), "{a}");
    let a = edge
        .http_raw(edge.http, get("/page", Some(&expired)).as_bytes())
        .await;
    assert_eq!(status(&a), Some(401), "{a}");
    assert!(
        a.to_ascii_lowercase().contains("www-authenticate: bearer"),
        "{a}"
    );
    let a = edge
        .http_raw(edge.http, get("/blocked", Some(&good)).as_bytes())
        .await;
    assert_eq!(status(&a), Some(403), "{a}");
    assert!(
        edge.paths().is_empty(),
        "nothing refused reached the backend: {:?}",
        edge.paths()
    );
    let a = edge
        .http_raw(edge.http, get("/admin", Some(&good)).as_bytes())
        .await;
    assert_eq!(status(&a), Some(200), "{a}");
    let a = edge
        .http_raw(edge.http, get("/page", None).as_bytes())
        .await;
    assert_eq!(status(&a), Some(200), "{a}");
    assert_eq!(edge.paths(), ["/admin", "/page"]);
    // A claim of the validated token picks the route; a header that
    // spells the claim is no claim.
    let ops = sign_with(now + 600, &["dev", "ops"]);
    let a = edge
        .http_raw(edge.http, get("/page", Some(&ops)).as_bytes())
        .await;
    assert_eq!(status(&a), Some(418), "{a}");
    let a = edge
        .http_raw(
            edge.http,
            format!("GET /page HTTP/1.1\r\nhost: {BLOG}\r\nrequest.auth.claims.groups: ops\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await;
    assert_eq!(status(&a), Some(200), "{a}");
    let seen = edge.seen.headers();
    assert!(
        seen[0].get("authorization").is_none(),
        "the validated token is not forwarded: {:?}",
        seen[0]
    );
    edge.shutdown().await;
}
