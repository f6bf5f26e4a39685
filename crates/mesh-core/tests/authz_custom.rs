//! CUSTOM AuthorizationPolicies (external authorization). This mesh calls
//! no external authorizer yet (no `envoyExtAuthzHttp` or `envoyExtAuthzGrpc`
//! provider is implemented), so a CUSTOM policy's provider never resolves,
//! and Istio's CUSTOM builder then denies every request
//! and connection of the workload (`rbacDefaultDenyAll`): so does this
//! mesh, and `check` warns (MESH0126).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use mesh_core::analyze::{self, Severity, codes};
use mesh_core::authz::{AuthzDecision, AuthzRequest, ConnectionInfo, Sni, evaluate, evaluate_tcp};
use mesh_core::identity::SpiffeId;
use mesh_core::load::load_str;
use mesh_core::resources::Resources;
use mesh_core::snapshot::{Snapshot, compile};

const WORKLOADS: &str = r#"
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: w, namespace: shop}
spec: {address: 10.0.0.9, labels: {app: w}, serviceAccount: w}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: other, namespace: shop}
spec: {address: 10.0.0.8, labels: {app: other}, serviceAccount: other}
"#;

const CUSTOM: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext, namespace: shop}
spec:
  selector: {matchLabels: {app: w}}
  action: CUSTOM
  provider: {name: my-authz}
  rules: [{to: [{operation: {paths: ["/admin*"]}}]}]
"#;

const ALLOW_ALL: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-all, namespace: shop}
spec:
  action: ALLOW
  rules: [{}]
"#;

fn load(docs: &[&str]) -> (Resources, Snapshot) {
    let yaml = std::iter::once(WORKLOADS)
        .chain(docs.iter().copied())
        .collect::<Vec<_>>()
        .join("---\n");
    let r = load_str(Path::new("t.yaml"), &yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    let s = compile(&r).unwrap_or_else(|e| panic!("{e}"));
    (r, s)
}

fn http(s: &Snapshot, workload: &str, path: &str) -> AuthzDecision {
    let (_, w) = s.workload(workload).unwrap();
    let peer = SpiffeId::parse("spiffe://cluster.local/ns/front/sa/web").unwrap();
    let host = s.canonical_host("w.shop", &w.namespace);
    let headers: Vec<(String, String)> = Vec::new();
    let req = AuthzRequest {
        peer: Some(&peer),
        source_ip: Some("10.1.0.1".parse().unwrap()),
        remote_ip: Some("10.1.0.1".parse().unwrap()),
        destination_ip: Some("10.0.0.9".parse().unwrap()),
        destination_port: 8080,
        host: &host,
        host_aliases: &[],
        method: "GET",
        path,
        headers: Some(&headers),
        auth: None,
        sni: Sni::Absent,
    };
    evaluate(s.workload_policies(w), &req)
}

fn tcp(s: &Snapshot, workload: &str) -> AuthzDecision {
    let (_, w) = s.workload(workload).unwrap();
    let conn = ConnectionInfo {
        peer: None,
        source_ip: Some("10.1.0.1".parse().unwrap()),
        destination_ip: Some("10.0.0.9".parse().unwrap()),
        destination_port: 3306,
        sni: Sni::Absent,
    };
    evaluate_tcp(s.workload_policies(w), &conn)
}

#[test]
fn an_undefined_provider_denies_every_request_of_the_workload() {
    let (_, s) = load(&[CUSTOM, ALLOW_ALL]);
    // Matching the CUSTOM rules or not, and whatever ALLOW says.
    for path in ["/admin", "/admin/x", "/", "/public"] {
        let d = http(&s, "shop/w", path);
        assert!(!d.allowed, "{path}");
        assert_eq!(
            d.policy.as_deref().map(ToString::to_string).as_deref(),
            Some("AuthorizationPolicy shop/ext")
        );
        assert_eq!(d.rule, None);
        let reason = d.reason.to_string();
        assert!(
            reason.contains("AuthorizationPolicy shop/ext")
                && reason.contains("`my-authz` is not defined"),
            "{reason}"
        );
    }
    // TCP connections too (the TCP chain's deny-all).
    assert!(!tcp(&s, "shop/w").allowed);
    // A workload it does not select is not touched.
    assert!(http(&s, "shop/other", "/admin").allowed);
    assert!(tcp(&s, "shop/other").allowed);
    // Without the CUSTOM policy, the same request is allowed.
    let (_, s) = load(&[ALLOW_ALL]);
    assert!(http(&s, "shop/w", "/admin").allowed);
}

/// Istio's CUSTOM builder puts its deny-all in the enforced rules even
/// for a dry-run policy.
#[test]
fn a_dry_run_custom_policy_denies_too() {
    let dry = CUSTOM.replace(
        "metadata: {name: ext, namespace: shop}",
        "metadata: {name: ext, namespace: shop, annotations: {istio.io/dry-run: \"true\"}}",
    );
    let (_, s) = load(&[&dry]);
    assert!(!http(&s, "shop/w", "/").allowed);
}

#[test]
fn check_warns_naming_the_file_and_the_provider() {
    let (r, s) = load(&[CUSTOM]);
    let report = analyze::check(&s, &r);
    let found: Vec<_> = report
        .findings
        .iter()
        .filter(|f| f.code == codes::CUSTOM_PROVIDER_UNDEFINED)
        .collect();
    assert_eq!(found.len(), 1, "{:?}", report.findings);
    assert_eq!(found[0].severity, Severity::Warning);
    for words in [
        "AuthorizationPolicy shop/ext",
        "t.yaml",
        "spec.provider.name",
        "my-authz",
    ] {
        assert!(
            found[0].message.contains(words),
            "{words}: {}",
            found[0].message
        );
    }
    assert!(!report.has_errors());
}

/// `explain` shows the CUSTOM decision at its authorization step.
#[test]
fn explain_shows_the_custom_decision() {
    let yaml = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db}
spec:
  hosts: [db]
  ports: [{number: 80, name: http}]
  workloadSelector: {labels: {app: db}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: db}
spec: {address: 10.0.0.9, labels: {app: db}, serviceAccount: db}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: web}
spec: {address: 10.0.0.8, labels: {app: web}, serviceAccount: web}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext}
spec:
  selector: {matchLabels: {app: db}}
  action: CUSTOM
  provider: {name: my-authz}
  rules: [{to: [{operation: {paths: ["/admin*"]}}]}]
"#;
    let r = load_str(Path::new("e.yaml"), yaml).unwrap_or_else(|e| panic!("{e}"));
    let q = mesh_core::explain::Query {
        from: "web".to_owned(),
        to: "db:80".to_owned(),
        path: "/public".to_owned(),
        ..Default::default()
    };
    let e = mesh_core::explain::explain(&compile(&r).unwrap(), &q).unwrap();
    let step = e.steps.iter().find(|s| s.step == "authorization").unwrap();
    assert!(!step.ok, "{e}");
    assert!(
        step.decision.contains("AuthorizationPolicy default/ext")
            && step
                .decision
                .contains("CUSTOM provider `my-authz` is not defined"),
        "{}",
        step.decision
    );
    assert!(e.outcome.contains("403"), "{e}");
}
