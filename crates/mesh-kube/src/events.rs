//! Rejections as Kubernetes Events: when the control plane rejects the
//! cluster's configuration, each object an error names (an Istio object,
//! or a Service or Pod the conversion read) gets a `Warning` Event
//! (`events.k8s.io/v1`, reason `Rejected`, the field and the message in its
//! note), so `kubectl describe virtualservice web` and `kubectl get events`
//! show why the mesh is not following the object, next to the log, the
//! `mesh_config_rejected_total` metric and `/debug/config`.
//!
//! An error is reported once: the same object with the same message is not
//! reported again on every re-read of the cluster (the control plane
//! re-reads on every change anywhere). Once the object is accepted (or
//! gone) it is forgotten, so breaking it again is reported again. Events
//! are created only (`create` on `events`, the least the control plane's
//! RBAC grants); failures to post are logged and counted, and never hold
//! up the configuration.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::PostParams;
use kube::{Api, Client};
use mesh_core::error::ConfigErrors;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::convert::ORIGIN_SCHEME;

/// The controller Events name as their reporter.
pub const REPORTING_CONTROLLER: &str = "mesh.io/mesh-control";

/// The Event's reason.
pub const REASON: &str = "Rejected";

/// An Event's note holds at most this many bytes (the API server refuses
/// more).
const NOTE_LIMIT: usize = 1024;

/// An object an error names, from its origin
/// (`k8s:/apis/networking.istio.io/v1/namespaces/shop/virtualservices/web`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ObjectPath {
    /// `networking.istio.io/v1`, `v1`.
    pub api_version: String,
    /// Empty for a cluster-scoped object.
    pub namespace: String,
    /// `virtualservices`.
    pub plural: String,
    /// `web`.
    pub name: String,
}

impl ObjectPath {
    /// Parses an origin; `None` for one that is not a Kubernetes object's
    /// (a file, the MeshConfig defaults).
    pub fn parse(origin: &str) -> Option<Self> {
        let path = origin.strip_prefix(ORIGIN_SCHEME)?;
        let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let (api_version, rest) = match segs.as_slice() {
            ["api", version, rest @ ..] => ((*version).to_owned(), rest),
            ["apis", group, version, rest @ ..] => (format!("{group}/{version}"), rest),
            _ => return None,
        };
        let (namespace, plural, name) = match rest {
            ["namespaces", ns, plural, name] => ((*ns).to_owned(), *plural, *name),
            [plural, name] => (String::new(), *plural, *name),
            _ => return None,
        };
        Some(Self {
            api_version,
            namespace,
            plural: plural.to_owned(),
            name: name.to_owned(),
        })
    }
}

/// How event reporting stands, for the control plane's metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventCounts {
    /// Events created.
    pub posted: u64,
    /// Events the API server refused or that could not be sent.
    pub failed: u64,
}

/// One Event to post: the object and the note.
#[derive(Debug)]
struct Pending {
    object: ObjectPath,
    kind: String,
    uid: Option<String>,
    note: String,
}

#[derive(Debug, Default)]
struct Reported {
    /// (object, note) of the errors in force.
    current: BTreeSet<(ObjectPath, String)>,
    counts: EventCounts,
}

/// Reports rejections as Events; the posting runs on a task of its own.
#[derive(Debug)]
pub(crate) struct EventReporter {
    reported: Arc<Mutex<Reported>>,
    tx: mpsc::UnboundedSender<Pending>,
    task: JoinHandle<()>,
}

impl Drop for EventReporter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl EventReporter {
    /// Starts the poster; `instance` names this replica (its pod).
    pub(crate) fn start(client: Client, instance: String) -> Self {
        let reported = Arc::new(Mutex::new(Reported::default()));
        let (tx, mut rx) = mpsc::unbounded_channel::<Pending>();
        let counts = reported.clone();
        let task = tokio::spawn(async move {
            while let Some(p) = rx.recv().await {
                let ns = if p.object.namespace.is_empty() {
                    "default".to_owned()
                } else {
                    p.object.namespace.clone()
                };
                let api: Api<Event> = Api::namespaced(client.clone(), &ns);
                let event = event_of(&p, &ns, &instance);
                let result = api.create(&PostParams::default(), &event).await;
                let mut r = counts.lock().unwrap_or_else(PoisonError::into_inner);
                match result {
                    Ok(_) => r.counts.posted += 1,
                    Err(e) => {
                        r.counts.failed += 1;
                        tracing::warn!(
                            "cannot create events.events.k8s.io/v1 in namespace {ns} \
                             (for {} {}/{}): {e}",
                            p.kind,
                            p.object.namespace,
                            p.object.name
                        );
                    }
                }
            }
        });
        Self { reported, tx, task }
    }

