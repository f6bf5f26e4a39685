#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The control plane in process, on listeners bound to port 0: the CA's
//! signing service served through `mesh_tower::server` (tokens, renewals by
//! mTLS, refusals), its metrics endpoint scraped over HTTP, the server
//! settings held on the CA's connections as on every listener, and the
//! request timeout that bounds a request the settings cannot.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mesh_ca::service::ca_identity;
use mesh_ca::{
    CaClient, CertManager, CertificateAuthority, ManagerConfig, SignError, TokenStore, TrustBundle,
    TrustBundleSet,
};
use mesh_control::{ControlPlane, ControlPlaneConfig};
use mesh_core::identity::{SpiffeId, TrustDomain};
use mesh_tower::server::ServerSettings;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn td() -> TrustDomain {
    TrustDomain::new("cluster.local").unwrap()
}

fn id(sa: &str) -> SpiffeId {
    SpiffeId::for_workload(&td(), "default", sa).unwrap()
}

struct Fixture {
    dir: tempfile::TempDir,
    ca: Arc<CertificateAuthority>,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = Arc::new(CertificateAuthority::init_dir(dir.path(), td()).unwrap());
        Self { dir, ca }
    }

    async fn start(&self, config: ControlPlaneConfig) -> ControlPlane {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        ControlPlane::start(
            self.ca.clone(),
            TokenStore::new(self.dir.path()),
            listener,
            config,
        )
        .await
        .unwrap()
    }

    fn token(&self, sa: &str) -> String {
        TokenStore::new(self.dir.path())
            .create(&id(sa), Duration::from_secs(60))
            .unwrap()
    }

    fn bootstrap(&self) -> TrustBundleSet {
        TrustBundleSet::single(
            td(),
            TrustBundle::new(vec![self.ca.root().clone()]).unwrap(),
        )
    }

    fn client(&self, plane: &ControlPlane) -> CaClient {
        CaClient::new(
            plane.ca_addr().to_string(),
            ca_identity(&self.ca).unwrap(),
            self.bootstrap(),
        )
        .with_timeout(Duration::from_secs(5))
    }
}

fn csr() -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    rcgen::CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap()
}

/// One HTTP/1.1 request on a new connection; the status code, the head and
/// the body.
async fn http(addr: std::net::SocketAddr, method: &str, path: &str) -> (u16, String, String) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let req = format!("{method} {path} HTTP/1.1\r\nHost: ca\r\nConnection: close\r\n\r\n");
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut raw))
        .await
        .expect("no answer from the metrics endpoint")
        .unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head.to_owned(), body.to_owned())
}

/// The `# HELP` and `# TYPE` lines of the metrics named `prefix*`.
fn meta_lines<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
    text.lines()
        .filter(|l| {
            l.strip_prefix("# HELP ")
                .or_else(|| l.strip_prefix("# TYPE "))
                .is_some_and(|rest| rest.starts_with(prefix))
        })
        .collect()
}

