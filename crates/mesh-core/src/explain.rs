//! `explain`: the decision for one request from one workload (or Gateway)
//! to one host, step by step, each step naming the resource that decided
//! it. It renders the routing plan ([`crate::plan`]) the data plane takes:
//! the same rule, fault, destinations, destination port, endpoints and
//! client TLS, then the server's mTLS mode and authorization as the
//! destination's inbound applies them (Istio's TCP rules on ports that are
//! not HTTP). What dry-run AuthorizationPolicies would have decided is
//! told in the authorization step and changes nothing else.

use std::fmt;
use std::net::IpAddr;

use serde::Serialize;

use crate::authz::{AuthzRequest, ConnectionInfo, Sni, evaluate, evaluate_tcp};
use crate::identity::SpiffeId;
use crate::plan::{
    DestinationPlan, EndpointTls, PlanError, PlanRequest, PlannedAction, RoutePlan,
    resolve_destination, tcp_destinations,
};
use crate::resources::ResourceRef;
use crate::resources::common::Labels;
use crate::resources::networking::Location;
use crate::route::{HttpRouteRule, RequestInfo, WeightedDestination};
use crate::snapshot::{GatewayEntry, Snapshot, Workload, gateway_key};

/// The request to explain.
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// The calling workload or Gateway: `name` (unique across namespaces)
    /// or `namespace/name`.
    pub from: String,
    /// `host` or `host:port`.
    pub to: String,
    /// Method; GET when empty.
    pub method: String,
    /// Path and query; `/` when empty.
    pub path: String,
    /// Request headers.
    pub headers: Vec<(String, String)>,
}

/// Why a query cannot be explained at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ExplainError {
    /// `--from` names no workload or Gateway.
    #[error(
        "no workload or Gateway named `{0}` (use the WorkloadEntry's or the Gateway's name, or namespace/name)"
    )]
    UnknownWorkload(String),
    /// `--from` names several, in different namespaces.
    #[error("`{name}` names more than one source: {}; use namespace/name", candidates.join(", "))]
    AmbiguousSource {
        /// The name given.
        name: String,
        /// What it could mean.
        candidates: Vec<String>,
    },
    /// `--to` has a bad port.
    #[error("`{0}` is not HOST or HOST:PORT")]
    BadTarget(String),
    /// What the source's namespace sees does not compile.
    #[error("the view of namespace {namespace} does not compile: {why}")]
    View {
        /// The source's namespace.
        namespace: String,
        /// The compile's errors.
        why: String,
    },
}

/// One step of the decision.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// What was decided: `source`, `service`, `gateway`, `route`, `fault`,
    /// `destination`, `client-tls`, `server-mtls`, `authorization`.
    pub step: &'static str,
    /// The decision in words.
    pub decision: String,
    /// The resource that decided it; `None` for a built-in default.
    pub decided_by: Option<ResourceRef>,
    /// Whether the request gets through this step.
    pub ok: bool,
}

/// A share of the requests and what they get.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Share {
    /// Percent of the requests.
    pub percent: f64,
    /// The status they get.
    pub status: u16,
    /// The destination (`host` or `host subset s`), when they reach one.
    pub destination: Option<String>,
    /// The endpoints (`address:port`) they may reach, with mesh mTLS
    /// (`true`) or not.
    pub endpoints: Vec<(String, bool)>,
    /// Why, in words.
    pub reason: String,
}

impl fmt::Display for Share {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.0}% {} ({})", self.percent, self.status, self.reason)
    }
}

/// The explanation: the steps and the end result.
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    /// The steps, in the order the mesh takes them.
    pub steps: Vec<Step>,
    /// What the caller would see, in words.
    pub outcome: String,
    /// The same, by share of the requests.
    pub shares: Vec<Share>,
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.steps.iter().enumerate() {
            let mark = if s.ok { "ok " } else { "FAIL" };
            write!(f, "{:>2}. [{mark}] {:<14} {}", i + 1, s.step, s.decision)?;
            match &s.decided_by {
                Some(r) => writeln!(f, "\n               decided by {r} ({})", r.origin)?,
                None => writeln!(f)?,
            }
        }
        write!(f, "=> {}", self.outcome)
    }
}

