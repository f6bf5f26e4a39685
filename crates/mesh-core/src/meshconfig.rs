//! The mesh's own settings: trust domain, default mTLS mode, CA address and
//! listener ports. Every field has a default, so a folder of plain Istio YAML
//! is a complete configuration; a document of kind `MeshConfig` overrides
//! what it names:
//!
//! ```yaml
//! apiVersion: mesh.config/v1alpha1
//! kind: MeshConfig
//! metadata:
//!   name: mesh
//! spec:
//!   trustDomain: cluster.local
//!   defaultMtlsMode: STRICT
//!   caAddress: 127.0.0.1:15012
//! ```

use serde::{Deserialize, Serialize};

use crate::identity::TrustDomain;
use crate::resources::security::MtlsMode;

/// The `apiVersion` of the MeshConfig document.
pub const MESH_CONFIG_API_VERSION: &str = "mesh.config/v1alpha1";

/// Mesh-level settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct MeshConfig {
    /// The trust domain of the mesh's identities.
    pub trust_domain: TrustDomain,
    /// The cluster DNS suffix short host names are completed with.
    pub cluster_domain: String,
    /// The namespace whose selector-less PeerAuthentication and
    /// AuthorizationPolicy apply mesh-wide.
    pub root_namespace: String,
    /// The inbound mTLS mode when no PeerAuthentication applies. STRICT by
    /// default: Istio defaults to PERMISSIVE, this mesh does not weaken
    /// anything unless asked by name.
    pub default_mtls_mode: MtlsMode,
    /// Where workloads reach the CA.
    pub ca_address: String,
    /// Listener ports of the sidecar.
    pub ports: ListenerPorts,
    /// What the gateway and the sidecar's inbound do with a request header
    /// whose name has an underscore (`x_role`), which PHP, WSGI and other
    /// CGI-style applications read as the dashed name (`x-role`): refuse
    /// the request (400, the default, as Envoy's edge default), drop the
    /// header, or let it through. Even with `ALLOW`, a header that reads as
    /// one the mesh sets (`x_forwarded_client_cert`...) never reaches the
    /// application.
    pub headers_with_underscores_action: UnderscoreAction,
    /// The gateway's refusals carry only the class of their reason in
    /// `x-mesh-reason` (`no route`, `upstream unavailable`...) unless this
    /// is set: the detail (internal hosts, addresses, error texts) stays in
    /// the log and the access log. For debugging; never on an edge that
    /// faces the internet.
    pub dangerous_gateway_error_detail: bool,
    /// What a sidecar in capture mode does with a connection to an address
    /// that is no service of the mesh: Istio's `outboundTrafficPolicy`.
    pub outbound_traffic_policy: OutboundTrafficPolicy,
    /// Where a ServiceEntry without `exportTo` is visible (Istio's
    /// `defaultServiceExportTo`): every namespace when empty.
    pub default_service_export_to: Vec<String>,
    /// Where a VirtualService without `exportTo` is visible
    /// (`defaultVirtualServiceExportTo`): every namespace when empty.
    pub default_virtual_service_export_to: Vec<String>,
    /// Where a DestinationRule without `exportTo` is visible
    /// (`defaultDestinationRuleExportTo`): every namespace when empty.
    pub default_destination_rule_export_to: Vec<String>,
    /// Whether HTTP/1.1 requests between proxies go upstream as HTTP/2
    /// (Istio's `h2UpgradePolicy`; a DestinationRule's overrides it per
    /// destination). `DO_NOT_UPGRADE` by default, as in Istio: an HTTP/1.1
    /// request goes on as HTTP/1.1 over a pool of connections.
    pub h2_upgrade_policy: MeshH2UpgradePolicy,
    /// Istio's `extensionProviders`: the providers a Telemetry names, by
    /// name. Besides these, the names Istio's default MeshConfig defines
    /// are known: `prometheus` (metrics) and `envoy` (the access log to
    /// standard output).
    pub extension_providers: Vec<ExtensionProvider>,
}

/// One of MeshConfig's `extensionProviders`: a name and one provider.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "RawProvider", into = "RawProvider")]
pub struct ExtensionProvider {
    /// The name a Telemetry's `providers` give.
    pub name: String,
    /// What it is.
    pub kind: ProviderKind,
}

/// What an extension provider is, as far as this mesh reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderKind {
    /// `prometheus: {}`: the metrics this mesh serves at
    /// `/stats/prometheus`.
    Prometheus,
    /// `envoyFileAccessLog`: an access log to a file. `path` as written;
    /// `log_format` the format as written (JSON), if any.
    EnvoyFileAccessLog {
        /// The file.
        path: String,
        /// `logFormat`, as written.
        log_format: Option<String>,
    },
    /// Any other provider (`zipkin`, `opentelemetry`, `envoyOtelAls`...),
    /// by its field name, with its settings as written (JSON).
    Other {
        /// The field naming the provider's type.
        field: String,
        /// Its settings.
        settings: String,
    },
}

#[derive(Deserialize, Serialize)]
struct RawProvider {
    name: String,
    #[serde(flatten)]
    provider: std::collections::BTreeMap<String, serde_json::Value>,
}

impl TryFrom<RawProvider> for ExtensionProvider {
    type Error = String;

