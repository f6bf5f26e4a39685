//! Security round 2 at the sidecar's inbound (the sidecar started in the
//! test's runtime), with a real PHP application behind it (`php -S`, which
//! maps headers to `$_SERVER` the CGI way: `x_role` and `x-role` are both
//! `HTTP_X_ROLE`, and routes on the path as written). A mesh peer sends many spellings of three forbidden things
//! over real mTLS, HTTP/1.1 byte for byte and h2: paths under `/admin`
//! (DENY `/admin*`), the header `x-role: root` (DENY on its value), and
//! `/private` on the host `web` (DENY on the host's FQDN). The PHP script
//! logs every request it gets; the log must hold the allowed controls and
//! nothing else.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use mesh_tower::server::ServerSettings;
use support::{World, exchange, free_port, mtls, ready_sidecar, send_mtls};

const WAIT: Duration = Duration::from_secs(3);

const SCRIPT: &str = r#"<?php
$line = json_encode([
    'uri' => $_SERVER['REQUEST_URI'],
    'role' => $_SERVER['HTTP_X_ROLE'] ?? null,
    'xfcc' => $_SERVER['HTTP_X_FORWARDED_CLIENT_CERT'] ?? null,
    'host' => $_SERVER['HTTP_HOST'] ?? null,
]);
file_put_contents(__DIR__ . '/seen.log', $line . "\n", FILE_APPEND | LOCK_EX);
header('content-type: application/json');
echo $line;
"#;

const POLICY: &str = r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: round2}
spec:
  selector: {matchLabels: {app: web}}
  action: DENY
  rules:
  - to: [{operation: {paths: ["/admin*"]}}]
  - when: [{key: "request.headers[x-role]", values: [root]}]
  - to: [{operation: {hosts: [web.default.svc.cluster.local], paths: ["/private*"]}}]
"#;

/// `php -S` on loopback serving the logging script; killed on drop.
struct Php {
    child: Child,
    port: u16,
    dir: std::path::PathBuf,
}

