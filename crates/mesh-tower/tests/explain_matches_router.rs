//! `explain` renders the plan the data plane takes: each request of a
//! table goes through `mesh_core::explain` and through the real [`Router`]
//! (its upstream a recorder that answers 200), and both must tell the same
//! outcome: the statuses and their shares, the endpoints reached, and mesh
//! mTLS or plaintext to each. The table: every step of Istio's Bookinfo
//! tutorial (`../shared/istio-corpus/A5-*`, with and without the
//! `end-user: jason` header), the WordPress canary (mesh and gateway), and
//! cases written for the decisions `explain` once took differently from
//! the router: fault injection, the destination port, external endpoints,
//! TLS conflicts, redirects and direct answers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use http::{Request, Response};
use mesh_core::explain::{Query, explain};
use mesh_core::store::{FileSource, Store};
use mesh_tower::body::{BoxBody, empty, full};
use mesh_tower::traffic::{GatewayServers, Router, RouterConfig, SeededRandom};
use mesh_tower::upstream::{Upstream, UpstreamError};
use tower::ServiceExt;

/// Requests per case through the router; seeded, so the same every run.
/// The tests run on paused time: Bookinfo's 7 s fault delay costs nothing.
const N: usize = 200;

/// `(status, endpoint and mTLS when forwarded)` → share in percent.
type Outcome = BTreeMap<(u16, Option<(String, bool)>), f64>;

/// Where each request went: `(address:port, mTLS)`.
type Reached = Arc<Mutex<Vec<(String, bool)>>>;

/// An upstream that records where each request went and answers 200.
fn recorder() -> (Upstream, Reached) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let svc = tower::service_fn(move |req: Request<BoxBody>| {
        let s = s.clone();
        async move {
            let uri = req.uri();
            let endpoint = uri.authority().map(|a| a.to_string()).unwrap_or_default();
            s.lock()
                .unwrap()
                .push((endpoint, uri.scheme_str() == Some("https")));
            Ok::<_, UpstreamError>(Response::new(full("ok")))
        }
    });
    (tower::util::BoxCloneSyncService::new(svc), seen)
}

struct Case<'a> {
    name: String,
    store: &'a Arc<Store>,
    from: &'a str,
    to: &'a str,
    path: &'a str,
    headers: Vec<(String, String)>,
}

/// What the router does with `N` requests of the case.
async fn through_router(case: &Case<'_>) -> Outcome {
    let snap = case.store.load();
    let (upstream, seen) = recorder();
    let random = Arc::new(SeededRandom::new(7));
    let (config, servers) = match snap
        .gateways
        .iter()
        .find(|(k, g)| k.as_str() == case.from || g.source.name == case.from)
    {
        Some((key, entry)) => {
            let host = mesh_core::gateway::request_host_name(case.to);
            let servers: Vec<usize> = (0..entry.servers.len())
                .filter(|i| entry.admits(*i, &host))
                .collect();
            (
                RouterConfig::for_gateway(key),
                Some(GatewayServers(servers.into())),
            )
        }
        None => {
            let w = snap
                .workloads
                .iter()
                .find(|w| w.key == case.from || w.key.split_once('/').unwrap().1 == case.from)
                .unwrap();
            let (ns, name) = w.key.split_once('/').unwrap();
            (RouterConfig::for_workload(ns, name), None)
        }
    };
    let router = Router::with_upstream(case.store.clone(), config, upstream, random);
    let mut counts: BTreeMap<(u16, Option<(String, bool)>), usize> = BTreeMap::new();
    for _ in 0..N {
        let mut req = Request::get(format!("http://{}{}", case.to, case.path));
        for (k, v) in &case.headers {
            req = req.header(k, v);
        }
        let mut req = req.body(empty()).unwrap();
        if let Some(s) = &servers {
            req.extensions_mut().insert(s.clone());
        }
        let before = seen.lock().unwrap().len();
        let resp = router.clone().oneshot(req).await.unwrap();
        let status = resp.status().as_u16();
        let reached = seen.lock().unwrap().get(before).cloned();
        *counts.entry((status, reached)).or_default() += 1;
    }
    counts
        .into_iter()
        .map(|(k, n)| (k, n as f64 * 100.0 / N as f64))
        .collect()
}

