//! AuthorizationPolicy decisions as Istio defines them: DENY policies are
//! evaluated first, then ALLOW; a workload with no ALLOW policy allows what
//! no DENY policy denies; with any ALLOW policy, a request is denied unless
//! one matches. AUDIT policies never change the decision; the first that
//! matches is reported in [`AuthzDecision::audited_by`] for the access log.
//! Dry-run policies (`istio.io/dry-run: "true"`) are left out of the
//! decision entirely and decided on their own, by the same rules, into
//! [`AuthzDecision::shadow`] (Istio's shadow mode; a dry-run AUDIT policy
//! audits nothing).
//! An ALLOW policy without rules (`spec: {}`) matches nothing, so it denies
//! everything; a rule without fields (`rules: [{}]`) matches everything.
//!
//! Positive source fields (`principals`, `namespaces`, `serviceAccounts`,
//! `trustDomains`, and the `when` keys `source.principal`,
//! `source.namespace`, `source.trustDomain`) need a verified peer
//! identity: a plaintext request never satisfies them. Negative fields are
//! their negation, so `notPrincipals: ["*"]` in a DENY policy denies every
//! request without an identity, as in Istio. `connection.sni` reads the
//! server name of the connection's TLS ClientHello ([`Sni`]), compared
//! ignoring case as DNS names are; plaintext or a ClientHello without one
//! has none, which its values never match and its `notValues` always do.
//!
//! # Doubt is resolved against the requester
//!
//! Where a request can be read more than one way, a DENY (or AUDIT) rule
//! matches if it matches under *any* reading and an ALLOW rule only if it
//! matches under *every* reading. When all readings agree this is exactly
//! Istio's semantics; it only differs where Istio's would let a crafted
//! request through:
//!
//! - **Paths** are matched after [`normalize_path`], percent-decoded once
//!   (both the path and the pattern), as the application reads them. A path
//!   with `;` parameters is also read with them cut off and merged again,
//!   to a fixed point (`/admin;x` → `/admin`, `/;x/admin` → `//admin` →
//!   `/admin`), as Tomcat and Spring route on it. Paths compare case-sensitively, as in Istio, but a DENY
//!   rule's `paths` (and an ALLOW rule's `notPaths`) also match
//!   case-insensitively, so `/ADMIN` cannot slip past `DENY /admin*` on an
//!   application that ignores case. Methods are treated the same way.
//! - **Hosts** compare case-insensitively, with or without the port and a
//!   trailing dot (`Example.COM.:8080` matches `example.com`). Policies'
//!   hosts are compiled to the canonical spelling
//!   ([`Snapshot::canonical_host`](crate::snapshot::Snapshot::canonical_host):
//!   a service's short name is its FQDN), and the data plane reads the
//!   request's host in it too, so `reviews` and
//!   `reviews.default.svc.cluster.local` are one host; an IP address is read
//!   as every service of the workload ([`AuthzRequest::host_aliases`]).
//! - **Header values** are read with their optional whitespace trimmed;
//!   each value of a repeated header is one reading, and so is all values
//!   joined with `,` (what Envoy matches), and each element of a
//!   comma-separated list (`user, root` is read as `user` and as `root`).
//! - **Service accounts** (`serviceAccounts: [ns/sa]`, a bare `sa` being
//!   of the policy's namespace) are read two ways: as the mesh's own
//!   identity `spiffe://<the mesh's trust domain>/ns/<ns>/sa/<sa>` (what a
//!   Kubernetes service account is), and as Istio matches them, in any
//!   trust domain the peer was verified in and with other segments around
//!   (`spiffe://.+/ns/<ns>/(.+/|)sa/<sa>(/.+)?`). So an ALLOW rule lets in
//!   only the mesh's own service account, never one of that name from a
//!   federated trust domain, while a DENY rule denies every one Istio's
//!   would.
//! - **Unknown facts**: an unknown source or destination IP or port
//!   (`None`, port 0), an SNI the caller could not tell ([`Sni::Unknown`]),
//!   a `when` key this mesh does not know, and at L4
//!   ([`evaluate_tcp`]) every HTTP-only field (hosts, methods, paths, their
//!   not-variants, `request.headers`). As Istio does for TCP, such a field
//!   never matches in an ALLOW rule and always matches in a DENY rule.
//!
//! ```
//! use std::path::Path;
//! use mesh_core::authz::{AuthzRequest, Sni, evaluate};
//!
//! let yaml = r#"
//! apiVersion: networking.istio.io/v1
//! kind: WorkloadEntry
//! metadata: {name: db}
//! spec: {address: 10.0.0.9, labels: {app: db}, serviceAccount: db}
//! ---
//! apiVersion: security.istio.io/v1
//! kind: AuthorizationPolicy
//! metadata: {name: no-admin}
//! spec:
//!   action: DENY
//!   rules: [{to: [{operation: {paths: ["/admin*"]}}]}]
//! "#;
//! let snap = mesh_core::snapshot::compile(&mesh_core::load::load_str(Path::new("p.yaml"), yaml)?)?;
//! let (_, db) = snap.workload("db").expect("defined above");
//! let req = AuthzRequest {
//!     peer: None,
//!     source_ip: Some([10, 0, 0, 1].into()),
//!     remote_ip: Some([10, 0, 0, 1].into()),
//!     destination_ip: None,
//!     destination_port: 8080,
//!     host: "db",
//!     host_aliases: &[],
//!     method: "GET",
//!     path: "/public/..%2F%61dmin",
//!     headers: None,
//!     auth: None,
//!     sni: Sni::Absent,
//! };
//! let decision = evaluate(snap.workload_policies(db), &req);
//! assert!(!decision.allowed);
//! assert_eq!(decision.reason, "denied by AuthorizationPolicy default/no-admin rule 0");
//! # Ok::<(), mesh_core::error::ConfigErrors>(())
//! ```

