//! Mirroring: a copy of a share of requests (`mirrorPercentage`) goes to
//! the rule's `mirror` destination, fire and forget, once per request
//! (above the retry layer, so retries are not mirrored again). The copy goes
//! down the same stack below this layer (its own pool, balance and connect,
//! no retries), carries Envoy's `<host>-shadow` Host, and its answer is
//! drained and dropped. Only requests whose body the route layer buffered
//! are mirrored.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderValue, Request, Response};
use http_body_util::BodyExt;
use mesh_core::plan::resolve_destination;
use mesh_core::resources::networking::Protocol;
use mesh_core::retry::RetryPolicy;
use tower::Service;

use super::state::RandomSource;
use super::{AttemptFuture, Destination, Failed, Planned, oneshot, pool};
use crate::body::{BoxBody, full};

/// Sends a copy of a share of requests to the mirror destination.
#[derive(Debug, Clone)]
pub(crate) struct Mirror<S> {
    next: S,
    random: Arc<dyn RandomSource>,
}

impl<S> Mirror<S> {
    pub(crate) fn new(next: S, random: Arc<dyn RandomSource>) -> Self {
        Self { next, random }
    }
}

impl<S> Service<Request<BoxBody>> for Mirror<S>
where
    S: Service<Request<BoxBody>, Response = Response<BoxBody>, Error = Failed>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<BoxBody>;
    type Error = Failed;
    type Future = AttemptFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Failed>> {
        self.next.poll_ready(cx)
    }

    fn call(&mut self, req: Request<BoxBody>) -> AttemptFuture {
        if let Some(copy) = self.copy(&req) {
            let send = oneshot(self.next.clone(), copy);
            tokio::spawn(async move {
                match send.await {
                    // Drained so the connection can be reused.
                    Ok(resp) => drop(resp.into_body().collect().await),
                    Err(f) => tracing::debug!("mirror request failed: {}", f.error),
                }
            });
        }
        Box::pin(self.next.call(req))
    }
}

impl<S> Mirror<S> {
    /// The copy to send, if this request is mirrored.
    fn copy(&self, req: &Request<BoxBody>) -> Option<Request<BoxBody>> {
        let plan = &req.extensions().get::<Planned>()?.0;
        let (to, pct) = plan.mirror.as_ref()?;
        // An upgrade is one client's connection: a copy cannot share it.
        if crate::upgrade::requested(req) {
            return None;
        }
        let body = plan.replay.clone()?;
        if self.random.next_f64() * 100.0 >= *pct {
            return None;
        }
        let snap = &plan.snap;
        let resolved = resolve_destination(snap, to, plan.request_port)
            .inspect_err(|e| tracing::debug!("mirror destination: {e}"))
            .ok()?;
        let dest = Destination {
            snap: snap.clone(),
            host: resolved.service.host.clone(),
            port: resolved.port.number,
            subset: resolved.subset.map(str::to_owned),
            h2: matches!(resolved.port.protocol, Protocol::Http2 | Protocol::Grpc),
            h2_over_mtls: plan.h2_over_mtls
                || matches!(resolved.port.protocol, Protocol::Http2 | Protocol::Grpc)
                || mesh_core::plan::upgrades_h2(snap, &resolved.policy),
            // The mirror's own load balancing would add nothing to a copy
            // nobody waits for: Istio's default.
            load_balancer: None,
            pool: pool::Limits::from_policy(&resolved.policy),
            connect_timeout: mesh_core::plan::connect_timeout(&resolved.policy),
            http_conn: mesh_core::plan::http_connection(&resolved.policy),
            outlier: None,
            // The caller's network only; no locality plan (no load
            // balancing of its own, as above).
            endpoints: mesh_core::locality::localize(
                snap,
                resolved.endpoints,
                None,
                false,
                &plan.me,
            )
            .0,
            spread: super::pick::Spread::default(),
            me: plan.me.clone(),
            hash_key: None,
            mirrored: true,
            retry: std::borrow::Cow::Owned(RetryPolicy {
                attempts: 0,
                ..RetryPolicy::istio_default()
            }),
            retryable: false,
            timeout: None,
            mirror: None,
            request_port: plan.request_port,
            // The copy is sent once, never retried or mirrored again.
            replay: None,
        };
        let mut copy = Request::new(full(body));
        *copy.method_mut() = req.method().clone();
        *copy.uri_mut() = req.uri().clone();
        *copy.headers_mut() = req.headers().clone();
        *copy.extensions_mut() = req.extensions().clone();
        copy.extensions_mut().insert(Planned(Arc::new(dest)));
        // Envoy's convention: the mirror sees `<host>-shadow`.
        if let Some(h) = copy
            .headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
        {
            if let Ok(v) = HeaderValue::from_str(&format!("{h}-shadow")) {
                copy.headers_mut().insert(http::header::HOST, v);
            }
        }
        Some(copy)
    }
}

