//! `kind: List` (what `kubectl get -o yaml` prints) and `<Kind>List` (what
//! the API server returns for one kind): their items are read as documents
//! of their own, so a policy inside one is in force and every error names
//! the item.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use mesh_core::authz::{AuthzRequest, Sni, evaluate};
use mesh_core::error::ConfigErrors;
use mesh_core::load::load_str;
use mesh_core::resources::Resources;
use mesh_core::snapshot::compile;

/// A List as `kubectl get deploy,workloadentry,authorizationpolicy -o yaml`
/// prints it, after a first document of its own.
const EXPORT: &str = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: blog}
spec: {host: blog}
---
apiVersion: v1
kind: List
metadata:
  resourceVersion: ""
items:
- apiVersion: networking.istio.io/v1
  kind: WorkloadEntry
  metadata: {name: blog, namespace: default, resourceVersion: "4711"}
  spec: {address: 10.0.0.9, labels: {app: blog}, serviceAccount: blog}
- apiVersion: apps/v1
  kind: Deployment
  metadata: {name: blog}
  spec: {replicas: 2}
- apiVersion: security.istio.io/v1
  kind: AuthorizationPolicy
  metadata: {name: no-admin, namespace: default}
  spec:
    action: DENY
    rules: [{to: [{operation: {paths: ["/admin*"]}}]}]
"#;

fn load(yaml: &str) -> Resources {
    load_str(Path::new("f.yaml"), yaml).unwrap_or_else(|e| panic!("{e}"))
}

fn errors(yaml: &str) -> ConfigErrors {
    load_str(Path::new("f.yaml"), yaml).expect_err("the configuration should be rejected")
}

/// The one error `yaml` gets, rendered.
fn one_error(yaml: &str) -> String {
    let e = errors(yaml);
    assert_eq!(e.0.len(), 1, "expected one error, got: {e}");
    e.0[0].to_string()
}

/// Asks the policies of workload `blog` about `GET path`.
fn decide(r: &Resources, path: &str) -> mesh_core::authz::AuthzDecision {
    let snap = compile(r).unwrap();
    let (_, w) = snap
        .workload("blog")
        .expect("the WorkloadEntry is in the list");
    let req = AuthzRequest {
        peer: None,
        source_ip: Some([10, 0, 0, 1].into()),
        remote_ip: Some([10, 0, 0, 1].into()),
        destination_ip: None,
        destination_port: 8080,
        host: "blog",
        host_aliases: &[],
        method: "GET",
        path,
        headers: None,
        auth: None,
        sni: Sni::Absent,
    };
    evaluate(snap.workload_policies(w), &req)
}

#[test]
fn a_deny_policy_inside_a_list_is_in_force() {
    let r = load(EXPORT);
    let d = decide(&r, "/admin/users");
    assert!(!d.allowed, "{d:?}");
    assert_eq!(
        d.reason,
        "denied by AuthorizationPolicy default/no-admin rule 0"
    );
    let origin = &d.policy.unwrap().origin;
    assert_eq!((origin.document, origin.item), (2, Some(3)));
    assert_eq!(origin.to_string(), "f.yaml (document 2 item 3)");
    assert!(decide(&r, "/").allowed);
    // Top-level documents keep their plain origin.
    let dr = &r.destination_rules[0].source.origin;
    assert_eq!((dr.document, dr.item), (1, None));
}

#[test]
fn non_istio_items_are_listed_as_skipped() {
    let r = load(EXPORT);
    let skipped: Vec<_> = r
        .skipped
        .iter()
        .map(|s| {
            (
                s.kind.as_str(),
                s.name.as_deref(),
                s.origin.document,
                s.origin.item,
            )
        })
        .collect();
    assert_eq!(skipped, [("Deployment", Some("blog"), 2, Some(2))]);
}

#[test]
fn a_typed_list_is_read_the_same_way() {
    // The API server leaves apiVersion and kind out of a typed list's items.
    let yaml = r#"
apiVersion: networking.istio.io/v1
kind: WorkloadEntryList
items:
- metadata: {name: blog}
  spec: {address: 10.0.0.9, labels: {app: blog}, serviceAccount: blog}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicyList
metadata: {resourceVersion: "12"}
items:
- apiVersion: security.istio.io/v1
  kind: AuthorizationPolicy
  metadata: {name: no-admin}
  spec: {action: DENY, rules: [{to: [{operation: {paths: ["/admin*"]}}]}]}
- metadata: {name: no-debug}
  spec: {action: DENY, rules: [{to: [{operation: {paths: ["/debug*"]}}]}]}
"#;
    let r = load(yaml);
    assert!(!decide(&r, "/admin").allowed);
    let d = decide(&r, "/debug/vars");
    assert_eq!(
        d.reason,
        "denied by AuthorizationPolicy default/no-debug rule 0"
    );
    assert_eq!(d.policy.unwrap().origin.item, Some(2));
    assert!(decide(&r, "/").allowed);
}

