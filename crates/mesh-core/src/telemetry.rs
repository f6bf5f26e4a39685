//! The Telemetry API (`telemetry.istio.io` Telemetry) compiled into what
//! the data plane applies per workload and side: which metrics are
//! reported and with which tags, whether and which requests are
//! access-logged, and the sampling of traces the proxy starts.
//!
//! Scoping and merging are Istio's (`pilot/pkg/model/telemetry.go`,
//! `applicableTelemetries`, `mergeMetrics`, `mergeLogs`, `Tracing`): the
//! root namespace's selector-less Telemetry, then the workload namespace's
//! selector-less one, then the first of that namespace whose selector (or
//! Gateway `targetRef`) matches the workload, in that order, later levels
//! over earlier ones. Where Istio takes "the oldest" of two at one level,
//! this mesh takes the first read (file order) and `check` warns
//! ([`crate::analyze::codes::TELEMETRY_CONFLICT`]), as it does for
//! Sidecars.
//!
//! Providers are resolved as Istio's `fetchProvider` does, by name in any
//! case, against MeshConfig `extensionProviders` and the two Istio's
//! default MeshConfig defines that this mesh has: `prometheus` (the
//! metrics of `/stats/prometheus`) and `envoy` (the access log, to
//! standard output). A name defined nowhere is skipped, as Istio skips it,
//! and `check` warns ([`crate::analyze::codes::TELEMETRY_PROVIDER`]). A
//! provider of a kind this mesh cannot report to (a metrics provider that
//! is no Prometheus, an access log to another file or in another format)
//! is refused by name.

use std::collections::HashMap;
use std::sync::Arc;

use crate::cel::Expr;
use crate::error::ConfigError;
use crate::meshconfig::{MeshConfig, ProviderKind};
use crate::resources::common::Labels;
use crate::resources::telemetry::{
    AccessLogging, IstioMetric, MetricSelector, Metrics, ProviderRef, TagOperation, Telemetry,
    Tracing, WorkloadMode,
};
use crate::resources::{Item, ResourceRef, Resources};

/// The metrics a setting covers, in the order of [`IstioMetric`] without
/// `ALL_METRICS`.
pub const METRICS: [IstioMetric; 10] = [
    IstioMetric::RequestCount,
    IstioMetric::RequestDuration,
    IstioMetric::RequestSize,
    IstioMetric::ResponseSize,
    IstioMetric::TcpOpenedConnections,
    IstioMetric::TcpClosedConnections,
    IstioMetric::TcpSentBytes,
    IstioMetric::TcpReceivedBytes,
    IstioMetric::GrpcRequestMessages,
    IstioMetric::GrpcResponseMessages,
];

/// The position of `m` in [`METRICS`] (`None` for `ALL_METRICS`).
pub fn metric_index(m: IstioMetric) -> Option<usize> {
    METRICS.iter().position(|x| *x == m)
}

/// A `customMetric` naming one of the standard metrics by the name Istio's
/// stats filter gives it (what `MetricSelector.metric` becomes in Istio's
/// stats configuration: `requests_total`...). Any other name is a metric
/// of the stats filter's `definitions`, which the Telemetry API cannot
/// create.
fn custom_metric(name: &str) -> Option<IstioMetric> {
    Some(match name {
        "requests_total" => IstioMetric::RequestCount,
        "request_duration_milliseconds" => IstioMetric::RequestDuration,
        "request_bytes" => IstioMetric::RequestSize,
        "response_bytes" => IstioMetric::ResponseSize,
        "tcp_connections_opened_total" => IstioMetric::TcpOpenedConnections,
        "tcp_connections_closed_total" => IstioMetric::TcpClosedConnections,
        "tcp_sent_bytes_total" => IstioMetric::TcpSentBytes,
        "tcp_received_bytes_total" => IstioMetric::TcpReceivedBytes,
        "request_messages_total" => IstioMetric::GrpcRequestMessages,
        "response_messages_total" => IstioMetric::GrpcResponseMessages,
        _ => return None,
    })
}

/// What a tag override does.
#[derive(Debug, Clone)]
pub enum TagAction {
    /// The tag is dropped.
    Remove,
    /// The tag is set to the expression's value (`unknown` where it cannot
    /// be evaluated).
    Upsert(Arc<Expr>),
}

