//! What every long-running role shares: the configuration store and its
//! watcher, the sockets it serves, and the one task that runs it (the admin
//! listener at once, the rest once the identity is issued) under one drain.
//! Serving itself is the one server module of `mesh-tower`
//! ([`mesh_tower::server`]).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use mesh_core::store::{FileSource, FileWatcher, Store};
use mesh_tower::server::{Drain, DrainController, ServerHandle};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::admin::AdminState;

/// The body of every request the proxy serves.
pub(crate) type ProxyBody = mesh_tower::server::ServerBody;

/// An accept loop, boxed so that the roles' loops share one type.
pub(crate) type Serving = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Why the proxy could not start or stopped serving: what went wrong and
/// its causes, in one message (`Display` gives the whole chain, so
/// [`source`](std::error::Error::source) is empty).
#[derive(Debug, Clone)]
pub struct Error(Arc<anyhow::Error>);

impl Error {
    pub(crate) fn new(e: anyhow::Error) -> Self {
        Self(Arc::new(e))
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#}", self.0)
    }
}

impl std::error::Error for Error {}

/// A TCP socket bound to the address a port of the proxy serves, not yet
/// listened on. The proxy listens on it once it has its identity: until
/// then a client is refused at once, as by a closed port, rather than held
/// in a backlog; and the address is the caller's from the start, port 0
/// included, so nothing can take it between choosing and serving.
#[derive(Debug)]
pub struct BoundSocket {
    socket: TcpSocket,
    addr: SocketAddr,
}

impl BoundSocket {
    /// Binds `addr` (port 0: a free port), with `SO_REUSEADDR` set as for
    /// any listener, so a restart is not refused for connections of the
    /// previous process still in TIME_WAIT.
    pub fn bind(addr: SocketAddr) -> std::io::Result<Self> {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        let addr = socket.local_addr()?;
        Ok(Self { socket, addr })
    }

    /// The address it is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Starts listening (the backlog every tokio listener gets).
    pub(crate) fn listen(self) -> std::io::Result<TcpListener> {
        self.socket.listen(1024)
    }
}

/// Loads what `source` gives of the configuration (a gateway's or a
/// workload's view, [`mesh_core::visibility`]) and starts watching it. An
/// unreadable configuration at start is fatal (there is no last good one
/// to keep).
pub(crate) fn start_store(source: FileSource) -> anyhow::Result<(Arc<Store>, FileWatcher)> {
    let store = Arc::new(Store::from_source(&source).map_err(|e| anyhow::anyhow!("{e}"))?);
    let watcher = FileWatcher::spawn(store.clone(), source).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok((store, watcher))
}

/// The trust domain given, else `cluster.local`.
pub(crate) fn trust_domain_or_default(
    td: Option<mesh_core::identity::TrustDomain>,
) -> anyhow::Result<mesh_core::identity::TrustDomain> {
    match td {
        Some(td) => Ok(td),
        None => Ok(mesh_core::identity::TrustDomain::new("cluster.local")?),
    }
}

/// Obtains the identity `id` from `source`, then follows the control plane
/// at `addr` (presenting `control_plane_id`, else the CA's identity of
/// `id`'s trust domain) as `node` with it, until its first good
/// configuration, telling it the port of its metrics.
pub(crate) async fn join(
    addr: &str,
    source: &crate::identity::IdentitySource,
    id: &mesh_core::identity::SpiffeId,
    control_plane_id: Option<mesh_core::identity::SpiffeId>,
    node: &str,
    metrics_port: Option<u16>,
) -> anyhow::Result<(
    Arc<crate::identity::Identity>,
    Arc<Store>,
    Arc<mesh_tower::xds::XdsClient>,
)> {
    tracing::info!(identity = %id, control_plane = %addr, %node, "obtaining the identity");
    let obtained = Arc::new(source.obtain(id).await?);
    let server_id = control_plane_id.unwrap_or_else(|| mesh_ca::ca_id(id.trust_domain()));
    let mut config = mesh_tower::xds::XdsConfig::new(addr, server_id, node);
    config.metrics_port = metrics_port;
    let (store, client) = mesh_tower::xds::follow(config, obtained.store().clone()).await;
    Ok((obtained, store, Arc::new(client)))
}

/// Where a starting proxy is.
#[derive(Debug, Clone)]
enum State {
    Starting,
    Ready,
    Failed(Error),
}

/// A running sidecar or gateway. [`ready`](Self::ready) resolves once the
/// configuration is loaded, the identity issued and every port listened
/// on; [`shutdown`](Self::shutdown) drains (stops accepting, lets what is
/// in flight finish, up to the drain timeout) and surfaces a panic of the
/// proxy's tasks. Dropping the handle stops accepting and starts the drain
/// without waiting.
#[derive(Debug)]
pub struct ProxyHandle {
    server: ServerHandle,
    local_addrs: Vec<SocketAddr>,
    state: watch::Receiver<State>,
}

