//! The routing plan as Envoy's v3 resources, for gRPC's proxyless xDS
//! clients (gRFC A27, A28, A29, A36): what a Python, Go or Java gRPC
//! channel with an `xds:///host:port` target, or an xDS-enabled gRPC
//! server, reads from the control plane.
//!
//! Pure functions of a [`Snapshot`], the same one a Rust data plane
//! compiles from its view, so a gRPC client and a `mesh-tower` client of
//! the same workload take the same decisions where gRPC can take them.
//!
//! - **Listener** `host:port` (the target's name): an API listener whose
//!   HTTP connection manager carries the route table inline (no RDS round
//!   trip): one virtual host, the service's VirtualService rules in order,
//!   each `match` alternative a route, weighted destinations as weighted
//!   clusters, the rule's timeout as `max_stream_duration`, its retries as
//!   a retry policy of gRPC status codes, its fault as the fault filter's
//!   per-route config.
//! - **Cluster** `outbound|port|subset|host` (Istio's names): EDS, the
//!   traffic policy's load balancer (round robin, least request, ring
//!   hash), `http2MaxRequests` as the circuit breaker, and mTLS (A29) with
//!   the certificates of the `file_watcher` provider named
//!   [`CERT_PROVIDER`] in the bootstrap and the SPIFFE IDs of the
//!   destination's workloads as the only acceptable server names (secure
//!   naming).
//! - **ClusterLoadAssignment** of the same name: the destination's
//!   endpoints, one locality of weight 1 (gRPC ignores a locality without
//!   a weight).
//! - **Listener** `SERVER_LISTENER_PREFIX ip:port` for an xDS server: its
//!   address, one filter chain that serves every route, and mTLS as the
//!   workload's PeerAuthentication says (STRICT requires a client
//!   certificate; PERMISSIVE, which needs a TLS sniff gRPC does not have,
//!   is served STRICT and said so).
//!
//! What gRPC cannot do is left out and said in [`Warning`]s, never dropped
//! in silence: a match on source labels, the scheme, the method or query
//! parameters, redirects and direct responses, mirrors, per-try timeouts,
//! retry conditions that are not gRPC status codes, random load balancing,
//! outlier detection by consecutive errors. Where leaving out would fail
//! open it fails closed instead. A server workload's AuthorizationPolicies
//! become gRPC's RBAC ([`crate::grpc_rbac`]), what cannot be translated
//! resolved against the caller.

use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, EdsClusterConfig, LbPolicy,
};
use envoy_types::pb::envoy::config::cluster::v3::circuit_breakers::Thresholds;
use envoy_types::pb::envoy::config::cluster::v3::{CircuitBreakers, Cluster};
use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType as SocketConfig;
use envoy_types::pb::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ApiVersion, ConfigSource, HealthStatus, Locality,
    SocketAddress, TransportSocket,
};
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint as EnvoyEndpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType as FilterConfig;
use envoy_types::pb::envoy::config::listener::v3::{ApiListener, Filter, FilterChain, Listener};
use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::{ClusterSpecifier, MaxStreamDuration};
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::config::route::v3::weighted_cluster::ClusterWeight;
use envoy_types::pb::envoy::config::route::v3::{
    HeaderMatcher, NonForwardingAction, RetryPolicy, Route, RouteAction, RouteConfiguration,
    RouteMatch as EnvoyRouteMatch, VirtualHost, WeightedCluster,
};
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::FaultDelay;
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::fault_delay::FaultDelaySecifier;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::fault_abort::ErrorType;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{FaultAbort, HttpFault};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType as HttpFilterConfig;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::ValidationContextType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateProviderPluginInstance, CertificateValidationContext, CommonTlsContext,
    DownstreamTlsContext, UpstreamTlsContext,
};
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::envoy::r#type::matcher::v3::{RegexMatcher, StringMatcher};
use envoy_types::pb::envoy::r#type::v3::FractionalPercent;
use envoy_types::pb::envoy::r#type::v3::fractional_percent::DenominatorType;
use envoy_types::pb::google::protobuf::{Any, BoolValue, Duration as PbDuration, UInt32Value};
use envoy_types::util::pack_any;
use mesh_core::plan::{self, EndpointTls};
use mesh_core::resources::networking::{HttpFaultInjection, SimpleLb, TrafficPolicy};
use mesh_core::resources::security::MtlsMode;
use mesh_core::route::{HttpRouteRule, Matcher, RouteAction as MeshAction, RouteMatch};
use mesh_core::snapshot::{Snapshot, Workload};

/// Envoy's Listener type URL.
pub const LISTENER_TYPE: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
/// Envoy's RouteConfiguration type URL (routes travel inside listeners).
pub const ROUTE_TYPE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
/// Envoy's Cluster type URL.
pub const CLUSTER_TYPE: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
/// Envoy's ClusterLoadAssignment type URL.
pub const ENDPOINT_TYPE: &str =
    "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";

/// The prefix of an xDS server's listener name; the bootstrap's
/// `server_listener_resource_name_template` is this followed by `%s`.
pub const SERVER_LISTENER_PREFIX: &str = "xds.mesh.local/grpc/lds/inbound/";

/// The certificate provider instance the bootstrap defines (a
/// `file_watcher` over the workload's SVID files).
pub const CERT_PROVIDER: &str = "default";

const ROUTER_FILTER: &str = "envoy.filters.http.router";
const FAULT_FILTER: &str = "envoy.filters.http.fault";
const HCM_FILTER: &str = "envoy.filters.network.http_connection_manager";
const TLS_SOCKET: &str = "envoy.transport_sockets.tls";
const RBAC_FILTER: &str = "envoy.filters.http.rbac";

