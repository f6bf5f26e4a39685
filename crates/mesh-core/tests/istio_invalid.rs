//! Documents Istio's validation refuses are refused here too, each naming
//! the file and the field (Istio's words where it has them), and their
//! valid neighbours are read.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use mesh_core::load::load_str;

fn refused(yaml: &str, field: &str, words: &str) {
    let e = match load_str(Path::new("bad.yaml"), yaml) {
        Ok(_) => panic!("accepted:\n{yaml}"),
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains("bad.yaml") && e.contains(field) && e.contains(words),
        "want {field}: {words}\n got {e}\nfor\n{yaml}"
    );
}

fn read(yaml: &str) {
    if let Err(e) = load_str(Path::new("good.yaml"), yaml) {
        panic!("refused: {e}\n{yaml}");
    }
}

fn se(spec: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: x}}\nspec:\n  hosts: [example.com]\n{spec}"
    )
}

#[test]
fn service_entry_port_names_are_unique() {
    refused(
        &se("  ports: [{number: 1, name: a}, {number: 12, name: a}]\n"),
        "spec.ports[1].name",
        "Duplicate value",
    );
    read(&se(
        "  ports: [{number: 1, name: a}, {number: 12, name: b}]\n",
    ));
    // Unnamed ports do not clash.
    read(&se("  ports: [{number: 1}, {number: 12}]\n"));
}

#[test]
fn resolution_none_takes_no_endpoints() {
    refused(
        &se("  resolution: NONE\n  endpoints: [{address: 1.2.3.4}]\n"),
        "spec.endpoints",
        "NONE mode cannot set endpoints",
    );
    read(&se(
        "  resolution: STATIC\n  endpoints: [{address: 1.2.3.4}]\n",
    ));
}

#[test]
fn cidr_addresses_need_none_or_static_resolution() {
    for cidr in ["1.2.3.4/16", "10.0.0.0/8", "2001:db8::/32"] {
        refused(
            &se(&format!("  addresses: [\"{cidr}\"]\n  resolution: DNS\n")),
            "spec.addresses[0]",
            "CIDR addresses are allowed only for NONE/STATIC resolution types",
        );
        read(&se(&format!(
            "  addresses: [\"{cidr}\"]\n  resolution: NONE\n"
        )));
        read(&se(&format!(
            "  addresses: [\"{cidr}\"]\n  resolution: STATIC\n"
        )));
    }
    // A single address is fine with DNS.
    read(&se("  addresses: [1.2.3.4]\n  resolution: DNS\n"));
}

#[test]
fn selectors_take_no_wildcards() {
    for labels in ["{val: \"*\"}", "{\"*\": x}", "{app: \"web*\"}"] {
        refused(
            &se(&format!("  workloadSelector: {{labels: {labels}}}\n")),
            "spec.workloadSelector.labels.",
            "wildcard is not supported in selector",
        );
    }
    read(&se("  workloadSelector: {labels: {app: web}}\n"));
}

fn we(spec: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: w}}\nspec: {spec}\n"
    )
}

#[test]
fn unix_socket_endpoints_are_read_as_istio_reads_them() {
    // Istio's invalid forms are refused, its valid ones read (the data
    // plane dials them: mesh-proxy/tests/forwarding.rs).
    for address in ["unix:///dir/", "unix://relative"] {
        refused(
            &we(&format!("{{address: \"{address}\"}}")),
            "spec.address",
            "is not an absolute path to a file",
        );
    }
    for address in ["unix://@foo", "unix:///foo/bar"] {
        read(&we(&format!("{{address: \"{address}\"}}")));
    }
    refused(
        &se("  endpoints: [{address: \"unix:///var/run/x.sock\"}]\n"),
        "spec.endpoints[0].address",
        "resolution: STATIC",
    );
}

#[test]
fn workload_entry_port_names_are_port_names() {
    for name in ["\"@\"", "HTTP", "a_b", "-x", "x-", "\"\""] {
        refused(
            &we(&format!("{{address: 1.1.1.1, ports: {{{name}: 80}}}}")),
            "spec.ports.",
            "Invalid value",
        );
    }
    read(&we(
        "{address: 1.1.1.1, ports: {http: 80, grpc-admin: 9090, h2c: 81}}",
    ));
}