/// One metric's setting for a workload and side.
#[derive(Debug, Clone, Default)]
pub struct MetricSetting {
    /// Not reported.
    pub disabled: bool,
    /// Tag overrides, by tag name in name order.
    pub tags: Vec<(String, TagAction)>,
}

/// The access log of one side.
#[derive(Debug, Clone)]
pub enum AccessLog {
    /// No Telemetry says anything: the mesh's default, one line per
    /// request.
    Default,
    /// One line per provider in force, each written where its filter (if
    /// any) holds; none: no access log.
    Providers(Vec<Option<Arc<Expr>>>),
}

/// What applies to one side (CLIENT: outbound and gateways; SERVER:
/// inbound) of a workload.
#[derive(Debug, Clone)]
pub struct SideTelemetry {
    /// Metrics are reported at all (the Prometheus provider is in force
    /// and `ALL_METRICS` is not disabled).
    pub metrics: bool,
    /// Per metric, in the order of [`METRICS`].
    pub metric: [MetricSetting; 10],
    /// The access log.
    pub access_log: AccessLog,
    /// The share of the traces this proxy starts that are sampled, in
    /// percent; `None`: every one (the mesh's default).
    pub sampling: Option<f64>,
    /// Decide sampling from `x-request-id`, so all proxies of a request
    /// decide alike (Istio's default).
    pub sample_by_request_id: bool,
}

impl Default for SideTelemetry {
    fn default() -> Self {
        Self {
            metrics: true,
            metric: Default::default(),
            access_log: AccessLog::Default,
            sampling: None,
            sample_by_request_id: true,
        }
    }
}

impl SideTelemetry {
    /// Whether any metric's tags or reporting differ from the standard.
    pub fn overrides_metrics(&self) -> bool {
        !self.metrics || self.metric.iter().any(|m| m.disabled || !m.tags.is_empty())
    }

    /// The setting of metric `m`.
    pub fn of(&self, m: IstioMetric) -> &MetricSetting {
        static NONE: MetricSetting = MetricSetting {
            disabled: false,
            tags: Vec::new(),
        };
        metric_index(m).map_or(&NONE, |i| &self.metric[i])
    }

    /// Whether metric `m` is reported.
    pub fn reports(&self, m: IstioMetric) -> bool {
        self.metrics && !self.of(m).disabled
    }
}

/// Both sides of a workload, and the Telemetries that made them.
#[derive(Debug, Clone, Default)]
pub struct WorkloadTelemetry {
    /// CLIENT: outbound calls and gateways.
    pub client: SideTelemetry,
    /// SERVER: inbound requests.
    pub server: SideTelemetry,
    /// Root, namespace and workload Telemetries in force, in that order.
    pub sources: Vec<Arc<ResourceRef>>,
}

/// Which side of a workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Calls it makes, and a gateway's requests.
    Client,
    /// Requests it answers.
    Server,
}

impl WorkloadTelemetry {
    /// The side's setting.
    pub fn side(&self, side: Side) -> &SideTelemetry {
        match side {
            Side::Client => &self.client,
            Side::Server => &self.server,
        }
    }
}

/// The compiled Telemetries: per workload of the snapshot that a workload
/// Telemetry selects, per namespace that has one, and the mesh's.
#[derive(Debug, Clone, Default)]
pub struct TelemetryTable {
    mesh: Arc<WorkloadTelemetry>,
    namespaces: HashMap<String, Arc<WorkloadTelemetry>>,
    /// By the key of the [`crate::resources::ResourceRef`] of a workload
    /// (`namespace/name`)... keyed as [`crate::snapshot::Workload::key`].
    workloads: HashMap<String, Arc<WorkloadTelemetry>>,
    /// Selector (or targetRef) Telemetries by namespace, for workloads the
    /// snapshot does not list.
    selecting: HashMap<String, Vec<(Labels, Arc<WorkloadTelemetry>)>>,
}

impl TelemetryTable {
    /// What applies to a workload of `namespace` with `labels`: resolved
    /// when the snapshot was compiled. `workload_key` finds a workload of
    /// the snapshot; without one, the labels choose.
    pub fn for_workload(
        &self,
        namespace: &str,
        workload_key: Option<&str>,
        labels: Option<&Labels>,
    ) -> &Arc<WorkloadTelemetry> {
        if let Some(t) = workload_key.and_then(|k| self.workloads.get(k)) {
            return t;
        }
        if let Some(labels) = labels {
            if let Some((_, t)) = self
                .selecting
                .get(namespace)
                .into_iter()
                .flatten()
                .find(|(sel, _)| crate::resources::common::labels_match(sel, labels))
            {
                return t;
            }
        }
        self.namespaces.get(namespace).unwrap_or(&self.mesh)
    }

