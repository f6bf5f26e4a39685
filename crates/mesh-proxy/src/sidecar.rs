//! `mesh-proxy sidecar`: the mesh for a workload that is not Rust.
//!
//! - Inbound: one listener per port of the workload's WorkloadEntry (or
//!   `--inbound-port`), terminating mTLS per PeerAuthentication (read per
//!   connection, so a reload applies), authorizing, and forwarding to the
//!   local app. HTTP ports go through the L7 layers; TCP ports (MySQL...)
//!   are an opaque tunnel authorized by peer identity, with nothing read from
//!   the stream, so server-first protocols start at once.
//! - Outbound: a local port per service (`--outbound HOST:PORT=LISTEN`) for
//!   apps that cannot be told about the mesh, and an HTTP forward proxy
//!   (`--http-proxy`, default 127.0.0.1:15001) that routes by Host or
//!   absolute URI for clients that honour `HTTP_PROXY`.

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use anyhow::{Context as _, Result, anyhow};
use clap::Args;
use http::uri::{Authority, PathAndQuery};
use http::{HeaderName, HeaderValue, Request, Response, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use mesh_core::resources::networking::Protocol;
use mesh_core::store::Store;
use mesh_tower::authz::{AuthorizeLayer, LocalAddr, LocalWorkload, drop_transport_authority};
use mesh_tower::body::{BoxBody, boxed};
use mesh_tower::error::MeshError;
use mesh_tower::telemetry::{
    DestinationInfo, Registry, TcpConnection, TcpTelemetry, TelemetryLayer, WorkloadInfo,
    inbound_labels,
};
use mesh_tower::tls::{MeshConnector, PeerIdentity};
use mesh_tower::traffic::{ClientAddr, Router, RouterConfig, TcpRouter};
use mesh_tower::upstream::UpstreamError;
use tokio::net::{TcpListener, TcpStream};

use crate::admin::AdminState;
use crate::identity::IdentityArgs;
use crate::runtime::ProxyBody;
use mesh_tower::server::{
    Drain, Known, ModeAcceptor, ServerSettings, accept_loop, serve_connection,
};

/// Options shared by the sidecar and the gateway.
#[derive(Debug, Clone, Args)]
pub(crate) struct CommonArgs {
    /// A YAML file or a folder of them; reloaded on change.
    #[arg(long)]
    pub(crate) config: PathBuf,
    /// The admin listener (`/ready`, `/stats/prometheus`, `/config_dump`, `/certs`).
    #[arg(long, default_value = "127.0.0.1:15000")]
    pub(crate) admin: SocketAddr,
    /// Allow the admin listener on an address other than loopback.
    #[arg(long)]
    pub(crate) admin_allow_remote: bool,
    /// How long SIGTERM waits for in-flight requests and connections.
    #[arg(long, default_value = "10", value_name = "SECONDS")]
    pub(crate) drain_timeout: u64,
    /// How long an HTTP/1.1 client may take to send a request's headers
    /// before its connection is closed (decimals allowed).
    #[arg(long, default_value = "30", value_name = "SECONDS", value_parser = seconds)]
    pub(crate) header_read_timeout: std::time::Duration,
    /// How long an HTTP connection may go without starting a request
    /// (with none in flight) before it is closed gracefully (decimals
    /// allowed). Before its first request a connection gets the
    /// header-read timeout instead, for HTTP/2 as for HTTP/1.1.
    #[arg(long, default_value = "300", value_name = "SECONDS", value_parser = seconds)]
    pub(crate) idle_timeout: std::time::Duration,
    /// The largest request body accepted: bytes, or with a KiB, MiB or GiB
    /// suffix. Over it: 413 (before forwarding when Content-Length says so,
    /// else as soon as the body grows past it). Default: no cap, bodies are
    /// streamed in bounded memory.
    #[arg(long, value_name = "BYTES", value_parser = bytes_size)]
    pub(crate) max_request_body: Option<u64>,
    /// How long a client may leave a request body without sending more
    /// while it is being forwarded (decimals allowed): 408 after it.
    #[arg(long, default_value = "60", value_name = "SECONDS", value_parser = seconds)]
    pub(crate) body_read_timeout: std::time::Duration,
    #[command(flatten)]
    pub(crate) identity: IdentityArgs,
}

impl CommonArgs {
    /// The limits every served HTTP connection is held to.
    pub(crate) fn server_settings(&self) -> ServerSettings {
        ServerSettings {
            header_read_timeout: self.header_read_timeout,
            idle_timeout: self.idle_timeout,
            body: mesh_tower::limits::BodyLimits::default()
                .max_request_body(self.max_request_body)
                .body_read_timeout(Some(self.body_read_timeout)),
            ..ServerSettings::default()
        }
    }
}

/// Parses a size in bytes: `1048576`, `64KiB`, `10MiB`, `1GiB`.
fn bytes_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (digits, unit) = t
        .find(|c: char| !c.is_ascii_digit())
        .map_or((t, ""), |i| t.split_at(i));
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s}: expected a number of bytes, like 1048576 or 10MiB"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" | "k" => 1 << 10,
        "MiB" | "M" => 1 << 20,
        "GiB" | "G" => 1 << 30,
        other => return Err(format!("{s}: unknown unit {other:?}; use KiB, MiB or GiB")),
    };
    n.checked_mul(mult).ok_or_else(|| format!("{s}: too large"))
}

