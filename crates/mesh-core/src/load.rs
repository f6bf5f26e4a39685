//! Reading Istio YAML: a file or a folder of files, each holding one or many
//! documents separated by `---`.
//!
//! Each document is parsed into a generic tree first, so its `apiVersion`
//! and `kind` choose the type, and then into that type with the field path
//! tracked, so every error names the file, the document and the field.
//! A `List` document (`kubectl get -o yaml`) or a `<Kind>List` has its items
//! read as documents of their own, named `document N item M` in errors.
//! Documents of kinds the mesh does not read (Deployments, Services...) are
//! listed as skipped; an `*.istio.io` kind or version the mesh does not
//! implement is an error, because dropping it silently could weaken what the
//! user asked for. The Kubernetes Gateway API's Gateway and HTTPRoute are
//! read into Istio's Gateway and VirtualService ([`crate::gateway_api`]);
//! its other kinds are refused by name.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use serde::Deserialize;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde_json::Value;

use crate::error::{ConfigError, ConfigErrors};
use crate::gateway_api::GROUP as GATEWAY_API_GROUP;
use crate::meshconfig::{MESH_CONFIG_API_VERSION, MeshConfig};
use crate::resources::{Item, Kind, ObjectMeta, Origin, ResourceRef, Resources, Skipped};

/// The largest configuration file read, so a stray huge file cannot exhaust
/// memory.
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// The most documents one file may hold. The output of `helm template` or
/// `istioctl` for a large mesh is one file of many thousand documents (a
/// WorkloadEntry is ~200 bytes: a file at [`MAX_FILE_BYTES`] holds ~80,000);
/// beyond this a file is a separator storm, not configuration.
pub const MAX_DOCUMENTS: usize = 200_000;

/// The parser's limits, sized to a file of [`MAX_FILE_BYTES`]: the YAML
/// parser's defaults (1,024 documents, 250,000 nodes) refuse real files of
/// a large mesh. What protects against hostile input stays as the parser
/// has it: nesting depth (64), alias count and the alias/anchor ratio (an
/// alias bomb), and the size of the text.
fn yaml_options() -> serde_saphyr::Options {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_documents = MAX_DOCUMENTS;
    // Real files have ~15 nodes per ~200-byte document: ~1.2 million in a
    // file at MAX_FILE_BYTES. Above 3 million (a flow sequence of one-letter
    // scalars) the parsed tree alone would take most of a GiB.
    budget.max_nodes = 3_000_000;
    budget.max_events = 6_000_000;
    serde_saphyr::options! { budget: Some(budget) }
}

const NETWORKING_VERSIONS: &[&str] = &[
    "networking.istio.io/v1alpha3",
    "networking.istio.io/v1beta1",
    "networking.istio.io/v1",
];
const SECURITY_VERSIONS: &[&str] = &["security.istio.io/v1beta1", "security.istio.io/v1"];
const LEGACY_AUTHN_VERSIONS: &[&str] = &["authentication.istio.io/v1alpha1"];
const TELEMETRY_VERSIONS: &[&str] = &["telemetry.istio.io/v1alpha1", "telemetry.istio.io/v1"];

fn kind_of(kind: &str) -> Option<(Kind, &'static [&'static str])> {
    Some(match kind {
        "VirtualService" => (Kind::VirtualService, NETWORKING_VERSIONS),
        "DestinationRule" => (Kind::DestinationRule, NETWORKING_VERSIONS),
        "Gateway" => (Kind::Gateway, NETWORKING_VERSIONS),
        "ServiceEntry" => (Kind::ServiceEntry, NETWORKING_VERSIONS),
        "WorkloadEntry" => (Kind::WorkloadEntry, NETWORKING_VERSIONS),
        "Sidecar" => (Kind::Sidecar, NETWORKING_VERSIONS),
        "PeerAuthentication" => (Kind::PeerAuthentication, SECURITY_VERSIONS),
        "AuthorizationPolicy" => (Kind::AuthorizationPolicy, SECURITY_VERSIONS),
        "RequestAuthentication" => (Kind::RequestAuthentication, SECURITY_VERSIONS),
        "MeshPolicy" => (Kind::MeshPolicy, LEGACY_AUTHN_VERSIONS),
        "Policy" => (Kind::Policy, LEGACY_AUTHN_VERSIONS),
        "MeshConfig" => (Kind::MeshConfig, &[MESH_CONFIG_API_VERSION]),
        "Telemetry" => (Kind::Telemetry, TELEMETRY_VERSIONS),
        _ => return None,
    })
}