/// The value of the sample `series` (name and labels, as rendered).
fn sample(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_counts_what_the_ca_issued_and_refused_in_the_proxys_words() {
    let fx = Fixture::new();
    let metrics = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let plane = fx
        .start(ControlPlaneConfig::default())
        .await
        .with_metrics(metrics)
        .unwrap();
    let scrape_addr = plane.metrics_addr().unwrap();

    // Before anything: every family is there, at zero.
    let (status, _, before) = http(scrape_addr, "GET", "/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(sample(&before, "mesh_ca_certificates_issued_total"), 0);

    // A workload gets its first certificate with a join token, as
    // mesh-proxy's identity does...
    let token = fx.token("web");
    let client = Arc::new(fx.client(&plane).with_token(token.clone()));
    let config = ManagerConfig {
        first_fetch_timeout: Duration::from_secs(5),
        ..ManagerConfig::default()
    };
    let workload = CertManager::start(id("web"), client.clone(), config)
        .await
        .unwrap();
    assert_eq!(workload.store().load().id(), &id("web"));
    // ...and renews by mTLS: the CA read the client's SVID from the
    // connection, through the server module, into the request.
    let renewed = client
        .create_certificate(
            csr(),
            Duration::from_secs(600),
            Some(workload.store().load()),
        )
        .await
        .unwrap();
    assert!(!renewed.is_empty());

    // Refused: the spent token, a CSR that is not one, a token nobody made.
    let spent = fx.client(&plane).with_token(token);
    let err = spent
        .create_certificate(csr(), Duration::ZERO, None)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, SignError::Refused(m) if m.contains("Unauthenticated")),
        "{err}"
    );
    let bad_csr = fx.client(&plane).with_token(fx.token("web"));
    let err = bad_csr
        .create_certificate("not a CSR".into(), Duration::ZERO, None)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, SignError::Refused(m) if m.contains("InvalidArgument")),
        "{err}"
    );
    let made_up = fx.client(&plane).with_token("bm90LWEtdG9rZW4");
    assert!(
        made_up
            .create_certificate(csr(), Duration::ZERO, None)
            .await
            .is_err()
    );

    let (status, head, text) = http(scrape_addr, "GET", "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    assert_eq!(sample(&text, "mesh_ca_certificates_issued_total"), 2);
    let refused = |reason: &str| {
        sample(
            &text,
            &format!("mesh_ca_requests_refused_total{{reason=\"{reason}\"}}"),
        )
    };
    assert_eq!(refused("unauthenticated"), 2);
    assert_eq!(refused("invalid_csr"), 1);
    assert_eq!(refused("foreign_trust_domain"), 0);
    assert_eq!(refused("internal"), 0);
    for name in [
        "mesh_ca_certificates_issued_total",
        "mesh_ca_requests_refused_total",
    ] {
        assert!(text.contains(&format!("# HELP {name} ")), "{text}");
        assert!(text.contains(&format!("# TYPE {name} counter\n")), "{text}");
    }
    // The endpoint's numbers are the service's.
    assert_eq!(plane.ca_metrics().issued(), 2);
    // Istio's build metric, as its "Istio Component Versions" panel reads it.
    assert!(
        text.contains(&format!(
            "\nistio_build{{component=\"pilot\",tag=\"{}\"}} 1\n",
            env!("CARGO_PKG_VERSION")
        )),
        "{text}"
    );
    assert!(text.contains("# TYPE istio_build gauge\n"), "{text}");

    // The CA's own serving certificate, in the very lines mesh-proxy's
    // admin renders for its certificate (`Identity::metrics` is
    // `CertManager::metrics().render()`): one definition of each.
    let mut proxy = String::new();
    workload.metrics().render(&mut proxy);
    let ours = meta_lines(&text, "mesh_cert_");
    assert_eq!(ours.len(), 6, "{text}");
    assert_eq!(ours, meta_lines(&proxy, "mesh_cert_"));
    assert!(sample(&text, "mesh_cert_renewals_total") >= 1);
    let expiry = sample(&text, "mesh_cert_expiry_timestamp_seconds");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        expiry > now,
        "the CA's certificate expires at {expiry}, now {now}"
    );

    // Only the metrics paths, only reads.
    let (status, _, other) = http(scrape_addr, "GET", "/stats/prometheus").await;
    assert_eq!(status, 200);
    assert!(other.contains("# TYPE mesh_ca_certificates_issued_total counter"));
    assert_eq!(http(scrape_addr, "GET", "/config_dump").await.0, 404);
    let (status, head, _) = http(scrape_addr, "POST", "/metrics").await;
    assert_eq!(status, 405);
    assert!(
        head.to_ascii_lowercase().contains("allow: get, head"),
        "{head}"
    );

    plane.shutdown().await;
    // Drained: nothing listens any more.
    assert!(TcpStream::connect(scrape_addr).await.is_err());
}

