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

/// A listener on a port of its own, bound before the configuration names
/// the port, so no other test can take it in between.
async fn bound() -> (tokio::net::TcpListener, u16) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    (listener, port)
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
    let (listener, port) = bound().await;
    let store = Arc::new(Store::new());
    store
        .apply(mesh_core::load::load_str(
            std::path::Path::new("mesh.yaml"),
            &config(port),
        ))
        .unwrap();

    let reviews = mesh(&pki, &store, "reviews-v1", "reviews").await;
    let server = reviews
        .serve_listener(listener, tower::service_fn(whoami))
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
    // The caller's side reports no security policy (Istio: "unknown when
    // report is from source").
    assert!(client_side.contains(r#"connection_security_policy="unknown""#));

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

/// A folder holding `yaml`, and `Mesh`es of its workloads built from it.
struct FromFiles<'p> {
    pki: &'p TestPki,
    dir: tempfile::TempDir,
}

impl<'p> FromFiles<'p> {
    fn new(pki: &'p TestPki, yaml: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("mesh.yaml"), yaml).unwrap();
        Self { pki, dir }
    }

    async fn mesh(&self, name: &str, sa: &str) -> Mesh {
        Mesh::builder()
            .config(self.dir.path())
            .workload("default", name)
            .identity_store(self.pki.store(sa))
            .build()
            .await
            .unwrap()
    }
}

/// A `Mesh` reading a folder sees what its namespace is exported: a
/// VirtualService another namespace keeps to itself (`exportTo: ["."]`)
/// does not route this one's requests.
#[tokio::test]
async fn a_mesh_reading_files_ignores_what_is_not_exported_to_it() {
    let pki = TestPki::new("cluster.local");
    let (listener, port) = bound().await;
    let private = r#"
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews-maintenance, namespace: other}
spec:
  hosts: [reviews.default.svc.cluster.local]
  exportTo: ["."]
  http:
  - directResponse: {status: 503, body: {string: maintenance}}
"#;
    let world = FromFiles::new(&pki, &(config(port) + private));
    let server = world
        .mesh("reviews-v1", "reviews")
        .await
        .serve_listener(listener, tower::service_fn(whoami))
        .unwrap();
    let productpage = world.mesh("productpage", "productpage").await;
    let resp = productpage
        .send(Request::get("http://reviews:9080/x").body(empty()).unwrap())
        .await;
    assert_eq!(resp.status(), 200, "{:?}", resp.headers());
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "spiffe://cluster.local/ns/default/sa/productpage /x");
    server.shutdown().await;
}

/// A `Mesh` reading a folder applies the Sidecar in force for its
/// workload: a service outside its egress hosts is no service to it.
#[tokio::test]
async fn a_mesh_reading_files_sees_only_its_sidecars_egress_hosts() {
    let pki = TestPki::new("cluster.local");
    let (listener, port) = bound().await;
    let scope = r#"
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: productpage}
spec:
  workloadSelector: {labels: {app: productpage}}
  egress:
  - hosts: ["istio-system/*"]
"#;
    let world = FromFiles::new(&pki, &(config(port) + scope));
    let server = world
        .mesh("reviews-v1", "reviews")
        .await
        .serve_listener(listener, tower::service_fn(whoami))
        .unwrap();
    let productpage = world.mesh("productpage", "productpage").await;
    let resp = productpage
        .send(Request::get("http://reviews:9080/x").body(empty()).unwrap())
        .await;
    assert!(resp.status().is_client_error() || resp.status().is_server_error());
    let reason = resp.headers()[REASON_HEADER].to_str().unwrap().to_owned();
    assert!(reason.contains("not a known service"), "{reason}");
    // The stranger has no Sidecar of its own: it reaches reviews (and is
    // refused by its policy, not by scope).
    let stranger = world.mesh("stranger", "stranger").await;
    let resp = stranger
        .send(Request::get("http://reviews:9080/x").body(empty()).unwrap())
        .await;
    assert_eq!(resp.status(), 403);
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
        .store(store.clone())
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
    // On a control plane: one source of configuration, and an identity to
    // ask mesh-ca for; a control-plane setting without one is refused.
    let err = Mesh::builder()
        .store(store.clone())
        .control_plane("127.0.0.1:1")
        .workload("default", "reviews-v1")
        .identity_store(pki.store("reviews"))
        .build()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not two"), "{err}");
    let err = Mesh::builder()
        .control_plane("127.0.0.1:1")
        .workload("default", "reviews-v1")
        .identity_ca("127.0.0.1:1", "/nonexistent/root-cert.pem", None)
        .build()
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("missing setting: service_account"),
        "{err}"
    );
    let err = Mesh::builder()
        .store(store)
        .workload("default", "reviews-v1")
        .service_account("reviews")
        .identity_store(pki.store("reviews"))
        .build()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("control plane only"), "{err}");
}

/// Two 1 KiB frames with no size announced: the body only shows it is
/// too large while it streams.
struct TwoFrames(u8);

impl http_body::Body for TwoFrames {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        if self.0 == 2 {
            return std::task::Poll::Ready(None);
        }
        self.0 += 1;
        std::task::Poll::Ready(Some(Ok(http_body::Frame::data(bytes::Bytes::from_static(
            &[b'x'; 1024],
        )))))
    }
}

