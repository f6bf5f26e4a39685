//! The `sidecar` and `gateway` command lines: their flags, the ports they
//! name bound, and the library's role started on them until SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use clap::Args;
use mesh_core::identity::TrustDomain;
use mesh_proxy::{
    BoundSocket, CaptureListeners, IdentitySource, InboundListener, OutboundListener, ProxyHandle,
    Sidecar, SidecarListeners,
};
#[cfg(feature = "gateway")]
use mesh_proxy::{Gateway, GatewayListeners};
use mesh_tower::server::ServerSettings;
use tokio::net::TcpListener;

/// Options shared by the sidecar and the gateway.
#[derive(Debug, Clone, Args)]
pub(crate) struct CommonArgs {
    /// A YAML file or a folder of them; reloaded on change. Or
    /// `--control-plane`.
    #[arg(long, required_unless_present = "control_plane")]
    pub(crate) config: Option<PathBuf>,
    /// Follow the control plane at `host:port` (`mesh-ca serve --config`,
    /// its CA port) instead of reading `--config`: the configuration
    /// arrives over xDS, mTLS with this workload's SVID. It is also the CA
    /// unless `--ca` names another.
    #[arg(long, value_name = "ADDR", conflicts_with = "config")]
    pub(crate) control_plane: Option<String>,
    /// The trust domain of the proxy's identity on a control plane
    /// (default `cluster.local`; from `--config`, MeshConfig's, and this
    /// flag is refused).
    #[arg(long, value_name = "TD")]
    pub(crate) trust_domain: Option<String>,
    /// The admin listener (`/ready`, `/stats/prometheus`, `/config_dump`, `/certs`).
    #[arg(long, default_value = "127.0.0.1:15000")]
    pub(crate) admin: SocketAddr,
    /// Allow the admin listener on an address other than loopback.
    #[arg(long)]
    pub(crate) admin_allow_remote: bool,
    /// How long SIGTERM waits for in-flight requests and connections.
    #[arg(long, default_value = "10", value_name = "SECONDS")]
    pub(crate) drain_timeout: u64,
    /// How long an HTTP/1.1 client may take to send a request's headers
    /// before its connection is closed (decimals allowed).
    #[arg(long, default_value = "30", value_name = "SECONDS", value_parser = seconds)]
    pub(crate) header_read_timeout: Duration,
    /// How long an HTTP connection may go without starting a request
    /// (with none in flight) before it is closed gracefully (decimals
    /// allowed). Before its first request a connection gets the
    /// header-read timeout instead, for HTTP/2 as for HTTP/1.1.
    #[arg(long, default_value = "300", value_name = "SECONDS", value_parser = seconds)]
    pub(crate) idle_timeout: Duration,
    /// The largest request body accepted: bytes, or with a KiB, MiB or GiB
    /// suffix. Over it: 413 (before forwarding when Content-Length says so,
    /// else as soon as the body grows past it). Default: no cap, bodies are
    /// streamed in bounded memory.
    #[arg(long, value_name = "BYTES", value_parser = bytes_size)]
    pub(crate) max_request_body: Option<u64>,
    /// How long a client may leave a request body without sending more
    /// while it is being forwarded (decimals allowed): 408 after it.
    #[arg(long, default_value = "60", value_name = "SECONDS", value_parser = seconds)]
    pub(crate) body_read_timeout: Duration,
    /// The proxy's locality, `region/zone/subzone`, over its
    /// WorkloadEntry's: endpoints sharing more of it are preferred (with
    /// outlier detection), as Istio's locality load balancing. Istio's
    /// agent reads it from the pod's `istio-locality` label or the node's
    /// topology labels; the env name is this mesh's.
    #[arg(long, env = "ISTIO_LOCALITY", value_name = "REGION/ZONE/SUBZONE")]
    pub(crate) locality: Option<String>,
    /// The proxy's network (Istio's `ISTIO_META_NETWORK`), over its
    /// WorkloadEntry's: endpoints on another network are not dialled (no
    /// east-west gateway here).
    #[arg(long, env = "ISTIO_META_NETWORK", value_name = "NETWORK")]
    pub(crate) network: Option<String>,
    #[command(flatten)]
    pub(crate) identity: IdentityArgs,
}

