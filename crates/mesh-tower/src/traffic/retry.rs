//! Retries: a `tower::retry::Policy` over the routing plan's retry policy.
//!
//! What is retried is the plan's: the route's `retries` (attempts and
//! `retryOn` conditions, Envoy's vocabulary) or Istio's default (two retries
//! on connect failures, refused streams and 503, for requests that are safe
//! to repeat). A request is retried only when the route layer buffered its
//! body (the plan's `replay`). Between attempts the policy waits Envoy's fully
//! jittered exponential back-off ([`mesh_core::retry::backoff`]), and tells
//! the balance layer to avoid the endpoint that just failed ([`Avoid`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use http::{Request, Response};
use mesh_core::retry::Failure;

use super::state::RandomSource;
use super::{Avoid, Failed, Planned, Tried};
use crate::body::{BoxBody, full};

/// The retry policy of one request: cloned by `tower::retry::Retry` for
/// each request, so `retries` counts that request's retries.
#[derive(Debug, Clone)]
pub(crate) struct Policy {
    retries: u32,
    random: Arc<dyn RandomSource>,
}

impl Policy {
    pub(crate) fn new(random: Arc<dyn RandomSource>) -> Self {
        Self { retries: 0, random }
    }
}

impl tower::retry::Policy<Request<BoxBody>, Response<BoxBody>, Failed> for Policy {
    type Future = Pin<Box<dyn Future<Output = ()> + Send>>;

    fn retry(
        &mut self,
        req: &mut Request<BoxBody>,
        result: &mut Result<Response<BoxBody>, Failed>,
    ) -> Option<Self::Future> {
        let plan = req.extensions().get::<Planned>()?.0.clone();
        let (failure, tried) = match result {
            Ok(resp) => {
                let status = resp.status().as_u16();
                (
                    (status >= 500).then_some(Failure::Status(status)),
                    resp.extensions().get::<Tried>(),
                )
            }
            Err(f) => (f.failure, f.tried.as_ref()),
        };
        let failure = failure?;
        if self.retries >= plan.retry.attempts || !plan.retry.retries_on(failure) {
            return None;
        }
        if let Some(t) = tried {
            req.extensions_mut().insert(Avoid(t.endpoint.key.clone()));
        }
        self.retries += 1;
        let wait = mesh_core::retry::backoff(self.retries, self.random.next_u64());
        tracing::debug!(host = %plan.host, retry = self.retries, ?failure, ?wait, "retrying");
        Some(Box::pin(tokio::time::sleep(wait)))
    }

