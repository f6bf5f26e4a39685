//! Routing, load balancing and resilience: the outbound half of the mesh.
//!
//! [`Router`] is a tower `Service` that takes a request addressed to a
//! service host (`http://reviews/...` or a `Host` header), reads one
//! [`Snapshot`](mesh_core::snapshot::Snapshot) for the whole request, and
//! applies what the VirtualService and DestinationRule say: the first
//! matching rule, redirects and direct answers, fault injection, header
//! changes and rewrites, the weighted (or sticky) choice of subset, the
//! endpoint by the load-balancing algorithm, connection pool limits, retries
//! with per-try timeouts, the route timeout, mirroring, and outlier
//! detection. Every failure is a [`MeshError`] answered in one place.
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

mod pick;
mod rewrite;
pub mod state;
mod tcp;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, Uri};
use http_body::Body;
use http_body_util::BodyExt;
use mesh_core::outlier::{Outcome, OutlierPolicy};
use mesh_core::plan::{
    EndpointTls, PlanRequest, PlannedAction, RoutePlan, choose_destination, resolve_destination,
};
use mesh_core::resources::common::Labels;
use mesh_core::resources::networking::Protocol;
use mesh_core::retry::{Failure, fault_decision};
use mesh_core::route::{RequestInfo, WeightedDestination};
use mesh_core::snapshot::Snapshot;
use mesh_core::store::Store;

pub use state::{RandomSource, SeededRandom, TrafficState};
pub use tcp::{TcpConnection, TcpRouter};

use crate::body::{BoxBody, BoxError, boxed, full};
use crate::error::MeshError;
use crate::telemetry::{DestinationInfo, WorkloadInfo};
use crate::tls::MeshConnector;
use crate::upstream::{
    EndpointConnector, PriorKnowledgeH2, Upstream, UpstreamError, hyper_upstream,
};

/// The address of the downstream client, for `useSourceIp` hashing; servers
/// insert it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub SocketAddr);

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
        }
    }

    /// Sets the caller's labels.
    pub fn with_labels(mut self, labels: Labels) -> Self {
        self.labels = labels;
        self
    }
}

#[derive(Debug)]
struct Inner {
    store: Arc<Store>,
    upstream: Upstream,
    config: RouterConfig,
    state: TrafficState,
    random: Arc<dyn RandomSource>,
}

/// The outbound router. Cheap to clone; clones share pools and state.
#[derive(Debug, Clone)]
pub struct Router {
    inner: Arc<Inner>,
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
        let upstream = hyper_upstream(EndpointConnector::new(store.clone(), mtls));
        Self::with_upstream(store, config, upstream, random)
    }

    /// A router sending through `upstream` instead of the network: for
    /// tests, and for embedding a custom transport.
    pub fn with_upstream(
        store: Arc<Store>,
        config: RouterConfig,
        upstream: Upstream,
        random: Arc<dyn RandomSource>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                upstream,
                config,
                state: TrafficState::default(),
                random,
            }),
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
        let inner = self.inner.clone();
        let grpc = crate::error::is_grpc(req.headers());
        Box::pin(async move {
            let req = req.map(boxed);
            Ok(match route(&inner, req).await {
                Ok(resp) => resp,
                Err(e) => answer(&e, grpc),
            })
        })
    }
}

/// The mesh's own answer to a failure, logged with its reason.
fn answer(e: &MeshError, grpc: bool) -> Response<BoxBody> {
    tracing::info!(status = e.status().as_u16(), flag = e.response_flag(), reason = %e, "mesh answered the request itself");
    e.to_response_for(grpc)
}

/// Where the request is going: host without port, and port.
fn target(req: &Request<BoxBody>) -> Option<(String, u16)> {
    let authority = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            req.headers()
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        })?;
    let default_port = if req.uri().scheme_str() == Some("https") {
        443
    } else {
        80
    };
    match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => p
            .parse()
            .ok()
            .map(|p| (h.to_ascii_lowercase(), p))
            .or(Some((authority.to_ascii_lowercase(), default_port))),
        _ => Some((authority.to_ascii_lowercase(), default_port)),
    }
}

