//! Routing, load balancing and resilience: the outbound half of the mesh.
//!
//! [`Router`] is a tower `Service` that takes a request addressed to a
//! service host (`http://reviews/...` or a `Host` header) and applies what
//! the VirtualService and DestinationRule say. It is a stack of layers, each
//! in its own module, outermost first:
//!
//! | layer | module | does |
//! |---|---|---|
//! | route | `route` | reads one snapshot, asks the routing plan ([`mesh_core::plan`]) for the rule; answers redirects, direct responses and injected faults; buffers a small body; picks the destination (weights, sticky key) and resolves it; applies header changes and rewrites; puts the decision in the request's extensions |
//! | route timeout | `timeout` | the rule's `timeout`, over every attempt |
//! | mirror | `mirror` | sends a copy of a share of requests to the mirror host, once per request |
//! | retry | `retry` | `tower::retry` with a policy over the plan's retry policy (conditions, attempts, Envoy's jittered back-off, the failed endpoint avoided) |
//! | pool limit | `pool` | the DestinationRule's connection pool limits per destination |
//! | balance | `balance` | the endpoint by the load-balancing algorithm among those not ejected; client TLS and secure-naming identities from the plan; outlier bookkeeping |
//! | per-try timeout | `timeout` | the retry policy's `perTryTimeout`, per attempt |
//! | connect | `connect` | sends through the [`Upstream`] (pooled hyper clients, or a test's `service_fn`) and classifies failures |
//!
//! Every failure is a [`MeshError`] answered in one place, with the
//! endpoint tried (if any) reported to telemetry.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use mesh_core::store::{FileSource, Store};
//! use mesh_tower::traffic::{Router, RouterConfig};
//! use tower::ServiceExt;
//!
//! let store = Arc::new(Store::from_source(&FileSource::new("mesh/"))?);
//! let router = Router::new(store, RouterConfig::for_workload("default", "web"), None);
//! let req = http::Request::get("http://reviews/ratings").body(mesh_tower::body::empty())?;
//! let resp = router.oneshot(req).await?;
//! println!("{}", resp.status());
//! # Ok(()) }
//! ```

mod balance;
mod connect;
mod cors;
mod mirror;
mod pick;
mod pool;
mod retry;
mod rewrite;
mod route;
mod state;
mod tcp;
mod timeout;

use std::borrow::Cow;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use mesh_core::outlier::OutlierPolicy;
use mesh_core::plan::Endpoint;
use mesh_core::resources::common::Labels;
use mesh_core::resources::networking::LoadBalancerSettings;
use mesh_core::retry::{Failure, RetryPolicy};
use mesh_core::route::WeightedDestination;
use mesh_core::snapshot::Snapshot;
use mesh_core::store::Store;

use state::TrafficState;
pub use state::{RandomSource, SeededRandom};
pub use tcp::{TcpConnection, TcpRouter};

use crate::body::{BoxBody, BoxError, boxed};
use crate::error::MeshError;
use crate::tls::MeshConnector;
use crate::upstream::{Upstream, hyper_upstream};

/// The address of the downstream client, for `useSourceIp` hashing; servers
/// insert it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub SocketAddr);

/// The service a captured connection was addressed to (its virtual IP and
/// port): the sidecar's outbound capture listener inserts it. The port is
/// the one the app connected to, whatever its Host header says; the host is
/// the Host header's when that names a service with this port (Istio
/// routes a captured request by Host), else this service's, so an app that
/// writes `Host: 10.96.0.20` or a name the mesh does not know still
/// reaches the service it dialled. The Host header itself is not changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapturedService {
    /// The service's host.
    pub host: String,
    /// The service port connected to.
    pub port: u16,
}

/// The Gateway servers (indexes into the Gateway's `servers`) the
/// request's connection came in on: all the servers of its listener port,
/// or the one TLS server its SNI picked. The gateway's listeners insert it;
/// a gateway [`Router`] routes only by these servers' tables
/// ([`GatewayEntry::route`](mesh_core::snapshot::GatewayEntry::route)) and
/// refuses a request without it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayServers(pub Arc<[usize]>);

