//! The configuration server: delta ADS (Envoy's
//! `AggregatedDiscoveryService.DeltaAggregatedResources`) carrying each
//! workload the Istio documents it is entitled to ([`mesh_core::xds`]).
//!
//! One stream per data plane, on the CA's TLS port (istiod serves both on
//! 15012). A stream is admitted only with a client SVID, for a workload
//! whose WorkloadEntry names that SVID's identity; it is re-checked at
//! every push, so a workload removed from the configuration, or given
//! another service account, loses its stream (`PERMISSION_DENIED`).
//!
//! Pushes: the configuration in force sits in a `watch` channel; each
//! stream, when it is ready to send, diffs the newest view against what its
//! client holds and sends only the difference (added or changed documents,
//! and the names of removed ones). A slow client holds back no one but
//! itself, and skips straight to the newest version when it catches up:
//! the queue per stream is one response. A reconnecting client says which
//! versions it holds (`initial_resource_versions`) and gets only the rest.
//! The first response of a stream is always sent, empty if the client is
//! up to date, so it knows it is in sync.
//!
//! ACKs and NACKs are counted; a NACK's error detail is logged. The server
//! does not resend what was NACKed: the data plane keeps its last good
//! configuration, and the next change is diffed against what was sent.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use envoy_types::pb::google::protobuf::Any;
use mesh_ca::metrics::{MetricDef, MetricKind};
use mesh_ca::service::CaPeer;
use mesh_core::error::ConfigErrors;
use mesh_core::identity::SpiffeId;
use mesh_core::resources::Kind;
use mesh_core::store::{FileSource, FileWatcher, Store, StoreStats};
use mesh_core::xds::{CONFIG_TYPE_URL, Catalog, CatalogError, GATEWAY_NODE_PREFIX};
use mesh_tower::server::Drain;
use tokio::sync::{mpsc, watch};
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// The path prefix of the discovery services: their calls are streams,
/// which the CA's per-request timeout must not cut.
pub(crate) const DISCOVERY_PATH_PREFIX: &str = "/envoy.service.discovery.v3.";

/// Why the configuration server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigServerError {
    /// The first configuration was invalid: there is no last good one to
    /// serve.
    #[error("the configuration is invalid: {0}")]
    Invalid(#[from] ConfigErrors),
    /// The configuration cannot be served as loaded.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// The files could not be watched.
    #[error("cannot watch the configuration: {0}")]
    Watch(String),
}

/// One configuration as served.
#[derive(Debug)]
pub(crate) struct Published {
    pub(crate) version: u64,
    pub(crate) catalog: Catalog,
    /// WorkloadEntry `namespace/name`, or `Gateway/namespace/name` → the
    /// identity its SVID must have (a gateway's is
    /// `spiffe://<trust domain>/ns/<namespace>/sa/<name>`, the gateway's
    /// default).
    identities: HashMap<String, SpiffeId>,
}

impl Published {
    /// The configuration `store` holds, its documents serialized again
    /// only where they are not those of `previous`.
    fn of(store: &Store, previous: Option<&Self>) -> Result<Self, CatalogError> {
        let snap = store.load();
        let resources = store.resources().unwrap_or_default();
        let catalog = match previous {
            Some(p) => Catalog::after(&resources, &p.catalog)?,
            None => Catalog::new(&resources)?,
        };
        let mut identities: HashMap<String, SpiffeId> = snap
            .workloads
            .iter()
            .filter(|w| w.source.kind == Kind::WorkloadEntry)
            .map(|w| (w.key.clone(), w.identity.clone()))
            .collect();
        for key in snap.gateways.keys() {
            let (ns, name) = key.split_once('/').unwrap_or(("default", key));
            if let Ok(id) = SpiffeId::for_workload(&snap.mesh.trust_domain, ns, name) {
                identities.insert(format!("{GATEWAY_NODE_PREFIX}{key}"), id);
            }
        }
        Ok(Self {
            version: snap.version,
            catalog,
            identities,
        })
    }
}

