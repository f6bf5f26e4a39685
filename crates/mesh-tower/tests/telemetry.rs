#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Telemetry end to end: metrics scraped over HTTP and parsed as Prometheus
//! text after known traffic over mesh mTLS, bounded series under a flood of
//! Hosts, TCP metrics through a real L4 relay, early abandoned responses.

mod support;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use mesh_tower::error::MeshError;
use mesh_tower::telemetry::{
    DestinationInfo, MetricsService, Registry, RequestBody, TcpTelemetry, TelemetryLayer,
    WorkloadInfo,
};
use mesh_tower::tls::{MeshAcceptor, MeshConnector, TlsMode, spawn_server};
use support::TestPki;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tower::{ServiceBuilder, ServiceExt};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A plaintext hyper server on 127.0.0.1:0; dropping it stops it.
struct Server {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve<S, B>(svc: S) -> Server
where
    S: tower::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let svc = TowerToHyperService::new(svc.clone());
            tokio::spawn(async move {
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    Server { addr, task }
}

/// One sample of the text format.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A small parser for the Prometheus text format (0.0.4): `# HELP`, `# TYPE`,
/// and `name{label="value",...} number` with `\\`, `\"` and `\n` escapes.
#[derive(Debug, Default)]
struct Scrape {
    help: BTreeMap<String, String>,
    types: BTreeMap<String, String>,
    samples: Vec<Sample>,
}

impl Scrape {
    fn parse(text: &str) -> Self {
        let mut out = Self::default();
        for line in text.lines() {
            if line.is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').unwrap();
                out.help.insert(name.into(), help.into());
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                out.types.insert(name.into(), kind.into());
                continue;
            }
            assert!(!line.starts_with('#'), "unexpected comment {line}");
            out.samples.push(Self::sample(line));
        }
        out
    }

    fn sample(line: &str) -> Sample {
        let name_end = line.find(['{', ' ']).unwrap();
        let name = line[..name_end].to_owned();
        let mut labels = BTreeMap::new();
        let mut rest = &line[name_end..];
        if let Some(r) = rest.strip_prefix('{') {
            let mut chars = r.char_indices().peekable();
            let end;
            loop {
                let (i, c) = chars.next().unwrap();
                if c == '}' {
                    end = i;
                    break;
                }
                if c == ',' {
                    continue;
                }
                // name="value"
                let mut key = String::from(c);
                loop {
                    let (_, c) = chars.next().unwrap();
                    if c == '=' {
                        break;
                    }
                    key.push(c);
                }
                assert_eq!(chars.next().unwrap().1, '"', "{line}");
                let mut value = String::new();
                loop {
                    match chars.next().unwrap().1 {
                        '\\' => match chars.next().unwrap().1 {
                            'n' => value.push('\n'),
                            c => value.push(c),
                        },
                        '"' => break,
                        c => value.push(c),
                    }
                }
                assert!(
                    labels.insert(key, value).is_none(),
                    "duplicate label: {line}"
                );
            }
            rest = &r[end + 1..];
        }
        let value = match rest.trim() {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value in {line}")),
        };
        Sample {
            name,
            labels,
            value,
        }
    }

    /// Samples of `name` whose labels include all of `want`.
    fn find(&self, name: &str, want: &[(&str, &str)]) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                want.iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect()
    }

    fn one(&self, name: &str, want: &[(&str, &str)]) -> &Sample {
        let found = self.find(name, want);
        assert_eq!(found.len(), 1, "{name} {want:?}: {found:#?}");
        found[0]
    }
}

/// Istio's standard HTTP labels, all 25 (what its dashboards and Kiali
/// query).
const HTTP_LABELS: [&str; 25] = [
    "reporter",
    "source_workload",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_canonical_service",
    "source_canonical_revision",
    "source_cluster",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_cluster",
    "destination_service",
    "destination_service_name",
    "destination_service_namespace",
    "request_protocol",
    "response_code",
    "grpc_response_status",
    "response_flags",
    "connection_security_policy",
];

/// Serves `registry` at /stats/prometheus, as the admin listener will.
async fn metrics_server(registry: Registry) -> Server {
    serve(MetricsService::new(registry)).await
}

