//! The HTTP client towards endpoints. Requests arrive with their endpoint
//! already chosen (`http://addr:port/...` for plaintext, `https://` for mesh
//! mTLS) and, for mTLS, the identities the routing plan allows there
//! ([`Dial`]); the connector dials it and checks that the server
//! proves one of them. Connections are pooled per scheme, endpoint and
//! identity set by hyper-util.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_core::identity::SpiffeId;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::body::{BoxBody, BoxError};
use crate::tls::{MeshClientStream, MeshConnector};

/// A connection to an endpoint: plain TCP, mesh mTLS, or TLS the mesh
/// originates to a server outside it.
#[derive(Debug)]
pub enum EndpointIo {
    /// Plaintext.
    Plain(TcpStream),
    /// Mesh mTLS.
    Mtls(Box<MeshClientStream<TcpStream>>),
    /// Originated TLS (DestinationRule `tls: SIMPLE`).
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// Plaintext on a Unix domain socket (an endpoint `unix://...`).
    Unix(tokio::net::UnixStream),
}

impl EndpointIo {
    fn h2(&self) -> bool {
        matches!(self, Self::Mtls(s) if s.alpn_protocol() == Some(b"h2"))
    }
}

/// A connection of the HTTP clients: the stream, and whether the pool
/// counts its requests (`maxRequestsPerConnection`). Only a counted
/// connection carries a counter: hyper-util copies a connection's extras
/// into every answer, which the others need not pay for.
pub(crate) struct HttpIo {
    io: EndpointIo,
    counted: bool,
}

impl Connection for HttpIo {
    fn connected(&self) -> Connected {
        // hyper-util asks once per connection: the counter is that
        // connection's.
        let c = Connected::new();
        let c = if self.counted {
            c.extra(RequestCount::default())
        } else {
            c
        };
        if self.io.h2() { c.negotiated_h2() } else { c }
    }
}

impl AsyncRead for HttpIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl AsyncWrite for HttpIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

impl AsyncRead for EndpointIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Mtls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Self::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for EndpointIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Mtls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Self::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Mtls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Self::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Mtls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Self::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Self::Mtls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            Self::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(s) => s.is_write_vectored(),
            Self::Mtls(s) => s.is_write_vectored(),
            Self::Tls(s) => s.is_write_vectored(),
            Self::Unix(s) => s.is_write_vectored(),
        }
    }
}

/// Dials endpoints; a tower `Service<Uri>` for hyper-util's client. A
/// connector for mTLS is bound to the identity set the routing plan gave
/// (secure naming), so a pooled connection verified for one set is reused
/// only by requests whose plan allows that same set.
#[derive(Clone, Debug)]
pub(crate) struct EndpointConnector {
    mtls: Option<MeshConnector>,
    identities: Arc<[SpiffeId]>,
    connect_timeout: Duration,
    origin: Option<OriginateTls>,
    /// Its connections' requests are counted (`maxRequestsPerConnection`).
    counted: bool,
}

impl EndpointConnector {
    /// A connector; without `mtls`, only plaintext endpoints can be reached
    /// and every mTLS request fails closed. It verifies mTLS servers
    /// against `identities`; with none, every mTLS dial fails closed.
    pub(crate) fn new(
        mtls: Option<MeshConnector>,
        identities: Arc<[SpiffeId]>,
        connect_timeout: Duration,
    ) -> Self {
        Self {
            mtls,
            identities,
            connect_timeout,
            origin: None,
            counted: false,
        }
    }

    /// Offers only `protocol` in ALPN on mesh mTLS dials.
    fn offering(mut self, protocol: &[u8]) -> Self {
        self.mtls = self.mtls.map(|m| m.with_alpn(vec![protocol.to_vec()]));
        self
    }

    /// Originates TLS with `origin` on `https` dials instead of mesh mTLS.
    fn originating(mut self, origin: Option<OriginateTls>) -> Self {
        self.origin = origin;
        self
    }
}

