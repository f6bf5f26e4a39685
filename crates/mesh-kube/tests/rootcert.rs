//! The root certificate published in every namespace, against the in-test
//! API server: by server-side apply, in namespaces listed at start and
//! created later, not in a terminating one, retried after the API server
//! refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod apiserver;

use std::time::Duration;

use apiserver::ApiServer;
use mesh_kube::rootcert::RootPublisher;
use serde_json::json;

const ROOT: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

fn path(ns: &str) -> String {
    format!("/api/v1/namespaces/{ns}/configmaps/mesh-ca-root-cert")
}

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn namespace(name: &str, phase: &str) -> serde_json::Value {
    json!({"metadata": {"name": name}, "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": phase}})
}

#[tokio::test]
async fn the_root_is_applied_in_every_namespace_and_retried_after_a_failure() {
    let api = ApiServer::start().await;
    api.serve("/api/v1/namespaces", "v1", "Namespace");
    api.put("/api/v1/namespaces", namespace("default", "Active"));
    api.put("/api/v1/namespaces", namespace("old", "Terminating"));
    // The first applies in `shop` are refused.
    api.put("/api/v1/namespaces", namespace("shop", "Active"));
    api.fail(&path("shop"), 500, 2);

    let publisher = RootPublisher::start(api.client(), ROOT.into());
    eventually("published in default", || {
        api.applied(&path("default")).is_some()
    })
    .await;
    let cm = api.applied(&path("default")).unwrap();
    assert_eq!(cm["kind"], "ConfigMap");
    assert_eq!(cm["metadata"]["name"], "mesh-ca-root-cert");
    assert_eq!(cm["data"]["root-cert.pem"], ROOT);
    let requests = api.requests();
    let apply = requests
        .iter()
        .find(|r| r.starts_with(&format!("PATCH {}", path("default"))))
        .unwrap();
    assert!(
        apply.contains("fieldManager=mesh-control") && apply.contains("force=true"),
        "{apply}"
    );

    eventually("published in shop after its failures", || {
        api.applied(&path("shop")).is_some()
    })
    .await;
    let status = publisher.status();
    assert!(status.failing.is_empty(), "{status:?}");
    assert!(
        api.applied(&path("old")).is_none(),
        "not in a terminating namespace"
    );

    // A namespace created later gets it too.
    api.put("/api/v1/namespaces", namespace("late", "Active"));
    eventually("published in late", || api.applied(&path("late")).is_some()).await;
    assert_eq!(
        publisher.status().published.into_iter().collect::<Vec<_>>(),
        ["default", "late", "shop"]
    );
}

#[tokio::test]
async fn a_refused_apply_is_reported_with_the_namespace_and_reason() {
    let api = ApiServer::start().await;
    api.serve("/api/v1/namespaces", "v1", "Namespace");
    api.put("/api/v1/namespaces", namespace("default", "Active"));
    api.fail(&path("default"), 403, u32::MAX);
    let publisher = RootPublisher::start(api.client(), ROOT.into());
    eventually("reported", || !publisher.status().failing.is_empty()).await;
    let status = publisher.status();
    let reason = &status.failing["default"];
    assert!(
        reason.contains("configmaps/mesh-ca-root-cert in default") && reason.contains("forbidden"),
        "{reason}"
    );
    assert!(status.published.is_empty());
}

/// A published ConfigMap deleted, or edited to hold another root, is
/// applied again; one in a namespace being deleted is not.
#[tokio::test]
async fn a_deleted_or_edited_root_is_put_back() {
    const MAPS: &str = "/api/v1/configmaps";
    let api = ApiServer::start().await;
    api.serve("/api/v1/namespaces", "v1", "Namespace");
    api.serve(MAPS, "v1", "ConfigMap");
    api.put("/api/v1/namespaces", namespace("shop", "Active"));
    let publisher = RootPublisher::start(api.client(), ROOT.into());
    eventually("published", || {
        api.get(MAPS, "shop", "mesh-ca-root-cert").is_some()
    })
    .await;
    let applies = || {
        api.requests()
            .iter()
            .filter(|r| r.starts_with(&format!("PATCH {}", path("shop"))))
            .count()
    };
    assert_eq!(applies(), 1);

    api.delete(MAPS, "shop", "mesh-ca-root-cert");
    eventually("put back after its deletion", || {
        api.get(MAPS, "shop", "mesh-ca-root-cert").is_some()
    })
    .await;
    assert_eq!(applies(), 2);

    let mut edited = api.get(MAPS, "shop", "mesh-ca-root-cert").unwrap();
    edited["data"]["root-cert.pem"] = json!("not the mesh's root");
    api.put(MAPS, edited);
    eventually("the edit undone", || {
        api.get(MAPS, "shop", "mesh-ca-root-cert").unwrap()["data"]["root-cert.pem"] == ROOT
    })
    .await;
    assert_eq!(applies(), 3);
    // Its own apply comes back as an event holding the root: not applied
    // again (no loop).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(applies(), 3);

    // The namespace is being deleted: its ConfigMaps go, none comes back.
    api.put("/api/v1/namespaces", namespace("shop", "Terminating"));
    eventually("the publisher saw it terminating", || {
        !publisher.status().published.contains("shop")
    })
    .await;
    api.delete(MAPS, "shop", "mesh-ca-root-cert");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(api.get(MAPS, "shop", "mesh-ca-root-cert").is_none());
    assert_eq!(applies(), 3);
    assert!(publisher.status().failing.is_empty());
}
