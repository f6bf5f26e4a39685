//! Every metric this crate exports, in one place: Istio's standard metric
//! names, help text, label names and histogram buckets, so that Istio's
//! Grafana dashboards and Kiali read them unchanged.

/// How a metric family is rendered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// A monotonic counter.
    Counter,
    /// A histogram with cumulative `le` buckets, `_sum` and `_count`.
    Histogram,
}

/// A metric's name, help text and kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricDef {
    /// The Prometheus name.
    pub name: &'static str,
    /// The `# HELP` text.
    pub help: &'static str,
    /// Counter or histogram.
    pub kind: MetricKind,
}

/// Requests, by Istio's labels.
pub const REQUESTS_TOTAL: MetricDef = MetricDef {
    name: "istio_requests_total",
    help: "Number of requests handled, per source, destination, response code and flags.",
    kind: MetricKind::Counter,
};

/// Request duration, first byte of the request to last byte of the answer.
pub const REQUEST_DURATION: MetricDef = MetricDef {
    name: "istio_request_duration_milliseconds",
    help: "Time from the start of a request to the end of its response, in milliseconds.",
    kind: MetricKind::Histogram,
};

/// Request body sizes.
pub const REQUEST_BYTES: MetricDef = MetricDef {
    name: "istio_request_bytes",
    help: "Size of HTTP request bodies, in bytes.",
    kind: MetricKind::Histogram,
};

/// Response body sizes.
pub const RESPONSE_BYTES: MetricDef = MetricDef {
    name: "istio_response_bytes",
    help: "Size of HTTP response bodies, in bytes.",
    kind: MetricKind::Histogram,
};

/// TCP bytes sent to the downstream side of a connection.
pub const TCP_SENT_BYTES: MetricDef = MetricDef {
    name: "istio_tcp_sent_bytes_total",
    help: "Bytes sent during responses of TCP connections.",
    kind: MetricKind::Counter,
};

/// TCP bytes received from the downstream side of a connection.
pub const TCP_RECEIVED_BYTES: MetricDef = MetricDef {
    name: "istio_tcp_received_bytes_total",
    help: "Bytes received during requests of TCP connections.",
    kind: MetricKind::Counter,
};

/// TCP connections opened.
pub const TCP_OPENED: MetricDef = MetricDef {
    name: "istio_tcp_connections_opened_total",
    help: "TCP connections opened.",
    kind: MetricKind::Counter,
};

/// TCP connections closed.
pub const TCP_CLOSED: MetricDef = MetricDef {
    name: "istio_tcp_connections_closed_total",
    help: "TCP connections closed.",
    kind: MetricKind::Counter,
};

/// gRPC messages sent by clients (gRPC requests only).
pub const REQUEST_MESSAGES: MetricDef = MetricDef {
    name: "istio_request_messages_total",
    help: "Messages sent by gRPC clients.",
    kind: MetricKind::Counter,
};

/// gRPC messages sent by servers (gRPC requests only).
pub const RESPONSE_MESSAGES: MetricDef = MetricDef {
    name: "istio_response_messages_total",
    help: "Messages sent by gRPC servers.",
    kind: MetricKind::Counter,
};

/// The HTTP metrics' labels, in the order they are rendered: Istio's
/// standard set (what its dashboards and Kiali query), all 25.
pub const HTTP_LABELS: [&str; HTTP_LABEL_COUNT] = [
    "reporter",
    "source_workload",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_canonical_service",
    "source_canonical_revision",
    "source_cluster",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_cluster",
    "destination_service",
    "destination_service_name",
    "destination_service_namespace",
    "request_protocol",
    "response_code",
    "grpc_response_status",
    "response_flags",
    "connection_security_policy",
];

/// How many HTTP labels there are.
pub const HTTP_LABEL_COUNT: usize = 25;

/// The TCP metrics' labels: the HTTP ones without `response_code` and
/// `grpc_response_status`, as Istio's TCP metrics have them (23).
pub const TCP_LABELS: [&str; TCP_LABEL_COUNT] = [
    "reporter",
    "source_workload",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_canonical_service",
    "source_canonical_revision",
    "source_cluster",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_cluster",
    "destination_service",
    "destination_service_name",
    "destination_service_namespace",
    "request_protocol",
    "response_flags",
    "connection_security_policy",
];

/// How many TCP labels there are.
pub const TCP_LABEL_COUNT: usize = 23;

/// The cluster a workload of this mesh reports (`source_cluster`,
/// `destination_cluster`) when nothing names another: Istio's default
/// cluster ID.
pub const DEFAULT_CLUSTER: &str = "Kubernetes";

/// Labels whose values come from a small set the mesh itself chooses; every
/// other label is capped (see [`CardinalityLimits`](super::CardinalityLimits)).
pub(crate) const UNCAPPED: [&str; 4] = [
    "reporter",
    "request_protocol",
    "response_flags",
    "connection_security_policy",
];

/// Istio's buckets for `istio_request_duration_milliseconds`: Envoy's
/// default histogram buckets, which Istio's telemetry keeps for all its
/// histograms.
pub const DURATION_BUCKETS_MS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// Buckets for `istio_request_bytes` and `istio_response_bytes`: the same
/// Envoy defaults, as Istio exports them.
pub const BYTES_BUCKETS: [f64; 19] = DURATION_BUCKETS_MS;

/// The value reported for a label whose value is not known.
pub const UNKNOWN: &str = "unknown";

/// The value reported in place of a label value over its cap.
pub const OTHER: &str = "other";
