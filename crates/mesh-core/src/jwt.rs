//! Request authentication with JWTs, as Istio's `RequestAuthentication`
//! defines it, decided here without any I/O: the data plane fetches the
//! issuers' key sets (`jwksUri`) and hands them in.
//!
//! Istio's semantics, which [`authenticate`] keeps:
//!
//! - A request **without a token** passes authentication with no request
//!   principal; an AuthorizationPolicy decides whether that is enough
//!   (`requestPrincipals: ["*"]` requires a valid token).
//! - A request **with a token** that fails any check is refused (the data
//!   plane answers 401 with the reason): a bad signature, an expired token
//!   (60 s of clock skew allowed, as Envoy), one not yet valid, an audience
//!   not listed, an issuer no rule names (Envoy's fix of
//!   envoyproxy/envoy#15194: a wrong issuer is no "missing" token), a key
//!   id the issuer's key set lacks. Every token found is checked, so a good
//!   token beside a bad one does not carry the bad one through.
//! - Tokens are read from each rule's locations (`fromHeaders`,
//!   `fromParams`, `fromCookies`), by default `Authorization: Bearer` and
//!   the `access_token` query parameter. A header prefix is compared
//!   ignoring ASCII case (`bearer x` is a token too): a token the mesh did
//!   not see would reach the application unchecked.
//! - A token is checked against the rule of its (unverified) `iss`, and
//!   only where that rule reads tokens.
//!
//! Signatures: RS256/384/512, PS256/384/512, ES256, ES384 and EdDSA, through
//! a [`jsonwebtoken`] crypto provider written here on `ring` (the one crypto
//! library the mesh already carries for rustls). HMAC (`HS*`) is refused: a
//! shared secret in a key set is no public key, and accepting it opens the
//! RSA-key-as-HMAC-secret confusion.
//!
//! ```
//! use mesh_core::jwt::{JwtKeys, sign_for_test};
//!
//! let (pkcs8, jwks) = mesh_core::jwt::test_es256_key("k1").expect("key");
//! let keys = JwtKeys::parse(&jwks)?;
//! let token = sign_for_test(
//!     mesh_core::jwt::Algorithm::ES256,
//!     Some("k1"),
//!     &pkcs8,
//!     &serde_json::json!({"iss": "https://idp.example", "sub": "alice", "exp": 4_000_000_000u64}),
//! )
//! .expect("sign");
//! let auth = mesh_core::jwt::verify_token(&token, "https://idp.example", &[], &keys, &[])
//!     .expect("valid");
//! assert_eq!(auth.principal.as_deref(), Some("https://idp.example/alice"));
//! # Ok::<(), String>(())
//! ```

use std::borrow::Cow;
use std::sync::{Arc, Once};
use std::time::Duration;

use jsonwebtoken::crypto::{CryptoProvider, JwtSigner, JwtVerifier, KeyUtils};
use jsonwebtoken::errors::{Error as JwtLibError, ErrorKind};
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{DecodingKey, DecodingKeyKind, EncodingKey, Validation};
use serde::Serialize;
use serde_json::Value;

use crate::authz::HeaderValues;

use crate::resources::ResourceRef;
use crate::resources::common::Labels;
/// The signature algorithms, as tokens name them (`alg`).
pub use jsonwebtoken::Algorithm;

/// How long fetching a `jwksUri` may take when the rule does not say
/// (Istio's default).
pub const DEFAULT_JWKS_TIMEOUT: Duration = Duration::from_secs(5);

/// Clock skew allowed on `exp` and `nbf` (Envoy's default).
pub const CLOCK_SKEW_SECS: u64 = 60;

/// A compiled RequestAuthentication.
#[derive(Debug, Clone, Serialize)]
pub struct JwtPolicy {
    /// Where it came from.
    pub source: ResourceRef,
    /// Lives in the root namespace: applies in every namespace.
    pub root_namespace: bool,
    /// Labels selecting workloads in its namespace; `None`: all.
    pub selector: Option<Labels>,
    /// One per issuer.
    pub rules: Vec<Arc<JwtRule>>,
}

impl JwtPolicy {
    /// Does the policy apply to a workload of `namespace` with `labels`?
    pub fn applies_to(&self, namespace: &str, labels: &Labels) -> bool {
        (self.root_namespace || self.source.namespace == namespace)
            && self
                .selector
                .as_ref()
                .is_none_or(|s| crate::resources::common::labels_match(s, labels))
    }
}

