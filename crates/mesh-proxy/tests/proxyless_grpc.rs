#![allow(clippy::unwrap_used, clippy::expect_used)]
//! gRPC services in another language joining the mesh without a sidecar:
//! Python grpcio servers and clients (`tests/grpc/echo.py`) that take
//! their routing, endpoints and mTLS from our control plane over xDS
//! (gRFC A27/A28/A29), each beside a `mesh-proxy agent` (here the same
//! `Agent` in-process) that obtained its SVID with a join token and wrote
//! its files and bootstrap.
//!
//! What a user relies on: the VirtualService's 90/10 split holds for a
//! Python client; the call is mTLS both ways with the workloads' SPIFFE
//! IDs; a client without the mesh's credentials is refused by the server;
//! an edit of the control plane's folder reaches a running Python client;
//! retries of the VirtualService are honoured; a workload under an
//! AuthorizationPolicy fails closed; an agent that claims a workload that
//! is not its identity gets nothing.
//!
//! The Python servers listen on fixed ports of loopback addresses of their
//! own (127.0.91.x: all of 127/8 is loopback on Linux), because an xDS
//! server asks for its listener by the address it listens on, and the
//! WorkloadEntry must name that address before the server starts.

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use mesh_ca::{CertificateAuthority, TokenStore};
use mesh_control::{ConfigServer, ControlPlane, ControlPlaneConfig};
use mesh_core::identity::SpiffeId;
use mesh_proxy::IdentitySource;
use mesh_proxy::agent::{Agent, AgentConfig};
use support::World;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/grpc/echo.py");

/// The echo service (v1 and v2, 90/10) and a client, in namespace demo.
fn config(net: u8, route: &str) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: echo, namespace: demo}}
spec:
  hosts: [echo.demo.svc.cluster.local]
  ports: [{{number: 8080, name: grpc, protocol: GRPC}}]
  resolution: STATIC
  workloadSelector: {{labels: {{app: echo}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: echo-v1, namespace: demo}}
spec: {{address: 127.0.{net}.2, ports: {{grpc: 15051}}, labels: {{app: echo, version: v1}}, serviceAccount: echo}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: echo-v2, namespace: demo}}
spec: {{address: 127.0.{net}.3, ports: {{grpc: 15051}}, labels: {{app: echo, version: v2}}, serviceAccount: echo}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: client, namespace: demo}}
spec: {{address: 127.0.{net}.4, labels: {{app: client}}, serviceAccount: client}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: echo, namespace: demo}}
spec:
  host: echo.demo.svc.cluster.local
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: echo, namespace: demo}}
spec:
  hosts: [echo.demo.svc.cluster.local]
  http:
{route}
"#
    )
}

/// Callers that say `x-canary: 1` go to v2; the others are split 90/10.
const SPLIT: &str = "  - match: [{headers: {x-canary: {exact: \"1\"}}}]
    route: [{destination: {host: echo.demo.svc.cluster.local, subset: v2}}]
  - route:
    - {destination: {host: echo.demo.svc.cluster.local, subset: v1}, weight: 90}
    - {destination: {host: echo.demo.svc.cluster.local, subset: v2}, weight: 10}";

const ALL_V2: &str = "  - route:
    - {destination: {host: echo.demo.svc.cluster.local, subset: v2}}";

/// Everything to v1, retried on UNAVAILABLE when `retries`.
fn to_v1(retries: bool) -> String {
    let retries = if retries {
        "\n    retries: {attempts: 2, retryOn: unavailable}"
    } else {
        ""
    };
    format!(
        "  - route:\n    - {{destination: {{host: echo.demo.svc.cluster.local, subset: v1}}}}{retries}"
    )
}

/// Only `who` may call echo: the xDS servers get it as gRPC's RBAC.
fn policy(who: &str) -> String {
    format!(
        "---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: echo, namespace: demo}}
spec:
  selector: {{matchLabels: {{app: echo}}}}
  action: ALLOW
  rules: [{{from: [{{source: {{principals: [cluster.local/ns/demo/sa/{who}]}}}}], to: [{{operation: {{methods: [POST], paths: [/mesh.test.*]}}}}]}}]
"
    )
}

