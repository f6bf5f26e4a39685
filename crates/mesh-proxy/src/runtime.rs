//! What every long-running mode shares: the configuration store and its
//! watcher, the drain on SIGTERM, and serving HTTP on accepted streams with a
//! graceful end.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use mesh_core::store::{FileSource, FileWatcher, Store};
use mesh_tower::limits::{BodyLimitLayer, BodyLimits, LimitedBody};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

/// Loads the configuration and starts watching it. An unreadable
/// configuration at start is fatal (there is no last good one to keep).
pub(crate) fn start_store(config: &Path) -> Result<(Arc<Store>, FileWatcher)> {
    let source = FileSource::new(config);
    let store = Arc::new(Store::from_source(&source).map_err(|e| anyhow::anyhow!("{e}"))?);
    let watcher = FileWatcher::spawn(store.clone(), source).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok((store, watcher))
}

/// Limits every HTTP connection the proxy serves is held to.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HttpLimits {
    /// How long a client may take to send a request's headers (HTTP/1.1)
    /// before the connection is closed: the slowloris guard.
    pub(crate) header_read_timeout: Duration,
    /// How long a connection may go without starting a request (and with
    /// none in flight) before it is shut down gracefully.
    pub(crate) idle_timeout: Duration,
    /// The request body's cap (413) and read timeout (408).
    pub(crate) body: BodyLimits,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(300),
            body: BodyLimits::default(),
        }
    }
}

/// What the proxy serves HTTP connections with.
pub(crate) trait ProxyService:
    tower::Service<
        Request<ProxyBody>,
        Response = Response<mesh_tower::body::BoxBody>,
        Error = std::convert::Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S> ProxyService for S where
    S: tower::Service<
            Request<ProxyBody>,
            Response = Response<mesh_tower::body::BoxBody>,
            Error = std::convert::Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + Sync
        + 'static
{
}

/// The body of every request the proxy serves: the client's, held to the
/// [`HttpLimits`] body limits.
pub(crate) type ProxyBody = LimitedBody<Incoming>;

/// The drain signal, the count of connections still open, and the limits
/// every connection is served with (carried here because every connection
/// handler already holds a `Drain`).
#[derive(Debug, Clone)]
pub(crate) struct Drain {
    rx: watch::Receiver<bool>,
    active: Arc<AtomicUsize>,
    limits: HttpLimits,
}

/// Starts a drain when asked.
#[derive(Debug)]
pub(crate) struct DrainController {
    tx: watch::Sender<bool>,
    active: Arc<AtomicUsize>,
}

/// Held by each open connection; dropping it marks the connection done.
#[derive(Debug)]
pub(crate) struct ConnGuard(Arc<AtomicUsize>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

pub(crate) fn drain_pair(limits: HttpLimits) -> (DrainController, Drain) {
    let (tx, rx) = watch::channel(false);
    let active = Arc::new(AtomicUsize::new(0));
    (
        DrainController {
            tx,
            active: active.clone(),
        },
        Drain { rx, active, limits },
    )
}

impl Drain {
    /// Resolves once draining has begun.
    pub(crate) async fn signaled(&self) {
        let mut rx = self.rx.clone();
        let _ = rx.wait_for(|d| *d).await;
    }

    /// Counts a connection until the guard drops.
    pub(crate) fn guard(&self) -> ConnGuard {
        self.active.fetch_add(1, Ordering::AcqRel);
        ConnGuard(self.active.clone())
    }
}

impl DrainController {
    /// Stops accepting, asks connections to finish, and waits for them up to
    /// `deadline`.
    pub(crate) async fn drain(self, deadline: Duration) {
        let _ = self.tx.send(true);
        let until = tokio::time::Instant::now() + deadline;
        while self.active.load(Ordering::Acquire) > 0 && tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left = self.active.load(Ordering::Acquire);
        if left > 0 {
            tracing::warn!(
                connections = left,
                "drain deadline reached; closing what is left"
            );
        }
    }
}

/// Waits for SIGTERM or Ctrl-C.
pub(crate) async fn terminated() -> Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}

/// The HTTP/1.1 settings, applied to `auto`'s builder here and to hyper's
/// own where ALPN said `http/1.1` (see [`crate::served`]): one list, so the
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
pub(crate) use http1_settings;

pub(crate) fn builder(limits: HttpLimits) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    http1_settings!(b.http1(), limits);
    // The HTTP/2 flood limits, set here rather than inherited so an
    // upgrade cannot loosen them unnoticed (they equal hyper/h2's defaults,
    // proven by tests/hardening_abuse.rs): past 20 streams reset by the
    // client before they were accepted (rapid reset, CVE-2023-44487) or
    // 1024 streams the server had to reset for the client's errors, the
    // connection gets GOAWAY ENHANCE_YOUR_CALM; 200 streams at once.
    b.http2()
        .timer(TokioTimer::new())
        .max_pending_accept_reset_streams(20)
        .max_local_error_reset_streams(1024)
        .max_concurrent_streams(200);
    b
}