impl CommonArgs {
    /// Refuses, by name, a flag that is read only with `--control-plane`
    /// when there is none: a flag is honoured or refused, never ignored.
    fn control_plane_only(&self, given: &[(&str, bool)]) -> Result<()> {
        if self.control_plane.is_none() {
            if let Some((flag, _)) = given.iter().find(|(_, set)| *set) {
                bail!(
                    "{flag} is read with --control-plane only; from --config the configuration says it"
                );
            }
        }
        Ok(())
    }

    /// The trust domain on a control plane (`--trust-domain`, else
    /// `cluster.local`).
    fn trust_domain(&self) -> Result<TrustDomain> {
        TrustDomain::new(self.trust_domain.as_deref().unwrap_or("cluster.local"))
            .context("--trust-domain")
    }

    /// The limits every served HTTP connection is held to.
    fn server_settings(&self) -> ServerSettings {
        ServerSettings {
            header_read_timeout: self.header_read_timeout,
            idle_timeout: self.idle_timeout,
            body: mesh_tower::limits::BodyLimits::default()
                .max_request_body(self.max_request_body)
                .body_read_timeout(Some(self.body_read_timeout)),
            ..ServerSettings::default()
        }
    }

    /// Binds the admin listener: loopback only unless asked.
    async fn admin_listener(&self) -> Result<TcpListener> {
        let addr = self.admin;
        if !addr.ip().is_loopback() && !self.admin_allow_remote {
            bail!(
                "the admin listener {addr} is not on loopback; pass --admin-allow-remote to expose it"
            );
        }
        TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow!("binding the admin listener {addr}: {e}"))
    }
}

/// Where the proxy's certificate comes from.
#[derive(Debug, Clone, Args)]
pub(crate) struct IdentityArgs {
    /// mesh-ca address (`host:port`); with `--token` and `--ca-root`.
    #[arg(long)]
    pub(crate) ca: Option<String>,
    /// Single-use join token for the first certificate (see `mesh-ca token`).
    /// Base64url may start with `-`: taken as the value, not as a flag.
    #[arg(
        long,
        env = "MESH_JOIN_TOKEN",
        hide_env_values = true,
        allow_hyphen_values = true
    )]
    pub(crate) token: Option<String>,
    /// A Kubernetes service-account token file (the projected token the
    /// injector mounts): read afresh for each request made without an SVID,
    /// checked by the CA with TokenReview, never spent.
    #[arg(long, value_name = "FILE")]
    pub(crate) token_file: Option<PathBuf>,
    /// The CA's root certificate (its `root-cert.pem`), to trust it before the
    /// first SVID.
    #[arg(long)]
    pub(crate) ca_root: Option<PathBuf>,
    /// The SPIFFE ID the CA presents.
    #[arg(long)]
    pub(crate) ca_id: Option<String>,
    /// The certificate lifetime asked of the CA (Istio's `SECRET_TTL`),
    /// in seconds (decimals allowed); the CA grants at most its maximum.
    /// Renewal is at half of what was granted. Default 24 h.
    #[arg(long, env = "SECRET_TTL", value_name = "SECONDS", value_parser = seconds)]
    pub(crate) cert_ttl: Option<Duration>,
    /// Certificate chain file (with `--key` and `--bundle`), reloaded on change.
    #[arg(long)]
    pub(crate) cert: Option<PathBuf>,
    /// Private key file.
    #[arg(long)]
    pub(crate) key: Option<PathBuf>,
    /// Trust bundle file.
    #[arg(long)]
    pub(crate) bundle: Option<PathBuf>,
}

