//! A small metrics registry of our own, rendered in Prometheus text format.
//!
//! Why not `metrics` + `metrics-exporter-prometheus`: every HTTP request
//! records four metrics with the same sixteen labels. Through the `metrics`
//! facade that is four `Key`s built from owned label strings, four hashed
//! lookups in the exporter's registry, and a process-global recorder that
//! tests (and two meshes in one process) would have to share. Here the four
//! metrics of one label set live in one series found by one lookup with
//! borrowed `&str`s (no allocation when the series exists), the index is read
//! lock-free through `arc-swap` (writers, which only add a series or admit a
//! label value, take a mutex and publish a new index), and the numbers are
//! plain atomics. The cardinality caps need to see every label value before a
//! series exists, which is also simplest in a registry we own. It is about
//! 300 lines, and the text format is small and stable.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use foldhash::fast::RandomState;

use super::custom::{self, Custom, Data, MetricId, family_names, label_text};

use super::metrics::{
    BYTES_BUCKETS, DURATION_BUCKETS_MS, HTTP_LABEL_COUNT, HTTP_LABELS, MetricDef, MetricKind,
    OTHER, REQUEST_BYTES, REQUEST_DURATION, REQUEST_MESSAGES, REQUESTS_TOTAL, RESPONSE_BYTES,
    RESPONSE_MESSAGES, TCP_CLOSED, TCP_LABEL_COUNT, TCP_LABELS, TCP_OPENED, TCP_RECEIVED_BYTES,
    TCP_SENT_BYTES, UNCAPPED,
};

/// Where `request_protocol` is in [`HTTP_LABELS`].
const GRPC_PROTOCOL_LABEL: usize = 20;

/// Bounds on the number of series, so that label values a client controls
/// (the Host it sends, a peer's identity) cannot grow memory and scrapes
/// without limit.
///
/// Each capped label (all but `reporter`, `request_protocol`,
/// `response_flags` and `connection_security_policy`, whose values the mesh
/// chooses) admits its first `per_label` distinct values; later new values
/// are reported as `other`. Past `max_series` series per metric group, new
/// label sets are folded into one series whose capped labels are all
/// `other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CardinalityLimits {
    /// Distinct values admitted per capped label.
    pub per_label: usize,
    /// Series per metric group (HTTP, TCP) before folding into `other`.
    pub max_series: usize,
}

impl Default for CardinalityLimits {
    fn default() -> Self {
        Self {
            per_label: 100,
            max_series: 10_000,
        }
    }
}