async fn route(inner: &Inner, mut req: Request<BoxBody>) -> Result<Response<BoxBody>, MeshError> {
    // The upstream sees the Host the caller meant, not the endpoint's
    // address the URI is rewritten to.
    if !req.headers().contains_key(http::header::HOST) {
        if let Some(v) = req
            .uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            req.headers_mut().insert(http::header::HOST, v);
        }
    }
    let snap = inner.store.load();
    let (host, port) = target(&req).ok_or_else(|| MeshError::UnknownHost {
        host: String::new(),
    })?;
    let labels = me_labels(&snap, inner);
    // The plan's request borrows the request's headers (not `Sync`): kept
    // in this block, off the awaits below.
    let plan = {
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let authority = req
            .headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or(&host);
        let headers = HeaderMapLookup(req.headers());
        let servers = req.extensions().get::<GatewayServers>();
        let plan_req = PlanRequest {
            host: &host,
            info: RequestInfo {
                method: req.method().as_str(),
                path_and_query: path,
                authority,
                scheme: req.uri().scheme_str().unwrap_or("http"),
                port,
                headers: &headers,
                source_labels: labels,
                source_namespace: Some(&inner.config.namespace),
                gateway: inner.config.gateway.as_deref(),
            },
            namespace: &inner.config.namespace,
            gateway: inner
                .config
                .gateway
                .as_deref()
                .map(|gw| (gw, servers.map_or(&[][..], |s| &s.0[..]))),
        };
        mesh_core::plan::route(&snap, &plan_req)?
    };
    let dests = match &plan.action {
        PlannedAction::Redirect(r) => return Ok(rewrite::redirect(&req, r, &host)),
        PlannedAction::DirectResponse(d) => {
            let mut resp = Response::new(full(
                d.body
                    .as_ref()
                    .and_then(|b| b.string.clone())
                    .unwrap_or_default(),
            ));
            *resp.status_mut() =
                http::StatusCode::from_u16(d.status).unwrap_or(http::StatusCode::OK);
            return Ok(resp);
        }
        PlannedAction::Forward(ds) => ds.clone(),
    };
    let rule = plan.rule;

    if let Some(fault) = rule.and_then(|(r, _)| r.fault.as_ref()) {
        let d = fault_decision(fault, inner.random.next_f64(), inner.random.next_f64());
        if let Some(delay) = d.delay {
            tokio::time::sleep(delay).await;
        }
        if let Some(status) = d.abort {
            let source = rule.map(|(r, _)| r.describe()).unwrap_or_default();
            return Err(MeshError::FaultAbort(source, status));
        }
    }

    let attempt = forward(inner, &snap, &plan, &dests, port, req);
    match plan.timeout() {
        Some(t) => tokio::time::timeout(t, attempt)
            .await
            .map_err(|_| MeshError::Timeout(t))?,
        None => attempt.await,
    }
}

/// Route matching's view of the request headers.
struct HeaderMapLookup<'a>(&'a http::HeaderMap);

impl mesh_core::route::HeaderLookup for HeaderMapLookup<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        self.0.get(name).and_then(|v| v.to_str().ok())
    }
}

/// The labels of the workload this router works for, if the snapshot names
/// one in its namespace with matching labels, else the configured ones.
fn me_labels<'a>(snap: &'a Snapshot, inner: &'a Inner) -> &'a Labels {
    static NONE: std::sync::LazyLock<Labels> = std::sync::LazyLock::new(Labels::new);
    match &inner.config.workload {
        Some(key) if inner.config.labels.is_empty() => {
            snap.workload(key).map_or(&*NONE, |(_, w)| &w.labels)
        }
        _ => &inner.config.labels,
    }
}

