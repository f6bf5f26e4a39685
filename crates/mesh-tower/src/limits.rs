//! Request body limits: a cap on a request body's size (413 over it) and a
//! read timeout between its frames (408 when a client stalls), applied as a
//! layer in front of everything else on a served connection.
//!
//! Bodies are streamed, never buffered: a body under the cap costs only the
//! frames in flight, whatever its size. A `Content-Length` over the cap is
//! answered 413 before anything is forwarded; a body that grows past the cap
//! while streaming (chunked, h2) ends in an error that aborts the upstream
//! request (the upstream never sees a complete body) and is answered 413 if
//! the upstream has not answered yet. The read timeout only runs while the
//! mesh is waiting for the client: an upstream that reads slowly
//! (backpressure) is not the client's fault.
//!
//! ```
//! use std::time::Duration;
//! use mesh_tower::limits::BodyLimits;
//!
//! let limits = BodyLimits::default()
//!     .max_request_body(Some(8 << 20))
//!     .body_read_timeout(Some(Duration::from_secs(30)));
//! assert_eq!(limits.max(), Some(8 << 20));
//! ```

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Buf;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};

use crate::body::BoxBody;
use crate::error::MeshError;

/// nginx's `client_body_timeout`: a client that sends nothing of its body
/// for this long is cut off.
pub const DEFAULT_BODY_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// What a request body is held to. The default streams any size (as Envoy
/// and Istio do) and cuts a client that stalls for
/// [`DEFAULT_BODY_READ_TIMEOUT`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyLimits {
    max: Option<u64>,
    read_timeout: Option<Duration>,
}

impl Default for BodyLimits {
    fn default() -> Self {
        Self {
            max: None,
            read_timeout: Some(DEFAULT_BODY_READ_TIMEOUT),
        }
    }
}

impl BodyLimits {
    /// The largest request body accepted, in bytes (`None`: no cap).
    #[must_use]
    pub fn max_request_body(mut self, max: Option<u64>) -> Self {
        self.max = max;
        self
    }

    /// How long the client may leave the body without a new frame while
    /// the mesh waits for it (`None`: forever).
    #[must_use]
    pub fn body_read_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.read_timeout = timeout;
        self
    }

    /// The cap, if any.
    pub fn max(&self) -> Option<u64> {
        self.max
    }

    /// The read timeout, if any.
    pub fn read_timeout(&self) -> Option<Duration> {
        self.read_timeout
    }

    /// Checks the head: a `Content-Length` over the cap is refused before
    /// anything is read or forwarded.
    pub fn check_head<B>(&self, req: &Request<B>) -> Result<(), MeshError> {
        let (Some(max), Some(len)) = (self.max, declared_length(req)) else {
            return Ok(());
        };
        if len > max {
            return Err(MeshError::RequestBodyTooLarge { limit: max });
        }
        Ok(())
    }

    /// Wraps the body so it is held to these limits.
    pub fn wrap<B>(&self, body: B) -> LimitedBody<B> {
        LimitedBody {
            inner: body,
            remaining: self.max,
            limit: self.max.unwrap_or(u64::MAX),
            read_timeout: self.read_timeout,
            timer: None,
        }
    }
}

fn declared_length<B>(req: &Request<B>) -> Option<u64> {
    req.headers()
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Why a body was cut off. Found again in an upstream's error chain by
/// [`body_limit_error`], so the caller gets 413 or 408 instead of 502.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BodyLimitError {
    /// The body grew past the cap.
    #[error("request body larger than {limit} bytes")]
    TooLarge {
        /// The cap.
        limit: u64,
    },
    /// The client sent nothing of the body for this long.
    #[error("request body stalled for {0:?}")]
    Timeout(Duration),
}

impl From<BodyLimitError> for MeshError {
    fn from(e: BodyLimitError) -> Self {
        match e {
            BodyLimitError::TooLarge { limit } => MeshError::RequestBodyTooLarge { limit },
            BodyLimitError::Timeout(d) => MeshError::RequestBodyTimeout(d),
        }
    }
}

/// The [`BodyLimitError`] somewhere in `e`'s chain of sources, if any.
pub fn body_limit_error(e: &(dyn std::error::Error + 'static)) -> Option<BodyLimitError> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(found) = err.downcast_ref::<BodyLimitError>() {
            return Some(*found);
        }
        // `io::Error::source` skips the error it wraps: look inside.
        if let Some(inner) = err
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
        {
            if let Some(found) = body_limit_error(inner) {
                return Some(found);
            }
        }
        cur = err.source();
    }
    None
}

