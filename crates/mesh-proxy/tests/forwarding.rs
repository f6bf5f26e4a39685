//! What the sidecars forward, and how. WebSocket through the mesh,
//! between a real client and a real server (Python's `websockets`,
//! installed by `.ci/run`): the client's sidecar (outbound) and the
//! server's (inbound, mTLS between them), as Istio's sidecars pass
//! upgrades. The rule beside it: the hop-by-hop headers of a request, and
//! those its `Connection` names, never reach the app. And a Sidecar's
//! `ingress` listener: the port served and the app behind it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::BufRead as _;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use mesh_proxy::{InboundListener, OutboundListener, Sidecar, SidecarListeners};
use mesh_tower::server::ServerSettings;
use support::*;
use tokio::io::AsyncWriteExt;

/// An echo server: every message comes back as it was sent; on `/headers`
/// the handshake's request headers are sent as one JSON message first.
/// Prints its port, then serves until killed.
const SERVER: &str = r#"
import asyncio, json, logging, sys
from websockets.asyncio.server import serve

# A refused handshake (the test's plain GET) is expected, not news.
logging.getLogger("websockets.server").setLevel(logging.CRITICAL)

async def handler(ws):
    if ws.request.path == "/headers":
        await ws.send(json.dumps({k.lower(): v for k, v in ws.request.headers.raw_items()}))
    async for message in ws:
        await ws.send(message)

async def main():
    async with serve(handler, "127.0.0.1", 0, max_size=None) as server:
        print(server.sockets[0].getsockname()[1], flush=True)
        await asyncio.get_running_loop().create_future()

asyncio.run(main())
"#;

/// Connects to argv[1] (at argv[2], `host:port`, when given), exchanges text, a 1 MiB binary message and 200
/// small ones, and prints one JSON line: what came back, or the handshake's
/// refusal.
const CLIENT: &str = r#"
import asyncio, json, os, sys
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

async def main(url, at):
    where = {}
    if at:
        host, port = at.rsplit(":", 1)
        where = {"host": host, "port": int(port)}
    try:
        async with connect(url, max_size=None, open_timeout=10, **where) as ws:
            out = {}
            if url.endswith("/headers"):
                out["headers"] = json.loads(await ws.recv())
            await ws.send("hello")
            out["text"] = await ws.recv()
            blob = os.urandom(1 << 20)
            await ws.send(blob)
            out["binary_intact"] = (await ws.recv()) == blob
            for i in range(200):
                await ws.send(f"m{i}")
            out["in_order"] = all([(await ws.recv()) == f"m{i}" for i in range(200)])
            await ws.close()
            out["close_code"] = ws.close_code
            print(json.dumps(out), flush=True)
    except InvalidStatus as e:
        print(json.dumps({"refused": e.response.status_code}), flush=True)

asyncio.run(asyncio.wait_for(main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None), 50))
"#;

/// The echo server process; killed on drop.
struct EchoServer(std::process::Child);

impl Drop for EchoServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The echo server, started: it and its port.
async fn echo_server() -> (EchoServer, u16) {
    let mut child = Command::new("python3")
        .args(["-c", SERVER])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3 runs");
    let stdout = child.stdout.take().unwrap();
    let server = EchoServer(child);
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .map(|_| line)
    })
    .await
    .unwrap()
    .unwrap();
    let port = line.trim().parse().unwrap_or_else(|_| {
        panic!("the echo server printed {line:?}, not its port (is Python's websockets installed?)")
    });
    (server, port)
}

/// Runs the client against `url` (it gives up by itself after 50 s): its
/// JSON line.
async fn client(url: &str) -> serde_json::Value {
    client_at(url, None).await
}