/// Who sends the request.
enum Source<'s> {
    Workload(&'s Workload),
    Gateway {
        key: String,
        entry: &'s GatewayEntry,
        identity: Option<SpiffeId>,
    },
}

impl Source<'_> {
    fn namespace(&self) -> &str {
        match self {
            Self::Workload(w) => &w.namespace,
            Self::Gateway { entry, .. } => &entry.source.namespace,
        }
    }

    fn identity(&self) -> Option<&SpiffeId> {
        match self {
            Self::Workload(w) => Some(&w.identity),
            Self::Gateway { identity, .. } => identity.as_ref(),
        }
    }

    fn address(&self) -> Option<IpAddr> {
        match self {
            Self::Workload(w) => w.address.parse().ok(),
            Self::Gateway { .. } => None,
        }
    }
}

/// A workload or Gateway by `namespace/name`, or by a bare name that is
/// unique across namespaces.
fn find_source<'s>(snap: &'s Snapshot, from: &str) -> Result<Source<'s>, ExplainError> {
    let mut found: Vec<(String, Source<'s>)> = Vec::new();
    let wanted = |ns: &str, name: &str| match from.split_once('/') {
        Some((n, m)) => n == ns && m == name,
        None => from == name,
    };
    for w in &snap.workloads {
        let (ns, name) = w.key.split_once('/').unwrap_or(("default", &w.key));
        if wanted(ns, name) {
            found.push((format!("workload {}", w.key), Source::Workload(w)));
        }
    }
    for (key, entry) in &snap.gateways {
        if wanted(&entry.source.namespace, &entry.source.name) {
            let identity = SpiffeId::for_workload(
                &snap.mesh.trust_domain,
                &entry.source.namespace,
                &entry.source.name,
            )
            .ok();
            found.push((
                format!("Gateway {key}"),
                Source::Gateway {
                    key: key.clone(),
                    entry,
                    identity,
                },
            ));
        }
    }
    match found.len() {
        0 => Err(ExplainError::UnknownWorkload(from.to_owned())),
        1 => Ok(found.remove(0).1),
        _ => Err(ExplainError::AmbiguousSource {
            name: from.to_owned(),
            candidates: found.into_iter().map(|(n, _)| n).collect(),
        }),
    }
}

/// What is being worked out, and the steps so far.
struct Explainer<'s, 'q> {
    snap: &'s Snapshot,
    q: &'q Query,
    source: Source<'s>,
    steps: Vec<Step>,
    shares: Vec<Share>,
}

impl Explainer<'_, '_> {
    fn step(&mut self, name: &'static str, ok: bool, decision: String, by: Option<ResourceRef>) {
        self.steps.push(Step {
            step: name,
            decision,
            decided_by: by,
            ok,
        });
    }

    fn share(&mut self, percent: f64, status: u16, reason: String) {
        self.shares.push(Share {
            percent,
            status,
            destination: None,
            endpoints: Vec::new(),
            reason,
        });
    }

    fn method(&self) -> &str {
        if self.q.method.is_empty() {
            "GET"
        } else {
            &self.q.method
        }
    }

    fn path(&self) -> &str {
        if self.q.path.is_empty() {
            "/"
        } else {
            &self.q.path
        }
    }

    fn finish(self) -> Explanation {
        let outcome = self
            .shares
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        Explanation {
            steps: self.steps,
            outcome,
            shares: self.shares,
        }
    }
}

