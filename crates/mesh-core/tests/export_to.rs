//! `exportTo`: what each namespace sees of ServiceEntries, VirtualServices
//! and DestinationRules, as Istio's visibility rules say, and the
//! precedence among several it sees for one host. Each data plane compiles
//! its namespace's view (from files and from a control plane alike);
//! `check` reports two definitions of a host only where one namespace sees
//! both; `explain` decides over the source's view.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use mesh_core::analyze::{self, codes};
use mesh_core::explain::{Query, explain_in_view};
use mesh_core::load::load_str;
use mesh_core::plan::{self, PlanError, PlanRequest};
use mesh_core::resources::Resources;
use mesh_core::resources::networking::ClientTlsMode;
use mesh_core::snapshot::{Snapshot, compile};
use mesh_core::store::{ConfigSource, FileSource};
use mesh_core::visibility::view;

fn load(yaml: &str) -> Resources {
    load_str(Path::new("t.yaml"), yaml).unwrap_or_else(|e| panic!("{e}"))
}

fn seen_from(r: &Resources, namespace: &str) -> Snapshot {
    compile(&view(r, namespace)).unwrap_or_else(|e| panic!("{e}"))
}

/// The workloads (keys) the host resolves to for a client in `namespace`,
/// or why it does not resolve.
fn endpoints(s: &Snapshot, host: &str, namespace: &str) -> Result<Vec<String>, PlanError> {
    let none: Vec<(String, String)> = Vec::new();
    let req = PlanRequest::mesh(host, 80, namespace, &none);
    let route = plan::route(s, &req)?;
    let svc = route.service.expect("mesh traffic has a service");
    let port = svc.port(80).expect("port 80");
    let eps = plan::endpoints(s, svc, port, None).expect("no subset");
    Ok(eps
        .into_iter()
        .map(|e| s.workloads[e.workload].key.clone())
        .collect())
}

/// One host, `ledger.internal`, defined privately in `a` and in `b`, each
/// with its own workload; `c` has a client and defines nothing.
const TWO_PRIVATE: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ledger, namespace: a}
spec:
  hosts: [ledger.internal]
  exportTo: ["."]
  ports: [{number: 80, name: http}]
  workloadSelector: {labels: {app: ledger}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: ledger-a, namespace: a}
spec: {address: 10.0.1.1, labels: {app: ledger}, serviceAccount: ledger}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ledger, namespace: b}
spec:
  hosts: [ledger.internal]
  exportTo: ["."]
  ports: [{number: 80, name: http}]
  workloadSelector: {labels: {app: ledger}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: ledger-b, namespace: b}
spec: {address: 10.0.2.1, labels: {app: ledger}, serviceAccount: ledger}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: client, namespace: c}
spec: {address: 10.0.3.1, labels: {app: client}, serviceAccount: client}
"#;

#[test]
fn a_private_service_entry_is_seen_in_its_namespace_only() {
    let r = load(TWO_PRIVATE);
    assert_eq!(
        endpoints(&seen_from(&r, "a"), "ledger.internal", "a").unwrap(),
        ["a/ledger-a"]
    );
    assert_eq!(
        endpoints(&seen_from(&r, "b"), "ledger.internal", "b").unwrap(),
        ["b/ledger-b"]
    );
    assert!(matches!(
        endpoints(&seen_from(&r, "c"), "ledger.internal", "c"),
        Err(PlanError::UnknownHost { .. })
    ));
}