#[tokio::test]
async fn the_front_door_holds_request_bodies_to_the_cap() {
    let pki = TestPki::new("cluster.local");
    let (listener, port) = bound().await;
    let store = Arc::new(Store::new());
    // The same services, without the GET-only policy.
    let yaml: Vec<&str> = config(port)
        .leak()
        .split("\n---\n")
        .filter(|d| !d.contains("AuthorizationPolicy"))
        .collect();
    store
        .apply(mesh_core::load::load_str(
            std::path::Path::new("mesh.yaml"),
            &yaml.join("\n---\n"),
        ))
        .unwrap();
    let reviews = Mesh::builder()
        .store(store.clone())
        .workload("default", "reviews-v1")
        .identity_store(pki.store("reviews"))
        .body_limits(mesh_tower::limits::BodyLimits::default().max_request_body(Some(1500)))
        .build()
        .await
        .unwrap();
    let called = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = called.clone();
    // The handler reads the body and passes its error on with `?`.
    let handler = tower::service_fn(move |req: Request<BoxBody>| {
        seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async move {
            let body = req.into_body().collect().await?.to_bytes();
            Ok::<_, mesh_tower::body::BoxError>(Response::new(full(format!("{}", body.len()))))
        }
    });
    let server = reviews.serve_listener(listener, handler).unwrap();
    let productpage = mesh(&pki, &store, "productpage", "productpage").await;
    let called = || called.load(std::sync::atomic::Ordering::SeqCst);

    // Under the cap: whole.
    let resp = productpage
        .send(
            Request::post("http://reviews:9080/")
                .body(TwoFrames(1))
                .unwrap(),
        )
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "1024");
    assert_eq!(called(), 1);

    // A Content-Length over the cap: 413, the handler is never called.
    let resp = productpage
        .send(
            Request::post("http://reviews:9080/")
                .header("content-length", "2048")
                .body(full(vec![b'x'; 2048]))
                .unwrap(),
        )
        .await;
    assert_eq!(resp.status(), 413);
    assert_eq!(called(), 1);

    // Streamed past the cap: the handler's body read fails, and the mesh
    // answers 413 for the error it passed on.
    let resp = productpage
        .send(
            Request::post("http://reviews:9080/")
                .body(TwoFrames(0))
                .unwrap(),
        )
        .await;
    assert_eq!(resp.status(), 413);
    assert!(
        resp.headers()[REASON_HEADER]
            .to_str()
            .unwrap()
            .contains("larger than 1500 bytes")
    );
    assert_eq!(called(), 2);
    server.shutdown().await;
}

/// Metadata exchange: two versions of one service share a service account,
/// so the server cannot tell them apart by identity; each names itself
/// ([`mesh_tower::telemetry::PEER_HEADER`]) and the server's metrics carry
/// the very workload, its app, version and canonical labels. A claim the
/// application writes itself is replaced, and the header never reaches the
/// server's application.
#[tokio::test]
async fn the_server_knows_which_replica_called_through_metadata_exchange() {
    let pki = TestPki::new("cluster.local");
    let (listener, port) = bound().await;
    let yaml = config(port).replace(
        "---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: productpage}\nspec: {address: 127.0.0.1, labels: {app: productpage}, serviceAccount: productpage}",
        "---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: productpage-v1}\nspec: {address: 127.0.0.1, labels: {app: productpage, version: v1}, serviceAccount: productpage}\n\
         ---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: productpage-v2}\nspec: {address: 127.0.0.1, labels: {app: productpage, version: v2, service.istio.io/canonical-name: pages}, serviceAccount: productpage}",
    );
    assert!(
        yaml.contains("productpage-v2"),
        "the fixture changed: {yaml}"
    );
    let store = Arc::new(Store::new());
    store
        .apply(mesh_core::load::load_str(
            std::path::Path::new("mesh.yaml"),
            &yaml,
        ))
        .unwrap();
    let reviews = mesh(&pki, &store, "reviews-v1", "reviews").await;
    // The handler answers with the peer header it got, if any.
    let server = reviews
        .serve_listener(
            listener,
            tower::service_fn(|req: Request<BoxBody>| async move {
                let seen = req
                    .headers()
                    .get(mesh_tower::telemetry::PEER_HEADER)
                    .map_or("none".to_owned(), |v| v.to_str().unwrap().to_owned());
                Ok::<_, std::convert::Infallible>(Response::new(full(seen)))
            }),
        )
        .unwrap();
    for (name, calls) in [("productpage-v1", 2), ("productpage-v2", 3)] {
        let client = mesh(&pki, &store, name, "productpage").await;
        for _ in 0..calls {
            // The application's own claim is no claim.
            let req = Request::get("http://reviews:9080/")
                .header(mesh_tower::telemetry::PEER_HEADER, "default/reviews-v1")
                .body(empty())
                .unwrap();
            let resp = client.client().oneshot(req).await.unwrap();
            assert_eq!(resp.status(), 200);
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body, "none", "the header reached the application");
        }
    }
    let m = reviews.registry().render();
    let series = |needles: &[&str]| {
        m.lines()
            .filter(|l| l.starts_with("istio_requests_total{"))
            .find(|l| needles.iter().all(|n| l.contains(n)))
            .unwrap_or_else(|| panic!("no series with {needles:?} in\n{m}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .to_owned()
    };
    assert_eq!(
        series(&[
            r#"source_workload="productpage-v1""#,
            r#"source_app="productpage""#,
            r#"source_version="v1""#,
            r#"source_canonical_service="productpage""#,
            r#"source_canonical_revision="v1""#,
            r#"source_cluster="Kubernetes""#,
        ]),
        "2"
    );
    assert_eq!(
        series(&[
            r#"source_workload="productpage-v2""#,
            r#"source_canonical_service="pages""#,
            r#"source_canonical_revision="v2""#,
        ]),
        "3"
    );
    assert!(
        !m.contains(r#"source_workload="reviews-v1""#),
        "a forged claim was believed:\n{m}"
    );
    server.shutdown().await;
}
