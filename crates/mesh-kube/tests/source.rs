//! The Kubernetes source against an API server playing its part: it lists,
//! follows the watch, resumes an ended watch from where it was, relists on
//! 410 Gone, keeps the last objects while the API server fails, is not
//! ready while a kind cannot be listed (and says which and why), and reads
//! an Istio kind whose CRD is absent as none.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod apiserver;

use std::time::Duration;

use apiserver::{ApiServer, serve_mesh_kinds};
use mesh_core::store::ConfigSource;
use mesh_kube::{KubeOptions, KubeSource};
use serde_json::{Value, json};

const PODS: &str = "/api/v1/pods";
const SERVICES: &str = "/api/v1/services";
const SLICES: &str = "/apis/discovery.k8s.io/v1/endpointslices";
const POLICIES: &str = "/apis/security.istio.io/v1/authorizationpolicies";

fn pod(name: &str, ip: &str, version: &str) -> Value {
    json!({
        "metadata": {
            "name": name, "namespace": "default",
            "uid": format!("00000000-0000-4000-8000-{:012}", ip.len() * 1000 + name.len()),
            "creationTimestamp": "2026-12-01T10:00:00Z",
            "labels": {"app": "web", "version": version},
        },
        "spec": {
            "serviceAccountName": "web", "serviceAccount": "web", "nodeName": "node-1",
            "containers": [{"name": "web", "image": "nginx:1.27",
                            "ports": [{"containerPort": 8080, "name": "http", "protocol": "TCP"}]}],
        },
        "status": {
            "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "hostIP": "192.168.1.10",
            "conditions": [{"type": "Ready", "status": "True",
                            "lastTransitionTime": "2026-12-01T10:00:05Z"}],
        },
    })
}

fn service() -> Value {
    json!({
        "metadata": {"name": "web", "namespace": "default",
                     "uid": "11111111-0000-4000-8000-000000000001",
                     "creationTimestamp": "2026-12-01T10:00:00Z"},
        "spec": {
            "type": "ClusterIP", "clusterIP": "10.96.0.50", "clusterIPs": ["10.96.0.50"],
            "selector": {"app": "web"},
            "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}],
        },
        "status": {"loadBalancer": {}},
    })
}

fn slice(endpoints: &[(&str, &str, bool, bool)]) -> Value {
    json!({
        "metadata": {"name": "web-abcde", "namespace": "default", "generateName": "web-",
                     "labels": {"kubernetes.io/service-name": "web",
                                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": endpoints.iter().map(|(name, ip, ready, terminating)| json!({
            "addresses": [ip],
            "conditions": {"ready": ready, "serving": true, "terminating": terminating},
            "targetRef": {"kind": "Pod", "name": name, "namespace": "default"},
        })).collect::<Vec<_>>(),
    })
}

fn deny_admin() -> Value {
    json!({
        "metadata": {"name": "deny-admin", "namespace": "default", "generation": 1},
        "spec": {"action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/admin*"]}}]}]},
    })
}

/// A cluster with Service `web`, pods web-v1 and web-v2 and their slice.
async fn cluster() -> ApiServer {
    let api = ApiServer::start().await;
    serve_mesh_kinds(&api);
    api.put(SERVICES, service());
    api.put(PODS, pod("web-v1", "10.244.0.11", "v1"));
    api.put(PODS, pod("web-v2", "10.244.0.12", "v2"));
    api.put(
        SLICES,
        slice(&[
            ("web-v1", "10.244.0.11", true, false),
            ("web-v2", "10.244.0.12", true, false),
        ]),
    );
    api
}

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The endpoints of web, as addresses.
fn endpoints(source: &KubeSource) -> Vec<String> {
    let r = source.load().unwrap_or_else(|e| panic!("{e}"));
    let snap = mesh_core::snapshot::compile(&r).unwrap_or_else(|e| panic!("{e}"));
    let Some(svc) = snap.services.get("web.default.svc.cluster.local") else {
        return Vec::new();
    };
    let mut v: Vec<String> = mesh_core::plan::endpoints(&snap, svc, &svc.ports[0], None)
        .unwrap()
        .into_iter()
        .map(|e| e.key)
        .collect();
    v.sort();
    v
}

fn policies(source: &KubeSource) -> Vec<String> {
    let r = source.load().unwrap_or_else(|e| panic!("{e}"));
    r.authorization_policies
        .iter()
        .map(|p| p.source.key())
        .collect()
}

