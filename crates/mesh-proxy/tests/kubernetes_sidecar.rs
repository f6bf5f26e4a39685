//! The injected sidecar on Kubernetes, as a process: `mesh-proxy sidecar`
//! run with the very arguments `mesh-proxy inject` gives it (only the
//! addresses and the downward API's values filled in, and `--capture` left
//! out: capture has its own tests in network namespaces), against a control
//! plane on Kubernetes whose API server is played by `mesh-kube`'s in-test
//! server. The projected token gets the pod's service account's SVID
//! through TokenReview; the status port answers readiness and metrics and
//! nothing else; a token TokenReview refuses leaves the sidecar not ready.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../mesh-kube/tests/apiserver/mod.rs"]
mod apiserver;
mod support;

use std::net::SocketAddr;
use std::sync::Arc;

use apiserver::{ApiServer, serve_mesh_kinds};
use mesh_ca::{CertificateAuthority, TokenStore};
use mesh_control::{ConfigServer, ControlPlane, ControlPlaneConfig};
use mesh_core::identity::TrustDomain;
use mesh_kube::inject::{InjectConfig, PROXY_CONTAINER, inject_object};
use mesh_kube::{KubeOptions, KubeSource, TokenReviewer};
use serde_json::json;
use support::{Proc, field, http_get};
use tokio::net::TcpListener;

/// The injected sidecar's arguments for pod `web-0` of service account
/// `web`, with the test's addresses and files.
fn injected_args(control_plane: SocketAddr, root: &str, token: &str) -> Vec<String> {
    injected(
        control_plane,
        root,
        token,
        json!({"name": "web", "image": "nginx"}),
    )
    .0
}

/// The injected sidecar's arguments and environment (its `value`s) for pod
/// `web-0` with the app container `app`.
fn injected(
    control_plane: SocketAddr,
    root: &str,
    token: &str,
    app: serde_json::Value,
) -> (Vec<String>, Vec<(String, String)>) {
    let mut pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web-0", "namespace": "default", "labels": {"app": "web"}},
        "spec": {"serviceAccountName": "web", "containers": [app]},
    });
    let config = InjectConfig {
        control_plane: control_plane.to_string(),
        ..InjectConfig::default()
    };
    inject_object(&mut pod, &config).unwrap();
    let proxy = &pod["spec"]["initContainers"][1];
    assert_eq!(proxy["name"], PROXY_CONTAINER);
    let given: Vec<String> = proxy["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect();
    let mut args = Vec::new();
    let mut it = given.into_iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--capture" => continue,
            "--ca-root" | "--token-file" | "--status-addr" => {
                let _ = it.next();
                args.push(a.clone());
                args.push(
                    match a.as_str() {
                        "--ca-root" => root,
                        "--token-file" => token,
                        _ => "127.0.0.1:0",
                    }
                    .to_owned(),
                );
            }
            _ => args.push(
                a.replace("$(POD_NAMESPACE)", "default")
                    .replace("$(POD_NAME)", "web-0")
                    .replace("$(SERVICE_ACCOUNT)", "web"),
            ),
        }
    }
    args.extend(["--admin", "127.0.0.1:0", "--http-proxy", "off"].map(String::from));
    let env = proxy["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| {
            Some((
                e["name"].as_str()?.to_owned(),
                e["value"].as_str()?.to_owned(),
            ))
        })
        .collect();
    (args, env)
}

/// A cluster (the in-test API server) holding pod `web-0` of service
/// account `web`, whose token `eyJ.web.ok` TokenReview accepts for
/// `istio-ca`; a control plane on it; the folder holding the CA and the
/// projected token file, and their paths.
struct Cluster {
    api: ApiServer,
    plane: ControlPlane,
    _dir: tempfile::TempDir,
    root: String,
    token: std::path::PathBuf,
}