/// One issuer's rule, compiled.
#[derive(Debug, Clone, Serialize)]
pub struct JwtRule {
    /// The RequestAuthentication it belongs to.
    pub source: ResourceRef,
    /// The `iss` it is for.
    pub issuer: String,
    /// Accepted audiences (any); empty: `aud` is not checked.
    pub audiences: Vec<String>,
    /// Where its keys come from.
    pub keys: KeySource,
    /// Where its tokens are read.
    pub locations: Vec<TokenLocation>,
    /// Leave the token in the request (else its header is removed).
    pub forward_original_token: bool,
    /// `presence: REQUIRED`: a request without a token of this issuer is
    /// refused (401), not let through without a principal.
    pub required: bool,
    /// The header (lowercase) that carries the payload upstream.
    pub output_payload_to_header: Option<String>,
    /// `(header, claim path)`: claims copied into headers (lowercase names).
    pub output_claim_to_headers: Vec<(String, Vec<String>)>,
    /// Claims (dotted paths) whose string value is a space-separated list.
    pub space_delimited_claims: Vec<String>,
    /// How long a key-set fetch may take.
    #[serde(with = "duration_secs")]
    pub timeout: Duration,
}

mod duration_secs {
    pub(super) fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}

/// Where a rule's keys come from.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// `jwks`, parsed when the configuration was compiled.
    Inline(Arc<JwtKeys>),
    /// `jwksUri`: the data plane fetches and refreshes it.
    Uri(String),
}

impl Serialize for KeySource {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Inline(k) => s.serialize_str(&format!("inline ({} keys)", k.len())),
            Self::Uri(u) => s.serialize_str(u),
        }
    }
}

/// Where a token is read.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub enum TokenLocation {
    /// A header (lowercase name) whose value starts with `prefix` (compared
    /// ignoring ASCII case).
    Header {
        /// The header.
        name: String,
        /// What precedes the token.
        prefix: String,
    },
    /// A query parameter.
    Param(String),
    /// A cookie.
    Cookie(String),
}

impl TokenLocation {
    /// Istio's defaults when a rule names no location.
    pub fn defaults() -> Vec<Self> {
        vec![
            Self::Header {
                name: "authorization".to_owned(),
                prefix: "Bearer ".to_owned(),
            },
            Self::Param("access_token".to_owned()),
        ]
    }
}

impl std::fmt::Display for TokenLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Header { name, .. } => write!(f, "header {name}"),
            Self::Param(p) => write!(f, "query parameter {p}"),
            Self::Cookie(c) => write!(f, "cookie {c}"),
        }
    }
}

/// Why a token was refused, in Envoy's words (what Istio users see in the
/// 401 body and search for).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// Not three base64url parts, or a header or payload that is no JSON.
    #[error("Jwt is not in the form of Header.Payload.Signature")]
    Malformed,
    /// No rule names the token's `iss`.
    #[error("Jwt issuer is not configured")]
    UnknownIssuer,
    /// The token was found where its issuer's rule does not read tokens.
    #[error("Jwt issuer is not configured for the token's location ({0})")]
    WrongLocation(String),
    /// `exp` is past.
    #[error("Jwt is expired")]
    Expired,
    /// `nbf` is ahead.
    #[error("Jwt not yet valid")]
    NotYetValid,
    /// `aud` names none of the rule's audiences.
    #[error("Audiences in Jwt are not allowed")]
    Audience,
    /// The signature does not verify.
    #[error("Jwt verification fails")]
    Signature,
    /// The key set has no key for the token's `kid` and `alg`.
    #[error("Jwks doesn't have key to match kid or alg from Jwt")]
    NoKey,
    /// The `alg` is not one this mesh verifies.
    #[error("Jwt alg {0} is not supported")]
    Algorithm(String),
    /// The issuer's key set could not be fetched (and none was kept).
    #[error("Jwks remote fetch is failed: {0}")]
    KeysUnavailable(String),
    /// A claim the mesh reads has the wrong type (`iss`, `sub`, `exp`...).
    #[error("Jwt claim {0} is malformed")]
    Claim(String),
    /// The request carries more than one token, and they differ.
    #[error("Jwt: the request carries more than one token")]
    SeveralTokens,
    /// A rule with `presence: REQUIRED` found no token of its issuer.
    #[error("Jwt is missing")]
    Missing,
}

/// The identity a validated token gives the request.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RequestAuth {
    /// `<iss>/<sub>`: what `requestPrincipals` match; `None` for a token
    /// without `sub` (Istio gives it no principal either, so
    /// `requestPrincipals: ["*"]` does not admit it).
    pub principal: Option<String>,
    /// `aud`, one or many.
    pub audiences: Vec<String>,
    /// `azp`.
    pub presenter: Option<String>,
    /// Every claim.
    pub claims: serde_json::Map<String, Value>,
    /// Claims read as space-separated lists (dotted paths).
    #[serde(skip)]
    space_delimited: Vec<String>,
}

