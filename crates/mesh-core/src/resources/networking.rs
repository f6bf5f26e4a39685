//! `networking.istio.io` resources: VirtualService, DestinationRule, Gateway,
//! ServiceEntry and WorkloadEntry, as Istio's v1alpha3, v1beta1 and v1 APIs
//! write them (the three versions share one schema).
//!
//! Every struct denies unknown fields: a field Istio has and this mesh does not
//! implement is reported by name instead of being dropped.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::common::{Duration, Labels, Percent, StringMatch};

// ---------------------------------------------------------------- VirtualService

/// `VirtualService.spec`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualService {
    /// Hosts the routes apply to, as clients address them.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Gateways (and `mesh`) the routes apply to; `mesh` when empty.
    #[serde(default)]
    pub gateways: Vec<String>,
    /// HTTP routes, in order: first match wins.
    #[serde(default)]
    pub http: Vec<HttpRoute>,
    /// Opaque TCP routes.
    #[serde(default)]
    pub tcp: Vec<TcpRoute>,
    /// TLS routes by SNI, for a Gateway's PASSTHROUGH servers (the mesh's
    /// sidecars do not route TLS by SNI: refused for mesh traffic).
    #[serde(default)]
    pub tls: Vec<TlsRoute>,
    /// Namespaces the resource is visible to ([`crate::visibility`]).
    #[serde(default)]
    pub export_to: Vec<String>,
}

/// One HTTP rule of a VirtualService.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRoute {
    /// The rule's name, shown in `explain` and logs.
    #[serde(default)]
    pub name: Option<String>,
    /// Conditions; the rule applies when any one matches (OR); all fields of
    /// one condition must hold (AND). No condition matches everything.
    #[serde(default, rename = "match")]
    pub matches: Vec<HttpMatchRequest>,
    /// Weighted destinations.
    #[serde(default)]
    pub route: Vec<HttpRouteDestination>,
    /// Answer with a redirect instead of routing.
    #[serde(default)]
    pub redirect: Option<HttpRedirect>,
    /// Answer directly instead of routing.
    #[serde(default)]
    pub direct_response: Option<HttpDirectResponse>,
    /// Rewrite the path or authority before forwarding.
    #[serde(default)]
    pub rewrite: Option<HttpRewrite>,
    /// Whole-request timeout, retries included.
    #[serde(default)]
    pub timeout: Option<Duration>,
    /// Retry policy.
    #[serde(default)]
    pub retries: Option<HttpRetry>,
    /// Fault injection.
    #[serde(default)]
    pub fault: Option<HttpFaultInjection>,
    /// Send a copy of each request here; the answer is discarded.
    #[serde(default)]
    pub mirror: Option<Destination>,
    /// Share of requests mirrored (100 when absent).
    #[serde(default)]
    pub mirror_percentage: Option<Percent>,
    /// Istio's deprecated `mirrorPercent` (a whole percentage): read as
    /// `mirrorPercentage` when that is absent; both at once are refused.
    #[serde(default)]
    pub mirror_percent: Option<u32>,
    /// Header changes for every destination of the rule.
    #[serde(default)]
    pub headers: Option<Headers>,
    /// Istio's `websocketUpgrade`: upgrades (WebSocket and any other
    /// `Upgrade` protocol) pass on every route unless this says `false`,
    /// which forwards an upgrade request as a plain one (Istio has ignored
    /// the field since 1.0, upgrading always; `false` is honoured here).
    #[serde(default)]
    pub websocket_upgrade: Option<bool>,
    /// Cross-origin resource sharing for browsers: preflights answered by
    /// the proxy, and the response headers of allowed origins.
    #[serde(default)]
    pub cors_policy: Option<CorsPolicy>,
}

