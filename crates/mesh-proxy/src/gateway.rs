//! The gateway: a Gateway's servers (HTTP, and HTTPS with SIMPLE or MUTUAL
//! TLS from credential files with SNI host matching, optional redirect of
//! HTTP to HTTPS), routing by the VirtualServices bound to it, mesh mTLS to
//! the backends. The Host header is kept; X-Forwarded-For and
//! X-Forwarded-Proto are set by the gateway itself, whatever the client sent
//! (the gateway is the edge: nothing before it can be trusted).
//!
//! Credential paths in the Gateway are read as written; a relative path is
//! taken relative to the configuration folder.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use http::{HeaderValue, Request, Response, StatusCode};
use mesh_ca::tls::crypto_provider;
use mesh_core::gateway::host_matches;
use mesh_core::identity::SpiffeId;
use mesh_core::resources::networking::{Protocol, Server, ServerTlsMode, TlsVersion};
use mesh_core::store::Store;
use mesh_tower::body::{BoxBody, empty};
use mesh_tower::error::MeshError;
use mesh_tower::server::ServerSettings;
use mesh_tower::tls::MeshConnector;
use mesh_tower::traffic::{ClientAddr, GatewayServers, Router, RouterConfig};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;

use crate::admin::AdminState;
use crate::identity::{IdentitySource, Prepared};
use crate::runtime::{BoundSocket, ConfigFeed, Error, Launch, ProxyBody, ProxyHandle, Serving};
use mesh_tower::server::{Drain, Known, accept_loop, serve_connection};

/// Configures a [`Gateway`]: its configuration, the Gateway resource,
/// identity and limits.
#[derive(Debug)]
pub struct GatewayBuilder {
    origin: Origin,
    gateway: String,
    trust_domain: Option<mesh_core::identity::TrustDomain>,
    control_plane_id: Option<SpiffeId>,
    metrics_port: Option<u16>,
    identity: Option<IdentitySource>,
    identity_id: Option<String>,
    settings: ServerSettings,
    drain_timeout: Duration,
}

/// Where a gateway's configuration comes from, and where it reads the
/// servers' certificate files (relative paths in the Gateway).
#[derive(Debug, Clone)]
enum Origin {
    Files(PathBuf),
    ControlPlane { addr: String, credentials: PathBuf },
}

impl GatewayBuilder {
    /// The trust domain of the gateway's identity on a control plane
    /// (default `cluster.local`; from files, MeshConfig's).
    #[must_use]
    pub fn trust_domain(mut self, td: mesh_core::identity::TrustDomain) -> Self {
        self.trust_domain = Some(td);
        self
    }

    /// The SPIFFE ID the control plane presents (default: the CA's).
    #[must_use]
    pub fn control_plane_id(mut self, id: SpiffeId) -> Self {
        self.control_plane_id = Some(id);
        self
    }

    /// The port the proxy's metrics are served on, told to the control
    /// plane for its mesh page (read at the address the proxy connects
    /// from: the status port in a pod, else the admin port).
    #[must_use]
    pub fn metrics_port(mut self, port: u16) -> Self {
        self.metrics_port = Some(port);
        self
    }

    /// Builds the gateway from either origin. On a control plane: obtains
    /// the identity (the gateway's default,
    /// `spiffe://<trust domain>/ns/<namespace>/sa/<name>`, which the control
    /// plane requires of the node `Gateway/<namespace>/<name>`), opens the
    /// configuration stream with it and waits for the first good
    /// configuration, then finds the Gateway in it.
    pub async fn connect(self) -> Result<Gateway, Error> {
        match self.origin.clone() {
            Origin::Files(_) => self.try_build(),
            Origin::ControlPlane { addr, credentials } => self.follow(addr, credentials).await,
        }
        .map_err(Error::new)
    }

    async fn follow(self, addr: String, credentials: PathBuf) -> Result<Gateway> {
        let key = mesh_core::snapshot::gateway_key(&self.gateway, "default");
        if self.identity_id.is_some() {
            anyhow::bail!(
                "--identity-id is not served on a control plane: it admits a gateway with its \
                 default identity only"
            );
        }
        let td = crate::runtime::trust_domain_or_default(self.trust_domain.clone())?;
        let (ns, name) = key.split_once('/').unwrap_or(("default", &key));
        let id = SpiffeId::for_workload(&td, ns, name)?;
        let source = self
            .identity
            .as_ref()
            .ok_or_else(|| anyhow!("no identity source: give GatewayBuilder::identity"))?;
        let node = format!("{}{key}", mesh_core::xds::GATEWAY_NODE_PREFIX);
        let (obtained, store, client) = crate::runtime::join(
            &addr,
            source,
            &id,
            self.control_plane_id.clone(),
            &node,
            self.metrics_port,
        )
        .await?;
        let servers = store
            .load()
            .gateways
            .get(&key)
            .ok_or_else(|| anyhow!("the control plane at {addr} sent no Gateway {key}"))?
            .servers
            .clone();
        Ok(Gateway {
            store,
            watcher: ConfigFeed::ControlPlane(client),
            key,
            base: credentials,
            servers,
            id,
            identity: Prepared::Obtained(obtained),
            settings: self.settings,
            drain_timeout: self.drain_timeout,
        })
    }

