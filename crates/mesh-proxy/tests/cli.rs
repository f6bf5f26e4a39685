//! `mesh-proxy check` and `explain` as a user runs them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/wordpress-canary/mesh")
}

fn run(args: &[&str]) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = Command::new(env!("CARGO_BIN_EXE_mesh-proxy"))
        .args(args)
        .output()
        .unwrap();
    (
        status.code().expect("exited normally"),
        String::from_utf8(stdout).unwrap(),
        String::from_utf8(stderr).unwrap(),
    )
}

/// A copy of the example folder with `edit` applied to the listings file.
fn variant(edit: impl FnOnce(String) -> String) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(example()).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
    }
    let listings = dir.path().join("article-listings.yaml");
    let text = std::fs::read_to_string(&listings).unwrap();
    std::fs::write(&listings, edit(text)).unwrap();
    dir
}

/// The article's Listing 3 DestinationRule with its TLS mode changed.
fn wordpress_dr_tls(text: String, mode: &str) -> String {
    let at = text
        .find("  name: wordpress\nspec:\n  trafficPolicy")
        .unwrap();
    let (head, tail) = text.split_at(at);
    format!(
        "{head}{}",
        tail.replacen("mode: ISTIO_MUTUAL", &format!("mode: {mode}"), 1)
    )
}

