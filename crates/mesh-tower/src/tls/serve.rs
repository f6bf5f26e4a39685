use std::net::SocketAddr;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use mesh_core::identity::SpiffeId;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::{MeshAcceptor, MeshStream};

/// A boxed error, as hyper's connections return.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Who sent a request: put in every request's `http::Extensions` by
/// [`serve_connection`], for handlers and authorization to read.
///
/// ```
/// # use mesh_tower::tls::PeerIdentity;
/// fn caller(req: &http::Request<()>) -> Option<String> {
///     let peer = req.extensions().get::<PeerIdentity>()?;
///     peer.spiffe_id().map(|id| id.principal())
/// }
/// # assert_eq!(caller(&http::Request::new(())), None);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    id: Option<SpiffeId>,
}

impl PeerIdentity {
    pub(crate) fn mtls(id: SpiffeId) -> Self {
        Self { id: Some(id) }
    }

    pub(crate) fn plaintext() -> Self {
        Self { id: None }
    }

    /// The caller's verified SPIFFE ID; `None` for a plaintext connection.
    pub fn spiffe_id(&self) -> Option<&SpiffeId> {
        self.id.as_ref()
    }

    /// Whether the request came over mTLS.
    pub fn is_mtls(&self) -> bool {
        self.id.is_some()
    }
}

/// A hyper service that inserts the connection's [`PeerIdentity`] into each
/// request before calling the inner service.
#[derive(Debug, Clone)]
pub struct AddPeerIdentity<S> {
    inner: S,
    peer: PeerIdentity,
}

impl<S> AddPeerIdentity<S> {
    /// Wraps `inner` for one connection from `peer`.
    pub fn new(inner: S, peer: PeerIdentity) -> Self {
        Self { inner, peer }
    }
}

impl<S, B> hyper::service::Service<Request<B>> for AddPeerIdentity<S>
where
    S: hyper::service::Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn call(&self, mut req: Request<B>) -> Self::Future {
        req.extensions_mut().insert(self.peer.clone());
        self.inner.call(req)
    }
}

fn builder() -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Without a timer hyper silently disables its header-read timeout.
    builder.http1().timer(TokioTimer::new());
    builder.http2().timer(TokioTimer::new());
    builder
}

/// Serves only the protocol ALPN agreed on, when it agreed on one. `auto`
/// otherwise reads the first bytes to tell HTTP/1.1 from h2 and hands them
/// back through a rewind buffer, and hyper's 8 KiB read buffer, finding 24
/// bytes in it at the first read, grows to 16 KiB for the connection's life.
pub(crate) fn by_alpn<E>(builder: auto::Builder<E>, alpn: Option<&[u8]>) -> auto::Builder<E> {
    match alpn {
        Some(b"http/1.1") => builder.http1_only(),
        Some(b"h2") => builder.http2_only(),
        _ => builder,
    }
}

/// Serves HTTP/1.1 or HTTP/2 on an accepted connection, giving each request
/// the peer's identity.
pub async fn serve_connection<IO, S, B>(stream: MeshStream<IO>, service: S) -> Result<(), BoxError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let service = AddPeerIdentity::new(service, stream.peer_identity().clone());
    by_alpn(builder(), stream.alpn_protocol())
        .serve_connection(TokioIo::new(stream), service)
        .await
}

/// A running mesh server. Dropping the handle stops accepting and aborts the
/// server; [`shutdown`](Self::shutdown) drains in-flight requests first.
#[derive(Debug)]
pub struct ServerHandle {
    local_addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl ServerHandle {
    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, lets in-flight requests finish (up to 10 s), and
    /// surfaces a panic of the server task.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            if let Err(e) = task.await {
                if e.is_panic() {
                    std::panic::resume_unwind(e.into_panic());
                }
            }
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Accepts connections on `listener` with `acceptor` (its mode decides TLS or
/// plaintext) and serves `service` on each. Refused connections are logged
/// at debug level: a client's mistake is not the server's error.
pub fn spawn_server<S, B>(
    listener: TcpListener,
    acceptor: MeshAcceptor,
    service: S,
) -> std::io::Result<ServerHandle>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let local_addr = listener.local_addr()?;
    let (tx, mut rx) = oneshot::channel();
    let task = tokio::spawn(async move {
        let graceful = GracefulShutdown::new();
        loop {
            let (tcp, remote) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::debug!(error = %e, "accept failed");
                        continue;
                    }
                },
                _ = &mut rx => break,
            };
            // Nagle would hold the first answer after a handshake until the
            // client's delayed ACK: 40 ms per new connection (measured in
            // BENCHMARKS.md).
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let service = service.clone();
            let watcher = graceful.watcher();
            tokio::spawn(async move {
                let stream = match acceptor.accept(tcp).await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::debug!(%remote, error = %e, "connection refused");
                        return;
                    }
                };
                let service = AddPeerIdentity::new(service, stream.peer_identity().clone());
                let conn = by_alpn(builder(), stream.alpn_protocol())
                    .serve_connection(TokioIo::new(stream), service)
                    .into_owned();
                if let Err(e) = watcher.watch(conn).await {
                    tracing::debug!(%remote, error = %e, "connection ended with an error");
                }
            });
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), graceful.shutdown()).await;
    });
    Ok(ServerHandle {
        local_addr,
        shutdown: Some(tx),
        task: Some(task),
    })
}