/// Only the client, with every field and condition gRPC's RBAC is given
/// (each holding for the client's calls): the servers must accept the
/// listener (a NACKed one leaves the previous listener serving) and allow.
const ALLOW_ALL_FIELDS: &str = "---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: echo, namespace: demo}
spec:
  selector: {matchLabels: {app: echo}}
  rules:
  - from:
    - source:
        principals: ['cluster.local/ns/demo/sa/cli*']
        notPrincipals: ['*/sa/someone-else']
        namespaces: ['de*']
        notNamespaces: [other]
        ipBlocks: [127.0.0.0/8]
        notIpBlocks: [10.0.0.0/8, '::1']
    to:
    - operation:
        methods: [POST]
        paths: ['*/Hello']
        notPaths: [/mesh.test.Echo/Admin]
        ports: ['15051']
        notPorts: ['1']
    when:
    - {key: source.principal, values: ['*']}
    - {key: source.namespace, values: [demo]}
    - {key: source.ip, notValues: [10.1.2.3]}
    - {key: destination.port, values: ['15051']}
    - {key: destination.ip, values: [127.0.0.0/8]}
    - {key: 'request.headers[x-forbidden]', notValues: ['*']}
    - {key: 'request.headers[x-team]', values: ['blue*']}
";

/// No one of namespace demo may call Hello (any case).
const DENY_HELLO: &str = "---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-hello, namespace: demo}
spec:
  selector: {matchLabels: {app: echo}}
  action: DENY
  rules: [{from: [{source: {namespaces: [demo]}}], to: [{operation: {paths: [/MESH.TEST.ECHO/HELLO]}}]}]
";

const TARGET: &str = "xds:///echo.demo.svc.cluster.local:8080";

fn id(ns: &str, sa: &str) -> SpiffeId {
    SpiffeId::parse(&format!("spiffe://cluster.local/ns/{ns}/sa/{sa}")).unwrap()
}

/// A child process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Mesh {
    world: World,
    plane: ControlPlane,
}

impl Mesh {
    async fn start(yaml: &str) -> Self {
        let world = World::new();
        world.write_config("mesh.yaml", yaml);
        let ca = Arc::new(CertificateAuthority::open_dir(&world.path("ca")).unwrap());
        let xds = ConfigServer::from_files(&world.path("mesh")).unwrap();
        let plane = ControlPlane::start_serving(
            ca,
            TokenStore::new(&world.path("ca")),
            tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
            ControlPlaneConfig {
                // gRPC checks the name it dials in the server's certificate.
                serving_dns_names: vec!["localhost".into()],
                ..ControlPlaneConfig::default()
            },
            xds,
        )
        .await
        .unwrap();
        Self { world, plane }
    }

    fn server_uri(&self) -> String {
        format!("localhost:{}", self.plane.ca_addr().port())
    }

    /// The agent of workload `demo/name` with identity `sa`.
    async fn agent(&self, name: &str, sa: &str) -> Agent {
        let identity = id("demo", sa);
        let token = TokenStore::new(&self.world.path("ca"))
            .create(&identity, Duration::from_secs(60))
            .unwrap();
        Agent::start(AgentConfig {
            control_plane: self.server_uri(),
            namespace: "demo".into(),
            workload: name.into(),
            identity,
            source: IdentitySource::ca(
                self.server_uri(),
                self.world.path("ca").join("root-cert.pem"),
            )
            .with_token(token),
            dir: self.world.path(&format!("agent-{name}")),
        })
        .await
        .unwrap()
    }
}

fn python(bootstrap: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new("python3");
    cmd.arg(SCRIPT)
        .args(args)
        .env("GRPC_XDS_BOOTSTRAP", bootstrap)
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null());
    cmd
}

/// Starts `echo.py serve` (an xDS server) and waits for its "serving" line.
fn server(agent: &Agent, addr: &str, name: &str) -> Proc {
    spawn_server(&agent.bootstrap_path(), &["serve", addr, name])
}