impl IdentityArgs {
    /// Files when all three are given, else the CA (`--ca`, else the
    /// control plane's address).
    fn source(&self, control_plane: Option<&String>) -> Result<IdentitySource> {
        if let (Some(cert), Some(key), Some(bundle)) = (&self.cert, &self.key, &self.bundle) {
            return Ok(IdentitySource::files(cert, key, bundle));
        }
        let (Some(addr), Some(root)) = (self.ca.as_ref().or(control_plane), &self.ca_root) else {
            bail!("give --ca ADDR --ca-root FILE [--token T], or --cert --key --bundle");
        };
        let mut source = IdentitySource::ca(addr, root);
        if let Some(t) = &self.token {
            source = source.with_token(t);
        }
        if let Some(path) = &self.token_file {
            source = source.with_token_file(path);
        }
        if let Some(id) = &self.ca_id {
            source = source.with_ca_id(id);
        }
        if let Some(ttl) = self.cert_ttl {
            source = source.with_ttl(ttl);
        }
        Ok(source)
    }
}

/// Parses a size in bytes: `1048576`, `64KiB`, `10MiB`, `1GiB`.
fn bytes_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (digits, unit) = t
        .find(|c: char| !c.is_ascii_digit())
        .map_or((t, ""), |i| t.split_at(i));
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s}: expected a number of bytes, like 1048576 or 10MiB"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" | "k" => 1 << 10,
        "MiB" | "M" => 1 << 20,
        "GiB" | "G" => 1 << 30,
        other => return Err(format!("{s}: unknown unit {other:?}; use KiB, MiB or GiB")),
    };
    n.checked_mul(mult).ok_or_else(|| format!("{s}: too large"))
}

/// Parses a positive number of seconds, decimals allowed (`0.5`).
fn seconds(s: &str) -> Result<Duration, String> {
    let secs: f64 = s.parse().map_err(|e| format!("{s}: {e}"))?;
    if secs <= 0.0 {
        return Err(format!("{s}: must be more than zero"));
    }
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{s}: {e}"))
}

/// `mesh-proxy sidecar`.
#[derive(Debug, Clone, Args)]
pub(crate) struct SidecarArgs {
    #[command(flatten)]
    pub(crate) common: CommonArgs,
    /// The workload this sidecar serves: its WorkloadEntry's name.
    #[arg(long)]
    pub(crate) workload: String,
    /// The workload's namespace.
    #[arg(long, default_value = "default")]
    pub(crate) namespace: String,
    /// The workload's service account, for its identity on a control plane
    /// (`spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT`); from
    /// `--config` the WorkloadEntry's is used.
    #[arg(long, value_name = "SA")]
    pub(crate) service_account: Option<String>,

    /// The local app: `ADDR` for every inbound port, or `PORT_NAME=ADDR`;
    /// repeatable.
    #[arg(long)]
    pub(crate) app: Vec<String>,
    /// The inbound port when the WorkloadEntry names none.
    #[arg(long, default_value_t = 15006)]
    pub(crate) inbound_port: u16,
    /// A local port for one service, `HOST:PORT=LISTEN_ADDR`; repeatable.
    #[arg(long = "outbound")]
    pub(crate) outbound: Vec<String>,
    /// The HTTP forward-proxy listener, or `off`. Default `127.0.0.1:15001`,
    /// or `off` with `--capture` (15001 is then the outbound capture port).
    #[arg(long)]
    pub(crate) http_proxy: Option<String>,
    /// Capture mode, behind `mesh-proxy init`'s rules: listen on the
    /// capture ports of MeshConfig's `ports` (outbound 15001 on loopback,
    /// inbound 15006 on every address) instead of the workload's own ports,
    /// which the app itself listens on. `--app` is not used: a captured
    /// inbound connection goes on to its original destination.
    #[arg(long)]
    pub(crate) capture: bool,
    /// The status listener: `/healthz/ready` (and `/ready`) and
    /// `/stats/prometheus` only, for the kubelet's probes and Prometheus on
    /// the pod's address (Istio's 15020; the injector sets
    /// `0.0.0.0:15020`). The admin listener stays on loopback.
    #[arg(long, value_name = "ADDR")]
    pub(crate) status_addr: Option<SocketAddr>,
}