#[test]
fn example_is_clean() {
    let dir = example();
    let (code, out, err) = run(&["check", "--config", dir.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    let row = out
        .lines()
        .find(|l| l.starts_with("wordpress.default.svc.cluster.local:80"))
        .unwrap();
    let cells: Vec<_> = row.split_whitespace().collect();
    assert_eq!(&cells[1..4], ["OK", "STRICT", "ISTIO_MUTUAL"], "{row}");
    assert!(row.contains("MeshPolicy istio-system/default"), "{row}");
    assert!(row.contains("DestinationRule default/wordpress"), "{row}");
    let mysql = out
        .lines()
        .find(|l| l.starts_with("mysql.default.svc.cluster.local:3306"))
        .unwrap();
    assert!(mysql.contains(" OK "), "{mysql}");
    assert!(out.contains("0 conflict(s), 0 error(s)"), "{out}");
}

#[test]
fn disable_against_strict_is_a_conflict() {
    let dir = variant(|t| wordpress_dr_tls(t, "DISABLE"));
    let (code, out, _) = run(&["check", "--config", dir.path().to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    let row = out
        .lines()
        .find(|l| l.starts_with("wordpress.default.svc.cluster.local:80"))
        .unwrap();
    let cells: Vec<_> = row.split_whitespace().collect();
    assert_eq!(&cells[1..4], ["CONFLICT", "STRICT", "DISABLE"], "{row}");
    assert!(out.contains("ERROR   MESH0100"), "{out}");
    assert!(
        out.contains("article-listings.yaml (document 5)"),
        "names the file and document: {out}"
    );

    let (code, json, _) = run(&[
        "check",
        "--config",
        dir.path().to_str().unwrap(),
        "--output",
        "json",
    ]);
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let rows = v["tls"].as_array().unwrap();
    let row = rows
        .iter()
        .find(|r| r["host_port"] == "wordpress.default.svc.cluster.local:80")
        .unwrap();
    assert_eq!(row["status"], "CONFLICT");
    assert_eq!(row["destination_rule"]["name"], "wordpress");
    assert!(row["reason"].as_str().unwrap().contains("plaintext"));
}

#[test]
fn istio_mutual_against_disable_is_a_conflict() {
    // Listing 1's MeshPolicy turned into "no peers": plaintext servers, while
    // Listing 3's rule still sends ISTIO_MUTUAL.
    let dir = variant(|t| t.replacen("  peers:\n  - mtls: {}\n", "  peers: []\n", 1));
    let (code, out, _) = run(&["check", "--config", dir.path().to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    let row = out
        .lines()
        .find(|l| l.starts_with("wordpress.default.svc.cluster.local:80"))
        .unwrap();
    assert!(row.contains("CONFLICT  DISABLE  ISTIO_MUTUAL"), "{row}");
}

#[test]
fn unreadable_configuration_exits_2_with_file_and_field() {
    let dir = variant(|t| t.replacen("weight: 10", "weight: ten", 1));
    let (code, out, err) = run(&["check", "--config", dir.path().to_str().unwrap()]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("article-listings.yaml: document 4 (VirtualService wordpress): spec.http[0].route[1].weight"), "{err}");

    let (code, json, _) = run(&[
        "check",
        "--config",
        dir.path().to_str().unwrap(),
        "--output",
        "json",
    ]);
    assert_eq!(code, 2);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["readable"], false);
    assert_eq!(v["errors"][0]["field"], "spec.http[0].route[1].weight");

    let (code, _, err) = run(&["check", "--config", "/nonexistent/mesh"]);
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/mesh: cannot read"), "{err}");
}

#[test]
fn explain_names_each_deciding_resource() {
    let dir = example();
    let (code, out, err) = run(&[
        "explain",
        "--config",
        dir.to_str().unwrap(),
        "--from",
        "wordpress-v1",
        "--to",
        "mysql:3306",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    for want in [
        "source         workload default/wordpress-v1 at 127.0.0.1 as spiffe://cluster.local/ns/default/sa/wordpress",
        "service        mysql.default.svc.cluster.local:3306 (MYSQL)",
        "server-mtls    default/mysql port 15306: STRICT",
        "decided by MeshPolicy istio-system/default",
        "allowed by AuthorizationPolicy default/mysql-from-wordpress rule 0",
    ] {
        assert!(out.contains(want), "missing `{want}` in:\n{out}");
    }

    // MySQL may not call itself: the ALLOW policy names only WordPress.
    let (code, out, _) = run(&[
        "explain",
        "--config",
        dir.to_str().unwrap(),
        "--from",
        "mysql",
        "--to",
        "mysql:3306",
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("[FAIL] authorization  default/mysql: no ALLOW policy matched"),
        "{out}"
    );
    assert!(out.contains("=> 100% 403"), "{out}");

    let (code, _, err) = run(&[
        "explain",
        "--config",
        dir.to_str().unwrap(),
        "--from",
        "nobody",
        "--to",
        "mysql",
    ]);
    assert_eq!(code, 2);
    assert!(
        err.contains("no workload or Gateway named `nobody`"),
        "{err}"
    );
}

#[test]
fn explain_shows_the_canary_split_and_a_conflict() {
    // A mesh VirtualService for wordpress, so mesh clients see the split too.
    let dir = variant(|t| {
        wordpress_dr_tls(t, "DISABLE")
            .replacen(
                "  gateways:\n  - wordpress-gateway\n",
                "  gateways:\n  - wordpress-gateway\n  - mesh\n",
                1,
            )
            .replacen(
                "  - \"blog.datadoc.info\"\n  gateways",
                "  - \"blog.datadoc.info\"\n  - wordpress\n  gateways",
                1,
            )
    });
    let (code, out, _) = run(&[
        "explain",
        "--config",
        dir.path().to_str().unwrap(),
        "--from",
        "mysql",
        "--to",
        "wordpress",
        "--path",
        "/wp-login.php",
        "--output",
        "json",
    ]);
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let steps = v["steps"].as_array().unwrap();
    let route = steps.iter().find(|s| s["step"] == "route").unwrap();
    assert_eq!(route["decided_by"]["name"], "wordpress");
    let dests: Vec<_> = steps
        .iter()
        .filter(|s| s["step"] == "destination")
        .map(|s| s["decision"].as_str().unwrap())
        .collect();
    assert!(
        dests[0].contains("subset v1: weight 90 of 100 (90%)"),
        "{dests:?}"
    );
    assert!(
        dests[1].contains("subset v2: weight 10 of 100 (10%)"),
        "{dests:?}"
    );
    let conflict = steps
        .iter()
        .find(|s| s["step"] == "server-mtls" && s["ok"] == false)
        .unwrap();
    assert!(
        conflict["decision"].as_str().unwrap().contains("CONFLICT"),
        "{conflict}"
    );
    assert!(
        v["outcome"]
            .as_str()
            .unwrap()
            .contains("90% 503 (TLS conflict"),
        "{}",
        v["outcome"]
    );
}

#[test]
fn check_capture_names_what_capture_mode_cannot_serve() {
    // The example runs in explicit mode: its workloads share 127.0.0.1 and
    // its services have no virtual IP. Fine without capture...
    let dir = example();
    let (code, out, _) = run(&["check", "--config", dir.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(
        !out.contains("MESH0112") && !out.contains("MESH0113"),
        "{out}"
    );
    // ...and named, resource by resource, with it.
    let (code, out, err) = run(&["check", "--capture", "--config", dir.to_str().unwrap()]);
    assert!(out.contains("MESH0112"), "{out}{err}");
    assert!(out.contains("MESH0113"), "{out}");
    let loopback = out.lines().find(|l| l.contains("MESH0112")).unwrap();
    assert!(
        loopback.contains("WorkloadEntry") && loopback.contains("127.0.0.1"),
        "{loopback}"
    );
    assert!(code == 0 || code == 1, "{code}");
    let (_, json, _) = run(&[
        "check",
        "--capture",
        "--output",
        "json",
        "--config",
        dir.to_str().unwrap(),
    ]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let codes: Vec<&str> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["code"].as_str())
        .collect();
    assert!(
        codes.contains(&"MESH0112") && codes.contains(&"MESH0113"),
        "{codes:?}"
    );
}

#[test]
fn control_plane_flags_are_checked_before_anything_starts() {
    // Without --service-account the identity is unknown: refused by name,
    // before a CA or control plane is dialled.
    let (code, _, err) = run(&[
        "sidecar",
        "--control-plane",
        "127.0.0.1:9",
        "--ca-root",
        "/nonexistent/root.pem",
        "--workload",
        "web",
        "--admin",
        "127.0.0.1:0",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("--service-account"), "{err}");
    // A malformed --outbound or --app is refused before the identity is
    // obtained (a join token is single-use): with nothing listening at the
    // CA's address, getting that far would wait for it forever.
    for (flag, value) in [("--outbound", "web:80"), ("--app", "http=not-an-address")] {
        let (code, _, err) = run(&[
            "sidecar",
            "--control-plane",
            "127.0.0.1:9",
            "--ca-root",
            "/nonexistent/root.pem",
            "--token",
            "t",
            "--service-account",
            "web",
            "--workload",
            "web",
            "--admin",
            "127.0.0.1:0",
            flag,
            value,
        ]);
        assert_ne!(code, 0);
        assert!(err.contains(flag), "{err}");
    }
    // --config and --control-plane are one or the other.
    let (code, _, err) = run(&[
        "sidecar",
        "--config",
        "mesh",
        "--control-plane",
        "127.0.0.1:9",
        "--workload",
        "web",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--control-plane") && err.contains("--config"),
        "{err}"
    );
    // Neither: clap names what is missing.
    let (code, _, err) = run(&["sidecar", "--workload", "web"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--config"), "{err}");
    // Flags read only on a control plane are refused, by name, without
    // one (never accepted and ignored).
    for (role, flag, value) in [
        ("sidecar", "--service-account", "web"),
        ("sidecar", "--trust-domain", "example.org"),
        ("gateway", "--trust-domain", "example.org"),
        ("gateway", "--credentials-dir", "/etc/mesh"),
    ] {
        let who = if role == "sidecar" {
            "--workload"
        } else {
            "--gateway"
        };
        let (code, _, err) = run(&[role, "--config", "mesh", who, "web", flag, value]);
        assert_ne!(code, 0, "{role} {flag}: {err}");
        assert!(
            err.contains(flag) && err.contains("--control-plane"),
            "{role} {flag}: {err}"
        );
    }
}

#[test]
fn check_warns_of_what_grpc_proxyless_clients_cannot_honour() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("mesh.yaml"),
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: echo, namespace: demo}
spec:
  hosts: [echo.demo.svc.cluster.local]
  ports: [{number: 8080, name: grpc, protocol: GRPC}]
  workloadSelector: {labels: {app: echo}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: echo-v1, namespace: demo}
spec: {address: 10.0.0.2, labels: {app: echo}, serviceAccount: echo}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo, namespace: demo}
spec:
  hosts: [echo.demo.svc.cluster.local]
  http:
  - match: [{method: {exact: GET}}]
    route: [{destination: {host: echo.demo.svc.cluster.local}}]
    mirror: {host: echo.demo.svc.cluster.local}
  - route: [{destination: {host: echo.demo.svc.cluster.local}}]
"#,
    )
    .unwrap();
    let (code, out, err) = run(&["check", "--config", dir.path().to_str().unwrap()]);
    // Warnings: the sidecars honour all of it; gRPC's clients would not.
    assert_eq!(code, 0, "{out}{err}");
    let grpc: Vec<&str> = out.lines().filter(|l| l.contains("MESH0114")).collect();
    assert!(
        grpc.iter()
            .any(|l| l.contains("gRPC proxyless") && l.contains("method")),
        "{out}"
    );
    assert!(grpc.iter().any(|l| l.contains("mirror")), "{out}");
}

/// A running control plane: its runtime, its CA's folder, and the plane.
type Running = (
    tokio::runtime::Runtime,
    tempfile::TempDir,
    mesh_control::ControlPlane,
);

/// A control plane serving `dir`, in a runtime of the test's, with its
/// admin (metrics) endpoint, and that endpoint's URL.
fn control_plane(dir: &Path) -> (Running, String) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ca_tmp = tempfile::tempdir().unwrap();
    let ca_dir = ca_tmp.path().to_owned();
    mesh_ca::CertificateAuthority::init_dir(
        &ca_dir,
        mesh_core::identity::TrustDomain::new("cluster.local").unwrap(),
    )
    .unwrap();
    let plane = rt.block_on(async {
        let ca = std::sync::Arc::new(mesh_ca::CertificateAuthority::open_dir(&ca_dir).unwrap());
        mesh_control::ControlPlane::start_serving(
            ca,
            mesh_ca::TokenStore::new(&ca_dir),
            tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
            mesh_control::ControlPlaneConfig::default(),
            mesh_control::ConfigServer::from_files(dir).unwrap(),
        )
        .await
        .unwrap()
        .with_metrics(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap())
        .unwrap()
    });
    let admin = format!("http://{}", plane.metrics_addr().unwrap());
    ((rt, ca_tmp, plane), admin)
}

#[test]
fn check_and_explain_read_a_running_control_plane_as_they_read_a_folder() {
    let conflict = variant(|t| wordpress_dr_tls(t, "DISABLE"));
    for dir in [example(), conflict.path().to_owned()] {
        let dir = dir.to_str().unwrap().to_owned();
        let (_running, admin) = control_plane(Path::new(&dir));
        for output in ["table", "json"] {
            let local = run(&["check", "--config", &dir, "--output", output]);
            let remote = run(&["check", "--control-plane-admin", &admin, "--output", output]);
            assert_eq!(local, remote, "check --output {output} of {dir}");
        }
        let query = [
            "--from",
            "wordpress-v1",
            "--to",
            "mysql:3306",
            "--header",
            "x-user=a b&c",
        ];
        let mut local = vec!["explain", "--config", &dir];
        local.extend(query);
        let mut remote = vec!["explain", "--control-plane-admin", &admin];
        remote.extend(query);
        assert_eq!(run(&local), run(&remote), "explain of {dir}");
    }
    // The conflict is exit 1 both ways (compared above); an address where
    // no control plane answers is exit 2, said so.
    let (code, _, err) = run(&["check", "--control-plane-admin", "http://127.0.0.1:1"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--control-plane-admin http://127.0.0.1:1"),
        "{err}"
    );
    let (code, _, err) = run(&["check", "--control-plane-admin", "https://127.0.0.1:1"]);
    assert_eq!(code, 2);
    assert!(err.contains("plain HTTP"), "{err}");
}

#[test]
fn inject_adds_the_sidecar_from_a_file_or_stdin_and_refuses_by_field() {
    let app = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/wordpress-canary/kubernetes/app.yaml");
    let (code, out, err) = run(&[
        "inject",
        "-f",
        app.to_str().unwrap(),
        "--proxy-image",
        "registry.example/mesh-proxy:1",
        "--control-plane",
        "cp.mesh.svc:15012",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.matches("restartPolicy: Always").count(), 3, "{out}");
    assert!(out.contains("registry.example/mesh-proxy:1"));
    assert!(out.contains("cp.mesh.svc:15012"));

    // From stdin into a file; injecting the result again changes nothing.
    let dir = tempfile::tempdir().unwrap();
    let once = dir.path().join("once.yaml");
    std::fs::write(&once, &out).unwrap();
    let twice = dir.path().join("twice.yaml");
    let status = Command::new(env!("CARGO_BIN_EXE_mesh-proxy"))
        .args([
            "inject",
            "-f",
            "-",
            "-o",
            twice.to_str().unwrap(),
            "--proxy-image",
            "registry.example/mesh-proxy:1",
            "--control-plane",
            "cp.mesh.svc:15012",
        ])
        .stdin(std::fs::File::open(&once).unwrap())
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(std::fs::read_to_string(&twice).unwrap(), out);

    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: shop}\n\
         spec:\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n\
         \x20   spec:\n      containers:\n      - name: web\n        image: nginx\n        \
         securityContext: {runAsUser: 1337}\n",
    )
    .unwrap();
    let (code, out, err) = run(&["inject", "-f", bad.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(out.is_empty(), "nothing printed for a refused file: {out}");
    assert!(
        err.contains("Deployment shop/web")
            && err.contains("spec.template.spec.containers[0].securityContext.runAsUser"),
        "{err}"
    );
    let (code, _, err) = run(&["inject", "-f", "/nonexistent/x.yaml"]);
    assert_eq!(code, 1);
    assert!(err.contains("/nonexistent/x.yaml"), "{err}");
}

#[test]
fn a_sidecar_with_ingress_listeners_refuses_capture_mode_by_name() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("mesh.yaml"),
        "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: web}\n\
         spec: {address: 127.0.0.1, labels: {app: web}, serviceAccount: web}\n---\n\
         apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: web}\n\
         spec: {workloadSelector: {labels: {app: web}}, ingress: [{port: {number: 9080, protocol: HTTP, name: http}, defaultEndpoint: '127.0.0.1:8080'}]}\n",
    )
    .unwrap();
    let (code, _, err) = run(&[
        "sidecar",
        "--config",
        dir.path().to_str().unwrap(),
        "--workload",
        "web",
        "--capture",
        "--cert",
        "/nonexistent/cert.pem",
        "--key",
        "/nonexistent/key.pem",
        "--bundle",
        "/nonexistent/bundle.pem",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("ingress listeners") && err.contains("explicit mode only"),
        "{err}"
    );
}