/// Loads every resource under `path`: a file, or a folder walked recursively
/// for `*.yaml`, `*.yml` and `*.json` files in name order (hidden files are
/// skipped). The result is validated; any error rejects the whole set.
pub fn load_path(path: &Path) -> Result<Resources, ConfigErrors> {
    load_path_as(path, false)
}

/// [`load_path`], keeping each resource's document as it was written
/// ([`Item::raw`], [`Resources::mesh_raw`]): what a control plane serves.
pub fn load_path_keeping_documents(path: &Path) -> Result<Resources, ConfigErrors> {
    load_path_as(path, true)
}

fn load_path_as(path: &Path, keep_raw: bool) -> Result<Resources, ConfigErrors> {
    load_files(path, keep_raw, None)
}

/// [`load_path`] (or, with `keep_documents`, [`load_path_keeping_documents`])
/// through `cache`: a file whose bytes are those the cache read last time
/// is not parsed again, its resources and errors are taken from the cache.
/// What every reload of a large folder is spared: one namespace's file
/// changed, the other files' YAML is not read again (parsing is most of a
/// load). The merge and the validation of the whole set run as without a
/// cache, so the result is the same.
pub fn load_path_cached(
    path: &Path,
    keep_documents: bool,
    cache: &FileCache,
) -> Result<Resources, ConfigErrors> {
    load_files(path, keep_documents, Some(cache))
}

fn load_files(
    path: &Path,
    keep_raw: bool,
    cache: Option<&FileCache>,
) -> Result<Resources, ConfigErrors> {
    let files = match collect_files(path) {
        Ok(files) => files,
        Err(e) => return Err(ConfigErrors(vec![e])),
    };
    let mut all = Loader {
        keep_raw,
        ..Loader::default()
    };
    let mut cached = cache.map(|c| c.files.lock().unwrap_or_else(PoisonError::into_inner));
    if let Some(cached) = &mut cached {
        // A file gone from the folder is forgotten with it.
        cached.retain(|p, _| files.binary_search(p).is_ok());
    }
    for file in files {
        let text = match read_file(&file) {
            Ok(text) => text,
            Err(e) => {
                if let Some(cached) = &mut cached {
                    cached.remove(&file);
                }
                all.errors.push(e);
                continue;
            }
        };
        let Some(cached) = &mut cached else {
            all.merge(FileLoad::of(&file, &text, keep_raw));
            continue;
        };
        let part = match cached.get(&file) {
            Some(c) if c.keep_raw == keep_raw && c.text == text => c.part.clone(),
            _ => {
                let part = Arc::new(FileLoad::of(&file, &text, keep_raw));
                let entry = CachedFile {
                    text,
                    keep_raw,
                    part: part.clone(),
                };
                cached.insert(file, entry);
                part
            }
        };
        all.merge(Arc::unwrap_or_clone(part));
    }
    drop(cached);
    all.finish()
}

/// What a [`load_path_cached`] keeps of each file between loads: its text
/// and what it gave. Share one per source (a
/// [`FileSource`](crate::store::FileSource) holds one).
#[derive(Default)]
pub struct FileCache {
    files: Mutex<HashMap<PathBuf, CachedFile>>,
}

impl std::fmt::Debug for FileCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let files = self.files.lock().map_or(0, |f| f.len());
        f.debug_struct("FileCache").field("files", &files).finish()
    }
}

struct CachedFile {
    /// The bytes read: a file is taken from the cache only when they are
    /// the same (not its modification time, which a fast rewrite or a
    /// coarse clock leaves unchanged).
    text: String,
    keep_raw: bool,
    part: Arc<FileLoad>,
}

/// What one file gave on its own: its resources (no two of a kind with one
/// name among them), the errors of its documents, and where its MeshConfig
/// is. [`Loader::merge`] puts files together; the checks across files
/// (names defined twice, one MeshConfig) and the validation of the whole
/// set are the merge's and [`Loader::finish`]'s.
#[derive(Clone, Default)]
struct FileLoad {
    resources: Resources,
    errors: Vec<ConfigError>,
    mesh_origin: Option<Origin>,
    gateway_api: Vec<crate::gateway_api::Document>,
}

impl FileLoad {
    fn of(file: &Path, text: &str, keep_raw: bool) -> Self {
        let mut loader = Loader {
            keep_raw,
            ..Loader::default()
        };
        loader.add_text(file, text);
        Self {
            resources: loader.resources,
            errors: loader.errors,
            mesh_origin: loader.mesh_origin,
            gateway_api: loader.gateway_api,
        }
    }
}

/// Loads resources from YAML text, naming `file` in errors. Used by tests,
/// fuzzers and sources that do not read files.
pub fn load_str(file: &Path, text: &str) -> Result<Resources, ConfigErrors> {
    let mut loader = Loader::default();
    loader.add_text(file, text);
    loader.finish()
}