use std::borrow::{Borrow, Cow};
use std::net::IpAddr;
use std::sync::Arc;

use serde::Serialize;

use crate::identity::{SpiffeId, TrustDomain};
use crate::jwt::RequestAuth;
use crate::normalize::{decode_once, merge_segments, normalize_path, strip_params};
use crate::resources::ResourceRef;
use crate::resources::common::Labels;
use crate::resources::security::{AuthzAction, Condition, Operation, Rule, Source};

pub use crate::net::IpBlock;

/// A compiled AuthorizationPolicy.
#[derive(Debug, Clone, Serialize)]
pub struct AuthzPolicy {
    /// Where it came from (shared: a decision names it without a copy).
    pub source: Arc<ResourceRef>,
    /// Lives in the root namespace, so it applies in every namespace (to
    /// the workloads its selector picks, or to all).
    pub root_namespace: bool,
    /// Labels selecting workloads in the policy's namespace; `None`: all.
    pub selector: Option<Labels>,
    /// ALLOW, DENY, AUDIT or CUSTOM.
    pub action: AuthzAction,
    /// CUSTOM: the extension provider named. No MeshConfig of this mesh
    /// defines one, and where Istio's CUSTOM builder cannot resolve the
    /// providers of a workload (`pilot/pkg/security/authz/builder`,
    /// `getExtAuthz`: undefined, or more than one) it installs
    /// `rbacDefaultDenyAll` ("default-deny-all-due-to-bad-CUSTOM-action")
    /// on the HTTP and the TCP filter chain alike: every request and
    /// connection of a workload a CUSTOM policy applies to is denied.
    pub provider: Option<String>,
    /// Rules (OR); empty matches nothing.
    pub rules: Vec<Rule>,
    /// Annotated `istio.io/dry-run: "true"`: evaluated for
    /// [`AuthzDecision::shadow`], never enforced.
    pub dry_run: bool,
    /// The mesh's trust domain when the policy was compiled: the one whose
    /// identities an ALLOW rule's `serviceAccounts` name (see the module
    /// docs).
    pub trust_domain: TrustDomain,
}

impl AuthzPolicy {
    /// Does the policy apply to a workload of `namespace` with `labels`?
    pub fn applies_to(&self, namespace: &str, labels: &Labels) -> bool {
        (self.root_namespace || self.source.namespace == namespace)
            && self
                .selector
                .as_ref()
                .is_none_or(|s| crate::resources::common::labels_match(s, labels))
    }

    fn matching_rule(&self, view: &View<'_>) -> Option<usize> {
        let bias = Bias::of(self.action);
        let scope = Scope {
            namespace: &self.source.namespace,
            trust_domain: &self.trust_domain,
        };
        self.rules
            .iter()
            .position(|r| rule_matches(r, view, bias, &scope))
    }
}

/// Every value of a request header, for `request.headers[NAME]` conditions.
pub trait HeaderValues {
    /// The values of the header `name` (ASCII case-insensitive), one per
    /// field line, in the order received; empty when absent. Values that
    /// are not UTF-8 are passed lossily rather than dropped, so a DENY rule
    /// on the header still sees that it is present.
    fn header_values(&self, name: &str) -> Vec<Cow<'_, str>>;
}

impl HeaderValues for Vec<(String, String)> {
    fn header_values(&self, name: &str) -> Vec<Cow<'_, str>> {
        self.iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| Cow::Borrowed(v.as_str()))
            .collect()
    }
}

/// What authorization looks at for an HTTP request.
#[derive(Clone, Copy)]
pub struct AuthzRequest<'a> {
    /// The verified peer identity; `None` for plaintext.
    pub peer: Option<&'a SpiffeId>,
    /// The peer's address; `None` when unknown (see the module docs).
    pub source_ip: Option<IpAddr>,
    /// The original client's address, what `remoteIpBlocks` and
    /// `remote.ip` match: at the gateway its peer (the gateway replaces
    /// X-Forwarded-For with it); at a workload, the last X-Forwarded-For
    /// entry of a request from an authenticated mesh peer (the hop that
    /// wrote it is a mesh proxy), else the peer. `None` when unknown (an
    /// unreadable entry): ALLOW rules on it never match, DENY rules do.
    pub remote_ip: Option<IpAddr>,
    /// The address the request arrived at; `None` when unknown.
    pub destination_ip: Option<IpAddr>,
    /// The workload port the request arrived at; 0 when unknown.
    pub destination_port: u16,
    /// Host header or `:authority`, best in its canonical form
    /// ([`crate::snapshot::Snapshot::canonical_host`]): the policies' host
    /// patterns are compiled to that form.
    pub host: &'a str,
    /// Other names the request's host may stand for (the services behind
    /// the local workload when the host is its IP address): more readings,
    /// so a DENY rule matches if any of them matches and an ALLOW rule only
    /// if all do.
    pub host_aliases: &'a [String],
    /// Method.
    pub method: &'a str,
    /// The request path; a query is cut off. [`evaluate`] normalises it
    /// with [`normalize_path`] (and denies a path that cannot be), so a
    /// caller that forwards the request must forward that normalised path.
    pub path: &'a str,
    /// Request headers; `None` reads as no headers at all.
    pub headers: Option<&'a dyn HeaderValues>,
    /// The identity of the request's validated JWT
    /// ([`crate::jwt::authenticate`]); `None`: no token (a request whose
    /// token failed never reaches authorization).
    pub auth: Option<&'a RequestAuth>,
    /// The SNI of the connection the request came on, for
    /// `connection.sni`.
    pub sni: Sni<'a>,
}

