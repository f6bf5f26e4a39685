//! Loading: the reference article's listings load unchanged, and every kind
//! of bad input gets a message naming the file, the document and the field.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use mesh_core::error::ConfigErrors;
use mesh_core::load::{load_path, load_str};
use mesh_core::resources::Kind;
use mesh_core::resources::security::MtlsMode;
use mesh_core::snapshot::compile;

fn example_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/wordpress-canary/mesh")
}

fn errors(yaml: &str) -> ConfigErrors {
    load_str(Path::new("test.yaml"), yaml).expect_err("the configuration should be rejected")
}

/// One error is expected; returns it rendered, after checking it names the
/// file and the field.
fn one_error(yaml: &str, field: &str) -> String {
    let e = errors(yaml);
    assert_eq!(e.0.len(), 1, "expected one error, got: {e}");
    let e = &e.0[0];
    assert_eq!(e.file, Path::new("test.yaml"));
    assert_eq!(e.field.as_deref(), Some(field), "wrong field in: {e}");
    let text = e.to_string();
    assert!(text.starts_with("test.yaml: document "), "{text}");
    assert!(text.contains(field), "{text}");
    text
}

#[test]
fn article_listings_load_unchanged() {
    let file = example_dir().join("article-listings.yaml");
    let text = std::fs::read_to_string(&file).unwrap();
    // The file is the article's listings as printed: keep it that way.
    assert!(
        text.starts_with("apiVersion: \"authentication.istio.io/v1alpha1\"\nkind: \"MeshPolicy\"")
    );
    let r = load_path(&file).unwrap();
    assert_eq!(r.legacy_policies.len(), 1);
    assert_eq!(r.legacy_policies[0].source.kind, Kind::MeshPolicy);
    assert_eq!(r.legacy_policies[0].spec.mode(), MtlsMode::Strict);
    assert_eq!(r.destination_rules.len(), 2);
    assert_eq!(r.gateways.len(), 1);
    assert_eq!(r.virtual_services.len(), 1);
    assert!(r.skipped.is_empty());
    let names: Vec<_> = r
        .destination_rules
        .iter()
        .map(|d| d.source.to_string())
        .collect();
    assert_eq!(
        names,
        [
            "DestinationRule default/mtls-rule",
            "DestinationRule default/wordpress"
        ]
    );
}

#[test]
fn example_folder_compiles_to_the_90_10_canary() {
    let r = load_path(&example_dir()).unwrap();
    let snap = compile(&r).unwrap();
    let gw = &snap.gateways["default/wordpress-gateway"];
    let rules = &gw.routes["blog.datadoc.info"];
    let mesh_core::route::RouteAction::Forward(dests) = &rules[0].action else {
        panic!("expected a forward");
    };
    let split: Vec<_> = dests
        .iter()
        .map(|d| (d.host.as_str(), d.subset.as_deref(), d.weight))
        .collect();
    assert_eq!(
        split,
        [
            ("wordpress.default.svc.cluster.local", Some("v1"), 90),
            ("wordpress.default.svc.cluster.local", Some("v2"), 10),
        ]
    );
    let dp = &snap.destination_policies["wordpress.default.svc.cluster.local"];
    let v1: Vec<_> = dp
        .subset("v1")
        .unwrap()
        .workloads
        .iter()
        .map(|i| snap.workloads[*i].key.as_str())
        .collect();
    assert_eq!(v1, ["default/wordpress-v1"]);
    // Listing 1's MeshPolicy makes every workload STRICT.
    for w in &snap.workloads {
        for (_, m) in &w.inbound {
            assert_eq!(m.mode, MtlsMode::Strict, "{}", w.key);
            assert_eq!(m.decided_by.as_ref().unwrap().kind, Kind::MeshPolicy);
        }
    }
    assert_eq!(
        snap.workloads[0].identity.to_string(),
        "spiffe://cluster.local/ns/default/sa/wordpress"
    );
}

#[test]
fn every_api_version_users_have_loads() {
    for v in ["v1alpha3", "v1beta1", "v1"] {
        let yaml = format!(
            "apiVersion: networking.istio.io/{v}\nkind: DestinationRule\nmetadata: {{name: r}}\nspec: {{host: a}}\n"
        );
        load_str(Path::new("x.yaml"), &yaml).unwrap();
    }
    for v in ["v1beta1", "v1"] {
        let yaml = format!(
            "apiVersion: security.istio.io/{v}\nkind: PeerAuthentication\nmetadata: {{name: p}}\nspec: {{mtls: {{mode: PERMISSIVE}}}}\n"
        );
        load_str(Path::new("x.yaml"), &yaml).unwrap();
    }
    let text = one_error(
        "apiVersion: networking.istio.io/v2\nkind: Gateway\nmetadata: {name: g}\n",
        "apiVersion",
    );
    assert!(
        text.contains("v1alpha3, networking.istio.io/v1beta1, networking.istio.io/v1"),
        "{text}"
    );
}

