//! The route's timeout, over every attempt, and the retry policy's
//! per-try timeout, over one.
//!
//! Why not `tower::timeout::Timeout`: it holds one duration for every
//! request, while ours come per request from the routing plan (the matched
//! rule's `timeout` and its retries' `perTryTimeout`), and a per-try
//! timeout must come back as a failure the retry policy can classify
//! (Envoy's per-try timeout is retried under `5xx`, `gateway-error` and
//! `reset`) with the endpoint that was too slow.

use std::task::{Context, Poll};

use http::{Request, Response};
use mesh_core::retry::Failure;
use tower::Service;

use super::{AttemptFuture, Failed, Tried, attempt, plan_of};
use crate::body::BoxBody;
use crate::error::MeshError;

/// Bounds the whole request (all attempts and back-offs) by the route's
/// timeout.
#[derive(Debug, Clone)]
pub(crate) struct RouteTimeout<S> {
    next: S,
}

impl<S> RouteTimeout<S> {
    pub(crate) fn new(next: S) -> Self {
        Self { next }
    }
}

impl<S> Service<Request<BoxBody>> for RouteTimeout<S>
where
    S: Service<Request<BoxBody>, Response = Response<BoxBody>, Error = Failed>,
    S::Future: Send + 'static,
{
    type Response = Response<BoxBody>;
    type Error = Failed;
    type Future = AttemptFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Failed>> {
        self.next.poll_ready(cx)
    }

    fn call(&mut self, req: Request<BoxBody>) -> AttemptFuture {
        let limit = match plan_of(&req) {
            Ok(p) => p.timeout,
            Err(e) => return Box::pin(std::future::ready(Err(e))),
        };
        // Boxed before the `async` block: see `oneshot` on why.
        let fut = attempt(self.next.call(req));
        match limit {
            Some(t) => Box::pin(async move {
                tokio::time::timeout(t, fut)
                    .await
                    .map_err(|_| Failed::before_endpoint(MeshError::Timeout(t), None))?
            }),
            None => fut,
        }
    }
}

/// Bounds one attempt by the retry policy's per-try timeout. Below the
/// balance layer, so it knows the endpoint that was too slow.
#[derive(Debug, Clone)]
pub(crate) struct PerTryTimeout<S> {
    next: S,
}

impl<S> PerTryTimeout<S> {
    pub(crate) fn new(next: S) -> Self {
        Self { next }
    }
}

impl<S> Service<Request<BoxBody>> for PerTryTimeout<S>
where
    S: Service<Request<BoxBody>, Response = Response<BoxBody>, Error = Failed>,
    S::Future: Send + 'static,
{
    type Response = Response<BoxBody>;
    type Error = Failed;
    type Future = AttemptFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Failed>> {
        self.next.poll_ready(cx)
    }

    fn call(&mut self, req: Request<BoxBody>) -> AttemptFuture {
        let limit = match plan_of(&req) {
            Ok(p) => p.retry.per_try_timeout,
            Err(e) => return Box::pin(std::future::ready(Err(e))),
        };
        let Some(t) = limit else {
            return attempt(self.next.call(req));
        };
        let tried = req.extensions().get::<Tried>().cloned();
        let fut = attempt(self.next.call(req));
        Box::pin(async move {
            tokio::time::timeout(t, fut).await.map_err(|_| Failed {
                error: MeshError::Timeout(t),
                failure: Some(Failure::PerTryTimeout),
                tried,
            })?
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tower::ServiceExt;

    use super::*;
    use crate::body::full;
    use crate::traffic::{test_planned, test_store};

    const MESH: &str = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n\
        metadata: {name: web, namespace: default}\nspec:\n  hosts: [web.default.svc.cluster.local]\n  \
        ports: [{number: 80, name: http, protocol: HTTP}]\n  resolution: STATIC\n  \
        endpoints: [{address: 10.0.0.1}]\n";

    fn slow(
        delay: Duration,
    ) -> impl Service<
        Request<BoxBody>,
        Response = Response<BoxBody>,
        Error = Failed,
        Future = impl Send + 'static,
    > + Clone {
        tower::service_fn(move |_req: Request<BoxBody>| async move {
            tokio::time::sleep(delay).await;
            Ok::<_, Failed>(Response::new(full("late")))
        })
    }

    fn request(edit: impl FnOnce(&mut super::super::Destination)) -> Request<BoxBody> {
        let store = test_store(MESH);
        let mut req = Request::get("/").body(crate::body::empty()).unwrap();
        req.extensions_mut().insert(test_planned(
            &store,
            "web.default.svc.cluster.local",
            80,
            edit,
        ));
        req
    }

    #[tokio::test(start_paused = true)]
    async fn the_route_timeout_answers_504_without_an_endpoint() {
        let req = request(|d| d.timeout = Some(Duration::from_millis(100)));
        let err = RouteTimeout::new(slow(Duration::from_secs(5)))
            .oneshot(req)
            .await
            .unwrap_err();
        assert_eq!(err.error.status(), 504);
        assert!(err.failure.is_none(), "the route's timeout is not retried");
    }

    #[tokio::test(start_paused = true)]
    async fn a_per_try_timeout_is_a_retryable_failure_naming_the_endpoint() {
        let mut req = request(|d| {
            d.retry.to_mut().per_try_timeout = Some(Duration::from_millis(50));
        });
        let ep = super::super::planned(&req).unwrap().endpoints[0].clone();
        req.extensions_mut().insert(Tried {
            endpoint: ep,
            mtls: false,
        });
        let err = PerTryTimeout::new(slow(Duration::from_secs(5)))
            .oneshot(req)
            .await
            .unwrap_err();
        assert_eq!(err.error.status(), 504);
        assert_eq!(err.failure, Some(Failure::PerTryTimeout));
        assert_eq!(err.tried.unwrap().endpoint.key, "10.0.0.1:80");
    }

    #[tokio::test(start_paused = true)]
    async fn without_timeouts_slow_answers_arrive() {
        let resp = RouteTimeout::new(PerTryTimeout::new(slow(Duration::from_secs(30))))
            .oneshot(request(|_| {}))
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
}