async fn scrape(addr: SocketAddr) -> Scrape {
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build_http::<Empty<Bytes>>();
    let resp = client
        .get(format!("http://{addr}/stats/prometheus").parse().unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Scrape::parse(std::str::from_utf8(&body).unwrap())
}

/// Scrapes until `ready` holds (the server records when a response body
/// ends, which may be a moment after the client has read it).
async fn scrape_until(addr: SocketAddr, ready: impl Fn(&Scrape) -> bool) -> Scrape {
    for _ in 0..100 {
        let s = scrape(addr).await;
        if ready(&s) {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("metrics never reached the expected state");
}

async fn reviews_handler(
    req: Request<RequestBody<mesh_tower::body::BoxBody>>,
) -> Result<Response<mesh_tower::body::BoxBody>, Infallible> {
    if req.uri().path() == "/fail" {
        return Ok(
            MeshError::FaultAbort("VirtualService default/reviews".into(), 503).to_response(),
        );
    }
    let body = req.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body.len(), 11);
    Ok(Response::new(mesh_tower::body::full("hello")))
}

#[tokio::test]
async fn istio_metrics_scraped_over_http_after_known_traffic() {
    let pki = TestPki::new("cluster.local");
    let registry = Registry::new();
    let me = WorkloadInfo::new("reviews-v1", "default")
        .with_principal(&pki.id("reviews"))
        .with_version("v1");
    let svc = ServiceBuilder::new()
        .layer(TelemetryLayer::inbound(registry.clone(), me))
        .service_fn(reviews_handler);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let acceptor = MeshAcceptor::new(&pki.store("reviews"), TlsMode::Strict).unwrap();
    let server = spawn_server(listener, acceptor, svc).unwrap();
    let admin = metrics_server(registry.clone()).await;

    // productpage calls reviews over mesh mTLS (h2): 7 × 200, 3 × 503 FI.
    let tcp = TcpStream::connect(server.local_addr()).await.unwrap();
    let tls = MeshConnector::new(pki.store("productpage"))
        .connect(tcp, &[pki.id("reviews")])
        .await
        .unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    for i in 0..10 {
        let ok = i % 10 < 7;
        let req = Request::builder()
            .method(if ok { "POST" } else { "GET" })
            .uri(if ok {
                "http://reviews.default.svc.cluster.local:9080/reviews/1"
            } else {
                "http://reviews.default.svc.cluster.local:9080/fail"
            })
            .body(Full::new(Bytes::from_static(if ok {
                b"eleven byte"
            } else {
                b""
            })))
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.status(), if ok { 200 } else { 503 });
        resp.into_body().collect().await.unwrap();
    }

    let m = scrape_until(admin.addr, |m| {
        m.find("istio_requests_total", &[])
            .iter()
            .map(|s| s.value)
            .sum::<f64>()
            == 10.0
    })
    .await;

    for (name, kind) in [
        ("istio_requests_total", "counter"),
        ("istio_request_duration_milliseconds", "histogram"),
        ("istio_request_bytes", "histogram"),
        ("istio_response_bytes", "histogram"),
        ("istio_tcp_sent_bytes_total", "counter"),
        ("istio_tcp_received_bytes_total", "counter"),
        ("istio_tcp_connections_opened_total", "counter"),
        ("istio_tcp_connections_closed_total", "counter"),
    ] {
        assert_eq!(m.types.get(name).map(String::as_str), Some(kind), "{name}");
        assert!(!m.help[name].is_empty(), "{name}");
    }

    let common = [
        ("reporter", "destination"),
        ("source_workload", "unknown"),
        ("source_workload_namespace", "default"),
        (
            "source_principal",
            "spiffe://cluster.local/ns/default/sa/productpage",
        ),
        ("source_version", "unknown"),
        ("destination_workload", "reviews-v1"),
        ("destination_workload_namespace", "default"),
        (
            "destination_principal",
            "spiffe://cluster.local/ns/default/sa/reviews",
        ),
        ("destination_version", "v1"),
        ("destination_service", "reviews.default.svc.cluster.local"),
        ("destination_service_name", "reviews"),
        ("destination_service_namespace", "default"),
        ("request_protocol", "http"),
        ("connection_security_policy", "mutual_tls"),
    ];
    let ok: Vec<_> = common
        .iter()
        .copied()
        .chain([("response_code", "200"), ("response_flags", "-")])
        .collect();
    let failed: Vec<_> = common
        .iter()
        .copied()
        .chain([("response_code", "503"), ("response_flags", "FI")])
        .collect();

    let total = m.one("istio_requests_total", &ok);
    assert_eq!(total.value, 7.0);
    let names: Vec<&str> = total.labels.keys().map(String::as_str).collect();
    let mut expected = HTTP_LABELS.to_vec();
    expected.sort_unstable();
    assert_eq!(names, expected, "exactly Istio's labels");
    assert_eq!(m.one("istio_requests_total", &failed).value, 3.0);
    assert_eq!(m.find("istio_requests_total", &[]).len(), 2);

    // Histograms: Istio's buckets, cumulative, +Inf equal to _count.
    let buckets = m.find("istio_request_duration_milliseconds_bucket", &ok);
    let les: Vec<&str> = buckets.iter().map(|s| s.labels["le"].as_str()).collect();
    assert_eq!(
        les,
        [
            "0.5", "1", "5", "10", "25", "50", "100", "250", "500", "1000", "2500", "5000",
            "10000", "30000", "60000", "300000", "600000", "1800000", "3600000", "+Inf"
        ]
    );
    assert!(buckets.windows(2).all(|w| w[0].value <= w[1].value));
    assert_eq!(buckets.last().unwrap().value, 7.0);
    assert_eq!(
        m.one("istio_request_duration_milliseconds_count", &ok)
            .value,
        7.0
    );
    assert!(m.one("istio_request_duration_milliseconds_sum", &ok).value > 0.0);
    assert_eq!(m.one("istio_request_bytes_sum", &ok).value, 77.0);
    assert_eq!(m.one("istio_request_bytes_count", &ok).value, 7.0);
    assert_eq!(m.one("istio_response_bytes_sum", &ok).value, 35.0);
    let reason_len = "fault injected by VirtualService default/reviews\n".len() as f64;
    assert_eq!(
        m.one("istio_response_bytes_sum", &failed).value,
        3.0 * reason_len
    );
    assert_eq!(m.one("istio_request_bytes_sum", &failed).value, 0.0);
}

#[tokio::test]
async fn a_flood_of_distinct_hosts_leaves_the_series_bounded() {
    let registry = Registry::new();
    let me = WorkloadInfo::new("web", "default");
    let svc = ServiceBuilder::new()
        .layer(TelemetryLayer::inbound(registry.clone(), me))
        .service_fn(|_req: Request<RequestBody<Empty<Bytes>>>| async {
            Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new()))
        });
    for i in 0..10_000 {
        let req = Request::get("/")
            .header("host", format!("h{i}.flood.example"))
            .body(Empty::new())
            .unwrap();
        svc.clone().oneshot(req).await.unwrap();
    }
    // 100 admitted hosts (the default cap) and `other`.
    assert_eq!(registry.series_count(), 101);

    let admin = metrics_server(registry.clone()).await;
    let m = scrape(admin.addr).await;
    let series = m.find("istio_requests_total", &[]);
    assert_eq!(series.len(), 101);
    assert_eq!(series.iter().map(|s| s.value).sum::<f64>(), 10_000.0);
    let other = m.one(
        "istio_requests_total",
        &[
            ("destination_service", "other"),
            ("destination_service_name", "other"),
        ],
    );
    assert_eq!(other.value, 9_900.0);
    assert_eq!(
        m.one(
            "istio_requests_total",
            &[("destination_service", "h0.flood.example")]
        )
        .labels["destination_service_namespace"],
        "unknown"
    );
    // The scrape stays small: 101 series × (1 + 3 × 22) lines, plus headers.
    assert!(m.samples.len() <= 101 * 67, "{}", m.samples.len());
}