/// Starts `echo.py tls` (a plain TLS server, no xDS) presenting the SVID of
/// `demo/sa`, issued by the mesh's CA.
fn tls_server(mesh: &Mesh, addr: &str, name: &str, sa: &str, extra: &[&str]) -> Proc {
    let certs = mesh.world.path(&format!("certs-{name}"));
    support::write_identity(
        &mesh.world.ca,
        &id("demo", sa),
        time::OffsetDateTime::now_utc(),
        None,
        &certs,
    );
    let mut args = vec!["tls", addr, name, certs.to_str().unwrap()];
    args.extend_from_slice(extra);
    spawn_server(Path::new("/nonexistent"), &args)
}

fn spawn_server(bootstrap: &Path, args: &[&str]) -> Proc {
    let mut child = python(bootstrap, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3 runs");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("serving"), "{args:?}: {line:?}");
    Proc(child)
}

/// Runs `echo.py` to the end; its JSON line and exit status.
async fn run(bootstrap: PathBuf, args: Vec<String>) -> (serde_json::Value, bool) {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = python(&bootstrap, &args)
            .stderr(Stdio::inherit())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout.lines().last().unwrap_or_default();
        let json = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("echo.py {args:?} printed {stdout:?}: {e}"));
        (json, out.status.success())
    })
    .await
    .unwrap()
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_owned()).collect()
}

fn count(v: &serde_json::Value, key: &str, name: &str) -> u64 {
    v[key][name].as_u64().unwrap_or(0)
}

