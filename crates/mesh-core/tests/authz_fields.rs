//! The AuthorizationPolicy fields Istio added after the first ones:
//! `serviceAccounts` / `notServiceAccounts`, `trustDomains` /
//! `notTrustDomains` (and the `source.trustDomain` key), and the
//! `connection.sni` key, over HTTP and TCP, ALLOW, DENY and AUDIT, with
//! and without a peer, with and without an SNI, and what validation
//! refuses of them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use mesh_core::authz::{AuthzDecision, AuthzRequest, ConnectionInfo, Sni, evaluate, evaluate_tcp};
use mesh_core::identity::SpiffeId;
use mesh_core::load::load_str;
use mesh_core::snapshot::{Snapshot, compile};

const WORKLOAD: &str = r#"
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: w, namespace: shop}
spec: {address: 10.0.0.9, labels: {app: w}, serviceAccount: w}
"#;

fn snap(policies: &str) -> Snapshot {
    let yaml = format!("{WORKLOAD}---\n{policies}");
    let r = load_str(Path::new("t.yaml"), &yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    compile(&r).unwrap_or_else(|e| panic!("{e}"))
}

fn load_err(policies: &str) -> String {
    let yaml = format!("{WORKLOAD}---\n{policies}");
    match load_str(Path::new("t.yaml"), &yaml) {
        Ok(r) => match compile(&r) {
            Ok(_) => panic!("loaded: {policies}"),
            Err(e) => e.to_string(),
        },
        Err(e) => e.to_string(),
    }
}

/// One policy in `shop` on workload `w`.
fn policy(action: &str, rules: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
         metadata: {{name: p, namespace: shop}}\n\
         spec:\n  selector: {{matchLabels: {{app: w}}}}\n  action: {action}\n  rules: {rules}\n"
    )
}

fn http(s: &Snapshot, peer: Option<&str>, sni: Sni<'_>) -> AuthzDecision {
    let (_, w) = s.workload("shop/w").unwrap();
    let peer = peer.map(|p| SpiffeId::parse(p).unwrap());
    let host = s.canonical_host("w", "shop");
    evaluate(
        s.workload_policies(w),
        &AuthzRequest {
            peer: peer.as_ref(),
            source_ip: Some([10, 1, 0, 1].into()),
            remote_ip: Some([10, 1, 0, 1].into()),
            destination_ip: Some([10, 0, 0, 9].into()),
            destination_port: 8080,
            host: &host,
            host_aliases: &[],
            method: "GET",
            path: "/",
            headers: None,
            auth: None,
            sni,
        },
    )
}

fn tcp(s: &Snapshot, peer: Option<&str>, sni: Sni<'_>) -> AuthzDecision {
    let (_, w) = s.workload("shop/w").unwrap();
    let peer = peer.map(|p| SpiffeId::parse(p).unwrap());
    evaluate_tcp(
        s.workload_policies(w),
        &ConnectionInfo {
            peer: peer.as_ref(),
            source_ip: Some([10, 1, 0, 1].into()),
            destination_ip: Some([10, 0, 0, 9].into()),
            destination_port: 3306,
            sni,
        },
    )
}

/// Allowed over HTTP, and the same over TCP (these fields are L4).
fn allowed(s: &Snapshot, peer: Option<&str>, sni: Sni<'_>) -> bool {
    let h = http(s, peer, sni).allowed;
    assert_eq!(h, tcp(s, peer, sni).allowed, "HTTP and TCP disagree");
    h
}

const WEB: &str = "spiffe://cluster.local/ns/front/sa/web";
const API: &str = "spiffe://cluster.local/ns/front/sa/api";
const FOREIGN_WEB: &str = "spiffe://partner.example/ns/front/sa/web";
const SHOP_WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";
const NESTED_WEB: &str = "spiffe://cluster.local/ns/front/zone/a/sa/web";
const TRAILING_WEB: &str = "spiffe://cluster.local/ns/front/sa/web/v2";

fn with(action: &str, source: &str) -> Snapshot {
    snap(&policy(
        action,
        &format!("[{{from: [{{source: {source}}}]}}]"),
    ))
}

