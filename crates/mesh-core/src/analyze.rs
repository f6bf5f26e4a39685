//! `check`: the TLS table (server mTLS mode against the client TLS the
//! DestinationRules give, per service port) and the analyzers Istio users
//! rely on. Each finding is an error (traffic will fail: 503s, refused
//! handshakes) or a warning (something is probably not what was meant).

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::resources::ResourceRef;
use crate::resources::common::labels_match;
use crate::resources::networking::{ClientTlsMode, Location};
use crate::resources::security::{AuthzAction, MtlsMode};
use crate::route::{HttpRouteRule, RouteAction, WeightedDestination};
use crate::snapshot::{PeerPolicy, PeerScope, Snapshot};

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Traffic will fail.
    Error,
    /// Probably not what was meant.
    Warning,
}

/// One analyzer finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Error or warning.
    pub severity: Severity,
    /// A stable code, `MESH0101`.
    pub code: &'static str,
    /// What is wrong.
    pub message: String,
    /// The resources involved; the first is where to look.
    pub resources: Vec<ResourceRef>,
}

/// TLS status of a service port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum TlsStatus {
    /// Client and server agree.
    Ok,
    /// Handshakes will fail.
    Conflict,
}

/// One row of the TLS table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TlsRow {
    /// `host:port`.
    pub host_port: String,
    /// Server mode(s) in force on the workloads behind the port; `-` for a
    /// service outside the mesh.
    pub server: String,
    /// Client mode(s) the DestinationRule gives; `AUTO` when none.
    pub client: String,
    /// OK or CONFLICT.
    pub status: TlsStatus,
    /// Why, for a conflict.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Peer-authentication resources deciding the server mode.
    pub authn_policies: Vec<ResourceRef>,
    /// The DestinationRule deciding the client mode.
    pub destination_rule: Option<ResourceRef>,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The TLS table.
    pub tls: Vec<TlsRow>,
    /// Analyzer findings, errors first.
    pub findings: Vec<Finding>,
}

impl Report {
    /// True when a conflict or an error was found.
    pub fn has_errors(&self) -> bool {
        self.tls.iter().any(|r| r.status == TlsStatus::Conflict)
            || self.findings.iter().any(|f| f.severity == Severity::Error)
    }
}

/// Analyzer codes.
pub mod codes {
    /// A server requires mTLS that a client will not send, or the reverse.
    pub const TLS_CONFLICT: &str = "MESH0100";
    /// A route names a subset no DestinationRule defines.
    pub const SUBSET_NOT_FOUND: &str = "MESH0101";
    /// A subset selects no workload.
    pub const SUBSET_EMPTY: &str = "MESH0102";
    /// Weights of a rule do not sum to 100.
    pub const WEIGHTS: &str = "MESH0103";
    /// A host names no known service.
    pub const HOST_NOT_FOUND: &str = "MESH0104";
    /// A VirtualService names a Gateway that does not exist.
    pub const GATEWAY_NOT_FOUND: &str = "MESH0105";
    /// Peer-authentication policies overlap or contradict each other.
    pub const PEER_POLICY_CONFLICT: &str = "MESH0106";
    /// Two DestinationRules or ServiceEntries for one host.
    pub const DUPLICATE_HOST: &str = "MESH0107";
    /// An AuthorizationPolicy can never match.
    pub const AUTHZ_NEVER_MATCHES: &str = "MESH0108";
    /// A route names a port its service does not have.
    pub const PORT_NOT_FOUND: &str = "MESH0109";
    /// A service has no workload.
    pub const NO_WORKLOADS: &str = "MESH0110";
    /// A Gateway server asks for TLS that `mesh-proxy gateway` cannot
    /// honour, so the gateway would refuse to start.
    pub const GATEWAY_TLS_UNSUPPORTED: &str = "MESH0111";
    /// Capture: a workload's address is a loopback address, which no other
    /// network namespace can reach.
    pub const CAPTURE_LOOPBACK_WORKLOAD: &str = "MESH0112";
    /// Capture: a service inside the mesh has no virtual IP (ServiceEntry
    /// `addresses`), so applications can reach it only by a workload's
    /// own address.
    pub const CAPTURE_NO_VIRTUAL_IP: &str = "MESH0113";
    /// Something of the configuration of a gRPC port that gRPC's proxyless
    /// clients or servers cannot honour: left out for them (or, for an
    /// AuthorizationPolicy, resolved against the caller).
    pub const GRPC_PROXYLESS_UNSUPPORTED: &str = "MESH0114";
    /// Two Sidecars apply to one workload (two without a selector in a
    /// namespace, or two selecting it): only the first is in force.
    pub const SIDECAR_CONFLICT: &str = "MESH0115";
    /// Two mesh VirtualServices for one host that one namespace sees both
    /// of (Istio's IST0109): their rules are merged, the first read first.
    pub const DUPLICATE_VS_HOST: &str = "MESH0116";
    /// An HTTP rule no request reaches: an earlier rule of the same
    /// VirtualService matches every request (IST0130).
    pub const UNREACHABLE_RULE: &str = "MESH0117";
    /// A VirtualService bound to a Gateway names a host no server of that
    /// Gateway serves (IST0132): those routes are served nowhere.
    pub const GATEWAY_HOST_NOT_SERVED: &str = "MESH0118";
    /// A Gateway's route to a service of several ports names no port
    /// (IST0112): requests on a port the service lacks get 503.
    pub const DESTINATION_PORT_NEEDED: &str = "MESH0119";
    /// A RequestAuthentication rule whose keys cannot be fetched (no
    /// `jwks`, no `jwksUri`, and an issuer that is no URL for OpenID
    /// discovery): every token of that issuer is refused with 401.
    pub const JWKS_UNREACHABLE: &str = "MESH0120";
    /// An AuthorizationPolicy decides on request principals or JWT claims
    /// for a workload no RequestAuthentication applies to: no request has
    /// a request principal there, so such ALLOW rules never match and
    /// `notRequestPrincipals` DENY rules match every request.
    pub const NO_REQUEST_AUTHENTICATION: &str = "MESH0121";
    /// A gateway route matches on JWT claims (`@request.auth.claims.*`),
    /// but no RequestAuthentication applies to that gateway (IST0149): no
    /// request has claims there, so the match never holds.
    pub const CLAIMS_WITHOUT_AUTHENTICATION: &str = "MESH0122";
    /// A Telemetry names a provider defined nowhere (skipped, as Istio
    /// skips it), or asks for what needs span export, which this mesh does
    /// not do, or overrides a metric it does not have.
    pub const TELEMETRY_PROVIDER: &str = "MESH0123";
    /// Two Telemetries at one level (two without a selector in a
    /// namespace, or two selecting one workload; Istio's IST0151 and
    /// IST0152): only the first is in force.
    pub const TELEMETRY_CONFLICT: &str = "MESH0124";
    /// Every endpoint of a service is on another network than every
    /// workload of the mesh that could call it, or has no address (a
    /// WorkloadEntry with only a `network`): Istio reaches those through
    /// the network's east-west gateway, which this mesh has none of, so
    /// requests to the service get 503.
    pub const ENDPOINTS_ON_OTHER_NETWORKS: &str = "MESH0125";
    /// A CUSTOM AuthorizationPolicy names an extension provider MeshConfig
    /// does not define (no external authorizer kind is implemented yet): as
    /// Istio does, every request to its workloads is denied.
    pub const CUSTOM_PROVIDER_UNDEFINED: &str = "MESH0126";
    /// Two Gateways select the same gateway workloads and serve one port
    /// for hosts they share (Istio's IST0145): one gateway cannot serve
    /// both.
    pub const CONFLICTING_GATEWAYS: &str = "MESH0127";
    /// An HTTP match that repeats an earlier match of the same
    /// VirtualService (Istio's IST0131): its rule never takes a request
    /// through it.
    pub const INEFFECTIVE_MATCH: &str = "MESH0128";
    /// A gateway's VirtualService routes to a host whose mesh
    /// VirtualService splits by subset, without naming a subset itself
    /// (Istio's IST0140): the mesh's subsets and weights do not apply to
    /// requests from the gateway.
    pub const INGRESS_SKIPS_MESH_RULES: &str = "MESH0129";
    /// A `corsPolicy` that allows credentials from any origin (a wildcard,
    /// a regex that matches everything, an empty prefix): every site can
    /// read the answers to its users' credentialed requests.
    pub const CORS_CREDENTIALS_ANY_ORIGIN: &str = "MESH0130";
    /// A mesh VirtualService's `tls` route applies to no TLS or HTTPS port
    /// of the services its hosts name: the sidecars route those ports by
    /// SNI only, so the route is never used.
    pub const TLS_ROUTE_UNUSED: &str = "MESH0131";
}