/// The server name a client sent in the TLS ClientHello of its
/// connection, what `connection.sni` matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sni<'a> {
    /// The caller cannot tell (the server recorded no TLS facts): as any
    /// unknown fact, `connection.sni` never matches in ALLOW rules and
    /// always does in DENY ones.
    #[default]
    Unknown,
    /// None was sent: a plaintext connection, or a ClientHello without the
    /// extension (an IP address as the server name).
    Absent,
    /// The name sent (not empty).
    Name(&'a str),
}

impl<'a> Sni<'a> {
    /// `Name` for a non-empty name, else `Absent`: what a TLS server knows
    /// of its connection.
    pub fn of(name: Option<&'a str>) -> Self {
        match name {
            Some(n) if !n.is_empty() => Self::Name(n),
            _ => Self::Absent,
        }
    }
}

impl std::fmt::Debug for AuthzRequest<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthzRequest")
            .field("peer", &self.peer)
            .field("source_ip", &self.source_ip)
            .field("host", &self.host)
            .field("method", &self.method)
            .field("path", &self.path)
            .field("port", &self.destination_port)
            .field("sni", &self.sni)
            .finish_non_exhaustive()
    }
}

/// What authorization looks at for a TCP connection (no HTTP).
#[derive(Debug, Clone, Copy)]
pub struct ConnectionInfo<'a> {
    /// The verified peer identity; `None` for plaintext.
    pub peer: Option<&'a SpiffeId>,
    /// The peer's address; `None` when unknown.
    pub source_ip: Option<IpAddr>,
    /// The address the connection arrived at; `None` when unknown.
    pub destination_ip: Option<IpAddr>,
    /// The workload port the connection arrived at; 0 when unknown.
    pub destination_port: u16,
    /// The SNI of its TLS handshake, for `connection.sni`.
    pub sni: Sni<'a>,
}

/// The outcome, naming the policy and rule that decided it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuthzDecision {
    /// Let the request through?
    pub allowed: bool,
    /// The deciding policy, if any.
    pub policy: Option<Arc<ResourceRef>>,
    /// The deciding rule's index within the policy.
    pub rule: Option<usize>,
    /// Why, in words fit for a response header.
    pub reason: Reason,
    /// The first AUDIT policy that matched: log the request as audited.
    pub audited_by: Option<Arc<ResourceRef>>,
    /// What the dry-run policies would have decided on their own; `None`
    /// when no dry-run ALLOW or DENY policy applies. It never changes
    /// `allowed`.
    pub shadow: Option<ShadowDecision>,
}

/// Why a request was decided so: `denied by AuthorizationPolicy ns/x rule
/// 0`, `no ALLOW policy matched`... Put in words only when shown (a
/// response's body, a log line): an allowed request's reason is decided
/// on every request and read on few.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reason(Why);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Why {
    Denied(Arc<ResourceRef>, usize),
    /// A CUSTOM policy (its provider named) cannot be resolved.
    CustomUnresolved(Arc<ResourceRef>, String),
    Allowed(Arc<ResourceRef>, usize),
    NoAllowMatched,
    NoAllowApplies,
    Other(String),
}

impl Reason {
    /// A reason given in words (a request refused before any policy was
    /// read).
    pub fn other(words: impl Into<String>) -> Self {
        Self(Why::Other(words.into()))
    }

    fn of(outcome: &Outcome<'_>) -> Self {
        Self(match *outcome {
            Outcome::CustomUnresolved(p) => {
                Why::CustomUnresolved(p.source.clone(), p.provider.clone().unwrap_or_default())
            }
            Outcome::Denied(p, rule) => Why::Denied(p.source.clone(), rule),
            Outcome::Allowed(p, rule) => Why::Allowed(p.source.clone(), rule),
            Outcome::NoAllowMatched => Why::NoAllowMatched,
            Outcome::NoAllowApplies => Why::NoAllowApplies,
        })
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Why::Denied(p, rule) => write!(f, "denied by {p} rule {rule}"),
            Why::CustomUnresolved(p, provider) => write!(
                f,
                "denied by {p}: its CUSTOM provider `{provider}` is not defined as an external authorizer this mesh can call (MeshConfig extensionProviders; envoyExtAuthzHttp and envoyExtAuthzGrpc are not implemented yet), so every request is denied"
            ),
            Why::Allowed(p, rule) => write!(f, "allowed by {p} rule {rule}"),
            Why::NoAllowMatched => f.write_str("no ALLOW policy matched"),
            Why::NoAllowApplies => f.write_str("no ALLOW policy applies"),
            Why::Other(words) => f.write_str(words),
        }
    }
}

impl Serialize for Reason {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl PartialEq<str> for Reason {
    /// Compares the words as they are written out, without building them.
    fn eq(&self, other: &str) -> bool {
        struct Rest<'a>(&'a str);
        impl std::fmt::Write for Rest<'_> {
            fn write_str(&mut self, s: &str) -> std::fmt::Result {
                let rest = self.0.strip_prefix(s).ok_or(std::fmt::Error)?;
                self.0 = rest;
                Ok(())
            }
        }
        let mut rest = Rest(other);
        std::fmt::Write::write_fmt(&mut rest, format_args!("{self}")).is_ok() && rest.0.is_empty()
    }
}

impl PartialEq<&str> for Reason {
    fn eq(&self, other: &&str) -> bool {
        *self == **other
    }
}

/// The verdict of the dry-run policies alone, by the same DENY-then-ALLOW
/// rules as the enforced one, as Envoy's shadow RBAC engine reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShadowDecision {
    /// Would the dry-run policies let the request through?
    pub allowed: bool,
    /// The dry-run policy that would decide, if one matched.
    pub policy: Option<Arc<ResourceRef>>,
    /// Its rule's index.
    pub rule: Option<usize>,
    /// In words, for the log: `dry-run AuthorizationPolicy ns/x rule 0
    /// would deny`.
    pub reason: String,
}

