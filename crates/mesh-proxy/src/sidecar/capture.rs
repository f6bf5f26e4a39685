//! Capture mode: the two listeners `mesh-proxy init`'s rules redirect to,
//! each connection served by what its original destination
//! (`SO_ORIGINAL_DST`) names.
//!
//! - **Outbound** (Istio's 15001, loopback): a service's virtual IP and
//!   port is routed as an explicit outbound port for that service is (HTTP
//!   through the L7 layers, every other protocol as a TCP tunnel over mesh
//!   mTLS); a workload's own address and a port it serves is that one
//!   endpoint, secured as an endpoint of its service is; anything else
//!   goes out unchanged (`ALLOW_ANY`, reported as `PassthroughCluster`) or
//!   is refused (`REGISTRY_ONLY`, `BlackHoleCluster`), as MeshConfig's
//!   `outboundTrafficPolicy` says, read per connection.
//! - **Inbound** (Istio's 15006, every address): the original port is the
//!   workload's port, served as an explicit inbound port is (its mTLS mode,
//!   authorization, then the app at the original destination, as Istio
//!   does since 1.10: an app must listen on the pod's address, not only on
//!   loopback). A port the WorkloadEntry does not name is an opaque TCP
//!   port under the same mTLS mode and Istio's TCP authorization rules.
//!
//! A connection made to a capture port itself (not redirected) is refused:
//! serving it would route it back to the listener, a loop. The proxy's own
//! connections are not captured because the rules exempt its uid/gid.

use std::net::SocketAddr;

use mesh_core::meshconfig::OutboundMode;
use mesh_core::plan::{CapturedDestination, captured};
use mesh_core::resources::networking::Protocol;
use mesh_tower::server::{
    ModeAcceptor, Original, accept_loop, original_destination, serve_connection,
};
use mesh_tower::telemetry::{DestinationInfo, TcpTelemetry};
use mesh_tower::traffic::{CapturedService, TcpRouter};
use tokio::net::{TcpListener, TcpStream};

use super::inbound::{AppClients, InboundPort, accept_inbound};
use super::outbound::{OutboundTarget, outbound_tcp, tunnel};
use super::{Ctx, Outbound, port_protocol};
use crate::runtime::BoundSocket;

/// Istio's name for the destination of a connection let through to an
/// address that is no service of the mesh.
pub(crate) const PASSTHROUGH_CLUSTER: &str = "PassthroughCluster";
/// Istio's name for the destination of a connection refused because its
/// address is no service of the mesh (`REGISTRY_ONLY`).
pub(crate) const BLACKHOLE_CLUSTER: &str = "BlackHoleCluster";

/// The capture listeners of a sidecar: where `mesh-proxy init`'s rules
/// redirect the namespace's TCP.
#[derive(Debug, Default)]
pub struct CaptureListeners {
    /// Outbound TCP: `127.0.0.1` and `[::1]` on MeshConfig's
    /// `ports.outbound` (15001) in the binary.
    pub outbound: Vec<BoundSocket>,
    /// Inbound TCP: `[::]` (dual-stack) or `0.0.0.0` on MeshConfig's
    /// `ports.inbound` (15006) in the binary.
    pub inbound: Vec<BoundSocket>,
}

