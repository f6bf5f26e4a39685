//! The proxyless front door: a Rust service gets the whole mesh in-process,
//! with no sidecar and no extra hop.
//!
//! [`Mesh::builder`] reads the configuration (Istio YAML, watched for
//! changes), names the workload, and gets its identity (files, a
//! [`CredentialStore`] you manage, or mesh-ca with a join token). Then:
//!
//! - [`Mesh::client`] is a tower `Service` that routes, secures (mTLS with
//!   secure naming) and measures outbound calls by service host, carrying
//!   the trace of the request being handled;
//! - [`Mesh::serve`] serves any tower/hyper/axum/tonic service behind the
//!   mesh's acceptor (the PeerAuthentication mode of the port, read per
//!   connection), authorization and telemetry, with graceful shutdown.
//!
//! ```no_run
//! use mesh_tower::Mesh;
//! use tower::ServiceExt;
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let mesh = Mesh::builder()
//!     .config("mesh/")                          // Istio YAML, reloaded on change
//!     .workload("default", "reviews-v1")         // our WorkloadEntry
//!     .identity_files("id/cert.pem", "id/key.pem", "id/bundle.pem")
//!     .build()
//!     .await?;
//!
//! // Inbound: mTLS, AuthorizationPolicy and Istio metrics around any service.
//! let app = tower::service_fn(|_req: http::Request<mesh_tower::body::BoxBody>| async {
//!     Ok::<_, std::convert::Infallible>(http::Response::new(mesh_tower::body::full("hello")))
//! });
//! let server = mesh.serve("127.0.0.1:9080".parse()?, app).await?;
//!
//! // Outbound: by service host; routed, secured, measured.
//! let req = http::Request::get("http://ratings/").body(mesh_tower::body::empty())?;
//! let resp = mesh.client().oneshot(req).await?;
//! println!("{} via the mesh", resp.status());
//! server.shutdown().await;
//! # Ok(()) }
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response, Uri};
use mesh_ca::{
    CaClient, CertManager, CredentialStore, FileSource, ManagerConfig, TrustBundle, TrustBundleSet,
};
use mesh_core::identity::{SpiffeId, TrustDomain};
use mesh_core::store::{FileSource as ConfigFiles, FileWatcher, Store};
use tokio::net::TcpListener;

use crate::authz::{AuthorizeLayer, LocalAddr, LocalWorkload, drop_transport_authority};
use crate::body::{BoxBody, BoxError, boxed};
use crate::limits::BodyLimits;
use crate::server::{
    AppService, Known, ModeAcceptor, ServerBody, ServerHandle, ServerSettings, accept_loop,
    drain_pair, serve_connection,
};
use crate::telemetry::{
    DestinationInfo, MetricsService, Registry, SourceInfo, Telemetry, TelemetryLayer, WorkloadInfo,
    inbound_labels,
};
use crate::tls::{MeshConnector, PeerIdentity};
use crate::traffic::{ClientAddr, Router, RouterConfig};
use crate::xds::XdsConfig;

/// Why the mesh could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MeshStartError {
    /// A required setting was not given.
    #[error("missing setting: {0}")]
    Missing(&'static str),
    /// The configuration could not be read or is invalid.
    #[error("{0}")]
    Config(String),
    /// The workload is not in the configuration.
    #[error("no WorkloadEntry {0} in the configuration")]
    UnknownWorkload(String),
    /// The identity could not be obtained.
    #[error("identity: {0}")]
    Identity(String),
    /// Binding or TLS setup failed.
    #[error("{0}")]
    Io(String),
}

enum IdentitySource {
    Store(CredentialStore),
    Files(PathBuf, PathBuf, PathBuf),
    Ca {
        addr: String,
        root: PathBuf,
        token: Option<String>,
    },
}

