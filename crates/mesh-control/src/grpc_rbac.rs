//! AuthorizationPolicy as gRPC's RBAC (gRFC A41) for proxyless gRPC
//! servers: the policies that apply to a workload become the HTTP RBAC
//! filters of its server listener, as Istio translates them for Envoy: one
//! filter with the DENY policies, then one with the ALLOW policies (only
//! when there is an ALLOW policy; with one, a call no rule allows is
//! denied). AUDIT policies decide nothing, dry-run ones are never
//! enforced: neither is sent.
//!
//! gRPC's engine reads a call otherwise than ours in places, so what is
//! translated is only what means the same on a gRPC server, and the rest is
//! resolved against the caller, never for it:
//! - a piece of an ALLOW rule that cannot be translated drops the whole
//!   rule (it then allows nothing: narrower than the policy);
//! - a piece of a DENY rule that cannot be translated matches every call
//!   (the rule then denies more: broader than the policy).
//!
//! Each is said in a [`Warnings`](crate::grpc::Warnings) entry, which
//! `check` reports as MESH0114.
//!
//! Why paths are matched as sent, without our normalisation: a gRPC server
//! dispatches a call by its exact `:path` (`/package.Service/Method`), so the
//! path RBAC sees is the method that runs; a path spelt otherwise
//! (`//pkg.S/M`, `%2F`, another case) reaches no method. DENY paths are
//! matched in any case all the same.
//!
//! `serviceAccounts` and `trustDomains` (and `source.trustDomain`) become
//! matches on the URI SAN of the peer's certificate, as `principals` do,
//! each read as ours reads it on that side of the rule: a service account
//! that lets a call through is the mesh's own identity of it, exactly; one
//! that refuses it is Istio's regex, in any trust domain.
//!
//! Not translated: `requestPrincipals` and `request.auth.*` (proxyless gRPC
//! validates no JWT), `remoteIpBlocks` and `remote.ip` (ours read the
//! forwarded client address, gRPC only the peer), `hosts` (gRPC's RBAC
//! matches no authority), `connection.sni` (gRPC's RBAC reads
//! `requested_server_name` as the empty string whatever the client sent,
//! gRFC A41), path templates (`{*}`, `{**}`), and conditions on `grpc-` or
//! pseudo-headers (gRPC hides them from RBAC).

use envoy_types::pb::envoy::config::core::v3::CidrRange;
use envoy_types::pb::envoy::config::rbac::v3::permission::{Rule as PermissionRule, Set as Rules};
use envoy_types::pb::envoy::config::rbac::v3::principal::{
    Authenticated, Identifier as PrincipalId, Set as Ids,
};
use envoy_types::pb::envoy::config::rbac::v3::rbac::Action as RbacAction;
use envoy_types::pb::envoy::config::rbac::v3::{Permission, Policy as RbacPolicy, Principal, Rbac};
use envoy_types::pb::envoy::config::route::v3::HeaderMatcher;
use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as RbacFilter;
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::envoy::r#type::matcher::v3::{
    PathMatcher, RegexMatcher, StringMatcher, path_matcher,
};
use envoy_types::pb::google::protobuf::UInt32Value;
use mesh_core::authz::{AuthzPolicy, IpBlock};
use mesh_core::identity::TrustDomain;
use mesh_core::resources::security::{AuthzAction, Condition, Operation, Rule, Source};

/// Which way a piece that cannot be translated is resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bias {
    /// ALLOW: the rule is dropped.
    Allow,
    /// DENY: the piece matches everything.
    Deny,
}

/// A piece could not be translated: why.
type Untranslatable = String;

/// The RBAC filters for `policies` (those applying to the workload), in the
/// order they run; `warn` is told what was resolved against the caller.
pub(crate) fn filters<'p>(
    policies: impl Iterator<Item = &'p AuthzPolicy>,
    mut warn: impl FnMut(String),
) -> Vec<RbacFilter> {
    let policies: Vec<&AuthzPolicy> = policies.collect();
    // A CUSTOM policy: no provider is defined here, and Istio then denies
    // everything (`rbacDefaultDenyAll`, see `AuthzPolicy::provider`), as
    // the sidecar does.
    if let Some(p) = policies.iter().find(|p| p.action == AuthzAction::Custom) {
        warn(format!(
            "{}: CUSTOM provider `{}` is not defined: every call is denied",
            p.source,
            p.provider.as_deref().unwrap_or_default()
        ));
        let all = RbacPolicy {
            permissions: vec![any_rule()],
            principals: vec![any_id()],
            ..RbacPolicy::default()
        };
        return vec![filter(
            RbacAction::Deny,
            vec![("default-deny-all-due-to-bad-CUSTOM-action".to_owned(), all)],
        )];
    }
    let mut deny = Vec::new();
    let mut allow = Vec::new();
    let mut any_allow = false;
    for p in policies.into_iter().filter(|p| !p.dry_run) {
        let bias = match p.action {
            AuthzAction::Deny => Bias::Deny,
            AuthzAction::Allow => {
                any_allow = true;
                Bias::Allow
            }
            // Answered above.
            AuthzAction::Custom => continue,
            // AUDIT decides nothing.
            AuthzAction::Audit => continue,
        };
        for (i, rule) in p.rules.iter().enumerate() {
            let name = format!("{}[{i}]", p.source);
            let mut why = Vec::new();
            let scope = Scope {
                namespace: &p.source.namespace,
                trust_domain: &p.trust_domain,
            };
            let translated = translate_rule(rule, bias, &scope, &mut why);
            for w in &why {
                warn(match bias {
                    Bias::Allow => format!(
                        "{name}: {w}: on gRPC servers what holds it allows nothing (that source or operation, or the whole rule)"
                    ),
                    Bias::Deny => format!(
                        "{name}: {w}: that part matches every call on gRPC servers (denies more)"
                    ),
                });
            }
            match (translated, bias) {
                (Some(policy), Bias::Deny) => deny.push((name, policy)),
                (Some(policy), Bias::Allow) => allow.push((name, policy)),
                (None, _) => {}
            }
        }
    }
    let mut out = Vec::new();
    if !deny.is_empty() {
        out.push(filter(RbacAction::Deny, deny));
    }
    if any_allow {
        // Empty when no rule could be translated: every call denied.
        out.push(filter(RbacAction::Allow, allow));
    }
    out
}