#[test]
fn allow_service_accounts_admit_the_meshs_own_account_only() {
    let s = with("ALLOW", "{serviceAccounts: [front/web]}");
    assert!(allowed(&s, Some(WEB), Sni::Absent));
    for peer in [API, FOREIGN_WEB, SHOP_WEB, NESTED_WEB, TRAILING_WEB] {
        assert!(!allowed(&s, Some(peer), Sni::Absent), "{peer}");
    }
    for peer in [
        "spiffe://cluster.local/ns/front/sa/webx",
        "spiffe://cluster.local/ns/fronts/sa/web",
        "spiffe://cluster.local/ns/web/sa/front",
        "spiffe://cluster.local.evil/ns/front/sa/web",
        "spiffe://cluster.local/front/web",
    ] {
        assert!(!allowed(&s, Some(peer), Sni::Absent), "{peer}");
    }
    // mTLS is required: plaintext never matches.
    assert!(!allowed(&s, None, Sni::Absent));
    let d = http(&s, Some(WEB), Sni::Absent);
    assert_eq!(d.reason, "allowed by AuthorizationPolicy shop/p rule 0");
}

#[test]
fn a_bare_service_account_is_of_the_policys_namespace() {
    let s = with("ALLOW", "{serviceAccounts: [web]}");
    assert!(allowed(&s, Some(SHOP_WEB), Sni::Absent));
    assert!(!allowed(&s, Some(WEB), Sni::Absent));
    let s = with("ALLOW", "{serviceAccounts: [web, front/api]}");
    assert!(allowed(&s, Some(SHOP_WEB), Sni::Absent));
    assert!(allowed(&s, Some(API), Sni::Absent));
    assert!(!allowed(&s, Some(WEB), Sni::Absent));
    // DENY: the same namespace.
    let s = with("DENY", "{serviceAccounts: [web]}");
    assert!(!allowed(&s, Some(SHOP_WEB), Sni::Absent));
    assert!(allowed(&s, Some(WEB), Sni::Absent));
}

#[test]
fn deny_service_accounts_deny_every_identity_istio_would() {
    let s = with("DENY", "{serviceAccounts: [front/web]}");
    for peer in [
        WEB,
        FOREIGN_WEB,
        NESTED_WEB,
        TRAILING_WEB,
        "spiffe://cluster.local/x/ns/front/sa/web",
    ] {
        assert!(!allowed(&s, Some(peer), Sni::Absent), "{peer}");
    }
    for peer in [
        API,
        SHOP_WEB,
        "spiffe://cluster.local/ns/front/sa/webx",
        "spiffe://cluster.local/sa/web/ns/front",
    ] {
        assert!(allowed(&s, Some(peer), Sni::Absent), "{peer}");
    }
    // As `principals`: no peer, no match.
    assert!(allowed(&s, None, Sni::Absent));
}

#[test]
fn not_service_accounts() {
    // DENY everyone but the mesh's own front/web: a namesake from a
    // federated trust domain is not it, nor is plaintext.
    let s = with("DENY", "{notServiceAccounts: [front/web]}");
    assert!(allowed(&s, Some(WEB), Sni::Absent));
    for peer in [Some(API), Some(FOREIGN_WEB), Some(NESTED_WEB), None] {
        assert!(!allowed(&s, peer, Sni::Absent), "{peer:?}");
    }
    // ALLOW all but front/web: every reading of front/web is left out.
    let s = with("ALLOW", "{notServiceAccounts: [front/web]}");
    assert!(allowed(&s, Some(API), Sni::Absent));
    for peer in [WEB, FOREIGN_WEB, NESTED_WEB, TRAILING_WEB] {
        assert!(!allowed(&s, Some(peer), Sni::Absent), "{peer}");
    }
    // As `notPrincipals`: a request without a peer is not front/web.
    assert!(allowed(&s, None, Sni::Absent));
    // Both: front's accounts but api.
    let s = with(
        "ALLOW",
        "{serviceAccounts: [front/web, front/api], notServiceAccounts: [front/api]}",
    );
    assert!(allowed(&s, Some(WEB), Sni::Absent));
    assert!(!allowed(&s, Some(API), Sni::Absent));
}

