//! Reloading: a change on disk is served by the store; a broken file leaves
//! the previous snapshot in force and the error is reported and counted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mesh_core::route::RouteAction;
use mesh_core::snapshot::Snapshot;
use mesh_core::store::{ConfigSource, FileSource, FileWatcher, Store};

fn canary(v1: u32, v2: u32) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: web}}
spec:
  hosts: [web]
  ports: [{{number: 80, name: http}}]
  workloadSelector: {{labels: {{app: web}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: web}}
spec:
  hosts: [web]
  http:
  - route:
    - destination: {{host: web, subset: v1}}
      weight: {v1}
    - destination: {{host: web, subset: v2}}
      weight: {v2}
"#
    )
}

fn weights(snap: &Snapshot) -> Vec<u32> {
    let rules = &snap.mesh_routes["web.default.svc.cluster.local"];
    match &rules[0].action {
        RouteAction::Forward(d) => d.iter().map(|d| d.weight).collect(),
        other => panic!("unexpected action {other:?}"),
    }
}

fn write(path: &Path, text: &str) {
    // Write then rename, as editors and config management do, so the
    // watcher never reads half a file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn store_keeps_the_last_good_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mesh.yaml");
    std::fs::write(&file, canary(90, 10)).unwrap();
    let source = FileSource::new(dir.path());
    let store = Store::from_source(&source).unwrap();
    assert!(store.is_ready());
    let held = store.load();
    assert_eq!(weights(&held), [90, 10]);

    std::fs::write(&file, canary(80, 20)).unwrap();
    assert_eq!(store.reload(&source).unwrap(), 2);
    assert_eq!(weights(&store.load()), [80, 20]);
    // A request that took the old snapshot keeps it to the end.
    assert_eq!(weights(&held), [90, 10]);

    std::fs::write(
        &file,
        canary(80, 20).replace("weight: 20", "weight: twenty"),
    )
    .unwrap();
    let err = store.reload(&source).unwrap_err();
    assert!(
        err.to_string().contains("spec.http[0].route[1].weight"),
        "{err}"
    );
    assert_eq!(
        weights(&store.load()),
        [80, 20],
        "the last good config stays"
    );
    let stats = store.stats();
    assert_eq!((stats.version, stats.reloads, stats.rejections), (2, 2, 1));
    assert!(stats.last_error.is_some());

    std::fs::write(&file, canary(50, 50)).unwrap();
    store.reload(&source).unwrap();
    assert_eq!(
        store.stats().last_error,
        None,
        "a good reload clears the error"
    );
    assert_eq!(store.load().version, 3);
}

#[test]
fn a_first_config_that_is_invalid_leaves_the_store_not_ready() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.yaml"), "apiVersion: [").unwrap();
    let source = FileSource::new(dir.path());
    assert!(Store::from_source(&source).is_err());
    let store = Store::new();
    assert!(store.reload(&source).is_err());
    assert!(!store.is_ready());
    assert!(store.load().services.is_empty(), "nothing is routable");
    assert!(
        source
            .describe()
            .contains(&dir.path().display().to_string())
    );
}

#[test]
fn watcher_applies_changes_on_disk_and_rejects_broken_ones() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mesh.yaml");
    std::fs::write(&file, canary(90, 10)).unwrap();
    let source = FileSource::new(dir.path());
    let store = Arc::new(Store::from_source(&source).unwrap());
    let _watcher = FileWatcher::spawn(store.clone(), source).unwrap();

    write(&file, &canary(80, 20));
    wait_for("the new weights", || weights(&store.load()) == [80, 20]);

    write(
        &file,
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nspec: [broken\n",
    );
    wait_for("the rejection", || store.stats().rejections >= 1);
    assert_eq!(
        weights(&store.load()),
        [80, 20],
        "the last good config stays in force"
    );
    let err = store.stats().last_error.expect("the error is kept");
    assert!(err.to_string().contains("mesh.yaml"), "{err}");

    write(&file, &canary(50, 50));
    wait_for("recovery", || weights(&store.load()) == [50, 50]);
    assert!(store.stats().last_error.is_none());
}

#[test]
fn watching_a_single_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mesh.yaml");
    std::fs::write(&file, canary(90, 10)).unwrap();
    let source = FileSource::new(&file);
    let store = Arc::new(Store::from_source(&source).unwrap());
    let watcher = FileWatcher::spawn(store.clone(), source).unwrap();
    write(&file, &canary(70, 30));
    wait_for("the new weights", || weights(&store.load()) == [70, 30]);
    drop(watcher);
    // Once dropped, nothing is reloaded any more.
    let version = store.stats().version;
    write(&file, &canary(60, 40));
    std::thread::sleep(mesh_core::store::SETTLE * 4);
    assert_eq!(store.stats().version, version);
}