async fn started(api: &ApiServer) -> KubeSource {
    let source = KubeSource::start(api.client(), KubeOptions::default()).await;
    tokio::time::timeout(Duration::from_secs(30), source.synced())
        .await
        .expect("the source lists every kind");
    source
}

#[tokio::test]
async fn lists_then_follows_additions_changes_and_deletions() {
    let api = cluster().await;
    api.put(POLICIES, deny_admin());
    let source = started(&api).await;
    assert_eq!(endpoints(&source), ["10.244.0.11:8080", "10.244.0.12:8080"]);
    assert_eq!(policies(&source), ["default/deny-admin"]);

    // A third pod joins and its slice says so.
    api.put(PODS, pod("web-v3", "10.244.0.13", "v3"));
    api.put(
        SLICES,
        slice(&[
            ("web-v1", "10.244.0.11", true, false),
            ("web-v2", "10.244.0.12", true, false),
            ("web-v3", "10.244.0.13", true, false),
        ]),
    );
    eventually("web-v3 is an endpoint", || endpoints(&source).len() == 3).await;

    // The policy is deleted.
    api.delete(POLICIES, "default", "deny-admin");
    eventually("the policy is gone", || policies(&source).is_empty()).await;
    let lists = source.status().watches.iter().map(|w| w.lists).max();
    assert_eq!(lists, Some(1), "one list each, then the watch");
}

#[tokio::test]
async fn a_terminating_pod_drains_and_an_unready_one_takes_no_requests() {
    let api = cluster().await;
    let source = started(&api).await;
    // web-v2 terminates: the slice says terminating, its deletionTimestamp
    // is set.
    let mut p = pod("web-v2", "10.244.0.12", "v2");
    p["metadata"]["deletionTimestamp"] = json!("2026-12-01T11:00:00Z");
    p["metadata"]["deletionGracePeriodSeconds"] = json!(30);
    api.put(PODS, p);
    api.put(
        SLICES,
        slice(&[
            ("web-v1", "10.244.0.11", true, false),
            ("web-v2", "10.244.0.12", false, true),
        ]),
    );
    eventually("web-v2 drains", || {
        endpoints(&source) == ["10.244.0.11:8080"]
    })
    .await;
    // It is still a workload: its own sidecar keeps its configuration.
    let r = source.load().unwrap();
    let snap = mesh_core::snapshot::compile(&r).unwrap();
    let (_, w) = snap.workload("default/web-v2").expect("still a workload");
    assert!(!w.healthy);

    // web-v1 fails its readiness probe.
    api.put(
        SLICES,
        slice(&[
            ("web-v1", "10.244.0.11", false, false),
            ("web-v2", "10.244.0.12", false, true),
        ]),
    );
    eventually("no endpoint is left", || endpoints(&source).is_empty()).await;
}

#[tokio::test]
async fn an_ended_watch_resumes_from_its_resource_version_and_bookmarks_move_it() {
    let api = cluster().await;
    let source = started(&api).await;
    // Another collection moves the resourceVersion on; a bookmark tells the
    // pods' watch, which then ends (as at the API server's timeout): it
    // must resume from the bookmark, not from its list.
    api.put(SERVICES, service());
    let bookmark = api.resource_version();
    api.bookmark(PODS);
    api.end_watches(PODS);
    api.put(PODS, pod("web-v3", "10.244.0.13", "v3"));
    eventually("web-v3 arrives after the watch is resumed", || {
        source
            .load()
            .unwrap()
            .workload_entries
            .iter()
            .any(|w| w.name() == "web-v3")
    })
    .await;
    let pods = source
        .status()
        .watches
        .into_iter()
        .find(|w| w.resource == "pods")
        .unwrap();
    assert_eq!(pods.lists, 1, "resumed, not relisted: {pods:?}");
    let watches: Vec<String> = api
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("GET /api/v1/pods?") && r.contains("watch=true"))
        .collect();
    assert_eq!(watches.len(), 2, "{watches:?}");
    assert!(
        watches
            .iter()
            .all(|w| w.contains("allowWatchBookmarks=true")),
        "{watches:?}"
    );
    assert!(
        watches[1].ends_with(&format!("resourceVersion={bookmark}")),
        "resumed from the bookmark's {bookmark}: {watches:?}"
    );
}

