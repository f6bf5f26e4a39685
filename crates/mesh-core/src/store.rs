//! The store that holds the current [`Snapshot`] and swaps it whole, and the
//! configuration sources that feed it.
//!
//! Readers call [`Store::load`] once per request and keep that snapshot to
//! the end, so a reload never changes a decision half way. A new
//! configuration is compiled off to the side and swapped in only when it is
//! valid; an invalid one is rejected with its errors, counted, and the last
//! good snapshot stays in force.
//!
//! Sources sit behind [`ConfigSource`]: files today ([`FileSource`] and the
//! [`FileWatcher`] that reloads on change); a Kubernetes or xDS source would
//! produce the same [`Resources`] and feed the same store.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use notify::{RecursiveMode, Watcher};
use serde::Serialize;

use crate::error::{ConfigError, ConfigErrors};
use crate::load::FileCache;
use crate::resources::Resources;
use crate::snapshot::{Snapshot, compile};

/// Where configuration comes from.
pub trait ConfigSource: Send + Sync {
    /// Names the source in logs: `files under /etc/mesh`.
    fn describe(&self) -> String;
    /// Reads the whole configuration as it is now.
    fn load(&self) -> Result<Resources, ConfigErrors>;
}

/// A file or a folder of YAML files.
///
/// A source remembers what each file gave ([`FileCache`]): a reload after
/// one file changed parses that file only, the others' resources are taken
/// as they were (clones of a source share the memory).
#[derive(Debug, Clone)]
pub struct FileSource {
    path: PathBuf,
    keep_documents: bool,
    viewer: Option<Viewer>,
    cache: Arc<FileCache>,
}

/// Whose view of the files a [`FileSource`] gives.
#[derive(Debug, Clone)]
enum Viewer {
    /// A gateway's: what its namespace sees.
    Namespace(String),
    /// A workload's sidecar (`namespace/name`): its namespace's view
    /// narrowed by its Sidecar.
    Workload(String),
}

impl FileSource {
    /// A source reading `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            keep_documents: false,
            viewer: None,
            cache: Arc::default(),
        }
    }

    /// Gives what a data plane serving `namespace` sees of the files
    /// ([`crate::visibility::view`]): ServiceEntries, VirtualServices and
    /// DestinationRules not exported to it are left out, and the rest
    /// ordered by Istio's precedence.
    #[must_use]
    pub fn visible_in(mut self, namespace: impl Into<String>) -> Self {
        self.viewer = Some(Viewer::Namespace(namespace.into()));
        self
    }

    /// Gives what the sidecar of `workload` (`namespace/name`) sees of the
    /// files ([`crate::visibility::workload_view`]): its namespace's view,
    /// narrowed by the Sidecar resource in force for it.
    #[must_use]
    pub fn seen_by_workload(mut self, workload: impl Into<String>) -> Self {
        self.viewer = Some(Viewer::Workload(workload.into()));
        self
    }

    /// Keeps each resource's document as written ([`Item::raw`]
    /// (crate::resources::Item::raw)), for a control plane to serve.
    #[must_use]
    pub fn keeping_documents(mut self) -> Self {
        self.keep_documents = true;
        self
    }

    /// The path read.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl ConfigSource for FileSource {
    fn describe(&self) -> String {
        format!("files under {}", self.path.display())
    }

    fn load(&self) -> Result<Resources, ConfigErrors> {
        let resources =
            crate::load::load_path_cached(&self.path, self.keep_documents, &self.cache)?;
        Ok(match &self.viewer {
            Some(Viewer::Namespace(ns)) => crate::visibility::view(&resources, ns),
            Some(Viewer::Workload(w)) => crate::visibility::workload_view(&resources, w),
            None => resources,
        })
    }
}

/// Counters of a store, for metrics and the admin endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoreStats {
    /// Version of the snapshot in force (0: none applied yet).
    pub version: u64,
    /// Configurations applied.
    pub reloads: u64,
    /// Configurations rejected.
    pub rejections: u64,
    /// Why the last rejected configuration was rejected, if the last attempt
    /// failed.
    pub last_error: Option<ConfigErrors>,
}

