//! The sidecar: the mesh for a workload that is not Rust.
//!
//! - Inbound: one listener per port of the workload's WorkloadEntry (or
//!   one default port), terminating mTLS per PeerAuthentication (read per
//!   connection, so a reload applies), authorizing, and forwarding to the
//!   local app. HTTP ports go through the L7 layers; TCP ports (MySQL...)
//!   are an opaque tunnel authorized by peer identity, with nothing read from
//!   the stream, so server-first protocols start at once.
//! - Outbound: a local port per service for apps that cannot be told about
//!   the mesh, and an HTTP forward proxy that routes by Host or absolute URI
//!   for clients that honour `HTTP_PROXY`.

mod capture;
mod inbound;
mod outbound;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow};
use http::{Request, Response};
use mesh_core::identity::{SpiffeId, TrustDomain};
use mesh_core::resources::networking::Protocol;
use mesh_core::store::Store;
use mesh_tower::body::BoxBody;
use mesh_tower::server::{Drain, ModeAcceptor, ServerSettings, accept_loop, serve_connection};
use mesh_tower::telemetry::{Registry, TcpTelemetry, WorkloadInfo};
use mesh_tower::tls::MeshConnector;
use mesh_tower::traffic::{Router, RouterConfig, TcpRouter};
use tokio::net::TcpListener;

use crate::admin::AdminState;
use crate::identity::{IdentitySource, Prepared};
use crate::runtime::{BoundSocket, ConfigFeed, Error, Launch, ProxyBody, ProxyHandle, Serving};
pub use capture::CaptureListeners;
use capture::{OutboundRoutes, inbound_capture_loop, outbound_capture_loop};
use inbound::{InboundPort, inbound_loop};
pub(crate) use outbound::outbound_stack;
use outbound::{OutboundTarget, outbound_loop};
#[cfg(feature = "gateway")]
pub(crate) use outbound::{served, tunnel};

/// How long a drain waits for in-flight requests and connections unless
/// told otherwise.
pub(crate) const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Configures a [`Sidecar`]: its configuration, workload, identity and
/// limits.
#[derive(Debug)]
pub struct SidecarBuilder {
    origin: ConfigOrigin,
    namespace: String,
    workload: String,
    identity: Option<IdentitySource>,
    settings: ServerSettings,
    drain_timeout: Duration,
    default_inbound_port: u16,
    service_account: Option<String>,
    trust_domain: Option<TrustDomain>,
    control_plane_id: Option<SpiffeId>,
    metrics_port: Option<u16>,
    place: Place,
}

/// Where the workload is, over its WorkloadEntry's `locality` and
/// `network`: for locality-aware load balancing and the endpoints of its
/// network.
#[derive(Debug, Clone, Default)]
pub struct Place {
    /// `region/zone/subzone`.
    pub locality: Option<mesh_core::locality::Locality>,
    /// The network.
    pub network: Option<String>,
}

/// Where a sidecar's configuration comes from.
#[derive(Debug, Clone)]
enum ConfigOrigin {
    Files(PathBuf),
    ControlPlane(String),
}

impl SidecarBuilder {
    /// Places the workload in a locality and network, over its
    /// WorkloadEntry's (Istio's agent: `ISTIO_META_NETWORK`, the
    /// `istio-locality` label).
    #[must_use]
    pub fn place(mut self, place: Place) -> Self {
        self.place = place;
        self
    }

    /// The workload's service account: with a control plane, the identity
    /// is `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`,
    /// obtained before the configuration (whose stream it authenticates).
    /// From files, the WorkloadEntry's is used and this is not needed.
    #[must_use]
    pub fn service_account(mut self, sa: impl Into<String>) -> Self {
        self.service_account = Some(sa.into());
        self
    }

    /// The trust domain of the identity with a control plane (default
    /// `cluster.local`).
    #[must_use]
    pub fn trust_domain(mut self, td: TrustDomain) -> Self {
        self.trust_domain = Some(td);
        self
    }

    /// The SPIFFE ID the control plane presents (default: the CA's,
    /// [`mesh_ca::ca_id`] of the trust domain).
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

    /// Where the sidecar's own certificate comes from (required).
    #[must_use]
    pub fn identity(mut self, source: IdentitySource) -> Self {
        self.identity = Some(source);
        self
    }