/// The gRPC status codes a retry policy may name (gRFC A44).
const GRPC_RETRY_ON: [&str; 5] = [
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

/// Something of the configuration a gRPC client cannot honour, left out.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Warning {
    /// The xDS resource it concerns.
    pub resource: String,
    /// What was left out and why.
    pub message: String,
}

/// What was left out, collected while translating.
#[derive(Debug, Default)]
pub struct Warnings(pub Vec<Warning>);

impl Warnings {
    fn push(&mut self, resource: &str, message: impl Into<String>) {
        self.0.push(Warning {
            resource: resource.to_owned(),
            message: message.into(),
        });
    }
}

/// The cluster name of a destination: `outbound|port|subset|host`.
pub fn cluster_name(host: &str, port: u16, subset: Option<&str>) -> String {
    format!("outbound|{port}|{}|{host}", subset.unwrap_or_default())
}

/// The host, port and subset a cluster name stands for.
pub fn parse_cluster_name(name: &str) -> Option<(&str, u16, Option<&str>)> {
    let mut parts = name.splitn(4, '|');
    if parts.next()? != "outbound" {
        return None;
    }
    let port = parts.next()?.parse().ok()?;
    let subset = parts.next()?;
    let host = parts.next()?;
    Some((host, port, (!subset.is_empty()).then_some(subset)))
}

