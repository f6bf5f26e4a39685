//! Series whose labels a Telemetry changed (`tagOverrides`): one metric
//! each, with the label names the override gives, in a family of their own
//! beside the standard ones (which keep their fast path, one lookup for the
//! four HTTP metrics of a label set).
//!
//! Reads are lock-free (the index is published whole through `arc-swap`);
//! a new series or label value takes the write mutex, as the standard
//! families do. Label values are capped the same way: past `per_label`
//! distinct values of a label (by name) new ones are `other`, past
//! `max_series` series of a metric new ones fold into one whose capped
//! labels are all `other`.
//!
//! How a workload's series render beside the standard ones: every series of
//! a metric family is written with the same label names (Prometheus reads
//! a family more reliably so, and Istio's dashboards group by label): the
//! union of the names of its series, standard ones first in their order,
//! added ones after by name, a name a series does not have written empty
//! (which Prometheus takes for no label at all).

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;
use foldhash::fast::RandomState;

use super::metrics::{OTHER, UNCAPPED};
use super::registry::{CardinalityLimits, Histogram};

/// Which metric a custom series is of: the index in
/// [`mesh_core::telemetry::METRICS`].
pub(crate) type MetricId = usize;

/// The numbers of one custom series.
#[derive(Debug)]
pub(crate) enum Data {
    Counter(AtomicU64),
    Histogram(Histogram),
}

impl Data {
    pub(crate) fn add(&self, n: u64) {
        match self {
            Self::Counter(c) => {
                c.fetch_add(n, Ordering::Relaxed);
            }
            Self::Histogram(h) => h.observe(n),
        }
    }
}

/// One custom series.
#[derive(Debug)]
pub(crate) struct Series {
    pub(crate) metric: MetricId,
    /// `(name, value)`, in render order.
    pub(crate) labels: Box<[(Arc<str>, Arc<str>)]>,
    pub(crate) data: Data,
}

#[derive(Debug, Clone, Default)]
struct Index {
    admitted: HashMap<Arc<str>, Arc<HashSet<Arc<str>>>>,
    series: Arc<HashMap<u64, Vec<Arc<Series>>>>,
    per_metric: HashMap<MetricId, usize>,
}

/// The custom series of a registry.
#[derive(Debug)]
pub(crate) struct Custom {
    limits: CardinalityLimits,
    hasher: RandomState,
    index: ArcSwap<Index>,
    write: Mutex<()>,
}

fn capped(name: &str) -> bool {
    !UNCAPPED.contains(&name)
}

impl Custom {
    pub(crate) fn new(limits: CardinalityLimits) -> Self {
        Self {
            limits,
            hasher: RandomState::default(),
            index: ArcSwap::from_pointee(Index::default()),
            write: Mutex::new(()),
        }
    }

    fn hash(&self, metric: MetricId, labels: &[(&str, &str)]) -> u64 {
        self.hasher.hash_one((metric, labels))
    }

    fn find(
        index: &Index,
        hash: u64,
        metric: MetricId,
        labels: &[(&str, &str)],
    ) -> Option<Arc<Series>> {
        index
            .series
            .get(&hash)?
            .iter()
            .find(|s| {
                s.metric == metric
                    && s.labels.len() == labels.len()
                    && s.labels
                        .iter()
                        .zip(labels)
                        .all(|((n, v), (m, w))| &**n == *m && &**v == *w)
            })
            .cloned()
    }

    /// The series of `metric` with these labels (after capping), made with
    /// `make` if new.
    pub(crate) fn get(
        &self,
        metric: MetricId,
        labels: &[(&str, &str)],
        make: fn() -> Data,
    ) -> Arc<Series> {
        {
            let index = self.index.load();
            if let Some(s) = Self::find(&index, self.hash(metric, labels), metric, labels) {
                return s;
            }
        }
        let _guard = self.write.lock().unwrap_or_else(PoisonError::into_inner);
        let mut index = Index::clone(&self.index.load());
        let mut values: Vec<(&str, &str)> = labels.to_vec();
        for (name, value) in &mut values {
            if !capped(name) {
                continue;
            }
            let set = index.admitted.entry(Arc::from(*name)).or_default();
            if set.contains(*value) {
                continue;
            }
            if set.len() < self.limits.per_label {
                Arc::make_mut(set).insert(Arc::from(*value));
            } else {
                *value = OTHER;
            }
        }
        let count = index.per_metric.get(&metric).copied().unwrap_or(0);
        if count >= self.limits.max_series
            && Self::find(&index, self.hash(metric, &values), metric, &values).is_none()
        {
            for (name, value) in &mut values {
                if capped(name) {
                    *value = OTHER;
                }
            }
        }
        let hash = self.hash(metric, &values);
        let series = match Self::find(&index, hash, metric, &values) {
            Some(s) => s,
            None => {
                let s = Arc::new(Series {
                    metric,
                    labels: values
                        .iter()
                        .map(|(n, v)| (Arc::from(*n), Arc::from(*v)))
                        .collect(),
                    data: make(),
                });
                Arc::make_mut(&mut index.series)
                    .entry(hash)
                    .or_default()
                    .push(s.clone());
                *index.per_metric.entry(metric).or_default() += 1;
                s
            }
        };
        self.index.store(Arc::new(index));
        series
    }

    /// The series of `metric`, ordered by their labels.
    pub(crate) fn of(&self, metric: MetricId) -> Vec<Arc<Series>> {
        let index = self.index.load();
        let mut out: Vec<Arc<Series>> = index
            .series
            .values()
            .flatten()
            .filter(|s| s.metric == metric)
            .cloned()
            .collect();
        out.sort_by(|a, b| a.labels.cmp(&b.labels));
        out
    }

    pub(crate) fn len(&self) -> usize {
        self.index.load().per_metric.values().sum()
    }
}

/// The label names a family renders with: `standard` (when it has standard
/// series, or custom series keeping them) in their order, then the names
/// the custom series add, by name.
pub(crate) fn family_names(
    standard: &[&'static str],
    has_standard: bool,
    custom: &[Arc<Series>],
) -> Vec<Arc<str>> {
    let mut present: HashSet<&str> = HashSet::new();
    for s in custom {
        for (n, _) in s.labels.iter() {
            present.insert(n);
        }
    }
    let mut out: Vec<Arc<str>> = standard
        .iter()
        .filter(|n| has_standard || present.contains(**n))
        .map(|n| Arc::from(*n))
        .collect();
    let mut added: Vec<&str> = present
        .into_iter()
        .filter(|n| !standard.contains(n))
        .collect();
    added.sort_unstable();
    out.extend(added.into_iter().map(Arc::from));
    out
}

/// `name="value",...` with every name of `names`, a missing one empty.
pub(crate) fn label_text<'a>(names: &[Arc<str>], get: impl Fn(&str) -> Option<&'a str>) -> String {
    let mut out = String::new();
    for name in names {
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(name);
        out.push_str("=\"");
        for c in get(name).unwrap_or("").chars() {
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
