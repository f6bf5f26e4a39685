//! The routing plan: for a request and a snapshot, the one decision of
//! where it goes and how, as plain functions. The HTTP and TCP routers of
//! `mesh-tower`, the gateway and [`explain`](crate::explain) all take it
//! from here, so `explain` renders the decision the data plane takes
//! instead of deriving its own.
//!
//! The plan comes in two steps, because between them the data plane
//! consults what only it knows (which endpoints are up):
//!
//! 1. [`route`]: the service and port asked for (or the Gateway server's
//!    table), the first matching rule, and what it does: forward to
//!    weighted destinations, redirect, or answer directly; the rule's
//!    fault, timeout, retries and mirror ride on [`RoutePlan`].
//! 2. [`choose_destination`] among the weighted ones (sticky by a key, by
//!    weight otherwise, skipping destinations that cannot serve), then
//!    [`resolve_destination`]: its service, the service port it means
//!    ([`dest_port`]), the subset's endpoints, the traffic policy in force
//!    ([`effective_policy`]), and per endpoint the client TLS
//!    ([`DestinationPlan::endpoint_tls`]) and the identities that may
//!    answer (secure naming).
//!
//! ```
//! use std::path::Path;
//! use mesh_core::plan::{PlanRequest, PlannedAction, resolve_destination, route};
//!
//! let yaml = r#"
//! apiVersion: networking.istio.io/v1
//! kind: ServiceEntry
//! metadata: {name: reviews}
//! spec:
//!   hosts: [reviews]
//!   ports: [{number: 9080, name: http}]
//!   workloadSelector: {labels: {app: reviews}}
//! ---
//! apiVersion: networking.istio.io/v1
//! kind: WorkloadEntry
//! metadata: {name: reviews-v1}
//! spec: {address: 10.0.0.7, labels: {app: reviews}, serviceAccount: reviews}
//! "#;
//! let snap = mesh_core::snapshot::compile(&mesh_core::load::load_str(Path::new("r.yaml"), yaml)?)?;
//! let headers: Vec<(String, String)> = Vec::new();
//! let req = PlanRequest::mesh("reviews", 9080, "default", &headers);
//! let plan = route(&snap, &req).expect("routable");
//! let PlannedAction::Forward(dests) = &plan.action else { panic!("a forward") };
//! let dest = resolve_destination(&snap, &dests[0], 9080).expect("resolves");
//! assert_eq!(dest.endpoints[0].key, "10.0.0.7:9080");
//! # Ok::<(), mesh_core::error::ConfigErrors>(())
//! ```

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use crate::gateway::GatewayRoute;
use crate::identity::SpiffeId;
use crate::resources::common::Labels;
use crate::resources::networking::{
    ClientTlsMode, HttpDirectResponse, HttpRedirect, Location, Protocol, Resolution, TrafficPolicy,
};
use crate::resources::security::MtlsMode;
use crate::retry::RetryPolicy;
use crate::route::{HeaderLookup, HttpRouteRule, RequestInfo, RouteAction, WeightedDestination};
use crate::snapshot::{Service, ServicePortEntry, Snapshot};

/// Why a request cannot be planned: each is answered by the data plane
/// (404 for a rule that does not match, 503 otherwise) and shown by
/// `explain`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    /// The host is no known service.
    #[error("no route: {host} is not a known service")]
    UnknownHost {
        /// The host asked for.
        host: String,
    },
    /// The service has no such port.
    #[error("no route: {host} has no port {port}")]
    UnknownPort {
        /// The host.
        host: String,
        /// The port.
        port: u16,
    },
    /// Rules exist for the host and none matches (at a gateway: no server
    /// of the connection serves the host).
    #[error("no route: no rule of {vs} matches the request")]
    NoRuleMatched {
        /// What was searched.
        vs: String,
    },
    /// The destination's subset is not defined.
    #[error("no route: subset {subset} of {host} is not defined")]
    NoSubset {
        /// The host.
        host: String,
        /// The subset.
        subset: String,
    },
}

