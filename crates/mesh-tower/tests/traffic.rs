//! The traffic layers under real hyper servers and a real client: splits,
//! stickiness, retries, timeouts, faults, mirroring, outlier detection,
//! connection pool limits and the error answers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_core::store::Store;
use mesh_tower::body::{empty, full};
use mesh_tower::error::REASON_HEADER;
use mesh_tower::traffic::{Router, RouterConfig, SeededRandom};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tower::ServiceExt;

/// What a backend does with each request.
#[derive(Clone, Copy, Debug)]
enum Behaviour {
    Ok,
    /// Answers 503 to the first `n` requests, then 200.
    FailFirst(usize),
    /// Always answers this status.
    Status(u16),
    /// Waits before answering.
    Slow(Duration),
}

/// A request as a backend saw it: method, path and query, headers.
type Seen = (String, String, HashMap<String, String>);

/// A plaintext HTTP server on 127.0.0.1 that names itself in its answers
/// and counts requests. Dropping it stops it.
struct Backend {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    /// Connections accepted.
    conns: Arc<AtomicUsize>,
    seen: Arc<std::sync::Mutex<Vec<Seen>>>,
    stop: Option<oneshot::Sender<()>>,
}

impl Backend {
    async fn start(name: &'static str, behaviour: Behaviour) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (stop, mut stopped) = oneshot::channel();
        let (h, s) = (hits.clone(), seen.clone());
        let conns = Arc::new(AtomicUsize::new(0));
        let c = conns.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = tokio::select! {
                    r = listener.accept() => r.unwrap(),
                    _ = &mut stopped => return,
                };
                c.fetch_add(1, Ordering::SeqCst);
                let (h, s) = (h.clone(), s.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (h, s) = (h.clone(), s.clone());
                        async move {
                            let n = h.fetch_add(1, Ordering::SeqCst);
                            let headers = req
                                .headers()
                                .iter()
                                .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
                                .collect();
                            let path = req
                                .uri()
                                .path_and_query()
                                .map(|p| p.to_string())
                                .unwrap_or_default();
                            let method = req.method().to_string();
                            let _ = req.into_body().collect().await;
                            s.lock().unwrap().push((method, path, headers));
                            let status = match behaviour {
                                Behaviour::Ok => 200,
                                Behaviour::FailFirst(k) => {
                                    if n < k {
                                        503
                                    } else {
                                        200
                                    }
                                }
                                Behaviour::Status(s) => s,
                                Behaviour::Slow(d) => {
                                    tokio::time::sleep(d).await;
                                    200
                                }
                            };
                            let mut resp = Response::new(Full::new(Bytes::from(name)));
                            *resp.status_mut() = StatusCode::from_u16(status).unwrap();
                            resp.headers_mut()
                                .insert("x-backend", name.parse().unwrap());
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        Self {
            addr,
            hits,
            conns,
            seen,
            stop: Some(stop),
        }
    }

    fn port(&self) -> u16 {
        self.addr.port()
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    fn conns(&self) -> usize {
        self.conns.load(Ordering::SeqCst)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// A port nothing listens on.
async fn dead_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}

/// A port whose SYNs go unanswered: a listener whose accept queue is full
/// and never drained, so a dial hangs until the dialer gives up. Returns
/// the port and what holds the queue full.
async fn black_hole() -> (u16, Vec<tokio::net::TcpStream>, tokio::net::TcpListener) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    // Full when two dials in a row hang for a second each (a loopback
    // dial that is accepted takes microseconds, even under load).
    let mut held = Vec::new();
    let mut hung = 0;
    for _ in 0..64 {
        let dial = tokio::net::TcpStream::connect(addr);
        match tokio::time::timeout(Duration::from_secs(1), dial).await {
            Ok(Ok(s)) => {
                held.push(s);
                hung = 0;
            }
            _ => {
                hung += 1;
                if hung == 2 {
                    return (addr.port(), held, listener);
                }
            }
        }
    }
    panic!("the accept queue of a backlog-1 listener took 64 connections");
}

/// The `web` service with workloads v1 (and v2...) at the given ports,
/// plaintext, plus extra YAML.
fn config(workloads: &[(&str, u16)], extra: &str) -> String {
    let mut y = String::from(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: web}\n\
         spec: {hosts: [web], ports: [{number: 80, name: http}], workloadSelector: {labels: {app: web}}}\n---\n\
         apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: client}\nspec: {address: 127.0.0.1, labels: {app: client}}\n---\n\
         apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: plaintext-backends}\nspec: {mtls: {mode: DISABLE}}\n",
    );
    for (version, port) in workloads {
        y.push_str(&format!(
            "---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: web-{version}-{port}}}\n\
             spec: {{address: 127.0.0.1, ports: {{http: {port}}}, labels: {{app: web, version: {version}}}, serviceAccount: web}}\n"
        ));
    }
    y.push_str(extra);
    y
}

const PLAINTEXT_DR: &str = "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: web}\n\
    spec:\n  host: web\n  trafficPolicy: {tls: {mode: DISABLE}}\n  subsets:\n  - {name: v1, labels: {version: v1}}\n  - {name: v2, labels: {version: v2}}\n";

fn dr(extra_policy: &str) -> String {
    format!(
        "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: web}}\n\
         spec:\n  host: web\n  trafficPolicy:\n    tls: {{mode: DISABLE}}\n{extra_policy}  subsets:\n  - {{name: v1, labels: {{version: v1}}}}\n  - {{name: v2, labels: {{version: v2}}}}\n"
    )
}

fn vs(http: &str) -> String {
    format!(
        "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: web}}\nspec:\n  hosts: [web]\n  http:\n{http}"
    )
}

const SPLIT_90_10: &str = "  - route:\n    - {destination: {host: web, subset: v1}, weight: 90}\n    - {destination: {host: web, subset: v2}, weight: 10}\n";

