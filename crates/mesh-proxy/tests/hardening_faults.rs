//! Faults around the sidecar (started in the test's runtime): an app that
//! dies mid-answer or answers garbage, a CA that is down when the sidecar
//! starts or goes down while it runs, and invalid configuration pushed
//! while requests are flowing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use mesh_control::{ControlPlane, ControlPlaneConfig};
use mesh_tower::server::ServerSettings;
use support::{
    Proxy, TEARDOWN_DRAIN, World, bound, counting_app, files_identity, http_get, mesh_config,
    ready_sidecar, start_sidecar,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An app that reads one request head and answers with `reply`, then
/// closes the connection (the app crashing mid-answer).
async fn scripted_app(reply: &'static [u8]) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (mut tcp, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = tcp.write_all(reply).await;
                let _ = tcp.flush().await;
                // Dropping the socket here is the crash.
            });
        }
    });
    port
}

/// Sends `GET /` through the sidecar over mTLS (h2 or HTTP/1.1); returns
/// the status and the body, or the body's error. A request that fails
/// before its response head (an h2 stream reset that overtook the
/// HEADERS frame) is reported as status 0 with the error.
async fn get(
    creds: &mesh_ca::CredentialStore,
    inbound: u16,
    h2: bool,
) -> (u16, Result<Bytes, String>) {
    let req = http::Request::get("http://web/")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = match support::send_mtls(creds, inbound, h2, req).await {
        Ok(resp) => resp,
        Err(e) => return (0, Err(format!("{e:?}"))),
    };
    let status = resp.status().as_u16();
    let body = tokio::time::timeout(Duration::from_secs(5), resp.into_body().collect())
        .await
        .map_err(|_| "the body never ended".to_owned())
        .and_then(|r| r.map(|c| c.to_bytes()).map_err(|e| format!("{e:?}")));
    (status, body)
}