/// Decides an HTTP request against the policies that apply to the workload.
pub fn evaluate<'p>(
    policies: impl IntoIterator<Item = &'p AuthzPolicy> + Clone,
    req: &AuthzRequest<'_>,
) -> AuthzDecision {
    let path = match normalize_path(req.path) {
        Ok(p) => p,
        Err(e) => {
            return AuthzDecision {
                allowed: false,
                policy: None,
                rule: None,
                reason: Reason::other(format!("the path cannot be normalised: {e}")),
                audited_by: None,
                shadow: None,
            };
        }
    };
    let paths = path_readings(&path);
    let view = View {
        peer: req.peer,
        source_ip: req.source_ip,
        remote_ip: req.remote_ip,
        destination_ip: req.destination_ip,
        destination_port: req.destination_port,
        sni: req.sni,
        http: Some(HttpView {
            host: req.host,
            host_aliases: req.host_aliases,
            method: req.method,
            paths,
            headers: req.headers,
            auth: req.auth,
        }),
    };
    decide(policies, &view)
}

/// Decides a TCP connection (the L4 proxy's check): HTTP-only fields never
/// match in ALLOW rules and always match in DENY rules, as Istio does for
/// TCP, so `DENY paths: [/admin]` denies every connection it otherwise
/// matches and `ALLOW methods: [GET]` allows none.
pub fn evaluate_tcp<'p>(
    policies: impl IntoIterator<Item = &'p AuthzPolicy> + Clone,
    conn: &ConnectionInfo<'_>,
) -> AuthzDecision {
    let view = View {
        peer: conn.peer,
        source_ip: conn.source_ip,
        // No X-Forwarded-For at L4: the client is the peer, as Istio
        // reads `remote.ip` for TCP.
        remote_ip: conn.source_ip,
        destination_ip: conn.destination_ip,
        destination_port: conn.destination_port,
        sni: conn.sni,
        http: None,
    };
    decide(policies, &view)
}

fn decide<'p>(
    policies: impl IntoIterator<Item = &'p AuthzPolicy> + Clone,
    view: &View<'_>,
) -> AuthzDecision {
    let audited_by = policies
        .clone()
        .into_iter()
        .filter(|p| !p.dry_run && p.action == AuthzAction::Audit)
        .find(|p| p.matching_rule(view).is_some())
        .map(|p| p.source.clone());
    let shadow = policies
        .clone()
        .into_iter()
        .any(|p| p.dry_run && p.action != AuthzAction::Audit)
        .then(|| shadow_decision(outcome(policies.clone(), true, view)));
    let enforced = outcome(policies, false, view);
    let reason = Reason::of(&enforced);
    let (allowed, by) = enforced.verdict();
    let custom = match enforced {
        Outcome::CustomUnresolved(p) => Some(p.source.clone()),
        _ => None,
    };
    AuthzDecision {
        allowed,
        policy: by.map(|(p, _)| p.source.clone()).or(custom),
        rule: by.map(|(_, rule)| rule),
        reason,
        audited_by,
        shadow,
    }
}

/// How a set of policies decides, before it is put in words.
enum Outcome<'p> {
    /// A CUSTOM policy applies whose provider is not defined: everything
    /// is denied.
    CustomUnresolved(&'p AuthzPolicy),
    /// A DENY policy's rule matched.
    Denied(&'p AuthzPolicy, usize),
    /// No DENY matched, and an ALLOW policy's rule did.
    Allowed(&'p AuthzPolicy, usize),
    /// There are ALLOW policies and none matched.
    NoAllowMatched,
    /// Nothing matched and there is no ALLOW policy.
    NoAllowApplies,
}

impl<'p> Outcome<'p> {
    /// Allowed or not, and the policy and rule that decided, if one did.
    fn verdict(&self) -> (bool, Option<(&'p AuthzPolicy, usize)>) {
        match *self {
            Self::Denied(p, rule) => (false, Some((p, rule))),
            Self::CustomUnresolved(_) => (false, None),
            Self::Allowed(p, rule) => (true, Some((p, rule))),
            Self::NoAllowMatched => (false, None),
            Self::NoAllowApplies => (true, None),
        }
    }
}

/// Istio's order: CUSTOM policies first, then DENY, then ALLOW; with any
/// ALLOW policy, what none matches is denied. Only the policies whose `dry_run` is
/// `dry_run` take part, and no AUDIT policy does.
fn outcome<'p>(
    policies: impl IntoIterator<Item = &'p AuthzPolicy> + Clone,
    dry_run: bool,
    view: &View<'_>,
) -> Outcome<'p> {
    // CUSTOM first. No provider is ever defined here (see
    // `AuthzPolicy::provider`), and Istio then denies every request and
    // connection of the workload, dry-run or not (the CUSTOM builder's
    // `rbacDefaultDenyAll`, enforced rules): the enforcing pass says so.
    if !dry_run
        && let Some(p) = policies
            .clone()
            .into_iter()
            .find(|p| p.action == AuthzAction::Custom)
    {
        return Outcome::CustomUnresolved(p);
    }
    let deny = policies
        .clone()
        .into_iter()
        .filter(|p| p.dry_run == dry_run && p.action == AuthzAction::Deny);
    for p in deny {
        if let Some(rule) = p.matching_rule(view) {
            return Outcome::Denied(p, rule);
        }
    }
    let mut any_allow = false;
    let allow = policies
        .into_iter()
        .filter(|p| p.dry_run == dry_run && p.action == AuthzAction::Allow);
    for p in allow {
        any_allow = true;
        if let Some(rule) = p.matching_rule(view) {
            return Outcome::Allowed(p, rule);
        }
    }
    if any_allow {
        Outcome::NoAllowMatched
    } else {
        Outcome::NoAllowApplies
    }
}

fn shadow_decision(outcome: Outcome<'_>) -> ShadowDecision {
    let reason = match outcome {
        Outcome::Denied(p, rule) => format!("dry-run {} rule {rule} would deny", p.source),
        // Only the enforcing pass reads CUSTOM policies.
        Outcome::CustomUnresolved(p) => format!("{} would deny everything", p.source),
        Outcome::Allowed(p, rule) => format!("dry-run {} rule {rule} would allow", p.source),
        Outcome::NoAllowMatched => {
            "dry-run policies would deny: no ALLOW policy matched".to_owned()
        }
        Outcome::NoAllowApplies => "dry-run policies would allow: none matched".to_owned(),
    };
    let (allowed, by) = outcome.verdict();
    ShadowDecision {
        allowed,
        policy: by.map(|(p, _)| p.source.clone()),
        rule: by.map(|(_, rule)| rule),
        reason,
    }
}

/// How a rule treats doubt: DENY and AUDIT rules match when any reading
/// matches, ALLOW rules only when every reading does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bias {
    Deny,
    Allow,
}

