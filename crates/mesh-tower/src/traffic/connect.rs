//! The innermost layer: sends the attempt, already addressed to its
//! endpoint, through the [`Upstream`] (hyper-util's pooled clients, or a
//! test's `service_fn`), and classifies what went wrong as retry conditions
//! and outlier detection see it.

use std::task::{Context, Poll};

use http::{Request, Response};
use mesh_core::retry::Failure;
use tower::Service;

use super::{AttemptFuture, Failed, Tried};
use crate::body::BoxBody;
use crate::upstream::{Upstream, UpstreamError};

/// Sends attempts through an [`Upstream`].
#[derive(Debug, Clone)]
pub(crate) struct Connect {
    upstream: Upstream,
}

impl Connect {
    pub(crate) fn new(upstream: Upstream) -> Self {
        Self { upstream }
    }
}

impl Service<Request<BoxBody>> for Connect {
    type Response = Response<BoxBody>;
    type Error = Failed;
    type Future = AttemptFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Failed>> {
        self.upstream.poll_ready(cx).map_err(|e| {
            let failure = classify(&e);
            Failed {
                error: e.into_mesh_error(String::new()),
                failure,
                tried: None,
            }
        })
    }

    fn call(&mut self, mut req: Request<BoxBody>) -> AttemptFuture {
        // The endpoint tried is only this layer's to report (the upstream
        // is addressed by the URI), so it is taken, not cloned; and the
        // upstream was made ready by `poll_ready`, so it is called as it
        // is rather than cloned for a oneshot.
        let tried = req.extensions_mut().remove::<Tried>();
        let send = self.upstream.call(req);
        Box::pin(async move {
            send.await.map_err(|e| {
                let endpoint = tried
                    .as_ref()
                    .map_or_else(String::new, |t| t.endpoint.key.clone());
                let failure = classify(&e);
                Failed {
                    error: e.into_mesh_error(endpoint),
                    failure,
                    tried,
                }
            })
        })
    }
}

/// The retry condition a failed send meets; `None` when the failure is the
/// caller's (its request body broke a limit): nothing to retry, and nothing
/// said of the endpoint.
fn classify(e: &UpstreamError) -> Option<Failure> {
    match e {
        UpstreamError::Connect(_) => Some(Failure::ConnectFailure),
        UpstreamError::Protocol(_) => Some(Failure::Reset),
        UpstreamError::RequestBody(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use tower::ServiceExt;

    use super::*;
    use crate::body::full;

    fn upstream(result: Result<u16, UpstreamError>) -> Upstream {
        tower::util::BoxCloneSyncService::new(tower::service_fn(move |_req: Request<BoxBody>| {
            let result = result.clone();
            async move {
                result.map(|s| {
                    let mut r = Response::new(full("x"));
                    *r.status_mut() = http::StatusCode::from_u16(s).unwrap();
                    r
                })
            }
        }))
    }

    async fn send(result: Result<u16, UpstreamError>) -> Result<Response<BoxBody>, Failed> {
        let req = Request::get("http://10.0.0.1:80/")
            .body(crate::body::empty())
            .unwrap();
        Connect::new(upstream(result)).oneshot(req).await
    }

    #[tokio::test]
    async fn answers_pass_through_whatever_their_status() {
        assert_eq!(send(Ok(503)).await.unwrap().status(), 503);
        assert_eq!(send(Ok(200)).await.unwrap().status(), 200);
    }

    #[tokio::test]
    async fn failures_are_classified_for_retries_and_outliers() {
        let refused = send(Err(UpstreamError::Connect("refused".into())))
            .await
            .unwrap_err();
        assert_eq!(refused.failure, Some(Failure::ConnectFailure));
        assert_eq!(refused.error.response_flag(), "UF");
        let reset = send(Err(UpstreamError::Protocol("reset".into())))
            .await
            .unwrap_err();
        assert_eq!(reset.failure, Some(Failure::Reset));
        assert_eq!(reset.error.status(), 502);
        let too_big = send(Err(UpstreamError::RequestBody(
            crate::limits::BodyLimitError::TooLarge { limit: 10 },
        )))
        .await
        .unwrap_err();
        assert_eq!(too_big.failure, None, "the caller's fault is not retried");
        assert_eq!(too_big.error.status(), 413);
    }
}
