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
use serde_json::{Map, Value, json};

use crate::error::ConfigError;
use crate::resources::{Kind, ObjectMeta, Origin};

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

// ---------------------------------------------------------------- Gateway

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct GatewaySpec {
    gateway_class_name: String,
    #[serde(default)]
    listeners: Vec<Listener>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Listener {
    name: String,
    #[serde(default)]
    hostname: Option<String>,
    port: u16,
    protocol: String,
    #[serde(default)]
    tls: Option<ListenerTls>,
    #[serde(default)]
    allowed_routes: Option<AllowedRoutes>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ListenerTls {
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    certificate_refs: Vec<ObjectRef>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ObjectRef {
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    name: String,
    #[serde(default)]
    namespace: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AllowedRoutes {
    #[serde(default)]
    namespaces: Option<RouteNamespaces>,
    #[serde(default)]
    kinds: Vec<RouteGroupKind>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RouteNamespaces {
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    selector: Option<IgnoredAny>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RouteGroupKind {
    #[serde(default)]
    group: Option<String>,
    kind: String,
}

// -------------------------------------------------------------- HTTPRoute

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct HttpRouteSpec {
    #[serde(default)]
    parent_refs: Vec<ParentRef>,
    #[serde(default)]
    hostnames: Vec<String>,
    #[serde(default)]
    rules: Vec<Rule>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ParentRef {
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    name: String,
    #[serde(default)]
    section_name: Option<String>,
    #[serde(default)]
    port: Option<u16>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Rule {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    matches: Vec<Match>,
    #[serde(default)]
    filters: Vec<Filter>,
    #[serde(default)]
    backend_refs: Vec<BackendRef>,
    #[serde(default)]
    timeouts: Option<Timeouts>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Match {
    #[serde(default)]
    path: Option<PathMatch>,
    #[serde(default)]
    headers: Vec<ValueMatch>,
    #[serde(default)]
    query_params: Vec<ValueMatch>,
    #[serde(default)]
    method: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PathMatch {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    value: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ValueMatch {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    name: String,
    value: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Filter {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    request_header_modifier: Option<HeaderModifier>,
    #[serde(default)]
    response_header_modifier: Option<HeaderModifier>,
    #[serde(default, rename = "urlRewrite")]
    url_rewrite: Option<UrlRewrite>,
    #[serde(default)]
    request_redirect: Option<RequestRedirect>,
    #[serde(default)]
    request_mirror: Option<RequestMirror>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct HeaderModifier {
    #[serde(default)]
    set: Vec<NameValue>,
    #[serde(default)]
    add: Vec<NameValue>,
    #[serde(default)]
    remove: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NameValue {
    name: String,
    value: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct UrlRewrite {
    #[serde(default)]
    hostname: Option<String>,
    #[serde(default)]
    path: Option<PathModifier>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PathModifier {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    replace_full_path: Option<String>,
    #[serde(default)]
    replace_prefix_match: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RequestRedirect {
    #[serde(default)]
    scheme: Option<String>,
    #[serde(default)]
    hostname: Option<String>,
    #[serde(default)]
    path: Option<PathModifier>,
    #[serde(default)]
    port: Option<u16>,
    #[serde(default)]
    status_code: Option<u16>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RequestMirror {
    backend_ref: BackendObjectRef,
    #[serde(default)]
    percent: Option<u32>,
    #[serde(default)]
    fraction: Option<Fraction>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Fraction {
    numerator: u32,
    #[serde(default)]
    denominator: Option<u32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct BackendObjectRef {
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    port: Option<u16>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct BackendRef {
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    port: Option<u16>,
    #[serde(default)]
    weight: Option<u32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Timeouts {
    #[serde(default)]
    request: Option<String>,
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
        return Err(refuse(
            "kind",
            format!(
                "{api_version} {kind}: this kind of the Kubernetes Gateway API is not implemented \
                 (Gateway and HTTPRoute are); remove it rather than have it ignored"
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

// -------------------------------------------------------------- translating

/// What a route needs to know of a listener of its parent.
#[derive(Debug, Clone)]
struct ListenerInfo {
    name: String,
    port: u16,
    https: bool,
    hostname: Option<String>,
    /// The one namespace whose routes it admits; `None`: all.
    from: Option<String>,
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
        match gateway(d, g) {
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
    for d in docs {
        let Body::HttpRoute(r) = &d.body else {
            continue;
        };
        match http_route(d, r, &gateways) {
            Ok(doc) => out.push(Translated {
                origin: d.origin.clone(),
                kind: Kind::VirtualService,
                doc,
            }),
            Err(e) => errors.extend(e),
        }
    }
    (out, errors)
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

fn gateway(d: &Document, g: &GatewaySpec) -> Result<(Value, Vec<ListenerInfo>), Vec<ConfigError>> {
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
fn listener_tls(e: &mut Errs<'_>, f: &str, d: &Document, tls: &ListenerTls) -> Option<String> {
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
fn allowed_from(
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

fn fqdn(name: &str, namespace: &str) -> String {
    format!("{name}.{namespace}.svc.cluster.local")
}

/// Where a route attaches, once its parents are read.
#[derive(Default)]
struct Attachment {
    /// `ns/name` of each parent Gateway.
    gateways: Vec<String>,
    /// Service hosts (GAMMA).
    services: Vec<String>,
    /// The port a match must come in on (a `sectionName`, a parent `port`).
    port: Option<u16>,
    /// With a `sectionName`: the hostnames of the listeners chosen.
    listener_hosts: Option<Vec<Option<String>>>,
    /// The listeners attached to, when every parent is known: (port, https).
    listeners: Option<Vec<(u16, bool)>>,
}

fn http_route(
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

fn parents(
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

fn route_hosts(e: &mut Errs<'_>, r: &HttpRouteSpec, at: &Attachment) -> Vec<String> {
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

/// What every Istio rule made of one Gateway API rule does.
#[derive(Default)]
struct Action {
    fields: Map<String, Value>,
    /// URLRewrite `ReplacePrefixMatch`: the prefix replacement, which a
    /// split prefix match needs per piece.
    replace_prefix: Option<String>,
    /// The rule has a `ReplaceFullPath` rewrite (exact or regex matches only).
    full_path: bool,
}

fn rule_action(e: &mut Errs<'_>, f: &str, d: &Document, rule: &Rule, at: &Attachment) -> Action {
    let mut a = Action::default();
    if let Some(name) = &rule.name {
        a.fields.insert("name".into(), json!(name));
    }
    let mut headers = Map::new();
    let mut rewrite = Map::new();
    let mut redirect: Option<Value> = None;
    let mut mirror = false;
    let mut seen: Vec<&str> = Vec::new();
    for (fi, filter) in rule.filters.iter().enumerate() {
        let ff = format!("{f}.filters[{fi}]");
        let t = filter.kind.as_str();
        let given = [
            (
                "RequestHeaderModifier",
                filter.request_header_modifier.is_some(),
            ),
            (
                "ResponseHeaderModifier",
                filter.response_header_modifier.is_some(),
            ),
            ("URLRewrite", filter.url_rewrite.is_some()),
            ("RequestRedirect", filter.request_redirect.is_some()),
            ("RequestMirror", filter.request_mirror.is_some()),
        ];
        if !given.iter().any(|(k, _)| *k == t) {
            e.err(
                format!("{ff}.type"),
                format!(
                    "`{t}` is not supported: this mesh reads RequestHeaderModifier, \
                     ResponseHeaderModifier, URLRewrite, RequestRedirect and RequestMirror"
                ),
            );
            continue;
        }
        for (k, set) in given {
            if set != (k == t) {
                e.err(
                    ff.clone(),
                    format!("a {t} filter must set exactly its own field"),
                );
            }
        }
        if t != "RequestMirror" && seen.contains(&t) {
            e.err(
                format!("{ff}.type"),
                format!("{t} is given twice in one rule"),
            );
            continue;
        }
        seen.push(t);
        match t {
            "RequestHeaderModifier" | "ResponseHeaderModifier" => {
                let m = filter
                    .request_header_modifier
                    .as_ref()
                    .or(filter.response_header_modifier.as_ref());
                if let Some(m) = m {
                    let side = if t == "RequestHeaderModifier" {
                        "request"
                    } else {
                        "response"
                    };
                    headers.insert(side.into(), header_ops(m));
                }
            }
            "URLRewrite" => {
                let Some(u) = &filter.url_rewrite else {
                    continue;
                };
                if let Some(h) = &u.hostname {
                    rewrite.insert("authority".into(), json!(h));
                }
                if let Some(p) = &u.path {
                    let pf = format!("{ff}.urlRewrite.path");
                    match (
                        p.kind.as_str(),
                        &p.replace_full_path,
                        &p.replace_prefix_match,
                    ) {
                        ("ReplaceFullPath", Some(v), None) => {
                            a.full_path = true;
                            rewrite.insert("uri".into(), json!(v));
                        }
                        ("ReplacePrefixMatch", None, Some(v)) => a.replace_prefix = Some(v.clone()),
                        _ => e.err(
                            pf,
                            "type must be ReplaceFullPath with replaceFullPath, or \
                             ReplacePrefixMatch with replacePrefixMatch",
                        ),
                    }
                }
            }
            "RequestRedirect" => {
                if let Some(r) = &filter.request_redirect {
                    redirect = request_redirect(e, &format!("{ff}.requestRedirect"), r, at);
                }
            }
            "RequestMirror" => {
                let Some(m) = &filter.request_mirror else {
                    continue;
                };
                if mirror {
                    e.err(ff.clone(), "one RequestMirror per rule is read");
                    continue;
                }
                mirror = true;
                let mf = format!("{ff}.requestMirror");
                if let Some(dest) = backend(
                    e,
                    &format!("{mf}.backendRef"),
                    d,
                    m.backend_ref.group.as_deref(),
                    m.backend_ref.kind.as_deref(),
                    &m.backend_ref.name,
                    m.backend_ref.namespace.as_deref(),
                    m.backend_ref.port,
                ) {
                    a.fields.insert("mirror".into(), dest);
                }
                let pct = match (m.percent, &m.fraction) {
                    (Some(_), Some(_)) => {
                        e.err(mf.clone(), "percent and fraction are exclusive");
                        100.0
                    }
                    (Some(p), None) => f64::from(p),
                    (None, Some(fr)) => {
                        let den = fr.denominator.unwrap_or(100);
                        if den == 0 || fr.numerator > den {
                            e.err(format!("{mf}.fraction"), "must be a fraction of at most 1");
                            100.0
                        } else {
                            100.0 * f64::from(fr.numerator) / f64::from(den)
                        }
                    }
                    (None, None) => 100.0,
                };
                a.fields
                    .insert("mirrorPercentage".into(), json!({"value": pct}));
            }
            _ => {}
        }
    }
    if !headers.is_empty() {
        a.fields.insert("headers".into(), Value::Object(headers));
    }
    if let Some(t) = &rule.timeouts {
        if let Some(req) = &t.request {
            match crate::resources::Duration::parse(req) {
                Ok(_) => {
                    a.fields.insert("timeout".into(), json!(req));
                }
                Err(m) => e.err(format!("{f}.timeouts.request"), m),
            }
        }
    }
    if let Some(r) = redirect {
        if !rule.backend_refs.is_empty() {
            e.err(
                format!("{f}.backendRefs"),
                "a rule that redirects sends nowhere; remove its backendRefs",
            );
        }
        if !rewrite.is_empty() || a.replace_prefix.is_some() {
            e.err(
                format!("{f}.filters"),
                "URLRewrite and RequestRedirect cannot be in one rule",
            );
        }
        a.fields.insert("redirect".into(), r);
        return a;
    }
    if !rewrite.is_empty() {
        a.fields.insert("rewrite".into(), Value::Object(rewrite));
    }
    let dests = destinations(e, f, d, &rule.backend_refs);
    if dests.is_empty() {
        // The Gateway API answers 500 when no backend can take the request.
        a.fields
            .insert("directResponse".into(), json!({"status": 500}));
    } else {
        a.fields.insert("route".into(), Value::Array(dests));
    }
    a
}

fn header_ops(m: &HeaderModifier) -> Value {
    let pairs = |list: &[NameValue]| -> Map<String, Value> {
        let mut out = Map::new();
        for nv in list {
            // Header names are case-insensitive; the first of a name wins.
            out.entry(nv.name.to_ascii_lowercase())
                .or_insert_with(|| json!(nv.value));
        }
        out
    };
    let mut ops = Map::new();
    if !m.set.is_empty() {
        ops.insert("set".into(), Value::Object(pairs(&m.set)));
    }
    if !m.add.is_empty() {
        ops.insert("add".into(), Value::Object(pairs(&m.add)));
    }
    if !m.remove.is_empty() {
        let remove: Vec<String> = m.remove.iter().map(|h| h.to_ascii_lowercase()).collect();
        ops.insert("remove".into(), json!(remove));
    }
    Value::Object(ops)
}

fn request_redirect(
    e: &mut Errs<'_>,
    f: &str,
    r: &RequestRedirect,
    at: &Attachment,
) -> Option<Value> {
    let mut out = Map::new();
    if let Some(s) = &r.scheme {
        if !matches!(s.as_str(), "http" | "https") {
            e.err(format!("{f}.scheme"), format!("`{s}` is not http or https"));
        }
        out.insert("scheme".into(), json!(s));
    }
    if let Some(h) = &r.hostname {
        out.insert("authority".into(), json!(h));
    }
    match r.port {
        Some(p) => {
            out.insert("port".into(), json!(p));
        }
        None if r.scheme.is_none() => {
            // The Gateway API keeps the listener's port; this mesh's
            // redirect leaves the port out, which is the same only on the
            // scheme's own port.
            let well_known = at.listeners.as_ref().is_some_and(|ls| {
                ls.iter()
                    .all(|&(port, https)| port == if https { 443 } else { 80 })
            });
            if !well_known {
                e.err(
                    format!("{f}.port"),
                    "is required here: the listener's port is not the scheme's own, and a \
                     redirect without a port would drop it",
                );
            }
        }
        None => {}
    }
    if let Some(p) = &r.path {
        match (p.kind.as_str(), &p.replace_full_path) {
            ("ReplaceFullPath", Some(v)) => {
                out.insert("uri".into(), json!(v));
            }
            _ => e.err(
                format!("{f}.path"),
                "only ReplaceFullPath is read in a redirect (ReplacePrefixMatch has no \
                 equivalent in a VirtualService redirect)",
            ),
        }
    }
    let code = r.status_code.unwrap_or(302);
    if !matches!(code, 301 | 302 | 303 | 307 | 308) {
        e.err(
            format!("{f}.statusCode"),
            format!("{code} is not a redirect status"),
        );
    }
    out.insert("redirectCode".into(), json!(code));
    Some(Value::Object(out))
}

/// A backend as an Istio destination, or `None` once refused.
#[allow(clippy::too_many_arguments)]
fn backend(
    e: &mut Errs<'_>,
    f: &str,
    d: &Document,
    group: Option<&str>,
    kind: Option<&str>,
    name: &str,
    namespace: Option<&str>,
    port: Option<u16>,
) -> Option<Value> {
    if !is_core(group) || kind.is_some_and(|k| k != "Service") {
        e.err(
            format!("{f}.kind"),
            "only a Service (group \"\") backend is read",
        );
        return None;
    }
    if namespace.is_some_and(|n| n != d.namespace) {
        e.err(
            format!("{f}.namespace"),
            "a backend in another namespace needs a ReferenceGrant, which this mesh does not read",
        );
        return None;
    }
    let Some(port) = port else {
        e.err(format!("{f}.port"), "is required for a Service backend");
        return None;
    };
    Some(json!({"host": fqdn(name, &d.namespace), "port": {"number": port}}))
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Gateway API weights are relative (0 to 1,000,000); Istio's are at
/// most 100 each. Weights of at most 100 are kept; others are divided by
/// their greatest common divisor (the same split), and only when still
/// above 100 scaled to a sum of 100 (the split to within 1%).
fn istio_weights(weights: &[u32]) -> Vec<u32> {
    if weights.iter().all(|&w| w <= 100) {
        // As written: `90`/`10` reads in `explain` as the user wrote it.
        return weights.to_vec();
    }
    let g = weights
        .iter()
        .fold(0u64, |g, &w| gcd(g, u64::from(w)))
        .max(1);
    let reduced: Vec<u64> = weights.iter().map(|&w| u64::from(w) / g).collect();
    if reduced.iter().all(|&w| w <= 100) {
        return reduced.into_iter().map(|w| w as u32).collect();
    }
    let total: u64 = reduced.iter().sum();
    let mut out: Vec<u64> = reduced.iter().map(|&w| w * 100 / total).collect();
    let mut rest: Vec<(u64, usize)> = reduced
        .iter()
        .enumerate()
        .map(|(i, &w)| (w * 100 % total, i))
        .collect();
    rest.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let short = 100 - out.iter().sum::<u64>();
    for &(_, i) in rest.iter().take(short as usize) {
        out[i] += 1;
    }
    out.into_iter().map(|w| w as u32).collect()
}

fn destinations(e: &mut Errs<'_>, f: &str, d: &Document, refs: &[BackendRef]) -> Vec<Value> {
    let mut dests = Vec::new();
    let mut weights = Vec::new();
    for (bi, b) in refs.iter().enumerate() {
        let bf = format!("{f}.backendRefs[{bi}]");
        if b.weight.is_some_and(|w| w > 1_000_000) {
            e.err(format!("{bf}.weight"), "is more than 1000000");
        }
        if let Some(dest) = backend(
            e,
            &bf,
            d,
            b.group.as_deref(),
            b.kind.as_deref(),
            &b.name,
            b.namespace.as_deref(),
            b.port,
        ) {
            dests.push(dest);
            weights.push(b.weight.unwrap_or(1));
        }
    }
    if weights.iter().all(|&w| w == 0) {
        return Vec::new();
    }
    if dests.len() == 1 {
        return vec![json!({"destination": dests[0]})];
    }
    dests
        .into_iter()
        .zip(istio_weights(&weights))
        .map(|(dest, w)| json!({"destination": dest, "weight": w}))
        .collect()
}

/// The Gateway API's precedence among matches, smallest first: exact
/// path, then prefix, then regular expression (Istio's order); the longer
/// path; a method; more headers; more query parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Precedence {
    path_rank: u8,
    path_len: std::cmp::Reverse<usize>,
    no_method: bool,
    headers: std::cmp::Reverse<usize>,
    query: std::cmp::Reverse<usize>,
}

/// The Istio rules of one match of a rule: one, or two when a prefix
/// match is split (an exact path and the path below it) and a prefix
/// rewrite needs each its own replacement.
fn match_routes(
    e: &mut Errs<'_>,
    f: &str,
    m: &Match,
    a: &Action,
    port: Option<u16>,
) -> Option<(Precedence, Vec<Value>)> {
    let mut base = Map::new();
    let mut headers = Map::new();
    for (i, h) in m.headers.iter().enumerate() {
        if let Some(sm) = value_match(e, &format!("{f}.headers[{i}]"), h) {
            // Case-insensitive names; the first of a name wins (Gateway API).
            headers.entry(h.name.to_ascii_lowercase()).or_insert(sm);
        }
    }
    let mut query = Map::new();
    for (i, q) in m.query_params.iter().enumerate() {
        if let Some(sm) = value_match(e, &format!("{f}.queryParams[{i}]"), q) {
            query.entry(q.name.clone()).or_insert(sm);
        }
    }
    let prec_headers = headers.len();
    let prec_query = query.len();
    if !headers.is_empty() {
        base.insert("headers".into(), Value::Object(headers));
    }
    if !query.is_empty() {
        base.insert("queryParams".into(), Value::Object(query));
    }
    if let Some(method) = &m.method {
        const METHODS: &[&str] = &[
            "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
        ];
        if !METHODS.contains(&method.as_str()) {
            e.err(
                format!("{f}.method"),
                format!("`{method}` is not an HTTP method"),
            );
        }
        base.insert("method".into(), json!({"exact": method}));
    }
    if let Some(p) = port {
        base.insert("port".into(), json!(p));
    }
    let path = m.path.clone().unwrap_or_default();
    let kind = path.kind.as_deref().unwrap_or("PathPrefix");
    let value = path.value.clone().unwrap_or_else(|| "/".to_owned());
    let pf = format!("{f}.path");
    if kind != "RegularExpression" && !value.starts_with('/') {
        e.err(
            format!("{pf}.value"),
            format!("`{value}` must start with /"),
        );
        return None;
    }
    let with = |uri: Value| {
        let mut entry = base.clone();
        entry.insert("uri".into(), uri);
        Value::Object(entry)
    };
    let rule = |entries: Vec<Value>, uri_rewrite: Option<&str>| {
        let mut r = a.fields.clone();
        r.insert("match".into(), Value::Array(entries));
        if let Some(u) = uri_rewrite {
            let rw = r
                .entry("rewrite")
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(rw) = rw {
                rw.insert("uri".into(), json!(u));
            }
        }
        Value::Object(r)
    };
    if a.replace_prefix.is_some() && kind != "PathPrefix" {
        e.err(
            pf.clone(),
            "a ReplacePrefixMatch rewrite needs PathPrefix matches",
        );
        return None;
    }
    if a.full_path && kind == "PathPrefix" {
        e.err(
            pf.clone(),
            "a ReplaceFullPath rewrite is read with Exact or RegularExpression path matches \
             only: with a prefix match this mesh would replace only the prefix",
        );
        return None;
    }
    let (rank, routes) = match kind {
        "Exact" => (0, vec![rule(vec![with(json!({"exact": value}))], None)]),
        "RegularExpression" => {
            if let Err(err) = crate::route::compile_regex(&value) {
                e.err(
                    format!("{pf}.value"),
                    format!("is not a regular expression: {err}"),
                );
                return None;
            }
            (2, vec![rule(vec![with(json!({"regex": value}))], None)])
        }
        "PathPrefix" => {
            // A Gateway API prefix matches whole path elements: `/foo` is
            // `/foo` and what is below `/foo/`, never `/foobar`.
            let p = value.trim_end_matches('/');
            let below = format!("{p}/");
            let routes = match (&a.replace_prefix, p.is_empty()) {
                (None, true) => vec![rule(vec![with(json!({"prefix": "/"}))], None)],
                (None, false) => vec![rule(
                    vec![with(json!({"exact": p})), with(json!({"prefix": below}))],
                    None,
                )],
                (Some(r), _) => {
                    let exact = if p.is_empty() { "/" } else { p };
                    let r_below = if r.ends_with('/') {
                        r.clone()
                    } else {
                        format!("{r}/")
                    };
                    vec![
                        rule(vec![with(json!({"exact": exact}))], Some(r)),
                        rule(vec![with(json!({"prefix": below}))], Some(&r_below)),
                    ]
                }
            };
            (1, routes)
        }
        other => {
            e.err(
                format!("{pf}.type"),
                format!("`{other}` is not one of Exact, PathPrefix, RegularExpression"),
            );
            return None;
        }
    };
    let prec = Precedence {
        path_rank: rank,
        path_len: std::cmp::Reverse(value.trim_end_matches('/').len()),
        no_method: m.method.is_none(),
        headers: std::cmp::Reverse(prec_headers),
        query: std::cmp::Reverse(prec_query),
    };
    Some((prec, routes))
}

fn value_match(e: &mut Errs<'_>, f: &str, m: &ValueMatch) -> Option<Value> {
    match m.kind.as_deref().unwrap_or("Exact") {
        "Exact" => Some(json!({"exact": m.value})),
        "RegularExpression" => {
            if let Err(err) = crate::route::compile_regex(&m.value) {
                e.err(
                    format!("{f}.value"),
                    format!("is not a regular expression: {err}"),
                );
                return None;
            }
            Some(json!({"regex": m.value}))
        }
        other => {
            e.err(
                format!("{f}.type"),
                format!("`{other}` is not one of Exact, RegularExpression"),
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::istio_weights;

    #[test]
    fn weights_keep_the_split() {
        assert_eq!(istio_weights(&[90, 10]), [90, 10]);
        assert_eq!(istio_weights(&[1, 1]), [1, 1]);
        assert_eq!(istio_weights(&[900, 100]), [9, 1]);
        assert_eq!(istio_weights(&[0, 5]), [0, 5]);
        assert_eq!(istio_weights(&[1000, 1]), [100, 0]);
        assert_eq!(istio_weights(&[201, 101, 1]).iter().sum::<u32>(), 100);
    }
}
