//! `security.istio.io` PeerAuthentication, RequestAuthentication and
//! AuthorizationPolicy (v1beta1 and v1), and the legacy `authentication.istio.io/v1alpha1` MeshPolicy and
//! Policy, which are read here and mapped onto PeerAuthentication semantics.
//!
//! An AuthorizationPolicy annotated `istio.io/dry-run: "true"` is evaluated
//! but not enforced ([`dry_run`]).
//!
//! Security resources fail closed: a field or value this mesh cannot honour is
//! an error that rejects the whole configuration, so no rule is ever weakened
//! by being half understood.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::common::{ObjectMeta, WorkloadSelector};

/// Inbound mTLS modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MtlsMode {
    /// Inherit from the parent scope.
    Unset,
    /// Plaintext only.
    Disable,
    /// mTLS and plaintext on one port.
    Permissive,
    /// mTLS only.
    Strict,
}

impl MtlsMode {
    /// The mode as Istio writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unset => "UNSET",
            Self::Disable => "DISABLE",
            Self::Permissive => "PERMISSIVE",
            Self::Strict => "STRICT",
        }
    }
}

impl std::fmt::Display for MtlsMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `{mode: STRICT}`.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MtlsSetting {
    /// The mode; UNSET when absent.
    #[serde(default)]
    pub mode: Option<MtlsMode>,
}

/// `PeerAuthentication.spec`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerAuthentication {
    /// Workloads it applies to; the whole namespace when absent (the whole
    /// mesh in the root namespace).
    #[serde(default)]
    pub selector: Option<WorkloadSelector>,
    /// The mode for all ports.
    #[serde(default)]
    pub mtls: Option<MtlsSetting>,
    /// Per workload port; needs a selector. Written, it lists at least one
    /// port (Istio's schema).
    #[serde(default, deserialize_with = "non_empty_ports")]
    pub port_level_mtls: BTreeMap<u16, MtlsSetting>,
}

fn non_empty_ports<'de, D>(d: D) -> Result<BTreeMap<u16, MtlsSetting>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let m = BTreeMap::<u16, MtlsSetting>::deserialize(d)?;
    if m.is_empty() {
        return Err(serde::de::Error::custom(
            "should have at least 1 properties: list a port, or leave portLevelMtls out",
        ));
    }
    Ok(m)
}

/// AuthorizationPolicy actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AuthzAction {
    /// Allow matching requests; with any ALLOW policy, others are denied.
    Allow,
    /// Deny matching requests; evaluated first.
    Deny,
    /// Log matching requests only.
    Audit,
    /// Delegate to the external authorizer `provider` names. This mesh
    /// defines no extension provider (MeshConfig `extensionProviders` is
    /// not read), so, as Istio does for a provider it cannot find, every
    /// request to the workloads it applies to is denied (see
    /// [`crate::authz::AuthzPolicy::provider`]).
    Custom,
}

/// The annotation that puts an AuthorizationPolicy in dry-run, Istio's
/// shadow mode: evaluated and reported, never enforced.
pub const DRY_RUN_ANNOTATION: &str = "istio.io/dry-run";

/// The field path errors about [`DRY_RUN_ANNOTATION`] name.
pub const DRY_RUN_FIELD: &str = "metadata.annotations[istio.io/dry-run]";

/// Is the AuthorizationPolicy with this metadata a dry-run one? Only
/// `"true"` and `"false"` are read; `Err` says why another value is not,
/// since guessing either way could enforce what was meant as a trial or
/// leave unenforced what was meant to protect.
pub fn dry_run(meta: &ObjectMeta) -> Result<bool, String> {
    match meta.annotations.get(DRY_RUN_ANNOTATION).map(String::as_str) {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => Err(format!("`{other}` is neither \"true\" nor \"false\"")),
    }
}

/// `AuthorizationPolicy.spec`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationPolicy {
    /// Workloads it applies to; the whole namespace when absent (the whole
    /// mesh in the root namespace).
    #[serde(default)]
    pub selector: Option<WorkloadSelector>,
    /// ALLOW when absent.
    #[serde(default)]
    pub action: Option<AuthzAction>,
    /// Rules (OR). No rules: an ALLOW policy matches nothing, a DENY policy
    /// matches nothing.
    #[serde(default)]
    pub rules: Option<Vec<Rule>>,
    /// The external authorizer of a CUSTOM policy: a MeshConfig
    /// `extensionProviders` entry by name.
    #[serde(default)]
    pub provider: Option<ExtensionProviderRef>,
}