/// The request facts the plan reads.
#[derive(Clone, Copy)]
pub struct PlanRequest<'a> {
    /// The host asked for, lower case, without the port.
    pub host: &'a str,
    /// What route matching reads (method, path, authority, headers, port,
    /// the caller's labels and namespace, the gateway).
    pub info: RequestInfo<'a>,
    /// The caller's namespace, where short hosts resolve.
    pub namespace: &'a str,
    /// At a gateway: the Gateway (`namespace/name`) and the servers the
    /// request's connection came in on.
    pub gateway: Option<(&'a str, &'a [usize])>,
}

impl std::fmt::Debug for PlanRequest<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlanRequest")
            .field("host", &self.host)
            .field("info", &self.info)
            .field("gateway", &self.gateway)
            .finish_non_exhaustive()
    }
}

static NO_LABELS: std::sync::LazyLock<Labels> = std::sync::LazyLock::new(Labels::new);

impl<'a> PlanRequest<'a> {
    /// A `GET /` for mesh traffic to `host:port` from a caller in
    /// `namespace` with no labels: the request of doc examples and tests.
    pub fn mesh(
        host: &'a str,
        port: u16,
        namespace: &'a str,
        headers: &'a dyn HeaderLookup,
    ) -> Self {
        Self {
            host,
            info: RequestInfo {
                method: "GET",
                path_and_query: "/",
                authority: host,
                scheme: "http",
                port,
                headers,
                source_labels: &NO_LABELS,
                source_namespace: Some(namespace),
                gateway: None,
                auth: None,
            },
            namespace,
            gateway: None,
        }
    }
}

/// What the matched rule (or the default route) does.
#[derive(Debug, Clone)]
pub enum PlannedAction<'s> {
    /// Forward to one of these, by weight.
    Forward(Cow<'s, [WeightedDestination]>),
    /// Answer with a redirect.
    Redirect(&'s HttpRedirect),
    /// Answer directly.
    DirectResponse(&'s HttpDirectResponse),
}

/// Step 1 of the plan: the rule and what it does.
#[derive(Debug, Clone)]
pub struct RoutePlan<'s> {
    /// The matching rule and the index of its matching `match` entry;
    /// `None` for the default route (no VirtualService).
    pub rule: Option<(&'s HttpRouteRule, usize)>,
    /// The service asked for (mesh traffic; `None` at a gateway).
    pub service: Option<&'s Service>,
    /// What happens.
    pub action: PlannedAction<'s>,
}

impl RoutePlan<'_> {
    /// The rule's timeout, if it sets one (0 means none, as in Istio).
    pub fn timeout(&self) -> Option<Duration> {
        self.rule
            .and_then(|(r, _)| r.timeout)
            .map(|d| d.0)
            .filter(|d| !d.is_zero())
    }

    /// The retry policy: the rule's, or Istio's default when it names none.
    pub fn retry_policy(&self) -> Cow<'static, RetryPolicy> {
        static DEFAULT: std::sync::LazyLock<RetryPolicy> =
            std::sync::LazyLock::new(RetryPolicy::istio_default);
        match self.rule.and_then(|(r, _)| r.retries.as_ref()) {
            Some(r) => Cow::Owned(RetryPolicy::from_config(Some(r))),
            None => Cow::Borrowed(&DEFAULT),
        }
    }
}

