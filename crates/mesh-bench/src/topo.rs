//! The topologies: what runs, on which ports, and how the load generator
//! reaches it. (d-capture)'s pods are in `capture`.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, anyhow};
use clap::ValueEnum;
use serde::Serialize;

use crate::certs::{CLIENT_SA, Certs, SERVER_SA};
use crate::client::{SERVICE_HOST, Target};
use crate::load::Generator;
use crate::procs::{Proc, free_ports, wait_for_port};
use crate::thirdparty;

/// A topology of issue 7.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
pub(crate) enum Topology {
    /// Plain hyper client and server, no TLS.
    A,
    /// The same with rustls mTLS.
    B,
    /// The mesh's layers in-process at both ends.
    C,
    /// (c) with a JWT on every request, validated by the server's
    /// RequestAuthentication (ES256, inline key set) and required by a DENY
    /// `notRequestPrincipals: ["*"]`.
    #[value(name = "c-jwt")]
    CJwt,
    /// client → mesh-proxy outbound → mTLS → mesh-proxy inbound → app.
    D,
    /// (d) in transparent capture mode: client, sidecars and app in two
    /// pods (network namespaces) with `mesh-proxy init`'s rules, the client
    /// dialling the service's virtual IP. Root only.
    #[value(name = "d-capture")]
    DCapture,
    /// (d) with MeshConfig `h2UpgradePolicy: UPGRADE`: the sidecars speak
    /// HTTP/2 to each other, every request a stream of one connection,
    /// where (d) keeps Istio's default (HTTP/1.1 over a pool of
    /// connections, one request at a time on each).
    #[value(name = "d-h2")]
    DH2,
    /// The same two hops with nginx.
    E1,
    /// The same two hops with HAProxy.
    E2,
}

impl Topology {
    pub(crate) const ALL: [Self; 9] = [
        Self::A,
        Self::B,
        Self::C,
        Self::CJwt,
        Self::D,
        Self::DH2,
        Self::DCapture,
        Self::E1,
        Self::E2,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::A => "a",
            Self::B => "b",
            Self::C => "c",
            Self::CJwt => "c-jwt",
            Self::D => "d",
            Self::DCapture => "d-capture",
            Self::DH2 => "d-h2",
            Self::E1 => "e1",
            Self::E2 => "e2",
        }
    }

    pub(crate) fn describe(self) -> &'static str {
        match self {
            Self::A => "hyper, no TLS",
            Self::B => "hyper + rustls mTLS",
            Self::C => "proxyless mesh layers",
            Self::CJwt => "proxyless mesh layers, a JWT validated per request",
            Self::D => "mesh-proxy sidecars",
            Self::DCapture => "mesh-proxy sidecars, capture mode (pods, nftables)",
            Self::DH2 => "mesh-proxy sidecars, HTTP/2 between them (h2UpgradePolicy)",
            Self::E1 => "nginx two hops",
            Self::E2 => "HAProxy two hops",
        }
    }
}

/// Where the programs are.
#[derive(Debug, Clone)]
pub(crate) struct Programs {
    /// This binary (for `serve`).
    pub(crate) bench: PathBuf,
    pub(crate) mesh_proxy: PathBuf,
    /// A command the sidecars run under (`valgrind --tool=callgrind ...`),
    /// `{name}` replaced by the sidecar's name.
    pub(crate) sidecar_wrapper: Option<String>,
    /// (c) served by a task of this process rather than a process of its
    /// own (`profile`: one callgrind run sees both ends).
    pub(crate) in_process_server: bool,
}

/// A started topology.
#[derive(Debug)]
pub(crate) struct Running {
    /// How the load generator reaches the first hop.
    pub(crate) load: Generator,
    /// The mTLS server whose idle connections are counted, and its process.
    pub(crate) mtls_server: Option<(Generator, usize)>,
    /// Every process of the system under test, all measured.
    pub(crate) procs: Vec<Proc>,
    /// (d-capture)'s network namespaces, removed after the processes.
    pub(crate) pods: Option<crate::capture::Pods>,
}

