//! The pure decisions a snapshot answers: inbound mTLS mode by Istio's
//! precedence, client TLS by DestinationRule precedence, route matching,
//! weighted choice and authorization.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use mesh_core::authz::{AuthzRequest, Sni, evaluate};
use mesh_core::identity::SpiffeId;
use mesh_core::load::load_str;
use mesh_core::resources::common::Labels;
use mesh_core::resources::networking::ClientTlsMode;
use mesh_core::resources::security::MtlsMode;
use mesh_core::route::{RequestInfo, first_match, pick_weighted};
use mesh_core::snapshot::{Snapshot, compile};

fn snap(yaml: &str) -> Snapshot {
    let r = load_str(Path::new("t.yaml"), yaml).unwrap_or_else(|e| panic!("{e}"));
    compile(&r).unwrap_or_else(|e| panic!("{e}"))
}

const WORKLOADS: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api, namespace: shop}
spec:
  hosts: [api]
  ports: [{number: 80, name: http}, {number: 9000, name: grpc-admin}]
  workloadSelector: {labels: {app: api}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: api-v1, namespace: shop}
spec: {address: 10.0.0.1, ports: {http: 8080, grpc-admin: 9090}, labels: {app: api, version: v1}, serviceAccount: api}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: api-v2, namespace: shop}
spec: {address: 10.0.0.2, ports: {http: 8080, grpc-admin: 9090}, labels: {app: api, version: v2}, serviceAccount: api}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: web}
spec: {address: 10.0.0.3, labels: {app: web}, serviceAccount: web}
"#;

fn mode(s: &Snapshot, workload: &str, port: u16) -> (MtlsMode, Option<String>) {
    let (_, w) = s.workload(workload).unwrap();
    let m = s.inbound_mode(w, port);
    (m.mode, m.decided_by.map(|r| r.to_string()))
}

#[test]
fn inbound_mode_follows_istio_precedence() {
    // Nothing configured: the MeshConfig default, STRICT.
    let s = snap(WORKLOADS);
    assert_eq!(mode(&s, "shop/api-v1", 8080), (MtlsMode::Strict, None));

    let s = snap(&format!(
        r#"{WORKLOADS}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: default, namespace: istio-system}}
spec: {{mtls: {{mode: PERMISSIVE}}}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: default, namespace: shop}}
spec: {{mtls: {{mode: STRICT}}}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: v2, namespace: shop}}
spec:
  selector: {{matchLabels: {{version: v2}}}}
  mtls: {{mode: UNSET}}
  portLevelMtls: {{9090: {{mode: DISABLE}}}}
"#
    ));
    let mesh = Some("PeerAuthentication istio-system/default".to_owned());
    let ns = Some("PeerAuthentication shop/default".to_owned());
    let v2 = Some("PeerAuthentication shop/v2".to_owned());
    assert_eq!(
        mode(&s, "web", 80),
        (MtlsMode::Permissive, mesh),
        "mesh-wide"
    );
    assert_eq!(
        mode(&s, "shop/api-v1", 8080),
        (MtlsMode::Strict, ns.clone()),
        "namespace beats mesh"
    );
    assert_eq!(
        mode(&s, "shop/api-v2", 9090),
        (MtlsMode::Disable, v2),
        "port level beats all"
    );
    assert_eq!(
        mode(&s, "shop/api-v2", 8080),
        (MtlsMode::Strict, ns),
        "UNSET inherits"
    );
    let (_, w) = s.workload("shop/api-v2").unwrap();
    assert_eq!(
        w.inbound.iter().find(|(p, _)| *p == 9090).unwrap().1.mode,
        MtlsMode::Disable,
        "compiled per workload port"
    );
}

#[test]
fn legacy_policy_targets_map_service_ports_to_workload_ports() {
    let s = snap(&format!(
        r#"{WORKLOADS}
---
apiVersion: authentication.istio.io/v1alpha1
kind: MeshPolicy
metadata: {{name: default}}
spec: {{peers: [{{mtls: {{}}}}]}}
---
apiVersion: authentication.istio.io/v1alpha1
kind: Policy
metadata: {{name: api-admin, namespace: shop}}
spec:
  targets: [{{name: api, ports: [{{number: 9000}}]}}]
"#
    ));
    assert_eq!(
        mode(&s, "shop/api-v1", 9090).0,
        MtlsMode::Disable,
        "service port 9000 is workload port 9090"
    );
    assert_eq!(mode(&s, "shop/api-v1", 8080).0, MtlsMode::Strict);
    assert_eq!(mode(&s, "web", 80).0, MtlsMode::Strict);
}