/// Step 1: the rule for `req` and what it does, or why there is none.
pub fn route<'s>(snap: &'s Snapshot, req: &PlanRequest<'_>) -> Result<RoutePlan<'s>, PlanError> {
    let (rules, service): (&'s [std::sync::Arc<HttpRouteRule>], Option<&'s Service>) =
        match req.gateway {
            Some((gw, servers)) => {
                let not_found = || PlanError::NoRuleMatched {
                    vs: format!(
                        "any VirtualService bound to Gateway {gw} for host {} on this server",
                        req.host
                    ),
                };
                let entry = snap.gateways.get(gw).ok_or_else(not_found)?;
                match entry.route(servers, req.host) {
                    GatewayRoute::Rules(rules) => (rules, None),
                    GatewayRoute::OtherServer | GatewayRoute::Unknown => return Err(not_found()),
                }
            }
            None => {
                let svc = snap.service(req.host, req.namespace).ok_or_else(|| {
                    PlanError::UnknownHost {
                        host: req.host.to_owned(),
                    }
                })?;
                let port = req.info.port;
                let sp = svc.port(port).ok_or_else(|| PlanError::UnknownPort {
                    host: svc.host.clone(),
                    port,
                })?;
                (&sp.http_routes, Some(svc))
            }
        };
    if rules.is_empty() {
        let svc = service.ok_or_else(|| PlanError::UnknownHost {
            host: req.host.to_owned(),
        })?;
        return Ok(RoutePlan {
            rule: None,
            service,
            action: PlannedAction::Forward(Cow::Owned(vec![default_destination(
                svc,
                Some(req.info.port),
            )])),
        });
    }
    let (_, m, rule) =
        crate::route::first_match(rules, &req.info).ok_or_else(|| PlanError::NoRuleMatched {
            vs: rules[0].source.to_string(),
        })?;
    let action = match &rule.action {
        RouteAction::Forward(ds) => PlannedAction::Forward(Cow::Borrowed(ds.as_slice())),
        RouteAction::Redirect(r) => PlannedAction::Redirect(r),
        RouteAction::DirectResponse(d) => PlannedAction::DirectResponse(d),
    };
    Ok(RoutePlan {
        rule: Some((rule.as_ref(), m)),
        service,
        action,
    })
}

/// The destinations of opaque TCP to a service port from a caller
/// carrying `labels`: the first of its VirtualServices' TCP rules for that
/// caller, or every workload of the service.
pub fn tcp_destinations<'s>(
    svc: &Service,
    sp: &'s ServicePortEntry,
    labels: &Labels,
) -> Cow<'s, [WeightedDestination]> {
    match sp.tcp_rule(labels) {
        Some(r) => Cow::Borrowed(r.route.as_slice()),
        None => Cow::Owned(vec![default_destination(svc, Some(sp.number))]),
    }
}

/// The route to every workload of a service, when no VirtualService says
/// otherwise.
pub fn default_destination(svc: &Service, port: Option<u16>) -> WeightedDestination {
    WeightedDestination {
        host: svc.host.clone(),
        subset: None,
        port,
        weight: 100,
        headers: None,
    }
}

/// Chooses among weighted destinations: sticky by `key` when there is one,
/// by weight with a draw of `next_u64` otherwise. Destinations that cannot
/// serve (`available` false) are skipped while another can (failover), so
/// a dead canary does not take its share of users down with it.
pub fn choose_destination(
    dests: &[WeightedDestination],
    available: impl Fn(&WeightedDestination) -> bool,
    key: Option<u64>,
    mut next_u64: impl FnMut() -> u64,
) -> Option<&WeightedDestination> {
    if let [only] = dests {
        // The only one is chosen whether or not it can serve (failover
        // needs another): its endpoints are not resolved.
        if key.is_none() {
            // The draw the weighted choice below makes, kept so that seeded
            // sequences do not shift.
            next_u64();
        }
        return (only.weight > 0).then_some(only);
    }
    let up: Vec<bool> = dests.iter().map(&available).collect();
    let any_up = dests.iter().zip(&up).any(|(d, u)| *u && d.weight > 0);
    let weight = |i: usize| if !any_up || up[i] { dests[i].weight } else { 0 };
    let i = match key {
        Some(k) => {
            // Only sticky choices need the names: no allocation otherwise.
            let names: Vec<String> = dests
                .iter()
                .map(|d| format!("{}/{}", d.host, d.subset.as_deref().unwrap_or("")))
                .collect();
            crate::balance::sticky_pick(
                names
                    .iter()
                    .enumerate()
                    .map(|(i, n)| (n.as_str(), weight(i))),
                k,
            )?
        }
        None => {
            let weights: Vec<u32> = (0..dests.len()).map(weight).collect();
            crate::route::pick_weighted(&weights, next_u64())?
        }
    };
    dests.get(i)
}

