//! The HTTP telemetry layer: metrics, access log and trace context for each
//! request, recorded once when the response body ends (or is dropped).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Buf;
use http::{Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::task::futures::TaskLocalFuture;

use super::labels::{DestinationInfo, Reporter, SourceInfo, WorkloadInfo, security_policy};
use super::metrics::UNKNOWN;
use super::registry::{Registry, metric_ids};
use super::settings::{TelemetrySettings, apply_tags};
use super::trace::{self, TraceContext};
use crate::error::{MeshError, REASON_HEADER};
use crate::tls::PeerIdentity;
use mesh_core::cel::{Attr, Attributes, Value};
use mesh_core::telemetry::{AccessLog, Side, SideTelemetry, WorkloadTelemetry};

/// Stands in for a side nobody told us about.
static UNKNOWN_WORKLOAD: LazyLock<WorkloadInfo> = LazyLock::new(WorkloadInfo::unknown);

/// The access log's `tracing` target.
pub const ACCESS_LOG_TARGET: &str = "mesh::access";

#[derive(Debug, Clone)]
pub(crate) struct Shared {
    pub(crate) registry: Registry,
    pub(crate) reporter: Reporter,
    pub(crate) local: WorkloadInfo,
    /// What the Telemetry API says of the workload; `None`: the mesh's
    /// defaults (every metric, one access-log line per request, every new
    /// trace sampled).
    pub(crate) settings: Option<Arc<TelemetrySettings>>,
}

impl Shared {
    /// The side the reporter is (Istio's `workloadMode`: outbound and
    /// gateways are CLIENT, inbound SERVER).
    pub(crate) fn side(&self) -> Side {
        match self.reporter {
            Reporter::Source => Side::Client,
            Reporter::Destination => Side::Server,
        }
    }
}

/// Measures requests with Istio's standard metrics, writes one access-log
/// line per request, and propagates trace context. See the
/// [module docs](super).
#[derive(Debug, Clone)]
pub struct TelemetryLayer {
    shared: Arc<Shared>,
}

impl TelemetryLayer {
    /// Records into `registry` as `reporter`, for the local workload
    /// `local` (the destination when inbound, the source when outbound).
    pub fn new(registry: Registry, reporter: Reporter, local: WorkloadInfo) -> Self {
        Self {
            shared: Arc::new(Shared {
                registry,
                reporter,
                local,
                settings: None,
            }),
        }
    }

    /// Applies what the Telemetry API says of the workload (the store's
    /// snapshot, resolved once per snapshot): metrics disabled or with
    /// their tags changed, the access log off or filtered, the sampling
    /// of the traces this side starts.
    pub fn with_settings(mut self, settings: Arc<TelemetrySettings>) -> Self {
        Arc::make_mut(&mut self.shared).settings = Some(settings);
        self
    }

    /// The server side: `reporter="destination"`.
    pub fn inbound(registry: Registry, local: WorkloadInfo) -> Self {
        Self::new(registry, Reporter::Destination, local)
    }

    /// The client side: `reporter="source"`.
    pub fn outbound(registry: Registry, local: WorkloadInfo) -> Self {
        Self::new(registry, Reporter::Source, local)
    }
}

impl<S> tower::Layer<S> for TelemetryLayer {
    type Service = Telemetry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Telemetry {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// See [`TelemetryLayer`].
#[derive(Debug, Clone)]
pub struct Telemetry<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> Telemetry<S> {
    /// Wraps `inner`; see [`TelemetryLayer::new`].
    pub fn new(inner: S, registry: Registry, reporter: Reporter, local: WorkloadInfo) -> Self {
        tower::Layer::layer(&TelemetryLayer::new(registry, reporter, local), inner)
    }

    /// A [`TelemetryLayer`].
    pub fn layer(registry: Registry, reporter: Reporter, local: WorkloadInfo) -> TelemetryLayer {
        TelemetryLayer::new(registry, reporter, local)
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

/// What is known when the request arrives.
#[derive(Debug)]
struct Pending {
    shared: Arc<Shared>,
    start: Instant,
    method: Method,
    /// The request's path and query (shared with the request, not
    /// copied); the log shows the path alone: query strings carry tokens,
    /// which have no place in a log.
    path: Option<http::uri::PathAndQuery>,
    version: Version,
    /// Where the request was addressed, as it came: lowercased and
    /// stripped of its port only when read ([`Pending::host`]).
    host: HostSource,
    grpc: bool,
    request_id: Option<String>,
    trace_id: u128,
    /// Inbound: the caller. Outbound: unused (the destination comes with
    /// the response).
    peer: Option<Arc<WorkloadInfo>>,
    mtls: Option<bool>,
    destination: Option<DestinationInfo>,
    /// What the request body has carried so far.
    request: Arc<RequestCounts>,
    /// The Telemetry settings in force when the request arrived.
    telemetry: Option<Arc<WorkloadTelemetry>>,
    /// What the settings' expressions read of the request, kept only when
    /// there are expressions.
    attrs: Option<Box<RequestFacts>>,
}

/// The parts of a request the Telemetry API's expressions read that the
/// layer does not keep otherwise.
#[derive(Debug)]
struct RequestFacts {
    headers: Option<http::HeaderMap>,
    path_and_query: String,
    scheme: Option<String>,
    client: Option<std::net::SocketAddr>,
    local: Option<std::net::SocketAddr>,
}

/// Counted as the request body is read: shared by the body and the
/// request's record (one allocation for both counters).
#[derive(Debug, Default)]
struct RequestCounts {
    bytes: AtomicU64,
    /// gRPC messages the client sent.
    messages: AtomicU64,
}

/// Where a request was addressed: the URI's authority, else its Host
/// header (both shared with the request, not copied).
#[derive(Debug)]
enum HostSource {
    Authority(http::uri::Authority),
    Header(http::HeaderValue),
    Unknown,
}

impl Pending {
    /// The host the request was addressed to, lowercase, without its port.
    fn host(&self) -> String {
        let host = match &self.host {
            HostSource::Authority(a) => Some(a.host()),
            HostSource::Header(h) => h.to_str().ok().map(|h| match h.rsplit_once(':') {
                Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
                _ => h,
            }),
            HostSource::Unknown => None,
        };
        host.unwrap_or(UNKNOWN).to_ascii_lowercase()
    }

    /// The path, without the query.
    fn path(&self) -> &str {
        self.path.as_ref().map_or("", http::uri::PathAndQuery::path)
    }
}

/// Counts gRPC messages in a stream of bytes: each is a 5-byte prefix
/// (compressed flag, big-endian length) and that many bytes, and may span
/// frames (gRPC over HTTP/2's Length-Prefixed-Message).
#[derive(Debug, Default)]
struct GrpcMessages {
    /// Bytes of the current message's body still to skip.
    skip: u64,
    /// Prefix bytes read so far (0 at a message boundary).
    prefix: [u8; 5],
    have: usize,
    /// Messages begun.
    count: u64,
}

impl GrpcMessages {
    /// Feeds a frame's data without consuming it.
    fn feed_buf(&mut self, data: &impl bytes::Buf) {
        if data.chunk().len() == data.remaining() {
            self.feed(data.chunk());
            return;
        }
        let mut slices = [std::io::IoSlice::new(&[]); 64];
        let n = data.chunks_vectored(&mut slices);
        for s in &slices[..n] {
            self.feed(s);
        }
    }

    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.skip > 0 {
                let n = usize::try_from(self.skip)
                    .unwrap_or(usize::MAX)
                    .min(data.len());
                self.skip -= n as u64;
                data = &data[n..];
                continue;
            }
            let n = (5 - self.have).min(data.len());
            self.prefix[self.have..self.have + n].copy_from_slice(&data[..n]);
            self.have += n;
            data = &data[n..];
            if self.have == 5 {
                self.count += 1;
                self.have = 0;
                let [_, a, b, c, d] = self.prefix;
                self.skip = u64::from(u32::from_be_bytes([a, b, c, d]));
            }
        }
    }
}

/// What is known once the response head is there.
#[derive(Debug)]
struct Answered {
    pending: Pending,
    /// `None` when the service failed without an answer.
    status: Option<StatusCode>,
    flags: &'static str,
    reason: Option<String>,
    /// `grpc-status`, from the head or the trailers.
    grpc_status: Option<u8>,
}

/// A gRPC status code as a label: `0`..`16`, anything else `unknown` (an
/// upstream cannot grow the series with made-up codes).
fn grpc_status_label(code: u8) -> &'static str {
    const CODES: [&str; 17] = [
        "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
    ];
    CODES.get(usize::from(code)).copied().unwrap_or(UNKNOWN)
}

/// The `grpc-status` of a header map, if it has one that reads as a code.
fn grpc_status_of(headers: &http::HeaderMap) -> Option<u8> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

impl Answered {
    fn finish(self, response_bytes: u64, response_messages: u64, downstream_gone: bool) {
        let Answered {
            pending: p,
            status,
            mut flags,
            reason,
            grpc_status,
        } = self;
        if downstream_gone && flags == "-" {
            // Envoy's flag for a downstream that went away mid-response.
            flags = "DC";
        }
        let duration = p.start.elapsed();
        let request_bytes = p.request.bytes.load(Ordering::Relaxed);
        let shared = &p.shared;
        let local = &shared.local;
        // Read from the request only for a request no route took.
        let host: String;
        let (service, service_name, service_namespace) = match &p.destination {
            Some(d) => (&*d.service, &*d.service_name, &*d.service_namespace),
            // The caller's side of a request no route took: Istio knows no
            // service (no cluster was chosen), so it reports none.
            None if shared.reporter == Reporter::Source && flags == "NR" => {
                (UNKNOWN, UNKNOWN, UNKNOWN)
            }
            None => {
                host = p.host();
                let (name, ns) = super::labels::service_name(&host, &local.namespace);
                let ns = if name == host && host.contains('.') {
                    UNKNOWN
                } else {
                    ns
                };
                (host.as_str(), name, ns)
            }
        };
        // Inbound the caller is the peer; outbound the workload that
        // answered, as the router reported it.
        let (source, destination, mtls) = match shared.reporter {
            Reporter::Destination => (
                p.peer.as_deref().unwrap_or(&UNKNOWN_WORKLOAD),
                local,
                p.mtls,
            ),
            // Istio: "unknown when report is from source since security
            // policy cannot be properly populated" (the caller's side).
            Reporter::Source => (
                local,
                p.destination
                    .as_ref()
                    .and_then(|d| d.workload.as_deref())
                    .unwrap_or(&UNKNOWN_WORKLOAD),
                None,
            ),
        };
        // Envoy reports 0 when there was no answer at all.
        let code = status.as_ref().map_or("0", StatusCode::as_str);
        // Istio's value: the gRPC status of a gRPC request (from the
        // trailers, or the head of a trailers-only answer), else empty.
        let grpc_status = match (p.grpc, grpc_status) {
            (true, Some(s)) => grpc_status_label(s),
            (true, None) => UNKNOWN,
            (false, _) => "",
        };
        let protocol = if p.grpc { "grpc" } else { "http" };
        let side: Option<&SideTelemetry> = p.telemetry.as_ref().map(|t| t.side(shared.side()));
        let attrs = Facts {
            p: &p,
            status,
            grpc_status,
            principal: &source.principal,
            mtls,
        };
        let labels = [
            shared.reporter.as_str(),
            &source.name,
            &source.namespace,
            &source.principal,
            &source.app,
            &source.version,
            &source.canonical_service,
            &source.canonical_revision,
            &source.cluster,
            &destination.name,
            &destination.namespace,
            &destination.principal,
            &destination.app,
            &destination.version,
            &destination.canonical_service,
            &destination.canonical_revision,
            &destination.cluster,
            service,
            service_name,
            service_namespace,
            protocol,
            code,
            grpc_status,
            flags,
            security_policy(mtls),
        ];
        let grpc_messages = p.grpc.then(|| {
            (
                p.request.messages.load(Ordering::Relaxed),
                response_messages,
            )
        });
        match side {
            Some(side) if side.overrides_metrics() => {
                if side.metrics {
                    record_custom(
                        &shared.registry,
                        side,
                        &labels,
                        &attrs,
                        duration,
                        (request_bytes, response_bytes),
                        grpc_messages,
                    );
                }
            }
            _ => shared.registry.record_http(
                labels,
                duration,
                request_bytes,
                response_bytes,
                grpc_messages,
            ),
        }
        let (peer, upstream) = match shared.reporter {
            Reporter::Destination => (source.principal.as_str(), "-"),
            Reporter::Source => (
                destination.principal.as_str(),
                p.destination
                    .as_ref()
                    .and_then(|d| d.upstream.as_deref())
                    .unwrap_or("-"),
            ),
        };
        let lines = match side.map(|s| &s.access_log) {
            None | Some(AccessLog::Default) => 1,
            Some(AccessLog::Providers(filters)) => filters
                .iter()
                .filter(|f| f.as_ref().is_none_or(|f| f.holds(&attrs)))
                .count(),
        };
        for _ in 0..lines {
            tracing::info!(
                target: ACCESS_LOG_TARGET,
                reporter = shared.reporter.as_str(),
                method = %p.method,
                path = p.path(),
                protocol = ?p.version,
                status = status.map_or(0, |s| s.as_u16()),
                flags,
                duration_ms = duration_ms(duration),
                bytes_received = request_bytes,
                bytes_sent = response_bytes,
                authority = %p.host(),
                service,
                upstream,
                peer,
                reason = reason.as_deref().unwrap_or("-"),
                request_id = p.request_id.as_deref().unwrap_or("-"),
                trace_id = %format_args!("{:032x}", p.trace_id),
                "access"
            );
        }
    }
}

/// Records the HTTP metrics of one request as a Telemetry changed them:
/// each not disabled, with its own labels.
fn record_custom(
    registry: &Registry,
    side: &SideTelemetry,
    labels: &[&str; super::metrics::HTTP_LABEL_COUNT],
    attrs: &dyn Attributes,
    duration: Duration,
    (request_bytes, response_bytes): (u64, u64),
    grpc_messages: Option<(u64, u64)>,
) {
    let micros = u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
    let mut amounts = vec![
        (metric_ids::REQUEST_COUNT, 1),
        (metric_ids::REQUEST_DURATION, micros),
        (metric_ids::REQUEST_SIZE, request_bytes),
        (metric_ids::RESPONSE_SIZE, response_bytes),
    ];
    if let Some((sent, received)) = grpc_messages {
        amounts.push((metric_ids::GRPC_REQUEST_MESSAGES, sent));
        amounts.push((metric_ids::GRPC_RESPONSE_MESSAGES, received));
    }
    for (id, amount) in amounts {
        let setting = &side.metric[id];
        if setting.disabled {
            continue;
        }
        let pairs = apply_tags(&super::metrics::HTTP_LABELS, labels, setting, attrs);
        let refs: Vec<(&str, &str)> = pairs.iter().map(|(n, v)| (*n, v.as_str())).collect();
        registry.custom_series(id, &refs).data.add(amount);
    }
}

/// Whether the side has expressions to evaluate (tag values, filters).
fn has_expressions(side: &SideTelemetry) -> bool {
    side.metric.iter().any(|m| !m.tags.is_empty())
        || matches!(&side.access_log, AccessLog::Providers(f) if f.iter().any(Option::is_some))
}

/// Whether a trace this side starts is sampled: every one by default; at
/// a Telemetry's `randomSamplingPercentage`, decided from `x-request-id`
/// where `useRequestIdForTraceSampling` (Istio's default) so that the
/// proxies of one request decide alike, else at random. A request that
/// carries a trace keeps its own decision (as Envoy keeps it).
fn sampling_decision(side: Option<&SideTelemetry>, headers: &http::HeaderMap) -> bool {
    let Some(side) = side else {
        return true;
    };
    let Some(percent) = side.sampling else {
        return true;
    };
    // Hundredths of a percent, as Envoy's sampling resolution.
    let threshold = (percent * 100.0).round() as u64;
    let draw = headers
        .get("x-request-id")
        .filter(|_| side.sample_by_request_id)
        .map_or_else(rand::random::<u64>, |id| {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            id.as_bytes().hash(&mut h);
            h.finish()
        });
    draw % 10_000 < threshold
}

/// What a request offers the Telemetry API's expressions.
struct Facts<'a> {
    p: &'a Pending,
    status: Option<StatusCode>,
    grpc_status: &'a str,
    principal: &'a str,
    mtls: Option<bool>,
}

impl Attributes for Facts<'_> {
    fn get(&self, attr: &Attr) -> Option<Value> {
        let p = self.p;
        let facts = p.attrs.as_deref();
        let s = |v: &str| Some(Value::Str(v.to_owned()));
        match attr {
            Attr::RequestMethod => s(p.method.as_str()),
            Attr::RequestHost => Some(Value::Str(p.host())),
            Attr::RequestPath => facts.map(|f| Value::Str(f.path_and_query.clone())),
            Attr::RequestUrlPath => s(p.path()),
            Attr::RequestScheme => facts.and_then(|f| f.scheme.clone()).map(Value::Str),
            Attr::RequestProtocol => s(match p.version {
                Version::HTTP_09 => "HTTP/0.9",
                Version::HTTP_10 => "HTTP/1.0",
                Version::HTTP_2 => "HTTP/2",
                Version::HTTP_3 => "HTTP/3",
                _ => "HTTP/1.1",
            }),
            Attr::RequestId => p.request_id.clone().map(Value::Str),
            Attr::RequestUserAgent => header(facts, "user-agent"),
            Attr::RequestReferer => header(facts, "referer"),
            Attr::RequestHeader(name) => header(facts, name),
            Attr::ResponseCode => {
                Some(Value::Int(self.status.map_or(0, |c| i64::from(c.as_u16()))))
            }
            Attr::ResponseGrpcStatus => self.grpc_status.parse().ok().map(Value::Int),
            Attr::SourcePrincipal => {
                (self.principal != UNKNOWN).then(|| Value::Str(self.principal.to_owned()))
            }
            Attr::SourceAddress => facts
                .and_then(|f| f.client)
                .map(|a| Value::Str(a.to_string())),
            Attr::SourcePort => facts
                .and_then(|f| f.client)
                .map(|a| Value::Int(i64::from(a.port()))),
            Attr::DestinationAddress => facts
                .and_then(|f| f.local)
                .map(|a| Value::Str(a.to_string())),
            Attr::DestinationPort => facts
                .and_then(|f| f.local)
                .map(|a| Value::Int(i64::from(a.port()))),
            Attr::ConnectionMtls => self.mtls.map(Value::Bool),
            _ => None,
        }
    }
}