    /// The limits every served connection is held to (timeouts, body cap);
    /// by default [`ServerSettings::default`], the command line's defaults.
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

    /// The inbound port when the WorkloadEntry names none (default 15006).
    #[must_use]
    pub fn default_inbound_port(mut self, port: u16) -> Self {
        self.default_inbound_port = port;
        self
    }

    /// Loads the configuration (and starts watching it) and finds the
    /// workload in it. A sidecar on a control plane is built with
    /// [`connect`](Self::connect).
    pub fn build(self) -> Result<Sidecar, Error> {
        self.try_build().map_err(Error::new)
    }

    /// Builds the sidecar from either origin. On a control plane: obtains
    /// the identity, opens the configuration stream with it and waits for
    /// the first good configuration (logging, every few seconds, why there
    /// is none yet), then finds the workload in it. From files, as
    /// [`build`](Self::build).
    pub async fn connect(self) -> Result<Sidecar, Error> {
        match &self.origin {
            ConfigOrigin::Files(_) => self.try_build(),
            ConfigOrigin::ControlPlane(addr) => {
                let addr = addr.clone();
                self.follow(addr).await
            }
        }
        .map_err(Error::new)
    }

    async fn follow(self, addr: String) -> Result<Sidecar> {
        let key = format!("{}/{}", self.namespace, self.workload);
        let sa = self.service_account.as_deref().ok_or_else(|| {
            anyhow!("a sidecar on a control plane needs its service account (--service-account)")
        })?;
        let td = crate::runtime::trust_domain_or_default(self.trust_domain.clone())?;
        let id = SpiffeId::for_workload(&td, &self.namespace, sa)?;
        let source = self
            .identity
            .as_ref()
            .ok_or_else(|| anyhow!("no identity source: give SidecarBuilder::identity"))?;
        let (obtained, store, client) = crate::runtime::join(
            &addr,
            source,
            &id,
            self.control_plane_id.clone(),
            &key,
            self.metrics_port,
        )
        .await?;
        let snap = store.load();
        let (_, w) = snap
            .workload(&key)
            .ok_or_else(|| anyhow!("the control plane at {addr} sent no WorkloadEntry {key}"))?;
        if w.identity != id {
            anyhow::bail!(
                "the WorkloadEntry {key} has the identity {}, but this sidecar is {id}",
                w.identity
            );
        }
        drop(snap);
        Ok(Sidecar {
            store,
            watcher: ConfigFeed::ControlPlane(client),
            key,
            namespace: self.namespace,
            workload: self.workload,
            identity_id: id,
            identity: Prepared::Obtained(obtained),
            settings: self.settings,
            drain_timeout: self.drain_timeout,
            default_inbound_port: self.default_inbound_port,
            status: None,
            place: self.place.clone(),
        })
    }

    fn try_build(self) -> Result<Sidecar> {
        let key = format!("{}/{}", self.namespace, self.workload);
        let ConfigOrigin::Files(config) = &self.origin else {
            anyhow::bail!("a sidecar on a control plane is built with SidecarBuilder::connect");
        };
        let (store, watcher) = crate::runtime::start_store(
            mesh_core::store::FileSource::new(config).seen_by_workload(key.clone()),
        )?;
        let identity_id = {
            let snap = store.load();
            let (_, w) = snap
                .workload(&key)
                .ok_or_else(|| anyhow!("no WorkloadEntry {key} in {}", config.display()))?;
            w.identity.clone()
        };
        let identity = self
            .identity
            .ok_or_else(|| anyhow!("no identity source: give SidecarBuilder::identity"))?;
        Ok(Sidecar {
            store,
            watcher: watcher.into(),
            key,
            namespace: self.namespace,
            workload: self.workload,
            identity_id,
            identity: Prepared::Source(identity),
            settings: self.settings,
            drain_timeout: self.drain_timeout,
            default_inbound_port: self.default_inbound_port,
            status: None,
            place: self.place.clone(),
        })
    }
}