    /// Where the gateway's own certificate comes from (required).
    #[must_use]
    pub fn identity(mut self, source: IdentitySource) -> Self {
        self.identity = Some(source);
        self
    }

    /// The gateway's own SPIFFE ID, for mTLS to backends; by default
    /// `spiffe://<trust-domain>/ns/<namespace>/sa/<gateway name>`.
    #[must_use]
    pub fn identity_id(mut self, id: impl Into<String>) -> Self {
        self.identity_id = Some(id.into());
        self
    }

    /// The limits every served connection is held to, the TLS handshake
    /// timeout among them; by default [`ServerSettings::default`], the
    /// command line's defaults.
    #[must_use]
    pub fn server_settings(mut self, settings: ServerSettings) -> Self {
        self.settings = settings;
        self
    }

    /// How long [`ProxyHandle::shutdown`] waits for in-flight requests and
    /// connections (default 10 s).
    #[must_use]
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// Loads the configuration (and starts watching it) and finds the
    /// Gateway in it.
    pub fn build(self) -> Result<Gateway, Error> {
        self.try_build().map_err(Error::new)
    }

    fn try_build(self) -> Result<Gateway> {
        let key = mesh_core::snapshot::gateway_key(&self.gateway, "default");
        let Origin::Files(config) = &self.origin else {
            anyhow::bail!("a gateway on a control plane is built with GatewayBuilder::connect");
        };
        let namespace = key.split_once('/').map_or("default", |k| k.0);
        let (store, watcher) = crate::runtime::start_store(
            mesh_core::store::FileSource::new(config).visible_in(namespace),
        )?;
        let base = if config.is_dir() {
            config.clone()
        } else {
            config.parent().map(Path::to_path_buf).unwrap_or_default()
        };
        let (servers, id) = {
            let snap = store.load();
            let gw = snap
                .gateways
                .get(&key)
                .ok_or_else(|| anyhow!("no Gateway {key} in {}", config.display()))?;
            let (ns, name) = key.split_once('/').unwrap_or(("default", &key));
            let id: SpiffeId = match &self.identity_id {
                Some(s) => s.parse()?,
                None => SpiffeId::for_workload(&snap.mesh.trust_domain, ns, name)?,
            };
            (gw.servers.clone(), id)
        };
        let identity = self
            .identity
            .ok_or_else(|| anyhow!("no identity source: give GatewayBuilder::identity"))?;
        Ok(Gateway {
            store,
            watcher: watcher.into(),
            key,
            base,
            servers,
            id,
            identity: Prepared::Source(identity),
            settings: self.settings,
            drain_timeout: self.drain_timeout,
        })
    }
}

/// A gateway with its configuration loaded, ready to
/// [`start`](Self::start) on the sockets its caller bound.
#[derive(Debug)]
pub struct Gateway {
    store: Arc<Store>,
    watcher: ConfigFeed,
    /// The Gateway, `namespace/name`.
    key: String,
    /// Where relative credential paths are read from.
    base: PathBuf,
    servers: Vec<Server>,
    id: SpiffeId,
    identity: Prepared,
    settings: ServerSettings,
    drain_timeout: Duration,
}

/// The sockets a gateway serves.
#[derive(Debug)]
pub struct GatewayListeners {
    /// The admin listener, served at once.
    pub admin: TcpListener,
    /// One per port of [`Gateway::ports`], in any order.
    pub servers: Vec<BoundSocket>,
}

impl Gateway {
    /// A gateway for the Gateway `gateway` (`name` in `default`, or
    /// `namespace/name`) of the configuration at `config` (a YAML file or a
    /// folder of them, reloaded on change).
    pub fn builder(config: impl Into<PathBuf>, gateway: impl Into<String>) -> GatewayBuilder {
        Self::builder_from(Origin::Files(config.into()), gateway)
    }