/// [`client`], connecting to `at` whatever the URL's host.
async fn client_at(url: &str, at: Option<SocketAddr>) -> serde_json::Value {
    let mut args = vec!["-c".to_owned(), CLIENT.to_owned(), url.to_owned()];
    args.extend(at.map(|a| a.to_string()));
    let out = tokio::task::spawn_blocking(move || Command::new("python3").args(&args).output())
        .await
        .unwrap()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "client output {stdout:?} ({e}); stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// `web`'s sidecar in front of the app on `app_port`, and `client`'s with
/// an outbound port for `web:80`; `extra` is more configuration. Returns
/// the outbound address and both proxies.
async fn pair(world: &World, app_port: u16, extra: &str) -> (SocketAddr, Proxy, Proxy) {
    let inbound = bound();
    world.write_config(
        "mesh.yaml",
        &format!(
            "{}---\n{extra}",
            mesh_config(inbound.local_addr().port(), "STRICT")
        ),
    );
    let web = start_sidecar(
        world,
        inbound,
        app_port,
        files_identity(world, "web"),
        ServerSettings::default(),
        TEARDOWN_DRAIN,
    )
    .await;
    let out = bound();
    let outbound = out.local_addr();
    let client = client_sidecar(world, vec![OutboundListener::new("web", 80, out)]).await;
    web.ready().await;
    client.ready().await;
    (outbound, web, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_crosses_the_sidecar_pair_both_ways_intact() {
    let world = World::new();
    let (_server, app) = echo_server().await;
    let (outbound, web, client_proxy) = pair(&world, app, "").await;

    let got = client(&format!("ws://{outbound}/headers")).await;
    assert_eq!(got["text"], "hello", "{got}");
    assert_eq!(got["binary_intact"], true, "{got}");
    assert_eq!(got["in_order"], true, "{got}");
    assert_eq!(got["close_code"], 1000, "{got}");
    // The server's handshake came over mTLS from the client's sidecar: it
    // names the caller's verified identity, and the upgrade as sent.
    let h = &got["headers"];
    assert_eq!(
        h["x-forwarded-client-cert"], "URI=spiffe://cluster.local/ns/default/sa/client",
        "{h}"
    );
    assert_eq!(h["upgrade"], "websocket", "{h}");
    assert_eq!(h["connection"], "upgrade", "{h}");

    // The handshake is a request like any other in the telemetry: a 101.
    let (status, metrics) = http_get(&web.admin_url("/stats/prometheus")).await.unwrap();
    assert_eq!(status, 200);
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("istio_requests_total{")
                && l.contains("response_code=\"101\"")
                && l.contains("reporter=\"destination\"")),
        "{metrics}"
    );
    client_proxy.shutdown().await;
    web.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_is_authorized_like_any_request_and_a_route_can_refuse_upgrades() {
    let world = World::new();
    let (_server, app) = echo_server().await;
    let extra = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
                 metadata: {name: no-admin}\n\
                 spec: {selector: {matchLabels: {app: web}}, action: DENY, rules: [{to: [{operation: {paths: [/admin]}}]}]}\n\
                 ---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: web}\n\
                 spec: {hosts: [web], http: [\
                 {match: [{uri: {prefix: /plain}}], websocketUpgrade: false, route: [{destination: {host: web}}]},\
                 {route: [{destination: {host: web}}]}]}\n";
    let (outbound, web, client_proxy) = pair(&world, app, extra).await;

    // Denied before any upgrade: the handshake gets the policy's 403.
    assert_eq!(
        client(&format!("ws://{outbound}/admin")).await,
        serde_json::json!({"refused": 403})
    );
    // `websocketUpgrade: false`: the request reaches the server as a plain
    // GET, which a WebSocket server answers 426 Upgrade Required.
    assert_eq!(
        client(&format!("ws://{outbound}/plain")).await,
        serde_json::json!({"refused": 426})
    );
    // Every other route upgrades.
    let got = client(&format!("ws://{outbound}/chat")).await;
    assert_eq!(got["text"], "hello", "{got}");
    client_proxy.shutdown().await;
    web.shutdown().await;
}

#[cfg(feature = "gateway")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_crosses_the_gateway_to_a_mesh_workload() {
    let world = World::new();
    let (_server, app) = echo_server().await;
    let edge = bound();
    let edge_addr = edge.local_addr();
    let extra = format!(
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: edge}}\n\
         spec: {{selector: {{istio: ingressgateway}}, servers: [{{port: {{number: {}, name: http, protocol: HTTP}}, hosts: [chat.example.test]}}]}}\n\
         ---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: edge}}\n\
         spec: {{hosts: [chat.example.test], gateways: [edge], http: [{{route: [{{destination: {{host: web}}}}]}}]}}\n",
        edge_addr.port()
    );
    let (_outbound, web, client_proxy) = pair(&world, app, &extra).await;
    let gateway = ready_gateway(&world, vec![edge]).await;
    // The URL names the gateway's host (the handshake's `Host`); the
    // connection goes to the gateway's address.
    let got = client_at(
        &format!("ws://chat.example.test:{}/headers", edge_addr.port()),
        Some(edge_addr),
    )
    .await;
    assert_eq!(got["text"], "hello", "{got}");
    assert_eq!(got["binary_intact"], true, "{got}");
    assert_eq!(
        got["headers"]["x-forwarded-client-cert"], "URI=spiffe://cluster.local/ns/default/sa/edge",
        "{got}"
    );
    gateway.shutdown().await;
    client_proxy.shutdown().await;
    web.shutdown().await;
}

