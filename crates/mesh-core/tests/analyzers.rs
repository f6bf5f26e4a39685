#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Every analyzer code against fixtures: for each case a `bad.yaml` that
//! triggers it and a near-identical `good.yaml` with the problem fixed,
//! under `tests/fixtures/analyzers/<case>/`. Each YAML file says in its
//! header comment what it shows.
//!
//! Cases that once showed an analyzer bug are kept as regression tests at the
//! end.

use std::path::{Path, PathBuf};

use mesh_core::analyze::{self, Finding, Report, Severity, TlsStatus, codes};
use mesh_core::{load, snapshot};

/// Every code in `analyze::codes`; a new code must get a case here.
const ALL_CODES: &[&str] = &[
    codes::TLS_CONFLICT,
    codes::SUBSET_NOT_FOUND,
    codes::SUBSET_EMPTY,
    codes::WEIGHTS,
    codes::HOST_NOT_FOUND,
    codes::GATEWAY_NOT_FOUND,
    codes::PEER_POLICY_CONFLICT,
    codes::DUPLICATE_HOST,
    codes::AUTHZ_NEVER_MATCHES,
    codes::PORT_NOT_FOUND,
    codes::NO_WORKLOADS,
    codes::GATEWAY_TLS_UNSUPPORTED,
    codes::SIDECAR_CONFLICT,
    codes::DUPLICATE_VS_HOST,
    codes::UNREACHABLE_RULE,
    codes::GATEWAY_HOST_NOT_SERVED,
    codes::DESTINATION_PORT_NEEDED,
    codes::JWKS_UNREACHABLE,
    codes::NO_REQUEST_AUTHENTICATION,
    codes::CLAIMS_WITHOUT_AUTHENTICATION,
    codes::ENDPOINTS_ON_OTHER_NETWORKS,
    codes::CUSTOM_PROVIDER_UNDEFINED,
    codes::CONFLICTING_GATEWAYS,
    codes::INEFFECTIVE_MATCH,
    codes::INGRESS_SKIPS_MESH_RULES,
    codes::CORS_CREDENTIALS_ANY_ORIGIN,
    codes::TLS_ROUTE_UNUSED,
];

const REVIEWS_80: &str = "reviews.default.svc.cluster.local:80";

/// One fixture pair and what the analyzers must say about it.
struct Case {
    /// Folder under `tests/fixtures/analyzers/`.
    dir: &'static str,
    /// The code `bad.yaml` triggers and `good.yaml` does not.
    code: &'static str,
    /// The severity of every finding with that code in `bad.yaml`.
    severity: Severity,
    /// Text the finding's message must contain: the offending resource.
    message: &'static [&'static str],
    /// Resources the finding must list (as `Kind namespace/name`).
    resources: &'static [&'static str],
    /// TLS conflicts only: the `host:port` whose row is CONFLICT in
    /// `bad.yaml` and OK in `good.yaml`.
    tls_row: Option<&'static str>,
}

impl Case {
    const fn new(dir: &'static str, code: &'static str, severity: Severity) -> Self {
        Self {
            dir,
            code,
            severity,
            message: &[],
            resources: &[],
            tls_row: None,
        }
    }

    const fn message(mut self, message: &'static [&'static str]) -> Self {
        self.message = message;
        self
    }

    const fn resources(mut self, resources: &'static [&'static str]) -> Self {
        self.resources = resources;
        self
    }

    const fn tls_row(mut self, host_port: &'static str) -> Self {
        self.tls_row = Some(host_port);
        self
    }
}