impl RequestAuth {
    /// The values of a claim at `path` (`["groups"]`, `["a", "b"]` for
    /// nested): a string (split at spaces for a space-delimited claim,
    /// `scope` and `permission` among them as in Istio), each string of a
    /// list, and booleans and numbers as JSON writes them. Empty when the
    /// claim is absent or an object.
    pub fn claim(&self, path: &[String]) -> Vec<String> {
        let Some((first, rest)) = path.split_first() else {
            return Vec::new();
        };
        let mut v = self.claims.get(first.as_str());
        for p in rest {
            v = v.and_then(|v| v.get(p.as_str()));
        }
        let dotted = path.join(".");
        let split = self.space_delimited.contains(&dotted)
            || (path.len() == 1 && matches!(first.as_str(), "scope" | "permission"));
        let mut out = Vec::new();
        let mut push = |v: &Value| match v {
            Value::String(s) if split => {
                out.extend(s.split(' ').filter(|p| !p.is_empty()).map(str::to_owned))
            }
            Value::String(s) => out.push(s.clone()),
            Value::Bool(b) => out.push(b.to_string()),
            Value::Number(n) => out.push(n.to_string()),
            _ => {}
        };
        match v {
            Some(Value::Array(items)) => items.iter().for_each(&mut push),
            Some(v) => push(v),
            None => {}
        }
        out
    }
}

/// Parses the bracketed claim path of `request.auth.claims[a][b]` (given
/// `[a][b]`): `None` if it is not one or more non-empty `[name]`s.
pub fn claim_path(s: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = s;
    while !rest.is_empty() {
        let inner = rest.strip_prefix('[')?;
        let end = inner.find(']')?;
        let name = &inner[..end];
        if name.is_empty() || name.contains('[') {
            return None;
        }
        out.push(name.to_owned());
        rest = &inner[end + 1..];
    }
    (!out.is_empty()).then_some(out)
}

/// Checks a `jwksUri`: an absolute http or https URL with a host, no
/// whitespace or control characters.
pub fn jwks_uri(uri: &str) -> Result<(), String> {
    let rest = uri
        .strip_prefix("https://")
        .or_else(|| uri.strip_prefix("http://"))
        .ok_or("url must have scheme http or https")?;
    if uri.bytes().any(|b| b <= b' ' || b == 0x7f || b == b'\\') {
        return Err("url has whitespace, a control character or a backslash".to_owned());
    }
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
    if host.is_empty() || host.starts_with(':') {
        return Err("url must have a host".to_owned());
    }
    Ok(())
}

/// The path of an OpenID provider's discovery document (OpenID Connect
/// Discovery 1.0, 4).
pub const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";

/// Where the keys of a rule with neither `jwks` nor `jwksUri` are found,
/// as Istio finds them: the issuer's OpenID discovery document, whose
/// `jwks_uri` names the key set. An issuer that is no http(s) URL
/// (`example.com`, `a@b`) gives an address no fetch can use, so every
/// token of that issuer is refused (401), as Istio refuses them;
/// [`discoverable`] tells `check` to warn.
pub fn discovery_uri(issuer: &str) -> String {
    format!("{}{DISCOVERY_PATH}", issuer.trim_end_matches('/'))
}

/// Can the keys of this rule be fetched at all (its key-set address is an
/// http(s) URL)? `Err` says why not.
pub fn discoverable(rule: &JwtRule) -> Result<(), String> {
    match &rule.keys {
        KeySource::Inline(_) => Ok(()),
        KeySource::Uri(u) => jwks_uri(u),
    }
}

/// An issuer's key set, with each key ready to verify.
#[derive(Clone)]
pub struct JwtKeys {
    keys: Vec<Key>,
}

#[derive(Clone)]
struct Key {
    kid: Option<String>,
    /// The key's `alg`, if it names one.
    alg: Option<Algorithm>,
    key: DecodingKey,
}

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.keys.iter().map(|k| k.kid.as_deref().unwrap_or("-")))
            .finish()
    }
}

impl JwtKeys {
    /// Reads a JSON Web Key Set. Keys this mesh cannot verify with (HMAC
    /// secrets, encryption keys, unknown types) are skipped; a set left
    /// with none is refused, as Envoy refuses it.
    pub fn parse(json: &str) -> Result<Self, String> {
        let set: JwkSet =
            serde_json::from_str(json).map_err(|e| format!("not a JSON Web Key Set: {e}"))?;
        let mut keys = Vec::with_capacity(set.keys.len());
        for jwk in &set.keys {
            if matches!(
                jwk.algorithm,
                AlgorithmParameters::OctetKey(_) | AlgorithmParameters::Other(_)
            ) || jwk
                .common
                .public_key_use
                .as_ref()
                .is_some_and(|u| *u != jsonwebtoken::jwk::PublicKeyUse::Signature)
            {
                continue;
            }
            let alg = jwk
                .common
                .key_algorithm
                .and_then(|a| format!("{a:?}").parse::<Algorithm>().ok());
            let Ok(key) = DecodingKey::from_jwk(jwk) else {
                continue;
            };
            keys.push(Key {
                kid: jwk.common.key_id.clone(),
                alg,
                key,
            });
        }
        if keys.is_empty() {
            return Err("the key set has no public key this mesh can verify with (RSA, EC P-256/P-384 or Ed25519)".to_owned());
        }
        Ok(Self { keys })
    }