#[tokio::test]
async fn the_meshconfig_configmap_is_read_and_a_broken_one_rejected_by_name() {
    let api = cluster().await;
    let map = |yaml: &str| {
        json!({"metadata": {"name": "mesh-config", "namespace": "mesh-system"},
               "data": {"mesh.yaml": yaml}})
    };
    api.put(
        "/api/v1/configmaps",
        map(
            "apiVersion: mesh.config/v1alpha1\nkind: MeshConfig\nmetadata: {name: mesh}\n\
             spec: {trustDomain: example.org, clusterDomain: corp.internal}\n",
        ),
    );
    let options = KubeOptions {
        mesh_config: Some(("mesh-system".to_owned(), "mesh-config".to_owned())),
        ..KubeOptions::default()
    };
    let source = KubeSource::start(api.client(), options).await;
    tokio::time::timeout(Duration::from_secs(30), source.synced())
        .await
        .expect("synced");
    let r = source.load().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.mesh.trust_domain.as_str(), "example.org");
    let snap = mesh_core::snapshot::compile(&r).unwrap();
    assert!(
        snap.services.contains_key("web.default.svc.corp.internal"),
        "the Services' hosts follow clusterDomain: {:?}",
        snap.services.keys()
    );

    api.put("/api/v1/configmaps", map("spec: [unclosed"));
    eventually("the broken MeshConfig is rejected", || {
        source.load().is_err()
    })
    .await;
    let text = source.load().unwrap_err().to_string();
    assert!(
        text.contains("k8s:/api/v1/namespaces/mesh-system/configmaps/mesh-config#mesh.yaml")
            && text.contains("is not valid YAML"),
        "{text}"
    );
}

#[tokio::test]
async fn a_410_gone_relists_and_what_was_deleted_meanwhile_is_gone() {
    let api = cluster().await;
    api.put(POLICIES, deny_admin());
    let source = started(&api).await;
    // While the watches are away, the policy is deleted, and the history is
    // compacted: the resumed watch gets 410 and the source relists.
    api.end_watches(POLICIES);
    api.delete(POLICIES, "default", "deny-admin");
    api.compact();
    eventually("the relist drops the policy", || {
        policies(&source).is_empty()
    })
    .await;
    let w = source
        .status()
        .watches
        .into_iter()
        .find(|w| w.resource.starts_with("authorizationpolicies"))
        .unwrap();
    assert!(w.lists >= 2, "relisted: {w:?}");
    assert!(w.error.is_none(), "{w:?}");
}

#[tokio::test]
async fn while_the_api_server_fails_the_last_objects_stay_and_the_status_says_why() {
    let api = cluster().await;
    api.put(POLICIES, deny_admin());
    let source = started(&api).await;
    let before = source.load().unwrap();
    api.fail("/api/v1/pods", 500, u32::MAX);
    api.fail("/apis/security.istio.io", 500, u32::MAX);
    api.end_watches(PODS);
    api.end_watches(POLICIES);
    eventually("the failures are in the status", || {
        let st = source.status();
        let failing = |r: &str| {
            st.watches.iter().any(|w| {
                w.resource.starts_with(r)
                    && w.error.as_deref().is_some_and(|e| e.contains("(HTTP 500)"))
            })
        };
        failing("pods") && failing("authorizationpolicies")
    })
    .await;
    let st = source.status();
    let pods = st.watches.iter().find(|w| w.resource == "pods").unwrap();
    let e = pods.error.as_deref().unwrap();
    assert!(
        e.starts_with("cannot watch pods (all namespaces)")
            || e.starts_with("cannot list pods (all namespaces)"),
        "{e}"
    );
    assert!(st.synced(), "a kind that listed once stays listed");
    let during = source.load().unwrap();
    assert_eq!(during.workload_entries.len(), before.workload_entries.len());
    assert_eq!(policies(&source), ["default/deny-admin"]);

    api.heal();
    api.put(PODS, pod("web-v3", "10.244.0.13", "v3"));
    api.delete(POLICIES, "default", "deny-admin");
    eventually("the source recovers", || {
        let st = source.status();
        let clear = |r: &str| {
            st.watches
                .iter()
                .any(|w| w.resource.starts_with(r) && w.error.is_none())
        };
        source.load().unwrap().workload_entries.len() == 3
            && policies(&source).is_empty()
            && clear("pods")
            && clear("authorizationpolicies")
    })
    .await;
}

#[tokio::test]
async fn a_kind_that_cannot_be_listed_keeps_the_source_unready_and_is_named() {
    let api = cluster().await;
    api.fail(POLICIES, 403, u32::MAX);
    let source = KubeSource::start(api.client(), KubeOptions::default()).await;
    eventually("the refusal is in the status", || {
        source
            .status()
            .not_ready_reason()
            .is_some_and(|r| r.contains("403"))
    })
    .await;
    let reason = source.status().not_ready_reason().unwrap();
    assert!(
        reason.contains("cannot list authorizationpolicies.security.istio.io/v1 (all namespaces)")
            && reason.contains("forbidden"),
        "{reason}"
    );
    assert!(
        !source.status().synced(),
        "no policies is not what 403 means"
    );
    api.heal();
    tokio::time::timeout(Duration::from_secs(60), source.synced())
        .await
        .expect("listed once the API server allows it");
}

