//! `explain`: the compiled decision for one request from one workload to one
//! host, step by step, each step naming the resource that decided it. What
//! dry-run AuthorizationPolicies would have decided is told in the
//! authorization step and changes nothing else.

use std::fmt;
use std::net::IpAddr;

use serde::Serialize;

use crate::analyze::tls_conflict;
use crate::authz::{AuthzRequest, evaluate};
use crate::resources::ResourceRef;
use crate::resources::networking::ClientTlsMode;
use crate::resources::security::MtlsMode;
use crate::route::{RequestInfo, RouteAction, WeightedDestination, first_match};
use crate::snapshot::{Service, Snapshot, Workload};

/// The request to explain.
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// The calling workload, `name` or `namespace/name`.
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
    /// `--from` names no workload.
    #[error("no workload named `{0}` (use the WorkloadEntry's name or namespace/name)")]
    UnknownWorkload(String),
    /// `--to` has a bad port.
    #[error("`{0}` is not HOST or HOST:PORT")]
    BadTarget(String),
}

/// One step of the decision.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// What was decided: `source`, `service`, `route`, `destination`,
    /// `client-tls`, `server-mtls`, `authorization`.
    pub step: &'static str,
    /// The decision in words.
    pub decision: String,
    /// The resource that decided it; `None` for a built-in default.
    pub decided_by: Option<ResourceRef>,
    /// Whether the request gets through this step.
    pub ok: bool,
}

/// The explanation: the steps and the end result.
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    /// The steps, in the order the mesh takes them.
    pub steps: Vec<Step>,
    /// What the caller would see.
    pub outcome: String,
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

fn step(
    steps: &mut Vec<Step>,
    name: &'static str,
    ok: bool,
    decision: String,
    by: Option<ResourceRef>,
) {
    steps.push(Step {
        step: name,
        decision,
        decided_by: by,
        ok,
    });
}