/// A TLS client of the CA without a certificate, offering h2.
fn tls_client(fx: &Fixture) -> tokio_rustls::TlsConnector {
    let verifier = mesh_ca::tls::SpiffeServerVerifier::with_bundles(
        Arc::new(fx.bootstrap()),
        vec![ca_identity(&fx.ca).unwrap()],
    );
    let mut config = mesh_ca::tls::client_config_without_cert(verifier).unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// Reads until the peer closes (or resets) the connection; fails past
/// `bound`, which is well under the default settings' timeouts, so only
/// the settings under test can have closed it.
async fn closed_by_server<S: tokio::io::AsyncRead + Unpin>(mut s: S, bound: Duration) -> Vec<u8> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(bound, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .expect("the CA kept a connection the settings say it must close");
    seen
}

/// The frames of a raw h2 byte stream: type, flags, payload.
fn h2_frames(mut rest: &[u8]) -> Vec<(u8, u8, &[u8])> {
    let mut frames = Vec::new();
    while rest.len() >= 9 {
        let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
        let Some(payload) = rest.get(9..9 + len) else {
            break;
        };
        frames.push((rest[3], rest[4], payload));
        rest = &rest[9 + len..];
    }
    frames
}

/// The value of setting `id` in the server's SETTINGS frame (not the ACK).
fn setting(frames: &[(u8, u8, &[u8])], id: u16) -> Option<u32> {
    let (_, _, payload) = frames.iter().find(|(t, f, _)| *t == 0x4 && f & 0x1 == 0)?;
    payload
        .chunks_exact(6)
        .find(|p| u16::from_be_bytes([p[0], p[1]]) == id)
        .map(|p| u32::from_be_bytes([p[2], p[3], p[4], p[5]]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ca_listener_holds_connections_to_the_server_settings() {
    let fx = Fixture::new();
    let mut settings = ServerSettings {
        handshake_timeout: Duration::from_millis(300),
        header_read_timeout: Duration::from_millis(300),
        ..ServerSettings::default()
    };
    settings.h2.max_concurrent_streams = 7;
    let plane = fx
        .start(ControlPlaneConfig {
            settings,
            ..ControlPlaneConfig::default()
        })
        .await;
    // Well under the defaults (10 s handshake, 30 s header read).
    let bound = Duration::from_secs(5);

    // A client that connects and never says hello is cut at the handshake
    // timeout.
    let started = Instant::now();
    let silent = TcpStream::connect(plane.ca_addr()).await.unwrap();
    assert!(closed_by_server(silent, bound).await.is_empty());
    assert!(started.elapsed() >= Duration::from_millis(300));

    // An h2 client that finishes TLS and its preface but never starts a
    // request (slowloris on HEADERS) is cut at the header-read timeout, and
    // the server's SETTINGS carry the configured stream limit.
    let tcp = TcpStream::connect(plane.ca_addr()).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("mesh-ca").unwrap();
    let mut tls = tls_client(&fx).connect(name, tcp).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let started = Instant::now();
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let bytes = closed_by_server(tls, bound).await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    let frames = h2_frames(&bytes);
    // SETTINGS_MAX_CONCURRENT_STREAMS
    assert_eq!(setting(&frames, 0x3), Some(7), "{frames:?}");
    // Closed with a GOAWAY (type 7): the graceful shutdown of an idle
    // connection, not a reset.
    assert!(frames.iter().any(|(t, _, _)| *t == 0x7), "{frames:?}");

    plane.shutdown().await;
}

/// A gRPC request body that never ends: the 5-byte prefix of a 1 MiB
/// message, then one byte of it every 100 ms, each well within the body
/// read timeout, so only a bound on the whole request can cut it.
struct Trickle {
    prefix_sent: bool,
    tick: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl hyper::body::Body for Trickle {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Self::Error>>> {
        use std::future::Future as _;
        if !self.prefix_sent {
            self.prefix_sent = true;
            let prefix = bytes::Bytes::from_static(&[0, 0x00, 0x10, 0x00, 0x00]);
            return std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(prefix))));
        }
        std::task::ready!(self.tick.as_mut().poll(cx));
        let next = self.tick.deadline() + Duration::from_millis(100);
        self.tick.as_mut().reset(next);
        let byte = bytes::Bytes::from_static(b"x");
        std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(byte))))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_still_unanswered_at_the_request_timeout_is_cut_with_deadline_exceeded() {
    assert_eq!(
        ControlPlaneConfig::default().request_timeout,
        Duration::from_secs(30)
    );
    let fx = Fixture::new();
    let timeout = Duration::from_millis(500);
    let plane = fx
        .start(ControlPlaneConfig {
            request_timeout: timeout,
            ..ControlPlaneConfig::default()
        })
        .await;

    // An h2 client that sends a CreateCertificate request whose message
    // never completes: without a bound on the request, the CA would wait
    // for it as long as the bytes keep coming.
    let tcp = TcpStream::connect(plane.ca_addr()).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("mesh-ca").unwrap();
    let tls = tls_client(&fx).connect(name, tcp).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = http::Request::post(
        "https://mesh-ca/istio.v1.auth.IstioCertificateService/CreateCertificate",
    )
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(Trickle {
        prefix_sent: false,
        tick: Box::pin(tokio::time::sleep(Duration::from_millis(100))),
    })
    .unwrap();
    let started = Instant::now();
    let resp = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
        .await
        .expect("the CA kept a trickling request past its request timeout")
        .unwrap();
    let took = started.elapsed();
    assert!(took >= timeout, "answered after {took:?}");
    // Well under the default settings' timeouts (30 s header read, 60 s
    // body read, 300 s idle): only the request timeout can have answered.
    assert!(took < Duration::from_secs(5), "answered after {took:?}");
    // gRPC's trailers-only answer: the status is in the head.
    assert_eq!(resp.status(), 200);
    let status = tonic::Status::from_header_map(resp.headers()).expect("no grpc-status");
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert!(
        status.message().contains("did not answer within 500ms"),
        "{status:?}"
    );
    // The service never decided anything about it.
    assert_eq!(plane.ca_metrics().issued(), 0);

    // The CA still answers a request that completes, within the bound.
    let client = fx.client(&plane).with_token(fx.token("web"));
    let chain = client
        .create_certificate(csr(), Duration::ZERO, None)
        .await
        .unwrap();
    assert!(!chain.is_empty());
    assert_eq!(plane.ca_metrics().issued(), 1);

    plane.shutdown().await;
}