/// Istio's `CorsPolicy` (the Fetch standard's CORS protocol, answered as
/// Envoy's CORS filter does).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CorsPolicy {
    /// Origins allowed, matched against the request's `Origin`.
    #[serde(default)]
    pub allow_origins: Vec<StringMatch>,
    /// Istio's deprecated list of exact origins (`*` allows any); read as
    /// exact matches when `allowOrigins` is absent; both are refused.
    #[serde(default)]
    pub allow_origin: Vec<String>,
    /// `Access-Control-Allow-Methods` of a preflight's answer.
    #[serde(default)]
    pub allow_methods: Vec<String>,
    /// `Access-Control-Allow-Headers` of a preflight's answer.
    #[serde(default)]
    pub allow_headers: Vec<String>,
    /// `Access-Control-Expose-Headers` of an allowed origin's responses.
    #[serde(default)]
    pub expose_headers: Vec<String>,
    /// `Access-Control-Max-Age` of a preflight's answer (whole seconds).
    #[serde(default)]
    pub max_age: Option<Duration>,
    /// `Access-Control-Allow-Credentials: true` for allowed origins.
    #[serde(default)]
    pub allow_credentials: Option<bool>,
    /// What a preflight from an origin not allowed gets: `FORWARD`
    /// (Istio's default: it goes to the destination like any request) or
    /// `IGNORE` (the proxy answers it, with no CORS headers).
    #[serde(default)]
    pub unmatched_preflights: Option<UnmatchedPreflights>,
}

/// [`CorsPolicy::unmatched_preflights`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum UnmatchedPreflights {
    /// `FORWARD`.
    #[default]
    Unspecified,
    /// Sent on to the destination.
    Forward,
    /// Answered by the proxy without CORS headers.
    Ignore,
}

/// One match condition of an HTTP rule.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpMatchRequest {
    /// The condition's name, appended to the rule's in logs.
    #[serde(default)]
    pub name: Option<String>,
    /// The request path (without the query string).
    #[serde(default)]
    pub uri: Option<StringMatch>,
    /// `http` or `https`.
    #[serde(default)]
    pub scheme: Option<StringMatch>,
    /// The request method.
    #[serde(default)]
    pub method: Option<StringMatch>,
    /// The Host / :authority.
    #[serde(default)]
    pub authority: Option<StringMatch>,
    /// Request headers, by lowercase name. An empty match object means
    /// "present".
    #[serde(default)]
    pub headers: BTreeMap<String, StringMatch>,
    /// Headers that must not match.
    #[serde(default)]
    pub without_headers: BTreeMap<String, StringMatch>,
    /// Query parameters.
    #[serde(default)]
    pub query_params: BTreeMap<String, StringMatch>,
    /// The service port the request arrived on.
    #[serde(default)]
    pub port: Option<u16>,
    /// Labels the calling workload must carry.
    #[serde(default)]
    pub source_labels: Labels,
    /// The calling workload's namespace.
    #[serde(default)]
    pub source_namespace: Option<String>,
    /// Gateways this condition is restricted to.
    #[serde(default)]
    pub gateways: Vec<String>,
    /// Compare `uri` case-insensitively.
    #[serde(default)]
    pub ignore_uri_case: bool,
}

/// A weighted destination of an HTTP rule.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteDestination {
    /// Where to send the request.
    pub destination: Destination,
    /// Share of traffic; may be omitted only with a single destination.
    #[serde(default)]
    pub weight: Option<u32>,
    /// Header changes for this destination only.
    #[serde(default)]
    pub headers: Option<Headers>,
}

/// A destination service, optionally a subset and port of it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Destination {
    /// Service host; short names resolve in the resource's namespace.
    pub host: String,
    /// A subset named in the host's DestinationRule.
    #[serde(default)]
    pub subset: Option<String>,
    /// The service port; needed when the service has several.
    #[serde(default)]
    pub port: Option<PortSelector>,
}

/// `{number: 8080}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PortSelector {
    /// The port number.
    pub number: u16,
}

/// Header changes: set, add, remove, for requests and responses.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Headers {
    /// Changes to the request.
    #[serde(default)]
    pub request: Option<HeaderOperations>,
    /// Changes to the response.
    #[serde(default)]
    pub response: Option<HeaderOperations>,
}

/// One set of header changes.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderOperations {
    /// Overwrite these headers.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Append these headers.
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    /// Remove these headers.
    #[serde(default)]
    pub remove: Vec<String>,
}

/// A redirect answer.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRedirect {
    /// Replace the path.
    #[serde(default)]
    pub uri: Option<String>,
    /// Replace the authority.
    #[serde(default)]
    pub authority: Option<String>,
    /// Replace the port.
    #[serde(default)]
    pub port: Option<u16>,
    /// Replace the scheme.
    #[serde(default)]
    pub scheme: Option<String>,
    /// Status code, 301 by default.
    #[serde(default)]
    pub redirect_code: Option<u16>,
}

/// A direct answer.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpDirectResponse {
    /// Status code.
    pub status: u16,
    /// Body.
    #[serde(default)]
    pub body: Option<HttpBody>,
}