/// How the sidecars the configuration is for run, for the analyzers that
/// depend on it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CheckOptions {
    /// The sidecars capture traffic (`mesh-proxy init`, `sidecar
    /// --capture`): each workload in a network namespace of its own.
    pub capture: bool,
}

/// Runs the TLS check and every analyzer.
pub fn check(snap: &Snapshot, resources: &crate::resources::Resources) -> Report {
    check_with(snap, resources, CheckOptions::default())
}

/// [`check`], for sidecars that run as `options` say.
pub fn check_with(
    snap: &Snapshot,
    resources: &crate::resources::Resources,
    options: CheckOptions,
) -> Report {
    let mut findings = Vec::new();
    let tls = tls_table(snap);
    for row in tls.iter().filter(|r| r.status == TlsStatus::Conflict) {
        findings.push(Finding {
            severity: Severity::Error,
            code: codes::TLS_CONFLICT,
            message: format!(
                "{}: {}",
                row.host_port,
                row.reason.clone().unwrap_or_default()
            ),
            resources: row
                .destination_rule
                .iter()
                .chain(&row.authn_policies)
                .cloned()
                .collect(),
        });
    }
    shadowed_rules(snap, resources, &mut findings);
    routes(snap, resources, &mut findings);
    services(snap, resources, &mut findings);
    peer_policies(snap, &mut findings);
    authz(snap, &mut findings);
    request_authentication(snap, &mut findings);
    claim_routes(snap, resources, &mut findings);
    gateway_tls(resources, &mut findings);
    sidecars(snap, resources, &mut findings);
    telemetries(snap, resources, &mut findings);
    virtual_services(snap, resources, &mut findings);
    conflicting_gateways(resources, &mut findings);
    ineffective_matches(resources, &mut findings);
    ingress_skips_mesh_rules(snap, resources, &mut findings);
    cors_credentials(resources, &mut findings);
    unused_tls_routes(snap, resources, &mut findings);
    if options.capture {
        capture(snap, &mut findings);
    }
    findings.sort_by(|a, b| a.severity.cmp(&b.severity).then(a.code.cmp(b.code)));
    Report { tls, findings }
}

/// IST0145: two Gateways with one selector serving one port for a host
/// both name.
fn conflicting_gateways(res: &crate::resources::Resources, out: &mut Vec<Finding>) {
    let host = |h: &str| h.rsplit_once('/').map_or(h, |(_, name)| name).to_owned();
    for (i, a) in res.gateways.iter().enumerate() {
        for b in &res.gateways[i + 1..] {
            if a.spec.selector.is_empty() || a.spec.selector != b.spec.selector {
                continue;
            }
            let clash = a.spec.servers.iter().find_map(|sa| {
                b.spec.servers.iter().find_map(|sb| {
                    if sa.port.number != sb.port.number {
                        return None;
                    }
                    sa.hosts.iter().find_map(|ha| {
                        sb.hosts.iter().find_map(|hb| {
                            let (ha, hb) = (host(ha), host(hb));
                            crate::gateway::hosts_intersect(&ha, &hb)
                                .then(|| (sa.port.number, ha.clone(), hb))
                        })
                    })
                })
            });
            if let Some((port, ha, hb)) = clash {
                let selector = a
                    .spec
                    .selector
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",");
                out.push(finding(
                    Severity::Error,
                    codes::CONFLICTING_GATEWAYS,
                    format!(
                        "{} and {} select the same gateway workloads ({selector}) and both serve port {port} for `{ha}` and `{hb}`: one gateway cannot serve both; give one another port or hosts of its own",
                        a.source, b.source
                    ),
                    vec![a.source.clone(), b.source.clone()],
                ));
            }
        }
    }
}

/// IST0131: an HTTP match that repeats an earlier one of its
/// VirtualService (the same conditions, whatever its name).
fn ineffective_matches(res: &crate::resources::Resources, out: &mut Vec<Finding>) {
    for vs in &res.virtual_services {
        let mut seen: Vec<(String, usize, usize)> = Vec::new();
        for (i, rule) in vs.spec.http.iter().enumerate() {
            for (j, m) in rule.matches.iter().enumerate() {
                let mut unnamed = m.clone();
                unnamed.name = None;
                let shape = format!("{unnamed:?}");
                if let Some((_, pi, pj)) = seen.iter().find(|(s, _, _)| *s == shape) {
                    out.push(finding(
                        Severity::Warning,
                        codes::INEFFECTIVE_MATCH,
                        format!(
                            "{}: http[{i}].match[{j}] repeats http[{pi}].match[{pj}], which takes every request it would: it is never used",
                            vs.source
                        ),
                        vec![vs.source.clone()],
                    ));
                } else {
                    seen.push((shape, i, j));
                }
            }
        }
    }
}

/// IST0140: a gateway-only VirtualService routes to a host without a
/// subset while the host's mesh VirtualService splits it by subsets.
fn ingress_skips_mesh_rules(
    snap: &Snapshot,
    res: &crate::resources::Resources,
    out: &mut Vec<Finding>,
) {
    // Mesh VirtualServices that route by subset, by the hosts they name.
    let mut by_host: std::collections::BTreeMap<String, &crate::resources::Item<_>> =
        std::collections::BTreeMap::new();
    for vs in &res.virtual_services {
        let mesh_bound =
            vs.spec.gateways.is_empty() || vs.spec.gateways.iter().any(|g| g == "mesh");
        let subsets = vs
            .spec
            .http
            .iter()
            .flat_map(|r| &r.route)
            .any(|d| d.destination.subset.is_some());
        if mesh_bound && subsets {
            for h in &vs.spec.hosts {
                by_host
                    .entry(snap.mesh.resolve_host(h, vs.namespace()))
                    .or_insert(vs);
            }
        }
    }
    if by_host.is_empty() {
        return;
    }
    for vs in &res.virtual_services {
        if vs.spec.gateways.is_empty() || vs.spec.gateways.iter().any(|g| g == "mesh") {
            continue;
        }
        let mut told = BTreeSet::new();
        for d in vs.spec.http.iter().flat_map(|r| &r.route) {
            if d.destination.subset.is_some() {
                continue;
            }
            let host = snap.mesh.resolve_host(&d.destination.host, vs.namespace());
            let Some(mesh_vs) = by_host.get(&host) else {
                continue;
            };
            if told.insert(host.clone()) {
                out.push(finding(
                    Severity::Warning,
                    codes::INGRESS_SKIPS_MESH_RULES,
                    format!(
                        "{} routes its gateways' requests to {host} with no subset, so the subsets of {} do not apply to them (a gateway takes its own VirtualService's rules): name the subsets there too, or bind {} to the gateway",
                        vs.source, mesh_vs.source, mesh_vs.source
                    ),
                    vec![vs.source.clone(), mesh_vs.source.clone()],
                ));
            }
        }
    }
}

