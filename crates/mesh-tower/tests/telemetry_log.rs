#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The access log: one `mesh::access` event per request with Envoy-like
//! fields. Alone in its binary because tracing's callsite interest cache is
//! process-wide and tests on other threads would race a thread-local
//! subscriber.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use mesh_tower::error::MeshError;
use mesh_tower::telemetry::{DestinationInfo, Registry, RequestBody, TelemetryLayer, WorkloadInfo};
use tower::{ServiceBuilder, ServiceExt};

/// Collects the fields of `mesh::access` events.
#[derive(Clone, Default)]
struct AccessLog(Arc<Mutex<Vec<BTreeMap<String, String>>>>);

struct Fields(BTreeMap<String, String>);

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().into(), format!("{value:?}"));
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for AccessLog {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        if event.metadata().target() == "mesh::access" {
            let mut fields = Fields(BTreeMap::new());
            event.record(&mut fields);
            self.0.lock().unwrap().push(fields.0);
        }
    }
}

#[tokio::test]
async fn one_access_log_line_per_request_with_envoy_like_fields() {
    use tracing_subscriber::layer::SubscriberExt;
    let log = AccessLog::default();
    let _guard = tracing::subscriber::set_default(tracing_subscriber::registry().with(log.clone()));
    tracing::callsite::rebuild_interest_cache();

    // Inbound: a denial, with its reason header.
    let registry = Registry::new();
    let inbound = ServiceBuilder::new()
        .layer(TelemetryLayer::inbound(
            registry.clone(),
            WorkloadInfo::new("reviews-v1", "default"),
        ))
        .service_fn(|_req: Request<RequestBody<Full<Bytes>>>| async {
            Ok::<_, Infallible>(MeshError::Denied("no ALLOW policy matched".into()).to_response())
        });
    let req = Request::post("http://reviews/admin?token=secret")
        .header("x-request-id", "req-1")
        .body(Full::new(Bytes::from_static(b"1234")))
        .unwrap();
    let resp = inbound.oneshot(req).await.unwrap();
    assert_eq!(resp.status(), 403);
    resp.into_body().collect().await.unwrap();

    // Outbound: the router says where the request went.
    let outbound = ServiceBuilder::new()
        .layer(TelemetryLayer::outbound(
            registry.clone(),
            WorkloadInfo::new("productpage-v1", "default"),
        ))
        .service_fn(|_req: Request<RequestBody<Empty<Bytes>>>| async {
            let mut resp = Response::new(Full::new(Bytes::from_static(b"{}")));
            resp.extensions_mut().insert(
                DestinationInfo::new("reviews.default.svc.cluster.local", "default")
                    .with_workload(
                        WorkloadInfo::new("reviews-v2", "default")
                            .with_version("v2")
                            .with_principal(
                                &"spiffe://cluster.local/ns/default/sa/reviews"
                                    .parse()
                                    .unwrap(),
                            ),
                    )
                    .with_mtls(true)
                    .with_upstream("10.0.0.7:9080"),
            );
            Ok::<_, Infallible>(resp)
        });
    let resp = outbound
        .oneshot(
            Request::get("http://reviews/r/1")
                .body(Empty::new())
                .unwrap(),
        )
        .await
        .unwrap();
    resp.into_body().collect().await.unwrap();

    let lines = log.0.lock().unwrap().clone();
    assert_eq!(lines.len(), 2, "{lines:#?}");
    let denied = &lines[0];
    for (k, v) in [
        ("reporter", "destination"),
        ("method", "POST"),
        ("path", "/admin"),
        ("protocol", "HTTP/1.1"),
        ("status", "403"),
        ("flags", "RBAC"),
        ("reason", "RBAC: access denied: no ALLOW policy matched"),
        ("bytes_received", "0"),
        ("authority", "reviews"),
        ("upstream", "-"),
        ("peer", "unknown"),
        ("request_id", "req-1"),
    ] {
        assert_eq!(
            denied.get(k).map(String::as_str),
            Some(v),
            "{k}: {denied:#?}"
        );
    }
    assert!(denied["duration_ms"].parse::<f64>().unwrap() >= 0.0);
    assert_eq!(denied["trace_id"].len(), 32);
    assert!(
        !denied.values().any(|v| v.contains("secret")),
        "no query strings in the log"
    );
    let bytes_sent: usize = denied["bytes_sent"].parse().unwrap();
    assert_eq!(
        bytes_sent,
        "RBAC: access denied: no ALLOW policy matched\n".len()
    );

    let out = &lines[1];
    for (k, v) in [
        ("reporter", "source"),
        ("status", "200"),
        ("flags", "-"),
        ("upstream", "10.0.0.7:9080"),
        ("peer", "spiffe://cluster.local/ns/default/sa/reviews"),
        ("service", "reviews.default.svc.cluster.local"),
        ("bytes_sent", "2"),
        ("reason", "-"),
    ] {
        assert_eq!(out.get(k).map(String::as_str), Some(v), "{k}: {out:#?}");
    }

    // The outbound metrics carry the router's DestinationInfo.
    let text = registry.render();
    let line = text
        .lines()
        .find(|l| l.starts_with("istio_requests_total{reporter=\"source\""))
        .unwrap();
    for label in [
        "source_workload=\"productpage-v1\"",
        "destination_workload=\"reviews-v2\"",
        "destination_version=\"v2\"",
        "destination_principal=\"spiffe://cluster.local/ns/default/sa/reviews\"",
        "destination_service_name=\"reviews\"",
        "response_code=\"200\"",
        "connection_security_policy=\"unknown\"",
    ] {
        assert!(line.contains(label), "{label} in {line}");
    }
    assert!(line.ends_with("} 1"), "{line}");
}
