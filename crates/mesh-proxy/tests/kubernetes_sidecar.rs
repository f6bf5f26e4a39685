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
use std::time::Duration;

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

/// A control plane on `api`'s cluster, its CA new in `ca_dir`.
struct Plane {
    plane: ControlPlane,
    ca: Arc<CertificateAuthority>,
    source: Arc<KubeSource>,
    xds: ConfigServer,
}

async fn plane_on(api: &ApiServer, ca_dir: &std::path::Path) -> Plane {
    CertificateAuthority::init_dir(ca_dir, TrustDomain::new("cluster.local").unwrap()).unwrap();
    let ca = Arc::new(CertificateAuthority::open_dir(ca_dir).unwrap());
    let source = Arc::new(KubeSource::start(api.client(), KubeOptions::default()).await);
    let xds = ConfigServer::from_source(source.clone(), source.changes()).unwrap();
    let plane = ControlPlane::start_on_kubernetes(
        ca.clone(),
        TokenStore::new(ca_dir),
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        ControlPlaneConfig::default(),
        xds.clone(),
        Arc::new(TokenReviewer::new(api.client(), "istio-ca")),
    )
    .await
    .unwrap();
    Plane {
        plane,
        ca,
        source,
        xds,
    }
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
    let Plane { plane, .. } = plane_on(&api, &ca_dir).await;
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

/// `GET path` from `client` to web: the status.
async fn call(client: &mesh_tower::Mesh, path: &str) -> u16 {
    let req = http::Request::get(format!("http://web.default.svc.cluster.local{path}"))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    client.send(req).await.status().as_u16()
}

/// A policy at web denying `path`: the probe that a change made in the
/// cluster reached the data planes.
fn deny(path: &str) -> serde_json::Value {
    json!({
        "apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
        "metadata": {"name": format!("deny{}", path.replace('/', "-")), "namespace": "default"},
        "spec": {"selector": {"matchLabels": {"app": "web"}}, "action": "DENY",
                 "rules": [{"to": [{"operation": {"paths": [path]}}]}]},
    })
}

/// The "Done when" of the Kubernetes source: two workloads following a
/// control plane on Kubernetes (the client and web, proxyless `Mesh`es, web
/// with an AuthorizationPolicy that admits only the client) while the API
/// server's watches end, its history is compacted (410 Gone, a relist), and
/// it answers 500 to everything for a while. A request every few
/// milliseconds meanwhile: not one fails, so no configuration was lost on
/// the way (a lost service is a 503 at the client, a lost workload or policy
/// a refusal at web); after each fault a change made in the cluster reaches
/// web, so the watches did come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_plane_on_kubernetes_rides_out_ended_watches_410_and_500s() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    const PODS: &str = "/api/v1/pods";
    const POLICIES: &str = "/apis/security.istio.io/v1/authorizationpolicies";

    let web_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = web_listener.local_addr().unwrap().port();
    let api = ApiServer::start().await;
    serve_mesh_kinds(&api);
    let pod = |name: &str, app: &str| {
        json!({"metadata": {"name": name, "namespace": "default", "labels": {"app": app}},
               "spec": {"serviceAccountName": app, "containers": [{"name": app, "image": app}]},
               "status": {"phase": "Running", "podIP": "127.0.0.1",
                          "conditions": [{"type": "Ready", "status": "True"}]}})
    };
    api.put(PODS, pod("web-0", "web"));
    api.put(PODS, pod("client-0", "client"));
    api.put(
        "/api/v1/services",
        json!({"metadata": {"name": "web", "namespace": "default"},
               "spec": {"type": "ClusterIP", "clusterIP": "10.96.0.50", "selector": {"app": "web"},
                        "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": port}]}}),
    );
    api.put(
        "/apis/discovery.k8s.io/v1/endpointslices",
        json!({"metadata": {"name": "web-abcde", "namespace": "default",
                            "labels": {"kubernetes.io/service-name": "web"}},
               "addressType": "IPv4",
               "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
               "endpoints": [{"addresses": ["127.0.0.1"],
                              "conditions": {"ready": true, "serving": true, "terminating": false},
                              "targetRef": {"kind": "Pod", "name": "web-0", "namespace": "default"}}]}),
    );
    api.put(
        POLICIES,
        json!({"metadata": {"name": "web", "namespace": "default"},
               "spec": {"selector": {"matchLabels": {"app": "web"}},
                        "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/default/sa/client"]}}]}]}}),
    );

    let td = TrustDomain::new("cluster.local").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let Plane {
        plane, ca, source, ..
    } = plane_on(&api, &dir.path().join("ca")).await;
    let follow = |pod: &'static str, sa: &'static str| {
        let certs = dir.path().join(sa);
        let id = mesh_core::identity::SpiffeId::for_workload(&td, "default", sa).unwrap();
        support::write_identity(&ca, &id, time::OffsetDateTime::now_utc(), None, &certs);
        mesh_tower::Mesh::builder()
            .control_plane(plane.ca_addr().to_string())
            .workload("default", pod)
            .identity_files(
                certs.join("cert.pem"),
                certs.join("key.pem"),
                certs.join("bundle.pem"),
            )
            .build()
    };
    let web = follow("web-0", "web").await.unwrap();
    let _served = web
        .serve_listener(
            web_listener,
            tower::service_fn(|_req| async {
                Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
                    bytes::Bytes::from_static(b"web"),
                )))
            }),
        )
        .unwrap();
    let client = Arc::new(follow("client-0", "client").await.unwrap());
    assert_eq!(call(&client, "/").await, 200);

    // The traffic: one request after another until the end, every status
    // other than 200 kept.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let traffic = tokio::spawn({
        let (client, stop, sent) = (client.clone(), stop.clone(), sent.clone());
        async move {
            let mut failed = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let status = call(&client, "/").await;
                sent.fetch_add(1, Ordering::Relaxed);
                if status != 200 {
                    failed.push(status);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            failed
        }
    });
    // Each fault, then a change that must come through it.
    let changed = async |path: &str| {
        api.put(POLICIES, deny(path));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while call(&client, path).await != 403 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{path}: the change never reached web"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let watching = async || {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while api.open_watches() == 0 {
            assert!(tokio::time::Instant::now() < deadline, "no watch came back");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };

    // 1. Every watch ends, as at the API server's timeout: resumed from its
    //    resourceVersion.
    api.end_all_watches();
    changed("/after-end").await;
    // 2. The history is compacted: every watch gets 410 Gone and relists.
    let listed = api
        .requests()
        .iter()
        .filter(|r| !r.contains("watch=true"))
        .count();
    api.compact();
    changed("/after-410").await;
    let relisted = api
        .requests()
        .iter()
        .filter(|r| !r.contains("watch=true"))
        .count();
    assert!(relisted > listed, "410 Gone relists");
    // 3. 500 to everything for a while, every watch ended meanwhile so each
    //    meets it; then healed.
    watching().await;
    api.fail("/api", 500, u32::MAX);
    api.end_all_watches();
    let failing_from = sent.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let st = source.status();
    assert!(
        st.watches
            .iter()
            .any(|w| w.error.as_deref().is_some_and(|e| e.contains("(HTTP 500)"))),
        "the API server's 500s are in the source's status: {st:?}"
    );
    assert!(
        sent.load(Ordering::Relaxed) > failing_from,
        "requests flowed while the API server failed"
    );
    api.heal();
    changed("/after-500").await;

    stop.store(true, Ordering::Relaxed);
    let failed = traffic.await.unwrap();
    let sent = sent.load(Ordering::Relaxed);
    // That requests flowed is asserted per phase above (a count here would
    // measure the machine's speed: 59 were seen under load); what matters
    // is that none of them failed.
    assert!(sent > failing_from, "{sent} requests");
    assert!(
        failed.is_empty(),
        "{} of {sent} failed: {failed:?}",
        failed.len()
    );
    plane.shutdown().await;
}

