#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Trace context through a real handler: a request with W3C or B3 context
//! reaches a service behind the inbound telemetry layer; its handler calls a
//! downstream server through the outbound layer, with no tracing code of its
//! own; the downstream server sees the same trace with a new parent span.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use mesh_tower::telemetry::{
    PropagateLayer, Registry, RequestBody, TelemetryLayer, TraceContext, WorkloadInfo, trace,
};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tower::{ServiceBuilder, ServiceExt};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A plaintext hyper server on 127.0.0.1:0; dropping it stops it.
struct Server {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve<S, B>(svc: S) -> Server
where
    S: tower::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let svc = TowerToHyperService::new(svc.clone());
            tokio::spawn(async move {
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    Server { addr, task }
}

/// A downstream server that remembers the headers it was sent.
async fn downstream() -> (Server, Arc<Mutex<Vec<HeaderMap>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let server = serve(tower::service_fn(move |req: Request<Incoming>| {
        log.lock().unwrap().push(req.headers().clone());
        async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok")))) }
    }))
    .await;
    (server, seen)
}

/// The service under test: inbound telemetry around a handler that calls
/// `downstream` through `outbound` and says which span it ran in. The
/// handler has no tracing code.
async fn frontend<S, B>(registry: Registry, outbound: S, downstream: SocketAddr) -> Server
where
    S: tower::Service<Request<Empty<Bytes>>, Response = Response<B>>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send,
    S::Error: std::fmt::Debug,
    B: http_body::Body + Send,
    B::Data: Send,
    B::Error: std::fmt::Debug,
{
    let handler = move |req: Request<RequestBody<Incoming>>| {
        let outbound = outbound.clone();
        async move {
            let call = Request::get(format!("http://{downstream}/ratings"))
                .body(Empty::new())
                .unwrap();
            let resp = outbound.oneshot(call).await.unwrap();
            assert_eq!(resp.status(), 200);
            resp.into_body().collect().await.unwrap();
            // What the layer made current, for the test to compare.
            let current = trace::current().unwrap();
            assert_eq!(req.extensions().get::<TraceContext>(), Some(&current));
            let answer = Response::builder()
                .header("x-trace-id", current.trace_id_hex())
                .header("x-span-id", format!("{:016x}", current.span_id()))
                .header(
                    "x-parent-span-id",
                    current
                        .parent_span_id()
                        .map_or_else(String::new, |p| format!("{p:016x}")),
                )
                .body(Full::new(Bytes::new()))
                .unwrap();
            Ok::<_, Infallible>(answer)
        }
    };
    serve(
        ServiceBuilder::new()
            .layer(TelemetryLayer::inbound(
                registry,
                WorkloadInfo::new("productpage-v1", "default"),
            ))
            .service_fn(handler),
    )
    .await
}

/// Calls `server` with `headers`; returns the server span's
/// (trace id, span id, parent span id) as the handler reported them.
async fn call(server: &Server, headers: &[(&str, &str)]) -> (String, String, String) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let mut req = Request::get(format!("http://{}/productpage", server.addr));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client
        .request(req.body(Empty::new()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let h = resp.headers();
    let get = |k: &str| h[k].to_str().unwrap().to_owned();
    (get("x-trace-id"), get("x-span-id"), get("x-parent-span-id"))
}

fn telemetry_client(
    registry: &Registry,
) -> mesh_tower::telemetry::Telemetry<Client<HttpConnector, RequestBody<Empty<Bytes>>>> {
    ServiceBuilder::new()
        .layer(TelemetryLayer::outbound(
            registry.clone(),
            WorkloadInfo::new("productpage-v1", "default"),
        ))
        .service(Client::builder(TokioExecutor::new()).build_http())
}

fn header(h: &HeaderMap, k: &str) -> String {
    h.get(k)
        .unwrap_or_else(|| panic!("no {k} in {h:?}"))
        .to_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn w3c_traceparent_flows_from_inbound_to_outbound() {
    let (down, seen) = downstream().await;
    let registry = Registry::new();
    let front = frontend(registry.clone(), telemetry_client(&registry), down.addr).await;

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let (t, server_span, parent) = call(
        &front,
        &[
            ("traceparent", &format!("00-{trace_id}-{caller_span}-01")),
            ("tracestate", "congo=t61rcWkgMzE"),
        ],
    )
    .await;
    // The handler ran in a server span, child of the caller's.
    assert_eq!(t, trace_id);
    assert_eq!(parent, caller_span);
    assert_ne!(server_span, caller_span);

    // Downstream: same trace, a new span whose parent is the server span.
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    let tp = header(&seen[0], "traceparent");
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts[0], "00");
    assert_eq!(parts[1], trace_id);
    assert_ne!(parts[2], caller_span, "a different parent span");
    assert_ne!(parts[2], server_span);
    assert_eq!(parts[3], "01");
    assert_eq!(header(&seen[0], "tracestate"), "congo=t61rcWkgMzE");
    // The same context in B3 for Zipkin-speaking downstreams.
    assert_eq!(header(&seen[0], "x-b3-traceid"), trace_id);
    assert_eq!(header(&seen[0], "x-b3-spanid"), parts[2]);
    assert_eq!(header(&seen[0], "x-b3-parentspanid"), server_span);

    // Both sides were measured.
    let text = registry.render();
    assert!(text.contains("istio_requests_total{reporter=\"destination\""));
    assert!(text.contains("istio_requests_total{reporter=\"source\""));
}

#[tokio::test]
async fn b3_headers_flow_from_inbound_to_outbound() {
    let (down, seen) = downstream().await;
    let registry = Registry::new();
    let front = frontend(registry.clone(), telemetry_client(&registry), down.addr).await;

    // 64-bit B3 trace ID, multi-header form.
    let (t, server_span, parent) = call(
        &front,
        &[
            ("x-b3-traceid", "463ac35c9f6413ad"),
            ("x-b3-spanid", "a2fb4a1d1a96d312"),
            ("x-b3-sampled", "1"),
        ],
    )
    .await;
    assert_eq!(t, "0000000000000000463ac35c9f6413ad");
    assert_eq!(parent, "a2fb4a1d1a96d312");
    let h = seen.lock().unwrap().pop().unwrap();
    assert_eq!(header(&h, "x-b3-traceid"), "463ac35c9f6413ad");
    let span = header(&h, "x-b3-spanid");
    assert_ne!(span, "a2fb4a1d1a96d312", "a different parent span");
    assert_ne!(span, server_span);
    assert_eq!(header(&h, "x-b3-parentspanid"), server_span);
    assert_eq!(header(&h, "x-b3-sampled"), "1");
    assert_eq!(
        header(&h, "traceparent"),
        format!("00-0000000000000000463ac35c9f6413ad-{span}-01")
    );
}

#[tokio::test]
async fn b3_single_header_flows_through_the_propagate_layer() {
    let (down, seen) = downstream().await;
    let registry = Registry::new();
    // Outbound without metrics: only the propagation layer.
    let outbound = ServiceBuilder::new()
        .layer(PropagateLayer::new())
        .service(Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>());
    let front = frontend(registry, outbound, down.addr).await;

    let trace_id = "80f198ee56343ba864fe8b2a57d3eff7";
    let (t, server_span, parent) =
        call(&front, &[("b3", &format!("{trace_id}-e457b5a2e4d86bd1-1"))]).await;
    assert_eq!(t, trace_id);
    assert_eq!(parent, "e457b5a2e4d86bd1");
    let h = seen.lock().unwrap().pop().unwrap();
    let b3 = header(&h, "b3");
    let parts: Vec<&str> = b3.split('-').collect();
    assert_eq!(parts.len(), 4, "{b3}");
    assert_eq!(parts[0], trace_id);
    assert_ne!(parts[1], "e457b5a2e4d86bd1", "a different parent span");
    assert_eq!(parts[2], "1");
    assert_eq!(parts[3], server_span);
}

#[tokio::test]
async fn without_context_a_trace_starts_at_the_inbound_side() {
    let (down, seen) = downstream().await;
    let registry = Registry::new();
    let front = frontend(registry.clone(), telemetry_client(&registry), down.addr).await;
    let (t, server_span, parent) = call(&front, &[]).await;
    assert_eq!(parent, "", "a root span");
    let h = seen.lock().unwrap().pop().unwrap();
    assert_eq!(header(&h, "x-b3-traceid"), t);
    assert_eq!(header(&h, "x-b3-parentspanid"), server_span);
    // A context the handler set itself is left alone.
    let explicit = "00-11111111111111111111111111111111-2222222222222222-00";
    let req = Request::get(format!("http://{}/", down.addr))
        .header("traceparent", explicit)
        .body(Empty::new())
        .unwrap();
    telemetry_client(&registry).oneshot(req).await.unwrap();
    let h = seen.lock().unwrap().pop().unwrap();
    assert_eq!(header(&h, "traceparent"), explicit);
}