const CASES: &[Case] = &[
    // MESH0100: TLS conflicts, both ways.
    Case::new(
        "mesh0100-strict-server-disable-client",
        codes::TLS_CONFLICT,
        Severity::Error,
    )
    .message(&[REVIEWS_80, "STRICT", "DISABLE"])
    .resources(&[
        "DestinationRule default/reviews",
        "PeerAuthentication default/default",
    ])
    .tls_row(REVIEWS_80),
    Case::new(
        "mesh0100-default-strict-disable-client",
        codes::TLS_CONFLICT,
        Severity::Error,
    )
    .message(&[REVIEWS_80, "STRICT", "DISABLE"])
    .resources(&["DestinationRule default/reviews"])
    .tls_row(REVIEWS_80),
    Case::new(
        "mesh0100-disable-server-istio-mutual-client",
        codes::TLS_CONFLICT,
        Severity::Error,
    )
    .message(&[REVIEWS_80, "ISTIO_MUTUAL", "DISABLE"])
    .resources(&[
        "DestinationRule default/reviews",
        "PeerAuthentication default/default",
    ])
    .tls_row(REVIEWS_80),
    // MESH0101: a route to an undefined subset.
    Case::new(
        "mesh0101-subset-missing-in-dr",
        codes::SUBSET_NOT_FOUND,
        Severity::Error,
    )
    .message(&[
        "VirtualService default/reviews",
        "v3",
        "DestinationRule default/reviews",
    ])
    .resources(&[
        "VirtualService default/reviews",
        "DestinationRule default/reviews",
    ]),
    Case::new(
        "mesh0101-no-destination-rule",
        codes::SUBSET_NOT_FOUND,
        Severity::Error,
    )
    .message(&["VirtualService default/reviews", "v1"])
    .resources(&["VirtualService default/reviews"]),
    // MESH0102
    Case::new(
        "mesh0102-subset-selects-no-workload",
        codes::SUBSET_EMPTY,
        Severity::Warning,
    )
    .message(&["DestinationRule default/reviews", "v3"])
    .resources(&["DestinationRule default/reviews"]),
    // MESH0103
    Case::new("mesh0103-weights-not-100", codes::WEIGHTS, Severity::Error)
        .message(&["VirtualService default/reviews", "90"])
        .resources(&["VirtualService default/reviews"]),
    // MESH0104: an unknown destination is an error, an unknown mesh host a
    // warning.
    Case::new(
        "mesh0104-destination-host-unknown",
        codes::HOST_NOT_FOUND,
        Severity::Error,
    )
    .message(&[
        "VirtualService default/reviews",
        "ratings.default.svc.cluster.local",
    ])
    .resources(&["VirtualService default/reviews"]),
    Case::new(
        "mesh0104-mesh-vs-host-unknown",
        codes::HOST_NOT_FOUND,
        Severity::Warning,
    )
    .message(&[
        "VirtualService default/ratings",
        "ratings.default.svc.cluster.local",
    ])
    .resources(&["VirtualService default/ratings"]),
    Case::new(
        "mesh0104-dr-host-unknown",
        codes::HOST_NOT_FOUND,
        Severity::Warning,
    )
    .message(&[
        "DestinationRule default/ratings",
        "ratings.default.svc.cluster.local",
    ])
    .resources(&["DestinationRule default/ratings"]),
    // MESH0105
    Case::new(
        "mesh0105-gateway-missing",
        codes::GATEWAY_NOT_FOUND,
        Severity::Error,
    )
    .message(&[
        "VirtualService default/bookinfo",
        "default/bookinfo-gateway",
    ])
    .resources(&["VirtualService default/bookinfo"]),
    // MESH0106: contradicting policies are an error, overlapping ones with
    // equal modes a warning.
    Case::new(
        "mesh0106-workload-policies-contradict",
        codes::PEER_POLICY_CONFLICT,
        Severity::Error,
    )
    .message(&[
        "PeerAuthentication default/reviews-strict",
        "PeerAuthentication default/v1-plaintext",
    ])
    .resources(&[
        "PeerAuthentication default/reviews-strict",
        "PeerAuthentication default/v1-plaintext",
    ]),
    Case::new(
        "mesh0106-workload-policies-overlap",
        codes::PEER_POLICY_CONFLICT,
        Severity::Warning,
    )
    .message(&[
        "PeerAuthentication default/reviews-strict",
        "PeerAuthentication default/v1-strict",
    ])
    .resources(&[
        "PeerAuthentication default/reviews-strict",
        "PeerAuthentication default/v1-strict",
    ]),
    Case::new(
        "mesh0106-meshpolicy-and-root-pa-overlap",
        codes::PEER_POLICY_CONFLICT,
        Severity::Warning,
    )
    .message(&[
        "PeerAuthentication istio-system/default",
        "MeshPolicy istio-system/default",
    ])
    .resources(&[
        "PeerAuthentication istio-system/default",
        "MeshPolicy istio-system/default",
    ]),
    Case::new(
        "mesh0106-meshpolicy-and-root-pa-contradict",
        codes::PEER_POLICY_CONFLICT,
        Severity::Error,
    )
    .message(&[
        "PeerAuthentication istio-system/default",
        "MeshPolicy istio-system/default",
    ])
    .resources(&[
        "PeerAuthentication istio-system/default",
        "MeshPolicy istio-system/default",
    ]),
    // MESH0107
    Case::new(
        "mesh0107-two-destination-rules",
        codes::DUPLICATE_HOST,
        Severity::Warning,
    )
    .message(&[
        "reviews.default.svc.cluster.local",
        "DestinationRule default/reviews",
        "DestinationRule default/reviews-tls",
    ])
    .resources(&[
        "DestinationRule default/reviews",
        "DestinationRule default/reviews-tls",
    ]),
    Case::new(
        "mesh0107-two-service-entries",
        codes::DUPLICATE_HOST,
        Severity::Warning,
    )
    .message(&[
        "reviews.default.svc.cluster.local",
        "ServiceEntry default/reviews",
        "ServiceEntry default/reviews-copy",
    ])
    .resources(&[
        "ServiceEntry default/reviews",
        "ServiceEntry default/reviews-copy",
    ]),
    // MESH0108: policies that can never match.
    Case::new(
        "mesh0108-selects-no-workload",
        codes::AUTHZ_NEVER_MATCHES,
        Severity::Warning,
    )
    .message(&["AuthorizationPolicy default/reviews", "selects no workload"])
    .resources(&["AuthorizationPolicy default/reviews"]),
    Case::new(
        "mesh0108-allow-without-rules",
        codes::AUTHZ_NEVER_MATCHES,
        Severity::Warning,
    )
    .message(&["AuthorizationPolicy default/reviews", "no rules"])
    .resources(&["AuthorizationPolicy default/reviews"]),
    Case::new(
        "mesh0108-principal-excluded-again",
        codes::AUTHZ_NEVER_MATCHES,
        Severity::Warning,
    )
    .message(&["AuthorizationPolicy default/reviews", "principals"])
    .resources(&["AuthorizationPolicy default/reviews"]),
    Case::new(
        "mesh0108-foreign-trust-domain",
        codes::AUTHZ_NEVER_MATCHES,
        Severity::Warning,
    )
    .message(&[
        "AuthorizationPolicy default/reviews",
        "example.org/ns/default/sa/productpage",
    ])
    .resources(&["AuthorizationPolicy default/reviews"]),
    Case::new(
        "mesh0108-path-never-matches",
        codes::AUTHZ_NEVER_MATCHES,
        Severity::Warning,
    )
    .message(&[
        "AuthorizationPolicy default/reviews",
        "rules[0].to[0].operation.paths[0]",
        "matches no request path",
    ])
    .resources(&["AuthorizationPolicy default/reviews"]),
    Case::new(
        "mesh0108-envoy-metadata",
        codes::AUTHZ_NEVER_MATCHES,
        Severity::Warning,
    )
    .message(&[
        "AuthorizationPolicy default/reviews",
        "rules[0].when[0].key",
        "never match",
    ])
    .resources(&["AuthorizationPolicy default/reviews"]),
    // MESH0109
    Case::new(
        "mesh0109-port-not-found",
        codes::PORT_NOT_FOUND,
        Severity::Error,
    )
    .message(&["VirtualService default/reviews", "9080"])
    .resources(&[
        "VirtualService default/reviews",
        "ServiceEntry default/reviews",
    ]),
    // MESH0110
    Case::new(
        "mesh0110-no-workloads",
        codes::NO_WORKLOADS,
        Severity::Warning,
    )
    .message(&["ServiceEntry default/ratings"])
    .resources(&["ServiceEntry default/ratings"]),
    // MESH0111
    Case::new(
        "mesh0111-gateway-client-names",
        codes::GATEWAY_TLS_UNSUPPORTED,
        Severity::Error,
    )
    .message(&[
        "Gateway default/partner-gateway",
        "port 443",
        "subjectAltNames",
    ])
    .resources(&["Gateway default/partner-gateway"]),
    // MESH0115
    Case::new(
        "mesh0115-two-namespace-sidecars",
        codes::SIDECAR_CONFLICT,
        Severity::Warning,
    )
    .message(&[
        "Sidecar default/default and Sidecar default/default-copy",
        "namespace default",
        "only the first (Sidecar default/default)",
    ])
    .resources(&["Sidecar default/default", "Sidecar default/default-copy"]),
    Case::new(
        "mesh0115-two-sidecars-select-one-workload",
        codes::SIDECAR_CONFLICT,
        Severity::Warning,
    )
    .message(&[
        "Sidecar default/reviews and Sidecar default/reviews-v1",
        "default/reviews-v1",
    ])
    .resources(&["Sidecar default/reviews", "Sidecar default/reviews-v1"]),
    // MESH0116
    Case::new(
        "mesh0116-two-virtual-services-one-host",
        codes::DUPLICATE_VS_HOST,
        Severity::Warning,
    )
    .message(&[
        "VirtualService default/reviews and VirtualService default/reviews-timeout",
        "reviews.default.svc.cluster.local",
    ])
    .resources(&[
        "VirtualService default/reviews",
        "VirtualService default/reviews-timeout",
    ]),
    // MESH0117
    Case::new(
        "mesh0117-rule-after-catch-all",
        codes::UNREACHABLE_RULE,
        Severity::Warning,
    )
    .message(&["VirtualService default/reviews", "http[0]", "http[1..]"])
    .resources(&["VirtualService default/reviews"]),
    // MESH0118
    Case::new(
        "mesh0118-host-not-on-gateway",
        codes::GATEWAY_HOST_NOT_SERVED,
        Severity::Warning,
    )
    .message(&["bookinfo.example.org", "default/bookinfo-gateway"])
    .resources(&[
        "VirtualService default/bookinfo",
        "Gateway default/bookinfo-gateway",
    ]),
    // MESH0119
    Case::new(
        "mesh0119-gateway-route-without-port",
        codes::DESTINATION_PORT_NEEDED,
        Severity::Warning,
    )
    .message(&["VirtualService default/bookinfo http[0]", "2 ports"])
    .resources(&[
        "VirtualService default/bookinfo",
        "ServiceEntry default/reviews",
    ]),
    // MESH0120
    Case::new(
        "mesh0120-jwks-unreachable",
        codes::JWKS_UNREACHABLE,
        Severity::Warning,
    )
    .message(&["testing@secure.istio.io", "refused (401)"])
    .resources(&["RequestAuthentication default/api-jwt"]),
    // MESH0121
    Case::new(
        "mesh0121-no-request-authentication",
        codes::NO_REQUEST_AUTHENTICATION,
        Severity::Warning,
    )
    .message(&["AuthorizationPolicy default/api-needs-token", "default/api"])
    .resources(&["AuthorizationPolicy default/api-needs-token"]),
    // MESH0122
    Case::new(
        "mesh0122-claims-without-authentication",
        codes::CLAIMS_WITHOUT_AUTHENTICATION,
        Severity::Warning,
    )
    .message(&["VirtualService default/shop", "default/edge"])
    .resources(&["VirtualService default/shop"]),
    // MESH0125
    Case::new(
        "mesh0125-endpoints-on-other-networks",
        codes::ENDPOINTS_ON_OTHER_NETWORKS,
        Severity::Error,
    )
    .message(&[
        "WorkloadEntry default/reviews-v1",
        "bad.yaml",
        "spec.network",
        "reviews.default.svc.cluster.local",
        "net-a",
    ])
    .resources(&[
        "WorkloadEntry default/reviews-v1",
        "ServiceEntry default/reviews",
    ]),
    // MESH0126
    Case::new(
        "mesh0126-custom-provider-undefined",
        codes::CUSTOM_PROVIDER_UNDEFINED,
        Severity::Warning,
    )
    .message(&[
        "AuthorizationPolicy default/ext-authz",
        "bad.yaml",
        "spec.provider.name",
        "my-authz",
    ])
    .resources(&["AuthorizationPolicy default/ext-authz"]),
    // MESH0127
    Case::new(
        "mesh0127-conflicting-gateways",
        codes::CONFLICTING_GATEWAYS,
        Severity::Error,
    )
    .message(&[
        "Gateway default/shop",
        "Gateway default/shop-canary",
        "port 443",
        "shop.example.com",
    ])
    .resources(&["Gateway default/shop", "Gateway default/shop-canary"]),
    // MESH0128
    Case::new(
        "mesh0128-repeated-match",
        codes::INEFFECTIVE_MATCH,
        Severity::Warning,
    )
    .message(&[
        "VirtualService default/reviews",
        "http[1].match[0]",
        "http[0].match[0]",
    ])
    .resources(&["VirtualService default/reviews"]),
    // MESH0129
    Case::new(
        "mesh0129-gateway-skips-mesh-subsets",
        codes::INGRESS_SKIPS_MESH_RULES,
        Severity::Warning,
    )
    .message(&[
        "VirtualService default/edge",
        "VirtualService default/reviews",
        "reviews.default.svc.cluster.local",
    ])
    .resources(&[
        "VirtualService default/edge",
        "VirtualService default/reviews",
    ]),
    // MESH0130
    Case::new(
        "mesh0130-cors-credentials-any-origin",
        codes::CORS_CREDENTIALS_ANY_ORIGIN,
        Severity::Warning,
    )
    .message(&["VirtualService default/reviews", "http[0].corsPolicy"])
    .resources(&["VirtualService default/reviews"]),
    // MESH0131
    Case::new(
        "mesh0131-tls-route-unused",
        codes::TLS_ROUTE_UNUSED,
        Severity::Warning,
    )
    .message(&["VirtualService default/api", "never used"])
    .resources(&["VirtualService default/api"]),
];