    fn clone_request(&mut self, req: &Request<BoxBody>) -> Option<Request<BoxBody>> {
        let plan = req.extensions().get::<Planned>()?;
        if !plan.0.retryable || plan.0.retry.attempts == 0 {
            return None;
        }
        let body = plan.0.replay.clone()?;
        let mut copy = Request::new(full(body));
        *copy.method_mut() = req.method().clone();
        *copy.uri_mut() = req.uri().clone();
        *copy.version_mut() = req.version();
        *copy.headers_mut() = req.headers().clone();
        *copy.extensions_mut() = req.extensions().clone();
        Some(copy)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use tower::ServiceExt;

    use super::*;
    use crate::error::MeshError;
    use crate::traffic::state::SeededRandom;
    use crate::traffic::{test_planned, test_store};

    const MESH: &str = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n\
        metadata: {name: web, namespace: default}\nspec:\n  hosts: [web.default.svc.cluster.local]\n  \
        ports: [{number: 80, name: http, protocol: HTTP}]\n  resolution: STATIC\n  \
        endpoints: [{address: 10.0.0.1}, {address: 10.0.0.2}]\n";

    /// What each attempt saw: the endpoint it was told to avoid, and its
    /// body.
    type Seen = Vec<(Option<String>, bytes::Bytes)>;

    /// A `Retry` over a service that answers `script[n]` to attempt `n`
    /// (a status, or a connect failure for 0), recording what it saw.
    async fn run(
        script: &'static [u16],
        method: &str,
        edit: impl FnOnce(&mut super::super::Destination),
    ) -> (Result<Response<BoxBody>, Failed>, Seen) {
        let store = test_store(MESH);
        let calls = Arc::new(AtomicUsize::new(0));
        let seen: Arc<Mutex<Seen>> = Arc::default();
        let planned = test_planned(&store, "web.default.svc.cluster.local", 80, |d| {
            d.replay = Some(bytes::Bytes::from_static(b"payload"));
            edit(d);
        });
        let ep = planned.0.endpoints[0].clone();
        let inner = {
            let seen = seen.clone();
            tower::service_fn(move |req: Request<BoxBody>| {
                let (calls, seen, ep) = (calls.clone(), seen.clone(), ep.clone());
                async move {
                    let avoid = req.extensions().get::<Avoid>().map(|a| a.0.clone());
                    let body = http_body_util::BodyExt::collect(req.into_body())
                        .await
                        .unwrap()
                        .to_bytes();
                    seen.lock().unwrap().push((avoid, body));
                    let n = calls.fetch_add(1, Ordering::SeqCst);
                    let tried = Tried {
                        endpoint: ep,
                        mtls: false,
                    };
                    match script[n.min(script.len() - 1)] {
                        0 => Err(Failed {
                            error: MeshError::UpstreamConnect {
                                endpoint: tried.endpoint.key.clone(),
                                why: "refused".into(),
                            },
                            failure: Some(Failure::ConnectFailure),
                            tried: Some(tried),
                        }),
                        s => {
                            let mut r = Response::new(crate::body::empty());
                            *r.status_mut() = http::StatusCode::from_u16(s).unwrap();
                            r.extensions_mut().insert(tried);
                            Ok(r)
                        }
                    }
                }
            })
        };
        let retry = tower::retry::Retry::new(Policy::new(Arc::new(SeededRandom::new(3))), inner);
        let mut req = Request::builder()
            .method(method)
            .uri("/")
            .body(full("payload"))
            .unwrap();
        req.extensions_mut().insert(planned);
        let result = retry.oneshot(req).await;
        let seen = seen.lock().unwrap().clone();
        (result, seen)
    }

    #[tokio::test(start_paused = true)]
    async fn istio_default_retries_connect_failures_and_503_twice_with_the_same_body() {
        let (result, seen) = run(&[0, 503, 200], "GET", |_| {}).await;
        assert_eq!(result.unwrap().status(), 200);
        assert_eq!(seen.len(), 3);
        assert!(seen.iter().all(|(_, b)| b == "payload"), "{seen:?}");
        assert_eq!(seen[0].0, None);
        assert_eq!(
            seen[1].0.as_deref(),
            Some("10.0.0.1:80"),
            "the failed endpoint is avoided"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn attempts_run_out_and_the_last_answer_stands() {
        let (result, seen) = run(&[503], "GET", |_| {}).await;
        assert_eq!(result.unwrap().status(), 503);
        assert_eq!(seen.len(), 3, "one attempt and Istio's two retries");
        let (result, seen) = run(&[0], "GET", |d| d.retry.to_mut().attempts = 4).await;
        assert_eq!(result.unwrap_err().error.response_flag(), "UF");
        assert_eq!(seen.len(), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn conditions_decide_and_unbuffered_or_unsafe_requests_go_once() {
        // 500 is not among Istio's default conditions.
        let (result, seen) = run(&[500, 200], "GET", |_| {}).await;
        assert_eq!(result.unwrap().status(), 500);
        assert_eq!(seen.len(), 1);
        // The route layer said the request cannot be replayed (a POST
        // without named retries, or a body too large to buffer).
        let (result, seen) = run(&[503, 200], "POST", |d| d.retryable = false).await;
        assert_eq!(result.unwrap().status(), 503);
        assert_eq!(seen.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn back_off_stays_under_envoys_ceiling() {
        let start = tokio::time::Instant::now();
        let (result, seen) = run(&[503], "GET", |d| d.retry.to_mut().attempts = 3).await;
        assert_eq!(result.unwrap().status(), 503);
        assert_eq!(seen.len(), 4);
        // 25 + 50 + 100 ms at most, fully jittered.
        assert!(
            start.elapsed() <= Duration::from_millis(175),
            "{:?}",
            start.elapsed()
        );
    }
}
