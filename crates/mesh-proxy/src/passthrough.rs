//! A Gateway's TLS PASSTHROUGH servers: the client's TLS goes through the
//! gateway unopened, to the destination a VirtualService's `tls` route
//! names by SNI, as Istio's ingress gateway passes it (an app that
//! terminates its own TLS; a control plane exposed to other clusters).
//!
//! Per connection: the ClientHello is read (rustls parses it; nothing is
//! answered, nothing decrypted) within the handshake timeout; its SNI must
//! be named by one of the port's servers' hosts and by a TLS route bound
//! to the Gateway (a connection without SNI, or with one nothing names, is
//! closed); the gateway's own AuthorizationPolicies decide on it as on
//! any TCP connection (source IP, port, `connection.sni`); then the TCP
//! router dials the route's destination (mesh mTLS to a workload with a
//! sidecar, whose port must be opaque: TLS or TCP), replays the
//! ClientHello and copies both ways. Counted as `istio_tcp_*` with the
//! gateway as the source.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mesh_core::store::Store;
use mesh_tower::authz::AuthorizeLayer;
use mesh_tower::telemetry::{DestinationInfo, TcpTelemetry};
use mesh_tower::traffic::TcpRouter;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// What every PASSTHROUGH connection of a gateway shares.
pub(crate) struct Passthrough {
    pub(crate) store: Arc<Store>,
    /// The Gateway, `namespace/name`.
    pub(crate) key: String,
    pub(crate) tcp: TcpRouter,
    pub(crate) telemetry: TcpTelemetry,
    /// The gateway workload's policies.
    pub(crate) authz: AuthorizeLayer,
    pub(crate) handshake_timeout: Duration,
}

/// One PASSTHROUGH port: its servers' hosts (as the Gateway wrote them).
pub(crate) struct PassthroughPort {
    pub(crate) port: u16,
    pub(crate) hosts: Vec<String>,
}

impl Passthrough {
    /// Serves one connection (see the module docs); every refusal closes
    /// it and is logged at INFO.
    pub(crate) async fn serve(
        &self,
        port: &PassthroughPort,
        mut tcp: TcpStream,
        remote: SocketAddr,
    ) {
        let local = tcp.local_addr().ok();
        let hello = tokio::time::timeout(
            self.handshake_timeout,
            mesh_tower::tls::read_client_hello(&mut tcp),
        )
        .await;
        let (hello, sni) = match hello {
            Err(_) => {
                tracing::info!(%remote, port = port.port, "no ClientHello within the handshake timeout");
                return;
            }
            Ok(Err(e)) => {
                tracing::info!(%remote, port = port.port, error = %e, "not a TLS ClientHello");
                return;
            }
            Ok(Ok(got)) => got,
        };
        let Some(sni) = sni else {
            tracing::info!(%remote, port = port.port, "a ClientHello without SNI: nothing to route by");
            return;
        };
        let snap = self.store.load();
        let ns = self.key.split_once('/').map_or("default", |(ns, _)| ns);
        // The servers whose hosts name the SNI, as the namespaces whose
        // VirtualServices they take (`None`: any).
        let namespaces: Vec<Option<&str>> = port
            .hosts
            .iter()
            .map(|h| mesh_core::gateway::split_server_host(h, ns))
            .filter(|(_, host)| mesh_core::gateway::host_matches(host, &sni))
            .map(|(ns, _)| ns)
            .collect();
        if namespaces.is_empty() {
            tracing::info!(%remote, port = port.port, sni, "no server of this port names the SNI");
            return;
        }
        let decision = self
            .authz
            .check_passthrough(Some(&sni), Some(remote), local);
        if !decision.allowed {
            tracing::info!(%remote, port = port.port, sni, reason = %decision.reason, "connection denied");
            return;
        }
        let Some(rule) = snap.gateways.get(&self.key).and_then(|g| {
            g.tls_route(port.port, &sni).filter(|r| {
                namespaces
                    .iter()
                    .any(|n| n.is_none_or(|n| n == r.source.namespace))
            })
        }) else {
            tracing::info!(%remote, port = port.port, sni, "no TLS route of the Gateway names the SNI");
            return;
        };
        let first = rule
            .route
            .first()
            .map(|d| d.host.as_str())
            .unwrap_or_default();
        let info = snap.services.get(first).map_or_else(
            || DestinationInfo::new(first, "unknown"),
            DestinationInfo::for_service,
        );
        // The snapshot is not held for the connection's life (a reload
        // frees the old one): the route is copied out of it.
        let route = rule.route.clone();
        drop(snap);
        match self.tcp.connect_routed(&route, port.port).await {
            Ok(mut up) => {
                let conn = self.telemetry.connected(&crate::sidecar::served(info, &up));
                if let Err(e) = up.io.write_all(&hello).await {
                    tracing::info!(%remote, endpoint = %up.endpoint, error = %e, "the destination closed before the ClientHello");
                    return;
                }
                crate::sidecar::tunnel(tcp, conn, up.io, &sni, &up.endpoint).await;
            }
            Err(e) => {
                let mut conn = self.telemetry.connected(&info);
                conn.set_response_flags(e.response_flag());
                tracing::info!(%remote, sni, reason = %e, flag = e.response_flag(), "passthrough connection failed");
            }
        }
    }
}