/// Builds a [`Mesh`].
#[must_use]
pub struct MeshBuilder {
    config: Option<PathBuf>,
    store: Option<Arc<Store>>,
    control_plane: Option<String>,
    control_plane_id: Option<SpiffeId>,
    service_account: Option<String>,
    trust_domain: Option<TrustDomain>,
    workload: Option<(String, String)>,
    identity: Option<IdentitySource>,
    settings: ServerSettings,
}

impl std::fmt::Debug for MeshBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshBuilder")
            .field("config", &self.config)
            .field("control_plane", &self.control_plane)
            .field("workload", &self.workload)
            .finish_non_exhaustive()
    }
}

impl MeshBuilder {
    /// Reads Istio YAML from a file or folder, and reloads it on change.
    pub fn config(mut self, path: impl Into<PathBuf>) -> Self {
        self.config = Some(path.into());
        self
    }

    /// Uses a store you feed yourself (Kubernetes, xDS, tests).
    pub fn store(mut self, store: Arc<Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// Follows the control plane at `addr` (`mesh-ca serve --config`, its
    /// CA port) instead of reading a folder: the configuration arrives over
    /// xDS, mTLS with this workload's SVID, into the same store, with the
    /// same reload semantics ([`crate::xds`]). [`build`](Self::build)
    /// returns once the first good configuration is in; the last good one
    /// serves while the control plane is away.
    ///
    /// The identity comes first: from [`identity_files`](Self::identity_files)
    /// or [`identity_store`](Self::identity_store) it is the certificate's;
    /// with [`identity_ca`](Self::identity_ca) name the
    /// [`service_account`](Self::service_account).
    pub fn control_plane(mut self, addr: impl Into<String>) -> Self {
        self.control_plane = Some(addr.into());
        self
    }

    /// The SPIFFE ID the control plane presents; by default the CA's of
    /// the workload's trust domain ([`mesh_ca::ca_id`]).
    pub fn control_plane_id(mut self, id: SpiffeId) -> Self {
        self.control_plane_id = Some(id);
        self
    }

    /// The workload's service account, for its identity on a control plane
    /// with [`identity_ca`](Self::identity_ca)
    /// (`spiffe://<trust domain>/ns/<namespace>/sa/<service account>`);
    /// from a folder, the WorkloadEntry's is used.
    pub fn service_account(mut self, name: &str) -> Self {
        self.service_account = Some(name.to_owned());
        self
    }

    /// The trust domain of that identity (default `cluster.local`).
    pub fn trust_domain(mut self, td: TrustDomain) -> Self {
        self.trust_domain = Some(td);
        self
    }

    /// Names this service's WorkloadEntry.
    pub fn workload(mut self, namespace: &str, name: &str) -> Self {
        self.workload = Some((namespace.to_owned(), name.to_owned()));
        self
    }

    /// Certificate, key and trust bundle files, reloaded on change.
    pub fn identity_files(
        mut self,
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
        bundle: impl Into<PathBuf>,
    ) -> Self {
        self.identity = Some(IdentitySource::Files(
            cert.into(),
            key.into(),
            bundle.into(),
        ));
        self
    }

    /// Certificates you manage (a `CertManager` of your own, tests).
    pub fn identity_store(mut self, store: CredentialStore) -> Self {
        self.identity = Some(IdentitySource::Store(store));
        self
    }

    /// mesh-ca at `addr`, trusted through its `root-cert.pem`, with a join
    /// token for the first certificate; renewed at half-life.
    pub fn identity_ca(
        mut self,
        addr: &str,
        root: impl Into<PathBuf>,
        token: Option<String>,
    ) -> Self {
        self.identity = Some(IdentitySource::Ca {
            addr: addr.to_owned(),
            root: root.into(),
            token,
        });
        self
    }

    /// How long an HTTP/1.1 client may take to send a request's headers
    /// before [`Mesh::serve`] closes its connection (default 30 s): the
    /// slowloris guard.
    pub fn header_read_timeout(mut self, timeout: Duration) -> Self {
        self.settings.header_read_timeout = timeout;
        self
    }

    /// What request bodies [`Mesh::serve`] accepts: by default any size,
    /// streamed, with a client that stalls for
    /// [`DEFAULT_BODY_READ_TIMEOUT`](crate::limits::DEFAULT_BODY_READ_TIMEOUT)
    /// cut off (408). A body over the cap is answered 413, or reaches the
    /// handler as a body error it can pass on with `?`: the mesh answers
    /// 413 or 408 for it.
    pub fn body_limits(mut self, limits: BodyLimits) -> Self {
        self.settings.body = limits;
        self
    }

    /// Everything [`Mesh::serve`] holds its connections to (timeouts, h2
    /// flood limits, body limits, drain grace): the same
    /// [`ServerSettings`] as `mesh-proxy`'s listeners, with the same
    /// defaults.
    pub fn server_settings(mut self, settings: ServerSettings) -> Self {
        self.settings = settings;
        self
    }

    /// Starts the mesh: loads the configuration (or follows the control
    /// plane), finds the workload, gets the identity.
    pub async fn build(self) -> Result<Mesh, MeshStartError> {
        let (ns, name) = self
            .workload
            .clone()
            .ok_or(MeshStartError::Missing("workload"))?;
        let key = format!("{ns}/{name}");
        let mut keep = Keep::default();
        let identity = self.identity.ok_or(MeshStartError::Missing("identity"))?;
        let (store, creds) = match (self.store, self.config, self.control_plane) {
            (Some(_), _, Some(_)) | (_, Some(_), Some(_)) => {
                return Err(MeshStartError::Config(
                    "give a configuration folder, a store or a control plane, not two".into(),
                ));
            }
            (None, None, Some(addr)) => {
                // The identity first: it authenticates the stream.
                let id = match &self.service_account {
                    Some(sa) => {
                        let td = self
                            .trust_domain
                            .clone()
                            .map_or_else(|| TrustDomain::new("cluster.local"), Ok)
                            .map_err(|e| MeshStartError::Identity(e.to_string()))?;
                        Some(
                            SpiffeId::for_workload(&td, &ns, sa)
                                .map_err(|e| MeshStartError::Identity(e.to_string()))?,
                        )
                    }
                    None => None,
                };
                let creds = obtain(identity, id.as_ref(), &mut keep).await?;
                let id = creds.load().id().clone();
                let server_id = self
                    .control_plane_id
                    .unwrap_or_else(|| mesh_ca::ca_id(id.trust_domain()));
                let (store, client) =
                    crate::xds::follow(XdsConfig::new(addr, server_id, &key), creds.clone()).await;
                keep.xds = Some(Arc::new(client));
                (store, creds)
            }
            (store, config, None) => {
                let store = match (store, config) {
                    (Some(store), _) => store,
                    (None, Some(path)) => {
                        let source = ConfigFiles::new(path).seen_by_workload(key.clone());
                        let store = Arc::new(
                            Store::from_source(&source)
                                .map_err(|e| MeshStartError::Config(e.to_string()))?,
                        );
                        keep.config = Some(Arc::new(
                            FileWatcher::spawn(store.clone(), source)
                                .map_err(|e| MeshStartError::Config(e.to_string()))?,
                        ));
                        store
                    }
                    (None, None) => {
                        return Err(MeshStartError::Missing("config, store or control plane"));
                    }
                };
                if self.service_account.is_some() || self.trust_domain.is_some() {
                    return Err(MeshStartError::Config(
                        "service_account and trust_domain are read on a control plane only; \
                         from a folder the WorkloadEntry says them"
                            .into(),
                    ));
                }
                let id = {
                    let snap = store.load();
                    let (_, w) = snap
                        .workload(&key)
                        .ok_or_else(|| MeshStartError::UnknownWorkload(key.clone()))?;
                    w.identity.clone()
                };
                let creds = obtain(identity, Some(&id), &mut keep).await?;
                (store, creds)
            }
        };
        let (id, info) = {
            let snap = store.load();
            let (_, w) = snap
                .workload(&key)
                .ok_or_else(|| MeshStartError::UnknownWorkload(key.clone()))?;
            (w.identity.clone(), WorkloadInfo::from_workload(w))
        };
        if creds.load().id() != &id {
            return Err(MeshStartError::Identity(format!(
                "the certificate is for {}, but {key} is {id}",
                creds.load().id()
            )));
        }
        Ok(Mesh {
            inner: Arc::new(MeshInner {
                store,
                key,
                ns,
                name,
                info,
                creds,
                registry: Registry::new(),
                settings: self.settings,
                _keep: keep,
            }),
        })
    }
}

/// The workload's credentials from `source`; `id` is the identity to ask
/// mesh-ca for (required for it, checked later for the others).
async fn obtain(
    source: IdentitySource,
    id: Option<&SpiffeId>,
    keep: &mut Keep,
) -> Result<CredentialStore, MeshStartError> {
    Ok(match source {
        IdentitySource::Store(s) => s,
        IdentitySource::Files(cert, key_file, bundle) => {
            let w = FileSource::new(cert, key_file, bundle)
                .watch()
                .map_err(|e| MeshStartError::Identity(e.to_string()))?;
            let s = w.store().clone();
            keep.files = Some(Arc::new(w));
            s
        }
        IdentitySource::Ca { addr, root, token } => {
            let id = id.ok_or(MeshStartError::Missing(
                "service_account (the identity to ask mesh-ca for)",
            ))?;
            let pem = std::fs::read(&root)
                .map_err(|e| MeshStartError::Identity(format!("{}: {e}", root.display())))?;
            let bundle =
                TrustBundle::from_pem(&pem).map_err(|e| MeshStartError::Identity(e.to_string()))?;
            let bundles = TrustBundleSet::single(id.trust_domain().clone(), bundle);
            let mut client = CaClient::new(addr, mesh_ca::ca_id(id.trust_domain()), bundles);
            if let Some(t) = token {
                client = client.with_token(t);
            }
            let m = CertManager::start(id.clone(), Arc::new(client), ManagerConfig::default())
                .await
                .map_err(|e| MeshStartError::Identity(e.to_string()))?;
            let s = m.store().clone();
            keep.manager = Some(Arc::new(m));
            s
        }
    })
}

/// What must live as long as the mesh: watchers and the renewal task.
#[derive(Default)]
struct Keep {
    config: Option<Arc<FileWatcher>>,
    xds: Option<Arc<crate::xds::XdsClient>>,
    files: Option<Arc<mesh_ca::FileWatcher>>,
    manager: Option<Arc<CertManager>>,
}

struct MeshInner {
    store: Arc<Store>,
    key: String,
    ns: String,
    name: String,
    info: WorkloadInfo,
    creds: CredentialStore,
    registry: Registry,
    settings: ServerSettings,
    _keep: Keep,
}

/// The mesh, in-process. Cheap to clone.
#[derive(Clone)]
pub struct Mesh {
    inner: Arc<MeshInner>,
}

impl std::fmt::Debug for Mesh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mesh")
            .field("workload", &self.inner.key)
            .finish_non_exhaustive()
    }
}