fn fixture(dir: &str, variant: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/analyzers")
        .join(dir)
        .join(format!("{variant}.yaml"))
}

fn check(path: &Path) -> Report {
    let resources =
        load::load_path(path).unwrap_or_else(|e| panic!("{} does not load: {e}", path.display()));
    let snap = snapshot::compile(&resources)
        .unwrap_or_else(|e| panic!("{} does not compile: {e}", path.display()));
    analyze::check(&snap, &resources)
}

fn with_code<'a>(report: &'a Report, code: &str) -> Vec<&'a Finding> {
    report.findings.iter().filter(|f| f.code == code).collect()
}

/// Checks one case; returns what is wrong, so a table run can report every
/// failing case at once.
fn run(case: &Case) -> Result<(), String> {
    let mut problems = Vec::new();
    let bad_path = fixture(case.dir, "bad");
    let bad = check(&bad_path);
    let found = with_code(&bad, case.code);
    match found.iter().find(|f| f.severity == case.severity) {
        None => problems.push(format!(
            "bad.yaml: no {:?} {} finding",
            case.severity, case.code
        )),
        Some(f) => {
            for want in case.message {
                if !f.message.contains(want) {
                    problems.push(format!(
                        "bad.yaml: message does not name `{want}`: {}",
                        f.message
                    ));
                }
            }
            let listed: Vec<String> = f.resources.iter().map(ToString::to_string).collect();
            for want in case.resources {
                if !listed.iter().any(|r| r == want) {
                    problems.push(format!(
                        "bad.yaml: finding does not list {want}: {listed:?}"
                    ));
                }
            }
        }
    }
    // An error is not also reported as a warning, nor the reverse.
    for f in found.iter().filter(|f| f.severity != case.severity) {
        problems.push(format!(
            "bad.yaml: {} reported as {:?} too: {}",
            f.code, f.severity, f.message
        ));
    }
    if let Some(host_port) = case.tls_row {
        match bad.tls.iter().find(|r| r.host_port == host_port) {
            Some(r) if r.status == TlsStatus::Conflict => {}
            other => problems.push(format!(
                "bad.yaml: TLS row {host_port} is not CONFLICT: {other:?}"
            )),
        }
    }

    let good_path = fixture(case.dir, "good");
    let good = check(&good_path);
    for f in with_code(&good, case.code) {
        problems.push(format!(
            "good.yaml: unexpected {:?} {}: {}",
            f.severity, f.code, f.message
        ));
    }
    if let Some(host_port) = case.tls_row {
        match good.tls.iter().find(|r| r.host_port == host_port) {
            Some(r) if r.status == TlsStatus::Ok => {}
            other => problems.push(format!(
                "good.yaml: TLS row {host_port} is not OK: {other:?}"
            )),
        }
    }
    // Every clean variant is clean through and through: no conflict, no
    // error, and no warning either.
    if good.has_errors() || !good.findings.is_empty() {
        problems.push(format!(
            "good.yaml is not clean: {:?}",
            good.findings
                .iter()
                .map(|f| format!("{:?} {} {}", f.severity, f.code, f.message))
                .collect::<Vec<_>>()
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!("{}:\n  {}", case.dir, problems.join("\n  ")))
    }
}

#[test]
fn every_code_is_triggered_and_fixed() {
    let failures: Vec<String> = CASES.iter().filter_map(|c| run(c).err()).collect();
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn every_code_has_a_case() {
    for code in ALL_CODES {
        assert!(
            CASES.iter().any(|c| c.code == *code),
            "no fixture triggers {code}"
        );
    }
}

#[test]
fn every_fixture_folder_is_a_case() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/analyzers");
    for entry in std::fs::read_dir(&root).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        let known = CASES.iter().chain(BUG_CASES).any(|c| c.dir == name);
        assert!(known, "fixture folder {name} is not tested");
    }
}