/// A direct response body.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpBody {
    /// Body text.
    #[serde(default)]
    pub string: Option<String>,
}

/// A rewrite before forwarding.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRewrite {
    /// Replace the matched prefix (or the whole exact path) with this.
    #[serde(default)]
    pub uri: Option<String>,
    /// Replace the authority.
    #[serde(default)]
    pub authority: Option<String>,
}

/// Retry policy.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRetry {
    /// Attempts after the first.
    #[serde(default)]
    pub attempts: u32,
    /// Timeout of each attempt.
    #[serde(default)]
    pub per_try_timeout: Option<Duration>,
    /// Comma-separated conditions, Envoy's vocabulary (`5xx`,
    /// `gateway-error`, `connect-failure`, `reset`, `retriable-4xx`,
    /// `refused-stream`, status codes).
    #[serde(default)]
    pub retry_on: Option<String>,
}

/// Fault injection.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpFaultInjection {
    /// Delay a share of requests.
    #[serde(default)]
    pub delay: Option<FaultDelay>,
    /// Abort a share of requests.
    #[serde(default)]
    pub abort: Option<FaultAbort>,
}

/// A delay fault.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultDelay {
    /// How long.
    pub fixed_delay: Duration,
    /// Which share of requests.
    #[serde(default)]
    pub percentage: Option<Percent>,
}

/// An abort fault.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultAbort {
    /// The status to answer.
    pub http_status: u16,
    /// Which share of requests.
    #[serde(default)]
    pub percentage: Option<Percent>,
}

/// One TCP rule of a VirtualService.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpRoute {
    /// Conditions (OR).
    #[serde(default, rename = "match")]
    pub matches: Vec<L4Match>,
    /// Weighted destinations.
    #[serde(default)]
    pub route: Vec<RouteDestination>,
}

/// A TLS route: connections whose ClientHello names one of a match's SNI
/// hosts go, still encrypted, to the weighted destinations.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsRoute {
    /// Conditions (OR); at least one.
    #[serde(default, rename = "match")]
    pub matches: Vec<TlsMatch>,
    /// Weighted destinations.
    #[serde(default)]
    pub route: Vec<RouteDestination>,
}

/// A TLS match condition.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsMatch {
    /// Server names (SNI) matched, wildcards allowed (`*.example.com`,
    /// `*`); at least one, each within the VirtualService's hosts.
    #[serde(default)]
    pub sni_hosts: Vec<String>,
    /// The gateway port.
    #[serde(default)]
    pub port: Option<u16>,
    /// Gateways this condition is restricted to.
    #[serde(default)]
    pub gateways: Vec<String>,
    /// Destination IP ranges: not read (refused when set).
    #[serde(default)]
    pub destination_subnets: Vec<String>,
    /// Labels of the calling workload: not read (refused when set).
    #[serde(default)]
    pub source_labels: Labels,
    /// The calling workload's namespace: not read (refused when set).
    #[serde(default)]
    pub source_namespace: Option<String>,
}

/// A TCP match condition.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct L4Match {
    /// The service port.
    #[serde(default)]
    pub port: Option<u16>,
    /// Labels the calling workload must carry.
    #[serde(default)]
    pub source_labels: Labels,
    /// Gateways this condition is restricted to.
    #[serde(default)]
    pub gateways: Vec<String>,
}

/// A weighted L4 destination.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteDestination {
    /// Where to send the connection.
    pub destination: Destination,
    /// Share of connections.
    #[serde(default)]
    pub weight: Option<u32>,
}

// --------------------------------------------------------------- DestinationRule

/// `DestinationRule.spec`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DestinationRule {
    /// The service the rule applies to; short names resolve in the
    /// resource's namespace.
    pub host: String,
    /// Policy for all traffic to the host.
    #[serde(default)]
    pub traffic_policy: Option<TrafficPolicy>,
    /// Named groups of the host's workloads, by label.
    #[serde(default)]
    pub subsets: Vec<Subset>,
    /// Namespaces the resource is visible to ([`crate::visibility`]).
    #[serde(default)]
    pub export_to: Vec<String>,
}

/// A subset of a host's workloads.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Subset {
    /// The name routes refer to.
    pub name: String,
    /// Labels the workloads must carry.
    #[serde(default)]
    pub labels: Labels,
    /// Overrides of the rule's traffic policy for this subset.
    #[serde(default)]
    pub traffic_policy: Option<TrafficPolicy>,
}

