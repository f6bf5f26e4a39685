//! What the compile's indexes must give exactly as a scan of the whole mesh
//! did: ServiceEntry selectors within their namespace and over
//! WorkloadEntries only, a workload's ports and hosts from every service
//! that lists it, and peer and authorization policies by the namespace they
//! can apply in, the first at a level winning.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use mesh_core::load::load_str;
use mesh_core::resources::security::MtlsMode;
use mesh_core::snapshot::{Snapshot, compile};

const MESH: &str = r#"
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: web-v1, namespace: a}
spec: {address: 10.0.0.1, labels: {app: web, version: v1}, serviceAccount: web}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: web-v2, namespace: a}
spec: {address: 10.0.0.2, labels: {app: web, version: v2}, serviceAccount: web}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: web-v1, namespace: b}
spec: {address: 10.0.1.1, labels: {app: web, version: v1}, serviceAccount: web}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: web, namespace: a}
spec:
  hosts: [web.a.svc.cluster.local]
  ports: [{number: 80, name: http, targetPort: 8080}]
  workloadSelector: {labels: {app: web}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: web-canary, namespace: a}
spec:
  hosts: [canary.a.svc.cluster.local]
  ports: [{number: 81, name: http, targetPort: 8081}]
  workloadSelector: {labels: {app: web, version: v2}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: web, namespace: b}
spec:
  hosts: [web.b.svc.cluster.local]
  ports: [{number: 80, name: http, targetPort: 8080}]
  workloadSelector: {labels: {app: web}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: inline, namespace: a}
spec:
  hosts: [inline.a.svc.cluster.local]
  ports: [{number: 80, name: http}]
  endpoints: [{address: 10.0.0.9, labels: {app: web, version: v1}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: nobody, namespace: a}
spec:
  hosts: [nobody.a.svc.cluster.local]
  ports: [{number: 80, name: http}]
  workloadSelector: {labels: {app: web, version: v9}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: mesh, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: b-v1, namespace: b}
spec: {selector: {matchLabels: {version: v1}}, mtls: {mode: PERMISSIVE}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: canary-off, namespace: a}
spec: {selector: {matchLabels: {version: v2}}, mtls: {mode: DISABLE}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: canary-second, namespace: a}
spec: {selector: {matchLabels: {app: web}}, mtls: {mode: PERMISSIVE}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: everywhere, namespace: istio-system}
spec: {action: DENY, rules: [{to: [{operation: {paths: [/admin]}}]}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: only-b, namespace: b}
spec: {selector: {matchLabels: {app: web}}, rules: [{}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: all-of-a, namespace: a}
spec: {rules: [{}]}
"#;

fn snap() -> Snapshot {
    let r = load_str(Path::new("t.yaml"), MESH).unwrap_or_else(|e| panic!("{e}"));
    compile(&r).unwrap_or_else(|e| panic!("{e}"))
}

fn members(s: &Snapshot, host: &str) -> Vec<String> {
    s.services[host]
        .workloads
        .iter()
        .map(|i| s.workloads[*i].key.clone())
        .collect()
}

#[test]
fn selectors_pick_workload_entries_of_their_own_namespace_only() {
    let s = snap();
    assert_eq!(
        members(&s, "web.a.svc.cluster.local"),
        ["a/web-v1", "a/web-v2"]
    );
    assert_eq!(members(&s, "canary.a.svc.cluster.local"), ["a/web-v2"]);
    assert_eq!(members(&s, "web.b.svc.cluster.local"), ["b/web-v1"]);
    // An inline endpoint with the selector's labels is its own entry's only.
    assert_eq!(members(&s, "inline.a.svc.cluster.local"), ["a/inline[0]"]);
    assert!(members(&s, "nobody.a.svc.cluster.local").is_empty());
}

#[test]
fn a_workload_serves_the_ports_and_hosts_of_every_service_listing_it() {
    let s = snap();
    let (i, v2) = s.workload("a/web-v2").unwrap();
    let ports: Vec<u16> = v2.inbound.iter().map(|(p, _)| *p).collect();
    assert_eq!(ports, [8080, 8081]);
    assert_eq!(
        s.hosts_served_by(i),
        ["canary.a.svc.cluster.local", "web.a.svc.cluster.local"]
    );
    let (i, v1) = s.workload("a/web-v1").unwrap();
    assert_eq!(
        v1.inbound.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
        [8080]
    );
    assert_eq!(s.hosts_served_by(i), ["web.a.svc.cluster.local"]);
    assert!(s.workload("a/missing").is_none());
    assert!(s.workload("web-v1").is_none(), "short names are in default");
}

#[test]
fn peer_policies_apply_in_their_namespace_first_at_a_level_winning() {
    let s = snap();
    let mode = |key: &str, port: u16| {
        let (_, w) = s.workload(key).unwrap();
        let m = s.inbound_mode(w, port);
        (m.mode, m.decided_by.map(|r| r.name.clone()))
    };
    // b's workload-level policy selects version v1 in b, never in a.
    assert_eq!(
        mode("b/web-v1", 8080),
        (MtlsMode::Permissive, Some("b-v1".into()))
    );
    // In a, web-v1 is selected by the second workload-level policy only.
    assert_eq!(
        mode("a/web-v1", 8080),
        (MtlsMode::Permissive, Some("canary-second".into()))
    );
    // web-v2 is selected by both of a's: the first read is in force, on a
    // compiled port and on a port no service names alike.
    assert_eq!(
        mode("a/web-v2", 8081),
        (MtlsMode::Disable, Some("canary-off".into()))
    );
    assert_eq!(
        mode("a/web-v2", 7000),
        (MtlsMode::Disable, Some("canary-off".into()))
    );
    // The inline endpoint (app web, v1) is a workload of a like the others.
    assert_eq!(
        mode("a/inline[0]", 80),
        (MtlsMode::Permissive, Some("canary-second".into()))
    );
}

#[test]
fn authorization_policies_apply_by_namespace_and_root_namespace() {
    let s = snap();
    let names = |key: &str| -> Vec<String> {
        let (_, w) = s.workload(key).unwrap();
        s.workload_policies(w)
            .map(|p| p.source.name.clone())
            .collect()
    };
    assert_eq!(names("a/web-v1"), ["everywhere", "all-of-a"]);
    assert_eq!(names("a/inline[0]"), ["everywhere", "all-of-a"]);
    assert_eq!(names("b/web-v1"), ["everywhere", "only-b"]);
}
