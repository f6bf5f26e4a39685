//! `mesh-proxy`: the mesh's binary for workloads that are not Rust, and the
//! configuration tools `check` and `explain`. A thin command line over the
//! `mesh_proxy` library: it parses the flags, binds the ports they name,
//! starts the library's sidecar or gateway on them, and drains on SIGTERM.

#![forbid(unsafe_code)]

mod args;
mod capture;

#[cfg(feature = "tools")]
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The mesh's sidecar, gateway and configuration tools.
#[derive(Debug, Parser)]
#[command(name = "mesh-proxy", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[cfg(feature = "tools")]
/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Output {
    /// Aligned text for people.
    Table,
    /// JSON for tools.
    Json,
}

// Parsed once per process: the sidecar's flags being the larger variant
// (the only one in a sidecar-only build) costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Run beside a workload that is not Rust: inbound mTLS, authorization
    /// and forwarding to the local app; outbound ports and an HTTP proxy.
    Sidecar(args::SidecarArgs),
    /// Install the capture rules in this network namespace (nftables, table
    /// `inet mesh`), as istio-init does: inbound TCP to the sidecar's
    /// inbound capture port, outbound TCP to its outbound capture port,
    /// except the proxy's own traffic. Needs CAP_NET_ADMIN.
    Init(capture::InitArgs),
    #[cfg(feature = "gateway")]
    /// Run a Gateway's servers: HTTP/HTTPS at the edge, routing by the
    /// VirtualServices bound to it, mesh mTLS to the backends.
    Gateway(args::GatewayArgs),
    /// Run beside a proxyless gRPC workload (Istio's pilot-agent): obtain
    /// its SVID from mesh-ca, write it to files gRPC reloads, and write the
    /// xDS bootstrap (`GRPC_XDS_BOOTSTRAP`) pointing gRPC at the control
    /// plane; renew until SIGTERM.
    Agent(args::AgentArgs),
    #[cfg(feature = "tools")]
    /// Add the sidecar to Kubernetes workloads, as `istioctl kube-inject`
    /// does: every Pod template in the YAML (Deployments, StatefulSets,
    /// DaemonSets, Jobs, CronJobs, Pods, Lists) gets `mesh-init` and the
    /// `mesh-proxy` native sidecar; other documents come out unchanged.
    /// Idempotent. Exit status 1, naming the object and field, for a pod
    /// the mesh cannot hold.
    Inject(InjectArgs),
    #[cfg(feature = "tools")]
    /// Check a configuration: the TLS table (server mTLS mode against the
    /// client TLS of DestinationRules, per service port) and the analyzers.
    /// Exit status: 0 clean (warnings allowed), 1 errors or conflicts, 2
    /// configuration unreadable.
    Check {
        /// A YAML file or a folder of them.
        #[arg(long, required_unless_present_any = ["control_plane_admin", "kubeconfig"])]
        config: Option<PathBuf>,
        /// Instead of a folder: the configuration a running control plane
        /// serves, from its admin address (`mesh-ca serve --metrics-addr`,
        /// `http://HOST:PORT`).
        #[arg(long, value_name = "URL", conflicts_with = "config")]
        control_plane_admin: Option<String>,
        #[command(flatten)]
        cluster: ClusterArgs,
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        output: Output,
        /// The sidecars run in capture mode (`mesh-proxy init`, `sidecar
        /// --capture`): also check what capture needs (no workload on a
        /// loopback address, a virtual IP for every mesh service).
        #[arg(long)]
        capture: bool,
    },
    #[cfg(feature = "tools")]
    /// Explain the decision for one request, step by step, naming the
    /// resource behind each step. Exit status: 0 when the request would get
    /// through, 1 when some step refuses it, 2 when the configuration or the
    /// query cannot be read.
    Explain {
        /// A YAML file or a folder of them.
        #[arg(long, required_unless_present_any = ["control_plane_admin", "kubeconfig"])]
        config: Option<PathBuf>,
        /// Instead of a folder: the configuration a running control plane
        /// serves, from its admin address (`http://HOST:PORT`).
        #[arg(long, value_name = "URL", conflicts_with = "config")]
        control_plane_admin: Option<String>,
        #[command(flatten)]
        cluster: ClusterArgs,
        /// The calling workload: a WorkloadEntry name, or namespace/name.
        #[arg(long)]
        from: String,
        /// The destination: HOST or HOST:PORT, as the caller addresses it.
        #[arg(long)]
        to: String,
        /// Request method.
        #[arg(long, default_value = "GET")]
        method: String,
        /// Request path and query.
        #[arg(long, default_value = "/")]
        path: String,
        /// A request header, NAME=VALUE; repeatable.
        #[arg(long = "header", value_parser = parse_header)]
        headers: Vec<(String, String)>,
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        output: Output,
    },
}