impl Bias {
    fn of(action: AuthzAction) -> Self {
        match action {
            AuthzAction::Allow => Self::Allow,
            AuthzAction::Deny | AuthzAction::Audit | AuthzAction::Custom => Self::Deny,
        }
    }
}

struct View<'r> {
    peer: Option<&'r SpiffeId>,
    source_ip: Option<IpAddr>,
    remote_ip: Option<IpAddr>,
    destination_ip: Option<IpAddr>,
    destination_port: u16,
    sni: Sni<'r>,
    /// `None` at L4.
    http: Option<HttpView<'r>>,
}

/// What a rule is read against besides the request: its policy's
/// namespace (a bare service account's) and the mesh's trust domain.
struct Scope<'p> {
    namespace: &'p str,
    trust_domain: &'p TrustDomain,
}

impl Scope<'_> {
    /// A `serviceAccounts` value as namespace and name.
    fn service_account<'v>(&'v self, value: &'v str) -> (&'v str, &'v str) {
        value.split_once('/').unwrap_or((self.namespace, value))
    }
}

struct HttpView<'r> {
    host: &'r str,
    host_aliases: &'r [String],
    method: &'r str,
    /// The readings of the normalised path, decoded once.
    paths: Vec<String>,
    headers: Option<&'r dyn HeaderValues>,
    auth: Option<&'r RequestAuth>,
}

/// An attribute of the request as a rule field sees it.
enum Attr<T> {
    /// Its readings (at least one).
    Known(Vec<T>),
    /// The request has none (no identity, no such header).
    Absent,
    /// Cannot be known (HTTP fields at L4, an unknown IP or port).
    Unknown,
}

impl<T> Attr<T> {
    fn of(v: Option<T>) -> Self {
        v.map_or(Self::Absent, |v| Self::Known(vec![v]))
    }

    fn unknown_if_none(v: Option<T>) -> Self {
        v.map_or(Self::Unknown, |v| Self::Known(vec![v]))
    }
}

/// One field and its not-variant against an attribute. `m(pattern, value,
/// case_insensitive)`; with `fold`, each value is also read ignoring case.
fn field<T: Borrow<U>, U: ?Sized>(
    values: &[String],
    not_values: &[String],
    attr: &Attr<T>,
    bias: Bias,
    fold: bool,
    m: impl Fn(&str, &U, bool) -> bool,
) -> bool {
    if values.is_empty() && not_values.is_empty() {
        return true;
    }
    let items = match attr {
        Attr::Unknown => return bias == Bias::Deny,
        Attr::Absent => return values.is_empty(),
        Attr::Known(items) => items,
    };
    let modes: &[bool] = if fold { &[false, true] } else { &[false] };
    let readings = || {
        items
            .iter()
            .flat_map(move |v| modes.iter().map(move |ci| (v, *ci)))
    };
    let pos = |(v, ci): (&T, bool)| values.iter().any(|p| m(p, v.borrow(), ci));
    let neg = |(v, ci): (&T, bool)| !not_values.iter().any(|p| m(p, v.borrow(), ci));
    match bias {
        Bias::Deny => {
            (values.is_empty() || readings().any(pos))
                && (not_values.is_empty() || readings().any(neg))
        }
        Bias::Allow => {
            (values.is_empty() || readings().all(pos))
                && (not_values.is_empty() || readings().all(neg))
        }
    }
}

fn rule_matches(rule: &Rule, v: &View<'_>, bias: Bias, scope: &Scope<'_>) -> bool {
    (rule.from.is_empty()
        || rule
            .from
            .iter()
            .any(|f| source_matches(&f.source, v, bias, scope)))
        && (rule.to.is_empty()
            || rule
                .to
                .iter()
                .any(|t| operation_matches(&t.operation, v, bias)))
        && rule.when.iter().all(|c| condition_holds(c, v, bias))
}

/// Matches Istio's string values: exact, `*`, `*suffix`, `prefix*` (a
/// leading `*` is read first, as Istio does).
pub fn wildcard_match(pattern: &str, value: &str) -> bool {
    wildcard(pattern, value, false)
}

fn wildcard(pattern: &str, value: &str, ci: bool) -> bool {
    let eq = |a: &[u8], b: &[u8]| {
        if ci {
            a.eq_ignore_ascii_case(b)
        } else {
            a == b
        }
    };
    let (p, v) = (pattern.as_bytes(), value.as_bytes());
    if pattern == "*" {
        true
    } else if let Some(suffix) = p.strip_prefix(b"*") {
        v.len() >= suffix.len() && eq(&v[v.len() - suffix.len()..], suffix)
    } else if let Some(prefix) = p.strip_suffix(b"*") {
        v.len() >= prefix.len() && eq(&v[..prefix.len()], prefix)
    } else {
        eq(p, v)
    }
}

fn ip_match(block: &str, ip: &IpAddr, _ci: bool) -> bool {
    IpBlock::parse(block).is_some_and(|b| b.contains(*ip))
}