/// Loads resources from documents already parsed (a control plane's
/// stream gives them as JSON), each with the origin its errors name. The
/// same reading and validation as [`load_path`]; a `List` is read as one.
pub fn load_documents(
    docs: impl IntoIterator<Item = (Origin, Value)>,
) -> Result<Resources, ConfigErrors> {
    let mut loader = Loader::default();
    for (origin, doc) in docs {
        loader.add_doc(origin, doc);
    }
    loader.finish()
}

/// [`load_documents`], keeping each resource's document as given
/// ([`Item::raw`](crate::resources::Item::raw)): what a control plane fed
/// by a source other than files (Kubernetes) serves.
pub fn load_documents_keeping_documents(
    docs: impl IntoIterator<Item = (Origin, Value)>,
) -> Result<Resources, ConfigErrors> {
    let mut loader = Loader {
        keep_raw: true,
        ..Loader::default()
    };
    for (origin, doc) in docs {
        loader.add_doc(origin, doc);
    }
    loader.finish()
}

fn read_file(file: &Path) -> Result<String, ConfigError> {
    let meta =
        fs::metadata(file).map_err(|e| ConfigError::file(file, format!("cannot read: {e}")))?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(ConfigError::file(
            file,
            format!(
                "is {} bytes, more than the {MAX_FILE_BYTES} allowed",
                meta.len()
            ),
        ));
    }
    let bytes = fs::read(file).map_err(|e| ConfigError::file(file, format!("cannot read: {e}")))?;
    String::from_utf8(bytes).map_err(|e| {
        ConfigError::file(
            file,
            format!("is not UTF-8 (byte {})", e.utf8_error().valid_up_to()),
        )
    })
}