#[tokio::test]
async fn tcp_metrics_through_a_real_l4_relay() {
    let pki = TestPki::new("cluster.local");
    let registry = Registry::new();
    let me = WorkloadInfo::new("mariadb", "blog").with_principal(&pki.id("mariadb"));
    let inbound = TcpTelemetry::inbound(registry.clone(), me.clone());
    let service = DestinationInfo::new("mariadb.blog.svc.cluster.local", "blog");

    // An echo "database".
    let db = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let db_addr = db.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = db.accept().await.unwrap();
        let (mut r, mut w) = s.split();
        tokio::io::copy(&mut r, &mut w).await.unwrap();
    });

    // The sidecar's inbound L4 listener: mTLS, then relay to the database,
    // metered on the downstream side.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = MeshAcceptor::new(&pki.store("mariadb"), TlsMode::Strict).unwrap();
    let relay = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let stream = acceptor.accept(tcp).await.unwrap();
        let conn = inbound.accepted(stream.peer_identity(), Some(&service));
        let mut downstream = conn.wrap(stream);
        let mut upstream = TcpStream::connect(db_addr).await.unwrap();
        tokio::io::copy_bidirectional(&mut downstream, &mut upstream)
            .await
            .unwrap();
    });

    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut tls = MeshConnector::new(pki.store("wordpress"))
        .connect(tcp, &[pki.id("mariadb")])
        .await
        .unwrap();
    tls.write_all(&[7u8; 1000]).await.unwrap();
    let mut back = [0u8; 1000];
    tls.read_exact(&mut back).await.unwrap();
    tls.shutdown().await.unwrap();
    let mut rest = Vec::new();
    tls.read_to_end(&mut rest).await.unwrap();
    relay.await.unwrap();

    // The outbound side of wordpress: one connection that failed (UF).
    let outbound = TcpTelemetry::outbound(
        registry.clone(),
        WorkloadInfo::new("wordpress-v1", "blog").with_version("v1"),
    );
    let mut failed = outbound
        .connected(&DestinationInfo::new("mariadb.blog.svc.cluster.local", "blog").with_mtls(true));
    failed.set_response_flags("UF");
    drop(failed);

    let admin = metrics_server(registry).await;
    let m = scrape(admin.addr).await;
    let labels = [
        ("reporter", "destination"),
        (
            "source_principal",
            "spiffe://cluster.local/ns/default/sa/wordpress",
        ),
        ("source_workload_namespace", "default"),
        ("destination_workload", "mariadb"),
        ("destination_workload_namespace", "blog"),
        (
            "destination_principal",
            "spiffe://cluster.local/ns/default/sa/mariadb",
        ),
        ("destination_service", "mariadb.blog.svc.cluster.local"),
        ("destination_service_name", "mariadb"),
        ("destination_service_namespace", "blog"),
        ("request_protocol", "tcp"),
        ("response_flags", "-"),
        ("connection_security_policy", "mutual_tls"),
    ];
    assert_eq!(
        m.one("istio_tcp_connections_opened_total", &labels).value,
        1.0
    );
    assert_eq!(
        m.one("istio_tcp_connections_closed_total", &labels).value,
        1.0
    );
    assert_eq!(
        m.one("istio_tcp_received_bytes_total", &labels).value,
        1000.0
    );
    assert_eq!(m.one("istio_tcp_sent_bytes_total", &labels).value, 1000.0);
    let tcp = m.one("istio_tcp_sent_bytes_total", &labels);
    assert!(!tcp.labels.contains_key("response_code"));
    assert_eq!(
        tcp.labels.len(),
        23,
        "Istio's TCP labels: {:?}",
        tcp.labels.keys()
    );

    let source = [
        ("reporter", "source"),
        ("source_workload", "wordpress-v1"),
        ("source_version", "v1"),
        ("destination_service", "mariadb.blog.svc.cluster.local"),
        ("connection_security_policy", "unknown"),
    ];
    let opened: Vec<_> = m
        .find("istio_tcp_connections_opened_total", &source)
        .into_iter()
        .filter(|s| s.value > 0.0)
        .collect();
    assert_eq!(opened.len(), 1);
    assert_eq!(opened[0].labels["response_flags"], "-");
    let closed: Vec<_> = m
        .find("istio_tcp_connections_closed_total", &source)
        .into_iter()
        .filter(|s| s.value > 0.0)
        .collect();
    assert_eq!(closed.len(), 1);
    assert_eq!(closed[0].labels["response_flags"], "UF");
}