/// Load balancing, connection pool, outlier detection and client TLS.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficPolicy {
    /// How to choose an endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancerSettings>,
    /// Limits on connections and requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_pool: Option<ConnectionPoolSettings>,
    /// Ejection of failing endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    /// How the client side secures connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClientTlsSettings>,
    /// Overrides per service port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub port_level_settings: Vec<PortTrafficPolicy>,
}

/// A traffic policy for one port.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortTrafficPolicy {
    /// The service port.
    pub port: PortSelector,
    /// How to choose an endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancerSettings>,
    /// Limits on connections and requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_pool: Option<ConnectionPoolSettings>,
    /// Ejection of failing endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    /// How the client side secures connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClientTlsSettings>,
}

/// Load balancing: `simple` or `consistentHash`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadBalancerSettings {
    /// A simple algorithm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub simple: Option<SimpleLb>,
    /// Hash-based affinity; with weighted subsets, it also keeps a key on
    /// one subset (the sticky canary).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistent_hash: Option<ConsistentHash>,
    /// Slow start: an endpoint that joins gets a share of requests that
    /// grows over `duration` ([`crate::balance::SlowStart`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup: Option<Warmup>,
    /// Istio's older spelling of `warmup: {duration: ...}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup_duration_secs: Option<Duration>,
    /// Locality-aware load balancing ([`crate::locality`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality_lb_setting: Option<LocalityLbSetting>,
}

/// DestinationRule `loadBalancer.localityLbSetting`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalityLbSetting {
    /// Per source locality, the share of traffic each destination
    /// locality gets (excludes `failover`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub distribute: Vec<LocalityDistribute>,
    /// Per source region, the region to fail over to first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failover: Vec<LocalityFailover>,
    /// Labels whose agreement with the proxy's orders the endpoints.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failover_priority: Vec<String>,
    /// `false` turns locality load balancing off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}

/// One `distribute` entry: from a locality (with `*`) to weighted ones.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalityDistribute {
    /// The proxies' locality it applies to.
    #[serde(default)]
    pub from: String,
    /// Destination locality → weight (the weights sum to 100).
    #[serde(default)]
    pub to: BTreeMap<String, u32>,
}

/// One `failover` entry: from a region to a region.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalityFailover {
    /// The proxies' region.
    #[serde(default)]
    pub from: String,
    /// The region their traffic fails over to.
    #[serde(default)]
    pub to: String,
}

impl LoadBalancerSettings {
    /// The slow start in force, if `warmup` (or `warmupDurationSecs`) is
    /// set: Envoy's defaults for what is left out (10% at first,
    /// aggression 1: a linear ramp).
    pub fn slow_start(&self) -> Option<crate::balance::SlowStart> {
        let (window, min_percent, aggression) = match (&self.warmup, self.warmup_duration_secs) {
            (Some(w), _) => (w.duration?.0, w.minimum_percent, w.aggression),
            (None, Some(d)) => (d.0, None, None),
            (None, None) => return None,
        };
        Some(crate::balance::SlowStart {
            window,
            min_weight: min_percent.unwrap_or(10.0) / 100.0,
            aggression: aggression.unwrap_or(1.0),
        })
    }
}

/// DestinationRule `loadBalancer.warmup`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Warmup {
    /// How long an endpoint that joined stays in slow start (required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<Duration>,
    /// The share of its full weight it starts at, in percent (0 to 100;
    /// default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum_percent: Option<f64>,
    /// How the share grows: 1 linearly, more is faster at first (at least
    /// 1; default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggression: Option<f64>,
}

/// Simple load-balancing algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SimpleLb {
    /// The default, LEAST_REQUEST.
    Unspecified,
    /// Istio's old name for LEAST_REQUEST.
    LeastConn,
    /// Uniformly random.
    Random,
    /// Round robin.
    RoundRobin,
    /// Power of two choices on outstanding requests.
    LeastRequest,
}

/// Consistent hashing: exactly one key source.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConsistentHash {
    /// Hash this request header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_header_name: Option<String>,
    /// Hash this cookie, set with `ttl` when the request has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_cookie: Option<HttpCookie>,
    /// Hash the source IP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_source_ip: Option<bool>,
    /// Hash this query parameter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_query_parameter_name: Option<String>,
}

/// A hashing cookie.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpCookie {
    /// Cookie name.
    pub name: String,
    /// Cookie path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Lifetime of a cookie the mesh sets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<Duration>,
}