/// Bodies up to this size are buffered so they can be retried or mirrored;
/// larger ones stream through once.
pub const DEFAULT_BUFFER_LIMIT: usize = 64 * 1024;

/// Who the router routes for, and how.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// The calling workload's namespace: short hosts resolve in it.
    pub namespace: String,
    /// The calling workload's labels, for `sourceLabels` matches.
    pub labels: Labels,
    /// The calling workload, `namespace/name`, whose labels are looked up
    /// per request when `labels` is empty.
    pub workload: Option<String>,
    /// Route with the VirtualServices bound to this Gateway
    /// (`namespace/name`) instead of the mesh's.
    pub gateway: Option<String>,
    /// Largest request body buffered for retries and mirroring.
    pub buffer_limit: usize,
    /// How the caller describes itself to the mesh peers it calls
    /// ([`PEER_HEADER`](crate::telemetry::PEER_HEADER)); by default its
    /// WorkloadEntry's description ([`workload`](Self::workload)).
    pub peer: Option<http::HeaderValue>,
    /// The caller's locality (Istio's agent: `--locality`... ); unset, its
    /// WorkloadEntry's.
    pub locality: Option<mesh_core::locality::Locality>,
    /// The caller's network (Istio: `ISTIO_META_NETWORK`); unset, its
    /// WorkloadEntry's. Endpoints on other networks are not dialled.
    pub network: Option<String>,
}

impl RouterConfig {
    /// A router for a workload named in the snapshot: its labels (for
    /// `sourceLabels` matches) are read from the snapshot of each request,
    /// so a reload that relabels it applies.
    pub fn for_workload(namespace: &str, name: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            labels: Labels::new(),
            workload: Some(format!("{namespace}/{name}")),
            gateway: None,
            buffer_limit: DEFAULT_BUFFER_LIMIT,
            peer: None,
            locality: None,
            network: None,
        }
    }

    /// A router for a Gateway's traffic.
    pub fn for_gateway(gateway_key: &str) -> Self {
        let namespace = gateway_key
            .split('/')
            .next()
            .unwrap_or("default")
            .to_owned();
        Self {
            namespace,
            labels: Labels::new(),
            workload: None,
            gateway: Some(gateway_key.to_owned()),
            buffer_limit: DEFAULT_BUFFER_LIMIT,
            peer: None,
            locality: None,
            network: None,
        }
    }

    /// Describes the caller to its mesh peers as `info` (a gateway, which
    /// has no WorkloadEntry).
    #[must_use]
    pub fn describing(mut self, info: &crate::telemetry::WorkloadInfo) -> Self {
        self.peer = info.peer_header();
        self
    }

    /// Sets the caller's labels.
    pub fn with_labels(mut self, labels: Labels) -> Self {
        self.labels = labels;
        self
    }

    /// Places the caller in a locality and, if given, a network (over its
    /// WorkloadEntry's).
    #[must_use]
    pub fn located(
        mut self,
        locality: Option<mesh_core::locality::Locality>,
        network: Option<String>,
    ) -> Self {
        self.locality = locality;
        self.network = network;
        self
    }

    /// Where the caller is in `snap`: the locality and network set here,
    /// else its WorkloadEntry's; its labels.
    pub(crate) fn whereabouts(&self, snap: &Snapshot) -> mesh_core::locality::Whereabouts {
        let own = self
            .workload
            .as_deref()
            .and_then(|k| snap.workload(k))
            .map(|(_, w)| w);
        mesh_core::locality::Whereabouts {
            locality: self
                .locality
                .clone()
                .or_else(|| own.map(|w| w.locality.clone()))
                .unwrap_or_default(),
            network: self
                .network
                .clone()
                .or_else(|| own.and_then(|w| w.network.clone())),
            labels: if self.labels.is_empty() {
                own.map(|w| (*w.labels).clone()).unwrap_or_default()
            } else {
                self.labels.clone()
            },
        }
    }
}

/// What the route layer decided for one request, as the layers below it
/// read it: a request extension, cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Planned(pub(crate) Arc<Destination>);

