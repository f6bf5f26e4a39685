//! A reload of a folder parses only the files that changed: the others'
//! resources come from the source's cache. Whatever the edits, the result
//! is the one a load from scratch gives (the same resources, the same
//! errors, in the same order), and a catalog built after it serializes
//! again only the documents of the changed files.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;

use mesh_core::load::load_path_keeping_documents;
use mesh_core::resources::Resources;
use mesh_core::store::{ConfigSource, FileSource};
use mesh_core::xds::Catalog;

fn service(name: &str, port: u16) -> String {
    service_in("shop", name, port)
}

/// A service of `ns` exported to its own namespace, and its one workload.
fn service_in(ns: &str, name: &str, port: u16) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n\
         metadata: {{name: {name}, namespace: {ns}}}\n\
         spec:\n  hosts: [{name}.{ns}.svc.cluster.local]\n  ports: [{{number: {port}, name: http}}]\n  \
         exportTo: [.]\n  workloadSelector: {{labels: {{app: {name}}}}}\n---\n\
         apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\n\
         metadata: {{name: {name}-1, namespace: {ns}}}\n\
         spec: {{address: 10.0.0.1, labels: {{app: {name}}}, serviceAccount: {name}}}\n"
    )
}

const MESH: &str = "apiVersion: mesh.config/v1alpha1\nkind: MeshConfig\nmetadata: {name: mesh}\n\
                    spec: {trustDomain: cluster.local}\n";

fn write(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// What a load gives, as text: resources (every field, through `Debug`) or
/// the errors.
fn outcome(r: &Result<Resources, mesh_core::error::ConfigErrors>) -> String {
    match r {
        Ok(r) => format!("{r:?}"),
        Err(e) => format!("rejected: {e}"),
    }
}

/// Loads through `source` (cached) and from scratch, asserts the two agree,
/// and returns the cached load.
fn load_both(source: &FileSource, dir: &Path) -> Result<Resources, String> {
    let cached = source.load();
    let fresh = load_path_keeping_documents(dir);
    assert_eq!(
        outcome(&cached),
        outcome(&fresh),
        "cached and fresh loads differ"
    );
    cached.map_err(|e| e.to_string())
}

fn raw_of(r: &Resources, name: &str) -> Arc<serde_json::Value> {
    r.service_entries
        .iter()
        .find(|s| s.name() == name)
        .and_then(|s| s.raw.clone())
        .unwrap_or_else(|| panic!("no ServiceEntry {name}"))
}

#[test]
fn a_reload_parses_only_the_files_that_changed() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("a.yaml"), &service("alpha", 80));
    write(&dir.path().join("b.yaml"), &service("beta", 80));
    let source = FileSource::new(dir.path()).keeping_documents();
    let first = load_both(&source, dir.path()).unwrap();

    write(&dir.path().join("b.yaml"), &service("beta", 8080));
    let second = load_both(&source, dir.path()).unwrap();
    assert!(
        Arc::ptr_eq(&raw_of(&first, "alpha"), &raw_of(&second, "alpha")),
        "the unchanged file was parsed again"
    );
    assert!(!Arc::ptr_eq(
        &raw_of(&first, "beta"),
        &raw_of(&second, "beta")
    ));
    let beta = second
        .service_entries
        .iter()
        .find(|s| s.name() == "beta")
        .unwrap();
    assert_eq!(
        beta.spec.ports[0].number, 8080,
        "the changed file was not read"
    );

    // Same bytes written again (a touch, a rewrite by config management):
    // nothing is parsed.
    write(&dir.path().join("b.yaml"), &service("beta", 8080));
    let third = load_both(&source, dir.path()).unwrap();
    assert!(Arc::ptr_eq(
        &raw_of(&second, "beta"),
        &raw_of(&third, "beta")
    ));

    // The catalog built after it serializes only the changed documents, and
    // gives the changed one a new version.
    let before = Catalog::new(&first).unwrap();
    let after = Catalog::after(&second, &before).unwrap();
    let from_scratch = Catalog::new(&second).unwrap();
    for name in [
        "ServiceEntry/shop/alpha",
        "ServiceEntry/shop/beta",
        "WorkloadEntry/shop/beta-1",
    ] {
        assert_eq!(after.get(name), from_scratch.get(name), "{name}");
    }
    let (a0, a1) = (
        before.get("ServiceEntry/shop/alpha").unwrap(),
        after.get("ServiceEntry/shop/alpha").unwrap(),
    );
    assert!(
        Arc::ptr_eq(&a0.body, &a1.body),
        "an unchanged document was serialized again"
    );
    assert_ne!(
        before.get("ServiceEntry/shop/beta").unwrap().version,
        after.get("ServiceEntry/shop/beta").unwrap().version
    );
}