/// Why a stream was refused, for the metric's `reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    NoSvid,
    WrongIdentity,
    UnknownWorkload,
    BadRequest,
}

impl Refusal {
    const ALL: [Self; 4] = [
        Self::NoSvid,
        Self::WrongIdentity,
        Self::UnknownWorkload,
        Self::BadRequest,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Self::NoSvid => "no_svid",
            Self::WrongIdentity => "wrong_identity",
            Self::UnknownWorkload => "unknown_workload",
            Self::BadRequest => "bad_request",
        }
    }
}

/// Streams open now.
pub const XDS_CONNECTED: MetricDef = MetricDef {
    name: "mesh_xds_connected_clients",
    help: "Data planes with an open configuration stream (istiod: pilot_xds).",
    kind: MetricKind::Gauge,
};
/// Responses sent.
pub const XDS_PUSHES: MetricDef = MetricDef {
    name: "mesh_xds_pushes_total",
    help: "Configuration responses sent to data planes (istiod: pilot_xds_pushes).",
    kind: MetricKind::Counter,
};
/// Documents sent.
pub const XDS_RESOURCES: MetricDef = MetricDef {
    name: "mesh_xds_resources_sent_total",
    help: "Documents sent to data planes, added or changed.",
    kind: MetricKind::Counter,
};
/// Bytes of documents sent.
pub const XDS_BYTES: MetricDef = MetricDef {
    name: "mesh_xds_sent_bytes_total",
    help: "Bytes of the documents sent to data planes.",
    kind: MetricKind::Counter,
};
/// ACKs received.
pub const XDS_ACKS: MetricDef = MetricDef {
    name: "mesh_xds_acks_total",
    help: "Responses data planes accepted.",
    kind: MetricKind::Counter,
};
/// NACKs received.
pub const XDS_NACKS: MetricDef = MetricDef {
    name: "mesh_xds_nacks_total",
    help: "Responses data planes rejected (istiod: pilot_total_xds_rejects); the reason is logged.",
    kind: MetricKind::Counter,
};
/// Streams refused.
pub const XDS_REFUSED: MetricDef = MetricDef {
    name: "mesh_xds_streams_refused_total",
    help: "Configuration streams refused, by reason.",
    kind: MetricKind::Counter,
};
/// The version in force.
pub const CONFIG_VERSION: MetricDef = MetricDef {
    name: "mesh_config_version",
    help: "Version of the configuration the control plane serves (0: none yet).",
    kind: MetricKind::Gauge,
};
/// Configurations rejected.
pub const CONFIG_REJECTED: MetricDef = MetricDef {
    name: "mesh_config_rejected_total",
    help: "Configurations the control plane rejected, keeping the last good one; the errors are logged and at /debug/config.",
    kind: MetricKind::Counter,
};
/// Whether the last configuration read was rejected.
pub const CONFIG_LAST_REJECTED: MetricDef = MetricDef {
    name: "mesh_config_last_rejected",
    help: "1 while the newest configuration read is rejected and an older one is served.",
    kind: MetricKind::Gauge,
};

#[derive(Debug, Default)]
pub(crate) struct XdsMetrics {
    pub(crate) connected: AtomicI64,
    pub(crate) pushes: AtomicU64,
    pub(crate) resources: AtomicU64,
    pub(crate) bytes: AtomicU64,
    pub(crate) acks: AtomicU64,
    pub(crate) nacks: AtomicU64,
    refused: [AtomicU64; Refusal::ALL.len()],
}

impl XdsMetrics {
    /// Counts the answer of `workload` to its response `nonce` of
    /// `type_url`: an ACK, or a NACK whose error is logged.
    pub(crate) fn acknowledged(
        &self,
        workload: &str,
        type_url: &str,
        nonce: &str,
        error: Option<&envoy_types::pb::google::rpc::Status>,
    ) {
        match error {
            None => {
                self.acks.fetch_add(1, Ordering::Relaxed);
            }
            Some(e) => {
                self.nacks.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    %workload,
                    %type_url,
                    %nonce,
                    "a data plane rejected its configuration: {}",
                    e.message
                );
            }
        }
    }

    pub(crate) fn refuse(&self, why: Refusal, status: Status) -> Status {
        self.refused[why as usize].fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            reason = why.as_str(),
            "xDS stream refused: {}",
            status.message()
        );
        status
    }
}