    /// Whether no Telemetry is in force anywhere.
    pub fn is_empty(&self) -> bool {
        self.mesh.sources.is_empty() && self.namespaces.is_empty() && self.selecting.is_empty()
    }
}

/// The labels a Telemetry selects workloads by: `selector`, or a Gateway
/// `targetRef(s)` (the Gateway API's gateway-name label); `None`: the
/// whole namespace.
pub fn selector_of(t: &Telemetry) -> Option<Labels> {
    if let Some(sel) = t.selector.as_ref().filter(|s| !s.match_labels.is_empty()) {
        return Some(sel.match_labels.clone());
    }
    t.target_ref
        .iter()
        .chain(&t.target_refs)
        .find(|r| r.kind == "Gateway")
        .map(|r| {
            Labels::from([(
                "gateway.networking.k8s.io/gateway-name".to_owned(),
                r.name.clone(),
            )])
        })
}

/// How a provider name resolves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Provider {
    /// Prometheus: the metrics this mesh serves.
    Prometheus,
    /// The access log to standard output.
    StdoutLog,
    /// An access log to a file other than standard output, or with a
    /// format of its own: refused.
    FileLog {
        /// The path.
        path: String,
        /// Its `logFormat`.
        format: Option<String>,
    },
    /// Defined, of another kind (`zipkin`, `opentelemetry`...).
    Other(String),
    /// Defined nowhere: skipped, as Istio skips it.
    Undefined,
}

/// Resolves a provider name as Istio's `fetchProvider` does: MeshConfig
/// `extensionProviders` by name in any case, then the providers of Istio's
/// default MeshConfig (`prometheus`, `envoy`: standard output).
pub fn provider(mesh: &MeshConfig, name: &str) -> Provider {
    if let Some(p) = mesh
        .extension_providers
        .iter()
        .find(|p| p.name.eq_ignore_ascii_case(name))
    {
        return match &p.kind {
            ProviderKind::Prometheus => Provider::Prometheus,
            ProviderKind::EnvoyFileAccessLog { path, log_format } => {
                if path == "/dev/stdout" && log_format.is_none() {
                    Provider::StdoutLog
                } else {
                    Provider::FileLog {
                        path: path.clone(),
                        format: log_format.clone(),
                    }
                }
            }
            ProviderKind::Other { field, .. } => Provider::Other(field.clone()),
        };
    }
    if name.eq_ignore_ascii_case("prometheus") {
        Provider::Prometheus
    } else if name.eq_ignore_ascii_case("envoy") {
        Provider::StdoutLog
    } else {
        Provider::Undefined
    }
}

fn err(t: &Item<Telemetry>, field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::at(&t.source.origin, Some(t.source.to_string()), field, message)
}

fn providers_named(
    t: &Item<Telemetry>,
    f: &str,
    providers: &[ProviderRef],
    out: &mut Vec<ConfigError>,
) {
    for (i, p) in providers.iter().enumerate() {
        if p.name.is_empty() {
            // Istio's CRD: "name in body should be at least 1 chars long".
            out.push(err(
                t,
                format!("{f}.providers[{i}].name"),
                "must not be empty",
            ));
        }
    }
}