    /// How many usable keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// No usable keys (never, for a parsed set).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Does a key carry this `kid`?
    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }

    /// The keys that may have signed a token of `alg` and `kid`: the ones
    /// of that `kid` (all when the token names none) of the algorithm's
    /// family, whose own `alg`, if any, is `alg`.
    fn candidates(&self, kid: Option<&str>, alg: Algorithm) -> impl Iterator<Item = &DecodingKey> {
        self.keys
            .iter()
            // A key without `kid` may have signed any token (Envoy tries
            // it too).
            .filter(move |k| kid.is_none_or(|kid| k.kid.as_deref().is_none_or(|own| own == kid)))
            .filter(move |k| k.alg.is_none_or(|a| a == alg) && k.key.family() == alg.family())
            .map(|k| &k.key)
    }
}

/// A token found in a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundToken {
    /// The token.
    pub token: String,
    /// Where it was.
    pub location: TokenLocation,
}

/// What authentication made of a request.
#[derive(Debug, Clone, Default)]
pub struct Authenticated {
    /// The request's identity: the first token's (`None`: no token).
    pub auth: Option<Arc<RequestAuth>>,
    /// Each token and the rule that validated it, for the data plane to
    /// strip tokens and write the rules' output headers.
    pub tokens: Vec<(FoundToken, Arc<JwtRule>, Arc<RequestAuth>)>,
}

/// Tokens verified already, so a client that sends the same token on
/// every request pays for one signature check, not one per request (Envoy
/// keeps such a cache too). An entry counts only for the very rule and key
/// set it was verified with (the same `Arc`s, held by the entry so their
/// addresses cannot be reused): a reload, a rotated key set or a removed
/// key means verifying again. `exp` and `nbf` are checked on every use.
/// Bounded: when full, it starts over.
#[derive(Debug)]
pub struct TokenCache {
    entries: std::sync::Mutex<std::collections::HashMap<String, Verified>>,
    capacity: usize,
}

#[derive(Debug, Clone)]
struct Verified {
    rule: Arc<JwtRule>,
    keys: Arc<JwtKeys>,
    auth: Arc<RequestAuth>,
    exp: Option<u64>,
    nbf: Option<u64>,
}

impl Verified {
    /// The identity, if this entry was verified with `rule` and `keys` and
    /// its time window still holds.
    fn fresh(&self, rule: &Arc<JwtRule>, keys: &Arc<JwtKeys>) -> Option<Arc<RequestAuth>> {
        let now = jsonwebtoken::get_current_timestamp();
        (Arc::ptr_eq(&self.rule, rule)
            && Arc::ptr_eq(&self.keys, keys)
            && self
                .exp
                .is_none_or(|exp| now <= exp.saturating_add(CLOCK_SKEW_SECS))
            && self
                .nbf
                .is_none_or(|nbf| now.saturating_add(CLOCK_SKEW_SECS) >= nbf))
        .then(|| self.auth.clone())
    }
}