#[test]
fn errors_and_warnings_are_told_apart() {
    // Same code, both severities: the table must hold each once.
    for (code, severity) in [
        (codes::HOST_NOT_FOUND, Severity::Error),
        (codes::HOST_NOT_FOUND, Severity::Warning),
        (codes::PEER_POLICY_CONFLICT, Severity::Error),
        (codes::PEER_POLICY_CONFLICT, Severity::Warning),
    ] {
        assert!(
            CASES
                .iter()
                .any(|c| c.code == code && c.severity == severity),
            "no {severity:?} case for {code}"
        );
    }
}

#[test]
fn permissive_server_accepts_a_plaintext_client() {
    let report = check(&fixture("mesh0100-strict-server-disable-client", "good"));
    let row = report
        .tls
        .iter()
        .find(|r| r.host_port == REVIEWS_80)
        .expect("a row for reviews:80");
    assert_eq!(row.server, "PERMISSIVE");
    assert_eq!(row.client, "DISABLE");
    assert_eq!(row.status, TlsStatus::Ok);
    assert!(!report.has_errors());
}

#[test]
fn tls_conflict_rows_name_the_deciding_resources() {
    let report = check(&fixture(
        "mesh0100-disable-server-istio-mutual-client",
        "bad",
    ));
    let row = report
        .tls
        .iter()
        .find(|r| r.host_port == REVIEWS_80)
        .expect("a row for reviews:80");
    assert_eq!(row.server, "DISABLE");
    assert_eq!(row.client, "ISTIO_MUTUAL");
    assert_eq!(
        row.destination_rule
            .as_ref()
            .map(ToString::to_string)
            .as_deref(),
        Some("DestinationRule default/reviews")
    );
    let authn: Vec<String> = row.authn_policies.iter().map(ToString::to_string).collect();
    assert_eq!(authn, ["PeerAuthentication default/default"]);
    assert!(report.has_errors());
}

