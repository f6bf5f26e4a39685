//! The route layer, outermost: one snapshot for the whole request, the
//! routing plan's rule and destination, and what only a request's bytes
//! decide (the sticky key, whether the body can be replayed). Below it,
//! every layer reads the decision from the request's [`Planned`] extension.

use std::sync::Arc;
use std::time::Instant;

use http::{HeaderValue, Request, Response, Uri};
use http_body::Body;
use http_body_util::BodyExt;
use mesh_core::plan::{
    PlanRequest, PlannedAction, RoutePlan, choose_destination, resolve_destination,
};
use mesh_core::resources::common::Labels;
use mesh_core::resources::networking::Protocol;
use mesh_core::retry::fault_decision;
use mesh_core::route::RequestInfo;
use mesh_core::snapshot::Snapshot;
use mesh_core::store::Store;
use tower::Service;

use super::state::{RandomSource, TrafficState};
use super::{
    CapturedService, Destination, Failed, GatewayServers, Planned, RouterConfig, Tried, answer,
    oneshot, pick, pool, rewrite,
};
use crate::body::{BoxBody, full};
use crate::error::MeshError;
use crate::telemetry::{DestinationInfo, WorkloadInfo};

/// The route layer over the rest of the outbound stack `S`.
#[derive(Debug, Clone)]
pub(crate) struct Route<S> {
    next: S,
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    store: Arc<Store>,
    config: RouterConfig,
    /// This workload's [`PEER_HEADER`](crate::telemetry::PEER_HEADER)
    /// value (its `namespace/name`), when it has one.
    peer: Option<HeaderValue>,
    state: Arc<TrafficState>,
    random: Arc<dyn RandomSource>,
    /// Where this workload is (locality, network, labels), as of the
    /// snapshot version it was read from: read once per snapshot, not per
    /// request (it copies the workload's labels).
    me: arc_swap::ArcSwapOption<(u64, Arc<mesh_core::locality::Whereabouts>)>,
}

impl Shared {
    /// This workload's whereabouts in `snap`.
    fn me(&self, snap: &Snapshot) -> Arc<mesh_core::locality::Whereabouts> {
        if let Some(c) = &*self.me.load() {
            if c.0 == snap.version {
                return c.1.clone();
            }
        }
        let me = Arc::new(self.config.whereabouts(snap));
        self.me.store(Some(Arc::new((snap.version, me.clone()))));
        me
    }
}