/// Holds the current snapshot.
///
/// ```
/// use mesh_core::store::Store;
/// use std::path::Path;
///
/// let store = Store::new();
/// assert!(!store.is_ready());
/// let yaml = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n\
///             metadata: {name: web}\nspec: {hosts: [web], ports: [{number: 80, name: http}]}\n";
/// store.apply(mesh_core::load::load_str(Path::new("inline.yaml"), yaml))?;
/// assert!(store.load().services.contains_key("web.default.svc.cluster.local"));
/// # Ok::<(), mesh_core::error::ConfigErrors>(())
/// ```
#[derive(Debug)]
pub struct Store {
    current: ArcSwap<Snapshot>,
    last_error: ArcSwapOption<ConfigErrors>,
    version: AtomicU64,
    reloads: AtomicU64,
    rejections: AtomicU64,
    /// The resources the snapshot in force was compiled from, when the
    /// store keeps them ([`Store::retaining_resources`]).
    resources: Option<ArcSwap<Resources>>,
    on_apply: Option<OnApply>,
}

/// What [`Store::on_apply`] calls.
struct OnApply(Box<dyn Fn(u64) + Send + Sync>);

impl std::fmt::Debug for OnApply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OnApply")
    }
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

impl Store {
    /// A store holding an empty snapshot; not ready until a configuration
    /// is applied.
    pub fn new() -> Self {
        Self {
            current: ArcSwap::from_pointee(Snapshot::empty()),
            last_error: ArcSwapOption::empty(),
            version: AtomicU64::new(0),
            reloads: AtomicU64::new(0),
            rejections: AtomicU64::new(0),
            resources: None,
            on_apply: None,
        }
    }

    /// Also keeps the resources each snapshot was compiled from
    /// ([`Store::resources`]): a control plane serves them. Data planes
    /// do not keep them (their memory is the snapshot's).
    #[must_use]
    pub fn retaining_resources(mut self) -> Self {
        self.resources = Some(ArcSwap::from_pointee(Resources::default()));
        self
    }

    /// Calls `f` with the new version after each configuration applied
    /// (not after a rejected one), on the thread that applied it: how a
    /// control plane learns that it has something new to push.
    #[must_use]
    pub fn on_apply(mut self, f: impl Fn(u64) + Send + Sync + 'static) -> Self {
        self.on_apply = Some(OnApply(Box::new(f)));
        self
    }

    /// The resources of the snapshot in force, if the store keeps them
    /// ([`Store::retaining_resources`]); empty until the first apply.
    pub fn resources(&self) -> Option<Arc<Resources>> {
        self.resources.as_ref().map(ArcSwap::load_full)
    }

    /// A store loaded from `source`; fails if the first configuration is
    /// invalid.
    pub fn from_source(source: &dyn ConfigSource) -> Result<Self, ConfigErrors> {
        let store = Self::new();
        store.reload(source)?;
        Ok(store)
    }

    /// The snapshot in force. Take it once per request.
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// True once a configuration has been applied.
    pub fn is_ready(&self) -> bool {
        self.version.load(Ordering::Acquire) > 0
    }

    /// Compiles and swaps in a configuration, or rejects it and keeps the
    /// snapshot in force. Returns the new version.
    pub fn apply(&self, resources: Result<Resources, ConfigErrors>) -> Result<u64, ConfigErrors> {
        match resources.and_then(|r| compile(&r).map(|snap| (snap, r))) {
            Ok((mut snap, resources)) => {
                let version = self.version.load(Ordering::Acquire) + 1;
                snap.version = version;
                // The resources first: whoever sees the new version finds
                // them in place.
                if let Some(kept) = &self.resources {
                    kept.store(Arc::new(resources));
                }
                self.current.store(Arc::new(snap));
                self.version.store(version, Ordering::Release);
                self.reloads.fetch_add(1, Ordering::Relaxed);
                self.last_error.store(None);
                if let Some(OnApply(f)) = &self.on_apply {
                    f(version);
                }
                Ok(version)
            }
            Err(e) => {
                self.rejections.fetch_add(1, Ordering::Relaxed);
                self.last_error.store(Some(Arc::new(e.clone())));
                Err(e)
            }
        }
    }