/// A `corsPolicy` with `allowCredentials` and an origin match any origin
/// passes.
fn cors_credentials(res: &crate::resources::Resources, out: &mut Vec<Finding>) {
    use crate::resources::common::StringMatch;
    for vs in &res.virtual_services {
        for (i, rule) in vs.spec.http.iter().enumerate() {
            let Some(p) = &rule.cors_policy else {
                continue;
            };
            if p.allow_credentials != Some(true) {
                continue;
            }
            let any = p.allow_origin.iter().any(|o| o == "*")
                || p.allow_origins.iter().any(|m| match m {
                    // A prefix no longer than a scheme lets every site of it in.
                    StringMatch::Prefix(x) => {
                        matches!(x.as_str(), "" | "*" | "h" | "ht" | "htt" | "http" | "https")
                            || x.strip_suffix(':')
                                .or_else(|| x.strip_suffix("://"))
                                .or_else(|| x.strip_suffix(":/"))
                                .is_some_and(|s| matches!(s, "http" | "https"))
                    }
                    StringMatch::Regex(r) => matches!(r.as_str(), ".*" | ".+" | "^.*$" | "(.*)"),
                    StringMatch::Exact(x) => x == "*",
                });
            if any {
                out.push(finding(
                    Severity::Warning,
                    codes::CORS_CREDENTIALS_ANY_ORIGIN,
                    format!(
                        "{}: http[{i}].corsPolicy allows credentials from any origin: every site can read the answers to its visitors' logged-in requests; list the origins",
                        vs.source
                    ),
                    vec![vs.source.clone()],
                ));
            }
        }
    }
}

/// A mesh VirtualService's `tls` routes that no TLS or HTTPS service port
/// took.
fn unused_tls_routes(snap: &Snapshot, res: &crate::resources::Resources, out: &mut Vec<Finding>) {
    use crate::resources::networking::Protocol;
    for vs in &res.virtual_services {
        let mesh_bound =
            vs.spec.gateways.is_empty() || vs.spec.gateways.iter().any(|g| g == "mesh");
        if !mesh_bound || vs.spec.tls.is_empty() {
            continue;
        }
        let used = vs.spec.hosts.iter().any(|h| {
            let host = snap.mesh.resolve_host(h, vs.namespace());
            snap.services
                .values()
                .filter(|s| crate::visibility::host_matches(&host, &s.host))
                .flat_map(|s| &s.ports)
                .any(|p| {
                    matches!(p.protocol, Protocol::Tls | Protocol::Https)
                        && !p.tls_routes.is_empty()
                })
        });
        if !used {
            out.push(finding(
                Severity::Warning,
                codes::TLS_ROUTE_UNUSED,
                format!(
                    "{}: its tls routes apply to no TLS or HTTPS port of the services its hosts name (the sidecars route only those by SNI): they are never used",
                    vs.source
                ),
                vec![vs.source.clone()],
            ));
        }
    }
}

/// IST0149: claim matches on gateways no RequestAuthentication covers (the
/// gateway proxy's labels are its Gateway's `selector`; its namespace is
/// taken to be the Gateway's).
fn claim_routes(snap: &Snapshot, res: &crate::resources::Resources, out: &mut Vec<Finding>) {
    for vs in &res.virtual_services {
        let claims = vs.spec.http.iter().any(|r| {
            r.matches.iter().any(|m| {
                m.headers
                    .keys()
                    .chain(m.without_headers.keys())
                    .any(|k| k.starts_with(crate::route::CLAIM_MATCH_PREFIX))
            })
        });
        if !claims {
            continue;
        }
        for g in vs.spec.gateways.iter().filter(|g| *g != "mesh") {
            let key = crate::snapshot::gateway_key(g, vs.namespace());
            let Some(gw) = snap.gateways.get(&key) else {
                continue;
            };
            let ns = key.split_once('/').map_or("default", |(ns, _)| ns);
            if snap.jwt_rules_for(ns, &gw.selector).is_empty() {
                out.push(Finding {
                    severity: Severity::Warning,
                    code: codes::CLAIMS_WITHOUT_AUTHENTICATION,
                    message: format!(
                        "{} routes on JWT claims at Gateway {key}, but no RequestAuthentication applies to that gateway: no request carries claims there, so those matches never hold",
                        vs.source
                    ),
                    resources: vec![vs.source.clone()],
                });
            }
        }
    }
}

/// RequestAuthentication: rules whose keys no fetch can reach, and
/// policies on request principals or claims for workloads without any.
fn request_authentication(snap: &Snapshot, out: &mut Vec<Finding>) {
    for p in &snap.jwt_policies {
        for r in &p.rules {
            if let (Err(why), crate::jwt::KeySource::Uri(uri)) =
                (crate::jwt::discoverable(r), &r.keys)
            {
                out.push(Finding {
                    severity: Severity::Warning,
                    code: codes::JWKS_UNREACHABLE,
                    message: format!(
                        "issuer `{}` has neither jwks nor jwksUri, and its keys cannot be discovered at `{uri}` ({why}): every token it issues is refused (401)",
                        r.issuer
                    ),
                    resources: vec![p.source.clone()],
                });
            }
        }
    }
    let uses_jwt = |rule: &crate::resources::security::Rule| {
        rule.from.iter().any(|f| {
            !f.source.request_principals.is_empty() || !f.source.not_request_principals.is_empty()
        }) || rule.when.iter().any(|c| c.key.starts_with("request.auth."))
    };
    let mut reported = std::collections::BTreeSet::new();
    for w in snap.workloads.iter().filter(|w| w.jwt_policies.is_empty()) {
        for p in snap.workload_policies(w) {
            if p.rules.iter().any(uses_jwt)
                && reported.insert((p.source.to_string(), w.key.clone()))
            {
                out.push(Finding {
                    severity: Severity::Warning,
                    code: codes::NO_REQUEST_AUTHENTICATION,
                    message: format!(
                        "{} decides on request principals or JWT claims, but no RequestAuthentication applies to workload {}: its requests never carry a request principal, so those ALLOW rules never match and notRequestPrincipals rules match every request",
                        p.source, w.key
                    ),
                    resources: vec![(*p.source).clone()],
                });
            }
        }
    }
}

/// What `istioctl analyze` finds in VirtualServices and `check` did not:
/// duplicate mesh hosts, rules shadowed by a catch-all, hosts a bound
/// Gateway does not serve, gateway routes to a multi-port service without
/// a port.
fn virtual_services(snap: &Snapshot, res: &crate::resources::Resources, out: &mut Vec<Finding>) {
    let m = &snap.mesh;
    let mesh_bound = |vs: &crate::resources::networking::VirtualService| {
        vs.gateways.is_empty() || vs.gateways.iter().any(|g| g == "mesh")
    };
    // Duplicate mesh hosts, where one namespace sees both.
    let mut by_host: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, vs) in res.virtual_services.iter().enumerate() {
        if mesh_bound(&vs.spec) {
            let hosts: BTreeSet<String> = vs
                .spec
                .hosts
                .iter()
                .map(|h| m.resolve_host(h, vs.namespace()))
                .collect();
            for h in hosts {
                by_host.entry(h).or_default().push(i);
            }
        }
    }
    for (host, list) in by_host.into_iter().filter(|(_, l)| l.len() > 1) {
        let (a, b) = (
            &res.virtual_services[list[0]],
            &res.virtual_services[list[1]],
        );
        let together = crate::visibility::seen_together(
            (
                &a.spec.export_to,
                &m.default_virtual_service_export_to,
                a.namespace(),
            ),
            (
                &b.spec.export_to,
                &m.default_virtual_service_export_to,
                b.namespace(),
            ),
        );
        if together.as_ref().is_some_and(BTreeSet::is_empty) {
            continue;
        }
        out.push(finding(
            Severity::Warning,
            codes::DUPLICATE_VS_HOST,
            format!(
                "{} and {} both route host {host} for mesh clients; their rules are merged, {}'s first, so its catch-all rules hide the other's",
                a.source, b.source, a.source
            ),
            vec![a.source.clone(), b.source.clone()],
        ));
    }
    for vs in &res.virtual_services {
        // Rules after a catch-all.
        if let Some(i) = vs.spec.http.iter().position(|r| r.matches.is_empty()) {
            if i + 1 < vs.spec.http.len() {
                out.push(finding(
                    Severity::Warning,
                    codes::UNREACHABLE_RULE,
                    format!(
                        "{}: http[{i}] matches every request, so http[{}..] are never reached",
                        vs.source,
                        i + 1
                    ),
                    vec![vs.source.clone()],
                ));
            }
        }
        for g in vs.spec.gateways.iter().filter(|g| *g != "mesh") {
            let key = crate::snapshot::gateway_key(g, vs.namespace());
            let Some(gw) = snap.gateways.get(&key) else {
                continue;
            };
            // Hosts no server of the Gateway serves.
            for h in &vs.spec.hosts {
                let host = h.to_ascii_lowercase();
                let served = gw.servers.iter().flat_map(|s| &s.hosts).any(|sh| {
                    let (ns, name) = sh.split_once('/').unwrap_or(("*", sh));
                    let ns_ok = ns == "*"
                        || ns == vs.namespace()
                        || (ns == "." && gw.source.namespace == vs.namespace());
                    let name = name.to_ascii_lowercase();
                    ns_ok
                        && (crate::visibility::host_matches(&name, &host)
                            || crate::visibility::host_matches(&host, &name))
                });
                if !served {
                    out.push(finding(
                        Severity::Warning,
                        codes::GATEWAY_HOST_NOT_SERVED,
                        format!(
                            "{}: host {host} is served by no server of Gateway {key}; its routes there are served nowhere",
                            vs.source
                        ),
                        vec![vs.source.clone(), gw.source.clone()],
                    ));
                }
            }
            // Routes to a multi-port service without a port.
            for (i, r) in vs.spec.http.iter().enumerate() {
                for d in &r.route {
                    if d.destination.port.is_some() {
                        continue;
                    }
                    let host = m.resolve_host(&d.destination.host, vs.namespace());
                    if let Some(svc) = snap.service_for(&host).filter(|s| s.ports.len() > 1) {
                        out.push(finding(
                            Severity::Warning,
                            codes::DESTINATION_PORT_NEEDED,
                            format!(
                                "{} http[{i}]: {host} has {} ports and the route names none: a request on a port it lacks gets 503",
                                vs.source,
                                svc.ports.len()
                            ),
                            vec![vs.source.clone(), svc.source.clone()],
                        ));
                    }
                }
            }
        }
    }
}