/// `AuthorizationPolicy.spec.provider`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExtensionProviderRef {
    /// The name of a MeshConfig `extensionProviders` entry.
    #[serde(default)]
    pub name: String,
}

/// One rule: `from` (OR of sources), `to` (OR of operations), `when` (AND).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    /// Sources; any may match. Absent: any source.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<RuleFrom>,
    /// Operations; any may match. Absent: any operation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<RuleTo>,
    /// Conditions; all must hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub when: Vec<Condition>,
}

/// `{source: {...}}`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleFrom {
    /// The source.
    pub source: Source,
}

/// `{operation: {...}}`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleTo {
    /// The operation.
    pub operation: Operation,
}

/// Who is calling. Fields are ANDed; values within a field are ORed.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Source {
    /// Peer identities, `<trust-domain>/ns/<ns>/sa/<sa>`, with `*` prefix or
    /// suffix wildcards.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<String>,
    /// Peer identities that must not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_principals: Vec<String>,
    /// Peer namespaces (from the verified identity).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// Peer namespaces that must not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_namespaces: Vec<String>,
    /// Kubernetes service accounts of the peer (from the verified
    /// identity), `<namespace>/<name>`, or `<name>` for one of the
    /// policy's namespace. No wildcards; not beside `principals` or
    /// `namespaces` (Istio's rules). See [`crate::authz`] for how the
    /// trust domain is read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_accounts: Vec<String>,
    /// Service accounts that must not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_service_accounts: Vec<String>,
    /// Trust domains of the peer's verified identity, with `*` prefix or
    /// suffix wildcards.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trust_domains: Vec<String>,
    /// Trust domains that must not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_trust_domains: Vec<String>,
    /// Request principals, `<iss>/<sub>` of a JWT validated by a
    /// RequestAuthentication, with `*` prefix or suffix wildcards.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_principals: Vec<String>,
    /// Request principals that must not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_request_principals: Vec<String>,
    /// The original client's address (see
    /// [`AuthzRequest::remote_ip`](crate::authz::AuthzRequest::remote_ip)):
    /// IP addresses or CIDR blocks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remote_ip_blocks: Vec<String>,
    /// Original client addresses that must not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_remote_ip_blocks: Vec<String>,
    /// Peer IP addresses or CIDR blocks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_blocks: Vec<String>,
    /// Peer IP addresses or CIDR blocks that must not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ip_blocks: Vec<String>,
}

/// What is called. Fields are ANDed; values within a field are ORed.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Operation {
    /// Host header values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Host header values that must not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_hosts: Vec<String>,
    /// Workload ports, as strings.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
    /// Workload ports that must not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ports: Vec<String>,
    /// HTTP methods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// HTTP methods that must not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_methods: Vec<String>,
    /// Normalised request paths, with `*` prefix or suffix wildcards.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    /// Paths that must not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_paths: Vec<String>,
}

/// A `when` condition.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Condition {
    /// `request.headers[Name]`, `source.ip`, `source.namespace`,
    /// `source.principal`, `source.trustDomain`, `destination.ip`,
    /// `destination.port`, `connection.sni`, `request.auth.*` (the full
    /// list: [`crate::validate::WHEN_KEYS`]).
    pub key: String,
    /// Values; any may match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    /// Values that must not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_values: Vec<String>,
}

// ------------------------------------------------------ RequestAuthentication

/// `RequestAuthentication.spec`: which JWTs the selected workloads accept.
/// A request without a token passes authentication (with no request
/// principal); one with a token that fails any check is refused with 401.
/// `targetRef`/`targetRefs` (Gateway API attachment) are not read here, so
/// they are refused as unknown fields.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestAuthentication {
    /// Workloads it applies to; the whole namespace when absent (the whole
    /// mesh in the root namespace).
    #[serde(default)]
    pub selector: Option<WorkloadSelector>,
    /// The issuers accepted; a token's `iss` picks its rule.
    #[serde(default)]
    pub jwt_rules: Vec<JwtRule>,
}