#[test]
fn errors_name_the_file_the_document_and_the_item() {
    // A field the mesh does not implement, caught while parsing.
    let text = one_error(
        r#"
apiVersion: v1
kind: List
items:
- apiVersion: networking.istio.io/v1
  kind: DestinationRule
  metadata: {name: blog}
  spec: {host: blog}
- apiVersion: security.istio.io/v1
  kind: AuthorizationPolicy
  metadata: {name: x}
  spec: {rules: [{from: [{source: {trustDomain: ['*']}}]}]}
"#,
    );
    assert!(
        text.starts_with(
            "f.yaml: document 1 item 2 (AuthorizationPolicy x): spec.rules[0].from[0].source.trustDomain: "
        ),
        "{text}"
    );
    // A value refused by validation, after parsing.
    let e = errors(
        "apiVersion: v1\nkind: List\nitems:\n- apiVersion: security.istio.io/v1\n  kind: AuthorizationPolicy\n  \
         metadata: {name: x}\n  spec: {action: CUSTOM, rules: [{}]}\n",
    );
    assert_eq!(e.0.len(), 1, "{e}");
    assert_eq!((e.0[0].document, e.0[0].item), (Some(1), Some(1)));
    assert!(
        e.0[0].to_string().starts_with(
            "f.yaml: document 1 item 1 (AuthorizationPolicy default/x): spec.provider: "
        ),
        "{e}"
    );
    // An unknown Istio kind inside a List is refused as it is at top level.
    let text = one_error(
        "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: networking.istio.io/v1alpha3, kind: EnvoyFilter, metadata: {name: f}}\n",
    );
    assert!(
        text.starts_with("f.yaml: document 1 item 1 (EnvoyFilter): kind: "),
        "{text}"
    );
    // An item that is not a resource.
    let text = one_error("apiVersion: v1\nkind: List\nitems: [~]\n");
    assert!(text.starts_with("f.yaml: document 1 item 1: "), "{text}");
}

#[test]
fn duplicates_across_items_and_documents_are_found() {
    let policy = "{apiVersion: security.istio.io/v1, kind: AuthorizationPolicy, metadata: {name: p}, spec: {}}";
    let e = errors(&format!(
        "apiVersion: v1\nkind: List\nitems: [{policy}, {policy}]\n---\n{policy}\n"
    ));
    let found: Vec<_> = e.0.iter().map(|e| (e.document, e.item)).collect();
    assert_eq!(found, [(Some(1), Some(2)), (Some(2), None)], "{e}");
    assert!(
        e.0[0]
            .to_string()
            .ends_with("the first is in f.yaml (document 1 item 1)"),
        "{e}"
    );
}

#[test]
fn a_list_inside_a_list_is_refused_by_name() {
    let text = one_error(
        "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: List\n  items: []\n",
    );
    assert!(
        text.starts_with("f.yaml: document 1 item 1 (List): kind: "),
        "{text}"
    );
    assert!(text.contains("inside a List"), "{text}");
    let text = one_error(
        "apiVersion: v1\nkind: List\nitems:\n- apiVersion: security.istio.io/v1\n  kind: AuthorizationPolicyList\n  items: []\n",
    );
    assert!(text.contains("AuthorizationPolicyList"), "{text}");
}

#[test]
fn malformed_lists_are_refused_not_skipped() {
    let cases = [
        // kubectl prints List as v1 only; anything else is a mistake.
        ("apiVersion: apps/v1\nkind: List\nitems: []\n", "apiVersion"),
        // A typed list carries its kind's group.
        (
            "apiVersion: networking.istio.io/v1\nkind: AuthorizationPolicyList\nitems: []\n",
            "apiVersion",
        ),
        ("apiVersion: v1\nkind: List\nitems: {a: b}\n", "items"),
        ("apiVersion: v1\nkind: List\nitems: []\nspec: {}\n", "spec"),
        // One page of a longer listing: the rest would be missing.
        (
            "apiVersion: v1\nkind: List\nmetadata: {continue: abc}\nitems: []\n",
            "metadata.continue",
        ),
        (
            "apiVersion: v1\nkind: List\nmetadata: {remainingItemCount: 3}\nitems: []\n",
            "metadata.remainingItemCount",
        ),
        // An item of another kind in a typed list.
        (
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicyList\nitems:\n- {kind: PeerAuthentication, metadata: {name: p}}\n",
            "kind",
        ),
    ];
    for (yaml, field) in cases {
        let e = errors(yaml);
        assert_eq!(e.0.len(), 1, "{yaml}: {e}");
        assert_eq!(e.0[0].field.as_deref(), Some(field), "{yaml}: {e}");
    }
    // Empty lists are fine.
    load("apiVersion: v1\nkind: List\nitems: []\n---\napiVersion: v1\nkind: List\n");
}
