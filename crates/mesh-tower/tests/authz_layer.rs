//! The authorization layer with `service_fn` + `oneshot`, no network: 403
//! with the reason, 400 for paths that cannot be checked, the app sees the
//! normalised path, (logging: `authz_logging.rs`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use mesh_core::authz::AuthzDecision;
use mesh_core::store::Store;
use mesh_tower::authz::{Authorize, AuthorizeLayer, LocalAddr, LocalWorkload};
use mesh_tower::body::{BoxBody, full};
use mesh_tower::error::REASON_HEADER;
use mesh_tower::traffic::ClientAddr;
use tower::{Layer, ServiceExt};

const CONFIG: &str = r#"
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: blog}
spec: {address: 10.0.0.9, labels: {app: blog}, serviceAccount: blog}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin}
spec:
  selector: {matchLabels: {app: blog}}
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin*", "/wp-admin*"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-debug-header}
spec:
  selector: {matchLabels: {app: blog}}
  action: DENY
  rules: [{when: [{key: "request.headers[x-debug]", values: ["on"]}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: internal-only}
spec:
  selector: {matchLabels: {app: blog}}
  action: DENY
  rules: [{from: [{source: {notIpBlocks: [10.0.0.0/8]}}], to: [{operation: {ports: ["9000"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: audit-posts}
spec:
  selector: {matchLabels: {app: blog}}
  action: AUDIT
  rules: [{to: [{operation: {methods: [POST]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: vault, namespace: secure}
spec:
  rules: [{from: [{source: {principals: [cluster.local/ns/default/sa/blog]}}]}]
"#;

fn store() -> Arc<Store> {
    let store = Arc::new(Store::new());
    store
        .apply(mesh_core::load::load_str(Path::new("mesh.yaml"), CONFIG))
        .unwrap();
    store
}

/// An app that answers with the URI it saw and counts its calls.
#[derive(Clone, Default)]
struct App {
    calls: Arc<AtomicUsize>,
    decisions: Arc<Mutex<Vec<AuthzDecision>>>,
}

impl App {
    fn service(
        &self,
    ) -> tower::util::BoxCloneSyncService<Request<()>, Response<BoxBody>, Infallible> {
        let this = self.clone();
        tower::util::BoxCloneSyncService::new(tower::service_fn(move |req: Request<()>| {
            let this = this.clone();
            async move {
                this.calls.fetch_add(1, Ordering::SeqCst);
                if let Some(d) = req.extensions().get::<AuthzDecision>() {
                    this.decisions.lock().unwrap().push(d.clone());
                }
                Ok::<_, Infallible>(Response::new(full(req.uri().to_string())))
            }
        }))
    }
}

async fn send(
    svc: impl tower::Service<Request<()>, Response = Response<BoxBody>, Error = Infallible>,
    mut req: Request<()>,
) -> (StatusCode, Option<String>, String) {
    // Every HTTP/1.1 client names the host; one that does not is refused
    // (tested on its own below).
    if !req.headers().contains_key(http::header::HOST) && req.uri().authority().is_none() {
        req.headers_mut()
            .insert(http::header::HOST, http::HeaderValue::from_static("blog"));
    }
    let resp = svc.oneshot(req).await.unwrap();
    let status = resp.status();
    let reason = resp
        .headers()
        .get(REASON_HEADER)
        .map(|v| v.to_str().unwrap().to_owned());
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, reason, String::from_utf8(body.to_vec()).unwrap())
}

fn get(uri: &str) -> Request<()> {
    Request::get(uri).body(()).unwrap()
}

#[tokio::test]
async fn denied_requests_get_403_with_the_reason_and_never_reach_the_app() {
    let app = App::default();
    let svc = AuthorizeLayer::new(store(), LocalWorkload::named("blog")).layer(app.service());
    for uri in [
        "/admin",
        "/./admin",
        "//admin",
        "/public/../admin",
        "/%61dmin",
        "/admin%2F",
        "/admin/",
        "/Admin",
        "/admin;x",
        "/public/..%2F..%5Cwp-admin/x",
        "http://blog.example.test/wp-admin",
    ] {
        let (status, reason, body) = send(svc.clone(), get(uri)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{uri}");
        let reason = reason.unwrap();
        assert_eq!(
            reason,
            "RBAC: access denied: denied by AuthorizationPolicy default/no-admin rule 0"
        );
        assert_eq!(body.trim(), reason);
    }
    let mut req = get("/");
    req.headers_mut().append("x-debug", "off".parse().unwrap());
    req.headers_mut().append("x-debug", "on".parse().unwrap());
    let (status, reason, _) = send(svc.clone(), req).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "a repeated header may deny");
    assert!(reason.unwrap().contains("no-debug-header"));
    assert_eq!(app.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn allowed_requests_reach_the_app_with_the_normalised_path() {
    let app = App::default();
    let svc = Authorize::layer(store(), LocalWorkload::named("default/blog"))
        .with_port(8080)
        .layer(app.service());
    for (uri, seen) in [
        ("/", "/"),
        ("/blog/post?id=1", "/blog/post?id=1"),
        ("/./blog//post/../%70age?q=a/../b", "/blog/page?q=a/../b"),
        ("/blog%2Fpost%3b", "/blog/post%3B"),
        (
            "http://blog.example.test/a//b?x",
            "http://blog.example.test/a/b?x",
        ),
    ] {
        let (status, reason, body) = send(svc.clone(), get(uri)).await;
        assert_eq!(status, StatusCode::OK, "{uri}: {reason:?}");
        assert_eq!(body, seen, "{uri}");
    }
    assert_eq!(app.calls.load(Ordering::SeqCst), 5);
    let decisions = app.decisions.lock().unwrap();
    assert!(decisions.iter().all(|d| d.allowed));
    assert_eq!(decisions[0].reason, "no ALLOW policy applies");
}

#[tokio::test]
async fn paths_that_cannot_be_checked_get_400() {
    let app = App::default();
    let svc = AuthorizeLayer::new(store(), LocalWorkload::named("blog")).layer(app.service());
    for uri in ["/admin%zz", "/a%", "/a%00b", "/..;/admin", "/x/.;y/admin"] {
        let (status, reason, _) = send(svc.clone(), get(uri)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}");
        assert!(
            reason.unwrap().starts_with("the path cannot be normalised"),
            "{uri}"
        );
    }
    let mut req = get("/");
    req.headers_mut().append("host", "a".parse().unwrap());
    req.headers_mut().append("host", "b".parse().unwrap());
    let (status, reason, _) = send(svc.clone(), req).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(reason.unwrap(), "bad request: more than one Host header");
    let mut req = get("http://blog.example.test/");
    req.headers_mut()
        .insert("host", "admin.example.test".parse().unwrap());
    let (status, reason, _) = send(svc.clone(), req).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(reason.unwrap().contains("different hosts"));
    let mut req = get("http://blog.example.test/");
    req.headers_mut()
        .insert("host", "Blog.Example.test".parse().unwrap());
    req.extensions_mut()
        .insert(LocalAddr("10.0.0.9:8080".parse().unwrap()));
    assert_eq!(send(svc.clone(), req).await.0, StatusCode::OK);
    assert_eq!(app.calls.load(Ordering::SeqCst), 1);
}

/// Round 2 of the attack run, at the layer: a request that could be read
/// two ways is refused before the app (or the policy) reads it.
#[tokio::test]
async fn requests_that_read_two_ways_never_reach_the_app() {
    let app = App::default();
    let svc = AuthorizeLayer::new(store(), LocalWorkload::named("blog")).layer(app.service());
    // No host at all: the app would see the listener's address.
    let mut req = get("/");
    req.headers_mut().insert("host", "blog".parse().unwrap());
    req.headers_mut().remove("host");
    let resp = svc.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    // Hosts that are no host name.
    for host in [
        "user@blog",
        "blog..",
        "a..b",
        ".blog",
        "blog:",
        "blog:99999",
        "b%6Cog",
    ] {
        let mut req = get("/");
        req.headers_mut().insert("host", host.parse().unwrap());
        let (status, reason, _) = send(svc.clone(), req).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{host}");
        assert!(reason.unwrap().starts_with("bad request: Host"), "{host}");
    }
    // Header names with underscores (PHP reads `x_role` as `x-role`).
    for name in ["x_role", "X_Role", "x_forwarded_client_cert", "_", "a_"] {
        let mut req = get("/");
        req.headers_mut().insert(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            "root".parse().unwrap(),
        );
        let (status, reason, _) = send(svc.clone(), req).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{name}");
        assert!(reason.unwrap().contains("underscore"), "{name}");
    }
    assert_eq!(app.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn no_identity_never_satisfies_a_principals_rule() {
    let app = App::default();
    let secure = LocalWorkload::labels("secure", Default::default());
    let svc = AuthorizeLayer::new(store(), secure).layer(app.service());
    let (status, reason, _) = send(svc, get("/")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        reason.unwrap(),
        "RBAC: access denied: no ALLOW policy matched"
    );
    assert_eq!(app.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn addresses_and_ports_come_from_extensions_or_the_layer() {
    let app = App::default();
    let layer = AuthorizeLayer::new(store(), LocalWorkload::named("blog"));
    let svc = layer.clone().layer(app.service());
    let req = |client: &str, local: &str| {
        let mut r = get("/");
        r.extensions_mut()
            .insert(ClientAddr(client.parse().unwrap()));
        r.extensions_mut().insert(LocalAddr(local.parse().unwrap()));
        r
    };
    let ok = send(svc.clone(), req("10.1.2.3:5555", "10.0.0.9:9000")).await;
    assert_eq!(ok.0, StatusCode::OK);
    let outside = send(svc.clone(), req("192.0.2.1:5555", "10.0.0.9:9000")).await;
    assert_eq!(outside.0, StatusCode::FORBIDDEN);
    assert!(outside.1.unwrap().contains("internal-only"));
    let other_port = send(svc.clone(), req("192.0.2.1:5555", "10.0.0.9:8080")).await;
    assert_eq!(other_port.0, StatusCode::OK);

    // Without ClientAddr the client IP is unknown, and a DENY rule on it
    // matches (on port 9000, given by the layer).
    let on_9000 = layer.clone().with_port(9000).layer(app.service());
    assert_eq!(send(on_9000, get("/")).await.0, StatusCode::FORBIDDEN);
    let on_8080 = layer.with_port(8080).layer(app.service());
    assert_eq!(send(on_8080, get("/")).await.0, StatusCode::OK);
}

#[tokio::test]
async fn fail_closed_without_configuration_or_workload() {
    let app = App::default();
    let empty = AuthorizeLayer::new(Arc::new(Store::new()), LocalWorkload::named("blog"))
        .layer(app.service());
    let (status, reason, _) = send(empty, get("/")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(reason.unwrap().contains("no configuration"));
    let missing = AuthorizeLayer::new(store(), LocalWorkload::named("ghost")).layer(app.service());
    let (status, reason, _) = send(missing, get("/")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        reason
            .unwrap()
            .contains("ghost is not in the configuration")
    );
    assert_eq!(app.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn audit_marks_but_does_not_decide() {
    let app = App::default();
    let svc = Authorize::new(app.service(), store(), LocalWorkload::named("blog"));
    let mut post = Request::post("/blog").body(()).unwrap();
    post.extensions_mut()
        .insert(LocalAddr("10.0.0.9:8080".parse().unwrap()));
    assert_eq!(send(svc, post).await.0, StatusCode::OK);
    let d = app.decisions.lock().unwrap();
    assert_eq!(d[0].audited_by.as_ref().unwrap().name, "audit-posts");
}

#[test]
fn tcp_connections_are_checked_by_l4_rules() {
    let layer = AuthorizeLayer::new(store(), LocalWorkload::named("blog"));
    let outside = Some("192.0.2.1:40000".parse().unwrap());
    let inside = Some("10.1.1.1:40000".parse().unwrap());
    // `no-admin` has only a path: HTTP-only, so at L4 it denies everything.
    let d = layer.check_connection(None, inside, Some("10.0.0.9:3306".parse().unwrap()));
    assert!(!d.allowed);
    assert_eq!(d.policy.unwrap().name, "no-admin");

    let secure = AuthorizeLayer::new(store(), LocalWorkload::labels("secure", Default::default()));
    let blog = "spiffe://cluster.local/ns/default/sa/blog".parse().unwrap();
    let web = "spiffe://cluster.local/ns/default/sa/web".parse().unwrap();
    assert!(secure.check_connection(Some(&blog), outside, None).allowed);
    assert!(!secure.check_connection(Some(&web), outside, None).allowed);
    assert!(!secure.check_connection(None, outside, None).allowed);
}

/// A CUSTOM policy whose provider MeshConfig does not define (this mesh
/// implements no external authorizer yet): as Istio does, every request of the
/// workload gets 403, whatever the CUSTOM rules match, and none reaches
/// the app.
#[tokio::test]
async fn custom_with_an_undefined_provider_denies_everything() {
    let config = r#"
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: blog}
spec: {address: 10.0.0.9, labels: {app: blog}, serviceAccount: blog}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext}
spec:
  selector: {matchLabels: {app: blog}}
  action: CUSTOM
  provider: {name: my-authz}
  rules: [{to: [{operation: {paths: ["/admin*"]}}]}]
"#;
    let store = Arc::new(Store::new());
    store
        .apply(mesh_core::load::load_str(Path::new("mesh.yaml"), config))
        .unwrap();
    let app = App::default();
    let svc = AuthorizeLayer::new(store, LocalWorkload::named("blog")).layer(app.service());
    for uri in ["/admin", "/", "/public"] {
        let (status, reason, _) = send(svc.clone(), get(uri)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{uri}");
        let reason = reason.unwrap();
        assert!(
            reason.contains("default/ext") && reason.contains("`my-authz` is not defined"),
            "{reason}"
        );
    }
    assert_eq!(app.calls.load(Ordering::SeqCst), 0);
}
