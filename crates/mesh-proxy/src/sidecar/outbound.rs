//! The sidecar's outbound side: a local port per service and the HTTP
//! forward proxy, through the router (HTTP) or the TCP router.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderValue, Request, Response};
use mesh_tower::body::BoxBody;
use mesh_tower::server::{accept_loop, serve_connection};
use mesh_tower::telemetry::{
    DestinationInfo, Registry, TcpConnection, TcpTelemetry, TelemetryLayer, TelemetrySettings,
    WorkloadInfo,
};
use mesh_tower::traffic::{Router, TcpRouter};
use tokio::net::{TcpListener, TcpStream};

use super::{Ctx, Outbound};
use crate::runtime::ProxyBody;

pub(crate) fn outbound_stack(
    router: Router,
    registry: Registry,
    local: WorkloadInfo,
    settings: Arc<TelemetrySettings>,
) -> Outbound {
    tower::util::BoxCloneSyncService::new(
        tower::ServiceBuilder::new()
            .map_response(mesh_tower::body::box_response)
            .layer(TelemetryLayer::outbound(registry, local).with_settings(settings))
            .service(router),
    )
}

/// A service an outbound port is for.
#[derive(Debug, Clone)]
pub(super) struct OutboundTarget {
    pub(super) host: String,
    pub(super) port: u16,
    /// The workload's namespace, where short hosts resolve.
    pub(super) namespace: String,
}

pub(super) async fn outbound_loop(
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
            let (tcp, target, drain) = (tcp.clone(), target.clone(), ctx.drain.clone());
            let telemetry = telemetry.clone();
            tokio::spawn(async move {
                let _guard = drain.guard();
                outbound_tcp(local, &telemetry, info, &tcp, &target).await;
            });
        }
    })
    .await;
}

/// An outbound TCP connection to `target`: the TCP router's endpoint, then
/// the tunnel. Its series is opened once the endpoint is known, so the
/// caller's side names the workload that served and whether it was mTLS
/// (Istio's caller-side TCP labels), or, when none could be reached, the
/// service alone with the failure's flag.
pub(super) async fn outbound_tcp(
    mut local: TcpStream,
    telemetry: &TcpTelemetry,
    info: DestinationInfo,
    tcp: &TcpRouter,
    target: &OutboundTarget,
) {
    let (host, port) = (target.host.as_str(), target.port);
    // A TLS port with `tls` routes: the ClientHello's SNI decides, the
    // hello replayed to where it goes (bounded as a handshake is).
    let hello = if tcp.routes_by_sni(host, port) {
        let read = mesh_tower::tls::read_client_hello(&mut local);
        match tokio::time::timeout(SNI_READ_TIMEOUT, read).await {
            Ok(Ok(hello)) => Some(hello),
            Ok(Err(e)) => {
                tracing::info!(host, port, error = %e, "no TLS ClientHello on a port routed by SNI: closed");
                return;
            }
            Err(_) => {
                tracing::info!(
                    host,
                    port,
                    "no TLS ClientHello within {SNI_READ_TIMEOUT:?}: closed"
                );
                return;
            }
        }
    } else {
        None
    };
    let sni = hello.as_ref().and_then(|(_, sni)| sni.as_deref());
    match tcp.connect_sni(host, port, sni).await {
        Ok(mut up) => {
            // Routed by SNI to another service: counted as that one's.
            let info = match (&hello, up.host != host) {
                (Some(_), true) => tcp.service_info(&up.host).unwrap_or(info),
                _ => info,
            };
            let conn = telemetry.connected(&served(info, &up));
            if let Some((bytes, _)) = &hello {
                if let Err(e) = tokio::io::AsyncWriteExt::write_all(&mut up.io, bytes).await {
                    tracing::info!(host, endpoint = %up.endpoint, error = %e, "the destination closed before the ClientHello");
                    return;
                }
            }
            tunnel(local, conn, up.io, host, &up.endpoint).await
        }
        Err(e) => {
            let mut conn = telemetry.connected(&info);
            conn.set_response_flags(e.response_flag());
            tracing::info!(host, port, reason = %e, flag = e.response_flag(), "outbound connection failed");
        }
    }
}

/// How long a client on a port routed by SNI may take to send its
/// ClientHello (the gateway's default handshake timeout).
const SNI_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The destination of a TCP connection once its endpoint answered: the
/// workload that serves there, and whether the hop is mesh mTLS.
pub(crate) fn served(
    info: DestinationInfo,
    up: &mesh_tower::traffic::TcpConnection,
) -> DestinationInfo {
    let info = info.with_mtls(up.peer.is_some());
    match up.workload.clone() {
        Some(w) => info.with_workload(w),
        None => info,
    }
}

/// Copies both ways between the app's connection and the upstream one,
/// counted by `conn`, until either side closes.
pub(crate) async fn tunnel<U>(
    local: TcpStream,
    conn: TcpConnection,
    mut up: U,
    host: &str,
    endpoint: &str,
) where
    U: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut local = conn.wrap(local);
    match tokio::io::copy_bidirectional(&mut local, &mut up).await {
        Ok((sent, received)) => {
            tracing::debug!(host, endpoint, sent, received, "outbound tunnel closed")
        }
        Err(e) => tracing::debug!(host, endpoint, error = %e, "outbound tunnel broke"),
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