/// A response body that never ends, as a slow stream the client gives up on.
struct NeverEnds;

impl http_body::Body for NeverEnds {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        std::task::Poll::Pending
    }
}

#[tokio::test]
async fn a_response_abandoned_mid_body_is_reported_dc() {
    let registry = Registry::new();
    let svc = ServiceBuilder::new()
        .layer(TelemetryLayer::inbound(
            registry.clone(),
            WorkloadInfo::new("web", "default"),
        ))
        .service_fn(|_req: Request<RequestBody<Empty<Bytes>>>| async {
            Ok::<_, Infallible>(Response::new(NeverEnds))
        });
    let resp = svc
        .oneshot(Request::get("http://web/").body(Empty::new()).unwrap())
        .await
        .unwrap();
    assert_eq!(
        registry.series_count(),
        0,
        "not recorded before the body ends"
    );
    drop(resp);
    let m = Scrape::parse(&registry.render());
    assert_eq!(
        m.one("istio_requests_total", &[("response_flags", "DC")])
            .value,
        1.0
    );
}

#[tokio::test]
async fn failed_services_report_code_0_and_grpc_is_told_apart() {
    let registry = Registry::new();
    let failing = ServiceBuilder::new()
        .layer(TelemetryLayer::inbound(
            registry.clone(),
            WorkloadInfo::new("web", "default"),
        ))
        .service_fn(|_req: Request<RequestBody<Empty<Bytes>>>| async {
            Err::<Response<Empty<Bytes>>, _>(std::io::Error::other("handler failed"))
        });
    let err = failing
        .oneshot(Request::get("http://web/").body(Empty::new()).unwrap())
        .await;
    assert!(err.is_err());

    let grpc = ServiceBuilder::new()
        .layer(TelemetryLayer::inbound(
            registry.clone(),
            WorkloadInfo::new("greeter", "default"),
        ))
        .service_fn(|_req: Request<RequestBody<Empty<Bytes>>>| async {
            Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new()))
        });
    let req = Request::post("http://greeter/helloworld.Greeter/SayHello")
        .header("content-type", "application/grpc+proto")
        .body(Empty::new())
        .unwrap();
    grpc.oneshot(req).await.unwrap();

    let m = Scrape::parse(&registry.render());
    let failed = m.one("istio_requests_total", &[("destination_workload", "web")]);
    assert_eq!(failed.labels["response_code"], "0");
    let g = m.one(
        "istio_requests_total",
        &[("destination_workload", "greeter")],
    );
    assert_eq!(g.labels["request_protocol"], "grpc");
    assert_eq!(g.labels["response_code"], "200");
    // No peer identity at all: the source side is unknown.
    assert_eq!(g.labels["source_principal"], "unknown");
    assert_eq!(g.labels["connection_security_policy"], "unknown");
    // No grpc-status came back: Istio says unknown for a gRPC request.
    assert_eq!(g.labels["grpc_response_status"], "unknown");
    assert_eq!(g.labels["destination_canonical_service"], "greeter");
    assert_eq!(g.labels["destination_canonical_revision"], "latest");
    assert_eq!(g.labels["destination_cluster"], "Kubernetes");
    assert_eq!(g.labels["source_cluster"], "unknown");
}