#[test]
fn port_level_mtls_lists_a_port_when_written() {
    let pa = |plm: &str| {
        format!(
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: p}}\nspec:\n  selector: {{matchLabels: {{foo: bar}}}}\n  portLevelMtls: {plm}\n"
        )
    };
    refused(&pa("{}"), "spec.portLevelMtls", "at least 1 properties");
    read(&pa("{8080: {mode: DISABLE}}"));
}

#[test]
fn hosts_take_a_wildcard_only_first() {
    for host in ["foo*", "a.*.com", "*.*.com", "foo.com*"] {
        refused(
            &se("").replace("[example.com]", &format!("[\"{host}\"]")),
            "spec.hosts[0]",
            "only as the first character",
        );
    }
    // Istio allows `*x` ("weird but allowed") and `*.example.com`.
    for host in ["*x", "*.example.com", "*example.com"] {
        read(&se("").replace("[example.com]", &format!("[\"{host}\"]")));
    }
}

#[test]
fn protocols_are_read_in_any_case_and_empty_is_unset() {
    let port = |protocol: &str| {
        se(&format!(
            "  ports: [{{number: 80, name: http-web, protocol: {protocol}}}]\n"
        ))
    };
    for p in [
        "HTTP", "http", "Http", "hTTp2", "Grpc", "tcp", "MySQL", "TLS",
    ] {
        read(&port(p));
    }
    // Empty is unset: the port name decides, as Istio's sniffing would.
    let r = load_str(Path::new("good.yaml"), &port("\"\"")).unwrap();
    let snap = mesh_core::snapshot::compile(&r).unwrap();
    assert_eq!(
        snap.services["example.com"].ports[0].protocol,
        mesh_core::resources::networking::Protocol::Http
    );
    for p in ["UDP", "THRIFT", "HTTP_PROXY", "h t t p"] {
        refused(
            &port(&format!("\"{p}\"")),
            "spec.ports[0].protocol",
            "is not a protocol this mesh implements",
        );
    }
}

#[test]
fn an_unquoted_ipv6_address_in_a_flow_list_is_an_address() {
    let r = load_str(
        Path::new("good.yaml"),
        &se("  addresses: [1.2.3.4, 001:db8::, fd00::1, \"2001:db8::\"]\n  resolution: STATIC\n"),
    )
    .unwrap();
    assert_eq!(
        r.service_entries[0].spec.addresses,
        ["1.2.3.4", "001:db8::", "fd00::1", "2001:db8::"]
    );
    // A map that is no address stays a map, and is refused as one.
    refused(
        &se("  addresses: [1.2.3.4, {a: b}]\n"),
        "spec.addresses[1]",
        "invalid type: map",
    );
}

