//! The control plane on Kubernetes: the [`KubeSource`]'s health as the
//! configuration server reads it (readiness, `/debug/config`, metrics).

use mesh_ca::metrics::{MetricDef, MetricKind};
use mesh_core::error::ConfigErrors;
use mesh_kube::KubeSource;
use serde_json::json;

use crate::xds::SourceHealth;

/// Errors of each watch.
pub const WATCH_ERRORS: MetricDef = MetricDef {
    name: "mesh_kubernetes_watch_errors_total",
    help: "Errors of the control plane's watches of the Kubernetes API, by resource.",
    kind: MetricKind::Counter,
};
/// Lists of each watch.
pub const WATCH_LISTS: MetricDef = MetricDef {
    name: "mesh_kubernetes_watch_lists_total",
    help: "Full lists of the control plane's watches of the Kubernetes API (the first, and each relist after 410 Gone), by resource.",
    kind: MetricKind::Counter,
};
/// Whether each watch has listed.
pub const WATCH_LISTED: MetricDef = MetricDef {
    name: "mesh_kubernetes_watch_listed",
    help: "1 once a watch of the Kubernetes API has listed (or its CRD is absent), by resource.",
    kind: MetricKind::Gauge,
};

/// Events reporting rejected objects.
pub const EVENTS: MetricDef = MetricDef {
    name: "mesh_kubernetes_events_total",
    help: "Kubernetes Events the control plane created for objects it rejected, by result (posted, failed).",
    kind: MetricKind::Counter,
};

impl SourceHealth for KubeSource {
    fn reviewed(&self, rejected: Option<&ConfigErrors>) {
        KubeSource::reviewed(self, rejected);
    }

    fn not_ready(&self) -> Option<String> {
        self.status().not_ready_reason()
    }

    fn status(&self) -> serde_json::Value {
        let st = KubeSource::status(self);
        json!({
            "source": "kubernetes",
            "synced": st.synced(),
            "watches": st.watches.iter().map(|w| json!({
                "resource": w.resource,
                "listed": w.listed,
                "absent": w.absent,
                "error": w.error,
                "errors": w.errors,
                "lists": w.lists,
            })).collect::<Vec<_>>(),
            "notes": st.notes.iter().map(ToString::to_string).collect::<Vec<_>>(),
        })
    }

    fn render(&self, out: &mut String) {
        let st = KubeSource::status(self);
        for def in [WATCH_ERRORS, WATCH_LISTS, WATCH_LISTED] {
            def.write_header(out);
            for w in &st.watches {
                let value = match def.name {
                    n if n == WATCH_ERRORS.name => w.errors,
                    n if n == WATCH_LISTS.name => w.lists,
                    _ => u64::from(w.listed),
                };
                out.push_str(&format!(
                    "{}{{resource=\"{}\"}} {value}\n",
                    def.name, w.resource
                ));
            }
        }
        let events = self.event_counts();
        EVENTS.write_header(out);
        for (result, n) in [("posted", events.posted), ("failed", events.failed)] {
            out.push_str(&format!("{}{{result=\"{result}\"}} {n}\n", EVENTS.name));
        }
    }
}