/// The service port a destination means: its own, else the port the
/// request came on when the service has it, else the service's only port
/// (a gateway on 8443 routing to a service on 80).
pub fn dest_port(snap: &Snapshot, d: &WeightedDestination, request_port: u16) -> u16 {
    if let Some(p) = d.port {
        return p;
    }
    match snap.service_for(&d.host) {
        Some(s) if s.port(request_port).is_none() && s.ports.len() == 1 => s.ports[0].number,
        _ => request_port,
    }
}

/// An endpoint of a destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `address:port`.
    pub key: String,
    /// Index into [`Snapshot::workloads`].
    pub workload: usize,
    /// The workload port.
    pub port: u16,
}

/// How the mesh connects to an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointTls {
    /// Mesh mTLS, the server verified by its SPIFFE ID (secure naming).
    MeshMtls,
    /// Plaintext.
    Plaintext,
    /// TLS the mesh originates to a server outside it (DestinationRule
    /// `tls: SIMPLE`): the server verified by its DNS name (`sni`, else the
    /// host) against `caCertificates`, else the system's roots.
    Originate,
}

/// Step 2: a destination resolved against the snapshot.
#[derive(Debug, Clone)]
pub struct DestinationPlan<'s> {
    /// The destination's service.
    pub service: &'s Service,
    /// The service port it means.
    pub port: &'s ServicePortEntry,
    /// The subset, if the destination names one.
    pub subset: Option<&'s str>,
    /// The endpoints: the subset's workloads, or all of the service's.
    pub endpoints: Arc<[Endpoint]>,
    /// The traffic policy in force (load balancing, pool, outlier
    /// detection, TLS), merged as Istio merges it.
    pub policy: TrafficPolicy,
}

/// Resolves a destination, or says why it cannot be reached.
pub fn resolve_destination<'s>(
    snap: &'s Snapshot,
    d: &'s WeightedDestination,
    request_port: u16,
) -> Result<DestinationPlan<'s>, PlanError> {
    let number = dest_port(snap, d, request_port);
    let service = snap
        .service_for(&d.host)
        .ok_or_else(|| PlanError::UnknownHost {
            host: d.host.clone(),
        })?;
    let port = service.port(number).ok_or_else(|| PlanError::UnknownPort {
        host: d.host.clone(),
        port: number,
    })?;
    let subset = d.subset.as_deref();
    let endpoints =
        endpoints_shared(snap, service, port, subset).ok_or_else(|| PlanError::NoSubset {
            host: d.host.clone(),
            subset: subset.unwrap_or_default().to_owned(),
        })?;
    Ok(DestinationPlan {
        service,
        port,
        subset,
        endpoints,
        policy: effective_policy(snap, &service.host, number, subset),
    })
}

/// The endpoints of a destination alone ([`resolve_destination`] without
/// its policy): what a weighted choice asks of each candidate per request.
/// `None` when the host, port or subset does not resolve.
pub fn destination_endpoints(
    snap: &Snapshot,
    d: &WeightedDestination,
    request_port: u16,
) -> Option<Arc<[Endpoint]>> {
    let service = snap.service_for(&d.host)?;
    let port = service.port(dest_port(snap, d, request_port))?;
    endpoints_shared(snap, service, port, d.subset.as_deref())
}

impl DestinationPlan<'_> {
    /// `host` or `host subset s`, for messages.
    pub fn target(&self) -> String {
        match self.subset {
            Some(s) => format!("{} subset {s}", self.service.host),
            None => self.service.host.clone(),
        }
    }

    /// How to connect to `ep`: by the DestinationRule's client TLS and,
    /// when it says nothing, the server's inbound mode. A conflict `check`
    /// would report is refused with the same words (rather than a
    /// handshake failing somewhere with a bare 503), and so is a client
    /// TLS the mesh's client cannot do.
    pub fn endpoint_tls(&self, snap: &Snapshot, ep: &Endpoint) -> Result<EndpointTls, String> {
        endpoint_tls(snap, self.service, self.port.number, self.subset, ep)
    }

    /// The identities that may answer at `ep` (secure naming): the
    /// workload's own.
    pub fn identities(&self, snap: &Snapshot, ep: &Endpoint) -> Vec<SpiffeId> {
        identities(snap, ep)
    }
}