/// One issuer: how its tokens are found and checked.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtRule {
    /// The `iss` claim this rule is for (required).
    #[serde(default)]
    pub issuer: String,
    /// Accepted `aud` values, any of them; empty: not checked.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Where the issuer's JSON Web Key Set is fetched (http or https).
    #[serde(default)]
    pub jwks_uri: Option<String>,
    /// The JSON Web Key Set itself, as a JSON string.
    #[serde(default)]
    pub jwks: Option<String>,
    /// Headers the token is read from; with `fromParams` and `fromCookies`
    /// empty too, `Authorization: Bearer` and the `access_token` query
    /// parameter.
    #[serde(default)]
    pub from_headers: Vec<JwtHeader>,
    /// Query parameters the token is read from.
    #[serde(default)]
    pub from_params: Vec<String>,
    /// Cookies the token is read from.
    #[serde(default)]
    pub from_cookies: Vec<String>,
    /// A header that carries the validated payload (base64url) upstream.
    #[serde(default)]
    pub output_payload_to_header: Option<String>,
    /// Keep the token in the request; by default the header that carried
    /// it is removed once it is validated.
    #[serde(default)]
    pub forward_original_token: bool,
    /// Claims copied into request headers.
    #[serde(default)]
    pub output_claim_to_headers: Vec<ClaimToHeader>,
    /// Claims whose string value is a space-separated list (`scope`).
    #[serde(default)]
    pub space_delimited_claims: Vec<String>,
    /// How long fetching `jwksUri` may take (default 5s).
    #[serde(default)]
    pub timeout: Option<super::common::Duration>,
    /// Whether a request must carry a token of this issuer (default
    /// `OPTIONAL`: a request without one passes with no principal).
    #[serde(default)]
    pub presence: Option<JwtPresence>,
}

/// `jwtRules[].presence`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JwtPresence {
    /// A request without this issuer's token passes authentication.
    Optional,
    /// A request without this issuer's token is refused with 401, as
    /// Envoy's `requires` of the provider does.
    Required,
}

/// `{name, prefix}`: a header a token is read from.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtHeader {
    /// The header's name.
    #[serde(default)]
    pub name: String,
    /// Cut off the value's start (`Bearer `); a value without it carries
    /// no token.
    #[serde(default)]
    pub prefix: String,
}

/// `{header, claim}`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClaimToHeader {
    /// The request header to write.
    #[serde(default)]
    pub header: String,
    /// The claim; `a.b` reads the nested claim `b` of `a`.
    #[serde(default)]
    pub claim: String,
}

// ----------------------------------------------------------------- legacy v1alpha1

/// `MeshPolicy.spec` / `Policy.spec` of `authentication.istio.io/v1alpha1`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LegacyPolicy {
    /// Services the policy applies to (Policy only); the namespace when
    /// absent.
    #[serde(default)]
    pub targets: Vec<LegacyTarget>,
    /// Peer authentication methods; `mtls` is the only one.
    #[serde(default)]
    pub peers: Vec<LegacyPeer>,
    /// Accept peers that present no identity: PERMISSIVE.
    #[serde(default)]
    pub peer_is_optional: bool,
}

/// A legacy policy target: a service by short name, optionally some ports.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LegacyTarget {
    /// Service short name in the policy's namespace.
    pub name: String,
    /// Service ports; all when absent.
    #[serde(default)]
    pub ports: Vec<LegacyPort>,
}

/// A legacy port selector: a number (names are not supported).
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LegacyPort {
    /// The service port number.
    pub number: u16,
}

/// A legacy peer method: `{mtls: {}}` or `{mtls: {mode: PERMISSIVE}}`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LegacyPeer {
    /// Mutual TLS; `{}` or null means STRICT.
    #[serde(default)]
    pub mtls: Option<LegacyMtls>,
}

/// Legacy mTLS settings.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LegacyMtls {
    /// STRICT (default) or PERMISSIVE.
    #[serde(default)]
    pub mode: Option<LegacyMtlsMode>,
}

/// Legacy mTLS modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum LegacyMtlsMode {
    /// mTLS only.
    Strict,
    /// mTLS and plaintext.
    Permissive,
}

impl LegacyPolicy {
    /// The PeerAuthentication mode the legacy policy means: no peers is
    /// plaintext, `mtls` is STRICT unless it says PERMISSIVE or the peer is
    /// optional.
    pub fn mode(&self) -> MtlsMode {
        // `mtls` is the only peer method there is, so any peer means mTLS.
        let Some(peer) = self.peers.first() else {
            return MtlsMode::Disable;
        };
        let mode = peer.mtls.and_then(|m| m.mode);
        if self.peer_is_optional || mode == Some(LegacyMtlsMode::Permissive) {
            MtlsMode::Permissive
        } else {
            MtlsMode::Strict
        }
    }
}
