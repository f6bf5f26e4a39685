//! The mesh page in a real browser: headless Chromium (Debian's
//! `chromium`, driven by playwright-core from npm: `tests/browser/`) loads
//! the control plane's `/mesh` against the running canary, and what it
//! shows is asserted: both WordPress versions with a split near 90/10, the
//! mTLS lock on each edge, and the problem of a deliberately broken
//! configuration (a misspelt host). The screenshot is kept in `target/test-artifacts/`.

use std::path::PathBuf;
use std::process::Command;

use super::{Scenario, repo};

/// A DestinationRule for a host misspelt (`wordpres`): its subsets and
/// policy govern nothing, which `check` reports (MESH0104) and the page
/// must list; traffic is unaffected.
const BROKEN: &str = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\n\
    metadata: {name: wordpres, namespace: default}\n\
    spec: {host: wordpres.default.svc.cluster.local, subsets: [{name: v1, labels: {version: v1}}]}\n";

fn artifacts() -> PathBuf {
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| repo().join("target"), PathBuf::from);
    let dir = target.join("test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs the browser on the page: what it showed, as JSON.
fn browse(url: &str, shot: &std::path::Path) -> serde_json::Value {
    let out = Command::new("node")
        .arg(repo().join("tests/browser/mesh_page.mjs"))
        .arg(url)
        .arg(shot)
        .arg("90000")
        .output()
        .expect("running node");
    assert!(
        out.status.success(),
        "the browser run failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "the browser printed no JSON ({e}):\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

pub(crate) fn mesh_page_in_a_browser(s: &Scenario) {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
    let driver = repo().join("tests/browser/node_modules/playwright-core");
    if !std::path::Path::new(&chromium).exists() || !driver.exists() {
        eprintln!(
            "\n*** SKIPPED the mesh page in a browser: needs {chromium} (Debian's chromium) and \
             {} (npm ci --prefix tests/browser); .ci/run installs both ***\n",
            driver.display()
        );
        return;
    }
    // Traffic within the page's window (30 s), and the broken rule.
    let (results, _) = s.burst(400, "/", &[]);
    assert!(results.iter().all(|(c, _)| *c == 200));
    std::fs::write(s.mesh().join("broken.yaml"), BROKEN).unwrap();
    let url = format!("http://{}/mesh", s.endpoint("CA_METRICS"));
    let shot = artifacts().join("mesh-page.png");
    // Traffic goes on while the browser reads the page, so the live
    // split it shows (rates over the last 30 s) is never of an idle mesh,
    // however slow the browser is to start.
    let page = std::thread::scope(|scope| {
        let more = scope.spawn(|| s.burst(300, "/", &[]));
        let page = browse(&url, &shot);
        let (results, _) = more.join().unwrap();
        assert!(results.iter().all(|(c, _)| *c == 200));
        page
    });
    let dump = serde_json::to_string_pretty(&page).unwrap();
    assert!(page["wait_error"].is_null(), "{dump}");
    assert!(
        page["errors"].as_array().unwrap().is_empty(),
        "script errors: {dump}"
    );
    // Everything the page needs is the mesh's own.
    for r in page["requests"].as_array().unwrap() {
        let r = r.as_str().unwrap();
        assert!(
            r.starts_with(&format!("http://{}/", s.endpoint("CA_METRICS"))),
            "the page fetched {r}"
        );
    }
    // Both versions, split near 90/10.
    let split = page["splits"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["service"] == "wordpress.default.svc.cluster.local")
        .unwrap_or_else(|| panic!("no split for wordpress: {dump}"));
    let share = |v: &str| {
        split["versions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["version"] == v)
            .and_then(|x| x["share"].as_f64())
            .unwrap_or_else(|| panic!("no {v} in the split: {dump}"))
    };
    let (v1, v2) = (share("v1"), share("v2"));
    assert!((0.04..=0.18).contains(&v2), "v2 share {v2}: {dump}");
    assert!((v1 + v2 - 1.0).abs() < 0.01, "{dump}");
    // The lock on each edge of the graph, and the mesh's identities.
    let graph = page["graph_edges"].as_array().unwrap();
    for (to, protocol) in [
        ("default/wordpress-v1", "http"),
        ("default/wordpress-v2", "http"),
        ("default/mysql", "tcp"),
    ] {
        let into: Vec<_> = graph
            .iter()
            .filter(|e| e["edge"].as_str().unwrap().ends_with(&format!("->{to}")))
            .collect();
        assert!(!into.is_empty(), "no edge into {to}: {dump}");
        for e in &into {
            assert_eq!(e["lock"], true, "no lock on {e}: {dump}");
            assert!(
                e["lock_title"]
                    .as_str()
                    .unwrap()
                    .contains("spiffe://cluster.local/ns/default/sa/"),
                "{e}"
            );
            assert!(
                !e["edge"].as_str().unwrap().starts_with("unknown->"),
                "a caller unnamed: {e}"
            );
        }
        assert!(
            page["edges"].as_array().unwrap().iter().any(|e| e["edge"]
                .as_str()
                .unwrap()
                .ends_with(&format!("->{to}"))
                && e["protocol"] == protocol
                && e["mtls"] == "true"
                && e["explain"].as_str().is_some()),
            "{dump}"
        );
    }
    // The broken rule's problem.
    assert!(
        page["problems"].as_array().unwrap().iter().any(|p| {
            p["code"] == "MESH0104" && p["text"].as_str().unwrap().contains("wordpres.default")
        }),
        "the broken rule is not listed: {dump}"
    );
    assert!(
        std::fs::metadata(&shot).unwrap().len() > 10_000,
        "no screenshot"
    );
    eprintln!("the mesh page's screenshot: {}", shot.display());
    std::fs::remove_file(s.mesh().join("broken.yaml")).unwrap();
}