#[test]
fn service_accounts_in_audit_and_dry_run_policies() {
    let s = snap(&policy(
        "AUDIT",
        "[{from: [{source: {serviceAccounts: [front/web]}}]}]",
    ));
    // AUDIT reads doubt as DENY does: the namesake is audited too.
    for peer in [WEB, FOREIGN_WEB] {
        let d = http(&s, Some(peer), Sni::Absent);
        assert!(d.allowed);
        assert_eq!(d.audited_by.unwrap().name, "p", "{peer}");
    }
    assert!(http(&s, Some(API), Sni::Absent).audited_by.is_none());
    let dry = snap(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
         metadata: {name: trial, namespace: shop, annotations: {istio.io/dry-run: 'true'}}\n\
         spec:\n  rules: [{from: [{source: {serviceAccounts: [front/web]}}]}]\n",
    );
    let d = http(&dry, Some(FOREIGN_WEB), Sni::Absent);
    assert!(d.allowed, "dry-run never enforces");
    assert!(!d.shadow.unwrap().allowed);
    assert!(http(&dry, Some(WEB), Sni::Absent).shadow.unwrap().allowed);
}

#[test]
fn service_accounts_are_validated_as_istio_does() {
    let src = |source: &str| policy("ALLOW", &format!("[{{from: [{{source: {source}}}]}}]"));
    for (source, field, message) in [
        (
            "{serviceAccounts: [front/web], principals: [x]}",
            "spec.rules[0].from[0].source",
            "Cannot set serviceAccounts with namespaces or principals",
        ),
        (
            "{notServiceAccounts: [front/web], namespaces: [front]}",
            "spec.rules[0].from[0].source",
            "Cannot set serviceAccounts",
        ),
        (
            "{serviceAccounts: [front/web], notPrincipals: [x]}",
            "spec.rules[0].from[0].source",
            "Cannot set serviceAccounts",
        ),
        (
            "{serviceAccounts: ['front/*']}",
            "serviceAccounts[0]",
            "no form of wildcard",
        ),
        ("{serviceAccounts: ['*']}", "serviceAccounts[0]", "wildcard"),
        (
            "{notServiceAccounts: [a/b/c]}",
            "notServiceAccounts[0]",
            "is not `<namespace>/<service-account>`",
        ),
        (
            "{serviceAccounts: [front/]}",
            "serviceAccounts[0]",
            "is not",
        ),
        ("{serviceAccounts: [/web]}", "serviceAccounts[0]", "is not"),
        ("{serviceAccounts: ['']}", "serviceAccounts[0]", "is not"),
        ("{serviceAccounts: ['a b']}", "serviceAccounts[0]", "is not"),
        (
            "{serviceAccounts: [front/..]}",
            "serviceAccounts[0]",
            "is not",
        ),
    ] {
        let e = load_err(&src(source));
        assert!(e.contains(field), "{source}: {e}");
        assert!(e.contains(message), "{source}: {e}");
        assert!(e.contains("t.yaml"), "{source}: {e}");
    }
    let many = (0..17)
        .map(|i| format!("sa{i}"))
        .collect::<Vec<_>>()
        .join(", ");
    let e = load_err(&src(&format!("{{serviceAccounts: [{many}]}}")));
    assert!(e.contains("at most 16"), "{e}");
    let long = "a".repeat(321);
    let e = load_err(&src(&format!("{{serviceAccounts: [{long}]}}")));
    assert!(e.contains("at most 320"), "{e}");
    // Istio's valid example: the fields split over sources.
    snap(&policy(
        "ALLOW",
        "[{from: [{source: {serviceAccounts: [baz/sa, sa]}}, {source: {principals: [bar]}}, {source: {namespaces: [bar]}}]}]",
    ));
    // Sixteen is the limit, not over it.
    let sixteen = (0..16)
        .map(|i| format!("sa{i}"))
        .collect::<Vec<_>>()
        .join(", ");
    snap(&src(&format!("{{serviceAccounts: [{sixteen}]}}")));
}