#[test]
fn namespaces_default_and_short_hosts_resolve() {
    let r = load_str(
        Path::new("x.yaml"),
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: s, namespace: shop}\n\
         spec: {hosts: [cart], ports: [{number: 80, name: http-web}]}\n---\n\
         apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: d}\nspec: {host: cart.shop.svc.cluster.local}\n",
    )
    .unwrap();
    assert_eq!(r.destination_rules[0].namespace(), "default");
    let snap = compile(&r).unwrap();
    let svc = &snap.services["cart.shop.svc.cluster.local"];
    assert_eq!(
        svc.ports[0].protocol.to_string(),
        "HTTP",
        "protocol from the port name"
    );
    assert!(
        snap.destination_policies
            .contains_key("cart.shop.svc.cluster.local")
    );
}

#[test]
fn other_kinds_are_skipped_but_unknown_istio_kinds_are_errors() {
    let r = load_str(
        Path::new("x.yaml"),
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec: {replicas: 2}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {name: web}\n",
    )
    .unwrap();
    let skipped: Vec<_> = r
        .skipped
        .iter()
        .map(|s| (s.kind.as_str(), s.name.as_deref(), s.origin.document))
        .collect();
    assert_eq!(
        skipped,
        [("Deployment", Some("web"), 1), ("Service", Some("web"), 2)]
    );

    let text = one_error(
        "apiVersion: networking.istio.io/v1alpha3\nkind: EnvoyFilter\nmetadata: {name: f}\nspec: {}\n",
        "kind",
    );
    assert!(text.contains("not supported"), "{text}");
    one_error(
        "apiVersion: security.istio.io/v1\nkind: Frobnicator\nmetadata: {name: t}\n",
        "kind",
    );
    // A kind the mesh reads, in a version it does not: the version named.
    one_error(
        "apiVersion: security.istio.io/v1\nkind: Telemetry\nmetadata: {name: t}\n",
        "apiVersion",
    );
}

#[test]
fn broken_yaml_names_the_file() {
    let e = errors("apiVersion: v1\nkind: [unclosed\n");
    assert_eq!(e.0.len(), 1);
    assert_eq!(e.0[0].file, Path::new("test.yaml"));
    assert!(e.0[0].to_string().contains("is not valid YAML"), "{e}");
    let e = errors("- just\n- a list\n");
    assert!(e.0[0].to_string().contains("must be a mapping"), "{e}");
    one_error("kind: VirtualService\nmetadata: {name: x}\n", "apiVersion");
}

#[test]
fn wrong_types_name_the_field_path() {
    let text = one_error(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v1}
      weight: 90
    - destination: {host: reviews, subset: v2}
      weight: ten
"#,
        "spec.http[0].route[1].weight",
    );
    assert!(
        text.contains("document 1 (VirtualService reviews)"),
        "{text}"
    );
    one_error(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: d}\nspec: {host: a, trafficPolicy: {tls: {mode: SOMETIMES}}}\n",
        "spec.trafficPolicy.tls.mode",
    );
    one_error(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: v}\nspec: {hosts: [a], http: [{route: [{destination: {host: a}}], timeout: soon}]}\n",
        "spec.http[0].timeout",
    );
}

#[test]
fn unimplemented_fields_are_named_never_dropped() {
    let text = one_error(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: v}\n\
         spec: {hosts: [a], http: [{delegate: {name: b}}]}\n",
        "spec.http[0].delegate",
    );
    assert!(text.contains("unsupported field `delegate`"), "{text}");
    // A misspelt field is caught the same way.
    one_error(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: d}\nspec: {host: a, trafficPolicy: {tsl: {mode: DISABLE}}}\n",
        "spec.trafficPolicy.tsl",
    );
}

