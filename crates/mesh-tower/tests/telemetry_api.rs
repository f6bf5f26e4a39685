#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The Telemetry API through the real telemetry layer: the settings a
//! store's snapshot resolves for each workload change what a scrape of
//! `/stats/prometheus` shows (a tag upserted, a tag removed, a metric
//! disabled for one workload and not another) and which access-log lines
//! are written (off for one workload, only 5xx for another), and decide
//! the sampling of the traces the layer starts.

use std::convert::Infallible;
use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use mesh_core::store::Store;
use mesh_tower::telemetry::{
    MetricsService, Registry, RequestBody, TelemetryLayer, TelemetrySettings, WorkloadInfo, trace,
};
use tokio::net::TcpListener;
use tower::{ServiceBuilder, ServiceExt};

const CONFIG: &str = r#"
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: web, namespace: shop}
spec: {address: 10.0.0.1, labels: {app: web}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: api, namespace: shop}
spec: {address: 10.0.0.2, labels: {app: api}}
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: istio-system}
spec:
  metrics:
  - providers: [{name: prometheus}]
    overrides:
    - match: {metric: REQUEST_COUNT}
      tagOverrides:
        request_method: {value: request.method}
        user: {value: "request.headers['x-user']"}
        request_protocol: {operation: REMOVE}
  accessLogging:
  - providers: [{name: envoy}]
    filter: {expression: "response.code >= 500"}
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: api, namespace: shop}
spec:
  selector: {matchLabels: {app: api}}
  metrics:
  - overrides:
    - match: {metric: REQUEST_DURATION, mode: SERVER}
      disabled: true
  accessLogging:
  - disabled: true
  tracing:
  - randomSamplingPercentage: 0
"#;

fn store() -> Arc<Store> {
    let store = Arc::new(Store::new());
    store
        .apply(mesh_core::load::load_str(Path::new("t.yaml"), CONFIG))
        .unwrap();
    store
}

/// Collects the `status` of `mesh::access` events.
#[derive(Clone, Default)]
struct AccessLog(Arc<Mutex<Vec<String>>>);

struct Status(Option<String>);

impl tracing::field::Visit for Status {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "status" {
            self.0 = Some(format!("{value:?}"));
        }
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for AccessLog {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        if event.metadata().target() == "mesh::access" {
            let mut s = Status(None);
            event.record(&mut s);
            self.0.lock().unwrap().push(s.0.unwrap_or_default());
        }
    }
}

/// A workload's inbound side with `code` as the application's answer;
/// `sampled` records whether the trace the layer started is sampled.
async fn call(
    registry: &Registry,
    store: &Arc<Store>,
    name: &str,
    code: u16,
    sampled: &Arc<Mutex<Vec<bool>>>,
) {
    let sampled = sampled.clone();
    let svc = ServiceBuilder::new()
        .layer(
            TelemetryLayer::inbound(registry.clone(), WorkloadInfo::new(name, "shop"))
                .with_settings(Arc::new(TelemetrySettings::new(
                    store.clone(),
                    "shop",
                    name,
                ))),
        )
        .service_fn(move |_req: Request<RequestBody<Empty<Bytes>>>| {
            let sampled = sampled.clone();
            async move {
                sampled
                    .lock()
                    .unwrap()
                    .push(trace::current().unwrap().sampled());
                let mut resp = Response::new(Full::new(Bytes::from_static(b"ok")));
                *resp.status_mut() = StatusCode::from_u16(code).unwrap();
                Ok::<_, Infallible>(resp)
            }
        });
    let req = Request::get("http://web.shop/")
        .header("x-user", "ann")
        .body(Empty::new())
        .unwrap();
    let resp = svc.oneshot(req).await.unwrap();
    // The body's end records the request.
    resp.into_body().collect().await.unwrap();
}

/// Scrapes `registry` through a real `/stats/prometheus` listener.
async fn scrape(registry: Registry) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let svc = MetricsService::new(registry);
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let _ = auto::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(tcp), TowerToHyperService::new(svc))
            .await;
    });
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build_http::<Empty<Bytes>>();
    let resp = client
        .get(format!("http://{addr}/stats/prometheus").parse().unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    server.abort();
    String::from_utf8(body.to_vec()).unwrap()
}

