//! Where the telemetry layers find what the Telemetry API says of their
//! workload: the store's snapshot, resolved once per snapshot (the compile
//! did the merging; a request compares a version and clones an `Arc`).

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use mesh_core::cel::{Attr, Attributes, Value};
use mesh_core::store::Store;
use mesh_core::telemetry::{MetricSetting, TagAction, WorkloadTelemetry};

use super::metrics::UNKNOWN;

/// The Telemetry settings of one workload, read from a [`Store`]:
/// [`TelemetryLayer::with_settings`](super::TelemetryLayer::with_settings).
#[derive(Debug)]
pub struct TelemetrySettings {
    store: Arc<Store>,
    namespace: String,
    name: String,
    cached: ArcSwapOption<(u64, Arc<WorkloadTelemetry>)>,
}

impl TelemetrySettings {
    /// The settings of workload `name` in `namespace`, as the store's
    /// snapshot has them (a workload the snapshot does not list gets its
    /// namespace's, else the mesh's).
    pub fn new(store: Arc<Store>, namespace: &str, name: &str) -> Self {
        Self {
            store,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            cached: ArcSwapOption::empty(),
        }
    }

    /// What applies now: resolved again only when the snapshot changed.
    pub fn current(&self) -> Arc<WorkloadTelemetry> {
        let snap = self.store.load();
        if let Some(c) = &*self.cached.load() {
            if c.0 == snap.version {
                return c.1.clone();
            }
        }
        let t = snap.telemetry_for(&self.namespace, &self.name).clone();
        self.cached.store(Some(Arc::new((snap.version, t.clone()))));
        t
    }
}

/// The labels of one metric after a Telemetry's tag overrides: the
/// standard `names` and `values`, a removed one dropped, an upserted one
/// set in place (or added after) to its expression's value, `unknown`
/// where it cannot be evaluated (an attribute the request lacks, or an
/// identifier that is none, such as Istio's test value `add`: Istio's
/// stats filter reports `unknown` for an expression without a value).
pub(crate) fn apply_tags<'a>(
    names: &[&'a str],
    values: &[&'a str],
    setting: &'a MetricSetting,
    attrs: &dyn Attributes,
) -> Vec<(&'a str, String)> {
    let mut out: Vec<(&str, String)> = names
        .iter()
        .zip(values)
        .map(|(n, v)| (*n, (*v).to_owned()))
        .collect();
    for (name, action) in &setting.tags {
        match action {
            TagAction::Remove => out.retain(|(n, _)| n != name),
            TagAction::Upsert(expr) => {
                let v = expr
                    .eval(attrs)
                    .map_or_else(|_| UNKNOWN.to_owned(), |v| v.to_tag());
                match out.iter_mut().find(|(n, _)| n == name) {
                    Some(slot) => slot.1 = v,
                    None => out.push((name.as_str(), v)),
                }
            }
        }
    }
    out
}

/// What a TCP connection offers an expression: who the peer is and
/// whether it is mTLS (a connection has no request).
pub(crate) struct ConnectionAttrs<'a> {
    pub(crate) principal: &'a str,
    pub(crate) mtls: Option<bool>,
}

impl Attributes for ConnectionAttrs<'_> {
    fn get(&self, attr: &Attr) -> Option<Value> {
        match attr {
            Attr::SourcePrincipal if self.principal != UNKNOWN => {
                Some(Value::Str(self.principal.to_owned()))
            }
            Attr::ConnectionMtls => self.mtls.map(Value::Bool),
            _ => None,
        }
    }
}