#[test]
fn two_private_entries_for_one_host_are_no_conflict() {
    let r = load(TWO_PRIVATE);
    let report = analyze::check(&compile(&r).unwrap(), &r);
    assert!(
        !report
            .findings
            .iter()
            .any(|f| f.code == codes::DUPLICATE_HOST),
        "{:?}",
        report.findings
    );
    // Made public, `c` sees both: that is a conflict, named where it is.
    let public = TWO_PRIVATE.replace("exportTo: [\".\"]", "exportTo: [\"*\"]");
    let r = load(&public);
    let report = analyze::check(&compile(&r).unwrap(), &r);
    let dup: Vec<_> = report
        .findings
        .iter()
        .filter(|f| f.code == codes::DUPLICATE_HOST)
        .collect();
    assert_eq!(dup.len(), 1, "{:?}", report.findings);
    assert!(
        dup[0].message.contains("ServiceEntry a/ledger"),
        "{}",
        dup[0].message
    );
    assert!(
        dup[0].message.contains("ServiceEntry b/ledger"),
        "{}",
        dup[0].message
    );
    // Each namespace prefers its own; `c` gets the first read.
    assert_eq!(
        endpoints(&seen_from(&r, "b"), "ledger.internal", "b").unwrap(),
        ["b/ledger-b"]
    );
    assert_eq!(
        endpoints(&seen_from(&r, "c"), "ledger.internal", "c").unwrap(),
        ["a/ledger-a"]
    );
    // Exported to `a` and `b` only: each sees its own, nobody sees both.
    let named = TWO_PRIVATE.replace("exportTo: [\".\"]", "exportTo: [a, b]");
    let r = load(&named);
    let report = analyze::check(&compile(&r).unwrap(), &r);
    assert!(
        !report
            .findings
            .iter()
            .any(|f| f.code == codes::DUPLICATE_HOST),
        "{:?}",
        report.findings
    );
    assert!(matches!(
        endpoints(&seen_from(&r, "c"), "ledger.internal", "c"),
        Err(PlanError::UnknownHost { .. })
    ));
}

const SERVICE: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api, namespace: shop}
spec:
  hosts: [api]
  ports: [{number: 80, name: http}]
  workloadSelector: {labels: {app: api}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: api-v1, namespace: shop}
spec: {address: 10.0.0.1, labels: {app: api, version: v1}, serviceAccount: api}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: web, namespace: front}
spec: {address: 10.0.0.3, labels: {app: web}, serviceAccount: web}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: batch, namespace: jobs}
spec: {address: 10.0.0.4, labels: {app: batch}, serviceAccount: batch}
"#;

const API: &str = "api.shop.svc.cluster.local";

#[test]
fn a_private_destination_rule_applies_to_its_namespace_only() {
    let r = load(&format!(
        r#"{SERVICE}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: api-plain, namespace: front}}
spec:
  host: {API}
  exportTo: ["."]
  trafficPolicy: {{tls: {{mode: DISABLE}}}}
"#
    ));
    let front = seen_from(&r, "front");
    assert_eq!(
        front.client_tls(API, 80, None).mode,
        Some(ClientTlsMode::Disable)
    );
    let jobs = seen_from(&r, "jobs");
    assert_eq!(jobs.client_tls(API, 80, None).mode, None);
}

#[test]
fn a_private_virtual_service_routes_its_namespace_only() {
    let r = load(&format!(
        r#"{SERVICE}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: api-maintenance, namespace: front}}
spec:
  hosts: [{API}]
  exportTo: ["."]
  http:
  - directResponse: {{status: 503, body: {{string: maintenance}}}}
"#
    ));
    let none: Vec<(String, String)> = Vec::new();
    let front = seen_from(&r, "front");
    let p = plan::route(&front, &PlanRequest::mesh(API, 80, "front", &none)).unwrap();
    assert!(matches!(p.action, plan::PlannedAction::DirectResponse(_)));
    let jobs = seen_from(&r, "jobs");
    let p = plan::route(&jobs, &PlanRequest::mesh(API, 80, "jobs", &none)).unwrap();
    assert!(matches!(p.action, plan::PlannedAction::Forward(_)), "{p:?}");
}

