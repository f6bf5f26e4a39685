//! An HTTPRoute as a VirtualService: where it attaches (its parents, the
//! listeners that admit it) and the hosts it serves.

use std::collections::HashMap;

use serde_json::{Map, Value, json};

use crate::error::ConfigError;

use super::gateway::ListenerInfo;
use super::rule::{Precedence, match_routes, rule_action};
use super::types::*;
use super::{Document, Errs, GROUP, ISTIO_VERSION, fqdn, is_core};

/// Where a route attaches, once its parents are read.
#[derive(Default)]
pub(super) struct Attachment {
    /// `ns/name` of each parent Gateway.
    pub(super) gateways: Vec<String>,
    /// Service hosts (GAMMA).
    pub(super) services: Vec<String>,
    /// The port a match must come in on (a `sectionName`, a parent `port`).
    pub(super) port: Option<u16>,
    /// With a `sectionName`: the hostnames of the listeners chosen.
    pub(super) listener_hosts: Option<Vec<Option<String>>>,
    /// The listeners attached to, when every parent is known: (port, https).
    pub(super) listeners: Option<Vec<(u16, bool)>>,
}

pub(super) fn http_route(
    d: &Document,
    r: &HttpRouteSpec,
    gateways: &HashMap<(String, String), Option<Vec<ListenerInfo>>>,
) -> Result<Value, Vec<ConfigError>> {
    let mut e = Errs {
        d,
        kind: "HTTPRoute",
        list: Vec::new(),
    };
    let at = parents(&mut e, d, r, gateways);
    let hosts = route_hosts(&mut e, r, &at);
    let mut pieces: Vec<(Precedence, usize, usize, Vec<Value>)> = Vec::new();
    for (ri, rule) in r.rules.iter().enumerate() {
        let f = format!("spec.rules[{ri}]");
        let action = rule_action(&mut e, &f, d, rule, &at);
        let default = [Match {
            path: Some(PathMatch {
                kind: Some("PathPrefix".into()),
                value: Some("/".into()),
            }),
            ..Match::default()
        }];
        let matches: &[Match] = if rule.matches.is_empty() {
            &default
        } else {
            &rule.matches
        };
        for (mi, m) in matches.iter().enumerate() {
            let mf = format!("{f}.matches[{mi}]");
            if let Some((prec, routes)) = match_routes(&mut e, &mf, m, &action, at.port) {
                pieces.push((prec, ri, mi, routes));
            }
        }
    }
    // Stable: equal precedence keeps the rules' order (Gateway API).
    pieces.sort_by_key(|p| p.0);
    let http: Vec<Value> = pieces.into_iter().flat_map(|p| p.3).collect();
    let mut spec = Map::new();
    spec.insert("hosts".into(), json!(hosts));
    if at.services.is_empty() {
        spec.insert("gateways".into(), json!(at.gateways));
    } else {
        // A producer route: every client of the service takes it.
        spec.insert("exportTo".into(), json!(["*"]));
    }
    spec.insert("http".into(), Value::Array(http));
    let doc = json!({
        "apiVersion": ISTIO_VERSION,
        "kind": "VirtualService",
        "metadata": d.metadata,
        "spec": spec,
    });
    e.done(doc)
}

