//! Route matching and weighted choice, as VirtualService defines them: rules
//! in order, first match wins; within a rule, any `match` entry may match
//! (OR), and every field of an entry must hold (AND).

use std::sync::Arc;

use regex::Regex;
use serde::{Serialize, Serializer};

use crate::resources::common::{Labels, StringMatch, labels_match};
use crate::resources::networking::{
    Headers, HttpDirectResponse, HttpFaultInjection, HttpRedirect, HttpRetry, HttpRewrite,
};
use crate::resources::{Duration, ResourceRef};

/// Compiles a VirtualService regex with RE2's whole-string semantics.
pub fn compile_regex(re: &str) -> Result<Regex, regex::Error> {
    regex::RegexBuilder::new(&format!("^(?:{re})$"))
        .size_limit(1 << 20)
        .build()
}

/// A compiled string match.
#[derive(Debug, Clone)]
pub enum Matcher {
    /// Whole value.
    Exact(String),
    /// Leading part.
    Prefix(String),
    /// Whole value against a regex.
    Regex(Regex),
}

impl Matcher {
    /// Compiles a [`StringMatch`]; the regex was checked by validation.
    pub fn new(m: &StringMatch) -> Result<Self, regex::Error> {
        Ok(match m {
            StringMatch::Exact(s) => Self::Exact(s.clone()),
            StringMatch::Prefix(s) => Self::Prefix(s.clone()),
            StringMatch::Regex(r) => Self::Regex(compile_regex(r)?),
        })
    }

    /// Does `value` match?
    pub fn matches(&self, value: &str) -> bool {
        match self {
            Self::Exact(s) => value == s,
            Self::Prefix(s) => value.starts_with(s.as_str()),
            Self::Regex(r) => r.is_match(value),
        }
    }

    fn matches_ignore_case(&self, value: &str) -> bool {
        match self {
            Self::Exact(s) => value.eq_ignore_ascii_case(s),
            Self::Prefix(s) => value
                .get(..s.len())
                .is_some_and(|p| p.eq_ignore_ascii_case(s)),
            Self::Regex(r) => r.is_match(&value.to_ascii_lowercase()) || r.is_match(value),
        }
    }
}

impl Serialize for Matcher {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(1))?;
        match self {
            Self::Exact(v) => m.serialize_entry("exact", v)?,
            Self::Prefix(v) => m.serialize_entry("prefix", v)?,
            Self::Regex(r) => {
                let src = r.as_str();
                let inner = src
                    .strip_prefix("^(?:")
                    .and_then(|x| x.strip_suffix(")$"))
                    .unwrap_or(src);
                m.serialize_entry("regex", inner)?
            }
        }
        m.end()
    }
}

/// Read access to request headers, by lowercase name.
pub trait HeaderLookup {
    /// The first value of the header, if present.
    fn header(&self, name: &str) -> Option<&str>;
}

impl HeaderLookup for Vec<(String, String)> {
    fn header(&self, name: &str) -> Option<&str> {
        self.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What route matching looks at.
#[derive(Clone, Copy)]
pub struct RequestInfo<'a> {
    /// Method, `GET`.
    pub method: &'a str,
    /// Path and query, `/wp-login.php?x=1`.
    pub path_and_query: &'a str,
    /// Host or :authority.
    pub authority: &'a str,
    /// `http` or `https`.
    pub scheme: &'a str,
    /// The service port the request was sent to.
    pub port: u16,
    /// Request headers.
    pub headers: &'a dyn HeaderLookup,
    /// The calling workload's labels (empty when unknown).
    pub source_labels: &'a Labels,
    /// The calling workload's namespace, when known.
    pub source_namespace: Option<&'a str>,
    /// The gateway (`namespace/name`) the request came through; `None` for
    /// mesh traffic.
    pub gateway: Option<&'a str>,
    /// The identity of the request's validated JWT, for the
    /// `@request.auth.claims.NAME` matches of gateway routes (the gateway
    /// authenticates before it routes); `None`: no token.
    pub auth: Option<&'a crate::jwt::RequestAuth>,
}

impl std::fmt::Debug for RequestInfo<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestInfo")
            .field("method", &self.method)
            .field("path_and_query", &self.path_and_query)
            .field("authority", &self.authority)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl RequestInfo<'_> {
    fn path(&self) -> &str {
        self.path_and_query
            .split_once('?')
            .map_or(self.path_and_query, |(p, _)| p)
    }

    fn query_param(&self, name: &str) -> Option<&str> {
        let (_, query) = self.path_and_query.split_once('?')?;
        query.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k == name).then_some(v)
        })
    }
}

