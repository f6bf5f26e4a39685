//! hello-mesh: two versions of one service and a client, in one process,
//! meeting over the mesh with no sidecar.
//!
//! ```text
//! cargo run -p examples --bin hello-mesh [REQUESTS]
//! ```
//!
//! - a mesh CA in a temporary folder issues SPIFFE identities
//!   (`sa/hello` for both servers, `sa/client` for the client);
//! - the mesh configuration is Istio YAML (ServiceEntry, WorkloadEntries, a
//!   DestinationRule with ISTIO_MUTUAL and subsets v1/v2, a VirtualService
//!   sending 90% to v1 and 10% to v2), read by each workload's `Mesh`;
//! - `hello-v1` and `hello-v2` answer through `Mesh::serve` with the caller's
//!   verified identity;
//! - the client calls `http://hello/` through `Mesh::client` (default 1000
//!   times) and prints the split, the identities on both sides and its Istio
//!   metrics.
//!
//! The output is plain text with `key: value` lines a test reads; the
//! program exits non-zero if any request fails.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::path::Path;

use anyhow::{Context, bail};
use examples::{IdentityFiles, LocalCa, free_ports, samples};
use http::{Request, Response};
use http_body_util::BodyExt;
use mesh_tower::Mesh;
use mesh_tower::body::{BoxBody, empty, full};
use mesh_tower::error::REASON_HEADER;
use mesh_tower::telemetry::DestinationInfo;
use mesh_tower::tls::PeerIdentity;
use tower::{Service, ServiceExt};

const NAMESPACE: &str = "default";

/// The mesh configuration: what Kubernetes and Istio would hold, written as
/// the same YAML.
fn mesh_yaml(v1_port: u16, v2_port: u16) -> String {
    format!(
        r#"# The service: one host, two versions behind it.
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: hello, namespace: {NAMESPACE}}}
spec:
  hosts: [hello]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - {{number: 80, name: http, protocol: HTTP}}
  workloadSelector:
    labels: {{app: hello}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: hello-v1, namespace: {NAMESPACE}}}
spec:
  address: 127.0.0.1
  ports: {{http: {v1_port}}}
  labels: {{app: hello, version: v1}}
  serviceAccount: hello
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: hello-v2, namespace: {NAMESPACE}}}
spec:
  address: 127.0.0.1
  ports: {{http: {v2_port}}}
  labels: {{app: hello, version: v2}}
  serviceAccount: hello
---
# The caller: a workload of the mesh with an identity of its own.
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: client, namespace: {NAMESPACE}}}
spec:
  address: 127.0.0.1
  labels: {{app: client}}
  serviceAccount: client
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: hello, namespace: {NAMESPACE}}}
spec:
  host: hello
  trafficPolicy:
    tls: {{mode: ISTIO_MUTUAL}}
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
---
# The canary: 90% to v1, 10% to v2.
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: hello, namespace: {NAMESPACE}}}
spec:
  hosts: [hello]
  http:
  - route:
    - destination: {{host: hello, subset: v1}}
      weight: 90
    - destination: {{host: hello, subset: v2}}
      weight: 10
"#
    )
}

async fn mesh(config: &Path, workload: &str, id: &IdentityFiles) -> anyhow::Result<Mesh> {
    Mesh::builder()
        .config(config)
        .workload(NAMESPACE, workload)
        .identity_files(&id.cert, &id.key, &id.bundle)
        .build()
        .await
        .with_context(|| format!("starting the mesh for {workload}"))
}

/// `hello from <version>, you are <caller's SPIFFE ID>`: the mesh put the
/// identity verified in the mTLS handshake in the request.
async fn hello(
    version: &'static str,
    req: Request<BoxBody>,
) -> Result<Response<BoxBody>, Infallible> {
    let caller = req
        .extensions()
        .get::<PeerIdentity>()
        .and_then(PeerIdentity::spiffe_id)
        .map_or_else(|| "unverified".to_owned(), ToString::to_string);
    Ok(Response::new(full(format!(
        "hello from {version}, you are {caller}"
    ))))
}

/// What one call told the client.
struct Answer {
    body: String,
    /// The workload that answered and the identity secure naming required
    /// of it, as the router reports them to telemetry.
    served_by: String,
    server_identity: String,
    mtls: bool,
}