/// A sidecar with its configuration loaded, ready to
/// [`start`](Self::start) on the sockets its caller bound.
#[derive(Debug)]
pub struct Sidecar {
    store: Arc<Store>,
    watcher: ConfigFeed,
    /// `namespace/name` of the workload.
    key: String,
    namespace: String,
    workload: String,
    identity_id: SpiffeId,
    identity: Prepared,
    settings: ServerSettings,
    drain_timeout: Duration,
    default_inbound_port: u16,
    status: Option<(TcpListener, Arc<mesh_kube::inject::AppProbes>)>,
    place: Place,
}

/// A port the sidecar serves inbound, as the configuration names it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkloadPort {
    /// The port's name in the WorkloadEntry (`None`: it names no port, and
    /// this is the default inbound port, served as HTTP).
    pub name: Option<String>,
    /// The address to bind: the WorkloadEntry's address (or the Sidecar
    /// ingress listener's `bind`) and the port.
    pub addr: SocketAddr,
    /// The app behind it, when the configuration names it (a Sidecar
    /// ingress listener's `defaultEndpoint`); else the command line's.
    pub app: Option<SocketAddr>,
}

/// One inbound port: its socket and the local app it forwards to.
#[derive(Debug)]
pub struct InboundListener {
    socket: BoundSocket,
    app: SocketAddr,
}

impl InboundListener {
    /// Serves `socket` (bound to one of [`Sidecar::inbound_ports`]) in
    /// front of the app at `app`.
    pub fn new(socket: BoundSocket, app: SocketAddr) -> Self {
        Self { socket, app }
    }
}

/// A local port for one service, for apps that cannot be told about the
/// mesh: what is sent to it goes to `host:port`, whatever Host the app
/// wrote.
#[derive(Debug)]
pub struct OutboundListener {
    socket: BoundSocket,
    host: String,
    port: u16,
}

impl OutboundListener {
    /// Serves `socket` as the service `host:port` (a short host resolves in
    /// the workload's namespace).
    pub fn new(host: impl Into<String>, port: u16, socket: BoundSocket) -> Self {
        Self {
            socket,
            host: host.into(),
            port,
        }
    }
}

/// The sockets a sidecar serves.
#[derive(Debug)]
pub struct SidecarListeners {
    /// The admin listener, served at once (readiness, metrics,
    /// configuration and certificate dumps).
    pub admin: TcpListener,
    /// One per port of [`Sidecar::inbound_ports`].
    pub inbound: Vec<InboundListener>,
    /// The local ports for single services.
    pub outbound: Vec<OutboundListener>,
    /// The HTTP forward proxy, routing by Host or absolute URI.
    pub http_proxy: Option<BoundSocket>,
    /// Capture mode's listeners, where `mesh-proxy init`'s rules redirect
    /// the network namespace's TCP.
    pub capture: Option<CaptureListeners>,
}

impl Sidecar {
    /// A sidecar for the WorkloadEntry `namespace/workload` of the
    /// configuration at `config` (a YAML file or a folder of them, reloaded
    /// on change).
    pub fn builder(
        config: impl Into<PathBuf>,
        namespace: impl Into<String>,
        workload: impl Into<String>,
    ) -> SidecarBuilder {
        Self::builder_from(ConfigOrigin::Files(config.into()), namespace, workload)
    }

    /// A sidecar for the WorkloadEntry `namespace/workload`, following the
    /// control plane at `addr` (`host:port`, its CA port): built with
    /// [`SidecarBuilder::connect`], which needs its
    /// [`service_account`](SidecarBuilder::service_account).
    pub fn following(
        addr: impl Into<String>,
        namespace: impl Into<String>,
        workload: impl Into<String>,
    ) -> SidecarBuilder {
        Self::builder_from(ConfigOrigin::ControlPlane(addr.into()), namespace, workload)
    }

    fn builder_from(
        origin: ConfigOrigin,
        namespace: impl Into<String>,
        workload: impl Into<String>,
    ) -> SidecarBuilder {
        SidecarBuilder {
            origin,
            namespace: namespace.into(),
            workload: workload.into(),
            identity: None,
            settings: ServerSettings::default(),
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            default_inbound_port: 15006,
            service_account: None,
            trust_domain: None,
            control_plane_id: None,
            metrics_port: None,
            place: Place::default(),
        }
    }