/// Parses a positive number of seconds, decimals allowed (`0.5`).
fn seconds(s: &str) -> Result<std::time::Duration, String> {
    let secs: f64 = s.parse().map_err(|e| format!("{s}: {e}"))?;
    if secs <= 0.0 {
        return Err(format!("{s}: must be more than zero"));
    }
    std::time::Duration::try_from_secs_f64(secs).map_err(|e| format!("{s}: {e}"))
}

/// `mesh-proxy sidecar`.
#[derive(Debug, Clone, Args)]
pub(crate) struct SidecarArgs {
    #[command(flatten)]
    pub(crate) common: CommonArgs,
    /// The workload this sidecar serves: its WorkloadEntry's name.
    #[arg(long)]
    pub(crate) workload: String,
    /// The workload's namespace.
    #[arg(long, default_value = "default")]
    pub(crate) namespace: String,
    /// The local app: `ADDR` for every inbound port, or `PORT_NAME=ADDR`;
    /// repeatable.
    #[arg(long)]
    pub(crate) app: Vec<String>,
    /// The inbound port when the WorkloadEntry names none.
    #[arg(long, default_value_t = 15006)]
    pub(crate) inbound_port: u16,
    /// A local port for one service, `HOST:PORT=LISTEN_ADDR`; repeatable.
    #[arg(long = "outbound")]
    pub(crate) outbound: Vec<String>,
    /// The HTTP forward-proxy listener, or `off`.
    #[arg(long, default_value = "127.0.0.1:15001")]
    pub(crate) http_proxy: String,
}

/// One inbound port of the workload.
#[derive(Debug, Clone)]
struct InboundPort {
    port: u16,
    protocol: Protocol,
    app: SocketAddr,
}

fn parse_app(apps: &[String], port_name: &str) -> Result<Option<SocketAddr>> {
    let mut default = None;
    for a in apps {
        match a.split_once('=') {
            Some((name, addr)) if name == port_name => {
                return Ok(Some(addr.parse().with_context(|| format!("--app {a}"))?));
            }
            Some(_) => {}
            None => default = Some(a.parse().with_context(|| format!("--app {a}"))?),
        }
    }
    Ok(default)
}

/// Works out the inbound ports from the WorkloadEntry and the services it
/// backs.
fn inbound_ports(
    store: &Store,
    key: &str,
    args: &SidecarArgs,
) -> Result<(IpAddr, Vec<InboundPort>)> {
    let snap = store.load();
    let (_, w) = snap
        .workload(key)
        .ok_or_else(|| anyhow!("no WorkloadEntry {key} in {}", args.common.config.display()))?;
    let ip: IpAddr = w.address.parse().unwrap_or(IpAddr::from([127, 0, 0, 1]));
    let mut ports = Vec::new();
    for (name, port) in &w.ports {
        let protocol = snap
            .services
            .values()
            .filter(|s| s.workloads.iter().any(|i| snap.workloads[*i].key == w.key))
            .flat_map(|s| s.ports.iter())
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .map_or_else(|| Protocol::from_port_name(name), |p| p.protocol);
        let app = parse_app(&args.app, name)?.ok_or_else(|| {
            anyhow!("no --app for port {name}: give --app ADDR or --app {name}=ADDR")
        })?;
        ports.push(InboundPort {
            port: *port,
            protocol,
            app,
        });
    }
    if ports.is_empty() {
        let app = parse_app(&args.app, "")?.ok_or_else(|| anyhow!("give --app ADDR"))?;
        ports.push(InboundPort {
            port: args.inbound_port,
            protocol: Protocol::Http,
            app,
        });
    }
    Ok((ip, ports))
}