/// One compiled `match` entry.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RouteMatch {
    /// The entry's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Path matcher.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uri: Option<Matcher>,
    /// Compare the path ignoring ASCII case.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub ignore_uri_case: bool,
    /// Scheme matcher.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheme: Option<Matcher>,
    /// Method matcher.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<Matcher>,
    /// Authority matcher.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authority: Option<Matcher>,
    /// Header matchers, lowercase names.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<(String, Matcher)>,
    /// Headers that must not match.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub without_headers: Vec<(String, Matcher)>,
    /// Query parameter matchers.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub query_params: Vec<(String, Matcher)>,
    /// Service port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Caller labels.
    #[serde(skip_serializing_if = "Labels::is_empty")]
    pub source_labels: Labels,
    /// Caller namespace.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_namespace: Option<String>,
    /// Gateways (`namespace/name` or `mesh`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,
}

impl RouteMatch {
    /// Does the request satisfy every field of this entry?
    pub fn matches(&self, req: &RequestInfo<'_>) -> bool {
        let opt = |m: &Option<Matcher>, v: &str| m.as_ref().is_none_or(|m| m.matches(v));
        let uri_ok = self.uri.as_ref().is_none_or(|m| {
            if self.ignore_uri_case {
                m.matches_ignore_case(req.path())
            } else {
                m.matches(req.path())
            }
        });
        uri_ok
            && opt(&self.scheme, req.scheme)
            && opt(&self.method, req.method)
            && opt(&self.authority, req.authority)
            && self.headers.iter().all(|(k, m)| header_or_claim(req, k, m))
            && !self
                .without_headers
                .iter()
                .any(|(k, m)| header_or_claim(req, k, m))
            && self
                .query_params
                .iter()
                .all(|(k, m)| req.query_param(k).is_some_and(|v| m.matches(v)))
            && self.port.is_none_or(|p| p == req.port)
            && labels_match(&self.source_labels, req.source_labels)
            && self
                .source_namespace
                .as_deref()
                .is_none_or(|ns| req.source_namespace == Some(ns))
            && (self.gateways.is_empty()
                || self.gateways.iter().any(|g| {
                    Some(g.as_str()) == req.gateway || (g == "mesh" && req.gateway.is_none())
                }))
    }
}

/// The prefix of Istio's pseudo-headers for JWT claims in route matches:
/// `@request.auth.claims.groups`, nested as `@request.auth.claims.a.b`.
/// `@` is no header-name character, so no request header can pose as one.
pub const CLAIM_MATCH_PREFIX: &str = "@request.auth.claims.";

/// The claim path of a claim match key (`None` for a header, or a key
/// that names no claim).
pub fn claim_match_path(key: &str) -> Option<Vec<String>> {
    let rest = key.strip_prefix(CLAIM_MATCH_PREFIX)?;
    let path: Vec<String> = rest.split('.').map(str::to_owned).collect();
    path.iter().all(|p| !p.is_empty()).then_some(path)
}

/// A header matcher, or for a claim key, the request's validated claim:
/// any of its values (a list claim's elements) may match; no token or no
/// such claim is no match.
fn header_or_claim(req: &RequestInfo<'_>, key: &str, m: &Matcher) -> bool {
    match claim_match_path(key) {
        Some(path) => req
            .auth
            .is_some_and(|a| a.claim(&path).iter().any(|v| m.matches(v))),
        None => req.headers.header(key).is_some_and(|v| m.matches(v)),
    }
}

/// A destination with its resolved host and weight.
#[derive(Debug, Clone, Serialize)]
pub struct WeightedDestination {
    /// Fully qualified host.
    pub host: String,
    /// Subset name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subset: Option<String>,
    /// Service port, when given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Share of traffic (100 for a lone destination without weight).
    pub weight: u32,
    /// Header changes for this destination.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub headers: Option<Headers>,
}

/// What a rule does with a matching request.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum RouteAction {
    /// Forward to one of these destinations, by weight.
    Forward(Vec<WeightedDestination>),
    /// Answer with a redirect.
    Redirect(HttpRedirect),
    /// Answer directly.
    DirectResponse(HttpDirectResponse),
}

/// A compiled HTTP rule.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteRule {
    /// The VirtualService it came from.
    pub source: ResourceRef,
    /// Its index in `spec.http`.
    pub index: usize,
    /// Its name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Match entries (OR); empty matches everything.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<RouteMatch>,
    /// The action.
    pub action: RouteAction,
    /// Whole-request timeout.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Retry policy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retries: Option<HttpRetry>,
    /// Fault injection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fault: Option<HttpFaultInjection>,
    /// Mirror destination.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mirror: Option<WeightedDestination>,
    /// Share mirrored, 0-100.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mirror_percent: Option<f64>,
    /// Header changes of the rule.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub headers: Option<Headers>,
    /// Rewrite before forwarding.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<HttpRewrite>,
    /// `websocketUpgrade`: `Some(false)` forwards upgrade requests as plain
    /// ones; upgrades pass otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub websocket_upgrade: Option<bool>,
    /// The rule's CORS policy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cors: Option<Cors>,
}