/// The app of the port `port_name`: its `PORT_NAME=ADDR`, else the last
/// bare `ADDR`.
fn parse_app(apps: &[String], port_name: &str) -> Result<Option<SocketAddr>> {
    let mut default = None;
    for a in apps {
        match a.split_once('=') {
            Some((name, addr)) if name == port_name => {
                return Ok(Some(addr.parse().with_context(|| format!("--app {a}"))?));
            }
            Some(_) => {}
            None => default = Some(a.parse().with_context(|| format!("--app {a}"))?),
        }
    }
    Ok(default)
}

/// Runs the sidecar until SIGTERM, then drains.
pub(crate) async fn run_sidecar(args: SidecarArgs) -> Result<()> {
    args.common.control_plane_only(&[
        ("--service-account", args.service_account.is_some()),
        ("--trust-domain", args.common.trust_domain.is_some()),
    ])?;
    let identity = args
        .common
        .identity
        .source(args.common.control_plane.as_ref())?;
    let builder = match (&args.common.control_plane, &args.common.config) {
        (Some(addr), _) => {
            let sa = args.service_account.as_deref().ok_or_else(|| {
                anyhow!("--control-plane needs --service-account (the workload's identity)")
            })?;
            let mut b = Sidecar::following(addr, &args.namespace, &args.workload)
                .service_account(sa)
                .trust_domain(args.common.trust_domain()?);
            if let Some(id) = &args.common.identity.ca_id {
                b = b.control_plane_id(id.parse().context("--ca-id")?);
            }
            b
        }
        (None, Some(config)) => Sidecar::builder(config, &args.namespace, &args.workload),
        (None, None) => bail!("give --config DIR or --control-plane ADDR"),
    };
    let builder = builder.place(mesh_proxy::Place {
        locality: args
            .common
            .locality
            .as_deref()
            .map(mesh_core::locality::Locality::parse),
        network: args.common.network.clone().filter(|n| !n.is_empty()),
    });
    // Everything the command line alone can tell is checked, and every
    // socket it names bound, before the identity is obtained: a join token
    // is single-use, and on a control plane it is spent first.
    for a in &args.app {
        let addr = a.split_once('=').map_or(a.as_str(), |(_, addr)| addr);
        addr.parse::<SocketAddr>()
            .with_context(|| format!("--app {a}: expected ADDR or PORT_NAME=ADDR"))?;
    }
    let admin = args.common.admin_listener().await?;
    if args.status_addr.is_none() && std::env::var_os(mesh_kube::inject::APP_PROBES_ENV).is_some() {
        bail!(
            "{} names the app's probes, which are served on the status port: give --status-addr",
            mesh_kube::inject::APP_PROBES_ENV
        );
    }
    let status = match args.status_addr {
        Some(addr) => {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow!("binding the status listener {addr}: {e}"))?;
            tracing::info!(addr = %listener.local_addr()?, "status listening");
            Some(listener)
        }
        None => None,
    };
    let mut outbound = Vec::new();
    for o in &args.outbound {
        let (target, listen) = o
            .split_once('=')
            .ok_or_else(|| anyhow!("--outbound {o}: expected HOST:PORT=LISTEN_ADDR"))?;
        let (host, port) = target
            .rsplit_once(':')
            .ok_or_else(|| anyhow!("--outbound {o}: expected HOST:PORT"))?;
        let port: u16 = port.parse().with_context(|| format!("--outbound {o}"))?;
        let listen: SocketAddr = listen.parse().with_context(|| format!("--outbound {o}"))?;
        let socket =
            BoundSocket::bind(listen).with_context(|| format!("binding outbound {listen}"))?;
        outbound.push(OutboundListener::new(host, port, socket));
    }
    let http_proxy = match args.http_proxy.as_deref() {
        Some("off") => None,
        None if args.capture => None,
        given => {
            let given = given.unwrap_or("127.0.0.1:15001");
            let addr: SocketAddr = given
                .parse()
                .with_context(|| format!("--http-proxy {given}"))?;
            Some(
                BoundSocket::bind(addr)
                    .with_context(|| format!("binding the HTTP proxy {addr}"))?,
            )
        }
    };
    // The control plane's mesh page reads the metrics: on the status port
    // (the pod's address) when there is one, else on the admin port.
    let metrics = match &status {
        Some(l) => l.local_addr()?,
        None => admin.local_addr()?,
    };
    let sidecar = builder
        .metrics_port(metrics.port())
        .identity(identity)
        .server_settings(args.common.server_settings())
        .drain_timeout(Duration::from_secs(args.common.drain_timeout))
        .default_inbound_port(args.inbound_port)
        .connect()
        .await?;

    let mut apps = Vec::new();
    if args.capture && sidecar.has_ingress_listeners() {
        bail!(
            "the Sidecar in force for this workload names ingress listeners: they are read in explicit mode only (capture forwards each connection to the port it was addressed to); run without --capture, or remove spec.ingress"
        );
    }
    let explicit_ports = if args.capture {
        Vec::new()
    } else {
        sidecar.inbound_ports()
    };
    for p in explicit_ports {
        let from_config = p.app.filter(|_| {
            // An `--app NAME=ADDR` for the port wins over the
            // configuration's `defaultEndpoint`; a bare `--app ADDR` does
            // not.
            p.name.as_deref().is_none_or(|n| {
                !args
                    .app
                    .iter()
                    .any(|a| a.split_once('=').is_some_and(|(name, _)| name == n))
            })
        });
        if let Some(app) = from_config {
            apps.push((p.addr, app));
            continue;
        }
        let app = match &p.name {
            Some(name) => parse_app(&args.app, name)?.ok_or_else(|| {
                anyhow!("no --app for port {name}: give --app ADDR or --app {name}=ADDR")
            })?,
            None => match parse_app(&args.app, "")? {
                Some(app) => app,
                None => {
                    // The WorkloadEntry names no port and no app is given:
                    // a client-only workload (a job, a CLI) that serves
                    // nothing inbound.
                    tracing::info!(
                        "no --app and no port in the WorkloadEntry: client only, no inbound port"
                    );
                    continue;
                }
            },
        };
        apps.push((p.addr, app));
    }
    let mut inbound = Vec::new();
    for (addr, app) in apps {
        let socket = BoundSocket::bind(addr)
            .with_context(|| format!("binding inbound {}:{}", addr.ip(), addr.port()))?;
        inbound.push(InboundListener::new(socket, app));
    }
    let capture = if args.capture {
        Some(capture_listeners(sidecar.capture_ports())?)
    } else {
        None
    };
    let sidecar = match status {
        Some(status) => sidecar.status_listener(status, app_probes()?),
        None => sidecar,
    };
    let proxy = sidecar.start(SidecarListeners {
        admin,
        inbound,
        outbound,
        http_proxy,
        capture,
    })?;
    ready_then_drain(proxy).await
}

