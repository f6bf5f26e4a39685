//! Capture mode end to end: pods in network namespaces of their own, each
//! with `mesh-proxy init`'s rules and a `mesh-proxy sidecar --capture` as
//! uid 1337, apps that know nothing of the mesh (they dial virtual IPs and
//! listen on their own ports), and clients that dial as an app would.
//! Root only (CI runs as root); skipped loudly otherwise. Processes, not
//! the library in this process: each sidecar must run inside its pod's
//! namespace, as its own uid.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod netns;
mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use netns::{Cluster, Netns, Running};
use support::World;

const BIN: &str = env!("CARGO_BIN_EXE_mesh-proxy");
const PROXY_UID: u32 = 1337;

/// An app: a server-first TCP service (a banner, then an echo of each
/// line, as MySQL speaks first) and an HTTP service that answers with its
/// name, the `x-forwarded-client-cert` and the Host it got.
const APP_PY: &str = r#"
import socket, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
name, tcp_port, http_port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def echo(c):
    with c:
        c.sendall(("hello from %s\n" % name).encode())
        for line in c.makefile("rb"):
            c.sendall(b"echo " + line)
def tcp():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", tcp_port)); s.listen(64)
    while True:
        c, _ = s.accept()
        threading.Thread(target=echo, args=(c,), daemon=True).start()
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("%s xfcc=%s host=%s\n" % (name, self.headers.get("x-forwarded-client-cert", "-"), self.headers.get("host", "-"))).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
if tcp_port:
    threading.Thread(target=tcp, daemon=True).start()
srv = ThreadingHTTPServer(("0.0.0.0", http_port), H)
print("ready", flush=True)
srv.serve_forever()
"#;

/// A client as an app would be one: connects, reads the banner, sends a
/// line, reads the echo. Prints what it read, or the error.
const TALK_PY: &str = r#"
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
try:
    s = socket.create_connection((host, port), 5)
    s.settimeout(5)
    f = s.makefile("rb")
    banner = f.readline()
    s.sendall(b"ping\n")
    print(banner.decode().strip(), "|", f.readline().decode().strip())
except Exception as e:
    print("failed:", type(e).__name__, e)
"#;

/// A client that speaks first (as a plaintext HTTP or TLS client does) and
/// prints what came back: `eof` when the server closed without a word.
const SEND_FIRST_PY: &str = r#"
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
try:
    s = socket.create_connection((host, port), 5)
    s.settimeout(10)
    s.sendall(b"ping\n")
    got = s.recv(100)
    print("eof" if not got else "got " + got.decode(errors="replace"))
except Exception as e:
    print("failed:", type(e).__name__, e)
"#;

fn config(dir: &Path, extra: &str) {
    let mesh = dir.join("mesh");
    std::fs::create_dir_all(&mesh).unwrap();
    let yaml = format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: db}}
spec:
  hosts: [db]
  addresses: [10.96.0.20, "fd00:96::20"]
  ports: [{{number: 3306, name: mysql, protocol: MYSQL}}]
  workloadSelector: {{labels: {{role: db}}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: web}}
spec:
  hosts: [web]
  addresses: [10.96.0.30]
  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: 8080}}]
  workloadSelector: {{labels: {{app: web}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: a}}
spec: {{address: 10.244.0.2, labels: {{app: client}}, serviceAccount: client}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: b}}
spec:
  address: 10.244.0.3
  labels: {{app: web, version: v1, role: db}}
  serviceAccount: web
  ports: {{mysql: 3306, http: 8080}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: c}}
spec:
  address: 10.244.0.4
  labels: {{app: web, version: v2}}
  serviceAccount: web
  ports: {{http: 8080}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: web}}
spec:
  host: web
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: web}}
spec:
  hosts: [web]
  http:
  - match: [{{headers: {{x-canary: {{exact: v1}}}}}}]
    route: [{{destination: {{host: web, subset: v1}}}}]
  - route:
    - {{destination: {{host: web, subset: v1}}, weight: 20}}
    - {{destination: {{host: web, subset: v2}}, weight: 80}}
{extra}"#
    );
    std::fs::write(mesh.join("mesh.yaml"), yaml).unwrap();
}