/// Fields Istio has that this mesh would read without effect are refused
/// by name: nothing is accepted and then ignored.
#[test]
fn fields_without_effect_here_are_refused_by_name() {
    let dr = |pool: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: d}}\nspec:\n  host: example.com\n  trafficPolicy: {{connectionPool: {pool}}}\n"
        )
    };
    for (pool, field) in [
        ("{http: {maxRetries: 3}}", "maxRetries"),
        ("{http: {idleTimeout: 30s}}", "idleTimeout"),
        ("{tcp: {tcpKeepalive: {time: 7200s}}}", "tcpKeepalive"),
    ] {
        refused(&dr(pool), field, &format!("unsupported field `{field}`"));
    }
    read(&dr(
        "{http: {http1MaxPendingRequests: 1, http2MaxRequests: 10}, tcp: {maxConnections: 5}}",
    ));
    // Honoured now (the connection retired after N requests; HTTP/2 PINGs).
    read(&dr(
        "{http: {maxRequestsPerConnection: 1, http2KeepAlive: {interval: 15s, timeout: 5s}}}",
    ));
    // Honoured now (locality load balancing, networks, endpoint weights).
    for extra in ["network: vm-net", "locality: us-east1/b", "weight: 3"] {
        read(&we(&format!("{{address: 1.1.1.1, {extra}}}")));
    }
    // An entry with a network may leave its address out; without, not.
    read(&we("{network: vm-net}"));
    refused(&we("{labels: {app: a}}"), "address", "is required");
    refused(
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g}\nspec:\n  selector: {istio: ingressgateway}\n  servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: [\"*\"], bind: 10.0.0.1}]\n",
        "bind",
        "unsupported field `bind`",
    );
    let vs = |header: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: v}}\nspec:\n  hosts: [example.com]\n  http:\n  - match: [{{headers: {{\"{header}\": {{exact: alice}}}}}}]\n    directResponse: {{status: 200}}\n"
        )
    };
    // Claim matches: gateway routes only (as Istio rules).
    refused(
        &vs("@request.auth.claims.sub"),
        "spec.http[0].match[0].headers.@request.auth.claims.sub",
        "gateway routes only",
    );
    read(&vs("x-user"));
}

#[test]
fn dns_resolution_is_checked_as_istio_checks_it() {
    refused(
        &se(
            "  resolution: DNS_ROUND_ROBIN\n  endpoints: [{address: sub1.example.com}, {address: sub2.example.com}]\n",
        ),
        "spec.endpoints",
        "DNS_ROUND_ROBIN mode cannot have multiple endpoints",
    );
    read(&se(
        "  resolution: DNS_ROUND_ROBIN\n  endpoints: [{address: sub1.example.com}]\n",
    ));
    refused(
        &se("  resolution: DNS\n  ports: [{number: 80, name: http}]\n")
            .replace("[example.com]", "[\"*.example.com\"]"),
        "spec.hosts[0]",
        "a wildcard host cannot be resolved by DNS",
    );
    // Without endpoints, each host is the one endpoint of its own service,
    // dialled by name.
    let r = load_str(
        Path::new("good.yaml"),
        &se("  resolution: DNS\n  location: MESH_EXTERNAL\n  ports: [{number: 443, name: tls, protocol: TLS}]\n")
            .replace("[example.com]", "[api.example.com, cdn.example.com]"),
    )
    .unwrap();
    let snap = mesh_core::snapshot::compile(&r).unwrap();
    for host in ["api.example.com", "cdn.example.com"] {
        let svc = &snap.services[host];
        let eps = mesh_core::plan::endpoints(&snap, svc, &svc.ports[0], None).unwrap();
        let keys: Vec<&str> = eps.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, [format!("{host}:443")]);
    }
}

#[test]
fn a_dns_made_endpoint_is_answered_only_by_the_entrys_subject_alt_names() {
    let yaml = se(
        "  resolution: DNS\n  location: MESH_INTERNAL\n  ports: [{number: 80, name: http}]\n  subjectAltNames: [\"spiffe://cluster.local/ns/vm/sa/billing\"]\n",
    );
    let snap =
        mesh_core::snapshot::compile(&load_str(Path::new("good.yaml"), &yaml).unwrap()).unwrap();
    let svc = &snap.services["example.com"];
    let ep = &mesh_core::plan::endpoints(&snap, svc, &svc.ports[0], None).unwrap()[0];
    let ids: Vec<String> = mesh_core::plan::identities_in(&snap, ep)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(ids, ["spiffe://cluster.local/ns/vm/sa/billing"]);
    // Without subjectAltNames nobody may answer: mesh mTLS fails closed.
    let yaml =
        se("  resolution: DNS\n  location: MESH_INTERNAL\n  ports: [{number: 80, name: http}]\n");
    let snap =
        mesh_core::snapshot::compile(&load_str(Path::new("good.yaml"), &yaml).unwrap()).unwrap();
    let svc = &snap.services["example.com"];
    let ep = &mesh_core::plan::endpoints(&snap, svc, &svc.ports[0], None).unwrap()[0];
    assert!(mesh_core::plan::identities_in(&snap, ep).is_empty());
}

#[test]
fn a_none_entrys_range_does_not_swallow_the_mesh_workloads_in_it() {
    let yaml = format!(
        "{}\n---\n{}\n---\n{}",
        se("  resolution: NONE\n  addresses: [10.0.0.0/8]\n  ports: [{number: 80, name: http}]\n"),
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: web}\nspec: {hosts: [web], ports: [{number: 80, name: http}], workloadSelector: {labels: {app: web}}}",
        "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: web-1}\nspec: {address: 10.0.0.5, labels: {app: web}, serviceAccount: web}",
    );
    let snap =
        mesh_core::snapshot::compile(&load_str(Path::new("good.yaml"), &yaml).unwrap()).unwrap();
    match mesh_core::plan::captured(&snap, "10.0.0.5:80".parse().unwrap()) {
        mesh_core::plan::CapturedDestination::Endpoint { service, .. } => {
            assert_eq!(service.host, "web.default.svc.cluster.local");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        mesh_core::plan::captured(&snap, "10.0.0.6:80".parse().unwrap()),
        mesh_core::plan::CapturedDestination::Service { service, .. } if service.host == "example.com"
    ));
}