/// A histogram with fixed bounds. The sum is kept in integer units
/// (microseconds, bytes) so that it can be a plain atomic add.
#[derive(Debug)]
pub(crate) struct Histogram {
    bounds: &'static [f64],
    /// Units per rendered unit (1000 for microseconds rendered as ms).
    scale: f64,
    /// Per bucket, not cumulative; the last one is `+Inf`.
    buckets: Box<[AtomicU64]>,
    sum: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    pub(crate) fn new(bounds: &'static [f64], scale: f64) -> Self {
        Self {
            bounds,
            scale,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    pub(crate) fn observe(&self, units: u64) {
        let value = units as f64 / self.scale;
        let i = self.bounds.partition_point(|b| *b < value);
        if let Some(b) = self.buckets.get(i) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        self.sum.fetch_add(units, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (bound, n) in self.bounds.iter().zip(self.buckets.iter()) {
            cumulative += n.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
        }
        if let Some(inf) = self.buckets.last() {
            cumulative += inf.load(Ordering::Relaxed);
        }
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {cumulative}");
        let sum = self.sum.load(Ordering::Relaxed) as f64 / self.scale;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {cumulative}");
    }
}

/// The four HTTP metrics of one label set.
#[derive(Debug)]
pub(crate) struct HttpData {
    requests: AtomicU64,
    request_messages: AtomicU64,
    response_messages: AtomicU64,
    duration: Histogram,
    request_bytes: Histogram,
    response_bytes: Histogram,
}

impl Default for HttpData {
    fn default() -> Self {
        Self {
            requests: AtomicU64::new(0),
            request_messages: AtomicU64::new(0),
            response_messages: AtomicU64::new(0),
            duration: Histogram::new(&DURATION_BUCKETS_MS, 1000.0),
            request_bytes: Histogram::new(&BYTES_BUCKETS, 1.0),
            response_bytes: Histogram::new(&BYTES_BUCKETS, 1.0),
        }
    }
}

/// The four TCP metrics of one label set.
#[derive(Debug, Default)]
pub(crate) struct TcpData {
    pub(crate) sent: AtomicU64,
    pub(crate) received: AtomicU64,
    pub(crate) opened: AtomicU64,
    pub(crate) closed: AtomicU64,
}

/// One label set and its numbers.
#[derive(Debug)]
pub(crate) struct Series<S> {
    labels: Box<[Arc<str>]>,
    pub(crate) data: S,
}

type SeriesMap<S> = foldhash::HashMap<u64, Vec<Arc<Series<S>>>>;

#[derive(Debug)]
struct Index<S> {
    /// Admitted values per label (empty for uncapped labels).
    admitted: Vec<Arc<HashSet<Arc<str>>>>,
    series: Arc<SeriesMap<S>>,
    len: usize,
}

impl<S> Clone for Index<S> {
    fn clone(&self) -> Self {
        Self {
            admitted: self.admitted.clone(),
            series: self.series.clone(),
            len: self.len,
        }
    }
}

/// The series of one metric group, keyed by `N` label values.
#[derive(Debug)]
struct Family<S, const N: usize> {
    names: &'static [&'static str; N],
    capped: [bool; N],
    limits: CardinalityLimits,
    hasher: RandomState,
    index: ArcSwap<Index<S>>,
    write: Mutex<()>,
}

impl<S: Default, const N: usize> Family<S, N> {
    fn new(names: &'static [&'static str; N], limits: CardinalityLimits) -> Self {
        Self {
            names,
            capped: names.map(|n| !UNCAPPED.contains(&n)),
            limits,
            hasher: RandomState::default(),
            index: ArcSwap::from_pointee(Index {
                admitted: (0..N).map(|_| Arc::default()).collect(),
                series: Arc::default(),
                len: 0,
            }),
            write: Mutex::new(()),
        }
    }

    fn hash(&self, values: &[&str; N]) -> u64 {
        self.hasher.hash_one(values)
    }

    fn find(map: &SeriesMap<S>, hash: u64, values: &[&str; N]) -> Option<Arc<Series<S>>> {
        map.get(&hash)?
            .iter()
            .find(|s| s.labels.iter().map(|l| &**l).eq(values.iter().copied()))
            .cloned()
    }

    /// The series for these label values (after capping). Lock-free when
    /// the series exists or a value is over its cap.
    fn get(&self, values: [&str; N]) -> Arc<Series<S>> {
        {
            let index = self.index.load();
            // The common case, a label set seen before: one hash, no cap
            // checks. (Its values were admitted when it was created, and
            // admitted values stay admitted, so capping would not change
            // them.)
            if let Some(s) = Self::find(&index.series, self.hash(&values), &values) {
                return s;
            }
            let mut capped = values;
            let mut admit = false;
            for (i, v) in capped.iter_mut().enumerate() {
                let Some(set) = index.admitted.get(i).filter(|_| self.capped[i]) else {
                    continue;
                };
                if set.contains(*v) {
                    continue;
                }
                if set.len() < self.limits.per_label {
                    admit = true;
                } else {
                    *v = OTHER;
                }
            }
            if !admit {
                if let Some(s) = Self::find(&index.series, self.hash(&capped), &capped) {
                    return s;
                }
            }
        }
        self.insert(values)
    }

    fn insert(&self, values: [&str; N]) -> Arc<Series<S>> {
        // Writers only: a poisoned lock guards no data (the index is
        // published whole), so carry on.
        let _guard = self.write.lock().unwrap_or_else(PoisonError::into_inner);
        let mut index = Index::clone(&self.index.load());
        let mut capped = values;
        for (i, v) in capped.iter_mut().enumerate() {
            if !self.capped[i] {
                continue;
            }
            let Some(set) = index.admitted.get_mut(i) else {
                continue;
            };
            if set.contains(*v) {
                continue;
            }
            if set.len() < self.limits.per_label {
                Arc::make_mut(set).insert(Arc::from(*v));
            } else {
                *v = OTHER;
            }
        }
        if index.len >= self.limits.max_series
            && Self::find(&index.series, self.hash(&capped), &capped).is_none()
        {
            for (i, v) in capped.iter_mut().enumerate() {
                if self.capped[i] {
                    *v = OTHER;
                }
            }
        }
        let hash = self.hash(&capped);
        let series = match Self::find(&index.series, hash, &capped) {
            Some(s) => s,
            None => {
                let s = Arc::new(Series {
                    labels: capped.iter().map(|v| Arc::from(*v)).collect(),
                    data: S::default(),
                });
                Arc::make_mut(&mut index.series)
                    .entry(hash)
                    .or_default()
                    .push(s.clone());
                index.len += 1;
                s
            }
        };
        self.index.store(Arc::new(index));
        series
    }

    /// All series, ordered by their labels (so scrapes are stable).
    fn all(&self) -> Vec<Arc<Series<S>>> {
        let index = self.index.load();
        let mut all: Vec<_> = index.series.values().flatten().cloned().collect();
        all.sort_by(|a, b| a.labels.cmp(&b.labels));
        all
    }

    fn len(&self) -> usize {
        self.index.load().len
    }

    /// `name="value",...` for a series, escaped for the text format.
    fn label_text(&self, s: &Series<S>) -> String {
        let mut out = String::new();
        for (name, value) in self.names.iter().zip(s.labels.iter()) {
            if !out.is_empty() {
                out.push(',');
            }
            let _ = write!(out, "{name}=\"");
            for c in value.chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    '"' => out.push_str("\\\""),
                    '\n' => out.push_str("\\n"),
                    c => out.push(c),
                }
            }
            out.push('"');
        }
        out
    }
}