/// Connection pool limits.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConnectionPoolSettings {
    /// TCP limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpPoolSettings>,
    /// HTTP limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpPoolSettings>,
}

/// TCP limits.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpPoolSettings {
    /// Most connections to the destination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// Connect timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<Duration>,
}

/// HTTP limits.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpPoolSettings {
    /// Most requests waiting for a connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http1_max_pending_requests: Option<u32>,
    /// Most concurrent requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http2_max_requests: Option<u32>,
    /// Whether HTTP/1.1 requests to the destination go as HTTP/2 (`DEFAULT`
    /// follows MeshConfig's `h2UpgradePolicy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub h2_upgrade_policy: Option<H2UpgradePolicy>,
    /// Requests sent on one connection before it is closed (1: a
    /// connection per request, no keep-alive); 0 or unset: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests_per_connection: Option<u32>,
    /// HTTP/2 PINGs on the connections to the destination, so a peer that
    /// went away without a word is found and its connection closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http2_keep_alive: Option<Http2KeepAlive>,
}

/// A DestinationRule's `connectionPool.http.http2KeepAlive`.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Http2KeepAlive {
    /// How often a PING is sent on every HTTP/2 connection, busy or idle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    /// How long a PING may go unanswered before the connection is closed
    /// (default 20 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
}

/// A DestinationRule's `connectionPool.http.h2UpgradePolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum H2UpgradePolicy {
    /// MeshConfig's `h2UpgradePolicy` decides.
    Default,
    /// HTTP/1.1 stays HTTP/1.1.
    DoNotUpgrade,
    /// HTTP/1.1 requests go as HTTP/2.
    Upgrade,
}

/// Outlier detection.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutlierDetection {
    /// Istio's deprecated name for consecutiveGatewayErrors-style 5xx counting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_errors: Option<u32>,
    /// Eject after this many 5xx answers in a row.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive5xx_errors: Option<u32>,
    /// Eject after this many 502/503/504 or connection failures in a row.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_gateway_errors: Option<u32>,
    /// How often ejections are reconsidered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    /// First ejection's length; later ones grow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_ejection_time: Option<Duration>,
    /// Never eject more than this share of endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejection_percent: Option<u32>,
}

/// Client-side TLS mode of a DestinationRule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ClientTlsMode {
    /// Plaintext.
    Disable,
    /// TLS with the server's certificate checked, no client certificate.
    Simple,
    /// TLS with a client certificate given as files.
    Mutual,
    /// The mesh's own mTLS with SPIFFE identities.
    IstioMutual,
}

impl ClientTlsMode {
    /// The mode as Istio writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "DISABLE",
            Self::Simple => "SIMPLE",
            Self::Mutual => "MUTUAL",
            Self::IstioMutual => "ISTIO_MUTUAL",
        }
    }
}

impl std::fmt::Display for ClientTlsMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Client-side TLS settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientTlsSettings {
    /// The mode.
    pub mode: ClientTlsMode,
    /// Client certificate file (MUTUAL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<String>,
    /// Client key file (MUTUAL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<String>,
    /// CA certificates to check the server against (SIMPLE, MUTUAL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_certificates: Option<String>,
    /// Names the server certificate must carry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<String>,
    /// SNI to send.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
}

// ----------------------------------------------------------------------- Gateway

/// `Gateway.spec`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Gateway {
    /// Labels of the gateway workloads that serve it.
    #[serde(default)]
    pub selector: Labels,
    /// Listeners.
    #[serde(default)]
    pub servers: Vec<Server>,
}

/// One Gateway listener.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Server {
    /// The port.
    pub port: GatewayPort,
    /// Hosts served (SNI and Host), optionally `namespace/host`.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// TLS settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ServerTlsSettings>,
    /// A name for the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// A Gateway port.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayPort {
    /// Port number.
    pub number: u16,
    /// Protocol: HTTP, HTTPS, HTTP2, GRPC, TCP, TLS.
    pub protocol: Protocol,
    /// Port name.
    #[serde(default)]
    pub name: Option<String>,
    /// Port the gateway process listens on, when not `number`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<u16>,
}

/// Gateway TLS modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ServerTlsMode {
    /// Forward the TLS stream by SNI, untouched.
    Passthrough,
    /// Terminate TLS.
    Simple,
    /// Terminate TLS and require a client certificate.
    Mutual,
    /// Terminate with the mesh's mTLS.
    IstioMutual,
}

