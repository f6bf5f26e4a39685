//! `istio.io/dry-run: "true"`: Istio's shadow mode. A dry-run policy is
//! evaluated, and what the dry-run policies would have decided is reported
//! in `AuthzDecision::shadow`, but it is never enforced.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use mesh_core::authz::{AuthzDecision, AuthzRequest, ConnectionInfo, Sni, evaluate, evaluate_tcp};
use mesh_core::load::load_str;
use mesh_core::snapshot::{Snapshot, compile};

const WORKLOAD: &str = r#"
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: w, namespace: shop}
spec: {address: 10.0.0.9, labels: {app: w}, serviceAccount: w}
"#;

/// A policy on workload `w`; `dry_run` is the annotation's value, if any.
fn policy(name: &str, dry_run: Option<&str>, action: &str, rules: &str) -> String {
    let annotations = dry_run
        .map(|v| format!(", annotations: {{istio.io/dry-run: \"{v}\"}}"))
        .unwrap_or_default();
    format!(
        "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
         metadata: {{name: {name}, namespace: shop{annotations}}}\n\
         spec:\n  selector: {{matchLabels: {{app: w}}}}\n  action: {action}\n  rules: {rules}\n"
    )
}

fn snap(policies: &[String]) -> Snapshot {
    let yaml = format!("{WORKLOAD}{}", policies.concat());
    let r = load_str(Path::new("t.yaml"), &yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    compile(&r).unwrap_or_else(|e| panic!("{e}"))
}

fn get(s: &Snapshot, method: &str, path: &str) -> AuthzDecision {
    let (_, w) = s.workload("shop/w").unwrap();
    let req = AuthzRequest {
        peer: None,
        source_ip: Some([10, 1, 0, 1].into()),
        remote_ip: Some([10, 1, 0, 1].into()),
        destination_ip: Some([10, 0, 0, 9].into()),
        destination_port: 8080,
        host: "w.shop.svc.cluster.local",
        host_aliases: &[],
        method,
        path,
        headers: None,
        auth: None,
        sni: Sni::Absent,
    };
    evaluate(s.workload_policies(w), &req)
}

/// The shadow verdict as `(allowed, policy name, rule, reason)`.
fn shadow(d: &AuthzDecision) -> (bool, Option<String>, Option<usize>, String) {
    let s = d.shadow.as_ref().expect("a dry-run policy applies");
    (
        s.allowed,
        s.policy.as_ref().map(|p| p.name.clone()),
        s.rule,
        s.reason.clone(),
    )
}

const ADMIN: &str = "[{to: [{operation: {paths: [\"/admin*\"]}}]}]";
const GET: &str = "[{to: [{operation: {methods: [GET]}}]}]";

#[test]
fn a_dry_run_deny_does_not_deny_and_reports_its_verdict() {
    let s = snap(&[policy("no-admin", Some("true"), "DENY", ADMIN)]);
    assert!(s.authz_policies[0].dry_run);
    let d = get(&s, "GET", "/admin/users");
    assert!(d.allowed, "{d:?}");
    assert_eq!(
        (d.policy.as_ref(), d.reason.to_string().as_str()),
        (None, "no ALLOW policy applies")
    );
    assert_eq!(
        shadow(&d),
        (
            false,
            Some("no-admin".to_owned()),
            Some(0),
            "dry-run AuthorizationPolicy shop/no-admin rule 0 would deny".to_owned()
        )
    );
    let d = get(&s, "GET", "/");
    assert!(d.allowed);
    assert_eq!(
        shadow(&d),
        (
            true,
            None,
            None,
            "dry-run policies would allow: none matched".to_owned()
        )
    );
}

#[test]
fn a_dry_run_allow_does_not_make_a_workload_default_deny() {
    let s = snap(&[policy("only-get", Some("true"), "ALLOW", GET)]);
    let d = get(&s, "POST", "/");
    assert!(d.allowed, "{d:?}");
    assert_eq!(d.reason, "no ALLOW policy applies");
    assert_eq!(
        shadow(&d),
        (
            false,
            None,
            None,
            "dry-run policies would deny: no ALLOW policy matched".to_owned()
        )
    );
    let d = get(&s, "GET", "/");
    assert!(d.allowed);
    assert_eq!(
        shadow(&d).3,
        "dry-run AuthorizationPolicy shop/only-get rule 0 would allow"
    );
}

#[test]
fn enforced_and_dry_run_policies_are_decided_apart() {
    // Istio's dry-run-mix case: one enforced ALLOW, one dry-run ALLOW.
    let s = snap(&[
        policy(
            "dry",
            Some("true"),
            "ALLOW",
            "[{to: [{operation: {paths: [/b]}}]}]",
        ),
        policy(
            "real",
            Some("false"),
            "ALLOW",
            "[{to: [{operation: {paths: [/a]}}]}]",
        ),
    ]);
    assert!(!s.authz_policies[1].dry_run);
    let a = get(&s, "GET", "/a");
    assert_eq!(a.reason, "allowed by AuthorizationPolicy shop/real rule 0");
    assert!(!shadow(&a).0);
    let b = get(&s, "GET", "/b");
    assert_eq!(
        (b.allowed, b.reason.to_string().as_str()),
        (false, "no ALLOW policy matched")
    );
    assert_eq!(shadow(&b).1.as_deref(), Some("dry"));
    assert!(shadow(&b).0);
    // DENY before ALLOW among the dry-run policies too.
    let s = snap(&[
        policy("all", Some("true"), "ALLOW", "[{}]"),
        policy("no-admin", Some("true"), "DENY", ADMIN),
    ]);
    assert_eq!(
        shadow(&get(&s, "GET", "/admin")).1.as_deref(),
        Some("no-admin")
    );
    assert_eq!(shadow(&get(&s, "GET", "/")).1.as_deref(), Some("all"));
    // An enforced DENY still denies, beside a dry-run ALLOW that would allow.
    let s = snap(&[
        policy("all", Some("true"), "ALLOW", "[{}]"),
        policy("no-admin", None, "DENY", ADMIN),
    ]);
    let d = get(&s, "GET", "/admin");
    assert!(!d.allowed);
    assert!(shadow(&d).0);
}

#[test]
fn no_shadow_without_a_dry_run_policy() {
    let s = snap(&[policy("no-admin", Some("false"), "DENY", ADMIN)]);
    let d = get(&s, "GET", "/admin");
    assert!(!d.allowed);
    assert_eq!(d.shadow, None);
}

#[test]
fn a_dry_run_audit_policy_audits_nothing() {
    let s = snap(&[policy("audit", Some("true"), "AUDIT", GET)]);
    let d = get(&s, "GET", "/");
    assert!(d.allowed);
    assert_eq!((d.audited_by, d.shadow), (None, None));
}

#[test]
fn tcp_connections_get_a_shadow_verdict_too() {
    let s = snap(&[policy(
        "no-db",
        Some("true"),
        "DENY",
        "[{to: [{operation: {ports: [\"5432\"]}}]}]",
    )]);
    let (_, w) = s.workload("shop/w").unwrap();
    let conn = ConnectionInfo {
        peer: None,
        source_ip: Some([10, 1, 0, 1].into()),
        destination_ip: None,
        destination_port: 5432,
        sni: Sni::Absent,
    };
    let d = evaluate_tcp(s.workload_policies(w), &conn);
    assert!(d.allowed, "{d:?}");
    assert_eq!(
        shadow(&d).3,
        "dry-run AuthorizationPolicy shop/no-db rule 0 would deny"
    );
}

#[test]
fn a_bad_annotation_value_is_refused_naming_the_field() {
    for value in ["yes", "True", "1", ""] {
        let yaml = format!("{WORKLOAD}{}", policy("p", Some(value), "DENY", ADMIN));
        let e = load_str(Path::new("t.yaml"), &yaml).expect_err(value);
        assert_eq!(e.0.len(), 1, "{e}");
        let text = e.0[0].to_string();
        assert!(
            text.starts_with(
                "t.yaml: document 2 (AuthorizationPolicy shop/p): metadata.annotations[istio.io/dry-run]: "
            ),
            "{text}"
        );
        assert!(text.contains(&format!("`{value}`")), "{text}");
    }
    // Resources that did not come through the loader are refused by
    // compile the same way, never enforced half-read.
    let yaml = format!("{WORKLOAD}{}", policy("p", Some("true"), "DENY", ADMIN));
    let mut r = load_str(Path::new("t.yaml"), &yaml).unwrap();
    r.authorization_policies[0]
        .meta
        .annotations
        .insert("istio.io/dry-run".to_owned(), "maybe".to_owned());
    let e = compile(&r).map(|_| ()).unwrap_err();
    assert_eq!(
        e.0[0].field.as_deref(),
        Some("metadata.annotations[istio.io/dry-run]")
    );
}

#[test]
fn explain_tells_the_dry_run_verdict_without_changing_the_outcome() {
    let yaml = |annotations: &str| {
        format!(
            r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: db}}
spec:
  hosts: [db]
  ports: [{{number: 80, name: http}}]
  workloadSelector: {{labels: {{app: db}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: db}}
spec: {{address: 10.0.0.9, labels: {{app: db}}, serviceAccount: db}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: web}}
spec: {{address: 10.0.0.8, labels: {{app: web}}, serviceAccount: web}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: no-admin{annotations}}}
spec:
  selector: {{matchLabels: {{app: db}}}}
  action: DENY
  rules: [{{to: [{{operation: {{paths: ["/admin*"]}}}}]}}]
"#
        )
    };
    let explain = |yaml: &str| {
        let r = load_str(Path::new("e.yaml"), yaml).unwrap_or_else(|e| panic!("{e}"));
        let q = mesh_core::explain::Query {
            from: "web".to_owned(),
            to: "db:80".to_owned(),
            path: "/admin".to_owned(),
            ..Default::default()
        };
        mesh_core::explain::explain(&compile(&r).unwrap(), &q).unwrap()
    };
    let dry = explain(&yaml(", annotations: {istio.io/dry-run: \"true\"}"));
    let step = dry
        .steps
        .iter()
        .find(|s| s.step == "authorization")
        .unwrap();
    assert!(step.ok, "{dry}");
    assert_eq!(
        step.decision,
        "default/db: no ALLOW policy applies; dry-run AuthorizationPolicy default/no-admin rule 0 would deny"
    );
    assert_eq!(
        dry.outcome,
        "100% 200 (reaches db.default.svc.cluster.local)"
    );
    let enforced = explain(&yaml(""));
    assert!(enforced.outcome.contains("403"), "{enforced}");
}

/// `remoteIpBlocks` at L4: no X-Forwarded-For, the peer is the client.
#[test]
fn remote_ip_blocks_at_l4_are_the_peer() {
    let s = snap(&[policy(
        "office",
        None,
        "ALLOW",
        "[{from: [{source: {remoteIpBlocks: [10.1.0.0/16]}}]}]",
    )]);
    let (_, w) = s.workload("shop/w").unwrap();
    let conn = |ip: [u8; 4]| ConnectionInfo {
        peer: None,
        source_ip: Some(ip.into()),
        destination_ip: Some([10, 0, 0, 9].into()),
        destination_port: 5432,
        sni: Sni::Absent,
    };
    assert!(evaluate_tcp(s.workload_policies(w), &conn([10, 1, 0, 1])).allowed);
    assert!(!evaluate_tcp(s.workload_policies(w), &conn([192, 0, 2, 1])).allowed);
}