fn router(yaml: &str) -> (Router, Arc<Store>) {
    let store = Arc::new(Store::new());
    store
        .apply(mesh_core::load::load_str(Path::new("test.yaml"), yaml))
        .unwrap_or_else(|e| panic!("{e}"));
    let r = Router::with_random(
        store.clone(),
        RouterConfig::for_workload("default", "client"),
        None,
        Arc::new(SeededRandom::new(7)),
    );
    (r, store)
}

async fn get(
    r: &Router,
    path: &str,
    headers: &[(&str, &str)],
) -> Response<mesh_tower::body::BoxBody> {
    let mut b = Request::get(format!("http://web{path}"));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    r.clone().oneshot(b.body(empty()).unwrap()).await.unwrap()
}

fn backend_of<B>(resp: &Response<B>) -> String {
    resp.headers()
        .get("x-backend")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

/// `connectionPool.tcp.connectTimeout` bounds the dial: a dial that hangs
/// fails after the rule's timeout, named in the reason, not Istio's 10 s
/// default.
#[tokio::test]
async fn the_connect_timeout_of_the_destination_rule_bounds_the_dial() {
    let (port, _held, _listener) = black_hole().await;
    let policy = "    connectionPool: {tcp: {connectTimeout: 250ms}}\n";
    // A route timeout well above the dials' (two attempts): were a dial to
    // get through, the test fails on the status rather than hanging.
    let route = "  - timeout: 20s\n    route: [{destination: {host: web}}]\n";
    let (r, _) = router(&(config(&[("v1", port)], &dr(policy)) + &vs(route)));
    let resp = get(&r, "/", &[]).await;
    assert_eq!(resp.status(), 503);
    let reason = resp.headers()[REASON_HEADER].to_str().unwrap().to_owned();
    assert!(reason.contains("connect timeout after 250ms"), "{reason}");
}

#[tokio::test]
async fn weighted_split_and_zero_weight() {
    let (v1, v2) = (
        Backend::start("v1", Behaviour::Ok).await,
        Backend::start("v2", Behaviour::Ok).await,
    );
    let (r, store) =
        router(&(config(&[("v1", v1.port()), ("v2", v2.port())], PLAINTEXT_DR) + &vs(SPLIT_90_10)));
    for _ in 0..1_000 {
        assert_eq!(get(&r, "/", &[]).await.status(), 200);
    }
    let share = v2.hits() as f64 / 1_000.0;
    assert!((0.07..=0.13).contains(&share), "v2 share {share}");

    let zero = "  - route:\n    - {destination: {host: web, subset: v1}, weight: 100}\n    - {destination: {host: web, subset: v2}, weight: 0}\n";
    store
        .apply(mesh_core::load::load_str(
            Path::new("t.yaml"),
            &(config(&[("v1", v1.port()), ("v2", v2.port())], PLAINTEXT_DR) + &vs(zero)),
        ))
        .unwrap();
    let before = v2.hits();
    for _ in 0..200 {
        get(&r, "/", &[]).await;
    }
    assert_eq!(v2.hits(), before, "a weight of 0 gets nothing");
}

#[tokio::test]
async fn sticky_canary_by_header_and_by_cookie() {
    let (v1, v2) = (
        Backend::start("v1", Behaviour::Ok).await,
        Backend::start("v2", Behaviour::Ok).await,
    );
    let ws = [("v1", v1.port()), ("v2", v2.port())];
    let by_header = dr("    loadBalancer: {consistentHash: {httpHeaderName: x-user}}\n");
    let (r, _) = router(&(config(&ws, &by_header) + &vs(SPLIT_90_10)));
    let mut on_v2 = 0;
    for user in 0..200 {
        let id = format!("user-{user}");
        let first = backend_of(&get(&r, "/", &[("x-user", &id)]).await);
        for _ in 0..5 {
            assert_eq!(
                backend_of(&get(&r, "/", &[("x-user", &id)]).await),
                first,
                "{id} changed version"
            );
        }
        on_v2 += usize::from(first == "v2");
    }
    assert!((8..=40).contains(&on_v2), "{on_v2} of 200 users on v2");

    let by_cookie =
        dr("    loadBalancer: {consistentHash: {httpCookie: {name: mesh-session, ttl: 3600s}}}\n");
    let (r, _) = router(&(config(&ws, &by_cookie) + &vs(SPLIT_90_10)));
    for _ in 0..50 {
        let first = get(&r, "/", &[]).await;
        let set = first.headers()[http::header::SET_COOKIE]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            set.starts_with("mesh-session=") && set.contains("Max-Age=3600"),
            "{set}"
        );
        let cookie = set.split(';').next().unwrap().to_owned();
        let version = backend_of(&first);
        for _ in 0..5 {
            let again = get(&r, "/", &[("cookie", &cookie)]).await;
            assert!(
                again.headers().get(http::header::SET_COOKIE).is_none(),
                "the cookie is set once"
            );
            assert_eq!(backend_of(&again), version);
        }
    }
}

