//! Opaque TCP towards a service: the same destination, subset and endpoint
//! choice as HTTP (TCP routes of VirtualServices, weights, load balancing,
//! ejected endpoints skipped), then plain TCP or mesh mTLS with secure
//! naming, and nothing read from the stream: server-first protocols such as
//! MySQL start at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mesh_core::identity::SpiffeId;
use mesh_core::outlier::{Outcome, OutlierPolicy};
use mesh_core::plan::{EndpointTls, choose_destination, resolve_destination, tcp_destinations};
use mesh_core::store::Store;
use tokio::net::TcpStream;

use super::pick;
use super::state::{RandomSource, SeededRandom, TrafficState};
use crate::error::MeshError;
use crate::tls::MeshConnector;
use crate::upstream::EndpointIo;

// How long a TCP connect may take.

/// A connection made by [`TcpRouter::connect`].
#[derive(Debug)]
pub struct TcpConnection {
    /// The stream, plain or mTLS.
    pub io: EndpointIo,
    /// `address:port` of the endpoint.
    pub endpoint: String,
    /// The service host.
    pub host: String,
    /// The server's verified identity, for mTLS.
    pub peer: Option<SpiffeId>,
    /// The workload that serves there, as telemetry names it (read from
    /// the snapshot the endpoint was picked in).
    pub workload: Option<std::sync::Arc<crate::telemetry::WorkloadInfo>>,
}

/// Connects to services by host and port.
#[derive(Debug, Clone)]
pub struct TcpRouter {
    store: Arc<Store>,
    namespace: String,
    mtls: Option<MeshConnector>,
    state: Arc<TrafficState>,
    random: Arc<dyn RandomSource>,
    /// How this workload describes itself to the servers it tunnels to
    /// ([`crate::telemetry::exchange`]).
    peer: Option<http::HeaderValue>,
    /// Who calls: its workload, locality and network, for the locality
    /// plan and the network's endpoints (a [`RouterConfig`]'s fields).
    place: Arc<super::RouterConfig>,
}

impl TcpRouter {
    /// A router for a workload of `namespace`; without `mtls`, destinations
    /// that need mesh mTLS fail closed.
    pub fn new(store: Arc<Store>, namespace: &str, mtls: Option<MeshConnector>) -> Self {
        Self {
            store,
            namespace: namespace.to_owned(),
            // Opaque streams offer the peer exchange (and http/1.1, which a
            // server that predates it selects and ignores on a TCP port).
            mtls: mtls.map(|m| {
                m.with_alpn(vec![
                    crate::telemetry::exchange::PEER_EXCHANGE_ALPN.to_vec(),
                    b"http/1.1".to_vec(),
                ])
            }),
            state: Arc::new(TrafficState::default()),
            random: Arc::new(SeededRandom::from_entropy()),
            peer: None,
            place: Arc::new(super::RouterConfig {
                namespace: namespace.to_owned(),
                ..super::RouterConfig::for_gateway(namespace)
            }),
        }
    }

    /// The calling workload (`namespace/name`), its locality and network
    /// (unset: its WorkloadEntry's), as a [`RouterConfig`] places them.
    #[must_use]
    pub fn located(
        mut self,
        workload: Option<String>,
        locality: Option<mesh_core::locality::Locality>,
        network: Option<String>,
    ) -> Self {
        let mut place = super::RouterConfig::for_gateway(&self.namespace);
        place.gateway = None;
        place.workload = workload;
        place.locality = locality;
        place.network = network;
        self.place = Arc::new(place);
        self
    }

    /// Describes this workload to the mesh servers it tunnels to
    /// ([`WorkloadInfo::peer_header`](crate::telemetry::WorkloadInfo::peer_header)).
    #[must_use]
    pub fn with_peer(mut self, peer: Option<http::HeaderValue>) -> Self {
        self.peer = peer;
        self
    }

    /// Opens a connection to one endpoint of `host:port` that a client
    /// addressed by its own address (a captured connection to a workload's
    /// address): secured as an endpoint of that service is (its client TLS,
    /// its workload's identity), with no other endpoint tried.
    pub async fn connect_endpoint(
        &self,
        host: &str,
        port: u16,
        endpoint: &mesh_core::plan::Endpoint,
    ) -> Result<TcpConnection, MeshError> {
        let snap = self.store.load();
        let (svc, sp) = service_port(&snap, host, port, &self.namespace)?;
        let tls = mesh_core::plan::endpoint_tls(&snap, svc, sp.number, None, endpoint)
            .and_then(mesh_core::plan::opaque_tls)
            .map_err(|why| MeshError::CannotSecure {
                host: svc.host.clone(),
                why,
            })?;
        let allowed = mesh_core::plan::identities(&snap, endpoint);
        let policy = mesh_core::plan::effective_policy(&snap, &svc.host, sp.number, None);
        let timeout = mesh_core::plan::connect_timeout(&policy);
        let (io, peer) = self
            .dial(
                &endpoint.key,
                tls == EndpointTls::MeshMtls,
                &allowed,
                timeout,
            )
            .await
            .map_err(|why| MeshError::UpstreamConnect {
                endpoint: endpoint.key.clone(),
                why,
            })?;
        Ok(TcpConnection {
            io,
            endpoint: endpoint.key.clone(),
            host: svc.host.clone(),
            peer,
            workload: snap
                .workloads
                .get(endpoint.workload)
                .map(crate::telemetry::WorkloadInfo::shared),
        })
    }