fn exact(pattern: &str, value: &str, _ci: bool) -> bool {
    pattern == value
}

fn str_match(pattern: &str, value: &str, ci: bool) -> bool {
    wildcard(pattern, value, ci)
}

fn path_match(pattern: &str, value: &str, ci: bool) -> bool {
    let pattern = decode_once(pattern);
    if pattern.contains('{') {
        template_match(&pattern, value, ci)
    } else {
        wildcard(&pattern, value, ci)
    }
}

/// Checks a path template as Istio takes them (`/api/{*}/items`,
/// `/static/{**}`, `/{**}/index.html`): each segment a literal, `{*}` or
/// `{**}`, and no operator after a `{**}` (Istio's
/// `pkg/config/security.CheckValidPathTemplate`; Envoy's uri_template
/// refuses a glob after a text glob, literals after it are fine).
pub fn path_template(pattern: &str) -> Result<(), String> {
    let Some(rest) = pattern.strip_prefix('/') else {
        return Err("a path template starts with /".to_owned());
    };
    let mut seen_any = false;
    for seg in rest.split('/') {
        match seg {
            "{*}" | "{**}" if seen_any => {
                return Err("{**} must be the last operator of the template".to_owned());
            }
            "{*}" => {}
            "{**}" => seen_any = true,
            s if s.contains(['{', '}', '*']) => {
                return Err(format!(
                    "segment `{s}`: a segment is a literal, {{*}} or {{**}}"
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

/// The characters Envoy's uri_template lets a literal and an operator match
/// (RFC 3986 pchar less `*`; `source/extensions/path/uri_template_lib`).
fn template_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~%!$&'()+,;:@=".contains(&b)
}

/// Matches a path (normalised, its query left out) against a template
/// [`path_template`] accepted, as Envoy's uri_template matcher Istio
/// translates it to does (`{*}` becomes `*`, `{**}` becomes `**`):
/// literals equal (ignoring ASCII case for `ci`), `{*}` one non-empty
/// segment (`[pchar]+`), `{**}` any run of characters and slashes,
/// possibly empty (`[pchar/]*`): `/{**}/a` matches `/x/y/a` and `//a` but
/// not `/a`; `/a/{**}` matches `/a/` and `/a/x/y` but not `/a`.
fn template_match(pattern: &str, path: &str, ci: bool) -> bool {
    // One segment of the template against one of the path.
    let segment = |seg: &str, v: &str| {
        if seg == "{*}" {
            !v.is_empty() && v.bytes().all(template_char)
        } else if ci {
            seg.eq_ignore_ascii_case(v)
        } else {
            seg == v
        }
    };
    // The part before `{**}` matched segment by segment; the part after it
    // (literals only) matched at the end of the path.
    let (head, tail) = match pattern.split_once("{**}") {
        Some((head, tail)) => (head, Some(tail)),
        None => (pattern, None),
    };
    let (Some(head), Some(mut rest)) = (head.strip_prefix('/'), path.strip_prefix('/')) else {
        return false;
    };
    if tail.is_none() {
        let mut values = rest.split('/');
        for seg in head.split('/') {
            let Some(v) = values.next() else {
                return false;
            };
            if !segment(seg, v) {
                return false;
            }
        }
        return values.next().is_none();
    }
    // `head` ends with '/' (or is empty): each of its segments is followed
    // by a slash in the path.
    let mut segs: Vec<&str> = head.split('/').collect();
    segs.pop();
    for seg in segs {
        let Some((v, after)) = rest.split_once('/') else {
            return false;
        };
        if !segment(seg, v) {
            return false;
        }
        rest = after;
    }
    let tail = tail.unwrap_or_default();
    if rest.len() < tail.len() || !rest.is_char_boundary(rest.len() - tail.len()) {
        return false;
    }
    let (any, end) = rest.split_at(rest.len() - tail.len());
    segment(tail, end) && any.bytes().all(|b| b == b'/' || template_char(b))
}

/// `host[:port]` as the name (without a trailing dot) and the port.
fn split_host(host: &str) -> (&str, Option<&str>) {
    let (name, port) = if host.starts_with('[') {
        match host.find(']') {
            Some(i) => (&host[..=i], host[i + 1..].strip_prefix(':')),
            None => (host, None),
        }
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => (name, Some(port)),
            _ => (host, None),
        }
    };
    (name.strip_suffix('.').unwrap_or(name), port)
}

/// Case-insensitive; a pattern without a port matches any port.
fn host_match(pattern: &str, host: &str, _ci: bool) -> bool {
    let (pn, pp) = split_host(pattern);
    let (hn, hp) = split_host(host);
    wildcard(pn, hn, true) && (pp.is_none() || pp == hp)
}

fn principal(v: &View<'_>) -> Attr<String> {
    Attr::of(v.peer.map(SpiffeId::principal))
}

fn namespace(v: &View<'_>) -> Attr<String> {
    Attr::of(v.peer.and_then(SpiffeId::namespace).map(str::to_owned))
}

/// The trust domain of the verified peer.
fn trust_domain<'v>(v: &View<'v>) -> Attr<&'v str> {
    Attr::of(v.peer.map(|p| p.trust_domain().as_str()))
}

/// The connection's SNI.
fn sni<'v>(v: &View<'v>) -> Attr<&'v str> {
    match v.sni {
        Sni::Unknown => Attr::Unknown,
        Sni::Absent => Attr::Absent,
        Sni::Name(n) => Attr::Known(vec![n]),
    }
}

/// A DNS name (an SNI) against a pattern: ASCII case never matters.
fn dns_match(pattern: &str, value: &str, _ci: bool) -> bool {
    wildcard(pattern, value, true)
}

