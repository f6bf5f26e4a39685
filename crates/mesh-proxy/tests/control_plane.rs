#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Sidecars that follow a control plane (`mesh-ca serve --config`, here
//! the same `ControlPlane` in-process) instead of reading a folder: a
//! request crosses a client sidecar and a server sidecar that both got
//! their configuration over xDS; an edit of the control plane's folder
//! changes what the client sidecar does, live; while the control plane is
//! down nothing fails (the last good configuration serves) and after its
//! restart the sidecars follow again; a sidecar that claims another
//! workload never gets a configuration.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mesh_ca::{CertificateAuthority, TokenStore};
use mesh_control::{ConfigServer, ControlPlane, ControlPlaneConfig};
use mesh_proxy::{
    Gateway, GatewayListeners, IdentitySource, InboundListener, OutboundListener, Sidecar,
    SidecarListeners,
};
use support::{Proxy, World, admin_listener, bound, counting_app, files_identity};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

fn mesh(inbound: u16) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: web}}\n\
         spec: {{hosts: [web], ports: [{{number: 80, name: http}}], workloadSelector: {{labels: {{app: web}}}}}}\n---\n\
         apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: web}}\n\
         spec: {{address: 127.0.0.1, ports: {{http: {inbound}}}, labels: {{app: web}}, serviceAccount: web}}\n---\n\
         apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: client}}\n\
         spec: {{address: 127.0.0.1, labels: {{app: client}}, serviceAccount: client}}\n"
    )
}

/// The Gateway `edge` on `port` (plain HTTP) and its route to web.
fn edge(port: u16, fault: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: edge}}\n\
         spec: {{selector: {{istio: ingressgateway}}, servers: [{{port: {{number: {port}, name: http, protocol: HTTP}}, hosts: ['*']}}]}}\n---\n\
         apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: edge}}\n\
         spec: {{hosts: [web], gateways: [edge], http: [{{{fault}route: [{{destination: {{host: web}}}}]}}]}}\n"
    )
}

/// The edge route's fault: every request aborted.
const EDGE_ABORT: &str = "fault: {abort: {httpStatus: 418, percentage: {value: 100}}}, ";

/// Aborts every request to web from sidecars.
const ABORT: &str = "apiVersion: networking.istio.io/v1\nkind: VirtualService\n\
    metadata: {name: web}\nspec:\n  hosts: [web]\n  http:\n  - fault: {abort: {httpStatus: 418, percentage: {value: 100}}}\n    route: [{destination: {host: web}}]\n";

async fn serve(world: &World, listener: TcpListener) -> ControlPlane {
    let ca = Arc::new(CertificateAuthority::open_dir(&world.path("ca")).unwrap());
    let xds = ConfigServer::from_files(&world.path("mesh")).unwrap();
    ControlPlane::start_serving(
        ca,
        TokenStore::new(&world.path("ca")),
        listener,
        ControlPlaneConfig::default(),
        xds,
    )
    .await
    .unwrap()
}

/// A sidecar's listeners: a fresh admin port, these inbound and outbound
/// ones, no HTTP proxy, no capture.
async fn listeners(
    inbound: Vec<InboundListener>,
    outbound: Vec<OutboundListener>,
) -> SidecarListeners {
    SidecarListeners {
        admin: admin_listener().await,
        inbound,
        outbound,
        http_proxy: None,
        capture: None,
    }
}

/// `GET http://web/` through the client sidecar's outbound port: the
/// status code.
async fn get(outbound: SocketAddr) -> u16 {
    let mut tcp = tokio::net::TcpStream::connect(outbound).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    tcp.read_to_end(&mut out).await.unwrap();
    let head = String::from_utf8_lossy(&out);
    head.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"))
}

