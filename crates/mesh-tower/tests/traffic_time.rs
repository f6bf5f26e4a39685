//! Retries and timeouts in paused tokio time, with the upstream replaced by a
//! `service_fn`: exact timings, no network, no flakiness.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::{Request, Response};
use mesh_core::store::Store;
use mesh_tower::body::{BoxBody, empty, full};
use mesh_tower::error::REASON_HEADER;
use mesh_tower::traffic::{Router, RouterConfig, SeededRandom};
use mesh_tower::upstream::{Upstream, UpstreamError};
use tokio::time::Instant;
use tower::ServiceExt;

const BASE: &str = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: web}\n\
    spec: {hosts: [web], ports: [{number: 80, name: http}], workloadSelector: {labels: {app: web}}}\n---\n\
    apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: web-1}\n\
    spec: {address: 10.0.0.1, ports: {http: 8080}, labels: {app: web}}\n---\n\
    apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: web-2}\n\
    spec: {address: 10.0.0.2, ports: {http: 8080}, labels: {app: web}}\n---\n\
    apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: web}\nspec: {host: web, trafficPolicy: {tls: {mode: DISABLE}}}\n---\n\
    apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: plaintext}\nspec: {mtls: {mode: DISABLE}}\n";

fn with_route(http: &str) -> String {
    format!(
        "{BASE}---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: web}}\nspec:\n  hosts: [web]\n  http:\n{http}"
    )
}

/// An upstream answering by a script: call `n` (0-based) gets `script(n)`.
fn scripted(
    calls: Arc<AtomicUsize>,
    script: impl Fn(usize) -> (Duration, Result<u16, UpstreamError>) + Send + Sync + Clone + 'static,
) -> Upstream {
    tower::util::BoxCloneSyncService::new(tower::service_fn(move |req: Request<BoxBody>| {
        let n = calls.fetch_add(1, Ordering::SeqCst);
        let (wait, answer) = script(n);
        assert!(
            req.uri().to_string().starts_with("http://10.0.0."),
            "{}",
            req.uri()
        );
        async move {
            tokio::time::sleep(wait).await;
            answer.map(|status| {
                let mut r = Response::new(empty());
                *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
                r
            })
        }
    }))
}

fn router(yaml: &str, upstream: Upstream) -> Router {
    let store = Arc::new(Store::new());
    store
        .apply(mesh_core::load::load_str(Path::new("t.yaml"), yaml))
        .unwrap_or_else(|e| panic!("{e}"));
    Router::with_upstream(
        store,
        RouterConfig::for_workload("default", "client"),
        upstream,
        Arc::new(SeededRandom::new(1)),
    )
}

async fn call(r: &Router, method: &str, body: &'static str) -> Response<BoxBody> {
    let req = Request::builder()
        .method(method)
        .uri("http://web/")
        .body(if body.is_empty() { empty() } else { full(body) })
        .unwrap();
    r.clone().oneshot(req).await.unwrap()
}

#[tokio::test(start_paused = true)]
async fn the_route_timeout_cuts_the_whole_request() {
    let calls = Arc::new(AtomicUsize::new(0));
    let up = scripted(calls.clone(), |_| (Duration::from_secs(60), Ok(200)));
    let r = router(
        &with_route("  - timeout: 25s\n    route: [{destination: {host: web}}]\n"),
        up,
    );
    let t = Instant::now();
    let resp = call(&r, "GET", "").await;
    assert_eq!(resp.status(), 504);
    assert_eq!(t.elapsed(), Duration::from_secs(25));
    assert_eq!(
        resp.headers()[REASON_HEADER],
        "upstream request timeout after 25s"
    );
}