#[test]
fn trust_domains() {
    let s = with("ALLOW", "{trustDomains: [cluster.local, another.local]}");
    assert!(allowed(&s, Some(WEB), Sni::Absent));
    assert!(allowed(
        &s,
        Some("spiffe://another.local/ns/x/sa/y"),
        Sni::Absent
    ));
    assert!(!allowed(&s, Some(FOREIGN_WEB), Sni::Absent));
    assert!(!allowed(
        &s,
        Some("spiffe://cluster.local.evil/ns/x/sa/y"),
        Sni::Absent
    ));
    assert!(!allowed(&s, None, Sni::Absent), "mTLS required");
    // Wildcards, as Istio matches strings.
    for (pattern, yes, no) in [
        ("cluster-prefix-*", "cluster-prefix-east", "cluster-prefi"),
        ("*-suffix-cluster", "east-suffix-cluster", "suffix-cluster"),
        ("*", "anything.example", ""),
    ] {
        let s = with("ALLOW", &format!("{{trustDomains: ['{pattern}']}}"));
        let yes = format!("spiffe://{yes}/ns/a/sa/b");
        assert!(allowed(&s, Some(&yes), Sni::Absent), "{pattern} {yes}");
        if !no.is_empty() {
            let no = format!("spiffe://{no}/ns/a/sa/b");
            assert!(!allowed(&s, Some(&no), Sni::Absent), "{pattern} {no}");
        }
        assert!(!allowed(&s, None, Sni::Absent), "{pattern}: plaintext");
    }
    // Trust domains are lowercase; a pattern in another case allows
    // nothing, and denies as if it were lowercase.
    let s = with("ALLOW", "{trustDomains: [Cluster.Local]}");
    assert!(!allowed(&s, Some(WEB), Sni::Absent));
    let s = with("DENY", "{trustDomains: [Cluster.Local]}");
    assert!(!allowed(&s, Some(WEB), Sni::Absent));
    assert!(allowed(&s, Some(FOREIGN_WEB), Sni::Absent));
    assert!(allowed(&s, None, Sni::Absent));
}

#[test]
fn not_trust_domains_and_the_when_key() {
    // DENY what is not ours, plaintext included.
    let s = with("DENY", "{notTrustDomains: [cluster.local]}");
    assert!(allowed(&s, Some(WEB), Sni::Absent));
    assert!(!allowed(&s, Some(FOREIGN_WEB), Sni::Absent));
    assert!(!allowed(&s, None, Sni::Absent));
    // ALLOW all but bad ones (Istio's test data).
    let s = snap(&policy(
        "ALLOW",
        "[{from: [{source: {trustDomains: [cluster.local, another.local]}}, {source: {notTrustDomains: ['bad*', untrusted]}}]}]",
    ));
    assert!(allowed(&s, Some(FOREIGN_WEB), Sni::Absent));
    assert!(!allowed(
        &s,
        Some("spiffe://bad.example/ns/a/sa/b"),
        Sni::Absent
    ));
    assert!(!allowed(
        &s,
        Some("spiffe://untrusted/ns/a/sa/b"),
        Sni::Absent
    ));
    // ALLOW notTrustDomains reads the peer in any case.
    let s = with("ALLOW", "{notTrustDomains: [BAD.example]}");
    assert!(!allowed(
        &s,
        Some("spiffe://bad.example/ns/a/sa/b"),
        Sni::Absent
    ));
    let s = snap(&policy(
        "ALLOW",
        "[{when: [{key: source.trustDomain, values: ['cluster.*'], notValues: [cluster.evil]}]}]",
    ));
    assert!(allowed(&s, Some(WEB), Sni::Absent));
    assert!(!allowed(
        &s,
        Some("spiffe://cluster.evil/ns/a/sa/b"),
        Sni::Absent
    ));
    assert!(!allowed(&s, None, Sni::Absent));
    for (source, message) in [
        ("{trustDomains: ['a/b']}", "can name no trust domain"),
        ("{notTrustDomains: ['*a*']}", "allowed only once"),
        ("{trustDomains: ['']}", "is empty"),
    ] {
        let e = load_err(&policy(
            "ALLOW",
            &format!("[{{from: [{{source: {source}}}]}}]"),
        ));
        assert!(e.contains(message), "{source}: {e}");
    }
}

fn sni_policy(action: &str, cond: &str) -> Snapshot {
    snap(&policy(
        action,
        &format!("[{{when: [{{key: connection.sni, {cond}}}]}}]"),
    ))
}