/// `serviceAccounts` and `notServiceAccounts`, read as the module docs
/// say: the narrow reading (the mesh's own identity of that service
/// account, exactly) where a match lets a request through, the broad one
/// (Istio's: any trust domain, other segments allowed) where a match
/// refuses it. Without a verified peer, as `principals`: values never
/// match, not-values always do.
fn service_accounts(
    values: &[String],
    not_values: &[String],
    peer: Option<&SpiffeId>,
    scope: &Scope<'_>,
    bias: Bias,
) -> bool {
    if values.is_empty() && not_values.is_empty() {
        return true;
    }
    let Some(peer) = peer else {
        return values.is_empty();
    };
    let narrow = |v: &String| {
        let (ns, sa) = scope.service_account(v);
        peer.trust_domain() == scope.trust_domain
            && peer.namespace() == Some(ns)
            && peer.service_account() == Some(sa)
    };
    let broad = |v: &String| {
        let (ns, sa) = scope.service_account(v);
        istio_service_account(peer.path(), ns, sa)
    };
    let allow = bias == Bias::Allow;
    let pos = |v: &String| if allow { narrow(v) } else { broad(v) };
    let neg = |v: &String| if allow { broad(v) } else { narrow(v) };
    (values.is_empty() || values.iter().any(pos)) && !not_values.iter().any(neg)
}

/// Istio's service account match on a SPIFFE ID's path, its regex
/// `spiffe://.+/ns/<ns>/(.+/|)sa/<sa>(/.+)?` read by segments: some `ns`
/// segment followed by `<ns>`, and after them some `sa` segment followed
/// by `<sa>`.
fn istio_service_account(path: &str, ns: &str, sa: &str) -> bool {
    let segs: Vec<&str> = path.split('/').skip(1).collect();
    let pair = |i: usize, key: &str, value: &str| {
        segs.get(i) == Some(&key) && segs.get(i + 1) == Some(&value)
    };
    (0..segs.len()).any(|i| pair(i, "ns", ns) && (i + 2..segs.len()).any(|j| pair(j, "sa", sa)))
}

fn port(v: &View<'_>) -> Attr<String> {
    Attr::unknown_if_none((v.destination_port != 0).then(|| v.destination_port.to_string()))
}

fn source_matches(s: &Source, v: &View<'_>, bias: Bias, scope: &Scope<'_>) -> bool {
    service_accounts(
        &s.service_accounts,
        &s.not_service_accounts,
        v.peer,
        scope,
        bias,
    ) && field(
        &s.trust_domains,
        &s.not_trust_domains,
        &trust_domain(v),
        bias,
        true,
        str_match,
    ) && field(
        &s.principals,
        &s.not_principals,
        &principal(v),
        bias,
        false,
        str_match,
    ) && field(
        &s.namespaces,
        &s.not_namespaces,
        &namespace(v),
        bias,
        false,
        str_match,
    ) && field(
        &s.ip_blocks,
        &s.not_ip_blocks,
        &Attr::unknown_if_none(v.source_ip),
        bias,
        false,
        ip_match,
    ) && field(
        &s.remote_ip_blocks,
        &s.not_remote_ip_blocks,
        &Attr::unknown_if_none(v.remote_ip),
        bias,
        false,
        ip_match,
    ) && field(
        &s.request_principals,
        &s.not_request_principals,
        &request_principal(v),
        bias,
        false,
        str_match,
    )
}

/// The validated token's `<iss>/<sub>`: unknown at L4 (no request), absent
/// without a token.
fn request_principal(v: &View<'_>) -> Attr<String> {
    match &v.http {
        None => Attr::Unknown,
        Some(h) => Attr::of(h.auth.and_then(|a| a.principal.clone())),
    }
}

/// A JWT attribute that is a set of values (audiences, a list claim): the
/// token is verified, so its values are not readings to doubt but members;
/// `values` match if any member matches, `notValues` if none does. Unknown
/// at L4, absent without a token or without the claim.
fn auth_set(
    values: &[String],
    not_values: &[String],
    set: Option<Vec<String>>,
    bias: Bias,
) -> bool {
    if values.is_empty() && not_values.is_empty() {
        return true;
    }
    let Some(set) = set else {
        return bias == Bias::Deny;
    };
    if set.is_empty() {
        return values.is_empty();
    }
    let any = |patterns: &[String]| {
        set.iter()
            .any(|v| patterns.iter().any(|p| wildcard(p, v, false)))
    };
    (values.is_empty() || any(values)) && (not_values.is_empty() || !any(not_values))
}

fn operation_matches(o: &Operation, v: &View<'_>, bias: Bias) -> bool {
    let (host, method, path) = match &v.http {
        Some(h) => (
            Attr::Known(
                std::iter::once(h.host)
                    .chain(h.host_aliases.iter().map(String::as_str))
                    .collect(),
            ),
            Attr::Known(vec![h.method]),
            Attr::Known(h.paths.iter().map(String::as_str).collect()),
        ),
        None => (Attr::Unknown, Attr::Unknown, Attr::Unknown),
    };
    field(&o.hosts, &o.not_hosts, &host, bias, false, host_match)
        && field(&o.ports, &o.not_ports, &port(v), bias, false, exact)
        && field(&o.methods, &o.not_methods, &method, bias, true, str_match)
        && field(&o.paths, &o.not_paths, &path, bias, true, path_match)
}