/// The outbound client: telemetry (with trace propagation) around the
/// router. A tower `Service` for any request body, tonic's included.
pub type MeshClient = Telemetry<Router>;

impl Mesh {
    /// Starts building.
    pub fn builder() -> MeshBuilder {
        MeshBuilder {
            config: None,
            store: None,
            control_plane: None,
            control_plane_id: None,
            service_account: None,
            trust_domain: None,
            workload: None,
            identity: None,
            settings: ServerSettings::default(),
        }
    }

    /// The configuration store.
    pub fn store(&self) -> &Arc<Store> {
        &self.inner.store
    }

    /// This workload's current certificate and bundles.
    pub fn credentials(&self) -> &CredentialStore {
        &self.inner.creds
    }

    /// The Istio metrics of this process.
    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// A service answering scrapes with the metrics, for `/stats/prometheus`.
    pub fn metrics_service(&self) -> MetricsService {
        MetricsService::new(self.inner.registry.clone())
    }

    /// Where this workload's layers read the Telemetry API's settings.
    fn telemetry_settings(&self) -> Arc<crate::telemetry::TelemetrySettings> {
        Arc::new(crate::telemetry::TelemetrySettings::new(
            self.inner.store.clone(),
            &self.inner.ns,
            &self.inner.name,
        ))
    }

