//! Reading Istio YAML: a file or a folder of files, each holding one or many
//! documents separated by `---`.
//!
//! Each document is parsed into a generic tree first, so its `apiVersion`
//! and `kind` choose the type, and then into that type with the field path
//! tracked, so every error names the file, the document and the field.
//! Documents of kinds the mesh does not read (Deployments, Services...) are
//! listed as skipped; an `*.istio.io` kind or version the mesh does not
//! implement is an error, because dropping it silently could weaken what the
//! user asked for.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde_json::Value;

use crate::error::{ConfigError, ConfigErrors};
use crate::meshconfig::{MESH_CONFIG_API_VERSION, MeshConfig};
use crate::resources::{Item, Kind, ObjectMeta, Origin, ResourceRef, Resources, Skipped};

/// The largest configuration file read, so a stray huge file cannot exhaust
/// memory.
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

const NETWORKING_VERSIONS: &[&str] = &[
    "networking.istio.io/v1alpha3",
    "networking.istio.io/v1beta1",
    "networking.istio.io/v1",
];
const SECURITY_VERSIONS: &[&str] = &["security.istio.io/v1beta1", "security.istio.io/v1"];
const LEGACY_AUTHN_VERSIONS: &[&str] = &["authentication.istio.io/v1alpha1"];

fn kind_of(kind: &str) -> Option<(Kind, &'static [&'static str])> {
    Some(match kind {
        "VirtualService" => (Kind::VirtualService, NETWORKING_VERSIONS),
        "DestinationRule" => (Kind::DestinationRule, NETWORKING_VERSIONS),
        "Gateway" => (Kind::Gateway, NETWORKING_VERSIONS),
        "ServiceEntry" => (Kind::ServiceEntry, NETWORKING_VERSIONS),
        "WorkloadEntry" => (Kind::WorkloadEntry, NETWORKING_VERSIONS),
        "PeerAuthentication" => (Kind::PeerAuthentication, SECURITY_VERSIONS),
        "AuthorizationPolicy" => (Kind::AuthorizationPolicy, SECURITY_VERSIONS),
        "MeshPolicy" => (Kind::MeshPolicy, LEGACY_AUTHN_VERSIONS),
        "Policy" => (Kind::Policy, LEGACY_AUTHN_VERSIONS),
        "MeshConfig" => (Kind::MeshConfig, &[MESH_CONFIG_API_VERSION]),
        _ => return None,
    })
}

/// Loads every resource under `path`: a file, or a folder walked recursively
/// for `*.yaml`, `*.yml` and `*.json` files in name order (hidden files are
/// skipped). The result is validated; any error rejects the whole set.
pub fn load_path(path: &Path) -> Result<Resources, ConfigErrors> {
    let mut loader = Loader::default();
    let files = match collect_files(path) {
        Ok(files) => files,
        Err(e) => return Err(ConfigErrors(vec![e])),
    };
    for file in files {
        match read_file(&file) {
            Ok(text) => loader.add_text(&file, &text),
            Err(e) => loader.errors.push(e),
        }
    }
    loader.finish()
}