/// The identities that may answer at `ep` (secure naming): the workload's
/// own. [`DestinationPlan::identities`] for a caller that keeps only the
/// endpoint.
pub fn identities(snap: &Snapshot, ep: &Endpoint) -> Vec<SpiffeId> {
    identities_in(snap, ep).to_vec()
}

/// [`identities`], borrowed from the snapshot: for a caller that looks the
/// set up rather than keeping a copy of it per request.
pub fn identities_in<'s>(snap: &'s Snapshot, ep: &Endpoint) -> &'s [SpiffeId] {
    snap.workloads[ep.workload].serving_identities()
}

/// How to connect to `ep` of `service`'s port `port` (and `subset`): by the
/// DestinationRule's client TLS and, when it says nothing, the server's
/// inbound mode. A conflict `check` would report is refused with the same
/// words (rather than a handshake failing somewhere with a bare 503), and
/// so is a client TLS the mesh's client cannot do.
/// [`DestinationPlan::endpoint_tls`] for a caller that keeps only names.
pub fn endpoint_tls(
    snap: &Snapshot,
    service: &Service,
    port: u16,
    subset: Option<&str>,
    ep: &Endpoint,
) -> Result<EndpointTls, String> {
    let client = snap.client_tls(&service.host, port, subset);
    if service.location == Location::MeshExternal {
        return match client.mode {
            None | Some(ClientTlsMode::Disable) => Ok(EndpointTls::Plaintext),
            Some(ClientTlsMode::Simple) => match client.settings.as_ref() {
                Some(t) if !t.subject_alt_names.is_empty() => Err(
                    "client TLS mode SIMPLE with subjectAltNames is not supported yet (the server is verified by its DNS name)"
                        .to_owned(),
                ),
                _ if !service
                    .port(port)
                    .is_some_and(|p| matches!(p.protocol, Protocol::Http | Protocol::Https)) =>
                {
                    Err("TLS origination (SIMPLE) is done for HTTP/1.1 ports only (HTTP, HTTPS), not for HTTP/2, gRPC or opaque TCP".to_owned())
                }
                _ => Ok(EndpointTls::Originate),
            },
            Some(m) => Err(format!(
                "client TLS mode {m} towards a service outside the mesh is not supported yet"
            )),
        };
    }
    let w = &snap.workloads[ep.workload];
    let server = snap.inbound_mode(w, ep.port);
    if let Some(why) = crate::analyze::tls_conflict(server.mode, client.mode) {
        let by = |r: Option<&crate::resources::ResourceRef>| {
            r.map_or_else(|| "the mesh default".to_owned(), |r| r.to_string())
        };
        return Err(format!(
            "TLS conflict: {why} (server mode from {}, client mode from {})",
            by(server.decided_by.as_deref()),
            by(client.decided_by.as_ref())
        ));
    }
    match client.mode {
        Some(ClientTlsMode::IstioMutual) => Ok(EndpointTls::MeshMtls),
        Some(ClientTlsMode::Disable) => Ok(EndpointTls::Plaintext),
        Some(m) => Err(format!(
            "client TLS mode {m} is not supported by the mesh client yet"
        )),
        None if server.mode == MtlsMode::Disable => Ok(EndpointTls::Plaintext),
        None => Ok(EndpointTls::MeshMtls),
    }
}

/// [`endpoints`], made once per snapshot, service, port and subset and
/// shared: what the data plane asks per request.
pub fn endpoints_shared(
    snap: &Snapshot,
    svc: &Service,
    port: &ServicePortEntry,
    subset: Option<&str>,
) -> Option<Arc<[Endpoint]>> {
    svc.endpoint_lists
        .get_or_make(port.number, subset, || endpoints(snap, svc, port, subset))
}