async fn forward(
    inner: &Inner,
    snap: &Snapshot,
    plan: &RoutePlan<'_>,
    dests: &[WeightedDestination],
    port: u16,
    req: Request<BoxBody>,
) -> Result<Response<BoxBody>, MeshError> {
    let rule = plan.rule;
    let (mut parts, body) = req.into_parts();
    let has_body = !body.is_end_stream();
    let small = body
        .size_hint()
        .upper()
        .is_some_and(|u| u <= inner.config.buffer_limit as u64);
    let (replay, mut stream) = if !has_body {
        (Some(Bytes::new()), None)
    } else if small {
        let bytes = body
            .collect()
            .await
            .map_err(|e| MeshError::UpstreamProtocol {
                endpoint: "client".into(),
                why: e.to_string(),
            })?
            .to_bytes();
        (Some(bytes), None)
    } else {
        (None, Some(body))
    };

    // Sticky sessions: the key comes from the first weighted host's rule.
    let first_host = dests.first().map(|d| d.host.as_str()).unwrap_or_default();
    let ch = pick::consistent_hash(snap, first_host, port);
    let (key, cookie) = match &ch {
        Some(ch) => pick::request_key(&parts, ch, inner.random.as_ref()),
        None => (None, None),
    };
    let now = Instant::now();
    let dest = choose_destination(
        dests,
        |d| pick::has_available(snap, d, port, &inner.state, now),
        key,
        || inner.random.next_u64(),
    )
    .ok_or_else(|| MeshError::NoHealthyEndpoint {
        target: first_host.to_owned(),
    })?;
    let planned = resolve_destination(snap, dest, port)?;
    let (svc, sp, eps) = (planned.service, planned.port, &planned.endpoints);
    let subset = planned.subset;
    let policy = &planned.policy;
    let outlier = policy
        .outlier_detection
        .as_ref()
        .and_then(OutlierPolicy::from_config);
    // Most routes say nothing about retries: Istio's default, built once.
    let retry = plan.retry_policy();
    let retryable = replay.is_some() && retry.request_is_retryable(parts.method.as_str(), has_body);
    let attempts = if retryable { 1 + retry.attempts } else { 1 };
    let h2 = matches!(sp.protocol, Protocol::Http2 | Protocol::Grpc);
    let pool = policy.connection_pool.as_ref().and_then(|cp| {
        let max = cp
            .http
            .as_ref()
            .and_then(|h| h.http2_max_requests)
            .or(cp.tcp.as_ref().and_then(|t| t.max_connections))?;
        let pending = cp
            .http
            .as_ref()
            .and_then(|h| h.http1_max_pending_requests)
            .unwrap_or(u32::MAX);
        Some(inner.state.pool(&dest.host, max as usize, pending as usize))
    });
    let _permit = match &pool {
        Some(p) => Some(p.acquire().await.ok_or_else(|| MeshError::Overflow {
            host: dest.host.clone(),
        })?),
        None => None,
    };

    // Mirror a copy, fire and forget.
    if let (Some((r, _)), Some(bytes)) = (rule, &replay) {
        if let (Some(m), Some(pct)) = (&r.mirror, r.mirror_percent) {
            if inner.random.next_f64() * 100.0 < pct {
                mirror(inner, snap, m, port, &parts, bytes.clone());
            }
        }
    }

    rewrite::request_headers(&mut parts, rule.map(|(r, _)| r), dest);
    let path = rewrite::path(&parts, rule);
    let mut last_failed: Option<String> = None;
    let mut last: Option<(pick::Endpoint, bool)> = None;
    let mut result = None;
    for attempt in 0..attempts {
        if attempt > 0 {
            let backoff = Duration::from_millis(25 << (attempt - 1).min(3));
            let jitter = Duration::from_millis(inner.random.next_u64() % 10);
            tokio::time::sleep(backoff + jitter).await;
        }
        let lb = policy.load_balancer.as_ref();
        let set = pick::EndpointSet::Http {
            host: &dest.host,
            subset,
        };
        let Some(ep) = pick::endpoint(
            eps,
            lb,
            key,
            &inner.state,
            set,
            last_failed.as_deref(),
            inner.random.as_ref(),
        ) else {
            result = None;
            break;
        };
        let scheme = match planned.endpoint_tls(snap, &ep) {
            Ok(EndpointTls::MeshMtls) => "https",
            Ok(EndpointTls::Plaintext) => "http",
            Err(why) => {
                return Err(MeshError::CannotSecure {
                    host: dest.host.clone(),
                    why,
                });
            }
        };
        let uri: Uri = format!("{scheme}://{}{path}", ep.key).parse().map_err(
            |e: http::uri::InvalidUri| MeshError::UpstreamConnect {
                endpoint: ep.key.clone(),
                why: e.to_string(),
            },
        )?;
        let body = match (&replay, stream.take()) {
            (Some(b), _) => full(b.clone()),
            (None, Some(s)) => s,
            (None, None) => {
                last = Some((ep, scheme == "https"));
                break;
            }
        };
        let mut up = Request::from_parts(parts.clone(), body);
        *up.uri_mut() = uri;
        *up.version_mut() = http::Version::HTTP_11;
        if h2 {
            up.extensions_mut().insert(PriorKnowledgeH2);
        }
        let state = inner.state.endpoint(&ep.key);
        let in_flight = state.start();
        let send = crate::upstream::send(&inner.upstream, up);
        let outcome = match retry.per_try_timeout {
            Some(t) => tokio::time::timeout(t, send).await.map_err(|_| t),
            None => Ok(send.await),
        };
        drop(in_flight);
        let callers_fault = matches!(outcome, Ok(Err(UpstreamError::RequestBody(_))));
        let (failure, res) = match outcome {
            Err(t) => (Some(Failure::PerTryTimeout), Err(MeshError::Timeout(t))),
            Ok(Err(UpstreamError::Connect(why))) => (
                Some(Failure::ConnectFailure),
                Err(MeshError::UpstreamConnect {
                    endpoint: ep.key.clone(),
                    why,
                }),
            ),
            Ok(Err(UpstreamError::Protocol(why))) => (
                Some(Failure::Reset),
                Err(MeshError::UpstreamProtocol {
                    endpoint: ep.key.clone(),
                    why,
                }),
            ),
            // The caller's body broke a limit: not the endpoint's failure,
            // and nothing to retry.
            Ok(Err(UpstreamError::RequestBody(limit))) => (None, Err(MeshError::from(limit))),

            Ok(Ok(resp)) => {
                let status = resp.status().as_u16();
                ((status >= 500).then_some(Failure::Status(status)), Ok(resp))
            }
        };
        if let Some(op) = outlier.as_ref().filter(|_| !callers_fault) {
            let o = match failure {
                None => Outcome::Success,
                Some(Failure::Status(s)) => Outcome::Status(s),
                Some(_) => Outcome::ConnectFailure,
            };
            let total = svc.workloads.len();
            let ejected = mesh_core::plan::endpoints(snap, svc, sp, None).map_or(0, |all| {
                all.iter()
                    .filter(|e| !inner.state.endpoint(&e.key).is_available(Instant::now()))
                    .count()
            });
            if state.record(o, Instant::now(), op, ejected < op.max_ejected(total)) {
                tracing::info!(endpoint = %ep.key, host = %dest.host, "outlier detection ejected an endpoint");
            }
        }
        result = Some(res);
        let again = matches!(failure, Some(f) if retry.retries_on(f) && attempt + 1 < attempts);
        if again {
            last_failed = Some(ep.key.clone());
        }
        last = Some((ep, scheme == "https"));
        if !again {
            break;
        }
    }
    let result = result.unwrap_or_else(|| {
        Err(MeshError::NoHealthyEndpoint {
            target: planned.target(),
        })
    });
    // What telemetry reports as the destination of this request.
    let mut info = DestinationInfo::for_service(svc);
    if let Some((ep, mtls)) = &last {
        info = info
            .with_workload(WorkloadInfo::from_workload(&snap.workloads[ep.workload]))
            .with_mtls(*mtls)
            .with_upstream(&ep.key);
    }
    let mut resp = match result {
        Ok(resp) => resp,
        Err(e) => answer(&e, crate::error::is_grpc(&parts.headers)),
    };
    resp.extensions_mut().insert(info);
    rewrite::response_headers(&mut resp, rule.map(|(r, _)| r), dest);
    if let Some(c) = cookie {
        if let Ok(v) = HeaderValue::from_str(&c.header) {
            resp.headers_mut().append(http::header::SET_COOKIE, v);
        }
    }
    Ok(resp)
}