fn filter(action: RbacAction, policies: Vec<(String, RbacPolicy)>) -> RbacFilter {
    RbacFilter {
        rules: Some(Rbac {
            action: action as i32,
            policies: policies.into_iter().collect(),
            ..Rbac::default()
        }),
        ..RbacFilter::default()
    }
}

/// One rule; `None` when it can never match (an ALLOW rule with a piece
/// that cannot be translated, or methods without POST).
/// What a rule is read against besides the call: its policy's namespace
/// (a bare service account's) and the mesh's trust domain.
struct Scope<'p> {
    namespace: &'p str,
    trust_domain: &'p TrustDomain,
}

fn translate_rule(
    rule: &Rule,
    bias: Bias,
    scope: &Scope<'_>,
    why: &mut Vec<Untranslatable>,
) -> Option<RbacPolicy> {
    let mut principals: Vec<Principal> = Vec::new();
    let mut permissions: Vec<Permission> = Vec::new();
    // A piece: translated, resolved by the bias, or the rule dropped.
    let mut ok = true;
    let mut resolve_p = |r: Result<Option<Principal>, Untranslatable>,
                         out: &mut Vec<Principal>,
                         ok: &mut bool| match r {
        Ok(Some(p)) => out.push(p),
        Ok(None) => {}
        Err(w) => {
            why.push(w);
            if bias == Bias::Allow {
                *ok = false;
            }
        }
    };
    if !rule.from.is_empty() {
        let mut alternatives = Vec::new();
        for f in &rule.from {
            let mut one = Vec::new();
            let mut one_ok = true;
            for piece in source_pieces(&f.source, bias, scope) {
                resolve_p(piece, &mut one, &mut one_ok);
            }
            if one_ok {
                alternatives.push(and_ids(one));
            }
        }
        if alternatives.is_empty() {
            ok = false;
        } else {
            principals.push(or_ids(alternatives));
        }
    }
    let mut why2 = Vec::new();
    if !rule.to.is_empty() {
        let mut alternatives = Vec::new();
        for t in &rule.to {
            if let Some(p) = operation(&t.operation, bias, &mut why2) {
                alternatives.push(p);
            }
        }
        if alternatives.is_empty() {
            ok = false;
        } else {
            permissions.push(or_rules(alternatives));
        }
    }
    for c in &rule.when {
        match condition(c, bias) {
            Ok(Piece::Principal(p)) => principals.push(p),
            Ok(Piece::Permission(p)) => permissions.push(p),
            Err(w) => {
                why2.push(w);
                if bias == Bias::Allow {
                    ok = false;
                }
            }
        }
    }
    why.extend(why2);
    ok.then(|| RbacPolicy {
        permissions: vec![and_rules(permissions)],
        principals: vec![and_ids(principals)],
        ..RbacPolicy::default()
    })
}

/// What a `when` condition becomes.
enum Piece {
    Principal(Principal),
    Permission(Permission),
}

fn any_id() -> Principal {
    Principal {
        identifier: Some(PrincipalId::Any(true)),
    }
}

fn any_rule() -> Permission {
    Permission {
        rule: Some(PermissionRule::Any(true)),
    }
}

fn and_ids(mut ids: Vec<Principal>) -> Principal {
    match ids.len() {
        0 => any_id(),
        1 => ids.remove(0),
        _ => Principal {
            identifier: Some(PrincipalId::AndIds(Ids { ids })),
        },
    }
}

fn or_ids(mut ids: Vec<Principal>) -> Principal {
    if ids.len() == 1 {
        return ids.remove(0);
    }
    Principal {
        identifier: Some(PrincipalId::OrIds(Ids { ids })),
    }
}

fn not_id(p: Principal) -> Principal {
    Principal {
        identifier: Some(PrincipalId::NotId(Box::new(p))),
    }
}

fn and_rules(mut rules: Vec<Permission>) -> Permission {
    match rules.len() {
        0 => any_rule(),
        1 => rules.remove(0),
        _ => Permission {
            rule: Some(PermissionRule::AndRules(Rules { rules })),
        },
    }
}

fn or_rules(mut rules: Vec<Permission>) -> Permission {
    if rules.len() == 1 {
        return rules.remove(0);
    }
    Permission {
        rule: Some(PermissionRule::OrRules(Rules { rules })),
    }
}

fn not_rule(p: Permission) -> Permission {
    Permission {
        rule: Some(PermissionRule::NotRule(Box::new(p))),
    }
}

fn string(pattern: MatchPattern, ignore_case: bool) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(pattern),
        ignore_case,
    }
}

fn regex(re: String) -> StringMatcher {
    string(
        MatchPattern::SafeRegex(RegexMatcher {
            regex: re,
            ..RegexMatcher::default()
        }),
        false,
    )
}

/// Never matches.
fn no_id() -> Principal {
    not_id(any_id())
}

fn no_rule() -> Permission {
    not_rule(any_rule())
}

