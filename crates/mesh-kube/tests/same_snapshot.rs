//! The same mesh given once as files and once as Kubernetes objects gives
//! the same snapshot: the article's WordPress canary and Istio's Bookinfo,
//! their Services, Pods and EndpointSlices as the API server lists them
//! (recorded JSON under `fixtures/`), beside the ServiceEntries and
//! WorkloadEntries a user would write off Kubernetes. Only the origins
//! differ (a file and document, or an API path).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod apiserver;

use std::path::{Path, PathBuf};
use std::time::Duration;

use apiserver::{ApiServer, serve_mesh_kinds};
use mesh_core::store::ConfigSource;
use mesh_kube::{KubeOptions, KubeSource};
use serde_json::{Value, json};

fn fixtures(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// The snapshot as JSON, without what says where each resource was read.
fn comparable(snap: &mesh_core::snapshot::Snapshot) -> Value {
    fn strip(v: &mut Value) {
        match v {
            Value::Object(m) => {
                m.remove("origin");
                m.values_mut().for_each(strip);
            }
            Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut v = serde_json::to_value(snap).unwrap();
    strip(&mut v);
    v
}

fn from_files(files: &[PathBuf]) -> Value {
    let mut text = String::new();
    for f in files {
        text.push_str(&std::fs::read_to_string(f).unwrap_or_else(|e| panic!("{f:?}: {e}")));
        text.push_str("\n---\n");
    }
    let r =
        mesh_core::load::load_str(Path::new("files.yaml"), &text).unwrap_or_else(|e| panic!("{e}"));
    comparable(&mesh_core::snapshot::compile(&r).unwrap_or_else(|e| panic!("{e}")))
}

async fn from_cluster(api: &ApiServer) -> (Value, mesh_core::resources::Resources) {
    let source = KubeSource::start(api.client(), KubeOptions::default()).await;
    tokio::time::timeout(Duration::from_secs(30), source.synced())
        .await
        .expect("synced");
    let r = source.load().unwrap_or_else(|e| panic!("{e}"));
    let snap = mesh_core::snapshot::compile(&r).unwrap_or_else(|e| panic!("{e}"));
    (comparable(&snap), r)
}

/// The first difference between two JSON values, as a path.
fn first_difference(a: &Value, b: &Value, path: &str) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for k in x.keys().chain(y.keys()) {
                match (x.get(k), y.get(k)) {
                    (Some(p), Some(q)) => {
                        if let Some(d) = first_difference(p, q, &format!("{path}.{k}")) {
                            return Some(d);
                        }
                    }
                    (p, q) => return Some(format!("{path}.{k}: {p:?} vs {q:?}")),
                }
            }
            None
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (p, q))| first_difference(p, q, &format!("{path}[{i}]"))),
        _ if a == b => None,
        _ => Some(format!("{path}: {a} vs {b}")),
    }
}

fn assert_same(files: &Value, cluster: &Value) {
    if let Some(d) = first_difference(files, cluster, "snapshot") {
        panic!("the snapshots differ at {d}");
    }
}

#[tokio::test]
async fn the_articles_wordpress_canary_as_files_and_as_kubernetes_objects() {
    let dir = fixtures("wordpress");
    let api = ApiServer::start().await;
    serve_mesh_kinds(&api);
    api.serve_fixtures(&dir);
    let files = from_files(&[
        dir.join("files/services.yaml"),
        dir.join("files/istio.yaml"),
    ]);
    let (cluster, resources) = from_cluster(&api).await;
    assert_same(&files, &cluster);

    // What the comparison rests on, said outright: the canary's parts are
    // all there.
    let snap = mesh_core::snapshot::compile(&resources).unwrap();
    let wp = &snap.services["wordpress.default.svc.cluster.local"];
    assert_eq!(wp.workloads.len(), 2, "v1 and v2");
    assert_eq!(wp.addresses.len(), 1, "the ClusterIP");
    assert!(
        snap.services
            .contains_key("mysql.default.svc.cluster.local"),
        "{:?}",
        snap.services.keys()
    );
    assert_eq!(resources.authorization_policies.len(), 1);
    assert_eq!(resources.virtual_services.len(), 1);
    // Each resource names where in the API it came from.
    let vs = &resources.virtual_services[0];
    assert!(
        vs.source
            .origin
            .file
            .to_string_lossy()
            .starts_with("k8s:/apis/networking.istio.io/v1/namespaces/default/virtualservices/"),
        "{:?}",
        vs.source.origin
    );
    // The API server's own fields are not served on.
    let raw = vs.raw.as_ref().expect("kept for the control plane");
    assert!(raw["metadata"].get("uid").is_none(), "{raw}");
    assert!(raw["metadata"].get("managedFields").is_none(), "{raw}");
}

/// Bookinfo's Istio objects from Istio's own samples, as the API server
/// would hold them after `kubectl apply`.
fn corpus() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/istio-corpus/A1-samples");
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!("SKIPPED LOUDLY: ../shared/istio-corpus is not on this machine");
        None
    }
}

#[tokio::test]
async fn istios_bookinfo_as_files_and_as_kubernetes_objects() {
    let Some(corpus) = corpus() else { return };
    let dir = fixtures("bookinfo");
    let api = ApiServer::start().await;
    serve_mesh_kinds(&api);
    api.serve_fixtures(&dir);
    let samples = [
        "bookinfo_networking_destination-rule-all.yaml/destination-rule-all.yaml",
        "bookinfo_networking_virtual-service-all-v1.yaml/virtual-service-all-v1.yaml",
        "bookinfo_networking_bookinfo-gateway.yaml/bookinfo-gateway.yaml",
    ]
    .map(|f| corpus.join(f));
    for (n, f) in samples.iter().enumerate() {
        let text = std::fs::read_to_string(f).unwrap();
        let docs: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap();
        for (i, mut doc) in docs.into_iter().filter(|d| !d.is_null()).enumerate() {
            let plural = match doc["kind"].as_str().unwrap() {
                "DestinationRule" => "destinationrules",
                "VirtualService" => "virtualservices",
                "Gateway" => "gateways",
                other => panic!("{f:?}: {other}"),
            };
            // What the API server adds on create; the watched version is
            // v1 whatever version the sample was written in.
            let meta = doc["metadata"].as_object_mut().unwrap();
            meta.entry("namespace").or_insert(json!("default"));
            meta.insert(
                "uid".to_owned(),
                json!(format!("5e1c0d2a-0000-4000-8000-{:06}{:06}", n, i)),
            );
            meta.insert("generation".to_owned(), json!(1));
            meta.insert(
                "creationTimestamp".to_owned(),
                json!("2026-11-30T10:05:00Z"),
            );
            doc["apiVersion"] = json!("networking.istio.io/v1");
            api.put(&format!("/apis/networking.istio.io/v1/{plural}"), doc);
        }
    }
    let mut file_list = vec![dir.join("files/services.yaml")];
    file_list.extend(samples.iter().cloned());
    let files = from_files(&file_list);
    let (cluster, resources) = from_cluster(&api).await;
    // The samples are written in v1alpha3 / v1; the API server serves the
    // watched version, and the snapshot does not depend on it.
    assert_same(&files, &cluster);
    let snap = mesh_core::snapshot::compile(&resources).unwrap();
    assert_eq!(
        snap.services["reviews.default.svc.cluster.local"]
            .workloads
            .len(),
        3
    );
    assert_eq!(
        resources.virtual_services.len(),
        5,
        "four services and the gateway's"
    );
}