fn duration(d: Duration) -> PbDuration {
    PbDuration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

fn million(percent: Option<f64>) -> FractionalPercent {
    let p = percent.unwrap_or(100.0).clamp(0.0, 100.0);
    FractionalPercent {
        // Whole parts per million: `p` is at most 100.
        numerator: (p * 10_000.0).round() as u32,
        denominator: DenominatorType::Million as i32,
    }
}

fn string_matcher(m: &Matcher, ignore_case: bool) -> StringMatcher {
    let pattern = match m {
        Matcher::Exact(s) => MatchPattern::Exact(s.clone()),
        Matcher::Prefix(s) => MatchPattern::Prefix(s.clone()),
        Matcher::Regex(r) => MatchPattern::SafeRegex(RegexMatcher {
            regex: r.as_str().to_owned(),
            ..RegexMatcher::default()
        }),
    };
    StringMatcher {
        match_pattern: Some(pattern),
        ignore_case,
    }
}

fn header_matcher(name: &str, m: &Matcher, invert: bool) -> HeaderMatcher {
    HeaderMatcher {
        name: name.to_owned(),
        invert_match: invert,
        header_match_specifier: Some(HeaderMatchSpecifier::StringMatch(string_matcher(m, false))),
        ..HeaderMatcher::default()
    }
}

/// One `match` alternative as an Envoy route match, or why gRPC cannot
/// take it (`Ok(None)`: it cannot match on this port at all).
fn route_match(m: &RouteMatch, port: u16) -> Result<Option<EnvoyRouteMatch>, String> {
    if m.port.is_some_and(|p| p != port) {
        return Ok(None);
    }
    let unsupported = [
        (m.scheme.is_some(), "scheme"),
        (m.method.is_some(), "method (every gRPC call is a POST)"),
        (m.authority.is_some(), "authority"),
        (!m.query_params.is_empty(), "queryParams"),
        (!m.source_labels.is_empty(), "sourceLabels"),
        (m.source_namespace.is_some(), "sourceNamespace"),
        (
            m.gateways.iter().any(|g| g != "mesh"),
            "gateways other than mesh",
        ),
    ];
    if let Some((_, what)) = unsupported.iter().find(|(set, _)| *set) {
        return Err(format!(
            "a match on {what} is not supported by gRPC clients"
        ));
    }
    let path = match &m.uri {
        None => PathSpecifier::Prefix(String::new()),
        Some(Matcher::Exact(s)) => PathSpecifier::Path(s.clone()),
        Some(Matcher::Prefix(s)) => PathSpecifier::Prefix(s.clone()),
        Some(Matcher::Regex(r)) => PathSpecifier::SafeRegex(RegexMatcher {
            regex: r.as_str().to_owned(),
            ..RegexMatcher::default()
        }),
    };
    let mut headers: Vec<HeaderMatcher> = m
        .headers
        .iter()
        .map(|(n, v)| header_matcher(n, v, false))
        .collect();
    headers.extend(
        m.without_headers
            .iter()
            .map(|(n, v)| header_matcher(n, v, true)),
    );
    Ok(Some(EnvoyRouteMatch {
        case_sensitive: Some(BoolValue {
            value: !m.ignore_uri_case,
        }),
        headers,
        path_specifier: Some(path),
        ..EnvoyRouteMatch::default()
    }))
}

fn fault_config(f: &HttpFaultInjection) -> HttpFault {
    HttpFault {
        delay: f.delay.as_ref().map(|d| FaultDelay {
            percentage: Some(million(d.percentage.as_ref().map(|p| p.value))),
            fault_delay_secifier: Some(FaultDelaySecifier::FixedDelay(duration(d.fixed_delay.0))),
        }),
        abort: f.abort.as_ref().map(|a| FaultAbort {
            percentage: Some(million(a.percentage.as_ref().map(|p| p.value))),
            error_type: Some(ErrorType::HttpStatus(u32::from(a.http_status))),
        }),
        ..HttpFault::default()
    }
}

/// The route action of a rule that forwards, or why it cannot.
fn route_action(
    snap: &Snapshot,
    rule: Option<&HttpRouteRule>,
    dests: &[mesh_core::route::WeightedDestination],
    port: u16,
    resource: &str,
    warnings: &mut Warnings,
) -> RouteAction {
    let clusters: Vec<ClusterWeight> = dests
        .iter()
        .filter(|d| d.weight > 0)
        .map(|d| ClusterWeight {
            name: cluster_name(&d.host, plan::dest_port(snap, d, port), d.subset.as_deref()),
            weight: Some(UInt32Value { value: d.weight }),
            ..ClusterWeight::default()
        })
        .collect();
    let specifier = match clusters.as_slice() {
        [one] => ClusterSpecifier::Cluster(one.name.clone()),
        _ => ClusterSpecifier::WeightedClusters(WeightedCluster {
            clusters,
            ..WeightedCluster::default()
        }),
    };
    let mut action = RouteAction {
        cluster_specifier: Some(specifier),
        ..RouteAction::default()
    };
    let Some(rule) = rule else {
        return action;
    };
    if let Some(t) = rule.timeout {
        action.max_stream_duration = Some(MaxStreamDuration {
            max_stream_duration: Some(duration(t.0)),
            ..MaxStreamDuration::default()
        });
    }
    if rule.mirror.is_some() {
        warnings.push(
            resource,
            format!(
                "{}: the mirror is not supported by gRPC clients",
                rule.describe()
            ),
        );
    }
    if rule.headers.is_some() || rule.rewrite.is_some() {
        warnings.push(
            resource,
            format!(
                "{}: header manipulation and rewrites are not supported by gRPC clients",
                rule.describe()
            ),
        );
    }
    let policy = mesh_core::plan::RoutePlan {
        rule: Some((rule, 0)),
        service: None,
        action: mesh_core::plan::PlannedAction::Forward(std::borrow::Cow::Borrowed(dests)),
    }
    .retry_policy();
    // Only retries the route asks for: the mesh's default retries only
    // requests safe to repeat, and every gRPC call is a POST.
    if policy.explicit && policy.attempts > 0 {
        let (grpc, other): (Vec<&str>, Vec<&str>) = policy
            .conditions
            .iter()
            .map(String::as_str)
            .partition(|c| GRPC_RETRY_ON.contains(c));
        if !other.is_empty() || !policy.statuses.is_empty() {
            warnings.push(
                resource,
                format!(
                    "{}: retry conditions {:?} are not gRPC status codes; gRPC clients retry on {:?} only",
                    rule.describe(),
                    other,
                    grpc
                ),
            );
        }
        if policy.per_try_timeout.is_some() {
            warnings.push(
                resource,
                format!(
                    "{}: perTryTimeout is not supported by gRPC clients",
                    rule.describe()
                ),
            );
        }
        if !grpc.is_empty() {
            action.retry_policy = Some(RetryPolicy {
                retry_on: grpc.join(","),
                num_retries: Some(UInt32Value {
                    value: policy.attempts,
                }),
                ..RetryPolicy::default()
            });
        }
    }
    action
}

/// The routes of a service port, in rule order.
fn routes(
    snap: &Snapshot,
    svc: &mesh_core::snapshot::Service,
    port: u16,
    resource: &str,
    warnings: &mut Warnings,
) -> Vec<Route> {
    let Some(sp) = svc.port(port) else {
        return Vec::new();
    };
    if sp.http_routes.is_empty() {
        let dest = plan::default_destination(svc, Some(port));
        return vec![Route {
            r#match: Some(EnvoyRouteMatch {
                path_specifier: Some(PathSpecifier::Prefix(String::new())),
                ..EnvoyRouteMatch::default()
            }),
            action: Some(Action::Route(route_action(
                snap,
                None,
                std::slice::from_ref(&dest),
                port,
                resource,
                warnings,
            ))),
            ..Route::default()
        }];
    }
    let mut out = Vec::new();
    for rule in &sp.http_routes {
        let MeshAction::Forward(dests) = &rule.action else {
            warnings.push(
                resource,
                format!(
                    "{}: redirects and direct responses are not supported by gRPC clients",
                    rule.describe()
                ),
            );
            continue;
        };
        let action = route_action(snap, Some(rule), dests, port, resource, warnings);
        let mut per_filter = std::collections::HashMap::new();
        if let Some(f) = &rule.fault {
            per_filter.insert(FAULT_FILTER.to_owned(), pack_any(fault_config(f)));
        }
        let alternatives: Vec<Option<EnvoyRouteMatch>> = if rule.matches.is_empty() {
            vec![Some(EnvoyRouteMatch {
                path_specifier: Some(PathSpecifier::Prefix(String::new())),
                ..EnvoyRouteMatch::default()
            })]
        } else {
            rule.matches
                .iter()
                .filter_map(|m| match route_match(m, port) {
                    Ok(m) => Some(m),
                    Err(why) => {
                        warnings.push(resource, format!("{}: {why}", rule.describe()));
                        None
                    }
                })
                .collect()
        };
        for m in alternatives.into_iter().flatten() {
            out.push(Route {
                r#match: Some(m),
                action: Some(Action::Route(action.clone())),
                typed_per_filter_config: per_filter.clone(),
                ..Route::default()
            });
        }
    }
    out
}

fn http_filter(name: &str, config: Any) -> HttpFilter {
    HttpFilter {
        name: name.to_owned(),
        config_type: Some(HttpFilterConfig::TypedConfig(config)),
        ..HttpFilter::default()
    }
}

/// The HTTP connection manager of a client (`fault`: the fault filter,
/// inert unless a route carries a fault config) or of a server (gRPC
/// refuses a listener with a client-only filter: router only).
fn connection_manager(route_config: RouteConfiguration, fault: bool) -> HttpConnectionManager {
    let mut http_filters = Vec::with_capacity(2);
    if fault {
        http_filters.push(http_filter(FAULT_FILTER, pack_any(HttpFault::default())));
    }
    http_filters.push(http_filter(ROUTER_FILTER, pack_any(Router::default())));
    HttpConnectionManager {
        route_specifier: Some(RouteSpecifier::RouteConfig(route_config)),
        http_filters,
        ..HttpConnectionManager::default()
    }
}