    /// The outbound client. Address requests to service hosts
    /// (`http://ratings/…`, or `http://ratings.shop.svc.cluster.local:9080/…`);
    /// for tonic, `FooClient::with_origin(mesh.client(), uri)`.
    pub fn client(&self) -> MeshClient {
        let router = Router::new(
            self.inner.store.clone(),
            RouterConfig::for_workload(&self.inner.ns, &self.inner.name),
            Some(MeshConnector::new(self.inner.creds.clone())),
        );
        tower::Layer::layer(
            &TelemetryLayer::outbound(self.inner.registry.clone(), self.inner.info.clone())
                .with_settings(self.telemetry_settings()),
            router,
        )
    }

    /// Serves `service` on `addr` behind the mesh: the port's
    /// PeerAuthentication mode (per connection, so reloads apply),
    /// authorization (403 with the reason), Istio metrics and the access
    /// log. The handler gets a [`PeerIdentity`] extension and the normalised
    /// path; outbound calls it makes through [`Mesh::client`] carry its trace.
    pub async fn serve<S, B>(
        &self,
        addr: SocketAddr,
        service: S,
    ) -> Result<MeshServer, MeshStartError>
    where
        S: tower::Service<Request<BoxBody>, Response = Response<B>> + Clone + Send + Sync + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| MeshStartError::Io(format!("binding {addr}: {e}")))?;
        self.serve_listener(listener, service)
    }

    /// [`Mesh::serve`] on a listener you bound, so no other process can take
    /// the port between choosing and binding it.
    pub fn serve_listener<S, B>(
        &self,
        listener: TcpListener,
        service: S,
    ) -> Result<MeshServer, MeshStartError>
    where
        S: tower::Service<Request<BoxBody>, Response = Response<B>> + Clone + Send + Sync + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let local_addr = listener
            .local_addr()
            .map_err(|e| MeshStartError::Io(e.to_string()))?;
        let acceptor = ModeAcceptor::new(&self.inner.creds)
            .map_err(|e| MeshStartError::Io(e.to_string()))?
            .with_handshake_timeout(self.inner.settings.handshake_timeout);
        let app = AppService::new(service);
        let (controller, drain) = drain_pair(self.inner.settings);
        let mesh = self.clone();
        let conns = drain.clone();
        let accept = accept_loop(listener, drain, move |tcp, remote| {
            let local = tcp.local_addr().unwrap_or(local_addr);
            let acceptor = {
                let snap = mesh.inner.store.load();
                acceptor
                    .for_connection(&snap, &mesh.inner.key, local.port())
                    .clone()
            };
            let stack = mesh.inbound_stack(app.clone(), remote, local);
            let (store, key, drain) = (
                mesh.inner.store.clone(),
                mesh.inner.key.clone(),
                conns.clone(),
            );
            tokio::spawn(async move {
                // Counted from the handshake on, so a drain waits for it.
                let guard = drain.guard();
                let stream = match acceptor.accept(tcp).await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::info!(%remote, error = %e, "connection refused");
                        return;
                    }
                };
                let peer = stream.peer_identity().clone();
                let (destination, source) = {
                    let snap = store.load();
                    inbound_labels(&snap, &key, local.port(), peer.spiffe_id())
                };
                let svc = tower::util::BoxCloneSyncService::new(AddPeer {
                    inner: stack,
                    peer,
                    destination,
                    source,
                    store: store.clone(),
                    named: crate::telemetry::PeerMemo::default(),
                });
                let known = Known::from_alpn(stream.alpn_protocol());
                drop(guard);
                serve_connection(stream, svc, drain, known).await;
            });
        });
        Ok(ServerHandle::spawn(
            local_addr,
            controller,
            SHUTDOWN_DEADLINE,
            accept,
        ))
    }

    /// Sends one request through [`Mesh::client`]: the same routing, mTLS
    /// and metrics, without naming the body type to tower.
    pub async fn send<B>(&self, req: Request<B>) -> Response<BoxBody>
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        match tower::ServiceExt::oneshot(self.client(), req).await {
            Ok(resp) => resp.map(boxed),
            Err(never) => match never {},
        }
    }

    fn inbound_stack(&self, app: AppService, remote: SocketAddr, local: SocketAddr) -> Inbound {
        let authz = AuthorizeLayer::new(
            self.inner.store.clone(),
            LocalWorkload::named(self.inner.key.clone()),
        )
        .with_port(local.port());
        tower::util::BoxCloneSyncService::new(
            tower::ServiceBuilder::new()
                .map_response(crate::body::box_response)
                .map_request(move |mut req: Request<ServerBody>| {
                    drop_transport_authority(&mut req, local);
                    req.extensions_mut().insert(ClientAddr(remote));
                    req.extensions_mut().insert(LocalAddr(local));
                    req
                })
                .layer(
                    TelemetryLayer::inbound(self.inner.registry.clone(), self.inner.info.clone())
                        .with_settings(self.telemetry_settings()),
                )
                .layer(authz)
                .service(app),
        )
    }
}

