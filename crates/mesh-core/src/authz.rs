//! AuthorizationPolicy decisions as Istio defines them: DENY policies are
//! evaluated first, then ALLOW; a workload with no ALLOW policy allows what
//! no DENY policy denies; with any ALLOW policy, a request is denied unless
//! one matches. AUDIT policies never change the decision.
//!
//! Positive source fields (`principals`, `namespaces`) need a verified peer
//! identity: a plaintext request never satisfies them. Negative fields are
//! their negation, so `notPrincipals: ["*"]` in a DENY policy denies every
//! request without an identity, as in Istio.

use std::net::IpAddr;

use serde::Serialize;

use crate::identity::SpiffeId;
use crate::resources::ResourceRef;
use crate::resources::common::Labels;
use crate::resources::security::{AuthzAction, Condition, Operation, Rule, Source};
use crate::route::HeaderLookup;

/// An IP address or CIDR block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpBlock {
    addr: IpAddr,
    prefix: u8,
}

impl IpBlock {
    /// Parses `10.0.0.1` or `10.0.0.0/8` (IPv4 or IPv6).
    pub fn parse(s: &str) -> Option<Self> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a.parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max)?,
            None => max,
        };
        Some(Self { addr, prefix })
    }

    /// Is `ip` inside the block?
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// A compiled AuthorizationPolicy.
#[derive(Debug, Clone, Serialize)]
pub struct AuthzPolicy {
    /// Where it came from.
    pub source: ResourceRef,
    /// Lives in the root namespace, so it applies in every namespace (to
    /// the workloads its selector picks, or to all).
    pub root_namespace: bool,
    /// Labels selecting workloads in the policy's namespace; `None`: all.
    pub selector: Option<Labels>,
    /// ALLOW, DENY or AUDIT.
    pub action: AuthzAction,
    /// Rules (OR); empty matches nothing.
    pub rules: Vec<Rule>,
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

    /// The index of the first rule that matches the request.
    pub fn matching_rule(&self, req: &AuthzRequest<'_>) -> Option<usize> {
        self.rules.iter().position(|r| rule_matches(r, req))
    }
}

/// What authorization looks at.
#[derive(Clone, Copy)]
pub struct AuthzRequest<'a> {
    /// The verified peer identity; `None` for plaintext.
    pub peer: Option<&'a SpiffeId>,
    /// The peer's address.
    pub source_ip: Option<IpAddr>,
    /// The address the request arrived at.
    pub destination_ip: Option<IpAddr>,
    /// The workload port the request arrived at.
    pub destination_port: u16,
    /// Host header.
    pub host: &'a str,
    /// Method.
    pub method: &'a str,
    /// The normalised path, without the query.
    pub path: &'a str,
    /// Request headers (absent for TCP).
    pub headers: Option<&'a dyn HeaderLookup>,
}

impl std::fmt::Debug for AuthzRequest<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthzRequest")
            .field("peer", &self.peer)
            .field("method", &self.method)
            .field("path", &self.path)
            .field("port", &self.destination_port)
            .finish_non_exhaustive()
    }
}

/// The outcome, naming the policy and rule that decided it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuthzDecision {
    /// Let the request through?
    pub allowed: bool,
    /// The deciding policy, if any.
    pub policy: Option<ResourceRef>,
    /// The deciding rule's index within the policy.
    pub rule: Option<usize>,
    /// Why, in words fit for a response header.
    pub reason: String,
}

/// Decides a request against the policies that apply to the workload.
pub fn evaluate<'p>(
    policies: impl IntoIterator<Item = &'p AuthzPolicy> + Clone,
    req: &AuthzRequest<'_>,
) -> AuthzDecision {
    let of = |action| {
        policies
            .clone()
            .into_iter()
            .filter(move |p| p.action == action)
    };
    for p in of(AuthzAction::Deny) {
        if let Some(rule) = p.matching_rule(req) {
            return AuthzDecision {
                allowed: false,
                policy: Some(p.source.clone()),
                rule: Some(rule),
                reason: format!("denied by {} rule {rule}", p.source),
            };
        }
    }
    let mut any_allow = false;
    for p in of(AuthzAction::Allow) {
        any_allow = true;
        if let Some(rule) = p.matching_rule(req) {
            return AuthzDecision {
                allowed: true,
                policy: Some(p.source.clone()),
                rule: Some(rule),
                reason: format!("allowed by {} rule {rule}", p.source),
            };
        }
    }
    if any_allow {
        AuthzDecision {
            allowed: false,
            policy: None,
            rule: None,
            reason: "no ALLOW policy matched".to_owned(),
        }
    } else {
        AuthzDecision {
            allowed: true,
            policy: None,
            rule: None,
            reason: "no ALLOW policy applies".to_owned(),
        }
    }
}