/// Sidecars that contend for a workload: Istio, like this mesh, takes the
/// first (its oldest) and ignores the other.
fn sidecars(snap: &Snapshot, res: &crate::resources::Resources, out: &mut Vec<Finding>) {
    let selector = |s: &crate::resources::Item<crate::resources::networking::Sidecar>| {
        s.spec
            .workload_selector
            .as_ref()
            .map(|sel| sel.labels.clone())
            .filter(|l| !l.is_empty())
    };
    let mut defaults: BTreeMap<&str, Vec<&ResourceRef>> = BTreeMap::new();
    for s in &res.sidecars {
        if selector(s).is_none() {
            defaults.entry(s.namespace()).or_default().push(&s.source);
        }
    }
    for (ns, refs) in defaults.into_iter().filter(|(_, r)| r.len() > 1) {
        let names: Vec<String> = refs.iter().map(ToString::to_string).collect();
        out.push(finding(
            Severity::Warning,
            codes::SIDECAR_CONFLICT,
            format!(
                "{} have no workloadSelector in namespace {ns}; only the first ({}) is in force",
                names.join(" and "),
                names[0]
            ),
            refs.into_iter().cloned().collect(),
        ));
    }
    // Pairs of selecting Sidecars and the workloads both select.
    let mut both: BTreeMap<(usize, usize), Vec<&str>> = BTreeMap::new();
    for w in &snap.workloads {
        let selecting: Vec<usize> = res
            .sidecars
            .iter()
            .enumerate()
            .filter(|(_, s)| {
                s.namespace() == w.namespace
                    && selector(s).is_some_and(|l| labels_match(&l, &w.labels))
            })
            .map(|(i, _)| i)
            .collect();
        if let [first, second, ..] = selecting[..] {
            both.entry((first, second)).or_default().push(&w.key);
        }
    }
    for ((a, b), workloads) in both {
        let (a, b) = (&res.sidecars[a].source, &res.sidecars[b].source);
        out.push(finding(
            Severity::Warning,
            codes::SIDECAR_CONFLICT,
            format!(
                "{a} and {b} both select workload {}; only the first ({a}) is in force",
                workloads.join(", ")
            ),
            vec![a.clone(), b.clone()],
        ));
    }
}

fn telemetries(snap: &Snapshot, res: &crate::resources::Resources, out: &mut Vec<Finding>) {
    for n in crate::telemetry::notes(res) {
        out.push(finding(
            Severity::Warning,
            codes::TELEMETRY_PROVIDER,
            format!(
                "{} ({}) {}: {}",
                n.source, n.source.origin, n.field, n.message
            ),
            vec![n.source],
        ));
    }
    let workloads = snap
        .workloads
        .iter()
        .map(|w| (w.key.as_str(), w.namespace.as_str(), &*w.labels));
    for (a, b, keys) in crate::telemetry::conflicts(res, workloads) {
        let message = if keys.is_empty() {
            format!(
                "{a} and {b} have no selector in namespace {}; only the first ({a}) is in force",
                a.namespace
            )
        } else {
            format!(
                "{a} and {b} both select workload {}; only the first ({a}) is in force",
                keys.join(", ")
            )
        };
        out.push(finding(
            Severity::Warning,
            codes::TELEMETRY_CONFLICT,
            message,
            vec![a, b],
        ));
    }
}

/// What goes wrong when the workloads are in network namespaces of their
/// own: loopback addresses (reachable only from the namespace itself), and
/// mesh services without a virtual IP.
fn capture(snap: &Snapshot, out: &mut Vec<Finding>) {
    for w in &snap.workloads {
        let loopback = w
            .address
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
            || w.address.eq_ignore_ascii_case("localhost");
        if loopback {
            out.push(finding(
                Severity::Warning,
                codes::CAPTURE_LOOPBACK_WORKLOAD,
                format!(
                    "{}: address {} is a loopback address: with capture each workload has a network namespace of its own, and no other workload can reach this one there (give it its pod address)",
                    w.source, w.address
                ),
                vec![w.source.clone()],
            ));
        }
    }
    let mut services: Vec<&crate::snapshot::Service> = snap
        .services
        .values()
        .filter(|s| s.location == crate::resources::networking::Location::MeshInternal)
        .filter(|s| s.addresses.is_empty())
        .collect();
    services.sort_by(|a, b| a.host.cmp(&b.host));
    for s in services {
        out.push(finding(
            Severity::Warning,
            codes::CAPTURE_NO_VIRTUAL_IP,
            format!(
                "{}: {} has no virtual IP (spec.addresses): with capture, applications reach it only by a workload's own address, not by its name",
                s.source, s.host
            ),
            vec![s.source.clone()],
        ));
    }
}

/// Gateway servers whose TLS the gateway cannot honour. Each of these stops
/// `mesh-proxy gateway` at start (it fails closed rather than serving with
/// less than the Gateway asks); `check` says so before a deploy.
fn gateway_tls(resources: &crate::resources::Resources, out: &mut Vec<Finding>) {
    use crate::resources::networking::{Protocol, ServerTlsMode};
    for gw in &resources.gateways {
        for server in &gw.spec.servers {
            let port = server.port.number;
            let https = server.port.protocol == Protocol::Https;
            let mut why = Vec::new();
            match &server.tls {
                None if https => why.push("an HTTPS server without tls".to_owned()),
                None => {}
                Some(tls) => {
                    if !tls.subject_alt_names.is_empty() {
                        why.push("tls.subjectAltNames (client certificate names) is not supported; use a CA that issues only the allowed client certificates".to_owned());
                    }
                    match tls.mode {
                        Some(ServerTlsMode::Simple | ServerTlsMode::Mutual) => {
                            if tls.credential_name.is_none()
                                && (tls.server_certificate.is_none() || tls.private_key.is_none())
                            {
                                why.push(
                                    "tls needs credentialName, or serverCertificate and privateKey"
                                        .to_owned(),
                                );
                            }
                            if tls.mode == Some(ServerTlsMode::Mutual)
                                && tls.ca_certificates.is_none()
                                && tls.credential_name.is_none()
                            {
                                why.push("MUTUAL needs tls.caCertificates".to_owned());
                            }
                        }
                        Some(ServerTlsMode::Passthrough)
                            if !matches!(server.port.protocol, Protocol::Https | Protocol::Tls) =>
                        {
                            why.push(format!(
                                "tls.mode PASSTHROUGH needs protocol TLS or HTTPS, not {}",
                                server.port.protocol
                            ));
                        }
                        Some(ServerTlsMode::Passthrough) => {}
                        Some(m @ ServerTlsMode::IstioMutual) => {
                            why.push(format!(
                                "tls.mode {m:?} is not supported; use SIMPLE, MUTUAL or PASSTHROUGH"
                            ));
                        }
                        None if https => {
                            why.push("an HTTPS server needs tls.mode SIMPLE or MUTUAL".to_owned())
                        }
                        None => {}
                    }
                }
            }
            for w in why {
                out.push(finding(
                    Severity::Error,
                    codes::GATEWAY_TLS_UNSUPPORTED,
                    format!("{}: server on port {port}: {w}", gw.source),
                    vec![gw.source.clone()],
                ));
            }
        }
    }
}