/// `grpc_response_status`: from the trailers of a gRPC answer, or from the
/// head of a trailers-only one; codes outside gRPC's 0-16 are `unknown`.
#[tokio::test]
async fn grpc_status_comes_from_trailers_or_a_trailers_only_head() {
    use http_body_util::BodyExt as _;
    let registry = Registry::new();
    let svc = |registry: &Registry, name: &'static str| {
        ServiceBuilder::new()
            .layer(TelemetryLayer::inbound(
                registry.clone(),
                WorkloadInfo::new(name, "default"),
            ))
            .service_fn(move |req: Request<RequestBody<Empty<Bytes>>>| async move {
                let code = req.uri().path().trim_start_matches('/').to_owned();
                let mut trailers = http::HeaderMap::new();
                trailers.insert("grpc-status", code.parse().unwrap());
                let resp = if name == "head" {
                    let mut r = Response::new(Empty::<Bytes>::new().boxed_unsync());
                    r.headers_mut().insert("grpc-status", code.parse().unwrap());
                    r
                } else {
                    Response::new(
                        Empty::<Bytes>::new()
                            .with_trailers(async move { Some(Ok(trailers)) })
                            .boxed_unsync(),
                    )
                };
                Ok::<_, Infallible>(resp)
            })
    };
    for (name, code) in [
        ("trailers", "0"),
        ("trailers", "14"),
        ("head", "7"),
        ("head", "99"),
    ] {
        let req = Request::post(format!("http://{name}/{code}"))
            .header("content-type", "application/grpc")
            .body(Empty::new())
            .unwrap();
        let resp = svc(&registry, name).oneshot(req).await.unwrap();
        resp.into_body().collect().await.unwrap();
    }
    let m = Scrape::parse(&registry.render());
    for (name, want) in [
        ("trailers", "0"),
        ("trailers", "14"),
        ("head", "7"),
        ("head", "unknown"),
    ] {
        m.one(
            "istio_requests_total",
            &[
                ("destination_workload", name),
                ("grpc_response_status", want),
            ],
        );
    }
}