#[test]
fn client_tls_follows_destination_rule_precedence() {
    let s = snap(&format!(
        r#"{WORKLOADS}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: api, namespace: shop}}
spec:
  host: api
  trafficPolicy:
    tls: {{mode: ISTIO_MUTUAL}}
    portLevelSettings:
    - port: {{number: 9000}}
      tls: {{mode: DISABLE}}
  subsets:
  - name: v1
    labels: {{version: v1}}
  - name: v2
    labels: {{version: v2}}
    trafficPolicy:
      tls: {{mode: SIMPLE}}
"#
    ));
    let host = "api.shop.svc.cluster.local";
    let m = |port, subset| s.client_tls(host, port, subset).mode;
    assert_eq!(m(80, None), Some(ClientTlsMode::IstioMutual));
    assert_eq!(m(9000, None), Some(ClientTlsMode::Disable));
    assert_eq!(m(80, Some("v1")), Some(ClientTlsMode::IstioMutual));
    assert_eq!(m(80, Some("v2")), Some(ClientTlsMode::Simple));
    assert_eq!(
        s.client_tls("other.default.svc.cluster.local", 80, None)
            .mode,
        None,
        "automatic"
    );
    assert_eq!(
        s.client_tls(host, 80, None).decided_by.unwrap().to_string(),
        "DestinationRule shop/api"
    );
}

const ROUTES: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: app}
spec: {hosts: [app], ports: [{number: 80, name: http}, {number: 81, name: http-alt}]}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: app}
spec:
  hosts: [app]
  http:
  - name: exact
    match: [{uri: {exact: /login}}]
    route: [{destination: {host: app, subset: exact}}]
  - name: regex
    match: [{uri: {regex: '/items/[0-9]+'}}]
    route: [{destination: {host: app, subset: regex}}]
  - name: nocase
    match: [{uri: {prefix: /Admin}, ignoreUriCase: true}]
    route: [{destination: {host: app, subset: nocase}}]
  - name: header-and-method
    match: [{headers: {x-canary: {exact: "yes"}}, method: {exact: POST}}]
    route: [{destination: {host: app, subset: canary}}]
  - name: without
    match: [{uri: {prefix: /w}, withoutHeaders: {x-skip: {prefix: ""}}}]
    route: [{destination: {host: app, subset: without}}]
  - name: query
    match: [{queryParams: {debug: {exact: "1"}}}]
    route: [{destination: {host: app, subset: query}}]
  - name: authority
    match: [{authority: {prefix: beta.}}]
    route: [{destination: {host: app, subset: beta}}]
  - name: port
    match: [{port: 81}]
    route: [{destination: {host: app, subset: port}}]
  - name: source
    match: [{sourceLabels: {app: web}, sourceNamespace: default}]
    route: [{destination: {host: app, subset: source}}]
  - name: either
    match: [{uri: {prefix: /a}}, {uri: {prefix: /b}}]
    route: [{destination: {host: app, subset: either}}]
  - name: default
    route: [{destination: {host: app, subset: fallback}}]
"#;

#[test]
fn route_matching_table() {
    let s = snap(ROUTES);
    let rules = &s.mesh_routes["app.default.svc.cluster.local"];
    let web: Labels = [("app".to_owned(), "web".to_owned())].into();
    let none = Labels::new();
    // (method, path, authority, port, headers, source labels) → rule name
    type Case<'a> = (
        &'a str,
        &'a str,
        &'a str,
        u16,
        Vec<(String, String)>,
        &'a Labels,
        &'a str,
    );
    let h = |k: &str, v: &str| vec![(k.to_owned(), v.to_owned())];
    let cases: Vec<Case<'_>> = vec![
        ("GET", "/login", "app", 80, vec![], &none, "exact"),
        ("GET", "/login/", "app", 80, vec![], &none, "default"),
        ("GET", "/login?next=/", "app", 80, vec![], &none, "exact"),
        ("GET", "/items/42", "app", 80, vec![], &none, "regex"),
        ("GET", "/items/42/x", "app", 80, vec![], &none, "default"),
        ("GET", "/ADMIN/users", "app", 80, vec![], &none, "nocase"),
        (
            "POST",
            "/",
            "app",
            80,
            h("X-Canary", "yes"),
            &none,
            "header-and-method",
        ),
        (
            "GET",
            "/",
            "app",
            80,
            h("x-canary", "yes"),
            &none,
            "default",
        ),
        ("GET", "/w", "app", 80, vec![], &none, "without"),
        ("GET", "/w", "app", 80, h("x-skip", "1"), &none, "default"),
        ("GET", "/?debug=1", "app", 80, vec![], &none, "query"),
        ("GET", "/?debug=10", "app", 80, vec![], &none, "default"),
        ("GET", "/", "beta.app", 80, vec![], &none, "authority"),
        ("GET", "/", "app", 81, vec![], &none, "port"),
        ("GET", "/", "app", 80, vec![], &web, "source"),
        ("GET", "/b/c", "app", 80, vec![], &none, "either"),
        // Rule order: /login also starts with /l... and the exact rule is first.
        ("GET", "/login", "beta.app", 81, vec![], &web, "exact"),
    ];
    for (method, path, authority, port, headers, labels, want) in cases {
        let req = RequestInfo {
            method,
            path_and_query: path,
            authority,
            scheme: "http",
            port,
            headers: &headers,
            source_labels: labels,
            source_namespace: Some("default"),
            gateway: None,
            auth: None,
        };
        let (_, _, rule) =
            first_match(rules, &req).unwrap_or_else(|| panic!("no match for {path}"));
        assert_eq!(
            rule.name.as_deref(),
            Some(want),
            "{method} {path} {authority}:{port} {headers:?}"
        );
    }
    // Port 81 only sees the rules that can apply to it.
    let svc = &s.services["app.default.svc.cluster.local"];
    assert!(
        svc.port(80)
            .unwrap()
            .http_routes
            .iter()
            .all(|r| r.name.as_deref() != Some("port"))
    );
    assert!(
        svc.port(81)
            .unwrap()
            .http_routes
            .iter()
            .any(|r| r.name.as_deref() == Some("port"))
    );
}