impl<S> Route<S>
where
    S: Service<Request<BoxBody>, Response = Response<BoxBody>, Error = Failed>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    pub(crate) fn new(
        next: S,
        store: Arc<Store>,
        config: RouterConfig,
        state: Arc<TrafficState>,
        random: Arc<dyn RandomSource>,
    ) -> Self {
        // How this workload describes itself to its mesh peers: from the
        // configuration it starts with.
        let peer = config.peer.clone().or_else(|| {
            config
                .workload
                .as_deref()
                .and_then(|key| match store.load().workload(key) {
                    Some((_, w)) => crate::telemetry::WorkloadInfo::from_workload(w).peer_header(),
                    None => HeaderValue::from_str(key).ok(),
                })
        });
        Self {
            next,
            shared: Arc::new(Shared {
                store,
                peer,
                config,
                state,
                random,
                me: arc_swap::ArcSwapOption::empty(),
            }),
        }
    }

    /// Routes one request; every failure is answered here.
    pub(crate) async fn call(self, req: Request<BoxBody>) -> Response<BoxBody> {
        let grpc = crate::error::is_grpc(req.headers());
        match self.route(req, grpc).await {
            Ok(resp) => resp,
            Err(e) => answer(&e, grpc),
        }
    }

    /// `grpc`: the request is gRPC (its failures are answered as gRPC).
    async fn route(
        self,
        mut req: Request<BoxBody>,
        grpc: bool,
    ) -> Result<Response<BoxBody>, MeshError> {
        let shared = &*self.shared;
        // Hop-by-hop headers and those `Connection` names go here, where
        // an outbound request enters, before routing reads the headers and
        // before the mesh adds its own (a client naming one of those in
        // `Connection` removes nothing the mesh set).
        crate::upgrade::strip_hop_by_hop(&mut req);
        // Peer metadata: this workload names itself to the mesh peer it
        // calls (removed again below for anything but mesh mTLS); what the
        // application wrote under that name is never passed on.
        let headers = req.headers_mut();
        headers.remove(crate::telemetry::PEER_HEADER);
        if let Some(v) = &shared.peer {
            headers.insert(crate::telemetry::PEER_HEADER, v.clone());
        }
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
        let snap = shared.store.load();
        let (host, port) = match req.extensions().get::<CapturedService>() {
            Some(c) => captured_target(&req, &snap, &shared.config.namespace, c),
            None => target(&req).ok_or_else(|| MeshError::UnknownHost {
                host: String::new(),
            })?,
        };
        let plan = plan(shared, &snap, &req, &host, port)?;
        // What the rule says besides its destinations, read before those
        // are moved out of the plan (the default route's are its own).
        let rule = plan.rule;
        let retry = plan.retry_policy();
        let route_timeout = plan.timeout();
        let cors = rule.and_then(|(r, _)| r.cors.as_ref());
        let cors_allowed = match cors.map(|c| super::cors::on_request(c, &req)) {
            None | Some(super::cors::OnRequest::NotCors) => None,
            Some(super::cors::OnRequest::Answer(resp)) => return Ok(resp),
            Some(super::cors::OnRequest::Forward(allowed)) => Some(allowed),
        };
        // The route's CORS headers on every answer it gives.
        let with_cors = |mut resp: Response<BoxBody>| {
            if let (Some(c), Some(allowed)) = (cors, cors_allowed.clone()) {
                super::cors::on_response(c, allowed, &mut resp);
            }
            resp
        };
        // Every answer of the route carries its CORS headers, the
        // errors it answers itself included (a browser then reads the
        // status); `or_answer!` answers a failure here.
        macro_rules! or_answer {
            ($e:expr) => {
                match $e {
                    Ok(v) => v,
                    Err(e) => return Ok(with_cors(answer(&MeshError::from(e), grpc))),
                }
            };
        }
        let dests = match plan.action {
            PlannedAction::Redirect(r) => return Ok(with_cors(rewrite::redirect(&req, r, &host))),
            PlannedAction::DirectResponse(d) => {
                let mut resp = Response::new(full(
                    d.body
                        .as_ref()
                        .and_then(|b| b.string.clone())
                        .unwrap_or_default(),
                ));
                *resp.status_mut() =
                    http::StatusCode::from_u16(d.status).unwrap_or(http::StatusCode::OK);
                return Ok(with_cors(resp));
            }
            PlannedAction::Forward(ds) => ds,
        };
        if let Some(fault) = rule.and_then(|(r, _)| r.fault.as_ref()) {
            let d = fault_decision(fault, shared.random.next_f64(), shared.random.next_f64());
            if let Some(delay) = d.delay {
                tokio::time::sleep(delay).await;
            }
            if let Some(status) = d.abort {
                let source = rule.map(|(r, _)| r.describe()).unwrap_or_default();
                return Ok(with_cors(answer(
                    &MeshError::FaultAbort(source, status),
                    grpc,
                )));
            }
        }

        let (mut parts, body) = req.into_parts();
        let has_body = !body.is_end_stream();
        let small = body
            .size_hint()
            .upper()
            .is_some_and(|u| u <= shared.config.buffer_limit as u64);
        let (replay, body) = if !has_body {
            (Some(bytes::Bytes::new()), None)
        } else if small {
            let bytes = or_answer!(body.collect().await.map_err(|e| {
                MeshError::UpstreamProtocol {
                    endpoint: "client".into(),
                    why: e.to_string(),
                }
            }))
            .to_bytes();
            (Some(bytes), None)
        } else {
            (None, Some(body))
        };

        // Sticky sessions: the key comes from the first weighted host's rule.
        let first_host = dests.first().map(|d| d.host.as_str()).unwrap_or_default();
        let ch = pick::consistent_hash(&snap, first_host, port);
        let (key, cookie) = match &ch {
            Some(ch) => pick::request_key(&parts, ch, shared.random.as_ref()),
            None => (None, None),
        };
        let now = Instant::now();
        // Where this caller is: once per request, for the destinations'
        // availability (its network's endpoints) and the locality plan.
        let me = shared.me(&snap);
        let dest = or_answer!(
            choose_destination(
                &dests,
                |d| pick::has_available(&snap, d, port, &shared.state, now, me.network.as_deref()),
                key,
                || shared.random.next_u64(),
            )
            .ok_or_else(|| MeshError::NoHealthyEndpoint {
                target: first_host.to_owned(),
            })
        );
        let resolved = or_answer!(resolve_destination(&snap, dest, port));
        let service = resolved.service;
        let retryable =
            replay.is_some() && retry.request_is_retryable(parts.method.as_str(), has_body);
        let mirror = rule.and_then(|(r, _)| match (&r.mirror, r.mirror_percent) {
            (Some(m), Some(pct)) if replay.is_some() => Some((m.clone(), pct)),
            _ => None,
        });
        let port_h2 = matches!(resolved.port.protocol, Protocol::Http2 | Protocol::Grpc);
        let outlier = resolved
            .policy
            .outlier_detection
            .as_ref()
            .and_then(mesh_core::outlier::OutlierPolicy::from_config);
        let (endpoints, spread) = pick::Spread::of(
            &snap,
            resolved.endpoints,
            resolved.policy.load_balancer.as_ref(),
            outlier.is_some(),
            &me,
        );
        let planned = Destination {
            snap: snap.clone(),
            host: service.host.clone(),
            port: resolved.port.number,
            subset: resolved.subset.map(str::to_owned),
            h2: port_h2,
            h2_over_mtls: port_h2
                || parts.version == http::Version::HTTP_2
                || mesh_core::plan::upgrades_h2(&snap, &resolved.policy),
            load_balancer: resolved.policy.load_balancer.clone(),
            pool: pool::Limits::from_policy(&resolved.policy),
            connect_timeout: mesh_core::plan::connect_timeout(&resolved.policy),
            http_conn: mesh_core::plan::http_connection(&resolved.policy),
            outlier,
            endpoints,
            spread,
            me,
            hash_key: key,
            mirrored: false,
            retry,
            retryable,
            timeout: route_timeout,
            mirror,
            request_port: port,
            replay: replay.clone(),
        };

        rewrite::request_headers(&mut parts, rule.map(|(r, _)| r), dest);
        // What travels on is the path and query alone (an absolute-form
        // URI's authority is the Host header's now), rewritten if the rule
        // says so; an origin-form URI left as it is is not parsed again.
        if let Some(path) = rewrite::path(&parts, rule) {
            parts.uri = or_answer!(
                path.parse::<Uri>()
                    .map_err(|e| MeshError::BadRequest(format!("rewritten path {path:?}: {e}")))
            );
        } else if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
            let pq = parts
                .uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
            parts.uri = Uri::from(pq);
        }
        parts.extensions.insert(Planned(Arc::new(planned)));
        if rule.is_some_and(|(r, _)| r.websocket_upgrade == Some(false)) {
            parts.extensions.insert(crate::upgrade::NoUpgrade);
        }
        let body = match (&replay, body) {
            (Some(b), _) => full(b.clone()),
            (None, Some(s)) => s,
            (None, None) => crate::body::empty(),
        };
        let send = oneshot(self.next, Request::from_parts(parts, body));
        let result = send.await;

        // What telemetry reports as the destination of this request.
        let mut info = DestinationInfo::for_service(service);
        let (mut resp, tried) = match result {
            Ok(mut resp) => {
                let tried = resp.extensions_mut().remove::<Tried>();
                (resp, tried)
            }
            Err(f) => (answer(&f.error, grpc), f.tried),
        };
        if let Some(t) = tried {
            info = info
                .with_workload(WorkloadInfo::shared(&snap.workloads[t.endpoint.workload]))
                .with_mtls(t.mtls)
                .with_upstream(&t.endpoint.key);
        }
        resp.extensions_mut().insert(info);
        rewrite::response_headers(&mut resp, rule.map(|(r, _)| r), dest);
        if let Some(c) = cookie {
            if let Ok(v) = HeaderValue::from_str(&c.header) {
                resp.headers_mut().append(http::header::SET_COOKIE, v);
            }
        }
        Ok(with_cors(resp))
    }
}