fn mirror(
    inner: &Inner,
    snap: &Snapshot,
    m: &WeightedDestination,
    port: u16,
    parts: &http::request::Parts,
    body: Bytes,
) {
    let Ok(planned) = resolve_destination(snap, m, port) else {
        return;
    };
    let sp = planned.port;
    let set = pick::EndpointSet::Mirror { host: &m.host };
    let Some(ep) = pick::endpoint(
        &planned.endpoints,
        None,
        None,
        &inner.state,
        set,
        None,
        inner.random.as_ref(),
    ) else {
        return;
    };
    let scheme = match planned.endpoint_tls(snap, &ep) {
        Ok(EndpointTls::MeshMtls) => "https",
        Ok(EndpointTls::Plaintext) => "http",
        Err(_) => return,
    };
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let Ok(uri) = format!("{scheme}://{}{path}", ep.key).parse::<Uri>() else {
        return;
    };
    let mut req = Request::from_parts(parts.clone(), full(body));
    *req.uri_mut() = uri;
    *req.version_mut() = http::Version::HTTP_11;
    // Envoy's convention: the mirror sees `<host>-shadow`.
    if let Some(h) = req
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
    {
        if let Ok(v) = HeaderValue::from_str(&format!("{h}-shadow")) {
            req.headers_mut().insert(http::header::HOST, v);
        }
    }
    if matches!(sp.protocol, Protocol::Http2 | Protocol::Grpc) {
        req.extensions_mut().insert(PriorKnowledgeH2);
    }
    let upstream = inner.upstream.clone();
    tokio::spawn(async move {
        match crate::upstream::send(&upstream, req).await {
            Ok(resp) => {
                // Drain so the connection can be reused; the answer is dropped.
                let _ = resp.into_body().collect().await;
            }
            Err(e) => tracing::debug!("mirror request failed: {e}"),
        }
    });
}