/// A destination resolved by the routing plan, owned so that it can travel
/// in the request's extensions (the plan itself borrows the snapshot).
#[derive(Debug)]
pub(crate) struct Destination {
    /// The snapshot the plan was made from: every layer of one request
    /// reads this one, never a newer one.
    pub(crate) snap: Arc<Snapshot>,
    /// The destination service's host.
    pub(crate) host: String,
    /// The service port meant.
    pub(crate) port: u16,
    /// The subset, if the destination names one.
    pub(crate) subset: Option<String>,
    /// The endpoints to choose among (those of the caller's network).
    pub(crate) endpoints: Arc<[Endpoint]>,
    /// How they share traffic: weights, the locality plan.
    pub(crate) spread: pick::Spread,
    /// Where the caller is (its locality, network and labels).
    pub(crate) me: Arc<mesh_core::locality::Whereabouts>,
    /// The load-balancing settings in force.
    pub(crate) load_balancer: Option<LoadBalancerSettings>,
    /// The connection pool limits in force.
    pub(crate) pool: Option<pool::Limits>,
    /// How long a dial to an endpoint may take (`connectTimeout`).
    pub(crate) connect_timeout: Duration,
    /// `http2KeepAlive` and `maxRequestsPerConnection`.
    pub(crate) http_conn: mesh_core::plan::HttpConnection,
    /// Outlier detection in force.
    pub(crate) outlier: Option<OutlierPolicy>,
    /// The port speaks HTTP/2 (HTTP2, GRPC): plaintext goes with prior
    /// knowledge.
    pub(crate) h2: bool,
    /// Over mesh mTLS the request goes as HTTP/2 (ALPN `h2`): the port
    /// speaks it, the request came as HTTP/2, or `h2UpgradePolicy` says
    /// `UPGRADE`. Otherwise HTTP/1.1 (ALPN `http/1.1`) over a pool of
    /// connections, Istio's default (`DO_NOT_UPGRADE`).
    pub(crate) h2_over_mtls: bool,
    /// The consistent-hash key of the request, if sticky.
    pub(crate) hash_key: Option<u64>,
    /// A mirrored copy: its own round-robin counter, no outlier
    /// bookkeeping.
    pub(crate) mirrored: bool,
    /// The route's retry policy.
    pub(crate) retry: Cow<'static, RetryPolicy>,
    /// May the request be sent more than once (its body is buffered, and
    /// the method and the policy allow it)?
    pub(crate) retryable: bool,
    /// The route's timeout over all attempts.
    pub(crate) timeout: Option<Duration>,
    /// Where a copy goes, and the share of requests copied.
    pub(crate) mirror: Option<(WeightedDestination, f64)>,
    /// The port the request was addressed to (a mirror destination without
    /// a port means this one).
    pub(crate) request_port: u16,
    /// The buffered body of the request, so that it can be sent again
    /// (retries) or copied (mirroring); `None` when it streams through
    /// once. Kept in the plan rather than an extension of its own: one
    /// allocation less per request, and one less for the retry layer's
    /// copy of the request to clone.
    pub(crate) replay: Option<Bytes>,
}

/// An endpoint the balance layer chose, on the response (or the failure)
/// of the attempt that went there.
#[derive(Debug, Clone)]
pub(crate) struct Tried {
    pub(crate) endpoint: Endpoint,
    pub(crate) mtls: bool,
}

/// The endpoint the last attempt failed at: a retry tries another when
/// there is one. The retry policy inserts it.
#[derive(Debug, Clone)]
pub(crate) struct Avoid(pub(crate) String);

/// An attempt that failed without a response: the mesh's answer, the
/// failure as retry conditions and outlier detection see it (`None` when
/// it is the caller's fault and nothing to retry), and the endpoint tried.
#[derive(Debug)]
pub(crate) struct Failed {
    pub(crate) error: MeshError,
    pub(crate) failure: Option<Failure>,
    pub(crate) tried: Option<Tried>,
}