#[test]
fn security_resources_fail_closed() {
    // Fields not implemented: the policy must not load half.
    one_error(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p}\n\
         spec: {rules: [{from: [{source: {serviceAccount: ['sa']}}]}]}\n",
        "spec.rules[0].from[0].source.serviceAccount",
    );
    one_error(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p}\nspec: {action: CUSTOM, rules: [{}]}\n",
        "spec.provider",
    );
    one_error(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p}\n\
         spec: {rules: [{when: [{key: 'experimental.envoy.filters.a', values: [x]}]}]}\n",
        "spec.rules[0].when[0].key",
    );
    one_error(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p}\n\
         spec: {rules: [{to: [{operation: {paths: ['/a*b']}}]}]}\n",
        "spec.rules[0].to[0].operation.paths[0]",
    );
    one_error(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p}\n\
         spec: {rules: [{from: [{source: {ipBlocks: ['10.0.0.0/40']}}]}]}\n",
        "spec.rules[0].from[0].source.ipBlocks[0]",
    );
    one_error(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: p}\nspec: {portLevelMtls: {8080: {mode: DISABLE}}}\n",
        "spec.portLevelMtls",
    );
    one_error(
        "apiVersion: authentication.istio.io/v1alpha1\nkind: Policy\nmetadata: {name: p}\nspec: {origins: [{jwt: {issuer: x}}]}\n",
        "spec.origins",
    );
}

#[test]
fn legacy_policies_map_onto_peer_authentication() {
    let cases = [
        ("peers: [{mtls: {}}]", MtlsMode::Strict),
        ("peers: [{mtls: }]", MtlsMode::Strict),
        ("peers: [{mtls: {mode: PERMISSIVE}}]", MtlsMode::Permissive),
        (
            "peers: [{mtls: {}}]\n  peerIsOptional: true",
            MtlsMode::Permissive,
        ),
        ("{}", MtlsMode::Disable),
    ];
    for (spec, want) in cases {
        let yaml = format!(
            "apiVersion: authentication.istio.io/v1alpha1\nkind: MeshPolicy\nmetadata: {{name: default}}\nspec:\n  {spec}\n"
        );
        let r = load_str(Path::new("x.yaml"), &yaml).unwrap_or_else(|e| panic!("{spec}: {e}"));
        assert_eq!(r.legacy_policies[0].spec.mode(), want, "{spec}");
        assert_eq!(r.legacy_policies[0].namespace(), "istio-system");
    }
}

#[test]
fn duplicates_and_bad_names_are_rejected() {
    let doc = "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g}\nspec: {servers: [{port: {number: 80, protocol: HTTP}, hosts: ['*']}]}\n";
    let e = errors(&format!("{doc}---\n{doc}"));
    assert!(e.0[0].to_string().contains("defined twice"), "{e}");
    assert_eq!(e.0[0].document, Some(2));
    one_error(
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: Bad_Name}\nspec: {servers: [{port: {number: 80, protocol: HTTP}, hosts: ['*']}]}\n",
        "metadata.name",
    );
    one_error(
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {namespace: x}\nspec: {}\n",
        "metadata.name",
    );
}

#[test]
fn semantic_errors_inside_one_resource() {
    one_error(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: v}\nspec: {hosts: [a], http: [{route: [{destination: {host: a}}, {destination: {host: b}, weight: 10}]}]}\n",
        "spec.http[0].route[0].weight",
    );
    let text = one_error(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: v}\nspec: {hosts: [a], http: [{match: [{uri: {regex: '(unclosed'}}], route: [{destination: {host: a}}]}]}\n",
        "spec.http[0].match[0].uri.regex",
    );
    assert!(text.contains("invalid regular expression"), "{text}");
    one_error(
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g}\nspec: {servers: [{port: {number: 443, protocol: HTTPS}, hosts: [a]}]}\n",
        "spec.servers[0].tls",
    );
    one_error(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: d}\nspec: {host: a, trafficPolicy: {loadBalancer: {consistentHash: {}}}}\n",
        "spec.trafficPolicy.loadBalancer.consistentHash",
    );
}

#[test]
fn all_errors_are_reported_at_once() {
    let e = errors(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: a}\nspec: {hosts: []}\n---\n\
         apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: b}\nspec: {}\n",
    );
    let docs: Vec<_> = e.0.iter().map(|e| e.document).collect();
    assert_eq!(docs, [Some(1), Some(2)], "{e}");
}

#[test]
fn a_folder_is_read_recursively_in_name_order() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    std::fs::write(
        dir.path().join("sub/b.yaml"),
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: b}\nspec: {host: b}\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("a.yml"),
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: a}\nspec: {host: a}\n",
    )
    .unwrap();
    std::fs::write(dir.path().join(".a.yaml.swp"), "garbage: [").unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not yaml").unwrap();
    let r = load_path(dir.path()).unwrap();
    let names: Vec<_> = r
        .destination_rules
        .iter()
        .map(|d| d.name().to_owned())
        .collect();
    assert_eq!(names, ["a", "b"]);
    let e = load_path(&dir.path().join("missing")).unwrap_err();
    assert!(e.to_string().contains("cannot read"), "{e}");
}