pub(super) fn parents(
    e: &mut Errs<'_>,
    d: &Document,
    r: &HttpRouteSpec,
    gateways: &HashMap<(String, String), Option<Vec<ListenerInfo>>>,
) -> Attachment {
    let mut at = Attachment {
        listeners: Some(Vec::new()),
        ..Attachment::default()
    };
    if r.parent_refs.is_empty() {
        e.err(
            "spec.parentRefs",
            "is required: a route with no parent attaches to nothing",
        );
    }
    let restricted = r
        .parent_refs
        .iter()
        .any(|p| p.section_name.is_some() || p.port.is_some());
    let mut service_ports = Vec::new();
    for (i, p) in r.parent_refs.iter().enumerate() {
        let f = format!("spec.parentRefs[{i}]");
        let ns = p.namespace.clone().unwrap_or_else(|| d.namespace.clone());
        let is_gateway = p.group.as_deref().is_none_or(|g| g == GROUP)
            && p.kind.as_deref().is_none_or(|k| k == "Gateway");
        let is_service = is_core(p.group.as_deref()) && p.kind.as_deref() == Some("Service");
        if is_service {
            if ns != d.namespace {
                e.err(
                    format!("{f}.namespace"),
                    "a Service of another namespace (a consumer route) is not implemented",
                );
            }
            if p.section_name.is_some() {
                e.err(
                    format!("{f}.sectionName"),
                    "is not supported on a Service parent; use `port`",
                );
            }
            at.services.push(fqdn(&p.name, &ns));
            service_ports.push(p.port);
            continue;
        }
        if !is_gateway {
            e.err(
                format!("{f}.kind"),
                "only a Gateway or a Service (group \"\") parent is read",
            );
            continue;
        }
        if restricted && r.parent_refs.len() > 1 {
            e.err(
                format!("{f}.sectionName"),
                "sectionName and port are read only on an HTTPRoute with one parentRef",
            );
        }
        at.gateways.push(format!("{ns}/{}", p.name));
        let Some(known) = gateways.get(&(ns.clone(), p.name.clone())) else {
            // Not among the resources read: the VirtualService binds to a
            // gateway that is not there, as an Istio one would.
            at.listeners = None;
            if p.section_name.is_some() || p.port.is_some() {
                e.err(
                    format!("{f}.name"),
                    format!(
                        "Gateway {ns}/{} is not among the resources read, so its listeners \
                         cannot be chosen",
                        p.name
                    ),
                );
            }
            continue;
        };
        let Some(listeners) = known else {
            // Refused already; one error is enough.
            at.listeners = None;
            continue;
        };
        let chosen: Vec<&ListenerInfo> = listeners
            .iter()
            .filter(|l| p.section_name.as_ref().is_none_or(|s| *s == l.name))
            .filter(|l| p.port.is_none_or(|port| port == l.port))
            .collect();
        if chosen.is_empty() {
            let names: Vec<&str> = listeners.iter().map(|l| l.name.as_str()).collect();
            let field = if p.section_name.is_some() {
                "sectionName"
            } else {
                "port"
            };
            e.err(
                format!("{f}.{field}"),
                format!(
                    "Gateway {ns}/{} has no such listener (its listeners: {})",
                    p.name,
                    names.join(", ")
                ),
            );
            continue;
        }
        let admitted: Vec<&ListenerInfo> = chosen
            .iter()
            .copied()
            .filter(|l| l.from.as_ref().is_none_or(|n| *n == d.namespace))
            .collect();
        if admitted.is_empty() {
            let names: Vec<&str> = chosen.iter().map(|l| l.name.as_str()).collect();
            e.err(
                f.clone(),
                format!(
                    "Gateway {ns}/{} does not admit routes of namespace {}: its listener(s) {} \
                     take routes only from their own namespace (allowedRoutes.namespaces.from: \
                     Same); set `from: All` there, or move the route",
                    p.name,
                    d.namespace,
                    names.join(", ")
                ),
            );
            continue;
        }
        if let Some(ls) = &mut at.listeners {
            ls.extend(admitted.iter().map(|l| (l.port, l.https)));
        }
        if p.section_name.is_some() || p.port.is_some() {
            let ports: Vec<u16> = admitted.iter().map(|l| l.port).collect();
            if ports.iter().any(|&x| x != ports[0]) {
                e.err(f.clone(), "the listeners chosen are on several ports");
            }
            at.port = Some(ports[0]);
            at.listener_hosts = Some(admitted.iter().map(|l| l.hostname.clone()).collect());
        }
    }
    if !at.services.is_empty() {
        if !at.gateways.is_empty() {
            e.err(
                "spec.parentRefs",
                "mixing Gateway and Service parents in one HTTPRoute is not implemented; write \
                 one HTTPRoute for each",
            );
        }
        if service_ports.iter().any(|p| *p != service_ports[0]) {
            e.err(
                "spec.parentRefs",
                "Service parents on different ports are not implemented; write one HTTPRoute for each",
            );
        }
        at.port = service_ports.first().copied().flatten();
        at.listeners = None;
    }
    at
}

pub(super) fn route_hosts(e: &mut Errs<'_>, r: &HttpRouteSpec, at: &Attachment) -> Vec<String> {
    if !at.services.is_empty() {
        if !r.hostnames.is_empty() {
            e.err(
                "spec.hostnames",
                "is not read for a Service parent: the route applies to the Service",
            );
        }
        return at.services.clone();
    }
    let Some(listener_hosts) = &at.listener_hosts else {
        return if r.hostnames.is_empty() {
            vec!["*".to_owned()]
        } else {
            r.hostnames.clone()
        };
    };
    // A sectionName: the route serves only what its listener serves.
    let mut hosts = Vec::new();
    for lh in listener_hosts {
        let Some(lh) = lh else {
            if r.hostnames.is_empty() {
                hosts.push("*".to_owned());
            }
            hosts.extend(r.hostnames.iter().cloned());
            continue;
        };
        if r.hostnames.is_empty() {
            hosts.push(lh.clone());
        }
        for h in &r.hostnames {
            if crate::gateway::host_matches(h, lh) {
                hosts.push(lh.clone());
            } else if crate::gateway::host_matches(lh, h) {
                hosts.push(h.clone());
            }
        }
    }
    hosts.sort();
    hosts.dedup();
    if hosts.is_empty() {
        e.err(
            "spec.hostnames",
            "none of them is served by the listener the parentRef names",
        );
    }
    hosts
}
