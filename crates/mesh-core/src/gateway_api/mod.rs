//! The Kubernetes Gateway API (`gateway.networking.k8s.io` v1 and v1beta1
//! `Gateway` and `HTTPRoute`), read as Istio reads it: translated at load
//! time into Istio's own Gateway and VirtualService, so every consumer
//! (router, gateway, `check`, `explain`, xDS) sees ordinary resources whose
//! [`Origin`] is the user's Gateway API document.
//!
//! - A Gateway of class `istio` becomes an Istio Gateway of the same
//!   namespace and name, one server per listener, selecting the workloads
//!   Istio's automated deployment labels
//!   (`gateway.networking.k8s.io/gateway-name: <name>`). A listener's
//!   `allowedRoutes.namespaces.from` becomes the namespace part of its
//!   server hosts (`ns/host`, `*/host`), as in Istio.
//! - An HTTPRoute becomes a VirtualService of the same namespace and name:
//!   bound to its parent Gateways, or, with a Service parent (GAMMA), to
//!   the mesh for that service. Each match is a rule of its own, sorted by
//!   the Gateway API's precedence (exact path, longest prefix, method,
//!   most headers, most query parameters), as Istio sorts them.
//!
//! Gateway and route are read together once every file is loaded
//! ([`translate`]): whether a listener admits a route, and what a
//! `sectionName` selects, are questions about two documents. A field is
//! translated into what it means exactly, or refused by name; a route its
//! parent does not admit is an error, not a route silently dropped (there
//! is no route status here to tell the user).

use std::collections::HashMap;

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::Value;

use crate::error::ConfigError;
use crate::resources::{Kind, ObjectMeta, Origin};

mod gateway;
mod route;
mod rule;
mod types;

use gateway::ListenerInfo;
use types::{GatewaySpec, HttpRouteSpec};

/// The API group.
pub const GROUP: &str = "gateway.networking.k8s.io";

/// The label Istio's automated deployment puts on a Gateway's workloads
/// (<https://istio.io/latest/docs/reference/config/labels/>): the selector
/// of the translated Gateway.
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";

const VERSIONS: &[&str] = &["v1", "v1beta1"];
const ISTIO_VERSION: &str = "networking.istio.io/v1";

/// A Gateway API document, parsed and waiting for its translation.
#[derive(Debug, Clone)]
pub(crate) struct Document {
    origin: Origin,
    namespace: String,
    name: String,
    metadata: Value,
    body: Body,
}

#[derive(Debug, Clone)]
enum Body {
    Gateway(GatewaySpec),
    HttpRoute(HttpRouteSpec),
}

/// An Istio document translated from a Gateway API one.
pub(crate) struct Translated {
    pub origin: Origin,
    pub kind: Kind,
    pub doc: Value,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Envelope<T> {
    #[serde(rename = "apiVersion")]
    _api_version: IgnoredAny,
    #[serde(rename = "kind")]
    _kind: IgnoredAny,
    #[serde(default)]
    metadata: ObjectMeta,
    spec: T,
    #[serde(default, rename = "status")]
    _status: Option<IgnoredAny>,
}

// ------------------------------------------------------------------ reading

/// Reads one Gateway API document, or says why it is refused.
pub(crate) fn read(
    origin: &Origin,
    api_version: &str,
    kind: &str,
    doc: Value,
) -> Result<Document, ConfigError> {
    let refuse = |field: &str, message: String| {
        ConfigError::at(origin, Some(kind.to_owned()), field, message)
    };
    if !matches!(kind, "Gateway" | "HTTPRoute") {
        let why = match kind {
            "TCPRoute" | "TLSRoute" | "UDPRoute" => {
                ": the gateway routes HTTP only (TCP, TLS and UDP listeners are refused too)"
            }
            "GRPCRoute" => ": write an HTTPRoute with the gRPC service's path prefix",
            "ReferenceGrant" => ": references to another namespace are refused instead",
            "GatewayClass" => ": the class `istio` is built in",
            _ => "",
        };
        return Err(refuse(
            "kind",
            format!(
                "{api_version} {kind}: this kind of the Kubernetes Gateway API is not implemented \
                 (Gateway and HTTPRoute are){why}; remove it rather than have it ignored"
            ),
        ));
    }
    let version = api_version.split_once('/').map_or("", |(_, v)| v);
    if !VERSIONS.contains(&version) {
        return Err(refuse(
            "apiVersion",
            format!(
                "{api_version} is not a supported version of {kind}; use {GROUP}/v1 or {GROUP}/v1beta1"
            ),
        ));
    }
    let metadata = doc.get("metadata").cloned().unwrap_or(Value::Null);
    let body = if kind == "Gateway" {
        parse::<GatewaySpec>(origin, kind, doc).map(|(m, s)| (m, Body::Gateway(s)))
    } else {
        parse::<HttpRouteSpec>(origin, kind, doc).map(|(m, s)| (m, Body::HttpRoute(s)))
    };
    let (meta, body) = body?;
    let Some(name) = meta.name.filter(|n| !n.is_empty()) else {
        return Err(refuse("metadata.name", "is required".to_owned()));
    };
    let namespace = meta
        .namespace
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "default".to_owned());
    Ok(Document {
        origin: origin.clone(),
        namespace,
        name,
        metadata,
        body,
    })
}