    /// The inbound ports to bind: the `ingress` listeners of the Sidecar
    /// in force for the workload (on their `bind` address, forwarding to
    /// their `defaultEndpoint`), else one per port of the WorkloadEntry,
    /// on its address, or the default inbound port when it names none.
    pub fn inbound_ports(&self) -> Vec<WorkloadPort> {
        let snap = self.store.load();
        let Some((_, w)) = snap.workload(&self.key) else {
            return Vec::new();
        };
        let ip: IpAddr = w.address.parse().unwrap_or(IpAddr::from([127, 0, 0, 1]));
        if let Some(ingress) = &w.ingress {
            return ingress
                .iter()
                .map(|l| WorkloadPort {
                    name: l.name.clone(),
                    addr: SocketAddr::new(l.bind.unwrap_or(ip), l.number),
                    app: Some(l.app),
                })
                .collect();
        }
        let mut ports: Vec<WorkloadPort> = w
            .ports
            .iter()
            .map(|(name, port)| WorkloadPort {
                name: Some(name.clone()),
                addr: SocketAddr::new(ip, *port),
                app: None,
            })
            .collect();
        if ports.is_empty() {
            ports.push(WorkloadPort {
                name: None,
                addr: SocketAddr::new(ip, self.default_inbound_port),
                app: None,
            });
        }
        ports
    }

    /// Whether the Sidecar in force for the workload names its inbound
    /// ports (`ingress`): read in explicit mode only.
    pub fn has_ingress_listeners(&self) -> bool {
        let snap = self.store.load();
        snap.workload(&self.key)
            .is_some_and(|(_, w)| w.ingress.is_some())
    }

    /// The capture listeners' ports from MeshConfig's `ports`: (outbound,
    /// inbound), Istio's 15001 and 15006 by default.
    pub fn capture_ports(&self) -> (u16, u16) {
        let ports = &self.store.load().mesh.ports;
        (ports.outbound, ports.inbound)
    }

    /// What each inbound socket serves: the protocol of the service port
    /// its WorkloadEntry port backs (by port number), and its app.
    fn inbound_plan(
        &self,
        inbound: Vec<InboundListener>,
    ) -> Result<Vec<(BoundSocket, InboundPort)>> {
        let snap = self.store.load();
        let (_, w) = snap
            .workload(&self.key)
            .ok_or_else(|| anyhow!("no WorkloadEntry {}", self.key))?;
        let mut plan = Vec::new();
        for l in inbound {
            let port = l.socket.local_addr().port();
            let ingress = w
                .ingress
                .as_ref()
                .and_then(|i| i.iter().find(|l| l.number == port));
            let protocol = if let Some(l) = ingress {
                l.protocol
            } else if w.ports.is_empty() {
                Protocol::Http
            } else {
                port_protocol(&snap, w, port).ok_or_else(|| {
                    anyhow!(
                        "inbound socket {}: the WorkloadEntry {} has no port {port}",
                        l.socket.local_addr(),
                        self.key
                    )
                })?
            };
            let app = l.app;
            plan.push((
                l.socket,
                InboundPort {
                    port,
                    protocol,
                    app,
                },
            ));
        }
        Ok(plan)
    }

    /// Also serves readiness and metrics (`/healthz/ready`, `/ready`,
    /// `/stats/prometheus`), and nothing else, on `listener`: the status
    /// port (Istio's 15020) the kubelet probes and Prometheus scrape on the
    /// pod's address, while the admin listener stays on loopback.
    ///
    /// `probes` are the app's own probes the injector moved here
    /// (`MESH_APP_PROBES`): `/app-health/CONTAINER/KIND` runs each against
    /// the app on loopback.
    #[must_use]
    pub fn status_listener(
        mut self,
        listener: TcpListener,
        probes: mesh_kube::inject::AppProbes,
    ) -> Self {
        self.status = Some((listener, Arc::new(probes)));
        self
    }

    /// Starts the sidecar: the admin listener at once; once the identity is
    /// issued, the inbound, outbound and HTTP-proxy ports. Must be called
    /// within a Tokio runtime; the returned handle's
    /// [`ready`](ProxyHandle::ready) says when it serves.
    pub fn start(self, listeners: SidecarListeners) -> Result<ProxyHandle, Error> {
        self.try_start(listeners).map_err(Error::new)
    }

