//! One served HTTP connection: HTTP/1.1 or h2 with one set of limits and
//! timeouts, the idle guard, and the drain.
//!
//! hyper-util's `auto` builder tells HTTP/1.1 from h2 by reading the first
//! bytes and handing them back through a rewind buffer. On a TLS connection
//! ALPN has already said which it is, and the rewind costs memory for the
//! connection's whole life: hyper's read buffer, 8 KiB, finds 24 bytes in
//! it on the first read and doubles to 16 KiB (measured with massif: about
//! 8 KiB of the 30 KiB an idle mTLS connection cost sidecar B). So
//! connections whose protocol is known skip the detection: h2 ones are
//! served by `auto` told the version (which wraps them in an empty rewind),
//! HTTP/1.1 ones by hyper's own connection with upgrades (`auto` ignores
//! the version when upgrades are on), configured by the same
//! `http1_settings!` as `auto`'s. The
//! others (plaintext, no ALPN) are still detected by `auto`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper::rt::{Read, Write};
use hyper::service::HttpService;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};

use super::{Drain, ServeService, ServerSettings};
use crate::limits::{BodyLimitLayer, BodyLimits};

use crate::body::BoxError;

/// The HTTP/1.1 settings, applied to `auto`'s builder here and to hyper's
/// own where ALPN said `http/1.1` (see the module docs): one list, so the
/// two cannot drift apart.
macro_rules! http1_settings {
    ($b:expr, $limits:expr) => {
        // Without a timer hyper silently disables its header-read timeout.
        // Header count and size keep hyper's defaults (100 headers, ~400 KiB
        // of buffer: 431 beyond), proven by tests/hardening_http.rs.
        $b.timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout($limits.header_read_timeout)
    };
}

fn builder(settings: &ServerSettings) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    http1_settings!(b.http1(), settings);
    // The HTTP/2 flood limits, set here rather than inherited so an
    // upgrade cannot loosen them unnoticed (they equal hyper/h2's defaults,
    // proven by tests/hardening_abuse.rs): past 20 streams reset by the
    // client before they were accepted (rapid reset, CVE-2023-44487) or
    // 1024 streams the server had to reset for the client's errors, the
    // connection gets GOAWAY ENHANCE_YOUR_CALM; 200 streams at once.
    b.http2()
        .timer(TokioTimer::new())
        .max_pending_accept_reset_streams(settings.h2.max_pending_accept_reset_streams)
        .max_local_error_reset_streams(settings.h2.max_local_error_reset_streams)
        .max_concurrent_streams(settings.h2.max_concurrent_streams);
    b
}