impl Running {
    /// The in-process client, for what only runs here (`profile`).
    pub(crate) fn local_target(&self) -> Option<&Target> {
        match &self.load {
            Generator::Here(t) => Some(t),
            Generator::InPod(_) => None,
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // Processes first: a namespace is only gone once nothing runs in it.
        self.procs.clear();
        self.pods.take();
    }
}

fn s(x: impl ToString) -> String {
    x.to_string()
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// The mesh configuration of (c) and (d): the bench service backed by the
/// server workload on `server_port`, the client workload, STRICT mTLS, and a
/// policy letting only the client in.
pub(crate) fn write_mesh_config(
    dir: &Path,
    server_port: u16,
    client_port: u16,
    h2_upgrade: bool,
) -> Result<()> {
    write_mesh_config_for(
        dir,
        &MeshLayout {
            vip: None,
            server: (Ipv4Addr::LOCALHOST, server_port),
            client: Ipv4Addr::LOCALHOST,
            client_port: Some(client_port),
            h2_upgrade,
        },
    )
}

/// Adds to the configuration in `dir` a RequestAuthentication of the
/// server (an ES256 key set made here, inline) and a DENY of requests
/// without a valid token; returns a token of that issuer, valid for a day,
/// as an `Authorization` value.
fn require_jwt(dir: &Path) -> Result<http::HeaderValue> {
    let (key, jwks) = mesh_core::jwt::test_es256_key("bench-1").map_err(|e| anyhow!(e))?;
    let jwks = serde_json::to_string(&jwks)?;
    let extra = format!(
        r#"---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata:
  name: bench-jwt
spec:
  selector:
    matchLabels:
      app: {SERVER_SA}
  jwtRules:
  - issuer: https://idp.bench.example
    jwks: {jwks}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: bench-needs-token
spec:
  selector:
    matchLabels:
      app: {SERVER_SA}
  action: DENY
  rules:
  - from:
    - source:
        notRequestPrincipals: ["*"]
"#
    );
    let path = dir.join("mesh.yaml");
    let mut yaml = std::fs::read_to_string(&path)?;
    yaml.push_str(&extra);
    std::fs::write(&path, yaml)?;
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        + 86_400;
    let claims = serde_json::json!({
        "iss": "https://idp.bench.example", "sub": "bench-client", "aud": "bench", "exp": exp,
        "groups": ["bench", "load"],
    });
    let token = mesh_core::jwt::sign_for_test(
        mesh_core::jwt::Algorithm::ES256,
        Some("bench-1"),
        &key,
        &claims,
    )
    .map_err(|e| anyhow!(e))?;
    Ok(http::HeaderValue::from_str(&format!("Bearer {token}"))?)
}

/// Where the workloads of the mesh configuration are.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MeshLayout {
    /// The service's virtual IP (ServiceEntry `addresses`), for capture.
    pub(crate) vip: Option<Ipv4Addr>,
    /// The server workload's address and its `http` port.
    pub(crate) server: (Ipv4Addr, u16),
    pub(crate) client: Ipv4Addr,
    /// The client workload's `http` port (its explicit inbound listener).
    pub(crate) client_port: Option<u16>,
    /// MeshConfig `h2UpgradePolicy: UPGRADE` ((d-h2)).
    pub(crate) h2_upgrade: bool,
}

/// The same configuration for any layout: (d-capture) differs from (d) only
/// in addresses (the pods', and the virtual IP).
pub(crate) fn write_mesh_config_for(dir: &Path, at: &MeshLayout) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let addresses = at
        .vip
        .map(|ip| format!("  addresses:\n  - {ip}\n"))
        .unwrap_or_default();
    let (server_ip, server_port) = at.server;
    let client_ip = at.client;
    let client_ports = at
        .client_port
        .map(|p| format!("  ports:\n    http: {p}\n"))
        .unwrap_or_default();
    let upgrade = if at.h2_upgrade {
        "  h2UpgradePolicy: UPGRADE\n"
    } else {
        ""
    };
    let yaml = format!(
        r#"apiVersion: mesh.config/v1alpha1
kind: MeshConfig
metadata:
  name: mesh
spec:
  trustDomain: cluster.local
  defaultMtlsMode: STRICT
{upgrade}---
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata:
  name: bench
spec:
  hosts:
  - {SERVICE_HOST}
{addresses}  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - number: 80
    name: http
    protocol: HTTP
  workloadSelector:
    labels:
      app: {SERVER_SA}
---
apiVersion: networking.istio.io/v1beta1
kind: WorkloadEntry
metadata:
  name: {SERVER_SA}
spec:
  address: {server_ip}
  ports:
    http: {server_port}
  labels:
    app: {SERVER_SA}
  serviceAccount: {SERVER_SA}
---
apiVersion: networking.istio.io/v1beta1
kind: WorkloadEntry
metadata:
  name: {CLIENT_SA}
spec:
  address: {client_ip}
{client_ports}  labels:
    app: {CLIENT_SA}
  serviceAccount: {CLIENT_SA}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: bench-from-client
spec:
  selector:
    matchLabels:
      app: {SERVER_SA}
  action: ALLOW
  rules:
  - from:
    - source:
        principals:
        - cluster.local/ns/default/sa/{CLIENT_SA}
"#
    );
    std::fs::write(dir.join("mesh.yaml"), yaml)?;
    Ok(())
}