fn collect_files(path: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let meta =
        fs::metadata(path).map_err(|e| ConfigError::file(path, format!("cannot read: {e}")))?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    let mut dirs = vec![path.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let entries =
            fs::read_dir(&dir).map_err(|e| ConfigError::file(&dir, format!("cannot list: {e}")))?;
        for entry in entries {
            let entry = entry.map_err(|e| ConfigError::file(&dir, format!("cannot list: {e}")))?;
            let p = entry.path();
            let name = entry.file_name();
            if name.to_string_lossy().starts_with('.') {
                continue;
            }
            let ft = entry
                .file_type()
                .map_err(|e| ConfigError::file(&p, format!("cannot read: {e}")))?;
            if ft.is_dir() {
                dirs.push(p);
            } else if matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml" | "json")
            ) {
                files.push(p);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// A document's envelope, typed by its kind's spec.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Doc<T> {
    #[serde(rename = "apiVersion")]
    _api_version: IgnoredAny,
    #[serde(rename = "kind")]
    _kind: IgnoredAny,
    #[serde(default)]
    metadata: ObjectMeta,
    #[serde(default)]
    spec: T,
    #[serde(default, rename = "status")]
    _status: Option<IgnoredAny>,
}

/// A `List` document: kubectl's `v1` `List` or a typed `<Kind>List`. Its
/// own metadata means nothing, except that a continuation says the listing
/// is one page of a longer one.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ListDoc {
    #[serde(rename = "apiVersion")]
    _api_version: IgnoredAny,
    #[serde(rename = "kind")]
    _kind: IgnoredAny,
    #[serde(default)]
    metadata: ListMeta,
    #[serde(default)]
    items: Option<Vec<Value>>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ListMeta {
    #[serde(default, rename = "resourceVersion")]
    _resource_version: Option<IgnoredAny>,
    #[serde(default, rename = "selfLink")]
    _self_link: Option<IgnoredAny>,
    #[serde(default, rename = "continue")]
    continue_token: Option<String>,
    #[serde(default)]
    remaining_item_count: Option<u64>,
}

/// What a `List` document holds.
enum ListOf {
    /// kubectl's `v1` `List`: items of any kind, each naming its own.
    Any,
    /// `<Kind>List`: items of one kind, which may leave out `apiVersion` and
    /// `kind`, as the API server does.
    Kind { kind: String, api_version: String },
}

/// Is this a list kind? `Some(Err)` says what is wrong with its apiVersion.
fn list_of(api_version: &str, kind: &str) -> Option<Result<ListOf, String>> {
    if kind == "List" {
        return Some(if api_version == "v1" {
            Ok(ListOf::Any)
        } else {
            Err(format!(
                "{api_version} is not a version of List; kubectl writes v1"
            ))
        });
    }
    let item_kind = kind.strip_suffix("List")?;
    let (_, versions) = kind_of(item_kind)?;
    Some(if versions.contains(&api_version) {
        Ok(ListOf::Kind {
            kind: item_kind.to_owned(),
            api_version: api_version.to_owned(),
        })
    } else {
        Err(format!(
            "{api_version} is not a supported version of {kind}; use one of {}",
            versions.join(", ")
        ))
    })
}

#[derive(Default)]
struct Loader {
    /// Keep each document as written ([`Item::raw`]).
    keep_raw: bool,
    resources: Resources,
    mesh_origin: Option<Origin>,
    errors: Vec<ConfigError>,
    seen: HashMap<(Kind, String, String), Origin>,
    /// Gateway API documents, translated once all are read
    /// ([`crate::gateway_api::translate`]).
    gateway_api: Vec<crate::gateway_api::Document>,
}

impl Loader {
    fn add_text(&mut self, file: &Path, text: &str) {
        if text.len() as u64 > MAX_FILE_BYTES {
            self.errors.push(ConfigError::file(
                file,
                format!(
                    "is {} bytes, more than the {MAX_FILE_BYTES} allowed",
                    text.len()
                ),
            ));
            return;
        }
        let docs: Vec<Value> = match serde_saphyr::from_multiple_with_options(text, yaml_options())
        {
            Ok(docs) => docs,
            Err(e) => {
                self.errors
                    .push(ConfigError::file(file, format!("is not valid YAML: {e}")));
                return;
            }
        };
        for (i, mut doc) in docs.into_iter().enumerate() {
            let origin = Origin {
                file: file.to_path_buf(),
                document: i + 1,
                item: None,
            };
            unsplit_ipv6(&mut doc);
            self.add_doc(origin, doc);
        }
    }

    fn add_doc(&mut self, origin: Origin, doc: Value) {
        let Some((api_version, kind)) = self.envelope(&origin, &doc) else {
            return;
        };
        if let Some(list) = list_of(&api_version, &kind) {
            self.add_list(origin, &kind, list, doc);
            return;
        }
        if api_version.split('/').next() == Some(GATEWAY_API_GROUP) {
            // Translated into Istio resources once every document is read;
            // a kind not translated is refused, never skipped.
            match crate::gateway_api::read(&origin, &api_version, &kind, doc) {
                Ok(d) => self.gateway_api.push(d),
                Err(e) => self.errors.push(e),
            }
            return;
        }
        let Some((kind_enum, versions)) = kind_of(&kind) else {
            self.add_unknown(origin, api_version, kind, &doc);
            return;
        };
        if !versions.contains(&api_version.as_str()) {
            self.errors.push(ConfigError::at(
                &origin,
                Some(kind.clone()),
                "apiVersion",
                format!(
                    "{api_version} is not a supported version of {kind}; use one of {}",
                    versions.join(", ")
                ),
            ));
            return;
        }
        self.add_known(kind_enum, origin, api_version, doc);
    }

    /// The `apiVersion` and `kind` of a document, or `None` once the reason
    /// it has none is recorded. An empty document has none and is no error;
    /// an empty item of a `List` is one.
    fn envelope(&mut self, origin: &Origin, doc: &Value) -> Option<(String, String)> {
        let Value::Object(map) = doc else {
            if !doc.is_null() || origin.item.is_some() {
                let what = if origin.item.is_some() {
                    "an item"
                } else {
                    "a document"
                };
                self.errors.push(ConfigError::at(
                    origin,
                    None,
                    "",
                    format!("{what} must be a mapping with apiVersion and kind"),
                ));
            }
            return None;
        };
        let field = |name: &str| match map.get(name) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err("must be a string".to_owned()),
            None => Err("is required".to_owned()),
        };
        match (field("apiVersion"), field("kind")) {
            (Ok(a), Ok(k)) => Some((a, k)),
            (a, k) => {
                for (name, r) in [("apiVersion", a), ("kind", k)] {
                    if let Err(msg) = r {
                        self.errors.push(ConfigError::at(origin, None, name, msg));
                    }
                }
                None
            }
        }
    }

    /// A kind the mesh does not read: an error in an Istio group, skipped
    /// (and listed) anywhere else.
    fn add_unknown(&mut self, origin: Origin, api_version: String, kind: String, doc: &Value) {
        let group = api_version.split('/').next().unwrap_or_default();
        if group == "istio.io" || group.ends_with(".istio.io") {
            let why = unsupported_reason(&kind).map_or_else(String::new, |r| format!(": {r}"));
            self.errors.push(ConfigError::at(
                &origin,
                Some(kind.clone()),
                "kind",
                format!(
                    "{api_version} {kind} is not supported by this mesh{why}; remove it rather \
                     than have it ignored"
                ),
            ));
            return;
        }
        let name = doc
            .get("metadata")
            .and_then(|m| m.get("name"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        self.resources.skipped.push(Skipped {
            origin,
            api_version,
            kind,
            name,
        });
    }

    /// Reads each item of a `List` document as a document of its own, named
    /// by its position in `items`.
    fn add_list(&mut self, origin: Origin, kind: &str, list: Result<ListOf, String>, doc: Value) {
        let refuse = |field: &str, message: String| {
            ConfigError::at(&origin, Some(kind.to_owned()), field, message)
        };
        if origin.item.is_some() {
            // kubectl never nests them, and an origin would need a third
            // level to name what is inside.
            let e = refuse(
                "kind",
                format!("a {kind} inside a List is not read; list its items in the outer List"),
            );
            self.errors.push(e);
            return;
        }
        let list = match list {
            Ok(list) => list,
            Err(message) => {
                self.errors.push(refuse("apiVersion", message));
                return;
            }
        };
        let Some(items) = self.list_items(&origin, kind, doc) else {
            return;
        };
        for (i, item) in items.into_iter().enumerate() {
            let Ok(n) = u32::try_from(i + 1) else {
                let e = refuse("items", "has more items than this mesh reads".to_owned());
                self.errors.push(e);
                return;
            };
            let origin = Origin {
                item: Some(n),
                ..origin.clone()
            };
            if let Some(item) = self.typed_item(&origin, &list, item) {
                self.add_doc(origin, item);
            }
        }
    }

    /// The items of a `List` document, or `None` once the reason is
    /// recorded. A listing that is one page of a longer one is refused: the
    /// resources on the other pages would be missing without a word.
    fn list_items(&mut self, origin: &Origin, kind: &str, doc: Value) -> Option<Vec<Value>> {
        let parsed: ListDoc = match serde_path_to_error::deserialize(doc) {
            Ok(parsed) => parsed,
            Err(e) => {
                let (field, message) = describe_serde_error(&e);
                self.errors.push(ConfigError::at(
                    origin,
                    Some(kind.to_owned()),
                    field,
                    message,
                ));
                return None;
            }
        };
        let meta = &parsed.metadata;
        let partial = [
            (
                "metadata.continue",
                meta.continue_token
                    .as_deref()
                    .is_some_and(|c| !c.is_empty()),
            ),
            (
                "metadata.remainingItemCount",
                meta.remaining_item_count.is_some_and(|n| n > 0),
            ),
        ];
        let mut complete = true;
        for (field, set) in partial {
            if set {
                complete = false;
                self.errors.push(ConfigError::at(
                    origin,
                    Some(kind.to_owned()),
                    field,
                    "the List is one page of a longer listing; export all of it",
                ));
            }
        }
        complete.then(|| parsed.items.unwrap_or_default())
    }

    /// An item of a typed list takes the list's `apiVersion` and `kind`
    /// where it leaves them out, and must not name another kind.
    fn typed_item(&mut self, origin: &Origin, list: &ListOf, mut item: Value) -> Option<Value> {
        let ListOf::Kind { kind, api_version } = list else {
            return Some(item);
        };
        let Value::Object(map) = &mut item else {
            return Some(item);
        };
        if let Some(Value::String(k)) = map.get("kind") {
            if k != kind {
                self.errors.push(ConfigError::at(
                    origin,
                    Some(k.clone()),
                    "kind",
                    format!("an item of a {kind}List must be a {kind}"),
                ));
                return None;
            }
        }
        map.entry("kind")
            .or_insert_with(|| Value::String(kind.clone()));
        map.entry("apiVersion")
            .or_insert_with(|| Value::String(api_version.clone()));
        Some(item)
    }

    fn add_known(&mut self, kind: Kind, origin: Origin, api_version: String, doc: Value) {
        match kind {
            Kind::VirtualService => {
                self.push(kind, origin, api_version, doc, |r| &mut r.virtual_services)
            }
            Kind::DestinationRule => {
                self.push(kind, origin, api_version, doc, |r| &mut r.destination_rules)
            }
            Kind::Gateway => self.push(kind, origin, api_version, doc, |r| &mut r.gateways),
            Kind::ServiceEntry => {
                self.push(kind, origin, api_version, doc, |r| &mut r.service_entries)
            }
            Kind::WorkloadEntry => {
                let unhealthy = match unhealthy(&doc) {
                    Ok(u) => u,
                    Err((field, message)) => {
                        let e = ConfigError::at(&origin, Some(kind.to_string()), field, message);
                        self.errors.push(e);
                        return;
                    }
                };
                let before = self.resources.workload_entries.len();
                self.push(kind, origin, api_version, doc, |r| &mut r.workload_entries);
                if let Some(we) = self.resources.workload_entries.get_mut(before) {
                    we.spec.unhealthy = unhealthy;
                }
            }
            Kind::Sidecar => self.push(kind, origin, api_version, doc, |r| &mut r.sidecars),
            Kind::PeerAuthentication => self.push(kind, origin, api_version, doc, |r| {
                &mut r.peer_authentications
            }),
            Kind::AuthorizationPolicy => self.push(kind, origin, api_version, doc, |r| {
                &mut r.authorization_policies
            }),
            Kind::RequestAuthentication => self.push(kind, origin, api_version, doc, |r| {
                &mut r.request_authentications
            }),
            Kind::MeshPolicy | Kind::Policy => {
                self.push(kind, origin, api_version, doc, |r| &mut r.legacy_policies)
            }
            Kind::MeshConfig => self.push_mesh(origin, doc),
            Kind::Telemetry => self.push(kind, origin, api_version, doc, |r| &mut r.telemetries),
        }
    }

    fn parse<T: DeserializeOwned + Default>(
        &mut self,
        origin: &Origin,
        label: &str,
        doc: Value,
    ) -> Option<Doc<T>> {
        match serde_path_to_error::deserialize::<_, Doc<T>>(doc) {
            Ok(d) => Some(d),
            Err(e) => {
                let (field, message) = describe_serde_error(&e);
                self.errors.push(ConfigError::at(
                    origin,
                    Some(label.to_owned()),
                    field,
                    message,
                ));
                None
            }
        }
    }

    fn push<T: DeserializeOwned + Default>(
        &mut self,
        kind: Kind,
        origin: Origin,
        api_version: String,
        doc: Value,
        list: impl FnOnce(&mut Resources) -> &mut Vec<Item<T>>,
    ) {
        let hint_name = doc
            .get("metadata")
            .and_then(|m| m.get("name"))
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_owned();
        let raw = self.keep_raw.then(|| Arc::new(doc.clone()));
        let Some(parsed) = self.parse::<T>(&origin, &format!("{kind} {hint_name}"), doc) else {
            return;
        };
        let Some(name) = parsed.metadata.name.clone().filter(|n| !n.is_empty()) else {
            self.errors.push(ConfigError::at(
                &origin,
                Some(kind.to_string()),
                "metadata.name",
                "is required",
            ));
            return;
        };
        let namespace = if kind == Kind::MeshPolicy {
            // MeshPolicy is cluster-scoped: it is the mesh-wide policy.
            self.resources.mesh.root_namespace.clone()
        } else {
            parsed
                .metadata
                .namespace
                .clone()
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| "default".to_owned())
        };
        let source = ResourceRef {
            kind,
            namespace,
            name,
            origin,
        };
        for (what, value) in [
            ("metadata.name", &source.name),
            ("metadata.namespace", &source.namespace),
        ] {
            if !is_dns_name(value) {
                self.errors.push(ConfigError::at(
                    &source.origin,
                    Some(source.to_string()),
                    what,
                    format!(
                        "`{value}` is not a valid name (lowercase letters, digits, '-' and '.')"
                    ),
                ));
                return;
            }
        }
        let key = seen_key(&source);
        if let Some(first) = self.seen.get(&key) {
            self.errors.push(duplicate(&source, first));
            return;
        }
        self.seen.insert(key, source.origin.clone());
        list(&mut self.resources).push(Item {
            source,
            api_version,
            meta: parsed.metadata,
            spec: parsed.spec,
            raw,
        });
    }

    fn push_mesh(&mut self, origin: Origin, doc: Value) {
        let raw = self.keep_raw.then(|| Arc::new(doc.clone()));
        let Some(parsed) = self.parse::<MeshConfig>(&origin, "MeshConfig", doc) else {
            return;
        };
        if let Some(first) = &self.mesh_origin {
            self.errors.push(second_mesh(&origin, first));
            return;
        }
        let m = &parsed.spec;
        for (field, list) in [
            ("spec.defaultServiceExportTo", &m.default_service_export_to),
            (
                "spec.defaultVirtualServiceExportTo",
                &m.default_virtual_service_export_to,
            ),
            (
                "spec.defaultDestinationRuleExportTo",
                &m.default_destination_rule_export_to,
            ),
        ] {
            for (field, message) in crate::visibility::export_to_problems(field, list) {
                self.errors.push(ConfigError::at(
                    &origin,
                    Some("MeshConfig".to_owned()),
                    field,
                    message,
                ));
            }
        }
        self.mesh_origin = Some(origin);
        self.resources.mesh = parsed.spec;
        self.resources.mesh_raw = raw;
    }

    /// Adds what one file gave, after the files before it: a resource
    /// whose kind and name an earlier file took is an error at its second
    /// definition, as within a file; so is a second MeshConfig.
    fn merge(&mut self, file: FileLoad) {
        let FileLoad {
            resources,
            errors,
            mesh_origin,
            gateway_api,
        } = file;
        self.errors.extend(errors);
        self.gateway_api.extend(gateway_api);
        // Every field named: one added to `Resources` must be merged too.
        let Resources {
            mesh,
            mesh_raw,
            virtual_services,
            destination_rules,
            gateways,
            service_entries,
            workload_entries,
            sidecars,
            peer_authentications,
            legacy_policies,
            authorization_policies,
            request_authentications,
            telemetries,
            skipped,
            view: _,
        } = resources;
        if let Some(origin) = mesh_origin {
            if let Some(first) = &self.mesh_origin {
                self.errors.push(second_mesh(&origin, first));
            } else {
                self.mesh_origin = Some(origin);
                self.resources.mesh = mesh;
                self.resources.mesh_raw = mesh_raw;
            }
        }
        let (seen, errors, r) = (&mut self.seen, &mut self.errors, &mut self.resources);
        merge_items(seen, errors, &mut r.virtual_services, virtual_services);
        merge_items(seen, errors, &mut r.destination_rules, destination_rules);
        merge_items(seen, errors, &mut r.gateways, gateways);
        merge_items(seen, errors, &mut r.service_entries, service_entries);
        merge_items(seen, errors, &mut r.workload_entries, workload_entries);
        merge_items(seen, errors, &mut r.sidecars, sidecars);
        merge_items(
            seen,
            errors,
            &mut r.peer_authentications,
            peer_authentications,
        );
        merge_items(seen, errors, &mut r.legacy_policies, legacy_policies);
        merge_items(
            seen,
            errors,
            &mut r.authorization_policies,
            authorization_policies,
        );
        merge_items(
            seen,
            errors,
            &mut r.request_authentications,
            request_authentications,
        );
        merge_items(seen, errors, &mut r.telemetries, telemetries);
        r.skipped.extend(skipped);
    }

    fn finish(mut self) -> Result<Resources, ConfigErrors> {
        let (translated, errors) = crate::gateway_api::translate(&self.gateway_api);
        self.errors.extend(errors);
        for t in translated {
            let version = t.doc["apiVersion"].as_str().unwrap_or_default().to_owned();
            self.add_known(t.kind, t.origin, version, t.doc);
        }
        // MeshPolicy namespaces were set before the MeshConfig might have been
        // read; settle them against the final root namespace.
        let root = self.resources.mesh.root_namespace.clone();
        for p in &mut self.resources.legacy_policies {
            if p.source.kind == Kind::MeshPolicy {
                p.source.namespace = root.clone();
            }
        }
        self.errors
            .extend(crate::validate::validate(&self.resources));
        self.errors
            .sort_by(|a, b| (&a.file, a.document, a.item).cmp(&(&b.file, b.document, b.item)));
        if self.errors.is_empty() {
            Ok(self.resources)
        } else {
            Err(ConfigErrors(self.errors))
        }
    }
}

/// Appends `items` to `into`, refusing each whose kind and name `seen`
/// already holds.
fn merge_items<T>(
    seen: &mut HashMap<(Kind, String, String), Origin>,
    errors: &mut Vec<ConfigError>,
    into: &mut Vec<Item<T>>,
    items: Vec<Item<T>>,
) {
    into.reserve(items.len());
    for item in items {
        match seen.entry(seen_key(&item.source)) {
            std::collections::hash_map::Entry::Occupied(first) => {
                errors.push(duplicate(&item.source, first.get()));
            }
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(item.source.origin.clone());
                into.push(item);
            }
        }
    }
}

fn second_mesh(origin: &Origin, first: &Origin) -> ConfigError {
    ConfigError::at(
        origin,
        Some("MeshConfig".to_owned()),
        "",
        format!("only one MeshConfig is allowed; the first is in {first}"),
    )
}

fn seen_key(source: &ResourceRef) -> (Kind, String, String) {
    (source.kind, source.namespace.clone(), source.name.clone())
}

fn duplicate(source: &ResourceRef, first: &Origin) -> ConfigError {
    ConfigError::at(
        &source.origin,
        Some(source.to_string()),
        "metadata.name",
        format!("{source} is defined twice; the first is in {first}"),
    )
}

/// An IPv6 address ending in `::` written unquoted in a flow sequence
/// (`addresses: [1.2.3.4, 2001:db8::]`) parses, by YAML 1.2, as a map of
/// one key (`2001:db8:`) and no value; the YAML parser Kubernetes and
/// Istio use reads the address. Restores it: a sequence item that is a map
/// of one key ending in `:`, with no value. No Istio field is a list of
/// such maps, so no other meaning is changed.
fn unsplit_ipv6(v: &mut Value) {
    match v {
        Value::Array(items) => {
            for item in items {
                let restored = match &*item {
                    Value::Object(m) if m.len() == 1 => m
                        .iter()
                        .next()
                        .filter(|(k, v)| v.is_null() && k.ends_with(':') && k.contains(':'))
                        .filter(|(k, _)| format!("{k}:").parse::<std::net::Ipv6Addr>().is_ok())
                        .map(|(k, _)| Value::String(format!("{k}:"))),
                    _ => None,
                };
                match restored {
                    Some(s) => *item = s,
                    None => unsplit_ipv6(item),
                }
            }
        }
        Value::Object(m) => m.values_mut().for_each(unsplit_ipv6),
        _ => {}
    }
}

/// Why an Istio kind this mesh does not read is refused, in one line, for
/// the kinds real configurations carry.
fn unsupported_reason(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "EnvoyFilter" => {
            "it patches Envoy's own configuration, and this mesh's proxies are not Envoy"
        }
        "WasmPlugin" | "TrafficExtension" => {
            "it loads a Wasm extension into Envoy, and this mesh's proxies are not Envoy"
        }
        "ProxyConfig" => {
            "it tunes Envoy proxies; mesh-proxy takes its settings from its command line"
        }
        "IstioOperator" => "it is an installation resource for istioctl, not mesh configuration",
        "WorkloadGroup" => "VM auto-registration is not implemented; write WorkloadEntries",
        _ => return None,
    })
}

