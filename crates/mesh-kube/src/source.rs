//! The Kubernetes source: a watch per kind the mesh reads (kube-runtime's
//! watcher: an initial paged list, then a watch with bookmarks, a relist
//! when the API server answers 410 Gone, jittered exponential backoff on
//! errors), feeding one [`Cluster`]; a [`ConfigSource`] whose `load` turns
//! what the watches hold into the mesh's resources through the file
//! loader ([`crate::convert`]).
//!
//! What a user relies on:
//! - Nothing is served before every watch has listed once: a control plane
//!   that has seen the Pods but not yet the AuthorizationPolicies would
//!   serve a mesh without them.
//! - A watch that fails keeps what it held: the last good objects stay in
//!   force while the API server is away, and [`KubeSource::status`] says
//!   which watch fails and why, naming the verb, the resource and the
//!   scope (`cannot list pods (all namespaces): forbidden (HTTP 403)`).
//! - An Istio kind whose CRD is not installed (the API server answers 404)
//!   has no objects: it counts as listed, is said in the status, and is
//!   read as soon as the CRD appears. Any other error leaves the kind
//!   unlisted: a forbidden AuthorizationPolicy list is never read as "no
//!   policies".

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{ApiResource, DynamicObject};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource, ResourceExt};
use mesh_core::error::ConfigErrors;
use mesh_core::resources::Resources;
use mesh_core::store::ConfigSource;
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::convert::{Cluster, Documents, IstioObject, Key, Note};
use crate::events::{EventCounts, EventReporter};

/// An Istio kind the source watches: group, kind and plural.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IstioKind {
    /// `networking.istio.io`.
    pub group: &'static str,
    /// `VirtualService`.
    pub kind: &'static str,
    /// `virtualservices`.
    pub plural: &'static str,
}

const fn kind(group: &'static str, kind: &'static str, plural: &'static str) -> IstioKind {
    IstioKind {
        group,
        kind,
        plural,
    }
}

const NET: &str = "networking.istio.io";
const SEC: &str = "security.istio.io";

/// The Istio kinds watched: the ones the mesh reads, and the ones it
/// refuses by name (EnvoyFilter, RequestAuthentication...): a
/// cluster that has one must hear that it is not honoured, not have it
/// ignored because nobody looked.
pub const ISTIO_KINDS: &[IstioKind] = &[
    kind(NET, "VirtualService", "virtualservices"),
    kind(NET, "DestinationRule", "destinationrules"),
    kind(NET, "Gateway", "gateways"),
    kind(NET, "ServiceEntry", "serviceentries"),
    kind(NET, "WorkloadEntry", "workloadentries"),
    kind(NET, "WorkloadGroup", "workloadgroups"),
    kind(NET, "Sidecar", "sidecars"),
    kind(NET, "EnvoyFilter", "envoyfilters"),
    kind(NET, "ProxyConfig", "proxyconfigs"),
    kind(SEC, "PeerAuthentication", "peerauthentications"),
    kind(SEC, "AuthorizationPolicy", "authorizationpolicies"),
    kind(SEC, "RequestAuthentication", "requestauthentications"),
];

/// The versions of an Istio group the source may watch, newest first: the
/// API server converts, so one served version sees every object.
const ISTIO_VERSIONS: &[&str] = &["v1", "v1beta1", "v1alpha3"];

/// What the source is told.
#[derive(Debug, Clone)]
pub struct KubeOptions {
    /// The cluster's DNS domain: Services are `name.namespace.svc.DOMAIN`
    /// (a MeshConfig `clusterDomain` in the ConfigMap wins).
    pub cluster_domain: String,
    /// The MeshConfig ConfigMap: namespace and name (its key `mesh.yaml`
    /// holds the MeshConfig document). Absent: the defaults.
    pub mesh_config: Option<(String, String)>,
    /// This replica's name (its pod's, from the downward API), as the
    /// `reportingInstance` of the Events that report rejected objects.
    pub instance: String,
}