/// Starts `topology` with its processes on `core`.
pub(crate) async fn start(
    topology: Topology,
    programs: &Programs,
    certs: &Certs,
    work: &Path,
    core: Option<usize>,
    max_connections: usize,
) -> Result<Running> {
    let dir = work.join(topology.name());
    std::fs::create_dir_all(&dir)?;
    let ports = free_ports(6)?;
    let client_creds = certs.client.store()?;
    let id_args = |files: &crate::certs::IdentityFiles| {
        vec![
            s("--cert"),
            s(files.cert.display()),
            s("--key"),
            s(files.key.display()),
            s("--bundle"),
            s(files.bundle.display()),
        ]
    };
    let serve = |name: &str, mode: &str, port: u16, extra: Vec<String>| {
        let mut args = vec![
            s("serve"),
            s("--mode"),
            s(mode),
            s("--listen"),
            s(addr(port)),
        ];
        args.extend(extra);
        Proc::spawn(name, core, &programs.bench, &args, &[], &dir)
    };
    let (first_port, mut procs, target, mtls) = match topology {
        Topology::A => {
            let p = serve("server", "plain", ports[0], vec![])?;
            (
                ports[0],
                vec![p],
                Target::Plain {
                    addr: addr(ports[0]),
                },
                None,
            )
        }
        Topology::B => {
            let p = serve("server", "tls", ports[0], id_args(&certs.server))?;
            let t = Target::mtls(addr(ports[0]), &client_creds)?;
            (ports[0], vec![p], t.clone(), Some((t, 0)))
        }
        Topology::C | Topology::CJwt => {
            let config = dir.join("mesh");
            write_mesh_config(&config, ports[0], ports[1], false)?;
            let token = if topology == Topology::CJwt {
                Some(require_jwt(&config)?)
            } else {
                None
            };
            let mut extra = id_args(&certs.server);
            extra.extend([s("--config"), s(config.display())]);
            // What the client workload's sidecar would compile: its view.
            let source = mesh_core::store::FileSource::new(&config)
                .seen_by_workload(format!("default/{}", crate::certs::CLIENT_SA));
            let store = mesh_core::store::Store::from_source(&source)
                .map_err(|e| anyhow!("mesh configuration: {e}"))?;
            let t = Target::mesh(Arc::new(store), client_creds.clone(), token);
            if programs.in_process_server {
                crate::serve::spawn_mesh(addr(ports[0]), &certs.server, &config).await?;
                (ports[0], vec![], t, None)
            } else {
                let p = serve("server", "mesh", ports[0], extra)?;
                // Idle connections are (c)'s figure; (c-jwt)'s server
                // refuses the plain client's token-less requests anyway.
                let idle = (topology == Topology::C)
                    .then(|| Target::mtls(addr(ports[0]), &client_creds))
                    .transpose()?
                    .map(|t| (t, 0));
                (ports[0], vec![p], t, idle)
            }
        }
        Topology::D | Topology::DH2 => {
            let (app, a_inbound, b_inbound, a_proxy, a_admin, b_admin) =
                (ports[0], ports[1], ports[2], ports[3], ports[4], ports[5]);
            let config = dir.join("mesh");
            write_mesh_config(&config, b_inbound, a_inbound, topology == Topology::DH2)?;
            let app_proc = serve("app", "plain", app, vec![])?;
            let sidecar = |name: &str, workload: &str, admin: u16, http_proxy: String, files| {
                let mut args = vec![
                    s("sidecar"),
                    s("--config"),
                    s(config.display()),
                    s("--workload"),
                    s(workload),
                    s("--app"),
                    s(addr(app)),
                    s("--admin"),
                    s(addr(admin)),
                    s("--http-proxy"),
                    http_proxy,
                    s("--drain-timeout"),
                    s(1),
                ];
                args.extend(id_args(files));
                let (program, args) = match &programs.sidecar_wrapper {
                    Some(w) => {
                        let mut words = w.replace("{name}", name);
                        words.push(' ');
                        words.push_str(&programs.mesh_proxy.display().to_string());
                        let mut words: Vec<String> =
                            words.split_whitespace().map(str::to_owned).collect();
                        let program = PathBuf::from(words.remove(0));
                        words.extend(args);
                        (program, words)
                    }
                    None => (programs.mesh_proxy.clone(), args),
                };
                // Access log off: it is an `info` event.
                Proc::spawn(name, core, &program, &args, &[("RUST_LOG", "warn")], &dir)
            };
            let b = sidecar("sidecar-b", SERVER_SA, b_admin, s("off"), &certs.server)?;
            let a = sidecar(
                "sidecar-a",
                CLIENT_SA,
                a_admin,
                s(addr(a_proxy)),
                &certs.client,
            )?;
            let idle = Target::mtls(addr(b_inbound), &client_creds)?;
            let mut procs = vec![a, b, app_proc];
            wait_for_port(b_inbound, &mut procs, &dir).await?;
            (
                a_proxy,
                procs,
                Target::Plain {
                    addr: addr(a_proxy),
                },
                Some((idle, 1)),
            )
        }
        // Pods of their own, and a load generator inside pod A.
        Topology::DCapture => return crate::capture::start(programs, certs, &dir, core).await,
        Topology::E1 | Topology::E2 => {
            let (app, a_port, b_port) = (ports[0], ports[1], ports[2]);
            let app_proc = serve("app", "plain", app, vec![])?;
            let (a, b) = if topology == Topology::E1 {
                thirdparty::nginx(&dir, certs, core, app, a_port, b_port)?
            } else {
                thirdparty::haproxy(&dir, certs, core, app, a_port, b_port, max_connections)?
            };
            let idle = Target::mtls(addr(b_port), &client_creds)?;
            let mut procs = vec![a, b, app_proc];
            wait_for_port(b_port, &mut procs, &dir).await?;
            (
                a_port,
                procs,
                Target::Plain { addr: addr(a_port) },
                Some((idle, 1)),
            )
        }
    };
    wait_for_port(first_port, &mut procs, &dir)
        .await
        .with_context(|| format!("starting topology {}", topology.name()))?;
    // One request through, to be sure the path works end to end.
    let mut conn = target.connect(false).await?;
    if let Err(e) = conn.send().await {
        let logs: Vec<String> = procs
            .iter()
            .map(|p| {
                let log = std::fs::read_to_string(dir.join(format!("{}.log", p.name)))
                    .unwrap_or_default();
                format!("--- {}\n{log}", p.name)
            })
            .collect();
        return Err(anyhow!(
            "topology {}: the first request failed: {e:#}\n{}",
            topology.name(),
            logs.join("\n")
        ));
    }
    Ok(Running {
        load: Generator::Here(target),
        mtls_server: mtls.map(|(t, i)| (Generator::Here(t), i)),
        procs,
        pods: None,
    })
}