#[test]
fn the_mesh_config_default_applies_to_resources_without_export_to() {
    let mesh = r#"
apiVersion: mesh.config/v1alpha1
kind: MeshConfig
metadata: {name: mesh}
spec:
  defaultServiceExportTo: ["."]
---"#;
    let r = load(&format!("{mesh}{SERVICE}"));
    assert!(seen_from(&r, "shop").services.contains_key(API));
    assert!(!seen_from(&r, "front").services.contains_key(API));
    // An entry's own exportTo overrides the default.
    let exported = SERVICE.replacen(
        "  hosts: [api]\n",
        "  hosts: [api]\n  exportTo: [front]\n",
        1,
    );
    let r = load(&format!("{mesh}{exported}"));
    assert!(seen_from(&r, "front").services.contains_key(API));
    assert!(!seen_from(&r, "jobs").services.contains_key(API));
    assert!(!seen_from(&r, "shop").services.contains_key(API));
}

#[test]
fn the_client_namespace_rule_wins_then_the_service_namespace_then_the_root() {
    let dr = |name: &str, ns: &str, mode: &str| {
        format!(
            r#"
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: {name}, namespace: {ns}}}
spec:
  host: {API}
  trafficPolicy: {{tls: {{mode: {mode}}}}}
"#
        )
    };
    // Read in the order least to most specific.
    let r = load(&format!(
        "{SERVICE}{}{}{}",
        dr("mesh-wide", "istio-system", "SIMPLE"),
        dr("owner", "shop", "ISTIO_MUTUAL"),
        dr("mine", "front", "DISABLE"),
    ));
    let decided = |ns: &str| {
        seen_from(&r, ns)
            .client_tls(API, 80, None)
            .decided_by
            .map(|d| d.to_string())
    };
    assert_eq!(
        decided("front").as_deref(),
        Some("DestinationRule front/mine")
    );
    assert_eq!(
        decided("jobs").as_deref(),
        Some("DestinationRule shop/owner")
    );
    let r = load(&format!(
        "{SERVICE}{}{}",
        dr("mine", "front", "DISABLE"),
        dr("mesh-wide", "istio-system", "SIMPLE"),
    ));
    let decided = seen_from(&r, "jobs").client_tls(API, 80, None).decided_by;
    assert_eq!(
        decided.map(|d| d.to_string()).as_deref(),
        Some("DestinationRule istio-system/mesh-wide")
    );
    // Rules in different namespaces are settled by precedence: no finding.
    let report = analyze::check(&compile(&r).unwrap(), &r);
    assert!(
        !report
            .findings
            .iter()
            .any(|f| f.code == codes::DUPLICATE_HOST),
        "{:?}",
        report.findings
    );
}