    fn try_from(raw: RawProvider) -> Result<Self, String> {
        if raw.name.is_empty() {
            return Err("an extension provider needs a name".to_owned());
        }
        let mut fields = raw.provider.into_iter();
        let (Some((field, settings)), None) = (fields.next(), fields.next()) else {
            return Err(format!(
                "extension provider `{}` must have exactly one provider field (prometheus, envoyFileAccessLog, ...)",
                raw.name
            ));
        };
        let kind = match field.as_str() {
            "prometheus" => ProviderKind::Prometheus,
            "envoyFileAccessLog" => {
                let map = settings.as_object().cloned().unwrap_or_default();
                for k in map.keys() {
                    if k != "path" && k != "logFormat" {
                        return Err(format!(
                            "extension provider `{}`: envoyFileAccessLog.{k} is not a field of envoyFileAccessLog",
                            raw.name
                        ));
                    }
                }
                ProviderKind::EnvoyFileAccessLog {
                    path: map
                        .get("path")
                        .and_then(serde_json::Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                    log_format: map.get("logFormat").map(ToString::to_string),
                }
            }
            _ => ProviderKind::Other {
                field,
                settings: settings.to_string(),
            },
        };
        Ok(Self {
            name: raw.name,
            kind,
        })
    }
}

impl From<ExtensionProvider> for RawProvider {
    fn from(p: ExtensionProvider) -> Self {
        let parse = |s: &str| serde_json::from_str(s).unwrap_or(serde_json::Value::Null);
        let (field, value) = match p.kind {
            ProviderKind::Prometheus => ("prometheus".to_owned(), serde_json::json!({})),
            ProviderKind::EnvoyFileAccessLog { path, log_format } => {
                let mut m = serde_json::Map::new();
                m.insert("path".to_owned(), serde_json::Value::String(path));
                if let Some(f) = log_format {
                    m.insert("logFormat".to_owned(), parse(&f));
                }
                (
                    "envoyFileAccessLog".to_owned(),
                    serde_json::Value::Object(m),
                )
            }
            ProviderKind::Other { field, settings } => (field, parse(&settings)),
        };
        Self {
            name: p.name,
            provider: std::collections::BTreeMap::from([(field, value)]),
        }
    }
}

/// MeshConfig's `h2UpgradePolicy`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MeshH2UpgradePolicy {
    /// HTTP/1.1 stays HTTP/1.1 (Istio's default).
    #[default]
    DoNotUpgrade,
    /// HTTP/1.1 requests to mesh destinations go as HTTP/2.
    Upgrade,
}

/// Istio's `outboundTrafficPolicy`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct OutboundTrafficPolicy {
    /// `ALLOW_ANY` (Istio's default) or `REGISTRY_ONLY`.
    pub mode: OutboundMode,
}

/// Istio's `outboundTrafficPolicy.mode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OutboundMode {
    /// The connection goes out unchanged to its original destination
    /// (Istio's `PassthroughCluster`).
    #[default]
    AllowAny,
    /// The connection is refused (Istio's `BlackHoleCluster`).
    RegistryOnly,
}

/// Envoy's `headers_with_underscores_action`, by its value names.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum UnderscoreAction {
    /// 400, naming the header.
    #[default]
    RejectRequest,
    /// The header is removed and counted.
    DropHeader,
    /// The header goes through (but never one that reads as a mesh header).
    Allow,
}

/// Sidecar listener ports, Istio's by default.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ListenerPorts {
    /// Outbound HTTP proxy.
    pub outbound: u16,
    /// Inbound mTLS listener.
    pub inbound: u16,
    /// Admin (config dump, certs, stats), loopback only.
    pub admin: u16,
    /// Merged metrics and health.
    pub health: u16,
}

impl Default for ListenerPorts {
    fn default() -> Self {
        Self {
            outbound: 15001,
            inbound: 15006,
            admin: 15000,
            health: 15020,
        }
    }
}

impl Default for MeshConfig {
    fn default() -> Self {
        Self {
            // Infallible: a constant that satisfies the trust-domain grammar.
            trust_domain: TrustDomain::new("cluster.local").unwrap_or_else(|_| unreachable!()),
            cluster_domain: "cluster.local".to_owned(),
            root_namespace: "istio-system".to_owned(),
            default_mtls_mode: MtlsMode::Strict,
            ca_address: "127.0.0.1:15012".to_owned(),
            ports: ListenerPorts::default(),
            headers_with_underscores_action: UnderscoreAction::default(),
            dangerous_gateway_error_detail: false,
            outbound_traffic_policy: OutboundTrafficPolicy::default(),
            default_service_export_to: Vec::new(),
            default_virtual_service_export_to: Vec::new(),
            default_destination_rule_export_to: Vec::new(),
            h2_upgrade_policy: MeshH2UpgradePolicy::default(),
            extension_providers: Vec::new(),
        }
    }
}

impl MeshConfig {
    /// Completes a host name the way Istio does: a name without a dot is a
    /// service of `namespace` (`wordpress` in `default` is
    /// `wordpress.default.svc.cluster.local`); anything else, wildcards
    /// included, stays as written. Host names are case-insensitive, so the
    /// result is lowercase.
    pub fn resolve_host(&self, host: &str, namespace: &str) -> String {
        let host = host.to_ascii_lowercase();
        if host.contains('.') || host == "*" {
            host
        } else {
            format!("{host}.{namespace}.svc.{}", self.cluster_domain)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_hosts_resolve_in_their_namespace() {
        let mesh = MeshConfig::default();
        assert_eq!(
            mesh.resolve_host("wordpress", "default"),
            "wordpress.default.svc.cluster.local"
        );
        assert_eq!(
            mesh.resolve_host("MySQL", "db"),
            "mysql.db.svc.cluster.local"
        );
        assert_eq!(
            mesh.resolve_host("httpbin.default.svc.cluster.local", "other"),
            "httpbin.default.svc.cluster.local"
        );
        assert_eq!(
            mesh.resolve_host("blog.datadoc.info", "x"),
            "blog.datadoc.info"
        );
        assert_eq!(mesh.resolve_host("*", "x"), "*");
    }
}