/// Asserts the router's outcome is the one `explain` tells.
async fn agree(case: Case<'_>) {
    let snap = case.store.load();
    let q = Query {
        from: case.from.to_owned(),
        to: case.to.to_owned(),
        path: case.path.to_owned(),
        headers: case.headers.clone(),
        ..Query::default()
    };
    let x = explain(&snap, &q).unwrap_or_else(|e| panic!("{}: {e}", case.name));
    let routed = through_router(&case).await;
    let context = || {
        format!(
            "{}:\n{x}\n\nrouter: {routed:?}\nexplain: {:?}",
            case.name, x.shares
        )
    };

    // The same statuses, in the same shares (the router's are counted over
    // N seeded requests: within a few points).
    let mut by_status: BTreeMap<u16, (f64, f64)> = BTreeMap::new();
    for s in x.shares.iter().filter(|s| s.percent > 0.0) {
        by_status.entry(s.status).or_default().0 += s.percent;
    }
    for ((status, _), pct) in &routed {
        by_status.entry(*status).or_default().1 += pct;
    }
    for (status, (explained, seen)) in &by_status {
        assert!(
            (explained - seen).abs() <= 6.0,
            "status {status}: explain {explained:.1}%, router {seen:.1}%\n{}",
            context()
        );
    }
    // The endpoints forwarded to, and how.
    let explained: BTreeSet<(String, bool)> = x
        .shares
        .iter()
        .filter(|s| s.status == 200 && s.percent > 0.0)
        .flat_map(|s| s.endpoints.iter().cloned())
        .collect();
    let reached: BTreeSet<(String, bool)> = routed.keys().filter_map(|(_, e)| e.clone()).collect();
    assert_eq!(explained, reached, "{}", context());
}

fn load(dir: &Path) -> Option<Arc<Store>> {
    Store::from_source(&FileSource::new(dir)).ok().map(Arc::new)
}

fn corpus() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/istio-corpus/A5-bookinfo-tutorial");
    dir.is_dir().then_some(dir)
}

#[tokio::test(start_paused = true)]
async fn bookinfo_tutorial_steps() {
    let Some(dir) = corpus() else {
        eprintln!("SKIPPED LOUDLY: ../shared/istio-corpus is not on this machine");
        return;
    };
    let mut folders: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    folders.sort();
    let mut compared = 0;
    for folder in &folders {
        let Some(store) = load(folder) else {
            eprintln!("{}: does not load; not compared", folder.display());
            continue;
        };
        let snap = store.load();
        if snap.workload("productpage-v1").is_none() {
            continue;
        }
        for to in [
            "reviews:9080",
            "ratings:9080",
            "details:9080",
            "productpage:9080",
        ] {
            for jason in [false, true] {
                let headers = if jason {
                    vec![("end-user".to_owned(), "jason".to_owned())]
                } else {
                    Vec::new()
                };
                let name = format!(
                    "{} {to}{}",
                    folder.file_name().unwrap().to_string_lossy(),
                    if jason { " as jason" } else { "" }
                );
                agree(Case {
                    name,
                    store: &store,
                    from: "productpage-v1",
                    to,
                    path: "/",
                    headers,
                })
                .await;
                compared += 1;
            }
        }
    }
    assert!(compared >= 80, "only {compared} Bookinfo cases compared");
}

#[tokio::test(start_paused = true)]
async fn the_wordpress_canary() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/wordpress-canary/mesh");
    let store = load(&dir).unwrap();
    for (from, to) in [
        ("wordpress-gateway", "blog.datadoc.info"),
        ("wordpress-v1", "wordpress:80"),
        ("wordpress-v2", "wordpress:80"),
    ] {
        agree(Case {
            name: format!("{from} -> {to}"),
            store: &store,
            from,
            to,
            path: "/wp-login.php",
            headers: Vec::new(),
        })
        .await;
    }
}

/// The decisions `explain` once took on its own.
const CASES: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: shop}
spec:
  hosts: [shop]
  ports: [{number: 80, name: http}, {number: 8080, name: http-alt}]
  workloadSelector: {labels: {app: shop}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: single}
spec:
  hosts: [single]
  ports: [{number: 8080, name: http}]
  workloadSelector: {labels: {app: single}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: legacy}
