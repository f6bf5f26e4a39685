//! The `Sidecar` resource: what a workload's sidecar sees of the mesh (its
//! egress hosts), where it sends what is no service of the mesh
//! (`outboundTrafficPolicy`), and which Sidecar is in force (a selecting
//! one, else the namespace's, else the root namespace's). Every data plane
//! compiles its workload's view: from files, from the control plane, and
//! in `explain`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use mesh_core::load::load_str;
use mesh_core::meshconfig::OutboundMode;
use mesh_core::resources::Resources;
use mesh_core::snapshot::{Snapshot, compile};
use mesh_core::store::{ConfigSource, FileSource};
use mesh_core::visibility::workload_view;

fn load(yaml: &str) -> Resources {
    load_str(Path::new("t.yaml"), yaml).unwrap_or_else(|e| panic!("{e}"))
}

fn seen_by(r: &Resources, workload: &str) -> Snapshot {
    compile(&workload_view(r, workload)).unwrap_or_else(|e| panic!("{e}"))
}

/// The service hosts, in order.
fn services(s: &Snapshot) -> Vec<String> {
    s.services.keys().cloned().collect()
}

/// A service in each of `front`, `shop` and `istio-system`; workloads
/// `front/web` (app web), `front/batch` (app batch) and `shop/api`.
const MESH: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: web, namespace: front}
spec:
  hosts: [web]
  ports: [{number: 80, name: http}]
  workloadSelector: {labels: {app: web}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api, namespace: shop}
spec:
  hosts: [api]
  ports: [{number: 80, name: http}]
  workloadSelector: {labels: {app: api}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: telemetry, namespace: istio-system}
spec:
  hosts: [telemetry]
  ports: [{number: 80, name: http}]
  workloadSelector: {labels: {app: telemetry}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: web, namespace: front}
spec: {address: 10.0.0.1, labels: {app: web}, serviceAccount: web}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: batch, namespace: front}
spec: {address: 10.0.0.2, labels: {app: batch}, serviceAccount: batch}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: api, namespace: shop}
spec: {address: 10.0.0.3, labels: {app: api}, serviceAccount: api}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: telemetry, namespace: istio-system}
spec: {address: 10.0.0.4, labels: {app: telemetry}, serviceAccount: telemetry}
"#;

const WEB: &str = "web.front.svc.cluster.local";
const API: &str = "api.shop.svc.cluster.local";
const TELEMETRY: &str = "telemetry.istio-system.svc.cluster.local";

fn sidecar(name: &str, ns: &str, spec: &str) -> String {
    format!(
        "\n---\napiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}"
    )
}

#[test]
fn without_a_sidecar_a_workload_sees_what_is_exported_to_it() {
    let r = load(MESH);
    assert_eq!(services(&seen_by(&r, "front/web")), [API, TELEMETRY, WEB]);
}

#[test]
fn the_namespace_sidecar_limits_what_its_workloads_see() {
    let r = load(&format!(
        "{MESH}{}",
        sidecar(
            "default",
            "front",
            "  egress:\n  - hosts: [\"./*\", \"istio-system/*\"]\n"
        )
    ));
    let s = seen_by(&r, "front/web");
    assert!(s.services.contains_key(WEB) && s.services.contains_key(TELEMETRY));
    assert!(!s.services.contains_key(API), "{:?}", services(&s));
    // Another namespace is not touched.
    assert!(seen_by(&r, "shop/api").services.contains_key(WEB));
}

#[test]
fn a_selecting_sidecar_wins_then_the_namespace_then_the_root() {
    let r = load(&format!(
        "{MESH}{}{}{}",
        sidecar(
            "mesh-default",
            "istio-system",
            "  egress:\n  - hosts: [\"istio-system/*\"]\n"
        ),
        sidecar("default", "front", "  egress:\n  - hosts: [\"./*\"]\n"),
        sidecar(
            "batch",
            "front",
            "  workloadSelector: {labels: {app: batch}}\n  egress:\n  - hosts: [\"shop/api.shop.svc.cluster.local\"]\n  outboundTrafficPolicy: {mode: REGISTRY_ONLY}\n"
        ),
    ));
    // front/batch: its own Sidecar (and its REGISTRY_ONLY).
    let batch = seen_by(&r, "front/batch");
    assert_eq!(services(&batch), [API]);
    assert_eq!(
        batch.mesh.outbound_traffic_policy.mode,
        OutboundMode::RegistryOnly
    );
    // front/web: the namespace's, and the MeshConfig's policy.
    let web = seen_by(&r, "front/web");
    assert_eq!(services(&web), [WEB]);
    assert_eq!(
        web.mesh.outbound_traffic_policy.mode,
        OutboundMode::AllowAny
    );
    // shop/api: the root namespace's; its own service stays (its inbound).
    assert_eq!(services(&seen_by(&r, "shop/api")), [API, TELEMETRY]);
}