impl TokenCache {
    /// A cache of at most `capacity` tokens.
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: std::sync::Mutex::new(std::collections::HashMap::new()),
            capacity,
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Verified>> {
        // Every update is one insert or clear: a poisoned map is sound.
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn lookup(&self, token: &str) -> Option<Verified> {
        self.entries().get(token).cloned()
    }

    fn put(&self, token: &str, rule: &Arc<JwtRule>, keys: &Arc<JwtKeys>, auth: &Arc<RequestAuth>) {
        let number = |name: &str| auth.claims.get(name).and_then(Value::as_u64);
        let mut entries = self.entries();
        if entries.len() >= self.capacity {
            entries.clear();
        }
        entries.insert(
            token.to_owned(),
            Verified {
                rule: rule.clone(),
                keys: keys.clone(),
                auth: auth.clone(),
                exp: number("exp"),
                nbf: number("nbf"),
            },
        );
    }
}

/// The key set of a rule, as the data plane holds it.
#[derive(Debug, Clone)]
pub enum KeyLookup {
    /// Keys to verify with.
    Keys(Arc<JwtKeys>),
    /// None: fetching failed or has not finished.
    Unavailable(String),
}

/// Finds the tokens of a request in the locations of `rules` (each
/// location once): header values with their prefix cut, query parameters
/// (percent-decoded), cookies.
pub fn find_tokens(
    rules: &[Arc<JwtRule>],
    headers: &dyn HeaderValues,
    query: Option<&str>,
) -> Vec<FoundToken> {
    let mut locations: Vec<&TokenLocation> = Vec::new();
    for l in rules.iter().flat_map(|r| &r.locations) {
        if !locations.contains(&l) {
            locations.push(l);
        }
    }
    let mut out = Vec::new();
    let mut push = |token: &str, location: &TokenLocation| {
        let token = token.trim_matches([' ', '\t']);
        if !token.is_empty() {
            out.push(FoundToken {
                token: token.to_owned(),
                location: location.clone(),
            });
        }
    };
    for l in locations {
        match l {
            TokenLocation::Header { name, prefix } => {
                for v in headers.header_values(name) {
                    let b = v.as_bytes();
                    if b.len() >= prefix.len()
                        && b[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
                    {
                        // The prefix is ASCII-compared, so this is a char
                        // boundary when the prefix is ASCII; else skip.
                        if let Some(t) = v.get(prefix.len()..) {
                            push(t, l);
                        }
                    }
                }
            }
            TokenLocation::Param(p) => {
                for pair in query.unwrap_or("").split('&') {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    if crate::normalize::decode_once(k) == p.as_str() {
                        push(&crate::normalize::decode_once(&v.replace('+', " ")), l);
                    }
                }
            }
            TokenLocation::Cookie(c) => {
                for header in headers.header_values("cookie") {
                    for pair in header.split(';') {
                        if let Some((k, v)) = pair.trim().split_once('=')
                            && k.trim() == c
                        {
                            push(v.trim_matches('"'), l);
                        }
                    }
                }
            }
        }
    }
    out
}

/// Why [`authenticate`] refused a request: the error, and the rule of the
/// token's issuer when one was found (a data plane refetches that rule's
/// keys on [`JwtError::NoKey`]).
#[derive(Debug, Clone)]
pub struct AuthnFailure {
    /// What failed.
    pub error: JwtError,
    /// The rule the token was checked against.
    pub rule: Option<Arc<JwtRule>>,
}

impl From<JwtError> for AuthnFailure {
    fn from(error: JwtError) -> Self {
        Self { error, rule: None }
    }
}

/// Authenticates a request against the rules that apply to its workload:
/// every token found must pass its issuer's rule (see the module docs).
/// `keys` gives each rule's key set. `Err` names the first token's
/// failure; the data plane answers 401.
pub fn authenticate(
    rules: &[Arc<JwtRule>],
    headers: &dyn HeaderValues,
    query: Option<&str>,
    keys: impl Fn(&JwtRule) -> KeyLookup,
    cache: Option<&TokenCache>,
) -> Result<Authenticated, AuthnFailure> {
    let mut out = Authenticated::default();
    if rules.is_empty() {
        return Ok(out);
    }
    let found = find_tokens(rules, headers, query);
    // Two different tokens are two identities: which one authorization
    // sees and which one the application acts on could differ, so the
    // request is refused (the same token in two places is one).
    if let Some(first) = found.first()
        && found.iter().any(|f| f.token != first.token)
    {
        return Err(JwtError::SeveralTokens.into());
    }
    for found in found {
        // A token verified before names its rule: no need to read its
        // issuer again (the entry still has to hold for that rule, its
        // location and its current keys below).
        let hit = cache.and_then(|c| c.lookup(&found.token));
        let rule = match hit
            .as_ref()
            .and_then(|v| rules.iter().find(|r| Arc::ptr_eq(r, &v.rule)))
        {
            Some(rule) => rule,
            None => {
                let iss = unverified_issuer(&found.token)?;
                // Several RequestAuthentications may name one issuer: the
                // first whose locations read this token checks it (Envoy
                // accepts a token any of its providers accepts; a rule that
                // does not read the token's location cannot be its).
                let mut of_issuer = rules.iter().filter(|r| r.issuer == iss).peekable();
                let first = *of_issuer.peek().ok_or(JwtError::UnknownIssuer)?;
                of_issuer
                    .find(|r| r.locations.contains(&found.location))
                    .unwrap_or(first)
            }
        };
        let fail = |error| AuthnFailure {
            error,
            rule: Some(rule.clone()),
        };
        if !rule.locations.contains(&found.location) {
            return Err(fail(JwtError::WrongLocation(found.location.to_string())));
        }
        let keys = match keys(rule) {
            KeyLookup::Keys(k) => k,
            KeyLookup::Unavailable(why) => return Err(fail(JwtError::KeysUnavailable(why))),
        };
        let auth = match hit.and_then(|v| v.fresh(rule, &keys)) {
            Some(auth) => auth,
            None => {
                let auth = Arc::new(
                    verify_token(
                        &found.token,
                        &rule.issuer,
                        &rule.audiences,
                        &keys,
                        &rule.space_delimited_claims,
                    )
                    .map_err(fail)?,
                );
                if let Some(c) = cache {
                    c.put(&found.token, rule, &keys, &auth);
                }
                auth
            }
        };
        if out.auth.is_none() {
            out.auth = Some(auth.clone());
        }
        out.tokens.push((found, rule.clone(), auth));
    }
    // Every token found passed its rule above; a required issuer none of
    // them belongs to is a missing token (a token of another issuer does
    // not stand in for it).
    if let Some(rule) = rules
        .iter()
        .find(|r| r.required && !out.tokens.iter().any(|(_, t, _)| t.issuer == r.issuer))
    {
        return Err(AuthnFailure {
            error: JwtError::Missing,
            rule: Some(rule.clone()),
        });
    }
    Ok(out)
}

/// The `iss` of a token, read without verifying it: only to choose the
/// rule that then verifies it.
fn unverified_issuer(token: &str) -> Result<String, JwtError> {
    let mut parts = token.split('.');
    let (Some(_), Some(payload), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed);
    };
    let bytes = b64url(payload).ok_or(JwtError::Malformed)?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|_| JwtError::Malformed)?;
    match v.get("iss") {
        Some(Value::String(s)) => Ok(s.clone()),
        // No issuer: no rule can be its.
        None => Err(JwtError::UnknownIssuer),
        Some(_) => Err(JwtError::Claim("iss".to_owned())),
    }
}