type Inbound = tower::util::BoxCloneSyncService<Request<ServerBody>, Response<BoxBody>, Infallible>;

/// Puts the connection's verified peer into every request.
#[derive(Clone)]
struct AddPeer {
    inner: Inbound,
    peer: PeerIdentity,
    destination: Option<DestinationInfo>,
    source: Option<SourceInfo>,
    /// For the caller a request names ([`crate::telemetry::PEER_HEADER`]).
    store: Arc<Store>,
    /// That caller, read once per connection and configuration.
    named: crate::telemetry::PeerMemo,
}

impl tower::Service<Request<ServerBody>> for AddPeer {
    type Response = Response<BoxBody>;
    type Error = Infallible;
    type Future = <Inbound as tower::Service<Request<ServerBody>>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ServerBody>) -> Self::Future {
        let ext = req.extensions_mut();
        ext.insert(self.peer.clone());
        if let Some(d) = &self.destination {
            ext.insert(d.clone());
        }
        if let Some(s) = &self.source {
            ext.insert(s.clone());
        }
        let claimed = req.headers_mut().remove(crate::telemetry::PEER_HEADER);
        if let (Some(v), Some(id)) = (claimed, self.peer.spiffe_id())
            && let Some(s) = self.named.source(&self.store.load(), &v, id)
        {
            req.extensions_mut().insert(s);
        }
        self.inner.call(req)
    }
}

/// A running mesh server: the server module's handle.
/// [`shutdown`](ServerHandle::shutdown) stops accepting and lets in-flight
/// requests finish (up to 10 s); dropping it stops accepting and starts
/// the drain of its connections.
pub type MeshServer = ServerHandle;

/// How long [`MeshServer::shutdown`] waits for in-flight requests.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(10);

/// A URI for a service host, for tonic's `with_origin`.
pub fn origin(host: &str, port: u16) -> Result<Uri, http::uri::InvalidUri> {
    format!("http://{host}:{port}").parse()
}
