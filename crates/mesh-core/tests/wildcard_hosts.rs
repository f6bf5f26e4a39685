//! Wildcard hosts matched as Istio matches them: a `*.local`
//! DestinationRule is in force for every service under `.local`, the most
//! specific host wins (exact, then the longest wildcard), a `*.example.com`
//! ServiceEntry or VirtualService serves the hosts under it, and the
//! wildcards Istio refuses are refused by field.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use mesh_core::analyze::{self, TlsStatus, codes};
use mesh_core::load::load_str;
use mesh_core::plan::{self, PlanRequest, PlannedAction};
use mesh_core::resources::Resources;
use mesh_core::resources::networking::ClientTlsMode;
use mesh_core::snapshot::{Snapshot, compile};

fn load(yaml: &str) -> Resources {
    load_str(Path::new("t.yaml"), yaml).unwrap_or_else(|e| panic!("{e}"))
}

fn snap(yaml: &str) -> Snapshot {
    compile(&load(yaml)).unwrap_or_else(|e| panic!("{e}"))
}

/// Two services in `default`, one under `corp.local`, each with a v1
/// and a v2 workload.
const SERVICES: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews}
spec:
  hosts: [reviews]
  ports: [{number: 80, name: http}]
  workloadSelector: {labels: {app: reviews}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ratings}
spec:
  hosts: [ratings]
  ports: [{number: 80, name: http}]
  workloadSelector: {labels: {app: ratings}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ledger}
spec:
  hosts: [ledger.corp.local]
  ports: [{number: 80, name: http}]
  workloadSelector: {labels: {app: ledger}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-v1}
spec: {address: 10.0.0.1, labels: {app: reviews, version: v1}, serviceAccount: reviews}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-v2}
spec: {address: 10.0.0.2, labels: {app: reviews, version: v2}, serviceAccount: reviews}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: ratings-v1}
spec: {address: 10.0.0.3, labels: {app: ratings, version: v1}, serviceAccount: ratings}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: ledger-v1}
spec: {address: 10.0.0.4, labels: {app: ledger, version: v1}, serviceAccount: ledger}
"#;

const REVIEWS: &str = "reviews.default.svc.cluster.local";
const RATINGS: &str = "ratings.default.svc.cluster.local";
const LEDGER: &str = "ledger.corp.local";

fn dr(name: &str, ns: &str, host: &str, mode: &str) -> String {
    format!(
        r#"
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: {name}, namespace: {ns}}}
spec:
  host: "{host}"
  trafficPolicy: {{tls: {{mode: {mode}}}}}
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
"#
    )
}

fn decided(s: &Snapshot, host: &str) -> (Option<ClientTlsMode>, Option<String>) {
    let t = s.client_tls(host, 80, None);
    (t.mode, t.decided_by.map(|d| d.to_string()))
}

#[test]
fn a_mesh_wide_wildcard_rule_applies_to_every_service_under_it() {
    let s = snap(&format!(
        "{SERVICES}{}",
        dr("all", "istio-system", "*.local", "DISABLE")
    ));
    for host in [REVIEWS, RATINGS, LEDGER] {
        assert_eq!(
            decided(&s, host),
            (
                Some(ClientTlsMode::Disable),
                Some("DestinationRule istio-system/all".to_owned())
            ),
            "{host}"
        );
    }
    // `check` sees it: DISABLE against STRICT servers is a conflict on
    // every port (it was silently matched against nothing).
    let r = load(&format!(
        "{SERVICES}{}",
        dr("all", "istio-system", "*.local", "DISABLE")
    ));
    let report = analyze::check(&compile(&r).unwrap(), &r);
    for host in [REVIEWS, RATINGS, LEDGER] {
        let row = report
            .tls
            .iter()
            .find(|row| row.host_port == format!("{host}:80"))
            .unwrap_or_else(|| panic!("no row for {host}: {:?}", report.tls));
        assert_eq!(row.status, TlsStatus::Conflict, "{row:?}");
        assert_eq!(
            row.destination_rule
                .as_ref()
                .map(ToString::to_string)
                .as_deref(),
            Some("DestinationRule istio-system/all")
        );
    }
}