impl Default for KubeOptions {
    fn default() -> Self {
        Self {
            cluster_domain: "cluster.local".to_owned(),
            mesh_config: None,
            instance: "mesh-control".to_owned(),
        }
    }
}

/// Why [`KubeSource::read_once`] has no configuration.
#[derive(Debug)]
pub enum ReadError {
    /// A kind could not be listed (forbidden, unreachable): the verb, the
    /// resource and the reason.
    NotListed(String),
    /// What the cluster holds does not load.
    Invalid(ConfigErrors),
}

/// How one watch stands.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchStatus {
    /// The resource: `pods`, `virtualservices.networking.istio.io/v1`.
    pub resource: String,
    /// It has listed at least once (or its CRD is absent).
    pub listed: bool,
    /// The API server does not serve it (its CRD is not installed).
    pub absent: bool,
    /// The newest error, until the watch delivers again (an event or a
    /// relist: the watcher does not say when a retried watch merely
    /// starts).
    pub error: Option<String>,
    /// Errors since the start.
    pub errors: u64,
    /// Relists (the initial list included): a 410 Gone or a watch that
    /// could not resume.
    pub lists: u64,
}

/// How the source stands: every watch, and what the conversion left out.
#[derive(Debug, Clone, Default)]
pub struct KubeStatus {
    /// Per watch.
    pub watches: Vec<WatchStatus>,
    /// What the newest conversion did not carry over.
    pub notes: Vec<Note>,
}

impl KubeStatus {
    /// Every watch has listed.
    pub fn synced(&self) -> bool {
        self.watches.iter().all(|w| w.listed)
    }

    /// Why the source is not ready, or `None`.
    pub fn not_ready_reason(&self) -> Option<String> {
        let waiting: Vec<String> = self
            .watches
            .iter()
            .filter(|w| !w.listed)
            .map(|w| match &w.error {
                Some(e) => e.clone(),
                None => format!("{}: not listed yet", w.resource),
            })
            .collect();
        (!waiting.is_empty()).then(|| waiting.join("; "))
    }
}

#[derive(Debug, Default)]
struct State {
    cluster: Cluster,
    watches: Vec<WatchStatus>,
    notes: Vec<Note>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// Bumped on every change of what the watches hold (after a kind's
    /// first list).
    changed: watch::Sender<u64>,
    options: KubeOptions,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves maps that are whole
        // (every update is one insert or one swap).
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }
}

/// The Kubernetes source. Dropping it stops its watches.
#[derive(Debug)]
pub struct KubeSource {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
    events: EventReporter,
}

impl Drop for KubeSource {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// A change a watch reports.
enum Change<K> {
    /// The whole collection, after a (re)list.
    Reset(Vec<K>),
    /// Added or modified.
    Upsert(K),
    /// Deleted.
    Remove(K),
}

fn key_of<K: Resource>(o: &K) -> Key {
    (
        o.namespace().unwrap_or_else(|| "default".to_owned()),
        o.name_any(),
    )
}

fn apply_keyed<K: Resource>(map: &mut BTreeMap<Key, K>, change: Change<K>) {
    match change {
        Change::Reset(all) => *map = all.into_iter().map(|o| (key_of(&o), o)).collect(),
        Change::Upsert(o) => {
            map.insert(key_of(&o), o);
        }
        Change::Remove(o) => {
            map.remove(&key_of(&o));
        }
    }
}

impl KubeSource {
    /// Starts the watches. The Istio groups' served versions are found
    /// first (discovery); a group the API server does not serve is watched
    /// at `v1` and counts as absent until its CRDs are installed.
    pub async fn start(client: Client, options: KubeOptions) -> Self {
        let (changed, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed,
            options: options.clone(),
        });
        let mut tasks = vec![
            spawn_watch(
                &shared,
                "services".to_owned(),
                Api::<Service>::all(client.clone()),
                watcher::Config::default(),
                |c: &mut Cluster, ch| apply_keyed(&mut c.services, ch),
            ),
            spawn_watch(
                &shared,
                "pods".to_owned(),
                Api::<Pod>::all(client.clone()),
                watcher::Config::default(),
                |c: &mut Cluster, ch| apply_keyed(&mut c.pods, ch),
            ),
            spawn_watch(
                &shared,
                "endpointslices.discovery.k8s.io".to_owned(),
                Api::<EndpointSlice>::all(client.clone()),
                watcher::Config::default(),
                |c: &mut Cluster, ch| apply_keyed(&mut c.endpoint_slices, ch),
            ),
        ];
        if let Some((ns, name)) = &options.mesh_config {
            tasks.push(spawn_watch(
                &shared,
                format!("configmaps {ns}/{name}"),
                Api::<ConfigMap>::namespaced(client.clone(), ns),
                watcher::Config::default().fields(&format!("metadata.name={name}")),
                |c: &mut Cluster, ch| match ch {
                    Change::Reset(all) => c.mesh_config = all.into_iter().next(),
                    Change::Upsert(o) => c.mesh_config = Some(o),
                    Change::Remove(_) => c.mesh_config = None,
                },
            ));
        }