/// `mesh-proxy ARGS`, run off the runtime (the in-test API server is on
/// it): exit status, standard output, standard error.
async fn mesh_proxy(args: Vec<String>) -> (i32, String, String) {
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_mesh-proxy"))
            .args(&args)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

/// A `check` report without the origins of the resources it names (the
/// table's indented origin lines, JSON's `origin` objects).
fn without_origins(report: &str, output: &str) -> String {
    fn strip(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(m) => {
                m.remove("origin");
                m.values_mut().for_each(strip);
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    if output == "json" {
        let mut v: serde_json::Value = serde_json::from_str(report).unwrap();
        strip(&mut v);
        v.to_string()
    } else {
        report
            .lines()
            .filter(|l| !l.starts_with("          "))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// `check --kubeconfig` reads a live cluster as the control plane does and
/// prints what `check --config` prints for the same mesh as files (the
/// article's canary, recorded as the API server lists it); `explain` the
/// same. A kind it may not list, and an object that does not load, are
/// exit 2, named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_and_explain_read_a_live_cluster_as_they_read_a_folder() {
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../mesh-kube/tests/fixtures/wordpress");
    let api = ApiServer::start().await;
    serve_mesh_kinds(&api);
    api.serve_fixtures(&fixtures);
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = api.kubeconfig(dir.path());
    let kubeconfig = kubeconfig.to_str().unwrap().to_owned();
    let files = fixtures.join("files");
    let files = files.to_str().unwrap().to_owned();
    let strings = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();

    for output in ["table", "json"] {
        let (code, from_files, err) =
            mesh_proxy(strings(&["check", "--config", &files, "--output", output])).await;
        assert!(code == 0 || code == 1, "{code}: {err}");
        let (cluster_code, from_cluster, err) = mesh_proxy(strings(&[
            "check",
            "--kubeconfig",
            &kubeconfig,
            "--output",
            output,
        ]))
        .await;
        assert_eq!(cluster_code, code, "{err}\n{from_cluster}");
        // The same report, but for where each resource was read: a file
        // and document, or the object's API path.
        assert!(
            from_cluster.contains(
                "k8s:/apis/networking.istio.io/v1/namespaces/default/destinationrules/mtls-rule"
            ),
            "{from_cluster}"
        );
        assert_eq!(
            without_origins(&from_cluster, output),
            without_origins(&from_files, output),
            "{output}: the same report"
        );
        assert!(
            from_cluster.contains("wordpress.default.svc.cluster.local"),
            "{from_cluster}"
        );
    }
    let explain = |source: Vec<String>| {
        let mut args = strings(&["explain"]);
        args.extend(source);
        args.extend(strings(&[
            "--from",
            "default/wordpress-v1-6d8f7c9b5d-k2x7p",
            "--to",
            "mysql.default.svc.cluster.local:3306",
        ]));
        mesh_proxy(args)
    };
    let (code, from_files, err) = explain(strings(&["--config", &files])).await;
    let (cluster_code, from_cluster, cerr) = explain(strings(&["--kubeconfig", &kubeconfig])).await;
    // The same steps and verdict; each "decided by" names its origin.
    let steps = |text: &str| {
        text.lines()
            .map(|l| {
                l.split_once(" (k8s:")
                    .or(l.split_once(" (/"))
                    .map_or(l, |(a, _)| a)
                    .to_owned()
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(cluster_code, code, "{err}\n{cerr}");
    assert!(
        from_cluster.contains("(k8s:/api/v1/namespaces/default/services/mysql"),
        "{from_cluster}"
    );
    assert_eq!(steps(&from_cluster), steps(&from_files));

    // Forbidden to list AuthorizationPolicies: never read as "none".
    api.fail(
        "/apis/security.istio.io/v1/authorizationpolicies",
        403,
        u32::MAX,
    );
    let (code, out, err) = mesh_proxy(strings(&[
        "check",
        "--kubeconfig",
        &kubeconfig,
        "--list-timeout",
        "3",
    ]))
    .await;
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("the cluster cannot be read")
            && err.contains(
                "cannot list authorizationpolicies.security.istio.io/v1 (all namespaces)"
            )
            && err.contains("403"),
        "{err}"
    );
    api.heal();

    // An object that does not load: named by its API path and field.
    api.put(
        "/apis/networking.istio.io/v1/virtualservices",
        json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
               "metadata": {"name": "broken", "namespace": "shop"},
               "spec": {"hosts": ["web"], "http": [{"route": [{"destination": {"host": "web"}, "weight": "ninety"}]}]}}),
    );
    let (code, _, err) = mesh_proxy(strings(&["check", "--kubeconfig", &kubeconfig])).await;
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("k8s:/apis/networking.istio.io/v1/namespaces/shop/virtualservices/broken")
            && err.contains("spec.http[0].route[0].weight"),
        "{err}"
    );
    // A kubeconfig that is not there: named.
    let (code, _, err) = mesh_proxy(strings(&[
        "check",
        "--kubeconfig",
        "/nonexistent/kubeconfig",
    ]))
    .await;
    assert_eq!(code, 2);
    assert!(err.contains("kubeconfig /nonexistent/kubeconfig"), "{err}");
    // Only reads: nothing was written to the cluster.
    assert!(api.events().is_empty());
    assert!(
        api.requests().iter().all(|r| r.starts_with("GET ")),
        "{:?}",
        api.requests()
    );
}

/// The YAML documents of a file of the example.
fn example_docs(file: &str) -> Vec<serde_json::Value> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/wordpress-canary/kubernetes")
        .join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    serde_saphyr::from_multiple::<serde_json::Value>(&text)
        .unwrap()
        .into_iter()
        .filter(|d| !d.is_null())
        .collect()
}

/// A self-signed certificate and key for `host`, as PEM.
fn self_signed(host: &str) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec![host.to_owned()]).unwrap();
    (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
}

/// The example's ingress gateway (`gateway.yaml`) for the Gateway of its
/// `mesh.yaml`, as a cluster would run it: its arguments, service account,
/// projected token and mounted Secret, against a control plane on the
/// in-test API server holding the article's canary and `mesh.yaml`'s
/// objects. The manifest agrees with itself (the identity the control plane
/// expects of the Gateway's proxy is the pod's service account's; the
/// Secret is mounted where `credentialName` is read), and the gateway,
/// started as those arguments say (only the addresses and the Gateway's
/// port numbers the test's), serves HTTPS with the Secret's certificate and
/// redirects plain HTTP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_s_ingress_gateway_serves_the_gateway_with_its_secret() {
    use mesh_proxy::{BoundSocket, Gateway, GatewayListeners, IdentitySource};
    use rustls_pki_types::pem::PemObject as _;
    const BLOG: &str = "blog.example.test";
    let docs = example_docs("gateway.yaml");
    let deployment = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    let pod = &deployment["spec"]["template"];
    let container = &pod["spec"]["containers"][0];
    let args: Vec<String> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect();
    let arg = |name: &str| {
        let i = args
            .iter()
            .position(|a| a == name)
            .unwrap_or_else(|| panic!("{name}"));
        args[i + 1].clone()
    };
    assert_eq!(args[0], "gateway");
    let gateway_key = arg("--gateway");
    let (ns, sa) = gateway_key.split_once('/').unwrap();
    assert_eq!(deployment["metadata"]["namespace"], ns);
    assert_eq!(
        pod["spec"]["serviceAccountName"], sa,
        "the Gateway's identity is the pod's"
    );
    assert_eq!(
        pod["metadata"]["labels"]["sidecar.istio.io/inject"],
        "false"
    );

    let mesh = example_docs("mesh.yaml");
    let mut gw = mesh
        .iter()
        .find(|d| d["kind"] == "Gateway")
        .unwrap()
        .clone();
    assert_eq!(
        format!(
            "{}/{}",
            gw["metadata"]["namespace"].as_str().unwrap(),
            gw["metadata"]["name"].as_str().unwrap()
        ),
        gateway_key
    );
    let credential = gw["spec"]["servers"][0]["tls"]["credentialName"]
        .as_str()
        .unwrap()
        .to_owned();
    let mount = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| {
            let volume = pod["spec"]["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|v| v["name"] == m["name"])
                .unwrap();
            volume["secret"]["secretName"] == credential.as_str()
        })
        .expect("the credentialName's Secret is mounted");
    assert_eq!(
        mount["mountPath"].as_str().unwrap(),
        format!("{}/{credential}", arg("--credentials-dir")),
        "mounted where credentialName is read"
    );

    // The cluster: the article's canary, mesh.yaml's objects (the
    // Gateway's port numbers the test's own), the gateway's pod and token.
    let https = BoundSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let http = BoundSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let (https_port, http_port) = (https.local_addr().port(), http.local_addr().port());
    for s in gw["spec"]["servers"].as_array_mut().unwrap() {
        let n = if s["port"]["number"] == 443 {
            https_port
        } else {
            http_port
        };
        s["port"]["number"] = json!(n);
    }
    let api = ApiServer::start().await;
    serve_mesh_kinds(&api);
    api.serve_fixtures(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../mesh-kube/tests/fixtures/wordpress"),
    );
    for mut doc in mesh
        .into_iter()
        .filter(|d| d["kind"] != "Gateway")
        .chain([gw])
    {
        let plural = mesh_kube::source::ISTIO_KINDS
            .iter()
            .find(|k| doc["kind"] == k.kind)
            .unwrap()
            .plural;
        let path = format!("/apis/{}/{plural}", doc["apiVersion"].as_str().unwrap());
        doc["metadata"]["uid"] = json!(format!("u-{plural}"));
        api.put(&path, doc);
    }
    api.put(
        "/api/v1/pods",
        json!({"metadata": {"name": "wordpress-gateway-5f7c9d8b6d-q2w4e", "namespace": ns,
                            "labels": pod["metadata"]["labels"]},
               "spec": {"serviceAccountName": sa, "containers": [{"name": "gateway", "image": "mesh-proxy"}]},
               "status": {"phase": "Running", "podIP": "10.244.2.9",
                          "conditions": [{"type": "Ready", "status": "True"}]}}),
    );
    api.token(
        "eyJ.gateway.sig",
        true,
        &format!("system:serviceaccount:{ns}:{sa}"),
        &["istio-ca"],
    );
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    let Plane {
        plane,
        xds: plane_status,
        ..
    } = plane_on(&api, &ca_dir).await;
    // The kubelet's mounts: the token, and the Secret (tls.crt, tls.key).
    let token = dir.path().join("mesh-token");
    std::fs::write(&token, "eyJ.gateway.sig").unwrap();
    let credentials = dir.path().join("credentials");
    let secret = credentials.join(&credential);
    std::fs::create_dir_all(&secret).unwrap();
    let (cert, key) = self_signed(BLOG);
    std::fs::write(secret.join("tls.crt"), &cert).unwrap();
    std::fs::write(secret.join("tls.key"), key).unwrap();

    let gateway = Gateway::following(plane.ca_addr().to_string(), &gateway_key, &credentials)
        .identity(
            IdentitySource::ca(plane.ca_addr().to_string(), ca_dir.join("root-cert.pem"))
                .with_token_file(&token),
        )
        .connect();
    let gateway = match tokio::time::timeout(Duration::from_secs(30), gateway).await {
        Ok(g) => g.unwrap(),
        Err(_) => panic!(
            "no configuration in 30 s: {:?} {:?}",
            plane_status.not_ready(),
            plane_status.stats().last_error
        ),
    };
    let handle = gateway
        .start(GatewayListeners {
            admin: support::admin_listener().await,
            servers: vec![https, http],
        })
        .unwrap();
    tokio::time::timeout(Duration::from_secs(30), handle.ready())
        .await
        .expect("ready in time")
        .unwrap();

    // HTTPS with the Secret's certificate, verified for the blog's name.
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(cert.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(mesh_ca::tls::crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", https_port))
        .await
        .unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(rustls_pki_types::ServerName::try_from(BLOG).unwrap(), tcp)
        .await
        .expect("the Secret's certificate, for blog.example.test");
    // Plain HTTP: redirected to HTTPS, as the Gateway's port 80 server says.
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", http_port))
        .await
        .unwrap();
    let answer = support::exchange(
        &mut tcp,
        format!("GET /wp-login.php HTTP/1.1\r\nhost: {BLOG}\r\nconnection: close\r\n\r\n")
            .as_bytes(),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(support::status_of(&answer), Some(301), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains(&format!(
            "location: https://{BLOG}:{https_port}/wp-login.php"
        )),
        "{answer}"
    );
    handle.shutdown().await;
    plane.shutdown().await;
}