fn client_name(m: Option<ClientTlsMode>) -> &'static str {
    m.map_or("AUTO", ClientTlsMode::as_str)
}

/// Why a server mode and a client mode cannot talk, if they cannot.
pub fn tls_conflict(server: MtlsMode, client: Option<ClientTlsMode>) -> Option<String> {
    match (server, client) {
        (MtlsMode::Strict, Some(c @ (ClientTlsMode::Disable | ClientTlsMode::Simple | ClientTlsMode::Mutual))) => Some(format!(
            "the server requires mesh mTLS (STRICT) but the client sends {}",
            if c == ClientTlsMode::Disable { "plaintext (DISABLE)".to_owned() } else { format!("{} TLS without a mesh certificate", client_name(Some(c))) }
        )),
        (MtlsMode::Disable, Some(ClientTlsMode::IstioMutual)) => {
            Some("the client sends mesh mTLS (ISTIO_MUTUAL) but the server accepts plaintext only (DISABLE)".to_owned())
        }
        _ => None,
    }
}

fn tls_table(snap: &Snapshot) -> Vec<TlsRow> {
    let mut rows = Vec::new();
    for svc in snap.services.values() {
        for port in &svc.ports {
            let host_port = format!("{}:{}", svc.host, port.number);
            let mut servers = BTreeSet::new();
            let mut clients = BTreeSet::new();
            let mut authn = BTreeSet::new();
            let mut dr = None;
            // Reason → the workloads it hits, so each reason is told once.
            let mut reasons: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
            let subsets: Vec<(Option<&str>, Vec<usize>)> =
                match snap.destination_policies.get(&svc.host) {
                    Some(dp) if !dp.subsets.is_empty() => {
                        let mut v: Vec<(Option<&str>, Vec<usize>)> = dp
                            .subsets
                            .iter()
                            .map(|s| (Some(s.name.as_str()), s.workloads.clone()))
                            .collect();
                        // Requests without a subset reach every workload.
                        v.push((None, svc.workloads.clone()));
                        v
                    }
                    _ => vec![(None, svc.workloads.clone())],
                };
            for (subset, members) in subsets {
                let client = snap.client_tls(&svc.host, port.number, subset);
                clients.insert(client_name(client.mode));
                if client.decided_by.is_some() {
                    dr = client.decided_by.clone();
                }
                if svc.location == Location::MeshExternal {
                    match client.mode {
                        Some(ClientTlsMode::IstioMutual) => {
                            reasons.entry("the service is outside the mesh (MESH_EXTERNAL) and cannot answer mesh mTLS (ISTIO_MUTUAL)".to_owned()).or_default();
                        }
                        Some(ClientTlsMode::Simple)
                            if client
                                .settings
                                .as_ref()
                                .is_some_and(|t| !t.subject_alt_names.is_empty()) =>
                        {
                            reasons.entry("TLS origination (SIMPLE) with subjectAltNames is not supported yet: requests get 503".to_owned()).or_default();
                        }
                        Some(ClientTlsMode::Simple)
                            if !matches!(
                                port.protocol,
                                crate::resources::networking::Protocol::Http
                                    | crate::resources::networking::Protocol::Https
                            ) =>
                        {
                            reasons.entry(format!("TLS origination (SIMPLE) is done for HTTP/1.1 ports only, not {}: connections get refused", port.protocol)).or_default();
                        }
                        Some(ClientTlsMode::Mutual) => {
                            // What the data plane answers such a request
                            // with (plan::endpoint_tls): 503.
                            reasons.entry("TLS origination (MUTUAL) towards a service outside the mesh is not supported yet: requests get 503".to_owned()).or_default();
                        }
                        _ => {}
                    }
                    continue;
                }
                for i in members {
                    let w = &snap.workloads[i];
                    let inbound = snap.inbound_mode(w, svc.target_port(port, w));
                    servers.insert(inbound.mode.as_str());
                    if let Some(src) = inbound.decided_by {
                        authn.insert(src);
                    }
                    if let Some(r) = tls_conflict(inbound.mode, client.mode) {
                        reasons.entry(r).or_default().insert(w.key.clone());
                    }
                }
            }
            let server = if svc.location == Location::MeshExternal {
                "-".to_owned()
            } else if servers.is_empty() {
                // No workloads: show what a workload would get.
                let probe = snap
                    .peer_policies
                    .iter()
                    .find(|p| matches!(&p.scope, PeerScope::Namespace(ns) if *ns == svc.namespace))
                    .map(|p| p.mode);
                probe
                    .unwrap_or(snap.mesh.default_mtls_mode)
                    .as_str()
                    .to_owned()
            } else {
                servers.into_iter().collect::<Vec<_>>().join(",")
            };
            let reasons: Vec<String> = reasons
                .into_iter()
                .map(|(r, ws)| {
                    if ws.is_empty() {
                        r
                    } else {
                        format!(
                            "{r} (workloads {})",
                            ws.into_iter().collect::<Vec<_>>().join(", ")
                        )
                    }
                })
                .collect();
            rows.push(TlsRow {
                host_port,
                server,
                client: clients.into_iter().collect::<Vec<_>>().join(","),
                status: if reasons.is_empty() {
                    TlsStatus::Ok
                } else {
                    TlsStatus::Conflict
                },
                reason: (!reasons.is_empty()).then(|| reasons.join("; ")),
                authn_policies: authn.into_iter().map(|r| (*r).clone()).collect(),
                destination_rule: dr,
            });
        }
    }
    rows
}