    fn try_start(self, listeners: SidecarListeners) -> Result<ProxyHandle> {
        let SidecarListeners {
            admin,
            inbound,
            outbound,
            http_proxy,
            capture,
        } = listeners;
        let inbound = self.inbound_plan(inbound)?;
        let capture = capture.unwrap_or_default();
        let local_addrs = inbound
            .iter()
            .map(|(s, _)| s.local_addr())
            .chain(outbound.iter().map(|o| o.socket.local_addr()))
            .chain(http_proxy.iter().map(BoundSocket::local_addr))
            .chain(capture.outbound.iter().map(BoundSocket::local_addr))
            .chain(capture.inbound.iter().map(BoundSocket::local_addr))
            .collect();
        let (controller, drain) = mesh_tower::server::drain_pair(self.settings);
        let registry = Registry::new();
        let state = AdminState::new(self.store.clone(), self.watcher.metrics_sources(&registry));
        let mode = capture.mode();
        tracing::info!(%mode, workload = %self.key, "sidecar mode");
        let _ = state.mode.set(mode);
        let admin_addr = admin.local_addr()?;
        let start = serve(
            self.store,
            self.key,
            self.namespace,
            self.workload,
            OwnIdentity {
                id: self.identity_id,
                source: self.identity,
            },
            Ports {
                inbound,
                outbound,
                http_proxy,
                capture,
            },
            Shared {
                admin: state.clone(),
                admin_addr,
                drain: drain.clone(),
                registry,
                place: self.place,
            },
        );
        crate::runtime::launch(Launch {
            admin,
            status: self.status,
            state,
            drain: (controller, drain),
            drain_timeout: self.drain_timeout,
            local_addrs,
            start,
            watcher: self.watcher,
        })
    }
}

/// The protocol the workload serves on its port `port`: that of the
/// service port its WorkloadEntry port (by number) backs, else the port
/// name's; `None` when the WorkloadEntry has no such port.
fn port_protocol(
    snap: &mesh_core::snapshot::Snapshot,
    w: &mesh_core::snapshot::Workload,
    port: u16,
) -> Option<Protocol> {
    let (name, _) = w.ports.iter().find(|(_, p)| **p == port)?;
    Some(
        snap.services
            .values()
            .filter(|s| s.workloads.iter().any(|i| snap.workloads[*i].key == w.key))
            .flat_map(|s| s.ports.iter())
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .map_or_else(|| Protocol::from_port_name(name), |p| p.protocol),
    )
}

/// Who the sidecar is and where its certificate comes from.
struct OwnIdentity {
    id: SpiffeId,
    source: Prepared,
}

/// The serving sockets, not yet listened on.
struct Ports {
    inbound: Vec<(BoundSocket, InboundPort)>,
    outbound: Vec<OutboundListener>,
    http_proxy: Option<BoundSocket>,
    capture: CaptureListeners,
}

/// What the start shares with the admin listener.
struct Shared {
    admin: Arc<AdminState>,
    admin_addr: SocketAddr,
    drain: Drain,
    registry: Registry,
    place: Place,
}