/// Loads resources from YAML text, naming `file` in errors. Used by tests,
/// fuzzers and sources that do not read files.
pub fn load_str(file: &Path, text: &str) -> Result<Resources, ConfigErrors> {
    let mut loader = Loader::default();
    loader.add_text(file, text);
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

#[derive(Default)]
struct Loader {
    resources: Resources,
    mesh_origin: Option<Origin>,
    errors: Vec<ConfigError>,
    seen: HashMap<(Kind, String, String), Origin>,
}

impl Loader {
    fn add_text(&mut self, file: &Path, text: &str) {
        let docs: Vec<Value> = match serde_saphyr::from_multiple(text) {
            Ok(docs) => docs,
            Err(e) => {
                self.errors
                    .push(ConfigError::file(file, format!("is not valid YAML: {e}")));
                return;
            }
        };
        for (i, doc) in docs.into_iter().enumerate() {
            let origin = Origin {
                file: file.to_path_buf(),
                document: i + 1,
            };
            self.add_doc(origin, doc);
        }
    }

    fn add_doc(&mut self, origin: Origin, doc: Value) {
        let Value::Object(map) = &doc else {
            if !doc.is_null() {
                self.errors.push(ConfigError::at(
                    &origin,
                    None,
                    "",
                    "a document must be a mapping with apiVersion and kind",
                ));
            }
            return;
        };
        let field = |name: &str| match map.get(name) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err("must be a string".to_owned()),
            None => Err("is required".to_owned()),
        };
        let (api_version, kind) = match (field("apiVersion"), field("kind")) {
            (Ok(a), Ok(k)) => (a, k),
            (a, k) => {
                for (name, r) in [("apiVersion", a), ("kind", k)] {
                    if let Err(msg) = r {
                        self.errors.push(ConfigError::at(&origin, None, name, msg));
                    }
                }
                return;
            }
        };
        let Some((kind_enum, versions)) = kind_of(&kind) else {
            let group = api_version.split('/').next().unwrap_or_default();
            if group == "istio.io" || group.ends_with(".istio.io") {
                self.errors.push(ConfigError::at(
                    &origin,
                    Some(kind.clone()),
                    "kind",
                    format!(
                        "{api_version} {kind} is not supported by this mesh; remove it rather than \
                         have it ignored"
                    ),
                ));
            } else {
                let name = map
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
        match kind_enum {
            Kind::VirtualService => self.push(kind_enum, origin, api_version, doc, |r| {
                &mut r.virtual_services
            }),
            Kind::DestinationRule => self.push(kind_enum, origin, api_version, doc, |r| {
                &mut r.destination_rules
            }),
            Kind::Gateway => self.push(kind_enum, origin, api_version, doc, |r| &mut r.gateways),
            Kind::ServiceEntry => self.push(kind_enum, origin, api_version, doc, |r| {
                &mut r.service_entries
            }),
            Kind::WorkloadEntry => self.push(kind_enum, origin, api_version, doc, |r| {
                &mut r.workload_entries
            }),
            Kind::PeerAuthentication => self.push(kind_enum, origin, api_version, doc, |r| {
                &mut r.peer_authentications
            }),
            Kind::AuthorizationPolicy => self.push(kind_enum, origin, api_version, doc, |r| {
                &mut r.authorization_policies
            }),
            Kind::MeshPolicy | Kind::Policy => {
                self.push(kind_enum, origin, api_version, doc, |r| {
                    &mut r.legacy_policies
                })
            }
            Kind::MeshConfig => self.push_mesh(origin, doc),
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
        let key = (kind, source.namespace.clone(), source.name.clone());
        if let Some(first) = self.seen.get(&key) {
            self.errors.push(ConfigError::at(
                &source.origin,
                Some(source.to_string()),
                "metadata.name",
                format!("{source} is defined twice; the first is in {first}"),
            ));
            return;
        }
        self.seen.insert(key, source.origin.clone());
        list(&mut self.resources).push(Item {
            source,
            api_version,
            meta: parsed.metadata,
            spec: parsed.spec,
        });
    }

    fn push_mesh(&mut self, origin: Origin, doc: Value) {
        let Some(parsed) = self.parse::<MeshConfig>(&origin, "MeshConfig", doc) else {
            return;
        };
        if let Some(first) = &self.mesh_origin {
            self.errors.push(ConfigError::at(
                &origin,
                Some("MeshConfig".to_owned()),
                "",
                format!("only one MeshConfig is allowed; the first is in {first}"),
            ));
            return;
        }
        self.mesh_origin = Some(origin);
        self.resources.mesh = parsed.spec;
    }

    fn finish(mut self) -> Result<Resources, ConfigErrors> {
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
            .sort_by(|a, b| (&a.file, a.document).cmp(&(&b.file, b.document)));
        if self.errors.is_empty() {
            Ok(self.resources)
        } else {
            Err(ConfigErrors(self.errors))
        }
    }
}

/// True for a Kubernetes-style name: lowercase alphanumerics, `-` and `.`,
/// starting and ending with an alphanumeric, at most 253 bytes.
fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && s.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric())
}

/// Turns serde's message into a field path and a sentence a user can act on.
fn describe_serde_error(e: &serde_path_to_error::Error<serde_json::Error>) -> (String, String) {
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