/// The World's folder opened to the proxy's uid: it runs as 1337 and
/// reads its configuration and certificate from there.
fn open_to_proxy(world: &World, accounts: &[&str]) {
    use std::os::unix::fs::PermissionsExt;
    let open = |p: &Path| std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755));
    open(world.dir.path()).unwrap();
    open(&world.path("mesh")).unwrap();
    for sa in accounts {
        let d = world.issue(sa);
        open(&d).unwrap();
        std::os::unix::fs::chown(d.join("key.pem"), Some(PROXY_UID), Some(PROXY_UID)).unwrap();
    }
}

/// A pod of the mesh: capture rules installed, its sidecar running as the
/// proxy's uid, ready.
struct Pod {
    ns: Netns,
    log: PathBuf,
    sidecar: Option<Running>,
    _app: Option<Running>,
}

impl Pod {
    fn start(world: &World, ns: Netns, workload: &str, sa: &str, app: Option<(&str, u16)>) -> Self {
        Self::start_with(world, ns, workload, sa, app, &[])
    }

    /// [`Pod::start`], with more arguments for the sidecar.
    fn start_with(
        world: &World,
        ns: Netns,
        workload: &str,
        sa: &str,
        app: Option<(&str, u16)>,
        more: &[&str],
    ) -> Self {
        ns.ok(&[BIN, "init"]);
        let app = app.map(|(name, tcp)| {
            let log = world.path(&format!("{workload}-app.log"));
            let tcp = tcp.to_string();
            let running = ns.spawn_as(None, &["python3", "-c", APP_PY, name, &tcp, "8080"], &log);
            wait_for(&log, "ready");
            running
        });
        let log = world.path(&format!("{workload}-sidecar.log"));
        let identity = world.path(sa);
        let file = |f: &str| identity.join(f).to_str().unwrap().to_owned();
        let (cert, key, bundle) = (file("cert.pem"), file("key.pem"), file("bundle.pem"));
        let mesh = world.path("mesh");
        let sidecar = ns.spawn_as(
            Some((PROXY_UID, PROXY_UID)),
            &[
                BIN,
                "sidecar",
                "--capture",
                "--config",
                mesh.to_str().unwrap(),
                "--workload",
                workload,
                "--cert",
                &cert,
                "--key",
                &key,
                "--bundle",
                &bundle,
            ]
            .into_iter()
            .chain(more.iter().copied())
            .collect::<Vec<_>>(),
            &log,
        );
        let pod = Self {
            ns,
            log,
            sidecar: Some(sidecar),
            _app: app,
        };
        pod.wait_ready();
        pod
    }