fn header(facts: Option<&RequestFacts>, name: &str) -> Option<Value> {
    facts?
        .headers
        .as_ref()?
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|v| Value::Str(v.to_owned()))
}

fn duration_ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The request's host without port, lowercased: from the URI, else `Host`.
fn host(req: &Request<impl Sized>) -> HostSource {
    match (req.uri().authority(), req.headers().get(http::header::HOST)) {
        (Some(a), _) => HostSource::Authority(a.clone()),
        (None, Some(h)) => HostSource::Header(h.clone()),
        (None, None) => HostSource::Unknown,
    }
}

impl<S, ReqBody, ResBody> tower::Service<Request<ReqBody>> for Telemetry<S>
where
    S: tower::Service<Request<RequestBody<ReqBody>>, Response = Response<ResBody>>,
    ResBody: Body,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let start = Instant::now();
        let shared = self.shared.clone();
        let telemetry = shared.settings.as_ref().map(|s| s.current());
        let side = telemetry.as_ref().map(|t| t.side(shared.side()));
        let sampled = sampling_decision(side, req.headers());
        let ctx = match shared.reporter {
            Reporter::Destination => {
                let ctx = trace::inbound(req.headers_mut(), sampled);
                req.extensions_mut().insert(ctx.clone());
                ctx
            }
            Reporter::Source => trace::outbound(req.headers_mut(), sampled),
        };
        let attrs = side.filter(|s| has_expressions(s)).map(|_| {
            Box::new(RequestFacts {
                headers: Some(req.headers().clone()),
                path_and_query: req
                    .uri()
                    .path_and_query()
                    .map_or_else(|| req.uri().path().to_owned(), |p| p.as_str().to_owned()),
                scheme: req.uri().scheme_str().map(str::to_owned),
                client: req
                    .extensions()
                    .get::<crate::traffic::ClientAddr>()
                    .map(|c| c.0),
                local: req
                    .extensions()
                    .get::<crate::authz::LocalAddr>()
                    .map(|l| l.0),
            })
        });
        let (peer, mtls) = match shared.reporter {
            Reporter::Destination => {
                let identity = req.extensions().get::<PeerIdentity>();
                let peer = match (req.extensions().get::<SourceInfo>(), identity) {
                    (Some(SourceInfo(w)), _) => Some(w.clone()),
                    (None, Some(id)) => id.labels(),
                    (None, None) => None,
                };
                (peer, identity.map(PeerIdentity::is_mtls))
            }
            Reporter::Source => (None, None),
        };
        let request = Arc::new(RequestCounts::default());
        let pending = Pending {
            start,
            method: req.method().clone(),
            path: req.uri().path_and_query().cloned(),
            version: req.version(),
            host: host(&req),
            grpc: req
                .headers()
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("application/grpc")),
            request_id: req
                .headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            trace_id: ctx.trace_id(),
            peer,
            mtls,
            destination: req.extensions().get::<DestinationInfo>().cloned(),
            request: request.clone(),
            telemetry,
            attrs,
            shared,
        };
        let grpc = pending.grpc;
        let req = req.map(|body| RequestBody {
            inner: body,
            counts: request,
            messages: grpc.then(GrpcMessages::default),
        });
        ResponseFuture {
            inner: ctx.scope(self.inner.call(req)),
            pending: Some(pending),
        }
    }
}