/// Counted while a stream is open.
pub(crate) struct Connected(pub(crate) Arc<Inner>);

impl Drop for Connected {
    fn drop(&mut self) {
        self.0.metrics.connected.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Debug)]
pub(crate) struct Inner {
    store: Arc<Store>,
    pub(crate) published: watch::Receiver<Arc<Published>>,
    pub(crate) metrics: XdsMetrics,
    /// The data planes on a stream now, for the mesh page.
    proxies: Arc<crate::page::Proxies>,
}

/// What a source other than files says of itself: whether it can be
/// served from yet, its status for [`CONFIG_STATUS_PATH`]
/// (crate::monitor::CONFIG_STATUS_PATH), its metrics.
pub trait SourceHealth: Send + Sync + std::fmt::Debug {
    /// Why the source cannot be served from yet (a watch not listed, the
    /// API server unreachable), or `None`.
    fn not_ready(&self) -> Option<String>;
    /// Its status, as JSON.
    fn status(&self) -> serde_json::Value;
    /// Appends its series in Prometheus text format.
    fn render(&self, out: &mut String);
    /// Told the outcome of each read: `None` when the configuration was
    /// accepted, else its errors (a Kubernetes source reports them on the
    /// objects they name, as Events).
    fn reviewed(&self, _rejected: Option<&ConfigErrors>) {}
}

/// A source followed by a task of the server's: re-read whenever it says
/// it changed.
#[derive(Debug)]
struct Feed {
    health: Arc<dyn SourceHealth>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The configuration server: a [`Store`] fed by a source, and the delta
/// ADS service that serves it. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ConfigServer {
    inner: Arc<Inner>,
    drain: Option<Drain>,
    _watcher: Option<Arc<FileWatcher>>,
    feed: Option<Arc<Feed>>,
}

impl ConfigServer {
    /// The data planes on a stream now.
    pub(crate) fn proxies(&self) -> Arc<crate::page::Proxies> {
        self.inner.proxies.clone()
    }

    /// Serves the configuration under `path` (a file or a folder, as
    /// `mesh-proxy --config` reads it), reloaded when it changes; a change
    /// that does not load or compile is rejected and the last good one
    /// stays served. Must be called within a Tokio runtime.
    pub fn from_files(path: &Path) -> Result<Self, ConfigServerError> {
        let (versions, changed) = watch::channel(0u64);
        let store = Arc::new(Store::new().retaining_resources().on_apply(move |v| {
            versions.send_replace(v);
        }));
        let source = FileSource::new(path).keeping_documents();
        store.reload(&source)?;
        let watcher = FileWatcher::spawn(store.clone(), source)
            .map_err(|e| ConfigServerError::Watch(e.to_string()))?;
        let mut server = Self::from_store(store, changed)?;
        server._watcher = Some(Arc::new(watcher));
        Ok(server)
    }

    /// Serves what `source` gives (its resources must keep their documents,
    /// [`Item::raw`](mesh_core::resources::Item::raw)), re-read whenever
    /// `changes` moves (changes that arrive together are read once). Until
    /// the source first gives a configuration that loads and compiles,
    /// nothing is served: streams are refused `UNAVAILABLE` (the data
    /// planes retry) and [`not_ready`](Self::not_ready) says why. Then a
    /// change that does not load or compile is rejected and the last good
    /// configuration stays served, as with files. Must be called within a
    /// Tokio runtime.
    pub fn from_source<S>(
        source: Arc<S>,
        mut changes: watch::Receiver<u64>,
    ) -> Result<Self, ConfigServerError>
    where
        S: mesh_core::store::ConfigSource + SourceHealth + 'static,
    {
        let (versions, changed) = watch::channel(0u64);
        let store = Arc::new(Store::new().retaining_resources().on_apply(move |v| {
            versions.send_replace(v);
        }));
        let mut server = Self::from_store(store.clone(), changed)?;
        let reader = source.clone();
        let task = tokio::spawn(async move {
            let reload = |store: Arc<Store>, source: Arc<S>| async move {
                if source.not_ready().is_some() {
                    return;
                }
                let _ = tokio::task::spawn_blocking(move || {
                    let result = store.reload(&*source);
                    source.reviewed(result.as_ref().err());
                })
                .await;
            };
            changes.mark_changed();
            while changes.changed().await.is_ok() {
                // Let a burst (a relist, a rollout) settle into one read.
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                changes.borrow_and_update();
                reload(store.clone(), reader.clone()).await;
            }
        });
        server.feed = Some(Arc::new(Feed {
            health: source,
            task,
        }));
        Ok(server)
    }

