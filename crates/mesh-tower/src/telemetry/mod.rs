//! Telemetry: Istio's standard metrics, an access log, and trace context
//! propagation, as one tower layer.
//!
//! [`TelemetryLayer`] measures every request with Istio's metric names and
//! labels (`istio_requests_total`, `istio_request_duration_milliseconds`,
//! `istio_request_bytes`, `istio_response_bytes`; see [`metrics`]), so
//! Istio's dashboards work unchanged on a [`Registry`] scraped through
//! [`MetricsService`]. It writes one `tracing` event per request with target
//! [`ACCESS_LOG_TARGET`] (`mesh::access`), and carries W3C and B3 trace
//! context from the request a service handles to the calls it makes (see
//! [`trace`]). [`TcpTelemetry`] gives the sidecar's L4 proxy the `istio_tcp_*`
//! metrics.
//!
//! The layer is configured with the local workload and the side it reports
//! for; the other side comes from request extensions:
//!
//! - inbound (`reporter="destination"`): the caller from
//!   [`PeerIdentity`](crate::tls::PeerIdentity) (or a richer [`SourceInfo`]),
//!   the service from the `Host`;
//! - outbound (`reporter="source"`): the service and the workload that
//!   answered from a [`DestinationInfo`] the router puts in the response's
//!   extensions, else the request's host.
//!
//! Anything unknown is `"unknown"`. Label values a client can choose are
//! capped ([`CardinalityLimits`]): past the cap they are reported as
//! `"other"`, so a flood of made-up `Host`s cannot grow the series without
//! bound. A request is recorded once, when its response body has been sent
//! (or dropped early: flag `DC`); a mesh answer's [`MeshError`](crate::error::MeshError)
//! gives `response_flags` (`NR`, `UH`, `UO`, `UF`, `UT`, `FI`, `RBAC`...).
//!
//! # Examples
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! use mesh_tower::telemetry::{MetricsService, Registry, TelemetryLayer, WorkloadInfo, trace};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! let registry = Registry::new();
//! let me = WorkloadInfo::new("reviews-v1", "shop").with_version("v1");
//! let service = ServiceBuilder::new()
//!     .layer(TelemetryLayer::inbound(registry.clone(), me))
//!     .service_fn(|_req: http::Request<_>| async {
//!         // The request's trace is current here; outbound calls carry it.
//!         assert!(trace::current().is_some());
//!         Ok::<_, std::convert::Infallible>(http::Response::new(mesh_tower::body::full("ok")))
//!     });
//! let req = http::Request::get("http://reviews/").body(mesh_tower::body::empty())?;
//! let resp = service.oneshot(req).await?;
//! drop(resp); // a body with nothing left to send: recorded
//!
//! let text = registry.render();
//! assert!(text.contains(r#"destination_workload="reviews-v1""#));
//! assert!(text.contains(r#"response_code="200""#));
//!
//! // The admin listener serves it at /stats/prometheus.
//! let scrape = MetricsService::new(registry);
//! # let _ = scrape;
//! # Ok(()) }
//! ```
//!
//! Outbound, the same layer in front of the router measures calls as
//! `reporter="source"` and sends the handler's trace along:
//!
//! ```no_run
//! # fn build(store: std::sync::Arc<mesh_core::store::Store>, registry: mesh_tower::telemetry::Registry) {
//! use mesh_tower::telemetry::{TelemetryLayer, WorkloadInfo};
//! use mesh_tower::traffic::{Router, RouterConfig};
//!
//! let me = WorkloadInfo::new("productpage-v1", "shop").with_version("v1");
//! let router = Router::new(store, RouterConfig::for_workload("shop", "productpage-v1"), None);
//! let client = tower::ServiceBuilder::new()
//!     .layer(TelemetryLayer::outbound(registry, me))
//!     .service(router);
//! # fn is_service<S: tower::Service<http::Request<mesh_tower::body::BoxBody>>>(_: &S) {}
//! # is_service(&client); }
//! ```

mod admin;
mod custom;
pub mod exchange;
mod labels;
mod layer;
pub mod metrics;
mod registry;
mod settings;
mod tcp;
pub mod trace;

pub use admin::{MetricsService, PROMETHEUS_CONTENT_TYPE};
pub use labels::{
    DestinationInfo, PEER_HEADER, PeerMemo, Reporter, SourceInfo, WorkloadInfo, inbound_labels,
    source_from_peer,
};
pub use layer::{
    ACCESS_LOG_TARGET, RequestBody, ResponseBody, ResponseFuture, Telemetry, TelemetryLayer,
};
pub use registry::{CardinalityLimits, Registry};
pub use settings::TelemetrySettings;
pub use tcp::{MeteredStream, TcpConnection, TcpTelemetry};
pub use trace::{Propagate, PropagateLayer, TraceContext};
