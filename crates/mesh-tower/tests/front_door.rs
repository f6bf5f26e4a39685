//! The proxyless front door: two Rust services meet over the mesh with
//! `Mesh::serve` and `Mesh::client` only: mTLS with secure naming,
//! AuthorizationPolicy, routing and Istio metrics, no sidecar.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;

use http::{Request, Response};
use http_body_util::BodyExt;
use mesh_core::store::Store;
use mesh_tower::Mesh;
use mesh_tower::body::{BoxBody, empty, full};
use mesh_tower::error::REASON_HEADER;
use mesh_tower::tls::PeerIdentity;
use support::TestPki;
use tower::ServiceExt;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn config(reviews_port: u16) -> String {
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: reviews}}
spec:
  hosts: [reviews]
  ports: [{{number: 9080, name: http}}]
  workloadSelector: {{labels: {{app: reviews}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: reviews-v1}}
spec: {{address: 127.0.0.1, ports: {{http: {reviews_port}}}, labels: {{app: reviews, version: v1}}, serviceAccount: reviews}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: productpage}}
spec: {{address: 127.0.0.1, labels: {{app: productpage}}, serviceAccount: productpage}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: stranger}}
spec: {{address: 127.0.0.1, labels: {{app: stranger}}, serviceAccount: stranger}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: reviews}}
spec:
  selector: {{matchLabels: {{app: reviews}}}}
  rules:
  - from: [{{source: {{principals: [cluster.local/ns/default/sa/productpage]}}}}]
    to: [{{operation: {{methods: [GET]}}}}]
"#
    )
}

async fn mesh(pki: &TestPki, store: &Arc<Store>, name: &str, sa: &str) -> Mesh {
    Mesh::builder()
        .store(store.clone())
        .workload("default", name)
        .identity_store(pki.store(sa))
        .build()
        .await
        .unwrap()
}

/// Answers with the caller's verified identity.
async fn whoami(req: Request<BoxBody>) -> Result<Response<BoxBody>, std::convert::Infallible> {
    let caller = req
        .extensions()
        .get::<PeerIdentity>()
        .and_then(|p| p.spiffe_id().map(ToString::to_string))
        .unwrap_or_else(|| "nobody".into());
    Ok(Response::new(full(format!(
        "{caller} {}",
        req.uri().path()
    ))))
}

#[tokio::test]
async fn two_rust_services_over_the_mesh() {
    let pki = TestPki::new("cluster.local");
    let port = free_port();
    let store = Arc::new(Store::new());
    store
        .apply(mesh_core::load::load_str(
            std::path::Path::new("mesh.yaml"),
            &config(port),
        ))
        .unwrap();

    let reviews = mesh(&pki, &store, "reviews-v1", "reviews").await;
    let server = reviews
        .serve(
            format!("127.0.0.1:{port}").parse().unwrap(),
            tower::service_fn(whoami),
        )
        .await
        .unwrap();

    // productpage calls reviews by its service host: mTLS, allowed.
    let productpage = mesh(&pki, &store, "productpage", "productpage").await;
    let req = Request::get("http://reviews:9080/ratings/./1")
        .body(empty())
        .unwrap();
    let resp = productpage.client().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        body, "spiffe://cluster.local/ns/default/sa/productpage /ratings/1",
        "the handler sees the caller and the normalised path"
    );

    // A POST is not in the policy; a stranger is not either.
    let post = Request::post("http://reviews:9080/")
        .body(full("x"))
        .unwrap();
    let resp = productpage.client().oneshot(post).await.unwrap();
    assert_eq!(resp.status(), 403);
    assert!(
        resp.headers()[REASON_HEADER]
            .to_str()
            .unwrap()
            .contains("no ALLOW policy matched")
    );
    // `send` is the same client without naming types.
    let resp = productpage
        .send(Request::get("http://reviews:9080/x").body(empty()).unwrap())
        .await;
    assert_eq!(resp.status(), 200);
    let stranger = mesh(&pki, &store, "stranger", "stranger").await;
    let resp = stranger
        .client()
        .oneshot(Request::get("http://reviews:9080/").body(empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);

    // Istio's metrics on both sides.
    let server_side = reviews.registry().render();
    assert!(server_side.contains(r#"reporter="destination""#));
    assert!(
        server_side
            .contains(r#"source_principal="spiffe://cluster.local/ns/default/sa/productpage""#)
    );
    assert!(server_side.contains(r#"response_code="403""#));
    // Both sides name the service the same way, and the server knows the
    // calling workload from its verified identity.
    assert!(server_side.contains(r#"destination_service="reviews.default.svc.cluster.local""#));
    assert!(server_side.contains(r#"source_workload="productpage""#));
    let client_side = productpage.registry().render();
    assert!(
        client_side.contains(r#"reporter="source""#)
            && client_side.contains(r#"destination_workload="reviews-v1""#)
    );
    assert!(client_side.contains(r#"connection_security_policy="mutual_tls""#));

    // A plaintext client cannot reach the STRICT server.
    let plain = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    assert!(
        support::get(plain, false).await.is_err(),
        "plaintext reached a STRICT server"
    );

    server.shutdown().await;
}

#[tokio::test]
async fn the_builder_says_what_is_missing() {
    let pki = TestPki::new("cluster.local");
    let store = Arc::new(Store::new());
    store
        .apply(mesh_core::load::load_str(
            std::path::Path::new("mesh.yaml"),
            &config(1),
        ))
        .unwrap();
    let err = Mesh::builder()
        .store(store.clone())
        .workload("default", "reviews-v1")
        .build()
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "missing setting: identity");
    let err = Mesh::builder()
        .store(store.clone())
        .workload("default", "nope")
        .identity_store(pki.store("x"))
        .build()
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "no WorkloadEntry default/nope in the configuration"
    );
    let err = Mesh::builder()
        .store(store)
        .workload("default", "reviews-v1")
        .identity_store(pki.store("productpage"))
        .build()
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("the certificate is for spiffe://cluster.local/ns/default/sa/productpage"),
        "{err}"
    );
}