    /// Why nothing can be served yet, or `None` once a configuration is.
    pub fn not_ready(&self) -> Option<String> {
        if self.inner.store.is_ready() {
            return None;
        }
        if let Some(reason) = self.feed.as_ref().and_then(|f| f.health.not_ready()) {
            return Some(reason);
        }
        Some(match self.inner.store.stats().last_error {
            Some(e) => format!("the configuration is rejected: {e}"),
            None => "no configuration read yet".to_owned(),
        })
    }

    /// The source's own status (a Kubernetes source's watches), if it is
    /// not files.
    pub fn source_status(&self) -> Option<serde_json::Value> {
        self.feed.as_ref().map(|f| f.health.status())
    }

    /// Serves what `store` holds (it must retain its resources, with their
    /// documents), publishing each version `changed` announces.
    fn from_store(
        store: Arc<Store>,
        mut changed: watch::Receiver<u64>,
    ) -> Result<Self, ConfigServerError> {
        let (tx, published) = watch::channel(Arc::new(Published::of(&store, None)?));
        let inner = Arc::new(Inner {
            store,
            published,
            metrics: XdsMetrics::default(),
            proxies: Arc::default(),
        });
        let weak = Arc::downgrade(&inner);
        tokio::spawn(async move {
            while changed.changed().await.is_ok() {
                let Some(inner) = weak.upgrade() else { return };
                let store = inner.store.clone();
                drop(inner);
                // Building a large catalog is CPU work: off the runtime's
                // threads.
                let previous = tx.borrow().clone();
                let of = move || Published::of(&store, Some(&previous));
                match tokio::task::spawn_blocking(of).await {
                    Ok(Ok(p)) => {
                        tracing::info!(version = p.version, documents = p.catalog.len(), "serving");
                        tx.send_replace(Arc::new(p));
                    }
                    Ok(Err(e)) => tracing::error!("configuration not served: {e}"),
                    Err(e) => tracing::error!("configuration not served: {e}"),
                }
            }
        });
        Ok(Self {
            inner,
            drain: None,
            _watcher: None,
            feed: None,
        })
    }

    /// Ends every stream (`UNAVAILABLE`, so clients reconnect) once `drain`
    /// is signalled: a stream never finishes by itself, and would hold a
    /// drain to its deadline.
    pub(crate) fn with_drain(mut self, drain: Drain) -> Self {
        self.drain = Some(drain);
        self
    }

    /// The store's counters: the version served, reloads, rejections and
    /// the errors of the last rejected configuration.
    pub fn stats(&self) -> StoreStats {
        self.inner.store.stats()
    }

    /// The snapshot of the configuration in force (the last good one).
    pub fn snapshot(&self) -> Arc<mesh_core::snapshot::Snapshot> {
        self.inner.store.load()
    }

    /// The resources of the configuration in force.
    pub fn resources(&self) -> Arc<mesh_core::resources::Resources> {
        self.inner.store.resources().unwrap_or_default()
    }

    /// The version being served.
    pub fn version(&self) -> u64 {
        self.inner.published.borrow().version
    }

    /// The gRPC service to route.
    pub(crate) fn into_service(self) -> AggregatedDiscoveryServiceServer<Self> {
        AggregatedDiscoveryServiceServer::new(self)
    }