impl ProxyHandle {
    /// The admin listener's address (`/ready`, `/stats/prometheus`,
    /// `/config_dump`, `/certs`).
    pub fn admin_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// The addresses of the serving ports, in the order their sockets were
    /// given (the sidecar: inbound, outbound, then the HTTP proxy; the
    /// gateway: its servers' ports).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    /// Waits until the proxy serves: the configuration loaded, the identity
    /// issued (with a CA that is down, this waits until it answers) and
    /// every port listened on. An error is why it never will: its start
    /// failed, or it was shut down first.
    pub async fn ready(&self) -> Result<(), Error> {
        let mut state = self.state.clone();
        let state = state
            .wait_for(|s| !matches!(s, State::Starting))
            .await
            .map(|s| s.clone());
        match state {
            Ok(State::Failed(e)) => Err(e),
            Ok(_) => Ok(()),
            Err(_) => Err(Error::new(anyhow::anyhow!(
                "the proxy stopped before it was ready"
            ))),
        }
    }

    /// Stops accepting and lets in-flight requests and connections finish,
    /// for at most the drain timeout; a panic of the proxy's tasks is
    /// raised here.
    pub async fn shutdown(self) {
        self.server.shutdown().await;
    }
}

/// What [`launch`] runs.
pub(crate) struct Launch<F> {
    pub(crate) admin: TcpListener,
    /// The status listener (readiness, metrics and the app's probes), if
    /// any.
    pub(crate) status: Option<(TcpListener, Arc<mesh_kube::inject::AppProbes>)>,
    pub(crate) state: Arc<AdminState>,
    pub(crate) drain: (DrainController, Drain),
    pub(crate) drain_timeout: Duration,
    pub(crate) local_addrs: Vec<SocketAddr>,
    /// Obtains the identity and listens: the accept loops to run.
    pub(crate) start: F,
    /// What feeds the configuration, kept for as long as the proxy runs.
    pub(crate) watcher: ConfigFeed,
}

/// What feeds a proxy's store: its files' watcher, or its stream from the
/// control plane. Dropping it stops the feed.
#[derive(Debug)]
pub(crate) enum ConfigFeed {
    /// `--config DIR`.
    Files(#[allow(dead_code)] FileWatcher),
    /// `--control-plane ADDR`; its status is also rendered by the admin
    /// listener's metrics.
    ControlPlane(Arc<mesh_tower::xds::XdsClient>),
}

impl ConfigFeed {
    /// What the admin listener's metrics render: the requests' registry,
    /// and the control plane stream's own metrics when there is one.
    pub(crate) fn metrics_sources(
        &self,
        registry: &mesh_tower::telemetry::Registry,
    ) -> Vec<crate::admin::MetricsSource> {
        let mut sources = vec![crate::sidecar::metrics_source(registry)];
        if let Self::ControlPlane(client) = self {
            let status = client.status().clone();
            sources.push(Arc::new(move || {
                let mut out = String::new();
                status.render(&mut out);
                out
            }));
        }
        sources
    }
}

impl From<FileWatcher> for ConfigFeed {
    fn from(w: FileWatcher) -> Self {
        Self::Files(w)
    }
}

/// Runs a proxy as one task: the admin listener at once, then `start`
/// (stopped by a drain that comes first), then its accept loops until the
/// drain. Must be called within a Tokio runtime.
pub(crate) fn launch<F>(l: Launch<F>) -> anyhow::Result<ProxyHandle>
where
    F: Future<Output = anyhow::Result<Vec<Serving>>> + Send + 'static,
{
    let admin_addr = l.admin.local_addr()?;
    let (controller, drain) = l.drain;
    let (tx, rx) = watch::channel(State::Starting);
    let admin_loop = crate::admin::serve(
        l.admin,
        l.state.clone(),
        drain.clone(),
        crate::admin::Endpoints::Admin,
    );
    let status_loop = l.status.map(|(status, probes)| {
        crate::admin::serve(
            status,
            l.state.clone(),
            drain.clone(),
            crate::admin::Endpoints::Status(probes),
        )
    });
    let (start, state, watcher) = (l.start, l.state, l.watcher);
    let task = async move {
        let _watcher = watcher;
        let mut loops = JoinSet::new();
        loops.spawn(admin_loop);
        if let Some(status_loop) = status_loop {
            loops.spawn(status_loop);
        }
        let started = tokio::select! {
            r = start => Some(r),
            () = drain.signaled() => None,
        };
        match started {
            Some(Ok(serving)) => {
                for s in serving {
                    loops.spawn(s);
                }
                state.listeners_up.store(true, Ordering::Release);
                tracing::info!("ready");
                tx.send_replace(State::Ready);
            }
            Some(Err(e)) => {
                tx.send_replace(State::Failed(Error::new(e)));
            }
            // Drained before it was ready: `ready` says so when `tx` drops.
            None => {}
        }
        while let Some(r) = loops.join_next().await {
            if let Err(e) = r {
                if e.is_panic() {
                    std::panic::resume_unwind(e.into_panic());
                }
            }
        }
    };
    Ok(ProxyHandle {
        server: ServerHandle::spawn(admin_addr, controller, l.drain_timeout, task),
        local_addrs: l.local_addrs,
        state: rx,
    })
}