impl Failed {
    /// A failure before any endpoint was tried.
    pub(crate) fn before_endpoint(error: MeshError, failure: Option<Failure>) -> Self {
        Self {
            error,
            failure,
            tried: None,
        }
    }
}

/// The future of every layer below the route layer.
pub(crate) type AttemptFuture =
    Pin<Box<dyn Future<Output = Result<Response<BoxBody>, Failed>> + Send>>;

/// `fut` as an [`AttemptFuture`], boxed only when it is not one already.
/// The layers below the route layer answer with boxed futures, so a layer
/// with nothing to add to a request (no timeout, no pool limit) hands its
/// inner layer's future on instead of boxing the box: an allocation and an
/// indirection per layer and request.
pub(crate) fn attempt<F>(fut: F) -> AttemptFuture
where
    F: Future<Output = Result<Response<BoxBody>, Failed>> + Send + 'static,
{
    let mut fut = Some(fut);
    let reused = (&mut fut as &mut dyn std::any::Any)
        .downcast_mut::<Option<AttemptFuture>>()
        .and_then(Option::take);
    match (reused, fut) {
        (Some(boxed), _) => boxed,
        (None, Some(f)) => Box::pin(f),
        // Not reached: `fut` is only taken when it is reused above.
        (None, None) => Box::pin(std::future::ready(Err(Failed::before_endpoint(
            MeshError::Internal("an attempt's future went missing".into()),
            None,
        )))),
    }
}

/// The planned destination of a request, borrowed, for layers that only
/// read it; as [`planned`], a request without one is answered as a 500.
pub(crate) fn plan_of<B>(req: &Request<B>) -> Result<&Destination, Failed> {
    req.extensions()
        .get::<Planned>()
        .map(|p| &*p.0)
        .ok_or_else(no_plan)
}

fn no_plan() -> Failed {
    Failed::before_endpoint(
        MeshError::Internal("request reached the outbound stack without a plan".into()),
        None,
    )
}

/// Calls `svc` once with `req`, boxed here (outside any `async` block) so
/// that the compiler checks `Send` of a concrete future: an `async` block
/// awaiting a generic service's future trips rustc's "`Send` is not general
/// enough" over the body's boxed error type.
pub(crate) fn oneshot<S>(svc: S, req: Request<BoxBody>) -> AttemptFuture
where
    S: tower::Service<Request<BoxBody>, Response = Response<BoxBody>, Error = Failed>
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    Box::pin(tower::ServiceExt::oneshot(svc, req))
}

/// The planned destination of a request, for layers that need one: a
/// request without it is a bug in the stack, answered as a 500 rather than
/// a panic.
pub(crate) fn planned<B>(req: &Request<B>) -> Result<Arc<Destination>, Failed> {
    req.extensions()
        .get::<Planned>()
        .map(|p| p.0.clone())
        .ok_or_else(no_plan)
}

/// The layers below the route layer, built once per router.
type Stack = timeout::RouteTimeout<
    mirror::Mirror<
        tower::retry::Retry<
            retry::Policy,
            pool::PoolLimit<balance::Balance<timeout::PerTryTimeout<connect::Connect>>>,
        >,
    >,
>;

fn stack(upstream: Upstream, state: Arc<TrafficState>, random: Arc<dyn RandomSource>) -> Stack {
    tower::ServiceBuilder::new()
        .layer_fn(timeout::RouteTimeout::new)
        .layer_fn(|s| mirror::Mirror::new(s, random.clone()))
        .layer(tower::retry::RetryLayer::new(retry::Policy::new(
            random.clone(),
        )))
        .layer_fn(|s| pool::PoolLimit::new(s, state.clone()))
        .layer_fn(|s| balance::Balance::new(s, state.clone(), random.clone()))
        .layer_fn(timeout::PerTryTimeout::new)
        .service(connect::Connect::new(upstream))
}

/// The outbound router. Cheap to clone; clones share pools and state.
#[derive(Debug, Clone)]
pub struct Router {
    route: route::Route<Stack>,
}