impl Drop for Php {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Php {
    /// `php -S` cannot take a bound socket, so its port comes from
    /// `free_port()`: a start that loses the port to a neighbour is tried
    /// again on another (three times at most).
    async fn start(world: &World) -> Self {
        let dir = world.path("php");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("index.php"), SCRIPT).unwrap();
        for _ in 0..3 {
            let port = free_port();
            let child = Command::new("php")
                .args(["-S", &format!("127.0.0.1:{port}"), "-t"])
                .arg(&dir)
                .arg(dir.join("index.php"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("php (Debian's php-cli) runs this test; .ci/run installs it");
            let mut php = Self {
                child,
                port,
                dir: dir.clone(),
            };
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if php.child.try_wait().unwrap().is_some() {
                    break;
                }
                if tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
                {
                    return php;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        panic!("php -S did not start");
    }

    /// What the application received, one JSON object per request.
    fn seen(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.join("seen.log"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

/// One raw HTTP/1.1 request over mTLS as `client`; the status.
async fn h1(world: &World, inbound: u16, raw: &str) -> Option<u16> {
    let mut tls = mtls(&world.creds("client"), inbound, b"http/1.1").await;
    let answer = exchange(&mut tls, raw.as_bytes(), WAIT).await;
    // `HTTP/1.x NNN ...`: an HTTP/1.0 request gets an HTTP/1.0 answer.
    answer
        .strip_prefix("HTTP/1.")
        .and_then(|a| a.get(2..5))
        .and_then(|s| s.parse().ok())
}

/// One h2 request over mTLS as `client`; the status.
async fn h2(
    world: &World,
    inbound: u16,
    authority: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> u16 {
    let mut req = http::Request::get(format!("http://{authority}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = send_mtls(
        &world.creds("client"),
        inbound,
        true,
        req.body(Empty::<Bytes>::new()).unwrap(),
    )
    .await
    .unwrap();
    let status = resp.status().as_u16();
    let _ = resp.into_body().collect().await;
    status
}

fn get(path: &str, host: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nhost: {host}\r\n{extra}connection: close\r\n\r\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_php_app_behind_the_sidecar_never_receives_a_forbidden_request() {
    let world = World::new();
    world.write_config("policy.yaml", POLICY);
    let php = Php::start(&world).await;
    let (proxy, inbound) =
        ready_sidecar(&world, php.port, "STRICT", ServerSettings::default()).await;
    let refused = |status: Option<u16>| matches!(status, Some(400 | 403));

    // Paths PHP (and Tomcat, Spring) would serve as /admin.
    for path in [
        "/admin",
        "/ADMIN",
        "/;x/admin",
        "/;/admin",
        "/%3B/admin",
        "/%3bx/admin",
        "//;x//admin",
        "/a;x/../admin",
        "/x/..;/admin",
        "/%61dmin",
        "/admin;jsessionid=1",
        "/public/..%2Fadmin",
        "/public/%2e%2e/admin",
        "/;x/%61dmin/",
        "\\admin",
    ] {
        let status = h1(&world, inbound, &get(path, "web", "")).await;
        assert!(refused(status), "HTTP/1.1 {path}: {status:?}");
    }
    // The forbidden header value, as PHP reads it.
    for extra in [
        "x-role: root\r\n",
        "x-role:   root   \r\n",
        "x-role: user,root\r\n",
        "x-role: user, root\r\n",
        "x-role: root , user\r\n",
        "x-role: user\r\nx-role: root\r\n",
        "x_role: root\r\n",
        "X_ROLE: root\r\n",
        "x-role: user\r\nx_role: root\r\n",
        "x_forwarded_client_cert: URI=spiffe://cluster.local/ns/default/sa/admin\r\n",
    ] {
        let status = h1(&world, inbound, &get("/ok", "web", extra)).await;
        assert!(refused(status), "HTTP/1.1 {extra:?}: {status:?}");
    }
    // `/private` on `web`, however the host is spelled.
    for host in [
        "web",
        "WEB",
        "web.",
        "web:80",
        "web.default",
        "web.default.svc",
        "web.default.svc.cluster.local",
        "Web.Default.Svc.Cluster.Local.",
        "127.0.0.1",
        &format!("127.0.0.1:{inbound}"),
        "[::1]",
        "user@web",
        "web..",
    ] {
        let status = h1(&world, inbound, &get("/private", host, "")).await;
        assert!(refused(status), "HTTP/1.1 Host {host}: {status:?}");
    }
    for raw in [
        "GET /private HTTP/1.1\r\nconnection: close\r\n\r\n".to_owned(),
        "GET /private HTTP/1.0\r\n\r\n".to_owned(),
        get("http://blog.example.test/private", "web", ""),
        get("http://web/private", "blog.example.test", ""),
    ] {
        let status = h1(&world, inbound, &raw).await;
        assert!(refused(status), "HTTP/1.1 {raw:?}: {status:?}");
    }
    // The same over h2, where values keep their whitespace on the wire.
    for (authority, path, headers) in [
        ("web", "/;x/admin", vec![]),
        ("web", "/%3B/admin", vec![]),
        ("web", "/ok", vec![("x-role", " root")]),
        ("web", "/ok", vec![("x-role", "root\t")]),
        ("web", "/ok", vec![("x-role", "user, root")]),
        ("web", "/ok", vec![("x_role", "root")]),
        ("web.default", "/private", vec![]),
        ("WEB.default.svc.cluster.local.", "/private", vec![]),
        ("127.0.0.1", "/private", vec![]),
    ] {
        let status = h2(&world, inbound, authority, path, &headers).await;
        assert!(
            matches!(status, 400 | 403),
            "h2 {authority}{path} {headers:?}: {status}"
        );
    }
    assert!(php.seen().is_empty(), "PHP received {:?}", php.seen());

    // What is allowed gets through, read as it was checked.
    let controls = [
        get("/ok", "web", "x-role: user\r\n"),
        get("/public/x", "web", ""),
        get("/private", "blog.example.test", ""),
    ];
    for raw in &controls {
        assert_eq!(h1(&world, inbound, raw).await, Some(200), "{raw:?}");
    }
    assert_eq!(
        h2(&world, inbound, "web", "/ok", &[("x-role", " user ")]).await,
        200
    );
    let seen = php.seen();
    let uris: Vec<&str> = seen.iter().map(|s| s["uri"].as_str().unwrap()).collect();
    assert_eq!(uris, ["/ok", "/public/x", "/private", "/ok"]);
    assert_eq!(seen[0]["role"], "user");
    assert_eq!(seen[3]["role"], "user", "the value PHP reads is trimmed");
    assert_eq!(seen[2]["host"], "blog.example.test");
    for s in &seen {
        assert_eq!(
            s["xfcc"], "URI=spiffe://cluster.local/ns/default/sa/client",
            "{s}"
        );
    }
    proxy.shutdown().await;
}