fn b64url(s: &str) -> Option<Vec<u8>> {
    const fn val(c: u8) -> Option<u8> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        })
    }
    let s = s.trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes() {
        acc = (acc << 6) | u32::from(val(c)?);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

/// Verifies one token for `issuer`: signature by a key of `keys`, `exp`
/// and `nbf` (with [`CLOCK_SKEW_SECS`]), `aud` against `audiences` when
/// any are given.
pub fn verify_token(
    token: &str,
    issuer: &str,
    audiences: &[String],
    keys: &JwtKeys,
    space_delimited: &[String],
) -> Result<RequestAuth, JwtError> {
    install_provider();
    let header = jsonwebtoken::decode_header(token).map_err(|e| match e.kind() {
        ErrorKind::InvalidAlgorithmName => JwtError::Algorithm("(unknown)".to_owned()),
        _ => JwtError::Malformed,
    })?;
    let alg = header.alg;
    if alg.family() == jsonwebtoken::AlgorithmFamily::Hmac {
        return Err(JwtError::Algorithm(format!("{alg:?}")));
    }
    let mut validation = Validation::new(alg);
    validation.required_spec_claims.clear();
    validation.leeway = CLOCK_SKEW_SECS;
    validation.validate_nbf = true;
    validation.set_issuer(&[issuer]);
    if audiences.is_empty() {
        validation.validate_aud = false;
    } else {
        validation.set_audience(audiences);
        // A token without `aud` names none of them (Envoy refuses it).
        validation.set_required_spec_claims(&["aud"]);
    }
    let mut last = JwtError::NoKey;
    for key in keys.candidates(header.kid.as_deref(), alg) {
        match jsonwebtoken::decode::<serde_json::Map<String, Value>>(token, key, &validation) {
            Ok(data) => return request_auth(data.claims, space_delimited),
            Err(e) => {
                last = map_error(&e);
                // A signature that does not verify may be another key's;
                // any other failure is the token's own.
                if last != JwtError::Signature {
                    return Err(last);
                }
            }
        }
    }
    Err(last)
}

fn map_error(e: &JwtLibError) -> JwtError {
    match e.kind() {
        ErrorKind::InvalidSignature => JwtError::Signature,
        ErrorKind::ExpiredSignature => JwtError::Expired,
        ErrorKind::ImmatureSignature => JwtError::NotYetValid,
        ErrorKind::InvalidAudience => JwtError::Audience,
        ErrorKind::InvalidIssuer => JwtError::UnknownIssuer,
        ErrorKind::InvalidAlgorithm | ErrorKind::UnsupportedAlgorithm => {
            JwtError::Algorithm("for this key".to_owned())
        }
        ErrorKind::MissingRequiredClaim(c) if c == "aud" => JwtError::Audience,
        ErrorKind::InvalidClaimFormat(c) | ErrorKind::MissingRequiredClaim(c) => {
            JwtError::Claim(c.clone())
        }
        ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidEddsaKey
        | ErrorKind::InvalidKeyFormat => JwtError::Signature,
        _ => JwtError::Malformed,
    }
}

fn request_auth(
    claims: serde_json::Map<String, Value>,
    space_delimited: &[String],
) -> Result<RequestAuth, JwtError> {
    let string = |name: &str| match claims.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(JwtError::Claim(name.to_owned())),
    };
    let iss = string("iss")?;
    let sub = string("sub")?;
    // `exp: null` is no expiry to skip: a time claim is a number or absent.
    for name in ["exp", "nbf", "iat"] {
        if claims.get(name).is_some_and(|v| !v.is_number()) {
            return Err(JwtError::Claim(name.to_owned()));
        }
    }
    let presenter = string("azp")?;
    let audiences = match claims.get("aud") {
        None => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| JwtError::Claim("aud".to_owned()))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(JwtError::Claim("aud".to_owned())),
    };
    Ok(RequestAuth {
        principal: iss.zip(sub).map(|(iss, sub)| format!("{iss}/{sub}")),
        audiences,
        presenter,
        claims,
        space_delimited: space_delimited.to_vec(),
    })
}

/// The payload part of a token (base64url), what `outputPayloadToHeader`
/// carries.
pub fn payload_part(token: &str) -> Option<&str> {
    token.split('.').nth(1)
}

// ------------------------------------------------------------ crypto on ring

