//! A dry-run AuthorizationPolicy (`istio.io/dry-run: "true"`) is not
//! enforced by the layer or by `check_connection`, and what it would have
//! done is logged at INFO on `mesh::authz`. Alone in its own test binary:
//! tracing caches callsite interest process-wide, so a scoped subscriber can
//! miss events that tests on other threads registered first.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::{Arc, Mutex};

use http::{Request, Response};
use mesh_core::authz::AuthzDecision;
use mesh_core::store::Store;
use mesh_tower::authz::{AuthorizeLayer, LocalWorkload};
use mesh_tower::body::full;
use tower::{Layer, ServiceExt};

fn config(annotation: &str) -> String {
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: blog}}
spec: {{address: 10.0.0.9, labels: {{app: blog}}, serviceAccount: blog}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: no-admin
  annotations: {{istio.io/dry-run: "{annotation}"}}
spec:
  action: DENY
  rules: [{{to: [{{operation: {{paths: ["/admin*"]}}}}]}}]
"#
    )
}

/// `(level, message)` of every event on the `mesh::authz` target.
type Events = Arc<Mutex<Vec<(tracing::Level, String)>>>;

struct Record(Events);

struct Message<'a>(&'a mut String);

impl tracing::field::Visit for Message<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        }
    }
}

impl tracing::Subscriber for Record {
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
            let mut message = String::new();
            e.record(&mut Message(&mut message));
            self.0
                .lock()
                .unwrap()
                .push((*e.metadata().level(), message));
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

fn layer(annotation: &str) -> AuthorizeLayer {
    let store = Arc::new(Store::new());
    store
        .apply(mesh_core::load::load_str(
            Path::new("mesh.yaml"),
            &config(annotation),
        ))
        .unwrap();
    AuthorizeLayer::new(store, LocalWorkload::named("blog")).with_port(8080)
}

/// The status of `GET /admin`, and the decision the app saw.
async fn get_admin(layer: &AuthorizeLayer) -> (u16, Option<AuthzDecision>) {
    let seen = Arc::new(Mutex::new(None));
    let app = {
        let seen = seen.clone();
        tower::service_fn(move |req: Request<()>| {
            *seen.lock().unwrap() = req.extensions().get::<AuthzDecision>().cloned();
            async { Ok::<_, Infallible>(Response::new(full("ok"))) }
        })
    };
    let req = Request::get("/admin")
        .header("host", "blog")
        .body(())
        .unwrap();
    let resp = layer.layer(app).oneshot(req).await.unwrap();
    let decision = seen.lock().unwrap().take();
    (resp.status().as_u16(), decision)
}

#[tokio::test]
async fn dry_run_policies_are_logged_never_enforced() {
    let events: Events = Arc::default();
    let _guard = tracing::subscriber::set_default(Record(events.clone()));

    // The same policy enforced denies both.
    let enforced = layer("false");
    assert_eq!(get_admin(&enforced).await.0, 403);
    let client = Some("10.1.0.1:40000".parse().unwrap());
    assert!(!enforced.check_connection(None, client, None).allowed);
    events.lock().unwrap().clear();

    let dry = layer("true");
    let (status, decision) = get_admin(&dry).await;
    assert_eq!(status, 200);
    let shadow = decision.unwrap().shadow.unwrap();
    assert!(!shadow.allowed);
    assert_eq!(shadow.policy.unwrap().name, "no-admin");
    // At L4 the path is unknown, and unknown facts match in a DENY rule.
    let conn = dry.check_connection(None, client, None);
    assert!(conn.allowed, "{conn:?}");
    assert!(!conn.shadow.unwrap().allowed);

    let would = "dry-run AuthorizationPolicy default/no-admin rule 0 would deny";
    assert_eq!(
        *events.lock().unwrap(),
        [
            (tracing::Level::INFO, format!("request: {would}")),
            (tracing::Level::INFO, format!("connection: {would}")),
        ]
    );
}