/// Validates one Telemetry as far as it does not need the MeshConfig: the
/// checks of Istio's CRD and `ValidateTelemetry`, and what this mesh
/// refuses by name.
pub fn validate(t: &Item<Telemetry>, mesh: &MeshConfig) -> Vec<ConfigError> {
    let mut out = Vec::new();
    let s = &t.spec;
    let has_selector = s
        .selector
        .as_ref()
        .is_some_and(|x| !x.match_labels.is_empty());
    let refs: Vec<_> = s.target_ref.iter().chain(&s.target_refs).collect();
    if has_selector && !refs.is_empty() {
        out.push(err(
            t,
            "spec.targetRef",
            "only one of selector, targetRef and targetRefs may be set",
        ));
    }
    if s.target_ref.is_some() && !s.target_refs.is_empty() {
        out.push(err(
            t,
            "spec.targetRefs",
            "only one of targetRef and targetRefs may be set",
        ));
    }
    if refs.len() > 1 {
        out.push(err(
            t,
            "spec.targetRefs",
            "more than one target is not read; write one Telemetry per Gateway",
        ));
    }
    for r in &refs {
        let field = if s.target_ref.is_some() {
            "spec.targetRef"
        } else {
            "spec.targetRefs[0]"
        };
        if r.kind != "Gateway" || r.group != "gateway.networking.k8s.io" {
            out.push(err(
                t,
                format!("{field}.kind"),
                format!(
                    "a {}{} target is not read: only a Gateway (gateway.networking.k8s.io) is; Service and ServiceEntry targets are waypoints (ambient), which this mesh does not run",
                    if r.group.is_empty() { String::new() } else { format!("{}/", r.group) },
                    r.kind
                ),
            ));
        }
        if r.namespace.as_deref().is_some_and(|n| n != t.namespace()) {
            out.push(err(
                t,
                format!("{field}.namespace"),
                "a target must be in the Telemetry's namespace",
            ));
        }
        if r.name.is_empty() {
            out.push(err(t, format!("{field}.name"), "is required"));
        }
    }
    for (i, m) in s.metrics.iter().enumerate() {
        metrics(t, &format!("spec.metrics[{i}]"), m, mesh, &mut out);
    }
    for (i, l) in s.access_logging.iter().enumerate() {
        access_logging(t, &format!("spec.accessLogging[{i}]"), l, mesh, &mut out);
    }
    for (i, tr) in s.tracing.iter().enumerate() {
        let f = format!("spec.tracing[{i}]");
        providers_named(t, &f, &tr.providers, &mut out);
        if let Some(p) = tr.random_sampling_percentage {
            if !(0.0..=100.0).contains(&p) || p.is_nan() {
                out.push(err(
                    t,
                    format!("{f}.randomSamplingPercentage"),
                    format!("{p} is not between 0 and 100"),
                ));
            }
        }
    }
    out
}

fn metrics(
    t: &Item<Telemetry>,
    f: &str,
    m: &Metrics,
    mesh: &MeshConfig,
    out: &mut Vec<ConfigError>,
) {
    providers_named(t, f, &m.providers, out);
    for (i, p) in m.providers.iter().enumerate() {
        match provider(mesh, &p.name) {
            Provider::Prometheus | Provider::Undefined => {}
            Provider::StdoutLog | Provider::FileLog { .. } => out.push(err(
                t,
                format!("{f}.providers[{i}].name"),
                format!(
                    "`{}` is an access-log provider; this mesh reports metrics to Prometheus only",
                    p.name
                ),
            )),
            Provider::Other(kind) => out.push(err(
                t,
                format!("{f}.providers[{i}].name"),
                format!(
                    "`{}` is a {kind} provider; this mesh reports metrics to Prometheus only (its /stats/prometheus)",
                    p.name
                ),
            )),
        }
    }
    if let Some(d) = m.reporting_interval {
        if d.0.is_zero() {
            out.push(err(
                t,
                format!("{f}.reportingInterval"),
                "must be more than 0",
            ));
        }
        // Istio applies it to the periodic reports of long TCP
        // connections (the stats filter's `tcp_reporting_duration`, 15 s
        // by default): Envoy's TCP metrics are only updated at those
        // reports. This mesh's TCP counters are added to as bytes pass and
        // are read at each scrape, so every interval is met already.
    }
    for (i, o) in m.overrides.iter().enumerate() {
        let f = format!("{f}.overrides[{i}]");
        if let Some(sel) = &o.match_ {
            match (&sel.metric, &sel.custom_metric) {
                (Some(_), Some(_)) => out.push(err(
                    t,
                    format!("{f}.match"),
                    "only one of metric and customMetric may be set",
                )),
                (_, Some(c)) if c.is_empty() => out.push(err(
                    t,
                    format!("{f}.match.customMetric"),
                    "must not be empty",
                )),
                _ => {}
            }
        }
        for (name, tag) in &o.tag_overrides {
            let tf = format!("{f}.tagOverrides.{name}");
            if name.is_empty() {
                out.push(err(t, tf.clone(), "a tag needs a name"));
            }
            match (tag.operation, &tag.value) {
                (TagOperation::Upsert, None) => out.push(err(
                    t,
                    format!("{tf}.value"),
                    "value must be set when operation is UPSERT",
                )),
                (TagOperation::Remove, Some(_)) => out.push(err(
                    t,
                    format!("{tf}.value"),
                    "value must not be set when operation is REMOVE",
                )),
                (TagOperation::Upsert, Some(v)) => {
                    if let Err(e) = Expr::parse(v) {
                        out.push(err(t, format!("{tf}.value"), e));
                    }
                }
                (TagOperation::Remove, None) => {}
            }
        }
    }
}