/// Explains a request as the source's data plane decides it: over what the
/// source sees of `r` (its namespace's view, through its Sidecar for a
/// workload: [`crate::visibility`]), which
/// `snap` (compiled from all of `r`) is the first place to find the
/// source in.
pub fn explain_in_view(
    r: &crate::resources::Resources,
    snap: &Snapshot,
    q: &Query,
) -> Result<Explanation, ExplainError> {
    let source = find_source(snap, &q.from)?;
    let namespace = source.namespace().to_owned();
    let seen = match &source {
        Source::Workload(w) => crate::visibility::workload_view(r, &w.key),
        Source::Gateway { .. } => crate::visibility::view(r, &namespace),
    };
    let view = crate::snapshot::compile(&seen).map_err(|e| ExplainError::View {
        namespace,
        why: e.to_string(),
    })?;
    explain(&view, q)
}

/// Explains a request over `snap` as compiled, every resource visible:
/// [`explain_in_view`] is what a data plane decides.
pub fn explain(snap: &Snapshot, q: &Query) -> Result<Explanation, ExplainError> {
    let source = find_source(snap, &q.from)?;
    let (host, port) = match q.to.rsplit_once(':') {
        Some((h, p)) => (
            h.to_ascii_lowercase(),
            Some(
                p.parse::<u16>()
                    .map_err(|_| ExplainError::BadTarget(q.to.clone()))?,
            ),
        ),
        None => (q.to.to_ascii_lowercase(), None),
    };
    let mut x = Explainer {
        snap,
        q,
        source,
        steps: Vec::new(),
        shares: Vec::new(),
    };
    match &x.source {
        Source::Workload(w) => {
            let decision = format!("workload {} at {} as {}", w.key, w.address, w.identity);
            let by = Some(w.source.clone());
            x.step("source", true, decision, by);
            mesh(&mut x, &host, port);
        }
        Source::Gateway { key, entry, .. } => {
            let decision = format!("Gateway {key} ({} server(s))", entry.servers.len());
            let by = Some(entry.source.clone());
            let key = key.clone();
            x.step("source", true, decision, by);
            gateway(&mut x, &key, &host, port);
        }
    }
    Ok(x.finish())
}

