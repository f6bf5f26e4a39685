//! grpc: a tonic greeter behind the mesh, and an AuthorizationPolicy that
//! lets one caller in and keeps another out.
//!
//! ```text
//! cargo run -p examples --bin grpc
//! ```
//!
//! The greeter (`helloworld.Greeter/SayHello`, `proto/helloworld.proto`) is
//! tonic's generated server, served as is by `Mesh::serve`. Two workloads
//! call it with tonic's generated client over `Mesh::client`: `frontend`,
//! whom the policy allows, and `intruder`, whom it does not. Both have valid
//! mesh identities; only the policy tells them apart.
//!
//! How the denial reaches tonic: the mesh answers the intruder as it answers
//! any HTTP request a policy refuses, `403 Forbidden` with the reason in
//! `x-mesh-reason` and a text body. tonic takes the body for a gRPC frame and
//! reports `Internal` ("invalid compression flag: 82 ... 403 Forbidden"),
//! with the reason header in the status's metadata. A gRPC-aware denial
//! (HTTP 200, trailers-only, `grpc-status: 7`, as Envoy's RBAC filter does)
//! would show as `PermissionDenied`.
//!
//! The output is plain text with `key: value` lines a test reads; the
//! program exits non-zero unless the frontend got its reply and the intruder
//! was refused.

use std::path::Path;

use anyhow::{Context, bail};
use examples::helloworld::greeter_client::GreeterClient;
use examples::helloworld::greeter_server::{Greeter, GreeterServer};
use examples::helloworld::{HelloReply, HelloRequest};
use examples::{IdentityFiles, LocalCa, free_ports, samples};
use mesh_tower::Mesh;
use mesh_tower::tls::PeerIdentity;

const NAMESPACE: &str = "default";

fn mesh_yaml(greeter_port: u16) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: greeter, namespace: {NAMESPACE}}}
spec:
  hosts: [greeter]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - {{number: 50051, name: grpc, protocol: GRPC}}
  workloadSelector:
    labels: {{app: greeter}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: greeter, namespace: {NAMESPACE}}}
spec:
  address: 127.0.0.1
  ports: {{grpc: {greeter_port}}}
  labels: {{app: greeter}}
  serviceAccount: greeter
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: frontend, namespace: {NAMESPACE}}}
spec: {{address: 127.0.0.1, labels: {{app: frontend}}, serviceAccount: frontend}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: intruder, namespace: {NAMESPACE}}}
spec: {{address: 127.0.0.1, labels: {{app: intruder}}, serviceAccount: intruder}}
---
# Only the frontend may call the greeter: with an ALLOW policy in place,
# everyone it does not name is denied.
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: greeter, namespace: {NAMESPACE}}}
spec:
  selector:
    matchLabels: {{app: greeter}}
  action: ALLOW
  rules:
  - from:
    - source:
        principals: [cluster.local/ns/{NAMESPACE}/sa/frontend]
    to:
    - operation:
        paths: [/helloworld.Greeter/*]
"#
    )
}

/// The greeter: greets the caller by name and by verified identity.
#[derive(Debug, Default)]
struct MeshGreeter;

#[tonic::async_trait]
impl Greeter for MeshGreeter {
    async fn say_hello(
        &self,
        request: tonic::Request<HelloRequest>,
    ) -> Result<tonic::Response<HelloReply>, tonic::Status> {
        // tonic keeps the HTTP request's extensions: the mesh's PeerIdentity
        // is there.
        let caller = request
            .extensions()
            .get::<PeerIdentity>()
            .and_then(PeerIdentity::spiffe_id)
            .map_or_else(|| "unverified".to_owned(), ToString::to_string);
        let name = request.into_inner().name;
        Ok(tonic::Response::new(HelloReply {
            message: format!("Hello {name}, you are {caller}"),
        }))
    }
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

/// Calls SayHello as `who`, through the mesh.
async fn say_hello(mesh: &Mesh, who: &str) -> anyhow::Result<Result<String, tonic::Status>> {
    let mut client = GreeterClient::with_origin(mesh.client(), "http://greeter:50051".parse()?);
    let request = HelloRequest { name: who.into() };
    Ok(client
        .say_hello(request)
        .await
        .map(|r| r.into_inner().message))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let ca = LocalCa::init(tmp.path(), "cluster.local")?;
    let [port] = free_ports::<1>()?;
    let config = tmp.path().join("mesh");
    std::fs::create_dir_all(&config)?;
    std::fs::write(config.join("greeter.yaml"), mesh_yaml(port))?;

    // The greeter: tonic's generated server, unchanged, behind the mesh.
    let greeter = mesh(&config, "greeter", &ca.issue(NAMESPACE, "greeter")?).await?;
    let server = greeter
        .serve(
            ([127, 0, 0, 1], port).into(),
            GreeterServer::new(MeshGreeter),
        )
        .await?;
    println!(
        "server: greeter on {} as {}",
        server.local_addr(),
        greeter.credentials().load().id()
    );

    let frontend = mesh(&config, "frontend", &ca.issue(NAMESPACE, "frontend")?).await?;
    let intruder = mesh(&config, "intruder", &ca.issue(NAMESPACE, "intruder")?).await?;

    println!();
    println!("frontend: as {}", frontend.credentials().load().id());
    let allowed = say_hello(&frontend, "frontend").await?;
    match &allowed {
        Ok(message) => println!("allowed: {message}"),
        Err(status) => println!("refused: code {:?}: {}", status.code(), status.message()),
    }

    println!();
    println!("intruder: as {}", intruder.credentials().load().id());
    let denied = say_hello(&intruder, "intruder").await?;
    match &denied {
        Ok(message) => println!("not denied: {message}"),
        Err(status) => {
            println!("denied code: {:?}", status.code());
            println!("denied message: {}", status.message());
            if let Some(reason) = status.metadata().get(mesh_tower::error::REASON_HEADER) {
                println!("denied reason: {}", reason.to_str().unwrap_or("?"));
            }
        }
    }

    println!();
    println!("metrics (greeter side, reporter=\"destination\"):");
    let text = greeter.registry().render();
    for line in samples(&text, "istio_requests_total") {
        println!("{line}");
    }
    server.shutdown().await;

    if allowed.is_err() {
        bail!("the frontend was refused");
    }
    if denied.is_ok() {
        bail!("the intruder was let in");
    }
    println!();
    println!("grpc: ok");
    Ok(())
}