    /// The newest read of the configuration: `None` when it was accepted,
    /// else its errors. `kind_and_uid` looks an object up in what the
    /// watches hold.
    pub(crate) fn review(
        &self,
        rejected: Option<&ConfigErrors>,
        kind_and_uid: impl Fn(&ObjectPath) -> Option<(String, Option<String>)>,
    ) {
        let mut now = BTreeSet::new();
        for e in rejected.map(|e| e.0.as_slice()).unwrap_or_default() {
            let Some(object) = e.file.to_str().and_then(ObjectPath::parse) else {
                continue;
            };
            let mut note = match &e.field {
                Some(f) => format!("{f}: {}", e.message),
                None => e.message.clone(),
            };
            note.push_str("; the mesh keeps its last good configuration");
            now.insert((object, note));
        }
        let mut r = self.reported.lock().unwrap_or_else(PoisonError::into_inner);
        for (object, note) in now.difference(&r.current) {
            let Some((kind, uid)) = kind_and_uid(object) else {
                continue;
            };
            let _ = self.tx.send(Pending {
                object: object.clone(),
                kind,
                uid,
                note: note.clone(),
            });
        }
        r.current = now;
    }

    pub(crate) fn counts(&self) -> EventCounts {
        self.reported
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .counts
    }
}

/// The note cut to the API server's limit, on a character boundary.
fn clip(note: &str) -> String {
    if note.len() <= NOTE_LIMIT {
        return note.to_owned();
    }
    let mut end = NOTE_LIMIT - 3;
    while !note.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &note[..end])
}

fn event_of(p: &Pending, namespace: &str, instance: &str) -> Event {
    let now = k8s_openapi::jiff::Timestamp::now();
    Event {
        metadata: ObjectMeta {
            // client-go's and kube-runtime's naming: the object's name and
            // the time, unique per object.
            name: Some(format!("{}.{:x}", p.object.name, now.as_nanosecond())),
            namespace: Some(namespace.to_owned()),
            ..ObjectMeta::default()
        },
        event_time: Some(MicroTime(now)),
        action: Some("Validate".to_owned()),
        reason: Some(REASON.to_owned()),
        type_: Some("Warning".to_owned()),
        note: Some(clip(&p.note)),
        reporting_controller: Some(REPORTING_CONTROLLER.to_owned()),
        reporting_instance: Some(instance.to_owned()),
        regarding: Some(ObjectReference {
            api_version: Some(p.object.api_version.clone()),
            kind: Some(p.kind.clone()),
            namespace: (!p.object.namespace.is_empty()).then(|| p.object.namespace.clone()),
            name: Some(p.object.name.clone()),
            uid: p.uid.clone(),
            ..ObjectReference::default()
        }),
        ..Event::default()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn origins_name_the_object() {
        let p = ObjectPath::parse(
            "k8s:/apis/networking.istio.io/v1/namespaces/shop/virtualservices/web",
        )
        .unwrap();
        assert_eq!(p.api_version, "networking.istio.io/v1");
        assert_eq!(
            (p.namespace.as_str(), p.plural.as_str()),
            ("shop", "virtualservices")
        );
        assert_eq!(p.name, "web");
        let p = ObjectPath::parse("k8s:/api/v1/namespaces/default/services/web").unwrap();
        assert_eq!(
            (p.api_version.as_str(), p.plural.as_str()),
            ("v1", "services")
        );
        assert!(ObjectPath::parse("/etc/mesh/vs.yaml").is_none());
        assert!(ObjectPath::parse("k8s:/apis/x").is_none());
    }

    #[test]
    fn a_long_note_is_clipped_on_a_character_boundary() {
        let long = "é".repeat(1000);
        let c = clip(&long);
        assert!(c.len() <= NOTE_LIMIT && c.ends_with("..."), "{}", c.len());
        assert_eq!(clip("short"), "short");
    }
}
