//! The sidecar's inbound ports: mTLS per the port's PeerAuthentication,
//! authorization, and forwarding to the local app (HTTP through the L7
//! layers, TCP as an opaque tunnel).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use anyhow::{Context as _, Result};
use http::uri::{Authority, PathAndQuery};
use http::{HeaderName, HeaderValue, Request, Response, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use mesh_core::resources::networking::Protocol;
use mesh_tower::authz::{AuthorizeLayer, LocalAddr, LocalWorkload, drop_transport_authority};
use mesh_tower::body::{BoxBody, boxed};
use mesh_tower::error::MeshError;
use mesh_tower::server::{Known, ModeAcceptor, accept_loop, serve_connection};
use mesh_tower::telemetry::{
    DestinationInfo, TcpTelemetry, TelemetryLayer, WorkloadInfo, inbound_labels,
};
use mesh_tower::tls::PeerIdentity;
use mesh_tower::traffic::ClientAddr;
use mesh_tower::upstream::UpstreamError;
use tokio::net::{TcpListener, TcpStream};

use super::{Ctx, Outbound, local_info};
use crate::runtime::ProxyBody;

/// One inbound port of the workload.
#[derive(Debug, Clone)]
pub(super) struct InboundPort {
    /// The port the client connected to.
    pub(super) port: u16,
    pub(super) protocol: Protocol,
    pub(super) app: SocketAddr,
}

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
    let store = ctx.store.clone();
    let named = mesh_tower::telemetry::PeerMemo::default();
    tower::util::BoxCloneSyncService::new(
        tower::ServiceBuilder::new()
            .map_response(mesh_tower::body::box_response)
            .map_request(move |mut req: Request<ProxyBody>| {
                drop_transport_authority(&mut req, facts.local);
                // The caller a mesh peer names (metadata exchange): believed
                // for its own identity only, never passed to the app.
                let named = req
                    .headers_mut()
                    .remove(mesh_tower::telemetry::PEER_HEADER)
                    .zip(facts.peer.spiffe_id())
                    .and_then(|(v, id)| named.source(&store.load(), &v, id));
                let ext = req.extensions_mut();
                if let Some(d) = &destination {
                    ext.insert(d.clone());
                }
                if let Some(src) = named.as_ref().or(source.as_ref()) {
                    ext.insert(src.clone());
                }
                ext.insert(facts.peer.clone());
                ext.insert(ClientAddr(facts.remote));
                ext.insert(LocalAddr(facts.local));
                req
            })
            .layer(
                TelemetryLayer::inbound(ctx.registry.clone(), local)
                    .with_settings(ctx.telemetry.clone()),
            )
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

/// The clients to the local app: HTTP/1.1, and HTTP/2 only for ports that
/// speak it (HTTP2, GRPC).
#[derive(Debug, Clone)]
pub(super) struct AppClients {
    h1: Client<HttpConnector, BoxBody>,
    h2: Client<HttpConnector, BoxBody>,
}

impl AppClients {
    pub(super) fn new() -> Self {
        Self {
            h1: Client::builder(TokioExecutor::new()).build_http(),
            h2: Client::builder(TokioExecutor::new())
                .http2_only(true)
                .build_http(),
        }
    }

    fn for_protocol(&self, protocol: Protocol) -> &Client<HttpConnector, BoxBody> {
        if is_h2(protocol) { &self.h2 } else { &self.h1 }
    }
}

fn is_h2(protocol: Protocol) -> bool {
    matches!(protocol, Protocol::Http2 | Protocol::Grpc)
}

/// Serves one inbound port's listener (explicit mode: the sidecar listens
/// on the workload's own ports).
pub(super) async fn inbound_loop(
    listener: TcpListener,
    port: InboundPort,
    ctx: Ctx,
    acceptors: ModeAcceptor,
) {
    let clients = AppClients::new();
    let drain = ctx.drain.clone();
    accept_loop(listener, drain, move |tcp, remote| {
        let local_addr = tcp.local_addr().unwrap_or(remote);
        accept_inbound(
            tcp,
            remote,
            local_addr,
            port.clone(),
            &ctx,
            &acceptors,
            &clients,
        );
    })
    .await;
}

/// One accepted inbound connection for `port`: the TLS handshake its mTLS
/// mode asks for, then HTTP through the L7 layers or the TCP tunnel, on a
/// task of its own. `local_addr` is the address the client connected to
/// (in capture mode, its original destination, not the capture port):
/// authorization's `destination.ip`/`destination.port` and the authority
/// check read it.
pub(super) fn accept_inbound(
    tcp: TcpStream,
    remote: SocketAddr,
    local_addr: SocketAddr,
    port: InboundPort,
    ctx: &Ctx,
    acceptors: &ModeAcceptor,
    clients: &AppClients,
) {
    let acceptor = acceptors
        .for_connection(&ctx.store.load(), &ctx.key, port.port)
        .clone();
    let (ctx, client) = (ctx.clone(), clients.for_protocol(port.protocol).clone());
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
            let h2 = is_h2(port.protocol);
            let local = local_info(&ctx.store, &ctx.key);
            let facts = ConnFacts {
                peer: peer.clone(),
                remote,
                local: local_addr,
            };
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
            let mut stream = stream;
            // The caller's description (peer exchange), when its sidecar
            // and this one agreed on it in the handshake.
            let claimed = if stream.alpn_protocol()
                == Some(mesh_tower::telemetry::exchange::PEER_EXCHANGE_ALPN)
            {
                match mesh_tower::telemetry::exchange::read_peer_preamble(&mut stream).await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::info!(%remote, port = port.port, error = %e, "inbound tunnel refused");
                        return;
                    }
                }
            } else {
                None
            };
            let source = claimed.zip(peer.spiffe_id()).and_then(|(v, id)| {
                mesh_tower::telemetry::source_from_peer(&ctx.store.load(), &v, id)
            });
            inbound_tcp(stream, &peer, source, (remote, local_addr), &ctx, &port).await;
            drop(guard);
        }
    });
}

async fn inbound_tcp<IO>(
    stream: IO,
    peer: &PeerIdentity,
    source: Option<mesh_tower::telemetry::SourceInfo>,
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
        .check_connection_from(peer, Some(remote), Some(local_addr));
    let local = local_info(&ctx.store, &ctx.key);
    let mut conn = TcpTelemetry::inbound(ctx.registry.clone(), local)
        .with_settings(ctx.telemetry.clone())
        .accepted_from(peer, source.as_ref(), service.as_ref());
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
        // A WebSocket upgrade reaches an HTTP/1.1 app as it came; an h2
        // app has no `Upgrade` to take it.
        let upgrade = if conn.h2 {
            None
        } else {
            mesh_tower::upgrade::take(&mut req)
        };
        let mut resp = self.client.request(req).await.map_err(|e| {
            UpstreamError::classify(&e, e.is_connect()).into_mesh_error(conn.app.to_string())
        })?;
        if mesh_tower::upgrade::splice(upgrade, &mut resp) == mesh_tower::upgrade::Spliced::Refused
        {
            return Err(MeshError::UpstreamProtocol {
                endpoint: conn.app.to_string(),
                why: "the app switched protocols the request did not ask for".into(),
            });
        }
        Ok(resp.map(boxed))
    }
}

const XFCC: HeaderName = HeaderName::from_static("x-forwarded-client-cert");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