pin_project_lite::pin_project! {
    /// A body held to [`BodyLimits`]. Its error is a
    /// [`crate::body::BoxError`] holding either the inner body's error or a
    /// [`BodyLimitError`].
    #[derive(Debug)]
    pub struct LimitedBody<B> {
        #[pin]
        inner: B,
        remaining: Option<u64>,
        limit: u64,
        read_timeout: Option<Duration>,
        // Made on the first wait only: an empty or already-buffered body
        // never allocates a timer.
        timer: Option<Pin<Box<tokio::time::Sleep>>>,
    }
}

impl<B> Body for LimitedBody<B>
where
    B: Body,
    B::Error: Into<crate::body::BoxError>,
{
    type Data = B::Data;
    type Error = crate::body::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = match this.inner.poll_frame(cx) {
            Poll::Ready(f) => f,
            Poll::Pending => {
                if let Some(t) = *this.read_timeout {
                    let timer = this
                        .timer
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep(t)));
                    ready!(timer.as_mut().poll(cx));
                    return Poll::Ready(Some(Err(BodyLimitError::Timeout(t).into())));
                }
                return Poll::Pending;
            }
        };
        // Progress: the client is not stalled; the next wait starts afresh.
        *this.timer = None;
        let Some(frame) = frame else {
            return Poll::Ready(None);
        };
        let frame = frame.map_err(Into::into)?;
        if let (Some(remaining), Some(data)) = (this.remaining.as_mut(), frame.data_ref()) {
            let n = data.remaining() as u64;
            if n > *remaining {
                return Poll::Ready(Some(Err(
                    BodyLimitError::TooLarge { limit: *this.limit }.into()
                )));
            }
            *remaining -= n;
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The layer form of [`BodyLimits`]: refuses over-long `Content-Length`s
/// with 413 and hands the inner service a [`LimitedBody`].
#[derive(Debug, Clone, Copy)]
pub struct BodyLimitLayer(pub BodyLimits);

impl<S> tower::Layer<S> for BodyLimitLayer {
    type Service = BodyLimit<S>;

    fn layer(&self, inner: S) -> BodyLimit<S> {
        BodyLimit {
            inner,
            limits: self.0,
        }
    }
}

/// See [`BodyLimitLayer`].
#[derive(Debug, Clone)]
pub struct BodyLimit<S> {
    inner: S,
    limits: BodyLimits,
}

/// How much of a refused body is read and thrown away after the 413 (the
/// "lingering close" of nginx): a client still sending its body when the
/// answer comes would otherwise meet a reset (EPIPE) instead of the 413.
/// Bounded both ways, so a client cannot hold the connection with it.
const LINGER_BYTES: u64 = 16 << 20;
/// See [`LINGER_BYTES`].
const LINGER_TIME: Duration = Duration::from_secs(5);

/// Reads and discards `body`, up to [`LINGER_BYTES`] or [`LINGER_TIME`].
async fn linger<B>(body: B)
where
    B: http_body::Body + Send + 'static,
{
    use http_body_util::BodyExt as _;
    let drain = async move {
        let mut body = std::pin::pin!(body);
        let mut read = 0u64;
        while let Some(Ok(frame)) = body.frame().await {
            if let Some(data) = frame.data_ref() {
                read += data.remaining() as u64;
            }
            if read > LINGER_BYTES {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(LINGER_TIME, drain).await;
}

impl<S, B> tower::Service<Request<B>> for BodyLimit<S>
where
    S: tower::Service<Request<LimitedBody<B>>, Response = Response<BoxBody>>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
{
    type Response = Response<BoxBody>;
    type Error = S::Error;
    type Future = LimitFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        if let Err(e) = self.limits.check_head(&req) {
            tracing::info!(reason = %e, method = %req.method(), path = %req.uri().path(), "refused before forwarding");
            let mut response = e.to_response_for(crate::error::is_grpc(req.headers()));
            if req.version() < http::Version::HTTP_2 {
                // The connection cannot be reused: the body is not read.
                response.headers_mut().insert(
                    http::header::CONNECTION,
                    http::HeaderValue::from_static("close"),
                );
            }
            // Read what the client is still sending, so it gets to read the
            // answer (see LINGER_BYTES).
            tokio::spawn(linger(req.into_body()));
            return LimitFuture::Refused {
                response: Some(response),
            };
        }
        let limits = self.limits;
        LimitFuture::Inner {
            fut: self.inner.call(req.map(|b| limits.wrap(b))),
        }
    }
}

// pin-project-lite takes no doc comments on variant fields: they are
// described on their variants.
#[allow(missing_docs)]
mod limit_future {
    use super::*;
    pin_project_lite::pin_project! {
        /// The future of [`BodyLimit`]: the inner service's, or the refusal.
        #[project = LimitFutureProj]
        #[derive(Debug)]
        pub enum LimitFuture<F> {
            /// The request went on (`fut`, the inner service's future).
            Inner { #[pin] fut: F },
            /// The head was refused (`response`, taken when polled).
            Refused { response: Option<Response<BoxBody>> },
        }
    }

    impl<F, E> Future for LimitFuture<F>
    where
        F: Future<Output = Result<Response<BoxBody>, E>>,
    {
        type Output = Result<Response<BoxBody>, E>;

        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
            match self.project() {
                LimitFutureProj::Inner { fut } => fut.poll(cx),
                LimitFutureProj::Refused { response } => match response.take() {
                    Some(r) => Poll::Ready(Ok(r)),
                    None => Poll::Pending,
                },
            }
        }
    }
}
pub use limit_future::LimitFuture;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use bytes::Bytes;
    use http_body_util::BodyExt;
    use tokio::sync::mpsc;

    /// A body fed by a channel, so a test decides when frames arrive.
    struct Fed(mpsc::Receiver<Bytes>);

    impl Body for Fed {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
        }
    }

    fn fed(chunks: &[&'static str]) -> Fed {
        let (tx, rx) = mpsc::channel(chunks.len().max(1));
        for c in chunks {
            tx.try_send(Bytes::from_static(c.as_bytes())).unwrap();
        }
        Fed(rx)
    }

    #[tokio::test]
    async fn a_body_under_the_cap_streams_whole() {
        let limits = BodyLimits::default().max_request_body(Some(10));
        let body = limits.wrap(fed(&["hello", "world"]));
        assert_eq!(body.collect().await.unwrap().to_bytes(), "helloworld");
    }

    #[tokio::test]
    async fn a_body_past_the_cap_ends_in_too_large() {
        let limits = BodyLimits::default().max_request_body(Some(9));
        let err = limits
            .wrap(fed(&["hello", "world"]))
            .collect()
            .await
            .unwrap_err();
        // Found again through a wrapping error, as in hyper's chain.
        let wrapped = std::io::Error::other(err);
        assert_eq!(
            body_limit_error(&wrapped),
            Some(BodyLimitError::TooLarge { limit: 9 })
        );
        assert_eq!(
            MeshError::from(BodyLimitError::TooLarge { limit: 9 }).status(),
            http::StatusCode::PAYLOAD_TOO_LARGE
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_times_out_and_progress_resets_the_clock() {
        let limits = BodyLimits::default().body_read_timeout(Some(Duration::from_secs(5)));
        let (tx, rx) = mpsc::channel(4);
        let mut body = std::pin::pin!(limits.wrap(Fed(rx)));
        let feeder = tokio::spawn(async move {
            // Three frames 4 s apart: slow, never stalled past 5 s.
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_secs(4)).await;
                tx.send(Bytes::from_static(b"x")).await.unwrap();
            }
            // Then silence, with the sender kept open.
            tokio::time::sleep(Duration::from_secs(3600)).await;
            drop(tx);
        });
        for _ in 0..3 {
            let frame = body.frame().await.unwrap().unwrap();
            assert_eq!(frame.into_data().unwrap(), "x");
        }
        let err = body.frame().await.unwrap().unwrap_err();
        assert_eq!(
            body_limit_error(&*err),
            Some(BodyLimitError::Timeout(Duration::from_secs(5)))
        );
        feeder.abort();
    }

    #[test]
    fn a_declared_length_over_the_cap_is_refused_at_the_head() {
        let limits = BodyLimits::default().max_request_body(Some(100));
        let req = |len: &str| {
            Request::post("/")
                .header("content-length", len)
                .body(())
                .unwrap()
        };
        assert!(limits.check_head(&req("100")).is_ok());
        let e = limits.check_head(&req("101")).unwrap_err();
        assert_eq!(e.status(), http::StatusCode::PAYLOAD_TOO_LARGE);
        assert!(BodyLimits::default().check_head(&req("999999999")).is_ok());
    }
}