fn rule_matches(rule: &Rule, req: &AuthzRequest<'_>) -> bool {
    (rule.from.is_empty() || rule.from.iter().any(|f| source_matches(&f.source, req)))
        && (rule.to.is_empty() || rule.to.iter().any(|t| operation_matches(&t.operation, req)))
        && rule.when.iter().all(|c| condition_holds(c, req))
}

/// Matches Istio's string values: exact, `*`, `prefix*`, `*suffix`.
pub fn wildcard_match(pattern: &str, value: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    if let Some(prefix) = pattern.strip_suffix('*') {
        return value.starts_with(prefix);
    }
    if let Some(suffix) = pattern.strip_prefix('*') {
        return value.ends_with(suffix);
    }
    pattern == value
}

/// Positive list: empty means "no constraint"; otherwise some value must
/// match a present attribute. Negative list: no value may match.
fn list(
    values: &[String],
    not_values: &[String],
    attr: Option<&str>,
    f: impl Fn(&str, &str) -> bool,
) -> bool {
    let pos = values.is_empty() || attr.is_some_and(|a| values.iter().any(|v| f(v, a)));
    let neg = not_values.is_empty() || !attr.is_some_and(|a| not_values.iter().any(|v| f(v, a)));
    pos && neg
}

fn source_matches(s: &Source, req: &AuthzRequest<'_>) -> bool {
    let principal = req.peer.map(SpiffeId::principal);
    let namespace = req.peer.and_then(SpiffeId::namespace);
    let ip = |blocks: &[String]| {
        req.source_ip.is_some_and(|ip| {
            blocks
                .iter()
                .any(|b| IpBlock::parse(b).is_some_and(|b| b.contains(ip)))
        })
    };
    list(
        &s.principals,
        &s.not_principals,
        principal.as_deref(),
        wildcard_match,
    ) && list(&s.namespaces, &s.not_namespaces, namespace, wildcard_match)
        && (s.ip_blocks.is_empty() || ip(&s.ip_blocks))
        && (s.not_ip_blocks.is_empty() || !ip(&s.not_ip_blocks))
}

fn host_match(pattern: &str, host: &str) -> bool {
    let p = pattern.to_ascii_lowercase();
    let h = host.to_ascii_lowercase();
    wildcard_match(&p, &h)
        || h.rsplit_once(':')
            .is_some_and(|(name, _)| wildcard_match(&p, name))
}

fn operation_matches(o: &Operation, req: &AuthzRequest<'_>) -> bool {
    let port = req.destination_port.to_string();
    list(&o.hosts, &o.not_hosts, Some(req.host), host_match)
        && list(&o.ports, &o.not_ports, Some(&port), |v, a| v == a)
        && list(&o.methods, &o.not_methods, Some(req.method), wildcard_match)
        && list(&o.paths, &o.not_paths, Some(req.path), wildcard_match)
}

fn condition_holds(c: &Condition, req: &AuthzRequest<'_>) -> bool {
    let ip_in = |ip: Option<IpAddr>, vals: &[String]| {
        ip.is_some_and(|ip| {
            vals.iter()
                .any(|v| IpBlock::parse(v).is_some_and(|b| b.contains(ip)))
        })
    };
    match c.key.as_str() {
        "source.ip" => {
            (c.values.is_empty() || ip_in(req.source_ip, &c.values))
                && (c.not_values.is_empty() || !ip_in(req.source_ip, &c.not_values))
        }
        "destination.ip" => {
            (c.values.is_empty() || ip_in(req.destination_ip, &c.values))
                && (c.not_values.is_empty() || !ip_in(req.destination_ip, &c.not_values))
        }
        "destination.port" => {
            let port = req.destination_port.to_string();
            list(&c.values, &c.not_values, Some(&port), |v, a| v == a)
        }
        "source.principal" => {
            let p = req.peer.map(SpiffeId::principal);
            list(&c.values, &c.not_values, p.as_deref(), wildcard_match)
        }
        "source.namespace" => list(
            &c.values,
            &c.not_values,
            req.peer.and_then(SpiffeId::namespace),
            wildcard_match,
        ),
        key => match key
            .strip_prefix("request.headers[")
            .and_then(|k| k.strip_suffix(']'))
        {
            Some(name) => {
                let v = req.headers.and_then(|h| h.header(name));
                list(&c.values, &c.not_values, v, wildcard_match)
            }
            // Validation refuses other keys; a key that slipped through
            // never matches, and for DENY that is caught by validation only,
            // so the loader is what keeps this closed.
            None => false,
        },
    }
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