#[test]
fn mesh_config_overrides_defaults() {
    let r = load_str(
        Path::new("x.yaml"),
        "apiVersion: mesh.config/v1alpha1\nkind: MeshConfig\nmetadata: {name: mesh}\nspec: {trustDomain: example.org, defaultMtlsMode: PERMISSIVE}\n",
    )
    .unwrap();
    assert_eq!(r.mesh.trust_domain.as_str(), "example.org");
    assert_eq!(r.mesh.default_mtls_mode, MtlsMode::Permissive);
    assert_eq!(r.mesh.ports.inbound, 15006);
    one_error(
        "apiVersion: mesh.config/v1alpha1\nkind: MeshConfig\nmetadata: {name: mesh}\nspec: {trustDomain: 'Not Valid'}\n",
        "spec.trustDomain",
    );
}

#[test]
fn a_cors_policy_is_checked_field_by_field() {
    let vs = |cors: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: v}}\n\
             spec: {{hosts: [a], http: [{{route: [{{destination: {{host: a}}}}], corsPolicy: {cors}}}]}}\n"
        )
    };
    one_error(
        &vs("{allowOrigins: [{exact: ''}]}"),
        "spec.http[0].corsPolicy.allowOrigins[0].exact",
    );
    one_error(
        &vs("{allowOrigins: [{regex: '(('}]}"),
        "spec.http[0].corsPolicy.allowOrigins[0].regex",
    );
    one_error(
        &vs("{allowOrigins: [{exact: 'https://a.test'}], allowOrigin: ['https://b.test']}"),
        "spec.http[0].corsPolicy.allowOrigin",
    );
    let text = one_error(
        &vs("{allowOrigins: [{exact: 'https://a.test'}], allowMethods: [GET, FETCH]}"),
        "spec.http[0].corsPolicy.allowMethods[1]",
    );
    assert!(text.contains("`FETCH` is not an HTTP method"), "{text}");
    // A header name that is no token could split the answer's headers.
    one_error(
        &vs("{allowOrigins: [{exact: 'https://a.test'}], allowHeaders: ['x-a, x-b']}"),
        "spec.http[0].corsPolicy.allowHeaders[0]",
    );
    one_error(
        &vs("{allowOrigins: [{exact: 'https://a.test'}], exposeHeaders: ['x-a: 1']}"),
        "spec.http[0].corsPolicy.exposeHeaders[0]",
    );
    one_error(
        &vs("{allowOrigins: [{exact: 'https://a.test'}], maxAge: 1500ms}"),
        "spec.http[0].corsPolicy.maxAge",
    );
    one_error(
        &vs("{allowOrigins: [{exact: 'https://a.test'}], unmatchedPreflights: DROP}"),
        "spec.http[0].corsPolicy.unmatchedPreflights",
    );
    one_error(
        &vs("{allowOrigins: [{exact: 'https://a.test'}], allowOrigin2: []}"),
        "spec.http[0].corsPolicy.allowOrigin2",
    );
}

#[test]
fn http2_keep_alive_needs_an_interval_and_durations_of_a_millisecond_or_more() {
    let dr = |http: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: d}}\n\
             spec: {{host: a, trafficPolicy: {{connectionPool: {{http: {http}}}}}}}\n"
        )
    };
    one_error(
        &dr("{http2KeepAlive: {timeout: 5s}}"),
        "spec.trafficPolicy.connectionPool.http.http2KeepAlive.interval",
    );
    one_error(
        &dr("{http2KeepAlive: {interval: 10us}}"),
        "spec.trafficPolicy.connectionPool.http.http2KeepAlive.interval",
    );
    one_error(
        &dr("{http2KeepAlive: {interval: 15s, timeout: 0s}}"),
        "spec.trafficPolicy.connectionPool.http.http2KeepAlive.timeout",
    );
    one_error(
        &dr("{maxRequestsPerConnection: -1}"),
        "spec.trafficPolicy.connectionPool.http.maxRequestsPerConnection",
    );
    load_str(
        Path::new("test.yaml"),
        &dr("{http2KeepAlive: {interval: 15s}, maxRequestsPerConnection: 1}"),
    )
    .unwrap();
}