async fn start_with_app(app: u16) -> (World, Proxy, u16) {
    let world = World::new();
    let (proxy, inbound) = ready_sidecar(&world, app, "STRICT", ServerSettings::default()).await;
    (world, proxy, inbound)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_dying_after_its_headers_is_never_a_complete_response() {
    let cases: [(&str, &'static [u8]); 2] = [
        (
            "Content-Length longer than what was sent",
            b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial",
        ),
        (
            "chunked, cut inside a chunk",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n20\r\npartial",
        ),
    ];
    for (what, reply) in cases {
        let app = scripted_app(reply).await;
        let (world, proxy, inbound) = start_with_app(app).await;
        let creds = world.creds("client");
        for h2 in [false, true] {
            let (status, body) = get(&creds, inbound, h2).await;
            // The headers were already on their way: 200 may arrive, but the
            // body must end in an error, never a clean short end. Over h2
            // the stream reset may also overtake the head: an error too.
            if status == 0 {
                assert!(
                    h2 && body.as_ref().is_err_and(|e| e.contains("Reset")),
                    "{what} (h2: {h2}): the request failed before its head: {body:?}"
                );
            } else if status == 200 {
                assert!(
                    body.is_err(),
                    "{what} (h2: {h2}): a truncated body passed off as whole: {body:?}"
                );
            } else {
                assert!(status >= 500, "{what} (h2: {h2}): {status}");
            }
        }
        proxy.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_dying_before_its_headers_or_answering_garbage_is_502() {
    let cases: [(&str, &'static [u8]); 3] = [
        ("closes without a word", b""),
        ("answers garbage", b"HELLO I AM NOT HTTP\r\n\r\n"),
        ("answers half a status line", b"HTTP/1.1 2"),
    ];
    for (what, reply) in cases {
        let app = scripted_app(reply).await;
        let (world, proxy, inbound) = start_with_app(app).await;
        let creds = world.creds("client");
        for h2 in [false, true] {
            let (status, _) = get(&creds, inbound, h2).await;
            assert_eq!(status, 502, "{what} (h2: {h2})");
        }
        proxy.shutdown().await;
    }
}

/// Starts the sidecar for `web` with its identity from mesh-ca at `ca` (a
/// join token for the first certificate, renewals over mTLS).
async fn sidecar_with_ca(
    world: &World,
    inbound: mesh_proxy::BoundSocket,
    app: u16,
    ca: std::net::SocketAddr,
) -> Proxy {
    let token = mesh_ca::TokenStore::new(&world.path("ca"))
        .create(&support::id("web"), Duration::from_secs(600))
        .unwrap();
    let identity = mesh_proxy::IdentitySource::ca(ca.to_string(), world.path("ca/root-cert.pem"))
        .with_token(token);
    start_sidecar(
        world,
        inbound,
        app,
        identity,
        ServerSettings::default(),
        TEARDOWN_DRAIN,
    )
    .await
}

/// A socket for the CA's address, bound with `SO_REUSEPORT` so that the
/// address stays the test's while the CA is down (one such socket is kept
/// bound, never listened on) and a CA can listen on it again: nothing else
/// can take the port between. Connections to it are refused while no CA
/// listens.
fn ca_socket(addr: std::net::SocketAddr) -> tokio::net::TcpSocket {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_reuseport(true).unwrap();
    socket.bind(addr).unwrap();
    socket
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_ca_down_at_start_the_sidecar_serves_nothing_until_it_is_back() {
    let world = World::new();
    let inbound = bound();
    let port = inbound.local_addr().port();
    world.write_config("mesh.yaml", &mesh_config(port, "STRICT"));
    let (app, seen) = counting_app().await;
    // The CA's address: bound, not listened on, so the sidecar is refused.
    let ca_sock = ca_socket(([127, 0, 0, 1], 0).into());
    let ca_addr = ca_sock.local_addr().unwrap();
    let proxy = sidecar_with_ca(&world, inbound, app, ca_addr).await;
    // Not ready, and the inbound port takes no connection, for a while.
    let creds = world.creds("client");
    let since = Instant::now();
    while since.elapsed() < Duration::from_secs(2) {
        let (status, _) = http_get(&proxy.admin_url("/ready")).await.unwrap();
        assert_eq!(status, 503, "ready without an identity");
        assert!(
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_err(),
            "the inbound port accepts connections without an identity"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Still starting: it has not given up.
    assert!(
        tokio::time::timeout(Duration::ZERO, proxy.handle.ready())
            .await
            .is_err(),
        "the sidecar gave up"
    );

    // The CA comes up on its address: ready without a restart, and serving.
    let ca = Arc::new(mesh_ca::CertificateAuthority::open_dir(&world.path("ca")).unwrap());
    let server = ControlPlane::start(
        ca,
        mesh_ca::TokenStore::new(&world.path("ca")),
        ca_sock.listen(1024).unwrap(),
        ControlPlaneConfig::default(),
    )
    .await
    .unwrap();
    proxy.ready().await;
    let (status, body) = get(&creds, port, true).await;
    assert_eq!(status, 200);
    assert_eq!(body.unwrap(), "ok 0");
    assert_eq!(seen.heads(), 1);
    server.shutdown().await;
    proxy.shutdown().await;
}

/// A CA listening on `addr` that signs 8-second leaves (renewed at about
/// 4 s).
async fn short_lived_ca(world: &World, addr: std::net::SocketAddr) -> ControlPlane {
    let ca = mesh_ca::CertificateAuthority::open_dir(&world.path("ca"))
        .unwrap()
        .with_policy(mesh_ca::LeafPolicy {
            default_ttl: Duration::from_secs(8),
            max_ttl: Duration::from_secs(8),
            backdate: Duration::ZERO,
        });
    ControlPlane::start(
        Arc::new(ca),
        mesh_ca::TokenStore::new(&world.path("ca")),
        ca_socket(addr).listen(1024).unwrap(),
        ControlPlaneConfig::default(),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_ca_down_at_runtime_the_sidecar_keeps_its_valid_certificate() {
    let world = World::new();
    let inbound = bound();
    let port = inbound.local_addr().port();
    world.write_config("mesh.yaml", &mesh_config(port, "STRICT"));
    let (app, _seen) = counting_app().await;
    // Keeps the CA's address while the CA is down.
    let reserved = ca_socket(([127, 0, 0, 1], 0).into());
    let ca_addr = reserved.local_addr().unwrap();
    let server = short_lived_ca(&world, ca_addr).await;
    let proxy = sidecar_with_ca(&world, inbound, app, ca_addr).await;
    proxy.ready().await;
    let creds = world.creds("client");
    let metrics_url = proxy.admin_url("/stats/prometheus");
    let stat = |name: &'static str| {
        let url = metrics_url.clone();
        async move {
            let (_, m) = http_get(&url).await.unwrap();
            m.lines()
                .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
                .map(|v| v.trim().parse::<f64>().unwrap() as u64)
                .unwrap()
        }
    };
    // Renewals happen on the certificate's clock (half its life), seen
    // only in the counters: watched until they move.
    let wait_for = |what: &'static str, name: &'static str, above: u64| {
        let stat = &stat;
        async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let v = stat(name).await;
                if v > above {
                    return v;
                }
                assert!(Instant::now() < deadline, "{what}: {name} stayed at {v}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    // Renewed over mTLS to the CA at about half-life.
    let renewed = wait_for("no renewal", "mesh_cert_renewals_total", 1).await;

    // The CA goes away: the renewal fails, the valid certificate serves on.
    server.shutdown().await;
    let failures = wait_for("no failed renewal", "mesh_cert_renewal_failures_total", 0).await;
    assert!(failures > 0);
    let (status, body) = get(&creds, port, true).await;
    assert_eq!((status, body.unwrap()), (200, Bytes::from("ok 0")));
    // It has not given up: still ready.
    let (status, _) = http_get(&proxy.admin_url("/ready")).await.unwrap();
    assert_eq!(status, 200, "the sidecar gave up");

    // The CA is back on its address: renewals resume, without a restart.
    let server = short_lived_ca(&world, ca_addr).await;
    let renewed_again = wait_for(
        "no renewal after the CA came back",
        "mesh_cert_renewals_total",
        stat("mesh_cert_renewals_total").await,
    )
    .await;
    assert!(renewed_again > renewed);
    let (status, _) = get(&creds, port, false).await;
    assert_eq!(status, 200);
    server.shutdown().await;
    drop(reserved);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_config_pushed_under_load_fails_no_request() {
    let world = World::new();
    let socket = bound();
    let inbound = socket.local_addr().port();
    let good = mesh_config(inbound, "STRICT");
    world.write_config("mesh.yaml", &good);
    let (app, seen) = counting_app().await;
    let proxy = start_sidecar(
        &world,
        socket,
        app,
        files_identity(&world, "web"),
        ServerSettings::default(),
        TEARDOWN_DRAIN,
    )
    .await;
    proxy.ready().await;
    let creds = world.creds("client");

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut load = Vec::new();
    for worker in 0..3 {
        let (creds, stop, ok, failed) = (creds.clone(), stop.clone(), ok.clone(), failed.clone());
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                // Worker 0 opens a connection per request (the mode and the
                // workload are read per connection); the others reuse one.
                let (status, body) = get(&creds, inbound, worker != 0).await;
                if status == 200 && body.is_ok() {
                    ok.fetch_add(1, Ordering::SeqCst);
                } else {
                    failed.fetch_add(1, Ordering::SeqCst);
                }
            }
        }));
    }

    let rejections = || async {
        let (_, m) = http_get(&proxy.admin_url("/stats/prometheus"))
            .await
            .unwrap();
        m.lines()
            .find_map(|l| l.strip_prefix("mesh_config_rejections_total "))
            .map(|v| v.trim().parse::<u64>().unwrap())
            .unwrap()
    };
    let bad: [(&str, String); 4] = [
        ("mesh.yaml", "apiVersion: [unclosed\n".to_owned()),
        (
            "mesh.yaml",
            good.replace("ports: {http: ", "ports: {http: not-a-port-"),
        ),
        (
            "deny.yaml",
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: x}\n\
             spec: {action: DENYY, rules: [{}]}\n"
                .to_owned(),
        ),
        (
            "mesh.yaml",
            String::new() + &good.replace("STRICT", "STRICTEST"),
        ),
    ];
    for (i, (file, text)) in bad.iter().enumerate() {
        let before = rejections().await;
        world.write_config(file, text);
        let deadline = Instant::now() + Duration::from_secs(10);
        while rejections().await <= before {
            assert!(Instant::now() < deadline, "bad config {i} was not rejected");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Traffic with the bad file in place, then the good config back.
        tokio::time::sleep(Duration::from_millis(300)).await;
        if *file == "mesh.yaml" {
            world.write_config(file, &good);
        } else {
            std::fs::remove_file(world.path("mesh").join(file)).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stop.store(true, Ordering::SeqCst);
    for l in load {
        l.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::SeqCst), failed.load(Ordering::SeqCst));
    assert_eq!(failed, 0, "{failed} requests failed ({ok} succeeded)");
    assert!(ok > 20, "too little load to mean anything: {ok}");
    assert!(seen.complete() >= ok);
    proxy.shutdown().await;
}