/// The endpoints of a destination: the subset's healthy workloads, or all
/// of the service's (a draining workload takes no new requests); `None`
/// when the subset is not defined.
pub fn endpoints(
    snap: &Snapshot,
    svc: &Service,
    port: &ServicePortEntry,
    subset: Option<&str>,
) -> Option<Vec<Endpoint>> {
    let members: &[usize] = match subset {
        None => &svc.workloads,
        Some(s) => {
            &snap
                .destination_policies
                .get(&svc.host)?
                .subset(s)?
                .workloads
        }
    };
    Some(
        members
            .iter()
            // An entry without an address (a WorkloadEntry with only a
            // `network`) is reachable only through its network's gateway,
            // which this mesh has none of: never dialled.
            .filter(|i| snap.workloads[**i].healthy && !snap.workloads[**i].address.is_empty())
            .map(|i| {
                let w = &snap.workloads[*i];
                let p = svc.target_port(port, w);
                Endpoint {
                    key: endpoint_key(&w.address, p),
                    workload: *i,
                    port: p,
                }
            })
            .collect(),
    )
}

/// How Istio writes an endpoint on a Unix domain socket: `unix:///path`,
/// or `unix://@name` in Linux's abstract namespace.
pub const UNIX_PREFIX: &str = "unix://";

/// The socket an endpoint key (or address) names, if it is one: the path,
/// or `@name`.
pub fn unix_socket(key: &str) -> Option<&str> {
    key.strip_prefix(UNIX_PREFIX).filter(|p| !p.is_empty())
}

/// The traffic policy for a host, port and subset, merged the way Istio
/// merges: subset over host, port-level over the whole.
pub fn effective_policy(
    snap: &Snapshot,
    host: &str,
    port: u16,
    subset: Option<&str>,
) -> TrafficPolicy {
    let Some(dp) = snap.destination_policies.get(host) else {
        return TrafficPolicy::default();
    };
    let flatten = |p: &TrafficPolicy| {
        let mut out = p.clone();
        if let Some(pl) = p
            .port_level_settings
            .iter()
            .find(|pl| pl.port.number == port)
        {
            out.load_balancer = pl.load_balancer.clone().or(out.load_balancer);
            out.connection_pool = pl.connection_pool.clone().or(out.connection_pool);
            out.outlier_detection = pl.outlier_detection.clone().or(out.outlier_detection);
            out.tls = pl.tls.clone().or(out.tls);
        }
        out
    };
    let mut merged = dp.traffic_policy.as_ref().map(flatten).unwrap_or_default();
    if let Some(sp) = subset
        .and_then(|s| dp.subset(s))
        .and_then(|s| s.traffic_policy.as_ref())
    {
        let sp = flatten(sp);
        merged.load_balancer = sp.load_balancer.or(merged.load_balancer);
        merged.connection_pool = sp.connection_pool.or(merged.connection_pool);
        merged.outlier_detection = sp.outlier_detection.or(merged.outlier_detection);
        merged.tls = sp.tls.or(merged.tls);
    }
    merged
}

/// How long a dial to an endpoint may take when no DestinationRule says
/// (`connectionPool.tcp.connectTimeout`): Istio's default, 10 s.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The connect timeout a traffic policy gives (`connectionPool.tcp.
/// connectTimeout`), else [`DEFAULT_CONNECT_TIMEOUT`].
pub fn connect_timeout(policy: &TrafficPolicy) -> Duration {
    policy
        .connection_pool
        .as_ref()
        .and_then(|cp| cp.tcp.as_ref())
        .and_then(|t| t.connect_timeout)
        .map_or(DEFAULT_CONNECT_TIMEOUT, |d| d.0)
        .max(Duration::from_millis(1))
}

/// How long an HTTP/2 PING may go unanswered when `http2KeepAlive` names
/// no `timeout` (gRPC's default keepalive timeout).
pub const DEFAULT_H2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// What a DestinationRule says of each HTTP connection to its endpoints,
/// beyond the pool's limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct HttpConnection {
    /// `http2KeepAlive`: a PING every `.0`, the connection closed when one
    /// goes unanswered for `.1`.
    pub h2_keep_alive: Option<(Duration, Duration)>,
    /// `maxRequestsPerConnection` (unset when 0).
    pub max_requests: Option<u32>,
}