    /// Appends the configuration server's metrics in Prometheus text format.
    pub fn render(&self, out: &mut String) {
        let m = &self.inner.metrics;
        let stats = self.stats();
        let gauge = |v: i64| u64::try_from(v).unwrap_or(0);
        XDS_CONNECTED.write_value(out, gauge(m.connected.load(Ordering::Relaxed)));
        for (def, v) in [
            (XDS_PUSHES, &m.pushes),
            (XDS_RESOURCES, &m.resources),
            (XDS_BYTES, &m.bytes),
            (XDS_ACKS, &m.acks),
            (XDS_NACKS, &m.nacks),
        ] {
            def.write_value(out, v.load(Ordering::Relaxed));
        }
        XDS_REFUSED.write_header(out);
        for r in Refusal::ALL {
            let v = m.refused[r as usize].load(Ordering::Relaxed);
            out.push_str(&format!(
                "{}{{reason=\"{}\"}} {v}\n",
                XDS_REFUSED.name,
                r.as_str()
            ));
        }
        if let Some(f) = &self.feed {
            f.health.render(out);
        }
        CONFIG_VERSION.write_value(out, stats.version);
        CONFIG_REJECTED.write_value(out, stats.rejections);
        CONFIG_LAST_REJECTED.write_value(out, u64::from(stats.last_error.is_some()));
    }

    /// Checks the first request of a stream: who the client is and what it
    /// asks for.
    fn admit(
        &self,
        peer: Option<&CaPeer>,
        first: &DeltaDiscoveryRequest,
    ) -> Result<Client, Status> {
        self.admit_node(
            peer,
            first.node.as_ref().map(|n| n.id.as_str()),
            check_request(first),
            true,
        )
    }

    /// Admits the client `peer` as node `node`, the request being as
    /// `checked` says: its SVID must be the identity of the workload (or,
    /// with `gateways`, the gateway) the node id names.
    pub(crate) fn admit_node(
        &self,
        peer: Option<&CaPeer>,
        node: Option<&str>,
        checked: Result<(), Status>,
        gateways: bool,
    ) -> Result<Client, Status> {
        let m = &self.inner.metrics;
        let Some(id) = peer.and_then(|p| p.id.clone()) else {
            return Err(m.refuse(
                Refusal::NoSvid,
                Status::permission_denied("a configuration stream needs the workload's SVID"),
            ));
        };
        checked.map_err(|s| m.refuse(Refusal::BadRequest, s))?;
        let workload = node.unwrap_or_default().to_owned();
        let key = match workload.strip_prefix(GATEWAY_NODE_PREFIX) {
            Some(key) if gateways => key,
            _ => &workload,
        };
        if key.split('/').count() != 2 || key.split('/').any(str::is_empty) {
            let expected = if gateways {
                "neither a WorkloadEntry's namespace/name nor Gateway/namespace/name"
            } else {
                "not a WorkloadEntry's namespace/name"
            };
            return Err(m.refuse(
                Refusal::BadRequest,
                Status::invalid_argument(format!("node.id {workload:?} is {expected}")),
            ));
        }
        let client = Client { id, workload };
        let published = self.inner.published.borrow().clone();
        if published.version == 0 {
            return Err(Status::unavailable(format!(
                "the control plane has no configuration to serve yet: {}",
                self.not_ready().unwrap_or_default()
            )));
        }
        client
            .entitled(&published)
            .map_err(|(why, s)| m.refuse(why, s))?;
        Ok(client)
    }

    pub(crate) fn inner(&self) -> &Arc<Inner> {
        &self.inner
    }

    pub(crate) fn drain(&self) -> Option<&Drain> {
        self.drain.as_ref()
    }
}