/// Explains a request.
pub fn explain(snap: &Snapshot, q: &Query) -> Result<Explanation, ExplainError> {
    let (_, from) = snap
        .workload(&q.from)
        .ok_or_else(|| ExplainError::UnknownWorkload(q.from.clone()))?;
    let (host, port) = match q.to.rsplit_once(':') {
        Some((h, p)) => (
            h,
            Some(
                p.parse::<u16>()
                    .map_err(|_| ExplainError::BadTarget(q.to.clone()))?,
            ),
        ),
        None => (q.to.as_str(), None),
    };
    let method = if q.method.is_empty() {
        "GET"
    } else {
        q.method.as_str()
    };
    let path = if q.path.is_empty() {
        "/"
    } else {
        q.path.as_str()
    };
    let mut steps = Vec::new();
    step(
        &mut steps,
        "source",
        true,
        format!(
            "workload {} at {} as {}",
            from.key, from.address, from.identity
        ),
        Some(from.source.clone()),
    );

    let fqdn = snap.mesh.resolve_host(host, &from.namespace);
    let Some(svc) = snap.services.get(&fqdn) else {
        step(
            &mut steps,
            "service",
            false,
            format!("{fqdn} is not a known service"),
            None,
        );
        return Ok(Explanation {
            steps,
            outcome: "503: no route to host".to_owned(),
        });
    };
    let Some(svc_port) = port.map_or_else(|| svc.ports.first(), |p| svc.port(p)) else {
        step(
            &mut steps,
            "service",
            false,
            format!("{fqdn} has no port {}", port.unwrap_or_default()),
            Some(svc.source.clone()),
        );
        return Ok(Explanation {
            steps,
            outcome: "503: no such port".to_owned(),
        });
    };
    step(
        &mut steps,
        "service",
        true,
        format!(
            "{}:{} ({}), {} workload(s)",
            svc.host,
            svc_port.number,
            svc_port.protocol,
            svc.workloads.len()
        ),
        Some(svc.source.clone()),
    );

    let authority = format!("{}:{}", host, svc_port.number);
    let req = RequestInfo {
        method,
        path_and_query: path,
        authority: &authority,
        scheme: "http",
        port: svc_port.number,
        headers: &q.headers,
        source_labels: &from.labels,
        source_namespace: Some(&from.namespace),
        gateway: None,
    };
    let dests: Vec<WeightedDestination> = if svc_port.protocol.is_http() {
        if svc_port.http_routes.is_empty() {
            step(
                &mut steps,
                "route",
                true,
                "no VirtualService: the default route to every workload of the service".to_owned(),
                None,
            );
            vec![default_dest(svc)]
        } else {
            match first_match(&svc_port.http_routes, &req) {
                None => {
                    let by = svc_port.http_routes.first().map(|r| r.source.clone());
                    step(
                        &mut steps,
                        "route",
                        false,
                        format!("no rule matches {method} {path}"),
                        by,
                    );
                    return Ok(Explanation {
                        steps,
                        outcome: "404: no route matched".to_owned(),
                    });
                }
                Some((_, m, rule)) => {
                    let entry = if rule.matches.is_empty() {
                        "no match conditions".to_owned()
                    } else {
                        format!("match[{m}]")
                    };
                    match &rule.action {
                        RouteAction::Forward(ds) => {
                            step(
                                &mut steps,
                                "route",
                                true,
                                format!("{} ({entry})", rule.describe()),
                                Some(rule.source.clone()),
                            );
                            ds.clone()
                        }
                        RouteAction::Redirect(r) => {
                            step(
                                &mut steps,
                                "route",
                                true,
                                format!("{} ({entry}) redirects", rule.describe()),
                                Some(rule.source.clone()),
                            );
                            let code = r.redirect_code.unwrap_or(301);
                            return Ok(Explanation {
                                steps,
                                outcome: format!("{code}: redirect"),
                            });
                        }
                        RouteAction::DirectResponse(d) => {
                            step(
                                &mut steps,
                                "route",
                                true,
                                format!("{} ({entry}) answers directly", rule.describe()),
                                Some(rule.source.clone()),
                            );
                            return Ok(Explanation {
                                steps,
                                outcome: format!("{}: direct response", d.status),
                            });
                        }
                    }
                }
            }
        }
    } else {
        match &svc_port.tcp_route {
            Some(ds) => {
                step(
                    &mut steps,
                    "route",
                    true,
                    "TCP route of a VirtualService".to_owned(),
                    None,
                );
                ds.clone()
            }
            None => {
                step(
                    &mut steps,
                    "route",
                    true,
                    format!("{} port: opaque TCP to every workload", svc_port.protocol),
                    None,
                );
                vec![default_dest(svc)]
            }
        }
    };

    let total: u32 = dests.iter().map(|d| d.weight).sum();
    let mut outcomes = Vec::new();
    for d in &dests {
        let share = if total == 0 {
            0.0
        } else {
            f64::from(d.weight) * 100.0 / f64::from(total)
        };
        let label = d
            .subset
            .as_ref()
            .map_or_else(|| d.host.clone(), |s| format!("{} subset {s}", d.host));
        let Some(dsvc) = snap.services.get(&d.host) else {
            step(
                &mut steps,
                "destination",
                false,
                format!("{label} ({share:.0}%): not a known service"),
                None,
            );
            outcomes.push(format!("{share:.0}% 503 (unknown host {})", d.host));
            continue;
        };
        let dp = snap.destination_policies.get(&d.host);
        let members: Vec<usize> = match &d.subset {
            None => dsvc.workloads.clone(),
            Some(s) => match dp.and_then(|dp| dp.subset(s)) {
                Some(sub) => sub.workloads.clone(),
                None => {
                    step(
                        &mut steps,
                        "destination",
                        false,
                        format!("{label} ({share:.0}%): subset not defined"),
                        dp.map(|p| p.source.clone()),
                    );
                    outcomes.push(format!("{share:.0}% 503 (no subset {s})"));
                    continue;
                }
            },
        };
        let names: Vec<&str> = members
            .iter()
            .map(|i| snap.workloads[*i].key.as_str())
            .collect();
        let ok = !members.is_empty();
        step(
            &mut steps,
            "destination",
            ok,
            format!(
                "{label}: weight {} of {total} ({share:.0}%), workloads [{}]",
                d.weight,
                names.join(", ")
            ),
            d.subset.as_ref().and(dp.map(|p| p.source.clone())),
        );
        if !ok {
            outcomes.push(format!("{share:.0}% 503 (no healthy workload in {label})"));
            continue;
        }
        let dport = d.port.unwrap_or(svc_port.number);
        let client = snap.client_tls(&d.host, dport, d.subset.as_deref());
        let cname = client.mode.map_or(
            "AUTO (mesh mTLS where the server accepts it)".to_owned(),
            |m| m.to_string(),
        );
        step(
            &mut steps,
            "client-tls",
            true,
            format!("{cname} to {}:{dport}", d.host),
            client.decided_by.clone(),
        );
        let Some(dsp) = dsvc.port(dport) else {
            outcomes.push(format!("{share:.0}% 503 (no port {dport})"));
            continue;
        };
        let mut verdict = format!("{share:.0}% 200 (reaches {label})");
        for i in &members {
            let w: &Workload = &snap.workloads[*i];
            let tport = dsvc.target_port(dsp, w);
            let inbound = snap.inbound_mode(w, tport);
            let conflict = tls_conflict(inbound.mode, client.mode);
            step(
                &mut steps,
                "server-mtls",
                conflict.is_none(),
                format!(
                    "{} port {tport}: {}{}",
                    w.key,
                    inbound.mode,
                    conflict
                        .as_ref()
                        .map(|c| format!(": CONFLICT, {c}"))
                        .unwrap_or_default()
                ),
                inbound.decided_by.clone(),
            );
            if conflict.is_some() {
                verdict = format!("{share:.0}% 503 (TLS conflict with {})", w.key);
                continue;
            }
            let mtls = inbound.mode != MtlsMode::Disable
                && client.mode.is_none_or(|m| m == ClientTlsMode::IstioMutual);
            let ip: Option<IpAddr> = w.address.parse().ok();
            // As the workload's inbound reads the host.
            let host = snap.canonical_host(&authority, &w.namespace);
            let areq = AuthzRequest {
                peer: mtls.then_some(&from.identity),
                source_ip: from.address.parse().ok(),
                destination_ip: ip,
                destination_port: tport,
                host: &host,
                host_aliases: &[],
                method,
                path: path.split('?').next().unwrap_or(path),
                headers: Some(&q.headers),
            };
            let decision = evaluate(snap.workload_policies(w), &areq);
            // A dry-run verdict is told beside the decision, never in place
            // of it: it changes neither `ok` nor the outcome.
            let shadow = decision
                .shadow
                .as_ref()
                .map(|s| format!("; {}", s.reason))
                .unwrap_or_default();
            step(
                &mut steps,
                "authorization",
                decision.allowed,
                format!("{}: {}{shadow}", w.key, decision.reason),
                decision.policy.clone(),
            );
            if !decision.allowed {
                verdict = format!("{share:.0}% 403 ({})", decision.reason);
            }
        }
        outcomes.push(verdict);
    }
    Ok(Explanation {
        steps,
        outcome: outcomes.join("; "),
    })
}

fn default_dest(svc: &Service) -> WeightedDestination {
    WeightedDestination {
        host: svc.host.clone(),
        subset: None,
        port: None,
        weight: 100,
        headers: None,
    }
}