#[test]
fn kinds_that_program_envoy_or_install_istio_are_refused_with_a_reason() {
    for (api, kind, words) in [
        (
            "networking.istio.io/v1alpha3",
            "EnvoyFilter",
            "patches Envoy's own configuration",
        ),
        (
            "extensions.istio.io/v1alpha1",
            "WasmPlugin",
            "Wasm extension",
        ),
        (
            "networking.istio.io/v1beta1",
            "ProxyConfig",
            "mesh-proxy takes its settings",
        ),
        (
            "install.istio.io/v1alpha1",
            "IstioOperator",
            "installation resource for istioctl",
        ),
        (
            "networking.istio.io/v1",
            "WorkloadGroup",
            "write WorkloadEntries",
        ),
    ] {
        refused(
            &format!("apiVersion: {api}\nkind: {kind}\nmetadata: {{name: x}}\nspec: {{}}\n"),
            &format!("{kind} is not supported by this mesh"),
            words,
        );
    }
}

#[test]
fn check_reports_tls_origination_the_data_plane_cannot_do() {
    let yaml = format!(
        "{}---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: d}}\nspec:\n  host: example.com\n  trafficPolicy: {{tls: {{mode: MUTUAL, clientCertificate: /c.pem, privateKey: /k.pem}}}}\n",
        se("  resolution: DNS\n  ports: [{number: 443, name: https, protocol: HTTPS}]\n")
    );
    let r = load_str(Path::new("good.yaml"), &yaml).unwrap();
    let report = mesh_core::analyze::check(&mesh_core::snapshot::compile(&r).unwrap(), &r);
    let row = report
        .tls
        .iter()
        .find(|t| t.host_port == "example.com:443")
        .unwrap();
    assert_eq!(
        row.status,
        mesh_core::analyze::TlsStatus::Conflict,
        "{row:?}"
    );
    assert!(
        row.reason
            .as_deref()
            .unwrap_or_default()
            .contains("TLS origination (MUTUAL)"),
        "{row:?}"
    );
}

#[test]
fn the_gateway_api_kinds_not_translated_are_refused_by_name_never_skipped() {
    for kind in ["GRPCRoute", "TLSRoute", "ReferenceGrant", "GatewayClass"] {
        refused(
            &format!(
                "apiVersion: gateway.networking.k8s.io/v1\nkind: {kind}\nmetadata: {{name: x}}\nspec: {{}}\n"
            ),
            &format!("gateway.networking.k8s.io/v1 {kind}"),
            "this kind of the Kubernetes Gateway API is not implemented",
        );
    }
}

#[test]
fn the_deprecated_mirror_percent_is_read_as_mirror_percentage() {
    let vs = |extra: &str| {
        format!(
            "{}---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: v}}\nspec:\n  hosts: [example.com]\n  http:\n  - route: [{{destination: {{host: example.com}}}}]\n{extra}",
            se("  ports: [{number: 80, name: http}]\n  endpoints: [{address: 10.0.0.1}]\n")
        )
    };
    let r = load_str(
        Path::new("good.yaml"),
        &vs("    mirror: {host: example.com}\n    mirrorPercent: 30\n"),
    )
    .unwrap();
    let snap = mesh_core::snapshot::compile(&r).unwrap();
    assert_eq!(
        snap.mesh_routes["example.com"][0].mirror_percent,
        Some(30.0)
    );
    refused(
        &vs(
            "    mirror: {host: example.com}\n    mirrorPercent: 30\n    mirrorPercentage: {value: 30}\n",
        ),
        "spec.http[0].mirrorPercent",
        "exclude each other",
    );
    refused(
        &vs("    mirror: {host: example.com}\n    mirrorPercent: 130\n"),
        "spec.http[0].mirrorPercent",
        "more than 100",
    );
    refused(
        &vs("    mirrorPercentage: {value: 30}\n"),
        "spec.http[0].mirrorPercentage",
        "needs a mirror destination",
    );
}