/// TLS conflicts of DestinationRules the table above does not show: a rule
/// in force only for its own namespace's clients (Istio looks in the
/// client's namespace first), where the whole mesh's table shows another
/// rule for the host. Each such rule is checked against the servers of the
/// services it matches, as its namespace's clients would send.
fn shadowed_rules(snap: &Snapshot, res: &crate::resources::Resources, out: &mut Vec<Finding>) {
    let m = &snap.mesh;
    let rules = crate::snapshot::RuleIndex::new(res);
    for (index, dr) in res.destination_rules.iter().enumerate() {
        let owner = dr.namespace();
        if !crate::visibility::exported_to(
            &dr.spec.export_to,
            &m.default_destination_rule_export_to,
            owner,
            owner,
        ) {
            continue;
        }
        let pattern = m.resolve_host(&dr.spec.host, owner);
        let matched: Vec<&crate::snapshot::Service> =
            if crate::visibility::wildcard_key(&pattern).is_some() {
                snap.services
                    .values()
                    .filter(|s| crate::visibility::host_matches(&pattern, &s.host))
                    .collect()
            } else {
                snap.services.get(&pattern).into_iter().collect()
            };
        for svc in matched {
            let in_force = snap.destination_policies.get(&svc.host);
            if in_force.is_some_and(|d| d.source == dr.source)
                || svc.location == Location::MeshExternal
                || rules.in_force(res, &svc.host, Some(&svc.namespace), Some(owner)) != Some(index)
            {
                continue;
            }
            let dp = crate::snapshot::DestinationPolicy {
                source: dr.source.clone(),
                traffic_policy: dr.spec.traffic_policy.clone(),
                subsets: Vec::new(),
            };
            let mut subsets: Vec<(Option<&str>, &crate::resources::common::Labels)> = dr
                .spec
                .subsets
                .iter()
                .map(|s| (Some(s.name.as_str()), &s.labels))
                .collect();
            static ALL: std::sync::LazyLock<crate::resources::common::Labels> =
                std::sync::LazyLock::new(crate::resources::common::Labels::new);
            subsets.push((None, &ALL));
            let mut reasons: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
            for port in &svc.ports {
                for (subset, labels) in &subsets {
                    let sub_policy =
                        subset.and_then(|n| dr.spec.subsets.iter().find(|s| s.name == n));
                    let dp = crate::snapshot::DestinationPolicy {
                        subsets: sub_policy
                            .map(|s| crate::snapshot::SubsetEntry {
                                name: s.name.clone(),
                                labels: s.labels.clone(),
                                workloads: Vec::new(),
                                traffic_policy: s.traffic_policy.clone(),
                            })
                            .into_iter()
                            .collect(),
                        ..dp.clone()
                    };
                    let client = crate::snapshot::client_tls_of(Some(&dp), port.number, *subset);
                    for i in svc
                        .workloads
                        .iter()
                        .filter(|i| labels_match(labels, &snap.workloads[**i].labels))
                    {
                        let w = &snap.workloads[*i];
                        let inbound = snap.inbound_mode(w, svc.target_port(port, w));
                        if let Some(r) = tls_conflict(inbound.mode, client.mode) {
                            reasons
                                .entry(format!("{}:{}: {r}", svc.host, port.number))
                                .or_default()
                                .insert(w.key.clone());
                        }
                    }
                }
            }
            for (reason, workloads) in reasons {
                out.push(finding(
                    Severity::Error,
                    codes::TLS_CONFLICT,
                    format!(
                        "{reason} (workloads {}), for clients in namespace {owner}: {} is in force for them",
                        workloads.into_iter().collect::<Vec<_>>().join(", "),
                        dr.source
                    ),
                    vec![dr.source.clone()],
                ));
            }
        }
    }
}

fn finding(
    severity: Severity,
    code: &'static str,
    message: String,
    resources: Vec<ResourceRef>,
) -> Finding {
    Finding {
        severity,
        code,
        message,
        resources,
    }
}

fn all_rules(snap: &Snapshot) -> Vec<&HttpRouteRule> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    let gw_rules = snap.gateways.values().flat_map(|g| g.routes.values());
    for rules in snap.mesh_routes.values().chain(gw_rules) {
        for r in rules {
            if seen.insert((r.source.clone(), r.index)) {
                out.push(r.as_ref());
            }
        }
    }
    out
}

fn routes(snap: &Snapshot, res: &crate::resources::Resources, out: &mut Vec<Finding>) {
    for rule in all_rules(snap) {
        let at = format!("{} http[{}]", rule.source, rule.index);
        let mut dests: Vec<WeightedDestination> = Vec::new();
        if let RouteAction::Forward(ds) = &rule.action {
            dests.extend(ds.iter().cloned());
        }
        let n = dests.len();
        dests.extend(rule.mirror.iter().cloned());
        destinations(snap, &at, &rule.source, &dests, n, out);
    }
    for vs in &res.virtual_services {
        let l4 = vs.spec.tcp.iter().map(|r| ("tcp", &r.route));
        let tls = vs.spec.tls.iter().map(|r| ("tls", &r.route));
        let mut index = std::collections::BTreeMap::<&str, usize>::new();
        for (kind, route) in l4.chain(tls) {
            let i = index.entry(kind).or_default();
            let at = format!("{} {kind}[{i}]", vs.source);
            *i += 1;
            let dests: Vec<WeightedDestination> = route
                .iter()
                .map(|d| WeightedDestination {
                    host: snap.mesh.resolve_host(&d.destination.host, vs.namespace()),
                    subset: d.destination.subset.clone(),
                    port: d.destination.port.map(|p| p.number),
                    weight: d.weight.unwrap_or(if route.len() == 1 { 100 } else { 0 }),
                    headers: None,
                })
                .collect();
            destinations(snap, &at, &vs.source, &dests, dests.len(), out);
        }
    }
    for vs in &res.virtual_services {
        let gateways: Vec<String> = vs
            .spec
            .gateways
            .iter()
            .map(|g| crate::snapshot::gateway_key(g, vs.namespace()))
            .collect();
        for g in &gateways {
            if g != "mesh" && !snap.gateways.contains_key(g) {
                out.push(finding(
                    Severity::Error,
                    codes::GATEWAY_NOT_FOUND,
                    format!(
                        "{}: gateway {g} does not exist; its routes are served nowhere",
                        vs.source
                    ),
                    vec![vs.source.clone()],
                ));
            }
        }
        if gateways.is_empty() || gateways.iter().any(|g| g == "mesh") {
            for h in &vs.spec.hosts {
                let host = snap.mesh.resolve_host(h, vs.namespace());
                if !host.contains('*') && snap.service_for(&host).is_none() {
                    out.push(finding(
                        Severity::Warning,
                        codes::HOST_NOT_FOUND,
                        format!("{}: host {host} is not a known service; mesh clients cannot address it", vs.source),
                        vec![vs.source.clone()],
                    ));
                }
            }
        }
    }
}

/// Checks the destinations of one rule; the first `weighted` are its
/// weighted destinations, the rest mirrors.
fn destinations(
    snap: &Snapshot,
    at: &str,
    source: &ResourceRef,
    dests: &[WeightedDestination],
    weighted: usize,
    out: &mut Vec<Finding>,
) {
    if weighted > 1 {
        let sum: u32 = dests[..weighted].iter().map(|d| d.weight).sum();
        if sum != 100 {
            out.push(finding(
                Severity::Error,
                codes::WEIGHTS,
                format!("{at}: route weights sum to {sum}, not 100"),
                vec![source.clone()],
            ));
        }
    }
    for d in dests {
        let Some(svc) = snap.service_for(&d.host) else {
            out.push(finding(
                Severity::Error,
                codes::HOST_NOT_FOUND,
                format!("{at}: destination host {} is not a known service (no ServiceEntry); requests get 503", d.host),
                vec![source.clone()],
            ));
            continue;
        };
        if let Some(port) = d.port {
            if svc.port(port).is_none() {
                out.push(finding(
                    Severity::Error,
                    codes::PORT_NOT_FOUND,
                    format!("{at}: service {} has no port {port}", d.host),
                    vec![source.clone(), svc.source.clone()],
                ));
            }
        }
        if let Some(subset) = &d.subset {
            match snap.destination_policies.get(&svc.host) {
                None => out.push(finding(
                    Severity::Error,
                    codes::SUBSET_NOT_FOUND,
                    format!("{at}: subset {subset} of {} is used but no DestinationRule defines subsets for that host; requests get 503", d.host),
                    vec![source.clone()],
                )),
                Some(dp) if dp.subset(subset).is_none() => out.push(finding(
                    Severity::Error,
                    codes::SUBSET_NOT_FOUND,
                    format!("{at}: subset {subset} of {} is not defined in {}; requests get 503", d.host, dp.source),
                    vec![source.clone(), dp.source.clone()],
                )),
                Some(_) => {}
            }
        }
    }
}