static PROVIDER: CryptoProvider = CryptoProvider {
    signer_factory: ring_signer,
    verifier_factory: ring_verifier,
    key_utils: KeyUtils {
        rsa_pub_components_from_private_key: |_| Err(ErrorKind::UnsupportedAlgorithm.into()),
        rsa_pub_components_from_public_key: |_| Err(ErrorKind::UnsupportedAlgorithm.into()),
        ec_pub_components_from_private_key: |_, _| Err(ErrorKind::UnsupportedAlgorithm.into()),
        ed_pub_components_from_private_key: |_, _| Err(ErrorKind::UnsupportedAlgorithm.into()),
        compute_digest: |_, _| Err(ErrorKind::UnsupportedAlgorithm.into()),
    },
};

/// Installs the ring provider as jsonwebtoken's process default, once. If
/// another was installed first (by the embedding application), that one
/// stays: jsonwebtoken allows one per process.
fn install_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = PROVIDER.install_default();
    });
}

struct RingVerifier {
    alg: Algorithm,
    key: DecodingKey,
}

impl signature::Verifier<Vec<u8>> for RingVerifier {
    fn verify(&self, msg: &[u8], sig: &Vec<u8>) -> Result<(), signature::Error> {
        use ring::signature as rs;
        let rsa: Option<&'static rs::RsaParameters> = match self.alg {
            Algorithm::RS256 => Some(&rs::RSA_PKCS1_2048_8192_SHA256),
            Algorithm::RS384 => Some(&rs::RSA_PKCS1_2048_8192_SHA384),
            Algorithm::RS512 => Some(&rs::RSA_PKCS1_2048_8192_SHA512),
            Algorithm::PS256 => Some(&rs::RSA_PSS_2048_8192_SHA256),
            Algorithm::PS384 => Some(&rs::RSA_PSS_2048_8192_SHA384),
            Algorithm::PS512 => Some(&rs::RSA_PSS_2048_8192_SHA512),
            _ => None,
        };
        let ok = match (rsa, self.key.kind()) {
            (Some(params), DecodingKeyKind::RsaModulusExponent { n, e }) => {
                rs::RsaPublicKeyComponents { n, e }
                    .verify(params, msg, sig)
                    .is_ok()
            }
            (Some(params), DecodingKeyKind::SecretOrDer(der)) => {
                rs::UnparsedPublicKey::new(params, der)
                    .verify(msg, sig)
                    .is_ok()
            }
            (None, DecodingKeyKind::SecretOrDer(point)) => {
                let alg: &dyn rs::VerificationAlgorithm = match self.alg {
                    Algorithm::ES256 => &rs::ECDSA_P256_SHA256_FIXED,
                    Algorithm::ES384 => &rs::ECDSA_P384_SHA384_FIXED,
                    Algorithm::EdDSA => &rs::ED25519,
                    _ => return Err(signature::Error::new()),
                };
                rs::UnparsedPublicKey::new(alg, point)
                    .verify(msg, sig)
                    .is_ok()
            }
            _ => false,
        };
        if ok {
            Ok(())
        } else {
            Err(signature::Error::new())
        }
    }
}

impl JwtVerifier for RingVerifier {
    fn algorithm(&self) -> Algorithm {
        self.alg
    }
}

fn ring_verifier(
    alg: &Algorithm,
    key: &DecodingKey,
) -> jsonwebtoken::errors::Result<Box<dyn JwtVerifier>> {
    if alg.family() == jsonwebtoken::AlgorithmFamily::Hmac || key.family() != alg.family() {
        return Err(ErrorKind::InvalidAlgorithm.into());
    }
    Ok(Box::new(RingVerifier {
        alg: *alg,
        key: key.clone(),
    }))
}

enum RingKeyPair {
    Rsa(
        ring::signature::RsaKeyPair,
        &'static dyn ring::signature::RsaEncoding,
    ),
    Ecdsa(ring::signature::EcdsaKeyPair),
    Ed(ring::signature::Ed25519KeyPair),
}

struct RingSigner {
    alg: Algorithm,
    pair: RingKeyPair,
}

impl signature::Signer<Vec<u8>> for RingSigner {
    fn try_sign(&self, msg: &[u8]) -> Result<Vec<u8>, signature::Error> {
        let rng = ring::rand::SystemRandom::new();
        match &self.pair {
            RingKeyPair::Rsa(k, enc) => {
                let mut sig = vec![0; k.public().modulus_len()];
                k.sign(*enc, &rng, msg, &mut sig)
                    .map_err(|_| signature::Error::new())?;
                Ok(sig)
            }
            RingKeyPair::Ecdsa(k) => k
                .sign(&rng, msg)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| signature::Error::new()),
            RingKeyPair::Ed(k) => Ok(k.sign(msg).as_ref().to_vec()),
        }
    }
}

impl JwtSigner for RingSigner {
    fn algorithm(&self) -> Algorithm {
        self.alg
    }
}