/// The app's probes the injector moved to the status port, from
/// `MESH_APP_PROBES` (none when it is unset).
fn app_probes() -> Result<mesh_kube::inject::AppProbes> {
    let name = mesh_kube::inject::APP_PROBES_ENV;
    match std::env::var(name) {
        Ok(text) => serde_json::from_str(&text).with_context(|| format!("{name}: {text}")),
        Err(std::env::VarError::NotPresent) => Ok(mesh_kube::inject::AppProbes::default()),
        Err(e) => Err(anyhow!("{name}: {e}")),
    }
}

/// Binds the capture listeners: outbound on `127.0.0.1` and `[::1]`
/// (where the kernel's `redirect` sends a namespace's own connections),
/// inbound on `[::]`, dual-stack, or `0.0.0.0` where the namespace has no
/// IPv6. A namespace without IPv6 loopback gets the IPv4 listener only
/// (said in the log); any other failure is fatal.
fn capture_listeners((outbound, inbound): (u16, u16)) -> Result<CaptureListeners> {
    let v4 = SocketAddr::from(([127, 0, 0, 1], outbound));
    let v6 = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, outbound));
    let mut out = vec![
        BoundSocket::bind(v4)
            .with_context(|| format!("binding the outbound capture listener {v4}"))?,
    ];
    match BoundSocket::bind(v6) {
        Ok(s) => out.push(s),
        Err(e) if ipv6_unavailable(&e) => {
            tracing::info!(addr = %v6, error = %e, "no IPv6 loopback here: outbound capture on IPv4 only");
        }
        Err(e) => {
            return Err(e).with_context(|| format!("binding the outbound capture listener {v6}"));
        }
    }
    let any6 = SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, inbound));
    let inbound = match BoundSocket::bind(any6) {
        Ok(s) => s,
        Err(e) if ipv6_unavailable(&e) => {
            let any4 = SocketAddr::from(([0, 0, 0, 0], inbound));
            tracing::info!(error = %e, "no IPv6 here: inbound capture on IPv4 only");
            BoundSocket::bind(any4)
                .with_context(|| format!("binding the inbound capture listener {any4}"))?
        }
        Err(e) => {
            return Err(e).with_context(|| format!("binding the inbound capture listener {any6}"));
        }
    };
    Ok(CaptureListeners {
        outbound: out,
        inbound: vec![inbound],
    })
}