/// The routing plan's rule for the request. The plan's request borrows the
/// request's headers (not `Sync`), so it is made and dropped here, off the
/// awaits of the caller.
fn plan<'s>(
    shared: &Shared,
    snap: &'s Snapshot,
    req: &Request<BoxBody>,
    host: &str,
    port: u16,
) -> Result<RoutePlan<'s>, MeshError> {
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let authority = req
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or(host);
    let headers = HeaderMapLookup(req.headers());
    let servers = req.extensions().get::<GatewayServers>();
    let config = &shared.config;
    let plan_req = PlanRequest {
        host,
        info: RequestInfo {
            method: req.method().as_str(),
            path_and_query: path,
            authority,
            scheme: req.uri().scheme_str().unwrap_or("http"),
            port,
            headers: &headers,
            source_labels: me_labels(snap, config),
            source_namespace: Some(&config.namespace),
            gateway: config.gateway.as_deref(),
            auth: req
                .extensions()
                .get::<std::sync::Arc<mesh_core::jwt::RequestAuth>>()
                .map(|a| &**a),
        },
        namespace: &config.namespace,
        gateway: config
            .gateway
            .as_deref()
            .map(|gw| (gw, servers.map_or(&[][..], |s| &s.0[..]))),
    };
    Ok(mesh_core::plan::route(snap, &plan_req)?)
}