/// A raw HTTP/1.1 request through the client's sidecar, read until the
/// counting app's whole answer (`ok 0`) or 10 s; the app's view of it
/// comes back in `AppSeen`.
async fn raw(outbound: SocketAddr, head: &str) -> String {
    use tokio::io::AsyncReadExt as _;
    let mut tcp = tokio::net::TcpStream::connect(outbound).await.unwrap();
    tcp.write_all(head.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !out.ends_with(b"ok 0") {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => out.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_and_those_connection_names_never_reach_the_app() {
    let world = World::new();
    let (app, seen) = counting_app().await;
    let (outbound, web, client_proxy) = pair(&world, app, "").await;

    // The family: `Connection` itself, the headers it names (in any case,
    // in a second `Connection` header, with spaces), `Keep-Alive`,
    // `Proxy-Connection`, a `TE` other than trailers, and an `Upgrade`
    // that is no upgrade (no `Connection: upgrade`).
    let cases: [(&str, &[&str]); 6] = [
        (
            "Connection: keep-alive, X-Role\r\nx-role: admin\r\nKeep-Alive: timeout=5\r\n",
            &["connection", "keep-alive", "x-role"],
        ),
        (
            "Connection: close\r\nConnection:  x-user , x-tenant\r\nx-user: root\r\nx-tenant: other\r\n",
            &["connection", "x-user", "x-tenant"],
        ),
        (
            "Proxy-Connection: keep-alive\r\nTE: gzip\r\n",
            &["proxy-connection", "te"],
        ),
        ("Upgrade: websocket\r\n", &["upgrade"]),
        // Only WebSocket upgrades: h2c (request smuggling's favourite)
        // arrives as the plain request it also is.
        (
            "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n",
            &["connection", "upgrade", "http2-settings"],
        ),
        // Naming the mesh's own header does not make it vanish: the app
        // still learns the verified caller (and never a forged value).
        (
            "Connection: x-forwarded-client-cert\r\nx-forwarded-client-cert: URI=spiffe://cluster.local/ns/default/sa/admin\r\n",
            &["connection"],
        ),
    ];
    for (i, (headers, gone)) in cases.iter().enumerate() {
        let answer = raw(
            outbound,
            &format!("GET /case{i} HTTP/1.1\r\nHost: web\r\n{headers}\r\n"),
        )
        .await;
        assert_eq!(status_of(&answer), Some(200), "case {i}: {answer}");
        let seen_headers = seen.headers().pop().unwrap();
        assert_eq!(seen.paths().last().unwrap(), &format!("/case{i}"));
        for name in *gone {
            assert!(
                !seen_headers.contains_key(*name),
                "case {i}: the app saw {name}: {seen_headers:?}"
            );
        }
        assert_eq!(
            seen_headers["x-forwarded-client-cert"],
            "URI=spiffe://cluster.local/ns/default/sa/client",
            "case {i}"
        );
    }
    client_proxy.shutdown().await;
    web.shutdown().await;
}

/// What the mesh adds to a request (a VirtualService's header changes)
/// cannot be removed by naming it in `Connection`: the outbound sidecar
/// strips where the request enters, before it adds anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cannot_remove_a_header_the_mesh_sets() {
    let world = World::new();
    let (app, seen) = counting_app().await;
    let extra = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: web}\n\
                 spec: {hosts: [web], http: [{route: [{destination: {host: web}}], headers: {request: {set: {x-tenant: blue}}}}]}\n";
    let (outbound, web, client_proxy) = pair(&world, app, extra).await;
    let answer = raw(
        outbound,
        "GET /t HTTP/1.1\r\nHost: web\r\nConnection: x-tenant\r\nx-tenant: red\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&answer), Some(200), "{answer}");
    let h = seen.headers().pop().unwrap();
    assert_eq!(h["x-tenant"], "blue", "{h:?}");
    assert!(!h.contains_key("connection"), "{h:?}");
    client_proxy.shutdown().await;
    web.shutdown().await;
}

/// A Sidecar's `ingress` listener names the inbound port and the app
/// behind it (`defaultEndpoint`, here on another port than the one the
/// mesh dials): the sidecar serves that port, forwards there, and the
/// WorkloadEntry's own ports are not served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_ingress_listener_names_the_port_and_the_app_behind_it() {
    let world = World::new();
    let (app, seen) = counting_app().await;
    let inbound = bound();
    let port = inbound.local_addr().port();
    world.write_config(
        "mesh.yaml",
        &format!(
            "{}---\napiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: web}}\n\
             spec:\n  workloadSelector: {{labels: {{app: web}}}}\n  ingress:\n\
             \x20 - port: {{number: {port}, protocol: HTTP, name: http-local}}\n    defaultEndpoint: 127.0.0.1:{app}\n    captureMode: IPTABLES\n",
            mesh_config(port, "STRICT")
        ),
    );
    let sidecar = Sidecar::builder(world.path("mesh"), "default", "web")
        .identity(files_identity(&world, "web"))
        .drain_timeout(TEARDOWN_DRAIN)
        .build()
        .unwrap();
    let ports = sidecar.inbound_ports();
    assert_eq!(ports.len(), 1, "{ports:?}");
    assert_eq!(ports[0].name.as_deref(), Some("http-local"));
    assert_eq!(ports[0].addr.port(), port);
    assert_eq!(ports[0].app, Some(SocketAddr::from(([127, 0, 0, 1], app))));
    let web = Proxy::new(
        sidecar
            .start(SidecarListeners {
                admin: admin_listener().await,
                inbound: vec![InboundListener::new(inbound, ports[0].app.unwrap())],
                outbound: Vec::new(),
                http_proxy: None,
                capture: None,
            })
            .unwrap(),
    );
    web.ready().await;
    let out = bound();
    let outbound = out.local_addr();
    let client = client_sidecar(&world, vec![OutboundListener::new("web", 80, out)]).await;
    client.ready().await;
    let answer = raw(outbound, "GET /via-ingress HTTP/1.1\r\nHost: web\r\n\r\n").await;
    assert_eq!(status_of(&answer), Some(200), "{answer}");
    assert_eq!(seen.paths(), ["/via-ingress"]);
    client.shutdown().await;
    web.shutdown().await;
}

/// Endpoints on Unix domain sockets (Istio's `unix:///path` and
/// `unix://@name`): an HTTP service whose app listens on a socket file,
/// and an opaque TCP one on an abstract socket, both reached through the
/// client's sidecar by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_on_unix_sockets_are_dialled_for_http_and_tcp() {
    use tokio::io::AsyncReadExt as _;
    let world = World::new();
    // The HTTP app, on a socket file.
    let sock = world.path("app.sock");
    let listener = tokio::net::UnixListener::bind(&sock).unwrap();
    tokio::spawn(async move {
        loop {
            let (io, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |req: http::Request<hyper::body::Incoming>| async move {
                        let body = format!("uds app saw {}", req.uri().path());
                        Ok::<_, std::convert::Infallible>(http::Response::new(
                            http_body_util::Full::new(bytes::Bytes::from(body)),
                        ))
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(io), svc)
                .await;
            });
        }
    });
    // The TCP one, on an abstract socket: writes its name and closes.
    let name = format!("mesh-test-{}", std::process::id());
    let abstract_listener = {
        use std::os::linux::net::SocketAddrExt as _;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let l = std::os::unix::net::UnixListener::bind_addr(&addr).unwrap();
        l.set_nonblocking(true).unwrap();
        tokio::net::UnixListener::from_std(l).unwrap()
    };
    tokio::spawn(async move {
        loop {
            let (mut io, _) = abstract_listener.accept().await.unwrap();
            let _ = tokio::io::AsyncWriteExt::write_all(&mut io, b"abstract echo").await;
        }
    });
    world.write_config(
        "mesh.yaml",
        &format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: uds-http}}\n\
             spec: {{hosts: [example.unix.local], location: MESH_EXTERNAL, resolution: STATIC, ports: [{{number: 8001, name: http, protocol: HTTP}}], endpoints: [{{address: 'unix://{}'}}]}}\n---\n\
             apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: uds-tcp}}\n\
             spec: {{hosts: [echo.unix.local], location: MESH_EXTERNAL, resolution: STATIC, ports: [{{number: 9000, name: tcp, protocol: TCP}}], endpoints: [{{address: 'unix://@{name}'}}]}}\n---\n\
             apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: uds-internal}}\n\
             spec: {{hosts: [internal.unix.local], resolution: STATIC, ports: [{{number: 8002, name: http, protocol: HTTP}}], endpoints: [{{address: 'unix://{}'}}]}}\n---\n\
             apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: client}}\n\
             spec: {{address: 127.0.0.1, labels: {{app: client}}, serviceAccount: client}}\n",
            sock.display(),
            sock.display()
        ),
    );
    let (http_out, tcp_out, internal_out) = (bound(), bound(), bound());
    let internal_addr = internal_out.local_addr();
    let (http_addr, tcp_addr) = (http_out.local_addr(), tcp_out.local_addr());
    let client = client_sidecar(
        &world,
        vec![
            OutboundListener::new("example.unix.local", 8001, http_out),
            OutboundListener::new("echo.unix.local", 9000, tcp_out),
            OutboundListener::new("internal.unix.local", 8002, internal_out),
        ],
    )
    .await;
    client.ready().await;
    for path in ["/one", "/two"] {
        let (status, body) = http_get(&format!("http://{http_addr}{path}"))
            .await
            .unwrap();
        assert_eq!(status, 200, "{body}");
        assert_eq!(body, format!("uds app saw {path}"));
    }
    let mut tcp = tokio::net::TcpStream::connect(tcp_addr).await.unwrap();
    let mut got = String::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_string(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, "abstract echo");
    // A mesh-internal entry would need mesh mTLS, which a socket file's
    // peer cannot prove: refused, never sent in the clear.
    let answer = raw_status(internal_addr).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("Unix socket"), "{answer}");
    client.shutdown().await;
}

/// `GET /` through an outbound port: the head of the answer and its
/// `x-mesh-reason`.
async fn raw_status(outbound: SocketAddr) -> String {
    let mut tcp = tokio::net::TcpStream::connect(outbound).await.unwrap();
    exchange(
        &mut tcp,
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(10),
    )
    .await
}