/// Whether a bind failed because the namespace has no IPv6 (module off,
/// or the address not configured).
fn ipv6_unavailable(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc_errno::EAFNOSUPPORT | libc_errno::EADDRNOTAVAIL)
    )
}

/// The two errno values [`ipv6_unavailable`] reads (Linux).
mod libc_errno {
    pub(super) const EADDRNOTAVAIL: i32 = 99;
    pub(super) const EAFNOSUPPORT: i32 = 97;
}

#[cfg(feature = "gateway")]
/// `mesh-proxy gateway`.
#[derive(Debug, Clone, Args)]
pub(crate) struct GatewayArgs {
    #[command(flatten)]
    pub(crate) common: CommonArgs,
    /// The Gateway to serve: `name` (in `default`) or `namespace/name`.
    #[arg(long)]
    pub(crate) gateway: String,
    /// The address the servers bind.
    #[arg(long, default_value = "127.0.0.1")]
    pub(crate) listen_address: std::net::IpAddr,
    /// The gateway's own SPIFFE ID, for mTLS to backends; by default
    /// `spiffe://<trust-domain>/ns/<namespace>/sa/<gateway name>`.
    #[arg(long)]
    pub(crate) identity_id: Option<String>,
    /// How long an HTTPS client may take to finish its TLS handshake before
    /// its connection is closed (decimals allowed).
    #[arg(long, default_value = "10", value_name = "SECONDS", value_parser = seconds)]
    pub(crate) handshake_timeout: Duration,
    /// With `--control-plane`: the folder the certificate files the
    /// Gateway's servers name are read from (relative paths); from
    /// `--config`, the configuration's folder.
    /// Default: the current folder.
    #[arg(long, value_name = "DIR")]
    pub(crate) credentials_dir: Option<PathBuf>,
}

#[cfg(feature = "gateway")]
/// Runs the gateway until SIGTERM, then drains.
pub(crate) async fn run_gateway(args: GatewayArgs) -> Result<()> {
    for (flag, set) in [
        ("--locality", args.common.locality.is_some()),
        ("--network", args.common.network.is_some()),
    ] {
        if set {
            bail!(
                "{flag} (or its env) is read by the sidecar only: the gateway does no locality load balancing yet"
            );
        }
    }
    args.common.control_plane_only(&[
        ("--trust-domain", args.common.trust_domain.is_some()),
        ("--credentials-dir", args.credentials_dir.is_some()),
    ])?;
    let identity = args
        .common
        .identity
        .source(args.common.control_plane.as_ref())?;
    let mut builder = match (&args.common.control_plane, &args.common.config) {
        (Some(addr), _) => {
            let credentials = args.credentials_dir.clone().unwrap_or_else(|| ".".into());
            let mut b = Gateway::following(addr, &args.gateway, credentials)
                .trust_domain(args.common.trust_domain()?);
            if let Some(id) = &args.common.identity.ca_id {
                b = b.control_plane_id(id.parse().context("--ca-id")?);
            }
            b
        }
        (None, Some(config)) => Gateway::builder(config, &args.gateway),
        (None, None) => bail!("give --config DIR or --control-plane ADDR"),
    };
    let admin = args.common.admin_listener().await?;
    builder = builder
        .metrics_port(admin.local_addr()?.port())
        .identity(identity)
        .server_settings(ServerSettings {
            handshake_timeout: args.handshake_timeout,
            ..args.common.server_settings()
        })
        .drain_timeout(Duration::from_secs(args.common.drain_timeout));
    if let Some(id) = &args.identity_id {
        builder = builder.identity_id(id);
    }
    let gateway = builder.connect().await?;
    let mut servers = Vec::new();
    for port in gateway.ports() {
        let addr = SocketAddr::new(args.listen_address, port);
        servers.push(
            BoundSocket::bind(addr)
                .with_context(|| format!("binding {}:{port}", args.listen_address))?,
        );
    }
    let proxy = gateway.start(GatewayListeners { admin, servers })?;
    ready_then_drain(proxy).await
}