/// The listener a gRPC channel with target `xds:///<name>` asks for, for a
/// client in `namespace`: `None` when `name` is no `host:port` of a known
/// service.
pub fn client_listener(
    snap: &Snapshot,
    namespace: &str,
    name: &str,
    warnings: &mut Warnings,
) -> Option<Listener> {
    let (host, port) = name.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let svc = snap.service(host, namespace)?;
    svc.port(port)?;
    let routes = routes(snap, svc, port, name, warnings);
    let route_config = RouteConfiguration {
        name: name.to_owned(),
        virtual_hosts: vec![VirtualHost {
            name: name.to_owned(),
            // The channel looks its virtual host up by the target's name.
            domains: vec![name.to_owned(), host.to_owned()],
            routes,
            ..VirtualHost::default()
        }],
        ..RouteConfiguration::default()
    };
    Some(Listener {
        name: name.to_owned(),
        api_listener: Some(ApiListener {
            api_listener: Some(pack_any(connection_manager(route_config, true))),
        }),
        ..Listener::default()
    })
}

/// The cluster names a listener's routes name, in order, once each.
pub fn clusters_of(listener: &Listener) -> Vec<String> {
    use prost::Message as _;
    let mut out: Vec<String> = Vec::new();
    let Some(any) = listener
        .api_listener
        .as_ref()
        .and_then(|a| a.api_listener.as_ref())
    else {
        return out;
    };
    let Ok(hcm) = HttpConnectionManager::decode(any.value.as_slice()) else {
        return out;
    };
    let Some(RouteSpecifier::RouteConfig(rc)) = hcm.route_specifier else {
        return out;
    };
    let mut push = |n: &str| {
        if !out.iter().any(|o| o == n) {
            out.push(n.to_owned());
        }
    };
    for vh in &rc.virtual_hosts {
        for r in &vh.routes {
            if let Some(Action::Route(a)) = &r.action {
                match &a.cluster_specifier {
                    Some(ClusterSpecifier::Cluster(c)) => push(c),
                    Some(ClusterSpecifier::WeightedClusters(w)) => {
                        w.clusters.iter().for_each(|c| push(&c.name));
                    }
                    _ => {}
                }
            }
        }
    }
    out
}

fn provider() -> Option<CertificateProviderPluginInstance> {
    Some(CertificateProviderPluginInstance {
        instance_name: CERT_PROVIDER.to_owned(),
        certificate_name: String::new(),
    })
}

fn tls_socket(config: Any) -> TransportSocket {
    TransportSocket {
        name: TLS_SOCKET.to_owned(),
        config_type: Some(SocketConfig::TypedConfig(config)),
    }
}

fn lb_policy(policy: &TrafficPolicy, resource: &str, warnings: &mut Warnings) -> LbPolicy {
    let Some(lb) = &policy.load_balancer else {
        return LbPolicy::RoundRobin;
    };
    if lb.consistent_hash.is_some() {
        return LbPolicy::RingHash;
    }
    if lb.slow_start().is_some() {
        warnings.push(
            resource,
            "loadBalancer warmup (slow start) is not supported by gRPC clients: an endpoint that joins gets its full share at once",
        );
    }
    match lb.simple {
        None | Some(SimpleLb::RoundRobin) => LbPolicy::RoundRobin,
        Some(SimpleLb::Unspecified | SimpleLb::LeastConn | SimpleLb::LeastRequest) => {
            LbPolicy::LeastRequest
        }
        Some(SimpleLb::Random) => {
            warnings.push(
                resource,
                "loadBalancer RANDOM is not supported by gRPC clients: round robin instead",
            );
            LbPolicy::RoundRobin
        }
    }
}