#[cfg(feature = "tools")]
/// `check` and `explain` on a live cluster.
#[derive(Debug, clap::Args)]
struct ClusterArgs {
    /// Instead of a folder: read a live cluster, as the control plane's
    /// Kubernetes source reads it (Istio's CRDs, Services, EndpointSlices,
    /// Pods, the MeshConfig ConfigMap). Give the kubeconfig file, or no
    /// value for `KUBECONFIG`, then `~/.kube/config`. Reads only.
    #[arg(
        long,
        value_name = "FILE",
        num_args = 0..=1,
        conflicts_with_all = ["config", "control_plane_admin"]
    )]
    kubeconfig: Option<Option<PathBuf>>,
    /// The kubeconfig context (default: its current one).
    #[arg(long, requires = "kubeconfig")]
    context: Option<String>,
    /// The MeshConfig ConfigMap the control plane reads, NAMESPACE/NAME.
    #[arg(long, value_name = "NAMESPACE/NAME", default_value = "mesh-system/mesh-config", value_parser = parse_namespaced)]
    mesh_config: (String, String),
    /// The cluster's DNS domain (a MeshConfig `clusterDomain` wins).
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    /// How long, in seconds, every kind may take to list.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    list_timeout: u64,
}

#[cfg(feature = "tools")]
impl ClusterArgs {
    fn source(&self) -> Option<mesh_proxy::check::ClusterSource> {
        let kubeconfig = self.kubeconfig.clone()?;
        Some(mesh_proxy::check::ClusterSource {
            kubeconfig,
            context: self.context.clone(),
            mesh_config: self.mesh_config.clone(),
            cluster_domain: self.cluster_domain.clone(),
            timeout: std::time::Duration::from_secs(self.list_timeout),
        })
    }
}

#[cfg(feature = "tools")]
fn parse_namespaced(s: &str) -> Result<(String, String), String> {
    match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((ns.to_owned(), name.to_owned()))
        }
        _ => Err(format!("{s:?} is not NAMESPACE/NAME")),
    }
}

#[cfg(feature = "tools")]
/// `mesh-proxy inject`.
#[derive(Debug, clap::Args)]
struct InjectArgs {
    /// The manifests: a YAML file, or `-` for standard input.
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    filename: PathBuf,
    /// Where to write the result (default: standard output).
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    output: Option<PathBuf>,
    /// The sidecar's image (`mesh-init` runs the same one).
    #[arg(long, default_value = "mesh-proxy:0.1.0")]
    proxy_image: String,
    /// The control plane as the sidecar dials it, `host:port`.
    #[arg(long, default_value = "mesh-control.mesh-system.svc:15012")]
    control_plane: String,
    /// The mesh's trust domain.
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// The audience of the projected token the CA checks (`mesh-ca serve
    /// --token-audience`).
    #[arg(long, default_value = mesh_kube::tokenreview::DEFAULT_AUDIENCE)]
    token_audience: String,
}

#[cfg(feature = "tools")]
fn run_inject(args: &InjectArgs) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use std::io::Read as _;
    let input = if args.filename.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading standard input")?;
        s
    } else {
        std::fs::read_to_string(&args.filename)
            .with_context(|| format!("reading {}", args.filename.display()))?
    };
    let config = mesh_kube::inject::InjectConfig {
        proxy_image: args.proxy_image.clone(),
        control_plane: args.control_plane.clone(),
        trust_domain: args.trust_domain.clone(),
        token_audience: args.token_audience.clone(),
        ..mesh_kube::inject::InjectConfig::default()
    };
    let out = mesh_kube::inject::inject_yaml(&input, &config)
        .with_context(|| format!("injecting {}", args.filename.display()))?;
    match &args.output {
        Some(path) => {
            std::fs::write(path, out).with_context(|| format!("writing {}", path.display()))?;
        }
        None => print!("{out}"),
    }
    Ok(())
}

#[cfg(feature = "tools")]
fn parse_header(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("`{s}` is not NAME=VALUE"))
}

fn serve(run: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_target(false)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Sidecar(args) => serve(args::run_sidecar(args)),
        #[cfg(feature = "gateway")]
        Command::Gateway(args) => serve(args::run_gateway(args)),
        Command::Agent(args) => serve(args::run_agent(args)),
        #[cfg(feature = "tools")]
        Command::Inject(args) => match run_inject(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(1)
            }
        },
        Command::Init(args) => match capture::run(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(1)
            }
        },
        #[cfg(feature = "tools")]
        Command::Check {
            config,
            control_plane_admin,
            cluster,
            output,
            capture,
        } => {
            let options = mesh_core::analyze::CheckOptions { capture };
            let json = output == Output::Json;
            match (config, control_plane_admin, cluster.source()) {
                (Some(config), _, _) => mesh_proxy::check::check(&config, json, options),
                (None, Some(admin), _) => mesh_proxy::check::check_remote(&admin, json, options),
                (None, None, Some(c)) => mesh_proxy::check::check_cluster(&c, json, options),
                (None, None, None) => unreachable!("clap requires one"),
            }
        }
        #[cfg(feature = "tools")]
        Command::Explain {
            config,
            control_plane_admin,
            cluster,
            from,
            to,
            method,
            path,
            headers,
            output,
        } => {
            let query = mesh_core::explain::Query {
                from,
                to,
                method,
                path,
                headers,
            };
            let json = output == Output::Json;
            match (config, control_plane_admin, cluster.source()) {
                (Some(config), _, _) => mesh_proxy::check::explain(&config, &query, json),
                (None, Some(admin), _) => mesh_proxy::check::explain_remote(&admin, &query, json),
                (None, None, Some(c)) => mesh_proxy::check::explain_cluster(&c, &query, json),
                (None, None, None) => unreachable!("clap requires one"),
            }
        }
    }
}