fn access_logging(
    t: &Item<Telemetry>,
    f: &str,
    l: &AccessLogging,
    mesh: &MeshConfig,
    out: &mut Vec<ConfigError>,
) {
    providers_named(t, f, &l.providers, out);
    for (i, p) in l.providers.iter().enumerate() {
        let field = format!("{f}.providers[{i}].name");
        match provider(mesh, &p.name) {
            Provider::StdoutLog | Provider::Undefined | Provider::Prometheus => {}
            Provider::FileLog { path, format } => {
                if path != "/dev/stdout" {
                    out.push(err(
                        t,
                        field,
                        format!(
                            "provider `{}` writes to `{path}`: this mesh writes its access log to the proxy's standard output (the `mesh::access` log) only; use path /dev/stdout",
                            p.name
                        ),
                    ));
                } else if format.is_some() {
                    out.push(err(
                        t,
                        field,
                        format!(
                            "provider `{}` sets envoyFileAccessLog.logFormat: this mesh's access-log lines have one format of their own",
                            p.name
                        ),
                    ));
                }
            }
            Provider::Other(kind) => out.push(err(
                t,
                field,
                format!(
                    "`{}` is a {kind} provider; this mesh writes access logs to the proxy's standard output only (an envoyFileAccessLog to /dev/stdout, or `envoy`)",
                    p.name
                ),
            )),
        }
    }
    if let Some(filter) = &l.filter {
        if let Err(e) = Expr::parse(&filter.expression) {
            out.push(err(t, format!("{f}.filter.expression"), e));
        }
    }
}

/// The Telemetries in force for a workload, in Istio's order: the root
/// namespace's selector-less one, the namespace's selector-less one, the
/// first selecting the workload.
fn applicable<'r>(
    r: &'r Resources,
    namespace: &str,
    labels: Option<&Labels>,
) -> Vec<&'r Item<Telemetry>> {
    let root = r.mesh.root_namespace.as_str();
    let wide = |ns: &str| {
        r.telemetries
            .iter()
            .find(|t| t.namespace() == ns && selector_of(&t.spec).is_none())
    };
    let mut out = Vec::new();
    out.extend(wide(root));
    if namespace != root {
        out.extend(wide(namespace));
    }
    if let Some(labels) = labels {
        out.extend(r.telemetries.iter().find(|t| {
            t.namespace() == namespace
                && selector_of(&t.spec)
                    .is_some_and(|s| crate::resources::common::labels_match(&s, labels))
        }));
    }
    out
}

fn modes(m: WorkloadMode) -> &'static [Side] {
    match m {
        WorkloadMode::Client => &[Side::Client],
        WorkloadMode::Server => &[Side::Server],
        WorkloadMode::ClientAndServer => &[Side::Client, Side::Server],
    }
}

fn names(p: &[ProviderRef]) -> Vec<String> {
    p.iter().map(|p| p.name.clone()).collect()
}