async fn call(client: &mut mesh_tower::MeshClient) -> anyhow::Result<Answer> {
    let req = Request::get("http://hello/").body(empty())?;
    // The mesh client never fails: what goes wrong is answered as a
    // response (503, 504...) with the reason in a header.
    let resp = ServiceExt::<Request<BoxBody>>::ready(client)
        .await?
        .call(req)
        .await?;
    let status = resp.status();
    let dest = resp.extensions().get::<DestinationInfo>().cloned();
    let reason = resp
        .headers()
        .get(REASON_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(anyhow::Error::from_boxed)?
        .to_bytes();
    let body = String::from_utf8_lossy(&body).into_owned();
    if !status.is_success() {
        bail!("http://hello/ answered {status} ({reason}): {body}");
    }
    let workload = dest.as_ref().and_then(|d| d.workload.as_ref());
    Ok(Answer {
        body,
        served_by: workload.map_or_else(|| "unknown".into(), |w| w.name.clone()),
        server_identity: workload.map_or_else(|| "unknown".into(), |w| w.principal.clone()),
        mtls: dest.and_then(|d| d.mtls).unwrap_or(false),
    })
}

fn percent(n: usize, total: usize) -> f64 {
    100.0 * n as f64 / total.max(1) as f64
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let requests: usize = match std::env::args().nth(1) {
        Some(n) => n.parse().context("usage: hello-mesh [REQUESTS]")?,
        None => 1000,
    };

    // 1. Identities, from a CA that lives as long as this program.
    let tmp = tempfile::tempdir()?;
    let ca = LocalCa::init(tmp.path(), "cluster.local")?;
    let hello_id = ca.issue(NAMESPACE, "hello")?;
    let client_id = ca.issue(NAMESPACE, "client")?;
    println!("ca: trust domain {}", ca.trust_domain());

    // 2. The mesh configuration, as Istio YAML.
    let [v1_port, v2_port] = free_ports::<2>()?;
    let config = tmp.path().join("mesh");
    std::fs::create_dir_all(&config)?;
    std::fs::write(config.join("hello.yaml"), mesh_yaml(v1_port, v2_port))?;

    // 3. The two versions of `hello`, each its own workload with its own Mesh.
    let mut servers = Vec::new();
    for (workload, version, port) in [("hello-v1", "v1", v1_port), ("hello-v2", "v2", v2_port)] {
        let mesh = mesh(&config, workload, &hello_id).await?;
        let addr = ([127, 0, 0, 1], port).into();
        let server = mesh
            .serve(addr, tower::service_fn(move |req| hello(version, req)))
            .await?;
        println!(
            "server: {workload} on {} as {}",
            server.local_addr(),
            mesh.credentials().load().id()
        );
        servers.push(server);
    }

    // 4. The client, by service host only: the mesh picks the subset by the
    //    VirtualService's weights, connects with mTLS and checks that the
    //    server is `sa/hello` (secure naming).
    let client_mesh = mesh(&config, "client", &client_id).await?;
    println!("client: as {}", client_mesh.credentials().load().id());
    let mut client = client_mesh.client();
    let mut by_version: BTreeMap<String, usize> = BTreeMap::new();
    let mut callers_seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut servers_seen: BTreeMap<(String, String, bool), usize> = BTreeMap::new();
    let mut first = None;
    for _ in 0..requests {
        let answer = call(&mut client).await?;
        // "hello from v1, you are spiffe://..."
        let Some((from, caller)) = answer
            .body
            .strip_prefix("hello from ")
            .and_then(|rest| rest.split_once(", you are "))
        else {
            bail!("unexpected answer: {}", answer.body);
        };
        *by_version.entry(from.to_owned()).or_default() += 1;
        *callers_seen
            .entry(format!("{from} saw {caller}"))
            .or_default() += 1;
        *servers_seen
            .entry((answer.served_by, answer.server_identity, answer.mtls))
            .or_default() += 1;
        first.get_or_insert(answer.body);
    }
    if let Some(first) = first {
        println!("reply: {first}");
    }

    println!();
    println!("split over {requests} requests (VirtualService hello: v1 90, v2 10):");
    for version in ["v1", "v2"] {
        let n = by_version.get(version).copied().unwrap_or(0);
        println!("split {version}: {n} ({:.1}%)", percent(n, requests));
    }

    println!();
    println!("identities:");
    println!("client identity: {}", client_id.id);
    for ((workload, id, mtls), n) in &servers_seen {
        println!(
            "server identity: {id} (required by secure naming of {workload}, mtls {mtls}, {n} requests)"
        );
    }
    for (seen, n) in &callers_seen {
        println!("caller identity: {seen} ({n} requests)");
    }

    println!();
    println!("metrics (client side, reporter=\"source\"):");
    let text = client_mesh.registry().render();
    for line in samples(&text, "istio_requests_total") {
        println!("{line}");
    }

    for server in servers {
        server.shutdown().await;
    }
    println!();
    println!("hello-mesh: ok");
    Ok(())
}