fn parse<T: serde::de::DeserializeOwned>(
    origin: &Origin,
    kind: &str,
    doc: Value,
) -> Result<(ObjectMeta, T), ConfigError> {
    let hint = doc
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("?")
        .to_owned();
    match serde_path_to_error::deserialize::<_, Envelope<T>>(doc) {
        Ok(e) => Ok((e.metadata, e.spec)),
        Err(e) => {
            let (field, message) = crate::load::describe_serde_error(&e);
            Err(ConfigError::at(
                origin,
                Some(format!("{kind} {hint}")),
                field,
                message,
            ))
        }
    }
}

/// Translates every document, Gateways first (a route's admission reads
/// its parent's listeners).
pub(crate) fn translate(docs: &[Document]) -> (Vec<Translated>, Vec<ConfigError>) {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    // `None`: the Gateway is refused; its routes are not checked against it.
    let mut gateways: HashMap<(String, String), Option<Vec<ListenerInfo>>> = HashMap::new();
    for d in docs {
        let Body::Gateway(g) = &d.body else { continue };
        let key = (d.namespace.clone(), d.name.clone());
        match gateway::gateway(d, g) {
            Ok((doc, listeners)) => {
                gateways.entry(key).or_insert(Some(listeners));
                out.push(Translated {
                    origin: d.origin.clone(),
                    kind: Kind::Gateway,
                    doc,
                });
            }
            Err(e) => {
                gateways.insert(key, None);
                errors.extend(e);
            }
        }
    }
    // Where each route attaches (a Gateway, or `mesh` for a Service
    // parent) and the routes there before it, with their hosts.
    let mut attached: HashMap<String, Vec<(&Document, Vec<String>)>> = HashMap::new();
    for d in docs {
        let Body::HttpRoute(r) = &d.body else {
            continue;
        };
        let doc = match route::http_route(d, r, &gateways) {
            Ok(doc) => doc,
            Err(e) => {
                errors.extend(e);
                continue;
            }
        };
        if let Some(e) = overlap(d, &doc, &mut attached) {
            errors.push(e);
            continue;
        }
        out.push(Translated {
            origin: d.origin.clone(),
            kind: Kind::VirtualService,
            doc,
        });
    }
    (out, errors)
}

/// Two HTTPRoutes for one host of one Gateway (or one Service) merge, in
/// the Gateway API, by the precedence of all their matches together; each
/// route here is a VirtualService of its own, whose rules would be taken
/// one VirtualService after the other. Refused rather than routed in
/// another order than the user's.
fn overlap<'d>(
    d: &'d Document,
    doc: &Value,
    attached: &mut HashMap<String, Vec<(&'d Document, Vec<String>)>>,
) -> Option<ConfigError> {
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    };
    let spec = &doc["spec"];
    let hosts = strings(&spec["hosts"]);
    let mut places = strings(&spec["gateways"]);
    if places.is_empty() {
        // A Service parent: the port it is bound to is part of the place.
        let port = &spec["http"][0]["match"][0]["port"];
        places.push(format!("mesh port {port}"));
    }
    for place in places {
        let earlier = attached.entry(place.clone()).or_default();
        for (other, other_hosts) in earlier.iter() {
            let shared = hosts.iter().find(|h| {
                other_hosts
                    .iter()
                    .any(|o| crate::gateway::hosts_intersect(h, o))
            });
            if let Some(h) = shared {
                let resource = format!("HTTPRoute {}/{}", d.namespace, d.name);
                return Some(ConfigError::at(
                    &d.origin,
                    Some(resource),
                    "spec.parentRefs",
                    format!(
                        "HTTPRoute {}/{} ({}) routes host {h} at the same parent; merging two \
                         HTTPRoutes by the Gateway API's precedence is not implemented: write \
                         their rules in one HTTPRoute",
                        other.namespace, other.name, other.origin
                    ),
                ));
            }
        }
        earlier.push((d, hosts.clone()));
    }
    None
}

struct Errs<'d> {
    d: &'d Document,
    kind: &'static str,
    list: Vec<ConfigError>,
}

impl Errs<'_> {
    fn err(&mut self, field: impl Into<String>, message: impl Into<String>) {
        let resource = format!("{} {}/{}", self.kind, self.d.namespace, self.d.name);
        self.list.push(ConfigError::at(
            &self.d.origin,
            Some(resource),
            field,
            message,
        ));
    }

    fn done<T>(self, value: T) -> Result<T, Vec<ConfigError>> {
        if self.list.is_empty() {
            Ok(value)
        } else {
            Err(self.list)
        }
    }
}

fn is_core(group: Option<&str>) -> bool {
    group.is_none_or(str::is_empty)
}

fn fqdn(name: &str, namespace: &str) -> String {
    format!("{name}.{namespace}.svc.cluster.local")
}