#[cfg(test)]
mod tests {
    use tokio::sync::mpsc;
    use tower::ServiceExt;

    use super::*;
    use crate::traffic::state::SeededRandom;
    use crate::traffic::{test_planned, test_store};

    const MESH: &str = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n\
        metadata: {name: web, namespace: default}\nspec:\n  hosts: [web.default.svc.cluster.local, shadow.default.svc.cluster.local]\n  \
        ports: [{number: 80, name: http, protocol: HTTP}]\n  resolution: STATIC\n  \
        endpoints: [{address: 10.0.0.1}]\n---\n\
        apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n\
        metadata: {name: shadow, namespace: default}\nspec:\n  hosts: [shadow.default.svc.cluster.local]\n  \
        ports: [{number: 80, name: http, protocol: HTTP}]\n  resolution: STATIC\n  \
        endpoints: [{address: 10.0.0.9}]\n";

    async fn mirrored(pct: f64, buffered: bool, n: usize) -> Vec<(String, String, bool)> {
        let store = test_store(MESH);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let inner = tower::service_fn(move |req: Request<BoxBody>| {
            let tx = tx.clone();
            async move {
                let p = super::super::planned(&req)?;
                let host = req.headers()[http::header::HOST]
                    .to_str()
                    .unwrap()
                    .to_owned();
                tx.send((p.host.clone(), host, p.mirrored)).unwrap();
                Ok::<_, Failed>(Response::new(full("ok")))
            }
        });
        let to = mesh_core::route::WeightedDestination {
            host: "shadow.default.svc.cluster.local".into(),
            subset: None,
            port: None,
            weight: 100,
            headers: None,
        };
        let svc = Mirror::new(inner, Arc::new(SeededRandom::new(11)));
        for _ in 0..n {
            let mut req = Request::get("/")
                .header(http::header::HOST, "web")
                .body(crate::body::empty())
                .unwrap();
            req.extensions_mut().insert(test_planned(
                &store,
                "web.default.svc.cluster.local",
                80,
                |d| {
                    d.mirror = Some((to.clone(), pct));
                    d.replay = buffered.then(bytes::Bytes::new);
                },
            ));
            svc.clone().oneshot(req).await.unwrap();
        }
        // Every request's own send happened; let the spawned copies finish.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        let mut out = Vec::new();
        while let Ok(x) = rx.try_recv() {
            out.push(x);
        }
        out
    }

    #[tokio::test]
    async fn every_request_is_copied_at_100_percent_with_the_shadow_host() {
        let seen = mirrored(100.0, true, 3).await;
        let copies: Vec<_> = seen.iter().filter(|s| s.2).collect();
        assert_eq!(copies.len(), 3, "{seen:?}");
        for c in copies {
            assert_eq!(c.0, "shadow.default.svc.cluster.local");
            assert_eq!(c.1, "web-shadow");
        }
        assert_eq!(seen.iter().filter(|s| !s.2).count(), 3);
    }

    #[tokio::test]
    async fn a_share_is_copied_and_unbuffered_bodies_never_are() {
        let seen = mirrored(30.0, true, 200).await;
        let copies = seen.iter().filter(|s| s.2).count();
        assert!((30..=90).contains(&copies), "{copies} copies of 200 at 30%");
        let seen = mirrored(100.0, false, 5).await;
        assert_eq!(seen.iter().filter(|s| s.2).count(), 0);
    }
}