/// True for a Kubernetes-style name: lowercase alphanumerics, `-` and `.`,
/// starting and ending with an alphanumeric, at most 253 bytes.
/// Whether a WorkloadEntry's status says it is not healthy: Istio's
/// `status.conditions` entry of type `Healthy` with status `"False"` (what
/// its health checks write, and what the Kubernetes source writes for a
/// terminating or unready pod). `"True"`, `"Unknown"` or no such
/// condition: healthy. Other statuses are refused by field.
fn unhealthy(doc: &Value) -> Result<bool, (String, String)> {
    let Some(conditions) = doc.get("status").and_then(|s| s.get("conditions")) else {
        return Ok(false);
    };
    let Value::Array(conditions) = conditions else {
        return Err(("status.conditions".to_owned(), "must be a list".to_owned()));
    };
    for (i, c) in conditions.iter().enumerate() {
        if c.get("type").and_then(Value::as_str) != Some("Healthy") {
            continue;
        }
        return match c.get("status").and_then(Value::as_str) {
            Some("False") => Ok(true),
            Some("True" | "Unknown") => Ok(false),
            other => Err((
                format!("status.conditions[{i}].status"),
                format!(
                    "{other:?} is not a condition status; use \"True\", \"False\" or \"Unknown\""
                ),
            )),
        };
    }
    Ok(false)
}