    /// A gateway for the Gateway `gateway`, following the control plane at
    /// `addr` (`host:port`, its CA port), reading the certificate files its
    /// servers name relative to `credentials`: built with
    /// [`GatewayBuilder::connect`].
    pub fn following(
        addr: impl Into<String>,
        gateway: impl Into<String>,
        credentials: impl Into<PathBuf>,
    ) -> GatewayBuilder {
        Self::builder_from(
            Origin::ControlPlane {
                addr: addr.into(),
                credentials: credentials.into(),
            },
            gateway,
        )
    }

    fn builder_from(origin: Origin, gateway: impl Into<String>) -> GatewayBuilder {
        GatewayBuilder {
            origin,
            gateway: gateway.into(),
            trust_domain: None,
            control_plane_id: None,
            metrics_port: None,
            identity: None,
            identity_id: None,
            settings: ServerSettings::default(),
            drain_timeout: crate::sidecar::DEFAULT_DRAIN_TIMEOUT,
        }
    }

    /// The ports to bind, one per port (target port) of the Gateway's
    /// servers, in order.
    pub fn ports(&self) -> Vec<u16> {
        self.by_port().into_keys().collect()
    }

    /// The servers of each port.
    fn by_port(&self) -> BTreeMap<u16, Vec<usize>> {
        let mut by_port: BTreeMap<u16, Vec<usize>> = BTreeMap::new();
        for (i, s) in self.servers.iter().enumerate() {
            by_port
                .entry(s.port.target_port.unwrap_or(s.port.number))
                .or_default()
                .push(i);
        }
        by_port
    }

    /// Starts the gateway: the admin listener at once; once the identity is
    /// issued and every server's TLS is loaded, its ports. Must be called
    /// within a Tokio runtime; the returned handle's
    /// [`ready`](ProxyHandle::ready) says when it serves, or why it will
    /// not (a server it cannot honour).
    pub fn start(self, listeners: GatewayListeners) -> Result<ProxyHandle, Error> {
        self.try_start(listeners).map_err(Error::new)
    }

    fn try_start(self, listeners: GatewayListeners) -> Result<ProxyHandle> {
        let GatewayListeners { admin, servers } = listeners;
        let mut sockets: BTreeMap<u16, BoundSocket> = BTreeMap::new();
        for s in servers {
            let port = s.local_addr().port();
            if sockets.insert(port, s).is_some() {
                bail!("two sockets for gateway port {port}");
            }
        }
        let mut ports = Vec::new();
        for (port, group) in self.by_port() {
            let socket = sockets
                .remove(&port)
                .ok_or_else(|| anyhow!("no socket for port {port} of Gateway {}", self.key))?;
            ports.push((socket, group));
        }
        if let Some(port) = sockets.keys().next() {
            bail!("Gateway {} has no server on port {port}", self.key);
        }
        let local_addrs = ports.iter().map(|(s, _)| s.local_addr()).collect();
        let (controller, drain) = mesh_tower::server::drain_pair(self.settings);
        let registry = mesh_tower::telemetry::Registry::new();
        let state = AdminState::new(self.store.clone(), self.watcher.metrics_sources(&registry));
        let _ = state.mode.set("gateway".to_owned());
        let admin_addr = admin.local_addr()?;
        let start = serve(
            Plan {
                store: self.store,
                key: self.key,
                base: self.base,
                servers: self.servers,
                id: self.id,
                identity: self.identity,
                handshake_timeout: self.settings.handshake_timeout,
            },
            ports,
            state.clone(),
            admin_addr,
            drain.clone(),
            registry,
        );
        crate::runtime::launch(Launch {
            admin,
            status: None,
            state,
            drain: (controller, drain),
            drain_timeout: self.drain_timeout,
            local_addrs,
            start,
            watcher: self.watcher,
        })
    }
}

/// What the gateway serves.
struct Plan {
    store: Arc<Store>,
    key: String,
    base: PathBuf,
    servers: Vec<Server>,
    id: SpiffeId,
    identity: Prepared,
    handshake_timeout: Duration,
}

/// How one port is served.
enum PortPlan {
    Https(Arc<TlsServers>),
    Http {
        servers: Arc<[usize]>,
        redirect: Option<u16>,
    },
    /// TLS PASSTHROUGH: routed by SNI, never opened.
    Passthrough(Arc<crate::passthrough::PassthroughPort>),
}

