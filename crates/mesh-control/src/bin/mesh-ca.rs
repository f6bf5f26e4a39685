//! `mesh-ca`: the mesh's certificate authority.
//!
//! ```text
//! mesh-ca init  --dir D [--trust-domain cluster.local] [--import-istio SRC]
//! mesh-ca serve --dir D --listen 127.0.0.1:15012 [--metrics-addr 127.0.0.1:15014] [--config DIR | --kubernetes [--kubeconfig F]] [--serving-dns-name NAME]
//! mesh-ca token --dir D --id spiffe://cluster.local/ns/default/sa/web [--ttl 1h]
//! mesh-ca issue --dir D --id spiffe://cluster.local/ns/default/sa/web --out DIR [--ttl 24h] [--dns web.example]
//! ```
//!
//! `serve` runs a [`mesh_control::ControlPlane`] until SIGTERM or ctrl-c,
//! then drains it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use mesh_ca::{CertificateAuthority, LeafPolicy, TokenStore};
use mesh_control::{ConfigServer, ControlPlane, ControlPlaneConfig};
use mesh_core::identity::{SpiffeId, TrustDomain};

#[derive(Debug, Parser)]
#[command(
    name = "mesh-ca",
    version,
    about = "The mesh's certificate authority (Istio's CA protocol)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start and matched at once: the size of `Serve`'s flags
// costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Create a root CA (ECDSA P-256) in DIR, or import a CA given in Istio's
    /// plug-in layout (ca-cert.pem, ca-key.pem, root-cert.pem, cert-chain.pem).
    Init {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value = "cluster.local")]
        trust_domain: String,
        /// A folder with Istio's plug-in CA files to import instead of
        /// creating a root.
        #[arg(long, value_name = "SRC")]
        import_istio: Option<PathBuf>,
    },
    /// Serve Istio's CreateCertificate over TLS.
    Serve {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value = "127.0.0.1:15012")]
        listen: String,
        /// Also serve Prometheus metrics in plain HTTP at /metrics on this
        /// address (istiod's monitoring port is 15014).
        #[arg(long, value_name = "ADDR")]
        metrics_addr: Option<String>,
        /// The lifetime of a workload certificate whose request names none
        /// (Istio's `DEFAULT_WORKLOAD_CERT_TTL`): 90s, 15m, 1h, 7d.
        #[arg(long, env = "DEFAULT_WORKLOAD_CERT_TTL", default_value = "24h", value_parser = parse_duration)]
        default_workload_cert_ttl: Duration,
        /// The longest lifetime granted, whatever a request asks (Istio's
        /// `MAX_WORKLOAD_CERT_TTL`; Istio's default is 90 days, ours 24 h).
        #[arg(long, env = "MAX_WORKLOAD_CERT_TTL", default_value = "24h", value_parser = parse_duration)]
        max_workload_cert_ttl: Duration,
        /// Also serve the mesh's configuration from this file or folder
        /// (Istio YAML, as `mesh-proxy --config` reads it) to every data
        /// plane over xDS on the same port, reloaded when it changes.
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
        /// Read the mesh's configuration from the Kubernetes cluster this
        /// runs in (its service account; or `--kubeconfig`, or `KUBECONFIG`):
        /// Istio's CRDs, Services, EndpointSlices, Pods, and the MeshConfig
        /// ConfigMap; and accept the workloads' service-account tokens
        /// (TokenReview) for their first certificate.
        #[arg(long, conflicts_with = "config")]
        kubernetes: bool,
        /// The kubeconfig file for `--kubernetes` (default: in-cluster, then
        /// `KUBECONFIG`, then `~/.kube/config`).
        #[arg(long, value_name = "FILE", requires = "kubernetes")]
        kubeconfig: Option<PathBuf>,
        /// The control plane's namespace: where its MeshConfig ConfigMap is.
        #[arg(long, env = "POD_NAMESPACE", default_value = "mesh-system")]
        namespace: String,
        /// The ConfigMap holding the MeshConfig (key `mesh.yaml`), in
        /// `--namespace`; defaults apply while there is none.
        #[arg(long, value_name = "NAME", default_value = "mesh-config")]
        mesh_config_map: String,
        /// The cluster's DNS domain (Services are `name.ns.svc.DOMAIN`); a
        /// MeshConfig `clusterDomain` wins.
        #[arg(long, default_value = "cluster.local")]
        cluster_domain: String,
        /// The audience a service-account token must be for (Istio's).
        #[arg(long, default_value = mesh_kube::tokenreview::DEFAULT_AUDIENCE)]
        token_audience: String,
        /// A host name to put in the CA's serving certificate, for clients
        /// that verify the server by the name they dial (gRPC's proxyless
        /// clients: the `server_uri` of their bootstrap). Repeatable.
        #[arg(long, value_name = "NAME")]
        serving_dns_name: Vec<String>,
        /// With `--kubernetes`: serve the sidecar injector's admission
        /// webhook here (HTTPS, `POST /inject`, the CA's serving
        /// certificate, so its DNS name must be a `--serving-dns-name`, and
        /// the webhook configuration's caBundle the mesh root).
        #[arg(long, value_name = "ADDR", requires = "kubernetes")]
        injector_listen: Option<String>,
        /// The image injected pods run `mesh-proxy` from.
        #[arg(
            long,
            value_name = "IMAGE",
            default_value = "mesh-proxy:0.1.0",
            requires = "injector_listen"
        )]
        proxy_image: String,
        /// The control plane as injected sidecars dial it (`host:port`; the
        /// host must be a `--serving-dns-name`).
        #[arg(
            long,
            value_name = "ADDR",
            default_value = "mesh-control.mesh-system.svc:15012",
            requires = "injector_listen"
        )]
        injected_control_plane: String,
    },
    /// Print a single-use join token bound to one identity.
    Token {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        id: String,
        #[arg(long, default_value = "1h", value_parser = parse_duration)]
        ttl: Duration,
    },
    /// Write cert.pem, key.pem and bundle.pem for an identity, offline.
    Issue {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        id: String,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, value_parser = parse_duration)]
        ttl: Option<Duration>,
        /// Also name this host in a DNS SAN (repeatable), for servers that
        /// non-mesh clients such as curl verify by host name.
        #[arg(long = "dns", value_name = "NAME")]
        dns_names: Vec<String>,
    },
}