/// A DNS-1123 label, as Kubernetes names namespaces and Istio port names:
/// lowercase alphanumerics and `-`, starting and ending with an
/// alphanumeric, at most 63 bytes.
pub(crate) fn is_dns_label(s: &str) -> bool {
    s.len() <= 63 && is_dns_name(s) && !s.contains('.')
}

/// A DNS-1123 subdomain, as Kubernetes names objects: no `/`, never `..`.
pub(crate) fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && s.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric())
}

/// Turns serde's message into a field path and a sentence a user can act on.
pub(crate) fn describe_serde_error(
    e: &serde_path_to_error::Error<serde_json::Error>,
) -> (String, String) {
    let mut path = e.path().to_string();
    if path == "." {
        path.clear();
    }
    let msg = e.inner().to_string();
    if let Some(rest) = msg.strip_prefix("unknown field `") {
        if let Some((name, tail)) = rest.split_once('`') {
            // serde_path_to_error already ends the path with the field on
            // most versions; add it only where it does not.
            if path.rsplit('.').next() != Some(name) {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(name);
            }
            let expected = tail
                .strip_prefix(", expected one of ")
                .or_else(|| tail.strip_prefix(", expected "))
                .map(|list| format!("; known fields here: {}", list.replace('`', "")))
                .unwrap_or_default();
            return (
                path,
                format!(
                    "unsupported field `{name}`: this mesh does not implement it (or it is misspelt){expected}"
                ),
            );
        }
    }
    (path, msg)
}