/// A type URL this server serves and a wildcard subscription: anything
/// else is refused by name, never half served.
fn check_request(req: &DeltaDiscoveryRequest) -> Result<(), Status> {
    if req.type_url != CONFIG_TYPE_URL {
        return Err(Status::invalid_argument(format!(
            "type_url {:?} is not served; this stream carries {CONFIG_TYPE_URL}",
            req.type_url
        )));
    }
    if req.resource_names_subscribe.iter().any(|n| n != "*")
        || !req.resource_names_unsubscribe.is_empty()
        || !req.resource_locators_subscribe.is_empty()
        || !req.resource_locators_unsubscribe.is_empty()
    {
        return Err(Status::invalid_argument(
            "only the wildcard subscription is served: a workload gets what it is entitled to",
        ));
    }
    Ok(())
}

/// An admitted client.
#[derive(Debug, Clone)]
pub(crate) struct Client {
    pub(crate) id: SpiffeId,
    pub(crate) workload: String,
}

impl Client {
    /// Whether `published` still gives this client its workload.
    pub(crate) fn entitled(&self, published: &Published) -> Result<(), (Refusal, Status)> {
        let (what, key) = match self.workload.strip_prefix(GATEWAY_NODE_PREFIX) {
            Some(key) => ("Gateway", key),
            None => ("WorkloadEntry", self.workload.as_str()),
        };
        match published.identities.get(&self.workload) {
            None => Err((
                Refusal::UnknownWorkload,
                Status::permission_denied(format!("no {what} {key} in the configuration")),
            )),
            Some(id) if *id != self.id => Err((
                Refusal::WrongIdentity,
                Status::permission_denied(format!(
                    "{} is not the identity of {what} {key} ({id})",
                    self.id
                )),
            )),
            Some(_) => Ok(()),
        }
    }
}