// ------------------------------------------------------ analyzer regressions

/// Cases that once showed an analyzer bug: each has a test below.
const BUG_CASES: &[Case] = &[
    Case::new(
        "regression-mesh0108-root-namespace-selector",
        codes::AUTHZ_NEVER_MATCHES,
        Severity::Warning,
    )
    .message(&[
        "AuthorizationPolicy istio-system/reviews",
        "selects no workload",
    ]),
    Case::new(
        "regression-mesh0108-one-source-contradicts",
        codes::AUTHZ_NEVER_MATCHES,
        Severity::Warning,
    )
    .message(&["AuthorizationPolicy default/reviews", "principals"]),
    Case::new(
        "regression-mesh0108-one-foreign-principal",
        codes::AUTHZ_NEVER_MATCHES,
        Severity::Warning,
    )
    .message(&[
        "AuthorizationPolicy default/reviews",
        "example.org/ns/default/sa/productpage",
    ]),
    Case::new(
        "regression-mesh0101-tcp-route",
        codes::SUBSET_NOT_FOUND,
        Severity::Error,
    )
    .message(&["VirtualService default/mysql", "v1"]),
    Case::new(
        "regression-mesh0106-legacy-policy-and-workload-pa",
        codes::PEER_POLICY_CONFLICT,
        Severity::Error,
    )
    .message(&[
        "PeerAuthentication default/reviews-strict",
        "Policy default/reviews-permissive",
    ]),
];

fn run_bug(dir: &str) {
    let case = BUG_CASES.iter().find(|c| c.dir == dir).expect("a bug case");
    if let Err(e) = run(case) {
        panic!("{e}");
    }
}

#[test]
fn root_namespace_authz_selector_matches_every_namespace() {
    run_bug("regression-mesh0108-root-namespace-selector");
}

#[test]
fn one_contradictory_source_does_not_make_a_rule_dead() {
    run_bug("regression-mesh0108-one-source-contradicts");
}

#[test]
fn one_foreign_principal_does_not_make_a_rule_dead() {
    run_bug("regression-mesh0108-one-foreign-principal");
}

#[test]
fn tcp_route_to_undefined_subset() {
    run_bug("regression-mesh0101-tcp-route");
}

#[test]
fn legacy_policy_contradicts_workload_peer_authentication() {
    run_bug("regression-mesh0106-legacy-policy-and-workload-pa");
}