impl tower::Service<Uri> for EndpointConnector {
    type Response = TokioIo<HttpIo>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        let counted = self.counted;
        let dial = async move {
            let host = uri
                .host()
                .ok_or("endpoint URI without host")?
                .trim_matches(['[', ']'])
                .to_owned();
            let mtls = uri.scheme_str() == Some("https");
            if let Some(path) = crate::uds::socket_of(&host) {
                let io = crate::uds::dial(&path, mtls, this.connect_timeout).await?;
                return Ok(EndpointIo::Unix(io));
            }
            let port = uri.port_u16().unwrap_or(if mtls { 443 } else { 80 });
            let tcp = tokio::time::timeout(
                this.connect_timeout,
                TcpStream::connect((host.as_str(), port)),
            )
            .await
            .map_err(|_| format!("connect timeout after {:?}", this.connect_timeout))??;
            let _ = tcp.set_nodelay(true);
            if !mtls {
                return Ok(EndpointIo::Plain(tcp));
            }
            if let Some(o) = &this.origin {
                // The handshake is bounded too: a server outside the mesh
                // that stalls it must not hold the attempt.
                let handshake = tokio_rustls::TlsConnector::from(o.config.clone())
                    .connect(o.server_name.as_ref().clone(), tcp);
                let tls = tokio::time::timeout(this.connect_timeout, handshake)
                    .await
                    .map_err(|_| {
                        format!("TLS handshake timeout after {:?}", this.connect_timeout)
                    })??;
                return Ok(EndpointIo::Tls(Box::new(tls)));
            }
            let connector = this
                .mtls
                .as_ref()
                .ok_or("this workload has no mesh identity for mTLS")?;
            if this.identities.is_empty() {
                return Err(format!(
                    "no workload identity is known for {host}:{port} (secure naming)"
                )
                .into());
            }
            let tls = connector.connect(tcp, &this.identities).await?;
            Ok::<_, BoxError>(EndpointIo::Mtls(Box::new(tls)))
        };
        Box::pin(async move {
            Ok(TokioIo::new(HttpIo {
                io: dial.await?,
                counted,
            }))
        })
    }
}

/// hyper-util's pooled client over [`EndpointConnector`].
pub(crate) type UpstreamClient = Client<EndpointConnector, BoxBody>;

/// Why sending to an endpoint failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UpstreamError {
    /// No connection could be made (refused, timed out, TLS refused).
    #[error("{0}")]
    Connect(String),
    /// The connection broke or the answer was not HTTP.
    #[error("{0}")]
    Protocol(String),
    /// The caller's request body broke a limit while it was being sent:
    /// the caller's fault, not the upstream's.
    #[error("{0}")]
    RequestBody(crate::limits::BodyLimitError),
}

impl UpstreamError {
    /// The answer the caller gets for this failure of a call to `endpoint`.
    pub fn into_mesh_error(self, endpoint: String) -> crate::error::MeshError {
        use crate::error::MeshError;
        match self {
            Self::Connect(why) => MeshError::UpstreamConnect { endpoint, why },
            Self::Protocol(why) => MeshError::UpstreamProtocol { endpoint, why },
            Self::RequestBody(limit) => limit.into(),
        }
    }