    /// Opens a connection to `host:port`, trying a second endpoint when the
    /// first cannot be reached.
    pub async fn connect(&self, host: &str, port: u16) -> Result<TcpConnection, MeshError> {
        self.connect_sni(host, port, None).await
    }

    /// Whether connections to `host:port` are routed by their TLS SNI (a
    /// mesh VirtualService has `tls` routes on that port): the caller
    /// reads the ClientHello first and calls
    /// [`connect_sni`](Self::connect_sni).
    pub fn routes_by_sni(&self, host: &str, port: u16) -> bool {
        let snap = self.store.load();
        service_port(&snap, host, port, &self.namespace)
            .is_ok_and(|(_, sp)| !sp.tls_routes.is_empty())
    }

    /// What telemetry names `host` as a destination service (a TLS route
    /// may send a connection to another service than the one dialled).
    pub fn service_info(&self, host: &str) -> Option<crate::telemetry::DestinationInfo> {
        self.store
            .load()
            .services
            .get(host)
            .map(crate::telemetry::DestinationInfo::for_service)
    }

    /// [`connect`](Self::connect) for a TLS connection whose ClientHello
    /// named `sni`: the first TLS rule of the port that names it, else (and
    /// without `sni`) the port's TCP rules for this caller.
    pub async fn connect_sni(
        &self,
        host: &str,
        port: u16,
        sni: Option<&str>,
    ) -> Result<TcpConnection, MeshError> {
        let snap = self.store.load();
        let (svc, sp) = service_port(&snap, host, port, &self.namespace)?;
        let me = self.place.whereabouts(&snap);
        match sni.and_then(|n| sp.tls_rule(n)) {
            Some(rule) => {
                self.connect_to(&snap, &rule.route, port, &me, &svc.host)
                    .await
            }
            None => {
                let dests = tcp_destinations(svc, sp, &me.labels);
                self.connect_to(&snap, &dests, port, &me, &svc.host).await
            }
        }
    }

    /// Opens a connection to one of `dests` (a route chose them: a
    /// Gateway's TLS route), `port` standing for a destination that names
    /// none; a second endpoint is tried when the first cannot be reached.
    pub async fn connect_routed(
        &self,
        dests: &[mesh_core::route::WeightedDestination],
        port: u16,
    ) -> Result<TcpConnection, MeshError> {
        let snap = self.store.load();
        let me = self.place.whereabouts(&snap);
        let target = dests.first().map(|d| d.host.clone()).unwrap_or_default();
        self.connect_to(&snap, dests, port, &me, &target).await
    }

    async fn connect_to(
        &self,
        snap: &mesh_core::snapshot::Snapshot,
        dests: &[mesh_core::route::WeightedDestination],
        port: u16,
        me: &mesh_core::locality::Whereabouts,
        target: &str,
    ) -> Result<TcpConnection, MeshError> {
        let now = Instant::now();
        let dest = choose_destination(
            dests,
            |d| pick::has_available(snap, d, port, &self.state, now, me.network.as_deref()),
            None,
            || self.random.next_u64(),
        )
        .ok_or_else(|| MeshError::NoHealthyEndpoint {
            target: target.to_owned(),
        })?;
        let planned = resolve_destination(snap, dest, port)?;
        let subset = planned.subset;
        let policy = &planned.policy;
        let connect_timeout = mesh_core::plan::connect_timeout(policy);
        let outlier = policy
            .outlier_detection
            .as_ref()
            .and_then(OutlierPolicy::from_config);
        let (eps, spread) = pick::Spread::of(
            snap,
            planned.endpoints.clone(),
            policy.load_balancer.as_ref(),
            outlier.is_some(),
            me,
        );
        let eps = &eps;
        let set = pick::EndpointSet::Tcp {
            host: &dest.host,
            subset,
        };
        let mut last: Option<String> = None;
        let mut error = MeshError::NoHealthyEndpoint {
            target: dest.host.clone(),
        };
        for _ in 0..2 {
            let Some(ep) = pick::endpoint(
                eps,
                &spread,
                policy.load_balancer.as_ref(),
                None,
                &self.state,
                set,
                last.as_deref(),
                self.random.as_ref(),
            ) else {
                break;
            };
            let mtls = planned
                .endpoint_tls(snap, &ep)
                .and_then(mesh_core::plan::opaque_tls)
                .map_err(|why| MeshError::CannotSecure {
                    host: dest.host.clone(),
                    why,
                })?
                == EndpointTls::MeshMtls;
            let allowed = planned.identities(snap, &ep);
            match self.dial(&ep.key, mtls, &allowed, connect_timeout).await {
                Ok((io, peer)) => {
                    if let Some(op) = &outlier {
                        self.state.endpoint(&ep.key).record(
                            Outcome::Success,
                            Instant::now(),
                            op,
                            true,
                        );
                    }
                    return Ok(TcpConnection {
                        io,
                        workload: snap
                            .workloads
                            .get(ep.workload)
                            .map(crate::telemetry::WorkloadInfo::shared),
                        endpoint: ep.key,
                        host: dest.host.clone(),
                        peer,
                    });
                }
                Err(why) => {
                    if let Some(op) = &outlier {
                        let ejected = eps
                            .iter()
                            .filter(|e| !self.state.endpoint(&e.key).is_available(Instant::now()))
                            .count();
                        self.state.endpoint(&ep.key).record(
                            Outcome::ConnectFailure,
                            Instant::now(),
                            op,
                            ejected < op.max_ejected(eps.len()),
                        );
                    }
                    error = MeshError::UpstreamConnect {
                        endpoint: ep.key.clone(),
                        why,
                    };
                    last = Some(ep.key);
                }
            }
        }
        Err(error)
    }

