#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Which HTTP version the router speaks to a mesh peer over mTLS: Istio's
//! `h2UpgradePolicy`. An HTTP/1.1 request goes on as HTTP/1.1 (ALPN
//! `http/1.1`, a pool of connections) unless MeshConfig or the
//! destination's DestinationRule says `UPGRADE`; an HTTP/2 request and an
//! HTTP2/GRPC port always go as HTTP/2. Real mTLS on `127.0.0.1:0`: the
//! server's handler answers with the version it was asked in.

mod support;

use std::path::Path;
use std::sync::Arc;

use http::{Request, Version};
use http_body_util::BodyExt;
use mesh_core::store::Store;
use mesh_tower::body::{BoxBody, empty, full};
use mesh_tower::tls::{MeshAcceptor, MeshConnector, TlsMode, spawn_server};
use mesh_tower::traffic::{Router, RouterConfig, SeededRandom};
use support::TestPki;
use tokio::net::TcpListener;
use tower::ServiceExt;

/// A STRICT mTLS server of `backend` whose app answers with the version
/// of the request it got.
async fn server(pki: &TestPki) -> mesh_tower::tls::ServerHandle {
    let app = tower::service_fn(|req: Request<BoxBody>| async move {
        Ok::<_, std::convert::Infallible>(http::Response::new(full(format!("{:?}", req.version()))))
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let acceptor = MeshAcceptor::new(&pki.store("backend"), TlsMode::Strict).unwrap();
    spawn_server(listener, acceptor, app).unwrap()
}

/// The mesh: `backend` on the server's port, the port's protocol as
/// given, with `extra` documents (a MeshConfig, a DestinationRule).
fn config(port: u16, protocol: &str, extra: &str) -> String {
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: backend, namespace: default}}
spec:
  hosts: [backend.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 80, name: web, protocol: {protocol}}}]
  workloadSelector: {{labels: {{app: backend}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: backend, namespace: default}}
spec:
  address: 127.0.0.1
  ports: {{web: {port}}}
  labels: {{app: backend}}
  serviceAccount: backend
{extra}"#
    )
}

const MESH_UPGRADE: &str = "---
apiVersion: mesh.config/v1alpha1
kind: MeshConfig
metadata: {name: mesh}
spec: {h2UpgradePolicy: UPGRADE}
";

fn dr(policy: &str) -> String {
    format!(
        "---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: backend, namespace: default}}
spec:
  host: backend.default.svc.cluster.local
  trafficPolicy: {{connectionPool: {{http: {{h2UpgradePolicy: {policy}}}}}}}
"
    )
}

/// The version the server saw for `n` requests of `version` through a
/// router of `yaml` (each answer must agree).
async fn seen(pki: &TestPki, yaml: &str, version: Version, n: usize) -> String {
    let store = Arc::new(Store::new());
    store
        .apply(mesh_core::load::load_str(Path::new("mesh.yaml"), yaml))
        .unwrap_or_else(|e| panic!("{e}"));
    let router = Router::with_random(
        store,
        RouterConfig::for_workload("default", "frontend"),
        Some(MeshConnector::new(pki.store("frontend"))),
        Arc::new(SeededRandom::new(1)),
    );
    let mut answers = Vec::new();
    for _ in 0..n {
        let mut req = Request::get("http://backend/").body(empty()).unwrap();
        *req.version_mut() = version;
        let resp = router.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), 200, "{resp:?}");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        answers.push(String::from_utf8_lossy(&body).into_owned());
    }
    answers.dedup();
    assert_eq!(answers.len(), 1, "{answers:?}");
    answers.remove(0)
}

#[tokio::test]
async fn http1_stays_http1_between_proxies_unless_upgraded() {
    let pki = TestPki::new("cluster.local");
    let server = server(&pki).await;
    let port = server.local_addr().port();
    let http = |extra: &str| config(port, "HTTP", extra);

    // Istio's default: DO_NOT_UPGRADE.
    assert_eq!(seen(&pki, &http(""), Version::HTTP_11, 3).await, "HTTP/1.1");
    // MeshConfig UPGRADE, and a DestinationRule's DEFAULT follows it.
    assert_eq!(
        seen(&pki, &http(MESH_UPGRADE), Version::HTTP_11, 3).await,
        "HTTP/2.0"
    );
    let follows = format!("{MESH_UPGRADE}{}", dr("DEFAULT"));
    assert_eq!(
        seen(&pki, &http(&follows), Version::HTTP_11, 1).await,
        "HTTP/2.0"
    );
    // The destination's rule wins over the mesh's, both ways.
    let kept = format!("{MESH_UPGRADE}{}", dr("DO_NOT_UPGRADE"));
    assert_eq!(
        seen(&pki, &http(&kept), Version::HTTP_11, 1).await,
        "HTTP/1.1"
    );
    assert_eq!(
        seen(&pki, &http(&dr("UPGRADE")), Version::HTTP_11, 1).await,
        "HTTP/2.0"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn http2_requests_and_http2_ports_always_go_as_http2() {
    let pki = TestPki::new("cluster.local");
    let server = server(&pki).await;
    let port = server.local_addr().port();
    // A request that came as HTTP/2 goes on as HTTP/2, whatever the policy.
    let kept = dr("DO_NOT_UPGRADE");
    assert_eq!(
        seen(&pki, &config(port, "HTTP", &kept), Version::HTTP_2, 2).await,
        "HTTP/2.0"
    );
    // An HTTP2 or GRPC port speaks HTTP/2.
    for protocol in ["HTTP2", "GRPC"] {
        assert_eq!(
            seen(&pki, &config(port, protocol, &kept), Version::HTTP_11, 2).await,
            "HTTP/2.0",
            "{protocol}"
        );
    }
    server.shutdown().await;
}

#[tokio::test]
async fn a_bad_policy_value_is_refused_by_field() {
    let yaml = config(80, "HTTP", &dr("SOMETIMES"));
    let err = mesh_core::load::load_str(Path::new("mesh.yaml"), &yaml)
        .expect_err("refused")
        .to_string();
    assert!(err.contains("h2UpgradePolicy"), "{err}");
    assert!(err.contains("SOMETIMES"), "{err}");
}