#[test]
fn tls_routes_are_checked_as_istio_checks_them() {
    let vs = |gateways: &str, tls: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: v}}\n\
             spec: {{hosts: [a.example.test, '*.b.example.test'], {gateways}tls: [{tls}]}}\n"
        )
    };
    let route = "route: [{destination: {host: a, port: {number: 443}}}]";
    load_str(
        Path::new("test.yaml"),
        &vs(
            "gateways: [edge], ",
            &format!(
                "{{match: [{{port: 443, sniHosts: [a.example.test, x.b.example.test]}}], {route}}}"
            ),
        ),
    )
    .unwrap();
    // For mesh traffic too (the sidecars route a TLS port by SNI).
    load_str(
        Path::new("test.yaml"),
        &vs(
            "",
            &format!("{{match: [{{sniHosts: [a.example.test]}}], {route}}}"),
        ),
    )
    .unwrap();
    one_error(
        &vs("gateways: [edge], ", &format!("{{{route}}}")),
        "spec.tls[0].match",
    );
    one_error(
        &vs(
            "gateways: [edge], ",
            &format!("{{match: [{{port: 443}}], {route}}}"),
        ),
        "spec.tls[0].match[0].sniHosts",
    );
    let text = one_error(
        &vs(
            "gateways: [edge], ",
            &format!("{{match: [{{sniHosts: [c.example.test]}}], {route}}}"),
        ),
        "spec.tls[0].match[0].sniHosts[0]",
    );
    assert!(text.contains("not a compatible subset"), "{text}");
    one_error(
        &vs(
            "gateways: [edge], ",
            "{match: [{sniHosts: [a.example.test]}]}",
        ),
        "spec.tls[0].route",
    );
    for (field, value) in [
        ("destinationSubnets", "[10.0.0.0/8]"),
        ("sourceLabels", "{app: x}"),
        ("sourceNamespace", "prod"),
    ] {
        one_error(
            &vs(
                "gateways: [edge], ",
                &format!("{{match: [{{sniHosts: [a.example.test], {field}: {value}}}], {route}}}"),
            ),
            &format!("spec.tls[0].match[0].{field}"),
        );
    }
}

#[test]
fn sidecar_ingress_listeners_are_checked_field_by_field() {
    let sc = |ingress: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: s}}\n\
             spec: {{ingress: [{ingress}]}}\n"
        )
    };
    load_str(
        Path::new("test.yaml"),
        &sc("{port: {number: 9080, protocol: HTTP, name: http}, defaultEndpoint: '127.0.0.1:8080', captureMode: IPTABLES}, {port: {number: 7070, name: tcp-x}, defaultEndpoint: '0.0.0.0:17070', bind: 10.0.0.5}"),
    )
    .unwrap();
    for (ingress, field) in [
        (
            "{port: {number: 1, name: a}, defaultEndpoint: '10.0.0.1:80'}",
            "spec.ingress[0].defaultEndpoint",
        ),
        (
            "{port: {number: 1, name: a}, defaultEndpoint: 'unix:///var/run/app.sock'}",
            "spec.ingress[0].defaultEndpoint",
        ),
        (
            "{port: {number: 1, name: a}, defaultEndpoint: '127.0.0.1:0'}",
            "spec.ingress[0].defaultEndpoint",
        ),
        (
            "{port: {number: 1, name: a}, captureMode: NONE}",
            "spec.ingress[0].captureMode",
        ),
        (
            "{port: {number: 1, name: a}, bind: somewhere}",
            "spec.ingress[0].bind",
        ),
        (
            "{port: {number: 1, name: a}}, {port: {number: 1, name: b}}",
            "spec.ingress[1].port.number",
        ),
        (
            "{port: {number: 1, name: a}, tls: {mode: SIMPLE}}",
            "spec.ingress[0].tls",
        ),
    ] {
        one_error(&sc(ingress), field);
    }
}

#[test]
fn unix_socket_endpoints_are_checked_as_istio_checks_them() {
    let we = |spec: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: w}}\nspec: {spec}\n"
        )
    };
    for ok in [
        "{address: 'unix:///var/run/app.sock'}",
        "{address: 'unix://@app'}",
    ] {
        load_str(Path::new("test.yaml"), &we(ok)).unwrap();
    }
    for (spec, field) in [
        ("{address: 'unix://'}", "spec.address"),
        ("{address: 'unix://relative/app.sock'}", "spec.address"),
        ("{address: 'unix:///dir/'}", "spec.address"),
        (
            "{address: 'unix:///app.sock', ports: {http: 80}}",
            "spec.ports",
        ),
    ] {
        one_error(&we(spec), field);
    }
    let text = one_error(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: s}\n\
         spec: {hosts: [a.example.test], resolution: DNS, ports: [{number: 80, name: http}], endpoints: [{address: 'unix:///app.sock'}]}\n",
        "spec.endpoints[0].address",
    );
    assert!(text.contains("resolution: STATIC"), "{text}");
}