fn resolve(base: &Path, file: &str) -> PathBuf {
    let p = Path::new(file);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// The files one server's TLS is read from.
#[derive(Debug, PartialEq, Eq)]
struct CredentialFiles {
    cert: PathBuf,
    key: PathBuf,
    /// The client CA, for MUTUAL.
    ca: Option<PathBuf>,
}

/// The files a server names (relative to `base`), or those of its
/// `credentialName`: the folder of that name under `base`, as a Kubernetes
/// Secret is mounted there: `tls.crt`/`tls.key`/`ca.crt` (a
/// `kubernetes.io/tls` Secret) or Istio's generic `cert`/`key`/`cacert`;
/// for MUTUAL the CA from the same folder or from `NAME-cacert` (Istio's
/// separate CA Secret). Whatever is missing is named.
fn credential_files(
    base: &Path,
    tls: &mesh_core::resources::networking::ServerTlsSettings,
    mutual: bool,
    port: u16,
) -> Result<CredentialFiles> {
    let Some(name) = &tls.credential_name else {
        let (Some(cert), Some(key)) = (&tls.server_certificate, &tls.private_key) else {
            bail!(
                "server on port {port} needs credentialName, or serverCertificate and privateKey"
            );
        };
        let ca = match (mutual, &tls.ca_certificates) {
            (false, _) => None,
            (true, Some(ca)) => Some(resolve(base, ca)),
            (true, None) => bail!("server on port {port}: MUTUAL needs caCertificates"),
        };
        return Ok(CredentialFiles {
            cert: resolve(base, cert),
            key: resolve(base, key),
            ca,
        });
    };
    // A Secret's name: never a path (validation refuses `/` and `..`;
    // checked again here, as the files are read with the gateway's rights).
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        bail!("server on port {port}: credentialName {name:?} is not a Secret name");
    }
    let dir = base.join(name);
    let pick = |names: &[&str], dir: &Path| names.iter().map(|n| dir.join(n)).find(|p| p.is_file());
    let (cert, key) = match (
        pick(&["tls.crt", "cert"], &dir),
        pick(&["tls.key", "key"], &dir),
    ) {
        (Some(c), Some(k)) => (c, k),
        _ => bail!(
            "server on port {port}: credentialName {name:?} has no certificate and key in {} \
             (tls.crt and tls.key, or cert and key: mount the Secret there)",
            dir.display()
        ),
    };
    let ca = if mutual {
        let separate = base.join(format!("{name}-cacert"));
        Some(
            pick(&["ca.crt", "cacert"], &dir)
                .or_else(|| pick(&["ca.crt", "cacert"], &separate))
                .ok_or_else(|| {
                    anyhow!(
                        "server on port {port}: MUTUAL with credentialName {name:?} needs the client CA: \
                         ca.crt or cacert in {} or {}",
                        dir.display(),
                        separate.display()
                    )
                })?,
        )
    } else {
        None
    };
    Ok(CredentialFiles { cert, key, ca })
}

fn load_key(cert_path: &Path, key_path: &Path) -> Result<Arc<CertifiedKey>> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
        .with_context(|| format!("reading {}", cert_path.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing {}", cert_path.display()))?;
    if chain.is_empty() {
        bail!("{} holds no certificate", cert_path.display());
    }
    let der = PrivateKeyDer::from_pem_file(key_path)
        .with_context(|| format!("reading {}", key_path.display()))?;
    let signer = crypto_provider()
        .key_provider
        .load_private_key(der)
        .with_context(|| format!("loading {}", key_path.display()))?;
    Ok(Arc::new(CertifiedKey::new(chain, signer)))
}

/// The TLS servers of one HTTPS port, each with a TLS configuration of its
/// own (certificate, client-certificate requirement, minimum version), one
/// chosen per connection by the SNI before the handshake goes on: a
/// `SIMPLE` server sharing a port with a `MUTUAL` one neither asks for a
/// client certificate nor lets its hosts be reached without one.
#[derive(Debug)]
struct TlsServers {
    /// `(server index, its hosts, its configuration)`, in Gateway order.
    servers: Vec<(usize, Vec<String>, Arc<rustls::ServerConfig>)>,
    /// For a ClientHello no server is named by: a configuration with no
    /// certificate, so rustls refuses the handshake with an alert the
    /// client can read (rather than a silent close).
    refuse: Arc<rustls::ServerConfig>,
}

/// Resolves no certificate: every handshake is refused.
#[derive(Debug)]
struct NoCertificate;

impl rustls::server::ResolvesServerCert for NoCertificate {
    fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        None
    }
}

fn refusing_config() -> Result<Arc<rustls::ServerConfig>> {
    Ok(Arc::new(
        rustls::ServerConfig::builder_with_provider(crypto_provider())
            .with_protocol_versions(rustls::DEFAULT_VERSIONS)?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(NoCertificate)),
    ))
}