/// Runs the sidecar until SIGTERM, then drains.
pub(crate) async fn run(args: SidecarArgs) -> Result<()> {
    let key = format!("{}/{}", args.namespace, args.workload);
    let (store, _watcher) = crate::runtime::start_store(&args.common.config)?;
    let identity_id = {
        let snap = store.load();
        let (_, w) = snap
            .workload(&key)
            .ok_or_else(|| anyhow!("no WorkloadEntry {key} in {}", args.common.config.display()))?;
        w.identity.clone()
    };
    let (controller, drain) = mesh_tower::server::drain_pair(args.common.server_settings());
    let registry = Registry::new();
    let admin = AdminState::new(store.clone(), vec![metrics_source(&registry)]);
    let admin_addr = crate::admin::spawn(
        args.common.admin,
        args.common.admin_allow_remote,
        admin.clone(),
        drain.clone(),
    )
    .await?;
    tracing::info!(%admin_addr, workload = %key, "admin listening; obtaining the workload identity");
    let identity = Arc::new(args.common.identity.obtain(&identity_id).await?);
    tracing::info!(identity = %identity_id, "identity issued");
    let creds = identity.store().clone();
    admin.identity.store(Some(identity.clone()));

    let ctx = Ctx {
        store: store.clone(),
        key: key.clone(),
        drain: drain.clone(),
        registry: registry.clone(),
    };
    let acceptors = ModeAcceptor::new(&creds)?;
    let (ip, ports) = inbound_ports(&store, &key, &args)?;
    for p in ports {
        let listener = TcpListener::bind((ip, p.port))
            .await
            .with_context(|| format!("binding inbound {ip}:{}", p.port))?;
        tracing::info!(port = p.port, protocol = %p.protocol, app = %p.app, "inbound listening");
        tokio::spawn(inbound_loop(listener, p, ctx.clone(), acceptors.clone()));
    }

    let connector = MeshConnector::new(creds.clone());
    let local = local_info(&store, &key);
    let router = Router::new(
        store.clone(),
        RouterConfig::for_workload(&args.namespace, &args.workload),
        Some(connector.clone()),
    );
    let router = outbound_stack(router, registry.clone(), local.clone());
    let tcp = TcpRouter::new(store.clone(), &args.namespace, Some(connector));
    let tcp_telemetry = TcpTelemetry::outbound(registry.clone(), local);
    for o in &args.outbound {
        let (target, listen) = o
            .split_once('=')
            .ok_or_else(|| anyhow!("--outbound {o}: expected HOST:PORT=LISTEN_ADDR"))?;
        let (host, port) = target
            .rsplit_once(':')
            .ok_or_else(|| anyhow!("--outbound {o}: expected HOST:PORT"))?;
        let port: u16 = port.parse().with_context(|| format!("--outbound {o}"))?;
        let listen: SocketAddr = listen.parse().with_context(|| format!("--outbound {o}"))?;
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding outbound {listen}"))?;
        tracing::info!(%listen, host, port, "outbound listening");
        let target = OutboundTarget {
            host: host.to_owned(),
            port,
            namespace: args.namespace.clone(),
        };
        tokio::spawn(outbound_loop(
            listener,
            target,
            ctx.clone(),
            router.clone(),
            tcp.clone(),
            tcp_telemetry.clone(),
        ));
    }
    if args.http_proxy != "off" {
        let addr: SocketAddr = args
            .http_proxy
            .parse()
            .with_context(|| format!("--http-proxy {}", args.http_proxy))?;
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the HTTP proxy {addr}"))?;
        tracing::info!(%addr, "HTTP proxy listening");
        let router = router.clone();
        let drain2 = drain.clone();
        tokio::spawn(accept_loop(listener, drain.clone(), move |tcp, _| {
            tokio::spawn(serve_connection(tcp, router.clone(), drain2.clone(), None));
        }));
    }
    crate::runtime::ready_then_drain(&admin, controller, args.common.drain_timeout).await
}

/// What every connection handler of the sidecar shares.
#[derive(Debug, Clone)]
struct Ctx {
    store: Arc<Store>,
    /// `namespace/name` of the workload.
    key: String,
    drain: Drain,
    registry: Registry,
}