#[test]
fn every_edit_gives_what_a_load_from_scratch_gives() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(&d.join("a.yaml"), &service("alpha", 80));
    write(&d.join("b.yaml"), &service("beta", 80));
    let source = FileSource::new(d).keeping_documents();
    load_both(&source, d).unwrap();

    // A second file defines what the first does: refused at the second,
    // naming the first, as without the cache.
    write(&d.join("c.yaml"), &service("alpha", 81));
    let e = load_both(&source, d).unwrap_err();
    assert!(e.contains("defined twice") && e.contains("a.yaml"), "{e}");
    // Still refused on a reload that parses nothing: a cached file's
    // resources are checked against the others every time.
    let again = load_both(&source, d).unwrap_err();
    assert_eq!(e, again);
    std::fs::remove_file(d.join("c.yaml")).unwrap();
    load_both(&source, d).unwrap();

    // A file that does not parse keeps failing until it is fixed, cached or
    // not.
    write(&d.join("b.yaml"), "kind: [unclosed\n");
    let broken = load_both(&source, d).unwrap_err();
    assert!(
        broken.contains("b.yaml") && broken.contains("not valid YAML"),
        "{broken}"
    );
    assert_eq!(load_both(&source, d).unwrap_err(), broken);
    write(&d.join("b.yaml"), &service("beta", 80));
    load_both(&source, d).unwrap();

    // A document error inside a cached file is reported again.
    write(
        &d.join("b.yaml"),
        &service("beta", 80).replace("serviceAccount", "serviceAcount"),
    );
    let field = load_both(&source, d).unwrap_err();
    assert!(field.contains("serviceAcount"), "{field}");
    assert_eq!(load_both(&source, d).unwrap_err(), field);
    write(&d.join("b.yaml"), &service("beta", 80));

    // One MeshConfig only, across files.
    write(&d.join("m1.yaml"), MESH);
    load_both(&source, d).unwrap();
    write(&d.join("m2.yaml"), MESH);
    let two = load_both(&source, d).unwrap_err();
    assert!(two.contains("only one MeshConfig"), "{two}");
    std::fs::remove_file(d.join("m1.yaml")).unwrap();
    load_both(&source, d).unwrap();

    // A file renamed moves in the order of files: which of two definitions
    // is "the first" follows the names, as without the cache.
    write(&d.join("c.yaml"), &service("alpha", 81));
    let dup = load_both(&source, d).unwrap_err();
    std::fs::rename(d.join("a.yaml"), d.join("z.yaml")).unwrap();
    let renamed = load_both(&source, d).unwrap_err();
    assert_ne!(dup, renamed, "the first definition should now be c.yaml's");
    assert!(renamed.contains("z.yaml"), "{renamed}");

    // A file in a new sub-folder, then the folder gone.
    std::fs::remove_file(d.join("c.yaml")).unwrap();
    std::fs::create_dir(d.join("more")).unwrap();
    write(&d.join("more/g.yaml"), &service("gamma", 80));
    let with_gamma = load_both(&source, d).unwrap();
    assert!(
        with_gamma
            .service_entries
            .iter()
            .any(|s| s.name() == "gamma")
    );
    std::fs::remove_dir_all(d.join("more")).unwrap();
    let without = load_both(&source, d).unwrap();
    assert!(!without.service_entries.iter().any(|s| s.name() == "gamma"));
}

#[test]
fn a_namespace_whose_view_did_not_change_keeps_the_very_same_view() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(&d.join("shop.yaml"), &service_in("shop", "web", 80));
    write(&d.join("bank.yaml"), &service_in("bank", "ledger", 80));
    let source = FileSource::new(d).keeping_documents();
    let r1 = load_both(&source, d).unwrap();
    let c1 = Catalog::new(&r1).unwrap();
    let (shop1, bank1) = (
        c1.view("shop/web-1").unwrap(),
        c1.view("bank/ledger-1").unwrap(),
    );
    assert!(shop1.contains_key("ServiceEntry/shop/web"));
    assert!(
        !shop1.contains_key("ServiceEntry/bank/ledger"),
        "exportTo [.] leaked"
    );

    // bank's endpoint moves: bank's view is new, shop's is the one it had
    // (a stream holding it has nothing to compare).
    write(
        &d.join("bank.yaml"),
        &service_in("bank", "ledger", 80).replace("10.0.0.1", "10.0.0.2"),
    );
    let r2 = load_both(&source, d).unwrap();
    let c2 = Catalog::after(&r2, &c1).unwrap();
    let (shop2, bank2) = (
        c2.view("shop/web-1").unwrap(),
        c2.view("bank/ledger-1").unwrap(),
    );
    assert!(Arc::ptr_eq(&shop1, &shop2), "an unchanged view was rebuilt");
    assert!(!Arc::ptr_eq(&bank1, &bank2));
    assert_ne!(
        bank1["WorkloadEntry/bank/ledger-1"],
        bank2["WorkloadEntry/bank/ledger-1"]
    );
    // The same views a catalog from scratch gives.
    let fresh = Catalog::new(&r2).unwrap();
    assert_eq!(*fresh.view("shop/web-1").unwrap(), *shop2);
    assert_eq!(*fresh.view("bank/ledger-1").unwrap(), *bank2);

    // A service newly exported to shop changes shop's view too.
    write(
        &d.join("bank.yaml"),
        &service_in("bank", "ledger", 80).replace("exportTo: [.]", "exportTo: ['*']"),
    );
    let r3 = load_both(&source, d).unwrap();
    let c3 = Catalog::after(&r3, &c2).unwrap();
    let shop3 = c3.view("shop/web-1").unwrap();
    assert!(!Arc::ptr_eq(&shop2, &shop3));
    assert!(shop3.contains_key("ServiceEntry/bank/ledger"));
}