type Responses = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;
type SotwResponses = ReceiverStream<Result<DiscoveryResponse, Status>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for ConfigServer {
    type StreamAggregatedResourcesStream = SotwResponses;
    type DeltaAggregatedResourcesStream = Responses;

    /// The state-of-the-world protocol, for gRPC's proxyless clients
    /// (which do not speak the incremental one): Envoy's resources, see
    /// [`crate::proxyless`].
    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<SotwResponses>, Status> {
        crate::proxyless::serve(self, request).await
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Responses>, Status> {
        let peer = request.extensions().get::<CaPeer>().cloned();
        let mut requests = request.into_inner();
        let first = requests
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("the stream ended before its first request"))?;
        let client = self.admit(peer.as_ref(), &first)?;
        tracing::info!(workload = %client.workload, id = %client.id, "xDS stream open");
        let registered = self.inner.proxies.register(crate::page::ProxyEntry {
            node: client.workload.clone(),
            identity: client.id.to_string(),
            metrics: peer
                .as_ref()
                .and_then(|p| crate::page::metrics_addr(p.remote, first.node.as_ref())),
        });
        let (tx, rx) = mpsc::channel(1);
        self.inner.metrics.connected.fetch_add(1, Ordering::Relaxed);
        let stream = Stream {
            _connected: Connected(self.inner.clone()),
            inner: self.inner.clone(),
            client,
            held: Arc::new(first.initial_resource_versions.into_iter().collect()),
            nonce: 0,
            tx,
        };
        let drain = self.drain.clone();
        tokio::spawn(async move {
            let _registered = registered;
            let workload = stream.client.workload.clone();
            let ended = match drain {
                Some(d) => tokio::select! {
                    e = stream.run(requests) => e,
                    () = d.signaled() => End::Drained,
                },
                None => stream.run(requests).await,
            };
            tracing::info!(%workload, "xDS stream closed: {ended}");
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Why a stream ended.
#[derive(Debug)]
pub(crate) enum End {
    ClientClosed,
    ClientError(String),
    Refused(String),
    Drained,
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::ClientClosed => f.write_str("the client closed it"),
            Self::ClientError(e) => write!(f, "the client's side failed: {e}"),
            Self::Refused(e) => write!(f, "refused: {e}"),
            Self::Drained => f.write_str("the control plane is shutting down"),
        }
    }
}

/// One data plane's stream.
struct Stream {
    _connected: Connected,
    inner: Arc<Inner>,
    client: Client,
    /// Document name → the version the client holds: the view last sent,
    /// shared with the other streams of its namespace.
    held: mesh_core::xds::View,
    nonce: u64,
    tx: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
}

impl Stream {
    async fn run(mut self, mut requests: Streaming<DeltaDiscoveryRequest>) -> End {
        let mut published = self.inner.published.clone();
        let mut first = true;
        loop {
            let p = published.borrow_and_update().clone();
            if let Err((why, status)) = self.client.entitled(&p) {
                let message = status.message().to_owned();
                let _ = self
                    .tx
                    .send(Err(self.inner.metrics.refuse(why, status)))
                    .await;
                return End::Refused(message);
            }
            if let Some(resp) = self.diff(&p, first) {
                if self.tx.send(Ok(resp)).await.is_err() {
                    return End::ClientClosed;
                }
            }
            first = false;
            // Until the next version: ACKs and NACKs.
            loop {
                tokio::select! {
                    changed = published.changed() => {
                        if changed.is_err() {
                            return End::Drained;
                        }
                        break;
                    }
                    msg = requests.message() => match msg {
                        Ok(Some(req)) => {
                            if let Err(status) = self.acknowledged(&req) {
                                let message = status.message().to_owned();
                                let m = &self.inner.metrics;
                                let _ = self.tx.send(Err(m.refuse(Refusal::BadRequest, status))).await;
                                return End::Refused(message);
                            }
                        }
                        Ok(None) => return End::ClientClosed,
                        Err(e) => return End::ClientError(e.message().to_owned()),
                    },
                }
            }
        }
    }

    /// What the client lacks of `p`'s view, as a response; `None` when it
    /// holds it all (except for the first response, always sent).
    fn diff(&mut self, p: &Published, first: bool) -> Option<DeltaDiscoveryResponse> {
        let view = match self.client.workload.strip_prefix(GATEWAY_NODE_PREFIX) {
            Some(key) => p
                .catalog
                .gateway_view(key.split_once('/').map_or("default", |(ns, _)| ns)),
            None => p.catalog.view(&self.client.workload).ok()?,
        };
        if !first && Arc::ptr_eq(&view, &self.held) {
            // Its namespace's view did not change: nothing to compare.
            return None;
        }
        let mut resources = Vec::new();
        let mut bytes = 0u64;
        for (name, version) in view.iter() {
            if self.held.get(name) == Some(version) {
                continue;
            }
            let Some(doc) = p.catalog.get(name) else {
                continue;
            };
            bytes += doc.body.len() as u64;
            resources.push(Resource {
                name: name.clone(),
                version: version.clone(),
                resource: Some(Any {
                    type_url: doc.kind.clone(),
                    value: doc.body.to_vec(),
                }),
                ..Resource::default()
            });
        }
        let removed: Vec<String> = self
            .held
            .keys()
            .filter(|n| !view.contains_key(*n))
            .cloned()
            .collect();
        if resources.is_empty() && removed.is_empty() && !first {
            return None;
        }
        let m = &self.inner.metrics;
        m.pushes.fetch_add(1, Ordering::Relaxed);
        m.resources
            .fetch_add(resources.len() as u64, Ordering::Relaxed);
        m.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.held = view;
        self.nonce += 1;
        Some(DeltaDiscoveryResponse {
            system_version_info: p.version.to_string(),
            resources,
            type_url: CONFIG_TYPE_URL.to_owned(),
            removed_resources: removed,
            nonce: self.nonce.to_string(),
            ..DeltaDiscoveryResponse::default()
        })
    }

    /// Reads an ACK or a NACK; anything else on the stream is refused.
    fn acknowledged(&self, req: &DeltaDiscoveryRequest) -> Result<(), Status> {
        check_request(req)?;
        if req.response_nonce != self.nonce.to_string() {
            // An answer to an older response, overtaken by a newer one.
            return Ok(());
        }
        self.inner.metrics.acknowledged(
            &self.client.workload,
            CONFIG_TYPE_URL,
            &req.response_nonce,
            req.error_detail.as_ref(),
        );
        Ok(())
    }
}