/// `/stats/prometheus` lines from the telemetry registry.
pub(crate) fn metrics_source(registry: &Registry) -> crate::admin::MetricsSource {
    let registry = registry.clone();
    Arc::new(move || registry.render())
}

/// The telemetry labels of this workload.
fn local_info(store: &Store, key: &str) -> WorkloadInfo {
    let snap = store.load();
    snap.workload(key)
        .map_or_else(WorkloadInfo::unknown, |(_, w)| {
            WorkloadInfo::from_workload(w)
        })
}

/// The outbound HTTP stack: telemetry (reporter `source`) in front of the
/// router, answers boxed.
pub(crate) type Outbound =
    tower::util::BoxCloneSyncService<Request<ProxyBody>, Response<BoxBody>, Infallible>;

/// The inbound HTTP stack: telemetry (reporter `destination`) around
/// authorization and forwarding. Boxed here, outside any async block, so the
/// connection futures stay provably `Send`.
fn inbound_stack(svc: InboundHttp, ctx: &Ctx, local: WorkloadInfo, facts: ConnFacts) -> Outbound {
    let authz = AuthorizeLayer::new(ctx.store.clone(), LocalWorkload::named(ctx.key.clone()))
        .with_port(facts.local.port());
    let (destination, source) = {
        let snap = ctx.store.load();
        inbound_labels(&snap, &ctx.key, facts.local.port(), facts.peer.spiffe_id())
    };
    tower::util::BoxCloneSyncService::new(
        tower::ServiceBuilder::new()
            .map_response(mesh_tower::body::box_response)
            .map_request(move |mut req: Request<ProxyBody>| {
                drop_transport_authority(&mut req, facts.local);
                let ext = req.extensions_mut();
                if let Some(d) = &destination {
                    ext.insert(d.clone());
                }
                if let Some(src) = &source {
                    ext.insert(src.clone());
                }
                ext.insert(facts.peer.clone());
                ext.insert(ClientAddr(facts.remote));
                ext.insert(LocalAddr(facts.local));
                req
            })
            .layer(TelemetryLayer::inbound(ctx.registry.clone(), local))
            .layer(authz)
            .service(svc),
    )
}

/// What is known of an inbound connection, given to every request on it.
#[derive(Debug, Clone)]
struct ConnFacts {
    peer: PeerIdentity,
    remote: SocketAddr,
    local: SocketAddr,
}

pub(crate) fn outbound_stack(router: Router, registry: Registry, local: WorkloadInfo) -> Outbound {
    tower::util::BoxCloneSyncService::new(
        tower::ServiceBuilder::new()
            .map_response(mesh_tower::body::box_response)
            .layer(TelemetryLayer::outbound(registry, local))
            .service(router),
    )
}

async fn inbound_loop(listener: TcpListener, port: InboundPort, ctx: Ctx, acceptors: ModeAcceptor) {
    let app_client: Client<HttpConnector, BoxBody> = {
        let mut b = Client::builder(TokioExecutor::new());
        if matches!(port.protocol, Protocol::Http2 | Protocol::Grpc) {
            b.http2_only(true);
        }
        b.build_http()
    };
    let drain = ctx.drain.clone();
    accept_loop(listener, drain, move |tcp, remote| {
        let acceptor = acceptors
            .for_connection(&ctx.store.load(), &ctx.key, port.port)
            .clone();
        let local_addr = tcp.local_addr().unwrap_or(remote);
        let (ctx, port, client) = (ctx.clone(), port.clone(), app_client.clone());
        tokio::spawn(async move {
            let guard = ctx.drain.guard();
            let stream = match acceptor.accept(tcp).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::info!(%remote, port = port.port, error = %e, "inbound connection refused");
                    return;
                }
            };
            let peer = stream.peer_identity().clone();
            if port.protocol.is_http() {
                drop(guard);
                let h2 = matches!(port.protocol, Protocol::Http2 | Protocol::Grpc);
                let local = local_info(&ctx.store, &ctx.key);
                let facts = ConnFacts { peer: peer.clone(), remote, local: local_addr };
                let svc = match InboundHttp::new(port.app, client, &peer, h2) {
                    Ok(svc) => svc,
                    Err(e) => {
                        tracing::warn!(app = %port.app, error = %e, "cannot forward to the app");
                        return;
                    }
                };
                let svc = inbound_stack(svc, &ctx, local, facts);
                let known = Known::from_alpn(stream.alpn_protocol());
                // A task of its own, so that what the handshake needed is
                // freed rather than kept in this task's state for the
                // connection's life.
                tokio::spawn(serve_connection(stream, svc, ctx.drain.clone(), known));
            } else {
                inbound_tcp(stream, &peer, (remote, local_addr), &ctx, &port).await;
                drop(guard);
            }
        });
    })
    .await;
}

