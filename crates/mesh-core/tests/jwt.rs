//! RequestAuthentication and the JWT fields of AuthorizationPolicy, decided
//! by `mesh_core::jwt::authenticate` and `authz::evaluate`, with tokens
//! signed by keys made here: ES256 by ring, RS256 by `openssl genpkey`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use mesh_core::authz::{AuthzRequest, Sni, evaluate};
use mesh_core::jwt::{
    Algorithm, Authenticated, AuthnFailure, JwtError, JwtKeys, KeyLookup, KeySource, RequestAuth,
    authenticate, b64url_encode, sign_for_test, test_es256_key,
};
use mesh_core::load::load_str;
use mesh_core::snapshot::{Snapshot, compile};
use serde_json::{Value, json};

const ISS: &str = "https://idp.example";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An RSA key made by openssl: its PKCS#8 DER and a JWKS publishing it.
fn rsa_key(kid: &str) -> (Vec<u8>, String) {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k.der");
    let out = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-outform",
            "DER",
            "-out",
        ])
        .arg(&key)
        .output()
        .expect("openssl is installed (.ci/run installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let der = std::fs::read(&key).unwrap();
    // The modulus, from the public key's text form.
    let text = Command::new("openssl")
        .args(["pkey", "-inform", "DER", "-noout", "-text", "-in"])
        .arg(&key)
        .output()
        .unwrap();
    let text = String::from_utf8(text.stdout).unwrap();
    let hex: String = text
        .split("modulus:")
        .nth(1)
        .unwrap()
        .split("publicExponent")
        .next()
        .unwrap()
        .chars()
        .filter(char::is_ascii_hexdigit)
        .collect();
    let mut n: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    while n.first() == Some(&0) {
        n.remove(0);
    }
    let jwks = json!({"keys": [{"kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig",
        "n": b64url_encode(&n), "e": "AQAB"}]});
    (der, jwks.to_string())
}

fn es256(kid: &str) -> (Vec<u8>, String) {
    test_es256_key(kid).unwrap()
}

fn token(alg: Algorithm, kid: &str, der: &[u8], claims: Value) -> String {
    sign_for_test(alg, Some(kid), der, &claims).unwrap()
}

/// A workload `api` in `shop` with a RequestAuthentication (inline JWKS)
/// and the given AuthorizationPolicies.
fn snap(jwks: &str, rule_extra: &str, policies: &str) -> Snapshot {
    let jwks = serde_json::to_string(jwks).unwrap();
    let yaml = format!(
        r#"
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: api, namespace: shop}}
spec: {{address: 10.0.0.9, labels: {{app: api}}, serviceAccount: api}}
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: shop}}
spec:
  selector: {{matchLabels: {{app: api}}}}
  jwtRules:
  - issuer: "{ISS}"
    jwks: {jwks}
{rule_extra}
{policies}"#
    );
    let r = load_str(Path::new("t.yaml"), &yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    compile(&r).unwrap_or_else(|e| panic!("{e}\n{yaml}"))
}

fn headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn authn(
    s: &Snapshot,
    h: &[(&str, &str)],
    query: Option<&str>,
) -> Result<Authenticated, AuthnFailure> {
    let (_, w) = s.workload("shop/api").unwrap();
    let rules = s.workload_jwt_rules(w);
    assert!(!rules.is_empty());
    authenticate(
        &rules,
        &headers(h),
        query,
        |r| match &r.keys {
            KeySource::Inline(k) => KeyLookup::Keys(k.clone()),
            KeySource::Uri(u) => KeyLookup::Unavailable(u.clone()),
        },
        None,
    )
}

