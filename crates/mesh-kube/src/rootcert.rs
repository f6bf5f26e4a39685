//! The mesh's root certificate, published in every namespace as the
//! ConfigMap `mesh-ca-root-cert` (key `root-cert.pem`), which injected
//! sidecars mount to trust the CA before their first SVID: as istiod
//! publishes `istio-ca-root-cert`.
//!
//! Namespaces are watched (list, watch, relist on 410, backoff on errors);
//! each one that exists and is not terminating gets the ConfigMap by
//! server-side apply (field manager `mesh-control`, forced: the control
//! plane owns this object's data). A namespace created later gets it when
//! it appears. The ConfigMaps are watched too: one deleted, or edited to
//! hold anything but the current root, is applied again. An apply that fails (the API server down, RBAC missing) is
//! logged with the namespace and the reason and retried every few seconds
//! until it succeeds; a pod scheduled meanwhile waits in ContainerCreating
//! for its volume rather than starting without the root.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Patch, PatchParams};
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, ResourceExt as _};
use serde_json::json;

use crate::inject::CA_ROOT_CONFIG_MAP;

/// The key the root certificate is under.
pub const ROOT_CERT_KEY: &str = "root-cert.pem";
/// The server-side apply field manager.
pub const FIELD_MANAGER: &str = "mesh-control";
/// How often failed applies are retried.
const RETRY: Duration = Duration::from_secs(2);

/// Where the root stands, per namespace.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PublishStatus {
    /// Namespaces holding the current root.
    pub published: BTreeSet<String>,
    /// Namespaces whose apply failed, with the last reason; retried.
    pub failing: std::collections::BTreeMap<String, String>,
}

/// The running publisher; dropping it stops it.
#[derive(Debug)]
pub struct RootPublisher {
    task: tokio::task::JoinHandle<()>,
    status: Arc<Mutex<PublishStatus>>,
}

impl Drop for RootPublisher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RootPublisher {
    /// Publishes `root_pem` in every namespace, from now on. Must be called
    /// within a Tokio runtime.
    pub fn start(client: Client, root_pem: String) -> Self {
        let status = Arc::new(Mutex::new(PublishStatus::default()));
        let task = tokio::spawn(run(client, root_pem, status.clone()));
        Self { task, status }
    }

    /// Where the root is published now, and where it failed.
    pub fn status(&self) -> PublishStatus {
        self.status
            .lock()
            .map(|s| s.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }
}

async fn run(client: Client, root_pem: String, status: Arc<Mutex<PublishStatus>>) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let mut events =
        std::pin::pin!(watcher::watcher(namespaces, watcher::Config::default()).default_backoff());
    // The published ConfigMaps themselves: one deleted or edited is put
    // back (a pod scheduled in that namespace would wait for its volume).
    let maps: Api<ConfigMap> = Api::all(client.clone());
    let mut maps = std::pin::pin!(
        watcher::watcher(
            maps,
            watcher::Config::default().fields(&format!("metadata.name={CA_ROOT_CONFIG_MAP}")),
        )
        .default_backoff()
    );
    // Namespaces that exist and are not terminating.
    let mut live: BTreeSet<String> = BTreeSet::new();
    // Namespaces that exist and still need the root.
    let mut pending: BTreeSet<String> = BTreeSet::new();
    let mut retry = tokio::time::interval(RETRY);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            event = events.next() => {
                match event {
                    Some(Ok(Event::Apply(ns) | Event::InitApply(ns))) => {
                        let name = ns.name_any();
                        let terminating = ns
                            .status
                            .as_ref()
                            .and_then(|s| s.phase.as_deref())
                            == Some("Terminating");
                        if terminating {
                            live.remove(&name);
                            pending.remove(&name);
                            let mut st = lock(&status);
                            st.published.remove(&name);
                            st.failing.remove(&name);
                        } else {
                            live.insert(name.clone());
                            if !lock(&status).published.contains(&name) {
                                pending.insert(name);
                            }
                        }
                    }
                    Some(Ok(Event::Delete(ns))) => {
                        let name = ns.name_any();
                        live.remove(&name);
                        pending.remove(&name);
                        let mut st = lock(&status);
                        st.published.remove(&name);
                        st.failing.remove(&name);
                    }
                    Some(Ok(Event::Init | Event::InitDone)) => {}
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "watching namespaces to publish the root certificate");
                    }
                    None => return,
                }
                publish(&client, &root_pem, &mut pending, &status).await;
            }
            event = maps.next() => {
                let stale = match event {
                    Some(Ok(Event::Apply(cm) | Event::InitApply(cm))) => {
                        let current = cm
                            .data
                            .as_ref()
                            .and_then(|d| d.get(ROOT_CERT_KEY))
                            .is_some_and(|pem| *pem == root_pem);
                        (!current).then(|| cm.namespace()).flatten()
                    }
                    Some(Ok(Event::Delete(cm))) => cm.namespace(),
                    Some(Ok(Event::Init | Event::InitDone)) => None,
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "watching configmaps/{CA_ROOT_CONFIG_MAP}");
                        None
                    }
                    None => return,
                };
                if let Some(ns) = stale.filter(|ns| live.contains(ns)) {
                    tracing::warn!(namespace = %ns, "{CA_ROOT_CONFIG_MAP} was deleted or changed; publishing it again");
                    lock(&status).published.remove(&ns);
                    pending.insert(ns);
                    publish(&client, &root_pem, &mut pending, &status).await;
                }
            }
            _ = retry.tick() => {
                if !pending.is_empty() {
                    publish(&client, &root_pem, &mut pending, &status).await;
                }
            }
        }
    }
}

fn lock(status: &Mutex<PublishStatus>) -> std::sync::MutexGuard<'_, PublishStatus> {
    status
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Applies the ConfigMap in every pending namespace; keeps those that fail.
async fn publish(
    client: &Client,
    root_pem: &str,
    pending: &mut BTreeSet<String>,
    status: &Mutex<PublishStatus>,
) {
    let object = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": CA_ROOT_CONFIG_MAP,
            "labels": {"app.kubernetes.io/part-of": "mesh", "app.kubernetes.io/managed-by": FIELD_MANAGER},
        },
        "data": {ROOT_CERT_KEY: root_pem},
    });
    let params = PatchParams::apply(FIELD_MANAGER).force();
    for ns in std::mem::take(pending) {
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
        match api
            .patch(CA_ROOT_CONFIG_MAP, &params, &Patch::Apply(&object))
            .await
        {
            Ok(_) => {
                tracing::info!(namespace = %ns, "root certificate published in {CA_ROOT_CONFIG_MAP}");
                let mut st = lock(status);
                st.failing.remove(&ns);
                st.published.insert(ns);
            }
            Err(e) => {
                let reason = format!("applying configmaps/{CA_ROOT_CONFIG_MAP} in {ns}: {e}");
                tracing::warn!(namespace = %ns, error = %e, "root certificate not published; retrying");
                lock(status).failing.insert(ns.clone(), reason);
                pending.insert(ns);
            }
        }
    }
}
