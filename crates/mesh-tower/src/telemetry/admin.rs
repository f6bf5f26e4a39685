//! The scrape endpoint: a tiny service answering with the registry in
//! Prometheus text format, for the admin listener to mount at
//! `/stats/prometheus`.

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::task::{Context, Poll};

use http::{HeaderValue, Method, Request, Response, StatusCode, header};

use super::registry::Registry;
use crate::body::{BoxBody, empty, full};

/// The content type of the Prometheus text format.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Answers `GET` (and `HEAD`) with [`Registry::render`], whatever the path:
/// the caller mounts it where it likes. Other methods get 405.
#[derive(Debug, Clone)]
pub struct MetricsService {
    registry: Registry,
}

impl MetricsService {
    /// Serves `registry`.
    pub fn new(registry: Registry) -> Self {
        Self { registry }
    }

    /// The answer to `req`.
    pub fn respond<B>(&self, req: &Request<B>) -> Response<BoxBody> {
        let mut resp = match *req.method() {
            Method::GET => Response::new(full(self.registry.render())),
            Method::HEAD => Response::new(empty()),
            _ => {
                let mut r = Response::new(empty());
                *r.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
                r.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
                return r;
            }
        };
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(PROMETHEUS_CONTENT_TYPE),
        );
        resp
    }
}

impl<B> tower::Service<Request<B>> for MetricsService {
    type Response = Response<BoxBody>;
    type Error = Infallible;
    type Future = Ready<Result<Response<BoxBody>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        ready(Ok(self.respond(&req)))
    }
}