pin_project! {
    /// The future of [`Telemetry`]: the inner future, run with the
    /// request's trace context current.
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: TaskLocalFuture<TraceContext, F>,
        pending: Option<Pending>,
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let pending = this.pending.take();
        Poll::Ready(match result {
            Ok(resp) => {
                let (parts, body) = resp.into_parts();
                let answered = pending.map(|mut pending| {
                    // Only a gRPC request's status is reported.
                    let grpc_status = if pending.grpc {
                        grpc_status_of(&parts.headers)
                    } else {
                        None
                    };
                    if let Some(d) = parts.extensions.get::<DestinationInfo>() {
                        pending.destination = Some(d.clone());
                    }
                    Answered {
                        pending,
                        status: Some(parts.status),
                        flags: parts
                            .extensions
                            .get::<MeshError>()
                            .map_or("-", MeshError::response_flag),
                        reason: parts
                            .headers
                            .get(REASON_HEADER)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned),
                        grpc_status,
                    }
                });
                Ok(Response::from_parts(
                    parts,
                    ResponseBody::new(body, answered),
                ))
            }
            Err(e) => {
                if let Some(pending) = pending {
                    // No answer at all: Envoy reports code 0.
                    Answered {
                        pending,
                        status: None,
                        flags: "-",
                        reason: None,
                        grpc_status: None,
                    }
                    .finish(0, 0, false);
                }
                Err(e)
            }
        })
    }
}