impl Router {
    /// A router reading `store`. Without `mtls`, destinations that need
    /// mesh mTLS fail closed with 503.
    pub fn new(store: Arc<Store>, config: RouterConfig, mtls: Option<MeshConnector>) -> Self {
        Self::with_random(store, config, mtls, Arc::new(SeededRandom::from_entropy()))
    }

    /// [`Router::new`] with a chosen random source (seeded in tests).
    pub fn with_random(
        store: Arc<Store>,
        config: RouterConfig,
        mtls: Option<MeshConnector>,
        random: Arc<dyn RandomSource>,
    ) -> Self {
        Self::with_upstream(store, config, hyper_upstream(mtls), random)
    }

    /// A router sending through `upstream` instead of the network: for
    /// tests, and for embedding a custom transport.
    pub fn with_upstream(
        store: Arc<Store>,
        config: RouterConfig,
        upstream: Upstream,
        random: Arc<dyn RandomSource>,
    ) -> Self {
        let state = Arc::new(TrafficState::default());
        let next = stack(upstream, state.clone(), random.clone());
        Self {
            route: route::Route::new(next, store, config, state, random),
        }
    }
}

impl<B> tower::Service<Request<B>> for Router
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<BoxBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<BoxBody>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let route = self.route.clone();
        Box::pin(async move { Ok(route.call(req.map(boxed)).await) })
    }
}

/// The mesh's own answer to a failure, logged with its reason.
pub(crate) fn answer(e: &MeshError, grpc: bool) -> Response<BoxBody> {
    tracing::info!(status = e.status().as_u16(), flag = e.response_flag(), reason = %e, "mesh answered the request itself");
    e.to_response_for(grpc)
}

/// A store holding `yaml`, for the layers' unit tests.
#[cfg(test)]
pub(crate) fn test_store(yaml: &str) -> Arc<Store> {
    let store = Arc::new(Store::new());
    store
        .apply(mesh_core::load::load_str(
            std::path::Path::new("mesh.yaml"),
            yaml,
        ))
        .expect("the test mesh loads");
    store
}

/// A planned destination over `store`'s `host` (the whole service), for the
/// layers' unit tests; `edit` adjusts it.
#[cfg(test)]
pub(crate) fn test_planned(
    store: &Store,
    host: &str,
    port: u16,
    edit: impl FnOnce(&mut Destination),
) -> Planned {
    let snap = store.load();
    let d = WeightedDestination {
        host: host.to_owned(),
        subset: None,
        port: None,
        weight: 100,
        headers: None,
    };
    let r = mesh_core::plan::resolve_destination(&snap, &d, port).expect("resolves");
    let mut dest = Destination {
        host: host.to_owned(),
        port: r.port.number,
        subset: None,
        endpoints: r.endpoints,
        spread: pick::Spread::default(),
        me: Arc::default(),
        load_balancer: r.policy.load_balancer.clone(),
        pool: pool::Limits::from_policy(&r.policy),
        connect_timeout: mesh_core::plan::connect_timeout(&r.policy),
        http_conn: mesh_core::plan::http_connection(&r.policy),
        outlier: r
            .policy
            .outlier_detection
            .as_ref()
            .and_then(OutlierPolicy::from_config),
        h2: false,
        h2_over_mtls: false,
        hash_key: None,
        mirrored: false,
        retry: Cow::Owned(RetryPolicy::istio_default()),
        retryable: true,
        timeout: None,
        mirror: None,
        request_port: port,
        replay: Some(Bytes::new()),
        snap: snap.clone(),
    };
    edit(&mut dest);
    Planned(Arc::new(dest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok() -> Result<Response<BoxBody>, Failed> {
        Ok(Response::new(crate::body::empty()))
    }

    #[tokio::test]
    async fn an_attempt_already_boxed_is_not_boxed_again() {
        let boxed: AttemptFuture = Box::pin(std::future::ready(ok()));
        let before = std::ptr::addr_of!(*boxed).cast::<u8>();
        let same = attempt(boxed);
        assert_eq!(std::ptr::addr_of!(*same).cast::<u8>(), before);
        assert!(same.await.is_ok());
        assert!(attempt(std::future::ready(ok())).await.is_ok());
    }
}