#[derive(Debug)]
struct Inner {
    http: Family<HttpData, HTTP_LABEL_COUNT>,
    tcp: Family<TcpData, TCP_LABEL_COUNT>,
    custom: Custom,
}

/// Istio's standard metrics for one process, rendered with
/// [`render`](Self::render) in Prometheus text format. Cheap to clone;
/// clones share the numbers.
#[derive(Debug, Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl Registry {
    /// A registry with the default [`CardinalityLimits`].
    pub fn new() -> Self {
        Self::with_limits(CardinalityLimits::default())
    }

    /// A registry with these limits.
    pub fn with_limits(limits: CardinalityLimits) -> Self {
        Self {
            inner: Arc::new(Inner {
                http: Family::new(&HTTP_LABELS, limits),
                tcp: Family::new(&TCP_LABELS, limits),
                custom: Custom::new(limits),
            }),
        }
    }

    /// How many label sets exist (HTTP and TCP together).
    pub fn series_count(&self) -> usize {
        self.inner.http.len() + self.inner.tcp.len() + self.inner.custom.len()
    }

    /// The series of one metric whose labels a Telemetry changed.
    pub(crate) fn custom_series(
        &self,
        metric: MetricId,
        labels: &[(&str, &str)],
    ) -> Arc<custom::Series> {
        let make = match metric {
            metric_ids::REQUEST_DURATION => {
                || Data::Histogram(Histogram::new(&DURATION_BUCKETS_MS, 1000.0))
            }
            metric_ids::REQUEST_SIZE | metric_ids::RESPONSE_SIZE => {
                || Data::Histogram(Histogram::new(&BYTES_BUCKETS, 1.0))
            }
            _ => || Data::Counter(AtomicU64::new(0)),
        };
        self.inner.custom.get(metric, labels, make)
    }

    pub(crate) fn record_http(
        &self,
        labels: [&str; HTTP_LABEL_COUNT],
        duration: Duration,
        request_bytes: u64,
        response_bytes: u64,
        grpc_messages: Option<(u64, u64)>,
    ) {
        let s = self.inner.http.get(labels);
        s.data.requests.fetch_add(1, Ordering::Relaxed);
        if let Some((sent, received)) = grpc_messages {
            s.data.request_messages.fetch_add(sent, Ordering::Relaxed);
            s.data
                .response_messages
                .fetch_add(received, Ordering::Relaxed);
        }
        let micros = u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
        s.data.duration.observe(micros);
        s.data.request_bytes.observe(request_bytes);
        s.data.response_bytes.observe(response_bytes);
    }

    pub(crate) fn tcp_series(&self, labels: [&str; TCP_LABEL_COUNT]) -> Arc<Series<TcpData>> {
        self.inner.tcp.get(labels)
    }

    /// All metrics in Prometheus text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        let custom = &self.inner.custom;
        let http = self.inner.http.all();
        // Istio counts messages of gRPC requests only.
        let grpc = |s: &Series<HttpData>| {
            s.labels
                .get(GRPC_PROTOCOL_LABEL)
                .is_some_and(|p| &**p == "grpc")
        };
        let grpc_http: Vec<Arc<Series<HttpData>>> =
            http.iter().filter(|s| grpc(s)).cloned().collect();
        let counters: [CounterRow<'_>; 3] = [
            (&REQUESTS_TOTAL, metric_ids::REQUEST_COUNT, &http, |d| {
                &d.requests
            }),
            (
                &REQUEST_MESSAGES,
                metric_ids::GRPC_REQUEST_MESSAGES,
                &grpc_http,
                |d| &d.request_messages,
            ),
            (
                &RESPONSE_MESSAGES,
                metric_ids::GRPC_RESPONSE_MESSAGES,
                &grpc_http,
                |d| &d.response_messages,
            ),
        ];
        for (def, id, series, pick) in counters {
            let extra = custom.of(id);
            header(&mut out, def);
            let names = family_names(&HTTP_LABELS, !series.is_empty(), &extra);
            for s in series {
                let l = std_text(&self.inner.http, s, &names, extra.is_empty());
                let n = pick(&s.data).load(Ordering::Relaxed);
                let _ = writeln!(out, "{}{{{l}}} {n}", def.name);
            }
            custom_lines(&mut out, def, &names, &extra);
        }
        let histograms: [HistogramRow; 3] = [
            (&REQUEST_DURATION, metric_ids::REQUEST_DURATION, |d| {
                &d.duration
            }),
            (&REQUEST_BYTES, metric_ids::REQUEST_SIZE, |d| {
                &d.request_bytes
            }),
            (&RESPONSE_BYTES, metric_ids::RESPONSE_SIZE, |d| {
                &d.response_bytes
            }),
        ];
        for (def, id, pick) in histograms {
            let extra = custom.of(id);
            header(&mut out, def);
            let names = family_names(&HTTP_LABELS, !http.is_empty(), &extra);
            for s in &http {
                let l = std_text(&self.inner.http, s, &names, extra.is_empty());
                pick(&s.data).render(&mut out, def.name, &l);
            }
            custom_lines(&mut out, def, &names, &extra);
        }
        let tcp = self.inner.tcp.all();
        let tcp_metrics: [TcpRow; 4] = [
            (&TCP_SENT_BYTES, metric_ids::TCP_SENT_BYTES, |d| &d.sent),
            (&TCP_RECEIVED_BYTES, metric_ids::TCP_RECEIVED_BYTES, |d| {
                &d.received
            }),
            (&TCP_OPENED, metric_ids::TCP_OPENED, |d| &d.opened),
            (&TCP_CLOSED, metric_ids::TCP_CLOSED, |d| &d.closed),
        ];
        for (def, id, pick) in tcp_metrics {
            let extra = custom.of(id);
            header(&mut out, def);
            let names = family_names(&TCP_LABELS, !tcp.is_empty(), &extra);
            for s in &tcp {
                let l = std_text(&self.inner.tcp, s, &names, extra.is_empty());
                let n = pick(&s.data).load(Ordering::Relaxed);
                let _ = writeln!(out, "{}{{{l}}} {n}", def.name);
            }
            custom_lines(&mut out, def, &names, &extra);
        }
        out
    }
}