#[tokio::test]
async fn an_istio_kind_without_its_crd_is_read_as_none_until_it_is_installed() {
    let api = ApiServer::start().await;
    // Only the core kinds and the networking group: security.istio.io's
    // CRDs are not installed.
    api.serve(SERVICES, "v1", "Service");
    api.serve(PODS, "v1", "Pod");
    api.serve(SLICES, "discovery.k8s.io/v1", "EndpointSlice");
    apiserver::serve_istio_group(&api, "networking.istio.io");
    let source = started(&api).await;
    let st = source.status();
    let absent: Vec<&str> = st
        .watches
        .iter()
        .filter(|w| w.absent)
        .map(|w| w.resource.as_str())
        .collect();
    assert_eq!(
        absent,
        [
            "peerauthentications.security.istio.io/v1",
            "authorizationpolicies.security.istio.io/v1",
            "requestauthentications.security.istio.io/v1"
        ]
    );
    // The CRDs are installed, a policy is applied: it is read.
    api.serve(POLICIES, "security.istio.io/v1", "AuthorizationPolicy");
    api.put(POLICIES, deny_admin());
    eventually("the policy is read once its CRD is there", || {
        policies(&source) == ["default/deny-admin"]
    })
    .await;
}

#[tokio::test]
async fn an_istio_kind_the_mesh_does_not_honour_is_refused_by_name() {
    let api = cluster().await;
    api.put(
        "/apis/networking.istio.io/v1/envoyfilters",
        json!({"metadata": {"name": "default", "namespace": "default"},
               "spec": {"configPatches": []}}),
    );
    let source = started(&api).await;
    let e = source.load().expect_err("an EnvoyFilter is not honoured");
    let text = e.to_string();
    assert!(
        text.contains("k8s:/apis/networking.istio.io/v1/namespaces/default/envoyfilters/default")
            && text.contains("EnvoyFilter is not supported"),
        "{text}"
    );
}

#[tokio::test]
async fn an_invalid_istio_object_is_rejected_naming_namespace_name_and_field() {
    let api = cluster().await;
    api.put(
        "/apis/networking.istio.io/v1/virtualservices",
        json!({"metadata": {"name": "web", "namespace": "shop"},
               "spec": {"hosts": ["web"], "http": [{"route": [{"destination": {"host": "web"}, "weight": "ninety"}]}]}}),
    );
    let source = started(&api).await;
    let text = source.load().expect_err("rejected").to_string();
    assert!(
        text.contains("k8s:/apis/networking.istio.io/v1/namespaces/shop/virtualservices/web")
            && text.contains("spec.http[0].route[0].weight"),
        "{text}"
    );
}

/// A pod's locality and network, as Istio reads them from its labels.
#[tokio::test]
async fn a_pods_istio_locality_and_network_labels_place_its_workload() {
    let api = ApiServer::start().await;
    serve_mesh_kinds(&api);
    api.put(SERVICES, service());
    let mut p = pod("web-v1", "10.244.0.11", "v1");
    p["metadata"]["labels"]["istio-locality"] = json!("us-east1.us-east1-b.rack7");
    p["metadata"]["labels"]["topology.istio.io/network"] = json!("net-a");
    api.put(PODS, p);
    api.put(PODS, pod("web-v2", "10.244.0.12", "v2"));
    api.put(
        SLICES,
        slice(&[
            ("web-v1", "10.244.0.11", true, false),
            ("web-v2", "10.244.0.12", true, false),
        ]),
    );
    let source = started(&api).await;
    let r = source.load().unwrap_or_else(|e| panic!("{e}"));
    let snap = mesh_core::snapshot::compile(&r).unwrap_or_else(|e| panic!("{e}"));
    let (_, v1) = snap.workload("default/web-v1").expect("web-v1");
    assert_eq!(v1.locality.to_string(), "us-east1/us-east1-b/rack7");
    assert_eq!(v1.network.as_deref(), Some("net-a"));
    let (_, v2) = snap.workload("default/web-v2").expect("web-v2");
    assert!(
        v2.locality.is_empty(),
        "no label, no locality: {:?}",
        v2.locality
    );
    assert_eq!(v2.network, None);
}