pin_project! {
    /// A request body that counts the bytes the service reads.
    #[derive(Debug)]
    pub struct RequestBody<B> {
        #[pin]
        inner: B,
        counts: Arc<RequestCounts>,
        // gRPC only: the client's messages.
        messages: Option<GrpcMessages>,
    }
}

impl<B> RequestBody<B> {
    /// The wrapped body.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }
}

impl<B: Body> Body for RequestBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        if let Some(Ok(f)) = &frame {
            if let Some(d) = f.data_ref() {
                this.counts
                    .bytes
                    .fetch_add(d.remaining() as u64, Ordering::Relaxed);
                if let Some(m) = this.messages.as_mut() {
                    m.feed_buf(d);
                    this.counts.messages.store(m.count, Ordering::Relaxed);
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Records the request when the body ends, or, dropped early, as `DC`.
#[derive(Debug)]
struct Finisher {
    answered: Option<Answered>,
    bytes: u64,
    /// gRPC only: the server's messages.
    messages: Option<GrpcMessages>,
}

impl Finisher {
    fn finish(&mut self, downstream_gone: bool) {
        if let Some(a) = self.answered.take() {
            let messages = self.messages.as_ref().map_or(0, |m| m.count);
            a.finish(self.bytes, messages, downstream_gone);
        }
    }
}

impl Drop for Finisher {
    fn drop(&mut self) {
        self.finish(true);
    }
}

pin_project! {
    /// A response body that counts the bytes sent and records the request
    /// when it ends.
    #[derive(Debug)]
    pub struct ResponseBody<B> {
        #[pin]
        inner: B,
        finisher: Finisher,
    }
}

impl<B: Body> ResponseBody<B> {
    fn new(inner: B, answered: Option<Answered>) -> Self {
        let messages = answered
            .as_ref()
            .is_some_and(|a| a.pending.grpc)
            .then(GrpcMessages::default);
        let mut finisher = Finisher {
            answered,
            bytes: 0,
            messages,
        };
        if inner.is_end_stream() {
            finisher.finish(false);
        }
        Self { inner, finisher }
    }
}

impl<B> ResponseBody<B> {
    /// The wrapped body.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }
}

impl<B: Body> Body for ResponseBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let Some(d) = f.data_ref() {
                    this.finisher.bytes += d.remaining() as u64;
                    if let Some(m) = this.finisher.messages.as_mut() {
                        m.feed_buf(d);
                    }
                }
                if let Some(t) = f.trailers_ref()
                    && let Some(a) = this.finisher.answered.as_mut()
                    && let Some(code) = grpc_status_of(t)
                {
                    a.grpc_status = Some(code);
                }
                if this.inner.is_end_stream() {
                    this.finisher.finish(false);
                }
            }
            Some(Err(_)) | None => this.finisher.finish(false),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::GrpcMessages;

    fn message(len: u32) -> Vec<u8> {
        let mut m = vec![0];
        m.extend_from_slice(&len.to_be_bytes());
        m.extend(std::iter::repeat_n(7u8, len as usize));
        m
    }

    /// Messages are counted however the stream is cut into frames: at
    /// every byte, inside a prefix, inside a body, empty messages too.
    #[test]
    fn grpc_messages_are_counted_across_any_frame_boundaries() {
        let stream: Vec<u8> = [message(3), message(0), message(300), message(1)].concat();
        for cut in 0..=stream.len() {
            for second_cut in cut..=stream.len() {
                let mut m = GrpcMessages::default();
                m.feed(&stream[..cut]);
                m.feed(&stream[cut..second_cut]);
                m.feed(&stream[second_cut..]);
                assert_eq!(m.count, 4, "cut at {cut} and {second_cut}");
            }
        }
        let mut m = GrpcMessages::default();
        for b in &stream {
            m.feed(std::slice::from_ref(b));
        }
        assert_eq!(m.count, 4);
    }
}