    async fn dial(
        &self,
        addr: &str,
        mtls: bool,
        allowed: &[SpiffeId],
        connect_timeout: Duration,
    ) -> Result<(EndpointIo, Option<SpiffeId>), String> {
        if let Some(path) = mesh_core::plan::unix_socket(addr) {
            let io = crate::uds::dial(path, mtls, connect_timeout).await?;
            return Ok((EndpointIo::Unix(io), None));
        }
        let tcp = tokio::time::timeout(connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| format!("connect timeout after {connect_timeout:?}"))?
            .map_err(|e| e.to_string())?;
        let _ = tcp.set_nodelay(true);
        if !mtls {
            return Ok((EndpointIo::Plain(tcp), None));
        }
        let connector = self
            .mtls
            .as_ref()
            .ok_or("this workload has no mesh identity for mTLS")?;
        let mut tls = connector
            .connect(tcp, allowed)
            .await
            .map_err(|e| e.to_string())?;
        if tls.alpn_protocol() == Some(crate::telemetry::exchange::PEER_EXCHANGE_ALPN) {
            crate::telemetry::exchange::write_peer_preamble(&mut tls, self.peer.as_ref())
                .await
                .map_err(|e| format!("peer exchange: {e}"))?;
        }
        let peer = tls.peer_id().clone();
        Ok((EndpointIo::Mtls(Box::new(tls)), Some(peer)))
    }
}

/// The service `host` (short names resolve in `namespace`) and its `port`.
fn service_port<'s>(
    snap: &'s mesh_core::snapshot::Snapshot,
    host: &str,
    port: u16,
    namespace: &str,
) -> Result<
    (
        &'s mesh_core::snapshot::Service,
        &'s mesh_core::snapshot::ServicePortEntry,
    ),
    MeshError,
> {
    let svc = snap
        .service(host, namespace)
        .ok_or_else(|| MeshError::UnknownHost {
            host: host.to_owned(),
        })?;
    let sp = svc.port(port).ok_or_else(|| MeshError::UnknownPort {
        host: svc.host.clone(),
        port,
    })?;
    Ok((svc, sp))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::traffic::test_store;

    /// A captured connection to a workload's own address reaches exactly
    /// that endpoint (plaintext here, as the mesh says), and one to a host
    /// the mesh does not know is refused by name.
    #[tokio::test]
    async fn connect_endpoint_dials_that_endpoint() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mesh = format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n\
             metadata: {{name: db, namespace: default}}\nspec:\n  hosts: [db.default.svc.cluster.local]\n  \
             ports: [{{number: {port}, name: tcp, protocol: TCP}}]\n  resolution: STATIC\n  \
             endpoints: [{{address: 127.0.0.1}}]\n---\n\
             apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n\
             metadata: {{name: plain, namespace: default}}\nspec: {{mtls: {{mode: DISABLE}}}}\n"
        );
        let store = test_store(&mesh);
        let router = TcpRouter::new(store.clone(), "default", None);
        let endpoint = {
            let snap = store.load();
            let svc = snap.service("db", "default").unwrap();
            mesh_core::plan::endpoints(&snap, svc, svc.port(port).unwrap(), None)
                .unwrap()
                .remove(0)
        };
        let accept = tokio::spawn(async move { listener.accept().await.map(|(_, a)| a) });
        let conn = router
            .connect_endpoint("db", port, &endpoint)
            .await
            .unwrap();
        assert_eq!(conn.endpoint, format!("127.0.0.1:{port}"));
        assert_eq!(conn.host, "db.default.svc.cluster.local");
        assert!(conn.peer.is_none(), "plaintext: no peer identity");
        accept.await.unwrap().unwrap();
        let err = router
            .connect_endpoint("nowhere", port, &endpoint)
            .await
            .unwrap_err();
        assert_eq!(err.response_flag(), "NR");
    }
}