/// Where a captured request is going: the service its Host names, when
/// that service has the port connected to, else the service the connection
/// was addressed to ([`CapturedService`]).
fn captured_target(
    req: &Request<BoxBody>,
    snap: &Snapshot,
    namespace: &str,
    captured: &CapturedService,
) -> (String, u16) {
    let named = target(req).map(|(host, _)| host).filter(|host| {
        snap.service(host, namespace)
            .is_some_and(|s| s.port(captured.port).is_some())
    });
    (
        named.unwrap_or_else(|| captured.host.clone()),
        captured.port,
    )
}

/// Where the request is going: host without port, and port.
fn target(req: &Request<BoxBody>) -> Option<(String, u16)> {
    let authority = req.uri().authority().map(|a| a.as_str()).or_else(|| {
        req.headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
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

/// Route matching's view of the request headers.
struct HeaderMapLookup<'a>(&'a http::HeaderMap);

impl mesh_core::route::HeaderLookup for HeaderMapLookup<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        self.0.get(name).and_then(|v| v.to_str().ok())
    }
}

/// The labels of the workload this router works for, if the snapshot names
/// one in its namespace with matching labels, else the configured ones.
fn me_labels<'a>(snap: &'a Snapshot, config: &'a RouterConfig) -> &'a Labels {
    static NONE: std::sync::LazyLock<Labels> = std::sync::LazyLock::new(Labels::new);
    match &config.workload {
        Some(key) if config.labels.is_empty() => {
            snap.workload(key).map_or(&*NONE, |(_, w)| &w.labels)
        }
        _ => &config.labels,
    }
}

#[cfg(test)]
mod tests {
    //! The route layer alone, over a `service_fn` standing for the rest of
    //! the stack: what it decides and puts in the request's extensions.

    use std::sync::Mutex;

    use super::*;
    use crate::traffic::state::SeededRandom;
    use crate::traffic::test_store;