/// Gateway TLS settings.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerTlsSettings {
    /// Answer plain HTTP with a redirect to HTTPS.
    #[serde(default)]
    pub https_redirect: bool,
    /// The mode; required unless `httpsRedirect` is the only setting.
    #[serde(default)]
    pub mode: Option<ServerTlsMode>,
    /// The certificate, key and client CA by name, as Istio's Kubernetes
    /// Secret: read from the folder of that name under the gateway's
    /// credentials folder (`mesh-proxy gateway --credentials-dir`, where
    /// the Secret is mounted): `tls.crt`, `tls.key`, `ca.crt` (a
    /// `kubernetes.io/tls` Secret), or Istio's generic `cert`, `key`,
    /// `cacert`; for MUTUAL the CA may also be in `NAME-cacert`. Instead
    /// of `serverCertificate`/`privateKey`/`caCertificates`, never with
    /// them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_name: Option<String>,
    /// Certificate file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_certificate: Option<String>,
    /// Key file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<String>,
    /// CA certificates for client certificates (MUTUAL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_certificates: Option<String>,
    /// Names a client certificate must carry (MUTUAL).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<String>,
    /// Lowest TLS version: TLSV1_2 or TLSV1_3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_protocol_version: Option<TlsVersion>,
}

/// TLS protocol versions a gateway may require. Older ones are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TlsVersion {
    /// Whatever the TLS stack prefers (1.2 and 1.3).
    TlsAuto,
    /// TLS 1.2.
    #[serde(rename = "TLSV1_2")]
    TlsV12,
    /// TLS 1.3.
    #[serde(rename = "TLSV1_3")]
    TlsV13,
}

// ------------------------------------------------------- ServiceEntry, WorkloadEntry

// ---------------------------------------------------------------------- Sidecar

/// `Sidecar.spec`: what the sidecars of the selected workloads (without a
/// selector: of the namespace; in the root namespace: of the mesh) see of
/// the mesh, and where they send what is no service of it
/// ([`crate::visibility::workload_view`]), and the ports it serves
/// (`ingress`). Ports and binds of egress listeners, capture mode `NONE`,
/// ingress TLS and connection pools are not implemented and refused by
/// name.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Sidecar {
    /// The workloads it applies to; all of its namespace when absent.
    #[serde(default)]
    pub workload_selector: Option<SelectorLabels>,
    /// The sidecar's inbound listeners, in place of the WorkloadEntry's
    /// ports: each port served and the app's address behind it.
    #[serde(default)]
    pub ingress: Vec<IngressListener>,
    /// The hosts the sidecar sees.
    #[serde(default)]
    pub egress: Vec<EgressListener>,
    /// Where a connection to no service of the mesh goes; the
    /// MeshConfig's when absent.
    #[serde(default)]
    pub outbound_traffic_policy: Option<crate::meshconfig::OutboundTrafficPolicy>,
}

/// One ingress listener of a Sidecar: a port the sidecar serves inbound
/// and where it forwards (`defaultEndpoint`), as Istio's.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IngressListener {
    /// The port served (number, protocol, name).
    pub port: ServicePort,
    /// The address the listener binds (default: the workload's).
    #[serde(default)]
    pub bind: Option<String>,
    /// `DEFAULT` or `IPTABLES` (the sidecar listens on the port either
    /// way); `NONE` is refused (not read).
    #[serde(default)]
    pub capture_mode: Option<CaptureMode>,
    /// The app: `127.0.0.1:PORT`, `[::1]:PORT`, or `0.0.0.0:PORT` /
    /// `[::]:PORT` (the workload's address); unset, the listener's port on
    /// loopback.
    #[serde(default)]
    pub default_endpoint: Option<String>,
}

/// Where an ingress listener's `defaultEndpoint` points: (the address is
/// the workload's own, the port). `127.0.0.1:P` and `[::1]:P` are loopback;
/// `0.0.0.0:P` and `[::]:P` the workload's address, as Istio reads them.
pub fn ingress_endpoint(e: &str) -> Result<(std::net::SocketAddr, bool), String> {
    if e.starts_with("unix://") {
        return Err(format!(
            "`{e}`: Unix domain socket endpoints are not supported by this mesh"
        ));
    }
    let addr: std::net::SocketAddr = e.parse().map_err(|_| {
        format!("`{e}` is not 127.0.0.1:PORT, 0.0.0.0:PORT, [::1]:PORT or [::]:PORT")
    })?;
    if addr.port() == 0 {
        return Err(format!("`{e}`: the port must be 1-65535"));
    }
    if addr.ip().is_loopback() {
        Ok((addr, false))
    } else if addr.ip().is_unspecified() {
        Ok((addr, true))
    } else {
        Err(format!(
            "`{e}` is not 127.0.0.1:PORT, 0.0.0.0:PORT, [::1]:PORT or [::]:PORT"
        ))
    }
}

