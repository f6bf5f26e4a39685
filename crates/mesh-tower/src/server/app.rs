//! The user's service as the server serves it.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{Request, Response};

use crate::body::{BoxBody, BoxError, boxed, full};
use crate::error::MeshError;

/// The user's service with the body boxed on the way in and failures
/// answered 500 on the way out.
#[derive(Clone)]
pub struct AppService {
    inner: tower::util::BoxCloneSyncService<Request<BoxBody>, Response<BoxBody>, BoxError>,
}

impl std::fmt::Debug for AppService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppService").finish_non_exhaustive()
    }
}

impl AppService {
    /// Wraps `service`.
    pub fn new<S, B>(service: S) -> Self
    where
        S: tower::Service<Request<BoxBody>, Response = Response<B>> + Clone + Send + Sync + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let svc = tower::ServiceBuilder::new()
            .map_err(Into::<BoxError>::into)
            .map_response(|r: Response<B>| r.map(boxed))
            .service(service);
        Self {
            inner: tower::util::BoxCloneSyncService::new(svc),
        }
    }
}

impl<B> tower::Service<Request<B>> for AppService
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<BoxBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<BoxBody>, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // A service that cannot take requests answers each with 500.
        self.inner.poll_ready(cx).map(|_| Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let fut = self.inner.call(req.map(boxed));
        Box::pin(async move { catch(fut.await) })
    }
}

/// Turns a service error into a 500 answer: the caller gets a response,
/// never a reset connection.
fn catch(r: Result<Response<BoxBody>, BoxError>) -> Result<Response<BoxBody>, Infallible> {
    Ok(r.unwrap_or_else(|e| {
        if let Some(limit) = crate::limits::body_limit_error(&*e) {
            return MeshError::from(limit).to_response();
        }
        tracing::info!(error = %e, "the service failed; answering 500");
        let mut resp = Response::new(full("internal error\n"));
        *resp.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
        resp
    }))
}