#[test]
fn bad_export_to_lists_are_refused_by_field() {
    for (list, words) in [
        (r#"["~", "a"]"#, "cannot be combined"),
        (r#"["*", "."]"#, "cannot be combined"),
        (r#"[a, a]"#, "listed twice"),
        (
            r#"[Not_A_Namespace]"#,
            "is not `.`, `*`, `~` or a namespace name",
        ),
        (r#"[""]"#, "is not `.`"),
    ] {
        let yaml = SERVICE.replacen(
            "  hosts: [api]\n",
            &format!("  hosts: [api]\n  exportTo: {list}\n"),
            1,
        );
        let e = load_str(Path::new("se.yaml"), &yaml)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("se.yaml") && e.contains("spec.exportTo["),
            "{list}: {e}"
        );
        assert!(e.contains(words), "{list}: {e}");
    }
    let e = load_str(
        Path::new("mesh.yaml"),
        "apiVersion: mesh.config/v1alpha1\nkind: MeshConfig\nmetadata: {name: mesh}\nspec: {defaultDestinationRuleExportTo: [\"~\", \".\"]}\n",
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("mesh.yaml") && e.contains("spec.defaultDestinationRuleExportTo[0]"),
        "{e}"
    );
    // `~` alone is valid: visible nowhere.
    let hidden = SERVICE.replacen(
        "  hosts: [api]\n",
        "  hosts: [api]\n  exportTo: [\"~\"]\n",
        1,
    );
    let r = load(&hidden);
    assert!(!seen_from(&r, "shop").services.contains_key(API));
}

#[test]
fn explain_decides_over_the_sources_view() {
    let r = load(TWO_PRIVATE);
    let snap = compile(&r).unwrap();
    let q = |from: &str| Query {
        from: from.to_owned(),
        to: "ledger.internal:80".to_owned(),
        method: "GET".to_owned(),
        path: "/".to_owned(),
        headers: Vec::new(),
    };
    let x = explain_in_view(&r, &snap, &q("b/ledger-b")).unwrap();
    let text = x.to_string();
    assert!(
        text.contains("b/ledger-b") && !text.contains("a/ledger-a"),
        "{text}"
    );
    let x = explain_in_view(&r, &snap, &q("c/client")).unwrap();
    assert!(x.steps.iter().any(|s| !s.ok), "{x}");
    assert!(x.to_string().contains("not a known service"), "{x}");
}

#[test]
fn a_data_plane_reading_files_compiles_its_namespaces_view() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mesh.yaml"), TWO_PRIVATE).unwrap();
    for (ns, want) in [("a", "a/ledger"), ("b", "b/ledger")] {
        let r = FileSource::new(dir.path()).visible_in(ns).load().unwrap();
        let s = compile(&r).unwrap();
        assert_eq!(s.services["ledger.internal"].source.key(), want);
    }
    let r = FileSource::new(dir.path()).visible_in("c").load().unwrap();
    assert!(compile(&r).unwrap().services.is_empty());
}

#[test]
fn a_data_plane_on_a_control_plane_compiles_the_same_view() {
    // What the control plane sends a workload of `c` (both entries public),
    // read back in the order the stream holds them (by name), compiles to
    // what the files give: the precedence does not depend on the order.
    let public = TWO_PRIVATE.replace("exportTo: [\".\"]", "exportTo: [\"*\"]");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mesh.yaml"), &public).unwrap();
    let all = FileSource::new(dir.path())
        .keeping_documents()
        .load()
        .unwrap();
    let catalog = mesh_core::xds::Catalog::new(&all).unwrap();
    for workload in ["b/ledger-b", "c/client"] {
        let names = catalog.view(workload).unwrap();
        let docs: Vec<(&str, &[u8])> = names
            .keys()
            .map(|n| (n.as_str(), &catalog.get(n).unwrap().body[..]))
            .collect();
        let ns = mesh_core::xds::node_namespace(workload);
        let streamed = compile(&view(&mesh_core::xds::read(docs).unwrap(), ns)).unwrap();
        let files = compile(&FileSource::new(dir.path()).visible_in(ns).load().unwrap()).unwrap();
        assert_eq!(
            streamed.services["ledger.internal"].source.key(),
            files.services["ledger.internal"].source.key(),
            "{workload}"
        );
    }
}

#[test]
fn a_workload_keeps_its_own_services_whatever_their_export_to() {
    // `ledger` in `a` is exported to `b` only: `a`'s other workloads do
    // not see it, but the workload serving it builds its inbound from it
    // (its ports, the hosts authorization's `hosts` compare).
    let yaml = TWO_PRIVATE.replacen("exportTo: [\".\"]", "exportTo: [b]", 1)
        + r#"
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: other, namespace: a}
spec: {address: 10.0.1.9, labels: {app: other}, serviceAccount: other}
"#;
    let r = load(&yaml);
    let own = compile(&mesh_core::visibility::workload_view(&r, "a/ledger-a")).unwrap();
    let (i, _) = own.workload("a/ledger-a").unwrap();
    assert_eq!(own.hosts_served_by(i), ["ledger.internal"]);
    let other = compile(&mesh_core::visibility::workload_view(&r, "a/other")).unwrap();
    assert!(!other.services.contains_key("ledger.internal"));
    // The control plane sends it to the workload it selects.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mesh.yaml"), &yaml).unwrap();
    let all = FileSource::new(dir.path())
        .keeping_documents()
        .load()
        .unwrap();
    let catalog = mesh_core::xds::Catalog::new(&all).unwrap();
    assert!(
        catalog
            .view("a/ledger-a")
            .unwrap()
            .contains_key("ServiceEntry/a/ledger")
    );
    assert!(
        !catalog
            .view("a/other")
            .unwrap()
            .contains_key("ServiceEntry/a/ledger")
    );
}