spec:
  hosts: [legacy]
  ports: [{number: 80, name: http}]
  workloadSelector: {labels: {app: legacy}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: partner}
spec:
  hosts: [api.partner.example]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{number: 80, name: http}]
  endpoints: [{address: 192.0.2.10}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: vault}
spec:
  hosts: [vault.partner.example]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{number: 80, name: http}]
  endpoints: [{address: 192.0.2.11}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: vault}
spec:
  host: vault.partner.example
  trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: legacy}
spec:
  host: legacy
  trafficPolicy: {tls: {mode: DISABLE}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: shop}
spec:
  host: shop
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: shop-v1}
spec: {address: 10.2.0.1, labels: {app: shop, version: v1}, serviceAccount: shop}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: shop-v2}
spec: {address: 10.2.0.2, labels: {app: shop, version: v2}, serviceAccount: shop}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: single}
spec: {address: 10.2.0.3, labels: {app: single}, serviceAccount: single}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: legacy, namespace: old}
spec: {address: 10.2.0.4, labels: {app: legacy}, serviceAccount: legacy}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: client, namespace: front}
spec: {address: 10.2.0.9, labels: {app: client}, serviceAccount: client}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: shop}
spec:
  hosts: [shop.default.svc.cluster.local]
  http:
  - match: [{uri: {prefix: /old}}]
    redirect: {uri: /new}
  - match: [{uri: {prefix: /health}}]
    directResponse: {status: 204}
  - match: [{uri: {prefix: /flaky}}]
    fault: {abort: {percentage: {value: 50}, httpStatus: 418}}
    route:
    - {destination: {host: shop.default.svc.cluster.local, subset: v1}, weight: 90}
    - {destination: {host: shop.default.svc.cluster.local, subset: v2}, weight: 10}
  - match: [{uri: {prefix: /missing}}]
    route: [{destination: {host: shop.default.svc.cluster.local, subset: v3}}]
  - match: [{uri: {prefix: /single}}]
    route: [{destination: {host: single.default.svc.cluster.local}}]
  - match: [{uri: {prefix: /split}}]
    route:
    - {destination: {host: shop.default.svc.cluster.local, subset: v1}, weight: 50}
    - {destination: {host: shop.default.svc.cluster.local, subset: v2}, weight: 50}
"#;

#[tokio::test(start_paused = true)]
async fn the_decisions_explain_once_took_alone() {
    let store = Arc::new(Store::new());
    store
        .apply(mesh_core::load::load_str(Path::new("cases.yaml"), CASES))
        .unwrap();
    for (to, path) in [
        // Fault injection: half aborted with 418, the rest split 90/10.
        ("shop.default.svc.cluster.local:80", "/flaky"),
        // The destination port: the request's when the service has it,
        // else the destination service's only port.
        ("shop.default.svc.cluster.local:8080", "/split"),
        ("shop.default.svc.cluster.local:80", "/single"),
        // Redirects, direct answers, an undefined subset, no rule.
        ("shop.default.svc.cluster.local:80", "/old/x"),
        ("shop.default.svc.cluster.local:80", "/health"),
        ("shop.default.svc.cluster.local:80", "/missing"),
        ("shop.default.svc.cluster.local:80", "/nothing-matches"),
        // External endpoints: plaintext by default; ISTIO_MUTUAL refused.
        ("api.partner.example:80", "/"),
        ("vault.partner.example:80", "/"),
        // A DISABLE client towards a STRICT server: the conflict.
        ("legacy.default.svc.cluster.local:80", "/"),
        // Unknown hosts and ports.
        ("nowhere.default.svc.cluster.local:80", "/"),
        ("single.default.svc.cluster.local:9999", "/"),
    ] {
        agree(Case {
            name: format!("{to}{path}"),
            store: &store,
            from: "client",
            to,
            path,
            headers: Vec::new(),
        })
        .await;
    }
}