impl CaptureListeners {
    /// How a sidecar with these listeners takes its traffic: `explicit`
    /// (none), or `capture (outbound ADDRS; inbound ADDRS)`.
    pub(super) fn mode(&self) -> String {
        if self.outbound.is_empty() && self.inbound.is_empty() {
            return "explicit".to_owned();
        }
        let list = |s: &[BoundSocket]| {
            s.iter()
                .map(|b| b.local_addr().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "capture (outbound {}; inbound {})",
            list(&self.outbound),
            list(&self.inbound)
        )
    }
}

/// What the outbound capture listener routes with.
#[derive(Debug, Clone)]
pub(super) struct OutboundRoutes {
    pub(super) router: Outbound,
    pub(super) tcp: TcpRouter,
    pub(super) telemetry: TcpTelemetry,
    /// The workload's namespace, where short hosts resolve.
    pub(super) namespace: String,
}

/// The original destination of a connection accepted on a capture
/// listener, or `None` (logged) when it has none to serve.
fn redirected(tcp: &TcpStream, remote: SocketAddr, side: &str) -> Option<SocketAddr> {
    match original_destination(tcp) {
        Ok(Original::Redirected(dst)) => Some(dst),
        Ok(Original::Direct) => {
            tracing::info!(%remote, side, "refused a connection made to the capture port itself: serving it would loop");
            None
        }
        Err(e) => {
            tracing::warn!(%remote, side, error = %e, "cannot read the original destination");
            None
        }
    }
}

pub(super) async fn outbound_capture_loop(listener: TcpListener, ctx: Ctx, routes: OutboundRoutes) {
    let drain = ctx.drain.clone();
    accept_loop(listener, drain, move |local, remote| {
        let Some(dst) = redirected(&local, remote, "outbound") else {
            return;
        };
        outbound_captured(local, dst, &ctx, &routes);
    })
    .await;
}

/// One captured outbound connection to `dst`.
fn outbound_captured(local: TcpStream, dst: SocketAddr, ctx: &Ctx, routes: &OutboundRoutes) {
    let snap = ctx.store.load();
    match captured(&snap, dst) {
        CapturedDestination::Service { service, .. }
            if service.resolution == mesh_core::resources::networking::Resolution::None =>
        {
            // resolution NONE: the service has no endpoints of its own; the
            // connection goes on to the address the app dialled, as the
            // service's (Istio's ORIGINAL_DST cluster), opaque. Only as
            // plaintext to a service outside the mesh: mesh mTLS or TLS
            // origination to an address nobody named cannot be verified,
            // so those are refused, never sent in the clear.
            let mut conn = routes
                .telemetry
                .connected(&DestinationInfo::for_service(service));
            let client = snap.client_tls(&service.host, dst.port(), None);
            let plaintext = matches!(
                client.mode,
                None | Some(mesh_core::resources::networking::ClientTlsMode::Disable)
            );
            if service.location != mesh_core::resources::networking::Location::MeshExternal
                || !plaintext
            {
                conn.set_response_flags("UF");
                tracing::info!(host = %service.host, %dst, "refused: a resolution NONE entry is passed through as plaintext to a MESH_EXTERNAL service only (its DestinationRule or location asks for TLS this mesh cannot verify at an address nobody named)");
                drop(local);
                return;
            }
            let policy = mesh_core::plan::effective_policy(&snap, &service.host, dst.port(), None);
            let timeout = mesh_core::plan::connect_timeout(&policy);
            let label = service.host.clone();
            passthrough(local, dst, conn, ctx.drain.guard(), label, timeout);
        }
        CapturedDestination::Service { service, port } if port.protocol.is_http() => {
            let svc = tower::ServiceBuilder::new()
                .map_request({
                    let captured = CapturedService {
                        host: service.host.clone(),
                        port: port.number,
                    };
                    move |mut req: http::Request<crate::runtime::ProxyBody>| {
                        req.extensions_mut().insert(captured.clone());
                        req
                    }
                })
                .service(routes.router.clone());
            tokio::spawn(serve_connection(local, svc, ctx.drain.clone(), None));
        }
        CapturedDestination::Service { service, port } => {
            let info = DestinationInfo::for_service(service);
            let target = OutboundTarget {
                host: service.host.clone(),
                port: port.number,
                namespace: routes.namespace.clone(),
            };
            let (tcp, guard) = (routes.tcp.clone(), ctx.drain.guard());
            let telemetry = routes.telemetry.clone();
            tokio::spawn(async move {
                let _guard = guard;
                outbound_tcp(local, &telemetry, info, &tcp, &target).await;
            });
        }
        CapturedDestination::Endpoint {
            service,
            port,
            endpoint,
        } => {
            let info = DestinationInfo::for_service(service);
            let (host, number) = (service.host.clone(), port.number);
            let (tcp, guard) = (routes.tcp.clone(), ctx.drain.guard());
            let telemetry = routes.telemetry.clone();
            tokio::spawn(async move {
                let _guard = guard;
                match tcp.connect_endpoint(&host, number, &endpoint).await {
                    Ok(up) => {
                        let conn = telemetry.connected(&super::outbound::served(info, &up));
                        tunnel(local, conn, up.io, &host, &up.endpoint).await
                    }
                    Err(e) => {
                        let mut conn = telemetry.connected(&info);
                        conn.set_response_flags(e.response_flag());
                        tracing::info!(host, %dst, reason = %e, "captured connection to an endpoint failed");
                    }
                }
            });
        }
        CapturedDestination::Unknown => match snap.mesh.outbound_traffic_policy.mode {
            OutboundMode::AllowAny => {
                let conn = routes
                    .telemetry
                    .connected(&DestinationInfo::new(PASSTHROUGH_CLUSTER, "unknown"));
                passthrough(
                    local,
                    dst,
                    conn,
                    ctx.drain.guard(),
                    PASSTHROUGH_CLUSTER.to_owned(),
                    mesh_core::plan::DEFAULT_CONNECT_TIMEOUT,
                );
            }
            OutboundMode::RegistryOnly => {
                let mut conn = routes
                    .telemetry
                    .connected(&DestinationInfo::new(BLACKHOLE_CLUSTER, "unknown"));
                conn.set_response_flags("NR");
                tracing::info!(%dst, "refused: no service of the mesh has this address (outboundTrafficPolicy REGISTRY_ONLY)");
                drop(local);
            }
        },
    }
}

/// Sends a captured connection on, unchanged, to the address it was made
/// to, counted on `conn` as `label`, the dial bounded by `connect_timeout`.
fn passthrough(
    local: TcpStream,
    dst: SocketAddr,
    mut conn: mesh_tower::telemetry::TcpConnection,
    guard: mesh_tower::server::ConnGuard,
    label: String,
    connect_timeout: std::time::Duration,
) {
    tokio::spawn(async move {
        let _guard = guard;
        let dial = tokio::time::timeout(connect_timeout, TcpStream::connect(dst)).await;
        match dial {
            Ok(Ok(up)) => {
                let _ = up.set_nodelay(true);
                tunnel(local, conn, up, &label, &dst.to_string()).await;
            }
            Ok(Err(e)) => {
                conn.set_response_flags("UF");
                tracing::info!(%dst, destination = %label, error = %e, "passthrough connection failed");
            }
            Err(_) => {
                conn.set_response_flags("UF");
                tracing::info!(%dst, destination = %label, "passthrough connection failed: connect timeout after {connect_timeout:?}");
            }
        }
    });
}

pub(super) async fn inbound_capture_loop(listener: TcpListener, ctx: Ctx, acceptors: ModeAcceptor) {
    let clients = AppClients::new();
    let drain = ctx.drain.clone();
    accept_loop(listener, drain, move |tcp, remote| {
        let Some(dst) = redirected(&tcp, remote, "inbound") else {
            return;
        };
        let Some(port) = inbound_port(&ctx, &tcp, dst) else {
            return;
        };
        accept_inbound(tcp, remote, dst, port, &ctx, &acceptors, &clients);
    })
    .await;
}

/// What a captured inbound connection to `dst` is served as: the
/// workload's port `dst.port()`, forwarded to `dst`. `None` (logged) for an
/// original destination that is not this workload's: the sidecar forwards
/// only to its own workload, never on to another address.
fn inbound_port(ctx: &Ctx, tcp: &TcpStream, dst: SocketAddr) -> Option<InboundPort> {
    let snap = ctx.store.load();
    let (_, w) = snap.workload(&ctx.key)?;
    let own = w.address.parse::<std::net::IpAddr>().ok() == Some(dst.ip())
        || tcp.local_addr().ok().map(|a| a.ip().to_canonical()) == Some(dst.ip());
    if !own {
        tracing::warn!(%dst, workload = %ctx.key, address = %w.address, "refused an inbound connection addressed to another host");
        return None;
    }
    Some(InboundPort {
        port: dst.port(),
        protocol: port_protocol(&snap, w, dst.port()).unwrap_or(Protocol::Tcp),
        app: dst,
    })
}