#[tokio::test]
async fn retries_get_but_not_post() {
    let flaky = Backend::start("v1", Behaviour::FailFirst(1)).await;
    let (r, _) = router(&config(&[("v1", flaky.port())], PLAINTEXT_DR));
    assert_eq!(
        get(&r, "/", &[]).await.status(),
        200,
        "the default policy retries 503 for GET"
    );
    assert_eq!(flaky.hits(), 2);

    let flaky = Backend::start("v1", Behaviour::FailFirst(1)).await;
    let (r, _) = router(&config(&[("v1", flaky.port())], PLAINTEXT_DR));
    let post = Request::post("http://web/form").body(full("a=1")).unwrap();
    assert_eq!(
        r.clone().oneshot(post).await.unwrap().status(),
        503,
        "a POST is not retried by default"
    );
    assert_eq!(flaky.hits(), 1);

    // Retries named on the route apply to POST too.
    let flaky = Backend::start("v1", Behaviour::FailFirst(2)).await;
    let route =
        "  - retries: {attempts: 3, retryOn: 5xx}\n    route: [{destination: {host: web}}]\n";
    let (r, _) = router(&(config(&[("v1", flaky.port())], PLAINTEXT_DR) + &vs(route)));
    let post = Request::post("http://web/form").body(full("a=1")).unwrap();
    assert_eq!(r.clone().oneshot(post).await.unwrap().status(), 200);
    assert_eq!(flaky.hits(), 3);
    let seen = flaky.seen.lock().unwrap().clone();
    assert!(seen.iter().all(|(m, p, _)| m == "POST" && p == "/form"));
}

#[tokio::test]
async fn route_and_per_try_timeouts() {
    let slow = Backend::start("v1", Behaviour::Slow(Duration::from_secs(5))).await;
    let route = "  - timeout: 200ms\n    route: [{destination: {host: web}}]\n";
    let (r, _) = router(&(config(&[("v1", slow.port())], PLAINTEXT_DR) + &vs(route)));
    let resp = get(&r, "/", &[]).await;
    assert_eq!(resp.status(), 504);
    assert!(
        resp.headers()[REASON_HEADER]
            .to_str()
            .unwrap()
            .contains("timeout")
    );

    let route = "  - retries: {attempts: 2, perTryTimeout: 100ms, retryOn: gateway-error}\n    route: [{destination: {host: web}}]\n";
    let (r, _) = router(&(config(&[("v1", slow.port())], PLAINTEXT_DR) + &vs(route)));
    let before = slow.hits();
    let resp = get(&r, "/", &[]).await;
    assert_eq!(resp.status(), 504);
    assert_eq!(
        slow.hits() - before,
        3,
        "one try and two retries, each cut at 100ms"
    );
}