#[test]
fn tls_origination_is_for_http_one_ports_only() {
    for (protocol, ok) in [
        ("HTTP", true),
        ("HTTPS", true),
        ("GRPC", false),
        ("HTTP2", false),
        ("TCP", false),
    ] {
        let yaml = format!(
            "{}---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: d}}\nspec:\n  host: example.com\n  trafficPolicy: {{tls: {{mode: SIMPLE}}}}\n",
            se(&format!(
                "  location: MESH_EXTERNAL\n  ports: [{{number: 443, name: p, protocol: {protocol}}}]\n  endpoints: [{{address: 10.0.0.1}}]\n"
            ))
        );
        let r = load_str(Path::new("good.yaml"), &yaml).unwrap();
        let snap = mesh_core::snapshot::compile(&r).unwrap();
        let svc = &snap.services["example.com"];
        let ep = &mesh_core::plan::endpoints(&snap, svc, &svc.ports[0], None).unwrap()[0];
        let tls = mesh_core::plan::endpoint_tls(&snap, svc, 443, None, ep);
        assert_eq!(tls.is_ok(), ok, "{protocol}: {tls:?}");
        let report = mesh_core::analyze::check(&snap, &r);
        assert_eq!(report.has_errors(), !ok, "{protocol}: {:?}", report.tls);
        // Opaque TCP never originates.
        if ok {
            assert!(mesh_core::plan::opaque_tls(tls.unwrap()).is_err());
        }
    }
}

fn locality_dr(setting: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: d}}\nspec:\n  host: web\n  trafficPolicy:\n    outlierDetection: {{consecutive5xxErrors: 5}}\n    loadBalancer: {{localityLbSetting: {setting}}}\n"
    )
}

#[test]
fn locality_lb_settings_are_validated_as_istio() {
    // Istio's `validateLocalityLbSetting`.
    for (setting, words) in [
        (
            "{distribute: [{from: a/*, to: {b/*: 100}}], failover: [{from: a, to: b}]}",
            "can not simultaneously specify 'distribute' and 'failover'",
        ),
        (
            "{distribute: [{from: a/*, to: {b/*: 60, c/*: 30}}]}",
            "total locality weight 90 != 100",
        ),
        (
            "{distribute: [{from: a/*, to: {b/*: 0, c/*: 100}}]}",
            "locality weight must be in range [1, 100]",
        ),
        (
            "{distribute: [{from: a/*, to: {\"*/b\": 100}}]}",
            "wildcard '*' number can not exceed 1 and must be in the end",
        ),
        (
            "{distribute: [{from: \"*\", to: {a: 100}}, {from: b, to: {a: 100}}]}",
            "overlap with previous specified ones",
        ),
        (
            "{failover: [{from: a, to: a}]}",
            "must specify different regions",
        ),
        ("{failover: [{from: a/z, to: b}]}", "only specify region"),
        (
            "{failover: [{from: a, to: \"b*\"}]}",
            "should not contain '*' wildcard",
        ),
        (
            "{failover: [{from: a, to: b}], failoverPriority: [topology.kubernetes.io/zone]}",
            "can not simultaneously set 'failover' and topology label",
        ),
    ] {
        refused(&locality_dr(setting), "localityLbSetting", words);
    }
    read(&locality_dr(
        "{distribute: [{from: us-west/zone1/*, to: {us-west/zone1/*: 80, us-west/zone2/*: 20}}]}",
    ));
    read(&locality_dr(
        "{failover: [{from: us-east, to: eu-west}], failoverPriority: [topology.istio.io/network]}",
    ));
    read(&locality_dr("{enabled: false}"));
}

#[test]
fn mesh_networks_is_refused_by_name() {
    // Istio's gateways to other networks: none here.
    refused(
        "apiVersion: mesh.config/v1alpha1\nkind: MeshConfig\nmetadata: {name: mesh}\nspec:\n  meshNetworks: {net-b: {gateways: [{address: 1.2.3.4, port: 15443}]}}\n",
        "meshNetworks",
        "unsupported field `meshNetworks`",
    );
}