/// A Sidecar listener's `captureMode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CaptureMode {
    /// The sidecar's own mode.
    Default,
    /// Captured traffic.
    Iptables,
    /// Not captured: the app dials the sidecar.
    None,
}

/// One egress listener of a Sidecar: the hosts imported, as
/// `namespace/dnsName` (`./*`, `istio-system/*`, `*/api.example.com`,
/// `~/*`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EgressListener {
    /// `namespace/dnsName` entries.
    pub hosts: Vec<String>,
}

/// Service port protocols. Read as Istio reads them, in any case
/// (`HTTP`, `http`, `Http`); a name Istio has and this mesh does not
/// (`UDP`, `THRIFT`, `HTTP_PROXY`...) is refused by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Protocol {
    /// HTTP/1.1 (and h2c when the client asks).
    #[serde(rename = "HTTP")]
    Http,
    /// HTTP/2.
    #[serde(rename = "HTTP2")]
    Http2,
    /// gRPC over HTTP/2.
    #[serde(rename = "GRPC")]
    Grpc,
    /// TLS-terminated HTTP.
    #[serde(rename = "HTTPS")]
    Https,
    /// Opaque TCP.
    #[serde(rename = "TCP")]
    Tcp,
    /// TLS, routed by SNI.
    #[serde(rename = "TLS")]
    Tls,
    /// MySQL: opaque TCP, server speaks first.
    #[serde(rename = "MYSQL")]
    Mysql,
    /// Redis: opaque TCP.
    #[serde(rename = "REDIS")]
    Redis,
    /// MongoDB: opaque TCP.
    #[serde(rename = "MONGO")]
    Mongo,
}

impl Protocol {
    const ALL: [Self; 9] = [
        Self::Http,
        Self::Http2,
        Self::Grpc,
        Self::Https,
        Self::Tcp,
        Self::Tls,
        Self::Mysql,
        Self::Redis,
        Self::Mongo,
    ];

    /// The protocol named `name`, in any case.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|p| p.to_string().eq_ignore_ascii_case(name))
    }
}

impl<'de> Deserialize<'de> for Protocol {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        Self::parse(&name).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "`{name}` is not a protocol this mesh implements; use one of HTTP, HTTP2, GRPC, HTTPS, TCP, TLS, MYSQL, REDIS, MONGO (any case)"
            ))
        })
    }
}

/// A service port's `protocol`: unset when absent or empty (Istio then
/// goes by the port name; `protocol: ""` is what some generators write).
fn protocol_or_unset<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Protocol>, D::Error> {
    match Option::<String>::deserialize(d)? {
        None => Ok(None),
        Some(name) if name.is_empty() => Ok(None),
        Some(name) => Protocol::parse(&name).map(Some).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "`{name}` is not a protocol this mesh implements; use one of HTTP, HTTP2, GRPC, HTTPS, TCP, TLS, MYSQL, REDIS, MONGO (any case), or leave it out"
            ))
        }),
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Http => "HTTP",
            Self::Http2 => "HTTP2",
            Self::Grpc => "GRPC",
            Self::Https => "HTTPS",
            Self::Tcp => "TCP",
            Self::Tls => "TLS",
            Self::Mysql => "MYSQL",
            Self::Redis => "REDIS",
            Self::Mongo => "MONGO",
        })
    }
}

impl Protocol {
    /// True for protocols the L7 HTTP layers handle.
    pub fn is_http(self) -> bool {
        matches!(self, Self::Http | Self::Http2 | Self::Grpc)
    }

    /// Infers the protocol from a port name the way Istio does
    /// (`http`, `http-web`, `grpc-api`, `mysql`...); TCP otherwise.
    pub fn from_port_name(name: &str) -> Self {
        let prefix = name.split('-').next().unwrap_or_default();
        match prefix.to_ascii_lowercase().as_str() {
            "http" => Self::Http,
            "http2" => Self::Http2,
            "grpc" => Self::Grpc,
            "https" => Self::Https,
            "tls" => Self::Tls,
            "mysql" => Self::Mysql,
            "redis" => Self::Redis,
            "mongo" => Self::Mongo,
            _ => Self::Tcp,
        }
    }
}