/// A body of several frames, for streams of gRPC messages.
struct Chunks(std::collections::VecDeque<Bytes>);

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        std::task::Poll::Ready(self.0.pop_front().map(|b| Ok(http_body::Frame::data(b))))
    }
}

fn grpc_frames(sizes: &[u32], cut: usize) -> Chunks {
    let mut all = Vec::new();
    for n in sizes {
        all.push(0u8);
        all.extend_from_slice(&n.to_be_bytes());
        all.extend(std::iter::repeat_n(1u8, *n as usize));
    }
    Chunks(all.chunks(cut).map(Bytes::copy_from_slice).collect())
}

/// Istio's gRPC streaming counters: messages sent by the client and by the
/// server, counted across frames, for gRPC requests only.
#[tokio::test]
async fn grpc_message_counters_count_each_direction() {
    use http_body_util::BodyExt as _;
    let registry = Registry::new();
    let svc = ServiceBuilder::new()
        .layer(TelemetryLayer::inbound(
            registry.clone(),
            WorkloadInfo::new("stream", "default"),
        ))
        .service_fn(|req: Request<RequestBody<Chunks>>| async move {
            // The server reads the client's stream, then answers with two.
            req.into_body().collect().await.unwrap();
            Ok::<_, Infallible>(Response::new(grpc_frames(&[10, 20], 7)))
        });
    let req = Request::post("http://stream/s.S/Chat")
        .header("content-type", "application/grpc")
        .body(grpc_frames(&[5, 0, 100], 3))
        .unwrap();
    let resp = svc.clone().oneshot(req).await.unwrap();
    resp.into_body().collect().await.unwrap();
    // Not gRPC: no message counters for it.
    let plain = Request::post("http://stream/upload")
        .body(grpc_frames(&[5], 4))
        .unwrap();
    svc.oneshot(plain)
        .await
        .unwrap()
        .into_body()
        .collect()
        .await
        .unwrap();

    let m = Scrape::parse(&registry.render());
    let grpc = [
        ("destination_workload", "stream"),
        ("request_protocol", "grpc"),
    ];
    assert_eq!(m.one("istio_request_messages_total", &grpc).value, 3.0);
    assert_eq!(m.one("istio_response_messages_total", &grpc).value, 2.0);
    assert!(
        m.find(
            "istio_request_messages_total",
            &[("request_protocol", "http")]
        )
        .is_empty()
    );
}

/// A request no route took (the gateway's or a sidecar's `NR`): the
/// caller's side names no service, as Istio reports it, rather than
/// whatever Host the client wrote; a routed request keeps its host.
#[tokio::test]
async fn an_unrouted_request_reports_no_destination_service() {
    let registry = Registry::new();
    let me = WorkloadInfo::new("edge", "default");
    let svc = ServiceBuilder::new()
        .layer(TelemetryLayer::outbound(registry.clone(), me))
        .service_fn(|req: Request<RequestBody<Empty<Bytes>>>| async move {
            let host = req.headers()["host"].to_str().unwrap().to_owned();
            Ok::<_, Infallible>(if host == "nowhere.example" {
                MeshError::UnknownHost { host }.to_response()
            } else {
                Response::new(mesh_tower::body::empty())
            })
        });
    for host in ["nowhere.example", "web.example"] {
        let req = Request::get("/")
            .header("host", host)
            .body(Empty::new())
            .unwrap();
        let resp = svc.clone().oneshot(req).await.unwrap();
        resp.into_body().collect().await.unwrap();
    }
    let admin = metrics_server(registry.clone()).await;
    let m = scrape(admin.addr).await;
    let nr = m.one("istio_requests_total", &[("response_flags", "NR")]);
    assert_eq!(nr.labels["destination_service"], "unknown");
    assert_eq!(nr.labels["destination_service_name"], "unknown");
    assert_eq!(nr.labels["destination_service_namespace"], "unknown");
    assert_eq!(nr.labels["response_code"], "503");
    let ok = m.one("istio_requests_total", &[("response_flags", "-")]);
    assert_eq!(ok.labels["destination_service"], "web.example");
    assert!(
        m.find(
            "istio_requests_total",
            &[("destination_service", "nowhere.example")]
        )
        .is_empty()
    );
}