    /// Reads `source` and applies what it gives, logging the outcome.
    pub fn reload(&self, source: &dyn ConfigSource) -> Result<u64, ConfigErrors> {
        let result = self.apply(source.load());
        match &result {
            Ok(v) => {
                tracing::info!(version = v, source = %source.describe(), "configuration applied")
            }
            Err(e) => tracing::warn!(
                source = %source.describe(),
                version = self.version.load(Ordering::Acquire),
                "configuration rejected, the previous one stays in force: {e}"
            ),
        }
        result
    }

    /// Counters and the last error.
    pub fn stats(&self) -> StoreStats {
        StoreStats {
            version: self.version.load(Ordering::Acquire),
            reloads: self.reloads.load(Ordering::Relaxed),
            rejections: self.rejections.load(Ordering::Relaxed),
            last_error: self.last_error.load_full().map(|e| (*e).clone()),
        }
    }
}

enum Msg {
    Changed,
    Stop,
}

/// Reloads a store whenever files under a [`FileSource`] change. Bursts of
/// events (an editor writing a file in several steps) are coalesced. Dropping
/// the watcher stops it.
#[derive(Debug)]
pub struct FileWatcher {
    tx: mpsc::Sender<Msg>,
    thread: Option<JoinHandle<()>>,
    _watcher: notify::RecommendedWatcher,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Msg::Changed => "Changed",
            Msg::Stop => "Stop",
        })
    }
}

/// How long the watcher waits for a burst of file events to end.
pub const SETTLE: Duration = Duration::from_millis(150);

impl FileWatcher {
    /// Starts watching. The store is not reloaded until something changes.
    pub fn spawn(store: Arc<Store>, source: FileSource) -> Result<Self, ConfigError> {
        let (tx, rx) = mpsc::channel::<Msg>();
        let events = tx.clone();
        let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
            if ev.is_ok_and(|e| !e.kind.is_access()) {
                let _ = events.send(Msg::Changed);
            }
        })
        .map_err(|e| ConfigError::file(source.path(), format!("cannot watch: {e}")))?;
        // A single file is watched through its folder: editors and config
        // management replace files by renaming, which a watch on the file
        // itself would lose.
        let (target, mode) = if source.path().is_dir() {
            (source.path().to_path_buf(), RecursiveMode::Recursive)
        } else {
            let parent = source
                .path()
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            (parent.to_path_buf(), RecursiveMode::NonRecursive)
        };
        watcher
            .watch(&target, mode)
            .map_err(|e| ConfigError::file(&target, format!("cannot watch: {e}")))?;
        let thread = std::thread::Builder::new()
            .name("mesh-config-watch".to_owned())
            .spawn(move || watch_loop(&rx, &store, &source))
            .map_err(|e| ConfigError::file(&target, format!("cannot start the watcher: {e}")))?;
        Ok(Self {
            tx,
            thread: Some(thread),
            _watcher: watcher,
        })
    }
}

fn watch_loop(rx: &mpsc::Receiver<Msg>, store: &Store, source: &FileSource) {
    while let Ok(msg) = rx.recv() {
        if matches!(msg, Msg::Stop) {
            return;
        }
        loop {
            match rx.recv_timeout(SETTLE) {
                Ok(Msg::Changed) => continue,
                Ok(Msg::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => return,
                Err(mpsc::RecvTimeoutError::Timeout) => break,
            }
        }
        let _ = store.reload(source);
    }
}

impl Drop for FileWatcher {
    fn drop(&mut self) {
        let _ = self.tx.send(Msg::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