#[test]
fn weighted_choice_with_a_seeded_source() {
    // xorshift64*: deterministic, good enough to check proportions.
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    let mut next = || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    let mut counts = [0u32; 3];
    for _ in 0..10_000 {
        counts[pick_weighted(&[90, 10, 0], next()).unwrap()] += 1;
    }
    assert!((8_800..=9_200).contains(&counts[0]), "{counts:?}");
    assert!((800..=1_200).contains(&counts[1]), "{counts:?}");
    assert_eq!(counts[2], 0, "a weight of 0 gets nothing");
}

const AUTHZ: &str = r#"
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: db}
spec: {address: 10.0.0.9, labels: {app: db}, serviceAccount: db}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: open}
spec: {address: 10.0.0.8, labels: {app: open}, serviceAccount: open}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-plaintext, namespace: istio-system}
spec:
  action: DENY
  rules: [{from: [{source: {notPrincipals: ["*"]}}], to: [{operation: {paths: ["/private/*"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: db-allow}
spec:
  selector: {matchLabels: {app: db}}
  rules:
  - from: [{source: {principals: [cluster.local/ns/default/sa/wordpress]}}]
    to: [{operation: {methods: [GET], notPaths: ["/admin*"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: db-deny-delete}
spec:
  selector: {matchLabels: {app: db}}
  action: DENY
  rules: [{to: [{operation: {methods: [DELETE]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: db-audit}
spec:
  selector: {matchLabels: {app: db}}
  action: AUDIT
  rules: [{}]
"#;

#[test]
fn authorization_semantics() {
    let s = snap(AUTHZ);
    let wp = SpiffeId::parse("spiffe://cluster.local/ns/default/sa/wordpress").unwrap();
    let other = SpiffeId::parse("spiffe://cluster.local/ns/default/sa/other").unwrap();
    let decide = |workload: &str, peer: Option<&SpiffeId>, method: &str, path: &str| {
        let (_, w) = s.workload(workload).unwrap();
        let req = AuthzRequest {
            peer,
            source_ip: Some("10.0.0.1".parse().unwrap()),
            remote_ip: Some("10.0.0.1".parse().unwrap()),
            destination_ip: None,
            destination_port: 3306,
            host: "db",
            host_aliases: &[],
            method,
            path,
            headers: None,
            auth: None,
            sni: Sni::Absent,
        };
        let d = evaluate(s.workload_policies(w), &req);
        (d.allowed, d.policy.map(|p| p.name.clone()))
    };
    let name = |n: &str| Some(n.to_owned());
    assert_eq!(
        decide("db", Some(&wp), "GET", "/x"),
        (true, name("db-allow"))
    );
    assert_eq!(
        decide("db", Some(&other), "GET", "/x"),
        (false, None),
        "ALLOW exists, none matches"
    );
    assert_eq!(
        decide("db", None, "GET", "/x"),
        (false, None),
        "no identity never satisfies principals"
    );
    assert_eq!(
        decide("db", Some(&wp), "GET", "/admin/x"),
        (false, None),
        "notPaths"
    );
    assert_eq!(
        decide("db", Some(&wp), "DELETE", "/x"),
        (false, name("db-deny-delete")),
        "DENY first"
    );
    assert_eq!(
        decide("open", Some(&other), "POST", "/x"),
        (true, None),
        "no ALLOW policy: allow"
    );
    assert_eq!(
        decide("open", None, "GET", "/private/x"),
        (false, name("deny-plaintext")),
        "mesh-wide DENY"
    );
    assert_eq!(
        decide("open", Some(&other), "GET", "/private/x"),
        (true, None)
    );
}