async fn cluster() -> Cluster {
    let api = ApiServer::start().await;
    serve_mesh_kinds(&api);
    api.put(
        "/api/v1/pods",
        json!({"metadata": {"name": "web-0", "namespace": "default", "labels": {"app": "web"}},
               "spec": {"serviceAccountName": "web", "containers": [{"name": "web", "image": "nginx"}]},
               "status": {"phase": "Running", "podIP": "10.244.0.11",
                          "conditions": [{"type": "Ready", "status": "True"}]}}),
    );
    api.token(
        "eyJ.web.ok",
        true,
        "system:serviceaccount:default:web",
        &["istio-ca"],
    );
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    CertificateAuthority::init_dir(&ca_dir, TrustDomain::new("cluster.local").unwrap()).unwrap();
    let ca = Arc::new(CertificateAuthority::open_dir(&ca_dir).unwrap());
    let source = Arc::new(KubeSource::start(api.client(), KubeOptions::default()).await);
    let xds = ConfigServer::from_source(source.clone(), source.changes()).unwrap();
    let plane = ControlPlane::start_on_kubernetes(
        ca,
        TokenStore::new(&ca_dir),
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        ControlPlaneConfig::default(),
        xds,
        Arc::new(TokenReviewer::new(api.client(), "istio-ca")),
    )
    .await
    .unwrap();
    // The projected token, as the kubelet writes it.
    let token = dir.path().join("mesh-token");
    std::fs::write(&token, "eyJ.web.ok").unwrap();
    Cluster {
        api,
        plane,
        root: ca_dir.join("root-cert.pem").to_str().unwrap().to_owned(),
        token,
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_injected_sidecar_gets_its_service_account_s_svid_and_serves_status() {
    let Cluster {
        api,
        plane,
        _dir: dir,
        root,
        token,
    } = cluster().await;
    let root = root.as_str();
    api.token(
        "eyJ.web.vault",
        true,
        "system:serviceaccount:default:web",
        &["vault"],
    );
    let args = injected_args(plane.ca_addr(), root, token.to_str().unwrap());
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_mesh-proxy"));
    cmd.args(&args);
    let mut web = Proc::spawn(cmd);
    // Bound first, before anything is obtained: logged in this order.
    let status = web.line("status listening").await;
    let status = field(&status, "addr").to_owned();
    let admin = web.line("admin listening").await;
    let admin = field(&admin, "admin_addr").to_owned();
    web.line(" ready").await;

    let (code, body) = http_get(&format!("http://{status}/healthz/ready"))
        .await
        .unwrap();
    assert_eq!(code, 200, "{body}");
    let (code, metrics) = http_get(&format!("http://{status}/stats/prometheus"))
        .await
        .unwrap();
    assert_eq!(code, 200);
    assert!(metrics.contains("mesh_config_version"), "{metrics}");
    // What the configuration and the certificates hold: admin only.
    for path in ["/config_dump", "/certs", "/"] {
        let (code, _) = http_get(&format!("http://{status}{path}")).await.unwrap();
        assert_eq!(code, 404, "{path} on the status port");
    }
    let (code, certs) = http_get(&format!("http://{admin}/certs")).await.unwrap();
    assert_eq!(code, 200);
    assert!(
        certs.contains("spiffe://cluster.local/ns/default/sa/web"),
        "{certs}"
    );
    // The token was read, not spent: it is still there for a restart.
    assert_eq!(std::fs::read_to_string(&token).unwrap(), "eyJ.web.ok");
    drop(web);

    // A token for another audience: no SVID, so never ready. On a control
    // plane the SVID comes before the configuration stream, and the status
    // port is served from then on: until then the kubelet's probe times out
    // (a failure, as a 503 would be) and the log says why.
    let other = dir.path().join("vault-token");
    std::fs::write(&other, "eyJ.web.vault").unwrap();
    let args = injected_args(plane.ca_addr(), root, other.to_str().unwrap());
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_mesh-proxy"));
    cmd.args(&args);
    let mut refused = Proc::spawn(cmd);
    let status = refused.line("status listening").await;
    let status = field(&status, "addr").to_owned();
    refused.line("Unauthenticated").await;
    let probe = http_get(&format!("http://{status}/healthz/ready")).await;
    assert!(!matches!(probe, Some((200, _))), "{probe:?}");
    drop(refused);
    plane.shutdown().await;
}

/// An app that answers `GET /healthz` 200 and anything else 500, over
/// HTTP/1.1, on a port of its own.
async fn health_app() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&got);
                let ok = head.starts_with("GET /healthz ")
                    && head.to_ascii_lowercase().contains("x-probe: mesh");
                let status = if ok {
                    "200 OK"
                } else {
                    "500 Internal Server Error"
                };
                let _ = tcp
                    .write_all(
                        format!(
                            "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                        )
                        .as_bytes(),
                    )
                    .await;
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_s_probes_run_through_the_status_port() {
    let Cluster {
        api: _api,
        plane,
        _dir,
        root,
        token,
    } = cluster().await;
    let app = health_app().await;
    // A port nothing listens on, held for the test: bound but never
    // listening, so a connection to it is refused and no other process can
    // take it meanwhile.
    let held = tokio::net::TcpSocket::new_v4().unwrap();
    held.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let closed = held.local_addr().unwrap().port();
    let container = json!({
        "name": "web", "image": "wordpress",
        "ports": [{"name": "http", "containerPort": app}],
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http",
                                       "httpHeaders": [{"name": "X-Probe", "value": "mesh"}]},
                           "periodSeconds": 5},
        "livenessProbe": {"httpGet": {"path": "/broken", "port": app}},
        "startupProbe": {"tcpSocket": {"port": closed}},
    });
    let (args, env) = injected(plane.ca_addr(), &root, token.to_str().unwrap(), container);
    assert!(env.iter().any(|(k, _)| k == "MESH_APP_PROBES"), "{env:?}");
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_mesh-proxy"));
    cmd.args(&args).envs(env);
    let mut web = Proc::spawn(cmd);
    let status = web.line("status listening").await;
    let status = field(&status, "addr").to_owned();
    web.line(" ready").await;

    let (code, body) = http_get(&format!("http://{status}/app-health/web/readyz"))
        .await
        .unwrap();
    assert_eq!(code, 200, "{body}");
    let (code, body) = http_get(&format!("http://{status}/app-health/web/livez"))
        .await
        .unwrap();
    assert_eq!(code, 503);
    assert!(body.contains("500"), "{body}");
    let (code, body) = http_get(&format!("http://{status}/app-health/web/startupz"))
        .await
        .unwrap();
    assert_eq!(code, 503);
    assert!(body.contains(&format!("port {closed}")), "{body}");
    let (code, _) = http_get(&format!("http://{status}/app-health/other/readyz"))
        .await
        .unwrap();
    assert_eq!(code, 404);
    drop(web);

    // The variable without a status port: refused by name at start.
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_mesh-proxy"));
    let without: Vec<String> = {
        let mut v = Vec::new();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            if a == "--status-addr" {
                it.next();
            } else {
                v.push(a.clone());
            }
        }
        v
    };
    cmd.args(&without).env("MESH_APP_PROBES", "{}");
    let mut refused = Proc::spawn(cmd);
    refused.line("give --status-addr").await;
    drop(held);
    plane.shutdown().await;
}