/// [`serve_http`] for a connection whose protocol TLS has agreed: served
/// without `auto`'s detection, which costs memory (see the module docs).
pub async fn serve_connection<IO, S>(io: IO, service: S, drain: Drain, known: Option<Known>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: ServeService,
{
    let _guard = drain.guard();
    let activity = Arc::new(Activity::default());
    let svc = hyper_util::service::TowerToHyperService::new(limited(
        service,
        drain.settings().body,
        activity.clone(),
        drain.clone(),
    ));
    let builder = for_known(builder(drain.settings()), known);
    let conn = serve(&builder, drain.settings(), known, TokioIo::new(io), svc);
    tokio::pin!(conn);
    let ended = |r: Result<(), Box<dyn std::error::Error + Send + Sync>>| {
        if let Err(e) = r {
            tracing::debug!(error = %e, "connection ended with an error");
        }
    };
    // The first request must start within the header-read timeout (hyper
    // enforces it for HTTP/1.1 only: this covers h2, whose HEADERS and
    // CONTINUATION frames can dribble in too); after that, a connection
    // that starts no request for the idle timeout, with none in flight, is
    // shut down gracefully (never cutting an exchange). Checked once per
    // window, so an idle connection goes after one to two windows.
    let mut window = drain.settings().header_read_timeout;
    let mut seen = 0;
    loop {
        tokio::select! {
            r = conn.as_mut() => return ended(r),
            _ = drain.signaled() => {
                activity.draining.store(true, Ordering::Release);
                break;
            }
            _ = tokio::time::sleep(window) => {
                let started = activity.started.load(Ordering::Acquire);
                if started == seen && activity.pending.load(Ordering::Acquire) == 0 {
                    tracing::debug!(requests = started, "closing an idle connection");
                    conn.as_mut().graceful_shutdown();
                    // Nothing is in flight, so the graceful part only waits
                    // for the client (h2 waits for a PING's answer, which a
                    // hostile client never sends): bounded, then dropped.
                    let bound = window.min(Duration::from_secs(10));
                    if let Ok(r) = tokio::time::timeout(bound, conn.as_mut()).await {
                        ended(r);
                    }
                    return;
                }
                seen = started;
                window = drain.settings().idle_timeout;
            }
        }
    }
    // A request a client wrote just as the drain began (on a connection
    // accepted a moment ago, or an idle keep-alive one) is still on its
    // way: closing now would fail it unprocessed. So the connection keeps
    // serving for the drain grace, its HTTP/1.1 answers saying
    // `Connection: close`, before the graceful shutdown (GOAWAY for h2,
    // close when idle for HTTP/1.1) lets what is in flight finish.
    tokio::select! {
        r = conn.as_mut() => return ended(r),
        _ = tokio::time::sleep(drain.settings().drain_grace) => {}
    }
    conn.as_mut().graceful_shutdown();
    ended(conn.await);
}

/// What a connection's requests are doing, for its idle check.
#[derive(Debug, Default)]
struct Activity {
    /// Requests started on the connection.
    started: AtomicU64,
    /// Requests whose response (head and body) is not done yet.
    pending: AtomicUsize,
    /// The drain has reached this connection: HTTP/1.1 answers say
    /// `Connection: close`.
    draining: AtomicBool,
}

/// Counts a request as pending until dropped.
struct Pending(Arc<Activity>);

impl Pending {
    fn start(activity: &Arc<Activity>) -> Self {
        activity.started.fetch_add(1, Ordering::AcqRel);
        activity.pending.fetch_add(1, Ordering::AcqRel);
        Self(activity.clone())
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

pin_project_lite::pin_project! {
    /// A response future that adds `Connection: close` to HTTP/1.1
    /// answers once the drain has begun, so keep-alive clients leave
    /// instead of racing the close with their next request, and counts
    /// the request as pending for the idle check until it resolves.
    struct CloseOnDrain<F> {
        #[pin]
        inner: F,
        h1: bool,
        // Moved into the response body, so the request stays pending until
        // its body is done.
        pending: Option<Pending>,
    }
}

impl<F, E> std::future::Future for CloseOnDrain<F>
where
    F: std::future::Future<Output = Result<Response<crate::body::BoxBody>, E>>,
{
    type Output = F::Output;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        let this = self.project();
        let r = std::task::ready!(this.inner.poll(cx));
        std::task::Poll::Ready(r.map(|mut resp| {
            let draining = this
                .pending
                .as_ref()
                .is_some_and(|p| p.0.draining.load(Ordering::Acquire));
            if *this.h1 {
                // A server answers in its own HTTP version (RFC 9110 section
                // 6.2), whatever the handler's response says: a proxied
                // HTTP/1.0 answer goes on as HTTP/1.1 (hyper would write the
                // response's own version, and an HTTP/1.0 status line makes
                // the client give up its keep-alive connection).
                *resp.version_mut() = http::Version::HTTP_11;
            }
            // A 101 keeps its `Connection: upgrade`: the connection is
            // the upgraded one's from here on, and draining does not undo
            // the switch the client is told of.
            if *this.h1 && draining && resp.status() != http::StatusCode::SWITCHING_PROTOCOLS {
                resp.headers_mut().insert(
                    http::header::CONNECTION,
                    http::HeaderValue::from_static("close"),
                );
            }
            match this.pending.take() {
                Some(pending) => resp.map(|body| crate::body::boxed(Tracked { body, pending })),
                None => resp,
            }
        }))
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request pending until it is dropped.
    struct Tracked {
        #[pin]
        body: crate::body::BoxBody,
        pending: Pending,
    }
}

impl http_body::Body for Tracked {
    type Data = bytes::Bytes;
    type Error = crate::body::BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// See [`CloseOnDrain`].
#[derive(Clone)]
struct CloseOnDrainService<S> {
    inner: S,
    activity: Arc<Activity>,
    /// Given to a WebSocket upgrade's tunnel, which outlives the request.
    drain: Drain,
}

impl<S, B> tower::Service<Request<B>> for CloseOnDrainService<S>
where
    S: tower::Service<Request<B>, Response = Response<crate::body::BoxBody>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = CloseOnDrain<S::Future>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        if req.headers().contains_key(http::header::UPGRADE) {
            req.extensions_mut()
                .insert(crate::upgrade::TunnelDrain(self.drain.clone()));
        }
        CloseOnDrain {
            h1: req.version() < http::Version::HTTP_2,
            inner: self.inner.call(req),
            pending: Some(Pending::start(&self.activity)),
        }
    }
}

/// The service behind the body limits, boxed here, outside any async
/// block, so the connection futures stay provably `Send`.
fn limited<S: ServeService>(
    service: S,
    limits: BodyLimits,
    activity: Arc<Activity>,
    drain: Drain,
) -> tower::util::BoxCloneSyncService<
    Request<Incoming>,
    Response<crate::body::BoxBody>,
    std::convert::Infallible,
> {
    tower::util::BoxCloneSyncService::new(CloseOnDrainService {
        inner: tower::Layer::layer(&BodyLimitLayer(limits), service),
        activity,
        drain,
    })
}

/// The protocol a connection speaks, when TLS has said so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Known {
    /// ALPN `http/1.1`.
    Http1,
    /// ALPN `h2`.
    H2,
}

impl Known {
    /// From an ALPN protocol name; `None` for none or another.
    pub fn from_alpn(alpn: Option<&[u8]>) -> Option<Self> {
        match alpn {
            Some(b"http/1.1") => Some(Self::Http1),
            Some(b"h2") => Some(Self::H2),
            _ => None,
        }
    }
}

pin_project_lite::pin_project! {
    /// A connection being served; see the [module docs](self).
    #[project = ServedProj]
    enum Served<'a, I, S>
    where
        S: HttpService<Incoming>,
    {
        // Boxed: the enum is as large as its largest variant, and most
        // connections are HTTP/1.1.
        Auto { conn: Pin<Box<auto::UpgradeableConnection<'a, I, S, TokioExecutor>>> },
        Http1 { #[pin] conn: hyper::server::conn::http1::UpgradeableConnection<I, S> },
        H2 { conn: Pin<Box<auto::Connection<'a, I, S, TokioExecutor>>> },
    }
}

/// `auto`'s builder for a connection: told the version when it is h2 (so
/// [`serve`] skips the detection with every HTTP/2 setting kept).
fn for_known(
    builder: auto::Builder<TokioExecutor>,
    known: Option<Known>,
) -> auto::Builder<TokioExecutor> {
    match known {
        Some(Known::H2) => builder.http2_only(),
        _ => builder,
    }
}

/// Serves `io` with `service`: by `auto` with detection when the protocol
/// is not `known`; by `auto` without it for h2 (`builder` from
/// [`for_known`]); by hyper's HTTP/1.1 connection, with the same settings,
/// for HTTP/1.1.
fn serve<'a, I, S, B>(
    builder: &'a auto::Builder<TokioExecutor>,
    settings: &ServerSettings,
    known: Option<Known>,
    io: I,
    service: S,
) -> Served<'a, I, S>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>>,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    I: Read + Write + Unpin + Send + 'static,
{
    match known {
        None => Served::Auto {
            conn: Box::pin(builder.serve_connection_with_upgrades(io, service)),
        },
        Some(Known::Http1) => {
            let mut h1 = hyper::server::conn::http1::Builder::new();
            http1_settings!(h1, settings);
            Served::Http1 {
                conn: h1.serve_connection(io, service).with_upgrades(),
            }
        }
        Some(Known::H2) => Served::H2 {
            conn: Box::pin(builder.serve_connection(io, service)),
        },
    }
}

impl<I, S, B> Served<'_, I, S>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>>,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    I: Read + Write + Unpin + Send + 'static,
{
    /// Finishes what is in flight, then closes (GOAWAY for h2).
    fn graceful_shutdown(self: Pin<&mut Self>) {
        match self.project() {
            ServedProj::Auto { conn } => conn.as_mut().graceful_shutdown(),
            ServedProj::Http1 { conn } => conn.graceful_shutdown(),
            ServedProj::H2 { conn } => conn.as_mut().graceful_shutdown(),
        }
    }
}

impl<I, S, B> Future for Served<'_, I, S>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>>,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    I: Read + Write + Unpin + Send + 'static,
{
    type Output = Result<(), BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Ready(match self.project() {
            ServedProj::Auto { conn } => ready!(conn.as_mut().poll(cx)),
            ServedProj::Http1 { conn } => ready!(conn.poll(cx)).map_err(Into::into),
            ServedProj::H2 { conn } => ready!(conn.as_mut().poll(cx)),
        })
    }
}