fn err(s: &Snapshot, h: &[(&str, &str)]) -> JwtError {
    authn(s, h, None).map(|_| ()).unwrap_err().error
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

fn claims(extra: Value) -> Value {
    let mut c = json!({"iss": ISS, "sub": "alice", "exp": now() + 600});
    c.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    c
}

#[test]
fn rs256_and_es256_tokens_verify_and_name_the_request_principal() {
    let (rsa, rsa_jwks) = rsa_key("r1");
    let (ec, ec_jwks) = es256("e1");
    for (alg, der, jwks, kid) in [
        (Algorithm::RS256, &rsa, &rsa_jwks, "r1"),
        (Algorithm::ES256, &ec, &ec_jwks, "e1"),
    ] {
        let s = snap(jwks, "", "");
        let t = token(alg, kid, der, claims(json!({"azp": "web"})));
        let a = authn(&s, &[("authorization", &bearer(&t))], None).unwrap();
        let auth = a.auth.unwrap();
        assert_eq!(auth.principal, Some(format!("{ISS}/alice")), "{alg:?}");
        assert_eq!(auth.presenter.as_deref(), Some("web"));
        // No token: authenticated as nobody, not refused.
        let none = authn(&s, &[], None).unwrap();
        assert!(none.auth.is_none() && none.tokens.is_empty());
    }
}

#[test]
fn every_bad_token_is_refused_with_envoys_reason() {
    let (ec, jwks) = es256("e1");
    let (other, _) = es256("e1");
    let s = snap(&jwks, "    audiences: [shop-api, admin-api]", "");
    let ok = token(
        Algorithm::ES256,
        "e1",
        &ec,
        claims(json!({"aud": "shop-api"})),
    );
    assert!(authn(&s, &[("authorization", &bearer(&ok))], None).is_ok());
    let cases: Vec<(String, JwtError)> = vec![
        (
            token(
                Algorithm::ES256,
                "e1",
                &ec,
                claims(json!({"aud": "shop-api", "exp": now() - 120})),
            ),
            JwtError::Expired,
        ),
        (
            token(
                Algorithm::ES256,
                "e1",
                &ec,
                claims(json!({"aud": "shop-api", "nbf": now() + 600})),
            ),
            JwtError::NotYetValid,
        ),
        (
            token(
                Algorithm::ES256,
                "e1",
                &ec,
                claims(json!({"aud": "billing"})),
            ),
            JwtError::Audience,
        ),
        // No aud at all, where audiences are required.
        (
            token(Algorithm::ES256, "e1", &ec, claims(json!({}))),
            JwtError::Audience,
        ),
        (
            token(
                Algorithm::ES256,
                "e1",
                &ec,
                claims(json!({"aud": "shop-api", "iss": "https://evil.example"})),
            ),
            JwtError::UnknownIssuer,
        ),
        // Signed by another key under the same kid.
        (
            token(
                Algorithm::ES256,
                "e1",
                &other,
                claims(json!({"aud": "shop-api"})),
            ),
            JwtError::Signature,
        ),
        (
            token(
                Algorithm::ES256,
                "e9",
                &ec,
                claims(json!({"aud": "shop-api"})),
            ),
            JwtError::NoKey,
        ),
        ("not-a-jwt".to_owned(), JwtError::Malformed),
        ("a.b.c.d".to_owned(), JwtError::Malformed),
    ];
    for (t, want) in cases {
        let got = authn(&s, &[("authorization", &bearer(&t))], None)
            .map(|_| ())
            .map_err(|f| f.error);
        assert_eq!(got, Err(want.clone()), "{want:?} {t}");
    }
    // A payload changed after signing.
    let mut parts: Vec<String> = ok.split('.').map(str::to_owned).collect();
    parts[1] = b64url_encode(
        claims(json!({"aud": "shop-api", "sub": "root"}))
            .to_string()
            .as_bytes(),
    );
    assert_eq!(
        err(&s, &[("authorization", &bearer(&parts.join(".")))]),
        JwtError::Signature
    );
    // `alg: none` and HMAC (the public key read as a shared secret).
    for alg in ["none", "HS256"] {
        let header = b64url_encode(json!({"alg": alg, "kid": "e1"}).to_string().as_bytes());
        let forged = format!("{header}.{}.", parts[1]);
        let e = err(&s, &[("authorization", &bearer(&forged))]);
        assert!(
            matches!(e, JwtError::Algorithm(_) | JwtError::Malformed),
            "{alg}: {e:?}"
        );
    }
    // Two different tokens are refused, whatever each is worth: a good one
    // does not carry a bad one through, nor a second identity.
    let expired = token(
        Algorithm::ES256,
        "e1",
        &ec,
        claims(json!({"aud": "shop-api", "exp": now() - 120})),
    );
    let other_user = token(
        Algorithm::ES256,
        "e1",
        &ec,
        claims(json!({"aud": "shop-api", "sub": "mallory"})),
    );
    for second in [&expired, &other_user] {
        let e = authn(
            &s,
            &[("authorization", &bearer(&ok))],
            Some(&format!("access_token={second}")),
        );
        assert_eq!(e.unwrap_err().error, JwtError::SeveralTokens);
    }
    // The same token in two places is one token.
    assert!(
        authn(
            &s,
            &[("authorization", &bearer(&ok))],
            Some(&format!("access_token={ok}"))
        )
        .is_ok()
    );
    // Time claims are numbers: `exp: null` is no token that never expires.
    let null_exp = token(
        Algorithm::ES256,
        "e1",
        &ec,
        json!({"iss": ISS, "sub": "a", "aud": "shop-api", "exp": null}),
    );
    assert_eq!(
        err(&s, &[("authorization", &bearer(&null_exp))]),
        JwtError::Claim("exp".into())
    );
}

#[test]
fn tokens_are_read_where_the_rule_says_and_nowhere_else() {
    let (ec, jwks) = es256("e1");
    let t = token(Algorithm::ES256, "e1", &ec, claims(json!({})));
    // Defaults: Authorization (any case of "Bearer") and access_token.
    let s = snap(&jwks, "", "");
    for h in [bearer(&t), format!("bearer {t}"), format!("BEARER  {t}")] {
        assert!(
            authn(&s, &[("Authorization", &h)], None)
                .unwrap()
                .auth
                .is_some(),
            "{h}"
        );
    }
    assert!(
        authn(&s, &[], Some(&format!("a=1&access_token={t}")))
            .unwrap()
            .auth
            .is_some()
    );
    // A custom header with a prefix, a cookie: only those.
    let s = snap(
        &jwks,
        "    fromHeaders: [{name: x-jwt, prefix: \"Token \"}]\n    fromCookies: [session]",
        "",
    );
    assert!(
        authn(&s, &[("x-jwt", &format!("Token {t}"))], None)
            .unwrap()
            .auth
            .is_some()
    );
    assert!(
        authn(&s, &[("cookie", &format!("a=b; session={t}"))], None)
            .unwrap()
            .auth
            .is_some()
    );
    // A cookie name with stray spaces is the same cookie to many parsers.
    assert!(
        authn(&s, &[("cookie", &format!("a=b; session ={t}"))], None)
            .unwrap()
            .auth
            .is_some()
    );
    let unread = authn(
        &s,
        &[("authorization", &bearer(&t))],
        Some(&format!("access_token={t}")),
    )
    .unwrap();
    assert!(
        unread.auth.is_none(),
        "the default locations are not read when others are named"
    );
    // A bad token in a read location is refused.
    assert_eq!(err(&s, &[("cookie", "session=x.y.z")]), JwtError::Malformed);
}

fn decide(s: &Snapshot, auth: Option<&RequestAuth>) -> bool {
    let (_, w) = s.workload("shop/api").unwrap();
    let req = AuthzRequest {
        peer: None,
        source_ip: Some([10, 1, 0, 1].into()),
        remote_ip: Some([10, 1, 0, 1].into()),
        destination_ip: Some([10, 0, 0, 9].into()),
        destination_port: 8080,
        host: "api.shop.svc.cluster.local",
        host_aliases: &[],
        method: "GET",
        path: "/orders",
        headers: None,
        auth,
        sni: Sni::Absent,
    };
    evaluate(s.workload_policies(w), &req).allowed
}

fn policy(action: &str, rules: &str) -> String {
    format!(
        "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
         metadata: {{name: p-{}, namespace: shop}}\n\
         spec:\n  selector: {{matchLabels: {{app: api}}}}\n  action: {action}\n  rules: {rules}\n",
        action.to_lowercase()
    )
}

fn auth_of(s: &Snapshot, der: &[u8], extra: Value) -> RequestAuth {
    let t = token(Algorithm::ES256, "e1", der, claims(extra));
    let a = authn(s, &[("authorization", &bearer(&t))], None).unwrap();
    (*a.auth.unwrap()).clone()
}

#[test]
fn request_principals_require_a_valid_token() {
    let (ec, jwks) = es256("e1");
    let s = snap(
        &jwks,
        "",
        &policy(
            "ALLOW",
            "[{from: [{source: {requestPrincipals: [\"*\"]}}]}]",
        ),
    );
    let alice = auth_of(&s, &ec, json!({}));
    assert!(decide(&s, Some(&alice)));
    assert!(!decide(&s, None), "no token: no request principal");
    let s = snap(
        &jwks,
        "",
        &policy(
            "ALLOW",
            &format!("[{{from: [{{source: {{requestPrincipals: [\"{ISS}/bob\"]}}}}]}}]"),
        ),
    );
    assert!(!decide(&s, Some(&alice)));
    // A token without `sub` has no request principal (Istio's rule).
    let s = snap(
        &jwks,
        "",
        &policy(
            "ALLOW",
            "[{from: [{source: {requestPrincipals: [\"*\"]}}]}]",
        ),
    );
    let t = token(
        Algorithm::ES256,
        "e1",
        &ec,
        json!({"iss": ISS, "exp": now() + 600}),
    );
    let anonymous = authn(&s, &[("authorization", &bearer(&t))], None)
        .unwrap()
        .auth
        .unwrap();
    assert_eq!(anonymous.principal, None);
    assert!(!decide(&s, Some(&anonymous)));
    // Istio's "require a token" DENY: notRequestPrincipals ["*"].
    let s = snap(
        &jwks,
        "",
        &policy(
            "DENY",
            "[{from: [{source: {notRequestPrincipals: [\"*\"]}}]}]",
        ),
    );
    assert!(!decide(&s, None));
    assert!(decide(&s, Some(&alice)));
}

#[test]
fn claims_audiences_and_presenter_conditions() {
    let (ec, jwks) = es256("e1");
    let allow = |when: &str| {
        snap(
            &jwks,
            "    spaceDelimitedClaims: [perms]",
            &policy("ALLOW", &format!("[{{when: [{when}]}}]")),
        )
    };
    let groups = auth_of(
        &allow("{key: request.auth.principal, values: [\"*\"]}"),
        &ec,
        json!({
            "groups": ["dev", "admin"], "scope": "read write", "perms": "a b",
            "nested": {"level": 3, "team": "blue"}, "aud": ["shop", "web"], "azp": "portal", "admin": true
        }),
    );
    let cases: &[(&str, bool)] = &[
        // A list claim matches if any member does, in ALLOW too.
        (
            "{key: \"request.auth.claims[groups]\", values: [admin]}",
            true,
        ),
        (
            "{key: \"request.auth.claims[groups]\", values: [ops]}",
            false,
        ),
        (
            "{key: \"request.auth.claims[groups]\", notValues: [admin]}",
            false,
        ),
        (
            "{key: \"request.auth.claims[groups]\", notValues: [ops]}",
            true,
        ),
        // scope is space-delimited by default; perms because the rule says.
        (
            "{key: \"request.auth.claims[scope]\", values: [write]}",
            true,
        ),
        ("{key: \"request.auth.claims[perms]\", values: [b]}", true),
        (
            "{key: \"request.auth.claims[nested][team]\", values: [blue]}",
            true,
        ),
        (
            "{key: \"request.auth.claims[nested][level]\", values: [\"3\"]}",
            true,
        ),
        (
            "{key: \"request.auth.claims[admin]\", values: [\"true\"]}",
            true,
        ),
        (
            "{key: \"request.auth.claims[missing]\", values: [x]}",
            false,
        ),
        ("{key: request.auth.audiences, values: [web]}", true),
        ("{key: request.auth.audiences, values: [billing]}", false),
        ("{key: request.auth.presenter, values: [portal]}", true),
        (
            "{key: request.auth.principal, values: [\"https://idp.example/*\"]}",
            true,
        ),
    ];
    for (when, want) in cases {
        let s = allow(when);
        assert_eq!(decide(&s, Some(&groups)), *want, "{when}");
        assert!(
            !decide(&s, None) || when.contains("notValues"),
            "no token: {when}"
        );
    }
    // In a DENY policy, an absent claim does not match positive values.
    let s = snap(
        &jwks,
        "",
        &policy(
            "DENY",
            "[{when: [{key: \"request.auth.claims[groups]\", values: [banned]}]}]",
        ),
    );
    assert!(decide(&s, Some(&groups)));
    assert!(decide(&s, None));
}

#[test]
fn a_required_issuer_refuses_requests_without_its_token() {
    let (ec, jwks) = es256("e1");
    let good = token(Algorithm::ES256, "e1", &ec, claims(json!({})));
    for (presence, missing_passes) in [
        ("", true),
        ("    presence: OPTIONAL", true),
        ("    presence: REQUIRED", false),
    ] {
        let s = snap(&jwks, presence, "");
        let none = authn(&s, &[], None);
        assert_eq!(none.is_ok(), missing_passes, "{presence}");
        if !missing_passes {
            let f = none.unwrap_err();
            assert_eq!(f.error, JwtError::Missing);
            assert_eq!(f.error.to_string(), "Jwt is missing");
            assert_eq!(f.rule.unwrap().issuer, ISS);
        }
        // A valid token passes either way; a bad one fails either way.
        let a = authn(&s, &[("authorization", &bearer(&good))], None).unwrap();
        assert_eq!(a.auth.unwrap().principal, Some(format!("{ISS}/alice")));
        assert_eq!(
            err(&s, &[("authorization", "Bearer a.b.c")]),
            JwtError::Malformed
        );
    }
}

#[test]
fn bad_request_authentications_are_refused_by_field() {
    let cases = [
        ("jwtRules: [{jwks: \"{}\"}]", "spec.jwtRules[0].issuer"),
        (
            "jwtRules: [{issuer: a, jwks: \"{}\"}]",
            "spec.jwtRules[0].jwks",
        ),
        (
            "jwtRules: [{issuer: a, jwks: \"{\\\"keys\\\": []}\"}]",
            "spec.jwtRules[0].jwks",
        ),
        (
            "jwtRules: [{issuer: a, jwksUri: \"ftp://x/k\"}]",
            "spec.jwtRules[0].jwksUri",
        ),
        (
            "jwtRules: [{issuer: a, jwksUri: \"https://x/k\", jwks: \"{}\"}]",
            "spec.jwtRules[0].jwks",
        ),
        (
            "jwtRules: [{issuer: a, jwksUri: \"https://x/k\", fromHeaders: [{name: \"\"}]}]",
            "fromHeaders[0].name",
        ),
        (
            "jwtRules: [{issuer: a, jwksUri: \"https://x/k\", outputClaimToHeaders: [{header: \":authority\", claim: x}]}]",
            "outputClaimToHeaders[0].header",
        ),
        (
            "jwtRules: [{issuer: a, jwksUri: \"https://x/k\", outputClaimToHeaders: [{header: host, claim: x}]}]",
            "outputClaimToHeaders[0].header",
        ),
        (
            "jwtRules: [{issuer: a, jwksUri: \"https://x/k\", outputClaimToHeaders: [{header: X-Forwarded-For, claim: x}]}]",
            "outputClaimToHeaders[0].header",
        ),
        (
            "jwtRules: [{issuer: a, jwksUri: \"https://x/k\", outputPayloadToHeader: content-length}]",
            "outputPayloadToHeader",
        ),
        (
            "jwtRules: [{issuer: a, jwksUri: \"https://x/k\", timeout: apple}]",
            "timeout",
        ),
        (
            "jwtRules: [{issuer: a, jwksUri: \"https://x/k\"}, {issuer: a, jwksUri: \"https://y/k\"}]",
            "spec.jwtRules[1].issuer",
        ),
        ("targetRef: {kind: Service, name: foo}", "targetRef"),
        (
            "jwtRules: [{issuer: a, jwksUri: \"https://x/k\", presence: MANDATORY}]",
            "presence",
        ),
    ];
    for (spec, field) in cases {
        let yaml = format!(
            "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: r, namespace: shop}}\nspec: {{{spec}}}\n"
        );
        let e = match load_str(Path::new("ra.yaml"), &yaml) {
            Err(e) => e.to_string(),
            Ok(r) => compile(&r).map(|_| ()).unwrap_err().to_string(),
        };
        assert!(e.contains(field) && e.contains("ra.yaml"), "{spec}: {e}");
    }
    // Claim keys in AuthorizationPolicy `when` are checked too.
    let yaml = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p}\nspec: {rules: [{when: [{key: \"request.auth.claims[]\", values: [x]}]}]}\n";
    let e = load_str(Path::new("p.yaml"), yaml)
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(e.contains("when[0].key"), "{e}");
}

#[test]
fn key_sets_skip_keys_they_cannot_verify_with() {
    let (_, jwks) = es256("e1");
    let mut v: Value = serde_json::from_str(&jwks).unwrap();
    v["keys"]
        .as_array_mut()
        .unwrap()
        .push(json!({"kty": "oct", "k": "c2VjcmV0", "kid": "h"}));
    v["keys"]
        .as_array_mut()
        .unwrap()
        .push(json!({"kty": "RSA", "use": "enc", "n": "AQAB", "e": "AQAB", "kid": "x"}));
    let keys = JwtKeys::parse(&v.to_string()).unwrap();
    assert_eq!(keys.len(), 1);
    assert!(keys.has_kid("e1") && !keys.has_kid("h"));
    // A key set whose keys name no kid verifies tokens that name one.
    let (der, jwks) = es256("e1");
    let mut v: Value = serde_json::from_str(&jwks).unwrap();
    v["keys"][0].as_object_mut().unwrap().remove("kid");
    let s = snap(&v.to_string(), "", "");
    let t = token(Algorithm::ES256, "any", &der, claims(json!({})));
    assert!(
        authn(&s, &[("authorization", &bearer(&t))], None)
            .unwrap()
            .auth
            .is_some()
    );
}

/// A verified token is remembered, but only for the rule and key set it
/// was verified with: another key set (a rotation that dropped its key) or
/// a reloaded rule (now with audiences) verifies it again.
#[test]
fn the_token_cache_never_outlives_its_rule_or_keys() {
    use mesh_core::jwt::TokenCache;
    let (ec, jwks) = es256("e1");
    let (_, other_jwks) = es256("e2");
    let cache = TokenCache::new(8);
    let t = token(Algorithm::ES256, "e1", &ec, claims(json!({})));
    let h = headers(&[("authorization", &bearer(&t))]);
    let run = |s: &Snapshot, keys: Option<Arc<JwtKeys>>| {
        let (_, w) = s.workload("shop/api").unwrap();
        authenticate(
            &s.workload_jwt_rules(w),
            &h,
            None,
            |r| match (&keys, &r.keys) {
                (Some(k), _) => KeyLookup::Keys(k.clone()),
                (None, KeySource::Inline(k)) => KeyLookup::Keys(k.clone()),
                (None, KeySource::Uri(u)) => KeyLookup::Unavailable(u.clone()),
            },
            Some(&cache),
        )
        .map(|a| a.auth.unwrap().principal.clone())
        .map_err(|f| f.error)
    };
    let s = snap(&jwks, "", "");
    let alice = Some(format!("{ISS}/alice"));
    assert_eq!(run(&s, None), Ok(alice.clone()));
    assert_eq!(run(&s, None), Ok(alice), "from the cache");
    let rotated = Arc::new(JwtKeys::parse(&other_jwks).unwrap());
    assert_eq!(run(&s, Some(rotated)), Err(JwtError::NoKey));
    let stricter = snap(&jwks, "    audiences: [billing]", "");
    assert_eq!(run(&stricter, None), Err(JwtError::Audience));
}

/// Claim matches in routes: gateway routes only (the gateway validates the
/// token before it routes; a sidecar's outbound requests carry no
/// validated token), as Istio rules.
#[test]
fn claim_routes_are_for_gateways_only() {
    let vs = |gateways: &str, key: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: v}}\n\
             spec:\n  hosts: [shop.example.com]\n  gateways: {gateways}\n  http:\n  \
             - match: [{{headers: {{\"{key}\": {{exact: beta}}}}}}]\n    route: [{{destination: {{host: shop}}}}]\n"
        )
    };
    assert!(
        load_str(
            Path::new("v.yaml"),
            &vs("[edge]", "@request.auth.claims.groups")
        )
        .is_ok()
    );
    assert!(
        load_str(
            Path::new("v.yaml"),
            &vs("[edge]", "@request.auth.claims.org.team")
        )
        .is_ok()
    );
    for (gateways, key, why) in [
        ("[]", "@request.auth.claims.groups", "gateway routes only"),
        (
            "[edge, mesh]",
            "@request.auth.claims.groups",
            "gateway routes only",
        ),
        ("[edge]", "@request.auth.claims.", "names no claim"),
        ("[edge]", "@request.auth.claims.a..b", "names no claim"),
        ("[edge]", "@other", "names no claim"),
    ] {
        let e = load_str(Path::new("v.yaml"), &vs(gateways, key))
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("spec.http[0].match[0].headers") && e.contains(why),
            "{gateways} {key}: {e}"
        );
    }
}
