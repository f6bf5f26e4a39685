//! Refusals by the authorization layer are logged at INFO on `mesh::authz`,
//! never at ERROR. Alone in its own test binary: tracing caches callsite
//! interest process-wide, so a scoped subscriber can miss events that
//! tests on other threads registered first.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::path::Path;
use std::sync::{Arc, Mutex};

use http::{Request, Response};
use mesh_core::store::Store;
use mesh_tower::authz::{AuthorizeLayer, LocalWorkload};
use mesh_tower::body::full;
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
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin*"]}}]}]
"#;

/// Records the level of every event on the `mesh::authz` target.
struct Levels(Arc<Mutex<Vec<tracing::Level>>>);

impl tracing::Subscriber for Levels {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, e: &tracing::Event<'_>) {
        if e.metadata().target() == "mesh::authz" {
            self.0.lock().unwrap().push(*e.metadata().level());
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

#[tokio::test]
async fn refusals_are_logged_at_info_never_error() {
    let levels = Arc::new(Mutex::new(Vec::new()));
    let _guard = tracing::subscriber::set_default(Levels(levels.clone()));
    let store = Arc::new(Store::new());
    store
        .apply(mesh_core::load::load_str(Path::new("mesh.yaml"), CONFIG))
        .unwrap();
    let app = tower::service_fn(|_: Request<()>| async {
        Ok::<_, Infallible>(Response::new(full("ok")))
    });
    let svc = AuthorizeLayer::new(store, LocalWorkload::named("blog")).layer(app);
    let status = |uri: &str| {
        let req = Request::get(uri).header("host", "blog").body(()).unwrap();
        let svc = svc.clone();
        async move { svc.oneshot(req).await.unwrap().status().as_u16() }
    };
    assert_eq!(status("/admin").await, 403);
    assert_eq!(status("/a%zz").await, 400);
    assert_eq!(status("/ok").await, 200);
    let no_host = svc
        .clone()
        .oneshot(Request::get("/ok").body(()).unwrap())
        .await
        .unwrap();
    assert_eq!(no_host.status(), 400);
    assert_eq!(*levels.lock().unwrap(), [tracing::Level::INFO; 3]);
}