/// `90`, `90s`, `15m`, `1h`, `7d`.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, ""), |i| s.split_at(i));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 90s, 15m, 1h or 7d"))?;
    let secs = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("unknown unit {unit:?} in {s:?}; use s, m, h or d")),
    };
    Ok(Duration::from_secs(n.saturating_mul(secs)))
}

fn spiffe_id(ca: &CertificateAuthority, id: &str) -> Result<SpiffeId> {
    let id = SpiffeId::parse(id).with_context(|| format!("--id {id}"))?;
    if id.trust_domain() != ca.trust_domain() {
        bail!(
            "{id} is not in this CA's trust domain {}",
            ca.trust_domain()
        );
    }
    Ok(id)
}

fn write(path: &Path, contents: &str, mode: u32) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .with_context(|| path.display().to_string())?;
    f.set_permissions(std::fs::Permissions::from_mode(mode))?;
    f.write_all(contents.as_bytes())
        .with_context(|| path.display().to_string())
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Init {
            dir,
            trust_domain,
            import_istio,
        } => {
            let td = TrustDomain::new(&trust_domain)
                .with_context(|| format!("--trust-domain {trust_domain}"))?;
            let ca = match import_istio {
                Some(src) => CertificateAuthority::import_istio_dir(&dir, &src, td)?,
                None => CertificateAuthority::init_dir(&dir, td)?,
            };
            println!(
                "CA for trust domain {} in {} (root: {})",
                ca.trust_domain(),
                dir.display(),
                dir.join(mesh_ca::ROOT_CERT_FILE).display()
            );
        }
        Command::Serve {
            dir,
            listen,
            metrics_addr,
            config,
            default_workload_cert_ttl,
            max_workload_cert_ttl,
            serving_dns_name,
            kubernetes,
            kubeconfig,
            namespace,
            mesh_config_map,
            cluster_domain,
            token_audience,
            injector_listen,
            proxy_image,
            injected_control_plane,
        } => {
            if default_workload_cert_ttl > max_workload_cert_ttl
                || default_workload_cert_ttl.is_zero()
            {
                bail!(
                    "--default-workload-cert-ttl ({default_workload_cert_ttl:?}) must be more than \
                     zero and at most --max-workload-cert-ttl ({max_workload_cert_ttl:?})"
                );
            }
            let ca = Arc::new(
                CertificateAuthority::open_dir(&dir)?.with_policy(LeafPolicy {
                    default_ttl: default_workload_cert_ttl,
                    max_ttl: max_workload_cert_ttl,
                    ..LeafPolicy::default()
                }),
            );
            let identity = mesh_ca::service::ca_identity(&ca)?;
            let listener = tokio::net::TcpListener::bind(&listen)
                .await
                .with_context(|| format!("--listen {listen}"))?;
            let tokens = TokenStore::new(&dir);
            let settings = ControlPlaneConfig {
                serving_dns_names: serving_dns_name,
                ..ControlPlaneConfig::default()
            };
            // Kept for the life of the process: dropping them stops the
            // watches and the root's publication.
            let mut kube_source = None;
            let mut root_publisher = None;
            let mut plane = match &config {
                Some(path) => {
                    let xds = ConfigServer::from_files(path)
                        .with_context(|| format!("--config {}", path.display()))?;
                    ControlPlane::start_serving(ca, tokens, listener, settings, xds).await?
                }
                None if kubernetes => {
                    let client = mesh_kube::client::client(kubeconfig.as_deref(), None)
                        .await
                        .map_err(|e| anyhow::anyhow!("--kubernetes: {e}"))?;
                    let options = mesh_kube::KubeOptions {
                        cluster_domain,
                        mesh_config: Some((namespace, mesh_config_map)),
                        // The Events' reportingInstance: this replica's pod
                        // (the Deployment passes it from the downward API).
                        instance: std::env::var("POD_NAME")
                            .unwrap_or_else(|_| "mesh-control".to_owned()),
                    };
                    let source =
                        Arc::new(mesh_kube::KubeSource::start(client.clone(), options).await);
                    let xds = ConfigServer::from_source(source.clone(), source.changes())?;
                    kube_source = Some(source);
                    let root_file = dir.join(mesh_ca::ROOT_CERT_FILE);
                    let root = std::fs::read_to_string(&root_file)
                        .with_context(|| format!("reading {}", root_file.display()))?;
                    root_publisher = Some(mesh_kube::rootcert::RootPublisher::start(
                        client.clone(),
                        root,
                    ));
                    let reviewer = Arc::new(mesh_kube::TokenReviewer::new(
                        client,
                        token_audience.clone(),
                    ));
                    let inject = mesh_kube::inject::InjectConfig {
                        proxy_image,
                        control_plane: injected_control_plane,
                        trust_domain: ca.trust_domain().as_str().to_owned(),
                        token_audience,
                        ..mesh_kube::inject::InjectConfig::default()
                    };
                    let plane = ControlPlane::start_on_kubernetes(
                        ca, tokens, listener, settings, xds, reviewer,
                    )
                    .await?;
                    match &injector_listen {
                        Some(addr) => {
                            let l = tokio::net::TcpListener::bind(addr)
                                .await
                                .with_context(|| format!("--injector-listen {addr}"))?;
                            plane.with_injector(l, inject)?
                        }
                        None => plane,
                    }
                }
                None => ControlPlane::start(ca, tokens, listener, settings).await?,
            };
            let stop = shutdown_signal()?;
            if let Some(addr) = metrics_addr {
                let listener = tokio::net::TcpListener::bind(&addr)
                    .await
                    .with_context(|| format!("--metrics-addr {addr}"))?;
                plane = plane.with_metrics(listener)?;
            }
            tracing::info!(
                addr = %plane.ca_addr(),
                %identity,
                "mesh-ca serving istio.v1.auth.IstioCertificateService"
            );
            if let Some(path) = &config {
                tracing::info!(
                    addr = %plane.ca_addr(),
                    config = %path.display(),
                    "serving the configuration over delta ADS, and to gRPC's proxyless clients over ADS"
                );
            }
            // Read by scripts and tests: the first line is the CA's address.
            println!("listening on {}", plane.ca_addr());
            if let Some(addr) = plane.metrics_addr() {
                tracing::info!(%addr, "metrics at /metrics");
                println!("metrics on {addr}");
            }
            if let Some(addr) = plane.injector_addr() {
                tracing::info!(%addr, "sidecar injector at POST /inject");
                println!("injector on {addr}");
            }
            if kube_source.is_some() {
                tracing::info!(
                    addr = %plane.ca_addr(),
                    "serving the configuration read from the Kubernetes API"
                );
            }
            stop.await;
            tracing::info!("draining");
            plane.shutdown().await;
            drop(kube_source);
            drop(root_publisher);
        }
        Command::Token { dir, id, ttl } => {
            let ca = CertificateAuthority::open_dir(&dir)?;
            let id = spiffe_id(&ca, &id)?;
            let token = TokenStore::new(&dir).create(&id, ttl)?;
            println!("{token}");
        }
        Command::Issue {
            dir,
            id,
            out,
            ttl,
            dns_names,
        } => {
            let ca = CertificateAuthority::open_dir(&dir)?;
            let id = spiffe_id(&ca, &id)?;
            let now = time::OffsetDateTime::now_utc();
            let (svid, key) = ca.issue_with_new_key_and_dns_names(&id, &dns_names, ttl, now)?;
            std::fs::create_dir_all(&out).with_context(|| out.display().to_string())?;
            let pems = svid.istio_chain_pem();
            let (chain, bundle) = pems.split_at(1 + svid.intermediates.len());
            write(&out.join("cert.pem"), &chain.concat(), 0o644)?;
            write(&out.join("key.pem"), &key, 0o600)?;
            write(&out.join("bundle.pem"), &bundle.concat(), 0o644)?;
            println!("{id} until {} in {}", svid.not_after, out.display());
        }
    }
    Ok(())
}

/// SIGTERM or ctrl-c. SIGTERM is registered here, before the caller says
/// it is listening, so a supervisor that stops it right after that line is
/// not met by the default action (dying undrained).
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    Ok(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term.recv() => {},
        }
    })
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(run(cli))
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86400)));
        assert!(parse_duration("1w").is_err());
        assert!(parse_duration("h").is_err());
    }
}