    const MESH: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 9080, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints:
  - {address: 10.0.0.1, labels: {version: v1}}
  - {address: 10.0.0.2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews.default.svc.cluster.local
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - match: [{uri: {prefix: /old}}]
    rewrite: {uri: /new}
    headers: {response: {set: {x-routed: "yes"}}}
    timeout: 2s
    retries: {attempts: 4, retryOn: 5xx}
    route: [{destination: {host: reviews, subset: v2}}]
  - match: [{uri: {prefix: /teapot}}]
    fault: {abort: {httpStatus: 418, percentage: {value: 100}}}
    route: [{destination: {host: reviews, subset: v1}}]
  - route: [{destination: {host: reviews, subset: v1}}]
"#;

    /// What the stack below saw: the URI and the plan.
    type Seen = Arc<Mutex<Vec<(String, Arc<Destination>)>>>;

    fn layer(
        seen: Seen,
    ) -> Route<
        impl Service<Request<BoxBody>, Response = Response<BoxBody>, Error = Failed, Future = impl Send>
        + Clone
        + Send,
    > {
        let store = test_store(MESH);
        let next = tower::service_fn(move |req: Request<BoxBody>| {
            let seen = seen.clone();
            async move {
                let p = super::super::planned(&req)?;
                seen.lock().unwrap().push((req.uri().to_string(), p));
                Ok::<_, Failed>(Response::new(full("ok")))
            }
        });
        Route::new(
            next,
            store,
            RouterConfig::for_workload("default", "client"),
            Arc::new(TrafficState::default()),
            Arc::new(SeededRandom::new(7)),
        )
    }

    #[tokio::test]
    async fn the_decision_travels_in_the_extensions() {
        let seen = Arc::default();
        let route = layer(Arc::clone(&seen));
        let req = Request::get("http://reviews:9080/old/page?q=1")
            .body(crate::body::empty())
            .unwrap();
        let resp = route.clone().call(req).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-routed"], "yes");
        let seen = seen.lock().unwrap();
        let (uri, d) = &seen[0];
        assert_eq!(
            uri, "/new/page?q=1",
            "the rewrite is applied before the stack"
        );
        assert_eq!(d.host, "reviews.default.svc.cluster.local");
        assert_eq!(d.subset.as_deref(), Some("v2"));
        assert_eq!(d.endpoints.len(), 1);
        assert_eq!(d.endpoints[0].key, "10.0.0.2:9080");
        assert_eq!(d.retry.attempts, 4);
        assert!(
            d.retryable,
            "a GET without a body is buffered and retryable"
        );
        assert_eq!(d.timeout, Some(std::time::Duration::from_secs(2)));
    }

    #[tokio::test]
    async fn faults_and_unknown_hosts_never_reach_the_stack() {
        let seen: Seen = Arc::default();
        let route = layer(Arc::clone(&seen));
        let teapot = Request::get("http://reviews:9080/teapot")
            .body(crate::body::empty())
            .unwrap();
        assert_eq!(route.clone().call(teapot).await.status(), 418);
        let unknown = Request::get("http://nowhere:9080/")
            .body(crate::body::empty())
            .unwrap();
        let resp = route.clone().call(unknown).await;
        assert_eq!(resp.status(), 503);
        assert!(seen.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_failed_attempt_is_answered_with_the_endpoint_it_tried() {
        let store = test_store(MESH);
        let next = tower::service_fn(|req: Request<BoxBody>| async move {
            let p = super::super::planned(&req)?;
            Err::<Response<BoxBody>, _>(Failed {
                error: MeshError::UpstreamConnect {
                    endpoint: p.endpoints[0].key.clone(),
                    why: "refused".into(),
                },
                failure: Some(mesh_core::retry::Failure::ConnectFailure),
                tried: Some(Tried {
                    endpoint: p.endpoints[0].clone(),
                    mtls: true,
                }),
            })
        });
        let route = Route::new(
            next,
            store,
            RouterConfig::for_workload("default", "client"),
            Arc::new(TrafficState::default()),
            Arc::new(SeededRandom::new(7)),
        );
        let req = Request::get("http://reviews:9080/")
            .body(crate::body::empty())
            .unwrap();
        let resp = route.call(req).await;
        assert_eq!(resp.status(), 503);
        let info = resp.extensions().get::<DestinationInfo>().expect("info");
        assert_eq!(info.upstream.as_deref(), Some("10.0.0.1:9080"));
    }
}