#[test]
fn egress_hosts_read_as_istio_writes_them() {
    for (hosts, want) in [
        (r#"["*/*"]"#, vec![API, TELEMETRY, WEB]),
        (r#"["~/*"]"#, vec![WEB]),
        (r#"["*/api.shop.svc.cluster.local"]"#, vec![API, WEB]),
        (r#"["shop/*.cluster.local"]"#, vec![API, WEB]),
        (
            r#"["front/*", "istio-system/telemetry.istio-system.svc.cluster.local"]"#,
            vec![TELEMETRY, WEB],
        ),
    ] {
        let r = load(&format!(
            "{MESH}{}",
            sidecar(
                "default",
                "front",
                &format!("  egress:\n  - hosts: {hosts}\n")
            )
        ));
        // `~/*` imports nothing; the workload's own service stays.
        assert_eq!(services(&seen_by(&r, "front/web")), want, "{hosts}");
    }
}

#[test]
fn a_virtual_service_outside_the_egress_hosts_does_not_route() {
    let vs = r#"
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: api-maintenance, namespace: front}
spec:
  hosts: [api.shop.svc.cluster.local]
  http:
  - directResponse: {status: 503}
"#;
    let r = load(&format!(
        "{MESH}{vs}{}",
        sidecar("default", "front", "  egress:\n  - hosts: [\"shop/*\"]\n")
    ));
    let s = seen_by(&r, "front/web");
    assert!(s.services.contains_key(API));
    assert!(
        !s.mesh_routes.contains_key(API),
        "a VirtualService of front is not imported by shop/*"
    );
    let r = load(&format!(
        "{MESH}{vs}{}",
        sidecar(
            "default",
            "front",
            "  egress:\n  - hosts: [\"shop/*\", \"./*\"]\n"
        )
    ));
    assert!(seen_by(&r, "front/web").mesh_routes.contains_key(API));
}

#[test]
fn what_sidecars_cannot_do_here_is_refused_by_name() {
    let refused = |spec: &str, field: &str, words: &str| {
        let yaml = format!(
            "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: s, namespace: front}}\nspec:\n{spec}"
        );
        let e = load_str(Path::new("sc.yaml"), &yaml)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("sc.yaml") && e.contains(field) && e.contains(words),
            "{spec}: {e}"
        );
    };
    refused(
        "  ingress:\n  - port: {number: 9080, protocol: HTTP, name: http}\n    defaultEndpoint: 127.0.0.1:8080\n    tls: {mode: SIMPLE}\n",
        "spec.ingress[0].tls",
        "unsupported field `tls`",
    );
    refused(
        "  egress:\n  - port: {number: 80, protocol: HTTP, name: http}\n    hosts: [\"./*\"]\n",
        "spec.egress[0].port",
        "unsupported field `port`",
    );
    refused(
        "  egress:\n  - hosts: [\"./*\"]\n    captureMode: NONE\n",
        "spec.egress[0].captureMode",
        "unsupported field",
    );
    refused(
        "  outboundTrafficPolicy: {mode: REGISTRY_ONLY, egressProxy: {host: egress}}\n",
        "egressProxy",
        "unsupported field",
    );
    refused(
        "  egress:\n  - hosts: [reviews]\n",
        "spec.egress[0].hosts[0]",
        "host must be of form namespace/dnsName",
    );
    refused(
        "  egress:\n  - hosts: [\"Bad_NS/*\"]\n",
        "spec.egress[0].hosts[0]",
        "namespace/dnsName",
    );
    refused(
        "  egress:\n  - hosts: [\"./a*b\"]\n",
        "spec.egress[0].hosts[0]",
        "only as the first character",
    );
    refused(
        "  egress:\n  - hosts: []\n",
        "spec.egress[0].hosts",
        "at least one egress host",
    );
    refused(
        "  egress:\n  - hosts: [\"./*\"]\n  - hosts: [\"*/*\"]\n",
        "spec.egress[1]",
        "only one egress listener",
    );
    refused(
        "  workloadSelector: {labels: {app: web}}\n",
        "spec",
        "empty configuration",
    );
}

#[test]
fn files_and_the_control_plane_give_the_workload_the_same_view() {
    let yaml = format!(
        "{MESH}{}{}",
        sidecar("default", "front", "  egress:\n  - hosts: [\"./*\"]\n"),
        sidecar(
            "mesh",
            "istio-system",
            "  outboundTrafficPolicy: {mode: REGISTRY_ONLY}\n"
        ),
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mesh.yaml"), &yaml).unwrap();
    let all = FileSource::new(dir.path())
        .keeping_documents()
        .load()
        .unwrap();
    let catalog = mesh_core::xds::Catalog::new(&all).unwrap();
    for workload in ["front/web", "shop/api"] {
        let names = catalog.view(workload).unwrap();
        assert!(
            names.keys().any(|n| n.starts_with("Sidecar/")),
            "{workload} is sent its Sidecars: {names:?}"
        );
        let docs: Vec<(&str, &[u8])> = names
            .keys()
            .map(|n| (n.as_str(), &catalog.get(n).unwrap().body[..]))
            .collect();
        let streamed = compile(&mesh_core::xds::node_view(
            &mesh_core::xds::read(docs).unwrap(),
            workload,
        ))
        .unwrap();
        let files = compile(
            &FileSource::new(dir.path())
                .seen_by_workload(workload)
                .load()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(services(&streamed), services(&files), "{workload}");
        assert_eq!(
            streamed.mesh.outbound_traffic_policy, files.mesh.outbound_traffic_policy,
            "{workload}"
        );
    }
    // shop/api has no Sidecar of its namespace: the root's (REGISTRY_ONLY).
    let api = compile(
        &FileSource::new(dir.path())
            .seen_by_workload("shop/api")
            .load()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        api.mesh.outbound_traffic_policy.mode,
        OutboundMode::RegistryOnly
    );
}

#[test]
fn explain_decides_over_the_workloads_sidecar_view() {
    let r = load(&format!(
        "{MESH}{}",
        sidecar("default", "front", "  egress:\n  - hosts: [\"./*\"]\n")
    ));
    let snap = compile(&r).unwrap();
    let q = mesh_core::explain::Query {
        from: "front/web".to_owned(),
        to: "api.shop.svc.cluster.local:80".to_owned(),
        method: "GET".to_owned(),
        path: "/".to_owned(),
        headers: Vec::new(),
    };
    let x = mesh_core::explain::explain_in_view(&r, &snap, &q).unwrap();
    assert!(x.steps.iter().any(|s| !s.ok), "{x}");
    assert!(x.to_string().contains("not a known service"), "{x}");
}