/// Runs `until TARGET want` on a running client, makes `edit` once its
/// channel answered, and asserts the client then gets `want` 20 times in
/// a row.
async fn after_edit(mesh: &Mesh, client: &Agent, want: &str, edit: &str) {
    let mut watching = python(&client.bootstrap_path(), &["until", TARGET, want, "60"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(watching.stdout.take().unwrap()).lines();
    let started = tokio::task::block_in_place(|| lines.next())
        .unwrap()
        .unwrap();
    assert_eq!(started, r#"{"started": true}"#);
    mesh.world.write_config("mesh.yaml", edit);
    let last = tokio::task::block_in_place(|| lines.next())
        .unwrap()
        .unwrap();
    let out: serde_json::Value = serde_json::from_str(&last).unwrap();
    drop(Proc(watching));
    assert_eq!(out["reached"], true, "the client never got {want}: {out}");
}

#[test]
fn the_agent_and_the_control_plane_agree_on_names() {
    assert_eq!(
        mesh_proxy::agent::SERVER_LISTENER_PREFIX,
        mesh_control::grpc::SERVER_LISTENER_PREFIX
    );
    assert_eq!(
        mesh_proxy::agent::CERT_PROVIDER,
        mesh_control::grpc::CERT_PROVIDER
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_client_and_servers_follow_the_mesh_over_xds() {
    let net = 91;
    let mesh = Mesh::start(&config(net, SPLIT)).await;
    let v1 = mesh.agent("echo-v1", "echo").await;
    let v2 = mesh.agent("echo-v2", "echo").await;
    let client = mesh.agent("client", "client").await;
    let _s1 = server(&v1, &format!("127.0.{net}.2:15051"), "v1");
    let _s2 = server(&v2, &format!("127.0.{net}.3:15051"), "v2");

    // The split, as a Python client's channel applies it.
    let (out, _) = run(
        client.bootstrap_path(),
        strings(&["call", TARGET, "2000", "--warmup", "30", "--wait"]),
    )
    .await;
    assert_eq!(out["errors"], serde_json::json!({}), "{out}");
    let (a, b) = (count(&out, "answers", "v1"), count(&out, "answers", "v2"));
    assert_eq!(a + b, 2000, "{out}");
    // 10% ± 3% of 2,000 (the binomial's sd is 13 calls: 4.5 sds either way).
    assert!((140..=260).contains(&b), "v2 took {b} of 2000: {out}");
    // mTLS: the server saw the client's SPIFFE ID.
    assert_eq!(
        out["details"][0]["peer"],
        serde_json::json!([id("demo", "client").to_string()]),
        "{out}"
    );

    // The header-match route.
    let (out, _) = run(
        client.bootstrap_path(),
        strings(&["call", TARGET, "50", "--header", "x-canary=1", "--wait"]),
    )
    .await;
    assert_eq!(count(&out, "answers", "v2"), 50, "{out}");

    // Without the mesh's credentials, straight to a server: refused.
    let (out, _) = run(
        client.bootstrap_path(),
        strings(&["call", &format!("127.0.{net}.2:15051"), "3", "--plain"]),
    )
    .await;
    assert_eq!(count(&out, "errors", "UNAVAILABLE"), 3, "{out}");

    // An edit of the control plane's folder reaches a running client, made
    // once the client's channel has answered with the split.
    after_edit(&mesh, &client, "v2", &config(net, ALL_V2)).await;

    // AuthorizationPolicies on echo, enforced by the Python servers as
    // gRPC's RBAC. One that allows someone else: the client is denied.
    let only = |who: &str, extra: &str| format!("{}{}{extra}", config(net, ALL_V2), policy(who));
    after_edit(
        &mesh,
        &client,
        "PERMISSION_DENIED",
        &only("someone-else", ""),
    )
    .await;
    // One that allows the client by every field there is: every call
    // answered.
    mesh.world.write_config(
        "mesh.yaml",
        &format!("{}{ALLOW_ALL_FIELDS}", config(net, ALL_V2)),
    );
    let (out, _) = run(
        client.bootstrap_path(),
        strings(&[
            "call",
            TARGET,
            "20",
            "--warmup",
            "30",
            "--wait",
            "--header",
            "x-team=blue-1",
        ]),
    )
    .await;
    assert_eq!(out["errors"], serde_json::json!({}), "{out}");
    assert_eq!(count(&out, "answers", "v2"), 20, "{out}");
    // Without the header that policy asks for: denied.
    let (out, _) = run(
        client.bootstrap_path(),
        strings(&["call", TARGET, "3", "--wait"]),
    )
    .await;
    assert_eq!(count(&out, "errors", "PERMISSION_DENIED"), 3, "{out}");
    // The client allowed by principal alone, then a DENY of the method for
    // the client's namespace, spelt in another case: denied although the
    // ALLOW matches.
    mesh.world.write_config("mesh.yaml", &only("client", ""));
    let (out, _) = run(
        client.bootstrap_path(),
        strings(&["call", TARGET, "5", "--warmup", "30", "--wait"]),
    )
    .await;
    assert_eq!(count(&out, "answers", "v2"), 5, "{out}");
    after_edit(
        &mesh,
        &client,
        "PERMISSION_DENIED",
        &only("client", DENY_HELLO),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_clients_retry_as_the_virtual_service_says() {
    let net = 92;
    let mesh = Mesh::start(&config(net, &to_v1(false))).await;
    let client = mesh.agent("client", "client").await;
    // echo-v1 fails every distinct call once (with a status and no
    // message: retryable), then answers.
    let _s1 = tls_server(
        &mesh,
        &format!("127.0.{net}.2:15051"),
        "v1",
        "echo",
        &["--fail-first", "1"],
    );

    let (out, _) = run(
        client.bootstrap_path(),
        strings(&["call", TARGET, "20", "--warmup", "30"]),
    )
    .await;
    assert_eq!(
        count(&out, "errors", "UNAVAILABLE"),
        20,
        "without retries: {out}"
    );

    mesh.world
        .write_config("mesh.yaml", &config(net, &to_v1(true)));
    let mut last = serde_json::Value::Null;
    for round in 0..100 {
        let payload = format!("r{round}-");
        let (out, _) = run(
            client.bootstrap_path(),
            strings(&[
                "call",
                TARGET,
                "20",
                "--payload",
                &payload,
                "--warmup",
                "30",
            ]),
        )
        .await;
        if count(&out, "answers", "v1") == 20 {
            last = out;
            break;
        }
        last = out;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(count(&last, "answers", "v1"), 20, "with retries: {last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_with_another_identity_and_an_agent_claiming_another_workload_get_nothing() {
    let net = 93;
    // Everything to v1, whose address the impostor holds: each call meets
    // it (with the split, some would meet v2's empty port instead).
    let mesh = Mesh::start(&config(net, &to_v1(false))).await;
    let client = mesh.agent("client", "client").await;
    // At echo-v1's address, a server holding the client's SVID: valid,
    // from our CA, but not echo's identity.
    let _impostor = tls_server(
        &mesh,
        &format!("127.0.{net}.2:15051"),
        "impostor",
        "client",
        &[],
    );
    let (out, _) = run(client.bootstrap_path(), strings(&["call", TARGET, "5"])).await;
    assert_eq!(
        count(&out, "answers", "impostor"),
        0,
        "secure naming: {out}"
    );
    assert_eq!(count(&out, "errors", "UNAVAILABLE"), 5, "{out}");
    let details = out["details"].as_array().unwrap();
    assert!(!details.is_empty(), "{out}");
    for d in details {
        let why = d["details"].as_str().unwrap_or_default();
        assert!(
            why.contains("SANs from certificate did not match SANs from xDS control plane"),
            "{out}"
        );
    }

    // An agent whose identity is the client's, claiming echo-v1: the
    // control plane refuses its stream, its channel gets no route.
    let claim = mesh.agent("echo-v1", "client").await;
    let (out, _) = run(claim.bootstrap_path(), strings(&["call", TARGET, "2"])).await;
    assert_eq!(count(&out, "errors", "UNAVAILABLE"), 2, "{out}");
    let metrics = mesh.plane.render_metrics();
    assert!(
        metrics.contains("mesh_xds_streams_refused_total{reason=\"wrong_identity\"} 1")
            || metrics.contains("mesh_xds_streams_refused_total{reason=\"wrong_identity\"} 2"),
        "{metrics}"
    );
}

/// A gRPC message (uncompressed) in its length-prefixed frame.
fn grpc_frame(message: &[u8]) -> bytes::Bytes {
    let mut out = Vec::with_capacity(5 + message.len());
    out.push(0);
    out.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
    out.extend_from_slice(message);
    out.into()
}

/// `greeter`, a Rust service on `mesh-tower`, answering the echo method as
/// the Python servers do (its name, the caller's SPIFFE ID), in gRPC's
/// framing with a `grpc-status` trailer.
async fn greeter(
    req: http::Request<mesh_tower::body::BoxBody>,
) -> Result<http::Response<mesh_tower::body::BoxBody>, std::convert::Infallible> {
    use http_body_util::BodyExt as _;
    let peer = req
        .extensions()
        .get::<mesh_tower::tls::PeerIdentity>()
        .and_then(|p| p.spiffe_id().map(ToString::to_string));
    let answer = serde_json::json!({"name": "rust", "peer": peer.into_iter().collect::<Vec<_>>()});
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    let body = http_body_util::Full::new(grpc_frame(answer.to_string().as_bytes()))
        .with_trailers(async move { Some(Ok::<_, std::convert::Infallible>(trailers)) });
    Ok(http::Response::builder()
        .header("content-type", "application/grpc")
        .body(mesh_tower::body::boxed(body))
        .unwrap())
}

/// The greeter service (Rust, `mesh-tower`), which only `client` may call,
/// beside echo; and `other`, a Python client the policy does not name.
fn with_greeter(net: u8, route: &str) -> String {
    let mut yaml = config(net, route);
    yaml.push_str(&format!(
        r#"---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: greeter, namespace: demo}}
spec:
  hosts: [greeter.demo.svc.cluster.local]
  ports: [{{number: 8080, name: grpc, protocol: GRPC}}]
  resolution: STATIC
  workloadSelector: {{labels: {{app: greeter}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: greeter, namespace: demo}}
spec: {{address: 127.0.{net}.5, ports: {{grpc: 15052}}, labels: {{app: greeter}}, serviceAccount: greeter}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: other, namespace: demo}}
spec: {{address: 127.0.{net}.6, labels: {{app: other}}, serviceAccount: other}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: greeter, namespace: demo}}
spec:
  selector: {{matchLabels: {{app: greeter}}}}
  rules: [{{from: [{{source: {{principals: [cluster.local/ns/demo/sa/client]}}}}]}}]
"#
    ));
    yaml
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_rust_services_call_each_other_over_mtls() {
    use http_body_util::BodyExt as _;
    let net = 94;
    let mesh = Mesh::start(&with_greeter(net, SPLIT)).await;
    let v1 = mesh.agent("echo-v1", "echo").await;
    let v2 = mesh.agent("echo-v2", "echo").await;
    let client = mesh.agent("client", "client").await;
    let other = mesh.agent("other", "other").await;
    let _s1 = server(&v1, &format!("127.0.{net}.2:15051"), "v1");
    let _s2 = server(&v2, &format!("127.0.{net}.3:15051"), "v2");

    // The Rust service, following the same control plane (its identity
    // from files the mesh's CA issued; its configuration over xDS).
    let certs = mesh.world.path("certs-greeter");
    support::write_identity(
        &mesh.world.ca,
        &id("demo", "greeter"),
        time::OffsetDateTime::now_utc(),
        None,
        &certs,
    );
    let rust = mesh_tower::Mesh::builder()
        .control_plane(mesh.plane.ca_addr().to_string())
        .workload("demo", "greeter")
        .identity_files(
            certs.join("cert.pem"),
            certs.join("key.pem"),
            certs.join("bundle.pem"),
        )
        .build()
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind(format!("127.0.{net}.5:15052"))
        .await
        .unwrap();
    let served = rust
        .serve_listener(listener, tower::service_fn(greeter))
        .unwrap();

    // Python → Rust: mTLS both ways, the caller's SPIFFE ID seen by the
    // Rust handler.
    let greeter_target = "xds:///greeter.demo.svc.cluster.local:8080";
    let (out, _) = run(
        client.bootstrap_path(),
        strings(&["call", greeter_target, "5", "--warmup", "30", "--wait"]),
    )
    .await;
    assert_eq!(count(&out, "answers", "rust"), 5, "{out}");
    assert_eq!(
        out["details"][0]["peer"],
        serde_json::json!([id("demo", "client").to_string()]),
        "{out}"
    );
    // A Python client the policy does not name: refused by the Rust side.
    let (out, _) = run(
        other.bootstrap_path(),
        strings(&["call", greeter_target, "3", "--warmup", "5"]),
    )
    .await;
    assert_eq!(count(&out, "errors", "PERMISSION_DENIED"), 3, "{out}");

    // Rust → Python: the mesh client routes by the same VirtualService
    // (x-canary: 1 goes to v2) and the Python server sees greeter's ID.
    let call = || async {
        let req =
            http::Request::post("http://echo.demo.svc.cluster.local:8080/mesh.test.Echo/Hello")
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .header("x-canary", "1")
                .body(mesh_tower::body::full(grpc_frame(b"from rust")))
                .unwrap();
        let resp = rust.send(req).await;
        assert_eq!(resp.status(), 200);
        let collected = resp.into_body().collect().await.unwrap();
        let trailers = collected.trailers().cloned().unwrap_or_default();
        assert_eq!(trailers.get("grpc-status").unwrap(), "0", "{trailers:?}");
        let bytes = collected.to_bytes();
        let answer: serde_json::Value = serde_json::from_slice(&bytes[5..]).unwrap();
        assert_eq!(
            answer["peer"],
            serde_json::json!([id("demo", "greeter").to_string()]),
            "{answer}"
        );
        answer["name"].as_str().unwrap().to_owned()
    };
    for _ in 0..3 {
        assert_eq!(call().await, "v2");
    }
    // An edit at the control plane reaches the Rust client live.
    mesh.world
        .write_config("mesh.yaml", &with_greeter(net, &to_v1(false)));
    let mut got = String::new();
    for _ in 0..200 {
        got = call().await;
        if got == "v1" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(got, "v1", "the edit never reached the Rust client");
    served.shutdown().await;
}