async fn until_status(outbound: SocketAddr, want: u16, what: &str) {
    for _ in 0..250 {
        if get(outbound).await == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    panic!("timed out waiting until {what}");
}

/// A listener on a loopback port bound to 0, and a second handle on the
/// same socket for the control plane's restart: the port stays held while
/// the first control plane is gone (a connection then waits in the
/// backlog), so nothing else can take it and nothing is re-bound.
fn held_listener() -> (TcpListener, std::net::TcpListener) {
    let std = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    std.set_nonblocking(true).unwrap();
    let again = std.try_clone().unwrap();
    (TcpListener::from_std(std).unwrap(), again)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecars_follow_the_control_plane_and_survive_its_restart() {
    let world = World::new();
    let inbound = bound();
    world.write_config("mesh.yaml", &mesh(inbound.local_addr().port()));
    let (listener, restart) = held_listener();
    let cp_addr = listener.local_addr().unwrap();
    let plane = serve(&world, listener).await;

    // The server side: web's sidecar in front of the app.
    let (app, seen) = counting_app().await;
    let web = Sidecar::following(cp_addr.to_string(), "default", "web")
        .service_account("web")
        .identity(files_identity(&world, "web"))
        .drain_timeout(support::TEARDOWN_DRAIN)
        .connect()
        .await
        .unwrap();
    assert_eq!(web.inbound_ports()[0].addr, inbound.local_addr());
    let web = Proxy::new(
        web.start(
            listeners(
                vec![InboundListener::new(
                    inbound,
                    SocketAddr::from(([127, 0, 0, 1], app)),
                )],
                Vec::new(),
            )
            .await,
        )
        .unwrap(),
    );
    web.ready().await;

    // The client side: a local port for web:80.
    let out = bound();
    let outbound = out.local_addr();
    let client = Sidecar::following(cp_addr.to_string(), "default", "client")
        .service_account("client")
        .identity(files_identity(&world, "client"))
        .drain_timeout(support::TEARDOWN_DRAIN)
        .connect()
        .await
        .unwrap();
    let client = Proxy::new(
        client
            .start(listeners(Vec::new(), vec![OutboundListener::new("web", 80, out)]).await)
            .unwrap(),
    );
    client.ready().await;
    assert_eq!(get(outbound).await, 200);
    assert_eq!(seen.complete.load(std::sync::atomic::Ordering::SeqCst), 1);

    // The gateway follows it too (as the node Gateway/default/edge, with
    // the gateway's default identity).
    let edge_socket = bound();
    let edge_port = edge_socket.local_addr().port();
    world.write_config("edge.yaml", &edge(edge_port, ""));
    let gateway = Gateway::following(cp_addr.to_string(), "edge", world.path("mesh"))
        .identity(files_identity(&world, "edge"))
        .drain_timeout(support::TEARDOWN_DRAIN)
        .connect()
        .await
        .unwrap();
    assert_eq!(gateway.ports(), [edge_port]);
    let gateway = Proxy::new(
        gateway
            .start(GatewayListeners {
                admin: admin_listener().await,
                servers: vec![edge_socket],
            })
            .unwrap(),
    );
    gateway.ready().await;
    let edge_addr = SocketAddr::from(([127, 0, 0, 1], edge_port));
    assert_eq!(get(edge_addr).await, 200);

    // An edit at the control plane changes the client sidecar and the
    // gateway, live.
    world.write_config("abort.yaml", ABORT);
    world.write_config("edge.yaml", &edge(edge_port, EDGE_ABORT));
    until_status(outbound, 418, "the abort rule reaches the client sidecar").await;
    until_status(edge_addr, 418, "the abort rule reaches the gateway").await;
    std::fs::remove_file(world.path("mesh").join("abort.yaml")).unwrap();
    world.write_config("edge.yaml", &edge(edge_port, ""));
    until_status(outbound, 200, "the abort rule's removal reaches it").await;
    until_status(
        edge_addr,
        200,
        "the abort rule's removal reaches the gateway",
    )
    .await;

    // The control plane goes away: nothing fails meanwhile.
    plane.shutdown().await;
    for _ in 0..20 {
        assert_eq!(get(outbound).await, 200, "with the control plane down");
    }
    let metrics = reqwest_like(client.admin_url("/stats/prometheus")).await;
    assert!(metrics.contains("mesh_xds_client_acks_total"), "{metrics}");
    assert!(
        metrics.contains(&format!(
            "\nistio_build{{component=\"proxy\",tag=\"{}\"}} 1\n",
            env!("CARGO_PKG_VERSION")
        )),
        "{metrics}"
    );

    // Back on the same address: the sidecars follow it again.
    let plane = serve(&world, TcpListener::from_std(restart).unwrap()).await;
    world.write_config("abort.yaml", ABORT);
    world.write_config("edge.yaml", &edge(edge_port, EDGE_ABORT));
    until_status(
        outbound,
        418,
        "an edit after the restart reaches the sidecar",
    )
    .await;
    until_status(
        edge_addr,
        418,
        "an edit after the restart reaches the gateway",
    )
    .await;
    gateway.shutdown().await;
    client.shutdown().await;
    web.shutdown().await;
    plane.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_claiming_another_workload_gets_no_configuration() {
    let world = World::new();
    world.write_config("mesh.yaml", &mesh(15080));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let cp_addr = listener.local_addr().unwrap();
    let plane = serve(&world, listener).await;
    // The SVID is web's (the files identity must match what the sidecar
    // is told it is), the workload asked for is client's.
    let claim = Sidecar::following(cp_addr.to_string(), "default", "client")
        .service_account("web")
        .identity(files_identity(&world, "web"))
        .connect();
    assert!(
        tokio::time::timeout(Duration::from_secs(2), claim)
            .await
            .is_err(),
        "a configuration was served to the wrong identity"
    );
    let text = plane.render_metrics();
    assert!(
        text.lines().any(|l| l
            .starts_with("mesh_xds_streams_refused_total{reason=\"wrong_identity\"}")
            && !l.ends_with(" 0")),
        "{text}"
    );

    // And one without its service account is refused before anything is
    // asked of the CA or the control plane.
    let err = Sidecar::following(cp_addr.to_string(), "default", "web")
        .identity(files_identity(&world, "web"))
        .connect()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("service account"), "{err}");

    // The usual start on a control plane: a join token at the control
    // plane's CA (the same address), a requested certificate lifetime, then
    // the configuration with the SVID just issued. Client only: no port in
    // its WorkloadEntry, no inbound listener.
    let token = TokenStore::new(&world.path("ca"))
        .create(&support::id("client"), Duration::from_secs(60))
        .unwrap();
    let client = Sidecar::following(cp_addr.to_string(), "default", "client")
        .service_account("client")
        .identity(
            IdentitySource::ca(cp_addr.to_string(), world.path("ca").join("root-cert.pem"))
                .with_token(token)
                .with_ttl(Duration::from_secs(600)),
        )
        .drain_timeout(support::TEARDOWN_DRAIN)
        .connect()
        .await
        .unwrap();
    let client = Proxy::new(
        client
            .start(listeners(Vec::new(), Vec::new()).await)
            .unwrap(),
    );
    client.ready().await;
    let certs = reqwest_like(client.admin_url("/certs")).await;
    let body = &certs[certs.find('{').unwrap()..];
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    let life = v["not_after_unix"].as_u64().unwrap() - v["not_before_unix"].as_u64().unwrap();
    // 10 minutes asked, and the CA's 60 s of backdating.
    assert_eq!(life, 600 + 60, "{v}");
    assert_eq!(v["source"], "mesh-ca");
    client.shutdown().await;
    plane.shutdown().await;
}

/// A plain HTTP GET of `url` (`http://127.0.0.1:PORT/path`): the body.
async fn reqwest_like(url: String) -> String {
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_once('/').unwrap();
    let mut tcp = tokio::net::TcpStream::connect(host).await.unwrap();
    tcp.write_all(
        format!("GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    tcp.read_to_string(&mut out).await.unwrap();
    out
}

/// web's policy: `/private` denied to everyone.
const DENY_PRIVATE: &str = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
    metadata: {name: web-private}\nspec:\n  selector: {matchLabels: {app: web}}\n  action: DENY\n  rules:\n  - to: [{operation: {paths: [/private]}}]\n";

/// A rule after a catch-all (check's MESH0117): harmless, and found.
const SHADOWED: &str = "apiVersion: networking.istio.io/v1\nkind: VirtualService\n\
    metadata: {name: web}\nspec:\n  hosts: [web]\n  http:\n  - route: [{destination: {host: web}}]\n  - match: [{uri: {prefix: /never}}]\n    route: [{destination: {host: web}}]\n";

/// `GET path` through the outbound port: the status.
async fn get_path(outbound: SocketAddr, path: &str) -> u16 {
    let mut tcp = tokio::net::TcpStream::connect(outbound).await.unwrap();
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    tcp.read_to_end(&mut out).await.unwrap();
    String::from_utf8_lossy(&out)
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mesh_page_shows_each_edge_its_rate_mtls_identities_denials_and_problems() {
    let world = World::new();
    let inbound = bound();
    world.write_config("mesh.yaml", &mesh(inbound.local_addr().port()));
    world.write_config("deny.yaml", DENY_PRIVATE);
    world.write_config("vs.yaml", SHADOWED);
    let ca = Arc::new(CertificateAuthority::open_dir(&world.path("ca")).unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let cp_addr = listener.local_addr().unwrap();
    let plane = ControlPlane::start_serving(
        ca,
        TokenStore::new(&world.path("ca")),
        listener,
        ControlPlaneConfig {
            page_interval: Duration::from_millis(200),
            ..ControlPlaneConfig::default()
        },
        ConfigServer::from_files(&world.path("mesh")).unwrap(),
    )
    .await
    .unwrap()
    .with_metrics(TcpListener::bind("127.0.0.1:0").await.unwrap())
    .unwrap();
    let page = format!("http://{}", plane.metrics_addr().unwrap());

    let (app, _seen) = counting_app().await;
    let web_admin = admin_listener().await;
    let web = Sidecar::following(cp_addr.to_string(), "default", "web")
        .service_account("web")
        .identity(files_identity(&world, "web"))
        .metrics_port(web_admin.local_addr().unwrap().port())
        .drain_timeout(support::TEARDOWN_DRAIN)
        .connect()
        .await
        .unwrap();
    let web = Proxy::new(
        web.start(SidecarListeners {
            admin: web_admin,
            inbound: vec![InboundListener::new(
                inbound,
                SocketAddr::from(([127, 0, 0, 1], app)),
            )],
            outbound: Vec::new(),
            http_proxy: None,
            capture: None,
        })
        .unwrap(),
    );
    web.ready().await;
    let out = bound();
    let outbound = out.local_addr();
    let client_admin = admin_listener().await;
    let client = Sidecar::following(cp_addr.to_string(), "default", "client")
        .service_account("client")
        .identity(files_identity(&world, "client"))
        .metrics_port(client_admin.local_addr().unwrap().port())
        .drain_timeout(support::TEARDOWN_DRAIN)
        .connect()
        .await
        .unwrap();
    let client = Proxy::new(
        client
            .start(SidecarListeners {
                admin: client_admin,
                inbound: Vec::new(),
                outbound: vec![OutboundListener::new("web", 80, out)],
                http_proxy: None,
                capture: None,
            })
            .unwrap(),
    );
    client.ready().await;

    // Traffic while the page reads the proxies: allowed and denied.
    let mut data = serde_json::Value::Null;
    let mut found = false;
    for _ in 0..150 {
        for _ in 0..5 {
            assert_eq!(get_path(outbound, "/").await, 200);
        }
        assert_eq!(get_path(outbound, "/private").await, 403);
        let body = reqwest_like(format!("{page}/mesh/data")).await;
        data = serde_json::from_str(body.split_once("\r\n\r\n").unwrap().1).unwrap();
        let edge = data["edges"].as_array().unwrap().iter().find(|e| {
            e["source"] == "default/client"
                && e["destination"] == "default/web"
                && e["protocol"] == "http"
        });
        if edge.is_some_and(|e| e["rps"].as_f64() > Some(0.0) && e["denied"].as_f64() > Some(0.0)) {
            found = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(found, "no live edge client -> web with denials: {data:#}");
    let edge = data["edges"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["source"] == "default/client" && e["destination"] == "default/web")
        .unwrap();
    // Reported by web's sidecar: the connection's mTLS and both verified
    // identities; a denied request counts against the success rate.
    assert_eq!(edge["reporter"], "destination", "{edge:#}");
    assert_eq!(edge["mtls"], true, "{edge:#}");
    assert_eq!(
        edge["source_principals"],
        serde_json::json!(["spiffe://cluster.local/ns/default/sa/client"]),
        "{edge:#}"
    );
    assert_eq!(
        edge["destination_principals"],
        serde_json::json!(["spiffe://cluster.local/ns/default/sa/web"]),
        "{edge:#}"
    );
    assert!(edge["success_rate"].as_f64().unwrap() < 1.0, "{edge:#}");
    assert!(edge["p99_ms"].as_f64().is_some(), "{edge:#}");
    assert_eq!(
        edge["explain"], "/debug/explain?from=default/client&to=web.default.svc.cluster.local",
        "{edge:#}"
    );
    // Both proxies were read, at the address their streams came from.
    for (id, port) in [("default/web", web.admin), ("default/client", client.admin)] {
        let n = data["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["id"] == id)
            .unwrap_or_else(|| panic!("no node {id}: {data:#}"));
        assert_eq!(n["metrics"], format!("127.0.0.1:{port}"), "{n:#}");
        assert!(n["error"].is_null(), "{n:#}");
    }
    // The split of web's traffic (one version here) and check's finding.
    assert!(
        data["splits"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["service"] == "web.default.svc.cluster.local"),
        "{data:#}"
    );
    assert!(
        data["problems"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["code"] == "MESH0117"),
        "{data:#}"
    );
    // The explain link answers.
    let explain = reqwest_like(format!("{page}{}", edge["explain"].as_str().unwrap())).await;
    assert!(explain.starts_with("HTTP/1.1 200"), "{explain}");
    // And the page itself: served by the mesh, no framework fetched.
    let html = reqwest_like(format!("{page}/mesh")).await;
    assert!(html.starts_with("HTTP/1.1 200"), "{html}");
    assert!(html.contains("content-type: text/html"), "{html}");
    assert!(html.contains("fetch(\"/mesh/data\""), "{html}");
    assert!(
        !html.contains("src=\"http"),
        "the page loads nothing from elsewhere"
    );

    // A proxy whose stream ends leaves the page.
    client.shutdown().await;
    let mut gone = false;
    for _ in 0..100 {
        let body = reqwest_like(format!("{page}/mesh/data")).await;
        let d: serde_json::Value =
            serde_json::from_str(body.split_once("\r\n\r\n").unwrap().1).unwrap();
        if !d["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["id"] == "default/client" && !n["identity"].is_null())
        {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gone, "the stopped proxy stays on the page");
    web.shutdown().await;
    plane.shutdown().await;
}