#[tokio::test]
async fn fault_injection_aborts_and_delays_their_share() {
    let v1 = Backend::start("v1", Behaviour::Ok).await;
    let route = "  - fault: {abort: {httpStatus: 418, percentage: {value: 30}}}\n    route: [{destination: {host: web}}]\n";
    let (r, _) = router(&(config(&[("v1", v1.port())], PLAINTEXT_DR) + &vs(route)));
    let mut aborted = 0;
    for _ in 0..500 {
        let resp = get(&r, "/", &[]).await;
        if resp.status() == 418 {
            aborted += 1;
            assert!(
                resp.headers()[REASON_HEADER]
                    .to_str()
                    .unwrap()
                    .contains("fault injected")
            );
        }
    }
    assert!((110..=190).contains(&aborted), "{aborted} of 500 aborted");
    assert_eq!(
        v1.hits(),
        500 - aborted,
        "aborted requests never reach the backend"
    );

    let route = "  - fault: {delay: {fixedDelay: 300ms, percentage: {value: 100}}}\n    route: [{destination: {host: web}}]\n";
    let (r, _) = router(&(config(&[("v1", v1.port())], PLAINTEXT_DR) + &vs(route)));
    let t = std::time::Instant::now();
    assert_eq!(get(&r, "/", &[]).await.status(), 200);
    assert!(t.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn mirroring_copies_and_a_failing_mirror_does_not_hurt() {
    let main = Backend::start("main", Behaviour::Ok).await;
    let shadow = Backend::start("shadow", Behaviour::Status(500)).await;
    let extra = format!(
        "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: shadow}}\n\
         spec: {{hosts: [shadow], ports: [{{number: 80, name: http}}], workloadSelector: {{labels: {{app: shadow}}}}}}\n---\n\
         apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: shadow}}\n\
         spec: {{address: 127.0.0.1, ports: {{http: {}}}, labels: {{app: shadow}}}}\n---\n\
         apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: shadow}}\nspec: {{host: shadow, trafficPolicy: {{tls: {{mode: DISABLE}}}}}}\n",
        shadow.port()
    );
    let route = "  - mirror: {host: shadow}\n    route: [{destination: {host: web}}]\n";
    let (r, _) = router(&(config(&[("v1", main.port())], PLAINTEXT_DR) + &extra + &vs(route)));
    for _ in 0..20 {
        assert_eq!(
            get(&r, "/m", &[]).await.status(),
            200,
            "the mirror's 500 never reaches the caller"
        );
    }
    for _ in 0..100 {
        if shadow.hits() == 20 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(shadow.hits(), 20);
    let seen = shadow.seen.lock().unwrap().clone();
    assert!(
        seen.iter()
            .all(|(_, p, h)| p == "/m" && h.get("host").is_some_and(|h| h.ends_with("-shadow"))),
        "{seen:?}"
    );
    drop(shadow);
    assert_eq!(
        get(&r, "/", &[]).await.status(),
        200,
        "a dead mirror does not hurt either"
    );
}

#[tokio::test]
async fn outlier_detection_ejects_then_returns() {
    let good = Backend::start("good", Behaviour::Ok).await;
    let bad = Backend::start("bad", Behaviour::Status(500)).await;
    let policy = "    outlierDetection: {consecutive5xxErrors: 3, baseEjectionTime: 1s, maxEjectionPercent: 50}\n    loadBalancer: {simple: ROUND_ROBIN}\n";
    let (r, _) = router(&config(
        &[("v1", good.port()), ("v1", bad.port())],
        &dr(policy),
    ));
    let mut errors = 0;
    for _ in 0..40 {
        if get(&r, "/", &[]).await.status() != 200 {
            errors += 1;
        }
    }
    assert_eq!(bad.hits(), 3, "ejected after three 5xx in a row");
    assert!(
        errors <= 3,
        "no errors beyond the ones that caused the ejection: {errors}"
    );
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    for _ in 0..10 {
        get(&r, "/", &[]).await;
    }
    assert!(bad.hits() > 3, "back after the ejection time");
}

#[tokio::test]
async fn a_dead_subset_fails_over_to_the_live_one() {
    let v1 = Backend::start("v1", Behaviour::Ok).await;
    let dead = dead_port().await;
    let policy = "    outlierDetection: {consecutiveGatewayErrors: 1, baseEjectionTime: 30s, maxEjectionPercent: 100}\n";
    let split = "  - route:\n    - {destination: {host: web, subset: v1}, weight: 50}\n    - {destination: {host: web, subset: v2}, weight: 50}\n";
    let (r, _) = router(&(config(&[("v1", v1.port()), ("v2", dead)], &dr(policy)) + &vs(split)));
    let mut failures = 0;
    for _ in 0..50 {
        let resp = get(&r, "/", &[]).await;
        if resp.status() != 200 {
            failures += 1;
        }
    }
    // GET is retried on connect failure against the other endpoint... of the
    // same subset, which has none left: at most the first try fails.
    assert!(failures <= 1, "{failures} failures");
    assert!(v1.hits() >= 49);
}

#[tokio::test]
async fn connection_pool_overflow_is_a_503_with_reason() {
    let slow = Backend::start("v1", Behaviour::Slow(Duration::from_millis(500))).await;
    let policy =
        "    connectionPool: {tcp: {maxConnections: 1}, http: {http1MaxPendingRequests: 1}}\n";
    let (r, _) = router(&config(&[("v1", slow.port())], &dr(policy)));
    let calls: Vec<_> = (0..3)
        .map(|_| {
            let req = Request::get("http://web/").body(empty()).unwrap();
            tokio::spawn(r.clone().oneshot(req))
        })
        .collect();
    let mut statuses = Vec::new();
    for c in calls {
        let resp = c.await.unwrap().unwrap();
        if resp.status() == 503 {
            assert!(
                resp.headers()[REASON_HEADER]
                    .to_str()
                    .unwrap()
                    .starts_with("overflow")
            );
        }
        statuses.push(resp.status().as_u16());
    }
    statuses.sort_unstable();
    assert_eq!(
        statuses,
        [200, 200, 503],
        "one in flight, one waiting, one overflowing"
    );
}

#[tokio::test]
async fn errors_answer_with_status_and_reason() {
    let v1 = Backend::start("v1", Behaviour::Ok).await;
    let routes = "  - match: [{uri: {prefix: /old}}]\n    redirect: {uri: /new, redirectCode: 302}\n\
                  \x20 - match: [{uri: {exact: /teapot}}]\n    directResponse: {status: 418, body: {string: short and stout}}\n\
                  \x20 - match: [{uri: {prefix: /api/}}]\n    rewrite: {uri: /v2/}\n    headers: {request: {set: {x-mesh: 'yes'}, remove: [x-secret]}, response: {add: {x-served-by: mesh}}}\n    route: [{destination: {host: web}}]\n\
                  \x20 - match: [{uri: {prefix: /}}]\n    route: [{destination: {host: web, subset: v9}}]\n";
    let (r, _) = router(&(config(&[("v1", v1.port())], PLAINTEXT_DR) + &vs(routes)));

    let resp = get(&r, "/old?x=1", &[]).await;
    assert_eq!(resp.status(), 302);
    assert_eq!(resp.headers()[http::header::LOCATION], "http://web/new?x=1");

    let resp = get(&r, "/teapot", &[]).await;
    assert_eq!(resp.status(), 418);
    assert_eq!(
        resp.into_body().collect().await.unwrap().to_bytes(),
        "short and stout"
    );

    let resp = get(&r, "/api/items?id=3", &[("x-secret", "s")]).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-served-by"], "mesh");
    let (_, path, headers) = v1.seen.lock().unwrap().last().cloned().unwrap();
    assert_eq!(path, "/v2/items?id=3");
    assert_eq!(headers.get("x-mesh").map(String::as_str), Some("yes"));
    assert!(!headers.contains_key("x-secret"));
    assert_eq!(
        headers.get("host").map(String::as_str),
        Some("web"),
        "the Host header is kept"
    );

    let resp = get(&r, "/other", &[]).await;
    assert_eq!(resp.status(), 503);
    assert!(
        resp.headers()[REASON_HEADER]
            .to_str()
            .unwrap()
            .contains("subset v9"),
        "{:?}",
        resp.headers()
    );

    let unknown = r
        .clone()
        .oneshot(Request::get("http://nowhere/").body(empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(unknown.status(), 503);
    assert_eq!(
        unknown.headers()[REASON_HEADER],
        "no route: nowhere is not a known service"
    );

    let only = "  - match: [{uri: {prefix: /only}}]\n    route: [{destination: {host: web}}]\n";
    let (r, _) = router(&(config(&[("v1", v1.port())], PLAINTEXT_DR) + &vs(only)));
    let resp = get(&r, "/elsewhere", &[]).await;
    assert_eq!(resp.status(), 404);
    assert!(
        resp.headers()[REASON_HEADER]
            .to_str()
            .unwrap()
            .contains("VirtualService default/web")
    );

    let dead = dead_port().await;
    let (r, _) = router(&config(&[("v1", dead)], PLAINTEXT_DR));
    let resp = get(&r, "/", &[]).await;
    assert_eq!(resp.status(), 503);
    assert!(
        resp.headers()[REASON_HEADER]
            .to_str()
            .unwrap()
            .starts_with("upstream connect error")
    );

    // STRICT by default and no identity here: the mesh refuses to send
    // plaintext to a workload that wants mTLS, and says why.
    let strict_dr = "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: web}\nspec: {host: web}\n";
    let strict = config(&[("v1", v1.port())], strict_dr).replace(
        "spec: {mtls: {mode: DISABLE}}",
        "spec: {mtls: {mode: STRICT}}",
    );
    let (r, _) = router(&strict);
    let resp = get(&r, "/", &[]).await;
    assert_eq!(resp.status(), 503);
    assert!(
        resp.headers()[REASON_HEADER]
            .to_str()
            .unwrap()
            .contains("no mesh identity"),
        "{:?}",
        resp.headers()
    );
}

#[tokio::test]
async fn sticky_keys_move_minimally_when_weights_change() {
    let (v1, v2) = (
        Backend::start("v1", Behaviour::Ok).await,
        Backend::start("v2", Behaviour::Ok).await,
    );
    let ws = [("v1", v1.port()), ("v2", v2.port())];
    let policy = dr("    loadBalancer: {consistentHash: {httpHeaderName: x-user}}\n");
    let (r, store) = router(&(config(&ws, &policy) + &vs(SPLIT_90_10)));
    let users: Vec<String> = (0..1_000).map(|i| format!("session-{i}")).collect();
    let mut before = Vec::new();
    for u in &users {
        before.push(backend_of(&get(&r, "/", &[("x-user", u)]).await));
    }
    let split_80_20 = SPLIT_90_10
        .replace("weight: 90", "weight: 80")
        .replace("weight: 10", "weight: 20");
    store
        .apply(mesh_core::load::load_str(
            Path::new("t.yaml"),
            &(config(&ws, &policy) + &vs(&split_80_20)),
        ))
        .unwrap();
    let mut moved = 0;
    for (u, was) in users.iter().zip(&before) {
        let now = backend_of(&get(&r, "/", &[("x-user", u)]).await);
        if &now != was {
            assert_eq!(
                (was.as_str(), now.as_str()),
                ("v1", "v2"),
                "{u} moved the wrong way"
            );
            moved += 1;
        }
    }
    assert!((90..=110).contains(&moved), "{moved} of 1000 keys moved");
}

#[tokio::test]
async fn hashing_by_query_parameter_and_source_ip() {
    let (a, b) = (
        Backend::start("a", Behaviour::Ok).await,
        Backend::start("b", Behaviour::Ok).await,
    );
    let ws = [("v1", a.port()), ("v1", b.port())];
    let (r, _) = router(&config(
        &ws,
        &dr("    loadBalancer: {consistentHash: {httpQueryParameterName: cart}}\n"),
    ));
    let mut seen = std::collections::BTreeSet::new();
    for cart in 0..40 {
        let first = backend_of(&get(&r, &format!("/?cart={cart}"), &[]).await);
        for _ in 0..3 {
            assert_eq!(
                backend_of(&get(&r, &format!("/x?cart={cart}&y=1"), &[]).await),
                first
            );
        }
        seen.insert(first);
    }
    assert_eq!(seen.len(), 2, "keys spread over both endpoints");

    let (r, _) = router(&config(
        &ws,
        &dr("    loadBalancer: {consistentHash: {useSourceIp: true}}\n"),
    ));
    for ip in 1..20u8 {
        let addr: SocketAddr = format!("10.1.0.{ip}:5000").parse().unwrap();
        let mut backends = std::collections::BTreeSet::new();
        for _ in 0..4 {
            let mut req = Request::get("http://web/").body(empty()).unwrap();
            req.extensions_mut()
                .insert(mesh_tower::traffic::ClientAddr(addr));
            backends.insert(backend_of(&r.clone().oneshot(req).await.unwrap()));
        }
        assert_eq!(backends.len(), 1, "{addr} moved");
    }
}

#[tokio::test]
async fn an_upstream_speaking_garbage_gets_a_502() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        loop {
            let (mut tcp, _) = listener.accept().await.unwrap();
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut buf = [0u8; 1024];
            let _ = tcp.read(&mut buf).await;
            let _ = tcp.write_all(b"SSH-2.0-OpenSSH_9.2\r\n\r\n").await;
        }
    });
    let (r, _) = router(&config(&[("v1", port)], PLAINTEXT_DR));
    let resp = r
        .clone()
        .oneshot(Request::post("http://web/").body(full("x")).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
    assert!(
        resp.headers()[REASON_HEADER]
            .to_str()
            .unwrap()
            .starts_with("upstream protocol error")
    );
    server.abort();
}

#[tokio::test]
async fn the_router_behind_a_real_hyper_server() {
    let (v1, v2) = (
        Backend::start("v1", Behaviour::Ok).await,
        Backend::start("v2", Behaviour::Ok).await,
    );
    let (router, _) =
        router(&(config(&[("v1", v1.port()), ("v2", v2.port())], PLAINTEXT_DR) + &vs(SPLIT_90_10)));
    // A front server handing every request to the router, as the sidecar's
    // outbound listener does.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let front = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let svc = hyper_util::service::TowerToHyperService::new(router.clone());
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    let client: hyper_util::client::legacy::Client<_, Full<Bytes>> =
        hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http();
    let mut v2_hits = 0;
    for _ in 0..200 {
        let req = Request::get(format!("http://{front}/page"))
            .header("host", "web")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = client.request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let who = backend_of(&resp);
        v2_hits += usize::from(who == "v2");
        assert_eq!(
            resp.into_body().collect().await.unwrap().to_bytes(),
            who.as_bytes()
        );
    }
    assert!((8..=40).contains(&v2_hits), "{v2_hits} of 200 on v2");
    let req = Request::get(format!("http://{front}/"))
        .header("host", "unknown.example")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key(REASON_HEADER));
    server.abort();
}

#[tokio::test]
async fn a_tls_conflict_is_refused_with_the_reason() {
    let v1 = Backend::start("v1", Behaviour::Ok).await;
    // The backends want mTLS (STRICT) and the DestinationRule sends plaintext.
    let yaml = config(&[("v1", v1.port())], PLAINTEXT_DR).replace(
        "spec: {mtls: {mode: DISABLE}}",
        "spec: {mtls: {mode: STRICT}}",
    );
    let (r, _) = router(&yaml);
    let resp = get(&r, "/", &[]).await;
    assert_eq!(resp.status(), 503);
    let reason = resp.headers()[REASON_HEADER].to_str().unwrap().to_owned();
    assert!(
        reason.contains("TLS conflict")
            && reason.contains("PeerAuthentication default/plaintext-backends")
            && reason.contains("DestinationRule default/web"),
        "{reason}"
    );
    assert_eq!(v1.hits(), 0, "nothing was sent");
}

#[tokio::test]
async fn source_labels_come_from_the_callers_workload_entry() {
    let (v1, v2) = (
        Backend::start("v1", Behaviour::Ok).await,
        Backend::start("v2", Behaviour::Ok).await,
    );
    let routes = "  - match: [{sourceLabels: {app: client}}]\n    route: [{destination: {host: web, subset: v2}}]\n\
                  \x20 - route: [{destination: {host: web, subset: v1}}]\n";
    let (r, _) =
        router(&(config(&[("v1", v1.port()), ("v2", v2.port())], PLAINTEXT_DR) + &vs(routes)));
    assert_eq!(
        backend_of(&get(&r, "/", &[]).await),
        "v2",
        "the client's labels matched"
    );
    let store = Arc::new(Store::new());
    store
        .apply(mesh_core::load::load_str(
            Path::new("t.yaml"),
            &(config(&[("v1", v1.port()), ("v2", v2.port())], PLAINTEXT_DR) + &vs(routes)),
        ))
        .unwrap();
    let other = Router::with_random(
        store,
        RouterConfig::for_workload("default", "nobody"),
        None,
        Arc::new(SeededRandom::new(1)),
    );
    assert_eq!(
        backend_of(&get(&other, "/", &[]).await),
        "v1",
        "an unknown caller has no labels"
    );
}

/// A request with `method` and headers to `http://web{path}`.
async fn send(
    r: &Router,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Response<mesh_tower::body::BoxBody> {
    let mut b = Request::builder()
        .method(method)
        .uri(format!("http://web{path}"));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    r.clone().oneshot(b.body(empty()).unwrap()).await.unwrap()
}

fn header<B>(resp: &Response<B>, name: &str) -> Option<String> {
    let all: Vec<_> = resp
        .headers()
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    (!all.is_empty()).then(|| all.join(", "))
}

/// `corsPolicy` as Envoy's CORS filter answers it: an allowed origin's
/// preflight is answered by the proxy with the policy's headers and never
/// reaches the backend; another origin's preflight goes on (`FORWARD`) or
/// is answered bare (`IGNORE`); a simple request from an allowed origin
/// gets `Access-Control-Allow-Origin` (its own origin, never `*`),
/// credentials and exposed headers; every answer to a request
/// with `Origin` varies on it; a request without `Origin` is untouched.
#[tokio::test]
async fn cors_preflights_are_answered_and_allowed_origins_get_their_headers() {
    let v1 = Backend::start("v1", Behaviour::Ok).await;
    let http = "  - match: [{uri: {prefix: /ignore}}]\n    route: [{destination: {host: web}}]\n    corsPolicy:\n      allowOrigins: [{exact: 'https://app.example.test'}]\n      unmatchedPreflights: IGNORE\n\
                \x20 - match: [{uri: {prefix: /legacy}}]\n    route: [{destination: {host: web}}]\n    corsPolicy: {allowOrigin: ['*']}\n\
                \x20 - match: [{uri: {prefix: /fault}}]\n    fault: {abort: {httpStatus: 503, percentage: {value: 100}}}\n    route: [{destination: {host: web}}]\n    corsPolicy: {allowOrigins: [{exact: 'https://app.example.test'}]}\n\
                \x20 - route: [{destination: {host: web}}]\n    corsPolicy:\n      allowOrigins: [{exact: 'https://app.example.test'}, {prefix: 'https://dev-'}, {regex: 'https://[a-z]+\\.example\\.org'}]\n      allowMethods: [POST, GET, OPTIONS]\n      allowHeaders: [content-type, x-token]\n      exposeHeaders: [x-backend]\n      maxAge: 300s\n      allowCredentials: true\n";
    let (r, _store) = router(&format!(
        "{}{PLAINTEXT_DR}{}",
        config(&[("v1", v1.port())], ""),
        vs(http)
    ));
    let preflight = |origin: &'static str| {
        vec![
            ("origin", origin),
            ("access-control-request-method", "POST"),
            ("access-control-request-headers", "content-type"),
        ]
    };

    // An allowed origin's preflight: answered here, the backend never sees it.
    let resp = send(
        &r,
        "OPTIONS",
        "/api",
        &preflight("https://app.example.test"),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        header(&resp, "access-control-allow-origin").as_deref(),
        Some("https://app.example.test")
    );
    assert_eq!(
        header(&resp, "access-control-allow-methods").as_deref(),
        Some("POST,GET,OPTIONS")
    );
    assert_eq!(
        header(&resp, "access-control-allow-headers").as_deref(),
        Some("content-type,x-token")
    );
    assert_eq!(
        header(&resp, "access-control-max-age").as_deref(),
        Some("300")
    );
    assert_eq!(
        header(&resp, "access-control-allow-credentials").as_deref(),
        Some("true")
    );
    assert_eq!(header(&resp, "vary").as_deref(), Some("origin"));
    assert_eq!(v1.hits(), 0);
    // Prefix and regex origins are allowed the same way.
    for origin in ["https://dev-42.example.test", "https://shop.example.org"] {
        let resp = send(&r, "OPTIONS", "/api", &preflight(origin)).await;
        assert_eq!(
            header(&resp, "access-control-allow-origin").as_deref(),
            Some(origin)
        );
    }
    assert_eq!(v1.hits(), 0);

    // Another origin's preflight goes on to the backend (FORWARD, the
    // default), which knows nothing of CORS: no CORS headers come back.
    for origin in [
        "https://evil.example.test",
        "https://shop.example.org.evil.test",
        "null",
    ] {
        let resp = send(&r, "OPTIONS", "/api", &preflight(origin)).await;
        assert_eq!(backend_of(&resp), "v1", "{origin}");
        assert_eq!(
            header(&resp, "access-control-allow-origin"),
            None,
            "{origin}"
        );
        assert_eq!(header(&resp, "vary").as_deref(), Some("origin"));
    }
    assert_eq!(v1.hits(), 3);
    // ... or is answered bare where the route says IGNORE.
    let resp = send(
        &r,
        "OPTIONS",
        "/ignore",
        &preflight("https://evil.example.test"),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(backend_of(&resp), "");
    assert_eq!(header(&resp, "access-control-allow-origin"), None);
    assert_eq!(v1.hits(), 3);

    // The actual request from an allowed origin: forwarded, with the
    // policy's headers on the answer.
    let resp = send(&r, "GET", "/api", &[("origin", "https://app.example.test")]).await;
    assert_eq!(backend_of(&resp), "v1");
    assert_eq!(
        header(&resp, "access-control-allow-origin").as_deref(),
        Some("https://app.example.test")
    );
    assert_eq!(
        header(&resp, "access-control-allow-credentials").as_deref(),
        Some("true")
    );
    assert_eq!(
        header(&resp, "access-control-expose-headers").as_deref(),
        Some("x-backend")
    );
    // From another origin: forwarded (the server decides, CORS is the
    // browser's), with nothing that lets the browser read the answer.
    let resp = send(
        &r,
        "GET",
        "/api",
        &[("origin", "https://evil.example.test")],
    )
    .await;
    assert_eq!(backend_of(&resp), "v1");
    assert_eq!(header(&resp, "access-control-allow-origin"), None);
    assert_eq!(header(&resp, "access-control-allow-credentials"), None);
    assert_eq!(header(&resp, "vary").as_deref(), Some("origin"));
    // Without Origin: no CORS at all.
    let resp = send(&r, "GET", "/api", &[]).await;
    assert_eq!(header(&resp, "access-control-allow-origin"), None);
    assert_eq!(header(&resp, "vary"), None);
    // The deprecated `allowOrigin: ['*']` allows any origin, answered with
    // the origin itself.
    let resp = send(&r, "GET", "/legacy", &[("origin", "https://any.test")]).await;
    assert_eq!(
        header(&resp, "access-control-allow-origin").as_deref(),
        Some("https://any.test")
    );
    assert_eq!(header(&resp, "access-control-allow-credentials"), None);
    // An answer the mesh gives itself (a fault's abort) carries them too,
    // so the browser shows the status rather than a CORS failure.
    let resp = send(
        &r,
        "GET",
        "/fault",
        &[("origin", "https://app.example.test")],
    )
    .await;
    assert_eq!(resp.status(), 503);
    assert_eq!(
        header(&resp, "access-control-allow-origin").as_deref(),
        Some("https://app.example.test")
    );
}

/// `maxRequestsPerConnection`: a connection carries that many requests,
/// then the next request opens another (1: a connection per request, no
/// keep-alive); unset, one connection carries them all.
#[tokio::test]
async fn max_requests_per_connection_opens_a_new_connection_after_n_requests() {
    for (max, conns) in [(None, 1), (Some(1), 6), (Some(2), 3), (Some(0), 1)] {
        let v1 = Backend::start("v1", Behaviour::Ok).await;
        let policy = max.map_or(String::new(), |n| {
            format!("    connectionPool: {{http: {{maxRequestsPerConnection: {n}}}}}\n")
        });
        let (r, _store) = router(&format!(
            "{}{}",
            config(&[("v1", v1.port())], ""),
            dr(&policy)
        ));
        for _ in 0..6 {
            let resp = get(&r, "/", &[]).await;
            assert_eq!(resp.status(), 200);
            resp.into_body().collect().await.unwrap();
        }
        assert_eq!(v1.hits(), 6);
        assert_eq!(v1.conns(), conns, "maxRequestsPerConnection {max:?}");
    }
}

/// A TCP relay in front of a backend that can go silent: while `frozen`,
/// what either side sends is read and dropped (as by a peer that vanished
/// without closing), and a connection the client closes is counted.
struct Relay {
    port: u16,
    frozen: Arc<std::sync::atomic::AtomicBool>,
    closed_by_client: Arc<AtomicUsize>,
}

impl Relay {
    async fn start(backend: u16) -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let frozen = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let closed_by_client = Arc::new(AtomicUsize::new(0));
        let (f, closed) = (frozen.clone(), closed_by_client.clone());
        tokio::spawn(async move {
            loop {
                let (client, _) = listener.accept().await.unwrap();
                let server = tokio::net::TcpStream::connect(("127.0.0.1", backend))
                    .await
                    .unwrap();
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let (f1, f2, closed) = (f.clone(), f.clone(), closed.clone());
                tokio::spawn(async move {
                    let mut buf = [0u8; 16384];
                    loop {
                        match cr.read(&mut buf).await {
                            Ok(0) | Err(_) => {
                                closed.fetch_add(1, Ordering::SeqCst);
                                return;
                            }
                            Ok(n) if !f1.load(Ordering::SeqCst) => {
                                if sw.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                            Ok(_) => {}
                        }
                    }
                });
                tokio::spawn(async move {
                    let mut buf = [0u8; 16384];
                    loop {
                        match sr.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) if !f2.load(Ordering::SeqCst) => {
                                if cw.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                            Ok(_) => {}
                        }
                    }
                });
            }
        });
        Self {
            port,
            frozen,
            closed_by_client,
        }
    }
}

/// `http2KeepAlive`: an HTTP/2 connection whose peer stops answering (its
/// PINGs go unanswered) is closed by the mesh, and the next request gets a
/// new connection instead of hanging on the dead one. Without it, the dead
/// connection stays pooled.
#[tokio::test]
async fn http2_keep_alive_closes_a_connection_whose_peer_went_silent() {
    for keep_alive in [true, false] {
        let backend = Backend::start("v1", Behaviour::Ok).await;
        let relay = Relay::start(backend.port()).await;
        let policy = if keep_alive {
            "  trafficPolicy: {connectionPool: {http: {http2KeepAlive: {interval: 100ms, timeout: 200ms}}}}\n"
        } else {
            ""
        };
        let yaml = format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: web}}\n\
             spec: {{hosts: [web], ports: [{{number: 80, name: grpc-web, protocol: HTTP2}}], workloadSelector: {{labels: {{app: web}}}}}}\n---\n\
             apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: web-1}}\n\
             spec: {{address: 127.0.0.1, ports: {{grpc-web: {}}}, labels: {{app: web}}}}\n---\n\
             apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: client}}\nspec: {{address: 127.0.0.1, labels: {{app: client}}}}\n---\n\
             apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: plaintext}}\nspec: {{mtls: {{mode: DISABLE}}}}\n---\n\
             apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: web}}\n\
             spec:\n  host: web\n{policy}",
            relay.port
        );
        let (r, _store) = router(&yaml);
        let resp = get(&r, "/", &[]).await;
        assert_eq!(resp.status(), 200);
        resp.into_body().collect().await.unwrap();
        assert_eq!(backend.conns(), 1);

        relay.frozen.store(true, Ordering::SeqCst);
        // The PINGs find the silence: the mesh closes the connection.
        let mut closed = false;
        for _ in 0..100 {
            if relay.closed_by_client.load(Ordering::SeqCst) == 1 {
                closed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(closed, keep_alive, "keepalive {keep_alive}");
        if keep_alive {
            // The next request dials again, and is answered.
            relay.frozen.store(false, Ordering::SeqCst);
            let resp = get(&r, "/", &[]).await;
            assert_eq!(resp.status(), 200);
            assert_eq!(backend.conns(), 2);
        }
    }
}