/// An HTTP counter family: its definition, its metric, its series and
/// where its number is.
type CounterRow<'a> = (
    &'static MetricDef,
    MetricId,
    &'a [Arc<Series<HttpData>>],
    fn(&HttpData) -> &AtomicU64,
);
/// An HTTP histogram family.
type HistogramRow = (&'static MetricDef, MetricId, fn(&HttpData) -> &Histogram);
/// A TCP counter family.
type TcpRow = (&'static MetricDef, MetricId, fn(&TcpData) -> &AtomicU64);

/// The label text of a standard series: its own names, or, beside custom
/// series, the family's names (those it lacks empty).
fn std_text<S: Default, const N: usize>(
    family: &Family<S, N>,
    s: &Series<S>,
    names: &[Arc<str>],
    alone: bool,
) -> String {
    if alone {
        return family.label_text(s);
    }
    label_text(names, |n| {
        family
            .names
            .iter()
            .position(|x| *x == n)
            .and_then(|i| s.labels.get(i))
            .map(|v| &**v)
    })
}

fn custom_lines(
    out: &mut String,
    def: &MetricDef,
    names: &[Arc<str>],
    series: &[Arc<custom::Series>],
) {
    for s in series {
        let l = label_text(names, |n| {
            s.labels
                .iter()
                .find(|(name, _)| &**name == n)
                .map(|(_, v)| &**v)
        });
        match &s.data {
            Data::Counter(c) => {
                let _ = writeln!(out, "{}{{{l}}} {}", def.name, c.load(Ordering::Relaxed));
            }
            Data::Histogram(h) => h.render(out, def.name, &l),
        }
    }
}

/// The positions in [`mesh_core::telemetry::METRICS`].
pub(crate) mod metric_ids {
    pub(crate) const REQUEST_COUNT: usize = 0;
    pub(crate) const REQUEST_DURATION: usize = 1;
    pub(crate) const REQUEST_SIZE: usize = 2;
    pub(crate) const RESPONSE_SIZE: usize = 3;
    pub(crate) const TCP_OPENED: usize = 4;
    pub(crate) const TCP_CLOSED: usize = 5;
    pub(crate) const TCP_SENT_BYTES: usize = 6;
    pub(crate) const TCP_RECEIVED_BYTES: usize = 7;
    pub(crate) const GRPC_REQUEST_MESSAGES: usize = 8;
    pub(crate) const GRPC_RESPONSE_MESSAGES: usize = 9;
}

fn header(out: &mut String, def: &MetricDef) {
    let kind = match def.kind {
        MetricKind::Counter => "counter",
        MetricKind::Histogram => "histogram",
    };
    let _ = writeln!(out, "# HELP {} {}", def.name, def.help);
    let _ = writeln!(out, "# TYPE {} {kind}", def.name);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(service: &str, code: &str) -> [&'static str; HTTP_LABEL_COUNT] {
        let s: &'static str = Box::leak(service.to_owned().into_boxed_str());
        let c: &'static str = Box::leak(code.to_owned().into_boxed_str());
        [
            "destination",
            "a",
            "ns",
            "p",
            "a",
            "v1",
            "a",
            "v1",
            "Kubernetes",
            "b",
            "ns",
            "q",
            "b",
            "v1",
            "b",
            "v1",
            "Kubernetes",
            s,
            s,
            "ns",
            "http",
            c,
            "",
            "-",
            "none",
        ]
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_le_inclusive() {
        let h = Histogram::new(&DURATION_BUCKETS_MS, 1000.0);
        h.observe(500); // 0.5 ms: in le="0.5"
        h.observe(1_500); // 1.5 ms: le="5"
        h.observe(4_000_000_000); // past the last bound
        let mut out = String::new();
        h.render(&mut out, "x", "a=\"b\"");
        assert!(out.contains("x_bucket{a=\"b\",le=\"0.5\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"1\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"5\"} 2\n"), "{out}");
        assert!(
            out.contains("x_bucket{a=\"b\",le=\"3600000\"} 2\n"),
            "{out}"
        );
        assert!(out.contains("x_bucket{a=\"b\",le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("x_sum{a=\"b\"} 4000002"), "{out}");
        assert!(out.contains("x_count{a=\"b\"} 3\n"), "{out}");
    }

    #[test]
    fn per_label_cap_folds_new_values_into_other() {
        let r = Registry::with_limits(CardinalityLimits {
            per_label: 3,
            max_series: 1000,
        });
        for i in 0..50 {
            r.record_http(labels(&format!("h{i}"), "200"), Duration::ZERO, 0, 0, None);
        }
        // h0..h2 and `other`.
        assert_eq!(r.series_count(), 4);
        let text = r.render();
        assert!(text.contains("destination_service=\"other\""), "{text}");
        assert!(text.contains("destination_service=\"h2\""), "{text}");
        assert!(!text.contains("destination_service=\"h3\""), "{text}");
    }

    #[test]
    fn max_series_folds_new_label_sets() {
        let r = Registry::with_limits(CardinalityLimits {
            per_label: 1000,
            max_series: 5,
        });
        for i in 0..50 {
            r.record_http(labels(&format!("h{i}"), "200"), Duration::ZERO, 0, 0, None);
        }
        assert_eq!(r.series_count(), 6);
        // Existing series keep counting.
        r.record_http(labels("h0", "200"), Duration::ZERO, 0, 0, None);
        assert_eq!(r.series_count(), 6);
        assert!(r.render().contains("destination_service=\"h0\""));
    }

    #[test]
    fn concurrent_recording_loses_nothing() {
        let r = Registry::new();
        let names: Vec<String> = (0..50).map(|i| format!("svc{i}")).collect();
        std::thread::scope(|scope| {
            for t in 0..8 {
                let (r, names) = (&r, &names);
                scope.spawn(move || {
                    for i in 0..1000 {
                        let n = &names[(i * 7 + t) % names.len()];
                        r.record_http(labels(n, "200"), Duration::from_millis(1), 1, 2, None);
                    }
                });
            }
        });
        assert_eq!(r.series_count(), 50);
        let total: u64 = r
            .render()
            .lines()
            .filter(|l| l.starts_with("istio_requests_total{"))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum();
        assert_eq!(total, 8000);
    }

    #[test]
    fn label_values_are_escaped() {
        let r = Registry::new();
        r.record_http(labels("a\"b\\c\nd", "200"), Duration::ZERO, 0, 0, None);
        assert!(
            r.render()
                .contains("destination_service=\"a\\\"b\\\\c\\nd\"")
        );
    }
}

#[cfg(test)]
mod metric_id_tests {
    use mesh_core::resources::telemetry::IstioMetric;
    use mesh_core::telemetry::METRICS;

    use super::metric_ids::*;

    #[test]
    fn metric_ids_are_the_positions_in_mesh_cores_list() {
        for (id, m) in [
            (REQUEST_COUNT, IstioMetric::RequestCount),
            (REQUEST_DURATION, IstioMetric::RequestDuration),
            (REQUEST_SIZE, IstioMetric::RequestSize),
            (RESPONSE_SIZE, IstioMetric::ResponseSize),
            (TCP_OPENED, IstioMetric::TcpOpenedConnections),
            (TCP_CLOSED, IstioMetric::TcpClosedConnections),
            (TCP_SENT_BYTES, IstioMetric::TcpSentBytes),
            (TCP_RECEIVED_BYTES, IstioMetric::TcpReceivedBytes),
            (GRPC_REQUEST_MESSAGES, IstioMetric::GrpcRequestMessages),
            (GRPC_RESPONSE_MESSAGES, IstioMetric::GrpcResponseMessages),
        ] {
            assert_eq!(METRICS[id], m);
        }
    }
}