/// `explain` takes a bare name when it is unique across namespaces, lists
/// the candidates when it is not, and takes a Gateway as the source.
#[test]
fn sources_by_bare_name_and_gateways() {
    let snap = mesh_core::snapshot::compile(
        &mesh_core::load::load_str(Path::new("cases.yaml"), CASES).unwrap(),
    )
    .unwrap();
    let q = |from: &str| Query {
        from: from.to_owned(),
        to: "shop.default.svc.cluster.local:80".to_owned(),
        path: "/split".to_owned(),
        ..Query::default()
    };
    // `client` lives in `front`, not in `default`.
    let x = explain(&snap, &q("client")).unwrap();
    assert!(x.steps[0].decision.contains("workload front/client"), "{x}");
    assert!(explain(&snap, &q("front/client")).is_ok());
    assert!(explain(&snap, &q("default/client")).is_err());

    let two = format!(
        "{CASES}---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\n\
         metadata: {{name: client, namespace: back}}\nspec: {{address: 10.2.0.10, serviceAccount: client}}\n"
    );
    let snap2 = mesh_core::snapshot::compile(
        &mesh_core::load::load_str(Path::new("c.yaml"), &two).unwrap(),
    )
    .unwrap();
    let e = explain(&snap2, &q("client")).unwrap_err().to_string();
    assert!(
        e.contains("workload back/client") && e.contains("workload front/client"),
        "{e}"
    );

    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/wordpress-canary/mesh");
    let store = load(&dir).unwrap();
    let snap = store.load();
    let x = explain(
        &snap,
        &Query {
            from: "wordpress-gateway".to_owned(),
            to: "blog.datadoc.info".to_owned(),
            ..Query::default()
        },
    )
    .unwrap();
    assert!(
        x.steps[0]
            .decision
            .starts_with("Gateway default/wordpress-gateway"),
        "{x}"
    );
    assert_eq!(
        x.shares.iter().map(|s| s.status).collect::<Vec<_>>(),
        [200, 200],
        "{x}"
    );
    let x = explain(
        &snap,
        &Query {
            from: "wordpress-gateway".to_owned(),
            to: "other.example:443".to_owned(),
            ..Query::default()
        },
    )
    .unwrap();
    assert_eq!(x.shares[0].status, 404, "{x}");
}

/// On a TCP port `explain` applies Istio's TCP rules, as the proxy's L4
/// check ([`AuthorizeLayer::check_connection`]) does: HTTP-only fields
/// never match in ALLOW rules and always match in DENY rules.
#[test]
fn tcp_authorization_is_the_l4_check() {
    use mesh_tower::authz::{AuthorizeLayer, LocalWorkload};
    let base = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db}
spec:
  hosts: [db]
  ports: [{number: 5432, name: tcp-pg, protocol: TCP}]
  workloadSelector: {labels: {app: db}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: db}
spec: {address: 10.3.0.1, labels: {app: db}, serviceAccount: db}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: api}
spec: {address: 10.3.0.2, labels: {app: api}, serviceAccount: api}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: db}
spec:
  selector: {matchLabels: {app: db}}
"#;
    for (rules, allowed) in [
        (
            "  rules: [{from: [{source: {principals: [cluster.local/ns/default/sa/api]}}]}]\n",
            true,
        ),
        ("  rules: [{to: [{operation: {methods: [GET]}}]}]\n", false),
        (
            "  action: DENY\n  rules: [{to: [{operation: {paths: [/admin]}}]}]\n",
            false,
        ),
        (
            "  rules: [{from: [{source: {principals: [cluster.local/ns/default/sa/web]}}]}]\n",
            false,
        ),
    ] {
        let yaml = format!("{base}{rules}");
        let store = Arc::new(Store::new());
        store
            .apply(mesh_core::load::load_str(Path::new("db.yaml"), &yaml))
            .unwrap();
        let snap = store.load();
        let x = explain(
            &snap,
            &Query {
                from: "api".to_owned(),
                to: "db:5432".to_owned(),
                ..Query::default()
            },
        )
        .unwrap();
        let explained = x.shares.iter().all(|s| s.status == 200);
        let (_, api) = snap.workload("api").unwrap();
        let decision = AuthorizeLayer::new(store.clone(), LocalWorkload::named("db"))
            .with_port(5432)
            .check_connection(
                Some(&api.identity),
                Some("10.3.0.2:40000".parse().unwrap()),
                Some("10.3.0.1:5432".parse().unwrap()),
            );
        assert_eq!(explained, decision.allowed, "{rules}\n{x}\n{decision:?}");
        assert_eq!(explained, allowed, "{rules}\n{x}");
    }
}