/// A route's `corsPolicy`, compiled: the header values it answers with,
/// joined once.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Cors {
    /// Origins allowed.
    pub origins: Vec<Matcher>,
    /// `Access-Control-Allow-Methods`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_methods: Option<String>,
    /// `Access-Control-Allow-Headers`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_headers: Option<String>,
    /// `Access-Control-Expose-Headers`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expose_headers: Option<String>,
    /// `Access-Control-Max-Age`, in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_age: Option<u64>,
    /// `Access-Control-Allow-Credentials: true`.
    pub allow_credentials: bool,
    /// A preflight from an origin not allowed goes on to the destination
    /// (`FORWARD`, the default) rather than being answered without CORS
    /// headers (`IGNORE`).
    pub forward_unmatched_preflights: bool,
}

impl Cors {
    /// Compiles `p`; a regex was checked by validation.
    pub fn new(p: &crate::resources::networking::CorsPolicy) -> Result<Self, regex::Error> {
        use crate::resources::networking::UnmatchedPreflights;
        let mut origins = p
            .allow_origins
            .iter()
            .map(Matcher::new)
            .collect::<Result<Vec<_>, _>>()?;
        if p.allow_origins.is_empty() {
            // The deprecated `allowOrigin`: exact origins, `*` for any.
            origins = p
                .allow_origin
                .iter()
                .map(|o| {
                    if o == "*" {
                        Matcher::Prefix(String::new())
                    } else {
                        Matcher::Exact(o.clone())
                    }
                })
                .collect();
        }
        let join = |v: &[String]| (!v.is_empty()).then(|| v.join(","));
        Ok(Self {
            origins,
            allow_methods: join(&p.allow_methods),
            allow_headers: join(&p.allow_headers),
            expose_headers: join(&p.expose_headers),
            max_age: p.max_age.map(|d| d.0.as_secs()),
            allow_credentials: p.allow_credentials == Some(true),
            forward_unmatched_preflights: p.unmatched_preflights
                != Some(UnmatchedPreflights::Ignore),
        })
    }

    /// Whether `origin` (the request's `Origin`, as sent) is allowed.
    pub fn allows(&self, origin: &str) -> bool {
        self.origins.iter().any(|m| m.matches(origin))
    }
}

impl HttpRouteRule {
    /// Does the rule apply to the request? Returns the index of the match
    /// entry that did (0 for a rule without entries).
    pub fn matches(&self, req: &RequestInfo<'_>) -> Option<usize> {
        if self.matches.is_empty() {
            return Some(0);
        }
        self.matches.iter().position(|m| m.matches(req))
    }

    /// `VirtualService ns/name http[i]` plus the rule name, for logs.
    pub fn describe(&self) -> String {
        match &self.name {
            Some(n) => format!("{} http[{}] \"{n}\"", self.source, self.index),
            None => format!("{} http[{}]", self.source, self.index),
        }
    }
}

/// The first rule that matches, with the index of the rule and of the match
/// entry that decided it.
pub fn first_match<'r>(
    rules: &'r [Arc<HttpRouteRule>],
    req: &RequestInfo<'_>,
) -> Option<(usize, usize, &'r Arc<HttpRouteRule>)> {
    rules
        .iter()
        .enumerate()
        .find_map(|(i, r)| r.matches(req).map(|m| (i, m, r)))
}

/// Chooses a destination by weight from a uniformly random `roll`. A weight
/// of 0 is never chosen; `None` when every weight is 0.
///
/// ```
/// use mesh_core::route::pick_weighted;
/// let weights = [90, 10];
/// assert_eq!(pick_weighted(&weights, 0), Some(0));
/// assert_eq!(pick_weighted(&weights, 89), Some(0));
/// assert_eq!(pick_weighted(&weights, 90), Some(1));
/// assert_eq!(pick_weighted(&[0, 0], 5), None);
/// ```
pub fn pick_weighted(weights: &[u32], roll: u64) -> Option<usize> {
    let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
    if total == 0 {
        return None;
    }
    let mut point = roll % total;
    for (i, w) in weights.iter().enumerate() {
        let w = u64::from(*w);
        if point < w {
            return Some(i);
        }
        point -= w;
    }
    None
}