/// The cluster `name` (`outbound|port|subset|host`), or `None` when it
/// names no destination of the snapshot.
pub fn cluster(snap: &Snapshot, name: &str, warnings: &mut Warnings) -> Option<Cluster> {
    let (host, port, subset) = parse_cluster_name(name)?;
    let svc = snap.service_for(host)?;
    let sp = svc.port(port)?;
    let endpoints = plan::endpoints(snap, svc, sp, subset)?;
    let policy = plan::effective_policy(snap, &svc.host, port, subset);
    let lb = lb_policy(&policy, name, warnings);
    if let Some(od) = &policy.outlier_detection {
        if od.consecutive_errors.is_some()
            || od.consecutive5xx_errors.is_some()
            || od.consecutive_gateway_errors.is_some()
        {
            warnings.push(
                name,
                "outlierDetection by consecutive errors is not supported by gRPC clients",
            );
        }
    }
    let circuit_breakers = policy
        .connection_pool
        .as_ref()
        .and_then(|p| p.http.as_ref())
        .and_then(|h| h.http2_max_requests)
        .map(|max| CircuitBreakers {
            thresholds: vec![Thresholds {
                max_requests: Some(UInt32Value { value: max }),
                ..Thresholds::default()
            }],
            ..CircuitBreakers::default()
        });
    // One transport for the whole cluster (gRPC has no per-endpoint
    // transport sockets): mTLS if any endpoint takes it, so that a mixed
    // set fails closed towards the plaintext ones.
    let mut mtls = false;
    let mut sans: Vec<String> = Vec::new();
    for ep in &endpoints {
        match plan::endpoint_tls(snap, svc, port, subset, ep) {
            Ok(EndpointTls::MeshMtls) => {
                mtls = true;
                for id in plan::identities_in(snap, ep) {
                    let id = id.to_string();
                    if !sans.contains(&id) {
                        sans.push(id);
                    }
                }
            }
            Ok(EndpointTls::Plaintext) => {}
            // Left out of the endpoints too (`load_assignment`): never sent
            // plaintext where TLS was asked.
            Ok(EndpointTls::Originate) => warnings.push(
                name,
                format!(
                    "endpoint {}: TLS origination (SIMPLE) is not offered to gRPC clients yet; the endpoint is left out",
                    ep.key
                ),
            ),
            Err(why) => warnings.push(name, format!("endpoint {}: {why}", ep.key)),
        }
    }
    // gRPC (A29) reads the SAN matchers from `match_subject_alt_names`;
    // Envoy deprecated it for the typed form, which gRPC C-core ignores.
    #[allow(deprecated)]
    let transport_socket = mtls.then(|| {
        sans.sort();
        tls_socket(pack_any(UpstreamTlsContext {
            common_tls_context: Some(CommonTlsContext {
                tls_certificate_provider_instance: provider(),
                validation_context_type: Some(ValidationContextType::ValidationContext(
                    CertificateValidationContext {
                        ca_certificate_provider_instance: provider(),
                        match_subject_alt_names: sans
                            .iter()
                            .map(|s| StringMatcher {
                                match_pattern: Some(MatchPattern::Exact(s.clone())),
                                ignore_case: false,
                            })
                            .collect(),
                        ..CertificateValidationContext::default()
                    },
                )),
                ..CommonTlsContext::default()
            }),
            ..UpstreamTlsContext::default()
        }))
    });
    Some(Cluster {
        name: name.to_owned(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(EdsClusterConfig {
            eds_config: Some(ads()),
            service_name: name.to_owned(),
        }),
        lb_policy: lb as i32,
        circuit_breakers,
        transport_socket,
        ..Cluster::default()
    })
}

fn ads() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        ..ConfigSource::default()
    }
}

fn socket_address(ip: &str, port: u16) -> Address {
    Address {
        address: Some(AddressKind::SocketAddress(SocketAddress {
            address: ip.to_owned(),
            port_specifier: Some(PortSpecifier::PortValue(u32::from(port))),
            ..SocketAddress::default()
        })),
    }
}

/// The endpoints of cluster `name`, or `None` when it names no
/// destination of the snapshot. Endpoints whose connection the plan
/// refuses (a TLS conflict) are left out, and so are endpoints named by a
/// host (DNS-resolved ServiceEntry hosts): a gRPC client's EDS takes
/// addresses only.
pub fn load_assignment(snap: &Snapshot, name: &str) -> Option<ClusterLoadAssignment> {
    let (host, port, subset) = parse_cluster_name(name)?;
    let svc = snap.service_for(host)?;
    let sp = svc.port(port)?;
    let endpoints = plan::endpoints(snap, svc, sp, subset)?;
    let lb_endpoints = endpoints
        .iter()
        .filter(|ep| {
            snap.workloads[ep.workload]
                .address
                .parse::<std::net::IpAddr>()
                .is_ok()
        })
        .filter(|ep| {
            matches!(
                plan::endpoint_tls(snap, svc, port, subset, ep),
                Ok(EndpointTls::MeshMtls | EndpointTls::Plaintext)
            )
        })
        .map(|ep| LbEndpoint {
            health_status: HealthStatus::Healthy as i32,
            load_balancing_weight: Some(UInt32Value { value: 1 }),
            host_identifier: Some(HostIdentifier::Endpoint(EnvoyEndpoint {
                address: Some(socket_address(
                    &snap.workloads[ep.workload].address,
                    ep.port,
                )),
                ..EnvoyEndpoint::default()
            })),
            ..LbEndpoint::default()
        })
        .collect();
    Some(ClusterLoadAssignment {
        cluster_name: name.to_owned(),
        endpoints: vec![LocalityLbEndpoints {
            locality: Some(Locality::default()),
            lb_endpoints,
            load_balancing_weight: Some(UInt32Value { value: 1 }),
            ..LocalityLbEndpoints::default()
        }],
        ..ClusterLoadAssignment::default()
    })
}