/// RE2 for the literal `s`: ASCII punctuation escaped (RE2 refuses `\`
/// before anything else, and a refused regex is a NACKed listener).
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 2);
    for c in s.chars() {
        if c.is_ascii_punctuation() {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Is `v`, wildcards aside, made of `allowed` characters only? Anything
/// else can match none of the names ours compares it with.
fn plain(v: &str, allowed: impl Fn(char) -> bool) -> bool {
    v.trim_start_matches('*')
        .trim_end_matches('*')
        .chars()
        .all(allowed)
}

fn name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')
}

fn authenticated(m: StringMatcher) -> Principal {
    Principal {
        identifier: Some(PrincipalId::Authenticated(Authenticated {
            principal_name: Some(m),
        })),
    }
}

/// A peer principal (`td/ns/x/sa/y`, wildcards) against the URI SAN, as
/// ours compares it without the scheme: a suffix never reaches into
/// `spiffe://`, and every form needs a SPIFFE URI (never a DNS SAN or the
/// subject). `None`: it can match no SPIFFE ID.
fn principal(value: &str) -> Option<Principal> {
    if !plain(value, |c| name_char(c) || c == '/') {
        return None;
    }
    let m = if value == "*" {
        regex("spiffe://.+".to_owned())
    } else if let Some(suffix) = value.strip_prefix('*') {
        regex(format!("spiffe://.*{}", escape(suffix)))
    } else if let Some(start) = value.strip_suffix('*') {
        string(MatchPattern::Prefix(format!("spiffe://{start}")), false)
    } else {
        string(MatchPattern::Exact(format!("spiffe://{value}")), false)
    };
    Some(authenticated(m))
}

/// A peer namespace (wildcards) against the URI SAN. `None`: no namespace
/// is spelt so.
fn namespace(value: &str) -> Option<Principal> {
    if !plain(value, name_char) {
        return None;
    }
    let ns = if value == "*" {
        "[^/]+".to_owned()
    } else if let Some(suffix) = value.strip_prefix('*') {
        format!("[^/]*{}", escape(suffix))
    } else if let Some(start) = value.strip_suffix('*') {
        format!("{}[^/]*", escape(start))
    } else {
        escape(value)
    };
    Some(authenticated(regex(format!(
        "spiffe://[^/]+/ns/{ns}/sa/[^/]+"
    ))))
}

fn cidr(value: &str) -> Result<CidrRange, Untranslatable> {
    let b = IpBlock::parse(value).ok_or_else(|| format!("`{value}` is no address"))?;
    Ok(CidrRange {
        address_prefix: b.addr().to_string(),
        prefix_len: Some(UInt32Value {
            value: u32::from(b.prefix()),
        }),
    })
}

fn peer_ip(value: &str) -> Result<Option<Principal>, Untranslatable> {
    Ok(Some(Principal {
        identifier: Some(PrincipalId::DirectRemoteIp(cidr(value)?)),
    }))
}

/// One value: its matcher, `None` when it can match nothing.
type One<T> = Result<Option<T>, Untranslatable>;

/// Values (any) and not-values (none), as one principal; `None`: no
/// constraint. A value that can match nothing is left out of the values
/// (all of them so: the field never matches) and of the not-values.
fn values_p(
    values: &[String],
    not_values: &[String],
    one: impl Fn(&str) -> One<Principal>,
) -> Result<Option<Principal>, Untranslatable> {
    values_p2(values, not_values, &one, &one)
}

/// [`values_p`] with the not-values read by `not_one`.
fn values_p2(
    values: &[String],
    not_values: &[String],
    one: impl Fn(&str) -> One<Principal>,
    not_one: impl Fn(&str) -> One<Principal>,
) -> Result<Option<Principal>, Untranslatable> {
    let mut parts = Vec::new();
    if !values.is_empty() {
        let ids: Vec<Principal> = values
            .iter()
            .map(|v| one(v))
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .flatten()
            .collect();
        parts.push(if ids.is_empty() { no_id() } else { or_ids(ids) });
    }
    let nots: Vec<Principal> = not_values
        .iter()
        .map(|v| not_one(v))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .flatten()
        .collect();
    if !nots.is_empty() {
        parts.push(not_id(or_ids(nots)));
    }
    Ok((!parts.is_empty()).then(|| and_ids(parts)))
}

fn values_r(
    values: &[String],
    not_values: &[String],
    one: impl Fn(&str) -> One<Permission>,
    not_one: impl Fn(&str) -> One<Permission>,
) -> Result<Option<Permission>, Untranslatable> {
    let mut parts = Vec::new();
    if !values.is_empty() {
        let rules: Vec<Permission> = values
            .iter()
            .map(|v| one(v))
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .flatten()
            .collect();
        parts.push(if rules.is_empty() {
            no_rule()
        } else {
            or_rules(rules)
        });
    }
    let nots: Vec<Permission> = not_values
        .iter()
        .map(|v| not_one(v))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .flatten()
        .collect();
    if !nots.is_empty() {
        parts.push(not_rule(or_rules(nots)));
    }
    Ok((!parts.is_empty()).then(|| and_rules(parts)))
}

/// A `serviceAccounts` value as the mesh's own identity of it, exactly
/// (`spiffe://<the mesh's trust domain>/ns/<ns>/sa/<sa>`).
fn service_account_exact(scope: &Scope<'_>, value: &str) -> One<Principal> {
    let (ns, sa) = value.split_once('/').unwrap_or((scope.namespace, value));
    Ok(Some(authenticated(string(
        MatchPattern::Exact(format!("spiffe://{}/ns/{ns}/sa/{sa}", scope.trust_domain)),
        false,
    ))))
}

/// A `serviceAccounts` value as Istio matches it: in any trust domain,
/// other segments around.
fn service_account_istio(scope: &Scope<'_>, value: &str) -> One<Principal> {
    let (ns, sa) = value.split_once('/').unwrap_or((scope.namespace, value));
    Ok(Some(authenticated(regex(format!(
        "spiffe://.+/ns/{}/(.+/|)sa/{}(/.+)?",
        escape(ns),
        escape(sa)
    )))))
}

/// `serviceAccounts` / `notServiceAccounts`: exact where a match lets the
/// call through (an ALLOW's values, a DENY's not-values), Istio's regex
/// where it refuses it.
fn service_accounts(
    values: &[String],
    not_values: &[String],
    bias: Bias,
    scope: &Scope<'_>,
) -> Result<Option<Principal>, Untranslatable> {
    let exact = |v: &str| service_account_exact(scope, v);
    let istio = |v: &str| service_account_istio(scope, v);
    match bias {
        Bias::Allow => values_p2(values, not_values, exact, istio),
        Bias::Deny => values_p2(values, not_values, istio, exact),
    }
}

/// A trust domain pattern against the URI SAN's authority. Trust domains
/// are lowercase; ours also reads a pattern ignoring case where a match
/// refuses the call (`fold`), so that side matches it lowercased, and the
/// other side's pattern in another case matches nothing (`None`).
fn trust_domain(value: &str, fold: bool) -> One<Principal> {
    let value = if fold {
        value.to_ascii_lowercase()
    } else if value.bytes().any(|b| b.is_ascii_uppercase()) {
        return Ok(None);
    } else {
        value.to_owned()
    };
    if !plain(&value, name_char) {
        return Ok(None);
    }
    let td = if value == "*" {
        "[^/]+".to_owned()
    } else if let Some(suffix) = value.strip_prefix('*') {
        format!("[^/]*{}", escape(suffix))
    } else if let Some(start) = value.strip_suffix('*') {
        format!("{}[^/]*", escape(start))
    } else {
        escape(&value)
    };
    Ok(Some(authenticated(regex(format!("spiffe://{td}(/.*)?")))))
}

/// `trustDomains` / `notTrustDomains` (and `source.trustDomain`).
fn trust_domains(
    values: &[String],
    not_values: &[String],
    bias: Bias,
) -> Result<Option<Principal>, Untranslatable> {
    let deny = bias == Bias::Deny;
    values_p2(
        values,
        not_values,
        |v| trust_domain(v, deny),
        |v| trust_domain(v, !deny),
    )
}

/// A source's fields (ANDed), each translated or not.
fn source_pieces(
    s: &Source,
    bias: Bias,
    scope: &Scope<'_>,
) -> Vec<Result<Option<Principal>, Untranslatable>> {
    let never = |field: &str, a: &[String], b: &[String], why: &str| {
        if a.is_empty() && b.is_empty() {
            Ok(None)
        } else {
            Err(format!("{field}: {why}"))
        }
    };
    vec![
        values_p(&s.principals, &s.not_principals, |v| Ok(principal(v))),
        values_p(&s.namespaces, &s.not_namespaces, |v| Ok(namespace(v))),
        values_p(&s.ip_blocks, &s.not_ip_blocks, peer_ip),
        never(
            "remoteIpBlocks",
            &s.remote_ip_blocks,
            &s.not_remote_ip_blocks,
            "gRPC reads no forwarded client address",
        ),
        service_accounts(&s.service_accounts, &s.not_service_accounts, bias, scope),
        trust_domains(&s.trust_domains, &s.not_trust_domains, bias),
        never(
            "requestPrincipals",
            &s.request_principals,
            &s.not_request_principals,
            "proxyless gRPC validates no JWT",
        ),
    ]
}

fn url_path(m: StringMatcher) -> Permission {
    Permission {
        rule: Some(PermissionRule::UrlPath(PathMatcher {
            rule: Some(path_matcher::Rule::Path(m)),
        })),
    }
}

/// A path pattern (decoded once, as ours reads patterns), in any case when
/// `ignore_case`; with `slashless`, also the method's path without its
/// leading `/`, which grpc-go dispatches as the same method.
fn path(value: &str, ignore_case: bool, slashless: bool) -> One<Permission> {
    let value = mesh_core::normalize::decode_once(value);
    if value.contains('{') {
        return Err(format!("path template `{value}`"));
    }
    let m = |v: &str| {
        if v == "*" {
            string(MatchPattern::Prefix(String::new()), false)
        } else if let Some(suffix) = v.strip_prefix('*') {
            string(MatchPattern::Suffix(suffix.to_owned()), ignore_case)
        } else if let Some(start) = v.strip_suffix('*') {
            string(MatchPattern::Prefix(start.to_owned()), ignore_case)
        } else {
            string(MatchPattern::Exact(v.to_owned()), ignore_case)
        }
    };
    let with = url_path(m(&value));
    Ok(Some(match value.strip_prefix('/') {
        Some(rest) if slashless && !rest.is_empty() => or_rules(vec![with, url_path(m(rest))]),
        _ => with,
    }))
}

/// A port as ours compares it: the string of the number; any other
/// spelling (`08080`, `+80`) matches no port.
fn port_rule(value: &str) -> One<Permission> {
    Ok(value
        .parse::<u16>()
        .ok()
        .filter(|p| p.to_string() == value)
        .map(|p| Permission {
            rule: Some(PermissionRule::DestinationPort(u32::from(p))),
        }))
}

/// Does a method pattern of ours (wildcards, any case) take `POST`?
fn takes_post(pattern: &str) -> bool {
    mesh_core::authz::wildcard_match(&pattern.to_ascii_uppercase(), "POST")
}

/// One operation (its fields ANDed); `None` when it can never match
/// (methods that leave POST out, or an ALLOW piece that cannot be
/// translated).
fn operation(o: &Operation, bias: Bias, why: &mut Vec<Untranslatable>) -> Option<Permission> {
    // Every gRPC call is a POST: the method fields are decided here, as
    // ours decides them for the value POST.
    if !o.methods.is_empty() && !o.methods.iter().any(|m| takes_post(m)) {
        return None;
    }
    if o.not_methods.iter().any(|m| takes_post(m)) {
        return None;
    }
    let mut parts = Vec::new();
    let mut piece =
        |r: Result<Option<Permission>, Untranslatable>, parts: &mut Vec<Permission>| match r {
            Ok(Some(p)) => {
                parts.push(p);
                true
            }
            Ok(None) => true,
            Err(w) => {
                why.push(w);
                bias == Bias::Deny
            }
        };
    // Ours matches a DENY's paths and an ALLOW's notPaths in any case:
    // the side where a match refuses.
    let deny = bias == Bias::Deny;
    let ok = piece(
        values_r(
            &o.paths,
            &o.not_paths,
            |v| path(v, deny, deny),
            |v| path(v, !deny, !deny),
        ),
        &mut parts,
    ) && piece(
        values_r(&o.ports, &o.not_ports, port_rule, port_rule),
        &mut parts,
    ) && piece(
        if o.hosts.is_empty() && o.not_hosts.is_empty() {
            Ok(None)
        } else {
            Err("hosts: gRPC's RBAC matches no authority".to_owned())
        },
        &mut parts,
    );
    ok.then(|| and_rules(parts))
}

fn header_rule(name: &str, spec: HeaderMatchSpecifier) -> Permission {
    Permission {
        rule: Some(PermissionRule::Header(HeaderMatcher {
            name: name.to_owned(),
            header_match_specifier: Some(spec),
            ..HeaderMatcher::default()
        })),
    }
}

fn header_regex(name: &str, re: String) -> Permission {
    header_rule(name, HeaderMatchSpecifier::StringMatch(regex(re)))
}

/// A header value pattern as RE2 (`*` ends as `.*`).
fn value_regex(v: &str) -> String {
    if let Some(suffix) = v.strip_prefix('*') {
        format!(".*{}", escape(suffix))
    } else if let Some(start) = v.strip_suffix('*') {
        format!("{}.*", escape(start))
    } else {
        escape(v)
    }
}

/// `request.headers[name]`. Ours reads each field line, each of its
/// comma-separated elements and their join, trimmed; gRPC sees the lines
/// joined with `,`. So a DENY matches a value as any element of the join,
/// and its not-values hold for a header of several elements; an ALLOW
/// holds only for a header of one element without surrounding blanks.
fn header(name: &str, values: &[String], not_values: &[String], bias: Bias) -> Permission {
    let mut parts = Vec::new();
    let present = |v: &str| v == "*";
    match bias {
        Bias::Deny => {
            if !values.is_empty() {
                parts.push(or_rules(
                    values
                        .iter()
                        .map(|v| {
                            if present(v) {
                                header_rule(name, HeaderMatchSpecifier::PresentMatch(true))
                            } else {
                                header_regex(
                                    name,
                                    format!("(.*,)?[ \t]*{}[ \t]*(,.*)?", value_regex(v)),
                                )
                            }
                        })
                        .collect(),
                ));
            }
            if !not_values.is_empty() {
                let excluded = or_rules(
                    not_values
                        .iter()
                        .map(|v| {
                            if present(v) {
                                header_rule(name, HeaderMatchSpecifier::PresentMatch(true))
                            } else {
                                header_regex(name, value_regex(v))
                            }
                        })
                        .collect(),
                );
                parts.push(or_rules(vec![
                    not_rule(excluded),
                    header_regex(name, ".*,.*".to_owned()),
                ]));
            }
        }
        Bias::Allow => {
            let one = |v: &str| {
                if present(v) {
                    header_rule(name, HeaderMatchSpecifier::PresentMatch(true))
                } else {
                    header_regex(name, value_regex(v))
                }
            };
            if !values.is_empty() {
                parts.push(or_rules(values.iter().map(|v| one(v)).collect()));
            }
            if !not_values.is_empty() {
                parts.push(not_rule(or_rules(
                    not_values.iter().map(|v| one(v)).collect(),
                )));
            }
            parts.push(not_rule(header_regex(
                name,
                ".*,.*|[ \t].*|.*[ \t]".to_owned(),
            )));
        }
    }
    and_rules(parts)
}

/// Headers gRPC hides from RBAC or shows otherwise than they were sent.
fn hidden_header(lower: &str) -> bool {
    lower.starts_with("grpc-")
        || lower.starts_with(':')
        || lower.starts_with("lb-")
        || lower.ends_with("-bin")
        || matches!(lower, "te" | "content-type" | "user-agent" | "host")
}

fn condition(c: &Condition, bias: Bias) -> Result<Piece, Untranslatable> {
    let (values, not) = (&c.values, &c.not_values);
    let key = c.key.as_str();
    let p = |r: Result<Option<Principal>, Untranslatable>| {
        r.map(|p| Piece::Principal(p.unwrap_or_else(any_id)))
    };
    let r = |r: Result<Option<Permission>, Untranslatable>| {
        r.map(|p| Piece::Permission(p.unwrap_or_else(any_rule)))
    };
    let dst_ip = |v: &str| -> One<Permission> {
        Ok(Some(Permission {
            rule: Some(PermissionRule::DestinationIp(cidr(v)?)),
        }))
    };
    match key {
        "source.principal" => p(values_p(values, not, |v| Ok(principal(v)))),
        "source.namespace" => p(values_p(values, not, |v| Ok(namespace(v)))),
        "source.trustDomain" => p(trust_domains(values, not, bias)),
        "connection.sni" => Err(format!(
            "`{key}`: gRPC's RBAC reads no SNI (requested_server_name is always empty there)"
        )),
        "source.ip" => p(values_p(values, not, peer_ip)),
        "destination.port" => r(values_r(values, not, port_rule, port_rule)),
        "destination.ip" => r(values_r(values, not, dst_ip, dst_ip)),
        _ => {
            if let Some(name) = key
                .strip_prefix("request.headers[")
                .and_then(|k| k.strip_suffix(']'))
            {
                let lower = name.to_ascii_lowercase();
                if hidden_header(&lower) {
                    return Err(format!(
                        "`{key}`: gRPC shows that header otherwise or not at all"
                    ));
                }
                if values.is_empty() && not.is_empty() {
                    return Ok(Piece::Permission(any_rule()));
                }
                return Ok(Piece::Permission(header(&lower, values, not, bias)));
            }
            Err(format!("`{key}` is not known to gRPC's RBAC"))
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn policies(yaml: &str) -> mesh_core::snapshot::Snapshot {
        mesh_core::snapshot::compile(
            &mesh_core::load::load_str(std::path::Path::new("p.yaml"), yaml).unwrap(),
        )
        .unwrap()
    }

    fn translate(yaml: &str) -> (Vec<RbacFilter>, Vec<String>) {
        let snap = policies(yaml);
        let mut warnings = Vec::new();
        let f = filters(snap.authz_policies.iter(), |w| warnings.push(w));
        (f, warnings)
    }

    const HEAD: &str = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n";

    #[test]
    fn allow_and_deny_become_two_filters_deny_first() {
        let yaml = format!(
            "{HEAD}metadata: {{name: a, namespace: demo}}\nspec:\n  action: ALLOW\n  rules:\n  - from: [{{source: {{principals: [cluster.local/ns/demo/sa/client], namespaces: [demo]}}}}]\n    to: [{{operation: {{paths: [/mesh.test.Echo/*], ports: ['8080']}}}}]\n---\n\
             {HEAD}metadata: {{name: d, namespace: demo}}\nspec:\n  action: DENY\n  rules:\n  - to: [{{operation: {{paths: [/mesh.test.Echo/Admin]}}}}]\n"
        );
        let (f, w) = translate(&yaml);
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(f.len(), 2);
        let deny = f[0].rules.as_ref().unwrap();
        assert_eq!(deny.action, RbacAction::Deny as i32);
        let allow = f[1].rules.as_ref().unwrap();
        assert_eq!(allow.action, RbacAction::Allow as i32);
        let p = &allow.policies["AuthorizationPolicy demo/a[0]"];
        let text = format!("{p:?}");
        assert!(
            text.contains("Exact(\"spiffe://cluster.local/ns/demo/sa/client\")"),
            "{text}"
        );
        assert!(text.contains("spiffe://[^/]+/ns/demo/sa/[^/]+"), "{text}");
        assert!(text.contains("Prefix(\"/mesh.test.Echo/\")"), "{text}");
        assert!(text.contains("DestinationPort(8080)"), "{text}");
        // DENY paths in any case.
        let d = format!("{:?}", deny.policies["AuthorizationPolicy demo/d[0]"]);
        assert!(d.contains("ignore_case: true"), "{d}");
    }

    #[test]
    fn what_cannot_be_translated_is_resolved_against_the_caller() {
        // ALLOW with a JWT requirement: the rule is dropped, so the ALLOW
        // filter is empty and denies every call.
        let yaml = format!(
            "{HEAD}metadata: {{name: a, namespace: demo}}\nspec:\n  rules:\n  - from: [{{source: {{requestPrincipals: ['*']}}}}]\n"
        );
        let (f, w) = translate(&yaml);
        assert_eq!(f.len(), 1);
        assert!(f[0].rules.as_ref().unwrap().policies.is_empty());
        assert!(w[0].contains("requestPrincipals"), "{w:?}");
        assert!(w[0].contains("allows nothing"), "{w:?}");
        // DENY on a remote IP and a path: the untranslatable part matches
        // everything, so every call to that path is denied.
        let yaml = format!(
            "{HEAD}metadata: {{name: d, namespace: demo}}\nspec:\n  action: DENY\n  rules:\n  - from: [{{source: {{remoteIpBlocks: [10.0.0.0/8]}}}}]\n    to: [{{operation: {{paths: [/x/Y], hosts: [a.example]}}}}]\n    when: [{{key: 'request.auth.claims[iss]', values: [x]}}]\n"
        );
        let (f, w) = translate(&yaml);
        assert_eq!(f.len(), 1);
        let p = format!("{:?}", f[0].rules.as_ref().unwrap().policies);
        assert!(p.contains("/x/Y"), "{p}");
        assert!(!p.contains("10.0.0.0"), "{p}");
        assert_eq!(w.len(), 3, "{w:?}");
        assert!(w.iter().all(|w| w.contains("denies more")), "{w:?}");
        // Methods without POST: never a gRPC call; an ALLOW of only GET
        // allows nothing (and says nothing: it is what the policy means).
        let yaml = format!(
            "{HEAD}metadata: {{name: a, namespace: demo}}\nspec:\n  rules:\n  - to: [{{operation: {{methods: [GET]}}}}]\n"
        );
        let (f, w) = translate(&yaml);
        assert!(f[0].rules.as_ref().unwrap().policies.is_empty());
        assert!(w.is_empty());
    }

    /// An unresolvable CUSTOM provider (none is ever defined here): one
    /// DENY filter matching every call, as Istio's `rbacDefaultDenyAll`,
    /// whatever the other policies say.
    #[test]
    fn custom_with_an_undefined_provider_denies_every_call() {
        let yaml = format!(
            "{HEAD}metadata: {{name: a, namespace: demo}}\nspec: {{action: ALLOW, rules: [{{}}]}}\n---\n\
             {HEAD}metadata: {{name: c, namespace: demo}}\nspec: {{action: CUSTOM, provider: {{name: ext}}, rules: [{{to: [{{operation: {{paths: [/x/Y]}}}}]}}]}}\n"
        );
        let (f, w) = translate(&yaml);
        assert_eq!(f.len(), 1, "{f:?}");
        let rules = f[0].rules.as_ref().unwrap();
        assert_eq!(rules.action, RbacAction::Deny as i32);
        let all = &rules.policies["default-deny-all-due-to-bad-CUSTOM-action"];
        assert_eq!(all.permissions, vec![any_rule()]);
        assert_eq!(all.principals, vec![any_id()]);
        assert_eq!(rules.policies.len(), 1);
        assert!(
            w.iter()
                .any(|w| w.contains("demo/c") && w.contains("`ext` is not defined")),
            "{w:?}"
        );
    }

    #[test]
    fn audit_and_dry_run_policies_send_nothing() {
        let yaml = format!(
            "{HEAD}metadata: {{name: a, namespace: demo}}\nspec: {{action: AUDIT, rules: [{{}}]}}\n---\n\
             {HEAD}metadata: {{name: b, namespace: demo, annotations: {{istio.io/dry-run: 'true'}}}}\nspec: {{action: DENY, rules: [{{}}]}}\n"
        );
        let (f, _) = translate(&yaml);
        assert!(f.is_empty(), "{f:?}");
    }

    #[test]
    fn conditions_and_not_values() {
        let yaml = format!(
            "{HEAD}metadata: {{name: a, namespace: demo}}\nspec:\n  rules:\n  - when:\n    - {{key: 'request.headers[X-Canary]', values: ['1']}}\n    - {{key: source.namespace, notValues: [other]}}\n    - {{key: source.ip, values: [10.0.0.0/8]}}\n"
        );
        let (f, w) = translate(&yaml);
        assert!(w.is_empty(), "{w:?}");
        let p = format!("{:?}", f[0].rules.as_ref().unwrap().policies);
        assert!(p.contains("name: \"x-canary\""), "{p}");
        assert!(p.contains("NotId"), "{p}");
        assert!(p.contains("DirectRemoteIp"), "{p}");
        // A grpc- header is hidden from RBAC: an ALLOW on it allows nothing.
        let yaml = format!(
            "{HEAD}metadata: {{name: a, namespace: demo}}\nspec:\n  rules:\n  - when: [{{key: 'request.headers[grpc-timeout]', values: ['1S']}}]\n"
        );
        let (f, w) = translate(&yaml);
        assert!(f[0].rules.as_ref().unwrap().policies.is_empty());
        assert!(w[0].contains("otherwise"), "{w:?}");
    }

    /// Every safe_regex of a filter, unescaped from its Debug form.
    fn regexes(f: &[RbacFilter]) -> Vec<String> {
        let text = format!("{f:?}");
        let re = regex::Regex::new(r#"regex: "((?:[^"\\]|\\.)*)""#).unwrap();
        re.captures_iter(&text)
            .map(|c| {
                let mut out = String::new();
                let mut chars = c[1].chars();
                while let Some(ch) = chars.next() {
                    if ch == '\\' {
                        match chars.next() {
                            Some('t') => out.push('\t'),
                            Some(o) => out.push(o),
                            None => {}
                        }
                    } else {
                        out.push(ch);
                    }
                }
                out
            })
            .collect()
    }

    fn full(re: &str, s: &str) -> bool {
        regex::Regex::new(&format!("^(?:{re})$"))
            .unwrap()
            .is_match(s)
    }

    fn policy(action: &str, rule: &str) -> String {
        format!(
            "{HEAD}metadata: {{name: p, namespace: demo}}\nspec:\n  action: {action}\n  rules:\n  - {rule}\n"
        )
    }

    fn debug(action: &str, rule: &str) -> (String, Vec<RbacFilter>) {
        let (f, _) = translate(&policy(action, rule));
        (format!("{f:?}"), f)
    }

    #[test]
    fn methods_are_decided_as_ours_decides_them_for_post() {
        for not in ["'P*'", "post", "'*'"] {
            let (_, f) = debug(
                "ALLOW",
                &format!("to: [{{operation: {{notMethods: [{not}]}}}}]"),
            );
            assert!(f[0].rules.as_ref().unwrap().policies.is_empty(), "{not}");
        }
        for m in ["post", "'P*'", "'*ST'"] {
            let (_, f) = debug(
                "DENY",
                &format!("to: [{{operation: {{methods: [{m}], paths: [/pkg.S/Admin]}}}}]"),
            );
            assert_eq!(f[0].rules.as_ref().unwrap().policies.len(), 1, "{m}");
        }
        let (_, f) = debug("DENY", "to: [{operation: {methods: [GET]}}]");
        assert!(f.is_empty(), "a DENY of GET never matches a gRPC call");
    }

    #[test]
    fn header_values_are_read_as_ours_reads_the_joined_lines() {
        let (_, f) = debug(
            "DENY",
            "when: [{key: 'request.headers[x-user]', values: [root, 'adm*']}]",
        );
        let res = regexes(&f);
        let hit = |s: &str| res.iter().any(|r| full(r, s));
        for s in [
            "root",
            "alice, root",
            "alice,root",
            "root ,bob",
            "admin",
            "x, admin2",
        ] {
            assert!(hit(s), "{s} {res:?}");
        }
        assert!(!hit("rooty") && !hit("alice"), "{res:?}");
        // DENY notValues: a header of several elements is denied.
        let (_, f) = debug(
            "DENY",
            "when: [{key: 'request.headers[x-user]', notValues: [bob]}]",
        );
        assert!(regexes(&f).iter().any(|r| full(r, "bob,root")));
        // ALLOW: one element without blanks only.
        let (_, f) = debug(
            "ALLOW",
            "when: [{key: 'request.headers[x-team]', values: ['team-a*']}]",
        );
        let res = regexes(&f);
        let guard = res.iter().find(|r| r.contains(",")).unwrap();
        for s in ["team-a, team-b", "team-a,x", " team-a", "team-a "] {
            assert!(full(guard, s), "{s}");
        }
        assert!(!full(guard, "team-a1"));
        for hidden in [
            "content-type",
            "user-agent",
            "host",
            "x-id-bin",
            "lb-cost",
            "grpc-timeout",
        ] {
            let (f, w) = translate(&policy(
                "ALLOW",
                &format!("when: [{{key: 'request.headers[{hidden}]', values: [x]}}]"),
            ));
            assert!(f[0].rules.as_ref().unwrap().policies.is_empty(), "{hidden}");
            assert_eq!(w.len(), 1, "{hidden}");
        }
    }

    #[test]
    fn every_regex_is_one_re2_takes_and_odd_names_match_nothing() {
        let (text, f) = debug(
            "ALLOW",
            "from: [{source: {namespaces: ['démo', 'a/sa/b/ns/c', 'de*', '*mo.x-y_z'], notNamespaces: ['é'], principals: ['*/sa/b', '*'], notPrincipals: ['cluster.local/ns/é/sa/x']}}]\n    when: [{key: 'request.headers[x-a]', values: ['a.b(c)*']}]",
        );
        assert!(!text.contains('é'), "{text}");
        assert!(!text.contains("a/sa/b"), "{text}");
        let res = regexes(&f);
        assert!(!res.is_empty());
        for r in &res {
            assert!(regex::Regex::new(r).is_ok(), "{r}");
            // RE2 takes `\` before ASCII punctuation only.
            let mut chars = r.chars();
            while let Some(c) = chars.next() {
                if c == '\\' {
                    let n = chars.next().unwrap();
                    assert!(n.is_ascii_punctuation(), "{r}");
                }
            }
        }
        // A principal suffix never reaches into the scheme.
        let suffix = res.iter().find(|r| r.ends_with("sa\\/b")).unwrap();
        assert!(full(suffix, "spiffe://cluster.local/ns/a/sa/b"));
        assert!(!full(suffix, "x/sa/b"));
    }

    #[test]
    fn paths_ports_and_cases_as_ours() {
        // A pattern decoded once; a DENY also matches the slashless form
        // grpc-go dispatches as the same method.
        let (text, _) = debug("DENY", "to: [{operation: {paths: ['/pkg.S/%41dmin']}}]");
        assert!(text.contains("Exact(\"/pkg.S/Admin\")"), "{text}");
        assert!(text.contains("Exact(\"pkg.S/Admin\")"), "{text}");
        // notPaths: in any case (and slashless) for an ALLOW, as sent for a DENY.
        let (text, _) = debug("ALLOW", "to: [{operation: {notPaths: [/pkg.S/Admin]}}]");
        assert!(
            text.contains("ignore_case: true") && text.contains("\"pkg.S/Admin\""),
            "{text}"
        );
        let (text, _) = debug("DENY", "to: [{operation: {notPaths: [/pkg.S/Admin]}}]");
        assert!(
            !text.contains("ignore_case: true") && !text.contains("\"pkg.S/Admin\""),
            "{text}"
        );
        // A port spelt otherwise than its number matches no port.
        let (text, f) = debug("ALLOW", "to: [{operation: {ports: ['08080']}}]");
        assert!(!text.contains("8080"), "{text}");
        assert_eq!(f[0].rules.as_ref().unwrap().policies.len(), 1);
        assert!(
            text.contains("NotRule(Permission { rule: Some(Any(true)) })"),
            "{text}"
        );
        let (text, _) = debug("DENY", "to: [{operation: {notPorts: ['+8080']}}]");
        assert!(!text.contains("8080"), "{text}");
    }

    /// The filters' regexes that full-match `s`.
    fn hits<'r>(res: &'r [String], s: &str) -> Vec<&'r String> {
        res.iter().filter(|r| full(r, s)).collect()
    }

    #[test]
    fn service_accounts_are_exact_where_they_allow_and_istios_where_they_refuse() {
        let (text, f) = debug(
            "ALLOW",
            "from: [{source: {serviceAccounts: [client, other/x], notServiceAccounts: [demo/bad]}}]",
        );
        // A bare name is of the policy's namespace; only the mesh's own
        // trust domain, exactly.
        assert!(
            text.contains("Exact(\"spiffe://cluster.local/ns/demo/sa/client\")"),
            "{text}"
        );
        assert!(
            text.contains("Exact(\"spiffe://cluster.local/ns/other/sa/x\")"),
            "{text}"
        );
        assert!(text.contains("NotId"), "{text}");
        let res = regexes(&f);
        for refused in [
            "spiffe://cluster.local/ns/demo/sa/bad",
            "spiffe://partner.example/ns/demo/sa/bad",
            "spiffe://cluster.local/ns/demo/zone/a/sa/bad/v2",
        ] {
            assert_eq!(hits(&res, refused).len(), 1, "{refused} {res:?}");
        }
        for other in [
            "spiffe://cluster.local/ns/demo/sa/badx",
            "spiffe://cluster.local/ns/demox/sa/bad",
            "spiffe://cluster.local/sa/bad/ns/demo",
        ] {
            assert!(hits(&res, other).is_empty(), "{other} {res:?}");
        }
        // DENY: Istio's regex for the values, the exact identity for the
        // not-values.
        let (text, f) = debug(
            "DENY",
            "from: [{source: {serviceAccounts: [client]}}, {source: {notServiceAccounts: [front/web]}}]",
        );
        let res = regexes(&f);
        for denied in [
            "spiffe://cluster.local/ns/demo/sa/client",
            "spiffe://partner.example/ns/demo/sa/client",
            "spiffe://td/x/ns/demo/y/sa/client/z",
        ] {
            assert_eq!(hits(&res, denied).len(), 1, "{denied} {res:?}");
        }
        assert!(hits(&res, "spiffe://td/ns/demo/sa/clientx").is_empty());
        assert!(
            text.contains("Exact(\"spiffe://cluster.local/ns/front/sa/web\")"),
            "{text}"
        );
        for r in &res {
            assert!(regex::Regex::new(r).is_ok(), "{r}");
        }
        let (_, w) = translate(&policy(
            "ALLOW",
            "from: [{source: {serviceAccounts: [client]}}]",
        ));
        assert!(w.is_empty(), "{w:?}");
    }

    #[test]
    fn trust_domains_match_the_uri_sans_authority() {
        let (_, f) = debug(
            "ALLOW",
            "from: [{source: {trustDomains: [cluster.local, 'east-*', '*.partner', Upper.Case]}}]",
        );
        let res = regexes(&f);
        for yes in [
            "spiffe://cluster.local/ns/a/sa/b",
            "spiffe://east-1/ns/a/sa/b",
            "spiffe://x.partner/ns/a/sa/b",
            "spiffe://cluster.local",
        ] {
            assert_eq!(hits(&res, yes).len(), 1, "{yes} {res:?}");
        }
        for no in [
            "spiffe://cluster.local.evil/ns/a/sa/b",
            "spiffe://evil/cluster.local/ns/a/sa/b",
            "spiffe://upper.case/ns/a/sa/b",
            "spiffe://west-1/ns/a/sa/b",
        ] {
            assert!(hits(&res, no).is_empty(), "{no} {res:?}");
        }
        // A DENY reads the pattern in any case, as ours does.
        let (_, f) = debug("DENY", "from: [{source: {trustDomains: [Upper.Case]}}]");
        assert_eq!(hits(&regexes(&f), "spiffe://upper.case/ns/a/sa/b").len(), 1);
        // `*`: any SPIFFE ID; notTrustDomains a NotId; the `when` key too.
        let (text, f) = debug(
            "ALLOW",
            "from: [{source: {trustDomains: ['*'], notTrustDomains: [bad.example]}}]\n    when: [{key: source.trustDomain, values: [cluster.local]}]",
        );
        assert!(text.contains("NotId"), "{text}");
        let res = regexes(&f);
        assert!(!hits(&res, "spiffe://anything/ns/a/sa/b").is_empty());
        assert!(!hits(&res, "spiffe://bad.example/ns/a/sa/b").is_empty());
        assert!(hits(&res, "x.example").is_empty());
    }

    #[test]
    fn connection_sni_fails_closed_on_grpc() {
        // gRPC reads requested_server_name as "": an ALLOW on the SNI
        // allows nothing, and says so.
        let (f, w) = translate(&policy(
            "ALLOW",
            "when: [{key: connection.sni, values: [api.example.com]}]",
        ));
        assert!(f[0].rules.as_ref().unwrap().policies.is_empty());
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("connection.sni"), "{w:?}");
        assert!(w[0].contains("allows nothing"), "{w:?}");
        // notValues would allow every call there: dropped as well.
        let (f, _) = translate(&policy(
            "ALLOW",
            "when: [{key: connection.sni, notValues: [admin.example.com]}]",
        ));
        assert!(f[0].rules.as_ref().unwrap().policies.is_empty());
        // A DENY on the SNI denies every call its other fields match.
        let (f, w) = translate(&policy(
            "DENY",
            "to: [{operation: {paths: [/pkg.S/Admin]}}]\n    when: [{key: connection.sni, values: [admin.example.com]}]",
        ));
        let p = format!("{:?}", f[0].rules.as_ref().unwrap().policies);
        assert!(p.contains("/pkg.S/Admin"), "{p}");
        assert!(!p.contains("admin.example.com"), "{p}");
        assert!(w[0].contains("denies more"), "{w:?}");
    }
}