/// The [`HttpConnection`] of `policy`.
pub fn http_connection(policy: &TrafficPolicy) -> HttpConnection {
    let http = policy
        .connection_pool
        .as_ref()
        .and_then(|cp| cp.http.as_ref());
    HttpConnection {
        h2_keep_alive: http.and_then(|h| h.http2_keep_alive).and_then(|k| {
            Some((
                k.interval?.0,
                k.timeout.map_or(DEFAULT_H2_KEEP_ALIVE_TIMEOUT, |t| t.0),
            ))
        }),
        max_requests: http
            .and_then(|h| h.max_requests_per_connection)
            .filter(|n| *n > 0),
    }
}

/// Whether HTTP/1.1 requests to a destination go upstream as HTTP/2 over
/// mesh mTLS: its DestinationRule's `connectionPool.http.h2UpgradePolicy`,
/// else (`DEFAULT` or unset) MeshConfig's `h2UpgradePolicy` (Istio's
/// default: do not upgrade).
pub fn upgrades_h2(snap: &Snapshot, policy: &TrafficPolicy) -> bool {
    use crate::meshconfig::MeshH2UpgradePolicy;
    use crate::resources::networking::H2UpgradePolicy;
    match policy
        .connection_pool
        .as_ref()
        .and_then(|cp| cp.http.as_ref())
        .and_then(|h| h.h2_upgrade_policy)
    {
        Some(H2UpgradePolicy::Upgrade) => true,
        Some(H2UpgradePolicy::DoNotUpgrade) => false,
        Some(H2UpgradePolicy::Default) | None => {
            snap.mesh.h2_upgrade_policy == MeshH2UpgradePolicy::Upgrade
        }
    }
}

/// What opaque TCP can be sent as: mesh mTLS or plaintext. TLS
/// origination (a DestinationRule's `tls: SIMPLE`) is done for HTTP only,
/// so a TCP connection that asks for it is refused, never sent in the
/// clear: the TCP router and `explain` both read this.
pub fn opaque_tls(tls: EndpointTls) -> Result<EndpointTls, String> {
    match tls {
        EndpointTls::Originate => Err(
            "TLS origination (SIMPLE) is done for HTTP requests only; this is opaque TCP"
                .to_owned(),
        ),
        other => Ok(other),
    }
}

/// What the original destination of a captured connection is, in the mesh.
#[derive(Debug, Clone)]
pub enum CapturedDestination<'s> {
    /// A virtual IP of the service (ServiceEntry `addresses`) and one of
    /// its ports: routed as a connection to the service is.
    Service {
        /// The service.
        service: &'s Service,
        /// The port.
        port: &'s ServicePortEntry,
    },
    /// A workload's own address and a port it serves a service on: that
    /// endpoint, secured as an endpoint of that service is.
    Endpoint {
        /// The service the workload serves on that port.
        service: &'s Service,
        /// The service port.
        port: &'s ServicePortEntry,
        /// The endpoint addressed.
        endpoint: Endpoint,
    },
    /// No service and no workload of the mesh: the outbound traffic
    /// policy decides (passthrough or refusal).
    Unknown,
}

/// Finds the service (or the endpoint) a captured connection was addressed
/// to. When several services with the port have addresses containing the
/// address, the most specific block wins, then the first host by name
/// (services may share an address on different ports); when a workload serves
/// several services on the port, the first host by name: the answer never
/// depends on the order of the files.
pub fn captured(snap: &Snapshot, dst: std::net::SocketAddr) -> CapturedDestination<'_> {
    let ip = dst.ip().to_canonical();
    // Services sharing an address on different ports are told apart by
    // the port: among those with the port, the most specific block wins.
    let by_vip = snap
        .services_with_addresses()
        .filter(|s| s.port(dst.port()).is_some())
        .filter_map(|s| {
            let prefix = s
                .addresses
                .iter()
                .filter(|b| b.contains(ip))
                .map(crate::net::IpBlock::prefix)
                .max()?;
            Some((prefix, s))
        })
        .max_by(|(pa, a), (pb, b)| pa.cmp(pb).then_with(|| b.host.cmp(&a.host)));
    if let Some((_, service)) = by_vip {
        // A `resolution: NONE` entry's addresses (often a whole range) may
        // hold mesh workloads: a connection to one of them is to that
        // endpoint, secured as its service is, never passed through.
        if service.resolution == Resolution::None {
            if let Some(endpoint) = captured_endpoint(snap, ip, dst.port()) {
                return endpoint;
            }
        }
        return match service.port(dst.port()) {
            Some(port) => CapturedDestination::Service { service, port },
            None => CapturedDestination::Unknown,
        };
    }
    captured_endpoint(snap, ip, dst.port()).unwrap_or(CapturedDestination::Unknown)
}