/// Istio's `mergeMetrics` for the Prometheus provider. The default
/// providers are Istio's default MeshConfig's (`prometheus`).
fn merge_metrics(chain: &[&Item<Telemetry>], mesh: &MeshConfig, w: &mut WorkloadTelemetry) {
    let entries: Vec<&Metrics> = chain.iter().flat_map(|t| &t.spec.metrics).collect();
    let default = vec!["prometheus".to_owned()];
    // The providers in force: the last entry that names any.
    let mut in_scope = default.clone();
    for m in &entries {
        if !m.providers.is_empty() {
            in_scope = names(&m.providers);
        }
    }
    let is_prom = |n: &String| provider(mesh, n) == Provider::Prometheus;
    let prometheus_in_scope = in_scope.iter().any(is_prom);
    let mut parent = default;
    let mut disabled_all = false;
    for m in &entries {
        let mine = if m.providers.is_empty() {
            parent.clone()
        } else {
            names(&m.providers)
        };
        parent.clone_from(&mine);
        if !mine.iter().any(|n| is_prom(n) && in_scope.contains(n)) {
            continue;
        }
        for o in &m.overrides {
            let sel = o.match_.clone().unwrap_or_default();
            let all = sel.custom_metric.is_none()
                && matches!(sel.metric, None | Some(IstioMetric::AllMetrics));
            if all && o.disabled == Some(true) {
                disabled_all = true;
                continue;
            }
            // "root namespace disables all, but then enables them by
            // namespace scoped"
            disabled_all = false;
            for side in modes(sel.mode) {
                let s = match side {
                    Side::Client => &mut w.client,
                    Side::Server => &mut w.server,
                };
                for i in matched(&sel) {
                    let setting = &mut s.metric[i];
                    if let Some(d) = o.disabled {
                        setting.disabled = d;
                    }
                    for (name, tag) in &o.tag_overrides {
                        let action = match (tag.operation, &tag.value) {
                            (TagOperation::Upsert, Some(v)) => match Expr::parse(v) {
                                Ok(e) => TagAction::Upsert(Arc::new(e)),
                                // Refused by `validate`.
                                Err(_) => continue,
                            },
                            _ => TagAction::Remove,
                        };
                        match setting.tags.iter_mut().find(|(n, _)| n == name) {
                            Some(slot) => slot.1 = action,
                            None => setting.tags.push((name.clone(), action)),
                        }
                    }
                    setting.tags.sort_by(|a, b| a.0.cmp(&b.0));
                }
            }
        }
    }
    let on = prometheus_in_scope && !disabled_all;
    w.client.metrics = on;
    w.server.metrics = on;
}

fn matched(sel: &MetricSelector) -> Vec<usize> {
    if let Some(c) = &sel.custom_metric {
        return custom_metric(c)
            .and_then(metric_index)
            .into_iter()
            .collect();
    }
    match sel.metric {
        None | Some(IstioMetric::AllMetrics) => (0..METRICS.len()).collect(),
        Some(m) => metric_index(m).into_iter().collect(),
    }
}

/// Istio's `mergeLogs` for one side: the providers in force (the last
/// level that names any, else the entries' parents), each with the filter
/// of the last entry naming it; a disabled entry removes its providers.
fn merge_logs(chain: &[&Item<Telemetry>], mesh: &MeshConfig, side: Side) -> AccessLog {
    let levels: Vec<&Vec<AccessLogging>> = chain
        .iter()
        .map(|t| &t.spec.access_logging)
        .filter(|l| !l.is_empty())
        .collect();
    if levels.is_empty() {
        return AccessLog::Default;
    }
    // Istio's default MeshConfig has no default access-log providers.
    let mut in_scope: Vec<String> = Vec::new();
    let mut filters: HashMap<String, Option<String>> = HashMap::new();
    for level in &levels {
        let mut level_names = Vec::new();
        for l in level.iter() {
            for n in names(&l.providers) {
                filters.insert(n.clone(), l.filter.as_ref().map(|f| f.expression.clone()));
                level_names.push(n);
            }
        }
        if !level_names.is_empty() {
            in_scope = level_names;
        }
    }
    let mut providers: Vec<(String, Option<String>)> = Vec::new();
    let mut parent: Vec<String> = Vec::new();
    for level in &levels {
        for l in level.iter() {
            let mine = if l.providers.is_empty() {
                parent.clone()
            } else {
                names(&l.providers)
            };
            parent.clone_from(&mine);
            let applies = l.match_.is_none_or(|m| modes(m.mode).contains(&side));
            for p in mine {
                if !in_scope.contains(&p) || !applies {
                    continue;
                }
                providers.retain(|(n, _)| *n != p);
                if l.disabled != Some(true) {
                    let f = filters.get(&p).cloned().flatten();
                    providers.push((p, f));
                }
            }
        }
    }
    providers.sort_by(|a, b| a.0.cmp(&b.0));
    AccessLog::Providers(
        providers
            .into_iter()
            // Providers that write no access log here (undefined ones,
            // Prometheus) are skipped, as Istio's `AccessLogging` skips
            // them; refused kinds never get here.
            .filter(|(n, _)| provider(mesh, n) == Provider::StdoutLog)
            .map(|(_, f)| f.and_then(|f| Expr::parse(&f).ok()).map(Arc::new))
            .collect(),
    )
}