#[test]
fn the_most_specific_host_wins() {
    let s = snap(&format!(
        "{SERVICES}{}{}{}",
        dr("all", "istio-system", "*.local", "DISABLE"),
        dr("cluster", "istio-system", "*.cluster.local", "ISTIO_MUTUAL"),
        dr("reviews", "default", "reviews", "SIMPLE"),
    ));
    assert_eq!(decided(&s, REVIEWS).0, Some(ClientTlsMode::Simple));
    assert_eq!(decided(&s, RATINGS).0, Some(ClientTlsMode::IstioMutual));
    assert_eq!(decided(&s, LEDGER).0, Some(ClientTlsMode::Disable));
    // The order of the files does not change it.
    let s = snap(&format!(
        "{SERVICES}{}{}{}",
        dr("reviews", "default", "reviews", "SIMPLE"),
        dr("cluster", "istio-system", "*.cluster.local", "ISTIO_MUTUAL"),
        dr("all", "istio-system", "*.local", "DISABLE"),
    ));
    assert_eq!(decided(&s, REVIEWS).0, Some(ClientTlsMode::Simple));
    assert_eq!(decided(&s, RATINGS).0, Some(ClientTlsMode::IstioMutual));
    assert_eq!(decided(&s, LEDGER).0, Some(ClientTlsMode::Disable));
}

#[test]
fn a_wildcard_rules_subsets_select_each_services_own_workloads() {
    let s = snap(&format!(
        "{SERVICES}{}",
        dr(
            "v1",
            "default",
            "*.default.svc.cluster.local",
            "ISTIO_MUTUAL"
        )
    ));
    let v1 = |host: &str| {
        let svc = &s.services[host];
        let port = svc.port(80).unwrap();
        plan::endpoints(&s, svc, port, Some("v1"))
            .unwrap()
            .into_iter()
            .map(|e| s.workloads[e.workload].key.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(v1(REVIEWS), ["default/reviews-v1"]);
    assert_eq!(v1(RATINGS), ["default/ratings-v1"]);
    // Not under `*.default.svc.cluster.local`: no rule, no subset.
    let svc = &s.services[LEDGER];
    assert!(plan::endpoints(&s, svc, svc.port(80).unwrap(), Some("v1")).is_none());
}

#[test]
fn the_clients_namespace_wildcard_wins_over_the_services_exact_rule() {
    // Istio looks in the client's namespace first, then the service's,
    // then the root namespace; the most specific host within a level.
    let r = load(&format!(
        "{SERVICES}{}{}",
        dr("exact", "default", "reviews", "SIMPLE"),
        dr("mine", "front", "*.local", "DISABLE"),
    ));
    let front = compile(&mesh_core::visibility::view(&r, "front")).unwrap();
    assert_eq!(
        decided(&front, REVIEWS).1.as_deref(),
        Some("DestinationRule front/mine")
    );
    let default = compile(&mesh_core::visibility::view(&r, "default")).unwrap();
    assert_eq!(
        decided(&default, REVIEWS).1.as_deref(),
        Some("DestinationRule default/exact")
    );
    // A rule of a third namespace governs nobody else's traffic: front's
    // `*.local DISABLE` must not turn mTLS off for default's clients.
    assert_eq!(decided(&default, RATINGS), (None, None));
    let jobs = compile(&mesh_core::visibility::view(&r, "jobs")).unwrap();
    assert_eq!(
        decided(&jobs, REVIEWS).1.as_deref(),
        Some("DestinationRule default/exact")
    );
    assert_eq!(decided(&jobs, RATINGS), (None, None));
    // A wildcard rule in the service's own namespace is at its level, and
    // an external host's rule in the ServiceEntry's namespace too.
    let r = load(&format!(
        "{SERVICES}{}{}",
        dr("own", "default", "*.local", "ISTIO_MUTUAL"),
        dr("root", "istio-system", "*.local", "DISABLE"),
    ));
    let jobs = compile(&mesh_core::visibility::view(&r, "jobs")).unwrap();
    assert_eq!(
        decided(&jobs, RATINGS).1.as_deref(),
        Some("DestinationRule default/own")
    );
    assert_eq!(
        decided(&jobs, LEDGER).1.as_deref(),
        Some("DestinationRule default/own"),
        "ledger.corp.local's ServiceEntry is in default"
    );
}

#[test]
fn a_wildcard_rule_matching_no_service_is_reported() {
    let r = load(&format!(
        "{SERVICES}{}{}",
        dr("typo", "istio-system", "*.cluster.locla", "ISTIO_MUTUAL"),
        dr("fine", "istio-system", "*.corp.local", "ISTIO_MUTUAL"),
    ));
    let report = analyze::check(&compile(&r).unwrap(), &r);
    let found: Vec<_> = report
        .findings
        .iter()
        .filter(|f| f.code == codes::HOST_NOT_FOUND)
        .collect();
    assert_eq!(found.len(), 1, "{:?}", report.findings);
    assert!(
        found[0].message.contains("istio-system/typo")
            && found[0].message.contains("*.cluster.locla"),
        "{}",
        found[0].message
    );
}

const WIKIPEDIA: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: wikipedia}
spec:
  hosts: ["*.wikipedia.org"]
  location: MESH_EXTERNAL
  ports: [{number: 80, name: http}]
  endpoints: [{address: 10.9.0.1}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: en-wikipedia}
spec:
  hosts: [en.wikipedia.org]
  location: MESH_EXTERNAL
  ports: [{number: 80, name: http}]
  endpoints: [{address: 10.9.0.2}]
"#;

#[test]
fn a_wildcard_service_entry_serves_the_hosts_under_it() {
    let s = snap(WIKIPEDIA);
    assert_eq!(
        s.service("de.wikipedia.org", "default").unwrap().host,
        "*.wikipedia.org"
    );
    assert_eq!(
        s.service("upload.de.wikipedia.org", "default")
            .unwrap()
            .host,
        "*.wikipedia.org"
    );
    assert_eq!(
        s.service("en.wikipedia.org", "default").unwrap().host,
        "en.wikipedia.org"
    );
    assert!(s.service("wikipedia.org", "default").is_none());
    assert!(s.service("wikipedia.com", "default").is_none());
    let none: Vec<(String, String)> = Vec::new();
    let p = plan::route(
        &s,
        &PlanRequest::mesh("de.wikipedia.org", 80, "default", &none),
    )
    .unwrap();
    assert_eq!(p.service.unwrap().host, "*.wikipedia.org");
}

#[test]
fn a_wildcard_virtual_service_routes_the_services_under_it() {
    let vs = |name: &str, host: &str, status: u16| {
        format!(
            r#"
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {name}}}
spec:
  hosts: ["{host}"]
  http:
  - directResponse: {{status: {status}}}
"#
        )
    };
    let s = snap(&format!(
        "{SERVICES}{}{}",
        vs("cluster", "*.cluster.local", 503),
        vs("ratings", RATINGS, 418),
    ));
    let none: Vec<(String, String)> = Vec::new();
    let status = |host: &str| match plan::route(&s, &PlanRequest::mesh(host, 80, "default", &none))
        .unwrap()
        .action
    {
        PlannedAction::DirectResponse(d) => Some(d.status),
        _ => None,
    };
    assert_eq!(status(REVIEWS), Some(503));
    assert_eq!(status(RATINGS), Some(418));
    assert_eq!(status(LEDGER), None);
}

