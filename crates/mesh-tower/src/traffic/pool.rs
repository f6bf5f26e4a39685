//! The DestinationRule's connection pool limits: requests at once to a
//! destination (`http2MaxRequests`, else `tcp.maxConnections`), and
//! requests waiting for one of those places (`http1MaxPendingRequests`).
//! Past both, the request overflows: 503 with Envoy's `UO` flag, and no
//! retry.
//!
//! Why not `tower::limit::ConcurrencyLimit`: it limits one service, while
//! our limits are per destination host and come from the plan per request,
//! and it queues without bound where Istio's pending limit refuses.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use mesh_core::resources::networking::TrafficPolicy;
use tower::Service;

use super::state::TrafficState;
use super::{AttemptFuture, Failed, attempt, oneshot, plan_of};
use crate::body::BoxBody;
use crate::error::MeshError;

/// A destination's pool limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    pub(crate) max_requests: usize,
    pub(crate) max_pending: usize,
}

impl Limits {
    /// The limits a traffic policy sets, if any.
    pub(crate) fn from_policy(policy: &TrafficPolicy) -> Option<Self> {
        let cp = policy.connection_pool.as_ref()?;
        let max = cp
            .http
            .as_ref()
            .and_then(|h| h.http2_max_requests)
            .or(cp.tcp.as_ref().and_then(|t| t.max_connections))?;
        let pending = cp
            .http
            .as_ref()
            .and_then(|h| h.http1_max_pending_requests)
            .unwrap_or(u32::MAX);
        Some(Self {
            max_requests: max as usize,
            max_pending: pending as usize,
        })
    }
}

/// Holds a place in the destination's pool for each attempt.
#[derive(Debug, Clone)]
pub(crate) struct PoolLimit<S> {
    next: S,
    state: Arc<TrafficState>,
}

impl<S> PoolLimit<S> {
    pub(crate) fn new(next: S, state: Arc<TrafficState>) -> Self {
        Self { next, state }
    }
}

impl<S> Service<Request<BoxBody>> for PoolLimit<S>
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
        let (limits, host) = match plan_of(&req) {
            Ok(p) => match p.pool {
                Some(limits) => (limits, p.host.clone()),
                None => return attempt(self.next.call(req)),
            },
            Err(e) => return Box::pin(async move { Err(e) }),
        };
        let pool = self
            .state
            .pool(&host, limits.max_requests, limits.max_pending);
        // The place is awaited before the call: take the ready service and
        // leave a clone behind, as tower's own layers do.
        let clone = self.next.clone();
        let next = std::mem::replace(&mut self.next, clone);
        let call = oneshot(next, req);
        Box::pin(async move {
            let _permit = pool
                .acquire()
                .await
                .ok_or_else(|| Failed::before_endpoint(MeshError::Overflow { host }, None))?;
            call.await
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::sync::Notify;
    use tower::ServiceExt;

    use super::*;
    use crate::body::full;
    use crate::traffic::{test_planned, test_store};

    const MESH: &str = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n\
        metadata: {name: web, namespace: default}\nspec:\n  hosts: [web.default.svc.cluster.local]\n  \
        ports: [{number: 80, name: http, protocol: HTTP}]\n  resolution: STATIC\n  \
        endpoints: [{address: 10.0.0.1}]\n---\napiVersion: networking.istio.io/v1\n\
        kind: DestinationRule\nmetadata: {name: web, namespace: default}\nspec:\n  \
        host: web.default.svc.cluster.local\n  trafficPolicy:\n    connectionPool:\n      \
        http: {http2MaxRequests: 1, http1MaxPendingRequests: 1}\n";

    #[tokio::test(start_paused = true)]
    async fn one_in_flight_one_waiting_the_third_overflows() {
        let store = test_store(MESH);
        let release = Arc::new(Notify::new());
        let gate = release.clone();
        let svc = PoolLimit::new(
            tower::service_fn(move |_req: Request<BoxBody>| {
                let gate = gate.clone();
                async move {
                    gate.notified().await;
                    Ok::<_, Failed>(Response::new(full("ok")))
                }
            }),
            Arc::new(TrafficState::default()),
        );
        let req = || {
            let mut r = Request::get("/").body(crate::body::empty()).unwrap();
            r.extensions_mut().insert(test_planned(
                &store,
                "web.default.svc.cluster.local",
                80,
                |_| {},
            ));
            r
        };
        let first = tokio::spawn(svc.clone().oneshot(req()));
        let second = tokio::spawn(svc.clone().oneshot(req()));
        tokio::time::sleep(Duration::from_millis(1)).await;
        let third = svc.clone().oneshot(req()).await.unwrap_err();
        assert_eq!(third.error.status(), 503);
        assert_eq!(third.error.response_flag(), "UO");
        assert!(third.failure.is_none(), "an overflow is not retried");
        release.notify_one();
        assert_eq!(first.await.unwrap().unwrap().status(), 200);
        release.notify_one();
        assert_eq!(second.await.unwrap().unwrap().status(), 200);
    }

    #[tokio::test]
    async fn without_limits_requests_pass_straight_through() {
        let store = test_store(MESH.split("---").next().unwrap());
        let mut r = Request::get("/").body(crate::body::empty()).unwrap();
        r.extensions_mut().insert(test_planned(
            &store,
            "web.default.svc.cluster.local",
            80,
            |d| assert!(d.pool.is_none()),
        ));
        let svc = PoolLimit::new(
            tower::service_fn(|_req: Request<BoxBody>| async {
                Ok::<_, Failed>(Response::new(full("ok")))
            }),
            Arc::new(TrafficState::default()),
        );
        assert_eq!(svc.oneshot(r).await.unwrap().status(), 200);
    }
}