/// `ServiceEntry.spec`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceEntry {
    /// The service's host names.
    pub hosts: Vec<String>,
    /// Virtual IPs of the service.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// Service ports.
    #[serde(default)]
    pub ports: Vec<ServicePort>,
    /// MESH_INTERNAL (default here) or MESH_EXTERNAL.
    #[serde(default)]
    pub location: Option<Location>,
    /// How endpoints are found: STATIC or NONE.
    #[serde(default)]
    pub resolution: Option<Resolution>,
    /// Inline endpoints.
    #[serde(default)]
    pub endpoints: Vec<WorkloadEntry>,
    /// WorkloadEntries of the same namespace selected by label.
    #[serde(default)]
    pub workload_selector: Option<SelectorLabels>,
    /// Namespaces the resource is visible to ([`crate::visibility`]).
    #[serde(default)]
    pub export_to: Vec<String>,
    /// Identities the service's workloads may present, beyond their service
    /// accounts.
    #[serde(default)]
    pub subject_alt_names: Vec<String>,
}

/// `{labels: {...}}`, the selector shape of ServiceEntry and Gateway.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SelectorLabels {
    /// Labels a workload must all carry.
    #[serde(default)]
    pub labels: Labels,
}

/// A ServiceEntry port.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServicePort {
    /// Port number clients use.
    pub number: u16,
    /// Protocol; inferred from the name when absent or empty.
    #[serde(default, deserialize_with = "protocol_or_unset")]
    pub protocol: Option<Protocol>,
    /// Port name; WorkloadEntry `ports` map this name to the workload's port.
    #[serde(default)]
    pub name: Option<String>,
    /// The workload's port, when the WorkloadEntry does not say.
    #[serde(default)]
    pub target_port: Option<u16>,
}

/// MESH_INTERNAL or MESH_EXTERNAL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Location {
    /// Workloads run the mesh: mTLS applies.
    MeshInternal,
    /// Outside the mesh.
    MeshExternal,
}

/// How a ServiceEntry's endpoints are found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Resolution {
    /// Connect to the address the client asked for.
    None,
    /// The listed endpoints or selected WorkloadEntries.
    Static,
    /// Resolve endpoint names (or, without endpoints, the hosts) by DNS;
    /// every address answered is an endpoint.
    Dns,
    /// Resolve by DNS, one endpoint: a connection goes to the first address
    /// answered.
    DnsRoundRobin,
}

impl Resolution {
    /// DNS or DNS_ROUND_ROBIN.
    pub fn is_dns(self) -> bool {
        matches!(self, Self::Dns | Self::DnsRoundRobin)
    }
}

/// `WorkloadEntry.spec` (also a ServiceEntry's inline endpoint).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadEntry {
    /// IP address (or host name with DNS resolution) of the workload;
    /// empty only for an entry with a `network` (Istio: an endpoint
    /// reached through that network's gateway).
    #[serde(default)]
    pub address: String,
    /// Service port name → the workload's port.
    #[serde(default)]
    pub ports: BTreeMap<String, u16>,
    /// The workload's labels (shared with the compiled workload: a mesh
    /// of 100,000 workloads would otherwise hold each set twice).
    #[serde(default)]
    pub labels: std::sync::Arc<Labels>,
    /// The service account; the workload's SPIFFE ID is derived from it.
    #[serde(default)]
    pub service_account: Option<String>,
    /// Not an endpoint of its services, though still a workload (its
    /// own sidecar is configured, its identity is still its own): what a
    /// WorkloadEntry's `status.conditions` says with `Healthy: "False"`,
    /// as Istio's health checks write it, and what a terminating or
    /// unready Kubernetes pod is. New requests go elsewhere; requests in
    /// flight finish. Never set by a spec field.
    #[serde(skip)]
    pub unhealthy: bool,
    /// The network it is on ([`crate::locality`]): a proxy on another
    /// network does not dial it (no east-west gateway here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// `region/zone/subzone`, for locality-aware load balancing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality: Option<String>,
    /// Its load-balancing weight among the endpoints of a service (unset
    /// or 0: 1, as Istio).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
}
