//! The Gateway API's kinds, typed as its v1 API defines them. Every struct
//! denies unknown fields: a field this mesh does not translate is refused
//! by name.

use serde::Deserialize;
use serde::de::IgnoredAny;

// ---------------------------------------------------------------- Gateway

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct GatewaySpec {
    pub(super) gateway_class_name: String,
    #[serde(default)]
    pub(super) listeners: Vec<Listener>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct Listener {
    pub(super) name: String,
    #[serde(default)]
    pub(super) hostname: Option<String>,
    pub(super) port: u16,
    pub(super) protocol: String,
    #[serde(default)]
    pub(super) tls: Option<ListenerTls>,
    #[serde(default)]
    pub(super) allowed_routes: Option<AllowedRoutes>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct ListenerTls {
    #[serde(default)]
    pub(super) mode: Option<String>,
    #[serde(default)]
    pub(super) certificate_refs: Vec<ObjectRef>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct ObjectRef {
    #[serde(default)]
    pub(super) group: Option<String>,
    #[serde(default)]
    pub(super) kind: Option<String>,
    pub(super) name: String,
    #[serde(default)]
    pub(super) namespace: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct AllowedRoutes {
    #[serde(default)]
    pub(super) namespaces: Option<RouteNamespaces>,
    #[serde(default)]
    pub(super) kinds: Vec<RouteGroupKind>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct RouteNamespaces {
    #[serde(default)]
    pub(super) from: Option<String>,
    #[serde(default)]
    pub(super) selector: Option<IgnoredAny>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct RouteGroupKind {
    #[serde(default)]
    pub(super) group: Option<String>,
    pub(super) kind: String,
}

// -------------------------------------------------------------- HTTPRoute

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct HttpRouteSpec {
    #[serde(default)]
    pub(super) parent_refs: Vec<ParentRef>,
    #[serde(default)]
    pub(super) hostnames: Vec<String>,
    #[serde(default)]
    pub(super) rules: Vec<Rule>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct ParentRef {
    #[serde(default)]
    pub(super) group: Option<String>,
    #[serde(default)]
    pub(super) kind: Option<String>,
    #[serde(default)]
    pub(super) namespace: Option<String>,
    pub(super) name: String,
    #[serde(default)]
    pub(super) section_name: Option<String>,
    #[serde(default)]
    pub(super) port: Option<u16>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct Rule {
    #[serde(default)]
    pub(super) name: Option<String>,
    #[serde(default)]
    pub(super) matches: Vec<Match>,
    #[serde(default)]
    pub(super) filters: Vec<Filter>,
    #[serde(default)]
    pub(super) backend_refs: Vec<BackendRef>,
    #[serde(default)]
    pub(super) timeouts: Option<Timeouts>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct Match {
    #[serde(default)]
    pub(super) path: Option<PathMatch>,
    #[serde(default)]
    pub(super) headers: Vec<ValueMatch>,
    #[serde(default)]
    pub(super) query_params: Vec<ValueMatch>,
    #[serde(default)]
    pub(super) method: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct PathMatch {
    #[serde(default, rename = "type")]
    pub(super) kind: Option<String>,
    #[serde(default)]
    pub(super) value: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct ValueMatch {
    #[serde(default, rename = "type")]
    pub(super) kind: Option<String>,
    pub(super) name: String,
    pub(super) value: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct Filter {
    #[serde(rename = "type")]
    pub(super) kind: String,
    #[serde(default)]
    pub(super) request_header_modifier: Option<HeaderModifier>,
    #[serde(default)]
    pub(super) response_header_modifier: Option<HeaderModifier>,
    #[serde(default, rename = "urlRewrite")]
    pub(super) url_rewrite: Option<UrlRewrite>,
    #[serde(default)]
    pub(super) request_redirect: Option<RequestRedirect>,
    #[serde(default)]
    pub(super) request_mirror: Option<RequestMirror>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct HeaderModifier {
    #[serde(default)]
    pub(super) set: Vec<NameValue>,
    #[serde(default)]
    pub(super) add: Vec<NameValue>,
    #[serde(default)]
    pub(super) remove: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct NameValue {
    pub(super) name: String,
    pub(super) value: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct UrlRewrite {
    #[serde(default)]
    pub(super) hostname: Option<String>,
    #[serde(default)]
    pub(super) path: Option<PathModifier>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct PathModifier {
    #[serde(rename = "type")]
    pub(super) kind: String,
    #[serde(default)]
    pub(super) replace_full_path: Option<String>,
    #[serde(default)]
    pub(super) replace_prefix_match: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct RequestRedirect {
    #[serde(default)]
    pub(super) scheme: Option<String>,
    #[serde(default)]
    pub(super) hostname: Option<String>,
    #[serde(default)]
    pub(super) path: Option<PathModifier>,
    #[serde(default)]
    pub(super) port: Option<u16>,
    #[serde(default)]
    pub(super) status_code: Option<u16>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct RequestMirror {
    pub(super) backend_ref: BackendObjectRef,
    #[serde(default)]
    pub(super) percent: Option<u32>,
    #[serde(default)]
    pub(super) fraction: Option<Fraction>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct Fraction {
    pub(super) numerator: u32,
    #[serde(default)]
    pub(super) denominator: Option<u32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct BackendObjectRef {
    #[serde(default)]
    pub(super) group: Option<String>,
    #[serde(default)]
    pub(super) kind: Option<String>,
    pub(super) name: String,
    #[serde(default)]
    pub(super) namespace: Option<String>,
    #[serde(default)]
    pub(super) port: Option<u16>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct BackendRef {
    #[serde(default)]
    pub(super) group: Option<String>,
    #[serde(default)]
    pub(super) kind: Option<String>,
    pub(super) name: String,
    #[serde(default)]
    pub(super) namespace: Option<String>,
    #[serde(default)]
    pub(super) port: Option<u16>,
    #[serde(default)]
    pub(super) weight: Option<u32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct Timeouts {
    #[serde(default)]
    pub(super) request: Option<String>,
}