async fn inbound_tcp<IO>(
    stream: IO,
    peer: &PeerIdentity,
    (remote, local_addr): (SocketAddr, SocketAddr),
    ctx: &Ctx,
    port: &InboundPort,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let service = {
        let snap = ctx.store.load();
        snap.services
            .values()
            .find(|s| {
                s.workloads
                    .iter()
                    .any(|i| snap.workloads[*i].key == ctx.key)
            })
            .map(DestinationInfo::for_service)
    };
    // Istio's TCP rules: HTTP-only fields never allow, always deny.
    let decision = AuthorizeLayer::new(ctx.store.clone(), LocalWorkload::named(ctx.key.clone()))
        .with_port(port.port)
        .check_connection(peer.spiffe_id(), Some(remote), Some(local_addr));
    let local = local_info(&ctx.store, &ctx.key);
    let mut conn =
        TcpTelemetry::inbound(ctx.registry.clone(), local).accepted(peer, service.as_ref());
    if !decision.allowed {
        // check_connection logged the refusal.
        conn.set_response_flags("RBAC");
        return;
    }
    let mut app = match TcpStream::connect(port.app).await {
        Ok(a) => a,
        Err(e) => {
            conn.set_response_flags("UF");
            tracing::info!(app = %port.app, error = %e, "the local app refused the connection");
            return;
        }
    };
    let _ = app.set_nodelay(true);
    let mut stream = conn.wrap(stream);
    match tokio::io::copy_bidirectional(&mut stream, &mut app).await {
        Ok((up, down)) => tracing::debug!(up, down, "inbound tunnel closed"),
        Err(e) => tracing::debug!(error = %e, "inbound tunnel broke"),
    }
}

/// Inbound HTTP, after authorization: forward to the app.
#[derive(Debug, Clone)]
struct InboundHttp {
    client: Client<HttpConnector, BoxBody>,
    conn: Arc<InboundConn>,
}

/// What every request of one inbound connection gets, worked out once when
/// it is accepted rather than per request.
#[derive(Debug)]
struct InboundConn {
    app: SocketAddr,
    /// `ip:port` of the app, for the URIs of forwarded requests.
    app_authority: Authority,
    /// `URI=<peer SPIFFE ID>` when the peer proved one.
    xfcc: Option<HeaderValue>,
    /// `https` for mTLS, `http` for plaintext.
    proto: HeaderValue,
    h2: bool,
}

impl InboundHttp {
    fn new(
        app: SocketAddr,
        client: Client<HttpConnector, BoxBody>,
        peer: &PeerIdentity,
        h2: bool,
    ) -> Result<Self> {
        let app_authority = Authority::try_from(app.to_string())
            .with_context(|| format!("the app's address {app}"))?;
        let xfcc = peer
            .spiffe_id()
            .and_then(|id| HeaderValue::from_str(&format!("URI={id}")).ok());
        let proto = HeaderValue::from_static(if peer.is_mtls() { "https" } else { "http" });
        Ok(Self {
            client,
            conn: Arc::new(InboundConn {
                app,
                app_authority,
                xfcc,
                proto,
                h2,
            }),
        })
    }
}

impl<B> tower::Service<Request<B>> for InboundHttp
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<mesh_tower::body::BoxError>,
{
    type Response = Response<BoxBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<BoxBody>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let this = self.clone();
        let req = req.map(boxed);
        Box::pin(async move { Ok(this.handle(req).await.unwrap_or_else(|e| e.to_response())) })
    }
}