/// The listener an xDS-enabled gRPC server of `workload` asks for when it
/// listens on `ip:port` (`name` is [`SERVER_LISTENER_PREFIX`] and the
/// address): `None` when the port is none of the workload's.
pub fn server_listener(
    snap: &Snapshot,
    workload: &Workload,
    name: &str,
    warnings: &mut Warnings,
) -> Option<Listener> {
    let addr = name.strip_prefix(SERVER_LISTENER_PREFIX)?;
    let (ip, port) = addr.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let ip = ip.trim_start_matches('[').trim_end_matches(']');
    // The compiled inbound ports are its own ports and the target ports of
    // every service it serves (it scanned every service of the mesh).
    let serves = workload.inbound.iter().any(|(p, _)| *p == port);
    if !serves {
        return None;
    }
    let mut listener = Listener {
        name: name.to_owned(),
        address: Some(socket_address(ip, port)),
        ..Listener::default()
    };
    // The workload's AuthorizationPolicies as gRPC's RBAC, what cannot be
    // translated resolved against the caller (crate::grpc_rbac).
    let rbac = crate::grpc_rbac::filters(snap.workload_policies(workload), |w| {
        warnings.push(name, w);
    });
    let mode = snap.inbound_mode(workload, port).mode;
    if mode == MtlsMode::Permissive {
        warnings.push(
            name,
            "PERMISSIVE needs a TLS sniff gRPC servers do not have: served STRICT",
        );
    }
    let transport_socket = (mode != MtlsMode::Disable).then(|| {
        tls_socket(pack_any(DownstreamTlsContext {
            common_tls_context: Some(CommonTlsContext {
                tls_certificate_provider_instance: provider(),
                validation_context_type: Some(ValidationContextType::ValidationContext(
                    CertificateValidationContext {
                        ca_certificate_provider_instance: provider(),
                        ..CertificateValidationContext::default()
                    },
                )),
                ..CommonTlsContext::default()
            }),
            require_client_certificate: Some(BoolValue { value: true }),
            ..DownstreamTlsContext::default()
        }))
    });
    let route_config = RouteConfiguration {
        name: name.to_owned(),
        virtual_hosts: vec![VirtualHost {
            name: name.to_owned(),
            domains: vec!["*".to_owned()],
            routes: vec![Route {
                r#match: Some(EnvoyRouteMatch {
                    path_specifier: Some(PathSpecifier::Prefix(String::new())),
                    ..EnvoyRouteMatch::default()
                }),
                action: Some(Action::NonForwardingAction(NonForwardingAction {})),
                ..Route::default()
            }],
            ..VirtualHost::default()
        }],
        ..RouteConfiguration::default()
    };
    let mut hcm = connection_manager(route_config, false);
    // Filter names must differ within a chain (gRPC NACKs a duplicate,
    // and a NACKed listener leaves the previous one serving: fail open).
    for (i, f) in rbac.into_iter().enumerate() {
        let name = format!("{RBAC_FILTER}.{i}");
        hcm.http_filters.insert(i, http_filter(&name, pack_any(f)));
    }
    listener.filter_chains = vec![FilterChain {
        filters: vec![Filter {
            name: HCM_FILTER.to_owned(),
            config_type: Some(FilterConfig::TypedConfig(pack_any(hcm))),
        }],
        transport_socket,
        ..FilterChain::default()
    }];
    Some(listener)
}