impl TlsServers {
    /// The server a ClientHello's SNI picks: an exact host first, then the
    /// longest `*.suffix`, then `*`. A client without SNI (an IP address)
    /// gets the port's only server; with several, none: the handshake is
    /// refused rather than guessed.
    fn pick(&self, sni: Option<&str>) -> Option<(usize, &Arc<rustls::ServerConfig>)> {
        let Some(sni) = sni else {
            return match self.servers.as_slice() {
                [(i, _, c)] => Some((*i, c)),
                _ => None,
            };
        };
        let sni = sni.to_ascii_lowercase();
        let mut best: Option<(usize, usize, &Arc<rustls::ServerConfig>)> = None;
        for (i, hosts, config) in &self.servers {
            for h in hosts {
                let host = h.rsplit('/').next().unwrap_or(h);
                if !host_matches(host, &sni) {
                    continue;
                }
                // Exact beats any wildcard; a longer wildcard beats a shorter.
                let rank = if host.starts_with('*') {
                    host.len()
                } else {
                    usize::MAX
                };
                if best.is_none_or(|(r, _, _)| rank > r) {
                    best = Some((rank, *i, config));
                }
            }
        }
        best.map(|(_, i, c)| (i, c))
    }
}

/// One server's TLS configuration.
fn tls_config(base: &Path, s: &Server) -> Result<Arc<rustls::ServerConfig>> {
    let tls = s
        .tls
        .as_ref()
        .ok_or_else(|| anyhow!("HTTPS server on port {} has no tls", s.port.number))?;
    // A restriction the gateway cannot enforce fails closed rather than
    // letting every certificate of the CA in.
    if !tls.subject_alt_names.is_empty() {
        bail!(
            "gateway tls.subjectAltNames on port {} is not supported; remove it or use a CA that issues only the allowed client certificates",
            s.port.number
        );
    }
    let mutual = match tls.mode {
        Some(ServerTlsMode::Simple) => false,
        Some(ServerTlsMode::Mutual) => true,
        other => bail!(
            "gateway TLS mode {other:?} on port {} is not supported; use SIMPLE or MUTUAL",
            s.port.number
        ),
    };
    let files = credential_files(base, tls, mutual, s.port.number)?;
    let client_ca = files.ca;
    let ck = load_key(&files.cert, &files.key)?;
    let versions: &[&rustls::SupportedProtocolVersion] =
        if tls.min_protocol_version == Some(TlsVersion::TlsV13) {
            &[&rustls::version::TLS13]
        } else {
            rustls::DEFAULT_VERSIONS
        };
    let builder = rustls::ServerConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(versions)?;
    let mutual = client_ca.is_some();
    let builder = match client_ca {
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(&path)
                .with_context(|| format!("reading {}", path.display()))?
            {
                roots.add(c?)?;
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), crypto_provider())
                    .build()?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(ck)));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    if mutual {
        // A resumed session skips the client certificate's checks (its
        // expiry among them): MUTUAL verifies every connection. SIMPLE
        // keeps resumption for browsers; nothing about the client rides on
        // it.
        mesh_ca::tls::no_resumption(&mut config);
    }
    Ok(Arc::new(config))
}