/// Signing, for tests and the benchmark (the mesh itself only verifies):
/// RSA keys as PKCS#8 or PKCS#1 DER, EC and Ed25519 keys as PKCS#8 DER.
fn ring_signer(
    alg: &Algorithm,
    key: &EncodingKey,
) -> jsonwebtoken::errors::Result<Box<dyn JwtSigner>> {
    use ring::signature as rs;
    let der = key.as_bytes();
    let bad = || JwtLibError::from(ErrorKind::InvalidKeyFormat);
    let rsa = |enc: &'static dyn rs::RsaEncoding| {
        rs::RsaKeyPair::from_pkcs8(der)
            .or_else(|_| rs::RsaKeyPair::from_der(der))
            .map(|k| RingKeyPair::Rsa(k, enc))
            .map_err(|_| bad())
    };
    let ec = |a: &'static rs::EcdsaSigningAlgorithm| {
        rs::EcdsaKeyPair::from_pkcs8(a, der, &ring::rand::SystemRandom::new())
            .map(RingKeyPair::Ecdsa)
            .map_err(|_| bad())
    };
    let pair = match alg {
        Algorithm::RS256 => rsa(&rs::RSA_PKCS1_SHA256)?,
        Algorithm::RS384 => rsa(&rs::RSA_PKCS1_SHA384)?,
        Algorithm::RS512 => rsa(&rs::RSA_PKCS1_SHA512)?,
        Algorithm::PS256 => rsa(&rs::RSA_PSS_SHA256)?,
        Algorithm::PS384 => rsa(&rs::RSA_PSS_SHA384)?,
        Algorithm::PS512 => rsa(&rs::RSA_PSS_SHA512)?,
        Algorithm::ES256 => ec(&rs::ECDSA_P256_SHA256_FIXED_SIGNING)?,
        Algorithm::ES384 => ec(&rs::ECDSA_P384_SHA384_FIXED_SIGNING)?,
        Algorithm::EdDSA => {
            RingKeyPair::Ed(rs::Ed25519KeyPair::from_pkcs8(der).map_err(|_| bad())?)
        }
        _ => return Err(ErrorKind::InvalidAlgorithm.into()),
    };
    Ok(Box::new(RingSigner { alg: *alg, pair }))
}

/// Signs `claims` with a private key (PKCS#8 DER; PKCS#1 for RSA too),
/// for tests and benchmarks: tokens as an identity provider would issue
/// them.
pub fn sign_for_test(
    alg: Algorithm,
    kid: Option<&str>,
    der: &[u8],
    claims: &Value,
) -> Result<String, String> {
    install_provider();
    let mut header = jsonwebtoken::Header::new(alg);
    header.kid = kid.map(str::to_owned);
    let key = match alg.family() {
        jsonwebtoken::AlgorithmFamily::Rsa => EncodingKey::from_rsa_der(der),
        jsonwebtoken::AlgorithmFamily::Ec => EncodingKey::from_ec_der(der),
        jsonwebtoken::AlgorithmFamily::Ed => EncodingKey::from_ed_der(der),
        jsonwebtoken::AlgorithmFamily::Hmac => return Err("HMAC is not supported".to_owned()),
    };
    jsonwebtoken::encode(&header, claims, &key).map_err(|e| e.to_string())
}

/// A fresh ES256 key pair for tests: its PKCS#8 DER and a JWKS (JSON) that
/// publishes its public half under `kid`.
pub fn test_es256_key(kid: &str) -> Result<(Vec<u8>, String), String> {
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
        .map_err(|e| e.to_string())?;
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
        .map_err(|e| e.to_string())?;
    let point = pair.public_key().as_ref();
    let (x, y) = point.get(1..).ok_or("short point")?.split_at(32);
    let jwks = serde_json::json!({"keys": [{
        "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid,
        "x": b64url_encode(x), "y": b64url_encode(y),
    }]});
    Ok((pkcs8.as_ref().to_vec(), jwks.to_string()))
}

/// base64url without padding.
pub fn b64url_encode(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(char::from(A[(n >> (18 - 6 * i)) as usize & 63]));
        }
    }
    out
}

/// A claim value as a header carries it: a string as is, anything else
/// as its JSON text.
pub fn claim_header_value<'a>(auth: &'a RequestAuth, path: &[String]) -> Option<Cow<'a, str>> {
    let (first, rest) = path.split_first()?;
    let mut v = auth.claims.get(first.as_str())?;
    for p in rest {
        v = v.get(p.as_str())?;
    }
    Some(match v {
        Value::String(s) => Cow::Borrowed(s.as_str()),
        other => Cow::Owned(other.to_string()),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn claim_paths() {
        assert_eq!(claim_path("[a]"), Some(vec!["a".to_owned()]));
        assert_eq!(
            claim_path("[a][b]"),
            Some(vec!["a".to_owned(), "b".to_owned()])
        );
        for bad in ["", "[]", "a", "[a", "[a]b", "[a][]", ".a"] {
            assert_eq!(claim_path(bad), None, "{bad}");
        }
    }

    #[test]
    fn base64url_round_trip() {
        for n in 0..40u8 {
            let bytes: Vec<u8> = (0..n).map(|i| i.wrapping_mul(37)).collect();
            assert_eq!(b64url(&b64url_encode(&bytes)).unwrap(), bytes);
        }
        assert!(b64url("a+b").is_none());
    }
}