fn services(snap: &Snapshot, res: &crate::resources::Resources, out: &mut Vec<Finding>) {
    for (host, dp) in &snap.destination_policies {
        let Some(svc) = snap.services.get(host) else {
            out.push(finding(
                Severity::Warning,
                codes::HOST_NOT_FOUND,
                format!(
                    "{}: host {host} is not a known service; the rule applies to nothing",
                    dp.source
                ),
                vec![dp.source.clone()],
            ));
            continue;
        };
        for s in &dp.subsets {
            if s.workloads.is_empty() {
                out.push(finding(
                    Severity::Warning,
                    codes::SUBSET_EMPTY,
                    format!(
                        "{}: subset {} selects no workload of {host}; traffic sent to it gets 503",
                        dp.source, s.name
                    ),
                    vec![dp.source.clone(), svc.source.clone()],
                ));
            }
        }
    }
    // A wildcard rule is in force for the services it matches (compiled
    // under their hosts above); one that matches none applies to nothing.
    for dr in &res.destination_rules {
        let pattern = snap.mesh.resolve_host(&dr.spec.host, dr.namespace());
        if crate::visibility::wildcard_key(&pattern).is_none()
            || snap.services.contains_key(&pattern)
            || snap
                .services
                .keys()
                .any(|h| crate::visibility::host_matches(&pattern, h))
        {
            continue;
        }
        out.push(finding(
            Severity::Warning,
            codes::HOST_NOT_FOUND,
            format!(
                "{}: host {pattern} matches no known service; the rule applies to nothing",
                dr.source
            ),
            vec![dr.source.clone()],
        ));
    }
    for svc in snap.services.values() {
        if svc.workloads.is_empty() && svc.location == Location::MeshInternal {
            out.push(finding(
                Severity::Warning,
                codes::NO_WORKLOADS,
                format!(
                    "{}: service {} has no workload; requests to it get 503",
                    svc.source, svc.host
                ),
                vec![svc.source.clone()],
            ));
        }
    }
    duplicate_hosts(snap, res, out);
    networks(snap, out);
}

/// MESH0123: services no sidecar of the mesh can dial an endpoint of. A
/// caller is any workload outside the service; one without a network (or
/// no placed caller at all: a client the configuration does not describe)
/// is on every network, so then only endpoints without an address count.
fn networks(snap: &Snapshot, out: &mut Vec<Finding>) {
    use crate::locality::same_network;
    for svc in snap.services.values() {
        let eps: Vec<usize> = svc
            .workloads
            .iter()
            .copied()
            .filter(|i| snap.workloads[*i].healthy && snap.workloads[*i].dns.is_none())
            .collect();
        if eps.is_empty() {
            continue;
        }
        let callers: Vec<Option<&str>> = snap
            .workloads
            .iter()
            .enumerate()
            .filter(|(i, w)| !svc.workloads.contains(i) && w.dns.is_none())
            .map(|(_, w)| w.network.as_deref())
            .collect();
        let anyone = callers.is_empty() || callers.iter().any(Option::is_none);
        let reachable = eps.iter().any(|i| {
            let w = &snap.workloads[*i];
            !w.address.is_empty()
                && (anyone
                    || callers
                        .iter()
                        .any(|c| same_network(*c, w.network.as_deref())))
        });
        if reachable {
            continue;
        }
        let first = &snap.workloads[eps[0]];
        // The field of the first endpoint: an inline endpoint's
        // `spec.endpoints[i]`, a WorkloadEntry's `spec`.
        let field = match first.key.rsplit_once('[') {
            Some((_, i)) if first.source.kind != crate::resources::Kind::WorkloadEntry => {
                format!("spec.endpoints[{i}")
            }
            _ => "spec".to_owned(),
        };
        let field = if first.address.is_empty() {
            format!("{field}.address")
        } else {
            format!("{field}.network")
        };
        let nets: BTreeSet<&str> = callers.iter().flatten().copied().collect();
        // An error (`check` exits 1): every request to the service fails.
        out.push(finding(
            Severity::Error,
            codes::ENDPOINTS_ON_OTHER_NETWORKS,
            format!(
                "{} ({}, {}): service {} has no endpoint a sidecar can dial: each is on another network than the mesh's workloads ({}) or has no address; Istio reaches them through an east-west gateway, which this mesh has none of, so requests get 503",
                first.source,
                first.source.origin.file.display(),
                field,
                svc.host,
                nets.into_iter().collect::<Vec<_>>().join(", ")
            ),
            vec![first.source.clone(), svc.source.clone()],
        ));
    }
}

/// A definition of a host: a DestinationRule's or a ServiceEntry's.
struct Definition<'a> {
    source: &'a ResourceRef,
    export_to: &'a [String],
    default: &'a [String],
    owner: &'a str,
}

/// Two definitions of one host that some namespace sees both of, where
/// the precedence ([`crate::visibility`]) does not decide: a namespace's
/// own definition wins over others, so two in different namespaces clash
/// only in a third that sees both (a ServiceEntry; a DestinationRule is
/// then decided by the service's namespace and the root namespace).
fn duplicate_hosts(snap: &Snapshot, res: &crate::resources::Resources, out: &mut Vec<Finding>) {
    let m = &snap.mesh;
    let mut by_host: BTreeMap<(bool, String), Vec<Definition<'_>>> = BTreeMap::new();
    for dr in &res.destination_rules {
        by_host
            .entry((false, m.resolve_host(&dr.spec.host, dr.namespace())))
            .or_default()
            .push(Definition {
                source: &dr.source,
                export_to: &dr.spec.export_to,
                default: &m.default_destination_rule_export_to,
                owner: dr.namespace(),
            });
    }
    for se in &res.service_entries {
        for h in &se.spec.hosts {
            by_host
                .entry((true, m.resolve_host(h, se.namespace())))
                .or_default()
                .push(Definition {
                    source: &se.source,
                    export_to: &se.spec.export_to,
                    default: &m.default_service_export_to,
                    owner: se.namespace(),
                });
        }
    }
    for ((service, host), defs) in by_host.into_iter().filter(|(_, d)| d.len() > 1) {
        let mut involved = BTreeSet::new();
        // `None`: every namespace that sees them.
        let mut seen_in: Option<BTreeSet<String>> = Some(BTreeSet::new());
        for (i, a) in defs.iter().enumerate() {
            for (j, b) in defs.iter().enumerate().skip(i + 1) {
                if a.owner != b.owner && !service {
                    continue;
                }
                let mut together = crate::visibility::seen_together(
                    (a.export_to, a.default, a.owner),
                    (b.export_to, b.default, b.owner),
                );
                if a.owner != b.owner {
                    if let Some(t) = &mut together {
                        t.remove(a.owner);
                        t.remove(b.owner);
                    }
                }
                match together {
                    Some(t) if t.is_empty() => continue,
                    Some(t) => {
                        if let Some(s) = &mut seen_in {
                            s.extend(t);
                        }
                    }
                    None => seen_in = None,
                }
                involved.extend([i, j]);
            }
        }
        if involved.is_empty() {
            continue;
        }
        let refs: Vec<ResourceRef> = involved.iter().map(|i| defs[*i].source.clone()).collect();
        let names: Vec<String> = refs.iter().map(ToString::to_string).collect();
        let scope = match &seen_in {
            Some(s) if !s.is_empty() => format!(
                " in namespace {}",
                s.iter().cloned().collect::<Vec<_>>().join(", ")
            ),
            _ => String::new(),
        };
        let what = if service {
            format!("service {host}")
        } else {
            host
        };
        out.push(finding(
            Severity::Warning,
            codes::DUPLICATE_HOST,
            format!(
                "{what} is defined by {}; only the first ({}) is in force{scope}",
                names.join(" and "),
                names[0]
            ),
            refs,
        ));
    }
}

/// The workloads a workload-level peer policy selects; `None` for mesh- and
/// namespace-wide ones.
fn peer_selection(snap: &Snapshot, p: &PeerPolicy) -> Option<BTreeSet<usize>> {
    match &p.scope {
        PeerScope::Workloads { namespace, labels } => Some(
            snap.workloads_in(namespace)
                .iter()
                .copied()
                .filter(|i| labels_match(labels, &snap.workloads[*i].labels))
                .collect(),
        ),
        PeerScope::Services(targets) => Some(
            targets
                .iter()
                .filter_map(|(host, _)| snap.services.get(host))
                .flat_map(|s| s.workloads.iter().copied())
                .collect(),
        ),
        PeerScope::Mesh | PeerScope::Namespace(_) => None,
    }
}