#[tokio::test(start_paused = true)]
async fn per_try_timeouts_retry_then_give_up() {
    let calls = Arc::new(AtomicUsize::new(0));
    let up = scripted(calls.clone(), |_| (Duration::from_secs(60), Ok(200)));
    let route = "  - retries: {attempts: 2, perTryTimeout: 10s, retryOn: gateway-error}\n    route: [{destination: {host: web}}]\n";
    let r = router(&with_route(route), up);
    let t = Instant::now();
    let resp = call(&r, "GET", "").await;
    assert_eq!(resp.status(), 504);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    // Three tries of 10 s, and two short backoffs between them.
    let spent = t.elapsed();
    assert!(
        spent >= Duration::from_secs(30) && spent < Duration::from_secs(31),
        "{spent:?}"
    );

    // The slow first try is cut and the second answers in time.
    let calls = Arc::new(AtomicUsize::new(0));
    let up = scripted(calls.clone(), |n| {
        (
            if n == 0 {
                Duration::from_secs(60)
            } else {
                Duration::from_millis(5)
            },
            Ok(200),
        )
    });
    let route = "  - timeout: 15s\n    retries: {attempts: 2, perTryTimeout: 10s, retryOn: gateway-error}\n    route: [{destination: {host: web}}]\n";
    let r = router(&with_route(route), up);
    let t = Instant::now();
    assert_eq!(call(&r, "GET", "").await.status(), 200);
    assert!(t.elapsed() < Duration::from_secs(11));
}

#[tokio::test(start_paused = true)]
async fn default_retries_for_idempotent_requests_only() {
    let calls = Arc::new(AtomicUsize::new(0));
    let up = scripted(calls.clone(), |n| {
        (Duration::ZERO, Ok(if n == 0 { 503 } else { 200 }))
    });
    let r = router(BASE, up);
    assert_eq!(call(&r, "GET", "").await.status(), 200);
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    let calls = Arc::new(AtomicUsize::new(0));
    let up = scripted(calls.clone(), |n| {
        (Duration::ZERO, Ok(if n == 0 { 503 } else { 200 }))
    });
    let r = router(BASE, up);
    assert_eq!(
        call(&r, "POST", "x=1").await.status(),
        503,
        "POST is not retried by default"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    let calls = Arc::new(AtomicUsize::new(0));
    let up = scripted(calls.clone(), |n| {
        (Duration::ZERO, Ok(if n == 0 { 503 } else { 200 }))
    });
    let r = router(BASE, up);
    assert_eq!(
        call(&r, "PUT", "x=1").await.status(),
        503,
        "nor is a request with a body"
    );

    // A 500 is not in the default conditions; three 503s exhaust the retries.
    let calls = Arc::new(AtomicUsize::new(0));
    let r = router(BASE, scripted(calls.clone(), |_| (Duration::ZERO, Ok(500))));
    assert_eq!(call(&r, "GET", "").await.status(), 500);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let calls = Arc::new(AtomicUsize::new(0));
    let r = router(BASE, scripted(calls.clone(), |_| (Duration::ZERO, Ok(503))));
    assert_eq!(call(&r, "GET", "").await.status(), 503);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn connect_failures_retry_elsewhere_and_protocol_errors_are_502() {
    let calls = Arc::new(AtomicUsize::new(0));
    let up = scripted(calls.clone(), |n| {
        (
            Duration::ZERO,
            if n == 0 {
                Err(UpstreamError::Connect("connection refused".into()))
            } else {
                Ok(200)
            },
        )
    });
    let r = router(BASE, up);
    assert_eq!(call(&r, "GET", "").await.status(), 200);
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    let calls = Arc::new(AtomicUsize::new(0));
    let up = scripted(calls.clone(), |_| {
        (
            Duration::ZERO,
            Err(UpstreamError::Protocol("invalid HTTP version".into())),
        )
    });
    let r = router(BASE, up);
    let resp = call(&r, "GET", "").await;
    assert_eq!(resp.status(), 502);
    assert!(
        resp.headers()[REASON_HEADER]
            .to_str()
            .unwrap()
            .contains("invalid HTTP version")
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "a broken response is not retried by default"
    );

    let calls = Arc::new(AtomicUsize::new(0));
    let r = router(
        BASE,
        scripted(calls.clone(), |_| {
            (
                Duration::ZERO,
                Err(UpstreamError::Connect("refused".into())),
            )
        }),
    );
    let resp = call(&r, "GET", "").await;
    assert_eq!(resp.status(), 503);
    assert!(
        resp.headers()[REASON_HEADER]
            .to_str()
            .unwrap()
            .starts_with("upstream connect error to 10.0.0.")
    );
}