/// Obtains the identity, then listens on every port: the accept loops.
async fn serve(
    store: Arc<Store>,
    key: String,
    namespace: String,
    workload: String,
    identity: OwnIdentity,
    ports: Ports,
    shared: Shared,
) -> Result<Vec<Serving>> {
    let Shared {
        admin,
        admin_addr,
        drain,
        registry,
        place,
    } = shared;
    tracing::info!(%admin_addr, workload = %key, "admin listening; obtaining the workload identity");
    let obtained = identity.source.obtain(&identity.id).await?;
    tracing::info!(identity = %identity.id, "identity issued");
    let creds = obtained.store().clone();
    admin.identity.store(Some(obtained));

    let telemetry = Arc::new(mesh_tower::telemetry::TelemetrySettings::new(
        store.clone(),
        &namespace,
        &workload,
    ));
    let ctx = Ctx {
        store: store.clone(),
        key: key.clone(),
        drain: drain.clone(),
        registry: registry.clone(),
        telemetry: telemetry.clone(),
    };
    let acceptors = ModeAcceptor::new(&creds)?;
    let mut serving: Vec<Serving> = Vec::new();
    for socket in ports.capture.inbound {
        let addr = socket.local_addr();
        let listener = socket
            .listen()
            .with_context(|| format!("binding the inbound capture listener {addr}"))?;
        tracing::info!(%addr, "inbound capture listening");
        serving.push(Box::pin(inbound_capture_loop(
            listener,
            ctx.clone(),
            acceptors.clone(),
        )));
    }
    for (socket, p) in ports.inbound {
        let addr = socket.local_addr();
        let listener = socket
            .listen()
            .with_context(|| format!("binding inbound {}:{}", addr.ip(), addr.port()))?;
        tracing::info!(port = p.port, protocol = %p.protocol, app = %p.app, "inbound listening");
        serving.push(Box::pin(inbound_loop(
            listener,
            p,
            ctx.clone(),
            acceptors.clone(),
        )));
    }

    let connector = MeshConnector::new(creds.clone());
    let local = local_info(&store, &key);
    let router = Router::new(
        store.clone(),
        RouterConfig::for_workload(&namespace, &workload)
            .located(place.locality.clone(), place.network.clone()),
        Some(connector.clone()),
    );
    let router = outbound_stack(router, registry.clone(), local.clone(), telemetry.clone());
    let tcp = TcpRouter::new(store.clone(), &namespace, Some(connector))
        .with_peer(local.peer_header())
        .located(Some(key.clone()), place.locality, place.network);
    let tcp_telemetry = TcpTelemetry::outbound(registry.clone(), local).with_settings(telemetry);
    for o in ports.outbound {
        let listen = o.socket.local_addr();
        let listener = o
            .socket
            .listen()
            .with_context(|| format!("binding outbound {listen}"))?;
        let (host, port) = (o.host, o.port);
        tracing::info!(%listen, host, port, "outbound listening");
        let target = OutboundTarget {
            host,
            port,
            namespace: namespace.clone(),
        };
        serving.push(Box::pin(outbound_loop(
            listener,
            target,
            ctx.clone(),
            router.clone(),
            tcp.clone(),
            tcp_telemetry.clone(),
        )));
    }
    for socket in ports.capture.outbound {
        let addr = socket.local_addr();
        let listener = socket
            .listen()
            .with_context(|| format!("binding the outbound capture listener {addr}"))?;
        tracing::info!(%addr, "outbound capture listening");
        let routes = OutboundRoutes {
            router: router.clone(),
            tcp: tcp.clone(),
            telemetry: tcp_telemetry.clone(),
            namespace: namespace.clone(),
        };
        serving.push(Box::pin(outbound_capture_loop(
            listener,
            ctx.clone(),
            routes,
        )));
    }
    if let Some(socket) = ports.http_proxy {
        let addr = socket.local_addr();
        let listener = socket
            .listen()
            .with_context(|| format!("binding the HTTP proxy {addr}"))?;
        tracing::info!(%addr, "HTTP proxy listening");
        let router = router.clone();
        let drain2 = drain.clone();
        serving.push(Box::pin(accept_loop(listener, drain, move |tcp, _| {
            tokio::spawn(serve_connection(tcp, router.clone(), drain2.clone(), None));
        })));
    }
    Ok(serving)
}

/// What every connection handler of the sidecar shares.
#[derive(Debug, Clone)]
struct Ctx {
    store: Arc<Store>,
    /// `namespace/name` of the workload.
    key: String,
    drain: Drain,
    registry: Registry,
    /// What the Telemetry API says of the workload.
    telemetry: Arc<mesh_tower::telemetry::TelemetrySettings>,
}

/// `/stats/prometheus` lines from the telemetry registry.
pub(crate) fn metrics_source(registry: &Registry) -> crate::admin::MetricsSource {
    let registry = registry.clone();
    Arc::new(move || registry.render())
}

/// The telemetry labels of this workload.
fn local_info(store: &Store, key: &str) -> WorkloadInfo {
    let snap = store.load();
    snap.workload(key)
        .map_or_else(WorkloadInfo::unknown, |(_, w)| {
            WorkloadInfo::from_workload(w)
        })
}

/// The outbound HTTP stack: telemetry (reporter `source`) in front of the
/// router, answers boxed.
pub(crate) type Outbound = tower::util::BoxCloneSyncService<
    Request<ProxyBody>,
    Response<BoxBody>,
    std::convert::Infallible,
>;