/// Waits until the proxy serves, then for SIGTERM (or Ctrl-C), then drains
/// for at most the drain timeout. The handlers are installed only once it
/// is ready: a signal before then ends the process as it always did.
async fn ready_then_drain(proxy: ProxyHandle) -> Result<()> {
    proxy.ready().await?;
    terminated().await?;
    tracing::info!("SIGTERM: draining");
    proxy.shutdown().await;
    Ok(())
}

/// Waits for SIGTERM or Ctrl-C.
async fn terminated() -> Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}

/// `mesh-proxy agent`.
#[derive(Debug, Clone, Args)]
pub(crate) struct AgentArgs {
    /// The control plane (`mesh-ca serve --config`), `host:port` as the
    /// workload's gRPC dials it: the host must be one of the control
    /// plane's `--serving-dns-name`s. It is also the CA unless `--ca`
    /// names another.
    #[arg(long, value_name = "ADDR")]
    pub(crate) control_plane: String,
    /// The workload: its WorkloadEntry's name.
    #[arg(long)]
    pub(crate) workload: String,
    /// The workload's namespace.
    #[arg(long, default_value = "default")]
    pub(crate) namespace: String,
    /// The workload's service account
    /// (`spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT`).
    #[arg(long, value_name = "SA")]
    pub(crate) service_account: String,
    /// The trust domain (default `cluster.local`).
    #[arg(long, value_name = "TD", default_value = "cluster.local")]
    pub(crate) trust_domain: String,
    /// Where to write the SVID files and `bootstrap.json`.
    #[arg(long, value_name = "DIR")]
    pub(crate) dir: PathBuf,
    #[command(flatten)]
    pub(crate) identity: IdentityArgs,
}

/// Runs the agent until SIGTERM: the SVID renewed into the files.
pub(crate) async fn run_agent(args: AgentArgs) -> Result<()> {
    let id = mesh_core::identity::SpiffeId::for_workload(
        &TrustDomain::new(&args.trust_domain).context("--trust-domain")?,
        &args.namespace,
        &args.service_account,
    )
    .context("--namespace/--service-account")?;
    let source = args.identity.source(Some(&args.control_plane))?;
    let agent = mesh_proxy::agent::Agent::start(mesh_proxy::agent::AgentConfig {
        control_plane: args.control_plane.clone(),
        namespace: args.namespace.clone(),
        workload: args.workload.clone(),
        identity: id.clone(),
        source,
        dir: args.dir.clone(),
    })
    .await?;
    tracing::info!(%id, bootstrap = %agent.bootstrap_path().display(), "agent ready");
    // Read by scripts and tests.
    println!("bootstrap {}", agent.bootstrap_path().display());
    terminated().await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        identity: IdentityArgs,
    }

    #[test]
    fn a_token_that_starts_with_a_hyphen_is_a_value() {
        let cli = Cli::try_parse_from(["mesh-proxy", "--token", "-iQx_3", "--ca", "127.0.0.1:1"])
            .unwrap();
        assert_eq!(cli.identity.token.as_deref(), Some("-iQx_3"));
        assert_eq!(cli.identity.ca.as_deref(), Some("127.0.0.1:1"));
    }
}