    /// Classifies a failed upstream call: the request body's limits first
    /// (hyper reports them as its own errors), then connect or protocol.
    pub fn classify(e: &(dyn std::error::Error + 'static), connect: bool) -> Self {
        if let Some(limit) = crate::limits::body_limit_error(e) {
            Self::RequestBody(limit)
        } else if connect {
            Self::Connect(error_chain(e))
        } else {
            Self::Protocol(error_chain(e))
        }
    }
}

/// How to reach the request's endpoint: a request extension the router's
/// balance layer sets on every attempt, one for all of it (one allocation
/// per attempt rather than one per setting). Without it: plaintext
/// HTTP/1.1 (or h2 by ALPN), the default connect timeout, and an `https`
/// request fails closed (no identity may answer).
#[derive(Debug, Clone)]
pub struct Dial {
    /// The identities the routing plan allows to answer at the endpoint
    /// (secure naming), for mesh mTLS; empty otherwise.
    pub identities: Arc<[SpiffeId]>,
    /// How long the dial may take (the DestinationRule's
    /// `connectTimeout`).
    pub connect_timeout: Duration,
    /// The DestinationRule's `http2KeepAlive` (the connection's PINGs) and
    /// `maxRequestsPerConnection`.
    pub http_conn: mesh_core::plan::HttpConnection,
    /// TLS the mesh originates instead of mesh mTLS, if any.
    pub originate: Option<OriginateTls>,
    /// Speak HTTP/2: with prior knowledge over plaintext (HTTP2 and GRPC
    /// ports), by ALPN `h2` over mesh mTLS. Otherwise HTTP/1.1 (over mesh
    /// mTLS, ALPN `http/1.1`).
    pub http2: bool,
}

impl Default for Dial {
    fn default() -> Self {
        Self {
            identities: Arc::from([]),
            connect_timeout: mesh_core::plan::DEFAULT_CONNECT_TIMEOUT,
            http_conn: mesh_core::plan::HttpConnection::default(),
            originate: None,
            http2: false,
        }
    }
}

/// TLS the mesh originates to the request's endpoint, a server outside the
/// mesh (DestinationRule `tls: SIMPLE`): part of the [`Dial`] of an `https`
/// request that is no mesh mTLS. `key` names the settings (roots and
/// server name) for the client pools.
#[derive(Clone)]
pub struct OriginateTls {
    /// What the settings are, for the pool key.
    pub key: Arc<str>,
    /// The client configuration (roots, ALPN `http/1.1`).
    pub config: Arc<rustls::ClientConfig>,
    /// The name the server's certificate must carry, sent as SNI (shared:
    /// the settings travel with every request, the name is copied only
    /// per new connection).
    pub server_name: Arc<rustls_pki_types::ServerName<'static>>,
}

impl std::fmt::Debug for OriginateTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OriginateTls")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// What sends a request to its chosen endpoint (the URI names it). The
/// router only needs this; tests put a `service_fn` here to drive time and
/// failures without a network.
pub type Upstream =
    tower::util::BoxCloneSyncService<Request<BoxBody>, Response<BoxBody>, UpstreamError>;

/// The pooled clients of one identity set: one that speaks HTTP/1.1 (or h2
/// when ALPN says so) and one that speaks only HTTP/2.
#[derive(Debug, Clone)]
struct Clients {
    http1: UpstreamClient,
    h2: UpstreamClient,
}

impl Clients {
    fn new(connector: EndpointConnector, keep_alive: Option<(Duration, Duration)>) -> Self {
        // Over mesh mTLS each client offers only the protocol it speaks, so
        // that the server's ALPN choice is the client's: HTTP/1.1 requests
        // go as HTTP/1.1 (Istio's default between proxies) unless the plan
        // asks for HTTP/2 ([`Dial::http2`]).
        let mut b = Client::builder(TokioExecutor::new());
        b.pool_idle_timeout(Duration::from_secs(90))
            .timer(hyper_util::rt::TokioTimer::new());
        let http1 = b.build(connector.clone().offering(b"http/1.1"));
        let mut b2 = Client::builder(TokioExecutor::new());
        b2.http2_only(true).timer(hyper_util::rt::TokioTimer::new());
        if let Some((interval, timeout)) = keep_alive {
            // Envoy's `connection_keepalive`: PINGs whether or not a
            // request is in flight, the connection closed when one goes
            // unanswered (an h2 connection only: HTTP/1.1 has no PING).
            b2.http2_keep_alive_interval(interval)
                .http2_keep_alive_timeout(timeout)
                .http2_keep_alive_while_idle(true);
        }
        let h2 = b2.build(connector.offering(b"h2"));
        Self { http1, h2 }
    }
}

/// The real upstream: hyper-util's pooled clients, one pair for plaintext
/// and one pair per identity set of mesh mTLS (read from the request's
/// [`Dial`]) and connect timeout. The sets
/// are few (one per service account a caller reaches, and the timeouts
/// DestinationRules name) and kept for the router's life; idle connections
/// close after 90 seconds.
pub(crate) fn hyper_upstream(mtls: Option<MeshConnector>) -> Upstream {
    // One `Arc` for all of it: the outbound stack clones its upstream a few
    // times per request (the router, `tower::retry`, each send), and a
    // clone of a hyper-util `Client` is a dozen reference counts.
    let shared = Arc::new(HyperUpstream {
        plain: Clients::new(
            EndpointConnector::new(
                None,
                Arc::from([]),
                mesh_core::plan::DEFAULT_CONNECT_TIMEOUT,
            ),
            None,
        ),
        by_identities: arc_swap::ArcSwap::default(),
        mtls,
    });
    tower::util::BoxCloneSyncService::new(tower::service_fn(move |mut req: Request<BoxBody>| {
        // Hop-by-hop headers went where the request entered the router
        // (`Route`), before the mesh added its own.
        let upgrade = crate::upgrade::take(&mut req);
        // `Client::request` clones the client into its future itself, so
        // the one chosen is only borrowed here.
        let dial = req.extensions().get::<Dial>();
        // An upgrade goes on over HTTP/1.1 whatever the hop's protocol: it
        // is the one that carries `Upgrade` (RFC 8441's extended CONNECT
        // over h2 is not spoken here).
        let h2 = upgrade.is_none() && dial.is_some_and(|d| d.http2);
        let timeout = dial.map_or(mesh_core::plan::DEFAULT_CONNECT_TIMEOUT, |d| {
            d.connect_timeout
        });
        let conn = dial.map(|d| d.http_conn).unwrap_or_default();
        let settings = PoolSettings {
            connect_timeout: timeout,
            keep_alive: conn.h2_keep_alive,
            counted: conn.max_requests.is_some(),
        };
        let https = req.uri().scheme_str() == Some("https");
        let (ids, origin) = match dial {
            Some(d) if https => (Some(d.identities.clone()), d.originate.clone()),
            _ => (None, None),
        };
        let capture = conn.max_requests.map(|n| {
            (
                n,
                hyper_util::client::legacy::connect::capture_connection(&mut req),
            )
        });
        let send = if https {
            let ids = ids.unwrap_or_else(|| Arc::from([]));
            shared.clients((ids, origin, settings), |c| c.pick(h2).request(req))
        } else if settings == PoolSettings::default() {
            shared.plain.pick(h2).request(req)
        } else {
            // Other connection settings: clients of their own (with no
            // identities, an mTLS dial through them fails closed).
            shared.clients((Arc::from([]), None, settings), |c| c.pick(h2).request(req))
        };
        async move {
            let sent = match capture {
                None => send.await,
                Some((max, mut capture)) => {
                    // Counted as soon as the pool gives the request its
                    // connection, not when the answer comes: requests
                    // multiplexed on one h2 connection, and one that times
                    // out, count too.
                    let mut send = std::pin::pin!(send);
                    let mut counted = false;
                    let sent = loop {
                        tokio::select! {
                            biased;
                            sent = &mut send => break sent,
                            meta = capture.wait_for_connection_metadata(), if !counted => {
                                counted = true;
                                count_request(max, meta.as_ref());
                            }
                        }
                    };
                    if !counted {
                        count_request(max, capture.connection_metadata().as_ref());
                    }
                    sent
                }
            };
            match sent {
                Ok(mut resp) => match crate::upgrade::splice(upgrade, &mut resp) {
                    crate::upgrade::Spliced::Refused => Err(UpstreamError::Protocol(
                        "the upstream switched protocols the request did not ask for".into(),
                    )),
                    _ => Ok(resp.map(crate::body::boxed)),
                },
                Err(e) => Err(UpstreamError::classify(&e, e.is_connect())),
            }
        }
    }))
}

/// How many pairs of pooled clients [`hyper_upstream`] keeps at most.
const MAX_CLIENT_SETS: usize = 256;

/// What a pair of pooled clients is made for: the identity set a dial
/// verifies (secure naming), the TLS originated instead of mesh mTLS, if
/// any, and the settings of its connections.
type ClientKey = (Arc<[SpiffeId]>, Option<OriginateTls>, PoolSettings);

/// [`ClientKey`] as the pool map holds it (the originated TLS by its
/// settings' name).
type PoolKey = (Arc<[SpiffeId]>, Option<Arc<str>>, PoolSettings);

/// How a pool's connections are made and kept: the DestinationRule's
/// connect timeout, HTTP/2 keepalive, and whether their requests are
/// counted (`maxRequestsPerConnection`). The default is the plaintext
/// pool's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct PoolSettings {
    connect_timeout: Duration,
    keep_alive: Option<(Duration, Duration)>,
    counted: bool,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            connect_timeout: mesh_core::plan::DEFAULT_CONNECT_TIMEOUT,
            keep_alive: None,
            counted: false,
        }
    }
}