fn condition_holds(c: &Condition, v: &View<'_>, bias: Bias) -> bool {
    let (vals, nots) = (&c.values, &c.not_values);
    match c.key.as_str() {
        "source.ip" => field(
            vals,
            nots,
            &Attr::unknown_if_none(v.source_ip),
            bias,
            false,
            ip_match,
        ),
        "remote.ip" => field(
            vals,
            nots,
            &Attr::unknown_if_none(v.remote_ip),
            bias,
            false,
            ip_match,
        ),
        "destination.ip" => field(
            vals,
            nots,
            &Attr::unknown_if_none(v.destination_ip),
            bias,
            false,
            ip_match,
        ),
        "destination.port" => field(vals, nots, &port(v), bias, false, exact),
        "source.principal" => field(vals, nots, &principal(v), bias, false, str_match),
        "source.namespace" => field(vals, nots, &namespace(v), bias, false, str_match),
        "source.trustDomain" => field(vals, nots, &trust_domain(v), bias, true, str_match),
        "connection.sni" => field(vals, nots, &sni(v), bias, false, dns_match),
        "request.auth.principal" => {
            field(vals, nots, &request_principal(v), bias, false, str_match)
        }
        "request.auth.presenter" => {
            let attr = match &v.http {
                None => Attr::Unknown,
                Some(h) => Attr::of(h.auth.and_then(|a| a.presenter.clone())),
            };
            field(vals, nots, &attr, bias, false, str_match)
        }
        "request.auth.audiences" => auth_set(
            vals,
            nots,
            v.http
                .as_ref()
                .map(|h| h.auth.map(|a| a.audiences.clone()).unwrap_or_default()),
            bias,
        ),
        key if key.starts_with("request.auth.claims") => {
            let path = crate::jwt::claim_path(&key["request.auth.claims".len()..]);
            match (path, &v.http) {
                (Some(path), Some(h)) => auth_set(
                    vals,
                    nots,
                    Some(h.auth.map(|a| a.claim(&path)).unwrap_or_default()),
                    bias,
                ),
                // At L4, or a key the loader should have refused.
                _ => bias == Bias::Deny,
            }
        }
        // Envoy dynamic metadata other filters set (Istio's
        // `experimental.envoy.filters.*` keys): no filter here sets any,
        // so, as Envoy's metadata matcher does on metadata that is not
        // there, `values` never match and `notValues` always do.
        key if key.starts_with("experimental.envoy.filters.") => {
            let attr: Attr<String> = Attr::Absent;
            field(vals, nots, &attr, bias, false, str_match)
        }
        key => {
            let attr = match (
                key.strip_prefix("request.headers[")
                    .and_then(|k| k.strip_suffix(']')),
                &v.http,
            ) {
                // Envoy's header matcher sees the `:method` pseudo-header.
                (Some(":method"), Some(http)) => Attr::Known(vec![http.method.to_owned()]),
                (Some(name), Some(http)) => header_attr(http.headers, name),
                // HTTP-only at L4; a key the loader should have refused.
                _ => Attr::Unknown,
            };
            field(vals, nots, &attr, bias, false, str_match)
        }
    }
}

fn header_attr(headers: Option<&dyn HeaderValues>, name: &str) -> Attr<String> {
    let values: Vec<String> = headers
        .map(|h| {
            h.header_values(name)
                .into_iter()
                .map(Cow::into_owned)
                .collect()
        })
        .unwrap_or_default();
    if values.is_empty() {
        return Attr::Absent;
    }
    Attr::Known(header_readings(values))
}

/// The readings of a header's values, each with its optional whitespace
/// trimmed, as a recipient reads it (RFC 9110 5.5: `" root"` is `root`):
/// each field line, all of them joined with `,` (what Envoy matches), and
/// each element of a comma-separated list (RFC 9110 5.6.1: `x-role: user,
/// root` is the list `user`, `root`).
fn header_readings(values: Vec<String>) -> Vec<String> {
    let mut readings = Vec::with_capacity(values.len() + 2);
    let mut push = |v: &str| {
        if !readings.iter().any(|r: &String| r == v) {
            readings.push(v.to_owned());
        }
    };
    let values: Vec<&str> = values.iter().map(|v| v.trim_matches(OWS)).collect();
    if values.len() > 1 {
        push(&values.join(","));
    }
    for v in &values {
        push(v);
        if v.contains(',') {
            for element in v.split(',') {
                push(element.trim_matches(OWS));
            }
        }
    }
    readings
}

/// Optional whitespace (RFC 9110 5.6.3).
const OWS: [char; 2] = [' ', '\t'];

/// The readings of a normalised path, as applications read it: decoded
/// once, and, when it carries `;` parameters, with every segment's
/// parameters cut off and the result merged again (`/;x/admin` → `//admin`
/// → `/admin`), to a fixed point, as Tomcat and Spring route on it.
fn path_readings(path: &str) -> Vec<String> {
    let decoded = decode_once(path).into_owned();
    let mut readings = vec![decoded];
    // Each round removes at least one `;`, so this ends; the bound is a
    // belt on top of that.
    for _ in 0..path.len() {
        let Some(last) = readings.last().filter(|r| r.contains(';')) else {
            break;
        };
        let next = merge_segments(&strip_params(last));
        if readings.contains(&next) {
            break;
        }
        readings.push(next);
    }
    readings
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_blocks() {
        let b = IpBlock::parse("10.1.0.0/16").unwrap();
        assert!(b.contains("10.1.2.3".parse().unwrap()));
        assert!(!b.contains("10.2.0.1".parse().unwrap()));
        assert!(b.contains("::ffff:10.1.0.9".parse().unwrap()));
        assert!(
            IpBlock::parse("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
        assert!(IpBlock::parse("10.0.0.0/33").is_none());
        assert!(IpBlock::parse("nope").is_none());
        let one = IpBlock::parse("127.0.0.1").unwrap();
        assert!(one.contains("127.0.0.1".parse().unwrap()));
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
    }

    #[test]
    fn wildcards() {
        assert!(wildcard_match("*", "x"));
        assert!(wildcard_match("/admin/*", "/admin/x"));
        assert!(!wildcard_match("/admin/*", "/adminx"));
        assert!(wildcard_match("*.php", "/index.php"));
        assert!(!wildcard_match("/a", "/a/"));
    }
}
