//! Captured connections: which service (or endpoint) an original
//! destination belongs to, by ServiceEntry `addresses` (virtual IPs) and
//! workload addresses.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::Path;

use mesh_core::load::load_str;
use mesh_core::plan::{CapturedDestination, captured};
use mesh_core::snapshot::{Snapshot, compile};

const MESH: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: mysql, namespace: default}
spec:
  hosts: [mysql.default.svc.cluster.local]
  addresses: [10.96.0.10]
  ports: [{number: 3306, name: mysql, protocol: MYSQL}]
  resolution: STATIC
  workloadSelector: {labels: {app: mysql}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: wordpress, namespace: default}
spec:
  hosts: [wordpress.default.svc.cluster.local]
  addresses: [10.96.0.20, "fd00:96::20"]
  ports: [{number: 80, name: http, protocol: HTTP, targetPort: 8080}]
  resolution: STATIC
  workloadSelector: {labels: {app: wordpress}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: partners, namespace: default}
spec:
  hosts: [partners.example.com]
  addresses: [192.0.2.0/24]
  location: MESH_EXTERNAL
  ports: [{number: 443, name: tls, protocol: TLS}]
  resolution: NONE
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: partner-api, namespace: default}
spec:
  hosts: [api.partners.example.com]
  addresses: [192.0.2.7/32]
  location: MESH_EXTERNAL
  ports: [{number: 443, name: tls, protocol: TLS}]
  resolution: NONE
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: mysql-0, namespace: default}
spec: {address: 10.244.0.5, labels: {app: mysql}, serviceAccount: mysql}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: wp-v1, namespace: default}
spec: {address: 10.244.0.6, labels: {app: wordpress, version: v1}, ports: {http: 8080}}
"#;

fn snap(yaml: &str) -> Snapshot {
    compile(&load_str(Path::new("mesh.yaml"), yaml).expect("loads")).expect("compiles")
}

fn at(s: &Snapshot, addr: &str) -> String {
    let addr: SocketAddr = addr.parse().unwrap();
    match captured(s, addr) {
        CapturedDestination::Service { service, port } => {
            format!("service {}:{}", service.host, port.number)
        }
        CapturedDestination::Endpoint {
            service,
            port,
            endpoint,
        } => format!(
            "endpoint {} of {}:{}",
            endpoint.key, service.host, port.number
        ),
        CapturedDestination::Unknown => "unknown".into(),
    }
}

#[test]
fn virtual_ips_name_their_service_on_its_ports() {
    let s = snap(MESH);
    assert_eq!(
        at(&s, "10.96.0.10:3306"),
        "service mysql.default.svc.cluster.local:3306"
    );
    assert_eq!(
        at(&s, "10.96.0.20:80"),
        "service wordpress.default.svc.cluster.local:80"
    );
    assert_eq!(
        at(&s, "[fd00:96::20]:80"),
        "service wordpress.default.svc.cluster.local:80"
    );
    assert_eq!(
        at(&s, "[::ffff:10.96.0.10]:3306"),
        "service mysql.default.svc.cluster.local:3306",
        "an IPv4 destination seen by a dual-stack socket"
    );
    // A virtual IP on a port the service does not have is no service.
    assert_eq!(at(&s, "10.96.0.10:22"), "unknown");
}

#[test]
fn the_most_specific_block_wins() {
    let s = snap(MESH);
    assert_eq!(
        at(&s, "192.0.2.7:443"),
        "service api.partners.example.com:443"
    );
    assert_eq!(at(&s, "192.0.2.99:443"), "service partners.example.com:443");
}

#[test]
fn workload_addresses_name_that_endpoint_by_its_target_port() {
    let s = snap(MESH);
    assert_eq!(
        at(&s, "10.244.0.5:3306"),
        "endpoint 10.244.0.5:3306 of mysql.default.svc.cluster.local:3306"
    );
    assert_eq!(
        at(&s, "10.244.0.6:8080"),
        "endpoint 10.244.0.6:8080 of wordpress.default.svc.cluster.local:80"
    );
    // The service port is not what the workload listens on.
    assert_eq!(at(&s, "10.244.0.6:80"), "unknown");
    assert_eq!(at(&s, "203.0.113.1:80"), "unknown");
}

#[test]
fn a_bad_address_is_refused_by_field() {
    let bad = MESH.replace("addresses: [10.96.0.10]", "addresses: [mysql.local]");
    let err = load_str(Path::new("mesh.yaml"), &bad)
        .and_then(|r| compile(&r))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("spec.addresses[0]") && err.contains("not an IP address or CIDR block"),
        "{err}"
    );
}

#[test]
fn outbound_traffic_policy_reads_istios_names() {
    use mesh_core::meshconfig::OutboundMode;
    let s = snap(MESH);
    assert_eq!(s.mesh.outbound_traffic_policy.mode, OutboundMode::AllowAny);
    let with = format!(
        "{MESH}---\napiVersion: mesh.config/v1alpha1\nkind: MeshConfig\nmetadata: {{name: mesh}}\n\
         spec:\n  outboundTrafficPolicy: {{mode: REGISTRY_ONLY}}\n"
    );
    assert_eq!(
        snap(&with).mesh.outbound_traffic_policy.mode,
        OutboundMode::RegistryOnly
    );
    let bad = with.replace("REGISTRY_ONLY", "DENY_ALL");
    let err = load_str(Path::new("mesh.yaml"), &bad)
        .unwrap_err()
        .to_string();
    assert!(err.contains("DENY_ALL") || err.contains("mode"), "{err}");
}

#[test]
fn check_with_capture_warns_of_loopback_workloads_and_services_without_vips() {
    use mesh_core::analyze::{CheckOptions, check, check_with, codes};
    let yaml = format!(
        "{MESH}---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\n\
         metadata: {{name: old, namespace: default}}\nspec: {{address: 127.0.0.7, labels: {{app: cache}}}}\n\
         ---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\n\
         metadata: {{name: cache, namespace: default}}\nspec:\n  hosts: [cache.default.svc.cluster.local]\n  \
         ports: [{{number: 6379, name: tcp, protocol: TCP}}]\n  resolution: STATIC\n  \
         workloadSelector: {{labels: {{app: cache}}}}\n"
    );
    let resources = load_str(Path::new("mesh.yaml"), &yaml).unwrap();
    let s = compile(&resources).unwrap();
    let plain = check(&s, &resources);
    assert!(
        !plain
            .findings
            .iter()
            .any(|f| f.code == codes::CAPTURE_LOOPBACK_WORKLOAD
                || f.code == codes::CAPTURE_NO_VIRTUAL_IP),
        "explicit mode on one machine is fine with loopback addresses"
    );
    let report = check_with(&s, &resources, CheckOptions { capture: true });
    let loopback: Vec<_> = report
        .findings
        .iter()
        .filter(|f| f.code == codes::CAPTURE_LOOPBACK_WORKLOAD)
        .collect();
    assert_eq!(loopback.len(), 1, "{:?}", report.findings);
    assert!(loopback[0].message.contains("127.0.0.7"));
    let no_vip: Vec<_> = report
        .findings
        .iter()
        .filter(|f| f.code == codes::CAPTURE_NO_VIRTUAL_IP)
        .collect();
    assert_eq!(no_vip.len(), 1, "{:?}", report.findings);
    assert!(
        no_vip[0]
            .message
            .contains("cache.default.svc.cluster.local")
    );
    assert!(!report.has_errors(), "warnings only");
}