fn peer_policies(snap: &Snapshot, out: &mut Vec<Finding>) {
    let ps = &snap.peer_policies;
    // Each policy's selection once: pairs compare sets, never rescan.
    let selections: Vec<Option<BTreeSet<usize>>> =
        ps.iter().map(|p| peer_selection(snap, p)).collect();
    for (i, a) in ps.iter().enumerate() {
        for (j, b) in ps.iter().enumerate().skip(i + 1) {
            let overlap = match (&a.scope, &b.scope) {
                (PeerScope::Mesh, PeerScope::Mesh) => true,
                (PeerScope::Namespace(x), PeerScope::Namespace(y)) => x == y,
                _ => match (&selections[i], &selections[j]) {
                    (Some(x), Some(y)) => !x.is_disjoint(y),
                    _ => false,
                },
            };
            if !overlap {
                continue;
            }
            let (severity, what) = if a.mode != b.mode || a.port_modes != b.port_modes {
                (Severity::Error, "contradict each other")
            } else {
                (Severity::Warning, "overlap")
            };
            out.push(finding(
                severity,
                codes::PEER_POLICY_CONFLICT,
                format!(
                    "{} ({}) and {} ({}) {what} on the same workloads; {} is in force",
                    a.source, a.mode, b.source, b.mode, a.source
                ),
                vec![(*a.source).clone(), (*b.source).clone()],
            ));
        }
    }
}

fn authz(snap: &Snapshot, out: &mut Vec<Finding>) {
    // A workload's compiled policies are exactly those that apply to it.
    let mut applied = vec![false; snap.authz_policies.len()];
    for i in snap.workloads.iter().flat_map(|w| w.authz_policies.iter()) {
        if let Some(a) = applied.get_mut(*i) {
            *a = true;
        }
    }
    for (i, p) in snap.authz_policies.iter().enumerate() {
        let selects = applied[i];
        if !selects {
            out.push(finding(
                Severity::Warning,
                codes::AUTHZ_NEVER_MATCHES,
                format!("{}: selects no workload; it never applies", p.source),
                vec![(*p.source).clone()],
            ));
        }
        if p.rules.is_empty() {
            let msg = match p.action {
                AuthzAction::Allow if p.dry_run => {
                    "has no rules, so in dry-run it reports every request to its workloads as denied"
                }
                AuthzAction::Allow => {
                    "has no rules, so it allows nothing: every request to its workloads is denied"
                }
                _ => "has no rules and never matches",
            };
            out.push(finding(
                Severity::Warning,
                codes::AUTHZ_NEVER_MATCHES,
                format!("{}: {msg}", p.source),
                vec![(*p.source).clone()],
            ));
        }
        if p.action == AuthzAction::Custom {
            out.push(finding(
                Severity::Warning,
                codes::CUSTOM_PROVIDER_UNDEFINED,
                format!(
                    "{} in {}: spec.provider.name: CUSTOM provider `{}` is not defined as an external authorizer this mesh can call (MeshConfig extensionProviders; envoyExtAuthzHttp and envoyExtAuthzGrpc are not implemented yet): as Istio does, every request and connection to the workloads it applies to is denied, whatever its rules",
                    p.source,
                    p.source.origin,
                    p.provider.as_deref().unwrap_or_default()
                ),
                vec![(*p.source).clone()],
            ));
        }
        let td = snap.mesh.trust_domain.as_str();
        for (i, rule) in p.rules.iter().enumerate() {
            // Sources are ORed, and so are operations: a rule is dead when
            // every source is dead, or every operation, or any condition
            // (conditions are ANDed). Within one source or operation the
            // fields are ANDed, so one dead field kills it.
            let mut why = Vec::new();
            let sources: Vec<Vec<String>> = rule
                .from
                .iter()
                .map(|f| {
                    let s = &f.source;
                    let foreign = |v: &str| !v.contains('*') && v.split('/').next() != Some(td);
                    let mut dead = Vec::new();
                    dead_field(
                        &mut dead,
                        "principals",
                        &s.principals,
                        &s.not_principals,
                        |v| {
                            foreign(v)
                                .then(|| format!("principal {v} is outside the trust domain {td}"))
                        },
                    );
                    dead_field(
                        &mut dead,
                        "namespaces",
                        &s.namespaces,
                        &s.not_namespaces,
                        |_| None,
                    );
                    dead_field(
                        &mut dead,
                        "ipBlocks",
                        &s.ip_blocks,
                        &s.not_ip_blocks,
                        |_| None,
                    );
                    dead
                })
                .collect();
            if !sources.is_empty() && sources.iter().all(|d| !d.is_empty()) {
                why.extend(sources.into_iter().flatten());
            }
            let operations: Vec<Vec<String>> = rule
                .to
                .iter()
                .map(|t| {
                    let o = &t.operation;
                    let mut dead = Vec::new();
                    dead_field(&mut dead, "hosts", &o.hosts, &o.not_hosts, |_| None);
                    dead_field(&mut dead, "ports", &o.ports, &o.not_ports, |_| None);
                    dead_field(&mut dead, "methods", &o.methods, &o.not_methods, |m| {
                        m.chars().any(|c| c.is_ascii_lowercase()).then(|| {
                            format!("method {m} is not uppercase; HTTP methods are matched exactly")
                        })
                    });
                    dead_field(&mut dead, "paths", &o.paths, &o.not_paths, |_| None);
                    dead
                })
                .collect();
            if !operations.is_empty() && operations.iter().all(|d| !d.is_empty()) {
                why.extend(operations.into_iter().flatten());
            }
            for c in &rule.when {
                dead_field(&mut why, &c.key, &c.values, &c.not_values, |_| None);
            }
            // Fields Istio takes whose values match no request here: a
            // path that is neither absolute nor a `*` pattern (Envoy
            // matches it exactly, and no request path equals it), and
            // Envoy dynamic metadata, which no filter of this mesh sets.
            let mut never = Vec::new();
            for (j, t) in rule.to.iter().enumerate() {
                let o = &t.operation;
                for (name, values) in [("paths", &o.paths), ("notPaths", &o.not_paths)] {
                    for (k, v) in values.iter().enumerate() {
                        if !v.starts_with('/') && !v.starts_with('*') {
                            never.push(format!(
                                "rules[{i}].to[{j}].operation.{name}[{k}] `{v}` matches no request path (a path starts with /)"
                            ));
                        }
                    }
                }
            }
            for (j, c) in rule.when.iter().enumerate() {
                if c.key.starts_with("experimental.envoy.filters.") {
                    never.push(format!(
                        "rules[{i}].when[{j}].key `{}` is Envoy metadata no filter here sets: its values never match, its notValues always do",
                        c.key
                    ));
                }
            }
            for n in never {
                out.push(finding(
                    Severity::Warning,
                    codes::AUTHZ_NEVER_MATCHES,
                    format!("{} {n}", p.source),
                    vec![(*p.source).clone()],
                ));
            }
            if !why.is_empty() {
                out.push(finding(
                    Severity::Warning,
                    codes::AUTHZ_NEVER_MATCHES,
                    format!(
                        "{} rules[{i}]: can never match: {}",
                        p.source,
                        why.join("; ")
                    ),
                    vec![(*p.source).clone()],
                ));
            }
        }
    }
}

/// A positive field is dead when every one of its values is: excluded again
/// by the not-variant, or dead for a reason `dead_value` gives.
fn dead_field(
    why: &mut Vec<String>,
    field: &str,
    values: &[String],
    not_values: &[String],
    dead_value: impl Fn(&str) -> Option<String>,
) {
    if values.is_empty() {
        return;
    }
    let reasons: Vec<String> = values
        .iter()
        .map(|v| {
            if not_values.iter().any(|n| n == "*" || n == v) {
                Some(format!(
                    "{field} value {v} is excluded again by its not-variant"
                ))
            } else {
                dead_value(v)
            }
        })
        .collect::<Option<Vec<_>>>()
        .unwrap_or_default();
    if !reasons.is_empty() {
        why.push(reasons.join(", "));
    }
}