/// Obtains the identity, loads every server's TLS, then listens on every
/// port: the accept loops. Nothing is listened on unless all of it could be
/// served.
async fn serve(
    plan: Plan,
    ports: Vec<(BoundSocket, Vec<usize>)>,
    admin: Arc<AdminState>,
    admin_addr: SocketAddr,
    drain: Drain,
    registry: mesh_tower::telemetry::Registry,
) -> Result<Vec<Serving>> {
    let Plan {
        store,
        key,
        base,
        servers,
        id,
        identity,
        handshake_timeout,
    } = plan;
    tracing::info!(%admin_addr, gateway = %key, "admin listening; obtaining the gateway identity");
    let identity = identity.obtain(&id).await?;
    admin.identity.store(Some(identity.clone()));
    // Istio's ingress gateway reports its calls as `reporter="source"`,
    // and names itself to the workloads it calls (peer exchange).
    let (ns, name) = key.split_once('/').unwrap_or(("default", key.as_str()));
    let me = mesh_tower::telemetry::WorkloadInfo::new(name, ns).with_principal(&id);
    let router = Router::new(
        store.clone(),
        RouterConfig::for_gateway(&key).describing(&me),
        Some(MeshConnector::new(identity.store().clone())),
    );
    // The gateway's side is CLIENT (Istio's `workloadMode` for a gateway).
    let telemetry = Arc::new(mesh_tower::telemetry::TelemetrySettings::new(
        store.clone(),
        ns,
        name,
    ));
    let passthrough = Arc::new(crate::passthrough::Passthrough {
        store: store.clone(),
        key: key.clone(),
        tcp: mesh_tower::traffic::TcpRouter::new(
            store.clone(),
            ns,
            Some(MeshConnector::new(identity.store().clone())),
        )
        .with_peer(me.peer_header()),
        telemetry: mesh_tower::telemetry::TcpTelemetry::outbound(registry.clone(), me.clone())
            .with_settings(telemetry.clone()),
        authz: mesh_tower::authz::AuthorizeLayer::new(
            store.clone(),
            mesh_tower::authz::LocalWorkload::gateway(&key, id.namespace().unwrap_or(ns)),
        ),
        handshake_timeout,
    });
    let router = crate::sidecar::outbound_stack(router, registry.clone(), me, telemetry);
    // The policies of the gateway's own workload (Istio's
    // `selector: {istio: ingressgateway}`): RequestAuthentication and
    // AuthorizationPolicy decide at the edge, before any route is taken.
    let router: crate::sidecar::Outbound =
        tower::util::BoxCloneSyncService::new(tower::Layer::layer(
            &mesh_tower::authz::AuthorizeLayer::new(
                store.clone(),
                mesh_tower::authz::LocalWorkload::gateway(&key, id.namespace().unwrap_or(ns)),
            ),
            router,
        ));
    let edge = EdgeConfig {
        router,
        store: store.clone(),
        key: key.clone(),
    };

    let mut planned = Vec::new();
    for (socket, group) in ports {
        let port = socket.local_addr().port();
        let protocol = servers[group[0]].port.protocol;
        let passthrough = |i: &usize| {
            servers[*i]
                .tls
                .as_ref()
                .is_some_and(|t| t.mode == Some(ServerTlsMode::Passthrough))
        };
        let how = match protocol {
            Protocol::Https | Protocol::Tls if group.iter().all(passthrough) => {
                PortPlan::Passthrough(Arc::new(crate::passthrough::PassthroughPort {
                    port,
                    hosts: group
                        .iter()
                        .flat_map(|&i| servers[i].hosts.iter().cloned())
                        .collect(),
                }))
            }
            Protocol::Https | Protocol::Tls if group.iter().any(passthrough) => bail!(
                "gateway port {port}: PASSTHROUGH and terminating servers on one port are not supported; give PASSTHROUGH a port of its own"
            ),
            Protocol::Https => PortPlan::Https(Arc::new(TlsServers {
                servers: group
                    .iter()
                    .map(|&i| Ok((i, servers[i].hosts.clone(), tls_config(&base, &servers[i])?)))
                    .collect::<Result<_>>()?,
                refuse: refusing_config()?,
            })),
            Protocol::Http | Protocol::Http2 | Protocol::Grpc => {
                let redirect = group
                    .iter()
                    .any(|&i| servers[i].tls.as_ref().is_some_and(|t| t.https_redirect))
                    .then(|| {
                        servers
                            .iter()
                            .find(|s| s.port.protocol == Protocol::Https)
                            .map_or(443, |s| s.port.number)
                    });
                PortPlan::Http {
                    servers: group.clone().into(),
                    redirect,
                }
            }
            other => {
                bail!(
                    "gateway port {port}: protocol {other} is not supported; use HTTP, HTTPS, or TLS with tls.mode PASSTHROUGH"
                )
            }
        };
        planned.push((socket, group, how));
    }

    let mut serving: Vec<Serving> = Vec::new();
    for (socket, group, how) in planned {
        let addr = socket.local_addr();
        let port = addr.port();
        let listener = socket
            .listen()
            .with_context(|| format!("binding {}:{port}", addr.ip()))?;
        match how {
            PortPlan::Https(tls) => {
                tracing::info!(port, hosts = ?group.iter().flat_map(|&i| servers[i].hosts.clone()).collect::<Vec<_>>(), "HTTPS listening");
                let (edge, drain2) = (edge.clone(), drain.clone());
                serving.push(Box::pin(accept_loop(
                    listener,
                    drain.clone(),
                    move |tcp, remote| {
                        let (tls, edge, drain) = (tls.clone(), edge.clone(), drain2.clone());
                        let local = tcp.local_addr().ok();
                        tokio::spawn(async move {
                            // A client that never finishes its handshake must not
                            // hold a connection forever.
                            let handshake =
                                tokio::time::timeout(handshake_timeout, tls_handshake(&tls, tcp))
                                    .await;
                            let Ok(handshake) = handshake else {
                                tracing::info!(%remote, "TLS handshake timed out");
                                return;
                            };
                            match handshake {
                                Ok((stream, server, sni)) => {
                                    let svc =
                                        edge.edge(remote, local, Listener::Tls { server, sni });
                                    let known =
                                        Known::from_alpn(stream.get_ref().1.alpn_protocol());
                                    serve_connection(stream, svc, drain, known).await
                                }
                                Err(e) => {
                                    tracing::info!(%remote, error = %e, "TLS handshake refused")
                                }
                            }
                        });
                    },
                )));
            }
            PortPlan::Passthrough(pass) => {
                tracing::info!(port, hosts = ?pass.hosts, "TLS PASSTHROUGH listening");
                let passthrough = passthrough.clone();
                serving.push(Box::pin(accept_loop(listener, drain.clone(), {
                    let drain = drain.clone();
                    move |tcp, remote| {
                        let (passthrough, pass) = (passthrough.clone(), pass.clone());
                        // An open connection the drain waits for, as the
                        // sidecars' tunnels are.
                        let guard = drain.guard();
                        tokio::spawn(async move {
                            let _guard = guard;
                            passthrough.serve(&pass, tcp, remote).await
                        });
                    }
                })));
            }
            PortPlan::Http { servers, redirect } => {
                tracing::info!(port, ?redirect, "HTTP listening");
                let (edge, drain2) = (edge.clone(), drain.clone());
                serving.push(Box::pin(accept_loop(
                    listener,
                    drain.clone(),
                    move |tcp, remote| {
                        let listener = Listener::Plain {
                            servers: servers.clone(),
                            redirect,
                        };
                        let local = tcp.local_addr().ok();
                        tokio::spawn(serve_connection(
                            tcp,
                            edge.edge(remote, local, listener),
                            drain2.clone(),
                            None,
                        ));
                    },
                )));
            }
        }
    }
    Ok(serving)
}