/// Mesh traffic from a workload.
fn mesh(x: &mut Explainer<'_, '_>, host: &str, port: Option<u16>) {
    let snap = x.snap;
    let namespace = x.source.namespace().to_owned();
    let Some(svc) = snap.service(host, &namespace) else {
        let fqdn = snap.mesh.resolve_host(host, &namespace);
        x.step(
            "service",
            false,
            format!("{fqdn} is not a known service"),
            None,
        );
        x.share(100.0, 503, "no route to host".to_owned());
        return;
    };
    // Without a port, the service's first: a convenience of `explain`;
    // the data plane always has one (80 when the URI names none).
    let Some(sp) = port.map_or_else(|| svc.ports.first(), |p| svc.port(p)) else {
        let decision = format!("{} has no port {}", svc.host, port.unwrap_or_default());
        x.step("service", false, decision, Some(svc.source.clone()));
        x.share(100.0, 503, "no such port".to_owned());
        return;
    };
    let decision = format!(
        "{}:{} ({}), {} workload(s)",
        svc.host,
        sp.number,
        sp.protocol,
        svc.workloads.len()
    );
    x.step("service", true, decision, Some(svc.source.clone()));
    let labels = match &x.source {
        Source::Workload(w) => (*w.labels).clone(),
        Source::Gateway { .. } => Labels::new(),
    };
    if !sp.protocol.is_http() {
        let dests = tcp_destinations(svc, sp, &labels);
        let decision = match sp.tcp_rule(&labels) {
            Some(r) if r.source_labels.is_empty() => "TCP route of a VirtualService".to_owned(),
            Some(r) => format!(
                "TCP route of a VirtualService for callers labelled {}",
                r.source_labels
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            None => format!("{} port: opaque TCP to every workload", sp.protocol),
        };
        x.step("route", true, decision, None);
        destinations(x, &dests, sp.number, false, 100.0);
        return;
    }
    let authority = format!("{host}:{}", sp.number);
    let req = PlanRequest {
        host,
        info: RequestInfo {
            method: x.method(),
            path_and_query: x.path(),
            authority: &authority,
            scheme: "http",
            port: sp.number,
            headers: &x.q.headers,
            source_labels: &labels,
            source_namespace: Some(&namespace),
            gateway: None,
            auth: None,
        },
        namespace: &namespace,
        gateway: None,
    };
    let plan = crate::plan::route(snap, &req);
    http(x, plan, sp.number);
}

/// Traffic into a Gateway: the servers of the port (all ports when none
/// is given) that name the host.
fn gateway(x: &mut Explainer<'_, '_>, key: &str, host: &str, port: Option<u16>) {
    let snap = x.snap;
    let Some(entry) = snap.gateways.get(key) else {
        return;
    };
    let name = crate::gateway::request_host_name(host);
    let servers: Vec<usize> = (0..entry.servers.len())
        .filter(|i| port.is_none_or(|p| entry.servers[*i].port.number == p))
        .filter(|i| entry.admits(*i, &name))
        .collect();
    if servers.is_empty() {
        let on = port.map_or_else(String::new, |p| format!(" on port {p}"));
        x.step(
            "gateway",
            false,
            format!("no server of Gateway {key}{on} names {name}"),
            Some(entry.source.clone()),
        );
        x.share(100.0, 404, "no server for the host".to_owned());
        return;
    }
    let names: Vec<String> = servers
        .iter()
        .map(|i| {
            let s = &entry.servers[*i];
            format!("{} {}", s.port.number, s.port.protocol)
        })
        .collect();
    x.step(
        "gateway",
        true,
        format!("server(s) [{}] name {name}", names.join(", ")),
        Some(entry.source.clone()),
    );
    let namespace = entry.source.namespace.clone();
    // As the gateway's router reads it: the port of the Host (none: 80).
    let request_port = 80;
    let labels = Labels::new();
    let gw = gateway_key(key, &namespace);
    let req = PlanRequest {
        host: &name,
        info: RequestInfo {
            method: x.method(),
            path_and_query: x.path(),
            authority: host,
            scheme: "http",
            port: request_port,
            headers: &x.q.headers,
            source_labels: &labels,
            source_namespace: Some(&namespace),
            gateway: Some(&gw),
            auth: None,
        },
        namespace: &namespace,
        gateway: Some((&gw, &servers)),
    };
    let plan = crate::plan::route(snap, &req);
    http(x, plan, request_port);
}

/// An HTTP request's plan: the rule, its fault, its destinations.
fn http(x: &mut Explainer<'_, '_>, plan: Result<RoutePlan<'_>, PlanError>, request_port: u16) {
    let plan = match plan {
        Ok(plan) => plan,
        Err(e) => {
            let status = if matches!(e, PlanError::NoRuleMatched { .. }) {
                404
            } else {
                503
            };
            let decision = match &e {
                PlanError::NoRuleMatched { .. } => {
                    format!("no rule matches {} {}", x.method(), x.path())
                }
                other => other.to_string(),
            };
            x.step("route", false, decision, None);
            x.share(100.0, status, e.to_string());
            return;
        }
    };
    let Some((rule, m)) = plan.rule else {
        x.step(
            "route",
            true,
            "no VirtualService: the default route to every workload of the service".to_owned(),
            None,
        );
        if let PlannedAction::Forward(dests) = &plan.action {
            destinations(x, dests, request_port, true, 100.0);
        }
        return;
    };
    let entry = if rule.matches.is_empty() {
        "no match conditions".to_owned()
    } else {
        format!("match[{m}]")
    };
    let by = Some(rule.source.clone());
    match &plan.action {
        PlannedAction::Redirect(r) => {
            x.step(
                "route",
                true,
                format!("{} ({entry}) redirects", rule.describe()),
                by,
            );
            let code = r.redirect_code.unwrap_or(301);
            x.share(100.0, code, "redirect".to_owned());
        }
        PlannedAction::DirectResponse(d) => {
            let decision = format!("{} ({entry}) answers directly", rule.describe());
            x.step("route", true, decision, by);
            x.share(100.0, d.status, "direct response".to_owned());
        }
        PlannedAction::Forward(dests) => {
            x.step("route", true, format!("{} ({entry})", rule.describe()), by);
            let through = fault(x, rule);
            if through > 0.0 {
                destinations(x, dests, request_port, true, through);
            }
        }
    }
}

/// The rule's fault injection: a step, and the share it aborts. Returns
/// the percent of requests that go on.
fn fault(x: &mut Explainer<'_, '_>, rule: &HttpRouteRule) -> f64 {
    let Some(f) = &rule.fault else {
        return 100.0;
    };
    let by = Some(rule.source.clone());
    if let Some(d) = &f.delay {
        let pct = d.percentage.map_or(100.0, |p| p.value);
        let decision = format!("delay {pct}% of requests by {:?}", d.fixed_delay.0);
        x.step("fault", true, decision, by.clone());
    }
    let Some(a) = &f.abort else {
        return 100.0;
    };
    let pct = a.percentage.map_or(100.0, |p| p.value).clamp(0.0, 100.0);
    let status = a.http_status;
    x.step(
        "fault",
        pct < 100.0,
        format!("abort {pct}% of requests with {status}"),
        by,
    );
    if pct > 0.0 {
        x.share(
            pct,
            status,
            format!("fault injected by {}", rule.describe()),
        );
    }
    100.0 - pct
}

/// The weighted destinations, each resolved as the data plane resolves it;
/// `of` is the percent of requests that reach this point.
fn destinations(
    x: &mut Explainer<'_, '_>,
    dests: &[WeightedDestination],
    request_port: u16,
    http: bool,
    of: f64,
) {
    let snap = x.snap;
    let total: u32 = dests.iter().map(|d| d.weight).sum();
    for d in dests {
        let share = if total == 0 {
            0.0
        } else {
            f64::from(d.weight) * of / f64::from(total)
        };
        let label = d
            .subset
            .as_ref()
            .map_or_else(|| d.host.clone(), |s| format!("{} subset {s}", d.host));
        let planned = match resolve_destination(snap, d, request_port) {
            Ok(p) => p,
            Err(e) => {
                let by = match &e {
                    PlanError::NoSubset { .. } => snap
                        .destination_policies
                        .get(&d.host)
                        .map(|p| p.source.clone()),
                    _ => None,
                };
                let why = match &e {
                    PlanError::NoSubset { .. } => "subset not defined".to_owned(),
                    PlanError::UnknownHost { .. } => "not a known service".to_owned(),
                    other => other.to_string(),
                };
                x.step(
                    "destination",
                    false,
                    format!("{label} ({share:.0}%): {why}"),
                    by,
                );
                x.share(share, 503, e.to_string());
                continue;
            }
        };
        let names: Vec<&str> = planned
            .endpoints
            .iter()
            .map(|e| snap.workloads[e.workload].key.as_str())
            .collect();
        let ok = !planned.endpoints.is_empty();
        let by = d.subset.as_ref().and(
            snap.destination_policies
                .get(&d.host)
                .map(|p| p.source.clone()),
        );
        x.step(
            "destination",
            ok,
            format!(
                "{label}: weight {} of {total} ({share:.0}%), port {}, workloads [{}]",
                d.weight,
                planned.port.number,
                names.join(", ")
            ),
            by,
        );
        if !ok {
            x.share(share, 503, format!("no healthy workload in {label}"));
            continue;
        }
        endpoints(x, &planned, &label, share, http);
    }
}

/// Each endpoint of a resolved destination: the client TLS, the server's
/// mode, and the destination's authorization.
fn endpoints(
    x: &mut Explainer<'_, '_>,
    planned: &DestinationPlan<'_>,
    label: &str,
    share: f64,
    http: bool,
) {
    let snap = x.snap;
    let dport = planned.port.number;
    let client = snap.client_tls(&planned.service.host, dport, planned.subset);
    let cname = client.mode.map_or(
        "AUTO (mesh mTLS where the server accepts it)".to_owned(),
        |m| m.to_string(),
    );
    x.step(
        "client-tls",
        true,
        format!("{cname} to {}:{dport}", planned.service.host),
        client.decided_by.clone(),
    );
    let mut result = Share {
        percent: share,
        status: 200,
        destination: Some(label.to_owned()),
        endpoints: Vec::new(),
        reason: format!("reaches {label}"),
    };
    for ep in planned.endpoints.iter() {
        let w = &snap.workloads[ep.workload];
        // Opaque TCP is sent as the TCP router sends it: no TLS origination.
        let tls = planned.endpoint_tls(snap, ep).and_then(|t| {
            if http {
                Ok(t)
            } else {
                crate::plan::opaque_tls(t)
            }
        });
        let external = planned.service.location == Location::MeshExternal;
        if external {
            match &tls {
                Ok(_) => {}
                Err(why) => {
                    x.step("client-tls", false, format!("{}: {why}", ep.key), None);
                    result.status = 503;
                    result.reason = format!("cannot secure the connection: {why}");
                }
            }
        } else {
            let inbound = snap.inbound_mode(w, ep.port);
            let decision = match &tls {
                Ok(_) => format!("{} port {}: {}", w.key, ep.port, inbound.mode),
                Err(why) => format!(
                    "{} port {}: {}: CONFLICT, {why}",
                    w.key, ep.port, inbound.mode
                ),
            };
            x.step(
                "server-mtls",
                tls.is_ok(),
                decision,
                inbound.decided_by.as_deref().cloned(),
            );
            if tls.is_err() {
                result.status = 503;
                result.reason = format!("TLS conflict with {}", w.key);
            }
        }
        let Ok(tls) = tls else { continue };
        let mtls = tls == EndpointTls::MeshMtls;
        result.endpoints.push((ep.key.clone(), mtls));
        if external {
            continue;
        }
        let peer = if mtls { x.source.identity() } else { None };
        let decision = authorize(x, w, ep.port, peer, http);
        // A dry-run verdict is told beside the decision, never in place of
        // it: it changes neither `ok` nor the outcome.
        let shadow = decision
            .shadow
            .as_ref()
            .map(|s| format!("; {}", s.reason))
            .unwrap_or_default();
        x.step(
            "authorization",
            decision.allowed,
            format!("{}: {}{shadow}", w.key, decision.reason),
            decision.policy.as_deref().cloned(),
        );
        if !decision.allowed && result.status == 200 {
            result.status = 403;
            result.reason = decision.reason.to_string();
        }
    }
    x.shares.push(result);
}

/// The destination workload's authorization of the request: Istio's HTTP
/// rules on HTTP ports, its TCP rules on the others.
fn authorize(
    x: &Explainer<'_, '_>,
    w: &Workload,
    port: u16,
    peer: Option<&SpiffeId>,
    http: bool,
) -> crate::authz::AuthzDecision {
    let snap = x.snap;
    let policies = snap.workload_policies(w);
    if !http {
        return evaluate_tcp(
            policies,
            &ConnectionInfo {
                peer,
                source_ip: x.source.address(),
                destination_ip: w.address.parse().ok(),
                destination_port: port,
                // The mesh's clients send no SNI (peers are named by
                // SPIFFE ID).
                sni: Sni::Absent,
            },
        );
    }
    // As the workload's inbound reads the host.
    let host = snap.canonical_host(&x.q.to, &w.namespace);
    let path = x.path();
    evaluate(
        policies,
        &AuthzRequest {
            peer,
            source_ip: x.source.address(),
            remote_ip: x.source.address(),
            destination_ip: w.address.parse().ok(),
            destination_port: port,
            host: &host,
            host_aliases: &[],
            method: x.method(),
            path: path.split('?').next().unwrap_or(path),
            headers: Some(&x.q.headers),
            auth: None,
            sni: Sni::Absent,
        },
    )
}