fn series<'a>(text: &'a str, metric: &str, workload: &str) -> Vec<&'a str> {
    let needle = format!("destination_workload=\"{workload}\"");
    text.lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")) && l.contains(&needle))
        .collect()
}

#[tokio::test]
async fn telemetries_change_the_scrape_and_the_access_log_per_workload() {
    use tracing_subscriber::layer::SubscriberExt;
    let log = AccessLog::default();
    let _guard = tracing::subscriber::set_default(tracing_subscriber::registry().with(log.clone()));
    tracing::callsite::rebuild_interest_cache();

    let store = store();
    let registry = Registry::new();
    let sampled = Arc::new(Mutex::new(Vec::new()));
    call(&registry, &store, "web", 200, &sampled).await;
    call(&registry, &store, "web", 503, &sampled).await;
    call(&registry, &store, "api", 200, &sampled).await;
    call(&registry, &store, "api", 503, &sampled).await;
    let text = scrape(registry).await;

    // REQUEST_COUNT: the upserted tags on, request_protocol gone, for both.
    let web = series(&text, "istio_requests_total", "web");
    assert_eq!(web.len(), 2, "{text}");
    for l in &web {
        assert!(l.contains("request_method=\"GET\""), "{l}");
        assert!(l.contains("user=\"ann\""), "{l}");
        assert!(!l.contains("request_protocol="), "{l}");
    }
    assert!(web.iter().any(|l| l.contains("response_code=\"503\"")));
    assert_eq!(series(&text, "istio_requests_total", "api").len(), 2);
    // The other metrics keep Istio's standard labels.
    let bytes = series(&text, "istio_request_bytes_count", "web");
    assert!(
        bytes
            .iter()
            .all(|l| l.contains("request_protocol=\"http\"") && !l.contains("user=")),
        "{bytes:?}"
    );
    // One label set per family: every line of istio_requests_total has
    // the same label names.
    let names = |l: &str| -> Vec<String> {
        let inner = &l[l.find('{').unwrap() + 1..l.rfind('}').unwrap()];
        inner
            .split("\",")
            .map(|kv| kv.split('=').next().unwrap().to_owned())
            .collect()
    };
    let family: Vec<Vec<String>> = text
        .lines()
        .filter(|l| l.starts_with("istio_requests_total{"))
        .map(names)
        .collect();
    assert!(family.windows(2).all(|w| w[0] == w[1]), "{family:?}");

    // REQUEST_DURATION disabled for api's SERVER side only.
    assert!(!series(&text, "istio_request_duration_milliseconds_count", "web").is_empty());
    assert!(
        series(&text, "istio_request_duration_milliseconds_count", "api").is_empty(),
        "{text}"
    );

    // Access log: web only its 5xx, api nothing.
    assert_eq!(*log.0.lock().unwrap(), ["503"]);

    // Tracing: web samples every new trace (no percentage), api none.
    assert_eq!(*sampled.lock().unwrap(), [true, true, false, false]);
}

#[test]
fn istios_tag_upsert_of_an_unbound_identifier_reports_unknown() {
    // Istio's own valid sample upserts `value: add`: CEL parses it as an
    // identifier, which names no attribute; Istio's stats filter reports
    // `unknown` for an expression without a value.
    let yaml = r#"
apiVersion: telemetry.istio.io/v1alpha1
kind: Telemetry
metadata: {name: tag-upsert, namespace: istio-system}
spec:
  metrics:
  - overrides:
    - tagOverrides:
        foo: {operation: UPSERT, value: add}
"#;
    // A subscriber here too: the access-log callsite's interest is shared
    // by the tests of this binary, and one without a subscriber would turn
    // it off for the other.
    use tracing_subscriber::layer::SubscriberExt;
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(AccessLog::default()));
    let store = Arc::new(Store::new());
    store
        .apply(mesh_core::load::load_str(Path::new("t.yaml"), yaml))
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let registry = Registry::new();
        let sampled = Arc::new(Mutex::new(Vec::new()));
        call(&registry, &store, "web", 200, &sampled).await;
        let text = registry.render();
        let lines = series(&text, "istio_requests_total", "web");
        assert_eq!(lines.len(), 1, "{text}");
        assert!(lines[0].contains("foo=\"unknown\""), "{text}");
    });
}