/// Forwarding headers a client may send that the gateway does not set:
/// removed, so no backend mistakes them for the gateway's word.
const FORWARDING_CLAIMS: &[&str] = &[
    "forwarded",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-real-ip",
];

/// Reads the ClientHello, picks the server its SNI names, and completes
/// the handshake with that server's configuration: the connection, the
/// server's index, and the SNI.
async fn tls_handshake(
    tls: &TlsServers,
    tcp: tokio::net::TcpStream,
) -> std::io::Result<(
    tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    usize,
    Option<String>,
)> {
    let start =
        tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp).await?;
    let hello = start.client_hello();
    let sni = hello.server_name().map(str::to_ascii_lowercase);
    let Some((server, config)) = tls.pick(sni.as_deref()) else {
        // Fails with an alert to the client; the error says why here.
        start.into_stream(tls.refuse.clone()).await?;
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("no server of this port is named by SNI {sni:?}"),
        ));
    };
    let stream = start.into_stream(config.clone()).await?;
    Ok((stream, server, sni))
}

/// The servers a connection came in on.
#[derive(Debug, Clone)]
enum Listener {
    /// A plain-HTTP port: all its servers, and the redirect to HTTPS.
    Plain {
        servers: Arc<[usize]>,
        redirect: Option<u16>,
    },
    /// A TLS connection: the one server its SNI picked.
    Tls { server: usize, sni: Option<String> },
}

/// What every edge service of the gateway shares.
#[derive(Debug, Clone)]
struct EdgeConfig {
    router: crate::sidecar::Outbound,
    store: Arc<mesh_core::store::Store>,
    /// The Gateway, `namespace/name`.
    key: String,
}

impl EdgeConfig {
    fn edge(&self, remote: SocketAddr, local: Option<SocketAddr>, listener: Listener) -> Edge {
        let servers = match &listener {
            Listener::Plain { servers, .. } => servers.clone(),
            Listener::Tls { server, .. } => Arc::from([*server].as_slice()),
        };
        Edge {
            config: self.clone(),
            proto: match listener {
                Listener::Plain { .. } => "http",
                Listener::Tls { .. } => "https",
            },
            remote,
            local,
            servers: GatewayServers(servers),
            listener,
        }
    }
}

/// The edge in front of the router: the request read one way
/// ([`sanitize`](mesh_tower::sanitize)), its host checked against the
/// server its connection came in on (421 for a host of another TLS server),
/// X-Forwarded-For and -Proto, the client address for source-IP hashing,
/// the redirect to HTTPS, and the refusals' reasons cut to their class.
#[derive(Debug, Clone)]
struct Edge {
    config: EdgeConfig,
    proto: &'static str,
    remote: SocketAddr,
    /// The listener's address: the port AuthorizationPolicy `ports` match.
    local: Option<SocketAddr>,
    servers: GatewayServers,
    listener: Listener,
}