/// The requests a connection has carried (a [`Connected`] extra of every
/// connection the connector makes).
#[derive(Debug, Clone, Default)]
struct RequestCount(Arc<std::sync::atomic::AtomicU32>);

/// `maxRequestsPerConnection`: counts the request on the connection it
/// went out on and, at `max`, poisons that connection, so the pool opens
/// another for the next request (the one in flight finishes).
fn count_request(max: u32, connected: Option<&Connected>) {
    let Some(connected) = connected else {
        return;
    };
    let mut extras = http::Extensions::new();
    connected.get_extras(&mut extras);
    if let Some(RequestCount(n)) = extras.get::<RequestCount>() {
        if n.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1 >= max {
            connected.poison();
        }
    }
}

/// What [`hyper_upstream`]'s service holds.
struct HyperUpstream {
    plain: Clients,
    by_identities: arc_swap::ArcSwap<foldhash::HashMap<PoolKey, Clients>>,
    mtls: Option<MeshConnector>,
}

impl Clients {
    /// The HTTP/2-only client for prior knowledge, else the other.
    fn pick(&self, h2: bool) -> &UpstreamClient {
        if h2 { &self.h2 } else { &self.http1 }
    }
}

impl HyperUpstream {
    /// Runs `f` with the clients of `key`, made on first use.
    fn clients<T>(&self, full: ClientKey, f: impl FnOnce(&Clients) -> T) -> T {
        let (ids, origin, settings) = full;
        let key: PoolKey = (ids, origin.as_ref().map(|o| o.key.clone()), settings);
        if let Some(c) = self.by_identities.load().get(&key) {
            return f(c);
        }
        let make = |(ids, _, settings): &PoolKey| {
            let mut connector =
                EndpointConnector::new(self.mtls.clone(), ids.clone(), settings.connect_timeout)
                    .originating(origin.clone());
            connector.counted = settings.counted;
            Clients::new(connector, settings.keep_alive)
        };
        let mut out = None;
        self.by_identities.rcu(|m| {
            // Identity sets and timeouts come from the configuration; past
            // this many (reloads that changed them), start afresh rather
            // than keep every pool ever made.
            let mut m = if m.len() >= MAX_CLIENT_SETS {
                foldhash::HashMap::default()
            } else {
                foldhash::HashMap::clone(m)
            };
            let c = m.entry(key.clone()).or_insert_with(|| make(&key)).clone();
            out = Some(c);
            Arc::new(m)
        });
        let c = out.unwrap_or_else(|| make(&key));
        f(&c)
    }
}

/// An error and its sources, joined: hyper's top-level messages say little.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