impl InboundHttp {
    async fn handle(self, mut req: Request<BoxBody>) -> Result<Response<BoxBody>, MeshError> {
        let conn = &self.conn;
        if !req.headers().contains_key(http::header::HOST) {
            if let Some(v) = req
                .uri()
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            {
                req.headers_mut().insert(http::header::HOST, v);
            }
        }
        // `http://<app><path and query>`, from parts: no formatting, no
        // parsing per request.
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(http::uri::Scheme::HTTP);
        parts.authority = Some(conn.app_authority.clone());
        parts.path_and_query = Some(
            req.uri()
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        );
        *req.uri_mut() = Uri::from_parts(parts).map_err(|e| MeshError::UpstreamProtocol {
            endpoint: conn.app.to_string(),
            why: e.to_string(),
        })?;
        // The hop from the peer may be h2; the app gets what its port speaks.
        *req.version_mut() = if conn.h2 {
            http::Version::HTTP_2
        } else {
            http::Version::HTTP_11
        };
        // The app learns who called from the verified identity only: a
        // client-supplied header of the same name is replaced.
        req.headers_mut().remove(XFCC);
        if let Some(v) = &conn.xfcc {
            req.headers_mut().insert(XFCC, v.clone());
        }
        req.headers_mut()
            .entry(X_FORWARDED_PROTO)
            .or_insert_with(|| conn.proto.clone());
        let resp = self.client.request(req).await.map_err(|e| {
            UpstreamError::classify(&e, e.is_connect()).into_mesh_error(conn.app.to_string())
        })?;
        Ok(resp.map(boxed))
    }
}

const XFCC: HeaderName = HeaderName::from_static("x-forwarded-client-cert");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// A service an outbound port is for.
#[derive(Debug, Clone)]
struct OutboundTarget {
    host: String,
    port: u16,
    /// The workload's namespace, where short hosts resolve.
    namespace: String,
}

async fn outbound_loop(
    listener: TcpListener,
    target: OutboundTarget,
    ctx: Ctx,
    router: Outbound,
    tcp: TcpRouter,
    telemetry: TcpTelemetry,
) {
    let authority = format!("{}:{}", target.host, target.port);
    let drain = ctx.drain.clone();
    accept_loop(listener, drain, move |local, _| {
        let snap = ctx.store.load();
        let svc = snap.service(&target.host, &target.namespace);
        let http = svc
            .and_then(|s| s.port(target.port))
            .is_some_and(|p| p.protocol.is_http());
        if http {
            let svc = ForceAuthority {
                authority: authority.clone(),
                inner: router.clone(),
            };
            tokio::spawn(serve_connection(local, svc, ctx.drain.clone(), None));
        } else {
            let info = svc.map_or_else(
                || DestinationInfo::new(&target.host, "unknown"),
                DestinationInfo::for_service,
            );
            let conn = telemetry.connected(&info);
            let (tcp, target, drain) = (tcp.clone(), target.clone(), ctx.drain.clone());
            tokio::spawn(async move {
                let _guard = drain.guard();
                outbound_tcp(local, conn, &tcp, &target).await;
            });
        }
    })
    .await;
}

async fn outbound_tcp(
    local: TcpStream,
    mut conn: TcpConnection,
    tcp: &TcpRouter,
    target: &OutboundTarget,
) {
    let (host, port) = (target.host.as_str(), target.port);
    let mut up = match tcp.connect(host, port).await {
        Ok(c) => c,
        Err(e) => {
            conn.set_response_flags(e.response_flag());
            tracing::info!(host, port, reason = %e, flag = e.response_flag(), "outbound connection failed");
            return;
        }
    };
    let mut local = conn.wrap(local);
    match tokio::io::copy_bidirectional(&mut local, &mut up.io).await {
        Ok((sent, received)) => {
            tracing::debug!(host, endpoint = %up.endpoint, sent, received, "outbound tunnel closed")
        }
        Err(e) => tracing::debug!(host, error = %e, "outbound tunnel broke"),
    }
}

/// Sends every request to one service, whatever Host the app wrote.
#[derive(Debug, Clone)]
struct ForceAuthority {
    authority: String,
    inner: Outbound,
}

impl tower::Service<Request<ProxyBody>> for ForceAuthority {
    type Response = Response<BoxBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<BoxBody>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<ProxyBody>) -> Self::Future {
        if let Ok(v) = HeaderValue::from_str(&self.authority) {
            req.headers_mut().insert(http::header::HOST, v);
        }
        let pq = req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        if let Ok(uri) = format!("http://{}{pq}", self.authority).parse() {
            *req.uri_mut() = uri;
        }
        let mut inner = self.inner.clone();
        Box::pin(async move { tower::Service::call(&mut inner, req).await })
    }
}