#[test]
fn wildcards_istio_refuses_are_refused_by_field() {
    for (doc, field, words) in [
        (
            "kind: ServiceEntry\nmetadata: {name: x}\nspec: {hosts: [\"*\"], ports: [{number: 80, name: http}]}",
            "spec.hosts[0]",
            "hostname cannot be wildcard",
        ),
        (
            "kind: ServiceEntry\nmetadata: {name: x}\nspec: {hosts: [\"foo*\"], ports: [{number: 80, name: http}]}",
            "spec.hosts[0]",
            "only as the first character",
        ),
        (
            "kind: DestinationRule\nmetadata: {name: x}\nspec: {host: \"a.*.com\"}",
            "spec.host",
            "only as the first character",
        ),
        (
            "kind: VirtualService\nmetadata: {name: x}\nspec: {hosts: [\"*\"], http: [{directResponse: {status: 200}}]}",
            "spec.hosts[0]",
            "not allowed for virtual services bound to the mesh gateway",
        ),
    ] {
        let yaml = format!("apiVersion: networking.istio.io/v1\n{doc}\n");
        let e = load_str(Path::new("w.yaml"), &yaml)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("w.yaml") && e.contains(field) && e.contains(words),
            "{doc}: {e}"
        );
    }
    // `*` is a host a VirtualService of a Gateway may serve.
    load(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: x}\nspec: {hosts: [\"*\"], gateways: [edge], http: [{directResponse: {status: 200}}]}\n",
    );
}

#[test]
fn a_destination_under_a_wildcard_service_entry_resolves_to_it() {
    let vs = r#"
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: wiki}
spec:
  hosts: [en.wikipedia.org]
  http:
  - route: [{destination: {host: de.wikipedia.org}}]
"#;
    let s = snap(&format!("{WIKIPEDIA}{vs}"));
    let none: Vec<(String, String)> = Vec::new();
    let p = plan::route(
        &s,
        &PlanRequest::mesh("en.wikipedia.org", 80, "default", &none),
    )
    .unwrap();
    let PlannedAction::Forward(ds) = &p.action else {
        panic!("{p:?}")
    };
    let d = plan::resolve_destination(&s, &ds[0], 80).unwrap();
    assert_eq!(d.service.host, "*.wikipedia.org");
    assert_eq!(d.endpoints.len(), 1);
}

#[test]
fn a_wildcard_virtual_services_tcp_route_applies_to_the_services_under_it() {
    let yaml = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db}
spec:
  hosts: [db.corp.local]
  ports: [{number: 3306, name: mysql}]
  workloadSelector: {labels: {app: db}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db-replica}
spec:
  hosts: [replica.corp.local]
  ports: [{number: 3306, name: mysql}]
  workloadSelector: {labels: {app: replica}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: all-db}