#[test]
fn allow_connection_sni() {
    let s = sni_policy("ALLOW", "values: [api.example.com]");
    assert!(allowed(&s, Some(WEB), Sni::Name("api.example.com")));
    // A DNS name: case does not matter.
    assert!(allowed(&s, Some(WEB), Sni::Name("API.Example.COM")));
    assert!(!allowed(&s, Some(WEB), Sni::Name("www.example.com")));
    assert!(!allowed(&s, Some(WEB), Sni::Name("api.example.com.evil")));
    // No SNI, or one the server could not tell: no match.
    assert!(!allowed(&s, Some(WEB), Sni::Absent));
    assert!(!allowed(&s, None, Sni::Absent));
    assert!(!allowed(&s, Some(WEB), Sni::Unknown));
    for (pattern, yes, no) in [
        ("'*.suffix.com'", "a.suffix.com", "suffix.com"),
        ("'prefix.*'", "prefix.example", "prefi.example"),
        ("'*'", "anything", ""),
    ] {
        let s = sni_policy("ALLOW", &format!("values: [{pattern}]"));
        assert!(allowed(&s, Some(WEB), Sni::Name(yes)), "{pattern}");
        if !no.is_empty() {
            assert!(!allowed(&s, Some(WEB), Sni::Name(no)), "{pattern}");
        }
        assert!(!allowed(&s, Some(WEB), Sni::Absent), "{pattern}");
        assert!(!allowed(&s, Some(WEB), Sni::Unknown), "{pattern}");
    }
    // notValues: no SNI is not the excluded name (as Envoy reads an empty
    // one); an unknown one might be.
    let s = sni_policy("ALLOW", "notValues: [admin.example.com]");
    assert!(allowed(&s, Some(WEB), Sni::Name("api.example.com")));
    assert!(!allowed(&s, Some(WEB), Sni::Name("Admin.Example.com")));
    assert!(allowed(&s, None, Sni::Absent));
    assert!(!allowed(&s, Some(WEB), Sni::Unknown));
}

#[test]
fn deny_connection_sni() {
    let s = sni_policy("DENY", "values: [admin.example.com]");
    assert!(!allowed(&s, Some(WEB), Sni::Name("admin.example.com")));
    assert!(!allowed(&s, Some(WEB), Sni::Name("ADMIN.example.com")));
    assert!(allowed(&s, Some(WEB), Sni::Name("api.example.com")));
    assert!(allowed(&s, Some(WEB), Sni::Absent));
    // What the server could not tell is denied.
    assert!(!allowed(&s, Some(WEB), Sni::Unknown));
    let s = sni_policy("DENY", "notValues: ['*.example.com']");
    assert!(allowed(&s, Some(WEB), Sni::Name("api.example.com")));
    assert!(!allowed(&s, Some(WEB), Sni::Name("api.example.org")));
    assert!(!allowed(&s, Some(WEB), Sni::Absent));
    assert!(!allowed(&s, None, Sni::Absent));
    assert!(!allowed(&s, Some(WEB), Sni::Unknown));
    // Beside another condition (Istio's "L4 and L7 when").
    let s = snap(&policy(
        "DENY",
        "[{when: [{key: source.namespace, values: [front]}, {key: connection.sni, values: [when-l4-l7-sni]}]}]",
    ));
    assert!(!allowed(&s, Some(WEB), Sni::Name("when-l4-l7-sni")));
    assert!(allowed(&s, Some(SHOP_WEB), Sni::Name("when-l4-l7-sni")));
    assert!(allowed(&s, Some(WEB), Sni::Name("other")));
}

#[test]
fn connection_sni_is_validated() {
    for (cond, message) in [
        ("values: ['*a*']", "allowed only once"),
        ("notValues: ['']", "is empty"),
        ("values: []", "needs values or notValues"),
    ] {
        let e = load_err(&policy(
            "ALLOW",
            &format!("[{{when: [{{key: connection.sni, {cond}}}]}}]"),
        ));
        assert!(e.contains(message), "{cond}: {e}");
        assert!(e.contains("spec.rules[0].when[0]"), "{cond}: {e}");
    }
}