/// The endpoint of the mesh a captured connection to `ip:port` was made
/// to: a workload of that address serving a service on that port (the
/// first host by name when it serves several).
fn captured_endpoint(
    snap: &Snapshot,
    ip: std::net::IpAddr,
    dst_port: u16,
) -> Option<CapturedDestination<'_>> {
    let dst = std::net::SocketAddr::new(ip, dst_port);
    let mut best: Option<CapturedDestination<'_>> = None;
    // The workloads at that address, and the services each serves: from
    // the snapshot's indexes, never a scan of the mesh per connection.
    for &i in snap.workloads_at(ip) {
        let w = &snap.workloads[i];
        let services = snap
            .hosts_served_by(i)
            .iter()
            .filter_map(|h| snap.services.get(h))
            .filter(|s| s.workloads.contains(&i));
        for service in services {
            let Some(port) = service
                .ports
                .iter()
                .find(|p| service.target_port(p, w) == dst.port())
            else {
                continue;
            };
            let better = match &best {
                Some(CapturedDestination::Endpoint { service: b, .. }) => service.host < b.host,
                _ => true,
            };
            if better {
                best = Some(CapturedDestination::Endpoint {
                    service,
                    port,
                    endpoint: Endpoint {
                        key: endpoint_key(&w.address, dst.port()),
                        workload: i,
                        port: dst.port(),
                    },
                });
            }
        }
    }
    best
}

/// `address:port`, with an IPv6 address in brackets (`[fd00::1]:80`), so
/// that the key parses as a socket address and names the endpoint in URIs.
pub fn endpoint_key(address: &str, port: u16) -> String {
    // A Unix socket has no port: the address is the key.
    if address.starts_with(UNIX_PREFIX) {
        return address.to_owned();
    }
    // Every request resolves its destination's keys, so only an address
    // that may be IPv6 is parsed (for its brackets and canonical form). An
    // IPv4 address std parses is already its own `Display` (the parser
    // takes no leading zeros and no other notation), and a name is written
    // as it is, so both are just joined to the port.
    if address.contains(':') {
        if let Ok(ip) = address.parse::<std::net::IpAddr>() {
            return std::net::SocketAddr::new(ip, port).to_string();
        }
    }
    let mut key = String::with_capacity(address.len() + 6);
    key.push_str(address);
    key.push(':');
    let mut digits = [0u8; 5];
    let mut n = port;
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for d in &digits[i..] {
        key.push(char::from(*d));
    }
    key
}

#[cfg(test)]
mod tests {
    use super::endpoint_key;

    /// What `endpoint_key` wrote before it skipped the parse: a socket
    /// address's `Display` when the address parses, else `address:port`.
    fn by_socket_addr(address: &str, port: u16) -> String {
        match address.parse::<std::net::IpAddr>() {
            Ok(ip) => std::net::SocketAddr::new(ip, port).to_string(),
            Err(_) => format!("{address}:{port}"),
        }
    }

    #[test]
    fn keys_are_what_a_socket_address_displays() {
        let addresses = [
            "10.0.0.1",
            "127.0.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "010.0.0.1",
            "1.2.3",
            "fd00::1",
            "FD00:0:0::1",
            "::ffff:10.0.0.1",
            "::",
            "[fd00::1]",
            "fe80::1%eth0",
            "reviews.default.svc.cluster.local",
            "localhost",
            "",
        ];
        for a in addresses {
            for p in [0, 1, 9, 10, 80, 443, 8080, 9080, 10000, 65535] {
                assert_eq!(endpoint_key(a, p), by_socket_addr(a, p), "{a} {p}");
            }
        }
    }
}