/// Istio's `Tracing`: later entries over earlier ones, field by field.
fn merge_tracing(chain: &[&Item<Telemetry>], w: &mut WorkloadTelemetry) {
    for tr in chain.iter().flat_map(|t| &t.spec.tracing) {
        let sides = modes(tr.match_.map(|m| m.mode).unwrap_or_default());
        for side in sides {
            let s = match side {
                Side::Client => &mut w.client,
                Side::Server => &mut w.server,
            };
            if let Some(p) = tr.random_sampling_percentage {
                s.sampling = Some(p);
            }
            if let Some(b) = tr.use_request_id_for_trace_sampling {
                s.sample_by_request_id = b;
            }
        }
    }
}

fn resolve(r: &Resources, chain: &[&Item<Telemetry>]) -> WorkloadTelemetry {
    let mut w = WorkloadTelemetry {
        sources: chain.iter().map(|t| Arc::new(t.source.clone())).collect(),
        ..WorkloadTelemetry::default()
    };
    merge_metrics(chain, &r.mesh, &mut w);
    w.client.access_log = merge_logs(chain, &r.mesh, Side::Client);
    w.server.access_log = merge_logs(chain, &r.mesh, Side::Server);
    merge_tracing(chain, &mut w);
    w
}

/// Compiles the Telemetries of `r` for the workloads `workloads` (key,
/// namespace, labels).
pub fn compile<'w>(
    r: &Resources,
    workloads: impl IntoIterator<Item = (&'w str, &'w str, &'w Labels)>,
) -> TelemetryTable {
    let mut table = TelemetryTable::default();
    if r.telemetries.is_empty() {
        return table;
    }
    let root = r.mesh.root_namespace.as_str();
    table.mesh = Arc::new(resolve(r, &applicable(r, root, None)));
    let mut namespaces: Vec<&str> = r.telemetries.iter().map(|t| t.namespace()).collect();
    namespaces.sort_unstable();
    namespaces.dedup();
    for ns in namespaces {
        if ns != root {
            let chain = applicable(r, ns, None);
            if chain.iter().any(|t| t.namespace() == ns) {
                table
                    .namespaces
                    .insert(ns.to_owned(), Arc::new(resolve(r, &chain)));
            }
        }
        for t in r.telemetries.iter().filter(|t| t.namespace() == ns) {
            if let Some(sel) = selector_of(&t.spec) {
                let mut chain = applicable(r, ns, None);
                chain.push(t);
                table
                    .selecting
                    .entry(ns.to_owned())
                    .or_default()
                    .push((sel, Arc::new(resolve(r, &chain))));
            }
        }
    }
    for (key, ns, labels) in workloads {
        let chain = applicable(r, ns, Some(labels));
        if chain.last().is_some_and(|t| selector_of(&t.spec).is_some()) {
            table
                .workloads
                .insert(key.to_owned(), Arc::new(resolve(r, &chain)));
        }
    }
    table
}

/// Something `check` says of a Telemetry: the field and what it means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// The Telemetry.
    pub source: ResourceRef,
    /// The field, `spec.tracing[0].providers[0].name`.
    pub field: String,
    /// What it means.
    pub message: String,
}

/// What `check` warns of in the Telemetries of `r`: providers defined
/// nowhere (skipped, as Istio skips them), tracing settings that need span
/// export, `customMetric` names no metric here has.
pub fn notes(r: &Resources) -> Vec<Note> {
    let mut out = Vec::new();
    for t in &r.telemetries {
        let mut note = |field: String, message: String| {
            out.push(Note {
                source: t.source.clone(),
                field,
                message,
            });
        };
        let undefined = |field: &str,
                         p: &[ProviderRef],
                         what: &str,
                         note: &mut dyn FnMut(String, String)| {
            for (i, pr) in p.iter().enumerate() {
                if provider(&r.mesh, &pr.name) == Provider::Undefined && !pr.name.is_empty() {
                    note(
                        format!("{field}.providers[{i}].name"),
                        format!(
                            "provider `{}` is not defined in MeshConfig extensionProviders (nor one of Istio's default `prometheus` and `envoy`): skipped, as Istio skips it; {what}",
                            pr.name
                        ),
                    );
                }
            }
        };
        for (i, m) in t.spec.metrics.iter().enumerate() {
            let f = format!("spec.metrics[{i}]");
            undefined(
                &f,
                &m.providers,
                "where no Prometheus provider is in force, no metrics are reported",
                &mut note,
            );
            for (j, o) in m.overrides.iter().enumerate() {
                if let Some(c) = o.match_.as_ref().and_then(|s| s.custom_metric.as_ref()) {
                    if custom_metric(c).is_none() && !c.is_empty() {
                        note(
                            format!("{f}.overrides[{j}].match.customMetric"),
                            format!(
                                "`{c}` names no metric this mesh reports (it has requests_total, request_duration_milliseconds, request_bytes, response_bytes, request_messages_total, response_messages_total and the tcp_* metrics; Istio's other metrics come from stats `definitions`, which a Telemetry cannot write): the override changes nothing"
                            ),
                        );
                    }
                }
            }
        }
        for (i, l) in t.spec.access_logging.iter().enumerate() {
            let f = format!("spec.accessLogging[{i}]");
            undefined(
                &f,
                &l.providers,
                "where no access-log provider is in force, no access log is written",
                &mut note,
            );
            for (j, p) in l.providers.iter().enumerate() {
                if provider(&r.mesh, &p.name) == Provider::Prometheus {
                    note(
                        format!("{f}.providers[{j}].name"),
                        format!(
                            "`{}` is a metrics provider and writes no access log: skipped, as Istio skips it",
                            p.name
                        ),
                    );
                }
            }
        }
        for (i, tr) in t.spec.tracing.iter().enumerate() {
            let f = format!("spec.tracing[{i}]");
            tracing_notes(&f, tr, &mut note);
        }
    }
    out
}