spec:
  hosts: ["*.corp.local"]
  tcp:
  - route: [{destination: {host: replica.corp.local}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: db}
spec:
  hosts: [db.corp.local]
  tcp:
  - route: [{destination: {host: db.corp.local}}]
"#;
    let s = snap(yaml);
    let route = |host: &str| {
        s.services[host].ports[0]
            .tcp_routes
            .first()
            .map(|r| r.route[0].host.clone())
    };
    // The exact VirtualService wins for its host, even read after.
    assert_eq!(route("db.corp.local").as_deref(), Some("db.corp.local"));
    assert_eq!(
        route("replica.corp.local").as_deref(),
        Some("replica.corp.local")
    );
}

#[test]
fn check_sees_a_conflict_of_a_rule_in_force_for_one_namespaces_clients() {
    // The whole mesh's table shows default/exact for reviews (the more
    // specific host); front's clients use front's `*.local DISABLE`
    // against STRICT servers: a conflict `check` must name.
    let r = load(&format!(
        "{SERVICES}{}{}",
        dr("exact", "default", "reviews", "ISTIO_MUTUAL"),
        dr("mine", "front", "*.local", "DISABLE"),
    ));
    let report = analyze::check(&compile(&r).unwrap(), &r);
    let row = report
        .tls
        .iter()
        .find(|row| row.host_port == format!("{REVIEWS}:80"))
        .unwrap();
    assert_eq!(row.status, TlsStatus::Ok, "{row:?}");
    let found: Vec<&str> = report
        .findings
        .iter()
        .filter(|f| {
            f.code == codes::TLS_CONFLICT && f.message.contains("for clients in namespace front")
        })
        .map(|f| f.message.as_str())
        .collect();
    assert!(
        found
            .iter()
            .any(|m| m.starts_with(&format!("{REVIEWS}:80"))
                && m.contains("DestinationRule front/mine")),
        "{found:?}"
    );
    assert!(report.has_errors());
    // Made ISTIO_MUTUAL, front's rule conflicts with nothing.
    let r = load(&format!(
        "{SERVICES}{}{}",
        dr("exact", "default", "reviews", "ISTIO_MUTUAL"),
        dr("mine", "front", "*.local", "ISTIO_MUTUAL"),
    ));
    let report = analyze::check(&compile(&r).unwrap(), &r);
    assert!(!report.has_errors(), "{:?}", report.findings);
    // An exact rule of front for reviews is in force there over its own
    // wildcard: the wildcard's DISABLE then reaches only the others.
    let r = load(&format!(
        "{SERVICES}{}{}{}",
        dr("exact", "default", "reviews", "ISTIO_MUTUAL"),
        dr("mine", "front", "*.local", "DISABLE"),
        dr(
            "mine-reviews",
            "front",
            "reviews.default.svc.cluster.local",
            "ISTIO_MUTUAL"
        ),
    ));
    let report = analyze::check(&compile(&r).unwrap(), &r);
    assert!(
        !report
            .findings
            .iter()
            .any(|f| f.message.starts_with(&format!("{REVIEWS}:80"))
                && f.message.contains("for clients in namespace front")),
        "{:?}",
        report.findings
    );
}

/// One VirtualService decides a TCP port: an exact host's rules for some
/// callers do not fall through to a wildcard VirtualService's for the
/// others (they get the default route, as Istio's most specific host
/// rule says).
#[test]
fn an_exact_virtual_services_tcp_rules_are_not_blended_with_a_wildcards() {
    let yaml = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db}
spec:
  hosts: [db.corp.local]
  ports: [{number: 3306, name: mysql}]
  workloadSelector: {labels: {app: db}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db-replica}
spec:
  hosts: [replica.corp.local]
  ports: [{number: 3306, name: mysql}]
  workloadSelector: {labels: {app: replica}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: all-db}
spec:
  hosts: ["*.corp.local"]
  tcp:
  - route: [{destination: {host: replica.corp.local}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: db}
spec:
  hosts: [db.corp.local]
  tcp:
  - match: [{sourceLabels: {app: reports}}]
    route: [{destination: {host: replica.corp.local}}]
"#;
    let s = snap(yaml);
    let port = &s.services["db.corp.local"].ports[0];
    assert_eq!(port.tcp_routes.len(), 1, "{:?}", port.tcp_routes);
    let reports = mesh_core::resources::Labels::from([("app".to_owned(), "reports".to_owned())]);
    assert!(port.tcp_rule(&reports).is_some());
    assert!(
        port.tcp_rule(&mesh_core::resources::Labels::new())
            .is_none()
    );
    // The replica, which no exact VirtualService names, takes the wildcard's.
    assert_eq!(
        s.services["replica.corp.local"].ports[0].tcp_routes.len(),
        1
    );
}
