//! A Gateway as an Istio Gateway: one server per listener.

use serde_json::{Map, Value, json};

use crate::error::ConfigError;

use super::types::*;
use super::{Document, Errs, GATEWAY_NAME_LABEL, GROUP, ISTIO_VERSION, is_core};

/// What a route needs to know of a listener of its parent.
#[derive(Debug, Clone)]
pub(super) struct ListenerInfo {
    pub(super) name: String,
    pub(super) port: u16,
    pub(super) https: bool,
    pub(super) hostname: Option<String>,
    /// The one namespace whose routes it admits; `None`: all.
    pub(super) from: Option<String>,
}

pub(super) fn gateway(
    d: &Document,
    g: &GatewaySpec,
) -> Result<(Value, Vec<ListenerInfo>), Vec<ConfigError>> {
    let mut e = Errs {
        d,
        kind: "Gateway",
        list: Vec::new(),
    };
    if g.gateway_class_name != "istio" {
        let why = if g.gateway_class_name == "istio-waypoint" {
            "ambient waypoints are not implemented (this mesh runs sidecars)"
        } else {
            "it names no gateway this mesh deploys"
        };
        e.err(
            "spec.gatewayClassName",
            format!(
                "`{}` is not supported: {why}; only class `istio` (an ingress gateway) is read",
                g.gateway_class_name
            ),
        );
        return Err(e.list);
    }
    if g.listeners.is_empty() {
        e.err("spec.listeners", "at least one listener is required");
    }
    let mut servers = Vec::new();
    let mut infos: Vec<ListenerInfo> = Vec::new();
    for (i, l) in g.listeners.iter().enumerate() {
        let f = format!("spec.listeners[{i}]");
        if infos.iter().any(|o| o.name == l.name) {
            e.err(
                format!("{f}.name"),
                format!("`{}` names two listeners", l.name),
            );
        }
        let mut server = Map::new();
        let https = match l.protocol.as_str() {
            "HTTP" => {
                if l.tls.is_some() {
                    e.err(format!("{f}.tls"), "is for HTTPS listeners only");
                }
                false
            }
            "HTTPS" => {
                match &l.tls {
                    None => e.err(format!("{f}.tls"), "is required for an HTTPS listener"),
                    Some(tls) => {
                        if let Some(cred) = listener_tls(&mut e, &f, d, tls) {
                            server.insert(
                                "tls".into(),
                                json!({"mode": "SIMPLE", "credentialName": cred}),
                            );
                        }
                    }
                }
                true
            }
            other => {
                e.err(
                    format!("{f}.protocol"),
                    format!(
                        "`{other}` is not supported: only HTTP and HTTPS listeners are read \
                         (TLS passthrough, TCP, UDP and HBONE listeners are not)"
                    ),
                );
                continue;
            }
        };
        let from = allowed_from(&mut e, &f, d, l.allowed_routes.as_ref());
        let host = l.hostname.clone().unwrap_or_else(|| "*".to_owned());
        let scope = from.clone().unwrap_or_else(|| "*".to_owned());
        server.insert(
            "port".into(),
            json!({"number": l.port, "protocol": l.protocol, "name": l.name}),
        );
        server.insert("hosts".into(), json!([format!("{scope}/{host}")]));
        server.insert("name".into(), json!(l.name));
        servers.push(Value::Object(server));
        infos.push(ListenerInfo {
            name: l.name.clone(),
            port: l.port,
            https,
            hostname: l.hostname.clone(),
            from,
        });
    }
    let doc = json!({
        "apiVersion": ISTIO_VERSION,
        "kind": "Gateway",
        "metadata": d.metadata,
        "spec": {
            "selector": {GATEWAY_NAME_LABEL: d.name},
            "servers": servers,
        },
    });
    e.done((doc, infos))
}

/// The Secret an HTTPS listener terminates with, as a credential name.
pub(super) fn listener_tls(
    e: &mut Errs<'_>,
    f: &str,
    d: &Document,
    tls: &ListenerTls,
) -> Option<String> {
    match tls.mode.as_deref() {
        None | Some("Terminate") => {}
        Some(other) => {
            e.err(
                format!("{f}.tls.mode"),
                format!("`{other}` is not supported: only Terminate is read"),
            );
            return None;
        }
    }
    let [cert] = tls.certificate_refs.as_slice() else {
        e.err(
            format!("{f}.tls.certificateRefs"),
            "exactly one certificate (a Secret) is read",
        );
        return None;
    };
    let cf = format!("{f}.tls.certificateRefs[0]");
    if !is_core(cert.group.as_deref()) || cert.kind.as_deref().is_some_and(|k| k != "Secret") {
        e.err(format!("{cf}.kind"), "only a Secret (core group) is read");
        return None;
    }
    if cert.namespace.as_ref().is_some_and(|n| *n != d.namespace) {
        e.err(
            format!("{cf}.namespace"),
            "a Secret of another namespace needs a ReferenceGrant, which this mesh does not read",
        );
        return None;
    }
    Some(cert.name.clone())
}

/// `allowedRoutes`: the one namespace a listener takes routes from, or
/// `None` for all.
pub(super) fn allowed_from(
    e: &mut Errs<'_>,
    f: &str,
    d: &Document,
    allowed: Option<&AllowedRoutes>,
) -> Option<String> {
    let Some(a) = allowed else {
        return Some(d.namespace.clone());
    };
    for (j, k) in a.kinds.iter().enumerate() {
        if k.group.as_deref().is_some_and(|g| g != GROUP) || k.kind != "HTTPRoute" {
            e.err(
                format!("{f}.allowedRoutes.kinds[{j}]"),
                format!(
                    "`{}`: only HTTPRoute is served on an HTTP or HTTPS listener",
                    k.kind
                ),
            );
        }
    }
    let Some(ns) = &a.namespaces else {
        return Some(d.namespace.clone());
    };
    if ns.selector.is_some() {
        e.err(
            format!("{f}.allowedRoutes.namespaces.selector"),
            "selects namespaces by label, and this mesh has no namespace labels",
        );
    }
    match ns.from.as_deref() {
        None | Some("Same") => Some(d.namespace.clone()),
        Some("All") => None,
        Some("Selector") => {
            e.err(
                format!("{f}.allowedRoutes.namespaces.from"),
                "Selector is not supported: it selects namespaces by label, and this mesh has no \
                 namespace labels; use Same or All",
            );
            Some(d.namespace.clone())
        }
        Some(other) => {
            e.err(
                format!("{f}.allowedRoutes.namespaces.from"),
                format!("`{other}` is not one of Same, All, Selector"),
            );
            Some(d.namespace.clone())
        }
    }
}