    fn wait_ready(&self) {
        let start = Instant::now();
        loop {
            let code = self.ns.exec(&[
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "http://127.0.0.1:15000/ready",
            ]);
            if String::from_utf8_lossy(&code.stdout) == "200" {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "sidecar in {} never ready:\n{}",
                self.ns.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn metrics(&self) -> String {
        self.ns
            .ok(&["curl", "-sS", "http://127.0.0.1:15000/stats/prometheus"])
    }

    /// Runs a Python client in the pod as an app would (root here, which
    /// is not the proxy's uid, so it is captured).
    fn python(&self, script: &str, host: &str, port: u16) -> String {
        let port = port.to_string();
        self.ns.ok(&["python3", "-c", script, host, &port])
    }

    fn curl(&self, args: &[&str]) -> String {
        let mut argv = vec!["curl", "-sS", "-m", "10"];
        argv.extend_from_slice(args);
        let out = self.ns.exec(&argv);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }
}

fn wait_for(log: &Path, what: &str) {
    let start = Instant::now();
    while !std::fs::read_to_string(log)
        .unwrap_or_default()
        .contains(what)
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{} never said {what:?}: {}",
            log.display(),
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The sum of the series of `metric` whose labels contain every one of
/// `labels` (`None` when there is none).
fn series(metrics: &str, metric: &str, labels: &[&str]) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .reduce(|a, b| a + b)
}

const CLIENT: &str = "spiffe://cluster.local/ns/default/sa/client";

#[test]
fn apps_unchanged_reach_services_by_virtual_ip_over_mtls() {
    let Some(mut cluster) = Cluster::create("cap") else {
        return;
    };
    let world = World::new();
    config(world.dir.path(), "");
    open_to_proxy(&world, &["client", "web"]);
    let b = Pod::start(
        &world,
        cluster.pod("cap-b", 3),
        "b",
        "web",
        Some(("web-v1", 3306)),
    );
    let c = Pod::start(
        &world,
        cluster.pod("cap-c", 4),
        "c",
        "web",
        Some(("web-v2", 0)),
    );
    let a = Pod::start(&world, cluster.pod("cap-a", 2), "a", "client", None);

    // TCP, server first: the app dials the database's virtual IP; the
    // banner comes at once through two sidecars, and the echo after it.
    let talk = a.python(TALK_PY, "10.96.0.20", 3306);
    assert_eq!(talk.trim(), "hello from web-v1 | echo ping", "{}", a.log());
    // The same over the IPv6 virtual IP (captured by the ip6 rules, read
    // with the IPv6 SO_ORIGINAL_DST).
    let talk = a.python(TALK_PY, "fd00:96::20", 3306);
    assert_eq!(talk.trim(), "hello from web-v1 | echo ping", "{}", a.log());
    // The caller's sidecar names the workload that served the tunnel and
    // its identity (its series opens once the endpoint answered).
    let m = a.metrics();
    assert!(
        series(
            &m,
            "istio_tcp_connections_opened_total",
            &[
                "reporter=\"source\"",
                "destination_workload=\"b\"",
                "destination_principal=\"spiffe://cluster.local/ns/default/sa/web\"",
            ]
        )
        .is_some_and(|n| n >= 2.0),
        "{m}"
    );
    // The database's sidecar authenticated the caller, and knows which
    // workload it is from the peer exchange of the tunnel.
    let m = b.metrics();
    assert!(
        series(
            &m,
            "istio_tcp_connections_opened_total",
            &[
                "reporter=\"destination\"",
                "source_workload=\"a\"",
                &format!("source_principal=\"{CLIENT}\""),
                "connection_security_policy=\"mutual_tls\"",
            ]
        )
        .is_some_and(|n| n >= 2.0),
        "{m}"
    );

    // HTTP by virtual IP: the VirtualService applies (the header route to
    // v1, else 20/80), the app sees the caller's verified identity, and
    // its Host header is left as the app wrote it.
    for _ in 0..3 {
        let body = a.curl(&[
            "--resolve",
            "web:80:10.96.0.30",
            "-H",
            "x-canary: v1",
            "http://web/",
        ]);
        assert_eq!(
            body.trim(),
            format!("web-v1 xfcc=URI={CLIENT} host=web"),
            "{}",
            a.log()
        );
    }
    // 80 requests at 20/80: both versions answer, v2 the most (the chance
    // of fewer than two for v1 by luck is below one in 10^6).
    let mut seen = std::collections::BTreeMap::<String, u32>::new();
    for _ in 0..80 {
        let body = a.curl(&["--resolve", "web:80:10.96.0.30", "http://web/"]);
        let version = body
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned();
        *seen.entry(version).or_default() += 1;
    }
    let (v1, v2) = (seen.get("web-v1").copied(), seen.get("web-v2").copied());
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(v1.is_some_and(|v1| v1 >= 2) && v2 > v1, "{seen:?}");
    // A Host the mesh does not know: routed to the service the app dialled.
    let body = a.curl(&["http://10.96.0.30/", "-H", "x-canary: v1"]);
    assert_eq!(
        body.trim(),
        format!("web-v1 xfcc=URI={CLIENT} host=10.96.0.30")
    );
    let m = a.metrics();
    assert!(
        series(
            &m,
            "istio_requests_total",
            &[
                "reporter=\"source\"",
                "destination_service=\"web.default.svc.cluster.local\"",
                "response_code=\"200\"",
            ]
        )
        .is_some_and(|n| n >= 84.0),
        "{m}"
    );

    // Capture closes the bypass: a plaintext client outside the mesh (the
    // node) that dials the pod's own ports is held to the port's STRICT
    // mTLS, over IPv4 and IPv6, and never reaches the app.
    for (host, port) in [
        ("10.244.0.3", 8080),
        ("10.244.0.3", 3306),
        ("fd00:244::3", 8080),
    ] {
        let out = cluster
            .node
            .ok(&["python3", "-c", SEND_FIRST_PY, host, &port.to_string()]);
        // The app would have answered with its banner or an HTTP 400.
        assert!(
            !out.contains("web-v1") && !out.contains("HTTP/"),
            "{host}:{port} reached the app in plaintext: {out}"
        );
    }
    wait_for(&b.log, "inbound connection refused");
    assert!(b.log().contains("fd00:244::1"), "{}", b.log());

    // A connection made to the capture port itself would loop: refused,
    // and the sidecar goes on serving.
    let out = a.python(SEND_FIRST_PY, "127.0.0.1", 15001);
    assert!(out.trim() == "eof" || out.contains("failed"), "{out}");
    wait_for(&a.log, "serving it would loop");
    let talk = a.python(TALK_PY, "10.96.0.20", 3306);
    assert_eq!(talk.trim(), "hello from web-v1 | echo ping");
    let ready = a.curl(&["http://127.0.0.1:15000/ready"]);
    assert!(
        ready.contains("mode: capture (outbound 127.0.0.1:15001, [::1]:15001; inbound [::]:15006)"),
        "{ready}"
    );

    // Every workload of the subset down (its sidecar gone, so its port is
    // redirected to nothing): the same answer as in explicit mode, a 503
    // with the reason, and the TCP connection closed without a banner.
    let mut c = c;
    drop(c.sidecar.take());
    let out = a.curl(&[
        "-D",
        "-",
        "--resolve",
        "web:80:10.96.0.30",
        "-H",
        "x-canary: v1",
        "http://web/",
    ]);
    assert!(out.contains("HTTP/1.1 200"), "v1 still up: {out}");
    let mut refused = 0;
    for _ in 0..10 {
        let out = a.curl(&["-D", "-", "--resolve", "web:80:10.96.0.30", "http://web/"]);
        if out.contains("HTTP/1.1 503") {
            assert!(out.to_ascii_lowercase().contains("x-mesh-reason:"), "{out}");
            refused += 1;
        } else {
            assert!(out.contains("web-v1"), "{out}");
        }
    }
    // All ten to v1 by luck: one chance in 10^7.
    assert!(
        refused >= 1,
        "v2 is down: some of ten requests must get 503"
    );
    let mut b = b;
    drop(b.sidecar.take());
    let talk = a.python(TALK_PY, "10.96.0.20", 3306);
    assert!(!talk.contains("hello from"), "{talk}");
}

/// A pod's own `/etc/hosts`: `ip netns exec` mounts `/etc/netns/NAME/hosts`
/// over `/etc/hosts` for every process it starts in the namespace, so the
/// system resolver of the pod's sidecar and apps reads it. Removed on drop.
struct PodHosts(PathBuf);

impl PodHosts {
    fn write(ns: &Netns, lines: &str) -> Self {
        let dir = Path::new("/etc/netns").join(&ns.name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("hosts"), format!("127.0.0.1 localhost\n{lines}")).unwrap();
        Self(dir)
    }
}

impl Drop for PodHosts {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// ServiceEntries without endpoints, as egress entries are written:
/// `resolution: NONE` sends a captured connection on to the address the
/// app dialled (here under REGISTRY_ONLY, which refuses every address no
/// entry names), counted as the entry's; `resolution: DNS` resolves the
/// entry's host when the sidecar dials (the system resolver: the pod's
/// hosts file here), and the request keeps its Host.
#[test]
fn service_entries_without_endpoints_pass_through_or_resolve_their_host() {
    let Some(mut cluster) = Cluster::create("egr") else {
        return;
    };
    let world = World::new();
    config(
        world.dir.path(),
        r#"---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: legacy}
spec:
  hosts: [legacy.internal]
  addresses: [10.244.0.5/32]
  ports: [{number: 9000, name: tcp-legacy, protocol: TCP}]
  location: MESH_EXTERNAL
  resolution: NONE
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: legacy-web}
spec:
  hosts: [web.legacy.internal]
  addresses: [10.244.0.5/32]
  ports: [{number: 8080, name: tcp-web, protocol: TCP}]
  location: MESH_INTERNAL
  resolution: NONE
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api}
spec:
  hosts: [api.example.test]
  ports: [{number: 8080, name: http, protocol: HTTP}]
  location: MESH_EXTERNAL
  resolution: DNS
---
apiVersion: mesh.config/v1alpha1
kind: MeshConfig
metadata: {name: mesh}
spec:
  outboundTrafficPolicy: {mode: REGISTRY_ONLY}
"#,
    );
    open_to_proxy(&world, &["client"]);
    // A server outside the mesh.
    let ext = cluster.pod("egr-ext", 5);
    let ext_log = world.path("ext.log");
    let _ext = ext.spawn_as(
        None,
        &["python3", "-c", APP_PY, "ext", "9000", "8080"],
        &ext_log,
    );
    wait_for(&ext_log, "ready");
    let pod = cluster.pod("egr-a", 2);
    let _hosts = PodHosts::write(&pod, "10.244.0.5 api.example.test\n");
    let a = Pod::start_with(
        &world,
        pod,
        "a",
        "client",
        None,
        &["--http-proxy", "127.0.0.1:15080"],
    );

    // NONE: on to 10.244.0.5:9000 as legacy.internal.
    let talk = a.python(TALK_PY, "10.244.0.5", 9000);
    assert_eq!(talk.trim(), "hello from ext | echo ping", "{}", a.log());
    let m = a.metrics();
    assert!(
        series(
            &m,
            "istio_tcp_connections_opened_total",
            &[
                "reporter=\"source\"",
                "destination_service=\"legacy.internal\""
            ]
        )
        .is_some_and(|n| n >= 1.0),
        "{m}"
    );
    // Inside the mesh, NONE would need mesh mTLS to an address nobody
    // named: refused, never sent in the clear (the server listens there).
    let out = a.python(SEND_FIRST_PY, "10.244.0.5", 8080);
    assert!(!out.contains("HTTP/"), "{out}");
    wait_for(&a.log, "MESH_EXTERNAL service only");

    // DNS: the sidecar resolves api.example.test and keeps the Host.
    let out = a.curl(&[
        "-x",
        "http://127.0.0.1:15080",
        "http://api.example.test:8080/x",
    ]);
    assert!(
        out.contains("ext xfcc=- host=api.example.test:8080"),
        "{out}\n{}",
        a.log()
    );
}

#[test]
fn outbound_policy_passes_unknown_destinations_or_refuses_them_and_a_dead_sidecar_fails_closed() {
    let Some(mut cluster) = Cluster::create("pol") else {
        return;
    };
    let world = World::new();
    config(world.dir.path(), "");
    open_to_proxy(&world, &["client"]);
    // A server outside the mesh: no WorkloadEntry, no sidecar.
    let ext = cluster.pod("pol-ext", 5);
    let ext_log = world.path("ext.log");
    let _ext = ext.spawn_as(
        None,
        &["python3", "-c", APP_PY, "ext", "9000", "8080"],
        &ext_log,
    );
    wait_for(&ext_log, "ready");
    let mut a = Pod::start(&world, cluster.pod("pol-a", 2), "a", "client", None);

    // ALLOW_ANY (Istio's default): out unchanged, counted as the
    // PassthroughCluster.
    let talk = a.python(TALK_PY, "10.244.0.5", 9000);
    assert_eq!(talk.trim(), "hello from ext | echo ping", "{}", a.log());
    let m = a.metrics();
    assert!(
        series(
            &m,
            "istio_tcp_connections_opened_total",
            &[
                "reporter=\"source\"",
                "destination_service=\"PassthroughCluster\""
            ]
        )
        .is_some_and(|n| n >= 1.0),
        "{m}"
    );

    // REGISTRY_ONLY, applied by a reload: refused, counted as the
    // BlackHoleCluster, while mesh services still work.
    config(
        world.dir.path(),
        "---\napiVersion: mesh.config/v1alpha1\nkind: MeshConfig\nmetadata: {name: mesh}\n\
         spec:\n  outboundTrafficPolicy: {mode: REGISTRY_ONLY}\n",
    );
    let start = Instant::now();
    loop {
        let talk = a.python(TALK_PY, "10.244.0.5", 9000);
        if !talk.contains("hello from ext") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "REGISTRY_ONLY never applied: {}",
            a.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_for(&a.log, "REGISTRY_ONLY");
    let m = a.metrics();
    assert!(
        series(
            &m,
            "istio_tcp_connections_closed_total",
            &[
                "destination_service=\"BlackHoleCluster\"",
                "response_flags=\"NR\""
            ]
        )
        .is_some_and(|n| n >= 1.0),
        "{m}"
    );

    // The sidecar gone, the app's connections fail: they are still
    // redirected, to a port nothing listens on, and never leave unsecured.
    drop(a.sidecar.take());
    let talk = a.python(TALK_PY, "10.244.0.5", 9000);
    assert!(talk.contains("failed: ConnectionRefusedError"), "{talk}");
    let talk = a.python(TALK_PY, "10.96.0.20", 3306);
    assert!(talk.contains("failed: ConnectionRefusedError"), "{talk}");
}