impl Edge {
    /// Everything before the router; `Err` is the edge's own answer.
    fn admit(&self, req: &mut Request<ProxyBody>) -> Result<(), MeshError> {
        let snap = self.config.store.load();
        let host = mesh_tower::sanitize::sanitize(req, snap.mesh.headers_with_underscores_action)?;
        let name = mesh_core::gateway::request_host_name(&host);
        let Some(gw) = snap.gateways.get(&self.config.key) else {
            return Err(MeshError::NoRuleMatched {
                vs: format!("Gateway {} (not in the configuration)", self.config.key),
            });
        };
        match &self.listener {
            // A TLS connection serves the hosts of the server its SNI
            // picked; another server's host is misdirected (RFC 9110 15.5.20).
            Listener::Tls { server, sni } if !gw.admits(*server, &name) => {
                Err(MeshError::Misdirected {
                    host: name,
                    sni: sni.clone().unwrap_or_else(|| "none".to_owned()),
                })
            }
            // A plain port serves the hosts of its servers, and redirects
            // only those.
            Listener::Plain { servers, .. } if !servers.iter().any(|&i| gw.admits(i, &name)) => {
                Err(MeshError::NoRuleMatched {
                    vs: format!(
                        "any server of Gateway {} on this port for host {name}",
                        self.config.key
                    ),
                })
            }
            _ => Ok(()),
        }
    }
}

impl tower::Service<Request<ProxyBody>> for Edge {
    type Response = Response<BoxBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<BoxBody>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<ProxyBody>) -> Self::Future {
        let grpc = mesh_tower::error::is_grpc(req.headers());
        let detail = self.config.store.load().mesh.dangerous_gateway_error_detail;
        // The edge speaks to the internet: a refusal says its class, the
        // detail (hosts, addresses, upstream errors) goes to the log.
        let answer = move |resp: Response<BoxBody>| match resp.extensions().get::<MeshError>() {
            Some(e) if !detail => e.to_edge_response_for(grpc),
            _ => resp,
        };
        if let Err(e) = self.admit(&mut req) {
            tracing::info!(remote = %self.remote, status = e.status().as_u16(), reason = %e, "gateway refused the request");
            return Box::pin(async move { Ok(answer(e.to_response_for(grpc))) });
        }
        if let Listener::Plain {
            redirect: Some(port),
            ..
        } = self.listener
        {
            let host = req
                .headers()
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .or_else(|| req.uri().authority().map(|a| a.as_str()))
                .map(mesh_core::gateway::request_host_name)
                .unwrap_or_default();
            let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
            let port = if port == 443 {
                String::new()
            } else {
                format!(":{port}")
            };
            let mut resp = Response::new(empty());
            *resp.status_mut() = StatusCode::MOVED_PERMANENTLY;
            if let Ok(v) = HeaderValue::from_str(&format!("https://{host}{port}{pq}")) {
                resp.headers_mut().insert(http::header::LOCATION, v);
            }
            return Box::pin(async move { Ok(resp) });
        }
        // The gateway is the edge: what a client claims about earlier hops
        // (its X-Forwarded-For, -Proto, and their kin) is unverifiable, so
        // it is replaced by what the gateway saw, never appended to.
        for claim in FORWARDING_CLAIMS {
            req.headers_mut().remove(*claim);
        }
        if let Ok(v) = HeaderValue::from_str(&self.remote.ip().to_string()) {
            req.headers_mut().insert("x-forwarded-for", v);
        }
        req.headers_mut()
            .insert("x-forwarded-proto", HeaderValue::from_static(self.proto));
        // HTTP/2 carries the authority in the URI; HTTP/1.1 upstreams need Host.
        if !req.headers().contains_key(http::header::HOST) {
            if let Some(v) = req
                .uri()
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            {
                req.headers_mut().insert(http::header::HOST, v);
            }
        }
        req.extensions_mut().insert(ClientAddr(self.remote));
        if let Some(local) = self.local {
            req.extensions_mut()
                .insert(mesh_tower::authz::LocalAddr(local));
        }
        req.extensions_mut().insert(self.servers.clone());
        let mut router = self.config.router.clone();
        Box::pin(async move {
            let resp = tower::Service::call(&mut router, req).await?;
            Ok(answer(resp))
        })
    }
}