/// Serves HTTP/1.1 or h2 on `io` until the client is done or a drain asks
/// the connection to finish its in-flight requests and close. Request
/// bodies are held to the drain's [`HttpLimits`] on the way in.
pub(crate) async fn serve_http<IO, S>(io: IO, service: S, drain: Drain)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: ProxyService,
{
    serve_http_as(io, service, drain, None).await;
}

/// [`serve_http`] for a connection whose protocol TLS has agreed: served
/// without `auto`'s detection, which costs memory (see [`crate::served`]).
pub(crate) async fn serve_http_as<IO, S>(
    io: IO,
    service: S,
    drain: Drain,
    known: Option<crate::served::Known>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: ProxyService,
{
    let _guard = drain.guard();
    let activity = Arc::new(Activity::default());
    let svc = hyper_util::service::TowerToHyperService::new(limited(
        service,
        drain.limits.body,
        activity.clone(),
    ));
    let builder = crate::served::for_known(builder(drain.limits), known);
    let conn = crate::served::serve(&builder, drain.limits, known, TokioIo::new(io), svc);
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
    let mut window = drain.limits.header_read_timeout;
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
                window = drain.limits.idle_timeout;
            }
        }
    }
    // A request a client wrote just as the drain began (on a connection
    // accepted a moment ago, or an idle keep-alive one) is still on its
    // way: closing now would fail it unprocessed. So the connection keeps
    // serving for DRAIN_GRACE, its HTTP/1.1 answers saying
    // `Connection: close`, before the graceful shutdown (GOAWAY for h2,
    // close when idle for HTTP/1.1) lets what is in flight finish.
    tokio::select! {
        r = conn.as_mut() => return ended(r),
        _ = tokio::time::sleep(DRAIN_GRACE) => {}
    }
    conn.as_mut().graceful_shutdown();
    ended(conn.await);
}

/// How long a connection keeps taking requests once a drain has begun.
const DRAIN_GRACE: Duration = Duration::from_secs(1);

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
    F: std::future::Future<Output = Result<Response<mesh_tower::body::BoxBody>, E>>,
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
            if *this.h1 && draining {
                resp.headers_mut().insert(
                    http::header::CONNECTION,
                    http::HeaderValue::from_static("close"),
                );
            }
            match this.pending.take() {
                Some(pending) => {
                    resp.map(|body| mesh_tower::body::boxed(Tracked { body, pending }))
                }
                None => resp,
            }
        }))
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request pending until it is dropped.
    struct Tracked {
        #[pin]
        body: mesh_tower::body::BoxBody,
        pending: Pending,
    }
}

impl http_body::Body for Tracked {
    type Data = bytes::Bytes;
    type Error = mesh_tower::body::BoxError;

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
}

impl<S, B> tower::Service<Request<B>> for CloseOnDrainService<S>
where
    S: tower::Service<Request<B>, Response = Response<mesh_tower::body::BoxBody>>,
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

    fn call(&mut self, req: Request<B>) -> Self::Future {
        CloseOnDrain {
            h1: req.version() < http::Version::HTTP_2,
            inner: self.inner.call(req),
            pending: Some(Pending::start(&self.activity)),
        }
    }
}

/// The service behind the body limits, boxed here, outside any async
/// block, so the connection futures stay provably `Send`.
fn limited<S: ProxyService>(
    service: S,
    limits: BodyLimits,
    activity: Arc<Activity>,
) -> tower::util::BoxCloneSyncService<
    Request<Incoming>,
    Response<mesh_tower::body::BoxBody>,
    std::convert::Infallible,
> {
    tower::util::BoxCloneSyncService::new(CloseOnDrainService {
        inner: tower::Layer::layer(&BodyLimitLayer(limits), service),
        activity,
    })
}

/// Boxes a response body: a named function, not a closure, so the futures
/// that hold it stay provably `Send` for the compiler.
pub(crate) fn box_response<B>(r: Response<B>) -> Response<mesh_tower::body::BoxBody>
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<mesh_tower::body::BoxError>,
{
    r.map(mesh_tower::body::boxed)
}

/// Marks the proxy ready, waits for SIGTERM (or Ctrl-C), then drains for at
/// most `drain_timeout` seconds.
pub(crate) async fn ready_then_drain(
    admin: &crate::admin::AdminState,
    controller: DrainController,
    drain_timeout: u64,
) -> Result<()> {
    admin
        .listeners_up
        .store(true, std::sync::atomic::Ordering::Release);
    tracing::info!("ready");
    terminated().await?;
    tracing::info!("SIGTERM: draining");
    controller.drain(Duration::from_secs(drain_timeout)).await;
    Ok(())
}
