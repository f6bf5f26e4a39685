//! A WorkloadEntry whose status says `Healthy: "False"` (Istio's health
//! checks write it; the Kubernetes source writes it for a terminating or
//! unready pod) stays a workload but is no endpoint: new requests go to the
//! others.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use mesh_core::load::load_str;
use mesh_core::plan::endpoints;
use mesh_core::snapshot::compile;

fn mesh(status_v2: &str) -> String {
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: web}}
spec:
  hosts: [web.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 80, name: http}}]
  workloadSelector: {{labels: {{app: web}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: web-v1}}
spec: {{address: 10.0.0.1, labels: {{app: web}}, serviceAccount: web}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: web-v2}}
spec: {{address: 10.0.0.2, labels: {{app: web}}, serviceAccount: web}}
{status_v2}
"#
    )
}

fn endpoint_addresses(yaml: &str) -> Vec<String> {
    let r = load_str(Path::new("f.yaml"), yaml).unwrap_or_else(|e| panic!("{e}"));
    let snap = compile(&r).unwrap_or_else(|e| panic!("{e}"));
    let svc = &snap.services["web.default.svc.cluster.local"];
    assert_eq!(svc.workloads.len(), 2, "both stay members of the service");
    assert!(
        snap.workload("web-v2").is_some(),
        "and workloads of their own"
    );
    endpoints(&snap, svc, &svc.ports[0], None)
        .unwrap()
        .into_iter()
        .map(|e| e.key.split(':').next().unwrap().to_owned())
        .collect()
}

#[test]
fn an_unhealthy_workload_is_no_endpoint() {
    let yaml =
        mesh("status:\n  conditions:\n  - {type: Healthy, status: \"False\", reason: Terminating}");
    assert_eq!(endpoint_addresses(&yaml), ["10.0.0.1"]);
}

#[test]
fn healthy_unknown_or_no_condition_is_an_endpoint() {
    for status in [
        "",
        "status: {}",
        "status:\n  conditions:\n  - {type: Healthy, status: \"True\"}",
        "status:\n  conditions:\n  - {type: Healthy, status: Unknown}",
        "status:\n  conditions:\n  - {type: Ready, status: \"False\"}",
    ] {
        assert_eq!(
            endpoint_addresses(&mesh(status)),
            ["10.0.0.1", "10.0.0.2"],
            "{status:?}"
        );
    }
}

#[test]
fn a_condition_status_that_is_none_of_true_false_unknown_is_refused_by_field() {
    for (status, field) in [
        (
            "status:\n  conditions:\n  - {type: Healthy, status: \"no\"}",
            "status.conditions[0].status",
        ),
        (
            "status:\n  conditions:\n  - {type: Ready, status: \"True\"}\n  - {type: Healthy}",
            "status.conditions[1].status",
        ),
        (
            "status:\n  conditions: {Healthy: false}",
            "status.conditions",
        ),
    ] {
        let e = load_str(Path::new("f.yaml"), &mesh(status)).expect_err(status);
        let text = e.to_string();
        assert!(text.contains(field), "{status:?}: {text}");
    }
}

/// The data plane's lists (made once per snapshot and shared) hold what a
/// list made afresh holds, the same list every time; a new snapshot makes
/// its own from its own workloads.
#[test]
fn shared_endpoint_lists_follow_their_snapshot() {
    use mesh_core::plan::endpoints_shared;
    let lists = |yaml: &str| {
        let r = load_str(Path::new("f.yaml"), yaml).unwrap_or_else(|e| panic!("{e}"));
        let snap = compile(&r).unwrap_or_else(|e| panic!("{e}"));
        let svc = &snap.services["web.default.svc.cluster.local"];
        let first = endpoints_shared(&snap, svc, &svc.ports[0], None).unwrap();
        let again = endpoints_shared(&snap, svc, &svc.ports[0], None).unwrap();
        assert!(std::sync::Arc::ptr_eq(&first, &again), "made once");
        assert_eq!(
            &first[..],
            &endpoints(&snap, svc, &svc.ports[0], None).unwrap()[..]
        );
        assert!(
            endpoints_shared(&snap, svc, &svc.ports[0], Some("nosuch")).is_none(),
            "an undefined subset has no list, every time"
        );
        assert!(endpoints_shared(&snap, svc, &svc.ports[0], Some("nosuch")).is_none());
        first.iter().map(|e| e.key.clone()).collect::<Vec<_>>()
    };
    assert_eq!(lists(&mesh("")), ["10.0.0.1:80", "10.0.0.2:80"]);
    let draining =
        mesh("status:\n  conditions:\n  - {type: Healthy, status: \"False\", reason: Terminating}");
    assert_eq!(lists(&draining), ["10.0.0.1:80"]);
}