/// What `check` says about gRPC's proxyless clients and servers: for every
/// `GRPC` port of every service, what its listener and clusters leave out,
/// and for every workload serving one under an AuthorizationPolicy, that
/// its calls are all denied. One finding per distinct message, naming the
/// service (code [`GRPC_PROXYLESS_UNSUPPORTED`]).
///
/// [`GRPC_PROXYLESS_UNSUPPORTED`]: mesh_core::analyze::codes::GRPC_PROXYLESS_UNSUPPORTED
pub fn findings(snap: &Snapshot) -> Vec<mesh_core::analyze::Finding> {
    use mesh_core::analyze::{Finding, Severity, codes};
    use mesh_core::resources::networking::Protocol;
    let mut out: Vec<Finding> = Vec::new();
    let mut hosts: Vec<&String> = snap.services.keys().collect();
    hosts.sort();
    for host in hosts {
        let svc = &snap.services[host];
        for sp in svc.ports.iter().filter(|p| p.protocol == Protocol::Grpc) {
            let mut warnings = Warnings::default();
            let name = format!("{host}:{}", sp.number);
            if let Some(l) = client_listener(snap, &svc.namespace, &name, &mut warnings) {
                for c in clusters_of(&l) {
                    cluster(snap, &c, &mut warnings);
                }
            }
            for w in &svc.workloads {
                let workload = &snap.workloads[*w];
                let addr = format!(
                    "{SERVER_LISTENER_PREFIX}{}:{}",
                    workload.address,
                    svc.target_port(sp, workload)
                );
                server_listener(snap, workload, &addr, &mut warnings);
            }
            for w in warnings.0 {
                let message = format!(
                    "gRPC proxyless clients and servers of {name} ({}): {}",
                    w.resource, w.message
                );
                if !out.iter().any(|f| f.message == message) {
                    out.push(Finding {
                        severity: Severity::Warning,
                        code: codes::GRPC_PROXYLESS_UNSUPPORTED,
                        message,
                        resources: vec![svc.source.clone()],
                    });
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::path::Path;

    use prost::Message as _;

    use super::*;

    const ECHO: &str = "echo.demo.svc.cluster.local";

    fn snap(extra: &str) -> Snapshot {
        let yaml = format!(
            r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: echo, namespace: demo}}
spec:
  hosts: [{ECHO}]
  ports: [{{number: 8080, name: grpc, protocol: GRPC}}]
  resolution: STATIC
  workloadSelector: {{labels: {{app: echo}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: echo-v1, namespace: demo}}
spec: {{address: 10.0.0.2, ports: {{grpc: 15051}}, labels: {{app: echo, version: v1}}, serviceAccount: echo}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: echo-v2, namespace: demo}}
spec: {{address: 10.0.0.3, ports: {{grpc: 15051}}, labels: {{app: echo, version: v2}}, serviceAccount: echo-canary}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: echo, namespace: demo}}
spec:
  host: {ECHO}
  trafficPolicy: {{loadBalancer: {{simple: LEAST_REQUEST}}}}
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
{extra}"#
        );
        mesh_core::snapshot::compile(
            &mesh_core::load::load_str(Path::new("t.yaml"), &yaml).unwrap(),
        )
        .unwrap()
    }

    const SPLIT: &str = r#"---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo, namespace: demo}
spec:
  hosts: [echo.demo.svc.cluster.local]
  http:
  - match: [{headers: {x-canary: {exact: "1"}}}, {method: {exact: GET}}]
    route: [{destination: {host: echo.demo.svc.cluster.local, subset: v2}}]
    fault: {abort: {httpStatus: 503, percentage: {value: 50}}}
  - route:
    - {destination: {host: echo.demo.svc.cluster.local, subset: v1}, weight: 90}
    - {destination: {host: echo.demo.svc.cluster.local, subset: v2}, weight: 10}
    timeout: 2s
    retries: {attempts: 3, retryOn: "unavailable,5xx", perTryTimeout: 1s}
"#;

    fn routes_of(l: &Listener) -> Vec<Route> {
        let any = l
            .api_listener
            .as_ref()
            .unwrap()
            .api_listener
            .as_ref()
            .unwrap();
        let hcm = HttpConnectionManager::decode(any.value.as_slice()).unwrap();
        let Some(RouteSpecifier::RouteConfig(rc)) = hcm.route_specifier else {
            panic!("routes inline");
        };
        assert_eq!(rc.virtual_hosts[0].domains[0], format!("{ECHO}:8080"));
        rc.virtual_hosts[0].routes.clone()
    }

    fn action(r: &Route) -> &RouteAction {
        match r.action.as_ref().unwrap() {
            Action::Route(a) => a,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_virtual_service_becomes_routes_of_weighted_clusters() {
        let s = snap(SPLIT);
        let mut w = Warnings::default();
        let l = client_listener(&s, "demo", &format!("{ECHO}:8080"), &mut w).unwrap();
        let routes = routes_of(&l);
        // The header alternative is a route; the method one is left out
        // and said so.
        assert_eq!(routes.len(), 2, "{routes:?}");
        assert!(
            w.0.iter().any(|w| w.message.contains("method")),
            "{:?}",
            w.0
        );
        let first = action(&routes[0]);
        assert_eq!(
            first.cluster_specifier,
            Some(ClusterSpecifier::Cluster(format!(
                "outbound|8080|v2|{ECHO}"
            )))
        );
        assert!(first.retry_policy.is_none(), "no retries asked: none sent");
        assert!(routes[0].typed_per_filter_config.contains_key(FAULT_FILTER));
        let m = routes[0].r#match.as_ref().unwrap();
        assert_eq!(m.headers[0].name, "x-canary");

        let second = action(&routes[1]);
        let Some(ClusterSpecifier::WeightedClusters(wc)) = &second.cluster_specifier else {
            panic!("{second:?}");
        };
        let weights: Vec<(String, u32)> = wc
            .clusters
            .iter()
            .map(|c| (c.name.clone(), c.weight.as_ref().unwrap().value))
            .collect();
        assert_eq!(
            weights,
            vec![
                (format!("outbound|8080|v1|{ECHO}"), 90),
                (format!("outbound|8080|v2|{ECHO}"), 10)
            ]
        );
        let retry = second.retry_policy.as_ref().unwrap();
        assert_eq!(retry.retry_on, "unavailable");
        assert_eq!(retry.num_retries.as_ref().unwrap().value, 3);
        let msd = second.max_stream_duration.as_ref().unwrap();
        assert_eq!(msd.max_stream_duration.as_ref().unwrap().seconds, 2);
        // 5xx and the per-try timeout are not gRPC's: said, not dropped.
        assert!(w.0.iter().any(|w| w.message.contains("5xx")), "{:?}", w.0);
        assert!(
            w.0.iter().any(|w| w.message.contains("perTryTimeout")),
            "{:?}",
            w.0
        );

        assert_eq!(
            clusters_of(&l),
            vec![
                format!("outbound|8080|v2|{ECHO}"),
                format!("outbound|8080|v1|{ECHO}")
            ]
        );
        // A short name from the service's namespace is the same service;
        // an unknown host or port is no listener.
        assert!(client_listener(&s, "demo", "echo:8080", &mut w).is_some());
        assert!(client_listener(&s, "demo", "nope:8080", &mut w).is_none());
        assert!(client_listener(&s, "demo", &format!("{ECHO}:9"), &mut w).is_none());
    }

    #[test]
    fn clusters_carry_mtls_with_the_destinations_identities_and_the_load_balancer() {
        let s = snap("");
        let mut w = Warnings::default();
        let c = cluster(&s, &format!("outbound|8080||{ECHO}"), &mut w).unwrap();
        assert_eq!(c.lb_policy, LbPolicy::LeastRequest as i32);
        let ts = c.transport_socket.unwrap();
        let Some(SocketConfig::TypedConfig(any)) = ts.config_type else {
            panic!("tls");
        };
        let tls = UpstreamTlsContext::decode(any.value.as_slice()).unwrap();
        let common = tls.common_tls_context.unwrap();
        assert_eq!(
            common
                .tls_certificate_provider_instance
                .unwrap()
                .instance_name,
            CERT_PROVIDER
        );
        let Some(ValidationContextType::ValidationContext(v)) = common.validation_context_type
        else {
            panic!("validation");
        };
        #[allow(deprecated)]
        let sans: Vec<_> = v
            .match_subject_alt_names
            .iter()
            .map(|m| m.match_pattern.clone())
            .collect();
        assert_eq!(
            sans,
            vec![
                Some(MatchPattern::Exact(
                    "spiffe://cluster.local/ns/demo/sa/echo".into()
                )),
                Some(MatchPattern::Exact(
                    "spiffe://cluster.local/ns/demo/sa/echo-canary".into()
                )),
            ]
        );
        // A subset's cluster names only its own workloads.
        let v1 = cluster(&s, &format!("outbound|8080|v1|{ECHO}"), &mut w).unwrap();
        let SocketConfig::TypedConfig(any) = v1.transport_socket.unwrap().config_type.unwrap();
        let tls = UpstreamTlsContext::decode(any.value.as_slice()).unwrap();
        let Some(ValidationContextType::ValidationContext(v)) =
            tls.common_tls_context.unwrap().validation_context_type
        else {
            panic!("validation");
        };
        #[allow(deprecated)]
        let n = v.match_subject_alt_names.len();
        assert_eq!(n, 1);
        assert!(cluster(&s, &format!("outbound|8080|v9|{ECHO}"), &mut w).is_none());
        assert!(cluster(&s, "inbound|8080||x", &mut w).is_none());
    }

    #[test]
    fn check_says_an_sni_rule_fails_closed_on_grpc_servers() {
        let s = snap(
            "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
             metadata: {name: sni, namespace: demo}\n\
             spec: {rules: [{when: [{key: connection.sni, values: [echo.example]}]}]}\n",
        );
        let f = findings(&s);
        assert!(
            f.iter().any(|f| f.code == "MESH0114"
                && f.message.contains("connection.sni")
                && f.message.contains("allows nothing")),
            "{f:?}"
        );
    }

    #[test]
    fn check_names_what_grpc_clients_cannot_do() {
        let s = snap(SPLIT);
        let f = findings(&s);
        let messages: Vec<&str> = f.iter().map(|f| f.message.as_str()).collect();
        assert!(
            messages
                .iter()
                .any(|m| m.contains("method") && m.contains(ECHO)),
            "{messages:?}"
        );
        assert!(
            messages.iter().any(|m| m.contains("perTryTimeout")),
            "{messages:?}"
        );
        assert!(f.iter().all(|f| f.code == "MESH0114"));
        // Nothing to say about a plain configuration.
        assert!(findings(&snap("")).is_empty(), "{:?}", findings(&snap("")));
    }

    #[test]
    fn load_assignments_list_a_subsets_endpoints() {
        let s = snap("");
        let cla = load_assignment(&s, &format!("outbound|8080|v2|{ECHO}")).unwrap();
        let eps = &cla.endpoints[0].lb_endpoints;
        assert_eq!(eps.len(), 1);
        let Some(HostIdentifier::Endpoint(ep)) = &eps[0].host_identifier else {
            panic!("endpoint");
        };
        let Some(AddressKind::SocketAddress(sa)) = &ep.address.as_ref().unwrap().address else {
            panic!("address");
        };
        assert_eq!(sa.address, "10.0.0.3");
        assert_eq!(sa.port_specifier, Some(PortSpecifier::PortValue(15051)));
        let all = load_assignment(&s, &format!("outbound|8080||{ECHO}")).unwrap();
        assert_eq!(all.endpoints[0].lb_endpoints.len(), 2);
        assert_eq!(
            parse_cluster_name(&cluster_name(ECHO, 8080, Some("v1"))),
            Some((ECHO, 8080, Some("v1")))
        );
    }

    fn filter_chain_hcm(l: &Listener) -> HttpConnectionManager {
        let f = &l.filter_chains[0].filters[0];
        let Some(FilterConfig::TypedConfig(any)) = &f.config_type else {
            panic!("hcm");
        };
        HttpConnectionManager::decode(any.value.as_slice()).unwrap()
    }

    #[test]
    fn server_listeners_require_client_certificates_and_carry_the_policies_as_rbac() {
        let s = snap("");
        let (_, v1) = s.workload("demo/echo-v1").unwrap();
        let mut w = Warnings::default();
        let name = format!("{SERVER_LISTENER_PREFIX}10.0.0.2:15051");
        let l = server_listener(&s, v1, &name, &mut w).unwrap();
        let chain = &l.filter_chains[0];
        let Some(SocketConfig::TypedConfig(any)) =
            chain.transport_socket.as_ref().unwrap().config_type.clone()
        else {
            panic!("tls");
        };
        let tls = DownstreamTlsContext::decode(any.value.as_slice()).unwrap();
        assert_eq!(
            tls.require_client_certificate,
            Some(BoolValue { value: true })
        );
        let filters: Vec<String> = filter_chain_hcm(&l)
            .http_filters
            .iter()
            .map(|f| f.name.clone())
            .collect();
        assert_eq!(filters, vec![ROUTER_FILTER.to_owned()]);
        // Not one of the workload's ports: no listener.
        let other = format!("{SERVER_LISTENER_PREFIX}10.0.0.2:9999");
        assert!(server_listener(&s, v1, &other, &mut w).is_none());

        let policy = "---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: echo, namespace: demo}
spec:
  selector: {matchLabels: {app: echo}}
  rules: [{from: [{source: {namespaces: [demo]}}]}]
";
        let s = snap(policy);
        let (_, v1) = s.workload("demo/echo-v1").unwrap();
        let l = server_listener(&s, v1, &name, &mut w).unwrap();
        let hcm = filter_chain_hcm(&l);
        assert_eq!(hcm.http_filters.len(), 2);
        assert_eq!(hcm.http_filters[0].name, format!("{RBAC_FILTER}.0"));
        let Some(HttpFilterConfig::TypedConfig(any)) = &hcm.http_filters[0].config_type else {
            panic!("rbac");
        };
        let rbac = envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac::decode(
            any.value.as_slice(),
        )
        .unwrap()
        .rules
        .unwrap();
        // The policy itself, as gRPC's RBAC: an ALLOW of the namespace.
        assert_eq!(
            rbac.action,
            envoy_types::pb::envoy::config::rbac::v3::rbac::Action::Allow as i32
        );
        assert_eq!(rbac.policies.len(), 1);
        assert!(
            format!("{rbac:?}").contains("spiffe://[^/]+/ns/demo/sa/[^/]+"),
            "{rbac:?}"
        );

        let disabled = "---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: echo, namespace: demo}
spec: {selector: {matchLabels: {app: echo}}, mtls: {mode: DISABLE}}
";
        let s = snap(disabled);
        let (_, v1) = s.workload("demo/echo-v1").unwrap();
        let l = server_listener(&s, v1, &name, &mut w).unwrap();
        assert!(l.filter_chains[0].transport_socket.is_none());
    }
}