        let mut versions: BTreeMap<&str, &str> = BTreeMap::new();
        for group in [NET, SEC] {
            versions.insert(group, served_version(&client, group).await);
        }
        for k in ISTIO_KINDS {
            let version = versions.get(k.group).copied().unwrap_or("v1");
            let ar = ApiResource {
                group: k.group.to_owned(),
                version: version.to_owned(),
                api_version: format!("{}/{version}", k.group),
                kind: k.kind.to_owned(),
                plural: k.plural.to_owned(),
            };
            let group_version = format!("/apis/{}/{version}", k.group);
            let plural = k.plural;
            tasks.push(spawn_watch(
                &shared,
                format!("{}.{}/{version}", k.plural, k.group),
                Api::<DynamicObject>::all_with(client.clone(), &ar),
                watcher::Config::default(),
                move |c: &mut Cluster, ch| {
                    let entry = |o: DynamicObject| {
                        let (ns, name) = key_of(&o);
                        let object = serde_json::to_value(&o).unwrap_or_default();
                        (
                            (plural.to_owned(), ns, name),
                            IstioObject {
                                group_version: group_version.clone(),
                                plural: plural.to_owned(),
                                object,
                            },
                        )
                    };
                    match ch {
                        Change::Reset(all) => {
                            c.istio.retain(|(p, _, _), _| p != plural);
                            c.istio.extend(all.into_iter().map(entry));
                        }
                        Change::Upsert(o) => {
                            let (k, v) = entry(o);
                            c.istio.insert(k, v);
                        }
                        Change::Remove(o) => {
                            let (ns, name) = key_of(&o);
                            c.istio.remove(&(plural.to_owned(), ns, name));
                        }
                    }
                },
            ));
        }
        let events = EventReporter::start(client, options.instance.clone());
        Self {
            shared,
            tasks,
            events,
        }
    }

