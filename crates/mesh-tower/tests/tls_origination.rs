//! TLS the mesh originates to a service outside it (DestinationRule
//! `tls: SIMPLE`, Istio's egress TLS origination): the app speaks plain
//! HTTP, the router speaks TLS to the server, verifying its certificate
//! against `caCertificates` for the name `sni`. A server the roots do not
//! vouch for, or one that is not the name asked, gets no request.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::sync::Arc;

use http::{Request, Response};
use http_body_util::BodyExt;
use mesh_core::store::Store;
use mesh_tower::body::{empty, full};
use mesh_tower::error::REASON_HEADER;
use mesh_tower::traffic::{Router, RouterConfig, SeededRandom};
use support::TestPki;
use tower::ServiceExt;

/// A TLS server for `name` (its certificate signed by `pki`), answering
/// each request with `tls <host> <path>`. Returns its port.
async fn tls_server(pki: &TestPki, name: &str) -> u16 {
    let (chain, key) = pki.raw_leaf(vec![support::dns(name)]);
    let config = rustls::ServerConfig::builder_with_provider(mesh_ca::tls::crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc =
                    hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                        let host = req
                            .headers()
                            .get("host")
                            .and_then(|h| h.to_str().ok())
                            .unwrap_or("-")
                            .to_owned();
                        Ok::<_, std::convert::Infallible>(Response::new(full(format!(
                            "tls {host} {}",
                            req.uri().path()
                        ))))
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    port
}

/// Istio's egress pattern: port 80 routed to 443, where the rule
/// originates TLS.
fn config(port: u16, ca: &Path, sni: &str) -> String {
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: api}}
spec:
  hosts: [api.example.test]
  location: MESH_EXTERNAL
  ports: [{{number: 80, name: http, protocol: HTTP}}, {{number: 443, name: https, protocol: HTTPS}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{https: {port}}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: api}}
spec:
  hosts: [api.example.test]
  http:
  - match: [{{port: 80}}]
    route: [{{destination: {{host: api.example.test, port: {{number: 443}}}}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: api}}
spec:
  host: api.example.test
  trafficPolicy:
    portLevelSettings:
    - port: {{number: 443}}
      tls: {{mode: SIMPLE, caCertificates: "{}", sni: {sni}}}
"#,
        ca.display()
    )
}

fn router(yaml: &str) -> Router {
    let store = Arc::new(Store::new());
    store
        .apply(mesh_core::load::load_str(Path::new("t.yaml"), yaml))
        .unwrap_or_else(|e| panic!("{e}"));
    Router::with_random(
        store,
        RouterConfig::for_workload("default", "client"),
        None,
        Arc::new(SeededRandom::new(7)),
    )
}

async fn get(r: &Router) -> Response<mesh_tower::body::BoxBody> {
    r.clone()
        .oneshot(
            Request::get("http://api.example.test/v1/x")
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap()
}

#[tokio::test]
async fn the_router_originates_tls_and_verifies_the_server() {
    let pki = TestPki::new("cluster.local");
    let port = tls_server(&pki, "api.example.test").await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, pki.root_pem()).unwrap();

    let r = router(&config(port, &ca, "api.example.test"));
    let resp = get(&r).await;
    assert_eq!(resp.status(), 200, "{:?}", resp.headers());
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "tls api.example.test /v1/x");

    // Roots that do not vouch for the server: no request reaches it.
    let other = TestPki::new("cluster.local");
    let other_ca = dir.path().join("other.pem");
    std::fs::write(&other_ca, other.root_pem()).unwrap();
    let r = router(&config(port, &other_ca, "api.example.test"));
    let resp = get(&r).await;
    assert_eq!(resp.status(), 503);
    let reason = resp.headers()[REASON_HEADER].to_str().unwrap().to_owned();
    assert!(reason.contains("certificate"), "{reason}");

    // The server is not the name asked for.
    let r = router(&config(port, &ca, "other.example.test"));
    let resp = get(&r).await;
    assert_eq!(resp.status(), 503);
    let reason = resp.headers()[REASON_HEADER].to_str().unwrap().to_owned();
    assert!(reason.contains("certificate"), "{reason}");

    // A roots file that does not exist: refused, naming it.
    let r = router(&config(
        port,
        &dir.path().join("missing.pem"),
        "api.example.test",
    ));
    let resp = get(&r).await;
    assert_eq!(resp.status(), 503);
    let reason = resp.headers()[REASON_HEADER].to_str().unwrap().to_owned();
    assert!(reason.contains("missing.pem"), "{reason}");
}