/// This mesh propagates trace context and decides sampling, but exports no
/// spans: what is about spans alone has no effect. Warned of rather than
/// refused: Istio itself reports no spans for a provider it cannot fetch,
/// and trace propagation and sampling, which this mesh does, are unchanged
/// by these fields.
fn tracing_notes(f: &str, tr: &Tracing, note: &mut dyn FnMut(String, String)) {
    let why = "no spans are reported: this mesh propagates trace context (W3C, B3) and decides sampling, but exports no spans";
    for (i, p) in tr.providers.iter().enumerate() {
        note(
            format!("{f}.providers[{i}].name"),
            format!("{why}, so provider `{}` receives none", p.name),
        );
    }
    if !tr.custom_tags.is_empty() {
        let tags: Vec<&str> = tr.custom_tags.keys().map(String::as_str).collect();
        note(
            format!("{f}.customTags"),
            format!("{why}, so custom tags ({}) are on no span", tags.join(", ")),
        );
    }
    if tr.disable_span_reporting == Some(false) {
        note(
            format!("{f}.disableSpanReporting"),
            format!("{why}, whatever this says"),
        );
    }
    if tr.enable_istio_tags.is_some() {
        note(
            format!("{f}.enableIstioTags"),
            format!("{why}, so Istio's span tags are on none"),
        );
    }
}

/// Two Telemetries at one level: two without a selector in a namespace, or
/// two selecting one workload. Istio takes the oldest; this mesh the first
/// read. `(first, second, workload keys)`; no keys for namespace-wide ones.
pub fn conflicts<'w>(
    r: &Resources,
    workloads: impl IntoIterator<Item = (&'w str, &'w str, &'w Labels)>,
) -> Vec<(ResourceRef, ResourceRef, Vec<String>)> {
    let mut out = Vec::new();
    let mut wide: HashMap<&str, &Item<Telemetry>> = HashMap::new();
    for t in &r.telemetries {
        if selector_of(&t.spec).is_none() {
            if let Some(first) = wide.get(t.namespace()) {
                out.push((first.source.clone(), t.source.clone(), Vec::new()));
            } else {
                wide.insert(t.namespace(), t);
            }
        }
    }
    let mut pairs: Vec<((usize, usize), Vec<String>)> = Vec::new();
    for (key, ns, labels) in workloads {
        let selecting: Vec<usize> = r
            .telemetries
            .iter()
            .enumerate()
            .filter(|(_, t)| {
                t.namespace() == ns
                    && selector_of(&t.spec)
                        .is_some_and(|s| crate::resources::common::labels_match(&s, labels))
            })
            .map(|(i, _)| i)
            .collect();
        if let [a, b, ..] = selecting[..] {
            match pairs.iter_mut().find(|(p, _)| *p == (a, b)) {
                Some((_, keys)) => keys.push(key.to_owned()),
                None => pairs.push(((a, b), vec![key.to_owned()])),
            }
        }
    }
    for ((a, b), keys) in pairs {
        out.push((
            r.telemetries[a].source.clone(),
            r.telemetries[b].source.clone(),
            keys,
        ));
    }
    out
}