    /// The outcome of the newest read of the source: `None` when the
    /// configuration was accepted, else why not. Each object an error names
    /// gets a `Warning` Event (reason `Rejected`) once ([`crate::events`]).
    pub fn reviewed(&self, rejected: Option<&ConfigErrors>) {
        let st = self.shared.lock();
        let c = &st.cluster;
        self.events.review(rejected, |o| {
            let key = (o.namespace.clone(), o.name.clone());
            let core =
                |kind: &str, meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
                    Some((kind.to_owned(), meta.uid.clone()))
                };
            match o.plural.as_str() {
                "services" => core("Service", &c.services.get(&key)?.metadata),
                "pods" => core("Pod", &c.pods.get(&key)?.metadata),
                "endpointslices" => core("EndpointSlice", &c.endpoint_slices.get(&key)?.metadata),
                "configmaps" => core("ConfigMap", &c.mesh_config.as_ref()?.metadata),
                plural => {
                    let obj = &c.istio.get(&(plural.to_owned(), key.0, key.1))?.object;
                    let kind = obj["kind"].as_str()?.to_owned();
                    let uid = obj["metadata"]["uid"].as_str().map(str::to_owned);
                    Some((kind, uid))
                }
            }
        });
    }

    /// Events posted and failed.
    pub fn event_counts(&self) -> EventCounts {
        self.events.counts()
    }

    /// Reads the cluster once, for a command (`mesh-proxy check
    /// --kubeconfig`): every watch listed within `timeout`, then what they
    /// hold, as [`ConfigSource::load`] gives it. Nothing is written to the
    /// cluster.
    pub async fn read_once(
        client: Client,
        options: KubeOptions,
        timeout: std::time::Duration,
    ) -> Result<Resources, ReadError> {
        let source = Self::start(client, options).await;
        if tokio::time::timeout(timeout, source.synced())
            .await
            .is_err()
        {
            let why = source
                .status()
                .not_ready_reason()
                .unwrap_or_else(|| "not every watch listed".to_owned());
            return Err(ReadError::NotListed(format!(
                "not every kind was listed within {}s: {why}",
                timeout.as_secs()
            )));
        }
        let read = tokio::task::spawn_blocking(move || source.load())
            .await
            .map_err(|e| ReadError::NotListed(e.to_string()))?;
        read.map_err(ReadError::Invalid)
    }

    /// Bumped whenever what the watches hold changes.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.shared.changed.subscribe()
    }

    /// Waits until every watch has listed once.
    pub async fn synced(&self) {
        let mut rx = self.changes();
        loop {
            if self.status().synced() {
                return;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// How every watch stands.
    pub fn status(&self) -> KubeStatus {
        let st = self.shared.lock();
        KubeStatus {
            watches: st.watches.clone(),
            notes: st.notes.clone(),
        }
    }

    /// What the watches hold now, as the mesh's documents. Converted under
    /// the watches' lock (a pure function of what they hold, cheaper than a
    /// copy of the cluster): an update waits for it, none is lost.
    pub fn documents(&self) -> Documents {
        let mut st = self.shared.lock();
        let docs = crate::convert::documents(&st.cluster, &self.shared.options.cluster_domain);
        if st.notes != docs.notes {
            for n in docs.notes.iter().filter(|n| !st.notes.contains(n)) {
                tracing::warn!("{n}");
            }
            st.notes.clone_from(&docs.notes);
        }
        docs
    }
}

impl ConfigSource for KubeSource {
    fn describe(&self) -> String {
        "the Kubernetes API".to_owned()
    }

    fn load(&self) -> Result<Resources, ConfigErrors> {
        let docs = self.documents();
        if !docs.errors.is_empty() {
            return Err(ConfigErrors(docs.errors));
        }
        mesh_core::load::load_documents_keeping_documents(docs.documents)
    }
}

/// The newest of [`ISTIO_VERSIONS`] the API server serves for `group`
/// (`v1` when discovery fails or the group is absent: the watch then
/// counts it absent, or retries).
async fn served_version(client: &Client, group: &str) -> &'static str {
    match client
        .list_api_group_resources(&format!("{group}/v1"))
        .await
    {
        Ok(_) => return "v1",
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => {
            tracing::warn!("discovery of {group}: {e}; watching v1");
            return "v1";
        }
    }
    for v in &ISTIO_VERSIONS[1..] {
        if client
            .list_api_group_resources(&format!("{group}/{v}"))
            .await
            .is_ok()
        {
            return v;
        }
    }
    "v1"
}

/// What went wrong, with the verb, the resource and the scope.
fn describe(e: &watcher::Error, resource: &str) -> (String, bool) {
    let scope = "(all namespaces)";
    let api = |verb: &str, e: &kube::Error| match e {
        kube::Error::Api(s) => (
            format!(
                "cannot {verb} {resource} {scope}: {} (HTTP {})",
                if s.message.is_empty() {
                    &s.reason
                } else {
                    &s.message
                },
                s.code
            ),
            verb == "list" && s.code == 404,
        ),
        other => (format!("cannot {verb} {resource} {scope}: {other}"), false),
    };
    match e {
        watcher::Error::InitialListFailed(e) => api("list", e),
        watcher::Error::WatchStartFailed(e) | watcher::Error::WatchFailed(e) => api("watch", e),
        watcher::Error::WatchError(s) => (
            format!(
                "cannot watch {resource} {scope}: {} (HTTP {})",
                s.message, s.code
            ),
            false,
        ),
        watcher::Error::NoResourceVersion => (
            format!("cannot watch {resource} {scope}: the list had no resourceVersion"),
            false,
        ),
    }
}

/// Registers the watch of `resource` in the status and runs it for ever
/// on a task of its own, applying what it reports to the cluster.
fn spawn_watch<K, F>(
    shared: &Arc<Shared>,
    resource: String,
    api: Api<K>,
    config: watcher::Config,
    apply: F,
) -> JoinHandle<()>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    F: Fn(&mut Cluster, Change<K>) + Send + 'static,
{
    let index = {
        let mut st = shared.lock();
        st.watches.push(WatchStatus {
            resource: resource.clone(),
            ..WatchStatus::default()
        });
        st.watches.len() - 1
    };
    tokio::spawn(run(api, config, shared.clone(), index, resource, apply))
}

/// One watch, for ever.
async fn run<K, F>(
    api: Api<K>,
    config: watcher::Config,
    shared: Arc<Shared>,
    index: usize,
    resource: String,
    apply: F,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    F: Fn(&mut Cluster, Change<K>) + Send + 'static,
{
    let mut stream = std::pin::pin!(watcher::watcher(api, config).default_backoff());
    let mut pending: Vec<K> = Vec::new();
    while let Some(ev) = stream.next().await {
        let mut st = shared.lock();
        let changed = match ev {
            Ok(Event::Init) => {
                pending.clear();
                false
            }
            Ok(Event::InitApply(o)) => {
                pending.push(o);
                false
            }
            Ok(Event::InitDone) => {
                apply(&mut st.cluster, Change::Reset(std::mem::take(&mut pending)));
                let w = &mut st.watches[index];
                if w.error.is_some() || w.absent {
                    tracing::info!("{resource}: listed");
                }
                w.listed = true;
                w.absent = false;
                w.error = None;
                w.lists += 1;
                true
            }
            Ok(Event::Apply(o)) => {
                apply(&mut st.cluster, Change::Upsert(o));
                st.watches[index].error = None;
                true
            }
            Ok(Event::Delete(o)) => {
                apply(&mut st.cluster, Change::Remove(o));
                st.watches[index].error = None;
                true
            }
            Err(watcher::Error::WatchError(s)) if s.code == 410 => {
                // The API server compacted past where the watch was: the
                // watcher relists (Init .. InitDone), which is the
                // protocol, not a failure.
                tracing::debug!("{resource}: {} (410 Gone): relisting", s.message);
                false
            }
            Err(e) => {
                let (message, not_found) = describe(&e, &resource);
                let w = &mut st.watches[index];
                w.errors += 1;
                if not_found && !w.listed {
                    // The CRD is not installed: there are no such objects.
                    if !w.absent {
                        tracing::warn!("{message}: is its CRD installed? read as none");
                    }
                    w.absent = true;
                    w.listed = true;
                    w.error = Some(message);
                    true
                } else {
                    if w.error.as_ref() != Some(&message) {
                        tracing::warn!("{message}; the last objects listed stay in force");
                    }
                    w.error = Some(message);
                    // Readiness may change with the error's text.
                    true
                }
            }
        };
        drop(st);
        if changed {
            shared.bump();
        }
    }
}
