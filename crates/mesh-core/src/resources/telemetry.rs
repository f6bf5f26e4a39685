//! `telemetry.istio.io` Telemetry (`v1alpha1`, `v1`), typed as Istio's
//! `telemetry/v1alpha1/telemetry.proto` defines it. What each field does
//! here, and what is refused, is [`crate::telemetry`]'s.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::common::{Duration, WorkloadSelector};

/// A Telemetry: metrics, access logging and tracing for the workloads it
/// applies to (the mesh from the root namespace without a selector, a
/// namespace without one, else the workloads it selects).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Telemetry {
    /// The workloads it applies to, by label.
    #[serde(default)]
    pub selector: Option<WorkloadSelector>,
    /// A policy target (a Gateway API Gateway).
    #[serde(default)]
    pub target_ref: Option<PolicyTargetRef>,
    /// Policy targets.
    #[serde(default)]
    pub target_refs: Vec<PolicyTargetRef>,
    /// Tracing settings, applied in order.
    #[serde(default)]
    pub tracing: Vec<Tracing>,
    /// Metrics settings, applied in order.
    #[serde(default)]
    pub metrics: Vec<Metrics>,
    /// Access-logging settings, applied in order.
    #[serde(default)]
    pub access_logging: Vec<AccessLogging>,
}

/// Istio's `PolicyTargetReference`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyTargetRef {
    /// The API group (`gateway.networking.k8s.io`).
    #[serde(default)]
    pub group: String,
    /// The kind (`Gateway`, `Service`...).
    #[serde(default)]
    pub kind: String,
    /// The name.
    #[serde(default)]
    pub name: String,
    /// The namespace (must be the Telemetry's own).
    #[serde(default)]
    pub namespace: Option<String>,
}

/// A provider, by the name MeshConfig `extensionProviders` gives it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProviderRef {
    /// The provider's name.
    #[serde(default)]
    pub name: String,
}

/// `CLIENT`, `SERVER` or both: the outbound (`reporter="source"`) or the
/// inbound (`reporter="destination"`) side of a workload's traffic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum WorkloadMode {
    /// Both sides.
    #[default]
    ClientAndServer,
    /// The side that makes calls.
    Client,
    /// The side that answers them.
    Server,
}

/// The mode selector of a tracing or access-logging entry.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ModeSelector {
    /// The mode.
    #[serde(default)]
    pub mode: WorkloadMode,
}

/// One `tracing` entry.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Tracing {
    /// Which side it applies to.
    #[serde(default, rename = "match")]
    pub match_: Option<ModeSelector>,
    /// Where spans go.
    #[serde(default)]
    pub providers: Vec<ProviderRef>,
    /// Tags added to spans.
    #[serde(default)]
    pub custom_tags: BTreeMap<String, serde_json::Value>,
    /// No spans are reported.
    #[serde(default)]
    pub disable_span_reporting: Option<bool>,
    /// The share of new traces that are sampled, 0 to 100.
    #[serde(default)]
    pub random_sampling_percentage: Option<f64>,
    /// Base the sampling decision on `x-request-id`.
    #[serde(default)]
    pub use_request_id_for_trace_sampling: Option<bool>,
    /// Istio's own span tags (`istio.*`).
    #[serde(default)]
    pub enable_istio_tags: Option<bool>,
}

/// One `metrics` entry.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Metrics {
    /// Where metrics go (`prometheus`).
    #[serde(default)]
    pub providers: Vec<ProviderRef>,
    /// Changes to metrics, later ones over earlier ones.
    #[serde(default)]
    pub overrides: Vec<MetricsOverride>,
    /// How often metrics of long connections are reported.
    #[serde(default)]
    pub reporting_interval: Option<Duration>,
}

/// One override: metrics matched, disabled or their tags changed.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MetricsOverride {
    /// Which metrics, and which side; all of both when absent.
    #[serde(default, rename = "match")]
    pub match_: Option<MetricSelector>,
    /// Metrics not reported.
    #[serde(default)]
    pub disabled: Option<bool>,
    /// Tags removed or set, by name.
    #[serde(default)]
    pub tag_overrides: BTreeMap<String, TagOverride>,
}

/// Istio's `MetricSelector`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MetricSelector {
    /// One of Istio's standard metrics.
    #[serde(default)]
    pub metric: Option<IstioMetric>,
    /// A metric by name.
    #[serde(default)]
    pub custom_metric: Option<String>,
    /// Which side.
    #[serde(default)]
    pub mode: WorkloadMode,
}

/// Istio's standard metrics, as `MetricSelector.metric` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[allow(missing_docs)]
pub enum IstioMetric {
    AllMetrics,
    RequestCount,
    RequestDuration,
    RequestSize,
    ResponseSize,
    TcpOpenedConnections,
    TcpClosedConnections,
    TcpSentBytes,
    TcpReceivedBytes,
    GrpcRequestMessages,
    GrpcResponseMessages,
}

/// `UPSERT` (the default) or `REMOVE`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TagOperation {
    /// Set the tag to `value`.
    #[default]
    Upsert,
    /// Drop the tag.
    Remove,
}

/// One tag override.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TagOverride {
    /// What to do.
    #[serde(default)]
    pub operation: TagOperation,
    /// The value, a CEL expression over request attributes.
    #[serde(default)]
    pub value: Option<String>,
}

/// One `accessLogging` entry.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessLogging {
    /// Which side.
    #[serde(default, rename = "match")]
    pub match_: Option<ModeSelector>,
    /// Where lines go.
    #[serde(default)]
    pub providers: Vec<ProviderRef>,
    /// No lines.
    #[serde(default)]
    pub disabled: Option<bool>,
    /// Which requests are logged.
    #[serde(default)]
    pub filter: Option<AccessLogFilter>,
}

/// An access-log filter.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessLogFilter {
    /// A CEL expression: lines are written where it is true.
    #[serde(default)]
    pub expression: String,
}