/// A TCP server that writes `name` to every connection and closes it.
async fn tcp_namer(name: &'static str) -> u16 {
    use tokio::io::AsyncWriteExt;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let _ = tcp.write_all(name.as_bytes()).await;
        }
    });
    port
}

/// A VirtualService's TCP routes choose by the caller's labels
/// (`sourceLabels`), first rule that applies; a match restricted to a
/// gateway is not the mesh's; a caller no rule is for goes where the last,
/// unconditional rule says.
#[tokio::test]
async fn tcp_routes_choose_by_the_callers_labels_and_skip_gateway_only_matches() {
    use mesh_tower::traffic::TcpRouter;
    use tokio::io::AsyncReadExt;
    let (v1, v2) = (tcp_namer("v1").await, tcp_namer("v2").await);
    let yaml = format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: db}}\n\
         spec: {{hosts: [db], ports: [{{number: 5432, name: tcp-db, protocol: TCP}}], workloadSelector: {{labels: {{app: db}}}}}}\n---\n\
         apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: db-v1}}\n\
         spec: {{address: 127.0.0.1, ports: {{tcp-db: {v1}}}, labels: {{app: db, version: v1}}}}\n---\n\
         apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: db-v2}}\n\
         spec: {{address: 127.0.0.1, ports: {{tcp-db: {v2}}}, labels: {{app: db, version: v2}}}}\n---\n\
         apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: reporting}}\nspec: {{address: 127.0.0.2, labels: {{app: reporting}}}}\n---\n\
         apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: shop}}\nspec: {{address: 127.0.0.3, labels: {{app: shop}}}}\n---\n\
         apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: plaintext}}\nspec: {{mtls: {{mode: DISABLE}}}}\n---\n\
         apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: db}}\n\
         spec:\n  host: db\n  trafficPolicy: {{tls: {{mode: DISABLE}}}}\n  subsets:\n  - {{name: v1, labels: {{version: v1}}}}\n  - {{name: v2, labels: {{version: v2}}}}\n---\n\
         apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: db}}\n\
         spec:\n  hosts: [db]\n  tcp:\n\
         \x20 - match: [{{port: 5432, gateways: [edge]}}]\n    route: [{{destination: {{host: db, subset: v2}}}}]\n\
         \x20 - match: [{{port: 5432, sourceLabels: {{app: reporting}}}}]\n    route: [{{destination: {{host: db, subset: v2}}}}]\n\
         \x20 - route: [{{destination: {{host: db, subset: v1}}}}]\n"
    );
    let (_r, store) = router(&yaml);
    for (caller, want) in [("default/reporting", "v2"), ("default/shop", "v1")] {
        let tcp = TcpRouter::new(store.clone(), "default", None).located(
            Some(caller.to_owned()),
            None,
            None,
        );
        for _ in 0..5 {
            let mut conn = tcp.connect("db", 5432).await.unwrap();
            let mut got = String::new();
            conn.io.read_to_string(&mut got).await.unwrap();
            assert_eq!(got, want, "{caller}");
        }
    }
}
